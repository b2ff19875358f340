//! Unit tests of the session: one behaviour each, driven by hand with a fixed clock.

use super::*;
use crate::upload::ack::{AckErrorCode, AckEvent, AckKind};
use crate::upload::control::StreamStatus;
use crate::upload::errors::{HttpFailure, TransportKind};
use bytes::Bytes;

const ENDPOINT: &str = "https://s-1.kinesisvideo.us-west-2.amazonaws.com";

struct Harness {
    session: Session,
    now: Instant,
    reports: Vec<SessionEvent>,
}

impl Harness {
    fn new(config: SessionConfig) -> Self {
        // Maximal jitter: every delay is exactly its ceiling, which makes waits predictable.
        Self::with_jitter(config, || u64::MAX)
    }

    fn with_jitter(config: SessionConfig, jitter: impl FnMut() -> u64 + Send + 'static) -> Self {
        let now = Instant::now();
        let session = Session::new(config, Box::new(jitter), now).expect("valid config");
        Self {
            session,
            now,
            reports: Vec::new(),
        }
    }

    fn default() -> Self {
        Self::new(SessionConfig::new("front-door"))
    }

    /// Actions other than reports; reports are kept aside.
    fn actions(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Report(event) => self.reports.push(event),
                other => out.push(other),
            }
        }
        out
    }

    fn handle(&mut self, event: Event) -> Vec<Action> {
        self.session.handle(event, self.now);
        self.actions()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Move to the next timer and fire it.
    fn fire_timer(&mut self) -> Vec<Action> {
        let at = self.session.poll_timeout().expect("a timer is set");
        if at > self.now {
            self.now = at;
        }
        self.handle(Event::Timeout)
    }

    fn describe_ok(&mut self, status: &str, retention: u32) -> Vec<Action> {
        self.handle(Event::ControlResponse(ControlResponse::Described(
            StreamInfo {
                stream_name: "front-door".into(),
                stream_arn: "arn:aws:kinesisvideo:us-west-2:1:stream/front-door/1".into(),
                status: match status {
                    "ACTIVE" => StreamStatus::Active,
                    "CREATING" => StreamStatus::Creating,
                    "DELETING" => StreamStatus::Deleting,
                    other => StreamStatus::Other(other.into()),
                },
                data_retention_in_hours: retention,
                media_type: Some("video/h264".into()),
                kms_key_id: None,
                version: None,
            },
        )))
    }

    fn endpoint_ok(&mut self) -> Vec<Action> {
        self.handle(Event::ControlResponse(ControlResponse::Endpoint {
            data_endpoint: ENDPOINT.into(),
        }))
    }

    /// Describe ACTIVE, resolve the endpoint, accept the connection. Returns its id.
    fn streaming(&mut self, retention: u32) -> ConnectionId {
        self.actions();
        self.describe_ok("ACTIVE", retention);
        let actions = self.endpoint_ok();
        let conn = connect_of(&actions);
        self.handle(Event::Connected { conn });
        assert_eq!(self.session.state(), StateKind::Streaming);
        // Time passes while streaming (and keeps later reconnects clear of the 200 ms spacing).
        self.advance(Duration::from_secs(1));
        conn
    }

    fn send_fragment(&mut self, conn: ConnectionId, tc: u64) {
        self.handle(Event::FragmentStarted {
            conn,
            timecode_ms: tc,
        });
        self.handle(Event::FragmentClosed {
            conn,
            timecode_ms: tc,
        });
    }

    fn ack(&mut self, conn: ConnectionId, kind: AckKind, tc: u64) -> Vec<Action> {
        self.handle(Event::Ack {
            conn,
            ack: AckEvent {
                kind,
                fragment_timecode_ms: Some(tc),
                fragment_number: Some(tc.to_string()),
            },
        })
    }

    fn http_failure(
        status: u16,
        error_type: Option<&str>,
        body: &str,
        date: Option<&str>,
    ) -> Failure {
        Failure::Http(HttpFailure {
            status,
            error_type_header: error_type.map(str::to_owned),
            date: date.map(str::to_owned),
            body: Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    fn reported(&self, pred: impl Fn(&SessionEvent) -> bool) -> bool {
        self.reports.iter().any(pred)
    }
}

fn connect_of(actions: &[Action]) -> ConnectionId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Connect { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Connect in {actions:?}"))
}

fn is_call(action: &Action, operation: Operation) -> bool {
    matches!(action, Action::Call(request) if request.operation() == operation)
}

#[test]
fn happy_path_describes_resolves_connects_and_acks_on_persisted() {
    let mut h = Harness::default();
    let first = h.actions();
    assert_eq!(
        first,
        vec![Action::Call(ControlRequest::Describe(
            DescribeStreamRequest {
                stream_name: "front-door".into()
            }
        ))]
    );
    let after_describe = h.describe_ok("ACTIVE", 24);
    assert!(
        is_call(&after_describe[0], Operation::GetDataEndpoint),
        "{after_describe:?}"
    );
    let after_endpoint = h.endpoint_ok();
    assert_eq!(
        after_endpoint,
        vec![Action::Connect {
            conn: ConnectionId(1),
            endpoint: ENDPOINT.into(),
            start_from: StartFrom::FirstUnacknowledged {
                hint_timecode_ms: None
            }
        }]
    );
    assert_eq!(h.session.open_connection(), Some(ConnectionId(1)));
    let conn = ConnectionId(1);
    assert!(h.handle(Event::Connected { conn }).is_empty());
    h.send_fragment(conn, 1000);
    assert!(h.ack(conn, AckKind::Buffering, 1000).is_empty());
    assert!(h.ack(conn, AckKind::Received, 1000).is_empty());
    assert_eq!(
        h.ack(conn, AckKind::Persisted, 1000),
        vec![Action::AckFragment {
            timecode_ms: 1000,
            kind: AckDurability::Persisted
        }]
    );
    // A duplicate PERSISTED is not a second ack.
    assert!(h.ack(conn, AckKind::Persisted, 1000).is_empty());
    assert!(h.reported(|e| matches!(
        e,
        SessionEvent::UnexpectedAck {
            timecode_ms: Some(1000),
            ..
        }
    )));
}

#[test]
fn without_retention_fragments_complete_on_received() {
    let mut h = Harness::default();
    let conn = h.streaming(0);
    h.send_fragment(conn, 5);
    assert_eq!(
        h.ack(conn, AckKind::Received, 5),
        vec![Action::AckFragment {
            timecode_ms: 5,
            kind: AckDurability::Received
        }]
    );
}

#[test]
fn tags_are_set_once_and_their_failure_is_not_fatal() {
    let mut config = SessionConfig::new("front-door");
    config.tags.insert("site".into(), "warehouse-7".into());
    let mut h = Harness::new(config);
    h.actions();
    let actions = h.describe_ok("ACTIVE", 24);
    match &actions[..] {
        [Action::Call(ControlRequest::Tag(request))] => {
            assert_eq!(
                request.stream_arn,
                "arn:aws:kinesisvideo:us-west-2:1:stream/front-door/1"
            );
            assert_eq!(
                request.tags.get("site").map(String::as_str),
                Some("warehouse-7")
            );
        }
        other => panic!("expected TagStream, got {other:?}"),
    }
    let failure =
        Harness::http_failure(400, Some("TagsPerResourceExceededLimitException"), "", None);
    let actions = h.handle(Event::ControlFailed {
        operation: Operation::TagStream,
        failure,
    });
    assert!(
        is_call(&actions[0], Operation::GetDataEndpoint),
        "{actions:?}"
    );
    assert!(h.reported(|e| matches!(e, SessionEvent::TagStreamFailed { .. })));
    // A later describe (after an outage) does not tag again.
    h.endpoint_ok();
    assert_eq!(h.session.state(), StateKind::Connecting);
}

#[test]
fn transient_tag_failures_are_retried_a_few_times() {
    let mut config = SessionConfig::new("front-door");
    config.tags.insert("k".into(), "v".into());
    let mut h = Harness::new(config);
    h.actions();
    h.describe_ok("ACTIVE", 24);
    let mut tag_calls = 1;
    loop {
        let failure = Harness::http_failure(503, None, "", None);
        let actions = h.handle(Event::ControlFailed {
            operation: Operation::TagStream,
            failure,
        });
        if actions
            .iter()
            .any(|a| is_call(a, Operation::GetDataEndpoint))
        {
            break;
        }
        assert_eq!(h.session.state(), StateKind::Backoff);
        let retry = h.fire_timer();
        assert!(is_call(&retry[0], Operation::TagStream), "{retry:?}");
        tag_calls += 1;
    }
    assert_eq!(tag_calls, 3);
}

#[test]
fn missing_stream_is_created_with_tags_then_polled_until_active() {
    let mut config = SessionConfig::new("front-door");
    config.create = Some(CreateStreamSettings {
        device_name: None,
        media_type: Some("video/h264".into()),
        kms_key_id: None,
        data_retention_in_hours: 24,
    });
    config.tags.insert("site".into(), "w7".into());
    let mut h = Harness::new(config);
    h.actions();
    let actions = h.handle(Event::ControlFailed {
        operation: Operation::DescribeStream,
        failure: Harness::http_failure(404, Some("ResourceNotFoundException"), "", None),
    });
    match &actions[..] {
        [Action::Call(ControlRequest::Create(request))] => {
            assert_eq!(request.data_retention_in_hours, Some(24));
            assert_eq!(request.tags.len(), 1);
        }
        other => panic!("expected CreateStream, got {other:?}"),
    }
    let actions = h.handle(Event::ControlResponse(ControlResponse::Created {
        stream_arn: "arn:x".into(),
    }));
    assert!(is_call(&actions[0], Operation::DescribeStream));
    h.describe_ok("CREATING", 24);
    assert_eq!(h.session.state(), StateKind::Backoff);
    let actions = h.fire_timer();
    assert!(is_call(&actions[0], Operation::DescribeStream));
    // ACTIVE: tags went with CreateStream, so straight to the endpoint.
    let actions = h.describe_ok("ACTIVE", 24);
    assert!(
        is_call(&actions[0], Operation::GetDataEndpoint),
        "{actions:?}"
    );
}

#[test]
fn missing_stream_without_permission_to_create_pauses_then_checks_again() {
    let mut h = Harness::default();
    h.actions();
    let actions = h.handle(Event::ControlFailed {
        operation: Operation::DescribeStream,
        failure: Harness::http_failure(400, Some("ResourceNotFoundException"), "", None),
    });
    assert!(actions.is_empty());
    assert_eq!(h.session.state(), StateKind::Paused);
    assert!(h.reported(|e| matches!(e, SessionEvent::OperatorAttention { pause, .. } if *pause == Duration::from_secs(60))));
    let actions = h.fire_timer();
    assert!(is_call(&actions[0], Operation::DescribeStream));
    // The second pause is longer.
    h.handle(Event::ControlFailed {
        operation: Operation::DescribeStream,
        failure: Harness::http_failure(404, None, "", None),
    });
    let pauses: Vec<Duration> = h
        .reports
        .iter()
        .filter_map(|e| match e {
            SessionEvent::OperatorAttention { pause, .. } => Some(*pause),
            _ => None,
        })
        .collect();
    assert_eq!(
        pauses,
        vec![Duration::from_secs(60), Duration::from_secs(120)]
    );
}

#[test]
fn deleting_stream_pauses() {
    let mut h = Harness::default();
    h.actions();
    h.describe_ok("DELETING", 24);
    assert_eq!(h.session.state(), StateKind::Paused);
}

#[test]
fn settings_mismatch_is_reported() {
    let mut config = SessionConfig::new("front-door");
    config.create = Some(CreateStreamSettings {
        device_name: None,
        media_type: Some("video/h265".into()),
        kms_key_id: None,
        data_retention_in_hours: 48,
    });
    let mut h = Harness::new(config);
    h.actions();
    h.describe_ok("ACTIVE", 24);
    assert!(h.reported(|e| matches!(
        e,
        SessionEvent::StreamSettingsMismatch {
            field: "DataRetentionInHours",
            ..
        }
    )));
    assert!(h.reported(|e| matches!(
        e,
        SessionEvent::StreamSettingsMismatch {
            field: "MediaType",
            ..
        }
    )));
}

#[test]
fn throttling_backs_off_with_growing_bounded_delays() {
    let mut h = Harness::default();
    h.actions();
    let mut delays = Vec::new();
    for _ in 0..10 {
        h.handle(Event::ControlFailed {
            operation: Operation::DescribeStream,
            failure: Harness::http_failure(400, Some("ClientLimitExceededException"), "", None),
        });
        let until = h.session.poll_timeout().expect("backoff timer");
        delays.push(until - h.now);
        let actions = h.fire_timer();
        assert!(is_call(&actions[0], Operation::DescribeStream));
    }
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(
        ms,
        vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
    );
}

#[test]
fn clock_skew_is_learned_once_then_retried_at_once() {
    let mut h = Harness::default();
    h.actions();
    let date = "Wed, 16 Jan 2019 07:31:25 GMT";
    let skewed = || {
        Harness::http_failure(
            403,
            Some("InvalidSignatureException"),
            r#"{"message":"Signature expired: 20190115T150405Z is now earlier than 20190116T073125Z"}"#,
            Some(date),
        )
    };
    let actions = h.handle(Event::ControlFailed {
        operation: Operation::DescribeStream,
        failure: skewed(),
    });
    assert_eq!(
        actions[0],
        Action::LearnClockSkew {
            server_date: date.into()
        }
    );
    assert!(is_call(&actions[1], Operation::DescribeStream));
    // Still skewed: do not loop, back off.
    let actions = h.handle(Event::ControlFailed {
        operation: Operation::DescribeStream,
        failure: skewed(),
    });
    assert!(actions.is_empty());
    assert_eq!(h.session.state(), StateKind::Backoff);
}

#[test]
fn refused_credentials_are_refreshed_and_persistent_refusal_pauses() {
    let mut h = Harness::default();
    h.actions();
    let refused = || Harness::http_failure(401, Some("NotAuthorizedException"), "", None);
    let actions = h.handle(Event::ControlFailed {
        operation: Operation::DescribeStream,
        failure: refused(),
    });
    assert_eq!(actions, vec![Action::RefreshCredentials]);
    // While the refresh is pending, failures do not count.
    h.fire_timer();
    assert!(
        h.handle(Event::ControlFailed {
            operation: Operation::DescribeStream,
            failure: refused(),
        })
        .is_empty()
    );
    for _ in 0..2 {
        h.handle(Event::CredentialsUpdated { expires_at: None });
        h.fire_timer();
        let actions = h.handle(Event::ControlFailed {
            operation: Operation::DescribeStream,
            failure: refused(),
        });
        assert_eq!(actions, vec![Action::RefreshCredentials]);
    }
    assert_eq!(h.session.state(), StateKind::Paused);
    assert!(h.reported(
        |e| matches!(e, SessionEvent::OperatorAttention { reason, .. } if reason.contains("IAM"))
    ));
}

#[test]
fn invalid_endpoint_and_repeated_connect_failures_re_resolve() {
    let mut h = Harness::default();
    h.actions();
    h.describe_ok("ACTIVE", 24);
    let conn = connect_of(&h.endpoint_ok());
    h.advance(Duration::from_secs(1));
    let actions = h.handle(Event::ConnectFailed {
        conn,
        failure: Harness::http_failure(400, Some("InvalidEndpointException"), "", None),
    });
    assert!(actions.is_empty());
    assert!(is_call(&h.fire_timer()[0], Operation::GetDataEndpoint));
    let conn = connect_of(&h.endpoint_ok());
    h.advance(Duration::from_secs(1));
    // One refused connect keeps the endpoint …
    h.handle(Event::ConnectFailed {
        conn,
        failure: Failure::Transport {
            kind: TransportKind::Connect,
            detail: "refused".into(),
        },
    });
    let conn = connect_of(&h.fire_timer());
    h.advance(Duration::from_secs(1));
    // … the second in a row drops it.
    h.handle(Event::ConnectFailed {
        conn,
        failure: Failure::Transport {
            kind: TransportKind::Connect,
            detail: "refused".into(),
        },
    });
    assert!(h.session.endpoint().is_none());
    assert!(is_call(&h.fire_timer()[0], Operation::GetDataEndpoint));
}

#[test]
fn connection_limit_backs_off_and_reconnects() {
    let mut h = Harness::default();
    h.actions();
    h.describe_ok("ACTIVE", 24);
    let conn = connect_of(&h.endpoint_ok());
    h.advance(Duration::from_secs(1));
    h.handle(Event::ConnectFailed {
        conn,
        failure: Harness::http_failure(400, Some("ConnectionLimitExceededException"), "", None),
    });
    assert_eq!(h.session.state(), StateKind::Backoff);
    assert_eq!(h.session.open_connection(), None);
    let next = connect_of(&h.fire_timer());
    assert_eq!(next, ConnectionId(2));
}

#[test]
fn skip_class_error_ack_skips_and_reconnects_past_it() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 1000);
    h.send_fragment(conn, 3000);
    let actions = h.ack(
        conn,
        AckKind::Error {
            code: AckErrorCode::InvalidMkvData,
        },
        1000,
    );
    assert_eq!(
        actions,
        vec![
            Action::SkipFragment {
                timecode_ms: 1000,
                code: AckErrorCode::InvalidMkvData
            },
            Action::Disconnect {
                conn,
                reason: DisconnectReason::ErrorAck(AckErrorCode::InvalidMkvData)
            }
        ]
    );
    let actions = h.fire_timer();
    assert_eq!(
        actions,
        vec![Action::Connect {
            conn: ConnectionId(2),
            endpoint: ENDPOINT.into(),
            start_from: StartFrom::FirstUnacknowledged {
                hint_timecode_ms: Some(3000)
            }
        }]
    );
    // The old connection's late events change nothing.
    assert!(h.ack(conn, AckKind::Persisted, 3000).is_empty());
    assert!(
        h.handle(Event::ConnectionClosed {
            conn,
            failure: None
        })
        .is_empty()
    );
    assert_eq!(h.session.state(), StateKind::Connecting);
}

#[test]
fn retry_class_error_ack_resends_the_fragment() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 1000);
    let actions = h.ack(
        conn,
        AckKind::Error {
            code: AckErrorCode::InternalError,
        },
        1000,
    );
    assert_eq!(
        actions,
        vec![Action::Disconnect {
            conn,
            reason: DisconnectReason::ErrorAck(AckErrorCode::InternalError)
        }]
    );
    let actions = h.fire_timer();
    assert!(matches!(
        actions[..],
        [Action::Connect {
            start_from: StartFrom::FirstUnacknowledged {
                hint_timecode_ms: Some(1000)
            },
            ..
        }]
    ));
}

#[test]
fn a_fragment_that_keeps_failing_with_read_errors_is_skipped_eventually() {
    let mut h = Harness::default();
    let mut conn = h.streaming(24);
    let mut skipped = false;
    for attempt in 1..=5 {
        h.send_fragment(conn, 1000);
        let actions = h.ack(
            conn,
            AckKind::Error {
                code: AckErrorCode::StreamReadError,
            },
            1000,
        );
        skipped = actions.iter().any(|a| {
            matches!(
                a,
                Action::SkipFragment {
                    timecode_ms: 1000,
                    ..
                }
            )
        });
        assert_eq!(skipped, attempt == 5, "attempt {attempt}");
        conn = connect_of(&h.fire_timer());
        h.handle(Event::Connected { conn });
        h.advance(Duration::from_secs(1));
    }
    assert!(skipped);
    assert!(h.reported(|e| matches!(
        e,
        SessionEvent::FragmentRetriesExhausted {
            timecode_ms: 1000,
            ..
        }
    )));
}

#[test]
fn kms_error_pauses_and_keeps_the_fragment_stream_deleted_redescribes() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 1000);
    let actions = h.ack(
        conn,
        AckKind::Error {
            code: AckErrorCode::KmsKeyDisabled,
        },
        1000,
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SkipFragment { .. }))
    );
    assert_eq!(h.session.state(), StateKind::Paused);
    assert!(is_call(&h.fire_timer()[0], Operation::DescribeStream));

    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 1000);
    h.ack(
        conn,
        AckKind::Error {
            code: AckErrorCode::StreamDeleted,
        },
        1000,
    );
    assert_eq!(h.session.state(), StateKind::Backoff);
    assert!(is_call(&h.fire_timer()[0], Operation::DescribeStream));
}

#[test]
fn no_buffering_ack_means_stale_connection() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.handle(Event::FragmentStarted {
        conn,
        timecode_ms: 1000,
    });
    assert_eq!(
        h.session.poll_timeout(),
        Some(h.now + Duration::from_secs(30))
    );
    h.advance(Duration::from_secs(29));
    assert!(h.handle(Event::Timeout).is_empty());
    let actions = h.fire_timer();
    assert_eq!(
        actions,
        vec![Action::Disconnect {
            conn,
            reason: DisconnectReason::Stale
        }]
    );
    assert!(h.reported(|e| matches!(
        e,
        SessionEvent::ConnectionStale {
            timecode_ms: 1000,
            ..
        }
    )));
}

#[test]
fn buffered_but_never_persisted_is_stale_too() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 1000);
    h.ack(conn, AckKind::Buffering, 1000);
    h.advance(Duration::from_secs(31));
    let actions = h.handle(Event::Timeout);
    assert!(matches!(
        actions[..],
        [Action::Disconnect {
            reason: DisconnectReason::Stale,
            ..
        }]
    ));
}

#[test]
fn rotation_waits_for_the_fragment_boundary_and_final_acks() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    let opened = h.now - Duration::from_secs(1);
    h.send_fragment(conn, 0);
    h.ack(conn, AckKind::Buffering, 0);
    h.ack(conn, AckKind::Persisted, 0);
    h.handle(Event::FragmentStarted {
        conn,
        timecode_ms: 2000,
    });
    h.ack(conn, AckKind::Buffering, 2000);
    // With maximal jitter: 40 min + 60 s.
    let rotate_at = h.session.poll_timeout().expect("rotation timer");
    assert_eq!(rotate_at - opened, Duration::from_secs(41 * 60));
    let actions = h.fire_timer();
    assert_eq!(
        actions,
        vec![Action::FinishAfterFragment {
            conn,
            reason: DrainReason::Rotation
        }]
    );
    assert_eq!(h.session.state(), StateKind::Draining);
    assert!(
        h.handle(Event::FragmentClosed {
            conn,
            timecode_ms: 2000
        })
        .is_empty()
    );
    let actions = h.ack(conn, AckKind::Persisted, 2000);
    // Endpoint resolved 41 min ago: past its 40 min life.
    assert_eq!(
        actions[..2],
        [
            Action::AckFragment {
                timecode_ms: 2000,
                kind: AckDurability::Persisted
            },
            Action::Disconnect {
                conn,
                reason: DisconnectReason::Drained(DrainReason::Rotation)
            }
        ]
    );
    assert!(is_call(&actions[2], Operation::GetDataEndpoint));
    let next = connect_of(&h.endpoint_ok());
    assert_eq!(next, ConnectionId(2));
}

#[test]
fn drain_deadline_forces_disconnect_with_unacked_fragments() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.handle(Event::FragmentStarted {
        conn,
        timecode_ms: 10,
    });
    h.ack(conn, AckKind::Buffering, 10);
    let actions = h.handle(Event::Shutdown);
    assert_eq!(
        actions,
        vec![Action::FinishAfterFragment {
            conn,
            reason: DrainReason::Shutdown
        }]
    );
    // The driver never closes the fragment: the drain's deadline ends it.
    let actions = h.fire_timer();
    assert_eq!(
        actions,
        vec![Action::Disconnect {
            conn,
            reason: DisconnectReason::Drained(DrainReason::Shutdown)
        }]
    );
    assert!(h.session.is_stopped());
    assert!(h.reported(|e| matches!(
        e,
        SessionEvent::DrainTimedOut {
            unacknowledged: 1,
            ..
        }
    )));
    assert_eq!(h.session.poll_timeout(), None);
}

#[test]
fn shutdown_between_fragments_with_everything_acked_disconnects_at_once() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 10);
    h.ack(conn, AckKind::Persisted, 10);
    let actions = h.handle(Event::Shutdown);
    assert_eq!(
        actions,
        vec![
            Action::FinishAfterFragment {
                conn,
                reason: DrainReason::Shutdown
            },
            Action::Disconnect {
                conn,
                reason: DisconnectReason::Drained(DrainReason::Shutdown)
            }
        ]
    );
    assert!(h.session.is_stopped());
    // Nothing happens after the stop.
    assert!(h.handle(Event::DataAvailable).is_empty());
}

#[test]
fn idle_close_waits_for_data() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 10);
    h.ack(conn, AckKind::Persisted, 10);
    let actions = h.handle(Event::ConnectionClosed {
        conn,
        failure: None,
    });
    assert!(actions.is_empty());
    assert_eq!(h.session.state(), StateKind::Idle);
    assert_eq!(h.session.open_connection(), None);
    let actions = h.handle(Event::DataAvailable);
    assert_eq!(connect_of(&actions), ConnectionId(2));
}

#[test]
fn close_with_unacked_fragments_is_a_failure() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    h.send_fragment(conn, 10);
    h.handle(Event::ConnectionClosed {
        conn,
        failure: None,
    });
    assert_eq!(h.session.state(), StateKind::Backoff);
    let actions = h.fire_timer();
    assert!(matches!(
        actions[..],
        [Action::Connect {
            start_from: StartFrom::FirstUnacknowledged {
                hint_timecode_ms: Some(10)
            },
            ..
        }]
    ));
}

#[test]
fn credentials_are_refreshed_ahead_of_expiry_and_connections_rotate_before_it() {
    let mut h = Harness::default();
    h.actions();
    let expiry = h.now + Duration::from_secs(20 * 60);
    h.handle(Event::CredentialsUpdated {
        expires_at: Some(expiry),
    });
    let conn = h.streaming(24);
    let timer = h.session.poll_timeout().expect("timer");
    // Refresh 5 min ahead (15 min from now) comes before the rotation (30 s before expiry).
    assert_eq!(timer, expiry - Duration::from_secs(5 * 60));
    assert_eq!(h.fire_timer(), vec![Action::RefreshCredentials]);
    h.handle(Event::CredentialsUpdated {
        expires_at: Some(h.now + Duration::from_secs(3600)),
    });
    let actions = h.fire_timer();
    assert_eq!(h.now, expiry - Duration::from_secs(30));
    assert_eq!(
        actions,
        vec![
            Action::FinishAfterFragment {
                conn,
                reason: DrainReason::Rotation
            },
            Action::Disconnect {
                conn,
                reason: DisconnectReason::Drained(DrainReason::Rotation)
            },
            Action::Connect {
                conn: ConnectionId(2),
                endpoint: ENDPOINT.into(),
                start_from: StartFrom::FirstUnacknowledged {
                    hint_timecode_ms: None
                }
            }
        ]
    );
}

#[test]
fn expiring_credentials_from_the_source_trigger_one_refresh() {
    let mut h = Harness::default();
    h.actions();
    assert_eq!(
        h.handle(Event::CredentialsExpiring),
        vec![Action::RefreshCredentials]
    );
    assert!(h.handle(Event::CredentialsExpiring).is_empty());
    h.handle(Event::CredentialsRefreshFailed {
        detail: "IoT endpoint unreachable".into(),
    });
    assert!(h.reported(|e| matches!(e, SessionEvent::CredentialRefreshFailed { .. })));
    // Retried after a delay (1 s ceiling first).
    h.advance(Duration::from_secs(1));
    assert_eq!(h.handle(Event::Timeout), vec![Action::RefreshCredentials]);
}

#[test]
fn credentials_already_inside_the_lead_do_not_loop() {
    let mut h = Harness::default();
    h.actions();
    h.handle(Event::CredentialsUpdated {
        expires_at: Some(h.now + Duration::from_secs(60)),
    });
    // Not an immediate refresh storm: the next refresh is a backoff away.
    assert!(h.handle(Event::Timeout).is_empty());
    assert_eq!(h.fire_timer(), vec![Action::RefreshCredentials]);
}

#[test]
fn expired_token_body_on_the_ack_stream_refreshes_and_reconnects() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    let actions = h.handle(Event::Ack {
        conn,
        ack: AckEvent {
            kind: AckKind::ServiceError {
                error_type: None,
                message: Some("The security token included in the request is expired".into()),
            },
            fragment_timecode_ms: None,
            fragment_number: None,
        },
    });
    assert_eq!(
        actions,
        vec![
            Action::Disconnect {
                conn,
                reason: DisconnectReason::ServiceError
            },
            Action::RefreshCredentials
        ]
    );
    assert_eq!(h.session.state(), StateKind::Backoff);
}

#[test]
fn garbled_ack_stream_reconnects_after_several_errors() {
    let mut h = Harness::default();
    let conn = h.streaming(24);
    let error = AckError::Garbled {
        offset: 0,
        byte: b'x',
    };
    for _ in 0..4 {
        assert!(
            h.handle(Event::AckParseError {
                conn,
                error: error.clone()
            })
            .is_empty()
        );
    }
    let actions = h.handle(Event::AckParseError { conn, error });
    assert_eq!(
        actions,
        vec![Action::Disconnect {
            conn,
            reason: DisconnectReason::AckStreamGarbled
        }]
    );
}

#[test]
fn control_and_connect_timeouts_count_as_failures() {
    let mut h = Harness::default();
    h.actions();
    assert_eq!(
        h.session.poll_timeout(),
        Some(h.now + Duration::from_secs(20))
    );
    h.fire_timer();
    assert_eq!(h.session.state(), StateKind::Backoff);
    assert!(h.reported(|e| matches!(
        e,
        SessionEvent::CallFailed {
            operation: Operation::DescribeStream,
            ..
        }
    )));
    assert!(is_call(&h.fire_timer()[0], Operation::DescribeStream));
    h.describe_ok("ACTIVE", 24);
    let conn = connect_of(&h.endpoint_ok());
    let actions = h.fire_timer();
    assert_eq!(
        actions,
        vec![Action::Disconnect {
            conn,
            reason: DisconnectReason::ConnectTimeout
        }]
    );
    // A late Connected for the abandoned attempt is ignored.
    h.handle(Event::Connected { conn });
    assert_eq!(h.session.state(), StateKind::Backoff);
}

#[test]
fn shutdown_while_connecting_disconnects_and_stops() {
    let mut h = Harness::default();
    h.actions();
    h.describe_ok("ACTIVE", 24);
    let conn = connect_of(&h.endpoint_ok());
    assert_eq!(
        h.handle(Event::Shutdown),
        vec![Action::Disconnect {
            conn,
            reason: DisconnectReason::Shutdown
        }]
    );
    assert!(h.session.is_stopped());
}

#[test]
fn config_validation_names_the_field() {
    let mut config = SessionConfig::new("front-door");
    config.rotation_interval = Duration::from_secs(44 * 60);
    match Session::new(config, Box::new(|| 0u64), Instant::now()) {
        Err(SessionConfigError::Invalid { field, .. }) => assert_eq!(field, "rotation_interval"),
        other => panic!("expected an error, got {other:?}"),
    }
    let config = SessionConfig::new("bad name");
    assert!(matches!(
        Session::new(config, Box::new(|| 0u64), Instant::now()),
        Err(SessionConfigError::Control(ControlError::InvalidField {
            field: "StreamName",
            ..
        }))
    ));
    let mut config = SessionConfig::new("ok");
    config.operator_pause_max = Duration::MAX;
    assert!(matches!(
        Session::new(config, Box::new(|| 0u64), Instant::now()),
        Err(SessionConfigError::Invalid {
            field: "operator_pause_max",
            ..
        })
    ));
    let mut config = SessionConfig::new("ok");
    config.rotation_jitter = Duration::MAX;
    assert!(matches!(
        Session::new(config, Box::new(|| 0u64), Instant::now()),
        Err(SessionConfigError::Invalid {
            field: "rotation_jitter",
            ..
        })
    ));
    let mut config = SessionConfig::new("ok");
    config.backoff.cap = Duration::from_millis(10);
    assert!(matches!(
        Session::new(config, Box::new(|| 0u64), Instant::now()),
        Err(SessionConfigError::Invalid {
            field: "backoff.cap",
            ..
        })
    ));
}

#[test]
fn putmedia_attempts_are_spaced_for_the_5_tps_quota() {
    // The backoff draws 0 every time.
    let mut h = Harness::with_jitter(SessionConfig::new("front-door"), || 0u64);
    h.actions();
    h.describe_ok("ACTIVE", 24);
    let first_at = h.now;
    let conn = connect_of(&h.endpoint_ok());
    h.handle(Event::ConnectFailed {
        conn,
        failure: Failure::Transport {
            kind: TransportKind::Connect,
            detail: "refused".into(),
        },
    });
    // The zero backoff ends at once, but the retry waits for the 200 ms spacing.
    assert!(h.handle(Event::Timeout).is_empty());
    assert_eq!(h.session.state(), StateKind::Backoff);
    let actions = h.fire_timer();
    assert_eq!(h.now - first_at, Duration::from_millis(200));
    assert_eq!(connect_of(&actions), ConnectionId(2));
}
