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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nals(data: &[u8]) -> Result<Vec<Vec<u8>>, MediaError> {
        nal_ranges(data)
            .map(|r| r.map(|r| data[r].to_vec()))
            .collect()
    }

    fn first_error(data: &[u8]) -> MediaError {
        nal_ranges(data).find_map(Result::err).expect("an error")
    }

    #[test]
    fn splits_on_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88, 0x84,
        ];
        assert_eq!(
            nals(&data).unwrap(),
            vec![vec![0x67, 0x42], vec![0x68, 0xce], vec![0x65, 0x88, 0x84]]
        );
        let ranges: Vec<_> = nal_ranges(&data).map(Result::unwrap).collect();
        assert_eq!(ranges, vec![4..6, 9..11, 15..18]);
    }

    #[test]
    fn keeps_emulation_prevention_bytes_and_trims_trailing_zeros() {
        let data = [
            0, 0, 1, 0x06, 0, 0, 3, 1, 0x80, 0, 0, 0, 1, 0x65, 0, 0, 3, 0, 0x11, 0, 0, 0, 0, 0,
        ];
        assert_eq!(
            nals(&data).unwrap(),
            vec![vec![0x06, 0, 0, 3, 1, 0x80], vec![0x65, 0, 0, 3, 0, 0x11]]
        );
    }

    #[test]
    fn empty_input_has_no_nal_units() {
        assert_eq!(nal_ranges(&[]).count(), 0);
        let mut out = vec![9];
        annexb_to_length_prefixed(&[], &mut out).unwrap();
        length_prefixed_to_annexb(&[], &mut out).unwrap();
        assert_eq!(out, [9]);
    }

    #[test]
    fn rejects_data_without_leading_start_code() {
        for data in [
            &[0x67, 0, 0, 1, 0x68][..],
            &[0, 1, 0x67],
            &[0, 0, 2, 0x67],
            &[0, 0, 0],
            &[0],
        ] {
            assert_eq!(
                first_error(data),
                MediaError::MissingStartCode { offset: 0 },
                "{data:02x?}"
            );
        }
    }

    #[test]
    fn rejects_more_than_three_zeros_before_01() {
        assert_eq!(
            first_error(&[0, 0, 0, 0, 1, 0x67]),
            MediaError::TooManyZeros {
                offset: 0,
                zeros: 4
            }
        );
        let inside = [0, 0, 1, 0x67, 0x42, 0, 0, 0, 0, 1, 0x68];
        assert_eq!(
            first_error(&inside),
            MediaError::TooManyZeros {
                offset: 5,
                zeros: 4
            }
        );
        // The bad start code would end the NAL before it, so the error takes that NAL's place and
        // the iterator stops.
        let items: Vec<_> = nal_ranges(&inside).collect();
        assert_eq!(
            items,
            vec![Err(MediaError::TooManyZeros {
                offset: 5,
                zeros: 4
            })]
        );
    }

    #[test]
    fn rejects_empty_nal_units() {
        assert_eq!(
            first_error(&[0, 0, 1, 0, 0, 1, 0x67]),
            MediaError::EmptyNal { offset: 3 }
        );
        assert_eq!(
            first_error(&[0, 0, 1, 0, 0, 0, 1, 0x67]),
            MediaError::EmptyNal { offset: 3 }
        );
        assert_eq!(
            first_error(&[0, 0, 1, 0x67, 0, 0, 1]),
            MediaError::EmptyNal { offset: 7 }
        );
        assert_eq!(
            first_error(&[0, 0, 0, 1]),
            MediaError::EmptyNal { offset: 4 }
        );
        assert_eq!(
            first_error(&[0, 0, 1, 0, 0]),
            MediaError::EmptyNal { offset: 3 }
        );
    }

    #[test]
    fn nal_may_begin_with_zero_byte() {
        // H.265 TRAIL_N header is 00 01: not a start code once the real one is consumed.
        assert_eq!(
            nals(&[0, 0, 0, 1, 0, 1, 0xaf, 0, 0, 1, 0x02, 0x01]).unwrap(),
            vec![vec![0, 1, 0xaf], vec![0x02, 0x01]]
        );
    }

    #[test]
    fn length_prefixed_ranges_and_truncation() {
        let data = [0, 0, 0, 2, 0x67, 0x42, 0, 0, 0, 1, 0x68];
        let ranges: Vec<_> = length_prefixed_ranges(&data).map(Result::unwrap).collect();
        assert_eq!(ranges, vec![4..6, 10..11]);
        let cut = &data[..data.len() - 1];
        assert_eq!(
            length_prefixed_ranges(cut).find_map(Result::err),
            Some(MediaError::TruncatedNal {
                offset: 6,
                declared: 1,
                available: 0
            })
        );
        assert_eq!(
            length_prefixed_ranges(&data[..8]).find_map(Result::err),
            Some(MediaError::TruncatedLengthPrefix {
                offset: 6,
                available: 2
            })
        );
        assert_eq!(
            length_prefixed_ranges(&[0, 0, 0, 0, 0x67]).next(),
            Some(Err(MediaError::EmptyNal { offset: 0 }))
        );
        assert_eq!(
            length_prefixed_ranges(&[0xff, 0xff, 0xff, 0xff, 0x67]).next(),
            Some(Err(MediaError::TruncatedNal {
                offset: 0,
                declared: u32::MAX as usize,
                available: 1
            }))
        );
    }

    #[test]
    fn conversions_append_and_restore_on_error() {
        let annexb = [0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce, 0];
        let mut out = vec![0xaa];
        annexb_to_length_prefixed(&annexb, &mut out).unwrap();
        assert_eq!(out, [0xaa, 0, 0, 0, 2, 0x67, 0x42, 0, 0, 0, 2, 0x68, 0xce]);
        let mut back = vec![0xbb];
        length_prefixed_to_annexb(&out[1..], &mut back).unwrap();
        assert_eq!(back, [0xbb, 0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce]);

        let mut out = vec![1, 2, 3];
        let bad = [0, 0, 1, 0x67, 0, 0, 0, 0, 1, 0x68];
        assert!(annexb_to_length_prefixed(&bad, &mut out).is_err());
        assert_eq!(out, [1, 2, 3]);
        assert!(length_prefixed_to_annexb(&[0, 0, 0, 1, 0x67, 0, 0, 0, 9], &mut out).is_err());
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn rbsp_removes_emulation_prevention_only() {
        let cases: [(&[u8], &[u8]); 5] = [
            (&[0x67, 0, 0, 3, 1, 0x20], &[0x67, 0, 0, 1, 0x20]),
            (&[0x67, 0, 0, 3, 0, 0, 3, 0], &[0x67, 0, 0, 0, 0, 0]),
            (&[0x67, 0, 0, 3, 0, 3], &[0x67, 0, 0, 0, 3]),
            (&[0x67, 0, 3, 0, 0x3], &[0x67, 0, 3, 0, 3]),
            (&[0, 0, 3], &[0, 0]),
        ];
        for (nal, rbsp) in cases {
            let mut out = vec![0xee];
            rbsp_from_nal(nal, &mut out);
            assert_eq!(&out[1..], rbsp, "{nal:02x?}");
            assert_eq!(out[0], 0xee);
        }
    }

    /// Applies emulation prevention as an encoder does: 03 after every 00 00 that is followed by
    /// a byte ≤ 03, and a final 03 if the NAL would end in 00.
    fn emulation_prevent(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + body.len() / 2 + 1);
        let mut zeros = 0;
        for &b in body {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        if out.last() == Some(&0) {
            out.push(3);
        }
        out
    }

    fn nal_body() -> impl Strategy<Value = Vec<u8>> {
        // Zero-heavy contents so that 00 00 0x sequences are common.
        prop::collection::vec(
            prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(3u8), 5 => any::<u8>()],
            1..64,
        )
        .prop_map(|body| emulation_prevent(&body))
    }

    proptest! {
        #[test]
        fn annexb_length_prefixed_round_trip(
            bodies in prop::collection::vec(nal_body(), 1..8),
            four_byte in prop::collection::vec(any::<bool>(), 8),
            trailing_zeros in 0usize..6,
        ) {
            let mut annexb = Vec::new();
            for (i, body) in bodies.iter().enumerate() {
                if four_byte[i] {
                    annexb.push(0);
                }
                annexb.extend_from_slice(&[0, 0, 1]);
                annexb.extend_from_slice(body);
            }
            annexb.resize(annexb.len() + trailing_zeros, 0);

            prop_assert_eq!(nals(&annexb).unwrap(), bodies.clone());
            let mut length_prefixed = Vec::new();
            annexb_to_length_prefixed(&annexb, &mut length_prefixed).unwrap();
            let from_lp: Vec<Vec<u8>> =
                length_prefixed_ranges(&length_prefixed).map(|r| length_prefixed[r.unwrap()].to_vec()).collect();
            prop_assert_eq!(&from_lp, &bodies);
            let mut canonical = Vec::new();
            length_prefixed_to_annexb(&length_prefixed, &mut canonical).unwrap();
            prop_assert_eq!(nals(&canonical).unwrap(), bodies.clone());
            let mut again = Vec::new();
            annexb_to_length_prefixed(&canonical, &mut again).unwrap();
            prop_assert_eq!(again, length_prefixed);
            // RBSP extraction undoes exactly what emulation prevention added.
            for body in &bodies {
                let mut rbsp = Vec::new();
                rbsp_from_nal(body, &mut rbsp);
                prop_assert!(rbsp.len() <= body.len());
                prop_assert_eq!(emulation_prevent(&rbsp), body.clone());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..200)) {
            let mut previous_end = 0;
            let items: Vec<_> = nal_ranges(&data).collect();
            // At most one error, and only as the last item (the iterator is fused after it).
            let errors = items.iter().filter(|item| item.is_err()).count();
            prop_assert!(errors == 0 || (errors == 1 && items.last().is_some_and(Result::is_err)));
            for range in items.into_iter().flatten() {
                prop_assert!(range.start >= previous_end + 3 && range.end <= data.len() && !range.is_empty());
                prop_assert!(data[range.end - 1] != 0);
                previous_end = range.end;
            }
            for range in length_prefixed_ranges(&data).flatten() {
                prop_assert!(range.end <= data.len() && !range.is_empty());
            }
            let mut out = Vec::new();
            let _ = annexb_to_length_prefixed(&data, &mut out);
            let _ = length_prefixed_to_annexb(&data, &mut out);
            rbsp_from_nal(&data, &mut out);
        }
    }
}
