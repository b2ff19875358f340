//! The spool: a bounded on-disk queue of accepted records, and the dead-letter file.
//!
//! Layout in the spool directory:
//! * `seg-<first id, 20 digits>.log`: append-only segments of frames
//!   `[payload length u32 LE][CRC32C of payload u32 LE][payload]`, payload =
//!   `[id u64][accepted unix ms u64][flags u8][explicit hash key u128, if flag 1][key length u16][key][data]`;
//! * `acks.log`: append-only frames `[id u64 LE][CRC32C of those 8 bytes u32 LE]`, one per record
//!   the service took (or that went to the dead-letter file).
//!
//! Invariants:
//! * ids grow by one per accepted record and are never reused (the newest segment is kept, so
//!   its name carries the next id across restarts);
//! * a segment is deleted only when every record in it is acknowledged, or when the spool is
//!   over its byte budget, oldest segment first (its unacknowledged records are counted as
//!   dropped);
//! * recovery stops at the first frame whose length or CRC is wrong: a torn tail of the newest
//!   segment (a crash mid-write) is truncated away; damage elsewhere skips the rest of that
//!   segment and is counted. Acks are written before a segment is removed, so a crash never
//!   resends a record whose ack was written.

use super::record::{HashKey, UserRecord};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Spool record id: its position in acceptance order.
pub type RecordId = u64;

const FRAME_HEADER: usize = 8;
const ACK_FRAME: usize = 12;
const FLAG_EXPLICIT_HASH_KEY: u8 = 1;
/// Largest payload a frame may claim (a 10 MiB record plus its header), so a damaged length
/// cannot make recovery allocate gigabytes.
const MAX_PAYLOAD: usize = (10 << 20) + 1024;

/// What went wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The settings cannot work.
    #[error("spool settings: {0}")]
    Config(String),
    /// The record alone is larger than the whole spool budget.
    #[error("record of {bytes} bytes does not fit a spool of {max_bytes} bytes")]
    RecordLargerThanSpool {
        /// Its framed size.
        bytes: u64,
        /// The budget.
        max_bytes: u64,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io {
        action,
        path,
        source,
    }
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory holding segments and acks (created if missing).
    pub dir: PathBuf,
    /// Byte budget for all segments together.
    pub max_bytes: u64,
    /// A segment is closed once it reaches this size.
    pub segment_bytes: u64,
    /// `fdatasync` after every append (otherwise call [`Spool::sync`] periodically).
    pub sync_each_append: bool,
}

impl SpoolConfig {
    /// A spool in `dir` with `max_bytes` budget, segments of a quarter of it up to 4 MiB.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        SpoolConfig {
            dir: dir.into(),
            max_bytes,
            segment_bytes: (max_bytes / 4).clamp(4096, 4 << 20),
            sync_each_append: false,
        }
    }
}

/// A record read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    /// Its id.
    pub id: RecordId,
    /// When it was accepted (Unix milliseconds).
    pub accepted_unix_ms: u64,
    /// The record.
    pub record: UserRecord,
}

/// Counters reported by the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records accepted and not yet acknowledged.
    pub pending_records: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Unacknowledged records dropped because the spool was full (since open).
    pub dropped_records: u64,
    /// Records skipped at recovery because their frame was damaged.
    pub corrupt_records: u64,
    /// Bytes cut from a torn tail at recovery.
    pub truncated_tail_bytes: u64,
    /// Records recovered unacknowledged at open.
    pub recovered_records: u64,
}

struct Segment {
    first_id: RecordId,
    end_id: RecordId,
    bytes: u64,
    path: PathBuf,
    acked: Vec<bool>,
    unacked: u64,
}

impl Segment {
    fn is_acked(&self, id: RecordId) -> bool {
        id.checked_sub(self.first_id)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.acked.get(i).copied())
            .unwrap_or(true)
    }
}

/// Where `read_next` continues: the segment (by first id), the byte offset in it, and the
/// lowest id not yet handed out.
struct Cursor {
    segment: RecordId,
    id: RecordId,
    offset: u64,
}

/// The on-disk queue. Single owner; callers share it behind a mutex.
pub struct Spool {
    config: SpoolConfig,
    segments: VecDeque<Segment>,
    active: File,
    acks_path: PathBuf,
    acks: File,
    ack_entries: u64,
    next_id: RecordId,
    cursor: Cursor,
    reader: Option<(RecordId, File)>,
    scratch: Vec<u8>,
    stats: SpoolStats,
    /// Records or acks were written since the last [`Spool::sync`].
    unsynced: bool,
}

fn segment_path(dir: &Path, first_id: RecordId) -> PathBuf {
    dir.join(format!("seg-{first_id:020}.log"))
}

fn parse_segment_name(name: &str) -> Option<RecordId> {
    name.strip_prefix("seg-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Encodes one frame into `out` (cleared first).
fn encode_frame(out: &mut Vec<u8>, id: RecordId, accepted_unix_ms: u64, record: &UserRecord) {
    out.clear();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&accepted_unix_ms.to_le_bytes());
    match record.explicit_hash_key() {
        Some(key) => {
            out.push(FLAG_EXPLICIT_HASH_KEY);
            out.extend_from_slice(&key.0.to_le_bytes());
        }
        None => out.push(0),
    }
    let key = record.partition_key().as_bytes();
    // Keys are at most 256 characters = 1024 bytes, so the length fits u16.
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(record.data());
    let payload_len = (out.len() - FRAME_HEADER) as u32;
    let crc = crc32c::crc32c(out.get(FRAME_HEADER..).unwrap_or_default());
    if let Some(length) = out.get_mut(..4) {
        length.copy_from_slice(&payload_len.to_le_bytes());
    }
    if let Some(checksum) = out.get_mut(4..FRAME_HEADER) {
        checksum.copy_from_slice(&crc.to_le_bytes());
    }
}

#[derive(Debug)]
enum FrameRead {
    Record(Box<SpooledRecord>, u64),
    End,
    /// A bad frame; `skip_to` is where the next frame would start when its length looked sane
    /// (only a CRC or payload problem).
    Damaged {
        reason: &'static str,
        skip_to: Option<u64>,
    },
}

fn read_frame(file: &File, offset: u64, file_len: u64) -> io::Result<FrameRead> {
    if offset >= file_len {
        return Ok(FrameRead::End);
    }
    if file_len - offset < FRAME_HEADER as u64 {
        return Ok(FrameRead::Damaged {
            reason: "torn frame header",
            skip_to: None,
        });
    }
    let mut header = [0u8; FRAME_HEADER];
    file.read_exact_at(&mut header, offset)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let payload_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if !(8 + 8 + 1 + 2..=MAX_PAYLOAD).contains(&payload_len) {
        return Ok(FrameRead::Damaged {
            reason: "impossible frame length",
            skip_to: None,
        });
    }
    if file_len - offset - (FRAME_HEADER as u64) < payload_len as u64 {
        return Ok(FrameRead::Damaged {
            reason: "torn frame payload",
            skip_to: None,
        });
    }
    let mut payload = vec![0u8; payload_len];
    file.read_exact_at(&mut payload, offset + FRAME_HEADER as u64)?;
    let next = offset + (FRAME_HEADER + payload_len) as u64;
    if crc32c::crc32c(&payload) != crc {
        return Ok(FrameRead::Damaged {
            reason: "CRC mismatch",
            skip_to: Some(next),
        });
    }
    Ok(match decode_payload(Bytes::from(payload)) {
        Some(record) => FrameRead::Record(Box::new(record), next),
        None => FrameRead::Damaged {
            reason: "payload does not decode",
            skip_to: Some(next),
        },
    })
}

fn decode_payload(payload: Bytes) -> Option<SpooledRecord> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            payload.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    let id = u64_at(0)?;
    let accepted_unix_ms = u64_at(8)?;
    let flags = *payload.get(16)?;
    let mut at = 17;
    let explicit_hash_key = if flags & FLAG_EXPLICIT_HASH_KEY != 0 {
        let key = u128::from_le_bytes(payload.get(at..at + 16)?.try_into().ok()?);
        at += 16;
        Some(HashKey(key))
    } else {
        None
    };
    let key_len = u16::from_le_bytes(payload.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    let key = std::str::from_utf8(payload.get(at..at + key_len)?)
        .ok()?
        .to_owned();
    at += key_len;
    let data = payload.slice(at..);
    let record = UserRecord::with_valid_key(key, explicit_hash_key, data).ok()?;
    Some(SpooledRecord {
        id,
        accepted_unix_ms,
        record,
    })
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, recovering what a crash left.
    pub fn open(config: SpoolConfig) -> Result<Self, SpoolError> {
        if config.max_bytes < 4 * config.segment_bytes || config.segment_bytes < 1024 {
            return Err(SpoolError::Config(format!(
                "max_bytes ({}) must be at least 4 segments of segment_bytes ({}), and segments at least 1024 bytes",
                config.max_bytes, config.segment_bytes
            )));
        }
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut stats = SpoolStats::default();
        let mut segments = VecDeque::new();
        let count = firsts.len();
        for (index, first_id) in firsts.into_iter().enumerate() {
            let path = segment_path(&dir, first_id);
            let is_last = index + 1 == count;
            segments.push_back(Self::recover_segment(path, first_id, is_last, &mut stats)?);
        }
        // Acks.
        let acks_path = dir.join("acks.log");
        let mut acked_ids = Vec::new();
        if let Ok(bytes) = fs::read(&acks_path) {
            let mut valid_len = 0;
            for frame in bytes.chunks_exact(ACK_FRAME) {
                let (id_bytes, crc_bytes) = frame.split_at(8);
                let crc = u32::from_le_bytes(crc_bytes.try_into().unwrap_or_default());
                if crc32c::crc32c(id_bytes) != crc {
                    break;
                }
                acked_ids.push(u64::from_le_bytes(id_bytes.try_into().unwrap_or_default()));
                valid_len += ACK_FRAME;
            }
            if valid_len < bytes.len() {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&acks_path)
                    .map_err(io_error("open", &acks_path))?;
                file.set_len(valid_len as u64)
                    .map_err(io_error("truncate torn tail of", &acks_path))?;
            }
        }
        let next_id = segments.back().map_or(0, |s| s.end_id);
        if segments.is_empty() {
            let path = segment_path(&dir, next_id);
            segments.push_back(Segment {
                first_id: next_id,
                end_id: next_id,
                bytes: 0,
                path,
                acked: Vec::new(),
                unacked: 0,
            });
        }
        let active_path = segments.back().map(|s| s.path.clone()).unwrap_or_default();
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active_path)
            .map_err(io_error("open", &active_path))?;
        let acks = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&acks_path)
            .map_err(io_error("open", &acks_path))?;
        let cursor_id = segments.front().map_or(next_id, |s| s.first_id);
        let mut spool = Spool {
            config,
            segments,
            active,
            acks_path,
            acks,
            ack_entries: acked_ids.len() as u64,
            next_id,
            cursor: Cursor {
                segment: cursor_id,
                id: cursor_id,
                offset: 0,
            },
            reader: None,
            scratch: Vec::new(),
            stats,
            unsynced: false,
        };
        for id in acked_ids {
            spool.mark_acked(id);
        }
        spool.stats.recovered_records = spool.segments.iter().map(|s| s.unacked).sum();
        spool.remove_finished_segments()?;
        spool.compact_acks_if_worthwhile()?;
        Ok(spool)
    }

    fn recover_segment(
        path: PathBuf,
        first_id: RecordId,
        is_last: bool,
        stats: &mut SpoolStats,
    ) -> Result<Segment, SpoolError> {
        let file = File::open(&path).map_err(io_error("open", &path))?;
        let file_len = file.metadata().map_err(io_error("stat", &path))?.len();
        let mut offset = 0;
        let mut end_id = first_id;
        // Ids inside the segment that a damaged frame took with it: never delivered, counted.
        let mut lost_ids = Vec::new();
        loop {
            match read_frame(&file, offset, file_len).map_err(io_error("read", &path))? {
                FrameRead::Record(record, next) if record.id == end_id => {
                    end_id += 1;
                    offset = next;
                }
                FrameRead::End => break,
                bad => {
                    let reason = match bad {
                        FrameRead::Damaged { reason, .. } => reason,
                        _ => "record id out of sequence",
                    };
                    // A damaged frame with a sane length followed by a good frame is bit rot:
                    // skip it and keep what follows.
                    if let FrameRead::Damaged {
                        skip_to: Some(next),
                        ..
                    } = bad
                        && let Ok(FrameRead::Record(following, _)) =
                            read_frame(&file, next, file_len)
                        && following.id > end_id
                    {
                        tracing::warn!(path = %path.display(), offset, reason, "spool: skipped a damaged record");
                        stats.corrupt_records += following.id - end_id;
                        lost_ids.extend(end_id..following.id);
                        end_id = following.id;
                        offset = next;
                        continue;
                    }
                    let lost = file_len - offset;
                    if is_last {
                        stats.truncated_tail_bytes += lost;
                        drop(file);
                        let writable = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(io_error("open", &path))?;
                        writable
                            .set_len(offset)
                            .map_err(io_error("truncate torn tail of", &path))?;
                        tracing::warn!(path = %path.display(), offset, lost, reason, "spool: cut a torn tail");
                    } else {
                        stats.corrupt_records += 1;
                        tracing::warn!(path = %path.display(), offset, lost, reason, "spool: damaged frame, rest of segment skipped");
                    }
                    break;
                }
            }
        }
        let count = usize::try_from(end_id - first_id).unwrap_or(0);
        let mut acked = vec![false; count];
        for id in &lost_ids {
            if let Some(slot) = usize::try_from(id - first_id)
                .ok()
                .and_then(|i| acked.get_mut(i))
            {
                *slot = true;
            }
        }
        Ok(Segment {
            first_id,
            end_id,
            bytes: offset,
            path,
            acked,
            unacked: (count - lost_ids.len()) as u64,
        })
    }

    /// Appends an accepted record and returns its id. Drops the oldest segments first if the
    /// budget requires it (counted in [`SpoolStats::dropped_records`]).
    pub fn append(
        &mut self,
        record: &UserRecord,
        accepted_unix_ms: u64,
    ) -> Result<RecordId, SpoolError> {
        let id = self.next_id;
        let mut frame = std::mem::take(&mut self.scratch);
        encode_frame(&mut frame, id, accepted_unix_ms, record);
        let frame_len = frame.len() as u64;
        let result = self.write_frame(&frame, frame_len);
        self.scratch = frame;
        result?;
        self.next_id += 1;
        Ok(id)
    }

    fn write_frame(&mut self, frame: &[u8], frame_len: u64) -> Result<(), SpoolError> {
        if frame_len > self.config.segment_bytes.max(self.config.max_bytes / 2) {
            return Err(SpoolError::RecordLargerThanSpool {
                bytes: frame_len,
                max_bytes: self.config.max_bytes,
            });
        }
        let active_full = self
            .segments
            .back()
            .is_some_and(|s| s.bytes > 0 && s.bytes + frame_len > self.config.segment_bytes);
        if active_full {
            self.roll()?;
        }
        while self.total_bytes() + frame_len > self.config.max_bytes && self.segments.len() > 1 {
            self.drop_oldest()?;
        }
        let path = self
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        self.active
            .write_all(frame)
            .map_err(io_error("append to", &path))?;
        self.unsynced = true;
        if self.config.sync_each_append {
            self.active.sync_data().map_err(io_error("sync", &path))?;
        }
        if let Some(segment) = self.segments.back_mut() {
            segment.bytes += frame_len;
            segment.end_id += 1;
            segment.acked.push(false);
            segment.unacked += 1;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        let path = segment_path(&self.config.dir, self.next_id);
        self.active.sync_data().map_err(io_error("sync", &path))?;
        self.active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        // The new file's directory entry must survive a power cut too.
        let dir = &self.config.dir;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync directory", dir))?;
        self.segments.push_back(Segment {
            first_id: self.next_id,
            end_id: self.next_id,
            bytes: 0,
            path,
            acked: Vec::new(),
            unacked: 0,
        });
        self.remove_finished_segments()
    }

    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        if let Some(oldest) = self.segments.pop_front() {
            self.stats.dropped_records += oldest.unacked;
            tracing::warn!(
                dropped = oldest.unacked,
                first_id = oldest.first_id,
                "spool full: dropped the oldest segment"
            );
            fs::remove_file(&oldest.path).map_err(io_error("remove", &oldest.path))?;
        }
        Ok(())
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn segment_index(&self, id: RecordId) -> Option<usize> {
        let index = self.segments.partition_point(|s| s.end_id <= id);
        self.segments
            .get(index)
            .filter(|s| s.first_id <= id && id < s.end_id)
            .map(|_| index)
    }

    fn mark_acked(&mut self, id: RecordId) -> bool {
        let Some(index) = self.segment_index(id) else {
            return false;
        };
        let Some(segment) = self.segments.get_mut(index) else {
            return false;
        };
        let slot = usize::try_from(id - segment.first_id)
            .ok()
            .and_then(|i| segment.acked.get_mut(i));
        match slot {
            Some(acked) if !*acked => {
                *acked = true;
                segment.unacked -= 1;
                true
            }
            _ => false,
        }
    }

    /// Records that the service took these records (or that they went to the dead-letter
    /// file). Unknown or already acknowledged ids are ignored.
    pub fn ack(&mut self, ids: &[RecordId]) -> Result<(), SpoolError> {
        let mut frames = Vec::with_capacity(ids.len() * ACK_FRAME);
        for &id in ids {
            if self.mark_acked(id) {
                let bytes = id.to_le_bytes();
                frames.extend_from_slice(&bytes);
                frames.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
            }
        }
        if frames.is_empty() {
            return Ok(());
        }
        self.acks
            .write_all(&frames)
            .map_err(io_error("append to", &self.acks_path))?;
        self.unsynced = true;
        self.ack_entries += (frames.len() / ACK_FRAME) as u64;
        self.remove_finished_segments()?;
        self.compact_acks_if_worthwhile()
    }

    fn remove_finished_segments(&mut self) -> Result<(), SpoolError> {
        let last = self.segments.len().saturating_sub(1);
        let mut index = 0;
        while index < last {
            let finished = self.segments.get(index).is_some_and(|s| s.unacked == 0);
            if finished {
                if let Some(segment) = self.segments.remove(index) {
                    fs::remove_file(&segment.path).map_err(io_error("remove", &segment.path))?;
                }
                return self.remove_finished_segments();
            }
            index += 1;
        }
        Ok(())
    }

    fn compact_acks_if_worthwhile(&mut self) -> Result<(), SpoolError> {
        let live: u64 = self
            .segments
            .iter()
            .map(|s| s.acked.len() as u64 - s.unacked)
            .sum();
        if self.ack_entries <= 2 * live + 4096 {
            return Ok(());
        }
        let tmp = self.config.dir.join("acks.log.tmp");
        let mut frames = Vec::with_capacity((live as usize) * ACK_FRAME);
        for segment in &self.segments {
            for (i, acked) in segment.acked.iter().enumerate() {
                if *acked {
                    let bytes = (segment.first_id + i as u64).to_le_bytes();
                    frames.extend_from_slice(&bytes);
                    frames.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
                }
            }
        }
        let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
        file.write_all(&frames).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("sync", &tmp))?;
        fs::rename(&tmp, &self.acks_path).map_err(io_error("replace", &self.acks_path))?;
        self.acks = OpenOptions::new()
            .append(true)
            .open(&self.acks_path)
            .map_err(io_error("open", &self.acks_path))?;
        self.ack_entries = live;
        Ok(())
    }

    /// Reads unacknowledged records after the last one read, oldest first, up to `max_records`
    /// and about `max_bytes` of data (at least one record when any is waiting).
    pub fn read_next(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<SpooledRecord>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_records && (out.is_empty() || bytes < max_bytes) {
            // Find the segment holding the cursor; skip dropped or removed segments.
            let Some(index) = self.segments.iter().position(|s| self.cursor.id < s.end_id) else {
                break;
            };
            let Some(segment) = self.segments.get(index) else {
                break;
            };
            if self.cursor.segment != segment.first_id {
                self.cursor = Cursor {
                    segment: segment.first_id,
                    id: self.cursor.id.max(segment.first_id),
                    offset: 0,
                };
            }
            let (first_id, seg_bytes, path) =
                (segment.first_id, segment.bytes, segment.path.clone());
            if self.reader.as_ref().is_none_or(|(id, _)| *id != first_id) {
                let file = File::open(&path).map_err(io_error("open", &path))?;
                self.reader = Some((first_id, file));
            }
            let Some((_, file)) = self.reader.as_ref() else {
                break;
            };
            match read_frame(file, self.cursor.offset, seg_bytes)
                .map_err(io_error("read", &path))?
            {
                FrameRead::Record(record, next) => {
                    self.cursor.offset = next;
                    if record.id < self.cursor.id {
                        continue;
                    }
                    self.cursor.id = record.id + 1;
                    let acked = self
                        .segments
                        .get(index)
                        .is_none_or(|s| s.is_acked(record.id));
                    if !acked {
                        bytes += record.record.raw_bytes();
                        out.push(*record);
                    }
                }
                FrameRead::Damaged {
                    skip_to: Some(next),
                    ..
                } if next < seg_bytes => {
                    // Recovery found a good frame after this one and accounted for the loss.
                    self.cursor.offset = next;
                }
                FrameRead::End | FrameRead::Damaged { .. } => {
                    // The segment ended (or its readable part did): go to the next one.
                    let end = self
                        .segments
                        .get(index)
                        .map_or(self.cursor.id, |s| s.end_id);
                    if end == self.cursor.id && index + 1 == self.segments.len() {
                        break;
                    }
                    self.cursor.id = end;
                }
            }
        }
        Ok(out)
    }

    /// Flushes appended records and acks to the disk.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.unsynced {
            // Nothing written since the last sync: spare the (SD card's) disk a flush.
            return Ok(());
        }
        let path = self
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        self.active.sync_data().map_err(io_error("sync", &path))?;
        self.acks
            .sync_data()
            .map_err(io_error("sync", &self.acks_path))?;
        self.unsynced = false;
        Ok(())
    }

    /// Whether records or acks were written since the last [`Spool::sync`].
    pub fn has_unsynced_writes(&self) -> bool {
        self.unsynced
    }

    /// Current counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            pending_records: self.segments.iter().map(|s| s.unacked).sum(),
            bytes: self.total_bytes(),
            ..self.stats
        }
    }

    /// The id the next appended record will get.
    pub fn next_id(&self) -> RecordId {
        self.next_id
    }

    /// The oldest id still held (acknowledged or not); records below it are gone.
    pub fn oldest_held_id(&self) -> RecordId {
        self.segments.front().map_or(self.next_id, |s| s.first_id)
    }
}

/// Records the service will never take, kept with the reason as JSON lines.
pub struct DeadLetterFile {
    path: PathBuf,
    file: File,
    max_bytes: u64,
    written: u64,
}

impl DeadLetterFile {
    /// Opens `path` for appending; when it grows past `max_bytes` it is rotated to `path.1`.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, SpoolError> {
        let path = path.into();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        let written = file.metadata().map_err(io_error("stat", &path))?.len();
        Ok(DeadLetterFile {
            path,
            file,
            max_bytes,
            written,
        })
    }

    /// Appends one line: time, id, key, explicit hash key, base64 data, reason.
    pub fn append(
        &mut self,
        id: RecordId,
        record: &UserRecord,
        reason: &str,
        unix_ms: u64,
    ) -> Result<(), SpoolError> {
        use base64::Engine as _;
        let line = serde_json::json!({
            "time_unix_ms": unix_ms,
            "spool_id": id,
            "partition_key": record.partition_key(),
            "explicit_hash_key": record.explicit_hash_key().map(|k| k.to_string()),
            "data_base64": base64::engine::general_purpose::STANDARD.encode(record.data()),
            "reason": reason,
        });
        let mut text = line.to_string();
        text.push('\n');
        if self.written > 0 && self.written + text.len() as u64 > self.max_bytes {
            let rotated = self.path.with_extension("1");
            fs::rename(&self.path, &rotated).map_err(io_error("rotate", &self.path))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(io_error("open", &self.path))?;
            self.written = 0;
        }
        self.file
            .write_all(text.as_bytes())
            .map_err(io_error("append to", &self.path))?;
        self.written += text.len() as u64;
        Ok(())
    }

    /// Where the lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, data: &[u8]) -> UserRecord {
        UserRecord::new(key, None, Bytes::copy_from_slice(data), 1 << 20).expect("valid")
    }

    fn config(dir: &Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: max_bytes / 4,
            sync_each_append: false,
        }
    }

    #[test]
    fn records_survive_reopen_until_acknowledged() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(io_error("tempdir", Path::new("/tmp")))?;
        let mut spool = Spool::open(config(dir.path(), 64 * 1024))?;
        let ehk = UserRecord::new("k", Some(HashKey(99)), Bytes::from_static(b"e"), 1 << 20)
            .expect("valid");
        let mut ids = Vec::new();
        for i in 0..100u32 {
            ids.push(spool.append(
                &record(&format!("key-{i}"), &i.to_le_bytes()),
                1000 + u64::from(i),
            )?);
        }
        ids.push(spool.append(&ehk, 5)?);
        assert_eq!(ids.first(), Some(&0));
        let first = spool.read_next(10, usize::MAX)?;
        assert_eq!(first.len(), 10);
        assert_eq!(
            first.first().map(|r| r.record.partition_key()),
            Some("key-0")
        );
        spool.ack(&ids[..50])?;
        drop(spool);

        let mut spool = Spool::open(config(dir.path(), 64 * 1024))?;
        assert_eq!(spool.stats().pending_records, 51);
        assert_eq!(spool.stats().recovered_records, 51);
        let rest = spool.read_next(1000, usize::MAX)?;
        assert_eq!(
            rest.iter().map(|r| r.id).collect::<Vec<_>>(),
            ids[50..].to_vec()
        );
        assert_eq!(rest.first().map(|r| r.accepted_unix_ms), Some(1050));
        assert_eq!(rest.last().map(|r| r.record.clone()), Some(ehk));
        spool.ack(&ids[50..])?;
        assert_eq!(spool.stats().pending_records, 0);
        assert_eq!(spool.next_id(), 101);
        drop(spool);
        // Ids continue after a restart even when everything was acknowledged.
        let mut spool = Spool::open(config(dir.path(), 64 * 1024))?;
        assert_eq!(spool.append(&record("x", b"y"), 0)?, 101);
        Ok(())
    }

    #[test]
    fn torn_tail_is_cut_and_damage_is_counted() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(io_error("tempdir", Path::new("/tmp")))?;
        let mut spool = Spool::open(config(dir.path(), 1 << 20))?;
        for i in 0..5u8 {
            spool.append(&record("k", &[i; 100]), 0)?;
        }
        let path = segment_path(dir.path(), 0);
        drop(spool);
        // A crash mid-write: half a frame at the end.
        let mut bytes = fs::read(&path).map_err(io_error("read", &path))?;
        let good_len = bytes.len();
        bytes.extend_from_within(..60);
        fs::write(&path, &bytes).map_err(io_error("write", &path))?;
        let mut spool = Spool::open(config(dir.path(), 1 << 20))?;
        assert_eq!(spool.stats().truncated_tail_bytes, 60);
        assert_eq!(
            fs::metadata(&path).map_err(io_error("stat", &path))?.len(),
            good_len as u64
        );
        assert_eq!(spool.read_next(100, usize::MAX)?.len(), 5);
        // Appending after recovery continues the id sequence.
        assert_eq!(spool.append(&record("k", b"new"), 0)?, 5);
        drop(spool);
        // Flip a byte in the third record's data: CRC catches it.
        let mut bytes = fs::read(&path).map_err(io_error("read", &path))?;
        let frame_len = good_len / 5;
        if let Some(byte) = bytes.get_mut(2 * frame_len + 50) {
            *byte ^= 1;
        }
        fs::write(&path, &bytes).map_err(io_error("write", &path))?;
        let mut spool = Spool::open(config(dir.path(), 1 << 20))?;
        assert_eq!(spool.stats().corrupt_records, 1);
        let ids: Vec<_> = spool
            .read_next(100, usize::MAX)?
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            ids,
            vec![0, 1, 3, 4, 5],
            "the damaged record alone is skipped"
        );
        assert_eq!(spool.stats().pending_records, 5);
        Ok(())
    }

    #[test]
    fn full_spool_drops_oldest_first_and_counts() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(io_error("tempdir", Path::new("/tmp")))?;
        let mut spool = Spool::open(config(dir.path(), 8192))?;
        let mut last = 0;
        for i in 0..200u32 {
            last = spool.append(&record("k", &[0; 100]), u64::from(i))?;
        }
        let stats = spool.stats();
        assert!(stats.bytes <= 8192, "{stats:?}");
        assert!(stats.dropped_records > 0);
        assert_eq!(stats.dropped_records + stats.pending_records, 200);
        let kept = spool.read_next(1000, usize::MAX)?;
        assert_eq!(kept.last().map(|r| r.id), Some(last));
        assert_eq!(kept.first().map(|r| r.id), Some(stats.dropped_records));
        assert!(matches!(
            spool.append(&record("k", &[0; 6000]), 0),
            Err(SpoolError::RecordLargerThanSpool { .. })
        ));
        Ok(())
    }

    #[test]
    fn sync_is_needed_only_after_appends_or_acks() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(io_error("tempdir", Path::new("/tmp")))?;
        let mut spool = Spool::open(config(dir.path(), 64 * 1024))?;
        assert!(
            !spool.has_unsynced_writes(),
            "a fresh spool has nothing to sync"
        );
        let id = spool.append(&record("k", b"v"), 1)?;
        assert!(spool.has_unsynced_writes());
        spool.sync()?;
        assert!(!spool.has_unsynced_writes());
        spool.ack(&[id])?;
        assert!(spool.has_unsynced_writes(), "an ack is a write too");
        spool.sync()?;
        assert!(!spool.has_unsynced_writes());
        Ok(())
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_acks_compacted() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(io_error("tempdir", Path::new("/tmp")))?;
        let mut spool = Spool::open(config(dir.path(), 1 << 20))?;
        for round in 0..3 {
            let ids: Vec<_> = (0..3000)
                .map(|i| spool.append(&record("k", &[round; 64]), i))
                .collect::<Result<_, _>>()?;
            let read = spool.read_next(5000, usize::MAX)?;
            assert_eq!(read.len(), 3000);
            spool.ack(&ids)?;
        }
        let segments = fs::read_dir(dir.path())
            .map_err(io_error("list", dir.path()))?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            })
            .count();
        assert_eq!(segments, 1, "only the active segment is kept");
        let acks =
            fs::metadata(dir.path().join("acks.log")).map_err(io_error("stat", dir.path()))?;
        assert!(
            acks.len() < 9000 * ACK_FRAME as u64,
            "acks compacted: {}",
            acks.len()
        );
        assert_eq!(spool.stats().pending_records, 0);
        Ok(())
    }

    #[test]
    fn dead_letters_carry_the_reason() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(io_error("tempdir", Path::new("/tmp")))?;
        let path = dir.path().join("dead.jsonl");
        let mut dead = DeadLetterFile::open(&path, 1 << 20)?;
        dead.append(
            4,
            &record("key", b"\x00\x01"),
            "ValidationException: too big",
            7,
        )?;
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        let line: serde_json::Value =
            serde_json::from_str(text.trim()).map_err(|e| SpoolError::Config(e.to_string()))?;
        assert_eq!(line["reason"], "ValidationException: too big");
        assert_eq!(line["partition_key"], "key");
        assert_eq!(line["data_base64"], "AAE=");
        assert_eq!(line["spool_id"], 4);
        Ok(())
    }
}
