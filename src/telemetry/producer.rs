//! The producer's decisions, without I/O: which records go in the next PutRecords request, and
//! what each response means for them.
//!
//! The driver feeds it records read from the spool ([`Producer::add`]), asks for requests
//! ([`Producer::poll_request`]), reports outcomes ([`Producer::on_response`]) and drains the
//! results: records to acknowledge in the spool, records for the dead-letter file, and whether
//! to refresh credentials or the shard map. Time is always an argument.
//!
//! Invariants:
//! * a record is acknowledged only when the service returned a sequence number for it, and for
//!   a record inside an aggregate only when the shard that stored the aggregate contains the
//!   record's hash key (otherwise a KCL consumer would drop the whole aggregate, so every
//!   member is sent again and counted as a wrong-shard resend);
//! * a failed record keeps its id, so it goes before newer ones of its shard;
//! * nothing is dropped for a retriable, credential or operator error; only a record the
//!   service rejected on its own in a request of its own is dead-lettered, with the reason;
//! * with `strict_ordering`, a shard has at most one request in flight and at most one Kinesis
//!   record per request, so a failed record is always resent before any later record of its
//!   shard is sent.

use super::batch::{BatchLimits, Offer, PlannedRecord, RequestBuilder, ShardBudget};
use super::errors::{ErrorClass, RequestFailure};
use super::rate_limit::{Backoff, Jitter, LimiterConfig, ShardLimiter};
use super::record::UserRecord;
use super::shard_map::{RefreshSchedule, ShardId, ShardMap};
use super::spool::RecordId;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Identifies one request in flight.
pub type RequestId = u64;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Request and record limits, aggregation switch.
    pub limits: BatchLimits,
    /// Per-shard pacing.
    pub limiter: LimiterConfig,
    /// Pace per shard with token buckets (on by default).
    pub pacing: bool,
    /// One request in flight and one Kinesis record per request per shard.
    pub strict_ordering: bool,
    /// Requests in flight at once.
    pub max_in_flight_requests: usize,
    /// How long a fresh record may wait for others to fill its request.
    pub linger: Duration,
    /// First retry delay after a failed request.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long to pause after an error an operator must fix, before probing again.
    pub operator_pause: Duration,
    /// Shard map refresh period (besides refreshes on demand).
    pub shard_map_period: Duration,
    /// Records held in memory (read from the spool) at most.
    pub max_pending_records: usize,
    /// Data bytes held in memory at most.
    pub max_pending_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            limits: BatchLimits::default(),
            limiter: LimiterConfig::default(),
            pacing: true,
            strict_ordering: false,
            max_in_flight_requests: 4,
            linger: Duration::from_millis(100),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            operator_pause: Duration::from_secs(30),
            shard_map_period: Duration::from_secs(300),
            max_pending_records: 20_000,
            max_pending_bytes: 16 << 20,
        }
    }
}

/// One Kinesis record's fate in a 200 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Stored.
    Stored {
        /// Where.
        shard_id: String,
        /// Its sequence number.
        sequence_number: String,
    },
    /// Not stored.
    Failed {
        /// `ProvisionedThroughputExceededException` or `InternalFailure`.
        code: String,
        /// The service's message.
        message: String,
    },
}

/// A request the driver should send.
#[derive(Debug, Clone)]
pub struct PutRecordsPlan {
    /// Its id, to report the outcome.
    pub id: RequestId,
    /// Kinesis records in request order.
    pub records: Vec<PlannedRecord<RecordId>>,
}

/// A record the service will never take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its spool id.
    pub id: RecordId,
    /// The record.
    pub record: UserRecord,
    /// Why.
    pub reason: String,
}

/// Counters, for the health endpoint and the tests' figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// PutRecords requests sent.
    pub requests: u64,
    /// Requests that failed as a whole.
    pub failed_requests: u64,
    /// User records acknowledged.
    pub records_delivered: u64,
    /// Kinesis records stored (aggregates count once).
    pub kinesis_records_stored: u64,
    /// Aggregates stored.
    pub aggregates_stored: u64,
    /// User records resent after a per-record throttle.
    pub throttled_records: u64,
    /// User records resent after a per-record internal failure.
    pub internal_failures: u64,
    /// User records in requests whose outcome was unknown (possible duplicates).
    pub ambiguous_records: u64,
    /// User records resent because their aggregate landed in a shard not containing them.
    pub wrong_shard_resends: u64,
    /// User records resent for any reason.
    pub retried_records: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Credential refreshes asked for.
    pub credential_refreshes: u64,
    /// Pauses for errors an operator must fix.
    pub operator_pauses: u64,
    /// Shard-map refreshes asked for by responses.
    pub shard_map_changes_seen: u64,
    /// The last error code seen and its class.
    pub last_error: Option<String>,
}

struct Pending {
    record: UserRecord,
    added: Instant,
    attempts: u32,
    not_before: Option<Instant>,
    in_flight: bool,
    max_request_records: usize,
    max_aggregate_members: usize,
    /// Wait for a shard map newer than this generation (its aggregate landed in a shard the
    /// map did not predict, so re-aggregating with the old map would repeat the mistake).
    wait_for_map_after: Option<u64>,
}

struct InFlight {
    records: Vec<PlannedRecord<RecordId>>,
    shards: Vec<Option<ShardId>>,
}

/// The sans-I/O producer for one stream.
pub struct Producer {
    config: ProducerConfig,
    map: ShardMap,
    refresh: RefreshSchedule,
    limiters: HashMap<ShardId, ShardLimiter>,
    jitter: Jitter,
    pending: BTreeMap<RecordId, Pending>,
    pending_bytes: usize,
    in_flight: HashMap<RequestId, InFlight>,
    shards_in_flight: HashMap<Option<ShardId>, usize>,
    next_request: RequestId,
    backoff: Backoff,
    paused: Option<(Instant, String)>,
    flushing: bool,
    acked: Vec<RecordId>,
    dead: Vec<DeadLetter>,
    refresh_credentials: bool,
    map_generation: u64,
    /// A ListShards answer (or failure) was seen: until then requests wait, so the first
    /// records are aggregated per shard rather than sent raw.
    map_attempted: bool,
    stats: ProducerStats,
}

impl Producer {
    /// A producer with no shard map yet (records go out raw until one is set).
    pub fn new(config: ProducerConfig, jitter: Jitter) -> Self {
        let backoff = Backoff::new(config.retry_base, config.retry_max);
        let refresh = RefreshSchedule::new(config.shard_map_period);
        Producer {
            config,
            map: ShardMap::default(),
            refresh,
            limiters: HashMap::new(),
            jitter,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            in_flight: HashMap::new(),
            shards_in_flight: HashMap::new(),
            next_request: 0,
            backoff,
            paused: None,
            flushing: false,
            acked: Vec::new(),
            dead: Vec::new(),
            refresh_credentials: false,
            map_generation: 0,
            map_attempted: false,
            stats: ProducerStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// Applies what DescribeStreamSummary said: the stream's maximum record size, and whether
    /// the service distributes records itself (then aggregation is turned off, with a warning).
    pub fn apply_stream_settings(
        &mut self,
        max_record_bytes: Option<usize>,
        auto_distribution: bool,
    ) {
        if let Some(max) = max_record_bytes {
            self.config.limits.max_record_bytes = max.clamp(
                super::record::MIN_STREAM_MAX_RECORD_BYTES,
                super::record::MAX_STREAM_MAX_RECORD_BYTES,
            );
            self.config.limits.max_request_bytes = self
                .config
                .limits
                .max_request_bytes
                .max(self.config.limits.max_record_bytes);
        }
        if auto_distribution && self.config.limits.aggregation {
            tracing::warn!(
                "stream uses the AUTO record distribution strategy: aggregates would not land on their records' shards, so KPL aggregation is turned off"
            );
            self.config.limits.aggregation = false;
        }
    }

    /// Room for more records in memory.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.config.max_pending_records
            && self.pending_bytes < self.config.max_pending_bytes
    }

    /// Records held (waiting or in flight).
    pub fn pending_records(&self) -> usize {
        self.pending.len()
    }

    /// Requests in flight.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Takes a record read from the spool.
    pub fn add(&mut self, id: RecordId, record: UserRecord, now: Instant) {
        self.pending_bytes += record.raw_bytes();
        let max_request_records = self.config.limits.max_records_per_request;
        if let Some(previous) = self.pending.insert(
            id,
            Pending {
                record,
                added: now,
                attempts: 0,
                not_before: None,
                in_flight: false,
                max_request_records,
                max_aggregate_members: usize::MAX,
                wait_for_map_after: None,
            },
        ) {
            self.pending_bytes -= previous.record.raw_bytes();
        }
    }

    /// Sends everything waiting without lingering (shutdown, `put-record`).
    pub fn flush(&mut self, on: bool) {
        self.flushing = on;
    }

    /// Installs a fresh shard map.
    pub fn set_shard_map(&mut self, map: ShardMap, now: Instant) {
        let open: std::collections::HashSet<&str> = map.shards().iter().map(|s| &*s.id).collect();
        self.limiters.retain(|id, _| open.contains(&**id));
        self.map = map;
        self.map_generation += 1;
        self.map_attempted = true;
        self.refresh.succeeded(now);
    }

    /// A ListShards refresh failed: retry later with backoff.
    pub fn shard_map_refresh_failed(&mut self, now: Instant) {
        self.map_attempted = true;
        self.refresh.failed(now);
    }

    /// True when the driver should list the shards now.
    pub fn shard_map_refresh_due(&self, now: Instant) -> bool {
        self.refresh.is_due(now)
    }

    /// The current shard map.
    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Record ids the service took, to acknowledge in the spool.
    pub fn take_acked(&mut self) -> Vec<RecordId> {
        std::mem::take(&mut self.acked)
    }

    /// Records for the dead-letter file (then acknowledge them in the spool).
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead)
    }

    /// True once after a response said the credentials expired.
    pub fn take_credentials_refresh(&mut self) -> bool {
        std::mem::take(&mut self.refresh_credentials)
    }

    /// Counters.
    pub fn stats(&self) -> &ProducerStats {
        &self.stats
    }

    /// Why sending is paused, if it is.
    pub fn paused_reason(&self, now: Instant) -> Option<&str> {
        self.paused
            .as_ref()
            .filter(|(until, _)| *until > now)
            .map(|(_, reason)| reason.as_str())
    }

    fn budget(&mut self, shard: Option<&ShardId>, now: Instant) -> ShardBudget {
        let strict = self.config.strict_ordering;
        let Some(shard) = shard.filter(|_| self.config.pacing) else {
            return if strict {
                ShardBudget {
                    records: 1,
                    ..ShardBudget::UNLIMITED
                }
            } else {
                ShardBudget::UNLIMITED
            };
        };
        let config = self.config.limiter;
        let limiter = self
            .limiters
            .entry(shard.clone())
            .or_insert_with(|| ShardLimiter::new(&config, now));
        let budget = limiter.budget(now);
        if strict {
            ShardBudget {
                records: budget.records.min(1),
                ..budget
            }
        } else {
            budget
        }
    }

    /// The next request to send, if anything may go now.
    pub fn poll_request(&mut self, now: Instant) -> Option<PutRecordsPlan> {
        if self.in_flight.len() >= self.config.max_in_flight_requests.max(1) {
            return None;
        }
        if let Some((until, _)) = &self.paused {
            if *until > now {
                return None;
            }
            self.paused = None;
        }
        if !self.backoff.is_ready(now) || !self.map_attempted {
            return None;
        }
        if !self.flushing && !self.linger_over(now) {
            return None;
        }
        let mut builder = RequestBuilder::new(self.config.limits);
        let mut blocked: HashMap<Option<ShardId>, ()> = HashMap::new();
        let mut budgets: HashMap<Option<ShardId>, ShardBudget> = HashMap::new();
        let mut too_large = Vec::new();
        let ids: Vec<RecordId> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(entry) = self.pending.get(&id) else {
                continue;
            };
            let shard = self
                .map
                .shard_for(entry.record.hash_key())
                .map(|s| s.id.clone());
            if blocked.contains_key(&shard) {
                continue;
            }
            let not_ready = entry.in_flight
                || entry.not_before.is_some_and(|t| t > now)
                || entry
                    .wait_for_map_after
                    .is_some_and(|g| g >= self.map_generation);
            if not_ready {
                if self.config.strict_ordering {
                    blocked.insert(shard, ());
                }
                continue;
            }
            if self.config.strict_ordering
                && self.shards_in_flight.get(&shard).is_some_and(|&n| n > 0)
            {
                blocked.insert(shard, ());
                continue;
            }
            let budget = match budgets.get(&shard) {
                Some(budget) => *budget,
                None => {
                    let budget = self.budget(shard.as_ref(), now);
                    budgets.insert(shard.clone(), budget);
                    budget
                }
            };
            let Some(entry) = self.pending.get(&id) else {
                continue;
            };
            let (aggregate_cap, max_records) =
                (entry.max_aggregate_members, entry.max_request_records);
            match builder.offer(
                shard.as_ref(),
                budget,
                id,
                &entry.record,
                aggregate_cap,
                max_records,
            ) {
                Offer::Added => {}
                Offer::ShardFull => {
                    blocked.insert(shard, ());
                }
                Offer::DoesNotFit => {
                    if self.config.strict_ordering {
                        blocked.insert(shard, ());
                    }
                }
                Offer::RequestFull => {
                    // Records joining aggregates already open may still fit.
                    blocked.insert(shard, ());
                }
                Offer::TooLarge => too_large.push(id),
            }
        }
        for id in too_large {
            self.dead_letter(
                id,
                format!(
                    "record is larger than the stream's maximum record size of {} bytes (data + partition key)",
                    self.config.limits.max_record_bytes
                ),
            );
        }
        if builder.is_empty() {
            return None;
        }
        let (records, totals) = builder.finish();
        let mut shards = Vec::with_capacity(totals.len());
        for total in totals {
            if let Some(limiter) = total.shard.as_ref().and_then(|s| self.limiters.get_mut(s)) {
                limiter.take(total.records, total.bytes, now);
            }
            *self
                .shards_in_flight
                .entry(total.shard.clone())
                .or_insert(0) += 1;
            shards.push(total.shard);
        }
        for planned in &records {
            for member in &planned.record.members {
                if let Some(entry) = self.pending.get_mut(member) {
                    entry.in_flight = true;
                    entry.attempts += 1;
                }
            }
        }
        let id = self.next_request;
        self.next_request += 1;
        self.stats.requests += 1;
        self.in_flight.insert(
            id,
            InFlight {
                records: records.clone(),
                shards,
            },
        );
        Some(PutRecordsPlan { id, records })
    }

    /// True when a fresh record has waited its linger, enough is waiting to fill a request,
    /// or a retried record is ready.
    fn linger_over(&self, now: Instant) -> bool {
        if self.pending_bytes >= self.config.limits.max_request_bytes {
            return true;
        }
        self.pending.values().any(|p| {
            !p.in_flight
                && p.wait_for_map_after.is_none_or(|g| g < self.map_generation)
                && if p.attempts > 0 {
                    p.not_before.is_none_or(|t| t <= now)
                } else {
                    now.saturating_duration_since(p.added) >= self.config.linger
                }
        })
    }

    /// When the driver should call [`Producer::poll_request`] again at the latest.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        let mut wake = self
            .refresh
            .due_at(now)
            .max(now)
            .min(now + Duration::from_secs(3600));
        if let Some((until, _)) = &self.paused {
            return wake.min((*until).max(now));
        }
        if let Some(at) = self.backoff.ready_at() {
            return wake.min(at.max(now));
        }
        let earliest = self
            .pending
            .values()
            .filter(|p| {
                !p.in_flight && p.wait_for_map_after.is_none_or(|g| g < self.map_generation)
            })
            .map(|p| match (p.not_before, p.attempts) {
                (Some(at), _) => at,
                (None, 0) => p.added + self.config.linger,
                (None, _) => now,
            })
            .min();
        if let Some(earliest) = earliest {
            // A ready record may still wait for tokens or for a request slot: poll again soon,
            // but not in a tight loop.
            wake = wake.min(earliest.max(now + Duration::from_millis(10)));
        }
        wake
    }

    fn dead_letter(&mut self, id: RecordId, reason: String) {
        if let Some(entry) = self.pending.remove(&id) {
            self.pending_bytes -= entry.record.raw_bytes();
            self.stats.dead_lettered += 1;
            tracing::warn!(spool_id = id, partition_key = entry.record.partition_key(), %reason, "record dead-lettered");
            self.dead.push(DeadLetter {
                id,
                record: entry.record,
                reason,
            });
        }
    }

    fn deliver(&mut self, id: RecordId) {
        if let Some(entry) = self.pending.remove(&id) {
            self.pending_bytes -= entry.record.raw_bytes();
            self.stats.records_delivered += 1;
            self.acked.push(id);
        }
    }

    fn retry(&mut self, id: RecordId, not_before: Option<Instant>) {
        if let Some(entry) = self.pending.get_mut(&id) {
            entry.in_flight = false;
            entry.not_before = not_before;
            self.stats.retried_records += 1;
        }
    }

    fn finish_request(&mut self, request: RequestId) -> Option<InFlight> {
        let done = self.in_flight.remove(&request)?;
        for shard in &done.shards {
            if let Some(count) = self.shards_in_flight.get_mut(shard) {
                *count = count.saturating_sub(1);
            }
        }
        Some(done)
    }

    /// Reports a 200 response: one outcome per Kinesis record, in request order.
    pub fn on_success(&mut self, request: RequestId, outcomes: Vec<RecordOutcome>, now: Instant) {
        let Some(done) = self.finish_request(request) else {
            return;
        };
        if outcomes.len() != done.records.len() {
            let failure = RequestFailure::BadResponse {
                operation: "PutRecords",
                message: format!(
                    "{} result entries for {} records",
                    outcomes.len(),
                    done.records.len()
                ),
            };
            return self.fail_request(done, &failure, now);
        }
        self.backoff.succeed();
        for (planned, outcome) in done.records.into_iter().zip(outcomes) {
            let members = &planned.record.members;
            match outcome {
                RecordOutcome::Stored { shard_id, .. } => {
                    let predicted = planned.shard.as_deref();
                    let changed = planned
                        .record
                        .member_hash_keys
                        .iter()
                        .any(|&key| self.map.response_shows_change(predicted, &shard_id, key));
                    if changed {
                        self.stats.shard_map_changes_seen += 1;
                        self.refresh.request();
                    }
                    if let Some(limiter) = self.limiters.get_mut(shard_id.as_str()) {
                        limiter.accepted();
                    }
                    let all_inside = !planned.record.aggregated
                        || self.map.get(&shard_id).is_some_and(|shard| {
                            planned
                                .record
                                .member_hash_keys
                                .iter()
                                .all(|&k| shard.contains(k))
                        });
                    if all_inside {
                        self.stats.kinesis_records_stored += 1;
                        if planned.record.aggregated {
                            self.stats.aggregates_stored += 1;
                        }
                        for &id in members {
                            self.deliver(id);
                        }
                    } else {
                        // Stored, but a KCL consumer would discard it: send every member again,
                        // once the shard map was refreshed.
                        self.stats.wrong_shard_resends += members.len() as u64;
                        self.refresh.request();
                        for &id in members {
                            self.retry(id, None);
                            if let Some(entry) = self.pending.get_mut(&id) {
                                entry.wait_for_map_after = Some(self.map_generation);
                            }
                        }
                    }
                }
                RecordOutcome::Failed { code, message } => {
                    let not_before = if code == "ProvisionedThroughputExceededException" {
                        self.stats.throttled_records += members.len() as u64;
                        planned.shard.as_ref().and_then(|shard| {
                            self.limiters
                                .get_mut(shard)
                                .map(|limiter| now + limiter.throttled(now, &mut self.jitter))
                        })
                    } else {
                        self.stats.internal_failures += members.len() as u64;
                        let delay = self
                            .config
                            .retry_base
                            .mul_f64(1.0 + self.jitter.next_unit());
                        Some(now + delay)
                    };
                    self.stats.last_error = Some(format!("{code}: {message}"));
                    for &id in members {
                        self.retry(id, not_before);
                    }
                }
            }
        }
    }

    /// Reports a request that failed as a whole.
    pub fn on_failure(&mut self, request: RequestId, failure: &RequestFailure, now: Instant) {
        if let Some(done) = self.finish_request(request) {
            self.fail_request(done, failure, now);
        }
    }

    fn fail_request(&mut self, done: InFlight, failure: &RequestFailure, now: Instant) {
        self.stats.failed_requests += 1;
        let class = failure.class();
        self.stats.last_error = Some(format!("{} ({class})", failure.code()));
        let members: Vec<RecordId> = done
            .records
            .iter()
            .flat_map(|p| p.record.members.iter().copied())
            .collect();
        tracing::warn!(error = %failure, %class, records = members.len(), "PutRecords failed");
        match class {
            ErrorClass::Throttled => {
                for shard in done.shards.iter().flatten() {
                    if let Some(limiter) = self.limiters.get_mut(shard) {
                        limiter.throttled(now, &mut self.jitter);
                    }
                }
                self.stats.throttled_records += members.len() as u64;
                self.backoff.fail(now, &mut self.jitter);
            }
            ErrorClass::Transient { ambiguous } => {
                if ambiguous {
                    self.stats.ambiguous_records += members.len() as u64;
                }
                self.backoff.fail(now, &mut self.jitter);
            }
            ErrorClass::Credentials => {
                self.refresh_credentials = true;
                self.stats.credential_refreshes += 1;
                // The first retry after a refresh goes at once; repeated failures back off.
                if self.backoff.failures() > 0 {
                    self.backoff.fail(now, &mut self.jitter);
                } else {
                    self.backoff.count_without_wait();
                }
            }
            ErrorClass::OperatorFixable => {
                self.stats.operator_pauses += 1;
                tracing::error!(error = %failure, pause = ?self.config.operator_pause, "sending paused until an operator fixes the stream or permissions; records are kept");
                self.paused = Some((now + self.config.operator_pause, failure.to_string()));
            }
            ErrorClass::BadRequest => {
                let kinesis_records = done.records.len();
                if kinesis_records > 1 {
                    let half = kinesis_records.div_ceil(2);
                    for &id in &members {
                        if let Some(entry) = self.pending.get_mut(&id) {
                            entry.max_request_records = entry.max_request_records.min(half);
                        }
                    }
                } else if members.len() > 1 {
                    // One aggregate was refused: split it in halves, each in a request alone.
                    let half = (members.len() / 2).max(1);
                    for &id in &members {
                        if let Some(entry) = self.pending.get_mut(&id) {
                            entry.max_aggregate_members = entry.max_aggregate_members.min(half);
                            entry.max_request_records = 1;
                        }
                    }
                } else {
                    for &id in &members {
                        self.dead_letter(id, failure.to_string());
                    }
                    return;
                }
            }
        }
        for id in members {
            self.retry(id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::HashKey;
    use crate::telemetry::shard_map::ShardDescription;
    use bytes::Bytes;

    fn two_shards() -> ShardMap {
        let half = 1u128 << 127;
        ShardMap::from_shards(&[
            ShardDescription {
                shard_id: "shardId-000000000000".into(),
                starting_hash_key: HashKey(0),
                ending_hash_key: HashKey(half - 1),
                open: true,
            },
            ShardDescription {
                shard_id: "shardId-000000000001".into(),
                starting_hash_key: HashKey(half),
                ending_hash_key: HashKey(u128::MAX),
                open: true,
            },
        ])
        .expect("valid map")
    }

    fn producer(config: ProducerConfig, now: Instant) -> Producer {
        let mut producer = Producer::new(config, Jitter::seeded(3));
        producer.set_shard_map(two_shards(), now);
        producer
    }

    fn record(key: &str) -> UserRecord {
        UserRecord::new(key, None, Bytes::from_static(b"{\"cpu\":0.5}"), 1 << 20).expect("valid")
    }

    fn stored(plan: &PutRecordsPlan) -> Vec<RecordOutcome> {
        plan.records
            .iter()
            .map(|p| RecordOutcome::Stored {
                shard_id: p
                    .shard
                    .as_deref()
                    .unwrap_or("shardId-000000000000")
                    .to_owned(),
                sequence_number: "1".into(),
            })
            .collect()
    }

    #[test]
    fn aggregates_per_shard_and_acks_on_success() {
        let t0 = Instant::now();
        let mut p = producer(ProducerConfig::default(), t0);
        for i in 0..100 {
            p.add(i, record(&format!("cam-{i}")), t0);
        }
        assert!(p.poll_request(t0).is_none(), "lingers first");
        let t1 = t0 + Duration::from_millis(100);
        let plan = p.poll_request(t1).expect("a request");
        assert_eq!(plan.records.len(), 2, "one aggregate per shard");
        assert!(plan.records.iter().all(|r| r.record.aggregated));
        p.on_success(plan.id, stored(&plan), t1);
        let mut acked = p.take_acked();
        acked.sort_unstable();
        assert_eq!(acked, (0..100).collect::<Vec<_>>());
        assert_eq!(p.stats().aggregates_stored, 2);
        assert_eq!(p.pending_records(), 0);
    }

    #[test]
    fn partial_failures_resend_only_the_failed_records() {
        let t0 = Instant::now();
        let config = ProducerConfig {
            limits: BatchLimits {
                aggregation: false,
                ..BatchLimits::default()
            },
            ..ProducerConfig::default()
        };
        let mut p = producer(config, t0);
        for i in 0..10 {
            p.add(i, record(&format!("k{i}")), t0);
        }
        p.flush(true);
        let plan = p.poll_request(t0).expect("a request");
        assert_eq!(plan.records.len(), 10);
        let outcomes: Vec<_> = plan
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i % 3 == 0 {
                    RecordOutcome::Failed {
                        code: "ProvisionedThroughputExceededException".into(),
                        message: "slow down".into(),
                    }
                } else {
                    RecordOutcome::Stored {
                        shard_id: r.shard.as_deref().unwrap_or_default().to_owned(),
                        sequence_number: "9".into(),
                    }
                }
            })
            .collect();
        let failed: Vec<RecordId> = plan
            .records
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .flat_map(|(_, r)| r.record.members.clone())
            .collect();
        p.on_success(plan.id, outcomes, t0);
        assert_eq!(p.take_acked().len(), 6);
        assert_eq!(p.stats().throttled_records, 4);
        // Throttled shards back off: nothing at once, the failed ones later.
        let later = t0 + Duration::from_secs(11);
        let retry = p.poll_request(later).expect("retry");
        let mut resent: Vec<RecordId> = retry
            .records
            .iter()
            .flat_map(|r| r.record.members.clone())
            .collect();
        resent.sort_unstable();
        let mut failed = failed;
        failed.sort_unstable();
        assert_eq!(resent, failed);
    }

    #[test]
    fn wrong_shard_aggregate_is_resent_in_full_and_raw_records_are_kept() {
        let t0 = Instant::now();
        let mut p = producer(ProducerConfig::default(), t0);
        let generation = p.map_generation;
        // Two keys of shard 0 aggregate together.
        let keys: Vec<String> = (0..200)
            .map(|i| format!("k{i}"))
            .filter(|k| HashKey::from_partition_key(k).0 < 1u128 << 127)
            .take(2)
            .collect();
        for (i, key) in keys.iter().enumerate() {
            p.add(i as u64, record(key), t0);
        }
        p.flush(true);
        let plan = p.poll_request(t0).expect("a request");
        assert_eq!(plan.records.len(), 1);
        p.on_success(
            plan.id,
            vec![RecordOutcome::Stored {
                shard_id: "shardId-000000000007".into(),
                sequence_number: "5".into(),
            }],
            t0,
        );
        assert!(p.take_acked().is_empty());
        assert_eq!(p.stats().wrong_shard_resends, 2);
        assert!(p.shard_map_refresh_due(t0));
        // The members wait for a fresh map before going again.
        assert!(p.poll_request(t0 + Duration::from_secs(1)).is_none());
        p.set_shard_map(two_shards(), t0 + Duration::from_secs(1));
        assert_eq!(p.map_generation, generation + 1);
        assert!(p.poll_request(t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn operator_errors_pause_and_keep_records_bad_records_are_isolated() {
        let t0 = Instant::now();
        let mut p = producer(ProducerConfig::default(), t0);
        p.add(0, record("a"), t0);
        p.add(1, record("b"), t0);
        p.flush(true);
        let plan = p.poll_request(t0).expect("a request");
        let denied = RequestFailure::Service {
            operation: "PutRecords",
            status: 400,
            code: "AccessDeniedException".into(),
            message: "no".into(),
        };
        p.on_failure(plan.id, &denied, t0);
        assert!(p.paused_reason(t0).is_some());
        assert!(p.poll_request(t0 + Duration::from_secs(29)).is_none());
        assert_eq!(p.pending_records(), 2);
        // Resumes after the pause; now the service rejects the request as invalid.
        let t1 = t0 + Duration::from_secs(30);
        let mut rejected = 0;
        let invalid = RequestFailure::Service {
            operation: "PutRecords",
            status: 400,
            code: "ValidationException".into(),
            message: "bad record".into(),
        };
        let mut now = t1;
        while let Some(plan) = p.poll_request(now) {
            let members: Vec<RecordId> = plan
                .records
                .iter()
                .flat_map(|r| r.record.members.clone())
                .collect();
            if members.contains(&1) {
                rejected += 1;
                p.on_failure(plan.id, &invalid, now);
            } else {
                let outcomes = stored(&plan);
                p.on_success(plan.id, outcomes, now);
            }
            now += Duration::from_secs(1);
            assert!(rejected < 10, "bisect converges");
        }
        assert_eq!(p.take_acked(), vec![0]);
        let dead = p.take_dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead.first().map(|d| d.id), Some(1));
        assert!(
            dead.first()
                .is_some_and(|d| d.reason.contains("ValidationException"))
        );
    }

    #[test]
    fn strict_ordering_keeps_one_request_per_shard() {
        let t0 = Instant::now();
        let config = ProducerConfig {
            strict_ordering: true,
            limits: BatchLimits {
                aggregation: false,
                ..BatchLimits::default()
            },
            ..ProducerConfig::default()
        };
        let mut p = producer(config, t0);
        for i in 0..4 {
            p.add(i, record("same-key"), t0);
        }
        p.flush(true);
        let first = p.poll_request(t0).expect("first");
        assert_eq!(first.records.len(), 1);
        assert!(
            p.poll_request(t0).is_none(),
            "the shard has a request in flight"
        );
        p.on_failure(
            first.id,
            &RequestFailure::Transport {
                operation: "PutRecords",
                sent: true,
                message: "timeout".into(),
            },
            t0,
        );
        assert_eq!(p.stats().ambiguous_records, 1);
        let later = t0 + Duration::from_secs(1);
        let again = p.poll_request(later).expect("retry");
        assert_eq!(
            again.records.first().map(|r| r.record.members.clone()),
            Some(vec![0])
        );
    }

    #[test]
    fn expired_token_asks_for_fresh_credentials_and_retries_at_once() {
        let t0 = Instant::now();
        let mut p = producer(ProducerConfig::default(), t0);
        p.add(0, record("a"), t0);
        p.flush(true);
        let plan = p.poll_request(t0).expect("a request");
        p.on_failure(
            plan.id,
            &RequestFailure::Service {
                operation: "PutRecords",
                status: 400,
                code: "ExpiredTokenException".into(),
                message: "expired".into(),
            },
            t0,
        );
        assert!(p.take_credentials_refresh());
        assert!(!p.take_credentials_refresh());
        assert!(p.poll_request(t0).is_some());
    }
}
