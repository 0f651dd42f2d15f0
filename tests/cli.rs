//! The rbuild command without external tools: building, the image
//! commands, outputs, determinism, concurrency and bad input.

mod common;

use std::process::Command;

use common::*;

fn scratch_context(env: &Env) -> std::path::PathBuf {
    env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY dir /opt/dir\nCMD [\"/hello\"]\n",
            ),
            ("hello.txt", "hello\n"),
            ("dir/a", "a\n"),
            ("dir/nested/b", "b\n"),
        ],
    )
}

fn diff_ids(env: &Env, image: &str) -> Vec<String> {
    let config = json(&env.ok(&["inspect", image]));
    config[0]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn build_is_the_default_subcommand_and_images_lists_it() {
    let env = Env::new();
    let ctx = scratch_context(&env);
    let id = env.ok(&["-q", "-t", "app:v1", ctx.to_str().unwrap()]);
    assert!(
        id.trim().starts_with("sha256:") && id.trim().len() == 71,
        "{id}"
    );
    let id2 = env.ok(&["build", "-q", "-t", "other/app:v2", ctx.to_str().unwrap()]);
    assert!(id2.trim().starts_with("sha256:"));
    let images = env.ok(&["images"]);
    let lines: Vec<&str> = images.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY")
            && lines[0].contains("IMAGE ID")
            && lines[0].ends_with("SIZE"),
        "{images}"
    );
    assert!(
        images.contains("app ") && images.contains("v1") && images.contains(&id.trim()[7..19]),
        "{images}"
    );
    assert!(images.contains("other/app"), "{images}");
}

#[test]
fn unchanged_scratch_copy_gives_identical_layers() {
    let (a, b) = (Env::new(), Env::new());
    let ctx = scratch_context(&a);
    a.ok(&["-t", "x:1", ctx.to_str().unwrap()]);
    a.ok(&["-t", "x:2", ctx.to_str().unwrap()]);
    b.ok(&["-t", "x:1", ctx.to_str().unwrap()]);
    let first = diff_ids(&a, "x:1");
    assert_eq!(first.len(), 2);
    assert_eq!(first, diff_ids(&a, "x:2"));
    assert_eq!(
        first,
        diff_ids(&b, "x:1"),
        "a second root gives the same layers"
    );
}

#[test]
fn source_date_epoch_makes_the_whole_image_reproducible() {
    let (a, b) = (Env::new(), Env::new());
    let ctx = scratch_context(&a);
    let id = |env: &Env| {
        let out = env
            .rbuild()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["-q", ctx.to_str().unwrap()])
            .output()
            .unwrap();
        assert_success(&out, "rbuild build");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(id(&a), id(&b));
}

#[test]
fn tag_inspect_rmi() {
    let env = Env::new();
    let ctx = scratch_context(&env);
    let id = env.ok(&["-q", "-t", "app:v1", ctx.to_str().unwrap()]);
    env.ok(&["tag", "app:v1", "localhost:5000/team/app:prod"]);
    let config = json(&env.ok(&["inspect", "localhost:5000/team/app:prod"]));
    assert_eq!(config[0]["config"]["Cmd"], serde_json::json!(["/hello"]));
    assert_eq!(
        config[0]["history"][1]["created_by"],
        "COPY dir /opt/dir # buildkit"
    );
    assert_eq!(config[0]["history"][2]["empty_layer"], true);
    // By image ID prefix too.
    let by_id = json(&env.ok(&["inspect", &id.trim()[7..19]]));
    assert_eq!(by_id, config);
    let said = env.ok(&["rmi", "app:v1"]);
    assert_eq!(said.trim(), "Untagged: app:v1");
    assert!(!env.ok(&["images"]).lines().any(|l| l.starts_with("app ")));
    assert!(env.fails(&["inspect", "app:v1"]).contains("no such image"));
    env.ok(&["inspect", "localhost:5000/team/app:prod"]);
}

#[test]
fn iidfile_and_metadata_file_match_the_image() {
    let env = Env::new();
    let ctx = scratch_context(&env);
    let (iid, meta) = (env.path("iid"), env.path("meta.json"));
    let printed = env.ok(&[
        "-q",
        "-t",
        "m:1",
        "--iidfile",
        iid.to_str().unwrap(),
        "--metadata-file",
        meta.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let iid = std::fs::read_to_string(iid).unwrap();
    assert_eq!(printed.trim(), iid);
    let meta = json(&std::fs::read_to_string(meta).unwrap());
    assert_eq!(meta["containerimage.config.digest"], iid.as_str());
    assert_eq!(meta["image.name"], "docker.io/library/m:1");
    let digest = meta["containerimage.digest"].as_str().unwrap();
    assert_eq!(meta["containerimage.descriptor"]["digest"], digest);
    // The manifest blob is what the digest says.
    let manifest = std::fs::read(env.root().join("blobs/sha256").join(&digest[7..])).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest)), digest);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn local_and_tar_outputs_hold_the_root_filesystem() {
    if !require_busybox() {
        return;
    }
    let env = Env::new();
    env.load_busybox();
    let ctx = env.context(
        "c",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY f /etc/f\nWORKDIR /new/dir\n",
            ),
            ("f", "F\n"),
        ],
    );
    let out = env.path("out");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out.join("etc/f")).unwrap(), "F\n");
    assert!(out.join("new/dir").is_dir() && out.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(out.join("bin/sh")).unwrap().to_str(),
        Some("/bin/busybox")
    );
    let tar = env.path("rootfs.tar");
    env.ok(&[
        "-o",
        &format!("type=tar,dest={}", tar.display()),
        ctx.to_str().unwrap(),
    ]);
    let listing = run(
        Command::new("tar").args(["-tf", tar.to_str().unwrap()]),
        "tar -tf",
    );
    for wanted in ["etc/f", "new/dir/", "bin/busybox", "tmp/"] {
        assert!(
            listing.lines().any(|l| l == wanted),
            "{wanted} missing from rootfs tar"
        );
    }
}

#[test]
fn build_context_oci_layout_is_used_for_from() {
    if !require_busybox() {
        return;
    }
    let env = Env::new();
    let layout = busybox_layout().unwrap();
    let ctx = env.context(
        "c",
        &[("Dockerfile", "FROM base\nCOPY f /f\n"), ("f", "F\n")],
    );
    env.ok(&[
        "-t",
        "fromlayout:1",
        "--build-context",
        &format!("base=oci-layout://{}:latest", layout.display()),
        ctx.to_str().unwrap(),
    ]);
    let config = json(&env.ok(&["inspect", "fromlayout:1"]));
    assert_eq!(config[0]["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(
        config[0]["config"]["Cmd"],
        serde_json::json!(["sh"]),
        "the base's config is inherited"
    );
    let err = env.fails(&[
        "--build-context",
        &format!("base=oci-layout://{}:nosuchtag", layout.display()),
        ctx.to_str().unwrap(),
    ]);
    assert!(err.contains("nosuchtag"), "{err}");
}

#[test]
fn concurrent_builds_on_one_root() {
    let env = Env::new();
    let ctx = scratch_context(&env);
    let children: Vec<_> = (0..4)
        .map(|i| {
            env.rbuild()
                .args(["-q", "-t", &format!("c{i}:v1"), ctx.to_str().unwrap()])
                .output_spawned()
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert_success(&out, "concurrent rbuild");
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    let images = env.ok(&["images"]);
    for i in 0..4 {
        assert!(
            images.contains(&format!("c{i} ")),
            "c{i} missing:\n{images}"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let config = json(&env.ok(&["inspect", &format!("c{i}:v1")]));
        assert_eq!(
            config[0]["rootfs"]["diff_ids"].as_array().unwrap().len(),
            2,
            "{id}"
        );
    }
    // Nothing half-written is left in the store's scratch area.
    assert_eq!(
        std::fs::read_dir(env.root().join("tmp")).unwrap().count(),
        0
    );
}

trait SpawnOutput {
    fn output_spawned(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn output_spawned(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Every bad input gives one `error:` line naming the problem.
#[test]
fn bad_input_fails_cleanly() {
    let env = Env::new();
    let ctx = scratch_context(&env);
    let ctx = ctx.to_str().unwrap();
    // Progress lines (`#LINE ...`) may come before; the error is one line.
    let one_line = |stderr: &str, needle: &str| {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{needle:?} not in: {stderr}"
        );
    };
    one_line(
        &env.fails(&["-t", "a:1", &env.path("nope").display().to_string()]),
        "nope",
    );
    let dir_as_dockerfile = env.context("d", &[("Dockerfile/x", "")]);
    one_line(
        &env.fails(&[dir_as_dockerfile.to_str().unwrap()]),
        "reading Dockerfile",
    );
    one_line(
        &env.fails(&["-o", "type=bogus,dest=x", ctx]),
        "unknown output type \"bogus\"",
    );
    one_line(&env.fails(&["-t", "UPPER:case", ctx]), "must be lowercase");
    let missing = env.context("m", &[("Dockerfile", "FROM scratch\nCOPY missing.txt /\n")]);
    one_line(
        &env.fails(&[missing.to_str().unwrap()]),
        "Dockerfile:2: COPY failed: \"missing.txt\": not found",
    );
    // Dockerfile mistakes point at the line and the word, with a caret.
    let typo = env.context("t", &[("Dockerfile", "FROM scratch\n  FORM scratch\n")]);
    let err = env.fails(&[typo.to_str().unwrap()]);
    assert_eq!(
        err.trim_end(),
        "error: Dockerfile:2:3: unknown instruction: FORM (did you mean FROM?)\n 2 |   FORM scratch\n   |   ^^^^"
    );
    // A base image that is not in the store is pulled; offline (as tests
    // are), that fails naming the line, the image and the registry.
    let nobase = env.context("n", &[("Dockerfile", "FROM nosuchimage:1\n")]);
    let err = env.fails(&[nobase.to_str().unwrap()]);
    assert!(
        err.starts_with(
            "error: Dockerfile:1:1: pulling nosuchimage:1: docker.io/library/nosuchimage"
        ),
        "{err}"
    );
    // The cause is said once, not once per wrapper.
    assert_eq!(err.matches("error sending request").count(), 1, "{err}");
    let err = env.fails(&["--bogus-flag", ctx]);
    assert!(err.contains("--bogus-flag"), "{err}");
    one_line(
        &env.fails(&["load", "-i", &env.path("nope.tar").display().to_string()]),
        "nope.tar",
    );
    // A failed docker export leaves no partial file behind.
    let dest = env.path("out.tar");
    env.fails(&[
        "-o",
        &format!("type=docker,dest={}", dest.display()),
        missing.to_str().unwrap(),
    ]);
    assert!(!dest.exists());
}

#[test]
fn target_selects_a_stage_and_unused_stages_are_not_built() {
    let env = Env::new();
    let ctx = env.context(
        "stages",
        &[
            (
                "Dockerfile",
                "ARG V=1\nFROM scratch AS one\nCOPY f /one\nCMD [\"x\"]\n\
                 FROM one AS two\nARG V\nENTRYPOINT [\"/e\"]\nLABEL v=$V\n\
                 FROM scratch AS broken\nCOPY does-not-exist /\n",
            ),
            ("f", "f\n"),
        ],
    );
    // The last stage is the default target, and it is broken.
    let err = env.fails(&[ctx.to_str().unwrap()]);
    assert!(err.contains("Dockerfile:10: COPY failed"), "{err}");
    env.ok(&[
        "--target",
        "two",
        "-t",
        "two:1",
        "--build-arg",
        "V=7",
        ctx.to_str().unwrap(),
    ]);
    let two = json(&env.ok(&["inspect", "two:1"]));
    assert_eq!(two[0]["config"]["Labels"]["v"], "7");
    // ENTRYPOINT resets a CMD the stage inherited (BuildKit keeps only a
    // CMD set earlier in the same stage).
    assert_eq!(two[0]["config"]["Entrypoint"], serde_json::json!(["/e"]));
    assert!(two[0]["config"]["Cmd"].is_null());
    assert_eq!(two[0]["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    let err = env.fails(&["--target", "nope", ctx.to_str().unwrap()]);
    assert!(
        err.contains("target stage \"nope\" could not be found"),
        "{err}"
    );
    // A build arg nothing uses is reported, not fatal.
    let out = env
        .rbuild()
        .args([
            "--target",
            "one",
            "--build-arg",
            "UNUSED=1",
            ctx.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_success(&out, "rbuild --build-arg UNUSED");
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNUSED"));
}

#[test]
fn check_reports_build_checks_without_building() {
    let env = Env::new();
    let ctx = env.context(
        "chk",
        &[
            (
                "Dockerfile",
                "# syntax=docker/dockerfile:1\nFROM scratch as Build\nCOPY --from=nowhere:1 /a /b\nENV DB_PASSWORD=x\nCMD echo $HOME\nLABEL v=$UNDEFINED\nRUN echo never runs\n",
            ),
        ],
    );
    let out = env
        .rbuild()
        .args(["check", ctx.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out, "rbuild check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "using rbuild's built-in Dockerfile frontend",
        "Dockerfile:2: warning: FromAsCasing:",
        "Dockerfile:2: warning: StageNameCasing: Stage name 'Build' should be lowercase",
        "Dockerfile:4: warning: SecretsUsedInArgOrEnv:",
        "Dockerfile:5: warning: JSONArgsRecommended:",
        "Dockerfile:6: warning: UndefinedVar: Usage of undefined variable '$UNDEFINED'",
        "note: base image \"nowhere:1\" is not in rbuild's store",
        "Check complete, 5 warnings found.",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
    // `build --check` is the same, and nothing was built.
    let out = env
        .rbuild()
        .args(["build", "--check", ctx.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out, "rbuild build --check");
    assert_eq!(env.ok(&["images", "-q"]), "");
    // Skipped rules are not reported; error=true turns findings into failure.
    let strict = env.context(
        "strict",
        &[(
            "Dockerfile",
            "# check=skip=JSONArgsRecommended;error=true\nFROM scratch\nCMD echo\nMAINTAINER me\n",
        )],
    );
    let err = env.fails(&["check", strict.to_str().unwrap()]);
    assert!(
        err.contains("MaintainerDeprecated") && !err.contains("JSONArgsRecommended"),
        "{err}"
    );
    // Errors are errors.
    let broken = env.context(
        "broken",
        &[("Dockerfile", "FROM scratch\nCOPY --nope a b\n")],
    );
    let err = env.fails(&["check", broken.to_str().unwrap()]);
    assert!(
        err.contains("Dockerfile:2:6: unknown flag: --nope for COPY"),
        "{err}"
    );
}

#[test]
fn debug_graph_prints_content_addressed_nodes() {
    let env = Env::new();
    let ctx = scratch_context(&env);
    let text = env.ok(&["debug", "graph", ctx.to_str().unwrap()]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "scratch, two contexts, two copies:\n{text}");
    assert!(lines[0].ends_with("n0 scratch"), "{text}");
    assert!(text.contains("copy [\"dir\"] -> /opt/dir"), "{text}");
    // Same inputs, same digests; a changed argument changes them.
    assert_eq!(text, env.ok(&["debug", "graph", ctx.to_str().unwrap()]));
    let dot = env.ok(&["debug", "graph", "--format", "dot", ctx.to_str().unwrap()]);
    assert!(
        dot.starts_with("digraph rbuild {") && dot.contains("n0 -> n2;"),
        "{dot}"
    );
}

#[test]
fn dockerignore_hides_files_and_dockerfile_specific_one_wins() {
    let env = Env::new();
    let ctx = env.context(
        "ign",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /\n"),
            ("app.Dockerfile", "FROM scratch\nCOPY . /\n"),
            ("app.Dockerfile.dockerignore", "*.txt\n"),
            (".dockerignore", "*.md\n"),
            ("a.txt", "a\n"),
            ("b.md", "b\n"),
        ],
    );
    let plain = env.path("plain");
    env.ok(&["-o", plain.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert!(plain.join("a.txt").exists() && !plain.join("b.md").exists());
    let specific = env.path("specific");
    let dockerfile = ctx.join("app.Dockerfile");
    env.ok(&[
        "-f",
        dockerfile.to_str().unwrap(),
        "-o",
        specific.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert!(!specific.join("a.txt").exists() && specific.join("b.md").exists());
    // An excluded file named directly is not found, as in docker.
    let direct = env.context(
        "direct",
        &[
            ("Dockerfile", "FROM scratch\nCOPY a.txt /\n"),
            (".dockerignore", "a.txt\n"),
            ("a.txt", "a\n"),
        ],
    );
    let err = env.fails(&[direct.to_str().unwrap()]);
    assert!(
        err.contains("\"a.txt\": not found in the build context"),
        "{err}"
    );
    let bad = env.context(
        "badpattern",
        &[("Dockerfile", "FROM scratch\n"), (".dockerignore", "[\n")],
    );
    let err = env.fails(&[bad.to_str().unwrap()]);
    assert!(
        err.contains(".dockerignore") && err.contains("invalid pattern"),
        "{err}"
    );
}

#[test]
fn copy_heredocs_write_files() {
    let env = Env::new();
    let ctx = env.context(
        "here",
        &[(
            "Dockerfile",
            "FROM scratch\nENV NAME=rbuild\nCOPY <<hello.txt <<\"raw.sh\" /etc/docs/\nhello $NAME\nhello.txt\necho $NAME\nraw.sh\nCOPY --chmod=0755 <<-EOT /bin/run\n\t#!/bin/sh\n\texec true\n\tEOT\n",
        )],
    );
    let out = env.path("out");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(out.join("etc/docs/hello.txt")).unwrap(),
        "hello rbuild\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("etc/docs/raw.sh")).unwrap(),
        "echo $NAME\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("bin/run")).unwrap(),
        "#!/bin/sh\nexec true\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(out.join("bin/run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

#[test]
fn copy_exclude_and_parents() {
    let env = Env::new();
    let ctx = env.context(
        "flags",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY --exclude=*.log --exclude=tmp app/ /app/\nCOPY --parents src/a/x.txt src/b/y.txt /p/\n\
                 COPY --parents ./src/./a/x.txt /pivot/\nCOPY --exclude=*.md *.txt *.md /files/\n",
            ),
            ("app/main.go", "package main\n"),
            ("app/debug.log", "log\n"),
            ("app/tmp/t", "t\n"),
            ("app/sub/keep.txt", "keep\n"),
            ("app/sub/x.log", "patterns are anchored at the copied directory\n"),
            ("src/a/x.txt", "x\n"),
            ("src/b/y.txt", "y\n"),
            ("top.txt", "top\n"),
            ("readme.md", "readme\n"),
        ],
    );
    let out = env.path("out");
    env.ok(&["-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    for present in [
        "app/main.go",
        "app/sub/keep.txt",
        "app/sub/x.log",
        "p/src/a/x.txt",
        "p/src/b/y.txt",
        "pivot/a/x.txt",
        "files/top.txt",
    ] {
        assert!(out.join(present).is_file(), "{present} missing");
    }
    for absent in ["app/debug.log", "app/tmp", "files/readme.md", "pivot/src"] {
        assert!(!out.join(absent).exists(), "{absent} should not be there");
    }
}
