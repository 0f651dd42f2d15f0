//! A client for the OCI distribution API: pulling base images, pushing
//! results, and the credentials and host settings both need.
//!
//! Everything here is async (tokio + reqwest with rustls); callers run it on
//! their own runtime. Blobs go to and come from a [`rbuild_oci::BlobStore`].

mod auth;
mod client;
pub mod credentials;
mod error;
mod hosts;
mod pull;
mod push;

pub use client::{NetworkOptions, Registry};
pub use credentials::{Credential, CredentialError, CredentialStore};
pub use error::RegistryError;
pub use hosts::{HostConfig, RegistryHosts};
pub use pull::Pulled;
pub use push::{MountSources, PushReport};
