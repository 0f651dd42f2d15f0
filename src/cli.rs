//! Command-line definitions. `rbuild [OPTIONS] PATH` is `rbuild build
//! [OPTIONS] PATH`, as with `docker buildx build`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rbuild",
    version,
    about = "A daemonless Dockerfile image builder",
    max_term_width = 100
)]
pub struct Cli {
    /// State directory (content and image stores)
    #[arg(long, global = true, env = "RBUILD_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Configuration file (TOML)
    #[arg(long, global = true, env = "RBUILD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile
    Build(BuildArgs),
    /// List images
    Images(ImagesArgs),
    /// Remove image names
    Rmi {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Give an image another name
    Tag {
        #[arg(value_name = "SOURCE_IMAGE")]
        source: String,
        #[arg(value_name = "TARGET_IMAGE")]
        target: String,
    },
    /// Write images to a docker-save tarball
    Save {
        /// Write to this file instead of standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Load images from a docker-save tarball or an OCI layout (directory or tarball)
    Load {
        /// Read from this file or directory instead of standard input
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Print only the loaded image names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Check a Dockerfile without building: syntax, expansion and build checks
    Check(BuildArgs),
    /// Tools for looking inside a build
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Show the history of an image
    History(crate::history::HistoryArgs),
    /// Show an image's config as JSON
    Inspect {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Pull an image from a registry
    Pull {
        #[arg(value_name = "IMAGE")]
        image: String,
        /// Print only the image name
        #[arg(short, long)]
        quiet: bool,
    },
    /// Push images to their registry
    Push {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Log in to a registry (credentials go to docker's config.json)
    Login {
        /// Registry (default: docker.io)
        #[arg(value_name = "SERVER")]
        server: Option<String>,
        #[arg(short, long)]
        username: Option<String>,
        /// Password (prefer --password-stdin)
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log out from a registry
    Logout {
        #[arg(value_name = "SERVER")]
        server: Option<String>,
    },
    /// Show the build cache's disk usage
    Du(crate::disk::DuArgs),
    /// Remove build cache
    Prune(crate::disk::PruneArgs),
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print the build graph a Dockerfile compiles to
    Graph {
        /// text (one node per line) or dot (Graphviz)
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
        #[command(flatten)]
        build: BuildArgs,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate image IDs
    #[arg(long)]
    pub no_trunc: bool,
    /// Only images of this repository[:tag]
    pub repository: Option<String>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build context directory
    #[arg(value_name = "PATH")]
    pub context: PathBuf,
    /// Name and optionally a tag (name:tag)
    #[arg(short, long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Name of the Dockerfile (default: PATH/Dockerfile; - reads standard input)
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set a build-time variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// Additional build contexts (NAME=oci-layout://PATH[:TAG])
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// Target build stage
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use cache when building the image
    #[arg(long)]
    pub no_cache: bool,
    /// Always pull base images, even those in the store
    #[arg(long)]
    pub pull: bool,
    /// Push the image to its registry (as --output type=registry)
    #[arg(long)]
    pub push: bool,
    /// Load the image into the Docker engine (as --output type=docker, through the docker CLI)
    #[arg(long)]
    pub load: bool,
    /// Do not use cache for these stages (names or indexes; repeatable, comma-separated)
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Export the build cache (type=local,dest=DIR | type=registry,ref=REF | type=inline; [,mode=min|max])
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Import a build cache (type=local,src=DIR | type=registry,ref=REF)
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Progress output: auto, plain, tty, rawjson or quiet
    #[arg(long, value_enum, default_value = "auto", value_name = "TYPE")]
    pub progress: crate::progress::Mode,
    /// Say why each step that was not cached missed the cache
    #[arg(long)]
    pub explain_cache: bool,
    /// Steps to run at the same time (default: the number of CPUs)
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Output destination (type=docker|oci|local|tar|image|registry,dest=...)
    #[arg(short, long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Write the image ID to the file
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write build result metadata to the file (JSON)
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Suppress the build output and print the image ID on success
    #[arg(short, long)]
    pub quiet: bool,
    /// Network for RUN steps that do not say: default (the host's), host or none
    #[arg(long, value_name = "MODE", default_value = "default", value_parser = ["default", "host", "none"])]
    pub network: String,
    /// Only check the Dockerfile (as `rbuild check`); build nothing
    #[arg(long)]
    pub check: bool,
    /// Secret for RUN --mount=type=secret (id=NAME,src=FILE or id=NAME,env=VAR)
    #[arg(long = "secret", value_name = "id=NAME,src=PATH|env=VAR")]
    pub secrets: Vec<String>,
    /// SSH agent socket for RUN --mount=type=ssh (default|ID[=SOCKET])
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    pub ssh: Vec<String>,
}

const SUBCOMMANDS: &[&str] = &[
    "build", "check", "debug", "images", "rmi", "tag", "save", "load", "inspect", "history", "du",
    "prune", "pull", "push", "login", "logout", "help",
];

/// Inserts `build` when the first word that is not a global option is not
/// a subcommand, so `rbuild -t x .` means `rbuild build -t x .`.
pub fn with_default_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        if arg == "--root" || arg == "--config" {
            i += 2;
            continue;
        }
        if arg.starts_with("--root=") || arg.starts_with("--config=") {
            i += 1;
            continue;
        }
        if matches!(arg.as_ref(), "-h" | "--help" | "-V" | "--version")
            || SUBCOMMANDS.contains(&arg.as_ref())
        {
            return args;
        }
        break;
    }
    let mut out = args;
    if out.len() > 1 {
        let at = i.min(out.len());
        out.insert(at, OsString::from("build"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn build_is_the_default() {
        assert_eq!(
            with_default_subcommand(words("rbuild -t a .")),
            words("rbuild build -t a .")
        );
        assert_eq!(
            with_default_subcommand(words("rbuild --root /r -t a .")),
            words("rbuild --root /r build -t a .")
        );
        assert_eq!(
            with_default_subcommand(words("rbuild images")),
            words("rbuild images")
        );
        assert_eq!(
            with_default_subcommand(words("rbuild --root /r images")),
            words("rbuild --root /r images")
        );
        assert_eq!(
            with_default_subcommand(words("rbuild .")),
            words("rbuild build .")
        );
        assert_eq!(
            with_default_subcommand(words("rbuild --help")),
            words("rbuild --help")
        );
    }
}
