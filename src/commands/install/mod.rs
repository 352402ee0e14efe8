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

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::config::{self, Configure, TOKEN_ENV};
use crate::agent::{AgentDir, AgentSettings, same_server};
use crate::clock::Budget;
use crate::devops::{DevOpsClient, PackageMetadata, Pool};
use crate::env::Env;
use crate::error::Error;
use crate::identity::{Request as IdentityRequest, Tokens};
use crate::net::Net;
use crate::output::{AgentRef, Out, Outcome};
use crate::package::{self, Limits, Owner, PackageError, Request, Source};
use crate::process::{self, Child, RunAs};
use crate::progress::Progress;
use crate::secret::Secret;
use crate::service::{self, AgentUnit, Systemctl};
use crate::settings::{AgentUser, InstallSettings, PackageChoice};
use crate::state::{self, Saved, TrustedCa};
use crate::trust;
use crate::user;

mod ca;
mod checks;
mod configure;
mod execute;
mod fetch;
mod plan;
mod summary;

use ca::*;
pub use ca::{TrustPlan, trust_plan};
use checks::*;
use configure::*;
pub use configure::{
    MACHINE_CAPABILITY, network_matches, proxy_bypass_text, write_proxy_bypass, write_update_switch,
};
use execute::*;
pub use execute::{
    ensure_boot_task, ensure_boot_unit, ensure_watch_unit, ensure_windows_service, start_service,
};
pub use fetch::installed_version;
use fetch::*;
use plan::*;
pub use summary::summary;
use summary::*;

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
    let clock = net.clock().clone();

    // 0. What a killed run left (staging trees, partial downloads), under the lock.
    if !s.dry_run
        && let Some(parent) = s.agent_dir.parent()
    {
        for p in package::remove_stale(parent, &s.cache_dir, &state::tag(&s.agent_dir)) {
            tracing::info!(path = %p.display(), "removed what an interrupted run left");
        }
    }

    // 1. Local state that makes the request impossible, before any network call.
    let existing = if s.assume_unregistered {
        None
    } else {
        agent.settings()?
    };
    if let Some(cfg) = &existing {
        check_same_agent(cfg, s)?;
    }

    // The CA file's certificates must reach the system trust store, which is all the agent
    // trusts: what cannot be done stops here, before anything is contacted or changed.
    let trust = trust_plan(s, env).await?;

    // 2. Token, then the preflight requests at once (after waiting for access, if asked).
    if let Some(limit) = s.wait_for_access {
        wait_for_access(s, env, net, limit).await?;
    }
    let budget = clock.budget(NETWORK_BUDGET);
    let tokens = super::tokens(&s.identity, env, &s.os, net).await?;
    let identity = tokens.source().request();
    warn_unsaved_secrets(s, env, &identity);
    tokens.get(&budget).await?;
    let devops = DevOpsClient::new(&s.url, tokens.clone(), net);
    // Looked at once: the agent user can change the dir at any time, and every decision below must
    // rest on the same view.
    let package_present = agent.package_present();
    let seen = Seen {
        configured: existing.is_some() || (!s.assume_unregistered && agent.is_configured()),
        self_updated: agent.self_updated(),
        package_present,
        root_only: s.as_root && package_present && crate::fsx::root_only_tree(&agent.root),
    };
    // As root (SYSTEM) a configured or self-updated agent dir is never configured from: only a
    // registration that needs repair gets this far, and it gets a fresh package.
    let wants_api = !seen.configured
        && (s.as_root || !seen.self_updated)
        && matches!(s.package, PackageChoice::Latest | PackageChoice::Version(_));
    let wanted_version = match &s.package {
        PackageChoice::Version(v) => Some(v.as_str()),
        _ => None,
    };
    let rid = s.os.rid();
    let (access, meta, vm_id) = tokio::join!(
        devops.access(&s.pool, &budget),
        async {
            if wants_api {
                Some(devops.agent_package(&rid, wanted_version, &budget).await)
            } else {
                None
            }
        },
        // Saved to tell a clone of this machine later; only a fresh install needs it.
        async {
            if existing.is_none() {
                tokens.source().vm_id().await
            } else {
                None
            }
        },
    );
    let crate::devops::Access { who, pool } = access?;
    tracing::info!(identity = %who, org = %s.url, "token accepted by Azure DevOps");
    tracing::info!(pool = %pool.name, pool_id = pool.id, "identity may manage the pool");
    let mut meta = meta.transpose()?;

    // 3. An existing registration: healthy → only what is not as it should be; gone from the
    // server → register again. None here, but one of this name on the server: this machine's own
    // is replaced, another's only with --replace.
    let machine = vm_id.clone().or_else(state::machine_id);
    let (reregister, server_version) = match on_server(
        s,
        &agent,
        existing.as_ref(),
        &devops,
        &pool,
        machine.as_deref(),
        &budget,
    )
    .await?
    {
        OnServer::Healthy(a) => {
            let cfg = existing.as_ref().expect("a registration here");
            return keep_installed(s, env, &agent, cfg, &pool, &a, &identity, trust.as_ref()).await;
        }
        OnServer::Register { again, version } => (again, version),
    };
    // Root configures a registration again only from a fresh package: the version from root's
    // settings or the server's record of the agent (it may have updated itself), whichever is
    // newer, never from the agent's files.
    if s.as_root
        && meta.is_none()
        && matches!(s.package, PackageChoice::Latest | PackageChoice::Version(_))
    {
        let wanted = newest(wanted_version, server_version.as_deref());
        meta = Some(devops.agent_package(&rid, wanted, &budget).await?);
    }
    // Only to know whether to stop it first: a machine where systemctl cannot answer (a chroot, a
    // dry run on an image) has no unit of ours running; installing one later says what is wrong.
    let unit_exists = match Systemctl::find(env).filter(|_| manages_units(s, env) && s.service) {
        Some(sc) => sc
            .state(&agent_unit(s, &pool.name).name)
            .await
            .is_ok_and(|st| st.exists),
        None => false,
    };
    let release = unneeded_cas(
        s,
        &state::load(&s.state_dir, &s.agent_dir)
            .ok()
            .flatten()
            .map(|p| p.trusted_cas)
            .unwrap_or_default(),
        &trust.as_ref().map(TrustPlan::kept).unwrap_or_default(),
    );
    let checked = Checked {
        who,
        pool,
        reregister,
        vm_id,
        machine,
        unit_exists,
        release,
    };

    // 4. The account (a real run creates it now: the version check below runs as it).
    let new_account = user::lookup(s.user.name())?.is_none();
    let account = match user::lookup(s.user.name())? {
        Some(u) => Some(u),
        None if s.dry_run => None,
        None => Some(user::ensure(&s.user, env).await?),
    };

    // 5. Which package, then the whole plan.
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
        // First: a certificate that cannot be added stops the install with nothing else done.
        let at = plan
            .steps
            .iter()
            .take_while(|st| matches!(st, Step::CreateUser { .. }))
            .count();
        plan.steps.insert(at, t.step());
    }
    if s.dry_run {
        return print_plan(s, &checked, &package, &plan);
    }
    let account = account.expect("a real run has created the account");
    let mut done = Progressed::default();
    let result = execute(
        s,
        env,
        net,
        progress,
        &agent,
        &checked,
        &devops,
        &tokens,
        &budget,
        &plan,
        account,
        headline,
        trust.as_ref(),
        &mut done,
    )
    .await;
    if result.is_err() && !done.saved && !done.added_now.is_empty() {
        // Nothing registered was saved: what this run added to the trust store goes again (unless
        // an install recorded it, this agent dir's included).
        let store = &trust.as_ref().expect("added through the plan").store;
        let known = &trust.as_ref().expect("added through the plan").known;
        let ours: Vec<TrustedCa> = done
            .added_now
            .iter()
            .filter(|a| !known.iter().any(|k| k.sha256 == a.sha256))
            .cloned()
            .collect();
        match trust::release(store, &ours, env).await {
            Ok(removed) if !removed.is_empty() => tracing::info!(
                "took the CA certificates this install added out of the system trust store again"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    result
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
    let found = devops.find_agent(pool.id, &s.agent_name, budget).await?;
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
