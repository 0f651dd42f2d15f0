//! Executing build plans, and the stores builds read and write.
//!
//! - [`Root`]: rbuild's state directory, holding the [`ContentStore`] (blobs
//!   by digest) and the [`ImageStore`] (names to manifests).
//! - [`build`]: runs a frontend [`Plan`](rbuild_frontend::Plan), stage by
//!   stage, into an image in the content store.

mod build;
mod content;
mod exec_step;
mod images;
mod mounts;

use std::io;
use std::path::{Path, PathBuf};

pub use build::{BuildError, BuildOptions, BuiltImage, Executor, build};
pub use content::{ContentStore, Ingest};
pub use images::{ImageRecord, ImageStore, ImageStoreError};
pub use mounts::{SecretSource, parse_ssh};

/// rbuild's state directory.
#[derive(Debug, Clone)]
pub struct Root {
    path: PathBuf,
    pub content: ContentStore,
    pub images: ImageStore,
}

impl Root {
    /// Opens `path`, creating the layout on first use.
    pub fn open(path: &Path) -> Result<Root, ImageStoreError> {
        let io_err = |source: io::Error| ImageStoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io_err)?;
        let content = ContentStore::open(path).map_err(io_err)?;
        let images = ImageStore::open(path)?;
        Ok(Root {
            path: path.to_path_buf(),
            content,
            images,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A directory for short-lived files on the same filesystem as the store.
    pub fn tmp_dir(&self) -> PathBuf {
        self.path.join("tmp")
    }
}
