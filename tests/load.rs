//! `rbuild build --load`: the image goes into the Docker engine through
//! the docker CLI, alone or beside other outputs, and a missing engine or
//! CLI is a clear error.

mod common;

use std::process::Command;

use common::*;

/// Runs rbuild's build with `args`, returning (success, stdout, stderr).
fn build(env: &Env, args: &[&str], setup: impl FnOnce(&mut Command)) -> (bool, String, String) {
    let mut cmd = env.rbuild();
    cmd.arg("build").args(args);
    setup(&mut cmd);
    let out = cmd.output().expect("run rbuild");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn docker_id(image: &str) -> String {
    run(
        docker().args(["image", "inspect", "--format", "{{.Id}}", image]),
        "docker image inspect",
    )
    .trim()
    .to_string()
}

#[test]
fn load_puts_the_built_image_into_docker() {
    if !(require_run() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo 'made by rbuild --load' > /file\n",
        )],
    );
    let tag = unique_tag("load");
    let _cleanup = DockerImages(vec![tag.clone()]);
    let iid = env.path("iid");
    let (ok, _, stderr) = build(
        &env,
        &[
            "--progress=plain",
            "-t",
            &tag,
            "--load",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
        |_| {},
    );
    assert!(ok, "build --load failed: {stderr}");
    // docker load's own words, as a progress message.
    let short = tag.trim_end_matches(":v1");
    assert!(
        stderr.contains(&format!("Loaded image: {short}:v1")),
        "{stderr}"
    );
    let out = run(
        docker().args(["run", "--rm", "--network", "none", &tag, "cat", "/file"]),
        "docker run",
    );
    assert_eq!(out, "made by rbuild --load\n");
    // The same image: docker's ID is rbuild's.
    let iid = std::fs::read_to_string(&iid).unwrap();
    assert_eq!(docker_id(&tag), iid);
    // --load is an output like -o type=docker: the image is not named in
    // rbuild's store unless asked for.
    let images = env.ok(&["images", "-q"]);
    assert!(!images.contains(&iid[7..19]), "{images}");
    no_mounts_left(&env);
}

#[test]
fn load_composes_with_other_outputs_and_loads_by_id_without_a_tag() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    // A label no other run uses, so the image ID is this test's own.
    let unique = unique_tag("load-id");
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nLABEL test={unique}\n") as &str,
        )],
    );
    let layout = env.path("oci.tar");
    let iid = env.path("iid");
    let (ok, _, stderr) = build(
        &env,
        &[
            "--progress=plain",
            "--load",
            "-o",
            &format!("type=oci,dest={}", layout.display()),
            "-o",
            "type=image,name=kept:v1",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
        |_| {},
    );
    let iid = std::fs::read_to_string(&iid).unwrap_or_default();
    let _cleanup = DockerImages(vec![iid.clone()]);
    assert!(ok, "build failed: {stderr}");
    assert!(
        stderr.contains(&format!("Loaded image ID: {iid}")),
        "{stderr}"
    );
    assert_eq!(docker_id(&iid), iid);
    // The other outputs were written too.
    assert!(layout.is_file());
    assert!(
        env.ok(&["images", "-q", "--no-trunc", "kept"])
            .contains(&iid),
        "named in rbuild's store"
    );
}

#[test]
fn load_without_an_engine_or_cli_fails_clearly() {
    if !require_busybox() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM busybox\nLABEL a=b\n")]);
    let ctx = ctx.to_str().unwrap();

    if have_command("docker") {
        let socket = env.path("no-such-docker.sock");
        let host = format!("unix://{}", socket.display());
        let (ok, _, stderr) = build(&env, &["-t", "x:v1", "--load", ctx], |c| {
            c.env("DOCKER_HOST", &host).env_remove("DOCKER_CONTEXT");
        });
        assert!(!ok, "build --load without an engine should fail");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("--load: the Docker engine did not answer"),
            "{stderr}"
        );
        // docker's exit status and its own explanation.
        assert!(stderr.contains("exit status: 1"), "{stderr}");
        assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
        // It failed before building anything.
        assert!(!stderr.contains("writing image"), "{stderr}");
    } else {
        missing("the docker CLI is not installed");
    }

    // No docker CLI at all.
    let empty = env.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, _, stderr) = build(&env, &["--load", ctx], |c| {
        c.env("PATH", &empty);
    });
    assert!(!ok);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("no `docker` on PATH"), "{stderr}");
}

#[test]
fn load_and_push_together() {
    if !(common::registry::require_registry() && require_docker()) {
        return;
    }
    let registry = common::registry::Registry::start();
    let env = Env::new();
    env.load_busybox();
    let unique = unique_tag("load-push");
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nLABEL test={unique}\n") as &str,
        )],
    );
    let image = registry.image("team/loaded:v1");
    let _cleanup = DockerImages(vec![image.clone()]);
    let meta = env.path("meta.json");
    let (ok, _, stderr) = build(
        &env,
        &[
            "--progress=plain",
            "-t",
            &image,
            "--push",
            "--load",
            "--metadata-file",
            meta.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
        |_| {},
    );
    assert!(ok, "build --push --load failed: {stderr}");
    let meta = json(&std::fs::read_to_string(&meta).unwrap());
    assert_eq!(
        registry.manifest_digest("team/loaded:v1"),
        meta["containerimage.digest"].as_str().unwrap()
    );
    assert_eq!(
        docker_id(&image),
        meta["containerimage.config.digest"].as_str().unwrap()
    );
    assert!(
        stderr.contains(&format!("Loaded image: {image}")),
        "{stderr}"
    );
}
