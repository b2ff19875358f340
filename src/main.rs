//! The `kinesis-edge` binary: command-line parsing and exit codes. Everything else lives in the
//! library; this is the only place that uses `anyhow`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kinesis_edge::config::LogFormat;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Camera producer daemon: captures H.264/AAC through GStreamer, muxes Matroska fragments as
/// Amazon Kinesis Video Streams ingests them, and uploads them from a durable buffer.
#[derive(Debug, Parser)]
#[command(name = "kinesis-edge", version, propagate_version = true)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or target=level pairs, e.g.
    /// `warn,kinesis_edge=debug`. Default: `service.log_level` for `run`, else `info`.
    #[arg(long, global = true, env = "KINESIS_EDGE_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream every configured camera to its Kinesis video stream until SIGTERM or SIGINT.
    ///
    /// Fragments are buffered in memory and on disk until Kinesis Video Streams has persisted
    /// them, so capture goes on while offline. On SIGTERM/SIGINT the open fragment is closed and
    /// what is buffered is uploaded within `service.shutdown_timeout_s`; the rest stays on disk
    /// for the next start. A second signal stops at once. Under systemd (Type=notify) it reports
    /// readiness, feeds the watchdog and reports stopping.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file (and its KINESIS_EDGE__* environment overrides).
    ///
    /// Prints every error with the key and line it concerns and exits with 78 (EX_CONFIG) when
    /// the configuration is invalid, 0 when it is valid.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the V4L2 video devices: driver, card, formats, frame sizes and rates, whether the
    /// camera emits H.264 itself, and its stable /dev/v4l/by-id path.
    ///
    /// Finding no camera is not an error.
    Devices,
    /// Record one camera into a Matroska file holding exactly the fragments the uploader sends.
    ///
    /// The file is what Kinesis Video Streams would receive for the same frames: the stream
    /// header once, then per fragment its tags and one cluster opening on a key frame.
    Record {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The camera's `name` in the configuration; the first camera when omitted.
        #[arg(long)]
        camera: Option<String>,
        /// How many seconds of media to record.
        #[arg(long, value_parser = parse_seconds)]
        duration: std::time::Duration,
        /// Where to write the Matroska file (overwritten if it exists).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Put one record into a Kinesis data stream, for scripts.
    ///
    /// Sends through the daemon's producer code (shard map, limits, retries, error classes) and
    /// exits 0 only once the service has taken the record; otherwise it prints the reason and
    /// exits 1. Region, endpoint and credentials come from --config when given (its [aws]
    /// section and telemetry.endpoint), else from the standard AWS environment variables and
    /// profile files.
    PutRecord {
        /// The Kinesis data stream.
        #[arg(long)]
        stream: String,
        /// The partition key (1 to 256 characters); it picks the shard.
        #[arg(long)]
        partition_key: String,
        /// The record's data, as text.
        #[arg(long, group = "input")]
        data: Option<String>,
        /// Read the record's data from a file ("-" reads standard input).
        #[arg(long, group = "input")]
        file: Option<PathBuf>,
        /// A kinesis-edge configuration to take region, endpoint and credentials from.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, value_parser = parse_seconds, default_value = "30")]
        timeout: std::time::Duration,
    },
    /// Serve Kinesis Video Streams and Kinesis Data Streams on a loopback address, for trying
    /// and testing without an AWS account (stores each video stream as a playable MKV file).
    #[cfg(feature = "local-endpoint")]
    LocalEndpoint(kinesis_edge::local::kvs::LocalEndpointArgs),
}

fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text} s is outside 0 < seconds <= 86400"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command, cli.log) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to standard error (journald takes it from there under systemd), as text or one JSON
/// object per line.
fn init_logging(filter: &str, format: LogFormat) {
    let targets: Targets = filter.parse().unwrap_or_else(|error| {
        eprintln!("warning: log filter {filter:?} is not valid ({error}); using \"info\"");
        Targets::new().with_default(tracing::Level::INFO)
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.finish().with(targets).try_init(),
        LogFormat::Json => builder.json().finish().with(targets).try_init(),
    };
    if let Err(error) = installed {
        eprintln!("warning: logging not set up: {error}");
    }
}

fn run(command: Command, log: Option<String>) -> anyhow::Result<ExitCode> {
    if !matches!(command, Command::Run { .. }) {
        init_logging(log.as_deref().unwrap_or("info"), LogFormat::Text);
    }
    match command {
        Command::Run { config } => {
            let config = match kinesis_edge::config::load(&config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            init_logging(
                log.as_deref().unwrap_or(&config.service.log_level),
                config.service.log_format,
            );
            // One worker: capture, muxing and the buffers' disk I/O run on their own threads, so
            // the runtime only moves bytes to sockets. A second worker mostly wakes to find
            // nothing to steal: with one, the producer benchmark used about a quarter less CPU
            // (BENCHMARKS.md). Multi-thread still, so `block_on` and the worker stay apart.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("kinesis-edge")
                .enable_all()
                .build()?;
            let summary = runtime.block_on(kinesis_edge::service::run::run(&config))?;
            for camera in &summary.cameras {
                println!(
                    "camera {}: stream {}: frames_muxed={} fragments={} frames_dropped={} \
                     recovered_fragments={} fragments_sent={} fragments_acked={} \
                     fragments_skipped={} fragments_left={} fragments_evicted={} connections={}",
                    camera.camera,
                    camera.stream,
                    camera.capture.frames_muxed,
                    camera.capture.fragments,
                    camera.capture.frames_dropped,
                    camera.recovered_fragments,
                    camera.upload.fragments_sent,
                    camera.upload.fragments_acked,
                    camera.upload.fragments_skipped,
                    camera.upload.fragments_left,
                    camera.fragments_evicted,
                    camera.upload.connections,
                );
            }
            // The runtime's blocking pool may still hold a capture thread's last wait.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => Ok(check_config(&config)),
        Command::PutRecord {
            stream,
            partition_key,
            data,
            file,
            config,
            timeout,
        } => {
            let config = match config.as_deref().map(kinesis_edge::config::load) {
                None => None,
                Some(Ok(config)) => Some(config),
                Some(Err(errors)) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let data = match (data, file) {
                (Some(text), None) => text.into_bytes(),
                (None, Some(path)) if path.as_os_str() == "-" => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                        .context("reading the record from standard input")?;
                    bytes
                }
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("reading the record from {}", path.display()))?,
                _ => anyhow::bail!(
                    "give the record's data with --data TEXT or --file PATH (- for standard input)"
                ),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let outcome = runtime.block_on(kinesis_edge::service::put_record::put_record(
                config.as_ref(),
                kinesis_edge::service::put_record::PutRecordRequest {
                    stream,
                    partition_key,
                    data: data.into(),
                    timeout,
                },
            ))?;
            println!(
                "stored in {} with sequence number {} ({} request{})",
                outcome.shard_id,
                outcome.sequence_number,
                outcome.attempts,
                if outcome.attempts == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "local-endpoint")]
        Command::LocalEndpoint(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(kinesis_edge::local::kvs::run_cli(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices => {
            let devices = kinesis_edge::capture::list_devices()?;
            if devices.is_empty() {
                println!("no cameras found (no /dev/video* device)");
            }
            for device in devices {
                println!("{device}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Record {
            config,
            camera,
            duration,
            output,
        } => {
            let config = match kinesis_edge::config::load(&config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let summary = runtime.block_on(kinesis_edge::service::record::record(
                &config,
                camera.as_deref(),
                duration,
                &output,
            ))?;
            println!(
                "wrote {}: {} fragments, {} frames, {} bytes",
                output.display(),
                summary.fragments,
                summary.frames,
                summary.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// EX_CONFIG from sysexits.h: the configuration is wrong, restarting will not help.
const EXIT_CONFIG: u8 = 78;

fn check_config(path: &std::path::Path) -> ExitCode {
    match kinesis_edge::config::load(path) {
        Ok(config) => {
            println!(
                "{}: valid ({} camera{})",
                path.display(),
                config.camera.len(),
                if config.camera.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
