//! Image layers unpacked once each, as overlayfs lower directories, and the
//! directories one overlay mount needs.
//!
//! A RUN step's root filesystem is an overlay whose lower directories are
//! the image's layers, topmost first. Each layer is unpacked here the first
//! time it is needed and kept for later runs, named by its diff ID. Layers
//! are stored in overlayfs' own form: a whiteout `.wh.NAME` becomes a
//! character device 0:0 named `NAME`, and an opaque directory marker
//! `.wh..wh..opq` becomes the `trusted.overlay.opaque="y"` attribute of its
//! directory. Everything else is extracted by [`crate::apply::apply_layer`],
//! with all its guarantees (nothing is written outside the directory).
//!
//! On-disk layout under the snapshots root:
//!
//! ```text
//! layers/<hex>/       a layer (diff ID sha256:<hex>) in overlay form; complete
//!                     once it exists, never modified afterwards
//! locks/<hex>.lock    flock()ed while that layer is unpacked, so concurrent
//!                     unpackers (threads or processes) wait for each other
//! tmp/<id>/           work in progress of a live process, which holds an
//!                     flock() on tmp/<id>/lock; anything else in tmp/ is left
//!                     over from a crash and is removed by `Snapshots::open`
//!     lock
//!     layer/          a layer being unpacked (renamed to layers/<hex>)
//!     upper/ work/ rootfs/   one run's overlay directories
//! ```
//!
//! A layer is unpacked into `tmp/<id>/layer`, checked against its diff ID
//! and only then renamed to `layers/<hex>`, so a crashed or killed process
//! never leaves a partial layer where a later run would use it.
//!
//! Unpacked layers are caches of blobs that are themselves durable, so they
//! are not flushed to disk (a `syncfs` there flushed the whole filesystem,
//! everyone's dirty data, and made a RUN after a large COPY take seconds
//! longer). They are trusted within the boot that unpacked them: `boot_id`
//! records it, and after a restart (when unflushed files may have been
//! lost) every layer is dropped and unpacked again on demand. Where the boot
//! ID cannot be read, layers are flushed as before.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use rbuild_oci::{Digest, Hasher};
use rustix::fs::{AtFlags, CWD, FileType, FlockOperation, Mode, RenameFlags, XattrFlags};
use rustix::io::Errno;

use crate::apply::{ApplyError, apply_layer, resolve_in_root};

/// The xattr that marks an overlayfs directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// A `tmp/` entry without a lock file is only removed when older than this
/// (it may be one a live process is just creating).
const STALE_UNLOCKED_AGE: Duration = Duration::from_secs(3600);

/// Why a layer could not be unpacked or run directories made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A filesystem operation in the snapshots directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The layer blob could not be opened.
    #[error("opening the layer: {0}")]
    Open(#[source] io::Error),
    /// The layer could not be extracted.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The uncompressed layer is not what its diff ID names.
    #[error("the layer's content has diff ID {actual}, expected {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + use<> {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// Layers unpacked for use as overlay lower directories, each once, under
/// a root directory (e.g. `ROOT/snapshots`). Several processes may share
/// one root.
#[derive(Debug, Clone)]
pub struct Snapshots {
    layers: PathBuf,
    locks: PathBuf,
    tmp: PathBuf,
    /// Whether unpacked layers must be flushed (no boot ID to scope them).
    flush: bool,
}

/// The kernel's ID of the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

impl Snapshots {
    /// Opens (creating if needed) the snapshots directory `root`, and
    /// removes what crashed processes left in its `tmp/`.
    pub fn open(root: &Path) -> Result<Snapshots, SnapshotError> {
        let boot = fs::read_to_string(BOOT_ID)
            .map(|b| b.trim().to_string())
            .unwrap_or_default();
        let s = Snapshots {
            layers: root.join("layers"),
            locks: root.join("locks"),
            tmp: root.join("tmp"),
            flush: boot.is_empty(),
        };
        for dir in [root, &s.locks, &s.tmp] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_at("create directory", dir))?;
        }
        if !boot.is_empty() {
            s.scope_to_boot(root, &boot)?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&s.layers)
            .map_err(io_at("create directory", &s.layers))?;
        s.remove_stale();
        Ok(s)
    }

    /// Takes the exclusive lock `locks/NAME`, waiting for its holder; held
    /// until the returned file is closed.
    fn lock(&self, name: &str) -> Result<File, SnapshotError> {
        let path = self.locks.join(name);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at("open lock", &path))?;
        lock_exclusive(&lock).map_err(io_at("lock", &path))?;
        Ok(lock)
    }

    /// Drops the unpacked layers of an earlier boot (they may have lost
    /// unflushed files in a crash) and records this boot as theirs.
    fn scope_to_boot(&self, root: &Path, boot: &str) -> Result<(), SnapshotError> {
        let record = root.join("boot_id");
        if fs::read_to_string(&record).is_ok_and(|r| r.trim() == boot) {
            return Ok(());
        }
        let _lock = self.lock("boot.lock")?;
        // Another process may have done it while we waited.
        if fs::read_to_string(&record).is_ok_and(|r| r.trim() == boot) {
            return Ok(());
        }
        if self.layers.exists() {
            // Out of sight in one rename, then deleted: no process of an
            // earlier boot can be using them.
            let aside = self
                .tmp
                .join(format!("previous-boot-{}", std::process::id()));
            fs::rename(&self.layers, &aside).map_err(io_at("move aside", &self.layers))?;
            remove_work_dir(&aside);
        }
        let tmp_record = root.join(format!("boot_id.tmp-{}", std::process::id()));
        fs::write(&tmp_record, boot).map_err(io_at("write", &tmp_record))?;
        fs::rename(&tmp_record, &record).map_err(io_at("write", &record))?;
        Ok(())
    }

    /// The layer's unpacked directory, if it has been unpacked (it is
    /// never modified once there).
    pub fn unpacked(&self, diff_id: &Digest) -> Option<PathBuf> {
        let dir = self.layers.join(diff_id.hex());
        is_dir(&dir).ok()?.then_some(dir)
    }

    /// The lower directory of a layer, unpacking it on first use.
    ///
    /// `diff_id` names the layer (the sha256 of its uncompressed tar);
    /// `layer` opens the (possibly gzip-compressed) tar and is called only
    /// when the layer has to be unpacked. The content is checked against
    /// `diff_id`. Safe to call concurrently for the same layer from
    /// threads and processes: one unpacks, the others wait and use its
    /// result.
    pub fn lower(
        &self,
        diff_id: &Digest,
        layer: &mut dyn FnMut() -> io::Result<Box<dyn Read>>,
    ) -> Result<PathBuf, SnapshotError> {
        let hex = diff_id.hex();
        let dest = self.layers.join(&hex);
        if is_dir(&dest)? {
            return Ok(dest);
        }
        // One unpacker per layer at a time; the others find it done.
        let _lock = self.lock(&format!("{hex}.lock"))?;
        if is_dir(&dest)? {
            return Ok(dest);
        }

        let work = WorkDir::new(&self.tmp)?;
        let target = work.path().join("layer");
        make_dir(&target, 0o755)?;
        let raw = layer().map_err(SnapshotError::Open)?;
        let actual = unpack(&target, raw)?;
        if actual != *diff_id {
            return Err(SnapshotError::DiffIdMismatch {
                expected: *diff_id,
                actual,
            });
        }
        self.keep(work, &target, &dest)?;
        Ok(dest)
    }

    /// A writer that passes everything to `inner` and unpacks the same
    /// bytes (an uncompressed layer tar being written) on a thread of its
    /// own, so the RUN that comes next finds the layer ready instead of
    /// unpacking it then: writing and unpacking overlap. The layer is kept
    /// under the diff ID its bytes hash to; see [`UnpackingWriter::finish`].
    pub fn unpack_alongside<W: Write>(&self, inner: W) -> UnpackingWriter<W> {
        let (tx, rx) = sync_channel::<Vec<u8>>(8);
        let complete = Arc::new(AtomicBool::new(false));
        let snapshots = self.clone();
        let done = Arc::clone(&complete);
        let thread = std::thread::Builder::new()
            .name("rbuild-unpack".into())
            .spawn(move || snapshots.unpack_new(rx, &done));
        match thread {
            Ok(handle) => UnpackingWriter {
                inner: Some(inner),
                buf: Vec::with_capacity(CHUNK),
                tx: Some(tx),
                thread: Some(handle),
                complete,
            },
            // No thread: just a writer; the RUN unpacks the layer itself.
            Err(_) => UnpackingWriter {
                inner: Some(inner),
                buf: Vec::new(),
                tx: None,
                thread: None,
                complete,
            },
        }
    }

    /// Unpacks what arrives on `rx` as a new layer and keeps it, if the
    /// writer says the stream was complete (a writer that failed halfway
    /// leaves a prefix that must not become a layer).
    fn unpack_new(
        &self,
        rx: Receiver<Vec<u8>>,
        complete: &AtomicBool,
    ) -> Result<Digest, SnapshotError> {
        let work = WorkDir::new(&self.tmp)?;
        let target = work.path().join("layer");
        make_dir(&target, 0o755)?;
        let reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            hasher: Hasher::new(),
        };
        let actual = unpack(&target, Box::new(reader))?;
        // Set before the channel closed, so it is visible now.
        if !complete.load(Ordering::Acquire) {
            return Err(SnapshotError::Open(io::Error::other(
                "the layer's writer stopped before its end",
            )));
        }
        let dest = self.layers.join(actual.hex());
        if is_dir(&dest)? {
            return Ok(actual);
        }
        let _lock = self.lock(&format!("{}.lock", actual.hex()))?;
        if !is_dir(&dest)? {
            self.keep(work, &target, &dest)?;
        }
        Ok(actual)
    }

    /// Makes the unpacked `target` the layer `dest` (under its lock).
    fn keep(&self, work: WorkDir, target: &Path, dest: &Path) -> Result<(), SnapshotError> {
        if self.flush {
            // Without a boot to scope it to, durable before it becomes
            // visible: after a system crash it is complete or absent.
            let dir = File::open(target).map_err(io_at("open", target))?;
            rustix::fs::syncfs(&dir).map_err(|e| SnapshotError::Io {
                op: "sync",
                path: target.to_path_buf(),
                source: e.into(),
            })?;
        }
        match rename_noreplace(target, dest) {
            Ok(()) => {}
            // Someone unpacked it without our lock (an older rbuild, or a
            // lock directory that was cleared): theirs is as good.
            Err(e) if (e == Errno::EXIST || e == Errno::NOTEMPTY) && is_dir(dest)? => {}
            Err(e) => {
                return Err(SnapshotError::Io {
                    op: "move unpacked layer to",
                    path: dest.to_path_buf(),
                    source: e.into(),
                });
            }
        }
        drop(work);
        Ok(())
    }

    /// Fresh empty `upper`, `work` and `rootfs` directories for one run, on
    /// the same filesystem as the lower directories. They are removed when
    /// the returned value is dropped (also when unwinding from a panic);
    /// `rootfs` is only ever removed with `rmdir`, so a mount left on it is
    /// never descended into.
    pub fn scratch(&self) -> Result<RunDirs, SnapshotError> {
        let guard = WorkDir::new(&self.tmp)?;
        let upper = guard.path().join("upper");
        let work = guard.path().join("work");
        let rootfs = guard.path().join("rootfs");
        // The upper directory's root is the container's `/`.
        make_dir(&upper, 0o755)?;
        make_dir(&work, 0o700)?;
        make_dir(&rootfs, 0o755)?;
        Ok(RunDirs {
            upper,
            work,
            rootfs,
            guard,
        })
    }

    /// Removes `tmp/` entries whose owner is gone: their lock file can be
    /// locked, or they have none and are old or named for a process that
    /// no longer runs (one killed between making the directory and its
    /// lock). Best effort.
    fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for ent in entries.flatten() {
            let path = ent.path();
            let Ok(md) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !md.is_dir() {
                let _ = fs::remove_file(&path);
                continue;
            }
            match File::open(path.join("lock")) {
                Ok(lock) => {
                    // Held by a live owner: leave it alone.
                    if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
                        remove_work_dir(&path);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let old = md
                        .modified()
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > STALE_UNLOCKED_AGE);
                    if old || owner_is_gone(&ent.file_name()) {
                        remove_work_dir(&path);
                    }
                }
                Err(_) => {}
            }
        }
    }
}

/// Whether a scratch entry named `<pid>-...` belongs to a process that no
/// longer runs (pids are reused, so a live pid proves nothing; false for
/// a name without a pid). rbuild names per-process scratch this way.
pub fn owner_is_gone(name: &OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// One run's overlay directories (see [`Snapshots::scratch`]).
#[derive(Debug)]
pub struct RunDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub rootfs: PathBuf,
    guard: WorkDir,
}

/// A `tmp/<id>` directory owned by this process while its lock file is
/// locked; removed on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
    /// Holds the flock; closed after the directory is gone.
    _lock: File,
}

impl WorkDir {
    fn new(tmp: &Path) -> Result<WorkDir, SnapshotError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = tmp.join(format!("{}-{n}-{nanos:08x}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(SnapshotError::Io {
                        op: "create directory",
                        path,
                        source,
                    });
                }
            }
            let lock_path = path.join("lock");
            let lock = match File::options()
                .create_new(true)
                .write(true)
                .open(&lock_path)
            {
                Ok(f) => f,
                // A cleaner took the directory away already: start over.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SnapshotError::Io {
                        op: "create",
                        path: lock_path,
                        source,
                    });
                }
            };
            lock_exclusive(&lock).map_err(io_at("lock", &lock_path))?;
            // A cleaner in another process may have locked the new file
            // before we did and removed the directory; then it is not ours.
            let ours = match (rustix::fs::fstat(&lock), rustix::fs::lstat(&lock_path)) {
                (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
                _ => false,
            };
            if ours {
                return Ok(WorkDir { path, _lock: lock });
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_work_dir(&self.path);
    }
}

/// Removes a `tmp/<id>` directory, its lock file last. A `rootfs` inside is
/// removed with rmdir only: if something is still mounted on it, nothing
/// is removed (never delete through a mount).
fn remove_work_dir(path: &Path) {
    let rootfs = path.join("rootfs");
    match fs::remove_dir(&rootfs) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => return,
    }
    // Overlay leaves `work/work` (and `work/index`) with mode 000; only
    // root could enter them as they are.
    for inner in ["work", "index"] {
        let p = path.join("work").join(inner);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
        }
    }
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for ent in entries.flatten() {
        if ent.file_name() == "lock" {
            continue;
        }
        let p = ent.path();
        let _ = match ent.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
            _ => fs::remove_file(&p),
        };
    }
    let _ = fs::remove_file(path.join("lock"));
    let _ = fs::remove_dir(path);
}

/// Blocking exclusive flock, retried when a signal interrupts it.
fn lock_exclusive(file: &File) -> io::Result<()> {
    loop {
        match rustix::fs::flock(file, FlockOperation::LockExclusive) {
            Err(e) if e == Errno::INTR => continue,
            r => return r.map_err(Into::into),
        }
    }
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Errno> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        // Filesystems without RENAME_NOREPLACE: a plain rename still fails
        // on a non-empty directory, and an empty layer is the same anyway.
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS => rustix::fs::rename(from, to),
        r => r,
    }
}

fn is_dir(path: &Path) -> Result<bool, SnapshotError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(md.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SnapshotError::Io {
            op: "inspect",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates a directory with exactly `mode`, whatever the umask.
fn make_dir(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io_at("create directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_at("set mode of", path))
}

/// A whiteout member of a layer: its full name and owner.
struct Whiteout {
    name: Vec<u8>,
    uid: u32,
    gid: u32,
}

/// Extracts a layer into the empty directory `target` in overlay form and
/// checks its diff ID.
///
/// The (decompressed) stream is read once: [`apply_layer`] extracts it,
/// and a second thread parses a copy of the same bytes to list the
/// whiteouts, which `apply_layer` does not materialise (in an empty
/// directory they remove nothing). They are then made into overlay
/// whiteouts and opaque markers.
fn unpack(target: &Path, mut raw: Box<dyn Read + '_>) -> Result<Digest, SnapshotError> {
    let tar =
        crate::compression::decompress(&mut raw).map_err(|source| ApplyError::Tar { source })?;

    let (tx, rx) = sync_channel::<Vec<u8>>(16);
    let (applied, checked) = std::thread::scope(|scope| {
        // The second thread parses the copy for whiteouts and hashes it
        // for the diff ID check, off the extraction's critical path.
        let parser = scope.spawn(move || list_whiteouts(rx));
        let mut tee = Tee {
            inner: tar,
            tx: Some(tx),
        };
        // Large reads through the tee: the tar reader asks for 512-byte
        // headers, and each tee read is a channel send (a thread wake-up)
        // — per header, that dominated unpacking.
        let applied = apply_layer(target, std::io::BufReader::with_capacity(1 << 20, &mut tee));
        // Closing the channel ends the parser.
        let complete = tee.tx.is_some();
        drop(tee);
        let checked = parser
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the whiteout parser panicked")))
            .and_then(|c| match complete {
                true => Ok(c),
                false => Err(io::Error::other("the layer check stopped early")),
            });
        (applied, checked)
    });
    applied?;
    let (whiteouts, actual) = checked.map_err(|source| ApplyError::Tar { source })?;
    make_overlay_whiteouts(target, &whiteouts)?;
    Ok(actual)
}

/// How much an [`UnpackingWriter`] gathers before handing it over: one
/// channel send per tar header would cost a thread wake-up each.
const CHUNK: usize = 1 << 20;

/// See [`Snapshots::unpack_alongside`].
pub struct UnpackingWriter<W: Write> {
    /// Always `Some` until `finish` takes it.
    inner: Option<W>,
    buf: Vec<u8>,
    /// `None` once the unpacker is gone (it failed; it reports why).
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<Result<Digest, SnapshotError>>>,
    /// Set by `finish` once every byte is sent.
    complete: Arc<AtomicBool>,
}

impl<W: Write> UnpackingWriter<W> {
    fn send(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        if let Some(tx) = &self.tx
            && tx.send(chunk).is_err()
        {
            self.tx = None;
        }
    }

    /// Ends the stream: returns the inner writer, and the diff ID under
    /// which the unpacked layer is now kept (an error if unpacking
    /// failed; the layer is then unpacked when a RUN needs it).
    pub fn finish(mut self) -> (W, Result<Digest, SnapshotError>) {
        self.send();
        if self.tx.is_some() {
            self.complete.store(true, Ordering::Release);
        }
        let unpacked = self.join();
        let inner = match self.inner.take() {
            Some(inner) => inner,
            None => unreachable!("the writer is only taken here"),
        };
        (inner, unpacked)
    }

    /// Closes the stream and waits for the unpacker.
    fn join(&mut self) -> Result<Digest, SnapshotError> {
        self.tx = None;
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(SnapshotError::Open(io::Error::other(
                    "the unpacking thread panicked",
                )))
            }),
            None => Err(SnapshotError::Open(io::Error::other(
                "the layer was not unpacked alongside",
            ))),
        }
    }
}

impl<W: Write> Write for UnpackingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(io::Error::other("write after finish"));
        };
        let n = inner.write(data)?;
        if self.tx.is_some() {
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() >= CHUNK {
                self.send();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for UnpackingWriter<W> {
    /// A writer dropped early (its layer failed) stops the unpacker, whose
    /// work directory goes with it, before anything else happens.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// Passes a stream through, hashing it and sending a copy to a channel.
struct Tee<R> {
    inner: R,
    tx: Option<SyncSender<Vec<u8>>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = buf.get(..n).unwrap_or_default();
        if n > 0
            && let Some(tx) = &self.tx
            && tx.send(chunk.to_vec()).is_err()
        {
            // The parser stopped (it reports why); keep extracting.
            self.tx = None;
        }
        Ok(n)
    }
}

/// The receiving end of a [`Tee`] as a reader.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    /// Every byte received, for the diff ID.
    hasher: Hasher,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.hasher.update(&c);
                    self.chunk = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let rest = self.chunk.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// Lists the whiteout members of the tar coming through `rx`, in order.
/// Always reads the channel to its end, so the sender never blocks.
fn list_whiteouts(rx: Receiver<Vec<u8>>) -> io::Result<(Vec<Whiteout>, Digest)> {
    let mut reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        hasher: Hasher::new(),
    };
    let result: io::Result<Vec<Whiteout>> = (|| {
        let mut out = Vec::new();
        let mut archive = tar::Archive::new(&mut reader);
        for entry in archive.entries()? {
            let entry = entry?;
            let header = entry.header();
            if header.entry_type().is_pax_global_extensions() {
                continue;
            }
            let name = entry.path_bytes().into_owned();
            let base = name
                .split(|&b| b == b'/')
                .rfind(|c| !c.is_empty() && *c != b".")
                .unwrap_or_default();
            if base.starts_with(WHITEOUT_PREFIX) {
                out.push(Whiteout {
                    uid: header
                        .uid()
                        .ok()
                        .and_then(|u| u32::try_from(u).ok())
                        .unwrap_or(0),
                    gid: header
                        .gid()
                        .ok()
                        .and_then(|g| u32::try_from(g).ok())
                        .unwrap_or(0),
                    name,
                });
            }
        }
        Ok(out)
    })();
    io::copy(&mut reader, &mut io::sink())?;
    Ok((result?, reader.hasher.finish()))
}

/// Turns the layer's whiteouts into overlayfs' form inside `root`: char
/// devices 0:0 and opaque directory attributes. Parents are resolved
/// inside `root` as [`apply_layer`] resolves them; directory mtimes that
/// creating the devices changes are put back.
fn make_overlay_whiteouts(root: &Path, whiteouts: &[Whiteout]) -> Result<(), SnapshotError> {
    let mut dir_times: BTreeMap<PathBuf, rustix::fs::Timestamps> = BTreeMap::new();
    for w in whiteouts {
        // `..` is applied lexically first, as apply_layer does.
        let Some(clean) = normalize(&w.name) else {
            continue;
        };
        let resolved = resolve_in_root(root, &clean)?;
        let (Some(parent), Some(base)) = (resolved.parent(), resolved.file_name()) else {
            continue;
        };
        if !resolved.starts_with(root) || resolved == root {
            continue;
        }
        let base = base.as_bytes();
        if base == WHITEOUT_OPAQUE {
            rustix::fs::lsetxattr(parent, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(
                |e| SnapshotError::Io {
                    op: "mark opaque",
                    path: parent.to_path_buf(),
                    source: e.into(),
                },
            )?;
            continue;
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            // AUFS bookkeeping (.wh..wh.plnk and such): nothing to make.
            continue;
        }
        let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) else {
            continue;
        };
        let path = parent.join(OsStr::from_bytes(name));
        // Something of this layer by that name wins: a whiteout only hides
        // what lower layers have.
        match fs::symlink_metadata(&path) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SnapshotError::Io {
                    op: "inspect",
                    path,
                    source,
                });
            }
        }
        if !dir_times.contains_key(parent) {
            let st = rustix::fs::lstat(parent).map_err(|e| SnapshotError::Io {
                op: "inspect",
                path: parent.to_path_buf(),
                source: e.into(),
            })?;
            dir_times.insert(parent.to_path_buf(), timestamps_of(&st));
        }
        let sys = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e: Errno| SnapshotError::Io {
                op,
                path,
                source: e.into(),
            }
        };
        rustix::fs::mknodat(
            CWD,
            &path,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(sys("create whiteout", &path))?;
        rustix::fs::chownat(
            CWD,
            &path,
            Some(rustix::process::Uid::from_raw(w.uid)),
            Some(rustix::process::Gid::from_raw(w.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(sys("change owner of", &path))?;
    }
    for (dir, times) in &dir_times {
        rustix::fs::utimensat(CWD, dir, times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
            SnapshotError::Io {
                op: "set times of",
                path: dir.clone(),
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// An entry name with `.` and empty components dropped and `..` applied
/// lexically; `None` if it climbs above the root (apply_layer rejected
/// such a layer already).
fn normalize(name: &[u8]) -> Option<PathBuf> {
    let mut comps: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                comps.pop()?;
            }
            c => comps.push(c),
        }
    }
    Some(comps.iter().map(|c| OsStr::from_bytes(c)).collect())
}

fn timestamps_of(st: &rustix::fs::Stat) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Runs `f` on a new thread with its own mount namespace, in which every
/// mount is private: what `f` mounts is never visible to other threads or
/// processes (children `f` spawns share the namespace), and disappears
/// with the namespace when the thread ends. `f` should still unmount what
/// it mounted, as the namespace may outlive the thread briefly.
pub(crate) fn in_private_mount_namespace<T: Send>(
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: `unshare_unsafe` is unsafe because of
                // CLONE_FILES, which could leave other threads' file
                // descriptors invalid here. We pass only CLONE_NEWNS (the
                // kernel adds CLONE_FS: this thread gets its own cwd,
                // root and umask), which affects no memory or descriptor
                // another thread relies on; the thread ends after `f`.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
                // Mounts copied from the host may be shared with it; make
                // them private so nothing propagates back.
                rustix::mount::mount_change(
                    "/",
                    rustix::mount::MountPropagationFlags::PRIVATE
                        | rustix::mount::MountPropagationFlags::REC,
                )?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the mount namespace thread panicked")))
    })
}

/// Unmounts a mount point when dropped (detaching it if it is busy).
pub(crate) struct MountGuard(pub(crate) PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Mounts an overlay of `lowers` (topmost first) with `dirs`' upper and
/// work directories on `dirs.rootfs`. Call only in a private mount
/// namespace ([`in_private_mount_namespace`]).
pub(crate) fn mount_overlay(lowers: &[PathBuf], dirs: &RunDirs) -> io::Result<MountGuard> {
    let mut lowerdir = Vec::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            lowerdir.push(b':');
        }
        lowerdir.extend_from_slice(l.as_os_str().as_bytes());
    }
    let mut data = b"lowerdir=".to_vec();
    data.extend_from_slice(&lowerdir);
    data.extend_from_slice(b",upperdir=");
    data.extend_from_slice(dirs.upper.as_os_str().as_bytes());
    data.extend_from_slice(b",workdir=");
    data.extend_from_slice(dirs.work.as_os_str().as_bytes());
    let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        &dirs.rootfs,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )?;
    Ok(MountGuard(dirs.rootfs.clone()))
}

/// Whether overlayfs can be used with `root` (a snapshots directory, as
/// given to [`Snapshots::open`]) holding the upper directory: mounts one
/// overlay in a private mount namespace and creates and deletes a file
/// through it (whiteouts need `trusted.*` xattrs and mknod on that
/// filesystem). The answer is cached per root for the process, and a
/// success also in the root until the next boot (see [`PROBED`]).
pub fn overlay_supported(root: &Path) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&known) = cache.get(root) {
        return known;
    }
    let stamp = probe_stamp(root);
    let known_good = stamp
        .as_ref()
        .is_some_and(|s| fs::read_to_string(root.join(PROBED)).is_ok_and(|r| r == *s));
    let ok = known_good || probe_overlay(root).is_ok();
    if ok
        && !known_good
        && let Some(stamp) = stamp
    {
        // Best effort: without it the next process probes again.
        let _ = write_replacing(&root.join("tmp"), &root.join(PROBED), stamp.as_bytes());
    }
    cache.insert(root.to_path_buf(), ok);
    ok
}

/// Where a root remembers that overlay worked there: the boot and the
/// filesystem it was probed on. Probing mounts an overlay, which costs a
/// build with RUN steps several milliseconds; the kernel and the mounts
/// only change across a boot or a new filesystem at the root's path.
const PROBED: &str = "overlay-probed";

/// What [`PROBED`] holds when a probe of `root` now would be answered by
/// an earlier one: None without a boot ID.
fn probe_stamp(root: &Path) -> Option<String> {
    let boot = fs::read_to_string(BOOT_ID).ok()?;
    let dev = fs::metadata(root).ok()?.dev();
    Some(format!("{} {dev}\n", boot.trim()))
}

/// Writes `path` whole, in one rename of a file written in `tmp` (where
/// [`Snapshots::open`] sweeps leftovers): readers see the old or the new
/// content. Not synced; a crash means another boot, where it is stale
/// anyway.
fn write_replacing(tmp: &Path, path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = tmp.join(format!("probed-{}", std::process::id()));
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn probe_overlay(root: &Path) -> io::Result<()> {
    let snapshots = Snapshots::open(root).map_err(io::Error::other)?;
    let dirs = snapshots.scratch().map_err(io::Error::other)?;
    let lower = dirs.guard.path().join("lower");
    fs::create_dir_all(lower.join("dir"))?;
    fs::write(lower.join("old"), b"")?;
    fs::write(lower.join("dir/old"), b"")?;
    in_private_mount_namespace(|| {
        let _mounted = mount_overlay(std::slice::from_ref(&lower), &dirs)?;
        fs::write(dirs.rootfs.join("new"), b"")?;
        // A whiteout, and an opaque directory replacing a lower one.
        fs::remove_file(dirs.rootfs.join("old"))?;
        fs::remove_dir_all(dirs.rootfs.join("dir"))?;
        fs::create_dir(dirs.rootfs.join("dir"))?;
        Ok(())
    })?;
    let st = rustix::fs::lstat(dirs.upper.join("old"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice || st.st_rdev != 0 {
        return Err(io::Error::other("overlay did not make a whiteout"));
    }
    let mut value = [0u8; 1];
    let n = rustix::fs::lgetxattr(dirs.upper.join("dir"), OPAQUE_XATTR, &mut value)?;
    if value.get(..n) != Some(b"y".as_slice()) {
        return Err(io::Error::other("overlay did not make an opaque directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_of_another_boot_are_dropped() {
        let Ok(boot) = fs::read_to_string(BOOT_ID) else {
            return; // no boot ID here: layers are flushed instead
        };
        let tmp = tempfile::tempdir().unwrap();
        let kept = tmp.path().join("layers/kept");
        fs::create_dir_all(&kept).unwrap();
        fs::write(tmp.path().join("boot_id"), boot.trim()).unwrap();
        Snapshots::open(tmp.path()).unwrap();
        assert!(kept.is_dir(), "a layer of this boot is kept");

        fs::write(tmp.path().join("boot_id"), "an earlier boot").unwrap();
        let s = Snapshots::open(tmp.path()).unwrap();
        assert!(!s.flush);
        assert!(!kept.exists(), "a layer of an earlier boot is dropped");
        assert!(tmp.path().join("layers").is_dir());
        assert_eq!(
            fs::read_to_string(tmp.path().join("boot_id")).unwrap(),
            boot.trim()
        );
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    }
    use crate::layer::{Entry, EntryKind};
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::AtomicUsize;

    fn entry(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_000,
            xattrs: Vec::new(),
        }
    }

    use crate::layer::tests::layer_bytes as tar_of;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn opener(bytes: Vec<u8>, calls: &AtomicUsize) -> impl FnMut() -> io::Result<Box<dyn Read>> {
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read>)
        }
    }

    fn whiteout_layer() -> (Digest, Vec<u8>) {
        tar_of(&[
            entry("a", EntryKind::Directory, 0o755),
            entry("a/.wh.x", EntryKind::Bytes(Vec::new()), 0o644),
            entry("a/f", EntryKind::Bytes(b"f".to_vec()), 0o644),
            entry("o", EntryKind::Directory, 0o750),
            entry("o/.wh..wh..opq", EntryKind::Bytes(Vec::new()), 0o644),
            entry("o/new", EntryKind::Bytes(b"n".to_vec()), 0o600),
            entry(".wh.top", EntryKind::Bytes(Vec::new()), 0o644),
            entry(".wh..wh.plnk", EntryKind::Bytes(Vec::new()), 0o644),
        ])
    }

    #[test]
    fn unpack_converts_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let (diff_id, tar) = whiteout_layer();
        let calls = AtomicUsize::new(0);
        // Compressed on the way in, named by the uncompressed digest.
        let dir = snaps
            .lower(&diff_id, &mut opener(gzip(&tar), &calls))
            .unwrap();
        assert_eq!(dir, tmp.path().join("layers").join(diff_id.hex()));

        for wh in ["a/x", "top"] {
            let st = rustix::fs::lstat(dir.join(wh)).unwrap();
            assert_eq!(
                FileType::from_raw_mode(st.st_mode),
                FileType::CharacterDevice,
                "{wh}"
            );
            assert_eq!(st.st_rdev, 0);
        }
        assert!(!dir.join("a/.wh.x").exists());
        assert!(!dir.join(".wh..wh.plnk").exists());
        assert!(!dir.join("o/.wh..wh..opq").exists());
        let mut buf = [0u8; 4];
        let n = rustix::fs::lgetxattr(dir.join("o"), OPAQUE_XATTR, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
        assert!(rustix::fs::lgetxattr(dir.join("a"), OPAQUE_XATTR, &mut buf).is_err());
        // The rest is extracted as apply does, directory times included
        // (making the whiteout did not change a's mtime).
        assert_eq!(fs::read(dir.join("o/new")).unwrap(), b"n");
        assert_eq!(fs::metadata(dir.join("o")).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(fs::metadata(dir.join("a")).unwrap().mtime(), 1_000);
        // Nothing left in progress.
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_layer_unpacked_while_written_is_the_one_lower_finds() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let (diff_id, tar) = whiteout_layer();
        let mut writer = snaps.unpack_alongside(Vec::new());
        // Small writes, as a tar builder makes them.
        for piece in tar.chunks(700) {
            writer.write_all(piece).unwrap();
        }
        let (written, unpacked) = writer.finish();
        assert_eq!(written, tar, "the inner writer got every byte");
        assert_eq!(unpacked.unwrap(), diff_id);
        // lower() finds it: the layer is never opened again.
        let calls = AtomicUsize::new(0);
        let dir = snaps.lower(&diff_id, &mut opener(tar, &calls)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(fs::read(dir.join("a/f")).unwrap(), b"f");
        assert_eq!(fs::read(dir.join("o/new")).unwrap(), b"n");
        let st = rustix::fs::lstat(dir.join("top")).unwrap();
        assert_eq!(
            FileType::from_raw_mode(st.st_mode),
            FileType::CharacterDevice,
            "whiteouts converted too"
        );
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_writer_that_stops_early_leaves_no_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let (_, tar) = whiteout_layer();
        let mut writer = snaps.unpack_alongside(Vec::new());
        // Whole tar members, so the prefix alone is a valid short archive.
        writer.write_all(&tar[..1024]).unwrap();
        drop(writer);
        assert_eq!(fs::read_dir(tmp.path().join("layers")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn second_lower_reuses_the_unpacked_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let (diff_id, tar) = whiteout_layer();
        let calls = AtomicUsize::new(0);
        let first = snaps
            .lower(&diff_id, &mut opener(tar.clone(), &calls))
            .unwrap();
        let again = Snapshots::open(tmp.path()).unwrap();
        let second = again.lower(&diff_id, &mut opener(tar, &calls)).unwrap();
        assert_eq!(first, second);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_lower_of_one_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let (diff_id, tar) = whiteout_layer();
        let calls = AtomicUsize::new(0);
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let tar = tar.clone();
                    let calls = &calls;
                    let root = tmp.path();
                    s.spawn(move || {
                        // Each its own Snapshots, as separate processes would.
                        let snaps = Snapshots::open(root).unwrap();
                        snaps.lower(&diff_id, &mut opener(tar, calls)).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(dirs.iter().all(|d| *d == dirs[0]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(fs::read_dir(tmp.path().join("layers")).unwrap().count(), 1);
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
        assert!(dirs[0].join("a/f").exists());
    }

    #[test]
    fn an_unlocked_unpacker_finishing_first_wins() {
        // Another unpacker that does not take the lock (say, an older
        // rbuild) puts the layer in place while we are unpacking it.
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let (diff_id, tar) = whiteout_layer();
        let dest = tmp.path().join("layers").join(diff_id.hex());
        let theirs = dest.clone();
        let mut open = move || {
            fs::create_dir_all(theirs.join("a")).unwrap();
            fs::write(theirs.join("a/f"), b"theirs").unwrap();
            Ok(Box::new(io::Cursor::new(tar.clone())) as Box<dyn Read>)
        };
        assert_eq!(snaps.lower(&diff_id, &mut open).unwrap(), dest);
        assert_eq!(fs::read(dest.join("a/f")).unwrap(), b"theirs");
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn escaping_layers_are_rejected_and_leave_nothing() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("snapshots");
        let snaps = Snapshots::open(&root).unwrap();
        let probe = "rbuild-snapshot-escape-probe";

        // `..` climbing out: rejected outright.
        let mut h = tar::Header::new_ustar();
        let name = format!("../../../{probe}");
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let calls = AtomicUsize::new(0);
        let err = snaps
            .lower(&Digest::of(&tar), &mut opener(tar, &calls))
            .unwrap_err();
        assert!(
            matches!(err, SnapshotError::Apply(ApplyError::Escape { .. })),
            "{err}"
        );
        assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);

        // Through a symlink, file, hard link and whiteout: kept inside.
        let outside = base.path().join(probe);
        let (diff_id, tar) = tar_of(&[
            entry(
                "up",
                EntryKind::Symlink {
                    target: base.path().display().to_string(),
                },
                0o777,
            ),
            entry(
                &format!("up/{probe}"),
                EntryKind::Bytes(b"x".to_vec()),
                0o644,
            ),
            entry(
                &format!("up/.wh.{probe}-wh"),
                EntryKind::Bytes(vec![]),
                0o644,
            ),
            entry(
                "hl",
                EntryKind::Hardlink {
                    target: format!("../{probe}"),
                },
                0o644,
            ),
        ]);
        let err = snaps.lower(&diff_id, &mut opener(tar, &calls)).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Apply(ApplyError::LinkEscape { .. })),
            "{err}"
        );
        assert!(!outside.exists());
        assert!(!base.path().join(format!("{probe}-wh")).exists());
        assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);

        // Without the bad hard link it unpacks, everything inside.
        let (diff_id, tar) = tar_of(&[
            entry(
                "up",
                EntryKind::Symlink {
                    target: base.path().display().to_string(),
                },
                0o777,
            ),
            entry(
                &format!("up/{probe}"),
                EntryKind::Bytes(b"x".to_vec()),
                0o644,
            ),
            entry(
                &format!("up/.wh.{probe}-wh"),
                EntryKind::Bytes(vec![]),
                0o644,
            ),
        ]);
        let dir = snaps.lower(&diff_id, &mut opener(tar, &calls)).unwrap();
        assert!(!outside.exists());
        assert!(!base.path().join(format!("{probe}-wh")).exists());
        let inside = dir.join(base.path().strip_prefix("/").unwrap());
        assert_eq!(fs::read(inside.join(probe)).unwrap(), b"x");
        let st = rustix::fs::lstat(inside.join(format!("{probe}-wh"))).unwrap();
        assert_eq!(
            FileType::from_raw_mode(st.st_mode),
            FileType::CharacterDevice
        );
    }

    #[test]
    fn wrong_diff_id_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let (diff_id, tar) = whiteout_layer();
        let wrong = Digest::of(b"something else");
        let calls = AtomicUsize::new(0);
        let err = snaps.lower(&wrong, &mut opener(tar, &calls)).unwrap_err();
        assert!(
            matches!(err, SnapshotError::DiffIdMismatch { actual, .. } if actual == diff_id),
            "{err}"
        );
        assert_eq!(fs::read_dir(tmp.path().join("layers")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
        // A failing opener is reported as such.
        let err = snaps
            .lower(&wrong, &mut || Err(io::Error::other("gone")))
            .unwrap_err();
        assert!(matches!(err, SnapshotError::Open(_)), "{err}");
    }

    #[test]
    fn scratch_dirs_vanish_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let dirs = snaps.scratch().unwrap();
        for d in [&dirs.upper, &dirs.work, &dirs.rootfs] {
            assert!(d.is_dir());
            assert_eq!(fs::read_dir(d).unwrap().count(), 0);
        }
        assert_eq!(fs::metadata(&dirs.upper).unwrap().mode() & 0o7777, 0o755);
        // Same filesystem as the layers.
        assert_eq!(
            fs::metadata(&dirs.upper).unwrap().dev(),
            fs::metadata(tmp.path().join("layers")).unwrap().dev()
        );
        // What overlay leaves behind: a mode-000 work/work, a whiteout.
        fs::create_dir(dirs.work.join("work")).unwrap();
        rustix::fs::mknodat(
            CWD,
            dirs.work.join("work/#1"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        fs::set_permissions(dirs.work.join("work"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::create_dir_all(dirs.upper.join("a/b")).unwrap();
        let parent = dirs.upper.parent().unwrap().to_path_buf();
        drop(dirs);
        assert!(!parent.exists());

        // Also when unwinding from a panic.
        let parent = std::panic::catch_unwind(|| {
            let dirs = snaps.scratch().unwrap();
            fs::write(dirs.upper.join("f"), b"").unwrap();
            std::panic::panic_any(dirs.upper.parent().unwrap().to_path_buf());
        })
        .unwrap_err()
        .downcast::<PathBuf>()
        .unwrap();
        assert!(!parent.exists());
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn open_removes_what_dead_owners_left() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(tmp.path()).unwrap();
        let live = snaps.scratch().unwrap();
        // A crashed unpack: a lock file nobody holds.
        let dead = tmp.path().join("tmp/dead");
        fs::create_dir_all(dead.join("layer/half")).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        // A process killed before it made its lock: no lock, a dead pid.
        let unlocked = tmp.path().join("tmp/4294967-gc-0");
        fs::create_dir_all(unlocked.join("half")).unwrap();
        // One being made right now: no lock yet, a live pid.
        let making = tmp.path().join(format!("tmp/{}-9-0", std::process::id()));
        fs::create_dir_all(&making).unwrap();
        Snapshots::open(tmp.path()).unwrap();
        assert!(!dead.exists());
        assert!(!unlocked.exists());
        assert!(making.is_dir());
        assert!(live.upper.is_dir());
        assert!(live.rootfs.is_dir());
    }

    #[test]
    fn overlay_support_is_detected_and_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let first = overlay_supported(tmp.path());
        assert_eq!(overlay_supported(tmp.path()), first);
        // The probe cleans up after itself and leaves no mount behind.
        assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&tmp.path().display().to_string()));
        if rustix::process::geteuid().is_root() {
            // This machine runs the overlay tests: it must work here.
            eprintln!("overlay supported: {first}");
        }
        // A success is remembered in the root for this boot and filesystem
        // (a failure is probed again by the next process).
        let probed = fs::read_to_string(tmp.path().join(PROBED)).ok();
        if first {
            assert_eq!(probed, probe_stamp(tmp.path()));
        } else {
            assert_eq!(probed, None);
        }
    }

    #[test]
    fn a_remembered_probe_counts_for_its_boot_and_filesystem_only() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(stamp) = probe_stamp(tmp.path()) else {
            return; // no boot ID: nothing is remembered
        };
        let boot = fs::read_to_string(BOOT_ID).unwrap();
        assert_eq!(
            stamp,
            format!(
                "{} {}\n",
                boot.trim(),
                fs::metadata(tmp.path()).unwrap().dev()
            )
        );
        // Another filesystem at the same path, or another boot, differs.
        assert_ne!(
            stamp,
            format!("{} {}\n", boot.trim(), fs::metadata("/proc").unwrap().dev())
        );
        assert_ne!(
            stamp,
            format!(
                "an earlier boot {}\n",
                fs::metadata(tmp.path()).unwrap().dev()
            )
        );
    }
}
