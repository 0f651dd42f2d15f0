//! Self-tests of the registry test harness (tests/common/registry.rs,
//! fault_proxy.rs and token_server.rs). They drive the harness with skopeo,
//! curl and the harness's own HTTP client rather than rbuild, so the harness
//! is known to work before rbuild's registry client relies on it.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::fault_proxy::{Cut, Fault, FaultKind, FaultProxy, Rule, http};
use common::registry::{Registry, require_htpasswd, require_registry, sha256_digest};
use common::token_server::{Anonymous, Outcome, TokenServer};
use common::{assert_success, busybox_layout, json};

/// The manifest digest of the busybox fixture, as its index.json names it.
fn busybox_manifest_digest() -> String {
    let index =
        json(&std::fs::read_to_string(busybox_layout().unwrap().join("index.json")).unwrap());
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `skopeo copy` from docker://HOST/REF (plain HTTP, anonymous) into a
/// scratch `dir:` image.
fn pull_plain(reg: &Registry, host: &str, image_ref: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    reg.skopeo()
        .args(["copy", "--src-tls-verify=false", "--src-no-creds"])
        .args(extra)
        .arg(format!("docker://{host}/{image_ref}"))
        .arg(format!("dir:{}", dir.path().display()))
        .output()
        .expect("run skopeo")
}

/// `skopeo copy` of the busybox fixture to docker://HOST/REF (plain HTTP,
/// anonymous).
fn push_plain(reg: &Registry, host: &str, image_ref: &str, extra: &[&str]) -> Output {
    reg.skopeo()
        .args(["copy", "--dest-tls-verify=false", "--dest-no-creds"])
        .args(extra)
        .arg(format!(
            "oci:{}:latest",
            busybox_layout().unwrap().display()
        ))
        .arg(format!("docker://{host}/{image_ref}"))
        .output()
        .expect("run skopeo")
}

/// curl's exit code and stdout.
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The digest and size of the busybox layer (the largest blob) in `repo`.
fn busybox_layer(reg: &Registry, repo: &str) -> (String, usize) {
    let manifest = json(&String::from_utf8(reg.raw_manifest(&format!("{repo}:v1"))).unwrap());
    let layer = &manifest["layers"][0];
    (
        layer["digest"].as_str().unwrap().to_string(),
        layer["size"].as_u64().unwrap() as usize,
    )
}

#[test]
fn plain_registry_seeds_busybox_counts_uploads_and_cleans_up() {
    if !require_registry() {
        return;
    }
    let reg = Registry::start();
    assert!(reg.url().starts_with("http://127.0.0.1:"));
    assert_eq!(reg.tls_ca(), None);

    let digest = reg.seed_busybox("test/busybox:v1");
    assert_eq!(
        digest,
        busybox_manifest_digest(),
        "skopeo pushed the fixture unchanged"
    );
    let out = reg
        .skopeo()
        .arg("inspect")
        .args(reg.skopeo_opts(""))
        .arg(format!("docker://{}", reg.image("test/busybox:v1")))
        .output()
        .unwrap();
    assert_success(&out, "skopeo inspect");
    let inspect = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(inspect["Digest"], digest);
    assert_eq!(inspect["Os"], "linux");

    // Two blobs (layer and config), each POST + PATCH + PUT; skopeo's
    // blob-info cache (in /var/lib/containers as root) may add a failed
    // mount attempt from a repository a past registry on this port had.
    assert_eq!(reg.blobs_uploaded("test/busybox"), 2);
    assert!(reg.blob_upload_count("test/busybox") >= 6);
    assert_eq!(reg.blob_mounts("test/busybox"), 0);
    // A monolithic upload by hand: POST, then PUT with the digest.
    let before = reg.blob_upload_count("test/busybox");
    let resp = http::request(
        &reg.host(),
        "POST",
        "/v2/test/busybox/blobs/uploads/",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(resp.status(), 202);
    let put = format!(
        "{}&digest={}",
        resp.header("location")
            .unwrap()
            .trim_start_matches(&reg.url()),
        sha256_digest(b"hello")
    );
    let resp = http::request(&reg.host(), "PUT", &put, &[], b"hello").unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text());
    assert_eq!(reg.blob_upload_count("test/busybox"), before + 2);
    assert_eq!(reg.blobs_uploaded("test/busybox"), 3);
    assert_eq!(reg.count_requests("PUT", "/v2/test/busybox/manifests/"), 1);
    assert!(
        reg.storage_dir()
            .join("docker/registry/v2/repositories/test/busybox")
            .is_dir()
    );

    // A cross-repository mount, by hand.
    let (layer, _) = busybox_layer(&reg, "test/busybox");
    let target = format!("/v2/other/repo/blobs/uploads/?mount={layer}&from=test/busybox");
    let resp = http::request(&reg.host(), "POST", &target, &[], &[]).unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text());
    assert_eq!(reg.blob_mounts("other/repo"), 1);
    assert_eq!(reg.blobs_uploaded("other/repo"), 0);

    // Upload locations are absolute, built from the request's Host.
    let resp = http::request(
        &reg.host(),
        "POST",
        "/v2/test/busybox/blobs/uploads/",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{}/v2/test/busybox/blobs/uploads/", reg.url())),
        "{location}"
    );

    // Drop kills the registry and removes its directory.
    let dir = reg.storage_dir();
    let host = reg.host();
    drop(reg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "registry still listening"
    );
}

#[test]
fn relative_urls_registry_and_proxy_rewrites_nothing_it_should_not() {
    if !require_registry() {
        return;
    }
    let reg = Registry::builder().relative_urls().start();
    let resp = http::request(&reg.host(), "POST", "/v2/rel/blobs/uploads/", &[], &[]).unwrap();
    assert_eq!(resp.status(), 202);
    assert!(
        resp.header("location")
            .unwrap()
            .starts_with("/v2/rel/blobs/uploads/"),
        "{:?}",
        resp.header("location")
    );

    // A push through the proxy (relative locations pass untouched; the
    // uploads' chunked PATCH bodies are relayed), then a pull through it.
    let proxy = FaultProxy::start(&reg.host(), vec![]);
    assert_success(
        &push_plain(&reg, &proxy.host(), "rel/busybox:v1", &[]),
        "push via proxy",
    );
    assert_eq!(
        reg.manifest_digest("rel/busybox:v1"),
        busybox_manifest_digest()
    );
    assert_success(
        &pull_plain(&reg, &proxy.host(), "rel/busybox:v1", &[]),
        "pull via proxy",
    );
    assert!(proxy.count("PATCH", "/blobs/uploads/") >= 2);
    assert_eq!(proxy.injected_total(), 0);
    assert!(proxy.requests().iter().all(|r| r.status.is_some()));
}

#[test]
fn proxy_429_is_retried_by_skopeo_on_pull_and_push() {
    if !require_registry() {
        return;
    }
    let reg = Registry::start();
    reg.seed_busybox("test/busybox:v1");
    let proxy = FaultProxy::start(
        &reg.host(),
        vec![
            Rule::new(Fault::too_many_requests())
                .method("GET")
                .path_contains("/manifests/")
                .limit(1),
            Rule::new(Fault::too_many_requests())
                .method("GET")
                .path_contains("/blobs/")
                .limit(2),
        ],
    );
    let start = Instant::now();
    let out = pull_plain(&reg, &proxy.host(), "test/busybox:v1", &[]);
    assert_success(&out, "skopeo copy through 429s");
    assert_eq!(proxy.rule_fired(0), 1);
    // Two blobs, two 429s (whichever GETs got them): four blob GETs.
    assert_eq!(proxy.rule_fired(1), 2, "{:#?}", proxy.requests());
    assert_eq!(proxy.injected(FaultKind::TooManyRequests), 3);
    assert_eq!(proxy.count("GET", "/blobs/"), 4);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "skopeo honoured Retry-After"
    );

    // skopeo retries a 429 on an upload start (no body to resend); the
    // absolute Locations the registry sends name the proxy (it saw the
    // proxy's Host), so the PATCHes and PUTs come through it too.
    proxy.set_rules(vec![
        Rule::new(Fault::too_many_requests())
            .method("POST")
            .path_contains("/blobs/uploads/")
            .limit(1),
    ]);
    let out = push_plain(&reg, &proxy.host(), "pushed/busybox:v1", &[]);
    assert_success(&out, "skopeo push through a 429");
    assert_eq!(proxy.rule_fired(0), 1);
    assert_eq!(
        reg.manifest_digest("pushed/busybox:v1"),
        busybox_manifest_digest()
    );
    // Each blob was uploaded or, if skopeo's blob-info cache knew it from
    // the pull above, mounted from test/busybox.
    let transferred = proxy
        .requests()
        .iter()
        .filter(|r| {
            r.target.starts_with("/v2/pushed/busybox/blobs/uploads/") && r.status == Some(201)
        })
        .count();
    assert_eq!(transferred, 2, "{:#?}", proxy.requests());

    // A 429 on the manifest PUT (which has a body) fails the push, unless
    // skopeo is told to retry whole operations.
    let manifest_429 = || {
        vec![
            Rule::new(Fault::too_many_requests())
                .method("PUT")
                .path_contains("/manifests/")
                .limit(1),
        ]
    };
    proxy.set_rules(manifest_429());
    let out = push_plain(&reg, &proxy.host(), "pushed/busybox:v2", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("toomanyrequests"), "{}", stderr(&out));
    proxy.set_rules(manifest_429());
    let out = push_plain(
        &reg,
        &proxy.host(),
        "pushed/busybox:v2",
        &["--retry-times", "2"],
    );
    assert_success(&out, "skopeo push --retry-times through a 429");
    assert_eq!(proxy.rule_fired(0), 1);
    assert_eq!(proxy.injected(FaultKind::TooManyRequests), 6);
}

#[test]
fn proxy_closed_connections_are_retried_by_skopeo_retry_times() {
    if !require_registry() {
        return;
    }
    let reg = Registry::start();
    reg.seed_busybox("test/busybox:v1");
    let proxy = FaultProxy::start(
        &reg.host(),
        vec![
            Rule::new(Fault::Close)
                .method("GET")
                .path_contains("/blobs/")
                .limit(1),
        ],
    );
    // Without retries the pull fails on the EOF...
    let out = pull_plain(&reg, &proxy.host(), "test/busybox:v1", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("EOF"), "{}", stderr(&out));
    // ... with them it recovers.
    proxy.set_rules(vec![
        Rule::new(Fault::Close)
            .method("GET")
            .path_contains("/blobs/")
            .limit(1),
    ]);
    let out = pull_plain(
        &reg,
        &proxy.host(),
        "test/busybox:v1",
        &["--retry-times", "3"],
    );
    assert_success(
        &out,
        "skopeo copy --retry-times through a closed connection",
    );
    assert_eq!(proxy.injected(FaultKind::Close), 2);
    let closed = proxy
        .requests()
        .into_iter()
        .filter(|r| r.fault == Some(FaultKind::Close))
        .collect::<Vec<_>>();
    assert!(
        closed.iter().all(|r| r.status.is_none()),
        "no response head was sent"
    );
}

#[test]
fn proxy_status_faults_follow_every_and_limit() {
    if !require_registry() {
        return;
    }
    let reg = Registry::start();
    reg.seed_busybox("test/busybox:v1");
    let proxy = FaultProxy::start(
        &reg.host(),
        vec![
            Rule::new(Fault::Status(500))
                .method("GET")
                .path_contains("/v2/")
                .every(3)
                .limit(2),
        ],
    );
    let statuses: Vec<u16> = (0..8)
        .map(|_| {
            http::request(&proxy.host(), "GET", "/v2/", &[], &[])
                .unwrap()
                .status()
        })
        .collect();
    assert_eq!(statuses, [200, 200, 500, 200, 200, 500, 200, 200]);
    assert_eq!(proxy.injected(FaultKind::Status), 2);

    // The injected error looks like the registry's own.
    proxy.set_rules(vec![Rule::new(Fault::Status(503)).limit(1)]);
    let before = reg.count_requests("GET", "/v2/test/busybox/manifests/");
    let resp = http::request(
        &proxy.host(),
        "GET",
        "/v2/test/busybox/manifests/v1",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(json(&resp.text())["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(proxy.count("GET", "/manifests/"), 1);
    let after = reg.count_requests("GET", "/v2/test/busybox/manifests/");
    assert_eq!(after, before, "not forwarded");

    // skopeo does not retry a 500: it fails and says why.
    proxy.set_rules(vec![
        Rule::new(Fault::Status(500))
            .method("GET")
            .path_contains("/blobs/")
            .limit(1),
    ]);
    let out = pull_plain(
        &reg,
        &proxy.host(),
        "test/busybox:v1",
        &["--retry-times", "2"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("500"), "{}", stderr(&out));

    // Custom predicates see the head.
    proxy.set_rules(vec![
        Rule::new(Fault::Status(502)).when(|req| req.header("x-break-me").is_some()),
    ]);
    let plain = http::request(&proxy.host(), "GET", "/v2/", &[], &[]).unwrap();
    let broken = http::request(&proxy.host(), "GET", "/v2/", &[("X-Break-Me", "1")], &[]).unwrap();
    assert_eq!((plain.status(), broken.status()), (200, 502));
}

#[test]
fn proxy_truncates_closes_and_stalls() {
    if !require_registry() {
        return;
    }
    let reg = Registry::start();
    reg.seed_busybox("test/busybox:v1");
    let (layer, size) = busybox_layer(&reg, "test/busybox");
    let blob = format!("/v2/test/busybox/blobs/{layer}");
    let proxy = FaultProxy::start(&reg.host(), vec![]);

    // Cut after half the body: the head promises the whole blob.
    proxy.set_rules(vec![
        Rule::new(Fault::Truncate(Cut::Half))
            .path_contains("/blobs/")
            .limit(1),
    ]);
    let resp = http::request(&proxy.host(), "GET", &blob, &[], &[]).unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert!(!resp.complete);
    assert_eq!(resp.body.len(), size / 2);
    // The next GET is whole, and a ranged GET resumes (registry: 206).
    let resp = http::request(&proxy.host(), "GET", &blob, &[], &[]).unwrap();
    assert!(resp.complete);
    assert_eq!(sha256_digest(&resp.body), layer);
    let range = format!("bytes={}-", size / 2);
    let resp = http::request(&proxy.host(), "GET", &blob, &[("Range", &range)], &[]).unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.body.len(), size - size / 2);

    // curl agrees: error 18, partial file, after exactly N bytes.
    proxy.set_rules(vec![
        Rule::new(Fault::Truncate(Cut::After(1000))).path_contains("/blobs/"),
    ]);
    let (code, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{}{blob}", proxy.url()),
    ]);
    assert_eq!(code, 18, "curl: partial file");
    let resp = http::request(&proxy.host(), "GET", &blob, &[], &[]).unwrap();
    assert_eq!((resp.body.len(), resp.complete), (1000, false));
    // A HEAD has no body to cut: no answer at all.
    assert!(http::request(&proxy.host(), "HEAD", &blob, &[], &[]).is_err());
    assert_eq!(proxy.injected(FaultKind::Truncate), 4);

    // Closing without a response: curl's "empty reply" (52).
    proxy.set_rules(vec![Rule::new(Fault::Close).limit(1)]);
    let (code, _) = curl(&[&format!("{}/v2/", proxy.url())]);
    assert_eq!(code, 52);

    // A stall before the answer: slow, then fine; a client timeout trips.
    proxy.set_rules(vec![
        Rule::new(Fault::Stall(Duration::from_millis(1500))).path_contains("/v2/"),
    ]);
    let start = Instant::now();
    let resp = http::request(&proxy.host(), "GET", "/v2/", &[], &[]).unwrap();
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(1500));
    let (code, _) = curl(&["--max-time", "0.5", &format!("{}/v2/", proxy.url())]);
    assert_eq!(code, 28, "curl: timeout");

    // A stall mid-body: complete, but only after the pause.
    proxy.set_rules(vec![
        Rule::new(Fault::StallBody {
            cut: Cut::Half,
            pause: Duration::from_millis(1000),
        })
        .limit(1),
    ]);
    let start = Instant::now();
    let resp = http::request(&proxy.host(), "GET", &blob, &[], &[]).unwrap();
    assert!(resp.complete && resp.body.len() == size);
    assert!(start.elapsed() >= Duration::from_millis(1000));
    assert_eq!(proxy.injected(FaultKind::Stall), 2);
    assert_eq!(proxy.injected(FaultKind::StallBody), 1);
}

#[test]
fn proxy_keeps_connections_alive_and_relays_chunked_uploads() {
    if !require_registry() {
        return;
    }
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg.host(), vec![]);
    // Start an upload, then finish it monolithically with a chunked PUT
    // (curl sends chunks when told to), on one kept-alive connection.
    let resp = http::request(&proxy.host(), "POST", "/v2/chunky/blobs/uploads/", &[], &[]).unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/", proxy.url())),
        "{location}"
    );
    let content = b"hello, chunked world\n".repeat(500);
    let digest = sha256_digest(&content);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &content).unwrap();
    let sep = if location.contains('?') { '&' } else { '?' };
    let put_url = format!("{location}{sep}digest={digest}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
        ])
        .args([
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.path().display()))
        .arg(&put_url)
        .args([
            "--next",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
        ])
        .arg(format!("{}/v2/chunky/blobs/{digest}", proxy.url()))
        .output()
        .unwrap();
    assert_success(&out, "curl");
    // 201 for the PUT on a new connection, 200 for the GET on the same one.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201 1\n200 0\n");
    let resp = http::request(
        &reg.host(),
        "GET",
        &format!("/v2/chunky/blobs/{digest}"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(resp.body, content);

    // An injected error answers a HEAD without a body, so the next requests
    // on the same (pipelined) connection still parse.
    proxy.set_rules(vec![Rule::new(Fault::Status(500)).method("HEAD").limit(1)]);
    let mut conn = std::net::TcpStream::connect(proxy.host()).unwrap();
    http::set_timeouts(&conn).unwrap();
    let blob_head = format!(
        "HEAD /v2/chunky/blobs/{digest} HTTP/1.1\r\nHost: {}\r\n\r\n",
        proxy.host()
    );
    let get = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.host());
    std::io::Write::write_all(&mut conn, format!("{blob_head}{blob_head}{get}").as_bytes())
        .unwrap();
    let mut reader = std::io::BufReader::new(conn);
    let mut statuses = Vec::new();
    for method in ["HEAD", "HEAD", "GET"] {
        let head = http::read_head(&mut reader).unwrap().unwrap();
        let framing = http::response_framing(method, &head).unwrap();
        let (body, complete) = http::read_body(&mut reader, framing).unwrap();
        assert!(complete);
        statuses.push((head.status(), body.len()));
    }
    assert_eq!(statuses, [(500, 0), (200, 0), (200, 2)]);
}

#[test]
fn basic_auth_registry_checks_credentials() {
    if !require_htpasswd() {
        return;
    }
    let reg = Registry::with_basic_auth("alice", "s3cret");
    assert_eq!(reg.creds(), Some(("alice", "s3cret")));
    reg.seed_busybox("test/busybox:v1");

    let inspect = |creds: Option<&str>| {
        let mut cmd = reg.skopeo();
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        match creds {
            Some(c) => cmd.arg(format!("--creds={c}")),
            None => cmd.arg("--no-creds"),
        };
        cmd.arg(format!("docker://{}", reg.image("test/busybox:v1")))
            .output()
            .unwrap()
    };
    assert_success(
        &inspect(Some("alice:s3cret")),
        "inspect with the right password",
    );
    for creds in [Some("alice:wrong"), Some("mallory:s3cret"), None] {
        let out = inspect(creds);
        assert!(!out.status.success(), "{creds:?} accepted");
        assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    }

    let resp = http::request(&reg.host(), "GET", "/v2/", &[], &[]).unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Basic realm=\"rbuild-test-registry\"")
    );
}

#[test]
fn token_auth_registry_uses_the_token_server() {
    if !require_registry() {
        return;
    }
    let tokens = TokenServer::builder()
        .user("alice", "secret")
        .user_with_actions("reader", "pw", &["pull"])
        .start();
    let reg = Registry::with_token_auth(&tokens);
    reg.seed_busybox("test/busybox:v1");
    let issued = tokens.tokens_issued();
    assert!(issued > 0);
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.account.as_deref() == Some("alice")
                && r.scopes
                    .iter()
                    .any(|s| s == "repository:test/busybox:pull,push")),
        "{:#?}",
        tokens.requests()
    );

    // The challenge names the realm, the service and the scope.
    let resp = http::request(
        &reg.host(),
        "GET",
        "/v2/test/busybox/manifests/v1",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"{}\",service=\"{}\",scope=\"repository:test/busybox:pull\"",
            tokens.realm(),
            tokens.service()
        )
    );

    let inspect = |creds: &str| {
        reg.skopeo()
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("--creds={creds}"),
            ])
            .arg(format!("docker://{}", reg.image("test/busybox:v1")))
            .output()
            .unwrap()
    };
    assert_success(&inspect("reader:pw"), "inspect as reader");
    let out = inspect("alice:wrong");
    assert!(!out.status.success());
    assert!(tokens.bad_credentials() >= 1);

    // The reader's token grants pull only, so its push is refused.
    let out = reg
        .skopeo()
        .args(["copy", "--dest-tls-verify=false", "--dest-creds=reader:pw"])
        .arg(format!(
            "oci:{}:latest",
            busybox_layout().unwrap().display()
        ))
        .arg(format!("docker://{}", reg.image("test/other:v1")))
        .output()
        .unwrap();
    assert!(!out.status.success(), "reader pushed");
    assert!(tokens.requests().iter().any(|r| {
        r.account.as_deref() == Some("reader")
            && r.scopes
                .iter()
                .any(|s| s == "repository:test/other:pull,push")
            && r.outcome == Outcome::Issued(vec!["repository:test/other:pull".into()])
    }));

    // A token fetched by hand (GET and the OAuth2 POST) works as a Bearer.
    let (code, body) = curl(&[
        "-u",
        "alice:secret",
        &format!(
            "{}?service={}&scope=repository:test/busybox:pull",
            tokens.realm(),
            tokens.service()
        ),
    ]);
    assert_eq!(code, 0);
    let answer = json(&body);
    assert_eq!(answer["expires_in"], 300);
    assert!(answer["issued_at"].as_str().unwrap().ends_with('Z'));
    let token = answer["token"].as_str().unwrap().to_string();
    assert_eq!(answer["access_token"], token.as_str());
    let (code, body) = curl(&[
        "--data",
        &format!(
            "grant_type=password&username=alice&password=secret&service={}&scope=repository:test/busybox:pull&client_id=test&access_type=offline",
            tokens.service()
        ),
        &tokens.realm(),
    ]);
    assert_eq!(code, 0);
    let oauth = json(&body);
    assert!(oauth["refresh_token"].is_string());
    for bearer in [token.as_str(), oauth["access_token"].as_str().unwrap()] {
        let auth = format!("Bearer {bearer}");
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let resp = http::request(
            &reg.host(),
            "GET",
            "/v2/test/busybox/manifests/v1",
            &[("Authorization", &auth), ("Accept", accept)],
            &[],
        )
        .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text());
    }

    // Anonymous: refused by this token server.
    let (code, _) = curl(&[
        "-f",
        &format!("{}?service={}", tokens.realm(), tokens.service()),
    ]);
    assert_eq!(code, 22, "HTTP error");
}

#[test]
fn token_server_jwt_and_anonymous_policies() {
    if !require_registry() {
        return;
    }
    let tokens = TokenServer::builder()
        .user("alice", "secret")
        .anonymous(Anonymous::Pull)
        .expires_in(120)
        .start();
    let target = format!(
        "/token?service={}&scope=repository:a/b:pull,push&scope=repository:c:pull",
        tokens.service()
    );
    let resp = http::request(&tokens.host(), "GET", &target, &[], &[]).unwrap();
    assert_eq!(resp.status(), 200);
    let jwt = json(&resp.text())["token"].as_str().unwrap().to_string();
    let parts: Vec<_> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = json(&String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap());
    let claims = json(&String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap());
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5c"].as_array().unwrap().len(), 1);
    assert_eq!(claims["aud"], tokens.service());
    assert_eq!(claims["iss"], tokens.issuer());
    assert_eq!(claims["sub"], "");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120
    );
    // Anonymous gets pull only.
    assert_eq!(
        claims["access"],
        serde_json::json!([
            {"type": "repository", "name": "a/b", "actions": ["pull"]},
            {"type": "repository", "name": "c", "actions": ["pull"]},
        ])
    );

    // Anonymous pull works against a registry that trusts this server.
    let reg = Registry::with_token_auth(&tokens);
    reg.seed_busybox("test/busybox:v1");
    let out = reg
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", "--no-creds"])
        .arg(format!("docker://{}", reg.image("test/busybox:v1")))
        .output()
        .unwrap();
    assert_success(&out, "anonymous inspect");
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.account.is_none() && matches!(r.outcome, Outcome::Issued(_)))
    );

    // Wrong credentials are a 401, not an anonymous token.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:nope")
    );
    let resp = http::request(
        &tokens.host(),
        "GET",
        &target,
        &[("Authorization", &basic)],
        &[],
    )
    .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(tokens.bad_credentials(), 1);
}

#[test]
fn tls_registry_verifies_with_the_test_ca() {
    if !require_registry() {
        return;
    }
    let reg = Registry::with_tls();
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    let ca = reg.tls_ca().unwrap();
    // Seeding uses --dest-cert-dir with TLS verification on.
    let digest = reg.seed_busybox("test/busybox:v1");
    assert_eq!(digest, busybox_manifest_digest());

    let (code, body) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/v2/", reg.url()),
    ]);
    assert_eq!((code, body.as_str()), (0, "{}"));
    let (code, _) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!(
            "https://localhost:{}/v2/",
            reg.host().rsplit(':').next().unwrap()
        ),
    ]);
    assert_eq!(code, 0, "localhost is in the certificate too");
    let (code, _) = curl(&[&format!("{}/v2/", reg.url())]);
    assert_eq!(code, 60, "untrusted without the CA");
    let out = reg
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=true"])
        .arg(format!("docker://{}", reg.image("test/busybox:v1")))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "skopeo trusted the test CA without --cert-dir"
    );
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
}

#[test]
fn multi_platform_index_has_two_platforms() {
    if !require_registry() {
        return;
    }
    let reg = Registry::start();
    let image = reg.push_multi_platform("test/multi:v1");
    assert_eq!(reg.manifest_digest("test/multi:v1"), image.index);
    let index = json(&String::from_utf8(reg.raw_manifest("test/multi:v1")).unwrap());
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let platforms: Vec<String> = entries
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect();
    assert!(
        platforms.contains(&"linux/amd64".to_string()),
        "{platforms:?}"
    );
    assert!(
        platforms.contains(&"linux/arm64/v8".to_string()),
        "{platforms:?}"
    );

    for (platform, digest) in &image.manifests {
        let arch = platform.split('/').nth(1).unwrap();
        let manifest =
            json(&String::from_utf8(reg.raw_manifest(&format!("test/multi@{digest}"))).unwrap());
        // The last layer is the marker: /platform holds the architecture.
        let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let resp = http::request(
            &reg.host(),
            "GET",
            &format!("/v2/test/multi/blobs/{layer}"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(resp.status(), 200);
        let mut archive = tar::Archive::new(resp.body.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("platform"));
        let mut content = String::new();
        std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
        assert_eq!(content, arch);
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let resp = http::request(
            &reg.host(),
            "GET",
            &format!("/v2/test/multi/blobs/{config_digest}"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(json(&resp.text())["architecture"], arch);
    }
    assert_eq!(
        image.manifest("linux/arm64/v8"),
        image
            .manifests
            .iter()
            .find(|(p, _)| p.contains("arm64"))
            .unwrap()
            .1
    );
}
