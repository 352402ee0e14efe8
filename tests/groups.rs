//! Deployment groups and environments (`--deployment-group`, `--environment`): the agent is
//! configured with the real agent's `--deploymentgroup` / `--environment` options, registered as
//! a deployment target or a VM resource with its tags, and reconcile, remove and status follow it
//! through the group's own routes. The real binary against the simulator, which serves those
//! routes and whose fake `config.sh` registers the way the real agent's providers do.

#![cfg(unix)]

mod common;

use azure_sim::ids;
use common::*;

/// The saved settings of the world's one agent.
fn saved(w: &World) -> serde_json::Value {
    let files = w.saved_settings_files();
    assert_eq!(files.len(), 1, "{files:?}");
    serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap()
}

/// The agent's `.agent`, without the BOM.
fn dot_agent(w: &World) -> serde_json::Value {
    let text = std::fs::read_to_string(w.agent_dir().join(".agent")).unwrap();
    serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap()
}

/// The deployment group's targets: each one's agent name and id, and its tags.
fn targets(w: &World, group: u64, pool: u64) -> Vec<(String, u64, Vec<String>)> {
    w.sim
        .state()
        .targets(group, pool)
        .into_iter()
        .map(|(a, tags)| (a.name, a.id, tags))
        .collect()
}

/// The environment's VM resources: name, the agent's id (if it has one), tags.
fn vms(w: &World, env: u64, pool: u64) -> Vec<(String, Option<u64>, Vec<String>)> {
    w.sim
        .state()
        .environment_vms(env, pool)
        .into_iter()
        .map(|(r, a)| (r.name, a.map(|a| a.id), r.tags))
        .collect()
}

/// The group's members (`forget`) and every agent deleted on the server, then the boot's
/// reconcile, which must succeed.
fn deleted_on_server_then_reconciled(w: &World, forget: impl FnOnce(&mut azure_sim::State)) -> Run {
    {
        let mut state = w.sim.state();
        forget(&mut state);
        state.agents.clear();
    }
    let run = w.reconcile();
    run.assert_code(0);
    run
}

const DG: &[&str] = &["--deployment-group", "WebServers", "--project", "myproject"];
const ENV: &[&str] = &["--environment", "Production", "--project", "myproject"];

#[test]
fn a_deployment_group_agent_is_a_tagged_target_that_reconcile_restores_and_remove_deletes() {
    let w = World::new();
    let mut args = DG.to_vec();
    args.extend(["--tag", "web", "--tag", "db, WEB,,linux"]);
    let run = w.install(&args);
    run.assert_code(0);
    w.assert_no_token_leak(&run);
    assert!(
        run.stdout
            .contains("deployment group: WebServers (id 1) of project myproject"),
        "{}",
        run.stdout
    );
    // A target of group 1, its agent in the deployment pool 101, tagged as the agent takes tags.
    let t = targets(&w, 1, 101);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].0, "test-agent");
    assert_eq!(t[0].2, ["web", "db", "linux"]);
    assert!(w.server_agents(1).is_empty(), "nothing in the build pool");
    // What the agent and root wrote.
    let local = dot_agent(&w);
    assert_eq!(local["deploymentGroupId"], 1, "{local}");
    assert_eq!(local["poolId"], 101, "{local}");
    assert_eq!(local["projectId"], ids::PROJECT_ID, "{local}");
    let s = saved(&w);
    assert_eq!(s["group"]["kind"], "deployment_group", "{s}");
    assert_eq!(s["group"]["id"], 1);
    assert_eq!(s["group"]["project_id"], ids::PROJECT_ID);
    assert_eq!(s["pool"], "myproject-WebServers");
    assert_eq!(s["pool_id"], 101);
    assert_eq!(s["agent_id"], t[0].1);
    // The service is named after the deployment pool, as svc.sh names it.
    let unit = s["service_unit"].as_str().unwrap().to_owned();
    assert!(unit.contains("WebServers"), "{unit}");
    assert!(w.unit_active(&unit), "{unit}");

    // A second install changes nothing: the target is found through the group's route.
    w.install(&args).assert_code(0);
    assert_eq!(targets(&w, 1, 101).len(), 1);

    // Deleted on the server (the target and its agent): the boot's reconcile registers it again,
    // with the same tags.
    let run = deleted_on_server_then_reconciled(&w, |s| s.deployment_targets.clear());
    let t = targets(&w, 1, 101);
    assert_eq!(t.len(), 1, "{t:?}\n{}", run.stderr);
    assert_eq!(t[0].2, ["web", "db", "linux"]);
    assert_eq!(saved(&w)["agent_id"], t[0].1);

    // status asks the group, not a pool.
    let run = w.status(&["--output", "json"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("\"deployment_group\""),
        "{}",
        run.stdout
    );

    // remove deletes the target, and with it the agent, and everything local.
    let dir = w.agent_dir();
    let run = w.run(&["remove", "--agent-dir", dir.to_str().unwrap()]);
    run.assert_code(0);
    w.assert_no_token_leak(&run);
    assert!(targets(&w, 1, 101).is_empty());
    assert!(w.server_agents(101).is_empty());
    assert!(w.saved_settings_files().is_empty());
    assert!(w.count("DELETE", "/deploymentgroups/1/targets/") >= 1);
    // Never through the deployment pool, which the identity need not administer.
    assert_eq!(
        w.count("GET", "/pools/101/"),
        0,
        "nothing asked of the pool"
    );
    assert_eq!(
        w.count("DELETE", "/pools/"),
        0,
        "nothing deleted through a pool"
    );
}

#[test]
fn an_environment_agent_is_a_tagged_vm_resource_that_reconcile_restores_and_remove_deletes() {
    let w = World::new();
    let mut args = ENV.to_vec();
    args.extend(["--tag", "linux"]);
    let run = w.install(&args);
    run.assert_code(0);
    w.assert_no_token_leak(&run);
    let v = vms(&w, 1, 201);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "test-agent");
    assert_eq!(v[0].2, ["linux"]);
    let local = dot_agent(&w);
    assert_eq!(local["environmentId"], 1, "{local}");
    assert_eq!(local["environmentName"], "Production", "{local}");
    let s = saved(&w);
    assert_eq!(s["group"]["kind"], "environment", "{s}");
    assert_eq!(s["agent_id"], v[0].1.unwrap());
    // status names the environment, not a pool.
    let run = w.status(&[]);
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("in environment 'Production' of project 'myproject'"),
        "{}",
        run.stdout
    );
    // The service is named after the environment (`PoolName ?? EnvironmentName`).
    let unit = s["service_unit"].as_str().unwrap().to_owned();
    assert!(unit.contains("Production"), "{unit}");
    assert!(w.unit_active(&unit), "{unit}");

    let run = deleted_on_server_then_reconciled(&w, |s| s.vm_resources.clear());
    let v = vms(&w, 1, 201);
    assert_eq!(v.len(), 1, "{v:?}\n{}", run.stderr);
    assert_eq!(v[0].2, ["linux"]);

    let dir = w.agent_dir();
    w.run(&["remove", "--agent-dir", dir.to_str().unwrap()])
        .assert_code(0);
    assert!(vms(&w, 1, 201).is_empty());
    assert!(w.count("DELETE", "/providers/virtualmachines/") >= 1);
    assert_eq!(w.count("GET", "/pools/"), 0, "nothing asked of a pool");
    assert!(w.saved_settings_files().is_empty());
}

#[test]
fn a_group_that_is_missing_or_not_allowed_stops_before_anything_is_changed() {
    let w = World::new();
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["--deployment-group", "Nope", "--project", "myproject"],
            "deployment group 'Nope' was not found in project 'myproject'",
        ),
        (
            vec!["--environment", "Nope", "--project", "myproject"],
            "environment 'Nope' was not found in project 'myproject'",
        ),
        (
            vec![
                "--deployment-group",
                "RestrictedServers",
                "--project",
                "myproject",
                "--client-id",
                ids::UAMI_CLIENT,
            ],
            "may not register agents in deployment group 'RestrictedServers'",
        ),
    ];
    for (args, message) in cases {
        let run = w.install(&args);
        run.assert_code(4);
        assert!(run.stderr.contains(message), "{args:?}\n{}", run.stderr);
        assert!(!w.agent_dir().join(".agent").exists());
        assert!(w.saved_settings_files().is_empty());
        assert_eq!(w.downloads(), 0, "nothing downloaded");
    }
    assert!(targets(&w, 2, 102).is_empty());

    // An environment's role cannot be asked for beforehand: the agent's registration is refused,
    // its message shown, and nothing is saved.
    let run = w.install(&[
        "--environment",
        "Restricted",
        "--project",
        "myproject",
        "--client-id",
        ids::UAMI_CLIENT,
    ]);
    run.assert_code(6);
    w.assert_no_token_leak(&run);
    assert!(w.saved_settings_files().is_empty(), "{}", run.stderr);
    assert!(vms(&w, 2, 202).is_empty());
}

#[test]
fn group_flags_that_do_not_fit_are_refused_naming_the_flag() {
    let w = World::new();
    let cases: [(&[&str], &str); 6] = [
        (&["--environment", "Production"], "--project"),
        (
            &[
                "--deployment-group",
                "WebServers",
                "--project",
                "myproject",
                "--pool",
                "Default",
            ],
            "--pool",
        ),
        (
            &[
                "--deployment-group",
                "WebServers",
                "--environment",
                "Production",
                "--project",
                "p",
            ],
            "--environment",
        ),
        (&["--project", "myproject"], "--project"),
        (&["--tag", "web"], "--tag"),
        (
            &[
                "--deployment-group",
                "WebServers",
                "--project",
                "myproject",
                "--tag",
                "a;b",
            ],
            "--tag",
        ),
    ];
    for (args, flag) in cases {
        let run = w.install(args);
        run.assert_code(2);
        assert!(run.stderr.contains(flag), "{args:?}\n{}", run.stderr);
    }
    let mut drain = DG.to_vec();
    drain.push("--scale-in-drain");
    let run = w.install(&drain);
    run.assert_code(2);
    assert!(run.stderr.contains("--scale-in-drain"), "{}", run.stderr);
    assert!(w.requests().is_empty(), "nothing was asked");
}

#[test]
fn the_dry_run_of_a_deployment_group_install_shows_the_agents_own_options() {
    let w = World::new();
    let mut args = DG.to_vec();
    args.extend(["--tag", "web", "--dry-run"]);
    let run = w.install(&args);
    run.assert_code(0);
    assert!(
        run.stdout.contains(
            "--deploymentgroup --deploymentgroupname WebServers --projectname myproject \
             --adddeploymentgrouptags --deploymentgrouptags web"
        ),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("--pool"), "{}", run.stdout);
    assert!(targets(&w, 1, 101).is_empty());
}

#[test]
fn doctor_checks_the_group_instead_of_the_pool() {
    let w = World::new();
    let url = w.org_url();
    let doctor = |extra: &[&str]| {
        let mut args = vec!["doctor", "--url", url.as_str()];
        args.extend(extra);
        w.run(&args)
    };
    let run = doctor(DG);
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("'WebServers' (id 1) of project myproject: this identity may register"),
        "{}",
        run.stdout
    );
    let run = doctor(ENV);
    run.assert_code(0);
    assert!(run.stdout.contains("'Production' (id 1)"), "{}", run.stdout);
    let run = doctor(&[
        "--deployment-group",
        "RestrictedServers",
        "--project",
        "myproject",
        "--client-id",
        ids::UAMI_CLIENT,
    ]);
    run.assert_code(4);
    assert!(
        run.stdout.contains("Role: Administrator"),
        "the fix is named\n{}",
        run.stdout
    );
    assert_eq!(w.count("GET", "/pools"), 0, "no pool was asked about");
}
