//! Property test: whatever events arrive, in whatever order and at whatever times, the session
//! does not panic, never asks for a second connection while one is open, never backs off longer
//! than the cap, never acks or skips a fragment it was not told about, and keeps its timer from
//! spinning.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_edge::upload::ack::{AckError, AckErrorCode, AckEvent, AckKind};
use kinesis_edge::upload::backoff::SplitMix64;
use kinesis_edge::upload::control::{ControlResponse, Operation, StreamInfo, StreamStatus};
use kinesis_edge::upload::errors::{Failure, HttpFailure, TransportKind};
use kinesis_edge::upload::session::{
    Action, ConnectionId, DisconnectReason, Event, Session, SessionConfig, SessionEvent, StateKind,
};
use proptest::prelude::*;

/// An event template; connection ids are filled in from the session's latest `Connect`.
#[derive(Debug, Clone)]
enum Input {
    Described(&'static str, u32),
    Endpoint,
    Tagged,
    Created,
    ControlFailed(u8, u16, &'static str),
    Connected,
    ConnectFailed(u16, &'static str),
    Ack(u8, u64),
    AckParseError,
    Closed(bool),
    Started(u64),
    Closed2(u64),
    DataAvailable,
    CredentialsUpdated(u64),
    CredentialsExpiring,
    CredentialsRefreshFailed,
    Timeout,
    Shutdown,
    /// Use an older connection id for the next connection event.
    StaleId,
}

fn input() -> impl Strategy<Value = Input> {
    // One cheap integer triple picks the variant and its fields (a wide `prop_oneof!` is slow to
    // generate in debug builds).
    const STATUS: [&str; 4] = ["ACTIVE", "CREATING", "DELETING", "ODD"];
    const ERROR_TYPES: [&str; 9] = [
        "ClientLimitExceededException",
        "ConnectionLimitExceededException",
        "NotAuthorizedException",
        "ResourceNotFoundException",
        "InvalidEndpointException",
        "InvalidArgumentException",
        "ResourceInUseException",
        "InvalidSignatureException",
        "",
    ];
    const HTTP_STATUS: [u16; 7] = [400, 401, 403, 404, 429, 500, 503];
    (0u8..22, any::<u64>(), any::<u64>()).prop_map(|(variant, a, b)| {
        let pick = |n: usize| (a % n as u64) as usize;
        let status = || HTTP_STATUS[pick(HTTP_STATUS.len())];
        let error_type = || ERROR_TYPES[(b % ERROR_TYPES.len() as u64) as usize];
        match variant {
            0 => Input::Described(STATUS[pick(STATUS.len())], (b % 3) as u32),
            1 => Input::Endpoint,
            2 => Input::Tagged,
            3 => Input::Created,
            4 => Input::ControlFailed((b % 4) as u8, status(), error_type()),
            5 | 6 => Input::Connected,
            7 => Input::ConnectFailed(status(), error_type()),
            8 | 9 => Input::Ack((a % 8) as u8, b % 6),
            10 => Input::AckParseError,
            11 => Input::Closed(a % 2 == 0),
            12 => Input::Started(a % 6),
            13 => Input::Closed2(a % 6),
            14 => Input::DataAvailable,
            15 => Input::CredentialsUpdated(a % 7200),
            16 => Input::CredentialsExpiring,
            17 => Input::CredentialsRefreshFailed,
            18 | 19 => Input::Timeout,
            // Rare: everything after a shutdown is ignored.
            20 if b % 16 == 0 => Input::Shutdown,
            20 => Input::DataAvailable,
            _ => Input::StaleId,
        }
    })
}

fn http(status: u16, error_type: &str) -> Failure {
    Failure::Http(HttpFailure {
        status,
        error_type_header: (!error_type.is_empty()).then(|| error_type.to_owned()),
        date: Some("Mon, 01 Jan 2024 00:00:00 GMT".into()),
        body: Bytes::from_static(br#"{"message":"Signature expired: x"}"#),
    })
}

fn ack_kind(kind: u8) -> AckKind {
    match kind {
        0 => AckKind::Buffering,
        1 => AckKind::Received,
        2 => AckKind::Persisted,
        3 => AckKind::Idle,
        4 => AckKind::Error {
            code: AckErrorCode::InvalidMkvData,
        },
        5 => AckKind::Error {
            code: AckErrorCode::InternalError,
        },
        6 => AckKind::Error {
            code: AckErrorCode::KmsKeyDisabled,
        },
        _ => AckKind::ServiceError {
            error_type: Some("ExpiredTokenException".into()),
            message: None,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_event_sequences_keep_the_invariants(
        inputs in proptest::collection::vec((input(), 0u64..20_000), 1..200),
        seed in any::<u64>(),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut config = SessionConfig::new("s");
        config.tags.insert("k".into(), "v".into());
        let mut session = Session::new(config, Box::new(SplitMix64::new(seed)), now).unwrap();
        let mut open: Option<ConnectionId> = None;
        let mut latest = ConnectionId(0);
        let mut use_stale = false;
        // Fragments announced per connection; acks/skips must name one of them.
        let mut announced: HashSet<(ConnectionId, u64)> = HashSet::new();
        let mut due_after_timeout = 0u32;

        for (input, advance_ms) in inputs {
            now += Duration::from_millis(advance_ms);
            let conn = if std::mem::take(&mut use_stale) {
                ConnectionId(latest.0.saturating_sub(1))
            } else {
                latest
            };
            let event = match input {
                Input::Described(status, retention) => Event::ControlResponse(ControlResponse::Described(StreamInfo {
                    stream_name: "s".into(),
                    stream_arn: "arn".into(),
                    status: match status {
                        "ACTIVE" => StreamStatus::Active,
                        "CREATING" => StreamStatus::Creating,
                        "DELETING" => StreamStatus::Deleting,
                        other => StreamStatus::Other(other.into()),
                    },
                    data_retention_in_hours: retention,
                    media_type: None,
                    kms_key_id: None,
                    version: None,
                })),
                Input::Endpoint => Event::ControlResponse(ControlResponse::Endpoint { data_endpoint: "https://e".into() }),
                Input::Tagged => Event::ControlResponse(ControlResponse::Tagged),
                Input::Created => Event::ControlResponse(ControlResponse::Created { stream_arn: "arn".into() }),
                Input::ControlFailed(op, status, error_type) => Event::ControlFailed {
                    operation: [Operation::DescribeStream, Operation::CreateStream, Operation::TagStream, Operation::GetDataEndpoint][op as usize % 4],
                    failure: http(status, error_type),
                },
                Input::Connected => Event::Connected { conn },
                Input::ConnectFailed(status, error_type) => Event::ConnectFailed { conn, failure: http(status, error_type) },
                Input::Ack(kind, tc) => Event::Ack { conn, ack: AckEvent { kind: ack_kind(kind), fragment_timecode_ms: Some(tc), fragment_number: None } },
                Input::AckParseError => Event::AckParseError { conn, error: AckError::NotAnAck { start: 0 } },
                Input::Closed(clean) => Event::ConnectionClosed {
                    conn,
                    failure: (!clean).then(|| Failure::Transport { kind: TransportKind::Reset, detail: "reset".into() }),
                },
                Input::Started(tc) => Event::FragmentStarted { conn, timecode_ms: tc },
                Input::Closed2(tc) => Event::FragmentClosed { conn, timecode_ms: tc },
                Input::DataAvailable => Event::DataAvailable,
                Input::CredentialsUpdated(s) => Event::CredentialsUpdated { expires_at: Some(now + Duration::from_secs(s)) },
                Input::CredentialsExpiring => Event::CredentialsExpiring,
                Input::CredentialsRefreshFailed => Event::CredentialsRefreshFailed { detail: "x".into() },
                Input::Timeout => {
                    // Fire at the session's own deadline when there is one.
                    if let Some(at) = session.poll_timeout() { now = now.max(at); }
                    Event::Timeout
                }
                Input::Shutdown => Event::Shutdown,
                Input::StaleId => { use_stale = true; continue; }
            };
            // The driver's side of the contract: it reports the loss of its own connection.
            // (ConnectFailed only before acceptance; ConnectionClosed before or after.)
            let driver_loses = match &event {
                Event::ConnectFailed { conn: c, .. } => {
                    Some(*c) == open && session.state() == StateKind::Connecting
                }
                Event::ConnectionClosed { conn: c, .. } => {
                    Some(*c) == open
                        && matches!(
                            session.state(),
                            StateKind::Connecting | StateKind::Streaming | StateKind::Draining
                        )
                }
                _ => false,
            };
            if let Event::FragmentStarted { conn: c, timecode_ms } = &event {
                announced.insert((*c, *timecode_ms));
            }
            let is_timeout = matches!(event, Event::Timeout);
            session.handle(event, now);
            if is_timeout {
                // A timer still due right after firing must make progress, not spin.
                if session.poll_timeout().is_some_and(|at| at <= now) {
                    due_after_timeout += 1;
                    prop_assert!(due_after_timeout < 10, "timer spins at {:?}", now - t0);
                } else {
                    due_after_timeout = 0;
                }
            }
            if driver_loses {
                open = None;
            }
            while let Some(action) = session.poll_action() {
                match action {
                    Action::Connect { conn, .. } => {
                        prop_assert!(open.is_none(), "Connect {conn} while {open:?} is open");
                        open = Some(conn);
                        latest = conn;
                    }
                    Action::Disconnect { conn, reason } => {
                        prop_assert_ne!(reason, DisconnectReason::Superseded, "lost track of {}", conn);
                        if open == Some(conn) { open = None; }
                    }
                    Action::Report(SessionEvent::BackoffScheduled { delay, .. }) => {
                        prop_assert!(delay <= Duration::from_secs(10));
                    }
                    Action::AckFragment { timecode_ms, .. } | Action::SkipFragment { timecode_ms, .. } => {
                        prop_assert!(
                            announced.iter().any(|&(_, tc)| tc == timecode_ms),
                            "final action for fragment {timecode_ms} never started"
                        );
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(session.open_connection(), open);
            if let Some(at) = session.poll_timeout() {
                // No deadline beyond the longest wait: operator pause (15 min), a rotation
                // (41 min) or a credential refresh (the 2 h credentials above, less the lead).
                prop_assert!(at <= now + Duration::from_secs(2 * 3600));
            }
        }
    }
}
