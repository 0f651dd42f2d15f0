//! Layer summaries for a build: what each layer does to the file view
//! (see [`rbuild_exec::summary`]), read from its blob at most once.
//!
//! Summaries of compressed blobs (base image layers) are kept in the
//! metadata database, so a build that starts from a cached step no longer
//! decompresses its base image to learn the base's users and directories.
//! Those of uncompressed blobs (the layers builds write) are not kept:
//! reading one seeks from header to header, which costs about what parsing
//! a kept copy would, without growing the database by the size of every
//! layer's file list. Within a build, each summary is read once and
//! shared by every stage that needs it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use rbuild_exec::summary::LayerSummary;
use rbuild_oci::{BlobStore, Digest};

use crate::ContentStore;
use crate::metadata::Metadata;

/// The layer summaries one build uses.
pub(crate) struct LayerSummaries {
    meta: Arc<Metadata>,
    read: Mutex<HashMap<Digest, Arc<LayerSummary>>>,
}

impl LayerSummaries {
    pub(crate) fn new(meta: Arc<Metadata>) -> LayerSummaries {
        LayerSummaries {
            meta,
            read: Mutex::default(),
        }
    }

    /// The summary of the layer blob `blob`: read before in this build,
    /// kept in the database, or read from the blob now (and kept if the
    /// blob is compressed).
    pub(crate) fn get(&self, store: &ContentStore, blob: &Digest) -> io::Result<Arc<LayerSummary>> {
        if let Some(summary) = self.memo().get(blob) {
            return Ok(Arc::clone(summary));
        }
        // A kept summary that cannot be read (another format version,
        // damage) is read again from the blob and replaced.
        let kept = self
            .meta
            .layer_summary(blob)
            .ok()
            .flatten()
            .and_then(|bytes| LayerSummary::from_bytes(&bytes));
        let summary = match kept {
            Some(summary) => summary,
            None => {
                let (read, compressed) = LayerSummary::read_blob(store.open(blob)?)?;
                if compressed {
                    // Losing it costs the next build time, not correctness.
                    let _ = self.meta.put_layer_summary(blob, &read.to_bytes());
                }
                read
            }
        };
        let summary = Arc::new(summary);
        self.memo().insert(*blob, Arc::clone(&summary));
        Ok(summary)
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<LayerSummary>>> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_exec::basefs::BaseFs;
    use std::io::Write;

    /// A layer with an /etc/passwd naming `user` (uid 7).
    fn tar_with_user(user: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let line = format!("{user}:x:7:7::/:/bin/sh\n");
        let mut h = tar::Header::new_gnu();
        h.set_size(line.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "etc/passwd", line.as_bytes())
            .unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn uid_of(summary: &LayerSummary, user: &str) -> Option<u32> {
        let mut fs = BaseFs::empty();
        fs.apply_summary(summary);
        fs.owner(user).ok().map(|o| o.uid)
    }

    #[test]
    fn a_compressed_layer_is_summarized_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::Root::open(dir.path()).unwrap();
        let blob = root
            .content
            .write_bytes(&gzip(&tar_with_user("app")))
            .unwrap();
        let first = LayerSummaries::new(root.metadata().unwrap());
        assert_eq!(
            uid_of(&first.get(&root.content, &blob).unwrap(), "app"),
            Some(7)
        );

        // Another build reads the kept summary, never the blob.
        std::fs::write(root.content.path(&blob), b"not a layer").unwrap();
        let second = LayerSummaries::new(root.metadata().unwrap());
        assert_eq!(
            uid_of(&second.get(&root.content, &blob).unwrap(), "app"),
            Some(7)
        );

        // A damaged kept summary is read again from the blob and replaced.
        std::fs::write(root.content.path(&blob), gzip(&tar_with_user("other"))).unwrap();
        let meta = root.metadata().unwrap();
        meta.put_layer_summary(&blob, b"{\"damaged").unwrap();
        let third = LayerSummaries::new(Arc::clone(&meta));
        assert_eq!(
            uid_of(&third.get(&root.content, &blob).unwrap(), "other"),
            Some(7)
        );
        assert!(
            meta.layer_summary(&blob)
                .unwrap()
                .and_then(|b| LayerSummary::from_bytes(&b))
                .is_some()
        );

        // Deleting the blob forgets its summary.
        meta.forget_blobs(&[blob]).unwrap();
        assert_eq!(meta.layer_summary(&blob).unwrap(), None);
    }

    #[test]
    fn an_uncompressed_layer_is_read_each_build_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::Root::open(dir.path()).unwrap();
        let blob = root.content.write_bytes(&tar_with_user("app")).unwrap();
        let summaries = LayerSummaries::new(root.metadata().unwrap());
        assert_eq!(
            uid_of(&summaries.get(&root.content, &blob).unwrap(), "app"),
            Some(7)
        );
        assert_eq!(root.metadata().unwrap().layer_summary(&blob).unwrap(), None);
    }
}
