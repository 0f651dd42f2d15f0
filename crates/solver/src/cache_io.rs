//! Build cache export and import for build farms (`--cache-to`,
//! `--cache-from`).
//!
//! An exported cache is an OCI image layout directory whose `index.json`
//! names one artifact manifest (artifact type [`ARTIFACT_TYPE`]): its
//! config blob lists the cache records (key → the result's layers, with
//! their creation times) and the checksums of files selected from other
//! stages, and its layers are every layer blob the records name. Being a
//! plain OCI artifact, the same thing can be pushed to a registry.
//!
//! Importing reads only the config; a layer blob is copied into the
//! content store (verified against its digest) only when the build needs
//! it: to run a step on top of it, or because it is in the final image. A
//! cached step whose layers are covered by later cached steps is never
//! fetched.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rbuild_oci::{BlobStore, Descriptor, Digest, Index, Manifest, media_type};
use serde::{Deserialize, Serialize};

use crate::ContentStore;
use crate::metadata::CacheRecord;

/// The artifact type of an rbuild cache manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.rbuild.cache.v1+json";
/// The media type of its config blob.
pub const CONFIG_TYPE: &str = "application/vnd.rbuild.cache.config.v1+json";
/// The `org.opencontainers.image.ref.name` of the cache in `index.json`.
const REF_NAME: &str = "cache";

#[derive(Debug, thiserror::Error)]
pub enum CacheIoError {
    #[error("cache {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("cache {dir}: {message}")]
    Format { dir: PathBuf, message: String },
    #[error("bad cache spec {spec:?}: {message}")]
    Spec { spec: String, message: String },
}

/// How much of the build a cache export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps of the final image only (BuildKit's default).
    Min,
    /// Every step of every stage.
    Max,
}

/// `--cache-to type=local,dest=DIR[,mode=min|max]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub dir: PathBuf,
    pub mode: CacheMode,
}

/// `--cache-from type=local,src=DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImport {
    pub dir: PathBuf,
}

/// Splits `type=local,dest=DIR,mode=max` into its fields.
fn fields(spec: &str) -> Result<BTreeMap<String, String>, CacheIoError> {
    let mut out = BTreeMap::new();
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field.split_once('=').ok_or_else(|| CacheIoError::Spec {
            spec: spec.to_string(),
            message: format!("{field:?} is not KEY=VALUE"),
        })?;
        out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    Ok(out)
}

fn spec_err(spec: &str, message: impl Into<String>) -> CacheIoError {
    CacheIoError::Spec {
        spec: spec.to_string(),
        message: message.into(),
    }
}

/// Checks a cache type: only `local` exists so far.
fn check_type(spec: &str, fields: &BTreeMap<String, String>) -> Result<(), CacheIoError> {
    match fields.get("type").map(String::as_str) {
        Some("local") => Ok(()),
        Some(t @ ("registry" | "inline" | "gha" | "s3" | "azblob")) => Err(spec_err(
            spec,
            format!("cache type {t:?} is not supported yet (only type=local)"),
        )),
        Some(t) => Err(spec_err(spec, format!("unknown cache type {t:?}"))),
        None => Err(spec_err(spec, "type= is required (type=local)")),
    }
}

impl CacheExport {
    pub fn parse(spec: &str) -> Result<CacheExport, CacheIoError> {
        let f = fields(spec)?;
        check_type(spec, &f)?;
        let dir = f
            .get("dest")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| spec_err(spec, "dest=DIR is required"))?;
        let mode = match f.get("mode").map(String::as_str) {
            None | Some("min") => CacheMode::Min,
            Some("max") => CacheMode::Max,
            Some(m) => {
                return Err(spec_err(
                    spec,
                    format!("mode must be min or max, not {m:?}"),
                ));
            }
        };
        for key in f.keys() {
            if !matches!(key.as_str(), "type" | "dest" | "mode") {
                return Err(spec_err(spec, format!("unknown option {key:?}")));
            }
        }
        Ok(CacheExport {
            dir: PathBuf::from(dir),
            mode,
        })
    }
}

impl CacheImport {
    pub fn parse(spec: &str) -> Result<CacheImport, CacheIoError> {
        let f = fields(spec)?;
        check_type(spec, &f)?;
        let dir = f
            .get("src")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| spec_err(spec, "src=DIR is required"))?;
        for key in f.keys() {
            if !matches!(key.as_str(), "type" | "src" | "digest") {
                return Err(spec_err(spec, format!("unknown option {key:?}")));
            }
        }
        Ok(CacheImport {
            dir: PathBuf::from(dir),
        })
    }
}

/// The config blob of an exported cache.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CacheConfig {
    /// Cache key → record.
    pub records: BTreeMap<Digest, CacheRecord>,
    /// Selection key → checksum of files selected from another stage.
    #[serde(default)]
    pub source_sums: BTreeMap<Digest, Digest>,
}

/// An imported cache: its records, and where its blobs are.
#[derive(Debug)]
pub(crate) struct ImportedCache {
    dir: PathBuf,
    pub config: CacheConfig,
}

impl ImportedCache {
    /// Reads a cache's config; a directory without a cache is an empty
    /// cache, as with BuildKit (the first build of a farm has none).
    pub fn open(import: &CacheImport) -> Result<ImportedCache, CacheIoError> {
        let dir = import.dir.clone();
        let err = |source| CacheIoError::Io {
            dir: dir.clone(),
            source,
        };
        let format = |message: String| CacheIoError::Format {
            dir: dir.clone(),
            message,
        };
        let index_path = dir.join("index.json");
        let index: Index = match fs::read(&index_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format(format!("index.json: {e}")))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ImportedCache {
                    dir,
                    config: CacheConfig::default(),
                });
            }
            Err(e) => return Err(err(e)),
        };
        let Some(manifest) = index.manifests.iter().find(|m| {
            m.annotations
                .get(rbuild_oci::annotation::REF_NAME)
                .map(String::as_str)
                == Some(REF_NAME)
        }) else {
            return Err(format("index.json names no rbuild cache".into()));
        };
        let manifest: Manifest = read_verified(&dir, &manifest.digest)
            .map_err(err)
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| format(format!("manifest: {e}")))
            })?;
        if manifest.config.media_type != CONFIG_TYPE {
            return Err(format(format!(
                "not an rbuild cache (config type {})",
                manifest.config.media_type
            )));
        }
        let config: CacheConfig = read_verified(&dir, &manifest.config.digest)
            .map_err(err)
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| format(format!("config: {e}"))))?;
        Ok(ImportedCache { dir, config })
    }

    /// Whether the cache has this blob.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        blob_path(&self.dir, digest).exists()
    }

    /// Copies a blob into the store, verifying its digest.
    pub fn fetch(&self, digest: &Digest, store: &ContentStore) -> io::Result<()> {
        let mut file = fs::File::open(blob_path(&self.dir, digest))?;
        store.write(&mut file, Some(digest)).map(drop)
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

/// A small blob of a layout, checked against its digest.
fn read_verified(dir: &Path, digest: &Digest) -> io::Result<Vec<u8>> {
    let bytes = fs::read(blob_path(dir, digest))?;
    if Digest::of(&bytes) != *digest {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("blob {digest} does not match its digest"),
        ));
    }
    Ok(bytes)
}

/// Writes `config`'s records and their blobs (from `store`) as a cache
/// layout in `export.dir`. Blobs already there are kept; `index.json` is
/// replaced last, atomically, so a reader sees the old cache or the new.
pub(crate) fn export(
    store: &ContentStore,
    config: &CacheConfig,
    dir: &Path,
) -> Result<(), CacheIoError> {
    let err = |source| CacheIoError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(err)?;
    let mut layers: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    for record in config.records.values() {
        for layer in &record.layers {
            layers
                .entry(layer.descriptor.digest)
                .or_insert_with(|| layer.descriptor.clone());
        }
    }
    for digest in layers.keys() {
        copy_blob(store, digest, &blobs).map_err(err)?;
    }
    let config_json = serde_json::to_vec(config).map_err(|e| err(e.into()))?;
    let config_desc = Descriptor::new(
        CONFIG_TYPE,
        write_blob(&blobs, &config_json).map_err(err)?,
        config_json.len() as u64,
    );
    let mut manifest = Manifest::new(config_desc, layers.into_values().collect());
    manifest.annotations.insert(
        "org.opencontainers.image.created".into(),
        rbuild_oci::time::format_rfc3339(std::time::SystemTime::now()),
    );
    let mut manifest_json = serde_json::to_value(&manifest).map_err(|e| err(e.into()))?;
    manifest_json["artifactType"] = ARTIFACT_TYPE.into();
    let manifest_bytes = serde_json::to_vec(&manifest_json).map_err(|e| err(e.into()))?;
    let manifest_digest = write_blob(&blobs, &manifest_bytes).map_err(err)?;
    let mut desc = Descriptor::new(
        media_type::OCI_MANIFEST,
        manifest_digest,
        manifest_bytes.len() as u64,
    );
    desc.annotations
        .insert(rbuild_oci::annotation::REF_NAME.into(), REF_NAME.into());
    let mut index_json = serde_json::to_value(Index::new(vec![desc])).map_err(|e| err(e.into()))?;
    index_json["manifests"][0]["artifactType"] = ARTIFACT_TYPE.into();
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(err)?;
    let index_bytes = serde_json::to_vec(&index_json).map_err(|e| err(e.into()))?;
    write_atomic(&dir.join("index.json"), &index_bytes).map_err(err)
}

/// Puts a store blob into a layout's blob directory: a hard link when both
/// are on one filesystem, else a copy (through a temporary name).
fn copy_blob(store: &ContentStore, digest: &Digest, blobs: &Path) -> io::Result<()> {
    let target = blobs.join(digest.hex());
    if target.exists() {
        return Ok(());
    }
    let source = store.path(digest);
    if fs::hard_link(&source, &target).is_ok() {
        return Ok(());
    }
    let tmp = blobs.join(format!(".{}.tmp-{}", digest.hex(), std::process::id()));
    fs::copy(&source, &tmp)?;
    fs::rename(&tmp, &target)
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> io::Result<Digest> {
    let digest = Digest::of(bytes);
    let target = blobs.join(digest.hex());
    if !target.exists() {
        write_atomic(&target, bytes)?;
    }
    Ok(digest)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            CacheExport::parse("type=local,dest=/tmp/c,mode=max").unwrap(),
            CacheExport {
                dir: "/tmp/c".into(),
                mode: CacheMode::Max
            }
        );
        assert_eq!(
            CacheExport::parse("type=local,dest=/tmp/c").unwrap().mode,
            CacheMode::Min
        );
        assert!(CacheExport::parse("type=local").is_err());
        assert!(CacheExport::parse("type=local,dest=x,mode=all").is_err());
        assert!(
            CacheExport::parse("type=registry,ref=x")
                .unwrap_err()
                .to_string()
                .contains("not supported yet")
        );
        assert!(CacheExport::parse("dest=x").is_err());
        assert_eq!(
            CacheImport::parse("type=local,src=/c").unwrap().dir,
            PathBuf::from("/c")
        );
        assert!(CacheImport::parse("type=local,dest=/c").is_err());
    }
}
