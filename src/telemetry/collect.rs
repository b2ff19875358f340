//! Collection: every interval, one JSON record for the device and one per camera.
//!
//! Device facts come from `/proc` and `/sys` (load, CPU busy share, CPU temperature where a
//! thermal zone exists, memory, uptime, default route) and `statvfs` (disk free). Camera facts
//! come from [`CameraCounters`]: atomics the capture, buffer and upload modules bump on their
//! own paths (a relaxed atomic add, nothing more), and that collection only reads. So
//! collection adds no work and no lock to the frame path.
//!
//! Invariants: a missing or unreadable source yields an absent field (`null`), never an error
//! that stops the other facts; parsers take text and never panic on odd input; partition keys
//! are built from a template and always valid (1..=256 characters).

use super::TelemetryError;
use super::record::{MAX_PARTITION_KEY_CHARS, UserRecord};
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

/// What the uploader is doing, as camera records report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Not started or nothing to send.
    Idle,
    /// Opening a connection.
    Connecting,
    /// Sending live.
    Streaming,
    /// Sending the backlog after an outage.
    CatchingUp,
    /// Waiting to retry.
    Backoff,
    /// Paused until an operator fixes something.
    Paused,
}

impl UploadState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => UploadState::Connecting,
            2 => UploadState::Streaming,
            3 => UploadState::CatchingUp,
            4 => UploadState::Backoff,
            5 => UploadState::Paused,
            _ => UploadState::Idle,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            UploadState::Idle => 0,
            UploadState::Connecting => 1,
            UploadState::Streaming => 2,
            UploadState::CatchingUp => 3,
            UploadState::Backoff => 4,
            UploadState::Paused => 5,
        }
    }
}

/// Counters one camera pipeline keeps. Writers use `Relaxed` adds and stores; a snapshot is
/// not atomic across fields, which is fine for health reporting.
#[derive(Debug, Default)]
pub struct CameraCounters {
    /// Frames taken from the capture pipeline (total).
    pub frames_captured: AtomicU64,
    /// Frames dropped anywhere before the buffer (total).
    pub frames_dropped: AtomicU64,
    /// Encoded bytes captured (total; the bitrate is derived from it).
    pub bytes_captured: AtomicU64,
    /// Fragments currently in the buffer (gauge).
    pub fragments_buffered: AtomicU64,
    /// Fragments sent (total).
    pub fragments_sent: AtomicU64,
    /// Fragments the service persisted (total).
    pub fragments_persisted: AtomicU64,
    /// Fragments evicted unsent or unacknowledged because the buffer was full (total).
    pub fragments_evicted: AtomicU64,
    /// Buffer bytes in memory (gauge).
    pub buffer_bytes_memory: AtomicU64,
    /// Buffer bytes on disk (gauge).
    pub buffer_bytes_disk: AtomicU64,
    /// Unix ms when the oldest unacknowledged fragment was produced; 0 when none (gauge).
    pub oldest_unacked_unix_ms: AtomicU64,
    /// Milliseconds between sending a fragment and its last ACK (gauge).
    pub last_ack_latency_ms: AtomicU64,
    /// Error ACKs received (total).
    pub error_acks: AtomicU64,
    upload_state: AtomicU8,
}

impl CameraCounters {
    /// Sets the upload state.
    pub fn set_upload_state(&self, state: UploadState) {
        self.upload_state.store(state.as_u8(), Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> CameraSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CameraSnapshot {
            frames_captured: get(&self.frames_captured),
            frames_dropped: get(&self.frames_dropped),
            bytes_captured: get(&self.bytes_captured),
            fragments_buffered: get(&self.fragments_buffered),
            fragments_sent: get(&self.fragments_sent),
            fragments_persisted: get(&self.fragments_persisted),
            fragments_evicted: get(&self.fragments_evicted),
            buffer_bytes_memory: get(&self.buffer_bytes_memory),
            buffer_bytes_disk: get(&self.buffer_bytes_disk),
            oldest_unacked_unix_ms: get(&self.oldest_unacked_unix_ms),
            last_ack_latency_ms: get(&self.last_ack_latency_ms),
            error_acks: get(&self.error_acks),
            upload_state: UploadState::from_u8(self.upload_state.load(Ordering::Relaxed)),
        }
    }
}

/// A copy of [`CameraCounters`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraSnapshot {
    /// See [`CameraCounters::frames_captured`].
    pub frames_captured: u64,
    /// See [`CameraCounters::frames_dropped`].
    pub frames_dropped: u64,
    /// See [`CameraCounters::bytes_captured`].
    pub bytes_captured: u64,
    /// See [`CameraCounters::fragments_buffered`].
    pub fragments_buffered: u64,
    /// See [`CameraCounters::fragments_sent`].
    pub fragments_sent: u64,
    /// See [`CameraCounters::fragments_persisted`].
    pub fragments_persisted: u64,
    /// See [`CameraCounters::fragments_evicted`].
    pub fragments_evicted: u64,
    /// See [`CameraCounters::buffer_bytes_memory`].
    pub buffer_bytes_memory: u64,
    /// See [`CameraCounters::buffer_bytes_disk`].
    pub buffer_bytes_disk: u64,
    /// See [`CameraCounters::oldest_unacked_unix_ms`].
    pub oldest_unacked_unix_ms: u64,
    /// See [`CameraCounters::last_ack_latency_ms`].
    pub last_ack_latency_ms: u64,
    /// See [`CameraCounters::error_acks`].
    pub error_acks: u64,
    /// The upload state.
    pub upload_state: UploadState,
}

/// Load averages from `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadAverage {
    /// 1-minute.
    pub one: f64,
    /// 5-minute.
    pub five: f64,
    /// 15-minute.
    pub fifteen: f64,
}

/// Parses `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    Some(LoadAverage {
        one: fields.next()?.ok()?,
        five: fields.next()?.ok()?,
        fifteen: fields.next()?.ok()?,
    })
}

/// Aggregate CPU jiffies from the `cpu` line of `/proc/stat`: (busy, total).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Memory from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// MemTotal.
    pub total_bytes: u64,
    /// MemAvailable (MemFree on old kernels).
    pub available_bytes: u64,
}

/// Parses `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let mut fields: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(name), Some(value)) = (parts.next(), parts.next())
            && let Ok(value) = value.parse::<u64>()
        {
            fields.insert(name.trim_end_matches(':'), value.saturating_mul(1024));
        }
    }
    Some(Memory {
        total_bytes: *fields.get("MemTotal")?,
        available_bytes: fields
            .get("MemAvailable")
            .or_else(|| fields.get("MemFree"))
            .copied()?,
    })
}

/// Seconds since boot from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// True when `/proc/net/route` has a default route (destination 0 on an up interface).
pub fn has_default_route(text: &str) -> bool {
    text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let up = fields
            .get(3)
            .and_then(|f| u16::from_str_radix(f, 16).ok())
            .is_some_and(|flags| flags & 1 != 0);
        fields.get(1) == Some(&"00000000") && up
    })
}

/// Degrees Celsius of the CPU from `/sys/class/thermal`: the first zone whose type names the
/// CPU or SoC, else the first readable zone.
pub fn read_cpu_temperature(sys_root: &Path) -> Option<f64> {
    let entries = std::fs::read_dir(sys_root.join("class/thermal")).ok()?;
    let mut zones: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"))
        })
        .collect();
    zones.sort();
    let read = |zone: &PathBuf| -> Option<(String, f64)> {
        let kind = std::fs::read_to_string(zone.join("type")).unwrap_or_default();
        let milli: f64 = std::fs::read_to_string(zone.join("temp"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some((kind.trim().to_ascii_lowercase(), milli / 1000.0))
    };
    let readings: Vec<(String, f64)> = zones.iter().filter_map(read).collect();
    readings
        .iter()
        .find(|(kind, _)| {
            ["cpu", "soc", "x86_pkg", "core"]
                .iter()
                .any(|k| kind.contains(k))
        })
        .or_else(|| readings.first())
        .map(|(_, celsius)| *celsius)
}

/// Free and total bytes of the file system holding `path`.
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let fragment = stat.f_frsize.max(1);
    Some((
        stat.f_bavail.saturating_mul(fragment),
        stat.f_blocks.saturating_mul(fragment),
    ))
}

/// Whether the device can reach the service, as known at collection time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reachability {
    /// A default route exists.
    pub default_route: bool,
    /// The last telemetry request got an answer from the service (`None`: none sent yet).
    pub service_answered: Option<bool>,
}

#[derive(Serialize)]
struct DeviceRecord<'a> {
    kind: &'static str,
    schema: u32,
    device_id: &'a str,
    time_unix_ms: u64,
    load: Option<LoadAverage>,
    cpu_busy_percent: Option<f64>,
    cpu_temperature_c: Option<f64>,
    memory: Option<Memory>,
    disk_free_bytes: Option<u64>,
    disk_total_bytes: Option<u64>,
    uptime_s: Option<f64>,
    network: Reachability,
}

#[derive(Serialize)]
struct CameraRecord<'a> {
    kind: &'static str,
    schema: u32,
    device_id: &'a str,
    camera: &'a str,
    time_unix_ms: u64,
    frames_captured: u64,
    frames_dropped: u64,
    bitrate_bps: Option<u64>,
    fragments_buffered: u64,
    fragments_sent: u64,
    fragments_persisted: u64,
    fragments_evicted: u64,
    buffer_bytes_memory: u64,
    buffer_bytes_disk: u64,
    oldest_unacked_age_ms: Option<u64>,
    last_ack_latency_ms: u64,
    upload_state: UploadState,
    error_acks: u64,
}

/// Where collection reads from and how it names records.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// The device id in every record.
    pub device_id: String,
    /// Partition key of the device record; `{device}` is replaced.
    pub device_key_template: String,
    /// Partition key of camera records; `{device}` and `{camera}` are replaced.
    pub camera_key_template: String,
    /// File system whose free space is reported (the buffer directory).
    pub disk_path: PathBuf,
    /// `/proc`, or a directory laid out like it (tests).
    pub proc_root: PathBuf,
    /// `/sys`, or a directory laid out like it (tests).
    pub sys_root: PathBuf,
    /// The stream's maximum record size.
    pub max_record_bytes: usize,
}

impl CollectorSettings {
    /// Defaults for `device_id`: keys `{device}` and `{device}/{camera}`, real `/proc` and `/sys`.
    pub fn new(device_id: impl Into<String>, disk_path: impl Into<PathBuf>) -> Self {
        CollectorSettings {
            device_id: device_id.into(),
            device_key_template: "{device}".into(),
            camera_key_template: "{device}/{camera}".into(),
            disk_path: disk_path.into(),
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            max_record_bytes: super::record::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Builds the periodic records.
pub struct Collector {
    settings: CollectorSettings,
    cameras: Vec<(String, Arc<CameraCounters>)>,
    previous_cpu: Option<(u64, u64)>,
    previous_bytes: HashMap<String, (Instant, u64)>,
}

fn partition_key(template: &str, device: &str, camera: &str) -> String {
    let key = template
        .replace("{device}", device)
        .replace("{camera}", camera);
    let key: String = key.chars().take(MAX_PARTITION_KEY_CHARS).collect();
    if key.is_empty() {
        "device".to_owned()
    } else {
        key
    }
}

impl Collector {
    /// A collector with no cameras yet.
    pub fn new(settings: CollectorSettings) -> Self {
        Collector {
            settings,
            cameras: Vec::new(),
            previous_cpu: None,
            previous_bytes: HashMap::new(),
        }
    }

    /// Registers a camera's counters (the pipeline keeps the other `Arc`).
    pub fn add_camera(&mut self, name: impl Into<String>, counters: Arc<CameraCounters>) {
        self.cameras.push((name.into(), counters));
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.settings.proc_root.join(name)).ok()
    }

    /// One device record and one record per camera, at `now` / `time_unix_ms`.
    pub fn collect(
        &mut self,
        now: Instant,
        time_unix_ms: u64,
        service_answered: Option<bool>,
    ) -> Result<Vec<UserRecord>, TelemetryError> {
        let cpu = self.read("stat").as_deref().and_then(parse_proc_stat);
        let cpu_busy_percent = match (self.previous_cpu, cpu) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                Some(100.0 * busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64)
            }
            _ => None,
        };
        if cpu.is_some() {
            self.previous_cpu = cpu;
        }
        let disk = disk_space(&self.settings.disk_path);
        let device = DeviceRecord {
            kind: "device",
            schema: 1,
            device_id: &self.settings.device_id,
            time_unix_ms,
            load: self.read("loadavg").as_deref().and_then(parse_loadavg),
            cpu_busy_percent,
            cpu_temperature_c: read_cpu_temperature(&self.settings.sys_root),
            memory: self.read("meminfo").as_deref().and_then(parse_meminfo),
            disk_free_bytes: disk.map(|d| d.0),
            disk_total_bytes: disk.map(|d| d.1),
            uptime_s: self.read("uptime").as_deref().and_then(parse_uptime),
            network: Reachability {
                default_route: self
                    .read("net/route")
                    .as_deref()
                    .is_some_and(has_default_route),
                service_answered,
            },
        };
        let max = self.settings.max_record_bytes;
        let mut records = Vec::with_capacity(1 + self.cameras.len());
        let key = partition_key(
            &self.settings.device_key_template,
            &self.settings.device_id,
            "",
        );
        let json = serde_json::to_vec(&device).map_err(|e| TelemetryError::NotDelivered {
            reason: format!("device record does not serialize: {e}"),
        })?;
        records.push(UserRecord::new(key, None, Bytes::from(json), max)?);
        for (name, counters) in &self.cameras {
            let snapshot = counters.snapshot();
            let bitrate_bps = match self.previous_bytes.get(name) {
                Some(&(then, bytes)) if now > then => {
                    let seconds = now.duration_since(then).as_secs_f64();
                    Some(
                        (snapshot.bytes_captured.saturating_sub(bytes) as f64 * 8.0 / seconds)
                            as u64,
                    )
                }
                _ => None,
            };
            self.previous_bytes
                .insert(name.clone(), (now, snapshot.bytes_captured));
            let record = CameraRecord {
                kind: "camera",
                schema: 1,
                device_id: &self.settings.device_id,
                camera: name,
                time_unix_ms,
                frames_captured: snapshot.frames_captured,
                frames_dropped: snapshot.frames_dropped,
                bitrate_bps,
                fragments_buffered: snapshot.fragments_buffered,
                fragments_sent: snapshot.fragments_sent,
                fragments_persisted: snapshot.fragments_persisted,
                fragments_evicted: snapshot.fragments_evicted,
                buffer_bytes_memory: snapshot.buffer_bytes_memory,
                buffer_bytes_disk: snapshot.buffer_bytes_disk,
                oldest_unacked_age_ms: (snapshot.oldest_unacked_unix_ms != 0)
                    .then(|| time_unix_ms.saturating_sub(snapshot.oldest_unacked_unix_ms)),
                last_ack_latency_ms: snapshot.last_ack_latency_ms,
                upload_state: snapshot.upload_state,
                error_acks: snapshot.error_acks,
            };
            let key = partition_key(
                &self.settings.camera_key_template,
                &self.settings.device_id,
                name,
            );
            let json = serde_json::to_vec(&record).map_err(|e| TelemetryError::NotDelivered {
                reason: format!("camera record does not serialize: {e}"),
            })?;
            records.push(UserRecord::new(key, None, Bytes::from(json), max)?);
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn proc_parsers_read_real_formats_and_survive_junk() {
        assert_eq!(
            parse_loadavg("3.63 3.16 1.74 7/126 17903\n"),
            Some(LoadAverage {
                one: 3.63,
                five: 3.16,
                fifteen: 1.74
            })
        );
        assert_eq!(parse_loadavg("x"), None);
        assert_eq!(
            parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n"),
            Some((150, 1000))
        );
        assert_eq!(parse_proc_stat("intr 5"), None);
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        12983668 kB\nMemAvailable:   23693896 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some(Memory {
                total_bytes: 24684084 * 1024,
                available_bytes: 23693896 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemFree: 5 kB"), None);
        assert_eq!(parse_uptime("1665.95 2035.61\n"), Some(1665.95));
        let route = "Iface\tDestination\tGateway\tFlags\nEth0\t00000000\t010200C0\t0003\neth0\t000200C0\t00000000\t0001\n";
        assert!(has_default_route(route));
        assert!(!has_default_route(
            "Iface\tDestination\tGateway\tFlags\neth0\t000200C0\t00000000\t0001\n"
        ));
    }

    #[test]
    fn collects_device_and_camera_records_from_a_fake_proc_and_sys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = dir.path().join("proc");
        let sys_root = dir.path().join("sys");
        std::fs::create_dir_all(proc_root.join("net")).expect("mkdir");
        std::fs::create_dir_all(sys_root.join("class/thermal/thermal_zone0")).expect("mkdir");
        std::fs::create_dir_all(sys_root.join("class/thermal/thermal_zone1")).expect("mkdir");
        let write = |path: PathBuf, text: &str| std::fs::write(path, text).expect("write");
        write(proc_root.join("loadavg"), "0.50 0.40 0.30 1/100 42\n");
        write(proc_root.join("stat"), "cpu  100 0 100 700 100 0 0 0\n");
        write(
            proc_root.join("meminfo"),
            "MemTotal: 1000 kB\nMemAvailable: 600 kB\n",
        );
        write(proc_root.join("uptime"), "12.5 20.0\n");
        write(
            proc_root.join("net/route"),
            "Iface Destination Gateway Flags\nwlan0 00000000 0101A8C0 0003\n",
        );
        write(
            sys_root.join("class/thermal/thermal_zone0/type"),
            "acpitz\n",
        );
        write(sys_root.join("class/thermal/thermal_zone0/temp"), "30000\n");
        write(
            sys_root.join("class/thermal/thermal_zone1/type"),
            "cpu-thermal\n",
        );
        write(sys_root.join("class/thermal/thermal_zone1/temp"), "48312\n");
        let settings = CollectorSettings {
            proc_root: proc_root.clone(),
            sys_root,
            ..CollectorSettings::new("pi-7", dir.path())
        };
        let mut collector = Collector::new(settings);
        let counters = Arc::new(CameraCounters::default());
        collector.add_camera("front-door", Arc::clone(&counters));
        let t0 = Instant::now();
        counters.frames_captured.fetch_add(30, Ordering::Relaxed);
        counters.bytes_captured.fetch_add(1_000, Ordering::Relaxed);
        counters
            .oldest_unacked_unix_ms
            .store(9_000, Ordering::Relaxed);
        counters.set_upload_state(UploadState::Streaming);
        let first = collector.collect(t0, 10_000, Some(true)).expect("records");
        assert_eq!(first.len(), 2);
        write(proc_root.join("stat"), "cpu  200 0 200 1400 200 0 0 0\n");
        counters
            .bytes_captured
            .fetch_add(500_000, Ordering::Relaxed);
        let records = collector
            .collect(t0 + Duration::from_secs(2), 12_000, Some(false))
            .expect("records");
        let device: serde_json::Value =
            serde_json::from_slice(records[0].data()).expect("device JSON");
        assert_eq!(records[0].partition_key(), "pi-7");
        assert_eq!(device["kind"], "device");
        assert_eq!(device["load"]["one"], 0.5);
        assert_eq!(device["cpu_busy_percent"], 20.0);
        assert_eq!(device["cpu_temperature_c"], 48.312);
        assert_eq!(device["memory"]["available_bytes"], 600 * 1024);
        assert_eq!(device["uptime_s"], 12.5);
        assert_eq!(device["network"]["default_route"], true);
        assert_eq!(device["network"]["service_answered"], false);
        assert!(device["disk_free_bytes"].as_u64().is_some());
        let camera: serde_json::Value =
            serde_json::from_slice(records[1].data()).expect("camera JSON");
        assert_eq!(records[1].partition_key(), "pi-7/front-door");
        assert_eq!(camera["frames_captured"], 30);
        assert_eq!(camera["bitrate_bps"], 2_000_000);
        assert_eq!(camera["oldest_unacked_age_ms"], 3_000);
        assert_eq!(camera["upload_state"], "streaming");
    }

    #[test]
    fn missing_sources_give_nulls_and_keys_stay_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = CollectorSettings {
            proc_root: dir.path().join("none"),
            sys_root: dir.path().join("none"),
            device_key_template: "{device}".into(),
            ..CollectorSettings::new("d".repeat(300), dir.path())
        };
        let mut collector = Collector::new(settings);
        let records = collector.collect(Instant::now(), 1, None).expect("records");
        let device: serde_json::Value = serde_json::from_slice(records[0].data()).expect("JSON");
        assert!(device["load"].is_null());
        assert!(device["cpu_temperature_c"].is_null());
        assert_eq!(records[0].partition_key().chars().count(), 256);
    }
}
