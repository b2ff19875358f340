//! Kinesis Data Streams on the local endpoint: CreateStream, ListShards,
//! DescribeStreamSummary, PutRecord, PutRecords, GetShardIterator and GetRecords over AWS
//! JSON 1.1, with scripted faults for tests.
//!
//! Behaviour follows the service where the producer depends on it: shard ranges split the
//! 128-bit key space like AWS (inclusive ends), records are routed by explicit hash key or
//! MD5 of the partition key, limits are checked on raw bytes (500 records, 1..=256-character
//! keys, data + key ≤ the stream's maximum, request ≤ 5 MiB), errors carry `__type` and
//! `x-amzn-ErrorType`, and an `Authorization` header with a SigV4 credential is required (the
//! signature itself is not verified, like every public stand-in).
//!
//! Faults ([`FaultPlan`]), applied to PutRecords: per-record
//! ProvisionedThroughputExceededException on every n-th record, scripted whole-request errors
//! (500/503 bursts, ExpiredTokenException, AccessDenied…, optionally after storing the records
//! so the outcome is ambiguous), stalls longer than the client's timeout (optionally after
//! storing), and a reshard (every open shard split in two) after a given number of requests.
//!
//! Invariants: a record is stored at most once per accepted request; every stored record
//! remembers the index of the PutRecords request that stored it, so tests can tell duplicates
//! caused by unknown outcomes from any other.

use super::{HandlerFuture, ResponseBody, full_response};
use crate::telemetry::HashKey;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const JSON: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "Kinesis_20131202.";
const MAX_REQUEST_BYTES: usize = 5 << 20;
const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
const SEQUENCE_BASE: u128 = 49_000_000_000_000_000_000_000_000_000_000_000_000;

/// A whole-request error to answer instead of (or after) storing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedError {
    /// HTTP status.
    pub status: u16,
    /// `__type` code.
    pub code: String,
    /// Message.
    pub message: String,
    /// Store the records first, then answer the error (outcome unknown to the client).
    pub after_store: bool,
}

impl ScriptedError {
    /// An error answered without storing anything.
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        ScriptedError {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            after_store: false,
        }
    }
}

/// Scripted faults for PutRecords/PutRecord.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Fail every n-th incoming record with ProvisionedThroughputExceededException …
    pub throttle_every: Option<u64>,
    /// … this many records in total.
    pub throttle_budget: u64,
    /// Fail every n-th record with InternalFailure (budget shared with throttling order).
    pub internal_failure_every: Option<u64>,
    /// … this many records in total.
    pub internal_failure_budget: u64,
    /// Errors for the next requests, one per request, in order.
    pub scripted: VecDeque<ScriptedError>,
    /// Stall the next this-many requests …
    pub stall_requests: u32,
    /// … for this long …
    pub stall_for: Duration,
    /// … after storing their records (a timeout whose outcome is unknown) or before.
    pub stall_after_store: bool,
    /// Split every open shard in two once this many more PutRecords requests were served.
    pub reshard_after_requests: Option<u64>,
    /// ListShards page size (to exercise pagination).
    pub list_shards_page_size: Option<usize>,
    /// A request holding a record (or an aggregated sub-record) with this partition key is
    /// rejected whole with ValidationException: a poison record.
    pub poison_partition_key: Option<String>,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Sequence number.
    pub sequence_number: String,
    /// Partition key.
    pub partition_key: String,
    /// Explicit hash key as sent.
    pub explicit_hash_key: Option<String>,
    /// Data (raw).
    pub data: Bytes,
    /// Index of the PutRecords/PutRecord request that stored it.
    pub request_index: u64,
    /// Arrival time, Unix ms.
    pub arrival_ms: u64,
}

/// A shard as the fake keeps it.
#[derive(Debug, Clone)]
pub struct LocalShard {
    /// Id.
    pub id: String,
    /// Inclusive start.
    pub start: u128,
    /// Inclusive end.
    pub end: u128,
    /// Parent after a split.
    pub parent: Option<String>,
    /// Closed by a reshard.
    pub closed: bool,
    /// First sequence number.
    pub starting_sequence: u128,
    /// Last sequence number when closed.
    pub ending_sequence: Option<u128>,
    /// Stored records, in order.
    pub records: Vec<StoredRecord>,
}

struct Stream {
    name: String,
    shards: Vec<LocalShard>,
    max_record_bytes: usize,
    created_ms: u64,
}

/// Counters of what the fake did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// PutRecords/PutRecord requests received.
    pub put_requests: u64,
    /// Records stored.
    pub records_stored: u64,
    /// Records answered with ProvisionedThroughputExceededException.
    pub records_throttled: u64,
    /// Records answered with InternalFailure.
    pub records_internal_failure: u64,
    /// Requests answered with a scripted error.
    pub scripted_errors: u64,
    /// Requests stalled.
    pub stalls: u64,
    /// Reshards done.
    pub reshards: u64,
    /// Requests without an Authorization header.
    pub unsigned_requests: u64,
    /// Requests rejected for a broken limit or a poison record.
    pub validation_errors: u64,
    /// Indices of requests whose records were stored but whose answer was an error or came
    /// too late: the client cannot know the outcome.
    pub ambiguous_requests: Vec<u64>,
}

#[derive(Default)]
struct State {
    streams: BTreeMap<String, Stream>,
    faults: FaultPlan,
    stats: FakeStats,
    sequence: u128,
    incoming_records: u64,
}

/// The KDS handler. Share it (`Arc`) with the server and the test.
#[derive(Default)]
pub struct KdsHandler {
    state: Mutex<State>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn error(status: u16, code: &str, message: &str) -> (u16, Value) {
    (status, json!({"__type": code, "message": message}))
}

/// Splits 0..=2^128-1 into `count` ranges the way AWS does: starts at multiples of
/// floor(2^128 / count), the last range ending at 2^128-1.
fn even_ranges(count: u128) -> Vec<(u128, u128)> {
    let count = count.max(1);
    // floor(2^128 / count) without overflowing: (MAX + 1) / count.
    let step = (u128::MAX / count).saturating_add(u128::from(u128::MAX % count + 1 == count));
    (0..count)
        .map(|i| {
            let start = i.saturating_mul(step);
            let end = if i + 1 == count {
                u128::MAX
            } else {
                (i + 1) * step - 1
            };
            (start, end)
        })
        .collect()
}

/// A record of a put request: key, explicit hash key as sent, effective hash key, data.
type ParsedRecord = (String, Option<String>, u128, Bytes);

fn shard_id(index: usize) -> String {
    format!("shardId-{index:012}")
}

fn stream_name(body: &Value) -> Option<String> {
    if let Some(name) = body.get("StreamName").and_then(Value::as_str) {
        return Some(name.to_owned());
    }
    body.get("StreamARN")
        .and_then(Value::as_str)
        .and_then(|arn| arn.rsplit('/').next())
        .map(str::to_owned)
}

impl KdsHandler {
    /// An empty fake (no streams).
    pub fn new() -> Arc<Self> {
        Arc::new(KdsHandler::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a stream directly (tests, demo) with `shards` even shards.
    pub fn create_stream(&self, name: &str, shards: u32) -> bool {
        self.lock().create(name, shards, DEFAULT_MAX_RECORD_BYTES)
    }

    /// Replaces the fault plan.
    pub fn set_faults(&self, faults: FaultPlan) {
        self.lock().faults = faults;
    }

    /// Edits the fault plan in place.
    pub fn with_faults<R>(&self, edit: impl FnOnce(&mut FaultPlan) -> R) -> R {
        edit(&mut self.lock().faults)
    }

    /// Counters.
    pub fn stats(&self) -> FakeStats {
        self.lock().stats.clone()
    }

    /// A copy of the stream's shards with their records.
    pub fn shards(&self, stream: &str) -> Vec<LocalShard> {
        self.lock()
            .streams
            .get(stream)
            .map(|s| s.shards.clone())
            .unwrap_or_default()
    }

    /// Splits every open shard of `stream` in two now.
    pub fn reshard(&self, stream: &str) {
        let mut state = self.lock();
        state.reshard(stream);
    }

    fn dispatch(
        &self,
        operation: &str,
        body: &Value,
        authorized: bool,
    ) -> (u16, Value, Option<Duration>) {
        let mut state = self.lock();
        if !authorized {
            state.stats.unsigned_requests += 1;
            let (status, body) = error(
                400,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            );
            return (status, body, None);
        }
        let (status, body, stall) = match operation {
            "CreateStream" => {
                let (s, b) = state.op_create_stream(body);
                (s, b, None)
            }
            "DescribeStreamSummary" => {
                let (s, b) = state.op_describe_summary(body);
                (s, b, None)
            }
            "ListShards" => {
                let (s, b) = state.op_list_shards(body);
                (s, b, None)
            }
            "PutRecords" => state.op_put(body, true),
            "PutRecord" => state.op_put(body, false),
            "GetShardIterator" => {
                let (s, b) = state.op_get_shard_iterator(body);
                (s, b, None)
            }
            "GetRecords" => {
                let (s, b) = state.op_get_records(body);
                (s, b, None)
            }
            other => {
                let (s, b) = error(
                    400,
                    "UnknownOperationException",
                    &format!("{other} is not served locally"),
                );
                (s, b, None)
            }
        };
        (status, body, stall)
    }
}

impl State {
    fn create(&mut self, name: &str, shards: u32, max_record_bytes: usize) -> bool {
        if self.streams.contains_key(name) {
            return false;
        }
        let ranges = even_ranges(u128::from(shards));
        let base = self.sequence;
        let shards = ranges
            .into_iter()
            .enumerate()
            .map(|(i, (start, end))| LocalShard {
                id: shard_id(i),
                start,
                end,
                parent: None,
                closed: false,
                starting_sequence: SEQUENCE_BASE + base,
                ending_sequence: None,
                records: Vec::new(),
            })
            .collect();
        self.streams.insert(
            name.to_owned(),
            Stream {
                name: name.to_owned(),
                shards,
                max_record_bytes,
                created_ms: now_ms(),
            },
        );
        true
    }

    fn reshard(&mut self, stream: &str) {
        let sequence = SEQUENCE_BASE + self.sequence;
        let Some(stream) = self.streams.get_mut(stream) else {
            return;
        };
        let mut children = Vec::new();
        let mut next_index = stream.shards.len();
        for shard in stream.shards.iter_mut().filter(|s| !s.closed) {
            shard.closed = true;
            shard.ending_sequence = Some(sequence);
            let middle = shard.start + (shard.end - shard.start) / 2;
            for (start, end) in [(shard.start, middle), (middle + 1, shard.end)] {
                children.push(LocalShard {
                    id: shard_id(next_index),
                    start,
                    end,
                    parent: Some(shard.id.clone()),
                    closed: false,
                    starting_sequence: sequence + 1,
                    ending_sequence: None,
                    records: Vec::new(),
                });
                next_index += 1;
            }
        }
        stream.shards.extend(children);
        self.stats.reshards += 1;
    }

    fn stream(&self, body: &Value) -> Result<&Stream, (u16, Value)> {
        let name = stream_name(body).ok_or_else(|| {
            error(
                400,
                "ValidationException",
                "StreamName or StreamARN is required",
            )
        })?;
        self.streams.get(&name).ok_or_else(|| {
            error(
                400,
                "ResourceNotFoundException",
                &format!("Stream {name} under account 000000000000 not found."),
            )
        })
    }

    fn op_create_stream(&mut self, body: &Value) -> (u16, Value) {
        let Some(name) = body.get("StreamName").and_then(Value::as_str) else {
            return error(400, "ValidationException", "StreamName is required");
        };
        let shards = body
            .get("ShardCount")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 1024) as u32;
        let max = body
            .get("MaxRecordSizeInKiB")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_MAX_RECORD_BYTES, |kib| {
                (kib as usize).saturating_mul(1024)
            });
        if self.create(name, shards, max) {
            (200, json!({}))
        } else {
            error(
                400,
                "ResourceInUseException",
                &format!("Stream {name} under account 000000000000 already exists."),
            )
        }
    }

    fn op_describe_summary(&self, body: &Value) -> (u16, Value) {
        let stream = match self.stream(body) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let open = stream.shards.iter().filter(|s| !s.closed).count();
        (
            200,
            json!({"StreamDescriptionSummary": {
                "StreamName": stream.name,
                "StreamARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{}", stream.name),
                "StreamStatus": "ACTIVE",
                "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "RetentionPeriodHours": 24,
                "StreamCreationTimestamp": stream.created_ms as f64 / 1000.0,
                "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
                "EncryptionType": "NONE",
                "OpenShardCount": open,
                "ConsumerCount": 0,
                "MaxRecordSizeInKiB": stream.max_record_bytes / 1024,
            }}),
        )
    }

    fn op_list_shards(&self, body: &Value) -> (u16, Value) {
        let (name, offset) = match body.get("NextToken").and_then(Value::as_str) {
            Some(token) => {
                if stream_name(body).is_some() {
                    return error(
                        400,
                        "InvalidArgumentException",
                        "NextToken and StreamName cannot be provided together.",
                    );
                }
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                let Some((name, offset)) = decoded.as_deref().and_then(|t| t.rsplit_once('|'))
                else {
                    return error(400, "InvalidArgumentException", "NextToken is not valid");
                };
                let Ok(offset) = offset.parse::<usize>() else {
                    return error(400, "InvalidArgumentException", "NextToken is not valid");
                };
                (name.to_owned(), offset)
            }
            None => match stream_name(body) {
                Some(name) => (name, 0),
                None => {
                    return error(
                        400,
                        "ValidationException",
                        "StreamName or NextToken is required",
                    );
                }
            },
        };
        let Some(stream) = self.streams.get(&name) else {
            return error(
                400,
                "ResourceNotFoundException",
                &format!("Stream {name} not found."),
            );
        };
        let max = body
            .get("MaxResults")
            .and_then(Value::as_u64)
            .unwrap_or(1000)
            .clamp(1, 10_000) as usize;
        let page = self
            .faults
            .list_shards_page_size
            .unwrap_or(max)
            .min(max)
            .max(1);
        let shards: Vec<Value> = stream
            .shards
            .iter()
            .skip(offset)
            .take(page)
            .map(|s| {
                let mut range = json!({"StartingSequenceNumber": s.starting_sequence.to_string()});
                if let Some(end) = s.ending_sequence {
                    range["EndingSequenceNumber"] = json!(end.to_string());
                }
                let mut shard = json!({
                    "ShardId": s.id,
                    "HashKeyRange": {"StartingHashKey": s.start.to_string(), "EndingHashKey": s.end.to_string()},
                    "SequenceNumberRange": range,
                });
                if let Some(parent) = &s.parent {
                    shard["ParentShardId"] = json!(parent);
                }
                shard
            })
            .collect();
        let mut answer = json!({"Shards": shards});
        if offset + page < stream.shards.len() {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{name}|{}", offset + page));
            answer["NextToken"] = json!(token);
        }
        (200, answer)
    }

    /// Validates and parses records: (key, explicit hash key text, hash key, data).
    fn parse_records(
        &mut self,
        body: &Value,
        batch: bool,
        max_record_bytes: usize,
    ) -> Result<Vec<ParsedRecord>, (u16, Value)> {
        let items: Vec<&Value> = if batch {
            let Some(records) = body.get("Records").and_then(Value::as_array) else {
                return Err(error(400, "ValidationException", "Records is required"));
            };
            records.iter().collect()
        } else {
            vec![body]
        };
        if items.is_empty() || items.len() > 500 {
            self.stats.validation_errors += 1;
            return Err(error(
                400,
                "ValidationException",
                &format!(
                    "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length between 1 and 500 (got {})",
                    items.len()
                ),
            ));
        }
        let mut total = 0;
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let key = item
                .get("PartitionKey")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let chars = key.chars().count();
            if !(1..=256).contains(&chars) {
                self.stats.validation_errors += 1;
                return Err(error(
                    400,
                    "ValidationException",
                    &format!("record {index}: partition key has {chars} characters, not 1..256"),
                ));
            }
            let data = item
                .get("Data")
                .and_then(Value::as_str)
                .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
            let Some(data) = data else {
                self.stats.validation_errors += 1;
                return Err(error(
                    400,
                    "SerializationException",
                    &format!("record {index}: Data is missing or not base64"),
                ));
            };
            if data.len() + key.len() > max_record_bytes {
                self.stats.validation_errors += 1;
                return Err(error(
                    400,
                    "ValidationException",
                    &format!(
                        "record {index}: data + partition key is {} bytes, more than {max_record_bytes}",
                        data.len() + key.len()
                    ),
                ));
            }
            total += data.len() + key.len();
            let explicit = item
                .get("ExplicitHashKey")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let hash = match &explicit {
                Some(text) => match HashKey::parse_decimal(text) {
                    Ok(h) => h.0,
                    Err(e) => {
                        self.stats.validation_errors += 1;
                        return Err(error(
                            400,
                            "InvalidArgumentException",
                            &format!("record {index}: {e}"),
                        ));
                    }
                },
                None => HashKey::from_partition_key(key).0,
            };
            out.push((key.to_owned(), explicit, hash, Bytes::from(data)));
        }
        if total > MAX_REQUEST_BYTES {
            self.stats.validation_errors += 1;
            return Err(error(
                400,
                "InvalidArgumentException",
                &format!("Records size exceeds 5 MB limit ({total} bytes)"),
            ));
        }
        Ok(out)
    }

    fn op_put(&mut self, body: &Value, batch: bool) -> (u16, Value, Option<Duration>) {
        let request_index = self.stats.put_requests;
        self.stats.put_requests += 1;
        let (name, max_record_bytes) = match self.stream(body) {
            Ok(s) => (s.name.clone(), s.max_record_bytes),
            Err((status, body)) => return (status, body, None),
        };
        let records = match self.parse_records(body, batch, max_record_bytes) {
            Ok(r) => r,
            Err((status, body)) => return (status, body, None),
        };
        if let Some(poison) = self.faults.poison_partition_key.clone() {
            let poisoned = records.iter().any(|(key, _, _, data)| {
                *key == poison
                    || crate::telemetry::aggregate::decode_aggregate(data)
                        .is_ok_and(|subs| subs.iter().any(|s| s.partition_key == poison))
            });
            if poisoned {
                self.stats.validation_errors += 1;
                let (status, body) = error(
                    400,
                    "ValidationException",
                    &format!("record with partition key {poison} is not acceptable"),
                );
                return (status, body, None);
            }
        }
        let scripted = self.faults.scripted.pop_front();
        if let Some(fault) = scripted.as_ref().filter(|f| !f.after_store) {
            self.stats.scripted_errors += 1;
            let (status, body) = error(fault.status, &fault.code, &fault.message);
            return (status, body, None);
        }
        let stall = if self.faults.stall_requests > 0 {
            self.faults.stall_requests -= 1;
            self.stats.stalls += 1;
            Some(self.faults.stall_for)
        } else {
            None
        };
        if stall.is_some() && !self.faults.stall_after_store {
            // Stalled before storing: the client times out and nothing was written.
            return (
                500,
                error(500, "InternalFailure", "stalled before storing").1,
                stall,
            );
        }
        let mut results = Vec::with_capacity(records.len());
        let mut failed = 0;
        for (key, explicit, hash, data) in records {
            self.incoming_records += 1;
            let n = self.incoming_records;
            if let Some(every) = self.faults.throttle_every
                && self.faults.throttle_budget > 0
                && n.is_multiple_of(every.max(1))
            {
                self.faults.throttle_budget -= 1;
                self.stats.records_throttled += 1;
                failed += 1;
                results.push(json!({
                    "ErrorCode": "ProvisionedThroughputExceededException",
                    "ErrorMessage": format!("Rate exceeded for shard in stream {name} under account 000000000000."),
                }));
                continue;
            }
            if let Some(every) = self.faults.internal_failure_every
                && self.faults.internal_failure_budget > 0
                && n.is_multiple_of(every.max(1))
            {
                self.faults.internal_failure_budget -= 1;
                self.stats.records_internal_failure += 1;
                failed += 1;
                results.push(json!({"ErrorCode": "InternalFailure", "ErrorMessage": "Internal service failure."}));
                continue;
            }
            self.sequence += 1;
            let sequence = SEQUENCE_BASE + self.sequence;
            let Some(stream) = self.streams.get_mut(&name) else {
                break;
            };
            let Some(shard) = stream
                .shards
                .iter_mut()
                .find(|s| !s.closed && s.start <= hash && hash <= s.end)
            else {
                failed += 1;
                results.push(json!({"ErrorCode": "InternalFailure", "ErrorMessage": "no open shard for the hash key"}));
                continue;
            };
            shard.records.push(StoredRecord {
                sequence_number: sequence.to_string(),
                partition_key: key,
                explicit_hash_key: explicit,
                data,
                request_index,
                arrival_ms: now_ms(),
            });
            self.stats.records_stored += 1;
            results.push(json!({"SequenceNumber": sequence.to_string(), "ShardId": shard.id}));
        }
        if let Some(after) = self.faults.reshard_after_requests {
            if after <= 1 {
                self.faults.reshard_after_requests = None;
                self.reshard(&name);
            } else {
                self.faults.reshard_after_requests = Some(after - 1);
            }
        }
        if stall.is_some() {
            self.stats.ambiguous_requests.push(request_index);
        }
        if let Some(fault) = scripted {
            self.stats.scripted_errors += 1;
            if !self.stats.ambiguous_requests.contains(&request_index) {
                self.stats.ambiguous_requests.push(request_index);
            }
            let (status, body) = error(fault.status, &fault.code, &fault.message);
            return (status, body, None);
        }
        let answer = if batch {
            json!({"FailedRecordCount": failed, "Records": results, "EncryptionType": "NONE"})
        } else {
            match results.into_iter().next() {
                Some(result) if result.get("ErrorCode").is_some() => {
                    let code = result["ErrorCode"]
                        .as_str()
                        .unwrap_or("InternalFailure")
                        .to_owned();
                    let status = if code == "InternalFailure" { 500 } else { 400 };
                    let message = result["ErrorMessage"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    return (status, error(status, &code, &message).1, stall);
                }
                Some(mut result) => {
                    result["EncryptionType"] = json!("NONE");
                    result
                }
                None => json!({}),
            }
        };
        (200, answer, stall)
    }

    fn op_get_shard_iterator(&self, body: &Value) -> (u16, Value) {
        let stream = match self.stream(body) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let shard_id = body
            .get("ShardId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(shard) = stream.shards.iter().find(|s| s.id == shard_id) else {
            return error(
                400,
                "ResourceNotFoundException",
                &format!("Shard {shard_id} in stream {} not found.", stream.name),
            );
        };
        let kind = body
            .get("ShardIteratorType")
            .and_then(Value::as_str)
            .unwrap_or("TRIM_HORIZON");
        let start_at = body
            .get("StartingSequenceNumber")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let position = match kind {
            "TRIM_HORIZON" => 0,
            "LATEST" => shard.records.len(),
            "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER" => {
                let found = shard
                    .records
                    .iter()
                    .position(|r| r.sequence_number == start_at);
                match found {
                    Some(i) if kind == "AT_SEQUENCE_NUMBER" => i,
                    Some(i) => i + 1,
                    None => {
                        return error(
                            400,
                            "InvalidArgumentException",
                            &format!("sequence number {start_at} not in shard {shard_id}"),
                        );
                    }
                }
            }
            other => {
                return error(
                    400,
                    "InvalidArgumentException",
                    &format!("ShardIteratorType {other} is not supported locally"),
                );
            }
        };
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}|{}|{position}", stream.name, shard.id));
        (200, json!({"ShardIterator": token}))
    }

    fn op_get_records(&self, body: &Value) -> (u16, Value) {
        let token = body
            .get("ShardIterator")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let parts: Option<(String, String, usize)> = decoded.as_deref().and_then(|t| {
            let mut it = t.splitn(3, '|');
            let name = it.next()?.to_owned();
            let shard = it.next()?.to_owned();
            let position = it.next()?.parse().ok()?;
            Some((name, shard, position))
        });
        let Some((name, shard_id, position)) = parts else {
            return error(
                400,
                "InvalidArgumentException",
                "ShardIterator is not valid",
            );
        };
        let limit = body
            .get("Limit")
            .and_then(Value::as_u64)
            .unwrap_or(10_000)
            .clamp(1, 10_000) as usize;
        let Some(shard) = self
            .streams
            .get(&name)
            .and_then(|s| s.shards.iter().find(|s| s.id == shard_id))
        else {
            return error(
                400,
                "ResourceNotFoundException",
                &format!("Shard {shard_id} not found."),
            );
        };
        let records: Vec<Value> = shard
            .records
            .iter()
            .skip(position)
            .take(limit)
            .map(|r| {
                let mut record = json!({
                    "SequenceNumber": r.sequence_number,
                    "ApproximateArrivalTimestamp": r.arrival_ms as f64 / 1000.0,
                    "Data": base64::engine::general_purpose::STANDARD.encode(&r.data),
                    "PartitionKey": r.partition_key,
                });
                if let Some(ehk) = &r.explicit_hash_key {
                    record["ExplicitHashKey"] = json!(ehk);
                }
                record
            })
            .collect();
        let next = position + records.len();
        let mut answer = json!({"Records": records, "MillisBehindLatest": 0});
        if !(shard.closed && next >= shard.records.len()) {
            answer["NextShardIterator"] = json!(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{name}|{shard_id}|{next}"))
            );
        }
        (200, answer)
    }
}

/// Path of the fault-injection control: `POST` a [`FaultControl`] JSON document.
pub const FAULTS_PATH: &str = "/_local/kds/faults";
/// Path of the counters: `GET` answers [`FakeStats`] as JSON.
pub const STATS_PATH: &str = "/_local/kds/stats";

/// A scripted error as the control takes it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedErrorControl {
    /// HTTP status.
    pub status: u16,
    /// Error code.
    pub code: String,
    /// Message.
    #[serde(default)]
    pub message: String,
    /// Store the records first.
    #[serde(default)]
    pub after_store: bool,
}

/// The fault plan as JSON, for the demo and for processes other than the test (every field
/// optional; absent fields are off). `reshard_now` splits that stream's open shards at once.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultControl {
    /// See [`FaultPlan::throttle_every`].
    pub throttle_every: Option<u64>,
    /// See [`FaultPlan::throttle_budget`].
    #[serde(default)]
    pub throttle_budget: u64,
    /// See [`FaultPlan::internal_failure_every`].
    pub internal_failure_every: Option<u64>,
    /// See [`FaultPlan::internal_failure_budget`].
    #[serde(default)]
    pub internal_failure_budget: u64,
    /// See [`FaultPlan::scripted`].
    #[serde(default)]
    pub scripted: Vec<ScriptedErrorControl>,
    /// See [`FaultPlan::stall_requests`].
    #[serde(default)]
    pub stall_requests: u32,
    /// See [`FaultPlan::stall_for`], in milliseconds.
    #[serde(default)]
    pub stall_for_ms: u64,
    /// See [`FaultPlan::stall_after_store`].
    #[serde(default)]
    pub stall_after_store: bool,
    /// See [`FaultPlan::reshard_after_requests`].
    pub reshard_after_requests: Option<u64>,
    /// See [`FaultPlan::list_shards_page_size`].
    pub list_shards_page_size: Option<usize>,
    /// See [`FaultPlan::poison_partition_key`].
    pub poison_partition_key: Option<String>,
    /// Split this stream's open shards now.
    pub reshard_now: Option<String>,
}

impl From<FaultControl> for FaultPlan {
    fn from(control: FaultControl) -> Self {
        FaultPlan {
            throttle_every: control.throttle_every,
            throttle_budget: control.throttle_budget,
            internal_failure_every: control.internal_failure_every,
            internal_failure_budget: control.internal_failure_budget,
            scripted: control
                .scripted
                .into_iter()
                .map(|e| ScriptedError {
                    status: e.status,
                    code: e.code,
                    message: e.message,
                    after_store: e.after_store,
                })
                .collect(),
            stall_requests: control.stall_requests,
            stall_for: Duration::from_millis(control.stall_for_ms),
            stall_after_store: control.stall_after_store,
            reshard_after_requests: control.reshard_after_requests,
            list_shards_page_size: control.list_shards_page_size,
            poison_partition_key: control.poison_partition_key,
        }
    }
}

impl KdsHandler {
    async fn control(
        self: Arc<Self>,
        request: http::Request<Incoming>,
    ) -> http::Response<ResponseBody> {
        if request.uri().path() == STATS_PATH {
            let stats = self.stats();
            return json_response(
                200,
                &json!({
                    "put_requests": stats.put_requests,
                    "records_stored": stats.records_stored,
                    "records_throttled": stats.records_throttled,
                    "records_internal_failure": stats.records_internal_failure,
                    "scripted_errors": stats.scripted_errors,
                    "stalls": stats.stalls,
                    "reshards": stats.reshards,
                    "unsigned_requests": stats.unsigned_requests,
                    "validation_errors": stats.validation_errors,
                    "ambiguous_requests": stats.ambiguous_requests,
                }),
            );
        }
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return json_response(400, &json!({"message": format!("reading the body: {e}")}));
            }
        };
        let control: FaultControl = match serde_json::from_slice(&body) {
            Ok(control) => control,
            Err(e) => return json_response(400, &json!({"message": format!("fault plan: {e}")})),
        };
        if let Some(stream) = control.reshard_now.clone() {
            self.reshard(&stream);
        }
        self.set_faults(control.into());
        json_response(200, &json!({"message": "fault plan replaced"}))
    }
}

impl super::Handler for KdsHandler {
    fn accepts(&self, request: &http::Request<Incoming>) -> bool {
        let path = request.uri().path();
        let control = (path == FAULTS_PATH && request.method() == http::Method::POST)
            || (path == STATS_PATH && request.method() == http::Method::GET);
        control
            || request
                .headers()
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with(TARGET_PREFIX))
    }

    fn handle(self: Arc<Self>, request: http::Request<Incoming>) -> HandlerFuture {
        Box::pin(async move {
            if request.headers().get("x-amz-target").is_none() {
                return self.control(request).await;
            }
            let operation = request
                .headers()
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .and_then(|t| t.strip_prefix(TARGET_PREFIX))
                .unwrap_or_default()
                .to_owned();
            let authorized = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential="));
            let body = match request.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return json_response(
                        400,
                        &error(
                            400,
                            "SerializationException",
                            &format!("reading the body: {e}"),
                        )
                        .1,
                    );
                }
            };
            let parsed: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return json_response(
                        400,
                        &error(
                            400,
                            "SerializationException",
                            &format!("body is not JSON: {e}"),
                        )
                        .1,
                    );
                }
            };
            let (status, answer, stall) = self.dispatch(&operation, &parsed, authorized);
            if let Some(stall) = stall {
                tokio::time::sleep(stall).await;
            }
            json_response(status, &answer)
        })
    }
}

fn json_response(status: u16, body: &Value) -> http::Response<ResponseBody> {
    let mut response = full_response(status, JSON, body.to_string());
    if status >= 400
        && let Some(code) = body.get("__type").and_then(Value::as_str)
        && let Ok(value) = http::HeaderValue::from_str(code)
    {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_cover_the_key_space_like_aws() {
        assert_eq!(even_ranges(1), vec![(0, u128::MAX)]);
        let two = even_ranges(2);
        assert_eq!(
            two,
            vec![(0, (1u128 << 127) - 1), (1u128 << 127, u128::MAX)]
        );
        let five = even_ranges(5);
        assert_eq!(five.first().map(|r| r.0), Some(0));
        assert_eq!(five.last().map(|r| r.1), Some(u128::MAX));
        for pair in five.windows(2) {
            if let [a, b] = pair {
                assert_eq!(a.1 + 1, b.0);
            }
        }
    }

    #[test]
    fn reshard_closes_parents_and_splits_ranges() {
        let handler = KdsHandler::default();
        assert!(handler.create_stream("s", 2));
        handler.reshard("s");
        let shards = handler.shards("s");
        assert_eq!(shards.len(), 6);
        assert_eq!(shards.iter().filter(|s| !s.closed).count(), 4);
        let open: Vec<_> = shards.iter().filter(|s| !s.closed).collect();
        assert_eq!(open.first().map(|s| s.start), Some(0));
        assert_eq!(open.last().map(|s| s.end), Some(u128::MAX));
        assert!(open.iter().all(|s| s.parent.is_some()));
    }
}
