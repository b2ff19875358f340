//! The rules a deserialized [`Config`] must meet to become a `ValidatedConfig`.
//!
//! Every rule runs and every failure is collected; nothing stops at the first. Each failure
//! names the key that has to change (for a rule between two keys, the one a user would change,
//! with the other named in the message) and shows the value, except for secrets.

use std::collections::HashMap;
use std::path::Path;

use super::env::env_name;
use super::error::ConfigError;
use super::limits::{self, EncoderLimits};
use super::schema::{
    AudioSource, BufferConfig, CameraConfig, Config, CredentialSource, CredentialsConfig, Encoder,
    IotCredentialsConfig, VideoSource,
};
use super::source::{KeyPath, SourceMap};

/// Runs every rule; returns the failures (empty when the configuration is valid).
pub(crate) fn check(config: &Config, map: &SourceMap) -> Vec<ConfigError> {
    let mut checker = Checker {
        map,
        errors: Vec::new(),
    };
    checker.aws(config);
    checker.cameras(config);
    checker.buffer(&config.buffer);
    checker.telemetry(config);
    checker.service(config);
    checker.errors
}

struct Checker<'a> {
    map: &'a SourceMap,
    errors: Vec<ConfigError>,
}

/// A string value as TOML shows it, cut short when long (error lines stay readable).
fn show(text: &str) -> String {
    const MAX_CHARS: usize = 48;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!(
            "{:?}… ({} bytes)",
            text.get(..cut).unwrap_or_default(),
            text.len()
        ),
        None => format!("{text:?}"),
    }
}

fn show_path(path: &Path) -> String {
    show(&path.to_string_lossy())
}

/// `[A-Za-z0-9_.-]`: the characters KVS and Kinesis allow in stream and device names.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Characters AWS tagging allows in stream tag keys and values:
/// `[\p{L}\p{Z}\p{N}_.:/=+\-@]`.
fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric()
        || c == ' '
        || (c.is_whitespace() && !c.is_control())
        || "_.:/=+-@".contains(c)
}

/// Checks a name made of [`is_name_char`] characters of bounded length.
fn check_name(name: &str, max_chars: usize) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err("must not be empty".into());
    }
    if chars > max_chars {
        return Err(format!(
            "is {chars} characters long; at most {max_chars} are allowed"
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(format!(
            "contains {bad:?}; only A-Z, a-z, 0-9, `_`, `.` and `-` are allowed"
        ));
    }
    Ok(())
}

/// Checks an endpoint override: an absolute `https://` URL, or `http://` to a loopback host
/// (local test services), with no path beyond `/` and no query.
pub(crate) fn check_endpoint(text: &str) -> Result<(), String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("is not a URL: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or("needs a scheme: https://host[:port]")?;
    let host = uri.host().ok_or("needs a host: https://host[:port]")?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must not have a path or query: the request paths are added per call".into());
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => Err(format!(
            "plain http is allowed only to a loopback host (127.0.0.0/8, ::1, localhost), not {host}; use https"
        )),
        other => Err(format!("scheme {other} is not supported; use https")),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a `{placeholder}` template; returns its length once expanded with values of the
/// given lengths.
fn expanded_partition_key_len(
    template: &str,
    device_id_len: usize,
    camera_len: usize,
) -> Result<usize, String> {
    let mut len = 0;
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        len += rest.get(..open).map_or(0, |s| s.chars().count());
        let tail = rest.get(open..).unwrap_or_default();
        if tail.starts_with('}') {
            return Err("has a `}` without a matching `{`".into());
        }
        let close = tail.find('}').ok_or("has a `{` without a matching `}`")?;
        match tail.get(1..close).unwrap_or_default() {
            "device_id" => len += device_id_len,
            "camera" => len += camera_len,
            other => {
                return Err(format!(
                    "has the unknown placeholder {{{other}}}; known: {{device_id}}, {{camera}}"
                ));
            }
        }
        rest = tail.get(close + 1..).unwrap_or_default();
    }
    Ok(len + rest.chars().count())
}

/// Checks a `tracing` filter (`Targets` syntax). A bare word is read as a target name (so
/// `verbose` would silently mean "trace for target verbose, nothing else"): bare words must be
/// level names; targets need `=level`.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    const HINT: &str =
        "use a level (error, warn, info, debug, trace, off) or target=level pairs, comma-separated";
    if filter.trim().is_empty() {
        return Err(format!("must not be empty; {HINT}"));
    }
    for directive in filter.split(',').map(str::trim) {
        let is_level = LEVELS
            .iter()
            .any(|level| directive.eq_ignore_ascii_case(level));
        if !is_level && !directive.contains('=') {
            return Err(format!(
                "{directive:?} is neither a level nor target=level; {HINT}"
            ));
        }
    }
    filter
        .parse::<tracing_subscriber::filter::Targets>()
        .map(drop)
        .map_err(|error| format!("is not a log filter ({error}); {HINT}"))
}

impl Checker<'_> {
    fn fail(&mut self, path: &KeyPath, value: Option<String>, message: impl Into<String>) {
        self.errors
            .push(self.map.error(path, value, message.into()));
    }

    /// Like [`Self::fail`], located at `related` when `path` is only a default.
    fn fail_near(
        &mut self,
        path: &KeyPath,
        related: &KeyPath,
        value: Option<String>,
        message: impl Into<String>,
    ) {
        self.errors
            .push(self.map.error_near(path, related, value, message.into()));
    }

    /// Fails unless `min <= value <= max`.
    fn range(&mut self, path: &KeyPath, value: u64, min: u64, max: u64, unit: &str) {
        if value < min || value > max {
            let unit = if unit.is_empty() {
                String::new()
            } else {
                format!(" {unit}")
            };
            self.fail(
                path,
                Some(value.to_string()),
                format!("must be between {min} and {max}{unit}"),
            );
        }
    }

    fn aws(&mut self, config: &Config) {
        let aws = KeyPath::root().key("aws");
        let region = &config.aws.region;
        let region_ok = !region.is_empty()
            && region.len() <= 64
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            self.fail(
                &aws.key("region"),
                Some(show(region)),
                "is not a region name (lowercase letters, digits and `-`, e.g. us-west-2)",
            );
        }
        if let Some(endpoint) = &config.aws.endpoint
            && let Err(message) = check_endpoint(endpoint)
        {
            self.fail(&aws.key("endpoint"), Some(show(endpoint)), message);
        }
        self.credentials(&config.aws.credentials, &aws.key("credentials"));
    }

    fn credentials(&mut self, creds: &CredentialsConfig, path: &KeyPath) {
        let source = creds.source;
        // Each key belongs to one source; `auto` may use them all.
        let owners = [
            (
                "access_key_id",
                creds.access_key_id.is_some(),
                CredentialSource::Static,
            ),
            (
                "secret_access_key",
                creds.secret_access_key.is_some(),
                CredentialSource::Static,
            ),
            (
                "session_token",
                creds.session_token.is_some(),
                CredentialSource::Static,
            ),
            (
                "profile",
                creds.profile.is_some(),
                CredentialSource::Profile,
            ),
            ("path", creds.path.is_some(), CredentialSource::File),
            ("iot", creds.iot.is_some(), CredentialSource::Iot),
        ];
        for (key, is_set, owner) in owners {
            if is_set && source != owner && source != CredentialSource::Auto {
                self.fail(
                    &path.key(key),
                    None,
                    format!(
                        "is not used with source = {:?}; it belongs to source = {:?}",
                        source.as_str(),
                        owner.as_str()
                    ),
                );
            }
        }

        let has_static = creds.access_key_id.is_some() || creds.secret_access_key.is_some();
        let static_required =
            source == CredentialSource::Static || (source == CredentialSource::Auto && has_static);
        if static_required {
            match &creds.access_key_id {
                None => self.fail(
                    &path.key("access_key_id"),
                    None,
                    "is required with static credentials",
                ),
                Some(id) if id.is_empty() || id.chars().any(|c| !c.is_ascii_alphanumeric()) => self
                    .fail(
                        &path.key("access_key_id"),
                        Some(show(id)),
                        "is not an access key id (letters and digits, e.g. AKIA…)",
                    ),
                Some(_) => {}
            }
            match &creds.secret_access_key {
                None => self.fail(
                    &path.key("secret_access_key"),
                    None,
                    "is required with static credentials",
                ),
                Some(secret) if secret.is_empty() => {
                    self.fail(&path.key("secret_access_key"), None, "must not be empty")
                }
                Some(_) => {}
            }
            if creds
                .session_token
                .as_ref()
                .is_some_and(|token| token.is_empty())
            {
                self.fail(
                    &path.key("session_token"),
                    None,
                    "must not be empty (leave it out instead)",
                );
            }
        } else if source == CredentialSource::Auto && creds.session_token.is_some() {
            self.fail(
                &path.key("session_token"),
                None,
                "needs access_key_id and secret_access_key beside it",
            );
        }
        if let Some(profile) = &creds.profile
            && profile.trim().is_empty()
        {
            self.fail(
                &path.key("profile"),
                Some(show(profile)),
                "must not be empty",
            );
        }
        match (&creds.path, source) {
            (None, CredentialSource::File) => self.fail(
                &path.key("path"),
                None,
                "is required with source = \"file\" (the KVS credential file a sidecar keeps fresh)",
            ),
            (Some(file), _) if file.as_os_str().is_empty() => {
                self.fail(&path.key("path"), Some(show_path(file)), "must not be empty")
            }
            _ => {}
        }
        match (&creds.iot, source) {
            (None, CredentialSource::Iot) => self.fail(
                &path.key("iot"),
                None,
                "is required with source = \"iot\": endpoint, cert_path, key_path, role_alias and thing_name",
            ),
            (Some(iot), _) => self.iot(iot, &path.key("iot")),
            (None, _) => {}
        }
    }

    fn iot(&mut self, iot: &IotCredentialsConfig, path: &KeyPath) {
        let required = [
            ("endpoint", iot.endpoint.as_deref().map(str::is_empty)),
            (
                "cert_path",
                iot.cert_path.as_ref().map(|p| p.as_os_str().is_empty()),
            ),
            (
                "key_path",
                iot.key_path.as_ref().map(|p| p.as_os_str().is_empty()),
            ),
            ("role_alias", iot.role_alias.as_deref().map(str::is_empty)),
            ("thing_name", iot.thing_name.as_deref().map(str::is_empty)),
        ];
        for (key, state) in required {
            match state {
                None => self.fail(&path.key(key), None, "is required for IoT credentials"),
                Some(true) => self.fail(&path.key(key), Some("\"\"".into()), "must not be empty"),
                Some(false) => {}
            }
        }
        if iot
            .ca_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            self.fail(
                &path.key("ca_path"),
                Some("\"\"".into()),
                "must not be empty (leave it out for the system roots)",
            );
        }
        if let Some(endpoint) = iot.endpoint.as_deref().filter(|e| !e.is_empty()) {
            let host = endpoint
                .strip_prefix("https://")
                .unwrap_or(endpoint)
                .trim_end_matches('/');
            if endpoint.contains("://") && !endpoint.starts_with("https://") {
                self.fail(
                    &path.key("endpoint"),
                    Some(show(endpoint)),
                    "the credentials endpoint is reached over mutual TLS: give a host name or an https:// URL",
                );
            } else if host.is_empty() || host.contains(['/', '?', ' ']) {
                self.fail(
                    &path.key("endpoint"),
                    Some(show(endpoint)),
                    "is not a host name",
                );
            } else if host.contains(".iot.") && !host.contains(".credentials.iot.") {
                self.fail(
                    &path.key("endpoint"),
                    Some(show(endpoint)),
                    "looks like the MQTT data endpoint; use the credentials endpoint from \
                     `aws iot describe-endpoint --endpoint-type iot:CredentialProvider` (…credentials.iot.<region>.amazonaws.com)",
                );
            }
        }
    }

    fn cameras(&mut self, config: &Config) {
        let cameras = KeyPath::root().key("camera");
        if config.camera.is_empty() {
            self.fail(&cameras, None, "at least one [[camera]] is required");
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut streams: HashMap<&str, usize> = HashMap::new();
        for (index, camera) in config.camera.iter().enumerate() {
            let path = cameras.index(index);
            self.camera(camera, &path, &config.buffer);
            if !camera.name.is_empty()
                && let Some(first) = names.insert(env_name(&camera.name), index)
            {
                self.fail(
                    &path.key("name"),
                    Some(show(&camera.name)),
                    format!(
                        "camera[{first}] has the same name (names compare ignoring case, with `-` and `.` equal to `_`)"
                    ),
                );
            }
            if camera.stream_name().is_empty() {
                continue;
            }
            if let Some(first) = streams.insert(camera.stream_name(), index) {
                let key = if camera.stream.is_some() {
                    "stream"
                } else {
                    "name"
                };
                self.fail(
                    &path.key(key),
                    Some(show(camera.stream_name())),
                    format!(
                        "camera[{first}] already sends to stream {:?}: one stream takes one producer (PutMedia allows one connection per stream)",
                        camera.stream_name()
                    ),
                );
            }
        }
    }

    fn camera(&mut self, camera: &CameraConfig, path: &KeyPath, global_buffer: &BufferConfig) {
        if camera.name.is_empty() {
            self.fail(
                &path.key("name"),
                None,
                "is required: every camera needs a unique name",
            );
        } else if let Err(message) = check_name(&camera.name, limits::MAX_CAMERA_NAME_CHARS) {
            self.fail(&path.key("name"), Some(show(&camera.name)), message);
        }
        if let Some(stream) = &camera.stream
            && let Err(message) = check_name(stream, limits::MAX_STREAM_NAME_CHARS)
        {
            self.fail(&path.key("stream"), Some(show(stream)), message);
        }
        self.range(
            &path.key("retention_hours"),
            camera.retention_hours.into(),
            0,
            limits::MAX_RETENTION_HOURS.into(),
            "hours",
        );
        if let Some(kms) = &camera.kms_key_id {
            if !camera.create_stream {
                self.fail(
                    &path.key("kms_key_id"),
                    Some(show(kms)),
                    "is only used when the daemon creates the stream (create_stream = true)",
                );
            }
            let chars = kms.chars().count();
            if chars == 0 || chars > limits::MAX_KMS_KEY_ID_CHARS {
                self.fail(
                    &path.key("kms_key_id"),
                    Some(show(kms)),
                    format!("must be 1 to {} characters", limits::MAX_KMS_KEY_ID_CHARS),
                );
            }
        }
        self.stream_tags(camera, &path.key("stream_tags"));
        self.video(camera, &path.key("video"));
        self.audio(camera, &path.key("audio"));
        self.range(
            &path.key("fragment").key("duration_ms"),
            camera.fragment.duration_ms.into(),
            limits::FRAGMENT_DURATION_MIN_MS.into(),
            limits::FRAGMENT_DURATION_MAX_MS.into(),
            "ms",
        );
        self.range(
            &path.key("fragment").key("send_delay_ms"),
            camera.fragment.send_delay_ms.into(),
            0,
            limits::SEND_DELAY_MAX_MS.into(),
            "ms",
        );
        self.metadata(camera, &path.key("metadata"));
        self.camera_buffer(camera, path, global_buffer);
    }

    fn stream_tags(&mut self, camera: &CameraConfig, path: &KeyPath) {
        let tags = &camera.stream_tags;
        if tags.is_empty() {
            return;
        }
        if !camera.create_stream {
            self.fail(
                path,
                None,
                "are only applied when the daemon creates the stream (create_stream = true)",
            );
        }
        if tags.len() > limits::MAX_STREAM_TAGS {
            self.fail(
                path,
                None,
                format!(
                    "has {} tags; a stream takes at most {}",
                    tags.len(),
                    limits::MAX_STREAM_TAGS
                ),
            );
        }
        for (key, value) in tags {
            let tag = path.key(key);
            let key_chars = key.chars().count();
            if key_chars == 0 || key_chars > limits::MAX_STREAM_TAG_KEY_CHARS {
                self.fail(
                    &tag,
                    Some(show(value)),
                    format!(
                        "the tag name is {key_chars} characters long; names must be 1 to {}",
                        limits::MAX_STREAM_TAG_KEY_CHARS
                    ),
                );
            }
            if key
                .get(..4)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("aws:"))
            {
                self.fail(
                    &tag,
                    Some(show(value)),
                    "tag names starting with `aws:` are reserved by AWS",
                );
            }
            let value_chars = value.chars().count();
            if value_chars > limits::MAX_STREAM_TAG_VALUE_CHARS {
                self.fail(
                    &tag,
                    Some(show(value)),
                    format!(
                        "the value is {value_chars} characters long; at most {} are allowed",
                        limits::MAX_STREAM_TAG_VALUE_CHARS
                    ),
                );
            }
            if let Some(bad) = key.chars().chain(value.chars()).find(|&c| !is_tag_char(c)) {
                self.fail(
                    &tag,
                    Some(show(value)),
                    format!(
                        "contains {bad:?}; tags allow letters, digits, spaces and _ . : / = + - @"
                    ),
                );
            }
        }
    }

    fn video(&mut self, camera: &CameraConfig, path: &KeyPath) {
        let video = &camera.video;
        let mut size_ok = true;
        for (key, value) in [("width", video.width), ("height", video.height)] {
            let (min, max) = limits::FRAME_SIDE;
            if value < min || value > max || value % 2 != 0 {
                size_ok = false;
                self.fail(
                    &path.key(key),
                    Some(value.to_string()),
                    format!("must be an even number of pixels from {min} to {max}"),
                );
            }
        }
        let (min_fps, max_fps) = limits::FRAMERATE;
        let framerate_ok = (min_fps..=max_fps).contains(&video.framerate);
        if !framerate_ok {
            self.fail(
                &path.key("framerate"),
                Some(video.framerate.to_string()),
                format!("must be between {min_fps} and {max_fps} frames per second"),
            );
        }
        let (min_rate, max_rate) = limits::VIDEO_BITRATE_KBPS;
        self.range(
            &path.key("bitrate_kbps"),
            video.bitrate_kbps.into(),
            min_rate.into(),
            max_rate.into(),
            "kbit/s",
        );

        if video.encoder == Encoder::Passthrough && video.source == VideoSource::Test {
            self.fail(
                &path.key("encoder"),
                Some("\"passthrough\"".into()),
                "needs a camera that delivers H.264; the test source delivers raw video (use auto or x264)",
            );
        }
        if size_ok && framerate_ok {
            let limits = EncoderLimits::for_encoder(video.encoder);
            if let Err(exceeded) = limits.check(video.width, video.height, video.framerate) {
                // Blame the frame rate when the rate is what is over, else the size.
                let (key, value) = match exceeded {
                    limits::LimitExceeded::Framerate { .. }
                    | limits::LimitExceeded::MacroblockRate { .. } => {
                        ("framerate", video.framerate)
                    }
                    limits::LimitExceeded::Size { .. }
                    | limits::LimitExceeded::FrameMacroblocks { .. } => ("width", video.width),
                };
                self.fail(
                    &path.key(key),
                    Some(value.to_string()),
                    format!(
                        "encoder = {:?} cannot do {}×{} at {} fps: {exceeded} ({})",
                        video.encoder.as_str(),
                        video.width,
                        video.height,
                        video.framerate,
                        limits.basis
                    ),
                );
            }
        }

        if let Some(interval) = video.key_frame_interval_frames {
            let key = path.key("key_frame_interval_frames");
            let duration_ms = camera.fragment.duration_ms;
            if interval == 0 {
                self.fail(&key, Some("0".into()), "must be at least 1 frame");
            } else if framerate_ok
                && u64::from(interval) * 1000 > u64::from(duration_ms) * u64::from(video.framerate)
            {
                let max = u64::from(duration_ms) * u64::from(video.framerate) / 1000;
                self.fail(
                    &key,
                    Some(interval.to_string()),
                    format!(
                        "{interval} frames at {} fps last {} ms, longer than fragment.duration_ms = {duration_ms}: \
                         fragments start on key frames and would start late; use at most {max} frames",
                        video.framerate,
                        u64::from(interval) * 1000 / u64::from(video.framerate),
                    ),
                );
            }
        }
    }

    fn audio(&mut self, camera: &CameraConfig, path: &KeyPath) {
        let audio = &camera.audio;
        match (audio.source, &audio.device) {
            (AudioSource::Alsa, None) => self.fail(
                &path.key("device"),
                None,
                "is required with source = \"alsa\" (e.g. \"hw:1,0\"; `arecord -l` lists devices)",
            ),
            (AudioSource::Alsa, Some(device)) if device.trim().is_empty() => {
                self.fail(&path.key("device"), Some(show(device)), "must not be empty")
            }
            (AudioSource::None | AudioSource::Test, Some(device)) => self.fail(
                &path.key("device"),
                Some(show(device)),
                format!(
                    "is only used with source = \"alsa\", not {:?}",
                    audio.source.as_str()
                ),
            ),
            _ => {}
        }
        if !limits::AAC_SAMPLE_RATES.contains(&audio.sample_rate) {
            self.fail(
                &path.key("sample_rate"),
                Some(audio.sample_rate.to_string()),
                format!(
                    "is not an AAC sampling rate; use one of {:?} Hz",
                    limits::AAC_SAMPLE_RATES
                ),
            );
        }
        if !matches!(audio.channels, 1 | 2) {
            self.fail(
                &path.key("channels"),
                Some(audio.channels.to_string()),
                "must be 1 (mono) or 2 (stereo)",
            );
        }
        let (min, max) = limits::AUDIO_BITRATE_KBPS;
        self.range(
            &path.key("bitrate_kbps"),
            audio.bitrate_kbps.into(),
            min.into(),
            max.into(),
            "kbit/s",
        );
    }

    fn metadata(&mut self, camera: &CameraConfig, path: &KeyPath) {
        let tags = &camera.metadata;
        if tags.len() > limits::MAX_FRAGMENT_TAGS {
            self.fail(
                path,
                None,
                format!(
                    "has {} tags; KVS accepts at most {} tags per fragment",
                    tags.len(),
                    limits::MAX_FRAGMENT_TAGS
                ),
            );
        }
        for (name, value) in tags {
            let tag = path.key(name);
            if name.is_empty() || name.len() > limits::MAX_FRAGMENT_TAG_NAME_BYTES {
                self.fail(
                    &tag,
                    Some(show(value)),
                    format!(
                        "the tag name is {} bytes long; names must be 1 to {} bytes",
                        name.len(),
                        limits::MAX_FRAGMENT_TAG_NAME_BYTES
                    ),
                );
            }
            if name.starts_with(limits::RESERVED_TAG_PREFIX) {
                self.fail(
                    &tag,
                    Some(show(value)),
                    format!(
                        "tag names starting with {:?} are reserved for KVS's own tags",
                        limits::RESERVED_TAG_PREFIX
                    ),
                );
            }
            if value.is_empty() || value.len() > limits::MAX_FRAGMENT_TAG_VALUE_BYTES {
                self.fail(
                    &tag,
                    Some(show(value)),
                    format!(
                        "the value is {} bytes long; values must be 1 to {} bytes (an empty value cancels a tag)",
                        value.len(),
                        limits::MAX_FRAGMENT_TAG_VALUE_BYTES
                    ),
                );
            }
        }
    }

    /// The camera's effective buffer budget: blame the camera's override when it set the key,
    /// else the global key.
    fn camera_buffer(&mut self, camera: &CameraConfig, path: &KeyPath, global: &BufferConfig) {
        let effective = camera.effective_buffer(global);
        let own = path.key("buffer");
        let memory_path = if camera.buffer.memory_mb.is_some() {
            own.key("memory_mb")
        } else {
            KeyPath::root().key("buffer").key("memory_mb")
        };
        if let Some(memory) = camera.buffer.memory_mb {
            self.memory_range(&own.key("memory_mb"), memory);
        }
        if let Some(dir) = &camera.buffer.disk.dir
            && dir.as_os_str().is_empty()
        {
            self.fail(
                &own.key("disk").key("dir"),
                Some("\"\"".into()),
                "must not be empty",
            );
        }
        // The memory tier holds the fragment being written and the one being sent.
        let kbps = u64::from(camera.video.bitrate_kbps)
            + if camera.audio.source == AudioSource::None {
                0
            } else {
                u64::from(camera.audio.bitrate_kbps)
            };
        let fragment_bytes = kbps * u64::from(camera.fragment.duration_ms) / 8;
        let memory_bytes = u64::from(effective.memory_mb) * 1024 * 1024;
        // Out-of-range inputs have their own errors; do not pile a second one on them.
        let (min_rate, max_rate) = limits::VIDEO_BITRATE_KBPS;
        let inputs_in_range = (min_rate..=max_rate).contains(&camera.video.bitrate_kbps)
            && (limits::FRAGMENT_DURATION_MIN_MS..=limits::FRAGMENT_DURATION_MAX_MS)
                .contains(&camera.fragment.duration_ms);
        if inputs_in_range && effective.memory_mb > 0 && memory_bytes < 2 * fragment_bytes {
            let needed_mb = (2 * fragment_bytes).div_ceil(1024 * 1024);
            self.fail_near(
                &memory_path,
                &path.key("video").key("bitrate_kbps"),
                Some(effective.memory_mb.to_string()),
                format!(
                    "is too small for {path}: two {} ms fragments at {kbps} kbit/s need {needed_mb} MiB",
                    camera.fragment.duration_ms
                ),
            );
        }
    }

    fn memory_range(&mut self, path: &KeyPath, memory_mb: u32) {
        self.range(path, memory_mb.into(), 1, 16_384, "MiB");
    }

    fn buffer(&mut self, buffer: &BufferConfig) {
        let path = KeyPath::root().key("buffer");
        self.memory_range(&path.key("memory_mb"), buffer.memory_mb);
        if buffer.disk.dir.as_os_str().is_empty() {
            self.fail(
                &path.key("disk").key("dir"),
                Some("\"\"".into()),
                "must not be empty",
            );
        }
    }

    fn telemetry(&mut self, config: &Config) {
        let telemetry = &config.telemetry;
        let path = KeyPath::root().key("telemetry");
        match &telemetry.stream {
            None if telemetry.enabled => self.fail(
                &path.key("stream"),
                None,
                "is required when telemetry is enabled (the Kinesis data stream to write to)",
            ),
            Some(stream) => {
                if let Err(message) = check_name(stream, limits::MAX_DATA_STREAM_NAME_CHARS) {
                    self.fail(&path.key("stream"), Some(show(stream)), message);
                }
            }
            None => {}
        }
        self.range(
            &path.key("interval_s"),
            telemetry.interval_s.into(),
            1,
            3600,
            "s",
        );
        let device_id_len = config
            .service
            .device_id
            .as_ref()
            .map_or(limits::MACHINE_ID_CHARS, |id| id.chars().count());
        let camera_len = config
            .camera
            .iter()
            .map(|camera| camera.name.chars().count())
            .max()
            .unwrap_or(0);
        let key = &telemetry.partition_key;
        match expanded_partition_key_len(key, device_id_len, camera_len) {
            Err(message) => self.fail(&path.key("partition_key"), Some(show(key)), message),
            Ok(0) => self.fail(
                &path.key("partition_key"),
                Some(show(key)),
                "must not expand to an empty key",
            ),
            Ok(len) if len > limits::MAX_PARTITION_KEY_CHARS => self.fail(
                &path.key("partition_key"),
                Some(show(key)),
                format!(
                    "expands to up to {len} characters; Kinesis partition keys take at most {}",
                    limits::MAX_PARTITION_KEY_CHARS
                ),
            ),
            Ok(_) => {}
        }
        if let Some(endpoint) = &telemetry.endpoint
            && let Err(message) = check_endpoint(endpoint)
        {
            self.fail(&path.key("endpoint"), Some(show(endpoint)), message);
        }
        self.range(
            &path.key("max_request_bytes"),
            telemetry.max_request_bytes.into(),
            limits::MIN_REQUEST_BYTES.into(),
            limits::MAX_REQUEST_BYTES.into(),
            "bytes",
        );
        let spool = path.key("spool");
        self.range(
            &spool.key("max_mb"),
            telemetry.spool.max_mb.into(),
            1,
            65_536,
            "MiB",
        );
        let spool_dir = &telemetry.spool.dir;
        if spool_dir.as_os_str().is_empty() {
            self.fail(&spool.key("dir"), Some("\"\"".into()), "must not be empty");
        } else {
            let global_dir = KeyPath::root().key("buffer").key("disk").key("dir");
            let mut buffer_dirs = vec![(config.buffer.disk.dir.clone(), global_dir)];
            for (index, camera) in config.camera.iter().enumerate() {
                if let Some(dir) = &camera.buffer.disk.dir {
                    let key = KeyPath::root()
                        .key("camera")
                        .index(index)
                        .key("buffer")
                        .key("disk")
                        .key("dir");
                    buffer_dirs.push((dir.clone(), key));
                }
            }
            for (dir, buffer_key) in buffer_dirs {
                let key = buffer_key.to_string();
                if !dir.as_os_str().is_empty()
                    && (spool_dir.starts_with(&dir) || dir.starts_with(spool_dir))
                {
                    self.fail_near(
                        &spool.key("dir"),
                        &buffer_key,
                        Some(show_path(spool_dir)),
                        format!("overlaps {key} = {}: the spool and the buffer need separate directories", show_path(&dir)),
                    );
                }
            }
        }
    }

    fn service(&mut self, config: &Config) {
        let service = &config.service;
        let path = KeyPath::root().key("service");
        if let Some(id) = &service.device_id
            && let Err(message) = check_name(id, limits::MAX_DEVICE_ID_CHARS)
        {
            self.fail(&path.key("device_id"), Some(show(id)), message);
        }
        if let Err(message) = check_log_filter(&service.log_level) {
            self.fail(
                &path.key("log_level"),
                Some(show(&service.log_level)),
                message,
            );
        }
        self.range(
            &path.key("shutdown_timeout_s"),
            service.shutdown_timeout_s.into(),
            1,
            600,
            "s",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_https_except_on_loopback() {
        assert_eq!(
            check_endpoint("https://kinesisvideo.eu-west-1.amazonaws.com"),
            Ok(())
        );
        assert_eq!(check_endpoint("http://127.0.0.1:4566"), Ok(()));
        assert_eq!(check_endpoint("http://127.8.9.1:4566/"), Ok(()));
        assert_eq!(check_endpoint("http://[::1]:4566"), Ok(()));
        assert_eq!(check_endpoint("http://LOCALHOST:4566"), Ok(()));
        for (bad, why) in [
            ("http://10.0.0.5:4566", "loopback"),
            ("http://localhost.example.com", "loopback"),
            ("ftp://127.0.0.1", "scheme ftp"),
            ("kinesis.example.com", "scheme"),
            ("https://example.com/v1", "path"),
            ("https://example.com?a=1", "path or query"),
            ("not a url", "not a URL"),
        ] {
            let message = check_endpoint(bad).expect_err(bad);
            assert!(message.contains(why), "{bad}: {message}");
        }
    }

    #[test]
    fn partition_key_templates_expand_known_placeholders_only() {
        assert_eq!(
            expanded_partition_key_len("{device_id}/{camera}", 32, 10),
            Ok(43)
        );
        assert_eq!(expanded_partition_key_len("fixed", 32, 10), Ok(5));
        assert!(expanded_partition_key_len("{site}", 32, 10).is_err());
        assert!(expanded_partition_key_len("{camera", 32, 10).is_err());
        assert!(expanded_partition_key_len("camera}", 32, 10).is_err());
    }

    #[test]
    fn log_filters_need_levels_or_target_level_pairs() {
        assert_eq!(check_log_filter("info"), Ok(()));
        assert_eq!(check_log_filter("warn,kinesis_edge::upload=debug"), Ok(()));
        assert!(check_log_filter("verbose").is_err());
        assert!(check_log_filter("").is_err());
        assert!(check_log_filter("info,x=loud").is_err());
    }

    #[test]
    fn long_values_are_shortened_on_char_boundaries() {
        let long = "é".repeat(300);
        let shown = show(&long);
        assert!(shown.starts_with("\"éé"));
        assert!(shown.ends_with("… (600 bytes)"), "{shown}");
        assert_eq!(show("ok"), "\"ok\"");
    }
}
