//! `COPY` from a build context: which files it adds and where, as layer
//! entries.
//!
//! The rules are docker's: sources are relative to the context root and
//! cannot leave it; wildcards follow Go's `filepath.Match`; a directory
//! source copies its contents; several sources need a destination that ends
//! with `/`; a file copied onto an existing directory lands inside it;
//! missing parent directories are created. Files keep their mode and mtime;
//! owners become root (or `--chown`), and `--chmod` replaces modes.
//!
//! What a copy reads is decided by [`select_sources`] and [`select_tree`]
//! (or [`select_children`], one directory at a time), which the build
//! cache's checksum of a copy's files uses too.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::basefs::{BaseFs, Owner};
use crate::layer::{Entry, EntryKind, entry_from_metadata};
use crate::patterns::PatternMatcher;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0:?}: not found in the build context")]
    NotFound(String),
    #[error("{0:?}: no files in the build context match this pattern")]
    NoMatch(String),
    #[error("{0:?}: bad pattern: {1}")]
    BadPattern(String, &'static str),
    #[error(
        "when copying more than one source, the destination must be a directory and end with a / (got {0:?})"
    )]
    DestinationNotDirectory(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// One `COPY` from a local context.
#[derive(Debug, Clone)]
pub struct CopySpec<'a> {
    /// The build context's root on the host.
    pub context: &'a Path,
    /// Source paths or patterns, relative to the context root.
    pub sources: &'a [String],
    /// Absolute destination in the image, workdir already applied; a
    /// trailing `/` means "a directory".
    pub dest: &'a str,
    pub owner: Option<Owner>,
    pub chmod: Option<u32>,
    /// Modification time for directories the copy creates.
    pub created_dir_mtime: u64,
    /// Keep the source files' owners (copies from another stage or image)
    /// instead of making them root's (copies from a context); `owner`
    /// overrides both.
    pub keep_owners: bool,
    /// Files of the source that do not exist for the copy (.dockerignore),
    /// matched against paths relative to the source root.
    pub exclude: Option<&'a PatternMatcher>,
    /// `--exclude` patterns, matched against paths relative to each
    /// copied source (and a file source's own name).
    pub copy_exclude: Option<&'a PatternMatcher>,
    /// `--parents`: sources keep their path (after a `/./` pivot, if any)
    /// below the destination directory.
    pub parents: bool,
    /// ADD: a local tar archive (plain or gzip) is extracted into `dest`.
    pub unpack: bool,
    /// Where extracted archives are kept until the layer is written.
    pub scratch: &'a Path,
}

/// What a copy adds: the entries, and the scratch directories their file
/// contents are read from (removed when this is dropped).
pub struct Copied {
    pub entries: Vec<Entry>,
    _scratch: Vec<tempfile::TempDir>,
}

/// The layer entries a COPY adds on top of `base`, sorted, parents first.
pub fn copy_entries(spec: &CopySpec<'_>, base: &BaseFs) -> Result<Copied, CopyError> {
    let mut scratch = Vec::new();
    let filters = Filters {
        exclude: spec.exclude,
        copy_exclude: spec.copy_exclude,
    };
    let matches = select_sources(spec.context, spec.sources, filters)?;
    let dest_is_dir_hint = spec.dest.ends_with('/') || spec.dest.ends_with("/.") || spec.parents;
    let has_wildcard = spec.sources.iter().any(|s| has_meta(s));
    if (matches.len() > 1 || spec.sources.len() > 1)
        && !dest_is_dir_hint
        && !(has_wildcard && matches.len() == 1)
    {
        return Err(CopyError::DestinationNotDirectory(spec.dest.to_string()));
    }
    // Resolve the destination through the base image's symlinks so entries
    // name real paths, as an overlay diff of the same copy would.
    let dest_clean = rbuild_oci::path::clean(spec.dest);
    let dest = base.resolve_path(&dest_clean, true).unwrap_or(dest_clean);

    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let owner = spec.owner.unwrap_or(Owner { uid: 0, gid: 0 });
    for selected in &matches {
        let source = &spec.sources[selected.source];
        let host_path = &selected.path;
        // With --parents, each source lands at its own path below dest.
        let dest = match spec.parents {
            true => join(&dest, &parents_path(source, &selected.rel)),
            false => dest.clone(),
        };
        if selected.meta.is_dir() {
            // The directory's contents go into dest, which is created like
            // any missing parent (BuildKit does not copy the source
            // directory's own owner or mode onto it).
            create_parents(&dest, base, &owner, spec, &mut out, true);
            for item in select_tree(selected, filters)? {
                let mut entry = entry_from_metadata(&item.path, join(&dest, &item.rel), &item.meta)
                    .map_err(|e| io_err(host_path, e))?;
                finish_entry(&mut entry, spec, spec.keep_owners);
                out.insert(entry.path.clone(), entry);
            }
        } else if spec.unpack && is_archive(host_path) {
            // ADD extracts local archives into the destination directory,
            // keeping the archive's owners unless --chown says otherwise.
            let dir = tempfile::Builder::new()
                .prefix("add-")
                .tempdir_in(spec.scratch)
                .map_err(|e| io_err(spec.scratch, e))?;
            let archive = fs::File::open(host_path).map_err(|e| io_err(host_path, e))?;
            crate::apply::apply_layer(dir.path(), archive)
                .map_err(|e| io_err(host_path, io::Error::other(e.to_string())))?;
            create_parents(&dest, base, &owner, spec, &mut out, true);
            let entries = crate::layer::entries_of_tree(dir.path(), &dest)
                .map_err(|e| io_err(host_path, e))?;
            for mut entry in entries {
                finish_entry(&mut entry, spec, true);
                out.insert(entry.path.clone(), entry);
            }
            scratch.push(dir);
        } else {
            let name = host_path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| CopyError::NotFound(source.clone()))?;
            let into_dir = (dest_is_dir_hint && !spec.parents)
                || dest.is_empty()
                || base.is_dir(&dest)
                || out
                    .get(&dest)
                    .is_some_and(|e| e.kind == EntryKind::Directory);
            let target = if into_dir {
                join(&dest, name)
            } else {
                dest.clone()
            };
            create_parents(&target, base, &owner, spec, &mut out, false);
            // Sources are followed when they are symlinks: COPY copies
            // what the name points to (inside the context).
            let mut entry = entry_from_metadata(host_path, target.clone(), &selected.meta)
                .map_err(|e| io_err(host_path, e))?;
            finish_entry(&mut entry, spec, spec.keep_owners);
            out.insert(target, entry);
        }
    }
    Ok(Copied {
        entries: out.into_values().collect(),
        _scratch: scratch,
    })
}

/// Which files of a copy's source root exist for the copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filters<'a> {
    /// `.dockerignore`: matched against paths relative to the root.
    pub exclude: Option<&'a PatternMatcher>,
    /// `--exclude`: matched against paths relative to each copied source
    /// (and a file source's own name).
    pub copy_exclude: Option<&'a PatternMatcher>,
}

/// A path that one of a copy's sources names.
#[derive(Debug, Clone)]
pub struct Selected {
    /// Which of the sources named it (an index into them).
    pub source: usize,
    /// The host path, below the canonical root, with symlinks in every
    /// component (the last one included) resolved inside the root: never
    /// a symlink itself.
    pub path: PathBuf,
    /// `path` relative to the root, `/`-separated; `""` for the root.
    pub rel: String,
    pub meta: fs::Metadata,
}

/// The paths a copy's `sources` name in `root`, per source in order,
/// wildcard matches sorted; what `.dockerignore` or `--exclude` leaves out
/// is not there. A source that names nothing is an error (unless
/// `--exclude` removed what it named), as in docker.
///
/// This is the one place that decides what a copy reads, together with
/// [`select_children`] for what is below directory sources: the copy and
/// the build cache's checksum of the copied files both use them.
pub fn select_sources(
    root: &Path,
    sources: &[String],
    filters: Filters<'_>,
) -> Result<Vec<Selected>, CopyError> {
    let root = fs::canonicalize(root).map_err(|e| io_err(root, e))?;
    let mut selected = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        for (path, meta) in find_sources(&root, source, filters.exclude)? {
            let rel = relative_to(&root, &path);
            if !excluded_by_copy(filters.copy_exclude, &rel) {
                selected.push(Selected {
                    source: index,
                    path,
                    rel,
                    meta,
                });
            }
        }
    }
    Ok(selected)
}

/// A file, directory or symlink below a directory source.
#[derive(Debug, Clone)]
pub struct TreeItem {
    /// The path below the source directory, `/`-separated.
    pub rel: String,
    /// The path below the root, `/`-separated.
    pub root_rel: String,
    /// The host path.
    pub path: PathBuf,
    /// As `lstat` sees it: symlinks below a source are copied as symlinks,
    /// never followed.
    pub meta: fs::Metadata,
}

/// What a copy reads below the directory source `dir`: parents before
/// their contents, names sorted, without what `.dockerignore` or
/// `--exclude` leaves out.
pub fn select_tree(dir: &Selected, filters: Filters<'_>) -> Result<Vec<TreeItem>, CopyError> {
    let mut items = Vec::new();
    walk_tree(&dir.path, &dir.rel, "", filters, &mut items)?;
    Ok(items)
}

fn walk_tree(
    dir: &Path,
    root_rel: &str,
    rel: &str,
    filters: Filters<'_>,
    items: &mut Vec<TreeItem>,
) -> Result<(), CopyError> {
    for child in select_children(dir, root_rel, rel, filters)? {
        if !child.item.meta.is_dir() {
            items.push(child.item);
            continue;
        }
        let mut below = Vec::new();
        let item = &child.item;
        walk_tree(&item.path, &item.root_rel, &item.rel, filters, &mut below)?;
        if child.only_if_not_empty && below.is_empty() {
            continue;
        }
        items.push(child.item);
        items.append(&mut below);
    }
    Ok(())
}

/// An entry of a directory below a directory source that the copy may
/// read.
#[derive(Debug)]
pub struct TreeChild {
    pub item: TreeItem,
    /// An excluded directory, listed because an exception may re-include
    /// something below it: the copy has it only if it has something below
    /// it.
    pub only_if_not_empty: bool,
}

/// One level of [`select_tree`], for walks that list directories in
/// parallel: what the copy may read in `dir`, which is at `root_rel` below
/// the root and at `rel` below the copied source, names sorted.
pub fn select_children(
    dir: &Path,
    root_rel: &str,
    rel: &str,
    filters: Filters<'_>,
) -> Result<Vec<TreeChild>, CopyError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().into_string().map_err(|name| {
            io_err(
                &dir.join(name),
                io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8"),
            )
        })?;
        entries.push((name, entry));
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut children = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        let root_rel = join(root_rel, &name);
        let rel = join(rel, &name);
        // .dockerignore sees paths from the root, --exclude from the source.
        let excluding = [
            filters
                .exclude
                .filter(|m| m.excludes(&root_rel))
                .map(|m| (m, &root_rel)),
            filters
                .copy_exclude
                .filter(|m| m.excludes(&rel))
                .map(|m| (m, &rel)),
        ];
        let mut excluding = excluding.iter().flatten().peekable();
        let excluded = excluding.peek().is_some();
        if excluded && !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // An excluded directory is still entered when every pattern
        // excluding it may re-include something below it.
        if excluded && !excluding.all(|(m, rel)| m.may_include_below(rel)) {
            continue;
        }
        // An lstat relative to the open directory: never follows a
        // symlink, and looks up one name instead of a whole path.
        let path = entry.path();
        let meta = entry.metadata().map_err(|e| io_err(&path, e))?;
        children.push(TreeChild {
            item: TreeItem {
                rel,
                root_rel,
                path,
                meta,
            },
            only_if_not_empty: excluded,
        });
    }
    Ok(children)
}

/// Whether a file is a tar archive, plain or gzip-compressed, as ADD
/// recognizes them (other compressions are copied as they are).
fn is_archive(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let Ok(mut reader) = crate::compression::decompress(file) else {
        return false;
    };
    let mut header = [0u8; 512];
    let filled = crate::apply::read_prefix(&mut reader, &mut header).unwrap_or(0);
    filled == 512 && &header[257..262] == b"ustar"
}

/// Applies `--chown` (or root ownership, unless owners are kept) and
/// `--chmod` to a copied entry.
fn finish_entry(entry: &mut Entry, spec: &CopySpec<'_>, keep_owner: bool) {
    match spec.owner {
        Some(owner) => {
            entry.uid = u64::from(owner.uid);
            entry.gid = u64::from(owner.gid);
        }
        None if !keep_owner => {
            entry.uid = 0;
            entry.gid = 0;
        }
        None => {}
    }
    if let Some(mode) = spec.chmod
        && !matches!(entry.kind, EntryKind::Symlink { .. })
    {
        entry.mode = mode;
    }
}

/// Adds entries for the missing ancestors of `path` (and `path` itself when
/// `inclusive`), owned like the copied files, as docker creates them.
fn create_parents(
    path: &str,
    base: &BaseFs,
    owner: &Owner,
    spec: &CopySpec<'_>,
    out: &mut BTreeMap<String, Entry>,
    inclusive: bool,
) {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let upto = if inclusive {
        parts.len()
    } else {
        parts.len().saturating_sub(1)
    };
    for i in 1..=upto {
        let dir = parts[..i].join("/");
        if base.is_dir(&dir) || out.contains_key(&dir) {
            continue;
        }
        out.insert(
            dir.clone(),
            Entry {
                path: dir,
                kind: EntryKind::Directory,
                mode: 0o755,
                uid: u64::from(owner.uid),
                gid: u64::from(owner.gid),
                mtime: spec.created_dir_mtime,
                xattrs: Vec::new(),
            },
        );
    }
}

fn io_err(path: &Path, source: io::Error) -> CopyError {
    CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The host paths a source names, sorted, and their metadata. Paths are resolved inside
/// `root` as if it were `/`: symlinks (in any component, the last one
/// included, since COPY copies what a source name points to) never lead
/// out of it, which matters for a context and for another stage's files.
fn find_sources(
    root: &Path,
    source: &str,
    exclude: Option<&PatternMatcher>,
) -> Result<Vec<(PathBuf, fs::Metadata)>, CopyError> {
    let cleaned = rbuild_oci::path::clean(source);
    // Candidates are paths relative to the root, resolved as we go.
    let mut candidates = vec![String::new()];
    for component in cleaned.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &candidates {
            if has_meta(component) {
                let Some((host_dir, _)) = resolve_scoped(root, dir)? else {
                    continue;
                };
                let Ok(read) = fs::read_dir(&host_dir) else {
                    continue;
                };
                let mut names: Vec<String> = read
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                names.sort();
                for name in names {
                    if glob_match(component, &name)
                        .map_err(|why| CopyError::BadPattern(source.to_string(), why))?
                    {
                        next.push(join(dir, &name));
                    }
                }
            } else {
                next.push(join(dir, component));
            }
        }
        candidates = next;
    }
    let mut found = Vec::new();
    for candidate in candidates {
        if let Some((host, meta)) = resolve_scoped(root, &candidate)? {
            // Excluded files are not in the context at all. A directory
            // that is excluded may still hold re-included files.
            let rel = relative_to(root, &host);
            let hidden = exclude.is_some_and(|m| {
                !rel.is_empty() && m.excludes(&rel) && !(meta.is_dir() && m.may_include_below(&rel))
            });
            if !hidden {
                found.push((host, meta));
            }
        }
    }
    if found.is_empty() {
        return Err(if has_meta(source) {
            CopyError::NoMatch(source.to_string())
        } else {
            CopyError::NotFound(source.to_string())
        });
    }
    Ok(found)
}

/// Whether `--exclude` leaves out a matched source: by its path in the
/// source or by its own name.
fn excluded_by_copy(copy_exclude: Option<&PatternMatcher>, rel: &str) -> bool {
    let Some(matcher) = copy_exclude else {
        return false;
    };
    let name = rel.rsplit('/').next().unwrap_or(rel);
    !rel.is_empty() && (matcher.excludes(rel) || matcher.excludes(name))
}

/// The path a `--parents` source keeps below the destination: its path in
/// the source, minus everything up to a `/./` pivot in the pattern.
fn parents_path(pattern: &str, rel: &str) -> String {
    match pattern.find("/./") {
        Some(at) => {
            let pivot = rbuild_oci::path::clean(&pattern[..at]);
            match rel.strip_prefix(&pivot) {
                Some(rest) if pivot.is_empty() || rest.is_empty() || rest.starts_with('/') => {
                    rest.trim_start_matches('/').to_string()
                }
                _ => rel.to_string(),
            }
        }
        None => rel.to_string(),
    }
}

/// `path` relative to `root`, with `/` separators ("" for the root).
fn relative_to(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Resolves `rel` inside `root`, following symlinks in every component,
/// with the metadata of what it names; None when it does not exist.
fn resolve_scoped(root: &Path, rel: &str) -> Result<Option<(PathBuf, fs::Metadata)>, CopyError> {
    const MAX_LINKS: usize = 40;
    let mut rel = rel.to_string();
    for _ in 0..MAX_LINKS {
        let host = crate::apply::resolve_in_root(root, Path::new(&rel))
            .map_err(|e| io_err(root, io::Error::other(e.to_string())))?;
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(None),
            Err(e) => return Err(io_err(&host, e)),
        };
        if !meta.file_type().is_symlink() {
            return Ok(Some((host, meta)));
        }
        let target = fs::read_link(&host).map_err(|e| io_err(&host, e))?;
        let target = target.to_string_lossy();
        let resolved_rel = host
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        rel = if target.starts_with('/') {
            target.into_owned()
        } else {
            let parent = resolved_rel.rsplit_once('/').map_or("", |(p, _)| p);
            format!("{parent}/{target}")
        };
    }
    Err(io_err(
        root,
        io::Error::other(format!(
            "too many levels of symbolic links resolving {rel:?}"
        )),
    ))
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[class]` with
/// ranges and `^` negation, and `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> Result<bool, &'static str> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> Result<bool, &'static str> {
    let (mut pi, mut ni) = (0, 0);
    // Backtracking point for the last `*`.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' if ni < n.len() && n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' if ni < n.len() => {
                    let (matched, len) = match_class(&p[pi..], n[ni])?;
                    if matched {
                        pi += len;
                        ni += 1;
                        continue;
                    }
                }
                '\\' => {
                    let Some(&c) = p.get(pi + 1) else {
                        return Err("trailing backslash");
                    };
                    if ni < n.len() && n[ni] == c {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c if c != '[' && c != '?' && ni < n.len() && n[ni] == c => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    // Validate the class even when there is no character left.
                    match_class(&p[pi..], '\0')?;
                }
                _ => {}
            }
        } else if ni == n.len() {
            return Ok(true);
        }
        match star {
            Some((sp, sn)) if sn < n.len() && n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            _ => {
                // Keep validating the rest of the pattern as Go does.
                validate(&p[pi.min(p.len())..])?;
                return Ok(false);
            }
        }
    }
}

fn validate(p: &[char]) -> Result<(), &'static str> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => i += match_class(&p[i..], '\0')?.1,
            '\\' => {
                if i + 1 >= p.len() {
                    return Err("trailing backslash");
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Matches `c` against the class at the start of `p`; returns whether it
/// matched and the class's length in pattern characters.
fn match_class(p: &[char], c: char) -> Result<(bool, usize), &'static str> {
    let mut i = 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let Some(&ch) = p.get(i) else {
            return Err("unterminated character class");
        };
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = class_char(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&x| x != ']') {
            i += 1;
            class_char(p, &mut i)?
        } else {
            lo
        };
        if lo > hi {
            return Err("bad character range");
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    Ok((matched != negated, i))
}

fn class_char(p: &[char], i: &mut usize) -> Result<char, &'static str> {
    match p.get(*i) {
        Some('\\') => {
            let c = *p.get(*i + 1).ok_or("trailing backslash")?;
            *i += 2;
            Ok(c)
        }
        Some(&c) if c != '-' || *i > 0 => {
            *i += 1;
            Ok(c)
        }
        _ => Err("bad character class"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_like_go() {
        let cases = [
            ("*.txt", "a.txt", true),
            ("*.txt", "a.txs", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("\\*", "*", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob_match(p, n), Ok(want), "{p} ~ {n}");
        }
        assert!(glob_match("[", "a").is_err());
        assert!(glob_match("a\\", "a").is_err());
    }

    #[test]
    fn copies_files_dirs_and_creates_parents() {
        let ctx = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("a.txt"), "a").unwrap();
        fs::write(ctx.path().join("b.txt"), "b").unwrap();
        fs::create_dir_all(ctx.path().join("d/sub")).unwrap();
        fs::write(ctx.path().join("d/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ctx.path().join("escape")).unwrap();
        let base = BaseFs::empty();
        let spec = |sources: &'static [String], dest: &'static str| CopySpec {
            context: ctx.path(),
            sources,
            dest,
            owner: None,
            chmod: None,
            created_dir_mtime: 0,
            keep_owners: false,
            exclude: None,
            copy_exclude: None,
            parents: false,
            unpack: false,
            scratch: ctx.path(),
        };
        let paths = |c: Copied| c.entries.into_iter().map(|e| e.path).collect::<Vec<_>>();

        let one = vec!["a.txt".to_string()].leak();
        assert_eq!(
            paths(copy_entries(&spec(one, "/app/"), &base).unwrap()),
            ["app", "app/a.txt"]
        );
        assert_eq!(
            paths(copy_entries(&spec(one, "/app/renamed"), &base).unwrap()),
            ["app", "app/renamed"]
        );
        let dir = vec!["d".to_string()].leak();
        assert_eq!(
            paths(copy_entries(&spec(dir, "/data"), &base).unwrap()),
            ["data", "data/sub", "data/sub/x"]
        );
        let glob = vec!["*.txt".to_string()].leak();
        assert_eq!(
            paths(copy_entries(&spec(glob, "/g/"), &base).unwrap()),
            ["g", "g/a.txt", "g/b.txt"]
        );
        assert!(matches!(
            copy_entries(&spec(glob, "/g"), &base),
            Err(CopyError::DestinationNotDirectory(_))
        ));
        let missing = vec!["nope".to_string()].leak();
        assert!(matches!(
            copy_entries(&spec(missing, "/"), &base),
            Err(CopyError::NotFound(_))
        ));
        let escape = vec!["escape".to_string()].leak();
        assert!(matches!(
            copy_entries(&spec(escape, "/"), &base),
            Err(CopyError::NotFound(_))
        ));
        let up = vec!["../../a.txt".to_string()].leak();
        assert_eq!(
            paths(copy_entries(&spec(up, "/"), &base).unwrap()),
            ["a.txt"]
        );
    }
}
