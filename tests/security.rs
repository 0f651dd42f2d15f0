//! Crafted inputs that try to reach the host: layers with `../` entries and
//! symlinks to `/`, WORKDIR through /proc magic links, reading the host's
//! files from RUN. Each asserts that nothing on the host changed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Writes a docker-save archive whose one layer is made by `layer_py`
/// (Python statements adding members to the tarfile `t`).
fn evil_image(env: &Env, name: &str, layer_py: &str) -> PathBuf {
    let out = env.path(&format!("{name}.tar"));
    let script = format!(
        r#"
import hashlib, io, json, tarfile, sys
buf = io.BytesIO()
t = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
def add_file(path, data=b"pwned\n", mode=0o644):
    info = tarfile.TarInfo(path); info.size = len(data); info.mode = mode
    t.addfile(info, io.BytesIO(data))
def add_symlink(path, target):
    info = tarfile.TarInfo(path); info.type = tarfile.SYMTYPE; info.linkname = target
    t.addfile(info)
def add_hardlink(path, target):
    info = tarfile.TarInfo(path); info.type = tarfile.LNKTYPE; info.linkname = target
    t.addfile(info)
{layer_py}
t.close()
layer = buf.getvalue()
diff = hashlib.sha256(layer).hexdigest()
config = json.dumps({{"architecture": "amd64", "os": "linux", "config": {{}},
    "rootfs": {{"type": "layers", "diff_ids": ["sha256:" + diff]}}}}).encode()
chex = hashlib.sha256(config).hexdigest()
out = tarfile.open(sys.argv[1], "w")
def put(name, data):
    info = tarfile.TarInfo(name); info.size = len(data); out.addfile(info, io.BytesIO(data))
put(chex + ".json", config)
put(diff + "/layer.tar", layer)
put("manifest.json", json.dumps([{{"Config": chex + ".json", "RepoTags": ["{name}:latest"], "Layers": [diff + "/layer.tar"]}}]).encode())
out.close()
"#
    );
    run(
        Command::new("python3").arg("-c").arg(script).arg(&out),
        "python3 makes the crafted image",
    );
    env.ok(&["load", "-i", out.to_str().unwrap()]);
    out
}

/// A marker path on the host that must never appear.
fn marker(env: &Env, name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rbuild-security-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    assert!(!p.exists());
    let _ = env;
    p
}

fn assert_untouched(p: &Path) {
    assert!(!p.exists(), "{} was written on the host", p.display());
}

#[test]
fn layer_entries_with_dotdot_are_refused() {
    let env = Env::new();
    let host = marker(&env, "dotdot");
    let rel = format!("../../../../../../../../..{}", host.display());
    evil_image(&env, "dotdot", &format!("add_file({rel:?})"));
    let ctx = env.context("c", &[("Dockerfile", "FROM dotdot\n")]);
    let err = env.fails(&[
        "-o",
        env.path("out").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert!(err.contains(".."), "{err}");
    assert_untouched(&host);
    if require_busybox() && running_as_root() {
        let ctx = env.context("r", &[("Dockerfile", "FROM dotdot\nRUN true\n")]);
        let err = env.fails(&[ctx.to_str().unwrap()]);
        assert!(err.contains("Dockerfile:2"), "{err}");
        assert_untouched(&host);
    }
}

#[test]
fn symlinks_out_of_the_root_stay_inside() {
    let env = Env::new();
    let host = marker(&env, "symlink");
    let name = host.file_name().unwrap().to_str().unwrap().to_string();
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_str().unwrap().trim_start_matches('/');
    // `evil` points at the host's root; a file written through it and a
    // hard link through it must land inside the image.
    evil_image(
        &env,
        "symlinked",
        &format!(
            "add_symlink('evil', '/')\nadd_symlink('up', '../../../../..')\nadd_file('evil/{tmp}/{name}')\nadd_file('up/{tmp}/{name}.2')\nadd_hardlink('evil/{tmp}/{name}.3', 'evil/{tmp}/{name}')"
        ),
    );
    let ctx = env.context("c", &[("Dockerfile", "FROM symlinked\n")]);
    let out = env.path("out");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_untouched(&host);
    assert_untouched(&host.with_extension("2"));
    assert_untouched(&host.with_extension("3"));
    assert!(
        out.join(tmp).join(&name).is_file(),
        "the file lands inside the root"
    );
    // A hard link to a file outside the root is refused outright.
    evil_image(
        &env,
        "hardlinked",
        "add_hardlink('passwd', '../../../../../../etc/passwd')",
    );
    let ctx = env.context("h", &[("Dockerfile", "FROM hardlinked\n")]);
    env.fails(&[
        "-o",
        env.path("out2").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
}

#[test]
fn run_cannot_reach_host_files_or_escape_through_proc() {
    if !(require_busybox() && (running_as_root() || missing("RUN needs root"))) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    // The host's /etc/hostname is not visible; the image has none.
    let ctx = env.context(
        "h",
        &[("Dockerfile", "FROM busybox\nRUN cat /etc/hostname\n")],
    );
    let err = env.fails(&[ctx.to_str().unwrap()]);
    assert!(err.contains("No such file"), "{err}");
    // WORKDIR through a /proc magic link must not put the step's cwd on
    // the host (or the container's) file descriptors.
    let ctx = env.context(
        "w",
        &[(
            "Dockerfile",
            "FROM busybox\nWORKDIR /proc/self/fd/3\nRUN pwd > /where\n",
        )],
    );
    // WORKDIR creates proc/self/fd/3 in the image, but at RUN time /proc is
    // procfs, and its magic links are never followed for the cwd.
    let err = env.fails(&[ctx.to_str().unwrap()]);
    assert!(
        err.contains(
            "Dockerfile:3: RUN: setting up the container: working directory /proc/self/fd/3"
        ),
        "{err}"
    );
    // A RUN cannot see the host's processes.
    let ctx = env.context(
        "p",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN ls /proc | grep -c '^[0-9]' > /count\n",
        )],
    );
    let out2 = env.path("pout");
    env.ok(&["-o", out2.to_str().unwrap(), ctx.to_str().unwrap()]);
    let count: u32 = std::fs::read_to_string(out2.join("count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(count <= 3, "{count} processes visible");
}

/// A step plants symlinks to `/` in a cache mount and in a stage; later
/// mounts of them must resolve inside the container or the stage (or be
/// refused), never reach the host.
#[test]
fn symlinks_planted_in_mounts_stay_inside() {
    if !(require_busybox() && (running_as_root() || missing("RUN needs root"))) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let host = marker(&env, "mounts");
    let host_dir = host.parent().unwrap().to_str().unwrap().to_string();
    let name = host.file_name().unwrap().to_str().unwrap().to_string();
    let cache = format!(
        "FROM busybox\n\
         RUN --mount=type=cache,target=/c,id=swap rm -rf /c/* && ln -s / /c/root && ln -s {host_dir} /c/tmp\n\
         RUN --mount=type=cache,target=/c,id=swap,uid=1000,mode=0700 ls /c/root/ > /cache-view && touch /c/tmp/{name}\n"
    );
    let ctx = env.context("cache", &[("Dockerfile", &cache)]);
    let out = env.path("out");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_untouched(&host);
    let listing = std::fs::read_to_string(out.join("cache-view")).unwrap();
    assert!(listing.lines().any(|l| l == "bin"), "{listing}");
    assert!(
        !listing.lines().any(|l| l == "work"),
        "the host's root: {listing}"
    );
    // The write through the cache's symlink landed in the image's /tmp.
    assert!(
        out.join(host_dir.trim_start_matches('/'))
            .join(&name)
            .exists()
    );

    // A bind source that is a symlink out of its stage: refused, or
    // resolved inside the stage; never the host.
    let bind = format!(
        "FROM busybox AS planted\nRUN ln -s / /evil && ln -s {host_dir} /evil-tmp\n\
         FROM busybox\n\
         RUN --mount=type=bind,from=planted,source=evil,target=/m ls /m > /bind-view\n\
         RUN --mount=type=bind,from=planted,source=evil-tmp,target=/n,rw touch /n/{name}.bind\n"
    );
    let ctx = env.context("bind", &[("Dockerfile", &bind)]);
    let result = env
        .rbuild()
        .args([
            "-o",
            env.path("bout").to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if !result.status.success() {
        assert!(stderr.contains("leads outside its filesystem"), "{stderr}");
    }
    assert_untouched(&host.with_extension("bind"));
}
