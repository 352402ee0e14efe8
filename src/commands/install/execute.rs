//! Carrying out a [`Plan`](super::plan::Plan), step by step, and keeping an installed agent's
//! service, boot unit and watcher as they should be.

use super::*;

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

#[allow(clippy::too_many_arguments)]
pub(super) async fn execute(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    progress: &Progress,
    agent: &AgentDir,
    c: &Checked,
    devops: &DevOpsClient,
    tokens: &Tokens,
    budget: &Budget,
    plan: &Plan,
    user: RunAs,
    headline: &str,
    trust: Option<&TrustPlan>,
    done: &mut Progressed,
) -> Result<Outcome, Error> {
    if user.uid == 0 && s.user.name() == "root" {
        tracing::warn!(
            "the agent will run as root (--user root): jobs get full control of this machine"
        );
    }
    let owner = (s.as_root && user.uid != 0).then_some(Owner {
        uid: user.uid,
        gid: user.gid,
    });
    let mut saved: Option<Saved> = None;
    for step in &plan.steps {
        match step {
            Step::Note(text) => tracing::warn!("{text}"),
            // A real run creates the account before planning (the version check runs as it), so
            // only a dry run's plan shows this step.
            Step::CreateUser { .. } => {}
            Step::TrustCa { .. } => {
                let t = trust.expect("planned from the trust plan");
                let ensured = t.ensure(s, env).await?;
                done.trusted = ensured.ours;
                done.added_now = ensured.added_now;
            }
            Step::KeepPackage { reason } => tracing::info!(
                "keeping the agent package in {}: {reason}",
                s.agent_dir.display()
            ),
            Step::GiveAgentDir { .. } => {
                crate::fsx::give_tree(&s.agent_dir, user.uid, user.gid).map_err(|e| {
                    Error::Input(format!(
                        "invalid --agent-dir {}: {e}",
                        s.agent_dir.display()
                    ))
                })?;
            }
            Step::Fetch {
                request, version, ..
            } => {
                done.package_sha256 =
                    Some(fetch_into_place(s, env, request, owner, net, progress).await?);
                done.agent_version = version.clone();
            }
            Step::StopService { unit } => {
                // A unit that is not there (never installed) has nothing to stop.
                if let Err(e) = Systemctl::require(env)?.run(&["stop", unit]).await {
                    tracing::warn!("{e}");
                }
            }
            Step::EndUserProcesses { .. } => {
                end_user_processes(&user).await?;
            }
            Step::RemoveRegistration => {
                if !c.reregister {
                    tracing::warn!("removing a registration left by an interrupted configuration");
                }
                agent.remove_registration()?;
            }
            Step::Configure { program, args, .. } => {
                if ends_user_processes(s, Some(&user)) {
                    nothing_started_since(&user).await?;
                }
                let command = (program.clone(), args.clone());
                write_capabilities(s, env, agent, &user, c.machine.as_deref()).await?;
                configure_with(s, env, agent, &user, tokens, budget, command).await?;
                let local = agent.settings()?.ok_or_else(|| Error::Configure {
                    message: format!(
                        "{} reported success but wrote no .agent file",
                        s.os.config_script()
                    ),
                })?;
                // The server says which agent now has our name; `.agent` is the agent user's.
                let server = devops
                    .find_agent(c.pool.id, &s.agent_name, budget)
                    .await?
                    .ok_or_else(|| Error::Configure {
                        message: format!(
                            "{} reported success but the pool has no agent '{}'",
                            s.os.config_script(),
                            s.agent_name
                        ),
                    })?;
                if done.agent_version.is_none() {
                    // The version the agent reported to the server, never its files' word.
                    done.agent_version = server.version.clone();
                }
                let mut record = saved_settings(
                    s,
                    &tokens.source().request(),
                    &c.pool,
                    server.id,
                    done.agent_version.clone(),
                    done.package_sha256.clone(),
                );
                if local.agent_id != server.id {
                    tracing::warn!(
                        local = local.agent_id,
                        server = server.id,
                        "the agent's .agent names another id than the server; the server's is saved"
                    );
                }
                record.vm_id = match &c.vm_id {
                    Some(id) => Some(id.clone()),
                    None => tokens.source().vm_id().await,
                };
                saved = Some(record);
            }
            Step::InstallUnit { unit, .. } => {
                let sc = Systemctl::require(env)?;
                service::install_agent_unit(env, &sc, unit, &s.agent_dir, &user).await?;
            }
            Step::StartService { unit, no_block } => {
                start_service(env, unit, *no_block).await?;
            }
            Step::SaveSettings { .. } => {
                let record = saved
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
                record.trusted_cas = done.trusted.clone();
                let previous = state::load(&s.state_dir, &s.agent_dir)
                    .ok()
                    .flatten()
                    .map(|p| p.trusted_cas)
                    .unwrap_or_default();
                let path = state::save(&s.state_dir, record)?;
                done.saved = true;
                release_unneeded(s, env, &previous, &done.trusted).await;
                if s.os.is_windows() && s.as_root {
                    // Readable by SYSTEM and Administrators only.
                    service::windows::make_private(env, &s.state_dir).await?;
                    if s.cache_dir.is_dir() {
                        service::windows::make_private(env, &s.cache_dir).await?;
                    }
                }
                tracing::info!(file = %path.display(), "saved settings for later runs");
            }
            Step::BootUnit { .. } => {
                ensure_boot_unit(s, env, &c.pool.name).await?;
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
            Step::WindowsService { name } => {
                ensure_windows_service(env, name).await?;
            }
            Step::BootTask { .. } => {
                ensure_boot_task(s, env).await?;
            }
        }
    }
    drop_watch_unit(s, env).await?;
    Ok(summary(headline, saved.as_ref().expect("configure ran")))
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

/// This binary, which the boot unit will run as root at every boot: refused (exit 2, before
/// anything is contacted) unless only root can replace it, see
/// [`crate::fsx::check_root_only_program`].
#[cfg(unix)]
pub(super) fn boot_program() -> Result<std::path::PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        action: "finding",
        path: "the agent-bootstrap binary".into(),
        source,
    })?;
    crate::fsx::check_root_only_program(&exe).map_err(|e| {
        Error::Input(format!(
            "the boot unit would run {} as root at every boot, but {}: another account could \
             replace what root runs; install agent-bootstrap in a directory only root can change \
             (e.g. /usr/local/bin), or pass --no-boot",
            exe.display(),
            e.0
        ))
    })?;
    Ok(exe)
}

/// Windows: the boot task runs this binary as SYSTEM at every startup; refused (exit 2, before
/// anything is contacted) unless only SYSTEM, Administrators and TrustedInstaller can replace it
/// (`scripts/install.ps1` places it under Program Files), see
/// [`crate::fsx::check_root_only_program`].
#[cfg(not(unix))]
pub(super) fn boot_program() -> Result<std::path::PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        action: "finding",
        path: "the agent-bootstrap binary".into(),
        source,
    })?;
    crate::fsx::check_root_only_program(&exe).map_err(|e| {
        Error::Input(format!(
            "the boot task would run {} as SYSTEM at every startup, but {}: another account \
             could replace what SYSTEM runs; install agent-bootstrap under Program Files \
             (scripts/install.ps1 does), or pass --no-boot",
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
    let Some(Step::BootUnit { name, .. }) = boot_step(s, env) else {
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
    let before = (s.service && s.as_root).then(|| agent_unit(s, pool).name);
    let text = service::render_boot_unit(&exe, &s.agent_dir, &s.state_dir, before.as_deref())?;
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
    let Some(Step::WatchUnit { name, .. }) = watch_step(s, env) else {
        drop_watch_unit(s, env).await?;
        return Ok(None);
    };
    let exe = boot_program()?;
    let boot = match boot_step(s, env) {
        Some(Step::BootUnit { name, .. }) => Some(name),
        _ => None,
    };
    let text = service::render_watch_unit(&exe, &s.agent_dir, &s.state_dir, boot.as_deref())?;
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

/// An install without `--scale-in-drain` over one with it: the watcher goes.
pub(super) async fn drop_watch_unit(s: &InstallSettings, env: &Env) -> Result<(), Error> {
    if s.scale_in_drain || !s.as_root || s.os.is_windows() || !service::systemd_available(env) {
        return Ok(());
    }
    let name = service::watch_unit_name(&s.agent_dir);
    if service::delete_own_unit(env, &name, true).await? {
        tracing::info!(unit = %name, "removed the scale-in watcher (no --scale-in-drain)");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn already_installed(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    cfg: &AgentSettings,
    pool: &Pool,
    server: &crate::devops::ServerAgent,
    identity: &IdentityRequest,
    trust: Option<&TrustPlan>,
) -> Result<Outcome, Error> {
    let server_id = server.id;
    tracing::info!(
        agent = %s.agent_name,
        id = cfg.agent_id,
        "already configured and known to the server"
    );
    if s.dry_run {
        return Ok(Outcome::new(
            format!(
                "dry run: nothing would change\n\
                 agent '{}' (id {}) is already configured in {} and registered in pool '{}'\n",
                s.agent_name,
                server_id,
                s.agent_dir.display(),
                pool.name
            ),
            None,
        ));
    }
    // The CA the agent needs is in the system trust store (a reinstall after it was taken out,
    // or an agent configured before install added it there).
    let trusted = match trust {
        Some(t) => t.ensure(s, env).await?.ours,
        None => vec![],
    };
    // NO_PROXY changed: the agent reads .proxybypass when it starts.
    let account = user::lookup(s.user.name())?;
    let bypass_changed = write_proxy_bypass(s, env, agent, account.as_ref()).await?;
    // --disable-update added or dropped: the agent reads .env when it starts.
    let switch_changed = write_update_switch(s, env, agent, account.as_ref()).await?;
    // A configured agent whose service is missing or stopped (configure ran, the service step did not).
    if s.service && s.os.is_windows() && s.as_root {
        ensure_windows_service(env, &windows_service_name(s, &pool.name)).await?;
    }
    if s.service && manages_units(s, env) {
        let user = user::ensure(&s.user, env).await?;
        let sc = Systemctl::require(env)?;
        let unit = agent_unit(s, &pool.name);
        let ready = service::install_agent_unit(env, &sc, &unit, &s.agent_dir, &user).await?;
        if !ready.active {
            start_service(env, &unit.name, s.no_block_start).await?;
        } else if bypass_changed || switch_changed {
            sc.run(&["restart", &unit.name]).await?;
        }
    }
    let previous = state::load_or_replace(&s.state_dir, &s.agent_dir)?;
    // What the agent reports to the server follows its self-updates; root's record follows it.
    let agent_version = newest(
        previous.as_ref().and_then(|p| p.agent_version.as_deref()),
        server.version.as_deref(),
    )
    .map(str::to_owned);
    let mut saved = saved_settings(
        s,
        identity,
        pool,
        server_id,
        agent_version,
        previous.as_ref().and_then(|p| p.package_sha256.clone()),
    );
    saved.machine_id = previous
        .as_ref()
        .map_or(saved.machine_id.clone(), |p| p.machine_id.clone());
    saved.vm_id = previous.as_ref().and_then(|p| p.vm_id.clone());
    saved.boot_unit = match boot_step(s, env) {
        Some(Step::BootUnit { name, .. } | Step::BootTask { name }) => Some(name),
        _ => None,
    };
    saved.watch_unit = match watch_step(s, env) {
        Some(Step::WatchUnit { name, .. }) => Some(name),
        _ => None,
    };
    saved.trusted_cas = trusted;
    if previous.as_ref() != Some(&saved) {
        state::save(&s.state_dir, &saved)?;
    }
    if let Some(p) = &previous {
        release_unneeded(s, env, &p.trusted_cas, &saved.trusted_cas).await;
    }
    if s.os.is_windows() {
        ensure_boot_task(s, env).await?;
    } else {
        ensure_boot_unit(s, env, &pool.name).await?;
        ensure_watch_unit(s, env).await?;
    }
    Ok(summary("already installed, nothing to do", &saved))
}
