//! A RUN step: the base's layers as overlay lower directories, the
//! command in a container on top of them, and the upper directory's
//! changes as the step's layer.

use std::fs;
use std::io::Read;
use std::path::PathBuf;

use rbuild_exec::basefs::BaseFs;
use rbuild_exec::container::{self, BindMount, ContainerSpec, ExitStatus, Network};
use rbuild_exec::diff::diff_upper;
use rbuild_exec::snapshot::Snapshots;
use rbuild_frontend::ExecOp;
use rbuild_oci::BlobStore;

use crate::build::{BuildError, Layer, Run};

/// BuildKit's hostname for build containers; scripts see it.
const HOSTNAME: &str = "buildkitsandbox";
/// BuildKit's /etc/hosts for build containers.
const HOSTS: &str =
    "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";
/// Used when the host has no resolv.conf, as BuildKit does.
const DEFAULT_RESOLV_CONF: &str = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";

/// Runs `exec` on top of `layers`; returns its layer, if it changed files.
pub(crate) fn run(
    run: &mut Run<'_>,
    exec: &ExecOp,
    layers: &[Layer],
    base_fs: &mut BaseFs,
    line: usize,
) -> Result<Option<Layer>, BuildError> {
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

    let snapshots =
        Snapshots::open(executor.snapshots).map_err(|e| fail(format!("layer store: {e}")))?;
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

    // Files the container sees but its layer never gets: name resolution,
    // and heredoc scripts.
    let files = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(options.scratch)
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
        lowers: lowers.clone(),
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
        executor.init,
        &spec,
        &prepared.mounts,
        &mut |stream, bytes| (executor.output)(line, stream, bytes),
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
    let entries =
        diff_upper(&dirs.upper, &lowers).map_err(|e| fail(format!("reading the changes: {e}")))?;
    // The upper directory must outlive the layer written from it.
    let layer = run.commit_layer(&entries, base_fs, line);
    drop(dirs);
    layer
}
