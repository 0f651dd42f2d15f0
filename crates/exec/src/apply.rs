//! Applying an image layer onto a directory, safely.
//!
//! A layer is a tar stream (uncompressed or gzip-compressed) in the OCI /
//! Docker layer format: plain entries plus AUFS-style whiteouts. This module
//! reproduces what containerd's `archive.Apply` (its "naive" applier) does,
//! with the guarantee that nothing is ever created, modified or removed
//! outside the destination directory, whatever the layer contains.
//!
//! How entries are placed:
//!
//! - Entry names are normalised lexically first: leading `/` and `./` are
//!   stripped, `.` components and empty components are dropped and `a/../b`
//!   becomes `b`. containerd cleans a name relative to `/`, so `../x` would
//!   silently become `x`; we instead **reject** any name whose `..`
//!   components climb above the root, because a well-formed layer never
//!   contains one and such a name is a sign of a malicious or broken archive.
//! - The parent components are then resolved inside the root with
//!   [`resolve_in_root`]: symlinks met on the way are followed as if the root
//!   were `/` (absolute targets restart at the root, `..` stops at the root,
//!   at most 40 links are followed). The last component is never followed:
//!   whatever sits there (a symlink in particular) is replaced.
//! - Missing parent directories are created with mode 0755, like
//!   containerd's `mkparent`.
//!
//! Whiteouts (`.wh.NAME`, and `.wh..wh..opq` for opaque directories) delete
//! content from lower layers and are never materialised themselves. Other
//! `.wh..wh.*` names are AUFS bookkeeping (hard link directories and such);
//! they are ignored, as Docker does.
//!
//! Directory modes and times are applied after every entry has been written:
//! creating children changes a directory's mtime, and deferring the mode as
//! well lets an unprivileged caller fill a directory the layer marks as
//! read-only (as root the result is the same as applying the mode at once).
//!
//! We assume we are the only writer into the destination while a layer is
//! applied, so path-based system calls on paths we have just resolved are
//! not racing anyone.
//!
//! A [`LinkedTree`] is given layers of which unpacked copies exist
//! (snapshots made by applying the same layers): regular files found
//! there, unchanged, are hard-linked instead of written. The result is the
//! same tree; it then shares those inodes with the copies, so it must only
//! be read.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

/// What applying a layer did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApplyStats {
    /// Tar members processed (whiteouts included; PAX global headers, GNU
    /// long-name records and PAX records are not members).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Regular files hard-linked from an unpacked copy of the layer
    /// ([`LinkedTree`]) instead of written.
    pub linked: u64,
    /// Device nodes (and fifos) that could not be created because we lack
    /// the privilege (`mknod` failed with `EPERM`) and were skipped.
    pub skipped_devices: u64,
}

/// Why a layer could not be applied.
///
/// `entry` is the entry name as written in the layer (lossily decoded), so
/// the message points at the offending member.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The entry name's `..` components climb above the root.
    #[error(
        "layer entry {entry:?} escapes the destination (its `..` components climb above the root); such entries are rejected"
    )]
    Escape { entry: String },
    /// A hard link's target name climbs above the root.
    #[error("hard link {entry:?} points to {target:?}, which is outside the destination")]
    LinkEscape { entry: String, target: String },
    /// A hard link's target does not exist in the destination.
    #[error("hard link {entry:?} points to {target:?}, which does not exist in the destination")]
    LinkTargetMissing { entry: String, target: String },
    /// The entry is malformed (bad header field, NUL in a name, ...).
    #[error("layer entry {entry:?} is invalid: {reason}")]
    InvalidEntry { entry: String, reason: String },
    /// Resolving the entry's parents needed more than 40 symlinks.
    #[error("resolving {entry:?}: too many levels of symbolic links (more than 40)")]
    TooManyLinks { entry: String },
    /// A parent of the entry exists and is not a directory.
    #[error("layer entry {entry:?}: {path} exists and is not a directory")]
    NotADirectory { entry: String, path: PathBuf },
    /// The entry has a tar type we do not know how to apply.
    #[error("layer entry {entry:?} has an unsupported type: {kind}")]
    UnsupportedEntry { entry: String, kind: String },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The layer stream could not be read or is not a valid (compressed) tar.
    #[error("reading the layer: {source}")]
    Tar {
        #[source]
        source: io::Error,
    },
}

/// Linux's own limit on symlinks followed during one lookup (`MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// containerd bounds times to what a Go `time.Time` in nanoseconds since
/// the epoch can hold, and maps anything outside `[epoch, max]` to the epoch.
const MAX_TIME_SECS: i64 = i64::MAX / 1_000_000_000;
/// Copy buffer for regular-file contents.
const COPY_BUF: usize = 64 * 1024;

/// Applies one layer (a plain, gzip or zstd tar) onto `root`, which must
/// exist.
///
/// The compression is detected from the first bytes of the stream. The whole input
/// is consumed, trailing padding included, so a digest computed over the
/// stream by the caller covers every byte and a gzip trailer is verified.
pub fn apply_layer(root: &Path, mut layer: impl Read) -> Result<ApplyStats, ApplyError> {
    check_destination(root)?;
    let stream =
        crate::compression::decompress(&mut layer).map_err(|source| ApplyError::Tar { source })?;
    apply_tar(root, stream, None).map(|(stats, _)| stats)
}

/// A tree that layers are applied onto one after another, as
/// [`apply_layer`] does, and that is only read afterwards (a COPY's
/// sources): a regular file that an unpacked copy of its layer (an overlay
/// snapshot: the same layer applied onto an empty directory, never
/// modified) holds at the entry's own path (reached without following any
/// symlink) with the entry's size, owner, mode and time is hard-linked from
/// there, and the entry's data is skipped, not written. Files with xattrs
/// or holes are always written, and so is anything when linking fails
/// (another filesystem, say).
///
/// The tree's files may then be the copies' own inodes: it must never be
/// written to or handed to a RUN. A later layer's hard link to such a file,
/// whose metadata would land on the shared inode, first gets the file a
/// copy of its own.
pub struct LinkedTree {
    root: PathBuf,
    /// Host paths whose inode is an unpacked copy's.
    linked: HashSet<PathBuf>,
}

impl LinkedTree {
    /// A tree at `root`, which must exist.
    pub fn new(root: &Path) -> LinkedTree {
        LinkedTree {
            root: root.to_path_buf(),
            linked: HashSet::new(),
        }
    }

    /// Applies the next layer; `unpacked` is its unpacked copy, if any.
    pub fn apply(
        &mut self,
        mut layer: impl Read,
        unpacked: Option<&Path>,
    ) -> Result<ApplyStats, ApplyError> {
        check_destination(&self.root)?;
        // Without the copy, the layer is applied as usual.
        let from = unpacked.and_then(|dir| {
            rustix::fs::open(
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
        });
        let stream = crate::compression::decompress(&mut layer)
            .map_err(|source| ApplyError::Tar { source })?;
        let links = Links {
            from,
            linked: std::mem::take(&mut self.linked),
        };
        let (stats, links) = apply_tar(&self.root, stream, Some(links))?;
        self.linked = links.map(|l| l.linked).unwrap_or_default();
        Ok(stats)
    }
}

/// Fails unless `root` is an existing directory.
fn check_destination(root: &Path) -> Result<(), ApplyError> {
    let md = fs::metadata(root).map_err(io_at("inspect destination", root))?;
    if md.is_dir() {
        return Ok(());
    }
    Err(ApplyError::Io {
        op: "inspect destination",
        path: root.to_path_buf(),
        source: io::Error::from(io::ErrorKind::NotADirectory),
    })
}

/// What [`LinkedTree`] hands an applier.
struct Links {
    /// The layer's unpacked copy, if it has one.
    from: Option<OwnedFd>,
    linked: HashSet<PathBuf>,
}

/// Resolves `path` (relative to `root`, as a layer entry names it) inside
/// `root`, following symlinks in parent components as if `root` were `/`;
/// the last component is not followed. Returns the host path.
///
/// A leading `/` is ignored and `..` stops at the root, so the result is
/// always `root` or below it. Components that do not exist (yet) are taken
/// as they are. Fails with [`ApplyError::TooManyLinks`] after 40 symlinks.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, ApplyError> {
    let steps = path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(Step::Name(name.to_owned())),
        Component::ParentDir => Some(Step::Up),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    });
    let resolved = resolve_components(root, steps, &path.to_string_lossy(), &HashSet::new())?;
    Ok(join_all(root, &resolved))
}

/// One step of a path walk: a name to descend into, or `..`.
enum Step {
    Name(OsString),
    Up,
}

/// Walks `steps` from `root`, following symlinks except on the last step,
/// and returns the components (below `root`) of the resolved path. Every
/// returned component but the last is a real directory or does not exist.
fn resolve_components(
    root: &Path,
    steps: impl IntoIterator<Item = Step>,
    entry: &str,
    known_dirs: &HashSet<PathBuf>,
) -> Result<Vec<OsString>, ApplyError> {
    let mut pending: VecDeque<Step> = steps.into_iter().collect();
    let mut resolved: Vec<OsString> = Vec::new();
    // Host path of `resolved`, kept in step to avoid rebuilding it.
    let mut host = root.to_path_buf();
    let mut links = 0u32;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Up => {
                // `..` at the root stays at the root, as on a real `/`.
                if resolved.pop().is_some() {
                    host.pop();
                }
                continue;
            }
            Step::Name(name) => name,
        };
        if pending.is_empty() {
            // The final component is the entry itself: never followed.
            resolved.push(name);
            break;
        }
        host.push(&name);
        // A directory this apply made or checked is still one: no lstat.
        if known_dirs.contains(&host) {
            resolved.push(name);
            continue;
        }
        match fs::symlink_metadata(&host) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ApplyError::TooManyLinks {
                        entry: entry.to_owned(),
                    });
                }
                let target = fs::read_link(&host).map_err(io_at("read symlink", &host))?;
                host.pop();
                if target.has_root() {
                    // Absolute targets are relative to the root, not the host.
                    resolved.clear();
                    host = root.to_path_buf();
                }
                // Splice the target in place of the link and keep walking.
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(n) => pending.push_front(Step::Name(n.to_owned())),
                        Component::ParentDir => pending.push_front(Step::Up),
                        Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(_) => resolved.push(name),
            // Not there (yet): taken literally, the caller creates it or
            // reports the missing path.
            Err(e) if is_absent(&e) => resolved.push(name),
            Err(e) => {
                return Err(ApplyError::Io {
                    op: "inspect",
                    path: host,
                    source: e,
                });
            }
        }
    }
    Ok(resolved)
}

/// Reads up to `buf.len()` bytes, fewer only at end of stream (for
/// sniffing magic numbers without consuming a stream twice).
pub fn read_prefix(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn apply_tar<R: Read>(
    root: &Path,
    reader: R,
    links: Option<Links>,
) -> Result<(ApplyStats, Option<Links>), ApplyError> {
    let src = Source(Rc::new(RefCell::new(SourceState {
        inner: reader,
        filler: 0,
    })));
    let mut archive = tar::Archive::new(src.clone());
    let mut applier = Applier::new(root);
    applier.links = links;
    // Raw mode: the tar crate hands us PAX ('x', 'g') and GNU long name
    // ('L', 'K') members as they are, instead of parsing PAX records itself
    // by splitting at newlines, which breaks on binary values such as
    // `security.capability` (composefs/tar-rs#428). We parse them by their
    // length prefix and apply them to the next member.
    let mut ext = Ext::default();
    let mut pending = false;
    for entry in archive.entries().map_err(tar_err)?.raw(true) {
        let mut entry = entry.map_err(tar_err)?;
        let header = entry.header().clone();
        let etype = header.entry_type();
        if etype.is_pax_global_extensions() {
            // Global PAX records carry nothing we apply (containerd ignores
            // them too); they are not members, and the tar crate skips
            // their data.
            continue;
        }
        if etype.is_pax_local_extensions() || etype.is_gnu_longname() || etype.is_gnu_longlink() {
            let data = read_ext_data(&mut entry)?;
            if etype.is_pax_local_extensions() {
                parse_pax(&data, &mut ext).map_err(|reason| ApplyError::InvalidEntry {
                    entry: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                    reason: format!("PAX extended header: {reason}"),
                })?;
            } else {
                // A NUL-terminated name, as Go's archive/tar reads it.
                let name = data.split(|&b| b == 0).next().unwrap_or_default().to_vec();
                if etype.is_gnu_longname() {
                    ext.gnu_path = Some(name);
                } else {
                    ext.gnu_link = Some(name);
                }
            }
            pending = true;
            continue;
        }
        pending = false;
        let ext = std::mem::take(&mut ext);
        let header_size = header.entry_size().map_err(tar_err)?;
        match ext.size.filter(|&size| size != header_size) {
            None => {
                let sparse = read_sparse_map(&header, &src)?;
                applier.apply_entry(&header, ext, sparse, &mut entry)?;
            }
            Some(size) => {
                // The PAX size overrides the header's, which the tar crate
                // framed the member by (Go writes 0 there for files of 8 GiB
                // and more): read the data and its padding straight from the
                // stream, then feed the tar crate zeros in place of the
                // data it believes the member has so it stays in step. A
                // header size above the PAX size is contradictory (and
                // would have us serve unbounded zeros): refused.
                if header_size > size {
                    return Err(ApplyError::InvalidEntry {
                        entry: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                        reason: format!("PAX size {size} is below the header size {header_size}"),
                    });
                }
                let mut data = src.clone().take(size);
                applier.apply_entry(&header, ext, None, &mut data)?;
                io::copy(&mut data, &mut io::sink()).map_err(tar_err)?;
                io::copy(&mut src.clone().take(padding(size)), &mut io::sink()).map_err(tar_err)?;
                src.0.borrow_mut().filler = header_size + padding(header_size);
            }
        }
    }
    if pending {
        return Err(tar_err(io::Error::other(
            "extension headers describing a member, but no member after them",
        )));
    }
    // Consume what follows the end-of-archive blocks so the gzip trailer
    // (CRC and length) is checked and a caller's digest sees the whole blob.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(tar_err)?;
    applier.finish_dirs()?;
    Ok((applier.stats, applier.links))
}

/// The unpacked copy's regular file at `origin` (below `from`, no symlink
/// followed, no other mount crossed) if it has the entry's metadata and
/// size; the entry's data is then what the copy was written from.
fn unchanged_in(from: BorrowedFd<'_>, origin: &Path, meta: &Meta, size: u64) -> Option<OwnedFd> {
    let how = rustix::fs::ResolveFlags::BENEATH
        | rustix::fs::ResolveFlags::NO_SYMLINKS
        | rustix::fs::ResolveFlags::NO_MAGICLINKS
        | rustix::fs::ResolveFlags::NO_XDEV;
    let fd = rustix::fs::openat2(
        from,
        origin,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        how,
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    let same = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && st.st_mode & 0o7777 == meta.mode
        && st.st_uid == meta.uid
        && st.st_gid == meta.gid
        && u64::try_from(st.st_size).ok() == Some(size)
        && st.st_mtime == meta.mtime.secs
        && u32::try_from(st.st_mtime_nsec).ok() == Some(meta.mtime.nanos);
    same.then_some(fd)
}

/// Bytes of zero padding after `size` bytes of member data.
fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

/// The layer stream, shared by the tar crate's archive and us, so that we
/// can read bytes the tar crate does not know belong to a member (data
/// sized by a PAX record, GNU sparse extension blocks) without it losing
/// track of where the next header is.
struct Source<R>(Rc<RefCell<SourceState<R>>>);

// Derived Clone would require `R: Clone`.
impl<R> Clone for Source<R> {
    fn clone(&self) -> Self {
        Source(Rc::clone(&self.0))
    }
}

struct SourceState<R> {
    inner: R,
    /// Zero bytes to serve before reading on: stand-ins for member data
    /// the tar crate skips but that we have read already.
    filler: u64,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.0.borrow_mut();
        if st.filler == 0 {
            return st.inner.read(buf);
        }
        let n = buf
            .len()
            .min(usize::try_from(st.filler).unwrap_or(usize::MAX));
        buf.iter_mut().take(n).for_each(|b| *b = 0);
        st.filler -= n as u64;
        Ok(n)
    }
}

/// What the PAX and GNU extension members before a member say about it.
#[derive(Default)]
struct Ext {
    /// PAX `path` and `linkpath`.
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    /// GNU long name ('L') and long link ('K'); these win over PAX, as in
    /// Go's archive/tar.
    gnu_path: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Go's archive/tar bound on PAX and GNU long name data.
const MAX_EXT_DATA: u64 = 1 << 20;

fn read_ext_data(entry: &mut impl Read) -> Result<Vec<u8>, ApplyError> {
    let mut data = Vec::new();
    entry
        .take(MAX_EXT_DATA + 1)
        .read_to_end(&mut data)
        .map_err(tar_err)?;
    if data.len() as u64 > MAX_EXT_DATA {
        return Err(tar_err(io::Error::other(
            "PAX or GNU long name header larger than 1 MiB",
        )));
    }
    Ok(data)
}

/// Parses PAX extended header records into `ext`; later records win.
///
/// Each record is `"%d %s=%s\n"`: a decimal length counting the whole
/// record (its own digits, the space and the newline included), the key,
/// `=`, and a value that is arbitrary bytes, newlines included, so records
/// are split by their length, never at newlines. `uname`, `gname`, `atime`
/// and other keys are ignored: like containerd we apply numeric ids and
/// only the modification time.
fn parse_pax(mut data: &[u8], ext: &mut Ext) -> Result<(), String> {
    // Some writers pad the records with NULs.
    while data.iter().any(|&b| b != 0) {
        let digits = data.iter().take_while(|b| b.is_ascii_digit()).count();
        let len = std::str::from_utf8(data.get(..digits).unwrap_or_default())
            .ok()
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or("a record does not start with a valid length")?;
        // The shortest record is "LEN k=\n".
        if data.get(digits) != Some(&b' ') || len < digits + 4 || len > data.len() {
            return Err(format!("a record has an invalid length {len}"));
        }
        let (record, rest) = data.split_at(len);
        data = rest;
        let body = record
            .get(digits + 1..)
            .and_then(|b| b.strip_suffix(b"\n"))
            .ok_or("a record does not end with its newline")?;
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .filter(|&i| i > 0)
            .ok_or("a record has no key")?;
        let (key, value) = (
            body.get(..eq).unwrap_or_default(),
            body.get(eq + 1..).unwrap_or_default(),
        );
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{} is not a number", String::from_utf8_lossy(key)))
        };
        match key {
            b"path" => ext.path = Some(value.to_vec()),
            b"linkpath" => ext.link = Some(value.to_vec()),
            b"size" => ext.size = Some(number()?),
            b"uid" => ext.uid = Some(number()?),
            b"gid" => ext.gid = Some(number()?),
            // Sub-second (or out-of-octal-range) mtime; a malformed value
            // falls back to the header's.
            b"mtime" => ext.mtime = parse_pax_time(value).or(ext.mtime),
            _ => {
                if let Some(attr) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    ext.xattrs.push((attr.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

/// A GNU sparse file's layout: (offset, length) of each data region, in
/// the order the member's data holds them, and the file's full size.
struct SparseMap {
    regions: Vec<(u64, u64)>,
    real_size: u64,
}

/// Reads the sparse map of an old-GNU sparse member ('S'): up to four
/// regions in the header, more in extension blocks that sit between the
/// header and the data. The tar crate in raw mode does not know about
/// those blocks, so they are read straight from the stream.
fn read_sparse_map<R: Read>(
    header: &tar::Header,
    src: &Source<R>,
) -> Result<Option<SparseMap>, ApplyError> {
    if header.entry_type() != tar::EntryType::GNUSparse {
        return Ok(None);
    }
    let entry = || String::from_utf8_lossy(&header.path_bytes()).into_owned();
    let invalid = |reason: String| ApplyError::InvalidEntry {
        entry: entry(),
        reason,
    };
    let gnu = header
        .as_gnu()
        .ok_or_else(|| invalid("sparse entry type in a non-GNU header".into()))?;
    let real_size = gnu.real_size().map_err(|e| invalid(e.to_string()))?;
    let mut regions = Vec::new();
    let mut add = |blocks: &[tar::GnuSparseHeader]| -> Result<(), ApplyError> {
        for b in blocks.iter().filter(|b| !b.is_empty()) {
            let off = b.offset().map_err(|e| invalid(e.to_string()))?;
            let len = b.length().map_err(|e| invalid(e.to_string()))?;
            regions.push((off, len));
        }
        Ok(())
    };
    add(&gnu.sparse)?;
    let mut extended = gnu.is_extended();
    while extended {
        let mut block = tar::GnuExtSparseHeader::new();
        src.clone()
            .read_exact(block.as_mut_bytes())
            .map_err(tar_err)?;
        add(block.sparse())?;
        extended = block.is_extended();
    }
    // In order, not overlapping, inside the file, and accounting for
    // exactly the member's data.
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, len) in &regions {
        let stop = off
            .checked_add(len)
            .filter(|&s| off >= end && s <= real_size);
        end =
            stop.ok_or_else(|| invalid("sparse regions out of order or out of the file".into()))?;
        total += len;
    }
    if total != header.entry_size().map_err(|e| invalid(e.to_string()))? {
        return Err(invalid(
            "sparse regions do not match the member's data size".into(),
        ));
    }
    Ok(Some(SparseMap { regions, real_size }))
}

/// What a tar member becomes on disk.
enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Device(FileType, u32, u32),
}

/// A time as seconds and nanoseconds since the epoch, already bounded to
/// `[epoch, MAX_TIME_SECS]` so conversions cannot fail.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Time {
    secs: i64,
    nanos: u32,
}

impl Time {
    const EPOCH: Time = Time { secs: 0, nanos: 0 };

    fn bounded(secs: i64, nanos: u32) -> Time {
        if (0..=MAX_TIME_SECS).contains(&secs) && nanos < 1_000_000_000 {
            Time { secs, nanos }
        } else {
            Time::EPOCH
        }
    }

    fn system_time(self) -> SystemTime {
        let d = Duration::new(u64::try_from(self.secs).unwrap_or(0), self.nanos);
        SystemTime::UNIX_EPOCH
            .checked_add(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn timestamps(self) -> Timestamps {
        let ts = Timespec {
            tv_sec: self.secs,
            tv_nsec: self.nanos.into(),
        };
        Timestamps {
            last_access: ts,
            last_modification: ts,
        }
    }
}

/// Mode and mtime of a directory entry, applied once the layer is written.
struct DirMeta {
    mode: u32,
    mtime: Time,
}

/// Ownership, mode, time and xattrs of an entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Time,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Applier<'r> {
    root: &'r Path,
    /// Whether we may set any owner; if not, failing to chown is expected.
    privileged: bool,
    stats: ApplyStats,
    /// Host paths this layer created or updated: an opaque whiteout keeps them.
    unpacked: HashSet<PathBuf>,
    /// Directories above `unpacked` paths: an opaque whiteout keeps them too,
    /// otherwise a lower directory holding this layer's files would be removed.
    ancestors: HashSet<PathBuf>,
    /// Directory entries, by host path; ordered so that reverse iteration
    /// visits children before their parents.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Host paths known to be real directories (not symlinks): made or
    /// checked by this apply. Path resolution skips their lstat, which for
    /// a layer of many small files was most of the work. Emptied whenever
    /// anything is removed, so it never vouches for a path that changed.
    known_dirs: HashSet<PathBuf>,
    buf: Vec<u8>,
    /// For a [`LinkedTree`]: where unchanged files are linked from, and
    /// which files are linked.
    links: Option<Links>,
}

impl<'r> Applier<'r> {
    fn new(root: &'r Path) -> Self {
        Applier {
            root,
            privileged: rustix::process::geteuid().is_root(),
            stats: ApplyStats::default(),
            unpacked: HashSet::new(),
            ancestors: HashSet::new(),
            dirs: BTreeMap::new(),
            known_dirs: HashSet::new(),
            buf: vec![0; COPY_BUF],
            links: None,
        }
    }

    /// Applies one member: its header, what the extension members before
    /// it said, its sparse layout if any, and its data.
    fn apply_entry(
        &mut self,
        header: &tar::Header,
        ext: Ext,
        sparse: Option<SparseMap>,
        data: &mut dyn Read,
    ) -> Result<(), ApplyError> {
        let etype = header.entry_type();
        self.stats.entries += 1;
        // The data's length: a PAX size overrides the header's.
        let size = match ext.size {
            Some(size) => size,
            None => header.entry_size().map_err(tar_err)?,
        };
        let raw_name = match ext.gnu_path.or(ext.path) {
            Some(name) => name,
            None => header.path_bytes().into_owned(),
        };
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let invalid = |reason: String| ApplyError::InvalidEntry {
            entry: name.clone(),
            reason,
        };

        let link = ext
            .gnu_link
            .or(ext.link)
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let kind = match etype {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // Pre-POSIX archives mark directories with type NUL and a
                // trailing slash (Go's archive/tar reads them the same way).
                if header.as_old().linkflag[0] == 0 && raw_name.ends_with(b"/") {
                    Kind::Dir
                } else {
                    Kind::File
                }
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                Kind::Symlink(link.ok_or_else(|| invalid("symlink without a target".into()))?)
            }
            tar::EntryType::Link => {
                Kind::Hardlink(link.ok_or_else(|| invalid("hard link without a target".into()))?)
            }
            tar::EntryType::Fifo => Kind::Device(FileType::Fifo, 0, 0),
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = dev_number(header.device_major(), header.as_bytes().get(329..337))
                    .map_err(&invalid)?;
                let minor = dev_number(header.device_minor(), header.as_bytes().get(337..345))
                    .map_err(&invalid)?;
                let ft = if etype == tar::EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                Kind::Device(ft, major, minor)
            }
            other => {
                return Err(ApplyError::UnsupportedEntry {
                    entry: name.clone(),
                    kind: format!("tar type {:?}", char::from(other.as_byte())),
                });
            }
        };

        let mode = header.mode().map_err(|e| invalid(e.to_string()))? & 0o7777;
        let uid = match ext.uid {
            Some(uid) => uid,
            None => header.uid().map_err(|e| invalid(e.to_string()))?,
        };
        let gid = match ext.gid {
            Some(gid) => gid,
            None => header.gid().map_err(|e| invalid(e.to_string()))?,
        };
        let uid = u32::try_from(uid).map_err(|_| invalid(format!("uid {uid} out of range")))?;
        let gid = u32::try_from(gid).map_err(|_| invalid(format!("gid {gid} out of range")))?;
        let secs = header.mtime().map_err(|e| invalid(e.to_string()))?;
        let mtime = ext
            .mtime
            .unwrap_or_else(|| i64::try_from(secs).map_or(Time::EPOCH, |s| Time::bounded(s, 0)));
        let meta = Meta {
            uid,
            gid,
            mode,
            mtime,
            xattrs: ext.xattrs,
        };

        let comps = normalize(&raw_name).map_err(|e| match e {
            NameError::Escape => ApplyError::Escape {
                entry: name.clone(),
            },
            NameError::Nul => invalid("name contains a NUL byte".into()),
        })?;
        if comps.is_empty() {
            // The root itself ("./"): containerd leaves the root alone.
            return Ok(());
        }
        // Where the unpacked copy has this entry: its own name, whatever
        // the destination's symlinks make of it.
        let origin: Option<(PathBuf, u64)> = self
            .links
            .as_ref()
            .and_then(|l| l.from.as_ref())
            .map(|_| (comps.iter().collect(), size));
        let resolved = resolve_components(
            self.root,
            comps.into_iter().map(Step::Name),
            &name,
            &self.known_dirs,
        )?;
        let Some((base, parents)) = resolved.split_last() else {
            return Ok(());
        };
        let parent = self.mkparent(parents, &name)?;

        if let Some(target) = base.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&parent, base.as_bytes(), target, &name);
        }
        let path = parent.join(base);

        // Check the hard link target before touching the destination.
        let link_target = match &kind {
            Kind::Hardlink(target) => Some(self.hardlink_target(target, &name)?),
            _ => None,
        };
        let self_link = link_target.as_deref() == Some(path.as_path());

        // Most entries are new: a file or directory is created straight
        // away, and only if something is in the way is it inspected (an
        // lstat per entry was a large part of unpacking many small files).
        match kind {
            Kind::File => match self.place_file(
                data,
                sparse.as_ref(),
                &path,
                &meta,
                origin.as_ref().map(|(o, n)| (o.as_path(), *n)),
            ) {
                Err(ApplyError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists => {}
                done => {
                    done?;
                    self.record(&path);
                    return Ok(());
                }
            },
            Kind::Dir => match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    self.finish_dir(&path, meta)?;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_at("create directory", &path)(e)),
            },
            _ => {}
        }

        // Replace what is there, except a directory that stays a directory
        // (its metadata is updated) and a hard link to itself (a no-op).
        let existing_dir = match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() && matches!(kind, Kind::Dir) => true,
            Ok(md) if md.is_dir() => {
                self.known_dirs.clear();
                fs::remove_dir_all(&path).map_err(io_at("remove directory", &path))?;
                false
            }
            Ok(_) if self_link => false,
            Ok(_) => {
                self.known_dirs.clear();
                fs::remove_file(&path).map_err(io_at("remove", &path))?;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(ApplyError::Io {
                    op: "inspect",
                    path,
                    source,
                });
            }
        };

        match kind {
            Kind::File => self.place_file(
                data,
                sparse.as_ref(),
                &path,
                &meta,
                origin.as_ref().map(|(o, n)| (o.as_path(), *n)),
            )?,
            Kind::Dir => {
                if !existing_dir {
                    // Owner-writable until the deferred mode is applied.
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(io_at("create directory", &path))?;
                }
                self.finish_dir(&path, meta)?;
                return Ok(());
            }
            Kind::Symlink(target) => {
                // Stored verbatim; it is never followed while applying.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_at("create symlink", &path))?;
                self.finish_node(&path, &meta, false)?;
            }
            Kind::Hardlink(_) => {
                // The entry's metadata goes on the target's inode: never on
                // one the unpacked copy shares.
                if let Some(target) = link_target.as_deref()
                    && self
                        .links
                        .as_ref()
                        .is_some_and(|l| l.linked.contains(target))
                {
                    self.unshare(target)?;
                }
                if let Some(target) = link_target.as_deref().filter(|_| !self_link) {
                    // linkat without AT_SYMLINK_FOLLOW: a link to a symlink
                    // links the symlink itself.
                    fs::hard_link(target, &path).map_err(io_at("create hard link", &path))?;
                }
                // A link shares its target's inode, which may be a symlink
                // (Linux has no lchmod); chmod only anything else.
                let is_symlink = fs::symlink_metadata(&path)
                    .map_err(io_at("inspect", &path))?
                    .file_type()
                    .is_symlink();
                self.finish_node(&path, &meta, !is_symlink)?;
            }
            Kind::Device(ft, major, minor) => {
                let dev = rustix::fs::makedev(major, minor);
                match rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), dev) {
                    Ok(()) => {}
                    Err(e) if e == Errno::PERM => {
                        // Unprivileged (or in a user namespace): device nodes
                        // cannot be made; skip and count, as rootless
                        // containerd does.
                        self.stats.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(e) => {
                        return Err(ApplyError::Io {
                            op: "create device node",
                            path,
                            source: e.into(),
                        });
                    }
                }
                self.finish_node(&path, &meta, true)?;
            }
        }
        self.record(&path);
        Ok(())
    }

    /// Owner and xattrs of a directory entry now, its mode and times at
    /// the end (its files are still to be written into it).
    fn finish_dir(&mut self, path: &Path, meta: Meta) -> Result<(), ApplyError> {
        self.chown_result(
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)),
            path,
        )?;
        set_xattrs(XattrOn::Path(path), &meta.xattrs)?;
        self.dirs.insert(
            path.to_path_buf(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        self.known_dirs.insert(path.to_path_buf());
        self.record(path);
        Ok(())
    }

    /// Creates a regular file with the entry's content and metadata: a
    /// hard link to the unpacked copy's file when that is the same, else
    /// written.
    fn place_file(
        &mut self,
        data: &mut dyn Read,
        sparse: Option<&SparseMap>,
        path: &Path,
        meta: &Meta,
        origin: Option<(&Path, u64)>,
    ) -> Result<(), ApplyError> {
        if let (Some(from), Some((origin, size)), None, true) = (
            self.links.as_ref().and_then(|l| l.from.as_ref()),
            origin,
            sparse,
            meta.xattrs.is_empty(),
        ) && let Some(source) = unchanged_in(from.as_fd(), origin, meta, size)
        {
            // Through /proc: linkat(2) with AT_EMPTY_PATH needs a capability
            // that rootless builds lack; this form is open(2)'s documented
            // way to link an O_PATH descriptor.
            let proc_path = format!("/proc/self/fd/{}", source.as_raw_fd());
            match rustix::fs::linkat(CWD, &proc_path, CWD, path, AtFlags::SYMLINK_FOLLOW) {
                Ok(()) => {
                    self.stats.linked += 1;
                    if let Some(links) = self.links.as_mut() {
                        links.linked.insert(path.to_path_buf());
                    }
                    return Ok(());
                }
                Err(e) if e == Errno::EXIST => {
                    return Err(io_at("create file", path)(e.into()));
                }
                // Written instead (the data is still unread).
                Err(_) => {}
            }
        }
        self.write_file(data, sparse, path, meta)
    }

    /// Replaces a file hard-linked from the unpacked copy with a copy of
    /// its own (same content, owner, mode and times), so that what is done
    /// to it next leaves the unpacked copy as it was.
    fn unshare(&mut self, path: &Path) -> Result<(), ApplyError> {
        let md = fs::symlink_metadata(path).map_err(io_at("inspect", path))?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".rbuild-unshared");
        let own = path.with_file_name(name);
        let mut from = File::open(path).map_err(io_at("open", path))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&own)
            .map_err(io_at("create file", &own))?;
        copy_data(&mut from, &mut to, &own, &mut self.buf)?;
        self.chown_result(
            std::os::unix::fs::fchown(&to, Some(md.uid()), Some(md.gid())),
            &own,
        )?;
        to.set_permissions(Permissions::from_mode(md.mode() & 0o7777))
            .map_err(io_at("set mode of", &own))?;
        let mtime = Time::bounded(md.mtime(), u32::try_from(md.mtime_nsec()).unwrap_or(0));
        let t = mtime.system_time();
        to.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(io_at("set times of", &own))?;
        fs::rename(&own, path).map_err(io_at("rename", &own))?;
        if let Some(links) = self.links.as_mut() {
            links.linked.remove(path);
        }
        Ok(())
    }

    /// Creates a regular file with the entry's content and metadata.
    fn write_file(
        &mut self,
        data: &mut dyn Read,
        sparse: Option<&SparseMap>,
        path: &Path,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        // create_new (O_EXCL) never follows a symlink at `path`; whatever was
        // there has been removed. Created with its permission bits (the
        // umask may take some away: checked below), so that most files need
        // no chmod; nobody else can reach it meanwhile (the trees we apply
        // into are rbuild's own, mode 0700).
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(meta.mode & 0o777)
            .open(path)
            .map_err(io_at("create file", path))?;
        match sparse {
            None => self.stats.bytes += copy_data(data, &mut file, path, &mut self.buf)?,
            Some(map) => {
                // Each region's data at its offset; the holes stay holes.
                for &(off, len) in &map.regions {
                    file.seek(SeekFrom::Start(off))
                        .map_err(io_at("seek in", path))?;
                    let mut region = Read::take(&mut *data, len);
                    self.stats.bytes += copy_data(&mut region, &mut file, path, &mut self.buf)?;
                }
                file.set_len(map.real_size)
                    .map_err(io_at("set length of", path))?;
            }
        }
        // Order as containerd: chown first (it clears setuid/setgid and file
        // capabilities), then xattrs, then the mode, then the times. Owner
        // and mode are only set when the new file lacks them: each is a
        // journaled inode update, and most files (root's, 0644 or 0755)
        // have both already.
        let made = rustix::fs::fstat(&file).map_err(|e| io_at("inspect", path)(e.into()))?;
        let chown = made.st_uid != meta.uid || made.st_gid != meta.gid;
        if chown {
            self.chown_result(
                std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)),
                path,
            )?;
        }
        set_xattrs(XattrOn::File(&file, path), &meta.xattrs)?;
        if chown || made.st_mode & 0o7777 != meta.mode {
            file.set_permissions(Permissions::from_mode(meta.mode))
                .map_err(io_at("set mode of", path))?;
        }
        let t = meta.mtime.system_time();
        file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(io_at("set times of", path))?;
        Ok(())
    }

    /// Owner, xattrs, mode (if `chmod`) and times of a non-regular,
    /// non-directory node, by path and without following a final symlink.
    fn finish_node(&self, path: &Path, meta: &Meta, chmod: bool) -> Result<(), ApplyError> {
        self.chown_result(
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)),
            path,
        )?;
        set_xattrs(XattrOn::Path(path), &meta.xattrs)?;
        if chmod {
            // `path` is known not to be a symlink here, so chmod's following
            // of links does not matter.
            fs::set_permissions(path, Permissions::from_mode(meta.mode))
                .map_err(io_at("set mode of", path))?;
        }
        set_times_nofollow(path, meta.mtime)
    }

    /// Treats a failed chown: fatal when privileged; expected otherwise
    /// (EPERM for ids we may not give away, EINVAL for ids not mapped in our
    /// user namespace), in which case the node keeps our ids.
    fn chown_result(&self, r: io::Result<()>, path: &Path) -> Result<(), ApplyError> {
        match r {
            Ok(()) => Ok(()),
            Err(e)
                if !self.privileged
                    && Errno::from_io_error(&e)
                        .is_some_and(|n| n == Errno::PERM || n == Errno::INVAL) =>
            {
                Ok(())
            }
            Err(source) => Err(ApplyError::Io {
                op: "change owner of",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Makes sure every component of `parents` (already resolved, so
    /// symlink-free) exists as a directory, creating missing ones with mode
    /// 0755. Returns the host path of the parent directory.
    fn mkparent(&mut self, parents: &[OsString], entry: &str) -> Result<PathBuf, ApplyError> {
        let mut p = self.root.to_path_buf();
        for c in parents {
            p.push(c);
            if self.known_dirs.contains(&p) {
                continue;
            }
            match fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => {
                    self.known_dirs.insert(p.clone());
                }
                Ok(_) => {
                    return Err(ApplyError::NotADirectory {
                        entry: entry.to_owned(),
                        path: p,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(io_at("create directory", &p))?;
                    // Exactly 0755 whatever the umask, as a layer would say.
                    fs::set_permissions(&p, Permissions::from_mode(0o755))
                        .map_err(io_at("set mode of", &p))?;
                    self.known_dirs.insert(p.clone());
                }
                Err(source) => {
                    return Err(ApplyError::Io {
                        op: "inspect",
                        path: p,
                        source,
                    });
                }
            }
        }
        Ok(p)
    }

    /// Applies a whiteout named `base` (`rest` is what follows `.wh.`) found
    /// in directory `parent`.
    fn whiteout(
        &mut self,
        parent: &Path,
        base: &[u8],
        rest: &[u8],
        entry: &str,
    ) -> Result<(), ApplyError> {
        self.known_dirs.clear();
        if base == WHITEOUT_OPAQUE {
            return self.clear_opaque(parent);
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            // AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
            return Ok(());
        }
        if rest.is_empty() || rest == b"." || rest == b".." {
            return Err(ApplyError::InvalidEntry {
                entry: entry.to_owned(),
                reason: "whiteout without a valid name to remove".into(),
            });
        }
        let target = parent.join(OsStr::from_bytes(rest));
        match fs::symlink_metadata(&target) {
            Ok(md) => remove_any(&target, md.is_dir()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(source) => Err(ApplyError::Io {
                op: "inspect",
                path: target,
                source,
            }),
        }
    }

    /// Removes everything under `dir` that this layer did not put there.
    /// Directories this layer created or wrote into are kept and cleaned
    /// recursively: under an opaque directory nothing from lower layers
    /// shows through, however deep.
    fn clear_opaque(&self, dir: &Path) -> Result<(), ApplyError> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            // Collect first: removing entries while reading a directory may
            // make readdir skip or repeat entries.
            let mut children = Vec::new();
            for ent in fs::read_dir(&d).map_err(io_at("read directory", &d))? {
                let ent = ent.map_err(io_at("read directory", &d))?;
                let ft = ent.file_type().map_err(io_at("inspect", &ent.path()))?;
                children.push((ent.path(), ft.is_dir()));
            }
            for (p, is_dir) in children {
                if self.unpacked.contains(&p) || self.ancestors.contains(&p) {
                    if is_dir {
                        stack.push(p);
                    }
                } else {
                    remove_any(&p, is_dir)?;
                }
            }
        }
        Ok(())
    }

    /// Resolves a hard link's target name to an existing host path in the
    /// root, with the same rules as entry names.
    fn hardlink_target(&self, raw: &[u8], entry: &str) -> Result<PathBuf, ApplyError> {
        let target = String::from_utf8_lossy(raw).into_owned();
        let escape = || ApplyError::LinkEscape {
            entry: entry.to_owned(),
            target: target.clone(),
        };
        let comps = match normalize(raw) {
            Ok(c) if c.is_empty() => return Err(escape()),
            Ok(c) => c,
            Err(NameError::Escape) => return Err(escape()),
            Err(NameError::Nul) => {
                return Err(ApplyError::InvalidEntry {
                    entry: entry.to_owned(),
                    reason: "hard link target contains a NUL byte".into(),
                });
            }
        };
        let resolved = resolve_components(
            self.root,
            comps.into_iter().map(Step::Name),
            entry,
            &self.known_dirs,
        )?;
        let p = join_all(self.root, &resolved);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(p),
            Err(e) if is_absent(&e) => Err(ApplyError::LinkTargetMissing {
                entry: entry.to_owned(),
                target,
            }),
            Err(source) => Err(ApplyError::Io {
                op: "inspect",
                path: p,
                source,
            }),
        }
    }

    /// Notes that this layer produced `path` (for opaque whiteouts).
    fn record(&mut self, path: &Path) {
        let mut cur = path.parent();
        while let Some(p) = cur {
            if p == self.root || !p.starts_with(self.root) {
                break;
            }
            if !self.ancestors.insert(p.to_path_buf()) {
                // Its own ancestors are recorded already.
                break;
            }
            cur = p.parent();
        }
        self.unpacked.insert(path.to_path_buf());
    }

    /// Applies directory modes and mtimes, children before parents.
    fn finish_dirs(&mut self) -> Result<(), ApplyError> {
        for (path, meta) in std::mem::take(&mut self.dirs).iter().rev() {
            // A later entry or whiteout may have replaced or removed it.
            match fs::symlink_metadata(path) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => continue,
                Err(e) if is_absent(&e) => continue,
                Err(source) => {
                    return Err(ApplyError::Io {
                        op: "inspect",
                        path: path.clone(),
                        source,
                    });
                }
            }
            fs::set_permissions(path, Permissions::from_mode(meta.mode))
                .map_err(io_at("set mode of", path))?;
            // Path-based utimensat needs no read permission on the directory
            // (File::open + set_times would for a mode-0 one when unprivileged).
            set_times_nofollow(path, meta.mtime)?;
        }
        Ok(())
    }
}

enum NameError {
    Escape,
    Nul,
}

/// Normalises an entry name into its components below the root: `/`, `.`
/// and empty components dropped, `..` applied lexically (as containerd's
/// `filepath.Clean`), and an error if `..` would climb above the root.
fn normalize(raw: &[u8]) -> Result<Vec<OsString>, NameError> {
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    let mut comps: Vec<OsString> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if comps.pop().is_none() {
                    return Err(NameError::Escape);
                }
            }
            name => comps.push(OsStr::from_bytes(name).to_owned()),
        }
    }
    Ok(comps)
}

/// A device number from the header. Some writers leave the field blank
/// (NULs or spaces); like Go's archive/tar, that reads as 0.
fn dev_number(parsed: io::Result<Option<u32>>, raw: Option<&[u8]>) -> Result<u32, String> {
    match parsed {
        Ok(n) => Ok(n.unwrap_or(0)),
        Err(_) if raw.is_some_and(|f| f.iter().all(|&b| b == 0 || b == b' ')) => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a PAX time ("secs[.frac]", possibly negative), bounded as
/// containerd does. `None` if malformed.
fn parse_pax_time(v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Nanoseconds from the first nine fractional digits, zero-padded.
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    if int.starts_with('-') {
        // Before the epoch: bounded to the epoch anyway.
        return Some(Time::EPOCH);
    }
    Some(Time::bounded(secs, nanos))
}

fn set_times_nofollow(path: &Path, t: Time) -> Result<(), ApplyError> {
    rustix::fs::utimensat(CWD, path, &t.timestamps(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        ApplyError::Io {
            op: "set times of",
            path: path.to_path_buf(),
            source: e.into(),
        }
    })
}

enum XattrOn<'a> {
    File(&'a File, &'a Path),
    Path(&'a Path),
}

/// Sets PAX `SCHILY.xattr.*` attributes. Unsupported attributes (ENOTSUP:
/// filesystem without xattrs or unknown namespace) and forbidden ones
/// (EPERM: `trusted.*`/`security.*` unprivileged, `user.*` on a symlink or
/// device) are ignored, as containerd does.
fn set_xattrs(on: XattrOn<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), ApplyError> {
    for (name, value) in xattrs {
        let name = OsStr::from_bytes(name);
        let (r, path) = match on {
            XattrOn::File(f, p) => (
                rustix::fs::fsetxattr(f, name, value, XattrFlags::empty()),
                p,
            ),
            XattrOn::Path(p) => (
                rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()),
                p,
            ),
        };
        match r {
            Ok(()) => {}
            Err(e) if e == Errno::NOTSUP || e == Errno::PERM => {}
            Err(e) => {
                return Err(ApplyError::Io {
                    op: "set extended attribute on",
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// Copies an entry's data, telling read errors (the layer) from write
/// errors (the destination).
fn copy_data(
    from: &mut (impl Read + ?Sized),
    to: &mut File,
    path: &Path,
    buf: &mut [u8],
) -> Result<u64, ApplyError> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ApplyError::Tar { source }),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        to.write_all(chunk).map_err(io_at("write", path))?;
        total += n as u64;
    }
}

/// Removes a file, symlink or whole directory tree (std's remove_dir_all
/// does not follow symlinks inside the tree).
fn remove_any(path: &Path, is_dir: bool) -> Result<(), ApplyError> {
    if is_dir {
        fs::remove_dir_all(path).map_err(io_at("remove directory", path))
    } else {
        fs::remove_file(path).map_err(io_at("remove", path))
    }
}

fn join_all(root: &Path, comps: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(comps);
    p
}

/// Missing, or a parent is not a directory (so it cannot exist either).
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ApplyError + use<> {
    let path = path.to_path_buf();
    move |source| ApplyError::Io { op, path, source }
}

fn tar_err(source: io::Error) -> ApplyError {
    ApplyError::Tar { source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::{EntryType, Header};

    /// Builds layer tars from raw headers, so that names the `tar` crate's
    /// Builder refuses (`..`, absolute) can be written too.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }

        fn header(name: &str, kind: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
            let mut h = Header::new_ustar();
            // Raw bytes into the name field: no validation at all.
            let field = &mut h.as_old_mut().name;
            field.fill(0);
            field[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h
        }

        fn raw(mut self, mut h: Header, data: &[u8]) -> Self {
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(self, name: &str, mode: u32, mtime: u64, data: &[u8]) -> Self {
            let h = Self::header(name, EntryType::Regular, mode, mtime, data.len() as u64);
            self.raw(h, data)
        }

        fn dir(self, name: &str, mode: u32, mtime: u64) -> Self {
            let h = Self::header(name, EntryType::Directory, mode, mtime, 0);
            self.raw(h, b"")
        }

        fn symlink(self, name: &str, target: &str, mtime: u64) -> Self {
            let mut h = Self::header(name, EntryType::Symlink, 0o777, mtime, 0);
            h.set_link_name_literal(target).unwrap();
            self.raw(h, b"")
        }

        /// Real writers give a link the metadata of its target.
        fn hardlink(self, name: &str, target: &str, mode: u32, mtime: u64) -> Self {
            let mut h = Self::header(name, EntryType::Link, mode, mtime, 0);
            h.set_link_name_literal(target).unwrap();
            self.raw(h, b"")
        }

        /// A PAX extended header applying to the next member.
        fn pax(self, records: &[(&str, &[u8])]) -> Self {
            let mut data = Vec::new();
            for (k, v) in records {
                // "LEN key=value\n" where LEN counts itself.
                let body = k.len() + v.len() + 3;
                let mut len = body + 1;
                while len != body + len.to_string().len() {
                    len = body + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {k}=").as_bytes());
                data.extend_from_slice(v);
                data.push(b'\n');
            }
            let h = Self::header("PaxHeader", EntryType::XHeader, 0o644, 0, data.len() as u64);
            self.raw(h, &data)
        }

        fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    /// A scratch directory with the destination root inside it, so that
    /// escapes into the parent can be detected.
    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        fs::create_dir(&root).unwrap();
        (base, root)
    }

    fn apply(root: &Path, tar: &[u8]) -> Result<ApplyStats, ApplyError> {
        apply_layer(root, tar)
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn mtime_of(p: &Path) -> i64 {
        fs::symlink_metadata(p).unwrap().mtime()
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A layer whose entries belong to this process's user, so that the
    /// unpacked copy keeps their owner even unprivileged.
    fn owned_layer(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut layer = Layer::new();
        for (name, mode, data) in entries {
            let kind = match name.ends_with('/') {
                true => EntryType::Directory,
                false => EntryType::Regular,
            };
            let mut h = Layer::header(name, kind, *mode, 2_000, data.len() as u64);
            h.set_uid(rustix::process::geteuid().as_raw().into());
            h.set_gid(rustix::process::getegid().as_raw().into());
            layer = layer.raw(h, data);
        }
        layer.finish()
    }

    fn inode(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn linking_takes_the_unpacked_copys_unchanged_files() {
        let (_base, root) = scratch();
        let (_copy_base, copy) = scratch();
        let tar = owned_layer(&[
            ("d/", 0o755, b""),
            ("d/same", 0o644, b"payload"),
            ("d/mode", 0o644, b"written"),
            ("d/gone", 0o644, b"written too"),
        ]);
        apply(&copy, &tar).unwrap();
        fs::set_permissions(copy.join("d/mode"), Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(copy.join("d/gone")).unwrap();

        let stats = LinkedTree::new(&root).apply(&tar[..], Some(&copy)).unwrap();
        assert_eq!(stats.linked, 1);
        assert_eq!(inode(&root.join("d/same")), inode(&copy.join("d/same")));
        assert_eq!(fs::read(root.join("d/same")).unwrap(), b"payload");
        // Different metadata or no file in the copy: written from the layer.
        assert_ne!(inode(&root.join("d/mode")), inode(&copy.join("d/mode")));
        assert_eq!(mode_of(&root.join("d/mode")), 0o644);
        assert_eq!(fs::read(root.join("d/mode")).unwrap(), b"written");
        assert_eq!(fs::read(root.join("d/gone")).unwrap(), b"written too");
        // Without a copy, everything is written.
        let (_other_base, other) = scratch();
        let stats = LinkedTree::new(&other)
            .apply(&tar[..], Some(&copy.join("missing")))
            .unwrap();
        assert_eq!(stats.linked, 0);
        assert_eq!(fs::read(other.join("d/same")).unwrap(), b"payload");
    }

    #[test]
    fn linking_never_follows_a_symlink_in_the_copy() {
        let (_base, root) = scratch();
        let (_copy_base, copy) = scratch();
        let tar = owned_layer(&[("d/", 0o755, b""), ("d/secret", 0o644, b"layer data")]);
        // A file with the entry's metadata outside the copy, which a
        // symlink in the copy points at.
        let outside = tempfile::tempdir().unwrap();
        apply(outside.path(), &tar).unwrap();
        std::os::unix::fs::symlink(outside.path().join("d"), copy.join("d")).unwrap();

        let stats = LinkedTree::new(&root).apply(&tar[..], Some(&copy)).unwrap();
        assert_eq!(stats.linked, 0);
        assert_ne!(
            inode(&root.join("d/secret")),
            inode(&outside.path().join("d/secret"))
        );
        assert_eq!(fs::read(root.join("d/secret")).unwrap(), b"layer data");
    }

    #[test]
    fn modes_the_umask_would_take_away_are_kept() {
        let (_base, root) = scratch();
        let modes = [
            ("open", 0o777),
            ("setuid", 0o4755),
            ("sticky", 0o1666),
            ("none", 0o000),
            ("plain", 0o644),
        ];
        let entries: Vec<(&str, u32, &[u8])> =
            modes.iter().map(|&(n, m)| (n, m, &b"x"[..])).collect();
        // The usual umask (022) takes write bits away from "open" and
        // "sticky" as they are created. (Not set here: it is the whole test
        // process's.)
        apply(&root, &owned_layer(&entries)).unwrap();
        for (name, mode) in modes {
            assert_eq!(mode_of(&root.join(name)), mode, "{name}");
            assert_eq!(fs::read(root.join(name)).unwrap(), b"x", "{name}");
        }
    }

    #[test]
    fn a_later_hard_link_never_changes_the_copys_file() {
        let (_base, root) = scratch();
        let (_copy_base, copy) = scratch();
        let lower = owned_layer(&[("d/", 0o755, b""), ("d/f", 0o644, b"payload")]);
        apply(&copy, &lower).unwrap();
        // The next layer links to the file and, as a link's metadata is its
        // inode's, changes its mode.
        let mut upper = Layer::new();
        let mut h = Layer::header("d/h", EntryType::Link, 0o600, 3_000, 0);
        h.set_link_name_literal("d/f").unwrap();
        h.set_uid(rustix::process::geteuid().as_raw().into());
        h.set_gid(rustix::process::getegid().as_raw().into());
        upper = upper.raw(h, b"");
        let upper = upper.finish();

        let mut tree = LinkedTree::new(&root);
        assert_eq!(tree.apply(&lower[..], Some(&copy)).unwrap().linked, 1);
        tree.apply(&upper[..], None).unwrap();
        assert_eq!(mode_of(&copy.join("d/f")), 0o644);
        assert_eq!(mtime_of(&copy.join("d/f")), 2_000);
        assert_ne!(inode(&root.join("d/f")), inode(&copy.join("d/f")));
        assert_eq!(inode(&root.join("d/f")), inode(&root.join("d/h")));
        assert_eq!(mode_of(&root.join("d/h")), 0o600);
        assert_eq!(fs::read(root.join("d/h")).unwrap(), b"payload");
    }

    #[test]
    fn apply_plain_entries_with_modes_and_mtimes() {
        let (_base, root) = scratch();
        let tar = Layer::new()
            .dir("a/", 0o750, 1_000)
            .file("a/f", 0o640, 2_000, b"hello")
            .symlink("a/l", "f", 3_000)
            .hardlink("a/h", "a/f", 0o640, 2_000)
            .dir("a/sub", 0o700, 4_000)
            .file("a/sub/g", 0o600, 5_000, b"!")
            .finish();
        let stats = apply(&root, &tar).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                entries: 6,
                bytes: 6,
                linked: 0,
                skipped_devices: 0
            }
        );
        let a = root.join("a");
        assert!(fs::symlink_metadata(&a).unwrap().is_dir());
        assert_eq!(mode_of(&a), 0o750);
        // Applied after the children were written.
        assert_eq!(mtime_of(&a), 1_000);
        assert_eq!(mode_of(&a.join("sub")), 0o700);
        assert_eq!(mtime_of(&a.join("sub")), 4_000);
        assert_eq!(fs::read(a.join("f")).unwrap(), b"hello");
        assert_eq!(mode_of(&a.join("f")), 0o640);
        // The hard link shares the inode (and its metadata).
        let f = fs::metadata(a.join("f")).unwrap();
        let h = fs::metadata(a.join("h")).unwrap();
        assert_eq!(f.ino(), h.ino());
        assert_eq!(f.nlink(), 2);
        assert_eq!(mtime_of(&a.join("f")), 2_000);
        assert_eq!(fs::read_link(a.join("l")).unwrap(), Path::new("f"));
        assert_eq!(mtime_of(&a.join("l")), 3_000);
        assert_eq!(fs::read(a.join("sub/g")).unwrap(), b"!");
        assert_eq!(mtime_of(&a.join("sub/g")), 5_000);
    }

    #[test]
    fn apply_keeps_setuid_setgid_sticky_and_owner() {
        let (_base, root) = scratch();
        let mut suid = Layer::header("bin/su", EntryType::Regular, 0o4755, 0, 2);
        suid.set_uid(1000);
        suid.set_gid(1000);
        let tar = Layer::new()
            .dir("bin", 0o755, 0)
            .raw(suid, b"#!")
            .file("bin/sg", 0o2711, 0, b"")
            .dir("tmp", 0o1777, 0)
            .finish();
        apply(&root, &tar).unwrap();
        assert_eq!(mode_of(&root.join("bin/su")), 0o4755);
        assert_eq!(mode_of(&root.join("bin/sg")), 0o2711);
        assert_eq!(mode_of(&root.join("tmp")), 0o1777);
        if is_root() {
            let md = fs::metadata(root.join("bin/su")).unwrap();
            assert_eq!((md.uid(), md.gid()), (1000, 1000));
        }
    }

    #[test]
    fn apply_whiteout_removes_file_and_tree() {
        let (_base, root) = scratch();
        fs::write(root.join("a.txt"), b"lower").unwrap();
        fs::create_dir_all(root.join("tree/x/y")).unwrap();
        fs::write(root.join("tree/x/y/z"), b"lower").unwrap();
        fs::write(root.join("keep"), b"lower").unwrap();
        let tar = Layer::new()
            .file(".wh.a.txt", 0o644, 0, b"")
            .file(".wh.tree", 0o644, 0, b"")
            .file(".wh.absent", 0o644, 0, b"")
            .file(".wh..wh.plnk", 0o644, 0, b"")
            .finish();
        let stats = apply(&root, &tar).unwrap();
        assert_eq!(stats.entries, 4);
        let mut names: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        // Only the untouched file; no whiteout file was materialised.
        assert_eq!(names, vec![OsString::from("keep")]);
    }

    #[test]
    fn apply_opaque_dir_keeps_same_layer_entries() {
        let (_base, root) = scratch();
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::create_dir_all(root.join("d/gone")).unwrap();
        fs::write(root.join("d/lower"), b"lower").unwrap();
        fs::write(root.join("d/sub/lower2"), b"lower").unwrap();
        fs::write(root.join("d/gone/x"), b"lower").unwrap();
        fs::write(root.join("outside"), b"lower").unwrap();
        let tar = Layer::new()
            .dir("d/", 0o755, 0)
            .file("d/new1", 0o644, 0, b"1")
            // Written into a lower directory with no entry of its own.
            .file("d/sub/new3", 0o644, 0, b"3")
            .file("d/.wh..wh..opq", 0o644, 0, b"")
            .file("d/new2", 0o644, 0, b"2")
            .finish();
        apply(&root, &tar).unwrap();
        let list = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(list(&root.join("d")), ["new1", "new2", "sub"]);
        assert_eq!(list(&root.join("d/sub")), ["new3"]);
        assert!(root.join("outside").exists());
    }

    #[test]
    fn apply_rejects_parent_escape_and_writes_nothing_outside() {
        let (base, root) = scratch();
        for name in ["../escape", "a/../../escape", "./../escape"] {
            let tar = Layer::new().file(name, 0o644, 0, b"x").finish();
            let err = apply(&root, &tar).unwrap_err();
            assert!(matches!(err, ApplyError::Escape { .. }), "{name}: {err}");
            assert!(err.to_string().contains("escapes"), "{err}");
            assert!(!base.path().join("escape").exists());
        }
        // `..` that stays inside is cleaned lexically.
        let tar = Layer::new().file("a/../b", 0o644, 0, b"x").finish();
        apply(&root, &tar).unwrap();
        assert_eq!(fs::read(root.join("b")).unwrap(), b"x");
        assert!(!root.join("a").exists());
    }

    #[test]
    fn apply_absolute_entry_lands_inside_root() {
        let (_base, root) = scratch();
        let tar = Layer::new()
            .file("/etc/rbuild-apply-absolute", 0o644, 0, b"inside")
            .finish();
        apply(&root, &tar).unwrap();
        assert_eq!(
            fs::read(root.join("etc/rbuild-apply-absolute")).unwrap(),
            b"inside"
        );
        assert_eq!(mode_of(&root.join("etc")), 0o755);
        assert!(!Path::new("/etc/rbuild-apply-absolute").exists());
    }

    #[test]
    fn apply_through_absolute_symlink_stays_inside() {
        let (_base, root) = scratch();
        let host_before = fs::read("/etc/passwd").ok();
        let tar = Layer::new()
            .symlink("evil", "/", 0)
            .file("evil/etc/passwd", 0o644, 0, b"root::0:0::/:/bin/sh\n")
            .finish();
        apply(&root, &tar).unwrap();
        assert_eq!(
            fs::read(root.join("etc/passwd")).unwrap(),
            b"root::0:0::/:/bin/sh\n"
        );
        assert_eq!(fs::read_link(root.join("evil")).unwrap(), Path::new("/"));
        assert_eq!(fs::read("/etc/passwd").ok(), host_before);
    }

    #[test]
    fn apply_through_climbing_symlink_stays_inside() {
        let (base, root) = scratch();
        let probe = "rbuild-apply-escape-probe";
        let tar = Layer::new()
            .symlink("up", "../../..", 0)
            .file(&format!("up/{probe}"), 0o644, 0, b"x")
            .finish();
        apply(&root, &tar).unwrap();
        assert_eq!(fs::read(root.join(probe)).unwrap(), b"x");
        assert!(!base.path().join(probe).exists());
        assert!(!Path::new("/").join(probe).exists());
    }

    #[test]
    fn apply_rejects_hardlink_escape() {
        let (_base, root) = scratch();
        let tar = Layer::new()
            .hardlink("pw", "../../etc/passwd", 0o644, 0)
            .finish();
        let err = apply(&root, &tar).unwrap_err();
        assert!(matches!(err, ApplyError::LinkEscape { .. }), "{err}");
        assert!(!root.join("pw").exists());
    }

    #[test]
    fn apply_hardlink_through_symlink_resolves_in_root() {
        let (_base, root) = scratch();
        // Nothing at root/etc/passwd: the link must not reach the host's.
        let tar = Layer::new()
            .symlink("evil", "/", 0)
            .hardlink("pw", "evil/etc/passwd", 0o644, 0)
            .finish();
        let err = apply(&root, &tar).unwrap_err();
        assert!(matches!(err, ApplyError::LinkTargetMissing { .. }), "{err}");
        assert!(fs::symlink_metadata(root.join("pw")).is_err());

        // With one inside, it is linked.
        let (_base, root) = scratch();
        let tar = Layer::new()
            .file("etc/passwd", 0o644, 0, b"inside")
            .symlink("evil", "/", 0)
            .hardlink("pw", "evil/etc/passwd", 0o644, 0)
            .finish();
        apply(&root, &tar).unwrap();
        assert_eq!(
            fs::metadata(root.join("pw")).unwrap().ino(),
            fs::metadata(root.join("etc/passwd")).unwrap().ino()
        );
    }

    #[test]
    fn apply_replaces_symlink_at_destination_instead_of_following() {
        let (base, root) = scratch();
        let outside = base.path().join("outside-target");
        fs::write(&outside, b"untouched").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("f")).unwrap();
        std::os::unix::fs::symlink(base.path(), root.join("d")).unwrap();
        let tar = Layer::new()
            .file("f", 0o600, 0, b"new")
            .dir("d", 0o755, 0)
            .finish();
        apply(&root, &tar).unwrap();
        let md = fs::symlink_metadata(root.join("f")).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(fs::read(root.join("f")).unwrap(), b"new");
        assert_eq!(fs::read(&outside).unwrap(), b"untouched");
        assert!(fs::symlink_metadata(root.join("d")).unwrap().is_dir());
    }

    #[test]
    fn apply_replaces_and_merges_existing_entries() {
        let (_base, root) = scratch();
        fs::create_dir_all(root.join("dir/old")).unwrap();
        fs::write(root.join("dir/old/x"), b"x").unwrap();
        fs::create_dir(root.join("keep")).unwrap();
        fs::write(root.join("keep/lower"), b"lower").unwrap();
        fs::write(root.join("file"), b"file").unwrap();
        let tar = Layer::new()
            // A file replaces a directory tree.
            .file("dir", 0o644, 0, b"now a file")
            // A directory merges with a directory and updates its metadata.
            .dir("keep", 0o711, 7)
            // A directory replaces a file.
            .dir("file", 0o755, 0)
            .finish();
        apply(&root, &tar).unwrap();
        assert_eq!(fs::read(root.join("dir")).unwrap(), b"now a file");
        assert_eq!(fs::read(root.join("keep/lower")).unwrap(), b"lower");
        assert_eq!(mode_of(&root.join("keep")), 0o711);
        assert_eq!(mtime_of(&root.join("keep")), 7);
        assert!(fs::metadata(root.join("file")).unwrap().is_dir());
    }

    #[test]
    fn apply_parent_that_is_a_file_is_an_error() {
        let (_base, root) = scratch();
        let tar = Layer::new()
            .file("f", 0o644, 0, b"")
            .file("f/x", 0o644, 0, b"")
            .finish();
        let err = apply(&root, &tar).unwrap_err();
        assert!(matches!(err, ApplyError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn apply_symlink_loop_is_an_error() {
        let (_base, root) = scratch();
        let tar = Layer::new()
            .symlink("a", "b", 0)
            .symlink("b", "a", 0)
            .file("a/x", 0o644, 0, b"")
            .finish();
        let err = apply(&root, &tar).unwrap_err();
        assert!(matches!(err, ApplyError::TooManyLinks { .. }), "{err}");
    }

    #[test]
    fn apply_gzip_layer() {
        use std::io::Write as _;
        let (_base, root) = scratch();
        let tar = Layer::new()
            .dir("g", 0o755, 0)
            .file("g/z", 0o644, 0, b"zipped")
            .finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let stats = apply(&root, &gz).unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(stats.bytes, 6);
        assert_eq!(fs::read(root.join("g/z")).unwrap(), b"zipped");

        // A corrupt gzip trailer is noticed.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 5] ^= 0xff;
        let (_base, root) = scratch();
        assert!(matches!(apply(&root, &bad), Err(ApplyError::Tar { .. })));
    }

    #[test]
    fn apply_empty_stream_and_root_entry() {
        let (_base, root) = scratch();
        assert_eq!(apply(&root, b"").unwrap(), ApplyStats::default());
        let before = mode_of(&root);
        let tar = Layer::new().dir("./", 0o700, 0).finish();
        assert_eq!(apply(&root, &tar).unwrap().entries, 1);
        assert_eq!(mode_of(&root), before);
    }

    #[test]
    fn apply_pax_mtime_and_xattrs() {
        let (_base, root) = scratch();
        let tar = Layer::new()
            .pax(&[
                ("mtime", b"1700000000.25"),
                ("SCHILY.xattr.user.rbuild", b"v"),
            ])
            .file("x", 0o644, 5, b"")
            .pax(&[("SCHILY.xattr.trusted.rbuild", b"t")])
            .symlink("l", "x", 0)
            .finish();
        apply(&root, &tar).unwrap();
        let md = fs::metadata(root.join("x")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 250_000_000));
        // Set if the filesystem supports user xattrs; ignored otherwise.
        let mut buf = [0u8; 8];
        if let Ok(n) = rustix::fs::lgetxattr(root.join("x"), "user.rbuild", &mut buf) {
            assert_eq!(&buf[..n], b"v");
        }
    }

    #[test]
    fn apply_fifo_and_device() {
        let (_base, root) = scratch();
        let mut null = Layer::header("dev/null", EntryType::Char, 0o666, 0, 0);
        null.set_device_major(1).unwrap();
        null.set_device_minor(3).unwrap();
        let tar = Layer::new()
            .raw(Layer::header("p", EntryType::Fifo, 0o620, 9, 0), b"")
            .raw(null, b"")
            .finish();
        let stats = apply(&root, &tar).unwrap();
        let p = fs::symlink_metadata(root.join("p")).unwrap();
        assert!(p.file_type().is_fifo());
        assert_eq!(p.mode() & 0o7777, 0o620);
        assert_eq!(p.mtime(), 9);
        match fs::symlink_metadata(root.join("dev/null")) {
            Ok(md) => {
                assert!(md.file_type().is_char_device());
                assert_eq!(md.rdev(), rustix::fs::makedev(1, 3));
                assert_eq!(stats.skipped_devices, 0);
            }
            // No CAP_MKNOD (unprivileged, or a restricted container).
            Err(_) => assert_eq!(stats.skipped_devices, 1),
        }
    }

    #[test]
    fn apply_unknown_type_is_refused() {
        let (_base, root) = scratch();
        let h = Layer::header("v", EntryType::new(b'V'), 0o644, 0, 0);
        let tar = Layer::new().raw(h, b"").finish();
        let err = apply(&root, &tar).unwrap_err();
        assert!(matches!(err, ApplyError::UnsupportedEntry { .. }), "{err}");
    }

    /// PAX records split at newlines (as the tar crate does) would break on
    /// this value; they are split by their length prefix.
    #[test]
    fn apply_layer_writer_binary_xattr_with_newlines() {
        use crate::layer::{Entry, EntryKind, LayerWriter};
        let cap: Vec<u8> = vec![
            0x01, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let long = format!("{}/ping", "d".repeat(120));
        let mut w = LayerWriter::new(Vec::new());
        w.add(&Entry {
            path: long.clone(),
            kind: EntryKind::Bytes(b"elf".to_vec()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 42,
            xattrs: vec![
                ("security.capability".into(), cap.clone()),
                ("user.nl".into(), b"a\nb\n".to_vec()),
            ],
        })
        .unwrap();
        let (_, _, tar) = w.finish().unwrap();
        let (_base, root) = scratch();
        let stats = apply(&root, &tar).unwrap();
        assert_eq!(stats.entries, 1);
        let f = root.join(&long);
        assert_eq!(fs::read(&f).unwrap(), b"elf");
        assert_eq!(mode_of(&f), 0o755);
        assert_eq!(mtime_of(&f), 42);
        let mut buf = [0u8; 64];
        match rustix::fs::lgetxattr(&f, "security.capability", &mut buf) {
            Ok(n) => assert_eq!(&buf[..n], cap.as_slice()),
            // No security.* xattrs here (or unprivileged): applied anyway.
            Err(e) => assert!(e == Errno::NOTSUP || e == Errno::NODATA, "{e}"),
        }
        if let Ok(n) = rustix::fs::lgetxattr(&f, "user.nl", &mut buf) {
            assert_eq!(&buf[..n], b"a\nb\n");
        }
    }

    /// A PAX header with raw (possibly malformed) record bytes.
    fn raw_pax(layer: Layer, data: &[u8]) -> Layer {
        let h = Layer::header("PaxHeader", EntryType::XHeader, 0o644, 0, data.len() as u64);
        layer.raw(h, data)
    }

    #[test]
    fn apply_pax_bad_record_lengths_are_clean_errors() {
        let bad: [&[u8]; 7] = [
            b"99999999999999999999999999 path=x\n",
            b"11 path=x\n",
            b"8 path=x\n",
            b"10 path=x\n\n",
            b"x path=y\n",
            b"4 =\n",
            b"9 pathxy\n",
        ];
        for data in bad {
            let (_base, root) = scratch();
            let tar = raw_pax(Layer::new(), data)
                .file("f", 0o644, 0, b"")
                .finish();
            let err = apply(&root, &tar).unwrap_err();
            assert!(
                matches!(err, ApplyError::InvalidEntry { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(data)
            );
            assert!(err.to_string().contains("PAX"), "{err}");
            assert!(!root.join("f").exists());
        }
        // A correct record, then NUL padding, is fine.
        let (_base, root) = scratch();
        let tar = raw_pax(Layer::new(), b"10 path=y\n\0\0")
            .file("f", 0o644, 0, b"")
            .finish();
        apply(&root, &tar).unwrap();
        assert!(root.join("y").exists());
    }

    #[test]
    fn apply_long_names_via_pax_and_gnu() {
        let (_base, root) = scratch();
        let pax_name = format!("{}/pax", "p".repeat(150));
        let gnu_name = format!("{}/gnu", "g".repeat(150));
        let gnu_link = format!("{}/target", "t".repeat(150));
        let gnu = |kind: EntryType, name: &str| {
            let mut data = name.as_bytes().to_vec();
            data.push(0);
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            (h, data)
        };
        let (l, l_data) = gnu(EntryType::GNULongName, &gnu_name);
        let (k, k_data) = gnu(EntryType::GNULongLink, &gnu_link);
        let (l2, l2_data) = gnu(EntryType::GNULongName, "gnu-link");
        let tar = Layer::new()
            .pax(&[("path", pax_name.as_bytes()), ("mtime", b"77")])
            .file("truncated", 0o600, 0, b"pax")
            .raw(l, &l_data)
            .file("truncated", 0o640, 0, b"gnu")
            .raw(l2, &l2_data)
            .raw(k, &k_data)
            .symlink("x", "short", 0)
            // PAX linkpath for a hard link.
            .pax(&[("linkpath", pax_name.as_bytes())])
            .hardlink("hl", "short", 0o600, 77)
            .finish();
        let stats = apply(&root, &tar).unwrap();
        assert_eq!(stats.entries, 4);
        assert_eq!(fs::read(root.join(&pax_name)).unwrap(), b"pax");
        assert_eq!(mtime_of(&root.join(&pax_name)), 77);
        assert_eq!(fs::read(root.join(&gnu_name)).unwrap(), b"gnu");
        assert_eq!(mode_of(&root.join(&gnu_name)), 0o640);
        assert_eq!(
            fs::read_link(root.join("gnu-link")).unwrap(),
            Path::new(&gnu_link)
        );
        assert_eq!(
            fs::metadata(root.join("hl")).unwrap().ino(),
            fs::metadata(root.join(&pax_name)).unwrap().ino()
        );
        assert!(!root.join("truncated").exists());
        assert!(!root.join("x").exists());
    }

    #[test]
    fn apply_pax_size_uid_gid_and_global_headers() {
        let (_base, root) = scratch();
        let content = vec![b'z'; 700];
        // Go writes 0 in the header size field when PAX carries the size;
        // the data (and its padding) follows as usual.
        let mut h = Layer::header("big", EntryType::Regular, 0o644, 0, 0);
        h.set_cksum();
        let mut member = h.as_bytes().to_vec();
        member.extend_from_slice(&content);
        member.resize(member.len() + 1024 - 700, 0);
        let glob = Layer::header("global", EntryType::XGlobalHeader, 0o644, 0, 14);
        let tar = Layer::new()
            .raw(glob, b"14 comment=x\n\n")
            .pax(&[("size", b"700"), ("uid", b"4242"), ("gid", b"4343")])
            .finish();
        // Splice the member in before the end-of-archive blocks.
        let tar = [
            &tar[..tar.len() - 1024],
            &member,
            &Layer::new().file("after", 0o644, 0, b"ok").finish(),
        ]
        .concat();
        let stats = apply(&root, &tar).unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(fs::read(root.join("big")).unwrap(), content);
        assert_eq!(fs::read(root.join("after")).unwrap(), b"ok");
        if is_root() {
            let md = fs::metadata(root.join("big")).unwrap();
            assert_eq!((md.uid(), md.gid()), (4242, 4343));
        }
        // A bad number is an error; a PAX size below the header's too.
        let (_base, root) = scratch();
        let tar = Layer::new()
            .pax(&[("uid", b"-1")])
            .file("f", 0o644, 0, b"")
            .finish();
        assert!(matches!(
            apply(&root, &tar),
            Err(ApplyError::InvalidEntry { .. })
        ));
        let tar = Layer::new()
            .pax(&[("size", b"1")])
            .file("f", 0o644, 0, b"ab")
            .finish();
        assert!(matches!(
            apply(&root, &tar),
            Err(ApplyError::InvalidEntry { .. })
        ));
        // Extension headers with no member after them.
        let tar = Layer::new().pax(&[("path", b"x")]).finish();
        assert!(matches!(apply(&root, &tar), Err(ApplyError::Tar { .. })));
    }

    #[test]
    fn apply_gnu_sparse_with_extension_block() {
        let (_base, root) = scratch();
        let regions: [(u64, &[u8]); 5] = [
            (0, b"aaaaaaaaaa"),
            (1000, b"bbbbb"),
            (2000, b"c"),
            (3000, b"d"),
            (9000, b"eeeeeee"),
        ];
        let data: Vec<u8> = regions.iter().flat_map(|r| r.1.iter().copied()).collect();
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..6].copy_from_slice(b"sparse");
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        for (slot, (off, bytes)) in gnu.sparse.iter_mut().zip(&regions) {
            slot.set_offset(*off);
            slot.set_length(bytes.len() as u64);
        }
        gnu.set_real_size(10_000);
        gnu.set_is_extended(true);
        h.set_cksum();
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.sparse_mut()[0].set_offset(regions[4].0);
        ext.sparse_mut()[0].set_length(regions[4].1.len() as u64);
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(ext.as_mut_bytes());
        tar.extend_from_slice(&data);
        tar.resize(tar.len() + 512 - data.len(), 0);
        tar.extend(Layer::new().file("after", 0o644, 0, b"ok").finish());
        let stats = apply(&root, &tar).unwrap();
        assert_eq!(stats.bytes, data.len() as u64 + 2);
        let got = fs::read(root.join("sparse")).unwrap();
        assert_eq!(got.len(), 10_000);
        let mut want = vec![0u8; 10_000];
        for (off, bytes) in regions {
            want[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
        }
        assert_eq!(got, want);
        assert_eq!(fs::read(root.join("after")).unwrap(), b"ok");
    }

    #[test]
    fn resolve_in_root_follows_parents_only() {
        let (_base, root) = scratch();
        fs::create_dir_all(root.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("real/dir", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        let r = |p: &str| resolve_in_root(&root, Path::new(p)).unwrap();
        assert_eq!(r("abs/dir/x"), root.join("real/dir/x"));
        assert_eq!(r("/rel/x"), root.join("real/dir/x"));
        assert_eq!(r("rel/../x"), root.join("real/x"));
        assert_eq!(r("up/etc/passwd"), root.join("etc/passwd"));
        assert_eq!(r("../../x"), root.join("x"));
        // The last component is not followed.
        assert_eq!(r("abs"), root.join("abs"));
        assert_eq!(r("rel"), root.join("rel"));
        assert_eq!(r(""), root);
    }

    #[test]
    fn pax_time_parsing() {
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(Time {
                secs: 12,
                nanos: 500_000_000
            })
        );
        assert_eq!(parse_pax_time(b"12"), Some(Time { secs: 12, nanos: 0 }));
        assert_eq!(parse_pax_time(b"-3.5"), Some(Time::EPOCH));
        assert_eq!(
            parse_pax_time(b"1.0000000019"),
            Some(Time { secs: 1, nanos: 1 })
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
