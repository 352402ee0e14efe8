//! `agent-bootstrap run`: the container entrypoint. An agent that lives exactly as long as its
//! container, and never outlives it on the server.
//!
//! Token → preflight → package (one baked into the image is used as it is) → configure as the
//! account running us (the install flow, without service or boot unit) → the listener in the
//! foreground → unregister, however the agent ended (its own end, a crash, a stop) → exit with the
//! agent's exit code.
//!
//! The listener runs as the agent's own `run-docker.sh` runs it (`src/Misc/layoutroot/run-docker.sh`):
//! `bin/Agent.Listener run --startuptype service` (`run --once` under `--once`), and an exit for an
//! update (3, `Constants.Agent.ReturnCode.AgentUpdating`; 4, `RunOnceAgentUpdating`, under
//! `--once`) is never an end: the listener left its update script running in its process group
//! (`SelfUpdater.cs`, `update.sh.template`), which swaps `bin` and `externals` to the new version
//! once the listener is gone. We wait for that group to be empty (what is still in it after
//! [`UPDATE_WAIT`] is killed), for at least [`UPDATE_DELAY`] after the exit and for
//! `bin/Agent.Listener` to be executable again, then run the new version. With the service startup
//! type the update script never starts `run.sh` in the background itself (it does for an
//! interactive listener, `Agent.cs` `restartInteractiveAgent`), so the only listener is ours. Every
//! other exit code ends the run, as in `run-docker.sh`.
//!
//! A stop (SIGTERM from the container runtime, Ctrl-C) drains first: the agent is disabled on the
//! server so no new job is assigned, a running job may go on for `--stop-grace` seconds, then the
//! agent gets SIGINT (what its own service host sends; the listener ends cleanly on it) and, if it
//! has not ended after [`AGENT_STOP_WAIT`], SIGKILL. A second signal skips the wait. A stop that
//! arrives while the agent is still being configured stops configuration and unregisters whatever
//! got registered; one that arrives while the agent updates itself stops the update.
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
use crate::output::Out;
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
/// How long the listener's update script may run after the listener exited for an update (it
/// waits for the listener's pid to be gone, a second more, then renames and links two directories)
/// before what is left of the listener's process tree is killed.
pub const UPDATE_WAIT: Duration = Duration::from_secs(60);
/// `run-docker.sh`: at least 5 s between an exit for an update and the next run…
const UPDATE_DELAY: Duration = Duration::from_secs(5);
/// …and at most 15 s more for `bin/Agent.Listener` to be executable again.
const UPDATE_READY_WAIT: Duration = Duration::from_secs(15);
/// `Constants.Agent.ReturnCode.AgentUpdating` and `RunOnceAgentUpdating`.
const AGENT_UPDATING: i32 = 3;
const RUN_ONCE_AGENT_UPDATING: i32 = 4;

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
                tracing::error!("{}", crate::report::report(&e));
            }
            return Ok(code::SIGNALLED + signal as u8);
        }
    };
    match configured {
        Ok(done) => Out::text().outcome(done)?,
        Err(e) => {
            // A configuration that failed after registering leaves saved settings: unregister.
            if let Err(e) = unregister(&target, env, i.os, net).await {
                tracing::error!("{}", crate::report::report(&e));
            }
            return Err(e);
        }
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
    match unregistered {
        Ok(done) => Out::text().outcome(done)?,
        Err(e) => {
            tracing::error!(
                "the agent ended (exit code {code}) but could not be unregistered; \
                 `agent-bootstrap prune` removes it once it has been offline long enough"
            );
            return Err(e);
        }
    }
    tracing::info!(code, "the agent ended and was unregistered");
    Ok(code)
}

async fn unregister(target: &Target, env: &Env, os: Os, net: &Net) -> Result<(), Error> {
    let done = remove::remove_locked(target, false, env, os, net).await?;
    Out::text().outcome(done)
}

/// Runs the listener until the agent ends, again after each of its updates; on a stop, drains it
/// first. Returns the agent's exit code.
async fn run_agent(
    s: &RunSettings,
    env: &Env,
    net: &Net,
    saved: &Saved,
    signals: &mut Signals,
) -> Result<u8, Error> {
    let i = &s.install;
    let agent = AgentDir::new(&i.agent_dir, &i.os);
    let listener = agent.root.join(agent.listener);
    loop {
        let slot = TreeSlot::default();
        let mut child = Child::new("Agent.Listener", &listener, env)
            .args(["run"])
            .base_env(env.for_agent())
            .cwd(&agent.root)
            .timeout(Duration::MAX)
            .tree_slot(slot.clone());
        // As run-docker.sh: the service startup type, so that an update never starts a second
        // listener outside our supervision (under --once the update script starts none anyway).
        child = if s.once {
            child.args(["--once"])
        } else {
            child.args(["--startuptype", "service"])
        };
        // run.sh refuses root without it, as config.sh does.
        child = crate::agent::config::allow_root(child, env.is_root() && !i.os.is_windows());
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
        if signal.is_none() && matches!(code, AGENT_UPDATING | RUN_ONCE_AGENT_UPDATING) {
            match await_update(&listener, &slot, code, signals).await {
                None => continue,
                Some(end) => return Ok(end),
            }
        }
        return Ok(match (u8::try_from(code), signal) {
            (Ok(c), _) => c,
            // Killed: as a shell reports it.
            (Err(_), Some(sig)) => code::SIGNALLED + sig as u8,
            (Err(_), None) => code::INTERNAL,
        });
    }
}

/// After an exit for an update (see the module's documentation): `None` once the new version can
/// run, else the code to end with (1 when the update did not complete, as `run-docker.sh` exits;
/// 128 + the signal when a stop arrived meanwhile, the update stopped).
async fn await_update(
    listener: &std::path::Path,
    slot: &TreeSlot,
    code: i32,
    signals: &mut Signals,
) -> Option<u8> {
    tracing::info!(
        code,
        "the agent exited to update itself; waiting for its update to finish to run it again"
    );
    let exited = tokio::time::Instant::now();
    let tree = slot.get();
    let mut killed = false;
    loop {
        let empty = tree.is_none_or(crate::platform::ProcessTree::is_empty);
        if empty && exited.elapsed() >= UPDATE_DELAY {
            break;
        }
        if !empty && !killed && exited.elapsed() >= UPDATE_WAIT {
            tracing::warn!(
                wait_s = UPDATE_WAIT.as_secs(),
                "processes the agent left when it exited to update are still running; killing them"
            );
            if let Some(t) = tree {
                t.kill(true);
            }
            killed = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = signals.changed() => {
                let signal = signals.borrow_and_update().1;
                tracing::warn!(
                    "{} while the agent was updating itself: stopping its update",
                    interrupt::signal_name(signal)
                );
                if let Some(t) = tree {
                    t.kill(true);
                }
                return Some(code::SIGNALLED + signal as u8);
            }
        }
    }
    let ready_by = tokio::time::Instant::now() + UPDATE_READY_WAIT;
    while !executable(listener) {
        if tokio::time::Instant::now() >= ready_by {
            tracing::error!(
                "the agent's update did not complete: {} is not there {} s after it exited \
                 (its log: _diag/SelfUpdate-*.log.failed)",
                listener.display(),
                (UPDATE_DELAY + UPDATE_READY_WAIT).as_secs()
            );
            return Some(code::INTERNAL);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = signals.changed() => {
                let signal = signals.borrow_and_update().1;
                return Some(code::SIGNALLED + signal as u8);
            }
        }
    }
    match updated_version(listener) {
        Some(v) => tracing::info!(version = %v, "the agent updated itself; running it again"),
        None => tracing::info!("running the agent again"),
    }
    None
}

/// `bin` is a link to `bin.<version>` after an update (only logged: the agent user wrote it).
fn updated_version(listener: &std::path::Path) -> Option<String> {
    let bin = listener.parent()?;
    let target = fs_err::read_link(bin).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    let version = name.strip_prefix("bin.")?;
    (!version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c)))
    .then(|| version.to_owned())
}

/// What `run-docker.sh` waits for: `[ -x bin/Agent.Listener ]` (links followed).
fn executable(path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
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
        Err(e) => tracing::warn!("cannot drain on the server: {}", crate::report::report(&e)),
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
