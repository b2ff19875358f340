//! Muxes real x264 video (with B-frames) and avenc_aac audio, produced by GStreamer here, into a
//! file and checks it with tools this project did not write: ffprobe, ffmpeg, mkvinfo and
//! GStreamer's matroskademux. A missing tool skips its check with a message. Also: an audio
//! gap filled with generated silent frames decodes cleanly and to zeros.

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use kinesis_edge::media::{Codec, Frame, NalFormat};
use kinesis_edge::mkv::{
    Event, FragmentEnd, FragmentMuxer, FragmentStart, FragmentTags, MuxSink, MuxStats, MuxerConfig,
    TimecodeMode, TrackSpec,
};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// 2023-11-14T22:13:20Z in ns: timestamps are absolute, as capture hands them over.
const T0: u64 = 1_700_000_000_000_000_000;
const VIDEO_FRAMES: usize = 90;
/// 3 s of 1024-sample buffers at 48 kHz (the encoder may add one when it flushes).
const AUDIO_FRAMES: usize = 141;

struct Encoded {
    frames: Vec<Frame>,
    codec_data: Option<Bytes>,
}

/// Runs `pipeline` (ending in `appsink name=out`) to EOS and returns its buffers as frames
/// of `track`, timestamps rebased so that the first PTS is T0. `None` only when GStreamer or
/// an element is missing; any other failure fails the test.
fn encode(pipeline: &str, track: usize) -> Option<Encoded> {
    if let Err(e) = gst::init() {
        eprintln!("SKIP: GStreamer does not initialise ({e})");
        return None;
    }
    let pipeline = match gst::parse::launch(pipeline) {
        Ok(p) => p.downcast::<gst::Pipeline>().expect("a pipeline"),
        Err(e) => {
            eprintln!("SKIP: cannot build GStreamer pipeline ({e})");
            return None;
        }
    };
    let sink = pipeline
        .by_name("out")
        .expect("appsink named out")
        .downcast::<gst_app::AppSink>()
        .expect("an appsink");
    sink.set_sync(false);
    pipeline
        .set_state(gst::State::Playing)
        .expect("pipeline plays");
    let mut raw = Vec::new();
    let mut codec_data = None;
    while let Ok(sample) = sink.pull_sample() {
        if codec_data.is_none() {
            codec_data = sample
                .caps()
                .and_then(|c| c.structure(0))
                .and_then(|s| s.get::<gst::Buffer>("codec_data").ok())
                .map(|b| Bytes::copy_from_slice(&b.map_readable().expect("readable")));
        }
        let buffer = sample.buffer().expect("sample has a buffer");
        let pts = buffer.pts().expect("buffer has a PTS").nseconds();
        let dts = buffer.dts().map_or(pts, |d| d.nseconds());
        let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let data = Bytes::copy_from_slice(&buffer.map_readable().expect("readable"));
        raw.push((pts, dts, key, data));
    }
    pipeline
        .set_state(gst::State::Null)
        .expect("pipeline stops");
    let base = raw.first().expect("the pipeline produced buffers").0;
    let frames = raw
        .into_iter()
        .map(|(pts, dts, key, data)| Frame {
            track,
            pts_ns: T0 + pts - base,
            dts_ns: T0 + dts - base,
            duration_ns: 0,
            key,
            data,
        })
        .collect();
    Some(Encoded { frames, codec_data })
}

fn video(stream_format: &str) -> Option<Encoded> {
    video_frames(stream_format, VIDEO_FRAMES, 15)
}

/// `frames` of 30 fps x264 video with B-frames, a key frame at least every `key_int` frames.
fn video_frames(stream_format: &str, frames: usize, key_int: usize) -> Option<Encoded> {
    encode(
        &format!(
            "videotestsrc num-buffers={frames} ! \
             video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
             x264enc key-int-max={key_int} bframes=2 ! \
             video/x-h264,stream-format={stream_format},alignment=au ! appsink name=out"
        ),
        0,
    )
}

fn audio() -> Option<Encoded> {
    audio_frames(48_000, 2, AUDIO_FRAMES)
}

/// `frames` AAC-LC frames of a 440 Hz tone from avenc_aac.
fn audio_frames(rate: u32, channels: u32, frames: usize) -> Option<Encoded> {
    encode(
        &format!(
            "audiotestsrc num-buffers={frames} samplesperbuffer=1024 ! \
             audio/x-raw,rate={rate},channels={channels} ! audioconvert ! avenc_aac ! aacparse ! \
             audio/mpeg,stream-format=raw ! appsink name=out"
        ),
        1,
    )
}

/// Writes the stream to a file and remembers the fragment events.
struct FileSink {
    out: BufWriter<File>,
    audio_frames: usize,
    starts: Vec<FragmentStart>,
    ends: Vec<FragmentEnd>,
    ended: bool,
}

impl MuxSink for FileSink {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.out.write_all(header)
    }
    fn fragment_start(&mut self, start: &FragmentStart) -> io::Result<()> {
        self.starts.push(start.clone());
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        self.out.write_all(payload)
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        self.ends.push(end.clone());
        Ok(())
    }
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.ended = true;
        self.out.write_all(trailer)?;
        self.out.flush()
    }
}

/// Interleaves the two tracks' frames roughly as two capture threads would deliver them
/// (video a little ahead), muxes them into `path`; returns the sink's record.
fn mux(path: &Path, video: Encoded, video_format: NalFormat, audio: Encoded) -> FileSink {
    let (sink, stats) = mux_with(path, video, video_format, audio, TrackSpec::aac(48_000, 2));
    assert_eq!(stats.silence_frames_inserted, 0);
    sink
}

fn mux_with(
    path: &Path,
    video: Encoded,
    video_format: NalFormat,
    audio: Encoded,
    mut audio_spec: TrackSpec,
) -> (FileSink, MuxStats) {
    let mut video_spec = TrackSpec::video(Codec::H264, video_format);
    video_spec.codec_private = video.codec_data;
    audio_spec.codec_private = audio.codec_data;
    let config = MuxerConfig {
        fragment_duration: Duration::from_secs(1),
        timecodes: TimecodeMode::Absolute,
        ..MuxerConfig::new(vec![video_spec, audio_spec])
    };
    let input_frames = (video.frames.len() + audio.frames.len()) as u64;
    let tags = FragmentTags::new();
    tags.set_persistent("camera", "test-pattern").unwrap();
    let mut muxer = FragmentMuxer::new(config, tags.clone()).unwrap();
    let mut sink = FileSink {
        out: BufWriter::new(File::create(path).unwrap()),
        audio_frames: audio.frames.len(),
        starts: Vec::new(),
        ends: Vec::new(),
        ended: false,
    };
    let mut v = video.frames.into_iter().peekable();
    let mut a = audio.frames.into_iter().peekable();
    let mut pushed = 0;
    loop {
        let take_video = match (v.peek(), a.peek()) {
            (Some(vf), Some(af)) => vf.dts_ns <= af.pts_ns + 150_000_000,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let frame = if take_video { v.next() } else { a.next() }.unwrap();
        muxer.push(frame, &mut sink).unwrap();
        pushed += 1;
        if pushed == 60 {
            tags.add_event(Event::Notification {
                pairs: vec![("reason".into(), "test".into())],
            })
            .unwrap();
        }
    }
    muxer.finish(&mut sink).unwrap();
    let stats = muxer.stats();
    assert_eq!(stats.frames_in, input_frames);
    assert_eq!(
        stats.frames_out, stats.frames_in,
        "nothing dropped: {stats:?}"
    );
    (sink, stats)
}

fn tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok();
    if !found {
        // scripts/test.sh and CI install every tool and require them.
        assert!(
            std::env::var_os("KINESIS_EDGE_REQUIRE_TOOLS").is_none(),
            "required test tool missing: {name}"
        );
        eprintln!("SKIP: {name} is not installed; its check is skipped");
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("tool runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_with_tools(path: &Path, sink: &FileSink) {
    let file = path.to_str().unwrap();
    if let Some(dir) = std::env::var_os("MKV_TOOLS_KEEP_DIR") {
        // For looking at the output by hand.
        let kept = Path::new(&dir).join(path.file_name().unwrap());
        std::fs::copy(path, &kept).unwrap();
        eprintln!("kept {}", kept.display());
    }
    assert!(sink.ended);
    assert_eq!(sink.starts.len(), 3, "3 s at 1 s fragments");
    for end in &sink.ends {
        assert_eq!(end.tracks_present, 0b11, "{end:?}");
    }

    if tool("ffprobe") {
        let (ok, out, err) = run(Command::new("ffprobe").args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,sample_rate,channels,nb_read_frames,r_frame_rate",
            "-of",
            "json",
            file,
        ]));
        assert!(ok && err.is_empty(), "ffprobe: {err}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        let streams = json["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2, "{out}");
        let v = &streams[0];
        assert_eq!(v["codec_name"], "h264");
        assert_eq!(v["width"], 320);
        assert_eq!(v["height"], 240);
        assert_eq!(v["r_frame_rate"], "30/1");
        assert_eq!(v["nb_read_frames"], VIDEO_FRAMES.to_string());
        let a = &streams[1];
        assert_eq!(a["codec_name"], "aac");
        assert_eq!(a["sample_rate"], "48000");
        assert_eq!(a["channels"], 2);
        assert_eq!(a["nb_read_frames"], sink.audio_frames.to_string());
    }

    if tool("ffmpeg") {
        let (ok, out, err) =
            run(Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-i", file, "-f", "null", "-"]));
        assert!(ok, "ffmpeg failed: {err}");
        assert!(
            out.is_empty() && err.is_empty(),
            "ffmpeg reports: {out}{err}"
        );
    }

    if tool("mkvinfo") {
        let (ok, out, err) = run(Command::new("mkvinfo").args(["--all", file]));
        assert!(ok, "mkvinfo: {out}{err}");
        assert!(!out.contains("rror"), "mkvinfo reports an error: {out}");
        check_mkvinfo(&out, sink);
    }

    if tool("gst-launch-1.0") {
        let (ok, out, err) = run(Command::new("gst-launch-1.0").args([
            "-q",
            "filesrc",
            &format!("location={file}"),
            "!",
            "matroskademux",
            "name=d",
            "d.video_0",
            "!",
            "queue",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "fakesink",
            "d.audio_0",
            "!",
            "queue",
            "!",
            "avdec_aac",
            "!",
            "fakesink",
        ]));
        assert!(ok, "matroskademux pipeline failed: {out}{err}");
    }
}

/// mkvinfo's tree: one Cluster per fragment, each opening with a key frame of track 1 at its
/// own timestamp, Tags before clusters (level 1, between clusters).
fn check_mkvinfo(out: &str, sink: &FileSink) {
    let lines: Vec<&str> = out.lines().collect();
    let clusters: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_end() == "|+ Cluster")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(clusters.len(), sink.starts.len(), "{out}");
    for (n, &at) in clusters.iter().enumerate() {
        assert!(
            lines[at].starts_with("|+ Cluster"),
            "level 1: {}",
            lines[at]
        );
        let timestamp = lines[at + 1..]
            .iter()
            .find(|l| l.contains("Cluster timestamp"))
            .unwrap();
        let expected_s = sink.starts[n].timecode_ms as f64 / 1000.0;
        let shown = timestamp.rsplit(": ").next().unwrap();
        let (h, rest) = shown.split_once(':').unwrap();
        let (m, s) = rest.split_once(':').unwrap();
        let seconds: f64 = h.parse::<f64>().unwrap() * 3600.0
            + m.parse::<f64>().unwrap() * 60.0
            + s.parse::<f64>().unwrap();
        assert!(
            (seconds - expected_s).abs() < 0.0005,
            "{timestamp} vs {expected_s}"
        );
        let first_block = lines[at + 1..]
            .iter()
            .find(|l| l.contains("Simple block"))
            .unwrap();
        assert!(
            first_block.contains("key") && first_block.contains("track number 1"),
            "cluster {n} opens on a video key frame: {first_block}"
        );
    }
    // Tags: level-1 elements between clusters; the persistent tag before every cluster.
    let tags_at: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("|+ Tags"))
        .map(|(i, _)| i)
        .collect();
    for (n, &at) in clusters.iter().enumerate() {
        let previous = if n == 0 { 0 } else { clusters[n - 1] };
        let has_camera_tag = tags_at
            .iter()
            .filter(|&&t| t > previous && t < at)
            .any(|&t| lines[t..at].iter().any(|l| l.contains("Name: camera")));
        assert!(has_camera_tag, "persistent tag before cluster {n}");
    }
    assert!(out.contains("Name: AWS_KINESISVIDEO_NOTIFICATION"), "{out}");
    let last_tags = *tags_at.last().unwrap();
    assert!(
        last_tags > *clusters.last().unwrap(),
        "end-of-session Tags last"
    );
    assert!(
        lines[last_tags..]
            .iter()
            .any(|l| l.contains("Name: AWS_KINESISVIDEO_END_OF_FRAGMENT"))
    );
}

#[test]
fn annexb_video_with_aac_passes_ffprobe_ffmpeg_mkvinfo_and_matroskademux() {
    let (Some(video), Some(audio)) = (video("byte-stream"), audio()) else {
        eprintln!("SKIP: GStreamer x264enc/avenc_aac not available");
        return;
    };
    assert_eq!(video.frames.len(), VIDEO_FRAMES);
    assert!(
        video.frames.iter().any(|f| f.pts_ns != f.dts_ns),
        "the stream has B-frames"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("annexb.mkv");
    let sink = mux(&path, video, NalFormat::AnnexB, audio);
    check_with_tools(&path, &sink);
}

#[test]
fn length_prefixed_video_with_caps_codec_data_passes_the_tools() {
    let (Some(video), Some(audio)) = (video("avc"), audio()) else {
        eprintln!("SKIP: GStreamer x264enc/avenc_aac not available");
        return;
    };
    assert!(video.codec_data.is_some(), "avc caps carry codec_data");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("avc.mkv");
    let sink = mux(&path, video, NalFormat::LengthPrefixed, audio);
    check_with_tools(&path, &sink);
}

// ---- Audio gap filled with silent frames -------------------------------------------------

/// 8 s of video with a key frame every second (1 s fragments) and a tone with no audio from
/// 2 s to 5 s: the fragments starting at 2, 3 and 4 s get one silent frame each.
fn silence_fills_an_audio_gap(rate: u32, channels: u32) {
    const SECONDS: usize = 8;
    let audio_count = SECONDS * rate as usize / 1024;
    let (Some(video), Some(mut audio)) = (
        video_frames("byte-stream", SECONDS * 30, 30),
        audio_frames(rate, channels, audio_count),
    ) else {
        eprintln!("SKIP: GStreamer x264enc/avenc_aac not available");
        return;
    };
    let gap = T0 + 2_000_000_000..T0 + 5_000_000_000;
    audio.frames.retain(|f| !gap.contains(&f.pts_ns));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("gap-{rate}-{channels}.mkv"));
    let spec = TrackSpec::aac(rate, channels as u8);
    let (sink, stats) = mux_with(&path, video, NalFormat::AnnexB, audio, spec);
    assert_eq!(sink.starts.len(), SECONDS, "1 s fragments");
    for end in &sink.ends {
        assert_eq!(end.tracks_present, 0b11, "{end:?}");
    }
    assert_eq!(stats.silence_frames_inserted, 3, "{stats:?}");
    keep_for_inspection(&path);
    let file = path.to_str().unwrap();

    if tool("ffmpeg") {
        let (ok, out, err) =
            run(Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-i", file, "-f", "null", "-"]));
        assert!(
            ok && out.is_empty() && err.is_empty(),
            "ffmpeg reports: {out}{err}"
        );
    }
    if tool("ffprobe") && tool("ffmpeg") {
        check_silent_samples(file, channels as usize);
    }
    if tool("mkvinfo") {
        let (ok, out, err) = run(Command::new("mkvinfo").args(["-v", file]));
        assert!(ok && !out.contains("rror"), "mkvinfo: {out}{err}");
        let clusters: Vec<&str> = out.split("|+ Cluster").skip(1).collect();
        assert_eq!(clusters.len(), SECONDS, "{out}");
        for (n, cluster) in clusters.iter().enumerate() {
            assert!(
                cluster
                    .lines()
                    .any(|l| l.contains("Simple block") && l.contains("track number 2")),
                "cluster {n} has an audio block: {cluster}"
            );
        }
    }
}

/// The audio packets' sizes in file order (ffprobe) locate the silent frames; the decoded
/// samples (ffmpeg, 1024 per packet) are zero for every silent frame that follows another
/// (the first one after real audio carries that audio's overlap-add tail), and not zero for
/// the tone.
fn check_silent_samples(file: &str, channels: usize) {
    let (ok, out, err) = run(Command::new("ffprobe").args([
        "-v",
        "error",
        "-select_streams",
        "a",
        "-show_entries",
        "packet=size",
        "-of",
        "csv=p=0",
        file,
    ]));
    assert!(ok && err.is_empty(), "ffprobe: {err}");
    let silent_len = if channels == 1 { 4 } else { 7 };
    let silent: Vec<bool> = out
        .lines()
        .map(|l| l.trim().parse::<usize>().unwrap() == silent_len)
        .collect();
    assert_eq!(silent.iter().filter(|&&s| s).count(), 3, "{out}");

    let decoded = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i", file, "-map", "0:a"])
        .args(["-f", "s16le", "-acodec", "pcm_s16le", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let samples: Vec<i16> = decoded
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let per_packet = 1024 * channels;
    assert_eq!(
        samples.len(),
        silent.len() * per_packet,
        "1024 samples per packet"
    );
    let peak = |k: usize| {
        samples[k * per_packet..(k + 1) * per_packet]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap()
    };
    let mut zero_frames = 0;
    for k in 1..silent.len() {
        if silent[k] && silent[k - 1] {
            assert_eq!(peak(k), 0, "silent packet {k} decodes to zeros");
            zero_frames += 1;
        } else if !silent[k] && !silent[k - 1] && k > 2 {
            assert!(
                peak(k) > 1000,
                "the tone is audible in packet {k}: {}",
                peak(k)
            );
        }
    }
    assert_eq!(zero_frames, 2);
}

fn keep_for_inspection(path: &Path) {
    if let Some(dir) = std::env::var_os("MKV_TOOLS_KEEP_DIR") {
        let kept = Path::new(&dir).join(path.file_name().unwrap());
        std::fs::copy(path, &kept).unwrap();
        eprintln!("kept {}", kept.display());
    }
}

#[test]
fn mono_48k_gap_filled_with_silence_decodes_cleanly_to_zeros() {
    silence_fills_an_audio_gap(48_000, 1);
}

#[test]
fn stereo_44k1_gap_filled_with_silence_decodes_cleanly_to_zeros() {
    silence_fills_an_audio_gap(44_100, 2);
}
