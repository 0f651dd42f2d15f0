//! OCI layouts rbuild writes, read by skopeo and umoci.

mod common;

use std::process::Command;

use common::*;

#[test]
fn oci_layout_is_accepted_by_skopeo_and_umoci() {
    if !(require_busybox() && require_command("skopeo") && require_command("umoci")) {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "app",
        &[
            ("Dockerfile", "FROM busybox\nCOPY --chown=app:staff data/ /srv/data/\nENV MODE=prod\nLABEL org.example.team=build\nEXPOSE 8080\nENTRYPOINT [\"/bin/sh\"]\nCMD [\"-c\", \"true\"]\n"),
            ("data/a.txt", "alpha\n"),
            ("data/sub/b.txt", "beta\n"),
        ],
    );
    let layout = env.path("layout");
    let metadata = env.path("meta.json");
    env.ok(&[
        "-t",
        "app:v1",
        "-o",
        &format!("type=oci,dest={},tar=false", layout.display()),
        "--metadata-file",
        metadata.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let meta = json(&std::fs::read_to_string(&metadata).unwrap());

    let inspect = json(&run(
        Command::new("skopeo").args(["inspect", &format!("oci:{}:v1", layout.display())]),
        "skopeo inspect",
    ));
    assert_eq!(inspect["Digest"], meta["containerimage.digest"]);
    assert_eq!(inspect["Labels"]["org.example.team"], "build");
    assert!(
        inspect["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "MODE=prod")
    );

    let bundle = env.path("bundle");
    run(
        Command::new("umoci").args([
            "unpack",
            "--image",
            &format!("{}:v1", layout.display()),
            bundle.to_str().unwrap(),
        ]),
        "umoci unpack",
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("srv/data/a.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("srv/data/sub/b.txt")).unwrap(),
        "beta\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    use std::os::unix::fs::MetadataExt;
    let meta_b = std::fs::metadata(rootfs.join("srv/data/sub/b.txt")).unwrap();
    assert_eq!(
        (meta_b.uid(), meta_b.gid()),
        (1000, 50),
        "--chown=app:staff resolved through the image's passwd/group"
    );
    let runtime = json(&std::fs::read_to_string(bundle.join("config.json")).unwrap());
    assert_eq!(
        runtime["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "true"])
    );

    // The tarball form is the same layout.
    let tarball = env.path("layout.tar");
    env.ok(&[
        "-t",
        "app:v1",
        "-o",
        &format!("type=oci,dest={}", tarball.display()),
        ctx.to_str().unwrap(),
    ]);
    let inspect = json(&run(
        Command::new("skopeo").args(["inspect", &format!("oci-archive:{}", tarball.display())]),
        "skopeo inspect oci-archive",
    ));
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
}
