//! What a build reports as it goes, for progress displays.
//!
//! A build is a set of vertices, one per Dockerfile step (and one per base
//! image), numbered from 1 in the order of the plan, as BuildKit numbers
//! them in `--progress=plain`. Each vertex is announced once with
//! [`Event::Started`] (or only with [`Event::Cached`] when its result is
//! reused), may log output, and ends with [`Event::Done`] or
//! [`Event::Failed`]. Events of different vertices interleave when stages
//! run in parallel.

use std::time::{Duration, SystemTime};

use rbuild_oci::Digest;

/// A vertex's number, unique within one build (`#N` in plain output).
pub type VertexId = usize;

/// Static facts about a vertex, sent with its first event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertex {
    pub id: VertexId,
    /// The graph node's digest (stable across runs for the same step).
    pub digest: Digest,
    /// BuildKit-style name: `[build 2/4] RUN make`, `[internal] load
    /// metadata for ...`.
    pub name: String,
    /// The Dockerfile line, for steps.
    pub line: Option<usize>,
}

/// Why a step's cache lookup missed (`--explain-cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissReason {
    /// No earlier build ran this step here (or its record was pruned).
    NeverBuilt,
    /// `--no-cache` or `--no-cache-filter` asked for it.
    Disabled,
    /// The step's own instruction or flags differ from the last build.
    Instruction,
    /// The step it builds on was rebuilt, so its input filesystem changed.
    Parent,
    /// A base image resolved to another manifest.
    BaseImage { name: String },
    /// A file the step reads changed (added, removed or modified).
    File { path: String },
    /// A build argument or environment variable it sees changed.
    Variable { name: String },
    /// Files it copies from another stage or image changed.
    Source { what: String },
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissReason::NeverBuilt => f.write_str("not built before"),
            MissReason::Disabled => f.write_str("cache disabled for this step"),
            MissReason::Instruction => f.write_str("the instruction changed"),
            MissReason::Parent => f.write_str("the previous step changed"),
            MissReason::BaseImage { name } => write!(f, "base image {name} changed"),
            MissReason::File { path } => write!(f, "file {path} changed"),
            MissReason::Variable { name } => write!(f, "variable {name} changed"),
            MissReason::Source { what } => write!(f, "files from {what} changed"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A vertex began work at `at`.
    Started { vertex: Vertex, at: SystemTime },
    /// A vertex's result came from the cache: nothing ran. It may follow
    /// `Started` (when checking took a while) or come alone.
    Cached { vertex: Vertex },
    /// A vertex's cache lookup missed, and why (sent before it runs, only
    /// when explaining is on).
    Miss {
        vertex: VertexId,
        reason: MissReason,
    },
    /// Output of a vertex's process: stream 1 (stdout) or 2 (stderr).
    /// Bytes arrive as the process writes them, not split at lines.
    Log {
        vertex: VertexId,
        stream: u8,
        data: Vec<u8>,
        at: SystemTime,
    },
    /// A vertex finished after running for `elapsed`.
    Done { vertex: VertexId, elapsed: Duration },
    /// A vertex failed; the build's error carries the details.
    Failed {
        vertex: VertexId,
        elapsed: Duration,
        message: String,
    },
}

/// Receives a build's events; called from the build's worker threads.
pub type Sink = std::sync::Arc<dyn Fn(Event) + Send + Sync>;
