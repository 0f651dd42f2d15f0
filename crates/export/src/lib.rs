//! Moving images in and out of rbuild: OCI image layouts (directory or
//! tarball), `docker save` tarballs, and root filesystems (a directory or a
//! tarball of the image's merged layers).
//!
//! Everything here reads and writes blobs through [`BlobStore`], so it works
//! on the solver's content store without knowing where it lives.

mod archive;
pub mod compress;
mod convert;
mod error;
mod image;
mod import;
mod layout;
pub mod registry;
mod rootfs;

pub use archive::Target;
pub use convert::{ConvertedLayers, LayerCompression, NoMemory, convert_image, remembered_layers};
pub use error::ExportError;
pub use image::{ImageRef, load_image};
pub use import::{Imported, import, import_reader};
pub use layout::{write_docker_archive, write_oci_layout};
pub use rootfs::{write_rootfs_dir, write_rootfs_tar};
