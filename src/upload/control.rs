//! KVS control-plane messages: request bodies and response parsing for DescribeStream,
//! CreateStream, TagStream and GetDataEndpoint (`APIName = PUT_MEDIA`).
//!
//! All four are `POST /<operation>` with a JSON body on the regional control endpoint. Responses
//! are parsed into types whose required fields are present: a field the uploader relies on that
//! the service (or a local stand-in) left out is a [`ControlError::MissingField`] that names the
//! operation and the field, never a default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Control-plane operations the uploader calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST /describeStream`
    DescribeStream,
    /// `POST /createStream`
    CreateStream,
    /// `POST /tagStream`
    TagStream,
    /// `POST /getDataEndpoint`
    GetDataEndpoint,
}

impl Operation {
    /// The API name, as in AWS's documentation.
    pub fn name(self) -> &'static str {
        match self {
            Operation::DescribeStream => "DescribeStream",
            Operation::CreateStream => "CreateStream",
            Operation::TagStream => "TagStream",
            Operation::GetDataEndpoint => "GetDataEndpoint",
        }
    }

    /// The request path on the control endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Operation::DescribeStream => "/describeStream",
            Operation::CreateStream => "/createStream",
            Operation::TagStream => "/tagStream",
            Operation::GetDataEndpoint => "/getDataEndpoint",
        }
    }
}

/// A control-plane message that cannot be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The response body is not the JSON expected (or a field has the wrong type).
    #[error("{operation} response: invalid JSON: {detail}")]
    InvalidJson {
        /// The operation.
        operation: &'static str,
        /// serde_json's message (with line and column).
        detail: String,
    },
    /// A field the uploader needs is absent.
    #[error("{operation} response: missing field {field}")]
    MissingField {
        /// The operation.
        operation: &'static str,
        /// The field, dotted from the top (`StreamInfo.Status`).
        field: &'static str,
    },
    /// A field is present but unusable.
    #[error("{operation}: field {field} = {value:?} is invalid: {reason}")]
    InvalidField {
        /// The operation.
        operation: &'static str,
        /// The field.
        field: &'static str,
        /// The value found (truncated to 200 characters).
        value: String,
        /// Why it is unusable.
        reason: &'static str,
    },
}

fn invalid_json(operation: Operation, e: &serde_json::Error) -> ControlError {
    ControlError::InvalidJson {
        operation: operation.name(),
        detail: e.to_string(),
    }
}

fn invalid_field(
    operation: Operation,
    field: &'static str,
    value: &str,
    reason: &'static str,
) -> ControlError {
    ControlError::InvalidField {
        operation: operation.name(),
        field,
        value: value.chars().take(200).collect(),
        reason,
    }
}

/// Check a stream name against the service's rule: 1–256 of `[a-zA-Z0-9_.-]`.
pub fn validate_stream_name(operation: Operation, name: &str) -> Result<(), ControlError> {
    if name.is_empty() || name.len() > 256 {
        return Err(invalid_field(
            operation,
            "StreamName",
            name,
            "length must be 1 to 256",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(invalid_field(
            operation,
            "StreamName",
            name,
            "allowed characters are a-z A-Z 0-9 _ . -",
        ));
    }
    Ok(())
}

/// Check stream tags against the service's limits: at most 50, keys 1–128 characters, values at
/// most 256 characters.
pub fn validate_tags(
    operation: Operation,
    tags: &BTreeMap<String, String>,
) -> Result<(), ControlError> {
    if tags.len() > 50 {
        return Err(invalid_field(
            operation,
            "Tags",
            &format!("{} tags", tags.len()),
            "a stream holds at most 50 tags",
        ));
    }
    for (key, value) in tags {
        if key.is_empty() || key.chars().count() > 128 {
            return Err(invalid_field(
                operation,
                "Tags",
                key,
                "a tag key must be 1 to 128 characters",
            ));
        }
        if value.chars().count() > 256 {
            return Err(invalid_field(
                operation,
                "Tags",
                key,
                "a tag value must be at most 256 characters",
            ));
        }
    }
    Ok(())
}

/// `DescribeStream` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeStreamRequest {
    /// The stream's name.
    pub stream_name: String,
}

/// `CreateStream` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateStreamRequest {
    /// The device writing to the stream (unused by the service, kept for parity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The stream's name.
    pub stream_name: String,
    /// For example `video/h264` or `video/h264,audio/aac`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// KMS key for encryption at rest; the service's own key when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Hours of retention; 0 keeps nothing (fragments then complete on RECEIVED).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_retention_in_hours: Option<u32>,
    /// Tags set at creation, so no TagStream call is needed afterwards.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// `TagStream` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagStreamRequest {
    /// The stream's ARN (from DescribeStream or CreateStream).
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    /// Tags to add or replace.
    #[serde(rename = "Tags")]
    pub tags: BTreeMap<String, String>,
}

/// The API whose endpoint GetDataEndpoint returns; the uploader only needs PutMedia's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ApiName {
    /// `PUT_MEDIA`
    #[serde(rename = "PUT_MEDIA")]
    PutMedia,
}

/// `GetDataEndpoint` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GetDataEndpointRequest {
    /// The stream's name.
    #[serde(rename = "StreamName")]
    pub stream_name: String,
    /// Always `PUT_MEDIA` here.
    #[serde(rename = "APIName")]
    pub api_name: ApiName,
}

/// A control-plane request the session asks the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// DescribeStream.
    Describe(DescribeStreamRequest),
    /// CreateStream.
    Create(CreateStreamRequest),
    /// TagStream.
    Tag(TagStreamRequest),
    /// GetDataEndpoint.
    GetEndpoint(GetDataEndpointRequest),
}

impl ControlRequest {
    /// Which operation this is.
    pub fn operation(&self) -> Operation {
        match self {
            ControlRequest::Describe(_) => Operation::DescribeStream,
            ControlRequest::Create(_) => Operation::CreateStream,
            ControlRequest::Tag(_) => Operation::TagStream,
            ControlRequest::GetEndpoint(_) => Operation::GetDataEndpoint,
        }
    }

    /// The JSON body to send.
    pub fn to_json(&self) -> Result<Vec<u8>, ControlError> {
        let result = match self {
            ControlRequest::Describe(r) => serde_json::to_vec(r),
            ControlRequest::Create(r) => serde_json::to_vec(r),
            ControlRequest::Tag(r) => serde_json::to_vec(r),
            ControlRequest::GetEndpoint(r) => serde_json::to_vec(r),
        };
        result.map_err(|e| invalid_json(self.operation(), &e))
    }
}

/// Stream status as DescribeStream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStatus {
    /// Being created: poll.
    Creating,
    /// Ready for PutMedia.
    Active,
    /// Being changed: poll (PutMedia is not guaranteed meanwhile).
    Updating,
    /// Being deleted: nothing to upload to.
    Deleting,
    /// A status this version does not know.
    Other(String),
}

/// What a status means for the uploader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusDisposition {
    /// Describe again after a delay.
    Poll,
    /// Go on to stream.
    Ready,
    /// The stream is going away: stop streaming to it.
    Fatal,
}

impl StreamStatus {
    fn parse(s: &str) -> Self {
        match s {
            "CREATING" => StreamStatus::Creating,
            "ACTIVE" => StreamStatus::Active,
            "UPDATING" => StreamStatus::Updating,
            "DELETING" => StreamStatus::Deleting,
            other => StreamStatus::Other(other.to_owned()),
        }
    }

    /// What to do in this status. Unknown statuses are polled: the service may add transitional
    /// states, and polling costs little.
    pub fn disposition(&self) -> StatusDisposition {
        match self {
            StreamStatus::Active => StatusDisposition::Ready,
            StreamStatus::Deleting => StatusDisposition::Fatal,
            StreamStatus::Creating | StreamStatus::Updating | StreamStatus::Other(_) => {
                StatusDisposition::Poll
            }
        }
    }
}

/// The part of DescribeStream's `StreamInfo` the uploader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's name.
    pub stream_name: String,
    /// The stream's ARN (TagStream needs it).
    pub stream_arn: String,
    /// Its status.
    pub status: StreamStatus,
    /// Retention in hours; 0 means the service sends no PERSISTED ACKs.
    pub data_retention_in_hours: u32,
    /// Its media type, if set.
    pub media_type: Option<String>,
    /// Its KMS key, if set.
    pub kms_key_id: Option<String>,
    /// Its version, if sent.
    pub version: Option<String>,
}

#[derive(Deserialize)]
struct RawDescribe {
    #[serde(rename = "StreamInfo")]
    stream_info: Option<RawStreamInfo>,
}

#[derive(Deserialize)]
struct RawStreamInfo {
    #[serde(rename = "StreamName")]
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(rename = "Status")]
    status: Option<String>,
    #[serde(rename = "DataRetentionInHours")]
    data_retention_in_hours: Option<u32>,
    #[serde(rename = "MediaType")]
    media_type: Option<String>,
    #[serde(rename = "KmsKeyId")]
    kms_key_id: Option<String>,
    #[serde(rename = "Version")]
    version: Option<String>,
}

#[derive(Deserialize)]
struct RawCreate {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

#[derive(Deserialize)]
struct RawEndpoint {
    #[serde(rename = "DataEndpoint")]
    data_endpoint: Option<String>,
}

fn missing(operation: Operation, field: &'static str) -> ControlError {
    ControlError::MissingField {
        operation: operation.name(),
        field,
    }
}

/// Parse a DescribeStream response body.
pub fn parse_describe_stream(body: &[u8]) -> Result<StreamInfo, ControlError> {
    let op = Operation::DescribeStream;
    let raw: RawDescribe = serde_json::from_slice(body).map_err(|e| invalid_json(op, &e))?;
    let info = raw.stream_info.ok_or_else(|| missing(op, "StreamInfo"))?;
    let stream_name = info
        .stream_name
        .ok_or_else(|| missing(op, "StreamInfo.StreamName"))?;
    let stream_arn = info
        .stream_arn
        .filter(|arn| !arn.is_empty())
        .ok_or_else(|| missing(op, "StreamInfo.StreamARN"))?;
    let status = info
        .status
        .map(|s| StreamStatus::parse(&s))
        .ok_or_else(|| missing(op, "StreamInfo.Status"))?;
    let data_retention_in_hours = info
        .data_retention_in_hours
        .ok_or_else(|| missing(op, "StreamInfo.DataRetentionInHours"))?;
    Ok(StreamInfo {
        stream_name,
        stream_arn,
        status,
        data_retention_in_hours,
        media_type: info.media_type,
        kms_key_id: info.kms_key_id,
        version: info.version,
    })
}

/// Parse a CreateStream response body: the new stream's ARN.
pub fn parse_create_stream(body: &[u8]) -> Result<String, ControlError> {
    let op = Operation::CreateStream;
    let raw: RawCreate = serde_json::from_slice(body).map_err(|e| invalid_json(op, &e))?;
    raw.stream_arn
        .filter(|arn| !arn.is_empty())
        .ok_or_else(|| missing(op, "StreamARN"))
}

/// Parse a TagStream response body: empty, or an empty JSON object.
pub fn parse_tag_stream(body: &[u8]) -> Result<(), ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .map(|_| ())
        .map_err(|e| invalid_json(Operation::TagStream, &e))
}

/// Parse a GetDataEndpoint response body: the endpoint URL (`https://…`; `http://` is accepted
/// for a local stand-in), without a trailing slash.
pub fn parse_get_data_endpoint(body: &[u8]) -> Result<String, ControlError> {
    let op = Operation::GetDataEndpoint;
    let raw: RawEndpoint = serde_json::from_slice(body).map_err(|e| invalid_json(op, &e))?;
    let endpoint = raw
        .data_endpoint
        .ok_or_else(|| missing(op, "DataEndpoint"))?;
    let trimmed = endpoint.trim().trim_end_matches('/');
    let host = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    match host {
        Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => Ok(trimmed.to_owned()),
        _ => Err(invalid_field(
            op,
            "DataEndpoint",
            &endpoint,
            "expected an http(s) URL with a host",
        )),
    }
}

/// A parsed successful control-plane response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlResponse {
    /// DescribeStream's stream information.
    Described(StreamInfo),
    /// CreateStream's new ARN.
    Created {
        /// The ARN.
        stream_arn: String,
    },
    /// TagStream succeeded.
    Tagged,
    /// GetDataEndpoint's PutMedia endpoint.
    Endpoint {
        /// The endpoint URL.
        data_endpoint: String,
    },
}

impl ControlResponse {
    /// Parse the body of a successful response to `operation`.
    pub fn parse(operation: Operation, body: &[u8]) -> Result<Self, ControlError> {
        match operation {
            Operation::DescribeStream => parse_describe_stream(body).map(Self::Described),
            Operation::CreateStream => {
                parse_create_stream(body).map(|stream_arn| Self::Created { stream_arn })
            }
            Operation::TagStream => parse_tag_stream(body).map(|()| Self::Tagged),
            Operation::GetDataEndpoint => {
                parse_get_data_endpoint(body).map(|data_endpoint| Self::Endpoint { data_endpoint })
            }
        }
    }

    /// The operation this answers.
    pub fn operation(&self) -> Operation {
        match self {
            ControlResponse::Described(_) => Operation::DescribeStream,
            ControlResponse::Created { .. } => Operation::CreateStream,
            ControlResponse::Tagged => Operation::TagStream,
            ControlResponse::Endpoint { .. } => Operation::GetDataEndpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_value(request: &ControlRequest) -> serde_json::Value {
        serde_json::from_slice(&request.to_json().unwrap()).unwrap()
    }

    #[test]
    fn request_bodies_use_aws_field_names() {
        let describe = ControlRequest::Describe(DescribeStreamRequest {
            stream_name: "front-door".into(),
        });
        assert_eq!(to_value(&describe), json!({"StreamName": "front-door"}));

        let mut tags = BTreeMap::new();
        tags.insert("site".to_owned(), "warehouse-7".to_owned());
        let create = ControlRequest::Create(CreateStreamRequest {
            device_name: None,
            stream_name: "front-door".into(),
            media_type: Some("video/h264".into()),
            kms_key_id: Some("alias/cams".into()),
            data_retention_in_hours: Some(24),
            tags: tags.clone(),
        });
        assert_eq!(
            to_value(&create),
            json!({"StreamName": "front-door", "MediaType": "video/h264", "KmsKeyId": "alias/cams",
                   "DataRetentionInHours": 24, "Tags": {"site": "warehouse-7"}})
        );
        let bare = ControlRequest::Create(CreateStreamRequest {
            device_name: None,
            stream_name: "s".into(),
            media_type: None,
            kms_key_id: None,
            data_retention_in_hours: None,
            tags: BTreeMap::new(),
        });
        assert_eq!(to_value(&bare), json!({"StreamName": "s"}));

        let tag = ControlRequest::Tag(TagStreamRequest {
            stream_arn: "arn:aws:kinesisvideo:us-west-2:123456789012:stream/front-door/1".into(),
            tags,
        });
        assert_eq!(
            to_value(&tag),
            json!({"StreamARN": "arn:aws:kinesisvideo:us-west-2:123456789012:stream/front-door/1",
                   "Tags": {"site": "warehouse-7"}})
        );
        let endpoint = ControlRequest::GetEndpoint(GetDataEndpointRequest {
            stream_name: "front-door".into(),
            api_name: ApiName::PutMedia,
        });
        assert_eq!(
            to_value(&endpoint),
            json!({"StreamName": "front-door", "APIName": "PUT_MEDIA"})
        );
        assert_eq!(endpoint.operation().path(), "/getDataEndpoint");
    }

    const DESCRIBED: &str = r#"{"StreamInfo":{"CreationTime":1.7e9,"DataRetentionInHours":24,
        "DeviceName":"cam","KmsKeyId":"arn:aws:kms:us-west-2:1:alias/aws/kinesisvideo",
        "MediaType":"video/h264","Status":"ACTIVE",
        "StreamARN":"arn:aws:kinesisvideo:us-west-2:1:stream/front-door/1","StreamName":"front-door",
        "Version":"abc","NewField":{"x":1}}}"#;

    #[test]
    fn parses_describe_stream() {
        let info = parse_describe_stream(DESCRIBED.as_bytes()).unwrap();
        assert_eq!(info.stream_name, "front-door");
        assert_eq!(info.status, StreamStatus::Active);
        assert_eq!(info.status.disposition(), StatusDisposition::Ready);
        assert_eq!(info.data_retention_in_hours, 24);
        assert_eq!(info.media_type.as_deref(), Some("video/h264"));
        assert_eq!(info.version.as_deref(), Some("abc"));
    }

    #[test]
    fn describe_names_missing_fields() {
        let cases = [
            (r#"{}"#, "StreamInfo"),
            (
                r#"{"StreamInfo":{"StreamARN":"a","Status":"ACTIVE","DataRetentionInHours":1}}"#,
                "StreamInfo.StreamName",
            ),
            (
                r#"{"StreamInfo":{"StreamName":"s","Status":"ACTIVE","DataRetentionInHours":1}}"#,
                "StreamInfo.StreamARN",
            ),
            (
                r#"{"StreamInfo":{"StreamName":"s","StreamARN":"a","DataRetentionInHours":1}}"#,
                "StreamInfo.Status",
            ),
            (
                r#"{"StreamInfo":{"StreamName":"s","StreamARN":"a","Status":"ACTIVE"}}"#,
                "StreamInfo.DataRetentionInHours",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(
                parse_describe_stream(body.as_bytes()),
                Err(ControlError::MissingField {
                    operation: "DescribeStream",
                    field
                }),
                "{body}"
            );
        }
        let err = parse_describe_stream(b"{\"StreamInfo\": 3}").unwrap_err();
        assert!(matches!(
            err,
            ControlError::InvalidJson {
                operation: "DescribeStream",
                ..
            }
        ));
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn status_dispositions() {
        assert_eq!(
            StreamStatus::parse("CREATING").disposition(),
            StatusDisposition::Poll
        );
        assert_eq!(
            StreamStatus::parse("UPDATING").disposition(),
            StatusDisposition::Poll
        );
        assert_eq!(
            StreamStatus::parse("DELETING").disposition(),
            StatusDisposition::Fatal
        );
        assert_eq!(
            StreamStatus::parse("ACTIVE").disposition(),
            StatusDisposition::Ready
        );
        assert_eq!(
            StreamStatus::parse("ARCHIVING"),
            StreamStatus::Other("ARCHIVING".into())
        );
        assert_eq!(
            StreamStatus::parse("ARCHIVING").disposition(),
            StatusDisposition::Poll
        );
    }

    #[test]
    fn parses_create_tag_and_endpoint() {
        assert_eq!(
            parse_create_stream(br#"{"StreamARN":"arn:x"}"#),
            Ok("arn:x".to_owned())
        );
        assert_eq!(
            parse_create_stream(b"{}"),
            Err(ControlError::MissingField {
                operation: "CreateStream",
                field: "StreamARN"
            })
        );
        assert_eq!(parse_tag_stream(b""), Ok(()));
        assert_eq!(parse_tag_stream(b"{}"), Ok(()));
        assert!(parse_tag_stream(b"[1]").is_err());
        assert_eq!(
            parse_get_data_endpoint(
                br#"{"DataEndpoint":"https://s-1234.kinesisvideo.us-west-2.amazonaws.com/"}"#
            ),
            Ok("https://s-1234.kinesisvideo.us-west-2.amazonaws.com".to_owned())
        );
        assert_eq!(
            parse_get_data_endpoint(br#"{"DataEndpoint":"http://127.0.0.1:4566"}"#),
            Ok("http://127.0.0.1:4566".to_owned())
        );
        assert!(matches!(
            parse_get_data_endpoint(br#"{"DataEndpoint":"s-1234.example"}"#),
            Err(ControlError::InvalidField {
                field: "DataEndpoint",
                ..
            })
        ));
        assert_eq!(
            parse_get_data_endpoint(b"{}"),
            Err(ControlError::MissingField {
                operation: "GetDataEndpoint",
                field: "DataEndpoint"
            })
        );
        assert_eq!(
            ControlResponse::parse(
                Operation::GetDataEndpoint,
                br#"{"DataEndpoint":"https://e"}"#
            ),
            Ok(ControlResponse::Endpoint {
                data_endpoint: "https://e".into()
            })
        );
    }

    #[test]
    fn validates_names_and_tags() {
        let op = Operation::CreateStream;
        assert!(validate_stream_name(op, "front-door_1.a").is_ok());
        assert!(validate_stream_name(op, "").is_err());
        assert!(validate_stream_name(op, "front door").is_err());
        assert!(validate_stream_name(op, &"a".repeat(257)).is_err());
        let mut tags = BTreeMap::new();
        tags.insert("k".to_owned(), "v".repeat(256));
        assert!(validate_tags(op, &tags).is_ok());
        tags.insert("k2".to_owned(), "v".repeat(257));
        assert!(validate_tags(op, &tags).is_err());
        let many: BTreeMap<_, _> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_tags(op, &many).is_err());
    }
}
