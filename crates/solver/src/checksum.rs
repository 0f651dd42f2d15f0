//! Checksums of the files a `COPY` or `ADD` reads, for the build cache.
//!
//! Like BuildKit's content hashing (`contenthash`), a checksum covers what
//! the copy makes of each file and nothing else: where the file lands
//! relative to the selection, its type, its permission bits (setuid, setgid
//! and sticky included), its owner when the copy keeps owners, a symlink's
//! target and a regular file's content. Times and inode numbers are left
//! out, so touching a file or checking the context out afresh keeps the
//! cache, and a hard link is just another file with that content.
//!
//! The files are chosen by [`select_sources`] and [`select_children`]
//! (one level of the copy's `select_tree`), the functions the copy itself
//! reads its sources with, so the checksum covers exactly what the copy
//! reads: the same wildcards, `.dockerignore` (exceptions included),
//! `--exclude` and `--parents`, and the same errors for a source that
//! names nothing.
//!
//! Reading content is the expensive part. Files are hashed in parallel,
//! and the content digest of a file whose [`FileStamp`] has not changed
//! since an earlier build is taken from [`KnownHashes`] without opening
//! the file; what had to be read is returned so the caller can remember it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use rbuild_exec::copy::{CopyError, Filters, Selected, TreeChild, select_children, select_sources};
use rbuild_exec::patterns::PatternMatcher;
use rbuild_oci::{Digest, Hasher};

/// What a file's content digest is valid for: if any of these change, the
/// file is read again.
///
/// The change time is what makes this safe: every write and every
/// metadata change sets it to the current time, and unlike the
/// modification time it cannot be set to anything else. The device and
/// inode catch a file replaced by another one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    pub fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

fn nanos(secs: i64, nsecs: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

/// Content digests known from earlier builds, by absolute host path.
pub trait KnownHashes: Sync {
    /// The content digest of `path`, if it was read when it had `stamp`.
    fn get(&self, path: &Path, stamp: &FileStamp) -> Option<Digest>;
    /// Whether the tree is better walked on the calling thread than on
    /// the pool (see [`PARALLEL_MIN_KNOWN`]).
    fn walk_serially(&self) -> bool {
        false
    }
}

impl KnownHashes for HashMap<PathBuf, (FileStamp, Digest)> {
    fn get(&self, path: &Path, stamp: &FileStamp) -> Option<Digest> {
        match HashMap::get(self, path) {
            Some((known, digest)) if known == stamp => Some(*digest),
            _ => None,
        }
    }

    /// A context whose files are mostly known from earlier builds, and
    /// few.
    fn walk_serially(&self) -> bool {
        (1..PARALLEL_MIN_KNOWN).contains(&self.len())
    }
}

/// A selection from a tree where fewer files than this are known from
/// earlier builds (but some are: the tree is not new) is checksummed on
/// the calling thread. Its files are mostly known, so the work is a
/// directory walk; starting the thread pool for it costs more than it
/// saves (a tenth of a no-op rebuild's time on two cores).
const PARALLEL_MIN_KNOWN: usize = 1024;

/// The files one copy reads.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    /// The build context, or a materialized stage's filesystem.
    pub root: &'a Path,
    /// The copy's sources, as written (after word expansion).
    pub sources: &'a [String],
    /// `.dockerignore`.
    pub exclude: Option<&'a PatternMatcher>,
    /// `--exclude`.
    pub copy_exclude: Option<&'a PatternMatcher>,
    /// `--parents`.
    pub parents: bool,
    /// Whether the copy keeps the files' owners: true for another stage's
    /// files, false for the build context, whose files become root's (so
    /// their owners must not matter).
    pub keep_owners: bool,
}

/// The checksum of a [`Selection`].
#[derive(Debug, Clone)]
pub struct SelectionChecksum {
    pub digest: Digest,
    /// Each selected path (relative to the root, `/`-separated, `.` for
    /// the root itself) and the digest of what the copy makes of it,
    /// sorted by path: comparing two lists says which file changed. A path
    /// two sources both select is listed twice.
    pub entries: Vec<(String, Digest)>,
    /// The files whose content was read this time, with the stamp it is
    /// valid for, for the caller to offer as [`KnownHashes`] next time.
    /// Files changed in the last moments are left out (see [`RACY_WINDOW`]).
    pub hashed: Vec<(PathBuf, FileStamp, Digest)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// What the copy itself would fail with: a source that names nothing,
    /// a bad pattern, an unreadable directory.
    #[error(transparent)]
    Select(#[from] CopyError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: sockets, fifos and devices cannot be copied")]
    Unsupported { path: PathBuf },
}

/// How recently changed a file may be for its digest to be offered for
/// reuse. File times come from a clock that only advances once a tick (a
/// second on some filesystems), so a file written again within the tick
/// it was read in keeps its stamp with new content; a file whose change
/// time is older than this when we start cannot do that any more.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Reads are this large: big enough that a large file costs few system
/// calls, small enough to stay in cache while it is hashed.
const READ_SIZE: usize = 256 * 1024;

/// Checksums the files `sel` selects, reading only those whose content is
/// not in `known` for their current stamp.
pub fn checksum_selection(
    sel: &Selection<'_>,
    known: &dyn KnownHashes,
) -> Result<SelectionChecksum, ChecksumError> {
    checksum_selection_at(sel, known, SystemTime::now())
}

/// [`checksum_selection`] of a tree this build unpacked, which nothing
/// else writes: every file read is offered in
/// [`SelectionChecksum::hashed`], however recently it changed.
pub fn checksum_unpacked(
    sel: &Selection<'_>,
    known: &dyn KnownHashes,
) -> Result<SelectionChecksum, ChecksumError> {
    checksum_trusting(sel, known, i64::MAX)
}

/// [`checksum_selection`], started at `now`.
fn checksum_selection_at(
    sel: &Selection<'_>,
    known: &dyn KnownHashes,
    now: SystemTime,
) -> Result<SelectionChecksum, ChecksumError> {
    let trusted_before = now
        .checked_sub(RACY_WINDOW)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(i64::MIN, |d| {
            i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
        });
    checksum_trusting(sel, known, trusted_before)
}

/// The checksum, offering for reuse the digests of files whose change
/// time is before `trusted_before` (nanoseconds since the epoch).
fn checksum_trusting(
    sel: &Selection<'_>,
    known: &dyn KnownHashes,
    trusted_before: i64,
) -> Result<SelectionChecksum, ChecksumError> {
    let filters = Filters {
        exclude: sel.exclude,
        copy_exclude: sel.copy_exclude,
    };
    let selected = select_sources(sel.root, sel.sources, filters)?;
    let run = Run {
        sel,
        filters,
        known,
        trusted_before,
        parallel: !known.walk_serially(),
    };
    let done: Vec<Vec<Done>> = if run.parallel {
        selected
            .par_iter()
            .map(|source| run.source(source))
            .collect::<Result<_, _>>()?
    } else {
        selected
            .iter()
            .map(|source| run.source(source))
            .collect::<Result<_, _>>()?
    };

    let mut entries = Vec::new();
    let mut hashed = Vec::new();
    for d in done.into_iter().flatten() {
        entries.push((d.path, d.digest));
        hashed.extend(d.hashed);
    }
    if run.parallel {
        entries.par_sort_unstable();
    } else {
        entries.sort_unstable();
    }
    hashed.sort_unstable_by(|a, b| a.0.cmp(&b.0));

    let mut record = Record::new();
    record.field(b"rbuild copy selection v1");
    record.field(&[u8::from(sel.keep_owners), u8::from(sel.parents)]);
    record.field(&(sel.sources.len() as u64).to_le_bytes());
    for source in sel.sources {
        record.field(source.as_bytes());
    }
    // Each entry digest already says where and what the entry is, so
    // their sorted concatenation is unambiguous.
    for (_, digest) in &entries {
        record.0.update(digest.as_bytes());
    }
    Ok(SelectionChecksum {
        digest: record.finish(),
        entries,
        hashed,
    })
}

/// One checksum in progress.
struct Run<'a> {
    sel: &'a Selection<'a>,
    filters: Filters<'a>,
    known: &'a dyn KnownHashes,
    /// Stamps with an older change time can be offered for reuse.
    trusted_before: i64,
    /// Whether to walk and hash on the thread pool.
    parallel: bool,
}

/// A checksummed path.
struct Done {
    /// Relative to the root.
    path: String,
    digest: Digest,
    /// Set when the content was read now and may be reused.
    hashed: Option<(PathBuf, FileStamp, Digest)>,
}

impl Run<'_> {
    /// The entries of a selected source: itself, and for a directory what
    /// the copy reads below it.
    fn source(&self, source: &Selected) -> Result<Vec<Done>, ChecksumError> {
        let path = match source.rel.as_str() {
            "" => ".".to_string(),
            rel => rel.to_string(),
        };
        let prefix = Record::source(self.sel, source);
        if !source.meta.is_dir() {
            let done = self.entry(&prefix, "", path, source.path.clone(), &source.meta)?;
            return Ok(vec![done]);
        }
        // The copy puts the directory's contents at the destination; its
        // own mode and owner are not copied, so only its being a
        // directory counts.
        let mut record = prefix.clone();
        record.field(b"");
        record.field(b"source-dir");
        let mut done = self.tree(&prefix, &source.path, &source.rel, "")?;
        done.push(Done {
            path,
            digest: record.finish(),
            hashed: None,
        });
        Ok(done)
    }

    /// The entries below `dir`, a directory at `root_rel` below the root
    /// and `rel` below the source `prefix` is for. Directories are listed,
    /// and their entries hashed, in parallel (when [`Run::parallel`]).
    fn tree(
        &self,
        prefix: &Record,
        dir: &Path,
        root_rel: &str,
        rel: &str,
    ) -> Result<Vec<Done>, ChecksumError> {
        let children = select_children(dir, root_rel, rel, self.filters)?;
        if !self.parallel {
            let mut done = Vec::new();
            for child in children {
                self.child(prefix, child, &mut done)?;
            }
            return Ok(done);
        }
        children
            .into_par_iter()
            .try_fold(Vec::new, |mut done, child| {
                self.child(prefix, child, &mut done)?;
                Ok(done)
            })
            .try_reduce(Vec::new, |mut a, mut b| {
                a.append(&mut b);
                Ok(a)
            })
    }

    /// Adds a child of a directory [`Run::tree`] walks, and what is below
    /// it, to `done`.
    fn child(
        &self,
        prefix: &Record,
        TreeChild {
            item,
            only_if_not_empty,
        }: TreeChild,
        done: &mut Vec<Done>,
    ) -> Result<(), ChecksumError> {
        let mut below = match item.meta.is_dir() {
            true => self.tree(prefix, &item.path, &item.root_rel, &item.rel)?,
            false => Vec::new(),
        };
        if !(only_if_not_empty && below.is_empty()) {
            done.push(self.entry(prefix, &item.rel, item.root_rel, item.path, &item.meta)?);
            done.append(&mut below);
        }
        Ok(())
    }

    /// The entry of a path `rel` below the source `prefix` is for (`""`
    /// for the source itself), at `path` below the root and `host` on this
    /// machine, with `meta` from lstat.
    fn entry(
        &self,
        prefix: &Record,
        rel: &str,
        path: String,
        host: PathBuf,
        meta: &fs::Metadata,
    ) -> Result<Done, ChecksumError> {
        let mut record = prefix.clone();
        record.field(rel.as_bytes());
        let file_type = meta.file_type();
        let mut hashed = None;
        if file_type.is_dir() {
            record.field(b"dir");
            record.attributes(self.sel, meta);
        } else if file_type.is_symlink() {
            let target = fs::read_link(&host).map_err(|e| io_err(&host, e))?;
            record.field(b"symlink");
            record.attributes(self.sel, meta);
            record.field(target.as_os_str().as_bytes());
        } else if file_type.is_file() {
            let stamp = FileStamp::of(meta);
            let content = match self.known.get(&host, &stamp) {
                Some(digest) => digest,
                None => {
                    let (digest, after) =
                        hash_content(&host, stamp.size).map_err(|e| io_err(&host, e))?;
                    // Offer the digest for reuse only if the file did not
                    // change while it was read, and cannot change later
                    // without its stamp changing.
                    if after == stamp && stamp.ctime_ns < self.trusted_before {
                        hashed = Some((host, stamp, digest));
                    }
                    digest
                }
            };
            record.field(b"file");
            record.attributes(self.sel, meta);
            record.field(content.as_bytes());
        } else {
            return Err(ChecksumError::Unsupported { path: host });
        }
        Ok(Done {
            path,
            digest: record.finish(),
            hashed,
        })
    }
}

/// A sha256 of length-prefixed fields, so that no two different records
/// hash the same bytes.
#[derive(Clone)]
struct Record(Hasher);

impl Record {
    fn new() -> Record {
        Record(Hasher::new())
    }

    /// The start of the records of a source's entries. Where the copy
    /// puts an entry is decided by the source that named it (the pattern
    /// and what it matched) and the entry's path below that, which comes
    /// next. Each entry's record starts from a copy of this hasher.
    fn source(sel: &Selection<'_>, source: &Selected) -> Record {
        let mut record = Record::new();
        record.field(&(source.source as u64).to_le_bytes());
        record.field(sel.sources[source.source].as_bytes());
        record.field(source.rel.as_bytes());
        record
    }

    /// What the copy keeps of a file's metadata: permission bits, and
    /// owners when it keeps them.
    fn attributes(&mut self, sel: &Selection<'_>, meta: &fs::Metadata) {
        self.field(&(meta.mode() & 0o7777).to_le_bytes());
        if sel.keep_owners {
            self.field(&meta.uid().to_le_bytes());
            self.field(&meta.gid().to_le_bytes());
        }
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> Digest {
        self.0.finish()
    }
}

thread_local! {
    /// Each rayon worker's read buffer, allocated once.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
}

/// The sha256 of a regular file's content, read up to the `size` it was
/// listed with (or its end, if sooner), and its stamp once read: if that
/// differs from the listed one, the file changed meanwhile.
fn hash_content(path: &Path, size: u64) -> io::Result<(Digest, FileStamp)> {
    // The path was a regular file when it was listed; should a symlink
    // have been put in its place since, fail instead of following it out
    // of the root.
    let mut file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut hasher = Hasher::new();
    READ_BUF.with_borrow_mut(|buf| {
        // Stopping at the listed size saves the read that would find the
        // end; a file that grew shows in its stamp.
        while hasher.len() < size {
            match file.read(buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })?;
    let after = FileStamp::of(&file.metadata()?);
    Ok((hasher.finish(), after))
}

fn io_err(path: &Path, source: io::Error) -> ChecksumError {
    ChecksumError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use rbuild_exec::basefs::BaseFs;
    use rbuild_exec::copy::{CopySpec, copy_entries};
    use rbuild_exec::layer::EntryKind;

    /// A copy to checksum, with its patterns.
    #[derive(Default, Clone)]
    struct Case {
        sources: Vec<String>,
        dockerignore: Vec<String>,
        exclude: Vec<String>,
        parents: bool,
        keep_owners: bool,
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    impl Case {
        fn of(sources: &[&str]) -> Case {
            Case {
                sources: strings(sources),
                ..Case::default()
            }
        }

        fn ignoring(self, patterns: &[&str]) -> Case {
            Case {
                dockerignore: strings(patterns),
                ..self
            }
        }

        fn excluding(self, patterns: &[&str]) -> Case {
            Case {
                exclude: strings(patterns),
                ..self
            }
        }

        fn matchers(&self) -> (Option<PatternMatcher>, Option<PatternMatcher>) {
            let compile = |p: &[String]| (!p.is_empty()).then(|| PatternMatcher::new(p).unwrap());
            (compile(&self.dockerignore), compile(&self.exclude))
        }

        /// The checksum with the clock an hour ahead, so that every file
        /// read is offered for reuse.
        fn checksum_with(
            &self,
            root: &Path,
            known: &dyn KnownHashes,
        ) -> Result<SelectionChecksum, ChecksumError> {
            let (exclude, copy_exclude) = self.matchers();
            let sel = Selection {
                root,
                sources: &self.sources,
                exclude: exclude.as_ref(),
                copy_exclude: copy_exclude.as_ref(),
                parents: self.parents,
                keep_owners: self.keep_owners,
            };
            let later = SystemTime::now() + Duration::from_secs(3600);
            checksum_selection_at(&sel, known, later)
        }

        fn checksum(&self, root: &Path) -> SelectionChecksum {
            self.checksum_with(root, &HashMap::new()).unwrap()
        }

        fn digest(&self, root: &Path) -> Digest {
            self.checksum(root).digest
        }

        /// The paths copy_entries writes to `/out/`, without the parent
        /// directories it creates.
        fn copied(&self, root: &Path) -> BTreeSet<String> {
            let (exclude, copy_exclude) = self.matchers();
            const CREATED: u64 = 7;
            let spec = CopySpec {
                context: root,
                sources: &self.sources,
                dest: "/out/",
                owner: None,
                chmod: None,
                created_dir_mtime: CREATED,
                keep_owners: self.keep_owners,
                exclude: exclude.as_ref(),
                copy_exclude: copy_exclude.as_ref(),
                parents: self.parents,
                unpack: false,
                scratch: root,
            };
            copy_entries(&spec, &BaseFs::empty())
                .unwrap()
                .entries
                .into_iter()
                .filter(|e| !(e.kind == EntryKind::Directory && e.mtime == CREATED))
                .map(|e| e.path)
                .collect()
        }
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn chmod(root: &Path, rel: &str, mode: u32) {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A small context: a directory with a subdirectory and a symlink,
    /// and files beside it.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "d/a.txt", "aaa");
        write(root, "d/sub/b.txt", "bbb");
        symlink("a.txt", root.join("d/link")).unwrap();
        write(root, "top.txt", "top");
        write(root, "other.txt", "not selected");
        dir
    }

    #[test]
    fn covers_what_the_copy_makes_of_each_file() {
        let copy = Case::of(&["d", "top.txt"]);
        let base = copy.digest(fixture().path());

        // A fresh checkout has other inodes and times: same checksum.
        assert_eq!(copy.digest(fixture().path()), base);

        type Change = fn(&Path);
        let same: &[(&str, Change)] = &[
            ("touch", |r| {
                let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
                for f in ["d/a.txt", "top.txt"] {
                    let file = File::options().write(true).open(r.join(f)).unwrap();
                    file.set_modified(old).unwrap();
                }
            }),
            ("rewrite with the same content", |r| {
                write(r, "d/a.txt", "aaa")
            }),
            ("change an unselected file", |r| write(r, "other.txt", "x")),
            ("add an unselected file", |r| write(r, "new.txt", "x")),
            ("hard link from outside", |r| {
                fs::hard_link(r.join("d/a.txt"), r.join("h")).unwrap()
            }),
        ];
        for (what, change) in same {
            let ctx = fixture();
            change(ctx.path());
            assert_eq!(copy.digest(ctx.path()), base, "{what}");
        }

        let different: &[(&str, Change)] = &[
            ("rename", |r| {
                fs::rename(r.join("d/a.txt"), r.join("d/a2.txt")).unwrap()
            }),
            ("chmod", |r| chmod(r, "d/a.txt", 0o600)),
            ("setuid", |r| chmod(r, "d/sub/b.txt", 0o4644)),
            ("sticky directory", |r| chmod(r, "d/sub", 0o1755)),
            ("chmod a file source", |r| chmod(r, "top.txt", 0o755)),
            ("same size, other content", |r| write(r, "d/a.txt", "aab")),
            ("add a file", |r| write(r, "d/sub/c.txt", "")),
            ("add an empty directory", |r| {
                fs::create_dir(r.join("d/empty")).unwrap()
            }),
            ("remove a file", |r| {
                fs::remove_file(r.join("d/sub/b.txt")).unwrap()
            }),
            ("retarget a symlink", |r| {
                fs::remove_file(r.join("d/link")).unwrap();
                symlink("sub/b.txt", r.join("d/link")).unwrap();
            }),
            ("file becomes a symlink", |r| {
                fs::remove_file(r.join("d/a.txt")).unwrap();
                symlink("sub/b.txt", r.join("d/a.txt")).unwrap();
            }),
            ("move a file to a subdirectory", |r| {
                fs::rename(r.join("d/a.txt"), r.join("d/sub/a.txt")).unwrap()
            }),
        ];
        for (what, change) in different {
            let ctx = fixture();
            change(ctx.path());
            assert_ne!(copy.digest(ctx.path()), base, "{what}");
        }
    }

    #[test]
    fn hard_links_are_plain_files() {
        let linked = fixture();
        fs::hard_link(linked.path().join("d/a.txt"), linked.path().join("d/h")).unwrap();
        let copied = fixture();
        write(copied.path(), "d/h", "aaa");
        let copy = Case::of(&["d"]);
        assert_eq!(copy.digest(linked.path()), copy.digest(copied.path()));
    }

    #[test]
    fn owners_count_only_when_kept() {
        let ctx = fixture();
        let context = Case::of(&["d"]);
        let stage = Case {
            keep_owners: true,
            ..context.clone()
        };
        let (before, before_kept) = (context.digest(ctx.path()), stage.digest(ctx.path()));
        // Needs root; elsewhere there is nothing to check.
        if std::os::unix::fs::chown(ctx.path().join("d/a.txt"), Some(1234), Some(1234)).is_err() {
            return;
        }
        assert_eq!(context.digest(ctx.path()), before);
        assert_ne!(stage.digest(ctx.path()), before_kept);
    }

    #[test]
    fn excluded_files_do_not_count() {
        let copy = Case::of(&["d"])
            .ignoring(&["d/ex", "!d/ex/keep.txt", "**/*.tmp"])
            .excluding(&["*.log"]);
        let fixture = || {
            let ctx = fixture();
            write(ctx.path(), "d/ex/keep.txt", "keep");
            write(ctx.path(), "d/ex/drop.txt", "drop");
            write(ctx.path(), "d/sub/x.tmp", "tmp");
            write(ctx.path(), "d/x.log", "log");
            ctx
        };
        let base = copy.digest(fixture().path());
        for (rel, counts) in [
            ("d/ex/drop.txt", false),
            ("d/sub/x.tmp", false),
            ("d/x.log", false),
            ("d/ex/keep.txt", true),
            ("d/a.txt", true),
        ] {
            let ctx = fixture();
            write(ctx.path(), rel, "changed");
            assert_eq!(copy.digest(ctx.path()) != base, counts, "{rel}");
        }
    }

    #[test]
    fn placement_counts() {
        let ctx = fixture();
        let root = ctx.path();
        write(root, "e/a.txt", "aaa");
        write(root, "e/sub/b.txt", "bbb");
        symlink("a.txt", root.join("e/link")).unwrap();
        let digest = |sources: &[&str]| Case::of(sources).digest(root);
        // The same files under another name are another selection.
        assert_ne!(digest(&["d"]), digest(&["e"]));
        assert_ne!(digest(&["d", "top.txt"]), digest(&["top.txt", "d"]));
        let parents = Case {
            parents: true,
            ..Case::of(&["d/sub"])
        };
        assert_ne!(parents.digest(root), digest(&["d/sub"]));

        // The same content laid out differently is too.
        let (flat, nested) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(flat.path(), "src/a.txt", "aaa");
        write(nested.path(), "src/x/a.txt", "aaa");
        fs::create_dir(flat.path().join("src/x")).unwrap();
        let src = Case::of(&["src"]);
        assert_ne!(src.digest(flat.path()), src.digest(nested.path()));
    }

    #[test]
    fn entries_name_each_selected_path() {
        let ctx = fixture();
        // Symlinks below a source are entries of their own, never
        // followed, wherever they point.
        symlink("/etc", ctx.path().join("d/etc")).unwrap();
        symlink("sub", ctx.path().join("d/sublink")).unwrap();
        let sum = Case::of(&["d", "top.txt"]).checksum(ctx.path());
        let paths: Vec<&str> = sum.entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "d",
                "d/a.txt",
                "d/etc",
                "d/link",
                "d/sub",
                "d/sub/b.txt",
                "d/sublink",
                "top.txt"
            ]
        );
        let whole = Case::of(&["."]).checksum(ctx.path());
        assert_eq!(whole.entries[0].0, ".");

        // Which entry changed is what tells a user why the cache missed.
        write(ctx.path(), "d/sub/b.txt", "changed");
        let after = Case::of(&["d", "top.txt"]).checksum(ctx.path());
        let changed: Vec<&str> = sum
            .entries
            .iter()
            .zip(&after.entries)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0.as_str())
            .collect();
        assert_eq!(changed, ["d/sub/b.txt"]);
    }

    #[test]
    fn known_digests_are_reused_for_unchanged_stamps() {
        let ctx = fixture();
        let copy = Case::of(&["d", "top.txt"]);
        let first = copy.checksum(ctx.path());
        let root = fs::canonicalize(ctx.path()).unwrap();
        let read: BTreeSet<PathBuf> = first.hashed.iter().map(|h| h.0.clone()).collect();
        let expected: BTreeSet<PathBuf> = ["d/a.txt", "d/sub/b.txt", "top.txt"]
            .iter()
            .map(|rel| root.join(rel))
            .collect();
        assert_eq!(read, expected);
        for (path, _, digest) in &first.hashed {
            assert_eq!(*digest, Digest::of(&fs::read(path).unwrap()));
        }

        let mut known: HashMap<PathBuf, (FileStamp, Digest)> = first
            .hashed
            .iter()
            .map(|(p, s, d)| (p.clone(), (*s, *d)))
            .collect();
        // With few files known, on this thread (the first was on the
        // pool): the same checksum.
        let again = copy.checksum_with(ctx.path(), &known).unwrap();
        assert_eq!(again.digest, first.digest);
        assert!(again.hashed.is_empty(), "{:?}", again.hashed);

        // A known digest is believed without opening the file: a false one
        // shows in the checksum, for that entry only.
        let a = root.join("d/a.txt");
        known.get_mut(&a).unwrap().1 = Digest::of(b"not the content");
        let fooled = copy.checksum_with(ctx.path(), &known).unwrap();
        assert_ne!(fooled.digest, first.digest);
        assert!(fooled.hashed.is_empty());
        let differing: Vec<&str> = first
            .entries
            .iter()
            .zip(&fooled.entries)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0.as_str())
            .collect();
        assert_eq!(differing, ["d/a.txt"]);

        // Any difference in the stamp means reading the file again.
        known.get_mut(&a).unwrap().0.mtime_ns += 1;
        let reread = copy.checksum_with(ctx.path(), &known).unwrap();
        assert_eq!(reread.digest, first.digest);
        let reread: Vec<&PathBuf> = reread.hashed.iter().map(|h| &h.0).collect();
        assert_eq!(reread, [&a]);
    }

    #[test]
    fn recently_changed_files_are_not_offered_for_reuse() {
        let ctx = fixture();
        let (exclude, copy_exclude) = (None, None);
        let sources = strings(&["d"]);
        let sel = Selection {
            root: ctx.path(),
            sources: &sources,
            exclude,
            copy_exclude,
            parents: false,
            keep_owners: false,
        };
        // Just written: they could change again within the same tick.
        let now = checksum_selection(&sel, &HashMap::new()).unwrap();
        assert!(now.hashed.is_empty());
        let later = SystemTime::now() + RACY_WINDOW;
        let after = checksum_selection_at(&sel, &HashMap::new(), later).unwrap();
        assert_eq!(after.hashed.len(), 2);
        assert_eq!(after.digest, now.digest);
    }

    #[test]
    fn sources_fail_as_the_copy_does() {
        let ctx = fixture();
        let err = |sources: &[&str]| {
            Case::of(sources)
                .checksum_with(ctx.path(), &HashMap::new())
                .unwrap_err()
        };
        assert!(matches!(
            err(&["missing"]),
            ChecksumError::Select(CopyError::NotFound(s)) if s == "missing"
        ));
        assert!(matches!(
            err(&["*.nothing"]),
            ChecksumError::Select(CopyError::NoMatch(_))
        ));
        assert!(matches!(
            err(&["[z-a]*"]),
            ChecksumError::Select(CopyError::BadPattern(..))
        ));
        // Symlinks never lead out of the root.
        symlink("/etc", ctx.path().join("escape")).unwrap();
        assert!(matches!(
            err(&["escape/passwd"]),
            ChecksumError::Select(CopyError::NotFound(_))
        ));
        let ignored = Case::of(&["top.txt"]).ignoring(&["top.txt"]);
        assert!(matches!(
            ignored.checksum_with(ctx.path(), &HashMap::new()),
            Err(ChecksumError::Select(CopyError::NotFound(_)))
        ));

        let fifo = ctx.path().join("d/fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(
            matches!(err(&["d"]), ChecksumError::Unsupported { path } if path.ends_with("d/fifo"))
        );
    }

    #[test]
    fn selects_what_copy_entries_reads() {
        let ctx = fixture();
        let root = ctx.path();
        write(root, "b.txt", "b");
        write(root, "c.md", "c");
        write(root, "d/y.log", "y");
        write(root, "d/ex/keep.txt", "keep");
        write(root, "d/ex/drop.txt", "drop");
        write(root, "d/ex/deeper/keep.txt", "keep");
        write(root, "p/q/r.txt", "r");
        write(root, "p/q/s.txt", "s");
        symlink("p/q", root.join("lq")).unwrap();

        let parents = |copy: Case| Case {
            parents: true,
            ..copy
        };
        // Each case, and where the copy puts what is below a root path:
        // the first rule whose path is that path or one of its parents
        // applies ("" is the parent of all).
        let cases: Vec<(Case, &[(&str, &str)])> = vec![
            (Case::of(&["*.txt"]), &[("", "out")]),
            (Case::of(&["d/*.txt", "c.md"]), &[("d", "out"), ("", "out")]),
            (
                Case::of(&["d"]).ignoring(&["d/ex", "!d/ex/keep.txt", "**/*.log"]),
                &[("d", "out")],
            ),
            (
                Case::of(&["d"]).ignoring(&["d/ex", "!**/keep.txt"]),
                &[("d", "out")],
            ),
            (
                Case::of(&["d", "top.txt", "b.txt"]).excluding(&["*.log", "sub", "b.txt"]),
                &[("d", "out"), ("", "out")],
            ),
            (
                Case::of(&["."]).ignoring(&["p", "!p/q/s.txt", "d/ex"]),
                &[("", "out")],
            ),
            // d/sub is entered for the exception, and left out: nothing
            // in it is re-included.
            (
                Case::of(&["."]).ignoring(&["d", "!d/*/keep.txt"]),
                &[("", "out")],
            ),
            (
                parents(Case::of(&["p/./q/r.txt", "d/sub"])),
                &[("p/q/r.txt", "out/q/r.txt"), ("", "out")],
            ),
            (parents(Case::of(&["*/q", "lq"])), &[("", "out")]),
            (Case::of(&["lq"]), &[("p/q", "out")]),
        ];
        for (copy, rules) in cases {
            // A directory source's own entry: the copy creates the
            // destination for its contents instead of copying it.
            let (exclude, copy_exclude) = copy.matchers();
            let filters = Filters {
                exclude: exclude.as_ref(),
                copy_exclude: copy_exclude.as_ref(),
            };
            let source_dirs: BTreeSet<String> = select_sources(root, &copy.sources, filters)
                .unwrap()
                .into_iter()
                .filter(|s| s.meta.is_dir())
                .map(|s| if s.rel.is_empty() { ".".into() } else { s.rel })
                .collect();
            let place = |path: &str| -> Option<String> {
                if source_dirs.contains(path) {
                    return None;
                }
                for (prefix, dest) in rules {
                    if path == *prefix {
                        return Some(dest.to_string());
                    }
                    let rest = match prefix.is_empty() {
                        true => Some(path),
                        false => path.strip_prefix(&format!("{prefix}/")),
                    };
                    if let Some(rest) = rest {
                        return Some(format!("{dest}/{rest}"));
                    }
                }
                panic!("no rule places {path}");
            };
            let sum = copy.checksum(root);
            let placed: BTreeSet<String> =
                sum.entries.iter().filter_map(|(p, _)| place(p)).collect();
            let copied = copy.copied(root);
            assert!(!copied.is_empty());
            assert_eq!(placed, copied, "{:?}", copy.sources);
        }
    }
}

/// How long checksums of a large context take; run with
/// `cargo test --release -p rbuild-solver checksum::measure -- --ignored --nocapture`.
#[cfg(test)]
mod measure {
    use super::*;
    use std::time::Instant;

    /// CPU time of this process so far, all threads, from
    /// `/proc/self/stat` (clock ticks, taken as 10 ms): on a busy machine
    /// it says more than the wall clock does.
    fn cpu_time() -> Duration {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let ticks: u64 = after_name
            .split(' ')
            .skip(11)
            .take(2)
            .map(|t| t.parse::<u64>().unwrap())
            .sum();
        Duration::from_millis(ticks * 10)
    }

    #[test]
    #[ignore = "writes 370 MB; run by hand"]
    fn forty_thousand_files() {
        let ctx = tempfile::tempdir().unwrap();
        // 40 × 10 directories of 100 files: every 100th file 800 KiB, the
        // rest 1 KiB, 370 MB in all.
        let mut data = vec![0u8; 801 * 1024];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut total = 0;
        for i in 0..40_000usize {
            let dir = ctx
                .path()
                .join(format!("d{}/s{}", i / 1000, (i / 100) % 10));
            if i % 100 == 0 {
                fs::create_dir_all(&dir).unwrap();
            }
            let len = if i % 100 == 0 { 800 * 1024 } else { 1024 };
            let start = i % 1000;
            total += len;
            fs::write(dir.join(format!("f{i}")), &data[start..start + len]).unwrap();
        }
        // Past the window in which just-written files are not offered
        // for reuse, as for a context edited a while before the build.
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let sources = vec![".".to_string()];
        let sel = Selection {
            root: ctx.path(),
            sources: &sources,
            exclude: None,
            copy_exclude: None,
            parents: false,
            keep_owners: false,
        };
        println!(
            "40000 files, {} MB, {} threads",
            total / 1_000_000,
            rayon::current_num_threads()
        );
        for _ in 0..5 {
            let (start, cpu) = (Instant::now(), cpu_time());
            let cold = checksum_selection(&sel, &HashMap::new()).unwrap();
            let (cold_wall, cold_cpu) = (start.elapsed(), cpu_time() - cpu);
            assert_eq!(cold.hashed.len(), 40_000);
            let known: HashMap<PathBuf, (FileStamp, Digest)> = cold
                .hashed
                .into_iter()
                .map(|(p, s, d)| (p, (s, d)))
                .collect();
            let (start, cpu) = (Instant::now(), cpu_time());
            let warm = checksum_selection(&sel, &known).unwrap();
            let (warm_wall, warm_cpu) = (start.elapsed(), cpu_time() - cpu);
            assert!(warm.hashed.is_empty());
            assert_eq!(warm.digest, cold.digest);
            println!(
                "cold {cold_wall:.0?} (cpu {cold_cpu:?}), warm {warm_wall:.1?} (cpu {warm_cpu:?})"
            );
        }
    }
}
