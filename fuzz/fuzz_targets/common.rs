//! Shared by the fuzz targets: a resolver that knows no images and the
//! options compile() is called with.

use std::collections::BTreeMap;

use rbuild_frontend::{CompileOptions, ImageResolver, ResolvedImage};
use rbuild_oci::Platform;

/// Knows no base image: `FROM scratch` and stage names still compile, any
/// other base is a (clean) error. A name containing "fail" makes the
/// resolver itself fail, to exercise that error path too.
pub struct NoImages;

impl ImageResolver for NoImages {
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
        if name.contains("fail") {
            Err(format!("resolver failed for {name:?}"))
        } else {
            Ok(None)
        }
    }
}

/// A fixed platform, so runs do not depend on the host.
pub fn platform() -> Platform {
    Platform {
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
        os_version: None,
        os_features: None,
        variant: None,
    }
}

pub fn options(
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    context_excludes: Vec<String>,
) -> CompileOptions {
    CompileOptions {
        build_args,
        target,
        platform: platform(),
        context_excludes,
    }
}
