//! The running pipeline: appsink callbacks turn samples into [`Frame`]s on a bounded channel,
//! a bus thread turns EOS and errors into events.
//!
//! Invariants (in addition to the module's):
//! - Streaming threads only `try_send`; a full channel drops the frame and counts it. A format
//!   that does not fit is retried before the track's next frame, so it is never skipped.
//! - Payloads are the mapped GStreamer buffers themselves (`Bytes::from_owner`), never copied.
//! - EOS is never sent from a streaming thread: the duration limit posts an application
//!   message and the bus thread sends EOS.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::clock::{DurationLimit, LimitDecision, WallClockAnchor, epoch_ns};
use super::device::SystemDevices;
use super::pipeline::{AUDIO_SINK, GstElementRegistry, VIDEO_SINK, VIDEO_SOURCE, plan_pipeline};
use super::{
    AUDIO_TRACK, AudioSource, CaptureError, CaptureEvent, PipelineSpec, TrackFormat, VIDEO_TRACK,
    VideoSource,
};
use crate::media::{Codec, Frame, NalFormat};

/// Capacity of the event channel [`Capture::start`] returns: a few seconds of 30 fps video
/// plus AAC, so a consumer that stalls briefly loses nothing.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

/// Name of the application message that asks the bus thread to send EOS.
const STOP_MESSAGE: &str = "kinesis-edge-capture-stop";
/// How often the bus thread checks whether the capture is being dropped.
const BUS_POLL: gst::ClockTime = gst::ClockTime::from_mseconds(100);

static GST_INIT: OnceLock<Result<(), String>> = OnceLock::new();

/// Initialises GStreamer once per process.
pub(crate) fn init_gstreamer() -> Result<(), CaptureError> {
    GST_INIT
        .get_or_init(|| gst::init().map_err(|error| error.to_string()))
        .clone()
        .map_err(CaptureError::Init)
}

/// Counters of one track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Frames delivered on the channel.
    pub frames: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Frames dropped because the channel was full.
    pub dropped_channel_full: u64,
    /// Buffers dropped because they had no timestamp, no segment or could not be mapped.
    pub dropped_invalid: u64,
    /// Frames past the spec's duration, not delivered.
    pub trimmed: u64,
    /// PTS (epoch ns) of the last delivered frame; a stall watchdog compares it to now.
    pub last_frame_epoch_ns: Option<u64>,
}

/// Counters of a running capture; `tracks[i]` is track `i`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Indexed by track ([`VIDEO_TRACK`], [`AUDIO_TRACK`]).
    pub tracks: Vec<TrackStats>,
}

#[derive(Debug, Default)]
struct TrackCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
    dropped_channel_full: AtomicU64,
    dropped_invalid: AtomicU64,
    trimmed: AtomicU64,
    /// 0 = no frame yet.
    last_frame_epoch_ns: AtomicU64,
}

impl TrackCounters {
    fn snapshot(&self) -> TrackStats {
        let last = self.last_frame_epoch_ns.load(Ordering::Relaxed);
        TrackStats {
            frames: self.frames.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped_channel_full: self.dropped_channel_full.load(Ordering::Relaxed),
            dropped_invalid: self.dropped_invalid.load(Ordering::Relaxed),
            trimmed: self.trimmed.load(Ordering::Relaxed),
            last_frame_epoch_ns: (last != 0).then_some(last),
        }
    }
}

/// What an error message needs to be explained well.
#[derive(Debug, Clone)]
struct ErrorContext {
    video_source: VideoSource,
    requested_video_caps: String,
    requested_audio_caps: Option<String>,
    device_offer: Option<String>,
}

/// State shared by the streaming threads, the bus thread and the [`Capture`] handle.
struct Shared {
    events: mpsc::Sender<CaptureEvent>,
    tracks: Vec<TrackCounters>,
    anchor: OnceLock<WallClockAnchor>,
    limit: Option<Mutex<DurationLimit>>,
    pipeline: glib::WeakRef<gst::Pipeline>,
    context: ErrorContext,
    shutting_down: AtomicBool,
}

/// A running capture pipeline. Dropping it sets the pipeline to `Null` and joins its bus
/// thread; call [`Capture::stop`] first to let encoders flush.
pub struct Capture {
    pipeline: gst::Pipeline,
    shared: Arc<Shared>,
    description: String,
    bus_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Builds the pipeline for `spec`, starts it, and returns the handle plus the event
    /// channel (capacity [`EVENT_CHANNEL_CAPACITY`]).
    pub fn start(
        spec: &PipelineSpec,
    ) -> Result<(Capture, mpsc::Receiver<CaptureEvent>), CaptureError> {
        init_gstreamer()?;
        let registry = GstElementRegistry::new()?;
        let plan = plan_pipeline(spec, &registry, &SystemDevices)?;
        let parse_error = |message: String| CaptureError::Parse {
            description: plan.description.clone(),
            message,
        };
        let pipeline =
            gst::parse::launch_full(&plan.description, None, gst::ParseFlags::FATAL_ERRORS)
                .map_err(|error| parse_error(error.to_string()))?
                .downcast::<gst::Pipeline>()
                .map_err(|_| parse_error("the description did not produce a pipeline".into()))?;
        pipeline.set_property("name", spec.name.as_str());

        let has_audio = spec.audio.source != AudioSource::None;
        let track_count = if has_audio { 2 } else { 1 };
        let (sender, receiver) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            events: sender,
            tracks: (0..track_count).map(|_| TrackCounters::default()).collect(),
            anchor: OnceLock::new(),
            limit: spec
                .duration
                .map(|duration| Mutex::new(DurationLimit::new(duration, track_count))),
            pipeline: pipeline.downgrade(),
            context: ErrorContext {
                video_source: spec.video.source.clone(),
                requested_video_caps: plan.requested_video_caps.clone(),
                requested_audio_caps: plan.requested_audio_caps.clone(),
                device_offer: plan.device_offer.clone(),
            },
            shutting_down: AtomicBool::new(false),
        });

        install_sink(&pipeline, VIDEO_SINK, VIDEO_TRACK, &shared).map_err(&parse_error)?;
        if has_audio {
            install_sink(&pipeline, AUDIO_SINK, AUDIO_TRACK, &shared).map_err(&parse_error)?;
        }

        let bus = pipeline.bus().ok_or_else(|| CaptureError::Stream {
            element: spec.name.clone(),
            message: "the pipeline has no bus".into(),
            debug: String::new(),
        })?;
        if pipeline.set_state(gst::State::Playing).is_err() {
            let error = bus
                .pop_filtered(&[gst::MessageType::Error])
                .and_then(|message| match message.view() {
                    gst::MessageView::Error(error) => Some(classify_error(
                        &error.error(),
                        error.debug().as_deref(),
                        &source_name(&message),
                        &shared.context,
                        false,
                    )),
                    _ => None,
                })
                .unwrap_or_else(|| CaptureError::Stream {
                    element: spec.name.clone(),
                    message: "the pipeline could not be set to PLAYING".into(),
                    debug: String::new(),
                });
            let _ = pipeline.set_state(gst::State::Null);
            return Err(error);
        }

        let bus_shared = Arc::clone(&shared);
        let bus_pipeline = pipeline.clone();
        let bus_thread = std::thread::Builder::new()
            .name(format!("capture-bus-{}", spec.name))
            .spawn(move || watch_bus(&bus, &bus_pipeline, &bus_shared));
        let bus_thread = match bus_thread {
            Ok(handle) => handle,
            Err(error) => {
                let _ = pipeline.set_state(gst::State::Null);
                return Err(CaptureError::Stream {
                    element: spec.name.clone(),
                    message: "could not start the bus thread".into(),
                    debug: error.to_string(),
                });
            }
        };

        Ok((
            Capture {
                pipeline,
                shared,
                description: plan.description,
                bus_thread: Some(bus_thread),
            },
            receiver,
        ))
    }

    /// Sends EOS into the pipeline: encoders flush, frames already in flight still arrive,
    /// then [`CaptureEvent::Eos`].
    pub fn stop(&self) {
        if !self.pipeline.send_event(gst::event::Eos::new()) {
            tracing::debug!(pipeline = %self.pipeline.name(), "EOS not accepted; the pipeline has already stopped");
        }
    }

    /// The pipeline description as built (for logs and `--verbose`).
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// Frames, bytes and drops per track so far.
    pub fn stats(&self) -> CaptureStats {
        CaptureStats {
            tracks: self
                .shared
                .tracks
                .iter()
                .map(TrackCounters::snapshot)
                .collect(),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        if self.pipeline.set_state(gst::State::Null).is_err() {
            tracing::warn!(pipeline = %self.pipeline.name(), "pipeline did not go to NULL cleanly");
        }
        if let Some(thread) = self.bus_thread.take()
            && thread.join().is_err()
        {
            tracing::warn!(pipeline = %self.pipeline.name(), "capture bus thread panicked");
        }
    }
}

/// Per-appsink state, owned by that sink's callback (one streaming thread at a time).
struct TrackState {
    track: usize,
    caps: Option<gst::Caps>,
    /// The current caps have not been delivered as a Format event yet.
    format_pending: bool,
    /// The current caps could not be understood (reported once; frames are dropped).
    caps_rejected: bool,
}

fn install_sink(
    pipeline: &gst::Pipeline,
    name: &str,
    track: usize,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    let sink = pipeline
        .by_name(name)
        .ok_or_else(|| format!("no element named `{name}`"))?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| format!("element `{name}` is not an appsink"))?;
    let shared = Arc::clone(shared);
    let mut state = TrackState {
        track,
        caps: None,
        format_pending: false,
        caps_rejected: false,
    };
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
                handle_sample(&shared, &mut state, sink, &sample);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(())
}

/// Turns one sample into (maybe) a Format event and a Frame event. Never blocks.
fn handle_sample(
    shared: &Shared,
    state: &mut TrackState,
    sink: &gst_app::AppSink,
    sample: &gst::Sample,
) {
    let Some(counters) = shared.tracks.get(state.track) else {
        return;
    };
    let invalid = || {
        counters.dropped_invalid.fetch_add(1, Ordering::Relaxed);
    };

    if let Some(caps) = sample.caps() {
        let changed = match &state.caps {
            Some(known) => known.as_ptr() != caps.as_ptr() && known.as_ref() != caps,
            None => true,
        };
        if changed {
            state.caps = Some(caps.to_owned());
            state.format_pending = true;
            state.caps_rejected = false;
        }
    }
    if state.caps_rejected {
        return invalid();
    }
    if state.format_pending {
        let Some(caps) = &state.caps else {
            return invalid();
        };
        match track_format(caps) {
            Ok(format) => {
                let event = CaptureEvent::Format {
                    track: state.track,
                    format,
                };
                match shared.events.try_send(event) {
                    Ok(()) => state.format_pending = false,
                    Err(TrySendError::Full(_)) => {
                        // The frame cannot go out before its format; retry with the next one.
                        counters
                            .dropped_channel_full
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(TrySendError::Closed(_)) => return,
                }
            }
            Err(message) => {
                state.caps_rejected = true;
                let _ = shared
                    .events
                    .try_send(CaptureEvent::Error(CaptureError::Stream {
                        element: sink.name().to_string(),
                        message,
                        debug: caps.to_string(),
                    }));
                return invalid();
            }
        }
    }

    let (Some(buffer), Some(segment)) = (
        sample.buffer_owned(),
        sample
            .segment()
            .and_then(|segment| segment.downcast_ref::<gst::ClockTime>()),
    ) else {
        return invalid();
    };
    // Running time, not raw PTS: x264enc's buffers start at 1000 h, audio at 0.
    let Some(pts) = segment.to_running_time(buffer.pts()) else {
        return invalid();
    };
    let dts = buffer
        .dts()
        .and_then(|dts| segment.to_running_time(dts))
        .unwrap_or(pts);
    let anchor = shared.anchor.get_or_init(|| {
        // The pipeline clock read next to SystemTime::now() maps capture time, not the time
        // the first frame left the encoder; the buffer's own time is the fallback.
        let wall = epoch_ns(SystemTime::now());
        let running = shared
            .pipeline
            .upgrade()
            .and_then(|pipeline| pipeline.current_running_time())
            .unwrap_or(pts);
        WallClockAnchor::new(wall, running.nseconds())
    });
    if let Some(limit) = &shared.limit {
        let decision = limit.lock().unwrap_or_else(PoisonError::into_inner).admit(
            state.track,
            pts.nseconds(),
            buffer.duration().map_or(0, gst::ClockTime::nseconds),
        );
        if let LimitDecision::Trim { request_eos } = decision {
            counters.trimmed.fetch_add(1, Ordering::Relaxed);
            if request_eos {
                let stop =
                    gst::message::Application::builder(gst::Structure::new_empty(STOP_MESSAGE))
                        .src(sink)
                        .build();
                if sink.post_message(stop).is_err() {
                    tracing::warn!("could not post the stop request; the pipeline has no bus");
                }
            }
            return;
        }
    }

    let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
    let duration_ns = buffer.duration().map_or(0, gst::ClockTime::nseconds);
    let Ok(mapped) = buffer.into_mapped_buffer_readable() else {
        return invalid();
    };
    let data = Bytes::from_owner(mapped);
    let size = data.len() as u64;
    let pts_ns = anchor.to_epoch_ns(pts.nseconds());
    let frame = Frame {
        track: state.track,
        pts_ns,
        dts_ns: anchor.to_epoch_ns(dts.nseconds()),
        duration_ns,
        key,
        data,
    };
    match shared.events.try_send(CaptureEvent::Frame(frame)) {
        Ok(()) => {
            counters.frames.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(size, Ordering::Relaxed);
            counters
                .last_frame_epoch_ns
                .store(pts_ns, Ordering::Relaxed);
        }
        Err(TrySendError::Full(_)) => {
            counters
                .dropped_channel_full
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Closed(_)) => {}
    }
}

/// The [`TrackFormat`] the caps at an appsink describe.
fn track_format(caps: &gst::CapsRef) -> Result<TrackFormat, String> {
    let structure = caps
        .structure(0)
        .ok_or_else(|| "the appsink received empty caps".to_string())?;
    let int = |field: &str| {
        structure
            .get::<i32>(field)
            .ok()
            .and_then(|value| u32::try_from(value).ok())
            .unwrap_or(0)
    };
    let codec_data = structure
        .get::<gst::Buffer>("codec_data")
        .ok()
        .and_then(|buffer| buffer.into_mapped_buffer_readable().ok())
        .map(Bytes::from_owner);
    let name = structure.name().as_str();
    match name {
        "video/x-h264" | "video/x-h265" => {
            let length_prefixed = matches!(
                structure.get::<&str>("stream-format"),
                Ok("avc" | "avc3" | "hvc1" | "hev1")
            );
            let framerate = structure
                .get::<gst::Fraction>("framerate")
                .map_or((0, 1), |rate| (rate.numer(), rate.denom()));
            Ok(TrackFormat {
                codec: if name == "video/x-h264" {
                    Codec::H264
                } else {
                    Codec::H265
                },
                nal_format: if length_prefixed {
                    NalFormat::LengthPrefixed
                } else {
                    NalFormat::AnnexB
                },
                codec_data,
                width: int("width"),
                height: int("height"),
                framerate,
                sample_rate: 0,
                channels: 0,
            })
        }
        "audio/mpeg" => Ok(TrackFormat {
            codec: Codec::Aac,
            nal_format: NalFormat::LengthPrefixed,
            codec_data,
            width: 0,
            height: 0,
            framerate: (0, 1),
            sample_rate: int("rate"),
            channels: u8::try_from(int("channels")).unwrap_or(0),
        }),
        other => Err(format!("unexpected stream type {other} at the appsink")),
    }
}

/// Forwards bus messages as events until EOS, an error, or the capture is dropped.
fn watch_bus(bus: &gst::Bus, pipeline: &gst::Pipeline, shared: &Shared) {
    while !shared.shutting_down.load(Ordering::Relaxed) {
        let Some(message) = bus.timed_pop(BUS_POLL) else {
            continue;
        };
        match message.view() {
            gst::MessageView::Eos(_) => {
                deliver(shared, CaptureEvent::Eos);
                return;
            }
            gst::MessageView::Error(error) => {
                let error = classify_error(
                    &error.error(),
                    error.debug().as_deref(),
                    &source_name(&message),
                    &shared.context,
                    true,
                );
                tracing::error!(%error, "capture pipeline failed");
                deliver(shared, CaptureEvent::Error(error));
                return;
            }
            gst::MessageView::Warning(warning) => {
                tracing::warn!(
                    element = %source_name(&message),
                    warning = %warning.error(),
                    debug = warning.debug().as_deref().unwrap_or(""),
                    "capture pipeline warning"
                );
            }
            gst::MessageView::Application(application) => {
                let stop_requested = application
                    .structure()
                    .is_some_and(|structure| structure.name() == STOP_MESSAGE);
                if stop_requested && !pipeline.send_event(gst::event::Eos::new()) {
                    tracing::debug!("EOS after the duration limit was not accepted");
                }
            }
            gst::MessageView::Latency(_) => {
                if let Err(error) = pipeline.recalculate_latency() {
                    tracing::debug!(%error, "latency recalculation failed");
                }
            }
            _ => {}
        }
    }
}

/// Sends an event that must not be lost (EOS, errors): waits for room, gives up only when
/// the receiver is gone or the capture is being dropped.
fn deliver(shared: &Shared, mut event: CaptureEvent) {
    loop {
        match shared.events.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(returned)) => {
                if shared.shutting_down.load(Ordering::Relaxed) {
                    return;
                }
                event = returned;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn source_name(message: &gst::Message) -> String {
    message.src().map_or_else(
        || "pipeline".to_string(),
        |source| source.name().to_string(),
    )
}

/// Maps a GStreamer error message to the most specific [`CaptureError`].
fn classify_error(
    error: &glib::Error,
    debug: Option<&str>,
    element: &str,
    context: &ErrorContext,
    running: bool,
) -> CaptureError {
    let debug = debug.unwrap_or_default();
    if debug.contains("not-negotiated") || error.matches(gst::StreamError::Format) {
        // Elements of the audio branch are all named `audio-*`.
        let (requested, offered) = match &context.requested_audio_caps {
            Some(audio_caps) if element.starts_with("audio") => (audio_caps.clone(), None),
            _ => (
                context.requested_video_caps.clone(),
                context.device_offer.clone(),
            ),
        };
        return CaptureError::NotNegotiated {
            element: element.to_string(),
            requested,
            offered,
        };
    }
    if element == VIDEO_SOURCE
        && let VideoSource::Device(path) = &context.video_source
        && error.is::<gst::ResourceError>()
    {
        if error.matches(gst::ResourceError::NotFound) && !running {
            return CaptureError::DeviceNotFound { path: path.clone() };
        }
        if running {
            return CaptureError::DeviceLost {
                path: path.clone(),
                element: element.to_string(),
                message: error.message().to_string(),
            };
        }
    }
    CaptureError::Stream {
        element: element.to_string(),
        message: error.message().to_string(),
        debug: debug.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(source: VideoSource) -> ErrorContext {
        ErrorContext {
            video_source: source,
            requested_video_caps: "video/x-raw,width=1280,height=720,framerate=30/1".into(),
            requested_audio_caps: Some("audio/x-raw,rate=48000,channels=1".into()),
            device_offer: Some("YUYV 640x480".into()),
        }
    }

    #[test]
    fn not_negotiated_names_requested_and_offered_caps() {
        let error = glib::Error::new(gst::StreamError::Failed, "Internal data stream error.");
        let classified = classify_error(
            &error,
            Some("streaming stopped, reason not-negotiated (-4)"),
            VIDEO_SOURCE,
            &context(VideoSource::Device("/dev/video0".into())),
            true,
        );
        let message = classified.to_string();
        assert!(matches!(classified, CaptureError::NotNegotiated { .. }));
        assert!(message.contains("width=1280,height=720"), "{message}");
        assert!(
            message.contains("the device offers YUYV 640x480"),
            "{message}"
        );
    }

    #[test]
    fn device_read_failure_while_running_is_device_lost() {
        let error = glib::Error::new(gst::ResourceError::Read, "Could not read from resource.");
        let classified = classify_error(
            &error,
            None,
            VIDEO_SOURCE,
            &context(VideoSource::Device("/dev/v4l/by-id/cam".into())),
            true,
        );
        assert!(
            matches!(&classified, CaptureError::DeviceLost { path, .. } if path.ends_with("cam"))
        );
    }

    #[test]
    fn device_missing_at_start_is_device_not_found() {
        let error = glib::Error::new(gst::ResourceError::NotFound, "Cannot identify device.");
        let classified = classify_error(
            &error,
            None,
            VIDEO_SOURCE,
            &context(VideoSource::Device("/dev/video0".into())),
            false,
        );
        assert!(classified.to_string().contains("kinesis-edge devices"));
    }

    #[test]
    fn other_errors_keep_element_and_debug() {
        let error = glib::Error::new(gst::CoreError::Failed, "boom");
        let classified = classify_error(
            &error,
            Some("details"),
            "audio-encoder",
            &context(VideoSource::Test),
            true,
        );
        assert_eq!(classified.to_string(), "audio-encoder: boom (details)");
    }

    #[test]
    fn handles_and_events_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Capture>();
        send_sync::<CaptureEvent>();
        send_sync::<CaptureError>();
    }

    #[test]
    fn caps_become_track_formats() {
        init_gstreamer().expect("gstreamer");
        let video = gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("width", 320i32)
            .field("height", 240i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        let format = track_format(&video).expect("h264");
        assert_eq!(format.codec, Codec::H264);
        assert_eq!(format.nal_format, NalFormat::AnnexB);
        assert_eq!(
            (format.width, format.height, format.framerate),
            (320, 240, (30, 1))
        );
        assert_eq!(format.codec_data, None);

        let asc = gst::Buffer::from_slice([0x11u8, 0x88]);
        let audio = gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("rate", 48_000i32)
            .field("channels", 1i32)
            .field("codec_data", asc)
            .build();
        let format = track_format(&audio).expect("aac");
        assert_eq!(format.codec, Codec::Aac);
        assert_eq!((format.sample_rate, format.channels), (48_000, 1));
        assert_eq!(format.codec_data.as_deref(), Some(&[0x11u8, 0x88][..]));

        let raw = gst::Caps::builder("video/x-raw").build();
        assert!(track_format(&raw).is_err());
    }
}
