//! Disk usage and garbage collection of the build cache.
//!
//! # What is build cache
//!
//! Everything in a root that no tagged image needs:
//!
//! - cache records (`metadata.db`, table `cache`) and the blobs that only
//!   records reference;
//! - orphan blobs: blobs nothing references (left by `rbuild rmi`, by
//!   untagged builds, or by a prune killed half-way);
//! - snapshots: layers unpacked under `snapshots/layers/` for RUN steps
//!   (re-created from their blobs whenever a RUN needs them);
//! - cache mounts (`cache-mounts/<id>/`, `RUN --mount=type=cache`);
//! - lock files (`locks/`, `snapshots/locks/`), which only matter while a
//!   build runs.
//!
//! A blob that a tagged image references (its manifest, config or a
//! layer) is never deleted, whether records share it or not. Each blob is
//! counted once: [`Usage`] splits blobs into image-only, shared (an image
//! and records), record-only and orphan ones.
//!
//! # Sizes
//!
//! Blobs count their file size (what their descriptors say). Directories
//! (snapshots, cache mounts) count the space allocated to them, as `du`
//! does: `st_blocks * 512` of every entry, directories included, each
//! hard-linked inode once. A snapshot never changes once unpacked, so its
//! size is computed once and kept in `metadata.db` (table
//! `gc_snapshot_sizes`, keyed by the directory's inode and ctime); cache
//! mounts change with every build and are walked each time (fine for
//! thousands of files; a cache mount of millions of files makes `du` and
//! the automatic policy take a while).
//!
//! # Locking
//!
//! Builds hold a shared lock on `ROOT/gc.lock` ([`build_guard`]) for their
//! whole duration; [`prune`] takes it exclusively (waiting for running
//! builds) and [`apply_policy`] only tries (and skips while a build runs:
//! the last build to finish applies it). So nothing a build is using or
//! about to record is ever deleted. The lock is an `flock`, released when
//! its file closes, also when the process dies.
//!
//! # Crash safety
//!
//! Records are deleted first, in one transaction, and only then their
//! blobs; a kill at any moment leaves at worst blobs nothing references,
//! which the next prune removes. A snapshot is renamed out of
//! `snapshots/layers/` into a locked work directory of `snapshots/tmp/`
//! before it is deleted, so a half-deleted layer is never used (the layer
//! store removes such directories once their lock is free). Cache mounts
//! are likewise renamed into this process's scratch directory first.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_oci::{BlobStore, Descriptor, Digest, Index, Manifest, media_type};
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::metadata::{CacheEntry, MetadataError, unix_now};
use crate::{ImageStoreError, Root};

/// The lock builds share and garbage collection takes exclusively.
const GC_LOCK: &str = "gc.lock";

const SIZE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gc_snapshot_sizes (
    layer    TEXT PRIMARY KEY,    -- the snapshot directory's name (diff ID hex)
    dev      INTEGER NOT NULL,    -- which unpacking of it: the directory's
    ino      INTEGER NOT NULL,    -- device, inode and change time
    ctime_ns INTEGER NOT NULL,
    size     INTEGER NOT NULL     -- bytes allocated, as du counts them
);
";

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Images(#[from] ImageStoreError),
    #[error("build cache database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> GcError + use<> {
    let path = path.to_path_buf();
    move |source| GcError::Io { path, source }
}

/// A number of things and the bytes they take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Category {
    pub count: u64,
    pub size: u64,
}

impl Category {
    fn add(&mut self, size: u64) {
        self.count += 1;
        self.size += size;
    }
}

/// One cache record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordUsage {
    pub key: Digest,
    /// Bytes of the layer the step itself added (0: none).
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub last_used: u64,
    /// The step's layer is also a tagged image's: pruning the record does
    /// not free it.
    pub shared: bool,
    /// All the record's blobs are present (a record missing some is
    /// useless and removed by any prune).
    pub complete: bool,
}

/// One unpacked layer under `snapshots/layers/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotUsage {
    pub diff_id: Digest,
    pub size: u64,
    /// Unix seconds: when it was unpacked or a record built on it was last
    /// used, whichever is later.
    pub last_used: u64,
}

/// One `RUN --mount=type=cache` directory (all its instances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheMountUsage {
    /// The directory's name under `cache-mounts/` (sha256 of the mount id).
    pub id: String,
    pub size: u64,
    /// Unix seconds: the newest write in it (or read, where the filesystem
    /// records file access times).
    pub last_used: u64,
}

/// Totals by category. Blobs are counted once: `cache_records`,
/// `orphan_blobs` and image blobs (`images`, which include `shared`) make
/// up `blobs/sha256/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// `count` records; `size` of the blobs only records reference.
    pub cache_records: Category,
    /// Blobs both records and tagged images reference (not reclaimable).
    pub shared: Category,
    /// Blobs nothing references.
    pub orphan_blobs: Category,
    pub snapshots: Category,
    pub cache_mounts: Category,
    pub lock_files: u64,
    /// `count` image names; `size` of the blobs they reference (never
    /// collected; not build cache).
    pub images: Category,
    /// What garbage collection can free: `cache_records`, `orphan_blobs`,
    /// `snapshots` and `cache_mounts`. The policy's `max-used-space` and
    /// prune's `--keep-storage` limit this.
    pub reclaimable: u64,
    /// `reclaimable` and `shared`: all the build cache uses.
    pub total: u64,
}

/// What the build cache uses ([`usage`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// In eviction order: least recently used first.
    pub records: Vec<RecordUsage>,
    pub snapshots: Vec<SnapshotUsage>,
    pub cache_mounts: Vec<CacheMountUsage>,
    pub totals: Totals,
    /// Things that could not be read (e.g. an image whose manifest is
    /// missing); while there are such images, no blob is deleted.
    pub warnings: Vec<String>,
}

/// What [`prune`] removes, as `docker builder prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// Also every cache record and cache mount (without it: orphan blobs,
    /// snapshots, lock files and records whose blobs are gone).
    pub all: bool,
    /// Remove least recently used things (records, snapshots, cache
    /// mounts, orphan blobs first) until the build cache uses at most
    /// this many bytes. Everything is a candidate then, with `all` or not;
    /// snapshots are not removed outright.
    pub keep_storage: Option<u64>,
    /// Only what has not been used for this long.
    pub until: Option<Duration>,
}

/// The automatic garbage collection applied after builds (the `[gc]`
/// table of the configuration file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// A hard cap on the build cache's reclaimable bytes.
    pub max_used_space: Option<u64>,
    /// Remove what has not been used for longer.
    pub keep_duration: Option<Duration>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.max_used_space.is_none() && self.keep_duration.is_none()
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub records: Vec<RecordUsage>,
    /// Record and orphan blobs deleted.
    pub blobs: Category,
    pub snapshots: Vec<SnapshotUsage>,
    pub cache_mounts: Vec<CacheMountUsage>,
    pub lock_files: u64,
    /// What could not be removed, and why.
    pub warnings: Vec<String>,
}

impl Pruned {
    /// Bytes freed.
    pub fn total(&self) -> u64 {
        self.blobs.size
            + self.snapshots.iter().map(|s| s.size).sum::<u64>()
            + self.cache_mounts.iter().map(|m| m.size).sum::<u64>()
    }
}

// ---------------------------------------------------------------------
// Locking

/// A running build's hold on the root: garbage collection waits (prune)
/// or skips (the policy) while any build holds one. Released on drop.
#[derive(Debug)]
pub struct BuildGuard {
    _file: File,
}

impl BuildGuard {
    /// Ends the build's hold and applies `policy` (see [`apply_policy`]):
    /// what a build does last.
    pub fn finish(self, root: &Root, policy: &Policy) -> Result<Option<Pruned>, GcError> {
        drop(self);
        apply_policy(root, policy)
    }
}

fn open_gc_lock(root: &Root) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.path().join(GC_LOCK))
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Takes a shared lock on `ROOT/gc.lock` for a build's duration (waiting
/// while a prune runs). Hold it until the build's results are recorded
/// and its image named, and drop it before [`apply_policy`].
pub fn build_guard(root: &Root) -> io::Result<BuildGuard> {
    let file = open_gc_lock(root)?;
    retry(|| file.lock_shared())?;
    Ok(BuildGuard { _file: file })
}

/// Whether builds (or a prune) hold the GC lock right now, so that a
/// [`prune`] would wait.
pub fn is_busy(root: &Root) -> io::Result<bool> {
    let file = open_gc_lock(root)?;
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

fn lock_exclusive(root: &Root, wait: bool) -> Result<Option<File>, GcError> {
    let path = root.path().join(GC_LOCK);
    let file = open_gc_lock(root).map_err(io_err(&path))?;
    if wait {
        retry(|| file.lock()).map_err(io_err(&path))?;
        return Ok(Some(file));
    }
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(GcError::Io { path, source: e }),
    }
}

// ---------------------------------------------------------------------
// Entry points

/// What the build cache and images use. Reads only (besides remembering
/// snapshot sizes); takes no lock, so it may run beside builds.
pub fn usage(root: &Root) -> Result<Usage, GcError> {
    let scan = Scan::read(root)?;
    Ok(scan.usage())
}

/// Removes build cache as `opts` says, waiting for running builds to end
/// first (new builds wait for the prune).
pub fn prune(root: &Root, opts: &PruneOptions) -> Result<Pruned, GcError> {
    let _lock = lock_exclusive(root, true)?;
    let now = unix_now();
    let cutoff = opts.until.map(|d| now.saturating_sub(d.as_secs()));
    let rules = match opts.keep_storage {
        Some(limit) => Rules {
            limit: Some(limit),
            limit_older_than: cutoff,
            auxiliary_before: cutoff,
            ..Rules::default()
        },
        None => Rules {
            outright: if opts.all {
                Kinds::ALL
            } else {
                Kinds {
                    orphans: true,
                    snapshots: true,
                    ..Kinds::NONE
                }
            },
            older_than: cutoff,
            auxiliary_before: if opts.all {
                Some(cutoff.unwrap_or(now + 1))
            } else {
                cutoff
            },
            ..Rules::default()
        },
    };
    collect(root, &rules)
}

/// Applies the automatic policy, unless a build is running (then `None`:
/// the last build to finish applies it). The caller must not hold a
/// [`BuildGuard`] itself (see [`BuildGuard::finish`]), and calls it once
/// the build's image is named: until then its manifest and config are
/// blobs nothing references, the first thing a cap evicts. An empty
/// policy removes nothing.
pub fn apply_policy(root: &Root, policy: &Policy) -> Result<Option<Pruned>, GcError> {
    if policy.is_empty() {
        return Ok(Some(Pruned::default()));
    }
    let Some(_lock) = lock_exclusive(root, false)? else {
        return Ok(None);
    };
    let now = unix_now();
    let cutoff = policy
        .keep_duration
        .map(|d| now.saturating_sub(d.as_secs()));
    let rules = Rules {
        outright: if cutoff.is_some() {
            Kinds::ALL
        } else {
            Kinds::NONE
        },
        older_than: cutoff,
        limit: policy.max_used_space,
        limit_older_than: None,
        auxiliary_before: cutoff,
    };
    collect(root, &rules).map(Some)
}

// ---------------------------------------------------------------------
// Reading the root

struct BlobFile {
    size: u64,
    /// Unix seconds; when it was written.
    mtime: u64,
}

struct Snapshot {
    diff_id: Digest,
    size: u64,
    last_used: u64,
}

struct CacheMount {
    id: String,
    size: u64,
    last_used: u64,
}

/// Everything garbage collection looks at, read once.
struct Scan {
    entries: Vec<CacheEntry>,
    /// Blobs in the content store.
    blobs: HashMap<Digest, BlobFile>,
    /// Blobs tagged images reference (present or not).
    image_blobs: HashSet<Digest>,
    image_names: u64,
    /// Every image's manifest could be read: only then may blobs go.
    images_complete: bool,
    snapshots: Vec<Snapshot>,
    mounts: Vec<CacheMount>,
    locks: Vec<PathBuf>,
    warnings: Vec<String>,
}

impl Scan {
    fn read(root: &Root) -> Result<Scan, GcError> {
        // Records before images before blobs: a blob committed after the
        // listing is not in it, so it cannot be taken for an orphan.
        let meta = root.metadata()?;
        let entries = meta.entries()?;
        let mut warnings = Vec::new();
        let (image_blobs, image_names, images_complete) = image_blobs(root, &mut warnings)?;
        let mut blobs = HashMap::new();
        let blob_dir = root.path().join("blobs").join("sha256");
        for digest in root.content.list().map_err(io_err(&blob_dir))? {
            match fs::symlink_metadata(root.content.path(&digest)) {
                Ok(md) if md.is_file() => {
                    blobs.insert(
                        digest,
                        BlobFile {
                            size: md.len(),
                            mtime: md.mtime().max(0) as u64,
                        },
                    );
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&root.content.path(&digest))(e)),
            }
        }

        // A snapshot is used by RUN steps on top of it: as recently as
        // the newest record built on it, or its unpacking.
        let mut diff_used: HashMap<Digest, u64> = HashMap::new();
        for e in &entries {
            for l in &e.record.layers {
                let t = diff_used.entry(l.diff_id).or_default();
                *t = (*t).max(e.last_used);
            }
        }
        let snapshots = read_snapshots(root, &diff_used)?;
        let mounts = read_cache_mounts(root)?;
        let mut locks = Vec::new();
        for dir in [
            root.path().join("locks"),
            root.path().join("snapshots").join("locks"),
        ] {
            for (_, path) in list_dir(&dir)? {
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                    locks.push(path);
                }
            }
        }
        Ok(Scan {
            entries,
            blobs,
            image_blobs,
            image_names,
            images_complete,
            snapshots,
            mounts,
            locks,
            warnings,
        })
    }

    /// How many records reference each blob (each record once).
    fn record_refs(&self) -> HashMap<Digest, u32> {
        let mut refs: HashMap<Digest, u32> = HashMap::new();
        for e in &self.entries {
            for d in record_blobs(e) {
                *refs.entry(d).or_default() += 1;
            }
        }
        refs
    }

    fn complete(&self, e: &CacheEntry) -> bool {
        e.record
            .layers
            .iter()
            .all(|l| self.blobs.contains_key(&l.descriptor.digest))
    }

    fn record_usage(&self, e: &CacheEntry) -> RecordUsage {
        let own = (e.record.size > 0)
            .then(|| e.record.layers.last())
            .flatten()
            .map(|l| l.descriptor.digest);
        RecordUsage {
            key: e.key,
            size: e.record.size,
            created: e.created,
            last_used: e.last_used,
            shared: own.is_some_and(|d| self.image_blobs.contains(&d)),
            complete: self.complete(e),
        }
    }

    fn usage(&self) -> Usage {
        let refs = self.record_refs();
        let mut t = Totals {
            cache_records: Category {
                count: self.entries.len() as u64,
                size: 0,
            },
            images: Category {
                count: self.image_names,
                size: 0,
            },
            lock_files: self.locks.len() as u64,
            ..Totals::default()
        };
        for (digest, blob) in &self.blobs {
            let by_records = refs.contains_key(digest);
            if self.image_blobs.contains(digest) {
                t.images.size += blob.size;
                if by_records {
                    t.shared.add(blob.size);
                }
            } else if by_records {
                t.cache_records.size += blob.size;
            } else {
                t.orphan_blobs.add(blob.size);
            }
        }
        for s in &self.snapshots {
            t.snapshots.add(s.size);
        }
        for m in &self.mounts {
            t.cache_mounts.add(m.size);
        }
        t.reclaimable =
            t.cache_records.size + t.orphan_blobs.size + t.snapshots.size + t.cache_mounts.size;
        t.total = t.reclaimable + t.shared.size;
        Usage {
            records: self.entries.iter().map(|e| self.record_usage(e)).collect(),
            snapshots: self
                .snapshots
                .iter()
                .map(|s| SnapshotUsage {
                    diff_id: s.diff_id,
                    size: s.size,
                    last_used: s.last_used,
                })
                .collect(),
            cache_mounts: self
                .mounts
                .iter()
                .map(|m| CacheMountUsage {
                    id: m.id.clone(),
                    size: m.size,
                    last_used: m.last_used,
                })
                .collect(),
            totals: t,
            warnings: self.warnings.clone(),
        }
    }
}

/// The distinct blobs of a record.
fn record_blobs(e: &CacheEntry) -> HashSet<Digest> {
    e.record
        .layers
        .iter()
        .map(|l| l.descriptor.digest)
        .collect()
}

/// The blobs every tagged image references, the number of names, and
/// whether every image could be read.
fn image_blobs(
    root: &Root,
    warnings: &mut Vec<String>,
) -> Result<(HashSet<Digest>, u64, bool), GcError> {
    let images = root.images.list()?;
    let mut blobs = HashSet::new();
    let mut complete = true;
    let mut done = HashSet::new();
    for image in &images {
        if !done.insert(image.manifest.digest) {
            continue;
        }
        blobs.insert(image.config);
        if let Err(e) = mark(&root.content, &image.manifest, &mut blobs, 0) {
            complete = false;
            warnings.push(format!(
                "image {}: {e}; no blob is deleted until it is readable or removed (rbuild rmi)",
                image.name.familiar()
            ));
        }
    }
    Ok((blobs, images.len() as u64, complete))
}

/// Adds a manifest's or index's blobs (and theirs) to `out`.
fn mark(
    store: &dyn BlobStore,
    desc: &Descriptor,
    out: &mut HashSet<Digest>,
    depth: usize,
) -> Result<(), String> {
    out.insert(desc.digest);
    let bytes = store
        .read_all(&desc.digest)
        .map_err(|e| format!("reading {} {}: {e}", kind_of(desc), desc.digest))?;
    let bad = |e: serde_json::Error| format!("{} {} is invalid: {e}", kind_of(desc), desc.digest);
    let is_index = media_type::is_index(&desc.media_type)
        || (!media_type::is_manifest(&desc.media_type)
            && serde_json::from_slice::<Index>(&bytes).is_ok());
    if is_index {
        if depth > 4 {
            return Err(format!("index {} nests too deeply", desc.digest));
        }
        let index: Index = serde_json::from_slice(&bytes).map_err(bad)?;
        for child in &index.manifests {
            mark(store, child, out, depth + 1)?;
        }
    } else {
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(bad)?;
        out.insert(manifest.config.digest);
        out.extend(manifest.layers.iter().map(|l| l.digest));
    }
    Ok(())
}

fn kind_of(desc: &Descriptor) -> &'static str {
    if media_type::is_index(&desc.media_type) {
        "index"
    } else {
        "manifest"
    }
}

/// The entries of a directory (none if it does not exist), sorted.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, GcError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_snapshots(root: &Root, diff_used: &HashMap<Digest, u64>) -> Result<Vec<Snapshot>, GcError> {
    let layers = root.path().join("snapshots").join("layers");
    let dirs = list_dir(&layers)?;
    let cache = SizeCache::open(root)?;
    let known = cache.all()?;
    let mut fresh = Vec::new();
    let mut out = Vec::new();
    for (name, path) in dirs {
        let Ok(diff_id) = Digest::from_hex(&name) else {
            continue;
        };
        let md = match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => md,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let stamp = Stamp::of(&md);
        let size = match known.get(&name) {
            Some((s, size)) if *s == stamp => *size,
            _ => {
                let size = walk(&path, false).map_err(io_err(&path))?.size;
                fresh.push((name.clone(), stamp, size));
                size
            }
        };
        // The rename into place set the change time: when it was unpacked.
        let unpacked = md.ctime().max(0) as u64;
        out.push(Snapshot {
            diff_id,
            size,
            last_used: unpacked.max(diff_used.get(&diff_id).copied().unwrap_or(0)),
        });
    }
    let present: HashSet<String> = out.iter().map(|s| s.diff_id.hex()).collect();
    let gone: Vec<String> = known.into_keys().filter(|k| !present.contains(k)).collect();
    cache.update(&fresh, &gone)?;
    Ok(out)
}

fn read_cache_mounts(root: &Root) -> Result<Vec<CacheMount>, GcError> {
    let dir = root.path().join("cache-mounts");
    let mut out = Vec::new();
    for (name, path) in list_dir(&dir)? {
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let w = match walk(&path, true) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        out.push(CacheMount {
            id: name,
            size: w.size,
            last_used: w.newest,
        });
    }
    Ok(out)
}

/// Which unpacking of a snapshot directory a remembered size is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(md: &fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        }
    }
}

/// Remembered snapshot sizes, in this module's own table of
/// `metadata.db`.
struct SizeCache {
    path: PathBuf,
    conn: Connection,
}

impl SizeCache {
    fn open(root: &Root) -> Result<SizeCache, GcError> {
        let path = root.path().join("metadata.db");
        let err = |source| GcError::Db {
            path: path.clone(),
            source,
        };
        // The metadata database is set up (WAL, its tables) first, under
        // its setup lock; after that, adding this table waits like any
        // other writer.
        root.metadata()?;
        let conn = crate::metadata::connect(&path).map_err(err)?;
        conn.execute_batch(SIZE_SCHEMA).map_err(err)?;
        Ok(SizeCache { path, conn })
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> GcError + use<> {
        let path = self.path.clone();
        move |source| GcError::Db { path, source }
    }

    fn all(&self) -> Result<HashMap<String, (Stamp, u64)>, GcError> {
        let rows: Vec<(String, i64, i64, i64, i64)> = self
            .conn
            .prepare("SELECT layer, dev, ino, ctime_ns, size FROM gc_snapshot_sizes")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect()
            })
            .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|(layer, dev, ino, ctime_ns, size)| {
                let stamp = Stamp {
                    dev: dev as u64,
                    ino: ino as u64,
                    ctime_ns,
                };
                (layer, (stamp, size.max(0) as u64))
            })
            .collect())
    }

    /// Remembers new sizes and forgets removed snapshots (one transaction).
    fn update(mut self, fresh: &[(String, Stamp, u64)], gone: &[String]) -> Result<(), GcError> {
        if fresh.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let err = self.err();
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => return Err(err(e)),
        };
        let result = (|| {
            {
                let mut put = tx.prepare(
                    "INSERT OR REPLACE INTO gc_snapshot_sizes (layer, dev, ino, ctime_ns, size)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (layer, s, size) in fresh {
                    put.execute(params![
                        layer,
                        s.dev as i64,
                        s.ino as i64,
                        s.ctime_ns,
                        *size as i64
                    ])?;
                }
                let mut del = tx.prepare("DELETE FROM gc_snapshot_sizes WHERE layer = ?1")?;
                for layer in gone {
                    del.execute([layer])?;
                }
            }
            tx.commit()
        })();
        result.map_err(err)
    }

    #[cfg(test)]
    fn get(&self, layer: &str) -> Option<u64> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT size FROM gc_snapshot_sizes WHERE layer = ?1",
                [layer],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .ok()
            .flatten()
            .map(|s| s as u64)
    }
}

#[derive(Debug, Default)]
struct Walk {
    /// Bytes allocated, as `du` counts them.
    size: u64,
    /// Unix seconds: newest modification (and, for files, access) time.
    newest: u64,
}

/// Walks a directory tree without following symlinks. Entries that
/// vanish or cannot be read below the top are skipped.
fn walk(dir: &Path, times: bool) -> io::Result<Walk> {
    let mut w = Walk::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut count = |md: &fs::Metadata, w: &mut Walk| {
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            return;
        }
        w.size += md.blocks() * 512;
        if times {
            let mut t = md.mtime();
            if !md.is_dir() {
                t = t.max(md.atime());
            }
            w.newest = w.newest.max(t.max(0) as u64);
        }
    };
    let top = fs::symlink_metadata(dir)?;
    count(&top, &mut w);
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for entry in entries.flatten() {
            let Ok(md) = entry.metadata() else {
                continue;
            };
            count(&md, &mut w);
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(w)
}

// ---------------------------------------------------------------------
// Choosing what goes

/// Kinds of build cache.
#[derive(Debug, Clone, Copy, Default)]
struct Kinds {
    records: bool,
    orphans: bool,
    snapshots: bool,
    mounts: bool,
}

impl Kinds {
    const NONE: Kinds = Kinds {
        records: false,
        orphans: false,
        snapshots: false,
        mounts: false,
    };
    const ALL: Kinds = Kinds {
        records: true,
        orphans: true,
        snapshots: true,
        mounts: true,
    };
}

/// What one collection removes. Records whose blobs are gone and lock
/// files always go.
#[derive(Debug, Clone, Default)]
struct Rules {
    /// Kinds removed entirely (those older than `older_than`, if set).
    outright: Kinds,
    older_than: Option<u64>,
    /// Then least recently used first (of those older than
    /// `limit_older_than`) until at most this many reclaimable bytes.
    limit: Option<u64>,
    limit_older_than: Option<u64>,
    /// Forget auxiliary metadata (source checksums) unused since then.
    auxiliary_before: Option<u64>,
}

/// One thing that can be evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Item {
    Record(usize),
    Orphan(Digest),
    Snapshot(usize),
    Mount(usize),
}

/// The chosen removals.
#[derive(Debug, Default)]
struct Selection {
    records: Vec<usize>,
    blobs: Vec<Digest>,
    snapshots: Vec<usize>,
    mounts: Vec<usize>,
}

/// Plays removals forward, keeping the reclaimable total current.
struct Sim<'a> {
    scan: &'a Scan,
    refs: HashMap<Digest, u32>,
    reclaimable: u64,
    removed: HashSet<Item>,
    sel: Selection,
}

impl<'a> Sim<'a> {
    fn new(scan: &'a Scan) -> Sim<'a> {
        let reclaimable = scan.usage().totals.reclaimable;
        Sim {
            scan,
            refs: scan.record_refs(),
            reclaimable,
            removed: HashSet::new(),
            sel: Selection::default(),
        }
    }

    fn is_orphan(&self, d: &Digest) -> bool {
        !self.scan.image_blobs.contains(d) && !self.refs.contains_key(d)
    }

    fn remove(&mut self, item: Item) {
        if !self.removed.insert(item) {
            return;
        }
        match item {
            Item::Record(i) => {
                self.sel.records.push(i);
                for d in record_blobs(&self.scan.entries[i]) {
                    let Some(n) = self.refs.get_mut(&d) else {
                        continue;
                    };
                    *n -= 1;
                    if *n > 0 {
                        continue;
                    }
                    self.refs.remove(&d);
                    if self.scan.image_blobs.contains(&d) {
                        continue;
                    }
                    if let Some(blob) = self.scan.blobs.get(&d) {
                        // Now an orphan; it goes with the record.
                        self.removed.insert(Item::Orphan(d));
                        if self.scan.images_complete {
                            self.reclaimable = self.reclaimable.saturating_sub(blob.size);
                            self.sel.blobs.push(d);
                        }
                    }
                }
            }
            Item::Orphan(d) => {
                if self.scan.images_complete
                    && let Some(blob) = self.scan.blobs.get(&d)
                {
                    self.reclaimable = self.reclaimable.saturating_sub(blob.size);
                    self.sel.blobs.push(d);
                }
            }
            Item::Snapshot(i) => {
                self.reclaimable = self.reclaimable.saturating_sub(self.scan.snapshots[i].size);
                self.sel.snapshots.push(i);
            }
            Item::Mount(i) => {
                self.reclaimable = self.reclaimable.saturating_sub(self.scan.mounts[i].size);
                self.sel.mounts.push(i);
            }
        }
    }

    /// The items of `kinds` not removed yet, with their last use.
    fn items(&self, kinds: Kinds) -> Vec<(Item, u64)> {
        let s = self.scan;
        let mut out = Vec::new();
        if kinds.orphans {
            for (d, blob) in &s.blobs {
                if self.is_orphan(d) {
                    out.push((Item::Orphan(*d), blob.mtime));
                }
            }
        }
        if kinds.records {
            out.extend(
                s.entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (Item::Record(i), e.last_used)),
            );
        }
        if kinds.snapshots {
            out.extend(
                s.snapshots
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (Item::Snapshot(i), x.last_used)),
            );
        }
        if kinds.mounts {
            out.extend(
                s.mounts
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (Item::Mount(i), m.last_used)),
            );
        }
        out.retain(|(item, _)| !self.removed.contains(item));
        out
    }

    /// Whether removing a record can never free anything: all its blobs
    /// belong to images (or are gone).
    fn costs_nothing(&self, i: usize) -> bool {
        record_blobs(&self.scan.entries[i])
            .iter()
            .all(|d| self.scan.image_blobs.contains(d) || !self.scan.blobs.contains_key(d))
    }
}

fn select(scan: &Scan, rules: &Rules) -> Selection {
    let mut sim = Sim::new(scan);
    for (i, e) in scan.entries.iter().enumerate() {
        if !scan.complete(e) {
            sim.remove(Item::Record(i));
        }
    }
    let older = |t: u64, cutoff: Option<u64>| cutoff.is_none_or(|c| t < c);
    // Records first, so the blobs only they kept count as theirs.
    for kinds in [
        Kinds {
            records: rules.outright.records,
            ..Kinds::NONE
        },
        Kinds {
            records: false,
            ..rules.outright
        },
    ] {
        for (item, used) in sim.items(kinds) {
            if older(used, rules.older_than) {
                sim.remove(item);
            }
        }
    }
    if let Some(limit) = rules.limit {
        let mut items = sim.items(Kinds::ALL);
        items.retain(|(_, used)| older(*used, rules.limit_older_than));
        // Orphans first (nothing can use them), then least recently used;
        // at the same time the cheapest to re-create first (snapshots,
        // then cache mounts, then records, the deepest record of a chain
        // first so the ones below it stay usable).
        let order = |(item, used): &(Item, u64)| match item {
            Item::Orphan(_) => (0, *used, 0, std::cmp::Reverse(0)),
            Item::Snapshot(_) => (1, *used, 0, std::cmp::Reverse(0)),
            Item::Mount(_) => (1, *used, 1, std::cmp::Reverse(0)),
            Item::Record(i) => (
                1,
                *used,
                2,
                std::cmp::Reverse(scan.entries[*i].record.layers.len()),
            ),
        };
        items.sort_by_key(order);
        for (item, _) in items {
            if sim.reclaimable <= limit {
                break;
            }
            if let Item::Record(i) = item
                && sim.costs_nothing(i)
            {
                continue;
            }
            sim.remove(item);
        }
    }
    sim.sel
}

// ---------------------------------------------------------------------
// Removing

/// Reads the root, chooses by `rules` and removes (under the caller's
/// exclusive lock).
fn collect(root: &Root, rules: &Rules) -> Result<Pruned, GcError> {
    // What crashed unpackers or earlier prunes left in the layer store's
    // scratch area (removed when their lock is free).
    if root.path().join("snapshots").is_dir() {
        let _ = rbuild_exec::snapshot::Snapshots::open(&root.path().join("snapshots"));
    }
    let scan = Scan::read(root)?;
    let sel = select(&scan, rules);
    let mut pruned = Pruned {
        warnings: scan.warnings.clone(),
        ..Pruned::default()
    };

    // 1. Records, in one transaction, before anything they name.
    if !sel.records.is_empty() {
        let keys: Vec<Digest> = sel.records.iter().map(|&i| scan.entries[i].key).collect();
        root.metadata()?.remove(&keys)?;
        pruned.records = sel
            .records
            .iter()
            .map(|&i| scan.record_usage(&scan.entries[i]))
            .collect();
    }

    // 2. Blobs nothing references now. Images are read again: one named
    // since the scan (a load beside us) keeps its blobs.
    if !sel.blobs.is_empty() {
        let mut again = Vec::new();
        let (now_referenced, _, complete) = image_blobs(root, &mut again)?;
        if complete {
            let mut deleted = Vec::new();
            for d in &sel.blobs {
                if now_referenced.contains(d) {
                    continue;
                }
                match root.content.delete(d) {
                    Ok(()) => {
                        pruned.blobs.add(scan.blobs[d].size);
                        deleted.push(*d);
                    }
                    Err(e) => pruned.warnings.push(format!("blob {d}: {e}")),
                }
            }
            root.metadata()?.forget_blobs(&deleted)?;
        } else {
            pruned.warnings.extend(again);
        }
    }

    // 3. Snapshots.
    if !sel.snapshots.is_empty() {
        let snapshots = root.path().join("snapshots");
        match TrashDir::new(&snapshots.join("tmp")) {
            Ok(trash) => {
                for &i in &sel.snapshots {
                    let s = &scan.snapshots[i];
                    let hex = s.diff_id.hex();
                    match trash.take(&snapshots.join("layers").join(&hex), &hex) {
                        Ok(()) => pruned.snapshots.push(SnapshotUsage {
                            diff_id: s.diff_id,
                            size: s.size,
                            last_used: s.last_used,
                        }),
                        Err(e) => pruned.warnings.push(format!("snapshot {}: {e}", s.diff_id)),
                    }
                }
            }
            Err(e) => pruned.warnings.push(format!("snapshots: {e}")),
        }
        // Sizes of removed snapshots are forgotten by the next scan.
    }

    // 4. Cache mounts.
    for &i in &sel.mounts {
        let m = &scan.mounts[i];
        let path = root.path().join("cache-mounts").join(&m.id);
        match root
            .tmp_dir()
            .and_then(|scratch| remove_cache_mount(&path, &scratch))
        {
            Ok(true) => pruned.cache_mounts.push(CacheMountUsage {
                id: m.id.clone(),
                size: m.size,
                last_used: m.last_used,
            }),
            Ok(false) => pruned
                .warnings
                .push(format!("cache mount {}: in use, kept", m.id)),
            Err(e) => pruned.warnings.push(format!("cache mount {}: {e}", m.id)),
        }
    }
    // Half-created cache directories of dead processes.
    for (_, dir) in list_dir(&root.path().join("cache-mounts"))? {
        if let Ok(entries) = list_dir(&dir) {
            for (name, path) in entries {
                if let Some(pid) = name
                    .strip_prefix("new-")
                    .and_then(|p| p.parse::<u32>().ok())
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = remove_tree(&path);
                }
            }
        }
    }

    // 5. Lock files nobody holds.
    for path in &scan.locks {
        if remove_lock_file(path) {
            pruned.lock_files += 1;
        }
    }

    if let Some(before) = rules.auxiliary_before {
        root.metadata()?.prune_auxiliary(before)?;
    }
    Ok(pruned)
}

/// Deletes a lock file if nobody holds it (under the GC lock nobody
/// should); true if it was deleted.
fn remove_lock_file(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(path) else {
        return false;
    };
    if file.try_lock().is_err() {
        return false;
    }
    // Unlinked while locked: a process that opened it before waits on the
    // old file, which is harmless now that no build runs.
    fs::remove_file(path).is_ok()
}

/// Removes a cache mount directory unless one of its instances is locked
/// (in use); false if it was in use.
fn remove_cache_mount(path: &Path, scratch: &Path) -> io::Result<bool> {
    let mut held = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().ends_with(".lock") {
            continue;
        }
        let file = OpenOptions::new().write(true).open(entry.path())?;
        match file.try_lock() {
            Ok(()) => held.push(file),
            Err(fs::TryLockError::WouldBlock) => return Ok(false),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    // Out of the way in one step, so no build finds half of it.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let trash = scratch.join(format!("gc-cache-{name}"));
    match fs::rename(path, &trash) {
        Ok(()) => remove_tree(&trash)?,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            remove_tree(path)?
        }
        Err(e) => return Err(e),
    }
    drop(held);
    Ok(true)
}

/// A locked work directory in the layer store's `tmp/`, which takes
/// snapshot directories out of `layers/` in one rename before deleting
/// them. If we die, the layer store removes it once its lock is free.
struct TrashDir {
    path: PathBuf,
    _lock: File,
}

impl TrashDir {
    fn new(tmp: &Path) -> io::Result<TrashDir> {
        fs::create_dir_all(tmp)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = tmp.join(format!("{}-gc-{nanos:08x}", std::process::id()));
        fs::DirBuilder::new().create(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
        let lock = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path.join("lock"))?;
        retry(|| lock.lock())?;
        Ok(TrashDir { path, _lock: lock })
    }

    /// Moves `dir` in and deletes it.
    fn take(&self, dir: &Path, name: &str) -> io::Result<()> {
        let inside = self.path.join(name);
        fs::rename(dir, &inside)?;
        remove_tree(&inside)
    }
}

impl Drop for TrashDir {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                if entry.file_name() != "lock" {
                    let _ = remove_tree(&entry.path());
                }
            }
        }
        let _ = fs::remove_file(self.path.join("lock"));
        let _ = fs::remove_dir(&self.path);
    }
}

/// Removes a tree, making directories writable where that is what
/// stopped it (a layer may hold directories of mode 000).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let mut stack = vec![path.to_path_buf()];
            while let Some(d) = stack.pop() {
                if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                    let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
                    if let Ok(entries) = fs::read_dir(&d) {
                        stack.extend(entries.flatten().map(|e| e.path()));
                    }
                }
            }
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------
// Parsing sizes and durations

/// A size as docker and BuildKit take them (go-units' `RAMInBytes`):
/// a number of bytes, or a number with `k`, `m`, `g`, `t` or `p`,
/// optionally followed by `i` and/or `b`, any case. As in docker the units
/// are binary: `10GB` is 10 × 1024³ bytes, like `10GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size {text:?} (expected bytes, or a size such as 512MB, 10GB or 1.5GiB)")
    };
    let s = text.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let well_formed = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    if !well_formed {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut chars = unit.chars();
    let power = match chars.next() {
        None => 0,
        Some('b') if chars.as_str().is_empty() => 0,
        Some(c) => {
            let p = match c {
                'k' => 1,
                'm' => 2,
                'g' => 3,
                't' => 4,
                'p' => 5,
                _ => return Err(bad()),
            };
            let rest = chars.as_str();
            if !matches!(rest, "" | "b" | "i" | "ib") {
                return Err(bad());
            }
            p
        }
    };
    let bytes = value * 1024f64.powi(power);
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A duration as Go writes them (`30m`, `48h`, `1h30m`, `1.5h`, units
/// `ns`, `us`, `ms`, `s`, `m`, `h`), plus `d` for days (`7d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        |why: &str| format!("invalid duration {text:?}: {why} (expected e.g. 30m, 48h or 7d)");
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = s;
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad("expected a number"));
        }
        let value: f64 = number.parse().map_err(|_| bad("expected a number"))?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        seconds += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageRecord;
    use crate::metadata::{CacheRecord, CachedLayer};
    use rbuild_oci::Reference;

    struct T {
        _dir: tempfile::TempDir,
        root: Root,
    }

    fn root() -> T {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(&dir.path().join("root")).unwrap();
        T { _dir: dir, root }
    }

    fn blob(t: &T, content: &[u8]) -> Descriptor {
        let d = t.root.content.write_bytes(content).unwrap();
        Descriptor::new(media_type::OCI_LAYER, d, content.len() as u64)
    }

    fn layer(desc: &Descriptor) -> CachedLayer {
        CachedLayer {
            descriptor: desc.clone(),
            diff_id: desc.digest,
            created: None,
        }
    }

    fn key(n: u8) -> Digest {
        Digest::of(&[b'k', n])
    }

    /// A record of `layers`, the last one being the step's, used at `used`.
    fn record(t: &T, n: u8, layers: &[&Descriptor], used: u64) -> Digest {
        let k = key(n);
        let size = layers.last().map_or(0, |l| l.size);
        let meta = t.root.metadata().unwrap();
        meta.put(
            &k,
            &CacheRecord {
                layers: layers.iter().map(|l| layer(l)).collect(),
                size,
            },
        )
        .unwrap();
        set_used(t, &k, used);
        k
    }

    fn set_used(t: &T, k: &Digest, used: u64) {
        let conn = Connection::open(t.root.path().join("metadata.db")).unwrap();
        conn.execute(
            "UPDATE cache SET last_used = ?1 WHERE key = ?2",
            params![used as i64, k.to_string()],
        )
        .unwrap();
    }

    /// Tags an image of `layers`; returns its manifest and config blobs.
    fn image(t: &T, name: &str, layers: &[&Descriptor]) -> (Digest, Digest) {
        let config = t
            .root
            .content
            .write_bytes(format!("{{\"name\":\"{name}\"}}").as_bytes())
            .unwrap();
        let manifest = Manifest::new(
            Descriptor::new(media_type::OCI_CONFIG, config, 10),
            layers.iter().map(|l| (*l).clone()).collect(),
        );
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let m = t.root.content.write_bytes(&bytes).unwrap();
        t.root
            .images
            .put(ImageRecord {
                name: Reference::parse(name).unwrap(),
                manifest: Descriptor::new(media_type::OCI_MANIFEST, m, bytes.len() as u64),
                config,
                created: None,
                size: 0,
            })
            .unwrap();
        (m, config)
    }

    fn snapshot(t: &T, diff_id: &Digest, bytes: usize) -> PathBuf {
        let dir = t.root.path().join("snapshots/layers").join(diff_id.hex());
        // Unpacked in this boot, as the layer store records it (layers of
        // another boot are dropped when it opens).
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        fs::create_dir_all(t.root.path().join("snapshots")).unwrap();
        fs::write(t.root.path().join("snapshots/boot_id"), boot.trim()).unwrap();
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/file"), vec![1u8; bytes]).unwrap();
        dir
    }

    fn cache_mount(t: &T, id: &str, bytes: usize) -> PathBuf {
        let base = t.root.path().join("cache-mounts").join(id);
        fs::create_dir_all(base.join("0")).unwrap();
        fs::write(base.join("0.lock"), b"").unwrap();
        fs::write(base.join("0/data"), vec![2u8; bytes]).unwrap();
        base
    }

    fn du(path: &Path) -> u64 {
        walk(path, false).unwrap().size
    }

    fn present(t: &T, d: &Digest) -> bool {
        t.root.content.contains(d)
    }

    fn keys(t: &T) -> Vec<Digest> {
        let mut k: Vec<Digest> = t
            .root
            .metadata()
            .unwrap()
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        k.sort();
        k
    }

    /// base (an image's layer) ← a ← b, plus an orphan, a snapshot, a
    /// cache mount and lock files.
    struct Fixture {
        t: T,
        base: Descriptor,
        a: Descriptor,
        b: Descriptor,
        orphan: Descriptor,
        manifest: Digest,
        config: Digest,
    }

    fn fixture() -> Fixture {
        let t = root();
        let base = blob(&t, &[0u8; 1000]);
        let a = blob(&t, &[1u8; 2000]);
        let b = blob(&t, &[2u8; 4000]);
        let orphan = blob(&t, &[3u8; 300]);
        let (manifest, config) = image(&t, "base:1", &[&base]);
        record(&t, 1, &[&base, &a], 100);
        record(&t, 2, &[&base, &a, &b], 200);
        snapshot(&t, &base.digest, 5000);
        cache_mount(&t, "m1", 7000);
        fs::create_dir_all(t.root.path().join("locks")).unwrap();
        fs::write(t.root.path().join("locks").join(key(1).hex()), b"").unwrap();
        Fixture {
            t,
            base,
            a,
            b,
            orphan,
            manifest,
            config,
        }
    }

    #[test]
    fn usage_counts_each_blob_once_by_category() {
        let f = fixture();
        let u = usage(&f.t.root).unwrap();
        let t = u.totals;
        assert_eq!(
            t.cache_records,
            Category {
                count: 2,
                size: 6000
            }
        );
        assert_eq!(
            t.shared,
            Category {
                count: 1,
                size: 1000
            }
        );
        assert_eq!(
            t.orphan_blobs,
            Category {
                count: 1,
                size: 300
            }
        );
        let image_size = 1000
            + f.t.root.content.size(&f.manifest).unwrap()
            + f.t.root.content.size(&f.config).unwrap();
        assert_eq!(
            t.images,
            Category {
                count: 1,
                size: image_size
            }
        );
        let snap = du(&f
            .t
            .root
            .path()
            .join("snapshots/layers")
            .join(f.base.digest.hex()));
        assert!(snap >= 5000);
        assert_eq!(
            t.snapshots,
            Category {
                count: 1,
                size: snap
            }
        );
        let mount = du(&f.t.root.path().join("cache-mounts/m1"));
        assert_eq!(
            t.cache_mounts,
            Category {
                count: 1,
                size: mount
            }
        );
        assert_eq!(t.lock_files, 1);
        assert_eq!(t.reclaimable, 6000 + 300 + snap + mount);
        assert_eq!(t.total, t.reclaimable + 1000);
        // Blobs on disk = record-only + orphans + image blobs.
        let on_disk: u64 =
            f.t.root
                .content
                .list()
                .unwrap()
                .iter()
                .map(|d| f.t.root.content.size(d).unwrap())
                .sum();
        assert_eq!(
            on_disk,
            t.cache_records.size + t.orphan_blobs.size + t.images.size
        );

        assert_eq!(u.records.len(), 2);
        assert_eq!(u.records[0].key, key(1), "least recently used first");
        assert_eq!(u.records[0].size, 2000);
        assert!(!u.records[0].shared && u.records[0].complete);
        assert!(
            u.snapshots[0].last_used >= 200,
            "as recent as record 2's use"
        );
        assert!(u.warnings.is_empty());
    }

    #[test]
    fn a_record_whose_layer_is_an_image_layer_is_shared() {
        let t = root();
        let base = blob(&t, b"base layer");
        image(&t, "x:1", &[&base]);
        record(&t, 1, &[&base], 10);
        let u = usage(&t.root).unwrap();
        assert!(u.records[0].shared);
        assert_eq!(u.totals.cache_records.size, 0);
        // Pruning everything keeps it, and it frees nothing.
        let p = prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.blobs, Category::default());
        assert!(present(&t, &base.digest));
    }

    #[test]
    fn default_prune_removes_garbage_only() {
        let f = fixture();
        let t = &f.t;
        // A record whose blob is gone.
        let gone = Descriptor::new(media_type::OCI_LAYER, Digest::of(b"gone"), 4);
        record(t, 3, &[&f.base, &gone], 300);
        let p = prune(&t.root, &PruneOptions::default()).unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.records[0].key, key(3));
        assert!(!p.records[0].complete);
        assert_eq!(
            p.blobs,
            Category {
                count: 1,
                size: 300
            }
        );
        assert_eq!(p.snapshots.len(), 1);
        assert_eq!(p.lock_files, 1);
        assert!(p.cache_mounts.is_empty());
        assert_eq!(keys(t), {
            let mut k = vec![key(1), key(2)];
            k.sort();
            k
        });
        assert!(!present(t, &f.orphan.digest));
        for d in [
            &f.base.digest,
            &f.a.digest,
            &f.b.digest,
            &f.manifest,
            &f.config,
        ] {
            assert!(present(t, d));
        }
        assert!(t.root.path().join("cache-mounts/m1/0/data").exists());
        assert_eq!(
            fs::read_dir(t.root.path().join("snapshots/layers"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            fs::read_dir(t.root.path().join("snapshots/tmp"))
                .unwrap()
                .count(),
            0,
            "the trash directory is gone"
        );
        let u = usage(&t.root).unwrap();
        assert_eq!(u.totals.reclaimable, 6000 + u.totals.cache_mounts.size);
    }

    #[test]
    fn prune_all_keeps_only_images() {
        let f = fixture();
        let t = &f.t;
        let p = prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(
            p.blobs,
            Category {
                count: 3,
                size: 6300
            }
        );
        assert_eq!(p.cache_mounts.len(), 1);
        assert_eq!(
            p.total(),
            6300 + p.snapshots[0].size + p.cache_mounts[0].size
        );
        assert!(keys(t).is_empty());
        let mut left = t.root.content.list().unwrap();
        left.sort();
        let mut want = vec![f.base.digest, f.manifest, f.config];
        want.sort();
        assert_eq!(left, want);
        assert!(!t.root.path().join("cache-mounts/m1").exists());
        let u = usage(&t.root).unwrap();
        assert_eq!(u.totals.reclaimable, 0);
        assert_eq!(u.totals.total, 0);
        // Nothing left to do.
        let again = prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(again, Pruned::default());
    }

    #[test]
    fn keep_storage_evicts_least_recently_used_first() {
        let f = fixture();
        let t = &f.t;
        let before = usage(&t.root).unwrap().totals;
        let (snap, mount) = (before.snapshots.size, before.cache_mounts.size);
        // Room for all but b's 4000 bytes (and the orphan's 300).
        let limit = 6000 - 4000 + snap + mount;
        let p = prune(
            &t.root,
            &PruneOptions {
                keep_storage: Some(limit),
                ..Default::default()
            },
        )
        .unwrap();
        let u = usage(&t.root).unwrap();
        assert!(u.totals.reclaimable <= limit, "{u:?}");
        // The orphan went first, then records by age: record 1 (freeing
        // nothing while record 2 holds a), then record 2 (freeing a and b).
        assert!(!present(t, &f.orphan.digest));
        assert_eq!(p.records.len(), 2);
        assert!(!present(t, &f.a.digest) && !present(t, &f.b.digest));
        // The snapshot and cache mount (used just now) stayed.
        assert!(p.snapshots.is_empty() && p.cache_mounts.is_empty());
        assert!(present(t, &f.base.digest));
    }

    #[test]
    fn keep_storage_keeps_recent_records() {
        let t = root();
        let x = blob(&t, &[1u8; 3000]);
        let y = blob(&t, &[2u8; 3000]);
        let z = blob(&t, &[3u8; 3000]);
        record(&t, 1, &[&x], 100);
        record(&t, 2, &[&y], 300);
        record(&t, 3, &[&z], 200);
        prune(
            &t.root,
            &PruneOptions {
                keep_storage: Some(6000),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(keys(&t), {
            let mut k = vec![key(2), key(3)];
            k.sort();
            k
        });
        prune(
            &t.root,
            &PruneOptions {
                keep_storage: Some(5999),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(keys(&t), vec![key(2)]);
        assert!(present(&t, &y.digest) && !present(&t, &z.digest) && !present(&t, &x.digest));
        // Zero keeps nothing.
        prune(
            &t.root,
            &PruneOptions {
                keep_storage: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(keys(&t).is_empty());
        assert_eq!(usage(&t.root).unwrap().totals.reclaimable, 0);
    }

    #[test]
    fn until_only_removes_what_is_old() {
        let t = root();
        let now = unix_now();
        let old = blob(&t, &[1u8; 100]);
        let new = blob(&t, &[2u8; 100]);
        record(&t, 1, &[&old], now - 3 * 86_400);
        record(&t, 2, &[&new], now - 60);
        let p = prune(
            &t.root,
            &PruneOptions {
                all: true,
                until: Some(Duration::from_secs(86_400)),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(keys(&t), vec![key(2)]);
        assert!(!present(&t, &old.digest) && present(&t, &new.digest));
        // A fresh orphan is younger than a day: kept.
        let orphan = blob(&t, b"fresh orphan");
        prune(
            &t.root,
            &PruneOptions {
                until: Some(Duration::from_secs(86_400)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(present(&t, &orphan.digest));
        prune(&t.root, &PruneOptions::default()).unwrap();
        assert!(!present(&t, &orphan.digest));
    }

    #[test]
    fn policy_caps_usage_and_expires_old_records() {
        let f = fixture();
        let t = &f.t;
        let before = usage(&t.root).unwrap().totals.reclaimable;
        let cap = before / 2;
        let p = apply_policy(
            &t.root,
            &Policy {
                max_used_space: Some(cap),
                keep_duration: None,
            },
        )
        .unwrap()
        .expect("no build runs");
        assert!(p.total() >= before - cap);
        assert!(usage(&t.root).unwrap().totals.reclaimable <= cap);

        // Records not used for a week go with keep-duration.
        let t = root();
        let now = unix_now();
        let x = blob(&t, &[1u8; 100]);
        let y = blob(&t, &[2u8; 100]);
        record(&t, 1, &[&x], now - 8 * 86_400);
        record(&t, 2, &[&y], now);
        apply_policy(
            &t.root,
            &Policy {
                max_used_space: None,
                keep_duration: Some(Duration::from_secs(7 * 86_400)),
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(keys(&t), vec![key(2)]);
        assert!(!present(&t, &x.digest));

        // An empty policy does nothing.
        let p = apply_policy(&t.root, &Policy::default()).unwrap();
        assert_eq!(p, Some(Pruned::default()));
        assert_eq!(keys(&t), vec![key(2)]);
    }

    #[test]
    fn running_builds_make_the_policy_skip_and_prune_wait() {
        let f = fixture();
        let t = &f.t;
        let guard = build_guard(&t.root).unwrap();
        // Another build at once is fine.
        let second = build_guard(&t.root).unwrap();
        assert!(is_busy(&t.root).unwrap());
        let policy = Policy {
            max_used_space: Some(0),
            keep_duration: None,
        };
        assert_eq!(apply_policy(&t.root, &policy).unwrap(), None);
        assert_eq!(keys(t).len(), 2, "nothing removed while a build runs");
        // Finishing while another build runs skips; the last one applies it.
        assert_eq!(second.finish(&t.root, &policy).unwrap(), None);

        let (tx, rx) = std::sync::mpsc::channel();
        let root = t.root.clone();
        let waiter = std::thread::spawn(move || {
            let p = prune(
                &root,
                &PruneOptions {
                    all: true,
                    ..Default::default()
                },
            );
            tx.send(()).unwrap();
            p
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "prune waits for the build"
        );
        drop(guard);
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let p = waiter.join().unwrap().unwrap();
        assert_eq!(p.records.len(), 2);
        assert!(!is_busy(&t.root).unwrap());
        // The policy runs once no other build does.
        let last = build_guard(&t.root).unwrap();
        assert!(last.finish(&t.root, &policy).unwrap().is_some());
    }

    #[test]
    fn unreadable_images_keep_every_blob() {
        let f = fixture();
        let t = &f.t;
        // The image's manifest disappears.
        fs::remove_file(t.root.content.path(&f.manifest)).unwrap();
        let u = usage(&t.root).unwrap();
        assert_eq!(u.warnings.len(), 1, "{:?}", u.warnings);
        assert!(u.warnings[0].contains("base:1"), "{:?}", u.warnings);
        let p = prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        // Records and directories go; blobs stay (the image might need them).
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.blobs, Category::default());
        assert!(!p.warnings.is_empty());
        for d in [
            &f.base.digest,
            &f.a.digest,
            &f.b.digest,
            &f.orphan.digest,
            &f.config,
        ] {
            assert!(present(t, d));
        }
    }

    #[test]
    fn images_behind_an_index_are_kept() {
        let t = root();
        let l = blob(&t, b"layer of a platform image");
        let config = t.root.content.write_bytes(b"{}").unwrap();
        let manifest = Manifest::new(
            Descriptor::new(media_type::OCI_CONFIG, config, 2),
            vec![l.clone()],
        );
        let mbytes = serde_json::to_vec(&manifest).unwrap();
        let m = t.root.content.write_bytes(&mbytes).unwrap();
        let index = Index::new(vec![Descriptor::new(
            media_type::OCI_MANIFEST,
            m,
            mbytes.len() as u64,
        )]);
        let ibytes = serde_json::to_vec(&index).unwrap();
        let i = t.root.content.write_bytes(&ibytes).unwrap();
        t.root
            .images
            .put(ImageRecord {
                name: Reference::parse("multi:1").unwrap(),
                manifest: Descriptor::new(media_type::OCI_INDEX, i, ibytes.len() as u64),
                config,
                created: None,
                size: 0,
            })
            .unwrap();
        let p = prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.blobs, Category::default());
        for d in [&l.digest, &config, &m, &i] {
            assert!(present(&t, d));
        }
    }

    #[test]
    fn rmi_then_prune_frees_the_image() {
        let f = fixture();
        let t = &f.t;
        t.root
            .images
            .remove(&Reference::parse("base:1").unwrap())
            .unwrap();
        prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(t.root.content.list().unwrap().is_empty());
        let u = usage(&t.root).unwrap();
        assert_eq!(u.totals, Totals::default());
    }

    #[test]
    fn snapshot_sizes_are_remembered_per_unpacking() {
        let t = root();
        let d = Digest::of(b"layer");
        let dir = snapshot(&t, &d, 10_000);
        let first = usage(&t.root).unwrap().totals.snapshots.size;
        assert_eq!(first, du(&dir));
        let cache = SizeCache::open(&t.root).unwrap();
        assert_eq!(cache.get(&d.hex()), Some(first));
        // Unpacked layers never change, so the size is not walked again
        // (a file slipped in is not seen)...
        fs::write(dir.join("sub/more"), vec![0u8; 50_000]).unwrap();
        assert_eq!(usage(&t.root).unwrap().totals.snapshots.size, first);
        // ...until the layer is unpacked anew (a new change time).
        std::thread::sleep(Duration::from_millis(50));
        let moved = t.root.path().join("moved");
        fs::rename(&dir, &moved).unwrap();
        fs::rename(&moved, &dir).unwrap();
        let again = usage(&t.root).unwrap().totals.snapshots.size;
        assert_eq!(again, du(&dir));
        assert!(again > first);
        // Removed snapshots are forgotten.
        prune(&t.root, &PruneOptions::default()).unwrap();
        usage(&t.root).unwrap();
        assert_eq!(cache.get(&d.hex()), None);
    }

    #[test]
    fn cache_mounts_in_use_or_being_created_are_handled() {
        let t = root();
        let base = cache_mount(&t, "busy", 100);
        let lock = OpenOptions::new()
            .write(true)
            .open(base.join("0.lock"))
            .unwrap();
        lock.lock_shared().unwrap();
        // A dead process's half-created instance.
        fs::create_dir_all(base.join("new-999999999")).unwrap();
        let p = prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(p.cache_mounts.is_empty());
        assert!(p.warnings.iter().any(|w| w.contains("in use")), "{p:?}");
        assert!(base.join("0/data").exists());
        assert!(!base.join("new-999999999").exists());
        drop(lock);
        let p = prune(
            &t.root,
            &PruneOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.cache_mounts.len(), 1);
        assert!(!base.exists());
        // Nothing is left in the scratch directory either.
        let left: Vec<_> = fs::read_dir(t.root.tmp_path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gc-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn held_lock_files_are_kept() {
        let t = root();
        let locks = t.root.path().join("locks");
        fs::create_dir_all(&locks).unwrap();
        fs::write(locks.join("held"), b"").unwrap();
        fs::write(locks.join("free"), b"").unwrap();
        let held = File::open(locks.join("held")).unwrap();
        held.lock().unwrap();
        let p = prune(&t.root, &PruneOptions::default()).unwrap();
        assert_eq!(p.lock_files, 1);
        assert!(locks.join("held").exists() && !locks.join("free").exists());
    }

    #[test]
    fn an_interrupted_prune_leaves_a_usable_root() {
        // Killed after the records went, before their blobs: the blobs
        // are orphans that the next prune removes.
        let f = fixture();
        let t = &f.t;
        t.root
            .metadata()
            .unwrap()
            .remove(&[key(1), key(2)])
            .unwrap();
        let u = usage(&t.root).unwrap();
        assert_eq!(u.totals.orphan_blobs.count, 3);
        // Killed while deleting a snapshot: it is in a work directory whose
        // lock nobody holds, and the layer store sweeps it.
        let trash = t.root.path().join("snapshots/tmp/1-gc-dead");
        fs::create_dir_all(trash.join("abc/sub")).unwrap();
        fs::write(trash.join("lock"), b"").unwrap();
        prune(&t.root, &PruneOptions::default()).unwrap();
        assert!(!trash.exists());
        let u = usage(&t.root).unwrap();
        assert_eq!(u.totals.orphan_blobs.count, 0);
        assert_eq!(u.totals.reclaimable, u.totals.cache_mounts.size);
    }

    #[test]
    fn sizes_parse_like_docker() {
        for (text, want) in [
            ("0", 0),
            ("512", 512),
            ("512b", 512),
            ("512B", 512),
            ("1k", 1024),
            ("1kb", 1024),
            ("512MB", 512 << 20),
            ("10GB", 10 << 30),
            ("10gb", 10 << 30),
            ("10 GB", 10 << 30),
            ("1.5GiB", 3 << 29),
            ("2T", 2 << 40),
            ("1p", 1 << 50),
            (" 64m ", 64 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in [
            "", "GB", "-1", "1.2.3", "1x", "10 G B", "1.", ".5G", "1bb", "1gx", "1e3",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("invalid size"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_parse_like_go_with_days() {
        for (text, secs) in [
            ("0", 0.0),
            ("30m", 1800.0),
            ("48h", 172_800.0),
            ("7d", 604_800.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("90s", 90.0),
            ("500ms", 0.5),
            ("2d12h", 216_000.0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs_f64(secs)),
                "{text}"
            );
        }
        for bad in ["", "10", "h", "1y", "-1h", "1.2.3h", "5 m"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }
}
