//! The instance's own facts from the metadata server: project, zone, instance name and the
//! network of its first interface. `GCE_METADATA_HOST` points elsewhere (tests, proxies), as it
//! does for Google's own clients.

use std::time::Duration;

use crate::error::GceError;

const DEFAULT_HOST: &str = "metadata.google.internal";
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMetadata {
    pub project: String,
    /// The zone's name (`us-central1-a`), not its path.
    pub zone: String,
    pub instance: String,
    /// nic0's network name (`default`).
    pub network: String,
}

pub struct MetadataClient {
    base: String,
    http: reqwest::Client,
}

impl MetadataClient {
    /// The server named by `GCE_METADATA_HOST`, else the one every GCE VM has.
    pub fn from_env() -> Result<Self, GceError> {
        let host = std::env::var("GCE_METADATA_HOST").ok().filter(|h| !h.is_empty());
        Self::new(host.as_deref().unwrap_or(DEFAULT_HOST))
    }

    pub fn new(host: &str) -> Result<Self, GceError> {
        // The metadata server answers in milliseconds; a slow answer means we are not on GCE.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| GceError::other("metadata HTTP client", e))?;
        Ok(MetadataClient { base: format!("http://{host}/computeMetadata/v1/"), http })
    }

    pub async fn instance(&self) -> Result<InstanceMetadata, GceError> {
        Ok(InstanceMetadata {
            project: self.get("project/project-id").await?,
            zone: last_segment(&self.get("instance/zone").await?),
            instance: self.get("instance/name").await?,
            network: last_segment(&self.get("instance/network-interfaces/0/network").await?),
        })
    }

    /// One metadata value, retried briefly: the server can lag right after boot.
    pub async fn get(&self, path: &str) -> Result<String, GceError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_get(&url).await {
                Ok(value) => return Ok(value),
                Err(e) if attempt >= ATTEMPTS || matches!(e, GceError::NotFound { .. }) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
            }
        }
    }

    async fn try_get(&self, url: &str) -> Result<String, GceError> {
        let context = || format!("metadata {url}");
        let response = self
            .http
            .get(url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| GceError::other(context(), e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(GceError::NotFound { what: context() });
        }
        if !status.is_success() {
            return Err(GceError::other(context(), format!("HTTP {status}")));
        }
        let text = response.text().await.map_err(|e| GceError::other(context(), e))?;
        Ok(text.trim().to_string())
    }
}

/// `projects/123/zones/us-central1-a` → `us-central1-a`.
fn last_segment(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_segment() {
        assert_eq!(super::last_segment("projects/1/zones/europe-west1-b"), "europe-west1-b");
        assert_eq!(super::last_segment("default"), "default");
    }
}
