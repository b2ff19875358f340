//! The async driver: spool → [`Producer`] → [`KdsClient`] → acknowledgements back into the
//! spool, plus the API the daemon and the `put-record` command use.
//!
//! Invariants: the driver holds no protocol logic (the [`Producer`] decides); a record is
//! acknowledged in the spool only after the producer reported it delivered or dead-lettered
//! (the dead-letter line is written first); on shutdown, requests in flight get a bounded time
//! to finish and everything unacknowledged stays in the spool for the next start.

use super::TelemetryError;
use super::errors::RequestFailure;
use super::kds::KdsClient;
use super::producer::{Producer, ProducerConfig, ProducerStats, RecordOutcome, RequestId};
use super::rate_limit::Jitter;
use super::record::UserRecord;
use super::shard_map::{ShardDescription, ShardMap};
use super::spool::{DeadLetterFile, RecordId, Spool, SpoolStats};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `io` (file I/O, maybe an fsync) without holding up the tasks of the runtime's worker:
/// on a multi-thread runtime the worker hands its tasks to another thread meanwhile (the
/// daemon runs every uploader on one worker, and an SD card can take a second to sync). On a
/// current-thread runtime (`put-record`, tests) it just runs.
fn off_the_worker<T>(io: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(io),
        _ => io(),
    }
}

/// The spool shared between writers (collector, local API) and the producer task.
#[derive(Clone)]
pub struct SharedSpool {
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
}

impl SharedSpool {
    /// Shares `spool`.
    pub fn new(spool: Spool) -> Self {
        SharedSpool {
            spool: Arc::new(Mutex::new(spool)),
            notify: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        // A panic while holding the lock cannot leave the spool's files inconsistent (each
        // write is a whole frame), so the data is still usable.
        self.spool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts a record: once this returns, the record is on disk (in the page cache, or
    /// synced when the spool syncs each append) and will be delivered or counted as dropped.
    pub fn enqueue(&self, record: &UserRecord) -> Result<RecordId, TelemetryError> {
        let id = off_the_worker(|| self.lock().append(record, unix_ms_now()))?;
        self.notify.notify_one();
        Ok(id)
    }

    /// Spool counters.
    pub fn stats(&self) -> SpoolStats {
        // The lock may be held across a sync.
        off_the_worker(|| self.lock().stats())
    }

    /// Syncs appended records and acks to disk (nothing to do when nothing was written).
    pub fn sync(&self) -> Result<(), TelemetryError> {
        if !self.lock().has_unsynced_writes() {
            return Ok(());
        }
        Ok(off_the_worker(|| self.lock().sync())?)
    }
}

enum Done {
    Put(RequestId, Result<Vec<RecordOutcome>, RequestFailure>),
    Shards(Result<Vec<ShardDescription>, RequestFailure>),
}

/// Settings of the driver around the producer.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// How often the spool is synced to disk.
    pub sync_interval: Duration,
    /// Time given to requests in flight at shutdown.
    pub drain_timeout: Duration,
}

impl Default for DriverSettings {
    fn default() -> Self {
        DriverSettings {
            sync_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// The producer task for one stream.
pub struct ProducerTask {
    client: KdsClient,
    spool: SharedSpool,
    dead_letters: DeadLetterFile,
    core: Producer,
    settings: DriverSettings,
    status: Arc<Mutex<ProducerStats>>,
}

impl ProducerTask {
    /// Checks the limits and builds the task.
    pub fn new(
        client: KdsClient,
        spool: SharedSpool,
        dead_letters: DeadLetterFile,
        config: ProducerConfig,
        settings: DriverSettings,
    ) -> Result<Self, TelemetryError> {
        config.limits.validate()?;
        Ok(ProducerTask {
            client,
            spool,
            dead_letters,
            core: Producer::new(config, Jitter::from_os()),
            settings,
            status: Arc::new(Mutex::new(ProducerStats::default())),
        })
    }

    /// Live counters, updated after every response.
    pub fn status(&self) -> Arc<Mutex<ProducerStats>> {
        Arc::clone(&self.status)
    }

    fn publish(&self) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.clone_from(self.core.stats());
    }

    fn settle(&mut self) -> Result<(), TelemetryError> {
        let dead = self.core.take_dead_letters();
        let now_ms = unix_ms_now();
        let mut ids = Vec::with_capacity(dead.len());
        if !dead.is_empty() {
            let dead_letters = &mut self.dead_letters;
            off_the_worker(|| -> Result<(), TelemetryError> {
                for letter in dead {
                    dead_letters.append(letter.id, &letter.record, &letter.reason, now_ms)?;
                    ids.push(letter.id);
                }
                Ok(())
            })?;
        }
        ids.extend(self.core.take_acked());
        if !ids.is_empty() {
            off_the_worker(|| self.spool.lock().ack(&ids))?;
        }
        if self.core.take_credentials_refresh() {
            self.client.invalidate_credentials();
        }
        self.publish();
        Ok(())
    }

    fn fill(&mut self, now: Instant) -> Result<(), TelemetryError> {
        while self.core.has_room() {
            let batch = off_the_worker(|| self.spool.lock().read_next(512, 1 << 20))?;
            if batch.is_empty() {
                break;
            }
            for spooled in batch {
                self.core.add(spooled.id, spooled.record, now);
            }
        }
        Ok(())
    }

    fn handle(&mut self, done: Done) {
        let now = Instant::now();
        match done {
            Done::Put(id, Ok(outcomes)) => self.core.on_success(id, outcomes, now),
            Done::Put(id, Err(failure)) => self.core.on_failure(id, &failure, now),
            Done::Shards(Ok(shards)) => match ShardMap::from_shards(&shards) {
                Ok(map) => self.core.set_shard_map(map, now),
                Err(error) => {
                    tracing::warn!(%error, "ListShards answer unusable");
                    self.core.shard_map_refresh_failed(now);
                }
            },
            Done::Shards(Err(error)) => {
                tracing::warn!(%error, "ListShards failed");
                if matches!(error.class(), super::errors::ErrorClass::Credentials) {
                    self.client.invalidate_credentials();
                }
                self.core.shard_map_refresh_failed(now);
            }
        }
    }

    /// Runs until `shutdown` resolves, then drains for at most `drain_timeout`.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ProducerStats, TelemetryError> {
        match self.client.describe_stream_summary().await {
            Ok(summary) => {
                tracing::info!(status = %summary.status, shards = ?summary.open_shard_count, "telemetry stream");
                self.core
                    .apply_stream_settings(summary.max_record_bytes, summary.auto_distribution);
            }
            Err(error) => {
                tracing::warn!(%error, "DescribeStreamSummary failed; using default limits")
            }
        }
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut listing = false;
        let mut last_sync = Instant::now();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stopping: Option<Instant> = None;
        let notify = Arc::clone(&self.spool.notify);
        loop {
            let now = Instant::now();
            if stopping.is_none() {
                self.fill(now)?;
            }
            if !listing && self.core.shard_map_refresh_due(now) {
                listing = true;
                let client = self.client.clone();
                tasks.spawn(async move { Done::Shards(client.list_shards().await) });
            }
            while let Some(plan) = self.core.poll_request(now) {
                let client = self.client.clone();
                tasks.spawn(async move {
                    let result = client.put_records(&plan.records).await;
                    Done::Put(plan.id, result)
                });
            }
            if now.duration_since(last_sync) >= self.settings.sync_interval {
                self.spool.sync()?;
                last_sync = now;
            }
            if let Some(deadline) = stopping
                && (self.core.requests_in_flight() == 0 || now >= deadline)
            {
                break;
            }
            let wake = self
                .core
                .next_wakeup(now)
                .min(now + self.settings.sync_interval);
            let wake = stopping.map_or(wake, |d| wake.min(d));
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    match joined {
                        Ok(done) => {
                            if matches!(done, Done::Shards(_)) {
                                listing = false;
                            }
                            self.handle(done);
                        }
                        Err(error) => tracing::error!(%error, "telemetry request task failed"),
                    }
                    self.settle()?;
                }
                _ = notify.notified(), if stopping.is_none() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = &mut shutdown, if stopping.is_none() => {
                    // Records spooled just before the stop (a last sample) go out too.
                    self.fill(Instant::now())?;
                    self.core.flush(true);
                    stopping = Some(Instant::now() + self.settings.drain_timeout);
                }
            }
        }
        tasks.abort_all();
        self.settle()?;
        self.spool.sync()?;
        Ok(self.core.stats().clone())
    }
}

/// What `put-record` reports once the service took the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// Shard that stored it.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
    /// Requests it took.
    pub attempts: u64,
}

/// Sends one record through the producer logic (shard map, limits, retries and error classes)
/// and returns once the service took it. Gives up when `deadline` passes, when the record is
/// invalid for the stream, or when an operator must fix something.
pub async fn put_record_once(
    client: &KdsClient,
    record: UserRecord,
    mut config: ProducerConfig,
    deadline: Duration,
) -> Result<PutOutcome, TelemetryError> {
    config.limits.validate()?;
    config.linger = Duration::ZERO;
    let started = Instant::now();
    let give_up = started + deadline;
    let mut core = Producer::new(config, Jitter::from_os());
    if let Ok(summary) = client.describe_stream_summary().await {
        core.apply_stream_settings(summary.max_record_bytes, summary.auto_distribution);
    }
    core.add(0, record, started);
    core.flush(true);
    loop {
        let now = Instant::now();
        if now >= give_up {
            let reason = core
                .stats()
                .last_error
                .clone()
                .unwrap_or_else(|| "no answer".into());
            return Err(TelemetryError::NotDelivered {
                reason: format!("gave up after {deadline:?}: {reason}"),
            });
        }
        if core.take_credentials_refresh() {
            client.invalidate_credentials();
        }
        if let Some(reason) = core.paused_reason(now) {
            return Err(TelemetryError::NotDelivered {
                reason: reason.to_owned(),
            });
        }
        if let Some(letter) = core.take_dead_letters().into_iter().next() {
            return Err(TelemetryError::NotDelivered {
                reason: letter.reason,
            });
        }
        if core.shard_map_refresh_due(now) {
            match client.list_shards().await {
                Ok(shards) => match ShardMap::from_shards(&shards) {
                    Ok(map) => core.set_shard_map(map, now),
                    Err(_) => core.shard_map_refresh_failed(now),
                },
                Err(_) => core.shard_map_refresh_failed(now),
            }
        }
        if let Some(plan) = core.poll_request(now) {
            match client.put_records(&plan.records).await {
                Ok(outcomes) => {
                    let stored = outcomes.iter().find_map(|o| match o {
                        RecordOutcome::Stored {
                            shard_id,
                            sequence_number,
                        } => Some((shard_id.clone(), sequence_number.clone())),
                        RecordOutcome::Failed { .. } => None,
                    });
                    core.on_success(plan.id, outcomes, Instant::now());
                    if let (false, Some((shard_id, sequence_number))) =
                        (core.take_acked().is_empty(), stored)
                    {
                        return Ok(PutOutcome {
                            shard_id,
                            sequence_number,
                            attempts: core.stats().requests,
                        });
                    }
                }
                Err(failure) => core.on_failure(plan.id, &failure, Instant::now()),
            }
            continue;
        }
        let wake = core.next_wakeup(now).min(give_up);
        tokio::time::sleep_until(wake.into()).await;
    }
}
