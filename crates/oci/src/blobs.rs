//! Where blobs live, as seen by code that reads or writes images.

use std::fs::File;
use std::io::{self, Read};

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
