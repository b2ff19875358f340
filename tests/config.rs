//! Configuration files: the shipped examples are valid (and the annotated one equals the code's
//! defaults and documents every key), and every file of `tests/config_corpus/` is rejected with
//! the error its first line announces, located at a line of the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kinesis_edge::config::{
    AudioSource, CameraConfig, Config, ConfigErrors, CredentialSource, CredentialsConfig,
    DiskOverride, Encoder, IotCredentialsConfig, Secret, Timecodes, VideoSource, load_with_env,
};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn load(relative: &str) -> Config {
    let path = repo_file(relative);
    match load_with_env(&path, &[]) {
        Ok(valid) => valid.into_inner(),
        Err(errors) => panic!("{relative} must be valid:\n{errors}"),
    }
}

#[test]
fn annotated_example_equals_the_defaults_with_one_named_camera() {
    let example = load("config/kinesis-edge.toml");
    let expected = Config {
        camera: vec![CameraConfig::named("front-door")],
        ..Config::default()
    };
    assert_eq!(example, expected);
}

/// Uncomments the example's commented-out settings (`# key = value`, `# [table]`), leaving prose
/// comments alone.
fn uncomment_settings(text: &str) -> String {
    let is_key =
        |key: &str| !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if (rest.starts_with('[') && rest.ends_with(']'))
                    || rest.split_once(" = ").is_some_and(|(key, _)| is_key(key)) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every key path of a serialized value, arrays flattened to their first element.
fn key_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                key_paths(child, &path, out);
            }
        }
        toml::Value::Array(items) => {
            if let Some(first) = items.first() {
                key_paths(first, prefix, out);
            }
        }
        _ => {}
    }
}

#[test]
fn annotated_example_documents_every_key() {
    // A configuration with every optional key set, so its serialization has every key.
    let mut camera = CameraConfig::named("front-door");
    camera.stream = Some("front-door".into());
    camera.kms_key_id = Some("alias/kvs".into());
    camera
        .stream_tags
        .insert("owner".into(), "facilities".into());
    camera.metadata.insert("site".into(), "warehouse-7".into());
    camera.video.key_frame_interval_frames = Some(60);
    camera.audio.device = Some("hw:1,0".into());
    camera.buffer.memory_mb = Some(32);
    camera.buffer.disk = DiskOverride {
        dir: Some("/mnt/ssd".into()),
        max_mb: Some(1),
        fsync: Some(true),
    };
    let mut full = Config {
        camera: vec![camera],
        ..Config::default()
    };
    full.aws.endpoint = Some("https://example.com".into());
    full.aws.credentials = CredentialsConfig {
        source: CredentialSource::Auto,
        access_key_id: Some("AKIA".into()),
        secret_access_key: Some(Secret::new("s")),
        session_token: Some(Secret::new("t")),
        profile: Some("p".into()),
        path: Some("/p".into()),
        iot: Some(IotCredentialsConfig {
            endpoint: Some("e".into()),
            cert_path: Some("/c".into()),
            key_path: Some("/k".into()),
            ca_path: Some("/ca".into()),
            role_alias: Some("r".into()),
            thing_name: Some("t".into()),
        }),
    };
    full.telemetry.stream = Some("s".into());
    full.telemetry.endpoint = Some("https://example.com".into());
    full.service.device_id = Some("d".into());
    full.service.metrics_listen = Some("127.0.0.1:9110".parse().expect("address"));
    let mut schema_keys = BTreeSet::new();
    key_paths(
        &toml::Value::try_from(&full).expect("serializes"),
        "",
        &mut schema_keys,
    );

    // The example with its commented-out settings switched on must still parse (no typos in
    // the documentation) and must contain every key.
    let path = repo_file("config/kinesis-edge.toml");
    let uncommented = uncomment_settings(&read(&path));
    let parsed = Config::from_toml_str(&uncommented, &path)
        .unwrap_or_else(|errors| panic!("uncommented example does not parse:\n{errors}"));
    let mut documented = BTreeSet::new();
    key_paths(
        &toml::Value::try_from(&parsed).expect("serializes"),
        "",
        &mut documented,
    );
    let missing: Vec<_> = schema_keys.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys missing from config/kinesis-edge.toml: {missing:?}"
    );
    assert!(
        schema_keys.len() > 60,
        "suspiciously few keys: {schema_keys:?}"
    );
}

#[test]
fn serialized_defaults_parse_back_to_the_defaults() {
    let config = load("config/demo.toml");
    let text = toml::to_string(&config).expect("serializes");
    let back = Config::from_toml_str(&text, Path::new("serialized.toml"))
        .unwrap_or_else(|errors| panic!("{errors}\n{text}"));
    assert_eq!(back, config);
}

#[test]
fn demo_records_test_sources_with_audio() {
    let demo = load("config/demo.toml");
    let [camera] = demo.camera.as_slice() else {
        panic!("one camera expected");
    };
    assert_eq!(camera.video.source, VideoSource::Test);
    assert_eq!(
        (
            camera.video.width,
            camera.video.height,
            camera.video.framerate
        ),
        (1280, 720, 30)
    );
    assert_eq!(camera.audio.source, AudioSource::Test);
    assert_eq!(
        (camera.audio.sample_rate, camera.audio.channels),
        (48_000, 1)
    );
    assert_eq!(camera.fragment.duration_ms, 2000);
    assert_eq!(camera.fragment.timecodes, Timecodes::Absolute);
    assert!(camera.metadata.len() >= 2);
    assert!(demo.buffer.disk.dir.is_relative());
    assert_eq!(
        demo.aws.endpoint, None,
        "the endpoint comes from the environment"
    );
    // scripts/demo.sh creates this data stream at the local endpoint.
    assert!(demo.telemetry.enabled);
    assert_eq!(
        demo.telemetry.stream.as_deref(),
        Some("kinesis-edge-telemetry")
    );
    assert_eq!(demo.telemetry.interval_s, 5);
    assert!(demo.telemetry.spool.dir.is_relative());

    // The endpoint and region from the environment, as the demo's comment says.
    let env = [
        ("KINESIS_EDGE__AWS__ENDPOINT", "http://127.0.0.1:4566"),
        ("AWS_REGION", "eu-west-1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let local =
        load_with_env(&repo_file("config/demo.toml"), &env).expect("valid with a local endpoint");
    assert_eq!(local.aws.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
    assert_eq!(local.aws.region, "eu-west-1");
}

#[test]
fn record_720p_uses_relative_timecodes_and_three_tags() {
    let config = load("config/record-720p.toml");
    let [camera] = config.camera.as_slice() else {
        panic!("one camera expected");
    };
    assert_eq!((camera.video.width, camera.video.height), (1280, 720));
    assert_eq!(camera.video.source, VideoSource::Test);
    assert_eq!(camera.video.encoder, Encoder::Auto);
    assert_eq!(camera.audio.source, AudioSource::Test);
    assert_eq!(camera.fragment.duration_ms, 2000);
    assert_eq!(camera.fragment.timecodes, Timecodes::Relative);
    assert_eq!(camera.metadata.len(), 3);
}

/// The expected error substring on a corpus file's first line.
fn expectation(text: &str) -> Option<&str> {
    text.lines().next()?.strip_prefix("# expect: ")
}

fn check_corpus_file(path: &Path) -> Result<(), String> {
    let text = read(path);
    let expected = expectation(&text).ok_or("first line must be `# expect: <substring>`")?;
    let errors: ConfigErrors = match load_with_env(path, &[]) {
        Ok(_) => return Err("was accepted".into()),
        Err(errors) => errors,
    };
    let Some(error) = errors
        .errors()
        .iter()
        .find(|e| e.to_string().contains(expected))
    else {
        return Err(format!("no error contains {expected:?}; got:\n{errors}"));
    };
    let Some(line) = error.line else {
        return Err(format!("the error has no line: {error}"));
    };
    let prefix = format!("{}:{line}: ", path.display());
    if !error.to_string().starts_with(&prefix) {
        return Err(format!("the error does not start with {prefix:?}: {error}"));
    }
    // Line 1 is the `# expect:` comment; the error must point into the configuration.
    let line_count = text.lines().count();
    if !(2..=line_count).contains(&line) {
        return Err(format!(
            "line {line} is outside the configuration (2..={line_count}): {error}"
        ));
    }
    Ok(())
}

#[test]
fn every_corpus_file_fails_with_its_expected_error_and_a_line() {
    let dir = repo_file("tests/config_corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "corpus has only {} files", files.len());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            check_corpus_file(path)
                .err()
                .map(|why| format!("{}: {why}", path.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} corpus files misbehave:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_errors_point_at_the_offending_key() {
    // Spot checks of the exact line, beyond "some line".
    let cases = [
        ("unknown_key.toml", "camera[0].video.colour", 7),
        (
            "fragment_duration_too_long.toml",
            "camera[0].fragment.duration_ms",
            6,
        ),
        ("metadata_aws_prefix.toml", "camera[0].metadata.AWS_SITE", 6),
        ("two_cameras_one_stream.toml", "camera[1].stream", 8),
        ("hardware_1080p60.toml", "camera[0].video.framerate", 9),
        (
            "iot_missing_fields.toml",
            "aws.credentials.iot.cert_path",
            5,
        ),
        ("http_endpoint_not_loopback.toml", "aws.endpoint", 3),
    ];
    for (file, key, line) in cases {
        let path = repo_file("tests/config_corpus").join(file);
        let errors = load_with_env(&path, &[]).expect_err(file);
        assert!(
            errors
                .errors()
                .iter()
                .any(|e| e.path == key && e.line == Some(line)),
            "{file}: expected {key} at line {line}:\n{errors}"
        );
    }
}
