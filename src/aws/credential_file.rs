//! The KVS producer credential file, written by a sidecar that rotates credentials.
//!
//! Format (whitespace-separated words, as the KVS C producer reads it):
//! `CREDENTIALS <access key id> <secret>` or
//! `CREDENTIALS <access key id> <expiration ISO-8601> <secret> [<session token>]`.
//! As an extension, `CREDENTIALS <access key id> <secret> <session token>` is accepted: the
//! third word is taken as an expiration only when it looks like a date (`YYYY-…`), which a
//! secret key (base64 alphabet, no `-`) never does. Lines starting with `#` are comments.
//!
//! Invariants (matching the C producer): the file is re-read at every `provide`, and the
//! [`super::CredentialsCache`] calls `provide` before expiry; the expiry reported is the file's,
//! capped at now + [`MAX_FILE_CREDENTIAL_LIFETIME`] (also the expiry when the file gives none)
//! so a rotated file is picked up within that time. Expired credentials are an error.
//! Error messages quote no word from the file, since any word could be a secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::clock::{format_rfc3339, parse_rfc3339};
use super::credentials::{
    Credentials, CredentialsError, ProvideCredentials, ProvideFuture, Secret,
};

/// The longest lifetime given to credentials read from the file (the C producer's 40 min).
pub const MAX_FILE_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(40 * 60);

/// Files larger than this are rejected rather than read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

const MARKER: &str = "CREDENTIALS";

/// Reads the KVS credential file at each `provide`.
#[derive(Clone)]
pub struct KvsCredentialFileProvider {
    path: PathBuf,
    clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl KvsCredentialFileProvider {
    /// A provider for the file at `path` (not opened until `provide`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            clock: Arc::new(SystemTime::now),
        }
    }

    /// The same provider reading time from `clock`.
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Credentials, CredentialsError> {
        let io_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CredentialsError::FileMissing {
                    path: self.path.clone(),
                }
            } else {
                CredentialsError::Io {
                    path: self.path.clone(),
                    source,
                }
            }
        };
        let size = std::fs::metadata(&self.path).map_err(io_error)?.len();
        if size > MAX_FILE_BYTES {
            return Err(CredentialsError::FileFormat {
                path: self.path.clone(),
                line: 1,
                reason: format!("file is {size} bytes, more than the {MAX_FILE_BYTES} allowed"),
            });
        }
        let text = std::fs::read_to_string(&self.path).map_err(io_error)?;
        parse_credential_file(&text, &self.path, (self.clock)())
    }
}

impl fmt::Debug for KvsCredentialFileProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvsCredentialFileProvider")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ProvideCredentials for KvsCredentialFileProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        // One small local file: read inline rather than on a blocking thread.
        Box::pin(std::future::ready(self.read()))
    }

    fn name(&self) -> &'static str {
        "credential file"
    }
}

/// Whether a word is meant as a timestamp (`YYYY-…`) rather than a key.
fn looks_like_timestamp(word: &str) -> bool {
    let bytes = word.as_bytes();
    bytes.len() >= 10
        && bytes
            .get(..4)
            .is_some_and(|y| y.iter().all(u8::is_ascii_digit))
        && bytes.get(4) == Some(&b'-')
}

/// Parses the file's text; `now` caps and checks the expiry.
pub fn parse_credential_file(
    text: &str,
    path: &Path,
    now: SystemTime,
) -> Result<Credentials, CredentialsError> {
    let words: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with('#'))
        .flat_map(|(index, line)| line.split_whitespace().map(move |w| (index + 1, w)))
        .collect();
    let format_error = |line: usize, reason: &str| CredentialsError::FileFormat {
        path: path.to_path_buf(),
        line,
        reason: reason.to_owned(),
    };
    let (marker, fields) = match words.split_first() {
        Some((marker, fields)) => (marker, fields),
        None => {
            return Err(format_error(
                1,
                "file is empty; expected `CREDENTIALS <access key id> [<expiration>] <secret> [<session token>]`",
            ));
        }
    };
    if marker.1 != MARKER {
        return Err(format_error(marker.0, "the first word must be CREDENTIALS"));
    }
    let parse_expiry = |(line, word): (usize, &str)| {
        parse_rfc3339(word).map_err(|e| {
            format_error(
                line,
                &format!(
                    "the expiration is not an ISO-8601 date-time like 2024-05-01T12:00:00Z ({e})"
                ),
            )
        })
    };
    let (access_key_id, expiration, secret, token) = match fields {
        [] => return Err(format_error(marker.0, "the access key id is missing")),
        [(line, _)] => return Err(format_error(*line, "the secret access key is missing")),
        [key, secret] => (key, None, secret, None),
        [key, third, fourth] if looks_like_timestamp(third.1) => {
            (key, Some(parse_expiry(*third)?), fourth, None)
        }
        [key, secret, token] => (key, None, secret, Some(token)),
        [key, expiry, secret, token] => {
            if !looks_like_timestamp(expiry.1) {
                return Err(format_error(
                    expiry.0,
                    "with four words after CREDENTIALS the second must be the expiration",
                ));
            }
            (key, Some(parse_expiry(*expiry)?), secret, Some(token))
        }
        [.., (line, _)] => {
            return Err(format_error(
                *line,
                "too many words; expected at most CREDENTIALS <access key id> <expiration> <secret> <session token>",
            ));
        }
    };
    if let Some(expiration) = expiration
        && expiration <= now
    {
        return Err(CredentialsError::FileExpired {
            path: path.to_path_buf(),
            expired_at: format_rfc3339(expiration),
        });
    }
    let cap = now + MAX_FILE_CREDENTIAL_LIFETIME;
    let expires_at = expiration.map_or(cap, |e| e.min(cap));
    Ok(Credentials::new(
        access_key_id.1,
        Secret::new(secret.1),
        token.map(|t| Secret::new(t.1)),
        Some(expires_at),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::UNIX_EPOCH;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// 2015-08-30T12:36:00Z
    const NOW: u64 = 1_440_938_160;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        parse_credential_file(text, Path::new("/etc/kvs/credential"), at(NOW))
    }

    #[test]
    fn key_and_secret_only_expire_after_40_minutes() {
        let creds = parse(&format!("CREDENTIALS AKIDFILE {SECRET}\n")).unwrap();
        assert_eq!(creds.access_key_id, "AKIDFILE");
        assert_eq!(creds.secret_access_key.expose(), SECRET);
        assert!(creds.session_token.is_none());
        assert_eq!(creds.expires_at, Some(at(NOW + 40 * 60)));
    }

    #[test]
    fn full_form_with_expiration_and_token() {
        let creds = parse(&format!(
            "CREDENTIALS ASIAFILE 2015-08-30T13:00:00Z {SECRET} TOKEN123"
        ))
        .unwrap();
        assert_eq!(creds.access_key_id, "ASIAFILE");
        assert_eq!(creds.secret_access_key.expose(), SECRET);
        assert_eq!(
            creds.session_token.as_ref().map(Secret::expose),
            Some("TOKEN123")
        );
        assert_eq!(creds.expires_at, Some(at(NOW + 24 * 60)));
        // A later expiry is capped at 40 minutes.
        let capped = parse(&format!(
            "CREDENTIALS ASIAFILE 2015-08-30T18:00:00Z {SECRET} TOKEN123"
        ))
        .unwrap();
        assert_eq!(capped.expires_at, Some(at(NOW + 40 * 60)));
        // Expiration without token, words across lines, comments.
        let split = parse(&format!(
            "# written by the auth sidecar\nCREDENTIALS ASIAFILE\n  2015-08-30T13:00:00Z\n{SECRET}\n"
        ))
        .unwrap();
        assert_eq!(split.expires_at, Some(at(NOW + 24 * 60)));
        assert!(split.session_token.is_none());
        // Token without expiration (extension).
        let token_only = parse(&format!("CREDENTIALS ASIAFILE {SECRET} TOKEN123")).unwrap();
        assert_eq!(token_only.secret_access_key.expose(), SECRET);
        assert_eq!(
            token_only.session_token.as_ref().map(Secret::expose),
            Some("TOKEN123")
        );
    }

    #[test]
    fn errors_name_file_and_line_without_quoting_words() {
        let cases: [(String, usize, &str); 7] = [
            (String::new(), 1, "file is empty"),
            (
                format!("AKID {SECRET}"),
                1,
                "first word must be CREDENTIALS",
            ),
            ("CREDENTIALS".into(), 1, "access key id is missing"),
            (
                "CREDENTIALS\nAKID".into(),
                2,
                "secret access key is missing",
            ),
            (
                format!("CREDENTIALS AKID 2015-99-30T13:00:00Z {SECRET}"),
                1,
                "not an ISO-8601",
            ),
            (
                format!("CREDENTIALS AKID {SECRET} TOKEN EXTRA"),
                1,
                "second must be the expiration",
            ),
            (
                format!("CREDENTIALS AKID 2015-08-30T13:00:00Z {SECRET}\nTOKEN\nEXTRA"),
                3,
                "too many words",
            ),
        ];
        for (text, line, reason) in cases {
            let err = parse(&text).unwrap_err();
            let shown = err.to_string();
            assert!(
                matches!(&err, CredentialsError::FileFormat { line: l, .. } if *l == line),
                "{text:?}: {shown}"
            );
            assert!(shown.contains(reason), "{text:?}: {shown}");
            assert!(shown.contains("/etc/kvs/credential"), "{shown}");
            assert!(
                !shown.contains(SECRET) && !shown.contains("TOKEN"),
                "{shown}"
            );
        }
        let expired = parse(&format!(
            "CREDENTIALS AKID 2015-08-30T12:00:00Z {SECRET} TOKEN"
        ))
        .unwrap_err();
        assert_eq!(
            expired.to_string(),
            "credential file /etc/kvs/credential: credentials expired at 2015-08-30T12:00:00Z"
        );
    }

    #[tokio::test]
    async fn re_read_picks_up_rotation_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        std::fs::write(
            &path,
            format!("CREDENTIALS ASIAONE 2015-08-30T13:00:00Z {SECRET} TOKEN1\n"),
        )
        .unwrap();
        let clock = Arc::new(AtomicU64::new(NOW));
        let provider_clock = Arc::clone(&clock);
        let cache_clock = Arc::clone(&clock);
        let provider = KvsCredentialFileProvider::new(&path)
            .with_clock(move || at(provider_clock.load(Ordering::SeqCst)));
        let cache = crate::aws::CredentialsCache::new(
            Arc::new(provider),
            crate::aws::DEFAULT_REFRESH_BEFORE,
        )
        .with_clock(move || at(cache_clock.load(Ordering::SeqCst)));
        assert_eq!(cache.get().await.unwrap().access_key_id, "ASIAONE");
        // The sidecar rotates the file; until the refresh point the cache keeps the old keys.
        std::fs::write(
            &path,
            format!("CREDENTIALS ASIATWO 2015-08-30T14:00:00Z {SECRET} TOKEN2\n"),
        )
        .unwrap();
        clock.fetch_add(18 * 60, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id, "ASIAONE");
        // 19 min later: 5 min before the 12:00+24min expiry → re-read.
        clock.fetch_add(60, Ordering::SeqCst);
        let rotated = cache.get().await.unwrap();
        assert_eq!(rotated.access_key_id, "ASIATWO");
        assert_eq!(
            rotated.session_token.as_ref().map(Secret::expose),
            Some("TOKEN2")
        );
    }

    proptest::proptest! {
        /// Any arrangement of words parses or fails cleanly, and a failure never quotes a
        /// word that could be a key, secret or token.
        #[test]
        fn never_panics_never_echoes_words(
            words in proptest::collection::vec("[A-Za-z0-9/+]{8,40}|2015-0[89]-30T1[0-9]:00:00Z|CREDENTIALS|#", 0..7),
            separators in proptest::collection::vec(proptest::sample::select(vec![" ", "\n", "\t", "  \r\n"]), 7),
        ) {
            let text: String = words
                .iter()
                .zip(separators.iter())
                .map(|(w, s)| format!("{w}{s}"))
                .collect();
            if let Err(err) = parse(&text) {
                let shown = err.to_string();
                for word in words.iter().filter(|w| w.len() >= 8 && w.as_str() != MARKER && !w.starts_with("2015")) {
                    proptest::prop_assert!(!shown.contains(word.as_str()), "{shown}");
                }
            }
        }
    }

    #[tokio::test]
    async fn missing_file_is_not_configured() {
        let dir = tempfile::tempdir().unwrap();
        let err = KvsCredentialFileProvider::new(dir.path().join("absent"))
            .provide()
            .await
            .unwrap_err();
        assert!(err.is_not_configured(), "{err}");
        assert!(err.to_string().contains("absent"));
    }
}
