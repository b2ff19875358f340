//! The `gst-launch` description of a capture pipeline, built from a [`PipelineSpec`] without
//! touching GStreamer or a device: which elements exist comes from an [`ElementRegistry`] and
//! what a camera emits from a [`DeviceProbe`], so every source × encoder × platform
//! combination is testable with fakes.
//!
//! Invariants of every description built here:
//! - Video ends in `h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,
//!   alignment=au ! appsink name=video`, so each buffer is one access unit and every IDR
//!   carries SPS/PPS in band.
//! - Raw video reaches x264enc as I420 (x264 picks Y444, which decoders reject, otherwise).
//! - Audio, when enabled, ends in `aacparse ! audio/mpeg,mpegversion=4,stream-format=raw !
//!   appsink name=audio`, whose caps carry the AudioSpecificConfig as `codec_data`.
//! - Every element named in the description is present in the registry, except that a missing
//!   one is reported as [`CaptureError::MissingElement`] with the Debian package to install.

use std::fmt::Write as _;
use std::path::Path;

use super::device::{DeviceInfo, FormatInfo};
use super::{
    AudioSource, AudioSpec, CaptureError, EncoderChoice, PipelineSpec, VideoSource, VideoSpec,
};

/// Name of the appsink that delivers the video track.
pub const VIDEO_SINK: &str = "video";
/// Name of the appsink that delivers the audio track.
pub const AUDIO_SINK: &str = "audio";
/// Name given to the video source element (shows in bus errors).
pub const VIDEO_SOURCE: &str = "video-source";

/// Which GStreamer elements can be instantiated.
pub trait ElementRegistry {
    /// True when an element factory of this name is installed.
    fn has(&self, element: &str) -> bool;
}

/// What a V4L2 device offers; [`SystemDevices`](super::SystemDevices) asks the real device.
pub trait DeviceProbe {
    /// Describes the device at `path`; [`CaptureError::DeviceNotFound`] when there is none.
    fn probe(&self, path: &Path) -> Result<DeviceInfo, CaptureError>;
}

/// The process's GStreamer registry (initialises GStreamer on first use).
#[derive(Debug, Clone, Copy)]
pub struct GstElementRegistry(());

impl GstElementRegistry {
    /// Initialises GStreamer (once per process) and returns the registry view.
    pub fn new() -> Result<Self, CaptureError> {
        super::live::init_gstreamer()?;
        Ok(GstElementRegistry(()))
    }
}

impl ElementRegistry for GstElementRegistry {
    fn has(&self, element: &str) -> bool {
        gstreamer::ElementFactory::find(element).is_some()
    }
}

/// The Debian package that provides `element` (what to `apt-get install` when it is missing).
pub fn debian_package(element: &str) -> &'static str {
    match element {
        "x264enc" => "gstreamer1.0-plugins-ugly",
        "h264parse" | "voaacenc" | "fdkaacenc" => "gstreamer1.0-plugins-bad",
        "avenc_aac" => "gstreamer1.0-libav",
        "v4l2src" | "v4l2h264enc" | "aacparse" | "jpegdec" => "gstreamer1.0-plugins-good",
        "alsasrc" => "gstreamer1.0-alsa",
        "timeoverlay" => "gstreamer1.0-x",
        "nvv4l2h264enc" | "nvvidconv" => "nvidia-l4t-gstreamer",
        _ => "gstreamer1.0-plugins-base",
    }
}

/// The pipeline description for `spec`, as `gst::parse::launch` takes it.
pub fn build_pipeline_description(
    spec: &PipelineSpec,
    registry: &impl ElementRegistry,
    devices: &impl DeviceProbe,
) -> Result<String, CaptureError> {
    plan_pipeline(spec, registry, devices).map(|plan| plan.description)
}

/// A description plus what the runtime needs to explain failures.
#[derive(Debug, Clone)]
pub(crate) struct PipelinePlan {
    pub description: String,
    /// The caps asked of the video source (for not-negotiated errors).
    pub requested_video_caps: String,
    /// The raw caps the audio encoder is fed, when there is audio.
    pub requested_audio_caps: Option<String>,
    /// What the device offers, one line, when the source is a device.
    pub device_offer: Option<String>,
}

/// How the video is encoded once resolved against the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoEncoder {
    Passthrough,
    RaspberryPi,
    Jetson,
    X264,
}

/// What the pipeline asks of a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceFormat {
    H264,
    Raw,
    Jpeg,
}

/// The order of preference of AAC encoders.
const AAC_ENCODERS: [&str; 3] = ["avenc_aac", "voaacenc", "fdkaacenc"];

pub(crate) fn plan_pipeline(
    spec: &PipelineSpec,
    registry: &impl ElementRegistry,
    devices: &impl DeviceProbe,
) -> Result<PipelinePlan, CaptureError> {
    if spec.name.contains('\0') {
        return Err(CaptureError::InvalidSpec {
            field: "name",
            reason: format!("{:?} contains a NUL character", spec.name),
        });
    }
    validate_video_geometry(&spec.video)?;
    let mut elements: Vec<&'static str> = Vec::new();
    let mut description = String::new();

    let device = match &spec.video.source {
        VideoSource::Test => None,
        VideoSource::Device(path) => Some((path.as_path(), devices.probe(path)?)),
    };
    let (encoder, device_format) = resolve_video(&spec.video, device.as_ref(), registry)?;
    if encoder != VideoEncoder::Passthrough {
        validate_encoding(&spec.video)?;
    }

    let video = &spec.video;
    let geometry = format!(
        "width={},height={},framerate={}/1",
        video.width, video.height, video.framerate
    );
    let requested_video_caps = match device_format {
        None | Some(DeviceFormat::Raw) => format!("video/x-raw,{geometry}"),
        Some(DeviceFormat::H264) => format!("video/x-h264,{geometry}"),
        Some(DeviceFormat::Jpeg) => format!("image/jpeg,{geometry}"),
    };
    match &device {
        None => {
            elements.push("videotestsrc");
            let _ = write!(
                description,
                "videotestsrc name={VIDEO_SOURCE} is-live=true pattern=ball ! {requested_video_caps}"
            );
            if registry.has("timeoverlay") {
                elements.push("timeoverlay");
                description.push_str(" ! timeoverlay");
            }
        }
        Some((path, _)) => {
            elements.push("v4l2src");
            let _ = write!(
                description,
                "v4l2src name={VIDEO_SOURCE} device={} ! {requested_video_caps}",
                quote(path_str(path, "video.source")?)
            );
            if device_format == Some(DeviceFormat::Jpeg) {
                elements.push("jpegdec");
                description.push_str(" ! jpegdec");
            }
        }
    }

    let bitrate_bps = u64::from(video.bitrate_kbps) * 1000;
    let gop = video.key_frame_interval_frames;
    const RAW_QUEUE: &str =
        " ! queue name=video-queue max-size-buffers=4 max-size-bytes=0 max-size-time=0";
    match encoder {
        VideoEncoder::Passthrough => {}
        VideoEncoder::X264 => {
            elements.extend(["queue", "videoconvert", "x264enc"]);
            let _ = write!(
                description,
                "{RAW_QUEUE} ! videoconvert ! video/x-raw,format=I420 ! x264enc name=video-encoder \
                 tune=zerolatency speed-preset=veryfast bitrate={} key-int-max={gop}",
                video.bitrate_kbps
            );
        }
        VideoEncoder::RaspberryPi => {
            elements.extend(["queue", "videoconvert", "v4l2h264enc"]);
            // The bcm2835 encoder takes bitrate and GOP only as V4L2 controls, and refuses to
            // negotiate unless downstream fixes a level.
            let _ = write!(
                description,
                "{RAW_QUEUE} ! videoconvert ! video/x-raw,format=I420 ! v4l2h264enc name=video-encoder \
                 extra-controls=\"controls,video_bitrate={bitrate_bps},h264_i_frame_period={gop},repeat_sequence_header=1\" \
                 ! video/x-h264,level=(string)4"
            );
        }
        VideoEncoder::Jetson => {
            elements.extend(["queue", "nvvidconv", "nvv4l2h264enc"]);
            let _ = write!(
                description,
                "{RAW_QUEUE} ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc name=video-encoder \
                 bitrate={bitrate_bps} iframeinterval={gop} idrinterval={gop} insert-sps-pps=true"
            );
        }
    }
    elements.extend(["h264parse", "appsink"]);
    let _ = write!(
        description,
        " ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au \
         ! appsink name={VIDEO_SINK} sync=false max-buffers=8 drop=false"
    );

    let requested_audio_caps = if spec.audio.source == AudioSource::None {
        None
    } else {
        Some(append_audio(
            &spec.audio,
            registry,
            &mut description,
            &mut elements,
        )?)
    };

    if let Some(missing) = elements.iter().find(|element| !registry.has(element)) {
        return Err(CaptureError::MissingElement {
            element: missing,
            package: debian_package(missing),
        });
    }

    Ok(PipelinePlan {
        description,
        requested_video_caps,
        requested_audio_caps,
        device_offer: device.map(|(_, info)| info.offer_summary()),
    })
}

fn append_audio(
    audio: &AudioSpec,
    registry: &impl ElementRegistry,
    description: &mut String,
    elements: &mut Vec<&'static str>,
) -> Result<String, CaptureError> {
    validate_audio(audio)?;
    let raw_caps = format!(
        "audio/x-raw,rate={},channels={}",
        audio.sample_rate, audio.channels
    );
    match &audio.source {
        AudioSource::None => return Ok(raw_caps),
        AudioSource::Test => {
            elements.push("audiotestsrc");
            description.push_str(" audiotestsrc name=audio-source is-live=true wave=sine freq=440");
        }
        AudioSource::Alsa { device } => {
            if device.is_empty() || device.contains('\0') {
                return Err(CaptureError::InvalidSpec {
                    field: "audio.source",
                    reason: format!(
                        "{device:?} is not an ALSA device name (use e.g. \"default\" or \"hw:1,0\")"
                    ),
                });
            }
            elements.push("alsasrc");
            let _ = write!(
                description,
                " alsasrc name=audio-source device={}",
                quote(device)
            );
        }
    }
    let encoder = AAC_ENCODERS
        .into_iter()
        .find(|encoder| registry.has(encoder))
        .unwrap_or(AAC_ENCODERS[0]);
    elements.extend([
        "queue",
        "audioconvert",
        "audioresample",
        encoder,
        "aacparse",
        "appsink",
    ]);
    let _ = write!(
        description,
        " ! queue name=audio-queue ! audioconvert ! audioresample ! {raw_caps} \
         ! {encoder} name=audio-encoder bitrate={} ! aacparse ! audio/mpeg,mpegversion=4,stream-format=raw \
         ! appsink name={AUDIO_SINK} sync=false max-buffers=8 drop=false",
        u64::from(audio.bitrate_kbps) * 1000
    );
    Ok(raw_caps)
}

/// Picks the encoder (and, for a device, the format to ask it for).
fn resolve_video(
    video: &VideoSpec,
    device: Option<&(&Path, DeviceInfo)>,
    registry: &impl ElementRegistry,
) -> Result<(VideoEncoder, Option<DeviceFormat>), CaptureError> {
    let choice = video.encoder;
    let unavailable = |reason: String| CaptureError::EncoderUnavailable {
        choice: choice.name(),
        reason,
    };
    let hardware = hardware_encoder(registry);
    let no_hardware = || {
        unavailable(
            "no hardware H.264 encoder element is installed (looked for nvv4l2h264enc on Jetson, \
             v4l2h264enc on Raspberry Pi); use encoder \"x264\" or \"auto\""
                .into(),
        )
    };
    let Some((path, info)) = device else {
        let encoder = match choice {
            EncoderChoice::Passthrough => {
                return Err(unavailable(
                    "the test source produces raw video; passthrough needs a camera that emits H.264"
                        .into(),
                ));
            }
            EncoderChoice::Hardware => hardware.ok_or_else(no_hardware)?,
            EncoderChoice::X264 => VideoEncoder::X264,
            EncoderChoice::Auto => hardware.unwrap_or(VideoEncoder::X264),
        };
        return Ok((encoder, None));
    };

    let (width, height) = (video.width, video.height);
    let h264_at_size = info
        .formats
        .iter()
        .any(|format| format.is_h264() && format.size_listed(width, height) != Some(false));
    match choice {
        EncoderChoice::Passthrough if h264_at_size => {
            return Ok((VideoEncoder::Passthrough, Some(DeviceFormat::H264)));
        }
        EncoderChoice::Passthrough => {
            let reason = if info.emits_h264 {
                format!(
                    "{} emits H.264 but not at {width}x{height} (it offers {})",
                    path.display(),
                    info.offer_summary()
                )
            } else {
                format!(
                    "{} does not emit H.264 (it offers {}); use encoder \"auto\"",
                    path.display(),
                    info.offer_summary()
                )
            };
            return Err(unavailable(reason));
        }
        EncoderChoice::Auto if h264_at_size => {
            return Ok((VideoEncoder::Passthrough, Some(DeviceFormat::H264)));
        }
        _ => {}
    }

    let input = encodable_format(&info.formats, width, height).ok_or_else(|| {
        unavailable(format!(
            "{} offers no raw or MJPEG video to encode (it offers {}); use encoder \"passthrough\"",
            path.display(),
            info.offer_summary()
        ))
    })?;
    let encoder = match choice {
        EncoderChoice::Hardware => hardware.ok_or_else(no_hardware)?,
        _ => hardware
            .filter(|_| choice == EncoderChoice::Auto)
            .unwrap_or(VideoEncoder::X264),
    };
    Ok((encoder, Some(input)))
}

/// Jetson first (its encoder is unambiguous), then the Raspberry Pi's V4L2 M2M encoder.
fn hardware_encoder(registry: &impl ElementRegistry) -> Option<VideoEncoder> {
    if registry.has("nvv4l2h264enc") {
        Some(VideoEncoder::Jetson)
    } else if registry.has("v4l2h264enc") {
        Some(VideoEncoder::RaspberryPi)
    } else {
        None
    }
}

/// Raw video at the requested size, else MJPEG at that size, else whichever of the two the
/// device has at all (the negotiation error then names what it offers).
fn encodable_format(formats: &[FormatInfo], width: u32, height: u32) -> Option<DeviceFormat> {
    let raw = || formats.iter().filter(|format| !format.compressed);
    let jpeg = || formats.iter().filter(|format| format.is_jpeg());
    let at_size = |format: &FormatInfo| format.size_listed(width, height) != Some(false);
    if raw().any(at_size) {
        Some(DeviceFormat::Raw)
    } else if jpeg().any(at_size) {
        Some(DeviceFormat::Jpeg)
    } else if raw().next().is_some() {
        Some(DeviceFormat::Raw)
    } else if jpeg().next().is_some() {
        Some(DeviceFormat::Jpeg)
    } else {
        None
    }
}

fn validate_video_geometry(video: &VideoSpec) -> Result<(), CaptureError> {
    for (field, value) in [("video.width", video.width), ("video.height", video.height)] {
        if !(16..=8192).contains(&value) || value % 2 != 0 {
            return Err(CaptureError::InvalidSpec {
                field,
                reason: format!("{value} is not an even number of pixels from 16 to 8192"),
            });
        }
    }
    if !(1..=240).contains(&video.framerate) {
        return Err(CaptureError::InvalidSpec {
            field: "video.framerate",
            reason: format!("{} is not from 1 to 240 frames per second", video.framerate),
        });
    }
    Ok(())
}

fn validate_encoding(video: &VideoSpec) -> Result<(), CaptureError> {
    // x264enc's own upper limit; hardware encoders take less, and say so when negotiating.
    if !(1..=2_048_000).contains(&video.bitrate_kbps) {
        return Err(CaptureError::InvalidSpec {
            field: "video.bitrate_kbps",
            reason: format!("{} is not from 1 to 2048000 kbit/s", video.bitrate_kbps),
        });
    }
    if video.key_frame_interval_frames == 0 {
        return Err(CaptureError::InvalidSpec {
            field: "video.key_frame_interval_frames",
            reason: "must be at least 1 frame".into(),
        });
    }
    Ok(())
}

fn validate_audio(audio: &AudioSpec) -> Result<(), CaptureError> {
    if !(8000..=96_000).contains(&audio.sample_rate) {
        return Err(CaptureError::InvalidSpec {
            field: "audio.sample_rate",
            reason: format!("{} Hz is not from 8000 to 96000 (AAC)", audio.sample_rate),
        });
    }
    if !(1..=8).contains(&audio.channels) {
        return Err(CaptureError::InvalidSpec {
            field: "audio.channels",
            reason: format!("{} is not from 1 to 8", audio.channels),
        });
    }
    if !(8..=1024).contains(&audio.bitrate_kbps) {
        return Err(CaptureError::InvalidSpec {
            field: "audio.bitrate_kbps",
            reason: format!("{} is not from 8 to 1024 kbit/s", audio.bitrate_kbps),
        });
    }
    Ok(())
}

fn path_str<'a>(path: &'a Path, field: &'static str) -> Result<&'a str, CaptureError> {
    path.to_str()
        .filter(|text| !text.contains('\0'))
        .ok_or_else(|| CaptureError::InvalidSpec {
            field,
            reason: format!("{path:?} is not a UTF-8 path without NUL characters"),
        })
}

/// A quoted `gst-launch` property value: backslash and double quote escaped.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        if matches!(character, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::capture::device::{FrameIntervalInfo, FrameSizeInfo};

    /// Elements every stock Debian install with plugins base/good/bad/ugly/libav has.
    const DEBIAN: &[&str] = &[
        "videotestsrc",
        "audiotestsrc",
        "v4l2src",
        "queue",
        "videoconvert",
        "audioconvert",
        "audioresample",
        "x264enc",
        "h264parse",
        "jpegdec",
        "avenc_aac",
        "voaacenc",
        "aacparse",
        "appsink",
        "alsasrc",
    ];

    struct FakeRegistry(HashSet<&'static str>);

    impl FakeRegistry {
        fn debian() -> Self {
            FakeRegistry(DEBIAN.iter().copied().collect())
        }
        fn with(mut self, element: &'static str) -> Self {
            self.0.insert(element);
            self
        }
        fn without(mut self, element: &'static str) -> Self {
            self.0.remove(element);
            self
        }
    }

    impl ElementRegistry for FakeRegistry {
        fn has(&self, element: &str) -> bool {
            self.0.contains(element)
        }
    }

    /// One fake camera at `/dev/video0` with the given formats; other paths do not exist.
    struct FakeDevices(Vec<FormatInfo>);

    impl DeviceProbe for FakeDevices {
        fn probe(&self, path: &Path) -> Result<DeviceInfo, CaptureError> {
            if path != Path::new("/dev/video0") {
                return Err(CaptureError::DeviceNotFound { path: path.into() });
            }
            Ok(DeviceInfo::from_formats(path.into(), self.0.clone()))
        }
    }

    fn format(fourcc: &str, compressed: bool, sizes: &[(u32, u32)]) -> FormatInfo {
        FormatInfo {
            fourcc: fourcc.into(),
            description: fourcc.into(),
            compressed,
            emulated: false,
            sizes: sizes
                .iter()
                .map(|&(width, height)| FrameSizeInfo::Discrete {
                    width,
                    height,
                    intervals: vec![FrameIntervalInfo::Discrete {
                        numerator: 1,
                        denominator: 30,
                    }],
                })
                .collect(),
        }
    }

    fn yuyv() -> FormatInfo {
        format("YUYV", false, &[(640, 480), (1280, 720)])
    }
    fn h264() -> FormatInfo {
        format("H264", true, &[(1280, 720), (1920, 1080)])
    }
    fn mjpg() -> FormatInfo {
        format("MJPG", true, &[(1280, 720), (1920, 1080)])
    }

    fn spec(source: VideoSource, encoder: EncoderChoice, audio: AudioSource) -> PipelineSpec {
        PipelineSpec {
            name: "cam".into(),
            video: VideoSpec {
                source,
                encoder,
                width: 1280,
                height: 720,
                framerate: 30,
                bitrate_kbps: 2000,
                key_frame_interval_frames: 60,
            },
            audio: AudioSpec {
                source: audio,
                sample_rate: 48_000,
                channels: 1,
                bitrate_kbps: 96,
            },
            duration: Some(Duration::from_secs(2)),
        }
    }

    fn camera() -> VideoSource {
        VideoSource::Device(PathBuf::from("/dev/video0"))
    }

    fn build(
        spec: &PipelineSpec,
        registry: &FakeRegistry,
        formats: Vec<FormatInfo>,
    ) -> Result<String, CaptureError> {
        build_pipeline_description(spec, registry, &FakeDevices(formats))
    }

    const VIDEO_TAIL: &str = "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=video sync=false max-buffers=8 drop=false";

    #[test]
    fn test_source_with_x264_and_test_tone() {
        let description = build(
            &spec(VideoSource::Test, EncoderChoice::Auto, AudioSource::Test),
            &FakeRegistry::debian(),
            vec![],
        )
        .expect("debian has everything");
        assert_eq!(
            description,
            "videotestsrc name=video-source is-live=true pattern=ball \
             ! video/x-raw,width=1280,height=720,framerate=30/1 \
             ! queue name=video-queue max-size-buffers=4 max-size-bytes=0 max-size-time=0 \
             ! videoconvert ! video/x-raw,format=I420 ! x264enc name=video-encoder tune=zerolatency \
             speed-preset=veryfast bitrate=2000 key-int-max=60 \
             ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au \
             ! appsink name=video sync=false max-buffers=8 drop=false \
             audiotestsrc name=audio-source is-live=true wave=sine freq=440 ! queue name=audio-queue \
             ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 \
             ! avenc_aac name=audio-encoder bitrate=96000 ! aacparse \
             ! audio/mpeg,mpegversion=4,stream-format=raw ! appsink name=audio sync=false max-buffers=8 drop=false"
        );
    }

    #[test]
    fn timeoverlay_is_used_when_installed() {
        let registry = FakeRegistry::debian().with("timeoverlay");
        let description = build(
            &spec(VideoSource::Test, EncoderChoice::X264, AudioSource::None),
            &registry,
            vec![],
        )
        .expect("builds");
        assert!(description.contains("framerate=30/1 ! timeoverlay ! queue"));
        assert!(!description.contains("audio"));
    }

    #[test]
    fn missing_x264_names_the_ugly_package() {
        let registry = FakeRegistry::debian().without("x264enc");
        for choice in [EncoderChoice::Auto, EncoderChoice::X264] {
            let error = build(
                &spec(VideoSource::Test, choice, AudioSource::None),
                &registry,
                vec![],
            )
            .expect_err("x264enc is missing");
            assert!(matches!(
                error,
                CaptureError::MissingElement {
                    element: "x264enc",
                    package: "gstreamer1.0-plugins-ugly"
                }
            ));
            assert!(error.to_string().contains("gstreamer1.0-plugins-ugly"));
        }
    }

    #[test]
    fn passthrough_with_test_source_is_refused() {
        let error = build(
            &spec(
                VideoSource::Test,
                EncoderChoice::Passthrough,
                AudioSource::None,
            ),
            &FakeRegistry::debian(),
            vec![],
        )
        .expect_err("test source is raw");
        assert!(matches!(
            error,
            CaptureError::EncoderUnavailable {
                choice: "passthrough",
                ..
            }
        ));
        assert!(error.to_string().contains("emits H.264"), "{error}");
    }

    #[test]
    fn raspberry_pi_encoder_is_used_when_present() {
        let registry = FakeRegistry::debian().with("v4l2h264enc");
        for choice in [EncoderChoice::Auto, EncoderChoice::Hardware] {
            let description = build(
                &spec(VideoSource::Test, choice, AudioSource::None),
                &registry,
                vec![],
            )
            .expect("builds");
            assert!(description.contains(
                "video/x-raw,format=I420 ! v4l2h264enc name=video-encoder extra-controls=\"controls,\
                 video_bitrate=2000000,h264_i_frame_period=60,repeat_sequence_header=1\" \
                 ! video/x-h264,level=(string)4 ! h264parse"
            ));
            assert!(!description.contains("x264enc "));
        }
    }

    #[test]
    fn jetson_encoder_comes_with_nvvidconv() {
        let registry = FakeRegistry::debian()
            .with("nvv4l2h264enc")
            .with("nvvidconv")
            .with("v4l2h264enc");
        let description = build(
            &spec(camera(), EncoderChoice::Hardware, AudioSource::None),
            &registry,
            vec![yuyv()],
        )
        .expect("builds");
        assert!(description.contains(
            "! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc name=video-encoder \
             bitrate=2000000 iframeinterval=60 idrinterval=60 insert-sps-pps=true ! h264parse"
        ));
        let without_nvvidconv = FakeRegistry::debian().with("nvv4l2h264enc");
        let error = build(
            &spec(
                VideoSource::Test,
                EncoderChoice::Hardware,
                AudioSource::None,
            ),
            &without_nvvidconv,
            vec![],
        )
        .expect_err("nvvidconv missing");
        assert!(matches!(
            error,
            CaptureError::MissingElement {
                element: "nvvidconv",
                ..
            }
        ));
    }

    #[test]
    fn explicit_hardware_without_encoder_is_refused() {
        let error = build(
            &spec(
                VideoSource::Test,
                EncoderChoice::Hardware,
                AudioSource::None,
            ),
            &FakeRegistry::debian(),
            vec![],
        )
        .expect_err("no hardware here");
        assert!(error.to_string().contains("v4l2h264enc"), "{error}");
        assert!(matches!(
            error,
            CaptureError::EncoderUnavailable {
                choice: "hardware",
                ..
            }
        ));
    }

    #[test]
    fn explicit_x264_ignores_hardware() {
        let registry = FakeRegistry::debian().with("v4l2h264enc");
        let description = build(
            &spec(VideoSource::Test, EncoderChoice::X264, AudioSource::None),
            &registry,
            vec![],
        )
        .expect("builds");
        assert!(description.contains("! x264enc name=video-encoder"));
        assert!(!description.contains("v4l2h264enc"));
    }

    #[test]
    fn h264_camera_is_passed_through_on_auto() {
        for choice in [EncoderChoice::Auto, EncoderChoice::Passthrough] {
            let description = build(
                &spec(camera(), choice, AudioSource::None),
                &FakeRegistry::debian().with("v4l2h264enc"),
                vec![yuyv(), h264()],
            )
            .expect("builds");
            assert_eq!(
                description,
                format!(
                    "v4l2src name=video-source device=\"/dev/video0\" \
                     ! video/x-h264,width=1280,height=720,framerate=30/1 ! {VIDEO_TAIL}"
                )
            );
        }
    }

    #[test]
    fn raw_camera_is_encoded_on_auto() {
        let description = build(
            &spec(camera(), EncoderChoice::Auto, AudioSource::None),
            &FakeRegistry::debian(),
            vec![yuyv(), mjpg()],
        )
        .expect("builds");
        assert!(description.starts_with(
            "v4l2src name=video-source device=\"/dev/video0\" ! video/x-raw,width=1280,height=720,framerate=30/1 \
             ! queue name=video-queue"
        ));
        assert!(description.contains("videoconvert ! video/x-raw,format=I420 ! x264enc"));
    }

    #[test]
    fn h264_camera_at_other_size_is_encoded_from_raw() {
        let mut spec = spec(camera(), EncoderChoice::Auto, AudioSource::None);
        spec.video.width = 640;
        spec.video.height = 480;
        let description =
            build(&spec, &FakeRegistry::debian(), vec![yuyv(), h264()]).expect("builds");
        assert!(description.contains("! video/x-raw,width=640,height=480"));
        assert!(description.contains("x264enc"));
    }

    #[test]
    fn mjpeg_is_decoded_when_raw_lacks_the_size() {
        let mut spec = spec(camera(), EncoderChoice::X264, AudioSource::None);
        spec.video.width = 1920;
        spec.video.height = 1080;
        let description =
            build(&spec, &FakeRegistry::debian(), vec![yuyv(), mjpg()]).expect("builds");
        assert!(description.contains(
            "! image/jpeg,width=1920,height=1080,framerate=30/1 ! jpegdec ! queue name=video-queue"
        ));
    }

    #[test]
    fn passthrough_needs_an_h264_camera() {
        let error = build(
            &spec(camera(), EncoderChoice::Passthrough, AudioSource::None),
            &FakeRegistry::debian(),
            vec![yuyv(), mjpg()],
        )
        .expect_err("no H.264");
        let message = error.to_string();
        assert!(message.contains("does not emit H.264"), "{message}");
        assert!(message.contains("YUYV"), "{message}");
        assert!(message.contains("MJPG"), "{message}");
    }

    #[test]
    fn passthrough_at_an_unlisted_size_names_the_sizes() {
        let mut spec = spec(camera(), EncoderChoice::Passthrough, AudioSource::None);
        spec.video.width = 640;
        spec.video.height = 480;
        let error = build(&spec, &FakeRegistry::debian(), vec![h264()]).expect_err("size");
        let message = error.to_string();
        assert!(message.contains("not at 640x480"), "{message}");
        assert!(message.contains("1920x1080"), "{message}");
    }

    #[test]
    fn h264_only_camera_cannot_be_reencoded() {
        let error = build(
            &spec(camera(), EncoderChoice::X264, AudioSource::None),
            &FakeRegistry::debian(),
            vec![h264()],
        )
        .expect_err("nothing to encode");
        assert!(
            error.to_string().contains("use encoder \"passthrough\""),
            "{error}"
        );
    }

    #[test]
    fn missing_device_is_reported_by_path() {
        let spec = spec(
            VideoSource::Device("/dev/video7".into()),
            EncoderChoice::Auto,
            AudioSource::None,
        );
        let error = build(&spec, &FakeRegistry::debian(), vec![yuyv()]).expect_err("no device");
        assert!(
            matches!(&error, CaptureError::DeviceNotFound { path } if path == Path::new("/dev/video7"))
        );
        assert!(error.to_string().contains("kinesis-edge devices"));
    }

    #[test]
    fn device_path_is_quoted_for_gst_launch() {
        let spec = spec(
            VideoSource::Device(PathBuf::from("/dev/video0")),
            EncoderChoice::Auto,
            AudioSource::Alsa {
                device: "hw:CARD=\"Mic\\1\"".into(),
            },
        );
        let description = build(&spec, &FakeRegistry::debian(), vec![yuyv()]).expect("builds");
        assert!(
            description.contains("alsasrc name=audio-source device=\"hw:CARD=\\\"Mic\\\\1\\\"\"")
        );
    }

    #[test]
    fn aac_encoder_falls_back_in_order() {
        let spec = spec(VideoSource::Test, EncoderChoice::X264, AudioSource::Test);
        let registry = FakeRegistry::debian().without("avenc_aac");
        let description = build(&spec, &registry, vec![]).expect("voaacenc");
        assert!(description.contains("! voaacenc name=audio-encoder bitrate=96000 !"));
        let registry = registry.without("voaacenc").with("fdkaacenc");
        let description = build(&spec, &registry, vec![]).expect("fdkaacenc");
        assert!(description.contains("! fdkaacenc name=audio-encoder"));
        let error = build(&spec, &registry.without("fdkaacenc"), vec![]).expect_err("none");
        assert!(matches!(
            error,
            CaptureError::MissingElement {
                element: "avenc_aac",
                package: "gstreamer1.0-libav"
            }
        ));
    }

    #[test]
    fn missing_alsasrc_names_its_package() {
        let spec = spec(
            VideoSource::Test,
            EncoderChoice::X264,
            AudioSource::Alsa {
                device: "default".into(),
            },
        );
        let error =
            build(&spec, &FakeRegistry::debian().without("alsasrc"), vec![]).expect_err("no alsa");
        assert!(matches!(
            error,
            CaptureError::MissingElement {
                element: "alsasrc",
                package: "gstreamer1.0-alsa"
            }
        ));
    }

    #[test]
    fn every_combination_ends_in_the_video_appsink() {
        let registries = [
            FakeRegistry::debian(),
            FakeRegistry::debian().with("v4l2h264enc"),
            FakeRegistry::debian()
                .with("nvv4l2h264enc")
                .with("nvvidconv"),
        ];
        let cameras: [Vec<FormatInfo>; 3] = [vec![yuyv()], vec![mjpg()], vec![yuyv(), h264()]];
        let choices = [
            EncoderChoice::Auto,
            EncoderChoice::Passthrough,
            EncoderChoice::Hardware,
            EncoderChoice::X264,
        ];
        let mut built = 0;
        for registry in &registries {
            for formats in &cameras {
                for source in [VideoSource::Test, camera()] {
                    for choice in choices {
                        let spec = spec(source.clone(), choice, AudioSource::Test);
                        match build(&spec, registry, formats.clone()) {
                            Ok(description) => {
                                built += 1;
                                assert!(description.contains(VIDEO_TAIL), "{description}");
                                assert!(description.ends_with(
                                    "appsink name=audio sync=false max-buffers=8 drop=false"
                                ));
                                if description.contains("x264enc") {
                                    assert!(
                                        description.contains("video/x-raw,format=I420 ! x264enc")
                                    );
                                }
                            }
                            Err(CaptureError::EncoderUnavailable { .. }) => {}
                            Err(other) => panic!("{choice:?} {source:?}: {other}"),
                        }
                    }
                }
            }
        }
        assert!(built > 40, "{built}");
    }

    #[test]
    fn invalid_numbers_name_the_setting() {
        let registry = FakeRegistry::debian();
        type Breakage = fn(&mut PipelineSpec);
        let cases: [(&str, Breakage); 6] = [
            ("video.width", |spec| spec.video.width = 0),
            ("video.height", |spec| spec.video.height = 721),
            ("video.framerate", |spec| spec.video.framerate = 0),
            ("video.bitrate_kbps", |spec| spec.video.bitrate_kbps = 0),
            ("video.key_frame_interval_frames", |spec| {
                spec.video.key_frame_interval_frames = 0
            }),
            ("audio.sample_rate", |spec| spec.audio.sample_rate = 1000),
        ];
        for (field, break_spec) in cases {
            let mut spec = spec(VideoSource::Test, EncoderChoice::X264, AudioSource::Test);
            break_spec(&mut spec);
            match build(&spec, &registry, vec![]) {
                Err(CaptureError::InvalidSpec { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn nul_characters_are_rejected_before_reaching_c() {
        let mut bad_name = spec(VideoSource::Test, EncoderChoice::X264, AudioSource::None);
        bad_name.name = "cam\0".into();
        let bad_alsa = spec(
            VideoSource::Test,
            EncoderChoice::X264,
            AudioSource::Alsa {
                device: "hw:1\0".into(),
            },
        );
        for (spec, field) in [(bad_name, "name"), (bad_alsa, "audio.source")] {
            match build(&spec, &FakeRegistry::debian(), vec![]) {
                Err(CaptureError::InvalidSpec { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn passthrough_ignores_encoder_settings() {
        let mut spec = spec(camera(), EncoderChoice::Passthrough, AudioSource::None);
        spec.video.bitrate_kbps = 0;
        spec.video.key_frame_interval_frames = 0;
        assert!(build(&spec, &FakeRegistry::debian(), vec![h264()]).is_ok());
    }

    #[test]
    fn plan_keeps_requested_caps_and_offer() {
        let spec = spec(camera(), EncoderChoice::X264, AudioSource::None);
        let plan = plan_pipeline(&spec, &FakeRegistry::debian(), &FakeDevices(vec![yuyv()]))
            .expect("builds");
        assert_eq!(
            plan.requested_video_caps,
            "video/x-raw,width=1280,height=720,framerate=30/1"
        );
        assert_eq!(plan.requested_audio_caps, None);
        let offer = plan.device_offer.expect("device");
        assert!(offer.contains("YUYV 640x480, 1280x720"), "{offer}");
    }
}
