use std::io;
use std::path::PathBuf;

use rbuild_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("blob {digest}: {source}")]
    Blob { digest: Digest, source: io::Error },
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Apply {
        path: PathBuf,
        source: rbuild_exec::apply::ApplyError,
    },
}

impl ExportError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ExportError {
        let context = context.into();
        move |source| ExportError::Io { context, source }
    }

    pub(crate) fn blob(digest: &rbuild_oci::Digest) -> impl FnOnce(io::Error) -> ExportError + '_ {
        move |source| ExportError::Blob {
            digest: *digest,
            source,
        }
    }
}
