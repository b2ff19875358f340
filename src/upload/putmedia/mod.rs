//! PutMedia driver (in progress).
pub mod body;
pub use body::{BodyClosed, BodySender, SendError, body_channel};
