//! A real container registry for end-to-end tests of rbuild's registry
//! client.
//!
//! [`Registry`] runs Debian's `docker-registry` (CNCF distribution 2.8) on
//! 127.0.0.1 and a free port, with its storage, config and logs in a temp
//! dir; dropping it kills the process and removes the dir. It can require
//! htpasswd basic auth, token auth through a
//! [`super::token_server::TokenServer`], and TLS with a test CA
//! ([`Registry::tls_ca`]). Images are put in with skopeo:
//! [`Registry::seed_busybox`] pushes the busybox fixture and
//! [`Registry::push_multi_platform`] an index with two platforms. The
//! registry's access log tells a test what a client did
//! ([`Registry::access_log`], [`Registry::blob_upload_count`]).
//!
//! ```ignore
//! if !registry::require_registry() { return; }
//! let reg = Registry::start();
//! let digest = reg.seed_busybox("library/busybox:latest");
//! // point the client under test at reg.host() (plain HTTP) ...
//! ```

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::fault_proxy::http;
use super::token_server::{TokenServer, openssl};
use super::{assert_success, busybox_layout, have_command, missing, require_busybox};

/// How long a registry may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the tools every registry test needs are here: docker-registry,
/// skopeo, openssl, curl and the busybox fixture. Prints why and returns
/// false when not (a failure under CI, see [`super::missing`]).
pub fn require_registry() -> bool {
    for (cmd, package) in [
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("openssl", "openssl"),
        ("curl", "curl"),
    ] {
        if !have_command(cmd) {
            return missing(&format!(
                "{cmd} is not installed (Debian package {package}, see .ci/run)"
            ));
        }
    }
    require_busybox()
}

/// [`require_registry`] plus `htpasswd` for basic-auth registries.
pub fn require_htpasswd() -> bool {
    require_registry()
        && (have_command("htpasswd")
            || missing("htpasswd is not installed (Debian package apache2-utils, see .ci/run)"))
}

enum Auth {
    None,
    Basic {
        user: String,
        password: String,
    },
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert_bundle: PathBuf,
        creds: Option<(String, String)>,
    },
}

/// Options for a [`Registry`]; see [`Registry::builder`].
pub struct RegistryBuilder {
    auth: Auth,
    tls: bool,
    relative_urls: bool,
}

impl RegistryBuilder {
    /// Require HTTP basic auth with this one user (an htpasswd file with a
    /// bcrypt hash, the only kind distribution accepts).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Auth::Basic {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Require bearer tokens from `tokens` (which must outlive the registry
    /// for requests to succeed). The harness's own skopeo calls use the
    /// token server's first user.
    pub fn token_auth(mut self, tokens: &TokenServer) -> Self {
        self.auth = Auth::Token {
            realm: tokens.realm(),
            service: tokens.service().into(),
            issuer: tokens.issuer().into(),
            root_cert_bundle: tokens.root_cert_bundle().to_path_buf(),
            creds: tokens.first_user(),
        };
        self
    }

    /// Serve HTTPS with a certificate for 127.0.0.1 (and localhost) signed
    /// by a fresh test CA: [`Registry::tls_ca`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Have the registry send relative `Location` headers
    /// ("/v2/NAME/blobs/uploads/UUID?_state=...") instead of absolute ones.
    pub fn relative_urls(mut self) -> Self {
        self.relative_urls = true;
        self
    }

    /// Starts the registry and waits until it answers `GET /v2/`.
    pub fn start(self) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-registry.")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().to_path_buf();
        std::fs::create_dir(d.join("storage")).expect("create storage dir");

        let tls = self.tls.then(|| make_tls(&d));
        let mut auth_yaml = String::new();
        let mut creds = None;
        match &self.auth {
            Auth::None => {}
            Auth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd (Debian package apache2-utils)");
                assert_success(&out, "htpasswd -Bbn");
                std::fs::write(d.join("htpasswd"), &out.stdout).expect("write htpasswd");
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: rbuild-test-registry\n    path: \"{}\"\n",
                    d.join("htpasswd").display()
                );
                creds = Some((user.clone(), password.clone()));
            }
            Auth::Token {
                realm,
                service,
                issuer,
                root_cert_bundle,
                creds: token_creds,
            } => {
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: \"{realm}\"\n    service: \"{service}\"\n    issuer: \"{issuer}\"\n    rootcertbundle: \"{}\"\n",
                    root_cert_bundle.display()
                );
                creds = token_creds.clone();
            }
        }
        let tls_yaml = match &tls {
            Some(t) => format!(
                "  tls:\n    certificate: \"{}\"\n    key: \"{}\"\n",
                t.server_cert.display(),
                t.server_key.display()
            ),
            None => String::new(),
        };

        // Picking a free port and handing it to the registry can race with
        // another process taking it meanwhile: then try another port.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: \"{storage}\"\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: rbuild-test-secret\n  relativeurls: {relative}\n{tls_yaml}\
                 {auth_yaml}",
                storage = d.join("storage").display(),
                relative = self.relative_urls,
            );
            std::fs::write(d.join("config.yml"), config).expect("write config.yml");
            // Standard output is the access log (one line per request,
            // Apache combined format); standard error the registry's own log.
            let access_log = File::create(d.join("access.log")).expect("create access.log");
            let log = File::create(d.join("registry.log")).expect("create registry.log");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(d.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(access_log)
                .stderr(log);
            // The registry reads REGISTRY_* variables as config overrides.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(name);
                }
            }
            let mut child = cmd.spawn().expect("start docker-registry");
            let ca = tls.as_ref().map(|t| t.cert_dir.join("ca.crt"));
            if wait_ready(&mut child, port, ca.as_deref()) {
                return Registry {
                    child: Some(child),
                    port,
                    tls,
                    creds,
                    sync: AtomicUsize::new(0),
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(d.join("registry.log")).unwrap_or_default();
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }
}

/// The certificates of a TLS registry.
struct Tls {
    server_cert: PathBuf,
    server_key: PathBuf,
    /// A directory holding only `ca.crt`, for skopeo's `--cert-dir`.
    cert_dir: PathBuf,
}

/// A test CA and a server certificate for 127.0.0.1 signed by it. (A
/// self-signed server certificate would do for Go and curl, but rustls
/// refuses a CA certificate used as a server's.)
fn make_tls(d: &Path) -> Tls {
    let t = d.join("tls");
    std::fs::create_dir(&t).expect("create tls dir");
    std::fs::write(
        t.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nx509_extensions = ca\nprompt = no\n\
         [dn]\nCN = rbuild test CA\n\
         [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    std::fs::write(
        t.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n\
         authorityKeyIdentifier = keyid\n",
    )
    .expect("write server.ext");
    // P-256 keys: quick to make, and every TLS stack takes them.
    openssl(
        &t,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-config",
            "ca.cnf",
        ],
    );
    openssl(
        &t,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        &t,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    let cert_dir = d.join("certs.d");
    std::fs::create_dir(&cert_dir).expect("create certs.d");
    std::fs::copy(t.join("ca.crt"), cert_dir.join("ca.crt")).expect("copy ca.crt");
    Tls {
        server_cert: t.join("server.crt"),
        server_key: t.join("server.key"),
        cert_dir,
    }
}

/// Waits until the registry on `port` answers `GET /v2/` (200, or 401
/// with auth); false if it exits or times out.
fn wait_ready(child: &mut Child, port: u16, ca: Option<&Path>) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && matches!(
                get_status(port, ca, "/v2/?rbuild-harness=probe"),
                Some(200 | 401)
            )
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The status of an unauthenticated GET on 127.0.0.1:`port`: plain HTTP,
/// or HTTPS with curl checking the certificate against `ca`.
fn get_status(port: u16, ca: Option<&Path>, target: &str) -> Option<u16> {
    let host = format!("127.0.0.1:{port}");
    match ca {
        None => http::request(&host, "GET", target, &[], &[])
            .ok()
            .map(|r| r.status()),
        Some(ca) => {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                ])
                .arg(ca)
                .arg(format!("https://{host}{target}"))
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// One line of the registry's access log.
#[derive(Clone, Debug)]
pub struct AccessEntry {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub status: u16,
}

impl AccessEntry {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn parse(line: &str) -> Option<AccessEntry> {
        // 127.0.0.1 - - [date] "PUT /v2/x/blobs/uploads/UUID?... HTTP/1.1" 201 0 "" "agent"
        let (_, rest) = line.split_once('"')?;
        let (request, rest) = rest.split_once('"')?;
        let mut words = request.split(' ');
        let method = words.next()?.to_string();
        let target = words.next()?.to_string();
        let status = rest.split_whitespace().next()?.parse().ok()?;
        Some(AccessEntry {
            method,
            target,
            status,
        })
    }
}

/// A pushed multi-platform image: see [`Registry::push_multi_platform`].
#[derive(Clone, Debug)]
pub struct MultiPlatform {
    /// The digest of the OCI image index ("sha256:...").
    pub index: String,
    /// (platform, manifest digest), in index order; platforms are written
    /// "linux/amd64", "linux/arm64/v8".
    pub manifests: Vec<(String, String)>,
}

impl MultiPlatform {
    /// The manifest digest for a platform ("linux/arm64/v8").
    pub fn manifest(&self, platform: &str) -> &str {
        self.manifests
            .iter()
            .find(|(p, _)| p == platform)
            .map(|(_, d)| d.as_str())
            .unwrap_or_else(|| panic!("no {platform} in {:?}", self.manifests))
    }
}

/// A running docker-registry; killed, and its dir removed, on drop.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    tls: Option<Tls>,
    creds: Option<(String, String)>,
    /// Numbers the access-log sync requests.
    sync: AtomicUsize,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            auth: Auth::None,
            tls: false,
            relative_urls: false,
        }
    }

    /// Plain HTTP, no auth.
    pub fn start() -> Registry {
        Registry::builder().start()
    }

    /// Plain HTTP with htpasswd basic auth for one user.
    pub fn with_basic_auth(user: &str, password: &str) -> Registry {
        Registry::builder().basic_auth(user, password).start()
    }

    /// Plain HTTP with token auth by `tokens`.
    pub fn with_token_auth(tokens: &TokenServer) -> Registry {
        Registry::builder().token_auth(tokens).start()
    }

    /// HTTPS (test CA), no auth.
    pub fn with_tls() -> Registry {
        Registry::builder().tls().start()
    }

    /// "127.0.0.1:PORT".
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// "HOST/REPO:TAG" for a "REPO:TAG" (or "REPO@DIGEST").
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// The registry's storage (a `docker/registry/v2/...` tree).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The CA certificate (PEM) that signed the server's certificate, for a
    /// client's `ca = [path]`; `None` without TLS.
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.cert_dir.join("ca.crt"))
    }

    /// A directory holding only `ca.crt` (skopeo's `--cert-dir`, Docker's
    /// `certs.d/HOST` layout); `None` without TLS.
    pub fn cert_dir(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.cert_dir.as_path())
    }

    /// The user and password the registry (or its token server) accepts.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's own log (standard error): errors, auth failures.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The access log (standard output), one line per request.
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The status of an unauthenticated GET of `target` (curl for TLS,
    /// which also checks the certificate against the test CA).
    fn get_status(&self, target: &str) -> Option<u16> {
        get_status(self.port, self.tls_ca().as_deref(), target)
    }

    /// Every request the registry has logged, except the harness's own
    /// probes. It first makes a marker request and waits until it is
    /// logged, because the registry writes a line only after the response
    /// went out, so a client may finish before its last lines are written.
    pub fn access_log(&self) -> Vec<AccessEntry> {
        let n = self.sync.fetch_add(1, Ordering::SeqCst);
        let marker = format!("rbuild-harness=sync-{n}");
        let _ = self.get_status(&format!("/v2/?{marker}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(self.access_log_path()).unwrap_or_default();
            if text.contains(&marker) || Instant::now() > deadline {
                return text
                    .lines()
                    .filter(|l| !l.contains("rbuild-harness="))
                    .filter_map(AccessEntry::parse)
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many requests had this method (or any, for "") and a path
    /// starting with `path_prefix`.
    pub fn count_requests(&self, method: &str, path_prefix: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|e| method.is_empty() || e.method == method)
            .filter(|e| e.path().starts_with(path_prefix))
            .count()
    }

    /// How many blob-upload requests (POST, PATCH, PUT to
    /// `/v2/REPO/blobs/uploads/`) the registry got for `repo`, whatever
    /// their outcome. One chunked upload is POST + PATCH(es) + PUT; a
    /// monolithic one POST + PUT or a single POST with `?digest=`; a mount
    /// is one POST; a 401 challenge counts too.
    pub fn blob_upload_count(&self, repo: &str) -> usize {
        let prefix = format!("/v2/{repo}/blobs/uploads/");
        self.access_log()
            .iter()
            .filter(|e| matches!(e.method.as_str(), "POST" | "PATCH" | "PUT"))
            .filter(|e| e.path().starts_with(&prefix))
            .count()
    }

    /// How many blob uploads to `repo` completed (answered 201), not
    /// counting cross-repository mounts.
    pub fn blobs_uploaded(&self, repo: &str) -> usize {
        let prefix = format!("/v2/{repo}/blobs/uploads/");
        self.access_log()
            .iter()
            .filter(|e| e.status == 201 && e.path().starts_with(&prefix))
            .filter(|e| match e.method.as_str() {
                "PUT" => true,
                "POST" => !e.target.contains("mount="),
                _ => false,
            })
            .count()
    }

    /// How many cross-repository mounts into `repo` succeeded (POST
    /// `?mount=` answered 201).
    pub fn blob_mounts(&self, repo: &str) -> usize {
        let prefix = format!("/v2/{repo}/blobs/uploads/");
        self.access_log()
            .iter()
            .filter(|e| e.method == "POST" && e.status == 201 && e.target.contains("mount="))
            .filter(|e| e.path().starts_with(&prefix))
            .count()
    }

    /// skopeo, isolated from the host's credentials and signature policy.
    pub fn skopeo(&self) -> Command {
        let mut cmd = Command::new("skopeo");
        cmd.arg("--insecure-policy")
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("no-auth.json"));
        cmd
    }

    /// skopeo options to reach this registry; `prefix` is "" (inspect,
    /// delete), "src-" or "dest-" (copy). TLS verification is on for a TLS
    /// registry (with its CA), off (plain HTTP) otherwise.
    pub fn skopeo_opts(&self, prefix: &str) -> Vec<String> {
        let mut opts = Vec::new();
        match self.cert_dir() {
            Some(dir) => opts.push(format!("--{prefix}cert-dir={}", dir.display())),
            None => opts.push(format!("--{prefix}tls-verify=false")),
        }
        match self.creds() {
            Some((user, password)) => opts.push(format!("--{prefix}creds={user}:{password}")),
            None => opts.push(format!("--{prefix}no-creds")),
        }
        opts
    }

    /// `skopeo copy` from `source` (any skopeo transport) to
    /// docker://HOST/REPO:TAG, with `extra` options (e.g. "--all").
    pub fn skopeo_push(&self, source: &str, repo_tag: &str, extra: &[&str]) {
        let mut cmd = self.skopeo();
        cmd.arg("copy")
            .args(self.skopeo_opts("dest-"))
            .args(extra)
            .arg(source)
            .arg(format!("docker://{}", self.image(repo_tag)));
        let out = cmd.output().expect("run skopeo");
        assert_success(
            &out,
            &format!("skopeo copy {source} to {}", self.image(repo_tag)),
        );
    }

    /// Pushes the busybox fixture (testdata/make-busybox.sh, built once per
    /// test process) as REPO:TAG; returns its manifest digest.
    pub fn seed_busybox(&self, repo_tag: &str) -> String {
        let layout = busybox_layout().expect("busybox fixture (check require_registry first)");
        self.skopeo_push(&format!("oci:{}:latest", layout.display()), repo_tag, &[]);
        self.manifest_digest(repo_tag)
    }

    /// The manifest (or index) bytes exactly as the registry serves them.
    pub fn raw_manifest(&self, repo_ref: &str) -> Vec<u8> {
        let out = self
            .skopeo()
            .arg("inspect")
            .arg("--raw")
            .args(self.skopeo_opts(""))
            .arg(format!("docker://{}", self.image(repo_ref)))
            .output()
            .expect("run skopeo");
        assert_success(
            &out,
            &format!("skopeo inspect --raw {}", self.image(repo_ref)),
        );
        out.stdout
    }

    /// The digest of the manifest (or index) that REPO:TAG names.
    pub fn manifest_digest(&self, repo_ref: &str) -> String {
        sha256_digest(&self.raw_manifest(repo_ref))
    }

    /// Pushes an OCI index with two platforms as REPO:TAG: the host's
    /// (busybox plus a layer with `/platform` containing e.g. "amd64") and
    /// a second one (`linux/arm64/v8` on an amd64 host, else `linux/amd64`)
    /// whose only layer is `/platform` containing its architecture; the
    /// second is not runnable. Marker layers are uncompressed tars.
    pub fn push_multi_platform(&self, repo_tag: &str) -> MultiPlatform {
        let layout = tempfile::Builder::new()
            .prefix("rbuild-multi-platform.")
            .tempdir()
            .expect("temp dir");
        let image = write_multi_platform_layout(layout.path());
        self.skopeo_push(
            &format!("oci:{}:latest", layout.path().display()),
            repo_tag,
            &["--all", "--preserve-digests"],
        );
        let pushed = self.manifest_digest(repo_tag);
        assert_eq!(
            pushed, image.index,
            "skopeo changed the index while pushing"
        );
        image
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Writes a blob into an OCI layout; returns its descriptor's digest and
/// size.
fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256_digest(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::write(path, bytes).expect("write blob");
    (digest, bytes.len())
}

/// An uncompressed layer with one file, `platform`, holding `content`.
fn marker_layer(content: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    builder
        .append_data(&mut header, "platform", content.as_bytes())
        .expect("tar marker layer");
    builder.into_inner().expect("finish tar")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Writes the two-platform OCI layout that [`Registry::push_multi_platform`]
/// pushes (ref name "latest" names the index); returns its digests.
fn write_multi_platform_layout(out: &Path) -> MultiPlatform {
    let busybox = busybox_layout().expect("busybox fixture (check require_registry first)");
    let blob = |digest: &str| {
        busybox
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..])
    };
    std::fs::create_dir_all(out.join("blobs/sha256")).expect("create layout");

    let index = read_json(&busybox.join("index.json"));
    let bb_manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("busybox manifest digest");
    let bb_manifest = read_json(&blob(bb_manifest_digest));
    let bb_config_digest = bb_manifest["config"]["digest"]
        .as_str()
        .expect("busybox config digest");
    let mut config = read_json(&blob(bb_config_digest));
    let host_arch = config["architecture"]
        .as_str()
        .unwrap_or("amd64")
        .to_string();
    for layer in bb_manifest["layers"].as_array().expect("busybox layers") {
        let digest = layer["digest"].as_str().expect("layer digest");
        std::fs::copy(
            blob(digest),
            out.join("blobs/sha256").join(&digest["sha256:".len()..]),
        )
        .expect("copy busybox layer");
    }

    let layer_media = "application/vnd.oci.image.layer.v1.tar";
    let created = "1970-01-01T00:00:00Z";
    let variant = |arch: &str| (arch == "arm64").then_some("v8");

    // The host's platform: busybox plus the marker.
    let marker = marker_layer(&host_arch);
    let (marker_digest, marker_size) = put_blob(out, &marker);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .expect("diff_ids")
        .push(json!(marker_digest));
    config["history"]
        .as_array_mut()
        .expect("history")
        .push(json!({"created": created, "created_by": "rbuild test harness: /platform marker"}));
    if let Some(v) = variant(&host_arch) {
        config["variant"] = json!(v);
    }
    let mut manifest = bb_manifest.clone();
    manifest["layers"]
        .as_array_mut()
        .expect("layers")
        .push(json!({"mediaType": layer_media, "digest": marker_digest, "size": marker_size}));
    let host = image_manifest(out, &config, manifest);

    // The other platform: the marker alone.
    let other_arch = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let marker = marker_layer(other_arch);
    let (marker_digest, marker_size) = put_blob(out, &marker);
    let mut config = json!({
        "architecture": other_arch,
        "os": "linux",
        "created": created,
        "config": {"Cmd": ["/platform"]},
        "rootfs": {"type": "layers", "diff_ids": [marker_digest]},
        "history": [{"created": created, "created_by": "rbuild test harness: /platform marker"}],
    });
    if let Some(v) = variant(other_arch) {
        config["variant"] = json!(v);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "layers": [{"mediaType": layer_media, "digest": marker_digest, "size": marker_size}],
    });
    let other = image_manifest(out, &config, manifest);

    // amd64 first, as registries list it conventionally.
    let mut entries = vec![(host_arch.as_str(), host), (other_arch, other)];
    entries.sort_by_key(|(arch, _)| *arch != "amd64");
    let mut platforms = Vec::new();
    let mut descriptors = Vec::new();
    for (arch, (digest, size)) in entries {
        let mut platform = json!({"architecture": arch, "os": "linux"});
        let mut name = format!("linux/{arch}");
        if let Some(v) = variant(arch) {
            platform["variant"] = json!(v);
            name = format!("{name}/{v}");
        }
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": platform,
        }));
        platforms.push((name, digest));
    }
    let image_index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": descriptors,
    });
    let index_bytes = serde_json::to_vec(&image_index).expect("index JSON");
    let (index_digest, index_size) = put_blob(out, &index_bytes);
    let layout_index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(out.join("index.json"), layout_index.to_string()).expect("write index.json");
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    MultiPlatform {
        index: index_digest,
        manifests: platforms,
    }
}

/// Stores `config`, points `manifest` at it, stores the manifest; returns
/// the manifest's digest and size.
fn image_manifest(out: &Path, config: &Value, mut manifest: Value) -> (String, usize) {
    let config_bytes = serde_json::to_vec(config).expect("config JSON");
    let (config_digest, config_size) = put_blob(out, &config_bytes);
    manifest["config"] = json!({
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": config_size,
    });
    put_blob(out, &serde_json::to_vec(&manifest).expect("manifest JSON"))
}
