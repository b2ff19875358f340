//! On-disk record formats: segment records (stream headers and fragments) and ACK-log records.
//! Pure encode/decode; no I/O.
//!
//! Segment record (all integers little-endian), 56-byte header then the body:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `KEFR` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | kind: 1 = stream header, 2 = fragment |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 4 | body length |
//! | 12 | 4 | CRC32C over bytes 0..12, 16..56 and the body |
//! | 16 | 8 | fragment id (stream header: id of the first fragment it applies to) |
//! | 24 | 8 | fragment timecode, ms (stream header: 0) |
//! | 32 | 8 | first PTS, ns (stream header: the producer start timestamp) |
//! | 40 | 8 | last PTS, ns (stream header: 0) |
//! | 48 | 4 | session tag: CRC32C of the stream header bytes and start timestamp |
//! | 52 | 4 | reserved, 0 |
//!
//! The session tag ties each fragment to the stream header it was muxed under, so recovery can
//! pair them even when a header record in between is damaged, and never pairs a fragment with a
//! header of another muxer session.
//!
//! ACK-log record (20 bytes): fragment id (8), code (4), kind (1), reserved (3, zero), CRC32C of
//! the first 16 bytes (4). Fixed size, so a reader re-synchronises on the next 20-byte boundary.

use bytes::Bytes;

/// Identifies a segment record.
pub(crate) const MAGIC: [u8; 4] = *b"KEFR";
/// The only record format version this code reads and writes.
pub(crate) const VERSION: u8 = 1;
/// Bytes of a segment record header.
pub(crate) const HEADER_LEN: usize = 56;
/// Largest record body accepted. KVS refuses fragments over 50 MB; this leaves room and keeps a
/// damaged length field from asking for gigabytes.
pub(crate) const MAX_BODY_LEN: u64 = 256 * 1024 * 1024;
/// Bytes of an ACK-log record.
pub(crate) const ACK_RECORD_LEN: usize = 20;

/// What a segment record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// Stream header (EBML … Tracks) for the fragments that follow.
    StreamHeader,
    /// One closed fragment.
    Fragment,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::StreamHeader => 1,
            RecordKind::Fragment => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RecordKind::StreamHeader),
            2 => Some(RecordKind::Fragment),
            _ => None,
        }
    }
}

/// The fixed fields of a segment record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub kind: RecordKind,
    pub body_len: u32,
    pub crc: u32,
    pub fragment_id: u64,
    pub timecode_ms: u64,
    pub first_pts_ns: u64,
    pub last_pts_ns: u64,
    pub session_tag: u32,
}

/// Why a segment record header is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderFault {
    BadMagic,
    UnsupportedVersion(u8),
    UnknownKind(u8),
    NonZeroReserved,
    BodyTooLarge(u32),
}

impl RecordHeader {
    /// Encodes the header with `crc` as given (compute it with [`record_crc`]).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.kind.code();
        out[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.crc.to_le_bytes());
        out[16..24].copy_from_slice(&self.fragment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.timecode_ms.to_le_bytes());
        out[32..40].copy_from_slice(&self.first_pts_ns.to_le_bytes());
        out[40..48].copy_from_slice(&self.last_pts_ns.to_le_bytes());
        out[48..52].copy_from_slice(&self.session_tag.to_le_bytes());
        out
    }

    /// Decodes and sanity-checks the fixed fields (not the CRC, which needs the body).
    pub fn decode(raw: &[u8; HEADER_LEN]) -> Result<Self, HeaderFault> {
        if raw[0..4] != MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if raw[4] != VERSION {
            return Err(HeaderFault::UnsupportedVersion(raw[4]));
        }
        let kind = RecordKind::from_code(raw[5]).ok_or(HeaderFault::UnknownKind(raw[5]))?;
        if raw[6..8] != [0, 0] || raw[52..56] != [0, 0, 0, 0] {
            return Err(HeaderFault::NonZeroReserved);
        }
        let body_len = u32_at(raw, 8);
        if u64::from(body_len) > MAX_BODY_LEN {
            return Err(HeaderFault::BodyTooLarge(body_len));
        }
        Ok(RecordHeader {
            kind,
            body_len,
            crc: u32_at(raw, 12),
            fragment_id: u64_at(raw, 16),
            timecode_ms: u64_at(raw, 24),
            first_pts_ns: u64_at(raw, 32),
            last_pts_ns: u64_at(raw, 40),
            session_tag: u32_at(raw, 48),
        })
    }

    /// Header plus body bytes.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }
}

/// CRC32C over an encoded header (its CRC field excluded) and the body given in pieces.
pub(crate) fn record_crc<'a>(
    header: &[u8; HEADER_LEN],
    body: impl IntoIterator<Item = &'a [u8]>,
) -> u32 {
    let mut crc = crc32c::crc32c(&header[0..12]);
    crc = crc32c::crc32c_append(crc, &header[16..HEADER_LEN]);
    for piece in body {
        crc = crc32c::crc32c_append(crc, piece);
    }
    crc
}

/// Builds a complete record header: fills in the CRC over `body`.
pub(crate) fn sealed_header<'a>(
    mut header: RecordHeader,
    body: impl IntoIterator<Item = &'a [u8]>,
) -> [u8; HEADER_LEN] {
    header.crc = 0;
    let mut raw = header.encode();
    let crc = record_crc(&raw, body);
    raw[12..16].copy_from_slice(&crc.to_le_bytes());
    raw
}

/// The session tag of a stream header: CRC32C over its bytes and the producer start timestamp.
pub(crate) fn session_tag(header: &Bytes, producer_start_pts_ns: u64) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), &producer_start_pts_ns.to_le_bytes())
}

/// Why a fragment left the log for good, as recorded in the ACK log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneKind {
    /// The service acknowledged PERSISTED.
    Persisted,
    /// The service acknowledged RECEIVED and the stream has no retention.
    Received,
    /// The service refused the fragment for good (ERROR ACK with this code).
    Skipped(u32),
    /// Dropped to stay within a byte budget.
    Evicted,
    /// Its stored copy failed verification when read back.
    Lost,
    /// The writer abandoned it before it closed.
    Aborted,
}

impl DoneKind {
    fn encode(self) -> (u8, u32) {
        match self {
            DoneKind::Persisted => (1, 0),
            DoneKind::Received => (2, 0),
            DoneKind::Skipped(code) => (3, code),
            DoneKind::Evicted => (4, 0),
            DoneKind::Lost => (5, 0),
            DoneKind::Aborted => (6, 0),
        }
    }

    fn decode(kind: u8, code: u32) -> Option<Self> {
        match kind {
            1 => Some(DoneKind::Persisted),
            2 => Some(DoneKind::Received),
            3 => Some(DoneKind::Skipped(code)),
            4 => Some(DoneKind::Evicted),
            5 => Some(DoneKind::Lost),
            6 => Some(DoneKind::Aborted),
            _ => None,
        }
    }
}

/// One ACK-log entry: this fragment is done and must not be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckRecord {
    pub fragment_id: u64,
    pub kind: DoneKind,
}

impl AckRecord {
    pub fn encode(&self) -> [u8; ACK_RECORD_LEN] {
        let (kind, code) = self.kind.encode();
        let mut out = [0u8; ACK_RECORD_LEN];
        out[0..8].copy_from_slice(&self.fragment_id.to_le_bytes());
        out[8..12].copy_from_slice(&code.to_le_bytes());
        out[12] = kind;
        let crc = crc32c::crc32c(&out[0..16]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` when the CRC, the kind or the reserved bytes are wrong.
    pub fn decode(raw: &[u8; ACK_RECORD_LEN]) -> Option<Self> {
        if crc32c::crc32c(&raw[0..16]) != u32_at(raw, 16) || raw[13..16] != [0, 0, 0] {
            return None;
        }
        let kind = DoneKind::decode(raw[12], u32_at(raw, 8))?;
        Some(AckRecord {
            fragment_id: u64_at(raw, 0),
            kind,
        })
    }
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(src) = raw.get(at..at + 4) {
        word.copy_from_slice(src);
    }
    u32::from_le_bytes(word)
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(src) = raw.get(at..at + 8) {
        word.copy_from_slice(src);
    }
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Fragment,
            body_len: 5,
            crc: 0,
            fragment_id: 42,
            timecode_ms: 1_700_000_000_123,
            first_pts_ns: 1_700_000_000_123_000_000,
            last_pts_ns: 1_700_000_002_090_000_000,
            session_tag: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trips_and_crc_covers_every_field() {
        let body: &[u8] = b"hello";
        let raw = sealed_header(sample(), [body]);
        let decoded = RecordHeader::decode(&raw).expect("valid header");
        assert_eq!(decoded.fragment_id, 42);
        assert_eq!(decoded.session_tag, 0xdead_beef);
        assert_eq!(decoded.crc, record_crc(&raw, [body]));
        // Any single flipped bit outside the CRC field changes the CRC.
        for byte in (0..HEADER_LEN).filter(|b| !(12..16).contains(b)) {
            let mut bent = raw;
            bent[byte] ^= 0x01;
            assert_ne!(
                record_crc(&bent, [body]),
                decoded.crc,
                "byte {byte} not covered"
            );
        }
        assert_ne!(record_crc(&raw, [&b"hellp"[..]]), decoded.crc);
    }

    #[test]
    fn crc_of_pieces_equals_crc_of_whole() {
        let raw = sealed_header(sample(), [&b"hello"[..]]);
        assert_eq!(
            record_crc(&raw, [&b"he"[..], b"", b"llo"]),
            record_crc(&raw, [&b"hello"[..]])
        );
    }

    #[test]
    fn decode_names_each_fault() {
        let raw = sealed_header(sample(), [&b"hello"[..]]);
        let mut bad = raw;
        bad[0] = b'X';
        assert_eq!(RecordHeader::decode(&bad), Err(HeaderFault::BadMagic));
        let mut bad = raw;
        bad[4] = 9;
        assert_eq!(
            RecordHeader::decode(&bad),
            Err(HeaderFault::UnsupportedVersion(9))
        );
        let mut bad = raw;
        bad[5] = 7;
        assert_eq!(RecordHeader::decode(&bad), Err(HeaderFault::UnknownKind(7)));
        let mut bad = raw;
        bad[53] = 1;
        assert_eq!(
            RecordHeader::decode(&bad),
            Err(HeaderFault::NonZeroReserved)
        );
        let mut bad = raw;
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            RecordHeader::decode(&bad),
            Err(HeaderFault::BodyTooLarge(u32::MAX))
        );
    }

    #[test]
    fn ack_records_round_trip_and_reject_damage() {
        for kind in [
            DoneKind::Persisted,
            DoneKind::Received,
            DoneKind::Skipped(4006),
            DoneKind::Evicted,
            DoneKind::Lost,
            DoneKind::Aborted,
        ] {
            let rec = AckRecord {
                fragment_id: 7,
                kind,
            };
            assert_eq!(AckRecord::decode(&rec.encode()), Some(rec));
        }
        assert_eq!(AckRecord::decode(&[0u8; ACK_RECORD_LEN]), None);
    }

    proptest! {
        #[test]
        fn ack_record_detects_any_single_byte_change(id in any::<u64>(), code in any::<u32>(),
                                                     at in 0usize..ACK_RECORD_LEN, xor in 1u8..=255) {
            let mut raw = AckRecord { fragment_id: id, kind: DoneKind::Skipped(code) }.encode();
            raw[at] ^= xor;
            prop_assert_eq!(AckRecord::decode(&raw), None);
        }

        #[test]
        fn decode_never_panics(raw in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform24(any::<u8>())) {
            let mut full = [0u8; HEADER_LEN];
            full[..32].copy_from_slice(&raw);
            full[32..].copy_from_slice(&tail);
            let _ = RecordHeader::decode(&full);
        }
    }
}
