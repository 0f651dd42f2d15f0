//! Layer compression of exports: every choice is read back by the tools
//! users have (docker load for docker archives, umoci and skopeo for OCI
//! layouts), and compressed exports are as reproducible as the image.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Env, assert_success, docker, json, require_command, require_docker, require_run, run,
    unique_tag,
};

const DOCKERFILE: &str = "FROM busybox\n\
    RUN echo compressed-export > /made && seq 1 20000 > /numbers\n\
    CMD [\"cat\", \"/made\"]\n";

fn build(env: &Env, output: &str, epoch: Option<&str>) {
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let mut cmd = env.rbuild();
    if let Some(epoch) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", epoch);
    }
    let out = cmd
        .args(["build", "--progress=plain", "-t", "comp:1", "-o", output])
        .arg(&ctx)
        .output()
        .unwrap();
    assert_success(&out, &format!("rbuild build -o {output}"));
}

/// The media types of the layers of the one image in an OCI layout.
fn layer_types(layout: &Path) -> Vec<String> {
    let index = json(&std::fs::read_to_string(layout.join("index.json")).unwrap());
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let manifest = json(&std::fs::read_to_string(blob).unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

fn umoci_unpack(env: &Env, layout: &Path) -> PathBuf {
    let bundle = env.path(&format!(
        "bundle-{}",
        layout.file_name().unwrap().to_string_lossy()
    ));
    run(
        Command::new("umoci").args([
            "unpack",
            "--image",
            &format!("{}:1", layout.display()),
            bundle.to_str().unwrap(),
        ]),
        "umoci unpack",
    );
    bundle.join("rootfs")
}

#[test]
fn oci_layouts_gzip_by_default_and_zstd_on_request() {
    if !require_run() || !require_command("umoci") || !require_command("skopeo") {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";

    let gzip = env.path("gzip");
    build(
        &env,
        &format!("type=oci,dest={},tar=false", gzip.display()),
        None,
    );
    assert_eq!(layer_types(&gzip), [GZIP, GZIP]);
    let rootfs = umoci_unpack(&env, &gzip);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("made")).unwrap(),
        "compressed-export\n"
    );

    // zstd compresses what rbuild made; the base's gzip layer stays as it
    // is unless forced, as with BuildKit.
    let zstd = env.path("zstd");
    build(
        &env,
        &format!(
            "type=oci,dest={},tar=false,compression=zstd",
            zstd.display()
        ),
        None,
    );
    assert_eq!(layer_types(&zstd), [GZIP, ZSTD]);
    let forced = env.path("forced");
    build(
        &env,
        &format!(
            "type=oci,dest={},tar=false,compression=zstd,compression-level=19,force-compression=true",
            forced.display()
        ),
        None,
    );
    assert_eq!(layer_types(&forced), [ZSTD, ZSTD]);
    // umoci 0.4 has no zstd: the reference zstd decompresses every layer
    // to the diff ID the config names, and skopeo copies the layout,
    // verifying every blob's digest.
    if require_command("zstd") {
        let index = json(&std::fs::read_to_string(forced.join("index.json")).unwrap());
        let blob = |d: &str| {
            forced
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
        };
        let manifest = json(
            &std::fs::read_to_string(blob(index["manifests"][0]["digest"].as_str().unwrap()))
                .unwrap(),
        );
        let config = json(
            &std::fs::read_to_string(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
        );
        for (layer, diff_id) in manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
        {
            let path = blob(layer["digest"].as_str().unwrap());
            let sum = run(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("zstd -dc {} | sha256sum", path.display())),
                "zstd -dc",
            );
            assert_eq!(
                format!("sha256:{}", sum.split_whitespace().next().unwrap()),
                diff_id.as_str().unwrap()
            );
        }
    }
    let copy = env.path("copied");
    run(
        Command::new("skopeo").args([
            "copy",
            &format!("oci:{}:1", forced.display()),
            &format!("oci:{}:1", copy.display()),
        ]),
        "skopeo copy of the zstd layout",
    );

    let plain = env.path("plain");
    build(
        &env,
        &format!(
            "type=oci,dest={},tar=false,compression=uncompressed",
            plain.display()
        ),
        None,
    );
    assert_eq!(layer_types(&plain), [PLAIN, PLAIN]);
    let rootfs = umoci_unpack(&env, &plain);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("numbers"))
            .unwrap()
            .lines()
            .count(),
        20000
    );
}

#[test]
fn docker_archives_load_uncompressed_and_gzip() {
    if !require_run() || !require_docker() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    for compression in ["uncompressed", "gzip"] {
        let tag = unique_tag(&format!("rbuild-compression-{compression}"));
        let archive = env.path(&format!("{compression}.tar"));
        let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE)]);
        let out = env
            .rbuild()
            .args(["build", "-q", "-t", &tag, "-o"])
            .arg(format!(
                "type=docker,dest={},compression={compression}",
                archive.display()
            ))
            .arg(&ctx)
            .output()
            .unwrap();
        assert_success(&out, "rbuild build -o type=docker");
        // What the archive holds: tar or gzip layers.
        let listing = run(Command::new("tar").arg("-tvf").arg(&archive), "tar -t");
        assert!(listing.contains("blobs/sha256/"), "{listing}");
        let loaded = docker()
            .arg("load")
            .arg("-i")
            .arg(&archive)
            .output()
            .unwrap();
        assert_success(&loaded, "docker load");
        let ran = docker()
            .args(["run", "--rm", "--network=none", &tag])
            .output()
            .unwrap();
        let _ = docker().args(["rmi", &tag]).output();
        assert_success(&ran, "docker run");
        assert_eq!(String::from_utf8_lossy(&ran.stdout), "compressed-export\n");
    }
}

#[test]
fn compressed_exports_are_reproducible_across_roots() {
    if !require_run() {
        return;
    }
    let (a, b) = (Env::new(), Env::new());
    for env in [&a, &b] {
        env.load_busybox();
    }
    let digest = |env: &Env, compression: &str| {
        let layout = env.path(&format!("layout-{compression}"));
        build(
            env,
            &format!(
                "type=oci,dest={},tar=false,compression={compression},force-compression=true",
                layout.display()
            ),
            Some("1700000000"),
        );
        let index = json(&std::fs::read_to_string(layout.join("index.json")).unwrap());
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for compression in ["gzip", "zstd"] {
        let first = digest(&a, compression);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(first, digest(&b, compression), "{compression}");
    }
    // Exporting again reuses what the layers became.
    let blobs = |env: &Env| {
        std::fs::read_dir(env.root().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs(&a);
    digest(&a, "gzip");
    assert_eq!(blobs(&a), before);
}
