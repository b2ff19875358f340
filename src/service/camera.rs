//! One camera's configuration mapped onto what capture and the muxer take.

use std::time::Duration;

use crate::capture::{self, PipelineSpec, TrackFormat};
use crate::config::{self, CameraConfig, Timecodes};
use crate::media::Codec;
use crate::mkv::{FragmentTags, MuxerConfig, TagError, TimecodeMode, TrackSpec};

/// The capture pipeline for `camera`; `duration` stops it after that much media time.
pub fn pipeline_spec(camera: &CameraConfig, duration: Option<Duration>) -> PipelineSpec {
    let video = &camera.video;
    let audio = &camera.audio;
    PipelineSpec {
        name: camera.name.clone(),
        video: capture::VideoSpec {
            source: match &video.source {
                config::VideoSource::Test => capture::VideoSource::Test,
                config::VideoSource::Device(path) => capture::VideoSource::Device(path.clone()),
            },
            encoder: match video.encoder {
                config::Encoder::Auto => capture::EncoderChoice::Auto,
                config::Encoder::Passthrough => capture::EncoderChoice::Passthrough,
                config::Encoder::Hardware => capture::EncoderChoice::Hardware,
                config::Encoder::X264 => capture::EncoderChoice::X264,
            },
            width: video.width,
            height: video.height,
            framerate: video.framerate,
            bitrate_kbps: video.bitrate_kbps,
            key_frame_interval_frames: camera.key_frame_interval_frames(),
        },
        audio: capture::AudioSpec {
            source: match audio.source {
                config::AudioSource::None => capture::AudioSource::None,
                config::AudioSource::Test => capture::AudioSource::Test,
                config::AudioSource::Alsa => capture::AudioSource::Alsa {
                    device: audio.device.clone().unwrap_or_default(),
                },
            },
            sample_rate: audio.sample_rate,
            channels: audio.channels,
            bitrate_kbps: audio.bitrate_kbps,
        },
        duration,
    }
}

/// How many tracks the camera's pipeline delivers (video, plus audio when configured).
pub fn track_count(camera: &CameraConfig) -> usize {
    match camera.audio.source {
        config::AudioSource::None => 1,
        config::AudioSource::Test | config::AudioSource::Alsa => 2,
    }
}

/// The muxer configuration once capture has reported every track's format (in track order).
pub fn muxer_config(camera: &CameraConfig, formats: &[TrackFormat]) -> MuxerConfig {
    let tracks = formats
        .iter()
        .map(|format| {
            let mut spec = match format.codec {
                Codec::H264 | Codec::H265 => {
                    let mut spec = TrackSpec::video(format.codec, format.nal_format);
                    spec.width = format.width;
                    spec.height = format.height;
                    spec
                }
                Codec::Aac => TrackSpec::aac(format.sample_rate, format.channels),
            };
            spec.codec_private = format.codec_data.clone();
            spec
        })
        .collect();
    let mut config = MuxerConfig::new(tracks);
    config.fragment_duration = Duration::from_millis(u64::from(camera.fragment.duration_ms));
    config.timecodes = match camera.fragment.timecodes {
        Timecodes::Absolute => TimecodeMode::Absolute,
        Timecodes::Relative => TimecodeMode::Relative,
    };
    config
}

/// The camera's persistent metadata as fragment tags.
pub fn fragment_tags(camera: &CameraConfig) -> Result<FragmentTags, TagError> {
    let tags = FragmentTags::new();
    for (name, value) in &camera.metadata {
        tags.set_persistent(name, value)?;
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::NalFormat;

    fn demo_camera() -> CameraConfig {
        let mut camera = CameraConfig::named("porch");
        camera.video.source = config::VideoSource::Test;
        camera.audio.source = config::AudioSource::Test;
        camera.fragment.duration_ms = 4000;
        camera.fragment.timecodes = Timecodes::Relative;
        camera.metadata.insert("site".into(), "warehouse-7".into());
        camera
    }

    #[test]
    fn pipeline_spec_carries_every_setting() {
        let camera = demo_camera();
        let spec = pipeline_spec(&camera, Some(Duration::from_secs(3)));
        assert_eq!(spec.name, "porch");
        assert_eq!(spec.video.source, capture::VideoSource::Test);
        assert_eq!(spec.video.width, camera.video.width);
        assert_eq!(spec.video.key_frame_interval_frames, 120, "30 fps × 4 s");
        assert_eq!(spec.audio.source, capture::AudioSource::Test);
        assert_eq!(spec.duration, Some(Duration::from_secs(3)));
        assert_eq!(track_count(&camera), 2);
    }

    #[test]
    fn muxer_config_follows_formats_and_fragment_settings() {
        let camera = demo_camera();
        let video = TrackFormat {
            codec: Codec::H264,
            nal_format: NalFormat::AnnexB,
            codec_data: None,
            width: 1280,
            height: 720,
            framerate: (30, 1),
            sample_rate: 0,
            channels: 0,
        };
        let audio = TrackFormat {
            codec: Codec::Aac,
            nal_format: NalFormat::LengthPrefixed,
            codec_data: Some(bytes::Bytes::from_static(&[0x11, 0x88])),
            width: 0,
            height: 0,
            framerate: (0, 1),
            sample_rate: 48_000,
            channels: 1,
        };
        let config = muxer_config(&camera, &[video, audio]);
        assert_eq!(config.tracks.len(), 2);
        assert_eq!(config.tracks[0].codec, Codec::H264);
        assert_eq!(
            config.tracks[1].codec_private.as_deref(),
            Some(&[0x11, 0x88][..])
        );
        assert_eq!(config.fragment_duration, Duration::from_secs(4));
        assert_eq!(config.timecodes, TimecodeMode::Relative);
    }

    #[test]
    fn persistent_metadata_becomes_tags() {
        let tags = fragment_tags(&demo_camera()).expect("valid tags");
        assert_eq!(
            tags.persistent(),
            vec![("site".to_owned(), "warehouse-7".to_owned())]
        );
    }
}
