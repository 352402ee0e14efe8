//! `agent-bootstrap run`: the container entrypoint. An agent that lives exactly as long as its
//! container, and never outlives it on the server.
//!
//! Token → preflight → package (one baked into the image is used as it is) → configure as the
//! account running us (the install flow, without service or boot unit) → `run.sh [--once]` in the
//! foreground → unregister, however the agent ended (its own end, a crash, a stop) → exit with the
//! agent's exit code.
//!
//! A stop (SIGTERM from the container runtime, Ctrl-C) drains first: the agent is disabled on the
//! server so no new job is assigned, a running job may go on for `--stop-grace` seconds, then the
//! agent gets SIGINT (what its own service host sends; the listener ends cleanly on it) and, if it
//! has not ended after [`AGENT_STOP_WAIT`], SIGKILL. A second signal skips the wait. A stop that
//! arrives while the agent is still being configured stops configuration and unregisters whatever
//! got registered.
//!
//! The agent starts from the container's environment less every credential
//! ([`Env::for_agent`]): the listener uploads its environment as capabilities, which anyone who can
//! view the pool reads, and its jobs inherit it. The token goes only to `config.sh`.
//!
//! Unregistering is the remove flow (`DELETE` from root's saved settings, then the local files), not
//! `config.sh remove`: the token stays out of scripts the jobs could have rewritten.

use std::time::Duration;

use crate::agent::AgentDir;
use crate::commands::{Target, install, remove};
use crate::devops::DevOpsClient;
use crate::env::Env;
use crate::error::{Error, code};
use crate::interrupt;
use crate::net::Net;
use crate::os::Os;
use crate::process::{self, Child, Finished, ProcessError, TreeSlot};
use crate::progress::Progress;
use crate::settings::{Paths, RunSettings};
use crate::state::{self, Saved};

/// How long the agent has to end after SIGINT before it is killed.
pub const AGENT_STOP_WAIT: Duration = Duration::from_secs(15);
/// How long configuration has to end once a stop arrived during it.
const SETUP_STOP_WAIT: Duration = Duration::from_secs(15);
/// How often the server is asked whether the agent still runs a job.
const JOB_POLL: Duration = Duration::from_secs(1);
/// An agent that keeps exiting for an update (4) is run again at most this often.
const UPDATE_RERUNS: u32 = 3;

type Signals = tokio::sync::watch::Receiver<(u32, i32)>;
type AgentTask = tokio::task::JoinHandle<Result<Finished, ProcessError>>;

pub async fn run(s: &RunSettings, env: &Env, net: &Net, progress: &Progress) -> Result<u8, Error> {
    let i = &s.install;
    // Jobs run as this process's own account (a container's user) and could read its
    // credentials (AZP_TOKEN, AZURE_CLIENT_SECRET, IDENTITY_HEADER, a proxy password) from
    // /proc/<pid>/environ or its memory (ptrace, /proc/<pid>/mem). Not dumpable, the kernel makes
    // those root's (proc(5), PR_SET_DUMPABLE in prctl(2)); the agent's own processes get their
    // flag back at execve, so the listener and jobs are unaffected.
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        return Err(Error::Configure {
            message: format!(
                "cannot hide this process's credentials from its jobs (PR_SET_DUMPABLE: {e})"
            ),
        });
    }
    install::check_location(i, env)?;
    let mut signals = interrupt::listen();
    let _lock = crate::lock::acquire(&i.state_dir, &i.agent_dir, install::LOCK_WAIT).await?;
    let target = Target {
        agent_dir: i.agent_dir.clone(),
        paths: Paths {
            state_dir: i.state_dir.clone(),
            cache_dir: i.cache_dir.clone(),
            default_agent_dir: i.agent_dir.clone(),
        },
    };

    // 1. Configure (the install flow as this account).
    let setup = install::run_locked(i, env, net, progress, "configured");
    tokio::pin!(setup);
    let configured = tokio::select! {
        r = &mut setup => r,
        _ = signals.changed() => {
            let signal = signals.borrow_and_update().1;
            tracing::warn!(
                "{} before the agent ran: stopping its configuration",
                interrupt::signal_name(signal)
            );
            interrupt::request(signal);
            let _ = tokio::time::timeout(SETUP_STOP_WAIT, &mut setup).await;
            interrupt::sweep();
            if let Err(e) = unregister(&target, env, i.os, net).await {
                tracing::error!("{}", crate::error::report(&e));
            }
            return Ok(code::SIGNALLED + signal as u8);
        }
    };
    if let Err(e) = configured {
        // A configuration that failed after registering leaves saved settings: unregister.
        if let Err(e) = unregister(&target, env, i.os, net).await {
            tracing::error!("{}", crate::error::report(&e));
        }
        return Err(e);
    }
    let saved = state::load(&i.state_dir, &i.agent_dir)?.ok_or_else(|| Error::Configure {
        message: "the agent was configured but no settings were saved".into(),
    })?;

    // 2. The agent, in the foreground.
    let ran = run_agent(s, env, net, &saved, &mut signals).await;

    // 3. Unregister, whatever happened, from the settings read before any job ran: the files
    // are this account's, which its jobs could have rewritten to send the token elsewhere.
    let unregistered = remove::remove_known(&target, false, env, i.os, net, Some(saved)).await;
    let code = ran?;
    if let Err(e) = unregistered {
        tracing::error!(
            "the agent ended (exit code {code}) but could not be unregistered; `agent-bootstrap \
             prune` removes it once it has been offline long enough"
        );
        return Err(e);
    }
    tracing::info!(code, "the agent ended and was unregistered");
    Ok(code)
}

async fn unregister(target: &Target, env: &Env, os: Os, net: &Net) -> Result<(), Error> {
    remove::remove_locked(target, false, env, os, net).await
}

/// Runs `run.sh` until the agent ends; on a stop, drains it first. Returns the agent's exit code.
async fn run_agent(
    s: &RunSettings,
    env: &Env,
    net: &Net,
    saved: &Saved,
    signals: &mut Signals,
) -> Result<u8, Error> {
    let i = &s.install;
    let agent = AgentDir::new(&i.agent_dir, &i.os);
    let script = agent.root.join(i.os.run_script());
    let mut reruns = 0;
    loop {
        let slot = TreeSlot::default();
        let mut child = Child::new(i.os.run_script(), &script, env)
            .base_env(env.for_agent())
            .cwd(&agent.root)
            .timeout(Duration::MAX)
            .tree_slot(slot.clone());
        if s.once {
            child = child.args(["--once"]);
        }
        // run.sh refuses root without it, as config.sh does.
        if env.is_root() && !i.os.is_windows() {
            child = child.env("AGENT_ALLOW_RUNASROOT", "1");
        }
        tracing::info!(command = %child.display(), "running the agent in the foreground");
        let mut task: AgentTask = tokio::task::spawn_blocking(move || {
            process::run(&child, &crate::secret::Masker::new())
        });
        let (finished, signal) = tokio::select! {
            r = &mut task => (r.expect("the agent's runner panicked"), None),
            _ = signals.changed() => {
                let signal = signals.borrow_and_update().1;
                (stop(s, env, net, saved, &slot, &mut task, signals, signal).await, Some(signal))
            }
        };
        let finished = finished.map_err(Error::AgentRun)?;
        let code = finished.code;
        if code == 4 && signal.is_none() && reruns < UPDATE_RERUNS {
            reruns += 1;
            tracing::warn!("the agent exited for an update (4); running it again");
            continue;
        }
        return Ok(match (u8::try_from(code), signal) {
            (Ok(c), _) => c,
            // Killed: as a shell reports it.
            (Err(_), Some(sig)) => code::SIGNALLED + sig as u8,
            (Err(_), None) => code::INTERNAL,
        });
    }
}

/// The drain: no new job, the running one gets `--stop-grace`, then SIGINT, then SIGKILL.
#[allow(clippy::too_many_arguments)]
async fn stop(
    s: &RunSettings,
    env: &Env,
    net: &Net,
    saved: &Saved,
    slot: &TreeSlot,
    task: &mut AgentTask,
    signals: &mut Signals,
    signal: i32,
) -> Result<Finished, ProcessError> {
    tracing::warn!(
        grace_s = s.stop_grace.as_secs(),
        "{}: the agent takes no new job; a running job may go on for --stop-grace",
        interrupt::signal_name(signal)
    );
    let until = tokio::time::Instant::now() + s.stop_grace;
    match super::saved_tokens(saved, env, &s.install.os, net, false).await {
        Err(e) => tracing::warn!("cannot drain on the server: {}", crate::error::report(&e)),
        Ok(tokens) => {
            let devops = DevOpsClient::new(&s.install.url, tokens, net);
            let drain = super::drain::Drain::new(&devops, saved.pool_id, saved.agent_id, net);
            drain.disable().await;
            let wait = drain.wait_idle(until, JOB_POLL, async || true);
            tokio::pin!(wait);
            tokio::select! {
                r = &mut *task => return r.expect("the agent's runner panicked"),
                _ = &mut wait => {}
                _ = signals.changed() => {
                    tracing::warn!("a second stop signal: stopping the agent now");
                }
            }
        }
    }
    if let Some(tree) = slot.get() {
        tracing::info!("stopping the agent (SIGINT)");
        tree.interrupt();
    }
    tokio::select! {
        r = &mut *task => return r.expect("the agent's runner panicked"),
        _ = tokio::time::sleep(AGENT_STOP_WAIT) => {}
    }
    tracing::warn!(
        wait_s = AGENT_STOP_WAIT.as_secs(),
        "the agent did not end after SIGINT; killing it"
    );
    if let Some(tree) = slot.get() {
        tree.kill(true);
    }
    task.await.expect("the agent's runner panicked")
}
