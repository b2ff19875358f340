//! The stream's open shards and their hash-key ranges, for predicting where a record lands.
//!
//! Invariants: the map holds only open shards (ListShards entries whose sequence-number range
//! has no end), sorted by their inclusive ending hash key, with non-overlapping ranges; lookup
//! is a binary search. Shards the map has seen closed are remembered (by id) so that a response
//! naming a shard the map did not predict can be told apart: unknown or child shard → refresh.

use super::record::HashKey;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDescription {
    /// `shardId-000000000000` style id.
    pub shard_id: String,
    /// Inclusive start of its hash-key range.
    pub starting_hash_key: HashKey,
    /// Inclusive end of its hash-key range.
    pub ending_hash_key: HashKey,
    /// False when the shard has an ending sequence number (closed after a reshard).
    pub open: bool,
}

/// A shard id shared cheaply between the map, batches and limiters.
pub type ShardId = Arc<str>;

/// One open shard in the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRange {
    /// Its id.
    pub id: ShardId,
    /// Inclusive start.
    pub start: HashKey,
    /// Inclusive end.
    pub end: HashKey,
}

impl ShardRange {
    /// True when `key` falls in this shard.
    pub fn contains(&self, key: HashKey) -> bool {
        self.start <= key && key <= self.end
    }
}

/// Why a ListShards answer cannot be a shard map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// No shard is open.
    #[error("ListShards returned no open shard")]
    NoOpenShards,
    /// A shard's range is inverted.
    #[error("shard {shard_id} has starting hash key {start} above its ending hash key {end}")]
    InvertedRange {
        /// The shard.
        shard_id: String,
        /// Its start.
        start: HashKey,
        /// Its end.
        end: HashKey,
    },
    /// Two open shards overlap.
    #[error("open shards {first} and {second} overlap in hash-key space")]
    Overlap {
        /// The lower shard.
        first: String,
        /// The shard that overlaps it.
        second: String,
    },
}

/// Open shards sorted by ending hash key.
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    shards: Vec<ShardRange>,
    closed: HashSet<ShardId>,
}

impl ShardMap {
    /// Builds the map from every page of ListShards; closed shards are remembered by id only.
    pub fn from_shards(shards: &[ShardDescription]) -> Result<Self, ShardMapError> {
        let mut open = Vec::new();
        let mut closed = HashSet::new();
        for shard in shards {
            if shard.starting_hash_key > shard.ending_hash_key {
                return Err(ShardMapError::InvertedRange {
                    shard_id: shard.shard_id.clone(),
                    start: shard.starting_hash_key,
                    end: shard.ending_hash_key,
                });
            }
            let id: ShardId = Arc::from(shard.shard_id.as_str());
            if shard.open {
                open.push(ShardRange {
                    id,
                    start: shard.starting_hash_key,
                    end: shard.ending_hash_key,
                });
            } else {
                closed.insert(id);
            }
        }
        if open.is_empty() {
            return Err(ShardMapError::NoOpenShards);
        }
        open.sort_by_key(|shard| shard.end);
        for pair in open.windows(2) {
            if let [low, high] = pair
                && high.start <= low.end
            {
                return Err(ShardMapError::Overlap {
                    first: low.id.to_string(),
                    second: high.id.to_string(),
                });
            }
        }
        Ok(ShardMap {
            shards: open,
            closed,
        })
    }

    /// The open shard `key` falls in, if the map covers it.
    pub fn shard_for(&self, key: HashKey) -> Option<&ShardRange> {
        let index = self.shards.partition_point(|shard| shard.end < key);
        self.shards.get(index).filter(|shard| shard.contains(key))
    }

    /// An open shard by id.
    pub fn get(&self, shard_id: &str) -> Option<&ShardRange> {
        self.shards.iter().find(|shard| &*shard.id == shard_id)
    }

    /// The open shards, sorted by ending hash key.
    pub fn shards(&self) -> &[ShardRange] {
        &self.shards
    }

    /// True when the map has no shard (not loaded yet).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Whether a response that stored records in `actual` (for which `predicted` was expected)
    /// means the map is out of date: the actual shard is unknown, or closed in our view, or
    /// does not contain the record's hash key.
    pub fn response_shows_change(
        &self,
        predicted: Option<&str>,
        actual: &str,
        key: HashKey,
    ) -> bool {
        if predicted == Some(actual) {
            return false;
        }
        match self.get(actual) {
            Some(shard) => !shard.contains(key),
            None => true,
        }
    }

    /// True when `shard_id` was listed closed at the last refresh.
    pub fn is_closed(&self, shard_id: &str) -> bool {
        self.closed.contains(shard_id)
    }
}

/// When to list the shards again: on demand (a response showed a change) or periodically, with
/// 1 s → 30 s (×1.5) backoff after failed refreshes. Sans-I/O: the driver asks and reports.
#[derive(Debug, Clone)]
pub struct RefreshSchedule {
    period: Duration,
    wanted: bool,
    last_success: Option<Instant>,
    retry_at: Option<Instant>,
    failure_delay: Duration,
}

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

impl RefreshSchedule {
    /// Refresh at least every `period`.
    pub fn new(period: Duration) -> Self {
        RefreshSchedule {
            period,
            wanted: true,
            last_success: None,
            retry_at: None,
            failure_delay: FIRST_RETRY,
        }
    }

    /// Asks for a refresh as soon as allowed.
    pub fn request(&mut self) {
        self.wanted = true;
    }

    /// The earliest instant a refresh may run (may be in the past: then it is due).
    pub fn due_at(&self, now: Instant) -> Instant {
        let periodic = match (self.wanted, self.last_success) {
            (false, Some(at)) => at + self.period,
            _ => now,
        };
        self.retry_at.map_or(periodic, |retry| retry.max(periodic))
    }

    /// True when a refresh should run at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        let backoff_over = self.retry_at.is_none_or(|at| now >= at);
        let periodic = self
            .last_success
            .is_none_or(|at| now.saturating_duration_since(at) >= self.period);
        backoff_over && (self.wanted || periodic)
    }

    /// A refresh succeeded.
    pub fn succeeded(&mut self, now: Instant) {
        self.wanted = false;
        self.last_success = Some(now);
        self.retry_at = None;
        self.failure_delay = FIRST_RETRY;
    }

    /// A refresh failed: try again after the current delay, then grow it.
    pub fn failed(&mut self, now: Instant) {
        self.wanted = true;
        self.retry_at = Some(now + self.failure_delay);
        self.failure_delay = self.failure_delay.mul_f64(1.5).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128, open: bool) -> ShardDescription {
        ShardDescription {
            shard_id: id.into(),
            starting_hash_key: HashKey(start),
            ending_hash_key: HashKey(end),
            open,
        }
    }

    #[test]
    fn lookup_uses_inclusive_ranges_of_open_shards() {
        let half = 1u128 << 127;
        let map = ShardMap::from_shards(&[
            shard("shardId-000000000000", 0, u128::MAX, false),
            shard("shardId-000000000002", half, u128::MAX, true),
            shard("shardId-000000000001", 0, half - 1, true),
        ])
        .expect("valid map");
        assert_eq!(map.shards().len(), 2);
        let id = |k: u128| map.shard_for(HashKey(k)).map(|s| s.id.to_string());
        assert_eq!(id(0).as_deref(), Some("shardId-000000000001"));
        assert_eq!(id(half - 1).as_deref(), Some("shardId-000000000001"));
        assert_eq!(id(half).as_deref(), Some("shardId-000000000002"));
        assert_eq!(id(u128::MAX).as_deref(), Some("shardId-000000000002"));
        assert!(map.is_closed("shardId-000000000000"));
        assert!(!map.response_shows_change(
            Some("shardId-000000000001"),
            "shardId-000000000001",
            HashKey(5)
        ));
        assert!(map.response_shows_change(
            Some("shardId-000000000001"),
            "shardId-000000000003",
            HashKey(5)
        ));
        assert!(map.response_shows_change(
            Some("shardId-000000000001"),
            "shardId-000000000002",
            HashKey(5)
        ));
    }

    #[test]
    fn gaps_overlaps_and_empty_maps_are_reported() {
        let map = ShardMap::from_shards(&[shard("s1", 10, 20, true)]).expect("valid");
        assert!(map.shard_for(HashKey(9)).is_none());
        assert!(map.shard_for(HashKey(21)).is_none());
        assert_eq!(
            ShardMap::from_shards(&[shard("s1", 0, 5, false)]).err(),
            Some(ShardMapError::NoOpenShards)
        );
        assert!(matches!(
            ShardMap::from_shards(&[shard("s1", 0, 10, true), shard("s2", 10, 20, true)]),
            Err(ShardMapError::Overlap { .. })
        ));
        assert!(matches!(
            ShardMap::from_shards(&[shard("s1", 9, 1, true)]),
            Err(ShardMapError::InvertedRange { .. })
        ));
    }

    #[test]
    fn refresh_schedule_backs_off_and_honours_requests() {
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(Duration::from_secs(60));
        assert!(schedule.is_due(t0));
        schedule.failed(t0);
        assert!(!schedule.is_due(t0 + Duration::from_millis(999)));
        assert!(schedule.is_due(t0 + Duration::from_secs(1)));
        schedule.failed(t0 + Duration::from_secs(1));
        assert!(!schedule.is_due(t0 + Duration::from_millis(2400)));
        assert!(schedule.is_due(t0 + Duration::from_millis(2500)));
        schedule.succeeded(t0 + Duration::from_secs(3));
        assert!(!schedule.is_due(t0 + Duration::from_secs(4)));
        assert!(schedule.is_due(t0 + Duration::from_secs(63)));
        schedule.request();
        assert!(schedule.is_due(t0 + Duration::from_secs(4)));
    }
}
