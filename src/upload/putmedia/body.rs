//! The streamed PutMedia request body: a bounded channel of [`Bytes`] chunks on one side, a
//! [`reqwest::Body`] on the other.
//!
//! Invariants:
//! - chunks reach the socket in the order they were sent, without a copy (the `Bytes` handed in
//!   is the `Bytes` hyper writes);
//! - [`BodySender::finish`] (or dropping the sender) ends the body cleanly: the chunked
//!   terminator is written, the service sees a complete request;
//! - [`BodySender::abort`] makes the body fail: hyper closes the connection without the
//!   terminator, so a fragment cut in the middle is never mistaken for a complete request body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};

/// Sees every chunk at the moment hyper takes it from the body, in the connection task's poll
/// that writes it to the socket (for measuring the latency from a frame muxed to its bytes
/// written). It runs on that task: it must be quick and must not block.
#[derive(Clone)]
pub struct BodyObserver(Arc<dyn Fn(&Bytes) + Send + Sync>);

impl BodyObserver {
    /// An observer calling `observe` with each chunk taken.
    pub fn new(observe: impl Fn(&Bytes) + Send + Sync + 'static) -> Self {
        Self(Arc::new(observe))
    }
}

impl std::fmt::Debug for BodyObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyObserver")
    }
}

/// The writing end of a streamed request body.
#[derive(Debug)]
pub struct BodySender {
    chunks: mpsc::Sender<Bytes>,
    abort: oneshot::Sender<()>,
}

/// A body's reading end was dropped: the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the PutMedia connection no longer reads its request body")]
pub struct BodyClosed;

impl BodySender {
    /// Waits until one more chunk fits in the channel. Cancel-safe.
    pub async fn ready(&self) -> Result<(), BodyClosed> {
        self.chunks
            .reserve()
            .await
            .map(drop)
            .map_err(|_| BodyClosed)
    }

    /// Whether a chunk fits now.
    pub fn has_room(&self) -> bool {
        self.chunks.capacity() > 0
    }

    /// Queues `chunk` for the socket. Fails, handing the chunk back, when the channel is full
    /// (await [`Self::ready`] first) or the connection is gone.
    pub fn send(&self, chunk: Bytes) -> Result<(), SendError> {
        self.chunks.try_send(chunk).map_err(|error| match error {
            mpsc::error::TrySendError::Full(chunk) => SendError::Full(chunk),
            mpsc::error::TrySendError::Closed(chunk) => SendError::Closed(chunk),
        })
    }

    /// Ends the body cleanly once the queued chunks are written.
    pub fn finish(self) {
        drop(self);
    }

    /// Fails the body: the connection is closed without a chunked terminator.
    pub fn abort(self) {
        // An error only means the body is already gone, which is what abort wants.
        let _ = self.abort.send(());
    }
}

/// Why [`BodySender::send`] did not queue a chunk; the chunk comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The channel is full.
    #[error("the PutMedia body channel is full")]
    Full(Bytes),
    /// The connection no longer reads its body.
    #[error("the PutMedia connection no longer reads its request body")]
    Closed(Bytes),
}

/// The reading end, as a stream hyper polls while it writes the request.
struct BodyStream {
    chunks: mpsc::Receiver<Bytes>,
    /// `None` once the sender was dropped without aborting (a clean finish).
    abort: Option<oneshot::Receiver<()>>,
    observer: Option<BodyObserver>,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(abort) = self.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(())) => {
                    self.abort = None;
                    self.chunks.close();
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "PutMedia body aborted by the uploader",
                    ))));
                }
                Poll::Ready(Err(_)) => self.abort = None,
                Poll::Pending => {}
            }
        }
        let polled = self.chunks.poll_recv(cx);
        if let (Poll::Ready(Some(chunk)), Some(observer)) = (&polled, &self.observer) {
            (observer.0)(chunk);
        }
        polled.map(|chunk| chunk.map(Ok))
    }
}

/// A body channel holding at most `capacity` chunks (at least 1); `observer` sees each chunk
/// as hyper takes it.
pub fn body_channel(
    capacity: usize,
    observer: Option<BodyObserver>,
) -> (BodySender, reqwest::Body) {
    let (chunk_tx, chunk_rx) = mpsc::channel(capacity.max(1));
    let (abort_tx, abort_rx) = oneshot::channel();
    let stream = BodyStream {
        chunks: chunk_rx,
        abort: Some(abort_rx),
        observer,
    };
    (
        BodySender {
            chunks: chunk_tx,
            abort: abort_tx,
        },
        reqwest::Body::wrap_stream(stream),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(stream: &mut BodyStream) -> Option<Result<Bytes, io::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
    }

    fn stream_pair(capacity: usize) -> (BodySender, BodyStream) {
        let (chunk_tx, chunk_rx) = mpsc::channel(capacity);
        let (abort_tx, abort_rx) = oneshot::channel();
        (
            BodySender {
                chunks: chunk_tx,
                abort: abort_tx,
            },
            BodyStream {
                chunks: chunk_rx,
                abort: Some(abort_rx),
                observer: None,
            },
        )
    }

    #[tokio::test]
    async fn chunks_arrive_in_order_then_finish_ends_the_stream() {
        let (tx, mut rx) = stream_pair(2);
        assert!(tx.send(Bytes::from_static(b"a")).is_ok());
        assert!(tx.send(Bytes::from_static(b"b")).is_ok());
        assert_eq!(
            tx.send(Bytes::from_static(b"c")),
            Err(SendError::Full(Bytes::from_static(b"c")))
        );
        assert!(!tx.has_room());
        tx.finish();
        assert_eq!(
            next(&mut rx).await.and_then(Result::ok).as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(
            next(&mut rx).await.and_then(Result::ok).as_deref(),
            Some(&b"b"[..])
        );
        assert!(next(&mut rx).await.is_none());
    }

    #[tokio::test]
    async fn abort_fails_the_stream_even_with_chunks_queued() {
        let (tx, mut rx) = stream_pair(4);
        assert!(tx.send(Bytes::from_static(b"half a fragment")).is_ok());
        tx.abort();
        let item = next(&mut rx).await;
        assert!(
            matches!(&item, Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted),
            "{item:?}"
        );
    }

    #[tokio::test]
    async fn the_observer_sees_each_chunk_as_it_is_taken() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let (tx, mut rx) = stream_pair(4);
        rx.observer = Some(BodyObserver::new(move |chunk: &Bytes| {
            if let Ok(mut log) = log.lock() {
                log.push(chunk.clone());
            }
        }));
        assert!(tx.send(Bytes::from_static(b"one")).is_ok());
        assert!(tx.send(Bytes::from_static(b"two")).is_ok());
        let seen_len = || seen.lock().map(|s| s.len()).unwrap_or(usize::MAX);
        assert_eq!(seen_len(), 0, "nothing is seen before hyper takes it");
        assert!(next(&mut rx).await.is_some());
        assert_eq!(seen_len(), 1);
        assert!(next(&mut rx).await.is_some());
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            [Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
    }

    #[tokio::test]
    async fn a_gone_reader_is_reported() {
        let (tx, rx) = stream_pair(1);
        drop(rx);
        assert_eq!(
            tx.send(Bytes::from_static(b"x")),
            Err(SendError::Closed(Bytes::from_static(b"x")))
        );
        assert_eq!(tx.ready().await, Err(BodyClosed));
    }
}
