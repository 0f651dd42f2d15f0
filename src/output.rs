//! `-o/--output` specs in buildx's syntax: `type=TYPE,key=value,...`, a
//! bare path (`-o DIR`, a local directory) or `-` (a tarball on stdout).

use std::path::PathBuf;

use anyhow::{Result, bail};
use rbuild_export::LayerCompression;
use rbuild_export::compress::Compression;

/// Where a build's result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// rbuild's own image store (the default), and with `push` the
    /// names' registries too (layers compressed as `layers` says).
    Image {
        names: Vec<String>,
        push: bool,
        layers: LayerCompression,
    },
    /// A docker-save tarball (file, or stdout for `-`).
    Docker {
        dest: Dest,
        names: Vec<String>,
        layers: LayerCompression,
    },
    /// An OCI layout: a tarball, or a directory with `tar=false`.
    Oci {
        dest: Dest,
        tar: bool,
        names: Vec<String>,
        layers: LayerCompression,
    },
    /// The root filesystem in a directory.
    Local { dest: PathBuf },
    /// The root filesystem as a tarball.
    Tar { dest: Dest },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Path(PathBuf),
    Stdout,
}

impl Dest {
    fn parse(value: &str) -> Dest {
        if value == "-" {
            Dest::Stdout
        } else {
            Dest::Path(PathBuf::from(value))
        }
    }
}

const TYPES: &str = "image, registry, docker, oci, local, tar";

/// What `--push` and `rbuild push` use: gzip, as docker push does.
pub fn registry_default() -> LayerCompression {
    LayerCompression {
        compression: Compression::gzip(),
        force: false,
    }
}

impl Output {
    pub fn parse(spec: &str) -> Result<Output> {
        if spec == "-" {
            return Ok(Output::Tar { dest: Dest::Stdout });
        }
        if !spec.contains('=') {
            return Ok(Output::Local {
                dest: PathBuf::from(spec),
            });
        }
        let mut kind = None;
        let mut dest = None;
        let mut tar = true;
        let mut names = Vec::new();
        let mut push = false;
        let mut compression: Option<String> = None;
        let mut level: Option<String> = None;
        let mut force = false;
        for field in split_csv(spec)? {
            let Some((key, value)) = field.split_once('=') else {
                bail!("invalid output {spec:?}: {field:?} is not key=value");
            };
            match key.trim() {
                "type" => kind = Some(value.to_string()),
                "dest" => dest = Some(value.to_string()),
                "tar" => {
                    tar = match value {
                        "true" => true,
                        "false" => false,
                        _ => bail!("invalid output {spec:?}: tar must be true or false"),
                    }
                }
                "name" => names.extend(
                    value
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string),
                ),
                "push" => {
                    push = match value {
                        "true" => true,
                        "false" => false,
                        _ => bail!("invalid output {spec:?}: push must be true or false"),
                    }
                }
                "compression" => compression = Some(value.to_string()),
                "compression-level" => level = Some(value.to_string()),
                "force-compression" => {
                    force = match value {
                        "true" => true,
                        "false" => false,
                        _ => bail!(
                            "invalid output {spec:?}: force-compression must be true or false"
                        ),
                    }
                }
                other => bail!(
                    "invalid output {spec:?}: unknown key {other:?} (known: type, dest, tar, name, push, compression, compression-level, force-compression)"
                ),
            }
        }
        let Some(kind) = kind else {
            bail!("invalid output {spec:?}: missing type= ({TYPES})")
        };
        // gzip for OCI layouts and registries, uncompressed for docker
        // archives, as BuildKit does.
        let default = match kind.as_str() {
            "docker" => "uncompressed",
            _ => "gzip",
        };
        let layers = LayerCompression {
            compression: Compression::parse(
                compression.as_deref().unwrap_or(default),
                level.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("invalid output {spec:?}: {e}"))?,
            force,
        };
        let need_dest = |dest: Option<String>| -> Result<Dest> {
            match dest {
                Some(d) if !d.is_empty() => Ok(Dest::parse(&d)),
                _ => bail!("output type={kind} needs dest=FILE (or dest=- for standard output)"),
            }
        };
        Ok(match kind.as_str() {
            "image" => Output::Image {
                names,
                push,
                layers,
            },
            // buildx: type=registry is type=image,push=true.
            "registry" => Output::Image {
                names,
                push: true,
                layers,
            },
            "docker" => Output::Docker {
                dest: need_dest(dest)?,
                names,
                layers,
            },
            "oci" => {
                let dest = need_dest(dest)?;
                if !tar && dest == Dest::Stdout {
                    bail!("output type=oci,tar=false needs a directory as dest");
                }
                Output::Oci {
                    dest,
                    tar,
                    names,
                    layers,
                }
            }
            "local" => match need_dest(dest)? {
                Dest::Path(p) => Output::Local { dest: p },
                Dest::Stdout => bail!("output type=local needs a directory as dest"),
            },
            "tar" => Output::Tar {
                dest: need_dest(dest)?,
            },
            other => bail!("unknown output type {other:?} (supported: {TYPES})"),
        })
    }
}

/// Splits on commas outside double quotes, as buildx's CSV reader does,
/// so `"name=a,b"` keeps its comma.
fn split_csv(spec: &str) -> Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        bail!("invalid output {spec:?}: unterminated quote");
    }
    fields.push(current);
    Ok(fields.into_iter().filter(|f| !f.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_buildx_specs() {
        let plain = LayerCompression {
            compression: Compression::Uncompressed,
            force: false,
        };
        assert_eq!(
            Output::parse("type=docker,dest=out.tar").unwrap(),
            Output::Docker {
                dest: Dest::Path("out.tar".into()),
                names: vec![],
                layers: plain,
            }
        );
        assert_eq!(
            Output::parse("type=oci,dest=dir,tar=false").unwrap(),
            Output::Oci {
                dest: Dest::Path("dir".into()),
                tar: false,
                names: vec![],
                layers: registry_default(),
            }
        );
        assert_eq!(
            Output::parse(
                "type=oci,dest=o.tar,compression=zstd,compression-level=19,force-compression=true"
            )
            .unwrap(),
            Output::Oci {
                dest: Dest::Path("o.tar".into()),
                tar: true,
                names: vec![],
                layers: LayerCompression {
                    compression: Compression::Zstd { level: 19 },
                    force: true,
                },
            }
        );
        assert!(Output::parse("type=oci,dest=o,compression=lz4").is_err());
        assert!(Output::parse("type=oci,dest=o,compression=gzip,compression-level=99").is_err());
        assert_eq!(
            Output::parse("out").unwrap(),
            Output::Local { dest: "out".into() }
        );
        assert_eq!(
            Output::parse("-").unwrap(),
            Output::Tar { dest: Dest::Stdout }
        );
        assert_eq!(
            Output::parse(r#"type=image,"name=a:1,b:2""#).unwrap(),
            Output::Image {
                names: vec!["a:1".into(), "b:2".into()],
                push: false,
                layers: registry_default(),
            }
        );
        assert_eq!(
            Output::parse("type=image,name=r/a:1,push=true").unwrap(),
            Output::parse("type=registry,name=r/a:1").unwrap()
        );
        assert!(Output::parse("type=image,push=maybe").is_err());
        assert!(
            Output::parse("type=bogus,dest=x")
                .unwrap_err()
                .to_string()
                .contains("unknown output type")
        );
        assert!(Output::parse("type=docker").is_err());
        assert!(Output::parse("type=local,dest=x,color=red").is_err());
    }
}
