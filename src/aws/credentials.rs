//! Credential values, the provider trait, the simple providers (static, environment) and the
//! `auto` chain.
//!
//! Invariants:
//! - A secret (secret access key, session token) is only reachable through [`Secret::expose`];
//!   `Debug`/`Display` of [`Secret`], [`Credentials`], [`CredentialSource`] and every
//!   [`CredentialsError`] never contain one.
//! - Constructing a provider does no I/O at all; files and the network are touched only inside
//!   [`ProvideCredentials::provide`], so the daemon starts and buffers while offline.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use zeroize::Zeroize;

use super::credential_file::KvsCredentialFileProvider;
use super::iot::{IotCredentialsProvider, IotSettings};
use super::profile::ProfileProvider;

/// A secret string (secret access key, session token). Prints as `***`; zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call sites are the only places a secret leaves this type.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A set of AWS credentials. `Debug` shows the access key id (not a secret: AWS logs it too)
/// and redacts the secret key and the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id (`AKIA…` long-term, `ASIA…` temporary).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
    /// When the credentials stop working; `None` for long-term keys.
    pub expires_at: Option<SystemTime>,
}

impl Credentials {
    /// Builds credentials from their parts.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<Secret>,
        session_token: Option<Secret>,
        expires_at: Option<SystemTime>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
            expires_at,
        }
    }

    /// Whether the credentials have expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field(
                "expires_at",
                &self.expires_at.map(super::clock::format_rfc3339),
            )
            .finish()
    }
}

/// Why credentials could not be produced. Names the source and what failed in it (file and line,
/// HTTP status, environment variable); never contains a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// An environment variable the environment provider needs is not set.
    #[error("environment: {var} is not set")]
    EnvNotSet {
        /// The variable.
        var: &'static str,
    },
    /// One half of a key pair is in the environment, the other is not.
    #[error("environment: {present} is set but {missing} is not")]
    EnvIncomplete {
        /// The variable that is set.
        present: &'static str,
        /// The variable that is missing or empty.
        missing: &'static str,
    },
    /// Static credentials from the configuration are unusable.
    #[error("static credentials: {reason}")]
    StaticInvalid {
        /// What is wrong.
        reason: &'static str,
    },
    /// Neither shared config file exists.
    #[error("shared AWS config: no file found (looked for {searched})")]
    ProfileFilesMissing {
        /// The paths looked at.
        searched: String,
    },
    /// The selected profile is in none of the shared files.
    #[error("shared AWS config: profile `{profile}` not found in {searched}")]
    ProfileNotFound {
        /// The profile name.
        profile: String,
        /// The files searched.
        searched: String,
    },
    /// The profile exists but names no credentials at all (e.g. only a region).
    #[error("shared AWS config: profile `{profile}` has no credentials")]
    ProfileNoCredentials {
        /// The profile name.
        profile: String,
    },
    /// A shared config file is not valid INI.
    #[error("shared AWS config: {}:{line}:{column}: {message}", path.display())]
    ProfileSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The profile exists but does not hold usable static credentials.
    #[error("shared AWS config: profile `{profile}` ({}): {reason}", path.display())]
    ProfileInvalid {
        /// The profile name.
        profile: String,
        /// The file that defines it.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The KVS credential file does not exist.
    #[error("credential file {} does not exist", path.display())]
    FileMissing {
        /// The file.
        path: PathBuf,
    },
    /// The KVS credential file is malformed.
    #[error("credential file {}, line {line}: {reason}", path.display())]
    FileFormat {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending token.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The KVS credential file holds credentials that have already expired.
    #[error("credential file {}: credentials expired at {expired_at}", path.display())]
    FileExpired {
        /// The file.
        path: PathBuf,
        /// RFC 3339 expiry.
        expired_at: String,
    },
    /// The IoT provider settings are unusable (bad role alias, thing name, endpoint).
    #[error("IoT credentials provider: {reason}")]
    IotConfig {
        /// What is wrong.
        reason: String,
    },
    /// The device certificate, key or CA file could not be loaded.
    #[error("IoT credentials provider: loading {what} from {}: {reason}", path.display())]
    IotTlsMaterial {
        /// "certificate", "private key" or "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The request to the IoT credentials endpoint failed before a response arrived.
    #[error("IoT credentials provider: request to {url} failed: {reason}")]
    IotRequest {
        /// The URL requested.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The IoT credentials endpoint answered with an error status.
    #[error("IoT credentials provider: {url} answered HTTP {status}: {body}")]
    IotStatus {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the (error) body; error bodies carry no credentials.
        body: String,
    },
    /// The IoT credentials endpoint answered 200 with a body that is not the expected JSON.
    #[error("IoT credentials provider: unexpected response from {url}: {reason}")]
    IotResponse {
        /// The URL requested.
        url: String,
        /// What is wrong (never quotes the body).
        reason: String,
    },
    /// A provider produced credentials that had already expired.
    #[error("{provider}: credentials expired at {expired_at}")]
    Expired {
        /// The provider's name.
        provider: &'static str,
        /// RFC 3339 expiry time.
        expired_at: String,
    },
    /// The `auto` chain found nothing; lists what each member said.
    #[error("no AWS credentials found; tried: {tried}")]
    NoneFound {
        /// One entry per provider, `; `-separated.
        tried: String,
    },
}

impl CredentialsError {
    /// True when the source is simply not configured (as opposed to configured but broken);
    /// the `auto` chain moves on to its next member only for these.
    pub fn is_not_configured(&self) -> bool {
        matches!(
            self,
            Self::EnvNotSet { .. }
                | Self::ProfileFilesMissing { .. }
                | Self::ProfileNotFound { .. }
                | Self::ProfileNoCredentials { .. }
                | Self::FileMissing { .. }
                | Self::NoneFound { .. }
        )
    }

    /// True when trying again later may succeed without a configuration change
    /// (network failures, 5xx and 429 from the IoT endpoint, I/O errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::IotRequest { .. } | Self::Io { .. } => true,
            Self::IotStatus { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The future a provider returns.
pub type ProvideFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Credentials, CredentialsError>> + Send + 'a>>;

/// A source of credentials. Implementations do no I/O when constructed.
pub trait ProvideCredentials: Send + Sync + 'static {
    /// Produces credentials, reading files or calling the network as the source requires.
    fn provide(&self) -> ProvideFuture<'_>;
    /// A short name for logs and errors ("environment", "profile", …).
    fn name(&self) -> &'static str;
}

/// Where credentials come from, as the configuration selects it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// Environment → shared profile → KVS credential file (when one is configured and exists).
    #[default]
    Auto,
    /// Fixed keys from the configuration.
    Static {
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: Secret,
        /// Optional session token.
        session_token: Option<Secret>,
    },
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    Env,
    /// A profile of `~/.aws/credentials` / `~/.aws/config` (`None`: `AWS_PROFILE` or `default`).
    Profile {
        /// The profile name.
        name: Option<String>,
    },
    /// The KVS producer credential file (`CREDENTIALS <key> [<expiry>] <secret> [<token>]`).
    File {
        /// The file.
        path: PathBuf,
    },
    /// The AWS IoT credentials provider (X.509 client certificate, role alias).
    Iot(IotSettings),
}

/// A lookup of environment variables, injectable so tests never touch the process environment.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment as an [`EnvLookup`].
pub fn process_env() -> EnvLookup {
    Arc::new(|name: &str| std::env::var(name).ok())
}

/// What providers read from the surroundings: environment, home directory and the credential
/// file the `auto` chain should try.
#[derive(Clone)]
pub struct ProviderContext {
    /// Environment lookup.
    pub env: EnvLookup,
    /// The home directory (for `~/.aws/...`); `None` means "take `HOME` from `env`".
    pub home_dir: Option<PathBuf>,
    /// The KVS credential file the `auto` chain tries last (only if it exists).
    pub credential_file: Option<PathBuf>,
}

impl ProviderContext {
    /// The real process environment, `HOME`, and no credential file for `auto`.
    pub fn from_process() -> Self {
        Self {
            env: process_env(),
            home_dir: None,
            credential_file: None,
        }
    }

    /// A context over an injected environment lookup.
    pub fn with_env(env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            env: Arc::new(env),
            home_dir: None,
            credential_file: None,
        }
    }

    /// The home directory: the explicit one, else `HOME` from the environment.
    pub fn home(&self) -> Option<PathBuf> {
        self.home_dir.clone().or_else(|| {
            (self.env)("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
        })
    }
}

impl fmt::Debug for ProviderContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderContext")
            .field("home_dir", &self.home_dir)
            .field("credential_file", &self.credential_file)
            .finish_non_exhaustive()
    }
}

/// The provider for a configured source, over the process environment. `Auto` tries env and
/// profile only; use [`provider_for_with`] to add a KVS credential file to the chain.
pub fn provider_for(source: &CredentialSource) -> Arc<dyn ProvideCredentials> {
    provider_for_with(source, &ProviderContext::from_process())
}

/// The provider for a configured source within an explicit [`ProviderContext`].
pub fn provider_for_with(
    source: &CredentialSource,
    context: &ProviderContext,
) -> Arc<dyn ProvideCredentials> {
    match source {
        CredentialSource::Auto => {
            let mut members: Vec<Arc<dyn ProvideCredentials>> = vec![
                Arc::new(EnvProvider::with_lookup(context.env.clone())),
                Arc::new(ProfileProvider::new(None, context.clone())),
            ];
            if let Some(path) = &context.credential_file {
                members.push(Arc::new(KvsCredentialFileProvider::new(path.clone())));
            }
            Arc::new(ChainProvider::new(members))
        }
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => Arc::new(StaticProvider::new(Credentials::new(
            access_key_id.clone(),
            secret_access_key.clone(),
            session_token.clone(),
            None,
        ))),
        CredentialSource::Env => Arc::new(EnvProvider::with_lookup(context.env.clone())),
        CredentialSource::Profile { name } => {
            Arc::new(ProfileProvider::new(name.clone(), context.clone()))
        }
        CredentialSource::File { path } => Arc::new(KvsCredentialFileProvider::new(path.clone())),
        CredentialSource::Iot(settings) => Arc::new(IotCredentialsProvider::new(settings.clone())),
    }
}

/// Fixed credentials.
#[derive(Debug, Clone)]
pub struct StaticProvider {
    credentials: Credentials,
}

impl StaticProvider {
    /// Serves these credentials forever.
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials }
    }
}

impl ProvideCredentials for StaticProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        let result = if self.credentials.access_key_id.is_empty() {
            Err(CredentialsError::StaticInvalid {
                reason: "access key id is empty",
            })
        } else if self.credentials.secret_access_key.expose().is_empty() {
            Err(CredentialsError::StaticInvalid {
                reason: "secret access key is empty",
            })
        } else {
            Ok(self.credentials.clone())
        };
        Box::pin(std::future::ready(result))
    }

    fn name(&self) -> &'static str {
        "static"
    }
}

/// Environment variable names the environment provider reads.
pub mod env_vars {
    /// Access key id.
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// Secret access key.
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// Session token (optional).
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// Region, first choice.
    pub const REGION: &str = "AWS_REGION";
    /// Region, second choice.
    pub const DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
}

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`,
/// read at each `provide`.
#[derive(Clone)]
pub struct EnvProvider {
    env: EnvLookup,
}

impl EnvProvider {
    /// Over the process environment.
    pub fn new() -> Self {
        Self { env: process_env() }
    }

    /// Over an injected lookup.
    pub fn with_lookup(env: EnvLookup) -> Self {
        Self { env }
    }

    fn read(&self) -> Result<Credentials, CredentialsError> {
        let get = |name: &str| (self.env)(name).filter(|v| !v.trim().is_empty());
        let access_key_id = get(env_vars::ACCESS_KEY_ID);
        let secret = get(env_vars::SECRET_ACCESS_KEY);
        match (access_key_id, secret) {
            (Some(access_key_id), Some(secret)) => Ok(Credentials::new(
                access_key_id.trim(),
                Secret::new(secret.trim()),
                get(env_vars::SESSION_TOKEN).map(|t| Secret::new(t.trim())),
                None,
            )),
            (None, None) => Err(CredentialsError::EnvNotSet {
                var: env_vars::ACCESS_KEY_ID,
            }),
            (Some(_), None) => Err(CredentialsError::EnvIncomplete {
                present: env_vars::ACCESS_KEY_ID,
                missing: env_vars::SECRET_ACCESS_KEY,
            }),
            (None, Some(_)) => Err(CredentialsError::EnvIncomplete {
                present: env_vars::SECRET_ACCESS_KEY,
                missing: env_vars::ACCESS_KEY_ID,
            }),
        }
    }
}

impl Default for EnvProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvProvider")
    }
}

impl ProvideCredentials for EnvProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        Box::pin(std::future::ready(self.read()))
    }

    fn name(&self) -> &'static str {
        "environment"
    }
}

/// The region from `AWS_REGION`, else `AWS_DEFAULT_REGION` (empty values are ignored).
pub fn region_from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    [env_vars::REGION, env_vars::DEFAULT_REGION]
        .into_iter()
        .filter_map(env)
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
}

/// Tries its members in order; moves on only when a member is not configured at all, so a
/// configured but broken source (a malformed file, a profile without a secret) is reported
/// rather than silently skipped.
pub struct ChainProvider {
    members: Vec<Arc<dyn ProvideCredentials>>,
}

impl ChainProvider {
    /// A chain over these providers, first one first.
    pub fn new(members: Vec<Arc<dyn ProvideCredentials>>) -> Self {
        Self { members }
    }

    /// The members' names, in order.
    pub fn member_names(&self) -> Vec<&'static str> {
        self.members.iter().map(|m| m.name()).collect()
    }
}

impl fmt::Debug for ChainProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainProvider")
            .field("members", &self.member_names())
            .finish()
    }
}

impl ProvideCredentials for ChainProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        Box::pin(async move {
            let mut tried = Vec::with_capacity(self.members.len());
            for member in &self.members {
                match member.provide().await {
                    Ok(credentials) => {
                        tracing::debug!(provider = member.name(), "credentials loaded");
                        return Ok(credentials);
                    }
                    Err(error) if error.is_not_configured() => tried.push(error.to_string()),
                    Err(error) => return Err(error),
                }
            }
            Err(CredentialsError::NoneFound {
                tried: tried.join("; "),
            })
        })
    }

    fn name(&self) -> &'static str {
        "auto"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> EnvLookup {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Arc::new(move |name: &str| map.get(name).cloned())
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "SESSIONTOKENVALUE-xyz";

    #[test]
    fn secret_and_credentials_never_print_secrets() {
        let secret = Secret::new(SECRET);
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), SECRET);
        let creds = Credentials::new("AKID", SECRET, Some(Secret::new(TOKEN)), None);
        let debug = format!("{creds:?} {creds:#?}");
        assert!(debug.contains("AKID"));
        assert!(!debug.contains(SECRET));
        assert!(!debug.contains(TOKEN));
        let source = CredentialSource::Static {
            access_key_id: "AKID".into(),
            secret_access_key: Secret::new(SECRET),
            session_token: Some(Secret::new(TOKEN)),
        };
        let debug = format!("{source:?}");
        assert!(!debug.contains(SECRET) && !debug.contains(TOKEN));
    }

    #[tokio::test]
    async fn env_provider_reads_keys_and_token() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", TOKEN),
        ]);
        let creds = EnvProvider::with_lookup(env).provide().await.unwrap();
        assert_eq!(creds.access_key_id, "AKIDENV");
        assert_eq!(creds.secret_access_key.expose(), SECRET);
        assert_eq!(
            creds.session_token.as_ref().map(Secret::expose),
            Some(TOKEN)
        );
        assert_eq!(creds.expires_at, None);
    }

    #[tokio::test]
    async fn env_provider_reports_what_is_missing() {
        let none = EnvProvider::with_lookup(env_of(&[])).provide().await;
        let err = none.unwrap_err();
        assert!(err.is_not_configured());
        assert_eq!(err.to_string(), "environment: AWS_ACCESS_KEY_ID is not set");

        let half = EnvProvider::with_lookup(env_of(&[("AWS_ACCESS_KEY_ID", "AKID")]))
            .provide()
            .await
            .unwrap_err();
        assert!(!half.is_not_configured());
        assert_eq!(
            half.to_string(),
            "environment: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
        );

        let other_half = EnvProvider::with_lookup(env_of(&[("AWS_SECRET_ACCESS_KEY", SECRET)]))
            .provide()
            .await
            .unwrap_err();
        assert!(!other_half.to_string().contains(SECRET));
        assert!(other_half.to_string().contains("AWS_ACCESS_KEY_ID is not"));
    }

    #[test]
    fn region_prefers_aws_region() {
        let both = env_of(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ]);
        assert_eq!(region_from_env(&*both).as_deref(), Some("eu-west-1"));
        let default_only = env_of(&[("AWS_REGION", " "), ("AWS_DEFAULT_REGION", "us-east-1")]);
        assert_eq!(
            region_from_env(&*default_only).as_deref(),
            Some("us-east-1")
        );
        assert_eq!(region_from_env(&*env_of(&[])), None);
    }

    #[tokio::test]
    async fn static_provider_rejects_empty_keys() {
        let ok = StaticProvider::new(Credentials::new("AKID", SECRET, None, None));
        assert_eq!(ok.provide().await.unwrap().access_key_id, "AKID");
        let empty = StaticProvider::new(Credentials::new("AKID", "", None, None));
        assert_eq!(
            empty.provide().await.unwrap_err().to_string(),
            "static credentials: secret access key is empty"
        );
    }

    #[tokio::test]
    async fn auto_chain_lists_every_source_it_tried() {
        let dir = tempfile::tempdir().unwrap();
        let mut context = ProviderContext::with_env(|_: &str| None);
        context.home_dir = Some(dir.path().to_path_buf());
        context.credential_file = Some(dir.path().join("credential"));
        let provider = provider_for_with(&CredentialSource::Auto, &context);
        assert_eq!(provider.name(), "auto");
        let err = provider.provide().await.unwrap_err().to_string();
        assert!(err.contains("AWS_ACCESS_KEY_ID is not set"), "{err}");
        assert!(err.contains("shared AWS config"), "{err}");
        assert!(err.contains("credential file"), "{err}");
    }

    #[tokio::test]
    async fn auto_chain_takes_env_first_then_credential_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credential");
        std::fs::write(&file, format!("CREDENTIALS AKIDFILE {SECRET}\n")).unwrap();
        let mut context = ProviderContext::with_env(|_: &str| None);
        context.home_dir = Some(dir.path().to_path_buf());
        context.credential_file = Some(file.clone());
        let from_file = provider_for_with(&CredentialSource::Auto, &context)
            .provide()
            .await
            .unwrap();
        assert_eq!(from_file.access_key_id, "AKIDFILE");

        context.env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ]);
        let from_env = provider_for_with(&CredentialSource::Auto, &context)
            .provide()
            .await
            .unwrap();
        assert_eq!(from_env.access_key_id, "AKIDENV");
    }

    #[tokio::test]
    async fn auto_chain_stops_at_a_broken_source() {
        let mut context = ProviderContext::with_env(|name: &str| {
            (name == "AWS_ACCESS_KEY_ID").then(|| "AKID".to_owned())
        });
        context.home_dir = Some(PathBuf::from("/nonexistent-home-for-test"));
        let err = provider_for_with(&CredentialSource::Auto, &context)
            .provide()
            .await
            .unwrap_err();
        assert!(
            matches!(err, CredentialsError::EnvIncomplete { .. }),
            "{err}"
        );
    }
}
