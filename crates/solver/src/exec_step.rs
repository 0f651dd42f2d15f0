//! A RUN step: the base's layers as overlay lower directories, the
//! command in a container on top of them, and the upper directory's
//! changes as the step's layer.
//!
//! Where overlayfs cannot be used (see [`SNAPSHOTTER_ENV`]), the step runs
//! on a full copy of its base instead: the base's layers are applied into
//! a fresh directory, the container's root is that directory itself, and
//! the layer is what differs between it and the unpacked base layers
//! ([`rbuild_exec::diff::diff_tree`]). Slower, same result.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rbuild_exec::apply::apply_layer;
use rbuild_exec::basefs::BaseFs;
use rbuild_exec::container::{self, BindMount, ContainerSpec, ExitStatus, Network};
use rbuild_exec::diff::{diff_tree, diff_upper};
use rbuild_exec::snapshot::{Snapshots, overlay_supported};
use rbuild_frontend::ExecOp;
use rbuild_oci::BlobStore;

use crate::build::BuildError;
use crate::steps::{Layer, NewLayer, Run};

/// BuildKit's hostname for build containers; scripts see it.
const HOSTNAME: &str = "buildkitsandbox";
/// BuildKit's /etc/hosts for build containers.
const HOSTS: &str =
    "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";
/// Used when the host has no resolv.conf, as BuildKit does.
const DEFAULT_RESOLV_CONF: &str = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";

/// The environment variable that chooses how RUN steps get their root
/// filesystem (the snapshotter):
///
/// - unset, empty or `auto`: an overlayfs mount of the base's layers when
///   overlayfs works on the filesystem of `ROOT/snapshots` (tried once per
///   process), else a copy of the base (with a note on stderr);
/// - `overlay`: overlayfs; RUN steps fail if it cannot be used;
/// - `copy`: always a copy of the base, applied from its layers for each
///   step (slower, and needs as much space as the base; the layers are the
///   same).
pub(crate) const SNAPSHOTTER_ENV: &str = "RBUILD_SNAPSHOTTER";

/// The layer store RUN steps mount from, when they mount layers (the
/// overlay snapshotter); `None` without an executor or with copy snapshots.
pub(crate) fn overlay_snapshots(options: &crate::BuildOptions) -> Option<Snapshots> {
    let executor = options.executor.as_ref()?;
    if snapshotter(&executor.snapshots).ok()? != Snapshotter::Overlay {
        return None;
    }
    Snapshots::open(&executor.snapshots).ok()
}

/// How a RUN step gets its root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snapshotter {
    /// An overlay of the base's unpacked layers; the layer is the upper
    /// directory's changes.
    Overlay,
    /// A full copy of the base; the layer is what differs from the base.
    Copy,
}

/// The snapshotter for RUN steps with snapshots under `snapshots`, as
/// [`SNAPSHOTTER_ENV`] and the system allow; notes a copy-based choice on
/// stderr, once per process (one build).
fn snapshotter(snapshots: &Path) -> Result<Snapshotter, String> {
    static NOTED: AtomicBool = AtomicBool::new(false);
    let wanted = std::env::var(SNAPSHOTTER_ENV).unwrap_or_default();
    let (chosen, why) = match wanted.as_str() {
        "" | "auto" => {
            if overlay_supported(snapshots) {
                (Snapshotter::Overlay, "")
            } else {
                (
                    Snapshotter::Copy,
                    "note: overlayfs is not available here; RUN steps use copy snapshots (slower)",
                )
            }
        }
        "overlay" => {
            if !overlay_supported(snapshots) {
                return Err(format!(
                    "{SNAPSHOTTER_ENV}=overlay, but overlayfs cannot be used in {} (unset it, or set it to copy, to run on copies)",
                    snapshots.display()
                ));
            }
            (Snapshotter::Overlay, "")
        }
        "copy" => (
            Snapshotter::Copy,
            "note: RBUILD_SNAPSHOTTER=copy: RUN steps use copy snapshots (slower)",
        ),
        other => {
            return Err(format!(
                "{SNAPSHOTTER_ENV}={other:?} is not a snapshotter (overlay, copy or auto)"
            ));
        }
    };
    if !why.is_empty() && !NOTED.swap(true, Ordering::Relaxed) {
        eprintln!("{why}");
    }
    Ok(chosen)
}

/// Runs `exec` on top of `layers`; returns its layer, if it changed files.
pub(crate) fn run(
    run: &Run<'_>,
    exec: &ExecOp,
    layers: &[Layer],
    base_fs: &mut BaseFs,
    line: usize,
) -> Result<Option<NewLayer>, BuildError> {
    let fail = |what: String| BuildError::Exec {
        line,
        message: what,
    };
    let options = run.options;
    let Some(executor) = &options.executor else {
        return Err(BuildError::Unsupported {
            line,
            what: "RUN in this build (no container executor)".into(),
        });
    };
    if exec.security != "sandbox" {
        return Err(BuildError::Unsupported {
            line,
            what: format!("RUN --security={}", exec.security),
        });
    }
    let user = base_fs
        .exec_user(exec.user.as_deref().unwrap_or("root"))
        .map_err(|source| BuildError::User { line, source })?;

    let snapshotter = snapshotter(&executor.snapshots).map_err(fail)?;
    let snapshots =
        Snapshots::open(&executor.snapshots).map_err(|e| fail(format!("layer store: {e}")))?;
    // Overlay wants the topmost lower first.
    let mut lowers: Vec<PathBuf> = Vec::with_capacity(layers.len());
    for layer in layers.iter().rev() {
        let digest = layer.descriptor.digest;
        let mut open =
            || -> std::io::Result<Box<dyn Read>> { Ok(Box::new(run.store.open(&digest)?)) };
        let dir = snapshots
            .lower(&layer.diff_id, &mut open)
            .map_err(|e| fail(format!("unpacking layer {}: {e}", layer.diff_id)))?;
        lowers.push(dir);
    }
    let dirs = snapshots
        .scratch()
        .map_err(|e| fail(format!("preparing the snapshot: {e}")))?;
    if snapshotter == Snapshotter::Copy {
        // The base, complete, in what becomes the container's root.
        for layer in layers {
            let blob = run
                .store
                .open(&layer.descriptor.digest)
                .map_err(|e| fail(format!("opening layer {}: {e}", layer.diff_id)))?;
            apply_layer(&dirs.upper, blob)
                .map_err(|e| fail(format!("copying layer {}: {e}", layer.diff_id)))?;
        }
    }

    // Files the container sees but its layer never gets: name resolution,
    // and heredoc scripts.
    let files = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&options.scratch)
        .map_err(|e| fail(format!("preparing files: {e}")))?;
    let write = |name: &str, content: &str, mode: u32| -> Result<PathBuf, BuildError> {
        use std::os::unix::fs::PermissionsExt;
        let path = files.path().join(name);
        fs::write(&path, content).map_err(|e| fail(format!("writing {}: {e}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| fail(format!("writing {}: {e}", path.display())))?;
        Ok(path)
    };
    let resolv =
        fs::read_to_string("/etc/resolv.conf").unwrap_or_else(|_| DEFAULT_RESOLV_CONF.to_string());
    let mut mounts = vec![
        BindMount {
            source: write("hosts", HOSTS, 0o644)?,
            target: "/etc/hosts".into(),
            readonly: false,
        },
        BindMount {
            source: write("resolv.conf", &resolv, 0o644)?,
            target: "/etc/resolv.conf".into(),
            readonly: false,
        },
    ];
    for (i, (target, content)) in exec.files.iter().enumerate() {
        let source = write(&format!("file-{i}"), content, 0o755)?;
        mounts.push(BindMount {
            source,
            target: target.clone(),
            readonly: true,
        });
    }

    // RUN --mount: kept (with its locks, copies and proxies) until the
    // step is done; secrets are files in `files`, gone with it.
    let prepared = crate::mounts::prepare(run, exec, files.path(), line)?;

    let mut env = exec.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    for (key, value) in &prepared.env {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(format!("{key}={value}"));
    }
    let spec = ContainerSpec {
        // Without lower directories the upper one is the root, as is.
        lowers: match snapshotter {
            Snapshotter::Overlay => lowers.clone(),
            Snapshotter::Copy => Vec::new(),
        },
        upper: dirs.upper.clone(),
        work: dirs.work.clone(),
        rootfs: dirs.rootfs.clone(),
        args: exec.args.clone(),
        env,
        cwd: exec.cwd.clone(),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids.clone(),
        network: match exec.network.as_str() {
            "none" => Network::None,
            "default" if executor.isolate_network => Network::None,
            _ => Network::Host,
        },
        hostname: HOSTNAME.into(),
        mounts,
    };
    let status = container::run_with_mounts(
        &executor.init,
        &spec,
        &prepared.mounts,
        &mut |stream, bytes| run.output(stream, bytes),
    )
    .map_err(|e| fail(e.to_string()))?;
    drop(prepared);
    if status != ExitStatus::Code(0) {
        return Err(BuildError::Run {
            line,
            command: exec.args.join(" "),
            status: status.to_string(),
        });
    }
    let entries = match snapshotter {
        Snapshotter::Overlay => diff_upper(&dirs.upper, &lowers),
        Snapshotter::Copy => diff_tree(&dirs.upper, &lowers),
    }
    .map_err(|e| fail(format!("reading the changes: {e}")))?;
    // The upper directory must outlive the layer written from it.
    let layer = run.commit_layer(&entries, base_fs, line);
    run.background.discard((dirs, files));
    layer
}
