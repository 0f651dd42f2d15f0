//! The content store: blobs addressed by their sha256 digest.
//!
//! Layout (the blob part of an OCI image layout, so blobs can be hard-linked
//! straight into an exported layout):
//!
//! ```text
//! ROOT/blobs/sha256/<hex>   committed blobs, never modified
//! ROOT/tmp/<process>/       blobs being written (the process's scratch)
//! ```
//!
//! A blob is written to a temporary file, hashed while written, fsynced and
//! then renamed into place, so a reader sees either nothing or the whole
//! verified blob, and two processes writing the same blob both succeed.
//!
//! A build's own layers are the exception ([`PrehashedIngest::commit_deferred`]):
//! they are renamed into place at once and fsynced later, off the build's
//! critical path, and nothing names them durably (no cache record, no
//! image) before that sync has finished. A system crash in between can
//! leave such a blob unnamed and wrong; unnamed blobs are what GC removes.
//!
//! The directory is not synced per blob (that was a second fsync for every
//! layer): after a system crash a blob may be missing, never wrong. A
//! missing blob only costs a cache hit (lookups check that the blobs
//! exist); the one durable reference to blobs, the image store's names,
//! syncs the directory before it names anything ([`sync_names`]).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_oci::{BlobStore, BlobWriter, Digest, HashingWriter};
use tempfile::NamedTempFile;

use crate::scratch::ProcessScratch;
use crate::write_behind::WriteBehind;

/// Makes the names of the blobs committed below `root` durable (they are
/// once this returns, after a system crash too).
pub(crate) fn sync_names(root: &Path) -> io::Result<()> {
    File::open(root.join("blobs").join("sha256"))?.sync_all()
}

#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    tmp: Tmp,
}

/// Where blobs being written go.
#[derive(Debug, Clone)]
enum Tmp {
    Dir(PathBuf),
    /// A root's process scratch, created when the first blob is written.
    Scratch(Arc<ProcessScratch>),
}

impl ContentStore {
    /// Opens (creating if needed) the content store below `root`, writing
    /// blobs in progress to `tmp` (same filesystem, so renames work).
    pub fn open(root: &Path, tmp: &Path) -> io::Result<ContentStore> {
        fs::create_dir_all(tmp)?;
        ContentStore::open_with(root, Tmp::Dir(tmp.to_path_buf()))
    }

    /// [`ContentStore::open`] for a root, writing blobs in progress to the
    /// process's scratch directory, which is created when first needed.
    pub(crate) fn open_in_root(
        root: &Path,
        scratch: Arc<ProcessScratch>,
    ) -> io::Result<ContentStore> {
        ContentStore::open_with(root, Tmp::Scratch(scratch))
    }

    fn open_with(root: &Path, tmp: Tmp) -> io::Result<ContentStore> {
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs)?;
        Ok(ContentStore { blobs, tmp })
    }

    /// The directory for blobs being written (and the build's other
    /// scratch files), created if needed.
    pub(crate) fn scratch(&self) -> io::Result<&Path> {
        match &self.tmp {
            Tmp::Dir(dir) => Ok(dir),
            Tmp::Scratch(scratch) => scratch.ensure(),
        }
    }

    /// Where a blob is (or would be) stored.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Size of a stored blob.
    pub fn size(&self, digest: &Digest) -> io::Result<u64> {
        Ok(fs::metadata(self.path(digest))?.len())
    }

    /// Starts writing a blob whose digest is known only at the end.
    pub fn ingest(&self) -> io::Result<Ingest<'_>> {
        let file = NamedTempFile::new_in(self.scratch()?)?;
        let writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        Ok(Ingest {
            store: self,
            writer,
        })
    }

    /// Starts writing a blob whose writer computes its digest itself (a
    /// layer writer hashes its tar stream for the diff ID; an uncompressed
    /// layer's digest is the same), so the bytes are not hashed twice.
    pub fn ingest_prehashed(&self) -> io::Result<PrehashedIngest<'_>> {
        let file = NamedTempFile::new_in(self.scratch()?)?;
        Ok(PrehashedIngest {
            store: self,
            writer: WriteBehind::new(file),
        })
    }

    /// Stores `bytes` as a blob like [`BlobStore::write_bytes`], but
    /// without syncing it: the sync is returned for the caller to wait for
    /// before anything names the blob durably (None: the blob was there).
    pub(crate) fn write_bytes_deferred(
        &self,
        bytes: &[u8],
    ) -> io::Result<(Digest, Option<PendingSync>)> {
        let digest = Digest::of(bytes);
        if self.contains(&digest) {
            return Ok((digest, None));
        }
        let mut ingest = self.ingest_prehashed()?;
        ingest.write_all(bytes)?;
        let (_, sync) = ingest.commit_deferred(&digest)?;
        Ok((digest, Some(sync)))
    }

    /// Deletes a blob; a missing blob is not an error.
    pub fn delete(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored blob's digest (files that are not digests are skipped).
    pub fn list(&self) -> io::Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for entry in fs::read_dir(&self.blobs)? {
            let name = entry?.file_name();
            if let Some(d) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) {
                digests.push(d);
            }
        }
        digests.sort();
        Ok(digests)
    }

    fn commit(&self, file: NamedTempFile, digest: &Digest) -> io::Result<()> {
        let target = self.path(digest);
        if target.exists() {
            // Same digest, same bytes: another writer got there first.
            return Ok(());
        }
        file.as_file().sync_all()?;
        file.persist(&target).map_err(|e| e.error)?;
        Ok(())
    }

    /// Renames `file` into place as `digest` without syncing it.
    fn place(&self, file: NamedTempFile, digest: &Digest) -> io::Result<PendingSync> {
        let target = self.path(digest);
        // An existing blob is another writer's (perhaps not synced yet
        // either): the sync below is of whatever the name holds.
        if !target.exists() {
            file.persist(&target).map_err(|e| e.error)?;
        }
        Ok(PendingSync { path: target })
    }
}

/// A committed blob whose bytes may not have reached the disk yet.
#[must_use = "nothing may name the blob durably before it is synced"]
#[derive(Debug)]
pub(crate) struct PendingSync {
    path: PathBuf,
}

impl PendingSync {
    /// Makes the blob's bytes durable.
    pub(crate) fn wait(self) -> io::Result<()> {
        // fsync writes back the file's data whichever descriptor asks.
        File::open(&self.path)?.sync_all()
    }
}

/// A blob being written. Dropping it without [`Ingest::commit`] discards it.
pub struct Ingest<'a> {
    store: &'a ContentStore,
    writer: HashingWriter<BufWriter<NamedTempFile>>,
}

impl Ingest<'_> {
    /// Finishes the blob, verifying it against `expected` when given.
    pub fn commit(self, expected: Option<&Digest>) -> io::Result<(Digest, u64)> {
        let (digest, size, writer) = self.writer.finish();
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("digest mismatch: expected {expected}, got {digest}"),
            ));
        }
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        self.store.commit(file, &digest)?;
        Ok((digest, size))
    }
}

impl BlobWriter for Ingest<'_> {
    fn written(&self) -> u64 {
        self.writer.len()
    }

    fn commit(self: Box<Self>, expected: &Digest) -> io::Result<u64> {
        Ok(Ingest::commit(*self, Some(expected))?.1)
    }
}

impl Write for Ingest<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// A blob being written whose digest the caller computes over exactly the
/// bytes it writes. Dropping it without committing discards it.
pub struct PrehashedIngest<'a> {
    store: &'a ContentStore,
    writer: WriteBehind,
}

impl PrehashedIngest<'_> {
    /// Finishes the blob under `digest`, which the caller computed.
    pub fn commit(self, digest: &Digest) -> io::Result<u64> {
        let file = self.writer.finish()?;
        let size = file.as_file().metadata()?.len();
        self.store.commit(file, digest)?;
        Ok(size)
    }

    /// [`PrehashedIngest::commit`], but the blob is readable under its
    /// name before its bytes are synced: the caller waits for the returned
    /// sync before anything names the blob durably.
    pub(crate) fn commit_deferred(self, digest: &Digest) -> io::Result<(u64, PendingSync)> {
        let file = self.writer.finish()?;
        let size = file.as_file().metadata()?.len();
        let pending = self.store.place(file, digest)?;
        Ok((size, pending))
    }
}

impl Write for PrehashedIngest<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl BlobStore for ContentStore {
    /// A blob already present is not written again (a rebuild stores the
    /// same config and manifest: no temporary file, no fsync).
    fn write_bytes(&self, bytes: &[u8]) -> io::Result<Digest> {
        let digest = Digest::of(bytes);
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut reader = bytes;
        Ok(self.write(&mut reader, Some(&digest))?.0)
    }

    fn begin(&self) -> io::Result<Box<dyn BlobWriter + '_>> {
        Ok(Box::new(self.ingest()?))
    }

    fn open(&self, digest: &Digest) -> io::Result<File> {
        File::open(self.path(digest)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("blob {digest} not found in the content store"),
                )
            } else {
                e
            }
        })
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    fn write(&self, reader: &mut dyn Read, expected: Option<&Digest>) -> io::Result<(Digest, u64)> {
        if let Some(expected) = expected
            && self.contains(expected)
        {
            // Still consume the input so callers streaming an archive
            // stay positioned after this blob.
            let size = io::copy(reader, &mut io::sink())?;
            return Ok((*expected, size));
        }
        let mut ingest = self.ingest()?;
        io::copy(reader, &mut ingest)?;
        ingest.commit(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_verifies_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path(), &dir.path().join("tmp")).unwrap();
        let d = store.write_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(store.read_all(&d).unwrap(), b"hello");
        assert_eq!(store.list().unwrap(), vec![d]);

        let wrong = Digest::of(b"other");
        let err = store.write(&mut &b"hello!"[..], Some(&wrong)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!store.contains(&wrong));
        // Nothing half-written is left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_deferred_commit_is_readable_at_once_and_synced_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path(), &dir.path().join("tmp")).unwrap();
        let write = |bytes: &[u8]| {
            let mut ingest = store.ingest_prehashed().unwrap();
            ingest.write_all(bytes).unwrap();
            ingest.commit_deferred(&Digest::of(b"layer")).unwrap()
        };
        let (size, sync) = write(b"layer");
        assert_eq!(size, 5);
        assert_eq!(store.read_all(&Digest::of(b"layer")).unwrap(), b"layer");
        // A second writer of the same blob keeps the first one's file and
        // syncs that.
        let (_, again) = write(b"layer");
        sync.wait().unwrap();
        again.wait().unwrap();
        assert_eq!(store.list().unwrap(), vec![Digest::of(b"layer")]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
