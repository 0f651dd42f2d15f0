//! The `rbuild` command: argument parsing, wiring of the crates, output.

mod build;
mod check;
mod cli;
mod commands;
mod config;
mod diagnostic;
mod disk;
mod history;
mod layers;
mod output;
mod prepare;
mod progress;
mod registry;
mod resolver;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use rbuild_solver::Root;

use crate::cli::{Cli, Command, DebugCommand};

fn main() -> ExitCode {
    // A RUN step's container init is this binary re-executed; it must
    // take over before anything else runs (it never returns).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == rbuild_exec::container::INIT_ARG)
    {
        rbuild_exec::container::init_main();
    }
    let args = cli::with_default_subcommand(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with exit code 0, and
            // usage errors to stderr with code 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Diagnostics point into the Dockerfile over several lines;
            // everything else is one line.
            match e.downcast_ref::<diagnostic::Diagnostic>() {
                Some(d) => eprintln!("error: {d}"),
                None => eprintln!("error: {}", one_line(&e)),
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line: `outer: inner: root cause`.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // Skip a cause already spelled out by its wrapper.
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn run(cli: Cli) -> Result<()> {
    let config = config::Config::load(cli.config.as_deref())?;
    let root_path = match cli.root {
        Some(root) => root,
        None => default_root()?,
    };
    let root = Root::open(&root_path)
        .with_context(|| format!("opening rbuild's root {}", root_path.display()))?;
    clean_up_on_signals(&root)?;
    match cli.command {
        Command::Build(args) => build::run(&root, args, &config),
        Command::Check(args) => check::run(&root, &args),
        Command::Debug(DebugCommand::Graph { format, build }) => {
            check::graph(&root, &build, format)
        }
        Command::Images(args) => commands::images(&root, &args),
        Command::Rmi { images } => commands::rmi(&root, &images),
        Command::Tag { source, target } => commands::tag(&root, &source, &target),
        Command::Save { output, images } => commands::save(&root, output.as_deref(), &images),
        Command::Load { input, quiet } => {
            // Loaded blobs are unnamed until the load ends: keep GC away.
            let _guard = rbuild_solver::gc::build_guard(&root).context("locking the root")?;
            commands::load(&root, input.as_deref(), quiet)
        }
        Command::Inspect { images } => commands::inspect(&root, &images),
        Command::History(args) => history::run(&root, &args),
        Command::Pull { image, quiet } => registry::pull_command(&root, &config, &image, quiet),
        Command::Push { images } => registry::push_command(&root, &config, &images),
        Command::Login {
            server,
            username,
            password,
            password_stdin,
        } => registry::login(
            &config,
            server.as_deref(),
            username,
            password,
            password_stdin,
        ),
        Command::Logout { server } => registry::logout(server.as_deref()),
        Command::Du(args) => disk::du(&root, &args),
        Command::Prune(args) => disk::prune(&root, &args),
    }
}

/// On Ctrl-C (or SIGTERM, SIGHUP) removes this process's scratch files,
/// then exits as the signal would. Mounts need no cleanup: they live in
/// the RUN containers' own namespaces, and containers die with rbuild.
fn clean_up_on_signals(root: &Root) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let scratch = root.tmp_path();
    let snapshots_tmp = root.path().join("snapshots").join("tmp");
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = std::fs::remove_dir_all(&scratch);
            // The layer store's per-run directories are named <pid>-...
            let prefix = format!("{}-", std::process::id());
            if let Ok(entries) = std::fs::read_dir(&snapshots_tmp) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            eprintln!("rbuild: interrupted; cleaned up");
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

/// `/var/lib/rbuild` for root; else `$XDG_DATA_HOME/rbuild` or
/// `~/.local/share/rbuild`.
fn default_root() -> Result<PathBuf> {
    if running_as_root() {
        return Ok(PathBuf::from("/var/lib/rbuild"));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(data).join("rbuild"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither --root, RBUILD_ROOT, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/rbuild"))
}

/// Whether we run as root, read from /proc so no unsafe call is needed.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
