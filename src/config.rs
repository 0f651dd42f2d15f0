//! rbuild's configuration file (TOML, `--config` or `RBUILD_CONFIG`).
//!
//! ```toml
//! [gc]
//! max-used-space = "10GB"   # cap on the build cache (docker's sizes: 512MB, 1.5GiB, bytes)
//! keep-duration = "48h"     # drop cache unused for longer (30m, 48h, 7d)
//! ```
//!
//! Registries, as in buildkitd.toml (a mirror's own section sets its
//! `http`, `insecure` and `ca`):
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5000"]
//! [registry."registry.internal:5443"]
//! ca = ["/etc/ssl/internal-ca.pem"]   # extra CA certificates (PEM)
//! insecure = false                     # true: accept any certificate
//! http = false                         # true: plain HTTP (default for loopback)
//!
//! [transfer]
//! retry-time = "2m"   # how long a failing request is retried
//! timeout = "30s"     # connect, and wait for the next bytes of an answer
//! parallel = 4        # blobs transferred at once
//! chunk-size = "64MB" # larger blobs are uploaded in chunks this big
//! ```
//!
//! Other sections are only checked to be valid TOML, so a typo is caught
//! the first time the file is used; unknown keys in the known sections are
//! errors.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rbuild_export::registry::{HostConfig, NetworkOptions, RegistryHosts};
use rbuild_solver::gc::{Policy, parse_duration, parse_size};

#[derive(Debug, Default)]
pub struct Config {
    #[allow(dead_code)] // read by the features that add sections
    pub table: toml::Table,
    /// The `[gc]` table: garbage collection applied after builds.
    pub gc: Policy,
    /// The `[registry."NAME"]` tables.
    pub registry_hosts: RegistryHosts,
    /// The `[transfer]` table.
    pub network: NetworkOptions,
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Config> {
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("config {} is not valid TOML", path.display()))?;
        let gc = gc_table(&table, path)?;
        let registry_hosts = registry_tables(&table, path)?;
        let network = transfer_table(&table, path)?;
        Ok(Config {
            table,
            gc,
            registry_hosts,
            network,
        })
    }
}

/// The garbage collection policy the configuration sets (empty without
/// a `[gc]` table).
#[allow(dead_code)] // applied after builds by the build command
pub fn gc_policy(config: &Config) -> Policy {
    config.gc
}

const GC_KEYS: &[&str] = &["max-used-space", "keep-duration"];

fn gc_table(table: &toml::Table, path: &Path) -> Result<Policy> {
    let file = path.display();
    let Some(gc) = table.get("gc") else {
        return Ok(Policy::default());
    };
    let Some(gc) = gc.as_table() else {
        bail!("config {file}: gc must be a table ([gc])");
    };
    if let Some(unknown) = gc.keys().find(|k| !GC_KEYS.contains(&k.as_str())) {
        bail!(
            "config {file}: gc.{unknown}: unknown key (known: {})",
            GC_KEYS.join(", ")
        );
    }
    let max_used_space = match gc.get("max-used-space") {
        None => None,
        Some(toml::Value::String(s)) => Some(
            parse_size(s).map_err(|e| anyhow::anyhow!("config {file}: gc.max-used-space: {e}"))?,
        ),
        Some(toml::Value::Integer(n)) if *n >= 0 => Some(*n as u64),
        Some(other) => bail!(
            "config {file}: gc.max-used-space: expected a size such as \"10GB\" or a number of bytes, not {other}"
        ),
    };
    let keep_duration = match gc.get("keep-duration") {
        None => None,
        Some(toml::Value::String(s)) => Some(
            parse_duration(s)
                .map_err(|e| anyhow::anyhow!("config {file}: gc.keep-duration: {e}"))?,
        ),
        Some(other) => bail!(
            "config {file}: gc.keep-duration: expected a duration such as \"48h\", not {other}"
        ),
    };
    Ok(Policy {
        max_used_space,
        keep_duration,
    })
}

const REGISTRY_KEYS: &[&str] = &["mirrors", "http", "insecure", "ca"];

fn registry_tables(table: &toml::Table, path: &Path) -> Result<RegistryHosts> {
    let file = path.display();
    let mut hosts = RegistryHosts::new();
    let Some(registries) = table.get("registry") else {
        return Ok(hosts);
    };
    let Some(registries) = registries.as_table() else {
        bail!("config {file}: registry must be a table of registries ([registry.\"docker.io\"])");
    };
    for (name, section) in registries {
        let Some(section) = section.as_table() else {
            bail!("config {file}: registry.{name:?} must be a table");
        };
        if let Some(unknown) = section
            .keys()
            .find(|k| !REGISTRY_KEYS.contains(&k.as_str()))
        {
            bail!(
                "config {file}: registry.{name:?}.{unknown}: unknown key (known: {})",
                REGISTRY_KEYS.join(", ")
            );
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match section.get(key) {
                None => Ok(Vec::new()),
                Some(toml::Value::Array(items)) => items
                    .iter()
                    .map(|i| match i {
                        toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                        other => bail!(
                            "config {file}: registry.{name:?}.{key}: expected strings, found {other}"
                        ),
                    })
                    .collect(),
                Some(other) => bail!(
                    "config {file}: registry.{name:?}.{key}: expected a list of strings, found {other}"
                ),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match section.get(key) {
                None => Ok(None),
                Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
                Some(other) => {
                    bail!(
                        "config {file}: registry.{name:?}.{key}: expected true or false, found {other}"
                    )
                }
            }
        };
        hosts.insert(
            name,
            HostConfig {
                mirrors: strings("mirrors")?,
                http: flag("http")?,
                insecure: flag("insecure")?.unwrap_or(false),
                ca: strings("ca")?.into_iter().map(Into::into).collect(),
            },
        );
    }
    Ok(hosts)
}

const TRANSFER_KEYS: &[&str] = &["retry-time", "timeout", "parallel", "chunk-size"];

fn transfer_table(table: &toml::Table, path: &Path) -> Result<NetworkOptions> {
    let file = path.display();
    let mut options = NetworkOptions::default();
    let Some(transfer) = table.get("transfer") else {
        return Ok(options);
    };
    let Some(transfer) = transfer.as_table() else {
        bail!("config {file}: transfer must be a table ([transfer])");
    };
    if let Some(unknown) = transfer
        .keys()
        .find(|k| !TRANSFER_KEYS.contains(&k.as_str()))
    {
        bail!(
            "config {file}: transfer.{unknown}: unknown key (known: {})",
            TRANSFER_KEYS.join(", ")
        );
    }
    let duration = |key: &str| -> Result<Option<std::time::Duration>> {
        match transfer.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => {
                Ok(Some(parse_duration(s).map_err(|e| {
                    anyhow::anyhow!("config {file}: transfer.{key}: {e}")
                })?))
            }
            Some(other) => bail!(
                "config {file}: transfer.{key}: expected a duration such as \"30s\", not {other}"
            ),
        }
    };
    if let Some(d) = duration("retry-time")? {
        options.retry_time = d;
    }
    if let Some(d) = duration("timeout")? {
        options.timeout = d;
    }
    match transfer.get("chunk-size") {
        None => {}
        Some(toml::Value::String(s)) => {
            options.chunk_size = parse_size(s)
                .ok()
                .filter(|n| *n >= 1024)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "config {file}: transfer.chunk-size: expected a size of at least 1KB such as \"64MB\", not {s:?}"
                    )
                })?
        }
        Some(other) => bail!("config {file}: transfer.chunk-size: expected a size such as \"64MB\", not {other}"),
    }
    match transfer.get("parallel") {
        None => {}
        Some(toml::Value::Integer(n)) if (1..=64).contains(n) => options.parallel = *n as usize,
        Some(other) => bail!("config {file}: transfer.parallel: expected 1 to 64, not {other}"),
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/rbuild.toml"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn gc_policy_from_the_gc_table() {
        let c = parse("[gc]\nmax-used-space = \"10GB\"\nkeep-duration = \"48h\"\n").unwrap();
        assert_eq!(
            gc_policy(&c),
            Policy {
                max_used_space: Some(10 << 30),
                keep_duration: Some(Duration::from_secs(48 * 3600)),
            }
        );
        let c = parse("[gc]\nmax-used-space = 1000000\nkeep-duration = \"7d\"\n").unwrap();
        assert_eq!(c.gc.max_used_space, Some(1_000_000));
        assert_eq!(c.gc.keep_duration, Some(Duration::from_secs(7 * 86_400)));
        assert!(parse("").unwrap().gc.is_empty());
        assert!(parse("[other]\nx = 1\n").unwrap().gc.is_empty());
    }

    #[test]
    fn registry_and_transfer_tables() {
        let c = parse(
            "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n\
             [registry.\"r.example:5443\"]\nca = [\"/ca.pem\"]\ninsecure = true\nhttp = false\n\
             [transfer]\nretry-time = \"10s\"\ntimeout = \"2s\"\nparallel = 2\nchunk-size = \"1MB\"\n",
        )
        .unwrap();
        let hub = c.registry_hosts.get("docker.io").unwrap();
        assert_eq!(hub.mirrors, ["127.0.0.1:5000"]);
        let r = c.registry_hosts.get("r.example:5443").unwrap();
        assert_eq!(r.ca, [std::path::PathBuf::from("/ca.pem")]);
        assert!(r.insecure);
        assert_eq!(r.http, Some(false));
        assert_eq!(c.network.retry_time, Duration::from_secs(10));
        assert_eq!(c.network.timeout, Duration::from_secs(2));
        assert_eq!(c.network.parallel, 2);
        assert_eq!(c.network.chunk_size, 1 << 20);
        let e = err("[registry.\"docker.io\"]\nmirror = [\"x\"]\n");
        assert!(e.contains("mirror: unknown key"), "{e}");
        let e = err("[registry.\"docker.io\"]\nmirrors = \"x\"\n");
        assert!(e.contains("expected a list of strings"), "{e}");
        let e = err("[transfer]\nparallel = 0\n");
        assert!(e.contains("transfer.parallel"), "{e}");
    }

    #[test]
    fn bad_values_name_the_file_and_key() {
        let e = err("[gc]\nmax-used-space = \"10XB\"\n");
        assert!(
            e.contains("/etc/rbuild.toml")
                && e.contains("gc.max-used-space")
                && e.contains("\"10XB\""),
            "{e}"
        );
        let e = err("[gc]\nkeep-duration = \"2 weeks\"\n");
        assert!(
            e.contains("/etc/rbuild.toml") && e.contains("gc.keep-duration"),
            "{e}"
        );
        let e = err("[gc]\nkeep-duration = 3600\n");
        assert!(e.contains("gc.keep-duration"), "{e}");
        let e = err("[gc]\nmax-used-space = -1\n");
        assert!(e.contains("gc.max-used-space"), "{e}");
        let e = err("[gc]\nmax-used = \"1GB\"\n");
        assert!(
            e.contains("gc.max-used: unknown key") && e.contains("max-used-space"),
            "{e}"
        );
        let e = err("gc = 1\n");
        assert!(e.contains("gc must be a table"), "{e}");
    }
}
