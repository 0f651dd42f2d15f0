//! What the frontend hands the solver: the build [`Graph`] and, for each
//! needed stage, the history and config that turn its graph nodes into an
//! image.

use rbuild_oci::{Descriptor, History, ImageConfig, Platform, RuntimeConfig};

use crate::graph::{Graph, NodeId};

/// A base image the resolver found (in the local store or a build context).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// How the user named it, for messages.
    pub name: String,
    pub manifest: Descriptor,
    pub config: ImageConfig,
}

/// Finds images by name, for FROM and `COPY --from`. Implemented outside
/// the frontend (local store, `--build-context`, later registries).
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

/// One history entry and, when it makes a layer, the graph node whose
/// change to its base is that layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Dockerfile line of the instruction.
    pub line: usize,
    /// The instruction as written (continuations joined), for progress
    /// display: `RUN make`.
    pub text: String,
    pub history: History,
    pub node: Option<NodeId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: Option<String>,
    pub base: Base,
    pub platform: Platform,
    /// The filesystem the stage starts from (scratch, image or a stage's).
    pub root: NodeId,
    /// The filesystem after the stage's last instruction.
    pub state: NodeId,
    pub steps: Vec<Step>,
    /// The runtime config after the stage's last instruction.
    pub config: RuntimeConfig,
    /// MAINTAINER, or the base image's author.
    pub author: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub graph: Graph,
    /// The stages the target needs, each after the stages it uses; the last
    /// one is the target.
    pub stages: Vec<Stage>,
    /// Build args given but used nowhere, for the "not consumed" warning.
    pub unused_build_args: Vec<String>,
    /// Build-check findings made while compiling (UndefinedVar, ...).
    pub lints: Vec<crate::lint::Lint>,
}

impl Plan {
    pub fn target(&self) -> Option<&Stage> {
        self.stages.last()
    }
}
