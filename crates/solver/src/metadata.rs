//! The build cache's metadata: which cache key produced which layers, the
//! content checksums of context files, and what the last build of each
//! step saw (for explaining misses).
//!
//! It lives in one SQLite database, `ROOT/metadata.db`, in WAL mode: every
//! change is a transaction, so a build killed at any moment leaves either
//! the old or the new record, never half of one, and several rbuild
//! processes can use one root at once (writers wait for each other, up to
//! [`BUSY_TIMEOUT`]). Blobs stay in the content store; a record is only
//! written after the blobs it names are committed there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_oci::{Descriptor, Digest};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::checksum::FileStamp;

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A write-ahead log larger than this is folded into the database (and
/// emptied) by a thread of the process, beside its work: when the process
/// opens the database, and when a build is about to run a step
/// ([`Metadata::checkpoint_if_large`]). Every process that opens the
/// database first reads the whole log back (SQLite rebuilds its index of
/// it), about 0.5 ms per MB, so the log must not grow without bound; but a
/// checkpoint costs two fsyncs, which on a process's way out (where this
/// used to happen) were on the critical path of every other
/// one-file-change rebuild, and at the next process's start, of the first
/// no-op rebuild after a cold build.
const WAL_CHECKPOINT_BYTES: u64 = 256 * 1024;

/// Bumped when [`SCHEMA`] changes (stored as SQLite's `user_version`).
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cache (
    key       TEXT PRIMARY KEY,   -- cache key digest
    layers    TEXT NOT NULL,      -- JSON: the result's layers, bottom first
    size      INTEGER NOT NULL,   -- bytes of the layer this step added (0: none)
    created   INTEGER NOT NULL,   -- unix seconds
    last_used INTEGER NOT NULL    -- unix seconds
);
CREATE INDEX IF NOT EXISTS cache_last_used ON cache(last_used);
CREATE TABLE IF NOT EXISTS file_hashes (
    path     BLOB PRIMARY KEY,    -- absolute host path
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    digest   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS source_sums (
    key       TEXT PRIMARY KEY,   -- source filesystem + selection
    digest    TEXT NOT NULL,
    last_used INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS explain (
    slot  TEXT PRIMARY KEY,       -- a step's place: context, Dockerfile, stage, index
    facts TEXT NOT NULL           -- JSON, see crate::explain
);
CREATE TABLE IF NOT EXISTS converted_layers (
    diff_id    TEXT NOT NULL,     -- the uncompressed layer
    kind       TEXT NOT NULL,     -- its compression: gzip-6, zstd-3, ...
    descriptor TEXT NOT NULL,     -- JSON: the compressed blob's descriptor
    PRIMARY KEY (diff_id, kind)
);
CREATE TABLE IF NOT EXISTS layer_summaries (
    blob    TEXT PRIMARY KEY,     -- a compressed layer blob's digest
    summary BLOB NOT NULL         -- rbuild_exec::summary::LayerSummary bytes
);
CREATE TABLE IF NOT EXISTS layer_files (
    blob   TEXT NOT NULL,         -- a layer blob's digest
    path   TEXT NOT NULL,         -- a regular file it holds (clean, relative)
    digest TEXT NOT NULL,         -- the file's content digest
    PRIMARY KEY (blob, path)
);
";

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("build cache database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("locking {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("build cache database {path}: bad record for {key}: {message}")]
    Corrupt {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// One layer of a cached result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    /// When the step that made it ran (RFC 3339); history times of images
    /// built from the cache are these, so an unchanged rebuild gives the
    /// same image ID, as with BuildKit. None for base image layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// A cache record: the filesystem a step produced, as all its layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub layers: Vec<CachedLayer>,
    /// Bytes of the layer the step itself added (0 if it added none).
    pub size: u64,
}

/// A row of the cache table, for `du`, `prune` and export.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub key: Digest,
    pub record: CacheRecord,
    pub created: u64,
    pub last_used: u64,
}

/// A `file_hashes` row: path, dev, ino, size, mtime, ctime, digest.
type FileHashRow = (Vec<u8>, i64, i64, i64, i64, i64, String);

/// The metadata database of a root.
pub struct Metadata {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The checkpoint going on beside, if any.
    checkpoint: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Metadata {
    fn drop(&mut self) {
        // Its connection must not outlive the process's last use of the
        // database; it is long done by now in all but the shortest runs.
        let running = self.checkpoint.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(checkpoint) = running.take() {
            let _ = checkpoint.join();
        }
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("path", &self.path)
            .finish()
    }
}

/// A connection to a root's metadata database, set up as every user of
/// it must: WAL lets readers and one writer work at once across
/// processes; NORMAL syncing keeps the database consistent after a crash
/// of the process (the case we must survive), losing at most the last
/// commits on power loss, which only costs cache hits; writers wait for
/// each other.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Whether the write-ahead log of the database at `path` is over
/// [`WAL_CHECKPOINT_BYTES`].
fn wal_is_large(path: &Path) -> bool {
    std::fs::metadata(path.with_extension("db-wal")).is_ok_and(|m| m.len() > WAL_CHECKPOINT_BYTES)
}

/// Folds the write-ahead log into the database and empties it, on a
/// thread with a connection of its own. It never waits: while another
/// connection (of this process or another) reads or writes, it folds in
/// what it can and leaves the log for a later process. Best effort: a
/// checkpoint that cannot finish leaves the log as it was, which is still
/// correct.
fn checkpoint_beside(path: &Path) -> Option<std::thread::JoinHandle<()>> {
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("rbuild-checkpoint".into())
        .spawn(move || {
            let Ok(conn) = connect(&path) else {
                return;
            };
            if conn.busy_timeout(Duration::ZERO).is_ok() {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
        })
        .ok()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Metadata {
    /// Opens (creating if needed) `ROOT/metadata.db`.
    pub fn open(root: &Path) -> Result<Metadata, MetadataError> {
        let path = root.join("metadata.db");
        let err = |source| MetadataError::Db {
            path: path.clone(),
            source,
        };
        // Setting up a new database (switching it to WAL, creating the
        // tables) escalates locks in ways SQLite refuses at once, without
        // waiting, when another process does the same: one process at a
        // time. The lock is released when `guard` is dropped.
        let lock_path = root.join("metadata.lock");
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|source| MetadataError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        let conn = connect(&path).map_err(err)?;
        // The WAL is checkpointed as it grows, not by every process on its
        // way out (that was an fsync per build).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(err)?;
        // Creating the tables once: a no-op rebuild need not parse the
        // schema again.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version != SCHEMA_VERSION {
            conn.execute_batch(SCHEMA).map_err(err)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
        }
        drop(guard);
        let meta = Metadata {
            path,
            conn: Mutex::new(conn),
            checkpoint: Mutex::new(None),
        };
        meta.checkpoint_if_large();
        Ok(meta)
    }

    /// Starts folding the write-ahead log into the database beside the
    /// caller's work if it is over [`WAL_CHECKPOINT_BYTES`] and no
    /// checkpoint is going on already. A build calls it before each step it
    /// runs, so that what it writes is folded in while later steps run.
    pub fn checkpoint_if_large(&self) {
        let mut running = self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = running.take_if(|c| c.is_finished()) {
            let _ = previous.join();
        }
        if running.is_none() && wal_is_large(&self.path) {
            *running = checkpoint_beside(&self.path);
        }
    }

    /// Whether a checkpoint was started (and not yet joined).
    #[cfg(test)]
    fn checkpointing(&self) -> bool {
        self.checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, MetadataError> {
        // A panic while holding the lock cannot leave a half-done
        // transaction behind (SQLite rolls it back), so a poisoned mutex
        // is safe to keep using.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|source| MetadataError::Db {
            path: self.path.clone(),
            source,
        })
    }

    fn corrupt(&self, key: &str, message: impl ToString) -> MetadataError {
        MetadataError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// The record for a cache key.
    pub fn get(&self, key: &Digest) -> Result<Option<CacheRecord>, MetadataError> {
        let k = key.to_string();
        let row: Option<(String, i64)> = self.with(|c| {
            c.prepare_cached("SELECT layers, size FROM cache WHERE key = ?1")?
                .query_row([&k], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })?;
        let Some((json, size)) = row else {
            return Ok(None);
        };
        let layers = serde_json::from_str(&json).map_err(|e| self.corrupt(&k, e))?;
        Ok(Some(CacheRecord {
            layers,
            size: size.max(0) as u64,
        }))
    }

    /// Stores (or replaces) a record.
    pub fn put(&self, key: &Digest, record: &CacheRecord) -> Result<(), MetadataError> {
        let json =
            serde_json::to_string(&record.layers).map_err(|e| self.corrupt(&key.to_string(), e))?;
        let now = unix_now();
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO cache (key, layers, size, created, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )?
            .execute(params![
                key.to_string(),
                json,
                record.size as i64,
                now as i64
            ])
            .map(drop)
        })
    }

    /// Marks records as used now (one transaction for all).
    pub fn touch(&self, keys: &[Digest]) -> Result<(), MetadataError> {
        if keys.is_empty() {
            return Ok(());
        }
        let now = unix_now() as i64;
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE cache SET last_used = ?1 WHERE key = ?2")?;
                for key in keys {
                    stmt.execute(params![now, key.to_string()])?;
                }
            }
            tx.commit()
        })
    }

    /// Every record, oldest use first.
    pub fn entries(&self) -> Result<Vec<CacheEntry>, MetadataError> {
        let rows: Vec<(String, String, i64, i64, i64)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT key, layers, size, created, last_used FROM cache ORDER BY last_used, key",
            )?;
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (key, layers, size, created, last_used) in rows {
            let digest = key.parse::<Digest>().map_err(|e| self.corrupt(&key, e))?;
            let layers: Vec<CachedLayer> =
                serde_json::from_str(&layers).map_err(|e| self.corrupt(&key, e))?;
            out.push(CacheEntry {
                key: digest,
                record: CacheRecord {
                    layers,
                    size: size.max(0) as u64,
                },
                created: created.max(0) as u64,
                last_used: last_used.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Deletes records (one transaction).
    pub fn remove(&self, keys: &[Digest]) -> Result<(), MetadataError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM cache WHERE key = ?1")?;
                for key in keys {
                    stmt.execute([key.to_string()])?;
                }
            }
            tx.commit()
        })
    }

    /// Content digests of files below `dir` known from earlier builds.
    pub fn file_hashes(
        &self,
        dir: &Path,
    ) -> Result<HashMap<PathBuf, (FileStamp, Digest)>, MetadataError> {
        use std::os::unix::ffi::OsStrExt;
        let mut lo = dir.as_os_str().as_bytes().to_vec();
        lo.push(b'/');
        // Every path below dir sorts between "dir/" and "dir0" ('0' is the
        // byte after '/').
        let mut hi = dir.as_os_str().as_bytes().to_vec();
        hi.push(b'0');
        let rows: Vec<FileHashRow> = self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, digest FROM file_hashes
                 WHERE path >= ?1 AND path < ?2",
            )?;
            stmt.query_map(params![lo, hi], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect()
        })?;
        let mut out = HashMap::with_capacity(rows.len());
        for (path, dev, ino, size, mtime_ns, ctime_ns, digest) in rows {
            // A row we cannot read is only a lost shortcut: the file is
            // hashed again.
            let Ok(digest) = digest.parse::<Digest>() else {
                continue;
            };
            let stamp = FileStamp {
                dev: dev as u64,
                ino: ino as u64,
                size: size as u64,
                mtime_ns,
                ctime_ns,
            };
            out.insert(
                PathBuf::from(std::ffi::OsStr::from_bytes(&path)),
                (stamp, digest),
            );
        }
        Ok(out)
    }

    /// Remembers files' content digests (one transaction).
    pub fn put_file_hashes(
        &self,
        hashed: &[(PathBuf, FileStamp, Digest)],
    ) -> Result<(), MetadataError> {
        use std::os::unix::ffi::OsStrExt;
        if hashed.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO file_hashes
                     (path, dev, ino, size, mtime_ns, ctime_ns, digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for (path, s, digest) in hashed {
                    stmt.execute(params![
                        path.as_os_str().as_bytes(),
                        s.dev as i64,
                        s.ino as i64,
                        s.size as i64,
                        s.mtime_ns,
                        s.ctime_ns,
                        digest.to_string()
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// A layer already compressed as `kind` (export and push reuse it).
    pub fn converted_layer(
        &self,
        diff_id: &Digest,
        kind: &str,
    ) -> Result<Option<Descriptor>, MetadataError> {
        let d = diff_id.to_string();
        let json: Option<String> = self.with(|c| {
            c.prepare_cached(
                "SELECT descriptor FROM converted_layers WHERE diff_id = ?1 AND kind = ?2",
            )?
            .query_row([&d, kind], |r| r.get(0))
            .optional()
        })?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    pub fn put_converted_layer(
        &self,
        diff_id: &Digest,
        kind: &str,
        descriptor: &Descriptor,
    ) -> Result<(), MetadataError> {
        let json = serde_json::to_string(descriptor).unwrap_or_default();
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO converted_layers (diff_id, kind, descriptor) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![diff_id.to_string(), kind, json])
            .map(drop)
        })
    }

    /// The kept summary of a layer blob (see `crate::summaries`).
    pub fn layer_summary(&self, blob: &Digest) -> Result<Option<Vec<u8>>, MetadataError> {
        let b = blob.to_string();
        self.with(|c| {
            c.prepare_cached("SELECT summary FROM layer_summaries WHERE blob = ?1")?
                .query_row([&b], |r| r.get(0))
                .optional()
        })
    }

    pub fn put_layer_summary(&self, blob: &Digest, summary: &[u8]) -> Result<(), MetadataError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO layer_summaries (blob, summary) VALUES (?1, ?2)",
            )?
            .execute(params![blob.to_string(), summary])
            .map(drop)
        })
    }

    /// Forgets what is known of the contents of blobs that were deleted
    /// (their summaries and file digests).
    pub fn forget_blobs(&self, blobs: &[Digest]) -> Result<(), MetadataError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut summaries =
                    tx.prepare_cached("DELETE FROM layer_summaries WHERE blob = ?1")?;
                let mut files = tx.prepare_cached("DELETE FROM layer_files WHERE blob = ?1")?;
                for blob in blobs {
                    summaries.execute([blob.to_string()])?;
                    files.execute([blob.to_string()])?;
                }
            }
            tx.commit()
        })
    }

    /// The content digests known for files of a layer blob, by path.
    pub fn layer_files(&self, blob: &Digest) -> Result<Vec<(String, Digest)>, MetadataError> {
        let b = blob.to_string();
        let rows: Vec<(String, String)> = self.with(|c| {
            c.prepare_cached("SELECT path, digest FROM layer_files WHERE blob = ?1")?
                .query_map([&b], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(path, digest)| Some((path, digest.parse().ok()?)))
            .collect())
    }

    /// Remembers the content digests of files of layer blobs: (blob,
    /// path, digest).
    pub fn put_layer_files(&self, files: &[(Digest, String, Digest)]) -> Result<(), MetadataError> {
        if files.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO layer_files (blob, path, digest) VALUES (?1, ?2, ?3)",
                )?;
                for (blob, path, digest) in files {
                    insert.execute(params![blob.to_string(), path, digest.to_string()])?;
                }
            }
            tx.commit()
        })
    }

    /// The checksum of a selection of another filesystem's files.
    pub fn source_sum(&self, key: &Digest) -> Result<Option<Digest>, MetadataError> {
        let k = key.to_string();
        let s: Option<String> = self.with(|c| {
            c.prepare_cached("SELECT digest FROM source_sums WHERE key = ?1")?
                .query_row([&k], |r| r.get(0))
                .optional()
        })?;
        Ok(s.and_then(|s| s.parse().ok()))
    }

    pub fn put_source_sum(&self, key: &Digest, sum: &Digest) -> Result<(), MetadataError> {
        let now = unix_now() as i64;
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO source_sums (key, digest, last_used) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key.to_string(), sum.to_string(), now])
            .map(drop)
        })
    }

    /// What the last build of a step saw.
    pub fn facts(&self, slot: &Digest) -> Result<Option<String>, MetadataError> {
        let k = slot.to_string();
        self.with(|c| {
            c.prepare_cached("SELECT facts FROM explain WHERE slot = ?1")?
                .query_row([&k], |r| r.get(0))
                .optional()
        })
    }

    /// Records what steps saw (one transaction).
    pub fn put_facts(&self, facts: &[(Digest, String)]) -> Result<(), MetadataError> {
        if facts.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO explain (slot, facts) VALUES (?1, ?2)",
                )?;
                for (slot, json) in facts {
                    stmt.execute(params![slot.to_string(), json])?;
                }
            }
            tx.commit()
        })
    }

    /// Forgets source checksums not used since `before` (unix seconds) and
    /// file hashes of files that no longer exist.
    pub fn prune_auxiliary(&self, before: u64) -> Result<(), MetadataError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM source_sums WHERE last_used < ?1",
                [before as i64],
            )
            .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> CacheRecord {
        CacheRecord {
            layers: vec![CachedLayer {
                descriptor: Descriptor::new(rbuild_oci::media_type::OCI_LAYER, Digest::of(&[n]), 1),
                diff_id: Digest::of(&[n]),
                created: None,
            }],
            size: 1,
        }
    }

    #[test]
    fn many_openers_of_a_new_database_all_succeed() {
        // Each connection is its own SQLite client, as separate processes
        // are: setting up a new database must not fail any of them.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let handles: Vec<_> = (0..6u8)
                .map(|n| {
                    let root = dir.path().to_path_buf();
                    std::thread::spawn(move || -> Result<(), MetadataError> {
                        let meta = Metadata::open(&root)?;
                        let key = Digest::of(&[n, 1]);
                        meta.put(&key, &record(n))?;
                        meta.touch(&[key])?;
                        assert_eq!(meta.get(&key)?, Some(record(n)));
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            assert_eq!(
                Metadata::open(dir.path()).unwrap().entries().unwrap().len(),
                6
            );
        }
    }

    fn wal_len(root: &Path) -> u64 {
        std::fs::metadata(root.join("metadata.db-wal")).map_or(0, |m| m.len())
    }

    /// Writes records until the log is past the checkpoint size.
    fn fill_wal(meta: &Metadata, root: &Path) -> Vec<Digest> {
        let mut keys = Vec::new();
        for n in 0..=u16::MAX {
            let key = Digest::of(&n.to_le_bytes());
            meta.put(&key, &record(n as u8)).unwrap();
            keys.push(key);
            if wal_len(root) > WAL_CHECKPOINT_BYTES {
                return keys;
            }
        }
        panic!("the write-ahead log never grew");
    }

    #[test]
    fn a_large_log_is_emptied_by_the_next_process_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let keys = fill_wal(&Metadata::open(dir.path()).unwrap(), dir.path());
        // Closing leaves it: no fsyncs on a process's way out.
        assert!(wal_len(dir.path()) > WAL_CHECKPOINT_BYTES);
        assert!(Metadata::open(dir.path()).unwrap().checkpointing());
        assert_eq!(wal_len(dir.path()), 0, "the log was not checkpointed");
        let meta = Metadata::open(dir.path()).unwrap();
        assert!(!meta.checkpointing(), "a small log is left alone");
        for key in &keys {
            assert!(meta.get(key).unwrap().is_some());
        }
    }

    #[test]
    fn a_log_grown_by_this_process_is_folded_in_beside_its_work() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(dir.path()).unwrap();
        assert!(!meta.checkpointing());
        let keys = fill_wal(&meta, dir.path());
        meta.checkpoint_if_large();
        assert!(meta.checkpointing());
        drop(meta);
        assert_eq!(wal_len(dir.path()), 0, "the log was not checkpointed");
        let meta = Metadata::open(dir.path()).unwrap();
        assert_eq!(meta.entries().unwrap().len(), keys.len());
    }

    #[test]
    fn the_checkpoint_does_not_wait_for_another_process_reading() {
        let dir = tempfile::tempdir().unwrap();
        let keys = fill_wal(&Metadata::open(dir.path()).unwrap(), dir.path());
        // Another client in the middle of a read transaction on the
        // current snapshot pins the log: it cannot be emptied now.
        let mut reader = connect(&dir.path().join("metadata.db")).unwrap();
        let tx = reader.transaction().unwrap();
        let count: i64 = tx
            .query_row("SELECT count(*) FROM cache", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count as usize, keys.len());
        let started = std::time::Instant::now();
        let meta = Metadata::open(dir.path()).unwrap();
        meta.put(&Digest::of(b"written meanwhile"), &record(1))
            .unwrap();
        drop(meta);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(wal_len(dir.path()) > 0, "the reader's snapshot was kept");
        drop(tx);
        let meta = Metadata::open(dir.path()).unwrap();
        assert_eq!(meta.entries().unwrap().len(), keys.len() + 1);
    }
}
