//! RUN steps: exit status and output, isolation from the host, network
//! modes, heredoc scripts, and that nothing is left behind.

mod common;

use common::*;

/// Builds `dockerfile` on busybox and returns the root filesystem.
fn build_rootfs(env: &Env, dockerfile: &str) -> std::path::PathBuf {
    env.load_busybox();
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
    let out = env.path("rootfs");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    out
}

#[test]
fn failing_step_reports_line_status_and_output() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN true\nRUN echo about to fail; echo on stderr >&2; exit 3\n",
        )],
    );
    let err = env.fails(&[ctx.to_str().unwrap()]);
    // Plain progress: `#N SECONDS text`, N the step's vertex.
    let logged = |text: &str| {
        err.lines()
            .any(|l| l.starts_with("#3 ") && l.ends_with(&format!(" {text}")))
    };
    assert!(logged("about to fail") && logged("on stderr"), "{err}");
    assert!(
        err.contains("error: Dockerfile:3: RUN /bin/sh -c echo about to fail; echo on stderr >&2; exit 3 failed: exit code 3"),
        "{err}"
    );
    // Quiet builds show the output only when they fail.
    let err = env.fails(&["-q", ctx.to_str().unwrap()]);
    assert!(err.contains("about to fail"), "{err}");
    // The step's shell is pid 1 of its namespace (as in BuildKit), which
    // its own signals cannot kill; a child killed by SIGKILL gives 137.
    let killed = env.context(
        "k",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN sleep 10 & kill -9 $!; wait $!\n",
        )],
    );
    let err = env.fails(&[killed.to_str().unwrap()]);
    assert!(err.contains("failed: exit code 137"), "{err}");
    no_mounts_left(&env);
}

#[test]
fn isolated_from_the_host() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    let out = build_rootfs(
        &env,
        "FROM busybox\nRUN hostname > /hostname; ls /proc | grep -c '^[0-9]' > /pids; echo $$ > /mypid; \
         cat /etc/hosts > /hosts; ls /etc > /etc-list; grep CapEff /proc/self/status > /caps\n\
         RUN --network=none cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > /netdevs\n",
    );
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("hostname"), "buildkitsandbox\n");
    assert_eq!(
        read("mypid"),
        "1\n",
        "the step is pid 1 of its own namespace"
    );
    let pids: u32 = read("pids").trim().parse().unwrap();
    assert!(pids <= 4, "host processes visible: {pids}");
    assert!(read("hosts").contains("127.0.0.1\tlocalhost buildkitsandbox"));
    assert_eq!(
        read("caps"),
        "CapEff:\t00000000a80425fb\n",
        "docker's default capabilities"
    );
    assert_eq!(read("netdevs"), "lo\n", "--network=none has only loopback");
    // Generated files never land in the image.
    assert!(!out.join("etc/hosts").exists() && !out.join("etc/resolv.conf").exists());
    no_mounts_left(&env);
}

#[test]
fn heredoc_scripts_run() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    let out = build_rootfs(
        &env,
        "FROM busybox\nARG NAME=rbuild\nRUN <<EOF\nset -e\necho \"hello $NAME\" > /one\nEOF\n\
         RUN <<EOT\n#!/bin/sh\necho \"script $0\" > /two\nEOT\n\
         RUN cat <<A > /three\nfrom stdin\nA\n",
    );
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("one"), "hello rbuild\n");
    assert_eq!(read("two"), "script /dev/pipes/EOT\n");
    assert_eq!(read("three"), "from stdin\n");
    assert!(
        !out.join("dev/pipes").exists(),
        "the script mount leaves nothing behind"
    );
}

#[test]
fn bad_users_and_unsupported_options_fail_cleanly() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let big = env.context(
        "u",
        &[("Dockerfile", "FROM busybox\nUSER 4294967296\nRUN true\n")],
    );
    let err = env.fails(&[big.to_str().unwrap()]);
    assert!(
        err.contains("Dockerfile:3:") && err.contains("4294967295"),
        "{err}"
    );
    let nouser = env.context(
        "n",
        &[("Dockerfile", "FROM busybox\nUSER nosuchuser\nRUN true\n")],
    );
    let err = env.fails(&[nouser.to_str().unwrap()]);
    assert!(err.contains("unable to find user nosuchuser"), "{err}");
    let missing = env.context(
        "m",
        &[("Dockerfile", "FROM busybox\nRUN /no/such/program\n")],
    );
    let err = env.fails(&[missing.to_str().unwrap()]);
    assert!(err.contains("exit code 127"), "{err}");
    no_mounts_left(&env);
}

#[test]
fn network_flag_sets_the_default_for_run() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "net",
        &[("Dockerfile", "FROM busybox\nRUN cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort > /default\nRUN --network=host cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort > /host\n")],
    );
    let out = env.path("out");
    env.ok(&[
        "--network=none",
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("default")).unwrap(),
        "lo\n"
    );
    let host = std::fs::read_to_string(out.join("host")).unwrap();
    let ours = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(
        host.lines().count(),
        ours.lines().count() - 2,
        "RUN --network=host sees the host's interfaces"
    );
    let err = env.fails(&["--network=bridge", ctx.to_str().unwrap()]);
    assert!(err.contains("bridge"), "{err}");
}

/// Ctrl-C in the middle of a RUN: rbuild exits, and no process, mount or
/// scratch file of the build is left.
#[test]
fn interrupt_leaves_nothing_behind() {
    if !require_run() {
        return;
    }
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    env.load_busybox();
    let marker = format!("{}", 3000 + std::process::id() % 1000);
    let ctx = env.context(
        "int",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nRUN echo started && sleep {marker}\n"),
        )],
    );
    let mut child = env
        .rbuild()
        .arg(ctx.to_str().unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .expect("rbuild ended before the step started")
            .unwrap();
        if line.starts_with("#2 ") && line.ends_with(" started") {
            break;
        }
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exits as SIGINT would");
    // The step's sleep is gone too (it may take a moment to be reaped).
    let sleeping = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&format!("sleep\0{marker}")))
                .unwrap_or(false)
        })
    };
    for _ in 0..50 {
        if !sleeping() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!sleeping(), "the RUN's process survived");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&env.dir.path().to_string_lossy().into_owned()));
    for tmp in ["tmp", "snapshots/tmp"] {
        let left: Vec<_> = std::fs::read_dir(env.root().join(tmp))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in {tmp}: {left:?}");
    }
}

#[test]
fn the_root_overlay_is_volatile() {
    // Without `volatile`, the container's exit syncs the whole filesystem
    // holding the upper directory; the upper directory is scratch.
    if !require_run() {
        return;
    }
    let env = Env::new();
    let out = build_rootfs(
        &env,
        "FROM busybox\nRUN grep '^overlay / overlay ' /proc/mounts > /root-mount\n",
    );
    let mount = std::fs::read_to_string(out.join("root-mount")).unwrap();
    let options: Vec<&str> = mount
        .split_whitespace()
        .nth(3)
        .unwrap_or("")
        .split(',')
        .collect();
    // Linux shows the flag as `volatile` (5.10) or `fsync=volatile` (6.x).
    assert!(
        options
            .iter()
            .any(|o| *o == "volatile" || *o == "fsync=volatile"),
        "{mount}"
    );
    no_mounts_left(&env);
}
