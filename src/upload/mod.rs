//! `upload`: the KVS uploader's protocol logic, sans-I/O.
//!
//! Everything here is pure: it takes events and the current time and returns actions. The driver
//! (a separate module) owns sockets, timers, request signing and the fragment buffer, and runs
//! the session like this:
//!
//! ```text
//! loop {
//!     while let Some(action) = session.poll_action() { carry it out }   // calls, connects, acks…
//!     wait for the first of: an I/O result, new fragment data, session.poll_timeout()
//!     session.handle(that event (or Event::Timeout), Instant::now())
//! }
//! ```
//!
//! - [`ack`]: the streaming PutMedia ACK parser and the ACK error-code table (with the class of
//!   each code: retry, skip, reconnect, operator fix);
//! - [`errors`]: classification of HTTP and transport failures by status, `x-amzn-ErrorType` and
//!   body `__type`, never collapsed into "unknown";
//! - [`control`]: control-plane request bodies and response parsing (DescribeStream,
//!   CreateStream, TagStream, GetDataEndpoint);
//! - [`backoff`]: full-jitter exponential backoff with an injectable jitter source;
//! - [`session`]: the connection state machine: control-plane chain, PutMedia connection,
//!   rotation at fragment boundaries, staleness, credentials and clock skew.
//!
//! The session never sees bytes: it tells the driver where a connection starts (the first
//! unacknowledged fragment) and which fragments are acknowledged or skipped.

pub mod ack;
pub mod backoff;
pub mod control;
pub mod errors;
pub mod putmedia;
pub mod session;
