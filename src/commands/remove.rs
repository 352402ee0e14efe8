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
    env: &Env,
    os: Os,
    net: &Net,
    out: &Out,
) -> Result<(), Error> {
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
    let agent_dir = t.agent_dir.as_path();
    let removed_agent = saved.as_ref().map(AgentRef::from);
    let (state_dir, cache_dir) = (&t.paths.state_dir, &t.paths.cache_dir);
    let agent = AgentDir::new(agent_dir, &os);
    let agent_uid = saved
        .as_ref()
        .and_then(|s| crate::user::lookup(&s.user).ok().flatten())
        .map(|u| u.uid);
    super::check_agent_dir(agent_dir, env, agent_uid)?;
    let mut done: Vec<String> = vec![];

    match &saved {
        None if agent.is_configured() || agent.has_stale_registration() => {
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
            if saved.service
                && env.is_root()
                && !os.is_windows()
                && let Some(sc) = Systemctl::find(env)
            {
                let unit = AgentUnit::new(&saved.url, &saved.pool, &saved.agent_name);
                if service::uninstall_agent_unit(env, &sc, &unit.name, agent_dir).await? {
                    done.push("uninstalled the service".into());
                }
            }
            // Windows: what `config.cmd remove` does to the service, without running it as
            // SYSTEM from a dir the service account can write.
            if saved.service && env.is_root() && os.is_windows() {
                let name =
                    service::windows::service_name(&saved.url, &saved.pool, &saved.agent_name);
                if service::windows::stop_and_delete(env, &name).await? {
                    done.push("uninstalled the service".into());
                }
            }
            // 2. The registration on the server.
            done.push(unregister(saved, env, &os, net).await?);
        }
    }

    // 3. The local registration, as `config.sh remove` deletes it.
    if agent.is_configured() || agent.has_stale_registration() {
        agent.remove_configuration()?;
        done.push("removed the local registration".into());
    }

    // 4. The boot unit (Windows: the boot task).
    if os.is_windows() {
        let task = saved
            .as_ref()
            .and_then(|s| s.boot_unit.clone())
            .unwrap_or_else(|| service::windows::boot_task_name(agent_dir));
        if env.is_root() && service::windows::remove_boot_task(env, &task).await? {
            done.push(format!("removed the boot task {task}"));
        }
    }
    // The watcher (`--scale-in-drain`) and the boot unit.
    let watch_name = saved
        .as_ref()
        .and_then(|s| s.watch_unit.clone())
        .unwrap_or_else(|| service::watch_unit_name(agent_dir));
    let boot_name = saved
        .as_ref()
        .and_then(|s| s.boot_unit.clone())
        .unwrap_or_else(|| service::boot_unit_name(agent_dir));
    for (what, unit_name, stop) in [
        ("the scale-in watcher", watch_name, true),
        ("the boot unit", boot_name, false),
    ] {
        if env.is_root()
            && !os.is_windows()
            && service::delete_own_unit(env, &unit_name, stop).await?
        {
            done.push(format!("removed {what} {unit_name}"));
        }
    }

    // 5. The CA certificates install added to the system trust store, unless another agent dir's
    // install recorded them too (a certificate the store had before is never listed).
    if let Some(saved) = saved.as_ref().filter(|s| !s.trusted_cas.is_empty()) {
        let elsewhere = state::trusted_elsewhere(state_dir, agent_dir);
        let (shared, ours): (Vec<_>, Vec<_>) = saved
            .trusted_cas
            .iter()
            .cloned()
            .partition(|c| elsewhere.iter().any(|e| e.sha256 == c.sha256));
        for c in &shared {
            done.push(format!(
                "kept the CA certificate '{}' in the system trust store (another agent here \
                 needs it)",
                c.subject
            ));
        }
        let store = crate::trust::Store::for_machine(
            os.is_windows(),
            &crate::host::Facts::current(),
            env,
            saved.ca_file.as_deref().unwrap_or(std::path::Path::new("")),
        );
        for c in crate::trust::release(&store, &ours, env).await? {
            done.push(format!(
                "took the CA certificate '{}' install added out of the system trust store ({})",
                c.subject,
                c.file
                    .as_ref()
                    .map(|f| f.display().to_string())
                    .or(c.thumbprint.map(|t| format!("LocalMachine\\Root {t}")))
                    .unwrap_or_default()
            ));
        }
    }

    // 6. What install remembered, and with --purge the files.
    if saved.is_some() {
        state::delete(state_dir, agent_dir)?;
    }
    if purge {
        for dir in [agent_dir, cache_dir.as_path()] {
            if fs_err::symlink_metadata(dir).is_ok() {
                // Does not follow links inside the agent user's tree.
                std::fs::remove_dir_all(dir).map_err(|source| Error::Io {
                    action: "deleting",
                    path: dir.to_owned(),
                    source,
                })?;
                done.push(format!("deleted {}", dir.display()));
            }
        }
    }
    let text = if done.is_empty() {
        format!("nothing to remove in {}", agent_dir.display())
    } else {
        format!("removed: {}", done.join("; "))
    };
    Ok(Outcome::new(text, removed_agent))
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
        let found = devops
            .find_agent(saved.pool_id, &saved.agent_name, &budget)
            .await?;
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
        match devops.delete_agent(saved.pool_id, server.id, &budget).await {
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
