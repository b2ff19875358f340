//! One local endpoint serving both Kinesis services: the library entry point for tests
//! ([`LocalEndpoint::start`]) and the `kinesis-edge local-endpoint` command ([`run_cli`]).
//!
//! Invariants: it binds a loopback address only; the data directory exists before the first
//! request; stopping it ends every PutMedia connection, then the listener.

use super::faults::{FaultError, FaultRequest};
use super::{KvsHandler, KvsSettings};
use crate::aws::{Credentials, Secret};
use crate::local::kds::KdsHandler;
use crate::local::{ConnectionGate, Handler, LocalError, LocalServer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalEndpointConfig {
    /// Loopback address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Keys whose SigV4 signatures are accepted; empty: signatures are not checked.
    pub credentials: Vec<Credentials>,
    /// Signatures must be scoped to this region (any when `None`).
    pub signing_region: Option<String>,
    /// The Kinesis Video Streams side (data directory, delays, limits).
    pub kvs: KvsSettings,
    /// Faults armed at start.
    pub faults: FaultRequest,
    /// Streams to create at start (name, retention hours).
    pub streams: Vec<(String, u64)>,
    /// Kinesis data streams to create at start (name, shard count).
    pub data_streams: Vec<(String, u32)>,
}

impl LocalEndpointConfig {
    /// `127.0.0.1:0`, storing in `data_dir`, no signature checks, no faults.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials: Vec::new(),
            signing_region: None,
            kvs: KvsSettings::new(data_dir),
            faults: FaultRequest::default(),
            streams: Vec::new(),
            data_streams: Vec::new(),
        }
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalEndpointError {
    /// The server could not listen.
    #[error(transparent)]
    Listen(#[from] LocalError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The initial faults are not valid.
    #[error(transparent)]
    Faults(#[from] FaultError),
    /// An initial stream could not be created.
    #[error("cannot create stream {name}: {message}")]
    Stream {
        /// The stream.
        name: String,
        /// Why.
        message: String,
    },
    /// Command-line arguments that do not fit together.
    #[error("{0}")]
    Arguments(String),
    /// Waiting for a stop signal failed.
    #[error("cannot wait for a stop signal: {0}")]
    Signal(std::io::Error),
}

/// A running local endpoint (Kinesis Video Streams and Kinesis Data Streams).
pub struct LocalEndpoint {
    server: LocalServer,
    kvs: Arc<KvsHandler>,
    kds: Arc<KdsHandler>,
}

impl std::fmt::Debug for LocalEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEndpoint")
            .field("addr", &self.server.addr())
            .field("kvs", &self.kvs)
            .finish()
    }
}

impl LocalEndpoint {
    /// Starts serving.
    pub async fn start(config: LocalEndpointConfig) -> Result<Self, LocalEndpointError> {
        let data_dir = config.kvs.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| LocalEndpointError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let gate = Arc::new(ConnectionGate::default());
        let kvs = KvsHandler::new(config.kvs, Arc::clone(&gate));
        if !config.credentials.is_empty() {
            kvs.require_signatures(config.credentials, config.signing_region);
        }
        kvs.inject(&config.faults)?;
        for (name, retention) in &config.streams {
            kvs.create_stream(name, *retention)
                .map_err(|e| LocalEndpointError::Stream {
                    name: name.clone(),
                    message: e.message,
                })?;
        }
        let kds = KdsHandler::new();
        for (name, shards) in &config.data_streams {
            // `false`: a stream of that name exists already, which is what was asked for.
            kds.create_stream(name, *shards);
        }
        let handlers: Vec<Arc<dyn Handler>> = vec![
            Arc::clone(&kvs) as Arc<dyn Handler>,
            Arc::clone(&kds) as Arc<dyn Handler>,
        ];
        let server = LocalServer::start_with_gate(config.listen, handlers, gate).await?;
        kvs.set_data_endpoint(&server.url());
        Ok(Self { server, kvs, kds })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`: the control-plane endpoint and the data endpoint.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The Kinesis Video Streams side: streams, faults, fragment records.
    pub fn kvs(&self) -> &Arc<KvsHandler> {
        &self.kvs
    }

    /// The Kinesis Data Streams side.
    pub fn kds(&self) -> &Arc<KdsHandler> {
        &self.kds
    }

    /// Ends every PutMedia connection, then stops listening.
    pub async fn shutdown(self) {
        self.kvs.shutdown();
        // Lets PutMedia tasks record what they hold before their connections are cut.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.server.stop().await;
    }
}

/// `kinesis-edge local-endpoint`: a stand-in for Kinesis Video Streams and Kinesis Data
/// Streams on 127.0.0.1, for trying kinesis-edge without an AWS account.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalEndpointArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:4566")]
    pub listen: SocketAddr,
    /// Where each stream's MKV file and fragment log are written.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Access key id whose signatures are accepted (with --secret-key); none: no checks.
    #[arg(long, requires = "secret_key")]
    pub access_key: Option<String>,
    /// Secret access key for --access-key.
    #[arg(
        long,
        env = "KINESIS_EDGE_LOCAL_SECRET_KEY",
        hide_env_values = true,
        requires = "access_key"
    )]
    pub secret_key: Option<String>,
    /// Session token the key must come with.
    #[arg(long, requires = "access_key")]
    pub session_token: Option<String>,
    /// Region signatures must be scoped to (any when absent); also used in ARNs.
    #[arg(long)]
    pub region: Option<String>,
    /// Streams to create at start, NAME or NAME:RETENTION_HOURS (default retention 24).
    #[arg(long = "stream", value_name = "NAME[:HOURS]")]
    pub streams: Vec<String>,
    /// Kinesis data streams to create at start, NAME or NAME:SHARDS (default 1 shard).
    #[arg(long = "data-stream", value_name = "NAME[:SHARDS]")]
    pub data_streams: Vec<String>,
    /// Milliseconds between RECEIVED and PERSISTED.
    #[arg(long, default_value_t = 50)]
    pub persist_delay_ms: u64,
    /// Seconds between IDLE ACKs while no data arrives.
    #[arg(long, default_value_t = 3.0)]
    pub idle_ack_interval_s: f64,
    /// Seconds without data before a PutMedia response ends.
    #[arg(long, default_value_t = 30.0)]
    pub idle_timeout_s: f64,
    /// Longest fragment accepted, seconds (ERROR 4002 beyond).
    #[arg(long, default_value_t = 20.0)]
    pub max_fragment_duration_s: f64,
    /// Faults to arm at start, as the JSON `POST /_local/kvs/faults` takes.
    #[arg(long)]
    pub faults: Option<String>,
}

fn seconds(name: &str, value: f64) -> Result<Duration, LocalEndpointError> {
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(LocalEndpointError::Arguments(format!(
            "--{name} {value} is outside 0 < seconds <= 86400"
        )))
    }
}

impl LocalEndpointArgs {
    /// The configuration these arguments describe.
    pub fn to_config(&self) -> Result<LocalEndpointConfig, LocalEndpointError> {
        let mut config = LocalEndpointConfig::new(&self.data_dir);
        config.listen = self.listen;
        if let (Some(access_key), Some(secret_key)) = (&self.access_key, &self.secret_key) {
            config.credentials.push(Credentials::new(
                access_key.clone(),
                secret_key.clone(),
                self.session_token.clone().map(Secret::new),
                None,
            ));
        } else if self.access_key.is_some() || self.secret_key.is_some() {
            return Err(LocalEndpointError::Arguments(
                "--access-key and --secret-key go together".to_owned(),
            ));
        }
        if let Some(region) = &self.region {
            config.signing_region = Some(region.clone());
            config.kvs.region = region.clone();
        }
        config.kvs.persist_delay = Duration::from_millis(self.persist_delay_ms);
        config.kvs.idle_ack_interval = seconds("idle-ack-interval-s", self.idle_ack_interval_s)?;
        config.kvs.idle_timeout = seconds("idle-timeout-s", self.idle_timeout_s)?;
        config.kvs.limits.max_fragment_duration =
            seconds("max-fragment-duration-s", self.max_fragment_duration_s)?;
        if let Some(json) = &self.faults {
            config.faults = FaultRequest::from_json(json.as_bytes())?;
            config.faults.validate()?;
        }
        for stream in &self.streams {
            let (name, hours) = match stream.split_once(':') {
                Some((name, hours)) => (
                    name,
                    hours.parse().map_err(|_| {
                        LocalEndpointError::Arguments(format!(
                            "--stream {stream}: {hours:?} is not a number of hours"
                        ))
                    })?,
                ),
                None => (stream.as_str(), 24),
            };
            config.streams.push((name.to_owned(), hours));
        }
        for stream in &self.data_streams {
            config.data_streams.push(data_stream(stream)?);
        }
        Ok(config)
    }
}

/// `NAME[:SHARDS]` of `--data-stream`: a name of 1–128 characters of `[a-zA-Z0-9_.-]` and
/// 1–500 shards (1 when absent).
fn data_stream(argument: &str) -> Result<(String, u32), LocalEndpointError> {
    let (name, shards) = match argument.split_once(':') {
        Some((name, shards)) => (
            name,
            shards
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| {
                    LocalEndpointError::Arguments(format!(
                        "--data-stream {argument}: {shards:?} is not a shard count from 1 to 500"
                    ))
                })?,
        ),
        None => (argument, 1),
    };
    let valid_name = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid_name {
        return Err(LocalEndpointError::Arguments(format!(
            "--data-stream {argument}: {name:?} is not a stream name (1-128 of a-z A-Z 0-9 _ . -)"
        )));
    }
    Ok((name.to_owned(), shards))
}

/// Runs the endpoint until SIGINT or SIGTERM.
pub async fn run_cli(args: LocalEndpointArgs) -> Result<(), LocalEndpointError> {
    let config = args.to_config()?;
    let checking = !config.credentials.is_empty();
    let endpoint = LocalEndpoint::start(config).await?;
    println!(
        "local endpoint on {url} (Kinesis Video Streams and Kinesis Data Streams); \
         fragments stored in {dir}; signatures {checks}",
        url = endpoint.url(),
        dir = args.data_dir.display(),
        checks = if checking { "checked" } else { "not checked" },
    );
    println!(
        "use AWS_ENDPOINT_URL={url}; faults: curl -X POST {url}/_local/kvs/faults -d '{{\"refuse_connections_s\": 10}}'",
        url = endpoint.url()
    );
    wait_for_stop().await?;
    endpoint.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop() -> Result<(), LocalEndpointError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(LocalEndpointError::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(LocalEndpointError::Signal),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_stop() -> Result<(), LocalEndpointError> {
    tokio::signal::ctrl_c()
        .await
        .map_err(LocalEndpointError::Signal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: LocalEndpointArgs,
    }

    #[test]
    fn arguments_become_a_configuration() {
        let cli = Cli::try_parse_from([
            "x",
            "--data-dir",
            "/tmp/d",
            "--access-key",
            "AK",
            "--secret-key",
            "SK",
            "--region",
            "eu-west-1",
            "--stream",
            "cam",
            "--stream",
            "door:0",
            "--faults",
            r#"{"clock_skew_s": 600}"#,
            "--data-stream",
            "telemetry",
            "--data-stream",
            "logs:4",
        ])
        .unwrap();
        let config = cli.args.to_config().unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 4566)));
        assert_eq!(config.credentials.len(), 1);
        assert_eq!(config.signing_region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            config.streams,
            vec![("cam".to_owned(), 24), ("door".to_owned(), 0)]
        );
        assert_eq!(config.faults.clock_skew_s, Some(600.0));
        assert_eq!(
            config.data_streams,
            vec![("telemetry".to_owned(), 1), ("logs".to_owned(), 4)]
        );
        for bad in ["t:0", "t:x", "t:501", ":2", "a b"] {
            let cli = Cli::try_parse_from(["x", "--data-dir", "d", "--data-stream", bad]).unwrap();
            assert!(
                cli.args.to_config().is_err(),
                "--data-stream {bad} accepted"
            );
        }
        assert!(Cli::try_parse_from(["x", "--data-dir", "d", "--access-key", "AK"]).is_err());
        let bad =
            Cli::try_parse_from(["x", "--data-dir", "d", "--faults", "{\"nope\": 1}"]).unwrap();
        assert!(bad.args.to_config().is_err());
        let bad = Cli::try_parse_from(["x", "--data-dir", "d", "--stream", "cam:x"]).unwrap();
        assert!(bad.args.to_config().is_err());
        let bad = Cli::try_parse_from(["x", "--data-dir", "d", "--idle-timeout-s", "0"]).unwrap();
        assert!(bad.args.to_config().is_err());
    }
}
