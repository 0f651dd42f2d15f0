//! Making and applying layers.
//!
//! - [`layer`]: deterministic layer tarballs (sorted entries, numeric owners,
//!   no access or change times) and their diff IDs.
//! - [`copy`]: the files a `COPY` from a build context adds, as a layer.
//! - [`basefs`]: what a base image's filesystem holds, read from its layers,
//!   for decisions such as "is the destination an existing directory?" and
//!   user and group lookups.
//! - [`apply`]: safe extraction of layers onto a directory.
//! - [`summary`]: what a layer does to the file view, read once from its
//!   tarball, without its contents.
//! - [`compression`]: reading gzip, zstd or plain layers alike.

pub mod apply;
pub mod basefs;
pub mod compression;
pub mod container;
pub mod copy;
pub mod diff;
pub mod layer;
pub mod patterns;
pub mod snapshot;
pub mod summary;
