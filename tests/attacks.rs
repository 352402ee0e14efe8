//! The trust boundary, attacked. Pipeline jobs run as the agent user: they can rewrite anything in
//! the agent dir and leave processes running. Each test here does what such a job could do, as the
//! agent user, then runs the real binary as root (at boot, by hand) and checks that root's files,
//! units and token were not the job's to take.

// These tests drive the Linux binary as root; the Windows build is tested by tests/windows.rs.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use azure_sim::SimConfig;
use common::*;

fn agent_json(w: &World) -> serde_json::Value {
    read_agent_json(&w.agent_dir().join(".agent"))
}

/// Writes `.agent` with these changes, as the agent user (the file keeps its BOM).
fn rewrite_agent_file(w: &World, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v = agent_json(w);
    edit(&mut v);
    let staged = w.dir.path().join("staged-agent-file");
    std::fs::write(
        &staged,
        format!("\u{feff}{}", serde_json::to_string_pretty(&v).unwrap()),
    )
    .unwrap();
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    mode(&staged);
    as_agent_user_ok(&format!(
        "cat '{}' > '{}'",
        staged.display(),
        w.agent_dir().join(".agent").display()
    ));
}

fn lose_the_unit(w: &World) {
    // What a reimage of /etc or a cleanup would do (root's side, not the attack).
    let _ = std::fs::remove_file(w.units_dir().join(UNIT));
    for s in ["active", "enabled"] {
        let _ = std::fs::remove_file(w.sim.systemd_dir().join(format!("state/{UNIT}.{s}")));
    }
}

#[test]
fn unit_text_never_comes_from_the_agent_dir() {
    let w = installed();
    let injected = "Default\n[Service]\nExecStartPre=+/bin/sh -c 'touch /tmp/pwned'";
    rewrite_agent_file(&w, |v| v["poolName"] = injected.into());
    as_agent_user_ok(&format!(
        "rm -f '{}'",
        w.agent_dir().join(".service").display()
    ));
    lose_the_unit(&w);

    let run = w.reconcile();
    run.assert_code(0);
    assert!(
        run.stderr.contains("does not match the saved settings"),
        "{}",
        run.stderr
    );
    let unit = std::fs::read_to_string(w.units_dir().join(UNIT)).unwrap();
    assert!(!unit.contains("ExecStartPre"), "{unit}");
    assert!(
        unit.contains("Description=Azure Pipelines Agent (127.Default.test-agent)\n"),
        "{unit}"
    );
    // Only our two units exist: nothing named after the injected pool.
    let mut names: Vec<String> = std::fs::read_dir(w.units_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n == UNIT), "{names:?}");
    // And the agent was configured again from root's settings: pool Default.
    assert_eq!(agent_json(&w)["poolName"], "Default");
}

#[test]
fn names_a_shell_would_run_are_refused_before_anything_happens() {
    let w = World::new();
    for (flag, value) in [
        ("--pool", "Default$(touch /tmp/pwned)"),
        ("--pool", "Default`id`"),
        ("--pool", "Default\n[Service]"),
        ("--agent-name", "vm\"; reboot; \""),
        ("--agent-name", "vm\\x"),
        ("--agent-dir", "/opt/agent dir"),
        ("--agent-dir", "/opt/agent%i"),
        ("--agent-dir", "/opt/agent\nExecStartPre=/bin/sh"),
    ] {
        let run = w.install(&[flag, value]);
        run.assert_code(2);
        assert!(
            run.stderr.contains(flag),
            "{flag} {value:?}: {}",
            run.stderr
        );
        assert!(w.requests().is_empty(), "{flag}: contacted something");
    }
    assert!(!w.agent_dir().exists());
}

#[test]
fn a_planted_runsvc_link_is_never_followed_by_root() {
    let w = installed();
    let decoy = Decoy::new(&w);
    let dir = w.agent_dir();
    let marker = w.dir.path().join("ran-as-root");
    // The job wipes the registration and bin, plants links and a script, keeps some work.
    as_agent_user_ok(&format!(
        "cd '{dir}' && rm -rf .agent .credentials .credentials_rsaparams .service bin runsvc.sh .path \
         && ln -s '{file}' runsvc.sh && ln -s '{file}' .path \
         && printf '#!/bin/sh\\ntouch {marker}\\n' > svc.sh \
         && mkdir -p _work/1 && echo job > _work/1/log && echo planted > planted.txt",
        dir = dir.display(),
        file = decoy.file.display(),
        marker = marker.display(),
    ));
    let run = w.reconcile();
    run.assert_code(0);
    decoy.assert_untouched();
    assert!(!marker.exists(), "root ran the agent user's svc.sh");
    // A fresh tree: the package again, the job's work kept, nothing else of the old tree.
    assert!(
        fsx_regular(&dir.join("runsvc.sh")),
        "runsvc.sh is a file again"
    );
    assert_eq!(owner(&dir.join("runsvc.sh")), agent_user().uid.as_raw());
    assert_eq!(
        std::fs::read_to_string(dir.join("_work/1/log")).unwrap(),
        "job\n"
    );
    assert!(!dir.join("planted.txt").exists());
    assert!(dir.join("bin/Agent.Listener").is_file());
    assert!(w.unit_active(UNIT));
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );
}

fn fsx_regular(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

#[test]
fn ownership_is_never_changed_through_a_path_the_agent_user_can_swap() {
    // A slow download keeps staging around long enough for the attacker to try.
    let w = World::with(|c: &mut SimConfig| c.throttle = Some(1_000_000));
    w.install(&[]).assert_code(0);
    let decoy = Decoy::new(&w);
    let dir = w.agent_dir();
    let parent = w.dir.path();
    // The attacker appends here whenever it managed to list root's staging directory (for a moment
    // after the swap, the staging name holds the old agent dir, the agent user's own: not that).
    let saw = w.dir.path().join("attacker-looked-inside");
    std::fs::write(&saw, "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&saw, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    // The job leaves a process behind: it swaps every directory it can find in a staging tree or
    // in the agent dir for a link to root's directory, over and over.
    as_agent_user_ok(&format!(
        "cd '{dir}' && rm -rf .agent .credentials .credentials_rsaparams bin",
        dir = dir.display()
    ));
    let attacker_script = format!(
        "end=$(( $(date +%s) + 20 )); while [ $(date +%s) -lt $end ]; do \
           for d in '{parent}'/.agent-bootstrap-staging-* '{dir}'; do \
             [ \"$d\" != '{dir}' ] && ls -lan \"$d\" 2>/dev/null | awk '$NF == \".\" && $3 == \"0\" {{ f = 1 }} END {{ exit !f }}' && echo \"$d\" >> '{saw}'; \
             for s in bin externals _work; do \
               mv \"$d/$s\" \"$d/$s.moved\" 2>/dev/null && ln -s '{decoy}' \"$d/$s\" 2>/dev/null; \
             done; \
           done; \
         done",
        parent = parent.display(),
        dir = dir.display(),
        saw = saw.display(),
        decoy = decoy.dir.display(),
    );
    let user = agent_user();
    let mut attacker = std::process::Command::new("/bin/sh");
    attacker
        .arg("-c")
        .arg(&attacker_script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    std::os::unix::process::CommandExt::uid(&mut attacker, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut attacker, user.gid.as_raw());
    let mut attacker = attacker.spawn().unwrap();
    let run = w.reconcile();
    let _ = attacker.kill();
    let _ = attacker.wait();
    decoy.assert_untouched();
    assert_eq!(
        std::fs::read_to_string(&saw).unwrap(),
        "",
        "the agent user could look into a staging directory"
    );
    // The job may well have broken its own agent (exit 6 or 7); root's files are what matter.
    assert!([0, 6, 7].contains(&run.code), "{run:?}");
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );
}

#[test]
fn a_baked_in_package_another_account_could_change_is_replaced_not_run() {
    let w = World::new();
    let dir = w.agent_dir();
    w.extract_package_into(&dir);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("bin"), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    // What another account could have put there.
    std::fs::write(dir.join("bin/planted"), "").unwrap();
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        !run.stderr.contains("already extracted"),
        "the tree was kept: {}",
        run.stderr
    );
    assert_eq!(w.downloads(), 1, "a fresh verified package");
    assert!(!dir.join("bin/planted").exists());
    assert_eq!(mode(&dir.join("bin")) & 0o022, 0);
    assert_eq!(w.server_agents(1).len(), 1);
}

#[test]
fn a_fifo_in_place_of_the_agent_files_blocks_nothing() {
    let w = installed();
    let dir = w.agent_dir();
    as_agent_user_ok(&format!(
        "cd '{}' && rm -f .agent .service && mkfifo .agent .service",
        dir.display()
    ));
    let start = Instant::now();
    let run = w.status(&[]);
    run.assert_code(0);
    assert!(run.stdout.contains("unreadable .agent"), "{}", run.stdout);
    let run = w.reconcile();
    run.assert_code(0);
    assert!(start.elapsed() < Duration::from_secs(60));
    // Repaired: a real .agent again, from root's settings.
    assert!(fsx_regular(&dir.join(".agent")));
    assert_eq!(agent_json(&w)["agentName"], "test-agent");
    assert!(w.unit_active(UNIT));
}

/// The agent's own binary, replaced by the job with one that records every run of it.
fn plant_recording_listener(w: &World) -> std::path::PathBuf {
    let ran = w.dir.path().join("listener-ran");
    std::fs::write(&ran, "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ran, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    as_agent_user_ok(&format!(
        "cd '{}' && printf '#!/bin/sh\\necho \"$(id -u) $*\" >> {}\\necho 9.9.9\\n' > bin/Agent.Listener.new \
         && chmod 755 bin/Agent.Listener.new && mv -f bin/Agent.Listener.new bin/Agent.Listener",
        w.agent_dir().display(),
        ran.display()
    ));
    ran
}

#[test]
fn root_never_runs_the_agents_binary_to_learn_its_version() {
    let w = installed();
    let ran = plant_recording_listener(&w);
    let run = w.status(&["--json"]);
    run.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        status["agent_version"], "4.264.2",
        "root's record, or the server's"
    );
    w.reconcile().assert_code(0);
    // A re-registration: the version comes from root's record, the package from the archive.
    w.sim.state().agents.clear();
    w.reconcile().assert_code(0);
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        "",
        "the agent dir's binary ran"
    );
    let saved = w.saved_settings_files();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved[0]).unwrap()).unwrap();
    assert_eq!(saved["agent_version"], "4.264.2");
}

/// What a job leaves behind to take the token at the next re-registration: a process of the agent
/// user that keeps putting its own `config.sh` and `reauth.sh` in place and reads the environment
/// of every process of its account.
fn leave_token_thief(w: &World) -> std::path::PathBuf {
    let loot = w.dir.path().join("loot");
    std::fs::create_dir(&loot).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loot, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let thief = format!(
        r#"cd '{dir}' || exit 1
evil='#!/bin/sh
env > {loot}/config-env
exec ./bin/Agent.Listener configure "$@"'
while :; do
  for s in config.sh reauth.sh; do
    printf '%s\n' "$evil" > $s.new 2>/dev/null && chmod 755 $s.new && mv -f $s.new $s 2>/dev/null
  done
  grep -a -h -o 'VSTS_AGENT_INPUT_TOKEN=[^[:cntrl:]]*' /proc/[0-9]*/environ >> {loot}/environ 2>/dev/null
done"#,
        dir = w.agent_dir().display(),
        loot = loot.display()
    );
    let script = w.dir.path().join("thief.sh");
    std::fs::write(&script, thief).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    as_agent_user_ok(&format!(
        "setsid nohup /bin/sh '{}' >/dev/null 2>&1 < /dev/null &",
        script.display()
    ));
    // It runs: config.sh is already the thief's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(w.agent_dir().join("config.sh"))
        .unwrap_or_default()
        .contains("config-env")
    {
        assert!(Instant::now() < deadline, "the thief did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    loot
}

fn assert_nothing_stolen(w: &World, loot: &Path) {
    let tokens = w.issued_tokens();
    for entry in std::fs::read_dir(loot).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for t in &tokens {
            assert!(
                !text.contains(t.as_str()),
                "{} holds the token",
                entry.path().display()
            );
        }
    }
    assert!(
        !loot.join("config-env").exists(),
        "the job's config.sh ran: {:?}",
        std::fs::read_to_string(loot.join("config-env"))
    );
    let thief = w.dir.path().join("thief.sh");
    assert!(
        !process_running(&[thief.to_str().unwrap()]),
        "the job's process survived the re-registration"
    );
    assert!(
        !std::fs::read_to_string(w.agent_dir().join("config.sh"))
            .unwrap()
            .contains("config-env"),
        "the agent dir holds the job's config.sh"
    );
}

#[test]
fn a_job_cannot_take_the_token_when_the_agent_is_deleted_on_the_server() {
    let w = installed();
    let loot = leave_token_thief(&w);
    w.sim.state().agents.clear();
    let run = w.reconcile();
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("ended every process of the agent's account"),
        "{}",
        run.stderr
    );
    assert_nothing_stolen(&w, &loot);
    let agents = w.server_agents(1);
    assert_eq!(agents.len(), 1);
    assert_eq!(agent_json(&w)["agentId"], agents[0].id);
    // The service was stopped before its account's processes were ended, and started after.
    let log = w.systemctl_log();
    let stop = log.rfind(&format!("stop {UNIT}")).expect("stopped");
    let start = log
        .rfind(&format!("start --no-block {UNIT}"))
        .expect("started");
    assert!(stop < start, "{log}");
}

#[test]
fn a_job_cannot_take_the_token_by_making_reconcile_reinstall() {
    for edit in ["agent", "proxy"] {
        let w = installed();
        let loot = leave_token_thief(&w);
        // The next reconcile configures again: `.agent` names another agent, or `.proxy` differs.
        match edit {
            "agent" => rewrite_agent_file(&w, |v| v["agentName"] = "someone-else".into()),
            _ => as_agent_user_ok(&format!(
                "printf 'http://127.0.0.1:9\\n' > '{}'",
                w.agent_dir().join(".proxy").display()
            )),
        }
        let run = w.reconcile();
        run.assert_code(0);
        assert_nothing_stolen(&w, &loot);
        assert_eq!(w.server_agents(1).len(), 1, "{edit}");
        assert_eq!(agent_json(&w)["agentName"], "test-agent");
    }
}

#[test]
fn an_account_that_runs_other_programs_is_not_ended_without_consent() {
    let w = World::new();
    let name = format!("{}s", w.user);
    let ok = std::process::Command::new("useradd")
        .args(["--system", "--no-create-home", &name])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
    // A program of that account that is not the agent (a login, a daemon).
    let mut other = std::process::Command::new("sleep");
    other.arg("300");
    std::os::unix::process::CommandExt::uid(&mut other, user.uid.as_raw());
    let mut other = other.spawn().unwrap();
    let run = w.install(&["--user", &name]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("--end-user-processes") && run.stderr.contains("sleep"),
        "{}",
        run.stderr
    );
    assert!(w.server_agents(1).is_empty(), "nothing registered");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the program still runs"
    );
    // Told: ended, and the agent is configured.
    let run = w.install(&["--user", &name, "--end-user-processes"]);
    run.assert_code(0);
    assert!(other.try_wait().unwrap().is_some(), "ended");
    assert_eq!(w.server_agents(1).len(), 1);
    let _ = std::process::Command::new("userdel").arg(&name).status();
}

#[test]
fn a_link_anywhere_in_the_agent_dirs_path_is_refused() {
    let w = World::new();
    // Even root's own link, above the parent: where it points decides where root writes.
    let real = w.dir.path().join("real");
    std::fs::create_dir_all(real.join("agents")).unwrap();
    std::os::unix::fs::symlink(&real, w.dir.path().join("via-link")).unwrap();
    let install_at = |dir: &Path| {
        let url = w.org_url();
        w.run(&[
            "install",
            "--url",
            &url,
            "--agent-name",
            "test-agent",
            "--agent-dir",
            dir.to_str().unwrap(),
        ])
    };
    let run = install_at(&w.dir.path().join("via-link/agents/agent"));
    run.assert_code(2);
    assert!(
        run.stderr.contains("--agent-dir")
            && run.stderr.contains("via-link is a symbolic link")
            && run.stderr.contains(&real.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(
        w.requests().is_empty(),
        "contacted something before refusing"
    );
    assert!(!real.join("agents/agent").exists());
    // The real path is fine.
    install_at(&real.join("agents/agent")).assert_code(0);
}

#[test]
fn agent_files_id_never_authorises_deleting_another_agent() {
    let w = installed();
    // Another machine's agent took the name on the server (id 999); the job points `.agent` at it.
    {
        let mut state = w.sim.state();
        let agent = &mut state.agents.get_mut(&1).unwrap()[0];
        agent.id = 999;
    }
    rewrite_agent_file(&w, |v| v["agentId"] = 999.into());
    let run = w.run(&["remove", "--agent-dir", w.agent_dir().to_str().unwrap()]);
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("left agent 'test-agent' (id 999) alone"),
        "{}",
        run.stdout
    );
    assert_eq!(w.count("DELETE", "/agents/"), 0);
    assert_eq!(
        w.server_agents(1)[0].id,
        999,
        "the other agent is still there"
    );
}

#[test]
fn the_token_goes_only_to_the_organization_root_saved() {
    let w = installed();
    // The attacker's server, also on loopback.
    let attacker = World::new();
    let evil = format!("{}/", attacker.org_url());
    rewrite_agent_file(&w, |v| v["serverUrl"] = evil.clone().into());

    w.status(&[]).assert_code(0);
    assert!(
        attacker.requests().is_empty(),
        "status sent something to .agent's server"
    );

    // Without saved settings nothing gets a token: status says so, remove refuses.
    let saved = w.saved_settings_files();
    for f in &saved {
        std::fs::remove_file(f).unwrap();
    }
    let run = w.status(&[]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("not trusted with a token"),
        "{}",
        run.stdout
    );
    let run = w.run(&["remove", "--agent-dir", w.agent_dir().to_str().unwrap()]);
    run.assert_code(2);
    assert!(run.stderr.contains("no saved settings"), "{}", run.stderr);
    assert!(attacker.requests().is_empty(), "{:?}", attacker.requests());
    assert_eq!(w.server_agents(1).len(), 1, "nothing unregistered");
}

#[test]
fn reconcile_reregisters_from_saved_settings_when_agent_points_elsewhere() {
    let w = installed();
    let attacker = World::new();
    let evil = format!("{}/", attacker.org_url());
    rewrite_agent_file(&w, |v| v["serverUrl"] = evil.clone().into());
    let run = w.reconcile();
    run.assert_code(0);
    assert!(attacker.requests().is_empty(), "{:?}", attacker.requests());
    assert!(
        agent_bootstrap::agent::same_server(
            agent_json(&w)["serverUrl"].as_str().unwrap(),
            &w.org_url()
        ),
        "configured again at the saved organization"
    );
    // No agent script got the token with .agent pointing at the attacker: the configure that ran
    // was given the saved URL on its command line.
    let last = w.sim.state().listener_reports.last().cloned().unwrap();
    assert_eq!(last.verb, "configure");
    assert!(
        last.argv.iter().any(|a| a == &w.org_url()),
        "{:?}",
        last.argv
    );
}

#[test]
fn children_do_not_inherit_roots_environment() {
    let w = World::new();
    let mut cmd = w.install_command(&[]);
    cmd.env("CUSTOM_SCRIPT_PROTECTED_SETTING", "hunter2")
        .env("AZP_TOKEN", "a-pat-from-somewhere")
        .env("LANG", "C.UTF-8");
    w.run_cmd(cmd).assert_code(0);
    let report = w.sim.state().listener_reports[0].clone();
    for secret in [
        "CUSTOM_SCRIPT_PROTECTED_SETTING",
        "AZP_TOKEN",
        "AGENT_BOOTSTRAP_STATE_DIR",
    ] {
        assert!(
            !report.env_names.iter().any(|n| n == secret),
            "{secret} reached config.sh: {:?}",
            report.env_names
        );
    }
    assert!(report.env_names.iter().any(|n| n == "LANG"));
    assert!(report.env_names.iter().any(|n| n == "PATH"));
}

#[test]
fn a_hostile_link_chain_in_the_package_is_refused() {
    let w = World::new();
    let evil = w.dir.path().join("chain.tar.gz");
    {
        let f = std::fs::File::create(&evil).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut entry = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_size(data.len() as u64);
            h.set_mode(0o777);
            h.set_entry_type(kind);
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        entry(
            "bin/Agent.Listener",
            tar::EntryType::Regular,
            None,
            b"#!/bin/sh\n",
        );
        entry("b/", tar::EntryType::Directory, None, b"");
        entry("b/c", tar::EntryType::Symlink, Some(".."), b"");
        entry("a", tar::EntryType::Symlink, Some("b/c/.."), b"");
        b.into_inner().unwrap().finish().unwrap();
    }
    let run = w.install(&["--package", evil.to_str().unwrap()]);
    run.assert_code(5);
    assert!(
        run.stderr
            .contains("is a link to 'b/c/..', outside the agent directory"),
        "{}",
        run.stderr
    );
    assert!(!w.agent_dir().exists());
    assert!(w.staging_leftovers().is_empty());
    assert!(w.server_agents(1).is_empty());
}

#[test]
fn extracted_files_are_never_group_or_world_writable_or_setuid() {
    let w = World::new();
    // The simulator's package again, with every mode opened up and setuid on the listener.
    let loose = w.dir.path().join("loose.tar.gz");
    {
        let input = std::fs::File::open(&w.sim.package.path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
        let out = std::fs::File::create(&loose).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::fast(),
        ));
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut h = e.header().clone();
            let extra = if e.path().unwrap().ends_with("Agent.Listener") {
                0o4000
            } else {
                0
            };
            h.set_mode(h.mode().unwrap() | 0o777 | extra);
            h.set_cksum();
            let mut data = vec![];
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            b.append(&h, &data[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }
    w.install(&["--package", loose.to_str().unwrap()])
        .assert_code(0);
    let mut checked = 0;
    for e in walkdir::WalkDir::new(w.agent_dir().join("bin")) {
        let e = e.unwrap();
        if e.file_type().is_symlink() {
            continue;
        }
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(e.path()).unwrap().permissions().mode();
        assert_eq!(m & 0o7022, 0, "{} has mode {m:o}", e.path().display());
        checked += 1;
    }
    assert!(checked > 10);
}

/// `install_command(extra)`, but running the binary at `exe`.
fn install_with_binary(w: &World, exe: &Path, extra: &[&str]) -> Run {
    let base = w.install_command(extra);
    let mut cmd = std::process::Command::new(exe);
    cmd.args(base.get_args());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    w.run_cmd(cmd)
}

#[test]
fn a_boot_unit_never_runs_a_binary_the_agent_user_could_replace() {
    let w = World::new();
    // Another account (the agent user is created only by the install below).
    let user = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // root's binary, in a directory another account owns: it could swap the file before the next
    // boot, and the boot unit would run that account's program as root.
    let theirs = w.dir.path().join("agent-user-bin");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    let exe = theirs.join("agent-bootstrap");
    std::fs::copy(BIN, &exe).unwrap();

    let run = install_with_binary(&w, &exe, &[]);
    run.assert_code(2);
    assert!(
        run.stderr.contains(&theirs.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--no-boot"), "{}", run.stderr);
    assert!(
        w.requests().is_empty(),
        "contacted something before refusing"
    );
    assert!(!w.agent_dir().exists());
    assert!(!w.units_dir().exists() || std::fs::read_dir(w.units_dir()).unwrap().next().is_none());

    // Without a boot unit nothing runs it as root later: the install goes ahead.
    let run = install_with_binary(&w, &exe, &["--no-boot"]);
    run.assert_code(0);
    let units: Vec<String> = std::fs::read_dir(w.units_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(units, vec![UNIT.to_string()], "only the agent's own unit");

    // The same binary where only root can change it gets its boot unit.
    let roots = w.dir.path().join("root-bin");
    std::fs::create_dir(&roots).unwrap();
    std::fs::copy(BIN, roots.join("agent-bootstrap")).unwrap();
    let run = install_with_binary(&w, &roots.join("agent-bootstrap"), &[]);
    run.assert_code(0);
    assert_eq!(std::fs::read_dir(w.units_dir()).unwrap().count(), 2);
}

/// A directory the agent user owns, for an attack to plant files in.
fn agent_users_dir(w: &World, name: &str) -> std::path::PathBuf {
    let user = w.agent_account();
    let dir = w.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    dir
}

/// Secret files (the PAT file, the proxy password file): a link the agent user planted, or a file
/// the agent user owns, is refused with exit 2 naming the setting and the file, before anything is
/// contacted; a root-owned private file, or a link root made in a root-owned directory (how
/// Kubernetes mounts secrets), is read.
#[test]
fn secret_files_the_agent_user_could_change_or_link_are_refused() {
    let w = World::new();
    let planted = agent_users_dir(&w, "job-secrets");
    let root_dir = w.dir.path().join("root-secrets");
    std::fs::create_dir(&root_dir).unwrap();
    let real = root_dir.join("real");
    std::fs::write(&real, "a-secret-value\n").unwrap();
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    as_agent_user_ok(&format!(
        "ln -s {real} {p}/link && printf 'job-value\\n' > {p}/owned && chmod 600 {p}/owned",
        real = real.display(),
        p = planted.display()
    ));
    let link = planted.join("link");
    let owned = planted.join("owned");
    // A root-made link in a root-owned directory, like Kubernetes' `token -> ..data/token`.
    let roots_link = root_dir.join("token");
    std::os::unix::fs::symlink(&real, &roots_link).unwrap();

    let pat = |file: &Path| {
        let mut cmd = w.install_command(&["--identity", "pat"]);
        cmd.env("AZP_TOKEN_FILE", file);
        w.run_cmd(cmd)
    };
    for bad in [&link, &owned] {
        let run = pat(bad);
        run.assert_code(2);
        for want in ["AZP_TOKEN_FILE", &bad.display().to_string()] {
            assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
        }
        assert!(
            w.requests().is_empty(),
            "contacted something: {}",
            run.stderr
        );
    }
    for good in [&real, &roots_link] {
        let run = pat(good);
        assert!(!run.stderr.contains("refusing"), "{}", run.stderr);
    }

    let proxy = |file: &Path| {
        let mut cmd = w.install_command(&[
            "--proxy",
            "http://127.0.0.1:9",
            "--proxy-user",
            "alice",
            "--proxy-password-file",
            file.to_str().unwrap(),
        ]);
        cmd.env_remove("HTTPS_PROXY");
        w.run_cmd(cmd)
    };
    for bad in [&link, &owned] {
        let run = proxy(bad);
        run.assert_code(2);
        for want in ["--proxy-password-file", &bad.display().to_string()] {
            assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
        }
        assert!(!run.stderr.contains("job-value") && !run.stderr.contains("a-secret-value"));
    }
    for good in [&real, &roots_link] {
        let run = proxy(good);
        assert!(
            !run.stderr.contains("--proxy-password-file"),
            "{}",
            run.stderr
        );
    }
}
