//! SigV4 signatures for the requests kinesis-edge sends, against values computed independently
//! with botocore 1.44.8 (`SigV4Auth` at a pinned time of 2015-08-30T12:36:00Z, credentials
//! AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY / SESSIONTOKEN), and over loopback.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kinesis_edge::aws::{ClockSkew, Credentials, PayloadHash, Secret, Service, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn pinned_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_440_938_160)
}

fn credentials() -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        SECRET,
        Some(Secret::new("SESSIONTOKEN")),
        None,
    )
}

fn header<B>(request: &http::Request<B>, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn put_media_request(uri: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("x-amzn-stream-name", "cam-1")
        .header("x-amzn-fragment-timecode-type", "ABSOLUTE")
        .header("x-amzn-producer-start-timestamp", "1440938160.000")
        .header("x-amzn-fragment-acknowledgment-required", "1")
        .body(())
        .expect("valid request")
}

#[test]
fn put_media_empty_streaming_matches_botocore() {
    let mut request =
        put_media_request("https://s-1234abcd.kinesisvideo.us-west-2.amazonaws.com/putMedia");
    sign(
        &mut request,
        &credentials(),
        "us-west-2",
        Service::KinesisVideo,
        pinned_time(),
        PayloadHash::EmptyStreaming,
    )
    .expect("signs");
    assert_eq!(header(&request, "x-amz-date"), "20150830T123600Z");
    assert_eq!(header(&request, "x-amz-security-token"), "SESSIONTOKEN");
    assert!(request.headers().get("x-amz-content-sha256").is_none());
    assert_eq!(
        header(&request, "authorization"),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/kinesisvideo/aws4_request, \
         SignedHeaders=host;x-amz-date;x-amz-security-token;x-amzn-fragment-acknowledgment-required;\
         x-amzn-fragment-timecode-type;x-amzn-producer-start-timestamp;x-amzn-stream-name, \
         Signature=78a1d2359242a4b43ea4c2fa75c947bb06e49954c417924311e5c5a40f0c2873"
    );
}

#[test]
fn kinesis_put_records_matches_botocore() {
    let body = br#"{"StreamName":"edge-telemetry","Records":[{"Data":"aGVsbG8=","PartitionKey":"cam-1"}]}"#;
    let mut request = http::Request::builder()
        .method("POST")
        .uri("https://kinesis.us-west-2.amazonaws.com/")
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "Kinesis_20131202.PutRecords")
        .body(body.to_vec())
        .expect("valid request");
    let payload = request.body().clone();
    sign(
        &mut request,
        &credentials(),
        "us-west-2",
        Service::Kinesis,
        pinned_time(),
        PayloadHash::Bytes(&payload),
    )
    .expect("signs");
    assert_eq!(
        header(&request, "authorization"),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/kinesis/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
         Signature=6ecdc5e9f748db79d6dd29b7402421e82c3fdc13cfbda1eddd4539a6c2f91fc2"
    );
}

#[test]
fn kvs_control_plane_in_china_matches_botocore() {
    let body = br#"{"StreamName":"cam-1"}"#;
    let mut request = http::Request::builder()
        .method("POST")
        .uri("https://kinesisvideo.cn-north-1.amazonaws.com.cn/describeStream")
        .header("content-type", "application/json")
        .body(())
        .expect("valid request");
    sign(
        &mut request,
        &credentials(),
        "cn-north-1",
        Service::KinesisVideo,
        pinned_time(),
        PayloadHash::Bytes(body),
    )
    .expect("signs");
    assert!(
        header(&request, "authorization").ends_with(
            "Signature=4fe0d6883e4bfffbc07dbcc942a46a3765a7fa3c703b5656ed57f08fa6fed5f4"
        )
    );
}

#[test]
fn skew_learned_from_a_date_header_moves_the_signing_time() {
    let skew = ClockSkew::new();
    // The device believes it is 2015-08-30T12:26:00Z; AWS's Date header says 12:36:00.
    let local = pinned_time() - Duration::from_secs(600);
    skew.learn_from_date("Sun, 30 Aug 2015 12:36:00 GMT", local)
        .expect("valid date");
    let mut request =
        put_media_request("https://s-1234abcd.kinesisvideo.us-west-2.amazonaws.com/putMedia");
    sign(
        &mut request,
        &credentials(),
        "us-west-2",
        Service::KinesisVideo,
        skew.apply(local),
        PayloadHash::EmptyStreaming,
    )
    .expect("signs");
    assert_eq!(header(&request, "x-amz-date"), "20150830T123600Z");
    assert!(
        header(&request, "authorization").ends_with(
            "Signature=78a1d2359242a4b43ea4c2fa75c947bb06e49954c417924311e5c5a40f0c2873"
        )
    );
}

/// A signed request with a streamed (chunked) body arrives at a loopback server with the host
/// it was signed for and the signature headers intact.
#[tokio::test]
async fn signed_streaming_request_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        // Read until the chunked body's terminating chunk.
        while !received.ends_with(b"0\r\n\r\n") {
            let n = socket.read(&mut buffer).await.expect("read");
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        String::from_utf8_lossy(&received).to_lowercase()
    });

    let uri = format!("http://{address}/putMedia");
    let mut request = put_media_request(&uri);
    sign(
        &mut request,
        &credentials(),
        "us-west-2",
        Service::KinesisVideo,
        pinned_time(),
        PayloadHash::EmptyStreaming,
    )
    .expect("signs");
    let authorization = header(&request, "authorization").to_lowercase();
    let chunks = body_stream(vec![b"\x1a\x45\xdf\xa3".to_vec(), b"cluster".to_vec()]);
    let (parts, ()) = request.into_parts();
    let request = http::Request::from_parts(parts, reqwest::Body::wrap_stream(chunks));
    let client = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let response = client
        .execute(reqwest::Request::try_from(request).expect("convertible"))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let wire = server.await.expect("server");
    assert!(wire.starts_with("post /putmedia http/1.1\r\n"), "{wire}");
    assert!(wire.contains(&format!("\r\nhost: {address}\r\n")), "{wire}");
    assert!(
        wire.contains("\r\nx-amz-date: 20150830t123600z\r\n"),
        "{wire}"
    );
    assert!(
        wire.contains("\r\nx-amz-security-token: sessiontoken\r\n"),
        "{wire}"
    );
    assert!(
        wire.contains(&format!("\r\nauthorization: {authorization}\r\n")),
        "{wire}"
    );
    assert!(
        wire.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{wire}"
    );
    assert!(
        !wire.contains(&SECRET.to_lowercase()),
        "the secret key never travels"
    );
}

/// A body stream yielding `chunks` one by one, as a PutMedia body is pulled from the buffer.
fn body_stream(chunks: Vec<Vec<u8>>) -> ChunkStream {
    ChunkStream(chunks.into_iter())
}

struct ChunkStream(std::vec::IntoIter<Vec<u8>>);

impl futures_core::Stream for ChunkStream {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next().map(Ok))
    }
}
