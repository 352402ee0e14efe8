//! `agent-bootstrap watch`: a scale set that scales in, or evicts a Spot instance, deletes the VM
//! without asking the agent; this unregisters it first, so the pool is not left with an offline
//! agent per deleted instance.
//!
//! Polls Azure Scheduled Events (IMDS). On a `Terminate` or `Preempt` whose `Resources` name this
//! VM (IMDS `compute/name`): disables the agent on the server (no new job), waits for its running
//! job until [`MARGIN`] before `NotBefore`, stops the agent's service, deletes the agent on the
//! server and its local registration, then approves the event so the platform proceeds at once.
//! Other events (`Reboot`, `Redeploy`, `Freeze`) and other VMs' events are logged and left alone.
//! IMDS that does not answer, or an event that disappears before the agent was deleted (cancelled):
//! nothing is removed (a drained agent is enabled again).
//!
//! The saved settings and the boot unit are kept: a Spot VM evicted with the `Deallocate` policy
//! can start again, and the boot unit then registers it again like a reimaged machine.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::agent::AgentDir;
use crate::commands::Target;
use crate::commands::drain::Waited;
use crate::devops::DevOpsClient;
use crate::env::Env;
use crate::error::Error;
use crate::events::{Event, EventsClient};
use crate::interrupt;
use crate::net::Net;
use crate::os::Os;
use crate::service::{AgentUnit, Systemctl};
use crate::settings;
use crate::state;

/// Unregistering starts this long before `NotBefore` at the latest.
pub const MARGIN: Duration = Duration::from_secs(15);
/// Deleting an agent the server still thinks busy (its job was cut short by the stop).
const BUSY_ATTEMPTS: u32 = 3;
const BUSY_DELAY: Duration = Duration::from_secs(5);
/// How long the deregistration waits for the agent dir's lock (a boot's reconcile holds it).
const LOCK_WAIT: Duration = Duration::from_secs(60);

type Signals = tokio::sync::watch::Receiver<(u32, i32)>;

pub async fn run(t: &Target, every: Duration, env: &Env, os: Os, net: &Net) -> Result<u8, Error> {
    let mut signals = interrupt::listen();
    let events = EventsClient::from_env(env, net).map_err(|e| Error::Input(e.to_string()))?;
    // Checked before the first event: a watcher for an agent dir without an agent is a mistake.
    if state::load(&t.paths.state_dir, &t.agent_dir)?.is_none() {
        return Err(Error::Input(format!(
            "no saved settings for --agent-dir {} in {}: install the agent first \
             (agent-bootstrap install --scale-in-drain)",
            t.agent_dir.display(),
            t.paths.state_dir.display()
        )));
    }
    let mut failing = false;
    let vm_name = loop {
        match events.vm_name().await {
            Ok(name) => break name,
            Err(e) => {
                if !failing {
                    tracing::warn!("{e}; trying again every {}s", every.as_secs());
                    failing = true;
                }
                if pause(every, &mut signals).await {
                    return Ok(0);
                }
            }
        }
    };
    tracing::info!(vm = %vm_name, "watching Azure Scheduled Events for a scale-in or eviction of this VM");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut failing = false;
    loop {
        match events.document().await {
            Err(e) => {
                if !failing {
                    tracing::warn!("{e}; nothing is done until it answers");
                    failing = true;
                }
            }
            Ok(doc) => {
                if failing {
                    tracing::info!("IMDS answers again");
                    failing = false;
                }
                for event in &doc.events {
                    if seen.contains(&event.event_id) {
                        continue;
                    }
                    if !event.is_departure() || !event.concerns(&vm_name) {
                        tracing::info!(
                            event = %event.event_id,
                            kind = %event.event_type,
                            resources = ?event.resources,
                            "left alone: {}",
                            if event.is_departure() {
                                "it is for other VMs"
                            } else {
                                "only Terminate and Preempt unregister the agent"
                            }
                        );
                        seen.insert(event.event_id.clone());
                        continue;
                    }
                    match leave(t, event, &events, env, os, net, &mut signals).await {
                        Ok(()) => {
                            seen.insert(event.event_id.clone());
                        }
                        // Tried again at the next look, while the event is there.
                        Err(e) => tracing::error!("{}", crate::report::report(&e)),
                    }
                }
            }
        }
        if pause(every, &mut signals).await {
            return Ok(0);
        }
    }
}

/// Sleeps `every`; true when a stop signal came instead.
async fn pause(every: Duration, signals: &mut Signals) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(every) => false,
        _ = signals.changed() => {
            tracing::info!("{}: stopped watching", interrupt::signal_name(signals.borrow().1));
            true
        }
    }
}

/// Drain, unregister, approve.
async fn leave(
    t: &Target,
    event: &Event,
    events: &EventsClient,
    env: &Env,
    os: Os,
    net: &Net,
    signals: &mut Signals,
) -> Result<(), Error> {
    let now = net.clock().unix_now();
    let left = event
        .not_before_unix()
        .map(|nb| Duration::from_secs(nb.saturating_sub(now)))
        .unwrap_or_default();
    tracing::warn!(
        event = %event.event_id,
        kind = %event.event_type,
        not_before = %event.not_before,
        "this VM is going away: draining and unregistering the agent"
    );
    let until = tokio::time::Instant::now() + left.saturating_sub(MARGIN);
    let saved = state::load(&t.paths.state_dir, &t.agent_dir)?;
    let Some(saved) = saved else {
        tracing::info!("no agent is installed here any more");
        return approve(events, event).await;
    };
    settings::check_saved(&saved, &os)?;
    let tokens = super::saved_tokens(&saved, env, &os, net, false).await?;
    let url = settings::check_url("the saved url", &saved.url)?;
    let devops = DevOpsClient::new(&url, tokens, net);
    let drain = super::drain::Drain::new(&devops, saved.pool_id, saved.agent_id, net);
    drain.disable().await;

    // The running job, until shortly before NotBefore; the event is looked at too: gone means
    // cancelled (IMDS not answering: the event stands).
    let still_there = async || match events.document().await {
        Ok(doc) => doc.events.iter().any(|e| e.event_id == event.event_id),
        Err(_) => true,
    };
    let wait = drain.wait_idle(until, Duration::from_secs(1), still_there);
    tokio::pin!(wait);
    let waited = tokio::select! {
        w = &mut wait => w,
        _ = signals.changed() => {
            tracing::warn!("stop signal during a drain: unregistering now");
            Waited::Idle
        }
    };
    if waited == Waited::Withdrawn {
        tracing::warn!(
            event = %event.event_id,
            "the event was withdrawn before the agent was unregistered: enabling it again"
        );
        drain.enable().await;
        return Ok(());
    }

    let _lock = crate::lock::acquire(&t.paths.state_dir, &t.agent_dir, LOCK_WAIT).await?;
    // The agent's service first: its listener would otherwise keep polling as a deleted agent.
    if saved.service
        && env.is_root()
        && !os.is_windows()
        && let Some(sc) = Systemctl::find(env)
    {
        let unit = AgentUnit::new(&saved.url, &saved.pool, &saved.agent_name);
        if let Err(e) = sc.run(&["stop", &unit.name]).await {
            tracing::warn!("{e}");
        }
    }
    let agent = AgentDir::new(&t.agent_dir, &os);
    // The VM goes at NotBefore: a few quick tries, not remove's five minutes.
    let done =
        super::remove::unregister_with(&saved, env, &os, net, BUSY_ATTEMPTS, BUSY_DELAY).await?;
    tracing::info!("{done}");
    if agent.is_configured() || agent.has_stale_registration() {
        agent.remove_configuration()?;
        tracing::info!("removed the local registration");
    }
    approve(events, event).await
}

async fn approve(events: &EventsClient, event: &Event) -> Result<(), Error> {
    match events.approve(&event.event_id).await {
        Ok(()) => {
            tracing::info!(event = %event.event_id, "approved the event: the platform may proceed now");
            Ok(())
        }
        // The agent is gone already; the platform goes ahead at NotBefore anyway.
        Err(e) => {
            tracing::warn!("could not approve the event: {e}");
            Ok(())
        }
    }
}
