//! rbuild's configuration file (TOML, `--config` or `RBUILD_CONFIG`).
//! Later features add sections; for now the file is only checked to be
//! valid TOML so a typo is caught the first time it is used.

use std::path::Path;

use anyhow::{Context, Result};

#[derive(Debug, Default)]
pub struct Config {
    #[allow(dead_code)] // read by the features that add sections
    pub table: toml::Table,
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("config {} is not valid TOML", path.display()))?;
        Ok(Config { table })
    }
}
