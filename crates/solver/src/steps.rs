//! Doing one step whose result was not in the cache: a COPY/ADD, a
//! WORKDIR's directories or a RUN, each making at most one layer on top of
//! its base's layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_exec::basefs::{BaseFs, Owner, UserError};
use rbuild_exec::copy::{CopySpec, copy_entries};
use rbuild_exec::layer::{Entry, EntryKind, LayerWriter};
use rbuild_exec::patterns::PatternMatcher;
use rbuild_exec::snapshot::Snapshots;
use rbuild_exec::summary::{FileOrigins, Touch};
use rbuild_frontend::{CopyOp, Graph, MkdirOp, NodeId, Op};
use rbuild_oci::{BlobStore, Descriptor, Digest, media_type};

use crate::ContentStore;
use crate::background::Background;
use crate::build::{BuildError, BuildOptions};
use crate::content::PendingSync;
use crate::progress::{Event, VertexId};
use crate::scheduler::NodeResult;
use crate::summaries::LayerSummaries;

/// A layer of a filesystem being built: its blob, its diff ID (which
/// names its unpacked form) and when the step that made it ran.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub created: Option<String>,
}

/// A layer a step wrote, and the sync that must finish before anything
/// names it durably (see [`crate::content`]).
pub(crate) struct NewLayer {
    pub layer: Layer,
    pub sync: PendingSync,
}

/// What one step runs with: the build's stores and options, and the
/// results of the nodes it reads.
pub(crate) struct Run<'a> {
    pub(crate) graph: &'a Graph,
    pub(crate) store: &'a ContentStore,
    /// The build's layer summaries.
    pub(crate) summaries: &'a LayerSummaries,
    /// Where finished work's scratch goes to be removed.
    pub(crate) background: &'a Background,
    pub(crate) options: &'a BuildOptions,
    pub(crate) inputs: &'a HashMap<NodeId, Arc<NodeResult>>,
    /// The vertex whose output RUN logs are.
    pub(crate) vertex: VertexId,
    /// Modification time of directories the build creates.
    pub(crate) dir_mtime: u64,
    /// A later RUN mounts this step's result.
    pub(crate) feeds_run: bool,
}

impl Run<'_> {
    /// The layers of an input filesystem.
    pub(crate) fn layers_of(&self, node: NodeId) -> Result<Vec<Layer>, BuildError> {
        self.inputs
            .get(&node)
            .map(|r| r.layers.clone())
            .ok_or_else(|| BuildError::Internal(format!("input {node:?} was not built")))
    }

    /// Sends a RUN's output to the progress display.
    pub(crate) fn output(&self, stream: u8, data: &[u8]) {
        if let Some(sink) = &self.options.progress {
            sink(Event::Log {
                vertex: self.vertex,
                stream,
                data: data.to_vec(),
                at: std::time::SystemTime::now(),
            });
        }
    }

    /// Runs one step's node on top of `layers`; returns its layer, if it
    /// changed anything. `source` is the copy source already unpacked, if
    /// the cache key needed it.
    pub(crate) fn execute(
        &self,
        node: NodeId,
        layers: &[Layer],
        base_fs: &mut BaseFs,
        source: Option<ScratchDir>,
    ) -> Result<Option<NewLayer>, BuildError> {
        let graph_node = self.graph.node(node);
        let line = graph_node.line.unwrap_or(0);
        match &graph_node.op {
            Op::Copy(copy) => self.copy_layer(copy, base_fs, source, line),
            Op::Mkdir(mkdir) => {
                let entries = mkdir_entries(mkdir, base_fs, self.dir_mtime)
                    .map_err(|source| BuildError::User { line, source })?;
                self.commit_layer(&entries, base_fs, line)
            }
            Op::Exec(exec) => crate::exec_step::run(self, exec, layers, base_fs, line),
            other => Err(BuildError::Unsupported {
                line,
                what: format!("a step of kind {other:?}"),
            }),
        }
    }

    /// Writes `entries` as a layer and records it in the base view; None
    /// when there is nothing to write.
    pub(crate) fn commit_layer(
        &self,
        entries: &[Entry],
        base_fs: &mut BaseFs,
        line: usize,
    ) -> Result<Option<NewLayer>, BuildError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let unpack_into = self
            .feeds_run
            .then(|| crate::exec_step::overlay_snapshots(self.options))
            .flatten();
        let epoch = self.options.source_date_epoch;
        let (descriptor, diff_id, sync) =
            write_layer(self.store, entries, epoch, unpack_into.as_ref())
                .map_err(|source| BuildError::Layer { line, source })?;
        let summary = self
            .summaries
            .get(self.store, &descriptor.digest)
            .map_err(|source| BuildError::Layer { line, source })?;
        base_fs.apply_summary(&summary);
        Ok(Some(NewLayer {
            layer: Layer {
                descriptor,
                diff_id,
                created: Some(rbuild_oci::time::format_rfc3339(
                    std::time::SystemTime::now(),
                )),
            },
            sync,
        }))
    }

    /// A COPY or ADD's layer.
    fn copy_layer(
        &self,
        copy: &CopyOp,
        base_fs: &mut BaseFs,
        unpacked: Option<ScratchDir>,
        line: usize,
    ) -> Result<Option<NewLayer>, BuildError> {
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
                excludes = context_matcher(&context.exclude, line)?;
                SourceDir::Borrowed(self.options.context.clone())
            }
            Op::Inline(files) => SourceDir::Owned(inline_dir(self.options, files, line)?),
            _ => match unpacked {
                Some(dir) => SourceDir::Owned(dir),
                None => {
                    let layers = self.layers_of(copy.source)?;
                    SourceDir::Owned(materialize_for(
                        self.store,
                        self.summaries,
                        self.options,
                        &layers,
                        Some(&copy.sources),
                        None,
                        line,
                    )?)
                }
            },
        };
        let copy_exclude = copy_exclude_matcher(&copy.exclude, line)?;
        let spec = CopySpec {
            copy_exclude: copy_exclude.as_ref(),
            parents: copy.parents,
            keep_owners: keeps_owners(self.graph, copy),
            exclude: excludes.as_ref(),
            context: source_dir.path(),
            sources: &copy.sources,
            dest: &copy.dest,
            owner,
            chmod: copy.chmod,
            created_dir_mtime: self.dir_mtime,
            unpack: copy.unpack,
            scratch: &self.options.scratch,
        };
        let copied = copy_entries(&spec, base_fs).map_err(|source| BuildError::Copy {
            line,
            what,
            source,
        })?;
        let layer = self.commit_layer(&copied.entries, base_fs, line);
        // Entries may read from both until the layer is written.
        self.background.discard((copied, source_dir));
        layer
    }

    /// Applies `layers` into a fresh scratch directory.
    pub(crate) fn materialize(
        &self,
        layers: &[Layer],
        line: usize,
    ) -> Result<ScratchDir, BuildError> {
        materialize(self.store, self.summaries, self.options, layers, line)
    }
}

/// Another filesystem's files keep their owners; the context's and inline
/// files become root's.
pub(crate) fn keeps_owners(graph: &Graph, copy: &CopyOp) -> bool {
    !matches!(graph.node(copy.source).op, Op::Context(_) | Op::Inline(_))
}

/// The `.dockerignore` matcher of a context node.
pub(crate) fn context_matcher(
    patterns: &[String],
    line: usize,
) -> Result<Option<PatternMatcher>, BuildError> {
    matcher(patterns, ".dockerignore", line)
}

/// A copy's `--exclude` matcher.
pub(crate) fn copy_exclude_matcher(
    patterns: &[String],
    line: usize,
) -> Result<Option<PatternMatcher>, BuildError> {
    matcher(patterns, "--exclude", line)
}

/// A matcher for `patterns` (None when there are none); errors name where
/// the patterns came from.
fn matcher(
    patterns: &[String],
    what: &str,
    line: usize,
) -> Result<Option<PatternMatcher>, BuildError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    PatternMatcher::new(patterns)
        .map(Some)
        .map_err(|e| BuildError::Source {
            line,
            source: std::io::Error::other(format!("{what}: {e}")),
        })
}

/// COPY heredoc files, written out.
fn inline_dir(
    options: &BuildOptions,
    files: &[(String, String)],
    line: usize,
) -> Result<ScratchDir, BuildError> {
    let dir =
        ScratchDir::new(&options.scratch).map_err(|source| BuildError::Source { line, source })?;
    for (name, content) in files {
        std::fs::write(dir.path.join(name), content)
            .map_err(|source| BuildError::Source { line, source })?;
    }
    Ok(dir)
}

/// Applies `layers` into a fresh scratch directory.
pub(crate) fn materialize(
    store: &ContentStore,
    summaries: &LayerSummaries,
    options: &BuildOptions,
    layers: &[Layer],
    line: usize,
) -> Result<ScratchDir, BuildError> {
    materialize_for(store, summaries, options, layers, None, None, line)
}

/// Applies into a fresh scratch directory the layers of `layers` that can
/// matter for files below `sources` (paths or patterns relative to the
/// root); all of them when `sources` is None. A `COPY --from=build /out/
/// ...` then unpacks the layers that touch `/out`, not the whole base
/// image below it. With `origins`, also tells which layer blob each
/// regular file comes from.
///
/// With `sources`, the tree is a COPY's and is only read: unchanged files
/// of layers a RUN has unpacked already are hard-linked from those
/// snapshots instead of written again. Without, the tree may be mounted
/// into a RUN, and every file is its own.
pub(crate) fn materialize_for(
    store: &ContentStore,
    summaries: &LayerSummaries,
    options: &BuildOptions,
    layers: &[Layer],
    sources: Option<&[String]>,
    mut origins: Option<&mut FileOrigins<Digest>>,
    line: usize,
) -> Result<ScratchDir, BuildError> {
    let snapshots = sources
        .is_some()
        .then(|| crate::exec_step::overlay_snapshots(options))
        .flatten();
    let dir =
        ScratchDir::new(&options.scratch).map_err(|source| BuildError::Source { line, source })?;
    let wanted = match sources.and_then(literal_prefixes) {
        Some(prefixes) => layers_for(store, summaries, layers, &prefixes)
            .map_err(|source| BuildError::Source { line, source })?,
        None => vec![true; layers.len()],
    };
    let mut tree = rbuild_exec::apply::LinkedTree::new(&dir.path);
    for (layer, _) in layers.iter().zip(wanted).filter(|(_, w)| *w) {
        let digest = &layer.descriptor.digest;
        if let Some(origins) = origins.as_deref_mut() {
            let summary = summaries
                .get(store, digest)
                .map_err(|source| BuildError::Source { line, source })?;
            origins.apply(&summary, digest);
        }
        let file = store
            .open(digest)
            .map_err(|source| BuildError::Source { line, source })?;
        // A layer a RUN used is unpacked already: its unchanged files are
        // linked from there rather than written again.
        let applied = match &snapshots {
            Some(snapshots) => tree.apply(file, snapshots.unpacked(&layer.diff_id).as_deref()),
            None => rbuild_exec::apply::apply_layer(&dir.path, file),
        };
        applied.map_err(|e| BuildError::Source {
            line,
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(dir)
}

/// The literal leading components of each source (up to the first one
/// with a wildcard); None when one of them is the whole root.
fn literal_prefixes(sources: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for source in sources {
        let clean = rbuild_oci::path::clean(&format!("/{source}"));
        let literal: Vec<&str> = clean
            .split('/')
            .filter(|c| !c.is_empty())
            .take_while(|c| !c.contains(['*', '?', '[', '\\']))
            .collect();
        if literal.is_empty() {
            return None;
        }
        out.push(literal.join("/"));
    }
    Some(out)
}

/// Which of `layers` can matter for paths below `prefixes`: those with an
/// entry at, below or above (an ancestor of) one of them. If such an entry
/// is a symlink or a hard link, the selection may lead anywhere, and every
/// layer is taken.
fn layers_for(
    store: &ContentStore,
    summaries: &LayerSummaries,
    layers: &[Layer],
    prefixes: &[String],
) -> std::io::Result<Vec<bool>> {
    let mut wanted = Vec::with_capacity(layers.len());
    for layer in layers {
        match summaries
            .get(store, &layer.descriptor.digest)?
            .touches(prefixes)
        {
            Touch::No => wanted.push(false),
            Touch::Yes => wanted.push(true),
            Touch::Links => return Ok(vec![true; layers.len()]),
        }
    }
    Ok(wanted)
}

/// The base filesystem view, from the layers' summaries.
pub(crate) fn read_fs(
    store: &ContentStore,
    summaries: &LayerSummaries,
    layers: &[Layer],
) -> Result<BaseFs, BuildError> {
    let mut fs = BaseFs::empty();
    for layer in layers {
        let summary = summaries
            .get(store, &layer.descriptor.digest)
            .map_err(|source| BuildError::BaseLayer {
                name: "base".into(),
                digest: layer.descriptor.digest,
                source,
            })?;
        fs.apply_summary(&summary);
    }
    Ok(fs)
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

/// Writes a layer into the store; returns its descriptor and diff ID, and
/// the blob's pending sync. With `epoch`, no mtime is later than it. With
/// `snapshots`, the layer is unpacked there at the same time, for the RUN
/// that will mount it.
fn write_layer(
    store: &ContentStore,
    entries: &[Entry],
    epoch: Option<u64>,
    snapshots: Option<&Snapshots>,
) -> std::io::Result<(Descriptor, Digest, PendingSync)> {
    // Uncompressed, the blob is the tar stream: its digest is the diff ID
    // the writer computes.
    let (diff_id, ingest) = match snapshots {
        None => {
            let mut writer = LayerWriter::new(store.ingest_prehashed()?).clamp_mtimes(epoch);
            for entry in entries {
                writer.add(entry)?;
            }
            let (diff_id, _, ingest) = writer.finish()?;
            (diff_id, ingest)
        }
        Some(snapshots) => {
            let mut writer =
                LayerWriter::new(snapshots.unpack_alongside(store.ingest_prehashed()?))
                    .clamp_mtimes(epoch);
            for entry in entries {
                writer.add(entry)?;
            }
            let (diff_id, _, unpacking) = writer.finish()?;
            // A failed unpack costs nothing but time: the RUN that needs
            // the layer unpacks it from the blob.
            let (ingest, _unpacked) = unpacking.finish();
            (diff_id, ingest)
        }
    };
    let (size, sync) = ingest.commit_deferred(&diff_id)?;
    Ok((
        Descriptor::new(media_type::OCI_LAYER, diff_id, size),
        diff_id,
        sync,
    ))
}
