//! An image as exporters see it: its names, manifest and config.

use rbuild_oci::{BlobStore, Descriptor, ImageConfig, Manifest, Reference};

use crate::ExportError;

/// An image to export, read from the blob store.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// Names to record in the output (may be empty).
    pub names: Vec<Reference>,
    pub manifest_descriptor: Descriptor,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

/// Reads an image's manifest and config from `store`.
pub fn load_image(
    store: &dyn BlobStore,
    manifest_descriptor: Descriptor,
    names: Vec<Reference>,
) -> Result<ImageRef, ExportError> {
    let digest = manifest_descriptor.digest;
    let manifest: Manifest = read_json_blob(store, &digest, "manifest")?;
    let config_digest = manifest.config.digest;
    let config: ImageConfig = read_json_blob(store, &config_digest, "image config")?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ExportError::Invalid(format!(
            "image {digest}: {} layers but {} diff_ids in its config",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(ImageRef {
        names,
        manifest_descriptor,
        manifest,
        config,
    })
}

/// Reads and parses a JSON blob (a manifest, config or index).
pub(crate) fn read_json_blob<T: serde::de::DeserializeOwned>(
    store: &dyn BlobStore,
    digest: &rbuild_oci::Digest,
    what: &str,
) -> Result<T, ExportError> {
    let bytes = store.read_all(digest).map_err(ExportError::blob(digest))?;
    serde_json::from_slice(&bytes).map_err(|source| ExportError::Json {
        what: format!("{what} {digest}"),
        source,
    })
}
