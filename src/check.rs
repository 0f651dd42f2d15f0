//! `rbuild check` (and `build --check`): parse, expand and validate a
//! Dockerfile without building; and `rbuild debug graph`.

use anyhow::Result;
use rbuild_solver::Root;

use crate::cli::{BuildArgs, GraphFormat};
use crate::prepare::{Bases, prepare, report};

/// Reports the build checks; fails on errors, or on findings when the
/// Dockerfile says `# check=error=true`.
pub fn run(root: &Root, args: &BuildArgs) -> Result<()> {
    let prepared = prepare(root, args, Bases::Optional)?;
    let result = report(&prepared);
    match prepared.lints.len() {
        0 => eprintln!("Check complete, no warnings found."),
        1 => eprintln!("Check complete, 1 warning found."),
        n => eprintln!("Check complete, {n} warnings found."),
    }
    result
}

/// Prints the build graph the Dockerfile compiles to.
pub fn graph(root: &Root, args: &BuildArgs, format: GraphFormat) -> Result<()> {
    let prepared = prepare(root, args, Bases::Optional)?;
    let graph = &prepared.plan.graph;
    print!(
        "{}",
        match format {
            GraphFormat::Text => graph.to_text(),
            GraphFormat::Dot => graph.to_dot(),
        }
    );
    Ok(())
}
