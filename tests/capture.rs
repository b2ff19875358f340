//! Capture against real GStreamer with the test sources (no camera needed): formats before
//! frames, frame counts, key-frame spacing, in-band SPS/PPS, timestamps, AAC framing, stop and
//! error paths.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kinesis_edge::capture::{
    AUDIO_TRACK, AudioSource, AudioSpec, Capture, CaptureError, CaptureEvent, EncoderChoice,
    PipelineSpec, TrackFormat, VIDEO_TRACK, VideoSource, VideoSpec, list_devices,
};
use kinesis_edge::media::{Codec, Frame, NalFormat};

const KEY_INTERVAL: u32 = 15;

fn test_spec(audio: AudioSource, duration: Option<Duration>) -> PipelineSpec {
    PipelineSpec {
        name: "capture-test".into(),
        video: VideoSpec {
            source: VideoSource::Test,
            encoder: EncoderChoice::Auto,
            width: 320,
            height: 240,
            framerate: 30,
            bitrate_kbps: 500,
            key_frame_interval_frames: KEY_INTERVAL,
        },
        audio: AudioSpec {
            source: audio,
            sample_rate: 48_000,
            channels: 1,
            bitrate_kbps: 64,
        },
        duration,
    }
}

/// Everything a capture delivered, in arrival order, up to and including Eos or Error.
#[derive(Default)]
struct Recorded {
    /// (track, format, number of frames of that track seen before it)
    formats: Vec<(usize, TrackFormat, usize)>,
    frames: Vec<Frame>,
    eos: bool,
    error: Option<CaptureError>,
}

impl Recorded {
    fn track(&self, track: usize) -> Vec<&Frame> {
        self.frames
            .iter()
            .filter(|frame| frame.track == track)
            .collect()
    }
}

async fn record_until_end(
    receiver: &mut tokio::sync::mpsc::Receiver<CaptureEvent>,
    limit: Duration,
) -> Recorded {
    let mut recorded = Recorded::default();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, receiver.recv())
            .await
            .expect("capture did not end in time");
        match event.expect("channel closed before Eos") {
            CaptureEvent::Format { track, format } => {
                let before = recorded.track(track).len();
                recorded.formats.push((track, format, before));
            }
            CaptureEvent::Frame(frame) => recorded.frames.push(frame),
            CaptureEvent::Eos => {
                recorded.eos = true;
                return recorded;
            }
            CaptureEvent::Error(error) => {
                recorded.error = Some(error);
                return recorded;
            }
        }
    }
}

/// NAL unit types of an Annex-B access unit (start codes `00 00 01` / `00 00 00 01`).
fn nal_types(data: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut index = 0;
    while index + 3 < data.len() {
        if data[index] == 0 && data[index + 1] == 0 && data[index + 2] == 1 {
            types.push(data[index + 3] & 0x1f);
            index += 3;
        } else {
            index += 1;
        }
    }
    types
}

/// `ffprobe -count_frames` of `bytes` written to a file with `extension`, as key=value pairs.
fn ffprobe(bytes: &[u8], extension: &str) -> std::collections::HashMap<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("stream.{extension}"));
    std::fs::write(&path, bytes).expect("write stream");
    let output = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=codec_name,profile,width,height,pix_fmt,nb_read_frames,sample_rate,channels")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&path)
        .output()
        .expect("ffprobe (package ffmpeg) is installed");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The 7-byte ADTS header for one raw AAC frame, from the AudioSpecificConfig's fields.
fn adts_header(object_type: u8, frequency_index: u8, channels: u8, payload: usize) -> [u8; 7] {
    let length = payload + 7;
    [
        0xff,
        0xf1,
        ((object_type - 1) << 6) | (frequency_index << 2) | (channels >> 2),
        ((channels & 3) << 6) | (length >> 11) as u8,
        (length >> 3) as u8,
        (((length & 7) as u8) << 5) | 0x1f,
        0xfc,
    ]
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sources_record_two_seconds_of_h264_and_aac() {
    let started_ns = now_ns();
    let spec = test_spec(AudioSource::Test, Some(Duration::from_secs(2)));
    let (capture, mut receiver) = Capture::start(&spec).expect("test pipeline starts");
    assert!(
        capture.describe().contains("x264enc"),
        "{}",
        capture.describe()
    );
    let recorded = record_until_end(&mut receiver, Duration::from_secs(20)).await;
    assert!(recorded.error.is_none(), "{:?}", recorded.error);
    assert!(recorded.eos);
    let ended_ns = now_ns();

    // Formats precede frames.
    let video_format = recorded
        .formats
        .iter()
        .find(|(track, _, _)| *track == VIDEO_TRACK)
        .expect("video format");
    assert_eq!(video_format.2, 0, "video format after its first frame");
    assert_eq!(video_format.1.codec, Codec::H264);
    assert_eq!(video_format.1.nal_format, NalFormat::AnnexB);
    assert_eq!((video_format.1.width, video_format.1.height), (320, 240));
    assert_eq!(video_format.1.framerate, (30, 1));
    let audio_format = recorded
        .formats
        .iter()
        .find(|(track, _, _)| *track == AUDIO_TRACK)
        .expect("audio format");
    assert_eq!(audio_format.2, 0, "audio format after its first frame");
    assert_eq!(audio_format.1.codec, Codec::Aac);
    assert_eq!(
        (audio_format.1.sample_rate, audio_format.1.channels),
        (48_000, 1)
    );
    let asc = audio_format.1.codec_data.as_ref().expect("AAC codec_data");
    assert!(asc.len() >= 2);
    // AudioSpecificConfig: object type 2 (AAC-LC), frequency index 3 (48 kHz), 1 channel.
    assert_eq!(asc[0] >> 3, 2, "{asc:02x?}");
    assert_eq!(((asc[0] & 0x07) << 1) | (asc[1] >> 7), 3, "{asc:02x?}");
    assert_eq!((asc[1] >> 3) & 0x0f, 1, "{asc:02x?}");

    // Video: exactly 2 s at 30 fps, key frames every KEY_INTERVAL with SPS/PPS in band.
    let video = recorded.track(VIDEO_TRACK);
    assert_eq!(video.len(), 60);
    let keys: Vec<usize> = video
        .iter()
        .enumerate()
        .filter(|(_, frame)| frame.key)
        .map(|(index, _)| index)
        .collect();
    assert_eq!(keys, vec![0, 15, 30, 45]);
    for (index, frame) in video.iter().enumerate() {
        let types = nal_types(&frame.data);
        if frame.key {
            for wanted in [7, 8, 5] {
                assert!(types.contains(&wanted), "frame {index}: {types:?}");
            }
        } else {
            assert!(!types.contains(&5), "frame {index}: {types:?}");
            assert!(types.contains(&1), "frame {index}: {types:?}");
        }
        assert_eq!(frame.dts_ns, frame.pts_ns);
        assert!(frame.duration_ns > 30_000_000 && frame.duration_ns < 36_000_000);
    }
    for pair in video.windows(2) {
        let step = pair[1].pts_ns - pair[0].pts_ns;
        assert!(
            (30_000_000..=36_000_000).contains(&step),
            "video step {step} ns"
        );
    }

    // Audio: 1024 samples per AAC frame at 48 kHz (21.333 ms), monotonic.
    let audio = recorded.track(AUDIO_TRACK);
    assert!(
        (90..=96).contains(&audio.len()),
        "{} audio frames",
        audio.len()
    );
    assert!(
        audio
            .iter()
            .all(|frame| frame.key && !frame.data.is_empty())
    );
    for pair in audio.windows(2) {
        let step = pair[1].pts_ns as i64 - pair[0].pts_ns as i64;
        assert!(
            (21_300_000..=21_370_000).contains(&step),
            "audio step {step} ns"
        );
    }

    // A/V start together and on the wall clock.
    let (video_start, audio_start) = (video[0].pts_ns, audio[0].pts_ns);
    assert!(
        video_start.abs_diff(audio_start) < 100_000_000,
        "video starts at {video_start}, audio at {audio_start}"
    );
    assert!(
        video_start + 3_000_000_000 > started_ns && video_start < ended_ns,
        "first frame at {video_start}, test ran {started_ns}..{ended_ns}"
    );

    // Independent check: ffprobe decodes the byte stream and the ADTS-wrapped AAC frames.
    let h264: Vec<u8> = video
        .iter()
        .flat_map(|frame| frame.data.iter().copied())
        .collect();
    let probed = ffprobe(&h264, "h264");
    assert_eq!(probed["codec_name"], "h264");
    assert_eq!(
        probed["pix_fmt"], "yuv420p",
        "x264 must be fed I420, not Y444"
    );
    assert_eq!(
        (probed["width"].as_str(), probed["height"].as_str()),
        ("320", "240")
    );
    assert_eq!(probed["nb_read_frames"], "60");
    let mut adts = Vec::new();
    for frame in &audio {
        adts.extend_from_slice(&adts_header(2, 3, 1, frame.data.len()));
        adts.extend_from_slice(&frame.data);
    }
    let probed = ffprobe(&adts, "aac");
    assert_eq!(probed["codec_name"], "aac");
    assert_eq!(probed["profile"], "LC");
    assert_eq!(
        (probed["sample_rate"].as_str(), probed["channels"].as_str()),
        ("48000", "1")
    );
    assert_eq!(probed["nb_read_frames"], audio.len().to_string());

    let stats = capture.stats();
    assert_eq!(stats.tracks.len(), 2);
    assert_eq!(stats.tracks[VIDEO_TRACK].frames, 60);
    assert_eq!(stats.tracks[VIDEO_TRACK].dropped_channel_full, 0);
    assert_eq!(
        stats.tracks[VIDEO_TRACK].bytes,
        video
            .iter()
            .map(|frame| frame.data.len() as u64)
            .sum::<u64>()
    );
    assert_eq!(stats.tracks[AUDIO_TRACK].frames, audio.len() as u64);
    assert_eq!(
        stats.tracks[VIDEO_TRACK].last_frame_epoch_ns,
        Some(video[59].pts_ns)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_flushes_frames_then_ends_with_eos() {
    let spec = test_spec(AudioSource::None, None);
    let (capture, mut receiver) = Capture::start(&spec).expect("starts");
    let mut frames = 0;
    while frames < 10 {
        match receiver.recv().await.expect("open") {
            CaptureEvent::Frame(frame) => {
                assert_eq!(frame.track, VIDEO_TRACK);
                frames += 1;
            }
            CaptureEvent::Format { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    capture.stop();
    let rest = record_until_end(&mut receiver, Duration::from_secs(10)).await;
    assert!(rest.eos, "{:?}", rest.error);
    assert!(rest.formats.is_empty());
    let stats = capture.stats();
    assert_eq!(stats.tracks.len(), 1);
    assert_eq!(
        stats.tracks[VIDEO_TRACK].frames,
        10 + rest.frames.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_frames_not_the_pipeline() {
    let spec = test_spec(AudioSource::Test, None);
    let (capture, mut receiver) = Capture::start(&spec).expect("starts");
    // Nobody reads for a while: 256 events fill in about 3.3 s of 30 fps video + 47 AAC/s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let stats = capture.stats();
    let dropped: u64 = stats
        .tracks
        .iter()
        .map(|track| track.dropped_channel_full)
        .sum();
    assert!(dropped > 0, "{stats:?}");
    capture.stop();
    // The backlog is intact and the pipeline still ends cleanly.
    let recorded = record_until_end(&mut receiver, Duration::from_secs(10)).await;
    assert!(recorded.eos);
    assert!(recorded.frames.len() >= 250);
    assert_eq!(recorded.formats.len(), 2);
    assert!(recorded.formats.iter().all(|(_, _, before)| *before == 0));
}

#[test]
fn dropping_a_running_capture_does_not_hang() {
    let spec = test_spec(AudioSource::Test, None);
    let (capture, receiver) = Capture::start(&spec).expect("starts");
    std::thread::sleep(Duration::from_millis(200));
    drop(capture);
    drop(receiver);
}

#[test]
fn a_missing_device_is_reported_not_panicked() {
    let mut spec = test_spec(AudioSource::None, None);
    spec.video.source = VideoSource::Device(PathBuf::from("/dev/video-does-not-exist"));
    let error = Capture::start(&spec).expect_err("no such device");
    match &error {
        CaptureError::DeviceNotFound { path } => {
            assert_eq!(path, &PathBuf::from("/dev/video-does-not-exist"))
        }
        other => panic!("expected DeviceNotFound, got {other:?}"),
    }
    assert!(error.to_string().contains("kinesis-edge devices"));
}

#[test]
fn passthrough_of_the_test_source_is_refused() {
    let mut spec = test_spec(AudioSource::None, None);
    spec.video.encoder = EncoderChoice::Passthrough;
    let error = Capture::start(&spec).expect_err("raw test source");
    assert!(matches!(error, CaptureError::EncoderUnavailable { .. }));
}

#[test]
fn no_cameras_here_lists_empty() {
    let devices = list_devices().expect("listing works without cameras");
    if std::path::Path::new("/dev/video0").exists() {
        assert!(!devices.is_empty());
    } else {
        assert!(devices.is_empty(), "{devices:?}");
    }
}
