//! The build cache: what a rebuild reuses and what it runs again, proved
//! by side effects (RUN steps append to a file in a cache mount, which
//! lives outside the image on the host), not by log text; parallel stages;
//! concurrent builds on one root; builds killed mid-step; cache export and
//! import between roots.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Every file named `name` under the root's cache mounts, concatenated.
fn mount_file(env: &Env, name: &str) -> String {
    fn walk(dir: &Path, name: &str, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, name, out);
            } else if entry.file_name() == name {
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    walk(&env.root().join("cache-mounts"), name, &mut out);
    out
}

/// How many times each RUN step tagged `tag` ran, from the runs log.
fn runs(env: &Env, tag: &str) -> usize {
    mount_file(env, "runs")
        .lines()
        .filter(|l| *l == tag)
        .count()
}

/// A RUN step that records that it ran, then changes the image.
fn counted(tag: &str) -> String {
    format!(
        "RUN --mount=type=cache,target=/count,id=counter echo {tag} >> /count/runs && cat /proc/sys/kernel/random/uuid > /{tag}\n"
    )
}

/// Builds `ctx` with `args`, asserting success; returns the progress log.
fn build_log(env: &Env, ctx: &str, args: &[&str]) -> String {
    let out = env.rbuild().args(args).arg(ctx).output().unwrap();
    assert_success(&out, &format!("rbuild {}", args.join(" ")));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn build_id(env: &Env, ctx: &Path, extra: &[&str]) -> String {
    let iid = env.path("iid");
    let mut args = vec!["--iidfile", iid.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    env.ok(&args);
    std::fs::read_to_string(iid).unwrap()
}

#[test]
fn unchanged_rebuild_runs_nothing_and_gives_the_same_image() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let dockerfile = format!(
        "FROM busybox\nENV A=1\nCOPY a.txt /a.txt\n{}WORKDIR /w\n{}LABEL x=y\n",
        counted("one"),
        counted("two")
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile), ("a.txt", "a\n")]);
    let first = build_id(&env, &ctx, &[]);
    assert_eq!((runs(&env, "one"), runs(&env, "two")), (1, 1));
    // Created times come from the cache too, so the ID is the same, as
    // BuildKit gives.
    std::thread::sleep(Duration::from_millis(1100));
    let second = build_id(&env, &ctx, &[]);
    assert_eq!(first, second, "an unchanged rebuild gives the same image");
    assert_eq!((runs(&env, "one"), runs(&env, "two")), (1, 1));
    // --network=none makes RUN steps that do not choose a network other
    // steps (they run without one), as with BuildKit; the COPY stays.
    build_id(&env, &ctx, &["--network", "none"]);
    assert_eq!((runs(&env, "one"), runs(&env, "two")), (2, 2));
    build_id(&env, &ctx, &["--network", "none"]);
    assert_eq!((runs(&env, "one"), runs(&env, "two")), (2, 2));
    let second = build_id(&env, &ctx, &[]);
    assert_eq!(
        first, second,
        "the default network's results are still cached"
    );
    // --no-cache runs everything again, and the image changes.
    let third = build_id(&env, &ctx, &["--no-cache"]);
    assert_eq!((runs(&env, "one"), runs(&env, "two")), (3, 3));
    assert_ne!(second, third);
}

#[test]
fn a_changed_file_invalidates_exactly_the_steps_that_read_it() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let dockerfile = format!(
        "FROM busybox\nCOPY a.txt /a.txt\n{}COPY src/ /src/\n{}COPY --from=busybox /bin/true /t\n{}",
        counted("after_a"),
        counted("after_src"),
        counted("after_from")
    );
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", &dockerfile),
            ("a.txt", "a\n"),
            ("src/x.txt", "x\n"),
            ("src/ignored.log", "log\n"),
            ("unused.txt", "u\n"),
            (".dockerignore", "src/*.log\n"),
        ],
    );
    let count = |env: &Env| {
        (
            runs(env, "after_a"),
            runs(env, "after_src"),
            runs(env, "after_from"),
        )
    };
    build_id(&env, &ctx, &[]);
    assert_eq!(count(&env), (1, 1, 1));
    // A file no step reads, an ignored file, and a touch: nothing runs.
    std::fs::write(ctx.join("unused.txt"), "changed\n").unwrap();
    std::fs::write(ctx.join("src/ignored.log"), "changed\n").unwrap();
    let now = std::fs::File::open(ctx.join("a.txt")).unwrap();
    now.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    build_id(&env, &ctx, &[]);
    assert_eq!(
        count(&env),
        (1, 1, 1),
        "unread or mtime-only changes ran steps"
    );
    // A file the second COPY reads: from there on.
    std::fs::write(ctx.join("src/x.txt"), "x2\n").unwrap();
    build_id(&env, &ctx, &[]);
    assert_eq!(count(&env), (1, 2, 2));
    // A new file in a copied directory counts as a change.
    std::fs::write(ctx.join("src/new.txt"), "new\n").unwrap();
    build_id(&env, &ctx, &[]);
    assert_eq!(count(&env), (1, 3, 3));
    // The first file: everything after it.
    std::fs::write(ctx.join("a.txt"), "a2\n").unwrap();
    build_id(&env, &ctx, &[]);
    assert_eq!(count(&env), (2, 4, 4));
    // A mode change is a change.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ctx.join("a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    build_id(&env, &ctx, &[]);
    assert_eq!(count(&env), (3, 5, 5));
}

#[test]
fn build_args_count_only_where_used_and_misses_are_explained() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let dockerfile = format!(
        "FROM busybox\n{}ARG V=1\n{}COPY f /f\n",
        counted("before_arg"),
        "RUN --mount=type=cache,target=/count,id=counter echo uses_v >> /count/runs && echo $V > /v\n"
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile), ("f", "f\n")]);
    let ctx_s = ctx.to_str().unwrap();
    env.ok(&[ctx_s]);
    env.ok(&["--build-arg", "V=1", ctx_s]);
    assert_eq!((runs(&env, "before_arg"), runs(&env, "uses_v")), (1, 1));
    let log = build_log(
        &env,
        ctx_s,
        &["--progress=plain", "--explain-cache", "--build-arg", "V=2"],
    );
    assert_eq!((runs(&env, "before_arg"), runs(&env, "uses_v")), (1, 2));
    assert!(log.contains("CACHE MISS: variable V changed"), "{log}");
    assert!(
        log.contains("CACHE MISS: the previous step changed"),
        "{log}"
    );
    assert!(log.contains("#2 CACHED"), "{log}");
    std::fs::write(ctx.join("f"), "f2\n").unwrap();
    let log = build_log(
        &env,
        ctx_s,
        &["--progress=plain", "--explain-cache", "--build-arg", "V=2"],
    );
    assert!(log.contains("CACHE MISS: file f changed"), "{log}");
    // rawjson carries the reason on the vertex.
    std::fs::write(ctx.join("f"), "f3\n").unwrap();
    let log = build_log(&env, ctx_s, &["--progress=rawjson", "--build-arg", "V=2"]);
    let misses: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|v| v["vertexes"].as_array().cloned().unwrap_or_default())
        .filter(|v| v["cacheMiss"].is_string())
        .collect();
    assert!(
        misses.iter().any(|v| v["cacheMiss"] == "file f changed"),
        "{log}"
    );
}

#[test]
fn independent_stages_run_at_the_same_time() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    // Each stage waits (up to 10 s) for the other to have started: only
    // overlapping stages finish.
    let stage = |me: &str, other: &str| {
        format!(
            "FROM busybox AS {me}\nARG N\nRUN --mount=type=cache,target=/sync,id=sync \
             touch /sync/$N-{me} && i=0; while [ ! -f /sync/$N-{other} ]; do \
             i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done; echo {me} > /{me}\n"
        )
    };
    let dockerfile = format!(
        "{}{}FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
        stage("a", "b"),
        stage("b", "a")
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    let ctx_s = ctx.to_str().unwrap();
    let started = Instant::now();
    env.ok(&["--build-arg", "N=1", "--jobs", "2", ctx_s]);
    assert!(started.elapsed() < Duration::from_secs(9));
    // The control: one step at a time cannot finish.
    let err = env.fails(&["--build-arg", "N=2", "--jobs", "1", ctx_s]);
    assert!(err.contains("exit code 1"), "{err}");
}

#[test]
fn concurrent_builds_on_one_root_share_the_work() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    // ARG N after the shared step: before it, N would be in its
    // environment and make it two steps.
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=cache,target=/count,id=counter echo shared >> /count/runs && sleep 1 && echo s > /s\n\
        ARG N=0\n\
        RUN --mount=type=cache,target=/count,id=counter echo own-$N >> /count/runs && echo $N > /n\n";
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
    let spawn = |n: usize| {
        let iid = env.path(&format!("iid-{n}"));
        let child = env
            .rbuild()
            .args(["-q", "--iidfile", iid.to_str().unwrap(), "-t"])
            .arg(format!("c:{n}"))
            .args(["--build-arg", &format!("N={}", n % 2)])
            .arg(&ctx)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, iid)
    };
    let children: Vec<_> = (0..4).map(spawn).collect();
    let mut ids = Vec::new();
    for (child, iid) in children {
        let out = child.wait_with_output().unwrap();
        assert_success(&out, "concurrent build");
        ids.push(std::fs::read_to_string(iid).unwrap());
    }
    // The step they all share ran once; each variant's own step once.
    let log = mount_file(&env, "runs");
    assert_eq!(runs(&env, "shared"), 1, "{log}");
    assert_eq!((runs(&env, "own-0"), runs(&env, "own-1")), (1, 1), "{log}");
    assert_eq!(ids[0], ids[2]);
    assert_eq!(ids[1], ids[3]);
    assert_ne!(ids[0], ids[1]);
    // Each image is complete: its files are there with the right content.
    for n in 0..2 {
        let out = env.path(&format!("fs-{n}"));
        env.ok(&[
            "--build-arg",
            &format!("N={n}"),
            "-o",
            out.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read_to_string(out.join("n")).unwrap(),
            format!("{n}\n")
        );
        assert_eq!(std::fs::read_to_string(out.join("s")).unwrap(), "s\n");
    }
    assert_eq!(runs(&env, "shared"), 1);
}

/// The rbuild processes and their containers still alive whose command
/// line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(text);
        }
    }
    found
}

#[test]
fn a_build_killed_mid_step_leaves_a_root_the_next_build_uses() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let marker = format!("{}", std::process::id());
    let slow = |seconds: &str| {
        format!(
            "FROM busybox\nCOPY f /f\n{}ARG S\nRUN sleep {seconds}; echo {marker} > /m\n",
            counted("before")
        )
    };
    let ctx = env.context("ctx", &[("Dockerfile", &slow("30")), ("f", "f\n")]);
    let mut child = env
        .rbuild()
        .args(["--progress=plain"])
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once the slow step is running.
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_with("sleep 30").is_empty() {
        assert!(Instant::now() < deadline, "the slow step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        processes_with("sleep 30").is_empty(),
        "the step outlived rbuild"
    );
    // The next build reuses what finished, runs the rest, and works.
    std::fs::write(ctx.join("Dockerfile"), slow("0")).unwrap();
    let out = env.path("fs");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(runs(&env, "before"), 1);
    assert_eq!(
        std::fs::read_to_string(out.join("m")).unwrap(),
        format!("{marker}\n")
    );
    // Kills at arbitrary moments of a build: the root stays usable and the
    // result is right afterwards.
    for delay in [30u64, 120, 250, 400, 700] {
        std::fs::write(ctx.join("f"), format!("{delay}\n")).unwrap();
        let mut child = env
            .rbuild()
            .arg(&ctx)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        child.wait().unwrap();
        let out = env.path(&format!("fs-{delay}"));
        env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
        assert_eq!(
            std::fs::read_to_string(out.join("f")).unwrap(),
            format!("{delay}\n")
        );
    }
    env.ok(&["du"]);
    no_mounts_left(&env);
}

#[test]
fn cache_from_a_local_export_on_a_fresh_root_runs_no_step() {
    if !require_run() {
        return;
    }
    let farm = Env::new();
    farm.load_busybox();
    // The builder stage makes a big file only it keeps: a fresh root that
    // imports the cache must not fetch it.
    let dockerfile = "FROM busybox AS builder\n\
        RUN head -c 8000000 /dev/urandom > /big && date +%s%N > /built\n\
        RUN cp /built /result\n\
        FROM busybox\nCOPY --from=builder /result /result\nRUN date +%s%N > /final\n";
    let ctx = farm.context("ctx", &[("Dockerfile", dockerfile)]);
    let cache = farm.path("cache");
    let to = format!("type=local,dest={},mode=max", cache.display());
    let first = build_id(&farm, &ctx, &["--cache-to", &to]);
    assert!(cache.join("index.json").is_file());

    let fresh = Env::new();
    fresh.load_busybox();
    let from = format!("type=local,src={}", cache.display());
    let iid = fresh.path("iid");
    let out = fresh
        .rbuild()
        .args(["--progress=plain", "--cache-from", &from, "--iidfile"])
        .arg(&iid)
        .arg(&ctx)
        .output()
        .unwrap();
    assert_success(&out, "build with --cache-from");
    let log = String::from_utf8_lossy(&out.stderr);
    // Same layers with the same times: nothing ran anywhere.
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), first, "{log}");
    assert_eq!(
        log.lines().filter(|l| l.ends_with(" CACHED")).count(),
        4,
        "{log}"
    );
    // Only the final image's layers came over: no blob as big as /big.
    let big = std::fs::read_dir(fresh.root().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .any(|e| e.metadata().unwrap().len() > 7_000_000);
    assert!(!big, "the builder's big layer was fetched");
    // The image is usable: its files export.
    let fs = fresh.path("fs");
    fresh.ok(&[
        "--cache-from",
        &from,
        "-o",
        fs.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert!(fs.join("result").is_file() && fs.join("final").is_file());

    // mode=min has only the final stage: the builder runs again, and
    // since its output differs, so does everything after it.
    let min_cache = farm.path("cache-min");
    let to_min = format!("type=local,dest={}", min_cache.display());
    farm.ok(&["--cache-to", &to_min, ctx.to_str().unwrap()]);
    let other = Env::new();
    other.load_busybox();
    let from_min = format!("type=local,src={}", min_cache.display());
    let again = build_id(&other, &ctx, &["--cache-from", &from_min]);
    assert_ne!(again, first);
    // A missing cache directory is an empty cache; a bad spec is an error.
    let missing = format!("type=local,src={}", other.path("none").display());
    build_id(&other, &ctx, &["--cache-from", &missing]);
    let err = other.fails(&["--cache-to", "type=local", ctx.to_str().unwrap()]);
    assert!(err.contains("dest=DIR is required"), "{err}");
}

#[test]
fn no_cache_filter_reruns_only_that_stage() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let dockerfile = format!(
        "FROM busybox AS base\n{}FROM base AS app\n{}",
        counted("base_step"),
        counted("app_step")
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    build_id(&env, &ctx, &[]);
    build_id(&env, &ctx, &["--no-cache-filter", "app"]);
    assert_eq!((runs(&env, "base_step"), runs(&env, "app_step")), (1, 2));
    build_id(&env, &ctx, &["--no-cache-filter", "base"]);
    // The base changed, so the app step's input did too.
    assert_eq!((runs(&env, "base_step"), runs(&env, "app_step")), (2, 3));
}
