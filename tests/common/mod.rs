//! Shared helpers for the end-to-end tests: running the rbuild binary on a
//! private root, the busybox fixture, and the reference tools (a Docker
//! engine, skopeo, umoci). A test whose tool is missing prints why and
//! passes, except under CI (CI=true), where a missing tool is a failure.

#![allow(dead_code)]

pub mod fault_proxy;
pub mod registry;
pub mod token_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const RBUILD: &str = env!("CARGO_BIN_EXE_rbuild");

/// A scratch directory and an rbuild root inside it, removed on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes files (path, content) under `rel`, returning the directory.
    pub fn context(&self, rel: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.path(rel);
        for (name, content) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn rbuild(&self) -> Command {
        let mut c = Command::new(RBUILD);
        c.arg("--root").arg(self.root());
        c.env_remove("RBUILD_ROOT")
            .env_remove("RBUILD_CONFIG")
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Runs rbuild with `args`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.rbuild().args(args).output().expect("run rbuild");
        assert_success(&out, &format!("rbuild {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs rbuild with `args`, asserting a clean failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.rbuild().args(args).output().expect("run rbuild");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "rbuild {} should fail; stderr: {stderr}",
            args.join(" ")
        );
        assert!(
            !stderr.contains("panicked"),
            "rbuild {} panicked: {stderr}",
            args.join(" ")
        );
        stderr
    }

    /// Loads the busybox fixture into this root.
    pub fn load_busybox(&self) {
        let layout = busybox_layout().expect("busybox fixture (checked by require_busybox)");
        self.ok(&["load", "-i", layout.to_str().unwrap()]);
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a missing prerequisite: a failure under CI, a skip elsewhere.
pub fn missing(what: &str) -> bool {
    if in_ci() {
        panic!("required test tool missing under CI: {what}");
    }
    eprintln!("SKIPPED: {what}");
    false
}

pub fn have_command(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn require_command(cmd: &str) -> bool {
    have_command(cmd) || missing(&format!("{cmd} is not installed (see .ci/run)"))
}

/// The busybox OCI layout, built once and kept in cargo's per-target
/// scratch directory (so nothing is left in /tmp). The script is
/// reproducible, so concurrent test binaries building it race harmlessly.
pub fn busybox_layout() -> Option<&'static Path> {
    static LAYOUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let dir = scratch.join("busybox-layout");
            if dir.join("index.json").is_file() {
                return Some(dir);
            }
            let building = scratch.join(format!("busybox-layout.{}", std::process::id()));
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/make-busybox.sh");
            let out = Command::new("bash")
                .arg(script)
                .arg(&building)
                .output()
                .ok()?;
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&building);
                return None;
            }
            if std::fs::rename(&building, &dir).is_err() {
                // Another test binary finished first.
                let _ = std::fs::remove_dir_all(&building);
            }
            dir.join("index.json").is_file().then_some(dir)
        })
        .as_deref()
}

pub fn require_busybox() -> bool {
    busybox_layout().is_some()
        || missing(
            "busybox-static is not installed, so testdata/make-busybox.sh cannot build the base image",
        )
}

/// The docker client to use: Debian's docker.io client when present (it
/// builds with BuildKit without the buildx plugin), else `docker`.
pub fn docker_bin() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

pub fn docker() -> Command {
    let mut c = Command::new(docker_bin());
    c.env("DOCKER_BUILDKIT", "1");
    c
}

/// Whether a Docker engine answers.
pub fn require_docker() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    let up = *UP.get_or_init(|| {
        docker()
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    up || missing("no Docker engine is reachable (start dockerd as .ci/run does)")
}

/// A tag no other test (or test run) uses, for images put into docker.
pub fn unique_tag(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "rbuild-test-{prefix}-{}-{}:v1",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Removes docker images when dropped.
pub struct DockerImages(pub Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = docker().args(["rmi", "-f", image]).output();
        }
    }
}

pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_success(&out, what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Whether this process runs as root (RUN needs namespaces and mounts).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// What RUN tests need: the busybox base and root.
pub fn require_run() -> bool {
    require_busybox()
        && (running_as_root() || missing("RUN needs root (namespaces and overlay mounts)"))
}

/// Asserts that a build left nothing behind: no mounts mentioning the
/// test's directory, nothing in the root's scratch area.
pub fn no_mounts_left(env: &Env) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = env.dir.path().to_string_lossy().into_owned();
    assert!(!mounts.contains(&dir), "mounts left behind:\n{mounts}");
    for tmp in [env.root().join("tmp"), env.root().join("snapshots/tmp")] {
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            continue;
        };
        let left: Vec<_> = entries.collect();
        assert!(
            left.is_empty(),
            "left behind in {}: {left:?}",
            tmp.display()
        );
    }
}
