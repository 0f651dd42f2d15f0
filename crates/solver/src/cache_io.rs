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
//! The same artifact goes to a registry (`type=registry,ref=REPO:TAG`):
//! the solver writes it into the content store and the caller pushes it.
//! `type=inline` puts the records of the final image's steps into the
//! image config itself (key [`INLINE_KEY`]), so the image doubles as its
//! own cache, as BuildKit's inline cache does.
//!
//! Importing reads only the config; a layer blob is copied into the
//! content store (verified against its digest) only when the build needs
//! it: to run a step on top of it, or because it is in the final image. A
//! cached step whose layers are covered by later cached steps is never
//! fetched. Where blobs come from is a [`CacheBlobs`]: a local layout
//! here, a registry in the caller.

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
/// The image config key of an inline cache.
pub const INLINE_KEY: &str = "rbuild.cache.v1";

#[derive(Debug, thiserror::Error)]
pub enum CacheIoError {
    /// `origin` is the cache's directory or registry reference.
    #[error("cache {origin}: {source}")]
    Io { origin: String, source: io::Error },
    #[error("cache {origin}: {message}")]
    Format { origin: String, message: String },
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

/// Where `--cache-to` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDest {
    /// `type=local,dest=DIR`: an OCI layout directory.
    Local(PathBuf),
    /// `type=registry,ref=REF`: the caller pushes the manifest the build
    /// returns (see `BuiltImage::cache_manifests`).
    Registry(String),
    /// `type=inline`: into the image config.
    Inline,
}

/// `--cache-to type=local,dest=DIR[,mode=min|max]`,
/// `type=registry,ref=REF[,mode=…]` or `type=inline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub dest: CacheDest,
    pub mode: CacheMode,
}

/// `--cache-from type=local,src=DIR` or `type=registry,ref=REF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheImport {
    Local {
        dir: PathBuf,
    },
    /// Opened by the caller, which has the registry client
    /// ([`ImportedCache::from_config`], [`ImportedCache::from_image_config`]).
    Registry {
        reference: String,
    },
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

/// Checks the type and that only `allowed` keys are given.
fn check_keys(
    spec: &str,
    fields: &BTreeMap<String, String>,
    allowed: &[&str],
) -> Result<(), CacheIoError> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(spec_err(
            spec,
            format!("unknown option {key:?} (known: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn cache_type<'a>(
    spec: &str,
    fields: &'a BTreeMap<String, String>,
) -> Result<&'a str, CacheIoError> {
    match fields.get("type").map(String::as_str) {
        Some(t @ ("local" | "registry" | "inline")) => Ok(t),
        Some(t @ ("gha" | "s3" | "azblob")) => Err(spec_err(
            spec,
            format!("cache type {t:?} is not supported (local, registry and inline are)"),
        )),
        Some(t) => Err(spec_err(spec, format!("unknown cache type {t:?}"))),
        None => Err(spec_err(
            spec,
            "type= is required (local, registry or inline)",
        )),
    }
}

/// `ref=` of a registry cache, checked to be an image reference.
fn registry_ref(spec: &str, fields: &BTreeMap<String, String>) -> Result<String, CacheIoError> {
    let reference = fields
        .get("ref")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| spec_err(spec, "ref=REPOSITORY[:TAG] is required"))?;
    rbuild_oci::Reference::parse(reference).map_err(|e| spec_err(spec, e.to_string()))?;
    Ok(reference.clone())
}

impl CacheExport {
    pub fn parse(spec: &str) -> Result<CacheExport, CacheIoError> {
        let f = fields(spec)?;
        let kind = cache_type(spec, &f)?;
        let mode = match f.get("mode").map(String::as_str) {
            None | Some("min") => CacheMode::Min,
            Some("max") if kind != "inline" => CacheMode::Max,
            Some("max") => return Err(spec_err(spec, "an inline cache is mode=min only")),
            Some(m) => {
                return Err(spec_err(
                    spec,
                    format!("mode must be min or max, not {m:?}"),
                ));
            }
        };
        let dest = match kind {
            "local" => {
                check_keys(spec, &f, &["type", "dest", "mode"])?;
                let dir = f
                    .get("dest")
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| spec_err(spec, "dest=DIR is required"))?;
                CacheDest::Local(PathBuf::from(dir))
            }
            "registry" => {
                check_keys(spec, &f, &["type", "ref", "mode"])?;
                CacheDest::Registry(registry_ref(spec, &f)?)
            }
            _ => {
                check_keys(spec, &f, &["type", "mode"])?;
                CacheDest::Inline
            }
        };
        Ok(CacheExport { dest, mode })
    }
}

impl CacheImport {
    pub fn parse(spec: &str) -> Result<CacheImport, CacheIoError> {
        let f = fields(spec)?;
        match cache_type(spec, &f)? {
            "local" => {
                check_keys(spec, &f, &["type", "src", "digest"])?;
                let dir = f
                    .get("src")
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| spec_err(spec, "src=DIR is required"))?;
                Ok(CacheImport::Local {
                    dir: PathBuf::from(dir),
                })
            }
            "registry" => {
                check_keys(spec, &f, &["type", "ref"])?;
                Ok(CacheImport::Registry {
                    reference: registry_ref(spec, &f)?,
                })
            }
            _ => Err(spec_err(
                spec,
                "an inline cache is imported with type=registry,ref=IMAGE",
            )),
        }
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

/// Where an imported cache's blobs are.
pub trait CacheBlobs: Send + Sync {
    /// Whether the cache has this blob.
    fn has_blob(&self, digest: &Digest) -> bool;
    /// Copies a blob into the store, verifying its digest.
    fn fetch(&self, digest: &Digest, store: &ContentStore) -> io::Result<()>;
}

/// An imported cache: its records, and where its blobs are.
pub struct ImportedCache {
    blobs: Box<dyn CacheBlobs>,
    pub(crate) config: CacheConfig,
}

impl std::fmt::Debug for ImportedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedCache")
            .field("records", &self.config.records.len())
            .finish()
    }
}

/// The blobs of a local cache layout.
struct LayoutBlobs {
    dir: PathBuf,
}

impl CacheBlobs for LayoutBlobs {
    fn has_blob(&self, digest: &Digest) -> bool {
        blob_path(&self.dir, digest).exists()
    }

    fn fetch(&self, digest: &Digest, store: &ContentStore) -> io::Result<()> {
        let mut file = fs::File::open(blob_path(&self.dir, digest))?;
        store.write(&mut file, Some(digest)).map(drop)
    }
}

impl ImportedCache {
    /// Reads a local cache layout's config; a directory without a cache is
    /// an empty cache, as with BuildKit (the first build of a farm has none).
    pub fn open_local(dir: &Path) -> Result<ImportedCache, CacheIoError> {
        let origin = dir.display().to_string();
        let err = |source| CacheIoError::Io {
            origin: origin.clone(),
            source,
        };
        let format = |message: String| CacheIoError::Format {
            origin: origin.clone(),
            message,
        };
        let blobs = Box::new(LayoutBlobs {
            dir: dir.to_path_buf(),
        });
        let index_path = dir.join("index.json");
        let index: Index = match fs::read(&index_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format(format!("index.json: {e}")))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ImportedCache {
                    blobs,
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
        let manifest: Manifest =
            read_verified(dir, &manifest.digest)
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
        let config = read_verified(dir, &manifest.config.digest).map_err(err)?;
        ImportedCache::from_config(&origin, &config, blobs)
    }

    /// A cache from its config blob (media type [`CONFIG_TYPE`]), with its
    /// blobs elsewhere (a registry).
    pub fn from_config(
        origin: &str,
        config: &[u8],
        blobs: Box<dyn CacheBlobs>,
    ) -> Result<ImportedCache, CacheIoError> {
        let config = serde_json::from_slice(config).map_err(|e| CacheIoError::Format {
            origin: origin.to_string(),
            message: format!("config: {e}"),
        })?;
        Ok(ImportedCache { blobs, config })
    }

    /// The inline cache of an image, from its config JSON; `None` when the
    /// image was built without one.
    pub fn from_image_config(
        origin: &str,
        image_config: &[u8],
        blobs: Box<dyn CacheBlobs>,
    ) -> Result<Option<ImportedCache>, CacheIoError> {
        let format = |message: String| CacheIoError::Format {
            origin: origin.to_string(),
            message,
        };
        let mut value: serde_json::Value = serde_json::from_slice(image_config)
            .map_err(|e| format(format!("image config: {e}")))?;
        let Some(inline) = value.get_mut(INLINE_KEY).map(serde_json::Value::take) else {
            return Ok(None);
        };
        let config =
            serde_json::from_value(inline).map_err(|e| format(format!("inline cache: {e}")))?;
        Ok(Some(ImportedCache { blobs, config }))
    }

    /// Whether the cache has this blob.
    pub(crate) fn has_blob(&self, digest: &Digest) -> bool {
        self.blobs.has_blob(digest)
    }

    /// Copies a blob into the store, verifying its digest.
    pub(crate) fn fetch(&self, digest: &Digest, store: &ContentStore) -> io::Result<()> {
        self.blobs.fetch(digest, store)
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

/// The layers every record names, once each.
fn record_layers(config: &CacheConfig) -> Vec<Descriptor> {
    let mut layers: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    for record in config.records.values() {
        for layer in &record.layers {
            layers
                .entry(layer.descriptor.digest)
                .or_insert_with(|| layer.descriptor.clone());
        }
    }
    layers.into_values().collect()
}

/// The cache artifact's manifest JSON for a config blob and the layers.
fn manifest_bytes(
    config: Descriptor,
    layers: Vec<Descriptor>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut manifest = Manifest::new(config, layers);
    manifest.annotations.insert(
        "org.opencontainers.image.created".into(),
        rbuild_oci::time::format_rfc3339(std::time::SystemTime::now()),
    );
    let mut manifest_json = serde_json::to_value(&manifest)?;
    manifest_json["artifactType"] = ARTIFACT_TYPE.into();
    serde_json::to_vec(&manifest_json)
}

/// Writes `config`'s records and their blobs (from `store`) as a cache
/// layout in `dir`. Blobs already there are kept; `index.json` is
/// replaced last, atomically, so a reader sees the old cache or the new.
pub(crate) fn export(
    store: &ContentStore,
    config: &CacheConfig,
    dir: &Path,
) -> Result<(), CacheIoError> {
    let err = |source| CacheIoError::Io {
        origin: dir.display().to_string(),
        source,
    };
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(err)?;
    let layers = record_layers(config);
    for layer in &layers {
        copy_blob(store, &layer.digest, &blobs).map_err(err)?;
    }
    let config_json = serde_json::to_vec(config).map_err(|e| err(e.into()))?;
    let config_desc = Descriptor::new(
        CONFIG_TYPE,
        write_blob(&blobs, &config_json).map_err(err)?,
        config_json.len() as u64,
    );
    let manifest_bytes = manifest_bytes(config_desc, layers).map_err(|e| err(e.into()))?;
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

/// Writes the cache artifact's config and manifest into the content store
/// (its layers are there already) and returns the manifest's descriptor,
/// for pushing to a registry.
pub(crate) fn export_to_store(
    store: &ContentStore,
    config: &CacheConfig,
    origin: &str,
) -> Result<Descriptor, CacheIoError> {
    let err = |source| CacheIoError::Io {
        origin: origin.to_string(),
        source,
    };
    let config_json = serde_json::to_vec(config).map_err(|e| err(e.into()))?;
    let config_digest = store.write_bytes(&config_json).map_err(err)?;
    let config_desc = Descriptor::new(CONFIG_TYPE, config_digest, config_json.len() as u64);
    let bytes = manifest_bytes(config_desc, record_layers(config)).map_err(|e| err(e.into()))?;
    let digest = store.write_bytes(&bytes).map_err(err)?;
    Ok(Descriptor::new(
        media_type::OCI_MANIFEST,
        digest,
        bytes.len() as u64,
    ))
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
                dest: CacheDest::Local("/tmp/c".into()),
                mode: CacheMode::Max
            }
        );
        assert_eq!(
            CacheExport::parse("type=registry,ref=127.0.0.1:5000/app:cache,mode=max").unwrap(),
            CacheExport {
                dest: CacheDest::Registry("127.0.0.1:5000/app:cache".into()),
                mode: CacheMode::Max
            }
        );
        assert_eq!(
            CacheExport::parse("type=inline").unwrap(),
            CacheExport {
                dest: CacheDest::Inline,
                mode: CacheMode::Min
            }
        );
        assert!(CacheExport::parse("type=inline,mode=max").is_err());
        assert!(CacheExport::parse("type=registry").is_err());
        assert!(CacheExport::parse("type=registry,ref=UPPER").is_err());
        assert!(CacheExport::parse("type=gha").is_err());
        assert_eq!(
            CacheExport::parse("type=local,dest=/tmp/c").unwrap().mode,
            CacheMode::Min
        );
        assert!(CacheExport::parse("type=local").is_err());
        assert!(CacheExport::parse("type=local,dest=x,mode=all").is_err());
        assert!(CacheExport::parse("dest=x").is_err());
        assert_eq!(
            CacheImport::parse("type=local,src=/c").unwrap(),
            CacheImport::Local { dir: "/c".into() }
        );
        assert_eq!(
            CacheImport::parse("type=registry,ref=r.example/app:cache").unwrap(),
            CacheImport::Registry {
                reference: "r.example/app:cache".into()
            }
        );
        assert!(CacheImport::parse("type=inline").is_err());
        assert!(CacheImport::parse("type=local,dest=/c").is_err());
    }
}
