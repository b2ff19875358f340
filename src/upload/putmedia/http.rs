//! The HTTP side of the uploader: signed control-plane calls and one PutMedia connection, each
//! a task that reports what happened as session [`Event`]s.
//!
//! Invariants:
//! - every request is signed just before it is sent, with credentials from the shared cache and
//!   the skew-corrected clock; no secret reaches a log line or an event;
//! - a PutMedia connection reports exactly one of `ConnectFailed` (before HTTP 200) or
//!   `Connected` followed by ACK events and one `ConnectionClosed`;
//! - the ACK stream is read while the request body is still being written (HTTP/1.1 full
//!   duplex; `tests/putmedia_duplex.rs` proves reqwest does this);
//! - HTTP failures keep status, `x-amzn-ErrorType`, `Date` and the body's start
//!   ([`HttpFailure::from_parts`]); transport failures keep their kind.
//! - a data endpoint that is neither https nor loopback http is refused: PutMedia carries a
//!   signature and the whole video.

use std::error::Error as _;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::aws::{
    self, ClockSkew, Credentials, CredentialsCache, PayloadHash, Service, is_loopback_url,
};
use crate::upload::ack::AckParser;
use crate::upload::control::{ControlError, ControlRequest, ControlResponse, Operation};
use crate::upload::errors::{Failure, HttpFailure, MAX_ERROR_BODY, TransportKind};
use crate::upload::session::{ConnectionId, Event};

/// Largest control-plane response body read (DescribeStream answers are ~1 KB).
const MAX_CONTROL_BODY: usize = 256 * 1024;

/// How KVS reads the fragment timecodes of a PutMedia body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimecodeType {
    /// Cluster timecodes are ms since the Unix epoch.
    Absolute,
    /// Cluster timecodes are ms since the producer start timestamp.
    Relative,
}

impl TimecodeType {
    /// The `x-amzn-fragment-timecode-type` value.
    pub fn header_value(self) -> &'static str {
        match self {
            TimecodeType::Absolute => "ABSOLUTE",
            TimecodeType::Relative => "RELATIVE",
        }
    }
}

/// Everything needed to reach KVS as one identity: shared by every camera's uploader.
#[derive(Clone)]
pub struct KvsAccess {
    credentials: CredentialsCache,
    skew: ClockSkew,
    region: String,
    control_endpoint: String,
    control: reqwest::Client,
    media: reqwest::Client,
    control_timeout: Duration,
}

impl std::fmt::Debug for KvsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvsAccess")
            .field("credentials", &self.credentials.provider_name())
            .field("region", &self.region)
            .field("control_endpoint", &self.control_endpoint)
            .field("skew_ms", &self.skew.offset_ms())
            .finish_non_exhaustive()
    }
}

/// The HTTP clients could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientError(String);

impl KvsAccess {
    /// Access through `control_endpoint` (already resolved and checked by
    /// [`aws::resolve_endpoint`]) in `region` (the signing region), signing with credentials
    /// from `credentials` at `skew`-corrected time. Control calls time out after
    /// `control_timeout`.
    pub fn new(
        credentials: CredentialsCache,
        skew: ClockSkew,
        region: impl Into<String>,
        control_endpoint: impl Into<String>,
        control_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let user_agent = concat!("kinesis-edge/", env!("CARGO_PKG_VERSION"));
        let control = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(Duration::from_secs(10))
            .timeout(control_timeout)
            .build()
            .map_err(|e| ClientError(error_chain(&e)))?;
        // PutMedia: HTTP/1.1 only (full duplex over chunked encoding), a fresh connection per
        // request (a pooled one may be half-dead after an outage), small frames sent at once.
        let media = reqwest::Client::builder()
            .user_agent(user_agent)
            .http1_only()
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| ClientError(error_chain(&e)))?;
        Ok(Self {
            credentials,
            skew,
            region: region.into(),
            control_endpoint: control_endpoint.into().trim_end_matches('/').to_owned(),
            control,
            media,
            control_timeout,
        })
    }

    /// The credentials cache.
    pub fn credentials(&self) -> &CredentialsCache {
        &self.credentials
    }

    /// The clock-skew correction every signature uses.
    pub fn skew(&self) -> &ClockSkew {
        &self.skew
    }

    /// The control-plane endpoint.
    pub fn control_endpoint(&self) -> &str {
        &self.control_endpoint
    }

    /// How long a control call may take.
    pub fn control_timeout(&self) -> Duration {
        self.control_timeout
    }

    async fn signing_credentials(&self) -> Result<Credentials, Failure> {
        self.credentials
            .get()
            .await
            .map_err(|e| Failure::Transport {
                kind: TransportKind::Other,
                detail: format!("no credentials to sign with: {e}"),
            })
    }

    fn sign<B>(
        &self,
        request: &mut http::Request<B>,
        credentials: &Credentials,
        payload: PayloadHash<'_>,
    ) -> Result<(), Failure> {
        aws::sign(
            request,
            credentials,
            &self.region,
            Service::KinesisVideo,
            self.skew.now(),
            payload,
        )
        .map_err(|e| Failure::Transport {
            kind: TransportKind::Other,
            detail: e.to_string(),
        })
    }

    /// Fetches credentials (fresh ones when `force`) and says when they expire, as the session
    /// wants it.
    pub async fn refresh_credentials(&self, force: bool) -> Event {
        if force {
            self.credentials.invalidate();
        }
        match self.credentials.get().await {
            Ok(credentials) => Event::CredentialsUpdated {
                expires_at: credentials
                    .expires_at
                    .map(|at| instant_of(at, self.skew.now(), Instant::now())),
            },
            Err(e) => Event::CredentialsRefreshFailed {
                detail: e.to_string(),
            },
        }
    }

    /// Makes one control-plane call and reports its outcome.
    pub async fn control_call(&self, request: ControlRequest) -> Event {
        let operation = request.operation();
        match self.try_control_call(&request).await {
            Ok(response) => Event::ControlResponse(response),
            Err(failure) => Event::ControlFailed { operation, failure },
        }
    }

    async fn try_control_call(&self, request: &ControlRequest) -> Result<ControlResponse, Failure> {
        let operation = request.operation();
        let body = request.to_json().map_err(Failure::Malformed)?;
        let credentials = self.signing_credentials().await?;
        let url = format!("{}{}", self.control_endpoint, operation.path());
        let mut signed = http::Request::builder()
            .method(http::Method::POST)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(())
            .map_err(|e| Failure::Transport {
                kind: TransportKind::Other,
                detail: format!("{} {url}: {e}", operation.name()),
            })?;
        self.sign(&mut signed, &credentials, PayloadHash::Bytes(&body))?;
        let (parts, ()) = signed.into_parts();
        let request =
            reqwest::Request::try_from(http::Request::from_parts(parts, reqwest::Body::from(body)))
                .map_err(|e| transport_failure(&e))?;
        let response = self
            .control
            .execute(request)
            .await
            .map_err(|e| transport_failure(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let limit = if status.is_success() {
            MAX_CONTROL_BODY
        } else {
            MAX_ERROR_BODY
        };
        let body = read_limited(response, limit).await?;
        if !status.is_success() {
            return Err(Failure::Http(HttpFailure::from_parts(
                status.as_u16(),
                &headers,
                &body,
            )));
        }
        let parsed = ControlResponse::parse(operation, &body).map_err(Failure::Malformed)?;
        if let ControlResponse::Endpoint { data_endpoint } = &parsed {
            check_data_endpoint(data_endpoint).map_err(Failure::Malformed)?;
        }
        Ok(parsed)
    }

    /// Runs one PutMedia connection: signs and sends the request with `body`, then reads the
    /// ACK stream until it ends, reporting to `events`. Ends when the response ends or
    /// `events` is closed.
    pub async fn put_media(
        &self,
        target: PutMediaTarget,
        body: reqwest::Body,
        events: mpsc::Sender<Event>,
    ) {
        let conn = target.conn;
        let response = match self.send_put_media(&target, body).await {
            Ok(response) => response,
            Err(failure) => {
                let _ = events.send(Event::ConnectFailed { conn, failure }).await;
                return;
            }
        };
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let headers = response.headers().clone();
            let failure = match read_limited(response, MAX_ERROR_BODY).await {
                Ok(body) => {
                    Failure::Http(HttpFailure::from_parts(status.as_u16(), &headers, &body))
                }
                // The status and headers still classify the failure.
                Err(_) => Failure::Http(HttpFailure::from_parts(status.as_u16(), &headers, &[])),
            };
            let _ = events.send(Event::ConnectFailed { conn, failure }).await;
            return;
        }
        if events.send(Event::Connected { conn }).await.is_err() {
            return;
        }
        read_acks(conn, response, &events).await;
    }

    async fn send_put_media(
        &self,
        target: &PutMediaTarget,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, Failure> {
        let credentials = self.signing_credentials().await?;
        let mut request = target.request(body)?;
        self.sign(&mut request, &credentials, PayloadHash::EmptyStreaming)?;
        let request = reqwest::Request::try_from(request).map_err(|e| transport_failure(&e))?;
        self.media
            .execute(request)
            .await
            .map_err(|e| transport_failure(&e))
    }
}

/// Where and how one PutMedia connection streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutMediaTarget {
    /// The session's name for the connection.
    pub conn: ConnectionId,
    /// The data endpoint (`https://…`, no trailing slash).
    pub endpoint: String,
    /// The stream.
    pub stream_name: String,
    /// Absolute or relative cluster timecodes.
    pub timecode_type: TimecodeType,
    /// The producer start timestamp, ns since the Unix epoch.
    pub producer_start_ns: u64,
}

impl PutMediaTarget {
    /// The unsigned request.
    pub fn request(&self, body: reqwest::Body) -> Result<http::Request<reqwest::Body>, Failure> {
        let url = format!("{}/putMedia", self.endpoint.trim_end_matches('/'));
        http::Request::builder()
            .method(http::Method::POST)
            .uri(&url)
            .header("x-amzn-stream-name", &self.stream_name)
            .header(
                "x-amzn-fragment-timecode-type",
                self.timecode_type.header_value(),
            )
            .header(
                "x-amzn-producer-start-timestamp",
                producer_timestamp(self.producer_start_ns),
            )
            .header("x-amzn-fragment-acknowledgment-required", "1")
            .body(body)
            .map_err(|e| Failure::Transport {
                kind: TransportKind::Other,
                detail: format!("PutMedia {url}: {e}"),
            })
    }
}

/// `x-amzn-producer-start-timestamp`: seconds since the epoch with milliseconds.
pub fn producer_timestamp(ns: u64) -> String {
    let ms = ns / 1_000_000;
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The data endpoint must be https, or http to a loopback host (the local endpoint).
pub fn check_data_endpoint(endpoint: &str) -> Result<(), ControlError> {
    let scheme_is = |scheme: &str| {
        endpoint
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    if scheme_is("https://") || (scheme_is("http://") && is_loopback_url(endpoint)) {
        Ok(())
    } else {
        Err(ControlError::InvalidField {
            operation: Operation::GetDataEndpoint.name(),
            field: "DataEndpoint",
            value: endpoint.chars().take(200).collect(),
            reason: "PutMedia needs https (plain http only to a loopback address)",
        })
    }
}

async fn read_acks(
    conn: ConnectionId,
    mut response: reqwest::Response,
    events: &mpsc::Sender<Event>,
) {
    let mut parser = AckParser::new();
    let failure = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                parser.push(&bytes);
                while let Some(parsed) = parser.next() {
                    let event = match parsed {
                        Ok(ack) => Event::Ack { conn, ack },
                        Err(error) => Event::AckParseError { conn, error },
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(transport_failure(&e)),
        }
    };
    let _ = events.send(Event::ConnectionClosed { conn, failure }).await;
}

/// Reads at most `limit` bytes of a response body (the rest is not read).
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
            }
            Ok(None) => break,
            Err(e) => return Err(transport_failure(&e)),
        }
    }
    Ok(body.freeze())
}

/// A reqwest error as a classified transport failure, with its whole cause chain.
pub fn transport_failure(error: &reqwest::Error) -> Failure {
    let detail = error_chain(error);
    let lower = detail.to_ascii_lowercase();
    let kind = if error.is_timeout() && error.is_connect() {
        // Nothing answered the connect: as unreachable as a refusal.
        TransportKind::Connect
    } else if error.is_timeout() {
        TransportKind::Timeout
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        TransportKind::Dns
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        TransportKind::Tls
    } else if error.is_connect() {
        TransportKind::Connect
    } else if error.is_body() || error.is_request() || error.is_decode() {
        TransportKind::Reset
    } else {
        TransportKind::Other
    };
    Failure::Transport { kind, detail }
}

/// `error: cause: cause…`, without repeating a cause the previous message already contains.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// `at` on the AWS clock (`aws_now` is the corrected current time) as a monotonic instant.
fn instant_of(at: SystemTime, aws_now: SystemTime, now: Instant) -> Instant {
    match at.duration_since(aws_now) {
        Ok(ahead) => now.checked_add(ahead).unwrap_or(now),
        Err(_) => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_timestamp_has_seconds_and_milliseconds() {
        assert_eq!(
            producer_timestamp(1_700_000_000_000_000_000),
            "1700000000.000"
        );
        assert_eq!(
            producer_timestamp(1_700_000_000_123_456_789),
            "1700000000.123"
        );
        assert_eq!(producer_timestamp(5_000_000), "0.005");
    }

    #[test]
    fn data_endpoints_must_be_https_or_loopback() {
        assert!(check_data_endpoint("https://s-1234.kinesisvideo.us-west-2.amazonaws.com").is_ok());
        assert!(check_data_endpoint("HTTPS://s-1234.example").is_ok());
        assert!(check_data_endpoint("http://127.0.0.1:4566").is_ok());
        assert!(check_data_endpoint("http://localhost:8080").is_ok());
        let refused = check_data_endpoint("http://s-1234.kinesisvideo.us-west-2.amazonaws.com");
        assert!(
            matches!(
                &refused,
                Err(ControlError::InvalidField {
                    field: "DataEndpoint",
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(check_data_endpoint("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn put_media_request_carries_the_documented_headers() {
        let target = PutMediaTarget {
            conn: ConnectionId(3),
            endpoint: "https://s-1.example/".into(),
            stream_name: "front-door".into(),
            timecode_type: TimecodeType::Relative,
            producer_start_ns: 1_700_000_000_250_000_000,
        };
        let request = target.request(reqwest::Body::from(Vec::new()));
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri().to_string(), "https://s-1.example/putMedia");
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header("x-amzn-stream-name").as_deref(), Some("front-door"));
        assert_eq!(
            header("x-amzn-fragment-timecode-type").as_deref(),
            Some("RELATIVE")
        );
        assert_eq!(
            header("x-amzn-producer-start-timestamp").as_deref(),
            Some("1700000000.250")
        );
        assert_eq!(
            header("x-amzn-fragment-acknowledgment-required").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn expiry_maps_onto_the_monotonic_clock() {
        let aws_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = Instant::now();
        assert_eq!(
            instant_of(aws_now + Duration::from_secs(60), aws_now, now),
            now + Duration::from_secs(60)
        );
        assert_eq!(
            instant_of(aws_now - Duration::from_secs(60), aws_now, now),
            now
        );
    }
}
