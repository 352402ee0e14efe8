//! `agent-bootstrap remove`: unregister the agent and undo what install did, in the order the
//! agent requires (`agent.md` §3.4, §5.1): `svc.sh stop` and `uninstall` first (`config.sh remove`
//! refuses while `.service` exists), then `config.sh remove` with a fresh token (it needs one),
//! retried while the agent is busy with a job, then the boot unit and the saved settings.
//! `--purge` also deletes the agent dir and the package cache. Running it twice is fine.

use std::path::Path;
use std::time::Duration;

use crate::agent::AgentDir;
use crate::clock::Clock;
use crate::commands::install;
use crate::env::Env;
use crate::error::Error;
use crate::identity::{ImdsClient, Selector};
use crate::os::Os;
use crate::process::RunAs;
use crate::secret::Masker;
use crate::service::{self, Systemctl};
use crate::settings;
use crate::state;

/// `config.sh remove` fails while the agent runs a job; try again this often, this long apart.
const REMOVE_ATTEMPTS: u32 = 10;
const REMOVE_DELAY: Duration = Duration::from_secs(30);

pub async fn run(
    agent_dir: &Path,
    purge: bool,
    env: &Env,
    os: Os,
    clock: Clock,
) -> Result<(), Error> {
    let state_dir = settings::state_dir(env, &os);
    let cache_dir = settings::cache_dir(env, &os);
    let _lock = crate::lock::acquire(&state_dir, agent_dir, install::LOCK_WAIT).await?;
    let saved = state::load(&state_dir, agent_dir)?;
    let agent = AgentDir::new(agent_dir, &os);
    let local = agent.settings()?;
    let mut done: Vec<String> = vec![];

    // 1. The service (config.sh remove refuses while .service exists).
    if let Some(unit) = agent.service_name() {
        service::native_uninstall(env, &agent.root, &unit).await?;
        done.push("uninstalled the service".into());
    }

    // 2. The registration, on the server and locally.
    if let Some(cfg) = &local {
        let selector = Selector::from_saved(saved.as_ref().and_then(|s| s.identity.as_deref()));
        let token = ImdsClient::from_env(env, clock.clone())?
            .token(&selector)
            .await?
            .token;
        let masker = Masker::with(&token);
        let user = agent_owner(&agent, saved.as_ref().map(|s| s.user.as_str()))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let child = super::agent_child(
                "config.sh remove",
                agent.root.join(os.config_script()),
                &agent.root,
                user.as_ref(),
                &token,
                Duration::from_secs(300),
            )
            .args(["remove", "--unattended", "--auth", "pat"]);
            let line = match super::agent_script(child, &masker).await {
                Ok(()) => break,
                Err(Error::Configure { message }) => message,
                Err(e) => return Err(e),
            };
            if attempt >= REMOVE_ATTEMPTS {
                return Err(Error::Configure {
                    message: format!("gave up after {attempt} attempts; last: {line}"),
                });
            }
            // The agent may be running a job (Microsoft's Docker sample retries every 30 s too).
            tracing::warn!(
                attempt,
                "config.sh remove failed ({line}); retrying in {}s",
                REMOVE_DELAY.as_secs()
            );
            clock.sleep(REMOVE_DELAY).await;
        }
        done.push(format!(
            "unregistered agent '{}' (id {})",
            cfg.agent_name, cfg.agent_id
        ));
    } else if agent.has_stale_registration() {
        agent.remove_registration()?;
        done.push("removed a stale local registration".into());
    }

    // 3. The boot unit.
    let unit_name = saved
        .as_ref()
        .and_then(|s| s.boot_unit.clone())
        .unwrap_or_else(|| service::boot_unit_name(agent_dir));
    let unit_path = service::unit_dir(env).join(&unit_name);
    if unit_path.is_file() {
        if let Some(sc) = Systemctl::find() {
            sc.run(&["disable", &unit_name]).await?;
        }
        fs_err::remove_file(&unit_path).map_err(|source| Error::Io {
            action: "removing",
            path: unit_path.clone(),
            source,
        })?;
        if let Some(sc) = Systemctl::find() {
            sc.run(&["daemon-reload"]).await?;
        }
        done.push(format!("removed the boot unit {unit_name}"));
    }

    // 4. What install remembered, and with --purge the files.
    if saved.is_some() {
        state::delete(&state_dir, agent_dir)?;
    }
    if purge {
        for dir in [agent_dir, cache_dir.as_path()] {
            if dir.exists() {
                fs_err::remove_dir_all(dir).map_err(|source| Error::Io {
                    action: "deleting",
                    path: dir.to_owned(),
                    source,
                })?;
                done.push(format!("deleted {}", dir.display()));
            }
        }
    }
    if done.is_empty() {
        println!("nothing to remove in {}", agent_dir.display());
    } else {
        println!("removed: {}", done.join("; "));
    }
    Ok(())
}

/// The account that owns the agent's files (the one that configured it).
fn agent_owner(agent: &AgentDir, saved_user: Option<&str>) -> Result<Option<RunAs>, Error> {
    if let Some(name) = saved_user
        && let Some(u) = crate::user::lookup(name)?
    {
        return Ok(Some(u));
    }
    Ok(crate::user::owner_of(&agent.root.join(".agent")))
}
