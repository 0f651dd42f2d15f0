//! rbuild against a real registry (Debian's docker-registry, distribution
//! 2.8, on 127.0.0.1): pulling bases through a docker.io mirror, by digest
//! and from a multi-platform index; pushing and pulling the result back
//! with docker and skopeo; htpasswd and token auth; TLS with a private CA;
//! and a fault-injecting proxy between rbuild and the registry.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::fault_proxy::{Cut, Fault, FaultKind, FaultProxy, Rule};
use common::registry::{Registry, require_htpasswd, require_registry};
use common::token_server::TokenServer;
use common::{Env, assert_success, docker, json, require_docker, require_run};

/// An rbuild environment that talks to registries: its own config file and
/// its own docker config directory (credentials), never the user's.
struct Client {
    env: Env,
    config: PathBuf,
    docker_config: PathBuf,
}

impl Client {
    fn new(config: &str) -> Client {
        let env = Env::new();
        let config_path = env.path("rbuild.toml");
        std::fs::write(&config_path, config).unwrap();
        let docker_config = env.path("docker-config");
        std::fs::create_dir_all(&docker_config).unwrap();
        Client {
            env,
            config: config_path,
            docker_config,
        }
    }

    /// A client whose docker.io is `registry`'s host (a mirror).
    fn mirroring(registry: &str) -> Client {
        Client::new(&format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{registry}\"]\n[transfer]\nretry-time = \"20s\"\n"
        ))
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.rbuild();
        c.arg("--config")
            .arg(&self.config)
            .env("DOCKER_CONFIG", &self.docker_config)
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run rbuild");
        assert_success(&out, &format!("rbuild {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ok_with_stderr(&self, args: &[&str]) -> (String, String) {
        let out = self.cmd(args).output().expect("run rbuild");
        assert_success(&out, &format!("rbuild {}", args.join(" ")));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run rbuild");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "rbuild {} should fail; stderr: {stderr}",
            args.join(" ")
        );
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        stderr
    }

    fn login(&self, server: &str, user: &str, password: &str) -> std::process::Output {
        let mut child = self
            .cmd(&["login", server, "-u", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rbuild login");
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    }

    fn context(&self, dockerfile: &str) -> String {
        self.env
            .context("ctx", &[("Dockerfile", dockerfile)])
            .display()
            .to_string()
    }

    /// Builds the Dockerfile and writes the image's root filesystem out.
    fn build_rootfs(&self, dockerfile: &str, extra: &[&str]) -> PathBuf {
        let ctx = self.context(dockerfile);
        let out = self.env.path("rootfs");
        let _ = std::fs::remove_dir_all(&out);
        let dest = format!("type=local,dest={}", out.display());
        let mut args = vec!["build", "--progress=plain", "-o", &dest];
        args.extend_from_slice(extra);
        args.push(&ctx);
        self.ok(&args);
        out
    }

    fn metadata(&self, dockerfile: &str, extra: &[&str]) -> serde_json::Value {
        let ctx = self.context(dockerfile);
        let file = self.env.path("metadata.json");
        let file_arg = file.display().to_string();
        let mut args = vec!["build", "--progress=plain", "--metadata-file", &file_arg];
        args.extend_from_slice(extra);
        args.push(&ctx);
        self.ok(&args);
        json(&std::fs::read_to_string(&file).unwrap())
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn from_pulls_through_a_docker_io_mirror_by_tag_and_by_digest() {
    if !require_registry() || !require_run() {
        return;
    }
    let registry = Registry::start();
    let digest = registry.seed_busybox("library/busybox:latest");
    let client = Client::mirroring(&registry.host());

    let rootfs = client.build_rootfs("FROM busybox\nRUN echo pulled > /out\n", &[]);
    assert_eq!(read(&rootfs.join("out")), "pulled\n");
    let fetched = registry.count_requests("GET", "/v2/library/busybox/blobs/");
    assert_eq!(fetched, 2, "the config and the one layer are fetched once");

    // Present now: the next build does not ask the registry at all.
    let before = registry.access_log().len();
    client.build_rootfs("FROM busybox\nRUN echo again > /out\n", &[]);
    assert_eq!(
        registry.access_log().len(),
        before,
        "no request for a stored base"
    );
    // --pull asks again, but the blobs are not downloaded twice.
    client.build_rootfs("FROM busybox\nRUN echo again > /out\n", &["--pull"]);
    assert!(registry.count_requests("GET", "/v2/library/busybox/manifests/") >= 2);
    assert_eq!(
        registry.count_requests("GET", "/v2/library/busybox/blobs/"),
        fetched
    );

    // By digest, in a fresh root.
    let by_digest = Client::mirroring(&registry.host());
    let rootfs = by_digest.build_rootfs(
        &format!("FROM busybox@{digest}\nRUN echo by-digest > /out\n"),
        &[],
    );
    assert_eq!(read(&rootfs.join("out")), "by-digest\n");
    // `rbuild pull` prints the digest and the name.
    let out = by_digest.ok(&["pull", "busybox"]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(out.contains("docker.io/library/busybox:latest"), "{out}");

    // A digest the registry does not have is a clear error.
    let missing = format!("sha256:{}", "0".repeat(64));
    let err = by_digest.fails(&["pull", &format!("busybox@{missing}")]);
    assert!(err.contains("manifest unknown"), "{err}");
}

#[test]
fn a_multi_platform_index_resolves_to_the_host_platform() {
    if !require_registry() || !require_run() {
        return;
    }
    let registry = Registry::start();
    let multi = registry.push_multi_platform("multi:1");
    let client = Client::new("");
    let image = registry.image("multi:1");
    let rootfs = client.build_rootfs(&format!("FROM {image}\nRUN cp /platform /seen\n"), &[]);
    assert_eq!(read(&rootfs.join("seen")).trim(), "amd64");
    // The non-host manifest's layer was never downloaded.
    let other = multi
        .manifests
        .iter()
        .find(|(p, _)| p != "linux/amd64")
        .map(|(_, d)| d.clone())
        .unwrap();
    let other_manifest = registry.raw_manifest(&format!("multi@{other}"));
    let other_layer = json(&String::from_utf8_lossy(&other_manifest))["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        registry.count_requests("GET", &format!("/v2/multi/blobs/{other_layer}")),
        0
    );
    // By the index's digest too.
    let by_digest = Client::new("");
    let rootfs = by_digest.build_rootfs(
        &format!(
            "FROM {}@{}\nRUN cp /platform /seen\n",
            registry.host() + "/multi",
            multi.index
        ),
        &[],
    );
    assert_eq!(read(&rootfs.join("seen")).trim(), "amd64");
}

#[test]
fn push_then_docker_runs_it_skopeo_agrees_and_a_second_push_uploads_nothing() {
    if !require_registry() || !require_run() {
        return;
    }
    let registry = Registry::start();
    registry.seed_busybox("library/busybox:latest");
    let client = Client::mirroring(&registry.host());
    let app = registry.image("team/app:v1");
    let app2 = registry.image("team/app:v2");
    let metadata = client.metadata(
        "FROM busybox\nRUN echo pushed-by-rbuild > /hello\nCMD [\"cat\", \"/hello\"]\n",
        &["-t", &app, "-t", &app2, "--push"],
    );
    let digest = metadata["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(registry.manifest_digest("team/app:v1"), digest);
    assert_eq!(registry.manifest_digest("team/app:v2"), digest);
    let inspect = registry
        .skopeo()
        .arg("inspect")
        .args(registry.skopeo_opts(""))
        .arg(format!("docker://{app}"))
        .output()
        .unwrap();
    assert_success(&inspect, "skopeo inspect");
    assert_eq!(
        json(&String::from_utf8_lossy(&inspect.stdout))["Digest"],
        digest.as_str()
    );
    let uploads = registry.blobs_uploaded("team/app");
    assert_eq!(uploads, 3, "busybox layer, the RUN layer, the config");

    // `rbuild push` again: every blob is there, only the manifest is PUT.
    let (out, err) = client.ok_with_stderr(&["push", &app]);
    assert!(
        out.contains(&format!("v1: digest: {digest} size: ")),
        "{out}"
    );
    assert!(err.contains("pushed 0 blobs"), "{err}");
    assert_eq!(registry.blobs_uploaded("team/app"), uploads);

    // Another repository of the same registry: blobs are mounted, not sent.
    let other = registry.image("other/app:v1");
    client.ok(&["tag", &app, &other]);
    let (_, err) = client.ok_with_stderr(&["push", &other]);
    assert!(err.contains("mounted 3"), "{err}");
    assert_eq!(registry.blobs_uploaded("other/app"), 0);
    assert_eq!(registry.blob_mounts("other/app"), 3);

    // The same image through --output type=registry.
    let reg_out = registry.image("team/app:v3");
    let name = format!("type=registry,name={reg_out}");
    client.metadata(
        "FROM busybox\nRUN echo pushed-by-rbuild > /hello\nCMD [\"cat\", \"/hello\"]\n",
        &["--output", &name],
    );
    assert_eq!(registry.manifest_digest("team/app:v3"), digest);

    if require_docker() {
        let pulled = docker().args(["pull", &app]).output().unwrap();
        assert_success(&pulled, "docker pull");
        let run = docker()
            .args(["run", "--rm", "--network=none", &app])
            .output()
            .unwrap();
        assert_success(&run, "docker run");
        assert_eq!(String::from_utf8_lossy(&run.stdout), "pushed-by-rbuild\n");
        let _ = docker().args(["rmi", &app]).output();
    }
}

#[test]
fn basic_auth_logs_in_pushes_and_pulls_and_refuses_wrong_passwords() {
    if !require_htpasswd() || !require_run() {
        return;
    }
    let registry = Registry::with_basic_auth("alice", "s3cret-pw");
    registry.seed_busybox("library/busybox:latest");
    let client = Client::mirroring(&registry.host());
    let host = registry.host();

    // Without credentials: a clear error naming the registry.
    let err = client.fails(&["pull", &registry.image("library/busybox")]);
    assert!(err.contains(&host) && err.contains("rbuild login"), "{err}");

    let wrong = client.login(&host, "alice", "wrong-pw");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        stderr.contains("refused") && stderr.contains("alice"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-pw"), "{stderr}");
    assert!(!client.docker_config.join("config.json").exists());

    let right = client.login(&host, "alice", "s3cret-pw");
    assert_success(&right, "rbuild login");
    assert!(String::from_utf8_lossy(&right.stdout).contains("Login Succeeded"));
    let config = json(&read(&client.docker_config.join("config.json")));
    assert!(config["auths"][&host]["auth"].is_string(), "{config}");

    let app = registry.image("alice/app:v1");
    client.ok(&[
        "build",
        "-t",
        &app,
        "--push",
        &client.context("FROM busybox\nRUN echo x > /x\n"),
    ]);
    let fresh = Client::mirroring(&host);
    std::fs::copy(
        client.docker_config.join("config.json"),
        fresh.docker_config.join("config.json"),
    )
    .unwrap();
    let out = fresh.ok(&["pull", &app]);
    assert!(
        out.contains(&registry.manifest_digest("alice/app:v1")),
        "{out}"
    );

    let out = client.ok(&["logout", &host]);
    assert!(out.contains("Removing login credentials"), "{out}");
    let err = client.fails(&["push", &app]);
    assert!(err.contains("rbuild login"), "{err}");
}

#[test]
fn bearer_tokens_from_a_token_server() {
    if !require_registry() || !require_run() {
        return;
    }
    let tokens = TokenServer::start("bob", "t0ken-pw");
    let registry = Registry::with_token_auth(&tokens);
    registry.seed_busybox("library/busybox:latest");
    let host = registry.host();
    let client = Client::mirroring(&host);

    let wrong = client.login(&host, "bob", "nope");
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains(&host),
        "{stderr}"
    );
    assert!(tokens.bad_credentials() >= 1);

    assert_success(&client.login(&host, "bob", "t0ken-pw"), "rbuild login");
    let issued = tokens.tokens_issued();
    let app = registry.image("bob/app:v1");
    client.ok(&[
        "build",
        "-t",
        &app,
        "--push",
        &client.context("FROM busybox\nRUN echo y > /y\n"),
    ]);
    assert!(tokens.tokens_issued() > issued, "push used tokens");
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.scopes.iter().any(|s| s == "repository:bob/app:pull,push")),
        "{:?}",
        tokens.requests()
    );
    let fresh = Client::new("");
    std::fs::copy(
        client.docker_config.join("config.json"),
        fresh.docker_config.join("config.json"),
    )
    .unwrap();
    let rootfs = fresh.build_rootfs(&format!("FROM {app}\nRUN cat /y > /z\n"), &[]);
    assert_eq!(read(&rootfs.join("z")), "y\n");
}

#[test]
fn tls_with_a_private_ca_from_the_config() {
    if !require_registry() || !require_run() {
        return;
    }
    let registry = Registry::with_tls();
    registry.seed_busybox("library/busybox:latest");
    let host = registry.host();
    let ca = registry.tls_ca().unwrap();
    // Loopback defaults to HTTP; this registry speaks HTTPS.
    let client = Client::new(&format!(
        "[registry.\"{host}\"]\nhttp = false\nca = [\"{}\"]\n",
        ca.display()
    ));
    let rootfs = client.build_rootfs(
        &format!("FROM {host}/library/busybox\nRUN echo tls > /t\n"),
        &["-t", &format!("{host}/tls/app:1"), "--push"],
    );
    assert_eq!(read(&rootfs.join("t")), "tls\n");
    assert!(registry.blobs_uploaded("tls/app") > 0);

    let untrusting = Client::new(&format!("[registry.\"{host}\"]\nhttp = false\n"));
    let err = untrusting.fails(&["pull", &format!("{host}/library/busybox")]);
    assert!(
        err.contains(&host) && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn pulls_and_pushes_complete_through_dropped_connections_500s_and_429s() {
    if !require_registry() || !require_run() {
        return;
    }
    let registry = Registry::start();
    let busybox = registry.seed_busybox("library/busybox:latest");
    let proxy = FaultProxy::start(
        &registry.host(),
        vec![
            Rule::new(Fault::too_many_requests())
                .method("GET")
                .path_contains("/manifests/")
                .limit(1),
            Rule::new(Fault::Status(500))
                .method("GET")
                .path_contains("/manifests/")
                .limit(1),
            Rule::new(Fault::Truncate(Cut::Half))
                .method("GET")
                .path_contains("/blobs/sha256:")
                .limit(2),
            Rule::new(Fault::Status(503))
                .method("GET")
                .path_contains("/blobs/sha256:")
                .limit(1),
            Rule::new(Fault::Close).method("HEAD").limit(1),
            Rule::new(Fault::Status(502))
                .method("POST")
                .path_contains("/blobs/uploads/")
                .limit(1),
            Rule::new(Fault::Truncate(Cut::Half))
                .method("PUT")
                .path_contains("/blobs/uploads/")
                .limit(1),
            Rule::new(Fault::Status(500))
                .method("PUT")
                .path_contains("/manifests/")
                .limit(1),
            Rule::new(Fault::too_many_requests())
                .method("PUT")
                .path_contains("/manifests/")
                .limit(1),
            // The second chunk of an upload is cut off: the upload starts
            // over (a resent chunk would be appended twice).
            Rule::new(Fault::Close).method("PATCH").every(2).limit(1),
        ],
    );
    // 1 MB chunks: the 3 MB layer goes up in PATCHes.
    let client = Client::new(&format!(
        "[registry.\"docker.io\"]\nmirrors = [\"{}\"]\n[transfer]\nretry-time = \"20s\"\nchunk-size = \"1MB\"\n",
        proxy.host()
    ));
    let app = format!("{}/faulty/app:v1", proxy.host());
    let metadata = client.metadata(
        "FROM busybox\nRUN head -c 3000000 /dev/urandom > /blob\n",
        &["-t", &app, "--push"],
    );
    // Every kind of fault was injected, and the results are right anyway.
    let seen: Vec<FaultKind> = proxy.requests().iter().filter_map(|r| r.fault).collect();
    for kind in [
        FaultKind::TooManyRequests,
        FaultKind::Status,
        FaultKind::Truncate,
        FaultKind::Close,
    ] {
        assert!(seen.contains(&kind), "{kind:?} not injected: {seen:?}");
    }
    for rule in 0..10 {
        assert!(proxy.rule_fired(rule) >= 1, "rule {rule} never fired");
    }
    let digest = metadata["containerimage.digest"].as_str().unwrap();
    assert_eq!(registry.manifest_digest("faulty/app:v1"), digest);
    assert!(registry.count_requests("PATCH", "/v2/faulty/app/blobs/uploads/") >= 3);
    // The pushed layers are intact: skopeo copies them out, verifying digests.
    let copied = registry
        .skopeo()
        .args(["copy"])
        .args(registry.skopeo_opts("src-"))
        .arg(format!("docker://{}", registry.image("faulty/app:v1")))
        .arg(format!("oci:{}", client.env.path("copied").display()))
        .output()
        .unwrap();
    assert_success(&copied, "skopeo copy of the pushed image");
    // What was pulled through the faults is what the registry has.
    let images = client.ok(&["images", "--no-trunc"]);
    assert!(images.contains("busybox"), "{images}");
    let pulled = client.ok(&["pull", "-q", "busybox"]);
    assert!(
        pulled.contains("docker.io/library/busybox:latest"),
        "{pulled}"
    );
    let out = client.ok(&["pull", "busybox"]);
    assert!(out.contains(&busybox), "{out}");
}

#[test]
fn a_registry_that_keeps_failing_is_named_with_its_status() {
    if !require_registry() {
        return;
    }
    let registry = Registry::start();
    registry.seed_busybox("library/busybox:latest");
    let proxy = FaultProxy::start(
        &registry.host(),
        vec![Rule::new(Fault::Status(500)).path_contains("/manifests/")],
    );
    let client = Client::new("[transfer]\nretry-time = \"2s\"\n");
    let image = format!("{}/library/busybox:latest", proxy.host());
    let start = std::time::Instant::now();
    let err = client.fails(&["pull", &image]);
    assert!(
        err.contains(&proxy.host()) && err.contains("library/busybox") && err.contains("HTTP 500"),
        "{err}"
    );
    assert!(
        start.elapsed().as_secs() < 15,
        "gave up within the retry time"
    );
    assert!(
        proxy.requests().len() >= 3,
        "retried: {:?}",
        proxy.requests()
    );
    // Nothing half-written entered the store.
    assert!(!client.ok(&["images"]).contains("busybox"));

    // Nothing listens: connection refused, named too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = client.fails(&["pull", &format!("127.0.0.1:{port}/x/y:1")]);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("x/y"),
        "{err}"
    );
}

/// Every line of the files named `runs` in the root's cache mounts: RUN
/// steps append their tag there, so a step that did not run left nothing.
fn runs(client: &Client) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if entry.file_name() == "runs" {
                out.extend(read(&path).lines().map(str::to_string));
            }
        }
    }
    let mut out = Vec::new();
    walk(&client.env.root().join("cache-mounts"), &mut out);
    out
}

/// A builder stage whose layer (3 MB: an artifact and scratch files) is
/// not in the final image, which copies the 2 MB artifact.
const CACHED_APP: &str = "FROM busybox AS builder\n\
    RUN --mount=type=cache,target=/count,id=counter echo builder >> /count/runs \
      && head -c 2000000 /dev/urandom > /artifact && head -c 1000000 /dev/urandom > /scratch\n\
    FROM busybox\n\
    COPY --from=builder /artifact /artifact\n\
    RUN --mount=type=cache,target=/count,id=counter echo final >> /count/runs && md5sum /artifact > /sum\n";

/// The same shape with a builder whose output is the same every time.
const STEADY_APP: &str = "FROM busybox AS builder\n\
    RUN --mount=type=cache,target=/count,id=counter echo builder >> /count/runs && echo artifact > /artifact\n\
    FROM busybox\n\
    COPY --from=builder /artifact /artifact\n\
    RUN --mount=type=cache,target=/count,id=counter echo final >> /count/runs && md5sum /artifact > /sum\n";

fn image_id(client: &Client, extra: &[&str]) -> String {
    build_id(client, CACHED_APP, extra)
}

fn build_id(client: &Client, dockerfile: &str, extra: &[&str]) -> String {
    let ctx = client.context(dockerfile);
    let iid = client.env.path("iid");
    let iid_arg = iid.display().to_string();
    let mut args = vec!["build", "--progress=plain", "--iidfile", &iid_arg];
    args.extend_from_slice(extra);
    args.push(&ctx);
    client.ok(&args);
    read(&iid)
}

#[test]
fn a_registry_cache_serves_a_fresh_root_without_running_anything() {
    if !require_registry() || !require_run() {
        return;
    }
    let registry = Registry::start();
    registry.seed_busybox("library/busybox:latest");
    let cache = registry.image("cache/app:buildcache");

    let farm = Client::mirroring(&registry.host());
    let exported = image_id(
        &farm,
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert_eq!(runs(&farm), ["builder", "final"]);
    let manifest = json(&String::from_utf8_lossy(
        &registry.raw_manifest("cache/app:buildcache"),
    ));
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.rbuild.cache.v1+json"
    );

    // A fresh root: every step comes from the registry cache.
    let fresh = Client::mirroring(&registry.host());
    let imported = image_id(
        &fresh,
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert!(runs(&fresh).is_empty(), "ran: {:?}", runs(&fresh));
    assert_eq!(imported, exported, "the same image as the exporting root");
    // The builder's 2 MB layer is not in the final image and nothing ran on
    // top of it: it was never fetched.
    let builder_layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["size"].as_u64().unwrap() > 3_000_000)
        .expect("the builder's layer is in the cache")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let fetched: Vec<String> = registry
        .access_log()
        .iter()
        .filter(|e| e.method == "GET" && e.path().starts_with("/v2/cache/app/blobs/"))
        .map(|e| e.path().to_string())
        .collect();
    assert!(
        !fetched.iter().any(|p| p.ends_with(&builder_layer)),
        "{fetched:?}"
    );
    assert_eq!(
        fetched.len(),
        3,
        "the cache config, the COPY and RUN layers: {fetched:?}"
    );

    // A reference with no cache yet is a note, not a failure.
    let first = Client::mirroring(&registry.host());
    let none = registry.image("cache/none:latest");
    image_id(
        &first,
        &["--cache-from", &format!("type=registry,ref={none}")],
    );
    assert_eq!(runs(&first), ["builder", "final"]);
}

#[test]
fn an_inline_cache_makes_the_pushed_image_its_own_cache() {
    if !require_registry() || !require_run() {
        return;
    }
    let registry = Registry::start();
    registry.seed_busybox("library/busybox:latest");
    let image = registry.image("inline/app:1");
    let farm = Client::mirroring(&registry.host());
    build_id(
        &farm,
        STEADY_APP,
        &["-t", &image, "--push", "--cache-to", "type=inline"],
    );
    assert_eq!(runs(&farm), ["builder", "final"]);

    let fresh = Client::mirroring(&registry.host());
    build_id(
        &fresh,
        STEADY_APP,
        &["--cache-from", &format!("type=registry,ref={image}")],
    );
    // mode=min, as BuildKit's inline cache: the builder stage runs again,
    // but its artifact is unchanged in content, so the COPY and the RUN
    // after it are cache hits.
    assert_eq!(runs(&fresh), ["builder"]);
}
