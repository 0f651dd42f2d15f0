//! Building a plan: the scheduler resolves the target stage's filesystem
//! (each step from the cache or run), then the image is assembled from the
//! stages' configs and history, with the layers' creation times, and its
//! config, manifest and layers end up in the content store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_exec::basefs::UserError;
use rbuild_exec::copy::CopyError;
use rbuild_frontend::{Base, NodeId, Plan};
use rbuild_oci::{
    Descriptor, Digest, History, ImageConfig, Manifest, media_type, time::format_rfc3339,
};

use crate::Root;
use crate::cache_io::{
    CacheConfig, CacheDest, CacheExport, CacheIoError, CacheMode, ImportedCache,
};
use crate::metadata::{CacheRecord, CachedLayer, MetadataError};
use crate::progress::{Sink, Vertex};
use crate::scheduler::{NodeResult, Schedule, Shared};
use crate::steps::Layer;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("line {line}: {what} failed: {source}")]
    Copy {
        line: usize,
        what: &'static str,
        source: CopyError,
    },
    #[error("line {line}: {source}")]
    User { line: usize, source: UserError },
    #[error("line {line}: writing the layer: {source}")]
    Layer { line: usize, source: std::io::Error },
    #[error("line {line}: {what} is not supported by this version of rbuild yet")]
    Unsupported { line: usize, what: String },
    #[error("line {line}: RUN {command} failed: {status}")]
    Run {
        line: usize,
        command: String,
        status: String,
    },
    #[error("line {line}: RUN: {message}")]
    Exec { line: usize, message: String },
    #[error("line {line}: preparing the files to copy: {source}")]
    Source { line: usize, source: std::io::Error },
    #[error("reading image {name}: {source}")]
    Base {
        name: String,
        source: rbuild_export::ExportError,
    },
    #[error("reading image {name}: layer {digest}: {source}")]
    BaseLayer {
        name: String,
        digest: Digest,
        source: std::io::Error,
    },
    #[error("storing the image: {0}")]
    Store(std::io::Error),
    #[error("the plan has no stages")]
    Empty,
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Cache(#[from] CacheIoError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A step's error, also reported to the steps that depended on it.
    #[error(transparent)]
    Shared(Arc<BuildError>),
}

impl BuildError {
    /// The Dockerfile line the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            BuildError::Copy { line, .. }
            | BuildError::User { line, .. }
            | BuildError::Layer { line, .. }
            | BuildError::Unsupported { line, .. }
            | BuildError::Run { line, .. }
            | BuildError::Exec { line, .. }
            | BuildError::Source { line, .. } => Some(*line),
            BuildError::Shared(inner) => inner.line(),
            _ => None,
        }
    }
}

/// Inputs of a build besides the plan.
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// Where short-lived files go (the root's tmp directory).
    pub scratch: PathBuf,
    /// `SOURCE_DATE_EPOCH`: when set, the image and history times and the
    /// times of directories the build creates.
    pub source_date_epoch: Option<u64>,
    /// How RUN steps run; without one, a RUN is an error.
    pub executor: Option<Executor>,
    /// The context's `.dockerignore` patterns (for `RUN --mount=type=bind`
    /// from the context; COPY has them in its context node).
    pub context_excludes: Vec<String>,
    /// Receives progress events.
    pub progress: Option<Sink>,
    /// What may come from the cache.
    pub cache: CachePolicy,
    /// Steps running at once (`--jobs`).
    pub jobs: usize,
    /// Names this Dockerfile for explaining misses: steps of the same
    /// scope, stage and position are compared with their last build.
    pub scope: String,
    /// `--cache-from`: caches to reuse results from, opened by the caller
    /// ([`ImportedCache::open_local`], or from a registry).
    pub cache_imports: Vec<ImportedCache>,
    /// `--cache-to`: where to export the cache after the build.
    pub cache_exports: Vec<CacheExport>,
}

/// Which cached results a build may use.
#[derive(Debug, Clone, Default)]
pub struct CachePolicy {
    /// `--no-cache`: run every step.
    pub disabled: bool,
    /// `--no-cache-filter`: run every step of these stages (names or
    /// indexes); stages after them rerun only if their inputs changed.
    pub disabled_stages: Vec<String>,
}

/// What RUN steps need.
#[derive(Debug, Clone)]
pub struct Executor {
    /// The program re-executed as each container's init (rbuild itself,
    /// which hands `rbuild_exec::container::INIT_ARG` to the container
    /// code).
    pub init: PathBuf,
    /// Where unpacked layers live (the root's snapshots directory).
    pub snapshots: PathBuf,
    /// `--network` for steps that do not set one: true for none.
    pub isolate_network: bool,
    /// Where `RUN --mount=type=cache` directories persist (the root's
    /// cache-mounts directory).
    pub cache_mounts: PathBuf,
    /// `--secret`s by id.
    pub secrets: HashMap<String, crate::SecretSource>,
    /// `--ssh` agent sockets by id.
    pub ssh: HashMap<String, PathBuf>,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Descriptor,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// `--cache-to type=registry` exports: the reference to push to, and
    /// the cache manifest (in the content store) to push there.
    pub cache_manifests: Vec<(String, Descriptor)>,
}

/// Builds the plan's target (its last stage).
pub fn build(
    plan: &Plan,
    root: &Root,
    mut options: BuildOptions,
) -> Result<BuiltImage, BuildError> {
    let target = plan.target().ok_or(BuildError::Empty)?;
    // Context files are remembered by their real path.
    if let Ok(real) = std::fs::canonicalize(&options.context) {
        options.context = real;
    }
    let meta = root.metadata()?;
    let schedule = schedule(plan, &options);
    let source_date_epoch = options.source_date_epoch;
    let imports = std::mem::take(&mut options.cache_imports);
    let exports = std::mem::take(&mut options.cache_exports);
    let shared = Arc::new(Shared::new(
        plan.graph.clone(),
        root.content.clone(),
        meta,
        options,
        schedule,
        root.path().join("locks"),
        imports,
    ));
    // One thread drives the graph (its tasks only wait); the steps run on
    // the blocking pool, as many at once as --jobs lets them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("rbuild-solver")
        .build()
        .map_err(|e| BuildError::Internal(format!("starting the scheduler: {e}")))?;
    let mut nodes: Vec<NodeId> = Vec::new();
    for stage in &plan.stages {
        nodes.push(stage.root);
        nodes.extend(stage.steps.iter().filter_map(|step| step.node));
    }
    nodes.push(target.state);
    let outcome = runtime.block_on({
        let shared = Arc::clone(&shared);
        async move {
            // All at once: each waits for its own inputs only, so
            // independent stages run side by side.
            let tasks: Vec<_> = nodes
                .into_iter()
                .map(|node| (node, tokio::spawn(shared.resolve(node))))
                .collect();
            let mut results = HashMap::new();
            for (node, task) in tasks {
                let result = task
                    .await
                    .map_err(|e| Arc::new(BuildError::Internal(format!("a step task: {e}"))))??;
                results.insert(node, result);
            }
            Ok::<_, Arc<BuildError>>(results)
        }
    });
    match outcome {
        Ok(_) => drop(runtime),
        // Steps of other stages may still be running: do not wait for
        // them; they end with this process (their containers die with it).
        Err(_) => runtime.shutdown_background(),
    }
    // What was learned is worth keeping even when the build failed, and
    // so are the records of the steps that finished.
    let saved = shared.save_learned();
    let results = match outcome {
        Ok(results) => results,
        Err(e) => {
            let _ = shared.background.finish();
            return Err(Arc::try_unwrap(e).unwrap_or_else(BuildError::Shared));
        }
    };
    let finished = finish(plan, &shared, &results, &exports, source_date_epoch, saved);
    if finished.is_err() {
        let _ = shared.background.finish();
    }
    finished
}

/// The image (and cache exports) of a build whose steps all succeeded;
/// returns once every step's record is stored too.
fn finish(
    plan: &Plan,
    shared: &Shared,
    results: &HashMap<NodeId, Arc<NodeResult>>,
    exports: &[CacheExport],
    source_date_epoch: Option<u64>,
    saved: Result<(), MetadataError>,
) -> Result<BuiltImage, BuildError> {
    saved?;
    let (config, layers) = assemble(plan, results, source_date_epoch)?;
    shared.ensure_blobs(&layers, 0)?;
    if exports.is_empty() {
        // The last layers' syncs go on while the image is stored.
        let built = store_image(shared, config, layers, None)?;
        shared.background.finish()?;
        return Ok(built);
    }
    // Exports read the records.
    shared.background.finish()?;
    let mut cache_manifests = Vec::new();
    let mut inline = None;
    for export in exports {
        let records = cache_records(plan, shared, results, export.mode)?;
        match &export.dest {
            CacheDest::Local(dir) => crate::cache_io::export(&shared.store, &records, dir)?,
            CacheDest::Registry(reference) => cache_manifests.push((
                reference.clone(),
                crate::cache_io::export_to_store(&shared.store, &records, reference)?,
            )),
            CacheDest::Inline => inline = Some(records),
        }
    }
    let mut built = store_image(shared, config, layers, inline.as_ref())?;
    shared.background.finish()?;
    built.cache_manifests = cache_manifests;
    Ok(built)
}

/// The cache records of this build's steps: the target's (and its base
/// stages') for mode=min, every stage's for mode=max.
fn cache_records(
    plan: &Plan,
    shared: &Shared,
    results: &HashMap<NodeId, Arc<NodeResult>>,
    mode: CacheMode,
) -> Result<CacheConfig, BuildError> {
    let mut stages: Vec<usize> = Vec::new();
    match mode {
        CacheMode::Max => stages.extend(0..plan.stages.len()),
        CacheMode::Min => {
            let mut next = plan.stages.len().checked_sub(1);
            while let Some(i) = next {
                stages.push(i);
                next = match plan.stages[i].base {
                    Base::Stage(j) => Some(j),
                    _ => None,
                };
            }
        }
    }
    let mut config = CacheConfig::default();
    for &i in &stages {
        for node in plan.stages[i].steps.iter().filter_map(|s| s.node) {
            let Some(result) = results.get(&node) else {
                continue;
            };
            let Some(key) = result.key else { continue };
            shared.ensure_blobs(&result.layers, 0)?;
            let size = shared.meta.get(&key)?.map_or(0, |r| r.size);
            let layers = result
                .layers
                .iter()
                .map(|l| CachedLayer {
                    descriptor: l.descriptor.clone(),
                    diff_id: l.diff_id,
                    created: l.created.clone(),
                })
                .collect();
            config.records.insert(key, CacheRecord { layers, size });
        }
    }
    if mode == CacheMode::Max {
        config.source_sums.extend(shared.used_sums());
    }
    Ok(config)
}

/// Vertices, cache rules and explain slots for the plan's steps.
fn schedule(plan: &Plan, options: &BuildOptions) -> Schedule {
    let mut vertices = HashMap::new();
    let mut uncached = HashSet::new();
    let mut slots = HashMap::new();
    let mut next = 1;
    for (index, stage) in plan.stages.iter().enumerate() {
        let stage_name = stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"));
        let disabled = options.cache.disabled
            || options
                .cache
                .disabled_stages
                .iter()
                .any(|s| s.eq_ignore_ascii_case(&stage_name) || *s == index.to_string());
        let total = 1 + stage.steps.iter().filter(|s| s.node.is_some()).count();
        if let Base::Image(image) = &stage.base
            && !vertices.contains_key(&stage.root)
        {
            vertices.insert(
                stage.root,
                Vertex {
                    id: next,
                    digest: plan.graph.node(stage.root).digest,
                    name: format!("[{stage_name} 1/{total}] FROM {}", image.name),
                    line: None,
                },
            );
            next += 1;
        }
        let mut position = 1;
        for step in &stage.steps {
            let Some(node) = step.node else { continue };
            position += 1;
            if disabled {
                uncached.insert(node);
            }
            slots.entry(node).or_insert_with(|| {
                Digest::of(
                    format!("{}\0{index}\0{stage_name}\0{position}", options.scope).as_bytes(),
                )
            });
            if vertices.contains_key(&node) {
                continue;
            }
            vertices.insert(
                node,
                Vertex {
                    id: next,
                    digest: plan.graph.node(node).digest,
                    name: format!("[{stage_name} {position}/{total}] {}", step.text),
                    line: Some(step.line),
                },
            );
            next += 1;
        }
    }
    Schedule {
        vertices,
        uncached,
        slots,
    }
}

/// The target's config and layers, with history times as BuildKit sets
/// them: a layer's entry has the time its step ran (from the cache when it
/// was reused, so an unchanged rebuild gives the same image); an entry
/// without a layer has the time of the entry before it, or of the first
/// layer after it when none is before; the image's time is its last
/// entry's.
fn assemble(
    plan: &Plan,
    results: &HashMap<NodeId, Arc<NodeResult>>,
    source_date_epoch: Option<u64>,
) -> Result<(ImageConfig, Vec<Layer>), BuildError> {
    let now = format_rfc3339(SystemTime::now());
    let epoch = source_date_epoch.map(|e| format_rfc3339(UNIX_EPOCH + Duration::from_secs(e)));
    let mut configs: Vec<ImageConfig> = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let mut config = match &stage.base {
            Base::Scratch => ImageConfig::scratch(&stage.platform),
            Base::Stage(i) => configs[*i].clone(),
            Base::Image(image) => image.config.clone(),
        };
        let mut previous: Option<&[Layer]> = None;
        let mut history: Vec<History> = Vec::with_capacity(stage.steps.len());
        let mut times: Vec<Option<String>> = Vec::with_capacity(stage.steps.len());
        for step in &stage.steps {
            let mut entry = step.history.clone();
            let mut time = None;
            if let Some(node) = step.node {
                let result = results.get(&node).ok_or_else(|| {
                    BuildError::Internal(format!("line {} was not built", step.line))
                })?;
                let before = previous.map_or_else(
                    || results.get(&stage.root).map_or(0, |r| r.layers.len()),
                    |p| p.len(),
                );
                if result.layers.len() > before {
                    let layer = &result.layers[result.layers.len() - 1];
                    config.rootfs.diff_ids.push(layer.diff_id);
                    time = Some(layer.created.clone().unwrap_or_else(|| now.clone()));
                } else {
                    entry.empty_layer = true;
                }
                previous = Some(&result.layers);
            }
            history.push(entry);
            times.push(time);
        }
        fill_times(&mut times, &now);
        let mut last = None;
        for (mut entry, time) in history.into_iter().zip(times) {
            let time = time.unwrap_or_else(|| now.clone());
            entry.created = Some(epoch.clone().unwrap_or(time));
            last = entry.created.clone();
            config.history.push(entry);
        }
        config.config = stage.config.clone();
        config.author = stage.author.clone();
        config.created = Some(epoch.clone().or(last).unwrap_or_else(|| now.clone()));
        configs.push(config);
    }
    let target = plan.target().ok_or(BuildError::Empty)?;
    let layers = results
        .get(&target.state)
        .map(|r| r.layers.clone())
        .ok_or_else(|| BuildError::Internal("the target was not built".into()))?;
    let config = configs.pop().ok_or(BuildError::Empty)?;
    Ok((config, layers))
}

/// Entries without a layer take the previous entry's time, or the first
/// layer's when they come before any; with no layer at all, now.
fn fill_times(times: &mut [Option<String>], now: &str) {
    let first = times
        .iter()
        .flatten()
        .next()
        .cloned()
        .unwrap_or_else(|| now.to_string());
    let mut current = first;
    for time in times.iter_mut() {
        match time {
            Some(t) => current = t.clone(),
            None => *time = Some(current.clone()),
        }
    }
}

/// Stores the config and manifest of a finished image; their syncs go
/// on beside the build's last ones (the build waits for them).
fn store_image(
    shared: &Shared,
    config: ImageConfig,
    layers: Vec<Layer>,
    inline_cache: Option<&CacheConfig>,
) -> Result<BuiltImage, BuildError> {
    let store = &shared.store;
    let layers: Vec<Descriptor> = layers.into_iter().map(|l| l.descriptor).collect();
    let mut config_value =
        serde_json::to_value(&config).map_err(|e| BuildError::Store(e.into()))?;
    if let Some(cache) = inline_cache {
        config_value[crate::cache_io::INLINE_KEY] =
            serde_json::to_value(cache).map_err(|e| BuildError::Store(e.into()))?;
    }
    let config_json = serde_json::to_vec(&config_value).map_err(|e| BuildError::Store(e.into()))?;
    let (config_digest, config_sync) = store
        .write_bytes_deferred(&config_json)
        .map_err(BuildError::Store)?;
    shared.sync_later(config_sync);
    let manifest = Manifest::new(
        Descriptor::new(
            media_type::OCI_CONFIG,
            config_digest,
            config_json.len() as u64,
        ),
        layers,
    );
    let manifest_json = serde_json::to_vec(&manifest).map_err(|e| BuildError::Store(e.into()))?;
    let (manifest_digest, manifest_sync) = store
        .write_bytes_deferred(&manifest_json)
        .map_err(BuildError::Store)?;
    shared.sync_later(manifest_sync);
    Ok(BuiltImage {
        manifest: Descriptor::new(
            media_type::OCI_MANIFEST,
            manifest_digest,
            manifest_json.len() as u64,
        ),
        config_digest,
        config,
        cache_manifests: Vec::new(),
    })
}
