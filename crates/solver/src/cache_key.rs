//! Cache keys: what a step's result depends on, as one digest.
//!
//! A step's key is the sha256 of its operation in canonical form (the
//! graph's), with each input filesystem named by its *result* (the chain
//! ID of its layers) instead of by how it was built, plus the content of
//! the files it reads from outside: the checksum of exactly the context
//! files a COPY selects, of the files it selects from another stage, and
//! of a RUN's bind mounts from the context. So an unchanged rebuild finds
//! every step; a changed file misses from the first step that reads it;
//! a stage that is rebuilt but produces the same files still hits below
//! it; and a step that reran (`--no-cache`) invalidates what follows only
//! if its layer changed. Build args are part of a step only where the
//! frontend put them (RUN's environment), so unused ones change nothing.

use std::collections::HashMap;
use std::sync::Arc;

use rbuild_frontend::{CopyOp, ExecOp, NodeId, Op};
use rbuild_oci::Digest;
use serde_json::{Value, json};

use crate::build::BuildError;
use crate::checksum::Selection;
use crate::scheduler::{NodeResult, Shared};
use crate::steps::{Layer, ScratchDir, context_matcher, copy_exclude_matcher, materialize_for};
use rbuild_exec::summary::FileOrigins;

/// Files listed per step for `--explain-cache`; above this only the
/// selection's checksum is kept.
const EXPLAIN_FILES_MAX: usize = 10_000;

/// A step's key, and what went into it.
pub(crate) struct StepKey {
    pub key: Digest,
    /// What the step saw, for explaining the next miss (JSON).
    pub facts: Value,
    /// A copy's source filesystem, unpacked while computing the key (the
    /// copy reads it if it runs).
    pub unpacked: Option<ScratchDir>,
}

/// The OCI chain ID of a filesystem's layers; the empty filesystem's is
/// the digest of nothing.
pub(crate) fn chain_id(layers: &[Layer]) -> Digest {
    let mut chain: Option<Digest> = None;
    for layer in layers {
        chain = Some(match chain {
            None => layer.diff_id,
            Some(prev) => Digest::of(format!("{prev} {}", layer.diff_id).as_bytes()),
        });
    }
    chain.unwrap_or_else(|| Digest::of(b""))
}

/// Computes the key of a COPY, WORKDIR or RUN node.
pub(crate) fn step_key(
    shared: &Shared,
    node: NodeId,
    inputs: &HashMap<NodeId, Arc<NodeResult>>,
) -> Result<StepKey, BuildError> {
    let graph_node = shared.graph.node(node);
    let line = graph_node.line.unwrap_or(0);
    let op = &graph_node.op;
    // A COPY from another filesystem depends on the files it selects, not
    // on how that filesystem was made: its checksum enters below, and a
    // source stage rebuilt with the same files (new mtimes, say) still
    // hits, as BuildKit's content-based COPY --from keys do. This is what
    // lets a mode=min cache (the final stage only) serve a rebuilt builder.
    let selected_source = match op {
        Op::Copy(copy) if copy.source != copy.base && inputs.contains_key(&copy.source) => {
            Some(copy.source)
        }
        _ => None,
    };
    let result_of = |id: NodeId| -> String {
        match inputs.get(&id) {
            Some(_) if Some(id) == selected_source => "selected".to_string(),
            Some(r) => format!("chain:{}", chain_id(&r.layers)),
            // Context and inline sources: their content enters below.
            None => format!("node:{}", shared.graph.node(id).digest),
        }
    };
    let canonical = op.canonical(&result_of);
    let mut facts = json!({
        "op": Digest::of(op.canonical(&|_| String::new()).to_string().as_bytes()).to_string(),
        "base": op.base().map(&result_of),
        "base_image": op.base().and_then(|b| base_image(shared, b)),
    });
    let mut unpacked = None;
    let content = match op {
        Op::Copy(copy) => {
            let (content, dir) = copy_content(shared, copy, inputs, line, &mut facts)?;
            unpacked = dir;
            content
        }
        Op::Exec(exec) => {
            facts["env"] = json!(exec.env);
            let mut content = exec_content(shared, exec, line, &mut facts)?;
            // `--network=none` on the command line decides what a step
            // without its own RUN --network gets: a different step.
            let isolated = shared
                .options
                .executor
                .as_ref()
                .is_some_and(|e| e.isolate_network);
            if exec.network == "default" && isolated {
                content = json!({ "mounts": content, "network": "none" });
            }
            content
        }
        _ => Value::Null,
    };
    let mut key_json = json!({ "v": 1, "op": canonical, "content": content });
    // SOURCE_DATE_EPOCH clamps the times in the layer: another result.
    if let Some(epoch) = shared.options.source_date_epoch {
        key_json["source_date_epoch"] = json!(epoch);
    }
    Ok(StepKey {
        key: Digest::of(key_json.to_string().as_bytes()),
        facts,
        unpacked,
    })
}

fn copy_what(copy: &CopyOp) -> &'static str {
    if copy.unpack { "ADD" } else { "COPY" }
}

/// `name@manifest` when `node` is a base image, so a miss can say the base
/// image changed.
fn base_image(shared: &Shared, node: NodeId) -> Option<String> {
    match &shared.graph.node(node).op {
        Op::Image { name, manifest } => Some(format!("{name}@{manifest}")),
        _ => None,
    }
}

/// The content a copy reads: a checksum of exactly the files it selects.
fn copy_content(
    shared: &Shared,
    copy: &CopyOp,
    inputs: &HashMap<NodeId, Arc<NodeResult>>,
    line: usize,
    facts: &mut Value,
) -> Result<(Value, Option<ScratchDir>), BuildError> {
    let copy_exclude = copy_exclude_matcher(&copy.exclude, line)?;
    match &shared.graph.node(copy.source).op {
        Op::Context(context) => {
            let exclude = context_matcher(&context.exclude, line)?;
            let selection = Selection {
                root: &shared.options.context,
                sources: &copy.sources,
                exclude: exclude.as_ref(),
                copy_exclude: copy_exclude.as_ref(),
                parents: copy.parents,
                keep_owners: false,
            };
            let sum = shared.context_checksum(&selection, line, copy_what(copy), facts)?;
            Ok((json!({ "context": sum.to_string() }), None))
        }
        // Inline files are in the operation itself.
        Op::Inline(_) => Ok((Value::Null, None)),
        _ => {
            let source = inputs.get(&copy.source).ok_or_else(|| {
                BuildError::Internal(format!("copy source {:?} was not built", copy.source))
            })?;
            let (sum, dir) = stage_checksum(shared, copy, &source.layers, line, copy_exclude)?;
            facts["source"] = json!(sum.to_string());
            Ok((json!({ "source": sum.to_string() }), dir))
        }
    }
}

/// The checksum of the files a copy selects from another filesystem. It
/// is remembered by the filesystem's chain ID and the selection, so a
/// cached rebuild does not unpack the source again; otherwise the source
/// is unpacked, and the unpacked tree is returned for the copy itself.
fn stage_checksum(
    shared: &Shared,
    copy: &CopyOp,
    layers: &[Layer],
    line: usize,
    copy_exclude: Option<rbuild_exec::patterns::PatternMatcher>,
) -> Result<(Digest, Option<ScratchDir>), BuildError> {
    let selection_key = Digest::of(
        json!({
            "v": 1,
            "chain": chain_id(layers).to_string(),
            "sources": copy.sources,
            "exclude": copy.exclude,
            "parents": copy.parents,
        })
        .to_string()
        .as_bytes(),
    );
    if let Some(sum) = shared.source_sum(&selection_key)? {
        return Ok((sum, None));
    }
    shared.ensure_blobs(layers, line)?;
    shared
        .store
        .scratch()
        .map_err(|source| BuildError::Source { line, source })?;
    let mut origins = FileOrigins::default();
    let dir = materialize_for(
        &shared.store,
        &shared.summaries,
        &shared.options,
        layers,
        Some(&copy.sources),
        Some(&mut origins),
        line,
    )?;
    let selection = Selection {
        root: &dir.path,
        sources: &copy.sources,
        exclude: None,
        copy_exclude: copy_exclude.as_ref(),
        parents: copy.parents,
        keep_owners: true,
    };
    let sum = crate::layer_files::checksum(&shared.meta, &selection, &origins)
        .map_err(|e| checksum_error(e, line, copy_what(copy)))?;
    shared.put_source_sum(&selection_key, &sum)?;
    Ok((sum, Some(dir)))
}

/// The context files a RUN's bind mounts show.
fn exec_content(
    shared: &Shared,
    exec: &ExecOp,
    line: usize,
    facts: &mut Value,
) -> Result<Value, BuildError> {
    let mut sums = Vec::new();
    for mount in &exec.mounts {
        if mount.from.is_some() {
            continue; // named by its result in the canonical form
        }
        let Some(source) = crate::mounts::context_bind_source(&mount.spec) else {
            continue;
        };
        let exclude = context_matcher(&shared.options.context_excludes, line)?;
        let sources = [source];
        let selection = Selection {
            root: &shared.options.context,
            sources: &sources,
            exclude: exclude.as_ref(),
            copy_exclude: None,
            parents: false,
            keep_owners: false,
        };
        sums.push(
            shared
                .context_checksum(&selection, line, "RUN --mount", facts)?
                .to_string(),
        );
    }
    Ok(match sums.is_empty() {
        true => Value::Null,
        false => json!({ "binds": sums }),
    })
}

/// A checksum failure as the step's own error: a copy's selection fails
/// exactly as the copy would.
pub(crate) fn checksum_error(
    e: crate::checksum::ChecksumError,
    line: usize,
    what: &'static str,
) -> BuildError {
    match e {
        crate::checksum::ChecksumError::Select(source) => BuildError::Copy { line, what, source },
        other => BuildError::Source {
            line,
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Adds a selection's files to a step's facts, when there are not too
/// many to keep.
pub(crate) fn record_files(facts: &mut Value, entries: &[(String, Digest)]) {
    let list = facts
        .as_object_mut()
        .map(|o| o.entry("files").or_insert_with(|| json!([])));
    let Some(Value::Array(list)) = list else {
        return;
    };
    if list.len() + entries.len() > EXPLAIN_FILES_MAX {
        return;
    }
    list.extend(
        entries
            .iter()
            .map(|(path, digest)| json!([path, digest.short()])),
    );
}
