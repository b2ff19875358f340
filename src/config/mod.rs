//! `config`: the TOML configuration, its defaults, environment overrides and validation.
//!
//! Loading goes text → parsed document (with spans) → environment overrides spliced into the
//! document → serde types ([`Config`]) → validation rules → [`ValidatedConfig`].
//!
//! Invariants:
//! - A [`ValidatedConfig`] exists only if every rule in `validate` passed; other modules take
//!   it, never a bare [`Config`].
//! - Every error names the key (dotted path, e.g. `camera[0].fragment.duration_ms`) and where
//!   it was set: the file's line, or the environment variable that set it. All errors are
//!   reported together; the first does not hide the rest.
//! - Secret values ([`Secret`]) appear in no `Debug`, `Display`, serialization or error text.
//! - This module reads the configuration file and the environment and nothing else: it does
//!   not check that devices, certificates or directories exist (the modules that use them do,
//!   at start).
//!
//! Environment overrides: see the `env` module docs (`KINESIS_EDGE__SECTION__KEY=value`).
#![deny(missing_docs)]

mod env;
mod error;
pub mod limits;
mod schema;
mod source;
mod validate;

use std::ops::Deref;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

pub use env::{ENV_PREFIX, ENV_SEPARATOR, REGION_VARS};
pub use error::{ConfigError, ConfigErrors};
pub use schema::*;

use source::{KeyPath, SourceMap};

/// Exit status for an invalid configuration (`EX_CONFIG` from sysexits.h); systemd units use it
/// in `RestartPreventExitStatus=` so a bad file does not restart-loop.
pub const EXIT_CONFIG: i32 = 78;

/// The top-level tables of the file, in the order `unknown field` messages list them.
const SECTIONS: [&str; 5] = ["aws", "camera", "buffer", "telemetry", "service"];

/// A configuration that passed every validation rule. Built only by [`Config::validate`],
/// [`load`] and [`load_with_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedConfig(Config);

impl ValidatedConfig {
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0
    }

    /// The configuration, owned.
    pub fn into_inner(self) -> Config {
        self.0
    }
}

impl Deref for ValidatedConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

impl Config {
    /// Parses a configuration without validating it. `origin` names the file in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
        let parsed = parse(text, origin, &[]);
        match (parsed.config, ConfigErrors::from_vec(parsed.errors)) {
            (_, Some(errors)) => Err(errors),
            (Some(config), None) => Ok(config),
            (None, None) => Err(ConfigErrors::one(ConfigError::file(
                origin,
                None,
                "no configuration",
            ))),
        }
    }

    /// Checks every rule. `text` is the file the configuration was parsed from; it is used to
    /// find the line of each key named in an error.
    pub fn validate(self, text: &str, origin: &Path) -> Result<ValidatedConfig, ConfigErrors> {
        let map = match DeTable::parse(text) {
            Ok(doc) => SourceMap::new(origin, text, doc.get_ref(), Vec::new()),
            Err(_) => SourceMap::lines_only(origin, text),
        };
        let errors = validate::check(&self, &map);
        match ConfigErrors::from_vec(errors) {
            Some(errors) => Err(errors),
            None => Ok(ValidatedConfig(self)),
        }
    }
}

/// Reads `path`, applies the overrides in the process environment and validates.
pub fn load(path: &Path) -> Result<ValidatedConfig, ConfigErrors> {
    let mut env = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => env.push((name, value)),
            Err(_) if name.starts_with(ENV_PREFIX) => errors.push(ConfigError {
                env_var: Some(name),
                ..ConfigError::file(path, None, "the value is not valid UTF-8")
            }),
            Err(_) => {}
        }
    }
    if let Some(errors) = ConfigErrors::from_vec(errors) {
        return Err(errors);
    }
    load_with_env(path, &env)
}

/// Reads `path`, applies the overrides found in `env` (name, value pairs) and validates.
pub fn load_with_env(
    path: &Path,
    env: &[(String, String)],
) -> Result<ValidatedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors::one(ConfigError::file(
            path,
            None,
            format!("cannot read the configuration file: {error}"),
        ))
    })?;
    load_text(&text, path, env)
}

/// Parses `text`, applies `env` and validates; `origin` names the file in errors.
pub(crate) fn load_text(
    text: &str,
    origin: &Path,
    env: &[(String, String)],
) -> Result<ValidatedConfig, ConfigErrors> {
    let Parsed {
        config,
        map,
        mut errors,
    } = parse(text, origin, env);
    let valid = config.and_then(|config| {
        let rule_errors = validate::check(&config, &map);
        let valid = rule_errors.is_empty();
        errors.extend(rule_errors);
        valid.then_some(ValidatedConfig(config))
    });
    match (valid, ConfigErrors::from_vec(errors)) {
        (_, Some(errors)) => Err(errors),
        (Some(valid), None) => Ok(valid),
        (None, None) => Err(ConfigErrors::one(ConfigError::file(
            origin,
            None,
            "no configuration",
        ))),
    }
}

/// The result of parsing: the configuration if it deserialized, the source map for locating
/// keys, and the errors so far.
struct Parsed {
    config: Option<Config>,
    map: SourceMap,
    errors: Vec<ConfigError>,
}

fn parse(text: &str, origin: &Path, env: &[(String, String)]) -> Parsed {
    let (mut doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let map = SourceMap::lines_only(origin, text);
        let errors = syntax_errors
            .iter()
            .map(|error| {
                let mut located = map.de_error(error, &KeyPath::root());
                located.message = format!("TOML syntax: {}", error.message());
                located
            })
            .collect();
        return Parsed {
            config: None,
            map,
            errors,
        };
    }
    let applied = env::apply(doc.get_mut(), env, text.len());
    let map = SourceMap::new(origin, text, doc.get_ref(), applied.vars);
    let mut errors: Vec<ConfigError> = applied
        .errors
        .into_iter()
        .map(|e| map.env_error(&e.var, e.path, e.message))
        .collect();
    let config = deserialize_document(doc.into_inner(), &map, &mut errors);
    Parsed {
        config,
        map,
        errors,
    }
}

/// Deserializes section by section and camera by camera, so one bad value does not hide the
/// errors of the other sections.
fn deserialize_document(
    doc: DeTable<'_>,
    map: &SourceMap,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let mut config = Config::default();
    let before = errors.len();
    let root = KeyPath::root();
    for (key, value) in doc {
        let name = key.get_ref().as_ref();
        let path = root.key(name);
        match name {
            "aws" => config.aws = part(value, &path, map, errors).unwrap_or_default(),
            "buffer" => config.buffer = part(value, &path, map, errors).unwrap_or_default(),
            "telemetry" => config.telemetry = part(value, &path, map, errors).unwrap_or_default(),
            "service" => config.service = part(value, &path, map, errors).unwrap_or_default(),
            "camera" => match value.into_inner() {
                DeValue::Array(cameras) => {
                    for (index, camera) in cameras.into_iter().enumerate() {
                        if let Some(camera) = part(camera, &path.index(index), map, errors) {
                            config.camera.push(camera);
                        }
                    }
                }
                other => errors.push(map.error(
                    &path,
                    None,
                    format!(
                        "invalid type: {}, expected an array of tables ([[camera]])",
                        other.type_str()
                    ),
                )),
            },
            unknown => {
                let expected = SECTIONS.map(|s| format!("`{s}`")).join(", ");
                errors.push(map.error(
                    &path,
                    None,
                    format!("unknown field `{unknown}`, expected one of {expected}"),
                ));
            }
        }
    }
    (errors.len() == before).then_some(config)
}

fn part<T: serde::de::DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    path: &KeyPath,
    map: &SourceMap,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    T::deserialize(ValueDeserializer::from(value))
        .map_err(|error| errors.push(map.de_error(&error, path)))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "unit.toml";

    fn errors_of(text: &str) -> ConfigErrors {
        load_text(text, Path::new(ORIGIN), &[]).expect_err("invalid configuration")
    }

    #[test]
    fn display_names_file_line_key_value_and_rule() {
        let text = "[[camera]]\nname = \"cam\"\nfragment = { duration_ms = 25000 }\n";
        let errors = errors_of(text);
        assert_eq!(
            errors.to_string(),
            "unit.toml:3: camera[0].fragment.duration_ms = 25000: must be between 1000 and 20000 ms"
        );
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let text = "[[camera]]\nname = \"a\"\nfragment = { duration_ms = 25000 }\naudio = { channels = 3 }\n\n\
                    [[camera]]\nname = \"b\"\nvideo = { framerate = 0 }\n";
        let errors = errors_of(text);
        let lines: Vec<_> = errors
            .errors()
            .iter()
            .map(|e| (e.path.as_str(), e.line))
            .collect();
        assert_eq!(
            lines,
            [
                ("camera[0].fragment.duration_ms", Some(3)),
                ("camera[0].audio.channels", Some(4)),
                ("camera[1].video.framerate", Some(8)),
            ]
        );
    }

    #[test]
    fn serde_errors_of_different_sections_are_all_reported() {
        let text = "[aws]\nregio = \"x\"\n\n[[camera]]\nname = \"a\"\nvideo = { width = \"wide\" }\n\n\
                    [[camera]]\nname = \"b\"\naudio = { source = \"usb\" }\n\n[service]\nshutdown_timeout_s = -1\n\n[extra]\n";
        let errors = errors_of(text);
        let found: Vec<_> = errors
            .errors()
            .iter()
            .map(|e| (e.path.as_str(), e.line))
            .collect();
        assert_eq!(
            found,
            [
                ("aws.regio", Some(2)),
                ("camera[0].video.width", Some(6)),
                ("camera[1].audio.source", Some(10)),
                ("service.shutdown_timeout_s", Some(13)),
                ("extra", Some(15)),
            ],
            "{errors}"
        );
        assert!(
            errors
                .to_string()
                .contains("unit.toml:2: aws.regio: unknown field `regio`, expected one of")
        );
        assert!(errors.to_string().contains("unknown variant `usb`"));
    }

    #[test]
    fn syntax_errors_have_lines() {
        let errors = errors_of("[aws]\nregion = \"x\"\nendpoint = \n");
        let error = errors.errors().first().expect("one error");
        assert_eq!(error.line, Some(3));
        assert!(error.message.starts_with("TOML syntax:"), "{error}");
    }

    #[test]
    fn unreadable_files_are_config_errors() {
        let errors = load_with_env(Path::new("/nonexistent/kinesis-edge.toml"), &[])
            .expect_err("missing file");
        assert!(
            errors
                .to_string()
                .starts_with("/nonexistent/kinesis-edge.toml: cannot read the configuration file")
        );
    }

    #[test]
    fn parse_then_validate_matches_load() {
        let text = "[[camera]]\nname = \"cam\"\nvideo = { width = 641 }\n";
        let config = Config::from_toml_str(text, Path::new(ORIGIN)).expect("parses");
        let errors = config
            .validate(text, Path::new(ORIGIN))
            .expect_err("odd width");
        assert_eq!(errors.to_string(), errors_of(text).to_string());
        assert_eq!(errors.errors().first().and_then(|e| e.line), Some(3));
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";

    #[test]
    fn secrets_never_reach_debug_display_serialization_or_errors() {
        let text = format!(
            "[aws.credentials]\nsource = \"static\"\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\"\n\
             secret_access_key = \"{SECRET}\"\nsession_token = \"{TOKEN}\"\n\n[[camera]]\nname = \"cam\"\n"
        );
        let valid = load_text(&text, Path::new(ORIGIN), &[]).expect("valid");
        let secret = valid
            .aws
            .credentials
            .secret_access_key
            .as_ref()
            .expect("set");
        assert_eq!(secret.expose(), SECRET);
        let debug = format!("{valid:?} {:#?}", valid.aws);
        let shown = format!("{secret} {secret:?}");
        let serialized = toml::to_string(valid.config()).expect("serializes");
        for output in [&debug, &shown, &serialized] {
            assert!(
                !output.contains(SECRET) && !output.contains(TOKEN),
                "{output}"
            );
            assert!(output.contains(REDACTED));
        }

        // Errors in the same table (and wrong-typed secrets) show no secret either.
        let broken = text.replace("source = \"static\"", "source = \"profile\"");
        let errors = errors_of(&broken).to_string();
        assert!(
            errors.contains(
                "aws.credentials.secret_access_key: is not used with source = \"profile\""
            )
        );
        assert!(
            !errors.contains(SECRET) && !errors.contains(TOKEN),
            "{errors}"
        );
        let numeric = "[aws.credentials]\nsource = \"static\"\naccess_key_id = \"AKIA1\"\nsecret_access_key = 918273645\n";
        let errors = errors_of(numeric).to_string();
        assert!(
            errors.contains("unit.toml:4: aws.credentials.secret_access_key: invalid type"),
            "{errors}"
        );
        assert!(!errors.contains("918273645"), "{errors}");

        // From the environment too.
        let env = vec![(
            "KINESIS_EDGE__AWS__CREDENTIALS__SECRET_ACCESS_KEY".to_owned(),
            "5550123".to_owned(),
        )];
        let errors = load_text(&text, Path::new(ORIGIN), &env)
            .expect_err("numeric secret")
            .to_string();
        assert!(
            errors.contains("KINESIS_EDGE__AWS__CREDENTIALS__SECRET_ACCESS_KEY"),
            "{errors}"
        );
        assert!(!errors.contains("5550123"), "{errors}");
    }

    #[test]
    fn credential_sources_require_their_fields() {
        let cases = [
            (
                "source = \"static\"",
                "aws.credentials.access_key_id: is required",
            ),
            (
                "source = \"static\"\naccess_key_id = \"AKIA1\"",
                "aws.credentials.secret_access_key: is required",
            ),
            ("source = \"file\"", "aws.credentials.path: is required"),
            ("source = \"iot\"", "aws.credentials.iot: is required"),
            (
                "source = \"iot\"\niot = { endpoint = \"x.credentials.iot.eu-west-1.amazonaws.com\" }",
                "aws.credentials.iot.role_alias: is required",
            ),
            (
                "source = \"iot\"\niot = { endpoint = \"abc-ats.iot.eu-west-1.amazonaws.com\", cert_path = \"c\", key_path = \"k\", role_alias = \"r\", thing_name = \"t\" }",
                "looks like the MQTT data endpoint",
            ),
            (
                "source = \"env\"\nprofile = \"p\"",
                "aws.credentials.profile: is not used with source = \"env\"",
            ),
            (
                "source = \"auto\"\nsession_token = \"t\"",
                "needs access_key_id and secret_access_key",
            ),
        ];
        for (credentials, expected) in cases {
            let text = format!("[aws.credentials]\n{credentials}\n\n[[camera]]\nname = \"cam\"\n");
            let errors = errors_of(&text).to_string();
            assert!(
                errors.contains(expected),
                "{credentials}: expected {expected:?} in\n{errors}"
            );
            assert!(errors.starts_with("unit.toml:"), "{errors}");
        }
        let good = "[aws.credentials]\nsource = \"iot\"\n[aws.credentials.iot]\nendpoint = \"c2x.credentials.iot.eu-west-1.amazonaws.com\"\n\
                    cert_path = \"/etc/kinesis-edge/cert.pem\"\nkey_path = \"/etc/kinesis-edge/key.pem\"\nrole_alias = \"kvs\"\nthing_name = \"cam-1\"\n\n[[camera]]\nname = \"cam\"\n";
        assert!(load_text(good, Path::new(ORIGIN), &[]).is_ok());
        let profile = "[aws.credentials]\nsource = \"profile\"\nprofile = \"edge\"\n\n[[camera]]\nname = \"cam\"\n";
        assert!(load_text(profile, Path::new(ORIGIN), &[]).is_ok());
    }

    #[test]
    fn derived_camera_values() {
        let mut camera = CameraConfig::named("porch");
        assert_eq!(camera.stream_name(), "porch");
        assert_eq!(camera.key_frame_interval_frames(), 60);
        camera.video.framerate = 15;
        camera.fragment.duration_ms = 1000;
        assert_eq!(camera.key_frame_interval_frames(), 15);
        camera.video.key_frame_interval_frames = Some(5);
        assert_eq!(camera.key_frame_interval_frames(), 5);
        camera.stream = Some("porch-stream".into());
        assert_eq!(camera.stream_name(), "porch-stream");

        camera.buffer.memory_mb = Some(64);
        camera.buffer.disk.fsync = Some(false);
        let effective = camera.effective_buffer(&BufferConfig::default());
        assert_eq!(effective.memory_mb, 64);
        assert!(!effective.disk.fsync);
        assert_eq!(effective.disk.max_mb, DEFAULT_BUFFER_DISK_MB);
        assert_eq!(effective.disk.dir, Path::new(DEFAULT_BUFFER_DIR));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        const BASE: &str = "[[camera]]\nname = \"front-door\"\nvideo = { source = \"test\" }\n[camera.metadata]\nsite = \"x\"\n";

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("AWS".to_owned()),
                Just("CAMERA".to_owned()),
                Just("FRONT_DOOR".to_owned()),
                Just("VIDEO".to_owned()),
                Just("WIDTH".to_owned()),
                Just("METADATA".to_owned()),
                Just("REGION".to_owned()),
                Just("BUFFER".to_owned()),
                Just("DISK".to_owned()),
                "[A-Za-z_]{0,6}",
            ]
        }

        proptest! {
            /// Any text gives a configuration or errors naming the file, never a panic.
            #[test]
            fn arbitrary_text_never_panics(text in "(\\PC|\n){0,200}") {
                if let Err(errors) = load_text(&text, Path::new(ORIGIN), &[]) {
                    prop_assert!(!errors.is_empty());
                    prop_assert!(errors.to_string().starts_with(ORIGIN));
                }
            }

            /// Arbitrary overrides on a valid file never panic, and any error they cause that
            /// has no line names an environment variable or a key.
            #[test]
            fn arbitrary_overrides_never_panic(
                vars in proptest::collection::vec((proptest::collection::vec(key(), 1..5), "\\PC{0,12}"), 0..4)
            ) {
                let env: Vec<(String, String)> = vars
                    .into_iter()
                    .map(|(keys, value)| (format!("{ENV_PREFIX}{}", keys.join(ENV_SEPARATOR)), value))
                    .collect();
                if let Err(errors) = load_text(BASE, Path::new(ORIGIN), &env) {
                    for error in errors.errors() {
                        prop_assert!(
                            error.line.is_some() || error.env_var.is_some() || !error.path.is_empty(),
                            "unlocated error: {error}"
                        );
                    }
                }
            }
        }
    }
}
