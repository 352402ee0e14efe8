//! The command line, as clap sees it.
//!
//! The flag names are a contract (scripts and tests outside this repository use them). Nothing here
//! validates values or reads the environment: [`crate::settings`] turns these raw values into checked
//! settings, so the rules live in one place and are unit-tested without a process.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `--version`: the version, the commit it was built from and the target (`build.rs`).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AGENT_BOOTSTRAP_COMMIT"),
    ", ",
    env!("AGENT_BOOTSTRAP_TARGET"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "agent-bootstrap",
    version = LONG_VERSION,
    about = "Register this machine as a self-hosted Azure Pipelines agent using its identity",
    long_about = None,
    after_help = "Exit codes: 0 ok, 1 internal error, 2 invalid input, 3 no token from the identity, \
4 Azure DevOps refused, 5 package download/verification failed, 6 agent configuration failed, \
7 service installation failed."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log less: -q warnings and errors only, -qq errors only. Wins over AGENT_BOOTSTRAP_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Log more: -v debug, -vv trace (agent-bootstrap's own lines; -vv also the libraries' debug
    /// lines). Wins over AGENT_BOOTSTRAP_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The result on stdout: text, or one JSON object at the end whatever the outcome
    /// (schema_version, exit code and meaning, error, summary, agent, report) for install,
    /// reconcile, remove, status, doctor and prune.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Install(_) => "install",
            Self::Token(_) => "token",
            Self::Doctor(_) => "doctor",
            Self::Prune(_) => "prune",
            Self::Run(_) => "run",
            Self::Watch(_) => "watch",
            Self::Reconcile(_) => "reconcile",
            Self::Remove(_) => "remove",
            Self::Status(_) => "status",
            Self::Completions(_) => "completions",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download, configure and start an agent registered with the machine's managed identity.
    Install(Box<InstallArgs>),
    /// Print an Azure DevOps access token from the identity (stdout, nothing else).
    Token(TokenArgs),
    /// Check the identity, the organization and the pool; say what to fix. Exit 0 only when an
    /// install would get past them.
    Doctor(DoctorArgs),
    /// Delete agents of a pool that have been offline for longer than a given time.
    Prune(PruneArgs),
    /// Container entrypoint: configure an agent as this user, run it in the foreground, and
    /// unregister it however it ends (exits with the agent's exit code).
    Run(Box<RunArgs>),
    /// Watch Azure Scheduled Events: on a Terminate or Preempt of this VM, drain the agent,
    /// unregister it and let the platform proceed (what `install --scale-in-drain` runs).
    Watch(WatchArgs),
    /// Bring an installed agent back to registered and running (what the boot unit runs).
    Reconcile(ReconcileArgs),
    /// Unregister the agent and remove its service and boot unit.
    Remove(RemoveArgs),
    /// Show the agent's local state and, when a token can be had, the server's view.
    Status(StatusArgs),
    /// Print the shell completion script for SHELL on stdout (e.g. `agent-bootstrap completions
    /// bash > /etc/bash_completion.d/agent-bootstrap`).
    Completions(CompletionsArgs),
}

#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args, Default, Clone)]
pub struct AgentDirArgs {
    /// The agent dir install used [default: /opt/azure-pipelines-agent].
    #[arg(long, value_name = "DIR")]
    pub agent_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub dir: AgentDirArgs,
    /// Look, check with Azure DevOps, and print the steps a real run would carry out (the install
    /// flow's too, when it would configure the agent again); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub dir: AgentDirArgs,
    /// Also delete the agent dir and the package cache.
    #[arg(long)]
    pub purge: bool,
    /// Print the steps a real run would carry out, found by looking only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub dir: AgentDirArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the Azure DevOps token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum IdentitySource {
    /// The first that is here: workload, app-service, arc, imds, azure-cli, pat.
    #[default]
    Auto,
    /// The VM's managed identity (Instance Metadata Service).
    Imds,
    /// `az account get-access-token` (with --az-login: after `az login --identity`).
    AzureCli,
    /// App Service, Functions, Container Apps (IDENTITY_ENDPOINT, IDENTITY_HEADER).
    AppService,
    /// An Azure Arc-enabled server's identity.
    Arc,
    /// AKS workload identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID).
    Workload,
    /// A personal access token from AZP_TOKEN_FILE or AZP_TOKEN.
    Pat,
}

#[derive(Debug, Args, Default, Clone)]
pub struct IdentityArgs {
    /// Where the token comes from.
    #[arg(long = "identity", value_enum, value_name = "SOURCE", default_value_t)]
    pub source: IdentitySource,
    /// With --identity azure-cli: log in with this machine's managed identity first
    /// (`az login --identity`; --client-id, --object-id or --resource-id choose which).
    #[arg(long)]
    pub az_login: bool,
    #[command(flatten)]
    pub selector: SelectorArgs,
}

#[derive(Debug, Args, Default, Clone)]
#[group(id = "selector", multiple = false)]
pub struct SelectorArgs {
    /// Client (application) id of the user-assigned managed identity to use.
    #[arg(long, group = "selector", value_name = "ID")]
    pub client_id: Option<String>,
    /// Object (principal) id of the user-assigned managed identity to use.
    #[arg(long, group = "selector", value_name = "ID")]
    pub object_id: Option<String>,
    /// Azure resource id of the user-assigned managed identity to use.
    #[arg(long, group = "selector", value_name = "ARM_ID")]
    pub resource_id: Option<String>,
}

/// Which agent package: the newest, a version, or a given file or URL.
#[derive(Debug, Args, Default, Clone)]
pub struct PackageArgs {
    /// Install this agent version instead of the newest one the organization offers.
    #[arg(long, value_name = "X.Y.Z", conflicts_with = "package")]
    pub agent_version: Option<String>,
    /// Install this agent package (a file or an https URL) instead of asking Azure DevOps.
    #[arg(long, value_name = "PATH|URL")]
    pub package: Option<String>,
    /// Expected SHA-256 (hex) of --package.
    #[arg(long, value_name = "HEX", requires = "package")]
    pub package_sha256: Option<String>,
    /// The agent package's platform (linux-x64, linux-arm64, linux-arm, linux-musl-x64,
    /// linux-musl-arm64; win-x64, win-x86, win-arm64 on Windows) instead of the one read from this
    /// machine (its libc and its kernel's architecture).
    #[arg(long, value_name = "PLATFORM", conflicts_with = "package")]
    pub platform: Option<String>,
}

/// Where the agent goes: the organization (or collection) and the pool.
#[derive(Debug, Args, Default, Clone)]
pub struct OrgArgs {
    /// Organization name: means https://dev.azure.com/ORG.
    #[arg(long, value_name = "ORG", conflicts_with = "url")]
    pub org: Option<String>,
    /// Organization or collection URL (env AZP_URL).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Agent pool (env AZP_POOL) [default: Default].
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
}

/// A deployment group or an environment instead of a pool.
#[derive(Debug, Args, Default, Clone)]
pub struct GroupArgs {
    /// Register the agent as a target of this deployment group (classic release pipelines)
    /// instead of in a pool; needs --project. The identity needs the Administrator role on it.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pool", "environment"], requires = "project")]
    pub deployment_group: Option<String>,
    /// Register the agent as a virtual-machine resource of this environment (YAML pipelines'
    /// deployment jobs) instead of in a pool; needs --project. The identity needs the
    /// Administrator role on the environment.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "pool",
        requires = "project"
    )]
    pub environment: Option<String>,
    /// The project of --deployment-group or --environment (its name or id).
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    /// A tag of the deployment target or VM resource (repeat it, or separate tags with commas);
    /// kept across re-registration.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct TokenArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
}

/// Corporate networks: an egress proxy and a private certificate authority.
#[derive(Debug, Args, Default, Clone)]
pub struct NetworkArgs {
    /// Proxy for Azure DevOps, the download host and Entra (http://host:port; env HTTPS_PROXY,
    /// NO_PROXY honoured). Never used for identity endpoints on this machine. The agent is
    /// configured to use it too.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// The proxy's user; the password only in AGENT_BOOTSTRAP_PROXY_PASSWORD or
    /// --proxy-password-file.
    #[arg(long, value_name = "USER")]
    pub proxy_user: Option<String>,
    /// A file holding the proxy password (not readable by every account); its path is saved for
    /// later runs, the password never is.
    #[arg(long, value_name = "FILE")]
    pub proxy_password_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted in addition to the system's. install (as root) also
    /// adds them to the system trust store, the only one the agent trusts for its connections,
    /// and remove takes them out again; the agent gets the file too (--sslcacert, for git).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct PruneArgs {
    #[command(flatten)]
    pub place: OrgArgs,
    /// Delete agents offline, and unchanged, for longer than this: 7d, 12h, 90m, 1d12h.
    #[arg(long, value_name = "DURATION")]
    pub offline_for: String,
    /// Only agents whose name starts with this (one fleet of a shared pool).
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub place: OrgArgs,
    /// Agent name (env AZP_AGENT_NAME) [default: the host name, a pod's name].
    #[arg(long, value_name = "NAME")]
    pub agent_name: Option<String>,
    /// Where the agent is (a package baked into the image is used) [default: /opt/azure-pipelines-agent
    /// as root, else ~/azure-pipelines-agent].
    #[arg(long, value_name = "DIR")]
    pub agent_dir: Option<PathBuf>,
    /// The agent's work directory (env AZP_WORK) [default: _work].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<String>,
    /// Take one job, then exit (and unregister).
    #[arg(long)]
    pub once: bool,
    /// On SIGTERM/SIGINT: how long a running job may go on before the agent is stopped. Keep it
    /// below the platform's own grace period (Kubernetes: terminationGracePeriodSeconds, 30 by
    /// default) so there is time left to unregister.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub stop_grace: u64,
    /// Turn the agent's self-update off, for images that pin a version: the agent ignores the
    /// server's update requests (its `agent.disableupdate`, written to its .env). Azure DevOps may
    /// then hold jobs back from it until it updates.
    #[arg(long)]
    pub disable_update: bool,
    /// A capability of the agent that pipelines can demand (`demands: gpu -equals true`),
    /// repeatable: written to the agent's `.capabilities`, which the agent reports with its
    /// system capabilities when it registers and whenever it starts. KEY: letters, digits, `.`, `_`,
    /// `-`.
    #[arg(long = "capability", value_name = "KEY=VALUE")]
    pub capabilities: Vec<String>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub pkg: PackageArgs,
    /// Seconds config.sh may run before it is stopped.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub config_timeout: u64,
}

#[derive(Debug, Args, Default, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub dir: AgentDirArgs,
    /// Seconds between two looks at the scheduled events (a Preempt gives 30 s notice).
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    pub poll_interval: u64,
}

#[derive(Debug, Args, Default, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub place: OrgArgs,
    #[command(flatten)]
    pub group: GroupArgs,
    /// The agent dir an install would use, checked for a writable file system mounted with exec
    /// [default: install's].
    #[arg(long, value_name = "DIR")]
    pub agent_dir: Option<PathBuf>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct InstallArgs {
    #[command(flatten)]
    pub place: OrgArgs,
    #[command(flatten)]
    pub group: GroupArgs,
    /// Agent name (env AZP_AGENT_NAME) [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub agent_name: Option<String>,
    /// Where the agent is installed [default: /opt/azure-pipelines-agent].
    #[arg(long, value_name = "DIR")]
    pub agent_dir: Option<PathBuf>,
    /// The agent's work directory, relative to the agent dir or absolute (env AZP_WORK) [default: _work].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<String>,
    /// Existing account to run the agent as; `root` is allowed explicitly. Default: a dedicated
    /// system user `azpagent`, created if missing. (Linux)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Install the agent's own dependencies first (as the scale-set extension does): the package's
    /// bin/installdependencies.sh runs as root from the verified extraction, never from the agent
    /// dir. Without it, missing dependencies stop the install (exit 6) with the command to run. (Linux)
    #[arg(long)]
    pub install_dependencies: bool,
    /// Allow ending every process of --user's account before the agent is configured (and at
    /// every later re-registration). Configuring ends them all so that none can read the token or
    /// change the package; without this, an account that runs other programs is refused. (Linux)
    #[arg(long, requires = "user")]
    pub end_user_processes: bool,
    /// The Windows service's account [default: NT AUTHORITY\NETWORK SERVICE]; a password, if it
    /// needs one, only in the environment variable VSTS_AGENT_INPUT_WINDOWSLOGONPASSWORD. (Windows)
    #[arg(long, value_name = "ACCOUNT")]
    pub windows_logon_account: Option<String>,
    /// Do not install or start a service (containers: run ./run.sh yourself).
    #[arg(long)]
    pub no_service: bool,
    /// Do not install the boot unit that runs `agent-bootstrap reconcile` at every boot.
    #[arg(long)]
    pub no_boot: bool,
    /// Also install a service running `agent-bootstrap watch`: on a scale-in or eviction (Azure
    /// Scheduled Events) the agent is drained and unregistered before the VM goes. Enable
    /// terminate notifications on the scale set. (Linux)
    #[arg(long, conflicts_with = "no_service")]
    pub scale_in_drain: bool,
    /// Keep trying while the identity may not register agents yet (a new VM booting before its
    /// organization membership or pool role has propagated: 401 not a member, no Manage, the
    /// identity not yet on the VM): the token, the organization and the pool are asked again with
    /// backoff (5 s doubling to 60 s) for up to DURATION (like 30m or 1h); other failures stop at
    /// once.
    #[arg(long, value_name = "DURATION")]
    pub wait_for_access: Option<String>,
    /// Take over an agent of this name that the pool already has though nothing shows it is this
    /// machine's (without it, install stops with exit 4). This machine's own registration (an
    /// interrupted install, a reimaged VM) is replaced without it.
    #[arg(long)]
    pub replace: bool,
    /// Several agents on this machine (Linux, root): N agents named NAME-1 … NAME-N, each in
    /// its own agent dir (DIR-1 …), as its own dedicated account (azpagent-1 …) with its own
    /// service and boot unit; reconcile, remove and status take each agent dir.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u32,
    /// A capability of the agent that pipelines can demand (`demands: gpu -equals true`),
    /// repeatable: written to the agent's `.capabilities`, which the agent reports with its
    /// system capabilities when it registers and whenever it starts; saved, so every later
    /// configure (reconcile's re-registration) writes it again. KEY: letters, digits, `.`, `_`,
    /// `-`.
    #[arg(long = "capability", value_name = "KEY=VALUE")]
    pub capabilities: Vec<String>,
    /// Turn the agent's self-update off, for images that pin a version: the agent ignores the
    /// server's update requests (its `agent.disableupdate`, written to its .env; saved for
    /// reconcile). Azure DevOps may then hold jobs back from it until it updates.
    #[arg(long)]
    pub disable_update: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub pkg: PackageArgs,
    /// Seconds config.sh may run before it is stopped (it can loop forever on some errors).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub config_timeout: u64,
    /// Get a token and check access, then print every step without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}
