//! The fake package's `bin/AgentService.js`: the host `runsvc.sh` keeps running under the agent's
//! systemd unit, ported from the real one (`src/Misc/layoutbin/AgentService.js`) because the fake
//! package has no Node.js (its `externals/node20_1/bin/node` runs this).
//!
//! As the real one: the listener is `bin/Agent.Listener` beside the script's own directory, run as
//! `run --startuptype service ARGS` (`run ARGS` after a first argument `interactive`), its output
//! passed on. When it exits with 0 ("stop the service, no retry needed") or 1 ("terminated error")
//! the host stops, and so does the unit; with 2 ("retryable error"), 3 ("updating") or any other code
//! (a signal included) it is launched again 5 s later. SIGINT or SIGTERM: no more launches, SIGINT to
//! the listener. The unit stays active the whole time, however often the listener restarts.

use std::path::Path;
use std::time::Duration;

/// `setTimeout(runService, 5000)`.
const RELAUNCH_DELAY: Duration = Duration::from_secs(5);

/// `node SCRIPT ARGS`: `script` is the path node was given (`./bin/AgentService.js`).
pub fn main(script: &Path, args: &[String]) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(host(script, args))
}

async fn host(script: &Path, args: &[String]) -> i32 {
    // `path.join(__dirname, '../bin/Agent.Listener')`: node's __dirname is the script's real
    // directory (bin.<version> after an update), whose `..` is the agent root.
    let dir = std::fs::canonicalize(script)
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| Path::new("bin").to_owned());
    let listener = dir.join("../bin/Agent.Listener");
    let interactive = args.first().is_some_and(|a| a == "interactive");
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_signal().await;
        let _ = stop_tx.send(true);
    });
    println!("Started running service");
    loop {
        if *stop.borrow() {
            return 0;
        }
        let listener_args: Vec<String> = if interactive {
            println!("Starting Agent listener interactively");
            std::iter::once("run".to_owned())
                .chain(args[1..].iter().cloned())
                .collect()
        } else {
            println!("Starting Agent listener with startup type: service");
            ["run", "--startuptype", "service"]
                .into_iter()
                .map(str::to_owned)
                .chain(args.iter().cloned())
                .collect()
        };
        let mut child = match std::process::Command::new(&listener)
            .args(&listener_args)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                // `childProcess.spawn` failing is logged; nothing launches it again.
                println!("{e}");
                return 0;
            }
        };
        println!("Started listener process");
        let mut interrupted = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(_) => break None,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed(), if !interrupted => {
                    interrupted = true;
                    println!("Shutting down agent listener");
                    println!("Sending SIGINT to agent listener to stop");
                    interrupt(child.id());
                }
            }
        };
        let code = status.and_then(|s| s.code());
        println!(
            "Agent listener exited with error code {}",
            code.map_or("null".to_owned(), |c| c.to_string())
        );
        match code {
            Some(0) => {
                println!(
                    "Agent listener exit with 0 return code, stop the service, no retry needed."
                );
                return 0;
            }
            Some(1) => {
                println!(
                    "Agent listener exit with terminated error, stop the service, no retry needed."
                );
                return 0;
            }
            Some(2) => {
                println!("Agent listener exit with retryable error, re-launch agent in 5 seconds.")
            }
            Some(3) => {
                println!("Agent listener exit because of updating, re-launch agent in 5 seconds.")
            }
            _ => println!(
                "Agent listener exit with undefined return code, re-launch agent in 5 seconds."
            ),
        }
        // The timer runs out even when a stop arrives meanwhile; then nothing is launched.
        tokio::time::sleep(RELAUNCH_DELAY).await;
    }
}

fn interrupt(pid: u32) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGINT);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// SIGINT or SIGTERM (`process.on('SIGINT'|'SIGTERM', gracefulShutdown)`).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    std::future::pending::<()>().await
}
