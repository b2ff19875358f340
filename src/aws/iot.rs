//! The AWS IoT credentials provider: temporary credentials for a role alias, authenticated by
//! the device's X.509 certificate.
//!
//! `GET https://<credentials endpoint>/role-aliases/<role alias>/credentials` over mutual TLS,
//! with header `x-amzn-iot-thingname: <thing>`; the answer is
//! `{"credentials":{"accessKeyId","secretAccessKey","sessionToken","expiration"}}`.
//!
//! Invariants:
//! - Construction does no I/O (the KVS C producer fetches in its constructor and so cannot
//!   start offline); certificate, key and CA are read on the first `provide` and re-read after
//!   any failure, so rotated device certificates are picked up.
//! - With `ca_path`, only that CA is trusted for the endpoint; otherwise the built-in roots.
//! - Error messages quote the endpoint's error bodies (which carry no credentials) but never a
//!   successful body.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use super::clock::parse_rfc3339;
use super::credentials::{
    Credentials, CredentialsError, ProvideCredentials, ProvideFuture, Secret,
};

/// The header naming the thing whose certificate authenticates the request.
pub const THING_NAME_HEADER: &str = "x-amzn-iot-thingname";
/// TCP + TLS connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Whole-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error-body excerpt kept in an error.
const ERROR_BODY_EXCERPT: usize = 256;

/// Settings of the IoT credentials provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotSettings {
    /// The credentials endpoint (`<id>.credentials.iot.<region>.amazonaws.com`, from
    /// `aws iot describe-endpoint --endpoint-type iot:CredentialProvider`), optionally with
    /// `https://` and a port.
    pub endpoint: String,
    /// The device certificate (PEM).
    pub cert_path: PathBuf,
    /// The device private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_path: PathBuf,
    /// The CA to trust for the endpoint (PEM, may hold several); `None`: built-in roots.
    pub ca_path: Option<PathBuf>,
    /// The role alias.
    pub role_alias: String,
    /// The IoT thing name.
    pub thing_name: String,
}

impl IotSettings {
    /// The credentials URL, after checking endpoint, role alias and thing name.
    pub fn credentials_url(&self) -> Result<String, CredentialsError> {
        let config = |reason: String| CredentialsError::IotConfig { reason };
        let endpoint = self.endpoint.trim();
        let host = match endpoint.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) => {
                return Err(config(format!(
                    "endpoint {endpoint:?} uses {scheme}://; the credentials provider needs https"
                )));
            }
            None => endpoint,
        }
        .trim_end_matches('/');
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !host_ok {
            return Err(config(format!(
                "endpoint {endpoint:?} is not a host name (with optional port)"
            )));
        }
        let alias_ok = !self.role_alias.is_empty()
            && self.role_alias.len() <= 128
            && self.role_alias.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b',' | b'@' | b'-')
            });
        if !alias_ok {
            return Err(config(format!(
                "role alias {:?} is not 1-128 characters of A-Z a-z 0-9 _ = , @ -",
                self.role_alias
            )));
        }
        let thing_ok = !self.thing_name.is_empty()
            && self.thing_name.len() <= 128
            && self
                .thing_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
        if !thing_ok {
            return Err(config(format!(
                "thing name {:?} is not 1-128 characters of A-Z a-z 0-9 : _ -",
                self.thing_name
            )));
        }
        Ok(format!(
            "https://{host}/role-aliases/{}/credentials",
            self.role_alias
        ))
    }
}

#[derive(Deserialize)]
struct CredentialsResponse {
    credentials: CredentialsJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialsJson {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// Fetches temporary credentials from the AWS IoT credentials provider.
pub struct IotCredentialsProvider {
    settings: IotSettings,
    /// Built on first use; cleared after a failure so certificates are re-read.
    client: Mutex<Option<reqwest::Client>>,
}

impl IotCredentialsProvider {
    /// A provider for these settings; nothing is read or contacted until `provide`.
    pub fn new(settings: IotSettings) -> Self {
        Self {
            settings,
            client: Mutex::new(None),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &IotSettings {
        &self.settings
    }

    fn client(&self) -> Result<reqwest::Client, CredentialsError> {
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = build_client(&self.settings)?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn forget_client(&self) {
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    async fn fetch(&self) -> Result<Credentials, CredentialsError> {
        let url = self.settings.credentials_url()?;
        let client = self.client()?;
        let request_error = |e: reqwest::Error| CredentialsError::IotRequest {
            url: url.clone(),
            // The URL is already in the message; reqwest would repeat it.
            reason: error_chain(&e.without_url()),
        };
        let response = client
            .get(&url)
            .header(THING_NAME_HEADER, &self.settings.thing_name)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(request_error)?;
        if !status.is_success() {
            return Err(CredentialsError::IotStatus {
                url,
                status: status.as_u16(),
                body: excerpt(&body),
            });
        }
        parse_response(&body, &url)
    }
}

impl fmt::Debug for IotCredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IotCredentialsProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ProvideCredentials for IotCredentialsProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        Box::pin(async move {
            let result = self.fetch().await;
            if result.is_err() {
                self.forget_client();
            }
            result
        })
    }

    fn name(&self) -> &'static str {
        "iot"
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|e| CredentialsError::IotTlsMaterial {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn build_client(settings: &IotSettings) -> Result<reqwest::Client, CredentialsError> {
    let mut identity_pem = read_pem("certificate", &settings.cert_path)?;
    identity_pem.push(b'\n');
    identity_pem.extend_from_slice(&read_pem("private key", &settings.key_path)?);
    let identity = reqwest::Identity::from_pem(&identity_pem).map_err(|e| {
        CredentialsError::IotTlsMaterial {
            what: "certificate and private key",
            path: settings.key_path.clone(),
            reason: error_chain(&e),
        }
    })?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .identity(identity)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if let Some(ca_path) = &settings.ca_path {
        let pem = read_pem("CA certificate", ca_path)?;
        let material_error = |reason: String| CredentialsError::IotTlsMaterial {
            what: "CA certificate",
            path: ca_path.clone(),
            reason,
        };
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| material_error(error_chain(&e)))?;
        if certificates.is_empty() {
            return Err(material_error("no PEM certificate in the file".into()));
        }
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| CredentialsError::IotConfig {
        reason: format!("building the HTTPS client: {}", error_chain(&e)),
    })
}

fn parse_response(body: &[u8], url: &str) -> Result<Credentials, CredentialsError> {
    let bad = |reason: String| CredentialsError::IotResponse {
        url: url.to_owned(),
        reason,
    };
    let parsed: CredentialsResponse = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message can quote the offending value (a secret, here): keep only its
        // own wording for missing fields, else the category and position.
        let message = e.to_string();
        let reason = if message.starts_with("missing field") {
            message
        } else {
            format!(
                "{:?} error in the JSON at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        };
        bad(reason)
    })?;
    let json = parsed.credentials;
    for (field, value) in [
        ("accessKeyId", &json.access_key_id),
        ("secretAccessKey", &json.secret_access_key),
        ("sessionToken", &json.session_token),
    ] {
        if value.is_empty() {
            return Err(bad(format!("credentials.{field} is empty")));
        }
    }
    let expires_at = parse_rfc3339(&json.expiration).map_err(|e| {
        bad(format!(
            "credentials.expiration {:?} is not ISO-8601: {e}",
            json.expiration
        ))
    })?;
    Ok(Credentials::new(
        json.access_key_id,
        Secret::new(json.secret_access_key),
        Some(Secret::new(json.session_token)),
        Some(expires_at),
    ))
}

/// An error with its sources, `: `-joined (reqwest hides the TLS cause in the chain).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The start of an error body as printable text.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_BODY_EXCERPT)
        .collect();
    if text.chars().count() > ERROR_BODY_EXCERPT {
        out.push('…');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> IotSettings {
        IotSettings {
            endpoint: "c1234.credentials.iot.us-west-2.amazonaws.com".into(),
            cert_path: "/etc/kinesis-edge/cert.pem".into(),
            key_path: "/etc/kinesis-edge/key.pem".into(),
            ca_path: None,
            role_alias: "kvs-camera-role-alias".into(),
            thing_name: "front-door".into(),
        }
    }

    #[test]
    fn url_from_settings() {
        assert_eq!(
            settings().credentials_url().unwrap(),
            "https://c1234.credentials.iot.us-west-2.amazonaws.com/role-aliases/kvs-camera-role-alias/credentials"
        );
        let with_scheme = IotSettings {
            endpoint: "https://127.0.0.1:8443/".into(),
            ..settings()
        };
        assert_eq!(
            with_scheme.credentials_url().unwrap(),
            "https://127.0.0.1:8443/role-aliases/kvs-camera-role-alias/credentials"
        );
    }

    #[test]
    fn bad_settings_are_rejected() {
        let cases = [
            IotSettings {
                endpoint: "http://host".into(),
                ..settings()
            },
            IotSettings {
                endpoint: "host/path".into(),
                ..settings()
            },
            IotSettings {
                endpoint: String::new(),
                ..settings()
            },
            IotSettings {
                role_alias: "a/b".into(),
                ..settings()
            },
            IotSettings {
                role_alias: String::new(),
                ..settings()
            },
            IotSettings {
                thing_name: "bad\r\nheader".into(),
                ..settings()
            },
        ];
        for case in cases {
            let err = case.credentials_url().unwrap_err();
            assert!(
                matches!(err, CredentialsError::IotConfig { .. }),
                "{case:?}: {err}"
            );
        }
    }

    #[test]
    fn response_parsing() {
        let body = br#"{"credentials":{"accessKeyId":"ASIAIOT","secretAccessKey":"SECRETVALUE","sessionToken":"TOKENVALUE","expiration":"2018-01-18T09:18:06Z"}}"#;
        let creds = parse_response(body, "https://x/").unwrap();
        assert_eq!(creds.access_key_id, "ASIAIOT");
        assert_eq!(creds.secret_access_key.expose(), "SECRETVALUE");
        assert_eq!(
            creds.session_token.as_ref().map(Secret::expose),
            Some("TOKENVALUE")
        );
        assert_eq!(
            creds.expires_at,
            Some(std::time::UNIX_EPOCH + Duration::from_secs(1_516_267_086))
        );

        let wrong_type = br#"{"credentials":{"accessKeyId":"ASIAIOT","secretAccessKey":["SECRETVALUE"],"sessionToken":"TOKENVALUE","expiration":"2018-01-18T09:18:06Z"}}"#;
        let err = parse_response(wrong_type, "https://x/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Data error"), "{err}");
        assert!(
            !err.contains("SECRETVALUE") && !err.contains("TOKENVALUE"),
            "{err}"
        );

        let missing = br#"{"credentials":{"accessKeyId":"ASIAIOT","secretAccessKey":"SECRETVALUE","expiration":"2018-01-18T09:18:06Z"}}"#;
        let err = parse_response(missing, "https://x/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `sessionToken`"), "{err}");
        assert!(!err.contains("SECRETVALUE"), "{err}");

        let bad_date = br#"{"credentials":{"accessKeyId":"A","secretAccessKey":"SECRETVALUE","sessionToken":"T","expiration":"soon"}}"#;
        let err = parse_response(bad_date, "https://x/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"soon\" is not ISO-8601"), "{err}");
    }

    #[test]
    fn error_body_excerpt_is_bounded_and_printable() {
        let long = vec![b'x'; 1000];
        let shown = excerpt(&long);
        assert_eq!(shown.chars().count(), ERROR_BODY_EXCERPT + 1);
        assert_eq!(
            excerpt(b"{\"message\":\"Access Denied\"}\r\n"),
            "{\"message\":\"Access Denied\"}"
        );
    }

    #[tokio::test]
    async fn construction_is_lazy_and_missing_files_are_named() {
        let provider = IotCredentialsProvider::new(IotSettings {
            cert_path: "/nonexistent/kinesis-edge-cert.pem".into(),
            ..settings()
        });
        let err = provider.provide().await.unwrap_err();
        assert!(
            matches!(
                err,
                CredentialsError::IotTlsMaterial {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("/nonexistent/kinesis-edge-cert.pem"),
            "{err}"
        );
    }
}
