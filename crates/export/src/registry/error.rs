//! What can go wrong talking to a registry. Every error names the registry
//! and, where there is one, the repository, so a CI log says where to look.

use std::io;

use rbuild_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with a status that is not retried (or kept
    /// answering with a retried one until the retry time ran out).
    #[error("{registry}/{repository}: {action}: HTTP {status}{}", detail(.message))]
    Status {
        registry: String,
        repository: String,
        action: String,
        status: u16,
        /// The registry's own error text (its `errors` JSON), if any.
        message: String,
    },
    /// The connection failed (refused, reset, timed out, TLS). The
    /// transport error is part of the message (it is already the whole
    /// chain of causes), not a separate source.
    #[error("{registry}/{repository}: {action}: {error}")]
    Transport {
        registry: String,
        repository: String,
        action: String,
        error: TransportError,
    },
    /// Credentials were refused, or the registry's auth challenge could not
    /// be answered.
    #[error("{registry}: authentication failed: {message}")]
    Auth { registry: String, message: String },
    /// The bytes a registry sent do not have the digest they were asked by.
    #[error("{registry}/{repository}: {what} {} arrived with digest {}", .digests.expected, .digests.actual)]
    DigestMismatch {
        registry: String,
        repository: String,
        what: String,
        /// Boxed: two digests would make every `Result` of this type large.
        digests: Box<Mismatch>,
    },
    #[error("{reference}: manifest unknown on {registry}")]
    NotFound { registry: String, reference: String },
    #[error("{reference}: no image for platform {wanted} (the index has: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{reference}: unsupported manifest media type {media_type:?}")]
    Unsupported {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: {message}")]
    Invalid { reference: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// Every mirror failed, and then the registry itself.
    #[error("{mirror}; then {registry}")]
    Fallback {
        mirror: Box<RegistryError>,
        registry: Box<RegistryError>,
    },
}

/// The digest asked for and the digest of what came.
#[derive(Debug)]
pub struct Mismatch {
    pub expected: Digest,
    pub actual: Digest,
}

/// A transport failure, with reqwest's error chain flattened into one line
/// (reqwest's own Display says only "error sending request").
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub(crate) String);

impl TransportError {
    pub(crate) fn from_reqwest(e: &reqwest::Error) -> TransportError {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let s_text = s.to_string();
            // hyper and io errors often repeat their inner error's text.
            if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        TransportError(text)
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl RegistryError {
    /// Whether trying the whole operation again may succeed (the server
    /// was unavailable, the connection dropped).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => is_retried_status(*status),
            RegistryError::Transport { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> RegistryError {
        let context = context.into();
        move |source| RegistryError::Io { context, source }
    }
}

/// Statuses that mean "not now" rather than "no": the request is retried.
pub(crate) fn is_retried_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}
