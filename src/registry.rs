//! Registry commands and the glue between the registry client and the
//! image store: `rbuild pull`, `push`, `login`, `logout`, and pulling base
//! images and pushing results for `rbuild build`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rbuild_export::registry::{
    Credential, CredentialStore, MountSources, Pulled, PushReport, Registry,
};
use rbuild_export::{LayerCompression, load_image};
use rbuild_oci::{BlobStore, Descriptor, Digest, Manifest, Platform, Reference};
use rbuild_solver::{CacheBlobs, CacheImport, ContentStore, ImageRecord, ImportedCache, Root};

use crate::config::Config;

/// The registry client with this invocation's hosts config and the user's
/// docker credentials.
pub fn client(config: &Config) -> Result<Registry> {
    let path = CredentialStore::default_path();
    let credentials = CredentialStore::open(&path)?;
    Ok(Registry::new(
        config.registry_hosts.clone(),
        Some(credentials),
        config.network,
    ))
}

/// Runs registry work to completion. The client is async; the commands
/// around it are not.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the network runtime")?;
    Ok(runtime.block_on(future))
}

/// Pulls `reference` into the store and names it there; the record says
/// which manifest the name now points to.
pub fn pull(
    root: &Root,
    registry: &Registry,
    reference: &Reference,
    quiet: bool,
) -> Result<(ImageRecord, Pulled)> {
    let pulled = block_on(registry.pull(&root.content, reference, &Platform::host()))??;
    let size = layers_size(root, &pulled.manifest);
    let record = ImageRecord {
        name: reference.clone(),
        manifest: pulled.manifest.clone(),
        config: config_digest(root, &pulled.manifest)?,
        created: pulled.config.created.clone(),
        size,
    };
    root.images.put(record.clone())?;
    if !quiet {
        eprintln!(
            "pulled {} from {}: {} ({} new blobs, {})",
            reference.familiar(),
            pulled.source,
            pulled.digest,
            pulled.fetched_blobs,
            crate::commands::human_size(pulled.fetched_bytes),
        );
    }
    Ok((record, pulled))
}

fn stored_manifest(root: &Root, manifest: &Descriptor) -> Result<Manifest> {
    let bytes = root.content.read_all(&manifest.digest)?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "manifest {} in the store is not valid JSON",
            manifest.digest
        )
    })
}

fn config_digest(root: &Root, manifest: &Descriptor) -> Result<rbuild_oci::Digest> {
    Ok(stored_manifest(root, manifest)?.config.digest)
}

fn layers_size(root: &Root, manifest: &Descriptor) -> u64 {
    stored_manifest(root, manifest)
        .map(|m| m.layers.iter().map(|l| l.size).sum())
        .unwrap_or(0)
}

/// Pushes the image `manifest` to every target, its layers compressed as
/// `layers` says.
pub fn push(
    root: &Root,
    registry: &Registry,
    manifest: &Descriptor,
    targets: &[Reference],
    layers: LayerCompression,
) -> Result<PushReport> {
    let image = load_image(&root.content, manifest.clone(), Vec::new())?;
    let image = crate::layers::convert(root, &image, layers)?;
    push_as_is(
        root,
        registry,
        &image.manifest_descriptor,
        targets,
        Some(layers),
    )
}

/// Pushes a manifest and its blobs as they are in the store. `layers`
/// says how pushed images' layers are compressed, to find them in other
/// repositories (`None`: as stored).
fn push_as_is(
    root: &Root,
    registry: &Registry,
    manifest: &Descriptor,
    targets: &[Reference],
    layers: Option<LayerCompression>,
) -> Result<PushReport> {
    let memory = crate::layers::Memory::open(root)?;
    let mut sources = MountSources::new();
    for target in targets {
        mount_sources(root, target.domain(), &memory, layers, &mut sources);
    }
    Ok(block_on(registry.push(
        &root.content,
        manifest,
        targets,
        &sources,
    ))??)
}

/// One line on what a push moved.
pub fn summary(report: &PushReport) -> String {
    format!(
        "pushed {} blobs ({}), mounted {}, {} already there",
        report.uploaded_blobs,
        crate::commands::human_size(report.uploaded_bytes),
        report.mounted_blobs,
        report.existing_blobs
    )
}

/// Which repositories of `domain` hold each blob, from the images in the
/// store named there (they were pulled from or pushed to it): their blobs
/// as stored, and the compressed forms `layers` gives them on a push.
fn mount_sources(
    root: &Root,
    domain: &str,
    memory: &crate::layers::Memory,
    layers: Option<LayerCompression>,
    sources: &mut MountSources,
) {
    let Ok(records) = root.images.list() else {
        return;
    };
    // One image often has several names: read each manifest once per
    // repository.
    let mut seen: HashSet<(rbuild_oci::Digest, &str)> = HashSet::new();
    for record in records.iter().filter(|r| r.name.domain() == domain) {
        if !seen.insert((record.manifest.digest, record.name.path())) {
            continue;
        }
        let Ok(manifest) = stored_manifest(root, &record.manifest) else {
            continue;
        };
        let path = record.name.path().to_string();
        let mut blobs: Vec<Digest> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .map(|b| b.digest)
            .collect();
        if let Some(layers) = layers
            && let Ok(image) = load_image(&root.content, record.manifest.clone(), Vec::new())
        {
            let known = rbuild_export::remembered_layers(&image, layers, memory);
            blobs.extend(known.iter().map(|l| l.digest));
        }
        for digest in blobs {
            let paths = sources.entry(digest).or_default();
            if !paths.contains(&path) {
                paths.push(path.clone());
            }
        }
    }
}

/// `rbuild pull IMAGE`.
pub fn pull_command(root: &Root, config: &Config, image: &str, quiet: bool) -> Result<()> {
    let reference = Reference::parse(image).map_err(|e| anyhow!("{image}: {e}"))?;
    let registry = client(config)?;
    let _guard = rbuild_solver::gc::build_guard(root).context("locking the root")?;
    let (_, pulled) = pull(root, &registry, &reference, quiet)?;
    if !quiet {
        println!("Digest: {}", pulled.digest);
    }
    println!("{reference}");
    Ok(())
}

/// `rbuild push IMAGE`: every name given, as stored.
pub fn push_command(root: &Root, config: &Config, images: &[String]) -> Result<()> {
    let registry = client(config)?;
    for image in images {
        let reference = Reference::parse(image).map_err(|e| anyhow!("{image}: {e}"))?;
        let record = root
            .images
            .get(&reference)?
            .ok_or_else(|| anyhow!("no such image: {image}"))?;
        let report = push(
            root,
            &registry,
            &record.manifest,
            &[reference],
            crate::output::registry_default(),
        )?;
        // What docker push prints, for scripts that read it.
        for (target, digest, size) in &report.pushed {
            let name = target
                .tag()
                .map_or_else(|| target.familiar(), str::to_string);
            println!("{name}: digest: {digest} size: {size}");
        }
        eprintln!("{}", summary(&report));
    }
    Ok(())
}

/// `rbuild login [-u USER] [-p PASS | --password-stdin] [SERVER]`: checks
/// the credentials against the registry, then stores them as docker does.
pub fn login(
    config: &Config,
    server: Option<&str>,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let server = normalize_server(server.unwrap_or(rbuild_oci::DEFAULT_DOMAIN));
    let username = match username {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let password = match (password, password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => prompt_hidden("Password: ")?,
    };
    if username.is_empty() || password.is_empty() {
        bail!("a username and a password are required");
    }
    let credential = Credential::Basic { username, password };
    let registry = Registry::with_login(
        config.registry_hosts.clone(),
        config.network,
        &server,
        credential.clone(),
    );
    block_on(registry.check_login(&server))??;
    let mut store = CredentialStore::open(&CredentialStore::default_path())?;
    store.store(&server, &credential)?;
    println!("Login Succeeded");
    Ok(())
}

/// `rbuild logout [SERVER]`.
pub fn logout(server: Option<&str>) -> Result<()> {
    let server = normalize_server(server.unwrap_or(rbuild_oci::DEFAULT_DOMAIN));
    let mut store = CredentialStore::open(&CredentialStore::default_path())?;
    if store.erase(&server)? {
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(())
}

/// `https://index.docker.io/v1/` and friends are `docker.io`; a URL is its host.
fn normalize_server(server: &str) -> String {
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" => rbuild_oci::DEFAULT_DOMAIN.to_string(),
        other => other.to_string(),
    }
}

fn prompt(what: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("cannot prompt for a {what:?} without a terminal: use -u and --password-stdin");
    }
    eprint!("{what}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads a line from the terminal without echoing it.
fn prompt_hidden(what: &str) -> Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("cannot prompt for a {what:?} without a terminal: use --password-stdin");
    }
    let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("turning off echo")?;
    eprint!("{what}");
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    // Echo comes back whatever the read did.
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Opens `--cache-from` caches: local layouts here, registry ones through
/// the client (manifest and config only; layers come when the build needs
/// them). A registry cache that cannot be read is a warning, as with
/// BuildKit: the build goes on without it.
pub fn open_cache_imports(
    root: &Root,
    config: &Config,
    imports: &[CacheImport],
) -> Result<Vec<ImportedCache>> {
    let mut opened = Vec::new();
    let mut registry: Option<Arc<Registry>> = None;
    for import in imports {
        match import {
            CacheImport::Local { dir } => opened.push(ImportedCache::open_local(dir)?),
            CacheImport::Registry { reference } => {
                let registry = match &registry {
                    Some(r) => Arc::clone(r),
                    None => Arc::clone(registry.insert(Arc::new(client(config)?))),
                };
                match open_registry_cache(root, registry, reference) {
                    Ok(Some(cache)) => opened.push(cache),
                    Ok(None) => eprintln!("note: --cache-from {reference}: no cache there yet"),
                    Err(e) => eprintln!("warning: --cache-from {reference}: {e:#}"),
                }
            }
        }
    }
    Ok(opened)
}

fn open_registry_cache(
    root: &Root,
    registry: Arc<Registry>,
    reference: &str,
) -> Result<Option<ImportedCache>> {
    let reference = Reference::parse(reference)?;
    let Some((_, manifest)) =
        block_on(registry.pull_manifest(&root.content, &reference, &Platform::host()))??
    else {
        return Ok(None);
    };
    let config = root.content.read_all(&manifest.config.digest)?;
    // An image's layers are also known by their diff IDs: an inline cache
    // names the uncompressed layers the build made, the registry has them
    // compressed.
    let diff_ids: Vec<Digest> = serde_json::from_slice::<rbuild_oci::ImageConfig>(&config)
        .map(|c| c.rootfs.diff_ids)
        .unwrap_or_default();
    let by_diff_id = if diff_ids.len() == manifest.layers.len() {
        diff_ids
            .into_iter()
            .zip(manifest.layers.iter().cloned())
            .collect()
    } else {
        HashMap::new()
    };
    let blobs = Box::new(RegistryBlobs {
        layers: manifest
            .layers
            .iter()
            .map(|l| (l.digest, l.clone()))
            .collect(),
        by_diff_id,
        registry,
        reference: reference.clone(),
    });
    let origin = reference.to_string();
    if manifest.config.media_type == rbuild_solver::CACHE_CONFIG_TYPE {
        Ok(Some(ImportedCache::from_config(&origin, &config, blobs)?))
    } else {
        // An image: its inline cache, if it was built with one.
        Ok(ImportedCache::from_image_config(&origin, &config, blobs)?)
    }
}

/// The layers of a registry cache (or of an image with an inline cache).
struct RegistryBlobs {
    registry: Arc<Registry>,
    reference: Reference,
    layers: HashMap<Digest, Descriptor>,
    /// An image's compressed layers by their uncompressed digest.
    by_diff_id: HashMap<Digest, Descriptor>,
}

impl CacheBlobs for RegistryBlobs {
    fn has_blob(&self, digest: &Digest) -> bool {
        self.layers.contains_key(digest) || self.by_diff_id.contains_key(digest)
    }

    fn fetch(&self, digest: &Digest, store: &ContentStore) -> std::io::Result<()> {
        if let Some(blob) = self.layers.get(digest) {
            return self.pull(blob, store);
        }
        let Some(blob) = self.by_diff_id.get(digest) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{digest} is not in the cache {}", self.reference),
            ));
        };
        // The uncompressed layer the cache record names, from the
        // registry's compressed one, checked against its diff ID.
        self.pull(blob, store)?;
        let compressed = store.open(&blob.digest)?;
        let mut tar = rbuild_exec::compression::decompress(compressed)?;
        store.write(&mut tar, Some(digest)).map(drop)
    }
}

impl RegistryBlobs {
    fn pull(&self, blob: &Descriptor, store: &ContentStore) -> std::io::Result<()> {
        // The solver calls this from its own runtime's threads: a thread of
        // our own keeps the two runtimes apart.
        let fetched = std::thread::scope(|s| {
            s.spawn(|| block_on(self.registry.pull_blob(store, &self.reference, blob)))
                .join()
        });
        match fetched {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(std::io::Error::other(e.to_string())),
            Ok(Err(e)) => Err(std::io::Error::other(format!("{e:#}"))),
            Err(_) => Err(std::io::Error::other("the blob fetching thread panicked")),
        }
    }
}

/// Pushes `--cache-to type=registry` exports.
pub fn push_caches(
    root: &Root,
    config: &Config,
    caches: &[(String, Descriptor)],
) -> Result<Vec<PushReport>> {
    if caches.is_empty() {
        return Ok(Vec::new());
    }
    let registry = client(config)?;
    caches
        .iter()
        .map(|(reference, manifest)| {
            let target = Reference::parse(reference)?;
            // The cache's layers go as they are: its records name them.
            push_as_is(root, &registry, manifest, &[target], None)
                .with_context(|| format!("exporting the cache to {reference}"))
        })
        .collect()
}
