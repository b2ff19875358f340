//! Recovery at open: scan every segment, keep every intact fragment, apply the ACK logs, report
//! and tidy up the rest. Nothing a file contains can make this panic or fail the open; only a
//! directory that cannot be listed does.

use super::BufferError;
use super::index::{Location, RecoveredFragment, SegmentBook};
use super::record::{ACK_RECORD_LEN, AckRecord, RecordKind};
use super::segment::{self, LogFile, SegmentId};
use super::types::{Damage, DamageAction, FragmentId, RecoveryReport, SessionId, StreamSession};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// What recovery hands to the log.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Intact, unacknowledged fragments in id order.
    pub fragments: Vec<RecoveredFragment>,
    /// Segments kept, with their live fragments and sizes.
    pub segments: BTreeMap<SegmentId, SegmentBook>,
    /// Segment file and ACK-log sizes of the kept segments.
    pub sizes: BTreeMap<SegmentId, (u64, u64)>,
    pub next_fragment_id: u64,
    pub next_session_id: u64,
    pub report: RecoveryReport,
}

/// A fragment record found intact, before ACKs are applied.
struct Found {
    segment: SegmentId,
    offset: u64,
    id: u64,
    timecode_ms: u64,
    first_pts_ns: u64,
    last_pts_ns: u64,
    bytes: u64,
    session_tag: u32,
}

/// Scans `dir` (which exists and is locked by the caller).
pub(crate) fn recover(dir: &Path, fsync: bool) -> Result<Recovered, BufferError> {
    let mut out = Recovered {
        report: RecoveryReport {
            dir: dir.to_path_buf(),
            ..Default::default()
        },
        ..Default::default()
    };
    let (segment_ids, ack_ids) = list(dir)?;
    let mut next_id: u64 = segment_ids.iter().next_back().copied().unwrap_or(0);

    // Pass 1: every segment's intact records. Stream headers are collected from all segments
    // before fragments are paired with them, so a damaged header record is covered by the copy
    // at the start of the next segment.
    let mut headers: HashMap<u32, (Bytes, u64)> = HashMap::new();
    let mut found: Vec<Found> = Vec::new();
    let mut seg_len: BTreeMap<SegmentId, u64> = BTreeMap::new();
    for &segment in &segment_ids {
        out.report.segments_scanned += 1;
        let path = dir.join(segment::segment_file_name(segment));
        let scan = match File::open(&path).and_then(|f| {
            let len = f.metadata()?.len();
            segment::scan_segment(&f, len).map(|scan| (scan, len))
        }) {
            Ok(scan) => scan,
            Err(e) => {
                out.report.damage.push(Damage {
                    file: path,
                    offset: 0,
                    length: 0,
                    reason: format!("cannot read segment: {e}"),
                    action: DamageAction::Ignored,
                });
                continue;
            }
        };
        let (scan, file_len) = scan;
        let mut kept_len = file_len;
        for damage in &scan.damage {
            let mut action = if damage.at_tail {
                DamageAction::Truncated
            } else {
                DamageAction::LeftInPlace
            };
            if damage.at_tail {
                match cut(&path, scan.intact_len, fsync) {
                    Ok(()) => kept_len = scan.intact_len,
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "could not cut a damaged segment tail");
                        action = DamageAction::LeftInPlace;
                    }
                }
            }
            out.report.damage.push(Damage {
                file: path.clone(),
                offset: damage.offset,
                length: damage.length,
                reason: damage.fault.to_string(),
                action,
            });
        }
        seg_len.insert(segment, kept_len);
        for record in scan.records {
            let h = record.header;
            next_id = next_id.max(h.fragment_id.saturating_add(1));
            match (h.kind, record.stream_header) {
                (RecordKind::StreamHeader, Some(bytes)) => {
                    headers
                        .entry(h.session_tag)
                        .or_insert((bytes, h.first_pts_ns));
                }
                (RecordKind::Fragment, _) => found.push(Found {
                    segment,
                    offset: record.offset,
                    id: h.fragment_id,
                    timecode_ms: h.timecode_ms,
                    first_pts_ns: h.first_pts_ns,
                    last_pts_ns: h.last_pts_ns,
                    bytes: u64::from(h.body_len),
                    session_tag: h.session_tag,
                }),
                (RecordKind::StreamHeader, None) => {}
            }
        }
    }

    // ACK logs: which fragments are done.
    let mut done: HashSet<u64> = HashSet::new();
    let mut ack_len: BTreeMap<SegmentId, u64> = BTreeMap::new();
    for &segment in &ack_ids {
        let path = dir.join(segment::ack_file_name(segment));
        if !segment_ids.contains(&segment) {
            // Its segment is gone: nothing it says matters any more.
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "could not remove an orphan ACK log");
            }
            continue;
        }
        let len = read_ack_log(&path, fsync, &mut done, &mut next_id, &mut out.report);
        ack_len.insert(segment, len);
    }

    // Pass 2: pair fragments with headers, drop the done ones, check the order.
    let mut sessions: HashMap<u32, Arc<StreamSession>> = HashMap::new();
    let mut next_session = 0u64;
    let mut last_id: Option<u64> = None;
    for f in found {
        let path = || dir.join(segment::segment_file_name(f.segment));
        if last_id.is_some_and(|last| f.id <= last) {
            out.report.damage.push(Damage {
                file: path(),
                offset: f.offset,
                length: 0,
                reason: format!(
                    "fragment id {} not above the previous {}",
                    f.id,
                    last_id.unwrap_or(0)
                ),
                action: DamageAction::Ignored,
            });
            continue;
        }
        last_id = Some(f.id);
        if done.contains(&f.id) {
            out.report.fragments_already_done += 1;
            continue;
        }
        let session = match sessions.get(&f.session_tag) {
            Some(session) => session.clone(),
            None => match headers.get(&f.session_tag) {
                Some((bytes, start)) => {
                    let session = Arc::new(StreamSession {
                        id: SessionId(next_session),
                        header: bytes.clone(),
                        producer_start_pts_ns: *start,
                        tag: f.session_tag,
                    });
                    next_session += 1;
                    sessions.insert(f.session_tag, session.clone());
                    session
                }
                None => {
                    out.report.damage.push(Damage {
                        file: path(),
                        offset: f.offset,
                        length: 0,
                        reason: format!("fragment {} has no intact stream header record", f.id),
                        action: DamageAction::Ignored,
                    });
                    continue;
                }
            },
        };
        out.report.fragments_recovered += 1;
        out.report.bytes_recovered += f.bytes;
        out.segments.entry(f.segment).or_default().live += 1;
        out.fragments.push(RecoveredFragment {
            id: FragmentId(f.id),
            session,
            timecode_ms: f.timecode_ms,
            first_pts_ns: f.first_pts_ns,
            last_pts_ns: f.last_pts_ns,
            bytes: f.bytes,
            location: Location {
                segment: f.segment,
                offset: f.offset,
            },
        });
    }

    // Segments with nothing live left go; the rest are kept, read-only (new writes go to a new
    // segment).
    for (&segment, &len) in &seg_len {
        let acks = ack_len.get(&segment).copied().unwrap_or(0);
        if out.segments.contains_key(&segment) {
            out.sizes.insert(segment, (len, acks));
            if let Some(book) = out.segments.get_mut(&segment) {
                book.bytes = len + acks;
            }
            continue;
        }
        let seg_path = dir.join(segment::segment_file_name(segment));
        match fs::remove_file(&seg_path)
            .and_then(|()| remove_if_present(&dir.join(segment::ack_file_name(segment))))
        {
            Ok(()) => out.report.segments_deleted += 1,
            Err(e) => {
                tracing::warn!(file = %seg_path.display(), error = %e, "could not delete a finished segment");
                out.sizes.insert(segment, (len, acks));
                out.segments.insert(
                    segment,
                    SegmentBook {
                        live: 0,
                        bytes: len + acks,
                        deleting: false,
                    },
                );
            }
        }
    }
    if fsync && out.report.segments_deleted > 0 {
        let _ = super::disk::sync_dir(dir);
    }
    out.next_fragment_id = next_id;
    out.next_session_id = next_session;
    out.report.next_fragment_id = next_id;
    Ok(out)
}

/// Segment and ACK-log ids in `dir`, sorted. Other files are left alone.
fn list(dir: &Path) -> Result<(BTreeSet<SegmentId>, BTreeSet<SegmentId>), BufferError> {
    let io_err = |source| BufferError::Io {
        op: "list log directory",
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = BTreeSet::new();
    let mut acks = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        match name.to_str().and_then(segment::parse_file_name) {
            Some(LogFile::Segment(id)) => {
                segments.insert(id);
            }
            Some(LogFile::AckLog(id)) => {
                acks.insert(id);
            }
            None => {}
        }
    }
    Ok((segments, acks))
}

/// Reads one ACK log into `done`; cuts a torn tail. Returns its (kept) length.
fn read_ack_log(
    path: &Path,
    fsync: bool,
    done: &mut HashSet<u64>,
    next_id: &mut u64,
    report: &mut RecoveryReport,
) -> u64 {
    let raw = match fs::read(path) {
        Ok(raw) => raw,
        Err(e) => {
            report.damage.push(Damage {
                file: path.to_path_buf(),
                offset: 0,
                length: 0,
                reason: format!("cannot read ACK log: {e}"),
                action: DamageAction::Ignored,
            });
            return 0;
        }
    };
    let mut records = raw.chunks_exact(ACK_RECORD_LEN);
    for (index, chunk) in records.by_ref().enumerate() {
        let mut fixed = [0u8; ACK_RECORD_LEN];
        fixed.copy_from_slice(chunk);
        match AckRecord::decode(&fixed) {
            Some(record) => {
                done.insert(record.fragment_id);
                *next_id = (*next_id).max(record.fragment_id.saturating_add(1));
            }
            None => report.damage.push(Damage {
                file: path.to_path_buf(),
                offset: (index * ACK_RECORD_LEN) as u64,
                length: ACK_RECORD_LEN as u64,
                reason: "ACK record CRC mismatch".into(),
                action: DamageAction::LeftInPlace,
            }),
        }
    }
    let whole = (raw.len() - records.remainder().len()) as u64;
    if !records.remainder().is_empty() {
        let action = match cut(path, whole, fsync) {
            Ok(()) => DamageAction::Truncated,
            Err(_) => DamageAction::LeftInPlace,
        };
        report.damage.push(Damage {
            file: path.to_path_buf(),
            offset: whole,
            length: records.remainder().len() as u64,
            reason: "ACK log ends inside a record".into(),
            action,
        });
        if action == DamageAction::Truncated {
            return whole;
        }
    }
    raw.len() as u64
}

fn cut(path: &Path, len: u64, fsync: bool) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
