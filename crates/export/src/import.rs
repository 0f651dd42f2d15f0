//! Reading images from an OCI image layout or a `docker save` archive, each
//! either a directory or a tarball, into the blob store.
//!
//! A tarball is read in one pass: every regular file that may be a blob is
//! streamed into the store (content-addressed, so storing extra files costs
//! nothing but space that garbage collection reclaims), and the small
//! metadata files are kept in memory. The manifests are then resolved from
//! there. An OCI `index.json` is preferred over docker's `manifest.json`
//! because it keeps the original manifest digest.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path};

use rbuild_oci::{
    BlobStore, Descriptor, Digest, ImageConfig, Index, Manifest, Platform, Reference, annotation,
    media_type,
};
use serde::Deserialize;

use crate::ExportError;
use crate::archive::{is_dir, open_file};
use crate::layout::store_json;

/// Metadata files larger than this are not kept in memory.
const MAX_METADATA: u64 = 16 << 20;

/// One image found in the source.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The name the source gives it, if any.
    pub name: Option<Reference>,
    /// The OCI layout's `org.opencontainers.image.ref.name`, if any.
    pub ref_name: Option<String>,
    pub manifest: Descriptor,
    pub config: ImageConfig,
    pub config_digest: Digest,
}

/// Where each file of the source went.
#[derive(Default)]
struct Files {
    /// Small metadata files by path.
    metadata: HashMap<String, Vec<u8>>,
    /// Every other regular file by path, as stored blobs.
    blobs: HashMap<String, (Digest, u64)>,
}

impl Files {
    fn get_bytes(&self, store: &dyn BlobStore, path: &str) -> Result<Option<Vec<u8>>, ExportError> {
        if let Some(bytes) = self.metadata.get(path) {
            return Ok(Some(bytes.clone()));
        }
        match self.blobs.get(path) {
            Some((digest, _)) => Ok(Some(
                store.read_all(digest).map_err(ExportError::blob(digest))?,
            )),
            None => Ok(None),
        }
    }

    /// Stores a metadata file as a blob too (a docker-save config is one).
    fn as_blob(&self, store: &dyn BlobStore, path: &str) -> Result<(Digest, u64), ExportError> {
        if let Some(found) = self.blobs.get(path) {
            return Ok(*found);
        }
        let bytes = self.metadata.get(path).ok_or_else(|| missing(path))?;
        let digest = store
            .write_bytes(bytes)
            .map_err(ExportError::io(format!("storing {path}")))?;
        Ok((digest, bytes.len() as u64))
    }
}

fn missing(path: &str) -> ExportError {
    ExportError::Invalid(format!(
        "the archive names {path:?} but does not contain it"
    ))
}

/// Imports every image in `source` (a directory or a tarball).
pub fn import(store: &dyn BlobStore, source: &Path) -> Result<Vec<Imported>, ExportError> {
    let files = if is_dir(source) {
        read_dir(store, source)?
    } else {
        read_tar(store, open_file(source)?)?
    };
    resolve(store, files, &source.display().to_string())
}

/// Imports every image in a tarball read from `input` (standard input).
pub fn import_reader(
    store: &dyn BlobStore,
    input: impl Read,
) -> Result<Vec<Imported>, ExportError> {
    let files = read_tar(store, input)?;
    resolve(store, files, "standard input")
}

fn resolve(
    store: &dyn BlobStore,
    files: Files,
    source: &str,
) -> Result<Vec<Imported>, ExportError> {
    if files.metadata.contains_key("index.json") {
        import_oci(store, &files)
    } else if files.metadata.contains_key("manifest.json") {
        import_docker(store, &files)
    } else {
        Err(ExportError::Invalid(format!(
            "{source}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
        )))
    }
}

fn is_metadata(path: &str, size: u64) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    size <= MAX_METADATA
        && !path.starts_with("blobs/")
        && (name.ends_with(".json")
            || matches!(name, "repositories" | "oci-layout" | "json" | "VERSION"))
}

fn read_tar(store: &dyn BlobStore, input: impl Read) -> Result<Files, ExportError> {
    let mut files = Files::default();
    let mut archive = tar::Archive::new(input);
    let entries = archive
        .entries()
        .map_err(ExportError::io("reading the archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(ExportError::io("reading the archive"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()
            .map_err(ExportError::io("reading the archive"))?;
        let Some(path) = clean(&path) else { continue };
        let size = entry.size();
        if is_metadata(&path, size) {
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(ExportError::io(format!("reading {path}")))?;
            files.metadata.insert(path, bytes);
        } else {
            let stored = store_blob(store, &path, &mut entry)?;
            files.blobs.insert(path, stored);
        }
    }
    Ok(files)
}

fn read_dir(store: &dyn BlobStore, root: &Path) -> Result<Files, ExportError> {
    let mut files = Files::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(ExportError::io(format!("reading {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(ExportError::io(format!("reading {}", dir.display())))?;
            let file_type = entry
                .file_type()
                .map_err(ExportError::io(format!("reading {}", dir.display())))?;
            let full = entry.path();
            if file_type.is_dir() {
                stack.push(full);
                continue;
            }
            if !file_type.is_file() {
                continue;
            }
            let Some(path) = full.strip_prefix(root).ok().and_then(clean) else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if is_metadata(&path, size) {
                let bytes = fs::read(&full)
                    .map_err(ExportError::io(format!("reading {}", full.display())))?;
                files.metadata.insert(path, bytes);
            } else if path.starts_with("blobs/")
                || path.ends_with(".tar")
                || path.ends_with("layer.tar")
            {
                let mut file = open_file(&full)?;
                let stored = store_blob(store, &path, &mut file)?;
                files.blobs.insert(path, stored);
            }
        }
    }
    Ok(files)
}

/// Stores one file; under `blobs/<alg>/<hex>` its name must match its content.
fn store_blob(
    store: &dyn BlobStore,
    path: &str,
    reader: &mut dyn Read,
) -> Result<(Digest, u64), ExportError> {
    let expected = path
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| Digest::from_hex(hex).ok());
    store.write(reader, expected.as_ref()).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            ExportError::Invalid(format!("{path}: {e}"))
        } else {
            ExportError::Io {
                context: format!("storing {path}"),
                source: e,
            }
        }
    })
}

/// A relative path with `/` separators, or None for anything that is not a
/// plain relative name.
fn clean(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn parse_json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, ExportError> {
    serde_json::from_slice(bytes).map_err(|source| ExportError::Json {
        what: what.to_string(),
        source,
    })
}

fn import_oci(store: &dyn BlobStore, files: &Files) -> Result<Vec<Imported>, ExportError> {
    let index: Index = parse_json("index.json", &files.metadata["index.json"])?;
    let host = Platform::host();
    let mut imported = Vec::new();
    for descriptor in &index.manifests {
        let name = descriptor_name(descriptor);
        let ref_name = descriptor.annotations.get(annotation::REF_NAME).cloned();
        let manifest = resolve_platform(store, descriptor, &host, 0)?;
        let (config, config_digest) = check_manifest(store, &manifest)?;
        imported.push(Imported {
            name,
            ref_name,
            manifest,
            config,
            config_digest,
        });
    }
    if imported.is_empty() {
        return Err(ExportError::Invalid("index.json lists no images".into()));
    }
    Ok(imported)
}

/// The image name an OCI layout records for a manifest: containerd's full
/// name, or `ref.name` when that is a full reference rather than a bare tag.
fn descriptor_name(descriptor: &Descriptor) -> Option<Reference> {
    if let Some(name) = descriptor
        .annotations
        .get(annotation::CONTAINERD_IMAGE_NAME)
        && let Ok(r) = Reference::parse(name)
    {
        return Some(r);
    }
    let ref_name = descriptor.annotations.get(annotation::REF_NAME)?;
    if ref_name.contains(['/', ':', '@']) {
        Reference::parse(ref_name).ok()
    } else {
        None
    }
}

/// Follows indexes down to the manifest for `platform`.
fn resolve_platform(
    store: &dyn BlobStore,
    descriptor: &Descriptor,
    platform: &Platform,
    depth: usize,
) -> Result<Descriptor, ExportError> {
    if media_type::is_manifest(&descriptor.media_type) {
        return Ok(descriptor.clone());
    }
    if !media_type::is_index(&descriptor.media_type) || depth > 4 {
        return Err(ExportError::Invalid(format!(
            "{}: unsupported media type {:?}",
            descriptor.digest, descriptor.media_type
        )));
    }
    let index: Index = crate::image::read_json_blob(store, &descriptor.digest, "index")?;
    let chosen = index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.matches(platform)))
        .ok_or_else(|| {
            ExportError::Invalid(format!(
                "{}: no image for platform {platform}",
                descriptor.digest
            ))
        })?;
    resolve_platform(store, chosen, platform, depth + 1)
}

/// Checks that a manifest and its blobs are all present and consistent.
fn check_manifest(
    store: &dyn BlobStore,
    descriptor: &Descriptor,
) -> Result<(ImageConfig, Digest), ExportError> {
    let image = crate::load_image(store, descriptor.clone(), Vec::new())?;
    if let Some(layer) = image
        .manifest
        .layers
        .iter()
        .find(|l| !store.contains(&l.digest))
    {
        return Err(ExportError::Invalid(format!(
            "manifest {}: layer {} is missing",
            descriptor.digest, layer.digest
        )));
    }
    Ok((image.config, image.manifest.config.digest))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn import_docker(store: &dyn BlobStore, files: &Files) -> Result<Vec<Imported>, ExportError> {
    let entries: Vec<DockerManifestEntry> =
        parse_json("manifest.json", &files.metadata["manifest.json"])?;
    let mut imported = Vec::new();
    for entry in entries {
        let config_bytes = files
            .get_bytes(store, &entry.config)?
            .ok_or_else(|| missing(&entry.config))?;
        let config: ImageConfig = parse_json(&entry.config, &config_bytes)?;
        let (config_digest, config_size) = files.as_blob(store, &entry.config)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ExportError::Invalid(format!(
                "{}: {} layers but {} diff_ids",
                entry.config,
                entry.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let (digest, size) = files.as_blob(store, path)?;
            let media_type = verify_layer(store, path, &digest, diff_id)?;
            layers.push(Descriptor::new(media_type, digest, size));
        }
        let manifest = Manifest::new(
            Descriptor::new(media_type::OCI_CONFIG, config_digest, config_size),
            layers,
        );
        let (manifest_digest, manifest_size) = store_json(store, "manifest", &manifest)?;
        let descriptor = Descriptor::new(media_type::OCI_MANIFEST, manifest_digest, manifest_size);
        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            imported.push(Imported {
                name: None,
                ref_name: None,
                manifest: descriptor.clone(),
                config: config.clone(),
                config_digest,
            });
        }
        for tag in tags {
            let name = Reference::parse(&tag).map_err(|e| {
                ExportError::Invalid(format!("manifest.json: RepoTags {tag:?}: {e}"))
            })?;
            let ref_name = name.tag().map(str::to_string);
            imported.push(Imported {
                name: Some(name),
                ref_name,
                manifest: descriptor.clone(),
                config: config.clone(),
                config_digest,
            });
        }
    }
    Ok(imported)
}

/// Checks a docker-save layer against its diff ID and says how it is
/// compressed.
fn verify_layer(
    store: &dyn BlobStore,
    path: &str,
    digest: &Digest,
    diff_id: &Digest,
) -> Result<&'static str, ExportError> {
    let mut file = store.open(digest).map_err(ExportError::blob(digest))?;
    let mut magic = [0u8; 4];
    let n = rbuild_exec::apply::read_prefix(&mut file, &mut magic)
        .map_err(ExportError::blob(digest))?;
    let media_type = match &magic[..n] {
        [0x1f, 0x8b, ..] => media_type::OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => media_type::OCI_LAYER_ZSTD,
        _ => media_type::OCI_LAYER,
    };
    let actual = if media_type == media_type::OCI_LAYER {
        *digest
    } else {
        let file = store.open(digest).map_err(ExportError::blob(digest))?;
        let layer =
            rbuild_exec::compression::decompress(file).map_err(ExportError::blob(digest))?;
        Digest::of_reader(layer).map_err(ExportError::blob(digest))?
    };
    if actual != *diff_id {
        return Err(ExportError::Invalid(format!(
            "{path}: layer content is {actual} but the image config says {diff_id}"
        )));
    }
    Ok(media_type)
}
