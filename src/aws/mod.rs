//! `aws`: credentials, SigV4 signing, endpoints and clock-skew correction shared by the KVS
//! uploader and the Kinesis Data Streams telemetry producer.
//!
//! - [`CredentialSource`] (from the configuration) → [`provider_for`] → a lazy
//!   [`ProvideCredentials`] (static, environment, shared profile, KVS credential file, IoT
//!   X.509 role alias, or the `auto` chain) → [`CredentialsCache`] (refresh before expiry,
//!   one fetch at a time, [`CredentialsCache::invalidate`] after a 401/403).
//! - [`sign()`] signs an `http::Request` for [`Service::KinesisVideo`] or [`Service::Kinesis`]
//!   at a time the caller takes from [`ClockSkew::now`].
//! - [`resolve_endpoint`] picks the regional, FIPS, dual-stack or overridden endpoint.
//!
//! Invariants: no secret ever appears in `Debug`, `Display` or an error; constructing a
//! provider never touches the network or the file system; plain http is only for loopback.

pub mod cache;
pub mod clock;
pub mod credential_file;
pub mod credentials;
pub mod endpoint;
pub mod iot;
pub mod profile;
pub mod sign;

pub use cache::{CredentialsCache, DEFAULT_REFRESH_BEFORE};
pub use clock::{ClockSkew, ClockSkewError};
pub use credential_file::KvsCredentialFileProvider;
pub use credentials::{
    ChainProvider, CredentialSource, Credentials, CredentialsError, EnvLookup, EnvProvider,
    ProvideCredentials, ProvideFuture, ProviderContext, Secret, StaticProvider, process_env,
    provider_for, provider_for_with, region_from_env,
};
pub use endpoint::{EndpointError, Endpoints, is_loopback_url, resolve_endpoint, signing_region};
pub use iot::{IotCredentialsProvider, IotSettings};
pub use profile::{Profile, ProfileProvider, default_region, load_profile};
pub use sign::{EMPTY_SHA256, PayloadHash, Service, SignError, sign, sign_with_name};
