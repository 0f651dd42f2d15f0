//! Running the build graph: every node whose inputs are ready runs, so
//! independent stages proceed at the same time, up to `jobs` steps at
//! once; each node runs once per build however many stages share it, and
//! once per root across concurrent builds (a per-key lock file makes the
//! second build wait, then find the first one's result in the cache).
//!
//! The graph is walked on a tokio runtime: each node is a task that waits
//! for its inputs' tasks, then does its (blocking) work on the runtime's
//! blocking pool.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use rbuild_exec::basefs::BaseFs;
use rbuild_frontend::{Graph, NodeId, Op};
use rbuild_oci::{Descriptor, Digest, media_type};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore};

use crate::ContentStore;
use crate::background::Background;
use crate::build::{BuildError, BuildOptions};
use crate::cache_io::ImportedCache;
use crate::cache_key::{StepKey, checksum_error, record_files, step_key};
use crate::checksum::{FileStamp, Selection, checksum_selection};
use crate::content::PendingSync;
use crate::metadata::{CacheRecord, CachedLayer, Metadata};
use crate::progress::{Event, MissReason, Vertex};
use crate::steps::{Layer, Run, read_fs};
use crate::summaries::LayerSummaries;

/// A node's outcome.
pub(crate) struct NodeResult {
    /// The filesystem's layers, bottom first.
    pub layers: Vec<Layer>,
    /// The file view after this node, when it was computed here; the next
    /// step takes it instead of reading every layer's headers again.
    pub fs: Mutex<Option<BaseFs>>,
    /// The cache key it was found or stored under (steps only).
    pub key: Option<Digest>,
}

type Outcome = Result<Arc<NodeResult>, Arc<BuildError>>;

/// What every node's task shares.
pub(crate) struct Shared {
    pub graph: Graph,
    pub store: ContentStore,
    pub meta: Arc<Metadata>,
    /// What each layer does to the file view, read once per build.
    pub summaries: LayerSummaries,
    pub options: BuildOptions,
    /// Bounds the steps running at once (`--jobs`).
    jobs: Semaphore,
    cells: Vec<OnceCell<Outcome>>,
    vertices: HashMap<NodeId, Vertex>,
    /// Nodes whose cached result must not be used.
    uncached: HashSet<NodeId>,
    /// Each step's place, for explaining misses.
    slots: HashMap<NodeId, Digest>,
    dir_mtime: u64,
    /// Nodes whose result a later RUN mounts: their layers are unpacked as
    /// they are written.
    feeds_run: HashSet<NodeId>,
    locks: PathBuf,
    /// Content digests of context files from earlier builds, loaded once.
    known: OnceLock<HashMap<PathBuf, (FileStamp, Digest)>>,
    /// What this build learned, written when it ends.
    learned: Mutex<Learned>,
    /// `--cache-from` caches, searched after the root's own.
    pub imports: Vec<ImportedCache>,
    /// Syncs, records and cleanups going on beside the steps.
    pub background: Background,
    /// Blobs known to be in the store.
    present: Mutex<HashSet<Digest>>,
}

#[derive(Default)]
struct Learned {
    hashed: Vec<(PathBuf, FileStamp, Digest)>,
    used: Vec<Digest>,
    facts: Vec<(Digest, String)>,
    /// Checksums of files selected from other stages, by selection key.
    sums: Vec<(Digest, Digest)>,
}

/// How the scheduler sees the plan.
pub(crate) struct Schedule {
    pub vertices: HashMap<NodeId, Vertex>,
    pub uncached: HashSet<NodeId>,
    pub slots: HashMap<NodeId, Digest>,
}

impl Shared {
    pub(crate) fn new(
        graph: Graph,
        store: ContentStore,
        meta: Arc<Metadata>,
        options: BuildOptions,
        schedule: Schedule,
        locks: PathBuf,
        imports: Vec<ImportedCache>,
    ) -> Shared {
        let jobs = options.jobs.max(1);
        Shared {
            feeds_run: feeds_run(&graph),
            cells: (0..graph.len()).map(|_| OnceCell::new()).collect(),
            dir_mtime: options.source_date_epoch.unwrap_or(0),
            graph,
            store,
            summaries: LayerSummaries::new(Arc::clone(&meta)),
            meta,
            options,
            jobs: Semaphore::new(jobs),
            vertices: schedule.vertices,
            uncached: schedule.uncached,
            slots: schedule.slots,
            locks,
            known: OnceLock::new(),
            learned: Mutex::new(Learned::default()),
            imports,
            background: Background::default(),
            present: Mutex::default(),
        }
    }

    /// The selection checksums this build used (for cache export).
    pub(crate) fn used_sums(&self) -> Vec<(Digest, Digest)> {
        self.learned().sums.clone()
    }

    /// A checksum of files selected from another filesystem, if known
    /// here or in an imported cache.
    pub(crate) fn source_sum(&self, selection: &Digest) -> Result<Option<Digest>, BuildError> {
        let mut found = self
            .meta
            .source_sum(selection)
            .map_err(BuildError::Metadata)?;
        if found.is_none() {
            found = self
                .imports
                .iter()
                .find_map(|i| i.config.source_sums.get(selection).copied());
        }
        if let Some(sum) = found {
            self.learned().sums.push((*selection, sum));
        }
        Ok(found)
    }

    /// Remembers a checksum of files selected from another filesystem.
    pub(crate) fn put_source_sum(
        &self,
        selection: &Digest,
        sum: &Digest,
    ) -> Result<(), BuildError> {
        self.learned().sums.push((*selection, *sum));
        self.meta
            .put_source_sum(selection, sum)
            .map_err(BuildError::Metadata)
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.options.progress {
            sink(event);
        }
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what the build learned (file hashes, used records, facts):
    /// losing it costs only speed, so errors are returned for a warning.
    pub(crate) fn save_learned(&self) -> Result<(), crate::metadata::MetadataError> {
        // The selection checksums stay: a cache export still needs them.
        let (hashed, used, facts) = {
            let mut learned = self.learned();
            (
                std::mem::take(&mut learned.hashed),
                std::mem::take(&mut learned.used),
                std::mem::take(&mut learned.facts),
            )
        };
        self.meta.put_file_hashes(&hashed)?;
        self.meta.touch(&used)?;
        self.meta.put_facts(&facts)
    }

    /// The result of `node`, computing it (and its inputs) if needed.
    pub(crate) fn resolve(
        self: &Arc<Self>,
        node: NodeId,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'static>> {
        let shared = Arc::clone(self);
        Box::pin(async move {
            let cell = &shared.cells[node.index()];
            cell.get_or_init(|| async {
                // Inputs in parallel, each on its own task.
                let mut tasks = Vec::new();
                for input in fs_inputs(&shared.graph, node) {
                    tasks.push((input, tokio::spawn(shared.resolve(input))));
                }
                let mut inputs = HashMap::new();
                for (input, task) in tasks {
                    let result = task.await.map_err(|e| {
                        Arc::new(BuildError::Internal(format!("a step task: {e}")))
                    })??;
                    inputs.insert(input, result);
                }
                let _permit = shared
                    .jobs
                    .acquire()
                    .await
                    .map_err(|e| Arc::new(BuildError::Internal(e.to_string())))?;
                let worker = Arc::clone(&shared);
                tokio::task::spawn_blocking(move || worker.compute(node, inputs))
                    .await
                    .map_err(|e| Arc::new(BuildError::Internal(format!("a step: {e}"))))?
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .await
            .clone()
        })
    }

    fn compute(
        &self,
        node: NodeId,
        inputs: HashMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, BuildError> {
        let result = |layers| NodeResult {
            layers,
            fs: Mutex::new(None),
            key: None,
        };
        match &self.graph.node(node).op {
            Op::Scratch => Ok(result(Vec::new())),
            Op::Image { name, manifest } => {
                let started = Instant::now();
                if let Some(vertex) = self.vertices.get(&node) {
                    self.emit(Event::Started {
                        vertex: vertex.clone(),
                        at: SystemTime::now(),
                    });
                }
                let layers = self.image_layers(name, manifest)?;
                if let Some(vertex) = self.vertices.get(&node) {
                    self.emit(Event::Done {
                        vertex: vertex.id,
                        elapsed: started.elapsed(),
                    });
                }
                Ok(result(layers))
            }
            // Sources that are read by the steps using them.
            Op::Context(_) | Op::Inline(_) => Ok(result(Vec::new())),
            Op::Copy(_) | Op::Mkdir(_) | Op::Exec(_) => self.step(node, &inputs),
        }
    }

    /// A base image's layers, from its manifest in the content store.
    fn image_layers(&self, name: &str, manifest: &Digest) -> Result<Vec<Layer>, BuildError> {
        let size = self
            .store
            .size(manifest)
            .map_err(|source| BuildError::BaseLayer {
                name: name.to_string(),
                digest: *manifest,
                source,
            })?;
        let descriptor = Descriptor::new(media_type::OCI_MANIFEST, *manifest, size);
        let image =
            rbuild_export::load_image(&self.store, descriptor, Vec::new()).map_err(|source| {
                BuildError::Base {
                    name: name.to_string(),
                    source,
                }
            })?;
        // load_image checked that the counts agree.
        Ok(image
            .manifest
            .layers
            .into_iter()
            .zip(image.config.rootfs.diff_ids)
            .map(|(descriptor, diff_id)| Layer {
                descriptor,
                diff_id,
                created: None,
            })
            .collect())
    }

    /// A COPY, WORKDIR or RUN: from the cache if its key is there, else run.
    fn step(
        &self,
        node: NodeId,
        inputs: &HashMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, BuildError> {
        let graph_node = self.graph.node(node);
        let line = graph_node.line.unwrap_or(0);
        let vertex = self.vertices.get(&node).cloned().unwrap_or_else(|| Vertex {
            id: 0,
            digest: graph_node.digest,
            name: format!("line {line}"),
            line: graph_node.line,
        });
        let started = Instant::now();
        let fail = |e: BuildError| {
            self.emit(Event::Failed {
                vertex: vertex.id,
                elapsed: started.elapsed(),
                message: e.to_string(),
            });
            e
        };
        let base = graph_node.op.base().ok_or_else(|| {
            BuildError::Internal(format!("step at line {line} has no base filesystem"))
        })?;
        let base_result = inputs
            .get(&base)
            .ok_or_else(|| BuildError::Internal(format!("base of line {line} was not built")))?;
        let StepKey {
            key,
            facts,
            unpacked,
        } = step_key(self, node, inputs).map_err(fail)?;
        let use_cache = !self.uncached.contains(&node);
        if use_cache && let Some(found) = self.lookup(&key).map_err(fail)? {
            self.emit(Event::Cached { vertex });
            return Ok(found);
        }
        let reason = match use_cache {
            false => MissReason::Disabled,
            true => self.why(node, &facts),
        };
        self.emit(Event::Miss {
            vertex: vertex.id,
            reason,
        });
        self.emit(Event::Started {
            vertex: vertex.clone(),
            at: SystemTime::now(),
        });
        // Another build on this root may be running the same step: wait
        // for it, then use its result.
        let lock = KeyLock::acquire(&self.locks, &key).map_err(|e| fail(BuildError::Store(e)))?;
        if use_cache && let Some(found) = self.lookup(&key).map_err(fail)? {
            self.emit(Event::Done {
                vertex: vertex.id,
                elapsed: started.elapsed(),
            });
            return Ok(found);
        }
        // Running it writes files (created once per build, when first
        // needed: a build of cached steps writes nothing).
        self.store
            .scratch()
            .map_err(|e| fail(BuildError::Store(e)))?;
        let base_layers = &base_result.layers;
        // Everything the step reads must be local (imported caches are
        // fetched from lazily).
        for input in inputs.values() {
            self.ensure_blobs(&input.layers, line).map_err(fail)?;
        }
        let taken = base_result
            .fs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut fs = match taken {
            Some(fs) => fs,
            None => read_fs(&self.store, &self.summaries, base_layers).map_err(fail)?,
        };
        // The step takes a while: the log this build has written so far
        // can be folded in meanwhile.
        self.meta.checkpoint_if_large();
        let run = Run {
            graph: &self.graph,
            store: &self.store,
            summaries: &self.summaries,
            background: &self.background,
            options: &self.options,
            inputs,
            vertex: vertex.id,
            dir_mtime: self.dir_mtime,
            feeds_run: self.feeds_run.contains(&node),
        };
        let new_layer = run
            .execute(node, base_layers, &mut fs, unpacked)
            .map_err(fail)?;
        let mut layers = base_layers.clone();
        let size = new_layer.as_ref().map_or(0, |n| n.layer.descriptor.size);
        let sync = new_layer.map(|n| {
            layers.push(n.layer);
            n.sync
        });
        let record = CacheRecord {
            layers: layers
                .iter()
                .map(|l| CachedLayer {
                    descriptor: l.descriptor.clone(),
                    diff_id: l.diff_id,
                    created: l.created.clone(),
                })
                .collect(),
            size,
        };
        match sync {
            None => self
                .meta
                .put(&key, &record)
                .map_err(|e| fail(BuildError::Metadata(e)))?,
            Some(sync) => self.record_when_synced(key, record, sync, lock, line),
        }
        if let Some(slot) = self.slots.get(&node) {
            self.learned().facts.push((*slot, facts.to_string()));
        }
        self.emit(Event::Done {
            vertex: vertex.id,
            elapsed: started.elapsed(),
        });
        Ok(NodeResult {
            layers,
            fs: Mutex::new(Some(fs)),
            key: Some(key),
        })
    }

    /// Stores the record of a step that wrote a layer once the layer's
    /// blob is synced, in the background, so that the build goes on
    /// meanwhile; the step's key stays locked until then, so a concurrent
    /// build waiting for it finds the record.
    fn record_when_synced(
        &self,
        key: Digest,
        record: CacheRecord,
        sync: PendingSync,
        lock: KeyLock,
        line: usize,
    ) {
        let meta = Arc::clone(&self.meta);
        self.background.spawn("rbuild-record", move || {
            sync.wait()
                .map_err(|source| BuildError::Layer { line, source })?;
            meta.put(&key, &record).map_err(BuildError::Metadata)?;
            drop(lock);
            Ok(())
        });
    }

    /// Syncs a blob in the background.
    pub(crate) fn sync_later(&self, sync: Option<PendingSync>) {
        if let Some(sync) = sync {
            self.background.spawn("rbuild-sync", move || {
                sync.wait().map_err(BuildError::Store)
            });
        }
    }

    /// A usable cache record: the root's own, or an imported one, whose
    /// every blob is in the store or in that import (fetched when needed).
    fn lookup(&self, key: &Digest) -> Result<Option<NodeResult>, BuildError> {
        let mut record = self.meta.get(key).map_err(BuildError::Metadata)?;
        let mut usable = record.as_ref().is_some_and(|r| {
            r.layers
                .iter()
                .all(|l| self.blob_available(&l.descriptor.digest))
        });
        if !usable {
            record = self
                .imports
                .iter()
                .find_map(|i| i.config.records.get(key).cloned());
            usable = record.as_ref().is_some_and(|r| {
                r.layers
                    .iter()
                    .all(|l| self.blob_available(&l.descriptor.digest))
            });
        }
        let Some(record) = record.filter(|_| usable) else {
            return Ok(None);
        };
        self.learned().used.push(*key);
        Ok(Some(NodeResult {
            layers: record
                .layers
                .into_iter()
                .map(|l| Layer {
                    descriptor: l.descriptor,
                    diff_id: l.diff_id,
                    created: l.created,
                })
                .collect(),
            fs: Mutex::new(None),
            key: Some(*key),
        }))
    }

    /// Whether a blob is in the store or can be fetched from an import.
    fn blob_available(&self, digest: &Digest) -> bool {
        self.blob_present(digest) || self.imports.iter().any(|i| i.has_blob(digest))
    }

    /// Whether a blob is in the store; a blob found once stays (GC keeps
    /// away while a build runs), so each is looked for once per build.
    fn blob_present(&self, digest: &Digest) -> bool {
        let mut present = self.present.lock().unwrap_or_else(|p| p.into_inner());
        if present.contains(digest) {
            return true;
        }
        let found = self.store.path(digest).exists();
        if found {
            present.insert(*digest);
        }
        found
    }

    /// Why a step missed, when explaining is on.
    fn why(&self, node: NodeId, facts: &Value) -> MissReason {
        let previous = self
            .slots
            .get(&node)
            .and_then(|slot| self.meta.facts(slot).ok().flatten());
        crate::explain::why(previous.as_deref(), facts)
    }

    /// Makes sure the blobs of `layers` are in the content store, fetching
    /// them from imported caches.
    pub(crate) fn ensure_blobs(&self, layers: &[Layer], line: usize) -> Result<(), BuildError> {
        for layer in layers {
            let digest = &layer.descriptor.digest;
            if self.blob_present(digest) {
                continue;
            }
            let fetched = self
                .imports
                .iter()
                .filter(|i| i.has_blob(digest))
                .map(|i| i.fetch(digest, &self.store))
                .find(Result::is_ok);
            if fetched.is_none() {
                return Err(BuildError::Source {
                    line,
                    source: std::io::Error::other(format!(
                        "layer {digest} is missing from the content store and the imported caches"
                    )),
                });
            }
        }
        Ok(())
    }

    /// The checksum of a selection of context files, reusing the content
    /// digests of files unchanged since an earlier build.
    pub(crate) fn context_checksum(
        &self,
        selection: &Selection<'_>,
        line: usize,
        what: &'static str,
        facts: &mut Value,
    ) -> Result<Digest, BuildError> {
        let known = self.known.get_or_init(|| {
            // Without earlier digests every file is read: slower, not wrong.
            self.meta
                .file_hashes(&self.options.context)
                .unwrap_or_default()
        });
        let sum =
            checksum_selection(selection, known).map_err(|e| checksum_error(e, line, what))?;
        record_files(facts, &sum.entries);
        if let Some(sums) = facts.as_object_mut() {
            let list = sums.entry("sums").or_insert_with(|| json!([]));
            if let Value::Array(list) = list {
                list.push(json!(sum.digest.to_string()));
            }
        }
        self.learned().hashed.extend(sum.hashed);
        Ok(sum.digest)
    }
}

/// The inputs of a node that are filesystems the scheduler builds.
/// Every node on the base chain of a RUN: a RUN's root filesystem holds
/// the layers of all of them.
fn feeds_run(graph: &Graph) -> HashSet<NodeId> {
    let mut feeding = HashSet::new();
    for (_, node) in graph.nodes() {
        if !matches!(node.op, Op::Exec(_)) {
            continue;
        }
        let mut below = node.op.base();
        while let Some(id) = below {
            if !feeding.insert(id) {
                break;
            }
            below = graph.node(id).op.base();
        }
    }
    feeding
}

fn fs_inputs(graph: &Graph, node: NodeId) -> Vec<NodeId> {
    graph
        .node(node)
        .op
        .inputs()
        .into_iter()
        .filter(|i| !matches!(graph.node(*i).op, Op::Context(_) | Op::Inline(_)))
        .collect()
}

/// An exclusive lock on one cache key, across processes, released when
/// dropped (or when the process dies).
struct KeyLock {
    _file: File,
}

impl KeyLock {
    fn acquire(dir: &Path, key: &Digest) -> std::io::Result<KeyLock> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(key.hex()))?;
        file.lock()?;
        Ok(KeyLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_frontend::graph::{ContextOp, CopyOp, ExecOp};

    fn copy(graph: &mut Graph, base: NodeId, source: NodeId) -> NodeId {
        graph.add(
            Op::Copy(CopyOp {
                base,
                source,
                sources: vec![".".into()],
                dest: "/".into(),
                chown: None,
                chmod: None,
                unpack: false,
                exclude: Vec::new(),
                parents: false,
            }),
            None,
        )
    }

    fn run(graph: &mut Graph, base: NodeId) -> NodeId {
        graph.add(
            Op::Exec(ExecOp {
                base,
                args: vec!["true".into()],
                env: Vec::new(),
                cwd: "/".into(),
                user: None,
                network: "default".into(),
                security: "sandbox".into(),
                mounts: Vec::new(),
                files: Vec::new(),
            }),
            None,
        )
    }

    #[test]
    fn layers_below_a_run_are_the_ones_unpacked_while_written() {
        let mut g = Graph::default();
        let scratch = g.add(Op::Scratch, None);
        let context = g.add(
            Op::Context(ContextOp {
                name: "context".into(),
                include: Vec::new(),
                exclude: Vec::new(),
            }),
            None,
        );
        // builder: COPY, RUN, COPY (the last COPY has no RUN above it).
        let c1 = copy(&mut g, scratch, context);
        let r1 = run(&mut g, c1);
        let c2 = copy(&mut g, r1, context);
        // final: COPY --from=builder, then a RUN.
        let f1 = copy(&mut g, scratch, c2);
        let f2 = run(&mut g, f1);
        let feeding = feeds_run(&g);
        for id in [scratch, c1, f1] {
            assert!(feeding.contains(&id), "{id:?}");
        }
        // No RUN runs on r1 or c2 (c2 is only copied from), f2 is the top.
        for id in [context, r1, c2, f2] {
            assert!(!feeding.contains(&id), "{id:?}");
        }
    }
}
