//! A Docker token-auth server for registry-client tests.
//!
//! A registry configured with `auth: token` (see
//! [`super::registry::RegistryBuilder::token_auth`]) answers unauthenticated
//! requests with `401` and `WWW-Authenticate: Bearer realm=...,service=...,
//! scope=...`. The client then asks the realm, this server, for a token:
//!
//! ```text
//! GET /token?service=S&scope=repository:NAME:pull,push[&scope=...][&account=U]
//! Authorization: Basic base64(user:password)        (optional)
//! ```
//!
//! and gets `{"token": JWT, "access_token": JWT, "expires_in", "issued_at"}`.
//! The JWT is RS256-signed with a key made by openssl for this server; its
//! header carries the key's self-signed certificate in `x5c`, and the
//! registry trusts that certificate through its `rootcertbundle` (the PEM at
//! [`TokenServer::root_cert_bundle`]). The claims grant what was asked,
//! narrowed to what the user may do. The OAuth2 form (`POST /token` with
//! `grant_type=password` or `refresh_token`) is served too.
//!
//! Wrong credentials get `401`. What an anonymous request gets is set by
//! [`Anonymous`]. Every request is recorded ([`TokenServer::requests`]) so a
//! test can assert that its client fetched tokens, with which scopes, and how
//! often.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;

use super::fault_proxy::http::{self, Head};

/// The `service` the registry and the tokens name.
pub const SERVICE: &str = "rbuild-test-registry";
/// The `iss` of the tokens, which the registry checks.
pub const ISSUER: &str = "rbuild-test-token-server";

/// What an anonymous token request (no `Authorization`) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anonymous {
    /// 401 from the token server.
    Refuse,
    /// A token that grants nothing, as Docker Hub gives for a private
    /// repository: the registry then answers 401 `insufficient_scope`.
    NoAccess,
    /// A token granting `pull` (only) on whatever was asked.
    Pull,
}

#[derive(Clone, Debug)]
struct User {
    name: String,
    password: String,
    /// The actions this user may be granted; `None`: any.
    actions: Option<Vec<String>>,
}

/// What became of one token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A token was issued granting these scopes ("repository:NAME:pull,push";
    /// a scope whose actions were all refused is left out).
    Issued(Vec<String>),
    /// Wrong user or password (401).
    BadCredentials,
    /// Anonymous request refused (401).
    AnonymousRefused,
    /// Not a request this server understands (400 or 404).
    BadRequest,
}

/// One request to the token server.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// "GET" or "POST".
    pub method: String,
    /// The user who authenticated, if any.
    pub account: Option<String>,
    /// The scopes asked for, as sent.
    pub scopes: Vec<String>,
    pub outcome: Outcome,
}

/// Options for [`TokenServer`]; [`TokenServer::builder`] starts one.
pub struct TokenServerBuilder {
    users: Vec<User>,
    anonymous: Anonymous,
    expires_in: u64,
}

impl TokenServerBuilder {
    /// A user who is granted every action asked for.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push(User {
            name: name.into(),
            password: password.into(),
            actions: None,
        });
        self
    }

    /// A user who is granted only `actions` (e.g. `&["pull"]`).
    pub fn user_with_actions(mut self, name: &str, password: &str, actions: &[&str]) -> Self {
        self.users.push(User {
            name: name.into(),
            password: password.into(),
            actions: Some(actions.iter().map(|a| a.to_string()).collect()),
        });
        self
    }

    /// What anonymous requests get (default [`Anonymous::Refuse`]).
    pub fn anonymous(mut self, anonymous: Anonymous) -> Self {
        self.anonymous = anonymous;
        self
    }

    /// The tokens' lifetime in seconds (default 300), as `expires_in` and
    /// in the JWT's `exp`. distribution 2.8 allows 60 s of clock skew on
    /// `exp`, so a short lifetime tests the client's own expiry tracking,
    /// not the registry rejecting a stale token.
    pub fn expires_in(mut self, seconds: u64) -> Self {
        self.expires_in = seconds;
        self
    }

    /// Makes the signing key and certificate (openssl) and starts serving.
    pub fn start(self) -> TokenServer {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-token-server.")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "key.pem",
            ],
        );
        // ring reads PKCS#8 DER.
        openssl(
            d,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out",
                "key.pk8",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "key.pem",
                "-subj",
                "/CN=rbuild-test-token-issuer",
                "-days",
                "2",
                "-out",
                "cert.pem",
            ],
        );
        openssl(
            d,
            &[
                "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
            ],
        );
        let pkcs8 = std::fs::read(d.join("key.pk8")).expect("read key.pk8");
        let key = RsaKeyPair::from_pkcs8(&pkcs8).expect("ring accepts the openssl RSA key");
        let cert_der = std::fs::read(d.join("cert.der")).expect("read cert.der");

        let shared = Arc::new(Shared {
            users: self.users,
            anonymous: self.anonymous,
            expires_in: self.expires_in,
            key,
            x5c: STANDARD.encode(cert_der),
            rng: SystemRandom::new(),
            log: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
        });
        let handler_shared = shared.clone();
        let server = http::Server::start(move |stream, _stopping| {
            // A failing socket only ends that connection.
            let _ = handler_shared.serve(stream);
        })
        .expect("token server: bind 127.0.0.1");
        TokenServer {
            cert_pem: d.join("cert.pem"),
            shared,
            server,
            _dir: dir,
        }
    }
}

/// The running token server; stops when dropped. Start one with
/// [`TokenServer::start`] or [`TokenServer::builder`].
pub struct TokenServer {
    shared: Arc<Shared>,
    server: http::Server,
    cert_pem: PathBuf,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// One user with every right; anonymous requests refused.
    pub fn start(user: &str, password: &str) -> TokenServer {
        TokenServer::builder().user(user, password).start()
    }

    pub fn builder() -> TokenServerBuilder {
        TokenServerBuilder {
            users: Vec::new(),
            anonymous: Anonymous::Refuse,
            expires_in: 300,
        }
    }

    /// The first user's name and password, if any (what the harness gives
    /// skopeo when seeding a token-auth registry).
    pub fn first_user(&self) -> Option<(String, String)> {
        self.shared
            .users
            .first()
            .map(|u| (u.name.clone(), u.password.clone()))
    }

    /// "127.0.0.1:PORT".
    pub fn host(&self) -> String {
        self.server.host()
    }

    /// The registry's `auth.token.realm`: "http://127.0.0.1:PORT/token".
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.host())
    }

    pub fn service(&self) -> &'static str {
        SERVICE
    }

    pub fn issuer(&self) -> &'static str {
        ISSUER
    }

    /// The signing certificate (PEM): the registry's
    /// `auth.token.rootcertbundle`.
    pub fn root_cert_bundle(&self) -> &Path {
        &self.cert_pem
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Issued(_)))
    }

    /// How many requests had a wrong user or password.
    pub fn bad_credentials(&self) -> usize {
        self.count(|o| *o == Outcome::BadCredentials)
    }

    fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(&r.outcome)).count()
    }
}

struct Shared {
    users: Vec<User>,
    anonymous: Anonymous,
    expires_in: u64,
    key: RsaKeyPair,
    /// base64 (standard, padded) DER of the signing certificate.
    x5c: String,
    rng: SystemRandom,
    log: Mutex<Vec<TokenRequest>>,
    /// OAuth2 refresh token -> user name.
    refresh_tokens: Mutex<HashMap<String, String>>,
    serial: AtomicU64,
}

/// Who is asking: an authenticated user, or anonymous.
enum Caller<'a> {
    User(&'a User),
    Anonymous,
}

impl Shared {
    /// Serves requests on one connection until the client closes it.
    fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        while let Some(head) = http::read_head(&mut reader)? {
            let framing = http::request_framing(&head)?;
            let (body, complete) = http::read_body(&mut reader, framing)?;
            if !complete {
                return Ok(());
            }
            let (status, extra, body) = self.answer(&head, &body);
            let mut resp = Head::response(status);
            resp.set("Content-Type", "application/json");
            resp.set("Content-Length", &body.len().to_string());
            for (name, value) in extra {
                resp.set(name, &value);
            }
            writer.write_all(&resp.to_bytes())?;
            writer.write_all(body.as_bytes())?;
            writer.flush()?;
            if head.has_token("connection", "close") {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Status, extra headers and JSON body for one request.
    fn answer(&self, head: &Head, body: &[u8]) -> (u16, Vec<(&'static str, String)>, String) {
        let unauthorized = |message: &str| {
            (
                401,
                vec![(
                    "WWW-Authenticate",
                    "Basic realm=\"rbuild-test-token-server\"".to_string(),
                )],
                json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]}).to_string(),
            )
        };
        let method = head.method().to_ascii_uppercase();
        let mut record = TokenRequest {
            method: method.clone(),
            account: None,
            scopes: Vec::new(),
            outcome: Outcome::BadRequest,
        };
        let result = match (method.as_str(), head.path()) {
            ("GET", "/token") => {
                let query = parse_form(head.target().split_once('?').map_or("", |(_, q)| q));
                record.scopes = values(&query, "scope");
                match self.basic_auth_caller(head) {
                    Some(Ok(caller)) => Ok((caller, None)),
                    Some(Err(())) => Err(Outcome::BadCredentials),
                    None => match self.anonymous {
                        Anonymous::Refuse => Err(Outcome::AnonymousRefused),
                        _ => Ok((Caller::Anonymous, None)),
                    },
                }
            }
            ("POST", "/token") => {
                let form = parse_form(&String::from_utf8_lossy(body));
                record.scopes = values(&form, "scope")
                    .iter()
                    .flat_map(|s| s.split(' ').map(str::to_string))
                    .filter(|s| !s.is_empty())
                    .collect();
                let offline = values(&form, "access_type").iter().any(|v| v == "offline");
                match values(&form, "grant_type").first().map(String::as_str) {
                    Some("password") => {
                        let user = values(&form, "username")
                            .into_iter()
                            .next()
                            .unwrap_or_default();
                        let password = values(&form, "password")
                            .into_iter()
                            .next()
                            .unwrap_or_default();
                        match self.find_user(&user, &password) {
                            Some(user) => Ok((Caller::User(user), offline.then_some(()))),
                            None => Err(Outcome::BadCredentials),
                        }
                    }
                    Some("refresh_token") => {
                        let token = values(&form, "refresh_token")
                            .into_iter()
                            .next()
                            .unwrap_or_default();
                        let name = self.refresh_tokens.lock().unwrap().get(&token).cloned();
                        match name.and_then(|n| self.users.iter().find(|u| u.name == n)) {
                            Some(user) => Ok((Caller::User(user), None)),
                            None => Err(Outcome::BadCredentials),
                        }
                    }
                    _ => Err(Outcome::BadRequest),
                }
            }
            _ => Err(Outcome::BadRequest),
        };
        let answer = match result {
            Err(outcome) => {
                let answer = match outcome {
                    Outcome::BadCredentials => unauthorized("incorrect username or password"),
                    Outcome::AnonymousRefused => unauthorized("authentication required"),
                    _ => (
                        if head.path() == "/token" { 400 } else { 404 },
                        Vec::new(),
                        json!({"errors": [{"code": "UNSUPPORTED", "message": "not a token request"}]}).to_string(),
                    ),
                };
                record.outcome = outcome;
                answer
            }
            Ok((caller, want_refresh)) => {
                let granted = self.grant(&caller, &record.scopes);
                let account = match caller {
                    Caller::User(u) => Some(u.name.clone()),
                    Caller::Anonymous => None,
                };
                let (token, now) = self.jwt(account.as_deref().unwrap_or(""), &granted);
                let mut body = json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": self.expires_in,
                    "issued_at": rfc3339(now),
                });
                if want_refresh.is_some()
                    && let Some(name) = &account
                {
                    let refresh = format!(
                        "refresh-{}-{}",
                        name,
                        self.serial.fetch_add(1, Ordering::SeqCst)
                    );
                    self.refresh_tokens
                        .lock()
                        .unwrap()
                        .insert(refresh.clone(), name.clone());
                    body["refresh_token"] = json!(refresh);
                }
                record.account = account;
                record.outcome = Outcome::Issued(
                    granted
                        .iter()
                        .map(|g| format!("{}:{}:{}", g.kind, g.name, g.actions.join(",")))
                        .collect(),
                );
                (200, Vec::new(), body.to_string())
            }
        };
        self.log.lock().unwrap().push(record);
        answer
    }

    /// `None`: no (Basic) Authorization header. `Some(Err)`: wrong
    /// credentials or a malformed header.
    fn basic_auth_caller(&self, head: &Head) -> Option<Result<Caller<'_>, ()>> {
        let value = head.header("authorization")?;
        let Some(encoded) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
        else {
            return Some(Err(()));
        };
        let decoded = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        let Some((name, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Some(Err(()));
        };
        Some(self.find_user(name, password).map(Caller::User).ok_or(()))
    }

    fn find_user(&self, name: &str, password: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.name == name && u.password == password)
    }

    /// The access a caller gets for the scopes asked: each scope's actions,
    /// narrowed to what the caller may do.
    fn grant(&self, caller: &Caller, scopes: &[String]) -> Vec<Access> {
        let allowed: Option<Vec<String>> = match caller {
            Caller::User(user) => user.actions.clone(),
            Caller::Anonymous if self.anonymous == Anonymous::Pull => Some(vec!["pull".into()]),
            Caller::Anonymous => Some(Vec::new()),
        };
        let mut granted: Vec<Access> = Vec::new();
        for scope in scopes {
            // "repository:NAME:pull,push"; NAME has no ':' but be lenient.
            let Some((kind, rest)) = scope.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let actions: Vec<String> = actions
                .split(',')
                .filter(|a| !a.is_empty())
                .filter(|a| {
                    allowed
                        .as_ref()
                        .is_none_or(|allowed| allowed.iter().any(|x| x == a))
                })
                .map(str::to_string)
                .collect();
            if actions.is_empty() {
                continue;
            }
            // The same resource may be asked for twice; merge.
            match granted
                .iter_mut()
                .find(|g| g.kind == kind && g.name == name)
            {
                Some(g) => {
                    for a in actions {
                        if !g.actions.contains(&a) {
                            g.actions.push(a);
                        }
                    }
                }
                None => granted.push(Access {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    actions,
                }),
            }
        }
        granted
    }

    /// A signed JWT for `subject` with `access`; also returns its iat.
    fn jwt(&self, subject: &str, access: &[Access]) -> (String, u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now,
            "iat": now,
            "jti": format!("{}-{}", std::process::id(), self.serial.fetch_add(1, Ordering::SeqCst)),
            "access": access
                .iter()
                .map(|a| json!({"type": a.kind, "name": a.name, "actions": a.actions}))
                .collect::<Vec<_>>(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .expect("RS256 signing");
        (
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)),
            now,
        )
    }
}

/// One entry of a token's `access` claim.
struct Access {
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// Runs openssl in `dir`, panicking with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses `a=1&b=2&b=3` (query or form body), percent-decoding.
fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn values(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Seconds since the epoch as RFC 3339 UTC ("2024-01-02T03:04:05Z").
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
