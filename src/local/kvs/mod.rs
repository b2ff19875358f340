//! Kinesis Video Streams on the local endpoint.

pub mod ack;
pub mod mkv_check;
pub mod auth;
pub mod control;
pub mod faults;
pub mod store;
