//! What happens around the install flow: a throttled Azure DevOps, budgets that must add up, a
//! token that expires during a long run, SIGTERM and Ctrl-C, `kill -9` debris, damaged unit files,
//! and a person without root on a machine that runs systemd.

// These tests drive the Linux binary as root; the Windows build is tested by tests/windows.rs.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_sim::Scripted;
use common::*;

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `cond` holds (checked every 50 ms), or panics after `limit`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the child to end, at most `limit`; returns its run.
fn finish(w: &World, mut child: Child, limit: Duration) -> Run {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "the run did not end within {limit:?} of the signal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    w.assert_no_token_leak(&run);
    run
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn partials(w: &World) -> Vec<String> {
    w.cache_files()
        .into_iter()
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

fn staging_exists(w: &World) -> bool {
    !w.staging_leftovers().is_empty()
}

#[test]
fn throttling_by_azure_devops_is_waited_out_as_it_asks() {
    let w = World::new();
    for _ in 0..3 {
        w.sim.state().ado_script.push_back(Scripted::throttled(20));
    }
    let run = w.install(&[]);
    run.assert_code(0);
    let waits = retry_waits(&run.stderr);
    assert_eq!(waits.len(), 3, "{}", run.stderr);
    // Never shorter than Retry-After, lengthened by at most 10 % of jitter.
    assert!(waits.iter().all(|w| (20.0..=22.0).contains(w)), "{waits:?}");
    assert!(
        run.stderr.contains("rate limited: resource Core"),
        "{}",
        run.stderr
    );
    assert_eq!(
        w.requests()
            .iter()
            .filter(|r| r.caller == "scripted")
            .count(),
        3
    );
}

#[test]
fn a_throttling_wait_longer_than_the_budget_fails_at_once() {
    let w = World::new();
    for _ in 0..3 {
        w.sim
            .state()
            .ado_script
            .push_back(Scripted::throttled(3600));
    }
    let run = w.install(&[]);
    run.assert_code(4);
    assert!(run.stderr.contains("HTTP 429"), "{}", run.stderr);
    assert!(
        retry_waits(&run.stderr).is_empty(),
        "no early retry: {}",
        run.stderr
    );
    assert!(!w.agent_dir().exists());
}

#[test]
fn reconcile_spends_one_network_budget_for_imds_and_azure_devops_together() {
    let w = installed();
    w.sim.state().ado_down = true;
    for _ in 0..6 {
        w.sim.state().imds_script.push_back(Scripted::status(503));
    }
    let run = w.reconcile();
    run.assert_code(4);
    let total: f64 = retry_waits(&run.stderr).iter().sum();
    // Five minutes for the token and the agent lookup together, not five minutes each.
    assert!((250.0..=300.5).contains(&total), "{total}\n{}", run.stderr);
}

#[test]
fn the_token_is_renewed_before_it_expires_during_a_long_remove() {
    let w = installed();
    {
        let mut st = w.sim.state();
        st.token_lifetime = 400;
        st.agent_busy = 8;
    }
    let first_new = w.issued_tokens().len();
    let dir = w.agent_dir();
    let run = w.run(&["remove", "--agent-dir", dir.to_str().unwrap()]);
    run.assert_code(0);
    assert!(run.stderr.contains("about to expire"), "{}", run.stderr);
    let issued = w.sim.state().token_order.len();
    assert!(issued >= first_new + 2, "a new token was fetched");
    let deletes: Vec<_> = w
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 9);
    assert_eq!(deletes[0].token, Some(first_new));
    assert!(
        deletes.last().unwrap().token > Some(first_new),
        "the last attempt used the renewed token"
    );
    assert!(w.server_agents(1).is_empty());
}

#[test]
fn sigterm_during_the_download_stops_at_once_and_leaves_nothing() {
    let w = World::with(|c| c.throttle = Some(250_000));
    let child = spawn(w.install_command(&[]));
    wait_for(Duration::from_secs(20), "the download to start", || {
        staging_exists(&w) && !partials(&w).is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child, Duration::from_secs(8));
    run.assert_code(143);
    assert!(run.stderr.contains("stopped by SIGTERM"), "{}", run.stderr);
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );
    assert!(partials(&w).is_empty(), "{:?}", w.cache_files());
    assert!(!w.agent_dir().exists());
    assert!(w.server_agents(1).is_empty());
}

#[test]
fn ctrl_c_during_configuration_stops_the_agents_whole_process_group() {
    let w = World::new();
    w.make_configure_loop();
    let root = w.agent_dir().display().to_string();
    let child = spawn(w.install_command(&["--config-timeout", "600", "--replace"]));
    wait_for(Duration::from_secs(30), "config.sh to run", || {
        process_running(&["fake-listener", &root])
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let run = finish(&w, child, Duration::from_secs(8));
    run.assert_code(130);
    assert!(run.stderr.contains("stopped by SIGINT"), "{}", run.stderr);
    wait_for(Duration::from_secs(5), "the listener to be gone", || {
        !process_running(&["fake-listener", &root])
    });
    assert!(w.staging_leftovers().is_empty());
}

#[test]
fn what_kill_9_leaves_is_cleaned_up_by_the_next_run() {
    let w = World::with(|c| c.throttle = Some(500_000));
    let child = spawn(w.install_command(&[]));
    wait_for(Duration::from_secs(20), "the download to start", || {
        staging_exists(&w) && !partials(&w).is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait_with_output();
    assert!(staging_exists(&w), "kill -9 leaves its staging directory");
    assert!(!partials(&w).is_empty(), "and its partial download");

    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("removed what an interrupted run left"),
        "{}",
        run.stderr
    );
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );
    assert!(partials(&w).is_empty(), "{:?}", w.cache_files());
}

#[test]
fn a_damaged_unit_of_ours_is_rewritten() {
    let w = installed();
    let path = w.units_dir().join(UNIT);
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, "[Unit]\nDescrip").unwrap();
    let run = w.reconcile();
    run.assert_code(0);
    assert!(
        run.stdout.contains("reinstalled the service"),
        "{}",
        run.stdout
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
    // Written atomically: no temporary file left beside it.
    assert!(
        !std::fs::read_dir(w.units_dir())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with('.'))
    );
}

#[test]
fn settings_are_saved_before_the_boot_unit_is_enabled() {
    let w = World::new();
    std::fs::write(w.sim.systemd_dir().join("fail-enable"), "agent-bootstrap-").unwrap();
    let run = w.install(&[]);
    run.assert_code(7);
    // A boot unit that exists always finds its settings.
    let saved = w.saved_settings_files();
    assert_eq!(saved.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved[0]).unwrap()).unwrap();
    let boot = v["boot_unit"].as_str().unwrap().to_owned();
    assert!(w.units_dir().join(&boot).is_file());
    // Fixed by running install again.
    std::fs::remove_file(w.sim.systemd_dir().join("fail-enable")).unwrap();
    w.install(&[]).assert_code(0);
    assert!(w.unit_enabled(&boot));
    w.reconcile().assert_code(0);
}

#[test]
fn without_root_on_a_systemd_machine_everything_lives_in_the_home_directory() {
    let w = World::new();
    let (user, home) = w.nobody_home();
    let url = w.org_url();
    let mut cmd = w.command(&[
        "install",
        "--url",
        &url,
        "--agent-name",
        "laptop",
        "--no-service",
    ]);
    cmd.env("HOME", &home)
        .env("AGENT_BOOTSTRAP_TEST_SYSTEMD", "yes")
        .env_remove("AGENT_BOOTSTRAP_STATE_DIR")
        .env_remove("AGENT_BOOTSTRAP_CACHE_DIR")
        .env_remove("AGENT_BOOTSTRAP_UNIT_DIR");
    let run = w.run_cmd(as_user(&cmd, &user));
    run.assert_code(0);
    assert!(
        run.stderr.contains("not running as root: no boot unit"),
        "{}",
        run.stderr
    );
    let agent = home.join("azure-pipelines-agent");
    assert!(agent.join(".agent").is_file());
    assert_eq!(owner(&agent.join(".agent")), user.uid.as_raw());
    let state: Vec<_> = std::fs::read_dir(home.join(".local/state/agent-bootstrap/agents"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(state.len(), 1);
    assert!(
        home.join(".cache/agent-bootstrap")
            .join(format!("{}.tar.gz", w.sim.package.sha256))
            .is_file()
    );
    assert!(w.systemctl_log().is_empty(), "no systemctl without root");

    // Later runs find it the same way.
    let mut status = w.command(&["status", "--json"]);
    status
        .env("HOME", &home)
        .env_remove("AGENT_BOOTSTRAP_STATE_DIR")
        .env_remove("AGENT_BOOTSTRAP_CACHE_DIR");
    let run = w.run_cmd(as_user(&status, &user));
    run.assert_code(0);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["configured"], true);
    assert_eq!(s["server"]["exists"], true);
}

#[test]
fn without_root_an_agent_dir_it_cannot_write_is_refused_before_anything_is_contacted() {
    let w = World::new();
    let (user, home) = w.nobody_home();
    let url = w.org_url();
    let root_owned = w.dir.path().join("opt-agent");
    let mut cmd = w.command(&[
        "install",
        "--url",
        &url,
        "--agent-dir",
        root_owned.to_str().unwrap(),
        "--no-service",
    ]);
    cmd.env("HOME", &home)
        .env_remove("AGENT_BOOTSTRAP_STATE_DIR")
        .env_remove("AGENT_BOOTSTRAP_CACHE_DIR");
    let run = w.run_cmd(as_user(&cmd, &user));
    run.assert_code(2);
    assert!(
        run.stderr.contains("--agent-dir") && run.stderr.contains("not writable by nobody"),
        "{}",
        run.stderr
    );
    assert!(w.requests().is_empty());
    assert!(!root_owned.exists());
    assert!(!Path::new(&home.join(".local")).exists(), "nothing written");
}

/// #24, power cut: a saved-settings file cut short (or edited into garbage) is never trusted:
/// reconcile names it and the fix, and install, run again, writes it anew.
#[test]
fn a_torn_settings_file_is_reported_and_install_writes_it_anew() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    let file = w.saved_settings_files()[0].clone();
    let text = std::fs::read(&file).unwrap();
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    let run = w.reconcile();
    run.assert_code(2);
    assert!(
        run.stderr.contains(&file.display().to_string())
            && run.stderr.contains("cut short or changed")
            && run.stderr.contains("agent-bootstrap install"),
        "{}",
        run.stderr
    );
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(run.stderr.contains("not valid"), "{}", run.stderr);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["agent_name"], "test-agent");
    w.reconcile().assert_code(0);
}
