//! The daemon's jobs and their wiring: each job connects capture → mkv → (file | buffer →
//! upload) for one camera. Protocol logic lives in the modules; this layer only connects them.
//!
//! - [`record`]: one camera into a Matroska file;
//! - [`run`]: every camera to its Kinesis video stream, with [`capture_task`] (the capture →
//!   muxer → log loop on its own thread), [`access`] (configuration → credentials, endpoint,
//!   signing region), [`systemd`] (readiness, watchdog, stopping) and [`telemetry_task`]
//!   (device and camera records to a Kinesis data stream).

pub mod access;
pub mod camera;
pub mod capture_task;
pub mod put_record;
pub mod record;
pub mod run;
pub mod systemd;
pub mod telemetry_task;
