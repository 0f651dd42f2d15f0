//! Running a plan: each stage starts from its base's layers, each COPY or
//! WORKDIR that changes files adds a layer, and the stage's config,
//! manifest and layers end up in the content store.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_exec::basefs::{BaseFs, Owner, UserError};
use rbuild_exec::copy::{CopyError, CopySpec, copy_entries};
use rbuild_exec::layer::{Entry, EntryKind, LayerWriter};
use rbuild_frontend::{Base, CopySource, MkdirOp, Op, Plan};
use rbuild_oci::{
    BlobStore, Descriptor, Digest, ImageConfig, Manifest, media_type, time::format_rfc3339,
};

use crate::ContentStore;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("line {line}: COPY failed: {source}")]
    Copy { line: usize, source: CopyError },
    #[error("line {line}: {source}")]
    User { line: usize, source: UserError },
    #[error("line {line}: writing the layer: {source}")]
    Layer { line: usize, source: std::io::Error },
    #[error("reading base image {name}: {source}")]
    Base {
        name: String,
        source: rbuild_export::ExportError,
    },
    #[error("reading base image {name}: layer {digest}: {source}")]
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
            | BuildError::Layer { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Inputs of a build besides the plan.
#[derive(Debug, Clone)]
pub struct BuildOptions<'a> {
    /// The build context directory.
    pub context: &'a Path,
    /// `SOURCE_DATE_EPOCH`: when set, the image and history times and the
    /// times of directories the build creates.
    pub source_date_epoch: Option<u64>,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Descriptor,
    pub config_digest: Digest,
    pub config: ImageConfig,
}

/// One stage's filesystem and history as the build goes.
#[derive(Clone)]
struct State {
    layers: Vec<Descriptor>,
    config: ImageConfig,
    fs: Option<BaseFs>,
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
    let dir_mtime = options.source_date_epoch.unwrap_or(0);
    let mut built: Vec<State> = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let mut state = match &stage.base {
            Base::Scratch => State {
                layers: Vec::new(),
                config: ImageConfig::scratch(&stage.platform),
                fs: Some(BaseFs::empty()),
            },
            Base::Stage(i) => built[*i].clone(),
            Base::Image(image) => {
                let loaded = rbuild_export::load_image(store, image.manifest.clone(), Vec::new())
                    .map_err(|source| BuildError::Base {
                    name: image.name.clone(),
                    source,
                })?;
                State {
                    layers: loaded.manifest.layers,
                    config: loaded.config,
                    fs: None,
                }
            }
        };
        let base_name = match &stage.base {
            Base::Image(image) => image.name.clone(),
            _ => String::from("(stage)"),
        };
        for step in &stage.steps {
            let mut history = step.history.clone();
            history.created = Some(created.clone());
            if let Some(op) = &step.op {
                let fs = ensure_fs(&mut state, store, &base_name)?;
                let entries = match op {
                    Op::Copy(copy) => {
                        let CopySource::Context = copy.from;
                        let owner = copy
                            .chown
                            .as_deref()
                            .map(|spec| fs.owner(spec))
                            .transpose()
                            .map_err(|source| BuildError::User {
                                line: step.line,
                                source,
                            })?;
                        let spec = CopySpec {
                            context: options.context,
                            sources: &copy.sources,
                            dest: &copy.dest,
                            owner,
                            chmod: copy.chmod,
                            created_dir_mtime: dir_mtime,
                        };
                        copy_entries(&spec, fs).map_err(|source| BuildError::Copy {
                            line: step.line,
                            source,
                        })?
                    }
                    Op::Mkdir(mkdir) => {
                        mkdir_entries(mkdir, fs, dir_mtime).map_err(|source| BuildError::User {
                            line: step.line,
                            source,
                        })?
                    }
                };
                if entries.is_empty() {
                    history.empty_layer = true;
                } else {
                    let (descriptor, diff_id) =
                        write_layer(store, &entries).map_err(|source| BuildError::Layer {
                            line: step.line,
                            source,
                        })?;
                    let layer =
                        store
                            .open(&descriptor.digest)
                            .map_err(|source| BuildError::Layer {
                                line: step.line,
                                source,
                            })?;
                    fs.apply_layer(layer).map_err(|source| BuildError::Layer {
                        line: step.line,
                        source,
                    })?;
                    state.layers.push(descriptor);
                    state.config.rootfs.diff_ids.push(diff_id);
                }
            }
            state.config.history.push(history);
        }
        state.config.config = stage.config.clone();
        state.config.author = stage.author.clone();
        state.config.created = Some(created.clone());
        built.push(state);
    }
    let target = built.pop().ok_or(BuildError::Empty)?;
    store_image(store, target.config, target.layers)
}

/// The base filesystem view, read from the layers on first use.
fn ensure_fs<'s>(
    state: &'s mut State,
    store: &ContentStore,
    name: &str,
) -> Result<&'s mut BaseFs, BuildError> {
    if state.fs.is_none() {
        let mut fs = BaseFs::empty();
        for layer in &state.layers {
            let file = store
                .open(&layer.digest)
                .map_err(|source| BuildError::BaseLayer {
                    name: name.to_string(),
                    digest: layer.digest,
                    source,
                })?;
            fs.apply_layer(file)
                .map_err(|source| BuildError::BaseLayer {
                    name: name.to_string(),
                    digest: layer.digest,
                    source,
                })?;
        }
        state.fs = Some(fs);
    }
    Ok(state.fs.get_or_insert_with(BaseFs::empty))
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
    layers: Vec<Descriptor>,
) -> Result<BuiltImage, BuildError> {
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
