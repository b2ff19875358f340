//! What went wrong with a request to Kinesis Data Streams, and what to do about it
//! (reference kds-producer §1.4). Classification is by error code, not HTTP status: the
//! service returns `ExpiredTokenException` with 400 as well as 403.

use std::fmt;

/// A whole request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// The service answered with an error document (or a bare 5xx).
    #[error("{operation} answered HTTP {status} {code}: {message}")]
    Service {
        /// The API operation.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// The error code (`__type` without its namespace), or `HTTP<status>` if none.
        code: String,
        /// The service's message.
        message: String,
    },
    /// No usable answer: connect failure, timeout, reset. `sent` is true when the request may
    /// have reached the service (so its outcome is unknown).
    #[error("{operation} transport error ({}): {message}", if *.sent { "outcome unknown" } else { "not sent" })]
    Transport {
        /// The API operation.
        operation: &'static str,
        /// Whether the body may have reached the service.
        sent: bool,
        /// What failed.
        message: String,
    },
    /// A 200 whose body does not parse or does not match the request.
    #[error("{operation} returned an unusable success response: {message}")]
    BadResponse {
        /// The API operation.
        operation: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Signing was impossible (no credentials).
    #[error("cannot sign {operation}: {message}")]
    Credentials {
        /// The API operation.
        operation: &'static str,
        /// Why.
        message: String,
    },
}

/// What the producer does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The service is throttling: back off the shard(s), slow down.
    Throttled,
    /// Transient: retry with jittered exponential backoff. `ambiguous` when the records may
    /// have been written (5xx, timeouts after sending): a retry may duplicate them.
    Transient {
        /// The outcome is unknown.
        ambiguous: bool,
    },
    /// Credentials expired or the clock is off: refresh credentials, then retry.
    Credentials,
    /// The operator must fix something (stream missing, IAM, KMS): pause, keep the data.
    OperatorFixable,
    /// The request itself is invalid: isolate the bad record and dead-letter it.
    BadRequest,
}

const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "LimitExceededException",
    "KMSThrottlingException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
];

const CREDENTIAL_CODES: &[&str] = &[
    "ExpiredTokenException",
    "ExpiredToken",
    "RequestExpired",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
];

const OPERATOR_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "ResourceInUseException",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSNotFoundException",
    "KMSOptInRequired",
    "KMSInvalidStateException",
    "OptInRequired",
];

const BAD_REQUEST_CODES: &[&str] = &[
    "ValidationException",
    "InvalidArgumentException",
    "SerializationException",
];

/// Classifies an error code and HTTP status.
pub fn classify_code(code: &str, status: u16) -> ErrorClass {
    if THROTTLING_CODES.contains(&code) || status == 429 {
        ErrorClass::Throttled
    } else if CREDENTIAL_CODES.contains(&code) {
        ErrorClass::Credentials
    } else if OPERATOR_CODES.contains(&code) {
        ErrorClass::OperatorFixable
    } else if BAD_REQUEST_CODES.contains(&code) || status == 413 {
        ErrorClass::BadRequest
    } else if status >= 500 || code == "InternalFailure" || code.contains("Timeout") {
        ErrorClass::Transient { ambiguous: true }
    } else {
        // Unknown 4xx codes: do not drop anything; retry with backoff and let an operator see
        // the code in the logs and counters.
        ErrorClass::Transient { ambiguous: false }
    }
}

impl RequestFailure {
    /// What to do about this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            RequestFailure::Service { status, code, .. } => classify_code(code, *status),
            RequestFailure::Transport { sent, .. } => ErrorClass::Transient { ambiguous: *sent },
            RequestFailure::BadResponse { .. } => ErrorClass::Transient { ambiguous: true },
            RequestFailure::Credentials { .. } => ErrorClass::Credentials,
        }
    }

    /// The error code (for counters): the service's code, or a fixed word.
    pub fn code(&self) -> &str {
        match self {
            RequestFailure::Service { code, .. } => code,
            RequestFailure::Transport { .. } => "Transport",
            RequestFailure::BadResponse { .. } => "BadResponse",
            RequestFailure::Credentials { .. } => "NoCredentials",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorClass::Throttled => "throttled",
            ErrorClass::Transient { ambiguous: true } => "transient (outcome unknown)",
            ErrorClass::Transient { ambiguous: false } => "transient",
            ErrorClass::Credentials => "credentials or clock",
            ErrorClass::OperatorFixable => "needs an operator",
            ErrorClass::BadRequest => "invalid request",
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_reference_table() {
        assert_eq!(
            classify_code("ProvisionedThroughputExceededException", 400),
            ErrorClass::Throttled
        );
        assert_eq!(
            classify_code("ExpiredTokenException", 400),
            ErrorClass::Credentials
        );
        assert_eq!(
            classify_code("ExpiredTokenException", 403),
            ErrorClass::Credentials
        );
        assert_eq!(
            classify_code("ResourceNotFoundException", 400),
            ErrorClass::OperatorFixable
        );
        assert_eq!(
            classify_code("KMSDisabledException", 400),
            ErrorClass::OperatorFixable
        );
        assert_eq!(
            classify_code("AccessDeniedException", 400),
            ErrorClass::OperatorFixable
        );
        assert_eq!(
            classify_code("ValidationException", 400),
            ErrorClass::BadRequest
        );
        assert_eq!(
            classify_code("InvalidArgumentException", 400),
            ErrorClass::BadRequest
        );
        assert_eq!(classify_code("HTTP413", 413), ErrorClass::BadRequest);
        assert_eq!(
            classify_code("InternalFailureException", 500),
            ErrorClass::Transient { ambiguous: true }
        );
        assert_eq!(
            classify_code("ServiceUnavailable", 503),
            ErrorClass::Transient { ambiguous: true }
        );
        assert_eq!(
            classify_code("SomethingNew", 400),
            ErrorClass::Transient { ambiguous: false }
        );
        let timeout = RequestFailure::Transport {
            operation: "PutRecords",
            sent: true,
            message: "timed out".into(),
        };
        assert_eq!(timeout.class(), ErrorClass::Transient { ambiguous: true });
        let refused = RequestFailure::Transport {
            operation: "PutRecords",
            sent: false,
            message: "connection refused".into(),
        };
        assert_eq!(refused.class(), ErrorClass::Transient { ambiguous: false });
        assert!(timeout.to_string().contains("outcome unknown"));
    }
}
