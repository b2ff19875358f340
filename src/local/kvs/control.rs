//! The Kinesis Video Streams control plane, sans-I/O: streams in memory, JSON in, JSON out.
//!
//! Operations (`POST /<operation>`, JSON bodies and answers as the service's REST-JSON API):
//! CreateStream, DescribeStream, ListStreams, DeleteStream, TagStream, UntagStream,
//! ListTagsForStream, UpdateDataRetention and GetDataEndpoint (which answers the endpoint's own
//! URL for every API name). Errors are [`ApiError`]s with the service's type names:
//! ResourceNotFoundException (404), ResourceInUseException, InvalidArgumentException,
//! VersionMismatchException, TagsPerResourceExceededLimitException (400).
//!
//! Invariants: stream names match `[a-zA-Z0-9_.-]{1,256}` (so they are safe file names once
//! suffixed); a stream's ARN is unique and stable; every change bumps its `Version`.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `x-amzn-ErrorType` and `__type`.
    pub error_type: String,
    /// `message`.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: u16, error_type: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }

    /// 400 InvalidArgumentException.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidArgumentException", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"__type": self.error_type, "message": self.message})
    }
}

/// A control-plane operation, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `/createStream`
    CreateStream,
    /// `/describeStream`
    DescribeStream,
    /// `/listStreams`
    ListStreams,
    /// `/deleteStream`
    DeleteStream,
    /// `/tagStream`
    TagStream,
    /// `/untagStream`
    UntagStream,
    /// `/listTagsForStream`
    ListTagsForStream,
    /// `/updateDataRetention`
    UpdateDataRetention,
    /// `/getDataEndpoint`
    GetDataEndpoint,
}

impl Operation {
    const ALL: [(Operation, &'static str); 9] = [
        (Operation::CreateStream, "/createStream"),
        (Operation::DescribeStream, "/describeStream"),
        (Operation::ListStreams, "/listStreams"),
        (Operation::DeleteStream, "/deleteStream"),
        (Operation::TagStream, "/tagStream"),
        (Operation::UntagStream, "/untagStream"),
        (Operation::ListTagsForStream, "/listTagsForStream"),
        (Operation::UpdateDataRetention, "/updateDataRetention"),
        (Operation::GetDataEndpoint, "/getDataEndpoint"),
    ];

    /// The operation served at `path`.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == path)
            .map(|(op, _)| *op)
    }

    /// The name used in fault filters (`describeStream`, …).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(op, _)| *op == self)
            .map_or("", |(_, p)| p.trim_start_matches('/'))
    }
}

/// The fragment-number source of one stream: numbers only grow, across connections.
#[derive(Debug, Default)]
pub struct FragmentNumbers(AtomicU64);

impl FragmentNumbers {
    /// The next number: 47 decimal digits, like the service's.
    pub fn next(&self) -> String {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        format!("91343852333{n:036}")
    }
}

/// A stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// Name.
    pub name: String,
    /// ARN.
    pub arn: String,
    /// DeviceName.
    pub device_name: Option<String>,
    /// MediaType.
    pub media_type: Option<String>,
    /// KmsKeyId.
    pub kms_key_id: String,
    /// DataRetentionInHours (0: fragments are acknowledged RECEIVED, never PERSISTED).
    pub retention_hours: u64,
    /// Version, bumped by every change.
    pub version: u64,
    /// CreationTime.
    pub created: SystemTime,
    /// Stream tags.
    pub tags: BTreeMap<String, String>,
    /// Fragment numbers.
    pub numbers: Arc<FragmentNumbers>,
}

impl StreamRecord {
    fn version_string(&self) -> String {
        format!("{:020}", self.version)
    }

    fn info(&self) -> Value {
        let created = self
            .created
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut info = json!({
            "StreamName": self.name,
            "StreamARN": self.arn,
            "KmsKeyId": self.kms_key_id,
            "Version": self.version_string(),
            "Status": "ACTIVE",
            "CreationTime": created,
            "DataRetentionInHours": self.retention_hours,
        });
        if let Some(map) = info.as_object_mut() {
            if let Some(device) = &self.device_name {
                map.insert("DeviceName".into(), json!(device));
            }
            if let Some(media) = &self.media_type {
                map.insert("MediaType".into(), json!(media));
            }
        }
        info
    }
}

/// The control plane's state.
#[derive(Debug)]
pub struct ControlPlane {
    region: String,
    account: String,
    streams: BTreeMap<String, StreamRecord>,
    creations: u64,
}

const MAX_TAGS: usize = 50;

fn valid_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn string_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid(format!(
            "{field} must be a string, not {other}"
        ))),
    }
}

fn uint_field(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            ApiError::invalid(format!(
                "{field} must be a non-negative integer, not {value}"
            ))
        }),
    }
}

fn tags_field(
    body: &Map<String, Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(value) = body.get(field).filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let Some(map) = value.as_object() else {
        return Err(ApiError::invalid(format!(
            "{field} must be a map of strings"
        )));
    };
    let mut tags = BTreeMap::new();
    for (key, value) in map {
        let Some(value) = value.as_str() else {
            return Err(ApiError::invalid(format!(
                "tag {key:?} must have a string value"
            )));
        };
        if !(1..=128).contains(&key.chars().count()) {
            return Err(ApiError::invalid(format!(
                "tag key {key:?} must be 1 to 128 characters"
            )));
        }
        if value.chars().count() > 256 {
            return Err(ApiError::invalid(format!(
                "tag {key:?} has a value longer than 256 characters"
            )));
        }
        tags.insert(key.clone(), value.to_owned());
    }
    Ok(tags)
}

impl ControlPlane {
    /// Streams with ARNs in `region` and `account`.
    pub fn new(region: &str, account: &str) -> Self {
        Self {
            region: region.to_owned(),
            account: account.to_owned(),
            streams: BTreeMap::new(),
            creations: 0,
        }
    }

    /// A stream by name.
    pub fn stream(&self, name: &str) -> Option<&StreamRecord> {
        self.streams.get(name)
    }

    /// A stream by name or ARN, as PutMedia's headers give it.
    pub fn find(&self, name: Option<&str>, arn: Option<&str>) -> Result<&StreamRecord, ApiError> {
        let found = match (name, arn) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "specify either the stream name or the stream ARN, not both",
                ));
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "you must specify either the stream name or the stream ARN",
                ));
            }
            (Some(name), None) => self.streams.get(name),
            (None, Some(arn)) => self.streams.values().find(|s| s.arn == arn),
        };
        found.ok_or_else(|| {
            ApiError::new(
                404,
                "ResourceNotFoundException",
                format!(
                    "The requested stream {} is not found or not active.",
                    name.or(arn).unwrap_or_default()
                ),
            )
        })
    }

    fn find_in(&self, body: &Map<String, Value>) -> Result<&StreamRecord, ApiError> {
        self.find(
            string_field(body, "StreamName")?,
            string_field(body, "StreamARN")?,
        )
    }

    fn name_in(&self, body: &Map<String, Value>) -> Result<String, ApiError> {
        Ok(self.find_in(body)?.name.clone())
    }

    /// Creates a stream directly (tests, the CLI); `Err` when it exists or the name is bad.
    pub fn create(
        &mut self,
        name: &str,
        retention_hours: u64,
        media_type: Option<&str>,
        now: SystemTime,
    ) -> Result<String, ApiError> {
        let mut body = Map::new();
        body.insert("StreamName".into(), json!(name));
        body.insert("DataRetentionInHours".into(), json!(retention_hours));
        if let Some(media) = media_type {
            body.insert("MediaType".into(), json!(media));
        }
        let answer = self.create_stream(&body, now)?;
        Ok(answer
            .get("StreamARN")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    /// Serves one operation. `data_endpoint` is what GetDataEndpoint answers.
    pub fn handle(
        &mut self,
        operation: Operation,
        body: &Value,
        data_endpoint: &str,
        now: SystemTime,
    ) -> Result<Value, ApiError> {
        let empty = Map::new();
        let body = match body {
            Value::Object(map) => map,
            Value::Null => &empty,
            _ => {
                return Err(ApiError::new(
                    400,
                    "SerializationException",
                    "the request body must be a JSON object",
                ));
            }
        };
        match operation {
            Operation::CreateStream => self.create_stream(body, now),
            Operation::DescribeStream => Ok(json!({"StreamInfo": self.find_in(body)?.info()})),
            Operation::ListStreams => self.list_streams(body),
            Operation::DeleteStream => self.delete_stream(body),
            Operation::TagStream => self.tag_stream(body),
            Operation::UntagStream => self.untag_stream(body),
            Operation::ListTagsForStream => Ok(json!({"Tags": self.find_in(body)?.tags})),
            Operation::UpdateDataRetention => self.update_retention(body),
            Operation::GetDataEndpoint => {
                self.find_in(body)?;
                const APIS: [&str; 8] = [
                    "PUT_MEDIA",
                    "GET_MEDIA",
                    "LIST_FRAGMENTS",
                    "GET_MEDIA_FOR_FRAGMENT_LIST",
                    "GET_HLS_STREAMING_SESSION_URL",
                    "GET_DASH_STREAMING_SESSION_URL",
                    "GET_CLIP",
                    "GET_IMAGES",
                ];
                match string_field(body, "APIName")? {
                    Some(api) if APIS.contains(&api) => Ok(json!({"DataEndpoint": data_endpoint})),
                    Some(api) => Err(ApiError::invalid(format!(
                        "APIName {api:?} is not one of {}",
                        APIS.join(", ")
                    ))),
                    None => Err(ApiError::invalid("APIName is required")),
                }
            }
        }
    }

    fn create_stream(
        &mut self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, ApiError> {
        let Some(name) = string_field(body, "StreamName")? else {
            return Err(ApiError::invalid("StreamName is required"));
        };
        if !valid_name(name) {
            return Err(ApiError::invalid(format!(
                "StreamName {name:?} must be 1 to 256 characters of [a-zA-Z0-9_.-]"
            )));
        }
        if self.streams.contains_key(name) {
            return Err(ApiError::new(
                400,
                "ResourceInUseException",
                format!("The stream {name} already exists."),
            ));
        }
        let device_name = string_field(body, "DeviceName")?.map(str::to_owned);
        if let Some(device) = &device_name
            && !(1..=128).contains(&device.len())
        {
            return Err(ApiError::invalid("DeviceName must be 1 to 128 characters"));
        }
        let media_type = string_field(body, "MediaType")?.map(str::to_owned);
        if let Some(media) = &media_type {
            let valid = media.split(',').all(|part| {
                part.split_once('/')
                    .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
            });
            if !valid || media.len() > 128 {
                return Err(ApiError::invalid(format!(
                    "MediaType {media:?} must be type/subtype[,type/subtype…]"
                )));
            }
        }
        let retention_hours = uint_field(body, "DataRetentionInHours")?.unwrap_or(0);
        let tags = tags_field(body, "Tags")?;
        if tags.len() > MAX_TAGS {
            return Err(ApiError::new(
                400,
                "TagsPerResourceExceededLimitException",
                format!(
                    "{} tags, more than the {MAX_TAGS} a stream may have",
                    tags.len()
                ),
            ));
        }
        let kms_key_id = string_field(body, "KmsKeyId")?.map_or_else(
            || {
                format!(
                    "arn:aws:kms:{}:{}:alias/aws/kinesisvideo",
                    self.region, self.account
                )
            },
            str::to_owned,
        );
        self.creations += 1;
        let created_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
            + u128::from(self.creations);
        let arn = format!(
            "arn:aws:kinesisvideo:{}:{}:stream/{name}/{created_ms}",
            self.region, self.account
        );
        self.streams.insert(
            name.to_owned(),
            StreamRecord {
                name: name.to_owned(),
                arn: arn.clone(),
                device_name,
                media_type,
                kms_key_id,
                retention_hours,
                version: 1,
                created: now,
                tags,
                numbers: Arc::new(FragmentNumbers::default()),
            },
        );
        Ok(json!({"StreamARN": arn}))
    }

    fn list_streams(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let max = uint_field(body, "MaxResults")?.unwrap_or(10_000);
        if !(1..=10_000).contains(&max) {
            return Err(ApiError::invalid("MaxResults must be 1 to 10000"));
        }
        let prefix = match body.get("StreamNameCondition") {
            None | Some(Value::Null) => None,
            Some(Value::Object(condition)) => {
                match string_field(condition, "ComparisonOperator")? {
                    Some("BEGINS_WITH") | None => {}
                    Some(other) => {
                        return Err(ApiError::invalid(format!(
                            "ComparisonOperator {other:?} is not BEGINS_WITH"
                        )));
                    }
                }
                string_field(condition, "ComparisonValue")?
            }
            Some(_) => return Err(ApiError::invalid("StreamNameCondition must be an object")),
        };
        let after = string_field(body, "NextToken")?;
        let mut matching = self
            .streams
            .values()
            .filter(|s| prefix.is_none_or(|p| s.name.starts_with(p)))
            .filter(|s| after.is_none_or(|a| s.name.as_str() > a));
        let page: Vec<&StreamRecord> = matching
            .by_ref()
            .take(usize::try_from(max).unwrap_or(usize::MAX))
            .collect();
        let mut answer =
            json!({"StreamInfoList": page.iter().map(|s| s.info()).collect::<Vec<_>>()});
        if matching.next().is_some()
            && let (Some(map), Some(last)) = (answer.as_object_mut(), page.last())
        {
            map.insert("NextToken".into(), json!(last.name));
        }
        Ok(answer)
    }

    fn delete_stream(&mut self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let Some(arn) = string_field(body, "StreamARN")? else {
            return Err(ApiError::invalid("StreamARN is required"));
        };
        let stream = self.find(None, Some(arn))?;
        if let Some(version) = string_field(body, "CurrentVersion")?
            && version != stream.version_string()
        {
            return Err(ApiError::new(
                400,
                "VersionMismatchException",
                format!(
                    "CurrentVersion {version} is not the stream's {}",
                    stream.version_string()
                ),
            ));
        }
        let name = stream.name.clone();
        self.streams.remove(&name);
        Ok(json!({}))
    }

    fn tag_stream(&mut self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let name = self.name_in(body)?;
        let tags = tags_field(body, "Tags")?;
        if tags.is_empty() {
            return Err(ApiError::invalid("Tags must hold at least one tag"));
        }
        let stream = self
            .streams
            .get_mut(&name)
            .ok_or_else(|| ApiError::new(404, "ResourceNotFoundException", "stream vanished"))?;
        let mut merged = stream.tags.clone();
        merged.extend(tags);
        if merged.len() > MAX_TAGS {
            return Err(ApiError::new(
                400,
                "TagsPerResourceExceededLimitException",
                format!(
                    "{} tags, more than the {MAX_TAGS} a stream may have",
                    merged.len()
                ),
            ));
        }
        stream.tags = merged;
        stream.version += 1;
        Ok(json!({}))
    }

    fn untag_stream(&mut self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let name = self.name_in(body)?;
        let Some(keys) = body.get("TagKeyList").and_then(Value::as_array) else {
            return Err(ApiError::invalid("TagKeyList is required"));
        };
        let stream = self
            .streams
            .get_mut(&name)
            .ok_or_else(|| ApiError::new(404, "ResourceNotFoundException", "stream vanished"))?;
        for key in keys {
            let Some(key) = key.as_str() else {
                return Err(ApiError::invalid("TagKeyList must hold strings"));
            };
            stream.tags.remove(key);
        }
        stream.version += 1;
        Ok(json!({}))
    }

    fn update_retention(&mut self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let name = self.name_in(body)?;
        let change = uint_field(body, "DataRetentionChangeInHours")?
            .ok_or_else(|| ApiError::invalid("DataRetentionChangeInHours is required"))?;
        let operation = string_field(body, "Operation")?;
        let version = string_field(body, "CurrentVersion")?.map(str::to_owned);
        let stream = self
            .streams
            .get_mut(&name)
            .ok_or_else(|| ApiError::new(404, "ResourceNotFoundException", "stream vanished"))?;
        if let Some(version) = version
            && version != stream.version_string()
        {
            return Err(ApiError::new(
                400,
                "VersionMismatchException",
                format!(
                    "CurrentVersion {version} is not the stream's {}",
                    stream.version_string()
                ),
            ));
        }
        stream.retention_hours = match operation {
            Some("INCREASE_DATA_RETENTION") => stream.retention_hours.saturating_add(change),
            Some("DECREASE_DATA_RETENTION") if change <= stream.retention_hours => {
                stream.retention_hours - change
            }
            Some("DECREASE_DATA_RETENTION") => {
                return Err(ApiError::invalid(format!(
                    "cannot decrease retention of {} hours by {change}",
                    stream.retention_hours
                )));
            }
            _ => {
                return Err(ApiError::invalid(
                    "Operation must be INCREASE_DATA_RETENTION or DECREASE_DATA_RETENTION",
                ));
            }
        };
        stream.version += 1;
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane() -> ControlPlane {
        ControlPlane::new("us-west-2", "123456789012")
    }

    fn call(plane: &mut ControlPlane, op: Operation, body: Value) -> Result<Value, ApiError> {
        plane.handle(op, &body, "http://127.0.0.1:4566", SystemTime::now())
    }

    #[test]
    fn create_describe_endpoint_tag_delete() {
        let mut plane = plane();
        let created = call(
            &mut plane,
            Operation::CreateStream,
            json!({"StreamName": "cam-1", "DataRetentionInHours": 2, "MediaType": "video/h264,audio/aac", "DeviceName": "pi"}),
        )
        .unwrap();
        let arn = created["StreamARN"].as_str().unwrap().to_owned();
        assert!(arn.starts_with("arn:aws:kinesisvideo:us-west-2:123456789012:stream/cam-1/"));
        let again = call(
            &mut plane,
            Operation::CreateStream,
            json!({"StreamName": "cam-1"}),
        );
        assert_eq!(again.unwrap_err().error_type, "ResourceInUseException");

        let info = call(
            &mut plane,
            Operation::DescribeStream,
            json!({"StreamName": "cam-1"}),
        )
        .unwrap();
        let info = &info["StreamInfo"];
        assert_eq!(info["Status"], "ACTIVE");
        assert_eq!(info["DataRetentionInHours"], 2);
        assert_eq!(info["MediaType"], "video/h264,audio/aac");
        assert_eq!(info["StreamARN"], arn.as_str());
        assert!(info["CreationTime"].as_f64().unwrap() > 1.6e9);
        let by_arn = call(
            &mut plane,
            Operation::DescribeStream,
            json!({"StreamARN": arn}),
        )
        .unwrap();
        assert_eq!(by_arn["StreamInfo"]["StreamName"], "cam-1");

        let endpoint = call(
            &mut plane,
            Operation::GetDataEndpoint,
            json!({"StreamName": "cam-1", "APIName": "PUT_MEDIA"}),
        )
        .unwrap();
        assert_eq!(endpoint, json!({"DataEndpoint": "http://127.0.0.1:4566"}));
        let bad_api = call(
            &mut plane,
            Operation::GetDataEndpoint,
            json!({"StreamName": "cam-1", "APIName": "PUT"}),
        );
        assert_eq!(bad_api.unwrap_err().error_type, "InvalidArgumentException");

        call(
            &mut plane,
            Operation::TagStream,
            json!({"StreamARN": arn, "Tags": {"site": "7"}}),
        )
        .unwrap();
        let tags = call(
            &mut plane,
            Operation::ListTagsForStream,
            json!({"StreamName": "cam-1"}),
        )
        .unwrap();
        assert_eq!(tags, json!({"Tags": {"site": "7"}}));
        let version = plane.stream("cam-1").unwrap().version_string();
        let stale = call(
            &mut plane,
            Operation::DeleteStream,
            json!({"StreamARN": arn, "CurrentVersion": "1"}),
        );
        assert_eq!(stale.unwrap_err().error_type, "VersionMismatchException");
        call(
            &mut plane,
            Operation::DeleteStream,
            json!({"StreamARN": arn, "CurrentVersion": version}),
        )
        .unwrap();
        let gone = call(
            &mut plane,
            Operation::DescribeStream,
            json!({"StreamName": "cam-1"}),
        )
        .unwrap_err();
        assert_eq!(
            (gone.status, gone.error_type.as_str()),
            (404, "ResourceNotFoundException")
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let mut plane = plane();
        for (body, needle) in [
            (json!({}), "StreamName"),
            (json!({"StreamName": "a/b"}), "StreamName"),
            (
                json!({"StreamName": "ok", "DataRetentionInHours": -1}),
                "DataRetentionInHours",
            ),
            (
                json!({"StreamName": "ok", "MediaType": "h264"}),
                "MediaType",
            ),
            (json!({"StreamName": "ok", "Tags": {"k": 1}}), "tag"),
            (json!("text"), "JSON object"),
        ] {
            let error = call(&mut plane, Operation::CreateStream, body).unwrap_err();
            assert!(error.message.contains(needle), "{error:?}");
            assert_eq!(error.status, 400);
        }
        let both = call(
            &mut plane,
            Operation::DescribeStream,
            json!({"StreamName": "a", "StreamARN": "b"}),
        );
        assert_eq!(both.unwrap_err().error_type, "InvalidArgumentException");
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
        let error = call(
            &mut plane,
            Operation::CreateStream,
            json!({"StreamName": "t", "Tags": many}),
        )
        .unwrap_err();
        assert_eq!(error.error_type, "TagsPerResourceExceededLimitException");
    }

    #[test]
    fn list_pages_and_filters_and_retention_updates() {
        let mut plane = plane();
        for name in ["cam-a", "cam-b", "cam-c", "door"] {
            plane.create(name, 0, None, SystemTime::now()).unwrap();
        }
        let page = call(&mut plane, Operation::ListStreams, json!({"MaxResults": 2, "StreamNameCondition": {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam"}})).unwrap();
        let names: Vec<&str> = page["StreamInfoList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["StreamName"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cam-a", "cam-b"]);
        let token = page["NextToken"].as_str().unwrap().to_owned();
        let rest = call(
            &mut plane,
            Operation::ListStreams,
            json!({"NextToken": token, "StreamNameCondition": {"ComparisonValue": "cam"}}),
        )
        .unwrap();
        assert_eq!(rest["StreamInfoList"].as_array().unwrap().len(), 1);
        assert!(rest.get("NextToken").is_none());

        call(&mut plane, Operation::UpdateDataRetention, json!({"StreamName": "door", "Operation": "INCREASE_DATA_RETENTION", "DataRetentionChangeInHours": 24})).unwrap();
        assert_eq!(plane.stream("door").unwrap().retention_hours, 24);
        let error = call(&mut plane, Operation::UpdateDataRetention, json!({"StreamName": "door", "Operation": "DECREASE_DATA_RETENTION", "DataRetentionChangeInHours": 25})).unwrap_err();
        assert_eq!(error.error_type, "InvalidArgumentException");
    }

    #[test]
    fn fragment_numbers_grow_and_have_47_digits() {
        let numbers = FragmentNumbers::default();
        let a = numbers.next();
        let b = numbers.next();
        assert_eq!(a.len(), 47);
        assert!(a.bytes().all(|c| c.is_ascii_digit()));
        assert!(b > a);
    }
}
