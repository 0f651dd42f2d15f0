//! Reading layers whatever their compression: gzip and zstd are told
//! apart by their first bytes, as containerd does, not by media types
//! (which archives and registries sometimes get wrong).

use std::io::{self, BufReader, Cursor, Read};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The uncompressed tar stream of a layer that may be gzip or zstd
/// compressed (or neither). Concatenated gzip members and zstd frames are
/// read as one stream.
pub fn decompress<'a>(mut layer: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let n = crate::apply::read_prefix(&mut layer, &mut magic)?;
    let head = magic.get(..n).unwrap_or_default().to_vec();
    // The sniffed bytes go back in front of the rest of the stream.
    let is_gzip = head.starts_with(&GZIP_MAGIC);
    let is_zstd = head.starts_with(&ZSTD_MAGIC);
    debug_assert_eq!(is_gzip || is_zstd, is_compressed(&head));
    let stream = BufReader::with_capacity(1 << 16, Cursor::new(head).chain(layer));
    if is_gzip {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(stream)))
    } else if is_zstd {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(stream)?))
    } else {
        Ok(Box::new(stream))
    }
}

/// Whether a layer starting with `head` (its first four bytes, or all of
/// it if shorter) is compressed, as [`decompress`] tells.
pub fn is_compressed(head: &[u8]) -> bool {
    head.starts_with(&GZIP_MAGIC) || head.starts_with(&ZSTD_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(r: &mut dyn Read) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_plain_gzip_and_zstd_alike() {
        let data = b"a tar stream, or anything".repeat(1000);
        assert_eq!(read_all(&mut decompress(&data[..]).unwrap()), data);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let mut gz = gz.finish().unwrap();
        // A second member: one stream.
        let mut second = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        second.write_all(b"more").unwrap();
        gz.extend(second.finish().unwrap());
        let mut want = data.clone();
        want.extend_from_slice(b"more");
        assert_eq!(read_all(&mut decompress(&gz[..]).unwrap()), want);

        let mut zst = zstd::stream::encode_all(&data[..], 3).unwrap();
        zst.extend(zstd::stream::encode_all(&b"more"[..], 3).unwrap());
        assert_eq!(read_all(&mut decompress(&zst[..]).unwrap()), want);

        // Shorter than any magic number.
        assert_eq!(read_all(&mut decompress(&b"x"[..]).unwrap()), b"x");
        assert!(read_all(&mut decompress(&b""[..]).unwrap()).is_empty());
    }
}
