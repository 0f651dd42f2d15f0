//! The init process: the outer half (namespaces, overlay, stubs, waiting,
//! reporting) and the container half (pid 1: mounts, pivot_root,
//! credentials, execve). See the parent module for the design.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

use super::resolve::{self, Create, Created, Links};
use super::{
    BindMount, ContainerSpec, Mount, Network, Report, SETUP_FAILED_EXIT, read_request, sys,
};

/// Docker's default capabilities: CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD
/// NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL
/// AUDIT_WRITE (`0x00000000a80425fb`).
const DEFAULT_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

/// Paths masked as runc/containerd do by default: files get /dev/null
/// bound over them, directories an empty read-only tmpfs.
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only (bound onto themselves, then remounted read-only).
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The device nodes of /dev: name, major, minor (all mode 0666).
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The symlinks of /dev.
const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

type Res<T> = Result<T, String>;

/// Adds context to an error.
trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

impl<T> Context<T> for rustix::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| format!("{}: {}", what(), std::io::Error::from(e)))
    }
}

/// The spec's host paths, made absolute and checked.
struct Paths {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    rootfs: PathBuf,
}

impl Paths {
    fn check(spec: &ContainerSpec) -> Res<Paths> {
        fn dir(what: &str, p: &Path) -> Res<PathBuf> {
            let c = std::fs::canonicalize(p).ctx(|| format!("{what} {}", p.display()))?;
            if !c.is_dir() {
                return Err(format!("{what} {} is not a directory", p.display()));
            }
            Ok(c)
        }
        let lowers = spec
            .lowers
            .iter()
            .map(|l| dir("overlay lower directory", l))
            .collect::<Res<Vec<_>>>()?;
        let upper = dir("overlay upper directory", &spec.upper)?;
        let work = if lowers.is_empty() {
            spec.work.clone()
        } else {
            let work = dir("overlay work directory", &spec.work)?;
            let dev =
                |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
            if dev(&upper).ok() != dev(&work).ok() {
                return Err(format!(
                    "overlay upper directory {} and work directory {} are on different filesystems",
                    upper.display(),
                    work.display()
                ));
            }
            work
        };
        let rootfs = dir("root filesystem mount point", &spec.rootfs)?;
        Ok(Paths {
            lowers,
            upper,
            work,
            rootfs,
        })
    }
}

pub(super) fn main() -> ! {
    // Die with the runner's thread. If the runner died before this, our
    // parent is already someone else: checked below against its pid.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    rustix::process::umask(Mode::empty());

    let mut control = match take_control() {
        Ok(c) => c,
        Err(message) => {
            // No way to report; stderr goes to the runner's output.
            let _ = writeln!(std::io::stderr(), "rbuild container init: {message}");
            sys::exit_now(SETUP_FAILED_EXIT);
        }
    };
    let report = match read_request(&mut control) {
        Ok(request) => {
            let parent = rustix::process::getppid().map(Pid::as_raw_nonzero);
            if parent.map(|p| p.get() as u32) != Some(request.runner_pid) {
                sys::exit_now(SETUP_FAILED_EXIT);
            }
            outer(&request.spec, &request.mounts).unwrap_or_else(Report::Setup)
        }
        Err(message) => Report::Setup(message),
    };
    let code = match report {
        Report::Exited(code) => code,
        Report::Signaled(sig) => 128 + sig,
        Report::Setup(_) => SETUP_FAILED_EXIT,
    };
    let mut line = serde_json::to_vec(&report).unwrap_or_default();
    line.push(b'\n');
    let _ = control.write_all(&line);
    sys::exit_now(code)
}

/// Moves the control socket off stdin (to a close-on-exec descriptor) and
/// puts /dev/null there: the container's stdin.
fn take_control() -> Res<UnixStream> {
    let stdin = std::io::stdin();
    let control =
        rustix::io::fcntl_dupfd_cloexec(stdin.as_fd(), 3).ctx(|| "duplicating stdin".into())?;
    let null = rustix::fs::open("/dev/null", OFlags::RDWR, Mode::empty())
        .ctx(|| "opening /dev/null".into())?;
    rustix::stdio::dup2_stdin(&null).ctx(|| "replacing stdin".into())?;
    Ok(UnixStream::from(control))
}

/// The outer init: runs the container and tells how it ended.
fn outer(spec: &ContainerSpec, extra: &[Mount]) -> Res<Report> {
    let paths = Paths::check(spec)?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);

    let mut flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC;
    if spec.network == Network::None {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: unshare_unsafe is unsafe only because of CLONE_FILES, which
    // is not among the flags; this process has a single thread anyway.
    unsafe { rustix::thread::unshare_unsafe(flags) }
        .ctx(|| "creating namespaces (unshare)".into())?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .ctx(|| "making mounts private".into())?;
    mount_root(&paths)?;
    let root = open_dir(&paths.rootfs)?;

    // Mount points the image lacks; removed again after the run.
    let mut stubs = Vec::new();
    let made = make_stubs(root.as_fd(), spec, extra, &mut stubs);
    let result = made.and_then(|()| run_container(spec, extra, &paths, last_cap));
    let cleanup = resolve::remove_created(root.as_fd(), &stubs);
    let report = result?;
    cleanup?;
    Ok(report)
}

fn make_stubs(
    root: BorrowedFd<'_>,
    spec: &ContainerSpec,
    extra: &[Mount],
    stubs: &mut Vec<Created>,
) -> Res<()> {
    for dir in ["/proc", "/dev", "/sys"] {
        resolve::resolve(
            root,
            dir.as_bytes(),
            Some(Create::Dir),
            Links::Follow,
            stubs,
        )
        .ctx(|| format!("creating the mount point {dir}"))?;
    }
    for m in &spec.mounts {
        let kind = source_kind(&m.source)?;
        resolve::resolve(root, m.target.as_bytes(), Some(kind), Links::Follow, stubs)
            .ctx(|| format!("creating the mount point {}", m.target))?;
    }
    for m in extra {
        let kind = match m {
            Mount::Bind(b) => source_kind(&b.source)?,
            Mount::Tmpfs { .. } => Create::Dir,
        };
        resolve::resolve(
            root,
            m.target().as_bytes(),
            Some(kind),
            Links::Follow,
            stubs,
        )
        .ctx(|| format!("creating the mount point {}", m.target()))?;
    }
    Ok(())
}

fn source_kind(source: &Path) -> Res<Create> {
    let meta =
        std::fs::metadata(source).ctx(|| format!("bind mount source {}", source.display()))?;
    Ok(if meta.is_dir() {
        Create::Dir
    } else {
        Create::File
    })
}

/// Forks the container's pid 1, waits for it, and tells how it ended.
fn run_container(
    spec: &ContainerSpec,
    extra: &[Mount],
    paths: &Paths,
    last_cap: u32,
) -> Res<Report> {
    if spec.network == Network::None {
        sys::loopback_up().ctx(|| "bringing up the loopback interface".into())?;
    }
    rustix::system::sethostname(spec.hostname.as_bytes())
        .ctx(|| format!("setting the hostname {:?}", spec.hostname))?;

    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .ctx(|| "creating a pipe".into())?;
    let (alive_read, alive_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .ctx(|| "creating a pipe".into())?;
    let pid = match sys::fork().ctx(|| "fork".into())? {
        None => {
            drop(err_read);
            drop(alive_write);
            let Err(mut message) = container(spec, extra, paths, last_cap, &alive_read);
            // The parent reads only after we exit: stay within the pipe.
            if message.len() > 4096 {
                let mut end = 4096;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            let mut err = std::fs::File::from(err_write);
            let _ = err.write_all(message.as_bytes());
            sys::exit_now(SETUP_FAILED_EXIT);
        }
        Some(pid) => pid,
    };
    drop(err_write);
    drop(alive_read);
    // From now on, dying of the runner's death (or of an interrupt) kills
    // pid 1 first: its own death signal does not survive the execution of
    // a set-user-ID program.
    sys::kill_child_on_termination(pid).ctx(|| "installing signal handlers".into())?;
    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))
        .ctx(|| "setting the parent death signal".into())?;
    let pid = Pid::from_raw(pid).expect("fork returns a positive pid");
    let status = loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => break status,
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(format!(
                    "waiting for the container: {}",
                    std::io::Error::from(e)
                ));
            }
        }
    };
    drop(alive_write);
    let mut message = String::new();
    let _ = std::fs::File::from(err_read).read_to_string(&mut message);
    if !message.is_empty() {
        return Ok(Report::Setup(message));
    }
    if let Some(code) = status.exit_status() {
        Ok(Report::Exited(code))
    } else if let Some(sig) = status.terminating_signal() {
        Ok(Report::Signaled(sig))
    } else {
        Err(format!(
            "the container ended in an unexpected state {status:?}"
        ))
    }
}

fn open_dir(path: &Path) -> Res<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening {}", path.display()))
}

/// `/proc/self/fd/N`: mounting onto it mounts onto what `fd` is.
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

// ---------------------------------------------------------------------------
// The root filesystem.

/// The largest mount option string the kernel takes (one page, with NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// Overlay options that keep the upper directory a plain diff.
const DIFF_OPTIONS: &[(&str, &str)] = &[
    ("index", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
];

/// Overlay's `volatile` flag (Linux 5.10+): no syncing of the upper
/// filesystem, above all when the container's mount namespace goes away,
/// where overlay would otherwise write back and wait for every dirty page
/// of the whole filesystem holding the upper directory: 3 to 9 ms after
/// even a trivial RUN on a journaled ext4 (a journal commit), a quarter of
/// a second after a RUN that wrote 500 MB. Nothing needs that durability:
/// the upper directory is a scratch diff that is read once into a layer
/// blob, which the content store fsyncs, and a crash discards it.
const VOLATILE: &str = "volatile";

fn mount_root(paths: &Paths) -> Res<()> {
    if paths.lowers.is_empty() {
        return rustix::mount::mount_bind(&paths.upper, &paths.rootfs).ctx(|| {
            format!(
                "bind-mounting the upper directory {} on {} (no lower layers)",
                paths.upper.display(),
                paths.rootfs.display()
            )
        });
    }
    let what = || {
        format!(
            "mounting the overlay of {} lower directories (topmost {}), upper {} and work {} on {}",
            paths.lowers.len(),
            paths.lowers[0].display(),
            paths.upper.display(),
            paths.work.display(),
            paths.rootfs.display()
        )
    };
    let all = || paths.lowers.iter().chain([&paths.upper, &paths.work]);
    let plain = all().all(|p| !p.as_os_str().as_bytes().iter().any(|b| b",:\\".contains(b)));
    if plain {
        // With `base`, paths relative to it; else absolute ones.
        let options = |base: Option<&Path>| -> Option<Vec<u8>> {
            let rel = |p: &Path| -> Vec<u8> {
                let r = match base {
                    Some(base) => p.strip_prefix(base).expect("common ancestor"),
                    None => p,
                };
                if r.as_os_str().is_empty() {
                    b".".to_vec()
                } else {
                    r.as_os_str().as_bytes().to_vec()
                }
            };
            let mut o = b"lowerdir=".to_vec();
            for (i, l) in paths.lowers.iter().enumerate() {
                if i > 0 {
                    o.push(b':');
                }
                o.extend(rel(l));
            }
            o.extend(b",upperdir=");
            o.extend(rel(&paths.upper));
            o.extend(b",workdir=");
            o.extend(rel(&paths.work));
            (o.len() + 40 <= MAX_MOUNT_DATA).then_some(o)
        };
        let base = common_ancestor(all());
        let (data, chdir) = match options(None) {
            Some(o) => (Some(o), false),
            None => (options(Some(&base)), true),
        };
        if let Some(data) = data {
            if chdir {
                // Overlay resolves relative paths against our cwd.
                rustix::process::chdir(&base).ctx(|| format!("chdir {}", base.display()))?;
            }
            let mut with_diff = data.clone();
            for (k, v) in DIFF_OPTIONS {
                with_diff.extend(format!(",{k}={v}").as_bytes());
            }
            let mut with_volatile = with_diff.clone();
            with_volatile.extend(format!(",{VOLATILE}").as_bytes());
            let mount = |data: Vec<u8>| {
                let data = CString::new(data).expect("no NUL in paths");
                rustix::mount::mount(
                    "overlay",
                    &paths.rootfs,
                    "overlay",
                    MountFlags::empty(),
                    Some(data.as_c_str()),
                )
            };
            // Kernels that do not know an option refuse the mount: retry
            // without them (their defaults are then what they are).
            let result = match mount(with_volatile) {
                Err(rustix::io::Errno::INVAL) => match mount(with_diff) {
                    Err(rustix::io::Errno::INVAL) => mount(data),
                    other => other,
                },
                other => other,
            };
            if chdir {
                let _ = rustix::process::chdir("/");
            }
            return result.ctx(what);
        }
    }
    mount_root_fsconfig(paths).map_err(|e| {
        format!(
            "{}: {e} (the options do not fit mount(2)'s one page, so one lowerdir+ per layer was tried, which needs Linux 6.8 or newer)",
            what()
        )
    })
}

/// The overlay through the new mount API, one `lowerdir+` per layer, so
/// neither the number of layers nor `,` and `:` in paths matter.
fn mount_root_fsconfig(paths: &Paths) -> Res<()> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
    let fs =
        rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).ctx(|| "fsopen".into())?;
    let with_log = |e: rustix::io::Errno, what: String| -> String {
        // The kernel explains refusals in the context's message log.
        let mut log = String::new();
        let mut buf = [0u8; 512];
        while let Ok(n @ 1..) = rustix::io::read(&fs, &mut buf) {
            log.push_str(&format!("; {}", String::from_utf8_lossy(&buf[..n])));
        }
        format!("{what}: {}{log}", std::io::Error::from(e))
    };
    for l in &paths.lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l)
            .map_err(|e| with_log(e, format!("lowerdir+ {}", l.display())))?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", &paths.upper)
        .map_err(|e| with_log(e, "upperdir".into()))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", &paths.work)
        .map_err(|e| with_log(e, "workdir".into()))?;
    for (k, v) in DIFF_OPTIONS {
        let _ = rustix::mount::fsconfig_set_string(&fs, *k, *v);
    }
    let _ = rustix::mount::fsconfig_set_flag(&fs, VOLATILE);
    rustix::mount::fsconfig_create(&fs).map_err(|e| with_log(e, "creating the overlay".into()))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| with_log(e, "fsmount".into()))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        &paths.rootfs,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .ctx(|| "move_mount".into())
}

fn common_ancestor<'a>(mut paths: impl Iterator<Item = &'a PathBuf>) -> PathBuf {
    let mut common = match paths.next() {
        Some(p) => p.clone(),
        None => return PathBuf::from("/"),
    };
    for p in paths {
        while !p.starts_with(&common) {
            if !common.pop() {
                return PathBuf::from("/");
            }
        }
    }
    common
}

// ---------------------------------------------------------------------------
// The container: pid 1 of the new pid namespace.

/// Sets up the container and executes the command; returns only the
/// message of a setup error.
fn container(
    spec: &ContainerSpec,
    extra: &[Mount],
    paths: &Paths,
    last_cap: u32,
    alive: &OwnedFd,
) -> Result<Infallible, String> {
    arm_death_signal(alive);
    rustix::process::setsid().ctx(|| "setsid".into())?;
    // SAFETY: no CLONE_FILES; single-threaded.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }
        .ctx(|| "creating the container's mount namespace".into())?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .ctx(|| "making mounts private".into())?;
    let root = open_dir(&paths.rootfs)?;
    let root = root.as_fd();

    let proc_dir = target(root, "/proc", Create::Dir)?;
    mount_fs(
        &proc_dir,
        "proc",
        "/proc",
        MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV,
        None,
    )?;
    setup_dev(root)?;
    setup_sys(root)?;
    for path in MASKED {
        mask(root, path)?;
    }
    for path in READONLY {
        match lookup(root, path)? {
            Some(fd) => bind_readonly(root, &fd, path)?,
            None => continue,
        }
    }
    for m in &spec.mounts {
        bind(root, m)?;
    }
    for m in extra {
        match m {
            Mount::Bind(b) => bind(root, b)?,
            Mount::Tmpfs { target: path, size } => {
                let t = target(root, path, Create::Dir)?;
                let data = size.map(|n| CString::new(format!("size={n}")).expect("no NUL"));
                rustix::mount::mount(
                    "tmpfs",
                    fd_path(&t),
                    "tmpfs",
                    MountFlags::NOSUID,
                    data.as_deref(),
                )
                .ctx(|| format!("mounting tmpfs on {path}"))?;
            }
        }
    }
    pivot(root)?;

    let new_root = open_dir(Path::new("/"))?;
    let cwd = resolve::resolve(
        new_root.as_fd(),
        spec.cwd.as_bytes(),
        Some(Create::Dir),
        Links::Follow,
        &mut Vec::new(),
    )
    .ctx(|| format!("working directory {}", spec.cwd))?;
    rustix::process::fchdir(&cwd).ctx(|| format!("working directory {}", spec.cwd))?;
    drop(cwd);
    drop(new_root);

    drop_privileges(spec, last_cap)?;
    // Changing credentials cleared the death signal.
    arm_death_signal(alive);
    exec(spec)
}

/// Bind-mounts `m` inside the root (read-only if it says so).
fn bind(root: BorrowedFd<'_>, m: &BindMount) -> Res<()> {
    let t = target(root, &m.target, source_kind(&m.source)?)?;
    rustix::mount::mount_bind_recursive(&m.source, fd_path(&t))
        .ctx(|| format!("bind-mounting {} on {}", m.source.display(), m.target))?;
    if m.readonly {
        make_readonly(root, &m.target)?;
    }
    Ok(())
}

/// Dies with the parent: sets the death signal, then makes sure the parent
/// did not die before that (its end of `alive` is then closed).
fn arm_death_signal(alive: &OwnedFd) {
    use rustix::event::{PollFd, PollFlags, poll};
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    let mut fds = [PollFd::new(alive, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&zero)).is_ok() && fds[0].revents().contains(PollFlags::HUP) {
        sys::exit_now(SETUP_FAILED_EXIT);
    }
}

/// Resolves (and creates) a mount point inside the root.
fn target(root: BorrowedFd<'_>, path: &str, create: Create) -> Res<OwnedFd> {
    resolve::resolve(
        root,
        path.as_bytes(),
        Some(create),
        Links::Follow,
        &mut Vec::new(),
    )
    .ctx(|| format!("mount point {path}"))
}

/// Resolves a path inside the root; `None` if it does not exist.
fn lookup(root: BorrowedFd<'_>, path: &str) -> Res<Option<OwnedFd>> {
    match resolve::resolve(root, path.as_bytes(), None, Links::Follow, &mut Vec::new()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn mount_fs(
    on: &OwnedFd,
    fstype: &str,
    path: &str,
    flags: MountFlags,
    data: Option<&std::ffi::CStr>,
) -> Res<()> {
    rustix::mount::mount(fstype, fd_path(on), fstype, flags, data)
        .ctx(|| format!("mounting {fstype} on {path}"))
}

fn setup_dev(root: BorrowedFd<'_>) -> Res<()> {
    let t = target(root, "/dev", Create::Dir)?;
    mount_fs(
        &t,
        "tmpfs",
        "/dev",
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        Some(c"mode=755,size=65536k"),
    )?;
    // The tmpfs, not the directory under it.
    let dev = target(root, "/dev", Create::Dir)?;
    for &(name, major, minor) in DEVICES {
        let made = rustix::fs::mknodat(
            &dev,
            name,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        );
        match made {
            Ok(()) => {}
            Err(rustix::io::Errno::PERM) => {
                // No CAP_MKNOD (say, in a user namespace): bind the host's.
                let node = rustix::fs::openat(
                    &dev,
                    name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o666),
                )
                .ctx(|| format!("creating /dev/{name}"))?;
                drop(node);
                let node = target(root, &format!("/dev/{name}"), Create::File)?;
                rustix::mount::mount_bind(format!("/dev/{name}"), fd_path(&node))
                    .ctx(|| format!("binding the host's /dev/{name}"))?;
            }
            Err(e) => return Err(format!("creating /dev/{name}: {}", std::io::Error::from(e))),
        }
    }
    for &(name, to) in DEV_LINKS {
        rustix::fs::symlinkat(to, &dev, name)
            .ctx(|| format!("creating the symlink /dev/{name}"))?;
    }
    let pts = target(root, "/dev/pts", Create::Dir)?;
    mount_fs(
        &pts,
        "devpts",
        "/dev/pts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = target(root, "/dev/shm", Create::Dir)?;
    mount_fs(
        &shm,
        "tmpfs",
        "/dev/shm",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"mode=1777,size=65536k"),
    )?;
    let mqueue = target(root, "/dev/mqueue", Create::Dir)?;
    mount_fs(
        &mqueue,
        "mqueue",
        "/dev/mqueue",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
}

fn setup_sys(root: BorrowedFd<'_>) -> Res<()> {
    let t = target(root, "/sys", Create::Dir)?;
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    if rustix::mount::mount("sysfs", fd_path(&t), "sysfs", flags, None).is_ok() {
        return Ok(());
    }
    // sysfs may be refused where the network namespace is not ours (in a
    // user namespace): bind the host's, read-only.
    rustix::mount::mount_bind_recursive("/sys", fd_path(&t))
        .ctx(|| "mounting /sys (sysfs, or a bind of the host's)".into())?;
    make_readonly(root, "/sys")
}

fn mask(root: BorrowedFd<'_>, path: &str) -> Res<()> {
    let Some(fd) = lookup(root, path)? else {
        return Ok(());
    };
    let st = rustix::fs::fstat(&fd).ctx(|| path.to_string())?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        mount_fs(&fd, "tmpfs", path, MountFlags::RDONLY, None)
    } else {
        rustix::mount::mount_bind("/dev/null", fd_path(&fd)).ctx(|| format!("masking {path}"))
    }
}

/// Binds `path` onto itself and makes the new mount read-only.
fn bind_readonly(root: BorrowedFd<'_>, fd: &OwnedFd, path: &str) -> Res<()> {
    rustix::mount::mount_bind_recursive(fd_path(fd), fd_path(fd))
        .ctx(|| format!("binding {path} onto itself"))?;
    make_readonly(root, path)
}

/// Makes the mount at `path` (and the mounts below it, where the kernel has
/// mount_setattr) read-only. The path is resolved again so that it names
/// the topmost mount, not the directory under it.
fn make_readonly(root: BorrowedFd<'_>, path: &str) -> Res<()> {
    let top = resolve::resolve(root, path.as_bytes(), None, Links::Follow, &mut Vec::new())
        .ctx(|| path.to_string())?;
    match sys::make_readonly_recursive(top.as_fd()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // Before Linux 5.12: remount the top mount, keeping its flags.
            use rustix::fs::StatVfsMountFlags as V;
            let have = rustix::fs::fstatvfs(&top).ctx(|| path.to_string())?.f_flag;
            let mut flags = MountFlags::BIND | MountFlags::RDONLY;
            for (v, m) in [
                (V::NOSUID, MountFlags::NOSUID),
                (V::NODEV, MountFlags::NODEV),
                (V::NOEXEC, MountFlags::NOEXEC),
                (V::NOATIME, MountFlags::NOATIME),
                (V::NODIRATIME, MountFlags::NODIRATIME),
                (V::RELATIME, MountFlags::RELATIME),
            ] {
                if have.contains(v) {
                    flags |= m;
                }
            }
            rustix::mount::mount_remount(fd_path(&top), flags, "")
                .ctx(|| format!("making {path} read-only"))
        }
        Err(e) => Err(format!("making {path} read-only: {e}")),
    }
}

/// pivot_root into the root and detach the old one (runc's way:
/// `pivot_root(".", ".")`, then unmount what is on top).
fn pivot(root: BorrowedFd<'_>) -> Res<()> {
    let old = rustix::fs::open(
        "/",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "opening /".into())?;
    rustix::process::fchdir(root).ctx(|| "entering the root".into())?;
    rustix::process::pivot_root(".", ".").ctx(|| "pivot_root".into())?;
    rustix::process::fchdir(&old).ctx(|| "entering the old root".into())?;
    rustix::mount::mount_change(
        ".",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .ctx(|| "making the old root a slave".into())?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).ctx(|| "detaching the old root".into())?;
    rustix::process::chdir("/").ctx(|| "chdir /".into())
}

/// Groups, gid, uid (in that order), and Docker's default capabilities: in
/// the bounding set always, in the permitted and effective sets while root
/// (a non-root uid ends with none, as after an execve by that user).
fn drop_privileges(spec: &ContainerSpec, last_cap: u32) -> Res<()> {
    for cap in 0..=last_cap {
        let set = CapabilitySet::from_bits_retain(1 << cap);
        if !DEFAULT_CAPS.contains(set) {
            match rustix::thread::remove_capability_from_bounding_set(set) {
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(e) => {
                    return Err(format!(
                        "dropping capability {cap}: {}",
                        std::io::Error::from(e)
                    ));
                }
            }
        }
    }
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => {
            return Err(format!(
                "clearing ambient capabilities: {}",
                std::io::Error::from(e)
            ));
        }
    }
    let groups: Vec<_> = spec
        .additional_gids
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    rustix::thread::set_thread_groups(&groups)
        .ctx(|| format!("setgroups {:?}", spec.additional_gids))?;
    let gid = rustix::process::Gid::from_raw(spec.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).ctx(|| format!("setgid {}", spec.gid))?;
    let uid = rustix::process::Uid::from_raw(spec.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid).ctx(|| format!("setuid {}", spec.uid))?;
    let now = rustix::thread::capabilities(None).ctx(|| "capget".into())?;
    let keep = now.permitted & DEFAULT_CAPS;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .ctx(|| "capset".into())
}

/// Executes the command. Failures are the command's, not the setup's: a
/// runc-like message on stderr and exit code 127 (not found) or 126.
fn exec(spec: &ContainerSpec) -> ! {
    let fail = |code: i32, message: String| -> ! {
        let _ = writeln!(std::io::stderr(), "{message}");
        sys::exit_now(code)
    };
    let program = &spec.args[0];
    let path_env = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("");
    let path = match look_path(program, path_env) {
        Ok(p) => p,
        Err((code, message)) => fail(code, message),
    };
    let to_c = |s: &[u8]| CString::new(s).expect("checked for NUL bytes by the runner");
    let argv: Vec<CString> = spec.args.iter().map(|a| to_c(a.as_bytes())).collect();
    let envp: Vec<CString> = spec.env.iter().map(|e| to_c(e.as_bytes())).collect();
    let c_path = to_c(path.as_os_str().as_bytes());

    sys::reset_signals();
    rustix::process::umask(Mode::from_raw_mode(0o022));
    if let Err(e) = sys::cloexec_from_3() {
        fail(SETUP_FAILED_EXIT, format!("closing file descriptors: {e}"));
    }
    let err = sys::execve(&c_path, &argv, &envp);
    let code = if err.raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    };
    fail(code, format!("exec {}: {}", path.display(), go_error(&err)))
}

/// Finds the program like Go's `exec.LookPath` does for runc.
fn look_path(program: &str, path_env: &str) -> Result<PathBuf, (i32, String)> {
    if program.contains('/') {
        return executable(Path::new(program))
            .map(|()| PathBuf::from(program))
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                let message = if e.kind() == std::io::ErrorKind::NotFound {
                    format!("exec: {program:?}: stat {program}: {}", go_error(&e))
                } else {
                    format!("exec: {program:?}: {}", go_error(&e))
                };
                (code, message)
            });
    }
    for dir in path_env.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        if executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err((
        127,
        format!("exec: {program:?}: executable file not found in $PATH"),
    ))
}

/// Go's `findExecutable`: exists, is not a directory, has an x bit.
fn executable(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EACCES));
    }
    Ok(())
}

/// An error as Go prints it: "no such file or directory".
fn go_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
