//! One camera's capture → muxer → fragment log loop, on its own thread (the muxer does
//! per-frame work that must never hold up the tokio workers).
//!
//! The loop restarts the pipeline when it fails, stalls (no event for [`STALL_TIMEOUT`]) or
//! ends by itself, with a backoff from 1 s to 30 s; each restart closes the open fragment and
//! starts a new muxer session (a new stream header), so the uploader opens a new connection for
//! it. A format change mid-stream does the same.
//!
//! Invariants:
//! - every frame the muxer accepts ends up in a closed fragment of the log, or in the fragment
//!   open when the process dies;
//! - on stop the pipeline gets EOS, the open fragment is closed, the writer waits for the disk
//!   and is dropped (the uploader then sees the end of the log);
//! - [`CameraHealth`] is updated on every event and every wake-up, so a thread that hangs is
//!   visible to the watchdog.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use super::camera;
use crate::buffer::FragmentWriter;
use crate::capture::{Capture, CaptureError, CaptureEvent, TrackFormat};
use crate::config::CameraConfig;
use crate::media::Frame;
use crate::mkv::{FragmentMuxer, FragmentTags, MuxError, MuxStats};

/// No event from a running pipeline for this long is a stall: the pipeline is restarted.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a stop, how long to wait for the pipeline's EOS before giving up on it.
const EOS_WAIT: Duration = Duration::from_secs(5);
/// Frames held while waiting for every track's format (as in `record`).
const MAX_FRAMES_BEFORE_FORMATS: usize = 1024;
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where a camera's loop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CameraState {
    /// Building or starting the pipeline.
    Starting = 0,
    /// The pipeline runs.
    Streaming = 1,
    /// The pipeline failed; waiting before the next start.
    Retrying = 2,
    /// The loop has ended.
    Stopped = 3,
}

/// Liveness of one camera's loop, shared with the watchdog.
#[derive(Debug)]
pub struct CameraHealth {
    origin: Instant,
    state: AtomicU8,
    /// ms since `origin` (+1, 0 = never).
    last_frame: AtomicU64,
    heartbeat: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    frames_dropped: AtomicU64,
}

impl Default for CameraHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl CameraHealth {
    /// A camera that is starting.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            state: AtomicU8::new(CameraState::Starting as u8),
            last_frame: AtomicU64::new(0),
            heartbeat: AtomicU64::new(1),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX - 1)
            + 1
    }

    fn age(&self, stamp: u64, now: Instant) -> Option<Duration> {
        (stamp != 0).then(|| Duration::from_millis(self.stamp(now).saturating_sub(stamp)))
    }

    fn beat(&self) {
        self.heartbeat
            .store(self.stamp(Instant::now()), Ordering::Relaxed);
    }

    fn frame(&self, bytes: usize) {
        let now = self.stamp(Instant::now());
        self.last_frame.store(now, Ordering::Relaxed);
        self.heartbeat.store(now, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn dropped(&self, frames: u64) {
        self.frames_dropped.fetch_add(frames, Ordering::Relaxed);
    }

    /// Frames taken from the pipelines so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Payload bytes taken from the pipelines so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Frames dropped before the buffer (capture channel full, refused by the muxer).
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped.load(Ordering::Relaxed)
    }

    fn set_state(&self, state: CameraState) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.beat();
    }

    /// The loop's state.
    pub fn state(&self) -> CameraState {
        match self.state.load(Ordering::Relaxed) {
            0 => CameraState::Starting,
            1 => CameraState::Streaming,
            2 => CameraState::Retrying,
            _ => CameraState::Stopped,
        }
    }

    /// Time since the last frame, if any came.
    pub fn since_last_frame(&self, now: Instant) -> Option<Duration> {
        self.age(self.last_frame.load(Ordering::Relaxed), now)
    }

    /// Whether the loop is alive at `now`: it woke within `limit`, and if it says it is
    /// streaming, a frame came within `limit`. (A pipeline that stops delivering is restarted
    /// by the loop after [`STALL_TIMEOUT`]; only a hung loop fails this.)
    pub fn is_alive(&self, now: Instant, limit: Duration) -> bool {
        let beat_ok = self
            .age(self.heartbeat.load(Ordering::Relaxed), now)
            .is_some_and(|age| age <= limit);
        let frames_ok = match self.state() {
            CameraState::Streaming => self.since_last_frame(now).is_none_or(|age| age <= limit),
            CameraState::Starting | CameraState::Retrying | CameraState::Stopped => true,
        };
        beat_ok && frames_ok
    }
}

/// Stops a camera's loop from another thread.
#[derive(Debug)]
pub struct CaptureControl {
    stop: watch::Sender<bool>,
    current: Mutex<Option<Arc<Capture>>>,
}

impl Default for CaptureControl {
    fn default() -> Self {
        Self::new()
    }
}

impl CaptureControl {
    /// A control that has not stopped.
    pub fn new() -> Self {
        Self {
            stop: watch::Sender::new(false),
            current: Mutex::new(None),
        }
    }

    /// Ask the loop to stop: EOS into the running pipeline, no restart.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        if let Some(capture) = self.lock().as_ref() {
            capture.stop();
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Capture>>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_current(&self, capture: Option<Arc<Capture>>) {
        *self.lock() = capture;
    }
}

/// What a camera's loop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureSummary {
    /// Muxer counters summed over every pipeline run.
    pub frames_in: u64,
    /// Frames written into fragments.
    pub frames_muxed: u64,
    /// Fragments closed.
    pub fragments: u64,
    /// Frames the muxer dropped (before the first key frame, out of order, invalid, late).
    pub frames_dropped: u64,
    /// Frames capture dropped because the muxer fell behind.
    pub frames_dropped_by_capture: u64,
    /// Pipeline (re)starts.
    pub pipeline_starts: u64,
    /// Pipeline failures, stalls and unexpected ends.
    pub pipeline_failures: u64,
}

impl CaptureSummary {
    fn add_muxer(&mut self, stats: &MuxStats) {
        self.frames_in += stats.frames_in;
        self.frames_muxed += stats.frames_out;
        self.fragments += stats.fragments;
        self.frames_dropped += stats.dropped_before_key_frame
            + stats.dropped_out_of_order
            + stats.dropped_late
            + stats.dropped_invalid
            + stats.dropped_timecode_overflow;
    }
}

/// How one pipeline run ended.
enum RunEnd {
    /// EOS after a stop request.
    Stopped,
    /// EOS without a stop request (a file source, a device that went away cleanly).
    Ended,
    /// The pipeline reported an error.
    Failed(CaptureError),
    /// No event for [`STALL_TIMEOUT`].
    Stalled,
    /// The muxer or the log refused data for good.
    MuxFailed(MuxError),
    /// Tracks never reported their format.
    NoFormat { track: usize, frames: usize },
}

/// Everything the camera thread owns.
pub struct CameraLoop {
    camera: CameraConfig,
    tags: FragmentTags,
    writer: FragmentWriter,
    control: Arc<CaptureControl>,
    health: Arc<CameraHealth>,
    runtime: Handle,
    summary: CaptureSummary,
}

impl CameraLoop {
    /// A loop for `camera` writing into `writer`; `runtime` drives its timers.
    pub fn new(
        camera: CameraConfig,
        tags: FragmentTags,
        writer: FragmentWriter,
        control: Arc<CaptureControl>,
        health: Arc<CameraHealth>,
        runtime: Handle,
    ) -> Self {
        Self {
            camera,
            tags,
            writer,
            control,
            health,
            runtime,
            summary: CaptureSummary::default(),
        }
    }

    /// Runs until stopped. `started` gets the outcome of the first pipeline start (the daemon
    /// reports readiness once every camera has tried). Blocks: call it on its own thread.
    pub fn run(mut self, started: oneshot::Sender<Result<(), String>>) -> CaptureSummary {
        let name = self.camera.name.clone();
        let mut started = Some(started);
        let mut backoff = RESTART_BACKOFF_MIN;
        let mut stop = self.control.stop.subscribe();
        while !self.control.stopped() {
            self.health.set_state(CameraState::Starting);
            let spec = camera::pipeline_spec(&self.camera, None);
            self.summary.pipeline_starts += 1;
            let end = match Capture::start(&spec) {
                Ok((capture, events)) => {
                    tracing::info!(camera = %name, pipeline = %capture.describe(), "capture started");
                    if let Some(started) = started.take() {
                        let _ = started.send(Ok(()));
                    }
                    let capture = Arc::new(capture);
                    self.control.set_current(Some(Arc::clone(&capture)));
                    if self.control.stopped() {
                        capture.stop();
                    }
                    self.health.set_state(CameraState::Streaming);
                    let (end, frames) = self.pump(events, &mut stop);
                    let dropped = capture
                        .stats()
                        .tracks
                        .iter()
                        .map(|t| t.dropped_channel_full)
                        .sum::<u64>();
                    self.summary.frames_dropped_by_capture += dropped;
                    self.health.dropped(dropped);
                    self.control.set_current(None);
                    // Dropping the last handle sets the pipeline to NULL.
                    drop(capture);
                    if frames > 0 {
                        backoff = RESTART_BACKOFF_MIN;
                    }
                    end
                }
                Err(error) => {
                    if let Some(started) = started.take() {
                        let _ = started.send(Err(error.to_string()));
                    }
                    RunEnd::Failed(error)
                }
            };
            let reason = match end {
                RunEnd::Stopped => break,
                RunEnd::Ended => "the pipeline ended by itself".to_owned(),
                RunEnd::Failed(error) => error.to_string(),
                RunEnd::Stalled => format!("no frame for {STALL_TIMEOUT:?}"),
                RunEnd::MuxFailed(error) => format!("muxing failed: {error}"),
                RunEnd::NoFormat { track, frames } => {
                    format!("{frames} frames arrived but track {track} never reported its format")
                }
            };
            if self.control.stopped() {
                break;
            }
            self.summary.pipeline_failures += 1;
            self.health.set_state(CameraState::Retrying);
            tracing::error!(camera = %name, %reason, retry_in = ?backoff, "capture failed; restarting");
            self.wait_interruptibly(backoff, &mut stop);
            backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        }
        if let Some(started) = started.take() {
            let _ = started.send(Err("stopped before the pipeline started".into()));
        }
        if let Err(error) = self.writer.sync() {
            tracing::error!(camera = %name, %error, "buffered fragments may not all be on disk");
        }
        self.health.set_state(CameraState::Stopped);
        self.summary
    }

    fn wait_interruptibly(&self, delay: Duration, stop: &mut watch::Receiver<bool>) {
        self.runtime.block_on(async {
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => return,
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Feeds one pipeline's events to a muxer until the pipeline ends; returns how it ended and
    /// how many frames it delivered.
    fn pump(
        &mut self,
        mut events: mpsc::Receiver<CaptureEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> (RunEnd, u64) {
        let tracks = camera::track_count(&self.camera);
        let mut formats: Vec<Option<TrackFormat>> = vec![None; tracks];
        let mut waiting: Vec<Frame> = Vec::new();
        let mut muxer: Option<FragmentMuxer> = None;
        let mut frames = 0u64;
        let mut stop_seen_at: Option<Instant> = None;
        let end = loop {
            let timeout = match stop_seen_at {
                Some(at) => EOS_WAIT.saturating_sub(at.elapsed()),
                None => STALL_TIMEOUT,
            };
            let next = self.runtime.block_on(async {
                tokio::select! {
                    event = tokio::time::timeout(timeout, events.recv()) => Some(event),
                    changed = stop.changed(), if stop_seen_at.is_none() => {
                        // A closed control means the daemon is going away: stop too.
                        let _ = changed;
                        None
                    }
                }
            });
            self.health.beat();
            let event = match next {
                None => {
                    if *stop.borrow() || stop_seen_at.is_none() {
                        stop_seen_at = Some(Instant::now());
                    }
                    continue;
                }
                Some(Err(_elapsed)) if stop_seen_at.is_some() => {
                    tracing::warn!(camera = %self.camera.name, "no EOS after the stop; closing the fragment anyway");
                    break RunEnd::Stopped;
                }
                Some(Err(_elapsed)) => break RunEnd::Stalled,
                Some(Ok(None)) => break RunEnd::Ended,
                Some(Ok(Some(event))) => event,
            };
            match event {
                CaptureEvent::Format { track, format } => {
                    let changed = formats
                        .get(track)
                        .is_some_and(|known| known.as_ref().is_some_and(|f| *f != format));
                    if changed && let Some(mut old) = muxer.take() {
                        tracing::info!(camera = %self.camera.name, track, ?format, "format changed: starting a new stream session");
                        if let Err(error) = old.finish(&mut self.writer) {
                            tracing::warn!(camera = %self.camera.name, %error, "closing the fragment before the format change failed");
                        }
                        self.summary.add_muxer(&old.stats());
                    }
                    if let Some(slot) = formats.get_mut(track) {
                        *slot = Some(format);
                    }
                }
                CaptureEvent::Frame(frame) => {
                    frames += 1;
                    self.health.frame(frame.data.len());
                    if let Some(muxer) = muxer.as_mut() {
                        match push(muxer, frame, &mut self.writer) {
                            Ok(true) => {}
                            Ok(false) => self.health.dropped(1),
                            Err(error) => break RunEnd::MuxFailed(error),
                        }
                        continue;
                    }
                    waiting.push(frame);
                    if let Some(ready) = formats.iter().cloned().collect::<Option<Vec<_>>>() {
                        let config = camera::muxer_config(&self.camera, &ready);
                        let mut created = match FragmentMuxer::new(config, self.tags.clone()) {
                            Ok(created) => created,
                            Err(error) => break RunEnd::MuxFailed(error),
                        };
                        let mut failed = None;
                        for frame in waiting.drain(..) {
                            match push(&mut created, frame, &mut self.writer) {
                                Ok(true) => {}
                                Ok(false) => self.health.dropped(1),
                                Err(error) => {
                                    failed = Some(error);
                                    break;
                                }
                            }
                        }
                        muxer = Some(created);
                        if let Some(error) = failed {
                            break RunEnd::MuxFailed(error);
                        }
                    } else if waiting.len() >= MAX_FRAMES_BEFORE_FORMATS {
                        let track = formats.iter().position(Option::is_none).unwrap_or(0);
                        break RunEnd::NoFormat {
                            track,
                            frames: waiting.len(),
                        };
                    }
                }
                CaptureEvent::Eos => {
                    break if stop_seen_at.is_some() || *stop.borrow() {
                        RunEnd::Stopped
                    } else {
                        RunEnd::Ended
                    };
                }
                CaptureEvent::Error(error) => break RunEnd::Failed(error),
            }
        };
        if let Some(mut muxer) = muxer {
            // Closes the open fragment: every accepted frame is in a closed fragment.
            if let Err(error) = muxer.finish(&mut self.writer) {
                tracing::warn!(camera = %self.camera.name, %error, "closing the last fragment failed");
            }
            let stats = muxer.stats();
            tracing::info!(camera = %self.camera.name, ?stats, "muxer session finished");
            self.summary.add_muxer(&stats);
        }
        (end, frames)
    }
}

/// Pushes a frame: `Ok(false)` when a frame error dropped a frame (logged, counted by the
/// muxer); any other error is returned.
fn push(
    muxer: &mut FragmentMuxer,
    frame: Frame,
    writer: &mut FragmentWriter,
) -> Result<bool, MuxError> {
    match muxer.push(frame, writer) {
        Ok(()) => Ok(true),
        Err(error) if error.is_frame_error() => {
            tracing::debug!(%error, "frame dropped by the muxer");
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streaming_camera_without_frames_is_not_alive() {
        let health = CameraHealth::new();
        let limit = Duration::from_secs(20);
        let now = Instant::now();
        assert!(health.is_alive(now, limit), "starting");
        health.set_state(CameraState::Streaming);
        health.frame(100);
        assert_eq!((health.frames(), health.bytes()), (1, 100));
        assert!(health.is_alive(Instant::now(), limit));
        let later = Instant::now() + Duration::from_secs(30);
        assert!(
            !health.is_alive(later, limit),
            "no frame and no heartbeat for 30 s"
        );
        health.set_state(CameraState::Retrying);
        assert!(!health.is_alive(later, limit), "the heartbeat is old too");
        assert!(
            health.is_alive(Instant::now(), limit),
            "retrying with a fresh heartbeat"
        );
    }

    #[test]
    fn stop_before_start_is_remembered() {
        let control = CaptureControl::new();
        assert!(!control.stopped());
        control.stop();
        assert!(control.stopped());
    }
}
