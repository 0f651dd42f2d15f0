//! RUN --mount: cache, bind, tmpfs, secret and ssh mounts, checked in the
//! resulting root filesystem, and that none of them leaves anything in the
//! image.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Builds the context `ctx` into the root filesystem `out` (plus `extra` args).
fn build(env: &Env, ctx: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let dest = env.path(out);
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["-o", dest.to_str().unwrap(), ctx.to_str().unwrap()]);
    env.ok(&args);
    dest
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every file under `dir` (not following symlinks).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            files_under(&entry.path(), out);
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn cache_persists_across_builds_and_stays_out_of_the_image() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=cache,target=/var/cache/app \
             n=$(cat /var/cache/app/count 2>/dev/null || echo 0); \
             echo $((n + 1)) > /var/cache/app/count; cp /var/cache/app/count /seen\n\
             RUN --mount=type=cache,target=/owned,uid=1000,gid=50,mode=0700 \
             stat -c '%u:%g %a' /owned > /owned-stat\n",
        )],
    );
    let first = build(&env, &ctx, "one", &[]);
    assert_eq!(read(&first, "seen"), "1\n");
    assert_eq!(read(&first, "owned-stat"), "1000:50 700\n");
    // The steps are cached; --no-cache makes them run again on the
    // persisted cache mount.
    let second = build(&env, &ctx, "two", &["--no-cache"]);
    assert_eq!(
        read(&second, "seen"),
        "2\n",
        "the cache persists in the root"
    );
    for out in [&first, &second] {
        assert!(
            !out.join("var/cache/app").exists(),
            "cache target left a stub"
        );
        assert!(!out.join("owned").exists(), "cache target left a stub");
    }
    assert!(out_has_dir(&env.root(), "cache-mounts"));
    no_mounts_left(&env);
}

fn out_has_dir(dir: &Path, name: &str) -> bool {
    dir.join(name).is_dir()
}

#[test]
fn cache_id_is_a_key_not_a_path() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=../../x,target=/c echo kept > /c/marker\n\
             RUN --mount=type=cache,id=/,target=/d echo slash > /d/marker\n",
        )],
    );
    build(&env, &ctx, "out", &[]);
    let cache = env.root().join("cache-mounts");
    for escaped in [
        env.dir.path().join("x"),
        env.root().join("x"),
        cache.join("x"),
    ] {
        assert!(!escaped.exists(), "{} appeared", escaped.display());
    }
    // Every cache is a sha256-named directory inside cache-mounts.
    let mut markers = Vec::new();
    files_under(&cache, &mut markers);
    let markers: Vec<_> = markers
        .into_iter()
        .filter(|p| p.ends_with("marker"))
        .collect();
    assert_eq!(markers.len(), 2, "{markers:?}");
    for m in &markers {
        let rel = m.strip_prefix(&cache).unwrap();
        let key = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        assert!(
            key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "{rel:?}"
        );
    }
    // The env dir holds only what the test made.
    let mut names: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ctx", "out", "root"]);
}

#[test]
fn cache_sharing_locked_and_private() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    // Each step fails if another holds the same cache directory at once.
    let step = |sharing: &str| {
        format!(
            "FROM busybox\nARG N\n\
             RUN --mount=type=cache,id=shared-id,target=/c,sharing={sharing} \
             mkdir /c/busy || exit 9; sleep 1; rmdir /c/busy; echo $N > /done\n"
        )
    };
    for sharing in ["locked", "private"] {
        let ctx = env.context(sharing, &[("Dockerfile", &step(sharing))]);
        let children: Vec<_> = (0..3)
            .map(|i| {
                let dest = env.path(&format!("{sharing}-out{i}"));
                env.rbuild()
                    .args(["--build-arg", &format!("N={i}"), "-o"])
                    .arg(&dest)
                    .arg(&ctx)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            assert_success(&out, &format!("concurrent build with sharing={sharing}"));
            let dest = env.path(&format!("{sharing}-out{i}"));
            assert_eq!(read(&dest, "done"), format!("{i}\n"));
        }
    }
    // The same locked id twice in one step is one directory (no deadlock).
    let ctx = env.context(
        "twice",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=t,target=/a,sharing=locked \
             --mount=type=cache,id=t,target=/b,sharing=locked \
             touch /a/f && test -f /b/f && echo same > /same\n",
        )],
    );
    let out = build(&env, &ctx, "twice-out", &[]);
    assert_eq!(read(&out, "same"), "same\n");
    no_mounts_left(&env);
}

#[test]
fn bind_mounts_from_context_and_stages() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox AS src\nRUN mkdir -p /data/sub && echo hello > /data/sub/f\n\
                 FROM busybox\n\
                 RUN --mount=target=/ctx cat /ctx/a.txt > /from-ctx; \
                 ls /ctx > /ctx-list; cat /ctx/dir/b.txt > /from-ctx-sub; \
                 (echo x > /ctx/new) 2>/dev/null && echo writable > /ctx-w || echo readonly > /ctx-w\n\
                 RUN --mount=type=bind,source=dir,target=/sub,rw echo changed > /sub/b.txt && cat /sub/b.txt > /sub-rw\n\
                 RUN --mount=from=src,source=/data/sub,target=/m cat /m/f > /from-stage\n\
                 RUN --mount=from=src,src=data,dst=/m,readwrite echo changed > /m/sub/f && echo new > /m/new && cat /m/sub/f > /rw-saw\n\
                 RUN --mount=from=src,source=data,target=/m cat /m/sub/f > /after; test ! -e /m/new && echo gone > /after-new\n\
                 RUN --mount=from=busybox,source=/etc,target=/img-etc grep -c app /img-etc/passwd > /from-image\n",
            ),
            ("a.txt", "from the context\n"),
            ("dir/b.txt", "b\n"),
            ("ignored.txt", "not for you\n"),
            (".dockerignore", "ignored.txt\n"),
        ],
    );
    let out = build(&env, &ctx, "out", &[]);
    assert_eq!(read(&out, "from-ctx"), "from the context\n");
    let list = read(&out, "ctx-list");
    assert!(list.contains("a.txt") && list.contains("dir"), "{list}");
    assert!(
        !list.contains("ignored.txt"),
        ".dockerignore honoured: {list}"
    );
    assert_eq!(read(&out, "from-ctx-sub"), "b\n");
    assert_eq!(
        read(&out, "ctx-w"),
        "readonly\n",
        "bind mounts are read-only"
    );
    assert_eq!(read(&out, "sub-rw"), "changed\n");
    assert_eq!(
        std::fs::read_to_string(ctx.join("dir/b.txt")).unwrap(),
        "b\n",
        "rw writes never reach the context"
    );
    assert!(!ctx.join("new").exists());
    assert_eq!(read(&out, "from-stage"), "hello\n");
    assert_eq!(read(&out, "rw-saw"), "changed\n");
    assert_eq!(read(&out, "after"), "hello\n", "rw writes are discarded");
    assert_eq!(read(&out, "after-new"), "gone\n");
    assert_eq!(read(&out, "from-image"), "1\n");
    for stub in ["ctx", "sub", "m", "img-etc"] {
        assert!(!out.join(stub).exists(), "/{stub} left behind");
    }
    // A missing source is a clear error.
    let bad = env.context(
        "bad",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=source=nope,target=/x true\n",
        )],
    );
    let err = env.fails(&[bad.to_str().unwrap()]);
    assert!(
        err.contains("Dockerfile:2") && err.contains("not found"),
        "{err}"
    );
    no_mounts_left(&env);
}

#[test]
fn tmpfs_is_a_tmpfs_and_leaves_nothing() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=tmpfs,target=/scratch/deep,size=1m \
             grep ' /scratch/deep ' /proc/mounts > /mount-line; echo data > /scratch/deep/f\n\
             RUN --mount=type=tmpfs,target=/tmp ls -A /tmp > /tmp-list; echo x > /tmp/y\n",
        )],
    );
    let out = build(&env, &ctx, "out", &[]);
    let line = read(&out, "mount-line");
    assert!(
        line.starts_with("tmpfs /scratch/deep tmpfs") && line.contains("size=1024k"),
        "{line}"
    );
    assert!(line.contains("nosuid"), "{line}");
    assert!(!out.join("scratch").exists(), "tmpfs target left a stub");
    assert_eq!(read(&out, "tmp-list"), "", "a fresh tmpfs over /tmp");
    assert!(out.join("tmp").is_dir() && !out.join("tmp/y").exists());
    no_mounts_left(&env);
}

#[test]
fn secrets_are_readable_and_never_stored() {
    if !require_run() {
        return;
    }
    const FILE_SECRET: &str = "s3cr3t-file-value-4c1d";
    const ENV_SECRET: &str = "s3cr3t-env-value-9e2f";
    let env = Env::new();
    env.load_busybox();
    let secret_file = env.path("secret.txt");
    std::fs::write(&secret_file, FILE_SECRET).unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=secret,id=tok tr a-z A-Z < /run/secrets/tok > /file-upper; \
             stat -c '%a %u:%g' /run/secrets/tok > /file-stat; \
             (echo x > /run/secrets/tok) 2>/dev/null && echo writable > /file-w || echo readonly > /file-w\n\
             RUN --mount=type=secret,id=envtok,env=MYTOK echo \"$MYTOK\" | tr a-z A-Z > /env-upper; \
             test -e /run/secrets/envtok && echo file > /env-file || echo none > /env-file\n\
             RUN --mount=type=secret,id=tok,target=/etc/app/tok,uid=1000,gid=1000,mode=0440,env=BOTH \
             stat -c '%a %u:%g' /etc/app/tok > /target-stat; echo \"$BOTH\" | tr a-z A-Z > /both-upper\n\
             RUN --mount=type=secret,id=absent cat /run/secrets/absent 2>/dev/null || echo skipped > /absent\n\
             RUN --mount=type=secret,target=/run/secrets/tok wc -c < /run/secrets/tok > /by-target\n",
        )],
    );
    let tar = env.path("image.tar");
    let out = env.path("out");
    let secret_arg = format!("id=tok,src={}", secret_file.display());
    let mut cmd = env.rbuild();
    cmd.env("RBUILD_TEST_SECRET", ENV_SECRET).args([
        "-t",
        "sec:v1",
        "--secret",
        &secret_arg,
        "--secret",
        "id=envtok,env=RBUILD_TEST_SECRET",
        "-o",
        &format!("type=docker,dest={}", tar.display()),
        "-o",
        &format!("type=local,dest={}", out.display()),
        "-o",
        "type=image",
        ctx.to_str().unwrap(),
    ]);
    run(&mut cmd, "rbuild with secrets");

    assert_eq!(read(&out, "file-upper"), FILE_SECRET.to_uppercase());
    assert_eq!(read(&out, "file-stat"), "400 0:0\n");
    assert_eq!(read(&out, "file-w"), "readonly\n");
    assert_eq!(
        read(&out, "env-upper"),
        format!("{}\n", ENV_SECRET.to_uppercase())
    );
    assert_eq!(
        read(&out, "env-file"),
        "none\n",
        "env= without target: no file"
    );
    assert_eq!(read(&out, "target-stat"), "440 1000:1000\n");
    assert_eq!(
        read(&out, "both-upper"),
        format!("{}\n", FILE_SECRET.to_uppercase())
    );
    assert_eq!(read(&out, "absent"), "skipped\n");
    assert_eq!(
        read(&out, "by-target").trim(),
        FILE_SECRET.len().to_string()
    );
    assert!(!out.join("run").exists() && !out.join("etc/app").exists());

    // Nowhere in the image (layers, config, history) or anywhere in the root.
    let mut files = vec![tar.clone()];
    files_under(&env.root(), &mut files);
    files_under(&out, &mut files);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for secret in [FILE_SECRET, ENV_SECRET] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "secret found in {}",
                f.display()
            );
        }
    }
    let config = env.ok(&["inspect", "sec:v1"]);
    assert!(!config.contains(FILE_SECRET) && !config.contains(ENV_SECRET));
    assert!(config.contains("tr a-z A-Z"), "history kept: {config}");

    // A required secret that was not given is a clear error.
    let required = env.context(
        "req",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=nope,required true\n",
        )],
    );
    let err = env.fails(&[required.to_str().unwrap()]);
    assert!(
        err.contains("Dockerfile:2") && err.contains("secret \"nope\" not found"),
        "{err}"
    );
    let err = env.fails(&["--secret", "id=x,type=ftp", required.to_str().unwrap()]);
    assert!(err.contains("unsupported --secret type"), "{err}");
    no_mounts_left(&env);
}

#[test]
fn ssh_agent_socket_is_forwarded() {
    if !require_run() {
        return;
    }
    use std::io::{Read, Write};
    let env = Env::new();
    env.load_busybox();
    let agent = env.path("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4];
            if conn.read_exact(&mut buf).is_ok() && &buf == b"ping" {
                let _ = conn.write_all(b"pong");
            }
        }
    });
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nUSER app\n\
             RUN --mount=type=ssh,uid=1000 test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /tmp/sock; \
             stat -c '%a %u' \"$SSH_AUTH_SOCK\" > /tmp/sock-stat\n\
             RUN --mount=type=ssh,id=other,target=/home/app/agent echo \"$SSH_AUTH_SOCK\" > /tmp/other\n",
        )],
    );
    let agent_arg = format!("default={}", agent.display());
    let out = build(&env, &ctx, "out", &["--ssh", &agent_arg]);
    assert_eq!(read(&out, "tmp/sock"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(read(&out, "tmp/sock-stat"), "600 1000\n");
    assert_eq!(
        read(&out, "tmp/other"),
        "/home/app/agent\n",
        "an optional agent that is missing is skipped; SSH_AUTH_SOCK still names it"
    );
    assert!(!out.join("run").exists() && !out.join("home/app/agent").exists());

    // `--ssh default` takes $SSH_AUTH_SOCK.
    let out = env.path("out2");
    let mut cmd = env.rbuild();
    cmd.env("SSH_AUTH_SOCK", &agent).args([
        "--ssh",
        "default",
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    run(&mut cmd, "rbuild --ssh default");
    assert_eq!(read(&out, "tmp/sock"), "/run/buildkit/ssh_agent.0\n");

    let required = env.context(
        "req",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh,id=work,required=true true\n",
        )],
    );
    let err = env.fails(&["--ssh", &agent_arg, required.to_str().unwrap()]);
    assert!(err.contains("no SSH agent \"work\""), "{err}");
    // The agent socket is untouched.
    assert!(agent.exists());
    no_mounts_left(&env);
}

#[test]
fn missing_targets_leave_no_stub() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN --mount=target=/n1/a/b,source=f --mount=type=cache,target=/n2/c \
                 --mount=type=tmpfs,target=/n3/t --mount=type=secret,id=s,target=/n4/s \
                 --mount=type=tmpfs,target=relative/dir \
                 test -f /n1/a/b && test -d /n2/c && test -d /n3/t && test -d /relative/dir\n\
                 WORKDIR /w\nRUN --mount=type=tmpfs,target=rel pwd > /pwd; grep -c ' /w/rel ' /proc/mounts > /rel\n",
            ),
            ("f", "file\n"),
        ],
    );
    let secret = env.context("s", &[("s", "x")]).join("s");
    let out = build(
        &env,
        &ctx,
        "out",
        &["--secret", &format!("id=s,src={}", secret.display())],
    );
    for stub in ["n1", "n2", "n3", "n4", "relative", "w/rel"] {
        assert!(!out.join(stub).exists(), "/{stub} left behind");
    }
    assert_eq!(
        read(&out, "rel"),
        "1\n",
        "relative targets are below WORKDIR"
    );
    no_mounts_left(&env);
}
