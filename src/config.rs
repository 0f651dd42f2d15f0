//! rbuild's configuration file (TOML, `--config` or `RBUILD_CONFIG`).
//!
//! ```toml
//! [gc]
//! max-used-space = "10GB"   # cap on the build cache (docker's sizes: 512MB, 1.5GiB, bytes)
//! keep-duration = "48h"     # drop cache unused for longer (30m, 48h, 7d)
//! ```
//!
//! Other sections are only checked to be valid TOML for now (later
//! features add theirs), so a typo is caught the first time the file is
//! used; unknown keys in `[gc]` are errors.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rbuild_solver::gc::{Policy, parse_duration, parse_size};

#[derive(Debug, Default)]
pub struct Config {
    #[allow(dead_code)] // read by the features that add sections
    pub table: toml::Table,
    /// The `[gc]` table: garbage collection applied after builds.
    pub gc: Policy,
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
        Ok(Config { table, gc })
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
