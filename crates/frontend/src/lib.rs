//! The Dockerfile frontend: parsing, word expansion and compilation of
//! stages into the build graph the solver executes.
//!
//! - [`parser`]: Dockerfile syntax into instructions (BuildKit-compatible).
//! - [`shell`]: word expansion as BuildKit's shell lexer does it.
//! - [`instructions`]: each instruction's flags and arguments checked.
//! - [`compile`]: stages, ARG/ENV scoping and dependencies into a [`Plan`]:
//!   a content-addressed [`Graph`] plus each stage's history and config.
//! - [`dockerignore`]: reading `.dockerignore` files.

pub mod compile;
mod dispatch;
pub mod dockerignore;
mod error;
mod goquote;
pub mod graph;
pub mod instructions;
pub mod lint;
pub mod parser;
pub mod plan;
pub mod shell;
mod values;

pub use compile::{CompileOptions, compile};
pub use error::{CompileError, ErrorKind};
pub use graph::{ContextOp, CopyOp, ExecMount, ExecOp, Graph, MkdirOp, Node, NodeId, Op};
pub use plan::{Base, ImageResolver, Plan, ResolvedImage, Stage, Step};
