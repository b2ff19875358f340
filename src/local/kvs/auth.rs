//! SigV4 verification: recomputes a request's signature from what arrived and compares.
//!
//! The canonical request is rebuilt from the headers the client listed in `SignedHeaders`
//! (so signers that sign `transfer-encoding` or `user-agent`, like the KVS C producer, verify
//! as well as aws-sigv4, which does not), the path (normalised, then percent-encoded again as
//! every service but S3 does), the sorted query, and the payload hash the caller determined:
//! `x-amz-content-sha256` when sent, SHA-256 of the body for JSON calls, SHA-256 of the empty
//! string for PutMedia. The signing key and the HMAC come from `aws-sigv4`.
//!
//! Answers follow AWS: 403 `MissingAuthenticationTokenException` without `Authorization`,
//! 403 `IncompleteSignatureException` for a malformed one, 403 `UnrecognizedClientException`
//! for an unknown key or session token, 403 `ExpiredTokenException` past the credentials'
//! expiry, 403 `InvalidSignatureException` for a wrong signature or scope, and for an
//! `x-amz-date` more than 5 minutes off the endpoint's clock "Signature expired: … is now
//! earlier than … (… - 5 min.)" or "Signature not yet current: … is still later than … (… + 5
//! min.)".
//!
//! Invariants: no secret appears in an error; verification never panics on any header value.

use crate::aws::{Credentials, Secret};
use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far `x-amz-date` may be from the endpoint's clock.
pub const MAX_CLOCK_DIFFERENCE: Duration = Duration::from_secs(300);

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// A malformed `Authorization` header or a missing `x-amz-date`.
    #[error("{0}")]
    IncompleteSignature(String),
    /// An access key or session token the endpoint does not know.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// The credentials expired.
    #[error("The security token included in the request is expired")]
    ExpiredToken,
    /// Wrong signature, scope or signed headers.
    #[error("{0}")]
    InvalidSignature(String),
}

impl AuthError {
    /// HTTP status (403 for all, as AWS answers signature problems on KVS).
    pub fn status(&self) -> u16 {
        403
    }

    /// The `x-amzn-ErrorType` / `__type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::ExpiredToken => "ExpiredTokenException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
        }
    }
}

/// What the verifier needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// `POST`.
    pub method: &'a str,
    /// The path as received (still percent-encoded).
    pub path: &'a str,
    /// The query as received, if any.
    pub query: Option<&'a str>,
    /// All headers.
    pub headers: &'a http::HeaderMap,
    /// Lower-case hex SHA-256 of the payload, or `UNSIGNED-PAYLOAD`.
    pub payload_hash: &'a str,
}

/// The keys an endpoint accepts and the scope it expects.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<Credentials>,
    region: Option<String>,
    service: String,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(time: SystemTime) -> String {
    let date_time = time::OffsetDateTime::from(time);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        date_time.year(),
        u8::from(date_time.month()),
        date_time.day(),
        date_time.hour(),
        date_time.minute(),
        date_time.second()
    )
}

/// Parses `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let bytes = value.as_bytes();
    if bytes.len() != 16 || bytes.get(8) != Some(&b'T') || bytes.get(15) != Some(&b'Z') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let text = value.get(range)?;
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let month = time::Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(number(0..4)?).ok()?,
        month,
        u8::try_from(number(6..8)?).ok()?,
    )
    .ok()?;
    let time_of_day = time::Time::from_hms(
        u8::try_from(number(9..11)?).ok()?,
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(13..15)?).ok()?,
    )
    .ok()?;
    Some(SystemTime::from(
        time::PrimitiveDateTime::new(date, time_of_day).assume_utc(),
    ))
}

/// The parts of an `Authorization` header.
struct Authorization<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let Some(rest) = value.strip_prefix(ALGORITHM) else {
        return Err(AuthError::IncompleteSignature(format!(
            "Authorization header must use the {ALGORITHM} algorithm"
        )));
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |name: &str| {
        AuthError::IncompleteSignature(format!(
            "Authorization header requires '{name}' parameter. Authorization={value}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let mut scope = credential.split('/');
    let (Some(access_key), Some(date), Some(region), Some(service), Some(terminator), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential should be 'ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request', got {credential:?}"
        )));
    };
    Ok(Authorization {
        access_key,
        date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
    })
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Trims and collapses runs of spaces, as SigV4 canonicalises header values.
fn canonical_value(value: &str, out: &mut String) {
    let mut previous_space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' {
            if !previous_space {
                out.push(c);
            }
            previous_space = true;
        } else {
            out.push(c);
            previous_space = false;
        }
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~')
}

fn percent_encode(text: &str, keep_slash: bool, out: &mut String) {
    for byte in text.bytes() {
        if is_unreserved(byte) || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let decoded = match byte {
            b'+' => Some((b' ', 1)),
            b'%' => bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|b| (b, 3)),
            _ => None,
        };
        let (value, step) = decoded.unwrap_or((byte, 1));
        out.push(value);
        i += step;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `.` and `..` segments and empty segments (RFC 3986 5.2.4), keeping a trailing slash.
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    if !(path.contains('.') || path.contains("//")) && path.starts_with('/') {
        return path.to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if path.ends_with('/') && !normalized.ends_with('/') {
        normalized.push('/');
    }
    normalized
}

fn canonical_query(query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let mut k = String::new();
            let mut v = String::new();
            percent_encode(&percent_decode(key), false, &mut k);
            percent_encode(&percent_decode(value), false, &mut v);
            (k, v)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

impl Verifier {
    /// Accepts signatures by `keys`, for `service`, in `region` (any region when `None`).
    pub fn new(keys: Vec<Credentials>, region: Option<String>, service: &str) -> Self {
        Self {
            keys,
            region,
            service: service.to_owned(),
        }
    }

    /// Adds or replaces (by access key id) a key.
    pub fn add_key(&mut self, key: Credentials) {
        self.keys.retain(|k| k.access_key_id != key.access_key_id);
        self.keys.push(key);
    }

    /// Checks `request` against the endpoint's clock `now`; returns the access key id.
    pub fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let Some(authorization) = request.headers.get(http::header::AUTHORIZATION) else {
            return Err(AuthError::MissingAuthenticationToken);
        };
        let authorization = authorization.to_str().map_err(|_| {
            AuthError::IncompleteSignature("Authorization header is not visible ASCII".to_owned())
        })?;
        let auth = parse_authorization(authorization)?;
        let Some(key) = self
            .keys
            .iter()
            .find(|k| k.access_key_id == auth.access_key)
        else {
            return Err(AuthError::UnrecognizedClient);
        };
        let Some(amz_date) = header_str(request.headers, "x-amz-date") else {
            return Err(AuthError::IncompleteSignature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                    .to_owned(),
            ));
        };
        let Some(signed_at) = parse_amz_date(amz_date) else {
            return Err(AuthError::IncompleteSignature(format!(
                "X-Amz-Date {amz_date:?} is not YYYYMMDD'T'HHMMSS'Z'"
            )));
        };
        if amz_date.get(..8) != Some(auth.date) {
            return Err(AuthError::InvalidSignature(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                auth.date,
                amz_date.get(..8).unwrap_or_default()
            )));
        }
        if let Some(region) = &self.region
            && auth.region != region
        {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped to a valid region, not '{}'.",
                auth.region
            )));
        }
        if auth.service != self.service {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped to correct service: '{}'.",
                self.service
            )));
        }
        if auth.terminator != "aws4_request" {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
                auth.terminator
            )));
        }
        check_clock(signed_at, now)?;
        self.check_token(key, request.headers, now)?;

        let signed: Vec<&str> = auth.signed_headers.split(';').collect();
        if !signed.contains(&"host") {
            return Err(AuthError::InvalidSignature(
                "'Host' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
            ));
        }
        let expected = self.signature(key, &auth, &signed, request, amz_date, signed_at)?;
        if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            return Err(AuthError::InvalidSignature(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details."
                    .to_owned(),
            ));
        }
        Ok(key.access_key_id.clone())
    }

    fn check_token(
        &self,
        key: &Credentials,
        headers: &http::HeaderMap,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let sent = header_str(headers, "x-amz-security-token");
        match (&key.session_token, sent) {
            (Some(expected), Some(sent))
                if constant_time_eq(expected.expose().as_bytes(), sent.as_bytes()) => {}
            (None, None) => {}
            _ => return Err(AuthError::UnrecognizedClient),
        }
        if key.expires_at.is_some_and(|expiry| expiry <= now) {
            return Err(AuthError::ExpiredToken);
        }
        Ok(())
    }

    fn signature(
        &self,
        key: &Credentials,
        auth: &Authorization<'_>,
        signed: &[&str],
        request: &SignedRequest<'_>,
        amz_date: &str,
        signed_at: SystemTime,
    ) -> Result<String, AuthError> {
        let mut canonical = String::with_capacity(512);
        canonical.push_str(request.method);
        canonical.push('\n');
        percent_encode(&normalize_path(request.path), true, &mut canonical);
        canonical.push('\n');
        canonical.push_str(&canonical_query(request.query));
        canonical.push('\n');
        for name in signed {
            let values: Vec<&str> = request
                .headers
                .get_all(*name)
                .iter()
                .map(|v| v.to_str())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    AuthError::InvalidSignature(format!(
                        "signed header {name} is not visible ASCII"
                    ))
                })?;
            if values.is_empty() {
                return Err(AuthError::InvalidSignature(format!(
                    "signed header {name} is not in the request"
                )));
            }
            canonical.push_str(name);
            canonical.push(':');
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    canonical.push(',');
                }
                canonical_value(value, &mut canonical);
            }
            canonical.push('\n');
        }
        canonical.push('\n');
        canonical.push_str(auth.signed_headers);
        canonical.push('\n');
        canonical.push_str(request.payload_hash);

        let scope = format!(
            "{}/{}/{}/aws4_request",
            auth.date, auth.region, auth.service
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let signing_key = generate_signing_key(
            Secret::expose(&key.secret_access_key),
            signed_at,
            auth.region,
            auth.service,
        );
        Ok(calculate_signature(signing_key, string_to_sign.as_bytes()))
    }
}

fn check_clock(signed_at: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    let earliest = now.checked_sub(MAX_CLOCK_DIFFERENCE).unwrap_or(UNIX_EPOCH);
    let latest = now + MAX_CLOCK_DIFFERENCE;
    if signed_at < earliest {
        return Err(AuthError::InvalidSignature(format!(
            "Signature expired: {} is now earlier than {} ({} - 5 min.)",
            format_amz_date(signed_at),
            format_amz_date(earliest),
            format_amz_date(now)
        )));
    }
    if signed_at > latest {
        return Err(AuthError::InvalidSignature(format!(
            "Signature not yet current: {} is still later than {} ({} + 5 min.)",
            format_amz_date(signed_at),
            format_amz_date(latest),
            format_amz_date(now)
        )));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{EMPTY_SHA256, PayloadHash, Service, sign};

    fn key(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDLOCAL",
            "local/secret+key",
            token.map(Secret::new),
            None,
        )
    }

    fn signed(
        body: &[u8],
        payload: PayloadHash<'_>,
        time: SystemTime,
        token: Option<&str>,
    ) -> http::Request<()> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:4566/describeStream")
            .header("content-type", "application/json")
            .header("user-agent", "test  agent   1.0")
            .body(())
            .unwrap();
        let _ = body;
        sign(
            &mut request,
            &key(token),
            "us-west-2",
            Service::KinesisVideo,
            time,
            payload,
        )
        .unwrap();
        request
    }

    fn verify(
        verifier: &Verifier,
        request: &http::Request<()>,
        hash: &str,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let mut headers = request.headers().clone();
        headers.insert("host", http::HeaderValue::from_static("127.0.0.1:4566"));
        verifier.verify(
            &SignedRequest {
                method: "POST",
                path: request.uri().path(),
                query: request.uri().query(),
                headers: &headers,
                payload_hash: hash,
            },
            now,
        )
    }

    #[test]
    fn accepts_what_the_aws_module_signs() {
        let now = SystemTime::now();
        let verifier = Verifier::new(vec![key(None)], Some("us-west-2".into()), "kinesisvideo");
        let body = br#"{"StreamName":"cam"}"#;
        let request = signed(body, PayloadHash::Bytes(body), now, None);
        assert_eq!(
            verify(&verifier, &request, &sha256_hex(body), now).as_deref(),
            Ok("AKIDLOCAL")
        );
        // The same request with another payload hash fails.
        assert!(matches!(
            verify(&verifier, &request, EMPTY_SHA256, now),
            Err(AuthError::InvalidSignature(_))
        ));
        let streaming = signed(b"", PayloadHash::EmptyStreaming, now, None);
        assert!(verify(&verifier, &streaming, EMPTY_SHA256, now).is_ok());
        let unsigned = signed(b"", PayloadHash::Unsigned, now, None);
        assert!(verify(&verifier, &unsigned, "UNSIGNED-PAYLOAD", now).is_ok());
    }

    #[test]
    fn wrong_secret_token_and_scope_are_refused() {
        let now = SystemTime::now();
        let body = b"{}";
        let request = signed(body, PayloadHash::Bytes(body), now, None);
        let other_secret = Verifier::new(
            vec![Credentials::new("AKIDLOCAL", "another", None, None)],
            None,
            "kinesisvideo",
        );
        let error = verify(&other_secret, &request, &sha256_hex(body), now).unwrap_err();
        assert_eq!(error.error_type(), "InvalidSignatureException");
        let unknown = Verifier::new(
            vec![Credentials::new("AKIDOTHER", "x", None, None)],
            None,
            "kinesisvideo",
        );
        assert_eq!(
            verify(&unknown, &request, &sha256_hex(body), now),
            Err(AuthError::UnrecognizedClient)
        );
        let other_region = Verifier::new(vec![key(None)], Some("eu-west-1".into()), "kinesisvideo");
        assert!(
            matches!(verify(&other_region, &request, &sha256_hex(body), now), Err(AuthError::InvalidSignature(m)) if m.contains("region"))
        );
        let other_service = Verifier::new(vec![key(None)], None, "kinesis");
        assert!(
            matches!(verify(&other_service, &request, &sha256_hex(body), now), Err(AuthError::InvalidSignature(m)) if m.contains("service"))
        );

        // Session tokens must match, and expire.
        let with_token = signed(body, PayloadHash::Bytes(body), now, Some("token-1"));
        let verifier = Verifier::new(vec![key(Some("token-1"))], None, "kinesisvideo");
        assert!(verify(&verifier, &with_token, &sha256_hex(body), now).is_ok());
        let verifier = Verifier::new(vec![key(Some("token-2"))], None, "kinesisvideo");
        assert_eq!(
            verify(&verifier, &with_token, &sha256_hex(body), now),
            Err(AuthError::UnrecognizedClient)
        );
        let mut expiring = key(Some("token-1"));
        expiring.expires_at = Some(now + Duration::from_secs(60));
        let verifier = Verifier::new(vec![expiring], None, "kinesisvideo");
        assert!(verify(&verifier, &with_token, &sha256_hex(body), now).is_ok());
        let later = now + Duration::from_secs(61);
        assert_eq!(
            verify(&verifier, &with_token, &sha256_hex(body), later),
            Err(AuthError::ExpiredToken)
        );
    }

    #[test]
    fn clock_more_than_five_minutes_off_is_refused_with_the_aws_message() {
        let verifier = Verifier::new(vec![key(None)], None, "kinesisvideo");
        let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let request = signed(b"", PayloadHash::EmptyStreaming, signed_at, None);
        let now = signed_at + Duration::from_secs(600);
        let Err(AuthError::InvalidSignature(message)) =
            verify(&verifier, &request, EMPTY_SHA256, now)
        else {
            panic!("expected an expired signature");
        };
        assert_eq!(
            message,
            "Signature expired: 20231114T221320Z is now earlier than 20231114T221820Z (20231114T222320Z - 5 min.)"
        );
        let now = signed_at - Duration::from_secs(600);
        let Err(AuthError::InvalidSignature(message)) =
            verify(&verifier, &request, EMPTY_SHA256, now)
        else {
            panic!("expected a signature not yet current");
        };
        assert!(
            message.starts_with("Signature not yet current: 20231114T221320Z is still later than")
        );
        assert!(
            verify(
                &verifier,
                &request,
                EMPTY_SHA256,
                signed_at + Duration::from_secs(299)
            )
            .is_ok()
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        let verifier = Verifier::new(vec![key(None)], None, "kinesisvideo");
        let headers = http::HeaderMap::new();
        let request = SignedRequest {
            method: "POST",
            path: "/putMedia",
            query: None,
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        assert_eq!(
            verifier.verify(&request, SystemTime::now()),
            Err(AuthError::MissingAuthenticationToken)
        );
        for value in [
            "Basic abc",
            "AWS4-HMAC-SHA256 Credential=AKIDLOCAL/2024",
            "AWS4-HMAC-SHA256 SignedHeaders=host",
            "AWS4-HMAC-SHA256 \u{7f}",
        ] {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(value) {
                headers.insert("authorization", v);
            }
            let request = SignedRequest {
                method: "POST",
                path: "/putMedia",
                query: None,
                headers: &headers,
                payload_hash: EMPTY_SHA256,
            };
            let error = verifier.verify(&request, SystemTime::now()).unwrap_err();
            assert_eq!(error.status(), 403, "{value}: {error}");
        }
    }

    #[test]
    fn amz_dates_round_trip() {
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(format_amz_date(time), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(time));
        for bad in [
            "",
            "20150830T123600",
            "2015083xT123600Z",
            "20151330T123600Z",
            "20150830T256000Z",
            "２0150830T12360Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths_and_queries_canonicalise_like_aws() {
        assert_eq!(normalize_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(normalize_path(""), "/");
        let mut out = String::new();
        percent_encode("/a b/%41", true, &mut out);
        assert_eq!(out, "/a%20b/%2541");
        assert_eq!(canonical_query(Some("b=2&a=1&a=0&c")), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query(Some("k=a+b%2F")), "k=a%20b%2F");
    }
}
