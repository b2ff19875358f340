//! Telemetry in the daemon: every `telemetry.interval_s`, one device record and one record per
//! camera go into the spool; the producer task sends the spool to the Kinesis data stream.
//!
//! The camera records read what the pipelines already count (capture health, fragment log
//! stats, uploader counters), copied into the collector's [`CameraCounters`] just before each
//! collection, so telemetry adds nothing to the frame path.
//!
//! Shutdown comes last (after the uploads): a final collection, then the producer drains for a
//! bounded time; what it could not send stays in the spool for the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::run::CameraStatus;
use crate::aws::EnvLookup;
use crate::config::ValidatedConfig;
use crate::telemetry::collect::{CameraCounters, Collector, CollectorSettings, UploadState};
use crate::telemetry::pipeline::unix_ms_now;
use crate::telemetry::{
    ClientSettings, DeadLetterFile, DriverSettings, KdsClient, ProducerConfig, ProducerStats,
    ProducerTask, SharedSpool, Spool, SpoolConfig, StreamRef, TelemetryError,
};
use crate::upload::putmedia::KvsAccess;
use crate::upload::session::StateKind;

const MIB: u64 = 1024 * 1024;
/// Dead letters kept beside the spool before the file rotates.
const DEAD_LETTER_BYTES: u64 = 4 * MIB;
/// Longest the producer keeps sending at shutdown; what is left waits in the spool.
const MAX_DRAIN: Duration = Duration::from_secs(5);
/// Time the producer always gets at shutdown, even once the video deadline has passed.
const MIN_DRAIN: Duration = Duration::from_secs(1);
/// The uploader is "catching up" while this much media waits behind the live edge.
const CATCHING_UP_AFTER: Duration = Duration::from_secs(30);

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryStartError {
    /// The endpoint, the spool or the client could not be set up.
    #[error("telemetry: {0}")]
    Setup(#[from] TelemetryError),
    /// The Kinesis client could not be built.
    #[error("telemetry: cannot set up the Kinesis client: {0}")]
    Client(String),
}

/// The running telemetry tasks.
pub struct Telemetry {
    stop_collecting: watch::Sender<bool>,
    stop_producing: watch::Sender<bool>,
    collector: JoinHandle<()>,
    producer: JoinHandle<Result<ProducerStats, TelemetryError>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// The device id: `service.device_id`, else `/etc/machine-id`, else the host name.
pub fn device_id(config: &ValidatedConfig) -> String {
    if let Some(id) = &config.service.device_id {
        return id.clone();
    }
    for path in ["/etc/machine-id", "/proc/sys/kernel/hostname"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let id = text.trim();
            if !id.is_empty() {
                return id.to_owned();
            }
        }
    }
    "unknown-device".to_owned()
}

/// The configuration's partition-key template (`{device_id}`, `{camera}`) in the collector's
/// spelling (`{device}`, `{camera}`).
pub fn key_template(template: &str) -> String {
    template.replace("{device_id}", "{device}")
}

impl Telemetry {
    /// Starts telemetry when `telemetry.enabled`; `None` otherwise. Shares the uploaders'
    /// credentials cache and clock-skew correction.
    pub fn start(
        config: &ValidatedConfig,
        env: &EnvLookup,
        access: &KvsAccess,
        cameras: &[CameraStatus],
    ) -> Result<Option<Self>, TelemetryStartError> {
        let settings = &config.telemetry;
        let Some(stream) = settings.stream.clone().filter(|_| settings.enabled) else {
            return Ok(None);
        };
        let client_settings = ClientSettings::resolve(
            &config.aws.region,
            settings.endpoint.as_deref(),
            env.as_ref(),
        )
        .map_err(TelemetryError::from)?;
        let client = KdsClient::new(
            &client_settings,
            StreamRef {
                name: stream.clone(),
                arn: None,
            },
            access.credentials().clone(),
            access.skew().clone(),
        )
        .map_err(|e| TelemetryStartError::Client(e.to_string()))?;
        let spool_dir = settings.spool.dir.clone();
        let spool = Spool::open(SpoolConfig::new(
            &spool_dir,
            u64::from(settings.spool.max_mb) * MIB,
        ))
        .map_err(TelemetryError::from)?;
        let spool = SharedSpool::new(spool);
        let dead_letters = DeadLetterFile::open(dead_letter_path(&spool_dir), DEAD_LETTER_BYTES)
            .map_err(TelemetryError::from)?;
        let mut producer_config = ProducerConfig::default();
        producer_config.limits.aggregation = settings.aggregation;
        producer_config.limits.max_request_bytes = settings.max_request_bytes as usize;
        producer_config.strict_ordering = settings.strict_ordering;
        let producer = ProducerTask::new(
            client,
            spool.clone(),
            dead_letters,
            producer_config,
            DriverSettings {
                drain_timeout: Duration::from_secs(u64::from(config.service.shutdown_timeout_s))
                    .min(MAX_DRAIN),
                ..DriverSettings::default()
            },
        )?;

        let device = device_id(config);
        let template = key_template(&settings.partition_key);
        let mut collector_settings = CollectorSettings::new(
            device.clone(),
            cameras
                .first()
                .map(|c| c.buffer_dir.clone())
                .unwrap_or_else(|| PathBuf::from("/")),
        );
        collector_settings.device_key_template = template.clone();
        collector_settings.camera_key_template = template;
        let mut collector = Collector::new(collector_settings);
        let feeds: Vec<(CameraStatus, Arc<CameraCounters>)> = cameras
            .iter()
            .map(|camera| {
                let counters = Arc::new(CameraCounters::default());
                collector.add_camera(camera.camera.clone(), Arc::clone(&counters));
                (camera.clone(), counters)
            })
            .collect();

        // Two signals: the producer stops only once the last sample is spooled.
        let (stop_collecting, stop_rx) = watch::channel(false);
        let (stop_producing, mut producer_stop) = watch::channel(false);
        let producer = tokio::spawn(producer.run(async move {
            let _ = producer_stop.wait_for(|stop| *stop).await;
        }));
        let interval = Duration::from_secs(u64::from(settings.interval_s.max(1)));
        let collector = tokio::spawn(collect_loop(collector, feeds, spool, interval, stop_rx));
        tracing::info!(%stream, device_id = %device, ?interval, "telemetry started");
        Ok(Some(Self {
            stop_collecting,
            stop_producing,
            collector,
            producer,
        }))
    }

    /// Takes a last sample, then lets the producer drain until `deadline` (the daemon's
    /// shutdown deadline; at least [`MIN_DRAIN`] from now). What is not sent by then stays in
    /// the spool for the next start.
    pub async fn stop(self, deadline: Instant) {
        self.stop_collecting.send_replace(true);
        if self.collector.await.is_err() {
            tracing::error!("the telemetry collector task failed");
        }
        self.stop_producing.send_replace(true);
        let until = deadline.max(Instant::now() + MIN_DRAIN);
        let abort = self.producer.abort_handle();
        let joined = tokio::time::timeout_at(until.into(), self.producer).await;
        let Ok(joined) = joined else {
            // As after a crash: the spool keeps every record not yet acknowledged.
            abort.abort();
            tracing::warn!(
                "telemetry producer cut at the shutdown deadline; the rest stays in the spool"
            );
            return;
        };
        match joined {
            Ok(Ok(stats)) => tracing::info!(
                delivered = stats.records_delivered,
                requests = stats.requests,
                "telemetry stopped"
            ),
            Ok(Err(error)) => tracing::error!(%error, "telemetry producer failed"),
            Err(_) => tracing::error!("the telemetry producer task failed"),
        }
    }
}

fn dead_letter_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("dead-letters.jsonl")
}

async fn collect_loop(
    mut collector: Collector,
    feeds: Vec<(CameraStatus, Arc<CameraCounters>)>,
    spool: SharedSpool,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        let mut streaming = false;
        for (camera, counters) in &feeds {
            streaming |= refresh(camera, counters);
        }
        match collector.collect(Instant::now(), unix_ms_now(), Some(streaming)) {
            Ok(records) => {
                for record in &records {
                    if let Err(error) = spool.enqueue(record) {
                        tracing::warn!(%error, "telemetry record not spooled");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "telemetry collection failed"),
        }
        if last {
            return;
        }
    }
}

/// Copies one camera's live counters into the collector's; returns whether its uploader is
/// streaming (the service answers).
fn refresh(camera: &CameraStatus, counters: &CameraCounters) -> bool {
    let set = |counter: &std::sync::atomic::AtomicU64, value: u64| {
        counter.store(value, Ordering::Relaxed);
    };
    let buffer = camera.buffer.stats();
    let upload = camera.upload.snapshot();
    set(&counters.frames_captured, camera.health.frames());
    set(&counters.bytes_captured, camera.health.bytes());
    set(&counters.frames_dropped, camera.health.frames_dropped());
    set(&counters.fragments_buffered, buffer.fragments_buffered);
    set(&counters.fragments_sent, upload.fragments_sent);
    set(&counters.fragments_persisted, upload.fragments_acked);
    set(&counters.fragments_evicted, buffer.fragments_evicted);
    set(&counters.buffer_bytes_memory, buffer.bytes_in_memory);
    set(&counters.buffer_bytes_disk, buffer.bytes_on_disk);
    // From the log's own age (wall clock minus first PTS), so relative timecodes report
    // the same as absolute ones.
    set(
        &counters.oldest_unacked_unix_ms,
        buffer.oldest_unacked.as_ref().map_or(0, |oldest| {
            unix_ms_now()
                .saturating_sub(oldest.age.as_millis() as u64)
                .max(1)
        }),
    );
    set(
        &counters.last_ack_latency_ms,
        camera.upload.last_ack_latency_ms(),
    );
    set(&counters.error_acks, camera.upload.error_acks());
    let behind = buffer
        .oldest_unacked
        .is_some_and(|oldest| oldest.age > CATCHING_UP_AFTER);
    let state = match camera.upload.state() {
        StateKind::Streaming | StateKind::Draining if behind => UploadState::CatchingUp,
        StateKind::Streaming | StateKind::Draining => UploadState::Streaming,
        StateKind::Describe
        | StateKind::Create
        | StateKind::Tag
        | StateKind::GetEndpoint
        | StateKind::Connecting => UploadState::Connecting,
        StateKind::Backoff => UploadState::Backoff,
        StateKind::Paused => UploadState::Paused,
        StateKind::Idle | StateKind::Stopped => UploadState::Idle,
    };
    counters.set_upload_state(state);
    matches!(state, UploadState::Streaming | UploadState::CatchingUp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_placeholders_map_onto_the_collector() {
        assert_eq!(key_template("{device_id}/{camera}"), "{device}/{camera}");
        assert_eq!(key_template("site-7/{camera}"), "site-7/{camera}");
    }

    #[test]
    fn dead_letters_do_not_look_like_spool_segments() {
        let path = dead_letter_path(Path::new("/var/lib/kinesis-edge/telemetry"));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(!(name.starts_with("seg-") && name.ends_with(".log")));
    }
}
