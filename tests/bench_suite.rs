//! scripts/bench without running a benchmark: every workload file under
//! benches/ is valid, a broken one is named with its path, and the report
//! (tables, chart, README block) is computed from the samples it is given,
//! and its stopwatch reports what it measured.
//! The benchmark itself needs root, docker, buildah and ~25 minutes; these
//! checks keep the suite runnable between runs.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;

/// Whether python3 is there; elsewhere than CI its absence skips the test.
fn have_python() -> bool {
    let found = Command::new("python3").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is missing (apt-get install python3)"
        );
        eprintln!("skipped: python3 is missing (apt-get install python3)");
    }
    found
}

fn bench(args: &[&str], benches_dir: Option<&Path>) -> Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(args);
    match benches_dir {
        Some(dir) => cmd.env("BENCHES_DIR", dir),
        None => cmd.env_remove("BENCHES_DIR"),
    };
    cmd.output().expect("python3 runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_workload_validates_and_the_issue_steps_are_there() {
    if !have_python() {
        return;
    }
    let out = bench(&["--validate"], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    // The steps the benchmark issue asks for, (a) to (g).
    for step in [
        "(a) cold build",
        "(b) no-op rebuild",
        "(c) one-file-change rebuild",
        "(d) cold build",
        "(e) cold build",
        "(f1) build + docker-save tarball",
        "(f2) gzip OCI layout export",
        "(g1) push",
        "(g2) --cache-from rebuild",
    ] {
        assert!(stdout.contains(step), "no step {step:?} in:\n{stdout}");
    }
}

#[test]
fn a_broken_workload_is_named_with_its_file() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("broken");
    std::fs::create_dir(&w).unwrap();
    std::fs::write(w.join("Dockerfile"), "FROM busybox\n").unwrap();
    std::fs::write(
        w.join("workload.toml"),
        "title = \"x\"\n[[step]]\nid = \"a\"\nname = \"cold\"\nbuild = \"warm\"\n",
    )
    .unwrap();
    let out = bench(&["--validate"], Some(dir.path()));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken/workload.toml"), "{stderr}");
    assert!(stderr.contains("build must be one of"), "{stderr}");
    assert!(!stderr.contains("Traceback"), "{stderr}");

    // A check with two kinds is refused too.
    std::fs::write(
        w.join("workload.toml"),
        "[[step]]\nid = \"a\"\nname = \"cold\"\nbuild = \"cold\"\n\
         [[check]]\npath = \"/x\"\nequals = \"1\"\nlines = 1\n",
    )
    .unwrap();
    let out = bench(&["--validate"], Some(dir.path()));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("check 1: needs path and one of"),
        "{stderr}"
    );
}

fn samples(seconds: &[f64]) -> serde_json::Value {
    seconds
        .iter()
        .map(|s| json!({"seconds": s, "rss_kb": 20480, "daemon_kb": 1024}))
        .collect()
}

#[test]
fn the_report_is_computed_from_the_samples() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = json!({
        "machine": {"date": "2026-11-22 10:00 UTC", "cpus": 2, "cpu": "test cpu", "memory_gib": 4.0,
                    "kernel": "6.1", "filesystem": "ext4", "rbuild_commit": "abc",
                    "tools": {"docker": "docker engine 20.10", "buildah": "buildah 1.28", "rbuild": "rbuild 0.1"}},
        "method": "test method",
        "notes": ["a note"],
        "verified": 12,
        "load": ["0.1", "0.2"],
        "wall_s": 600.0,
        "workloads": [{
            "name": "app", "title": "multi-stage app", "about": "about it", "reps": 3, "warmup": true,
            "steps": [
                {"id": "b", "name": "no-op rebuild", "target": 0.1, "measure": true, "samples": {
                    "docker": samples(&[0.1, 0.09, 0.2]), "buildah": samples(&[0.5, 0.4, 0.6]),
                    "rbuild": samples(&[0.008, 0.009, 0.007])}},
                {"id": "c", "name": "one-file change", "target": 0.333, "measure": true, "samples": {
                    "docker": samples(&[1.0, 1.2, 0.8]), "buildah": samples(&[2.0, 2.0, 2.0]),
                    "rbuild": samples(&[0.5, 0.5, 0.6])}},
                {"id": "x", "name": "setup", "target": null, "measure": false, "samples": {}}
            ]
        }]
    });
    let json_path = dir.path().join("in.json");
    std::fs::write(&json_path, serde_json::to_vec(&data).unwrap()).unwrap();
    let out_dir = dir.path().join("docs");
    let out = bench(
        &[
            "--report",
            json_path.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));

    // Medians: rbuild 8 ms against docker's 100 ms and buildah's 500 ms.
    let md = std::fs::read_to_string(out_dir.join("benchmarks.md")).unwrap();
    assert!(
        md.contains("| (b) multi-stage app: no-op rebuild | 100 ms [90.0 ms–200 ms] | 500 ms [400 ms–600 ms] | 8.0 ms [7.0 ms–9.0 ms] | 0.080 | 0.016 | ≤ 0.1 met |"),
        "{md}"
    );
    // 0.5 s against 1.0 s misses a third.
    assert!(
        md.contains("| 0.500 | 0.250 | ≤ 0.333 **missed** |"),
        "{md}"
    );
    assert!(md.contains("2026-11-22 10:00 UTC"), "{md}");
    assert!(md.contains("20 MB; +1 MB"), "{md}");
    assert!(
        !md.contains("| (x) "),
        "an untimed step is not a row:\n{md}"
    );
    assert!(md.contains("(x) setup (not timed)"), "{md}");
    let svg = std::fs::read_to_string(out_dir.join("benchmarks.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("rbuild / docker: 0.080"), "{svg}");
    assert!(svg.contains("rbuild / buildah: 0.250"), "{svg}");
    // The headline block, printed (the README is only written for docs/).
    assert!(
        stdout.contains(
            "| (c) multi-stage app: one-file change | 0.50 | 0.25 | ≤ 0.333 **missed** |"
        ),
        "{stdout}"
    );
}

#[test]
fn the_readme_has_the_block_the_suite_writes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let begin = readme.find("<!-- bench:begin (written by scripts/bench) -->");
    let end = readme.find("<!-- bench:end -->");
    assert!(
        matches!((begin, end), (Some(b), Some(e)) if b < e),
        "README.md lacks the bench block"
    );
}

/// The suite's stopwatch (scripts/benchlib/timed.rs), built as the suite
/// builds it, in `dir`.
fn build_stopwatch(dir: &Path) -> std::path::PathBuf {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/benchlib/timed.rs");
    let binary = dir.join("timed");
    let out = Command::new("rustc")
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&binary)
        .arg(source)
        .output()
        .expect("rustc runs (it comes with cargo)");
    assert!(
        out.status.success(),
        "rustc timed.rs: {}",
        text(&out.stderr)
    );
    binary
}

/// Runs the stopwatch on `cmd`; its exit code and the (seconds, KiB) it
/// wrote, if it wrote them.
fn stopwatch(timed: &Path, dir: &Path, cmd: &[&str]) -> (Option<i32>, Option<(f64, u64)>) {
    let result = dir.join("result");
    let _ = std::fs::remove_file(&result);
    let status = Command::new(timed)
        .arg(&result)
        .args(cmd)
        .status()
        .expect("the stopwatch runs");
    let written = std::fs::read_to_string(&result)
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let words: Vec<&str> = s.split_whitespace().collect();
            assert_eq!(words.len(), 2, "{s:?}");
            (
                words[0].parse().expect("seconds"),
                words[1].parse().expect("KiB"),
            )
        });
    (status.code(), written)
}

#[test]
fn the_stopwatch_times_the_command_and_reports_its_peak_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let timed = build_stopwatch(dir.path());

    let (code, written) = stopwatch(&timed, dir.path(), &["sleep", "0.3"]);
    assert_eq!(code, Some(0));
    let (seconds, _) = written.expect("a result for sleep");
    assert!((0.3..2.0).contains(&seconds), "sleep 0.3 took {seconds} s");

    // dd's 64 MiB buffer is filled from /dev/zero, so it is resident.
    let (code, written) = stopwatch(
        &timed,
        dir.path(),
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    assert_eq!(code, Some(0));
    let (_, kib) = written.expect("a result for dd");
    assert!(kib >= 64 * 1024, "dd's peak was {kib} KiB");
    let (_, written) = stopwatch(&timed, dir.path(), &["true"]);
    let (_, small) = written.expect("a result for true");
    assert!(small < 16 * 1024, "true's peak was {small} KiB");

    // Failures pass through, as the harness reads them.
    let (code, written) = stopwatch(&timed, dir.path(), &["sh", "-c", "exit 3"]);
    assert_eq!(code, Some(3));
    assert!(written.is_some());
    let (code, _) = stopwatch(&timed, dir.path(), &["sh", "-c", "kill -9 $$"]);
    assert_eq!(code, Some(128 + 9));
    let (code, written) = stopwatch(&timed, dir.path(), &["/nonexistent/tool"]);
    assert_eq!(code, Some(127));
    assert!(written.is_none());
}
