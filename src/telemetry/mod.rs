//! `telemetry`: device and camera health records to a Kinesis Data Stream, and records that
//! other processes put through the daemon.
//!
//! Path of a record: [`collect`] (or the put-record API) → [`spool`] (durable, bounded, CRC per
//! record) → [`producer`] (sans-I/O: shard-aware KPL [`aggregate`]s packed into PutRecords
//! requests by [`batch`], paced by [`rate_limit`], placed by [`shard_map`]) → [`kds`] (HTTP,
//! SigV4) → acknowledged back into the spool.
//!
//! Invariants across the module:
//! * a record leaves the spool only after the service has returned a sequence number for it
//!   (or it was moved to the dead-letter file with the reason, or dropped as the oldest when
//!   the spool was full: both counted);
//! * every PutRecords request respects the limits counted on raw bytes (≤ 500 records,
//!   ≤ the request cap, each record ≤ the stream's maximum record size including its key);
//! * only records predicted for the same shard share an aggregate;
//! * errors an operator must fix pause sending and keep the data.

pub mod aggregate;
pub mod batch;
pub mod collect;
pub mod errors;
pub mod kds;
pub mod pipeline;
pub mod producer;
pub mod rate_limit;
pub mod record;
pub mod shard_map;
pub mod spool;

pub use kds::{ClientSettings, KdsClient, StreamRef, StreamSummary};
pub use pipeline::{DriverSettings, ProducerTask, PutOutcome, SharedSpool, put_record_once};
pub use producer::{ProducerConfig, ProducerStats};
pub use record::{HashKey, RecordError, UserRecord};
pub use spool::{DeadLetterFile, Spool, SpoolConfig, SpoolStats};

/// Errors of the telemetry module.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A record was refused at the door.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// A limit is set outside what the service allows.
    #[error(transparent)]
    Limits(#[from] batch::LimitError),
    /// A request failed (as a whole).
    #[error(transparent)]
    Request(#[from] errors::RequestFailure),
    /// The endpoint could not be resolved.
    #[error(transparent)]
    Endpoint(#[from] crate::aws::EndpointError),
    /// The record was not delivered (put-record): the reason says why.
    #[error("record not delivered: {reason}")]
    NotDelivered {
        /// Why.
        reason: String,
    },
}
