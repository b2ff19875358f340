//! User records, hash keys and the Kinesis Data Streams size limits.
//!
//! Invariants: a [`UserRecord`] always has a partition key of 1..=256 Unicode characters and a
//! hash key computed once (the explicit hash key if given, else MD5 of the key's UTF-8 bytes read
//! as a big-endian `u128`). Every limit is counted on raw bytes (data + partition key bytes),
//! never on the base64 form that travels in JSON.

use bytes::Bytes;
use md5::{Digest, Md5};
use std::fmt;

/// Most partition-key characters the service accepts.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Default maximum size of one Kinesis record (data + partition key), 1 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// Smallest per-stream maximum record size the service allows (`MaxRecordSizeInKiB` = 1024).
pub const MIN_STREAM_MAX_RECORD_BYTES: usize = 1 << 20;
/// Largest per-stream maximum record size the service allows, 10 MiB.
pub const MAX_STREAM_MAX_RECORD_BYTES: usize = 10 << 20;
/// Most records in one PutRecords request.
pub const MAX_RECORDS_PER_REQUEST: usize = 500;
/// Default cap on the raw bytes of one PutRecords request, 5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 5 << 20;
/// Highest configurable cap on the raw bytes of one PutRecords request, 10 MiB.
pub const MAX_REQUEST_BYTES_CEILING: usize = 10 << 20;

/// Why a user record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The partition key is empty.
    #[error("partition key is empty (Kinesis requires 1 to 256 characters)")]
    EmptyPartitionKey,
    /// The partition key is longer than 256 characters.
    #[error(
        "partition key {key_prefix:?}… has {chars} characters, more than the 256 Kinesis allows"
    )]
    PartitionKeyTooLong {
        /// The first characters of the key, to find it.
        key_prefix: String,
        /// Its length in characters.
        chars: usize,
    },
    /// Data plus partition key exceed the stream's maximum record size.
    #[error(
        "record with partition key {partition_key:?} is {bytes} bytes (data + key), more than the stream's maximum of {limit} bytes"
    )]
    TooLarge {
        /// The record's partition key.
        partition_key: String,
        /// Data bytes plus key bytes.
        bytes: usize,
        /// The maximum it broke.
        limit: usize,
    },
    /// The explicit hash key is not a decimal number in 0..2^128.
    #[error("explicit hash key {value:?} is not a decimal integer in 0..=2^128-1: {reason}")]
    BadExplicitHashKey {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A 128-bit Kinesis hash key: where a record falls in the stream's key space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct HashKey(pub u128);

impl HashKey {
    /// MD5 of the partition key's UTF-8 bytes as a big-endian integer (how the service places a
    /// record that has no explicit hash key).
    pub fn from_partition_key(partition_key: &str) -> Self {
        let digest: [u8; 16] = Md5::digest(partition_key.as_bytes()).into();
        HashKey(u128::from_be_bytes(digest))
    }

    /// Parses the service's decimal form: `0` or up to 39 digits without a leading zero, at most
    /// 2^128 - 1.
    pub fn parse_decimal(text: &str) -> Result<Self, RecordError> {
        let bad = |reason| RecordError::BadExplicitHashKey {
            value: text.chars().take(48).collect(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if text.len() > 39 {
            return Err(bad("more than 39 digits"));
        }
        if text.len() > 1 && text.starts_with('0') {
            return Err(bad("leading zero"));
        }
        let mut value: u128 = 0;
        for byte in text.bytes() {
            if !byte.is_ascii_digit() {
                return Err(bad("not a decimal digit"));
            }
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(byte - b'0')))
                .ok_or_else(|| bad("larger than 2^128 - 1"))?;
        }
        Ok(HashKey(value))
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One record as the caller gave it: partition key, optional explicit hash key, data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    partition_key: String,
    explicit_hash_key: Option<HashKey>,
    hash_key: HashKey,
    data: Bytes,
}

impl UserRecord {
    /// Checks the key (1..=256 characters) and the size (data + key bytes ≤ `max_record_bytes`).
    pub fn new(
        partition_key: impl Into<String>,
        explicit_hash_key: Option<HashKey>,
        data: Bytes,
        max_record_bytes: usize,
    ) -> Result<Self, RecordError> {
        let record = Self::with_valid_key(partition_key.into(), explicit_hash_key, data)?;
        let bytes = record.raw_bytes();
        if bytes > max_record_bytes {
            return Err(RecordError::TooLarge {
                partition_key: record.partition_key,
                bytes,
                limit: max_record_bytes,
            });
        }
        Ok(record)
    }

    /// Checks only the key; the size is checked when the record is batched against the stream's
    /// limit of the moment (used when records come back from the spool).
    pub fn with_valid_key(
        partition_key: String,
        explicit_hash_key: Option<HashKey>,
        data: Bytes,
    ) -> Result<Self, RecordError> {
        if partition_key.is_empty() {
            return Err(RecordError::EmptyPartitionKey);
        }
        let chars = partition_key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(RecordError::PartitionKeyTooLong {
                key_prefix: partition_key.chars().take(32).collect(),
                chars,
            });
        }
        let hash_key =
            explicit_hash_key.unwrap_or_else(|| HashKey::from_partition_key(&partition_key));
        Ok(UserRecord {
            partition_key,
            explicit_hash_key,
            hash_key,
            data,
        })
    }

    /// The partition key.
    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// The explicit hash key, when the caller set one.
    pub fn explicit_hash_key(&self) -> Option<HashKey> {
        self.explicit_hash_key
    }

    /// Where the record falls in the key space (explicit hash key, else MD5 of the key).
    pub fn hash_key(&self) -> HashKey {
        self.hash_key
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Bytes the service counts for this record sent alone: data + partition key.
    pub fn raw_bytes(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_hash_key_is_big_endian() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            HashKey::from_partition_key("").0,
            0xd41d8cd98f00b204e9800998ecf8427e
        );
        // Reference §1.5: with two AWS-split shards, cam-01 lands in shard 1, cam-02 in shard 0.
        assert!(HashKey::from_partition_key("cam-01").0 >= 1u128 << 127);
        assert!(HashKey::from_partition_key("cam-02").0 < 1u128 << 127);
    }

    #[test]
    fn decimal_hash_keys_follow_the_service_pattern() {
        assert_eq!(HashKey::parse_decimal("0"), Ok(HashKey(0)));
        let max = u128::MAX.to_string();
        assert_eq!(HashKey::parse_decimal(&max), Ok(HashKey(u128::MAX)));
        assert_eq!(HashKey(u128::MAX).to_string(), max);
        for bad in [
            "",
            "01",
            "-1",
            "1a",
            "340282366920938463463374607431768211456",
        ] {
            assert!(HashKey::parse_decimal(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn key_length_counts_characters_and_size_counts_bytes() {
        let key: String = "é".repeat(256);
        let record = UserRecord::new(key.clone(), None, Bytes::from_static(b"x"), 1 << 20);
        assert!(record.is_ok());
        let too_long = UserRecord::new(key + "é", None, Bytes::new(), 1 << 20);
        assert!(matches!(
            too_long,
            Err(RecordError::PartitionKeyTooLong { chars: 257, .. })
        ));
        assert_eq!(
            UserRecord::new("", None, Bytes::new(), 10),
            Err(RecordError::EmptyPartitionKey)
        );
        // 2-byte key + 8 bytes of data = 10: fits exactly; one more byte does not.
        assert!(UserRecord::new("ab", None, Bytes::from(vec![0u8; 8]), 10).is_ok());
        assert!(matches!(
            UserRecord::new("ab", None, Bytes::from(vec![0u8; 9]), 10),
            Err(RecordError::TooLarge {
                bytes: 11,
                limit: 10,
                ..
            })
        ));
    }
}
