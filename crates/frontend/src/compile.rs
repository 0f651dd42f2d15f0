//! Compiling a parsed Dockerfile into a [`Plan`]: stages, ARG/ENV scoping,
//! word expansion and the image config each instruction produces, the way
//! BuildKit's dockerfile2llb does.

use std::collections::{BTreeMap, BTreeSet};

use rbuild_oci::{History, Platform, RuntimeConfig};

use crate::error::{CompileError, ErrorKind};
use crate::goquote::go_quote;
use crate::instructions::{self, Command, CommandLine};
use crate::parser::{Dockerfile, Instruction};
use crate::plan::{Base, CopyOp, CopySource, ImageResolver, MkdirOp, Op, Plan, Stage, Step};
use crate::shell::Lexer;

/// BuildKit's history comment for Dockerfile instructions.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// The PATH a stage gets when its base image sets none (BuildKit's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Inputs of a compilation besides the Dockerfile.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`; the last stage when None.
    pub target: Option<String>,
    /// The platform built for (the host's).
    pub platform: Platform,
}

struct RawStage<'a> {
    from: &'a Instruction,
    image: String,
    alias: Option<String>,
    platform: Option<String>,
    body: Vec<(&'a Instruction, Command)>,
}

/// Compiles `file` for `options`, resolving base images with `resolver`.
pub fn compile(
    file: &Dockerfile,
    options: &CompileOptions,
    resolver: &dyn ImageResolver,
) -> Result<Plan, CompileError> {
    let lexer = Lexer::new(file.directives.escape);
    let platform_args = platform_args(&options.platform);
    let mut used_args: BTreeSet<String> = BTreeSet::new();

    // Global scope: ARGs before the first FROM.
    let mut global_args: Vec<(String, String)> = Vec::new();
    let mut raw_stages: Vec<RawStage<'_>> = Vec::new();
    for inst in &file.instructions {
        let command = instructions::parse(inst)?;
        match command {
            Command::From { image, alias, platform } => {
                raw_stages.push(RawStage { from: inst, image, alias, platform, body: Vec::new() })
            }
            command => match raw_stages.last_mut() {
                Some(stage) => stage.body.push((inst, command)),
                None => match command {
                    Command::Arg(args) => {
                        for (name, default) in args {
                            let env = with_platform(&global_args, &platform_args);
                            let expanded = default.as_deref().map(|d| expand(&lexer, inst, d, &env)).transpose()?;
                            // Declared without any value: unset, not empty.
                            if let Some(value) = arg_value(&name, expanded, options, &mut used_args) {
                                set_pair(&mut global_args, &name, value);
                            }
                        }
                    }
                    _ => return Err(CompileError::at(inst, ErrorKind::Invalid("no build stage in current context: instructions other than ARG must come after FROM".into()))),
                },
            },
        }
    }
    if raw_stages.is_empty() {
        return Err(CompileError::general(ErrorKind::NoStage));
    }

    // Names, FROM expansion and the target.
    let global_env = with_platform(&global_args, &platform_args);
    let mut names: Vec<Option<String>> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    for stage in &raw_stages {
        let image = expand(&lexer, stage.from, &stage.image, &global_env)?;
        if image.is_empty() {
            return Err(CompileError::at(
                stage.from,
                ErrorKind::Invalid(format!("base name ({}) should not be blank", stage.image)),
            ));
        }
        let alias = stage.alias.as_ref().map(|a| a.to_ascii_lowercase());
        if let Some(alias) = &alias
            && names.iter().flatten().any(|n| n == alias)
        {
            return Err(CompileError::at(
                stage.from,
                ErrorKind::Invalid(format!("duplicate stage name {alias:?}")),
            ));
        }
        if let Some(p) = &stage.platform {
            let p = expand(&lexer, stage.from, p, &global_env)?;
            if p != options.platform.to_string()
                && p != format!("{}/{}", options.platform.os, options.platform.architecture)
            {
                return Err(CompileError::at(
                    stage.from,
                    ErrorKind::Unsupported(format!(
                        "building for platform {p} on {}",
                        options.platform
                    )),
                ));
            }
        }
        names.push(alias);
        images.push(image);
    }
    let target = match &options.target {
        None => raw_stages.len() - 1,
        Some(t) => names
            .iter()
            .position(|n| n.as_deref() == Some(&t.to_ascii_lowercase()))
            .ok_or_else(|| {
                CompileError::general(ErrorKind::UnknownTarget {
                    target: t.clone(),
                    stages: names.iter().flatten().cloned().collect(),
                })
            })?,
    };
    // A FROM naming an earlier stage depends on it.
    let base_stage = |i: usize| -> Option<usize> {
        let wanted = images[i].to_ascii_lowercase();
        names[..i]
            .iter()
            .position(|n| n.as_deref() == Some(wanted.as_str()))
    };
    let mut needed = vec![false; raw_stages.len()];
    let mut cursor = Some(target);
    while let Some(i) = cursor {
        needed[i] = true;
        cursor = base_stage(i);
    }

    let mut stages: Vec<Stage> = Vec::new();
    let mut plan_index: Vec<Option<usize>> = vec![None; raw_stages.len()];
    for (i, raw) in raw_stages.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let (base, config, author) = match base_stage(i) {
            Some(dep) => {
                let Some(dep_index) = plan_index[dep] else {
                    return Err(CompileError::at(
                        raw.from,
                        ErrorKind::Invalid(format!("stage {:?} is not built", images[i])),
                    ));
                };
                let dep_stage = &stages[dep_index];
                (
                    Base::Stage(dep_index),
                    dep_stage.config.clone(),
                    dep_stage.author.clone(),
                )
            }
            None if images[i].eq_ignore_ascii_case("scratch") => {
                (Base::Scratch, RuntimeConfig::default(), None)
            }
            None => {
                let resolved = resolver
                    .resolve(&images[i])
                    .map_err(|e| CompileError::at(raw.from, ErrorKind::BaseImage(e)))?
                    .ok_or_else(|| {
                        CompileError::at(raw.from, ErrorKind::BaseImage(format!(
                            "base image {:?} not found: it is not in rbuild's image store (add it with `rbuild load -i FILE`) nor given with --build-context",
                            images[i]
                        )))
                    })?;
                let config = resolved.config.config.clone();
                let author = resolved.config.author.clone();
                (Base::Image(Box::new(resolved)), config, author)
            }
        };
        let mut builder = StageBuilder {
            lexer: &lexer,
            options,
            config,
            author,
            args: Vec::new(),
            cmd_set: false,
            steps: Vec::new(),
            used_args: &mut used_args,
            global_args: &global_args,
            platform_args: &platform_args,
        };
        if builder.config.env_value("PATH").is_none() {
            builder.config.set_env("PATH", DEFAULT_PATH);
        }
        for (inst, command) in &raw.body {
            builder.apply(inst, command)?;
        }
        plan_index[i] = Some(stages.len());
        stages.push(Stage {
            name: names[i].clone(),
            base,
            platform: options.platform.clone(),
            steps: builder.steps,
            config: builder.config,
            author: builder.author,
        });
    }
    let unused_build_args = options
        .build_args
        .keys()
        .filter(|k| !used_args.contains(*k) && !is_builtin_arg(k))
        .cloned()
        .collect();
    Ok(Plan {
        stages,
        unused_build_args,
    })
}

struct StageBuilder<'a> {
    lexer: &'a Lexer,
    options: &'a CompileOptions,
    config: RuntimeConfig,
    author: Option<String>,
    /// ARGs declared in this stage, in order, with their values.
    args: Vec<(String, Option<String>)>,
    /// Whether CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
    steps: Vec<Step>,
    used_args: &'a mut BTreeSet<String>,
    global_args: &'a [(String, String)],
    platform_args: &'a [(String, String)],
}

impl StageBuilder<'_> {
    /// The environment words are expanded in: ARGs, shadowed by ENV.
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        for entry in self.config.env.iter().flatten() {
            let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    fn expand(&self, inst: &Instruction, word: &str) -> Result<String, CompileError> {
        expand(self.lexer, inst, word, &self.env())
    }

    fn workdir(&self) -> String {
        self.config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .shell
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect())
    }

    fn history(&mut self, inst: &Instruction, created_by: String, op: Option<Op>) {
        let empty_layer = op.is_none();
        self.steps.push(Step {
            line: inst.start_line,
            history: History {
                created: None,
                created_by: Some(created_by),
                author: None,
                comment: Some(HISTORY_COMMENT.to_string()),
                empty_layer,
            },
            op,
        });
    }

    fn apply(&mut self, inst: &Instruction, command: &Command) -> Result<(), CompileError> {
        match command {
            Command::From { .. } => unreachable_from(inst),
            Command::Arg(args) => {
                // History records each ARG with its default as expanded,
                // not the --build-arg value (BuildKit's dispatchArg).
                let mut recorded = Vec::new();
                for (name, default) in args {
                    let mut env = self.env();
                    env.extend(self.platform_args.iter().cloned());
                    let expanded_default = default
                        .as_deref()
                        .map(|d| expand(self.lexer, inst, d, &env))
                        .transpose()?;
                    recorded.push(match &expanded_default {
                        Some(d) => format!("{name}={d}"),
                        None => name.clone(),
                    });
                    let mut value = arg_value(name, expanded_default, self.options, self.used_args);
                    if value.is_none() {
                        // `ARG NAME` inherits the global ARG's value.
                        value = self
                            .global_args
                            .iter()
                            .chain(self.platform_args)
                            .rev()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone());
                    }
                    set_pair_opt(&mut self.args, name, value);
                }
                self.history(inst, format!("ARG {}", recorded.join(" ")), None);
                Ok(())
            }
            Command::Env(pairs) | Command::Label(pairs) => {
                let is_env = matches!(command, Command::Env(_));
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    let key = self.expand(inst, k)?;
                    if key.is_empty() {
                        return Err(CompileError::at(
                            inst,
                            ErrorKind::Invalid(format!(
                                "{} names must not be empty",
                                if is_env { "ENV" } else { "LABEL" }
                            )),
                        ));
                    }
                    expanded.push((key, self.expand(inst, v)?));
                }
                let mut created_by = String::from(if is_env { "ENV" } else { "LABEL" });
                for (k, v) in &expanded {
                    created_by.push_str(&format!(" {k}={v}"));
                    if is_env {
                        self.config.set_env(k, v);
                    } else {
                        self.config
                            .labels
                            .get_or_insert_with(BTreeMap::new)
                            .insert(k.clone(), v.clone());
                    }
                }
                self.history(inst, created_by, None);
                Ok(())
            }
            Command::Copy {
                sources,
                dest,
                flags,
            } => {
                for unsupported in ["from", "exclude", "parents"] {
                    if !flags.all(unsupported).is_empty() {
                        return Err(CompileError::at(
                            inst,
                            ErrorKind::Unsupported(format!("COPY --{unsupported}")),
                        ));
                    }
                }
                flags
                    .boolean("link")
                    .map_err(|e| CompileError::at(inst, ErrorKind::Invalid(e)))?;
                let mut expanded_sources = Vec::new();
                for s in sources {
                    expanded_sources.push(self.expand(inst, s)?);
                }
                let dest_expanded = self.expand(inst, dest)?;
                let chown = flags
                    .string("chown")
                    .map(|c| self.expand(inst, c))
                    .transpose()?
                    .filter(|c| !c.is_empty());
                let chmod = match flags.string("chmod") {
                    None => None,
                    Some(c) => {
                        let c = self.expand(inst, c)?;
                        Some(parse_chmod(&c).ok_or_else(|| CompileError::at(inst, ErrorKind::Invalid(format!("invalid --chmod={c}: only octal modes such as 0644 are supported"))))?)
                    }
                };
                let created_by = format!(
                    "COPY {} {} # buildkit",
                    expanded_sources.join(" "),
                    dest_expanded
                );
                let dest_abs = absolute(&self.workdir(), &dest_expanded);
                let op = Op::Copy(CopyOp {
                    from: CopySource::Context,
                    sources: expanded_sources,
                    dest: dest_abs,
                    chown,
                    chmod,
                });
                self.history(inst, created_by, Some(op));
                Ok(())
            }
            Command::Cmd(line) | Command::Entrypoint(line) => {
                let argv = match line {
                    CommandLine::Exec(argv) => argv.clone(),
                    CommandLine::Shell(s) => {
                        let mut argv = self.shell();
                        argv.push(s.clone());
                        argv
                    }
                };
                let name = if matches!(command, Command::Cmd(_)) {
                    "CMD"
                } else {
                    "ENTRYPOINT"
                };
                let created_by = format!("{name} {}", go_quoted_slice(&argv));
                if name == "CMD" {
                    self.config.cmd = Some(argv);
                    self.cmd_set = true;
                } else {
                    self.config.entrypoint = Some(argv);
                    if !self.cmd_set {
                        self.config.cmd = None;
                    }
                }
                self.history(inst, created_by, None);
                Ok(())
            }
            Command::Shell(argv) => {
                self.config.shell = Some(argv.clone());
                self.history(inst, format!("SHELL [{}]", argv.join(" ")), None);
                Ok(())
            }
            Command::Workdir(raw) => {
                let value = self.expand(inst, raw)?;
                let path = absolute(&self.workdir(), &value);
                let path = clean_abs(&path);
                self.config.working_dir = Some(path.clone());
                let op = Op::Mkdir(MkdirOp {
                    path,
                    user: self.config.user.clone().filter(|u| !u.is_empty()),
                });
                // BuildKit records the resolved absolute path.
                self.history(inst, format!("WORKDIR {}", self.workdir()), Some(op));
                Ok(())
            }
            Command::User(raw) => {
                let value = self.expand(inst, raw)?;
                self.config.user = Some(value.clone());
                self.history(inst, format!("USER {value}"), None);
                Ok(())
            }
            Command::Expose(words) => {
                let mut ports: BTreeMap<String, ()> = BTreeMap::new();
                for w in words {
                    for word in self
                        .lexer
                        .process_words(w, &self.env())
                        .map_err(|e| CompileError::at(inst, ErrorKind::Expansion(e.to_string())))?
                    {
                        for port in parse_ports(&word)
                            .map_err(|e| CompileError::at(inst, ErrorKind::Invalid(e)))?
                        {
                            ports.insert(port, ());
                        }
                    }
                }
                let exposed = self.config.exposed_ports.get_or_insert_with(BTreeMap::new);
                for port in ports.keys() {
                    exposed.insert(port.clone(), Default::default());
                }
                let listed: Vec<String> = ports.keys().map(|p| format!("{p}:{{}}")).collect();
                self.history(inst, format!("EXPOSE map[{}]", listed.join(" ")), None);
                Ok(())
            }
            Command::Volume(words) => {
                let mut volumes = Vec::new();
                for w in words {
                    let v = self.expand(inst, w)?;
                    if v.trim().is_empty() {
                        return Err(CompileError::at(
                            inst,
                            ErrorKind::Invalid(
                                "VOLUME specified can not be an empty string".into(),
                            ),
                        ));
                    }
                    volumes.push(v);
                }
                let map = self.config.volumes.get_or_insert_with(BTreeMap::new);
                for v in &volumes {
                    map.insert(v.clone(), Default::default());
                }
                self.history(inst, format!("VOLUME [{}]", volumes.join(" ")), None);
                Ok(())
            }
            Command::StopSignal(raw) => {
                let value = self.expand(inst, raw)?;
                if !valid_signal(&value) {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid(format!("invalid signal: {value}")),
                    ));
                }
                self.config.stop_signal = Some(value.clone());
                self.history(inst, format!("STOPSIGNAL {value}"), None);
                Ok(())
            }
            Command::Maintainer(value) => {
                self.author = Some(value.clone());
                self.history(inst, format!("MAINTAINER {value}"), None);
                Ok(())
            }
            Command::Unsupported(what) => {
                Err(CompileError::at(inst, ErrorKind::Unsupported(what.clone())))
            }
        }
    }
}

fn unreachable_from(inst: &Instruction) -> Result<(), CompileError> {
    Err(CompileError::at(
        inst,
        ErrorKind::Invalid("FROM inside a stage".into()),
    ))
}

fn expand(
    lexer: &Lexer,
    inst: &Instruction,
    word: &str,
    env: &[(String, String)],
) -> Result<String, CompileError> {
    let env: Vec<(String, String)> = env.to_vec();
    lexer
        .process_word(word, &env)
        .map_err(|e| CompileError::at(inst, ErrorKind::Expansion(e.to_string())))
}

/// The value an ARG takes: the build arg when given, else its (already
/// expanded) default, else None (declared without a value).
fn arg_value(
    name: &str,
    expanded_default: Option<String>,
    options: &CompileOptions,
    used: &mut BTreeSet<String>,
) -> Option<String> {
    if let Some(v) = options.build_args.get(name) {
        used.insert(name.to_string());
        return Some(v.clone());
    }
    expanded_default
}

fn set_pair(pairs: &mut Vec<(String, String)>, key: &str, value: String) {
    pairs.retain(|(k, _)| k != key);
    pairs.push((key.to_string(), value));
}

fn set_pair_opt(pairs: &mut Vec<(String, Option<String>)>, key: &str, value: Option<String>) {
    pairs.retain(|(k, _)| k != key);
    pairs.push((key.to_string(), value));
}

fn with_platform(
    args: &[(String, String)],
    platform: &[(String, String)],
) -> Vec<(String, String)> {
    platform.iter().chain(args).cloned().collect()
}

/// The automatic platform ARGs; no cross-building, so build = target.
fn platform_args(p: &Platform) -> Vec<(String, String)> {
    let variant = p.variant.clone().unwrap_or_default();
    let mut out = Vec::new();
    for prefix in ["BUILD", "TARGET"] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((format!("{prefix}VARIANT"), variant.clone()));
    }
    out
}

/// Build args that are always accepted without an ARG (proxies and
/// BuildKit's own switches), so they never trigger "not consumed".
fn is_builtin_arg(name: &str) -> bool {
    matches!(
        name.to_ascii_uppercase().as_str(),
        "HTTP_PROXY" | "HTTPS_PROXY" | "FTP_PROXY" | "NO_PROXY" | "ALL_PROXY"
    ) || name.starts_with("BUILDKIT_")
}

/// `dest` relative to `workdir` unless absolute; a trailing `/` is kept.
fn absolute(workdir: &str, dest: &str) -> String {
    if dest.starts_with('/') {
        dest.to_string()
    } else if workdir.ends_with('/') {
        format!("{workdir}{dest}")
    } else {
        format!("{workdir}/{dest}")
    }
}

fn clean_abs(path: &str) -> String {
    format!("/{}", rbuild_oci::path::clean(path))
}

fn parse_chmod(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, ... (docker's nat.ParsePortSpecs).
fn parse_ports(word: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid containerPort: {word}"))
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!(
            "invalid range specified for container port: {word}"
        ));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Signal names or numbers docker accepts for STOPSIGNAL.
fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    NAMES.contains(&name.to_ascii_uppercase().as_str())
        || name
            .strip_prefix("RTMIN")
            .or_else(|| name.strip_prefix("RTMAX"))
            .is_some_and(|r| r.is_empty() || r.trim_start_matches(['+', '-']).parse::<u8>().is_ok())
}

/// Go's `fmt.Sprintf("%q", []string{...})`: `["a" "b"]`.
fn go_quoted_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}
