//! Shared AWS config files: `~/.aws/credentials` and `~/.aws/config`.
//!
//! Follows the AWS SDKs' file rules: `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`
//! relocate the files; the profile is the configured name, else `AWS_PROFILE`, else `default`;
//! the config file names profiles `[profile x]` (and `[default]`/`[profile default]`), the
//! credentials file `[x]`; a key in the credentials file overrides the same key in the config
//! file; indented lines continue the previous value; `#`/`;` start comments (inside a value
//! only after whitespace). Parsing uses `rust-ini` with quotes and escapes off.
//!
//! Only static keys are supported as a credential source. A profile using `role_arn`,
//! `credential_process`, SSO or web identity is reported as unsupported, not skipped.
//! Files are read at each `provide`, never at construction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::credentials::{
    Credentials, CredentialsError, ProvideCredentials, ProvideFuture, ProviderContext, Secret,
};

/// Selects the profile when none is configured.
pub const PROFILE_ENV: &str = "AWS_PROFILE";
/// Relocates the credentials file.
pub const CREDENTIALS_FILE_ENV: &str = "AWS_SHARED_CREDENTIALS_FILE";
/// Relocates the config file.
pub const CONFIG_FILE_ENV: &str = "AWS_CONFIG_FILE";

/// Keys that name a credential source this crate does not implement.
const UNSUPPORTED_SOURCES: [&str; 6] = [
    "role_arn",
    "credential_process",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
    "credential_source",
];

/// One resolved profile: its properties merged from both files (credentials file wins).
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    name: String,
    /// key (lower-case) → (value, file it came from)
    properties: HashMap<String, (String, PathBuf)>,
}

impl Profile {
    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A property value (keys are case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .get(&key.to_ascii_lowercase())
            .map(|(value, _)| value.as_str())
    }

    /// The file a property came from.
    pub fn source_of(&self, key: &str) -> Option<&Path> {
        self.properties
            .get(&key.to_ascii_lowercase())
            .map(|(_, path)| path.as_path())
    }

    /// The profile's `region`.
    pub fn region(&self) -> Option<&str> {
        self.get("region").filter(|r| !r.is_empty())
    }

    /// The static credentials the profile holds.
    pub fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let access_key_id = self.get("aws_access_key_id").filter(|v| !v.is_empty());
        let secret = self.get("aws_secret_access_key").filter(|v| !v.is_empty());
        let invalid = |key: &str, reason: String| CredentialsError::ProfileInvalid {
            profile: self.name.clone(),
            path: self
                .source_of(key)
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            reason,
        };
        match (access_key_id, secret) {
            (Some(access_key_id), Some(secret)) => Ok(Credentials::new(
                access_key_id,
                Secret::new(secret),
                self.get("aws_session_token")
                    .filter(|t| !t.is_empty())
                    .map(Secret::new),
                None,
            )),
            (Some(_), None) => Err(invalid(
                "aws_access_key_id",
                "has aws_access_key_id but no aws_secret_access_key".into(),
            )),
            (None, Some(_)) => Err(invalid(
                "aws_secret_access_key",
                "has aws_secret_access_key but no aws_access_key_id".into(),
            )),
            (None, None) => match UNSUPPORTED_SOURCES.iter().find(|k| self.get(k).is_some()) {
                Some(key) => Err(invalid(
                    key,
                    format!(
                        "uses `{key}`, which kinesis-edge does not support; give the profile \
                         static keys, or use the credential file or IoT credentials"
                    ),
                )),
                None => Err(CredentialsError::ProfileNoCredentials {
                    profile: self.name.clone(),
                }),
            },
        }
    }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&str> = self.properties.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("keys", &keys)
            .finish()
    }
}

/// The two shared files' locations for a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFiles {
    /// The credentials file.
    pub credentials: Option<PathBuf>,
    /// The config file.
    pub config: Option<PathBuf>,
}

impl ProfileFiles {
    /// Locations from the environment overrides, else under the home directory.
    pub fn locate(context: &ProviderContext) -> Self {
        let home = context.home();
        let locate =
            |var: &str, default: &str| match (context.env)(var).filter(|v| !v.trim().is_empty()) {
                Some(path) => Some(expand_home(path.trim(), home.as_deref())),
                None => home.as_ref().map(|h| h.join(".aws").join(default)),
            };
        Self {
            credentials: locate(CREDENTIALS_FILE_ENV, "credentials"),
            config: locate(CONFIG_FILE_ENV, "config"),
        }
    }

    fn describe(&self) -> String {
        let shown: Vec<String> = [&self.credentials, &self.config]
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect();
        if shown.is_empty() {
            "no location (HOME is not set)".to_owned()
        } else {
            shown.join(" and ")
        }
    }
}

fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

/// Loads profile `name` (else `AWS_PROFILE`, else `default`) from the shared files.
pub fn load_profile(
    name: Option<&str>,
    context: &ProviderContext,
) -> Result<Profile, CredentialsError> {
    let profile_name = name
        .map(str::to_owned)
        .or_else(|| (context.env)(PROFILE_ENV).map(|p| p.trim().to_owned()))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let files = ProfileFiles::locate(context);
    let mut any_file = false;
    let mut properties = HashMap::new();
    let mut found = false;
    // Config first, so that the credentials file overrides it.
    for (path, kind) in [
        (&files.config, FileKind::Config),
        (&files.credentials, FileKind::Credentials),
    ] {
        let Some(path) = path else { continue };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CredentialsError::Io {
                    path: path.clone(),
                    source,
                });
            }
        };
        any_file = true;
        found |= merge_profile(&text, path, kind, &profile_name, &mut properties)?;
    }
    if !any_file {
        return Err(CredentialsError::ProfileFilesMissing {
            searched: files.describe(),
        });
    }
    if !found {
        return Err(CredentialsError::ProfileNotFound {
            profile: profile_name,
            searched: files.describe(),
        });
    }
    Ok(Profile {
        name: profile_name,
        properties,
    })
}

/// The region when the configuration names none: `AWS_REGION`, `AWS_DEFAULT_REGION`, then the
/// `region` of the selected profile (`AWS_PROFILE` or `default`); unreadable files count as
/// "no region".
pub fn default_region(context: &ProviderContext) -> Option<String> {
    super::credentials::region_from_env(&*context.env).or_else(|| {
        load_profile(None, context)
            .ok()
            .and_then(|p| p.region().map(str::to_owned))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Config,
    Credentials,
}

/// Merges the sections of `text` that define `profile` into `properties`; returns whether any
/// did. In the config file `[profile default]` wins over `[default]` regardless of order.
fn merge_profile(
    text: &str,
    path: &Path,
    kind: FileKind,
    profile: &str,
    properties: &mut HashMap<String, (String, PathBuf)>,
) -> Result<bool, CredentialsError> {
    let options = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: true,
        enabled_preserve_key_leading_whitespace: false,
    };
    let parsed = ini::Ini::load_from_str_opt(text, options).map_err(|e| {
        CredentialsError::ProfileSyntax {
            path: path.to_path_buf(),
            line: e.line,
            column: e.col,
            message: e.msg.into_owned(),
        }
    })?;
    // Pass 0: bare `[default]` in the config file; pass 1: everything else that matches.
    let mut found = false;
    for pass in 0..2 {
        for (section, props) in parsed.iter() {
            let Some(section) = section.map(str::trim) else {
                continue;
            };
            let matches = match kind {
                FileKind::Credentials => section == profile,
                FileKind::Config => match section.strip_prefix("profile") {
                    Some(rest) if rest.starts_with(char::is_whitespace) => {
                        pass == 1 && rest.trim() == profile
                    }
                    _ => pass == 0 && section == "default" && profile == "default",
                },
            };
            if !matches {
                continue;
            }
            found = true;
            for (key, value) in props.iter() {
                properties.insert(
                    key.trim().to_ascii_lowercase(),
                    (value.trim().to_owned(), path.to_path_buf()),
                );
            }
        }
    }
    Ok(found)
}

/// Static keys from a shared-config profile.
#[derive(Debug, Clone)]
pub struct ProfileProvider {
    name: Option<String>,
    context: ProviderContext,
}

impl ProfileProvider {
    /// Profile `name` (`None`: `AWS_PROFILE` or `default`) within `context`.
    pub fn new(name: Option<String>, context: ProviderContext) -> Self {
        Self { name, context }
    }
}

impl ProvideCredentials for ProfileProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        // Two small local files: read inline rather than on a blocking thread.
        let result =
            load_profile(self.name.as_deref(), &self.context).and_then(|p| p.credentials());
        Box::pin(std::future::ready(result))
    }

    fn name(&self) -> &'static str {
        "profile"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn context(home: &Path, env: &[(&str, &str)]) -> ProviderContext {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ProviderContext {
            env: Arc::new(move |name: &str| map.get(name).cloned()),
            home_dir: Some(home.to_path_buf()),
            credential_file: None,
        }
    }

    fn write(home: &Path, name: &str, text: &str) {
        let dir = home.join(".aws");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[tokio::test]
    async fn default_profile_from_credentials_file() {
        let home = tempfile::tempdir().unwrap();
        write(
            home.path(),
            "credentials",
            &format!(
                "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = {SECRET} ; trailing\n\n[other]\naws_access_key_id=AKIDOTHER\naws_secret_access_key={SECRET}\naws_session_token=TOKEN\n"
            ),
        );
        let ctx = context(home.path(), &[]);
        let creds = ProfileProvider::new(None, ctx.clone())
            .provide()
            .await
            .unwrap();
        assert_eq!(creds.access_key_id, "AKIDDEFAULT");
        assert_eq!(creds.secret_access_key.expose(), SECRET);
        assert!(creds.session_token.is_none());

        let other = ProfileProvider::new(Some("other".into()), ctx)
            .provide()
            .await
            .unwrap();
        assert_eq!(other.access_key_id, "AKIDOTHER");
        assert_eq!(
            other.session_token.as_ref().map(Secret::expose),
            Some("TOKEN")
        );
    }

    #[tokio::test]
    async fn aws_profile_env_and_config_file_prefix() {
        let home = tempfile::tempdir().unwrap();
        write(
            home.path(),
            "config",
            &format!(
                "[default]\nregion = us-east-1\n\n[profile cam]\nregion = eu-west-1\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = {SECRET}\ns3 =\n  max_concurrent_requests = 10\n\n[cam]\naws_access_key_id = NOT-A-CONFIG-PROFILE\n"
            ),
        );
        let ctx = context(home.path(), &[("AWS_PROFILE", "cam")]);
        let creds = ProfileProvider::new(None, ctx.clone())
            .provide()
            .await
            .unwrap();
        assert_eq!(creds.access_key_id, "AKIDCONFIG");
        let profile = load_profile(None, &ctx).unwrap();
        assert_eq!(profile.region(), Some("eu-west-1"));
        assert_eq!(profile.get("s3"), Some("max_concurrent_requests = 10"));
        let default = load_profile(Some("default"), &ctx).unwrap();
        assert_eq!(default.region(), Some("us-east-1"));
    }

    #[tokio::test]
    async fn credentials_file_overrides_config_and_env_relocates_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds_path = dir.path().join("my-creds");
        let config_path = dir.path().join("my-config");
        std::fs::write(
            &config_path,
            format!("[profile default]\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = {SECRET}\nregion = ap-south-1\n"),
        )
        .unwrap();
        std::fs::write(&creds_path, "[default]\naws_access_key_id = AKIDCREDS\n").unwrap();
        let ctx = context(
            Path::new("/nonexistent"),
            &[
                ("AWS_SHARED_CREDENTIALS_FILE", creds_path.to_str().unwrap()),
                ("AWS_CONFIG_FILE", config_path.to_str().unwrap()),
            ],
        );
        let profile = load_profile(None, &ctx).unwrap();
        assert_eq!(profile.get("aws_access_key_id"), Some("AKIDCREDS"));
        assert_eq!(
            profile.source_of("aws_access_key_id"),
            Some(creds_path.as_path())
        );
        assert_eq!(
            profile.source_of("aws_secret_access_key"),
            Some(config_path.as_path())
        );
        assert_eq!(profile.region(), Some("ap-south-1"));
        let creds = ProfileProvider::new(None, ctx).provide().await.unwrap();
        assert_eq!(creds.access_key_id, "AKIDCREDS");
        assert_eq!(creds.secret_access_key.expose(), SECRET);
    }

    #[test]
    fn default_region_env_then_profile() {
        let home = tempfile::tempdir().unwrap();
        write(
            home.path(),
            "config",
            "[default]\nregion = ap-northeast-1\n[profile cam]\nregion = sa-east-1\n",
        );
        assert_eq!(
            default_region(&context(home.path(), &[])).as_deref(),
            Some("ap-northeast-1")
        );
        assert_eq!(
            default_region(&context(home.path(), &[("AWS_PROFILE", "cam")])).as_deref(),
            Some("sa-east-1")
        );
        assert_eq!(
            default_region(&context(
                home.path(),
                &[("AWS_DEFAULT_REGION", "us-east-2")]
            ))
            .as_deref(),
            Some("us-east-2")
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(default_region(&context(empty.path(), &[])), None);
    }

    #[test]
    fn profile_default_beats_bare_default_in_config() {
        let home = tempfile::tempdir().unwrap();
        write(
            home.path(),
            "config",
            "[profile default]\nregion = us-west-2\n[default]\nregion = us-east-1\noutput = json\n",
        );
        let profile = load_profile(None, &context(home.path(), &[])).unwrap();
        assert_eq!(profile.region(), Some("us-west-2"));
        assert_eq!(profile.get("output"), Some("json"));
    }

    #[tokio::test]
    async fn errors_say_what_and_where() {
        let home = tempfile::tempdir().unwrap();
        let ctx = context(home.path(), &[]);
        let err = ProfileProvider::new(None, ctx.clone())
            .provide()
            .await
            .unwrap_err();
        assert!(
            matches!(err, CredentialsError::ProfileFilesMissing { .. }),
            "{err}"
        );
        assert!(err.is_not_configured());
        assert!(err.to_string().contains(".aws/credentials"), "{err}");

        write(
            home.path(),
            "credentials",
            "[default]\naws_access_key_id = AKID\n",
        );
        let err = ProfileProvider::new(Some("missing".into()), ctx.clone())
            .provide()
            .await
            .unwrap_err();
        assert!(
            matches!(err, CredentialsError::ProfileNotFound { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`missing`"), "{err}");

        let err = ProfileProvider::new(None, ctx.clone())
            .provide()
            .await
            .unwrap_err();
        assert!(!err.is_not_configured());
        assert!(
            err.to_string().contains("no aws_secret_access_key"),
            "{err}"
        );
        assert!(err.to_string().contains("credentials"), "{err}");

        write(
            home.path(),
            "credentials",
            &format!("[default]\naws_secret_access_key = {SECRET}\n= orphan value\n"),
        );
        let err = ProfileProvider::new(None, ctx.clone())
            .provide()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, CredentialsError::ProfileSyntax { line: 3, .. }),
            "{text}"
        );
        assert!(!text.contains(SECRET));

        write(
            home.path(),
            "credentials",
            "[default]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = base\n",
        );
        let err = ProfileProvider::new(None, ctx.clone())
            .provide()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("uses `role_arn`"), "{err}");

        write(
            home.path(),
            "credentials",
            "[default]\nregion = us-west-2\n",
        );
        let err = ProfileProvider::new(None, ctx).provide().await.unwrap_err();
        assert!(
            err.is_not_configured(),
            "a profile without keys lets the chain go on: {err}"
        );
    }
}
