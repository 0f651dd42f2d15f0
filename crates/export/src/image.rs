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
    let bytes = store
        .read_all(&digest)
        .map_err(ExportError::blob(&digest))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| ExportError::Json {
            what: format!("manifest {digest}"),
            source,
        })?;
    let config_digest = manifest.config.digest;
    let bytes = store
        .read_all(&config_digest)
        .map_err(ExportError::blob(&config_digest))?;
    let config: ImageConfig =
        serde_json::from_slice(&bytes).map_err(|source| ExportError::Json {
            what: format!("image config {config_digest}"),
            source,
        })?;
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
