//! `local` (feature `local-endpoint`): a loopback HTTP server standing in for AWS, so the demo
//! runs without an account and the tests can inject faults no public stand-in offers.
//!
//! This file is the server plumbing: a hyper HTTP/1.1 server that hands each request to the
//! first [`Handler`] that accepts it. [`kds::KdsHandler`] serves Kinesis Data Streams; other
//! services (Kinesis Video Streams) add their own handler beside it.
//!
//! Invariants: the server binds loopback addresses only; stopping it ends the accept loop and
//! every open connection; a request no handler accepts gets a 404 naming its path and target;
//! while a [`ConnectionGate`] refuses, the listening socket is closed (connections are refused,
//! as by an endpoint that is down) and it is bound again on the same address afterwards.

pub mod kds;
pub mod kvs;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A response body: whole or streamed.
pub type ResponseBody = BoxBody<Bytes, std::io::Error>;

/// A boxed future returned by handlers.
pub type HandlerFuture = Pin<Box<dyn Future<Output = http::Response<ResponseBody>> + Send>>;

/// One service behind the local endpoint.
pub trait Handler: Send + Sync + 'static {
    /// True when this handler serves `request` (by path, method or `X-Amz-Target`).
    fn accepts(&self, request: &http::Request<Incoming>) -> bool;
    /// Serves it. The body is read by the handler (whole or streamed).
    fn handle(self: Arc<Self>, request: http::Request<Incoming>) -> HandlerFuture;
}

/// A whole-body response.
pub fn full_response(
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
) -> http::Response<ResponseBody> {
    let body = Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = http::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Only loopback addresses are allowed.
    #[error("the local endpoint binds loopback addresses only, not {0}")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Lets a handler take the listener down for a while (fault injection).
#[derive(Debug, Default)]
pub struct ConnectionGate {
    refusal: Mutex<Option<(Instant, bool)>>,
    changed: Notify,
}

impl ConnectionGate {
    /// Refuses new connections for `duration`; with `drop_open`, also cuts the open ones.
    pub fn refuse_for(&self, duration: Duration, drop_open: bool) {
        let until = Instant::now() + duration;
        *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some((until, drop_open));
        self.changed.notify_one();
    }

    /// The end of the current refusal, if one is on.
    pub fn refusing_until(&self) -> Option<Instant> {
        let refusal = *self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        refusal
            .map(|(until, _)| until)
            .filter(|until| *until > Instant::now())
    }

    /// Takes the "cut open connections" request of the current refusal.
    fn take_drop_open(&self) -> bool {
        let mut refusal = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        match refusal.as_mut() {
            Some((_, drop_open)) => std::mem::take(drop_open),
            None => false,
        }
    }
}

/// A running local endpoint.
pub struct LocalServer {
    addr: SocketAddr,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl LocalServer {
    /// Listens on `bind` (port 0 picks a free one) and serves with `handlers`.
    pub async fn start(
        bind: SocketAddr,
        handlers: Vec<Arc<dyn Handler>>,
    ) -> Result<Self, LocalError> {
        Self::start_with_gate(bind, handlers, Arc::new(ConnectionGate::default())).await
    }

    /// [`LocalServer::start`] with a gate handlers can use to refuse connections.
    pub async fn start_with_gate(
        bind: SocketAddr,
        handlers: Vec<Arc<dyn Handler>>,
        gate: Arc<ConnectionGate>,
    ) -> Result<Self, LocalError> {
        if !bind.ip().is_loopback() {
            return Err(LocalError::NotLoopback(bind));
        }
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| LocalError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| LocalError::Bind { addr: bind, source })?;
        let stop = Arc::new(Notify::new());
        let handlers: Arc<[Arc<dyn Handler>]> = handlers.into();
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            handlers,
            Arc::clone(&stop),
            gate,
        ));
        tracing::info!(%addr, "local endpoint listening");
        Ok(LocalServer { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL` or `telemetry.endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(self) {
        self.stop.notify_one();
        // The accept loop ends at once; its JoinError (if it panicked) has nothing to add.
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    handlers: Arc<[Arc<dyn Handler>]>,
    stop: Arc<Notify>,
    gate: Arc<ConnectionGate>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let mut listener = Some(listener);
    loop {
        let Some(active) = listener.as_ref() else {
            // Refusing: the socket is closed until the refusal (which may be extended) ends.
            match gate.refusing_until() {
                Some(until) => tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
                    _ = gate.changed.notified() => {
                        if gate.take_drop_open() {
                            connections.abort_all();
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    _ = stop.notified() => break,
                },
                None => match TcpListener::bind(addr).await {
                    Ok(bound) => {
                        tracing::info!(%addr, "local endpoint accepting connections again");
                        listener = Some(bound);
                    }
                    Err(error) => {
                        tracing::warn!(%addr, %error, "local endpoint cannot listen again yet");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = stop.notified() => break,
                        }
                    }
                },
            }
            continue;
        };
        tokio::select! {
            accepted = active.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let handlers = Arc::clone(&handlers);
                let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                    let handlers = Arc::clone(&handlers);
                    async move { Ok::<_, Infallible>(route(&handlers, request).await) }
                });
                connections.spawn(async move {
                    // A client hanging up mid-request is normal here (timeouts in tests).
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = gate.changed.notified() => {
                if gate.refusing_until().is_some() {
                    if gate.take_drop_open() {
                        connections.abort_all();
                    }
                    tracing::info!(%addr, "local endpoint refusing connections");
                    listener = None;
                }
            }
            _ = stop.notified() => break,
        }
    }
    connections.abort_all();
}

async fn route(
    handlers: &[Arc<dyn Handler>],
    request: http::Request<Incoming>,
) -> http::Response<ResponseBody> {
    match handlers.iter().find(|h| h.accepts(&request)) {
        Some(handler) => Arc::clone(handler).handle(request).await,
        None => {
            let target = request
                .headers()
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let message = serde_json::json!({
                "__type": "UnknownOperationException",
                "message": format!(
                    "no local service for {} {} (target {target})",
                    request.method(),
                    request.uri().path()
                ),
            });
            full_response(404, "application/x-amz-json-1.1", message.to_string())
        }
    }
}
