//! Pulling an image: resolve a tag or digest to a manifest (through an
//! index or manifest list, choosing the wanted platform), then fetch the
//! config and every layer that is not in the store yet.
//!
//! Mirrors are tried first, in order; a mirror that does not have the image
//! or cannot be reached hands over to the next, and the registry itself
//! comes last. Layers are downloaded in parallel and streamed into the
//! store, hashed on the way; a download that breaks off resumes where it
//! stopped (a `Range` request) and a blob whose digest is wrong is never
//! stored.

use std::io::Write;

use futures_util::{StreamExt, TryStreamExt, stream};
use rbuild_oci::{
    BlobStore, Descriptor, Digest, ImageConfig, Index, Manifest, Platform, Reference, media_type,
};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RANGE};

use super::client::{Backoff, Registry, Retry, Session, scope};
use super::error::{Mismatch, RegistryError};

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;

/// What every manifest request accepts, most specific first.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A pulled image, all of it in the store.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The platform's image manifest.
    pub manifest: Descriptor,
    pub config: ImageConfig,
    /// The digest the reference resolved to: the index's when the
    /// reference names an index, else the manifest's (what `docker pull`
    /// prints as `Digest:`).
    pub digest: Digest,
    /// Blobs downloaded (the rest were in the store already) and their bytes.
    pub fetched_blobs: usize,
    pub fetched_bytes: u64,
    /// The server that answered (`docker.io (mirror 127.0.0.1:5000)`).
    pub source: String,
}

/// A manifest or index as the registry sent it.
struct RawManifest {
    media_type: String,
    digest: Digest,
    bytes: Vec<u8>,
}

impl Registry {
    /// Pulls `reference` for `platform` into `store`.
    pub async fn pull(
        &self,
        store: &dyn BlobStore,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Pulled, RegistryError> {
        let endpoints = self.hosts.pull_endpoints(reference.domain());
        let mut first_failure = None;
        for endpoint in endpoints {
            let mirror = endpoint.mirror;
            let session = self.session(
                endpoint,
                reference.path(),
                vec![scope(reference.path(), "pull")],
            )?;
            match self.pull_from(&session, store, reference, platform).await {
                Ok(pulled) => return Ok(pulled),
                // A mirror missing the image, or down, is not the end.
                Err(e) if mirror => {
                    first_failure.get_or_insert(e);
                }
                Err(e) => {
                    return Err(match first_failure {
                        // Say what the mirror said too: offline, the
                        // registry's own failure is the less useful half.
                        Some(mirror) => RegistryError::Fallback {
                            mirror: Box::new(mirror),
                            registry: Box::new(e),
                        },
                        None => e,
                    });
                }
            }
        }
        Err(first_failure.unwrap_or_else(|| RegistryError::NotFound {
            registry: reference.domain().to_string(),
            reference: reference.to_string(),
        }))
    }

    /// Fetches the manifest `reference` names (through an index, the one
    /// for `platform`) and its config blob, but no layers: enough to read a
    /// build cache, whose layers are fetched one by one when needed
    /// ([`Registry::pull_blob`]). `None` when the registry has no such
    /// manifest. Mirrors are not used.
    pub async fn pull_manifest(
        &self,
        store: &dyn BlobStore,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<(Descriptor, Manifest)>, RegistryError> {
        let session = self.session(
            self.hosts.push_endpoint(reference.domain()),
            reference.path(),
            vec![scope(reference.path(), "pull")],
        )?;
        let (raw, _) = match resolve(&session, store, reference, platform).await {
            Ok(resolved) => resolved,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let manifest: Manifest = parse(&raw.bytes, reference, "manifest")?;
        fetch_blob(&session, store, &manifest.config).await?;
        let descriptor = Descriptor::new(&raw.media_type, raw.digest, raw.bytes.len() as u64);
        Ok(Some((descriptor, manifest)))
    }

    /// Fetches one blob of `reference`'s repository into the store.
    pub async fn pull_blob(
        &self,
        store: &dyn BlobStore,
        reference: &Reference,
        blob: &Descriptor,
    ) -> Result<u64, RegistryError> {
        if store.contains(&blob.digest) {
            return Ok(0);
        }
        let session = self.session(
            self.hosts.push_endpoint(reference.domain()),
            reference.path(),
            vec![scope(reference.path(), "pull")],
        )?;
        fetch_blob(&session, store, blob).await
    }

    async fn pull_from(
        &self,
        session: &Session<'_>,
        store: &dyn BlobStore,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Pulled, RegistryError> {
        let (raw, resolved_digest) = resolve(session, store, reference, platform).await?;
        let manifest: Manifest = parse(&raw.bytes, reference, "manifest")?;
        let mut blobs = vec![manifest.config.clone()];
        blobs.extend(manifest.layers.iter().cloned());
        let missing: Vec<&Descriptor> = blobs
            .iter()
            .filter(|b| !store.contains(&b.digest))
            .collect();
        let fetched_blobs = missing.len();
        let fetched_bytes = stream::iter(missing)
            .map(|blob| fetch_blob(session, store, blob))
            .buffer_unordered(self.options.parallel.max(1))
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;
        let config_bytes = store
            .read_all(&manifest.config.digest)
            .map_err(RegistryError::io(format!("reading config of {reference}")))?;
        let config: ImageConfig = parse(&config_bytes, reference, "image config")?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(RegistryError::Invalid {
                reference: reference.to_string(),
                message: format!(
                    "{} layers but {} diff_ids in the config",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        Ok(Pulled {
            manifest: Descriptor::new(&raw.media_type, raw.digest, raw.bytes.len() as u64),
            config,
            digest: resolved_digest,
            fetched_blobs,
            fetched_bytes,
            source: session.endpoint.display_name(),
        })
    }
}

/// Resolves a reference to an image manifest, storing it (and the index
/// it came through); returns it and the digest the reference named.
async fn resolve(
    session: &Session<'_>,
    store: &dyn BlobStore,
    reference: &Reference,
    platform: &Platform,
) -> Result<(RawManifest, Digest), RegistryError> {
    let by = match (reference.digest(), reference.tag()) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) => tag.to_string(),
        (None, None) => "latest".to_string(),
    };
    let top = fetch_manifest(session, reference, &by, reference.digest()).await?;
    let resolved_digest = top.digest;
    store_bytes(store, &top, reference)?;
    let raw = if media_type::is_index(&top.media_type) {
        let index: Index = parse(&top.bytes, reference, "index")?;
        let chosen =
            choose_platform(&index, platform).ok_or_else(|| RegistryError::NoPlatform {
                reference: reference.to_string(),
                wanted: platform.to_string(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref().map(ToString::to_string))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let digest = chosen.digest;
        let raw = fetch_manifest(session, reference, &digest.to_string(), Some(&digest)).await?;
        store_bytes(store, &raw, reference)?;
        raw
    } else {
        top
    };
    if !media_type::is_manifest(&raw.media_type) {
        return Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            media_type: raw.media_type,
        });
    }
    Ok((raw, resolved_digest))
}

/// GETs a manifest by tag or digest, checking its digest when one is known
/// (from the reference, or from the registry's `Docker-Content-Digest`).
async fn fetch_manifest(
    session: &Session<'_>,
    reference: &Reference,
    by: &str,
    expected: Option<&Digest>,
) -> Result<RawManifest, RegistryError> {
    let action = format!("fetching manifest {by}");
    let url = session.url(&format!("manifests/{by}"));
    let response = session
        .send(
            &action,
            Retry::Yes,
            &[StatusCode::OK, StatusCode::NOT_FOUND],
            |c| c.get(&url).header(ACCEPT, MANIFEST_ACCEPT),
        )
        .await?;
    if response.status() == StatusCode::NOT_FOUND {
        return Err(RegistryError::NotFound {
            registry: session.endpoint.display_name(),
            reference: reference.to_string(),
        });
    }
    let header_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let header_digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    if response
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST as u64)
    {
        return Err(too_large(reference));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| session.error_transport(&action, &e))?;
    if bytes.len() > MAX_MANIFEST {
        return Err(too_large(reference));
    }
    let digest = Digest::of(&bytes);
    if let Some(expected) = expected.or(header_digest.as_ref())
        && *expected != digest
    {
        return Err(RegistryError::DigestMismatch {
            registry: session.endpoint.display_name(),
            repository: session.repository.clone(),
            what: "manifest".into(),
            digests: Box::new(Mismatch {
                expected: *expected,
                actual: digest,
            }),
        });
    }
    // The body's own mediaType wins over a generic Content-Type.
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = parse(&bytes, reference, "manifest")?;
    if probe.schema_version == Some(1) {
        return Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            media_type:
                "schema 1 manifest (deprecated by docker; push the image again with a current tool)"
                    .into(),
        });
    }
    let media_type = probe
        .media_type
        .or(header_type.filter(|t| t.starts_with("application/vnd.")))
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                media_type::OCI_INDEX.to_string()
            } else {
                media_type::OCI_MANIFEST.to_string()
            }
        });
    Ok(RawManifest {
        media_type,
        digest,
        bytes: bytes.to_vec(),
    })
}

fn too_large(reference: &Reference) -> RegistryError {
    RegistryError::Invalid {
        reference: reference.to_string(),
        message: format!("manifest larger than {MAX_MANIFEST} bytes"),
    }
}

fn store_bytes(
    store: &dyn BlobStore,
    raw: &RawManifest,
    reference: &Reference,
) -> Result<(), RegistryError> {
    store
        .write_bytes(&raw.bytes)
        .map_err(RegistryError::io(format!(
            "storing manifest of {reference}"
        )))?;
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    reference: &Reference,
    what: &str,
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Invalid {
        reference: reference.to_string(),
        message: format!("{what} is not valid JSON: {e}"),
    })
}

/// Downloads one blob into the store, resuming after a broken connection;
/// returns the bytes received.
pub(crate) async fn fetch_blob(
    session: &Session<'_>,
    store: &dyn BlobStore,
    blob: &Descriptor,
) -> Result<u64, RegistryError> {
    let digest = blob.digest;
    let action = format!("fetching blob {digest}");
    let url = session.url(&format!("blobs/{digest}"));
    let storing = |e| RegistryError::io(format!("storing blob {digest}"))(e);
    let mut writer = store.begin().map_err(storing)?;
    let mut received = 0u64;
    let mut backoff = Backoff::new(session.registry.options.retry_time);
    loop {
        let offset = writer.written();
        let response = session
            .send(
                &action,
                Retry::Yes,
                &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
                |c| {
                    let request = c.get(&url);
                    if offset > 0 {
                        request.header(RANGE, format!("bytes={offset}-"))
                    } else {
                        request
                    }
                },
            )
            .await?;
        if offset > 0 && response.status() == StatusCode::OK {
            // The server ignored the range: start again from the first byte.
            writer = store.begin().map_err(storing)?;
        }
        let mut body = response.bytes_stream();
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    writer.write_all(&bytes).map_err(storing)?;
                    if writer.written() > blob.size {
                        return Err(RegistryError::Invalid {
                            reference: format!("{}@{digest}", session.repository),
                            message: format!("blob is larger than its {} bytes", blob.size),
                        });
                    }
                }
                Err(e) => {
                    broken = Some(session.error_transport(&action, &e));
                    break;
                }
            }
        }
        if broken.is_none() && writer.written() == blob.size {
            break;
        }
        // A short body without an error: the connection closed early.
        let error = broken.unwrap_or_else(|| RegistryError::Invalid {
            reference: format!("{}@{digest}", session.repository),
            message: format!(
                "blob ended after {} of {} bytes",
                writer.written(),
                blob.size
            ),
        });
        if !backoff.wait(None).await {
            return Err(error);
        }
    }
    writer.commit(&digest).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            RegistryError::Invalid {
                reference: format!("{}/{}", session.endpoint.display_name(), session.repository),
                message: format!("blob {digest}: {e}"),
            }
        } else {
            storing(e)
        }
    })?;
    Ok(received)
}

/// The index entry for `wanted`: same os and architecture, and the same
/// variant once defaults are filled in (arm64 is v8, arm is v7).
pub(crate) fn choose_platform<'a>(index: &'a Index, wanted: &Platform) -> Option<&'a Descriptor> {
    let normalized = |p: &Platform| -> (String, String, String) {
        let variant = match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => "v8".to_string(),
            ("arm", None) => "v7".to_string(),
            ("amd64", Some("v1")) => String::new(),
            (_, v) => v.unwrap_or_default().to_string(),
        };
        (p.os.clone(), p.architecture.clone(), variant)
    };
    let wanted = normalized(wanted);
    index
        .manifests
        .iter()
        .filter(|m| media_type::is_manifest(&m.media_type))
        .find(|m| m.platform.as_ref().is_some_and(|p| normalized(p) == wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new(
            media_type::OCI_MANIFEST,
            Digest::of(format!("{os}/{arch}/{variant:?}").as_bytes()),
            10,
        );
        d.platform = Some(Platform {
            architecture: arch.into(),
            os: os.into(),
            os_version: None,
            os_features: None,
            variant: variant.map(str::to_string),
        });
        d
    }

    fn platform(s: &str) -> Platform {
        let parts: Vec<&str> = s.split('/').collect();
        Platform {
            os: parts[0].into(),
            architecture: parts[1].into(),
            os_version: None,
            os_features: None,
            variant: parts.get(2).map(|v| v.to_string()),
        }
    }

    #[test]
    fn chooses_the_platform_with_default_variants() {
        let index = Index::new(vec![
            entry("unknown", "unknown", None),
            entry("linux", "arm", Some("v6")),
            entry("linux", "arm", None),
            entry("linux", "arm64", None),
            entry("linux", "amd64", None),
            entry("windows", "amd64", None),
        ]);
        let pick = |p: &str| {
            choose_platform(&index, &platform(p))
                .and_then(|d| d.platform.clone())
                .map(|p| p.to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("linux/amd64"));
        assert_eq!(pick("linux/arm64/v8").as_deref(), Some("linux/arm64"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("linux/arm"));
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("linux/arm/v6"));
        assert_eq!(pick("linux/s390x"), None);
    }
}
