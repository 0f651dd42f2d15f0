//! OCI image layouts and `docker save` archives.
//!
//! A docker-save archive here is an OCI layout plus `manifest.json` and
//! `repositories`, as Docker 25 writes it: Docker 20.10 and newer read the
//! docker files, and OCI tools read the layout.

use std::collections::{BTreeMap, HashSet};

use rbuild_oci::{BlobStore, Digest, Index, Reference, annotation};
use serde::Serialize;

use crate::archive::{Sink, Target};
use crate::{ExportError, ImageRef};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `images` as an OCI image layout (a directory or a tarball).
pub fn write_oci_layout(
    store: &dyn BlobStore,
    images: &[ImageRef],
    target: &Target,
) -> Result<(), ExportError> {
    let mut sink = Sink::open(target)?;
    sink.file("oci-layout", OCI_LAYOUT)?;
    write_blobs(store, images, &mut sink)?;
    sink.file("index.json", &index_json(images)?)?;
    sink.finish()
}

/// Writes `images` as a `docker save` tarball that `docker load` accepts.
pub fn write_docker_archive(
    store: &dyn BlobStore,
    images: &[ImageRef],
    target: &Target,
) -> Result<(), ExportError> {
    if let Target::Directory(_) = target {
        return Err(ExportError::Invalid(
            "a docker archive is a tarball, not a directory".into(),
        ));
    }
    let mut sink = Sink::open(target)?;
    sink.file("oci-layout", OCI_LAYOUT)?;
    write_blobs(store, images, &mut sink)?;
    sink.file("index.json", &index_json(images)?)?;
    sink.file("manifest.json", &docker_manifest_json(images)?)?;
    sink.file("repositories", &repositories_json(images)?)?;
    sink.finish()
}

fn write_blobs(
    store: &dyn BlobStore,
    images: &[ImageRef],
    sink: &mut Sink,
) -> Result<(), ExportError> {
    // Images often share layers: each blob is written once.
    let mut written: HashSet<Digest> = HashSet::new();
    for image in images {
        let blobs = image.manifest.layers.iter().map(|l| l.digest).chain([
            image.manifest.config.digest,
            image.manifest_descriptor.digest,
        ]);
        for digest in blobs {
            if written.insert(digest) {
                sink.blob(store, &digest)?;
            }
        }
    }
    Ok(())
}

fn index_json(images: &[ImageRef]) -> Result<Vec<u8>, ExportError> {
    let mut manifests = Vec::new();
    for image in images {
        let mut base = image.manifest_descriptor.clone();
        base.annotations.clear();
        base.platform = Some(image.config.platform());
        if image.names.is_empty() {
            manifests.push(base.clone());
        }
        for name in &image.names {
            let mut d = base.clone();
            d.annotations
                .insert(annotation::CONTAINERD_IMAGE_NAME.into(), name.to_string());
            if let Some(tag) = name.tag() {
                d.annotations
                    .insert(annotation::REF_NAME.into(), tag.to_string());
            }
            manifests.push(d);
        }
    }
    to_json("index.json", &Index::new(manifests))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn docker_manifest_json(images: &[ImageRef]) -> Result<Vec<u8>, ExportError> {
    let entries: Vec<DockerManifestEntry> = images
        .iter()
        .map(|image| DockerManifestEntry {
            config: blob_path(&image.manifest.config.digest),
            repo_tags: image
                .names
                .iter()
                .filter(|n| n.tag().is_some())
                .map(tagged_familiar)
                .collect(),
            layers: image
                .manifest
                .layers
                .iter()
                .map(|l| blob_path(&l.digest))
                .collect(),
        })
        .collect();
    to_json("manifest.json", &entries)
}

/// The legacy `repositories` file: repository → tag → top layer ID.
fn repositories_json(images: &[ImageRef]) -> Result<Vec<u8>, ExportError> {
    let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for image in images {
        let Some(top) = image.manifest.layers.last() else {
            continue;
        };
        for name in &image.names {
            if let Some(tag) = name.tag() {
                repos
                    .entry(name.familiar_repository())
                    .or_default()
                    .insert(tag.to_string(), top.digest.hex());
            }
        }
    }
    to_json("repositories", &repos)
}

/// `docker load` wants `name:tag` without a digest.
fn tagged_familiar(name: &Reference) -> String {
    format!(
        "{}:{}",
        name.familiar_repository(),
        name.tag().unwrap_or("latest")
    )
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

pub(crate) fn to_json(what: &str, value: &impl Serialize) -> Result<Vec<u8>, ExportError> {
    serde_json::to_vec(value).map_err(|source| ExportError::Json {
        what: what.to_string(),
        source,
    })
}

/// Serialises a manifest (or any JSON document) into the store: its digest and size.
pub(crate) fn store_json(
    store: &dyn BlobStore,
    what: &str,
    value: &impl Serialize,
) -> Result<(Digest, u64), ExportError> {
    let bytes = to_json(what, value)?;
    let digest = store
        .write_bytes(&bytes)
        .map_err(ExportError::io(format!("storing the {what}")))?;
    Ok((digest, bytes.len() as u64))
}
