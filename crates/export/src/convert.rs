//! An image with its layers in the compression an output wants.
//!
//! rbuild stores the layers it builds uncompressed (a RUN on top reads
//! them, and hashing them once gives both digest and diff ID). An OCI
//! layout or a registry wants them gzip (or zstd) compressed, a docker-save
//! archive uncompressed. Converting writes the compressed blobs into the
//! store and returns the image with a new manifest; the config, and so the
//! image ID, stays the same. What a layer compressed to is remembered
//! ([`ConvertedLayers`]), so exporting or pushing the same image again
//! compresses nothing.

use rbuild_oci::{BlobStore, Descriptor, Digest, Manifest, media_type};

use crate::compress::{Compression, compress};
use crate::layout::store_json;
use crate::{ExportError, ImageRef};

/// What an output asks of layers: `compression=`, `compression-level=`,
/// `force-compression=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCompression {
    pub compression: Compression,
    /// Recompress layers already compressed another way (by default a
    /// pulled base's gzip layers stay as they are in a zstd export, as with
    /// BuildKit).
    pub force: bool,
}

/// Remembers which blob a layer became in each compression.
pub trait ConvertedLayers: Sync {
    fn get(&self, diff_id: &Digest, kind: &str) -> Option<Descriptor>;
    fn put(&self, diff_id: &Digest, kind: &str, blob: &Descriptor);
}

/// A [`ConvertedLayers`] that remembers nothing.
pub struct NoMemory;

impl ConvertedLayers for NoMemory {
    fn get(&self, _: &Digest, _: &str) -> Option<Descriptor> {
        None
    }
    fn put(&self, _: &Digest, _: &str, _: &Descriptor) {}
}

/// The compression a layer media type says.
fn compression_of(media: &str) -> Option<Kind> {
    match media {
        media_type::OCI_LAYER | media_type::DOCKER_LAYER => Some(Kind::Uncompressed),
        media_type::OCI_LAYER_GZIP | media_type::DOCKER_LAYER_GZIP => Some(Kind::Gzip),
        media_type::OCI_LAYER_ZSTD => Some(Kind::Zstd),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uncompressed,
    Gzip,
    Zstd,
}

fn kind_of(c: Compression) -> Kind {
    match c {
        Compression::Uncompressed => Kind::Uncompressed,
        Compression::Gzip { .. } => Kind::Gzip,
        Compression::Zstd { .. } => Kind::Zstd,
    }
}

/// The key a conversion is remembered by: the algorithm and level.
fn memory_key(c: Compression) -> String {
    match c {
        Compression::Uncompressed => "uncompressed".into(),
        Compression::Gzip { level } => format!("gzip-{level}"),
        Compression::Zstd { level } => format!("zstd-{level}"),
    }
}

/// `image` with every layer in the wanted compression; `image` itself when
/// nothing changes. New blobs and the new manifest go into `store`.
pub fn convert_image(
    store: &dyn BlobStore,
    image: &ImageRef,
    want: LayerCompression,
    memory: &dyn ConvertedLayers,
    threads: usize,
) -> Result<ImageRef, ExportError> {
    let target = kind_of(want.compression);
    let key = memory_key(want.compression);
    let mut layers = Vec::with_capacity(image.manifest.layers.len());
    let mut changed = false;
    for (layer, diff_id) in image
        .manifest
        .layers
        .iter()
        .zip(&image.config.rootfs.diff_ids)
    {
        let current = compression_of(&layer.media_type);
        let keep = match current {
            // Foreign layers (non-distributable, unknown types) as they are.
            None => true,
            Some(k) if k == target => !want.force || target == Kind::Uncompressed,
            // A compressed layer stays so unless forced; an uncompressed
            // one is always compressed (and a compressed one is always
            // decompressed for an uncompressed output).
            Some(k) => k != Kind::Uncompressed && target != Kind::Uncompressed && !want.force,
        };
        if keep {
            layers.push(layer.clone());
            continue;
        }
        changed = true;
        layers.push(convert_layer(
            store,
            layer,
            diff_id,
            want.compression,
            &key,
            memory,
            threads,
        )?);
    }
    if !changed {
        return Ok(image.clone());
    }
    // The same bytes under OCI's names, in what is now an OCI manifest.
    for layer in &mut layers {
        let oci = match layer.media_type.as_str() {
            media_type::DOCKER_LAYER => media_type::OCI_LAYER,
            media_type::DOCKER_LAYER_GZIP => media_type::OCI_LAYER_GZIP,
            _ => continue,
        };
        layer.media_type = oci.to_string();
    }
    let mut config = image.manifest.config.clone();
    if config.media_type == media_type::DOCKER_CONFIG {
        // The manifest becomes an OCI one (zstd has no docker media type).
        config.media_type = media_type::OCI_CONFIG.to_string();
    }
    let mut manifest = Manifest::new(config, layers);
    manifest.annotations = image.manifest.annotations.clone();
    let (digest, size) = store_json(store, "converted manifest", &manifest)?;
    let mut descriptor = Descriptor::new(media_type::OCI_MANIFEST, digest, size);
    descriptor.platform = image.manifest_descriptor.platform.clone();
    Ok(ImageRef {
        names: image.names.clone(),
        manifest_descriptor: descriptor,
        manifest,
        config: image.config.clone(),
    })
}

/// The blobs `image`'s layers are already known to have become in `want`
/// (for finding them in a registry without compressing anything).
pub fn remembered_layers(
    image: &ImageRef,
    want: LayerCompression,
    memory: &dyn ConvertedLayers,
) -> Vec<Descriptor> {
    let key = memory_key(want.compression);
    image
        .config
        .rootfs
        .diff_ids
        .iter()
        .filter_map(|d| memory.get(d, &key))
        .collect()
}

fn convert_layer(
    store: &dyn BlobStore,
    layer: &Descriptor,
    diff_id: &Digest,
    compression: Compression,
    key: &str,
    memory: &dyn ConvertedLayers,
    threads: usize,
) -> Result<Descriptor, ExportError> {
    if let Some(known) = memory.get(diff_id, key)
        && store.contains(&known.digest)
    {
        return Ok(known);
    }
    let source = store
        .open(&layer.digest)
        .map_err(ExportError::blob(&layer.digest))?;
    let mut tar =
        rbuild_exec::compression::decompress(source).map_err(ExportError::blob(&layer.digest))?;
    let mut writer = store
        .begin()
        .map_err(ExportError::io("storing a compressed layer"))?;
    let done = compress(&mut tar, &mut writer, compression, threads)
        .map_err(ExportError::blob(&layer.digest))?;
    if done.diff_id != *diff_id {
        return Err(ExportError::Invalid(format!(
            "layer {} holds {} but the image config says {diff_id}",
            layer.digest, done.diff_id
        )));
    }
    writer
        .commit(&done.digest)
        .map_err(ExportError::io("storing a compressed layer"))?;
    let blob = Descriptor::new(compression.oci_media_type(), done.digest, done.size);
    memory.put(diff_id, key, &blob);
    Ok(blob)
}
