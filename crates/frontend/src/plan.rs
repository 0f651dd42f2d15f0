//! What the frontend hands the solver: for each needed stage, its base, the
//! steps that make layers, the history, and the final runtime config.
//!
//! This is the foundation's plan; the full content-addressed graph grows
//! out of it.

use rbuild_oci::{Descriptor, History, ImageConfig, Platform, RuntimeConfig};

/// A base image the resolver found (in the local store or a build context).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// How the user named it, for messages.
    pub name: String,
    pub manifest: Descriptor,
    pub config: ImageConfig,
}

/// Finds base images by name. Implemented outside the frontend (local
/// store, `--build-context`, later registries).
pub trait ImageResolver {
    /// `Ok(None)` when nothing by that name exists.
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String>;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Base {
    Scratch,
    Image(Box<ResolvedImage>),
    /// Another stage of this plan, by index into [`Plan::stages`].
    Stage(usize),
}

/// Where a COPY reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum CopySource {
    /// The build context.
    Context,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopyOp {
    pub from: CopySource,
    /// Sources as written after expansion, relative to the source root.
    pub sources: Vec<String>,
    /// Absolute destination; a trailing `/` means a directory.
    pub dest: String,
    /// `--chown` as given (names are resolved against the stage's files).
    pub chown: Option<String>,
    pub chmod: Option<u32>,
}

/// WORKDIR's directory creation.
#[derive(Debug, Clone, PartialEq)]
pub struct MkdirOp {
    /// Absolute path.
    pub path: String,
    /// The stage's USER at that point, who owns created directories.
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Copy(CopyOp),
    Mkdir(MkdirOp),
}

/// One history entry and, when it makes a layer, the operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Dockerfile line of the instruction.
    pub line: usize,
    pub history: History,
    pub op: Option<Op>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: Option<String>,
    pub base: Base,
    pub platform: Platform,
    pub steps: Vec<Step>,
    /// The runtime config after the stage's last instruction.
    pub config: RuntimeConfig,
    /// MAINTAINER, or the base image's author.
    pub author: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The stages the target needs, each after the stages it uses; the last
    /// one is the target.
    pub stages: Vec<Stage>,
    /// Build args given but used nowhere, for the "not consumed" warning.
    pub unused_build_args: Vec<String>,
}
