//! `azure-sim`: the simulated Azure that agent-bootstrap's tests, the README demo and the benchmark
//! run against. A crate of its own, a dev-dependency of agent-bootstrap: the shipped binary and
//! its dependency tree carry none of it. It shares no code with the product on purpose: what it
//! checks the product against must not inherit the product's mistakes.
//!
//! One HTTP server on loopback plays three parts: IMDS (managed-identity tokens, with scripted
//! faults), the Azure DevOps REST endpoints agent-bootstrap and the agent use (organization
//! membership, pools with Manage permission, agents, deployment groups and their targets,
//! environments and their VM resources, the packages API), and the package download
//! server (Range, throttling, a connection cut mid-body, a corrupted body). The fake agent package
//! ([`package`]) runs the fake listener ([`listener`]), which talks to this server the way the real
//! agent talks to Azure DevOps (Basic auth with the token as password) and reports what it saw —
//! including any process whose argv contains the token. Tests read and script the state directly.

pub mod agent_service;
pub mod cli;
pub mod fake_az;
pub mod listener;
pub mod naming;
pub mod package;
pub mod proxy;
mod server;
pub mod tls;

/// Azure DevOps' application id: the `resource` IMDS must be asked for.
pub const AZURE_DEVOPS_RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
/// Where MSAL, azure-identity and agent-bootstrap look for an IMDS other than 169.254.169.254.
pub const IMDS_BASE_ENV: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
/// agent-bootstrap's unit directory variable: the simulated systemd's units go there.
pub const UNIT_DIR_ENV: &str = "AGENT_BOOTSTRAP_UNIT_DIR";

/// Makes a file executable by everyone (Unix; Windows has no mode bits).
pub fn make_executable(path: &Path) -> std::io::Result<()> {
    set_mode(path, 0o755)
}

/// Sets a file's permission bits (Unix; a no-op on Windows).
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// The account this process runs as (Unix uid; 0 on Windows).
pub fn current_uid() -> u32 {
    #[cfg(unix)]
    return nix::unistd::getuid().as_raw();
    #[cfg(not(unix))]
    0
}

/// The machine's name, as the agent's default agent name.
pub fn host_name() -> String {
    #[cfg(unix)]
    return nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    #[cfg(not(unix))]
    std::env::var("COMPUTERNAME").unwrap_or_default()
}

/// Installs ring as rustls' crypto provider (the simulator's HTTP clients are built without one).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use package::PackageSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentitySpec {
    pub display_name: String,
    pub object_id: String,
    pub client_id: String,
    pub resource_id: String,
    /// `true`: the VM's system-assigned identity; `false`: a user-assigned one.
    pub system_assigned: bool,
    /// Attached to the simulated VM.
    pub assigned: bool,
    /// Added to the organization as a user.
    pub org_member: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolSpec {
    pub id: u64,
    pub name: String,
    /// Object ids of identities that are Administrators of the pool (Manage permission).
    pub admins: Vec<String>,
}

/// A project of the organization (deployment groups and environments live in one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectSpec {
    /// A GUID: the agent stores it (`projectId`) and addresses the project by it after looking a
    /// deployment group or environment up by the project's name.
    pub id: String,
    pub name: String,
}

/// What a deployment group and an environment of a project are alike in: a name in the project and a
/// pool their agents live in. A group's pool is its deployment pool (`pool_id`, `pool_name`:
/// `<Project>-<Group>` in Azure DevOps' recorded example), which is what `.agent`'s
/// `poolId`/`poolName` name. An environment's is its linked pool (the agent writes only the id); the
/// real pool's name has the form `environment-…-<guid>` (azure-pipelines-agent#5174, #5299), the
/// exact form not documented. `K` tells the two apart ([`DeploymentGroupSpec`], [`EnvironmentSpec`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ProjectPoolSpec<K> {
    pub id: u64,
    pub name: String,
    /// The project's name.
    pub project: String,
    pub pool_id: u64,
    pub pool_name: String,
    /// Object ids of identities that are Administrators of the group or environment (Manage:
    /// register, replace, tag and delete its targets or VM resources).
    pub admins: Vec<String>,
    #[serde(skip)]
    kind: std::marker::PhantomData<K>,
}

/// The kind of [`DeploymentGroupSpec`].
#[derive(Debug, Clone)]
pub enum DeploymentGroupKind {}

/// The kind of [`EnvironmentSpec`].
#[derive(Debug, Clone)]
pub enum EnvironmentKind {}

/// A deployment group of a project; its targets' agents live in its deployment pool.
pub type DeploymentGroupSpec = ProjectPoolSpec<DeploymentGroupKind>;

/// An environment of a project; its VM resources' agents live in its linked pool.
pub type EnvironmentSpec = ProjectPoolSpec<EnvironmentKind>;

impl<K> ProjectPoolSpec<K> {
    fn with_pool(
        id: u64,
        project: &str,
        name: &str,
        (pool_id, pool_name): (u64, String),
        admins: &[&str],
    ) -> Self {
        Self {
            id,
            name: name.to_owned(),
            project: project.to_owned(),
            pool_id,
            pool_name,
            admins: admins.iter().map(|a| (*a).to_owned()).collect(),
            kind: std::marker::PhantomData,
        }
    }
}

impl DeploymentGroupSpec {
    /// A group whose deployment pool is named `<project>-<name>`, as Azure DevOps names it.
    pub fn new(id: u64, project: &str, name: &str, pool_id: u64, admins: &[&str]) -> Self {
        let pool_name = format!("{project}-{name}");
        Self::with_pool(id, project, name, (pool_id, pool_name), admins)
    }
}

impl EnvironmentSpec {
    /// An environment whose linked pool is named `environment-<name>-<project id>`.
    pub fn new(id: u64, project: &ProjectSpec, name: &str, pool_id: u64, admins: &[&str]) -> Self {
        let pool_name = format!("environment-{name}-{}", project.id);
        Self::with_pool(id, &project.name, name, (pool_id, pool_name), admins)
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub org: String,
    pub identities: Vec<IdentitySpec>,
    pub pools: Vec<PoolSpec>,
    pub projects: Vec<ProjectSpec>,
    pub deployment_groups: Vec<DeploymentGroupSpec>,
    pub environments: Vec<EnvironmentSpec>,
    pub package: PackageSpec,
    /// The simulator binary that `bin/Agent.Listener` runs as the fake listener.
    pub listener_exe: PathBuf,
    /// Where the package and the simulated systemd live.
    pub work_dir: PathBuf,
    /// Bytes per second for package downloads.
    pub throttle: Option<u64>,
    pub vm_id: String,
    /// The Entra tenant the identities live in (the `tid` of tokens; the workload tenant).
    pub tenant_id: String,
    /// The App Service / Container Apps `IDENTITY_HEADER` the simulated endpoint expects.
    pub app_service_header: String,
    /// Where the simulated Azure Arc agent writes its challenge key files (`None`: no Arc).
    pub arc_key_dir: Option<PathBuf>,
    /// The service-account token (the contents of `AZURE_FEDERATED_TOKEN_FILE`) that the federated
    /// credentials of every identity trust.
    pub workload_assertion: String,
    /// Also serve every route over TLS (a certificate from a test CA made at start), for the
    /// proxy and private-CA tests.
    pub tls: bool,
    /// Where the TLS listener's CA and certificate are kept across restarts (`None`: made fresh
    /// under the work dir), and the extra names its certificate carries (`dev.azure.com`, …).
    pub tls_dir: Option<PathBuf>,
    pub tls_names: Vec<String>,
    /// Where the packages API says the agent is downloaded from (`https://download.agent.dev.azure.com`
    /// serves `/agent/<version>/<file>`, as the real one does); `None`: this server's own
    /// `/_download/agent/…` on the host the request named.
    pub download_base: Option<String>,
    /// Files served at `/tools/<name>` (a storage account holding what a provisioning script
    /// downloads: our .deb, install.sh).
    pub files_dir: Option<PathBuf>,
    /// The server-side state (agents, issued tokens, requests) kept in this file across restarts:
    /// read at start, written as it changes.
    pub state_file: Option<PathBuf>,
}

/// Well-known identities of the default world.
pub mod ids {
    pub const SYSTEM_OBJECT: &str = "11111111-1111-1111-1111-111111111111";
    pub const SYSTEM_CLIENT: &str = "11111111-aaaa-aaaa-aaaa-111111111111";
    pub const UAMI_OBJECT: &str = "22222222-2222-2222-2222-222222222222";
    pub const UAMI_CLIENT: &str = "22222222-aaaa-aaaa-aaaa-222222222222";
    pub const UAMI_RESOURCE: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/agents-mi";
    pub const OUTSIDER_OBJECT: &str = "33333333-3333-3333-3333-333333333333";
    pub const OUTSIDER_CLIENT: &str = "33333333-aaaa-aaaa-aaaa-333333333333";
    pub const NO_MANAGE_OBJECT: &str = "44444444-4444-4444-4444-444444444444";
    pub const NO_MANAGE_CLIENT: &str = "44444444-aaaa-aaaa-aaaa-444444444444";
    pub const UNASSIGNED_CLIENT: &str = "55555555-aaaa-aaaa-aaaa-555555555555";
    /// The standard world's project `myproject`.
    pub const PROJECT_ID: &str = "7a1b2c3d-0000-4000-8000-0000000000a1";
}

impl SimConfig {
    /// Organization `myorg`, pools `Default` (id 1) and `Restricted` (id 2); project `myproject`
    /// ([`ids::PROJECT_ID`]) with deployment groups `WebServers` (id 1, deployment pool 101
    /// `myproject-WebServers`) and `RestrictedServers` (id 2, pool 102), and environments
    /// `Production` (id 1, linked pool 201) and `Restricted` (id 2, pool 202); the VM has a
    /// system-assigned identity (member, Administrator of all of them) and three user-assigned ones:
    /// one like it but Administrator of neither `Restricted…` one, one not added to the
    /// organization, one without Manage permission anywhere.
    pub fn standard(listener_exe: &Path, work_dir: &Path) -> Self {
        use ids::*;
        let id = |name: &str, oid: &str, cid: &str, sys: bool, member: bool| IdentitySpec {
            display_name: name.to_owned(),
            object_id: oid.to_owned(),
            client_id: cid.to_owned(),
            resource_id: if sys {
                String::new()
            } else {
                format!(
                    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
                )
            },
            system_assigned: sys,
            assigned: true,
            org_member: member,
        };
        let mut uami = id("agents-mi", UAMI_OBJECT, UAMI_CLIENT, false, true);
        uami.resource_id = UAMI_RESOURCE.to_owned();
        let project = ProjectSpec {
            id: PROJECT_ID.to_owned(),
            name: "myproject".to_owned(),
        };
        Self {
            org: "myorg".to_owned(),
            identities: vec![
                id("vm-agent-01", SYSTEM_OBJECT, SYSTEM_CLIENT, true, true),
                uami,
                id(
                    "outsider-mi",
                    OUTSIDER_OBJECT,
                    OUTSIDER_CLIENT,
                    false,
                    false,
                ),
                id(
                    "readonly-mi",
                    NO_MANAGE_OBJECT,
                    NO_MANAGE_CLIENT,
                    false,
                    true,
                ),
            ],
            pools: vec![
                PoolSpec {
                    id: 1,
                    name: "Default".to_owned(),
                    admins: vec![SYSTEM_OBJECT.to_owned(), UAMI_OBJECT.to_owned()],
                },
                PoolSpec {
                    id: 2,
                    name: "Restricted".to_owned(),
                    admins: vec![SYSTEM_OBJECT.to_owned()],
                },
            ],
            projects: vec![project.clone()],
            deployment_groups: vec![
                DeploymentGroupSpec::new(
                    1,
                    &project.name,
                    "WebServers",
                    101,
                    &[SYSTEM_OBJECT, UAMI_OBJECT],
                ),
                DeploymentGroupSpec::new(
                    2,
                    &project.name,
                    "RestrictedServers",
                    102,
                    &[SYSTEM_OBJECT],
                ),
            ],
            environments: vec![
                EnvironmentSpec::new(
                    1,
                    &project,
                    "Production",
                    201,
                    &[SYSTEM_OBJECT, UAMI_OBJECT],
                ),
                EnvironmentSpec::new(2, &project, "Restricted", 202, &[SYSTEM_OBJECT]),
            ],
            package: PackageSpec::small("4.264.2"),
            listener_exe: listener_exe.to_owned(),
            work_dir: work_dir.to_owned(),
            throttle: None,
            vm_id: "6f1c2d3e-0000-4000-8000-00000000a001".to_owned(),
            tenant_id: "72f988bf-0000-4000-8000-00000000a0ad".to_owned(),
            app_service_header: "sim-identity-header-6b1d".to_owned(),
            arc_key_dir: None,
            workload_assertion: "eyJhbGciOiJSUzI1NiJ9.sim-service-account-token.sig".to_owned(),
            tls: false,
            tls_dir: None,
            tls_names: vec![],
            download_base: None,
            files_dir: None,
            state_file: None,
        }
    }
}

/// A scripted answer, served before normal answers.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Scripted {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: format!(r#"{{"error":"simulated","error_description":"scripted {status}"}}"#),
            headers: vec![],
        }
    }

    /// Azure DevOps throttling a client (`TF400733`), with `Retry-After` and the rate-limit
    /// headers it sends.
    pub fn throttled(retry_after: u64) -> Self {
        Self {
            status: 429,
            retry_after: Some(retry_after),
            body: r#"{"$id":"1","message":"TF400733: The request has been canceled: the request was throttled.","typeKey":"RequestBlockedException"}"#.into(),
            headers: vec![
                ("X-RateLimit-Resource".into(), "Core".into()),
                ("X-RateLimit-Delay".into(), "2.5".into()),
                ("X-RateLimit-Limit".into(), "200".into()),
                ("X-RateLimit-Remaining".into(), "0".into()),
            ],
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PackageFaults {
    /// Cut the connection after this many body bytes, for this many requests.
    pub cut_after: Option<u64>,
    pub cuts_left: u32,
    /// Flip a byte in the middle of the body.
    pub corrupt: bool,
    /// Answer Range requests with the whole body (200).
    pub ignore_range: bool,
    /// Answer every download with this status.
    pub fail_status: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The identity's object id, `invalid` for an unknown token, `none` without credentials.
    pub caller: String,
    /// Which issued token was used (0 = the first IMDS issued), if one was.
    pub token: Option<usize>,
    pub range: Option<String>,
    pub metadata_header: bool,
    /// How credentials were presented: `bearer`, `basic`, or `None`.
    #[serde(default)]
    pub auth: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerAgent {
    pub id: u64,
    pub name: String,
    pub version: String,
    pub status: String,
    pub enabled: bool,
    pub public_key: String,
    /// Unix seconds (served as RFC 3339, as Azure DevOps does).
    #[serde(default)]
    pub created_on: u64,
    /// When `status` last changed (Unix seconds).
    #[serde(default)]
    pub status_changed_on: u64,
    /// The job it runs (`assignedRequest.requestId`), if any.
    #[serde(default)]
    pub assigned_request: Option<u64>,
    /// What the agent sent as `systemCapabilities` when it registered (its environment and its
    /// `.capabilities` file).
    #[serde(default)]
    pub system_capabilities: BTreeMap<String, String>,
}

/// A deployment target: an agent of the group's deployment pool, with the group's tags for it. Its
/// id is its agent's id, as in every example Azure DevOps documents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentTarget {
    pub agent_id: u64,
    pub tags: Vec<String>,
}

/// An environment's virtual machine resource: its own id and name, its tags, and its agent (in the
/// environment's pool).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmResource {
    pub id: u64,
    pub name: String,
    pub agent_id: u64,
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created_on: u64,
}

impl State {
    /// The agents of a pool (a deployment group's or an environment's too).
    pub fn pool_agents(&self, pool_id: u64) -> Vec<ServerAgent> {
        self.agents.get(&pool_id).cloned().unwrap_or_default()
    }

    /// A deployment group's targets: each one's agent and tags.
    pub fn targets(&self, group_id: u64, pool_id: u64) -> Vec<(ServerAgent, Vec<String>)> {
        let agents = self.pool_agents(pool_id);
        self.deployment_targets
            .get(&group_id)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                agents
                    .iter()
                    .find(|a| a.id == t.agent_id)
                    .map(|a| (a.clone(), t.tags.clone()))
            })
            .collect()
    }

    /// An environment's VM resources, each with its agent (`None` if the agent is gone).
    pub fn environment_vms(
        &self,
        environment_id: u64,
        pool_id: u64,
    ) -> Vec<(VmResource, Option<ServerAgent>)> {
        let agents = self.pool_agents(pool_id);
        self.vm_resources
            .get(&environment_id)
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r.clone(),
                    agents.iter().find(|a| a.id == r.agent_id).cloned(),
                )
            })
            .collect()
    }
}

/// Unix seconds as RFC 3339 (`2026-11-30T10:00:00.000Z`), the way Azure DevOps writes dates.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now, in Unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a fake listener run reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerReport {
    pub verb: String,
    pub argv: Vec<String>,
    pub uid: u32,
    pub cwd: String,
    pub token_from_env: bool,
    /// Processes whose command line contained the token (pid and masked command line).
    pub argv_leaks: Vec<String>,
    pub unrecognized: Vec<String>,
    /// The names of the variables in the listener's environment (not their values).
    #[serde(default)]
    pub env_names: Vec<String>,
    /// The listener's whole environment (to prove no secret reached it).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct State {
    pub requests: Vec<Request>,
    pub imds_script: VecDeque<Scripted>,
    /// Answers Azure DevOps gives before its normal ones (throttling, outages).
    pub ado_script: VecDeque<Scripted>,
    /// Tokens in the order IMDS issued them.
    pub token_order: Vec<String>,
    /// Seconds an issued token lives (`expires_on`); default a day.
    pub token_lifetime: u64,
    pub package_faults: PackageFaults,
    /// Tokens issued by IMDS → identity object id.
    pub tokens: BTreeMap<String, String>,
    pub agents: BTreeMap<u64, Vec<ServerAgent>>,
    pub next_agent_id: u64,
    /// Deployment group id → its targets (each one's agent is in the group's deployment pool,
    /// under `agents`).
    pub deployment_targets: BTreeMap<u64, Vec<DeploymentTarget>>,
    /// Environment id → its VM resources (each one's agent is in the environment's pool).
    pub vm_resources: BTreeMap<u64, Vec<VmResource>>,
    pub next_vm_resource_id: u64,
    /// Make agent updates (configure --replace) fail with 500: the real listener then loops forever.
    pub fail_agent_update: bool,
    /// Make agent registration fail with 403 (permission revoked after the preflight).
    pub fail_agent_add: bool,
    /// Make agent deletion fail as if the agent were running a job.
    pub agent_busy: u32,
    pub listener_reports: Vec<ListenerReport>,
    pub package_downloads: u32,
    /// Azure DevOps answers 503 to everything (an outage).
    pub ado_down: bool,
    /// The organization plays Azure DevOps Server (on-premises): Entra tokens are refused with
    /// the challenges IIS sends (Negotiate, NTLM, Basic; no Bearer), PATs work, and
    /// connectionData says `deploymentType: onPremises`.
    pub on_premises: bool,
    /// The fake listener treats loopback as any other host (the real one always bypasses its
    /// proxy for loopback), so tests on loopback see its bypass list at work.
    pub listener_loopback_remote: bool,
    /// Access still propagating after it was granted (a new VM booting before its identity's
    /// organization membership has reached Azure DevOps): this many authenticated requests are
    /// answered as from a non-member (401 TF400813) first.
    pub membership_pending: u32,
    /// The same for the pool's Administrator role: this many pool lookups (and agent
    /// registrations) see the caller without Manage first.
    pub manage_pending: u32,
    /// The VM id IMDS reports (tests change it to play a clone of the image).
    pub vm_id: String,
    /// Personal access tokens Azure DevOps accepts (as HTTP Basic only) → identity object id.
    pub pats: BTreeMap<String, String>,
    /// Answers the App Service, Arc and Entra endpoints give before their normal ones.
    pub identity_script: VecDeque<Scripted>,
    /// Key files the simulated Arc agent has issued (their contents).
    pub arc_keys: Vec<String>,
    /// Make the Arc challenge name this path instead of a fresh key file (hostile realms).
    pub arc_realm: Option<String>,
    /// Jobs waiting for an agent of any pool (how long each runs, in milliseconds).
    pub queued_jobs: VecDeque<u64>,
    /// Exit codes the next `run`s of the fake listener end with as soon as they are online (a
    /// crash, 4 = a run-once update).
    pub listener_exits: VecDeque<i32>,
    /// A newer agent package the server asks online agents of an older version to update to
    /// ([`package::AgentUpdate`]).
    pub agent_update: Option<package::AgentUpdate>,
    /// Jobs agents took: (agent name, request id, whether it ran to its end).
    pub jobs: Vec<(String, u64, bool)>,
    pub next_request_id: u64,
    /// The VM's name (IMDS `compute/name`).
    pub vm_name: String,
    /// Azure Scheduled Events IMDS serves (`Events` items).
    pub scheduled_events: Vec<serde_json::Value>,
    pub events_incarnation: u64,
    /// Event ids approved with `StartRequests`.
    pub approved_events: Vec<String>,
    /// The scheduled events endpoint answers 500 (IMDS trouble).
    pub events_down: bool,
}

/// What a restart keeps of [`State`] (`SimConfig::state_file`): what the real service would still
/// know after the machine rebooted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    pub requests: Vec<Request>,
    pub token_order: Vec<String>,
    pub tokens: BTreeMap<String, String>,
    pub agents: BTreeMap<u64, Vec<ServerAgent>>,
    pub next_agent_id: u64,
    pub listener_reports: Vec<ListenerReport>,
    pub package_downloads: u32,
    pub next_request_id: u64,
    #[serde(default)]
    pub deployment_targets: BTreeMap<u64, Vec<DeploymentTarget>>,
    #[serde(default)]
    pub vm_resources: BTreeMap<u64, Vec<VmResource>>,
    #[serde(default)]
    pub next_vm_resource_id: u64,
}

impl Persisted {
    pub fn of(st: &State) -> Self {
        Self {
            requests: st.requests.clone(),
            token_order: st.token_order.clone(),
            tokens: st.tokens.clone(),
            agents: st.agents.clone(),
            next_agent_id: st.next_agent_id,
            listener_reports: st.listener_reports.clone(),
            package_downloads: st.package_downloads,
            next_request_id: st.next_request_id,
            deployment_targets: st.deployment_targets.clone(),
            vm_resources: st.vm_resources.clone(),
            next_vm_resource_id: st.next_vm_resource_id,
        }
    }

    fn restore(self, st: &mut State) {
        st.requests = self.requests;
        st.token_order = self.token_order;
        st.tokens = self.tokens;
        st.agents = self.agents;
        st.next_agent_id = self.next_agent_id.max(1);
        st.listener_reports = self.listener_reports;
        st.package_downloads = self.package_downloads;
        st.next_request_id = self.next_request_id.max(5000);
        st.deployment_targets = self.deployment_targets;
        st.vm_resources = self.vm_resources;
        st.next_vm_resource_id = self.next_vm_resource_id.max(1);
    }

    /// Writes `self` to `path` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = fs_err::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs_err::rename(&tmp, path)
    }
}

/// A scheduled event as IMDS serves it (`NotBefore` in `secs_from_now` seconds).
pub fn scheduled_event(
    id: &str,
    kind: &str,
    resources: &[&str],
    secs_from_now: u64,
) -> serde_json::Value {
    serde_json::json!({
        "EventId": id,
        "EventType": kind,
        "ResourceType": "VirtualMachine",
        "Resources": resources,
        "EventStatus": "Scheduled",
        "NotBefore": http_date(now_secs() + secs_from_now),
        "Description": "simulated",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    })
}

/// Unix seconds as an HTTP date (`Mon, 19 Sep 2016 18:29:47 GMT`), as Scheduled Events' `NotBefore`.
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = rfc3339(secs);
    let (y, rest) = iso.split_at(4);
    let m: usize = rest[1..3].parse().unwrap();
    let d = &rest[4..6];
    let time = &rest[7..15];
    format!(
        "{}, {d} {} {y} {time} GMT",
        DAYS[((secs / 86_400) % 7) as usize],
        MONTHS[m - 1]
    )
}

pub struct Simulator {
    pub addr: SocketAddr,
    /// The TLS listener (`SimConfig::tls`) and the test CA's PEM file.
    pub tls_addr: Option<SocketAddr>,
    pub ca_file: Option<PathBuf>,
    pub config: SimConfig,
    pub state: Arc<Mutex<State>>,
    pub package: package::BuiltPackage,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Simulator {
    /// Builds the package and serves on `127.0.0.1:port` (0: any free port) on its own thread,
    /// and over TLS on another free loopback port when `config.tls`.
    pub fn start(config: SimConfig, port: u16) -> std::io::Result<Self> {
        let tls: &[SocketAddr] = if config.tls {
            &[SocketAddr::from(([127, 0, 0, 1], 0))]
        } else {
            &[]
        };
        Self::start_on(config, &[SocketAddr::from(([127, 0, 0, 1], port))], tls)
    }

    /// Builds the package and serves plain HTTP on each of `http` and TLS on each of `https` (the
    /// first of each is [`Self::addr`] and [`Self::tls_addr`]), on its own thread.
    pub fn start_on(
        config: SimConfig,
        http: &[SocketAddr],
        https: &[SocketAddr],
    ) -> std::io::Result<Self> {
        let package = package::build(
            &config.work_dir.join("packages"),
            &config.package,
            &config.listener_exe,
        )?;
        let systemd = config.work_dir.join("systemd");
        fs_err::create_dir_all(systemd.join("bin"))?;
        fs_err::create_dir_all(systemd.join("units"))?;
        let recorder = systemd.join("bin/systemctl");
        fs_err::write(&recorder, package::SYSTEMCTL_RECORDER)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755))?;
            // The agent user's listener reads nothing here, but svc.sh (root) and tests do.
            for d in [&config.work_dir, &systemd] {
                fs_err::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        let mut initial = State {
            next_agent_id: 1,
            next_vm_resource_id: 1,
            token_lifetime: 86399,
            vm_id: config.vm_id.clone(),
            vm_name: "sim-vm-000001".to_owned(),
            next_request_id: 5000,
            ..Default::default()
        };
        if let Some(path) = config.state_file.as_ref().filter(|p| p.is_file()) {
            let kept: Persisted = serde_json::from_slice(&fs_err::read(path)?)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            kept.restore(&mut initial);
        }
        let state = Arc::new(Mutex::new(initial));
        let bind = |addr: &SocketAddr| -> std::io::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let plain = http.iter().map(bind).collect::<std::io::Result<Vec<_>>>()?;
        let addr = plain
            .first()
            .ok_or_else(|| std::io::Error::other("no address to serve on"))?
            .local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = server::Shared {
            config: Arc::new(config.clone()),
            state: state.clone(),
            package: package.clone(),
            scheme: "http",
            deployment_pools: Arc::new(server::deployment_pools(&config)),
        };
        let app = server::router(shared.clone());
        let secure = https
            .iter()
            .map(bind)
            .collect::<std::io::Result<Vec<_>>>()?;
        let (tls_addr, ca) = match secure.first() {
            Some(l) => {
                let dir = config
                    .tls_dir
                    .clone()
                    .unwrap_or_else(|| config.work_dir.join("tls"));
                (
                    Some(l.local_addr()?),
                    Some(tls::load_or_make(&dir, &config.tls_names)?),
                )
            }
            None => (None, None),
        };
        let ca_file = ca.as_ref().map(|ca| ca.ca_file.clone());
        let tls_app = server::router(server::Shared {
            scheme: "https",
            ..shared
        });
        if let Some(path) = config.state_file.clone() {
            let state = state.clone();
            std::thread::Builder::new()
                .name("azure-sim-state".into())
                .spawn(move || keep_state(&state, &path))?;
        }
        let thread = std::thread::Builder::new()
            .name("azure-sim".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("simulator runtime");
                rt.block_on(async move {
                    if let Some(ca) = ca {
                        for l in secure {
                            let l = tokio::net::TcpListener::from_std(l).expect("tls listener");
                            tokio::spawn(tls::serve(l, ca.server_config.clone(), tls_app.clone()));
                        }
                    }
                    let mut plain = plain.into_iter();
                    let first = plain.next().expect("one listener");
                    for l in plain {
                        let l = tokio::net::TcpListener::from_std(l).expect("listener");
                        let app = app.clone();
                        tokio::spawn(async move { axum::serve(l, app).await });
                    }
                    let listener = tokio::net::TcpListener::from_std(first).expect("listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })?;
        Ok(Self {
            addr,
            tls_addr,
            ca_file,
            config,
            state,
            package,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn org_url(&self) -> String {
        format!("{}/{}", self.base_url(), self.config.org)
    }

    /// The organization over TLS (`SimConfig::tls`).
    pub fn tls_org_url(&self) -> String {
        let addr = self.tls_addr.expect("the simulator serves TLS");
        format!("https://{addr}/{}", self.config.org)
    }

    pub fn systemd_dir(&self) -> PathBuf {
        self.config.work_dir.join("systemd")
    }

    /// The environment agent-bootstrap needs to use this simulator instead of Azure.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![
            (IMDS_BASE_ENV.to_owned(), self.base_url()),
            ("NO_PROXY".to_owned(), "127.0.0.1,localhost".to_owned()),
            (
                UNIT_DIR_ENV.to_owned(),
                self.systemd_dir().join("units").display().to_string(),
            ),
        ]
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("simulator state poisoned")
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes the kept part of the state to `path` whenever it changed (checked every 100 ms), so a
/// power-off loses at most the last tenth of a second.
fn keep_state(state: &Mutex<State>, path: &Path) {
    let mut last = Vec::new();
    loop {
        let kept = match state.lock() {
            Ok(st) => Persisted::of(&st),
            Err(_) => return,
        };
        if let Ok(bytes) = serde_json::to_vec(&kept)
            && bytes != last
        {
            if let Err(e) = kept.save(path) {
                eprintln!(
                    "azure-sim: cannot keep the state in {}: {e}",
                    path.display()
                );
            }
            last = bytes;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}
