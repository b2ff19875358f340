//! Shared helpers for the telemetry integration tests: external Kinesis stand-ins (moto,
//! kinesalite) started on a free loopback port and killed on drop, the `aws-kinesis-agg`
//! de-aggregation script, and client construction.
#![allow(dead_code)] // each test binary uses a different subset

use kinesis_edge::aws::{ClockSkew, Credentials, CredentialsCache, StaticProvider};
use kinesis_edge::telemetry::{ClientSettings, KdsClient, StreamRef};
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The python script beside this file.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kds_agg.py")
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// A server process killed (SIGKILL) and reaped on drop.
pub struct ExternalServer {
    pub name: &'static str,
    pub port: u16,
    child: Child,
}

impl ExternalServer {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ExternalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(
    child: &mut Child,
    name: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited early with {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{name} did not open port {port} within {timeout:?}"
    ))
}

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure the Python packages are importable, installing them with pip if needed.
/// `Err` carries the reason when they cannot be installed.
pub fn ensure_python(modules: &str, packages: &[&str]) -> Result<(), String> {
    if python_has(modules) {
        return Ok(());
    }
    let output = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(packages)
        .output()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !output.status.success() || !python_has(modules) {
        return Err(format!(
            "pip install {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// Python with boto3 and aws-kinesis-agg, for reading back and de-aggregating.
pub fn ensure_aggregation_tools() -> Result<(), String> {
    ensure_python(
        "aws_kinesis_agg.deaggregator, boto3",
        &["aws-kinesis-agg", "boto3"],
    )
}

/// Starts `moto_server` on a free port (installing `moto[server]` if needed).
pub fn start_moto() -> Result<ExternalServer, String> {
    ensure_python("moto.server, flask", &["moto[server]"])?;
    let port = free_port()?;
    let mut child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start moto_server: {e}"))?;
    match wait_for_port(&mut child, "moto_server", port, Duration::from_secs(30)) {
        Ok(()) => Ok(ExternalServer {
            name: "moto",
            port,
            child,
        }),
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(reason)
        }
    }
}

/// Where kinesalite is installed: `$KINESALITE_DIR`, else `target/tmp/kinesalite` (installed
/// there with npm on first use).
fn kinesalite_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("KINESALITE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kinesalite");
    if dir.join("node_modules/kinesalite/package.json").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let output = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg("kinesalite@3.3.3")
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !output.status.success() || !dir.join("node_modules/kinesalite/package.json").exists() {
        return Err(format!(
            "npm install kinesalite@3.3.3 failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(dir)
}

/// Starts kinesalite on 127.0.0.1 and a free port (its CLI has no host flag, so it is started
/// through the library call).
pub fn start_kinesalite() -> Result<ExternalServer, String> {
    let dir = kinesalite_dir()?;
    let port = free_port()?;
    let module = dir.join("node_modules/kinesalite");
    let script = format!(
        "require({:?})({{createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 50}}).listen({port}, '127.0.0.1')",
        module.display().to_string()
    );
    let mut child = Command::new("node")
        .args(["-e", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start node: {e}"))?;
    match wait_for_port(&mut child, "kinesalite", port, Duration::from_secs(30)) {
        Ok(()) => Ok(ExternalServer {
            name: "kinesalite",
            port,
            child,
        }),
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(reason)
        }
    }
}

/// Static test credentials behind a cache.
pub fn credentials() -> CredentialsCache {
    let provider = Arc::new(StaticProvider::new(Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        None,
    )));
    CredentialsCache::new(provider, Duration::from_secs(60))
}

/// A client for `stream` at `endpoint` with a short request timeout.
pub fn client_with(
    endpoint: &str,
    stream: &str,
    credentials: CredentialsCache,
    timeout: Duration,
) -> KdsClient {
    KdsClient::new(
        &ClientSettings {
            endpoint: endpoint.to_owned(),
            region: "us-east-1".into(),
            request_timeout: timeout,
            connect_timeout: Duration::from_secs(2),
        },
        StreamRef {
            name: stream.to_owned(),
            arn: None,
        },
        credentials,
        ClockSkew::new(),
    )
    .unwrap_or_else(|e| panic!("client for {endpoint}: {e}"))
}

/// A client with static credentials and a 5 s timeout.
pub fn client(endpoint: &str, stream: &str) -> KdsClient {
    client_with(endpoint, stream, credentials(), Duration::from_secs(5))
}

/// One sub-record as aws-kinesis-agg returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

fn sub_from_json(value: &Value) -> SubRecord {
    use base64::Engine as _;
    SubRecord {
        partition_key: value["pk"].as_str().unwrap_or_default().to_owned(),
        explicit_hash_key: value["ehk"].as_str().map(str::to_owned),
        data: base64::engine::general_purpose::STANDARD
            .decode(value["data"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("script returned bad base64: {e}")),
    }
}

/// De-aggregates many Kinesis records (outer key, data) in one python process.
pub fn deaggregate_with_python(records: &[(String, Vec<u8>)]) -> Vec<(bool, Vec<SubRecord>)> {
    use base64::Engine as _;
    let mut child = Command::new("python3")
        .arg(script())
        .arg("deagg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    let input: String = records
        .iter()
        .map(|(pk, data)| {
            let line = serde_json::json!({
                "pk": pk,
                "data": base64::engine::general_purpose::STANDARD.encode(data),
            });
            format!("{line}\n")
        })
        .collect();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("script failed: {e}"));
    let _ = writer.join();
    assert!(
        output.status.success(),
        "kds_agg.py deagg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line}: {e}"));
            let subs = value["records"]
                .as_array()
                .map(|a| a.iter().map(sub_from_json).collect())
                .unwrap_or_default();
            (value["aggregated"].as_bool().unwrap_or(false), subs)
        })
        .collect()
}

/// A shard as read back.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    pub id: String,
    pub start: u128,
    pub end: u128,
}

/// A sub-record as read back, with the shard that stored it.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub shard: String,
    pub sequence: String,
    pub aggregated: bool,
    pub sub: SubRecord,
}

/// Reads every record of `stream` back with boto3 and de-aggregates with aws-kinesis-agg.
pub fn read_back(endpoint: &str, stream: &str) -> (Vec<ShardInfo>, Vec<ReadRecord>) {
    let output = Command::new("python3")
        .arg(script())
        .args(["readback", "--endpoint", endpoint, "--stream", stream])
        .output()
        .unwrap_or_else(|e| panic!("cannot run readback: {e}"));
    assert!(
        output.status.success(),
        "readback failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("readback output: {e}"));
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<u128>().ok())
            .unwrap_or_else(|| panic!("bad hash key {v}"))
    };
    let shards = value["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| ShardInfo {
                    id: s["id"].as_str().unwrap_or_default().to_owned(),
                    start: parse(&s["start"]),
                    end: parse(&s["end"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let records = value["records"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| ReadRecord {
                    shard: r["shard"].as_str().unwrap_or_default().to_owned(),
                    sequence: r["seq"].as_str().unwrap_or_default().to_owned(),
                    aggregated: r["aggregated"].as_bool().unwrap_or(false),
                    sub: sub_from_json(r),
                })
                .collect()
        })
        .unwrap_or_default();
    (shards, records)
}

/// A test that cannot run because an external tool is missing: fails when
/// `KINESIS_EDGE_REQUIRE_TOOLS` is set (scripts/test.sh and CI set it, after installing every
/// tool), otherwise prints why it is skipped.
pub fn skip(reason: &str) {
    if std::env::var_os("KINESIS_EDGE_REQUIRE_TOOLS").is_some() {
        panic!("required test tool missing: {reason}");
    }
    println!("SKIPPED: {reason}");
}
