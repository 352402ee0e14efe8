//! `agent-bootstrap install`: managed identity → preflight → verified package → unattended
//! configuration as an unprivileged user → service → saved settings → boot unit.
//!
//! The order is chosen so that a mistake costs nothing: input is validated before anything else,
//! the token and the organization/pool permissions are checked before the disk is touched (the
//! three preflight requests run at once), the package is verified before it is moved into place,
//! and an agent that is already configured and known to the server is left alone (exit 0, no
//! change). What will happen is computed once as a `Plan`: `--dry-run` prints it, a real run
//! carries it out, step by step, so the two cannot disagree.
//!
//! This file reads as the command's steps (`run_locked`); each part lives beside it:
//! `checks` (what stops an install first), `plan` (the steps, printed or carried out),
//! `execute`, `fetch` (the package), `configure` (the agent's files and `config.sh`),
//! `ca` (`--ca-file` and the trust store) and `summary` (saved settings and the result).

use std::path::Path;
use std::time::Duration;

use crate::agent::{AgentDir, AgentSettings};
use crate::clock::Budget;
use crate::devops::{DevOpsClient, PackageMetadata, Pool};
use crate::env::Env;
use crate::error::Error;
use crate::identity::{Request as IdentityRequest, Tokens};
use crate::net::Net;
use crate::output::{Out, Outcome};
use crate::package;
use crate::progress::Progress;
use crate::service::{self, AgentUnit, Systemctl};
use crate::settings::{InstallSettings, PackageChoice};
use crate::state::{self, TrustedCa};
use crate::user;

mod ca;
mod checks;
mod configure;
mod execute;
mod fetch;
mod plan;
mod summary;

use ca::unneeded_cas;
pub use ca::{TrustPlan, trust_plan};
use checks::{adopt_or_refuse, check_same_agent, check_shared_account, wait_for_access};
pub use configure::{
    MACHINE_CAPABILITY, network_matches, proxy_bypass_text, write_proxy_bypass, write_update_switch,
};
use execute::{Executor, Progressed, boot_program, keep_installed};
pub use execute::{
    ensure_boot_task, ensure_boot_unit, ensure_watch_unit, ensure_windows_service, start_service,
};
pub use fetch::installed_version;
use fetch::plan_package;
use plan::{Step, boot_step, make_plan, print_plan, watch_step};
pub use summary::summary;

/// How long install waits for another run working on the same agent dir (cloud-init's install
/// waits out the boot unit's reconcile, which ends within [`service::BOOT_TIMEOUT`]).
pub const LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

/// All of install's talking to IMDS and Azure DevOps (preflight, packages API, the agent lookup):
/// one budget, so a throttled scale set waits out `Retry-After` instead of giving up after a few
/// seconds, and a dead network still ends the run in bounded time.
pub const NETWORK_BUDGET: Duration = Duration::from_secs(300);

/// The agent dir as it was seen once, before the network.
struct Seen {
    configured: bool,
    self_updated: bool,
    package_present: bool,
    /// Only root could have written the extracted package (an image build's): root may configure
    /// from it. Anything the agent user ever owned is replaced by a fresh verified extraction.
    root_only: bool,
}

/// What the preflight found, for planning and for the saved settings.
struct Checked {
    who: String,
    pool: Pool,
    /// The agent is configured here and the server has lost it (or another agent took the name).
    reregister: bool,
    /// The VM id, when it was asked for alongside the preflight.
    vm_id: Option<String>,
    /// This machine, as the registration names it ([`MACHINE_CAPABILITY`]).
    machine: Option<String>,
    /// systemd knows the agent's unit: it is stopped before the account's processes are ended
    /// (systemd would start the agent again).
    unit_exists: bool,
    /// What an earlier install of this agent dir added to the trust store and this one does not
    /// keep: taken out once the new settings are saved.
    release: Vec<TrustedCa>,
}

pub async fn run(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    progress: &Progress,
    out: &Out,
) -> Result<(), Error> {
    check_location(s, env)?;
    let done = if s.dry_run {
        run_locked(s, env, net, progress, "installed").await?
    } else {
        let _lock = crate::lock::acquire(&s.state_dir, &s.agent_dir, LOCK_WAIT).await?;
        run_locked(s, env, net, progress, "installed").await?
    };
    out.outcome(done)
}

/// Refuses, before anything is contacted, an agent dir that root could be tricked into acting on
/// through a path another account controls, or (without root) one this account cannot create,
/// and a read-only or `noexec` file system where the agent dir, the state or the cache would go
/// (before the lock, which lives in the state dir).
pub fn check_location(s: &InstallSettings, env: &Env) -> Result<(), Error> {
    let mut places = crate::preflight::install_places(&s.agent_dir, &s.state_dir, &s.cache_dir);
    // The units go into the unit directory after the agent is registered: a read-only or full
    // /etc is found now, before anything is contacted.
    if manages_units(s, env) && (s.service || s.boot || s.scale_in_drain) {
        places.push(crate::preflight::Place {
            what: "the systemd unit directory",
            path: service::unit_dir(env),
            exec: false,
            room: crate::preflight::UNIT_ROOM,
            fix: "pass --no-service and --no-boot to install no unit".into(),
        });
    }
    let agent_uid = user::lookup(s.user.name()).ok().flatten().map(|u| u.uid);
    // The dedicated account is made by useradd, which writes /etc: on a read-only root that
    // fails only after the package is downloaded, with useradd's "cannot lock /etc/passwd".
    if s.as_root
        && !s.os.is_windows()
        && agent_uid.is_none()
        && matches!(s.user, crate::settings::AgentUser::Dedicated(_))
    {
        let name = s.user.name();
        places.push(crate::preflight::Place {
            what: "the account database",
            path: "/etc/passwd".into(),
            exec: false,
            room: 0,
            fix: format!(
                "the agent's account '{name}' does not exist and cannot be created here: create \
                 it in the image (useradd --system --create-home {name}), or pass --user with an \
                 existing account"
            ),
        });
    }
    crate::preflight::check(&places)?;
    super::check_agent_dir(&s.agent_dir, env, agent_uid)?;
    if matches!(
        boot_step(s, env),
        Some(Step::BootUnit { .. } | Step::BootTask { .. })
    ) || matches!(watch_step(s, env), Some(Step::WatchUnit { .. }))
    {
        boot_program()?;
    }
    if !s.as_root {
        let mut existing = s.agent_dir.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        if !crate::platform::writable(existing) {
            return Err(Error::Input(format!(
                "invalid --agent-dir {}: {} is not writable by {}; choose a directory you can \
                 write (the default is ~/azure-pipelines-agent), or run as root",
                s.agent_dir.display(),
                existing.display(),
                env.username()
            )));
        }
    }
    Ok(())
}

/// The install flow, with the agent dir's lock held by the caller (install or reconcile).
pub async fn run_locked(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    progress: &Progress,
    headline: &str,
) -> Result<Outcome, Error> {
    let agent = AgentDir::new(&s.agent_dir, &s.os);
    // 0. What a killed run left (staging trees, partial downloads), under the lock.
    clear_interrupted(s);
    // 1. Local state that makes the request impossible, before any network call. The CA file's
    // certificates must reach the system trust store, which is all the agent trusts: what cannot
    // be done stops here, before anything is contacted or changed.
    let existing = registration_here(s, &agent)?;
    let trust = trust_plan(s, env).await?;
    // 2. Token, then the preflight requests at once (after waiting for access, if asked).
    let link = connect(s, env, net).await?;
    let seen = look(s, &agent, existing.as_ref());
    let found = preflight(s, &link, &seen, existing.is_none()).await?;
    // 3. An existing registration: healthy → only what is not as it should be; gone from the
    // server → register again. None here, but one of this name on the server: this machine's own
    // is replaced, another's only with --replace.
    let machine = found.vm_id.clone().or_else(state::machine_id);
    let on_server = on_server(
        s,
        &agent,
        existing.as_ref(),
        &link.devops,
        &found.pool,
        machine.as_deref(),
        &link.budget,
    );
    let (reregister, server_version) = match on_server.await? {
        OnServer::Healthy(a) => {
            let cfg = existing.as_ref().expect("a registration here");
            let (pool, trust) = (&found.pool, trust.as_ref());
            return keep_installed(s, env, &agent, cfg, pool, &a, &link.identity, trust).await;
        }
        OnServer::Register { again, version } => (again, version),
    };
    let meta = fresh_package(s, &link, found.meta, server_version.as_deref()).await?;
    let checked = Checked {
        unit_exists: agent_unit_exists(s, env, &found.pool.name).await,
        release: released_cas(s, trust.as_ref()),
        who: found.who,
        pool: found.pool,
        reregister,
        vm_id: found.vm_id,
        machine,
    };
    // 4. The account (a real run creates it now: the version check below runs as it).
    let new_account = user::lookup(s.user.name())?.is_none();
    let account = match user::lookup(s.user.name())? {
        Some(u) => Some(u),
        None if s.dry_run => None,
        None => Some(user::ensure(&s.user, env).await?),
    };
    // 5. Which package, then the whole plan: printed, or carried out.
    if let Some(account) = &account {
        check_shared_account(s, account, &checked)?;
    }
    let package = plan_package(s, &agent, &seen, meta, account.as_ref(), env).await?;
    let mut plan = make_plan(
        s,
        env,
        &agent,
        &checked,
        &package,
        account.as_ref(),
        new_account,
    );
    if let Some(t) = &trust {
        plan.trust_first(t.step());
    }
    if s.dry_run {
        return print_plan(s, &checked, &package, &plan);
    }
    let mut executor = Executor {
        s,
        env,
        net,
        progress,
        agent: &agent,
        checked: &checked,
        devops: &link.devops,
        tokens: &link.tokens,
        budget: &link.budget,
        trust: trust.as_ref(),
        user: account.expect("a real run has created the account"),
        done: Progressed::default(),
        saved: None,
    };
    let result = executor.run(&plan, headline).await;
    if result.is_err() {
        executor.undo_trust().await;
    }
    result
}

/// Removes what a killed run left beside the agent dir and in the cache (not in a dry run).
fn clear_interrupted(s: &InstallSettings) {
    if s.dry_run {
        return;
    }
    let Some(parent) = s.agent_dir.parent() else {
        return;
    };
    for p in package::remove_stale(parent, &s.cache_dir, &state::tag(&s.agent_dir)) {
        tracing::info!(path = %p.display(), "removed what an interrupted run left");
    }
}

/// The registration configured here, if any (none when reconcile plans past its removal), and
/// refused when it is another agent's than the one asked for.
fn registration_here(
    s: &InstallSettings,
    agent: &AgentDir,
) -> Result<Option<AgentSettings>, Error> {
    if s.assume_unregistered {
        return Ok(None);
    }
    let existing = agent.settings()?;
    if let Some(cfg) = &existing {
        check_same_agent(cfg, s)?;
    }
    Ok(existing)
}

/// The identity's token and a client for the organization, under one network budget.
struct Link {
    budget: Budget,
    tokens: std::sync::Arc<Tokens>,
    identity: IdentityRequest,
    devops: DevOpsClient,
}

/// Waits for access if asked, then gets a token the organization can be asked with.
async fn connect(s: &InstallSettings, env: &Env, net: &Net) -> Result<Link, Error> {
    if let Some(limit) = s.wait_for_access {
        wait_for_access(s, env, net, limit).await?;
    }
    let budget = net.clock().budget(NETWORK_BUDGET);
    let tokens = super::tokens(&s.identity, env, &s.os, net).await?;
    let identity = tokens.source().request();
    warn_unsaved_secrets(s, env, &identity);
    tokens.get(&budget).await?;
    let devops = DevOpsClient::new(&s.url, tokens.clone(), net);
    Ok(Link {
        budget,
        tokens,
        identity,
        devops,
    })
}

/// The agent dir, looked at once: the agent user can change it at any time, and every decision
/// below must rest on the same view.
fn look(s: &InstallSettings, agent: &AgentDir, existing: Option<&AgentSettings>) -> Seen {
    let package_present = agent.package_present();
    Seen {
        configured: existing.is_some() || (!s.assume_unregistered && agent.is_configured()),
        self_updated: agent.self_updated(),
        package_present,
        root_only: s.as_root && package_present && crate::fsx::root_only_tree(&agent.root),
    }
}

/// What the preflight requests found.
struct Found {
    who: String,
    pool: Pool,
    /// The packages API's answer, when a package was asked for alongside.
    meta: Option<PackageMetadata>,
    vm_id: Option<String>,
}

/// The identity's access to the pool, with (at once) the package a fresh install needs and the
/// VM id saved to tell a clone of this machine later.
async fn preflight(
    s: &InstallSettings,
    link: &Link,
    seen: &Seen,
    fresh: bool,
) -> Result<Found, Error> {
    // As root (SYSTEM) a configured or self-updated agent dir is never configured from: only a
    // registration that needs repair gets this far, and it gets a fresh package.
    let wants_api = !seen.configured
        && (s.as_root || !seen.self_updated)
        && matches!(s.package, PackageChoice::Latest | PackageChoice::Version(_));
    let rid = s.os.rid();
    let (access, meta, vm_id) = tokio::join!(
        link.devops.access(&s.pool, s.group.as_ref(), &link.budget),
        async {
            if wants_api {
                let wanted = wanted_version(s);
                Some(link.devops.agent_package(&rid, wanted, &link.budget).await)
            } else {
                None
            }
        },
        async {
            if fresh {
                link.tokens.source().vm_id().await
            } else {
                None
            }
        },
    );
    let crate::devops::Access { who, pool } = access?;
    tracing::info!(identity = %who, org = %s.url, "token accepted by Azure DevOps");
    match &pool.group {
        None => {
            tracing::info!(pool = %pool.name, pool_id = pool.id, "identity may manage the pool");
        }
        Some(g) => tracing::info!(
            project = %g.project,
            id = g.id,
            "found the {} '{}'",
            g.kind.noun(),
            g.name
        ),
    }
    Ok(Found {
        who,
        pool,
        meta: meta.transpose()?,
        vm_id,
    })
}

/// `--agent-version`, if given.
fn wanted_version(s: &InstallSettings) -> Option<&str> {
    match &s.package {
        PackageChoice::Version(v) => Some(v.as_str()),
        _ => None,
    }
}

/// Root configures a registration again only from a fresh package: the version from root's
/// settings or the server's record of the agent (it may have updated itself), whichever is
/// newer, never from the agent's files.
async fn fresh_package(
    s: &InstallSettings,
    link: &Link,
    meta: Option<PackageMetadata>,
    server_version: Option<&str>,
) -> Result<Option<PackageMetadata>, Error> {
    if !s.as_root
        || meta.is_some()
        || !matches!(s.package, PackageChoice::Latest | PackageChoice::Version(_))
    {
        return Ok(meta);
    }
    let wanted = newest(wanted_version(s), server_version);
    let rid = s.os.rid();
    Ok(Some(
        link.devops
            .agent_package(&rid, wanted, &link.budget)
            .await?,
    ))
}

/// Whether systemd knows the agent's unit, only to know whether to stop it first: a machine
/// where systemctl cannot answer (a chroot, a dry run on an image) has no unit of ours running;
/// installing one later says what is wrong.
async fn agent_unit_exists(s: &InstallSettings, env: &Env, pool: &str) -> bool {
    match Systemctl::find(env).filter(|_| manages_units(s, env) && s.service) {
        Some(sc) => sc
            .state(&agent_unit(s, pool).name)
            .await
            .is_ok_and(|st| st.exists),
        None => false,
    }
}

/// What an earlier install of this agent dir added to the trust store and this one does not keep.
fn released_cas(s: &InstallSettings, trust: Option<&TrustPlan>) -> Vec<TrustedCa> {
    let recorded = state::load(&s.state_dir, &s.agent_dir)
        .ok()
        .flatten()
        .map(|p| p.trusted_cas)
        .unwrap_or_default();
    unneeded_cas(
        s,
        &recorded,
        &trust.map(TrustPlan::kept).unwrap_or_default(),
    )
}

/// Secrets a boot's reconcile will not have, said once at install (a PAT from the environment, a
/// proxy password not from a file).
fn warn_unsaved_secrets(s: &InstallSettings, env: &Env, identity: &IdentityRequest) {
    let boot = matches!(
        boot_step(s, env),
        Some(Step::BootUnit { .. } | Step::BootTask { .. })
    );
    if boot && identity.kind == crate::identity::Kind::Pat && identity.pat_file.is_none() {
        tracing::warn!(
            "the PAT came from AZP_TOKEN, which is not saved: reconcile at boot will have no token \
             and cannot re-register the agent; put the PAT in a file only root can read and pass \
             AZP_TOKEN_FILE instead"
        );
    }
    if boot
        && s.network
            .proxy
            .as_ref()
            .is_some_and(|p| p.user.is_some() && p.password_file.is_none())
    {
        tracing::warn!(
            "the proxy password did not come from a file, and it is not saved: reconcile at boot \
             will have no proxy password; put it in a file only root can read and pass \
             --proxy-password-file instead"
        );
    }
}

/// What the server says about the agent of this name.
enum OnServer {
    /// The registration here is the server's, with these settings: kept.
    Healthy(crate::devops::ServerAgent),
    /// Configure: `again` when a registration here is replaced; the version the server knows the
    /// agent by, if any.
    Register {
        again: bool,
        version: Option<String>,
    },
}

/// Step 3: the registration here (if any) against the server's agent of that name; with none
/// here, a same-named agent on the server is this machine's own (replaced) or refused
/// ([`adopt_or_refuse`]).
async fn on_server(
    s: &InstallSettings,
    agent: &AgentDir,
    existing: Option<&AgentSettings>,
    devops: &DevOpsClient,
    pool: &Pool,
    machine: Option<&str>,
    budget: &Budget,
) -> Result<OnServer, Error> {
    let found = devops.find_agent(pool, &s.agent_name, budget).await?;
    let version = found.as_ref().and_then(|a| a.version.clone());
    let Some(cfg) = existing else {
        if let Some(a) = &found {
            let previous = state::load(&s.state_dir, &s.agent_dir).ok().flatten();
            adopt_or_refuse(s, a, pool, machine, previous.as_ref())?;
        }
        return Ok(OnServer::Register {
            again: false,
            version,
        });
    };
    match found {
        Some(a) if a.id == cfg.agent_id && network_matches(agent, &s.network) => {
            return Ok(OnServer::Healthy(a));
        }
        Some(_) if !network_matches(agent, &s.network) => tracing::warn!(
            "the agent's proxy or CA settings differ from these; configuring it again \
             (--replace keeps its registration)"
        ),
        Some(a) => tracing::warn!(
            local_id = cfg.agent_id,
            server_id = a.id,
            "the pool has another agent with this name; registering this one again (--replace)"
        ),
        None => tracing::warn!(
            agent = %cfg.agent_name,
            "the agent is configured here but unknown to the server (deleted?); registering it again"
        ),
    }
    Ok(OnServer::Register {
        again: true,
        version,
    })
}

/// The unit the agent's service gets, from root's own settings.
pub fn agent_unit(s: &InstallSettings, pool: &str) -> AgentUnit {
    AgentUnit::new(s.url.as_str(), pool, &s.agent_name)
}

/// The Windows service configure creates, from root's own settings.
pub fn windows_service_name(s: &InstallSettings, pool: &str) -> String {
    service::windows::service_name(s.url.as_str(), pool, &s.agent_name)
}

/// Whether install writes units here (root, systemd, not Windows).
fn manages_units(s: &InstallSettings, env: &Env) -> bool {
    s.as_root && !s.os.is_windows() && service::systemd_available(env)
}

/// The newer of two agent versions (either may be missing).
fn newest<'a>(a: Option<&'a str>, b: Option<&'a str>) -> Option<&'a str> {
    let key = |v: &str| super::reconcile::parse_version(v);
    match (a, b) {
        (Some(a), Some(b)) if key(b) > key(a) => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}
