//! The instance metadata service, through aws-config's IMDSv2 client: a session token first
//! (PUT), then GETs carrying it. The client honours `AWS_EC2_METADATA_SERVICE_ENDPOINT` (and the
//! profile's `ec2_metadata_service_endpoint`), which tests use to point it at a local server.

use std::net::Ipv4Addr;

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::Client;

/// What weft learns about its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub region: String,
    /// MAC of the primary interface.
    pub mac: String,
    /// The primary interface's ENI id.
    pub interface_id: String,
    pub local_ipv4: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("instance metadata {path}: {}", chain(source.as_ref()))]
    Request {
        path: String,
        #[source]
        source: Box<ImdsError>,
    },
    #[error("instance metadata {path}: unexpected value {value:?}")]
    Invalid { path: String, value: String },
}

/// An error with its causes, for the one line an operator reads ("failed to load IMDS session
/// token" alone does not say that the connection was refused).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const BASE: &str = "/latest/meta-data";

async fn get(client: &Client, path: &str) -> Result<String, MetadataError> {
    let path = format!("{BASE}/{path}");
    match client.get(path.clone()).await {
        Ok(value) => {
            let value: String = value.into();
            let value = value.trim().to_string();
            if value.is_empty() {
                return Err(MetadataError::Invalid { path, value });
            }
            Ok(value)
        }
        Err(source) => Err(MetadataError::Request { path, source: Box::new(source) }),
    }
}

/// Reads the instance's identity and primary interface.
pub async fn instance_metadata() -> Result<InstanceMetadata, MetadataError> {
    let client = Client::builder().build();
    let instance_id = get(&client, "instance-id").await?;
    let region = get(&client, "placement/region").await?;
    let mac = get(&client, "mac").await?;
    let interface_id = get(&client, &format!("network/interfaces/macs/{mac}/interface-id")).await?;
    let local = get(&client, "local-ipv4").await?;
    let local_ipv4 =
        local.parse().map_err(|_| MetadataError::Invalid { path: format!("{BASE}/local-ipv4"), value: local })?;
    Ok(InstanceMetadata { instance_id, region, mac, interface_id, local_ipv4 })
}

/// How asking the metadata service for a session token (IMDSv2's `PUT /latest/api/token`) and
/// then for the instance id ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProbe {
    Answered,
    /// The token request timed out: typical of a container behind the instance's network when
    /// the metadata options' hop limit is 1 (the answer dies one hop short).
    TimedOut(String),
    Failed(String),
}

/// One token request and one GET, no retries, each waiting at most `timeout`.
pub async fn probe_token(timeout: std::time::Duration) -> TokenProbe {
    use aws_config::imds::client::error::TokenError;
    use aws_sdk_ec2::error::SdkError;
    let client = Client::builder().connect_timeout(timeout).read_timeout(timeout).max_attempts(1).build();
    let error = match client.get(format!("{BASE}/instance-id")).await {
        Ok(_) => return TokenProbe::Answered,
        Err(error) => error,
    };
    let timed_out = match &error {
        ImdsError::FailedToLoadToken(_) => {
            let mut cause = std::error::Error::source(&error);
            let mut timed_out = false;
            while let Some(e) = cause {
                if let Some(sdk) = e.downcast_ref::<SdkError<TokenError>>() {
                    timed_out |= matches!(sdk, SdkError::TimeoutError(_))
                        || matches!(sdk, SdkError::DispatchFailure(d) if d.is_timeout());
                }
                if let Some(connector) = e.downcast_ref::<aws_sdk_ec2::error::ConnectorError>() {
                    timed_out |= connector.is_timeout();
                }
                cause = e.source();
            }
            timed_out
        }
        _ => false,
    };
    let text = chain(&error);
    if timed_out {
        TokenProbe::TimedOut(text)
    } else {
        TokenProbe::Failed(text)
    }
}
