//! `kinesis-edge record` end to end: the real binary records from GStreamer test sources, and
//! tools no one here wrote check the file: ffprobe, ffmpeg (full decode), mkvinfo, and GStreamer's
//! matroskademux.

use std::path::{Path, PathBuf};
use std::process::Command;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_kinesis-edge")
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {program} (scripts/install-deps.sh --test installs it): {error}")
        })
}

fn record(config: &str, seconds: &str, output: &Path) {
    let result = Command::new(binary())
        .args(["record", "--config"])
        .arg(repo_file(config))
        .args(["--duration", seconds, "--output"])
        .arg(output)
        // The buffer and spool directories in the example configs are relative.
        .current_dir(output.parent().expect("output has a parent"))
        .output()
        .expect("run kinesis-edge");
    assert!(
        result.status.success(),
        "record failed: {}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
}

/// `(codec, width, height, frame rate, sample rate, channels)` per stream, from ffprobe.
fn probe_streams(file: &Path) -> Vec<Vec<String>> {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height,r_frame_rate,sample_rate,channels",
            "-of",
            "csv=p=0",
            file.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        out.status.success(),
        "ffprobe rejected the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split(',').map(str::to_owned).collect())
        .collect()
}

/// Top-level elements after the track headers, as mkvinfo names them, and for each cluster
/// whether its first block is a key frame.
struct Layout {
    top_level: Vec<String>,
    clusters_opening_on_key_frame: Vec<bool>,
    tag_names: Vec<String>,
}

fn mkvinfo_layout(file: &Path) -> Layout {
    let out = run("mkvinfo", &["-v", file.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "mkvinfo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut layout = Layout {
        top_level: Vec::new(),
        clusters_opening_on_key_frame: Vec::new(),
        tag_names: Vec::new(),
    };
    let mut awaiting_first_block = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("|+ ") {
            let name = name.split(':').next().unwrap_or(name).trim().to_owned();
            awaiting_first_block = name == "Cluster";
            layout.top_level.push(name);
        } else if awaiting_first_block && line.contains("Simple block:") {
            layout
                .clusters_opening_on_key_frame
                .push(line.contains("Simple block: key, track number 1"));
            awaiting_first_block = false;
        } else if let Some(name) = line.trim_start_matches(['|', ' ']).strip_prefix("+ Name: ") {
            layout.tag_names.push(name.to_owned());
        }
    }
    layout
}

fn assert_decodes(file: &Path) {
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            file.to_str().expect("utf-8 path"),
            "-f",
            "null",
            "-",
        ],
    );
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ffmpeg reported decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let location = format!("location={}", file.display());
    let out = run(
        "gst-launch-1.0",
        &[
            "-q",
            "filesrc",
            &location,
            "!",
            "matroskademux",
            "name=d",
            "d.video_0",
            "!",
            "queue",
            "!",
            "fakesink",
            "d.audio_0",
            "!",
            "queue",
            "!",
            "fakesink",
        ],
    );
    assert!(
        out.status.success(),
        "matroskademux could not play the file: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_fragments(
    layout: &Layout,
    expected_clusters: std::ops::RangeInclusive<usize>,
    tags: &[&str],
) {
    let clusters = layout
        .top_level
        .iter()
        .filter(|name| *name == "Cluster")
        .count();
    assert!(
        expected_clusters.contains(&clusters),
        "{clusters} clusters, expected {expected_clusters:?}: {:?}",
        layout.top_level
    );
    assert_eq!(layout.clusters_opening_on_key_frame.len(), clusters);
    assert!(
        layout.clusters_opening_on_key_frame.iter().all(|key| *key),
        "a cluster does not open on a video key frame: {:?}",
        layout.clusters_opening_on_key_frame
    );
    // Every cluster is preceded by the persistent tags of its fragment.
    let mut tags_before = 0;
    for name in &layout.top_level {
        match name.as_str() {
            "Tags" => tags_before += 1,
            "Cluster" => {
                assert_eq!(
                    tags_before,
                    tags.len(),
                    "tags before a cluster: {:?}",
                    layout.top_level
                );
                tags_before = 0;
            }
            _ => {}
        }
    }
    for tag in tags {
        let count = layout.tag_names.iter().filter(|name| name == tag).count();
        assert_eq!(
            count, clusters,
            "tag {tag} appears {count} times for {clusters} clusters"
        );
    }
    // The session ends with the end-of-fragment tag.
    assert_eq!(layout.top_level.last().map(String::as_str), Some("Tags"));
    assert_eq!(
        layout.tag_names.last().map(String::as_str),
        Some("AWS_KINESISVIDEO_END_OF_FRAGMENT")
    );
}

/// What a recording from test sources must look like.
struct Expected<'a> {
    video: [&'a str; 4],
    sample_rate: &'a str,
    channels: &'a str,
    tags: &'a [&'a str],
}

/// Records 6 s with `config` and checks the file with ffprobe, ffmpeg, matroskademux and mkvinfo.
fn record_and_check(config: &str, name: &str, expected: &Expected) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(name);
    record(config, "6", &file);

    let streams = probe_streams(&file);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert_eq!(streams[0][..4], expected.video, "{streams:?}");
    assert_eq!(streams[1][0], "aac");
    assert!(
        streams[1].iter().any(|field| field == expected.sample_rate)
            && streams[1].iter().any(|field| field == expected.channels),
        "{streams:?}"
    );
    assert_decodes(&file);
    // 6 s of 2 s fragments: 3, or 4 when the pipeline's first key frame came a little early.
    check_fragments(&mkvinfo_layout(&file), 3..=4, expected.tags);
    (dir, file)
}

#[test]
fn demo_config_records_playable_kvs_fragments() {
    record_and_check(
        "config/demo.toml",
        "demo.mkv",
        &Expected {
            video: ["h264", "1280", "720", "30/1"],
            sample_rate: "48000",
            channels: "1",
            tags: &["purpose", "source"],
        },
    );
}

#[test]
fn relative_timecodes_720p_stereo_with_three_tags() {
    let (_dir, file) = record_and_check(
        "config/record-720p.toml",
        "720p.mkv",
        &Expected {
            video: ["h264", "1280", "720", "25/1"],
            sample_rate: "44100",
            channels: "2",
            tags: &["operator", "profile", "site"],
        },
    );

    // Relative timecodes: the first cluster starts at 0, later ones 2 s apart.
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0",
            file.to_str().expect("utf-8"),
        ],
    );
    let key_times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains('K'))
        .filter_map(|line| line.split(',').next()?.parse().ok())
        .collect();
    assert!(key_times.len() >= 3, "{key_times:?}");
    assert!(
        key_times[0].abs() < 0.001,
        "first key frame at {}",
        key_times[0]
    );
    for pair in key_times.windows(2) {
        assert!(
            (pair[1] - pair[0] - 2.0).abs() < 0.05,
            "key frames {pair:?} not 2 s apart"
        );
    }
}

#[test]
fn check_config_accepts_examples_and_rejects_with_exit_78() {
    for config in [
        "config/demo.toml",
        "config/record-720p.toml",
        "config/kinesis-edge.toml",
    ] {
        let out = Command::new(binary())
            .args(["check-config", "--config"])
            .arg(repo_file(config))
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[camera]]\nname = \"a\"\n[camera.fragment]\nduration_ms = 25000\n[camera.video]\nframerate = 500\n",
    )
    .expect("write");
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:4"), "{stderr}");
    assert!(
        stderr.contains("bad.toml:6") && stderr.contains("framerate"),
        "{stderr}"
    );
    // A syntax-level error (unknown key) stops parsing; it still names the key and its line.
    std::fs::write(&bad, "[[camera]]\nname = \"a\"\nbogus = 1\n").expect("write");
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:3") && stderr.contains("bogus"),
        "{stderr}"
    );
}

#[test]
fn record_reports_a_missing_camera_device_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cam.toml");
    std::fs::write(&config, "[[camera]]\nname = \"gone\"\n[camera.video]\nsource = \"/dev/video-does-not-exist\"\nencoder = \"x264\"\n").expect("write");
    let out = Command::new(binary())
        .args(["record", "--config"])
        .arg(&config)
        .args(["--duration", "1", "--output"])
        .arg(dir.path().join("out.mkv"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/dev/video-does-not-exist"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn record_rejects_an_unknown_camera_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(binary())
        .args(["record", "--config"])
        .arg(repo_file("config/demo.toml"))
        .args(["--camera", "nope", "--duration", "1", "--output"])
        .arg(dir.path().join("out.mkv"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no camera named \"nope\"") && stderr.contains("demo"),
        "{stderr}"
    );
}

#[test]
fn devices_lists_or_says_none_found() {
    let out = Command::new(binary()).arg("devices").output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let has_video = std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("video"))
        })
        .unwrap_or(false);
    if !has_video {
        assert!(stdout.contains("no cameras found"), "{stdout}");
    } else {
        assert!(stdout.contains("/dev/video"), "{stdout}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["check-config", "devices", "record"] {
        let out = Command::new(binary())
            .args([sub, "--help"])
            .output()
            .expect("run");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: kinesis-edge"), "{sub}: {text}");
    }
    let out = Command::new(binary())
        .args(["record", "--help"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for option in ["--config", "--camera", "--duration", "--output"] {
        assert!(text.contains(option), "record --help lacks {option}");
    }
}
