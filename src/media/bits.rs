//! MSB-first bit reader for parameter sets and AudioSpecificConfig.
//!
//! Invariant: every read is bounds-checked and reports the field being read and the bit offset
//! where it started, so a truncated or corrupt SPS yields an error that says where it broke.

use super::MediaError;

/// Reads bits most-significant first from a byte slice.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
    /// What is being parsed, for error messages ("H.264 SPS", ...).
    what: &'static str,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        BitReader { data, pos: 0, what }
    }

    /// Current position in bits.
    pub(crate) fn bit_offset(&self) -> usize {
        self.pos
    }

    fn end(&self, field: &'static str) -> MediaError {
        MediaError::BitstreamEnd {
            what: self.what,
            field,
            bit_offset: self.pos,
        }
    }

    /// An [`MediaError::InvalidField`] for a value read starting at `bit_offset`.
    pub(crate) fn invalid(
        &self,
        field: &'static str,
        value: i64,
        bit_offset: usize,
        reason: &'static str,
    ) -> MediaError {
        MediaError::InvalidField {
            what: self.what,
            field,
            value,
            bit_offset,
            reason,
        }
    }

    pub(crate) fn flag(&mut self, field: &'static str) -> Result<bool, MediaError> {
        let byte = self.data.get(self.pos / 8).ok_or_else(|| self.end(field))?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    /// Reads `n` ≤ 64 bits as an unsigned number.
    pub(crate) fn bits(&mut self, n: u32, field: &'static str) -> Result<u64, MediaError> {
        let start = self.pos;
        if self.data.len().saturating_mul(8) < start.saturating_add(n as usize) {
            return Err(self.end(field));
        }
        let mut value: u64 = 0;
        for _ in 0..n.min(64) {
            value = (value << 1) | u64::from(self.flag(field)?);
        }
        Ok(value)
    }

    /// Reads `n` ≤ 8 bits.
    pub(crate) fn u8(&mut self, n: u32, field: &'static str) -> Result<u8, MediaError> {
        // n ≤ 8 at every call site, so the value always fits.
        Ok(self.bits(n.min(8), field)? as u8)
    }

    /// Reads `n` ≤ 32 bits.
    pub(crate) fn u32(&mut self, n: u32, field: &'static str) -> Result<u32, MediaError> {
        Ok(self.bits(n.min(32), field)? as u32)
    }

    pub(crate) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), MediaError> {
        let target = self.pos.saturating_add(n);
        if self.data.len().saturating_mul(8) < target {
            self.pos = self.data.len().saturating_mul(8);
            return Err(self.end(field));
        }
        self.pos = target;
        Ok(())
    }

    /// Unsigned Exp-Golomb code (`ue(v)`), up to 2^32 − 2.
    pub(crate) fn ue(&mut self, field: &'static str) -> Result<u32, MediaError> {
        let start = self.pos;
        let mut leading_zeros = 0u32;
        while !self.flag(field)? {
            leading_zeros += 1;
            if leading_zeros > 31 {
                return Err(self.invalid(
                    field,
                    i64::from(leading_zeros),
                    start,
                    "Exp-Golomb code longer than 32 bits",
                ));
            }
        }
        let suffix = self.bits(leading_zeros, field)?;
        // (2^lz − 1) + suffix < 2^32 − 1 for lz ≤ 31.
        Ok(((1u64 << leading_zeros) - 1 + suffix) as u32)
    }

    /// Signed Exp-Golomb code (`se(v)`).
    pub(crate) fn se(&mut self, field: &'static str) -> Result<i32, MediaError> {
        let code = i64::from(self.ue(field)?);
        let value = if code % 2 == 1 {
            (code + 1) / 2
        } else {
            -(code / 2)
        };
        // |value| ≤ 2^31 − 1 because code ≤ 2^32 − 2.
        Ok(value as i32)
    }

    /// Reads an unsigned Exp-Golomb value and checks it against an inclusive maximum.
    pub(crate) fn ue_max(&mut self, field: &'static str, max: u32) -> Result<u32, MediaError> {
        let start = self.pos;
        let value = self.ue(field)?;
        if value > max {
            return Err(self.invalid(
                field,
                i64::from(value),
                start,
                "above the maximum the standard allows",
            ));
        }
        Ok(value)
    }
}

/// Reads the big-endian byte fields of a decoder configuration record, naming the field and
/// byte offset in errors.
pub(crate) struct ByteReader<'a> {
    data: &'a [u8],
    pos: usize,
    record: &'static str,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(data: &'a [u8], record: &'static str) -> Self {
        ByteReader {
            data,
            pos: 0,
            record,
        }
    }

    /// Current position in bytes.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    fn truncated(&self, field: &'static str) -> MediaError {
        MediaError::RecordTruncated {
            record: self.record,
            field,
            offset: self.pos,
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MediaError> {
        let bytes = self
            .data
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| self.truncated(field))?;
        self.pos += n;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, MediaError> {
        let byte = self
            .data
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.truncated(field))?;
        self.pos += 1;
        Ok(byte)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, MediaError> {
        let bytes = self.take(2, field)?;
        Ok(bytes.iter().fold(0u16, |acc, &b| (acc << 8) | u16::from(b)))
    }

    /// A 16-bit length followed by that many bytes of NAL unit, which must not be empty.
    pub(crate) fn nal(&mut self, field: &'static str) -> Result<bytes::Bytes, MediaError> {
        let offset = self.pos;
        let len = usize::from(self.u16(field)?);
        if len == 0 {
            return Err(MediaError::EmptyNal { offset });
        }
        Ok(bytes::Bytes::copy_from_slice(self.take(len, field)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fixed_width_fields_msb_first() {
        let mut r = BitReader::new(&[0b1010_1100, 0xff], "test");
        assert!(r.flag("a").unwrap());
        assert_eq!(r.bits(3, "b").unwrap(), 0b010);
        assert_eq!(r.u8(8, "c").unwrap(), 0b1100_1111);
        assert_eq!(r.bit_offset(), 12);
        assert_eq!(r.u32(4, "d").unwrap(), 0xf);
        assert!(matches!(
            r.flag("e"),
            Err(MediaError::BitstreamEnd {
                field: "e",
                bit_offset: 16,
                ..
            })
        ));
    }

    #[test]
    fn exp_golomb_codes() {
        // 1 | 010 | 011 | 00100 | 00101 → ue 0, 1, 2, 3, 4 ; then se of the same codes.
        let bits = "10100110010000101".repeat(2);
        let mut bytes = vec![0u8; bits.len().div_ceil(8)];
        for (i, c) in bits.bytes().enumerate() {
            if c == b'1' {
                bytes[i / 8] |= 0x80 >> (i % 8);
            }
        }
        let mut r = BitReader::new(&bytes, "test");
        let ue: Vec<u32> = (0..5).map(|_| r.ue("ue").unwrap()).collect();
        assert_eq!(ue, [0, 1, 2, 3, 4]);
        let se: Vec<i32> = (0..5).map(|_| r.se("se").unwrap()).collect();
        assert_eq!(se, [0, 1, -1, 2, -2]);
    }

    #[test]
    fn exp_golomb_limits() {
        // 31 leading zeros, a 1, then 31 ones: the largest ue(v), 2^32 − 2.
        let mut r = BitReader::new(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe], "test");
        assert_eq!(r.ue("max").unwrap(), u32::MAX - 1);
        let mut r = BitReader::new(&[0, 0, 0, 0, 0xff], "test");
        assert!(matches!(
            r.ue("long"),
            Err(MediaError::InvalidField {
                field: "long",
                bit_offset: 0,
                ..
            })
        ));
        let mut r = BitReader::new(&[0, 0], "test");
        assert!(matches!(r.ue("cut"), Err(MediaError::BitstreamEnd { .. })));
        let mut r = BitReader::new(&[0b0010_0000], "test");
        assert!(matches!(
            r.ue_max("small", 2),
            Err(MediaError::InvalidField { value: 3, .. })
        ));
    }

    #[test]
    fn skip_past_end_errors() {
        let mut r = BitReader::new(&[0, 0], "test");
        r.skip(16, "fits").unwrap();
        assert!(r.skip(1, "over").is_err());
    }
}
