//! KPL aggregated records: several user records inside one Kinesis record.
//!
//! Byte layout (reference kds-producer §2.2): magic `F3 89 9A C2`, the proto2 serialization of
//! `AggregatedRecord { repeated string partition_key_table = 1; repeated string
//! explicit_hash_key_table = 2; repeated Record records = 3; }` with `Record { uint64
//! partition_key_index = 1; optional uint64 explicit_hash_key_index = 2; bytes data = 3; }`,
//! then the MD5 of the protobuf bytes. The format is small enough that a hand encoder is leaner
//! than prost plus generated code.
//!
//! Invariants kept by [`AggregateBuilder`]:
//! * its size is tracked exactly (not estimated) as members are added, so an aggregate never
//!   exceeds the limit it was built for;
//! * partition keys and explicit hash keys are de-duplicated into the tables;
//! * one member is sent raw (its own key, its own data as a `Bytes` slice, no copy);
//! * the outer record's key is [`AGGREGATE_PARTITION_KEY`] and its explicit hash key is the
//!   first member's hash key, so placement never depends on MD5("a"). The caller only puts
//!   records predicted for the same shard into one builder.

use super::record::{HashKey, UserRecord};
use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use std::collections::HashMap;

/// First four bytes of every aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Partition key of the outer Kinesis record that carries an aggregate (as the KPL does).
pub const AGGREGATE_PARTITION_KEY: &str = "a";
/// Magic plus MD5 trailer.
pub const AGGREGATE_OVERHEAD: usize = KPL_MAGIC.len() + 16;
/// The KPL's default for the largest aggregate (`AggregationMaxSize`).
pub const DEFAULT_AGGREGATION_MAX_BYTES: usize = 51_200;

const TAG_PARTITION_KEY_TABLE: u8 = (1 << 3) | 2;
const TAG_EXPLICIT_HASH_KEY_TABLE: u8 = (2 << 3) | 2;
const TAG_RECORDS: u8 = (3 << 3) | 2;
const TAG_PARTITION_KEY_INDEX: u8 = 1 << 3;
const TAG_EXPLICIT_HASH_KEY_INDEX: u8 = 2 << 3;
const TAG_DATA: u8 = (3 << 3) | 2;
const TAG_TAGS: u8 = (4 << 3) | 2;

/// Bytes of `value` as a protobuf varint.
pub fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Size of a length-delimited field with a one-byte tag.
fn delimited_len(payload: usize) -> usize {
    1 + varint_len(payload as u64) + payload
}

/// Digits of a hash key in decimal.
fn decimal_len(key: HashKey) -> usize {
    let mut value = key.0;
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
}

fn member_message_len(pk_index: u64, ehk_index: Option<u64>, data_len: usize) -> usize {
    1 + varint_len(pk_index)
        + ehk_index.map_or(0, |index| 1 + varint_len(index))
        + delimited_len(data_len)
}

struct Member<T> {
    handle: T,
    pk_index: u64,
    ehk_index: Option<u64>,
    data: Bytes,
}

/// The Kinesis record an aggregate (or a lone record) becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisRecord<T> {
    /// Outer partition key: `"a"` for an aggregate, the record's own key when sent raw.
    pub partition_key: String,
    /// Outer explicit hash key (set for aggregates; the caller's own for a raw record).
    pub explicit_hash_key: Option<HashKey>,
    /// The record's data: the aggregate bytes, or the lone record's data.
    pub data: Bytes,
    /// Handles of the user records inside, in order.
    pub members: Vec<T>,
    /// Hash keys of the members, in the same order (for range checks after the response).
    pub member_hash_keys: Vec<HashKey>,
    /// True when `data` is in the KPL aggregate format.
    pub aggregated: bool,
}

impl<T> KinesisRecord<T> {
    /// Bytes the service counts: data + outer partition key.
    pub fn billed_bytes(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// A user record sent alone, unaggregated (its data is shared, not copied).
    pub fn raw(handle: T, record: &UserRecord) -> Self {
        KinesisRecord {
            partition_key: record.partition_key().to_owned(),
            explicit_hash_key: record.explicit_hash_key(),
            data: record.data().clone(),
            members: vec![handle],
            member_hash_keys: vec![record.hash_key()],
            aggregated: false,
        }
    }
}

/// Collects user records bound for one shard into one aggregate, tracking its exact size.
pub struct AggregateBuilder<T> {
    max_record_bytes: usize,
    pk_table: Vec<String>,
    pk_lookup: HashMap<String, u64>,
    ehk_table: Vec<HashKey>,
    ehk_lookup: HashMap<HashKey, u64>,
    members: Vec<Member<T>>,
    member_hash_keys: Vec<HashKey>,
    first: Option<(String, Option<HashKey>)>,
    proto_len: usize,
}

impl<T> AggregateBuilder<T> {
    /// `max_record_bytes` bounds the outer record as the service counts it (data + key `"a"`),
    /// and, once a second member joins, the aggregate itself.
    pub fn new(max_record_bytes: usize) -> Self {
        AggregateBuilder {
            max_record_bytes,
            pk_table: Vec::new(),
            pk_lookup: HashMap::new(),
            ehk_table: Vec::new(),
            ehk_lookup: HashMap::new(),
            members: Vec::new(),
            member_hash_keys: Vec::new(),
            first: None,
            proto_len: 0,
        }
    }

    /// Number of user records added.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Bytes the finished Kinesis record will be billed (data + outer key).
    pub fn billed_bytes(&self) -> usize {
        match self.members.as_slice() {
            [] => 0,
            [only] => only.data.len() + self.first.as_ref().map_or(0, |(key, _)| key.len()),
            _ => AGGREGATE_OVERHEAD + self.proto_len + AGGREGATE_PARTITION_KEY.len(),
        }
    }

    /// Billed bytes the Kinesis record would have with `record` added.
    pub fn billed_bytes_with(&self, record: &UserRecord) -> usize {
        if self.members.is_empty() {
            return record.raw_bytes();
        }
        AGGREGATE_OVERHEAD + self.proto_len_with(record) + AGGREGATE_PARTITION_KEY.len()
    }

    fn proto_len_with(&self, record: &UserRecord) -> usize {
        let mut len = self.proto_len;
        let pk_index = match self.pk_lookup.get(record.partition_key()) {
            Some(&index) => index,
            None => {
                len += delimited_len(record.partition_key().len());
                self.pk_table.len() as u64
            }
        };
        let ehk_index = record
            .explicit_hash_key()
            .map(|key| match self.ehk_lookup.get(&key) {
                Some(&index) => index,
                None => {
                    len += delimited_len(decimal_len(key));
                    self.ehk_table.len() as u64
                }
            });
        len + delimited_len(member_message_len(pk_index, ehk_index, record.data().len()))
    }

    /// Adds `record` if the result still fits `max_record_bytes`; gives the handle back if not.
    /// The first record is always taken (it was checked against the limit when accepted, and
    /// goes out raw if it stays alone).
    pub fn try_add(&mut self, handle: T, record: &UserRecord) -> Result<(), T> {
        if !self.members.is_empty() && self.billed_bytes_with(record) > self.max_record_bytes {
            return Err(handle);
        }
        self.proto_len = self.proto_len_with(record);
        let pk_index = match self.pk_lookup.get(record.partition_key()) {
            Some(&index) => index,
            None => {
                let index = self.pk_table.len() as u64;
                self.pk_table.push(record.partition_key().to_owned());
                self.pk_lookup
                    .insert(record.partition_key().to_owned(), index);
                index
            }
        };
        let ehk_index = record.explicit_hash_key().map(|key| {
            *self.ehk_lookup.entry(key).or_insert_with(|| {
                self.ehk_table.push(key);
                (self.ehk_table.len() - 1) as u64
            })
        });
        if self.first.is_none() {
            self.first = Some((
                record.partition_key().to_owned(),
                record.explicit_hash_key(),
            ));
        }
        self.members.push(Member {
            handle,
            pk_index,
            ehk_index,
            data: record.data().clone(),
        });
        self.member_hash_keys.push(record.hash_key());
        Ok(())
    }

    /// The finished Kinesis record: raw for one member, an aggregate otherwise; `None` if empty.
    pub fn finish(self) -> Option<KinesisRecord<T>> {
        let (first_key, first_ehk) = self.first?;
        if self.members.len() == 1 {
            let data = self
                .members
                .first()
                .map(|m| m.data.clone())
                .unwrap_or_default();
            return Some(KinesisRecord {
                partition_key: first_key,
                explicit_hash_key: first_ehk,
                data,
                members: self.members.into_iter().map(|m| m.handle).collect(),
                member_hash_keys: self.member_hash_keys,
                aggregated: false,
            });
        }
        let mut out = BytesMut::with_capacity(AGGREGATE_OVERHEAD + self.proto_len);
        out.put_slice(&KPL_MAGIC);
        for key in &self.pk_table {
            out.put_u8(TAG_PARTITION_KEY_TABLE);
            put_varint(&mut out, key.len() as u64);
            out.put_slice(key.as_bytes());
        }
        let mut decimal = String::with_capacity(39);
        for key in &self.ehk_table {
            decimal.clear();
            use std::fmt::Write as _;
            // Writing into a String cannot fail.
            let _ = write!(decimal, "{key}");
            out.put_u8(TAG_EXPLICIT_HASH_KEY_TABLE);
            put_varint(&mut out, decimal.len() as u64);
            out.put_slice(decimal.as_bytes());
        }
        for member in &self.members {
            out.put_u8(TAG_RECORDS);
            let len = member_message_len(member.pk_index, member.ehk_index, member.data.len());
            put_varint(&mut out, len as u64);
            out.put_u8(TAG_PARTITION_KEY_INDEX);
            put_varint(&mut out, member.pk_index);
            if let Some(index) = member.ehk_index {
                out.put_u8(TAG_EXPLICIT_HASH_KEY_INDEX);
                put_varint(&mut out, index);
            }
            out.put_u8(TAG_DATA);
            put_varint(&mut out, member.data.len() as u64);
            out.put_slice(&member.data);
        }
        let digest: [u8; 16] = Md5::digest(out.get(KPL_MAGIC.len()..).unwrap_or_default()).into();
        out.put_slice(&digest);
        let outer_hash_key = self.member_hash_keys.first().copied();
        Some(KinesisRecord {
            partition_key: AGGREGATE_PARTITION_KEY.to_owned(),
            explicit_hash_key: outer_hash_key,
            data: out.freeze(),
            members: self.members.into_iter().map(|m| m.handle).collect(),
            member_hash_keys: self.member_hash_keys,
            aggregated: true,
        })
    }
}

/// What is wrong with bytes that claim to be an aggregate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateDecodeError {
    /// Does not start with the magic or is shorter than magic + MD5.
    #[error("not an aggregated record (no KPL magic, or shorter than 20 bytes)")]
    NotAggregated,
    /// The MD5 trailer does not match the protobuf bytes.
    #[error("MD5 trailer does not match the {protobuf_len} protobuf bytes")]
    ChecksumMismatch {
        /// Length of the protobuf part.
        protobuf_len: usize,
    },
    /// The protobuf is malformed.
    #[error("malformed protobuf at byte {offset} of the aggregate: {reason}")]
    Malformed {
        /// Offset from the start of the aggregated record.
        offset: usize,
        /// What was found there.
        reason: &'static str,
    },
}

/// One sub-record of a decoded aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Its partition key (resolved from the table).
    pub partition_key: String,
    /// Its explicit hash key, when it had one.
    pub explicit_hash_key: Option<HashKey>,
    /// Its data (a slice of the aggregate).
    pub data: Bytes,
}

impl DecodedRecord {
    /// The effective hash key (explicit, else MD5 of the partition key).
    pub fn hash_key(&self) -> HashKey {
        self.explicit_hash_key
            .unwrap_or_else(|| HashKey::from_partition_key(&self.partition_key))
    }
}

/// True when `data` has the magic and room for the MD5 trailer.
pub fn looks_aggregated(data: &[u8]) -> bool {
    data.len() > AGGREGATE_OVERHEAD && data.starts_with(&KPL_MAGIC)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: &'static str) -> AggregateDecodeError {
        AggregateDecodeError::Malformed {
            offset: self.base + self.pos,
            reason,
        }
    }

    fn varint(&mut self) -> Result<u64, AggregateDecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.malformed("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint longer than 10 bytes"))
    }

    fn delimited(&mut self) -> Result<(&'a [u8], usize), AggregateDecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| self.malformed("length overflow"))?;
        let start = self.pos;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.malformed("length runs past the end"))?;
        self.pos = end;
        Ok((self.bytes.get(start..end).unwrap_or_default(), start))
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), AggregateDecodeError> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.advance(8),
            2 => self.delimited().map(drop),
            5 => self.advance(4),
            _ => Err(self.malformed("unsupported wire type")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), AggregateDecodeError> {
        if self.bytes.len() - self.pos < n {
            return Err(self.malformed("fixed field runs past the end"));
        }
        self.pos += n;
        Ok(())
    }
}

fn utf8(bytes: &[u8], offset: usize) -> Result<String, AggregateDecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| AggregateDecodeError::Malformed {
            offset,
            reason: "string field is not UTF-8",
        })
}

/// Decodes an aggregated record (checking magic and MD5) into its user records, in order.
/// Data is sliced from `aggregate`, not copied.
pub fn decode_aggregate(aggregate: &Bytes) -> Result<Vec<DecodedRecord>, AggregateDecodeError> {
    if !looks_aggregated(aggregate) {
        return Err(AggregateDecodeError::NotAggregated);
    }
    let proto_end = aggregate.len() - 16;
    let proto = aggregate
        .get(KPL_MAGIC.len()..proto_end)
        .ok_or(AggregateDecodeError::NotAggregated)?;
    let digest: [u8; 16] = Md5::digest(proto).into();
    if aggregate.get(proto_end..) != Some(&digest[..]) {
        return Err(AggregateDecodeError::ChecksumMismatch {
            protobuf_len: proto.len(),
        });
    }
    let base = KPL_MAGIC.len();
    let mut reader = Reader {
        bytes: proto,
        pos: 0,
        base,
    };
    let mut pk_table = Vec::new();
    let mut ehk_table = Vec::new();
    // (pk index, ehk index, data range within the aggregate, offset for errors)
    let mut raw_records = Vec::new();
    while reader.pos < proto.len() {
        let key = reader.varint()?;
        match key {
            k if k == u64::from(TAG_PARTITION_KEY_TABLE) => {
                let (bytes, at) = reader.delimited()?;
                pk_table.push(utf8(bytes, base + at)?);
            }
            k if k == u64::from(TAG_EXPLICIT_HASH_KEY_TABLE) => {
                let (bytes, at) = reader.delimited()?;
                let text = utf8(bytes, base + at)?;
                let key =
                    HashKey::parse_decimal(&text).map_err(|_| AggregateDecodeError::Malformed {
                        offset: base + at,
                        reason: "explicit hash key table entry is not a valid hash key",
                    })?;
                ehk_table.push(key);
            }
            k if k == u64::from(TAG_RECORDS) => {
                let (bytes, at) = reader.delimited()?;
                raw_records.push(decode_member(bytes, base + at)?);
            }
            other => reader.skip(other & 7)?,
        }
    }
    raw_records
        .into_iter()
        .map(|(pk_index, ehk_index, start, end, offset)| {
            let missing = |reason| AggregateDecodeError::Malformed { offset, reason };
            let partition_key = usize::try_from(pk_index)
                .ok()
                .and_then(|i| pk_table.get(i))
                .cloned()
                .ok_or_else(|| missing("partition key index outside the table"))?;
            let explicit_hash_key = match ehk_index {
                None => None,
                Some(index) => Some(
                    usize::try_from(index)
                        .ok()
                        .and_then(|i| ehk_table.get(i))
                        .copied()
                        .ok_or_else(|| missing("explicit hash key index outside the table"))?,
                ),
            };
            Ok(DecodedRecord {
                partition_key,
                explicit_hash_key,
                data: aggregate.slice(start..end),
            })
        })
        .collect()
}

type RawMember = (u64, Option<u64>, usize, usize, usize);

fn decode_member(bytes: &[u8], base: usize) -> Result<RawMember, AggregateDecodeError> {
    let mut reader = Reader {
        bytes,
        pos: 0,
        base,
    };
    let mut pk_index = None;
    let mut ehk_index = None;
    let mut data = None;
    while reader.pos < bytes.len() {
        let key = reader.varint()?;
        match key {
            k if k == u64::from(TAG_PARTITION_KEY_INDEX) => pk_index = Some(reader.varint()?),
            k if k == u64::from(TAG_EXPLICIT_HASH_KEY_INDEX) => ehk_index = Some(reader.varint()?),
            k if k == u64::from(TAG_DATA) => {
                let (slice, at) = reader.delimited()?;
                data = Some((base + at, base + at + slice.len()));
            }
            k if k == u64::from(TAG_TAGS) => {
                reader.delimited()?;
            }
            other => reader.skip(other & 7)?,
        }
    }
    let pk_index = pk_index.ok_or(AggregateDecodeError::Malformed {
        offset: base,
        reason: "record without partition_key_index",
    })?;
    let (start, end) = data.ok_or(AggregateDecodeError::Malformed {
        offset: base,
        reason: "record without data",
    })?;
    Ok((pk_index, ehk_index, start, end, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, ehk: Option<u128>, data: &[u8]) -> UserRecord {
        UserRecord::new(key, ehk.map(HashKey), Bytes::copy_from_slice(data), 1 << 20)
            .expect("valid record")
    }

    #[test]
    fn varint_lengths() {
        for (value, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(value), len, "{value}");
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), len);
        }
    }

    #[test]
    fn one_record_goes_out_raw_without_copy() {
        let r = record("cam-01", None, b"hello");
        let mut builder = AggregateBuilder::new(1 << 20);
        builder.try_add(7u32, &r).expect("first record fits");
        assert_eq!(builder.billed_bytes(), 11);
        let out = builder.finish().expect("non-empty");
        assert!(!out.aggregated);
        assert_eq!(out.partition_key, "cam-01");
        assert_eq!(out.explicit_hash_key, None);
        assert_eq!(out.data.as_ptr(), r.data().as_ptr());
        assert_eq!(out.members, vec![7]);
    }

    #[test]
    fn aggregate_has_exact_size_tables_and_outer_hash_key() {
        let records = [
            record("k1", None, b"one"),
            record("k2", Some(42), b""),
            record("k1", None, &[0xAB; 300]),
            record("k3", Some(42), b"four"),
        ];
        let mut builder = AggregateBuilder::new(1 << 20);
        for (i, r) in records.iter().enumerate() {
            let predicted = builder.billed_bytes_with(r);
            builder.try_add(i, r).expect("fits");
            assert_eq!(builder.billed_bytes(), predicted);
        }
        let billed = builder.billed_bytes();
        let out = builder.finish().expect("non-empty");
        assert!(out.aggregated);
        assert_eq!(out.billed_bytes(), billed, "size tracked exactly");
        assert_eq!(out.partition_key, "a");
        assert_eq!(
            out.explicit_hash_key,
            Some(HashKey::from_partition_key("k1"))
        );
        assert!(out.data.starts_with(&KPL_MAGIC));
        let decoded = decode_aggregate(&out.data).expect("decodes");
        assert_eq!(decoded.len(), 4);
        for (d, r) in decoded.iter().zip(&records) {
            assert_eq!(d.partition_key, r.partition_key());
            assert_eq!(d.explicit_hash_key, r.explicit_hash_key());
            assert_eq!(&d.data, r.data());
            assert_eq!(d.hash_key(), r.hash_key());
        }
    }

    #[test]
    fn builder_refuses_a_record_that_would_break_the_limit() {
        let limit = 200;
        let mut builder = AggregateBuilder::new(limit);
        let mut added = 0;
        let r = record("key", None, &[1; 40]);
        while builder.try_add(added, &r).is_ok() {
            added += 1;
        }
        assert!(added >= 3);
        let out = builder.finish().expect("non-empty");
        assert!(out.billed_bytes() <= limit);
        assert_eq!(out.members.len(), added);
    }

    #[test]
    fn decoder_rejects_damage() {
        let mut builder = AggregateBuilder::new(1 << 20);
        builder
            .try_add((), &record("a", None, b"xyz"))
            .expect("fits");
        builder
            .try_add((), &record("b", None, b"uvw"))
            .expect("fits");
        let good = builder.finish().expect("non-empty").data;
        let mut bad = good.to_vec();
        if let Some(byte) = bad.get_mut(6) {
            *byte ^= 0xFF;
        }
        assert!(matches!(
            decode_aggregate(&Bytes::from(bad)),
            Err(AggregateDecodeError::ChecksumMismatch { .. })
        ));
        assert_eq!(
            decode_aggregate(&Bytes::from_static(b"plain")),
            Err(AggregateDecodeError::NotAggregated)
        );
        // Valid MD5 over a truncated protobuf.
        let proto = [TAG_RECORDS, 10, TAG_PARTITION_KEY_INDEX];
        let mut crafted = KPL_MAGIC.to_vec();
        crafted.extend_from_slice(&proto);
        let digest: [u8; 16] = Md5::digest(proto).into();
        crafted.extend_from_slice(&digest);
        assert!(matches!(
            decode_aggregate(&Bytes::from(crafted)),
            Err(AggregateDecodeError::Malformed {
                offset: 6,
                reason: "length runs past the end"
            })
        ));
    }
}
