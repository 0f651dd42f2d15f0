//! Content digests of the files in layer blobs, kept in the metadata
//! database, so that the checksum of a `COPY --from` selection reads only
//! the files it has not read from their layer before: a stage whose last
//! steps changed still holds the big files of its earlier, cached steps,
//! and those are not hashed again. BuildKit keeps its content checksums
//! per snapshot for the same reason.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rbuild_exec::summary::FileOrigins;
use rbuild_oci::Digest;

use crate::checksum::{ChecksumError, FileStamp, KnownHashes, Selection, checksum_unpacked};
use crate::metadata::Metadata;

/// Smaller files are read again each time: cheaper than keeping them.
const MIN_KEPT_SIZE: u64 = 64 * 1024;

/// The checksum of a selection from a tree unpacked from layers (`sel`'s
/// root), whose regular files came from the layer blobs `origins` says:
/// digests known for a file of its layer are used without reading it,
/// and the digests of big files read now are kept for next time (losing
/// them costs only time).
pub(crate) fn checksum(
    meta: &Metadata,
    sel: &Selection<'_>,
    origins: &FileOrigins<Digest>,
) -> Result<Digest, ChecksumError> {
    let known = Unpacked::load(meta, sel.root, origins);
    let sum = checksum_unpacked(sel, &known)?;
    let read: Vec<(Digest, String, Digest)> = sum
        .hashed
        .iter()
        .filter(|(_, stamp, _)| stamp.size >= MIN_KEPT_SIZE)
        .filter_map(|(host, _, digest)| {
            let rel = host.strip_prefix(sel.root).ok()?.to_str()?;
            let blob = origins.get(rel)?;
            Some((*blob, rel.to_string(), *digest))
        })
        .collect();
    let _ = meta.put_layer_files(&read);
    Ok(sum.digest)
}

/// Known digests of an unpacked tree's files, by host path: the tree was
/// unpacked by this build and nothing else writes it, so a file's stamp
/// does not matter.
struct Unpacked {
    by_path: HashMap<PathBuf, Digest>,
}

impl Unpacked {
    fn load(meta: &Metadata, root: &Path, origins: &FileOrigins<Digest>) -> Unpacked {
        let blobs: HashSet<Digest> = origins.iter().map(|(_, blob)| *blob).collect();
        let mut by_path = HashMap::new();
        for blob in blobs {
            // Unreadable rows mean reading the files: slower, not wrong.
            for (path, digest) in meta.layer_files(&blob).unwrap_or_default() {
                if origins.get(&path) == Some(&blob) {
                    by_path.insert(root.join(&path), digest);
                }
            }
        }
        Unpacked { by_path }
    }
}

impl KnownHashes for Unpacked {
    fn get(&self, path: &Path, _stamp: &FileStamp) -> Option<Digest> {
        self.by_path.get(path).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_exec::layer::{Entry, EntryKind, LayerWriter};
    use rbuild_exec::summary::LayerSummary;

    fn layer(files: &[(&str, Vec<u8>)]) -> LayerSummary {
        let mut w = LayerWriter::new(Vec::new());
        for (path, content) in files {
            w.add(&Entry {
                path: path.to_string(),
                kind: EntryKind::Bytes(content.clone()),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                xattrs: Vec::new(),
            })
            .unwrap();
        }
        LayerSummary::read(&w.finish().unwrap().2[..]).unwrap()
    }

    #[test]
    fn big_files_of_a_layer_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(dir.path()).unwrap();
        let tree = tempfile::tempdir().unwrap();
        let big = vec![7u8; MIN_KEPT_SIZE as usize];
        std::fs::write(tree.path().join("big"), &big).unwrap();
        std::fs::write(tree.path().join("small"), b"small").unwrap();
        let blob = Digest::of(b"the layer");
        let mut origins = FileOrigins::default();
        origins.apply(
            &layer(&[("big", big.clone()), ("small", b"small".to_vec())]),
            &blob,
        );
        let sources = [".".to_string()];
        let sel = Selection {
            root: tree.path(),
            sources: &sources,
            exclude: None,
            copy_exclude: None,
            parents: false,
            keep_owners: true,
        };
        let first = checksum(&meta, &sel, &origins).unwrap();
        assert_eq!(
            meta.layer_files(&blob).unwrap(),
            [("big".to_string(), Digest::of(&big))],
            "the big file is kept, the small one is not"
        );
        assert_eq!(checksum(&meta, &sel, &origins).unwrap(), first);

        // The kept digest is believed without reading the file: a false
        // one shows in the checksum.
        meta.put_layer_files(&[(blob, "big".into(), Digest::of(b"not it"))])
            .unwrap();
        assert_ne!(checksum(&meta, &sel, &origins).unwrap(), first);
        // Only for the layer it was read from.
        let mut elsewhere = FileOrigins::default();
        elsewhere.apply(
            &layer(&[("big", big.clone()), ("small", b"small".to_vec())]),
            &Digest::of(b"another layer"),
        );
        assert_eq!(checksum(&meta, &sel, &elsewhere).unwrap(), first);
    }
}
