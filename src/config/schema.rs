//! The configuration schema: serde types, their documented defaults and a few derived values.
//!
//! Every struct denies unknown keys and fills missing keys from its `Default`, so a file only
//! states what differs from the defaults. The `DEFAULT_*` constants are the single source of the
//! defaults; `config/kinesis-edge.toml` repeats them and a test keeps the two equal.
//! Nothing here checks ranges: that is `validate`'s job, which reports every problem at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Region used when neither the file, `KINESIS_EDGE__AWS__REGION`, `AWS_REGION` nor
/// `AWS_DEFAULT_REGION` names one (the AWS SDKs and kvssink fall back to the same region).
pub const DEFAULT_REGION: &str = "us-west-2";
/// Video device used when a camera names none: the first V4L2 capture node.
pub const DEFAULT_VIDEO_DEVICE: &str = "/dev/video0";
/// 1280×720: what most USB and CSI cameras deliver natively at 30 fps.
pub const DEFAULT_WIDTH: u32 = 1280;
/// See [`DEFAULT_WIDTH`].
pub const DEFAULT_HEIGHT: u32 = 720;
/// Frames per second.
pub const DEFAULT_FRAMERATE: u32 = 30;
/// 2 Mbit/s: good 720p30 H.264 for surveillance scenes; kvssink assumes 4 Mbit/s at 1080p.
pub const DEFAULT_VIDEO_BITRATE_KBPS: u32 = 2000;
/// 48 kHz: the native rate of nearly every ALSA capture device, so no resampling.
pub const DEFAULT_SAMPLE_RATE: u32 = 48_000;
/// Mono: camera microphones are mono; stereo doubles the bitrate for nothing.
pub const DEFAULT_CHANNELS: u8 = 1;
/// 64 kbit/s AAC-LC: transparent for speech and ambient sound in mono.
pub const DEFAULT_AUDIO_BITRATE_KBPS: u32 = 64;
/// 2 s fragments: kvssink's default; the unit of ACK, replay and playback latency.
pub const DEFAULT_FRAGMENT_DURATION_MS: u32 = 2000;
/// Retention given to streams the daemon creates (kvssink's `retention-period` default).
pub const DEFAULT_RETENTION_HOURS: u32 = 2;
/// Memory tier per camera: several fragments at any sensible bitrate, small enough for a 512 MB board.
pub const DEFAULT_BUFFER_MEMORY_MB: u32 = 16;
/// Root of the disk tier; the buffer keeps one subdirectory per stream under it.
pub const DEFAULT_BUFFER_DIR: &str = "/var/lib/kinesis-edge/buffer";
/// Disk tier per camera: about 2¼ hours of 2 Mbit/s video during an outage.
pub const DEFAULT_BUFFER_DISK_MB: u32 = 2048;
/// Seconds between telemetry samples.
pub const DEFAULT_TELEMETRY_INTERVAL_S: u32 = 10;
/// Telemetry partition key template: keeps one device's camera records in order on one shard.
pub const DEFAULT_PARTITION_KEY: &str = "{device_id}/{camera}";
/// 5 MiB: the PutRecords request limit most accounts still have (10 MiB is the new ceiling).
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 5 * 1024 * 1024;
/// Where telemetry waits while the network is down.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/kinesis-edge/telemetry";
/// Telemetry spool budget: records are small, 64 MB holds days of samples.
pub const DEFAULT_SPOOL_MB: u32 = 64;
/// `tracing` filter directive used when the file names none.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Time the daemon gives in-flight fragments to be acknowledged on stop (systemd's
/// `TimeoutStopSec=` must be longer).
pub const DEFAULT_SHUTDOWN_TIMEOUT_S: u32 = 30;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Region, endpoint and credentials.
    pub aws: AwsConfig,
    /// One entry per camera (`[[camera]]`); each feeds its own Kinesis video stream.
    pub camera: Vec<CameraConfig>,
    /// Buffer budget applied to every camera unless the camera overrides it.
    pub buffer: BufferConfig,
    /// Device telemetry to Kinesis Data Streams.
    pub telemetry: TelemetryConfig,
    /// Daemon settings: identity, logging, metrics, shutdown.
    pub service: ServiceConfig,
}

/// `[aws]`: where and as whom the daemon talks to AWS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// AWS region of the streams, e.g. `eu-west-1`. Precedence: `KINESIS_EDGE__AWS__REGION`, this
    /// key, `AWS_REGION`, `AWS_DEFAULT_REGION`, then `us-west-2`.
    pub region: String,
    /// Control-plane endpoint override (`https://…`, or `http://` to a loopback host for local
    /// test services). `None`: the regional AWS endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How the daemon obtains AWS credentials.
    pub credentials: CredentialsConfig,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: DEFAULT_REGION.to_owned(),
            endpoint: None,
            credentials: CredentialsConfig::default(),
        }
    }
}

/// Where credentials come from (`source` in `[aws.credentials]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSource {
    /// Try in order: the static keys if given, the `AWS_*` environment variables, the shared
    /// profile, the credential file if `path` is given, IoT if `[aws.credentials.iot]` is given.
    #[default]
    Auto,
    /// `access_key_id` + `secret_access_key` (+ `session_token`) from this file.
    Static,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` at run time.
    Env,
    /// A profile of `~/.aws/credentials` / `~/.aws/config`.
    Profile,
    /// A KVS credential file rewritten by a sidecar (`CREDENTIALS <key> [<expiry>] <secret> [<token>]`).
    File,
    /// AWS IoT X.509 certificate exchanged for role-alias credentials.
    Iot,
}

impl CredentialSource {
    /// The lowercase TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Static => "static",
            Self::Env => "env",
            Self::Profile => "profile",
            Self::File => "file",
            Self::Iot => "iot",
        }
    }
}

/// `[aws.credentials]`: one flat table; which keys are required depends on `source`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// Credential source: `auto`, `static`, `env`, `profile`, `file` or `iot`.
    pub source: CredentialSource,
    /// Access key id (`static`; allowed with `auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key (`static`; allowed with `auto`). Never logged or printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary keys (`static`, optional). Never logged or printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
    /// Profile name (`profile`/`auto`). `None`: `AWS_PROFILE`, else `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// KVS credential file (`file`, required; `auto`, optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// AWS IoT credentials provider (`iot`, required; `auto`, optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iot: Option<IotCredentialsConfig>,
}

/// `[aws.credentials.iot]`: certificate-based credentials through an IoT role alias.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IotCredentialsConfig {
    /// Credentials endpoint host (`aws iot describe-endpoint --endpoint-type
    /// iot:CredentialProvider`), not the MQTT data endpoint. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Device certificate, PEM. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    /// Device private key, PEM. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
    /// CA bundle that signs the endpoint. `None`: the system and built-in roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<PathBuf>,
    /// Role alias whose role the credentials assume. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_alias: Option<String>,
    /// Thing name sent as `x-amzn-iot-thingname`; policies key on it. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_name: Option<String>,
}

/// A secret string. `Debug`, `Display` and `Serialize` print `<redacted>`, and deserializing a
/// value of the wrong type reports the type only, never the value. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

/// What a [`Secret`] prints instead of its value.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that needs it (request signing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Accepts strings only; every other type is rejected without echoing the value (serde's default
/// `invalid type` message would print it).
struct SecretVisitor;

const SECRET_TYPE_ERROR: &str =
    "invalid type: expected a string (the value is not shown: it is a secret; quote it)";

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::custom(SECRET_TYPE_ERROR))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(E::custom(SECRET_TYPE_ERROR))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(E::custom(SECRET_TYPE_ERROR))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::custom(SECRET_TYPE_ERROR))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(SECRET_TYPE_ERROR))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(SECRET_TYPE_ERROR))
    }
}

/// `[[camera]]`: one capture source feeding one Kinesis video stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// Unique camera name: 1–64 of `A-Z a-z 0-9 _ . -`. Names logs, metrics, telemetry and the
    /// environment overrides (`KINESIS_EDGE__CAMERA__<NAME>__…`). Required.
    pub name: String,
    /// Kinesis video stream name: 1–256 of `A-Z a-z 0-9 _ . -`. `None`: the camera's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Create the stream when it does not exist (needs `kinesisvideo:CreateStream`).
    pub create_stream: bool,
    /// Retention of a stream the daemon creates, hours (0 = no retention: fragments are
    /// acknowledged on receipt and not stored). 0–87600.
    pub retention_hours: u32,
    /// KMS key for a stream the daemon creates. `None`: the KVS-managed key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Tags put on a stream the daemon creates: ≤ 50, names 1–128 and values ≤ 256 characters.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stream_tags: BTreeMap<String, String>,
    /// Video capture and encoding.
    pub video: VideoConfig,
    /// Audio capture and encoding.
    pub audio: AudioConfig,
    /// Fragmenting.
    pub fragment: FragmentConfig,
    /// Persistent fragment tags, written at the start of every fragment: ≤ 10, names 1–128 bytes
    /// not starting with `AWS`, values 1–256 bytes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Per-camera override of `[buffer]`; unset keys keep the global value.
    #[serde(skip_serializing_if = "BufferOverride::is_empty")]
    pub buffer: BufferOverride,
}

impl Default for CameraConfig {
    /// Every default, and an empty name (which validation rejects: a camera must be named).
    fn default() -> Self {
        Self {
            name: String::new(),
            stream: None,
            create_stream: false,
            retention_hours: DEFAULT_RETENTION_HOURS,
            kms_key_id: None,
            stream_tags: BTreeMap::new(),
            video: VideoConfig::default(),
            audio: AudioConfig::default(),
            fragment: FragmentConfig::default(),
            metadata: BTreeMap::new(),
            buffer: BufferOverride::default(),
        }
    }
}

impl CameraConfig {
    /// A camera with the given name and every other setting at its default.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The Kinesis video stream this camera feeds.
    pub fn stream_name(&self) -> &str {
        self.stream.as_deref().unwrap_or(&self.name)
    }

    /// Frames between key frames: the configured value, else one GOP per fragment
    /// (`framerate × fragment.duration_ms / 1000`, at least 1).
    pub fn key_frame_interval_frames(&self) -> u32 {
        self.video.key_frame_interval_frames.unwrap_or_else(|| {
            let frames =
                u64::from(self.video.framerate) * u64::from(self.fragment.duration_ms) / 1000;
            u32::try_from(frames).unwrap_or(u32::MAX).max(1)
        })
    }

    /// The buffer budget of this camera: `global` with this camera's overrides applied.
    pub fn effective_buffer(&self, global: &BufferConfig) -> BufferConfig {
        let disk = &self.buffer.disk;
        BufferConfig {
            memory_mb: self.buffer.memory_mb.unwrap_or(global.memory_mb),
            disk: DiskConfig {
                dir: disk.dir.clone().unwrap_or_else(|| global.disk.dir.clone()),
                max_mb: disk.max_mb.unwrap_or(global.disk.max_mb),
                fsync: disk.fsync.unwrap_or(global.disk.fsync),
            },
        }
    }
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            source: VideoSource::Device(PathBuf::from(DEFAULT_VIDEO_DEVICE)),
            encoder: Encoder::Auto,
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            framerate: DEFAULT_FRAMERATE,
            bitrate_kbps: DEFAULT_VIDEO_BITRATE_KBPS,
            key_frame_interval_frames: None,
        }
    }
}

/// Where video comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSource {
    /// GStreamer's `videotestsrc` (TOML: `"test"`).
    Test,
    /// A V4L2 device node, e.g. `/dev/video0` or a stable `/dev/v4l/by-id/…` link.
    Device(PathBuf),
}

impl VideoSource {
    /// The TOML spelling of the test source.
    pub const TEST: &'static str = "test";
}

impl Serialize for VideoSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Test => serializer.serialize_str(Self::TEST),
            Self::Device(path) => serializer.collect_str(&path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for VideoSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == Self::TEST {
            Ok(Self::Test)
        } else if text.starts_with('/') {
            Ok(Self::Device(PathBuf::from(text)))
        } else {
            Err(de::Error::custom(format!(
                "invalid video source {text:?}: expected \"test\" or an absolute device path such as /dev/video0"
            )))
        }
    }
}

/// How video becomes H.264.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoder {
    /// Passthrough if the device delivers H.264, else the hardware encoder if present and able,
    /// else x264. Validated against the x264 limits (the fallback that always exists).
    #[default]
    Auto,
    /// The device already delivers H.264 (UVC H.264 cameras); nothing is re-encoded.
    Passthrough,
    /// The SoC's V4L2 memory-to-memory encoder (`v4l2h264enc`, Raspberry Pi).
    Hardware,
    /// Software encoding with `x264enc` (tuned for latency).
    X264,
}

impl Encoder {
    /// The lowercase TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Passthrough => "passthrough",
            Self::Hardware => "hardware",
            Self::X264 => "x264",
        }
    }
}

/// `video` of a camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConfig {
    /// `"test"` (videotestsrc) or an absolute V4L2 device path.
    pub source: VideoSource,
    /// `auto`, `passthrough`, `hardware` or `x264`.
    pub encoder: Encoder,
    /// Frame width in pixels: even, 16–4096, and within the encoder's limits.
    pub width: u32,
    /// Frame height in pixels: even, 16–4096, and within the encoder's limits.
    pub height: u32,
    /// Frames per second, 1–120.
    pub framerate: u32,
    /// Target video bitrate, kbit/s, 100–50000; also the estimate behind the buffer checks.
    pub bitrate_kbps: u32,
    /// Frames from one key frame to the next. `None`: one GOP per fragment
    /// (`framerate × fragment.duration_ms / 1000`). Must not exceed the fragment duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_frame_interval_frames: Option<u32>,
}

/// Where audio comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioSource {
    /// Video only.
    #[default]
    None,
    /// GStreamer's `audiotestsrc`.
    Test,
    /// An ALSA capture device (`device`).
    Alsa,
}

impl AudioSource {
    /// The lowercase TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Test => "test",
            Self::Alsa => "alsa",
        }
    }
}

/// `audio` of a camera: AAC-LC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// `none`, `test` or `alsa`.
    pub source: AudioSource,
    /// ALSA device, e.g. `hw:1,0` or `plughw:CARD=Device,DEV=0`. Required with `alsa`, else unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Sample rate in Hz; one of the AAC rates 8000, 11025, 12000, 16000, 22050, 24000, 32000,
    /// 44100, 48000.
    pub sample_rate: u32,
    /// 1 (mono) or 2 (stereo).
    pub channels: u8,
    /// AAC bitrate, kbit/s, 8–320.
    pub bitrate_kbps: u32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            source: AudioSource::None,
            device: None,
            sample_rate: DEFAULT_SAMPLE_RATE,
            channels: DEFAULT_CHANNELS,
            bitrate_kbps: DEFAULT_AUDIO_BITRATE_KBPS,
        }
    }
}

/// How fragment timecodes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timecodes {
    /// Cluster timecodes are wall-clock (producer) time: fragments are searchable by producer
    /// timestamp (kvssink's `absolute-fragment-times = true`).
    #[default]
    Absolute,
    /// Cluster timecodes count from the start of the session; KVS adds the session's start time.
    Relative,
}

impl Timecodes {
    /// The lowercase TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absolute => "absolute",
            Self::Relative => "relative",
        }
    }
}

/// `fragment` of a camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FragmentConfig {
    /// Target fragment duration, ms, 1000–20000 (the PutMedia limits); a fragment closes at the
    /// first key frame after it.
    pub duration_ms: u32,
    /// `absolute` or `relative`.
    pub timecodes: Timecodes,
    /// Longest a muxed frame waits before the uploader sends it, ms, 0–1000. 0 sends each frame
    /// as soon as it is muxed (lowest latency, one wake-up per frame); more sends frames in
    /// batches with one wake-up per interval, for less CPU.
    pub send_delay_ms: u32,
}

impl Default for FragmentConfig {
    fn default() -> Self {
        Self {
            duration_ms: DEFAULT_FRAGMENT_DURATION_MS,
            timecodes: Timecodes::Absolute,
            send_delay_ms: 0,
        }
    }
}

/// `[buffer]`: the budget of each camera's fragment buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Memory tier per camera, MiB, 1–16384; must hold two fragments at the camera's bitrate.
    pub memory_mb: u32,
    /// Disk tier per camera.
    pub disk: DiskConfig,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            memory_mb: DEFAULT_BUFFER_MEMORY_MB,
            disk: DiskConfig::default(),
        }
    }
}

/// `[buffer.disk]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Root directory; one subdirectory per stream. Relative paths are taken from the daemon's
    /// working directory.
    pub dir: PathBuf,
    /// Disk tier per camera, MiB; 0 disables the disk tier (memory only).
    pub max_mb: u32,
    /// `fsync` each fragment when it closes, so a power cut loses at most the open fragment.
    pub fsync: bool,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_BUFFER_DIR),
            max_mb: DEFAULT_BUFFER_DISK_MB,
            fsync: true,
        }
    }
}

/// `buffer` of a camera: overrides of `[buffer]`, key by key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferOverride {
    /// Overrides `buffer.memory_mb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Overrides keys of `buffer.disk`.
    #[serde(skip_serializing_if = "DiskOverride::is_empty")]
    pub disk: DiskOverride,
}

impl BufferOverride {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.memory_mb.is_none() && self.disk.is_empty()
    }
}

/// `buffer.disk` of a camera.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskOverride {
    /// Overrides `buffer.disk.dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Overrides `buffer.disk.max_mb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_mb: Option<u32>,
    /// Overrides `buffer.disk.fsync`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<bool>,
}

impl DiskOverride {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.dir.is_none() && self.max_mb.is_none() && self.fsync.is_none()
    }
}

/// `[telemetry]`: device and camera metrics to a Kinesis data stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Send telemetry.
    pub enabled: bool,
    /// Kinesis data stream name, 1–128 of `A-Z a-z 0-9 _ . -`. Required when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Seconds between samples, 1–3600.
    pub interval_s: u32,
    /// Partition key template; placeholders `{device_id}` and `{camera}` (empty for device-wide
    /// records). At most 256 characters once expanded.
    pub partition_key: String,
    /// Kinesis endpoint override (`https://…`, or `http://` to a loopback host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Pack records into KPL aggregated records (fewer, larger Kinesis records).
    pub aggregation: bool,
    /// Largest PutRecords request, bytes, 1024–10485760.
    pub max_request_bytes: u32,
    /// Where records wait while the network is down.
    pub spool: SpoolConfig,
    /// Never reorder records of one partition key: one request in flight per shard, and a failed
    /// record blocks the ones behind it until it succeeds.
    pub strict_ordering: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            stream: None,
            interval_s: DEFAULT_TELEMETRY_INTERVAL_S,
            partition_key: DEFAULT_PARTITION_KEY.to_owned(),
            endpoint: None,
            aggregation: true,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            spool: SpoolConfig::default(),
            strict_ordering: false,
        }
    }
}

/// `[telemetry.spool]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool directory; must not overlap a buffer directory.
    pub dir: PathBuf,
    /// Spool budget, MiB, 1–65536; the oldest records go first when full.
    pub max_mb: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            max_mb: DEFAULT_SPOOL_MB,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (journald adds its own timestamps).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[service]`: the daemon itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Device identity in telemetry and logs, 1–128 of `A-Z a-z 0-9 _ . -`. `None`: the value of
    /// `/etc/machine-id`, read at run time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `tracing` filter, e.g. `info` or `info,kinesis_edge::upload=debug`. `RUST_LOG` is not read;
    /// override with `KINESIS_EDGE__SERVICE__LOG_LEVEL`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Address of the metrics and health endpoint, e.g. `127.0.0.1:9110`. `None`: no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds given to in-flight uploads on stop, 1–600.
    pub shutdown_timeout_s: u32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            device_id: None,
            log_level: DEFAULT_LOG_LEVEL.to_owned(),
            log_format: LogFormat::Text,
            metrics_listen: None,
            shutdown_timeout_s: DEFAULT_SHUTDOWN_TIMEOUT_S,
        }
    }
}
