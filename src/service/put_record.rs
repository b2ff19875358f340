//! `kinesis-edge put-record`: one record into a Kinesis data stream through the same producer
//! code the daemon's telemetry uses (shard map, limits, retries, error classes). Succeeds only
//! once the service has taken the record.

use std::time::Duration;

use bytes::Bytes;

use crate::aws::{self, ClockSkew, CredentialsCache, DEFAULT_REFRESH_BEFORE, ProviderContext};
use crate::config::{CredentialsConfig, ValidatedConfig};
use crate::telemetry::{
    self, ClientSettings, KdsClient, ProducerConfig, PutOutcome, StreamRef, TelemetryError,
    UserRecord,
};

use super::access::credential_provider;

/// What to put and how long to keep trying.
#[derive(Debug, Clone)]
pub struct PutRecordRequest {
    pub stream: String,
    pub partition_key: String,
    pub data: Bytes,
    /// Give up (non-zero exit) when the service has not taken the record by then.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PutRecordError {
    #[error(
        "no AWS region: set [aws] region in the configuration, AWS_REGION or AWS_DEFAULT_REGION"
    )]
    NoRegion,
    #[error("telemetry endpoint: {0}")]
    Endpoint(#[from] aws::EndpointError),
    #[error("cannot set up the Kinesis client: {0}")]
    Client(String),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// Puts one record. Region, endpoint and credentials come from `config` when given (its `[aws]`
/// section and `telemetry.endpoint`), else from the standard AWS environment and profile files.
pub async fn put_record(
    config: Option<&ValidatedConfig>,
    request: PutRecordRequest,
) -> Result<PutOutcome, PutRecordError> {
    let context = ProviderContext::from_process();
    let region = match config {
        Some(config) => config.aws.region.clone(),
        None => aws::default_region(&context).ok_or(PutRecordError::NoRegion)?,
    };
    let endpoint_override = config.and_then(|config| config.telemetry.endpoint.as_deref());
    let settings = ClientSettings::resolve(&region, endpoint_override, &*context.env)?;
    let default_credentials = CredentialsConfig::default();
    let credentials = config.map_or(&default_credentials, |config| &config.aws.credentials);
    let skew = ClockSkew::default();
    let cache = CredentialsCache::new(
        credential_provider(credentials, &context),
        DEFAULT_REFRESH_BEFORE,
    )
    .with_clock({
        let skew = skew.clone();
        move || skew.now()
    });
    let client = KdsClient::new(
        &settings,
        StreamRef {
            name: request.stream,
            arn: None,
        },
        cache,
        skew,
    )
    .map_err(|error| PutRecordError::Client(error.to_string()))?;
    let record = UserRecord::new(
        request.partition_key,
        None,
        request.data,
        telemetry::record::DEFAULT_MAX_RECORD_BYTES,
    )
    .map_err(TelemetryError::from)?;
    Ok(
        telemetry::put_record_once(&client, record, ProducerConfig::default(), request.timeout)
            .await?,
    )
}
