//! The layer a RUN step produced: the changes recorded in its overlay upper
//! directory, as OCI layer entries.
//!
//! The upper directory holds everything the run created or modified
//! (copied up from the lower layers first), overlayfs whiteouts (character
//! devices 0:0) for what it deleted, and the `trusted.overlay.opaque`
//! attribute on directories that replace a lower directory. They become:
//!
//! - a whiteout: an empty `.wh.NAME` file (mode 0, owner 0:0, the device's
//!   mtime);
//! - an opaque directory: its own entry, then an empty `.wh..wh..opq`
//!   (mode 0, owner 0:0, the directory's mtime);
//! - anything else: an entry with its type, mode (setuid, setgid and sticky
//!   included), owner, mtime (whole seconds) and extended attributes.
//!   Overlayfs' own attributes (`trusted.overlay.*`, `user.overlay.*`) and
//!   the host's SELinux label (`security.selinux`) are left out. Files
//!   linked to each other become one file and hard links to it (the first
//!   path in sort order). Sockets cannot be in a layer and are left out (a
//!   lower file at their path is whited out).
//!
//! Overlayfs copies a file up when its metadata changes or it is opened for
//! writing, and copies up every directory above a changed path, so the
//! upper directory also holds things the run did not change. A non-
//! directory whose type, content, mode, owner, mtime (to the nanosecond),
//! link target, device number and extended attributes all equal those of
//! the same path in the lower layers is left out; so is an unchanged
//! directory, unless something below it is in the layer (then it stays,
//! as in BuildKit's diff). Files with several links are always kept.
//!
//! The overlay must be mounted with `redirect_dir=off` (the kernel default):
//! a renamed directory that redirects to lower content is refused. Metadata-
//! only copy-ups (`metacopy=on`) are read from the lower file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::layer::{Entry, EntryKind};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const REDIRECT_XATTR: &str = "trusted.overlay.redirect";
const METACOPY_XATTR: &str = "trusted.overlay.metacopy";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Why the changes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file or attribute name is not UTF-8 (layer entries are strings).
    #[error("{path}: {what} is not UTF-8")]
    NotUtf8 { path: PathBuf, what: &'static str },
    /// Overlay state this differ cannot turn into a layer.
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
}

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiffError + use<> {
    let path = path.to_path_buf();
    move |source| DiffError::Io { op, path, source }
}

/// The OCI layer entries for what a run changed, from the overlay upper
/// directory `upper`; `lowers` are the lower directories, topmost first,
/// giving the state before the run (their whiteouts and opaque directories
/// respected). Entries are sorted by path (so parents come before their
/// children); regular files are read from `upper` (or a lower directory,
/// for a metadata-only copy-up) when the layer is written.
pub fn diff_upper(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Entry>, DiffError> {
    diff(upper, lowers, false)
}

/// The OCI layer entries that turn the merged view of `lowers` (overlay-
/// form lower directories, topmost first, as for [`diff_upper`]) into the
/// complete tree at `root`: what a run changed when it ran on a full copy
/// of its base instead of an overlay (the copy-based snapshotter).
///
/// Added and changed paths become entries by the same rules as in
/// [`diff_upper`] (unchanged paths are left out, directories above a
/// change are kept, links to one inode become hard links), and a path the
/// lower layers show but `root` lacks becomes a whiteout `.wh.NAME` (mode
/// 0, owner 0:0, the mtime of its directory in `root`); a deleted
/// directory gets one whiteout, not one per child. `root` is an ordinary
/// tree: character devices 0:0 and overlayfs' attributes in it mean
/// nothing special. Files with several links are left out only when every
/// link is unchanged and they were all one inode in the lower layers.
/// Regular files are read from `root` when the layer is written.
pub fn diff_tree(root: &Path, lowers: &[PathBuf]) -> Result<Vec<Entry>, DiffError> {
    diff(root, lowers, true)
}

fn diff(dir: &Path, lowers: &[PathBuf], tree: bool) -> Result<Vec<Entry>, DiffError> {
    let mut out = Vec::new();
    let mut differ = Differ {
        lowers,
        tree,
        buf: None,
    };
    differ.walk(dir, "", lowers, &mut out)?;
    out.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    if tree {
        out = drop_unchanged_links(out);
    }
    // Later links to an inode become hard links to its first path.
    let mut first: HashMap<(u64, u64), String> = HashMap::new();
    let mut entries = Vec::with_capacity(out.len());
    for Pending {
        mut entry, link, ..
    } in out
    {
        if let Some(key) = link {
            match first.get(&key) {
                Some(target) => {
                    entry.kind = EntryKind::Hardlink {
                        target: target.clone(),
                    };
                    entry.xattrs.clear();
                }
                None => {
                    first.insert(key, entry.path.clone());
                }
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Leaves out the files with several links that are all unchanged and
/// were one inode in the lower layers, then the directories that were
/// only kept for what is below them and no longer have anything there.
fn drop_unchanged_links(out: Vec<Pending>) -> Vec<Pending> {
    // Per inode of `root`: the lower inode all its links equal, or None
    // when one of them is new or changed (or they were several inodes).
    let mut groups: HashMap<(u64, u64), Option<(u64, u64)>> = HashMap::new();
    for p in &out {
        if let Some(key) = p.link {
            groups
                .entry(key)
                .and_modify(|g| {
                    if *g != p.same_as {
                        *g = None;
                    }
                })
                .or_insert(p.same_as);
        }
    }
    let out: Vec<Pending> = out
        .into_iter()
        .filter(|p| {
            p.link
                .is_none_or(|key| groups.get(&key).is_some_and(Option::is_none))
        })
        .collect();
    let mut needed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for p in out.iter().filter(|p| !p.parent_only) {
        let mut path = p.entry.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if !needed.insert(parent) {
                break;
            }
            path = parent;
        }
    }
    let keep: Vec<bool> = out
        .iter()
        .map(|p| !p.parent_only || needed.contains(p.entry.path.as_str()))
        .collect();
    out.into_iter()
        .zip(keep)
        .filter_map(|(p, keep)| keep.then_some(p))
        .collect()
}

/// An entry, and the inode it is one link of when it has several.
struct Pending {
    entry: Entry,
    link: Option<(u64, u64)>,
    /// A directory that is the same as before, kept only for what is
    /// below it.
    parent_only: bool,
    /// Comparing a full tree, a path with several links that is the same
    /// as before: the lower inode it is (device, inode).
    same_as: Option<(u64, u64)>,
}

impl Pending {
    fn new(entry: Entry, link: Option<(u64, u64)>) -> Pending {
        Pending {
            entry,
            link,
            parent_only: false,
            same_as: None,
        }
    }
}

/// A path as the lower layers show it.
struct Before {
    host: PathBuf,
    md: fs::Metadata,
    /// If a directory: the lower directories merged at this path, topmost
    /// first (where the children are looked up).
    merged: Vec<PathBuf>,
}

struct Differ<'a> {
    lowers: &'a [PathBuf],
    /// Walking a full tree ([`diff_tree`]) rather than an upper directory.
    tree: bool,
    /// Buffers for comparing file contents, allocated on first use.
    buf: Option<(Vec<u8>, Vec<u8>)>,
}

impl Differ<'_> {
    /// Adds the entries for the upper directory (or, comparing a full
    /// tree, the directory) `dir` (at `rel` in the layer), whose lower
    /// counterparts are `below`; returns nothing, but whether anything was
    /// added tells the caller to keep `dir`.
    fn walk(
        &mut self,
        dir: &Path,
        rel: &str,
        below: &[PathBuf],
        out: &mut Vec<Pending>,
    ) -> Result<(), DiffError> {
        let names = read_dir_names(dir)?;
        let whiteout_path = |name: &str| {
            if rel.is_empty() {
                format!("{WHITEOUT_PREFIX}{name}")
            } else {
                format!("{rel}/{WHITEOUT_PREFIX}{name}")
            }
        };
        if self.tree {
            // What the lower layers show here and `dir` no longer has.
            let mut gone: Vec<std::ffi::OsString> = Vec::new();
            for lower in below {
                for name in read_dir_names(lower)? {
                    if names.binary_search(&name).is_err() && !gone.contains(&name) {
                        gone.push(name);
                    }
                }
            }
            if !gone.is_empty() {
                let dir_md = fs::symlink_metadata(dir).map_err(io_at("inspect", dir))?;
                for name in gone {
                    if lookup(below, &name)?.is_none() {
                        continue;
                    }
                    let host = dir.join(&name);
                    let name = name.to_str().ok_or(DiffError::NotUtf8 {
                        path: host,
                        what: "file name",
                    })?;
                    out.push(Pending::new(marker(whiteout_path(name), &dir_md), None));
                }
            }
        }
        for name in names {
            let host = dir.join(&name);
            let name = name.to_str().ok_or_else(|| DiffError::NotUtf8 {
                path: host.clone(),
                what: "file name",
            })?;
            let path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let md = fs::symlink_metadata(&host).map_err(io_at("inspect", &host))?;
            let ft = md.file_type();
            if !self.tree && is_whiteout(&md) {
                out.push(Pending::new(marker(whiteout_path(name), &md), None));
                continue;
            }
            let before = lookup(below, OsStr::new(name))?;
            if ft.is_socket() {
                if before.is_some() {
                    out.push(Pending::new(marker(whiteout_path(name), &md), None));
                }
                continue;
            }
            let xattrs = read_xattrs(&host)?;
            if ft.is_dir() {
                if !self.tree && get_xattr(&host, REDIRECT_XATTR)?.is_some() {
                    return Err(DiffError::Unsupported {
                        path: host,
                        reason: "a directory renamed with overlayfs' redirect_dir feature; mount the overlay with redirect_dir=off".into(),
                    });
                }
                let opaque =
                    !self.tree && get_xattr(&host, OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
                let children: &[PathBuf] = match &before {
                    Some(b) if !opaque => &b.merged,
                    _ => &[],
                };
                let start = out.len();
                // The directory's own entry goes in front of its children.
                out.push(Pending::new(
                    entry_for(&path, &md, EntryKind::Directory, xattrs.clone()),
                    None,
                ));
                if opaque {
                    out.push(Pending::new(
                        marker(format!("{path}/{OPAQUE_MARKER}"), &md),
                        None,
                    ));
                }
                self.walk(&host, &path, children, out)?;
                // Only a full tree's entries may still be dropped (links),
                // so only there is an unneeded parent worth marking.
                let unchanged = match &before {
                    Some(b)
                        if !opaque && (self.tree || out.len() == start + 1) && b.md.is_dir() =>
                    {
                        same_meta(&md, &b.md, &xattrs, &b.host)?
                    }
                    _ => false,
                };
                if unchanged {
                    if out.len() == start + 1 {
                        out.truncate(start);
                    } else if let Some(p) = out.get_mut(start) {
                        p.parent_only = true;
                    }
                }
                continue;
            }

            let (kind, source) = if ft.is_file() {
                // A metadata-only copy-up has its data in a lower file.
                let source = if !self.tree && get_xattr(&host, METACOPY_XATTR)?.is_some() {
                    self.metacopy_source(&host, &path, before.as_ref())?
                } else {
                    host.clone()
                };
                let kind = EntryKind::File {
                    source: source.clone(),
                    size: md.len(),
                };
                (kind, source)
            } else if ft.is_symlink() {
                let target = fs::read_link(&host).map_err(io_at("read symlink", &host))?;
                let target =
                    target
                        .into_os_string()
                        .into_string()
                        .map_err(|_| DiffError::NotUtf8 {
                            path: host.clone(),
                            what: "symlink target",
                        })?;
                (EntryKind::Symlink { target }, host.clone())
            } else if ft.is_fifo() {
                (EntryKind::Fifo, host.clone())
            } else if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
                let kind = if ft.is_char_device() {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                };
                (kind, host.clone())
            } else {
                return Err(DiffError::Unsupported {
                    path: host,
                    reason: "unknown file type".into(),
                });
            };
            // Several links: in an upper directory, part of what the run
            // did, never filtered; in a full tree, decided per inode once
            // all its links are seen (`drop_unchanged_links`).
            let link = (md.nlink() > 1).then(|| (md.dev(), md.ino()));
            let unchanged = match &before {
                Some(b) if link.is_none() || self.tree => {
                    self.unchanged(&md, &xattrs, &source, b)?
                }
                _ => false,
            };
            if unchanged && link.is_none() {
                continue;
            }
            let mut pending = Pending::new(entry_for(&path, &md, kind, xattrs), link);
            if unchanged && let Some(b) = &before {
                pending.same_as = Some((b.md.dev(), b.md.ino()));
            }
            out.push(pending);
        }
        Ok(())
    }

    /// Whether a non-directory of the upper directory (its content at
    /// `source`) is the same as it was in the lower layers.
    fn unchanged(
        &mut self,
        md: &fs::Metadata,
        xattrs: &[(String, Vec<u8>)],
        source: &Path,
        before: &Before,
    ) -> Result<bool, DiffError> {
        let (a, b) = (md.file_type(), before.md.file_type());
        let same_type = (a.is_file() && b.is_file())
            || (a.is_symlink() && b.is_symlink())
            || (a.is_fifo() && b.is_fifo())
            || (a.is_char_device() && b.is_char_device())
            || (a.is_block_device() && b.is_block_device());
        if !same_type || md.rdev() != before.md.rdev() || md.len() != before.md.len() {
            return Ok(false);
        }
        if !same_meta(md, &before.md, xattrs, &before.host)? {
            return Ok(false);
        }
        if a.is_symlink() {
            let t1 = fs::read_link(source).map_err(io_at("read symlink", source))?;
            let t2 = fs::read_link(&before.host).map_err(io_at("read symlink", &before.host))?;
            return Ok(t1 == t2);
        }
        if a.is_file() && source != before.host {
            return self.same_content(source, &before.host);
        }
        Ok(true)
    }

    fn same_content(&mut self, a: &Path, b: &Path) -> Result<bool, DiffError> {
        const CHUNK: usize = 64 * 1024;
        let (ba, bb) = self
            .buf
            .get_or_insert_with(|| (vec![0; CHUNK], vec![0; CHUNK]));
        let mut fa = File::open(a).map_err(io_at("open", a))?;
        let mut fb = File::open(b).map_err(io_at("open", b))?;
        loop {
            let na = crate::apply::read_prefix(&mut fa, ba).map_err(io_at("read", a))?;
            let nb = crate::apply::read_prefix(&mut fb, bb).map_err(io_at("read", b))?;
            if ba.get(..na) != bb.get(..nb) {
                return Ok(false);
            }
            if na == 0 {
                return Ok(true);
            }
        }
    }

    /// The lower file holding a metadata-only copy-up's data: the one its
    /// redirect attribute names, else the one at the same path.
    fn metacopy_source(
        &self,
        host: &Path,
        path: &str,
        before: Option<&Before>,
    ) -> Result<PathBuf, DiffError> {
        let unsupported = |reason: &str| DiffError::Unsupported {
            path: host.to_path_buf(),
            reason: reason.into(),
        };
        let found = match get_xattr(host, REDIRECT_XATTR)? {
            Some(target) => {
                let target = String::from_utf8(target).map_err(|_| DiffError::NotUtf8 {
                    path: host.to_path_buf(),
                    what: "redirect target",
                })?;
                // Absolute from the layer root, or a name in the same
                // directory.
                let full = match target.strip_prefix('/') {
                    Some(abs) => abs.to_string(),
                    None => sibling(path, &target),
                };
                lookup_path(self.lowers, &full)?
            }
            None => before.map(|b| Before {
                host: b.host.clone(),
                md: b.md.clone(),
                merged: Vec::new(),
            }),
        };
        match found {
            Some(b) if b.md.is_file() => Ok(b.host),
            _ => Err(unsupported(
                "a metadata-only copy-up whose data is not in the lower layers",
            )),
        }
    }
}

/// `name` in the directory of `path`.
fn sibling(path: &str, name: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name.to_string(),
    }
}

/// An empty regular file standing for a whiteout or opaque marker.
fn marker(path: String, md: &fs::Metadata) -> Entry {
    Entry {
        path,
        kind: EntryKind::Bytes(Vec::new()),
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: u64::try_from(md.mtime()).unwrap_or(0),
        xattrs: Vec::new(),
    }
}

fn entry_for(
    path: &str,
    md: &fs::Metadata,
    kind: EntryKind,
    xattrs: Vec<(String, Vec<u8>)>,
) -> Entry {
    Entry {
        path: path.to_string(),
        kind,
        mode: md.mode() & 0o7777,
        uid: u64::from(md.uid()),
        gid: u64::from(md.gid()),
        mtime: u64::try_from(md.mtime()).unwrap_or(0),
        xattrs,
    }
}

/// Mode, owner, mtime and extended attributes are equal.
fn same_meta(
    md: &fs::Metadata,
    lower: &fs::Metadata,
    xattrs: &[(String, Vec<u8>)],
    lower_host: &Path,
) -> Result<bool, DiffError> {
    if md.mode() & 0o7777 != lower.mode() & 0o7777
        || md.uid() != lower.uid()
        || md.gid() != lower.gid()
        || md.mtime() != lower.mtime()
        || md.mtime_nsec() != lower.mtime_nsec()
    {
        return Ok(false);
    }
    Ok(read_xattrs(lower_host)? == xattrs)
}

/// A whiteout as overlayfs makes them: a character device 0:0.
fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// `name` looked up in `dirs` (the lower directories merged at one path,
/// topmost first) as overlayfs does: the topmost one that has it decides,
/// a whiteout hides it, and a directory merges with directories of the
/// same name further down until one is opaque or not a directory.
fn lookup(dirs: &[PathBuf], name: &OsStr) -> Result<Option<Before>, DiffError> {
    let mut found: Option<Before> = None;
    for dir in dirs {
        let p = dir.join(name);
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) if is_absent(&e) => continue,
            Err(source) => {
                return Err(DiffError::Io {
                    op: "inspect",
                    path: p,
                    source,
                });
            }
        };
        if is_whiteout(&md) {
            break;
        }
        if !md.is_dir() {
            if found.is_none() {
                found = Some(Before {
                    host: p,
                    md,
                    merged: Vec::new(),
                });
            }
            break;
        }
        let opaque = get_xattr(&p, OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
        match &mut found {
            None => {
                found = Some(Before {
                    host: p.clone(),
                    md,
                    merged: vec![p],
                })
            }
            Some(b) => b.merged.push(p),
        }
        if opaque {
            break;
        }
    }
    Ok(found)
}

/// A path (relative to the root) looked up in the lower layers.
fn lookup_path(lowers: &[PathBuf], path: &str) -> Result<Option<Before>, DiffError> {
    let mut dirs: Vec<PathBuf> = lowers.to_vec();
    let mut found = None;
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if comp == ".." {
            return Ok(None);
        }
        let Some(b) = lookup(&dirs, OsStr::new(comp))? else {
            return Ok(None);
        };
        dirs = b.merged.clone();
        found = Some(b);
    }
    Ok(found)
}

fn read_dir_names(dir: &Path) -> Result<Vec<std::ffi::OsString>, DiffError> {
    let mut names = Vec::new();
    for ent in fs::read_dir(dir).map_err(io_at("read directory", dir))? {
        names.push(ent.map_err(io_at("read directory", dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Whether an extended attribute is part of a file's content in a layer.
fn layer_xattr(name: &str) -> bool {
    !(name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name == "security.selinux")
}

/// The layer-worthy extended attributes of a path (not following a final
/// symlink), sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, DiffError> {
    let sys = |op: &'static str| {
        let path = path.to_path_buf();
        move |e: Errno| DiffError::Io {
            op,
            path,
            source: e.into(),
        }
    };
    let mut names = Vec::new();
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(e) if e == Errno::NOTSUP => return Ok(Vec::new()),
            Err(e) => return Err(sys("list extended attributes of")(e)),
        };
        names.resize(size, 0);
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => {
                names.truncate(n);
                break;
            }
            // Grew in between: ask again.
            Err(e) if e == Errno::RANGE => continue,
            Err(e) => return Err(sys("list extended attributes of")(e)),
        }
    }
    let mut out = Vec::new();
    for raw in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw).map_err(|_| DiffError::NotUtf8 {
            path: path.to_path_buf(),
            what: "extended attribute name",
        })?;
        if !layer_xattr(name) {
            continue;
        }
        if let Some(value) = get_xattr(path, name)? {
            out.push((name.to_string(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One extended attribute of a path (not following a final symlink);
/// `None` if it is not set.
fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, DiffError> {
    let mut value = Vec::new();
    loop {
        let size = match rustix::fs::lgetxattr_query(path, name) {
            Ok(n) => n,
            Err(e) if e == Errno::NODATA || e == Errno::NOTSUP => return Ok(None),
            Err(e) => {
                return Err(DiffError::Io {
                    op: "read extended attribute of",
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        };
        value.resize(size, 0);
        match rustix::fs::lgetxattr(path, name, &mut value[..]) {
            Ok(n) => {
                value.truncate(n);
                return Ok(Some(value));
            }
            Err(e) if e == Errno::RANGE => continue,
            Err(e) if e == Errno::NODATA => return Ok(None),
            Err(e) => {
                return Err(DiffError::Io {
                    op: "read extended attribute of",
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}

/// Missing, or a parent is not a directory.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_layer;
    use crate::layer::LayerWriter;
    use crate::snapshot::{
        Snapshots, in_private_mount_namespace, mount_overlay, overlay_supported,
    };
    use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
    use std::collections::BTreeMap;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn set_mtime(p: &Path, secs: i64, nanos: i64) {
        let t = Timespec {
            tv_sec: secs,
            tv_nsec: nanos as _,
        };
        let ts = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn file(p: &Path, content: &[u8], mode: u32, mtime: i64) {
        fs::write(p, content).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(p, mtime, 0);
    }

    fn dir(p: &Path, mode: u32) {
        fs::create_dir_all(p).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn set_xattr(p: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()).unwrap();
    }

    fn whiteout(p: &Path) {
        rustix::fs::mknodat(CWD, p, FileType::CharacterDevice, Mode::empty(), 0).unwrap();
    }

    /// What overlayfs' copy-up does: the same node with the same content,
    /// owner, mode, xattrs and times (plus overlay's own origin xattr).
    fn copy_up(from: &Path, to: &Path) {
        let md = fs::symlink_metadata(from).unwrap();
        if md.is_dir() {
            fs::create_dir(to).unwrap();
        } else if md.file_type().is_symlink() {
            symlink(fs::read_link(from).unwrap(), to).unwrap();
        } else {
            fs::copy(from, to).unwrap();
        }
        std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid())).unwrap();
        if !md.file_type().is_symlink() {
            fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
        }
        for (name, value) in read_xattrs(from).unwrap() {
            set_xattr(to, &name, &value);
        }
        if !md.file_type().is_symlink() {
            set_xattr(to, "trusted.overlay.origin", b"\0\xfb\x21");
        }
        set_mtime(to, md.mtime(), md.mtime_nsec());
    }

    /// (path, short description of the kind) of each entry.
    fn summary(entries: &[Entry]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|e| {
                let kind = match &e.kind {
                    EntryKind::Directory => "dir".to_string(),
                    EntryKind::File { size, .. } => format!("file {size}"),
                    EntryKind::Bytes(b) => format!("bytes {}", b.len()),
                    EntryKind::Symlink { target } => format!("symlink {target}"),
                    EntryKind::Hardlink { target } => format!("link {target}"),
                    EntryKind::CharDevice { major, minor } => format!("char {major}:{minor}"),
                    EntryKind::BlockDevice { major, minor } => format!("block {major}:{minor}"),
                    EntryKind::Fifo => "fifo".to_string(),
                };
                (e.path.clone(), kind)
            })
            .collect()
    }

    fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no entry {path}"))
    }

    fn s(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// A valid v2 `security.capability` value granting cap_net_raw.
    const CAP_NET_RAW: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn upper_entries_whiteouts_opaque_links_and_special_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
        dir(&lower.join("etc"), 0o755);
        file(&lower.join("etc/passwd"), b"root", 0o644, 10);
        file(&lower.join("gone"), b"gone", 0o644, 10);
        file(&lower.join("sock"), b"was a file", 0o644, 10);
        dir(&lower.join("d/sub"), 0o755);
        file(&lower.join("d/old"), b"old", 0o644, 10);
        dir(&upper, 0o755);

        whiteout(&upper.join("gone"));
        set_mtime(&upper.join("gone"), 77, 0);
        dir(&upper.join("d"), 0o750);
        set_xattr(&upper.join("d"), OPAQUE_XATTR, b"y");
        file(&upper.join("d/new"), b"new", 0o644, 20);
        set_mtime(&upper.join("d"), 30, 0);
        dir(&upper.join("bin"), 0o755);
        file(&upper.join("bin/su"), b"su", 0o4755, 20);
        file(&upper.join("bin/sg"), b"sg", 0o2711, 20);
        file(&upper.join("bin/ping"), b"ping", 0o755, 20);
        set_xattr(&upper.join("bin/ping"), "security.capability", &CAP_NET_RAW);
        set_xattr(&upper.join("bin/ping"), "user.note", b"v\0w");
        set_xattr(&upper.join("bin/ping"), "trusted.overlay.origin", b"x");
        file(&upper.join("bin/h1"), b"linked", 0o644, 20);
        fs::hard_link(upper.join("bin/h1"), upper.join("bin/h2")).unwrap();
        symlink("su", upper.join("bin/lnk")).unwrap();
        std::os::unix::fs::lchown(upper.join("bin/lnk"), Some(5), Some(6)).unwrap();
        dir(&upper.join("tmp"), 0o1777);
        rustix::fs::mknodat(
            CWD,
            upper.join("tmp/p"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        dir(&upper.join("dev"), 0o755);
        let null = upper.join("dev/null");
        let dev = rustix::fs::makedev;
        rustix::fs::mknodat(
            CWD,
            &null,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            dev(1, 3),
        )
        .unwrap();
        let sda = upper.join("dev/sda");
        rustix::fs::mknodat(
            CWD,
            &sda,
            FileType::BlockDevice,
            Mode::from_raw_mode(0o660),
            dev(8, 0),
        )
        .unwrap();
        std::os::unix::fs::lchown(&sda, Some(0), Some(6)).unwrap();
        fs::set_permissions(&sda, fs::Permissions::from_mode(0o660)).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(upper.join("sock")).unwrap();
        let _new_sock = std::os::unix::net::UnixListener::bind(upper.join("new.sock")).unwrap();

        let entries = diff_upper(&upper, std::slice::from_ref(&lower)).unwrap();
        assert_eq!(
            summary(&entries),
            s(&[
                (".wh.gone", "bytes 0"),
                (".wh.sock", "bytes 0"),
                ("bin", "dir"),
                ("bin/h1", "file 6"),
                ("bin/h2", "link bin/h1"),
                ("bin/lnk", "symlink su"),
                ("bin/ping", "file 4"),
                ("bin/sg", "file 2"),
                ("bin/su", "file 2"),
                ("d", "dir"),
                ("d/.wh..wh..opq", "bytes 0"),
                ("d/new", "file 3"),
                ("dev", "dir"),
                ("dev/null", "char 1:3"),
                ("dev/sda", "block 8:0"),
                ("tmp", "dir"),
                ("tmp/p", "fifo"),
            ])
        );
        let e = find(&entries, ".wh.gone");
        assert_eq!((e.mode, e.uid, e.gid, e.mtime), (0, 0, 0, 77));
        assert_eq!(find(&entries, "bin/su").mode, 0o4755);
        assert_eq!(find(&entries, "bin/sg").mode, 0o2711);
        assert_eq!(find(&entries, "tmp").mode, 0o1777);
        assert_eq!(find(&entries, "tmp/p").mode, 0o640);
        let e = find(&entries, "bin/lnk");
        assert_eq!((e.uid, e.gid), (5, 6));
        let e = find(&entries, "dev/sda");
        assert_eq!((e.mode, e.gid), (0o660, 6));
        let e = find(&entries, "d");
        assert_eq!((e.mode, e.mtime), (0o750, 30));
        assert!(e.xattrs.is_empty(), "{:?}", e.xattrs);
        assert_eq!(find(&entries, "d/.wh..wh..opq").mtime, 30);
        assert_eq!(
            find(&entries, "bin/ping").xattrs,
            vec![
                ("security.capability".to_string(), CAP_NET_RAW.to_vec()),
                ("user.note".to_string(), b"v\0w".to_vec()),
            ]
        );
        match &find(&entries, "bin/ping").kind {
            EntryKind::File { source, .. } => assert_eq!(source, &upper.join("bin/ping")),
            k => panic!("{k:?}"),
        }
        assert!(
            entries
                .iter()
                .all(|e| e.mtime > 0 || e.path.contains(".wh."))
        );

        // Written as a layer and applied over the lower, it gives the tree.
        let mut w = LayerWriter::new(Vec::new());
        for e in &entries {
            w.add(e).unwrap();
        }
        let (_, _, tar) = w.finish().unwrap();
        let out = tmp.path().join("out");
        dir(&out, 0o755);
        let lower_tar = {
            let mut w = LayerWriter::new(Vec::new());
            for e in crate::layer::entries_of_tree(&lower, "").unwrap() {
                w.add(&e).unwrap();
            }
            w.finish().unwrap().2
        };
        apply_layer(&out, lower_tar.as_slice()).unwrap();
        apply_layer(&out, tar.as_slice()).unwrap();
        assert!(!out.join("gone").exists());
        assert!(fs::symlink_metadata(out.join("sock")).is_err());
        assert!(!out.join("d/old").exists() && !out.join("d/sub").exists());
        assert_eq!(fs::read(out.join("d/new")).unwrap(), b"new");
        assert_eq!(
            fs::metadata(out.join("bin/h1")).unwrap().ino(),
            fs::metadata(out.join("bin/h2")).unwrap().ino()
        );
        let mut buf = [0u8; 64];
        let n =
            rustix::fs::lgetxattr(out.join("bin/ping"), "security.capability", &mut buf).unwrap();
        assert_eq!(&buf[..n], CAP_NET_RAW);
        assert_eq!(
            fs::symlink_metadata(out.join("dev/sda")).unwrap().rdev(),
            dev(8, 0)
        );
    }

    #[test]
    fn unchanged_copy_ups_are_left_out_and_parents_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
        dir(&lower.join("etc"), 0o755);
        file(&lower.join("etc/passwd"), b"root:x:0:0", 0o644, 1_000);
        set_mtime(&lower.join("etc/passwd"), 1_000, 123_456_789);
        set_xattr(&lower.join("etc/passwd"), "user.kind", b"db");
        file(&lower.join("etc/group"), b"root:x:0:", 0o644, 1_000);
        symlink("passwd", lower.join("etc/pw")).unwrap();
        set_mtime(&lower.join("etc/pw"), 900, 0);
        dir(&lower.join("usr/lib"), 0o755);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        file(&lower.join("usr/lib/libc.so"), &big, 0o755, 2_000);
        set_mtime(&lower.join("usr/lib"), 3_000, 5);
        set_mtime(&lower.join("usr"), 3_000, 6);
        set_mtime(&lower.join("etc"), 4_000, 7);

        // Everything copied up, nothing changed.
        dir(&upper, 0o755);
        for p in [
            "etc",
            "etc/passwd",
            "etc/group",
            "etc/pw",
            "usr",
            "usr/lib",
            "usr/lib/libc.so",
        ] {
            copy_up(&lower.join(p), &upper.join(p));
        }
        for p in ["usr/lib", "usr", "etc"] {
            let md = fs::metadata(lower.join(p)).unwrap();
            set_mtime(&upper.join(p), md.mtime(), md.mtime_nsec());
        }
        let lowers = [lower.clone()];
        assert_eq!(summary(&diff_upper(&upper, &lowers).unwrap()), vec![]);

        // A changed mode alone: the file is in, and its parent with it.
        let passwd = upper.join("etc/passwd");
        fs::set_permissions(&passwd, fs::Permissions::from_mode(0o600)).unwrap();
        set_mtime(&passwd, 1_000, 123_456_789);
        let entries = diff_upper(&upper, &lowers).unwrap();
        assert_eq!(
            summary(&entries),
            s(&[("etc", "dir"), ("etc/passwd", "file 10")])
        );
        assert_eq!(find(&entries, "etc/passwd").mode, 0o600);
        assert_eq!(find(&entries, "etc").mtime, 4_000);
        fs::set_permissions(&passwd, fs::Permissions::from_mode(0o644)).unwrap();
        set_mtime(&passwd, 1_000, 123_456_789);
        assert_eq!(diff_upper(&upper, &lowers).unwrap(), vec![]);

        // Same size and times, other bytes (deep in a big file).
        let lib = upper.join("usr/lib/libc.so");
        let mut changed = big.clone();
        changed[150_000] ^= 1;
        fs::write(&lib, &changed).unwrap();
        set_mtime(&lib, 2_000, 0);
        assert_eq!(
            summary(&diff_upper(&upper, &lowers).unwrap()),
            s(&[
                ("usr", "dir"),
                ("usr/lib", "dir"),
                ("usr/lib/libc.so", "file 200000"),
            ])
        );
        fs::write(&lib, &big).unwrap();
        set_mtime(&lib, 2_000, 0);

        // Another mtime (nanoseconds count), xattr value, owner, link target.
        set_mtime(&passwd, 1_000, 0);
        assert_eq!(diff_upper(&upper, &lowers).unwrap().len(), 2);
        set_mtime(&passwd, 1_000, 123_456_789);
        set_xattr(&passwd, "user.kind", b"other");
        assert_eq!(diff_upper(&upper, &lowers).unwrap().len(), 2);
        set_xattr(&passwd, "user.kind", b"db");
        set_mtime(&passwd, 1_000, 123_456_789);
        std::os::unix::fs::lchown(upper.join("etc/group"), Some(1), None).unwrap();
        assert_eq!(diff_upper(&upper, &lowers).unwrap().len(), 2);
        std::os::unix::fs::lchown(upper.join("etc/group"), Some(0), None).unwrap();
        fs::remove_file(upper.join("etc/pw")).unwrap();
        symlink("group", upper.join("etc/pw")).unwrap();
        set_mtime(&upper.join("etc/pw"), 900, 0);
        let entries = diff_upper(&upper, &lowers).unwrap();
        assert_eq!(
            summary(&entries),
            s(&[("etc", "dir"), ("etc/pw", "symlink group")])
        );

        // A changed directory is in on its own account.
        fs::remove_file(upper.join("etc/pw")).unwrap();
        copy_up(&lower.join("etc/pw"), &upper.join("etc/pw"));
        set_mtime(&upper.join("etc"), 4_000, 7);
        fs::set_permissions(upper.join("usr"), fs::Permissions::from_mode(0o700)).unwrap();
        set_mtime(&upper.join("usr"), 3_000, 6);
        let entries = diff_upper(&upper, &lowers).unwrap();
        assert_eq!(summary(&entries), s(&[("usr", "dir")]));
        assert_eq!(find(&entries, "usr").mode, 0o700);
    }

    #[test]
    fn before_state_respects_lower_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let (l1, l2, upper) = (
            tmp.path().join("l1"),
            tmp.path().join("l2"),
            tmp.path().join("upper"),
        );
        // Bottom layer.
        file(
            &{
                dir(&l1, 0o755);
                l1.join("x")
            },
            b"x",
            0o644,
            10,
        );
        dir(&l1.join("o"), 0o755);
        file(&l1.join("o/f"), b"f", 0o644, 10);
        dir(&l1.join("k"), 0o755);
        file(&l1.join("k/f"), b"f", 0o644, 10);
        file(&l1.join("k/g"), b"g", 0o644, 10);
        // Top layer: deletes x, makes o opaque, replaces k/g.
        dir(&l2, 0o755);
        whiteout(&l2.join("x"));
        dir(&l2.join("o"), 0o755);
        set_xattr(&l2.join("o"), OPAQUE_XATTR, b"y");
        dir(&l2.join("k"), 0o755);
        file(&l2.join("k/g"), b"G", 0o644, 20);
        for d in [&l1.join("o"), &l1.join("k"), &l2.join("o"), &l2.join("k")] {
            set_mtime(d, 50, 0);
        }

        dir(&upper, 0o755);
        // Identical to what l1 had, but l1's copy is hidden: all new.
        copy_up(&l1.join("x"), &upper.join("x"));
        copy_up(&l2.join("o"), &upper.join("o"));
        fs::remove_dir(upper.join("o")).unwrap();
        dir(&upper.join("o"), 0o755);
        copy_up(&l1.join("o/f"), &upper.join("o/f"));
        set_mtime(&upper.join("o"), 50, 0);
        // Identical to what the merged view had: unchanged.
        copy_up(&l2.join("k"), &upper.join("k"));
        copy_up(&l1.join("k/f"), &upper.join("k/f"));
        copy_up(&l2.join("k/g"), &upper.join("k/g"));
        set_mtime(&upper.join("k"), 50, 0);

        let entries = diff_upper(&upper, &[l2.clone(), l1.clone()]).unwrap();
        assert_eq!(
            summary(&entries),
            s(&[("o", "dir"), ("o/f", "file 1"), ("x", "file 1")])
        );
        // Against l1 alone, k/g differs and o/f, x are unchanged.
        let entries = diff_upper(&upper, std::slice::from_ref(&l1)).unwrap();
        assert_eq!(summary(&entries), s(&[("k", "dir"), ("k/g", "file 1")]));
    }

    #[test]
    fn redirected_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        dir(&upper.join("moved"), 0o755);
        set_xattr(&upper.join("moved"), REDIRECT_XATTR, b"/orig");
        let err = diff_upper(&upper, &[]).unwrap_err();
        assert!(matches!(err, DiffError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("redirect_dir=off"), "{err}");
    }

    /// Type, mode, owner, mtime (seconds) and content of every path below
    /// `root`.
    fn tree(root: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for name in read_dir_names(dir).unwrap() {
                let p = dir.join(&name);
                let md = fs::symlink_metadata(&p).unwrap();
                let ft = md.file_type();
                let what = if ft.is_dir() {
                    "dir".to_string()
                } else if ft.is_file() {
                    format!("file {:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
                } else if ft.is_symlink() {
                    format!("symlink {}", fs::read_link(&p).unwrap().display())
                } else if ft.is_fifo() {
                    "fifo".to_string()
                } else {
                    format!("other {:o} {}", md.mode(), md.rdev())
                };
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(
                    rel,
                    format!(
                        "{what} mode={:o} owner={}:{} mtime={} nlink={}",
                        md.mode() & 0o7777,
                        md.uid(),
                        md.gid(),
                        md.mtime(),
                        if ft.is_dir() { 0 } else { md.nlink() }
                    ),
                );
                if ft.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    use crate::layer::tests::layer_bytes as layer_tar;

    /// The upper of the two base layers the overlay tests share: a
    /// whiteout, a new file and an opaque directory.
    fn second_layer() -> (rbuild_oci::Digest, Vec<u8>) {
        layer_tar(&[
            dir_e("etc", 200),
            bytes_e("etc/.wh.gone-in-l2", "", 201),
            bytes_e("etc/l2", "l2", 202),
            dir_e("opq", 203),
            bytes_e("opq/.wh..wh..opq", "", 203),
            bytes_e("opq/b", "b", 204),
        ])
    }

    /// Unpacks layers (topmost first) as overlay lower directories.
    fn unpack(snaps: &Snapshots, layers: &[(&rbuild_oci::Digest, &Vec<u8>)]) -> Vec<PathBuf> {
        layers
            .iter()
            .map(|(digest, bytes)| {
                let bytes = (*bytes).clone();
                let mut open =
                    move || Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn io::Read>);
                snaps.lower(digest, &mut open).unwrap()
            })
            .collect()
    }

    fn e(path: &str, kind: EntryKind, mode: u32, mtime: u64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        }
    }

    fn dir_e(path: &str, mtime: u64) -> Entry {
        e(path, EntryKind::Directory, 0o755, mtime)
    }

    fn bytes_e(path: &str, content: &str, mtime: u64) -> Entry {
        e(
            path,
            EntryKind::Bytes(content.as_bytes().to_vec()),
            0o644,
            mtime,
        )
    }

    #[test]
    fn overlay_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snapshots");
        if !overlay_supported(&root) {
            eprintln!("overlayfs is not usable here; skipping");
            return;
        }
        let busybox = Path::new("/bin/busybox");
        assert!(busybox.exists(), "the test needs /bin/busybox");
        let snaps = Snapshots::open(&root).unwrap();
        let (d1, l1) = layer_tar(&[
            dir_e("bin", 100),
            e("bin/tool", EntryKind::Bytes(b"#!".to_vec()), 0o755, 101),
            dir_e("d", 102),
            bytes_e("d/old", "old", 103),
            dir_e("d/sub", 104),
            bytes_e("d/sub/old2", "old2", 105),
            dir_e("etc", 106),
            bytes_e("etc/chm", "chm", 107),
            bytes_e("etc/gone-in-l2", "gone", 108),
            bytes_e("etc/keep", "keep", 109),
            dir_e("opq", 110),
            bytes_e("opq/a", "a", 111),
            dir_e("usr", 112),
            dir_e("usr/share", 113),
            bytes_e("usr/share/doc", "doc", 114),
        ]);
        let (d2, l2) = second_layer();
        let lowers = unpack(&snaps, &[(&d2, &l2), (&d1, &l1)]);
        let dirs = snaps.scratch().unwrap();
        let script = r#"
            set -e
            bb=/bin/busybox
            echo new > etc/new
            $bb ln etc/new etc/new-link
            $bb rm etc/keep
            $bb rm -r d
            $bb mkdir d
            echo fresh > d/fresh
            $bb chmod 600 etc/chm
            $bb ln -s ../etc/new lnk
            $bb mkfifo fifo
            $bb cat usr/share/doc bin/tool > /dev/null
            echo more >> usr/share/doc
            $bb rm opq/b
            $bb mkdir -p a/b/c
            echo deep > a/b/c/f
            $bb chmod 4755 a/b/c/f
        "#;
        let merged = in_private_mount_namespace(|| {
            let mounted = mount_overlay(&lowers, &dirs)?;
            let status = std::process::Command::new(busybox)
                .args(["sh", "-c", script])
                .current_dir(&dirs.rootfs)
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!("script: {status}")));
            }
            let merged = tree(&dirs.rootfs);
            drop(mounted);
            Ok(merged)
        })
        .unwrap();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&tmp.path().display().to_string()),
            "{mounts}"
        );

        let entries = diff_upper(&dirs.upper, &lowers).unwrap();
        let sum = summary(&entries);
        let paths: Vec<&str> = sum.iter().map(|(p, _)| p.as_str()).collect();
        let has = |p: &str, k: &str| {
            assert!(
                sum.contains(&(p.to_string(), k.to_string())),
                "{p} {k} not in {sum:?}"
            )
        };
        has("d", "dir");
        has("d/.wh..wh..opq", "bytes 0");
        has("d/fresh", "file 6");
        has("etc/.wh.keep", "bytes 0");
        has("etc/chm", "file 3");
        has("etc/new", "file 4");
        has("etc/new-link", "link etc/new");
        has("lnk", "symlink ../etc/new");
        has("fifo", "fifo");
        has("opq/.wh.b", "bytes 0");
        has("usr", "dir");
        has("usr/share", "dir");
        has("usr/share/doc", "file 8");
        has("a/b/c/f", "file 5");
        assert_eq!(find(&entries, "etc/chm").mode, 0o600);
        assert_eq!(find(&entries, "a/b/c/f").mode, 0o4755);
        // Copied-up parents kept with their old metadata.
        assert_eq!(find(&entries, "usr").mtime, 112);
        assert_eq!(find(&entries, "usr/share").mtime, 113);
        // Untouched and only-read paths are not in the layer.
        for p in ["bin", "bin/tool", "etc/l2", "opq/a", "d/old"] {
            assert!(!paths.contains(&p), "{p} in {paths:?}");
        }
        assert!(entries.iter().all(|e| {
            !e.xattrs
                .iter()
                .any(|(n, _)| n.starts_with("trusted.overlay."))
        }));
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);

        // The lower layers and the new one, applied, give the merged view.
        let (_, l3) = layer_tar(&entries);
        let out = tmp.path().join("applied");
        fs::create_dir(&out).unwrap();
        for layer in [&l1, &l2, &l3] {
            apply_layer(&out, layer.as_slice()).unwrap();
        }
        assert_eq!(tree(&out), merged);
        drop(dirs);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn tree_diff_against_lower_layers() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("unpacking lower layers needs root (whiteout devices); skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&tmp.path().join("snapshots")).unwrap();
        let link = |path: &str, target: &str| {
            e(
                path,
                EntryKind::Hardlink {
                    target: target.into(),
                },
                0o644,
                0,
            )
        };
        let (d1, l1) = layer_tar(&[
            dir_e("bin", 100),
            e("bin/tool", EntryKind::Bytes(b"#!".to_vec()), 0o755, 101),
            dir_e("d", 102),
            bytes_e("d/old", "old", 103),
            dir_e("d/sub", 104),
            bytes_e("d/sub/old2", "old2", 105),
            dir_e("d/sub/deeper", 104),
            bytes_e("d/sub/deeper/old3", "old3", 105),
            dir_e("etc", 106),
            bytes_e("etc/chm", "chm", 107),
            bytes_e("etc/gone-in-l2", "gone", 108),
            bytes_e("etc/keep", "keep", 109),
            bytes_e("f2d", "file", 110),
            dir_e("h", 111),
            bytes_e("h/a", "linked", 112),
            link("h/b", "h/a"),
            dir_e("opq", 113),
            bytes_e("opq/a", "a", 114),
            dir_e("rep", 115),
            bytes_e("rep/x", "x", 116),
            dir_e("usr", 117),
            dir_e("usr/share", 118),
            bytes_e("usr/share/doc", "doc", 119),
        ]);
        let (d2, l2) = second_layer();
        let lowers = unpack(&snaps, &[(&d2, &l2), (&d1, &l1)]);
        // A full copy of the base, as the copy snapshotter makes it.
        let root = tmp.path().join("root");
        dir(&root, 0o755);
        for layer in [&l1, &l2] {
            apply_layer(&root, layer.as_slice()).unwrap();
        }
        // Nothing changed: nothing in the layer (hard links included).
        assert_eq!(summary(&diff_tree(&root, &lowers).unwrap()), vec![]);

        let r = |p: &str| root.join(p);
        dir(&r("new"), 0o750);
        file(&r("new/file"), b"new", 0o644, 300);
        file(&r("etc/added"), b"added", 0o4755, 301);
        set_xattr(&r("etc/added"), "user.note", b"v");
        fs::set_permissions(r("etc/chm"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(r("etc/keep")).unwrap();
        fs::hard_link(r("etc/l2"), r("etc/l2-link")).unwrap();
        fs::remove_dir_all(r("d/sub")).unwrap();
        fs::remove_dir_all(r("rep")).unwrap();
        file(&r("rep"), b"now a file", 0o644, 302);
        fs::remove_file(r("f2d")).unwrap();
        dir(&r("f2d"), 0o755);
        file(&r("f2d/inner"), b"in", 0o644, 303);
        fs::remove_file(r("h/b")).unwrap();
        fs::remove_file(r("opq/b")).unwrap();
        symlink("etc/added", r("lnk")).unwrap();
        // Not a whiteout in a full tree: a device like any other.
        whiteout(&r("dev0"));
        let stamp = fs::metadata(r("etc")).unwrap().mtime();

        let entries = diff_tree(&root, &lowers).unwrap();
        assert_eq!(
            summary(&entries),
            s(&[
                ("d", "dir"),
                ("d/.wh.sub", "bytes 0"),
                ("dev0", "char 0:0"),
                ("etc", "dir"),
                ("etc/.wh.keep", "bytes 0"),
                ("etc/added", "file 5"),
                ("etc/chm", "file 3"),
                ("etc/l2", "file 2"),
                ("etc/l2-link", "link etc/l2"),
                ("f2d", "dir"),
                ("f2d/inner", "file 2"),
                ("h", "dir"),
                ("h/.wh.b", "bytes 0"),
                ("lnk", "symlink etc/added"),
                ("new", "dir"),
                ("new/file", "file 3"),
                ("opq", "dir"),
                ("opq/.wh.b", "bytes 0"),
                ("rep", "file 10"),
            ])
        );
        let wh = find(&entries, "etc/.wh.keep");
        assert_eq!((wh.mode, wh.uid, wh.gid, wh.mtime), (0, 0, 0, stamp as u64));
        assert_eq!(find(&entries, "etc/chm").mode, 0o600);
        assert_eq!(find(&entries, "etc/chm").mtime, 107);
        assert_eq!(find(&entries, "new").mode, 0o750);
        let added = find(&entries, "etc/added");
        assert_eq!(added.mode, 0o4755);
        assert_eq!(added.xattrs, vec![("user.note".to_string(), b"v".to_vec())]);
        assert!(
            entries
                .iter()
                .all(|e| e.xattrs.iter().all(|(n, _)| !n.starts_with("trusted.")))
        );

        // The base's layers and the new one, applied, give the tree.
        let (_, l3) = layer_tar(&entries);
        let out = tmp.path().join("applied");
        dir(&out, 0o755);
        for layer in [&l1, &l2, &l3] {
            apply_layer(&out, layer.as_slice()).unwrap();
        }
        assert_eq!(tree(&out), tree(&root));

        // Another run on that result: only what it changes.
        let (d3, _) = layer_tar(&entries);
        let lowers3 = [
            unpack(&snaps, &[(&d3, &l3)]).remove(0),
            lowers[0].clone(),
            lowers[1].clone(),
        ];
        // (A device 0:0 in a lower directory is a whiteout to overlayfs,
        // so the lower layers never show it and it stays in every layer.)
        assert_eq!(
            summary(&diff_tree(&out, &lowers3).unwrap()),
            s(&[("dev0", "char 0:0")])
        );
        fs::remove_dir_all(out.join("f2d")).unwrap();
        fs::remove_file(out.join("etc/l2-link")).unwrap();
        let entries = diff_tree(&out, &lowers3).unwrap();
        assert_eq!(
            summary(&entries),
            s(&[
                (".wh.f2d", "bytes 0"),
                ("dev0", "char 0:0"),
                ("etc", "dir"),
                ("etc/.wh.l2-link", "bytes 0"),
            ])
        );
    }
}
