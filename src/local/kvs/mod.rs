//! Kinesis Video Streams on the local endpoint: the control plane, PutMedia with ACKs as the
//! service sends them, SigV4 checks, storage of what arrived, and fault injection.
//!
//! Routes (all `POST` unless said):
//! - `/createStream`, `/describeStream`, `/listStreams`, `/deleteStream`, `/tagStream`,
//!   `/untagStream`, `/listTagsForStream`, `/updateDataRetention`, `/getDataEndpoint`
//!   ([`control`]); GetDataEndpoint answers the endpoint's own URL;
//! - `/putMedia` ([`putmedia`]): answered 200 at once, then ACK lines while the body streams
//!   in (HTTP/1.1 full duplex), the body checked chunk by chunk ([`mkv_check`]), accepted
//!   fragments stored ([`store`]);
//! - `/_local/kvs/faults` (no signature): `POST` a [`faults::FaultRequest`] to arm faults (a refusal
//!   starts 30 ms after the answer, which it would otherwise cut), `GET` the counts, `DELETE`
//!   to disarm everything.
//!
//! Every answer carries `Date` (the endpoint's clock, skew included) and `x-amzn-RequestId`;
//! errors carry `x-amzn-ErrorType` and a `{"__type", "message"}` body. PutMedia is refused
//! before the 200 with 400 InvalidArgumentException (headers), 404 ResourceNotFoundException,
//! 400 ClientLimitExceededException (more than `put_media_tps` a second per stream) and 400
//! ConnectionLimitExceededException (a second concurrent connection for a stream).
//!
//! Invariants: with keys configured, nothing but `/_local/kvs/faults` is served to a request whose
//! signature does not verify; at most one PutMedia connection per stream is open; every
//! fragment that got an ACK has exactly one [`store::FragmentRecord`], in memory
//! ([`KvsHandler::fragments`]) and in `<data dir>/<stream>.fragments.jsonl`.

pub mod ack;
pub mod auth;
pub mod control;
pub mod endpoint;
pub mod faults;
pub mod mkv_check;
pub mod putmedia;
pub mod store;

pub use endpoint::{
    LocalEndpoint, LocalEndpointArgs, LocalEndpointConfig, LocalEndpointError, run_cli,
};

use super::{ConnectionGate, HandlerFuture, ResponseBody, full_response};
use crate::aws::{Credentials, EMPTY_SHA256};
use auth::{SignedRequest, Verifier, sha256_hex};
use bytes::Bytes;
use control::{ApiError, ControlPlane, Operation};
use faults::{FaultError, FaultPlan, FaultRequest, FaultStats};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use mkv_check::CheckLimits;
use putmedia::{Now, Session, SessionSettings};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use store::{FragmentRecord, StreamStore, TimecodeType};
use tokio::sync::watch;

/// The fault-injection API (no signature needed).
pub const FAULTS_PATH: &str = "/_local/kvs/faults";
/// Largest control-plane request body read.
const MAX_CONTROL_BODY: usize = 1 << 20;
const JSON: &str = "application/json";
/// How long after answering `POST /_local/kvs/faults` a refusal starts.
const REFUSAL_DELAY: Duration = Duration::from_millis(30);
/// ACK lines buffered for a client that reads them slowly.
const ACK_BUFFER: usize = 64;

/// How the KVS side behaves.
#[derive(Debug, Clone)]
pub struct KvsSettings {
    /// Where streams are stored.
    pub data_dir: PathBuf,
    /// Region in ARNs.
    pub region: String,
    /// Account in ARNs.
    pub account_id: String,
    /// RECEIVED → PERSISTED.
    pub persist_delay: Duration,
    /// IDLE ACK period without data.
    pub idle_ack_interval: Duration,
    /// A PutMedia response ends after this long without data (the service: 30 s).
    pub idle_timeout: Duration,
    /// ERROR 4003 for fragments starting later on a connection (the service: 45 min).
    pub max_connection_duration: Duration,
    /// PutMedia requests a second per stream before ClientLimitExceeded (the service: 5).
    pub put_media_tps: u32,
    /// Refuse a second concurrent PutMedia for a stream (ConnectionLimitExceeded).
    pub one_connection_per_stream: bool,
    /// Fragment rules.
    pub limits: CheckLimits,
}

impl KvsSettings {
    /// The service's values, PERSISTED 50 ms after RECEIVED, IDLE every 3 s.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            region: "us-west-2".to_owned(),
            account_id: "123456789012".to_owned(),
            persist_delay: Duration::from_millis(50),
            idle_ack_interval: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            max_connection_duration: Duration::from_secs(45 * 60),
            put_media_tps: 5,
            one_connection_per_stream: true,
            limits: CheckLimits::default(),
        }
    }
}

/// State shared by the handler and its PutMedia tasks.
pub(crate) struct Shared {
    settings: KvsSettings,
    control: Mutex<ControlPlane>,
    faults: Mutex<FaultPlan>,
    verifier: Mutex<Option<Verifier>>,
    stores: Mutex<HashMap<String, Arc<Mutex<StreamStore>>>>,
    records: Mutex<Vec<FragmentRecord>>,
    active: Mutex<HashSet<String>>,
    recent_puts: Mutex<HashMap<String, VecDeque<Instant>>>,
    connections: AtomicU64,
    data_endpoint: OnceLock<String>,
    gate: Arc<ConnectionGate>,
    shutdown: watch::Sender<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The endpoint's clock (skew included) and the monotonic one.
    pub(crate) fn now(&self) -> Now {
        Now {
            instant: Instant::now(),
            wall: self.wall_clock(),
        }
    }

    fn wall_clock(&self) -> SystemTime {
        let skew = lock(&self.faults).clock_skew_ms();
        let magnitude = Duration::from_millis(skew.unsigned_abs());
        let now = SystemTime::now();
        if skew >= 0 {
            now.checked_add(magnitude).unwrap_or(now)
        } else {
            now.checked_sub(magnitude).unwrap_or(now)
        }
    }

    pub(crate) fn with_faults<R>(&self, f: impl FnOnce(&mut FaultPlan) -> R) -> R {
        f(&mut lock(&self.faults))
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn store_for(&self, stream: &str) -> Arc<Mutex<StreamStore>> {
        let mut stores = lock(&self.stores);
        Arc::clone(stores.entry(stream.to_owned()).or_insert_with(|| {
            Arc::new(Mutex::new(StreamStore::new(
                &self.settings.data_dir,
                stream,
            )))
        }))
    }

    pub(crate) fn record(&self, record: FragmentRecord) {
        let store = self.store_for(&record.stream);
        let logged = lock(&store).log(&record);
        if let Err(error) = logged {
            tracing::warn!(%error, "local endpoint could not log a fragment");
        }
        lock(&self.records).push(record);
    }
}

/// Clears a stream's "connection open" mark when its PutMedia task ends.
struct ActiveGuard {
    shared: Arc<Shared>,
    stream: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        lock(&self.shared.active).remove(&self.stream);
    }
}

/// The Kinesis Video Streams handler. Share it (`Arc`) with the server and the test.
pub struct KvsHandler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KvsHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvsHandler")
            .field("data_dir", &self.shared.settings.data_dir)
            .field("data_endpoint", &self.shared.data_endpoint.get())
            .finish()
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl KvsHandler {
    /// A handler storing under `settings.data_dir`; `gate` is the server's (refusal faults).
    pub fn new(settings: KvsSettings, gate: Arc<ConnectionGate>) -> Arc<Self> {
        let control = ControlPlane::new(&settings.region, &settings.account_id);
        let (shutdown, _) = watch::channel(false);
        Arc::new(Self {
            shared: Arc::new(Shared {
                settings,
                control: Mutex::new(control),
                faults: Mutex::new(FaultPlan::default()),
                verifier: Mutex::new(None),
                stores: Mutex::new(HashMap::new()),
                records: Mutex::new(Vec::new()),
                active: Mutex::new(HashSet::new()),
                recent_puts: Mutex::new(HashMap::new()),
                connections: AtomicU64::new(0),
                data_endpoint: OnceLock::new(),
                gate,
                shutdown,
            }),
        })
    }

    /// Sets what GetDataEndpoint answers (the endpoint's URL, known once it listens).
    pub fn set_data_endpoint(&self, url: &str) {
        // Set once; a second call keeps the first URL (the server does not move).
        let _ = self.shared.data_endpoint.set(url.to_owned());
    }

    /// Requires SigV4 signatures by `keys` (scoped to `region` when given). Without this
    /// call no signature is checked.
    pub fn require_signatures(&self, keys: Vec<Credentials>, region: Option<String>) {
        *lock(&self.shared.verifier) = Some(Verifier::new(keys, region, "kinesisvideo"));
    }

    /// Adds (or replaces, by access key id) a key, e.g. fresh temporary credentials.
    pub fn add_key(&self, key: Credentials) {
        let mut verifier = lock(&self.shared.verifier);
        match verifier.as_mut() {
            Some(v) => v.add_key(key),
            None => *verifier = Some(Verifier::new(vec![key], None, "kinesisvideo")),
        }
    }

    /// Creates a stream; returns its ARN.
    pub fn create_stream(&self, name: &str, retention_hours: u64) -> Result<String, ApiError> {
        let now = self.shared.wall_clock();
        lock(&self.shared.control).create(name, retention_hours, Some("video/h264,audio/aac"), now)
    }

    /// Arms faults (as `POST /_local/kvs/faults` does).
    pub fn inject(&self, request: &FaultRequest) -> Result<(), FaultError> {
        let refusal = lock(&self.shared.faults).apply(request)?;
        if let Some(refusal) = refusal {
            self.shared
                .gate
                .refuse_for(refusal.duration, refusal.drop_open);
        }
        Ok(())
    }

    /// [`KvsHandler::inject`] for `POST /_local/kvs/faults`: a refusal starts once the answer had time
    /// to leave, as it may cut the very connection that asked for it.
    fn inject_later(&self, request: &FaultRequest) -> Result<(), FaultError> {
        let refusal = lock(&self.shared.faults).apply(request)?;
        if let Some(refusal) = refusal {
            let gate = Arc::clone(&self.shared.gate);
            tokio::spawn(async move {
                tokio::time::sleep(REFUSAL_DELAY).await;
                gate.refuse_for(refusal.duration, refusal.drop_open);
            });
        }
        Ok(())
    }

    /// Counts of faults that fired.
    pub fn fault_stats(&self) -> FaultStats {
        lock(&self.shared.faults).stats()
    }

    /// Every fragment record of `stream` so far, in the order they were finished.
    pub fn fragments(&self, stream: &str) -> Vec<FragmentRecord> {
        lock(&self.shared.records)
            .iter()
            .filter(|r| r.stream == stream)
            .cloned()
            .collect()
    }

    /// PutMedia connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// True while a PutMedia connection for `stream` is open.
    pub fn is_streaming(&self, stream: &str) -> bool {
        lock(&self.shared.active).contains(stream)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.shared.settings.data_dir
    }

    /// `<data dir>/<stream>.mkv` (or `.<n>.mkv` for `n` > 0).
    pub fn media_path(&self, stream: &str, n: u32) -> PathBuf {
        self.data_dir().join(StreamStore::file_name(stream, n))
    }

    /// `<data dir>/<stream>.fragments.jsonl`.
    pub fn log_path(&self, stream: &str) -> PathBuf {
        self.data_dir().join(StreamStore::log_name(stream))
    }

    /// Ends every PutMedia connection (their fragments are recorded as they stand).
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    fn respond(&self, status: u16, body: &Value) -> http::Response<ResponseBody> {
        let mut response = full_response(status, JSON, body.to_string());
        self.decorate(&mut response);
        if status >= 400
            && let Some(kind) = body.get("__type").and_then(Value::as_str)
            && let Ok(value) = http::HeaderValue::from_str(kind)
        {
            response.headers_mut().insert("x-amzn-errortype", value);
        }
        response
    }

    fn error(&self, error: &ApiError) -> http::Response<ResponseBody> {
        self.respond(error.status, &error.body())
    }

    /// `Date` from the endpoint's clock and a request id, on every answer.
    fn decorate(&self, response: &mut http::Response<ResponseBody>) {
        let date = aws_smithy_types::DateTime::from(self.shared.wall_clock())
            .fmt(aws_smithy_types::date_time::Format::HttpDate)
            .ok()
            .and_then(|d| http::HeaderValue::from_str(&d).ok());
        if let Some(date) = date {
            response.headers_mut().insert(http::header::DATE, date);
        }
        let mut id = [0u8; 16];
        if getrandom::fill(&mut id).is_ok() {
            let text: String = id.iter().map(|b| format!("{b:02x}")).collect();
            if let Ok(value) = http::HeaderValue::from_str(&text) {
                response.headers_mut().insert("x-amzn-requestid", value);
            }
        }
    }

    fn authenticate(
        &self,
        parts: &http::request::Parts,
        payload_hash: &str,
    ) -> Result<(), ApiError> {
        let verifier = lock(&self.shared.verifier);
        let Some(verifier) = verifier.as_ref() else {
            return Ok(());
        };
        let request = SignedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            payload_hash,
        };
        verifier
            .verify(&request, self.shared.wall_clock())
            .map(|_| ())
            .map_err(|e| ApiError::new(e.status(), e.error_type(), e.to_string()))
    }

    async fn control(
        &self,
        operation: Operation,
        request: http::Request<Incoming>,
    ) -> http::Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_CONTROL_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return self.error(&ApiError::new(
                    400,
                    "SerializationException",
                    format!("cannot read the request body (at most {MAX_CONTROL_BODY} bytes): {e}"),
                ));
            }
        };
        let computed = sha256_hex(&body);
        let payload_hash = match header(&parts.headers, "x-amz-content-sha256") {
            Some(sent) if sent != "UNSIGNED-PAYLOAD" && sent != computed => {
                return self.error(&ApiError::new(
                    403,
                    "InvalidSignatureException",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
            Some(sent) => sent.to_owned(),
            None => computed,
        };
        if let Err(error) = self.authenticate(&parts, &payload_hash) {
            return self.error(&error);
        }
        let json: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return self.error(&ApiError::new(
                        400,
                        "SerializationException",
                        format!("the request body is not JSON: {e}"),
                    ));
                }
            }
        };
        let endpoint = self.shared.data_endpoint.get().cloned().unwrap_or_default();
        let now = self.shared.wall_clock();
        let answer = lock(&self.shared.control).handle(operation, &json, &endpoint, now);
        match answer {
            Ok(value) => self.respond(200, &value),
            Err(error) => self.error(&error),
        }
    }

    fn put_media(&self, request: http::Request<Incoming>) -> http::Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let payload_hash = header(&parts.headers, "x-amz-content-sha256").unwrap_or(EMPTY_SHA256);
        if let Err(error) = self.authenticate(&parts, payload_hash) {
            return self.error(&error);
        }
        let settings = match self.session_settings(&parts.headers) {
            Ok(settings) => settings,
            Err(error) => return self.error(&error),
        };
        let (stream, numbers, settings) = settings;
        if let Err(error) = self.admit(&stream) {
            return self.error(&error);
        }
        let guard = ActiveGuard {
            shared: Arc::clone(&self.shared),
            stream: stream.clone(),
        };
        let now = self.shared.now();
        tracing::info!(%stream, connection = settings.connection, "PutMedia connection");
        let session = Session::new(settings, numbers, now);
        let (tx, channel) =
            http_body_util::channel::Channel::<Bytes, std::io::Error>::new(ACK_BUFFER);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(putmedia::drive(session, body, tx, shared, guard));
        let mut response = http::Response::new(channel.boxed());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(JSON),
        );
        self.decorate(&mut response);
        response
    }

    /// Reads PutMedia's headers into session settings.
    fn session_settings(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<(String, Arc<control::FragmentNumbers>, SessionSettings), ApiError> {
        let (stream, retention, numbers) = {
            let control = lock(&self.shared.control);
            let record = control.find(
                header(headers, "x-amzn-stream-name"),
                header(headers, "x-amzn-stream-arn"),
            )?;
            (
                record.name.clone(),
                record.retention_hours,
                Arc::clone(&record.numbers),
            )
        };
        let timecode_type = match header(headers, "x-amzn-fragment-timecode-type") {
            Some(t) if t.eq_ignore_ascii_case("ABSOLUTE") => TimecodeType::Absolute,
            Some(t) if t.eq_ignore_ascii_case("RELATIVE") => TimecodeType::Relative,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "x-amzn-fragment-timecode-type {other:?} is not ABSOLUTE or RELATIVE"
                )));
            }
            None => {
                return Err(ApiError::invalid(
                    "x-amzn-fragment-timecode-type is required",
                ));
            }
        };
        let producer_start_ms = match header(headers, "x-amzn-producer-start-timestamp") {
            Some(text) => match text.trim().parse::<f64>() {
                Ok(seconds) if (0.0..1e11).contains(&seconds) => (seconds * 1000.0).round() as u64,
                _ => {
                    return Err(ApiError::invalid(format!(
                        "x-amzn-producer-start-timestamp {text:?} is not seconds since the epoch"
                    )));
                }
            },
            // Optional: relative timecodes then count from the connection's arrival.
            None => self
                .shared
                .wall_clock()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        let ack_required = match header(headers, "x-amzn-fragment-acknowledgment-required") {
            None => true,
            Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => true,
            Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "x-amzn-fragment-acknowledgment-required {other:?} is not 1 or 0"
                )));
            }
        };
        let s = &self.shared.settings;
        let settings = SessionSettings {
            stream: stream.clone(),
            connection: self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1,
            ack_required,
            persist: retention > 0,
            persist_delay: s.persist_delay,
            idle_ack_interval: s.idle_ack_interval,
            idle_timeout: s.idle_timeout,
            max_connection_duration: s.max_connection_duration,
            timecode_type,
            producer_start_ms,
            limits: s.limits.clone(),
        };
        Ok((stream, numbers, settings))
    }

    /// The per-stream request rate and the one-connection rule.
    fn admit(&self, stream: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        {
            let mut recent = lock(&self.shared.recent_puts);
            let times = recent.entry(stream.to_owned()).or_default();
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                times.pop_front();
            }
            if times.len() >= self.shared.settings.put_media_tps as usize {
                return Err(ApiError::new(
                    400,
                    "ClientLimitExceededException",
                    format!(
                        "PutMedia for stream {stream} exceeded {} requests a second; try later.",
                        self.shared.settings.put_media_tps
                    ),
                ));
            }
            times.push_back(now);
        }
        let mut active = lock(&self.shared.active);
        if self.shared.settings.one_connection_per_stream && active.contains(stream) {
            return Err(ApiError::new(
                400,
                "ConnectionLimitExceededException",
                format!("Stream {stream} already has a PutMedia connection open."),
            ));
        }
        active.insert(stream.to_owned());
        Ok(())
    }

    async fn faults_api(&self, request: http::Request<Incoming>) -> http::Response<ResponseBody> {
        let method = request.method().clone();
        let body = match Limited::new(request.into_body(), MAX_CONTROL_BODY)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return self.error(&ApiError::invalid(format!(
                    "cannot read the fault request: {e}"
                )));
            }
        };
        let result = match method {
            http::Method::GET => Ok(()),
            http::Method::DELETE => self.inject(&FaultRequest {
                clear: true,
                ..FaultRequest::default()
            }),
            http::Method::POST => {
                FaultRequest::from_json(&body).and_then(|r| self.inject_later(&r))
            }
            other => Err(FaultError::Parse(format!(
                "method {other} is not GET, POST or DELETE"
            ))),
        };
        match result {
            Ok(()) => {
                let stats = self.fault_stats();
                let skew = lock(&self.shared.faults).clock_skew_ms();
                self.respond(200, &json!({"stats": stats, "clock_skew_ms": skew}))
            }
            Err(error) => self.error(&ApiError::invalid(error.to_string())),
        }
    }
}

/// The operation name a path stands for (for routing and fault filters).
fn operation_name(path: &str) -> Option<&'static str> {
    if path == "/putMedia" {
        return Some("putMedia");
    }
    Operation::from_path(path).map(Operation::name)
}

impl super::Handler for KvsHandler {
    fn accepts(&self, request: &http::Request<Incoming>) -> bool {
        let path = request.uri().path();
        path == FAULTS_PATH || operation_name(path).is_some()
    }

    fn handle(self: Arc<Self>, request: http::Request<Incoming>) -> HandlerFuture {
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if path == FAULTS_PATH {
                return self.faults_api(request).await;
            }
            let Some(name) = operation_name(&path) else {
                return self.error(&ApiError::new(
                    404,
                    "UnknownOperationException",
                    format!("no operation at {path}"),
                ));
            };
            if request.method() != http::Method::POST {
                return self.error(&ApiError::new(
                    404,
                    "UnknownOperationException",
                    format!("{} {path}: operations take POST", request.method()),
                ));
            }
            // Bound first: the guard must not live into the answer, which reads the clock skew.
            let injected = lock(&self.shared.faults).take_http_error(name);
            if let Some(fault) = injected {
                tracing::info!(operation = name, status = fault.status, "fault: HTTP error");
                return self.error(&ApiError::new(
                    fault.status,
                    &fault.error_type,
                    fault.message,
                ));
            }
            match Operation::from_path(&path) {
                Some(operation) => self.control(operation, request).await,
                None => self.put_media(request),
            }
        })
    }
}
