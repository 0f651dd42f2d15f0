//! Images rbuild writes, loaded into a real Docker engine and run.

mod common;

use common::*;

const APP: &str = "FROM busybox\nCOPY msg.txt /app/\nWORKDIR /app\nENV GREETING=\"hello world\"\nUSER app\nCMD [\"sh\", \"-c\", \"cat msg.txt; echo $GREETING; id -u; pwd\"]\n";

fn app_context(env: &Env) -> std::path::PathBuf {
    env.context("app", &[("Dockerfile", APP), ("msg.txt", "from rbuild\n")])
}

fn docker_run(image: &str) -> String {
    run(
        docker().args(["run", "--rm", "--network", "none", image]),
        &format!("docker run {image}"),
    )
}

/// Builds the app with `-o type=docker` and returns the tarball.
fn build_docker_archive(env: &Env, tag: &str) -> std::path::PathBuf {
    env.load_busybox();
    let ctx = app_context(env);
    let tar = env.path("app.tar");
    let output = format!("type=docker,dest={}", tar.display());
    env.ok(&["-t", tag, "-o", &output, ctx.to_str().unwrap()]);
    tar
}

const EXPECTED: &str = "from rbuild\nhello world\n1000\n/app\n";

#[test]
fn output_type_docker_loads_and_runs() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    let tag = unique_tag("output");
    let _cleanup = DockerImages(vec![tag.clone()]);
    let tar = build_docker_archive(&env, &tag);
    let loaded = run(
        docker().args(["load", "-i", tar.to_str().unwrap()]),
        "docker load",
    );
    assert!(
        loaded.contains(tag.trim_end_matches(":v1")),
        "docker load said: {loaded}"
    );
    assert_eq!(docker_run(&tag), EXPECTED);
}

#[test]
fn rbuild_save_of_several_images_loads_and_runs() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = app_context(&env);
    let (a, b) = (unique_tag("save-a"), unique_tag("save-b"));
    let _cleanup = DockerImages(vec![a.clone(), b.clone()]);
    env.ok(&["build", "-t", &a, "-t", &b, ctx.to_str().unwrap()]);
    let tar = env.path("saved.tar");
    env.ok(&["save", "-o", tar.to_str().unwrap(), &a, &b, "busybox"]);
    // Shared layers are stored once in the archive.
    let listing = run(
        std::process::Command::new("tar").args(["-tf", tar.to_str().unwrap()]),
        "tar -tf",
    );
    let blobs: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("blobs/sha256/") && l.len() > 20)
        .collect();
    let unique: std::collections::BTreeSet<&&str> = blobs.iter().collect();
    assert_eq!(blobs.len(), unique.len(), "duplicate blobs in {listing}");
    run(
        docker().args(["load", "-i", tar.to_str().unwrap()]),
        "docker load",
    );
    assert_eq!(docker_run(&a), EXPECTED);
    assert_eq!(docker_run(&b), EXPECTED);
}

#[test]
fn docker_save_output_loads_into_rbuild() {
    if !(require_busybox() && require_docker()) {
        return;
    }
    let env = Env::new();
    let tag = unique_tag("roundtrip");
    let _cleanup = DockerImages(vec![tag.clone()]);
    let tar = build_docker_archive(&env, &tag);
    run(
        docker().args(["load", "-i", tar.to_str().unwrap()]),
        "docker load",
    );
    // What docker itself saves must load back into rbuild.
    let from_docker = env.path("from-docker.tar");
    run(
        docker().args(["save", "-o", from_docker.to_str().unwrap(), &tag]),
        "docker save",
    );
    let other = Env::new();
    let said = other.ok(&["load", "-i", from_docker.to_str().unwrap()]);
    assert!(said.contains(&format!("Loaded image: {tag}")), "{said}");
    let config = json(&other.ok(&["inspect", &tag]));
    assert_eq!(config[0]["config"]["WorkingDir"], "/app");
}
