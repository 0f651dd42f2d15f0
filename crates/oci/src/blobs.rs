//! Where blobs live, as seen by code that reads or writes images.

use std::fs::File;
use std::io::{self, Read, Write};

use crate::Digest;

/// A content-addressed blob store. The solver's content store implements
/// it; exporters and importers only need this much.
pub trait BlobStore: Sync {
    /// Opens the blob for reading.
    fn open(&self, digest: &Digest) -> io::Result<File>;

    /// Whether the blob is present.
    fn contains(&self, digest: &Digest) -> bool;

    /// Stores everything `reader` yields and returns its digest and size.
    /// When `expected` is given and the content does not match it, nothing
    /// is stored and the error's kind is `InvalidData`.
    fn write(&self, reader: &mut dyn Read, expected: Option<&Digest>) -> io::Result<(Digest, u64)>;

    /// Starts writing a blob piece by piece, for writers that arrive in
    /// parts (a download that may resume after a dropped connection).
    fn begin(&self) -> io::Result<Box<dyn BlobWriter + '_>>;

    /// Reads a whole (small) blob, such as a manifest or config.
    fn read_all(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open(digest)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Stores a byte string (a manifest, a config).
    fn write_bytes(&self, bytes: &[u8]) -> io::Result<Digest> {
        let mut reader = bytes;
        Ok(self.write(&mut reader, None)?.0)
    }
}

/// A blob being written in parts, hashed as it is written. Dropping it
/// without [`BlobWriter::commit`] stores nothing.
pub trait BlobWriter: Write + Send {
    /// How many bytes were written so far.
    fn written(&self) -> u64;

    /// Stores the blob if its content has digest `expected`; otherwise
    /// stores nothing and fails with kind `InvalidData`.
    fn commit(self: Box<Self>, expected: &Digest) -> io::Result<u64>;
}
