//! Failures of KVS calls (control plane and PutMedia) and what each one calls for.
//!
//! AWS's producer collapses every HTTP 400/429/502/503 into one "unknown" result. Here the HTTP
//! status, the `x-amzn-ErrorType` header (`x-amz-ErrorType` on the media endpoints) and the JSON
//! body's `__type` / `message` are read together and mapped to a [`FailureClass`]:
//!
//! | what came back | class | the session then |
//! |---|---|---|
//! | `ClientLimitExceededException`, `ConnectionLimitExceededException`, `ThrottlingException`, `LimitExceededException`, HTTP 429 | `Throttled` | backs off |
//! | HTTP 5xx | `ServerError` | backs off |
//! | HTTP 408, transport timeout | `Timeout` | backs off |
//! | DNS / connect / TLS / reset | `Transport` | backs off; re-resolves the endpoint after repeated PutMedia failures |
//! | 200 with a body that does not parse | `MalformedResponse` | backs off |
//! | 401/403 "Signature expired" / "not yet current", `RequestExpired`, `RequestTimeTooSkewed` | `ClockSkew` | learns the skew from `Date` and retries at once |
//! | other 401/403 (`NotAuthorizedException`, `ExpiredTokenException`, `UnrecognizedClientException`, …) | `Credentials` | refreshes credentials, retries; pauses if fresh ones are refused |
//! | `ResourceNotFoundException`, HTTP 404 | `StreamNotFound` | describes (creates if allowed) |
//! | `InvalidEndpointException` | `InvalidEndpoint` | re-resolves the data endpoint |
//! | `ResourceInUseException` | `ResourceInUse` | describes again after a backoff |
//! | other 4xx (`InvalidArgumentException`, `AccountStreamLimitExceededException`, …) | `OperatorError` | pauses with a long backoff and a clear log line |
//!
//! Error types arrive in several spellings (`ResourceNotFoundException`,
//! `ResourceNotFoundException:http://internal.amazon.com/coral/…`,
//! `com.amazonaws.kinesisvideo#ResourceNotFoundException`); [`sanitize_error_type`] reduces them
//! to the bare name.

use std::fmt;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;

use super::control::ControlError;

/// The most of an error body kept for classification and logs.
pub const MAX_ERROR_BODY: usize = 8 * 1024;

/// An HTTP response that was not a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFailure {
    /// The status code.
    pub status: u16,
    /// `x-amzn-ErrorType` (or `x-amz-ErrorType`), as sent.
    pub error_type_header: Option<String>,
    /// The `Date` header, as sent: the service's clock, used to learn skew.
    pub date: Option<String>,
    /// The first [`MAX_ERROR_BODY`] bytes of the body.
    pub body: Bytes,
}

/// A transport-level failure (no HTTP response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Name resolution failed.
    Dns,
    /// TCP connect failed or was refused.
    Connect,
    /// TLS handshake or certificate failure.
    Tls,
    /// A connect, read or write timed out.
    Timeout,
    /// The peer reset or closed the connection mid-request.
    Reset,
    /// Anything else below HTTP.
    Other,
}

/// Why a call or a PutMedia connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The service answered with a non-success status.
    Http(HttpFailure),
    /// No usable HTTP response.
    Transport {
        /// What kind of transport failure.
        kind: TransportKind,
        /// The underlying error's message.
        detail: String,
    },
    /// A success status whose body did not parse.
    Malformed(ControlError),
}

/// What a failure calls for (see the module table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureClass {
    /// Request-rate or connection limits: back off.
    Throttled,
    /// The service failed: back off.
    ServerError,
    /// A timeout: back off.
    Timeout,
    /// Below HTTP: back off.
    Transport,
    /// A success whose body did not parse: back off.
    MalformedResponse,
    /// The signature's date is outside the service's window: learn the skew from the service's
    /// `Date` header (when sent) and retry.
    ClockSkew {
        /// The service's `Date` header.
        server_date: Option<String>,
    },
    /// The credentials were refused or expired: refresh them.
    Credentials,
    /// The stream does not exist.
    StreamNotFound,
    /// The data endpoint is wrong: resolve it again.
    InvalidEndpoint,
    /// The stream is busy (being created or changed).
    ResourceInUse,
    /// A request the service will keep refusing until someone changes the configuration.
    OperatorError,
}

impl FailureClass {
    /// Whether a plain backoff-and-retry is the answer.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FailureClass::Throttled
                | FailureClass::ServerError
                | FailureClass::Timeout
                | FailureClass::Transport
                | FailureClass::MalformedResponse
        )
    }
}

/// A failure with its class and the details worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// What to do.
    pub class: FailureClass,
    /// The bare AWS error type, if one was sent.
    pub error_type: Option<String>,
    /// The service's message, if one was sent.
    pub message: Option<String>,
}

/// JSON error body of the KVS REST-JSON protocol.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "__type")]
    error_type: Option<String>,
    #[serde(rename = "code", alias = "Code")]
    code: Option<String>,
    #[serde(rename = "message", alias = "Message")]
    message: Option<String>,
}

/// Reduce an AWS error type to its bare name: drop a `namespace#` prefix and a `:uri` suffix.
pub fn sanitize_error_type(raw: &str) -> &str {
    let no_suffix = raw.split(':').next().unwrap_or(raw);
    let bare = no_suffix.rsplit('#').next().unwrap_or(no_suffix);
    bare.trim()
}

impl HttpFailure {
    /// Build from a response's status, headers and (possibly partial) body.
    pub fn from_parts(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let kept = body.get(..MAX_ERROR_BODY).unwrap_or(body);
        Self {
            status,
            error_type_header: header("x-amzn-errortype").or_else(|| header("x-amz-errortype")),
            date: header("date"),
            body: Bytes::copy_from_slice(kept),
        }
    }

    /// Classify by status, error type and message.
    pub fn classify(&self) -> Classified {
        let parsed: ErrorBody = serde_json::from_slice(&self.body).unwrap_or_default();
        let error_type = self
            .error_type_header
            .as_deref()
            .or(parsed.error_type.as_deref())
            .or(parsed.code.as_deref())
            .map(sanitize_error_type)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let message = parsed.message.or_else(|| {
            // A non-JSON body (a proxy's page): keep its start as the message.
            let text = String::from_utf8_lossy(&self.body);
            let text = text.trim();
            (!text.is_empty() && !text.starts_with('{'))
                .then(|| text.chars().take(200).collect::<String>())
        });
        let class = classify_parts(
            Some(self.status),
            error_type.as_deref(),
            message.as_deref(),
            self.date.as_deref(),
        );
        Classified {
            class,
            error_type,
            message,
        }
    }
}

/// Classify an error from its parts. `status` is `None` for an error body that arrived inside an
/// ACK stream (HTTP 200 already sent).
pub fn classify_parts(
    status: Option<u16>,
    error_type: Option<&str>,
    message: Option<&str>,
    date: Option<&str>,
) -> FailureClass {
    let error_type = error_type.map(sanitize_error_type).unwrap_or("");
    let message_lower = message.map(str::to_ascii_lowercase).unwrap_or_default();
    let skew_words = message_lower.contains("signature expired")
        || message_lower.contains("signature not yet current")
        || message_lower.contains("clock skew")
        || message_lower.contains("request time too skewed");
    let skew_type = matches!(
        error_type,
        "RequestExpired" | "RequestTimeTooSkewed" | "RequestInTheFuture"
    );
    if skew_type || skew_words {
        return FailureClass::ClockSkew {
            server_date: date.map(str::to_owned),
        };
    }
    match error_type {
        "ClientLimitExceededException"
        | "ConnectionLimitExceededException"
        | "LimitExceededException"
        | "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "ProvisionedThroughputExceededException" => return FailureClass::Throttled,
        "InvalidEndpointException" => return FailureClass::InvalidEndpoint,
        "ResourceNotFoundException" => return FailureClass::StreamNotFound,
        "ResourceInUseException" => return FailureClass::ResourceInUse,
        "NotAuthorizedException"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "IncompleteSignatureException"
        | "AccessDeniedException" => return FailureClass::Credentials,
        "InternalFailure"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => return FailureClass::ServerError,
        _ => {}
    }
    if message_lower.contains("security token") && message_lower.contains("expired") {
        return FailureClass::Credentials;
    }
    match status {
        Some(429) => FailureClass::Throttled,
        Some(408) => FailureClass::Timeout,
        Some(401 | 403) => FailureClass::Credentials,
        Some(404) => FailureClass::StreamNotFound,
        Some(500..=599) => FailureClass::ServerError,
        // An error body on an ACK stream whose type we do not know: the connection is over, the
        // request was accepted, so treat it as the service's fault.
        None => FailureClass::ServerError,
        Some(_) => FailureClass::OperatorError,
    }
}

impl Failure {
    /// Classify this failure.
    pub fn classify(&self) -> Classified {
        match self {
            Failure::Http(http) => http.classify(),
            Failure::Transport { kind, detail } => Classified {
                class: if *kind == TransportKind::Timeout {
                    FailureClass::Timeout
                } else {
                    FailureClass::Transport
                },
                error_type: None,
                message: Some(detail.clone()),
            },
            Failure::Malformed(error) => Classified {
                class: FailureClass::MalformedResponse,
                error_type: None,
                message: Some(error.to_string()),
            },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Http(http) => {
                let classified = http.classify();
                write!(f, "HTTP {}", http.status)?;
                if let Some(t) = &classified.error_type {
                    write!(f, " {t}")?;
                }
                if let Some(m) = &classified.message {
                    write!(f, ": {m}")?;
                }
                Ok(())
            }
            Failure::Transport { kind, detail } => write!(f, "{kind:?} failure: {detail}"),
            Failure::Malformed(error) => write!(f, "malformed response: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn failure(status: u16, header: Option<&str>, body: &str, date: Option<&str>) -> HttpFailure {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert("x-amzn-errortype", HeaderValue::from_str(h).unwrap());
        }
        if let Some(d) = date {
            headers.insert("date", HeaderValue::from_str(d).unwrap());
        }
        HttpFailure::from_parts(status, &headers, body.as_bytes())
    }

    #[test]
    fn sanitizes_every_spelling() {
        assert_eq!(
            sanitize_error_type("ResourceNotFoundException"),
            "ResourceNotFoundException"
        );
        assert_eq!(
            sanitize_error_type(
                "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazon.kinesisvideo/"
            ),
            "ResourceNotFoundException"
        );
        assert_eq!(
            sanitize_error_type(
                "com.amazonaws.kinesisvideo.v20170930#ClientLimitExceededException"
            ),
            "ClientLimitExceededException"
        );
        assert_eq!(
            sanitize_error_type("aws.protocoltests#FooError:http://x"),
            "FooError"
        );
    }

    #[test]
    fn throttling_is_not_collapsed_into_unknown() {
        for (status, t) in [
            (400, "ClientLimitExceededException"),
            (400, "ConnectionLimitExceededException"),
            (400, "ThrottlingException"),
        ] {
            assert_eq!(
                failure(status, Some(t), "", None).classify().class,
                FailureClass::Throttled,
                "{t}"
            );
        }
        assert_eq!(
            failure(429, None, "", None).classify().class,
            FailureClass::Throttled
        );
    }

    #[test]
    fn type_in_body_when_header_absent() {
        let f = failure(
            400,
            None,
            r#"{"__type":"com.amazonaws#InvalidEndpointException","message":"wrong endpoint"}"#,
            None,
        );
        let c = f.classify();
        assert_eq!(c.class, FailureClass::InvalidEndpoint);
        assert_eq!(c.error_type.as_deref(), Some("InvalidEndpointException"));
        assert_eq!(c.message.as_deref(), Some("wrong endpoint"));
    }

    #[test]
    fn server_errors_back_off() {
        for status in [500, 502, 503, 504] {
            let c = failure(status, None, "<html>bad gateway</html>", None).classify();
            assert_eq!(c.class, FailureClass::ServerError);
            assert!(c.class.is_transient());
        }
        assert_eq!(
            failure(400, Some("InternalFailure"), "", None)
                .classify()
                .class,
            FailureClass::ServerError
        );
    }

    #[test]
    fn auth_failures_refresh_credentials() {
        for (status, t, body) in [
            (401, Some("NotAuthorizedException"), ""),
            (403, Some("ExpiredTokenException"), ""),
            (
                403,
                None,
                r#"{"message":"The security token included in the request is expired"}"#,
            ),
            (403, Some("UnrecognizedClientException"), ""),
            (400, None, r#"{"__type":"ExpiredTokenException"}"#),
            (
                403,
                Some("InvalidSignatureException"),
                r#"{"message":"The request signature we calculated does not match"}"#,
            ),
        ] {
            assert_eq!(
                failure(status, t, body, None).classify().class,
                FailureClass::Credentials,
                "{t:?} {body}"
            );
        }
    }

    #[test]
    fn signature_expired_learns_clock_skew() {
        let date = "Wed, 16 Jan 2019 07:31:25 GMT";
        let f = failure(
            403,
            Some("InvalidSignatureException"),
            r#"{"message":"Signature expired: 20190115T150405Z is now earlier than 20190116T073125Z (20190116T073625Z - 5 min.)"}"#,
            Some(date),
        );
        assert_eq!(
            f.classify().class,
            FailureClass::ClockSkew {
                server_date: Some(date.to_owned())
            }
        );
        let future = failure(
            403,
            None,
            r#"{"message":"Signature not yet current: 20300101T000000Z is still later than …"}"#,
            None,
        );
        assert_eq!(
            future.classify().class,
            FailureClass::ClockSkew { server_date: None }
        );
        assert_eq!(
            failure(400, Some("RequestExpired"), "", None)
                .classify()
                .class,
            FailureClass::ClockSkew { server_date: None }
        );
    }

    #[test]
    fn not_found_and_in_use_and_operator_errors() {
        assert_eq!(
            failure(404, None, "", None).classify().class,
            FailureClass::StreamNotFound
        );
        assert_eq!(
            failure(400, Some("ResourceNotFoundException"), "", None)
                .classify()
                .class,
            FailureClass::StreamNotFound
        );
        assert_eq!(
            failure(400, Some("ResourceInUseException"), "", None)
                .classify()
                .class,
            FailureClass::ResourceInUse
        );
        for t in [
            "InvalidArgumentException",
            "AccountStreamLimitExceededException",
            "TagsPerResourceExceededLimitException",
            "InvalidResourceFormatException",
        ] {
            assert_eq!(
                failure(400, Some(t), "", None).classify().class,
                FailureClass::OperatorError,
                "{t}"
            );
        }
        assert_eq!(
            failure(400, None, "", None).classify().class,
            FailureClass::OperatorError
        );
        assert_eq!(
            failure(413, None, "", None).classify().class,
            FailureClass::OperatorError
        );
    }

    #[test]
    fn transport_and_malformed() {
        let t = Failure::Transport {
            kind: TransportKind::Timeout,
            detail: "read timed out".into(),
        };
        assert_eq!(t.classify().class, FailureClass::Timeout);
        let c = Failure::Transport {
            kind: TransportKind::Connect,
            detail: "connection refused".into(),
        };
        assert_eq!(c.classify().class, FailureClass::Transport);
        let m = Failure::Malformed(ControlError::MissingField {
            operation: "GetDataEndpoint",
            field: "DataEndpoint",
        });
        assert_eq!(m.classify().class, FailureClass::MalformedResponse);
        assert!(m.to_string().contains("DataEndpoint"));
    }

    #[test]
    fn ack_stream_error_bodies_classify_without_status() {
        assert_eq!(
            classify_parts(
                None,
                None,
                Some("The security token included in the request is expired"),
                None
            ),
            FailureClass::Credentials
        );
        assert_eq!(
            classify_parts(None, Some("Weird"), None, None),
            FailureClass::ServerError
        );
    }

    #[test]
    fn body_is_bounded_and_display_names_type() {
        let big = "x".repeat(MAX_ERROR_BODY * 2);
        let f = failure(400, Some("InvalidArgumentException"), &big, None);
        assert_eq!(f.body.len(), MAX_ERROR_BODY);
        let shown = Failure::Http(f).to_string();
        assert!(
            shown.starts_with("HTTP 400 InvalidArgumentException"),
            "{shown}"
        );
    }
}
