//! Executing build plans, and the stores builds read and write.
//!
//! - [`Root`]: rbuild's state directory, holding the [`ContentStore`] (blobs
//!   by digest) and the [`ImageStore`] (names to manifests).
//! - [`build`]: runs a frontend [`Plan`](rbuild_frontend::Plan), stage by
//!   stage, into an image in the content store.

mod background;
mod build;
mod cache_io;
mod cache_key;
pub(crate) mod checksum;
mod content;
mod exec_step;
mod explain;
pub mod gc;
mod images;
mod layer_files;
pub mod metadata;
mod mounts;
pub mod progress;
mod scheduler;
mod scratch;
mod steps;
mod summaries;
mod write_behind;

use std::io;
use std::path::{Path, PathBuf};

pub use build::{BuildError, BuildOptions, BuiltImage, CachePolicy, Executor, build};
pub use cache_io::{
    CONFIG_TYPE as CACHE_CONFIG_TYPE, CacheBlobs, CacheDest, CacheExport, CacheImport,
    CacheIoError, CacheMode, ImportedCache,
};
pub use content::{ContentStore, Ingest, PrehashedIngest};
pub use images::{ImageRecord, ImageStore, ImageStoreError};
pub use mounts::{SecretSource, parse_ssh};

/// A root's metadata database: opened, or being opened on another thread.
#[derive(Debug, Default)]
struct MetadataSlot {
    opened: std::sync::OnceLock<std::sync::Arc<metadata::Metadata>>,
    opening: std::sync::Mutex<
        Option<std::thread::JoinHandle<Result<metadata::Metadata, metadata::MetadataError>>>,
    >,
}

/// rbuild's state directory.
#[derive(Debug, Clone)]
pub struct Root {
    path: PathBuf,
    pub content: ContentStore,
    pub images: ImageStore,
    scratch: std::sync::Arc<scratch::ProcessScratch>,
    metadata: std::sync::Arc<MetadataSlot>,
}

impl Root {
    /// Opens `path`, creating the layout on first use, and sweeps what
    /// dead rbuild processes left in its scratch area.
    pub fn open(path: &Path) -> Result<Root, ImageStoreError> {
        let io_err = |source: io::Error| ImageStoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io_err)?;
        let scratch = std::sync::Arc::new(
            scratch::ProcessScratch::create(&path.join("tmp")).map_err(io_err)?,
        );
        let content =
            ContentStore::open_in_root(path, std::sync::Arc::clone(&scratch)).map_err(io_err)?;
        let images = ImageStore::open(path)?;
        Ok(Root {
            path: path.to_path_buf(),
            content,
            images,
            scratch,
            metadata: Default::default(),
        })
    }

    /// The build cache's metadata database, opened on first use.
    pub fn metadata(&self) -> Result<std::sync::Arc<metadata::Metadata>, metadata::MetadataError> {
        if let Some(m) = self.metadata.opened.get() {
            return Ok(m.clone());
        }
        let opening = self
            .metadata
            .opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let opened = match opening.map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(opened))) => opened,
            // A failed or panicked opening is tried again here, for its error.
            _ => metadata::Metadata::open(&self.path)?,
        };
        let opened = std::sync::Arc::new(opened);
        Ok(self.metadata.opened.get_or_init(|| opened).clone())
    }

    /// Starts opening the metadata database on another thread, for a
    /// command that will need it: SQLite's first connection to a database
    /// in WAL mode sets up its shared index, most of a millisecond that
    /// can go on while the command reads its input. [`Root::metadata`]
    /// waits for it.
    pub fn open_metadata_early(&self) {
        if self.metadata.opened.get().is_some() {
            return;
        }
        let mut opening = self
            .metadata
            .opening
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if opening.is_none() {
            let path = self.path.clone();
            *opening = std::thread::Builder::new()
                .name("rbuild-metadata".into())
                .spawn(move || metadata::Metadata::open(&path))
                .ok();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process's directory for short-lived files, on the same
    /// filesystem as the store, created if it does not exist yet; removed
    /// when the last `Root` clone drops, or by the next rbuild if this
    /// process is killed.
    pub fn tmp_dir(&self) -> io::Result<PathBuf> {
        self.scratch.ensure().map(Path::to_path_buf)
    }

    /// Where [`Root::tmp_dir`] is, whether or not it exists yet (a build
    /// creates it when a step first needs it).
    pub fn tmp_path(&self) -> PathBuf {
        self.scratch.path().to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_opened_early_is_the_one_used() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.open_metadata_early();
        root.open_metadata_early(); // a second call starts nothing new
        let first = root.metadata().unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &root.metadata().unwrap()));
        assert_eq!(first.get(&rbuild_oci::Digest::of(b"key")).unwrap(), None);

        // An early open that failed is tried again, for its error.
        let root = Root::open(&dir.path().join("other")).unwrap();
        std::fs::create_dir(root.path().join("metadata.db")).unwrap();
        root.open_metadata_early();
        assert!(root.metadata().is_err());
    }
}
