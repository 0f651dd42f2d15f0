//! `RUN --mount`: BuildKit's mount options, and the host side of each
//! mount (a private copy of context or stage files, a persistent cache
//! directory, a tmpfs, a secret file, an SSH agent socket).
//!
//! Nothing a mount shows the command ends up in the step's layer: every
//! mount lives in the container's own mount namespace, over the overlay,
//! and the mount points it needed are removed again by the container code.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rbuild_exec::container::{BindMount, Mount};
use rbuild_exec::patterns::PatternMatcher;
use rbuild_frontend::{ExecMount, ExecOp};
use rbuild_oci::Digest;

use crate::build::BuildError;
use crate::steps::{Run, ScratchDir};

/// Where a `--secret` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The contents of a file.
    File(PathBuf),
    /// The value of an environment variable of the rbuild process.
    Env(String),
}

impl SecretSource {
    /// Parses buildx's `--secret` syntax: `id=NAME[,type=file|env][,src|source=PATH][,env=VAR]`.
    /// With neither `src` nor `env`, the variable named like the ID if it
    /// is set, else the file of that name.
    pub fn parse(spec: &str) -> Result<(String, SecretSource), String> {
        let (mut id, mut kind, mut src, mut env) = (None, None, None, None);
        for field in spec.split(',').filter(|f| !f.is_empty()) {
            let Some((key, value)) = field.split_once('=') else {
                return Err(format!(
                    "invalid --secret field {field:?}: it must be a key=value pair"
                ));
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "id" => id = Some(value.to_string()),
                "type" if value == "file" || value == "env" => kind = Some(value.to_string()),
                "type" => return Err(format!("unsupported --secret type {value:?}")),
                "src" | "source" => src = Some(value.to_string()),
                "env" => env = Some(value.to_string()),
                other => return Err(format!("unexpected key {other:?} in --secret {spec}")),
            }
        }
        if kind.as_deref() == Some("env") && env.is_none() {
            env = src.take();
        }
        let id = match id {
            Some(id) if !id.is_empty() => id,
            _ => match (&src, &env) {
                (Some(s), _) => Path::new(s)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("--secret {spec}: no id"))?,
                (None, Some(e)) => e.clone(),
                (None, None) => return Err(format!("--secret {spec}: no id")),
            },
        };
        let source = match (src, env) {
            (Some(path), _) => SecretSource::File(path.into()),
            (None, Some(var)) => SecretSource::Env(var),
            (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
            (None, None) => SecretSource::File(id.clone().into()),
        };
        Ok((id, source))
    }
}

/// Parses `--ssh ID[=SOCKET]` (without a socket, `$SSH_AUTH_SOCK`).
pub fn parse_ssh(spec: &str) -> Result<(String, PathBuf), String> {
    let (id, socket) = match spec.split_once('=') {
        Some((id, socket)) => (id, socket.to_string()),
        None => (
            spec,
            std::env::var("SSH_AUTH_SOCK")
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("--ssh {spec}: SSH_AUTH_SOCK is not set"))?,
        ),
    };
    if id.is_empty() {
        return Err(format!("--ssh {spec}: no id"));
    }
    if socket.contains(',') {
        return Err(format!(
            "--ssh {spec}: only one agent socket per id is supported (no key files)"
        ));
    }
    Ok((id.to_string(), PathBuf::from(socket)))
}

/// The host side of a step's mounts; kept alive while the step runs.
pub(crate) struct Prepared {
    /// Sorted by target, so a mount inside another comes after it.
    pub mounts: Vec<Mount>,
    /// Variables the step's environment gets (secrets with `env=`,
    /// `SSH_AUTH_SOCK`).
    pub env: Vec<(String, String)>,
    _keep: Vec<Keep>,
}

/// What must live as long as the step (held for its `Drop`).
#[allow(dead_code)]
enum Keep {
    Dir(ScratchDir),
    Lock(fs::File),
    Ssh(SshProxy),
}

/// One `--mount`'s options.
struct Options<'a> {
    spec: &'a str,
    fields: HashMap<String, String>,
}

impl Options<'_> {
    fn parse(spec: &str) -> Options<'_> {
        let mut fields = HashMap::new();
        for field in spec.split(',') {
            let (k, v) = field.split_once('=').unwrap_or((field, ""));
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            fields.insert(k.trim().to_ascii_lowercase(), v.to_string());
        }
        Options { spec, fields }
    }

    fn get(&self, keys: &[&str]) -> Option<&str> {
        keys.iter()
            .find_map(|k| self.fields.get(*k))
            .map(String::as_str)
    }

    fn err(&self, message: impl std::fmt::Display) -> String {
        format!("--mount={}: {message}", self.spec)
    }

    /// Go's strconv.ParseBool; a bare key is true.
    fn bool(&self, keys: &[&str]) -> Result<Option<bool>, String> {
        let Some(v) = self.get(keys) else {
            return Ok(None);
        };
        match v {
            "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
            _ => Err(self.err(format!("invalid boolean {v:?}"))),
        }
    }

    fn readonly(&self, default: bool) -> Result<bool, String> {
        if let Some(ro) = self.bool(&["readonly", "ro"])? {
            return Ok(ro);
        }
        Ok(match self.bool(&["rw", "readwrite"])? {
            Some(rw) => !rw,
            None => default,
        })
    }

    fn number(&self, key: &str, radix: u32) -> Result<Option<u32>, String> {
        self.get(&[key])
            .map(|v| {
                u32::from_str_radix(v, radix).map_err(|_| self.err(format!("invalid {key} {v:?}")))
            })
            .transpose()
    }

    /// The target, absolute (relative ones are below the working directory).
    fn target(&self, cwd: &str) -> Option<String> {
        let t = self.get(&["target", "dst", "destination"])?;
        if t.is_empty() {
            return None;
        }
        Some(clean_absolute(&if t.starts_with('/') {
            t.to_string()
        } else {
            format!("{cwd}/{t}")
        }))
    }
}

/// `/`-rooted lexical cleaning: `..` stops at the root.
fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A path below a root, as a relative path that cannot leave it.
fn clean_relative(path: &str) -> PathBuf {
    PathBuf::from(clean_absolute(path).trim_start_matches('/'))
}

/// docker/go-units' `RAMInBytes`: `64m`, `1g`, `1.5GiB`, `1024` (binary units).
fn ram_in_bytes(size: &str) -> Option<u64> {
    let s = size.trim();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let mut unit = unit.trim_start_matches(' ').to_ascii_lowercase();
    if unit.ends_with('b') {
        unit.pop();
    }
    if unit.len() == 2 && unit.ends_with('i') {
        unit.pop();
    }
    let power = match unit.as_str() {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    Some((number * 1024f64.powi(power)) as u64)
}

/// The context path a bind mount without `from=` shows (`.` for the
/// whole context); None for other mounts.
pub(crate) fn context_bind_source(spec: &str) -> Option<String> {
    let o = Options::parse(spec);
    let kind = o.get(&["type"]).unwrap_or("bind");
    if !kind.eq_ignore_ascii_case("bind") || o.get(&["from"]).is_some() {
        return None;
    }
    let source = clean_relative(o.get(&["source", "src"]).unwrap_or(""));
    let source = source.to_string_lossy();
    Some(match source.is_empty() {
        true => ".".to_string(),
        false => source.into_owned(),
    })
}

/// Prepares the host side of `exec`'s mounts; `files` is the step's
/// private scratch directory (removed after the step).
pub(crate) fn prepare(
    run: &Run<'_>,
    exec: &ExecOp,
    files: &Path,
    line: usize,
) -> Result<Prepared, BuildError> {
    let fail = |message: String| BuildError::Exec { line, message };
    let options = run.options;
    let Some(executor) = options.executor.as_ref() else {
        return Err(fail("no container executor".into()));
    };
    let mut prepared = Prepared {
        mounts: Vec::new(),
        env: Vec::new(),
        _keep: Vec::new(),
    };
    // Cache instances taken by this step, by key: the same id twice shares one.
    let mut caches: HashMap<String, PathBuf> = HashMap::new();
    let mut ssh_index = 0;
    let mut first_ssh: Option<String> = None;
    for (i, mount) in exec.mounts.iter().enumerate() {
        let o = Options::parse(&mount.spec);
        let kind = o.get(&["type"]).unwrap_or("bind").to_ascii_lowercase();
        match kind.as_str() {
            "bind" => {
                let target = o
                    .target(&exec.cwd)
                    .ok_or_else(|| fail(o.err("no target")))?;
                let readonly = o.readonly(true).map_err(fail)?;
                let source = clean_relative(o.get(&["source", "src"]).unwrap_or(""));
                let (dir, path) = source_files(run, mount, &source, line, &o)?;
                prepared.mounts.push(Mount::Bind(BindMount {
                    source: path,
                    target,
                    readonly,
                }));
                prepared._keep.push(Keep::Dir(dir));
            }
            "cache" => {
                let target = o
                    .target(&exec.cwd)
                    .ok_or_else(|| fail(o.err("no target")))?;
                let readonly = o.readonly(false).map_err(fail)?;
                let id = match o.get(&["id"]) {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => target.clone(),
                };
                let sharing = o.get(&["sharing"]).unwrap_or("shared");
                if !matches!(sharing, "shared" | "private" | "locked") {
                    return Err(fail(o.err(format!(
                        "unsupported sharing {sharing:?} (shared, private or locked)"
                    ))));
                }
                let mode = o.number("mode", 8).map_err(fail)?.unwrap_or(0o755);
                let uid = o.number("uid", 10).map_err(fail)?.unwrap_or(0);
                let gid = o.number("gid", 10).map_err(fail)?.unwrap_or(0);
                // The id is a key, never a path.
                let key = Digest::of(id.as_bytes()).hex();
                let dir = match caches.get(&key) {
                    Some(dir) => dir.clone(),
                    None => {
                        let base = executor.cache_mounts.join(&key);
                        let (dir, lock) = take_cache(&base, sharing)
                            .map_err(|e| fail(o.err(format!("cache {}: {e}", base.display()))))?;
                        if let Some(lock) = lock {
                            prepared._keep.push(Keep::Lock(lock));
                        }
                        if !dir.exists() {
                            let init = CacheInit {
                                mode,
                                uid,
                                gid,
                                mount,
                                source: clean_relative(o.get(&["source", "src"]).unwrap_or("")),
                            };
                            create_cache(run, &base, &dir, &init, line, &o)?;
                        }
                        caches.insert(key, dir.clone());
                        dir
                    }
                };
                prepared.mounts.push(Mount::Bind(BindMount {
                    source: dir,
                    target,
                    readonly,
                }));
            }
            "tmpfs" => {
                let target = o
                    .target(&exec.cwd)
                    .ok_or_else(|| fail(o.err("no target")))?;
                let size = match o.get(&["size"]) {
                    Some(s) => Some(
                        ram_in_bytes(s)
                            .ok_or_else(|| fail(o.err(format!("invalid size {s:?}"))))?,
                    )
                    .filter(|&n| n > 0),
                    None => None,
                };
                prepared.mounts.push(Mount::Tmpfs { target, size });
            }
            "secret" => {
                let target = o.target(&exec.cwd);
                let env = o.get(&["env"]).filter(|e| !e.is_empty());
                let id = match (o.get(&["id"]), &target) {
                    (Some(id), _) if !id.is_empty() => id.to_string(),
                    (_, Some(t)) => t.rsplit('/').next().unwrap_or_default().to_string(),
                    _ => match env {
                        Some(e) => e.to_string(),
                        None => return Err(fail(o.err("one of id or target is required"))),
                    },
                };
                let target = match (target, env) {
                    (Some(t), _) => Some(t),
                    (None, Some(_)) => None,
                    (None, None) => Some(format!("/run/secrets/{id}")),
                };
                let required = o.bool(&["required"]).map_err(fail)?.unwrap_or(false);
                let Some(source) = executor.secrets.get(&id) else {
                    if required {
                        return Err(fail(o.err(format!(
                            "secret {id:?} not found: pass it with --secret id={id},src=FILE (or env=VAR)"
                        ))));
                    }
                    continue;
                };
                let value = match source {
                    SecretSource::File(path) => fs::read(path).map_err(|e| {
                        fail(o.err(format!("secret {id:?}: reading {}: {e}", path.display())))
                    })?,
                    SecretSource::Env(var) => match std::env::var_os(var) {
                        Some(v) => v.into_encoded_bytes(),
                        None if required => {
                            return Err(fail(o.err(format!(
                                "secret {id:?}: environment variable {var} is not set"
                            ))));
                        }
                        None => continue,
                    },
                };
                if let Some(var) = env {
                    let text = String::from_utf8(value.clone()).map_err(|_| {
                        fail(o.err(format!(
                            "secret {id:?} is not UTF-8 text, so not an env value"
                        )))
                    })?;
                    prepared.env.push((var.to_string(), text));
                }
                if let Some(target) = target {
                    let mode = o.number("mode", 8).map_err(fail)?.unwrap_or(0o400);
                    let uid = o.number("uid", 10).map_err(fail)?.unwrap_or(0);
                    let gid = o.number("gid", 10).map_err(fail)?.unwrap_or(0);
                    let path = files.join(format!("secret-{i}"));
                    write_private(&path, &value, mode, uid, gid)
                        .map_err(|e| fail(o.err(format!("secret {id:?}: {e}"))))?;
                    prepared.mounts.push(Mount::Bind(BindMount {
                        source: path,
                        target,
                        readonly: true,
                    }));
                }
            }
            "ssh" => {
                let n = ssh_index;
                ssh_index += 1;
                let target = o
                    .target(&exec.cwd)
                    .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
                first_ssh.get_or_insert_with(|| target.clone());
                let id = o
                    .get(&["id"])
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default");
                let required = o.bool(&["required"]).map_err(fail)?.unwrap_or(false);
                let Some(agent) = executor.ssh.get(id) else {
                    if required {
                        return Err(fail(o.err(format!(
                            "no SSH agent {id:?}: pass one with --ssh {id}=SOCKET"
                        ))));
                    }
                    continue;
                };
                let mode = o.number("mode", 8).map_err(fail)?.unwrap_or(0o600);
                let uid = o.number("uid", 10).map_err(fail)?.unwrap_or(0);
                let gid = o.number("gid", 10).map_err(fail)?.unwrap_or(0);
                let proxy = SshProxy::start(agent.clone(), files, i, mode, uid, gid)
                    .map_err(|e| fail(o.err(format!("SSH agent socket: {e}"))))?;
                prepared.mounts.push(Mount::Bind(BindMount {
                    source: proxy.path.clone(),
                    target,
                    readonly: false,
                }));
                prepared._keep.push(Keep::Ssh(proxy));
            }
            other => return Err(fail(o.err(format!("unsupported mount type {other:?}")))),
        }
    }
    if let Some(target) = first_ssh
        && !exec.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
    {
        prepared.env.push(("SSH_AUTH_SOCK".into(), target));
    }
    prepared.mounts.sort_by(|a, b| a.target().cmp(b.target()));
    Ok(prepared)
}

/// The files a bind mount shows: a private copy of `source` in the build
/// context (without what `.dockerignore` excludes) or in the `from=`
/// filesystem. Returns the copy's directory and the path to mount.
fn source_files(
    run: &Run<'_>,
    mount: &ExecMount,
    source: &Path,
    line: usize,
    o: &Options<'_>,
) -> Result<(ScratchDir, PathBuf), BuildError> {
    let fail = |message: String| BuildError::Exec { line, message };
    let options = run.options;
    match mount.from {
        Some(node) => {
            let layers = run.layers_of(node)?;
            let dir = run.materialize(&layers, line)?;
            let path = inside(&dir.path, source)
                .map_err(|e| fail(o.err(format!("source {}: {e}", source.display()))))?;
            Ok((dir, path))
        }
        None => {
            let matcher = PatternMatcher::new(&options.context_excludes)
                .map_err(|e| fail(format!(".dockerignore: {e}")))?;
            let rel = source.to_string_lossy().into_owned();
            let from = inside(&options.context, source)
                .ok()
                .filter(|_| {
                    rel.is_empty() || !matcher.excludes(&rel) || matcher.may_include_below(&rel)
                })
                .ok_or_else(|| {
                    fail(o.err(format!(
                        "source {:?}: not found in the build context",
                        source.display()
                    )))
                })?;
            let dir = ScratchDir::new(&options.scratch)
                .map_err(|source| BuildError::Source { line, source })?;
            let to = dir.path.join("src");
            copy_tree(&from, &to, &rel, Some(&matcher))
                .map_err(|e| fail(o.err(format!("copying the context: {e}"))))?;
            Ok((dir, to))
        }
    }
}

/// `rel` below `root`, with symlinks resolved; an error if it does not
/// exist or leads outside `root`.
fn inside(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let root = fs::canonicalize(root)?;
    let path = fs::canonicalize(root.join(rel))?;
    if !path.starts_with(&root) {
        return Err(io::Error::other("leads outside its filesystem"));
    }
    Ok(path)
}

/// Copies `from` to `to` (a file, symlink or directory tree), keeping
/// modes, owners and modification times; `rel` is `from`'s path for the
/// exclude patterns.
fn copy_tree(
    from: &Path,
    to: &Path,
    rel: &str,
    excludes: Option<&PatternMatcher>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if ft.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            let name = entry.file_name();
            let child_rel = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            if let Some(m) = excludes
                && m.excludes(&child_rel)
                && !(entry.file_type()?.is_dir() && m.may_include_below(&child_rel))
            {
                continue;
            }
            copy_tree(&entry.path(), &to.join(&name), &child_rel, excludes)?;
        }
    } else if ft.is_file() {
        fs::copy(from, to)?;
    } else {
        // Devices, sockets and fifos are left out, as from a context.
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !ft.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        if let Ok(mtime) = meta.modified()
            && let Ok(f) = fs::File::open(to)
        {
            let _ = f.set_modified(mtime);
        }
    }
    Ok(())
}

/// Picks the cache instance under `base` for `sharing` and locks it:
/// shared ones share instance 0 (holding a shared lock), locked ones wait
/// for an exclusive lock on it, and private ones take the first instance
/// nobody holds.
fn take_cache(base: &Path, sharing: &str) -> io::Result<(PathBuf, Option<fs::File>)> {
    fs::create_dir_all(base)?;
    let lock_file = |n: usize| {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(base.join(format!("{n}.lock")))
    };
    match sharing {
        "locked" => {
            let lock = lock_file(0)?;
            lock.lock()?;
            Ok((base.join("0"), Some(lock)))
        }
        "private" => {
            for n in 0.. {
                let lock = lock_file(n)?;
                match lock.try_lock() {
                    Ok(()) => return Ok((base.join(n.to_string()), Some(lock))),
                    Err(fs::TryLockError::WouldBlock) => continue,
                    Err(fs::TryLockError::Error(e)) => return Err(e),
                }
            }
            unreachable!("an unbounded range")
        }
        _ => {
            let lock = lock_file(0)?;
            lock.lock_shared()?;
            Ok((base.join("0"), Some(lock)))
        }
    }
}

/// How a new cache directory starts.
struct CacheInit<'a> {
    mode: u32,
    uid: u32,
    gid: u32,
    mount: &'a ExecMount,
    /// The subdirectory of `from=` it starts as a copy of.
    source: PathBuf,
}

/// Creates the cache directory `dir` (under `base`) if nobody has yet.
fn create_cache(
    run: &Run<'_>,
    base: &Path,
    dir: &Path,
    init: &CacheInit<'_>,
    line: usize,
    o: &Options<'_>,
) -> Result<(), BuildError> {
    let fail = |e: String| BuildError::Exec {
        line,
        message: o.err(format!("creating the cache: {e}")),
    };
    let io_fail = |e: io::Error| fail(e.to_string());
    let guard = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(base.join("create.lock"))
        .map_err(io_fail)?;
    guard.lock().map_err(io_fail)?;
    if dir.exists() {
        return Ok(());
    }
    let fresh = base.join(format!("new-{}", std::process::id()));
    let _ = fs::remove_dir_all(&fresh);
    match init.mount.from {
        Some(node) => {
            let layers = run.layers_of(node)?;
            let tree = run.materialize(&layers, line)?;
            let seed = inside(&tree.path, &init.source)
                .map_err(|e| fail(format!("source {}: {e}", init.source.display())))?;
            if !seed.is_dir() {
                return Err(fail(format!(
                    "source {} is not a directory",
                    init.source.display()
                )));
            }
            copy_tree(&seed, &fresh, "", None).map_err(io_fail)?;
        }
        None => fs::create_dir(&fresh).map_err(io_fail)?,
    }
    std::os::unix::fs::chown(&fresh, Some(init.uid), Some(init.gid)).map_err(io_fail)?;
    fs::set_permissions(&fresh, fs::Permissions::from_mode(init.mode & 0o7777)).map_err(io_fail)?;
    fs::rename(&fresh, dir).map_err(io_fail)
}

/// Writes a file only its owner (`uid`) may open, with `mode`.
fn write_private(path: &Path, content: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
}

/// A socket of our own that forwards each connection to an SSH agent, so
/// the container never touches the agent's own socket (and gets the mode
/// and owner the mount asks for).
struct SshProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl SshProxy {
    fn start(
        agent: PathBuf,
        files: &Path,
        n: usize,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<SshProxy> {
        let mut path = files.join(format!("ssh-{n}.sock"));
        let mut dir = None;
        // Socket paths must fit in sun_path (108 bytes).
        if path.as_os_str().len() > 100 {
            let d = tempfile::Builder::new().prefix("rbuild-ssh-").tempdir()?;
            path = d.path().join("agent.sock");
            dir = Some(d);
        }
        let listener = UnixListener::bind(&path)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { break };
                let agent = agent.clone();
                std::thread::spawn(move || {
                    if let Ok(upstream) = UnixStream::connect(&agent) {
                        forward(client, upstream);
                    }
                });
            }
        });
        Ok(SshProxy {
            path,
            stop,
            thread: Some(thread),
            _dir: dir,
        })
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Copies bytes both ways until each side has closed.
fn forward(a: UnixStream, b: UnixStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = io::copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_go_units() {
        assert_eq!(ram_in_bytes("1024"), Some(1024));
        assert_eq!(ram_in_bytes("64k"), Some(65536));
        assert_eq!(ram_in_bytes("64m"), Some(64 << 20));
        assert_eq!(ram_in_bytes("1G"), Some(1 << 30));
        assert_eq!(ram_in_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(ram_in_bytes("2mb"), Some(2 << 20));
        assert_eq!(ram_in_bytes("x"), None);
        assert_eq!(ram_in_bytes("1x"), None);
    }

    #[test]
    fn paths_stay_inside() {
        assert_eq!(clean_absolute("/a/../../b/./c"), "/b/c");
        assert_eq!(clean_relative("../../x"), PathBuf::from("x"));
        assert_eq!(clean_relative(""), PathBuf::from(""));
        assert!(
            clean_relative("a/../../..")
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        );
    }

    #[test]
    fn secret_specs() {
        assert_eq!(
            SecretSource::parse("id=a,src=/f").unwrap(),
            ("a".into(), SecretSource::File("/f".into()))
        );
        assert_eq!(
            SecretSource::parse("id=a,env=V").unwrap(),
            ("a".into(), SecretSource::Env("V".into()))
        );
        assert_eq!(
            SecretSource::parse("type=env,id=a,src=V").unwrap(),
            ("a".into(), SecretSource::Env("V".into()))
        );
        assert_eq!(
            SecretSource::parse("src=/x/tok").unwrap(),
            ("tok".into(), SecretSource::File("/x/tok".into()))
        );
        assert!(SecretSource::parse("id=a,type=ftp").is_err());
        assert!(SecretSource::parse("id=a,bogus=1").is_err());
    }

    #[test]
    fn ssh_specs() {
        assert_eq!(
            parse_ssh("default=/s").unwrap(),
            ("default".into(), PathBuf::from("/s"))
        );
        assert!(parse_ssh("=/s").is_err());
    }

    #[test]
    fn ssh_proxy_forwards_to_the_agent() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        let listener = UnixListener::bind(&agent).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4];
                conn.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"ping");
                conn.write_all(b"pong").unwrap();
            }
        });
        let proxy = SshProxy::start(agent, dir.path(), 0, 0o600, 0, 0).unwrap();
        let meta = fs::metadata(&proxy.path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        for _ in 0..2 {
            let mut c = UnixStream::connect(&proxy.path).unwrap();
            c.write_all(b"ping").unwrap();
            let mut reply = String::new();
            c.read_to_string(&mut reply).unwrap();
            assert_eq!(reply, "pong");
        }
        let path = proxy.path.clone();
        drop(proxy);
        assert!(!path.exists());
    }

    #[test]
    fn mount_options() {
        let o = Options::parse("type=bind,target=x,rw");
        assert!(!o.readonly(true).unwrap());
        assert_eq!(o.target("/w").as_deref(), Some("/w/x"));
        let o = Options::parse("type=cache,target=/c,ro=false,mode=0700");
        assert!(!o.readonly(true).unwrap());
        assert_eq!(o.number("mode", 8).unwrap(), Some(0o700));
    }
}
