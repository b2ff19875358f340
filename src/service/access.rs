//! The `[aws]` configuration mapped onto the `aws` module: which credentials provider, which
//! control endpoint, which signing region.
//!
//! Nothing here touches the network or a file: providers are lazy, so the daemon starts (and
//! captures into its buffer) even when no credentials can be fetched yet.

use std::sync::Arc;

use crate::aws::{
    self, ChainProvider, ClockSkew, CredentialSource, CredentialsCache, DEFAULT_REFRESH_BEFORE,
    EndpointError, EnvLookup, IotSettings, ProvideCredentials, ProviderContext, Secret,
    StaticProvider,
};
use crate::config::{self, AwsConfig, CredentialsConfig, IotCredentialsConfig};
use crate::upload::putmedia::{ClientError, KvsAccess};

/// Why KVS cannot be reached as configured.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The control endpoint (configuration or `AWS_ENDPOINT_URL*`) is unusable.
    #[error("aws.endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    /// The HTTP clients could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The configured credential source as the `aws` module's source. `Auto` becomes a chain built
/// here (see [`credential_provider`]), so it maps to `None`.
pub fn credential_source(credentials: &CredentialsConfig) -> Option<CredentialSource> {
    match credentials.source {
        config::CredentialSource::Auto => None,
        config::CredentialSource::Static => static_source(credentials),
        config::CredentialSource::Env => Some(CredentialSource::Env),
        config::CredentialSource::Profile => Some(CredentialSource::Profile {
            name: credentials.profile.clone(),
        }),
        config::CredentialSource::File => credentials
            .path
            .clone()
            .map(|path| CredentialSource::File { path }),
        config::CredentialSource::Iot => credentials
            .iot
            .as_ref()
            .map(|iot| CredentialSource::Iot(iot_settings(iot))),
    }
}

/// The provider for `[aws.credentials]`. `auto` tries, in order: the static keys when given,
/// the `AWS_*` environment variables, the shared profile (the configured one, else
/// `AWS_PROFILE`, else `default`), the KVS credential file when `path` is given, and IoT when
/// `[aws.credentials.iot]` is given.
pub fn credential_provider(
    credentials: &CredentialsConfig,
    context: &ProviderContext,
) -> Arc<dyn ProvideCredentials> {
    if let Some(source) = credential_source(credentials) {
        return aws::provider_for_with(&source, context);
    }
    let mut chain: Vec<Arc<dyn ProvideCredentials>> = Vec::new();
    if let Some(CredentialSource::Static {
        access_key_id,
        secret_access_key,
        session_token,
    }) = static_source(credentials)
    {
        chain.push(Arc::new(StaticProvider::new(aws::Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            None,
        ))));
    }
    for source in [
        Some(CredentialSource::Env),
        Some(CredentialSource::Profile {
            name: credentials.profile.clone(),
        }),
        credentials
            .path
            .clone()
            .map(|path| CredentialSource::File { path }),
        credentials
            .iot
            .as_ref()
            .map(|iot| CredentialSource::Iot(iot_settings(iot))),
    ]
    .into_iter()
    .flatten()
    {
        chain.push(aws::provider_for_with(&source, context));
    }
    Arc::new(ChainProvider::new(chain))
}

fn static_source(credentials: &CredentialsConfig) -> Option<CredentialSource> {
    let access_key_id = credentials.access_key_id.clone()?;
    let secret = credentials.secret_access_key.as_ref()?;
    Some(CredentialSource::Static {
        access_key_id,
        secret_access_key: Secret::new(secret.expose()),
        session_token: credentials
            .session_token
            .as_ref()
            .map(|token| Secret::new(token.expose())),
    })
}

/// Validation made sure every required key is set; an unset one becomes empty and the IoT
/// provider reports it by name when it is first used.
fn iot_settings(iot: &IotCredentialsConfig) -> IotSettings {
    IotSettings {
        endpoint: iot.endpoint.clone().unwrap_or_default(),
        cert_path: iot.cert_path.clone().unwrap_or_default(),
        key_path: iot.key_path.clone().unwrap_or_default(),
        ca_path: iot.ca_path.clone(),
        role_alias: iot.role_alias.clone().unwrap_or_default(),
        thing_name: iot.thing_name.clone().unwrap_or_default(),
    }
}

/// Everything the uploaders share: credentials (cached, on the skew-corrected clock), the
/// control endpoint (`aws.endpoint`, else `AWS_ENDPOINT_URL_KINESIS_VIDEO`, else
/// `AWS_ENDPOINT_URL`, else the regional endpoint) and the signing region.
pub fn kvs_access(
    aws_config: &AwsConfig,
    env: &EnvLookup,
    control_timeout: std::time::Duration,
) -> Result<KvsAccess, AccessError> {
    let context = ProviderContext {
        env: Arc::clone(env),
        home_dir: None,
        credential_file: None,
    };
    let provider = credential_provider(&aws_config.credentials, &context);
    let skew = ClockSkew::new();
    let clock = skew.clone();
    let credentials =
        CredentialsCache::new(provider, DEFAULT_REFRESH_BEFORE).with_clock(move || clock.now());
    let endpoint = aws::resolve_endpoint(
        aws::Service::KinesisVideo,
        &aws_config.region,
        aws_config.endpoint.as_deref(),
        env.as_ref(),
    )?;
    let region = aws::signing_region(&aws_config.region).to_owned();
    Ok(KvsAccess::new(
        credentials,
        skew,
        region,
        endpoint,
        control_timeout,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> EnvLookup {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Arc::new(move |name: &str| map.get(name).cloned())
    }

    fn static_keys() -> CredentialsConfig {
        CredentialsConfig {
            source: config::CredentialSource::Static,
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some(config::Secret::new("secret-value")),
            ..CredentialsConfig::default()
        }
    }

    #[tokio::test]
    async fn static_keys_come_from_the_configuration() {
        let provider = credential_provider(&static_keys(), &ProviderContext::with_env(|_| None));
        let credentials = provider.provide().await;
        let Ok(credentials) = credentials else {
            panic!("{credentials:?}")
        };
        assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
        assert_eq!(credentials.secret_access_key.expose(), "secret-value");
    }

    #[tokio::test]
    async fn auto_prefers_static_keys_then_the_environment() {
        let mut auto = static_keys();
        auto.source = config::CredentialSource::Auto;
        let context = ProviderContext::with_env(|name| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDENV".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".into()),
            _ => None,
        });
        let from_config = credential_provider(&auto, &context).provide().await;
        assert_eq!(
            from_config.map(|c| c.access_key_id).ok().as_deref(),
            Some("AKIDEXAMPLE")
        );
        let bare = CredentialsConfig::default();
        let from_env = credential_provider(&bare, &context).provide().await;
        assert_eq!(
            from_env.map(|c| c.access_key_id).ok().as_deref(),
            Some("AKIDENV")
        );
    }

    #[tokio::test]
    async fn auto_without_any_source_says_what_it_tried() {
        let home = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(home) = home else { panic!("{home:?}") };
        let mut context = ProviderContext::with_env(|_| None);
        context.home_dir = Some(home.path().to_owned());
        let error = credential_provider(&CredentialsConfig::default(), &context)
            .provide()
            .await;
        let Err(error) = error else {
            panic!("credentials from nowhere")
        };
        let text = error.to_string();
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
    }

    #[test]
    fn explicit_sources_map_one_to_one() {
        let mut file = CredentialsConfig {
            source: config::CredentialSource::File,
            path: Some("/run/kvs/credentials".into()),
            ..CredentialsConfig::default()
        };
        assert_eq!(
            credential_source(&file),
            Some(CredentialSource::File {
                path: "/run/kvs/credentials".into()
            })
        );
        file.source = config::CredentialSource::Profile;
        file.profile = Some("camera".into());
        assert_eq!(
            credential_source(&file),
            Some(CredentialSource::Profile {
                name: Some("camera".into())
            })
        );
        let iot = CredentialsConfig {
            source: config::CredentialSource::Iot,
            iot: Some(IotCredentialsConfig {
                endpoint: Some("c.credentials.iot.eu-west-1.amazonaws.com".into()),
                cert_path: Some("/etc/cert.pem".into()),
                key_path: Some("/etc/key.pem".into()),
                ca_path: None,
                role_alias: Some("kvs-role".into()),
                thing_name: Some("cam-7".into()),
            }),
            ..CredentialsConfig::default()
        };
        match credential_source(&iot) {
            Some(CredentialSource::Iot(settings)) => {
                assert_eq!(settings.role_alias, "kvs-role");
                assert_eq!(settings.thing_name, "cam-7");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpoint_precedence_configuration_then_environment_then_region() {
        let timeout = Duration::from_secs(5);
        let mut aws = AwsConfig {
            region: "eu-west-1".into(),
            ..AwsConfig::default()
        };
        let plain = kvs_access(&aws, &env(&[]), timeout);
        assert_eq!(
            plain.as_ref().map(KvsAccess::control_endpoint).ok(),
            Some("https://kinesisvideo.eu-west-1.amazonaws.com")
        );
        let from_env = kvs_access(
            &aws,
            &env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
                ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "http://127.0.0.1:2"),
            ]),
            timeout,
        );
        assert_eq!(
            from_env.as_ref().map(KvsAccess::control_endpoint).ok(),
            Some("http://127.0.0.1:2")
        );
        aws.endpoint = Some("http://127.0.0.1:3".into());
        let configured = kvs_access(
            &aws,
            &env(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:1")]),
            timeout,
        );
        assert_eq!(
            configured.as_ref().map(KvsAccess::control_endpoint).ok(),
            Some("http://127.0.0.1:3")
        );
        aws.endpoint = Some("http://kvs.example.com".into());
        assert!(matches!(
            kvs_access(&aws, &env(&[]), timeout),
            Err(AccessError::Endpoint(EndpointError::InsecureHttp { .. }))
        ));
        aws.endpoint = None;
        aws.region = "cn-north-1".into();
        let china = kvs_access(&aws, &env(&[]), timeout);
        assert_eq!(
            china.as_ref().map(KvsAccess::control_endpoint).ok(),
            Some("https://kinesisvideo.cn-north-1.amazonaws.com.cn")
        );
    }
}
