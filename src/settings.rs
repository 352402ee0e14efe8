//! Resolving and validating what the user asked for, before anything is touched.
//!
//! Flags win over the environment (`AZP_URL`, `AZP_POOL`, `AZP_AGENT_NAME`, `AZP_WORK`, the names of
//! Microsoft's Docker sample), which wins over defaults. Every value is checked here and a bad one is
//! reported with the flag (or variable) that carried it; nothing in this module does I/O beyond
//! looking at a `--package` path and the ownership of a `--ca-file`, so every rule is a unit test.
//!
//! Values that end up in a unit file, a unit name or a command line are held to the strictest rule
//! any of those places needs: no control characters anywhere; no shell metacharacters in pool and
//! agent names (the agent's own `svc.sh` pastes them into a shell string); no whitespace, `%`,
//! quotes, `$` or backslash in the agent dir (systemd expands `%` and `$`, splits on whitespace).
//! Saved settings are checked again when they are loaded.
//!
//! Where state lives: as root, `/var/lib/agent-bootstrap` and `/var/cache/agent-bootstrap`; as any
//! other account, its XDG directories (`~/.local/state/agent-bootstrap`, `~/.cache/agent-bootstrap`)
//! and `~/azure-pipelines-agent` as the default agent dir, so a person trying the tool without root
//! gets a working setup instead of `Permission denied` half-way.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use url::Url;

use crate::cli::{
    DoctorArgs, IdentityArgs, IdentitySource, InstallArgs, NetworkArgs, PruneArgs, RunArgs,
    SelectorArgs,
};
use crate::env::Env;
use crate::identity::{Kind, Request, Selector};
use crate::os::Os;
use crate::package::{self, Source};

pub const DEFAULT_POOL: &str = "Default";
pub const DEFAULT_WORK: &str = "_work";

/// The Windows service account's password, as the agent itself reads it (`agent.md` §2).
pub use crate::agent::config::LOGON_PASSWORD_ENV;
pub use crate::env::{CACHE_DIR_ENV, DEFAULT_USER, STATE_DIR_ENV};

#[derive(Debug, thiserror::Error)]
#[error("invalid {what}: {problem}")]
pub struct SettingsError {
    /// The flag or variable, e.g. `--url` or `AZP_URL`.
    pub what: String,
    pub problem: String,
}

fn bad(what: impl Into<String>, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        what: what.into(),
        problem: problem.into(),
    }
}

/// Who runs the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentUser {
    /// The dedicated system user, created if missing.
    Dedicated(String),
    /// An account the user named; must exist.
    Existing(String),
}

impl AgentUser {
    pub fn name(&self) -> &str {
        match self {
            Self::Dedicated(n) | Self::Existing(n) => n,
        }
    }
}

#[derive(Debug, Clone)]
pub enum PackageChoice {
    /// The newest package the packages API offers.
    Latest,
    /// A version from the packages API.
    Version(String),
    /// `--package`, with an optional expected digest.
    Explicit {
        source: Source,
        sha256: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct InstallSettings {
    /// The account running agent-bootstrap is root (Windows: elevated or SYSTEM); otherwise
    /// everything runs as that account.
    pub as_root: bool,
    /// Windows: the password of `--windows-logon-account`, from [`LOGON_PASSWORD_ENV`] (never
    /// saved; passed to `config.cmd` only in its environment).
    pub logon_password: Option<crate::secret::Secret>,
    /// The account's processes may be ended before configure though it is not the dedicated one
    /// (`--end-user-processes`).
    pub end_user_processes: bool,
    /// Run the package's `bin/installdependencies.sh` as root before configuring
    /// (`--install-dependencies`).
    pub install_dependencies: bool,
    /// `--platform` as given (saved for reconcile), when it was.
    pub named_platform: Option<String>,
    pub url: Url,
    pub pool: String,
    /// `--deployment-group` / `--environment` instead of the pool.
    pub group: Option<crate::scope::Group>,
    pub agent_name: String,
    pub agent_dir: PathBuf,
    pub work_dir: String,
    pub user: AgentUser,
    pub service: bool,
    /// Install the boot unit that runs `reconcile` (unless `--no-boot`).
    pub boot: bool,
    /// Install the unit that runs `watch` (`--scale-in-drain`).
    pub scale_in_drain: bool,
    /// `--wait-for-access`: how long to keep asking while the identity may not register agents
    /// yet. Never saved: reconcile's own deadline bounds it at boot.
    pub wait_for_access: Option<std::time::Duration>,
    /// The agent's self-update off (`--disable-update`: `agent.disableupdate` in its `.env`).
    pub disable_update: bool,
    /// `--capability KEY=VALUE`: the agent's `.capabilities`.
    pub capabilities: BTreeMap<String, String>,
    /// `--replace`: take over a same-named agent nothing shows is this machine's (`run`: always;
    /// its name is its container's).
    pub replace: bool,
    /// The proxy and extra CAs, for the tool and for the agent.
    pub network: crate::net::Network,
    /// Where the token comes from, and which identity.
    pub identity: Request,
    pub package: PackageChoice,
    pub config_timeout: std::time::Duration,
    pub dry_run: bool,
    /// A dry run of `reconcile` whose plan removes the local registration before the install
    /// flow: the flow is planned as the real run will find the agent dir, without it.
    pub assume_unregistered: bool,
    /// Start the service with `systemctl start --no-block`: at boot the
    /// agent's unit is ordered after ours, and a blocking start would wait for ourselves.
    pub no_block_start: bool,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub os: Os,
}

/// `--identity`, `--az-login` and the selector, checked together.
pub fn identity(args: &IdentityArgs) -> Result<Request, SettingsError> {
    let kind = match args.source {
        IdentitySource::Auto => Kind::Auto,
        IdentitySource::Imds => Kind::Imds,
        IdentitySource::AzureCli => Kind::AzureCli,
        IdentitySource::AppService => Kind::AppService,
        IdentitySource::Arc => Kind::Arc,
        IdentitySource::Workload => Kind::Workload,
        IdentitySource::Pat => Kind::Pat,
    };
    if args.az_login && kind != Kind::AzureCli {
        return Err(bad(
            "--az-login",
            "logs the Azure CLI in: use it with --identity azure-cli",
        ));
    }
    Ok(Request {
        kind,
        selector: selector(&args.selector)?,
        az_login: args.az_login,
        pat_file: None,
    })
}

pub fn selector(args: &SelectorArgs) -> Result<Selector, SettingsError> {
    if let Some(id) = &args.client_id {
        check_guid("--client-id", id)?;
        return Ok(Selector::ClientId(id.trim().to_owned()));
    }
    if let Some(id) = &args.object_id {
        check_guid("--object-id", id)?;
        return Ok(Selector::ObjectId(id.trim().to_owned()));
    }
    if let Some(id) = &args.resource_id {
        check_resource_id(id)?;
        return Ok(Selector::ResourceId(id.trim().to_owned()));
    }
    Ok(Selector::Default)
}

fn check_guid(flag: &str, value: &str) -> Result<(), SettingsError> {
    let v = value.trim();
    let groups: Vec<&str> = v.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(bad(
            flag,
            format!("'{value}' is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
        ))
    }
}

fn check_resource_id(value: &str) -> Result<(), SettingsError> {
    let v = value.trim().to_ascii_lowercase();
    let parts: Vec<&str> = v.trim_start_matches('/').split('/').collect();
    let ok = v.starts_with("/subscriptions/")
        && parts.len() == 8
        && parts[2] == "resourcegroups"
        && parts[4] == "providers"
        && parts[5] == "microsoft.managedidentity"
        && parts[6] == "userassignedidentities"
        && parts.iter().all(|p| !p.is_empty())
        && v.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(bad(
            "--resource-id",
            format!(
                "'{value}' is not a user-assigned identity resource id \
                 (/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME)"
            ),
        ))
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// An https URL (or http to a loopback host), without credentials, query or fragment.
pub fn check_url(what: &str, raw: &str) -> Result<Url, SettingsError> {
    let url =
        Url::parse(raw.trim()).map_err(|e| bad(what, format!("'{raw}' is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        "http" => {
            return Err(bad(
                what,
                format!("'{raw}' uses plain http; use https so the token is never sent in clear"),
            ));
        }
        other => return Err(bad(what, format!("'{raw}': unsupported scheme '{other}'"))),
    }
    if url.host().is_none() {
        return Err(bad(what, format!("'{raw}' has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            what,
            "credentials in the URL are not allowed (the managed identity provides them)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            what,
            format!("'{raw}' must not have a query or fragment"),
        ));
    }
    Ok(url)
}

fn org_url(org: Option<&str>, url: Option<&str>, env: &Env) -> Result<Url, SettingsError> {
    if let Some(org) = org {
        let o = org.trim();
        let valid = !o.is_empty()
            && o.len() <= 50
            && o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !o.starts_with('-')
            && !o.ends_with('-');
        if !valid {
            return Err(bad(
                "--org",
                format!(
                    "'{org}' is not an organization name (letters, digits and '-'; use --url for a full URL)"
                ),
            ));
        }
        return Ok(
            Url::parse(&format!("https://dev.azure.com/{o}")).expect("valid by construction")
        );
    }
    let (what, raw) = match (url, env.var("AZP_URL")) {
        (Some(u), _) => ("--url", u),
        (None, Some(u)) => ("AZP_URL", u),
        (None, None) => {
            return Err(bad(
                "--org/--url",
                "say which organization: --org ORG or --url URL (or set AZP_URL)",
            ));
        }
    };
    let mut url = check_url(what, raw)?;
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// What the agent's `svc.sh` would put into a shell string (`SVC_NAME="…"`, `$(echo …)`).
const SHELL_CHARS: &str = "$`()'\"\\";
/// Azure DevOps' own rules for pool names, plus [`SHELL_CHARS`].
const POOL_FORBIDDEN: &str = "\"/\\[]:|<>+=;?*$`()'";
/// Azure DevOps' own rules for agent names, plus [`SHELL_CHARS`].
const AGENT_FORBIDDEN: &str = "\"/\\:<>|*?@$`()'";
/// Characters refused in an agent dir: systemd splits on whitespace and expands `%` and `$` in unit
/// files, and quotes or a backslash would need escaping every place the path is written.
const PATH_FORBIDDEN: &str = "%$`'\"\\";

/// What `cmd.exe` reads specially in the arguments of a batch file (`config.cmd`): variables,
/// escapes, command separators, redirections, delayed expansion, quotes.
const CMD_CHARS: &str = "%^&|<>!\"";

/// A pool or agent name: [`check_text`], naming the shell when that is the reason (on Windows,
/// `cmd.exe` as well: the names are arguments of `config.cmd`).
fn check_name(
    what: &str,
    value: &str,
    max: usize,
    forbidden: &str,
    os: &Os,
) -> Result<String, SettingsError> {
    let cmd = if os.is_windows() { CMD_CHARS } else { "" };
    check_text(what, value, max, &format!("{forbidden}{cmd}")).map_err(|mut e| {
        if value.chars().any(|c| SHELL_CHARS.contains(c)) {
            e.problem
                .push_str(" (the agent's svc.sh would paste it into a shell command run as root)");
        } else if value.chars().any(|c| cmd.contains(c)) {
            e.problem
                .push_str(" (cmd.exe would read it as shell syntax in config.cmd's arguments)");
        }
        e
    })
}

/// A Windows account name for the service (`DOMAIN\name`, `NT AUTHORITY\NETWORK SERVICE`, a gMSA
/// `DOMAIN\name$`).
fn check_logon_account(value: &str) -> Result<String, SettingsError> {
    check_text("--windows-logon-account", value, 256, CMD_CHARS)
}

fn check_text(
    what: &str,
    value: &str,
    max: usize,
    forbidden: &str,
) -> Result<String, SettingsError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(bad(what, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(bad(what, format!("'{v}' is longer than {max} characters")));
    }
    if let Some(c) = v.chars().find(|c| c.is_control() || forbidden.contains(*c)) {
        return Err(bad(what, format!("'{v}' contains the character {c:?}")));
    }
    Ok(v.to_owned())
}

/// `name` if it is a valid Unix account name.
pub fn check_user(value: &str) -> Result<String, SettingsError> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(bad(
            "--user",
            format!("'{value}' is not a valid account name"),
        ))
    }
}

fn check_version(value: &str) -> Result<String, SettingsError> {
    let v = value.trim().trim_start_matches('v');
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        Ok(v.to_owned())
    } else {
        Err(bad(
            "--agent-version",
            format!("'{value}' is not a version X.Y.Z"),
        ))
    }
}

fn package_choice(args: &crate::cli::PackageArgs) -> Result<PackageChoice, SettingsError> {
    if let Some(v) = &args.agent_version {
        return Ok(PackageChoice::Version(check_version(v)?));
    }
    let Some(raw) = &args.package else {
        return Ok(PackageChoice::Latest);
    };
    let sha256 = match &args.package_sha256 {
        Some(h) => Some(package::normalize_sha256(h).ok_or_else(|| {
            bad(
                "--package-sha256",
                format!("'{h}' is not a SHA-256 (64 hex digits)"),
            )
        })?),
        None => None,
    };
    let source = if raw.contains("://") {
        Source::Url(check_url("--package", raw)?)
    } else {
        let p = Path::new(raw);
        if !p.is_file() {
            return Err(bad("--package", format!("'{raw}' is not a file")));
        }
        Source::File(std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
    };
    Ok(PackageChoice::Explicit { source, sha256 })
}

/// `--pool`, else `AZP_POOL`, else `Default`.
fn pool(arg: Option<&str>, env: &Env, os: &Os) -> Result<String, SettingsError> {
    let (what, raw) = match (arg, env.var("AZP_POOL")) {
        (Some(p), _) => ("--pool", p),
        (None, Some(p)) => ("AZP_POOL", p),
        (None, None) => ("--pool", DEFAULT_POOL),
    };
    check_name(what, raw, 256, POOL_FORBIDDEN, os)
}

/// `--deployment-group` or `--environment` with `--project` and `--tag` (clap has refused them with
/// `--pool`, and without `--project`); refused where the agent could not follow.
fn group(
    g: &crate::cli::GroupArgs,
    scale_in_drain: bool,
    os: &Os,
) -> Result<Option<crate::scope::Group>, SettingsError> {
    use crate::scope::{Group, GroupKind};
    let (kind, what, raw) = match (&g.deployment_group, &g.environment) {
        (Some(n), _) => (GroupKind::DeploymentGroup, "--deployment-group", n),
        (None, Some(n)) => (GroupKind::Environment, "--environment", n),
        (None, None) => {
            for (flag, given) in [
                ("--project", g.project.is_some()),
                ("--tag", !g.tags.is_empty()),
            ] {
                if given {
                    return Err(bad(
                        flag,
                        "is for --deployment-group or --environment (a pool has no project or tags)",
                    ));
                }
            }
            return Ok(None);
        }
    };
    if scale_in_drain {
        return Err(bad(
            "--scale-in-drain",
            format!(
                "is for pool agents of a scale set (it disables the agent in its pool); {what} \
                 targets are long-lived machines"
            ),
        ));
    }
    let name = check_name(what, raw, 256, POOL_FORBIDDEN, os)?;
    let project = check_name(
        "--project",
        g.project.as_deref().unwrap_or(""),
        64,
        POOL_FORBIDDEN,
        os,
    )?;
    let tags = crate::scope::parse_tags(g.tags.iter().map(String::as_str));
    for t in &tags {
        check_name("--tag", t, 256, POOL_FORBIDDEN, os)?;
    }
    Ok(Some(Group {
        kind,
        project,
        name,
        tags,
    }))
}

/// What `doctor` checks access to: the organization and the pool, resolved as install does.
#[derive(Debug, Clone)]
pub struct DoctorSettings {
    pub url: Url,
    pub pool: String,
    /// `--deployment-group` / `--environment`: checked instead of the pool.
    pub group: Option<crate::scope::Group>,
    /// Where an install would put the agent, its state and its cache (checked for read-only and
    /// noexec file systems).
    pub agent_dir: PathBuf,
    pub paths: Paths,
    /// The account an install would configure the agent as.
    pub user: AgentUser,
}

pub fn doctor(args: &DoctorArgs, env: &Env, os: &Os) -> Result<DoctorSettings, SettingsError> {
    let paths = paths(env, os)?;
    Ok(DoctorSettings {
        url: org_url(args.place.org.as_deref(), args.place.url.as_deref(), env)?,
        pool: pool(args.place.pool.as_deref(), env, os)?,
        group: group(&args.group, false, os)?,
        agent_dir: agent_dir(args.agent_dir.as_deref(), &paths, os)?,
        paths,
        user: if env.is_root() {
            AgentUser::Dedicated(env.dedicated_user())
        } else {
            AgentUser::Existing(env.username().to_owned())
        },
    })
}

/// What `prune` deletes.
#[derive(Debug, Clone)]
pub struct PruneSettings {
    pub url: Url,
    pub pool: String,
    pub offline_for: std::time::Duration,
    pub name_prefix: Option<String>,
    pub dry_run: bool,
    pub json: bool,
}

pub fn prune(args: &PruneArgs, env: &Env, os: &Os) -> Result<PruneSettings, SettingsError> {
    let name_prefix = match args.name_prefix.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(bad("--name-prefix", "must not be empty")),
        Some(p) => Some(check_name("--name-prefix", p, 64, AGENT_FORBIDDEN, os)?),
    };
    Ok(PruneSettings {
        url: org_url(args.place.org.as_deref(), args.place.url.as_deref(), env)?,
        pool: pool(args.place.pool.as_deref(), env, os)?,
        offline_for: duration("--offline-for", &args.offline_for)?,
        name_prefix,
        dry_run: args.dry_run,
        json: args.json,
    })
}

/// `--proxy`, `--proxy-user`, `--proxy-password-file`, `--ca-file`, else the environment.
pub fn network(args: &NetworkArgs, env: &Env) -> Result<crate::net::Network, SettingsError> {
    let given = crate::net::proxy::Given {
        proxy: args.proxy.as_deref(),
        proxy_user: args.proxy_user.as_deref(),
        proxy_password_file: args.proxy_password_file.as_deref(),
        ca_file: args.ca_file.as_deref(),
    };
    let network = crate::net::Network::resolve(&given, env).map_err(|e| bad(e.what, e.problem))?;
    check_ca_owner("--ca-file", &network, env)?;
    Ok(network)
}

/// As root, the CA file decides whom root trusts with the token at every boot: only root may be
/// able to change it (the file and every directory above it), as for the binary a boot unit runs.
fn check_ca_owner(
    what: &str,
    network: &crate::net::Network,
    env: &Env,
) -> Result<(), SettingsError> {
    #[cfg(unix)]
    if let Some(ca) = &network.ca_file
        && env.is_root()
    {
        crate::fsx::check_root_only_program(ca).map_err(|e| {
            bad(
                what,
                format!(
                    "{}: root trusts it with the token at every run, so another account must not \
                     be able to change it; keep it in a directory only root can change (e.g. \
                     /etc/ssl/certs)",
                    e.0
                ),
            )
        })?;
    }
    #[cfg(not(unix))]
    let _ = (what, network, env);
    Ok(())
}

/// The proxy and CA install saved, for later runs.
pub fn saved_network(
    saved: &crate::state::Saved,
    env: &Env,
) -> Result<crate::net::Network, SettingsError> {
    let network =
        crate::net::Network::from_saved(saved, env).map_err(|e| bad(e.what, e.problem))?;
    check_ca_owner("the saved CA file", &network, env)?;
    Ok(network)
}

/// What `run` does: an install as this account without service or boot unit, then the agent in
/// the foreground.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub install: InstallSettings,
    pub once: bool,
    pub stop_grace: std::time::Duration,
}

/// `run`'s flags (env fallbacks as install's: `AZP_URL`, `AZP_POOL`, `AZP_AGENT_NAME`, `AZP_WORK`).
/// The agent is configured and run as the account running agent-bootstrap (a container's user).
pub fn run(args: &RunArgs, env: &Env, os: Os) -> Result<RunSettings, SettingsError> {
    if args.stop_grace > 24 * 3600 {
        return Err(bad("--stop-grace", "must be at most 86400 seconds"));
    }
    let install_args = InstallArgs {
        place: args.place.clone(),
        group: crate::cli::GroupArgs::default(),
        agent_name: args.agent_name.clone(),
        agent_dir: args.agent_dir.clone(),
        work_dir: args.work_dir.clone(),
        user: (!os.is_windows()).then(|| env.username().to_owned()),
        windows_logon_account: None,
        end_user_processes: false,
        install_dependencies: false,
        no_service: true,
        no_boot: true,
        scale_in_drain: false,
        wait_for_access: None,
        replace: true,
        count: 1,
        disable_update: args.disable_update,
        capabilities: args.capabilities.clone(),
        identity: args.identity.clone(),
        network: args.network.clone(),
        pkg: args.pkg.clone(),
        config_timeout: args.config_timeout,
        dry_run: false,
    };
    let install = install(&install_args, env, os)?;
    Ok(RunSettings {
        install,
        once: args.once,
        stop_grace: std::time::Duration::from_secs(args.stop_grace),
    })
}

/// `--capability KEY=VALUE`, each: a name the agent's `.capabilities` and a pipeline's demands
/// read the same way (letters, digits, `.`, `_`, `-`; at most 256), a value on one line (no
/// control character; at most 1024), each name once.
pub fn capabilities(args: &[String]) -> Result<BTreeMap<String, String>, SettingsError> {
    let mut out = BTreeMap::new();
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(bad(
                "--capability",
                format!("'{arg}' is not KEY=VALUE (like gpu=true)"),
            ));
        };
        if key.is_empty()
            || key.len() > 256
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(bad(
                "--capability",
                format!(
                    "'{key}' is not a capability name: 1 to 256 letters, digits, '.', '_' or '-'"
                ),
            ));
        }
        if value.len() > 1024 || value.chars().any(char::is_control) {
            return Err(bad(
                "--capability",
                format!("the value of '{key}' must be one line of at most 1024 characters"),
            ));
        }
        if out.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(bad("--capability", format!("'{key}' is given twice")));
        }
    }
    Ok(out)
}

/// `7d`, `12h`, `90m`, `30s`, or several (`1d12h`); at least a minute.
pub fn duration(what: &str, text: &str) -> Result<std::time::Duration, SettingsError> {
    let invalid = || {
        bad(
            what,
            format!("'{text}' is not a duration like 7d, 12h, 90m or 1d12h"),
        )
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(invalid()),
        };
        let n: u64 = number.parse().map_err(|_| invalid())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(invalid)?;
    }
    if !number.is_empty() {
        return Err(invalid());
    }
    if total < 60 {
        return Err(bad(
            what,
            format!(
                "'{text}' is less than a minute: agents go offline for shorter than that while they update"
            ),
        ));
    }
    Ok(std::time::Duration::from_secs(total))
}

/// `--platform`, when given: one of the agent's platforms, of this machine's family.
fn named_platform(given: Option<&str>, os: Os) -> Result<Os, SettingsError> {
    let Some(given) = given else { return Ok(os) };
    let named = Os::from_rid(given).ok_or_else(|| {
        bad(
            "--platform",
            format!(
                "'{given}' is not one of the agent's platforms ({})",
                crate::os::AGENT_PLATFORMS.join(", ")
            ),
        )
    })?;
    if named.family != os.family {
        return Err(bad(
            "--platform",
            format!(
                "{} is not a platform of this machine's kind ({})",
                named.rid(),
                os.rid()
            ),
        ));
    }
    Ok(named)
}

/// The most agents `--count` puts on one machine.
pub const MAX_COUNT: u32 = 32;

/// `install`, once per agent `--count` asks for: NAME-i in DIR-i as its own dedicated account
/// (an account shared by two agents would have one's configure end the other's processes).
pub fn install_all(
    args: &InstallArgs,
    env: &Env,
    os: Os,
) -> Result<Vec<InstallSettings>, SettingsError> {
    if args.count == 0 || args.count > MAX_COUNT {
        return Err(bad(
            "--count",
            format!("must be 1 to {MAX_COUNT}, not {}", args.count),
        ));
    }
    let one = install(args, env, os)?;
    if args.count == 1 {
        return Ok(vec![one]);
    }
    if os.is_windows() || !env.is_root() {
        return Err(bad(
            "--count",
            "several agents are for Linux, as root (each gets its own account and service)",
        ));
    }
    if args.user.is_some() {
        return Err(bad(
            "--user",
            "cannot be used with --count: each agent gets a dedicated account of its own \
             (configuring one ends every process of its account)",
        ));
    }
    let dir = one.agent_dir.display().to_string();
    (1..=args.count)
        .map(|i| {
            let mut each = args.clone();
            each.agent_name = Some(format!("{}-{i}", one.agent_name));
            each.agent_dir = Some(PathBuf::from(format!("{dir}-{i}")));
            let mut s = install(&each, env, os)?;
            s.user = AgentUser::Dedicated(format!("{}-{i}", env.dedicated_user()));
            Ok(s)
        })
        .collect()
}

/// `install`'s flags over the environment and the defaults, each value checked; the first bad one
/// is the error.
pub fn install(args: &InstallArgs, env: &Env, os: Os) -> Result<InstallSettings, SettingsError> {
    let os = named_platform(args.pkg.platform.as_deref(), os)?;
    let url = org_url(args.place.org.as_deref(), args.place.url.as_deref(), env)?;
    let pool = pool(args.place.pool.as_deref(), env, &os)?;
    let agent_name = agent_name(args.agent_name.as_deref(), env, &os)?;
    let paths = paths(env, &os)?;
    let agent_dir = agent_dir(args.agent_dir.as_deref(), &paths, &os)?;
    let work_dir = work_dir(args.work_dir.as_deref(), env, &os)?;
    let user = agent_user(args, env, &os)?;
    check_unprivileged(args, env, &os, &user)?;
    check_service_manager(args, env, &os)?;
    if args.config_timeout == 0 {
        return Err(bad("--config-timeout", "must be at least 1 second"));
    }
    let network = network(&args.network, env)?;
    check_network_for_cmd(&network, &os)?;
    check_scale_in_drain(args, env, &os)?;
    let logon_password = env
        .var(LOGON_PASSWORD_ENV)
        .filter(|_| os.is_windows())
        .map(crate::secret::Secret::new);
    Ok(InstallSettings {
        as_root: env.is_root(),
        logon_password,
        end_user_processes: args.end_user_processes,
        install_dependencies: args.install_dependencies,
        named_platform: args.pkg.platform.as_ref().map(|_| os.rid()),
        url,
        pool,
        group: group(&args.group, args.scale_in_drain, &os)?,
        agent_name,
        agent_dir,
        work_dir,
        user,
        service: !args.no_service,
        boot: !args.no_boot,
        scale_in_drain: args.scale_in_drain,
        wait_for_access: args
            .wait_for_access
            .as_deref()
            .map(|t| duration("--wait-for-access", t))
            .transpose()?,
        disable_update: args.disable_update,
        capabilities: capabilities(&args.capabilities)?,
        replace: args.replace,
        network,
        identity: identity(&args.identity)?,
        package: package_choice(&args.pkg)?,
        config_timeout: std::time::Duration::from_secs(args.config_timeout),
        dry_run: args.dry_run,
        assume_unregistered: false,
        no_block_start: false,
        state_dir: paths.state_dir,
        cache_dir: paths.cache_dir,
        os,
    })
}

/// The agent's name: `--agent-name`, else `AZP_AGENT_NAME`, else the host name.
fn agent_name(arg: Option<&str>, env: &Env, os: &Os) -> Result<String, SettingsError> {
    let (what, raw) = match (arg, env.var("AZP_AGENT_NAME")) {
        (Some(n), _) => ("--agent-name", n),
        (None, Some(n)) => ("AZP_AGENT_NAME", n),
        (None, None) => ("the host name (set --agent-name)", env.hostname()),
    };
    check_name(what, raw, 64, AGENT_FORBIDDEN, os)
}

/// The agent's work directory: `--work-dir`, else `AZP_WORK`, else [`DEFAULT_WORK`].
fn work_dir(arg: Option<&str>, env: &Env, os: &Os) -> Result<String, SettingsError> {
    let (what, raw) = match (arg, env.var("AZP_WORK")) {
        (Some(w), _) => ("--work-dir", w),
        (None, Some(w)) => ("AZP_WORK", w),
        (None, None) => ("--work-dir", DEFAULT_WORK),
    };
    check_text(
        what,
        raw,
        4096,
        if os.is_windows() { CMD_CHARS } else { "" },
    )
}

/// Who runs the agent. Windows: `--windows-logon-account` (or the default service account);
/// Linux: `--user`, else this account when it is not root, else the dedicated user. Each
/// system's flag is refused on the other.
fn agent_user(args: &InstallArgs, env: &Env, os: &Os) -> Result<AgentUser, SettingsError> {
    if os.is_windows() {
        if args.user.is_some() {
            return Err(bad(
                "--user",
                "is for Linux; on Windows the service's account is --windows-logon-account",
            ));
        }
        return Ok(AgentUser::Existing(check_logon_account(
            args.windows_logon_account
                .as_deref()
                .unwrap_or(crate::service::windows::DEFAULT_LOGON_ACCOUNT),
        )?));
    }
    if args.windows_logon_account.is_some() {
        return Err(bad(
            "--windows-logon-account",
            "is for Windows; on Linux the agent's account is --user",
        ));
    }
    Ok(match &args.user {
        Some(u) => AgentUser::Existing(check_user(u.trim())?),
        // Not root (a container running as its own user): the agent runs as this account.
        None if !env.is_root() => AgentUser::Existing(env.username().to_owned()),
        None => AgentUser::Dedicated(env.dedicated_user()),
    })
}

/// Without root (Windows: elevation), for real: no service, and the agent runs as this account.
fn check_unprivileged(
    args: &InstallArgs,
    env: &Env,
    os: &Os,
    user: &AgentUser,
) -> Result<(), SettingsError> {
    if env.is_root() || args.dry_run {
        return Ok(());
    }
    let me = env.username();
    if !args.no_service {
        return Err(bad(
            "--no-service",
            if os.is_windows() {
                "installing the service needs an elevated prompt (Run as Administrator) or \
                 SYSTEM: `config.cmd --runAsService` would fail only after registering the \
                 agent; run elevated, or pass --no-service to only configure it"
            } else {
                "installing the service needs root: run as root, or pass --no-service to \
                 only configure the agent"
            },
        ));
    }
    if !os.is_windows() && matches!(user, AgentUser::Existing(u) if u != me) {
        return Err(bad(
            "--user",
            "only root can configure the agent as another user",
        ));
    }
    Ok(())
}

/// A service wanted where no systemd runs (a container, a chroot, WSL without systemd): the
/// agent would be registered and left stopped, an offline agent nobody starts. Said before
/// anything is contacted; a dry run says it too.
fn check_service_manager(args: &InstallArgs, env: &Env, os: &Os) -> Result<(), SettingsError> {
    if env.is_root()
        && !os.is_windows()
        && !args.no_service
        && !crate::service::systemd_available(env)
    {
        return Err(bad(
            "--no-service",
            format!(
                "{}; or pass --no-service to only register and configure the agent",
                crate::host::Facts::no_systemd_hint()
            ),
        ));
    }
    Ok(())
}

/// Windows: config.cmd hands its arguments to cmd.exe, so the proxy and CA file it is given must
/// not read as cmd syntax.
fn check_network_for_cmd(network: &crate::net::Network, os: &Os) -> Result<(), SettingsError> {
    if !os.is_windows() {
        return Ok(());
    }
    if let Some(p) = &network.proxy {
        check_text("--proxy", p.url.as_str(), 2048, CMD_CHARS)?;
        if let Some(u) = &p.user {
            check_text("--proxy-user", u, 256, CMD_CHARS)?;
        }
    }
    if let Some(ca) = &network.ca_file {
        check_text("--ca-file", &ca.display().to_string(), 4096, CMD_CHARS)?;
    }
    Ok(())
}

/// `--scale-in-drain`: a systemd service that unregisters the agent, so Linux and root only.
fn check_scale_in_drain(args: &InstallArgs, env: &Env, os: &Os) -> Result<(), SettingsError> {
    if args.scale_in_drain && os.is_windows() {
        return Err(bad(
            "--scale-in-drain",
            "is for Linux scale sets (a systemd service watches the scheduled events)",
        ));
    }
    if args.scale_in_drain && !env.is_root() && !args.dry_run {
        return Err(bad(
            "--scale-in-drain",
            "needs root: the watcher is a system service that unregisters the agent",
        ));
    }
    Ok(())
}

/// Where agent-bootstrap keeps its state and cache, and the default agent dir, for this account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub default_agent_dir: PathBuf,
}

/// Root: the system locations of [`Os`]; another account: its XDG directories and home. The
/// variables `AGENT_BOOTSTRAP_STATE_DIR` / `AGENT_BOOTSTRAP_CACHE_DIR` win either way.
pub fn paths(env: &Env, os: &Os) -> Result<Paths, SettingsError> {
    let override_dir = |name: &str| -> Result<Option<PathBuf>, SettingsError> {
        match env.var(name) {
            Some(v) if is_absolute(v, os) => Ok(Some(PathBuf::from(v))),
            Some(v) => Err(bad(name, format!("'{v}' must be an absolute path"))),
            None => Ok(None),
        }
    };
    let state = override_dir(STATE_DIR_ENV)?;
    let cache = override_dir(CACHE_DIR_ENV)?;
    if env.is_root() || os.is_windows() {
        return Ok(Paths {
            state_dir: state.unwrap_or_else(|| os.default_state_dir(env.var("ProgramData"))),
            cache_dir: cache.unwrap_or_else(|| os.default_cache_dir(env.var("ProgramData"))),
            default_agent_dir: os.default_agent_dir(),
        });
    }
    let home = env.home().map(Path::to_owned);
    let xdg = |var: &str, fallback: &str| -> Option<PathBuf> {
        env.var(var)
            .filter(|v| Path::new(v).is_absolute())
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(fallback)))
            .map(|d| d.join("agent-bootstrap"))
    };
    let no_home = || {
        bad(
            "HOME",
            "is not set: without root, agent-bootstrap keeps its state in your home directory \
             (or set AGENT_BOOTSTRAP_STATE_DIR and AGENT_BOOTSTRAP_CACHE_DIR, and pass --agent-dir)",
        )
    };
    Ok(Paths {
        state_dir: match state {
            Some(s) => s,
            None => xdg("XDG_STATE_HOME", ".local/state").ok_or_else(no_home)?,
        },
        cache_dir: match cache {
            Some(c) => c,
            None => xdg("XDG_CACHE_HOME", ".cache").ok_or_else(no_home)?,
        },
        default_agent_dir: home.map_or_else(
            || os.default_agent_dir(),
            |h| h.join("azure-pipelines-agent"),
        ),
    })
}

/// `--agent-dir` (or the default): absolute, not `/`, no `..`, and nothing a unit file or a shell
/// would read differently (see [`PATH_FORBIDDEN`]; on Windows [`CMD_CHARS`]).
pub fn agent_dir(arg: Option<&Path>, paths: &Paths, os: &Os) -> Result<PathBuf, SettingsError> {
    let Some(d) = arg else {
        return Ok(paths.default_agent_dir.clone());
    };
    check_agent_dir("--agent-dir", d, os)
}

/// Absolute for the target OS: `/…` on Unix, `X:\…` (or `X:/…`) on Windows.
fn is_absolute(path: &str, os: &Os) -> bool {
    if os.is_windows() {
        let b = path.as_bytes();
        b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'\\' || b[2] == b'/')
    } else {
        path.starts_with('/')
    }
}

fn check_agent_dir(what: &str, d: &Path, os: &Os) -> Result<PathBuf, SettingsError> {
    let Some(text) = d.to_str() else {
        return Err(bad(what, format!("'{}' is not valid UTF-8", d.display())));
    };
    if !is_absolute(text, os) {
        return Err(bad(
            what,
            format!(
                "'{}' must be an absolute path{}",
                text.escape_debug(),
                if os.is_windows() { " (C:\\…)" } else { "" }
            ),
        ));
    }
    let forbidden = |c: char| {
        c.is_control()
            || if os.is_windows() {
                CMD_CHARS.contains(c) || c == '`' || c == '$'
            } else {
                c.is_whitespace() || PATH_FORBIDDEN.contains(c)
            }
    };
    if let Some(c) = text.chars().find(|c| forbidden(*c)) {
        return Err(bad(
            what,
            format!(
                "'{}' contains the character {c:?}; {} cannot name such a path safely",
                text.escape_debug(),
                if os.is_windows() {
                    "config.cmd and the scheduled task"
                } else {
                    "systemd units and the agent's scripts"
                }
            ),
        ));
    }
    let parts: Vec<&str> = text
        .split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(bad(what, format!("'{text}' must not contain '..'")));
    }
    let root_only = if os.is_windows() { 1 } else { 0 };
    if parts.len() <= root_only {
        return Err(bad(what, "must not be the file system root"));
    }
    if os.is_windows() {
        // Normalized with the target's separator (the host may not be Windows: dry runs, tests).
        let mut out = format!("{}\\", parts[0].to_ascii_uppercase());
        out.push_str(&parts[1..].join("\\"));
        Ok(PathBuf::from(out))
    } else {
        Ok(d.components().collect())
    }
}

/// The settings install saved, as install settings again (reconcile configures from them).
pub fn from_saved(
    saved: &crate::state::Saved,
    env: &Env,
    os: Os,
) -> Result<InstallSettings, SettingsError> {
    let os = named_platform(saved.platform.as_deref(), os)?;
    let url = check_url("the saved url", &saved.url)?;
    check_saved(saved, &os)?;
    let paths = paths(env, &os)?;
    let package = match &saved.package {
        Some(p) if p.contains("://") => PackageChoice::Explicit {
            source: Source::Url(check_url("the saved package", p)?),
            sha256: saved.package_sha256.clone(),
        },
        Some(p) => PackageChoice::Explicit {
            source: Source::File(PathBuf::from(p)),
            sha256: saved.package_sha256.clone(),
        },
        // Root's record of the version (updated from the server's agent record when the agent
        // updates itself), never what the agent dir holds: configuring again never downgrades
        // below what root last saw, and never asks the agent's files.
        None => match &saved.agent_version {
            Some(v) => PackageChoice::Version(v.clone()),
            None => PackageChoice::Latest,
        },
    };
    Ok(InstallSettings {
        url,
        pool: saved.pool.clone(),
        group: saved.group.as_ref().map(crate::scope::GroupRef::group),
        agent_name: saved.agent_name.clone(),
        agent_dir: saved.agent_dir.clone(),
        work_dir: saved.work_dir.clone(),
        user: if saved.dedicated_user {
            AgentUser::Dedicated(saved.user.clone())
        } else {
            AgentUser::Existing(saved.user.clone())
        },
        as_root: env.is_root(),
        end_user_processes: saved.end_user_processes,
        install_dependencies: saved.install_dependencies,
        named_platform: saved.platform.clone(),
        // Not saved (no stored secret): a custom account's password is read again, if given.
        logon_password: env
            .var(LOGON_PASSWORD_ENV)
            .filter(|_| os.is_windows())
            .map(crate::secret::Secret::new),
        service: saved.service,
        boot: saved.boot_unit.is_some(),
        scale_in_drain: saved.watch_unit.is_some(),
        wait_for_access: None,
        disable_update: saved.disable_update,
        capabilities: saved.capabilities.clone(),
        replace: false,
        network: saved_network(saved, env)?,
        identity: saved_identity(saved)?,
        package,
        config_timeout: std::time::Duration::from_secs(600),
        dry_run: false,
        assume_unregistered: false,
        no_block_start: true,
        state_dir: paths.state_dir,
        cache_dir: paths.cache_dir,
        os,
    })
}

/// The identity source and selector install used, for later runs.
pub fn saved_identity(saved: &crate::state::Saved) -> Result<Request, SettingsError> {
    // Settings saved before there were other sources: IMDS.
    let kind = match saved.identity_source.as_deref() {
        None => Kind::Imds,
        Some(k) => Kind::from_name(k)
            .filter(|k| *k != Kind::Auto)
            .ok_or_else(|| bad("the saved identity source", format!("'{k}' is not one")))?,
    };
    Ok(Request {
        kind,
        selector: Selector::from_saved(saved.identity.as_deref()),
        az_login: saved.az_login,
        pat_file: saved.pat_file.clone(),
    })
}

/// The saved settings pass the same rules as the flags they came from (the file is root's, but a
/// value that reaches a unit file or a command line is checked wherever it comes from).
pub fn check_saved(saved: &crate::state::Saved, os: &Os) -> Result<(), SettingsError> {
    check_url("the saved url", &saved.url)?;
    check_name("the saved pool", &saved.pool, 256, POOL_FORBIDDEN, os)?;
    if let Some(g) = &saved.group {
        check_name("the saved group", &g.name, 256, POOL_FORBIDDEN, os)?;
        check_name("the saved project", &g.project, 64, POOL_FORBIDDEN, os)?;
        for t in &g.tags {
            check_name("a saved tag", t, 256, POOL_FORBIDDEN, os)?;
        }
    }
    check_name(
        "the saved agent name",
        &saved.agent_name,
        64,
        AGENT_FORBIDDEN,
        os,
    )?;
    check_agent_dir("the saved agent dir", &saved.agent_dir, os)?;
    let cmd = if os.is_windows() { CMD_CHARS } else { "" };
    check_text("the saved work dir", &saved.work_dir, 4096, cmd)?;
    let account = if os.is_windows() {
        check_logon_account(&saved.user).is_ok()
    } else {
        check_user(&saved.user).is_ok()
    };
    if !account {
        return Err(bad(
            "the saved user",
            format!("'{}' is not a valid account name", saved.user),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::fake(vars, "vm-01", true)
    }

    fn args() -> InstallArgs {
        InstallArgs {
            place: crate::cli::OrgArgs {
                org: Some("myorg".into()),
                ..Default::default()
            },
            config_timeout: 600,
            ..Default::default()
        }
    }

    fn err(a: &InstallArgs, e: &Env) -> String {
        install(a, e, Os::linux_x64()).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let s = install(&args(), &env(&[]), Os::linux_x64()).unwrap();
        assert_eq!(s.url.as_str(), "https://dev.azure.com/myorg");
        assert_eq!(s.pool, "Default");
        assert_eq!(s.agent_name, "vm-01");
        assert_eq!(s.agent_dir, PathBuf::from("/opt/azure-pipelines-agent"));
        assert_eq!(s.work_dir, "_work");
        assert_eq!(s.user, AgentUser::Dedicated("azpagent".into()));
        assert!(s.service);
        assert_eq!(s.identity, Request::auto());
        assert!(matches!(s.package, PackageChoice::Latest));
    }

    #[test]
    fn environment_fallbacks_and_flags_win() {
        let e = env(&[
            ("AZP_URL", "https://myorg.visualstudio.com/"),
            ("AZP_POOL", "EnvPool"),
            ("AZP_AGENT_NAME", "env-agent"),
            ("AZP_WORK", "/mnt/work"),
        ]);
        let mut a = InstallArgs {
            config_timeout: 600,
            ..Default::default()
        };
        let s = install(&a, &e, Os::linux_x64()).unwrap();
        assert_eq!(s.url.as_str(), "https://myorg.visualstudio.com/");
        assert_eq!(s.pool, "EnvPool");
        assert_eq!(s.agent_name, "env-agent");
        assert_eq!(s.work_dir, "/mnt/work");
        a.place.pool = Some("FlagPool".into());
        a.agent_name = Some("flag-agent".into());
        a.place.url = Some("https://dev.azure.com/other".into());
        let s = install(&a, &e, Os::linux_x64()).unwrap();
        assert_eq!(s.pool, "FlagPool");
        assert_eq!(s.agent_name, "flag-agent");
        assert_eq!(s.url.as_str(), "https://dev.azure.com/other");
    }

    #[test]
    fn urls() {
        let e = env(&[]);
        let mut a = InstallArgs {
            config_timeout: 600,
            ..Default::default()
        };
        assert!(err(&a, &e).contains("--org/--url"));
        a.place.url = Some("http://dev.azure.com/x".into());
        let m = err(&a, &e);
        assert!(m.contains("--url") && m.contains("plain http"), "{m}");
        a.place.url = Some("http://127.0.0.1:8080/org".into());
        assert!(install(&a, &e, Os::linux_x64()).is_ok());
        a.place.url = Some("http://[::1]:8080/org".into());
        assert!(install(&a, &e, Os::linux_x64()).is_ok());
        a.place.url = Some("http://localhost:8080/org".into());
        assert!(install(&a, &e, Os::linux_x64()).is_ok());
        a.place.url = Some("https://user:pat@dev.azure.com/x".into());
        assert!(err(&a, &e).contains("credentials"));
        a.place.url = Some("ftp://x".into());
        assert!(err(&a, &e).contains("scheme"));
        a.place.url = Some("not a url".into());
        assert!(err(&a, &e).contains("--url"));
        let a = InstallArgs {
            config_timeout: 600,
            ..Default::default()
        };
        assert!(err(&a, &env(&[("AZP_URL", "http://evil.example")])).contains("AZP_URL"));
        let a = InstallArgs {
            place: crate::cli::OrgArgs {
                org: Some("bad/org".into()),
                ..Default::default()
            },
            config_timeout: 600,
            ..Default::default()
        };
        assert!(err(&a, &e).contains("--org"));
    }

    #[test]
    fn names_paths_and_users() {
        let e = env(&[]);
        let mut a = args();
        a.agent_name = Some("bad/name".into());
        assert!(err(&a, &e).contains("--agent-name"));
        a.agent_name = Some("x".repeat(65));
        assert!(err(&a, &e).contains("longer than 64"));
        let mut a = args();
        a.place.pool = Some("  ".into());
        assert!(err(&a, &e).contains("--pool"));
        let mut a = args();
        a.agent_dir = Some("relative/dir".into());
        assert!(err(&a, &e).contains("--agent-dir"));
        let mut a = args();
        a.agent_dir = Some("/".into());
        assert!(err(&a, &e).contains("--agent-dir"));
        let mut a = args();
        a.user = Some("Bad User".into());
        assert!(err(&a, &e).contains("--user"));
        a.user = Some("root".into());
        assert_eq!(
            install(&a, &e, Os::linux_x64()).unwrap().user,
            AgentUser::Existing("root".into())
        );
        let e2 = Env::fake(&[], "h", false);
        let m = err(&args(), &e2);
        assert!(m.contains("--no-service") && m.contains("root"), "{m}");
        let mut a = args();
        a.no_service = true;
        assert_eq!(
            install(&a, &e2, Os::linux_x64()).unwrap().user,
            AgentUser::Existing("builder".into())
        );
        a.user = Some("someone-else".into());
        assert!(err(&a, &e2).contains("--user"));
        let mut a = args();
        a.config_timeout = 0;
        assert!(err(&a, &e).contains("--config-timeout"));
    }

    #[cfg(unix)]
    #[test]
    fn names_that_a_shell_or_a_unit_file_would_read_differently_are_refused() {
        let e = env(&[]);
        for bad_pool in [
            "a$(id)",
            "a`id`",
            "a(b)",
            "it's",
            "a\"b",
            "a\\b",
            "Default\n[Service]",
        ] {
            let mut a = args();
            a.place.pool = Some(bad_pool.into());
            let m = err(&a, &e);
            assert!(m.contains("--pool"), "{bad_pool}: {m}");
        }
        let mut a = args();
        a.place.pool = Some("a$b".into());
        assert!(err(&a, &e).contains("shell"));
        for bad_name in ["vm$1", "vm`x`", "vm(1)", "vm'1", "vm\u{7}"] {
            let mut a = args();
            a.agent_name = Some(bad_name.into());
            assert!(err(&a, &e).contains("--agent-name"), "{bad_name}");
        }
        for bad_dir in [
            "/opt/my agent",
            "/opt/a%i",
            "/opt/a\tb",
            "/opt/a\nb",
            "/opt/$HOME",
            "/opt/a\"b",
            "/opt/a/../../etc",
        ] {
            let mut a = args();
            a.agent_dir = Some(bad_dir.into());
            let m = err(&a, &e);
            assert!(m.contains("--agent-dir"), "{bad_dir}: {m}");
        }
        let mut a = args();
        a.agent_dir = Some("/opt/./agents/a1/".into());
        assert_eq!(
            install(&a, &e, Os::linux_x64()).unwrap().agent_dir,
            PathBuf::from("/opt/agents/a1")
        );
    }

    #[cfg(unix)]
    #[test]
    fn without_root_state_and_agent_live_in_the_home_directory() {
        let e = Env::fake(&[], "h", false);
        let p = paths(&e, &Os::linux_x64()).unwrap();
        assert_eq!(
            p.state_dir,
            PathBuf::from("/home/builder/.local/state/agent-bootstrap")
        );
        assert_eq!(
            p.cache_dir,
            PathBuf::from("/home/builder/.cache/agent-bootstrap")
        );
        assert_eq!(
            p.default_agent_dir,
            PathBuf::from("/home/builder/azure-pipelines-agent")
        );
        let e = Env::fake(
            &[
                ("XDG_STATE_HOME", "/x/state"),
                ("XDG_CACHE_HOME", "relative"),
            ],
            "h",
            false,
        );
        let p = paths(&e, &Os::linux_x64()).unwrap();
        assert_eq!(p.state_dir, PathBuf::from("/x/state/agent-bootstrap"));
        assert_eq!(
            p.cache_dir,
            PathBuf::from("/home/builder/.cache/agent-bootstrap")
        );
        let root = paths(&env(&[]), &Os::linux_x64()).unwrap();
        assert_eq!(root.state_dir, PathBuf::from("/var/lib/agent-bootstrap"));
        let e = env(&[(STATE_DIR_ENV, "relative/state")]);
        assert!(
            paths(&e, &Os::linux_x64())
                .unwrap_err()
                .to_string()
                .contains(STATE_DIR_ENV)
        );
    }

    #[cfg(unix)]
    #[test]
    fn saved_settings_are_checked_again() {
        let mut saved: crate::state::Saved = serde_json::from_str(
            r#"{"schema":1,"url":"https://dev.azure.com/o","pool":"Default","pool_id":1,
                "agent_name":"a","agent_id":1,"agent_dir":"/opt/a","work_dir":"_work","user":"azpagent",
                "dedicated_user":true,"service":true,"service_unit":null,"identity":null,
                "agent_version":null,"package_sha256":null,"machine_id":null}"#,
        )
        .unwrap();
        assert!(from_saved(&saved, &env(&[]), Os::linux_x64()).is_ok());
        saved.pool = "Default\n[Service]\nExecStartPre=+/bin/sh".into();
        let m = from_saved(&saved, &env(&[]), Os::linux_x64())
            .unwrap_err()
            .to_string();
        assert!(m.contains("the saved pool"), "{m}");
    }

    #[test]
    fn windows_settings_follow_windows_rules() {
        let win = Os::windows_x64();
        let e = env(&[
            ("ProgramData", r"D:\ProgramData"),
            (LOGON_PASSWORD_ENV, "s3cret-password"),
        ]);
        let s = install(&args(), &e, win).unwrap();
        assert_eq!(s.agent_dir, PathBuf::from(r"C:\azagent"));
        assert_eq!(
            s.state_dir,
            Path::new(r"D:\ProgramData").join("agent-bootstrap")
        );
        assert_eq!(
            s.user,
            AgentUser::Existing(r"NT AUTHORITY\NETWORK SERVICE".into())
        );
        assert_eq!(
            s.logon_password
                .as_ref()
                .map(super::super::secret::Secret::expose),
            Some("s3cret-password")
        );
        let err = |a: &InstallArgs| install(a, &e, win).unwrap_err().to_string();
        let mut a = args();
        a.user = Some("azpagent".into());
        assert!(err(&a).contains("--windows-logon-account"));
        let mut a = args();
        a.place.pool = Some("Build & Release".into());
        let m = err(&a);
        assert!(m.contains("--pool") && m.contains("cmd.exe"), "{m}");
        for bad_dir in [
            r"azagent",
            r"C:\",
            r"C:\a&b",
            r"C:\a%PATH%",
            r"C:\a\..\..\Windows",
        ] {
            let mut a = args();
            a.agent_dir = Some(bad_dir.into());
            assert!(err(&a).contains("--agent-dir"), "{bad_dir}");
        }
        let mut a = args();
        a.agent_dir = Some("c:/Program Files/agents/a1/".into());
        assert_eq!(
            install(&a, &e, win).unwrap().agent_dir,
            PathBuf::from(r"C:\Program Files\agents\a1")
        );
        // The same pool name is fine for Linux, where no cmd.exe reads it.
        let mut a = args();
        a.place.pool = Some("Build & Release".into());
        assert!(install(&a, &env(&[]), Os::linux_x64()).is_ok());
        let mut a = args();
        a.windows_logon_account = Some("svc".into());
        assert!(
            install(&a, &env(&[]), Os::linux_x64())
                .unwrap_err()
                .to_string()
                .contains("--windows-logon-account")
        );
        // Not elevated: the service step would fail only after registering, so it is refused first.
        let user = Env::fake(&[], "h", false);
        let m = install(&args(), &user, win).unwrap_err().to_string();
        assert!(m.contains("elevated"), "{m}");
    }

    #[test]
    fn hostname_that_is_not_a_valid_agent_name_points_at_the_flag() {
        let e = Env::fake(&[], "", true);
        assert!(err(&args(), &e).contains("--agent-name"));
    }

    #[test]
    fn identity_selectors() {
        let mut id = SelectorArgs {
            client_id: Some("not-a-guid".into()),
            ..Default::default()
        };
        assert!(
            selector(&id)
                .unwrap_err()
                .to_string()
                .contains("--client-id")
        );
        id.client_id = Some("12345678-1234-1234-1234-123456789abc".into());
        assert!(matches!(selector(&id).unwrap(), Selector::ClientId(_)));
        let id = SelectorArgs {
            resource_id: Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi".into()),
            ..Default::default()
        };
        assert!(matches!(selector(&id).unwrap(), Selector::ResourceId(_)));
        let id = SelectorArgs {
            resource_id: Some("/subscriptions/s".into()),
            ..Default::default()
        };
        assert!(
            selector(&id)
                .unwrap_err()
                .to_string()
                .contains("--resource-id")
        );
    }

    #[test]
    fn durations_are_days_hours_minutes_or_seconds() {
        assert_eq!(duration("--x", "7d").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(duration("--x", "12h").unwrap().as_secs(), 12 * 3_600);
        assert_eq!(duration("--x", "90m").unwrap().as_secs(), 90 * 60);
        assert_eq!(duration("--x", "1d12h").unwrap().as_secs(), 36 * 3_600);
        for bad in ["", "7", "7w", "d", "-1d", "10s", "99999999999999999999d"] {
            let e = duration("--offline-for", bad).unwrap_err();
            assert!(e.to_string().contains("--offline-for"), "{bad}: {e}");
        }
    }

    #[test]
    fn az_login_is_for_the_azure_cli() {
        let mut args = IdentityArgs {
            az_login: true,
            ..Default::default()
        };
        assert!(
            identity(&args)
                .unwrap_err()
                .to_string()
                .contains("--az-login")
        );
        args.source = IdentitySource::AzureCli;
        let r = identity(&args).unwrap();
        assert_eq!((r.kind, r.az_login), (Kind::AzureCli, true));
    }

    #[test]
    fn packages() {
        let e = env(&[]);
        let mut a = args();
        a.pkg.agent_version = Some("4.x.1".into());
        assert!(err(&a, &e).contains("--agent-version"));
        a.pkg.agent_version = Some("4.264.2".into());
        assert!(matches!(
            install(&a, &e, Os::linux_x64()).unwrap().package,
            PackageChoice::Version(v) if v == "4.264.2"
        ));
        let mut a = args();
        a.pkg.package = Some("/definitely/not/here.tar.gz".into());
        assert!(err(&a, &e).contains("--package"));
        a.pkg.package = Some("http://mirror.example/agent.tar.gz".into());
        assert!(err(&a, &e).contains("plain http"));
        a.pkg.package = Some("https://mirror.example/agent.tar.gz".into());
        a.pkg.package_sha256 = Some("xyz".into());
        assert!(err(&a, &e).contains("--package-sha256"));
        a.pkg.package_sha256 = Some("A".repeat(64));
        match install(&a, &e, Os::linux_x64()).unwrap().package {
            PackageChoice::Explicit { sha256, .. } => assert_eq!(sha256, Some("a".repeat(64))),
            other => panic!("{other:?}"),
        }
    }
}
