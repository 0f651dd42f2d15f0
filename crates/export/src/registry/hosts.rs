//! Which servers answer for a registry name, and how to talk to them.
//!
//! Modelled on buildkitd.toml's `[registry."NAME"]` sections: a registry may
//! have mirrors (tried in order before the registry itself, for pulls only),
//! may be plain HTTP, may have a self-signed certificate (`insecure`) or
//! extra CA certificates. A mirror's own settings come from its own section.
//! Loopback registries (`localhost`, `127.0.0.0/8`, `::1`) speak plain HTTP
//! unless their section says `http = false`, as docker treats them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use rbuild_oci::DEFAULT_DOMAIN;

/// Docker Hub's API host: `docker.io` is only a name.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// One `[registry."NAME"]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `host[:port][/path]` of mirrors tried before the registry on pulls.
    pub mirrors: Vec<String>,
    /// Plain HTTP; `None` means "HTTP for loopback, HTTPS otherwise".
    pub http: Option<bool>,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// PEM files of extra CA certificates.
    pub ca: Vec<PathBuf>,
}

/// Every configured registry section, by name (`docker.io`, `host:port`).
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    hosts: BTreeMap<String, HostConfig>,
}

/// How to reach one server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    /// The registry name the user wrote (`docker.io`), for messages and
    /// credentials when this is the registry itself.
    pub registry: String,
    /// `host[:port]` to connect to.
    pub host: String,
    /// Path before `/v2` (a mirror may live under a path).
    pub prefix: String,
    pub http: bool,
    pub tls: TlsOptions,
    pub mirror: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsOptions {
    pub insecure: bool,
    pub ca: Vec<PathBuf>,
}

impl RegistryHosts {
    pub fn new() -> RegistryHosts {
        RegistryHosts::default()
    }

    /// Adds (or replaces) the section for `name`.
    pub fn insert(&mut self, name: &str, config: HostConfig) {
        self.hosts.insert(normalize_name(name), config);
    }

    pub fn get(&self, name: &str) -> Option<&HostConfig> {
        self.hosts.get(&normalize_name(name))
    }

    /// The servers to try for pulling from `domain`: its mirrors, then the
    /// registry itself.
    pub(crate) fn pull_endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let mut endpoints: Vec<Endpoint> = self
            .get(domain)
            .map(|c| c.mirrors.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|mirror| self.mirror_endpoint(domain, mirror))
            .collect();
        endpoints.push(self.push_endpoint(domain));
        endpoints
    }

    /// The registry itself (pushes never go to mirrors).
    pub(crate) fn push_endpoint(&self, domain: &str) -> Endpoint {
        let host = if domain == DEFAULT_DOMAIN {
            DOCKER_HUB_HOST.to_string()
        } else {
            domain.to_string()
        };
        let config = self.get(domain).cloned().unwrap_or_default();
        Endpoint {
            registry: domain.to_string(),
            http: config.http.unwrap_or_else(|| is_loopback(&host)),
            tls: TlsOptions {
                insecure: config.insecure,
                ca: config.ca,
            },
            host,
            prefix: String::new(),
            mirror: false,
        }
    }

    fn mirror_endpoint(&self, domain: &str, mirror: &str) -> Endpoint {
        let mirror = mirror
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let (host, prefix) = match mirror.split_once('/') {
            Some((host, path)) => (host, format!("/{path}")),
            None => (mirror, String::new()),
        };
        let config = self.get(host).cloned().unwrap_or_default();
        Endpoint {
            registry: domain.to_string(),
            host: host.to_string(),
            prefix,
            http: config.http.unwrap_or_else(|| is_loopback(host)),
            tls: TlsOptions {
                insecure: config.insecure,
                ca: config.ca,
            },
            mirror: true,
        }
    }
}

impl Endpoint {
    /// `http://127.0.0.1:5000` plus the mirror's path.
    pub fn base_url(&self) -> String {
        let scheme = if self.http { "http" } else { "https" };
        format!("{scheme}://{}{}", self.host, self.prefix)
    }

    /// The name credentials are stored under for this server: the
    /// registry's name for the registry itself, the host for a mirror.
    pub fn credential_name(&self) -> &str {
        if self.mirror {
            &self.host
        } else {
            &self.registry
        }
    }

    /// How messages name this server: `docker.io`, or `docker.io (mirror
    /// 127.0.0.1:5000)`.
    pub fn display_name(&self) -> String {
        if self.mirror {
            format!("{} (mirror {}{})", self.registry, self.host, self.prefix)
        } else {
            self.registry.clone()
        }
    }
}

/// `index.docker.io` and `registry-1.docker.io` are Docker Hub's other names.
fn normalize_name(name: &str) -> String {
    match name {
        "index.docker.io" | DOCKER_HUB_HOST => DEFAULT_DOMAIN.to_string(),
        other => other.to_string(),
    }
}

/// Whether `host[:port]` is this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:5000
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_default_to_http() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
        let hosts = RegistryHosts::new();
        assert!(hosts.push_endpoint("127.0.0.1:5000").http);
        assert!(!hosts.push_endpoint("ghcr.io").http);
        let hub = hosts.push_endpoint("docker.io");
        assert_eq!(hub.base_url(), "https://registry-1.docker.io");
        assert_eq!(hub.credential_name(), "docker.io");
    }

    #[test]
    fn mirrors_come_first_with_their_own_settings() {
        let mut hosts = RegistryHosts::new();
        hosts.insert(
            "docker.io",
            HostConfig {
                mirrors: vec!["127.0.0.1:5000".into(), "mirror.example/hub".into()],
                ..HostConfig::default()
            },
        );
        hosts.insert(
            "mirror.example",
            HostConfig {
                insecure: true,
                ..HostConfig::default()
            },
        );
        let endpoints = hosts.pull_endpoints("docker.io");
        let urls: Vec<String> = endpoints.iter().map(Endpoint::base_url).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:5000",
                "https://mirror.example/hub",
                "https://registry-1.docker.io"
            ]
        );
        assert!(endpoints[1].tls.insecure);
        assert_eq!(endpoints[0].credential_name(), "127.0.0.1:5000");
        assert_eq!(
            endpoints[0].display_name(),
            "docker.io (mirror 127.0.0.1:5000)"
        );
        // Another name of Docker Hub finds the same section.
        assert_eq!(hosts.get("index.docker.io").unwrap().mirrors.len(), 2);
        // A section can turn HTTP off even for loopback.
        hosts.insert(
            "localhost:5443",
            HostConfig {
                http: Some(false),
                ..HostConfig::default()
            },
        );
        assert!(!hosts.push_endpoint("localhost:5443").http);
    }
}
