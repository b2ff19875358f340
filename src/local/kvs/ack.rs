//! The PutMedia acknowledgement vocabulary: event types, the service's ACK error codes and the
//! wire form of one ACK line.
//!
//! Wire form (reference: KVS producer notes §5.4): one flat JSON object per line,
//! `{"EventType":"BUFFERING","FragmentTimecode":N,"FragmentNumber":"…"}` followed by `\n`;
//! errors add `"ErrorId":N,"ErrorCode":"NAME"`; IDLE carries only its event type.

use serde::Serialize;

/// What an ACK says about a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AckEventType {
    /// The first bytes of the fragment arrived.
    Buffering,
    /// The whole fragment arrived and passed the checks.
    Received,
    /// The fragment is stored durably (only for streams with retention).
    Persisted,
    /// The fragment broke a rule; the connection ends after this ACK.
    Error,
    /// Keep-alive while no data arrives.
    Idle,
}

impl AckEventType {
    /// The `EventType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buffering => "BUFFERING",
            Self::Received => "RECEIVED",
            Self::Persisted => "PERSISTED",
            Self::Error => "ERROR",
            Self::Idle => "IDLE",
        }
    }
}

/// The service's ACK error codes: the uploader's table, so both ends speak the same codes.
pub use crate::upload::ack::AckErrorCode;

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The event.
    pub event: AckEventType,
    /// Cluster timecode of the fragment, in timecode-scale units (absent for IDLE).
    pub timecode: Option<u64>,
    /// The fragment number (absent for IDLE and for errors before a fragment started).
    pub fragment_number: Option<String>,
    /// For ERROR.
    pub error: Option<AckErrorCode>,
}

#[derive(Serialize)]
struct AckWire<'a> {
    #[serde(rename = "EventType")]
    event: &'static str,
    #[serde(rename = "FragmentTimecode", skip_serializing_if = "Option::is_none")]
    timecode: Option<u64>,
    #[serde(rename = "FragmentNumber", skip_serializing_if = "Option::is_none")]
    fragment_number: Option<&'a str>,
    #[serde(rename = "ErrorId", skip_serializing_if = "Option::is_none")]
    error_id: Option<u32>,
    #[serde(rename = "ErrorCode", skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
}

impl Ack {
    /// A keep-alive.
    pub fn idle() -> Self {
        Self {
            event: AckEventType::Idle,
            timecode: None,
            fragment_number: None,
            error: None,
        }
    }

    /// An ACK for a fragment.
    pub fn fragment(event: AckEventType, timecode: u64, fragment_number: &str) -> Self {
        Self {
            event,
            timecode: Some(timecode),
            fragment_number: Some(fragment_number.to_owned()),
            error: None,
        }
    }

    /// An ERROR ACK; `timecode` and `fragment_number` when a fragment had started.
    pub fn error(code: AckErrorCode, timecode: Option<u64>, fragment_number: Option<&str>) -> Self {
        Self {
            event: AckEventType::Error,
            timecode,
            fragment_number: fragment_number.map(str::to_owned),
            error: Some(code),
        }
    }

    /// The JSON line, newline-terminated.
    pub fn to_line(&self) -> String {
        let wire = AckWire {
            event: self.event.as_str(),
            timecode: self.timecode,
            fragment_number: self.fragment_number.as_deref(),
            error_id: self.error.map(AckErrorCode::id),
            error_code: self.error.map(AckErrorCode::name),
        };
        // Serialising a struct of strings and integers cannot fail; fall back to the event
        // alone rather than panic if it ever did.
        let mut line = serde_json::to_string(&wire)
            .unwrap_or_else(|_| format!("{{\"EventType\":\"{}\"}}", self.event.as_str()));
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_the_service_wire_form() {
        let ack = Ack::fragment(AckEventType::Persisted, 1_595_833_960_258, "9134385");
        assert_eq!(
            ack.to_line(),
            "{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1595833960258,\"FragmentNumber\":\"9134385\"}\n"
        );
        assert_eq!(Ack::idle().to_line(), "{\"EventType\":\"IDLE\"}\n");
        let error = Ack::error(AckErrorCode::from_id(4004), Some(7), Some("12"));
        assert_eq!(
            error.to_line(),
            "{\"EventType\":\"ERROR\",\"FragmentTimecode\":7,\"FragmentNumber\":\"12\",\"ErrorId\":4004,\"ErrorCode\":\"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS\"}\n"
        );
    }

    #[test]
    fn codes_round_trip_through_their_ids() {
        for id in (4000..=4012).chain(4500..=4507).chain([5000, 5001, 4242]) {
            let code = AckErrorCode::from_id(id);
            assert_eq!(code.id(), id);
            assert!(!code.name().is_empty());
        }
        assert_eq!(
            AckErrorCode::from_id(4012).name(),
            "MORE_THAN_ALLOWED_TRACKS_FOUND"
        );
        assert_eq!(AckErrorCode::from_id(4507).name(), "STREAM_DELETED");
    }
}
