//! What stops an install before it changes anything: another agent in the agent dir, an account
//! that runs programs of its own, a same-named agent that is not this machine's, and access not yet
//! granted (`--wait-for-access`).

use std::time::Duration;

use crate::agent::{AgentSettings, same_server};
use crate::devops::{DevOpsClient, Pool};
use crate::env::Env;
use crate::error::Error;
use crate::net::Net;
use crate::process::RunAs;
use crate::settings::InstallSettings;
use crate::state::Saved;

use super::configure::MACHINE_CAPABILITY;
use super::{Checked, NETWORK_BUDGET};

/// An account the user named (`--user`) that runs programs of its own (not the agent's service,
/// which is stopped first) is not ended without `--end-user-processes`: refused, exit 2.
#[cfg(unix)]
pub(super) fn check_shared_account(
    s: &InstallSettings,
    account: &RunAs,
    c: &Checked,
) -> Result<(), Error> {
    use super::agent_unit;
    use super::plan::ends_user_processes;
    use crate::settings::AgentUser;
    use crate::{service, user};

    if !ends_user_processes(s, Some(account))
        || s.end_user_processes
        || matches!(s.user, AgentUser::Dedicated(_))
    {
        return Ok(());
    }
    let unit = agent_unit(s, &c.pool.name).name;
    let others: Vec<_> = user::processes_of(account.uid)
        .into_iter()
        .filter(|p| !service::process_in_unit(p.pid, &unit))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(user::UserError::Shared {
        name: account.name.clone(),
        running: user::describe(&others),
    }
    .into())
}

#[cfg(not(unix))]
pub(super) fn check_shared_account(
    _: &InstallSettings,
    _: &RunAs,
    _: &Checked,
) -> Result<(), Error> {
    Ok(())
}

pub(super) fn check_same_agent(cfg: &AgentSettings, s: &InstallSettings) -> Result<(), Error> {
    // Before anything is asked, a group's id is not known: any registration of that kind.
    let same_pool = cfg.registered_in(&s.pool, s.group.as_ref().map(|g| (g.kind, None)));
    if same_server(&cfg.server_url, s.url.as_str())
        && same_pool
        && cfg.agent_name.eq_ignore_ascii_case(&s.agent_name)
    {
        return Ok(());
    }
    Err(Error::Input(format!(
        "--agent-dir {} already holds agent '{}' of pool '{}' at {}; \
         remove it first (./config.sh remove, or agent-bootstrap remove) or choose another --agent-dir",
        s.agent_dir.display(),
        cfg.agent_name.escape_debug(),
        cfg.pool_name.as_deref().unwrap_or("?").escape_debug(),
        cfg.server_url.escape_debug(),
    )))
}

/// The pool has an agent of the name this install registers, and this agent dir has no
/// registration: is it this machine's? Yes when root's saved settings for this agent dir name
/// that very agent (its id), or when the agent carries [`MACHINE_CAPABILITY`] with this machine's
/// id (written before configure, so an install killed after the server registered the agent, or
/// a reimaged VM, finds it). Anything else is another machine's (a clone has another VM id and
/// registers under its own name): refused, exit 4, unless `--replace`.
pub(super) fn adopt_or_refuse(
    s: &InstallSettings,
    found: &crate::devops::ServerAgent,
    pool: &Pool,
    machine: Option<&str>,
    previous: Option<&Saved>,
) -> Result<(), Error> {
    let recorded = found.system_capabilities.get(MACHINE_CAPABILITY);
    let saved_id = previous
        .filter(|p| p.pool_id == pool.id && p.agent_name.eq_ignore_ascii_case(&found.name))
        .is_some_and(|p| p.agent_id == found.id);
    if saved_id || (machine.is_some() && recorded.map(String::as_str) == machine) {
        tracing::info!(
            agent = %found.name,
            id = found.id,
            "the pool's agent of this name was registered from this machine (an interrupted \
             install, or this machine reimaged): registering it again in its place"
        );
        return Ok(());
    }
    let by = match recorded {
        Some(m) => format!("registered from another machine ({MACHINE_CAPABILITY} {m})"),
        None => "not registered by agent-bootstrap on this machine".to_owned(),
    };
    if s.replace {
        tracing::warn!(
            agent = %found.name,
            id = found.id,
            "the pool's agent of this name was {by}; taking it over (--replace)"
        );
        return Ok(());
    }
    Err(crate::devops::DevOpsError::NameTakenByAnother {
        pool: pool.name.clone(),
        name: found.name.clone(),
        id: found.id,
        by,
    }
    .into())
}

/// Why `e` may pass by itself once access granted to a new machine has propagated, or `None`
/// when waiting cannot help: the identity not on the VM yet, not a member of the organization
/// yet (401), no Manage on the pool yet, the pool not visible yet. Azure DevOps Server's 401
/// (no Entra token is ever accepted there) is not one of them.
pub(super) fn not_yet_allowed(e: &Error) -> Option<&'static str> {
    use crate::devops::DevOpsError as D;
    use crate::identity::IdentityError as I;
    let identity = |i: &I| {
        matches!(
            i,
            I::NoIdentity { .. } | I::SelectedIdentityNotAssigned { .. }
        )
        .then_some("this machine has no identity yet")
    };
    match e {
        Error::Identity(i) | Error::DevOps(D::Token(i)) => identity(i),
        Error::DevOps(D::Unauthorized { hint, .. }) if *hint != crate::devops::ON_PREMISES_HINT => {
            Some("the organization does not accept the identity yet")
        }
        Error::DevOps(D::NoManagePermission { .. }) => {
            Some("the identity may not manage the pool yet")
        }
        Error::DevOps(D::PoolNotFound { .. }) => {
            Some("the pool is not visible to the identity yet")
        }
        Error::DevOps(D::NoGroupPermission { .. }) => {
            Some("the identity may not manage the deployment group yet")
        }
        // A group's list shows only what the identity may see: a role not yet propagated.
        Error::DevOps(D::GroupNotFound { kind, .. }) => Some(match kind {
            crate::scope::GroupKind::Environment => {
                "the environment is not visible to the identity yet"
            }
            crate::scope::GroupKind::DeploymentGroup => {
                "the deployment group is not visible to the identity yet"
            }
        }),
        _ => None,
    }
}

/// `--wait-for-access`: asks for the token, the organization and the pool (with Manage) until
/// they all answer yes, while the answer is one that propagation changes by itself, with backoff
/// (5 s doubling to 60 s) for up to `limit`, saying each time what it waits for. Any other
/// failure, or the last "not yet" when the time is up, is returned as it is.
pub(super) async fn wait_for_access(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    limit: Duration,
) -> Result<(), Error> {
    let clock = net.clock().clone();
    let until = clock.budget(limit);
    let mut delay = Duration::from_secs(5);
    loop {
        let attempt = async {
            let budget = clock.budget(NETWORK_BUDGET.min(until.remaining(&clock)));
            let tokens = super::super::tokens(&s.identity, env, &s.os, net).await?;
            tokens.get(&budget).await?;
            let devops = DevOpsClient::new(&s.url, tokens, net);
            devops.access(&s.pool, s.group.as_ref(), &budget).await?;
            Ok::<(), Error>(())
        };
        let e = match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let left = until.remaining(&clock);
        let Some(why) = not_yet_allowed(&e) else {
            return Err(e);
        };
        if left < delay {
            tracing::warn!(
                "waited {}s for access (--wait-for-access); still: {why}",
                until.spent(&clock).as_secs()
            );
            return Err(e);
        }
        tracing::warn!(
            "waiting for access: {why}; asking again in {}s ({}s left of --wait-for-access)",
            delay.as_secs(),
            left.as_secs()
        );
        tracing::debug!("{}", crate::report::one_line(&e));
        clock.sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}
