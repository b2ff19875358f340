//! The muxer's steady-state per-frame path allocates nothing: counted by a global allocator
//! wrapper over many fragments of A/V frames, Annex-B and length-prefixed, with tags, and
//! with a stopped audio track whose fragments get generated silent frames.

use bytes::Bytes;
use kinesis_edge::media::{Codec, Frame, NalFormat};
use kinesis_edge::mkv::{
    FragmentEnd, FragmentMuxer, FragmentStart, FragmentTags, MuxSink, MuxerConfig, TrackSpec,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;

#[path = "../benches/support/synthetic_h264.rs"]
mod synthetic_h264;
use synthetic_h264::{PPS, SPS_1080P, slice_nal};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts (per thread) on the way.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn access_unit(format: NalFormat, key: bool, seed: u64) -> Bytes {
    let aud: &[u8] = &[0x09, 0x10];
    let slice = slice_nal(if key { 0x65 } else { 0x41 }, 4_000, seed);
    let nals: Vec<&[u8]> = if key {
        vec![aud, &SPS_1080P, &PPS, &slice]
    } else {
        vec![aud, &slice]
    };
    let mut out = Vec::new();
    for nal in nals {
        match format {
            NalFormat::AnnexB => out.extend_from_slice(&[0, 0, 0, 1]),
            NalFormat::LengthPrefixed => out.extend_from_slice(&(nal.len() as u32).to_be_bytes()),
        }
        out.extend_from_slice(nal);
    }
    let bytes = Bytes::from(out);
    // The first clone of a Vec-backed `Bytes` allocates its shared header (in `bytes`, not
    // in the muxer); do it here, as a capture source's buffers would already be shared.
    drop(bytes.clone());
    bytes
}

#[derive(Default)]
struct CountingSink {
    bytes: u64,
    fragments: u64,
    /// Kept as an uploader keeps payloads: by reference (a clone of the `Bytes`).
    last_payload: Option<Bytes>,
    fragments_with_both_tracks: u64,
}

impl MuxSink for CountingSink {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.bytes += header.len() as u64;
        Ok(())
    }
    fn fragment_start(&mut self, _: &FragmentStart) -> io::Result<()> {
        self.fragments += 1;
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes += bytes.len() as u64;
        Ok(())
    }
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        self.bytes += payload.len() as u64;
        self.last_payload = Some(payload.clone());
        Ok(())
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        if end.tracks_present == 0b11 {
            self.fragments_with_both_tracks += 1;
        }
        Ok(())
    }
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.bytes += trailer.len() as u64;
        Ok(())
    }
}

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000 * MS;

/// Video at 30 fps (a key frame every 60) and AAC at 46.875 fps, merged in PTS order with
/// video 100 ms late relative to audio, as two capture threads would deliver them. Audio ends
/// after `audio_stops_after` video frames.
fn frames(format: NalFormat, video_frames: u64, audio_stops_after: u64) -> Vec<Frame> {
    let key = access_unit(format, true, 7);
    let deltas: Vec<Bytes> = (0..4).map(|s| access_unit(format, false, s + 11)).collect();
    let aac = Bytes::from(vec![0x21u8; 341]);
    drop(aac.clone());
    let mut out = Vec::new();
    let mut audio_index = 0;
    for i in 0..video_frames {
        let pts = T0 + i * 100 * MS / 3;
        let data = if i.is_multiple_of(60) {
            key.clone()
        } else {
            deltas[(i % 4) as usize].clone()
        };
        out.push(Frame {
            track: 0,
            pts_ns: pts,
            dts_ns: pts,
            duration_ns: 0,
            key: i.is_multiple_of(60),
            data,
        });
        loop {
            let apts = T0 + audio_index * 1024 * 1_000_000_000 / 48_000;
            if apts > pts + 100 * MS || i >= audio_stops_after {
                break;
            }
            out.push(Frame {
                track: 1,
                pts_ns: apts,
                dts_ns: apts,
                duration_ns: 0,
                key: true,
                data: aac.clone(),
            });
            audio_index += 1;
        }
    }
    out
}

/// Allocations, frames and fragments (all of them with both tracks) while muxing the last
/// 10/11 of 3300 video frames.
fn steady_state_allocations(format: NalFormat, audio_stops_after: u64) -> (u64, u64, u64) {
    let tags = FragmentTags::new();
    tags.set_persistent("site", "warehouse-7").unwrap();
    tags.set_persistent("camera", "front-door").unwrap();
    let mut muxer = FragmentMuxer::new(
        MuxerConfig::new(vec![
            TrackSpec::video(Codec::H264, format),
            TrackSpec::aac(48_000, 2),
        ]),
        tags,
    )
    .unwrap();
    let mut sink = CountingSink::default();
    let mut all = frames(format, 3300, audio_stops_after);
    let measured = all.split_off(all.len() / 11);
    // Warm-up: stream header, first fragments, buffers reaching their working size.
    for frame in all {
        muxer.push(frame, &mut sink).unwrap();
    }
    let count = measured.len() as u64;
    let fragments_before = sink.fragments;
    let before = allocations();
    for frame in measured {
        muxer.push(frame, &mut sink).unwrap();
    }
    let allocated = allocations() - before;
    assert_eq!(
        sink.fragments_with_both_tracks,
        sink.fragments - 1,
        "the last is open"
    );
    (allocated, count, sink.fragments - fragments_before)
}

#[test]
fn annexb_per_frame_path_allocates_nothing() {
    let (allocated, frames, fragments) = steady_state_allocations(NalFormat::AnnexB, u64::MAX);
    assert!(frames > 7_000);
    assert_eq!(fragments, 50, "fragment opens are part of the steady state");
    assert_eq!(allocated, 0, "{allocated} allocations over {frames} frames");
}

#[test]
fn length_prefixed_per_frame_path_allocates_nothing() {
    let (allocated, frames, fragments) =
        steady_state_allocations(NalFormat::LengthPrefixed, u64::MAX);
    assert!(frames > 7_000);
    assert_eq!(fragments, 50);
    assert_eq!(allocated, 0, "{allocated} allocations over {frames} frames");
}

#[test]
fn silent_frames_for_a_stopped_audio_track_allocate_nothing() {
    // Warm-up covers the first ~5 s; audio stops at 20 s, and the 45 fragments after it
    // are each filled with a silent frame (the helper checks every fragment has both tracks).
    let (allocated, frames, fragments) = steady_state_allocations(NalFormat::AnnexB, 600);
    assert!(frames > 3_000);
    assert_eq!(fragments, 52);
    assert_eq!(allocated, 0, "{allocated} allocations over {frames} frames");
}

#[test]
fn the_counter_counts() {
    let before = allocations();
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(10));
    drop(std::hint::black_box(v));
    assert_eq!(allocations() - before, 1);
}
