//! The HTTP side of the registry client: one connection pool per TLS
//! setting, authorization on every request, and retries.
//!
//! A request is retried when the server is briefly unable (5xx, 429 with
//! its `Retry-After`, 408) or the connection fails (refused, reset, timed
//! out), with exponential backoff, until the client's retry time is spent;
//! then the last failure is reported with the registry, repository and
//! status. Requests whose body cannot be sent twice are not retried here:
//! their caller restarts the whole operation (see `push.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER, USER_AGENT};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::auth::{Authorizer, CredentialSource};
use super::credentials::{Credential, CredentialStore};
use super::error::{RegistryError, TransportError, is_retried_status};
use super::hosts::{Endpoint, RegistryHosts, TlsOptions};

/// Timing of network operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkOptions {
    /// How long a request (and its retries) may keep failing before the
    /// operation gives up.
    pub retry_time: Duration,
    /// How long to wait for a connection, or for the next bytes of an
    /// answer.
    pub timeout: Duration,
    /// Blobs transferred at the same time.
    pub parallel: usize,
    /// Blobs larger than this are uploaded in chunks of this size (some
    /// proxies in front of registries limit request bodies).
    pub chunk_size: u64,
}

impl Default for NetworkOptions {
    fn default() -> NetworkOptions {
        NetworkOptions {
            retry_time: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
            parallel: 4,
            chunk_size: 64 << 20,
        }
    }
}

/// A registry client: hosts configuration, credentials, connection pools
/// and tokens, shared by every pull and push of one rbuild invocation.
pub struct Registry {
    pub(crate) hosts: RegistryHosts,
    pub(crate) options: NetworkOptions,
    auth: Authorizer,
    clients: Mutex<HashMap<TlsOptions, reqwest::Client>>,
}

/// Whether a failed request may simply be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// GET, HEAD, manifest PUT: sending twice is harmless.
    Yes,
    /// A blob upload's body: the caller restarts the upload instead.
    No,
}

/// Requests to one repository on one server, with the scopes they need.
pub(crate) struct Session<'a> {
    pub registry: &'a Registry,
    pub endpoint: Endpoint,
    pub repository: String,
    pub scopes: Vec<String>,
    pub client: reqwest::Client,
}

impl Registry {
    pub fn new(
        hosts: RegistryHosts,
        credentials: Option<CredentialStore>,
        options: NetworkOptions,
    ) -> Registry {
        Registry {
            hosts,
            options,
            auth: Authorizer::new(match credentials {
                Some(store) => CredentialSource::Store(Arc::new(store)),
                None => CredentialSource::None,
            }),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client that logs in to `registry` with `credential` only, for
    /// checking a login before it is stored.
    pub fn with_login(
        hosts: RegistryHosts,
        options: NetworkOptions,
        registry: &str,
        credential: Credential,
    ) -> Registry {
        Registry {
            hosts,
            options,
            auth: Authorizer::new(CredentialSource::Fixed {
                registry: registry.to_string(),
                credential,
            }),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that the registry accepts this client's credentials, as
    /// `docker login` does: `GET /v2/`, answering its challenge.
    pub async fn check_login(&self, registry: &str) -> Result<(), RegistryError> {
        let session = self.session(self.hosts.push_endpoint(registry), "", Vec::new())?;
        let url = format!("{}/v2/", session.endpoint.base_url());
        let response = session
            .send("logging in", Retry::Yes, &[StatusCode::OK], |c| c.get(&url))
            .await?;
        drop(response);
        Ok(())
    }

    pub(crate) fn session(
        &self,
        endpoint: Endpoint,
        repository: &str,
        scopes: Vec<String>,
    ) -> Result<Session<'_>, RegistryError> {
        let client = self.client(&endpoint.tls)?;
        Ok(Session {
            registry: self,
            endpoint,
            repository: repository.to_string(),
            scopes,
            client,
        })
    }

    fn client(&self, tls: &TlsOptions) -> Result<reqwest::Client, RegistryError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(tls) {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.options.timeout)
            .read_timeout(self.options.timeout)
            .danger_accept_invalid_certs(tls.insecure);
        for path in &tls.ca {
            let pem = std::fs::read(path).map_err(RegistryError::io(format!(
                "reading CA certificate {}",
                path.display()
            )))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Config(format!(
                    "CA certificate {}: {}",
                    path.display(),
                    TransportError::from_reqwest(&e)
                ))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| {
            RegistryError::Config(format!("HTTP client: {}", TransportError::from_reqwest(&e)))
        })?;
        clients.insert(tls.clone(), client.clone());
        Ok(client)
    }
}

/// `repository:NAME:pull` and friends.
pub(crate) fn scope(repository: &str, actions: &str) -> String {
    format!("repository:{repository}:{actions}")
}

impl Session<'_> {
    /// `BASE/v2/REPOSITORY/SUFFIX`.
    pub fn url(&self, suffix: &str) -> String {
        format!(
            "{}/v2/{}/{suffix}",
            self.endpoint.base_url(),
            self.repository
        )
    }

    /// Resolves a `Location` header against the server (it may be
    /// relative, as distribution sends it).
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            let scheme = if self.endpoint.http { "http" } else { "https" };
            format!("{scheme}://{}{location}", self.endpoint.host)
        }
    }

    pub fn error_status(&self, action: &str, status: StatusCode, message: String) -> RegistryError {
        RegistryError::Status {
            registry: self.endpoint.display_name(),
            repository: self.repository.clone(),
            action: action.to_string(),
            status: status.as_u16(),
            message,
        }
    }

    pub fn error_transport(&self, action: &str, e: &reqwest::Error) -> RegistryError {
        RegistryError::Transport {
            registry: self.endpoint.display_name(),
            repository: self.repository.clone(),
            action: action.to_string(),
            error: TransportError::from_reqwest(e),
        }
    }

    /// Sends the request `make` builds, authorized, retried per `retry`,
    /// and returns the response when its status is one of `expected`
    /// (404 is returned too when `expected` contains it).
    pub async fn send(
        &self,
        action: &str,
        retry: Retry,
        expected: &[StatusCode],
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let mut backoff = Backoff::new(self.registry.options.retry_time);
        let mut challenged = false;
        loop {
            let authorization = self
                .registry
                .auth
                .header(&self.client, &self.endpoint, &self.scopes)
                .await?;
            let mut request = make(&self.client).header(USER_AGENT, user_agent());
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value);
            }
            let failure = match request.send().await {
                Ok(response) if expected.contains(&response.status()) => return Ok(response),
                Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    // Refused credentials or tokens come back as errors here.
                    self.registry.auth.challenged(
                        &self.endpoint,
                        &self.scopes,
                        response.headers(),
                        authorization.is_some(),
                    )?;
                    if !challenged {
                        challenged = true;
                        continue;
                    }
                    let message = error_message(response).await;
                    return Err(RegistryError::Auth {
                        registry: self.endpoint.display_name(),
                        message: format!(
                            "{action}: still unauthorized after answering the challenge: {message}"
                        ),
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let wait = retry_after(response.headers());
                    let message = error_message(response).await;
                    let error = self.error_status(action, status, message);
                    if !is_retried_status(status.as_u16()) {
                        return Err(error);
                    }
                    (error, wait)
                }
                // A name that does not resolve, or a certificate that is not
                // trusted, will not be better in a second.
                Err(e) if is_permanent(&e) => return Err(self.error_transport(action, &e)),
                Err(e) => (self.error_transport(action, &e), None),
            };
            let (error, wait) = failure;
            if retry == Retry::No || !backoff.wait(wait).await {
                return Err(error);
            }
        }
    }
}

/// Exponential backoff within a total time: 200 ms, 400 ms, … up to 5 s
/// between attempts, or what `Retry-After` asks.
pub(crate) struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    pub fn new(total: Duration) -> Backoff {
        Backoff {
            deadline: Instant::now() + total,
            next: Duration::from_millis(200),
        }
    }

    /// Sleeps before the next attempt; `false` when the time is spent.
    pub async fn wait(&mut self, asked: Option<Duration>) -> bool {
        let wait = asked.unwrap_or(self.next);
        self.next = (self.next * 2).min(Duration::from_secs(5));
        if Instant::now() + wait > self.deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }
}

fn is_permanent(e: &reqwest::Error) -> bool {
    let text = TransportError::from_reqwest(e).0;
    text.contains("dns error") || text.contains("certificate")
}

fn user_agent() -> &'static str {
    concat!("rbuild/", env!("CARGO_PKG_VERSION"))
}

/// `Retry-After: 3` (seconds); the HTTP-date form is rare from
/// registries and falls back to backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(60)))
}

/// The registry's own explanation: `{"errors":[{"code","message"}]}`.
pub(crate) async fn error_message(response: Response) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(body) = response.bytes().await else {
        return String::new();
    };
    match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) => errors
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            text.trim().chars().take(200).collect()
        }
    }
}
