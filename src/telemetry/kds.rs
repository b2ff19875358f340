//! The Kinesis Data Streams HTTP client: PutRecords, PutRecord, ListShards,
//! DescribeStreamSummary and CreateStream over AWS JSON 1.1, SigV4 service `kinesis`.
//!
//! Invariants: every request is signed at the skew-corrected time with credentials from the
//! cache; the `Date` header of every response teaches the clock skew; a transport failure says
//! whether the request may have reached the service (only a connect failure means it did not);
//! the service's error code is taken from `__type` (namespace stripped) or `x-amzn-ErrorType`.
//! Data goes out base64-encoded, but every limit was counted on raw bytes before.

use super::batch::PlannedRecord;
use super::errors::RequestFailure;
use super::producer::RecordOutcome;
use super::record::HashKey;
use super::shard_map::ShardDescription;
use super::spool::RecordId;
use crate::aws::{ClockSkew, CredentialsCache, PayloadHash, Service, sign, signing_region};
use base64::Engine as _;
use serde::Deserialize;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// Which stream to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    /// Stream name.
    pub name: String,
    /// Stream ARN; sent instead of the name when set (AWS recommends it).
    pub arn: Option<String>,
}

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Endpoint URL without trailing slash (from `aws::resolve_endpoint`).
    pub endpoint: String,
    /// Region (FIPS pseudo-regions allowed; the signing region is derived).
    pub region: String,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl ClientSettings {
    /// Settings for `region`: the endpoint from `telemetry.endpoint` (`endpoint_override`), else
    /// `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL` from `env`, else the regional endpoint
    /// (plain http only to loopback); 6 s request and connect timeouts, as the KPL uses.
    pub fn resolve(
        region: &str,
        endpoint_override: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, crate::aws::EndpointError> {
        let endpoint =
            crate::aws::resolve_endpoint(Service::Kinesis, region, endpoint_override, env)?;
        Ok(ClientSettings {
            endpoint,
            region: region.to_owned(),
            request_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(6),
        })
    }
}

/// What DescribeStreamSummary says about the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// CREATING, ACTIVE, UPDATING or DELETING.
    pub status: String,
    /// Open shards.
    pub open_shard_count: Option<u64>,
    /// The stream's maximum record size, when reported.
    pub max_record_bytes: Option<usize>,
    /// The service spreads records itself (`RecordDistributionStrategy` = AUTO).
    pub auto_distribution: bool,
}

/// Where PutRecord stored a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Shard id.
    pub shard_id: String,
    /// Sequence number.
    pub sequence_number: String,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct KdsClient {
    http: reqwest::Client,
    url: reqwest::Url,
    signing_region: String,
    credentials: CredentialsCache,
    skew: ClockSkew,
    stream: StreamRef,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type")]
    kind: Option<String>,
    message: Option<String>,
    #[serde(rename = "Message")]
    message_upper: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsResponse {
    records: Vec<PutRecordsResultEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsResultEntry {
    sequence_number: Option<String>,
    shard_id: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordResponse {
    sequence_number: String,
    shard_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListShardsResponse {
    #[serde(default)]
    shards: Vec<ShardEntry>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardEntry {
    shard_id: String,
    hash_key_range: HashKeyRange,
    sequence_number_range: SequenceNumberRange,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HashKeyRange {
    starting_hash_key: String,
    ending_hash_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SequenceNumberRange {
    ending_sequence_number: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStreamSummaryResponse {
    stream_description_summary: SummaryBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SummaryBody {
    stream_status: String,
    open_shard_count: Option<u64>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<u64>,
    record_distribution_strategy: Option<serde_json::Value>,
}

/// Appends `text` to `out` as a JSON string literal.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl KdsClient {
    /// A client for `stream` at `settings.endpoint`.
    pub fn new(
        settings: &ClientSettings,
        stream: StreamRef,
        credentials: CredentialsCache,
        skew: ClockSkew,
    ) -> Result<Self, RequestFailure> {
        let bad = |message: String| RequestFailure::BadResponse {
            operation: "client setup",
            message,
        };
        let url = reqwest::Url::parse(&format!("{}/", settings.endpoint.trim_end_matches('/')))
            .map_err(|e| bad(format!("endpoint {:?}: {e}", settings.endpoint)))?;
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| bad(format!("HTTP client: {e}")))?;
        Ok(KdsClient {
            http,
            url,
            signing_region: signing_region(&settings.region).to_owned(),
            credentials,
            skew,
            stream,
        })
    }

    /// The stream this client writes to.
    pub fn stream(&self) -> &StreamRef {
        &self.stream
    }

    /// Drops cached credentials so the next request fetches fresh ones.
    pub fn invalidate_credentials(&self) {
        self.credentials.invalidate();
    }

    fn push_stream(&self, body: &mut String) {
        match &self.stream.arn {
            Some(arn) => {
                body.push_str("\"StreamARN\":");
                push_json_string(body, arn);
            }
            None => {
                body.push_str("\"StreamName\":");
                push_json_string(body, &self.stream.name);
            }
        }
    }

    /// Sends one signed call; returns the body of a 2xx answer.
    async fn call(
        &self,
        operation: &'static str,
        body: String,
    ) -> Result<bytes::Bytes, RequestFailure> {
        let credentials =
            self.credentials
                .get()
                .await
                .map_err(|e| RequestFailure::Credentials {
                    operation,
                    message: e.to_string(),
                })?;
        let body = body.into_bytes();
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.url.as_str())
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("x-amz-target", format!("{TARGET_PREFIX}{operation}"))
            .body(Vec::new())
            .map_err(|e| RequestFailure::BadResponse {
                operation,
                message: format!("building the request: {e}"),
            })?;
        sign(
            &mut request,
            &credentials,
            &self.signing_region,
            Service::Kinesis,
            self.skew.now(),
            PayloadHash::Bytes(&body),
        )
        .map_err(|e| RequestFailure::Credentials {
            operation,
            message: e.to_string(),
        })?;
        *request.body_mut() = body;
        let request =
            reqwest::Request::try_from(request).map_err(|e| RequestFailure::BadResponse {
                operation,
                message: format!("converting the request: {e}"),
            })?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| RequestFailure::Transport {
                operation,
                sent: !e.is_connect(),
                message: e.to_string(),
            })?;
        if let Some(date) = response
            .headers()
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
        {
            // A bad Date header only means no skew correction from this response.
            let _ = self.skew.learn_from_date(date, SystemTime::now());
        }
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RequestFailure::Transport {
                operation,
                sent: true,
                message: format!("reading the response body: {e}"),
            })?;
        if status.is_success() {
            return Ok(bytes);
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.kind.as_deref())
            .map(|kind| kind.rsplit('#').next().unwrap_or(kind).to_owned())
            .or(error_type)
            .unwrap_or_else(|| format!("HTTP{}", status.as_u16()));
        let message = parsed
            .and_then(|b| b.message.or(b.message_upper))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(bytes.get(..200.min(bytes.len())).unwrap_or_default())
                    .into_owned()
            });
        Err(RequestFailure::Service {
            operation,
            status: status.as_u16(),
            code,
            message,
        })
    }

    /// The PutRecords body for `records` (base64 data, keys escaped).
    pub fn put_records_body(&self, records: &[PlannedRecord<RecordId>]) -> String {
        let data_len: usize = records.iter().map(|r| r.record.data.len()).sum();
        let mut body = String::with_capacity(data_len * 4 / 3 + records.len() * 120 + 128);
        body.push('{');
        self.push_stream(&mut body);
        body.push_str(",\"Records\":[");
        for (i, planned) in records.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"Data\":\"");
            base64::engine::general_purpose::STANDARD
                .encode_string(&planned.record.data, &mut body);
            body.push_str("\",\"PartitionKey\":");
            push_json_string(&mut body, &planned.record.partition_key);
            if let Some(key) = planned.record.explicit_hash_key {
                let _ = write!(body, ",\"ExplicitHashKey\":\"{key}\"");
            }
            body.push('}');
        }
        body.push_str("]}");
        body
    }

    /// PutRecords: one outcome per record, in order.
    pub async fn put_records(
        &self,
        records: &[PlannedRecord<RecordId>],
    ) -> Result<Vec<RecordOutcome>, RequestFailure> {
        let body = self.put_records_body(records);
        let bytes = self.call("PutRecords", body).await?;
        let parsed: PutRecordsResponse =
            serde_json::from_slice(&bytes).map_err(|e| RequestFailure::BadResponse {
                operation: "PutRecords",
                message: format!("response body: {e}"),
            })?;
        Ok(parsed
            .records
            .into_iter()
            .map(
                |entry| match (entry.shard_id, entry.sequence_number, entry.error_code) {
                    (Some(shard_id), Some(sequence_number), None) => RecordOutcome::Stored {
                        shard_id,
                        sequence_number,
                    },
                    (_, _, code) => RecordOutcome::Failed {
                        code: code.unwrap_or_else(|| "MissingResult".to_owned()),
                        message: entry.error_message.unwrap_or_default(),
                    },
                },
            )
            .collect())
    }

    /// PutRecord for one record (`SequenceNumberForOrdering` chains records of one key).
    pub async fn put_record(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<HashKey>,
        data: &[u8],
        sequence_number_for_ordering: Option<&str>,
    ) -> Result<StoredRecord, RequestFailure> {
        let mut body = String::with_capacity(data.len() * 4 / 3 + 256);
        body.push('{');
        self.push_stream(&mut body);
        body.push_str(",\"Data\":\"");
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut body);
        body.push_str("\",\"PartitionKey\":");
        push_json_string(&mut body, partition_key);
        if let Some(key) = explicit_hash_key {
            let _ = write!(body, ",\"ExplicitHashKey\":\"{key}\"");
        }
        if let Some(sequence) = sequence_number_for_ordering {
            body.push_str(",\"SequenceNumberForOrdering\":");
            push_json_string(&mut body, sequence);
        }
        body.push('}');
        let bytes = self.call("PutRecord", body).await?;
        let parsed: PutRecordResponse =
            serde_json::from_slice(&bytes).map_err(|e| RequestFailure::BadResponse {
                operation: "PutRecord",
                message: format!("response body: {e}"),
            })?;
        Ok(StoredRecord {
            shard_id: parsed.shard_id,
            sequence_number: parsed.sequence_number,
        })
    }

    /// ListShards, every page; closed shards come back with `open = false`.
    pub async fn list_shards(&self) -> Result<Vec<ShardDescription>, RequestFailure> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        for _page in 0..10_000 {
            let mut body = String::from("{");
            match &next_token {
                // With NextToken the stream must not be named again.
                Some(token) => {
                    body.push_str("\"NextToken\":");
                    push_json_string(&mut body, token);
                }
                None => self.push_stream(&mut body),
            }
            body.push_str(",\"MaxResults\":1000}");
            let bytes = self.call("ListShards", body).await?;
            let page: ListShardsResponse =
                serde_json::from_slice(&bytes).map_err(|e| RequestFailure::BadResponse {
                    operation: "ListShards",
                    message: format!("response body: {e}"),
                })?;
            for shard in page.shards {
                let parse = |text: &str| {
                    HashKey::parse_decimal(text).map_err(|e| RequestFailure::BadResponse {
                        operation: "ListShards",
                        message: format!("shard {}: {e}", shard.shard_id),
                    })
                };
                shards.push(ShardDescription {
                    starting_hash_key: parse(&shard.hash_key_range.starting_hash_key)?,
                    ending_hash_key: parse(&shard.hash_key_range.ending_hash_key)?,
                    open: shard.sequence_number_range.ending_sequence_number.is_none(),
                    shard_id: shard.shard_id,
                });
            }
            match page.next_token {
                Some(token) if !token.is_empty() => next_token = Some(token),
                _ => return Ok(shards),
            }
        }
        Err(RequestFailure::BadResponse {
            operation: "ListShards",
            message: "more than 10000 pages".into(),
        })
    }

    /// DescribeStreamSummary.
    pub async fn describe_stream_summary(&self) -> Result<StreamSummary, RequestFailure> {
        let mut body = String::from("{");
        self.push_stream(&mut body);
        body.push('}');
        let bytes = self.call("DescribeStreamSummary", body).await?;
        let parsed: DescribeStreamSummaryResponse =
            serde_json::from_slice(&bytes).map_err(|e| RequestFailure::BadResponse {
                operation: "DescribeStreamSummary",
                message: format!("response body: {e}"),
            })?;
        let summary = parsed.stream_description_summary;
        // The strategy is reported as a string or as {"Type": "..."} depending on the model.
        let auto_distribution = summary
            .record_distribution_strategy
            .as_ref()
            .is_some_and(|v| {
                v.as_str()
                    .or_else(|| v.get("Type").and_then(|t| t.as_str()))
                    == Some("AUTO")
            });
        Ok(StreamSummary {
            status: summary.stream_status,
            open_shard_count: summary.open_shard_count,
            max_record_bytes: summary
                .max_record_size_in_kib
                .and_then(|kib| usize::try_from(kib.saturating_mul(1024)).ok()),
            auto_distribution,
        })
    }

    /// CreateStream in provisioned mode with `shard_count` shards (demo and tests).
    pub async fn create_stream(&self, shard_count: u32) -> Result<(), RequestFailure> {
        let mut body = String::from("{\"StreamName\":");
        push_json_string(&mut body, &self.stream.name);
        let _ = write!(body, ",\"ShardCount\":{shard_count}}}");
        self.call("CreateStream", body).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::aggregate::KinesisRecord;
    use bytes::Bytes;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\n\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001é\"");
        let parsed: String = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed, "a\"b\\c\n\u{1}é");
    }

    #[test]
    fn endpoint_comes_from_config_then_environment_then_region() {
        let none = |_: &str| None;
        let regional = ClientSettings::resolve("eu-west-1", None, &none).expect("regional");
        assert_eq!(regional.endpoint, "https://kinesis.eu-west-1.amazonaws.com");
        let env = |name: &str| {
            (name == "AWS_ENDPOINT_URL_KINESIS").then(|| "http://127.0.0.1:4567".to_owned())
        };
        let local = ClientSettings::resolve("us-east-1", None, &env).expect("env override");
        assert_eq!(local.endpoint, "http://127.0.0.1:4567");
        let configured =
            ClientSettings::resolve("us-east-1", Some("http://localhost:9"), &env).expect("config");
        assert_eq!(configured.endpoint, "http://localhost:9");
        assert!(ClientSettings::resolve("us-east-1", Some("http://10.0.0.1:80"), &none).is_err());
    }

    #[tokio::test]
    async fn put_records_body_is_the_wire_format() {
        let provider = std::sync::Arc::new(crate::aws::StaticProvider::new(
            crate::aws::Credentials::new("AKIDEXAMPLE", "secret", None, None),
        ));
        let client = KdsClient::new(
            &ClientSettings {
                endpoint: "http://127.0.0.1:1".into(),
                region: "us-east-1".into(),
                request_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
            },
            StreamRef {
                name: "edge".into(),
                arn: None,
            },
            CredentialsCache::new(provider, Duration::from_secs(60)),
            ClockSkew::new(),
        )
        .expect("client");
        let record = KinesisRecord {
            partition_key: "k\"1".into(),
            explicit_hash_key: Some(HashKey(42)),
            data: Bytes::from_static(b"\x00\xffhi"),
            members: vec![0u64],
            member_hash_keys: vec![HashKey(42)],
            aggregated: false,
        };
        let body = client.put_records_body(&[PlannedRecord {
            record,
            shard: None,
        }]);
        let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(json["StreamName"], "edge");
        assert_eq!(json["Records"][0]["Data"], "AP9oaQ==");
        assert_eq!(json["Records"][0]["PartitionKey"], "k\"1");
        assert_eq!(json["Records"][0]["ExplicitHashKey"], "42");
        // Nothing listens on port 1: a connect failure, so the request was not sent.
        let failure = client.list_shards().await.expect_err("no server");
        assert!(
            matches!(failure, RequestFailure::Transport { sent: false, .. }),
            "{failure}"
        );
    }
}
