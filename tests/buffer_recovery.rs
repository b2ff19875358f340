//! Recovery from damaged files: flipped bytes, a file cut at every offset, garbage files,
//! damaged ACK logs. Open must never fail or panic on file contents, must keep every intact
//! fragment and must hand it back byte-exact.

mod buffer_support;

use buffer_support::*;
use kinesis_edge::buffer::{
    AckKind, Budgets, DamageAction, FragmentLog, FragmentReader, RecoveryReport,
};
use proptest::prelude::*;
use std::path::PathBuf;
use std::time::Duration;

const STREAM: &str = "cam";
const FRAMES: usize = 2;
const FRAME_LEN: usize = 16;
const RECORD_HEADER: usize = 56;

fn budgets() -> Budgets {
    Budgets {
        memory_bytes: 1 << 20,
        disk_bytes: 64 << 20,
        fsync: false,
    }
}

/// A log with `count` fragments written and closed cleanly. Returns the segment's bytes and the
/// byte range of each record: the stream-header record, then one per fragment.
fn template(count: u64) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _r, _) = FragmentLog::open(dir.path(), budgets(), STREAM).unwrap();
        write_stream(&mut w, 7, 0, count, FRAMES, FRAME_LEN);
        w.sync().unwrap();
    }
    let segment = dir.path().join(STREAM).join(format!("{:020}.seg", 0));
    let bytes = std::fs::read(&segment).unwrap();
    let header_record = 0..RECORD_HEADER + stream_header(7).len();
    let mut ranges = Vec::with_capacity(count as usize + 1);
    ranges.push(header_record);
    for seq in 0..count {
        let start = ranges.last().map_or(0, |r| r.end);
        ranges.push(start..start + RECORD_HEADER + expected_fragment(seq, FRAMES, FRAME_LEN).len());
    }
    assert_eq!(
        ranges.last().map(|r| r.end),
        Some(bytes.len()),
        "layout as documented"
    );
    (bytes, ranges)
}

/// Puts `files` (name → bytes) in a fresh stream directory and opens it.
fn open_with(
    files: &[(&str, &[u8])],
) -> (tempfile::TempDir, FragmentReader, RecoveryReport, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let stream_dir = dir.path().join(STREAM);
    std::fs::create_dir_all(&stream_dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(stream_dir.join(name), bytes).unwrap();
    }
    let (w, r, report) = match FragmentLog::open(dir.path(), budgets(), STREAM) {
        Ok(log) => log,
        Err(e) => panic!("open must not fail on file contents: {e}"),
    };
    drop(w);
    (dir, r, report, stream_dir)
}

fn recovered(reader: &mut FragmentReader) -> Vec<(u64, Vec<u8>)> {
    fragments_of(&collect(reader, usize::MAX, Duration::from_secs(2)))
}

fn assert_byte_exact(got: &[(u64, Vec<u8>)]) {
    for (id, bytes) in got {
        assert_eq!(
            bytes,
            &expected_fragment(*id, FRAMES, FRAME_LEN),
            "fragment {id}"
        );
    }
}

#[test]
fn cut_at_every_offset_keeps_exactly_the_complete_fragments() {
    let (bytes, ranges) = template(2);
    for cut in 0..=bytes.len() {
        let (_dir, mut reader, report, stream_dir) =
            open_with(&[(&format!("{:020}.seg", 0), &bytes[..cut])]);
        let header_ok = ranges[0].end <= cut;
        let complete: Vec<u64> = if header_ok {
            ranges[1..]
                .iter()
                .enumerate()
                .filter(|(_, r)| r.end <= cut)
                .map(|(i, _)| i as u64)
                .collect()
        } else {
            Vec::new()
        };
        let got = recovered(&mut reader);
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            complete,
            "cut at {cut}"
        );
        assert_byte_exact(&got);
        let at_boundary = ranges.iter().any(|r| r.end == cut) || cut == 0;
        if at_boundary {
            assert!(
                report.damage.is_empty(),
                "cut at {cut}: {:?}",
                report.damage
            );
        } else {
            assert_eq!(report.damage.len(), 1, "cut at {cut}");
            assert_eq!(report.damage[0].action, DamageAction::Truncated);
        }
        drop(reader);
        if cut % 8 != 3 {
            continue;
        }
        // The damaged tail was cut off: a second open finds nothing wrong.
        let (_, _, again) =
            FragmentLog::open(stream_dir.parent().unwrap(), budgets(), STREAM).unwrap();
        assert!(
            again.damage.is_empty(),
            "cut at {cut}, second open: {:?}",
            again.damage
        );
    }
}

#[test]
fn garbage_files_are_reported_and_the_log_still_works() {
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut fake_record = b"KEFR\x01\x02\x00\x00".to_vec();
    fake_record.extend_from_slice(&[0xff; 60]);
    let (dir, mut reader, report, stream_dir) = open_with(&[
        (&format!("{:020}.seg", 0), &garbage),
        (&format!("{:020}.seg", 5), &fake_record),
        (&format!("{:020}.ack", 0), &garbage[..777]),
        (&format!("{:020}.ack", 9), b"orphan"),
        ("notes.txt", b"not ours"),
    ]);
    assert_eq!(report.fragments_recovered, 0);
    assert!(report.damage.len() >= 3, "{:#?}", report.damage);
    assert!(
        report
            .damage
            .iter()
            .any(|d| d.file.ends_with(format!("{:020}.ack", 0)))
    );
    assert_eq!(
        std::fs::read(stream_dir.join("notes.txt")).unwrap(),
        b"not ours"
    );
    assert!(
        !stream_dir.join(format!("{:020}.ack", 9)).exists(),
        "orphan ACK log removed"
    );
    assert!(recovered(&mut reader).is_empty());
    drop(reader);
    // New fragments go on after the highest id any file name claims.
    let (mut w, mut r, _) = FragmentLog::open(dir.path(), budgets(), STREAM).unwrap();
    assert!(w.next_fragment_id().0 >= 5);
    let written = write_stream(&mut w, 1, 0, 2, FRAMES, FRAME_LEN);
    let got = fragments_of(&collect(&mut r, 2, Duration::from_secs(2)));
    assert_eq!(got.into_iter().map(|(_, b)| b).collect::<Vec<_>>(), written);
}

#[test]
fn a_damaged_ack_record_only_brings_its_own_fragment_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, mut r, _) = FragmentLog::open(dir.path(), budgets(), STREAM).unwrap();
        write_stream(&mut w, 1, 0, 4, FRAMES, FRAME_LEN);
        w.sync().unwrap();
        let events = collect(&mut r, 4, Duration::from_secs(2));
        let Event::Session(s) = &events[0] else {
            panic!()
        };
        for seq in 0..3 {
            r.ack(s.id(), timecode_ms(seq), AckKind::Persisted).unwrap();
        }
        w.sync().unwrap();
    }
    let ack_path = dir.path().join(STREAM).join(format!("{:020}.ack", 0));
    let mut acks = std::fs::read(&ack_path).unwrap();
    assert_eq!(acks.len(), 3 * 20);
    acks[25] ^= 0x40; // inside the second record (fragment 1)
    acks.extend_from_slice(&[1, 2, 3]); // and a torn tail
    std::fs::write(&ack_path, &acks).unwrap();
    // The writer is dropped at once, so the reader finishes instead of waiting for live data.
    let (_, mut r, report) = FragmentLog::open(dir.path(), budgets(), STREAM).unwrap();
    assert_eq!(report.damage.len(), 2, "{:#?}", report.damage);
    let got = recovered(&mut r);
    assert_eq!(
        got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_byte_exact(&got);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn flipped_bytes_lose_only_the_records_they_hit(
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), 1u8..=255), 1..6)
    ) {
        let (mut bytes, ranges) = template(6);
        let mut hit = vec![false; ranges.len()];
        for (index, xor) in &flips {
            let at = index.index(bytes.len());
            bytes[at] ^= xor;
            for (r, range) in ranges.iter().enumerate() {
                if range.contains(&at) {
                    hit[r] = true;
                }
            }
        }
        let (_dir, mut reader, report, _) = open_with(&[(&format!("{:020}.seg", 0), &bytes)]);
        let expected: Vec<u64> = if hit[0] {
            Vec::new()
        } else {
            (0..6u64).filter(|seq| !hit[*seq as usize + 1]).collect()
        };
        let got = recovered(&mut reader);
        prop_assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected);
        assert_byte_exact(&got);
        prop_assert!(!report.damage.is_empty());
    }

    #[test]
    fn random_files_never_break_open(
        content in proptest::collection::vec(any::<u8>(), 0..3000),
        with_magic in any::<bool>(),
    ) {
        let mut content = content;
        if with_magic && content.len() > 8 {
            content[0..5].copy_from_slice(b"KEFR\x01");
        }
        let (_dir, mut reader, report, _) = open_with(&[
            (&format!("{:020}.seg", 3), &content),
            (&format!("{:020}.ack", 3), &content),
        ]);
        prop_assert!(recovered(&mut reader).is_empty());
        prop_assert!(report.next_fragment_id >= 3);
    }
}
