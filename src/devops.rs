//! The Azure DevOps REST calls agent-bootstrap makes itself (registration is the agent's own
//! `config.sh`), with the identity's token.
//!
//! Before anything touches the disk they fail fast with a message that says what to fix:
//! `_apis/connectionData` (is the token accepted, who am I; a 401 that offers no Bearer is Azure
//! DevOps Server), the pool by name with `actionFilter=manage` (does it exist, may I register agents
//! in it), the agent by name (is an existing registration still known, is it online or busy), and
//! the packages API (which agent package, and its SHA-256). After, they act on agents the way
//! `config.sh remove` and the web UI do, for `remove`, `run`, `watch` and `prune`: list, disable
//! (`enabled: false` while a job drains) and delete. A deployment group's or environment's agent
//! ([`crate::scope`]) is found and deleted through the group's own routes instead of a pool's.
//! The token is sent as `Authorization: Bearer` (a PAT as HTTP Basic), never logged, and never sent anywhere but the
//! organization URL the user gave (or root's saved settings hold). Requests go through
//! [`crate::net`]: one retry table, one budget per operation, `Retry-After` honoured, and a token
//! from [`Tokens`] that is renewed before it expires.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::clock::Budget;
use crate::identity::{IdentityError, Scheme, Tokens};
use crate::net::{Answer, Net, Service, Try};
use crate::scope::{self, Group, GroupKind, GroupRef};

const API_VERSION: &str = "7.1";

#[derive(Debug, thiserror::Error)]
pub enum DevOpsError {
    #[error("Azure DevOps at {url} rejected the token (HTTP {status}): {message}\nhint: {hint}")]
    Unauthorized {
        url: String,
        status: u16,
        message: String,
        hint: &'static str,
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
        "{what} '{group}' was not found in project '{project}' of {org}\n\
         hint: create it (Pipelines → {what}s in project '{project}') or pass the right {flag} and \
         --project",
        what = .kind.noun(),
        flag = .kind.flag()
    )]
    GroupNotFound {
        kind: GroupKind,
        group: String,
        project: String,
        org: String,
    },
    #[error(
        "{identity} may not register agents in deployment group '{group}' of project '{project}' \
         (no Manage permission)\n\
         hint: make the identity an Administrator of the deployment group (Pipelines → Deployment \
         groups → {group} → Security → Add → Role: Administrator)"
    )]
    NoGroupPermission {
        group: String,
        project: String,
        identity: String,
    },
    #[error(
        "pool '{pool}' has another agent named '{name}' (this one was id {local_id}); it is not \
         taken over unattended\n\
         hint: run `agent-bootstrap install --replace` to replace it, or remove this agent"
    )]
    NameTaken {
        pool: String,
        name: String,
        local_id: u64,
    },
    #[error(
        "pool '{pool}' already has an agent named '{name}' (id {id}), {by}; it is not taken over\n\
         hint: pass --replace to take it over (whatever runs it loses its registration), or \
         choose another --agent-name"
    )]
    NameTakenByAnother {
        pool: String,
        name: String,
        id: u64,
        /// Who registered it, as far as the server's record tells.
        by: String,
    },
    #[error("Azure DevOps request {url} failed with HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("Azure DevOps at {url} cannot be reached: {blocked}")]
    Blocked {
        url: String,
        blocked: Box<crate::net::Blocked>,
    },
    #[error(
        "Azure DevOps at {url} did not answer usefully after {attempts} attempts in {}s: {last}",
        elapsed.as_secs()
    )]
    GaveUp {
        url: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    #[error("{failed} of {of} agents could not be deleted; the first: '{name}': {detail}")]
    NotAllDeleted {
        failed: usize,
        of: usize,
        name: String,
        detail: String,
    },
    #[error(transparent)]
    Token(#[from] IdentityError),
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
    /// The server refused to delete the agent because it runs a job (`TaskAgentBusyException`,
    /// HTTP 400 or 409; the message names the job): `remove` waits for it, `prune` skips it.
    pub fn is_agent_busy(&self) -> bool {
        matches!(self, Self::Status { status: 400 | 409, message, .. }
            if message.contains("TaskAgentBusy")
                || message.to_ascii_lowercase().contains("running a job")
                || message.to_ascii_lowercase().contains("busy"))
    }

    /// Errors where the server said no (exit 4), as opposed to not answering.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized { .. }
                | Self::PoolNotFound { .. }
                | Self::NoManagePermission { .. }
                | Self::GroupNotFound { .. }
                | Self::NoGroupPermission { .. }
                | Self::NameTaken { .. }
                | Self::NameTakenByAnother { .. }
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
    /// Set when the agent registers in a deployment group or an environment ([`crate::scope`]):
    /// then `id` and `name` are its deployment pool's (an environment's name and 0), and its
    /// agents are found and deleted through the group's routes.
    #[serde(skip)]
    pub group: Option<GroupRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerAgent {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub created_on: Option<String>,
    #[serde(default)]
    pub status_changed_on: Option<String>,
    /// The job it runs; only when asked for (`includeAssignedRequest=true`).
    #[serde(default)]
    pub assigned_request: Option<serde_json::Value>,
    /// What the agent reported when it registered or last started (its environment and its
    /// `.capabilities`); only when asked for (`includeCapabilities=true`).
    #[serde(default)]
    pub system_capabilities: std::collections::BTreeMap<String, String>,
    /// A group's agent: its deployment target's or VM resource's id ([`crate::scope`]).
    #[serde(skip)]
    pub member_id: Option<u64>,
}

/// What [`DevOpsClient::access`] found: the identity as Azure DevOps names it, and the pool it may
/// manage.
#[derive(Debug, Clone)]
pub struct Access {
    pub who: String,
    pub pool: Pool,
}

impl ServerAgent {
    pub fn is_online(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("online"))
    }

    /// Runs a job now (asked for with `includeAssignedRequest=true`).
    pub fn is_busy(&self) -> bool {
        self.assigned_request.as_ref().is_some_and(|r| !r.is_null())
    }

    /// When its status last changed (else when it was created), in Unix seconds.
    pub fn last_change(&self) -> Option<u64> {
        self.status_changed_on
            .as_deref()
            .or(self.created_on.as_deref())
            .and_then(crate::clock::parse_rfc3339)
    }
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
    tokens: Arc<Tokens>,
    net: Net,
}

impl DevOpsClient {
    pub fn new(org_url: &Url, tokens: Arc<Tokens>, net: &Net) -> Self {
        Self {
            org_url: org_url.clone(),
            tokens,
            net: net.clone(),
        }
    }

    pub fn org_url(&self) -> &Url {
        &self.org_url
    }

    pub(crate) fn api(&self, path: &str, query: &[(&str, &str)]) -> Url {
        api_url(&self.org_url, path, query)
    }

    /// One call with the token, retried per the table within `budget` (which also pays for
    /// renewing the token). Fatal answers become the matching [`DevOpsError`].
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        url: Url,
        budget: &Budget,
    ) -> Result<Answer, DevOpsError> {
        self.call_with_body(method, url, None, budget).await
    }

    /// [`Self::call`] with a JSON body.
    async fn call_with_body(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Option<serde_json::Value>,
        budget: &Budget,
    ) -> Result<Answer, DevOpsError> {
        let shown = url.to_string();
        let what = format!("Azure DevOps {method} {}", url.path());
        let outcome = self
            .net
            .retry(&what, *budget, async |_| {
                let token = match self.tokens.get(budget).await {
                    Ok(t) => t,
                    Err(e) => return Try::Done(Err(DevOpsError::Token(e))),
                };
                let request = self
                    .net
                    .client(Service::DevOps)
                    .request(method.clone(), url.clone());
                // A PAT only as Basic (Azure DevOps refuses it as a Bearer token).
                let request = match self.tokens.scheme() {
                    Scheme::Bearer => request.bearer_auth(token.expose()),
                    Scheme::Basic => request.basic_auth("", Some(token.expose())),
                };
                let mut request = request
                    .header("Accept", "application/json")
                    .timeout(Duration::from_secs(60));
                if let Some(b) = &body {
                    request = request
                        .header("Content-Type", "application/json")
                        .body(b.to_string());
                }
                let answer = self.net.fetch(request).await;
                self.net.settle(Service::DevOps, answer, Ok, |a| {
                    Err(refusal(a, &shown, self.tokens.scheme()))
                })
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(crate::net::GaveUp {
                blocked: Some(blocked),
                ..
            }) => Err(DevOpsError::Blocked {
                url: shown,
                blocked: Box::new(blocked),
            }),
            Err(g) => Err(DevOpsError::GaveUp {
                url: shown,
                attempts: g.attempts,
                elapsed: g.elapsed,
                last: g.last,
            }),
        }
    }

    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
        budget: &Budget,
    ) -> Result<T, DevOpsError> {
        let shown = url.to_string();
        let answer = self.call(reqwest::Method::GET, url, budget).await?;
        serde_json::from_str(&answer.body).map_err(|e| DevOpsError::Decode {
            url: shown,
            detail: e.to_string(),
        })
    }

    /// Who the token belongs to; fails with [`DevOpsError::Unauthorized`] when it is not accepted.
    pub async fn connection_data(&self, budget: &Budget) -> Result<ConnectionData, DevOpsError> {
        self.get(self.api("_apis/connectionData", &[]), budget)
            .await
    }

    async fn pools(
        &self,
        name: &str,
        manage: bool,
        budget: &Budget,
    ) -> Result<Vec<Pool>, DevOpsError> {
        let mut query = vec![("poolName", name)];
        if manage {
            query.push(("actionFilter", "manage"));
        }
        query.push(("api-version", API_VERSION));
        let list: List<Pool> = self
            .get(self.api("_apis/distributedtask/pools", &query), budget)
            .await?;
        Ok(list.value)
    }

    /// The pool if this identity may manage it (`actionFilter=manage`): one request.
    pub async fn pool_if_manageable(
        &self,
        name: &str,
        budget: &Budget,
    ) -> Result<Option<Pool>, DevOpsError> {
        Ok(find_named(self.pools(name, true, budget).await?, name))
    }

    /// The preflight every command that registers or deletes agents makes first: is the token
    /// accepted (who is it), then may it manage the pool. A pool it may not manage is explained
    /// ([`Self::explain_unmanageable`]). In this order, not at once: a token the organization
    /// does not accept yet is the answer, and a second request would only repeat it (and count
    /// against the organization's rate limit while a fleet waits for access).
    /// With `group`, the deployment group or environment instead of the pool
    /// ([`Self::group_access`]).
    pub async fn access(
        &self,
        pool: &str,
        group: Option<&Group>,
        budget: &Budget,
    ) -> Result<Access, DevOpsError> {
        let me = self.connection_data(budget).await?.authenticated_user;
        let who = me.provider_display_name.clone().unwrap_or(me.id);
        if let Some(g) = group {
            let pool = self.group_access(g, &who, budget).await?;
            return Ok(Access { who, pool });
        }
        match self.pool_if_manageable(pool, budget).await? {
            Some(pool) => Ok(Access { who, pool }),
            None => Err(self.explain_unmanageable(pool, &who, budget).await),
        }
    }

    /// Why a pool is not manageable: it exists without Manage permission, or it does not exist
    /// (the error lists the pools the identity can see).
    pub async fn explain_unmanageable(
        &self,
        name: &str,
        identity: &str,
        budget: &Budget,
    ) -> DevOpsError {
        match self.pools(name, false, budget).await {
            Err(e) => return e,
            Ok(pools) if find_named(pools.clone(), name).is_some() => {
                return DevOpsError::NoManagePermission {
                    pool: name.to_owned(),
                    identity: identity.to_owned(),
                };
            }
            Ok(_) => {}
        }
        let query = [("api-version", API_VERSION)];
        let all: List<Pool> = self
            .get(self.api("_apis/distributedtask/pools", &query), budget)
            .await
            .unwrap_or(List { value: vec![] });
        let mut names: Vec<String> = all
            .value
            .into_iter()
            .map(|p| format!("'{}'", p.name))
            .collect();
        names.truncate(20);
        DevOpsError::PoolNotFound {
            pool: name.to_owned(),
            org: self.org_url.to_string(),
            visible: if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
        }
    }

    /// The pool's (or group's) agent of this name (with its capabilities), if the server knows it.
    pub async fn find_agent(
        &self,
        pool: &Pool,
        name: &str,
        budget: &Budget,
    ) -> Result<Option<ServerAgent>, DevOpsError> {
        if let Some(g) = &pool.group {
            return self.find_group_agent(g, name, budget).await;
        }
        let path = format!("_apis/distributedtask/pools/{}/agents", pool.id);
        let list: List<ServerAgent> = self
            .get(
                self.api(
                    &path,
                    &[
                        ("agentName", name),
                        ("includeCapabilities", "true"),
                        ("api-version", API_VERSION),
                    ],
                ),
                budget,
            )
            .await?;
        Ok(list
            .value
            .into_iter()
            .find(|a| a.name.eq_ignore_ascii_case(name)))
    }

    /// Deletes an agent from its pool (`config.sh remove` does the same call). A busy agent (it runs
    /// a job) is refused by the server with a 400 `TaskAgentBusyException`: returned as
    /// [`DevOpsError::Status`] for the caller to wait and try again.
    /// Every agent of a pool, with the job each one runs.
    pub async fn list_agents(
        &self,
        pool_id: u64,
        budget: &Budget,
    ) -> Result<Vec<ServerAgent>, DevOpsError> {
        let path = format!("_apis/distributedtask/pools/{pool_id}/agents");
        let list: List<ServerAgent> = self
            .get(
                self.api(
                    &path,
                    &[
                        ("includeAssignedRequest", "true"),
                        ("api-version", API_VERSION),
                    ],
                ),
                budget,
            )
            .await?;
        Ok(list.value)
    }

    /// One agent by id, with the job it runs; `None` when the pool no longer has it.
    pub async fn agent(
        &self,
        pool_id: u64,
        agent_id: u64,
        budget: &Budget,
    ) -> Result<Option<ServerAgent>, DevOpsError> {
        let path = format!("_apis/distributedtask/pools/{pool_id}/agents/{agent_id}");
        let url = self.api(
            &path,
            &[
                ("includeAssignedRequest", "true"),
                ("api-version", API_VERSION),
            ],
        );
        match self.get(url, budget).await {
            Ok(a) => Ok(Some(a)),
            Err(DevOpsError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Agents - Update with `enabled`: a disabled agent is assigned no new job (a drain).
    pub async fn set_agent_enabled(
        &self,
        pool_id: u64,
        agent_id: u64,
        enabled: bool,
        budget: &Budget,
    ) -> Result<(), DevOpsError> {
        let path = format!("_apis/distributedtask/pools/{pool_id}/agents/{agent_id}");
        let url = self.api(&path, &[("api-version", API_VERSION)]);
        let body = serde_json::json!({ "id": agent_id, "enabled": enabled });
        self.call_with_body(reqwest::Method::PATCH, url, Some(body), budget)
            .await
            .map(drop)
    }

    pub async fn delete_agent(
        &self,
        pool_id: u64,
        agent_id: u64,
        budget: &Budget,
    ) -> Result<(), DevOpsError> {
        let path = format!("_apis/distributedtask/pools/{pool_id}/agents/{agent_id}");
        let url = self.api(&path, &[("api-version", API_VERSION)]);
        match self.call(reqwest::Method::DELETE, url, budget).await {
            Ok(_) => Ok(()),
            // Already gone: what we wanted.
            Err(DevOpsError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes a registered agent wherever it is: from its pool, or its deployment target or VM
    /// resource from its group ([`crate::scope`]).
    pub async fn unregister(
        &self,
        pool: &Pool,
        agent: &ServerAgent,
        budget: &Budget,
    ) -> Result<(), DevOpsError> {
        match &pool.group {
            Some(g) => self.delete_group_agent(g, agent, budget).await,
            None => self.delete_agent(pool.id, agent.id, budget).await,
        }
    }

    /// The newest package for `platform`, or the given version (`agent.md` §6.2).
    pub async fn agent_package(
        &self,
        platform: &str,
        version: Option<&str>,
        budget: &Budget,
    ) -> Result<PackageMetadata, DevOpsError> {
        let mut query = vec![("platform", platform)];
        if version.is_none() {
            query.push(("$top", "1"));
        }
        let list: List<PackageMetadata> = self
            .get(
                self.api("_apis/distributedtask/packages/agent", &query),
                budget,
            )
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

fn api_url(org_url: &Url, path: &str, query: &[(&str, &str)]) -> Url {
    let mut url = org_url.clone();
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

/// The error for an answer the table calls fatal.
/// What to do about a rejected token, by kind of token.
pub fn unauthorized_hint(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Bearer => {
            "add the identity to the organization (Organization settings → Users → Add users, \
             search for the identity's name, access level Basic), then run again"
        }
        Scheme::Basic => {
            "the personal access token is not valid for this organization: expired, revoked, or \
             made for another organization; it needs the scope Agent Pools (Read & manage)"
        }
    }
}

/// What to do when the server does not take Entra ID tokens at all: Azure DevOps Server.
pub const ON_PREMISES_HINT: &str = "this looks like Azure DevOps Server (on-premises), which does \
    not accept Entra ID tokens: use a personal access token with the scope Agent Pools (Read & \
    manage): --identity pat with AZP_TOKEN_FILE (or AZP_TOKEN)";

/// The authentication schemes a 401 offers (`WWW-Authenticate`), when it offers some and Bearer
/// is not among them: the server takes no Entra ID token, whoever it names. Azure DevOps Services
/// offers `Bearer authorization_uri=…`; Azure DevOps Server behind IIS offers `Negotiate`, `NTLM`
/// and perhaps `Basic`.
pub fn no_bearer_offered(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let schemes: Vec<String> = headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.split_whitespace().next())
        // `realm="…"` and other parameters after a comma are not schemes.
        .filter(|word| !word.contains('='))
        .map(str::to_owned)
        .collect();
    (!schemes.is_empty() && !schemes.iter().any(|s| s.eq_ignore_ascii_case("bearer")))
        .then(|| schemes.join(", "))
}

fn refusal(a: Answer, url: &str, scheme: Scheme) -> DevOpsError {
    match a.status {
        401 if scheme == Scheme::Bearer && no_bearer_offered(&a.headers).is_some() => {
            let offered = no_bearer_offered(&a.headers).unwrap_or_default();
            DevOpsError::Unauthorized {
                url: url.to_owned(),
                status: a.status,
                message: format!(
                    "{}; the server offers {offered} authentication, not Bearer",
                    server_message(&a.body)
                ),
                hint: ON_PREMISES_HINT,
            }
        }
        // 203 is what Azure DevOps answers to a bad credential from a non-browser client: an HTML
        // sign-in page.
        401 | 203 => DevOpsError::Unauthorized {
            url: url.to_owned(),
            status: a.status,
            message: server_message(&a.body),
            hint: unauthorized_hint(scheme),
        },
        status => DevOpsError::Status {
            url: url.to_owned(),
            status,
            message: server_message(&a.body),
        },
    }
}

fn find_named(pools: Vec<Pool>, name: &str) -> Option<Pool> {
    pools
        .into_iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The `message` of an Azure DevOps error body, or a short form of the body.
fn server_message(body: &str) -> String {
    match crate::net::short_body(body) {
        m if m == "an HTML page" => {
            "an HTML page (a sign-in page: the credential was not accepted)".to_owned()
        }
        m if m.is_empty() => "empty body".to_owned(),
        m => m,
    }
}

// Deployment groups and environments ([`crate::scope`]): their own routes, as the agent's
// configuration providers call them.

#[derive(Deserialize)]
struct ProjectRef {
    id: String,
}

#[derive(Deserialize)]
struct PoolRef {
    id: u64,
    name: String,
}

/// A deployment group or an environment, as the list routes return them.
#[derive(Deserialize)]
struct GroupFound {
    id: u64,
    name: String,
    project: ProjectRef,
    /// A deployment group's deployment pool (an environment's list entry has none).
    #[serde(default)]
    pool: Option<PoolRef>,
}

/// A deployment target or a virtual-machine resource: its own id and the agent in it.
#[derive(Deserialize)]
struct Member {
    id: u64,
    #[serde(default)]
    agent: Option<ServerAgent>,
}

impl DevOpsClient {
    /// The group if this identity may register agents in it: a deployment group is asked for with
    /// `actionFilter=manage` (as pools are); an environment's list has no such filter, so only
    /// its existence is checked here and a missing role shows at registration.
    ///
    /// The [`Pool`] returned is what the service's name and the saved settings use: the
    /// deployment pool (`group.pool`) of a deployment group; the environment's name, as the
    /// agent's service name has it (`ServiceControlManager.CalculateServiceName`: `PoolName ??
    /// EnvironmentName`), for an environment.
    pub async fn group_access(
        &self,
        g: &Group,
        identity: &str,
        budget: &Budget,
    ) -> Result<Pool, DevOpsError> {
        let manage = g.kind == GroupKind::DeploymentGroup;
        if let Some(found) = self.find_group(g, manage, budget).await? {
            return Ok(pool_of(g, found));
        }
        let exists = manage && self.find_group(g, false, budget).await?.is_some();
        Err(if exists {
            DevOpsError::NoGroupPermission {
                group: g.name.clone(),
                project: g.project.clone(),
                identity: identity.to_owned(),
            }
        } else {
            DevOpsError::GroupNotFound {
                kind: g.kind,
                group: g.name.clone(),
                project: g.project.clone(),
                org: self.org_url().to_string(),
            }
        })
    }

    async fn find_group(
        &self,
        g: &Group,
        manage: bool,
        budget: &Budget,
    ) -> Result<Option<GroupFound>, DevOpsError> {
        let path = match g.kind {
            GroupKind::DeploymentGroup => "_apis/distributedtask/deploymentgroups",
            GroupKind::Environment => "_apis/pipelines/environments",
        };
        let mut query = vec![("name", g.name.as_str())];
        if manage {
            query.push(("actionFilter", "manage"));
        }
        query.push(("api-version", scope::api_version(g.kind)));
        let url = self.api(&format!("{}/{path}", g.project), &query);
        match self.get::<List<GroupFound>>(url, budget).await {
            Ok(list) => Ok((list.value.into_iter()).find(|f| f.name.eq_ignore_ascii_case(&g.name))),
            // An unknown project is a 404 (`ProjectDoesNotExistWithNameException`).
            Err(DevOpsError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The group's agent of this name (a deployment target's or a VM resource's agent), with
    /// the member's own id, which deleting it takes.
    pub async fn find_group_agent(
        &self,
        g: &GroupRef,
        name: &str,
        budget: &Budget,
    ) -> Result<Option<ServerAgent>, DevOpsError> {
        let mut query = vec![("name", name)];
        if g.kind == GroupKind::DeploymentGroup {
            query.push(("$expand", "capabilities"));
        }
        query.push(("api-version", scope::api_version(g.kind)));
        let url = self.api(&g.members(), &query);
        let list: List<Member> = self.get(url, budget).await?;
        Ok(list.value.into_iter().find_map(|m| {
            let mut agent = m.agent?;
            agent.name.eq_ignore_ascii_case(name).then(|| {
                agent.member_id = Some(m.id);
                agent
            })
        }))
    }

    /// Deletes the agent's deployment target (which deletes the agent from the deployment pool
    /// too) or VM resource, as `config.sh remove` does. Already gone: what was wanted.
    pub async fn delete_group_agent(
        &self,
        g: &GroupRef,
        agent: &ServerAgent,
        budget: &Budget,
    ) -> Result<(), DevOpsError> {
        let member = agent.member_id.unwrap_or(agent.id);
        let path = format!("{}/{member}", g.members());
        let url = self.api(&path, &[("api-version", scope::api_version(g.kind))]);
        match self.call(reqwest::Method::DELETE, url, budget).await {
            Ok(_) | Err(DevOpsError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn pool_of(g: &Group, found: GroupFound) -> Pool {
    let (id, name) = match (g.kind, found.pool) {
        (GroupKind::DeploymentGroup, Some(p)) => (p.id, p.name),
        // An environment's agents are named after it (`PoolName ?? EnvironmentName`).
        _ => (0, found.name.clone()),
    };
    Pool {
        id,
        name,
        group: Some(GroupRef {
            kind: g.kind,
            project: g.project.clone(),
            project_id: found.project.id,
            name: found.name,
            id: found.id,
            tags: g.tags.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_challenge_without_bearer_is_a_server_that_takes_no_entra_token() {
        use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
        let of = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(WWW_AUTHENTICATE, HeaderValue::from_static(v));
            }
            no_bearer_offered(&h)
        };
        assert_eq!(
            of(&["Negotiate", "NTLM", "Basic realm=\"tfs\""]).as_deref(),
            Some("Negotiate, NTLM, Basic")
        );
        assert_eq!(
            of(&[
                "Bearer authorization_uri=https://login.microsoftonline.com/t, Basic realm=\"x\", TFS-Federated"
            ]),
            None
        );
        assert_eq!(of(&["bearer"]), None);
        assert_eq!(of(&[]), None, "no challenge says nothing");
    }

    use super::*;

    #[test]
    fn api_urls_keep_collection_paths() {
        let tfs = Url::parse("https://tfs.example.com/tfs/DefaultCollection").unwrap();
        assert_eq!(
            api_url(&tfs, "_apis/connectionData", &[]).as_str(),
            "https://tfs.example.com/tfs/DefaultCollection/_apis/connectionData"
        );
        let org = Url::parse("https://dev.azure.com/myorg").unwrap();
        assert_eq!(
            api_url(
                &org,
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
