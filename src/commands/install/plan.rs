//! What an install will do, as a value: the [`Step`]s `--dry-run` prints and a real run carries
//! out in order, and how they are chosen from what was seen.

use std::path::{Path, PathBuf};

use crate::agent::config::TOKEN_ENV;
use crate::agent::{AgentDir, config};
use crate::devops::Pool;
use crate::env::Env;
use crate::error::Error;
use crate::output::Outcome;
use crate::package::Request;
use crate::process::{Child, RunAs};
use crate::secret::Secret;
use crate::service::{AgentUnit, Systemctl};
use crate::settings::InstallSettings;
use crate::state::{Saved, TrustedCa};
use crate::{package, service, state, trust, user};

use super::ca::{TrustPlan, unneeded_cas};
use super::configure::{configure_command, proxy_bypass_text};
use super::execute::boot_program;
use super::{Checked, agent_unit, manages_units, windows_service_name};

/// What will be installed, once the packages API (or `--package`) has been asked.
#[derive(Debug, Clone)]
pub(super) enum PackagePlan {
    /// The agent dir already has a usable package.
    Keep { reason: String },
    Fetch {
        request: Request,
        version: Option<String>,
    },
}

/// One step of an install, as `--dry-run` prints it and the executor runs it.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// Something a person should know (no boot unit here, and why).
    Note(String),
    CreateUser {
        name: String,
    },
    /// Put the CA file's certificates into the system trust store (the agent's listener trusts
    /// nothing else), or leave them where the store has them already ([`crate::trust`]).
    TrustCa {
        ca_file: PathBuf,
        tool: String,
        /// Each certificate's subject, the file of ours it goes to (Linux), and what is done.
        certs: Vec<(String, Option<PathBuf>, trust::Action)>,
    },
    KeepPackage {
        reason: String,
    },
    /// Give a package root extracted (an image build) to the agent user, by descriptor.
    GiveAgentDir {
        user: String,
    },
    Fetch {
        request: Request,
        version: Option<String>,
        cached: Option<PathBuf>,
    },
    StopService {
        unit: String,
    },
    /// End every process of the agent's account and see them gone, before anything a configure
    /// with the token runs from is put in place ([`user::end_processes`]).
    EndUserProcesses {
        user: String,
    },
    RemoveRegistration,
    Configure {
        program: PathBuf,
        args: Vec<String>,
        user: String,
    },
    InstallUnit {
        unit: AgentUnit,
        user: String,
    },
    StartService {
        unit: String,
        no_block: bool,
    },
    SaveSettings {
        path: PathBuf,
    },
    BootUnit {
        name: String,
        path: PathBuf,
    },
    /// The service that runs `watch` (`--scale-in-drain`).
    WatchUnit {
        name: String,
        path: PathBuf,
    },
    /// Windows: the agent dir's ACL (SYSTEM and Administrators full, the service account modify).
    SecureAgentDir {
        account: String,
    },
    /// Windows: stop the service configure is about to replace.
    StopWindowsService {
        name: String,
    },
    /// Windows: the service configure created is running (started if it is not).
    WindowsService {
        name: String,
    },
    /// Windows: the scheduled task that runs `reconcile` at startup.
    BootTask {
        name: String,
    },
    /// `.proxybypass` rewritten from `NO_PROXY` (the agent reads it when it starts).
    ProxyBypass {
        entries: usize,
    },
    /// `agent.disableupdate` put into or taken out of the agent's `.env` (`--disable-update`).
    UpdateSwitch {
        disable: bool,
    },
    /// Restart the running agent: a file it reads at start changed.
    RestartService {
        unit: String,
    },
    /// Take out of the system trust store the CA certificates an earlier install added that no
    /// install asks for any more.
    ReleaseCas {
        cas: Vec<TrustedCa>,
    },
    /// Stop, disable and delete the scale-in watcher (installed before, no `--scale-in-drain` now).
    DropWatchUnit {
        name: String,
    },
    /// SELinux: `runsvc.sh` labelled for systemd again (a job may have replaced it with a file of
    /// the agent dir's label, which systemd would refuse to run at the next start).
    LabelRunsvc,
}

/// The steps of one install, in order.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) steps: Vec<Step>,
}

impl Plan {
    /// Adds the trust store's step first (after the account's): a certificate that cannot be
    /// added stops the install with nothing else done.
    pub(super) fn trust_first(&mut self, step: Step) {
        let at = (self.steps.iter())
            .take_while(|st| matches!(st, Step::CreateUser { .. }))
            .count();
        self.steps.insert(at, step);
    }
}

/// The steps of a fresh install, a re-registration or a repair, in the order they run.
pub(super) fn make_plan(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    c: &Checked,
    package: &PackagePlan,
    account: Option<&RunAs>,
    new_account: bool,
) -> Plan {
    let mut steps = vec![];
    let windows = s.os.is_windows();
    if new_account && !windows {
        steps.push(Step::CreateUser {
            name: s.user.name().to_owned(),
        });
    }
    steps.extend(stop_steps(s, env, c, account));
    steps.extend(package_steps(s, package, account));
    if windows && s.as_root {
        steps.push(Step::SecureAgentDir {
            account: s.user.name().to_owned(),
        });
    }
    if c.reregister || (!s.assume_unregistered && agent.has_stale_registration()) {
        steps.push(Step::RemoveRegistration);
    }
    let (program, args) = configure_command(s, agent);
    steps.push(Step::Configure {
        program,
        args,
        user: s.user.name().to_owned(),
    });
    // Saved as soon as the agent is registered: whatever fails after, reconcile and remove know it.
    steps.push(Step::SaveSettings {
        path: state::file_for(&s.state_dir, &s.agent_dir),
    });
    if !c.release.is_empty() {
        steps.push(Step::ReleaseCas {
            cas: c.release.clone(),
        });
    }
    steps.extend(service_steps(s, env, &c.pool.name));
    steps.extend(boot_step(s, env));
    steps.extend(watch_step(s, env));
    steps.extend(stale_watch_unit(s, env));
    Plan { steps }
}

/// The agent stops before its files change: a listener still running with the old key would not
/// pick up the new one, and systemd would start again what is ended here.
fn stop_steps(s: &InstallSettings, env: &Env, c: &Checked, account: Option<&RunAs>) -> Vec<Step> {
    let mut steps = vec![];
    if s.service && manages_units(s, env) && (c.reregister || c.unit_exists) {
        steps.push(Step::StopService {
            unit: agent_unit(s, &c.pool.name).name,
        });
    }
    if s.service && s.os.is_windows() && c.reregister {
        steps.push(Step::StopWindowsService {
            name: windows_service_name(s, &c.pool.name),
        });
    }
    if ends_user_processes(s, account) {
        steps.push(Step::EndUserProcesses {
            user: s.user.name().to_owned(),
        });
    }
    steps
}

/// The package kept (and given to the agent's account), or fetched.
fn package_steps(s: &InstallSettings, package: &PackagePlan, account: Option<&RunAs>) -> Vec<Step> {
    match package {
        PackagePlan::Keep { reason } => {
            let mut steps = vec![Step::KeepPackage {
                reason: reason.clone(),
            }];
            let owned_by_user =
                account.is_some_and(|u| crate::platform::owner_id(&s.agent_dir) == Some(u.uid));
            if s.as_root && !owned_by_user && !s.os.is_windows() {
                steps.push(Step::GiveAgentDir {
                    user: s.user.name().to_owned(),
                });
            }
            steps
        }
        PackagePlan::Fetch { request, version } => vec![Step::Fetch {
            request: request.clone(),
            version: version.clone(),
            cached: request
                .sha256
                .as_ref()
                .map(|h| package::cache_path(&s.cache_dir, h, request.kind))
                .filter(|p| p.is_file()),
        }],
    }
}

/// The agent's service: Windows' (configure made it), a systemd unit, or a note saying why none.
fn service_steps(s: &InstallSettings, env: &Env, pool: &str) -> Vec<Step> {
    if !s.service {
        return vec![];
    }
    if s.os.is_windows() {
        return vec![Step::WindowsService {
            name: windows_service_name(s, pool),
        }];
    }
    if !manages_units(s, env) {
        return vec![Step::Note(
            "systemd is not running here: the agent's service is not installed; start \
             ./run.sh yourself"
                .into(),
        )];
    }
    let unit = agent_unit(s, pool);
    let start = Step::StartService {
        unit: unit.name.clone(),
        no_block: s.no_block_start,
    };
    let user = s.user.name().to_owned();
    vec![Step::InstallUnit { unit, user }, start]
}

/// Whether configuring ends the account's processes first: as root on Linux, for an account that
/// is not root (the agent's jobs run as it, and the token passes through its configure).
pub(super) fn ends_user_processes(s: &InstallSettings, account: Option<&RunAs>) -> bool {
    s.as_root && cfg!(unix) && !s.os.is_windows() && account.is_none_or(|a| a.uid != 0)
}

/// The watcher's unit step (`--scale-in-drain`), or the note saying why there is none.
pub(super) fn watch_step(s: &InstallSettings, env: &Env) -> Option<Step> {
    if !s.scale_in_drain {
        return None;
    }
    if !service::systemd_available(env) {
        return Some(Step::Note(format!(
            "systemd is not running here: no scale-in watcher installed; run `agent-bootstrap \
             watch --agent-dir {}` as root yourself",
            s.agent_dir.display()
        )));
    }
    let name = service::watch_unit_name(&s.agent_dir);
    Some(Step::WatchUnit {
        path: service::unit_dir(env).join(&name),
        name,
    })
}

/// The boot unit step, or the note saying why there is none.
pub(super) fn boot_step(s: &InstallSettings, env: &Env) -> Option<Step> {
    if !s.boot {
        return None;
    }
    let by_hand = format!(
        "run `agent-bootstrap reconcile --agent-dir {}` at start yourself",
        s.agent_dir.display()
    );
    if s.os.is_windows() {
        return Some(if s.as_root {
            Step::BootTask {
                name: service::windows::boot_task_name(&s.agent_dir),
            }
        } else {
            Step::Note(format!(
                "not elevated: no boot task (it would run as SYSTEM); {by_hand}"
            ))
        });
    }
    if !s.as_root {
        return Some(Step::Note(format!(
            "not running as root: no boot unit (it would run as root); {by_hand}"
        )));
    }
    if !service::systemd_available(env) {
        return Some(Step::Note(format!(
            "systemd is not running here: no boot unit installed; {by_hand}"
        )));
    }
    let name = service::boot_unit_name(&s.agent_dir);
    Some(Step::BootUnit {
        path: service::unit_dir(env).join(&name),
        name,
    })
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Note(text) => write!(f, "note: {text}"),
            Step::CreateUser { name } => write!(
                f,
                "create system user '{name}' (useradd --system --create-home)"
            ),
            Step::TrustCa {
                ca_file,
                tool,
                certs,
            } => trust_ca_text(f, ca_file, tool, certs),
            Step::KeepPackage { reason } => {
                write!(f, "keep the agent package in the agent dir ({reason})")
            }
            Step::GiveAgentDir { user } => write!(
                f,
                "give the agent dir to '{user}' (through directory descriptors, children first)"
            ),
            Step::Fetch {
                request, cached, ..
            } => fetch_text(f, request, cached.as_deref()),
            Step::StopService { unit } => write!(f, "run as root: systemctl stop {unit}"),
            Step::EndUserProcesses { user } => write!(
                f,
                "end every process of '{user}' (stopped, then killed) and wait until none is \
                 left: none may read the token from configure or change the package it runs"
            ),
            Step::RemoveRegistration => write!(
                f,
                "remove the local registration (.agent, .credentials, .credentials_rsaparams)"
            ),
            Step::Configure {
                program,
                args,
                user,
            } => configure_text(f, program, args, user),
            Step::InstallUnit { unit, user } => write!(
                f,
                "write the unit {} (the agent's template, User={user}), systemctl daemon-reload, \
                 systemctl enable {}",
                unit.name, unit.name
            ),
            Step::StartService { unit, no_block } => write!(
                f,
                "systemctl start{} {unit} (restart if it runs)",
                if *no_block { " --no-block" } else { "" }
            ),
            Step::SaveSettings { path } => {
                write!(f, "save settings (no secret) to {}", path.display())
            }
            Step::BootUnit { name, path } => write!(
                f,
                "write {} and enable {name} (runs `agent-bootstrap reconcile` at every boot)",
                path.display()
            ),
            Step::WatchUnit { name, path } => write!(
                f,
                "write {} and enable and start {name} (runs `agent-bootstrap watch`: drains and \
                 unregisters the agent on a scale-in or eviction)",
                path.display()
            ),
            Step::SecureAgentDir { .. }
            | Step::StopWindowsService { .. }
            | Step::WindowsService { .. }
            | Step::BootTask { .. } => windows_text(self, f),
            Step::ProxyBypass { .. }
            | Step::UpdateSwitch { .. }
            | Step::RestartService { .. }
            | Step::LabelRunsvc => upkeep_text(self, f),
            Step::ReleaseCas { cas } => {
                let names: Vec<_> = cas.iter().map(|c| format!("'{}'", c.subject)).collect();
                write!(
                    f,
                    "take {} out of the system trust store (added by an earlier install; no \
                     install asks for it now)",
                    names.join(", ")
                )
            }
            Step::DropWatchUnit { name } => write!(
                f,
                "stop, disable and delete {name} (the scale-in watcher; no --scale-in-drain)"
            ),
        }
    }
}

/// The steps only Windows has, as the plan shows them.
fn windows_text(step: &Step, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match step {
        Step::SecureAgentDir { account } => write!(
            f,
            "set the agent dir's ACL: SYSTEM and Administrators full control, '{account}' \
             modify, nobody else"
        ),
        Step::StopWindowsService { name } => write!(f, "sc.exe stop {name}"),
        Step::WindowsService { name } => write!(
            f,
            "check the service {name} configure created (sc.exe query), start it if it is stopped"
        ),
        Step::BootTask { name } => write!(
            f,
            "register the scheduled task {name} (runs `agent-bootstrap reconcile` as SYSTEM \
             at every startup)"
        ),
        _ => unreachable!("not a Windows step: {step:?}"),
    }
}

/// The steps only an installed agent's upkeep has, as the plan shows them.
fn upkeep_text(step: &Step, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match step {
        Step::ProxyBypass { entries } => write!(
            f,
            "rewrite the agent's .proxybypass from NO_PROXY ({entries} entries; as the agent's \
             account)"
        ),
        Step::UpdateSwitch { disable: true } => write!(
            f,
            "turn the agent's self-update off (agent.disableupdate in its .env)"
        ),
        Step::UpdateSwitch { disable: false } => write!(
            f,
            "turn the agent's self-update on again (agent.disableupdate out of its .env)"
        ),
        Step::RestartService { unit } => write!(
            f,
            "systemctl restart {unit} (the agent reads what changed when it starts)"
        ),
        Step::LabelRunsvc => write!(
            f,
            "label runsvc.sh for systemd ({}; SELinux is enabled, and a job may have replaced it)",
            service::selinux::PROGRAM
        ),
        _ => unreachable!("not an upkeep step: {step:?}"),
    }
}

/// [`Step::TrustCa`] as the plan shows it: each certificate and what happens to it.
fn trust_ca_text(
    f: &mut std::fmt::Formatter<'_>,
    ca_file: &Path,
    tool: &str,
    certs: &[(String, Option<PathBuf>, trust::Action)],
) -> std::fmt::Result {
    write!(
        f,
        "put the CA certificates of {} into the system trust store (the agent's listener trusts \
         only that store):",
        ca_file.display()
    )?;
    for (subject, file, action) in certs {
        let place = file
            .as_ref()
            .map_or_else(|| "LocalMachine\\Root".into(), |p| p.display().to_string());
        match action {
            trust::Action::Present => {
                write!(f, " '{subject}' is there already: left as it is;")?;
            }
            trust::Action::Ours { in_bundle: true } => write!(
                f,
                " '{subject}' is there already ({place}, added by agent-bootstrap);"
            )?,
            trust::Action::Ours { in_bundle: false } => {
                write!(f, " '{subject}' in {place}, then {tool};")?;
            }
            trust::Action::Add => write!(f, " add '{subject}' as {place}, then {tool};")?,
        }
    }
    write!(f, " `remove` takes out what was added")
}

/// [`Step::Fetch`] as the plan shows it.
fn fetch_text(
    f: &mut std::fmt::Formatter<'_>,
    request: &Request,
    cached: Option<&Path>,
) -> std::fmt::Result {
    match cached {
        Some(p) => write!(f, "read the cached package {}", p.display())?,
        None => write!(f, "download {} into the cache", request.source)?,
    }
    write!(
        f,
        ", verifying its SHA-256 ({}), extracting it into a private staging directory, then swap \
         it in as the agent dir (its _work and _diag kept)",
        request.sha256.as_deref().unwrap_or("not given: unverified")
    )
}

/// [`Step::Configure`] as the plan shows it: the command line, with the token's variable named
/// and never its value.
fn configure_text(
    f: &mut std::fmt::Formatter<'_>,
    program: &Path,
    args: &[String],
    user: &str,
) -> std::fmt::Result {
    let child = Child::new("configure", program, &Env::default())
        .args(args.to_vec())
        .secret_env(TOKEN_ENV, Secret::new(String::new()));
    let as_root = if user == "root" {
        format!("{}=1 ", config::ALLOW_RUN_AS_ROOT_ENV)
    } else {
        String::new()
    };
    if program.extension().is_some_and(|e| e == "cmd")
        || program.to_string_lossy().ends_with(".cmd")
    {
        write!(f, "run elevated: {}", child.display())
    } else {
        write!(f, "run as '{user}': {as_root}{}", child.display())
    }
}

/// What a dry run shows: what install would do, and that nothing was changed.
pub(super) fn print_plan(
    s: &InstallSettings,
    c: &Checked,
    package: &PackagePlan,
    plan: &Plan,
) -> Result<Outcome, Error> {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "dry run: nothing was changed").unwrap_or(());
    writeln!(out, "identity:     {} (token accepted)", c.who).unwrap_or(());
    writeln!(out, "organization: {}", s.url).unwrap_or(());
    writeln!(out, "{}", place_line(&c.pool)).unwrap_or(());
    writeln!(out, "agent:        {}", s.agent_name).unwrap_or(());
    writeln!(out, "agent dir:    {}", s.agent_dir.display()).unwrap_or(());
    match package {
        PackagePlan::Keep { reason } => writeln!(
            out,
            "package:      keep the one in the agent dir ({reason})"
        )
        .unwrap_or(()),
        PackagePlan::Fetch { request, version } => writeln!(
            out,
            "package:      {} from {} (sha256 {})",
            version.as_deref().unwrap_or("as given"),
            request.source,
            request.sha256.as_deref().unwrap_or("not given: unverified")
        )
        .unwrap_or(()),
    }
    write_steps(&mut out, plan);
    Ok(Outcome::new(out, None).with_steps(&plan.steps))
}

fn write_steps(out: &mut String, plan: &Plan) {
    use std::fmt::Write as _;
    writeln!(out, "steps:").unwrap_or(());
    for (i, step) in plan.steps.iter().enumerate() {
        writeln!(out, "  {}. {step}", i + 1).unwrap_or(());
    }
}

/// What a dry run on an installed agent shows: the steps that would put right what is not as it
/// should be, or that nothing would change.
/// Where the agent registers, as the dry run says it.
fn place_line(pool: &Pool) -> String {
    use crate::scope::GroupKind;
    match &pool.group {
        None => format!(
            "pool:         {} (id {}), Manage permission: yes",
            pool.name, pool.id
        ),
        Some(g) if g.kind == GroupKind::DeploymentGroup => format!(
            "deployment group: {} (id {}) of project {}, deployment pool {} (id {}), Manage \
             permission: yes",
            g.name, g.id, g.project, pool.name, pool.id
        ),
        Some(g) => format!(
            "environment:  {} (id {}) of project {} (its role is checked when the agent registers)",
            g.name, g.id, g.project
        ),
    }
}

pub(super) fn print_upkeep(s: &InstallSettings, id: u64, pool: &Pool, plan: &Plan) -> Outcome {
    let header = format!(
        "agent '{}' (id {}) is already configured in {} and registered in pool '{}'",
        s.agent_name,
        id,
        s.agent_dir.display(),
        pool.name
    );
    let text = crate::output::dry_run_text(&header, &plan.steps, "nothing would change");
    Outcome::new(text, None).with_steps(&plan.steps)
}
/// The boot unit's name and the text it must have, where there is one.
pub(super) fn boot_unit_text(
    s: &InstallSettings,
    env: &Env,
    pool: &str,
) -> Result<Option<(String, String)>, Error> {
    let Some(Step::BootUnit { name, .. }) = boot_step(s, env) else {
        return Ok(None);
    };
    let exe = boot_program()?;
    let before = (s.service && s.as_root).then(|| agent_unit(s, pool).name);
    let text = service::render_boot_unit(&exe, &s.agent_dir, &s.state_dir, before.as_deref())?;
    Ok(Some((name, text)))
}

/// The scale-in watcher's unit name and the text it must have, where there is one.
pub(super) fn watch_unit_text(
    s: &InstallSettings,
    env: &Env,
) -> Result<Option<(String, String)>, Error> {
    let Some(Step::WatchUnit { name, .. }) = watch_step(s, env) else {
        return Ok(None);
    };
    let exe = boot_program()?;
    let boot = match boot_step(s, env) {
        Some(Step::BootUnit { name, .. }) => Some(name),
        _ => None,
    };
    let text = service::render_watch_unit(&exe, &s.agent_dir, &s.state_dir, boot.as_deref())?;
    Ok(Some((name, text)))
}

/// The watcher's unit left from an earlier install with `--scale-in-drain`, now without it.
pub(super) fn stale_watch_unit(s: &InstallSettings, env: &Env) -> Option<Step> {
    if s.scale_in_drain || !s.as_root || s.os.is_windows() || !service::systemd_available(env) {
        return None;
    }
    let name = service::watch_unit_name(&s.agent_dir);
    crate::fsx::is_regular(&service::unit_dir(env).join(&name))
        .then_some(Step::DropWatchUnit { name })
}

/// Whether one of agent-bootstrap's own units is not as it must be: its file's text, enabled,
/// and (`running`) active.
async fn own_unit_off(
    sc: &Systemctl,
    env: &Env,
    name: &str,
    text: &str,
    running: bool,
) -> Result<bool, Error> {
    let path = service::unit_dir(env).join(name);
    if fs_err::read_to_string(&path).ok().as_deref() != Some(text) {
        return Ok(true);
    }
    let state = sc.state(name).await?;
    Ok(!state.enabled || (running && !state.active))
}

/// What a configured agent the server knows needs, found by looking only (nothing is changed):
/// each step is something not as it should be, so an agent that is as it should be gets an empty
/// plan. `saved` is what root's settings will say; `previous` what they say now.
#[allow(clippy::too_many_arguments)]
pub(super) async fn upkeep_plan(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    pool: &Pool,
    trust: Option<&TrustPlan>,
    saved: &Saved,
    previous: Option<&Saved>,
) -> Result<Plan, Error> {
    let mut steps = vec![];
    let windows = s.os.is_windows();
    if let Some(t) = trust.filter(|t| t.needs_work()) {
        steps.push(t.step());
    }
    let units = s.service && manages_units(s, env);
    let account = user::lookup(s.user.name())?;
    if units && account.is_none() {
        steps.push(Step::CreateUser {
            name: s.user.name().to_owned(),
        });
    }
    let bypass = proxy_bypass_text(s, agent);
    if let Some(text) = &bypass {
        steps.push(Step::ProxyBypass {
            entries: text.lines().count(),
        });
    }
    let switch = agent.env_with_update_switch(s.disable_update).is_some();
    if switch {
        steps.push(Step::UpdateSwitch {
            disable: s.disable_update,
        });
    }
    if s.service && windows && s.as_root {
        let name = windows_service_name(s, &pool.name);
        if !service::windows::query(env, &name).await?.running {
            steps.push(Step::WindowsService { name });
        }
    }
    if units {
        let sc = Systemctl::require(env)?;
        let unit = agent_unit(s, &pool.name);
        if service::agent_unit_off(env, &sc, &unit, &s.agent_dir, s.user.name()).await? {
            steps.push(Step::InstallUnit {
                unit: unit.clone(),
                user: s.user.name().to_owned(),
            });
        } else if service::selinux::mode(env).is_some() {
            // install_agent_unit labels it as part of its work.
            steps.push(Step::LabelRunsvc);
        }
        if !sc.state(&unit.name).await?.active {
            steps.push(Step::StartService {
                unit: unit.name.clone(),
                no_block: s.no_block_start,
            });
        } else if bypass.is_some() || switch {
            steps.push(Step::RestartService { unit: unit.name });
        }
    }
    if previous != Some(saved) {
        steps.push(Step::SaveSettings {
            path: state::file_for(&s.state_dir, &s.agent_dir),
        });
    }
    let unneeded = unneeded_cas(
        s,
        previous.map_or(&[][..], |p| &p.trusted_cas),
        &saved.trusted_cas,
    );
    if !unneeded.is_empty() {
        steps.push(Step::ReleaseCas { cas: unneeded });
    }
    if windows {
        // Registered again every time (schtasks /Create /F): its program or settings may have moved.
        if let Some(step @ Step::BootTask { .. }) = boot_step(s, env) {
            steps.push(step);
        }
    } else if let Some(sc) = Systemctl::find(env).filter(|_| s.as_root) {
        if let Some((name, text)) = boot_unit_text(s, env, &pool.name)?
            && own_unit_off(&sc, env, &name, &text, false).await?
        {
            steps.push(Step::BootUnit {
                path: service::unit_dir(env).join(&name),
                name,
            });
        }
        if let Some((name, text)) = watch_unit_text(s, env)?
            && own_unit_off(&sc, env, &name, &text, true).await?
        {
            steps.push(Step::WatchUnit {
                path: service::unit_dir(env).join(&name),
                name,
            });
        }
    }
    steps.extend(stale_watch_unit(s, env));
    Ok(Plan { steps })
}
