//! Pushing an image: its blobs, then its manifest under every tag.
//!
//! A blob the repository has (`HEAD` answers 200) is skipped. A blob that
//! another repository of the same registry has is mounted from there
//! (`POST …/blobs/uploads/?mount=D&from=REPO`), which copies nothing. Any
//! other blob is uploaded: in one `PUT` when small, in `PATCH` chunks then
//! a closing `PUT` when large, streamed from the store without holding it
//! in memory. An upload that fails on the way is started again from a
//! fresh upload session, within the client's retry time. The manifest goes
//! last, with its own media type, so the registry never names an image
//! whose blobs are missing.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use futures_util::{StreamExt, TryStreamExt, stream};
use rbuild_oci::{BlobStore, Descriptor, Digest, Manifest, Reference};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};

use super::client::{Backoff, Registry, Retry, Session, scope};
use super::error::{Mismatch, RegistryError};

/// Repositories to try mounting a blob from, at most.
const MAX_MOUNT_SOURCES: usize = 3;

/// Where else on a registry each blob is known to be, by repository path
/// (from images rbuild pulled from or pushed to that registry).
pub type MountSources = HashMap<Digest, Vec<String>>;

/// What pushing one image did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    /// Each target with the manifest digest and size the registry stored.
    pub pushed: Vec<(Reference, Digest, u64)>,
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
    pub mounted_blobs: usize,
    pub existing_blobs: usize,
}

enum BlobOutcome {
    Existing,
    Mounted,
    Uploaded(u64),
}

impl Registry {
    /// Pushes the image whose manifest is `manifest` to every target.
    pub async fn push(
        &self,
        store: &dyn BlobStore,
        manifest: &Descriptor,
        targets: &[Reference],
        mount_sources: &MountSources,
    ) -> Result<PushReport, RegistryError> {
        let manifest_bytes =
            store
                .read_all(&manifest.digest)
                .map_err(RegistryError::io(format!(
                    "reading manifest {}",
                    manifest.digest
                )))?;
        let parsed: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| RegistryError::Invalid {
                reference: manifest.digest.to_string(),
                message: format!("stored manifest is not valid JSON: {e}"),
            })?;
        let mut blobs = vec![parsed.config.clone()];
        blobs.extend(parsed.layers.iter().cloned());

        // One repository at a time; a later one can mount from an earlier.
        let mut by_repository: BTreeMap<(String, String), Vec<&Reference>> = BTreeMap::new();
        for target in targets {
            by_repository
                .entry((target.domain().to_string(), target.path().to_string()))
                .or_default()
                .push(target);
        }
        let mut report = PushReport::default();
        let mut pushed_to: Vec<(String, String)> = Vec::new();
        for ((domain, path), tags) in by_repository {
            let mut sources: Vec<String> = Vec::new();
            for (d, p) in &pushed_to {
                if *d == domain {
                    sources.push(p.clone());
                }
            }
            for blob in &blobs {
                for p in mount_sources.get(&blob.digest).into_iter().flatten() {
                    if *p != path && !sources.contains(p) {
                        sources.push(p.clone());
                    }
                }
            }
            sources.truncate(MAX_MOUNT_SOURCES);
            let mut scopes = vec![scope(&path, "pull,push")];
            scopes.extend(sources.iter().map(|s| scope(s, "pull")));
            let session = self.session(self.hosts.push_endpoint(&domain), &path, scopes)?;

            let outcomes: Vec<BlobOutcome> = stream::iter(&blobs)
                .map(|blob| {
                    let candidates: Vec<&String> = sources
                        .iter()
                        .filter(|s| {
                            pushed_to.iter().any(|(d, p)| *d == domain && p == *s)
                                || mount_sources
                                    .get(&blob.digest)
                                    .is_some_and(|known| known.contains(s))
                        })
                        .collect();
                    push_blob(&session, store, blob, candidates)
                })
                .buffer_unordered(self.options.parallel.max(1))
                .try_collect()
                .await?;
            for outcome in outcomes {
                match outcome {
                    BlobOutcome::Existing => report.existing_blobs += 1,
                    BlobOutcome::Mounted => report.mounted_blobs += 1,
                    BlobOutcome::Uploaded(bytes) => {
                        report.uploaded_blobs += 1;
                        report.uploaded_bytes += bytes;
                    }
                }
            }
            for target in tags {
                let by = match (target.tag(), target.digest()) {
                    (Some(tag), _) => tag.to_string(),
                    (None, Some(digest)) => digest.to_string(),
                    (None, None) => "latest".to_string(),
                };
                let digest = put_manifest(&session, manifest, &manifest_bytes, &by).await?;
                report
                    .pushed
                    .push(((*target).clone(), digest, manifest_bytes.len() as u64));
            }
            pushed_to.push((domain, path));
        }
        Ok(report)
    }
}

async fn put_manifest(
    session: &Session<'_>,
    manifest: &Descriptor,
    bytes: &[u8],
    by: &str,
) -> Result<Digest, RegistryError> {
    let action = format!("pushing manifest {by}");
    let url = session.url(&format!("manifests/{by}"));
    let response = session
        .send(
            &action,
            Retry::Yes,
            &[StatusCode::CREATED, StatusCode::OK],
            |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, &manifest.media_type)
                    .body(bytes.to_vec())
            },
        )
        .await?;
    let stored = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    match stored {
        Some(digest) if digest != manifest.digest => Err(RegistryError::DigestMismatch {
            registry: session.endpoint.display_name(),
            repository: session.repository.clone(),
            what: "pushed manifest".into(),
            digests: Box::new(Mismatch {
                expected: manifest.digest,
                actual: digest,
            }),
        }),
        _ => Ok(manifest.digest),
    }
}

async fn push_blob(
    session: &Session<'_>,
    store: &dyn BlobStore,
    blob: &Descriptor,
    mount_from: Vec<&String>,
) -> Result<BlobOutcome, RegistryError> {
    let digest = blob.digest;
    let url = session.url(&format!("blobs/{digest}"));
    let head = session
        .send(
            &format!("checking blob {digest}"),
            Retry::Yes,
            &[StatusCode::OK, StatusCode::NOT_FOUND],
            |c| c.head(&url),
        )
        .await?;
    if head.status() == StatusCode::OK {
        return Ok(BlobOutcome::Existing);
    }
    let mut location = None;
    for from in mount_from {
        let url = session.url(&format!("blobs/uploads/?mount={digest}&from={from}"));
        let response = session
            .send(
                &format!("mounting blob {digest} from {from}"),
                Retry::Yes,
                &[StatusCode::CREATED, StatusCode::ACCEPTED],
                |c| c.post(&url).header(CONTENT_LENGTH, 0),
            )
            .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(BlobOutcome::Mounted);
        }
        // Not mountable after all: the registry opened an upload instead.
        location = upload_location(session, &response);
    }
    let mut backoff = Backoff::new(session.registry.options.retry_time);
    loop {
        let result = upload(session, store, blob, location.take()).await;
        match result {
            Ok(()) => return Ok(BlobOutcome::Uploaded(blob.size)),
            Err(e) if e.is_transient() => {
                if !backoff.wait(None).await {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn upload_location(session: &Session<'_>, response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| session.absolute(l))
}

/// One upload session: open it (unless given), send the bytes, close it.
async fn upload(
    session: &Session<'_>,
    store: &dyn BlobStore,
    blob: &Descriptor,
    location: Option<String>,
) -> Result<(), RegistryError> {
    let digest = blob.digest;
    let action = format!("uploading blob {digest}");
    let mut location = match location {
        Some(l) => l,
        None => {
            let url = session.url("blobs/uploads/");
            let response = session
                .send(&action, Retry::Yes, &[StatusCode::ACCEPTED], |c| {
                    c.post(&url).header(CONTENT_LENGTH, 0)
                })
                .await?;
            upload_location(session, &response).ok_or_else(|| {
                session.error_status(
                    &action,
                    response.status(),
                    "no Location for the upload".into(),
                )
            })?
        }
    };
    let open = || {
        store
            .open(&digest)
            .map_err(RegistryError::io(format!("opening blob {digest}")))
    };
    let chunk = session.registry.options.chunk_size.max(1);
    if blob.size > chunk {
        let mut offset = 0;
        while offset < blob.size {
            let len = chunk.min(blob.size - offset);
            let file = open()?;
            let url = location.clone();
            let response = session
                .send(&action, Retry::No, &[StatusCode::ACCEPTED], |c| {
                    c.patch(&url)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
                        .header(CONTENT_LENGTH, len)
                        .body(file_body(&file, offset, len))
                })
                .await?;
            location = upload_location(session, &response).unwrap_or(location);
            offset += len;
        }
        let url = with_digest(&location, &digest);
        session
            .send(&action, Retry::No, &[StatusCode::CREATED], |c| {
                c.put(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
    } else {
        let file = open()?;
        let url = with_digest(&location, &digest);
        session
            .send(&action, Retry::No, &[StatusCode::CREATED], |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, blob.size)
                    .body(file_body(&file, 0, blob.size))
            })
            .await?;
    }
    Ok(())
}

fn with_digest(location: &str, digest: &Digest) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}digest={digest}")
}

/// `len` bytes of `file` from `offset`, streamed in 1 MiB positioned
/// reads (no shared file offset, so a second body of the same file, after
/// an auth challenge, starts at `offset` again).
fn file_body(file: &File, offset: u64, len: u64) -> reqwest::Body {
    let file = file.try_clone();
    let stream = stream::unfold((file, offset, offset + len), |(file, at, end)| async move {
        if at >= end {
            return None;
        }
        let f = match file {
            Ok(f) => f,
            Err(e) => return Some((Err(e), (Err(io::Error::other("stopped")), end, end))),
        };
        let mut buf = vec![0u8; (end - at).min(1 << 20) as usize];
        match f.read_at(&mut buf, at) {
            Ok(0) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob shorter than its descriptor",
                )),
                (Ok(f), end, end),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), (Ok(f), at + n as u64, end)))
            }
            Err(e) => Some((Err(e), (Ok(f), end, end))),
        }
    });
    reqwest::Body::wrap_stream(stream)
}
