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

/// The service's ACK error codes (`ErrorId`) with their names (`ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckErrorCode {
    /// 4000: error reading the data stream.
    StreamReadError,
    /// 4001: fragment larger than the size limit.
    MaxFragmentSizeReached,
    /// 4002: fragment longer than the duration limit.
    MaxFragmentDurationReached,
    /// 4003: connection older than the connection limit.
    MaxConnectionDurationReached,
    /// 4004: a fragment's first timecode is not after the previous fragment's last.
    FragmentTimecodeLesserThanPrevious,
    /// 4005: legacy multi-track rejection.
    MoreThanOneTrackFound,
    /// 4006: the MKV could not be parsed or holds what KVS does not accept.
    InvalidMkvData,
    /// 4007: bad producer timestamp.
    InvalidProducerTimestamp,
    /// 4008: the stream is not active.
    StreamNotActive,
    /// 4009: more than 10 metadata items, or one too long.
    FragmentMetadataLimitReached,
    /// 4010: a block's track number is not in Tracks.
    TrackNumberMismatch,
    /// 4011: a declared track has no frame in the fragment.
    FramesMissingForTrack,
    /// 4012: more tracks than allowed (3).
    MoreThanAllowedTracksFound,
    /// 4500–4506: KMS problems, 4507: stream deleted (by numeric id).
    Kms(u16),
    /// 5000: service internal error.
    InternalError,
    /// 5001: failed to persist.
    ArchivalError,
    /// Any other id, passed through (fault injection).
    Other(u16),
}

impl AckErrorCode {
    /// Every named code, for lookups.
    const NAMED: [(u16, &'static str); 15] = [
        (4000, "STREAM_READ_ERROR"),
        (4001, "MAX_FRAGMENT_SIZE_REACHED"),
        (4002, "MAX_FRAGMENT_DURATION_REACHED"),
        (4003, "MAX_CONNECTION_DURATION_REACHED"),
        (4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"),
        (4005, "MORE_THAN_ONE_TRACK_FOUND"),
        (4006, "INVALID_MKV_DATA"),
        (4007, "INVALID_PRODUCER_TIMESTAMP"),
        (4008, "STREAM_NOT_ACTIVE"),
        (4009, "FRAGMENT_METADATA_LIMIT_REACHED"),
        (4010, "TRACK_NUMBER_MISMATCH"),
        (4011, "FRAMES_MISSING_FOR_TRACK"),
        (4012, "MORE_THAN_ALLOWED_TRACKS_FOUND"),
        (5000, "INTERNAL_ERROR"),
        (5001, "ARCHIVAL_ERROR"),
    ];

    /// The code for a numeric `ErrorId`.
    pub fn from_id(id: u16) -> Self {
        match id {
            4000 => Self::StreamReadError,
            4001 => Self::MaxFragmentSizeReached,
            4002 => Self::MaxFragmentDurationReached,
            4003 => Self::MaxConnectionDurationReached,
            4004 => Self::FragmentTimecodeLesserThanPrevious,
            4005 => Self::MoreThanOneTrackFound,
            4006 => Self::InvalidMkvData,
            4007 => Self::InvalidProducerTimestamp,
            4008 => Self::StreamNotActive,
            4009 => Self::FragmentMetadataLimitReached,
            4010 => Self::TrackNumberMismatch,
            4011 => Self::FramesMissingForTrack,
            4012 => Self::MoreThanAllowedTracksFound,
            4500..=4507 => Self::Kms(id),
            5000 => Self::InternalError,
            5001 => Self::ArchivalError,
            other => Self::Other(other),
        }
    }

    /// The numeric `ErrorId`.
    pub fn id(self) -> u16 {
        match self {
            Self::StreamReadError => 4000,
            Self::MaxFragmentSizeReached => 4001,
            Self::MaxFragmentDurationReached => 4002,
            Self::MaxConnectionDurationReached => 4003,
            Self::FragmentTimecodeLesserThanPrevious => 4004,
            Self::MoreThanOneTrackFound => 4005,
            Self::InvalidMkvData => 4006,
            Self::InvalidProducerTimestamp => 4007,
            Self::StreamNotActive => 4008,
            Self::FragmentMetadataLimitReached => 4009,
            Self::TrackNumberMismatch => 4010,
            Self::FramesMissingForTrack => 4011,
            Self::MoreThanAllowedTracksFound => 4012,
            Self::Kms(id) | Self::Other(id) => id,
            Self::InternalError => 5000,
            Self::ArchivalError => 5001,
        }
    }

    /// The `ErrorCode` name.
    pub fn name(self) -> &'static str {
        let id = self.id();
        if let Some((_, name)) = Self::NAMED.iter().find(|(n, _)| *n == id) {
            return name;
        }
        match id {
            4500 => "KMS_KEY_ACCESS_DENIED",
            4501 => "KMS_KEY_DISABLED",
            4502 => "KMS_KEY_VALIDATION_ERROR",
            4503 => "KMS_KEY_UNAVAILABLE",
            4504 => "KMS_KEY_INVALID_USAGE",
            4505 => "KMS_KEY_INVALID_STATE",
            4506 => "KMS_KEY_NOT_FOUND",
            4507 => "STREAM_DELETED",
            _ => "UNKNOWN_ERROR",
        }
    }
}

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
    error_id: Option<u16>,
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
        assert_eq!(AckErrorCode::from_id(4242).name(), "UNKNOWN_ERROR");
    }
}
