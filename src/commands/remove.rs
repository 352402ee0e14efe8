//! `agent-bootstrap remove`: unregister the agent and undo what install did: stop and delete the
//! agent's unit, delete the agent on the server (retried while it runs a job), delete the local
//! registration, then the boot unit, the CA certificates install added to the system trust store
//! (`crate::trust`) and the saved settings. `--purge` also deletes the agent dir
//! and the package cache. Running it twice is fine.
//!
//! Root does the server side itself, with the organization, pool and agent from its saved settings
//! (`DELETE …/pools/{pool}/agents/{id}`, the call `config.sh remove` makes), and deletes the local
//! files `config.sh remove` deletes (`agent.md` §3.4) by unlinking them. It does not run
//! `config.sh remove`: that would hand the token to scripts the agent user can rewrite, and the
//! listener would send it to whatever server `.agent` names. Without saved settings nothing is
//! unregistered: `.agent` alone is not trusted with a token.

use std::path::Path;
use std::time::Duration;

use crate::agent::AgentDir;
use crate::commands::{Target, install};
use crate::devops::DevOpsClient;
use crate::env::Env;
use crate::error::Error;
use crate::net::Net;
use crate::os::Os;
use crate::output::{AgentRef, Out, Outcome};
use crate::service::{self, AgentUnit, Systemctl};
use crate::settings;
use crate::state;

/// The server refuses to delete an agent that runs a job; try again this often, this long apart
/// (Microsoft's Docker sample retries every 30 s too).
const REMOVE_ATTEMPTS: u32 = 10;
const REMOVE_DELAY: Duration = Duration::from_secs(30);
/// IMDS and Azure DevOps, for one attempt of the deletion.
const NETWORK_BUDGET: Duration = Duration::from_secs(300);

pub async fn run(
    t: &Target,
    purge: bool,
    dry_run: bool,
    env: &Env,
    os: Os,
    net: &Net,
    out: &Out,
) -> Result<(), Error> {
    if dry_run {
        let saved = state::load(&t.paths.state_dir, &t.agent_dir)?;
        let plan = plan(t, purge, env, os, saved.as_ref()).await?;
        return out.outcome(Outcome::new(dry_run_text(t, &plan), None).with_steps(&plan));
    }
    let _lock = crate::lock::acquire(&t.paths.state_dir, &t.agent_dir, install::LOCK_WAIT).await?;
    let done = remove_locked(t, purge, env, os, net).await?;
    out.outcome(done)
}

/// The remove flow, with the agent dir's lock held by the caller (remove, or `run` once its agent
/// has ended).
pub async fn remove_locked(
    t: &Target,
    purge: bool,
    env: &Env,
    os: Os,
    net: &Net,
) -> Result<Outcome, Error> {
    let saved = state::load(&t.paths.state_dir, &t.agent_dir)?;
    remove_known(t, purge, env, os, net, saved).await
}

/// [`remove_locked`] with the saved settings the caller holds in memory (`run`: its settings sit
/// where its jobs' account can rewrite them, so they are not read again to decide where the
/// token goes).
pub async fn remove_known(
    t: &Target,
    purge: bool,
    env: &Env,
    os: Os,
    net: &Net,
    saved: Option<state::Saved>,
) -> Result<Outcome, Error> {
    let removed_agent = saved.as_ref().map(AgentRef::from);
    let steps = plan(t, purge, env, os, saved.as_ref()).await?;
    let mut done: Vec<String> = vec![];
    for step in &steps {
        if let Some(said) = carry_out(step, t, env, os, net, saved.as_ref()).await? {
            done.push(said);
        }
    }
    let text = if done.is_empty() {
        format!("nothing to remove in {}", t.agent_dir.display())
    } else {
        format!("removed: {}", done.join("; "))
    };
    Ok(Outcome::new(text, removed_agent).with_steps(&steps))
}

/// One step of `remove`, as `--dry-run` prints it and a real run carries it out.
#[derive(Debug, Clone)]
enum Step {
    /// Stop, disable and delete the agent's unit (what `svc.sh uninstall` does).
    UninstallUnit {
        unit: String,
    },
    /// Windows: stop and delete the agent's service.
    UninstallWindowsService {
        name: String,
    },
    /// Delete the agent on the server, by the id root saved.
    Unregister {
        name: String,
        id: u64,
    },
    RemoveRegistration,
    RemoveBootTask {
        name: String,
    },
    /// One of agent-bootstrap's own units (the watcher, the boot unit).
    RemoveOwnUnit {
        what: &'static str,
        name: String,
        stop: bool,
    },
    /// A CA certificate another agent dir's install recorded too: left in the store.
    KeepCa {
        subject: String,
    },
    ReleaseCas {
        cas: Vec<state::TrustedCa>,
    },
    DeleteSettings {
        path: std::path::PathBuf,
    },
    Purge {
        dir: std::path::PathBuf,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::UninstallUnit { unit } => {
                write!(f, "systemctl stop and disable {unit}, delete its unit file")
            }
            Step::UninstallWindowsService { name } => write!(f, "sc.exe stop and delete {name}"),
            Step::Unregister { name, id } => write!(
                f,
                "delete agent '{name}' (id {id}) on the server if it is still there (retried \
                 while it runs a job)"
            ),
            Step::RemoveRegistration => write!(
                f,
                "delete the local registration (.agent, .credentials, .credentials_rsaparams and \
                 the agent's settings files)"
            ),
            Step::RemoveBootTask { name } => write!(f, "delete the scheduled task {name}"),
            Step::RemoveOwnUnit { what, name, .. } => {
                write!(f, "stop, disable and delete {what} {name}")
            }
            Step::KeepCa { subject } => write!(
                f,
                "keep the CA certificate '{subject}' in the system trust store (another agent \
                 here needs it)"
            ),
            Step::ReleaseCas { cas } => {
                let names: Vec<_> = cas.iter().map(|c| format!("'{}'", c.subject)).collect();
                write!(
                    f,
                    "take {} (added by install) out of the system trust store",
                    names.join(", ")
                )
            }
            Step::DeleteSettings { path } => {
                write!(f, "delete root's saved settings {}", path.display())
            }
            Step::Purge { dir } => write!(f, "delete {}", dir.display()),
        }
    }
}

/// What removing needs, found by looking only (nothing is changed): a dry run prints it, a real
/// run carries it out, in order.
async fn plan(
    t: &Target,
    purge: bool,
    env: &Env,
    os: Os,
    saved: Option<&state::Saved>,
) -> Result<Vec<Step>, Error> {
    let agent_dir = t.agent_dir.as_path();
    let (state_dir, cache_dir) = (&t.paths.state_dir, &t.paths.cache_dir);
    let agent = AgentDir::new(agent_dir, &os);
    let agent_uid = saved
        .and_then(|s| crate::user::lookup(&s.user).ok().flatten())
        .map(|u| u.uid);
    super::check_agent_dir(agent_dir, env, agent_uid)?;
    let configured = agent.is_configured() || agent.has_stale_registration();
    let mut steps = vec![];
    match saved {
        None if configured => {
            return Err(Error::Input(format!(
                "no saved settings for --agent-dir {} in {}: agent-bootstrap did not install this \
                 agent (or removed it already), so it does not know where to unregister it, and \
                 the agent dir's own settings are not trusted with a token; remove it as its user \
                 with ./config.sh remove",
                agent_dir.display(),
                state_dir.display()
            )));
        }
        None => {}
        Some(saved) => {
            settings::check_saved(saved, &os)?;
            // 1. The service first: no new job may start while the agent is being deleted.
            steps.extend(service_steps(saved, env, os).await?);
            // 2. The registration on the server.
            steps.push(Step::Unregister {
                name: saved.agent_name.clone(),
                id: saved.agent_id,
            });
        }
    }
    // 3. The local registration, as `config.sh remove` deletes it.
    if configured {
        steps.push(Step::RemoveRegistration);
    }
    // 4. The boot task, the watcher and the boot unit.
    steps.extend(own_unit_steps(saved, env, os, agent_dir));
    // 5. The CA certificates install added to the system trust store, unless another agent dir's
    // install recorded them too (a certificate the store had before is never listed).
    if let Some(saved) = saved {
        steps.extend(ca_steps(saved, state_dir, agent_dir));
    }
    // 6. What install remembered, and with --purge the files.
    if saved.is_some() {
        steps.push(Step::DeleteSettings {
            path: state::file_for(state_dir, agent_dir),
        });
    }
    if purge {
        for dir in [agent_dir, cache_dir.as_path()] {
            if fs_err::symlink_metadata(dir).is_ok() {
                steps.push(Step::Purge {
                    dir: dir.to_owned(),
                });
            }
        }
    }
    Ok(steps)
}

/// The agent's service: a systemd unit known to systemd or its directory, or (Windows) what
/// `config.cmd remove` does to the service, without running it as SYSTEM from a dir the service
/// account can write.
async fn service_steps(saved: &state::Saved, env: &Env, os: Os) -> Result<Vec<Step>, Error> {
    let mut steps = vec![];
    if !saved.service || !env.is_root() {
        return Ok(steps);
    }
    if os.is_windows() {
        let name = service::windows::service_name(&saved.url, &saved.pool, &saved.agent_name);
        if service::windows::query(env, &name).await?.exists {
            steps.push(Step::UninstallWindowsService { name });
        }
    } else if let Some(sc) = Systemctl::find(env) {
        let unit = AgentUnit::new(&saved.url, &saved.pool, &saved.agent_name).name;
        if service::unit_dir(env).join(&unit).is_file() || sc.state(&unit).await?.exists {
            steps.push(Step::UninstallUnit { unit });
        }
    }
    Ok(steps)
}

/// The boot task (Windows), or the watcher and the boot unit, where they are.
fn own_unit_steps(saved: Option<&state::Saved>, env: &Env, os: Os, agent_dir: &Path) -> Vec<Step> {
    let mut steps = vec![];
    if !env.is_root() {
        return steps;
    }
    if os.is_windows() {
        let name = saved
            .and_then(|s| s.boot_unit.clone())
            .unwrap_or_else(|| service::windows::boot_task_name(agent_dir));
        if service::windows::task_file(env, &name).is_file() {
            steps.push(Step::RemoveBootTask { name });
        }
        return steps;
    }
    let watch = saved
        .and_then(|s| s.watch_unit.clone())
        .unwrap_or_else(|| service::watch_unit_name(agent_dir));
    let boot = saved
        .and_then(|s| s.boot_unit.clone())
        .unwrap_or_else(|| service::boot_unit_name(agent_dir));
    for (what, name, stop) in [
        ("the scale-in watcher", watch, true),
        ("the boot unit", boot, false),
    ] {
        if service::unit_dir(env).join(&name).is_file() {
            steps.push(Step::RemoveOwnUnit { what, name, stop });
        }
    }
    steps
}

/// The CA certificates install recorded: kept when another agent dir's install recorded them
/// too, otherwise taken out of the system trust store.
fn ca_steps(saved: &state::Saved, state_dir: &Path, agent_dir: &Path) -> Vec<Step> {
    if saved.trusted_cas.is_empty() {
        return vec![];
    }
    let elsewhere = state::trusted_elsewhere(state_dir, agent_dir);
    let (shared, ours): (Vec<_>, Vec<_>) = saved
        .trusted_cas
        .iter()
        .cloned()
        .partition(|c| elsewhere.iter().any(|e| e.sha256 == c.sha256));
    let mut steps: Vec<Step> = shared
        .into_iter()
        .map(|c| Step::KeepCa { subject: c.subject })
        .collect();
    if !ours.is_empty() {
        steps.push(Step::ReleaseCas { cas: ours });
    }
    steps
}

/// Carries out one step; what the text output says about it.
async fn carry_out(
    step: &Step,
    t: &Target,
    env: &Env,
    os: Os,
    net: &Net,
    saved: Option<&state::Saved>,
) -> Result<Option<String>, Error> {
    let agent_dir = t.agent_dir.as_path();
    Ok(match step {
        Step::UninstallUnit { unit } => {
            let sc = Systemctl::require(env)?;
            service::uninstall_agent_unit(env, &sc, unit, agent_dir)
                .await?
                .then(|| "uninstalled the service".to_owned())
        }
        Step::UninstallWindowsService { name } => service::windows::stop_and_delete(env, name)
            .await?
            .then(|| "uninstalled the service".to_owned()),
        Step::Unregister { .. } => {
            let saved = saved.expect("planned from the saved settings");
            Some(unregister(saved, env, &os, net).await?)
        }
        Step::RemoveRegistration => {
            AgentDir::new(agent_dir, &os).remove_configuration()?;
            Some("removed the local registration".into())
        }
        Step::RemoveBootTask { name } => service::windows::remove_boot_task(env, name)
            .await?
            .then(|| format!("removed the boot task {name}")),
        Step::RemoveOwnUnit { what, name, stop } => service::delete_own_unit(env, name, *stop)
            .await?
            .then(|| format!("removed {what} {name}")),
        Step::KeepCa { subject } => Some(format!(
            "kept the CA certificate '{subject}' in the system trust store (another agent here \
             needs it)"
        )),
        Step::ReleaseCas { cas } => {
            let saved = saved.expect("planned from the saved settings");
            let store = crate::trust::Store::for_machine(
                os.is_windows(),
                &crate::host::Facts::current(),
                env,
                saved.ca_file.as_deref().unwrap_or(std::path::Path::new("")),
            );
            let removed: Vec<String> = crate::trust::release(&store, cas, env)
                .await?
                .into_iter()
                .map(|c| {
                    format!(
                        "took the CA certificate '{}' install added out of the system trust store \
                         ({})",
                        c.subject,
                        c.file
                            .as_ref()
                            .map(|f| f.display().to_string())
                            .or(c.thumbprint.map(|t| format!("LocalMachine\\Root {t}")))
                            .unwrap_or_default()
                    )
                })
                .collect();
            (!removed.is_empty()).then(|| removed.join("; "))
        }
        Step::DeleteSettings { .. } => {
            state::delete(&t.paths.state_dir, agent_dir)?;
            None
        }
        Step::Purge { dir } => {
            // Does not follow links inside the agent user's tree.
            std::fs::remove_dir_all(dir).map_err(|source| Error::Io {
                action: "deleting",
                path: dir.clone(),
                source,
            })?;
            Some(format!("deleted {}", dir.display()))
        }
    })
}

/// What a dry run of remove shows.
fn dry_run_text(t: &Target, steps: &[Step]) -> String {
    let header = format!("remove: {}", t.agent_dir.display());
    crate::output::dry_run_text(&header, steps, "nothing to remove")
}

/// Deletes this machine's agent on the server (`DELETE …/agents/{id}`, the call `config.sh remove`
/// makes), from root's saved settings, retried while the server says it runs a job. Another agent
/// that took the name meanwhile is left alone: only the id root recorded is deleted (`.agent`'s
/// id is the agent user's to write, and never authorises a deletion). Says what it did.
pub async fn unregister(
    saved: &state::Saved,
    env: &Env,
    os: &Os,
    net: &Net,
) -> Result<String, Error> {
    unregister_with(saved, env, os, net, REMOVE_ATTEMPTS, REMOVE_DELAY).await
}

/// [`unregister`], trying `attempts` times `delay` apart while the server says the agent runs a
/// job (`watch` has until the VM goes, not minutes).
pub async fn unregister_with(
    saved: &state::Saved,
    env: &Env,
    os: &Os,
    net: &Net,
    attempts: u32,
    delay: Duration,
) -> Result<String, Error> {
    let clock = net.clock().clone();
    let tokens = super::saved_tokens(saved, env, os, net, false).await?;
    let url = settings::check_url("the saved url", &saved.url)?;
    let devops = DevOpsClient::new(&url, tokens.clone(), net);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let budget = clock.budget(NETWORK_BUDGET);
        let pool = saved.pool();
        let found = devops.find_agent(&pool, &saved.agent_name, &budget).await?;
        let Some(server) = found else {
            return Ok(format!(
                "agent '{}' was not registered on the server any more",
                saved.agent_name
            ));
        };
        if server.id != saved.agent_id {
            tracing::warn!(
                server_id = server.id,
                saved_id = saved.agent_id,
                "the pool's agent of this name is another one; it is left alone"
            );
            return Ok(format!(
                "left agent '{}' (id {}) alone: it is not this machine's",
                server.name, server.id
            ));
        }
        match devops.unregister(&pool, &server, &budget).await {
            Ok(()) => {
                return Ok(format!(
                    "unregistered agent '{}' (id {})",
                    saved.agent_name, server.id
                ));
            }
            Err(e) if e.is_agent_busy() && attempt < attempts => {
                tracing::warn!(
                    attempt,
                    "the agent is running a job ({e}); retrying in {}s",
                    delay.as_secs()
                );
                clock.sleep(delay).await;
            }
            Err(e) if e.is_agent_busy() => {
                return Err(Error::Configure {
                    message: format!("gave up after {attempt} attempts: {e}"),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}
