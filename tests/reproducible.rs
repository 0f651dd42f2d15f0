//! Reproducible images: with SOURCE_DATE_EPOCH, two roots building the
//! same inputs give the same image, RUN layers included, as BuildKit's
//! `rewrite-timestamp` does.

mod common;

use common::{Env, assert_success, json, require_run};

const DOCKERFILE: &str = "FROM busybox\n\
    RUN echo made > /made && mkdir -p /dir/sub && echo f > /dir/sub/f\n\
    COPY ctx.txt /ctx.txt\n\
    CMD [\"cat\", \"/made\"]\n";

/// Builds in `env`'s root; returns the image ID and the image's rootfs.
fn build(env: &Env, epoch: Option<&str>) -> (String, std::path::PathBuf) {
    env.load_busybox();
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE), ("ctx.txt", "c\n")]);
    let rootfs = env.path("rootfs");
    let mut cmd = env.rbuild();
    if let Some(epoch) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", epoch);
    }
    let out = cmd
        .args(["build", "-q", "-t", "repro:1", ctx.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out, "rbuild build");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let dest = format!("type=local,dest={}", rootfs.display());
    let mut cmd = env.rbuild();
    if let Some(epoch) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", epoch);
    }
    let out = cmd
        .args(["build", "-q", "-o", &dest, ctx.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out, "rbuild build -o type=local");
    (id, rootfs)
}

fn mtime(path: &std::path::Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mtime()
}

#[test]
fn source_date_epoch_gives_the_same_image_in_two_roots_run_layers_included() {
    if !require_run() {
        return;
    }
    let (a, b) = (Env::new(), Env::new());
    let (id_a, rootfs) = build(&a, Some("1700000000"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (id_b, _) = build(&b, Some("1700000000"));
    assert_eq!(id_a, id_b);
    // What the build wrote is clamped; what is older keeps its time.
    for path in ["made", "dir", "dir/sub/f", "ctx.txt"] {
        assert!(mtime(&rootfs.join(path)) <= 1_700_000_000, "{path}");
    }
    assert_eq!(mtime(&rootfs.join("made")), 1_700_000_000);
    assert_eq!(
        mtime(&rootfs.join("bin/busybox")),
        0,
        "the base's times are kept"
    );
    let config = json(&a.ok(&["inspect", "repro:1"]));
    assert_eq!(config[0]["created"], "2023-11-14T22:13:20Z");

    // The control: without it, the RUN layer's times differ.
    let (c, d) = (Env::new(), Env::new());
    let (id_c, _) = build(&c, None);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (id_d, _) = build(&d, None);
    assert_ne!(id_c, id_d);
}
