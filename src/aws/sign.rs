//! SigV4 request signing for Kinesis Video Streams and Kinesis Data Streams, on `aws-sigv4`.
//!
//! [`sign`] takes an `http::Request<B>` of any body type (the body is never read: the caller
//! says how the payload is hashed with [`PayloadHash`]) and adds `x-amz-date`, `authorization`
//! and, with temporary credentials, `x-amz-security-token` (signed, as botocore does).
//!
//! Invariants:
//! - The request URI must be absolute (`https://host/path`) unless a `host` header is present;
//!   the signed host is the URI authority without a default port, which is what reqwest sends.
//! - Signing is idempotent: headers a previous signature added are removed first, so a retried
//!   request can be re-signed with fresh time and credentials.
//! - The signing time is a parameter; callers pass [`super::ClockSkew::now`].

use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign as sigv4_sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::credentials::{Credentials, Secret};

/// SHA-256 of the empty string, the payload hash the KVS C producer signs PutMedia with.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An AWS service this crate talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Kinesis Video Streams (control plane and PutMedia), signing name `kinesisvideo`.
    KinesisVideo,
    /// Kinesis Data Streams, signing name `kinesis`.
    Kinesis,
}

impl Service {
    /// The SigV4 signing name (credential-scope service).
    pub fn signing_name(self) -> &'static str {
        match self {
            Self::KinesisVideo => "kinesisvideo",
            Self::Kinesis => "kinesis",
        }
    }

    /// The first label of the regional host name.
    pub fn endpoint_prefix(self) -> &'static str {
        self.signing_name()
    }

    /// The service-specific endpoint override variable (`AWS_ENDPOINT_URL_<SERVICE ID>`).
    pub fn endpoint_env_var(self) -> &'static str {
        match self {
            Self::KinesisVideo => "AWS_ENDPOINT_URL_KINESIS_VIDEO",
            Self::Kinesis => "AWS_ENDPOINT_URL_KINESIS",
        }
    }
}

/// How the request payload enters the signature.
#[derive(Debug, Clone, Copy)]
pub enum PayloadHash<'a> {
    /// The whole body is known: its SHA-256 is signed (Kinesis JSON, KVS control plane).
    /// No `x-amz-content-sha256` header is sent.
    Bytes(&'a [u8]),
    /// A streamed body of unknown length signed as if empty (SHA-256 of ""), as the KVS C
    /// producer does for PutMedia; no `x-amz-content-sha256` header.
    EmptyStreaming,
    /// `UNSIGNED-PAYLOAD` with an `x-amz-content-sha256: UNSIGNED-PAYLOAD` header, as the KVS
    /// Java producer does for PutMedia.
    Unsigned,
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The request has neither an absolute URI nor a `host` header.
    #[error("cannot sign {uri}: the URI has no host and there is no host header")]
    NoHost {
        /// The request URI.
        uri: String,
    },
    /// A header value is not visible ASCII/UTF-8, which SigV4 cannot canonicalise.
    #[error("cannot sign: header {name} has a value that is not valid UTF-8")]
    HeaderNotUtf8 {
        /// The header name.
        name: String,
    },
    /// The region is empty.
    #[error("cannot sign: the region is empty")]
    EmptyRegion,
    /// A value that ends up in a header holds control characters (which `http` refuses).
    #[error("cannot sign: the {what} contains control characters")]
    ControlCharacters {
        /// "access key id", "session token", "region" or "signing name".
        what: &'static str,
    },
    /// The credentials are expired at the signing time.
    #[error("cannot sign: credentials {access_key_id} expired at {expired_at}")]
    ExpiredCredentials {
        /// The access key id.
        access_key_id: String,
        /// RFC 3339 expiry.
        expired_at: String,
    },
    /// aws-sigv4 rejected the request.
    #[error("cannot sign: {0}")]
    Sigv4(String),
}

/// Headers a previous signing added; removed before signing again.
const SIGNING_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Signs `request` in place for `service` in `region` at `time`.
pub fn sign<B>(
    request: &mut http::Request<B>,
    credentials: &Credentials,
    region: &str,
    service: Service,
    time: SystemTime,
    payload: PayloadHash<'_>,
) -> Result<(), SignError> {
    sign_with_name(
        request,
        credentials,
        region,
        service.signing_name(),
        time,
        payload,
    )
}

/// [`sign`] with an explicit signing name (the AWS SigV4 test suite uses `service`).
pub fn sign_with_name<B>(
    request: &mut http::Request<B>,
    credentials: &Credentials,
    region: &str,
    signing_name: &str,
    time: SystemTime,
    payload: PayloadHash<'_>,
) -> Result<(), SignError> {
    if region.is_empty() {
        return Err(SignError::EmptyRegion);
    }
    if let Some(expires_at) = credentials.expires_at
        && expires_at <= time
    {
        return Err(SignError::ExpiredCredentials {
            access_key_id: credentials.access_key_id.clone(),
            expired_at: super::clock::format_rfc3339(expires_at),
        });
    }
    // aws-sigv4 puts these into header values and panics if `http` refuses them.
    let session_token = credentials.session_token.as_ref().map(Secret::expose);
    for (what, text) in [
        ("access key id", credentials.access_key_id.as_str()),
        ("session token", session_token.unwrap_or_default()),
        ("region", region),
        ("signing name", signing_name),
    ] {
        if text.chars().any(|c| c.is_ascii_control()) {
            return Err(SignError::ControlCharacters { what });
        }
    }
    // aws-sigv4 panics on a request without an authority and without a host header.
    if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        return Err(SignError::NoHost {
            uri: request.uri().to_string(),
        });
    }
    for name in SIGNING_HEADERS {
        request.headers_mut().remove(name);
    }

    let identity: Identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.expose().to_owned(),
        session_token.map(str::to_owned),
        credentials.expires_at,
        "kinesis-edge",
    )
    .into();

    let mut settings = SigningSettings::default();
    let body = match payload {
        PayloadHash::Bytes(bytes) => {
            settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
            SignableBody::Bytes(bytes)
        }
        PayloadHash::EmptyStreaming => {
            settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
            SignableBody::Precomputed(EMPTY_SHA256.to_owned())
        }
        PayloadHash::Unsigned => {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            SignableBody::UnsignedPayload
        }
    };
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(signing_name)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SignError::Sigv4(e.to_string()))?
        .into();

    let uri = request.uri().to_string();
    let mut headers = Vec::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
        let value = value.to_str().map_err(|_| SignError::HeaderNotUtf8 {
            name: name.as_str().to_owned(),
        })?;
        headers.push((name.as_str(), value));
    }
    let signable = SignableRequest::new(request.method().as_str(), &uri, headers.into_iter(), body)
        .map_err(|e| SignError::Sigv4(e.to_string()))?;
    let (instructions, _signature) = sigv4_sign(signable, &params)
        .map_err(|e| SignError::Sigv4(e.to_string()))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2015-08-30T12:36:00Z, the AWS SigV4 test-suite time.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_credentials(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(Secret::new),
            None,
        )
    }

    fn header<'a, B>(request: &'a http::Request<B>, name: &str) -> &'a str {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    // Expected values: aws-sig-v4-test-suite (shipped in the aws-sigv4 crate) v4/get-vanilla.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let mut request = http::Request::builder()
            .method("GET")
            .uri("https://example.amazonaws.com/")
            .body(())
            .unwrap();
        sign_with_name(
            &mut request,
            &suite_credentials(None),
            "us-east-1",
            "service",
            suite_time(),
            PayloadHash::Bytes(b""),
        )
        .unwrap();
        assert_eq!(header(&request, "x-amz-date"), "20150830T123600Z");
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert!(request.headers().get("x-amz-security-token").is_none());
        assert!(request.headers().get("x-amz-content-sha256").is_none());
    }

    // Expected values: aws-sig-v4-test-suite v4/post-sts-header-before (token signed).
    #[test]
    fn aws_test_suite_post_with_session_token() {
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        let mut request = http::Request::builder()
            .method("POST")
            .uri("https://example.amazonaws.com/")
            .body(())
            .unwrap();
        sign_with_name(
            &mut request,
            &suite_credentials(Some(token)),
            "us-east-1",
            "service",
            suite_time(),
            PayloadHash::Bytes(b""),
        )
        .unwrap();
        assert_eq!(header(&request, "x-amz-security-token"), token);
        assert!(header(&request, "authorization").ends_with(
            "SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
        ));
    }

    #[test]
    fn resigning_replaces_the_previous_signature() {
        let mut request = http::Request::builder()
            .method("GET")
            .uri("https://example.amazonaws.com/")
            .body(())
            .unwrap();
        let creds = suite_credentials(None);
        let later = suite_time() + Duration::from_secs(3600);
        sign_with_name(
            &mut request,
            &creds,
            "us-east-1",
            "service",
            later,
            PayloadHash::Bytes(b""),
        )
        .unwrap();
        sign_with_name(
            &mut request,
            &creds,
            "us-east-1",
            "service",
            suite_time(),
            PayloadHash::Bytes(b""),
        )
        .unwrap();
        assert_eq!(request.headers().get_all("authorization").iter().count(), 1);
        assert!(
            header(&request, "authorization")
                .ends_with("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
    }

    #[test]
    fn unsigned_payload_sends_the_content_sha_header() {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("https://s-1234.kinesisvideo.us-west-2.amazonaws.com/putMedia")
            .body(())
            .unwrap();
        sign(
            &mut request,
            &suite_credentials(None),
            "us-west-2",
            Service::KinesisVideo,
            suite_time(),
            PayloadHash::Unsigned,
        )
        .unwrap();
        assert_eq!(header(&request, "x-amz-content-sha256"), "UNSIGNED-PAYLOAD");
        assert!(
            header(&request, "authorization")
                .contains("/us-west-2/kinesisvideo/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date,")
        );
    }

    #[test]
    fn refuses_requests_it_cannot_sign() {
        let creds = suite_credentials(None);
        let mut relative = http::Request::builder().uri("/putMedia").body(()).unwrap();
        let err = sign(
            &mut relative,
            &creds,
            "us-west-2",
            Service::KinesisVideo,
            suite_time(),
            PayloadHash::EmptyStreaming,
        )
        .unwrap_err();
        assert!(matches!(err, SignError::NoHost { .. }), "{err}");

        let mut ok = http::Request::builder()
            .uri("https://kinesis.us-west-2.amazonaws.com/")
            .body(())
            .unwrap();
        assert!(matches!(
            sign(
                &mut ok,
                &creds,
                "",
                Service::Kinesis,
                suite_time(),
                PayloadHash::Bytes(b"{}")
            ),
            Err(SignError::EmptyRegion)
        ));

        let mut bad_token = creds.clone();
        bad_token.session_token = Some(Secret::new("token\nwith-newline"));
        assert!(matches!(
            sign(
                &mut ok,
                &bad_token,
                "us-west-2",
                Service::Kinesis,
                suite_time(),
                PayloadHash::Bytes(b"{}")
            ),
            Err(SignError::ControlCharacters {
                what: "session token"
            })
        ));
        assert!(matches!(
            sign(
                &mut ok,
                &creds,
                "us-west-2\r",
                Service::Kinesis,
                suite_time(),
                PayloadHash::Bytes(b"{}")
            ),
            Err(SignError::ControlCharacters { what: "region" })
        ));

        let mut expired = creds.clone();
        expired.expires_at = Some(suite_time() - Duration::from_secs(1));
        let err = sign(
            &mut ok,
            &expired,
            "us-west-2",
            Service::Kinesis,
            suite_time(),
            PayloadHash::Bytes(b"{}"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("expired at 2015-08-30T12:35:59Z"),
            "{err}"
        );
        assert!(!err.to_string().contains("EXAMPLEKEY"));
    }
}
