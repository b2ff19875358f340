//! kinesis-edge: a camera producer daemon for embedded Linux.
//!
//! Data flows capture → media → mkv → buffer → upload, with telemetry beside them; `config`,
//! `aws` and `service` serve all. See the README's architecture section.

pub mod aws;
pub mod buffer;
pub mod capture;
pub mod config;
#[cfg(feature = "local-endpoint")]
pub mod local;
pub mod media;
pub mod mkv;
pub mod service;
pub mod telemetry;
pub mod upload;
