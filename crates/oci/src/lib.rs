//! The OCI image vocabulary shared by all of rbuild's crates.
//!
//! Every other crate speaks in these types: a [`Digest`] rather than a
//! string, a [`Reference`] that is already normalized the way docker
//! normalizes names, and serde models of the image config, manifest and
//! index whose JSON is what Docker and BuildKit write.

mod blobs;
mod digest;
mod image;
pub mod path;
mod platform;
mod reference;
pub mod time;

pub use blobs::{BlobStore, BlobWriter};
pub use digest::{Digest, DigestError, Hasher, HashingWriter};
pub use image::{
    Descriptor, HealthConfig, History, ImageConfig, Index, Manifest, RootFs, RuntimeConfig,
    annotation, media_type,
};
pub use platform::Platform;
pub use reference::{DEFAULT_DOMAIN, Reference, ReferenceError};
