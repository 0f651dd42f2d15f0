//! Layers in the compression an output wants, converted once: what each
//! layer became is remembered in the build cache's database, so exporting
//! or pushing the same image again compresses nothing.

use std::sync::Arc;

use anyhow::Result;
use rbuild_export::{ConvertedLayers, ImageRef, LayerCompression, convert_image};
use rbuild_oci::{Descriptor, Digest};
use rbuild_solver::Root;
use rbuild_solver::metadata::Metadata;

/// The build cache's memory of conversions. Failing to remember is not
/// an error: the layer is compressed again next time.
pub struct Memory(Arc<Metadata>);

impl Memory {
    pub fn open(root: &Root) -> Result<Memory> {
        Ok(Memory(root.metadata()?))
    }
}

impl ConvertedLayers for Memory {
    fn get(&self, diff_id: &Digest, kind: &str) -> Option<Descriptor> {
        self.0.converted_layer(diff_id, kind).ok().flatten()
    }

    fn put(&self, diff_id: &Digest, kind: &str, blob: &Descriptor) {
        let _ = self.0.put_converted_layer(diff_id, kind, blob);
    }
}

/// `image` with its layers as `want` says.
pub fn convert(root: &Root, image: &ImageRef, want: LayerCompression) -> Result<ImageRef> {
    let memory = Memory::open(root)?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    Ok(convert_image(&root.content, image, want, &memory, threads)?)
}
