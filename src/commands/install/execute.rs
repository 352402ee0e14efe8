//! Carrying out a [`Plan`](super::plan::Plan), step by step, and keeping an installed agent's
//! service, boot unit and watcher as they should be.

use std::path::PathBuf;

use crate::agent::{AgentDir, AgentSettings};
use crate::clock::Budget;
use crate::devops::{DevOpsClient, Pool};
use crate::env::Env;
use crate::error::Error;
use crate::identity::{Request as IdentityRequest, Tokens};
use crate::net::Net;
use crate::output::Outcome;
use crate::package::Owner;
use crate::process::RunAs;
use crate::progress::Progress;
use crate::service::Systemctl;
use crate::settings::InstallSettings;
use crate::state::{Saved, TrustedCa};
use crate::{service, state, trust, user};

use super::ca::{TrustPlan, release_cas};
use super::configure::{
    configure_with, write_capabilities, write_proxy_bypass, write_update_switch,
};
use super::fetch::fetch_into_place;
use super::plan::{
    Plan, Step, boot_step, boot_unit_text, ends_user_processes, print_upkeep, upkeep_plan,
    watch_step, watch_unit_text,
};
use super::summary::{saved_settings, summary};
use super::{Checked, newest};

/// What the executor learned along the way.
#[derive(Default)]
pub(super) struct Progressed {
    pub(super) package_sha256: Option<String>,
    pub(super) agent_version: Option<String>,
    /// The CA certificates in the system trust store because of agent-bootstrap (saved).
    pub(super) trusted: Vec<TrustedCa>,
    /// Those this run added (taken out again if it fails before the settings are saved).
    pub(super) added_now: Vec<TrustedCa>,
    /// The settings were saved.
    pub(super) saved: bool,
}

/// Carries out a fresh install's plan: what one run needs to do every step, and what it learned
/// along the way ([`Progressed`], which the caller reads when a step fails).
pub(super) struct Executor<'a> {
    pub(super) s: &'a InstallSettings,
    pub(super) env: &'a Env,
    pub(super) net: &'a Net,
    pub(super) progress: &'a Progress,
    pub(super) agent: &'a AgentDir,
    pub(super) checked: &'a Checked,
    pub(super) devops: &'a DevOpsClient,
    pub(super) tokens: &'a Tokens,
    pub(super) budget: &'a Budget,
    pub(super) trust: Option<&'a TrustPlan>,
    /// The agent's account, which owns the agent dir and runs `config.sh`.
    pub(super) user: RunAs,
    pub(super) done: Progressed,
    /// Root's settings for the new registration, once configure has run.
    pub(super) saved: Option<Saved>,
}

impl Executor<'_> {
    /// Every step of `plan`, in order; the result names the registration saved.
    pub(super) async fn run(&mut self, plan: &Plan, headline: &str) -> Result<Outcome, Error> {
        if self.user.uid == 0 && self.s.user.name() == "root" {
            tracing::warn!(
                "the agent will run as root (--user root): jobs get full control of this machine"
            );
        }
        for step in &plan.steps {
            self.step(step, plan).await?;
        }
        let saved = self.saved.as_ref().expect("configure ran");
        Ok(summary(headline, saved).with_steps(&plan.steps))
    }

    async fn step(&mut self, step: &Step, plan: &Plan) -> Result<(), Error> {
        let (s, env) = (self.s, self.env);
        match step {
            Step::Note(text) => tracing::warn!("{text}"),
            // A real run creates the account before planning (the version check runs as it), so
            // only a dry run's plan shows this step.
            Step::CreateUser { .. } => {}
            Step::TrustCa { .. } => {
                let t = self.trust.expect("planned from the trust plan");
                let ensured = t.ensure(s, env).await?;
                self.done.trusted = ensured.ours;
                self.done.added_now = ensured.added_now;
            }
            Step::KeepPackage { reason } => tracing::info!(
                "keeping the agent package in {}: {reason}",
                s.agent_dir.display()
            ),
            Step::GiveAgentDir { .. } => {
                crate::fsx::give_tree(&s.agent_dir, self.user.uid, self.user.gid).map_err(|e| {
                    Error::Input(format!(
                        "invalid --agent-dir {}: {e}",
                        s.agent_dir.display()
                    ))
                })?;
            }
            Step::Fetch {
                request, version, ..
            } => {
                let owner = (s.as_root && self.user.uid != 0).then_some(Owner {
                    uid: self.user.uid,
                    gid: self.user.gid,
                });
                let sha = fetch_into_place(s, env, request, owner, self.net, self.progress).await?;
                self.done.package_sha256 = Some(sha);
                self.done.agent_version.clone_from(version);
            }
            Step::StopService { unit } => {
                // A unit that is not there (never installed) has nothing to stop.
                if let Err(e) = Systemctl::require(env)?.run(&["stop", unit]).await {
                    tracing::warn!("{e}");
                }
            }
            Step::EndUserProcesses { .. } => end_user_processes(&self.user).await?,
            Step::RemoveRegistration => {
                if !self.checked.reregister {
                    tracing::warn!("removing a registration left by an interrupted configuration");
                }
                self.agent.remove_registration()?;
            }
            Step::Configure { program, args, .. } => {
                self.configure((program.clone(), args.clone())).await?;
            }
            Step::InstallUnit { unit, .. } => {
                let sc = Systemctl::require(env)?;
                service::install_agent_unit(env, &sc, unit, &s.agent_dir, &self.user).await?;
            }
            Step::StartService { unit, no_block } => start_service(env, unit, *no_block).await?,
            Step::SaveSettings { .. } => self.save(plan).await?,
            Step::BootUnit { .. } => {
                ensure_boot_unit(s, env, &self.checked.pool.name).await?;
            }
            Step::WatchUnit { .. } => {
                ensure_watch_unit(s, env).await?;
            }
            Step::SecureAgentDir { account } => {
                service::windows::secure_agent_dir(env, &s.agent_dir, account).await?;
            }
            Step::StopWindowsService { name } => {
                if let Err(e) = service::windows::stop(env, name).await {
                    tracing::warn!("{e}");
                }
            }
            Step::WindowsService { name } => ensure_windows_service(env, name).await?,
            Step::BootTask { .. } => {
                ensure_boot_task(s, env).await?;
            }
            Step::ReleaseCas { cas } => release_cas(s, env, cas).await,
            Step::DropWatchUnit { name } => drop_watch_unit(env, name).await?,
            // Only an installed agent's upkeep has these (`upkeep_plan`).
            Step::ProxyBypass { .. }
            | Step::UpdateSwitch { .. }
            | Step::RestartService { .. }
            | Step::LabelRunsvc => {}
        }
        Ok(())
    }

    /// `config.sh` as the agent's account, then the server's word on which agent now has the
    /// name: root's settings for the new registration.
    async fn configure(&mut self, command: (PathBuf, Vec<String>)) -> Result<(), Error> {
        let (s, env, agent, user) = (self.s, self.env, self.agent, &self.user);
        if ends_user_processes(s, Some(user)) {
            nothing_started_since(user).await?;
        }
        let machine = self.checked.machine.as_deref();
        write_capabilities(s, env, agent, user, machine).await?;
        configure_with(s, env, agent, user, self.tokens, self.budget, command).await?;
        let local = agent.settings()?.ok_or_else(|| Error::Configure {
            message: format!(
                "{} reported success but wrote no .agent file",
                s.os.config_script()
            ),
        })?;
        // The server says which agent now has our name; `.agent` is the agent user's.
        let server = self.registered_agent().await?;
        if self.done.agent_version.is_none() {
            // The version the agent reported to the server, never its files' word.
            self.done.agent_version.clone_from(&server.version);
        }
        if local.agent_id != server.id {
            tracing::warn!(
                local = local.agent_id,
                server = server.id,
                "the agent's .agent names another id than the server; the server's is saved"
            );
        }
        let source = self.tokens.source();
        let mut record = saved_settings(
            s,
            &source.request(),
            &self.checked.pool,
            server.id,
            self.done.agent_version.clone(),
            self.done.package_sha256.clone(),
        );
        record.vm_id = match &self.checked.vm_id {
            Some(id) => Some(id.clone()),
            None => source.vm_id().await,
        };
        self.saved = Some(record);
        Ok(())
    }

    /// The pool's agent of our name, which configure has just registered.
    async fn registered_agent(&self) -> Result<crate::devops::ServerAgent, Error> {
        let (s, pool) = (self.s, &self.checked.pool);
        self.devops
            .find_agent(pool, &s.agent_name, self.budget)
            .await?
            .ok_or_else(|| Error::Configure {
                message: format!(
                    "{} reported success but the pool has no agent '{}'",
                    s.os.config_script(),
                    s.agent_name
                ),
            })
    }

    /// Root's settings, naming the boot unit, the watcher and the CAs this plan keeps.
    async fn save(&mut self, plan: &Plan) -> Result<(), Error> {
        let (s, env) = (self.s, self.env);
        let record = self
            .saved
            .as_mut()
            .expect("configure ran before the settings are saved");
        record.boot_unit = plan.steps.iter().find_map(|st| match st {
            Step::BootUnit { name, .. } | Step::BootTask { name } => Some(name.clone()),
            _ => None,
        });
        record.watch_unit = plan.steps.iter().find_map(|st| match st {
            Step::WatchUnit { name, .. } => Some(name.clone()),
            _ => None,
        });
        record.trusted_cas.clone_from(&self.done.trusted);
        let path = state::save(&s.state_dir, record)?;
        self.done.saved = true;
        if s.os.is_windows() && s.as_root {
            // Readable by SYSTEM and Administrators only.
            service::windows::make_private(env, &s.state_dir).await?;
            if s.cache_dir.is_dir() {
                service::windows::make_private(env, &s.cache_dir).await?;
            }
        }
        tracing::info!(file = %path.display(), "saved settings for later runs");
        Ok(())
    }

    /// After a failed run that saved no registration: what this run added to the trust store
    /// goes again (unless an install recorded it, this agent dir's included).
    pub(super) async fn undo_trust(&self) {
        let Some(trust) = self.trust.filter(|_| !self.done.saved) else {
            return;
        };
        let ours: Vec<TrustedCa> = (self.done.added_now.iter())
            .filter(|a| !trust.known.iter().any(|k| k.sha256 == a.sha256))
            .cloned()
            .collect();
        if ours.is_empty() {
            return;
        }
        match trust::release(&trust.store, &ours, self.env).await {
            Ok(removed) if !removed.is_empty() => tracing::info!(
                "took the CA certificates this install added out of the system trust store again"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// [`user::end_processes`] for the agent's account (Linux, root).
#[cfg(unix)]
pub(super) async fn end_user_processes(user: &RunAs) -> Result<(), Error> {
    user::end_processes(user).await?;
    Ok(())
}

#[cfg(not(unix))]
pub(super) async fn end_user_processes(_: &RunAs) -> Result<(), Error> {
    Ok(())
}

/// Right before configure: nothing of the account started since its processes were ended (a cron
/// or at job); the package it could have changed is not run with the token.
#[cfg(unix)]
pub(super) async fn nothing_started_since(user: &RunAs) -> Result<(), Error> {
    let appeared = user::processes_of(user.uid);
    if appeared.is_empty() {
        return Ok(());
    }
    end_user_processes(user).await?;
    Err(user::UserError::Respawned {
        name: user.name.clone(),
        which: user::describe(&appeared),
    }
    .into())
}

#[cfg(not(unix))]
pub(super) async fn nothing_started_since(_: &RunAs) -> Result<(), Error> {
    Ok(())
}

/// `systemctl start` the unit, or `restart` it when it already runs (it must pick up a new
/// registration). `--no-block` at boot: the agent's unit is ordered after ours.
pub async fn start_service(env: &Env, unit: &str, no_block: bool) -> Result<(), Error> {
    let sc = Systemctl::require(env)?;
    let verb = if sc.state(unit).await?.active {
        "restart"
    } else {
        "start"
    };
    let mut args = vec![verb];
    if no_block {
        args.push("--no-block");
    }
    args.push(unit);
    sc.run(&args).await?;
    Ok(())
}

/// Windows: the service configure created runs; started through the SCM when it does not.
pub async fn ensure_windows_service(env: &Env, name: &str) -> Result<(), Error> {
    let state = service::windows::query(env, name).await?;
    if !state.exists {
        return Err(service::ServiceError::Failed {
            step: format!("sc.exe query {name}"),
            code: 1060,
            line: "configure reported success but created no service of that name".into(),
        }
        .into());
    }
    if !state.running {
        service::windows::start(env, name).await?;
    }
    Ok(())
}

/// Windows: registers the boot task (replacing an older definition). Returns its name.
pub async fn ensure_boot_task(s: &InstallSettings, env: &Env) -> Result<Option<String>, Error> {
    let Some(Step::BootTask { name }) = boot_step(s, env) else {
        return Ok(None);
    };
    let exe = boot_program()?;
    let default_state = crate::settings::paths(env, &s.os).map(|p| p.state_dir).ok();
    let state =
        (default_state.as_deref() != Some(s.state_dir.as_path())).then_some(s.state_dir.as_path());
    let xml = service::windows::render_boot_task(&exe, &s.agent_dir, state)?;
    service::windows::install_boot_task(env, &name, &xml, &s.state_dir).await?;
    tracing::info!(task = %name, "registered the boot task that runs reconcile");
    Ok(Some(name))
}

/// This binary, which the boot unit (Windows: the boot task) will run as root (SYSTEM) at every
/// boot: refused (exit 2, before anything is contacted) unless only root (SYSTEM, Administrators
/// and TrustedInstaller) can replace it, see [`crate::fsx::check_root_only_program`].
pub(super) fn boot_program() -> Result<std::path::PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        action: "finding",
        path: "the agent-bootstrap binary".into(),
        source,
    })?;
    let (runner, who, place) = if cfg!(unix) {
        (
            "the boot unit",
            "root",
            "in a directory only root can change (e.g. /usr/local/bin)",
        )
    } else {
        (
            "the boot task",
            "SYSTEM",
            "under Program Files (scripts/install.ps1 does)",
        )
    };
    crate::fsx::check_root_only_program(&exe).map_err(|e| {
        Error::Input(format!(
            "{runner} would run {} as {who} at every boot, but {}: another account could replace \
             what {who} runs; install agent-bootstrap {place}, or pass --no-boot",
            exe.display(),
            e.0
        ))
    })?;
    Ok(exe)
}

/// Writes and enables the unit that runs `reconcile` at boot. Returns its name, or `None` where
/// there is none (not root, no systemd, `--no-boot`).
pub async fn ensure_boot_unit(
    s: &InstallSettings,
    env: &Env,
    pool: &str,
) -> Result<Option<String>, Error> {
    let Some((name, text)) = boot_unit_text(s, env, pool)? else {
        return Ok(None);
    };
    let exe = boot_program()?;
    if ["/tmp/", "/var/tmp/", "/dev/shm/"]
        .iter()
        .any(|t| exe.starts_with(t))
    {
        tracing::warn!(
            exe = %exe.display(),
            "the boot unit runs agent-bootstrap from a temporary directory, which may be gone at the \
             next boot; install it in /usr/local/bin"
        );
    }
    let systemctl = Systemctl::require(env)?;
    let unchanged = !service::put_unit_file(env, &systemctl, &name, &text).await?;
    if !unchanged {
        tracing::info!(unit = %name, "installed the boot unit that runs reconcile");
    }
    if unchanged && systemctl.state(&name).await?.enabled {
        return Ok(Some(name));
    }
    systemctl.run(&["enable", &name]).await?;
    Ok(Some(name))
}

/// Writes, enables and starts the unit that runs `watch` (`--scale-in-drain`); restarts it when
/// its text changed. Returns its name, or `None` where there is none.
pub async fn ensure_watch_unit(s: &InstallSettings, env: &Env) -> Result<Option<String>, Error> {
    let Some((name, text)) = watch_unit_text(s, env)? else {
        return Ok(None);
    };
    let systemctl = Systemctl::require(env)?;
    let unchanged = !service::put_unit_file(env, &systemctl, &name, &text).await?;
    if !unchanged {
        tracing::info!(unit = %name, "installed the scale-in watcher");
    }
    let state = systemctl.state(&name).await?;
    if !state.enabled {
        systemctl.run(&["enable", &name]).await?;
    }
    if !unchanged {
        systemctl.run(&["restart", "--no-block", &name]).await?;
    } else if !state.active {
        systemctl.run(&["start", "--no-block", &name]).await?;
    }
    Ok(Some(name))
}

/// An install without `--scale-in-drain` over one with it: the watcher `name` goes (the plan
/// found it: [`stale_watch_unit`]).
async fn drop_watch_unit(env: &Env, name: &str) -> Result<(), Error> {
    if service::delete_own_unit(env, name, true).await? {
        tracing::info!(unit = %name, "removed the scale-in watcher (no --scale-in-drain)");
    }
    Ok(())
}

/// An agent configured here and known to the server: only what is not as it should be is put
/// right ([`upkeep_plan`]), and a dry run shows exactly those steps.
#[allow(clippy::too_many_arguments)]
pub(super) async fn keep_installed(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    cfg: &AgentSettings,
    pool: &Pool,
    server: &crate::devops::ServerAgent,
    identity: &IdentityRequest,
    trust: Option<&TrustPlan>,
) -> Result<Outcome, Error> {
    tracing::info!(
        agent = %s.agent_name,
        id = cfg.agent_id,
        "already configured and known to the server"
    );
    let previous = state::load_or_replace(&s.state_dir, &s.agent_dir)?;
    let mut saved = upkeep_settings(s, env, pool, server, identity, previous.as_ref());
    saved.trusted_cas = trust.map(TrustPlan::kept).unwrap_or_default();
    let plan = upkeep_plan(s, env, agent, pool, trust, &saved, previous.as_ref()).await?;
    if s.dry_run {
        return Ok(print_upkeep(s, server.id, pool, &plan));
    }
    for step in &plan.steps {
        upkeep_step(s, env, agent, pool, step, trust, &mut saved).await?;
    }
    let headline = if plan.steps.is_empty() {
        "already installed, nothing to do"
    } else {
        "already installed; put right what was not as it should be"
    };
    Ok(summary(headline, &saved).with_steps(&plan.steps))
}

/// Root's settings for an installed agent: the versions and machine it recorded, the rest from
/// this run's settings.
fn upkeep_settings(
    s: &InstallSettings,
    env: &Env,
    pool: &Pool,
    server: &crate::devops::ServerAgent,
    identity: &IdentityRequest,
    previous: Option<&Saved>,
) -> Saved {
    // What the agent reports to the server follows its self-updates; root's record follows it.
    let agent_version = newest(
        previous.and_then(|p| p.agent_version.as_deref()),
        server.version.as_deref(),
    )
    .map(str::to_owned);
    let mut saved = saved_settings(
        s,
        identity,
        pool,
        server.id,
        agent_version,
        previous.and_then(|p| p.package_sha256.clone()),
    );
    saved.machine_id = previous.map_or(saved.machine_id.clone(), |p| p.machine_id.clone());
    saved.vm_id = previous.and_then(|p| p.vm_id.clone());
    saved.boot_unit = match boot_step(s, env) {
        Some(Step::BootUnit { name, .. } | Step::BootTask { name }) => Some(name),
        _ => None,
    };
    saved.watch_unit = match watch_step(s, env) {
        Some(Step::WatchUnit { name, .. }) => Some(name),
        _ => None,
    };
    saved
}

/// One step of an installed agent's upkeep.
async fn upkeep_step(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    pool: &Pool,
    step: &Step,
    trust: Option<&TrustPlan>,
    saved: &mut Saved,
) -> Result<(), Error> {
    let account = || user::lookup(s.user.name());
    match step {
        Step::TrustCa { .. } => {
            let t = trust.expect("planned from the trust plan");
            saved.trusted_cas = t.ensure(s, env).await?.ours;
        }
        Step::CreateUser { .. } => {
            user::ensure(&s.user, env).await?;
        }
        Step::ProxyBypass { .. } => {
            write_proxy_bypass(s, env, agent, account()?.as_ref()).await?;
        }
        Step::UpdateSwitch { .. } => {
            write_update_switch(s, env, agent, account()?.as_ref()).await?;
        }
        Step::WindowsService { name } => ensure_windows_service(env, name).await?,
        Step::InstallUnit { unit, .. } => {
            let user = user::ensure(&s.user, env).await?;
            let sc = Systemctl::require(env)?;
            service::install_agent_unit(env, &sc, unit, &s.agent_dir, &user).await?;
        }
        Step::StartService { unit, no_block } => start_service(env, unit, *no_block).await?,
        Step::RestartService { unit } => {
            Systemctl::require(env)?.run(&["restart", unit]).await?;
        }
        Step::SaveSettings { .. } => {
            state::save(&s.state_dir, saved)?;
        }
        Step::ReleaseCas { cas } => release_cas(s, env, cas).await,
        Step::BootUnit { .. } => {
            ensure_boot_unit(s, env, &pool.name).await?;
        }
        Step::WatchUnit { .. } => {
            ensure_watch_unit(s, env).await?;
        }
        Step::BootTask { .. } => {
            ensure_boot_task(s, env).await?;
        }
        Step::DropWatchUnit { name } => drop_watch_unit(env, name).await?,
        Step::LabelRunsvc => {
            let runsvc = s.agent_dir.join("runsvc.sh");
            service::selinux::label(env, &runsvc, service::selinux::PROGRAM).await?;
        }
        Step::Note(text) => tracing::warn!("{text}"),
        other => unreachable!("not a step of an installed agent's upkeep: {other}"),
    }
    Ok(())
}
