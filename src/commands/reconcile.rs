//! `agent-bootstrap reconcile`: what the boot unit runs. Brings the agent back to "registered and
//! running" after whatever happened since the last boot, and never breaks a healthy agent.
//!
//! The decision is a pure function, [`decide`], from the observed state to a list of actions; it is
//! unit-tested row by row. [`run`] observes (files, systemd, the saved machine identity, the
//! server), asks [`decide`], and carries the actions out.
//!
//! | state found | actions |
//! |---|---|
//! | configured, the server knows the agent (same id), service installed | ensure the service is enabled and running; no agent command |
//! | configured, deleted on the server | remove the local registration, the install flow from the saved settings: the service stopped, every process of the agent user ended, a fresh verified package, `config.sh`, the service started |
//! | not configured (reimaged data disk, baked image, interrupted run) | the install flow, from the saved settings |
//! | `.agent` names another organization, pool or agent than the saved settings (a job changed it) | remove the local registration, the install flow from the saved settings |
//! | a clone (saved VM id or machine id differs) | uninstall the original's service, remove the local registration, install under this machine's own name |
//! | service unit missing / damaged / disabled / stopped | write the unit + start / rewrite / enable / start |
//! | `bin` is a link (self-updated), healthy | left alone; root's record of the version follows the server's record of the agent |
//! | the agent's `.proxy` or `.certificates` differ from the saved proxy and CA | remove the local registration, the install flow from the saved settings |
//! | only `NO_PROXY` changed (`.proxybypass` differs) | `.proxybypass` rewritten by the agent user, service restarted |
//! | IMDS or Azure DevOps unreachable | nothing is stopped or removed; the service is started if it is installed and stopped; exit 3 or 4 after the budget |
//!
//! Nothing the agent user could have written is run with the token: every re-registration is the
//! install flow with a package extracted from the verified archive at that moment (never
//! `reauth.sh` or `config.sh` from the agent dir, never the agent's `--version`), after the
//! account's processes are ended.
//!
//! Root trusts only its saved settings: the unit name, the organization URL the token goes to,
//! the pool and agent looked up on the server all come from them; `.agent` only says whether the
//! agent is configured and with which id. Every wait fits in [`DEADLINE`], inside the boot unit's
//! `TimeoutStartSec`.

use std::time::Duration;

use crate::agent::{AgentDir, AgentSettings, same_server};
use crate::clock::Budget;
use crate::commands::{Target, install};
use crate::devops::DevOpsClient;
use crate::env::Env;
use crate::error::Error;
use crate::net::Net;
use crate::os::Os;
use crate::output::{AgentRef, Out, Outcome};
use crate::progress::Progress;
use crate::service::{self, AgentUnit, Systemctl, UnitState};
use crate::settings;
use crate::state::{self, Saved};

/// Everything reconcile does ends this long after it starts: a minute inside the boot unit's
/// `TimeoutStartSec`, so systemd never kills it half-way. Each wait below takes at most its own
/// limit and never more than what is left of this.
pub const DEADLINE: Duration = Duration::from_secs(service::BOOT_TIMEOUT.as_secs() - 60);
/// Waiting for another run (cloud-init's install) on the same agent dir.
pub const LOCK_WAIT: Duration = Duration::from_secs(5 * 60);
/// All IMDS and Azure DevOps requests of one reconcile, together (the network comes up late at
/// boot; a throttled fleet waits out `Retry-After`).
pub const NETWORK_BUDGET: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// Not needed for the decision (not configured, or a clone).
    NotAsked,
    /// The server has this agent, with the id in `.agent`.
    Known,
    /// No agent of that name: it was deleted on the server.
    Missing,
    /// Another agent (another id) now has this name: not ours to take over unattended.
    Conflict,
    /// No token, or Azure DevOps did not answer, within the budget.
    Unreachable,
}

#[derive(Debug, Clone)]
pub struct Observed {
    pub configured: bool,
    /// `.agent` names another organization, pool or agent than root's saved settings (a job
    /// changed it): nothing in it is used, the agent is configured again from the saved settings.
    pub tampered: bool,
    pub clone: bool,
    /// systemd knows the agent's unit (as root's settings name it).
    pub service_installed: bool,
    /// What systemd says about the agent's unit, when it is installed.
    pub unit: Option<UnitState>,
    /// The user wants a service (install without `--no-service`).
    pub wants_service: bool,
    pub server: Server,
    /// The agent's proxy or CA file (`.proxy`, `.certificates`) is not what the saved settings
    /// say (install changed them, or a job did): configured again from the saved settings.
    pub network_drift: bool,
    /// `.proxybypass` was rewritten from the saved `NO_PROXY`: the agent reads it when it starts.
    pub bypass_changed: bool,
    /// The agent's `.env` was rewritten for the saved `--disable-update`: read when it starts.
    pub update_switch_changed: bool,
    /// Windows: the service is (re)created by configure (`--runAsService`), so a missing service
    /// is repaired by configuring again (from a fresh package, like every configure as SYSTEM).
    pub windows: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Install the unit if missing, enable it if disabled, start it if stopped (`restart`: always
    /// restart, after the registration changed).
    EnsureService { restart: bool },
    /// Stop, disable and delete the agent's unit (what `svc.sh uninstall` does).
    UninstallService,
    /// Delete `.agent`, `.credentials`, `.credentials_rsaparams`.
    RemoveRegistration,
    /// The install flow from the saved settings, under a new name for a clone.
    Install { new_name: bool },
}

/// The decision table.
pub fn decide(o: &Observed) -> Vec<Action> {
    use Action::*;
    if o.clone {
        let mut actions = vec![];
        if o.service_installed {
            actions.push(UninstallService);
        }
        actions.push(RemoveRegistration);
        actions.push(Install { new_name: true });
        return actions;
    }
    if !o.configured {
        return vec![Install { new_name: false }];
    }
    if o.tampered || o.network_drift {
        return vec![RemoveRegistration, Install { new_name: false }];
    }
    // A fresh registration, from a fresh package; configure --runAsService (re)creates the
    // Windows service.
    let register_again = vec![RemoveRegistration, Install { new_name: false }];
    let windows_service_gone = o.windows && o.wants_service && !o.service_installed;
    let service = |restart| {
        if o.wants_service {
            vec![EnsureService { restart }]
        } else {
            vec![]
        }
    };
    match o.server {
        Server::Missing => register_again,
        Server::Known | Server::NotAsked if windows_service_gone => register_again,
        Server::Known | Server::NotAsked => service(o.bypass_changed || o.update_switch_changed),
        // Never stop or remove anything while we cannot tell; starting a stopped service is safe.
        Server::Unreachable => {
            if o.service_installed {
                service(false)
            } else {
                vec![]
            }
        }
        // Leave both alone; reconcile reports it (install --replace is the explicit way).
        Server::Conflict => vec![],
    }
}

pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.trim().trim_start_matches('v').split('.');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// The name a clone registers under: its host name, or the saved name with a machine suffix when
/// the host name is the same (or unusable).
pub fn clone_name(saved_name: &str, hostname: &str, machine: Option<&str>) -> String {
    let host = hostname.trim();
    let usable = !host.is_empty()
        && host.len() <= 64
        && !host.eq_ignore_ascii_case(saved_name)
        && !host
            .chars()
            .any(|c| c.is_control() || "\"/\\:<>|*?@".contains(c));
    if usable {
        return host.to_owned();
    }
    let suffix: String = machine
        .unwrap_or("clone")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let base: String = saved_name.chars().take(64 - 1 - suffix.len()).collect();
    format!("{base}-{suffix}")
}

pub async fn run(
    t: &Target,
    dry_run: bool,
    env: &Env,
    os: Os,
    net: &Net,
    progress: &Progress,
    out: &Out,
) -> Result<(), Error> {
    let done = reconcile(t, dry_run, env, os, net, progress).await?;
    out.outcome(done)
}

/// The reconcile flow: look, decide, plan the steps, carry them out (a dry run: print them).
async fn reconcile(
    t: &Target,
    dry_run: bool,
    env: &Env,
    os: Os,
    net: &Net,
    progress: &Progress,
) -> Result<Outcome, Error> {
    let clock = net.clock().clone();
    let deadline = clock.budget(DEADLINE);
    let lock_wait = LOCK_WAIT.min(deadline.remaining(&clock));
    // A dry run changes nothing, so it waits for no one.
    let _lock = if dry_run {
        None
    } else {
        Some(crate::lock::acquire(&t.paths.state_dir, &t.agent_dir, lock_wait).await?)
    };
    let look = look(t, env, os, net, &deadline).await?;
    let s = settings::from_saved(&look.saved, env, os)?;
    let agent = AgentDir::new(&t.agent_dir, &os);
    let observed = look.observed(&s, &agent);
    let actions = decide(&observed);
    tracing::info!(?observed, ?actions, "reconcile plan");
    let (steps, trust) = plan(&look, &observed, &actions, &s, env).await?;

    let mut carry = Carry {
        env,
        saved: &look.saved,
        s: &s,
        agent: &agent,
        unit: &look.unit,
        win_service: &look.win_service,
        trust: trust.as_ref(),
        summary: vec![],
        done: vec![],
    };
    for op in &steps {
        if let Op::Install { new_name } = op {
            let mut s = s.clone();
            s.config_timeout = s.config_timeout.min(deadline_left(&deadline, &clock));
            s.dry_run = dry_run;
            s.assume_unregistered = dry_run && steps.contains(&Op::RemoveRegistration);
            let mut done = carry.done;
            done.push(op.to_string());
            let name = new_name.as_deref();
            return install_flow(&look.saved, s, name, done, env, net, progress).await;
        }
        if !dry_run {
            carry.carry_out(op).await?;
        }
        carry.done.push(op.to_string());
    }
    let (done, summary) = (carry.done, carry.summary);
    if dry_run {
        return Ok(Outcome {
            text: dry_run_text(&look.saved, &done),
            agent: None,
            steps: Some(done),
        });
    }
    look.outcome(&actions, summary, done)
}

/// What reconcile looked at, before deciding.
struct Look {
    saved: Saved,
    /// `.agent`, when it could be read.
    local: Option<AgentSettings>,
    unreadable: bool,
    tampered: bool,
    network_drift: bool,
    clone: bool,
    vm_id: Option<String>,
    machine_id: Option<String>,
    unit: AgentUnit,
    win_service: String,
    manage_units: bool,
    manage_win: bool,
    windows: bool,
    unit_state: Option<UnitState>,
    server: Server,
    server_version: Option<String>,
    /// Azure DevOps could not be asked: reported once the safe steps are done.
    network_error: Option<Error>,
}

/// Looks at the saved settings, the agent dir, the service and (only when it decides something)
/// the server. Changes nothing.
async fn look(t: &Target, env: &Env, os: Os, net: &Net, deadline: &Budget) -> Result<Look, Error> {
    let clock = net.clock().clone();
    let agent_dir = t.agent_dir.as_path();
    let state_dir = &t.paths.state_dir;
    // Read after the lock: a concurrent install may just have written it.
    let saved = state::load(state_dir, agent_dir)?.ok_or_else(|| {
        Error::Input(format!(
            "no saved settings for --agent-dir {} in {}: run `agent-bootstrap install` first",
            agent_dir.display(),
            state_dir.display()
        ))
    })?;
    settings::check_saved(&saved, &os)?;
    let agent_uid = crate::user::lookup(&saved.user)?.map(|u| u.uid);
    super::check_agent_dir(agent_dir, env, agent_uid)?;
    let agent = AgentDir::new(agent_dir, &os);
    let (local, unreadable, tampered) = registration_here(&agent, &saved);
    let network_drift =
        local.is_some() && !tampered && !install::network_matches(&agent, &net.network());
    if network_drift {
        tracing::warn!(
            "the agent's proxy or CA settings differ from the saved ones; configuring the agent \
             again from the saved settings"
        );
    }
    let network = deadline.sub(&clock, NETWORK_BUDGET);
    let tokens = super::saved_tokens(&saved, env, &os, net, true).await?;

    // Is this the machine that configured the agent?
    let vm_id = tokens.source().vm_id().await;
    let machine_id = state::machine_id();
    let clone = saved.is_clone(vm_id.as_deref(), machine_id.as_deref());
    if clone {
        tracing::warn!(
            saved_vm_id = ?saved.vm_id,
            vm_id = ?vm_id,
            "this machine is a clone of the one that configured the agent; it gets its own registration"
        );
    }

    let unit = AgentUnit::new(&saved.url, &saved.pool, &saved.agent_name);
    let windows = os.is_windows();
    let manage_units =
        env.is_root() && saved.service && !windows && service::systemd_available(env);
    let win_service = service::windows::service_name(&saved.url, &saved.pool, &saved.agent_name);
    let manage_win = env.is_root() && saved.service && windows;
    let unit_state = match Systemctl::find(env).filter(|_| manage_units) {
        Some(sc) => Some(sc.state(&unit.name).await?),
        None if manage_win => Some(UnitState::from(
            service::windows::query(env, &win_service).await?,
        )),
        None => None,
    };
    // The server's view, only when it decides something.
    let (server, server_version, network_error) =
        match local.as_ref().filter(|_| !clone && !tampered) {
            None => (Server::NotAsked, None, None),
            Some(cfg) => ask_server(&saved, cfg, tokens, net, &network).await?,
        };
    Ok(Look {
        saved,
        local,
        unreadable,
        tampered,
        network_drift,
        clone,
        vm_id,
        machine_id,
        unit,
        win_service,
        manage_units,
        manage_win,
        windows,
        unit_state,
        server,
        server_version,
        network_error,
    })
}

impl Look {
    /// What [`decide`] takes.
    fn observed(&self, s: &settings::InstallSettings, agent: &AgentDir) -> Observed {
        let keeps_registration =
            self.local.is_some() && !self.tampered && !self.network_drift && !self.clone;
        Observed {
            configured: self.local.is_some() || self.unreadable,
            tampered: self.tampered,
            network_drift: self.network_drift,
            bypass_changed: keeps_registration && install::proxy_bypass_text(s, agent).is_some(),
            update_switch_changed: keeps_registration
                && agent.env_with_update_switch(s.disable_update).is_some(),
            clone: self.clone,
            service_installed: self.unit_state.is_some_and(|u| u.exists),
            unit: self.unit_state,
            wants_service: self.manage_units || self.manage_win,
            server: self.server,
            windows: self.windows,
        }
    }

    /// The result of a real run that did not configure again: the error Azure DevOps gave, the
    /// name another agent took, or what was done.
    fn outcome(
        self,
        actions: &[Action],
        mut summary: Vec<String>,
        done: Vec<String>,
    ) -> Result<Outcome, Error> {
        if let Some(e) = self.network_error {
            return Err(e);
        }
        let saved = &self.saved;
        if self.server == Server::Conflict {
            let l = self.local.as_ref().expect("configured");
            return Err(crate::devops::DevOpsError::NameTaken {
                pool: saved.pool.clone(),
                name: saved.agent_name.clone(),
                local_id: l.agent_id,
            }
            .into());
        }
        if summary.is_empty() {
            summary.push(if actions.is_empty() {
                "nothing to do".into()
            } else {
                "healthy, service running".into()
            });
        }
        let mut agent = AgentRef::from(saved);
        agent.id = self.local.as_ref().map_or(saved.agent_id, |l| l.agent_id);
        Ok(Outcome {
            text: format!(
                "reconcile: agent '{}' (id {}): {}",
                saved.agent_name,
                agent.id,
                summary.join(", ")
            ),
            agent: Some(agent),
            steps: Some(done),
        })
    }
}

/// The decision's actions as steps, found by looking only: a dry run prints them, a real run
/// carries them out, in order. Also the trust store's plan when a CA must be put back.
async fn plan(
    look: &Look,
    observed: &Observed,
    actions: &[Action],
    s: &settings::InstallSettings,
    env: &Env,
) -> Result<(Vec<Op>, Option<install::TrustPlan>), Error> {
    let saved = &look.saved;
    let mut steps = vec![];
    if look.server == Server::Known
        && let Some(version) = newer_version(saved, look.server_version.as_deref())
    {
        steps.push(Op::FollowVersion { version });
    }
    if observed.bypass_changed {
        steps.push(Op::ProxyBypass);
    }
    if observed.update_switch_changed {
        steps.push(Op::UpdateSwitch {
            disable: s.disable_update,
        });
    }
    let active = look.unit_state.is_some_and(|u| u.active);
    for action in actions {
        match action {
            Action::EnsureService { restart } if look.windows => {
                if *restart && active {
                    steps.push(Op::StopWindowsService);
                }
                if *restart || !active {
                    steps.push(Op::StartWindowsService);
                }
            }
            Action::EnsureService { restart } => {
                let sc = Systemctl::require(env)?;
                if service::agent_unit_off(env, &sc, &look.unit, &s.agent_dir, &saved.user).await? {
                    steps.push(Op::InstallUnit);
                } else if service::selinux::mode(env).is_some() {
                    steps.push(Op::LabelRunsvc);
                }
                if *restart {
                    steps.push(Op::RestartService);
                } else if !active {
                    steps.push(Op::StartService);
                }
            }
            Action::UninstallService => steps.push(Op::UninstallService),
            Action::RemoveRegistration => steps.push(Op::RemoveRegistration),
            Action::Install { new_name } => {
                if look.manage_win {
                    steps.push(Op::StopWindowsService);
                }
                let name = new_name.then(|| {
                    clone_name(
                        &saved.agent_name,
                        env.hostname(),
                        look.vm_id.as_deref().or(look.machine_id.as_deref()),
                    )
                });
                steps.push(Op::Install { new_name: name });
            }
        }
    }
    // The CA certificates install added to the system trust store (the agent trusts nothing
    // else): put back if they went (the install flow does it itself).
    let installs = steps.iter().any(|op| matches!(op, Op::Install { .. }));
    let trust = if env.is_root() && !saved.trusted_cas.is_empty() && !look.clone && !installs {
        install::trust_plan(s, env)
            .await?
            .filter(install::TrustPlan::needs_work)
    } else {
        None
    };
    if trust.is_some() {
        steps.push(Op::TrustCa);
    }
    Ok((steps, trust))
}

/// The install flow from the saved settings (`s`, a dry run's when reconcile's is), under a new
/// name for a clone; it ends the run. Its steps follow reconcile's (`done`, this step's included).
async fn install_flow(
    saved: &Saved,
    mut s: settings::InstallSettings,
    new_name: Option<&str>,
    mut done: Vec<String>,
    env: &Env,
    net: &Net,
    progress: &Progress,
) -> Result<Outcome, Error> {
    if let Some(name) = new_name {
        name.clone_into(&mut s.agent_name);
        tracing::info!(agent = %s.agent_name, "registering this machine under its own name");
    }
    let headline = if new_name.is_some() {
        "reconcile: registered this clone under its own name"
    } else {
        "reconcile: configured the agent from the saved settings"
    };
    let flow = install::run_locked(&s, env, net, progress, headline).await?;
    done.extend(flow.steps.clone().unwrap_or_default());
    let text = if s.dry_run {
        dry_run_text(saved, &done)
    } else {
        flow.text
    };
    Ok(Outcome {
        text,
        agent: flow.agent,
        steps: Some(done),
    })
}

/// What a dry run of reconcile shows.
fn dry_run_text(saved: &Saved, steps: &[String]) -> String {
    let header = format!(
        "reconcile: agent '{}' of pool '{}' in {}",
        saved.agent_name,
        saved.pool,
        saved.agent_dir.display()
    );
    crate::output::dry_run_text(&header, steps, "nothing would change")
}

/// One step of reconcile, as its dry run prints it and a real run carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Root's record of the agent's version follows the server's (the agent updated itself).
    FollowVersion {
        version: String,
    },
    ProxyBypass,
    UpdateSwitch {
        disable: bool,
    },
    InstallUnit,
    LabelRunsvc,
    StartService,
    RestartService,
    StopWindowsService,
    StartWindowsService,
    UninstallService,
    RemoveRegistration,
    /// The install flow from the saved settings (under a new name for a clone); its own steps
    /// follow it.
    Install {
        new_name: Option<String>,
    },
    TrustCa,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::FollowVersion { version } => write!(
                f,
                "record agent version {version} in root's settings (the agent updated itself)"
            ),
            Op::ProxyBypass => write!(
                f,
                "rewrite the agent's .proxybypass from the saved NO_PROXY"
            ),
            Op::UpdateSwitch { disable: true } => {
                write!(
                    f,
                    "turn the agent's self-update off (agent.disableupdate in its .env)"
                )
            }
            Op::UpdateSwitch { disable: false } => write!(
                f,
                "turn the agent's self-update on again (agent.disableupdate out of its .env)"
            ),
            Op::InstallUnit => write!(
                f,
                "write the agent's unit (its template, from root's settings), systemctl \
                 daemon-reload, restore runsvc.sh, systemctl enable"
            ),
            Op::LabelRunsvc => write!(f, "label runsvc.sh for systemd (SELinux is enabled)"),
            Op::StartService => write!(f, "systemctl start --no-block the agent's unit"),
            Op::RestartService => write!(
                f,
                "systemctl restart --no-block the agent's unit (it reads what changed when it starts)"
            ),
            Op::StopWindowsService => write!(f, "sc.exe stop the agent's service"),
            Op::StartWindowsService => write!(f, "sc.exe start the agent's service"),
            Op::UninstallService => write!(
                f,
                "stop, disable and delete the original machine's service (this machine is a clone)"
            ),
            Op::RemoveRegistration => write!(
                f,
                "remove the local registration (.agent, .credentials, .credentials_rsaparams)"
            ),
            Op::Install { new_name: None } => write!(
                f,
                "configure the agent again from root's saved settings (the install flow, steps below)"
            ),
            Op::Install {
                new_name: Some(name),
            } => write!(
                f,
                "register this machine as '{name}' from root's saved settings (the install flow, \
                 steps below)"
            ),
            Op::TrustCa => write!(
                f,
                "put the CA certificates root's settings record back into the system trust store"
            ),
        }
    }
}

/// What carrying out reconcile's steps needs, and what it reports.
struct Carry<'a> {
    env: &'a Env,
    saved: &'a Saved,
    s: &'a settings::InstallSettings,
    agent: &'a AgentDir,
    unit: &'a AgentUnit,
    win_service: &'a str,
    trust: Option<&'a install::TrustPlan>,
    /// What the text output says was done.
    summary: Vec<String>,
    /// The steps carried out.
    done: Vec<String>,
}

impl Carry<'_> {
    async fn carry_out(&mut self, op: &Op) -> Result<(), Error> {
        let env = self.env;
        let user = || {
            crate::user::lookup(&self.saved.user)?.ok_or_else(|| {
                Error::from(crate::user::UserError::Missing {
                    name: self.saved.user.clone(),
                })
            })
        };
        match op {
            Op::FollowVersion { version } => {
                let mut updated = self.saved.clone();
                updated.agent_version = Some(version.clone());
                state::save(&self.s.state_dir, &updated)?;
                tracing::info!(version, "the agent updated itself; recorded its version");
            }
            Op::ProxyBypass => {
                install::write_proxy_bypass(self.s, env, self.agent, Some(&user()?)).await?;
            }
            Op::UpdateSwitch { .. } => {
                install::write_update_switch(self.s, env, self.agent, Some(&user()?)).await?;
            }
            Op::InstallUnit => {
                let sc = Systemctl::require(env)?;
                let ready =
                    service::install_agent_unit(env, &sc, self.unit, &self.agent.root, &user()?)
                        .await?;
                if ready.reinstalled {
                    self.summary.push("reinstalled the service".into());
                }
                if ready.enabled_now {
                    self.summary.push("enabled the service".into());
                }
            }
            Op::LabelRunsvc => {
                let runsvc = self.agent.root.join("runsvc.sh");
                service::selinux::label(env, &runsvc, service::selinux::PROGRAM).await?;
            }
            // --no-block: at boot our unit is ordered before the agent's; a blocking start would
            // wait for ourselves.
            Op::StartService => {
                Systemctl::require(env)?
                    .run(&["start", "--no-block", &self.unit.name])
                    .await?;
                self.summary.push("started the service".into());
            }
            Op::RestartService => {
                Systemctl::require(env)?
                    .run(&["restart", "--no-block", &self.unit.name])
                    .await?;
                self.summary.push("restarted the service".into());
            }
            Op::StopWindowsService => {
                if let Err(e) = service::windows::stop(env, self.win_service).await {
                    tracing::warn!("{e}");
                }
            }
            Op::StartWindowsService => {
                service::windows::start(env, self.win_service).await?;
                self.summary.push("started the service".into());
            }
            Op::UninstallService => {
                if let Some(sc) = Systemctl::find(env).filter(|_| !self.s.os.is_windows()) {
                    service::uninstall_agent_unit(env, &sc, &self.unit.name, &self.agent.root)
                        .await?;
                }
                if self.s.os.is_windows() {
                    service::windows::stop_and_delete(env, self.win_service).await?;
                }
                self.summary
                    .push("removed the original machine's service".into());
            }
            Op::RemoveRegistration => self.agent.remove_registration()?,
            Op::TrustCa => {
                if let Some(plan) = self.trust {
                    plan.ensure(self.s, env).await?;
                    self.summary
                        .push("put the CA certificate back into the system trust store".into());
                }
            }
            // Carried out by the caller (it ends the run).
            Op::Install { .. } => {}
        }
        Ok(())
    }
}

/// The version the server reports for the agent, when it is newer than root's record (the agent
/// updated itself).
fn newer_version(saved: &Saved, server_version: Option<&str>) -> Option<String> {
    let reported = server_version.filter(|v| parse_version(v).is_some())?;
    let newer = saved
        .agent_version
        .as_deref()
        .and_then(parse_version)
        .is_none_or(|have| parse_version(reported).is_some_and(|v| v > have));
    newer.then(|| reported.to_owned())
}

/// What is left of the run's deadline, for the agent's scripts (at least a minute).
fn deadline_left(deadline: &Budget, clock: &crate::clock::Clock) -> Duration {
    deadline.remaining(clock).max(Duration::from_secs(60))
}

/// `.agent` is about the agent root's saved settings describe (same organization, pool, name).
fn matches_saved(local: &AgentSettings, saved: &Saved) -> bool {
    let group = saved.group.as_ref().map(|g| (g.kind, Some(g.id)));
    same_server(&local.server_url, &saved.url)
        && local.registered_in(&saved.pool, group)
        && local.agent_name.eq_ignore_ascii_case(&saved.agent_name)
}

/// The registration configured here: `(local, unreadable, tampered)`. An `.agent` that cannot be
/// read (a FIFO, a link, garbage) or that names another organization, pool or agent was changed
/// behind our back: it is not believed, and the agent is configured again from the saved settings.
fn registration_here(agent: &AgentDir, saved: &Saved) -> (Option<AgentSettings>, bool, bool) {
    let (local, unreadable) = match agent.settings() {
        Ok(l) => (l, false),
        Err(e) => {
            tracing::warn!("{}", crate::report::one_line(&e));
            (None, true)
        }
    };
    let tampered = unreadable || local.as_ref().is_some_and(|l| !matches_saved(l, saved));
    if tampered {
        tracing::warn!(
            "the agent's .agent does not match the saved settings (changed by a job?); \
             configuring the agent again from the saved settings"
        );
    }
    (local, unreadable, tampered)
}

/// The server's view of the registration here, with the version it knows the agent by; an
/// organization that cannot be asked is [`Server::Unreachable`] with the error, reported once the
/// safe steps are done.
async fn ask_server(
    saved: &Saved,
    cfg: &AgentSettings,
    tokens: std::sync::Arc<crate::identity::Tokens>,
    net: &Net,
    network: &Budget,
) -> Result<(Server, Option<String>, Option<Error>), Error> {
    let url = settings::check_url("the saved url", &saved.url)?;
    let client = DevOpsClient::new(&url, tokens, net);
    Ok(match server_view(saved, cfg, &client, network).await {
        Ok((view, version)) => (view, version, None),
        Err(e) => {
            tracing::warn!(
                "could not check the agent with Azure DevOps: {}",
                crate::report::report(&e)
            );
            (Server::Unreachable, None, Some(e))
        }
    })
}

/// One Azure DevOps request (and the token it needs): is the agent still the server's? Asked with
/// root's saved organization, pool and name, never with what `.agent` says.
async fn server_view(
    saved: &Saved,
    local: &AgentSettings,
    client: &DevOpsClient,
    budget: &Budget,
) -> Result<(Server, Option<String>), Error> {
    let found = client
        .find_agent(&saved.pool(), &saved.agent_name, budget)
        .await?;
    let version = found.as_ref().and_then(|a| a.version.clone());
    let view = match found {
        Some(a) if a.id == local.agent_id => Server::Known,
        Some(a) => {
            tracing::warn!(
                local_id = local.agent_id,
                server_id = a.id,
                "the pool has another agent with this name"
            );
            Server::Conflict
        }
        None => {
            tracing::warn!(agent = %saved.agent_name, "the agent was deleted on the server");
            Server::Missing
        }
    };
    Ok((view, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    #[test]
    fn a_changed_proxy_configures_again_and_a_changed_bypass_restarts() {
        let drift = Observed {
            network_drift: true,
            ..healthy()
        };
        assert_eq!(
            decide(&drift),
            [RemoveRegistration, Install { new_name: false }]
        );
        let bypass = Observed {
            bypass_changed: true,
            ..healthy()
        };
        assert_eq!(decide(&bypass), [EnsureService { restart: true }]);
    }

    fn healthy() -> Observed {
        Observed {
            configured: true,
            tampered: false,
            clone: false,
            service_installed: true,
            unit: Some(UnitState {
                exists: true,
                enabled: true,
                active: true,
            }),
            wants_service: true,
            server: Server::Known,
            network_drift: false,
            bypass_changed: false,
            update_switch_changed: false,
            windows: false,
        }
    }

    #[test]
    fn a_changed_update_switch_restarts_the_healthy_service() {
        let o = Observed {
            update_switch_changed: true,
            ..healthy()
        };
        assert_eq!(decide(&o), [EnsureService { restart: true }]);
    }

    #[test]
    fn row_healthy_only_ensures_the_service() {
        assert_eq!(decide(&healthy()), vec![EnsureService { restart: false }]);
        let no_service = Observed {
            wants_service: false,
            service_installed: false,
            ..healthy()
        };
        assert_eq!(decide(&no_service), vec![]);
    }

    #[test]
    fn row_deleted_on_the_server_registers_again_from_a_fresh_package() {
        // Never reauth.sh or config.sh from the agent dir: the install flow, which ends the
        // account's processes and extracts the verified package first.
        for windows in [false, true] {
            let o = Observed {
                server: Server::Missing,
                windows,
                ..healthy()
            };
            assert_eq!(
                decide(&o),
                vec![RemoveRegistration, Install { new_name: false }]
            );
        }
    }

    #[test]
    fn row_not_configured_runs_the_install_flow() {
        let o = Observed {
            configured: false,
            service_installed: false,
            unit: None,
            server: Server::NotAsked,
            ..healthy()
        };
        assert_eq!(decide(&o), vec![Install { new_name: false }]);
    }

    #[test]
    fn row_clone_never_reuses_the_original_registration() {
        let o = Observed {
            clone: true,
            server: Server::NotAsked,
            ..healthy()
        };
        assert_eq!(
            decide(&o),
            vec![
                UninstallService,
                RemoveRegistration,
                Install { new_name: true }
            ]
        );
        let o = Observed {
            clone: true,
            configured: false,
            service_installed: false,
            ..healthy()
        };
        assert_eq!(
            decide(&o),
            vec![RemoveRegistration, Install { new_name: true }]
        );
    }

    #[test]
    fn row_service_missing_or_disabled_is_repaired_by_ensure_service() {
        let o = Observed {
            unit: Some(UnitState {
                exists: false,
                enabled: false,
                active: false,
            }),
            ..healthy()
        };
        assert_eq!(decide(&o), vec![EnsureService { restart: false }]);
        let o = Observed {
            service_installed: false,
            unit: None,
            ..healthy()
        };
        assert_eq!(decide(&o), vec![EnsureService { restart: false }]);
    }

    #[test]
    fn row_unreachable_never_stops_or_removes_anything() {
        let o = Observed {
            server: Server::Unreachable,
            ..healthy()
        };
        let actions = decide(&o);
        assert_eq!(actions, vec![EnsureService { restart: false }]);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, UninstallService | RemoveRegistration | Install { .. }))
        );
        let o = Observed {
            server: Server::Unreachable,
            service_installed: false,
            unit: None,
            ..healthy()
        };
        assert_eq!(decide(&o), vec![]);
    }

    #[test]
    fn windows_repairs_with_a_fresh_package_never_the_agents_scripts_in_place() {
        let win = |o: Observed| decide(&Observed { windows: true, ..o });
        assert_eq!(
            win(Observed {
                server: Server::Missing,
                ..healthy()
            }),
            vec![RemoveRegistration, Install { new_name: false }]
        );
        assert_eq!(
            win(Observed {
                service_installed: false,
                unit: None,
                ..healthy()
            }),
            vec![RemoveRegistration, Install { new_name: false }]
        );
        // A stopped service is just started; unreachable servers change nothing.
        assert_eq!(win(healthy()), vec![EnsureService { restart: false }]);
        assert_eq!(
            win(Observed {
                service_installed: false,
                unit: None,
                server: Server::Unreachable,
                ..healthy()
            }),
            vec![]
        );
    }

    #[test]
    fn row_agent_settings_changed_by_a_job_are_not_believed() {
        let o = Observed {
            tampered: true,
            server: Server::NotAsked,
            ..healthy()
        };
        assert_eq!(
            decide(&o),
            vec![RemoveRegistration, Install { new_name: false }]
        );
    }

    #[test]
    fn reconciles_waits_fit_inside_the_boot_units_timeout() {
        assert!(LOCK_WAIT + NETWORK_BUDGET < DEADLINE);
        assert!(DEADLINE < service::BOOT_TIMEOUT);
        let unit = service::render_boot_unit(
            std::path::Path::new("/usr/local/bin/agent-bootstrap"),
            std::path::Path::new("/opt/a"),
            std::path::Path::new("/var/lib/agent-bootstrap"),
            None,
        )
        .unwrap();
        let timeout: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStartSec="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(DEADLINE.as_secs() + 30 <= timeout);
    }

    #[test]
    fn row_name_taken_by_another_agent_is_left_alone() {
        let o = Observed {
            server: Server::Conflict,
            ..healthy()
        };
        assert_eq!(decide(&o), vec![]);
    }

    #[test]
    fn versions_and_clone_names() {
        assert!(parse_version("4.264.2").unwrap() > parse_version("4.255.0").unwrap());
        assert!(parse_version("v3.246.0").unwrap() > parse_version("3.245.9").unwrap());
        assert_eq!(parse_version("x"), None);
        assert_eq!(clone_name("vm-golden", "vm-clone-7", None), "vm-clone-7");
        assert_eq!(clone_name("vm", "VM", Some("6f1c2d3e-0000")), "vm-6f1c2d3e");
        assert_eq!(clone_name("vm", "", None), "vm-clone");
    }
}
