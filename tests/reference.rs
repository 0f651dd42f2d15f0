//! The same Dockerfile built by BuildKit (the Docker engine on this machine)
//! and by rbuild must give the same image: runtime config, history, and
//! every file of the root filesystem with its type, mode, owner, content
//! and (for copied files) mtime.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;

use common::*;
use serde_json::Value;

const DOCKERFILE: &str = r#"ARG BASE=busybox
ARG PORT=8080
FROM ${BASE} AS base
ARG PORT
ENV APP_HOME=/srv/app \
    PORT=${PORT}
ENV LEGACY value with spaces
LABEL org.example.name="demo" version=1.0
COPY --chown=app:staff files/ ${APP_HOME}/
COPY --chmod=0750 run.sh /usr/local/bin/
COPY files/*.txt /data/
USER app
WORKDIR $APP_HOME/work
WORKDIR sub

FROM base AS final
COPY --chown=1234 files/a.txt one.txt
SHELL ["/bin/sh", "-ec"]
CMD echo "port $PORT"
ENTRYPOINT ["/usr/local/bin/run.sh"]
EXPOSE ${PORT} 9000-9001/udp
VOLUME ["/var/data", "/cache"]
STOPSIGNAL SIGQUIT
MAINTAINER someone@example.com
"#;

const ADVANCED: &str = r#"FROM busybox AS files
COPY --chown=app files/ /files/
WORKDIR /files/extra

FROM scratch
COPY plain.txt /from-index.txt

FROM busybox AS final
COPY --from=files /files/ /copied/
COPY --from=1 /from-index.txt /index.txt
COPY --from=files /bin/sh /sh-copy
ADD arch.tar.gz /unpacked/
ADD plain.txt /added.txt
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["/bin/true"]
ONBUILD COPY plain.txt /onbuild.txt
ONBUILD LABEL triggered=yes
"#;

const CHILD: &str = "FROM PARENT\nLABEL child=1\nHEALTHCHECK NONE\n";

#[test]
fn rbuild_and_buildkit_build_the_same_image() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("files/a.txt", "alpha\n"),
            ("files/b.txt", "beta\n"),
            ("files/nested/deep/c.bin", "\u{1}\u{2}\u{3}"),
            ("run.sh", "#!/bin/sh\nexec \"$@\"\n"),
        ],
    );
    std::os::unix::fs::symlink("a.txt", ctx.join("files/link-to-a")).unwrap();
    let tag = unique_tag("reference");
    let _cleanup = DockerImages(vec![tag.clone()]);
    assert_same_image(&env, &ctx, &tag);
}

/// COPY --from (stage name, index, through symlinks), ADD of archives,
/// HEALTHCHECK, and ONBUILD triggers fired by a child build.
#[test]
fn stages_add_healthcheck_and_onbuild_match_buildkit() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", ADVANCED),
            ("files/a.txt", "alpha\n"),
            ("files/sub/b.txt", "beta\n"),
            ("plain.txt", "plain\n"),
        ],
    );
    let archive_src = env.context(
        "archive",
        &[("top.txt", "top\n"), ("dir/inner.txt", "inner\n")],
    );
    touch_all(&archive_src);
    run(
        Command::new("tar")
            .arg("-czf")
            .arg(ctx.join("arch.tar.gz"))
            .args(["--owner=123", "--group=456", "-C"])
            .arg(&archive_src)
            .args(["top.txt", "dir"]),
        "tar",
    );
    let parent = unique_tag("parent");
    let child = unique_tag("child");
    let _cleanup = DockerImages(vec![parent.clone(), child.clone()]);
    assert_same_image(&env, &ctx, &parent);
    // The child's triggers run in the child's build, from its context.
    let child_ctx = env.context(
        "child",
        &[
            ("Dockerfile", &CHILD.replace("PARENT", &parent)),
            ("plain.txt", "child plain\n"),
        ],
    );
    assert_same_image(&env, &child_ctx, &child);
    let config = json(&env.ok(&["inspect", &child]));
    assert!(
        config[0]["config"]["OnBuild"].is_null(),
        "triggers are not inherited"
    );
    assert_eq!(config[0]["config"]["Labels"]["triggered"], "yes");
}

/// Sets every file's mtime to one old value, so both builders copy the
/// same times.
fn touch_all(dir: &std::path::Path) {
    run(
        Command::new("touch")
            .args(["-h", "-d", "2020-02-02 02:02:02"])
            .args(walk(dir)),
        "touch",
    );
}

/// Loads the busybox fixture into the engine under the name Dockerfiles use.
fn docker_busybox() {
    let layout = busybox_layout().unwrap();
    let bb = Command::new("tar")
        .arg("-C")
        .arg(layout)
        .args(["-c", "."])
        .output()
        .unwrap();
    let mut load = docker()
        .args(["load"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(load.stdin.as_mut().unwrap(), &bb.stdout).unwrap();
    assert_success(&load.wait_with_output().unwrap(), "docker load busybox");
}

/// Builds `ctx` with BuildKit (as `tag`) and with rbuild (as `tag` in its
/// own store) and compares config, history and root filesystem.
fn assert_same_image(env: &Env, ctx: &std::path::Path, tag: &str) {
    assert_same_image_with(env, ctx, tag, true);
}

fn assert_same_image_with(env: &Env, ctx: &std::path::Path, tag: &str, file_mtimes: bool) {
    compare_builds(
        env,
        ctx,
        tag,
        Options {
            file_mtimes,
            ..Options::default()
        },
    );
}

/// How [`compare_builds`] builds and compares.
#[derive(Default)]
struct Options<'a> {
    /// Compare file times (files a RUN makes carry the time it ran).
    file_mtimes: bool,
    /// Flags given to both builders (e.g. `--secret`).
    args: &'a [&'a str],
    /// Paths only docker's image has, on purpose (checked to be there).
    only_docker: &'a [&'a str],
}

/// Builds `ctx` with BuildKit and rbuild and compares the images.
fn compare_builds(env: &Env, ctx: &std::path::Path, tag: &str, options: Options<'_>) {
    let file_mtimes = options.file_mtimes;
    touch_all(ctx);
    docker_busybox();
    run(
        docker()
            .args(["build", "--network=none", "-q", "-t", tag])
            .args(options.args)
            .arg(ctx),
        "docker build",
    );
    let docker_save = env.path("docker.tar");
    run(
        docker().args(["save", "-o", docker_save.to_str().unwrap(), tag]),
        "docker save",
    );
    let theirs = config_from_docker_save(&docker_save);
    let container = run(docker().args(["create", tag]), "docker create")
        .trim()
        .to_string();
    let docker_fs = env.path("docker-fs.tar");
    run(
        docker().args(["export", "-o", docker_fs.to_str().unwrap(), &container]),
        "docker export",
    );
    let _ = docker().args(["rm", &container]).output();

    let with = |extra: &[&str]| -> Vec<String> {
        options
            .args
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let build_args = with(&["-t", tag, ctx.to_str().unwrap()]);
    env.ok(&build_args.iter().map(String::as_str).collect::<Vec<_>>());
    let ours = json(&env.ok(&["inspect", tag]))[0].clone();
    let our_fs = env.path("our-fs.tar");
    let dest = format!("type=tar,dest={}", our_fs.display());
    let export_args = with(&["-o", &dest, ctx.to_str().unwrap()]);
    env.ok(&export_args.iter().map(String::as_str).collect::<Vec<_>>());

    // Runtime config. (Docker 20.10's BuildKit adds ArgsEscaped, which
    // current BuildKit only sets on Windows.)
    for key in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
        "Shell",
        "Healthcheck",
        "OnBuild",
    ] {
        assert_eq!(ours["config"][key], theirs["config"][key], "config.{key}");
    }
    assert_eq!(ours["author"], theirs["author"]);
    // History: same instructions recorded the same way.
    let history = |c: &Value| -> Vec<(String, bool)> {
        c["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["created_by"].as_str().unwrap_or("").to_string(),
                    h["empty_layer"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    };
    assert_eq!(history(&ours), history(&theirs));

    // The root filesystems. Docker's export adds its own runtime files and
    // directories get the build's time, so those are left out of the
    // comparison; everything else must agree.
    let mut theirs_fs = tree(&docker_fs);
    let mut ours_fs = tree(&our_fs);
    // Docker's export adds these to every container; RUN adds the
    // mountpoints to layers too, in both builders.
    for runtime in [
        ".dockerenv",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "dev",
        "proc",
        "sys",
        "etc/mtab",
    ] {
        theirs_fs.retain(|path, _| path != runtime && !path.starts_with(&format!("{runtime}/")));
        ours_fs.retain(|path, _| path != runtime && !path.starts_with(&format!("{runtime}/")));
    }
    for path in options.only_docker {
        assert!(
            theirs_fs.contains_key(*path),
            "docker's image was expected to have {path}"
        );
        assert!(
            !ours_fs.contains_key(*path),
            "rbuild's image must not have {path}"
        );
        theirs_fs.remove(*path);
    }
    if !file_mtimes {
        for node in theirs_fs.values_mut().chain(ours_fs.values_mut()) {
            node.mtime = None;
        }
    }
    let only_theirs: Vec<&String> = theirs_fs
        .keys()
        .filter(|k| !ours_fs.contains_key(*k))
        .collect();
    let only_ours: Vec<&String> = ours_fs
        .keys()
        .filter(|k| !theirs_fs.contains_key(*k))
        .collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "only in docker's: {only_theirs:?}\nonly in ours: {only_ours:?}"
    );
    for (path, theirs) in &theirs_fs {
        assert_eq!(&ours_fs[path], theirs, "{path}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn config_from_docker_save(path: &std::path::Path) -> Value {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") || name.starts_with("blobs/") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(name, bytes);
        }
    }
    let manifest = json(std::str::from_utf8(&files["manifest.json"]).unwrap());
    let config = manifest[0]["Config"].as_str().unwrap();
    json(std::str::from_utf8(&files[config]).unwrap())
}

/// What the comparison looks at for each path of a rootfs tarball.
#[derive(Debug, PartialEq)]
struct Node {
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    /// File content digest or link target.
    content: String,
    /// Files' mtimes (copied files keep theirs); directories' vary by build.
    mtime: Option<u64>,
}

fn tree(path: &std::path::Path) -> BTreeMap<String, Node> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if name.is_empty() {
            continue;
        }
        let header = entry.header().clone();
        let kind = format!("{:?}", header.entry_type());
        let content = match header.entry_type() {
            tar::EntryType::Regular => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                format!("{:x}", sha2::Sha256::digest(&bytes))
            }
            tar::EntryType::Symlink | tar::EntryType::Link => entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default(),
            _ => String::new(),
        };
        let is_dir = header.entry_type() == tar::EntryType::Directory;
        out.insert(
            name,
            Node {
                kind,
                mode: header.mode().unwrap() & 0o7777,
                uid: header.uid().unwrap(),
                gid: header.gid().unwrap(),
                content,
                mtime: (!is_dir).then(|| header.mtime().unwrap()),
            },
        );
    }
    out
}

/// `.dockerignore` decides what `COPY .` sees exactly as in BuildKit:
/// root-anchored globs, `**`, exceptions, and excluded directories with
/// re-included files.
#[test]
fn dockerignore_matches_buildkit() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx/\nCOPY sub/*.txt /globbed/\n"),
            (".dockerignore", "# comment\n*.log\n**/*.tmp\nsecret\n!secret/keep.txt\ndocs/**\n!docs/README.md\n/build/\nsub/nested/deep\n"),
            ("app.log", "root log\n"),
            ("keep.txt", "keep\n"),
            ("sub/app.log", "nested log is not excluded by *.log\n"),
            ("sub/a.txt", "a\n"),
            ("sub/b.tmp", "tmp\n"),
            ("sub/nested/deep/x", "x\n"),
            ("sub/nested/kept", "kept\n"),
            ("secret/key", "hidden\n"),
            ("secret/keep.txt", "re-included\n"),
            ("docs/guide.md", "guide\n"),
            ("docs/README.md", "readme\n"),
            ("build/out.bin", "out\n"),
        ],
    );
    let tag = unique_tag("dockerignore");
    let _cleanup = DockerImages(vec![tag.clone()]);
    assert_same_image(&env, &ctx, &tag);
    // What was checked is really the filtered view.
    let out = env.path("rootfs");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert!(out.join("ctx/sub/app.log").is_file() && !out.join("ctx/app.log").exists());
    assert!(out.join("ctx/secret/keep.txt").is_file() && !out.join("ctx/secret/key").exists());
    assert!(out.join("ctx/docs/README.md").is_file() && !out.join("ctx/docs/guide.md").exists());
}

/// RUN steps that create, delete and replace files and directories
/// (whiteouts, opaque directories), links, special modes, unicode names,
/// thousands of files, an 8 MiB file, and a non-root USER with
/// supplementary groups: the same image as BuildKit's.
#[test]
fn run_steps_match_buildkit() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context("ctx", &[("Dockerfile", RUNS)]);
    let tag = unique_tag("runs");
    let _cleanup = DockerImages(vec![tag.clone()]);
    assert_same_image_with(&env, &ctx, &tag, false);
    let out = env.path("rootfs");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("greeting.txt"), "hello env\n");
    assert_eq!(
        read("tmp/id"),
        "uid=1000(app) gid=1000(app) groups=50(staff)\n"
    );
    assert_eq!(read("tmp/home"), "/home/app\n");
    assert_eq!(read("tmp/env"), "ARG_IN_RUN=visible\n");
    assert_eq!(std::fs::metadata(out.join("big")).unwrap().len(), 8 << 20);
}

const RUNS: &str = r#"FROM busybox
ARG GREETING=hello
ARG ARG_IN_RUN=visible
ENV FROM_ENV=env
RUN echo "$GREETING $FROM_ENV" > /greeting.txt && mkdir -p /data/sub && echo one > /data/one && ln -s /data/one /data/link && ln /data/one /data/hard && echo x > /data/sub/x
RUN rm /data/one && rm -r /data/sub && mkdir /data/sub && echo new > /data/sub/new && rm -rf /tmp && mkdir -m 1777 /tmp
RUN touch /setuid && chmod 4755 /setuid && mkdir -m 1777 /sticky && echo u > "/ünïcødé" && chmod 2750 /data
RUN mkdir /many && cd /many && i=0; while [ $i -lt 2000 ]; do echo $i > f$i; i=$((i+1)); done
RUN dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null
RUN rm /bin/ls && chown 1000:50 /greeting.txt
USER app
RUN id > /tmp/id && echo $HOME > /tmp/home && env | grep ARG_IN_RUN > /tmp/env && touch /home/app/mine
"#;

/// RUN --mount of every kind docker 20.10 builds: cache, bind from the
/// context and from a stage, tmpfs and secret. BuildKit 0.8 (in that
/// engine) leaves empty directories where missing mount targets were;
/// rbuild leaves none, as current BuildKit does and as the issue asks.
#[test]
fn run_mounts_match_buildkit() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context("ctx", &[("Dockerfile", MOUNTS), ("src/main.txt", "code\n")]);
    let secret = env.path("secret.txt");
    std::fs::write(&secret, "topsecret\n").unwrap();
    let secret_arg = format!("id=tok,src={}", secret.display());
    let tag = unique_tag("mounts");
    let _cleanup = DockerImages(vec![tag.clone()]);
    compare_builds(
        &env,
        &ctx,
        &tag,
        Options {
            file_mtimes: false,
            args: &["--secret", &secret_arg],
            only_docker: &[
                "run",
                "run/secrets",
                "scratch",
                "src",
                "t",
                "var/cache",
                "var/cache/app",
            ],
        },
    );
}

const MOUNTS: &str = r#"FROM busybox AS tools
RUN mkdir -p /opt/tool && echo tool > /opt/tool/bin
FROM busybox
RUN --mount=type=cache,target=/var/cache/app,id=appcache echo cached > /var/cache/app/x && ls /var/cache/app > /cache-list
RUN --mount=type=bind,source=src,target=/src cat /src/main.txt > /from-context
RUN --mount=type=bind,from=tools,source=/opt/tool,target=/t cat /t/bin > /from-stage
RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/y && grep -c ' /scratch ' /proc/mounts > /tmpfs-count
RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /secret-len
"#;
