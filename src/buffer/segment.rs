//! Segment files: naming, appending records, reading one back, and scanning a whole file for
//! recovery.
//!
//! A segment is an append-only file of records (see [`super::record`]); a record never spans two
//! segments. The file name is the zero-padded id of the first fragment meant for it, so sorting
//! names sorts segments, and an empty segment still remembers the fragment-id counter. Each
//! segment has an ACK-log sidecar with the same stem.

use super::record::{
    self, HEADER_LEN, HeaderFault, MAGIC, RecordHeader, RecordKind, record_crc, sealed_header,
};
use bytes::Bytes;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;

/// A segment's number: the id of the first fragment meant for it.
pub(crate) type SegmentId = u64;

const SEGMENT_SUFFIX: &str = ".seg";
const ACK_SUFFIX: &str = ".ack";
/// How much of a file a scan reads at once when it streams a body through the CRC or looks for
/// the next record after damage.
const SCAN_WINDOW: usize = 256 * 1024;

/// `00000000000000000042.seg`
pub(crate) fn segment_file_name(id: SegmentId) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

/// `00000000000000000042.ack`
pub(crate) fn ack_file_name(id: SegmentId) -> String {
    format!("{id:020}{ACK_SUFFIX}")
}

/// What a directory entry is, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFile {
    Segment(SegmentId),
    AckLog(SegmentId),
}

/// Parses a file name written by [`segment_file_name`] or [`ack_file_name`].
pub(crate) fn parse_file_name(name: &str) -> Option<LogFile> {
    let (stem, make): (&str, fn(SegmentId) -> LogFile) =
        if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
            (stem, LogFile::Segment)
        } else if let Some(stem) = name.strip_suffix(ACK_SUFFIX) {
            (stem, LogFile::AckLog)
        } else {
            return None;
        };
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(make)
}

/// Appends one record (header, then the body in pieces) with vectored writes, so the body's
/// `Bytes` chunks go to the kernel without being gathered into one buffer first.
pub(crate) fn append_record(
    file: &mut File,
    header: &[u8; HEADER_LEN],
    body: &[Bytes],
) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(body.len() + 1);
    slices.push(IoSlice::new(header));
    slices.extend(
        body.iter()
            .filter(|c| !c.is_empty())
            .map(|c| IoSlice::new(c)),
    );
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "segment write wrote 0 bytes",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Builds the sealed header of a fragment record.
pub(crate) fn fragment_header(
    fragment_id: u64,
    timecode_ms: u64,
    first_pts_ns: u64,
    last_pts_ns: u64,
    session_tag: u32,
    body: &[Bytes],
) -> io::Result<[u8; HEADER_LEN]> {
    let body_len = body_len_u32(body.iter().map(|c| c.len() as u64).sum())?;
    let header = RecordHeader {
        kind: RecordKind::Fragment,
        body_len,
        crc: 0,
        fragment_id,
        timecode_ms,
        first_pts_ns,
        last_pts_ns,
        session_tag,
    };
    Ok(sealed_header(header, body.iter().map(|c| &c[..])))
}

/// Builds the sealed header of a stream-header record.
pub(crate) fn stream_header_header(
    first_fragment_id: u64,
    producer_start_pts_ns: u64,
    session_tag: u32,
    header_bytes: &Bytes,
) -> io::Result<[u8; HEADER_LEN]> {
    let header = RecordHeader {
        kind: RecordKind::StreamHeader,
        body_len: body_len_u32(header_bytes.len() as u64)?,
        crc: 0,
        fragment_id: first_fragment_id,
        timecode_ms: 0,
        first_pts_ns: producer_start_pts_ns,
        last_pts_ns: 0,
        session_tag,
    };
    Ok(sealed_header(header, [&header_bytes[..]]))
}

fn body_len_u32(len: u64) -> io::Result<u32> {
    if len > record::MAX_BODY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "record body of {len} bytes exceeds the {} byte limit",
                record::MAX_BODY_LEN
            ),
        ));
    }
    u32::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record body too large"))
}

/// Why a stored record could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// The file ends inside the record's 56-byte header.
    TruncatedHeader,
    /// The record's body would reach past the end of the file.
    LengthBeyondEnd { body_len: u32 },
    /// No `KEFR` magic where a record should start.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion(u8),
    /// A record kind this build does not know.
    UnknownKind(u8),
    /// Reserved header bytes are not zero.
    ReservedBytesSet,
    /// The body length field exceeds the largest record the format allows.
    BodyTooLarge(u32),
    /// The CRC32C stored in the record does not match its contents.
    CrcMismatch { stored: u32, computed: u32 },
    /// The record is intact but not the fragment that was expected at this place.
    Unexpected,
}

impl std::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFault::TruncatedHeader => write!(f, "file ends inside a record header"),
            RecordFault::LengthBeyondEnd { body_len } => {
                write!(
                    f,
                    "record body of {body_len} bytes reaches past the end of the file"
                )
            }
            RecordFault::BadMagic => write!(f, "no record magic"),
            RecordFault::UnsupportedVersion(v) => write!(f, "unsupported record version {v}"),
            RecordFault::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            RecordFault::ReservedBytesSet => write!(f, "reserved header bytes are not zero"),
            RecordFault::BodyTooLarge(len) => {
                write!(f, "body length {len} exceeds the format limit")
            }
            RecordFault::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            RecordFault::Unexpected => write!(f, "record is not the fragment expected there"),
        }
    }
}

impl From<HeaderFault> for RecordFault {
    fn from(fault: HeaderFault) -> Self {
        match fault {
            HeaderFault::BadMagic => RecordFault::BadMagic,
            HeaderFault::UnsupportedVersion(v) => RecordFault::UnsupportedVersion(v),
            HeaderFault::UnknownKind(k) => RecordFault::UnknownKind(k),
            HeaderFault::NonZeroReserved => RecordFault::ReservedBytesSet,
            HeaderFault::BodyTooLarge(len) => RecordFault::BodyTooLarge(len),
        }
    }
}

/// Reads and checks the record at `offset`: header sanity, length within the file, CRC. The body
/// is streamed through the CRC with `scratch`, not kept.
fn check_record(
    file: &File,
    offset: u64,
    file_len: u64,
    scratch: &mut Vec<u8>,
) -> io::Result<Result<RecordHeader, RecordFault>> {
    if file_len.saturating_sub(offset) < HEADER_LEN as u64 {
        return Ok(Err(RecordFault::TruncatedHeader));
    }
    let mut raw = [0u8; HEADER_LEN];
    file.read_exact_at(&mut raw, offset)?;
    let header = match RecordHeader::decode(&raw) {
        Ok(header) => header,
        Err(fault) => return Ok(Err(fault.into())),
    };
    if offset + header.record_len() > file_len {
        return Ok(Err(RecordFault::LengthBeyondEnd {
            body_len: header.body_len,
        }));
    }
    let mut crc = crc32c::crc32c(&raw[0..12]);
    crc = crc32c::crc32c_append(crc, &raw[16..HEADER_LEN]);
    let mut at = offset + HEADER_LEN as u64;
    let mut left = u64::from(header.body_len);
    scratch.resize(SCAN_WINDOW, 0);
    while left > 0 {
        let take = left.min(SCAN_WINDOW as u64) as usize;
        let window = scratch.get_mut(..take).unwrap_or_default();
        file.read_exact_at(window, at)?;
        crc = crc32c::crc32c_append(crc, window);
        at += take as u64;
        left -= take as u64;
    }
    if crc != header.crc {
        return Ok(Err(RecordFault::CrcMismatch {
            stored: header.crc,
            computed: crc,
        }));
    }
    Ok(Ok(header))
}

/// Finds the first offset at or after `from` where an intact record starts.
fn resync(file: &File, from: u64, file_len: u64, scratch: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let finder = memchr::memmem::Finder::new(&MAGIC);
    let mut window = vec![0u8; SCAN_WINDOW];
    let mut base = from;
    while base < file_len {
        let take = (file_len - base).min(SCAN_WINDOW as u64) as usize;
        let chunk = window.get_mut(..take).unwrap_or_default();
        file.read_exact_at(chunk, base)?;
        for hit in finder.find_iter(chunk) {
            let candidate = base + hit as u64;
            if check_record(file, candidate, file_len, scratch)?.is_ok() {
                return Ok(Some(candidate));
            }
        }
        if take < MAGIC.len() {
            break;
        }
        // Overlap windows so a magic split across two windows is still seen.
        base += (take - (MAGIC.len() - 1)) as u64;
        if take < SCAN_WINDOW {
            break;
        }
    }
    Ok(None)
}

/// One intact record found by a scan.
#[derive(Debug, Clone)]
pub(crate) struct ScannedRecord {
    pub offset: u64,
    pub header: RecordHeader,
    /// The body of stream-header records (fragment bodies are left on disk).
    pub stream_header: Option<Bytes>,
}

/// A damaged range found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScannedDamage {
    pub offset: u64,
    pub length: u64,
    pub fault: RecordFault,
    /// No intact record follows: the range runs to the end of the file.
    pub at_tail: bool,
}

/// Everything a scan learned about one segment file.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentScan {
    pub records: Vec<ScannedRecord>,
    pub damage: Vec<ScannedDamage>,
    /// Where the intact part ends: the file can be cut here when the damage is at the tail.
    pub intact_len: u64,
}

/// Scans a segment from the start: every record's header and CRC is checked; after a damaged
/// range the scan resumes at the next intact record.
pub(crate) fn scan_segment(file: &File, file_len: u64) -> io::Result<SegmentScan> {
    let mut scan = SegmentScan::default();
    let mut scratch = Vec::new();
    let mut offset = 0u64;
    while offset < file_len {
        match check_record(file, offset, file_len, &mut scratch)? {
            Ok(header) => {
                let stream_header = if header.kind == RecordKind::StreamHeader {
                    let mut body = vec![0u8; header.body_len as usize];
                    file.read_exact_at(&mut body, offset + HEADER_LEN as u64)?;
                    Some(Bytes::from(body))
                } else {
                    None
                };
                scan.records.push(ScannedRecord {
                    offset,
                    header,
                    stream_header,
                });
                offset += header.record_len();
                scan.intact_len = offset;
            }
            Err(fault) => match resync(file, offset + 1, file_len, &mut scratch)? {
                Some(next) => {
                    scan.damage.push(ScannedDamage {
                        offset,
                        length: next - offset,
                        fault,
                        at_tail: false,
                    });
                    offset = next;
                }
                None => {
                    scan.damage.push(ScannedDamage {
                        offset,
                        length: file_len - offset,
                        fault,
                        at_tail: true,
                    });
                    break;
                }
            },
        }
    }
    Ok(scan)
}

/// Reads the fragment record at `offset` back and checks it: the header must name
/// `fragment_id`, the length must be `body_len` and the CRC must match. Returns the body.
pub(crate) fn read_fragment(
    file: &File,
    offset: u64,
    fragment_id: u64,
    body_len: u64,
) -> io::Result<Result<Bytes, RecordFault>> {
    let total = HEADER_LEN as u64 + body_len;
    let Ok(total) = usize::try_from(total) else {
        return Ok(Err(RecordFault::BodyTooLarge(u32::MAX)));
    };
    let mut buf = vec![0u8; total];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok(Err(RecordFault::LengthBeyondEnd {
                body_len: body_len as u32,
            }));
        }
        Err(e) => return Err(e),
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(buf.get(..HEADER_LEN).unwrap_or(&[0u8; HEADER_LEN]));
    let header = match RecordHeader::decode(&raw) {
        Ok(header) => header,
        Err(fault) => return Ok(Err(fault.into())),
    };
    if header.kind != RecordKind::Fragment
        || header.fragment_id != fragment_id
        || u64::from(header.body_len) != body_len
    {
        return Ok(Err(RecordFault::Unexpected));
    }
    let body = buf.get(HEADER_LEN..).unwrap_or_default();
    let computed = record_crc(&raw, [body]);
    if computed != header.crc {
        return Ok(Err(RecordFault::CrcMismatch {
            stored: header.crc,
            computed,
        }));
    }
    Ok(Ok(Bytes::from(buf).slice(HEADER_LEN..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    fn write_sample(file: &mut File, ids: &[u64]) -> Vec<(u64, Vec<u8>)> {
        let header_bytes = Bytes::from_static(b"\x1a\x45\xdf\xa3 fake stream header");
        let tag = record::session_tag(&header_bytes, 1000);
        let hh = stream_header_header(ids[0], 1000, tag, &header_bytes).expect("header record");
        append_record(file, &hh, std::slice::from_ref(&header_bytes)).expect("write");
        let mut out = Vec::new();
        for &id in ids {
            let body: Vec<u8> = (0..(100 + id as usize * 37))
                .map(|i| (i as u64 * 7 + id) as u8)
                .collect();
            let chunks = vec![
                Bytes::copy_from_slice(&body[..10]),
                Bytes::copy_from_slice(&body[10..]),
            ];
            let offset = file.stream_position().expect("pos");
            let h =
                fragment_header(id, id * 2000, id, id + 1, tag, &chunks).expect("fragment header");
            append_record(file, &h, &chunks).expect("write");
            out.push((offset, body));
        }
        out
    }

    #[test]
    fn names_round_trip_and_reject_others() {
        assert_eq!(
            parse_file_name(&segment_file_name(42)),
            Some(LogFile::Segment(42))
        );
        assert_eq!(
            parse_file_name(&ack_file_name(u64::MAX)),
            Some(LogFile::AckLog(u64::MAX))
        );
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("LOCK"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg"), None);
    }

    #[test]
    fn scan_finds_every_record_and_read_back_is_byte_exact() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let written = write_sample(&mut file, &[3, 4, 5]);
        let len = file.metadata().expect("meta").len();
        let scan = scan_segment(&file, len).expect("scan");
        assert!(scan.damage.is_empty());
        assert_eq!(scan.intact_len, len);
        assert_eq!(scan.records.len(), 4);
        assert_eq!(scan.records[0].header.kind, RecordKind::StreamHeader);
        for ((offset, body), rec) in written.iter().zip(&scan.records[1..]) {
            assert_eq!(rec.offset, *offset);
            let back = read_fragment(&file, *offset, rec.header.fragment_id, body.len() as u64)
                .expect("io")
                .expect("intact");
            assert_eq!(&back[..], &body[..]);
        }
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_later_records_kept() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let written = write_sample(&mut file, &[1, 2, 3]);
        let len = file.metadata().expect("meta").len();
        // Flip a body byte of fragment 2.
        let at = written[1].0 + HEADER_LEN as u64 + 5;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).expect("read");
        file.write_all_at(&[byte[0] ^ 0xff], at).expect("write");
        let scan = scan_segment(&file, len).expect("scan");
        let ids: Vec<u64> = scan
            .records
            .iter()
            .skip(1)
            .map(|r| r.header.fragment_id)
            .collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(scan.damage.len(), 1);
        assert!(matches!(
            scan.damage[0].fault,
            RecordFault::CrcMismatch { .. }
        ));
        assert_eq!(scan.damage[0].offset, written[1].0);
        assert_eq!(scan.damage[0].length, written[2].0 - written[1].0);
        assert!(!scan.damage[0].at_tail);
        assert_eq!(
            read_fragment(&file, written[1].0, 2, written[1].1.len() as u64).expect("io"),
            Err(scan.damage[0].fault)
        );
    }

    #[test]
    fn cut_at_every_offset_keeps_exactly_the_complete_records() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let written = write_sample(&mut file, &[1, 2]);
        let len = file.metadata().expect("meta").len();
        let mut all = vec![0u8; len as usize];
        file.read_exact_at(&mut all, 0).expect("read");
        for cut in 0..=len {
            let mut part = tempfile::tempfile().expect("tempfile");
            part.write_all(&all[..cut as usize]).expect("write");
            let scan = scan_segment(&part, cut).expect("scan");
            let complete = written
                .iter()
                .filter(|(off, body)| off + HEADER_LEN as u64 + body.len() as u64 <= cut)
                .count();
            let header_ok = cut >= written[0].0;
            let frags = scan
                .records
                .iter()
                .filter(|r| r.header.kind == RecordKind::Fragment)
                .count();
            assert_eq!(frags, complete, "cut at {cut}");
            assert_eq!(
                scan.records.len(),
                complete + usize::from(header_ok),
                "cut at {cut}"
            );
            assert!(scan.damage.iter().all(|d| d.at_tail));
            assert_eq!(
                scan.intact_len + scan.damage.iter().map(|d| d.length).sum::<u64>(),
                cut
            );
        }
    }

    #[test]
    fn garbage_file_yields_damage_not_records() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let garbage: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        file.write_all(&garbage).expect("write");
        file.write_all(b"KEFR\x01\x02").expect("write");
        let scan = scan_segment(&file, garbage.len() as u64 + 6).expect("scan");
        assert!(scan.records.is_empty());
        assert_eq!(scan.intact_len, 0);
        assert_eq!(scan.damage.len(), 1);
        assert!(scan.damage[0].at_tail);
    }
}
