//! Finding base images: `--build-context` first, then the local store,
//! then the image's registry (always the registry with `--pull`).

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use rbuild_export::registry::Registry;
use rbuild_export::{Imported, import, load_image};
use rbuild_frontend::{ImageResolver, ResolvedImage};
use rbuild_oci::{Digest, Reference};
use rbuild_solver::Root;

/// A `--build-context NAME=oci-layout://PATH[:TAG|@DIGEST]`.
#[derive(Debug, Clone)]
struct LayoutContext {
    name: String,
    path: PathBuf,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// When and how base images are pulled.
pub struct Pulling<'a> {
    pub config: &'a crate::config::Config,
    /// `--pull`: even images in the store are pulled again (once a build).
    pub always: bool,
    pub quiet: bool,
}

pub struct Resolver<'a> {
    root: &'a Root,
    contexts: Vec<LayoutContext>,
    pulling: Option<Pulling<'a>>,
    /// Made on first use: a build from local images needs no client.
    registry: OnceCell<Registry>,
    /// What this build pulled already, by the name the Dockerfile used.
    pulled: RefCell<HashMap<String, ResolvedImage>>,
}

impl<'a> Resolver<'a> {
    pub fn new(
        root: &'a Root,
        build_contexts: &[String],
        pulling: Option<Pulling<'a>>,
    ) -> Result<Resolver<'a>> {
        let mut contexts = Vec::new();
        for spec in build_contexts {
            let Some((name, value)) = spec.split_once('=') else {
                bail!("invalid --build-context {spec:?}: expected NAME=VALUE");
            };
            if name.is_empty() {
                bail!("invalid --build-context {spec:?}: empty name");
            }
            let Some(location) = value.strip_prefix("oci-layout://") else {
                bail!(
                    "unsupported --build-context {spec:?}: only oci-layout://PATH[:TAG] is supported so far"
                );
            };
            let (location, digest) = match location.split_once('@') {
                Some((l, d)) => (
                    l,
                    Some(
                        d.parse::<Digest>()
                            .map_err(|e| anyhow::anyhow!("--build-context {spec:?}: {e}"))?,
                    ),
                ),
                None => (location, None),
            };
            // A tag follows the last ':' unless that ':' is inside the path.
            let (path, tag) = match location.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !t.is_empty() => (p, Some(t.to_string())),
                _ => (location, None),
            };
            if path.is_empty() {
                bail!("invalid --build-context {spec:?}: empty path");
            }
            contexts.push(LayoutContext {
                name: name.to_string(),
                path: PathBuf::from(path),
                tag,
                digest,
            });
        }
        Ok(Resolver {
            root,
            contexts,
            pulling,
            registry: OnceCell::new(),
            pulled: RefCell::new(HashMap::new()),
        })
    }

    fn resolve_layout(&self, context: &LayoutContext) -> Result<ResolvedImage, String> {
        let images = import(&self.root.content, &context.path).map_err(|e| {
            format!(
                "build context {}={}: {e}",
                context.name,
                context.path.display()
            )
        })?;
        let wanted_tag = context.tag.as_deref();
        let chosen: Option<&Imported> = match (&context.digest, wanted_tag) {
            (Some(d), _) => images.iter().find(|i| i.manifest.digest == *d),
            (None, Some(tag)) => images.iter().find(|i| {
                i.ref_name.as_deref() == Some(tag)
                    || i.name.as_ref().and_then(|n| n.tag()) == Some(tag)
            }),
            (None, None) => match images.as_slice() {
                [only] => Some(only),
                many => many.iter().find(|i| {
                    i.ref_name.as_deref() == Some("latest")
                        || i.name.as_ref().and_then(|n| n.tag()) == Some("latest")
                }),
            },
        };
        let chosen = chosen.ok_or_else(|| {
            format!(
                "build context {}: no image {} in the OCI layout {}",
                context.name,
                context
                    .digest
                    .map(|d| d.to_string())
                    .or(context.tag.clone())
                    .unwrap_or_else(|| "latest".into()),
                context.path.display()
            )
        })?;
        Ok(ResolvedImage {
            name: context.name.clone(),
            manifest: chosen.manifest.clone(),
            config: chosen.config.clone(),
        })
    }

    fn resolve_stored(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
        let reference = Reference::parse(name).map_err(|e| format!("{name}: {e}"))?;
        let record = match reference.digest() {
            Some(digest) => self
                .root
                .images
                .list()
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|r| {
                    r.name.repository() == reference.repository()
                        && (r.manifest.digest == *digest || r.name.digest() == Some(digest))
                }),
            None => self
                .root
                .images
                .get(&reference)
                .map_err(|e| e.to_string())?,
        };
        let Some(record) = record else {
            return Ok(None);
        };
        let image = load_image(&self.root.content, record.manifest, Vec::new())
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(Some(ResolvedImage {
            name: name.to_string(),
            manifest: image.manifest_descriptor,
            config: image.config,
        }))
    }
}

impl Resolver<'_> {
    /// Pulls `name` (once per build) and returns it as resolved.
    fn resolve_pulled(&self, name: &str, pulling: &Pulling<'_>) -> Result<ResolvedImage, String> {
        if let Some(done) = self.pulled.borrow().get(name) {
            return Ok(done.clone());
        }
        let reference = Reference::parse(name).map_err(|e| format!("{name}: {e}"))?;
        let registry = match self.registry.get() {
            Some(r) => r,
            None => {
                let r = crate::registry::client(pulling.config).map_err(|e| format!("{e:#}"))?;
                self.registry.get_or_init(|| r)
            }
        };
        let (_, pulled) = crate::registry::pull(self.root, registry, &reference, pulling.quiet)
            .map_err(|e| format!("pulling {name}: {e:#}"))?;
        let resolved = ResolvedImage {
            name: name.to_string(),
            manifest: pulled.manifest,
            config: pulled.config,
        };
        self.pulled
            .borrow_mut()
            .insert(name.to_string(), resolved.clone());
        Ok(resolved)
    }
}

impl ImageResolver for Resolver<'_> {
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
        let normalized = Reference::parse(name).ok();
        let context = self.contexts.iter().find(|c| {
            c.name == name || (normalized.is_some() && Reference::parse(&c.name).ok() == normalized)
        });
        if let Some(context) = context {
            return self.resolve_layout(context).map(Some);
        }
        match &self.pulling {
            Some(pulling) if pulling.always => self.resolve_pulled(name, pulling).map(Some),
            Some(pulling) => match self.resolve_stored(name)? {
                Some(found) => Ok(Some(found)),
                None => self.resolve_pulled(name, pulling).map(Some),
            },
            None => self.resolve_stored(name),
        }
    }
}
