//! The `run` job: every configured camera streams to its Kinesis video stream until SIGTERM or
//! SIGINT.
//!
//! Per camera: a thread runs capture → muxer → fragment log ([`super::capture_task`]); a tokio
//! task runs the uploader ([`crate::upload::putmedia::PutMediaDriver`]) over the log's reader.
//! The log sits between them, so capture and buffering never wait for the network and go on
//! while offline, with or without credentials.
//!
//! Shutdown, in order: `STOPPING=1`; EOS into every pipeline (the open fragment closes); each
//! uploader sends what is buffered and waits for its PERSISTED ACKs, within
//! `service.shutdown_timeout_s`; connections close; the logs flush to disk. What was not
//! acknowledged stays on disk and is uploaded first, in order, at the next start; then
//! telemetry ([`super::telemetry_task`]) takes a last sample and sends its spool until the same
//! deadline (at least a second), leaving the rest spooled for the next start. A second signal
//! cuts the wait short.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::access::{self, AccessError};
use super::camera;
use super::capture_task::{CameraHealth, CameraLoop, CaptureControl, CaptureSummary};
use super::systemd;
use super::telemetry_task::Telemetry;
use crate::aws::{EnvLookup, process_env};
use crate::buffer::{Budgets, BufferError, FragmentLog, StatsHandle};
use crate::config::{self, CameraConfig, ValidatedConfig};
use crate::mkv::TagError;
use crate::upload::backoff::SplitMix64;
use crate::upload::putmedia::{
    KvsAccess, PacingLimits, PutMediaDriver, StreamSettings, TimecodeType, UploadCounters,
    UploadSummary,
};
use crate::upload::session::{CreateStreamSettings, SessionConfig, SessionConfigError};

const MIB: u64 = 1024 * 1024;
/// How long `start` waits for every pipeline's first start before reporting readiness anyway.
const START_WAIT: Duration = Duration::from_secs(30);
/// Time given to tasks beyond the shutdown deadline to notice it and return.
const DEADLINE_GRACE: Duration = Duration::from_secs(3);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Nothing to do.
    #[error("the configuration has no [[camera]]")]
    NoCamera,
    /// Endpoint or HTTP client setup failed.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A camera's fragment log could not be opened.
    #[error("camera {camera:?}: buffer: {source}")]
    Buffer {
        /// The camera.
        camera: String,
        /// The log's error.
        source: BufferError,
    },
    /// A camera's metadata cannot be fragment tags.
    #[error("camera {camera:?}: metadata: {source}")]
    Metadata {
        /// The camera.
        camera: String,
        /// The tag error.
        source: TagError,
    },
    /// A camera's stream settings are refused by the upload session.
    #[error("camera {camera:?}: {source}")]
    Session {
        /// The camera.
        camera: String,
        /// The session's error.
        source: SessionConfigError,
    },
    /// The camera thread could not be started.
    #[error("camera {camera:?}: cannot start the capture thread: {source}")]
    Thread {
        /// The camera.
        camera: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Live handles of one camera: what a metrics endpoint or the telemetry collector reads.
#[derive(Debug, Clone)]
pub struct CameraStatus {
    /// The camera's name.
    pub camera: String,
    /// Its Kinesis video stream.
    pub stream: String,
    /// The fragment log's counters.
    pub buffer: StatsHandle,
    /// The uploader's counters.
    pub upload: Arc<UploadCounters>,
    /// The capture loop's liveness and frame counters.
    pub health: Arc<CameraHealth>,
    /// The buffer's directory (its file system's free space is reported).
    pub buffer_dir: PathBuf,
}

/// What one camera did during the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraSummary {
    /// The camera's name.
    pub camera: String,
    /// Its stream.
    pub stream: String,
    /// Fragments found on disk at start (from an earlier run) and queued first.
    pub recovered_fragments: u64,
    /// Fragments the buffer evicted because its budgets were full (lost, counted).
    pub fragments_evicted: u64,
    /// Capture and muxer counters.
    pub capture: CaptureSummary,
    /// Upload counters.
    pub upload: UploadSummary,
}

/// What the run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// One entry per camera, in configuration order.
    pub cameras: Vec<CameraSummary>,
}

struct RunningCamera {
    status: CameraStatus,
    recovered: u64,
    control: Arc<CaptureControl>,
    thread: Option<JoinHandle<CaptureSummary>>,
    started: Option<oneshot::Receiver<Result<(), String>>>,
    upload: Option<tokio::task::JoinHandle<UploadSummary>>,
}

/// The running daemon.
pub struct Daemon {
    cameras: Vec<RunningCamera>,
    telemetry: Option<Telemetry>,
    stop_uploads: watch::Sender<Option<Instant>>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field(
                "cameras",
                &self
                    .cameras
                    .iter()
                    .map(|c| c.status.camera.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Opens every camera's log, starts its capture thread and its uploader. Returns once each
    /// pipeline has made its first start attempt (or [`START_WAIT`] passed); a pipeline that
    /// fails keeps retrying in the background.
    pub async fn start(config: &ValidatedConfig, env: EnvLookup) -> Result<Self, RunError> {
        if config.camera.is_empty() {
            return Err(RunError::NoCamera);
        }
        let session_defaults = SessionConfig::new("defaults");
        let access = Arc::new(access::kvs_access(
            &config.aws,
            &env,
            session_defaults.control_timeout,
        )?);
        tracing::info!(?access, "KVS access");
        let (stop_uploads, stop_rx) = watch::channel(None);
        let mut daemon = Daemon {
            cameras: Vec::with_capacity(config.camera.len()),
            telemetry: None,
            stop_uploads,
            shutdown_timeout: Duration::from_secs(u64::from(config.service.shutdown_timeout_s)),
        };
        for camera in &config.camera {
            let running = start_camera(config, camera, &access, stop_rx.clone());
            match running {
                Ok(running) => daemon.cameras.push(running),
                Err(error) => {
                    // Stop what already runs before reporting.
                    daemon.shutdown_now().await;
                    return Err(error);
                }
            }
        }
        // Telemetry is beside the video path: if it cannot start, the cameras still stream.
        match Telemetry::start(config, &env, &access, &daemon.cameras()) {
            Ok(telemetry) => daemon.telemetry = telemetry,
            Err(error) => tracing::error!(%error, "telemetry disabled for this run"),
        }
        let wait_until = tokio::time::Instant::now() + START_WAIT;
        for camera in &mut daemon.cameras {
            let Some(started) = camera.started.take() else {
                continue;
            };
            match tokio::time::timeout_at(wait_until, started).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::error!(
                    camera = %camera.status.camera,
                    %error,
                    "the pipeline did not start; retrying in the background"
                ),
                Ok(Err(_)) | Err(_) => tracing::warn!(
                    camera = %camera.status.camera,
                    "the pipeline has not started yet"
                ),
            }
        }
        Ok(daemon)
    }

    /// Live handles of every camera (metrics, telemetry).
    pub fn cameras(&self) -> Vec<CameraStatus> {
        self.cameras.iter().map(|c| c.status.clone()).collect()
    }

    /// Stops in order (see the module documentation). `cut_short` resolving (a second signal)
    /// ends the flush at once.
    pub async fn shutdown(
        mut self,
        cut_short: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> RunSummary {
        let deadline = Instant::now() + self.shutdown_timeout;
        tracing::info!(timeout = ?self.shutdown_timeout, "stopping: closing fragments and uploading what is buffered");
        for camera in &self.cameras {
            camera.control.stop();
        }
        self.stop_uploads.send_replace(Some(deadline));
        let stop_uploads = self.stop_uploads.clone();
        let cut = tokio::spawn(async move {
            cut_short.await;
            tracing::warn!("second signal: stopping uploads now; the rest stays in the buffer");
            stop_uploads.send_replace(Some(Instant::now()));
        });
        let summary = self.collect(deadline).await;
        cut.abort();
        if let Some(telemetry) = self.telemetry.take() {
            telemetry.stop(deadline).await;
        }
        summary
    }

    async fn shutdown_now(&mut self) {
        for camera in &self.cameras {
            camera.control.stop();
        }
        self.stop_uploads.send_replace(Some(Instant::now()));
        let _ = self.collect(Instant::now()).await;
        if let Some(telemetry) = self.telemetry.take() {
            telemetry.stop(Instant::now()).await;
        }
    }

    async fn collect(&mut self, deadline: Instant) -> RunSummary {
        let mut summary = RunSummary::default();
        for camera in &mut self.cameras {
            let capture = match camera.thread.take() {
                Some(thread) => match tokio::task::spawn_blocking(move || thread.join()).await {
                    Ok(Ok(capture)) => capture,
                    Ok(Err(_)) | Err(_) => {
                        tracing::error!(camera = %camera.status.camera, "the capture thread panicked");
                        CaptureSummary::default()
                    }
                },
                None => CaptureSummary::default(),
            };
            let upload = match camera.upload.take() {
                Some(task) => {
                    let abort = task.abort_handle();
                    let until = tokio::time::Instant::from_std(deadline + DEADLINE_GRACE);
                    match tokio::time::timeout_at(until, task).await {
                        Ok(Ok(upload)) => upload,
                        Ok(Err(_)) | Err(_) => {
                            abort.abort();
                            tracing::error!(camera = %camera.status.camera, "the uploader did not stop in time");
                            UploadSummary {
                                fragments_left: camera.status.buffer.stats().fragments_buffered,
                                ..camera.status.upload.snapshot()
                            }
                        }
                    }
                }
                None => UploadSummary::default(),
            };
            summary.cameras.push(CameraSummary {
                camera: camera.status.camera.clone(),
                stream: camera.status.stream.clone(),
                recovered_fragments: camera.recovered,
                fragments_evicted: camera.status.buffer.stats().fragments_evicted,
                capture,
                upload,
            });
        }
        summary
    }
}

fn start_camera(
    config: &ValidatedConfig,
    camera: &CameraConfig,
    access: &Arc<KvsAccess>,
    stop: watch::Receiver<Option<Instant>>,
) -> Result<RunningCamera, RunError> {
    let name = camera.name.clone();
    let stream = camera.stream_name().to_owned();
    let tags = camera::fragment_tags(camera).map_err(|source| RunError::Metadata {
        camera: name.clone(),
        source,
    })?;
    let buffer = camera.effective_buffer(&config.buffer);
    let budgets = Budgets {
        memory_bytes: u64::from(buffer.memory_mb) * MIB,
        disk_bytes: u64::from(buffer.disk.max_mb) * MIB,
        fsync: buffer.disk.fsync,
    };
    let (writer, reader, report) =
        FragmentLog::open(&buffer.disk.dir, budgets, &stream).map_err(|source| {
            RunError::Buffer {
                camera: name.clone(),
                source,
            }
        })?;
    if report.fragments_recovered > 0 {
        tracing::info!(
            camera = %name,
            fragments = report.fragments_recovered,
            bytes = report.bytes_recovered,
            "uploading fragments left from the last run first"
        );
    }
    let buffer_stats = reader.stats_handle();
    let settings = StreamSettings {
        session: session_config(config, camera),
        timecode_type: match camera.fragment.timecodes {
            config::Timecodes::Absolute => TimecodeType::Absolute,
            config::Timecodes::Relative => TimecodeType::Relative,
        },
        pacing: PacingLimits::default(),
        send_delay: Duration::from_millis(camera.fragment.send_delay_ms.into()),
    };
    let driver = PutMediaDriver::new(
        Arc::clone(access),
        settings,
        reader,
        Box::new(SplitMix64::new(random_seed())),
    )
    .map_err(|source| RunError::Session {
        camera: name.clone(),
        source,
    })?;
    let upload_counters = driver.counters();
    let upload = tokio::spawn(driver.run(stop));

    let control = Arc::new(CaptureControl::new());
    let health = Arc::new(CameraHealth::new());
    let (started_tx, started_rx) = oneshot::channel();
    let camera_loop = CameraLoop::new(
        camera.clone(),
        tags,
        writer,
        Arc::clone(&control),
        Arc::clone(&health),
        tokio::runtime::Handle::current(),
    );
    let thread = std::thread::Builder::new()
        .name(format!("cam-{}", truncate(&name, 11)))
        .spawn(move || camera_loop.run(started_tx));
    let thread = match thread {
        Ok(thread) => thread,
        Err(source) => {
            upload.abort();
            return Err(RunError::Thread {
                camera: name,
                source,
            });
        }
    };
    Ok(RunningCamera {
        status: CameraStatus {
            camera: name,
            stream,
            buffer: buffer_stats,
            upload: upload_counters,
            health,
            buffer_dir: buffer.disk.dir.clone(),
        },
        recovered: report.fragments_recovered,
        control,
        thread: Some(thread),
        started: Some(started_rx),
        upload: Some(upload),
    })
}

/// The upload session's settings for `camera`.
pub fn session_config(config: &ValidatedConfig, camera: &CameraConfig) -> SessionConfig {
    let mut session = SessionConfig::new(camera.stream_name());
    session.tags = camera.stream_tags.clone();
    if camera.create_stream {
        let media_type = match camera::track_count(camera) {
            1 => "video/h264",
            _ => "video/h264,audio/aac",
        };
        session.create = Some(CreateStreamSettings {
            device_name: config.service.device_id.clone(),
            media_type: Some(media_type.to_owned()),
            kms_key_id: camera.kms_key_id.clone(),
            data_retention_in_hours: camera.retention_hours,
        });
    }
    session
}

fn random_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock still spreads a fleet's retries apart.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
    })
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Runs the daemon with the process environment until SIGTERM/SIGINT, then shuts down in
/// order; a second signal cuts the flush short.
pub async fn run(config: &ValidatedConfig) -> Result<RunSummary, RunError> {
    let daemon = Daemon::start(config, process_env()).await?;
    let cameras = daemon.cameras();
    systemd::ready(&format!("streaming {} camera(s)", cameras.len()));
    let watchdog = systemd::watchdog_interval().map(|interval| {
        let health = cameras
            .iter()
            .map(|c| (c.camera.clone(), Arc::clone(&c.health)))
            .collect();
        tokio::spawn(systemd::watchdog(health, interval))
    });
    tracing::info!(cameras = cameras.len(), "running");
    shutdown_signal().await;
    systemd::stopping("uploading buffered fragments");
    let summary = daemon.shutdown(shutdown_signal()).await;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    Ok(summary)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> ValidatedConfig {
        let parsed = config::Config::from_toml_str(text, Path::new("test.toml"));
        let Ok(parsed) = parsed else {
            panic!("{parsed:?}")
        };
        let validated = parsed.validate(text, Path::new("test.toml"));
        let Ok(validated) = validated else {
            panic!("{validated:?}")
        };
        validated
    }

    #[test]
    fn create_stream_settings_follow_the_camera() {
        let config = config(
            r#"
            [service]
            device_id = "pi-7"
            [[camera]]
            name = "porch"
            stream = "porch-stream"
            create_stream = true
            retention_hours = 24
            stream_tags = { site = "north" }
            video = { source = "test" }
            audio = { source = "test" }
            [[camera]]
            name = "gate"
            video = { source = "test" }
            "#,
        );
        let porch = session_config(&config, &config.camera[0]);
        assert_eq!(porch.stream_name, "porch-stream");
        assert_eq!(porch.tags.get("site").map(String::as_str), Some("north"));
        let create = porch.create.as_ref();
        assert_eq!(create.map(|c| c.data_retention_in_hours), Some(24));
        assert_eq!(
            create.and_then(|c| c.media_type.as_deref()),
            Some("video/h264,audio/aac")
        );
        assert_eq!(create.and_then(|c| c.device_name.as_deref()), Some("pi-7"));
        let gate = session_config(&config, &config.camera[1]);
        assert_eq!(gate.stream_name, "gate");
        assert!(
            gate.create.is_none(),
            "no create_stream: the session pauses instead"
        );
        assert!(gate.validate().is_ok());
    }
}
