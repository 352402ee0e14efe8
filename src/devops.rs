//! The Azure DevOps REST calls agent-bootstrap makes with the managed-identity token.
//!
//! They exist to fail fast with a message that says what to fix, before anything touches the disk:
//! `_apis/connectionData` (is the token accepted, who am I), the pool by name with
//! `actionFilter=manage` (does it exist, may I register agents in it), the agent by name (is an
//! existing registration still known), and the packages API (which agent package, and its SHA-256).
//! The token is sent as `Authorization: Bearer`, never logged, and never sent anywhere but the
//! organization URL the user gave.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::clock::Clock;
use crate::secret::Secret;

const API_VERSION: &str = "7.1";

#[derive(Debug, thiserror::Error)]
pub enum DevOpsError {
    #[error(
        "Azure DevOps at {url} rejected the token (HTTP {status}): {message}\n\
         hint: add the managed identity to the organization (Organization settings → Users → Add users, \
         search for the identity's name, access level Basic), then run again"
    )]
    Unauthorized {
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "agent pool '{pool}' was not found in {org}\n\
         hint: create the pool (Organization settings → Agent pools → Add pool → Self-hosted) or pass \
         the right --pool; pools this identity can see: {visible}"
    )]
    PoolNotFound {
        pool: String,
        org: String,
        visible: String,
    },
    #[error(
        "{identity} may not register agents in pool '{pool}' (no Manage permission)\n\
         hint: make the identity an Administrator of the pool (Organization settings → Agent pools → \
         {pool} → Security → Add → Role: Administrator)"
    )]
    NoManagePermission { pool: String, identity: String },
    #[error(
        "pool '{pool}' has another agent named '{name}' (this one was id {local_id}); it is not \
         taken over unattended\n\
         hint: run `agent-bootstrap install` to replace it, or remove this agent"
    )]
    NameTaken {
        pool: String,
        name: String,
        local_id: u64,
    },
    #[error("Azure DevOps request {url} failed with HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("could not reach Azure DevOps at {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
    #[error(
        "the packages API of {org} offers no agent package for platform {platform}{version}\n\
         hint: pass --package PATH|URL with --package-sha256 HEX to install a package of your choice"
    )]
    NoPackage {
        org: String,
        platform: String,
        version: String,
    },
}

impl DevOpsError {
    /// Errors where the server said no (exit 4), as opposed to not answering.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized { .. }
                | Self::PoolNotFound { .. }
                | Self::NoManagePermission { .. }
                | Self::NameTaken { .. }
        ) || matches!(self, Self::Status { status, .. } if *status == 403 || *status == 404)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub id: String,
    #[serde(default)]
    pub provider_display_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionData {
    pub authenticated_user: Identity,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pool {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerAgent {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PackageVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl std::fmt::Display for PackageVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageMetadata {
    pub version: PackageVersion,
    pub download_url: String,
    #[serde(default)]
    pub hash_value: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct List<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
}

pub struct DevOpsClient {
    org_url: Url,
    token: Secret,
    http: reqwest::Client,
    clock: Clock,
    /// How long transient failures (transport, 5xx, 429) are retried.
    budget: Duration,
}

impl DevOpsClient {
    pub fn new(org_url: &Url, token: Secret, clock: Clock) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("agent-bootstrap/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static reqwest configuration is valid");
        Self {
            org_url: org_url.clone(),
            token,
            http,
            clock,
            budget: Duration::from_secs(15),
        }
    }

    /// Retry transient failures for this long (reconcile at boot waits for the network longer).
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    pub fn org_url(&self) -> &Url {
        &self.org_url
    }

    fn api(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.org_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{path}"));
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// GET with the token, retrying transient failures (5xx, 429, transport) a few times.
    async fn get<T: serde::de::DeserializeOwned>(&self, url: Url) -> Result<T, DevOpsError> {
        let shown = url.to_string();
        let mut attempt = 0u32;
        let start = self.clock.now();
        loop {
            attempt += 1;
            let result = self
                .http
                .get(url.clone())
                .bearer_auth(self.token.expose())
                .header("Accept", "application/json")
                .send()
                .await;
            let (retryable, error) = match result {
                Err(e) => (
                    true,
                    DevOpsError::Transport {
                        url: shown.clone(),
                        detail: crate::error::one_line(&e),
                    },
                ),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    match status {
                        200 => {
                            return serde_json::from_str(&body).map_err(|e| DevOpsError::Decode {
                                url: shown,
                                detail: e.to_string(),
                            });
                        }
                        // 203 is what Azure DevOps answers to a bad credential from a non-browser
                        // client: an HTML sign-in page.
                        401 | 203 => {
                            return Err(DevOpsError::Unauthorized {
                                url: shown,
                                status,
                                message: server_message(&body),
                            });
                        }
                        429 | 500..=599 => (
                            true,
                            DevOpsError::Status {
                                url: shown.clone(),
                                status,
                                message: server_message(&body),
                            },
                        ),
                        _ => {
                            return Err(DevOpsError::Status {
                                url: shown,
                                status,
                                message: server_message(&body),
                            });
                        }
                    }
                }
            };
            let delay = Duration::from_secs(1 << (attempt - 1).min(5)).min(Duration::from_secs(30));
            if !retryable || self.clock.elapsed(start) + delay > self.budget {
                return Err(error);
            }
            tracing::warn!(attempt, "{error}; retrying in {}s", delay.as_secs());
            self.clock.sleep(delay).await;
        }
    }

    /// Who the token belongs to; fails with [`DevOpsError::Unauthorized`] when it is not accepted.
    pub async fn connection_data(&self) -> Result<ConnectionData, DevOpsError> {
        self.get(self.api("_apis/connectionData", &[])).await
    }

    async fn pools(&self, name: &str, manage: bool) -> Result<Vec<Pool>, DevOpsError> {
        let mut query = vec![("poolName", name)];
        if manage {
            query.push(("actionFilter", "manage"));
        }
        query.push(("api-version", API_VERSION));
        let list: List<Pool> = self
            .get(self.api("_apis/distributedtask/pools", &query))
            .await?;
        Ok(list.value)
    }

    /// The pool, checked for Manage permission: distinguishes "missing" from "not allowed".
    pub async fn manageable_pool(&self, name: &str, identity: &str) -> Result<Pool, DevOpsError> {
        if let Some(pool) = find_named(self.pools(name, true).await?, name) {
            return Ok(pool);
        }
        if find_named(self.pools(name, false).await?, name).is_some() {
            return Err(DevOpsError::NoManagePermission {
                pool: name.to_owned(),
                identity: identity.to_owned(),
            });
        }
        let query = [("api-version", API_VERSION)];
        let all: List<Pool> = self
            .get(self.api("_apis/distributedtask/pools", &query))
            .await
            .unwrap_or(List { value: vec![] });
        let mut names: Vec<String> = all
            .value
            .into_iter()
            .map(|p| format!("'{}'", p.name))
            .collect();
        names.truncate(20);
        Err(DevOpsError::PoolNotFound {
            pool: name.to_owned(),
            org: self.org_url.to_string(),
            visible: if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
        })
    }

    /// The agent with this name in the pool, if the server knows it.
    pub async fn find_agent(
        &self,
        pool_id: u64,
        name: &str,
    ) -> Result<Option<ServerAgent>, DevOpsError> {
        let path = format!("_apis/distributedtask/pools/{pool_id}/agents");
        let list: List<ServerAgent> = self
            .get(self.api(&path, &[("agentName", name), ("api-version", API_VERSION)]))
            .await?;
        Ok(list
            .value
            .into_iter()
            .find(|a| a.name.eq_ignore_ascii_case(name)))
    }

    /// The newest package for `platform`, or the given version (`agent.md` §6.2).
    pub async fn agent_package(
        &self,
        platform: &str,
        version: Option<&str>,
    ) -> Result<PackageMetadata, DevOpsError> {
        let mut query = vec![("platform", platform)];
        if version.is_none() {
            query.push(("$top", "1"));
        }
        let list: List<PackageMetadata> = self
            .get(self.api("_apis/distributedtask/packages/agent", &query))
            .await?;
        let found = match version {
            None => list.value.into_iter().next(),
            Some(v) => list.value.into_iter().find(|p| p.version.to_string() == v),
        };
        found.ok_or_else(|| DevOpsError::NoPackage {
            org: self.org_url.to_string(),
            platform: platform.to_owned(),
            version: version
                .map(|v| format!(" at version {v}"))
                .unwrap_or_default(),
        })
    }
}

fn find_named(pools: Vec<Pool>, name: &str) -> Option<Pool> {
    pools
        .into_iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The `message` of an Azure DevOps error body, or a short form of the body.
fn server_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Wrapped {
        message: Option<String>,
    }
    if let Ok(Wrapped { message: Some(m) }) = serde_json::from_str::<Wrapped>(body) {
        return m;
    }
    let t = body.trim();
    if t.starts_with('<') {
        return "an HTML page (a sign-in page: the credential was not accepted)".to_owned();
    }
    if t.is_empty() {
        "empty body".to_owned()
    } else {
        t.chars().take(300).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_keep_collection_paths() {
        let c = DevOpsClient::new(
            &Url::parse("https://tfs.example.com/tfs/DefaultCollection").unwrap(),
            Secret::new("t"),
            Clock::virtual_clock(),
        );
        assert_eq!(
            c.api("_apis/connectionData", &[]).as_str(),
            "https://tfs.example.com/tfs/DefaultCollection/_apis/connectionData"
        );
        let c = DevOpsClient::new(
            &Url::parse("https://dev.azure.com/myorg").unwrap(),
            Secret::new("t"),
            Clock::virtual_clock(),
        );
        assert_eq!(
            c.api(
                "_apis/distributedtask/packages/agent",
                &[("platform", "linux-x64"), ("$top", "1")]
            )
            .as_str(),
            "https://dev.azure.com/myorg/_apis/distributedtask/packages/agent?platform=linux-x64&%24top=1"
        );
    }

    #[test]
    fn package_version_is_an_object() {
        let p: PackageMetadata = serde_json::from_str(
            r#"{"type":"agent","platform":"linux-x64","version":{"major":4,"minor":264,"patch":2},
               "downloadUrl":"https://download.agent.dev.azure.com/agent/4.264.2/vsts-agent-linux-x64-4.264.2.tar.gz",
               "hashValue":"ab","filename":"vsts-agent-linux-x64-4.264.2.tar.gz"}"#,
        )
        .unwrap();
        assert_eq!(p.version.to_string(), "4.264.2");
    }

    #[test]
    fn server_messages_are_extracted() {
        assert_eq!(
            server_message(r#"{"$id":"1","message":"TF400813: nope"}"#),
            "TF400813: nope"
        );
        assert!(server_message("<html>").contains("sign-in"));
    }
}
