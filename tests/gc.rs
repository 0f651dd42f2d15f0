//! Disk usage and garbage collection of the build cache, end to end:
//! `rbuild du` against the files on disk, `rbuild prune` (LRU with
//! `--keep-storage`, `--all`, after `rmi`), the `[gc]` policy of the
//! configuration file, builds after pruning, and a prune killed midway.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Two RUN steps writing 3 MB and 2 MB (and 1 MB into a cache mount) and
/// a COPY; every file time is fixed, so a rerun gives the same image.
fn dockerfile(variant: &str) -> String {
    format!(
        "FROM busybox\n\
         RUN mkdir /data && head -c 3000000 /dev/zero | tr '\\0' {variant} > /data/a && touch -d @0 /data/a /data\n\
         RUN --mount=type=cache,target=/cache head -c 1000000 /dev/zero > /cache/c-{variant} && \
         head -c 2000000 /dev/zero > /data/b && touch -d @0 /data/b /data\n\
         COPY f /f\n"
    )
}

fn context(env: &Env, variant: &str) -> PathBuf {
    env.context(
        &format!("ctx-{variant}"),
        &[
            ("Dockerfile", &dockerfile(variant)),
            ("f", &format!("file {variant}\n")),
        ],
    )
}

/// Builds a context reproducibly; returns the image ID.
fn build(env: &Env, ctx: &Path, tag: Option<&str>) -> String {
    let mut args = vec!["build", "-q"];
    if let Some(tag) = tag {
        args.extend(["-t", tag]);
    }
    args.push(ctx.to_str().unwrap());
    let out = env
        .rbuild()
        .env("SOURCE_DATE_EPOCH", "0")
        .args(&args)
        .output()
        .unwrap();
    assert_success(&out, &format!("rbuild {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn usage(env: &Env) -> Value {
    json(&env.ok(&["du", "--format", "json"]))
}

fn num(v: &Value, path: &str) -> u64 {
    let mut v = v;
    for part in path.split('.') {
        v = &v[part];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// `du -s -B1` of a directory: the space allocated to it.
fn du_bytes(path: &Path) -> u64 {
    let out = run(
        Command::new("du").arg("-s").arg("-B1").arg(path),
        "du -s -B1",
    );
    out.split_whitespace().next().unwrap().parse().unwrap()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn blobs(env: &Env) -> BTreeSet<String> {
    subdirs(&env.root().join("blobs/sha256"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn blob_bytes(env: &Env) -> u64 {
    subdirs(&env.root().join("blobs/sha256"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// A human size as `du` prints it (`11.1MB`), in bytes.
fn parse_human(s: &str) -> f64 {
    let end = s.find(|c: char| c.is_ascii_alphabetic()).unwrap();
    let (n, unit) = s.split_at(end);
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => panic!("unit {unit}"),
    };
    n.parse::<f64>().unwrap() * scale
}

/// The size on a `Label:` line of `du`'s text output.
fn line_size(text: &str, label: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in:\n{text}"));
    parse_human(line[label.len()..].split_whitespace().next().unwrap())
}

fn close(human: f64, exact: u64) -> bool {
    (human - exact as f64).abs() <= exact as f64 * 0.006 + 1.0
}

/// Checks `du`'s numbers against the files on disk.
fn assert_usage_matches_disk(env: &Env) -> Value {
    let u = usage(env);
    let root = env.root();
    // Every blob counted once: record-only, orphan or image blobs.
    assert_eq!(
        blob_bytes(env),
        num(&u, "totals.cache_records.size")
            + num(&u, "totals.orphan_blobs.size")
            + num(&u, "totals.images.size"),
        "{u:#}"
    );
    let snapshots: u64 = subdirs(&root.join("snapshots/layers"))
        .iter()
        .map(|d| du_bytes(d))
        .sum();
    assert_eq!(num(&u, "totals.snapshots.size"), snapshots, "{u:#}");
    let mounts: u64 = subdirs(&root.join("cache-mounts"))
        .iter()
        .map(|d| du_bytes(d))
        .sum();
    assert_eq!(num(&u, "totals.cache_mounts.size"), mounts, "{u:#}");
    let reclaimable = num(&u, "totals.cache_records.size")
        + num(&u, "totals.orphan_blobs.size")
        + snapshots
        + mounts;
    assert_eq!(num(&u, "totals.reclaimable"), reclaimable);
    assert_eq!(
        num(&u, "totals.total"),
        reclaimable + num(&u, "totals.shared.size")
    );
    // The table says the same, in docker's units.
    let text = env.ok(&["du", "--verbose"]);
    assert!(text.starts_with("ID "), "{text}");
    assert!(
        close(line_size(&text, "Reclaimable:"), reclaimable),
        "{text}"
    );
    assert!(
        close(line_size(&text, "Total:"), num(&u, "totals.total")),
        "{text}"
    );
    for (label, key) in [
        ("Cache records:", "cache_records"),
        ("Orphan blobs:", "orphan_blobs"),
        ("Snapshots:", "snapshots"),
        ("Cache mounts:", "cache_mounts"),
    ] {
        assert!(
            close(
                line_size(&text, label),
                num(&u, &format!("totals.{key}.size"))
            ),
            "{label} in {text}"
        );
    }
    let records = u["records"].as_array().unwrap();
    for r in records {
        let short = &r["key"].as_str().unwrap()["sha256:".len()..][..12];
        assert!(text.contains(short), "record {short} not listed:\n{text}");
    }
    u
}

#[test]
fn du_matches_the_files_on_disk() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    // An empty root.
    let text = env.ok(&["du"]);
    assert!(text.contains("Total:          0B"), "{text}");
    env.load_busybox();
    build(&env, &context(&env, "a"), Some("gc-a:1"));
    // Untagged: its layers are only the cache's, its manifest an orphan.
    build(&env, &context(&env, "b"), None);
    let u = assert_usage_matches_disk(&env);
    assert_eq!(num(&u, "totals.cache_records.count"), 6, "{u:#}");
    // b's first RUN layer and its COPY (its second RUN's layer is a's).
    assert!(num(&u, "totals.cache_records.size") > 3_000_000, "{u:#}");
    assert!(num(&u, "totals.shared.size") > 5_000_000, "{u:#}");
    assert!(num(&u, "totals.orphan_blobs.count") >= 2, "{u:#}");
    assert!(num(&u, "totals.snapshots.size") > 3_000_000, "{u:#}");
    assert!(num(&u, "totals.cache_mounts.size") >= 2_000_000, "{u:#}");
    let records = u["records"].as_array().unwrap();
    let shared = records.iter().filter(|r| r["shared"] == true).count();
    // The tagged image's three layers, and b's second RUN, whose layer is
    // the same as a's.
    assert_eq!(shared, 4, "{u:#}");
}

#[test]
fn keep_storage_caps_usage_and_builds_still_work() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let (a, b) = (context(&env, "a"), context(&env, "b"));
    let id_a = build(&env, &a, Some("gc-a:1"));
    let id_b = build(&env, &b, None);
    let before = assert_usage_matches_disk(&env);
    let cap = num(&before, "totals.reclaimable") / 2;
    let out = env.ok(&["prune", "--keep-storage", &cap.to_string()]);
    assert!(out.contains("Total:\t"), "{out}");
    let after = assert_usage_matches_disk(&env);
    assert!(num(&after, "totals.reclaimable") <= cap, "{cap}: {after:#}");
    // Something of each build may be gone: rebuilding gives the same
    // images (rerunning RUN steps or not).
    assert_eq!(build(&env, &a, Some("gc-a:1")), id_a);
    assert_eq!(build(&env, &b, None), id_b);
    // A cap given with docker's units.
    env.ok(&["prune", "--keep-storage", "1MB"]);
    let u = usage(&env);
    assert!(num(&u, "totals.reclaimable") <= 1 << 20, "{u:#}");
    assert_eq!(build(&env, &b, None), id_b);
    assert_eq!(build(&env, &a, Some("gc-a:1")), id_a);
    no_mounts_left(&env);
}

#[test]
fn prune_all_keeps_images_and_rmi_then_prune_frees_them() {
    if !(require_run() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let busybox = blobs(&env);
    let tag = unique_tag("gc");
    let _cleanup = DockerImages(vec![tag.clone()]);
    let ctx = context(&env, "a");
    let id = build(&env, &ctx, Some(&tag));

    let out = env.ok(&["prune", "--all", "-f"]);
    assert!(
        out.contains("(cache record)") && out.contains("(cache mount)"),
        "{out}"
    );
    let u = assert_usage_matches_disk(&env);
    assert_eq!(num(&u, "totals.cache_records.count"), 0, "{u:#}");
    assert_eq!(num(&u, "totals.reclaimable"), 0, "{u:#}");
    assert!(
        !env.root()
            .join("cache-mounts")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );

    // The image is whole: docker loads and runs it.
    let mut save = env
        .rbuild()
        .args(["save", &tag])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let load = docker()
        .arg("load")
        .stdin(save.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(save.wait().unwrap().success());
    assert_success(&load, "docker load");
    let ran = run(
        docker().args([
            "run",
            "--rm",
            "--network",
            "none",
            &tag,
            "sh",
            "-c",
            "wc -c < /data/a; cat /f",
        ]),
        "docker run",
    );
    assert_eq!(
        ran.split_whitespace().collect::<Vec<_>>(),
        ["3000000", "file", "a"]
    );

    // Cached again from scratch, the same image.
    assert_eq!(build(&env, &ctx, Some(&tag)), id);
    // Without its name, prune takes its blobs: only busybox's are left.
    env.ok(&["rmi", &tag]);
    let out = env.ok(&["prune", "--all"]);
    assert!(out.contains("blobs"), "{out}");
    assert_eq!(blobs(&env), busybox);
    let u = assert_usage_matches_disk(&env);
    assert_eq!(num(&u, "totals.total"), 0, "{u:#}");
}

/// The `[gc]` policy, applied by the build command after each build
/// (`grep -n apply_policy src/build.rs`): usage stays under the cap.
#[test]
fn the_configured_cap_holds_after_builds() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let (a, b) = (context(&env, "a"), context(&env, "b"));
    let id_a = build(&env, &a, Some("gc-a:1"));
    let id_b = build(&env, &b, None);
    let before = usage(&env);
    let cap = num(&before, "totals.reclaimable") / 2;
    let config = env.path("rbuild.toml");
    std::fs::write(&config, format!("[gc]\nmax-used-space = \"{cap}\"\n")).unwrap();
    for (ctx, tag, id) in [(&a, Some("gc-a:1"), &id_a), (&b, None, &id_b)] {
        let mut args = vec!["build", "-q"];
        if let Some(tag) = tag {
            args.extend(["-t", tag]);
        }
        args.push(ctx.to_str().unwrap());
        let out = env
            .rbuild()
            .env("RBUILD_CONFIG", &config)
            .env("SOURCE_DATE_EPOCH", "0")
            .args(&args)
            .output()
            .unwrap();
        assert_success(&out, "build with a gc policy");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id.as_str());
        let u = assert_usage_matches_disk(&env);
        assert!(num(&u, "totals.reclaimable") <= cap, "{cap}: {u:#}");
    }
}

#[test]
fn bad_gc_settings_name_the_file_and_key() {
    let env = Env::new();
    let config = env.path("rbuild.toml");
    for (text, key, value) in [
        (
            "[gc]\nmax-used-space = \"10XB\"\n",
            "gc.max-used-space",
            "10XB",
        ),
        (
            "[gc]\nkeep-duration = \"2 weeks\"\n",
            "gc.keep-duration",
            "2 weeks",
        ),
        ("[gc]\nmax-space = \"1GB\"\n", "gc.max-space", "unknown key"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = env
            .rbuild()
            .env("RBUILD_CONFIG", &config)
            .arg("du")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(
            err.contains(config.to_str().unwrap()) && err.contains(key) && err.contains(value),
            "{text}: {err}"
        );
    }
    std::fs::write(
        &config,
        "[gc]\nmax-used-space = \"10GB\"\nkeep-duration = \"7d\"\n",
    )
    .unwrap();
    let out = env
        .rbuild()
        .env("RBUILD_CONFIG", &config)
        .arg("du")
        .output()
        .unwrap();
    assert_success(&out, "du with a valid [gc] table");
    // Flags are checked the same way.
    let err = env.fails(&["prune", "--keep-storage", "lots"]);
    assert!(err.contains("invalid size \"lots\""), "{err}");
    let err = env.fails(&["prune", "--filter", "until=soon"]);
    assert!(err.contains("invalid duration \"soon\""), "{err}");
    let err = env.fails(&["prune", "--filter", "type=regular"]);
    assert!(err.contains("unsupported --filter"), "{err}");
    env.ok(&[
        "prune",
        "-a",
        "--filter",
        "until=24h",
        "--keep-storage",
        "1.5GiB",
    ]);
}

#[test]
fn prune_waits_for_running_builds() {
    let env = Env::new();
    let root = rbuild_solver::Root::open(&env.root()).unwrap();
    let guard = rbuild_solver::gc::build_guard(&root).unwrap();
    let mut prune = env
        .rbuild()
        .args(["prune", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune must wait while a build holds the lock"
    );
    drop(guard);
    let out = prune.wait_with_output().unwrap();
    assert_success(&out, "rbuild prune");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiting for running builds"), "{err}");
}

#[test]
fn a_killed_prune_leaves_a_root_that_builds() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    // Many small files make removing snapshots and cache mounts take a
    // while, so kills land at different moments.
    let ctx = env.context(
        "many",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=cache,target=/cache mkdir -p /data && \
             for i in $(seq 1 1500); do echo $i > /data/$i; echo $i > /cache/$i; done && \
             touch -d @0 /data/* /data\n\
             RUN head -c 4000000 /dev/zero > /big && touch -d @0 /big\n",
        )],
    );
    let id = build(&env, &ctx, Some("many:1"));
    // A second image's worth of cache that is not tagged.
    let ctx_b = context(&env, "b");
    let id_b = build(&env, &ctx_b, None);
    for delay_ms in [0u64, 3, 8, 15, 30, 60, 120] {
        let mut prune = env.rbuild().args(["prune", "--all"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = prune.kill();
        let _ = prune.wait();
        // What is left adds up (the untagged build's blobs may be
        // orphans now, if the kill came between records and blobs), and
        // builds work, giving the same images.
        assert_usage_matches_disk(&env);
        assert_eq!(
            build(&env, &ctx, Some("many:1")),
            id,
            "after a kill at {delay_ms}ms"
        );
        assert_eq!(build(&env, &ctx_b, None), id_b);
    }
    // A prune to the end leaves nothing of the cache behind.
    env.ok(&["prune", "--all"]);
    let u = assert_usage_matches_disk(&env);
    assert_eq!(num(&u, "totals.reclaimable"), 0, "{u:#}");
    assert!(subdirs(&env.root().join("snapshots/tmp")).is_empty());
    no_mounts_left(&env);
}
