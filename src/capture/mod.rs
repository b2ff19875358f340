//! `capture`: GStreamer pipelines that turn a camera (or a test source) into timestamped
//! [`Frame`](crate::media::Frame)s, plus V4L2 device discovery.
//!
//! The module knows nothing of Matroska or AWS: it hands the muxer H.264 access units
//! (Annex-B byte stream, SPS/PPS before every IDR) and raw AAC frames, each stamped in
//! nanoseconds since the Unix epoch.
//!
//! Invariants:
//! - A [`CaptureEvent::Format`] for a track is always delivered before that track's first
//!   [`CaptureEvent::Frame`], and again whenever its caps change.
//! - Timestamps are pipeline *running time* (never raw buffer PTS) mapped to wall-clock time
//!   through one anchor taken at the pipeline's first buffer, shared by all tracks so audio and
//!   video stay aligned. Per track, PTS never goes backwards for an encoder without B-frames.
//! - The streaming threads never block on the consumer: a frame that does not fit the bounded
//!   event channel is dropped and counted in [`CaptureStats`].
//! - [`CaptureEvent::Eos`] is the last event of a pipeline that ended normally.
//!
//! Layout: [`pipeline`] builds the `gst-launch` description (pure, tested with fake registries),
//! [`clock`] holds the running-time → epoch mapping and the duration limit (pure), [`device`] is
//! V4L2 discovery, and `live` runs the pipeline and feeds the channel.

#![warn(missing_docs)]

pub mod clock;
pub mod device;
mod live;
pub mod pipeline;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::media::{Codec, Frame, NalFormat};

pub use device::{
    DeviceInfo, FormatInfo, FrameIntervalInfo, FrameSizeInfo, SystemDevices, list_devices,
    probe_device,
};
pub use live::{Capture, CaptureStats, EVENT_CHANNEL_CAPACITY, TrackStats};
pub use pipeline::{
    DeviceProbe, ElementRegistry, GstElementRegistry, build_pipeline_description, debian_package,
};

/// Track index of the video track in every [`Frame`] capture produces.
pub const VIDEO_TRACK: usize = 0;
/// Track index of the audio track (present only when audio is enabled).
pub const AUDIO_TRACK: usize = 1;

/// Where the video comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSource {
    /// `videotestsrc`: a moving ball with the running time drawn on it when `timeoverlay` exists.
    Test,
    /// A V4L2 device node (`/dev/video0`, or better a stable `/dev/v4l/by-id/...` link).
    Device(PathBuf),
}

/// Which H.264 encoder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderChoice {
    /// Passthrough if the camera emits H.264, else a hardware encoder if present, else x264.
    Auto,
    /// The camera's own H.264 stream, unchanged (bitrate and GOP are the camera's).
    Passthrough,
    /// `v4l2h264enc` (Raspberry Pi) or `nvv4l2h264enc` (Jetson).
    Hardware,
    /// The `x264enc` software encoder.
    X264,
}

impl EncoderChoice {
    /// The name used in configuration and error messages.
    pub fn name(self) -> &'static str {
        match self {
            EncoderChoice::Auto => "auto",
            EncoderChoice::Passthrough => "passthrough",
            EncoderChoice::Hardware => "hardware",
            EncoderChoice::X264 => "x264",
        }
    }
}

/// What to capture for the video track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoSpec {
    /// Camera or test pattern.
    pub source: VideoSource,
    /// How to get H.264 out of the source.
    pub encoder: EncoderChoice,
    /// Frame width in pixels (even, 16–8192); asked of the camera.
    pub width: u32,
    /// Frame height in pixels (even, 16–8192); asked of the camera.
    pub height: u32,
    /// Frames per second (integer rates only).
    pub framerate: u32,
    /// Target bitrate of the encoder; ignored for passthrough.
    pub bitrate_kbps: u32,
    /// Distance between key frames, in frames; ignored for passthrough.
    pub key_frame_interval_frames: u32,
}

/// Where the audio comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// No audio track.
    None,
    /// `audiotestsrc`: a 440 Hz sine tone.
    Test,
    /// `alsasrc` with an ALSA device name.
    Alsa {
        /// ALSA PCM name such as `hw:1,0` or `default`.
        device: String,
    },
}

/// What to capture for the audio track (AAC-LC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSpec {
    /// Microphone, test tone, or no audio track.
    pub source: AudioSource,
    /// Sample rate in Hz (8000–96000) the source is resampled to.
    pub sample_rate: u32,
    /// Channel count (1–8) the source is mixed to.
    pub channels: u8,
    /// AAC bitrate (8–1024 kbit/s).
    pub bitrate_kbps: u32,
}

/// Everything [`Capture::start`] needs; the service maps its configuration onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSpec {
    /// Name of the GStreamer pipeline (shows in GStreamer logs and errors).
    pub name: String,
    /// The video track (always present, track [`VIDEO_TRACK`]).
    pub video: VideoSpec,
    /// The audio track (track [`AUDIO_TRACK`] unless [`AudioSource::None`]).
    pub audio: AudioSpec,
    /// Stop with EOS after this much media time (the `record` command); `None` runs until
    /// [`Capture::stop`].
    pub duration: Option<Duration>,
}

/// The stream format of one track, from the caps at the appsink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackFormat {
    /// H.264 for video (H.265 if a passthrough camera ever sends it), AAC for audio.
    pub codec: Codec,
    /// Video: how NAL units are delimited in [`Frame::data`] (Annex-B for capture's H.264).
    /// Audio carries no NAL units; it reports `LengthPrefixed`, meaning "store the payload as
    /// it is, there are no start codes to convert".
    pub nal_format: NalFormat,
    /// `codec_data` from the caps: the AudioSpecificConfig for AAC; `None` for Annex-B video,
    /// whose SPS/PPS travel in band before every key frame.
    pub codec_data: Option<Bytes>,
    /// Video width in pixels; 0 for audio or when the caps do not say.
    pub width: u32,
    /// Video height in pixels; 0 for audio or when the caps do not say.
    pub height: u32,
    /// Video frame rate as a fraction; (0, 1) for audio or variable rate.
    pub framerate: (i32, i32),
    /// Audio sample rate in Hz; 0 for video.
    pub sample_rate: u32,
    /// Audio channel count; 0 for video.
    pub channels: u8,
}

/// What a running [`Capture`] delivers on its channel.
#[derive(Debug)]
pub enum CaptureEvent {
    /// The format of `track`; always before that track's first frame and again if caps change.
    Format {
        /// [`VIDEO_TRACK`] or [`AUDIO_TRACK`].
        track: usize,
        /// What the track's frames contain.
        format: TrackFormat,
    },
    /// One access unit (video) or AAC frame (audio).
    Frame(Frame),
    /// The pipeline reached end of stream (after [`Capture::stop`] or the spec's duration).
    Eos,
    /// The pipeline failed; no more frames follow.
    Error(CaptureError),
}

/// Everything that can go wrong building or running a capture pipeline.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// `gst::init()` failed (the message is GStreamer's).
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    /// The pipeline needs an element that no installed plugin provides.
    #[error(
        "GStreamer element `{element}` is not installed (install the Debian package {package})"
    )]
    MissingElement {
        /// Element factory name, e.g. `x264enc`.
        element: &'static str,
        /// Debian package that provides it, e.g. `gstreamer1.0-plugins-ugly`.
        package: &'static str,
    },
    /// Nothing exists at the configured device path.
    #[error("video device {} not found (run `kinesis-edge devices` to list cameras)", path.display())]
    DeviceNotFound {
        /// The configured path.
        path: PathBuf,
    },
    /// The device exists but could not be opened or queried (permissions, busy, not V4L2).
    #[error("video device {}: {operation} failed: {source}", path.display())]
    Device {
        /// The configured path.
        path: PathBuf,
        /// What failed: `stat`, `open`, `VIDIOC_QUERYCAP`, `listing`.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The node is V4L2 but does not capture video (metadata node, codec, output).
    #[error("{} is not a video capture device (driver {driver}, card {card}); run `kinesis-edge devices` to find the capture node", path.display())]
    NotACaptureDevice {
        /// The configured path.
        path: PathBuf,
        /// Kernel driver name.
        driver: String,
        /// Device name the driver reports.
        card: String,
    },
    /// A number or name in the spec is out of range.
    #[error("invalid capture setting {field}: {reason}")]
    InvalidSpec {
        /// The setting, as `video.width`, `audio.sample_rate`, ...
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The explicit encoder choice cannot work with this source on this machine.
    #[error("encoder `{choice}` cannot be used: {reason}")]
    EncoderUnavailable {
        /// `passthrough`, `hardware`, `x264` or `auto`.
        choice: &'static str,
        /// Why, and what to choose instead.
        reason: String,
    },
    /// `gst::parse::launch` refused the description (or it lacked an appsink).
    #[error("GStreamer rejected the pipeline: {message}; pipeline: {description}")]
    Parse {
        /// The description as built.
        description: String,
        /// GStreamer's message.
        message: String,
    },
    /// Caps negotiation failed: the source cannot produce what the pipeline asks for.
    #[error(
        "caps could not be negotiated at {element}: requested {requested}{}",
        offered_suffix(offered)
    )]
    NotNegotiated {
        /// The element that posted the error.
        element: String,
        /// The caps the pipeline asked of that branch's source.
        requested: String,
        /// What the camera offers, when the source is a camera.
        offered: Option<String>,
    },
    /// The camera failed while running (unplugged, driver error).
    #[error("video device {} stopped delivering ({element}: {message})", path.display())]
    DeviceLost {
        /// The configured path.
        path: PathBuf,
        /// The element that posted the error.
        element: String,
        /// GStreamer's message.
        message: String,
    },
    /// Any other pipeline error.
    #[error("{element}: {message} ({debug})")]
    Stream {
        /// The element that posted the error.
        element: String,
        /// GStreamer's message.
        message: String,
        /// GStreamer's debug detail (source file, reason).
        debug: String,
    },
}

fn offered_suffix(offered: &Option<String>) -> String {
    match offered {
        Some(offered) => format!("; the device offers {offered}"),
        None => String::new(),
    }
}

impl fmt::Display for VideoSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VideoSource::Test => f.write_str("test"),
            VideoSource::Device(path) => write!(f, "{}", path.display()),
        }
    }
}
