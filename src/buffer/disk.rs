//! The disk thread: the only place segment files are written, read back and deleted.
//!
//! It sleeps on a condition variable until the index has work (a closed fragment to store, ACK
//! records to append, segments to delete, fragments to load for the reader), takes one batch
//! under the lock, does the I/O without the lock, and applies the outcome under the lock. The
//! muxer thread and the uploader task therefore never wait for a disk.

use super::Shared;
use super::index::{DiskOutcome, DiskWork, LoadJob, Location, WriteJob};
use super::record::{ACK_RECORD_LEN, HEADER_LEN};
use super::segment::{self, SegmentId};
use super::types::FragmentId;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    id: SegmentId,
    file: File,
    len: u64,
    /// Session tag of the last stream-header record in this segment.
    session_tag: Option<u32>,
}

/// Sizes the thread tracks per segment.
#[derive(Debug, Clone, Copy, Default)]
struct Sizes {
    segment: u64,
    ack_log: u64,
}

pub(crate) struct DiskWorker {
    shared: Arc<Shared>,
    dir: PathBuf,
    fsync: bool,
    segment_target: u64,
    active: Option<Active>,
    readers: HashMap<SegmentId, File>,
    ack_logs: HashMap<SegmentId, File>,
    sizes: BTreeMap<SegmentId, Sizes>,
    /// Segments left since the last outcome.
    retired: Vec<SegmentId>,
    /// Held for the thread's life: keeps a second process off this directory.
    _lock: File,
}

impl DiskWorker {
    pub fn new(
        shared: Arc<Shared>,
        dir: PathBuf,
        fsync: bool,
        segment_target: u64,
        lock: File,
        recovered_sizes: &BTreeMap<SegmentId, (u64, u64)>,
    ) -> Self {
        let sizes = recovered_sizes
            .iter()
            .map(|(id, (segment, ack_log))| {
                (
                    *id,
                    Sizes {
                        segment: *segment,
                        ack_log: *ack_log,
                    },
                )
            })
            .collect();
        DiskWorker {
            shared,
            dir,
            fsync,
            segment_target,
            active: None,
            readers: HashMap::new(),
            ack_logs: HashMap::new(),
            sizes,
            retired: Vec::new(),
            _lock: lock,
        }
    }

    /// Creates the first segment of this run right away (named after the next fragment id), so
    /// the id counter is on disk even before anything is written.
    pub fn start_segment(&mut self, first_id: u64) -> io::Result<SegmentId> {
        self.open_segment(first_id)?;
        Ok(first_id)
    }

    /// Runs until the log shuts down and no work is left.
    pub fn run(mut self) {
        loop {
            let work = {
                let mut state = self.shared.lock();
                loop {
                    if let Some(work) = state.take_disk_work() {
                        state.set_disk_busy(true);
                        break work;
                    }
                    if state.shutdown {
                        drop(state);
                        self.shared.disk_idle.notify_all();
                        self.finish();
                        return;
                    }
                    self.shared.disk_idle.notify_all();
                    state = self.shared.wait_disk_work(state);
                }
            };
            let outcome = self.execute(work);
            let wake_reader = {
                let mut state = self.shared.lock();
                state.set_disk_busy(false);
                state.apply_disk_outcome(outcome)
            };
            if wake_reader {
                self.shared.data_ready.notify_one();
            }
            self.shared.disk_idle.notify_all();
        }
    }

    fn finish(&mut self) {
        if let Some(active) = self.active.take()
            && self.fsync
            && let Err(e) = active.file.sync_data()
        {
            tracing::error!(segment = active.id, error = %e, "final segment sync failed");
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn execute(&mut self, work: DiskWork) -> DiskOutcome {
        let mut outcome = DiskOutcome::default();
        let mut dir_changed = false;
        for segment in work.deletions {
            match self.delete_segment(segment) {
                Ok(()) => {
                    outcome.deleted.push(segment);
                    dir_changed = true;
                }
                Err(e) => outcome
                    .errors
                    .push(log_error("delete segment", &self.dir, segment, &e)),
            }
        }
        if work.rotate
            && let Some(active) = self.active.take()
        {
            self.retire(active);
        }
        self.append_ack_records(&work.done_records, &mut outcome);
        if !work.writes.is_empty() {
            self.write_fragments(work.writes, &mut outcome);
        }
        for job in work.loads {
            outcome.loads.push((job.id, self.load(&job)));
        }
        if dir_changed
            && self.fsync
            && let Err(e) = sync_dir(&self.dir)
        {
            let message = format!("sync directory {}: {e}", self.dir.display());
            tracing::error!(error = %message, "disk error");
            outcome.errors.push(message);
        }
        outcome.active = self.active.as_ref().map(|a| a.id);
        outcome.retired = std::mem::take(&mut self.retired);
        outcome.segment_bytes = self
            .sizes
            .iter()
            .map(|(id, s)| (*id, s.segment + s.ack_log))
            .collect();
        outcome
    }

    fn delete_segment(&mut self, segment: SegmentId) -> io::Result<()> {
        if self.active.as_ref().is_some_and(|a| a.id == segment) {
            self.active = None;
        }
        self.readers.remove(&segment);
        self.ack_logs.remove(&segment);
        // Segment first: an ACK log without its segment is harmless, the reverse resends.
        remove_if_present(&self.path(&segment::segment_file_name(segment)))?;
        remove_if_present(&self.path(&segment::ack_file_name(segment)))?;
        self.sizes.remove(&segment);
        Ok(())
    }

    fn append_ack_records(
        &mut self,
        records: &[(SegmentId, super::record::AckRecord)],
        outcome: &mut DiskOutcome,
    ) {
        let mut by_segment: BTreeMap<SegmentId, Vec<u8>> = BTreeMap::new();
        for (segment, record) in records {
            by_segment
                .entry(*segment)
                .or_default()
                .extend_from_slice(&record.encode());
        }
        for (segment, bytes) in by_segment {
            match self.append_ack_bytes(segment, &bytes) {
                Ok(()) => {
                    self.sizes.entry(segment).or_default().ack_log += bytes.len() as u64;
                }
                Err(e) => outcome
                    .errors
                    .push(log_error("append ACK log", &self.dir, segment, &e)),
            }
        }
    }

    fn append_ack_bytes(&mut self, segment: SegmentId, bytes: &[u8]) -> io::Result<()> {
        debug_assert_eq!(bytes.len() % ACK_RECORD_LEN, 0);
        let file = match self.ack_logs.entry(segment) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(segment::ack_file_name(segment)))?,
            ),
        };
        file.write_all(bytes)?;
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    fn open_segment(&mut self, first_id: u64) -> io::Result<()> {
        let path = self.path(&segment::segment_file_name(first_id));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        self.sizes.entry(first_id).or_default().segment = len;
        self.active = Some(Active {
            id: first_id,
            file,
            len,
            session_tag: None,
        });
        Ok(())
    }

    /// Writes fragment records (each preceded by a stream-header record when its session differs
    /// from the last one in the segment), then syncs once.
    fn write_fragments(&mut self, jobs: Vec<WriteJob>, outcome: &mut DiskOutcome) {
        let mut written: Vec<(FragmentId, Location)> = Vec::with_capacity(jobs.len());
        let mut error: Option<String> = None;
        for job in &jobs {
            match self.write_one(job) {
                Ok(location) => written.push((job.id, location)),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if self.fsync
            && !written.is_empty()
            && let Some(active) = self.active.as_ref()
            && let Err(e) = active.file.sync_data()
        {
            // After a failed fsync the kernel may have dropped the dirty pages: what this batch
            // wrote to the segment does not count as durable. Cut it off, write it again later.
            let (id, tag) = (active.id, active.session_tag);
            error = Some(log_error("sync segment", &self.dir, id, &e));
            if let Some(first) = written.iter().position(|(_, loc)| loc.segment == id) {
                let cut = written.get(first).map_or(0, |(_, loc)| loc.offset);
                written.truncate(first);
                self.cut_back(id, cut, tag);
            }
        }
        let done = written.len();
        outcome.written.extend(written);
        if let Some(error) = error {
            outcome.failed = Some((jobs.iter().skip(done).map(|j| j.id).collect(), error));
        }
        if let Some(active) = self.active.as_ref() {
            self.sizes.entry(active.id).or_default().segment = active.len;
        }
    }

    fn write_one(&mut self, job: &WriteJob) -> Result<Location, String> {
        let body_len: u64 = job.chunks.iter().map(|c| c.len() as u64).sum();
        let header_record = HEADER_LEN as u64 + job.session.header.len() as u64;
        let record_len = HEADER_LEN as u64 + body_len;
        let needs_rotation = match self.active.as_ref() {
            None => true,
            Some(a) => a.len > 0 && a.len + header_record + record_len > self.segment_target,
        };
        if needs_rotation {
            if let Some(old) = self.active.take() {
                self.retire(old);
            }
            self.open_segment(job.id.0)
                .map_err(|e| log_error("create segment", &self.dir, job.id.0, &e))?;
        }
        let Some(active) = self.active.as_mut() else {
            return Err(format!("{}: no segment to write to", self.dir.display()));
        };
        let (start_len, start_tag) = (active.len, active.session_tag);
        match write_records(active, job, &self.shared) {
            Ok(location) => Ok(location),
            Err(e) => {
                let id = active.id;
                let error = describe("write segment", &self.dir, id, &e);
                self.cut_back(id, start_len, start_tag);
                Err(error)
            }
        }
    }

    /// Cuts the active segment back to `len` after a failed write, then leaves it unless it is
    /// empty: the retry goes to a fresh segment (which helps when the file hit a size limit). If
    /// the cut fails, recovery will find the damaged tail.
    fn cut_back(&mut self, id: SegmentId, len: u64, session_tag: Option<u32>) {
        let Some(mut active) = self.active.take().filter(|a| a.id == id) else {
            return;
        };
        match active.file.set_len(len) {
            Ok(()) => {
                active.len = len;
                active.session_tag = session_tag;
            }
            Err(e) => {
                log_error("cut back segment", &self.dir, id, &e);
            }
        }
        if active.len == 0 {
            self.active = Some(active);
        } else {
            self.retire(active);
        }
    }

    /// Stops appending to a segment. The index deletes it once nothing in it is live.
    fn retire(&mut self, old: Active) {
        if self.fsync
            && let Err(e) = old.file.sync_data()
        {
            log_error("sync segment", &self.dir, old.id, &e);
        }
        if let Ok(meta) = old.file.metadata() {
            self.sizes.entry(old.id).or_default().segment = meta.len();
        }
        self.retired.push(old.id);
    }

    fn load(&mut self, job: &LoadJob) -> Result<bytes::Bytes, String> {
        let segment = job.location.segment;
        let path = self.path(&segment::segment_file_name(segment));
        let file = match self.readers.entry(segment) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry
                .insert(File::open(&path).map_err(|e| format!("{}: open: {e}", path.display()))?),
        };
        match segment::read_fragment(file, job.location.offset, job.id.0, job.bytes) {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(fault)) => Err(format!(
                "{}: fragment {} at byte {}: {fault}",
                path.display(),
                job.id,
                job.location.offset
            )),
            Err(e) => Err(format!(
                "{}: read at byte {}: {e}",
                path.display(),
                job.location.offset
            )),
        }
    }
}

/// Appends the stream-header record if the session changed, then the fragment record.
fn write_records(active: &mut Active, job: &WriteJob, shared: &Shared) -> io::Result<Location> {
    if active.session_tag != Some(job.session.tag) {
        let header = segment::stream_header_header(
            job.id.0,
            job.session.producer_start_pts_ns,
            job.session.tag,
            &job.session.header,
        )?;
        segment::append_record(
            &mut active.file,
            &header,
            std::slice::from_ref(&job.session.header),
        )?;
        active.len += HEADER_LEN as u64 + job.session.header.len() as u64;
        active.session_tag = Some(job.session.tag);
    }
    let header = segment::fragment_header(
        job.id.0,
        job.timecode_ms,
        job.first_pts_ns,
        job.last_pts_ns,
        job.session.tag,
        &job.chunks,
    )?;
    if let Err(e) = shared.injected_write_fault() {
        // A test-injected failure after part of the record reached the file, like a disk that
        // fills up mid-write.
        active.file.write_all(&header)?;
        return Err(e);
    }
    let offset = active.len;
    segment::append_record(&mut active.file, &header, &job.chunks)?;
    active.len += HEADER_LEN as u64 + job.chunks.iter().map(|c| c.len() as u64).sum::<u64>();
    Ok(Location {
        segment: active.id,
        offset,
    })
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a directory's entries (created or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn describe(what: &str, dir: &Path, segment: SegmentId, e: &io::Error) -> String {
    format!(
        "{what} {}: {e}",
        dir.join(segment::segment_file_name(segment)).display()
    )
}

fn log_error(what: &str, dir: &Path, segment: SegmentId, e: &io::Error) -> String {
    let message = describe(what, dir, segment, e);
    tracing::error!(error = %message, "disk error");
    message
}
