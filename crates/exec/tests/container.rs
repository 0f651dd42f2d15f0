//! Tests of the RUN container (`rbuild_exec::container`), with a root
//! filesystem made from Debian's static busybox.
//!
//! This binary has no libtest harness: started with [`INIT_ARG`] it is the
//! container init; otherwise it runs the tests below itself and prints
//! libtest's lines (`test NAME ... ok`, `test result: ...`). Arguments that
//! do not start with `-` filter the tests by name. The tests need root and
//! overlayfs; without them they are skipped, except with `CI=true`, where
//! that is a failure.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rbuild_exec::container::{
    self, BindMount, ContainerError, ContainerSpec, ExitStatus, INIT_ARG, Network,
};

type TestResult = Result<(), String>;

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($fmt)+)));
        }
    };
}

macro_rules! check_eq {
    ($left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(format!(
                        "{}:{}: {} == {}\n  left: {:?}\n right: {:?}",
                        file!(),
                        line!(),
                        stringify!($left),
                        stringify!($right),
                        l,
                        r
                    ));
                }
            }
        }
    };
}

/// Makes this binary a runner for `killed_runner`.
const RUNNER_ARG: &str = "__container-test-runner";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

/// The shared lower layer (busybox, users, a few files and symlinks) and a
/// place for each run's upper, work and root directories.
struct Fixture {
    dir: tempfile::TempDir,
    lower: PathBuf,
    runs: AtomicUsize,
}

/// What one run gave.
struct Run {
    status: Result<ExitStatus, ContainerError>,
    stdout: String,
    stderr: String,
    upper: PathBuf,
}

impl Run {
    fn ok(&self) -> Result<&str, String> {
        match &self.status {
            Ok(ExitStatus::Code(0)) => Ok(&self.stdout),
            other => Err(format!(
                "expected exit code 0, got {other:?}\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )),
        }
    }
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-container-test.")
            .tempdir()
            .expect("temp dir");
        let lower = dir.path().join("lower");
        for d in ["bin", "etc", "data", "home/app", "tmp"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox")
            .arg("--list-full")
            .output()
            .expect("busybox --list-full");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let path = lower.join(applet);
            if path.symlink_metadata().is_ok() {
                continue;
            }
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/bin/busybox", &path).unwrap();
        }
        fs::write(
            lower.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            lower.join("etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
        )
        .unwrap();
        fs::write(lower.join("data/lowerfile"), "from the lower layer\n").unwrap();
        fs::write(lower.join("data/keep"), "kept\n").unwrap();
        fs::set_permissions(lower.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        // Symlinks that try to lead out of the root.
        std::os::unix::fs::symlink("../../../../../../../..", lower.join("escape")).unwrap();
        std::os::unix::fs::symlink("/proc/self/fd", lower.join("fdlink")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root", lower.join("procroot")).unwrap();
        Fixture {
            dir,
            lower,
            runs: AtomicUsize::new(0),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A spec with fresh upper/work/root directories over the busybox lower.
    fn spec(&self, args: &[&str]) -> ContainerSpec {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let run = self.path().join(format!("runs/{n}"));
        for d in ["upper", "work", "rootfs"] {
            fs::create_dir_all(run.join(d)).unwrap();
        }
        ContainerSpec {
            lowers: vec![self.lower.clone()],
            upper: run.join("upper"),
            work: run.join("work"),
            rootfs: run.join("rootfs"),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![PATH_ENV.into(), "HOME=/root".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            network: Network::Host,
            hostname: "rbuild-test".into(),
            mounts: vec![],
        }
    }

    fn run_spec(&self, spec: &ContainerSpec) -> Run {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let init = std::env::current_exe().expect("current exe");
        let status = container::run(&init, spec, &mut |stream, bytes| match stream {
            1 => stdout.extend_from_slice(bytes),
            _ => stderr.extend_from_slice(bytes),
        });
        Run {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            upper: spec.upper.clone(),
        }
    }

    fn run(&self, args: &[&str], tweak: impl FnOnce(&mut ContainerSpec)) -> Run {
        let mut spec = self.spec(args);
        tweak(&mut spec);
        self.run_spec(&spec)
    }

    fn sh(&self, script: &str) -> Run {
        self.run(&["sh", "-c", script], |_| {})
    }
}

/// Entries of a directory, sorted.
fn entries(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Pids of host processes whose command line contains `needle`.
fn host_processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

fn cap_line(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The tests.

fn exit_status(fx: &Fixture) -> TestResult {
    let r = fx.run(&["echo", "hello"], |_| {});
    check_eq!(r.ok()?, "hello\n");
    check_eq!(r.stderr, "");

    let r = fx.sh("echo out; echo err >&2");
    check_eq!(r.ok()?, "out\n");
    check_eq!(r.stderr, "err\n");

    let r = fx.sh("exit 3");
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Code(3)));
    check_eq!(r.status.as_ref().unwrap().to_string(), "exit code 3");

    // An exit code that looks like a signal is still an exit code.
    let r = fx.sh("exit 137");
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Code(137)));

    // Killed by a signal. The command is pid 1 of its namespace, which
    // ignores signals it sends itself (`kill -9 $$` is a no-op there, as
    // under docker/runc), so the kernel sends the SIGKILL: the CPU-time
    // limit is reached (soft = hard = 1 s).
    let r = fx.sh("ulimit -t 1; while :; do :; done");
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Signal(9)));
    check_eq!(r.status.as_ref().unwrap().to_string(), "signal 9 (SIGKILL)");

    // Pid 1 survives its own `kill -9 $$`; a child process does not.
    let r = fx.sh("kill -9 $$; echo survived $$");
    check_eq!(r.ok()?, "survived 1\n");
    let r = fx.sh("sh -c 'kill -9 $$'; echo child status $?");
    check_eq!(r.ok()?, "child status 137\n");
    Ok(())
}

fn overlay_changes(fx: &Fixture) -> TestResult {
    let r = fx.sh("echo new > /data/newfile && rm /data/lowerfile && cat /data/keep");
    check_eq!(r.ok()?, "kept\n");
    check_eq!(
        fs::read_to_string(r.upper.join("data/newfile")).map_err(|e| e.to_string())?,
        "new\n"
    );
    check!(
        !fx.lower.join("data/newfile").exists(),
        "the lower layer was written to"
    );
    check!(
        fx.lower.join("data/lowerfile").exists(),
        "the lower file was deleted"
    );
    let wh = fs::symlink_metadata(r.upper.join("data/lowerfile")).map_err(|e| e.to_string())?;
    check!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "no whiteout (0:0 char device) in the upper dir: {:?} rdev {}",
        wh.file_type(),
        wh.rdev()
    );
    // Mount point stubs (/proc, /dev, /sys: the lower has none) are gone.
    check_eq!(entries(&r.upper), BTreeSet::from(["data".to_string()]));

    // No lower layers (FROM scratch): the upper directory is the root.
    let mut spec = fx.spec(&["/bin/true"]);
    spec.lowers.clear();
    let r = fx.run_spec(&spec);
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Code(127)));
    check_eq!(
        r.stderr,
        "exec: \"/bin/true\": stat /bin/true: no such file or directory\n"
    );
    check_eq!(entries(&r.upper), BTreeSet::new());
    Ok(())
}

fn pid_namespace(fx: &Fixture) -> TestResult {
    check_eq!(fx.sh("echo $$").ok()?, "1\n");

    let r = fx.run(&["ls", "/proc"], |_| {});
    let pids: BTreeSet<u32> = r
        .ok()?
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    check_eq!(pids, BTreeSet::from([1]));
    let r = fx.sh("ls /proc; true");
    let pids: BTreeSet<u32> = r
        .ok()?
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    check_eq!(pids, BTreeSet::from([1, 2]));
    let r = fx.run(&["ps", "-o", "pid,args"], |_| {});
    check!(
        r.ok()?.lines().count() == 2,
        "ps shows more than itself: {}",
        r.stdout
    );

    // A background process dies with pid 1, and run returns promptly.
    let marker = format!("{}", 1_000_000 + std::process::id());
    let start = Instant::now();
    let r = fx.sh(&format!("sleep {marker} & echo started"));
    check_eq!(r.ok()?, "started\n");
    check!(
        start.elapsed() < Duration::from_secs(10),
        "run took {:?}",
        start.elapsed()
    );
    let left = host_processes_with(&format!("sleep {marker}"));
    check!(left.is_empty(), "left over: {left:?}");
    Ok(())
}

fn user_and_capabilities(fx: &Fixture) -> TestResult {
    let r = fx.run(&["id"], |s| {
        s.uid = 1000;
        s.gid = 1000;
        s.additional_gids = vec![50];
    });
    check_eq!(r.ok()?, "uid=1000(app) gid=1000(app) groups=50(staff)\n");

    let r = fx.run(&["grep", "Cap", "/proc/self/status"], |_| {});
    let status = r.ok()?;
    check_eq!(cap_line(status, "CapEff"), DOCKER_DEFAULT_CAPS);
    check_eq!(cap_line(status, "CapPrm"), DOCKER_DEFAULT_CAPS);
    check_eq!(cap_line(status, "CapBnd"), DOCKER_DEFAULT_CAPS);
    check_eq!(cap_line(status, "CapInh"), "0000000000000000");
    check_eq!(cap_line(status, "CapAmb"), "0000000000000000");

    let r = fx.run(&["grep", "Cap", "/proc/self/status"], |s| {
        s.uid = 1000;
        s.gid = 1000;
    });
    let status = r.ok()?;
    check_eq!(cap_line(status, "CapEff"), "0000000000000000");
    check_eq!(cap_line(status, "CapPrm"), "0000000000000000");
    check_eq!(cap_line(status, "CapBnd"), DOCKER_DEFAULT_CAPS);
    check_eq!(cap_line(status, "CapInh"), "0000000000000000");
    check_eq!(cap_line(status, "CapAmb"), "0000000000000000");

    // No NoNewPrivs (docker does not set it by default).
    let r = fx.run(&["grep", "NoNewPrivs", "/proc/self/status"], |_| {});
    check_eq!(r.ok()?.split_whitespace().nth(1), Some("0"));
    Ok(())
}

fn network(fx: &Fixture) -> TestResult {
    let r = fx.run(&["ls", "/sys/class/net"], |s| s.network = Network::None);
    check_eq!(r.ok()?, "lo\n");
    let r = fx.run(&["cat", "/proc/net/dev"], |s| s.network = Network::None);
    let ifaces: Vec<&str> = r
        .ok()?
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    check_eq!(ifaces, vec!["lo"]);
    let r = fx.run(&["cat", "/sys/class/net/lo/flags"], |s| {
        s.network = Network::None
    });
    let flags = u32::from_str_radix(r.ok()?.trim().trim_start_matches("0x"), 16)
        .map_err(|e| e.to_string())?;
    check!(flags & 1 == 1, "lo is not up: flags {flags:#x}");
    let r = fx.run(&["ping", "-c", "1", "-W", "5", "127.0.0.1"], |s| {
        s.network = Network::None
    });
    r.ok()?;

    let r = fx.run(&["ls", "-1", "/sys/class/net"], |_| {});
    let inside: BTreeSet<String> = r.ok()?.lines().map(str::to_string).collect();
    check_eq!(inside, entries(Path::new("/sys/class/net")));
    Ok(())
}

fn working_directory(fx: &Fixture) -> TestResult {
    let r = fx.run(&["pwd"], |s| s.cwd = "/work/dir".into());
    check_eq!(r.ok()?, "/work/dir\n");
    let meta = fs::metadata(r.upper.join("work/dir")).map_err(|e| e.to_string())?;
    check!(
        meta.is_dir() && meta.mode() & 0o7777 == 0o755 && meta.uid() == 0 && meta.gid() == 0,
        "cwd created with mode {:o} owner {}:{}",
        meta.mode(),
        meta.uid(),
        meta.gid()
    );

    // A relative symlink with too many `..` stays in the root.
    let marker = format!("rbuild-cwd-escape-{}", std::process::id());
    let r = fx.run(&["pwd"], |s| s.cwd = format!("/escape/{marker}"));
    check_eq!(r.ok()?, format!("/{marker}\n"));
    check!(r.upper.join(&marker).is_dir(), "not created in the root");
    check!(
        !Path::new("/").join(&marker).exists(),
        "created outside the root"
    );

    // Magic links are read as text inside the root, not followed.
    let r = fx.run(&["pwd"], |s| s.cwd = "/procroot/tmp".into());
    check_eq!(r.ok()?, "/tmp\n");
    let r = fx.run(&["pwd"], |s| s.cwd = "/fdlink/1".into());
    match &r.status {
        Err(ContainerError::Setup(m)) => {
            check!(m.contains("working directory /fdlink/1"), "message: {m}")
        }
        other => {
            return Err(format!(
                "expected a setup error, got {other:?} {}",
                r.stdout
            ));
        }
    }
    Ok(())
}

fn fds_and_process_state(fx: &Fixture) -> TestResult {
    // ls opens the directory it lists as fd 3.
    let r = fx.run(&["ls", "/proc/self/fd"], |_| {});
    check_eq!(r.ok()?, "0\n1\n2\n3\n");
    let r = fx.run(&["readlink", "/proc/self/fd/0"], |_| {});
    check_eq!(r.ok()?, "/dev/null\n");
    // stdin is /dev/null: cat ends at once.
    check_eq!(fx.run(&["cat"], |_| {}).ok()?, "");
    // The rest of the process state: umask, signals (none ignored, as Rust
    // does with SIGPIPE; none blocked), session leader, environment.
    let r = fx.sh("umask; grep -E '^Sig(Blk|Ign)' /proc/self/status; ps -o pid,sid | tail -n +2 | head -1; env | sort");
    check_eq!(
        r.ok()?
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>(),
        vec![
            "0022",
            "SigBlk: 0000000000000000",
            "SigIgn: 0000000000000000",
            "1 1",
            "HOME=/root",
            PATH_ENV,
            "PWD=/",
            "SHLVL=1",
        ]
    );
    Ok(())
}

fn dev_proc_sys(fx: &Fixture) -> TestResult {
    let r = fx.sh(concat!(
        "head -c 16 /dev/urandom | wc -c; ",
        "head -c 8 /dev/zero | wc -c; ",
        "echo x > /dev/null && echo null-ok; ",
        "echo shm > /dev/shm/f && cat /dev/shm/f; ",
        "(echo 1 > /proc/sys/kernel/domainname) 2>/dev/null && echo proc-sys-writable || echo proc-sys-ro; ",
        "(echo 1 > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-writable || echo sysrq-ro; ",
        "ls /sys/firmware | wc -l; ",
        "ls /proc/acpi 2>/dev/null | wc -l; ",
        "stat -c '%F %t:%T %a' /dev/null /dev/tty; ",
        "readlink /dev/fd; readlink /dev/ptmx; ",
        "test -d /dev/pts && test -e /dev/pts/ptmx && echo pts-ok; ",
        "test -d /dev/mqueue && echo mqueue-ok",
    ));
    check_eq!(
        r.ok()?,
        concat!(
            "16\n8\nnull-ok\nshm\nproc-sys-ro\nsysrq-ro\n0\n0\n",
            "character special file 1:3 666\ncharacter special file 5:0 666\n",
            "/proc/self/fd\npts/ptmx\npts-ok\nmqueue-ok\n"
        )
    );
    // Masked files read as empty (those this kernel has: /proc/kcore is
    // not everywhere).
    let masked = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ];
    let r = fx.sh(&format!(
        "for f in {}; do if [ -e $f ]; then echo $f $(wc -c < $f); fi; done",
        masked.join(" ")
    ));
    let want: String = masked
        .iter()
        .filter(|f| Path::new(f).exists())
        .map(|f| format!("{f} 0\n"))
        .collect();
    check!(!want.is_empty(), "none of {masked:?} exists on the host");
    check_eq!(r.ok()?, want);

    let r = fx.run(&["cat", "/proc/self/mountinfo"], |_| {});
    let mountinfo = r.ok()?;
    let options = |target: &str| -> Option<String> {
        mountinfo.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&target)).then(|| f[5].to_string())
        })
    };
    for (target, want) in [
        ("/sys", "ro,nosuid,nodev,noexec"),
        ("/proc/sys", "ro,nosuid,nodev,noexec"),
        ("/proc", "rw,nosuid,nodev,noexec"),
        ("/dev", "rw,nosuid"),
        ("/dev/shm", "rw,nosuid,nodev,noexec"),
        ("/dev/pts", "rw,nosuid,noexec"),
        ("/dev/mqueue", "rw,nosuid,nodev,noexec"),
        ("/sys/firmware", "ro"),
    ] {
        let got = options(target).ok_or(format!("{target} is not mounted:\n{mountinfo}"))?;
        for w in want.split(',') {
            check!(
                got.split(',').any(|g| g == w),
                "{target} mounted with {got}, wants {w}"
            );
        }
    }
    // Nothing of the host's mounts is left (the root's overlay options
    // name its host directories, as under docker).
    let host: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) != Some("/"))
        .filter(|l| l.contains(fx.path().to_str().unwrap()) || l.contains(" /tmp "))
        .collect();
    check!(host.is_empty(), "host mounts visible: {host:?}");
    Ok(())
}

fn bind_mounts(fx: &Fixture) -> TestResult {
    let resolv = fx.path().join("resolv.conf");
    fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    let data = fx.path().join("data-dir");
    fs::create_dir_all(&data).unwrap();
    let marker = format!("rbuild-mount-escape-{}", std::process::id());
    let lower_etc_mtime = fs::metadata(fx.lower.join("etc"))
        .unwrap()
        .modified()
        .unwrap();

    let r = fx.run(
        &[
            "sh",
            "-c",
            &format!(
                "cat /etc/resolv.conf; \
                 (echo x >> /etc/resolv.conf) 2>/dev/null && echo writable || echo readonly; \
                 echo hi > /mnt/data/out && echo data-ok; \
                 cat /tmp/{marker}/hosts; \
                 (echo y >> /tmp/{marker}/hosts) 2>/dev/null && echo hosts-writable"
            ),
        ],
        |s| {
            s.mounts = vec![
                BindMount {
                    source: resolv.clone(),
                    target: "/etc/resolv.conf".into(),
                    readonly: true,
                },
                BindMount {
                    source: data.clone(),
                    target: "/mnt/data".into(),
                    readonly: false,
                },
                // A target through a symlink that leads "above" the root.
                BindMount {
                    source: resolv.clone(),
                    target: format!("/escape/tmp/{marker}/hosts"),
                    readonly: false,
                },
            ]
        },
    );
    check_eq!(
        r.ok()?,
        "nameserver 192.0.2.53\nreadonly\ndata-ok\nnameserver 192.0.2.53\nhosts-writable\n"
    );
    check_eq!(
        fs::read_to_string(data.join("out")).map_err(|e| e.to_string())?,
        "hi\n"
    );
    check_eq!(
        fs::read_to_string(&resolv).unwrap(),
        "nameserver 192.0.2.53\ny\n"
    );
    check!(
        !Path::new("/tmp").join(&marker).exists(),
        "a mount point was created outside the root"
    );
    // No stubs left: no /mnt, no /tmp/<marker>, no /etc/resolv.conf; /etc
    // (copied up for the stub) keeps its time.
    check!(!r.upper.join("mnt").exists(), "stub /mnt left");
    check!(
        !r.upper.join("tmp").join(&marker).exists(),
        "stub /tmp/{marker} left"
    );
    check!(
        !r.upper.join("etc/resolv.conf").exists(),
        "stub /etc/resolv.conf left"
    );
    let meta = fs::metadata(r.upper.join("etc")).map_err(|e| format!("no copied-up /etc: {e}"))?;
    check_eq!(meta.modified().unwrap(), lower_etc_mtime);
    check_eq!(entries(&r.upper.join("etc")), BTreeSet::new());
    if let Ok(meta) = fs::metadata(r.upper.join("tmp")) {
        check_eq!(
            meta.modified().unwrap(),
            fs::metadata(fx.lower.join("tmp"))
                .unwrap()
                .modified()
                .unwrap()
        );
    }

    // An existing target is used as it is and survives.
    let r = fx.run(&["cat", "/data/keep"], |s| {
        s.mounts = vec![BindMount {
            source: resolv.clone(),
            target: "/data/keep".into(),
            readonly: true,
        }]
    });
    check_eq!(r.ok()?, "nameserver 192.0.2.53\ny\n");
    check!(
        !r.upper.join("data/keep").exists(),
        "the lower file was copied up"
    );
    Ok(())
}

fn hostname(fx: &Fixture) -> TestResult {
    let r = fx.sh("hostname; cat /proc/sys/kernel/hostname");
    check_eq!(r.ok()?, "rbuild-test\nrbuild-test\n");
    let r = fx.run(&["hostname"], |s| s.hostname = "other-name".into());
    check_eq!(r.ok()?, "other-name\n");
    Ok(())
}

fn errors(fx: &Fixture) -> TestResult {
    let missing = fx.path().join("no-such-lower");
    let r = fx.run(&["true"], |s| s.lowers.insert(0, missing.clone()));
    match &r.status {
        Err(e @ ContainerError::Setup(m)) => {
            check!(
                m.contains(missing.to_str().unwrap()) && m.contains("lower"),
                "message does not name the lower dir: {m}"
            );
            check!(
                e.to_string().starts_with("setting up the container: "),
                "{e}"
            );
        }
        other => return Err(format!("expected a setup error, got {other:?}")),
    }
    check_eq!(r.stdout, "");
    check_eq!(r.stderr, "");

    let missing = fx.path().join("no-such-source");
    let r = fx.run(&["true"], |s| {
        s.mounts = vec![BindMount {
            source: missing.clone(),
            target: "/x".into(),
            readonly: false,
        }]
    });
    match &r.status {
        Err(ContainerError::Setup(m)) => {
            check!(m.contains(missing.to_str().unwrap()), "message: {m}")
        }
        other => return Err(format!("expected a setup error, got {other:?}")),
    }
    check!(
        !r.upper.join("x").exists(),
        "stub left after a failed setup"
    );

    let r = fx.run(&["nonexistent-cmd", "arg"], |_| {});
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Code(127)));
    check_eq!(
        r.stderr,
        "exec: \"nonexistent-cmd\": executable file not found in $PATH\n"
    );
    let r = fx.run(&["/etc/passwd"], |_| {});
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Code(126)));
    check_eq!(r.stderr, "exec: \"/etc/passwd\": permission denied\n");
    let r = fx.run(&["/etc"], |_| {});
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Code(126)));
    let r = fx.run(&["ls"], |s| s.env.clear());
    check_eq!(r.status.as_ref().ok(), Some(&ExitStatus::Code(127)));

    // Invalid specs are refused before anything starts.
    let r = fx.run(&["true"], |s| s.cwd = "relative".into());
    check!(
        matches!(r.status, Err(ContainerError::InvalidSpec(_))),
        "{:?}",
        r.status
    );
    // An init that does not speak the protocol.
    let spec = fx.spec(&["true"]);
    let status = container::run(Path::new("/bin/true"), &spec, &mut |_, _| {});
    check!(
        matches!(status, Err(ContainerError::InitDied { .. })),
        "{status:?}"
    );
    let status = container::run(Path::new("/nonexistent/init"), &spec, &mut |_, _| {});
    check!(
        matches!(status, Err(ContainerError::Spawn { .. })),
        "{status:?}"
    );
    Ok(())
}

fn many_lowers(fx: &Fixture) -> TestResult {
    // Absolute paths do not fit in a page, relative ones do (mount(2) from
    // the common directory); then too many even for that (lowerdir+).
    for count in [70, 200] {
        let base = fx.path().join(format!("many-{count}"));
        let mut lowers = Vec::new();
        for i in 0..count {
            let l = base.join(format!("layer-with-a-rather-long-name-for-the-test-{i:03}"));
            fs::create_dir_all(l.join("l")).unwrap();
            fs::write(l.join("l").join(i.to_string()), "").unwrap();
            fs::write(l.join("shared"), format!("{i}\n")).unwrap();
            lowers.push(l);
        }
        let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
        check!(total > 4096, "the test's paths are too short: {total}");
        let r = fx.run(&["sh", "-c", "cat /shared; ls /l | wc -l"], |s| {
            lowers.push(fx.lower.clone());
            s.lowers = lowers;
        });
        check_eq!(r.ok()?, format!("0\n{count}\n"));
    }
    // Paths with ',' and ':' (not expressible in lowerdir=).
    let odd = fx.path().join("odd:name,with=chars");
    fs::create_dir_all(&odd).unwrap();
    fs::write(odd.join("shared"), "odd\n").unwrap();
    let r = fx.run(&["cat", "/shared"], |s| s.lowers.insert(0, odd.clone()));
    check_eq!(r.ok()?, "odd\n");
    Ok(())
}

fn concurrent_runs(fx: &Fixture) -> TestResult {
    // Several containers from several threads at once (rbuild runs
    // independent steps in parallel).
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                scope.spawn(move || {
                    let r = fx.sh(&format!("echo $$ {i}; hostname"));
                    r.ok().map(str::to_string)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in results.into_iter().enumerate() {
        check_eq!(r?, format!("1 {i}\nrbuild-test\n"));
    }
    Ok(())
}

/// The runner dies (killed, or interrupted) while the command runs: the
/// init and every process of the container die with it.
fn killed_runner(fx: &Fixture) -> TestResult {
    use std::io::BufRead;
    for (i, signal) in [libc::SIGKILL, libc::SIGINT, libc::SIGTERM]
        .into_iter()
        .enumerate()
    {
        let marker = format!("{}", 2_000_000 + std::process::id() * 4 + i as u32);
        let spec = fx.spec(&["sh", "-c", &format!("sleep {marker} & echo started; wait")]);
        let mut runner = Command::new(std::env::current_exe().unwrap())
            .arg(RUNNER_ARG)
            .arg(serde_json::to_string(&spec).unwrap())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        std::io::BufReader::new(runner.stdout.take().unwrap())
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        check_eq!(line, "started\n");
        check!(
            !host_processes_with(&format!("sleep {marker}")).is_empty(),
            "the container is not running"
        );
        // SAFETY: kill(2) on the pid of our own unreaped child.
        unsafe { libc::kill(runner.id() as i32, signal) };
        runner.wait().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The orphaned inits become our children (we are a subreaper):
            // reap them until there are none.
            let mut orphans = false;
            while let Ok(found) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
                orphans = true;
                if found.is_none() {
                    break;
                }
            }
            let left = host_processes_with(&format!("sleep {marker}"));
            if left.is_empty() && !orphans {
                break;
            }
            check!(
                Instant::now() < deadline,
                "still running after the runner died of signal {signal}: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The runner of `killed_runner`: runs the spec given as JSON, printing
/// the container's output as it comes.
fn runner_main(spec: &str) -> ! {
    use std::io::Write;
    // A shell's background job starts with SIGINT ignored: undo that, as
    // the test interrupts this process.
    // SAFETY: installing SIG_DFL has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let spec: ContainerSpec = serde_json::from_str(spec).expect("spec");
    let init = std::env::current_exe().unwrap();
    let status = container::run(&init, &spec, &mut |_, bytes| {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).unwrap();
        out.flush().unwrap();
    });
    eprintln!("runner: {status:?}");
    std::process::exit(0)
}

/// Runs last: nothing of the tests is left on the host.
fn no_leftovers(fx: &Fixture) -> TestResult {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let tmp = fx.path().to_str().unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(tmp)).collect();
    check!(left.is_empty(), "mounts left: {left:?}");
    // This process is a child subreaper (see main): a container process
    // or init that outlived its run would have become our child.
    let me = std::process::id().to_string();
    let mut children = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(stat) = fs::read_to_string(e.path().join("stat")) {
            // "pid (comm) state ppid ...": comm may hold spaces.
            let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
            if after.split_whitespace().nth(1) == Some(me.as_str()) {
                children.push(stat);
            }
        }
    }
    check!(children.is_empty(), "processes left: {children:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// The harness.

type Test = fn(&Fixture) -> TestResult;

const TESTS: &[(&str, Test)] = &[
    ("exit_status", exit_status),
    ("overlay_changes", overlay_changes),
    ("pid_namespace", pid_namespace),
    ("user_and_capabilities", user_and_capabilities),
    ("network", network),
    ("working_directory", working_directory),
    ("fds_and_process_state", fds_and_process_state),
    ("dev_proc_sys", dev_proc_sys),
    ("bind_mounts", bind_mounts),
    ("hostname", hostname),
    ("errors", errors),
    ("many_lowers", many_lowers),
    ("concurrent_runs", concurrent_runs),
    ("killed_runner", killed_runner),
    ("no_leftovers", no_leftovers),
];

/// Why the tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay"))
    {
        // The module may just not be loaded yet.
        let _ = Command::new("modprobe").arg("overlay").status();
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems
            .lines()
            .any(|l| l.trim_end().ends_with("\toverlay"))
        {
            return Some("overlayfs is not available".into());
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    let file = Command::new("/bin/busybox").arg("true").status();
    if !file.is_ok_and(|s| s.success()) {
        return Some("/bin/busybox does not run".into());
    }
    None
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(INIT_ARG) {
        container::init_main();
    }
    if std::env::args().nth(1).as_deref() == Some(RUNNER_ARG) {
        runner_main(&std::env::args().nth(2).expect("spec"));
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let filtered_out = TESTS.len() - selected.len();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");

    println!();
    println!("running {} tests", selected.len());
    if let Some(why) = unavailable() {
        if ci {
            println!("container tests cannot run: {why} (CI=true, so this fails)");
            println!(
                "\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; {filtered_out} filtered out"
            );
            std::process::exit(1);
        }
        for (name, _) in &selected {
            println!("test {name} ... ignored, {why}");
        }
        println!(
            "\ntest result: ok. 0 passed; 0 failed; {} ignored; 0 measured; {filtered_out} filtered out",
            selected.len()
        );
        return;
    }

    // Orphans (which there should be none of) become our children.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("PR_SET_CHILD_SUBREAPER");
    let fx = Fixture::new();
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, test) in &selected {
        let start = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&fx)))
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("panicked: {text}"))
            });
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.2}s)", start.elapsed().as_secs_f64());
            }
            Err(message) => {
                println!("test {name} ... FAILED");
                failed.push((name, message));
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for (name, message) in &failed {
            println!("\n---- {name} ----\n{message}");
        }
        println!("\nfailures:");
        for (name, _) in &failed {
            println!("    {name}");
        }
    }
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {} failed; 0 ignored; 0 measured; {filtered_out} filtered out",
        failed.len()
    );
    drop(fx);
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
