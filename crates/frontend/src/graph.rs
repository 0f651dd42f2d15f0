//! The content-addressed build graph.
//!
//! Each node is one operation on filesystems: a source (scratch, a base
//! image, files of the build context) or a step that makes a new
//! filesystem from its inputs (copy, mkdir, exec). A node's digest is the
//! sha256 of a canonical JSON serialization of its operation, with inputs
//! named by their digests, so it is the same for the same Dockerfile,
//! arguments and base images on any machine and in any run. Identical
//! operations are one node.

use std::collections::HashMap;
use std::fmt::Write as _;

use rbuild_oci::Digest;
use serde_json::{Value, json};

/// A node's place in its [`Graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(usize);

impl NodeId {
    pub fn index(self) -> usize {
        self.0
    }
}

/// Files of a named build context, selected by patterns.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextOp {
    /// `context` for the main build context.
    pub name: String,
    /// Paths (or patterns) the build reads; empty means everything.
    pub include: Vec<String>,
    /// `.dockerignore` patterns.
    pub exclude: Vec<String>,
}

/// `COPY`/`ADD`: files from `source` into `base`.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyOp {
    pub base: NodeId,
    /// A context node, or another filesystem (a stage or an image).
    pub source: NodeId,
    /// Paths or patterns relative to the source root, expanded.
    pub sources: Vec<String>,
    /// Absolute destination; a trailing `/` means a directory.
    pub dest: String,
    /// `--chown` as given (names resolve against `base`'s files).
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    /// `ADD`: local archives are extracted.
    pub unpack: bool,
    /// `--exclude` patterns, relative to each copied source.
    pub exclude: Vec<String>,
    /// `--parents`: sources keep their paths below `dest`.
    pub parents: bool,
}

/// WORKDIR's directory creation.
#[derive(Debug, Clone, PartialEq)]
pub struct MkdirOp {
    pub base: NodeId,
    /// Absolute path.
    pub path: String,
    /// The stage's USER, who owns created directories.
    pub user: Option<String>,
}

/// A RUN mount, with its source when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecMount {
    /// `--mount` options as written (after expansion), e.g. `type=cache,target=/x`.
    pub spec: String,
    /// The filesystem a `from=` mount reads.
    pub from: Option<NodeId>,
}

/// `RUN`: a process in a container on `base`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOp {
    pub base: NodeId,
    /// The full argv (shell form already wrapped in the stage's SHELL).
    pub args: Vec<String>,
    /// `KEY=value`, ENV and the ARGs in force.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: Option<String>,
    /// `default`, `none` or `host`.
    pub network: String,
    pub security: String,
    pub mounts: Vec<ExecMount>,
    /// Heredoc files the command reads: (path in the container, content).
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The empty filesystem.
    Scratch,
    /// A base image's filesystem, by manifest digest.
    Image {
        name: String,
        manifest: Digest,
    },
    Context(ContextOp),
    /// Files written inline (COPY heredocs): (name, content).
    Inline(Vec<(String, String)>),
    Copy(CopyOp),
    Mkdir(MkdirOp),
    Exec(ExecOp),
}

impl Op {
    /// The nodes this operation reads.
    pub fn inputs(&self) -> Vec<NodeId> {
        match self {
            Op::Scratch | Op::Image { .. } | Op::Context(_) | Op::Inline(_) => Vec::new(),
            Op::Copy(c) => vec![c.base, c.source],
            Op::Mkdir(m) => vec![m.base],
            Op::Exec(e) => std::iter::once(e.base)
                .chain(e.mounts.iter().filter_map(|m| m.from))
                .collect(),
        }
    }

    /// The filesystem this operation changes, for layer-making steps.
    pub fn base(&self) -> Option<NodeId> {
        match self {
            Op::Copy(c) => Some(c.base),
            Op::Mkdir(m) => Some(m.base),
            Op::Exec(e) => Some(e.base),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Op::Scratch => "scratch",
            Op::Image { .. } => "image",
            Op::Context(_) => "context",
            Op::Inline(_) => "inline",
            Op::Copy(_) => "copy",
            Op::Mkdir(_) => "mkdir",
            Op::Exec(_) => "exec",
        }
    }

    /// The canonical form the digest is computed over. Field order is
    /// fixed here; inputs appear as `digest` names them (their node
    /// digests for the graph; the cache names them by their results).
    pub fn canonical(&self, digest: &dyn Fn(NodeId) -> String) -> Value {
        let body = match self {
            Op::Scratch => json!({}),
            Op::Image { name, manifest } => {
                json!({ "name": name, "manifest": manifest.to_string() })
            }
            Op::Context(c) => json!({ "name": c.name, "include": c.include, "exclude": c.exclude }),
            Op::Inline(files) => json!({ "files": files }),
            Op::Copy(c) => json!({
                "base": digest(c.base),
                "source": digest(c.source),
                "sources": c.sources,
                "dest": c.dest,
                "chown": c.chown,
                "chmod": c.chmod,
                "unpack": c.unpack,
                "exclude": c.exclude,
                "parents": c.parents,
            }),
            Op::Mkdir(m) => json!({ "base": digest(m.base), "path": m.path, "user": m.user }),
            Op::Exec(e) => json!({
                "base": digest(e.base),
                "args": e.args,
                "env": e.env,
                "cwd": e.cwd,
                "user": e.user,
                "network": e.network,
                "security": e.security,
                "mounts": e.mounts.iter().map(|m| json!({ "spec": m.spec, "from": m.from.map(digest) })).collect::<Vec<_>>(),
                "files": e.files,
            }),
        };
        json!({ "v": 1, "op": self.kind(), "body": body })
    }

    /// A one-line description for `rbuild debug graph`.
    fn summary(&self) -> String {
        match self {
            Op::Scratch => "scratch".into(),
            Op::Image { name, manifest } => format!("image {name} ({manifest})"),
            Op::Context(c) => {
                let mut s = format!("context {}", c.name);
                if !c.include.is_empty() {
                    let _ = write!(s, " include={:?}", c.include);
                }
                if !c.exclude.is_empty() {
                    let _ = write!(s, " exclude={:?}", c.exclude);
                }
                s
            }
            Op::Inline(files) => {
                format!(
                    "inline {:?}",
                    files.iter().map(|(n, _)| n).collect::<Vec<_>>()
                )
            }
            Op::Copy(c) => format!(
                "{} {:?} -> {}",
                if c.unpack { "add" } else { "copy" },
                c.sources,
                c.dest
            ),
            Op::Mkdir(m) => format!("mkdir {}", m.path),
            Op::Exec(e) => format!("exec {:?}", e.args),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub digest: Digest,
    /// The Dockerfile line that made it, when one did.
    pub line: Option<usize>,
}

/// Nodes in creation order: every node's inputs come before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    nodes: Vec<Node>,
    by_digest: HashMap<Digest, NodeId>,
}

impl Graph {
    /// Adds an operation, or returns the node already doing the same.
    pub fn add(&mut self, op: Op, line: Option<usize>) -> NodeId {
        let canonical = op.canonical(&|id| self.nodes[id.0].digest.to_string());
        // serde_json writes a Value deterministically (keys in the order
        // `canonical` inserted them).
        let digest = Digest::of(canonical.to_string().as_bytes());
        if let Some(&existing) = self.by_digest.get(&digest) {
            return existing;
        }
        let id = NodeId(self.nodes.len());
        self.nodes.push(Node { op, digest, line });
        self.by_digest.insert(digest, id);
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().map(|(i, n)| (NodeId(i), n))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// One line per node: short digest, operation, inputs, Dockerfile line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (id, node) in self.nodes() {
            let inputs: Vec<String> = node
                .op
                .inputs()
                .iter()
                .map(|i| self.node(*i).digest.short())
                .collect();
            let _ = write!(
                out,
                "{} n{} {}",
                node.digest.short(),
                id.0,
                node.op.summary()
            );
            if !inputs.is_empty() {
                let _ = write!(out, " <- {}", inputs.join(", "));
            }
            if let Some(line) = node.line {
                let _ = write!(out, " (line {line})");
            }
            out.push('\n');
        }
        out
    }

    /// Graphviz DOT, edges from inputs to the nodes that read them.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph rbuild {\n  rankdir=BT;\n  node [shape=box, fontname=monospace];\n",
        );
        for (id, node) in self.nodes() {
            let label = format!(
                "{}\\n{}",
                node.digest.short(),
                node.op.summary().replace('\\', "\\\\").replace('"', "\\\"")
            );
            let _ = writeln!(out, "  n{} [label=\"{label}\"];", id.0);
            for input in node.op.inputs() {
                let _ = writeln!(out, "  n{} -> n{};", input.0, id.0);
            }
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(base: NodeId, source: NodeId, dest: &str) -> Op {
        Op::Copy(CopyOp {
            base,
            source,
            sources: vec!["a".into()],
            dest: dest.into(),
            chown: None,
            chmod: None,
            unpack: false,
            exclude: vec![],
            parents: false,
        })
    }

    #[test]
    fn digests_are_content_addressed_and_deduplicated() {
        let mut g = Graph::default();
        let scratch = g.add(Op::Scratch, None);
        let ctx = g.add(
            Op::Context(ContextOp {
                name: "context".into(),
                include: vec!["a".into()],
                exclude: vec![],
            }),
            None,
        );
        let a = g.add(copy(scratch, ctx, "/x"), Some(2));
        let again = g.add(copy(scratch, ctx, "/x"), Some(9));
        assert_eq!(a, again, "the same operation is one node");
        let b = g.add(copy(scratch, ctx, "/y"), Some(3));
        assert_ne!(g.node(a).digest, g.node(b).digest);
        // Chained: a change in an input changes every node after it.
        let on_a = g.add(
            Op::Mkdir(MkdirOp {
                base: a,
                path: "/w".into(),
                user: None,
            }),
            None,
        );
        let on_b = g.add(
            Op::Mkdir(MkdirOp {
                base: b,
                path: "/w".into(),
                user: None,
            }),
            None,
        );
        assert_ne!(g.node(on_a).digest, g.node(on_b).digest);
        // A fixed operation has a fixed digest, on any machine.
        assert_eq!(
            g.node(scratch).digest.to_string(),
            Digest::of(br#"{"v":1,"op":"scratch","body":{}}"#).to_string()
        );
    }
}
