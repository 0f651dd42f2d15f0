//! Content digests (`sha256:<64 hex>`).

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest. Only sha256 is accepted: it is the only
/// algorithm Docker, BuildKit and registries use for image content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid(String),
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    UnsupportedAlgorithm(String),
}

impl Digest {
    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest of everything `reader` yields.
    pub fn of_reader(mut reader: impl Read) -> io::Result<Digest> {
        let mut hasher = Hasher::new();
        io::copy(&mut reader, &mut hasher)?;
        Ok(hasher.finish())
    }

    /// Parses the 64 lowercase hex digits without the `sha256:` prefix.
    pub fn from_hex(hex_digits: &str) -> Result<Digest, DigestError> {
        let invalid = || DigestError::Invalid(hex_digits.to_string());
        if hex_digits.len() != 64 || hex_digits.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| invalid())?;
        Ok(Digest(bytes))
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, as `docker images` shows image IDs.
    pub fn short(&self) -> String {
        let mut hex = self.hex();
        hex.truncate(12);
        hex
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        match s.split_once(':') {
            Some(("sha256", hex_digits)) => {
                Digest::from_hex(hex_digits).map_err(|_| DigestError::Invalid(s.to_string()))
            }
            Some((algorithm, _)) if !algorithm.is_empty() => {
                Err(DigestError::UnsupportedAlgorithm(s.to_string()))
            }
            _ => Err(DigestError::Invalid(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Streaming sha256 that is also a `Write` sink, so a digest can be
/// computed in the same pass that writes the bytes somewhere else.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest(self.inner.finalize().into())
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes everything written through it, so the digest of
/// a stream comes out of the same pass that stores it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// How many bytes were written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The digest and size of what was written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        let size = self.hasher.len();
        (self.hasher.finish(), size, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_input() {
        let d = Digest::of(b"");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!(
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                .parse::<Digest>()
                .is_err()
        );
        assert!(matches!(
            "sha512:00".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!("e3b0".parse::<Digest>().is_err());
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.len(), 11);
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }
}
