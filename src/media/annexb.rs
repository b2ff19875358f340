//! Annex-B (start code) and length-prefixed NAL framing, and emulation-prevention removal.
//!
//! Decisions (mirroring the KVS producer's scanner, which the service is used to):
//! - Annex-B data must begin with a 3-byte (`00 00 01`) or 4-byte (`00 00 00 01`) start code;
//!   longer leading zero runs are rejected like any other run of more than 3 zeros before `01`.
//!   Empty input holds no NAL units and is not an error.
//! - Inside the stream, the zero bytes before a `01` (the start code's own two plus at most one
//!   `zero_byte` / trailing zero of the previous NAL) may number 2 or 3; 4 or more is an error.
//! - Zero bytes at the very end of the buffer are `trailing_zero_8bits` and are trimmed, however
//!   many there are. A NAL unit never ends in `00` (its RBSP ends in a stop bit, or in `03` after
//!   `cabac_zero_words`), so trimming zeros never cuts NAL content.
//! - A start code followed by another start code or by the end of the data is an empty NAL: error.
//! - NAL payloads are not otherwise validated; emulation-prevention bytes are kept verbatim.
//! - Ranges exclude start codes and length prefixes, are non-empty, in order and within `data`.
//!   Iterators are fused after the first error.

use std::ops::Range;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::MediaError;

/// Searches for `00 00 01`; memchr's SIMD prefilter checks two of the needle's bytes at once,
/// so candidates are rare even in zero-heavy data. Built once for the process.
static START_CODE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(&[0, 0, 1]));

/// Iterates the NAL units of an Annex-B buffer as byte ranges into `data` (start codes excluded,
/// trailing zero bytes of a NAL trimmed). One forward pass, no allocation; see the module
/// documentation for what is accepted.
pub fn nal_ranges(data: &[u8]) -> NalRanges<'_> {
    NalRanges {
        data,
        pos: 0,
        state: ScanState::Start,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    /// The leading start code has not been read yet.
    Start,
    /// `pos` is the first byte of the next NAL unit.
    InStream,
    Done,
}

/// Iterator returned by [`nal_ranges`].
#[derive(Debug, Clone)]
pub struct NalRanges<'a> {
    data: &'a [u8],
    pos: usize,
    state: ScanState,
}

impl NalRanges<'_> {
    fn fail(&mut self, error: MediaError) -> Option<Result<Range<usize>, MediaError>> {
        self.state = ScanState::Done;
        Some(Err(error))
    }

    /// Reads the leading start code. `Ok(false)` means the data is empty.
    fn read_leading_start_code(&mut self) -> Result<bool, MediaError> {
        if self.data.is_empty() {
            return Ok(false);
        }
        let zeros = self
            .data
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(self.data.len());
        if zeros < 2 || self.data.get(zeros) != Some(&1) {
            return Err(MediaError::MissingStartCode { offset: 0 });
        }
        if zeros > 3 {
            return Err(MediaError::TooManyZeros { offset: 0, zeros });
        }
        self.pos = zeros + 1;
        Ok(true)
    }
}

impl Iterator for NalRanges<'_> {
    type Item = Result<Range<usize>, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.state {
            ScanState::Done => return None,
            ScanState::Start => match self.read_leading_start_code() {
                Ok(true) => self.state = ScanState::InStream,
                Ok(false) => {
                    self.state = ScanState::Done;
                    return None;
                }
                Err(e) => return self.fail(e),
            },
            ScanState::InStream => {}
        }
        let start = self.pos;
        let rest = self.data.get(start..).unwrap_or_default();
        match START_CODE.find(rest) {
            Some(relative) => {
                let code = start + relative;
                // Leftmost match: any further zeros sit before `code`, inside this NAL's span.
                let zero_run_start = start
                    + self
                        .data
                        .get(start..code)
                        .unwrap_or_default()
                        .iter()
                        .rposition(|&b| b != 0)
                        .map_or(0, |last_non_zero| last_non_zero + 1);
                let zeros = code + 2 - zero_run_start;
                if zeros > 3 {
                    return self.fail(MediaError::TooManyZeros {
                        offset: zero_run_start,
                        zeros,
                    });
                }
                if zero_run_start == start {
                    return self.fail(MediaError::EmptyNal { offset: start });
                }
                self.pos = code + 3;
                Some(Ok(start..zero_run_start))
            }
            None => {
                self.state = ScanState::Done;
                let end = start
                    + rest
                        .iter()
                        .rposition(|&b| b != 0)
                        .map_or(0, |last_non_zero| last_non_zero + 1);
                if end == start {
                    return Some(Err(MediaError::EmptyNal { offset: start }));
                }
                Some(Ok(start..end))
            }
        }
    }
}

impl std::iter::FusedIterator for NalRanges<'_> {}

/// Iterates NAL units of a length-prefixed buffer (4-byte big-endian lengths) as ranges
/// (prefixes excluded); errors on truncation and on zero lengths.
pub fn length_prefixed_ranges(data: &[u8]) -> LengthPrefixedRanges<'_> {
    LengthPrefixedRanges {
        data,
        pos: 0,
        done: false,
    }
}

/// Iterator returned by [`length_prefixed_ranges`].
#[derive(Debug, Clone)]
pub struct LengthPrefixedRanges<'a> {
    data: &'a [u8],
    pos: usize,
    done: bool,
}

impl Iterator for LengthPrefixedRanges<'_> {
    type Item = Result<Range<usize>, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.data.len() {
            self.done = true;
            return None;
        }
        let offset = self.pos;
        let rest = self.data.get(offset..).unwrap_or_default();
        let result = match rest.first_chunk::<4>() {
            None => Err(MediaError::TruncatedLengthPrefix {
                offset,
                available: rest.len(),
            }),
            Some(prefix) => {
                let declared = u32::from_be_bytes(*prefix) as usize;
                let available = rest.len() - 4;
                if declared == 0 {
                    Err(MediaError::EmptyNal { offset })
                } else if declared > available {
                    Err(MediaError::TruncatedNal {
                        offset,
                        declared,
                        available,
                    })
                } else {
                    self.pos = offset + 4 + declared;
                    Ok(offset + 4..self.pos)
                }
            }
        };
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

impl std::iter::FusedIterator for LengthPrefixedRanges<'_> {}

/// Appends `data` (Annex-B) to `out` with each start code replaced by a 4-byte big-endian length.
/// On error `out` is restored to its length on entry.
pub fn annexb_to_length_prefixed(data: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
    let entry_len = out.len();
    // The result is at most one byte longer per NAL than the input; one reservation usually serves.
    out.reserve(data.len() + 8);
    for range in nal_ranges(data) {
        let appended = range.and_then(|range| {
            let len = u32::try_from(range.len()).map_err(|_| MediaError::NalTooLarge {
                offset: range.start,
                len: range.len(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(data.get(range).unwrap_or_default());
            Ok(())
        });
        if let Err(e) = appended {
            out.truncate(entry_len);
            return Err(e);
        }
    }
    Ok(())
}

/// Appends `data` (4-byte length-prefixed) to `out` with each length replaced by the start code
/// `00 00 00 01`. On error `out` is restored to its length on entry.
pub fn length_prefixed_to_annexb(data: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
    const START_CODE_4: [u8; 4] = [0, 0, 0, 1];
    let entry_len = out.len();
    out.reserve(data.len());
    for range in length_prefixed_ranges(data) {
        match range {
            Ok(range) => {
                out.extend_from_slice(&START_CODE_4);
                out.extend_from_slice(data.get(range).unwrap_or_default());
            }
            Err(e) => {
                out.truncate(entry_len);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Appends `nal` to `out` with emulation-prevention bytes removed (`00 00 03` → `00 00`), giving
/// the RBSP (with the NAL header still in front). For parameter-set parsing only: frame data keeps
/// its emulation-prevention bytes.
pub fn rbsp_from_nal(nal: &[u8], out: &mut Vec<u8>) {
    static EMULATION_PREVENTION: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(&[0, 0, 3]));
    out.reserve(nal.len());
    let mut rest = nal;
    // After a removed 03 the zero count restarts, so searching on from the byte after it is exact.
    while let Some(at) = EMULATION_PREVENTION.find(rest) {
        out.extend_from_slice(rest.get(..at + 2).unwrap_or_default());
        rest = rest.get(at + 3..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}
