//! Environment overrides, applied to the parsed document before it is deserialized, so a bad
//! value from the environment gets the same type errors as one from the file, reported by
//! variable name.
//!
//! The one pattern: `KINESIS_EDGE__<SECTION>__<KEY>[__<KEY>…]=<value>`.
//! - `__` separates levels; keys are case-insensitive (`__AWS__REGION` sets `aws.region`; a key
//!   not in the file is created in lowercase).
//! - Cameras are addressed by name: `KINESIS_EDGE__CAMERA__<NAME>__VIDEO__BITRATE_KBPS=4000`.
//!   The name matches case-insensitively with `-` and `.` read as `_` (`FRONT_DOOR` addresses
//!   `front-door`). The environment cannot add cameras.
//! - The value is read as a TOML integer, float or boolean when it is one, as the string inside
//!   the quotes when it is a quoted TOML string (`'"1234"'` forces a string), and as the raw text
//!   otherwise.
//! - Two variables setting the same key is an error (the environment has no order).
//!
//! Then the AWS SDK conventions: when `aws.region` is still unset, `AWS_REGION`, else
//! `AWS_DEFAULT_REGION`, provides it. Precedence for the region is therefore
//! `KINESIS_EDGE__AWS__REGION` > the file > `AWS_REGION` > `AWS_DEFAULT_REGION` > `us-west-2`.
//! Credential variables (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, …) are read by the credential
//! providers at run time, not here.

use std::borrow::Cow;
use std::collections::HashMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::source::{KeyPath, env_span};

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "KINESIS_EDGE__";
/// Separator between key levels in an override variable's name.
pub const ENV_SEPARATOR: &str = "__";
/// Region variables, in the order the AWS SDKs consult them.
pub const REGION_VARS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];

/// An override that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvError {
    pub(crate) var: String,
    pub(crate) path: String,
    pub(crate) message: String,
}

/// What applying the environment did.
pub(crate) struct Applied {
    /// Variables applied, indexed as their [`env_span`]s.
    pub(crate) vars: Vec<String>,
    pub(crate) errors: Vec<EnvError>,
}

/// Applies the overrides in `env` to `doc`, parsed from a text of `text_len` bytes.
pub(crate) fn apply<'i>(
    doc: &mut DeTable<'i>,
    env: &'i [(String, String)],
    text_len: usize,
) -> Applied {
    let mut overrides: Vec<&'i (String, String)> = env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort_by(|a, b| a.0.cmp(&b.0));

    let mut applied = Applied {
        vars: Vec::new(),
        errors: Vec::new(),
    };
    let mut set_by: HashMap<String, &str> = HashMap::new();
    for (name, raw) in overrides {
        let rest = name.get(ENV_PREFIX.len()..).unwrap_or_default();
        let resolved = resolve(doc, rest);
        let (path, keys) = match resolved {
            Ok(found) => found,
            Err(message) => {
                applied.errors.push(EnvError {
                    var: name.clone(),
                    path: String::new(),
                    message,
                });
                continue;
            }
        };
        let path_text = path.to_string();
        if let Some(other) = set_by.get(&path_text) {
            applied.errors.push(EnvError {
                var: name.clone(),
                path: path_text,
                message: format!("sets the same key as {other}"),
            });
            continue;
        }
        let span = env_span(text_len, applied.vars.len());
        match set(doc, &keys, parse_value(raw), span) {
            Ok(()) => {
                set_by.insert(path_text, name);
                applied.vars.push(name.clone());
            }
            Err(message) => applied.errors.push(EnvError {
                var: name.clone(),
                path: path_text,
                message,
            }),
        }
    }

    if !has_region(doc) {
        let region = REGION_VARS.iter().find_map(|var| {
            env.iter()
                .rev()
                .find(|(name, value)| name == var && !value.is_empty())
        });
        if let Some((name, value)) = region {
            let span = env_span(text_len, applied.vars.len());
            let keys = [Key::Name("aws".into()), Key::Name("region".into())];
            let value = DeValue::String(Cow::Borrowed(value.as_str()));
            match set(doc, &keys, value, span) {
                Ok(()) => applied.vars.push(name.clone()),
                Err(message) => applied.errors.push(EnvError {
                    var: name.clone(),
                    path: "aws.region".into(),
                    message,
                }),
            }
        }
    }
    applied
}

fn has_region(doc: &DeTable<'_>) -> bool {
    doc.get("aws")
        .and_then(|aws| aws.get_ref().as_table())
        .is_some_and(|aws| aws.contains_key("region"))
}

/// A step from a table to a child: a key, or the `[[camera]]` element at an index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Name(String),
    Element(String, usize),
}

/// Turns the part of a variable name after the prefix into the steps to the key it sets.
fn resolve(doc: &DeTable<'_>, rest: &str) -> Result<(KeyPath, Vec<Key>), String> {
    let segments: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "empty key between `{ENV_SEPARATOR}` separators (expected {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>…)"
        ));
    }
    let mut path = KeyPath::root();
    let mut keys = Vec::new();
    let mut iter = segments.into_iter();
    let first = iter.next().map(str::to_ascii_lowercase).unwrap_or_default();
    if first == "camera" {
        let (Some(name), Some(_)) = (iter.next(), iter.clone().next()) else {
            return Err(format!(
                "address a camera by name and key: {ENV_PREFIX}CAMERA{ENV_SEPARATOR}<NAME>{ENV_SEPARATOR}<KEY>"
            ));
        };
        let index = find_camera(doc, name)?;
        path = path.key("camera").index(index);
        keys.push(Key::Element("camera".into(), index));
    } else if iter.clone().next().is_none() {
        return Err(format!(
            "names a whole section; set one key: {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>"
        ));
    } else {
        path = path.key(&first);
        keys.push(Key::Name(first));
    }
    for segment in iter {
        let key = segment.to_ascii_lowercase();
        path = path.key(&key);
        keys.push(Key::Name(key));
    }
    Ok((path, keys))
}

/// Camera names as the environment sees them: case-insensitive, `-` and `.` read as `_`.
pub(crate) fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

fn find_camera(doc: &DeTable<'_>, name: &str) -> Result<usize, String> {
    let wanted = env_name(name);
    let cameras = doc
        .get("camera")
        .and_then(|value| value.get_ref().as_array())
        .map(|array| array.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    let matches: Vec<usize> = cameras
        .iter()
        .enumerate()
        .filter(|(_, camera)| {
            camera
                .get_ref()
                .as_table()
                .and_then(|table| table.get("name"))
                .and_then(|value| value.get_ref().as_str())
                .is_some_and(|camera_name| env_name(camera_name) == wanted)
        })
        .map(|(index, _)| index)
        .collect();
    match matches.as_slice() {
        [index] => Ok(*index),
        [] => Err(format!(
            "no [[camera]] is named {name} (case-insensitive, `-` and `.` read as `_`)"
        )),
        _ => Err(format!("{} cameras match the name {name}", matches.len())),
    }
}

/// Reads an override's value: integer, float or boolean when it parses as one, the content of a
/// quoted TOML string, else the raw text.
fn parse_value(raw: &str) -> DeValue<'_> {
    match DeValue::parse(raw).map(Spanned::into_inner) {
        Ok(
            value @ (DeValue::Integer(_)
            | DeValue::Float(_)
            | DeValue::Boolean(_)
            | DeValue::String(_)),
        ) => value,
        _ => DeValue::String(Cow::Borrowed(raw)),
    }
}

/// The key of `table` equal to `key` ignoring ASCII case.
fn existing_key(table: &DeTable<'_>, key: &str) -> Option<String> {
    table
        .keys()
        .find(|k| k.get_ref().eq_ignore_ascii_case(key))
        .map(|k| k.get_ref().to_string())
}

/// Sets the value at `keys`, creating missing tables; every key created or replaced gets `span`.
fn set<'i>(
    table: &mut DeTable<'i>,
    keys: &[Key],
    value: DeValue<'i>,
    span: std::ops::Range<usize>,
) -> Result<(), String> {
    let Some((first, rest)) = keys.split_first() else {
        return Err("no key to set".into());
    };
    match first {
        Key::Element(array_key, index) => {
            let element = table
                .get_mut(array_key.as_str())
                .and_then(|value| match value.get_mut() {
                    DeValue::Array(array) => array.get_mut(*index),
                    _ => None,
                })
                .and_then(|element| match element.get_mut() {
                    DeValue::Table(camera) => Some(camera),
                    _ => None,
                });
            match element {
                Some(camera) => set(camera, rest, value, span),
                None => Err(format!("{array_key}[{index}] is not a table")),
            }
        }
        Key::Name(key) => {
            let existing = existing_key(table, key);
            if rest.is_empty() {
                if let Some(old) = &existing {
                    table.remove(old.as_str());
                }
                table.insert(
                    Spanned::new(span.clone(), Cow::Owned(key.clone())),
                    Spanned::new(span, value),
                );
                return Ok(());
            }
            let name = match existing {
                Some(name) => name,
                None => {
                    table.insert(
                        Spanned::new(span.clone(), Cow::Owned(key.clone())),
                        Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
                    );
                    key.clone()
                }
            };
            match table.get_mut(name.as_str()).map(Spanned::get_mut) {
                Some(DeValue::Table(child)) => set(child, rest, value, span),
                Some(other) => Err(format!(
                    "`{name}` is a {} in the configuration, not a table",
                    other.type_str()
                )),
                None => Err(format!("`{name}` could not be created")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigErrors, Encoder, load_text};
    use super::*;

    const BASE: &str = "[aws]\nregion = \"eu-west-1\"\n\n[[camera]]\nname = \"front-door\"\nvideo = { source = \"test\" }\n\n[[camera]]\nname = \"Back.Yard\"\nvideo = { source = \"test\", encoder = \"x264\" }\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        load_text(text, Path::new("test.toml"), &env(pairs)).map(|valid| (*valid).clone())
    }

    #[test]
    fn overrides_reach_sections_and_named_cameras() {
        let config = load(
            BASE,
            &[
                (
                    "KINESIS_EDGE__CAMERA__FRONT_DOOR__VIDEO__BITRATE_KBPS",
                    "4000",
                ),
                (
                    "KINESIS_EDGE__camera__back_yard__Video__Encoder",
                    "hardware",
                ),
                ("KINESIS_EDGE__TELEMETRY__ENABLED", "true"),
                ("KINESIS_EDGE__TELEMETRY__STREAM", "edge-telemetry"),
                ("KINESIS_EDGE__BUFFER__DISK__DIR", "/data/kinesis"),
                (
                    "KINESIS_EDGE__CAMERA__FRONT_DOOR__METADATA__SITE",
                    "warehouse-7",
                ),
                ("UNRELATED", "1"),
                ("KINESIS_EDGE_LOG", "debug"),
            ],
        )
        .expect("overrides are valid");
        let [front, back] = config.camera.as_slice() else {
            panic!("two cameras expected, got {}", config.camera.len());
        };
        assert_eq!(front.video.bitrate_kbps, 4000);
        assert_eq!(back.video.encoder, Encoder::Hardware);
        assert!(config.telemetry.enabled);
        assert_eq!(config.telemetry.stream.as_deref(), Some("edge-telemetry"));
        assert_eq!(config.buffer.disk.dir, Path::new("/data/kinesis"));
        assert_eq!(
            front.metadata.get("site").map(String::as_str),
            Some("warehouse-7")
        );
    }

    #[test]
    fn a_type_error_from_a_variable_names_the_variable() {
        let errors = load(
            BASE,
            &[("KINESIS_EDGE__CAMERA__FRONT_DOOR__VIDEO__WIDTH", "wide")],
        )
        .expect_err("a string is not a width");
        let [error] = errors.errors() else {
            panic!("one error expected: {errors}");
        };
        assert_eq!(
            error.env_var.as_deref(),
            Some("KINESIS_EDGE__CAMERA__FRONT_DOOR__VIDEO__WIDTH")
        );
        assert_eq!(error.path, "camera[0].video.width");
        assert_eq!(error.line, None);
        assert!(error.message.contains("invalid type"), "{error}");
        assert!(
            errors
                .to_string()
                .contains("environment variable KINESIS_EDGE__CAMERA__FRONT_DOOR__VIDEO__WIDTH"),
            "{errors}"
        );
    }

    #[test]
    fn a_validation_error_from_a_variable_names_the_variable() {
        let errors = load(
            BASE,
            &[(
                "KINESIS_EDGE__CAMERA__BACK_YARD__FRAGMENT__DURATION_MS",
                "25000",
            )],
        )
        .expect_err("25 s fragments are too long");
        let error = errors
            .errors()
            .iter()
            .find(|e| e.path == "camera[1].fragment.duration_ms")
            .expect("duration error");
        assert_eq!(
            error.env_var.as_deref(),
            Some("KINESIS_EDGE__CAMERA__BACK_YARD__FRAGMENT__DURATION_MS")
        );
        assert_eq!(error.value.as_deref(), Some("25000"));
    }

    #[test]
    fn an_unknown_key_from_a_variable_names_the_variable() {
        let errors =
            load(BASE, &[("KINESIS_EDGE__SERVICE__LOG_LEVELS", "debug")]).expect_err("unknown key");
        let error = errors.errors().first().expect("one error");
        assert_eq!(
            error.env_var.as_deref(),
            Some("KINESIS_EDGE__SERVICE__LOG_LEVELS")
        );
        assert!(
            error.message.contains("unknown field `log_levels`"),
            "{error}"
        );
    }

    #[test]
    fn unknown_cameras_conflicts_and_bad_names_are_errors() {
        let errors = load(
            BASE,
            &[
                ("KINESIS_EDGE__CAMERA__GARAGE__VIDEO__WIDTH", "640"),
                ("KINESIS_EDGE__CAMERA__FRONT_DOOR", "x"),
                ("KINESIS_EDGE__AWS____REGION", "x"),
                ("KINESIS_EDGE__SERVICE", "x"),
                ("KINESIS_EDGE__SERVICE__LOG_LEVEL", "debug"),
                ("KINESIS_EDGE__service__log_level", "warn"),
                ("KINESIS_EDGE__AWS__REGION__X", "1"),
            ],
        )
        .expect_err("all invalid");
        let text = errors.to_string();
        for expected in [
            "KINESIS_EDGE__CAMERA__GARAGE__VIDEO__WIDTH: no [[camera]] is named GARAGE",
            "KINESIS_EDGE__CAMERA__FRONT_DOOR: address a camera by name and key",
            "KINESIS_EDGE__AWS____REGION: empty key",
            "KINESIS_EDGE__SERVICE: names a whole section",
            "KINESIS_EDGE__service__log_level: service.log_level: sets the same key as KINESIS_EDGE__SERVICE__LOG_LEVEL",
            "KINESIS_EDGE__AWS__REGION__X: aws.region.x: `region` is a string in the configuration, not a table",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(errors.len(), 6, "{text}");
    }

    #[test]
    fn values_parse_as_toml_scalars_or_stay_strings() {
        assert!(matches!(parse_value("12"), DeValue::Integer(_)));
        assert!(matches!(parse_value("1.5"), DeValue::Float(_)));
        assert!(matches!(parse_value("false"), DeValue::Boolean(false)));
        assert_eq!(parse_value("\"1234\"").as_str(), Some("1234"));
        assert_eq!(
            parse_value("info,kinesis_edge=debug").as_str(),
            Some("info,kinesis_edge=debug")
        );
        assert_eq!(parse_value("[1, 2]").as_str(), Some("[1, 2]"));
        assert_eq!(parse_value("").as_str(), Some(""));
    }

    #[test]
    fn region_precedence_follows_the_aws_sdks() {
        let no_region = BASE.replace("region = \"eu-west-1\"\n", "");
        let region = |text: &str, pairs: &[(&str, &str)]| load(text, pairs).map(|c| c.aws.region);
        assert_eq!(region(&no_region, &[]).ok().as_deref(), Some("us-west-2"));
        assert_eq!(
            region(&no_region, &[("AWS_DEFAULT_REGION", "ap-south-1")])
                .ok()
                .as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            region(
                &no_region,
                &[
                    ("AWS_DEFAULT_REGION", "ap-south-1"),
                    ("AWS_REGION", "eu-north-1")
                ]
            )
            .ok()
            .as_deref(),
            Some("eu-north-1")
        );
        // The file beats AWS_REGION; KINESIS_EDGE__ beats the file.
        assert_eq!(
            region(BASE, &[("AWS_REGION", "eu-north-1")])
                .ok()
                .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region(
                BASE,
                &[
                    ("AWS_REGION", "eu-north-1"),
                    ("KINESIS_EDGE__AWS__REGION", "sa-east-1")
                ]
            )
            .ok()
            .as_deref(),
            Some("sa-east-1")
        );
        let errors = load(&no_region, &[("AWS_REGION", "Not A Region")]).expect_err("bad region");
        assert!(
            errors
                .to_string()
                .contains("environment variable AWS_REGION: aws.region"),
            "{errors}"
        );
    }
}
