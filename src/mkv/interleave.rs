//! Merging up to three tracks' frames, which arrive from separate capture threads in any
//! relative order, into one stream order for the muxer. Sans-I/O: no clock, media time only.
//!
//! Invariants:
//! - Within a track, frames leave in the order they came (video in decode order). A frame whose
//!   order timestamp (DTS for video, PTS for audio) is below its track's previous one is refused.
//! - Across tracks, the merge key is PTS for audio and DTS for video, except that every video
//!   key frame uses its PTS: any key frame may open a fragment, and audio with a PTS below it
//!   must be released before it (so it lands in the fragment that ends there). Ties go to the
//!   lower track index (the key frame before audio at the same instant).
//! - The smallest head is released when no other track can still deliver a smaller key: every
//!   other track has a queued frame, or its last order timestamp already passes the head. A head
//!   more than `max_wait` of media time behind the newest frame seen on any track is released
//!   anyway, so a stopped track delays the others by at most `max_wait`, never stalls them.
//! - Queues are fixed-capacity ([`QUEUE_CAPACITY`] frames a track). While a queue is full, heads
//!   are released in merge order until it is not; callers drain [`Interleaver::pop_ready`]
//!   after every push, so a push always finds room.

use crate::media::Frame;
use heapless::Deque;
use std::time::Duration;
use thiserror::Error;

/// Most tracks a KVS stream (and this interleaver) carries.
pub const MAX_TRACKS: usize = 3;
/// Frames queued per track: about 1 s of 60 fps video or of 48 kHz AAC.
pub const QUEUE_CAPACITY: usize = 64;

/// Why a frame was refused (and so dropped).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InterleaveError {
    #[error("frame for track {track}, but the stream has {tracks} tracks")]
    UnknownTrack { track: usize, tracks: usize },
    #[error(
        "track {track}: frame {which} {ts_ns} ns is before the previous frame's {prev_ns} ns \
         (timestamps must not decrease within a track); frame dropped"
    )]
    Decreasing {
        track: usize,
        which: &'static str,
        ts_ns: u64,
        prev_ns: u64,
    },
    #[error("track {track}: queue of {QUEUE_CAPACITY} frames is full (pop_ready was not drained)")]
    QueueFull { track: usize },
}

/// Per-track queues and the release rule.
#[derive(Debug)]
pub struct Interleaver {
    queues: [Deque<Frame, QUEUE_CAPACITY>; MAX_TRACKS],
    is_video: [bool; MAX_TRACKS],
    tracks: usize,
    max_wait_ns: u64,
    /// Largest merge key pushed so far, any track.
    newest_key: Option<u64>,
    /// Per track, the order timestamp (DTS video, PTS audio) of the last frame accepted: a
    /// lower bound on the merge key of anything the track sends next.
    last_order_ts: [Option<u64>; MAX_TRACKS],
}

impl Interleaver {
    /// `video[i]` says whether track `i` is video; at most [`MAX_TRACKS`] tracks are used.
    pub fn new(video: &[bool], max_wait: Duration) -> Self {
        let tracks = video.len().min(MAX_TRACKS);
        let mut is_video = [false; MAX_TRACKS];
        for (slot, v) in is_video.iter_mut().zip(video) {
            *slot = *v;
        }
        Self {
            queues: [Deque::new(), Deque::new(), Deque::new()],
            is_video,
            tracks,
            max_wait_ns: u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX),
            newest_key: None,
            last_order_ts: [None; MAX_TRACKS],
        }
    }

    /// The key frames are merged on: see the module invariants.
    pub fn merge_key(&self, frame: &Frame) -> u64 {
        if self.is_video.get(frame.track).copied().unwrap_or(false) && !frame.key {
            frame.dts_ns
        } else {
            frame.pts_ns
        }
    }

    fn order_ts(&self, frame: &Frame) -> (u64, &'static str) {
        if self.is_video.get(frame.track).copied().unwrap_or(false) {
            (frame.dts_ns, "DTS")
        } else {
            (frame.pts_ns, "PTS")
        }
    }

    /// Queues a frame. Refuses (and so drops) a frame for an unknown track or one whose order
    /// timestamp went backwards.
    pub fn push(&mut self, frame: Frame) -> Result<(), InterleaveError> {
        let track = frame.track;
        if track >= self.tracks {
            return Err(InterleaveError::UnknownTrack {
                track,
                tracks: self.tracks,
            });
        }
        let (ts_ns, which) = self.order_ts(&frame);
        let prev = self.last_order_ts.get(track).copied().flatten();
        if let Some(prev_ns) = prev
            && ts_ns < prev_ns
        {
            return Err(InterleaveError::Decreasing {
                track,
                which,
                ts_ns,
                prev_ns,
            });
        }
        let key = self.merge_key(&frame);
        let queue = self
            .queues
            .get_mut(track)
            .ok_or(InterleaveError::UnknownTrack {
                track,
                tracks: self.tracks,
            })?;
        queue
            .push_back(frame)
            .map_err(|_| InterleaveError::QueueFull { track })?;
        if let Some(slot) = self.last_order_ts.get_mut(track) {
            *slot = Some(ts_ns);
        }
        self.newest_key = Some(self.newest_key.map_or(key, |n| n.max(key)));
        Ok(())
    }

    /// The track whose head has the smallest merge key (ties: lowest track index).
    fn smallest_head(&self) -> Option<(usize, u64)> {
        let mut best: Option<(usize, u64)> = None;
        for (track, queue) in self.queues.iter().enumerate().take(self.tracks) {
            if let Some(head) = queue.front() {
                let key = self.merge_key(head);
                if best.is_none_or(|(_, k)| key < k) {
                    best = Some((track, key));
                }
            }
        }
        best
    }

    fn releasable(&self, track: usize, key: u64) -> bool {
        if self.queues.iter().any(|q| q.is_full()) {
            return true;
        }
        if self
            .newest_key
            .is_some_and(|newest| newest.saturating_sub(key) > self.max_wait_ns)
        {
            return true;
        }
        (0..self.tracks).filter(|&t| t != track).all(|t| {
            let queued = self.queues.get(t).is_some_and(|q| !q.is_empty());
            let passed = match self.last_order_ts.get(t).copied().flatten() {
                Some(bound) => bound > key || (bound == key && t > track),
                None => false,
            };
            queued || passed
        })
    }

    /// The next frame in stream order, if the release rule allows it now.
    pub fn pop_ready(&mut self) -> Option<Frame> {
        let (track, key) = self.smallest_head()?;
        if !self.releasable(track, key) {
            return None;
        }
        self.queues.get_mut(track)?.pop_front()
    }

    /// The next frame in stream order regardless of the release rule (end of stream).
    pub fn pop_any(&mut self) -> Option<Frame> {
        let (track, _) = self.smallest_head()?;
        self.queues.get_mut(track)?.pop_front()
    }

    /// Frames queued, all tracks.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(|q| q.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const MS: u64 = 1_000_000;

    fn video(pts_ms: u64, dts_ms: u64, key: bool) -> Frame {
        Frame {
            track: 0,
            pts_ns: pts_ms * MS,
            dts_ns: dts_ms * MS,
            duration_ns: 0,
            key,
            data: Bytes::new(),
        }
    }

    fn audio(pts_ms: u64) -> Frame {
        Frame {
            track: 1,
            pts_ns: pts_ms * MS,
            dts_ns: pts_ms * MS,
            duration_ns: 0,
            key: true,
            data: Bytes::new(),
        }
    }

    fn av() -> Interleaver {
        Interleaver::new(&[true, false], Duration::from_millis(500))
    }

    /// Pushes and drains after each push, as the muxer does; returns (track, pts ms) in order.
    fn run(il: &mut Interleaver, frames: Vec<Frame>) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for f in frames {
            il.push(f).unwrap();
            while let Some(f) = il.pop_ready() {
                out.push((f.track, f.pts_ns / MS));
            }
        }
        out
    }

    fn flush(il: &mut Interleaver, out: &mut Vec<(usize, u64)>) {
        while let Some(f) = il.pop_any() {
            out.push((f.track, f.pts_ns / MS));
        }
    }

    #[test]
    fn single_track_passes_straight_through() {
        let mut il = Interleaver::new(&[true], Duration::from_millis(500));
        let out = run(
            &mut il,
            vec![
                video(0, 0, true),
                video(66, 33, false),
                video(33, 66, false),
            ],
        );
        assert_eq!(out, [(0, 0), (0, 66), (0, 33)]);
        assert_eq!(il.queued(), 0);
    }

    #[test]
    fn audio_below_key_frame_pts_goes_first_even_when_it_arrives_later() {
        let mut il = av();
        // Video arrives well ahead of audio: B-frames, key frame at PTS 1000 (DTS 933).
        let mut frames = vec![
            video(900, 866, false),
            video(1000, 933, true),
            video(1066, 966, false),
        ];
        frames.extend((0..8).map(|i| audio(880 + i * 21)));
        frames.push(video(1033, 1000, false));
        let mut out = run(&mut il, frames);
        flush(&mut il, &mut out);
        let key_pos = out.iter().position(|&f| f == (0, 1000)).unwrap();
        for (i, &(track, pts)) in out.iter().enumerate() {
            if track == 1 {
                assert_eq!(
                    pts < 1000,
                    i < key_pos,
                    "audio {pts} on the right side: {out:?}"
                );
            }
        }
        // Video keeps decode order.
        let v: Vec<u64> = out.iter().filter(|f| f.0 == 0).map(|f| f.1).collect();
        assert_eq!(v, [900, 1000, 1066, 1033]);
    }

    #[test]
    fn equal_keys_release_the_key_frame_first() {
        let mut il = av();
        let mut out = run(&mut il, vec![audio(1000), video(1000, 966, true)]);
        flush(&mut il, &mut out);
        assert_eq!(out, [(0, 1000), (1, 1000)]);
    }

    #[test]
    fn released_once_the_other_track_has_passed() {
        let mut il = av();
        // Audio 10 waits for video: nothing known about video yet.
        il.push(audio(10)).unwrap();
        assert!(il.pop_ready().is_none());
        // Video at DTS 40 passes it: audio 10 is released, video waits for audio past 40.
        il.push(video(40, 40, true)).unwrap();
        assert_eq!(il.pop_ready().map(|f| f.pts_ns / MS), Some(10));
        assert!(il.pop_ready().is_none());
        il.push(audio(31)).unwrap();
        assert_eq!(il.pop_ready().map(|f| f.pts_ns / MS), Some(31));
        assert!(il.pop_ready().is_none(), "audio has not passed 40 yet");
        il.push(audio(52)).unwrap();
        assert_eq!(il.pop_ready().map(|f| f.pts_ns / MS), Some(40));
        // Video's last DTS (40) is below 52: audio 52 waits.
        assert!(il.pop_ready().is_none());
    }

    #[test]
    fn stopped_audio_delays_video_by_at_most_max_wait() {
        let mut il = av();
        let mut frames = vec![audio(0)];
        frames.extend((0..60).map(|i| video(i * 33, i * 33, i.is_multiple_of(30))));
        let out = run(&mut il, frames);
        // Everything more than 500 ms behind the newest video frame (1947 ms) is out.
        let released_video: Vec<u64> = out.iter().filter(|f| f.0 == 0).map(|f| f.1).collect();
        assert_eq!(released_video.first(), Some(&0));
        let last = *released_video.last().unwrap();
        assert!((1947 - 500 - 33..1947 - 500).contains(&last), "last {last}");
        assert!(il.queued() <= 16);
    }

    #[test]
    fn stopped_video_does_not_stall_audio() {
        let mut il = av();
        let mut frames = vec![video(0, 0, true)];
        frames.extend((0..100).map(|i| audio(i * 21)));
        let out = run(&mut il, frames);
        let released_audio = out.iter().filter(|f| f.0 == 1).count();
        // Video's last DTS is 0: audio after it waits until it is 500 ms stale.
        assert!(released_audio >= 100 - 25, "released {released_audio}");
        assert!(released_audio < 100);
    }

    #[test]
    fn full_queue_releases_oldest_in_merge_order() {
        let mut il = Interleaver::new(&[true, false], Duration::from_secs(3600));
        let frames: Vec<Frame> = (0..QUEUE_CAPACITY as u64 + 5)
            .map(|i| audio(i * 21))
            .collect();
        let out = run(&mut il, frames);
        assert_eq!(
            out.len(),
            6,
            "the queue never holds more than capacity − 1 after a drain"
        );
        assert_eq!(out.first(), Some(&(1, 0)));
        assert_eq!(il.queued(), QUEUE_CAPACITY - 1);
    }

    #[test]
    fn decreasing_timestamps_are_refused_per_track() {
        let mut il = av();
        il.push(video(100, 66, true)).unwrap();
        // PTS below the previous PTS is fine for video (B-frame); DTS going back is not.
        il.push(video(80, 70, false)).unwrap();
        assert_eq!(
            il.push(video(200, 69, false)),
            Err(InterleaveError::Decreasing {
                track: 0,
                which: "DTS",
                ts_ns: 69 * MS,
                prev_ns: 70 * MS
            })
        );
        il.push(audio(50)).unwrap();
        assert!(matches!(
            il.push(audio(49)),
            Err(InterleaveError::Decreasing {
                track: 1,
                which: "PTS",
                ..
            })
        ));
        // Equal timestamps are accepted.
        il.push(audio(50)).unwrap();
        assert_eq!(
            il.push(Frame {
                track: 2,
                ..audio(1)
            }),
            Err(InterleaveError::UnknownTrack {
                track: 2,
                tracks: 2
            })
        );
        assert_eq!(il.queued(), 4);
    }

    #[test]
    fn three_tracks_wait_for_each_other() {
        let mut il = Interleaver::new(&[true, false, false], Duration::from_millis(500));
        let a2 = |ms: u64| Frame {
            track: 2,
            ..audio(ms)
        };
        let mut out = run(
            &mut il,
            vec![
                video(0, 0, true),
                audio(5),
                audio(26),
                a2(3),
                video(33, 33, false),
                a2(24),
            ],
        );
        flush(&mut il, &mut out);
        assert_eq!(out, [(0, 0), (2, 3), (1, 5), (2, 24), (1, 26), (0, 33)]);
    }
}
