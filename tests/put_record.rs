//! `kinesis-edge put-record` against the local endpoint's Kinesis Data Streams side: exit 0 only
//! once the record is stored, a clear reason and exit 1 otherwise.

use std::process::{Command, Output};

use kinesis_edge::local::kvs::{LocalEndpoint, LocalEndpointConfig};

fn put_record(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kinesis-edge"));
    command
        .arg("put-record")
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-west-2")
        .env("AWS_ACCESS_KEY_ID", "AKIDPUTRECORDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "put-record-test-secret")
        .env_remove("AWS_PROFILE")
        .env("HOME", "/nonexistent");
    match stdin {
        None => command.output().expect("run kinesis-edge"),
        Some(bytes) => {
            use std::io::Write;
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run kinesis-edge");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(bytes)
                .expect("write stdin");
            child.wait_with_output().expect("wait")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_record_exits_zero_once_stored_and_explains_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = LocalEndpoint::start(LocalEndpointConfig::new(dir.path()))
        .await
        .expect("start the local endpoint");
    assert!(endpoint.kds().create_stream("edge-telemetry", 2));
    let url = endpoint.url();

    let stored = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let text = put_record(
                &url,
                &[
                    "--stream",
                    "edge-telemetry",
                    "--partition-key",
                    "cam-1",
                    "--data",
                    "hello",
                ],
                None,
            );
            let piped = put_record(
                &url,
                &[
                    "--stream",
                    "edge-telemetry",
                    "--partition-key",
                    "cam-2",
                    "--file",
                    "-",
                ],
                Some(b"\x00binary\xff"),
            );
            (text, piped)
        })
        .await
        .expect("join")
    };
    for output in [&stored.0, &stored.1] {
        assert!(
            output.status.success(),
            "put-record failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("stored in shardId-") && stdout.contains("sequence number"),
            "{stdout}"
        );
    }
    assert_eq!(endpoint.kds().stats().records_stored, 2);

    let failures = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            (
                put_record(
                    &url,
                    &[
                        "--stream",
                        "missing",
                        "--partition-key",
                        "k",
                        "--data",
                        "x",
                        "--timeout",
                        "2",
                    ],
                    None,
                ),
                put_record(
                    &url,
                    &[
                        "--stream",
                        "edge-telemetry",
                        "--partition-key",
                        "",
                        "--data",
                        "x",
                    ],
                    None,
                ),
                put_record(
                    &url,
                    &["--stream", "edge-telemetry", "--partition-key", "k"],
                    None,
                ),
            )
        })
        .await
        .expect("join")
    };
    let (missing, empty_key, no_data) = failures;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("ResourceNotFoundException"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert_eq!(empty_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty_key.stderr).contains("partition key"));
    assert_eq!(no_data.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_data.stderr).contains("--data"));
    assert_eq!(
        endpoint.kds().stats().records_stored,
        2,
        "nothing else stored"
    );
    endpoint.shutdown().await;
}
