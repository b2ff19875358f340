//! Where each key of the configuration was set: a span of the file or an environment variable.
//!
//! Environment overrides are spliced into the parsed document with synthetic spans that start
//! past the end of the text (`env_span`), so one span → location lookup serves both serde errors
//! and validation errors, and a key set from the environment is reported by variable name.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::error::ConfigError;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `camera[0].metadata."site.name"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The document root.
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a table key.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        Self(segments)
    }

    /// This path extended by an array index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    /// The enclosing path; `None` at the root.
    fn parent(&self) -> Option<Self> {
        let (_, rest) = self.0.split_last()?;
        Some(Self(rest.to_vec()))
    }

    fn depth(&self) -> usize {
        self.0.len()
    }
}

/// Whether a key can be written bare in a dotted path (TOML bare-key characters).
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The span given to everything the `index`-th applied environment variable sets: one byte,
/// past the end of a text of `text_len` bytes.
pub(crate) fn env_span(text_len: usize, index: usize) -> Range<usize> {
    let start = text_len + 1 + index;
    start..start + 1
}

/// Where a key was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A 1-based line of the file.
    Line(usize),
    /// An environment variable.
    Env(String),
    /// Nowhere known (the key is absent and so are its parents).
    Unknown,
}

struct Entry {
    path: KeyPath,
    key_span: Range<usize>,
    value_span: Range<usize>,
}

/// Key paths of a parsed document with their spans, and the means to turn a span into a line
/// or an environment variable.
pub(crate) struct SourceMap {
    origin: std::path::PathBuf,
    text_len: usize,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    /// Applied environment variables, indexed as in [`env_span`].
    env_vars: Vec<String>,
    entries: Vec<Entry>,
    by_path: HashMap<KeyPath, usize>,
}

impl SourceMap {
    /// Maps `doc`, parsed from `text` with the variables `env_vars` spliced in.
    pub(crate) fn new(origin: &Path, text: &str, doc: &DeTable<'_>, env_vars: Vec<String>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut map = Self {
            origin: origin.to_path_buf(),
            text_len: text.len(),
            line_starts,
            env_vars,
            entries: Vec::new(),
            by_path: HashMap::new(),
        };
        map.walk_table(&KeyPath::root(), doc);
        map
    }

    /// A map of a file that could not be parsed: lines only.
    pub(crate) fn lines_only(origin: &Path, text: &str) -> Self {
        Self::new(origin, text, &DeTable::new(), Vec::new())
    }

    fn walk_table(&mut self, path: &KeyPath, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let child = path.key(key.get_ref());
            self.record(child.clone(), key.span(), value.span());
            self.walk_value(&child, value.get_ref());
        }
    }

    fn walk_value(&mut self, path: &KeyPath, value: &DeValue<'_>) {
        match value {
            DeValue::Table(table) => self.walk_table(path, table),
            DeValue::Array(array) => {
                for (index, element) in array.iter().enumerate() {
                    let child = path.index(index);
                    self.record(child.clone(), element.span(), element.span());
                    self.walk_value(&child, element.get_ref());
                }
            }
            _ => {}
        }
    }

    fn record(&mut self, path: KeyPath, key_span: Range<usize>, value_span: Range<usize>) {
        self.by_path.insert(path.clone(), self.entries.len());
        self.entries.push(Entry {
            path,
            key_span,
            value_span,
        });
    }

    /// Where the byte span `span` (of the text, or an [`env_span`]) was set.
    fn location_of_span(&self, span: &Range<usize>) -> Location {
        if span.start > self.text_len {
            let index = span.start - self.text_len - 1;
            return match self.env_vars.get(index) {
                Some(var) => Location::Env(var.clone()),
                None => Location::Unknown,
            };
        }
        let line = match self.line_starts.binary_search(&span.start) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        Location::Line(line.max(1))
    }

    /// The innermost key whose key or value span holds `span`.
    fn path_of_span(&self, span: &Range<usize>) -> Option<&KeyPath> {
        let holds = |outer: &Range<usize>| outer.start <= span.start && span.end <= outer.end;
        self.entries
            .iter()
            .filter_map(|entry| {
                let key_len = holds(&entry.key_span).then(|| entry.key_span.len());
                let value_len = holds(&entry.value_span).then(|| entry.value_span.len());
                let len = match (key_len, value_len) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => return None,
                };
                Some((len, std::cmp::Reverse(entry.path.depth()), &entry.path))
            })
            .min_by_key(|(len, depth, _)| (*len, *depth))
            .map(|(_, _, path)| path)
    }

    /// Where `path` was set: its own key, else its nearest enclosing key that is in the document.
    pub(crate) fn location_of_path(&self, path: &KeyPath) -> Location {
        let mut current = Some(path.clone());
        while let Some(candidate) = current {
            if let Some(entry) = self
                .by_path
                .get(&candidate)
                .and_then(|&i| self.entries.get(i))
            {
                return self.location_of_span(&entry.key_span);
            }
            current = candidate.parent();
        }
        Location::Unknown
    }

    /// A validation error about `path`.
    pub(crate) fn error(
        &self,
        path: &KeyPath,
        value: Option<String>,
        message: String,
    ) -> ConfigError {
        self.error_at(
            path.to_string(),
            self.location_of_path(path),
            value,
            message,
        )
    }

    /// A validation error about `path`, located at `related` when neither `path` nor any of its
    /// parents is in the document (a defaulted key that clashes with one the file sets).
    pub(crate) fn error_near(
        &self,
        path: &KeyPath,
        related: &KeyPath,
        value: Option<String>,
        message: String,
    ) -> ConfigError {
        let location = match self.location_of_path(path) {
            Location::Unknown => self.location_of_path(related),
            found => found,
        };
        self.error_at(path.to_string(), location, value, message)
    }

    /// An error from serde or the TOML parser: located by its span, its key path found from the
    /// span (falling back to `fallback`, the part being deserialized).
    pub(crate) fn de_error(&self, error: &toml::de::Error, fallback: &KeyPath) -> ConfigError {
        let (path, location) = match error.span() {
            Some(span) => (
                self.path_of_span(&span).unwrap_or(fallback).to_string(),
                self.location_of_span(&span),
            ),
            None => (fallback.to_string(), self.location_of_path(fallback)),
        };
        self.error_at(path, location, None, error.message().to_owned())
    }

    /// An error about an environment variable that could not be applied.
    pub(crate) fn env_error(&self, var: &str, path: String, message: String) -> ConfigError {
        self.error_at(path, Location::Env(var.to_owned()), None, message)
    }

    fn error_at(
        &self,
        path: String,
        location: Location,
        value: Option<String>,
        message: String,
    ) -> ConfigError {
        let (line, env_var) = match location {
            Location::Line(line) => (Some(line), None),
            Location::Env(var) => (None, Some(var)),
            Location::Unknown => (None, None),
        };
        ConfigError {
            file: self.origin.clone(),
            path,
            line,
            env_var,
            value,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        let path = KeyPath::root()
            .key("camera")
            .index(1)
            .key("metadata")
            .key("site.name");
        assert_eq!(path.to_string(), r#"camera[1].metadata."site.name""#);
    }

    #[test]
    fn spans_map_to_lines_keys_and_env_vars() {
        let text = "[aws]\nregion = \"x\"\n\n[[camera]]\nname = \"a\"\nvideo = { width = 5 }\n";
        let doc = DeTable::parse(text).expect("valid TOML");
        let map = SourceMap::new(Path::new("f.toml"), text, doc.get_ref(), vec!["VAR".into()]);
        let width = KeyPath::root()
            .key("camera")
            .index(0)
            .key("video")
            .key("width");
        assert_eq!(map.location_of_path(&width), Location::Line(6));
        // Absent key: reported at its nearest present parent.
        let height = KeyPath::root()
            .key("camera")
            .index(0)
            .key("video")
            .key("height");
        assert_eq!(map.location_of_path(&height), Location::Line(6));
        let camera = KeyPath::root().key("camera").index(0);
        assert_eq!(map.location_of_path(&camera), Location::Line(4));
        assert_eq!(
            map.location_of_path(&KeyPath::root().key("service")),
            Location::Unknown
        );
        let value_span = text.find("5 }").map(|i| i..i + 1).expect("present");
        assert_eq!(map.path_of_span(&value_span), Some(&width));
        assert_eq!(
            map.location_of_span(&env_span(text.len(), 0)),
            Location::Env("VAR".into())
        );
    }
}
