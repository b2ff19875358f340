//! EBML writing: element IDs, variable-size integers and a master-element builder.
//!
//! Invariants:
//! - Element sizes are written in the shortest vint that holds them. A size `v` fits `n` bytes
//!   when `v <= 2^(7n) - 2`; the all-ones pattern of any width is reserved for "unknown size",
//!   which this module only writes as the 1-byte [`UNKNOWN_SIZE`] (as KVS's own producer does).
//! - [`EbmlWriter`] appends to a caller's `Vec<u8>` and never allocates beyond growing it; masters
//!   are opened and closed in LIFO order and their size is patched in place on close.

use thiserror::Error;

/// Element IDs written by the muxer (Matroska v2 names; the ID bytes include their length marker).
pub mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;

    pub const SEGMENT: u32 = 0x1853_8067;

    pub const INFO: u32 = 0x1549_A966;
    pub const SEGMENT_UID: u32 = 0x73A4;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    pub const TITLE: u32 = 0x7BA9;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;

    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const NAME: u32 = 0x536E;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;

    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMECODE: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;

    pub const TAGS: u32 = 0x1254_C367;
    pub const TAG: u32 = 0x7373;
    pub const SIMPLE_TAG: u32 = 0x67C8;
    pub const TAG_NAME: u32 = 0x45A3;
    pub const TAG_STRING: u32 = 0x4487;
}

/// The 1-byte "unknown size" marker (a 1-byte vint with all value bits set).
pub const UNKNOWN_SIZE: u8 = 0xFF;

/// Largest size an 8-byte vint can carry (2^56 − 2; 2^56 − 1 means unknown).
pub const MAX_SIZE: u64 = (1 << 56) - 2;

/// Deepest master nesting [`EbmlWriter`] tracks (Tags → Tag → SimpleTag needs 3).
pub const MAX_DEPTH: usize = 8;

/// What the writer refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EbmlError {
    #[error("EBML element size {0} exceeds the 8-byte vint maximum {MAX_SIZE}")]
    SizeTooLarge(u64),
    #[error("EBML masters nested deeper than {MAX_DEPTH} (opening element {id:#X})")]
    TooDeep { id: u32 },
    #[error("EBML master closed without a matching open")]
    Unbalanced,
}

/// Bytes needed to write `size` as an element size vint, or `None` past [`MAX_SIZE`].
pub const fn size_len(size: u64) -> Option<usize> {
    let mut n = 1;
    while n <= 8 {
        if size < (1u64 << (7 * n)) - 1 {
            return Some(n);
        }
        n += 1;
    }
    None
}

/// Encodes `size` as a minimal-width vint into `out`, returning the bytes used.
pub fn encode_size(size: u64, out: &mut [u8; 8]) -> Result<usize, EbmlError> {
    let len = size_len(size).ok_or(EbmlError::SizeTooLarge(size))?;
    encode_size_width(size, len, out);
    Ok(len)
}

/// Encodes `size` in exactly `len` bytes (1..=8); the caller has checked that it fits.
fn encode_size_width(size: u64, len: usize, out: &mut [u8; 8]) {
    let marked = size | (1u64 << (7 * len));
    let be = marked.to_be_bytes();
    out[..len].copy_from_slice(&be[8 - len..]);
}

/// Bytes of an element ID (IDs carry their own length marker, so it is their significant bytes).
pub const fn id_len(id: u32) -> usize {
    if id > 0x00FF_FFFF {
        4
    } else if id > 0xFFFF {
        3
    } else if id > 0xFF {
        2
    } else {
        1
    }
}

/// Appends an element ID.
pub fn put_id(buf: &mut Vec<u8>, id: u32) {
    let len = id_len(id);
    buf.extend_from_slice(&id.to_be_bytes()[4 - len..]);
}

/// Appends an element size as a minimal-width vint.
pub fn put_size(buf: &mut Vec<u8>, size: u64) -> Result<(), EbmlError> {
    let mut tmp = [0u8; 8];
    let len = encode_size(size, &mut tmp)?;
    buf.extend_from_slice(&tmp[..len]);
    Ok(())
}

/// Bytes of an unsigned integer element's payload (at least one byte, even for 0).
pub const fn uint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    if bits == 0 { 1 } else { bits.div_ceil(8) }
}

/// Writes EBML elements into a borrowed buffer. Masters get their size patched on close, in the
/// shortest vint, by moving their (small) content back; so use it for headers and tags, never
/// around frame payloads.
pub struct EbmlWriter<'a> {
    buf: &'a mut Vec<u8>,
    /// Offset of each open master's content (just after the 8 bytes reserved for its size).
    open: heapless::Vec<usize, MAX_DEPTH>,
}

impl<'a> EbmlWriter<'a> {
    /// Appends to `buf` (existing content is left alone).
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self {
            buf,
            open: heapless::Vec::new(),
        }
    }

    /// Opens a master element; close it with [`Self::end`].
    pub fn begin(&mut self, id: u32) -> Result<(), EbmlError> {
        put_id(self.buf, id);
        self.buf.extend_from_slice(&[0u8; 8]);
        self.open
            .push(self.buf.len())
            .map_err(|_| EbmlError::TooDeep { id })
    }

    /// Closes the innermost open master, writing its size in the shortest vint.
    pub fn end(&mut self) -> Result<(), EbmlError> {
        let content_start = self.open.pop().ok_or(EbmlError::Unbalanced)?;
        let size_at = content_start - 8;
        let size = (self.buf.len() - content_start) as u64;
        let mut tmp = [0u8; 8];
        let len = encode_size(size, &mut tmp)?;
        self.buf[size_at..size_at + len].copy_from_slice(&tmp[..len]);
        if len < 8 {
            self.buf.copy_within(content_start.., size_at + len);
            self.buf.truncate(self.buf.len() - (8 - len));
        }
        Ok(())
    }

    /// Opens a master of unknown size (Segment, Cluster): it is never closed.
    pub fn begin_unknown(&mut self, id: u32) {
        put_id(self.buf, id);
        self.buf.push(UNKNOWN_SIZE);
    }

    /// An unsigned integer element in the fewest bytes (at least one).
    pub fn uint(&mut self, id: u32, value: u64) -> Result<(), EbmlError> {
        let len = uint_len(value);
        put_id(self.buf, id);
        put_size(self.buf, len as u64)?;
        self.buf.extend_from_slice(&value.to_be_bytes()[8 - len..]);
        Ok(())
    }

    /// An 8-byte IEEE 754 float element.
    pub fn float(&mut self, id: u32, value: f64) -> Result<(), EbmlError> {
        put_id(self.buf, id);
        put_size(self.buf, 8)?;
        self.buf.extend_from_slice(&value.to_be_bytes());
        Ok(())
    }

    /// A binary element.
    pub fn binary(&mut self, id: u32, value: &[u8]) -> Result<(), EbmlError> {
        put_id(self.buf, id);
        put_size(self.buf, value.len() as u64)?;
        self.buf.extend_from_slice(value);
        Ok(())
    }

    /// A UTF-8 string element (no terminating zero).
    pub fn string(&mut self, id: u32, value: &str) -> Result<(), EbmlError> {
        self.binary(id, value.as_bytes())
    }

    /// True when every master opened has been closed.
    pub fn is_balanced(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_bytes(size: u64) -> Vec<u8> {
        let mut v = Vec::new();
        put_size(&mut v, size).unwrap();
        v
    }

    #[test]
    fn size_vint_at_every_width_boundary() {
        for n in 1..=8u32 {
            let top = (1u64 << (7 * n)) - 2; // largest value of width n
            let enc = size_bytes(top);
            assert_eq!(enc.len(), n as usize, "2^(7*{n})-2 fits {n} bytes");
            // Marker bit then all value bits set except the last.
            let marked = top | (1u64 << (7 * n));
            assert_eq!(enc, marked.to_be_bytes()[8 - n as usize..].to_vec());
            if n < 8 {
                // 2^(7n) − 1 would be the reserved all-ones pattern: it needs one byte more.
                let next = top + 1;
                let enc_next = size_bytes(next);
                let marked_next = next | (1u64 << (7 * (n + 1)));
                assert_eq!(
                    enc_next,
                    marked_next.to_be_bytes()[8 - (n as usize + 1)..].to_vec(),
                    "2^(7*{n})-1 needs {} bytes",
                    n + 1
                );
            }
        }
    }

    #[test]
    fn size_vint_known_values() {
        assert_eq!(size_bytes(0), [0x80]);
        assert_eq!(size_bytes(1), [0x81]);
        assert_eq!(size_bytes(126), [0xFE]);
        assert_eq!(size_bytes(127), [0x40, 0x7F]);
        assert_eq!(size_bytes(16_382), [0x7F, 0xFE]);
        assert_eq!(size_bytes(16_383), [0x20, 0x3F, 0xFF]);
        assert_eq!(size_bytes(2_097_150), [0x3F, 0xFF, 0xFE]);
        assert_eq!(size_bytes(2_097_151), [0x10, 0x1F, 0xFF, 0xFF]);
        assert_eq!(
            size_bytes(MAX_SIZE),
            [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE]
        );
    }

    #[test]
    fn size_beyond_eight_bytes_is_an_error() {
        let mut v = Vec::new();
        assert_eq!(
            put_size(&mut v, MAX_SIZE + 1),
            Err(EbmlError::SizeTooLarge(MAX_SIZE + 1))
        );
        assert_eq!(size_len(u64::MAX), None);
        assert!(v.is_empty());
    }

    #[test]
    fn ids_keep_their_width() {
        let mut v = Vec::new();
        put_id(&mut v, id::SIMPLE_BLOCK);
        put_id(&mut v, id::TAG_NAME);
        put_id(&mut v, id::TIMECODE_SCALE);
        put_id(&mut v, id::CLUSTER);
        assert_eq!(
            v,
            [0xA3, 0x45, 0xA3, 0x2A, 0xD7, 0xB1, 0x1F, 0x43, 0xB6, 0x75]
        );
    }

    #[test]
    fn uint_elements_are_minimal() {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.uint(id::TRACK_NUMBER, 0).unwrap();
        w.uint(id::TRACK_NUMBER, 255).unwrap();
        w.uint(id::TRACK_NUMBER, 256).unwrap();
        w.uint(id::TIMECODE_SCALE, 1_000_000).unwrap();
        w.uint(id::TIMECODE, u64::MAX).unwrap();
        assert_eq!(
            buf,
            [
                0xD7, 0x81, 0x00, //
                0xD7, 0x81, 0xFF, //
                0xD7, 0x82, 0x01, 0x00, //
                0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40, //
                0xE7, 0x88, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            ]
        );
    }

    #[test]
    fn nested_masters_get_minimal_sizes() {
        let mut buf = vec![0xAA]; // existing content stays put
        let mut w = EbmlWriter::new(&mut buf);
        w.begin(id::TAGS).unwrap();
        w.begin(id::TAG).unwrap();
        w.begin(id::SIMPLE_TAG).unwrap();
        w.string(id::TAG_NAME, "a").unwrap();
        w.string(id::TAG_STRING, "").unwrap();
        w.end().unwrap();
        w.end().unwrap();
        w.end().unwrap();
        assert!(w.is_balanced());
        assert_eq!(
            buf,
            [
                0xAA, //
                0x12, 0x54, 0xC3, 0x67, 0x8D, // Tags, 13 bytes
                0x73, 0x73, 0x8A, // Tag, 10 bytes
                0x67, 0xC8, 0x87, // SimpleTag, 7 bytes
                0x45, 0xA3, 0x81, b'a', // TagName "a"
                0x44, 0x87, 0x80, // TagString ""
            ]
        );
    }

    #[test]
    fn master_with_two_byte_size() {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.begin(id::CODEC_PRIVATE).unwrap();
        w.binary(id::NAME, &[7u8; 200]).unwrap(); // 2 + 2 + 200 = 204 bytes of content
        w.end().unwrap();
        assert_eq!(&buf[..4], &[0x63, 0xA2, 0x40, 204]);
        assert_eq!(&buf[4..8], &[0x53, 0x6E, 0x40, 200]);
        assert_eq!(buf.len(), 4 + 204);
    }

    #[test]
    fn unbalanced_and_deep_nesting_are_errors() {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        assert_eq!(w.end(), Err(EbmlError::Unbalanced));
        for _ in 0..MAX_DEPTH {
            w.begin(id::TAG).unwrap();
        }
        assert_eq!(w.begin(id::TAG), Err(EbmlError::TooDeep { id: id::TAG }));
    }

    #[test]
    fn float_and_unknown_size() {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.float(id::SAMPLING_FREQUENCY, 48_000.0).unwrap();
        w.begin_unknown(id::SEGMENT);
        assert_eq!(
            buf,
            [
                0xB5, 0x88, 0x40, 0xE7, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, //
                0x18, 0x53, 0x80, 0x67, 0xFF,
            ]
        );
    }
}
