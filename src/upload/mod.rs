//! `upload`: the KVS uploader's protocol logic, sans-I/O.
//!
//! Everything here is pure: it takes events and the current time and returns actions. The driver
//! (another module) owns sockets, timers, request signing and the fragment buffer.
//!
//! - [`ack`]: the streaming PutMedia ACK parser and the ACK error-code table;
//! - [`errors`]: classification of HTTP and transport failures;
//! - [`control`]: control-plane request bodies and response parsing;
//! - [`backoff`]: full-jitter exponential backoff with an injectable jitter source;
//! - [`session`]: the connection state machine.

pub mod ack;
pub mod backoff;
pub mod control;
pub mod errors;
pub mod session;
