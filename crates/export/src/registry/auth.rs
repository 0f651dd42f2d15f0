//! Answering a registry's `WWW-Authenticate` challenge.
//!
//! The distribution protocol: a request without (or with insufficient)
//! authorization gets `401` and a challenge. `Basic` wants the credentials
//! on every request. `Bearer realm=…,service=…` wants a token from the
//! token server at `realm`, asked for the scopes the request needs
//! (`repository:library/busybox:pull`), with the credentials as Basic auth
//! (or, for an identity token, an OAuth2 refresh-token POST), or with no
//! credentials for anonymous access. Tokens are kept until they expire,
//! and once a server has challenged, later requests ask for their token
//! first, saving a round trip each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;

use super::credentials::{Credential, CredentialStore};
use super::error::{RegistryError, TransportError};
use super::hosts::Endpoint;

/// Where credentials come from.
pub(crate) enum CredentialSource {
    None,
    /// `~/.docker/config.json` and its helpers.
    Store(Arc<CredentialStore>),
    /// One login being checked (`rbuild login`), for one registry.
    Fixed {
        registry: String,
        credential: Credential,
    },
}

/// Answers challenges and keeps the tokens they lead to.
pub(crate) struct Authorizer {
    credentials: CredentialSource,
    hosts: Mutex<HashMap<String, HostAuth>>,
}

#[derive(Default)]
struct HostAuth {
    scheme: Option<Scheme>,
    /// Bearer tokens by the scopes they were issued for.
    tokens: HashMap<String, Token>,
}

#[derive(Clone, Debug, PartialEq)]
enum Scheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, PartialEq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Tokens are refreshed this long before the server says they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// The protocol's default when a token response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl Authorizer {
    pub fn new(credentials: CredentialSource) -> Authorizer {
        Authorizer {
            credentials,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn key(endpoint: &Endpoint) -> String {
        format!("{}{}", endpoint.host, endpoint.prefix)
    }

    /// The `Authorization` header for a request needing `scopes`, once the
    /// server has said which scheme it wants; `None` before that.
    pub async fn header(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint,
        scopes: &[String],
    ) -> Result<Option<String>, RegistryError> {
        let key = Self::key(endpoint);
        let scope_key = scopes.join(" ");
        let scheme = {
            let hosts = self.lock();
            let Some(host) = hosts.get(&key) else {
                return Ok(None);
            };
            if let Some(token) = host.tokens.get(&scope_key)
                && token.expires > Instant::now()
            {
                return Ok(Some(format!("Bearer {}", token.value)));
            }
            host.scheme.clone()
        };
        match scheme {
            None => Ok(None),
            Some(Scheme::Basic) => match self.credential(endpoint)? {
                Some(Credential::Basic { username, password }) => Ok(Some(format!(
                    "Basic {}",
                    BASE64.encode(format!("{username}:{password}"))
                ))),
                Some(Credential::IdentityToken { .. }) => Err(RegistryError::Auth {
                    registry: endpoint.display_name(),
                    message:
                        "the registry wants Basic auth but the stored login is an identity token"
                            .into(),
                }),
                None => Err(no_credentials(endpoint)),
            },
            Some(Scheme::Bearer { realm, service }) => {
                let token = self
                    .fetch_token(client, endpoint, &realm, service.as_deref(), scopes)
                    .await?;
                let value = format!("Bearer {}", token.value);
                self.lock()
                    .entry(key)
                    .or_default()
                    .tokens
                    .insert(scope_key, token);
                Ok(Some(value))
            }
        }
    }

    /// Learns from a 401 response. `sent` says whether the failed request
    /// carried authorization: if it did and the server still refuses the
    /// same scheme, the credentials (or token) are not good enough.
    pub fn challenged(
        &self,
        endpoint: &Endpoint,
        scopes: &[String],
        headers: &HeaderMap,
        sent: bool,
    ) -> Result<(), RegistryError> {
        let challenges: Vec<Challenge> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let scheme = challenges
            .iter()
            .find_map(|c| match c.scheme.to_ascii_lowercase().as_str() {
                "bearer" => Some(Scheme::Bearer {
                    realm: c.params.get("realm")?.clone(),
                    service: c.params.get("service").cloned(),
                }),
                "basic" => Some(Scheme::Basic),
                _ => None,
            });
        let Some(scheme) = scheme else {
            return Err(RegistryError::Auth {
                registry: endpoint.display_name(),
                message: format!(
                    "401 Unauthorized without a challenge rbuild can answer ({:?})",
                    headers.get(WWW_AUTHENTICATE)
                ),
            });
        };
        let mut hosts = self.lock();
        let host = hosts.entry(Self::key(endpoint)).or_default();
        if sent && host.scheme.as_ref() == Some(&scheme) {
            return Err(match scheme {
                Scheme::Basic => refused(endpoint, self.credential(endpoint).ok().flatten()),
                Scheme::Bearer { .. } => RegistryError::Auth {
                    registry: endpoint.display_name(),
                    message: format!(
                        "the registry refused the token issued for {}; the account may lack access",
                        scopes.join(" ")
                    ),
                },
            });
        }
        host.tokens.remove(&scopes.join(" "));
        host.scheme = Some(scheme);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostAuth>> {
        // A panic elsewhere cannot leave the map half-updated: every
        // update is a single insert.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn credential(&self, endpoint: &Endpoint) -> Result<Option<Credential>, RegistryError> {
        match &self.credentials {
            CredentialSource::None => Ok(None),
            CredentialSource::Fixed {
                registry,
                credential,
            } => Ok((registry == endpoint.credential_name()).then(|| credential.clone())),
            CredentialSource::Store(store) => {
                store
                    .get(endpoint.credential_name())
                    .map_err(|e| RegistryError::Auth {
                        registry: endpoint.display_name(),
                        message: e.to_string(),
                    })
            }
        }
    }

    async fn fetch_token(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token, RegistryError> {
        let credential = self.credential(endpoint)?;
        let request = match &credential {
            Some(Credential::IdentityToken { token, .. }) => {
                // OAuth2: an identity token is a refresh token.
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", token.clone()),
                    ("client_id", "rbuild".to_string()),
                    ("scope", scopes.join(" ")),
                ];
                if let Some(service) = service {
                    form.push(("service", service.to_string()));
                }
                client.post(realm).form(&form)
            }
            other => {
                let mut query: Vec<(&str, &str)> = Vec::new();
                if let Some(service) = service {
                    query.push(("service", service));
                }
                for scope in scopes {
                    query.push(("scope", scope));
                }
                match other {
                    Some(Credential::Basic { username, password }) => {
                        query.push(("account", username));
                        client
                            .get(realm)
                            .query(&query)
                            .basic_auth(username, Some(password))
                    }
                    _ => client.get(realm).query(&query),
                }
            }
        };
        let response = request.send().await.map_err(|e| RegistryError::Auth {
            registry: endpoint.display_name(),
            message: format!("token server {realm}: {}", TransportError::from_reqwest(&e)),
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(match credential {
                None => no_credentials(endpoint),
                Some(c) => refused(endpoint, Some(c)),
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Auth {
                registry: endpoint.display_name(),
                message: format!("token server {realm} answered HTTP {}", status.as_u16()),
            });
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body: TokenResponse = response.json().await.map_err(|e| RegistryError::Auth {
            registry: endpoint.display_name(),
            message: format!(
                "token server {realm} sent an unreadable answer: {}",
                TransportError::from_reqwest(&e)
            ),
        })?;
        let value = body
            .token
            .filter(|t| !t.is_empty())
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Auth {
                registry: endpoint.display_name(),
                message: format!("token server {realm} sent no token"),
            })?;
        let lifetime = body
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok(Token {
            value,
            expires: Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
        })
    }
}

fn no_credentials(endpoint: &Endpoint) -> RegistryError {
    RegistryError::Auth {
        registry: endpoint.display_name(),
        message: format!(
            "the registry requires credentials; run `rbuild login {}`",
            endpoint.credential_name()
        ),
    }
}

fn refused(endpoint: &Endpoint, credential: Option<Credential>) -> RegistryError {
    let who = match credential {
        Some(Credential::Basic { username, .. })
        | Some(Credential::IdentityToken { username, .. }) => {
            format!("the credentials of user {username:?} were refused")
        }
        None => "the registry requires credentials".to_string(),
    };
    RegistryError::Auth {
        registry: endpoint.display_name(),
        message: format!(
            "{who}; run `rbuild login {}` with the right ones",
            endpoint.credential_name()
        ),
    }
}

/// Parses `Bearer realm="…",service="…", Basic realm="…"` into challenges.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut challenges = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(rest.len());
        let scheme = rest[..end].to_string();
        rest = rest[end..].trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        let mut params = HashMap::new();
        // Parameters are `key=value` or `key="quoted"`; a word not followed
        // by `=` starts the next challenge.
        while let Some(eq) = rest.find('=') {
            let key = &rest[..eq];
            if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == ',') {
                break;
            }
            let after = &rest[eq + 1..];
            let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.insert(key.to_ascii_lowercase(), value);
            rest = remainder.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        }
        if !scheme.is_empty() {
            challenges.push(Challenge { scheme, params });
        }
    }
    challenges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");

        let c = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(c[0].scheme, "Basic");
        assert_eq!(c[0].params["realm"], "Registry Realm");

        // Two challenges in one header, an escaped quote, unquoted values.
        let c = parse_challenges(
            r#"Basic realm="a \"b\"", Bearer realm=https://t/token,service=reg,error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], "a \"b\"");
        assert_eq!(c[1].scheme, "Bearer");
        assert_eq!(c[1].params["realm"], "https://t/token");
        assert_eq!(c[1].params["service"], "reg");
        assert_eq!(c[1].params["error"], "insufficient_scope");
        assert!(parse_challenges("").is_empty());
    }
}
