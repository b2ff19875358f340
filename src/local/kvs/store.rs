//! What arrived, on disk: each stream's accepted fragments as one playable Matroska file, and a
//! JSON-lines log of every fragment received.
//!
//! Files, in the endpoint's data directory:
//! - `<stream>.mkv`: the EBML header, a Segment of unknown size, SegmentInfo and Tracks from the
//!   first session, then every accepted fragment in arrival order: its Tags, a Cluster (unknown
//!   size) with its Timecode rewritten absolute, and its blocks as sent. A fragment sent again
//!   (its ACK was lost) is logged again but kept once in the file. A later session whose
//!   track layout (timecode scale, track numbers, types, codecs, codec data) is the same
//!   continues the file without a second header; a different layout starts `<stream>.1.mkv`,
//!   then `<stream>.2.mkv`…. Files from an earlier run of the endpoint are never appended to:
//!   the first file of a run takes the first free name.
//! - `<stream>.fragments.jsonl`: one [`FragmentRecord`] per fragment, written when its last
//!   ACK was sent (or the connection ended), in that order.
//!
//! Invariants: a fragment is written whole and `sync_data`-ed before it is acknowledged
//! RECEIVED; a write error leaves the file to be reopened (the next fragment starts a new one).

use super::ack::AckEventType;
use super::mkv_check::{CompletedFragment, StreamHeader};
use crate::mkv::ebml::{UNKNOWN_SIZE, id};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a PutMedia connection's cluster timecodes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimecodeType {
    /// Since the Unix epoch.
    Absolute,
    /// Since `x-amzn-producer-start-timestamp`.
    Relative,
}

/// An ERROR that ended a fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    /// `ErrorId`.
    pub id: u32,
    /// `ErrorCode`.
    pub code: String,
    /// What the endpoint found (or "injected").
    pub message: String,
}

/// One fragment as the endpoint received and answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentRecord {
    /// Stream name.
    pub stream: String,
    /// The endpoint's PutMedia connection counter.
    pub connection: u64,
    /// Fragment index within the connection (0 = first).
    pub index: u64,
    /// `FragmentNumber` as acknowledged.
    pub fragment_number: String,
    /// Cluster Timecode as sent.
    pub timecode: u64,
    /// The connection's timecode type.
    pub timecode_type: TimecodeType,
    /// The producer timestamp the service derives, ms since the epoch.
    pub producer_timestamp_ms: u64,
    /// Cluster Timecode as stored (absolute), when stored.
    pub stored_timecode: Option<u64>,
    /// First and last block timecodes (0 when the fragment did not complete).
    pub first_timecode: i64,
    /// See `first_timecode`.
    pub last_timecode: i64,
    /// Blocks per track number.
    pub frames: BTreeMap<u64, u32>,
    /// Key-frame blocks per track number.
    pub key_frames: BTreeMap<u64, u32>,
    /// Bytes received for the fragment.
    pub bytes: u64,
    /// Fragment tags (name, value), in order.
    pub tags: Vec<(String, String)>,
    /// ACKs sent for it, in order.
    pub acks: Vec<AckEventType>,
    /// The ERROR, if it got one.
    pub error: Option<RecordError>,
    /// Written to `file`.
    pub stored: bool,
    /// The file name (in the data directory).
    pub file: Option<String>,
    /// When it started arriving, ms since the epoch (endpoint clock).
    pub received_at_ms: u64,
}

impl FragmentRecord {
    /// Frames over all tracks.
    pub fn total_frames(&self) -> u64 {
        self.frames.values().map(|n| u64::from(*n)).sum()
    }

    /// True when the producer was told the fragment is safe (PERSISTED, or RECEIVED on a
    /// stream without retention — the caller knows which applies).
    pub fn acknowledged(&self, event: AckEventType) -> bool {
        self.acks.contains(&event)
    }
}

/// A storage failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating, writing or syncing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A log line could not be parsed.
    #[error("{path} line {line}: {problem}")]
    BadLog {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What serde said.
        problem: String,
    },
}

struct OpenFile {
    name: String,
    path: PathBuf,
    file: File,
    header: Arc<StreamHeader>,
    /// Cluster timecodes already in the file.
    timecodes: HashSet<u64>,
}

/// One stream's files.
pub struct StreamStore {
    dir: PathBuf,
    stream: String,
    current: Option<OpenFile>,
    /// Next index to try for a new file.
    next_index: u32,
    log: Option<File>,
}

impl std::fmt::Debug for StreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamStore")
            .field("dir", &self.dir)
            .field("stream", &self.stream)
            .field("current", &self.current.as_ref().map(|c| &c.path))
            .finish()
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The Cluster header the store writes: ID, unknown size, Timecode as an 8-byte uint.
fn cluster_header(timecode: u64) -> [u8; 15] {
    let mut out = [0u8; 15];
    let id = id::CLUSTER.to_be_bytes();
    let tc = timecode.to_be_bytes();
    for (slot, byte) in out.iter_mut().zip(
        id.iter()
            .chain(&[UNKNOWN_SIZE, 0xE7, 0x88])
            .chain(tc.iter()),
    ) {
        *slot = *byte;
    }
    out
}

impl StreamStore {
    /// The store for `stream` in `dir` (nothing is created until the first fragment).
    pub fn new(dir: &Path, stream: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            stream: stream.to_owned(),
            current: None,
            next_index: 0,
            log: None,
        }
    }

    /// The media file name for index `n`.
    pub fn file_name(stream: &str, n: u32) -> String {
        if n == 0 {
            format!("{stream}.mkv")
        } else {
            format!("{stream}.{n}.mkv")
        }
    }

    /// The log file name.
    pub fn log_name(stream: &str) -> String {
        format!("{stream}.fragments.jsonl")
    }

    fn open_new(&mut self, header: &Arc<StreamHeader>) -> Result<&mut OpenFile, StoreError> {
        loop {
            let name = Self::file_name(&self.stream, self.next_index);
            let path = self.dir.join(&name);
            self.next_index += 1;
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let mut segment = Vec::with_capacity(5);
                    segment.extend_from_slice(&id::SEGMENT.to_be_bytes());
                    segment.push(UNKNOWN_SIZE);
                    for part in [
                        &header.ebml[..],
                        &segment,
                        &header.info,
                        &header.tracks_element,
                    ] {
                        file.write_all(part)
                            .map_err(io_error("writing the header of", &path))?;
                    }
                    tracing::info!(stream = %self.stream, path = %path.display(), "local endpoint: storing fragments");
                    return Ok(self.current.insert(OpenFile {
                        name,
                        path,
                        file,
                        header: Arc::clone(header),
                        timecodes: HashSet::new(),
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("creating", &path)(e)),
            }
        }
    }

    /// Appends `fragment` (with its cluster timecode written as `stored_timecode`), starting a
    /// file when there is none or the layout changed; returns the file name.
    pub fn append(
        &mut self,
        header: &Arc<StreamHeader>,
        fragment: &CompletedFragment,
        stored_timecode: u64,
    ) -> Result<String, StoreError> {
        let reuse = self
            .current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.header, header) || c.header.same_layout(header));
        let open = if reuse {
            match self.current.as_mut() {
                Some(open) => open,
                None => self.open_new(header)?,
            }
        } else {
            self.open_new(header)?
        };
        if !open.timecodes.insert(stored_timecode) {
            // A producer sends a fragment again when its ACK was lost (the service keeps both
            // copies); the file keeps one, so that it stays playable.
            tracing::debug!(file = %open.name, stored_timecode, "fragment already in the file; not appended again");
            return Ok(open.name.clone());
        }
        let cluster = cluster_header(stored_timecode);
        let result = (|| {
            for piece in &fragment.tags_before {
                open.file.write_all(piece)?;
            }
            open.file.write_all(&cluster)?;
            for piece in fragment.cluster_body.iter().chain(&fragment.tags_after) {
                open.file.write_all(piece)?;
            }
            open.file.sync_data()
        })();
        match result {
            Ok(()) => Ok(open.name.clone()),
            Err(source) => {
                let path = open.path.clone();
                self.current = None;
                Err(StoreError::Io {
                    action: "appending a fragment to",
                    path,
                    source,
                })
            }
        }
    }

    /// Appends one line to the stream's log.
    pub fn log(&mut self, record: &FragmentRecord) -> Result<(), StoreError> {
        let path = self.dir.join(Self::log_name(&self.stream));
        let file = match self.log.as_mut() {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_error("opening", &path))?;
                self.log.insert(file)
            }
        };
        let mut line = serde_json::to_vec(record).map_err(|e| StoreError::Io {
            action: "encoding a record for",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        file.write_all(&line).map_err(io_error("writing", &path))
    }
}

/// Reads a stream's fragment log.
pub fn read_fragment_log(path: &Path) -> Result<Vec<FragmentRecord>, StoreError> {
    let file = File::open(path).map_err(io_error("opening", path))?;
    let mut records = Vec::new();
    for (index, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error("reading", path))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| StoreError::BadLog {
            path: path.to_owned(),
            line: index + 1,
            problem: e.to_string(),
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::kvs::mkv_check::TrackInfo;
    use bytes::Bytes;

    fn header(codec: &str) -> Arc<StreamHeader> {
        Arc::new(StreamHeader {
            ebml: Bytes::from_static(b"EBML"),
            info: Bytes::from_static(b"INFO"),
            tracks_element: Bytes::from_static(b"TRACKS"),
            timecode_scale_ns: 1_000_000,
            tracks: vec![TrackInfo {
                number: 1,
                uid: 1,
                track_type: 1,
                codec_id: codec.to_owned(),
                codec_private: Bytes::new(),
                settings: Bytes::new(),
            }],
        })
    }

    fn fragment(body: &'static [u8]) -> CompletedFragment {
        CompletedFragment {
            index: 0,
            timecode: 5,
            first_timecode: 5,
            last_timecode: 5,
            frames: Vec::new(),
            bytes: 0,
            tags: Vec::new(),
            starts_with_key_frame: true,
            tags_before: vec![Bytes::from_static(b"<tags>")],
            cluster_body: vec![Bytes::from_static(body)],
            tags_after: Vec::new(),
        }
    }

    #[test]
    fn a_fragment_sent_again_is_kept_once_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StreamStore::new(dir.path(), "cam");
        let h264 = header("V_MPEG4/ISO/AVC");
        for (body, tc) in [(b"A", 7u64), (b"B", 8), (b"B", 8), (b"C", 9)] {
            assert_eq!(store.append(&h264, &fragment(body), tc).unwrap(), "cam.mkv");
        }
        let mut expected = b"EBML\x18\x53\x80\x67\xFFINFOTRACKS".to_vec();
        for (body, tc) in [(b"A", 7u64), (b"B", 8), (b"C", 9)] {
            expected.extend_from_slice(b"<tags>");
            expected.extend_from_slice(&cluster_header(tc));
            expected.extend_from_slice(body);
        }
        assert_eq!(std::fs::read(dir.path().join("cam.mkv")).unwrap(), expected);
    }

    #[test]
    fn one_header_per_layout_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cam.mkv"), b"from an earlier run").unwrap();
        let mut store = StreamStore::new(dir.path(), "cam");
        let h264 = header("V_MPEG4/ISO/AVC");
        assert_eq!(
            store.append(&h264, &fragment(b"A"), 7).unwrap(),
            "cam.1.mkv"
        );
        // A new session with an equal (not identical) header continues the file.
        assert_eq!(
            store
                .append(&header("V_MPEG4/ISO/AVC"), &fragment(b"B"), 8)
                .unwrap(),
            "cam.1.mkv"
        );
        assert_eq!(
            store
                .append(&header("V_MPEGH/ISO/HEVC"), &fragment(b"C"), 9)
                .unwrap(),
            "cam.2.mkv"
        );
        let first = std::fs::read(dir.path().join("cam.1.mkv")).unwrap();
        let mut expected = b"EBML\x18\x53\x80\x67\xFFINFOTRACKS".to_vec();
        for (body, tc) in [(b"A", 7u64), (b"B", 8)] {
            expected.extend_from_slice(b"<tags>");
            expected.extend_from_slice(&cluster_header(tc));
            expected.extend_from_slice(body);
        }
        assert_eq!(first, expected);
        assert_eq!(
            std::fs::read(dir.path().join("cam.mkv")).unwrap(),
            b"from an earlier run"
        );
    }

    #[test]
    fn records_round_trip_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StreamStore::new(dir.path(), "cam");
        let record = FragmentRecord {
            stream: "cam".into(),
            connection: 3,
            index: 0,
            fragment_number: "9134".into(),
            timecode: 1000,
            timecode_type: TimecodeType::Relative,
            producer_timestamp_ms: 1_700_000_001_000,
            stored_timecode: Some(1_700_000_001_000),
            first_timecode: 1000,
            last_timecode: 2966,
            frames: BTreeMap::from([(1, 60), (2, 94)]),
            key_frames: BTreeMap::from([(1, 1), (2, 94)]),
            bytes: 12345,
            tags: vec![("site".into(), "7".into())],
            acks: vec![
                AckEventType::Buffering,
                AckEventType::Received,
                AckEventType::Persisted,
            ],
            error: None,
            stored: true,
            file: Some("cam.mkv".into()),
            received_at_ms: 1_700_000_002_000,
        };
        store.log(&record).unwrap();
        store.log(&record).unwrap();
        let read = read_fragment_log(&dir.path().join("cam.fragments.jsonl")).unwrap();
        assert_eq!(read, vec![record.clone(), record]);
        assert_eq!(read[0].total_frames(), 154);
        std::fs::write(dir.path().join("bad.jsonl"), "{\"stream\":1}\n").unwrap();
        let error = read_fragment_log(&dir.path().join("bad.jsonl")).unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}
