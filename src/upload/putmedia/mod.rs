//! `upload::putmedia`: the HTTP driver of one stream. It owns the stream's PutMedia connection
//! (one at a time), runs the sans-I/O [`Session`](crate::upload::session::Session) and connects
//! it to the fragment log ([`crate::buffer`]) and the network.
//!
//! ```text
//!  FragmentReader ──chunks (frame by frame, paced)──► BodySender ══ HTTP/1.1 chunked body ══► KVS
//!        ▲  ack / skip / rewind                                                        │
//!        │                               ACK lines on the response, read concurrently ◄┘
//!  PutMediaDriver ◄── Events (Connected, Ack, ConnectionClosed, control answers, credentials)
//!        │ actions
//!        ▼
//!     Session (decides: describe/create/tag/endpoint, connect, drain, backoff, refresh, skew)
//! ```
//!
//! - [`body`]: the streamed request body (a bounded channel; clean finish or abort);
//! - [`http`]: [`KvsAccess`] (credentials cache, clock skew, region, control endpoint, clients),
//!   signed control calls, one PutMedia connection as a task;
//! - [`pacer`]: ≤ 5 fragments/s and ≤ 12.5 MB/s per stream;
//! - [`driver`]: the loop ([`PutMediaDriver::run`]).

pub mod body;
pub mod driver;
pub mod http;
pub mod pacer;

pub use body::{BodyClosed, BodyObserver, BodySender, SendError, body_channel};
pub use driver::{PutMediaDriver, StopSignal, StreamSettings, UploadCounters, UploadSummary};
pub use http::{ClientError, KvsAccess, PutMediaTarget, TimecodeType, producer_timestamp};
pub use pacer::{Pacer, PacingLimits};
