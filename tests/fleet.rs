//! Fleets without orphans, through the real binary against the simulator: `prune` (offline agents
//! deleted, online, busy and recent ones kept), `watch` (Azure Scheduled Events: drain, deregister,
//! approve) and `run` (the container entrypoint: configure, run in the foreground, deregister
//! whatever way the agent ended).

#![cfg(unix)]

mod common;

use azure_sim::{ServerAgent, ids, now_secs};
use common::*;

const DAY: u64 = 86_400;

fn agent(id: u64, name: &str, status: &str, changed_days_ago: u64, busy: bool) -> ServerAgent {
    let changed = now_secs() - changed_days_ago * DAY;
    ServerAgent {
        id,
        name: name.into(),
        version: "4.264.2".into(),
        status: status.into(),
        enabled: true,
        public_key: String::new(),
        created_on: changed - DAY,
        status_changed_on: changed,
        assigned_request: busy.then_some(1000 + id),
        system_capabilities: Default::default(),
    }
}

/// Pool Default: old offline agents of two fleets, an online one, a busy one, a recent one.
fn fleet_world() -> World {
    let w = World::new();
    w.sim.state().agents.insert(
        1,
        vec![
            agent(101, "vmss-a-0001", "offline", 30, false),
            agent(102, "vmss-a-0002", "offline", 9, false),
            agent(103, "vmss-a-0003", "online", 30, false),
            agent(104, "vmss-a-0004", "offline", 30, true),
            agent(105, "vmss-a-0005", "offline", 2, false),
            agent(106, "other-0001", "offline", 40, false),
        ],
    );
    w.sim.state().next_agent_id = 200;
    w
}

fn names(w: &World) -> Vec<String> {
    w.server_agents(1).into_iter().map(|a| a.name).collect()
}

#[test]
fn prune_dry_run_lists_and_deletes_nothing() {
    let w = fleet_world();
    let url = w.org_url();
    let run = w.run(&["prune", "--url", &url, "--offline-for", "7d", "--dry-run"]);
    run.assert_code(0);
    let out = &run.stdout;
    assert!(out.starts_with("ACTION"), "{out}");
    for name in ["vmss-a-0001", "vmss-a-0002", "other-0001"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("would delete") && l.contains(name)),
            "{name}: {out}"
        );
    }
    for name in ["vmss-a-0003", "vmss-a-0004", "vmss-a-0005"] {
        assert!(!out.contains(name), "{name} listed: {out}");
    }
    assert_eq!(names(&w).len(), 6);
    assert_eq!(w.count("DELETE", "/agents/"), 0);
}

#[test]
fn prune_deletes_only_long_offline_idle_agents_of_the_prefix() {
    let w = fleet_world();
    let url = w.org_url();
    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "7d",
        "--name-prefix",
        "vmss-a-",
        "--json",
    ]);
    run.assert_code(0);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let deleted: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["action"], "deleted");
            r["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(deleted, ["vmss-a-0001", "vmss-a-0002"]);
    assert_eq!(
        names(&w),
        ["vmss-a-0003", "vmss-a-0004", "vmss-a-0005", "other-0001"]
    );

    // Online, busy and recent agents outlive any threshold; the other fleet is untouched.
    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "1d",
        "--name-prefix",
        "vmss-a-",
    ]);
    run.assert_code(0);
    assert!(run.stdout.contains("vmss-a-0005"), "{}", run.stdout);
    assert_eq!(names(&w), ["vmss-a-0003", "vmss-a-0004", "other-0001"]);
}

#[test]
fn prune_needs_manage_on_the_pool_and_a_valid_duration() {
    let w = fleet_world();
    let url = w.org_url();
    // readonly-mi is a member of the organization without Manage on the pool.
    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "7d",
        "--client-id",
        ids::NO_MANAGE_CLIENT,
    ]);
    run.assert_code(4);
    assert!(
        run.stderr.contains("no Manage permission"),
        "{}",
        run.stderr
    );
    assert_eq!(names(&w).len(), 6);

    for bad in ["7w", "10s", ""] {
        let run = w.run(&["prune", "--url", &url, "--offline-for", bad]);
        run.assert_code(2);
        assert!(run.stderr.contains("--offline-for"), "{}", run.stderr);
    }
}

// ---- run: the container entrypoint ----

/// `run --url <sim> --agent-dir <world>/agent --agent-name pod-1 EXTRA…`
fn run_command(w: &World, extra: &[&str]) -> std::process::Command {
    let url = w.org_url();
    let dir = w.agent_dir();
    let mut args = vec![
        "run",
        "--url",
        url.as_str(),
        "--agent-dir",
        dir.to_str().unwrap(),
        "--agent-name",
        "pod-1",
    ];
    args.extend(extra);
    w.command(&args)
}

fn spawn(mut cmd: std::process::Command) -> std::process::Child {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn finish(w: &World, child: std::process::Child) -> Run {
    let run = Run::of(child.wait_with_output().unwrap());
    w.assert_no_token_leak(&run);
    run
}

fn pod_agent(w: &World) -> Option<ServerAgent> {
    w.server_agents(1).into_iter().find(|a| a.name == "pod-1")
}

fn run_reports(w: &World) -> Vec<azure_sim::ListenerReport> {
    w.sim
        .state()
        .listener_reports
        .iter()
        .filter(|r| r.verb == "run")
        .cloned()
        .collect()
}

/// Nothing of the agent is left: not on the server, not in the agent dir, not in the saved settings.
fn assert_unregistered(w: &World) {
    assert!(pod_agent(w).is_none(), "{:?}", w.server_agents(1));
    assert!(!w.agent_dir().join(".agent").exists());
    assert!(!w.agent_dir().join(".credentials").exists());
    assert!(w.saved_settings_files().is_empty());
}

#[test]
fn run_once_configures_takes_a_job_and_unregisters() {
    let w = World::new();
    w.sim.state().queued_jobs.push_back(300);
    let mut cmd = run_command(&w, &["--once"]);
    // The container's own variables reach the agent; credentials do not.
    cmd.env("MY_CAPABILITY", "gpu")
        .env("AZP_TOKEN", "container-pat-0123456789")
        .env("IDENTITY_HEADER", "header-secret-0123456789");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert_eq!(
        w.sim.state().jobs,
        [("pod-1".to_owned(), 5000, true)],
        "{}",
        run.stderr
    );
    assert_unregistered(&w);
    assert_eq!(w.count("DELETE", "/agents/"), 1);

    let reports = run_reports(&w);
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(r.argv.iter().any(|a| a == "--once"), "{:?}", r.argv);
    assert_eq!(r.cwd, w.agent_dir().display().to_string());
    assert_eq!(r.env.get("MY_CAPABILITY").map(String::as_str), Some("gpu"));
    for gone in ["AZP_TOKEN", "IDENTITY_HEADER", "VSTS_AGENT_INPUT_TOKEN"] {
        assert!(!r.env.contains_key(gone), "{gone} reached the agent");
    }
    let secrets: Vec<String> = w
        .tokens()
        .into_iter()
        .chain([
            "container-pat-0123456789".into(),
            "header-secret-0123456789".into(),
        ])
        .collect();
    for (k, v) in &r.env {
        for s in &secrets {
            assert!(!v.contains(s.as_str()), "{k} carries a secret");
        }
    }
    // Configured as this account (root here: run.sh needs AGENT_ALLOW_RUNASROOT).
    let configure = w
        .sim
        .state()
        .listener_reports
        .iter()
        .find(|r| r.verb == "configure")
        .cloned()
        .unwrap();
    assert!(configure.token_from_env);
    assert_eq!(configure.uid, nix::unistd::getuid().as_raw());
    assert!(
        run.stderr.contains("the agent ended and was unregistered"),
        "{}",
        run.stderr
    );
}

#[test]
fn run_stopped_while_idle_drains_and_unregisters() {
    let w = World::new();
    let child = spawn(run_command(&w, &[]));
    wait_until("the agent online", 60, || {
        pod_agent(&w).is_some_and(|a| a.status == "online")
    });
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert!(
        run.stderr.contains("SIGTERM: the agent takes no new job"),
        "{}",
        run.stderr
    );
    assert_eq!(w.count("PATCH", "/agents/"), 1, "disabled before it went");
    assert_unregistered(&w);
    assert!(w.sim.state().jobs.is_empty());
}

#[test]
fn run_stopped_during_a_job_lets_it_finish_within_the_grace() {
    let w = World::new();
    w.sim.state().queued_jobs.push_back(3000);
    let child = spawn(run_command(&w, &["--stop-grace", "30"]));
    wait_until("a job assigned", 60, || {
        pod_agent(&w).is_some_and(|a| a.assigned_request.is_some())
    });
    // A second job is queued: the disabled agent must not take it.
    w.sim.state().queued_jobs.push_back(100);
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert_eq!(
        w.sim.state().jobs,
        [("pod-1".to_owned(), 5000, true)],
        "{}",
        run.stderr
    );
    assert_eq!(
        w.sim.state().queued_jobs.len(),
        1,
        "the drained agent took a new job"
    );
    assert!(
        run.stderr.contains("waiting for the running job to end"),
        "{}",
        run.stderr
    );
    assert_unregistered(&w);
}

#[test]
fn run_stops_a_job_that_outlasts_the_grace() {
    let w = World::new();
    w.sim.state().queued_jobs.push_back(120_000);
    let child = spawn(run_command(&w, &["--stop-grace", "1"]));
    wait_until("a job assigned", 60, || {
        pod_agent(&w).is_some_and(|a| a.assigned_request.is_some())
    });
    let start = std::time::Instant::now();
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert!(run.stderr.contains("out of time"), "{}", run.stderr);
    assert_eq!(w.sim.state().jobs, [("pod-1".to_owned(), 5000, false)]);
    assert_unregistered(&w);
}

#[test]
fn run_unregisters_an_agent_that_crashed() {
    let w = World::new();
    w.sim.state().listener_exits.push_back(2);
    let run = w.run_cmd(run_command(&w, &["--once"]));
    run.assert_code(2);
    assert_unregistered(&w);
}

fn run_versions(w: &World) -> Vec<String> {
    run_reports(w).iter().map(listener_version).collect()
}

#[test]
fn run_brings_the_agent_back_on_its_new_version_after_an_update() {
    let w = World::new();
    let child = spawn(run_command(&w, &[]));
    wait_until("the agent online", 60, || {
        pod_agent(&w).is_some_and(|a| a.status == "online")
    });
    offer_update(&w);
    // The listener updates itself and exits 3; run waits for its update script, then runs the new
    // version, still registered, under its own supervision.
    wait_until("the agent back online on the new version", 90, || {
        pod_agent(&w).is_some_and(|a| a.status == "online" && a.version == NEW_VERSION)
    });
    let dir = w.agent_dir();
    assert_eq!(
        std::fs::read_link(dir.join("bin")).unwrap(),
        dir.join(format!("bin.{NEW_VERSION}"))
    );
    assert!(dir.join("bin.4.264.2/Agent.Listener").is_file());
    // One listener, run's own child: none started by the update script in the background.
    wait_until("one listener", 10, || listeners(&w).len() == 1);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        listeners(&w),
        [(listeners(&w)[0].0, child.id() as i32)],
        "one listener, run's child"
    );
    // The new version takes jobs.
    w.sim.state().queued_jobs.push_back(100);
    wait_until("the job done", 30, || !w.sim.state().jobs.is_empty());
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("the agent updated itself; running it again"),
        "{}",
        run.stderr
    );
    assert_eq!(run_versions(&w), ["4.264.2", NEW_VERSION]);
    for r in run_reports(&w) {
        assert!(
            r.argv.windows(2).any(|a| a == ["--startuptype", "service"]),
            "{:?}",
            r.argv
        );
    }
    assert_eq!(w.sim.state().jobs, [("pod-1".to_owned(), 5000, true)]);
    assert_unregistered(&w);
    wait_until("no listener left", 10, || listeners(&w).is_empty());
    // Registered once: the update kept the registration.
    assert_eq!(w.count("POST", "/agents"), 1);
}

#[test]
fn run_once_runs_the_new_version_after_an_update() {
    let w = World::new();
    let child = spawn(run_command(&w, &["--once"]));
    wait_until("the agent online", 60, || {
        pod_agent(&w).is_some_and(|a| a.status == "online")
    });
    offer_update(&w);
    wait_until("the agent back online on the new version", 90, || {
        pod_agent(&w).is_some_and(|a| a.status == "online" && a.version == NEW_VERSION)
    });
    w.sim.state().queued_jobs.push_back(100);
    let run = finish(&w, child);
    run.assert_code(0);
    assert_eq!(run_versions(&w), ["4.264.2", NEW_VERSION]);
    for r in run_reports(&w) {
        assert!(r.argv.iter().any(|a| a == "--once"), "{:?}", r.argv);
    }
    assert_eq!(w.sim.state().jobs, [("pod-1".to_owned(), 5000, true)]);
    assert_unregistered(&w);
}

#[test]
fn run_disable_update_keeps_the_agent_on_its_version() {
    let w = World::new();
    let child = spawn(run_command(&w, &["--disable-update"]));
    wait_until("the agent online", 60, || {
        pod_agent(&w).is_some_and(|a| a.status == "online")
    });
    let env = std::fs::read_to_string(w.agent_dir().join(".env")).unwrap();
    assert!(
        env.lines().any(|l| l == "agent.disableupdate=true"),
        "{env}"
    );
    offer_update(&w);
    let id = pod_agent(&w).unwrap().id;
    wait_until("the update asked for", 30, || {
        w.sim
            .state()
            .agent_update
            .as_ref()
            .is_some_and(|u| u.told.contains(&id))
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let agent = pod_agent(&w).unwrap();
    assert_eq!(
        (agent.status.as_str(), agent.version.as_str()),
        ("online", "4.264.2")
    );
    let bin = std::fs::symlink_metadata(w.agent_dir().join("bin")).unwrap();
    assert!(!bin.file_type().is_symlink(), "the agent updated itself");
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("skipping autoupdate since agent.disableupdate is set"),
        "{}",
        run.stderr
    );
    assert_eq!(run_versions(&w), ["4.264.2"]);
    assert_unregistered(&w);
}

// ---- watch: Azure Scheduled Events ----

const THIS_VM: &str = "sim-vm-000001";

fn unit_files(w: &World, prefix: &str) -> Vec<String> {
    std::fs::read_dir(w.units_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn watch(w: &World) -> std::process::Child {
    let dir = w.agent_dir();
    spawn(w.command(&[
        "watch",
        "--agent-dir",
        dir.to_str().unwrap(),
        "--poll-interval",
        "1",
    ]))
}

fn event_polls(w: &World) -> usize {
    w.count("GET", "/metadata/scheduledevents")
}

fn test_agent(w: &World) -> Option<ServerAgent> {
    w.server_agents(1)
        .into_iter()
        .find(|a| a.name == "test-agent")
}

#[test]
fn install_scale_in_drain_runs_the_watcher_and_remove_deletes_it() {
    let w = World::new();
    w.install(&["--scale-in-drain"]).assert_code(0);
    let units = unit_files(&w, "agent-bootstrap-watch-");
    assert_eq!(units.len(), 1, "{units:?}");
    let text = std::fs::read_to_string(w.units_dir().join(&units[0])).unwrap();
    assert!(text.contains(" watch --agent-dir "), "{text}");
    assert!(text.contains("Restart=always"), "{text}");
    assert!(w.unit_enabled(&units[0]) && w.unit_active(&units[0]));
    let saved = std::fs::read_to_string(&w.saved_settings_files()[0]).unwrap();
    assert!(saved.contains(&units[0]), "{saved}");
    let st = w.status(&[]);
    assert!(
        st.stdout
            .contains(&format!("scale-in watcher: {}", units[0])),
        "{}",
        st.stdout
    );

    // A second install changes nothing; one without the flag takes the watcher away.
    let before = w.systemctl_changes();
    w.install(&["--scale-in-drain"]).assert_code(0);
    assert_eq!(w.systemctl_changes(), before);
    w.install(&[]).assert_code(0);
    assert!(unit_files(&w, "agent-bootstrap-watch-").is_empty());
    assert!(!w.unit_active(&units[0]) && !w.unit_enabled(&units[0]));
    w.install(&["--scale-in-drain"]).assert_code(0);
    assert!(w.unit_active(&units[0]));

    let dir = w.agent_dir();
    w.run(&["remove", "--agent-dir", dir.to_str().unwrap()])
        .assert_code(0);
    assert!(unit_files(&w, "agent-bootstrap-watch-").is_empty());
    assert!(!w.unit_active(&units[0]));

    let run = w.install(&["--scale-in-drain", "--no-service"]);
    run.assert_code(2);
    assert!(run.stderr.contains("--scale-in-drain"), "{}", run.stderr);
}

#[test]
fn watch_drains_unregisters_and_approves_a_terminate_for_this_vm() {
    let w = installed();
    let id = test_agent(&w).unwrap().id;
    // The agent runs a job, which ends two seconds after the event arrives.
    {
        let mut st = w.sim.state();
        st.agents.get_mut(&1).unwrap()[0].assigned_request = Some(4242);
        st.scheduled_events.push(azure_sim::scheduled_event(
            "evt-terminate-1",
            "Terminate",
            &[THIS_VM],
            300,
        ));
    }
    let child = watch(&w);
    wait_until("the agent disabled", 60, || {
        test_agent(&w).is_some_and(|a| !a.enabled)
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(test_agent(&w).is_some(), "unregistered while the job ran");
    assert!(w.sim.state().approved_events.is_empty());
    w.sim.state().agents.get_mut(&1).unwrap()[0].assigned_request = None;
    wait_until("the event approved", 60, || {
        !w.sim.state().approved_events.is_empty()
    });
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert_eq!(w.sim.state().approved_events, ["evt-terminate-1"]);
    assert!(test_agent(&w).is_none());
    assert_eq!(w.count("DELETE", &format!("/agents/{id}")), 1);
    assert!(!w.agent_dir().join(".agent").exists());
    assert!(
        w.systemctl_log().contains(&format!("stop {UNIT}")),
        "{}",
        w.systemctl_log()
    );
    // Kept for a VM that comes back (a deallocated Spot VM): the boot unit registers it again.
    assert_eq!(w.saved_settings_files().len(), 1);
    assert!(
        run.stderr.contains("waiting for the running job to end"),
        "{}",
        run.stderr
    );
}

#[test]
fn watch_leaves_other_vms_and_other_events_alone() {
    let w = installed();
    {
        let mut st = w.sim.state();
        st.scheduled_events.push(azure_sim::scheduled_event(
            "evt-other-vm",
            "Terminate",
            &["sim-vm-000002"],
            300,
        ));
        st.scheduled_events.push(azure_sim::scheduled_event(
            "evt-reboot",
            "Reboot",
            &[THIS_VM],
            300,
        ));
        st.scheduled_events.push(azure_sim::scheduled_event(
            "evt-freeze",
            "Freeze",
            &[THIS_VM],
            300,
        ));
    }
    let child = watch(&w);
    wait_until("three looks at the events", 60, || event_polls(&w) >= 3);
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    let agent = test_agent(&w).expect("still registered");
    assert!(agent.enabled);
    assert_eq!(w.count("PATCH", "/agents/"), 0);
    assert!(w.sim.state().approved_events.is_empty());
    assert!(w.agent_dir().join(".agent").exists());
    assert!(run.stderr.contains("it is for other VMs"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("only Terminate and Preempt unregister the agent"),
        "{}",
        run.stderr
    );
}

#[test]
fn watch_does_nothing_while_imds_is_down_and_acts_once_it_answers() {
    let w = installed();
    {
        let mut st = w.sim.state();
        st.events_down = true;
        st.scheduled_events.push(azure_sim::scheduled_event(
            "evt-preempt",
            "Preempt",
            &[THIS_VM],
            30,
        ));
    }
    let child = watch(&w);
    wait_until("three failed looks", 60, || event_polls(&w) >= 3);
    assert!(test_agent(&w).is_some_and(|a| a.enabled));
    assert_eq!(w.count("PATCH", "/agents/"), 0);
    w.sim.state().events_down = false;
    wait_until("the event approved", 60, || {
        !w.sim.state().approved_events.is_empty()
    });
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert!(test_agent(&w).is_none());
    assert!(run.stderr.contains("IMDS answered 500"), "{}", run.stderr);
}

#[test]
fn watch_enables_the_agent_again_when_the_event_is_withdrawn() {
    let w = installed();
    {
        let mut st = w.sim.state();
        st.agents.get_mut(&1).unwrap()[0].assigned_request = Some(4243);
        st.scheduled_events.push(azure_sim::scheduled_event(
            "evt-cancelled",
            "Terminate",
            &[THIS_VM],
            300,
        ));
    }
    let child = watch(&w);
    wait_until("the agent disabled", 60, || {
        test_agent(&w).is_some_and(|a| !a.enabled)
    });
    w.sim.state().scheduled_events.clear();
    wait_until("the agent enabled again", 60, || {
        test_agent(&w).is_some_and(|a| a.enabled)
    });
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(0);
    assert!(test_agent(&w).is_some());
    assert_eq!(w.count("DELETE", "/agents/"), 0);
    assert!(w.sim.state().approved_events.is_empty());
    assert!(w.agent_dir().join(".agent").exists());
}

#[test]
fn run_as_a_container_user_uses_the_baked_in_package() {
    let w = World::new();
    let (user, home) = w.nobody_home();
    // The image: the agent package extracted at build time, owned by the container's user.
    let agent_dir = home.join("agent");
    w.extract_package_into(&agent_dir);
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{}:{}", user.uid, user.gid)])
        .arg(&agent_dir)
        .status()
        .unwrap();
    assert!(chown.success());
    w.sim.state().queued_jobs.push_back(100);
    let url = w.org_url();
    let mut cmd = w.command(&[
        "run",
        "--url",
        &url,
        "--agent-dir",
        agent_dir.to_str().unwrap(),
        "--agent-name",
        "pod-1",
        "--once",
    ]);
    cmd.env("HOME", &home)
        .env_remove("AGENT_BOOTSTRAP_STATE_DIR")
        .env_remove("AGENT_BOOTSTRAP_CACHE_DIR");
    let run = w.run_cmd(as_user(&cmd, &user));
    run.assert_code(0);
    assert_eq!(
        w.downloads(),
        0,
        "the baked-in package was downloaded again"
    );
    assert_eq!(w.sim.state().jobs, [("pod-1".to_owned(), 5000, true)]);
    for r in run_reports(&w) {
        assert_eq!(r.uid, user.uid.as_raw());
        assert!(!r.env.contains_key("AGENT_ALLOW_RUNASROOT"));
    }
    assert!(pod_agent(&w).is_none());
    assert!(!agent_dir.join(".agent").exists());
}

#[test]
fn run_refuses_bad_input_before_contacting_anything() {
    let w = World::new();
    for (args, flag) in [
        (vec!["--stop-grace", "100000"], "--stop-grace"),
        (vec!["--agent-name", "pod$(id)"], "--agent-name"),
        (vec!["--config-timeout", "0"], "--config-timeout"),
    ] {
        let run = w.run_cmd(run_command(&w, &args));
        run.assert_code(2);
        assert!(run.stderr.contains(flag), "{flag}: {}", run.stderr);
    }
    assert!(w.requests().is_empty(), "{:?}", w.requests());
    assert!(!w.agent_dir().exists());
}

#[test]
fn prune_keeps_an_agent_that_took_a_job_meanwhile() {
    let w = fleet_world();
    // Idle when listed, busy when deleted (the server refuses: TaskAgentBusyException).
    w.sim.state().agent_busy = 1;
    let url = w.org_url();
    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "7d",
        "--name-prefix",
        "vmss-a-",
    ]);
    run.assert_code(0);
    let kept: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("kept (busy)"))
        .collect();
    assert_eq!(kept.len(), 1, "{}", run.stdout);
    assert_eq!(
        names(&w).len(),
        5,
        "one deleted, the busy one kept: {:?}",
        names(&w)
    );
}

#[test]
fn run_stopped_while_configuring_stops_config_sh_and_leaves_other_agents_alone() {
    // The pool has a `pod-1` whose update always fails: config.sh --replace loops forever.
    let w = World::new();
    {
        let mut st = w.sim.state();
        st.agents
            .insert(1, vec![agent(77, "pod-1", "offline", 1, false)]);
        st.next_agent_id = 78;
        st.fail_agent_update = true;
    }
    let child = spawn(run_command(&w, &[]));
    let dir = w.agent_dir().display().to_string();
    wait_until("config.sh running", 60, || {
        process_running(&[dir.as_str(), "configure"])
    });
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let run = finish(&w, child);
    run.assert_code(143);
    assert!(
        run.stderr.contains("SIGTERM before the agent ran"),
        "{}",
        run.stderr
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!process_running(&[dir.as_str(), "configure"]));
    // Not ours (nothing was saved): left alone.
    assert_eq!(names(&w), ["pod-1"]);
    assert_eq!(w.count("DELETE", "/agents/"), 0);
    assert!(w.saved_settings_files().is_empty());
}

/// A job of a container's agent runs as the same account as `run`: it reads `/proc/$PPID…` of
/// every process of its uid. `run` holds credentials in its environment (here
/// `AZURE_CLIENT_SECRET`, `AZP_TOKEN`-like values the container was given), so it is not
/// dumpable: its environ and memory are root's, and the same-uid job gets nothing.
#[test]
fn a_containers_job_cannot_read_runs_environment_or_redirect_its_deregistration() {
    const SECRET: &str = "client-secret-5e4d3c2b1a";
    let w = World::new();
    let (user, home) = w.nobody_home();
    let agent_dir = home.join("agent");
    w.extract_package_into(&agent_dir);
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{}:{}", user.uid, user.gid)])
        .arg(&agent_dir)
        .status()
        .unwrap();
    assert!(chown.success());
    w.sim.state().queued_jobs.push_back(4000);
    // The package named outright (the machine's libc does not change what is tested here).
    let pkg = home.join("agent.tar.gz");
    std::fs::copy(&w.sim.package.path, &pkg).unwrap();
    std::os::unix::fs::chown(&pkg, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    let url = w.org_url();
    let mut cmd = w.command(&[
        "run",
        "--url",
        &url,
        "--agent-dir",
        agent_dir.to_str().unwrap(),
        "--agent-name",
        "pod-1",
        "--once",
        "--package",
        pkg.to_str().unwrap(),
        "--package-sha256",
        &w.sim.package.sha256,
    ]);
    cmd.env("HOME", &home)
        .env("AZURE_CLIENT_SECRET", SECRET)
        .env_remove("AGENT_BOOTSTRAP_STATE_DIR")
        .env_remove("AGENT_BOOTSTRAP_CACHE_DIR");
    let mut child = spawn(as_user(&cmd, &user));
    let pid = child.id();
    wait_until("a job assigned", 60, || {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("run ended early: {err}");
        }
        pod_agent(&w).is_some_and(|a| a.assigned_request.is_some())
    });
    // The job, as the container's user: run's environ, and its memory through /proc.
    let mut job = std::process::Command::new("/bin/sh");
    job.arg("-c")
        .arg(format!(
            "cat /proc/{pid}/environ | tr '\\0' '\\n'; echo; head -c 100 /proc/{pid}/mem; \
             ls -l /proc/{pid}/environ"
        ))
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    std::os::unix::process::CommandExt::uid(&mut job, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut job, user.gid.as_raw());
    let out = job.output().unwrap();
    let seen = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!seen.contains(SECRET), "the job read run's secret: {seen}");
    assert!(seen.contains("Permission denied"), "{seen}");
    // Not even root finds it there: run started itself again with the secret moved out of its
    // environment (it was in the environment it was started with).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains(SECRET),
        "run's environ still holds the secret"
    );
    // The job rewrites run's saved settings (its own account's files) to send the token to
    // another server at exit.
    let evil = World::new();
    let saved: Vec<_> = walkdir(&home)
        .into_iter()
        .filter(|p| !p.starts_with(&agent_dir))
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| t.contains(&url) && t.contains("pod-1"))
        })
        .collect();
    assert!(
        !saved.is_empty(),
        "no saved settings under {}",
        home.display()
    );
    for file in &saved {
        let text = std::fs::read_to_string(file).unwrap();
        let mut job = std::process::Command::new("/bin/sh");
        job.arg("-c")
            .arg("cat > \"$0\"")
            .arg(file)
            .stdin(std::process::Stdio::piped())
            .env_clear();
        std::os::unix::process::CommandExt::uid(&mut job, user.uid.as_raw());
        std::os::unix::process::CommandExt::gid(&mut job, user.gid.as_raw());
        let mut p = job.spawn().unwrap();
        std::io::Write::write_all(
            p.stdin.as_mut().unwrap(),
            text.replace(&url, &evil.org_url()).as_bytes(),
        )
        .unwrap();
        drop(p.stdin.take());
        assert!(p.wait().unwrap().success());
    }
    let run = Run::of(child.wait_with_output().unwrap());
    run.assert_code(0);
    assert!(
        pod_agent(&w).is_none(),
        "not deleted where it was registered"
    );
    assert!(
        evil.requests().is_empty(),
        "the rewritten settings sent requests elsewhere: {:?}",
        evil.requests()
    );
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walkdir(&p));
        } else if e.file_type().is_ok_and(|t| t.is_file()) {
            out.push(p);
        }
    }
    out
}
