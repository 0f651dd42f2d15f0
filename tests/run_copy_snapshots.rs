//! The copy-based snapshotter (RBUILD_SNAPSHOTTER=copy, or where overlayfs
//! is missing): RUN steps give the same root filesystem as on overlayfs,
//! and the choice is reported.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use common::*;

const NOTE: &str = "RUN steps use copy snapshots (slower)";

/// Runs rbuild with `args` and `RBUILD_SNAPSHOTTER` set to `snapshotter`
/// (unset for `None`).
fn rbuild_with(env: &Env, snapshotter: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = env.rbuild();
    match snapshotter {
        Some(s) => cmd.env("RBUILD_SNAPSHOTTER", s),
        None => cmd.env_remove("RBUILD_SNAPSHOTTER"),
    };
    cmd.args(args).output().expect("run rbuild")
}

/// Builds `ctx` into the directory `out`; returns stderr.
fn build_into(env: &Env, snapshotter: Option<&str>, ctx: &Path, out: &Path) -> String {
    // Both snapshotters must really run the steps, not reuse the cache.
    let args = [
        "--no-cache",
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ];
    let output = rbuild_with(env, snapshotter, &args);
    assert_success(
        &output,
        &format!(
            "RBUILD_SNAPSHOTTER={snapshotter:?} rbuild {}",
            args.join(" ")
        ),
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every path below `root`: type, mode, owner, content digest or link
/// target, the first path of its inode if it has several links, and its
/// mtime unless it is a directory or newer than `since` (made by a RUN).
fn tree(root: &Path, since: i64) -> BTreeMap<String, String> {
    use sha2::Digest;
    fn walk(
        root: &Path,
        dir: &Path,
        since: i64,
        inodes: &mut BTreeMap<(u64, u64), String>,
        out: &mut BTreeMap<String, String>,
    ) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let p = dir.join(&name);
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                format!("file {:x}", sha2::Sha256::digest(&bytes))
            } else if ft.is_symlink() {
                format!("symlink {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!("other {:o} rdev={}", md.mode() & 0o170000, md.rdev())
            };
            let linked = if !ft.is_dir() && md.nlink() > 1 {
                let first = inodes
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| rel.clone());
                format!(" links={} first={first}", md.nlink())
            } else {
                String::new()
            };
            let mtime = if ft.is_dir() || md.mtime() >= since {
                "-".to_string()
            } else {
                md.mtime().to_string()
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} owner={}:{} mtime={mtime}{linked}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
            if ft.is_dir() {
                walk(root, &p, since, inodes, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, since, &mut BTreeMap::new(), &mut out);
    out
}

const DOCKERFILE: &str = r#"FROM busybox
RUN mkdir -p /data/sub/deep /data/gone/inner /data/keep \
 && echo a > /data/a && echo b > /data/sub/deep/b && echo g > /data/gone/inner/g \
 && echo k > /data/keep/k && echo old > /data/old && ln -s a /data/lnk && mkfifo /data/fifo
RUN rm /data/old && rm -r /data/gone && rm -r /data/sub && mkdir /data/sub && echo new > /data/sub/new \
 && chmod 640 /data/a && chown 1000:50 /data/a && ln /data/a /data/hard && ln /data/keep/k /data/klink \
 && ln -sfn /data/sub/new /data/lnk && echo s > /data/suid && chmod 4755 /data/suid \
 && echo g > /data/sgid && chmod 2711 /data/sgid && chmod 2750 /data/keep \
 && rm /bin/vi && rm -r /usr/sbin && rm -r /var && echo now-a-file > /var \
 && rm /bin/ping && mkdir /bin/ping && ln -sfn busybox /bin/cat
USER app
RUN echo mine > /home/app/mine && mkdir /home/app/d && ln -s mine /home/app/l \
 && chmod 600 /home/app/mine && mkdir /tmp/appdir && echo t > /tmp/appdir/t
USER root
RUN rm /data/klink && echo more >> /data/sub/new && chmod 1770 /tmp && touch /etc/passwd \
 && mkdir /var.d && rm /var && mv /var.d /var
"#;

#[test]
fn copy_snapshots_build_what_overlay_builds() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;

    let overlay_out = env.path("overlay");
    let err = build_into(&env, None, &ctx, &overlay_out);
    if err.contains(NOTE) {
        missing("overlayfs is not usable here, so there is nothing to compare copy snapshots with");
        return;
    }
    let copy_out = env.path("copy");
    let err = build_into(&env, Some("copy"), &ctx, &copy_out);
    assert_eq!(
        err.matches(NOTE).count(),
        1,
        "the choice is noted once per build: {err}"
    );
    assert!(err.contains("RBUILD_SNAPSHOTTER=copy"), "{err}");
    no_mounts_left(&env);

    let (overlay, copy) = (tree(&overlay_out, since), tree(&copy_out, since));
    // The steps did what they were asked in both.
    let get = |t: &BTreeMap<String, String>, p: &str| t.get(p).cloned().unwrap_or_default();
    for t in [&overlay, &copy] {
        for gone in [
            "data/old",
            "data/gone",
            "data/klink",
            "data/sub/deep",
            "bin/vi",
            "usr/sbin",
        ] {
            assert!(!t.contains_key(gone), "{gone} is still there");
        }
        assert!(get(t, "bin/ping").starts_with("dir "));
        assert!(get(t, "var").starts_with("dir "));
        assert!(get(t, "data/suid").contains("mode=4755"));
        assert!(get(t, "data/sgid").contains("mode=2711"));
        assert!(get(t, "data/keep").contains("mode=2750"));
        assert!(get(t, "tmp").contains("mode=1770"));
        assert!(get(t, "data/hard").contains("first=data/a"));
        assert!(get(t, "data/a").contains("owner=1000:50"));
        assert!(get(t, "home/app/mine").contains("mode=600 owner=1000:1000"));
        assert!(get(t, "tmp/appdir/t").contains("owner=1000:1000"));
        assert!(get(t, "bin/cat").starts_with("symlink busybox "));
        assert!(get(t, "data/fifo").starts_with("other 10000 "));
        assert!(get(t, "data/keep/k").contains("mode=644 owner=0:0 mtime=-"));
        assert!(!get(t, "data/keep/k").contains("links="));
        assert!(get(t, "etc/passwd").contains("mtime=-"));
        assert!(get(t, "etc/group").contains("mtime=0"));
    }
    if overlay != copy {
        let mut diffs = Vec::new();
        for path in overlay.keys().chain(copy.keys()) {
            let (a, b) = (overlay.get(path), copy.get(path));
            if a != b && !diffs.iter().any(|(p, _, _)| p == path) {
                diffs.push((path.clone(), a.cloned(), b.cloned()));
            }
        }
        panic!("overlay and copy snapshots built different trees:\n{diffs:#?}");
    }
}

#[test]
fn snapshotter_choice_is_checked() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /hi\n")],
    );
    let ctx = ctx.to_str().unwrap();
    let out = rbuild_with(&env, Some("bogus"), &[ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("Dockerfile:2:") && err.contains("RBUILD_SNAPSHOTTER=\"bogus\""),
        "{err}"
    );
    // Forcing overlay works where overlayfs does, and says nothing.
    let out = rbuild_with(&env, Some("overlay"), &[ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        assert!(!err.contains(NOTE), "{err}");
    } else {
        assert!(
            err.contains("RBUILD_SNAPSHOTTER=overlay, but overlayfs cannot be used"),
            "{err}"
        );
        missing("overlayfs is not usable here");
    }
    no_mounts_left(&env);
}
