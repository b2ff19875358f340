//! HTTP/1.1 full duplex with reqwest: the response head and body are readable while the request
//! body is still streaming.

use std::time::Duration;

use bytes::Bytes;
use kinesis_edge::upload::putmedia::body_channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(5);

/// Reads from `socket` into `buf` until `buf` contains `needle` after `from`; returns the end
/// index of the needle.
async fn read_until(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    from: usize,
    needle: &[u8],
) -> usize {
    loop {
        if let Some(pos) = buf
            .get(from..)
            .and_then(|tail| tail.windows(needle.len()).position(|w| w == needle))
        {
            return from + pos + needle.len();
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "client closed early; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn reqwest_reads_the_response_while_the_request_body_streams() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let head_end = read_until(&mut socket, &mut buf, 0, b"\r\n\r\n").await;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        // The first chunk: its size line and its data.
        let first_end = read_until(&mut socket, &mut buf, head_end, b"FIRST\r\n").await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .expect("write head");
        let ack = b"{\"EventType\":\"BUFFERING\",\"FragmentTimecode\":1}\n";
        socket
            .write_all(format!("{:x}\r\n", ack.len()).as_bytes())
            .await
            .expect("write");
        socket.write_all(ack).await.expect("write");
        socket.write_all(b"\r\n").await.expect("write");
        // Only now read on: the second chunk comes after the client saw the first ACK.
        let second_end = read_until(&mut socket, &mut buf, first_end, b"SECOND\r\n").await;
        let ack = b"{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1}\n";
        socket
            .write_all(format!("{:x}\r\n", ack.len()).as_bytes())
            .await
            .expect("write");
        socket.write_all(ack).await.expect("write");
        socket.write_all(b"\r\n").await.expect("write");
        // The body ends with the chunked terminator once the sender finishes.
        read_until(&mut socket, &mut buf, second_end, b"0\r\n\r\n").await;
        socket.write_all(b"0\r\n\r\n").await.expect("write end");
    });

    let client = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let (body, request_body) = body_channel(4, None);
    body.send(Bytes::from_static(b"FIRST"))
        .expect("first chunk");
    let response = tokio::time::timeout(
        STEP,
        client
            .post(format!("http://{addr}/putMedia"))
            .body(request_body)
            .send(),
    )
    .await
    .expect("response head while the body is still open")
    .expect("response");
    assert_eq!(response.status(), 200);
    let mut response = response;
    let first = tokio::time::timeout(STEP, response.chunk())
        .await
        .expect("first ACK while the body is still open")
        .expect("chunk")
        .expect("some bytes");
    assert!(
        first.starts_with(b"{\"EventType\":\"BUFFERING\""),
        "{first:?}"
    );

    body.send(Bytes::from_static(b"SECOND"))
        .expect("second chunk");
    let second = tokio::time::timeout(STEP, response.chunk())
        .await
        .expect("second ACK")
        .expect("chunk")
        .expect("some bytes");
    assert!(
        second.starts_with(b"{\"EventType\":\"PERSISTED\""),
        "{second:?}"
    );

    body.finish();
    let end = tokio::time::timeout(STEP, response.chunk())
        .await
        .expect("end of response")
        .expect("clean end");
    assert!(end.is_none());
    server.await.expect("server");
}

/// The uploader's own connection task: signed request with the documented headers, HTTP 200
/// and the first ACK reported while the body is still open, the next ACK after more body.
#[tokio::test]
async fn the_put_media_task_reports_acks_while_its_body_streams() {
    use kinesis_edge::aws::{
        ClockSkew, Credentials, CredentialsCache, DEFAULT_REFRESH_BEFORE, StaticProvider,
    };
    use kinesis_edge::upload::ack::AckKind;
    use kinesis_edge::upload::putmedia::{KvsAccess, PutMediaTarget, TimecodeType};
    use kinesis_edge::upload::session::{ConnectionId, Event};
    use std::sync::Arc;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let head_end = read_until(&mut socket, &mut buf, 0, b"\r\n\r\n").await;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let first_end = read_until(&mut socket, &mut buf, head_end, b"EBMLHEADER\r\n").await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .expect("write head");
        for (ack, until) in [
            (
                &b"{\"EventType\":\"BUFFERING\",\"FragmentTimecode\":1000}\n"[..],
                &b"CLUSTER\r\n"[..],
            ),
            (
                &b"{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1000}\n"[..],
                &b"0\r\n\r\n"[..],
            ),
        ] {
            // ACKs split across chunks: the parser joins them.
            let (a, b) = ack.split_at(10);
            for part in [a, b] {
                socket
                    .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                    .await
                    .expect("write");
                socket.write_all(part).await.expect("write");
                socket.write_all(b"\r\n").await.expect("write");
            }
            read_until(&mut socket, &mut buf, first_end, until).await;
        }
        socket.write_all(b"0\r\n\r\n").await.expect("write end");
        head
    });

    let provider = Arc::new(StaticProvider::new(Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        None,
    )));
    let access = KvsAccess::new(
        CredentialsCache::new(provider, DEFAULT_REFRESH_BEFORE),
        ClockSkew::new(),
        "us-west-2",
        format!("http://{addr}"),
        Duration::from_secs(5),
    )
    .expect("access");
    let (body, request_body) = body_channel(4, None);
    let (events_tx, mut events) = tokio::sync::mpsc::channel(16);
    let target = PutMediaTarget {
        conn: ConnectionId(7),
        endpoint: format!("http://{addr}"),
        stream_name: "front-door".into(),
        timecode_type: TimecodeType::Absolute,
        producer_start_ns: 1_700_000_000_123_000_000,
    };
    let task = tokio::spawn(async move { access.put_media(target, request_body, events_tx).await });
    body.send(Bytes::from_static(b"EBMLHEADER"))
        .expect("header chunk");

    assert_eq!(
        next_event(&mut events).await,
        Event::Connected {
            conn: ConnectionId(7)
        }
    );
    match next_event(&mut events).await {
        Event::Ack { conn, ack } => {
            assert_eq!(conn, ConnectionId(7));
            assert_eq!(ack.kind, AckKind::Buffering);
            assert_eq!(ack.fragment_timecode_ms, Some(1000));
        }
        other => panic!("expected BUFFERING, got {other:?}"),
    }
    body.send(Bytes::from_static(b"CLUSTER"))
        .expect("fragment chunk");
    match next_event(&mut events).await {
        Event::Ack { ack, .. } => assert_eq!(ack.kind, AckKind::Persisted),
        other => panic!("expected PERSISTED, got {other:?}"),
    }
    body.finish();
    assert_eq!(
        next_event(&mut events).await,
        Event::ConnectionClosed {
            conn: ConnectionId(7),
            failure: None
        }
    );
    task.await.expect("task");
    let head = server.await.expect("server");
    for expected in [
        "post /putmedia http/1.1",
        "x-amzn-stream-name: front-door",
        "x-amzn-fragment-timecode-type: absolute",
        "x-amzn-producer-start-timestamp: 1700000000.123",
        "x-amzn-fragment-acknowledgment-required: 1",
        "transfer-encoding: chunked",
        "/us-west-2/kinesisvideo/aws4_request",
    ] {
        assert!(head.contains(expected), "{expected:?} missing from\n{head}");
    }
    assert!(!head.contains("x-amz-content-sha256"), "{head}");
}

async fn next_event<T>(events: &mut tokio::sync::mpsc::Receiver<T>) -> T {
    tokio::time::timeout(STEP, events.recv())
        .await
        .expect("event in time")
        .expect("event")
}
