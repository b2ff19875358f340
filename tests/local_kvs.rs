//! The local Kinesis Video Streams endpoint driven over HTTP as the uploader drives AWS: real
//! x264 + AAC media (encoded by GStreamer here) muxed by our FragmentMuxer, cut into chunks of
//! random sizes, sent as a chunked PutMedia body signed with the `aws` module, while the ACKs
//! are read from the same connection. Stored files are checked with ffprobe and ffmpeg.

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use http_body_util::channel::{Channel, Sender};
use kinesis_edge::aws::{ClockSkew, Credentials, PayloadHash, Service, sign};
use kinesis_edge::local::kvs::ack::AckEventType;
use kinesis_edge::local::kvs::faults::FaultRequest;
use kinesis_edge::local::kvs::store::{FragmentRecord, read_fragment_log};
use kinesis_edge::local::kvs::{FAULTS_PATH, LocalEndpoint, LocalEndpointConfig};
use kinesis_edge::media::{Codec, Frame, NalFormat};
use kinesis_edge::mkv::ebml::{EbmlWriter, id};
use kinesis_edge::mkv::{
    FragmentEnd, FragmentMuxer, FragmentStart, FragmentTags, MuxSink, MuxerConfig, TimecodeMode,
    TrackSpec,
};
use serde_json::{Value, json};
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const ACCESS_KEY: &str = "AKIDLOCALTEST";
const SECRET_KEY: &str = "local/test+secret";
const REGION: &str = "us-west-2";
/// 2023-11-14T22:13:20Z in ns.
const T0: u64 = 1_700_000_000_000_000_000;
const VIDEO_FRAMES: usize = 90;
const AUDIO_FRAMES: usize = 141;
const WAIT: Duration = Duration::from_secs(5);

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None, None)
}

// ---------------------------------------------------------------------------------------------
// Media: 3 s of x264 (0.5 s GOPs) and AAC, encoded once per test binary.

struct Encoded {
    video: Vec<Frame>,
    video_codec_data: Option<Bytes>,
    audio: Vec<Frame>,
    audio_codec_data: Option<Bytes>,
}

fn encode(pipeline: &str, track: usize) -> Result<(Vec<Frame>, Option<Bytes>), String> {
    gst::init().map_err(|e| e.to_string())?;
    let pipeline = gst::parse::launch(pipeline)
        .map_err(|e| format!("cannot build {pipeline}: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let sink = pipeline
        .by_name("out")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("no appsink")?;
    sink.set_sync(false);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut codec_data = None;
    while let Ok(sample) = sink.pull_sample() {
        if codec_data.is_none() {
            codec_data = sample
                .caps()
                .and_then(|c| c.structure(0))
                .and_then(|s| s.get::<gst::Buffer>("codec_data").ok())
                .and_then(|b| b.map_readable().ok().map(|m| Bytes::copy_from_slice(&m)));
        }
        let buffer = sample.buffer().ok_or("sample without buffer")?;
        let pts = buffer.pts().ok_or("buffer without PTS")?.nseconds();
        let dts = buffer.dts().map_or(pts, |d| d.nseconds());
        let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let data = Bytes::copy_from_slice(&buffer.map_readable().map_err(|e| e.to_string())?);
        raw.push((pts, dts, key, data));
    }
    pipeline
        .set_state(gst::State::Null)
        .map_err(|e| e.to_string())?;
    let base = raw.first().ok_or("no buffers")?.0;
    let frames = raw
        .into_iter()
        .map(|(pts, dts, key, data)| Frame {
            track,
            pts_ns: T0 + pts - base,
            dts_ns: T0 + dts.max(base) - base,
            duration_ns: 0,
            key,
            data,
        })
        .collect();
    Ok((frames, codec_data))
}

fn encoded() -> &'static Encoded {
    static MEDIA: OnceLock<Encoded> = OnceLock::new();
    MEDIA.get_or_init(|| {
        let (video, video_codec_data) = encode(
            &format!(
                "videotestsrc num-buffers={VIDEO_FRAMES} ! \
                 video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
                 x264enc key-int-max=15 bframes=0 tune=zerolatency ! \
                 video/x-h264,stream-format=avc,alignment=au ! appsink name=out"
            ),
            0,
        )
        .expect("GStreamer x264enc (gstreamer1.0-plugins-ugly) encodes the test video");
        let (audio, audio_codec_data) = encode(
            &format!(
                "audiotestsrc num-buffers={AUDIO_FRAMES} samplesperbuffer=1024 ! \
                 audio/x-raw,rate=48000,channels=2 ! audioconvert ! avenc_aac ! aacparse ! \
                 audio/mpeg,stream-format=raw ! appsink name=out"
            ),
            1,
        )
        .expect("GStreamer avenc_aac (gstreamer1.0-libav) encodes the test audio");
        Encoded {
            video,
            video_codec_data,
            audio,
            audio_codec_data,
        }
    })
}

/// One fragment as the muxer wrote it.
struct Muxed {
    timecode: u64,
    frames: u32,
    bytes: Vec<u8>,
}

/// The muxer's output split at fragment boundaries.
struct Media {
    header: Vec<u8>,
    fragments: Vec<Muxed>,
    trailer: Vec<u8>,
    video_frames: usize,
    audio_frames: usize,
}

#[derive(Default)]
struct Collect {
    header: Vec<u8>,
    fragments: Vec<Muxed>,
    trailer: Vec<u8>,
}

impl Collect {
    fn out(&mut self) -> &mut Vec<u8> {
        match self.fragments.last_mut() {
            Some(f) => &mut f.bytes,
            None => &mut self.header,
        }
    }
}

impl MuxSink for Collect {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.header.extend_from_slice(header);
        Ok(())
    }
    fn fragment_start(&mut self, start: &FragmentStart) -> io::Result<()> {
        self.fragments.push(Muxed {
            timecode: start.timecode_ms,
            frames: 0,
            bytes: Vec::new(),
        });
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out().extend_from_slice(bytes);
        Ok(())
    }
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        self.out().extend_from_slice(payload);
        Ok(())
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        if let Some(f) = self.fragments.last_mut() {
            f.frames = end.frames;
        }
        Ok(())
    }
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.trailer.extend_from_slice(trailer);
        Ok(())
    }
}

fn media(mode: TimecodeMode) -> Media {
    let encoded = encoded();
    let mut video = TrackSpec::video(Codec::H264, NalFormat::LengthPrefixed);
    video.codec_private = encoded.video_codec_data.clone();
    let mut audio = TrackSpec::aac(48_000, 2);
    audio.codec_private = encoded.audio_codec_data.clone();
    let config = MuxerConfig {
        fragment_duration: Duration::from_millis(500),
        timecodes: mode,
        ..MuxerConfig::new(vec![video, audio])
    };
    let tags = FragmentTags::new();
    tags.set_persistent("camera", "test-pattern")
        .expect("a valid tag");
    let mut muxer = FragmentMuxer::new(config, tags).expect("a valid muxer configuration");
    let mut sink = Collect::default();
    let mut v = encoded.video.iter().cloned().peekable();
    let mut a = encoded.audio.iter().cloned().peekable();
    loop {
        let take_video = match (v.peek(), a.peek()) {
            (Some(vf), Some(af)) => vf.dts_ns <= af.pts_ns + 100_000_000,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let frame = if take_video { v.next() } else { a.next() };
        if let Some(frame) = frame {
            muxer
                .push(frame, &mut sink)
                .expect("the muxer takes encoded frames");
        }
    }
    muxer.finish(&mut sink).expect("the muxer finishes");
    assert!(
        sink.fragments.len() >= 5,
        "{} fragments",
        sink.fragments.len()
    );
    Media {
        header: sink.header,
        fragments: sink.fragments,
        trailer: sink.trailer,
        video_frames: encoded.video.len(),
        audio_frames: encoded.audio.len(),
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-built MKV for the rule violations.

fn mkv_header(tracks: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = EbmlWriter::new(&mut buf);
    w.begin(id::EBML).unwrap();
    w.string(id::DOC_TYPE, "matroska").unwrap();
    w.end().unwrap();
    w.begin_unknown(id::SEGMENT);
    w.begin(id::INFO).unwrap();
    w.uint(id::TIMECODE_SCALE, 1_000_000).unwrap();
    w.end().unwrap();
    w.begin(id::TRACKS).unwrap();
    for n in 1..=tracks {
        w.begin(id::TRACK_ENTRY).unwrap();
        w.uint(id::TRACK_NUMBER, n).unwrap();
        w.uint(id::TRACK_TYPE, if n == 1 { 1 } else { 2 }).unwrap();
        w.string(
            id::CODEC_ID,
            if n == 1 { "V_MPEG4/ISO/AVC" } else { "A_AAC" },
        )
        .unwrap();
        w.end().unwrap();
    }
    w.end().unwrap();
    buf
}

fn mkv_cluster(timecode: u64, blocks: &[(u8, i16)]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = EbmlWriter::new(&mut buf);
    w.begin_unknown(id::CLUSTER);
    w.uint(id::TIMECODE, timecode).unwrap();
    for (track, offset) in blocks {
        let mut block = vec![0x80 | track];
        block.extend_from_slice(&offset.to_be_bytes());
        block.push(0x80);
        block.extend_from_slice(&[0x55; 40]);
        w.binary(id::SIMPLE_BLOCK, &block).unwrap();
    }
    buf
}

fn mkv_tags(count: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = EbmlWriter::new(&mut buf);
    w.begin(id::TAGS).unwrap();
    for i in 0..count {
        w.begin(id::TAG).unwrap();
        w.begin(id::SIMPLE_TAG).unwrap();
        w.string(id::TAG_NAME, &format!("key{i}")).unwrap();
        w.string(id::TAG_STRING, "value").unwrap();
        w.end().unwrap();
        w.end().unwrap();
    }
    w.end().unwrap();
    buf
}

// ---------------------------------------------------------------------------------------------
// Clients.

async fn start_endpoint(dir: &Path, tweak: impl FnOnce(&mut LocalEndpointConfig)) -> LocalEndpoint {
    let mut config = LocalEndpointConfig::new(dir);
    config.credentials = vec![credentials()];
    config.signing_region = Some(REGION.to_owned());
    config.kvs.persist_delay = Duration::from_millis(20);
    tweak(&mut config);
    LocalEndpoint::start(config)
        .await
        .expect("the endpoint starts")
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    fn error_type(&self) -> &str {
        self.headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

/// A signed control-plane call; `key` None sends no Authorization at all.
async fn call_at(
    url: &str,
    operation: &str,
    body: Value,
    key: Option<&Credentials>,
    time: SystemTime,
) -> reqwest::Result<Answer> {
    let body = body.to_string();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{url}/{operation}"))
        .header("content-type", "application/json")
        .body(reqwest::Body::from(body.clone()))
        .expect("a valid request");
    if let Some(key) = key {
        sign(
            &mut request,
            key,
            REGION,
            Service::KinesisVideo,
            time,
            PayloadHash::Bytes(body.as_bytes()),
        )
        .expect("signing works");
    }
    let request = reqwest::Request::try_from(request).expect("reqwest takes it");
    let response = reqwest::Client::new().execute(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer {
        status,
        headers,
        body,
    })
}

async fn call(url: &str, operation: &str, body: Value) -> Answer {
    call_at(
        url,
        operation,
        body,
        Some(&credentials()),
        SystemTime::now(),
    )
    .await
    .expect("the endpoint answers")
}

async fn create_stream(url: &str, name: &str, retention: u64) -> String {
    let answer = call(url, "createStream", json!({"StreamName": name, "DataRetentionInHours": retention, "MediaType": "video/h264,audio/aac"})).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["StreamARN"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[derive(Debug)]
enum Event {
    Ack(Value, Instant),
    End,
    Failed(String),
}

/// A PutMedia upload: the body is fed by `send`, ACKs come out of `next`.
struct Upload {
    tx: Option<Sender<Bytes, io::Error>>,
    response: Option<JoinHandle<reqwest::Result<reqwest::Response>>>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: Option<mpsc::UnboundedSender<Event>>,
    rng: u64,
    sent: usize,
}

struct UploadOptions {
    timecode_type: &'static str,
    producer_start: &'static str,
    key: Credentials,
    time: SystemTime,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            timecode_type: "ABSOLUTE",
            producer_start: "1700000000.000",
            key: credentials(),
            time: SystemTime::now(),
        }
    }
}

impl Upload {
    fn open(url: &str, stream: &str, options: UploadOptions) -> Upload {
        let (tx, channel) = Channel::<Bytes, io::Error>::new(4);
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("{url}/putMedia"))
            .header("x-amzn-stream-name", stream)
            .header("x-amzn-fragment-timecode-type", options.timecode_type)
            .header("x-amzn-producer-start-timestamp", options.producer_start)
            .header("x-amzn-fragment-acknowledgment-required", "1")
            .header("user-agent", "kinesis-edge-test")
            .body(reqwest::Body::wrap(channel))
            .expect("a valid request");
        sign(
            &mut request,
            &options.key,
            REGION,
            Service::KinesisVideo,
            options.time,
            PayloadHash::EmptyStreaming,
        )
        .expect("signing works");
        let request = reqwest::Request::try_from(request).expect("reqwest takes it");
        let response = tokio::spawn(reqwest::Client::new().execute(request));
        let (events_tx, events) = mpsc::unbounded_channel();
        Upload {
            tx: Some(tx),
            response: Some(response),
            events,
            events_tx: Some(events_tx),
            rng: 0x9E37_79B9_7F4A_7C15 ^ stream.len() as u64,
            sent: 0,
        }
    }

    /// Sends `bytes` in chunks of 1..=4096 random bytes.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut at = 0;
        while at < bytes.len() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let len = (1 + (self.rng % 4096) as usize).min(bytes.len() - at);
            let tx = self.tx.as_mut().ok_or("the body was finished")?;
            match tokio::time::timeout(
                WAIT,
                tx.send_data(Bytes::copy_from_slice(&bytes[at..at + len])),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the connection no longer takes the body".to_owned()),
                Err(_) => return Err("the body is not read (5 s)".to_owned()),
            }
            at += len;
            self.sent += len;
        }
        Ok(())
    }

    /// Keeps sending until the connection stops taking the body (true) or 5 s pass (false).
    async fn body_refused(&mut self) -> bool {
        let filler = vec![0u8; 64 << 10];
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let Some(tx) = self.tx.as_mut() else {
                return true;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, tx.send_data(Bytes::from(filler.clone()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// Ends the request body.
    fn finish(&mut self) {
        self.tx = None;
    }

    /// Awaits the response head; on 200 starts reading ACK lines, else returns the error.
    async fn response(&mut self) -> Result<http::HeaderMap, Answer> {
        let handle = self.response.take().expect("response() once");
        let response = tokio::time::timeout(WAIT, handle)
            .await
            .expect("the response head arrives while the body is open")
            .expect("the request task does not panic")
            .expect("the endpoint answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Err(Answer {
                status,
                headers,
                body,
            });
        }
        let events = self.events_tx.take().expect("one reader");
        tokio::spawn(async move {
            let mut response = response;
            let mut buffer = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        buffer.extend_from_slice(&chunk);
                        while let Some(newline) = buffer.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buffer.drain(..=newline).collect();
                            let value = serde_json::from_slice(&line).unwrap_or_else(
                                |e| json!({"EventType": "UNPARSEABLE", "problem": e.to_string()}),
                            );
                            let _ = events.send(Event::Ack(value, Instant::now()));
                        }
                    }
                    Ok(None) => {
                        let _ = events.send(Event::End);
                        return;
                    }
                    Err(e) => {
                        let _ = events.send(Event::Failed(e.to_string()));
                        return;
                    }
                }
            }
        });
        Ok(headers)
    }

    async fn next(&mut self) -> Event {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => Event::Failed("reader gone".into()),
            Err(_) => Event::Failed("no ACK within 5 s".into()),
        }
    }

    /// The next ACK, which must have this event type (and timecode, when given).
    async fn expect(&mut self, event: &str, timecode: Option<u64>) -> Value {
        match self.next().await {
            Event::Ack(ack, _) => {
                assert_eq!(ack["EventType"], event, "{ack}");
                if let Some(tc) = timecode {
                    assert_eq!(ack["FragmentTimecode"], tc, "{ack}");
                }
                ack
            }
            other => panic!("expected {event} {timecode:?}, got {other:?}"),
        }
    }

    /// Every event until the response ends (or fails).
    async fn rest(&mut self) -> (Vec<Value>, Event) {
        let mut acks = Vec::new();
        loop {
            match self.next().await {
                Event::Ack(ack, _) => acks.push(ack),
                end => return (acks, end),
            }
        }
    }
}

fn event_types(acks: &[Value]) -> Vec<String> {
    acks.iter()
        .map(|a| match a.get("FragmentTimecode") {
            Some(tc) => format!("{} {tc}", a["EventType"].as_str().unwrap_or("?")),
            None => a["EventType"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

fn tool_output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ffprobe's frame count per codec, and ffmpeg's decode errors.
fn check_playable(path: &Path) -> (u64, u64) {
    let (ok, out, err) = tool_output(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                "stream=codec_name,nb_read_frames",
                "-of",
                "json",
            ])
            .arg(path),
    );
    assert!(ok, "ffprobe rejects {}: {err}", path.display());
    let probe: Value = serde_json::from_str(&out).expect("ffprobe prints JSON");
    let count = |codec: &str| {
        probe["streams"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["codec_name"] == codec))
            .and_then(|s| s["nb_read_frames"].as_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (ok, _, err) = tool_output(
        Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(path)
            .args(["-f", "null", "-"]),
    );
    assert!(
        ok && err.trim().is_empty(),
        "ffmpeg finds errors in {}: {err}",
        path.display()
    );
    (count("h264"), count("aac"))
}

fn count_ebml_headers(path: &Path) -> usize {
    let data = std::fs::read(path).expect("the stored file exists");
    data.windows(4)
        .filter(|w| *w == [0x1A, 0x45, 0xDF, 0xA3])
        .count()
}

/// Waits until the endpoint has `n` records for `stream`.
async fn records(endpoint: &LocalEndpoint, stream: &str, n: usize) -> Vec<FragmentRecord> {
    let deadline = Instant::now() + WAIT;
    loop {
        let records = endpoint.kvs().fragments(stream);
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_media_is_acknowledged_while_streaming_and_stored_playable() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    let arn = create_stream(&url, "front-door", 24).await;
    let described = call(&url, "describeStream", json!({"StreamName": "front-door"})).await;
    assert_eq!(described.body["StreamInfo"]["StreamARN"], arn.as_str());
    assert_eq!(described.body["StreamInfo"]["Status"], "ACTIVE");
    let data = call(
        &url,
        "getDataEndpoint",
        json!({"StreamARN": arn, "APIName": "PUT_MEDIA"}),
    )
    .await;
    assert_eq!(data.body["DataEndpoint"], url.as_str());
    let tagged = call(
        &url,
        "tagStream",
        json!({"StreamARN": arn, "Tags": {"site": "warehouse-7"}}),
    )
    .await;
    assert_eq!(tagged.status, 200);

    let media = media(TimecodeMode::Absolute);
    let mut upload = Upload::open(&url, "front-door", UploadOptions::default());
    upload.send(&media.header).await.unwrap();
    upload.send(&media.fragments[0].bytes).await.unwrap();
    let headers = upload.response().await.expect("PutMedia is accepted");
    assert!(headers.contains_key(http::header::DATE));

    // Full duplex: fragment 1 is acknowledged before fragment 3 is sent.
    let buffering = upload
        .expect("BUFFERING", Some(media.fragments[0].timecode))
        .await;
    upload.send(&media.fragments[1].bytes).await.unwrap();
    let received = upload
        .expect("RECEIVED", Some(media.fragments[0].timecode))
        .await;
    assert_eq!(buffering["FragmentNumber"], received["FragmentNumber"]);
    let sent_before_fragment_3 = upload.sent;
    for fragment in &media.fragments[2..] {
        upload.send(&fragment.bytes).await.unwrap();
    }
    upload.send(&media.trailer).await.unwrap();
    assert!(upload.sent > sent_before_fragment_3);
    upload.finish();
    let (acks, end) = upload.rest().await;
    assert!(matches!(end, Event::End), "{end:?}");

    // Every fragment: BUFFERING, RECEIVED, PERSISTED with its timecode, once.
    let mut all = vec![buffering, received];
    all.extend(acks);
    for fragment in &media.fragments {
        let mine: Vec<&str> = all
            .iter()
            .filter(|a| a["FragmentTimecode"] == fragment.timecode)
            .map(|a| a["EventType"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            mine,
            ["BUFFERING", "RECEIVED", "PERSISTED"],
            "fragment {}: {:?}",
            fragment.timecode,
            event_types(&all)
        );
    }
    let numbers: Vec<&str> = all
        .iter()
        .filter(|a| a["EventType"] == "BUFFERING")
        .filter_map(|a| a["FragmentNumber"].as_str())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");

    // Every frame stored exactly once, in a file ffprobe and ffmpeg accept.
    let log = read_fragment_log(&endpoint.kvs().log_path("front-door")).unwrap();
    assert_eq!(log.len(), media.fragments.len());
    for (record, fragment) in log.iter().zip(&media.fragments) {
        assert_eq!(record.timecode, fragment.timecode);
        assert_eq!(record.total_frames(), u64::from(fragment.frames));
        assert!(record.stored);
        assert_eq!(
            record.acks,
            [
                AckEventType::Buffering,
                AckEventType::Received,
                AckEventType::Persisted
            ]
        );
        assert!(
            record
                .tags
                .iter()
                .any(|(n, v)| n == "camera" && v == "test-pattern"),
            "{:?}",
            record.tags
        );
    }
    let video: u64 = log
        .iter()
        .map(|r| u64::from(r.frames.get(&1).copied().unwrap_or(0)))
        .sum();
    let audio: u64 = log
        .iter()
        .map(|r| u64::from(r.frames.get(&2).copied().unwrap_or(0)))
        .sum();
    assert_eq!(
        (video, audio),
        (media.video_frames as u64, media.audio_frames as u64)
    );
    let file = endpoint.kvs().media_path("front-door", 0);
    assert_eq!(
        check_playable(&file),
        (media.video_frames as u64, media.audio_frames as u64)
    );
    println!(
        "stored {} fragments, {video} video + {audio} audio frames in {}",
        log.len(),
        file.display()
    );
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_continues_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    create_stream(&url, "relative", 24).await;
    let media = media(TimecodeMode::Relative);
    let half = media.fragments.len() / 2;
    let options = || UploadOptions {
        timecode_type: "RELATIVE",
        producer_start: "1700000000.250",
        ..UploadOptions::default()
    };
    for (part, fragments) in [&media.fragments[..half], &media.fragments[half..]]
        .into_iter()
        .enumerate()
    {
        let mut upload = Upload::open(&url, "relative", options());
        upload.send(&media.header).await.unwrap();
        upload.response().await.expect("accepted");
        for fragment in fragments {
            upload.send(&fragment.bytes).await.unwrap();
        }
        if part == 1 {
            upload.send(&media.trailer).await.unwrap();
        }
        upload.finish();
        let (acks, end) = upload.rest().await;
        assert!(matches!(end, Event::End), "{end:?}");
        assert_eq!(
            acks.iter()
                .filter(|a| a["EventType"] == "PERSISTED")
                .count(),
            fragments.len(),
            "{:?}",
            event_types(&acks)
        );
    }
    let file = endpoint.kvs().media_path("relative", 0);
    assert_eq!(count_ebml_headers(&file), 1, "one header for both sessions");
    assert_eq!(
        check_playable(&file),
        (media.video_frames as u64, media.audio_frames as u64)
    );
    let log = records(&endpoint, "relative", media.fragments.len()).await;
    let connections: Vec<u64> = log.iter().map(|r| r.connection).collect();
    assert_eq!(
        connections.iter().filter(|c| **c == connections[0]).count(),
        half
    );
    // Relative timecodes are stored from the producer start timestamp, continuously.
    for (record, fragment) in log.iter().zip(&media.fragments) {
        assert_eq!(
            record.stored_timecode,
            Some(1_700_000_000_250 + fragment.timecode)
        );
        assert_eq!(
            record.producer_timestamp_ms,
            1_700_000_000_250 + fragment.timecode
        );
    }
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fragment_rule_answers_its_error_and_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    let media = media(TimecodeMode::Absolute);
    let replayed: Vec<u8> = [
        &media.header,
        &media.fragments[0].bytes,
        &media.fragments[1].bytes,
        &media.fragments[1].bytes,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    let with = |parts: &[Vec<u8>]| parts.concat();
    let cases: Vec<(u16, &str, Vec<u8>)> = vec![
        (4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS", replayed),
        (
            4006,
            "INVALID_MKV_DATA",
            with(&[mkv_header(1), b"\x00garbage that is not EBML".to_vec()]),
        ),
        (
            4009,
            "FRAGMENT_METADATA_LIMIT_REACHED",
            with(&[mkv_header(1), mkv_tags(11), mkv_cluster(1000, &[(1, 0)])]),
        ),
        (
            4010,
            "TRACK_NUMBER_MISMATCH",
            with(&[mkv_header(1), mkv_cluster(1000, &[(1, 0), (2, 5)])]),
        ),
        (
            4011,
            "FRAMES_MISSING_FOR_TRACK",
            with(&[
                mkv_header(2),
                mkv_cluster(1000, &[(1, 0), (1, 33)]),
                mkv_cluster(2000, &[(1, 0), (2, 1)]),
            ]),
        ),
        (
            4012,
            "MORE_THAN_ALLOWED_TRACKS_FOUND",
            with(&[
                mkv_header(4),
                mkv_cluster(1000, &[(1, 0), (2, 0), (3, 0), (4, 0)]),
            ]),
        ),
        (
            4002,
            "MAX_FRAGMENT_DURATION_REACHED",
            with(&[mkv_header(1), mkv_cluster(1000, &[(1, 0), (1, 20_001)])]),
        ),
    ];
    for (code, name, body) in cases {
        let stream = format!("rule-{code}");
        create_stream(&url, &stream, 24).await;
        let mut upload = Upload::open(&url, &stream, UploadOptions::default());
        upload.send(&body).await.unwrap();
        upload.response().await.expect("accepted");
        // The body stays open: the endpoint ends the response after the ERROR.
        let (acks, end) = upload.rest().await;
        let error = acks.last().unwrap_or(&Value::Null);
        assert_eq!(
            error["EventType"],
            "ERROR",
            "{code}: {:?}",
            event_types(&acks)
        );
        assert_eq!(error["ErrorId"], code, "{error}");
        assert_eq!(error["ErrorCode"], name, "{error}");
        assert!(
            matches!(end, Event::End),
            "{code}: the response ends after ERROR, got {end:?}"
        );
        assert!(
            upload.body_refused().await,
            "{code}: the body is still read 5 s after the ERROR"
        );
    }
    // A rejected fragment is recorded but not stored.
    let log = records(&endpoint, "rule-4004", 3).await;
    assert_eq!(log.iter().filter(|r| r.stored).count(), 2);
    assert_eq!(
        log.last().and_then(|r| r.error.as_ref()).map(|e| e.id),
        Some(4004)
    );
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_the_clock_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    create_stream(&url, "signed", 24).await;
    let body = || json!({"StreamName": "signed"});
    let now = SystemTime::now();

    let unsigned = call_at(&url, "describeStream", body(), None, now)
        .await
        .unwrap();
    assert_eq!(
        (unsigned.status, unsigned.error_type()),
        (403, "MissingAuthenticationTokenException")
    );
    let wrong = Credentials::new(ACCESS_KEY, "not the secret", None, None);
    let bad = call_at(&url, "describeStream", body(), Some(&wrong), now)
        .await
        .unwrap();
    assert_eq!(
        (bad.status, bad.error_type()),
        (403, "InvalidSignatureException")
    );
    assert_eq!(bad.body["__type"], "InvalidSignatureException");
    let unknown = Credentials::new("AKIDUNKNOWN", SECRET_KEY, None, None);
    let bad = call_at(&url, "describeStream", body(), Some(&unknown), now)
        .await
        .unwrap();
    assert_eq!(
        (bad.status, bad.error_type()),
        (403, "UnrecognizedClientException")
    );
    let mut upload = Upload::open(
        &url,
        "signed",
        UploadOptions {
            key: wrong,
            ..UploadOptions::default()
        },
    );
    upload.send(&mkv_header(1)).await.ok();
    let refused = upload
        .response()
        .await
        .expect_err("a bad PutMedia signature is refused");
    assert_eq!(
        (refused.status, refused.error_type()),
        (403, "InvalidSignatureException")
    );

    // The endpoint's clock 10 minutes ahead: "Signature expired", and its Date says why.
    endpoint
        .kvs()
        .inject(&FaultRequest {
            clock_skew_s: Some(600.0),
            ..FaultRequest::default()
        })
        .unwrap();
    let expired = call_at(
        &url,
        "describeStream",
        body(),
        Some(&credentials()),
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(
        (expired.status, expired.error_type()),
        (403, "InvalidSignatureException")
    );
    assert!(
        expired.message().starts_with("Signature expired: "),
        "{}",
        expired.message()
    );
    assert!(
        expired.message().ends_with(" - 5 min.)"),
        "{}",
        expired.message()
    );
    let mut upload = Upload::open(&url, "signed", UploadOptions::default());
    upload.send(&mkv_header(1)).await.ok();
    let refused = upload
        .response()
        .await
        .expect_err("an expired PutMedia signature is refused");
    assert!(
        refused.message().starts_with("Signature expired"),
        "{}",
        refused.message()
    );
    // A client that learns the skew from Date signs at the endpoint's time and gets through.
    let date = expired
        .headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let skew = ClockSkew::new();
    let offset = skew
        .learn_from_date(date, SystemTime::now())
        .expect("an HTTP date");
    assert!((598_000..=602_000).contains(&offset), "learned {offset} ms");
    let corrected = call_at(
        &url,
        "describeStream",
        body(),
        Some(&credentials()),
        skew.now(),
    )
    .await
    .unwrap();
    assert_eq!(corrected.status, 200, "{:?}", corrected.body);
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_mid_fragment_and_after_a_byte_count() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    create_stream(&url, "drops", 24).await;
    let media = media(TimecodeMode::Absolute);
    endpoint
        .kvs()
        .inject(&FaultRequest {
            drop_mid_fragment: Some(2),
            ..FaultRequest::default()
        })
        .unwrap();
    let mut upload = Upload::open(&url, "drops", UploadOptions::default());
    upload.send(&media.header).await.unwrap();
    upload.response().await.expect("accepted");
    let mut send_error = None;
    for fragment in &media.fragments {
        if let Err(e) = upload.send(&fragment.bytes).await {
            send_error = Some(e);
            break;
        }
    }
    let (acks, end) = upload.rest().await;
    assert!(
        matches!(end, Event::Failed(_)),
        "the response is cut, not ended: {end:?}"
    );
    assert_eq!(
        event_types(&acks).first().map(String::as_str),
        Some(format!("BUFFERING {}", media.fragments[0].timecode).as_str())
    );
    assert!(event_types(&acks).contains(&format!("BUFFERING {}", media.fragments[1].timecode)));
    assert!(!event_types(&acks).contains(&format!("RECEIVED {}", media.fragments[1].timecode)));
    let log = records(&endpoint, "drops", 2).await;
    assert_eq!(
        log.iter().map(|r| r.stored).collect::<Vec<_>>(),
        [true, false]
    );
    println!(
        "drop mid-fragment: send error {send_error:?}, records {}",
        log.len()
    );

    // After a byte count: the header and a little of the first fragment.
    let cut = media.header.len() + 100;
    endpoint
        .kvs()
        .inject(&FaultRequest {
            drop_after_bytes: Some(cut as u64),
            ..FaultRequest::default()
        })
        .unwrap();
    let mut upload = Upload::open(&url, "drops", UploadOptions::default());
    upload.send(&media.header).await.unwrap();
    upload.response().await.expect("accepted");
    let all: Vec<u8> = media
        .fragments
        .iter()
        .flat_map(|f| f.bytes.iter().copied())
        .collect();
    let _ = upload.send(&all).await;
    let (acks, end) = upload.rest().await;
    assert!(matches!(end, Event::Failed(_)), "{end:?}");
    assert!(
        !acks.iter().any(|a| a["EventType"] == "RECEIVED"),
        "{:?}",
        event_types(&acks)
    );
    assert!(
        upload.body_refused().await,
        "the cut connection takes no more body"
    );
    assert_eq!(endpoint.kvs().fault_stats().connections_dropped, 2);
    // Nothing of the cut connection was stored.
    let log = endpoint.kvs().fragments("drops");
    assert!(log[2..].iter().all(|r| !r.stored), "{log:?}");
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_for_a_while_then_served_again() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    create_stream(&url, "refuse", 24).await;
    // Through the HTTP fault API.
    let armed = reqwest::Client::new()
        .post(format!("{url}{FAULTS_PATH}"))
        .body(r#"{"refuse_connections_s": 1.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(armed.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let refused = call_at(
        &url,
        "describeStream",
        json!({"StreamName": "refuse"}),
        Some(&credentials()),
        SystemTime::now(),
    )
    .await;
    let error = refused.expect_err("the connection is refused");
    assert!(error.is_connect(), "{error:?}");
    let mut served = None;
    while started.elapsed() < WAIT {
        if let Ok(answer) = call_at(
            &url,
            "describeStream",
            json!({"StreamName": "refuse"}),
            Some(&credentials()),
            SystemTime::now(),
        )
        .await
        {
            served = Some((answer.status, started.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, after) = served.expect("served again after the refusal");
    assert_eq!(status, 200);
    assert!(
        after >= Duration::from_millis(700),
        "served after {after:?}"
    );
    println!("refused for {after:?}");
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_stops_reading_and_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    create_stream(&url, "stall", 24).await;
    let media = media(TimecodeMode::Absolute);
    endpoint
        .kvs()
        .inject(
            &FaultRequest::from_json(br#"{"stall": {"after_fragments": 1, "seconds": 1.0}}"#)
                .unwrap(),
        )
        .unwrap();
    let mut upload = Upload::open(&url, "stall", UploadOptions::default());
    upload.send(&media.header).await.unwrap();
    upload.response().await.expect("accepted");
    let sender = {
        let mut tx = upload.tx.take().expect("the body sender");
        let bytes: Vec<u8> = media
            .fragments
            .iter()
            .flat_map(|f| f.bytes.iter().copied())
            .chain(media.trailer.iter().copied())
            .collect();
        tokio::spawn(async move {
            for chunk in bytes.chunks(1500) {
                if tx.send_data(Bytes::copy_from_slice(chunk)).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut times = Vec::new();
    loop {
        match upload.next().await {
            Event::Ack(ack, at) => times.push((ack, at)),
            Event::End => break,
            Event::Failed(e) => panic!("{e}"),
        }
    }
    sender.await.unwrap();
    let received_first = times
        .iter()
        .position(|(a, _)| a["EventType"] == "RECEIVED")
        .expect("the first fragment is received");
    let (_, before) = times[received_first];
    let (next, after) = &times[received_first + 1];
    let gap = after.duration_since(before);
    assert!(
        gap >= Duration::from_millis(900),
        "next ACK {next} after {gap:?}"
    );
    let persisted = times
        .iter()
        .filter(|(a, _)| a["EventType"] == "PERSISTED")
        .count();
    assert_eq!(
        persisted,
        media.fragments.len(),
        "everything arrives after the stall"
    );
    println!("stall: {gap:?} without ACKs, then {persisted} fragments persisted");
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_error_acks_and_http_errors() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |_| {}).await;
    let url = endpoint.url();
    create_stream(&url, "errors", 24).await;
    let media = media(TimecodeMode::Absolute);

    endpoint
        .kvs()
        .inject(
            &FaultRequest::from_json(br#"{"error_ack": {"code": 5000, "after_fragments": 1}}"#)
                .unwrap(),
        )
        .unwrap();
    let mut upload = Upload::open(&url, "errors", UploadOptions::default());
    upload.send(&media.header).await.unwrap();
    upload.response().await.expect("accepted");
    for fragment in &media.fragments[..3] {
        if upload.send(&fragment.bytes).await.is_err() {
            break;
        }
    }
    let (acks, end) = upload.rest().await;
    assert!(matches!(end, Event::End), "{end:?}");
    let last = acks.last().unwrap_or(&Value::Null);
    assert_eq!(
        (last["ErrorId"].as_u64(), last["FragmentTimecode"].as_u64()),
        (Some(5000), Some(media.fragments[1].timecode)),
        "{:?}",
        event_types(&acks)
    );
    assert_eq!(last["ErrorCode"], "INTERNAL_ERROR");

    // 503 twice for describeStream only, then served.
    endpoint
        .kvs()
        .inject(
            &FaultRequest::from_json(
                br#"{"http_error": {"status": 503, "count": 2, "operations": ["describeStream"]}}"#,
            )
            .unwrap(),
        )
        .unwrap();
    let listed = call(&url, "listStreams", json!({})).await;
    assert_eq!(listed.status, 200);
    for _ in 0..2 {
        let answer = call(&url, "describeStream", json!({"StreamName": "errors"})).await;
        assert_eq!(
            (answer.status, answer.error_type()),
            (503, "ServiceUnavailableException")
        );
        assert!(answer.headers.contains_key(http::header::DATE));
    }
    assert_eq!(
        call(&url, "describeStream", json!({"StreamName": "errors"}))
            .await
            .status,
        200
    );

    // 429 and 400 ClientLimitExceeded for PutMedia.
    for (status, kind) in [
        (429, "ThrottlingException"),
        (400, "ClientLimitExceededException"),
    ] {
        let request =
            format!(r#"{{"http_error": {{"status": {status}, "operations": ["putMedia"]}}}}"#);
        endpoint
            .kvs()
            .inject(&FaultRequest::from_json(request.as_bytes()).unwrap())
            .unwrap();
        let mut upload = Upload::open(&url, "errors", UploadOptions::default());
        upload.send(&media.header).await.ok();
        let answer = upload
            .response()
            .await
            .expect_err("answered with the injected error");
        assert_eq!((answer.status, answer.error_type()), (status, kind));
    }

    // A second concurrent connection for a stream is throttled, as the service does.
    let mut first = Upload::open(&url, "errors", UploadOptions::default());
    first.send(&media.header).await.unwrap();
    first.response().await.expect("accepted");
    let mut second = Upload::open(&url, "errors", UploadOptions::default());
    second.send(&media.header).await.ok();
    let answer = second.response().await.expect_err("refused");
    assert_eq!(
        (answer.status, answer.error_type()),
        (400, "ConnectionLimitExceededException")
    );
    first.finish();
    assert!(matches!(first.rest().await.1, Event::End));

    // Faults through the HTTP API: a bad request names the field.
    let answer = reqwest::Client::new()
        .post(format!("{url}{FAULTS_PATH}"))
        .body(r#"{"http_error": {"status": 200}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("http_error.status"));
    let stats = reqwest::Client::new()
        .get(format!("{url}{FAULTS_PATH}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["stats"]["http_errors"], 4);
    assert_eq!(stats["stats"]["error_acks"], 1);
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_acks_then_the_idle_timeout_and_no_retention() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_endpoint(dir.path(), |config| {
        config.kvs.idle_ack_interval = Duration::from_millis(200);
        config.kvs.idle_timeout = Duration::from_millis(900);
    })
    .await;
    let url = endpoint.url();
    create_stream(&url, "idle", 0).await;
    let media = media(TimecodeMode::Absolute);
    let mut upload = Upload::open(&url, "idle", UploadOptions::default());
    upload.send(&media.header).await.unwrap();
    upload.response().await.expect("accepted");
    let started = Instant::now();
    let (acks, end) = upload.rest().await;
    assert!(matches!(end, Event::End), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert!(
        acks.len() >= 3 && acks.iter().all(|a| a["EventType"] == "IDLE"),
        "{:?}",
        event_types(&acks)
    );

    // Retention 0: RECEIVED is the last ACK of a fragment.
    let mut upload = Upload::open(&url, "idle", UploadOptions::default());
    upload.send(&media.header).await.unwrap();
    upload.response().await.expect("accepted");
    for fragment in &media.fragments {
        upload.send(&fragment.bytes).await.unwrap();
    }
    upload.send(&media.trailer).await.unwrap();
    upload.finish();
    let (acks, end) = upload.rest().await;
    assert!(matches!(end, Event::End));
    let kinds: Vec<String> = event_types(&acks)
        .into_iter()
        .filter(|k| k != "IDLE")
        .collect();
    let expected: Vec<String> = media
        .fragments
        .iter()
        .flat_map(|f| {
            [
                format!("BUFFERING {}", f.timecode),
                format!("RECEIVED {}", f.timecode),
            ]
        })
        .collect();
    assert_eq!(kinds, expected);
    endpoint.shutdown().await;
}
