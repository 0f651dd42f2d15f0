//! The Dockerfile frontend: parsing, word expansion and compilation of
//! stages into the plan the solver executes.
//!
//! - [`parser`]: Dockerfile syntax into instructions (BuildKit-compatible).
//! - [`shell`]: word expansion as BuildKit's shell lexer does it.
//! - [`instructions`]: each instruction's flags and arguments checked.
//! - [`compile`]: stages, ARG/ENV scoping and image configs into a [`Plan`].

pub mod compile;
mod error;
mod goquote;
pub mod instructions;
pub mod parser;
pub mod plan;
pub mod shell;

pub use compile::{CompileOptions, compile};
pub use error::{CompileError, ErrorKind};
pub use plan::{
    Base, CopyOp, CopySource, ImageResolver, MkdirOp, Op, Plan, ResolvedImage, Stage, Step,
};
