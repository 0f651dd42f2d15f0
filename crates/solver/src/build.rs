//! Running a plan: each stage starts from its base's layers, and each graph
//! node a step names (COPY, ADD, WORKDIR, ...) adds the layer of its change;
//! the target's config, manifest and layers end up in the content store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_exec::basefs::{BaseFs, Owner, UserError};
use rbuild_exec::copy::{CopyError, CopySpec, copy_entries};
use rbuild_exec::layer::{Entry, EntryKind, LayerWriter};
use rbuild_exec::patterns::PatternMatcher;
use rbuild_frontend::{Base, CopyOp, Graph, MkdirOp, NodeId, Op, Plan};
use rbuild_oci::{
    BlobStore, Descriptor, Digest, ImageConfig, Manifest, media_type, time::format_rfc3339,
};

use crate::ContentStore;

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
            _ => None,
        }
    }
}

/// Inputs of a build besides the plan.
pub struct BuildOptions<'a> {
    /// The build context directory.
    pub context: &'a Path,
    /// Where short-lived files go (the root's tmp directory).
    pub scratch: &'a Path,
    /// `SOURCE_DATE_EPOCH`: when set, the image and history times and the
    /// times of directories the build creates.
    pub source_date_epoch: Option<u64>,
    /// How RUN steps run; without one, a RUN is an error.
    pub executor: Option<Executor<'a>>,
    /// The context's `.dockerignore` patterns (for `RUN --mount=type=bind`
    /// from the context; COPY has them in its context node).
    pub context_excludes: &'a [String],
    /// Told when each step starts, before it runs.
    pub on_step: Option<&'a dyn Fn(&StepStarted<'_>)>,
}

/// A step about to run, for progress output.
#[derive(Debug, Clone, Copy)]
pub struct StepStarted<'a> {
    /// The stage's name, if it has one.
    pub stage: Option<&'a str>,
    /// 1-based position in its stage, and the stage's number of steps.
    pub index: usize,
    pub total: usize,
    /// Dockerfile line.
    pub line: usize,
    /// The history text of the instruction (`RUN /bin/sh -c ...`).
    pub created_by: &'a str,
}

/// What RUN steps need.
pub struct Executor<'a> {
    /// The program re-executed as each container's init (rbuild itself,
    /// which hands `rbuild_exec::container::INIT_ARG` to the container
    /// code).
    pub init: &'a Path,
    /// Where unpacked layers live (the root's snapshots directory).
    pub snapshots: &'a Path,
    /// Receives each RUN's output as it comes: Dockerfile line, stream
    /// (1 stdout, 2 stderr), bytes.
    pub output: &'a dyn Fn(usize, u8, &[u8]),
    /// `--network` for steps that do not set one: true for none.
    pub isolate_network: bool,
    /// Where `RUN --mount=type=cache` directories persist (the root's
    /// cache-mounts directory).
    pub cache_mounts: &'a Path,
    /// `--secret`s by id.
    pub secrets: &'a HashMap<String, crate::SecretSource>,
    /// `--ssh` agent sockets by id.
    pub ssh: &'a HashMap<String, PathBuf>,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Descriptor,
    pub config_digest: Digest,
    pub config: ImageConfig,
}

/// Builds the plan's target (its last stage).
pub fn build(
    plan: &Plan,
    store: &ContentStore,
    options: &BuildOptions<'_>,
) -> Result<BuiltImage, BuildError> {
    let now = match options.source_date_epoch {
        Some(epoch) => UNIX_EPOCH + Duration::from_secs(epoch),
        None => SystemTime::now(),
    };
    let created = format_rfc3339(now);
    let mut run = Run {
        graph: &plan.graph,
        store,
        options,
        dir_mtime: options.source_date_epoch.unwrap_or(0),
        layers: HashMap::new(),
    };
    let mut configs: Vec<ImageConfig> = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let mut config = match &stage.base {
            Base::Scratch => ImageConfig::scratch(&stage.platform),
            Base::Stage(i) => configs[*i].clone(),
            Base::Image(image) => image.config.clone(),
        };
        let mut layers = run.layers_of(stage.root)?;
        let mut fs: Option<BaseFs> = None;
        for (i, step) in stage.steps.iter().enumerate() {
            if let Some(on_step) = options.on_step {
                on_step(&StepStarted {
                    stage: stage.name.as_deref(),
                    index: i + 1,
                    total: stage.steps.len(),
                    line: step.line,
                    created_by: step.history.created_by.as_deref().unwrap_or_default(),
                });
            }
            let mut history = step.history.clone();
            history.created = Some(created.clone());
            if let Some(node) = step.node {
                if let Some(layer) = run.execute(node, &layers, &mut fs)? {
                    config.rootfs.diff_ids.push(layer.diff_id);
                    layers.push(layer);
                } else {
                    history.empty_layer = true;
                }
                run.layers.insert(node, layers.clone());
            }
            config.history.push(history);
        }
        config.config = stage.config.clone();
        config.author = stage.author.clone();
        config.created = Some(created.clone());
        configs.push(config);
    }
    let target = configs.pop().ok_or(BuildError::Empty)?;
    let target_layers = match plan.target() {
        Some(stage) => run.layers_of(stage.state)?,
        None => return Err(BuildError::Empty),
    };
    store_image(store, target, target_layers)
}

/// A layer of a filesystem being built: its blob and its diff ID (which
/// names its unpacked form).
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

/// One build's execution state.
pub(crate) struct Run<'a> {
    graph: &'a Graph,
    pub(crate) store: &'a ContentStore,
    pub(crate) options: &'a BuildOptions<'a>,
    dir_mtime: u64,
    /// The layers of every filesystem node built so far.
    layers: HashMap<NodeId, Vec<Layer>>,
}

impl Run<'_> {
    /// The layers that make up a filesystem node.
    pub(crate) fn layers_of(&mut self, node: NodeId) -> Result<Vec<Layer>, BuildError> {
        if let Some(layers) = self.layers.get(&node) {
            return Ok(layers.clone());
        }
        let layers = match &self.graph.node(node).op {
            Op::Scratch => Vec::new(),
            Op::Image { name, manifest } => {
                let size = self
                    .store
                    .size(manifest)
                    .map_err(|source| BuildError::BaseLayer {
                        name: name.clone(),
                        digest: *manifest,
                        source,
                    })?;
                let descriptor = Descriptor::new(media_type::OCI_MANIFEST, *manifest, size);
                let image = rbuild_export::load_image(self.store, descriptor, Vec::new()).map_err(
                    |source| BuildError::Base {
                        name: name.clone(),
                        source,
                    },
                )?;
                // load_image checked that the counts agree.
                image
                    .manifest
                    .layers
                    .into_iter()
                    .zip(image.config.rootfs.diff_ids)
                    .map(|(descriptor, diff_id)| Layer {
                        descriptor,
                        diff_id,
                    })
                    .collect()
            }
            // Stages are built in order, so a step's node is always known.
            _ => Vec::new(),
        };
        self.layers.insert(node, layers.clone());
        Ok(layers)
    }

    /// Runs one step's node on top of `layers`; returns its layer, if it
    /// changed anything.
    fn execute(
        &mut self,
        node: NodeId,
        layers: &[Layer],
        fs: &mut Option<BaseFs>,
    ) -> Result<Option<Layer>, BuildError> {
        let graph_node = self.graph.node(node);
        let line = graph_node.line.unwrap_or(0);
        if fs.is_none() {
            *fs = Some(self.read_fs(layers)?);
        }
        let Some(base_fs) = fs.as_mut() else {
            return Ok(None);
        };
        let entries = match &graph_node.op {
            Op::Copy(copy) => return self.copy_layer(copy, base_fs, line),
            Op::Mkdir(mkdir) => mkdir_entries(mkdir, base_fs, self.dir_mtime)
                .map_err(|source| BuildError::User { line, source })?,
            Op::Exec(exec) => return crate::exec_step::run(self, exec, layers, base_fs, line),
            other => {
                return Err(BuildError::Unsupported {
                    line,
                    what: format!("a step of kind {other:?}"),
                });
            }
        };
        self.commit_layer(&entries, base_fs, line)
    }

    /// Writes `entries` as a layer and records it in the base view; None
    /// when there is nothing to write.
    pub(crate) fn commit_layer(
        &self,
        entries: &[Entry],
        base_fs: &mut BaseFs,
        line: usize,
    ) -> Result<Option<Layer>, BuildError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let (descriptor, diff_id) = write_layer(self.store, entries)
            .map_err(|source| BuildError::Layer { line, source })?;
        let layer = self
            .store
            .open(&descriptor.digest)
            .map_err(|source| BuildError::Layer { line, source })?;
        base_fs
            .apply_layer(layer)
            .map_err(|source| BuildError::Layer { line, source })?;
        Ok(Some(Layer {
            descriptor,
            diff_id,
        }))
    }

    /// The base filesystem view, read from layer headers.
    fn read_fs(&self, layers: &[Layer]) -> Result<BaseFs, BuildError> {
        let mut fs = BaseFs::empty();
        for layer in layers {
            let err = |source| BuildError::BaseLayer {
                name: "base".into(),
                digest: layer.descriptor.digest,
                source,
            };
            let file = self.store.open(&layer.descriptor.digest).map_err(err)?;
            fs.apply_layer(file).map_err(err)?;
        }
        Ok(fs)
    }

    /// A COPY or ADD's layer.
    fn copy_layer(
        &mut self,
        copy: &CopyOp,
        base_fs: &mut BaseFs,
        line: usize,
    ) -> Result<Option<Layer>, BuildError> {
        let what = if copy.unpack { "ADD" } else { "COPY" };
        let owner = copy
            .chown
            .as_deref()
            .map(|spec| base_fs.owner(spec))
            .transpose()
            .map_err(|source| BuildError::User { line, source })?;
        // The source files as a directory on this machine.
        let mut excludes = None;
        let source_dir: SourceDir = match &self.graph.node(copy.source).op {
            Op::Context(context) => {
                if !context.exclude.is_empty() {
                    let matcher =
                        PatternMatcher::new(&context.exclude).map_err(|e| BuildError::Source {
                            line,
                            source: std::io::Error::other(format!(".dockerignore: {e}")),
                        })?;
                    excludes = Some(matcher);
                }
                SourceDir::Borrowed(self.options.context.to_path_buf())
            }
            Op::Inline(files) => {
                let dir = ScratchDir::new(self.options.scratch)
                    .map_err(|source| BuildError::Source { line, source })?;
                for (name, content) in files {
                    std::fs::write(dir.path.join(name), content)
                        .map_err(|source| BuildError::Source { line, source })?;
                }
                SourceDir::Owned(dir)
            }
            _ => {
                let layers = self.layers_of(copy.source)?;
                SourceDir::Owned(self.materialize(&layers, line)?)
            }
        };
        // Another filesystem's files keep their owners; the context's and
        // inline files become root's.
        let keep_owners = !matches!(
            self.graph.node(copy.source).op,
            Op::Context(_) | Op::Inline(_)
        );
        let copy_exclude = match copy.exclude.is_empty() {
            true => None,
            false => Some(
                PatternMatcher::new(&copy.exclude).map_err(|e| BuildError::Source {
                    line,
                    source: std::io::Error::other(format!("--exclude: {e}")),
                })?,
            ),
        };
        let spec = CopySpec {
            copy_exclude: copy_exclude.as_ref(),
            parents: copy.parents,
            keep_owners,
            exclude: excludes.as_ref(),
            context: source_dir.path(),
            sources: &copy.sources,
            dest: &copy.dest,
            owner,
            chmod: copy.chmod,
            created_dir_mtime: self.dir_mtime,
            unpack: copy.unpack,
            scratch: self.options.scratch,
        };
        let copied = copy_entries(&spec, base_fs).map_err(|source| BuildError::Copy {
            line,
            what,
            source,
        })?;
        self.commit_layer(&copied.entries, base_fs, line)
    }

    /// Applies `layers` into a fresh scratch directory.
    pub(crate) fn materialize(
        &self,
        layers: &[Layer],
        line: usize,
    ) -> Result<ScratchDir, BuildError> {
        let dir = ScratchDir::new(self.options.scratch)
            .map_err(|source| BuildError::Source { line, source })?;
        for layer in layers {
            let file = self
                .store
                .open(&layer.descriptor.digest)
                .map_err(|source| BuildError::Source { line, source })?;
            rbuild_exec::apply::apply_layer(&dir.path, file).map_err(|e| BuildError::Source {
                line,
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(dir)
    }
}

/// Where a copy reads from: the context as it is, or a scratch copy.
enum SourceDir {
    Borrowed(PathBuf),
    Owned(ScratchDir),
}

impl SourceDir {
    fn path(&self) -> &Path {
        match self {
            SourceDir::Borrowed(p) => p,
            SourceDir::Owned(d) => &d.path,
        }
    }
}

/// A directory under the root's tmp, removed when dropped.
pub(crate) struct ScratchDir {
    pub(crate) path: PathBuf,
    _guard: tempfile::TempDir,
}

impl ScratchDir {
    pub(crate) fn new(parent: &Path) -> std::io::Result<ScratchDir> {
        std::fs::create_dir_all(parent)?;
        let guard = tempfile::Builder::new().prefix("src-").tempdir_in(parent)?;
        Ok(ScratchDir {
            path: guard.path().to_path_buf(),
            _guard: guard,
        })
    }
}

/// WORKDIR creates its missing directories, owned by the stage's USER.
fn mkdir_entries(mkdir: &MkdirOp, fs: &BaseFs, mtime: u64) -> Result<Vec<Entry>, UserError> {
    let owner = match &mkdir.user {
        Some(user) => fs.owner(user)?,
        None => Owner { uid: 0, gid: 0 },
    };
    let mut entries = Vec::new();
    let mut path = String::new();
    for part in mkdir.path.split('/').filter(|p| !p.is_empty()) {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        // Existing components are followed through symlinks, like mkdir -p.
        if fs.is_dir(&path) {
            if let Some(real) = fs.resolve_path(&path, true) {
                path = real;
            }
            continue;
        }
        entries.push(Entry {
            path: path.clone(),
            kind: EntryKind::Directory,
            mode: 0o755,
            uid: u64::from(owner.uid),
            gid: u64::from(owner.gid),
            mtime,
            xattrs: Vec::new(),
        });
    }
    Ok(entries)
}

/// Writes a layer into the store; returns its descriptor and diff ID.
fn write_layer(store: &ContentStore, entries: &[Entry]) -> std::io::Result<(Descriptor, Digest)> {
    let mut writer = LayerWriter::new(store.ingest()?);
    for entry in entries {
        writer.add(entry)?;
    }
    let (diff_id, _, ingest) = writer.finish()?;
    let (digest, size) = ingest.commit(Some(&diff_id))?;
    Ok((
        Descriptor::new(media_type::OCI_LAYER, digest, size),
        diff_id,
    ))
}

/// Stores the config and manifest of a finished image.
fn store_image(
    store: &ContentStore,
    config: ImageConfig,
    layers: Vec<Layer>,
) -> Result<BuiltImage, BuildError> {
    let layers: Vec<Descriptor> = layers.into_iter().map(|l| l.descriptor).collect();
    let config_json = serde_json::to_vec(&config).map_err(|e| BuildError::Store(e.into()))?;
    let config_digest = store.write_bytes(&config_json).map_err(BuildError::Store)?;
    let manifest = Manifest::new(
        Descriptor::new(
            media_type::OCI_CONFIG,
            config_digest,
            config_json.len() as u64,
        ),
        layers,
    );
    let manifest_json = serde_json::to_vec(&manifest).map_err(|e| BuildError::Store(e.into()))?;
    let manifest_digest = store
        .write_bytes(&manifest_json)
        .map_err(BuildError::Store)?;
    Ok(BuiltImage {
        manifest: Descriptor::new(
            media_type::OCI_MANIFEST,
            manifest_digest,
            manifest_json.len() as u64,
        ),
        config_digest,
        config,
    })
}
