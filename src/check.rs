//! `rbuild check` (and `build --check`): parse, expand and validate a
//! Dockerfile without building; and `rbuild debug graph`.

use anyhow::{Result, bail};
use rbuild_solver::Root;

use crate::cli::{BuildArgs, GraphFormat};
use crate::prepare::{Bases, prepare, print_lints};

/// Reports the build checks; fails on errors, or on findings when the
/// Dockerfile says `# check=error=true`.
pub fn run(root: &Root, args: &BuildArgs) -> Result<()> {
    let prepared = prepare(root, args, Bases::Optional)?;
    print_lints(&prepared);
    if !prepared.plan.unused_build_args.is_empty() {
        eprintln!(
            "warning: build-args {:?} were not consumed by any ARG",
            prepared.plan.unused_build_args
        );
    }
    match prepared.lints.len() {
        0 => eprintln!("Check complete, no warnings found."),
        n => {
            let s = if n == 1 { "" } else { "s" };
            eprintln!("Check complete, {n} warning{s} found.");
            if prepared.lints_are_errors {
                bail!("{n} build check{s} failed, and the Dockerfile says check=error=true");
            }
        }
    }
    Ok(())
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
