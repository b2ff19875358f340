//! Packing user records into one PutRecords request: per-shard aggregates, request limits,
//! per-shard budgets.
//!
//! Invariants of every [`RequestBuilder`] output:
//! * at most `max_records_per_request` (≤ 500) Kinesis records;
//! * Σ (data + partition key bytes) ≤ `max_request_bytes` (≤ 10 MiB);
//! * every Kinesis record ≤ `max_record_bytes` (the stream's maximum, key included);
//! * an aggregate holds only records offered for the same predicted shard, in offer order;
//! * per shard, no more Kinesis records or bytes than the budget the caller gave (the rate
//!   limiter's tokens), except that a shard whose bucket is full may always send one record.

use super::aggregate::{AggregateBuilder, KinesisRecord};
use super::record::{
    MAX_RECORDS_PER_REQUEST, MAX_REQUEST_BYTES_CEILING, MAX_STREAM_MAX_RECORD_BYTES,
    MIN_STREAM_MAX_RECORD_BYTES, UserRecord,
};
use super::shard_map::ShardId;
use std::collections::HashMap;

/// Limits a request must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Kinesis records per request, 1..=500.
    pub max_records_per_request: usize,
    /// Raw bytes per request (data + keys), up to 10 MiB.
    pub max_request_bytes: usize,
    /// The stream's maximum record size (data + key), 1 MiB..=10 MiB.
    pub max_record_bytes: usize,
    /// KPL aggregation on or off.
    pub aggregation: bool,
    /// Largest aggregate (billed bytes); capped by `max_record_bytes`.
    pub aggregation_max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_records_per_request: MAX_RECORDS_PER_REQUEST,
            max_request_bytes: super::record::DEFAULT_MAX_REQUEST_BYTES,
            max_record_bytes: super::record::DEFAULT_MAX_RECORD_BYTES,
            aggregation: true,
            aggregation_max_bytes: super::aggregate::DEFAULT_AGGREGATION_MAX_BYTES,
        }
    }
}

/// A limit set outside what the service allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("telemetry limit {name} = {value} is outside {min}..={max}")]
pub struct LimitError {
    /// The setting.
    pub name: &'static str,
    /// Its value.
    pub value: usize,
    /// Smallest allowed.
    pub min: usize,
    /// Largest allowed.
    pub max: usize,
}

impl BatchLimits {
    /// Checks every limit against what the service allows.
    pub fn validate(&self) -> Result<(), LimitError> {
        let check = |name, value, min, max| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(LimitError {
                    name,
                    value,
                    min,
                    max,
                })
            }
        };
        check(
            "max_records_per_request",
            self.max_records_per_request,
            1,
            MAX_RECORDS_PER_REQUEST,
        )?;
        check(
            "max_record_bytes",
            self.max_record_bytes,
            MIN_STREAM_MAX_RECORD_BYTES,
            MAX_STREAM_MAX_RECORD_BYTES,
        )?;
        check(
            "max_request_bytes",
            self.max_request_bytes,
            self.max_record_bytes,
            MAX_REQUEST_BYTES_CEILING,
        )?;
        check(
            "aggregation_max_bytes",
            self.aggregation_max_bytes,
            64,
            MAX_STREAM_MAX_RECORD_BYTES,
        )
    }

    fn aggregate_limit(&self) -> usize {
        self.aggregation_max_bytes.min(self.max_record_bytes)
    }
}

/// What a shard may still send in this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardBudget {
    /// Kinesis records.
    pub records: usize,
    /// Billed bytes.
    pub bytes: usize,
    /// The shard's buckets are full: one record may go whatever its size.
    pub bucket_full: bool,
}

impl ShardBudget {
    /// No pacing (shard unknown, or pacing off).
    pub const UNLIMITED: ShardBudget = ShardBudget {
        records: usize::MAX,
        bytes: usize::MAX,
        bucket_full: true,
    };
}

/// The answer to [`RequestBuilder::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The record is in the request.
    Added,
    /// The shard's budget is spent: offer no more records for this shard.
    ShardFull,
    /// This record does not fit what is left of the request; a smaller one might.
    DoesNotFit,
    /// The request has its maximum number of records.
    RequestFull,
    /// The record alone is larger than the stream's maximum record size.
    TooLarge,
}

/// What one shard takes in a request, for charging its limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTotal {
    /// The shard (`None`: no shard map).
    pub shard: Option<ShardId>,
    /// Kinesis records.
    pub records: usize,
    /// Billed bytes.
    pub bytes: usize,
}

/// One Kinesis record of a request, with the shard it was predicted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRecord<T> {
    /// The record.
    pub record: KinesisRecord<T>,
    /// The predicted shard (`None` when no shard map was available).
    pub shard: Option<ShardId>,
}

struct ShardSlot<T> {
    shard: Option<ShardId>,
    closed: Vec<KinesisRecord<T>>,
    open: Option<AggregateBuilder<T>>,
    /// Fewest members any member of the open aggregate allows.
    open_cap: usize,
    records: usize,
    bytes: usize,
}

/// Builds one PutRecords request.
pub struct RequestBuilder<T> {
    limits: BatchLimits,
    max_records: usize,
    slots: Vec<ShardSlot<T>>,
    slot_index: HashMap<Option<ShardId>, usize>,
    records: usize,
    bytes: usize,
    user_records: usize,
}

impl<T> RequestBuilder<T> {
    /// An empty request under `limits` (validated by the caller).
    pub fn new(limits: BatchLimits) -> Self {
        RequestBuilder {
            limits,
            max_records: limits.max_records_per_request,
            slots: Vec::new(),
            slot_index: HashMap::new(),
            records: 0,
            bytes: 0,
            user_records: 0,
        }
    }

    /// Kinesis records so far.
    pub fn kinesis_records(&self) -> usize {
        self.records
    }

    /// User records so far.
    pub fn user_records(&self) -> usize {
        self.user_records
    }

    /// Billed bytes so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.user_records == 0
    }

    /// Offers `record` for `shard`. `max_aggregate_members` caps the aggregate it may join
    /// (1 sends it raw) and `max_records` lowers this request's record cap: both bisect a
    /// request the service rejected, to isolate the record it will never take.
    pub fn offer(
        &mut self,
        shard: Option<&ShardId>,
        budget: ShardBudget,
        handle: T,
        record: &UserRecord,
        max_aggregate_members: usize,
        max_records: usize,
    ) -> Offer {
        if record.raw_bytes() > self.limits.max_record_bytes {
            return Offer::TooLarge;
        }
        let cap = self.max_records.min(max_records.max(1));
        let key = shard.cloned();
        let aggregate = max_aggregate_members > 1 && self.limits.aggregation && shard.is_some();
        let slot = self.slot_index.get(&key).and_then(|&i| self.slots.get(i));
        let (slot_records, slot_bytes) = slot.map_or((0, 0), |s| (s.records, s.bytes));
        // What adding costs: join the open aggregate, or start a new Kinesis record.
        let joins_open = aggregate
            && slot.is_some_and(|s| {
                s.open.as_ref().is_some_and(|open| {
                    open.len() < s.open_cap.min(max_aggregate_members)
                        && open.billed_bytes_with(record) <= self.limits.aggregate_limit()
                })
            });
        let (delta_records, delta_bytes) = match slot.and_then(|s| s.open.as_ref()) {
            Some(open) if joins_open => (0, open.billed_bytes_with(record) - open.billed_bytes()),
            _ => (1, record.raw_bytes()),
        };
        if self.records + delta_records > cap {
            return if self.records >= cap {
                Offer::RequestFull
            } else {
                Offer::DoesNotFit
            };
        }
        if self.bytes + delta_bytes > self.limits.max_request_bytes {
            return Offer::DoesNotFit;
        }
        let first_of_shard = slot_records == 0;
        let within_budget = slot_records + delta_records <= budget.records
            && slot_bytes + delta_bytes <= budget.bytes;
        if !(within_budget || (first_of_shard && budget.bucket_full)) {
            return Offer::ShardFull;
        }
        // Commit.
        self.max_records = cap;
        let index = match self.slot_index.get(&key) {
            Some(&index) => index,
            None => {
                self.slots.push(ShardSlot {
                    shard: key.clone(),
                    closed: Vec::new(),
                    open: None,
                    open_cap: usize::MAX,
                    records: 0,
                    bytes: 0,
                });
                let index = self.slots.len() - 1;
                self.slot_index.insert(key, index);
                index
            }
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return Offer::DoesNotFit;
        };
        if joins_open {
            slot.open_cap = slot.open_cap.min(max_aggregate_members);
            if let Some(open) = slot.open.as_mut()
                && let Err(handle) = open.try_add(handle, record)
            {
                // Sizes were checked above; a refusal here would be a bookkeeping bug, so the
                // record goes out raw instead of being lost.
                slot.closed.push(KinesisRecord::raw(handle, record));
                slot.records += 1;
                slot.bytes += record.raw_bytes();
                self.records += 1;
                self.bytes += record.raw_bytes();
                self.user_records += 1;
                return Offer::Added;
            }
        } else if aggregate {
            if let Some(previous) = slot.open.take().and_then(AggregateBuilder::finish) {
                slot.closed.push(previous);
            }
            let mut open = AggregateBuilder::new(self.limits.aggregate_limit());
            // The first record of a builder is always taken.
            let _ = open.try_add(handle, record);
            slot.open = Some(open);
            slot.open_cap = max_aggregate_members;
        } else {
            slot.closed.push(KinesisRecord::raw(handle, record));
        }
        slot.records += delta_records;
        slot.bytes += delta_bytes;
        self.records += delta_records;
        self.bytes += delta_bytes;
        self.user_records += 1;
        Offer::Added
    }

    /// The finished request, shard by shard, plus per-shard totals for charging the limiters.
    pub fn finish(self) -> (Vec<PlannedRecord<T>>, Vec<ShardTotal>) {
        let mut out = Vec::with_capacity(self.records);
        let mut totals = Vec::with_capacity(self.slots.len());
        for slot in self.slots {
            totals.push(ShardTotal {
                shard: slot.shard.clone(),
                records: slot.records,
                bytes: slot.bytes,
            });
            let open = slot.open.and_then(AggregateBuilder::finish);
            for record in slot.closed.into_iter().chain(open) {
                out.push(PlannedRecord {
                    record,
                    shard: slot.shard.clone(),
                });
            }
        }
        (out, totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn record(key: &str, len: usize) -> UserRecord {
        UserRecord::new(key, None, Bytes::from(vec![7u8; len]), 1 << 20).expect("valid")
    }

    fn shard(name: &str) -> ShardId {
        Arc::from(name)
    }

    fn assert_within(limits: &BatchLimits, planned: &[PlannedRecord<usize>]) {
        assert!(planned.len() <= limits.max_records_per_request);
        let bytes: usize = planned.iter().map(|p| p.record.billed_bytes()).sum();
        assert!(bytes <= limits.max_request_bytes, "{bytes}");
        for p in planned {
            assert!(p.record.billed_bytes() <= limits.max_record_bytes);
        }
    }

    #[test]
    fn aggregates_per_shard_and_sends_lone_records_raw() {
        let limits = BatchLimits::default();
        let mut builder = RequestBuilder::new(limits);
        let (s0, s1) = (shard("s0"), shard("s1"));
        for i in 0..10 {
            let target = if i % 2 == 0 { &s0 } else { &s1 };
            let offer = builder.offer(
                Some(target),
                ShardBudget::UNLIMITED,
                i,
                &record("k", 100),
                usize::MAX,
                500,
            );
            assert_eq!(offer, Offer::Added);
        }
        let lone = builder.offer(
            None,
            ShardBudget::UNLIMITED,
            10,
            &record("x", 5),
            usize::MAX,
            500,
        );
        assert_eq!(lone, Offer::Added);
        assert_eq!(builder.kinesis_records(), 3);
        let expected_bytes = builder.bytes();
        let (planned, totals) = builder.finish();
        assert_eq!(planned.len(), 3);
        assert_eq!(
            planned
                .iter()
                .map(|p| p.record.billed_bytes())
                .sum::<usize>(),
            expected_bytes
        );
        let members: Vec<Vec<usize>> = planned.iter().map(|p| p.record.members.clone()).collect();
        assert_eq!(
            members,
            vec![vec![0, 2, 4, 6, 8], vec![1, 3, 5, 7, 9], vec![10]]
        );
        assert!(planned[0].record.aggregated && planned[1].record.aggregated);
        assert!(!planned[2].record.aggregated);
        assert_eq!(totals.len(), 3);
        assert_within(&limits, &planned);
    }

    #[test]
    fn request_limits_hold_exactly() {
        let limits = BatchLimits {
            aggregation: false,
            ..BatchLimits::default()
        };
        let mut builder = RequestBuilder::new(limits);
        let mut added = 0;
        loop {
            match builder.offer(
                None,
                ShardBudget::UNLIMITED,
                added,
                &record("k", 10),
                usize::MAX,
                500,
            ) {
                Offer::Added => added += 1,
                Offer::RequestFull => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(added, 500);
        // Bytes: 5 records of 1 MiB - 1 byte key = 1 MiB each fill 5 MiB exactly.
        let mut builder = RequestBuilder::new(limits);
        for i in 0..5 {
            let offer = builder.offer(
                None,
                ShardBudget::UNLIMITED,
                i,
                &record("k", (1 << 20) - 1),
                usize::MAX,
                500,
            );
            assert_eq!(offer, Offer::Added);
        }
        assert_eq!(builder.bytes(), 5 << 20);
        assert_eq!(
            builder.offer(
                None,
                ShardBudget::UNLIMITED,
                5,
                &record("k", 0),
                usize::MAX,
                500
            ),
            Offer::DoesNotFit
        );
        let (planned, _) = builder.finish();
        assert_within(&limits, &planned);
    }

    #[test]
    fn too_large_records_and_budgets_and_bisect_caps() {
        let limits = BatchLimits::default();
        let mut builder = RequestBuilder::new(limits);
        let big = UserRecord::with_valid_key("k".into(), None, Bytes::from(vec![0u8; 1 << 20]))
            .expect("valid key");
        assert_eq!(
            builder.offer(None, ShardBudget::UNLIMITED, 0, &big, usize::MAX, 500),
            Offer::TooLarge
        );
        let s0 = shard("s0");
        let tight = ShardBudget {
            records: 1,
            bytes: 300,
            bucket_full: false,
        };
        assert_eq!(
            builder.offer(Some(&s0), tight, 1, &record("k", 200), 1, 500),
            Offer::Added
        );
        assert_eq!(
            builder.offer(Some(&s0), tight, 2, &record("k", 10), 1, 500),
            Offer::ShardFull
        );
        // A bisect cap of 1 closes the request to more Kinesis records.
        assert_eq!(
            builder.offer(None, ShardBudget::UNLIMITED, 3, &record("k", 10), 1, 1),
            Offer::RequestFull
        );
        // An empty shard with a full bucket may send one record beyond its byte budget.
        let mut builder = RequestBuilder::new(limits);
        let full = ShardBudget {
            records: 1000,
            bytes: 100,
            bucket_full: true,
        };
        assert_eq!(
            builder.offer(Some(&s0), full, 0, &record("k", 5000), usize::MAX, 500),
            Offer::Added
        );
        // An aggregate cap of 2 closes the aggregate after two members.
        let mut builder = RequestBuilder::new(limits);
        for i in 0..5 {
            let offer = builder.offer(
                Some(&s0),
                ShardBudget::UNLIMITED,
                i,
                &record("k", 10),
                2,
                500,
            );
            assert_eq!(offer, Offer::Added);
        }
        let (planned, _) = builder.finish();
        let sizes: Vec<usize> = planned.iter().map(|p| p.record.members.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }
}
