//! `agent-bootstrap install` end to end: the real binary against the simulated Azure.

// These tests drive the Linux binary as root; the Windows build is tested by tests/windows.rs.
#![cfg(unix)]

mod common;

use azure_sim::{PoolSpec, Scripted, ids};
use common::*;

#[test]
fn happy_path_registers_and_starts_the_agent_as_an_unprivileged_user() {
    let w = World::new();
    let run = w.install(&[]);
    run.assert_code(0);
    let dir = w.agent_dir();

    // What the user sees.
    assert!(run.stdout.starts_with("installed\n"), "{}", run.stdout);
    assert!(run.stdout.contains("agent:        test-agent (id 1)"));
    assert!(run.stdout.contains("pool:         Default (id 1)"));
    assert!(run.stdout.contains("version:      4.264.2"));
    assert!(
        run.stdout
            .contains("vsts.agent.127.Default.test\\x2dagent.service")
    );
    assert!(run.stderr.contains("token accepted by Azure DevOps"));

    // The agent's files, as the real agent writes them.
    let agent = read_agent_json(&dir.join(".agent"));
    assert_eq!(agent["agentName"], "test-agent");
    assert_eq!(agent["poolId"], 1);
    assert_eq!(agent["workFolder"], "_work");
    assert_eq!(agent["acceptTeeEula"], true);
    assert_eq!(
        read_agent_json(&dir.join(".credentials"))["scheme"],
        "OAuth"
    );
    assert_eq!(mode(&dir.join(".credentials_rsaparams")), 0o600);
    assert!(dir.join("svc.sh").is_file());

    // Run as the dedicated user, not root.
    let user = agent_user();
    assert_eq!(owner(&dir), user.uid.as_raw());
    assert_eq!(owner(&dir.join("bin/Agent.Listener")), user.uid.as_raw());
    assert_eq!(owner(&dir.join(".agent")), user.uid.as_raw());
    let reports = w.sim.state().listener_reports.clone();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.verb, "configure");
    assert_eq!(r.uid, user.uid.as_raw());
    assert!(
        r.token_from_env,
        "the token must come from VSTS_AGENT_INPUT_TOKEN"
    );
    assert!(
        r.unrecognized.is_empty(),
        "we passed an argument the agent does not know: {:?}",
        r.unrecognized
    );
    assert_eq!(std::path::Path::new(&r.cwd), dir);
    assert!(
        r.argv
            .iter()
            .all(|a| a != "configure" || r.argv.iter().filter(|x| *x == "configure").count() == 1)
    );

    // Registered on the server, service installed and started.
    let agents = w.server_agents(1);
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].name, "test-agent");
    let log = w.systemctl_log();
    assert!(
        log.contains("enable vsts.agent.127.Default.test\\x2dagent.service"),
        "{log}"
    );
    assert!(
        log.contains("start vsts.agent.127.Default.test\\x2dagent.service"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(".service"))
            .unwrap()
            .trim(),
        "vsts.agent.127.Default.test\\x2dagent.service"
    );

    // Remembered for later runs, and the package cached under its digest.
    let state_files: Vec<_> = std::fs::read_dir(w.state_dir().join("agents"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(state_files.len(), 1);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_files[0].path()).unwrap()).unwrap();
    assert_eq!(saved["agent_name"], "test-agent");
    assert_eq!(saved["pool_id"], 1);
    assert_eq!(saved["user"], w.user.as_str());
    let mut cached = w.cache_files();
    cached.sort();
    // The verified archive, and what it took once extracted (for the next free-space check).
    assert_eq!(
        cached,
        vec![
            format!("{}.size", w.sim.package.sha256),
            format!("{}.tar.gz", w.sim.package.sha256)
        ]
    );
    assert!(w.staging_leftovers().is_empty());

    // Every Azure DevOps call carried the identity's token; the download carried none.
    for r in w.requests() {
        if r.path.starts_with("/myorg/") {
            assert_eq!(r.caller, ids::SYSTEM_OBJECT, "{r:?}");
        }
    }
}

#[test]
fn user_assigned_identity_is_selected_by_client_object_or_resource_id() {
    for (flag, value, param) in [
        ("--client-id", ids::UAMI_CLIENT, "client_id"),
        ("--object-id", ids::UAMI_OBJECT, "object_id"),
        ("--resource-id", ids::UAMI_RESOURCE, "msi_res_id"),
    ] {
        let w = World::new();
        w.install(&[flag, value]).assert_code(0);
        let imds = w.imds_token_requests();
        assert_eq!(imds.len(), 1);
        // The auto chain probed IMDS once (no Metadata header: IMDS answers 400) before asking.
        assert_eq!(w.imds_probes(), 1);
        assert!(
            imds[0].query.contains(&format!("{param}=")),
            "{}",
            imds[0].query
        );
        assert!(
            imds[0]
                .query
                .contains("resource=499b84ac-1321-427f-aa17-267ca6975798")
        );
        assert!(imds[0].query.contains("api-version=2018-02-01"));
        let ado: Vec<_> = w
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/myorg/"))
            .collect();
        assert!(ado.iter().all(|r| r.caller == ids::UAMI_OBJECT), "{ado:?}");
    }
}

#[test]
fn imds_answering_410_for_a_while_is_waited_out() {
    let w = World::new();
    for _ in 0..6 {
        w.sim.state().imds_script.push_back(Scripted::status(410));
    }
    let run = w.install(&[]);
    run.assert_code(0);
    assert_eq!(w.imds_token_requests().len(), 7);
    // 410 waits 10 s (plus up to 10 % jitter) each time.
    let waits = retry_waits(&run.stderr);
    assert_eq!(waits.len(), 6, "{}", run.stderr);
    assert!(waits.iter().all(|w| (10.0..=11.0).contains(w)), "{waits:?}");
}

#[test]
fn imds_429_honours_retry_after() {
    let w = World::new();
    w.sim.state().imds_script.push_back(Scripted {
        status: 429,
        retry_after: Some(7),
        body: r#"{"error":"too_many_requests"}"#.into(),
        headers: vec![],
    });
    w.sim.state().imds_script.push_back(Scripted::status(503));
    let run = w.install(&[]);
    run.assert_code(0);
    assert_eq!(w.imds_token_requests().len(), 3);
    // Retry-After is never shortened, only lengthened by a little jitter.
    let waits = retry_waits(&run.stderr);
    assert!((7.0..=7.7).contains(&waits[0]), "{waits:?}");
}

#[test]
fn imds_that_never_recovers_exits_3_after_the_budget() {
    let w = World::new();
    for _ in 0..40 {
        w.sim.state().imds_script.push_back(Scripted::status(500));
    }
    let run = w.install(&[]);
    run.assert_code(3);
    assert!(run.stderr.contains("no token from IMDS"), "{}", run.stderr);
    assert_eq!(w.count("GET", "/myorg/"), 0);
    assert!(!w.agent_dir().exists());
}

#[test]
fn no_identity_exits_3_and_says_so() {
    let w = World::with(|c| c.identities.iter_mut().for_each(|i| i.assigned = false));
    let run = w.install(&[]);
    run.assert_code(3);
    assert!(
        run.stderr
            .contains("no managed identity is assigned to this VM"),
        "{}",
        run.stderr
    );
    assert_eq!(w.imds_token_requests().len(), 1, "400 is not retried");
    assert_eq!(w.count("GET", "/myorg/"), 0);
    assert!(!w.agent_dir().exists());
}

#[test]
fn unassigned_selector_exits_3_naming_the_flag() {
    let w = World::new();
    let run = w.install(&["--client-id", ids::UNASSIGNED_CLIENT]);
    run.assert_code(3);
    assert!(
        run.stderr
            .contains("the selected identity is not assigned to this VM"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("--client-id {}", ids::UNASSIGNED_CLIENT))
    );
}

#[test]
fn identity_not_in_the_organization_exits_4_with_the_fix() {
    let w = World::new();
    let run = w.install(&["--client-id", ids::OUTSIDER_CLIENT]);
    run.assert_code(4);
    assert!(run.stderr.contains("TF400813"), "{}", run.stderr);
    assert!(
        run.stderr.contains("add the identity to the organization"),
        "{}",
        run.stderr
    );
    assert_eq!(w.downloads(), 0);
    assert!(!w.agent_dir().exists());
    assert!(!w.state_dir().join("agents").exists(), "no settings saved");
}

#[test]
fn missing_pool_exits_4_and_lists_the_visible_pools() {
    let w = World::new();
    let run = w.install(&["--pool", "Nope"]);
    run.assert_code(4);
    assert!(
        run.stderr.contains("agent pool 'Nope' was not found"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("'Default'"), "{}", run.stderr);
    assert_eq!(w.downloads(), 0);
    assert!(!w.agent_dir().exists());
}

#[test]
fn no_manage_permission_exits_4_before_any_download() {
    let w = World::new();
    let run = w.install(&["--client-id", ids::NO_MANAGE_CLIENT]);
    run.assert_code(4);
    assert!(
        run.stderr
            .contains("may not register agents in pool 'Default'"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Administrator"), "{}", run.stderr);
    // The packages API may be asked alongside the pool (read-only); nothing is downloaded.
    assert_eq!(w.downloads(), 0);
    assert!(!w.agent_dir().exists());
    assert!(w.server_agents(1).is_empty());
}

#[test]
fn hash_mismatch_exits_5_and_installs_nothing() {
    let w = World::new();
    w.sim.state().package_faults.corrupt = true;
    let run = w.install(&[]);
    run.assert_code(5);
    assert!(run.stderr.contains("SHA-256 mismatch"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&w.sim.package.sha256),
        "the expected digest is named"
    );
    assert!(!w.agent_dir().exists(), "nothing was moved into place");
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );
    assert!(w.cache_files().is_empty(), "{:?}", w.cache_files());
    assert!(w.server_agents(1).is_empty());
    assert!(w.sim.state().listener_reports.is_empty());
}

#[test]
fn a_connection_cut_mid_download_resumes_with_range() {
    let w = World::new();
    {
        let mut st = w.sim.state();
        st.package_faults.cut_after = Some(300_000);
        st.package_faults.cuts_left = 2;
    }
    let run = w.install(&[]);
    run.assert_code(0);
    let downloads: Vec<_> = w
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/_download/"))
        .collect();
    assert_eq!(downloads.len(), 3, "{downloads:?}");
    assert_eq!(downloads[0].range, None);
    // Each retry asks for the rest, from what had arrived (the client may have received a little
    // less than the server sent before the cut).
    let offsets: Vec<u64> = downloads[1..]
        .iter()
        .map(|r| {
            let range = r.range.as_deref().expect("a resumed request carries Range");
            range
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap()
        })
        .collect();
    assert!(offsets[0] > 0 && offsets[0] <= 300_000, "{offsets:?}");
    assert!(
        offsets[1] > offsets[0] && offsets[1] <= offsets[0] + 300_000,
        "{offsets:?}"
    );
    assert_eq!(retry_waits(&run.stderr).len(), 2, "{}", run.stderr);
    assert!(w.agent_dir().join(".agent").is_file());
}

#[test]
fn a_server_that_ignores_range_is_handled() {
    let w = World::new();
    {
        let mut st = w.sim.state();
        st.package_faults.cut_after = Some(250_000);
        st.package_faults.cuts_left = 1;
        st.package_faults.ignore_range = true;
    }
    w.install(&[]).assert_code(0);
    assert_eq!(w.downloads(), 2);
}

#[test]
fn download_http_error_exits_5() {
    let w = World::new();
    w.sim.state().package_faults.fail_status = Some(404);
    let run = w.install(&[]);
    run.assert_code(5);
    assert!(run.stderr.contains("HTTP 404"), "{}", run.stderr);
    assert!(!w.agent_dir().exists());
}

#[test]
fn config_failure_exits_6_with_the_agents_own_error_line() {
    let w = World::new();
    w.sim.state().fail_agent_add = true;
    let run = w.install(&[]);
    run.assert_code(6);
    assert!(
        run.stderr
            .contains("Access denied. vm-agent-01 needs Manage permissions for pool Default"),
        "{}",
        run.stderr
    );
    assert!(!w.agent_dir().join(".agent").exists());
    assert!(
        w.systemctl_changes().is_empty(),
        "no service step after a failed configure"
    );
}

#[test]
fn config_that_loops_forever_is_stopped_after_the_timeout() {
    let w = World::new();
    w.make_configure_loop();
    let start = std::time::Instant::now();
    let run = w.install(&["--config-timeout", "3", "--replace"]);
    run.assert_code(6);
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert!(
        run.stderr.contains("did not finish within 3s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Failed to replace the agent"),
        "{}",
        run.stderr
    );
    // The whole process group is gone: no fake listener for this agent dir still runs.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let root = w.agent_dir().display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !(cmd.contains("fake-listener") && cmd.contains(&root)),
                "left running: {cmd}"
            );
        }
    }
}

#[test]
fn a_second_install_is_a_quick_no_op() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    let requests_before = w.requests().len();
    let log_before = w.systemctl_changes();
    let agent_before = std::fs::read(w.agent_dir().join(".agent")).unwrap();
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        run.stdout.starts_with("already installed, nothing to do"),
        "{}",
        run.stdout
    );
    let new: Vec<_> = w.requests()[requests_before..].to_vec();
    // The IMDS probe, IMDS, connection data, pool (manage), the agent by name: nothing else.
    assert_eq!(new.len(), 5, "{new:?}");
    assert!(new.iter().all(|r| r.method == "GET"));
    assert_eq!(w.downloads(), 1);
    assert_eq!(w.systemctl_changes(), log_before);
    assert_eq!(
        std::fs::read(w.agent_dir().join(".agent")).unwrap(),
        agent_before
    );
    assert_eq!(
        w.sim.state().listener_reports.len(),
        1,
        "config.sh ran once"
    );
}

#[test]
fn an_agent_deleted_on_the_server_is_registered_again() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    w.sim.state().agents.clear();
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("unknown to the server"),
        "{}",
        run.stderr
    );
    let agents = w.server_agents(1);
    assert_eq!(agents.len(), 1);
    assert_eq!(
        read_agent_json(&w.agent_dir().join(".agent"))["agentId"],
        agents[0].id
    );
    assert_eq!(w.downloads(), 1, "the package is not downloaded again");
}

#[test]
fn an_agent_dir_configured_for_something_else_is_refused_with_exit_2() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    let before = w.requests().len();
    let run = w.install(&["--agent-name", "other-name"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("already holds agent 'test-agent'"),
        "{}",
        run.stderr
    );
    assert_eq!(w.requests().len(), before, "nothing contacted");
}

#[test]
fn bad_input_exits_2_naming_the_flag_with_nothing_contacted() {
    let w = World::new();
    let url = w.org_url();
    let dir = w.agent_dir();
    let dir = dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["install"], "--org/--url"),
        (
            vec![
                "install",
                "--url",
                "http://dev.azure.com/x",
                "--agent-dir",
                dir,
            ],
            "plain http",
        ),
        (
            vec![
                "install",
                "--url",
                "https://u:p@dev.azure.com/x",
                "--agent-dir",
                dir,
            ],
            "credentials",
        ),
        (
            vec!["install", "--org", "my org", "--agent-dir", dir],
            "--org",
        ),
        (vec!["install", "--org", "a", "--url", &url], "--url"),
        (
            vec!["install", "--url", &url, "--agent-dir", "relative"],
            "--agent-dir",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--agent-name",
                "a/b",
            ],
            "--agent-name",
        ),
        (
            vec!["install", "--url", &url, "--agent-dir", dir, "--pool", " "],
            "--pool",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--client-id",
                "nope",
            ],
            "--client-id",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--client-id",
                ids::UAMI_CLIENT,
                "--object-id",
                ids::UAMI_OBJECT,
            ],
            "--object-id",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--resource-id",
                "/subscriptions/x",
            ],
            "--resource-id",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--agent-version",
                "4.x",
            ],
            "--agent-version",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--package",
                "/no/such/file.tar.gz",
            ],
            "--package",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--package-sha256",
                "ab",
            ],
            "--package",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--package",
                "https://m.example/a.tar.gz",
                "--package-sha256",
                "xyz",
            ],
            "--package-sha256",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--user",
                "Not Valid",
            ],
            "--user",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--user",
                "no-such-user-xyz",
            ],
            "does not exist",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--log-format",
                "xml",
            ],
            "--log-format",
        ),
        (
            vec![
                "install",
                "--url",
                &url,
                "--agent-dir",
                dir,
                "--config-timeout",
                "0",
            ],
            "--config-timeout",
        ),
        (vec!["token", "--client-id", "x"], "--client-id"),
        (vec!["frobnicate"], "frobnicate"),
        (
            vec!["reconcile", "--agent-dir", "relative/dir"],
            "--agent-dir",
        ),
        (
            vec!["remove", "--agent-dir", "relative/dir", "--purge"],
            "--agent-dir",
        ),
        (
            vec!["status", "--agent-dir", "relative/dir", "--json"],
            "--agent-dir",
        ),
        (vec!["status", "--format", "xml"], "--format"),
    ];
    for (args, needle) in cases {
        let before = w.requests().len();
        let run = w.run(&args);
        assert_eq!(run.code, 2, "{args:?}\n{}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{args:?}: {needle:?} not in\n{}",
            run.stderr
        );
        let new: Vec<_> = w.requests()[before..].to_vec();
        // A missing --user is found only after the token and preflight; everything else before any
        // request at all.
        if needle != "does not exist" {
            assert!(new.is_empty(), "{args:?} contacted {new:?}");
        } else {
            assert_eq!(w.downloads(), 0);
        }
        assert!(!w.agent_dir().exists(), "{args:?} touched the disk");
    }
}

#[test]
fn token_prints_only_the_token() {
    let w = World::new();
    let run = w.run(&["token"]);
    run.assert_code(0);
    let tokens = w.issued_tokens();
    assert_eq!(tokens.len(), 1);
    assert_eq!(run.stdout, format!("{}\n", tokens[0]));
    assert!(!run.stderr.contains(&tokens[0]));
    let run = w.run(&["token", "--client-id", ids::UAMI_CLIENT]);
    run.assert_code(0);
    assert_eq!(
        w.sim
            .state()
            .tokens
            .get(run.stdout.trim())
            .map(String::as_str),
        Some(ids::UAMI_OBJECT)
    );
}

#[test]
fn token_without_identity_exits_3() {
    let w = World::with(|c| c.identities.iter_mut().for_each(|i| i.assigned = false));
    let run = w.run(&["token"]);
    run.assert_code(3);
    assert!(run.stdout.is_empty());
}

#[test]
fn dry_run_checks_access_prints_the_plan_and_changes_nothing() {
    let w = World::new();
    let run = w.install(&["--dry-run"]);
    run.assert_code(0);
    assert!(
        run.stdout.starts_with("dry run: nothing was changed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("VSTS_AGENT_INPUT_TOKEN=*** "),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("--unattended --url"), "{}", run.stdout);
    assert!(run.stdout.contains(
        "--auth pat --pool Default --agent test-agent --work _work --replace --acceptTeeEula"
    ));
    assert!(run.stdout.contains(&w.sim.package.sha256));
    let unit = "vsts.agent.127.Default.test\\x2dagent.service";
    assert!(
        run.stdout.contains(&format!(
            "write the unit {unit} (the agent's template, User={})",
            w.user
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("systemctl start {unit}")));
    assert!(
        run.stdout
            .contains("(runs `agent-bootstrap reconcile` at every boot)")
    );
    assert!(!run.stdout.contains("svc.sh"), "root never runs svc.sh");
    // The steps are numbered in the order a real run takes them.
    let configure = run.stdout.find(&format!("run as '{}'", w.user)).unwrap();
    let save = run.stdout.find("save settings").unwrap();
    let boot = run.stdout.find("at every boot").unwrap();
    assert!(configure < save && save < boot);
    assert!(!w.agent_dir().exists());
    assert!(!w.state_dir().exists());
    assert!(!w.cache_dir().exists());
    assert_eq!(w.downloads(), 0);
    assert_eq!(w.count("POST", "/agents"), 0);
    assert!(w.sim.state().listener_reports.is_empty());
    assert!(w.systemctl_changes().is_empty());

    // --no-service: no unit for the agent, and the boot unit shown because it is installed.
    let run = w.install(&["--dry-run", "--no-service"]);
    run.assert_code(0);
    assert!(
        !run.stdout.contains("write the unit vsts.agent"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("at every boot"), "{}", run.stdout);
    let real = w.install(&["--no-service"]);
    real.assert_code(0);
    assert!(
        std::fs::read_dir(w.sim.systemd_dir().join("units"))
            .unwrap()
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("agent-bootstrap-"))
    );
}

#[test]
fn no_service_skips_the_service_steps() {
    let w = World::new();
    let run = w.install(&["--no-service"]);
    run.assert_code(0);
    assert!(run.stdout.contains("none (--no-service)"), "{}", run.stdout);
    let changes = w.systemctl_changes();
    assert!(
        !changes.iter().any(|l| l.contains("vsts.agent")),
        "{changes:?}"
    );
    assert!(!w.agent_dir().join(".service").exists());
    assert!(w.agent_dir().join(".agent").exists());
}

#[test]
fn service_failure_exits_7() {
    let w = World::new();
    std::fs::write(w.sim.systemd_dir().join("fail-start"), "").unwrap();
    let run = w.install(&[]);
    run.assert_code(7);
    assert!(
        run.stderr.contains("systemctl start") && run.stderr.contains("failed"),
        "{}",
        run.stderr
    );
    // Registered and remembered, the unit installed but not started: a re-run finishes the job.
    assert!(w.agent_dir().join(".agent").exists());
    assert!(w.state_dir().join("agents").read_dir().unwrap().count() == 1);
    std::fs::remove_file(w.sim.systemd_dir().join("fail-start")).unwrap();
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        run.stdout.starts_with("already installed"),
        "{}",
        run.stdout
    );
    assert!(
        w.sim
            .systemd_dir()
            .join("state/vsts.agent.127.Default.test\\x2dagent.service.active")
            .exists()
    );
}

#[test]
fn root_is_allowed_explicitly_with_a_warning() {
    let w = World::new();
    let run = w.install(&["--user", "root"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("the agent will run as root"),
        "{}",
        run.stderr
    );
    assert_eq!(w.sim.state().listener_reports[0].uid, 0);
    assert!(w.systemctl_log().contains("enable"));
    assert!(
        std::fs::read_to_string(
            w.sim
                .systemd_dir()
                .join("units/vsts.agent.127.Default.test\\x2dagent.service")
        )
        .unwrap()
        .contains("User=root")
    );
}

#[test]
fn explicit_package_file_with_and_without_digest() {
    let w = World::new();
    let pkg = w.sim.package.path.display().to_string();
    let sha = w.sim.package.sha256.clone();
    w.install(&[
        "--package",
        &pkg,
        "--package-sha256",
        &sha.to_uppercase(),
        "--no-service",
    ])
    .assert_code(0);
    assert_eq!(
        w.count("GET", "/packages/agent"),
        0,
        "the packages API is not asked"
    );
    assert_eq!(w.downloads(), 0);

    let w2 = World::new();
    let run = w2.install(&["--package", &pkg, "--no-service"]);
    run.assert_code(0);
    assert!(run.stderr.contains("was not verified"), "{}", run.stderr);
    assert!(run.stderr.contains(&sha));

    let w3 = World::new();
    let run = w3.install(&[
        "--package",
        &pkg,
        "--package-sha256",
        &"0".repeat(64),
        "--no-service",
    ]);
    run.assert_code(5);
    assert!(!w3.agent_dir().exists());
}

#[test]
fn explicit_package_url_is_downloaded_without_credentials() {
    let w = World::new();
    let url = format!(
        "{}/_download/agent/{}/{}",
        w.sim.base_url(),
        w.sim.config.package.version,
        w.sim.config.package.file_name()
    );
    let sha = w.sim.package.sha256.clone();
    w.install(&["--package", &url, "--package-sha256", &sha])
        .assert_code(0);
    assert_eq!(w.downloads(), 1);
}

#[test]
fn pinned_version_that_the_api_does_not_offer_exits_5() {
    let w = World::new();
    let run = w.install(&["--agent-version", "3.1.0"]);
    run.assert_code(5);
    assert!(run.stderr.contains("at version 3.1.0"), "{}", run.stderr);
    w.install(&["--agent-version", "4.264.2"]).assert_code(0);
}

#[test]
fn a_baked_in_package_of_the_right_version_is_used_without_download() {
    let w = World::new();
    // An image build extracted the package as root and never configured it.
    w.extract_package_into(&w.agent_dir());
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("version 4.264.2 is already extracted"),
        "{}",
        run.stderr
    );
    assert_eq!(w.downloads(), 0);
    let uid = agent_user().uid.as_raw();
    assert_eq!(owner(&w.agent_dir().join("config.sh")), uid);
}

#[test]
fn a_self_updated_agent_is_never_re_extracted() {
    let w = World::new();
    let dir = w.agent_dir();
    std::fs::create_dir_all(dir.join("bin.4.300.0")).unwrap();
    w.extract_package_into(&dir);
    // What the self-updater leaves: bin → bin.<new>.
    std::fs::rename(dir.join("bin"), dir.join("bin.4.300.0-real")).unwrap();
    std::fs::remove_dir(dir.join("bin.4.300.0")).unwrap();
    std::os::unix::fs::symlink("bin.4.300.0-real", dir.join("bin")).unwrap();
    let run = w.install(&["--no-service"]);
    run.assert_code(0);
    assert!(run.stderr.contains("updated itself"), "{}", run.stderr);
    assert_eq!(w.downloads(), 0);
    assert!(
        std::fs::symlink_metadata(dir.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_registration_left_by_an_interrupted_configure_is_cleaned_up() {
    let w = World::new();
    w.extract_package_into(&w.agent_dir());
    std::fs::write(w.agent_dir().join(".credentials"), "\u{feff}{}").unwrap();
    std::fs::write(w.agent_dir().join(".credentials_rsaparams"), "\u{feff}{}").unwrap();
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("interrupted configuration"),
        "{}",
        run.stderr
    );
    assert_eq!(
        read_agent_json(&w.agent_dir().join(".credentials"))["scheme"],
        "OAuth"
    );
}

#[test]
fn environment_variables_of_the_docker_sample_are_honoured() {
    let w = World::with(|c| {
        c.pools.push(PoolSpec {
            id: 3,
            name: "EnvPool".into(),
            admins: vec![ids::SYSTEM_OBJECT.into()],
        });
    });
    let mut cmd = w.command(&[
        "install",
        "--agent-dir",
        w.agent_dir().to_str().unwrap(),
        "--no-service",
    ]);
    cmd.env("AZP_URL", w.org_url())
        .env("AZP_POOL", "EnvPool")
        .env("AZP_AGENT_NAME", "env-agent")
        .env("AZP_WORK", "/tmp/agent-bootstrap-tests/work-x")
        // A stray input variable must not reach the listener.
        .env("VSTS_AGENT_INPUT_POOL", "Default");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let agent = read_agent_json(&w.agent_dir().join(".agent"));
    assert_eq!(agent["agentName"], "env-agent");
    assert_eq!(agent["poolName"], "EnvPool");
    assert_eq!(agent["workFolder"], "/tmp/agent-bootstrap-tests/work-x");
    assert_eq!(w.server_agents(3).len(), 1);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let w = World::new();
    let run = w.install(&["--log-format", "json", "--no-service"]);
    run.assert_code(0);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(lines.len() > 3);
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some());
    }
    // stdout stays data.
    assert!(run.stdout.starts_with("installed"));
}

#[test]
fn without_root_it_configures_as_the_current_user_with_no_service() {
    // A container image running as its own user (no root, no systemd).
    let w = World::new();
    let (user, home) = w.nobody_home();
    let url = w.org_url();
    let agent_dir = home.join("agent");
    let state = home.join("state");
    let cache = home.join("cache");
    let mut cmd = w.command(&[
        "install",
        "--url",
        &url,
        "--agent-dir",
        agent_dir.to_str().unwrap(),
        "--agent-name",
        "rootless",
    ]);
    cmd.env("AGENT_BOOTSTRAP_STATE_DIR", &state)
        .env("AGENT_BOOTSTRAP_CACHE_DIR", &cache)
        .env("HOME", &home)
        .env_remove("AGENT_BOOTSTRAP_UNIT_DIR");
    let run = w.run_cmd(as_user(&cmd, &user));
    // Without --no-service: refused, naming the flag, before anything is contacted.
    run.assert_code(2);
    assert!(run.stderr.contains("--no-service"), "{}", run.stderr);
    assert!(w.requests().is_empty());

    cmd.arg("--no-service");
    let run = w.run_cmd(as_user(&cmd, &user));
    run.assert_code(0);
    assert!(
        run.stdout.contains("runs as:      nobody"),
        "{}",
        run.stdout
    );
    assert_eq!(w.sim.state().listener_reports[0].uid, user.uid.as_raw());
    assert_eq!(owner(&agent_dir.join(".agent")), user.uid.as_raw());
}

#[test]
fn a_hostile_package_is_refused_and_nothing_escapes() {
    let w = World::new();
    let evil = w.dir.path().join("evil.tar.gz");
    {
        let f = std::fs::File::create(&evil).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "bin/Agent.Listener", &b"#!"[..])
            .unwrap();
        // An entry that climbs out of the agent dir, written raw as an attacker would.
        let mut h = tar::Header::new_old();
        let name = b"../escaped-file";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let run = w.install(&["--package", evil.to_str().unwrap()]);
    run.assert_code(5);
    assert!(
        run.stderr.contains("outside the agent directory"),
        "{}",
        run.stderr
    );
    assert!(!w.dir.path().join("escaped-file").exists());
    assert!(!w.agent_dir().exists());
    assert!(w.staging_leftovers().is_empty());
    assert!(w.server_agents(1).is_empty());
}

#[test]
fn re_registering_an_agent_whose_unit_is_gone_installs_the_unit_again() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    std::fs::remove_file(w.units_dir().join(UNIT)).unwrap();
    for s in ["active", "enabled"] {
        let _ = std::fs::remove_file(w.sim.systemd_dir().join(format!("state/{UNIT}.{s}")));
    }
    w.sim.state().agents.clear();
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(run.stderr.contains("not loaded"), "{}", run.stderr);
    assert!(w.units_dir().join(UNIT).is_file());
    assert!(w.unit_active(UNIT) && w.unit_enabled(UNIT));
    assert_eq!(w.server_agents(1).len(), 1);
}

/// A fake `chcon` that records its arguments, and fails while `<world>/chcon-fails` exists.
fn fake_chcon(w: &World) -> std::path::PathBuf {
    let log = w.dir.path().join("chcon.log");
    let fails = w.dir.path().join("chcon-fails");
    w.fake_tool(
        "chcon",
        &format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nif [ -e '{}' ]; then echo \"chcon: failed to change context of '$3': Operation not permitted\" >&2; exit 1; fi\n",
            log.display(),
            fails.display()
        ),
    );
    log
}

fn chcon_calls(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn with_selinux_enabled_the_units_and_runsvc_get_the_labels_svc_sh_gives_them() {
    let w = World::new();
    let log = fake_chcon(&w);
    let mut cmd = w.install_command(&[]);
    cmd.env("AGENT_BOOTSTRAP_TEST_SELINUX", "enforcing");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let calls = chcon_calls(&log);
    let unit = w.units_dir().join(UNIT);
    let runsvc = w.agent_dir().join("runsvc.sh");
    let want_unit = format!(
        "-h system_u:object_r:systemd_unit_file_t:s0 {}",
        unit.display()
    );
    let want_runsvc = format!("-h system_u:object_r:usr_t:s0 {}", runsvc.display());
    assert!(calls.contains(&want_unit), "{calls:?}");
    assert!(calls.contains(&want_runsvc), "{calls:?}");
    // The boot unit too, and nothing outside the unit dir but runsvc.sh.
    let units = w.units_dir().display().to_string();
    assert!(
        calls
            .iter()
            .any(|c| c.contains("systemd_unit_file_t") && c.contains("/agent-bootstrap-")),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.contains(&units) || *c == want_runsvc),
        "{calls:?}"
    );
    assert!(
        run.stderr
            .contains("SELinux is enabled: labelled for systemd"),
        "{}",
        run.stderr
    );

    // A rerun on a healthy agent labels runsvc.sh again (a job may have replaced it), no unit.
    std::fs::remove_file(&log).unwrap();
    let mut cmd = w.install_command(&[]);
    cmd.env("AGENT_BOOTSTRAP_TEST_SELINUX", "enforcing");
    w.run_cmd(cmd).assert_code(0);
    assert_eq!(chcon_calls(&log), vec![want_runsvc]);

    // Without SELinux nothing is labelled.
    std::fs::remove_file(&log).unwrap();
    w.install(&[]).assert_code(0);
    assert!(chcon_calls(&log).is_empty());
}

#[test]
fn a_label_selinux_would_refuse_stops_the_install_when_enforcing_and_is_a_warning_when_permissive()
{
    let w = World::new();
    let log = fake_chcon(&w);
    std::fs::write(w.dir.path().join("chcon-fails"), "").unwrap();
    let mut cmd = w.install_command(&[]);
    cmd.env("AGENT_BOOTSTRAP_TEST_SELINUX", "enforcing");
    let run = w.run_cmd(cmd);
    run.assert_code(7);
    let unit = w.units_dir().join(UNIT);
    assert!(
        run.stderr.contains(&format!(
            "SELinux enforces here, and {} could not be labelled system_u:object_r:systemd_unit_file_t:s0",
            unit.display()
        )) && run.stderr.contains("fix: chcon -h")
            && run.stderr.contains("Operation not permitted"),
        "{}",
        run.stderr
    );
    assert_eq!(chcon_calls(&log).len(), 1);

    let mut cmd = w.install_command(&[]);
    cmd.env("AGENT_BOOTSTRAP_TEST_SELINUX", "permissive");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("SELinux is permissive: could not label"),
        "{}",
        run.stderr
    );
}

/// `--capability KEY=VALUE`: the agent's `.capabilities` (the real agent's
/// UserCapabilitiesProvider reads it when it registers and whenever it starts), written by the
/// agent user before configure, so the registration carries the capabilities; saved, so the
/// re-registration of an agent deleted on the server carries them again. Bad input names the flag.
#[test]
fn capabilities_reach_the_registration_and_survive_a_re_registration() {
    let w = World::new();
    let run = w.install(&[
        "--capability",
        "gpu=true",
        "--capability",
        "image.version=2026.12=rc1",
    ]);
    run.assert_code(0);
    let caps = |w: &World| {
        let agents = w.server_agents(1);
        assert_eq!(agents.len(), 1);
        agents[0].system_capabilities.clone()
    };
    let got = caps(&w);
    assert_eq!(got.get("gpu").map(String::as_str), Some("true"));
    assert_eq!(
        got.get("image.version").map(String::as_str),
        Some("2026.12=rc1")
    );
    let file = w.agent_dir().join(".capabilities");
    let vm = w.sim.state().vm_id.clone();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("AgentBootstrap.Machine={vm}\ngpu=true\nimage.version=2026.12=rc1\n")
    );
    assert_eq!(owner(&file), w.agent_account().uid.as_raw());

    // Deleted on the server: reconcile registers it again, from the saved settings.
    w.sim.state().agents.clear();
    w.reconcile().assert_code(0);
    assert_eq!(caps(&w).get("gpu").map(String::as_str), Some("true"));

    for bad in ["gpu", "=true", "a b=c", "gpu=a\nb"] {
        let w = World::new();
        let run = w.install(&["--capability", bad]);
        run.assert_code(2);
        assert!(run.stderr.contains("--capability"), "{bad}: {}", run.stderr);
        assert!(w.requests().is_empty(), "{bad}");
    }
    let run = w.install(&["--capability", "gpu=1", "--capability", "gpu=2"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("'gpu' is given twice"),
        "{}",
        run.stderr
    );
}

/// An agent dir without a registration, and the pool has an agent of that name: it is this
/// machine's own when root's saved settings name it (an install killed before `.agent`) or when
/// it carries this machine's `AgentBootstrap.Machine` capability (written before configure: a
/// reimaged VM, its state gone), and then it is registered again in its place; another machine's,
/// or one registered by hand, is never taken over without --replace (exit 4, before anything is
/// downloaded or changed).
#[test]
fn a_same_named_agent_is_replaced_only_on_evidence_that_it_is_this_machines() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    let first = w.server_agents(1);
    assert_eq!(
        first[0].system_capabilities.get("AgentBootstrap.Machine"),
        Some(&w.sim.state().vm_id),
        "the registration names this VM"
    );

    // Killed before `.agent` was written: root's saved settings name the agent.
    std::fs::remove_file(w.agent_dir().join(".agent")).unwrap();
    let run = w.install(&[]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("registered from this machine"),
        "{}",
        run.stderr
    );
    assert_eq!(w.server_agents(1).len(), 1);

    // Reimaged: no `.agent`, no saved settings; the capability is the evidence.
    std::fs::remove_file(w.agent_dir().join(".agent")).unwrap();
    for f in w.saved_settings_files() {
        std::fs::remove_file(f).unwrap();
    }
    w.install(&[]).assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);

    // Another machine's agent of that name, and one registered by hand: left alone.
    for (capability, says) in [
        (
            Some("another-vm"),
            "registered from another machine (AgentBootstrap.Machine another-vm)",
        ),
        (None, "not registered by agent-bootstrap on this machine"),
    ] {
        let w = World::new();
        {
            let mut st = w.sim.state();
            let mut agent = azure_sim::ServerAgent {
                id: 77,
                name: "test-agent".into(),
                version: "4.264.2".into(),
                status: "online".into(),
                enabled: true,
                public_key: "theirs".into(),
                created_on: 0,
                status_changed_on: 0,
                assigned_request: None,
                system_capabilities: Default::default(),
            };
            if let Some(c) = capability {
                agent
                    .system_capabilities
                    .insert("AgentBootstrap.Machine".into(), c.into());
            }
            st.agents.insert(1, vec![agent]);
        }
        let run = w.install(&[]);
        run.assert_code(4);
        assert!(
            run.stderr.contains(says) && run.stderr.contains("--replace"),
            "{}",
            run.stderr
        );
        let agents = w.server_agents(1);
        assert_eq!((agents.len(), agents[0].id), (1, 77));
        assert_eq!(agents[0].public_key, "theirs", "not taken over");
        assert_eq!(w.downloads(), 0, "nothing downloaded");
        assert!(!w.agent_dir().exists());

        let run = w.install(&["--replace"]);
        run.assert_code(0);
        let agents = w.server_agents(1);
        assert_eq!(agents.len(), 1);
        assert_ne!(agents[0].public_key, "theirs", "taken over with --replace");
    }
}

/// `--count N`: N agents on one machine, NAME-i in DIR-i, each as a dedicated account of its own
/// with its own unit; each agent dir is reconciled and removed on its own. An account shared by
/// two agents is refused (configuring one would end the other's processes).
#[test]
fn count_installs_several_agents_each_with_its_own_account_dir_and_unit() {
    let w = World::new();
    let run = w.install(&["--count", "2"]);
    let users: Vec<String> = (1..=2).map(|i| format!("{}-{i}", w.user)).collect();
    let cleanup = || {
        for u in &users {
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-U", u])
                .output();
            let _ = std::process::Command::new("userdel")
                .args(["--remove", u])
                .output();
        }
    };
    if run.code != 0 {
        cleanup();
    }
    run.assert_code(0);
    let mut names: Vec<String> = w.server_agents(1).into_iter().map(|a| a.name).collect();
    names.sort();
    assert_eq!(names, ["test-agent-1", "test-agent-2"]);
    let dir = w.agent_dir().display().to_string();
    let mut units = vec![];
    for (i, user) in users.iter().enumerate() {
        let d = std::path::PathBuf::from(format!("{dir}-{}", i + 1));
        let agent = read_agent_json(&d.join(".agent"));
        assert_eq!(agent["agentName"], format!("test-agent-{}", i + 1));
        let uid = nix::unistd::User::from_name(user)
            .unwrap()
            .expect("its account")
            .uid;
        assert_eq!(owner(&d.join(".agent")), uid.as_raw(), "{user}");
        units.push(d);
    }
    assert_eq!(w.saved_settings_files().len(), 2);
    // Each agent dir on its own: reconcile (after a delete on the server) and remove.
    w.sim
        .state()
        .agents
        .get_mut(&1)
        .unwrap()
        .retain(|a| a.name != "test-agent-2");
    w.run(&["reconcile", "--agent-dir", units[1].to_str().unwrap()])
        .assert_code(0);
    assert_eq!(w.server_agents(1).len(), 2);
    w.run(&["remove", "--agent-dir", units[0].to_str().unwrap()])
        .assert_code(0);
    let names: Vec<String> = w.server_agents(1).into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["test-agent-2"]);
    w.run(&["remove", "--agent-dir", units[1].to_str().unwrap()])
        .assert_code(0);
    cleanup();

    for (args, flag) in [
        (&["--count", "2", "--user", "nobody"][..], "--user"),
        (&["--count", "0"][..], "--count"),
        (&["--count", "33"][..], "--count"),
    ] {
        let w = World::new();
        let run = w.install(args);
        run.assert_code(2);
        assert!(run.stderr.contains(flag), "{args:?}: {}", run.stderr);
        assert!(w.requests().is_empty(), "{args:?}");
    }
}
