//! Synthetic 1080p H.264 for benchmarks and the allocation test: a real 1080p High-profile SPS
//! and PPS, and slice NAL units of chosen sizes whose bytes look entropy-coded. Shared by
//! `benches/muxer.rs`, `benches/producer.rs` and `tests/mkv_alloc.rs` through `#[path]`.

/// SPS of an x264 1920x1080 High-profile stream (NAL header included).
pub const SPS_1080P: [u8; 30] = [
    0x67, 0x64, 0x00, 0x28, 0xAC, 0xD9, 0x40, 0x78, 0x02, 0x27, 0xE5, 0xC0, 0x5A, 0x80, 0x80, 0x80,
    0xA0, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x07, 0x91, 0xE3, 0x06, 0x32, 0xC0,
];
/// The matching PPS.
pub const PPS: [u8; 5] = [0x68, 0xEB, 0xEC, 0xB2, 0x2C];

/// A NAL unit of `len` bytes starting with `header`, filled with xorshift bytes (zeros
/// included) but never a `00 00` pair, so no start code is emulated.
pub fn slice_nal(header: u8, len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    out.push(header);
    let mut prev = header;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut byte = state as u8;
        if prev == 0 && byte == 0 {
            byte = 0x5A;
        }
        out.push(byte);
        prev = byte;
    }
    out
}
