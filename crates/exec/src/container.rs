//! Running a `RUN` step in a container of our own making (no runc binary).
//!
//! [`run`] starts a helper process, the *init*, by re-executing an
//! executable (rbuild itself, or a test binary) with the single argument
//! [`INIT_ARG`]; that program must call [`init_main`] first thing in `main`.
//! Nothing but `std::process::Command` runs in rbuild's own (possibly
//! multi-threaded) process: all namespace and mount work happens in the
//! freshly executed, single-threaded init.
//!
//! # Processes
//!
//! ```text
//! rbuild (run)              the runner: writes the spec, pumps output, reads the report
//!  └─ init (outer)          unshare(NEWNS|NEWPID|NEWUTS|NEWIPC[|NEWNET]); mounts the overlay;
//!      │                    creates mount-point stubs; forks; waits; removes the stubs; reports
//!      └─ container (pid 1) own mount namespace: /proc, /dev, /sys, masks, bind mounts,
//!                           pivot_root, cwd, credentials, capabilities; execve(args)
//! ```
//!
//! The command is pid 1 of the new pid namespace, as with runc; when it
//! exits the kernel kills everything else in the namespace, so [`run`]
//! returns only when every process of the step is gone. The outer init
//! dies with the thread that called [`run`] (`PR_SET_PDEATHSIG`), and when
//! it dies of that or of SIGINT, SIGTERM or SIGHUP, it first kills pid 1
//! with SIGKILL, and so the whole namespace. Pid 1 also has
//! `PR_SET_PDEATHSIG(SIGKILL)` for the case the outer init is killed
//! outright (the kernel clears that one if pid 1 executes a set-user-ID
//! program).
//!
//! # Channels
//!
//! The init's standard input is one end of a Unix socket pair (the
//! *control* socket). The runner writes the request (the [`ContainerSpec`]
//! as JSON) and shuts down its writing side; the init replies with one JSON
//! line, its report: the command's exit code, the signal that
//! killed it, or a setup error. So "exit code 137" and "killed by signal 9"
//! are told apart without any exit-code convention, and a failure before
//! the command starts becomes [`ContainerError::Setup`], not an exit status.
//! The init's own exit code mirrors the result (the code, 128 + the signal,
//! or [`SETUP_FAILED_EXIT`]) only as a fallback for humans and tools; the
//! runner relies on the report. The container's stdin is `/dev/null`; its
//! stdout and stderr are pipes to the runner, whose bytes go to `output`.
//!
//! A command that cannot be executed is not a setup error: as with
//! docker/runc, a message such as `exec: "foo": executable file not found
//! in $PATH` goes to the container's stderr and the status is exit code
//! 127 (not found) or 126 (found but not executable).
//!
//! # Root filesystem
//!
//! The merged root is an overlay of `lowers` under `upper` (with
//! `index=off,redirect_dir=off,metacopy=off` when the kernel knows those
//! options, so that `upper` is a plain diff: new and changed files, and
//! whiteouts as 0:0 character devices and opaque directories as
//! `trusted.overlay.opaque` xattrs), and `volatile` (nothing needs the
//! scratch upper directory synced). With no lowers (`FROM scratch`) the
//! upper directory itself is bind-mounted as the root and `work` is unused.
//! Many lower layers: overlay options must fit in one page (4096 bytes); if
//! the absolute paths do not, the init changes into the deepest common
//! directory and uses relative paths; if that is still too long (or a path
//! holds `,` or `:`), it uses the new mount API with one `lowerdir+` per
//! layer (Linux 6.8+), and otherwise fails with a clear message.
//!
//! # Mount-point stubs
//!
//! Mount points the image lacks (`/proc`, `/dev`, `/sys`, the targets of
//! [`ContainerSpec::mounts`] and of [`run_with_mounts`]' bind and tmpfs
//! mounts, and their missing parents) are created by the
//! outer init in the merged root before the container starts, and removed
//! again (if still empty) after it has exited, from the outer init's mount
//! namespace where nothing is mounted over them. The modification time of
//! the directory they were created in is restored if nothing else changed
//! it, so the upper directory holds no trace of them beyond, possibly, an
//! unchanged copied-up parent directory. Paths created inside other mounts
//! (say a bind mount's target inside another bind mount) stay where they
//! were created, as with BuildKit.
//!
//! # Paths inside the root
//!
//! Mount targets and the working directory are resolved inside the root,
//! one component at a time, following symlinks as if the root were `/`
//! (`..` stops at the root, absolute links restart there, magic links in
//! `/proc` are read as plain text): nothing can lead outside the root.

//!
//! # Limitations
//!
//! - Needs root (real capabilities, no user namespace): mounts, mknod,
//!   pivot_root.
//! - No cgroups (no resource limits, no `/sys/fs/cgroup` mount), no seccomp
//!   or LSM profile, no terminal, no `/dev/console`.
//! - The command runs as pid 1 with no reaper in front of it, as under
//!   runc: it ignores signals it sends itself (`kill -9 $$` does nothing),
//!   and orphaned zombies are reaped only if it reaps them.
//! - Paths in the spec must be UTF-8 (they travel as JSON strings).
//! - Besides whiteouts and `trusted.overlay.opaque`, copied-up entries in
//!   `upper` may carry other `trusted.overlay.*` xattrs (such as `origin`
//!   on some kernels): not part of the image, a diff must skip them.

mod init;
mod resolve;
mod sys;

use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// The argument with which [`run`] starts the init executable.
pub const INIT_ARG: &str = "__rbuild-container-init";

/// The exit code of the init process when setting up the container failed
/// (the runner learns this from the report, not from the code).
pub const SETUP_FAILED_EXIT: i32 = 125;

/// What to run and where. Serializable because it is handed to the init
/// process through a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Overlay lower directories, topmost first (as overlayfs' `lowerdir=`
    /// wants them); empty for `FROM scratch`.
    pub lowers: Vec<PathBuf>,
    /// The overlay upper directory (existing, empty at first); receives
    /// every change the command makes.
    pub upper: PathBuf,
    /// The overlay work directory (existing, empty, on the same filesystem
    /// as `upper`).
    pub work: PathBuf,
    /// Where to mount the merged root: an existing empty directory. The
    /// mount exists only inside the container's own mount namespace and
    /// disappears with it.
    pub rootfs: PathBuf,
    /// The command; `args[0]` is looked up in the `PATH` of `env` if it has
    /// no `/`.
    pub args: Vec<String>,
    /// The environment, `KEY=value`.
    pub env: Vec<String>,
    /// The working directory, absolute, inside the container; created
    /// (0755, root) if missing, like BuildKit.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub network: Network,
    pub hostname: String,
    /// Bind mounts made after the root filesystem is set up, in order.
    pub mounts: Vec<BindMount>,
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// Share the host's network namespace (BuildKit's default).
    Host,
    /// A fresh network namespace with only the loopback interface, up.
    None,
}

/// A bind mount of a host file or directory into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// The file or directory on the host (symlinks are followed).
    pub source: PathBuf,
    /// The absolute path inside the container; created (as a file or a
    /// directory, like the source) if missing, and removed after the run if
    /// it was created in the root filesystem.
    pub target: String,
    /// Mount read-only (recursively where the kernel supports it).
    pub readonly: bool,
}

/// A mount of a step's own, made after [`ContainerSpec::mounts`], in
/// order (see [`run_with_mounts`]). Mount points the root lacks are
/// created and removed again like those of the spec's bind mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// A bind mount, as in [`ContainerSpec::mounts`].
    Bind(BindMount),
    /// A fresh, empty tmpfs (`nosuid`, as BuildKit mounts them) at `target`
    /// (absolute, inside the container), holding at most `size` bytes
    /// (the kernel's default when `None`).
    Tmpfs { target: String, size: Option<u64> },
}

impl Mount {
    /// The absolute path inside the container.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind(b) => &b.target,
            Mount::Tmpfs { target, .. } => target,
        }
    }
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(sig) => match signal_name(sig) {
                Some(name) => write!(f, "signal {sig} ({name})"),
                None => write!(f, "signal {sig}"),
            },
        }
    }
}

/// The name of a Linux signal number, such as `SIGKILL`.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(sig)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i).copied())
}

/// Why a container could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The spec is unusable (checked before anything is started).
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    /// The init executable could not be started.
    #[error("starting the container init {}: {source}", init.display())]
    Spawn {
        init: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Talking to the init process failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Setting up the container failed before the command started; the
    /// message names the step and the path.
    #[error("setting up the container: {0}")]
    Setup(String),
    /// The init process ended without reporting how the command ended
    /// (it was killed, or the executable does not call [`init_main`]).
    #[error("the container init ended without a report ({status}){}", detail_suffix(.detail))]
    InitDied {
        status: std::process::ExitStatus,
        detail: String,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// What the runner sends to the init.
#[derive(Serialize, Deserialize)]
struct Request {
    /// The runner's pid: the init exits if its parent is already another
    /// process (the runner died before the init armed its death signal).
    runner_pid: u32,
    spec: ContainerSpec,
    /// Mounts made after the spec's.
    #[serde(default)]
    mounts: Vec<Mount>,
}

/// What the init answers, one JSON line on the control socket.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    Exited(i32),
    Signaled(i32),
    Setup(String),
}

/// Runs `spec` in a new container and returns how its command ended.
///
/// `init` is an executable that calls [`init_main`] when started with the
/// single argument [`INIT_ARG`] (rbuild re-executes itself; tests
/// re-execute the test binary). The command's stdout and stderr are given
/// to `output(stream, bytes)` as they arrive, stream 1 or 2, on the calling
/// thread. Returns when the container's init has exited; every process of
/// the step is dead by then.
///
/// The init dies with the thread that calls `run` (`PR_SET_PDEATHSIG`), so
/// call it from a thread that outlives the call (any thread does, since
/// `run` blocks).
pub fn run(
    init: &Path,
    spec: &ContainerSpec,
    output: &mut dyn FnMut(u8, &[u8]),
) -> Result<ExitStatus, ContainerError> {
    run_with_mounts(init, spec, &[], output)
}

/// [`run`], with `mounts` made after the spec's bind mounts, in order
/// (a mount whose target is inside another's comes after it).
pub fn run_with_mounts(
    init: &Path,
    spec: &ContainerSpec,
    mounts: &[Mount],
    output: &mut dyn FnMut(u8, &[u8]),
) -> Result<ExitStatus, ContainerError> {
    validate(spec)?;
    for m in mounts {
        if !m.target().starts_with('/') {
            return Err(ContainerError::InvalidSpec(format!(
                "mount target {:?} is not absolute",
                m.target()
            )));
        }
    }
    let request = serde_json::to_vec(&Request {
        runner_pid: std::process::id(),
        spec: spec.clone(),
        mounts: mounts.to_vec(),
    })
    .map_err(|e| ContainerError::InvalidSpec(format!("cannot encode the spec: {e}")))?;

    let (control, init_end) = UnixStream::pair().map_err(|source| ContainerError::Io {
        context: "creating the control socket",
        source,
    })?;
    let mut child = Command::new(init)
        .arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(init_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ContainerError::Spawn {
            init: init.to_path_buf(),
            source,
        })?;
    // The Command's copy of our end is gone now; if the init dies early the
    // write fails with EPIPE and the wait below tells what happened.
    let sent =
        send_all(&control, &request).and_then(|()| control.shutdown(std::net::Shutdown::Write));

    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let pumped = pump(stdout, stderr, &control, output);
    let status = child.wait().map_err(|source| ContainerError::Io {
        context: "waiting for the container init",
        source,
    })?;
    let report_bytes = pumped?;

    let line = report_bytes
        .split(|&b| b == b'\n')
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    match serde_json::from_slice::<Report>(line) {
        Ok(Report::Exited(code)) => Ok(ExitStatus::Code(code)),
        Ok(Report::Signaled(sig)) => Ok(ExitStatus::Signal(sig)),
        Ok(Report::Setup(message)) => Err(ContainerError::Setup(message)),
        Err(_) => Err(ContainerError::InitDied {
            status,
            detail: match sent {
                Err(e) => format!("sending the spec: {e}"),
                Ok(()) if line.is_empty() => String::new(),
                Ok(()) => format!("unreadable report {:?}", String::from_utf8_lossy(line)),
            },
        }),
    }
}

/// Writes all of `bytes` without risking SIGPIPE if the init is gone.
fn send_all(socket: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use rustix::net::{SendFlags, send};
    while !bytes.is_empty() {
        match send(socket, bytes, SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn validate(spec: &ContainerSpec) -> Result<(), ContainerError> {
    let bad = |m: String| Err(ContainerError::InvalidSpec(m));
    if spec.args.is_empty() {
        return bad("no command (args is empty)".into());
    }
    if !spec.cwd.starts_with('/') {
        return bad(format!("working directory {:?} is not absolute", spec.cwd));
    }
    for m in &spec.mounts {
        if !m.target.starts_with('/') {
            return bad(format!("mount target {:?} is not absolute", m.target));
        }
    }
    if spec.hostname.len() > 64 {
        return bad(format!(
            "hostname {:?} is longer than 64 bytes",
            spec.hostname
        ));
    }
    for s in spec
        .args
        .iter()
        .chain(&spec.env)
        .chain([&spec.cwd, &spec.hostname])
    {
        if s.contains('\0') {
            return bad(format!("{s:?} contains a NUL byte"));
        }
    }
    Ok(())
}

/// Reads the init's stdout, stderr and control socket until all three end,
/// giving output to `output`; returns what came on the control socket.
fn pump(
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    control: &UnixStream,
    output: &mut dyn FnMut(u8, &[u8]),
) -> Result<Vec<u8>, ContainerError> {
    use rustix::event::{PollFd, PollFlags, poll};

    let io_err = |source: std::io::Error| ContainerError::Io {
        context: "reading from the container",
        source,
    };
    // Slot 0 and 1: stdout and stderr; slot 2: the control socket.
    let mut fds: [Option<OwnedFd>; 3] = [
        stdout,
        stderr,
        Some(control.as_fd().try_clone_to_owned().map_err(io_err)?),
    ];
    let mut report = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let open: Vec<usize> = (0..3).filter(|&i| fds[i].is_some()).collect();
        if open.is_empty() {
            return Ok(report);
        }
        let mut pollfds: Vec<PollFd<'_>> = open
            .iter()
            .map(|&i| PollFd::new(fds[i].as_ref().expect("open"), PollFlags::IN))
            .collect();
        match poll(&mut pollfds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err(e.into())),
        }
        let ready: Vec<usize> = open
            .iter()
            .zip(&pollfds)
            .filter(|(_, p)| !p.revents().is_empty())
            .map(|(&i, _)| i)
            .collect();
        drop(pollfds);
        for i in ready {
            let fd = fds[i].as_ref().expect("open");
            let n = match rustix::io::read(fd, &mut buf) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                // The init ended without reading all of the request.
                Err(rustix::io::Errno::CONNRESET) if i == 2 => 0,
                Err(e) => return Err(io_err(e.into())),
            };
            if n == 0 {
                fds[i] = None;
            } else if i == 2 {
                report.extend_from_slice(&buf[..n]);
            } else {
                output(i as u8 + 1, &buf[..n]);
            }
        }
    }
}

/// The entry point of the re-executed init process: call it from `main`
/// when the only argument is [`INIT_ARG`], before any thread is started.
/// Never returns; exits with the command's status (see the module docs).
pub fn init_main() -> ! {
    init::main()
}

/// Reads the request from the control socket (the init's stdin).
fn read_request(control: &mut UnixStream) -> Result<Request, String> {
    let mut bytes = Vec::new();
    control
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the spec: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("decoding the spec: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_display() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert_eq!(ExitStatus::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert_eq!(ExitStatus::Signal(15).to_string(), "signal 15 (SIGTERM)");
        assert_eq!(ExitStatus::Signal(40).to_string(), "signal 40");
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal(0).success());
    }

    #[test]
    fn report_roundtrip() {
        let line = serde_json::to_string(&Report::Setup("x".into())).unwrap();
        assert!(matches!(
            serde_json::from_str::<Report>(&line).unwrap(),
            Report::Setup(m) if m == "x"
        ));
    }

    #[test]
    fn validate_rejects_relative_paths() {
        let spec = ContainerSpec {
            lowers: vec![],
            upper: "/u".into(),
            work: "/w".into(),
            rootfs: "/r".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: "rel".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            network: Network::Host,
            hostname: "h".into(),
            mounts: vec![],
        };
        assert!(matches!(
            validate(&spec),
            Err(ContainerError::InvalidSpec(_))
        ));
        let mut ok = spec.clone();
        ok.cwd = "/".into();
        assert!(validate(&ok).is_ok());
        ok.args.clear();
        assert!(matches!(validate(&ok), Err(ContainerError::InvalidSpec(_))));
    }
}
