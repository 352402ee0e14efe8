//! The simulator is only useful if a flow that passes against it passes against the real agent.
//! These tests pin the fake agent package to the behaviour `agent.md` documents for the real one.

// These tests drive the Linux binary as root; the Windows build is tested by tests/windows.rs.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn extract(w: &World) -> std::path::PathBuf {
    let dir = w.agent_dir();
    w.extract_package_into(&dir);
    dir
}

fn token(w: &World) -> String {
    let run = w.run(&["token"]);
    run.assert_code(0);
    run.stdout.trim().to_owned()
}

fn config(dir: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(dir.join("config.sh"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("AGENT_ALLOW_RUNASROOT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn config_sh_refuses_root_unless_allowed() {
    let w = World::new();
    let dir = extract(&w);
    let o = config(&dir, &dir, &["--unattended"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).0.contains("Must not run with sudo"));
}

#[test]
fn config_sh_must_run_from_the_agent_root() {
    let w = World::new();
    let dir = extract(&w);
    let o = config(
        &dir,
        Path::new("/"),
        &["--unattended"],
        &[("AGENT_ALLOW_RUNASROOT", "1")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).0.contains("Dependencies missing"),
        "{:?}",
        text(&o)
    );
}

#[test]
fn options_are_case_insensitive_env_fills_gaps_and_unknown_ones_only_warn() {
    let w = World::new();
    let dir = extract(&w);
    let t = token(&w);
    let url = w.org_url();
    let o = config(
        &dir,
        &dir,
        &[
            "--UNATTENDED",
            "--Url",
            &url,
            "--AUTH",
            "PAT",
            "--agent",
            "case-agent",
            "--bogusFlag",
            "--acceptTeeEula",
        ],
        &[
            ("AGENT_ALLOW_RUNASROOT", "1"),
            ("VSTS_AGENT_INPUT_TOKEN", &t),
            ("VSTS_AGENT_INPUT_POOL", "Default"),
            // Flags from the environment take only true/false.
            ("VSTS_AGENT_INPUT_REPLACE", "1"),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        err.contains("Unrecognized command-line input arguments: '--bogusFlag'"),
        "{err}"
    );
    assert!(out.contains("Settings Saved."));
    let agent = read_agent_json(&dir.join(".agent"));
    assert_eq!(agent["agentName"], "case-agent");
    assert_eq!(agent["poolName"], "Default");
    assert_eq!(mode(&dir.join(".credentials_rsaparams")), 0o600);
    assert!(
        std::fs::read(dir.join(".credentials"))
            .unwrap()
            .starts_with(&[0xEF, 0xBB, 0xBF])
    );
    let report = w.sim.state().listener_reports.last().cloned().unwrap();
    assert!(report.token_from_env);

    // Configured: even --replace does not get past "already configured".
    let o = config(
        &dir,
        &dir,
        &["--unattended", "--url", &url, "--replace"],
        &[
            ("AGENT_ALLOW_RUNASROOT", "1"),
            ("VSTS_AGENT_INPUT_TOKEN", &t),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("Cannot configure the agent because it is already configured")
    );
}

#[test]
fn a_taken_name_without_replace_fails_like_the_real_agent() {
    let w = World::new();
    w.install(&["--no-service"]).assert_code(0);
    let other = w.dir.path().join("second");
    w.extract_package_into(&other);
    let t = token(&w);
    let url = w.org_url();
    let o = config(
        &other,
        &other,
        &[
            "--unattended",
            "--url",
            &url,
            "--auth",
            "pat",
            "--pool",
            "Default",
            "--agent",
            "test-agent",
        ],
        &[
            ("AGENT_ALLOW_RUNASROOT", "1"),
            ("VSTS_AGENT_INPUT_TOKEN", &t),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out.contains("Pool Default already contains an agent with name test-agent."),
        "{out}"
    );
    assert!(
        err.contains("Pool 1 already contains an agent with name test-agent."),
        "{err}"
    );
}

#[test]
fn a_wrong_token_is_refused_with_vs30063() {
    let w = World::new();
    let dir = extract(&w);
    let url = w.org_url();
    let o = config(
        &dir,
        &dir,
        &[
            "--unattended",
            "--url",
            &url,
            "--auth",
            "pat",
            "--pool",
            "Default",
        ],
        &[
            ("AGENT_ALLOW_RUNASROOT", "1"),
            ("VSTS_AGENT_INPUT_TOKEN", "not-a-real-token-at-all"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("VS30063"));
    assert!(!dir.join(".agent").exists());
}

#[test]
fn remove_refuses_while_the_service_is_installed_and_svc_sh_needs_root() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    let dir = w.agent_dir();
    let o = config(
        &dir,
        &dir,
        &["remove", "--unattended"],
        &[("AGENT_ALLOW_RUNASROOT", "1")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("Unconfigure service first"));
    // svc.sh as the agent user.
    let uid = owner(&dir);
    let mut cmd = Command::new("./svc.sh");
    std::os::unix::process::CommandExt::uid(&mut cmd, uid);
    let o = cmd.arg("status").current_dir(&dir).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).0.contains("Must run as sudo"));
}

#[test]
fn the_package_is_laid_out_like_the_real_one() {
    let w = World::new();
    let listing = Command::new("tar")
        .args(["-tzf", w.sim.package.path.to_str().unwrap()])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    for expected in [
        "./bin/Agent.Listener",
        "./config.sh",
        "./env.sh",
        "./run.sh",
        "./license.html",
        "./bin/systemd.svc.sh.template",
        "./bin/vsts.agent.service.template",
    ] {
        assert!(names.lines().any(|l| l == expected), "{expected} missing");
    }
    assert!(
        !names.lines().any(|l| l == "./svc.sh"),
        "svc.sh is generated by configure"
    );
}

/// The unit name the agent's own svc.sh would use (computed by the simulated configure, escaped by
/// the shell as svc.sh does) is the unit root writes: short names and names over 80 characters.
#[test]
fn root_names_the_unit_as_the_agents_svc_sh_would() {
    let long_pool = "Y".repeat(40);
    let long_agent = "X".repeat(40);
    let w = World::with(|c| {
        c.pools.push(azure_sim::PoolSpec {
            id: 3,
            name: long_pool.clone(),
            admins: vec![azure_sim::ids::SYSTEM_OBJECT.into()],
        });
    });
    for (pool, agent) in [
        ("Default", "test-agent"),
        (long_pool.as_str(), long_agent.as_str()),
    ] {
        let dir = w.dir.path().join(format!("agent-{}", agent.len()));
        let url = w.org_url();
        w.run(&[
            "install",
            "--url",
            &url,
            "--agent-dir",
            dir.to_str().unwrap(),
            "--pool",
            pool,
            "--agent-name",
            agent,
        ])
        .assert_code(0);
        // The first lines of the generated svc.sh compute SVC_NAME; let bash do it.
        let head: String = std::fs::read_to_string(dir.join("svc.sh"))
            .unwrap()
            .lines()
            .take(8)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(head.contains("SVC_NAME="), "{head}");
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!("{head}\necho \"$SVC_NAME\""))
            .output()
            .unwrap();
        let svc_sh_name = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert!(svc_sh_name.starts_with("vsts.agent."), "{svc_sh_name}");
        assert!(
            w.units_dir().join(&svc_sh_name).is_file(),
            "root's unit is not named {svc_sh_name}: {:?}",
            std::fs::read_dir(w.units_dir())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
    }
}

/// The simulated agent names its service with the agent's own unit-test vectors
/// (`src/Test/L0/Listener/Configuration/ServiceControlManagerL0.cs`, `CalculateServiceNameL0`).
#[test]
fn the_simulated_agent_names_services_by_the_agents_own_vectors() {
    use azure_sim::naming::service_name;
    let (n, d) = service_name("https://dev.azure.com/bar", "pool1", "foo");
    assert_eq!(n, "vsts.agent.bar.pool1.foo.service");
    assert_eq!(d, "Azure Pipelines Agent (bar.pool1.foo)");
    let (n, d) = service_name(
        "https://dev.azure.com/bar",
        &"Y".repeat(40),
        &"X".repeat(40),
    );
    assert_eq!(
        n,
        "vsts.agent.bar.YYYYYYYYYYYYYYYYYYYYYYYYY.XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX.service"
    );
    assert_eq!(
        d,
        format!(
            "Azure Pipelines Agent (bar.{}.{})",
            "Y".repeat(40),
            "X".repeat(40)
        )
    );
    let (n, _) = service_name("https://dev.azure.com/bar", "pool\u{002D}1", "foo");
    assert_eq!(n, "vsts.agent.bar.pool-1.foo.service");
    // Not dev.azure.com: the first label of the host.
    let (n, _) = service_name("https://myorg.visualstudio.com/", "P", "a");
    assert_eq!(n, "vsts.agent.myorg.P.a.service");
}

/// `runsvc.sh` → `AgentService.js` (`src/Misc/layoutbin/AgentService.js`): the listener runs with
/// `--startuptype service` and is launched again 5 s after an exit code other than 0 or 1; 1 (and 0)
/// stop the host, and with it the unit.
#[test]
fn the_service_host_relaunches_the_listener_after_5s_unless_it_exits_0_or_1() {
    let w = installed();
    w.sim.state().listener_exits.extend([2, 3, 1]);
    let start = std::time::Instant::now();
    let host = service_host(&w);
    let out = host.wait_with_output().unwrap();
    let elapsed = start.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let runs: Vec<_> = w
        .sim
        .state()
        .listener_reports
        .iter()
        .filter(|r| r.verb == "run")
        .cloned()
        .collect();
    assert_eq!(runs.len(), 3, "{stdout}");
    for r in &runs {
        assert!(
            r.argv.windows(2).any(|a| a == ["--startuptype", "service"]),
            "{:?}",
            r.argv
        );
        assert_eq!(r.uid, agent_user().uid.as_raw());
    }
    for line in [
        "Agent listener exit with retryable error, re-launch agent in 5 seconds.",
        "Agent listener exit because of updating, re-launch agent in 5 seconds.",
        "Agent listener exit with terminated error, stop the service, no retry needed.",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
    assert!(elapsed >= std::time::Duration::from_secs(10), "{elapsed:?}");
}

/// `run.sh` without `--once` (an interactive listener): an update exits 3, which ends `run.sh`,
/// and the update script starts `run.sh` again in the background: a listener nobody supervises
/// (`Agent.cs` `restartInteractiveAgent`, `update.sh.template`). What `run` must never run into.
#[test]
fn an_interactive_agent_restarts_itself_outside_its_script_after_an_update() {
    let w = World::new();
    w.install(&["--no-service"]).assert_code(0);
    let user = agent_user();
    let dir = w.agent_dir();
    let mut cmd = Command::new(dir.join("run.sh"));
    cmd.current_dir(&dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &user.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::uid(&mut cmd, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut cmd, user.gid.as_raw());
    let mut run_sh = cmd.spawn().unwrap();
    let online = |w: &World, version: &str| {
        w.server_agents(1)
            .iter()
            .any(|a| a.status == "online" && a.version == version)
    };
    wait_for_secs("the agent online", 30, || online(&w, "4.264.2"));
    offer_update(&w);
    let code = run_sh.wait().unwrap().code();
    assert_eq!(
        code,
        Some(3),
        "run.sh ends with the listener's exit for an update"
    );
    wait_for_secs("the agent online on the new version", 30, || {
        online(&w, NEW_VERSION)
    });
    let stray = listeners(&w);
    assert_eq!(stray.len(), 1);
    assert_ne!(stray[0].1, run_sh.id() as i32);
    assert_eq!(
        std::fs::read_link(dir.join("bin")).unwrap(),
        dir.join(format!("bin.{NEW_VERSION}"))
    );
    let log = std::fs::read_dir(dir.join("_diag"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("SelfUpdate-"))
        .unwrap();
    assert!(log.ends_with(".log.succeed"), "{log}");
    // The World's end ends every process of the agent user, the stray listener too.
}

/// An Azure DevOps GET with the token as HTTP Basic password, as the agent sends it: the JSON body.
fn ado_get(w: &World, token: &str, path: &str) -> serde_json::Value {
    azure_sim::install_crypto_provider();
    let url = format!("{}/{path}", w.org_url());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let r = reqwest::Client::new()
                .get(&url)
                .basic_auth("test", Some(token))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "GET {url}: {}", r.status());
            r.json().await.unwrap()
        })
}

/// `config.sh ARGS` from the agent root as root (allowed), the token from the environment.
fn config_as_root(dir: &Path, token: &str, args: &[&str]) -> (i32, String, String) {
    let o = config(
        dir,
        dir,
        args,
        &[
            ("AGENT_ALLOW_RUNASROOT", "1"),
            ("VSTS_AGENT_INPUT_TOKEN", token),
        ],
    );
    let (out, err) = text(&o);
    (o.status.code().unwrap_or(-1), out, err)
}

/// [`config_as_root`] registering unattended with a PAT at the simulator's organization: `args`
/// after `--unattended --url <org> --auth pat`.
fn register_as_root(w: &World, dir: &Path, token: &str, args: &[&str]) -> (i32, String, String) {
    let url = w.org_url();
    let unattended = ["--unattended", "--url", url.as_str(), "--auth", "pat"];
    config_as_root(dir, token, &[unattended.as_slice(), args].concat())
}

/// The unit name the generated svc.sh computes (its first lines, run by bash).
fn svc_sh_name(dir: &Path) -> String {
    let head: String = std::fs::read_to_string(dir.join("svc.sh"))
        .unwrap()
        .lines()
        .take(8)
        .collect::<Vec<_>>()
        .join("\n");
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("{head}\necho \"$SVC_NAME\""))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// `--deploymentgroup` (DeploymentGroupAgentConfigProvider): the group found by name in the project
/// named, a target added to it (its agent in the group's deployment pool, `--pool` ignored), the
/// tags patched after it, `.agent` with the deployment pool, group and project ids and no project
/// name, svc.sh named after the deployment pool; `remove` deletes the target and its agent.
#[test]
fn a_deployment_group_agent_is_a_target_of_the_group_as_the_real_agent_registers_it() {
    let w = World::new();
    let dir = extract(&w);
    let t = token(&w);
    let (code, out, err) = register_as_root(
        &w,
        &dir,
        &t,
        &[
            "--deploymentGroup",
            "--deploymentGroupName",
            "webservers",
            "--projectName",
            "myproject",
            "--agent",
            "dg-agent",
            "--pool",
            "Restricted",
            "--addDeploymentGroupTags",
            "--deploymentGroupTags",
            " web, DB,,Web ,db",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("Unrecognized"), "{err}");
    assert!(out.contains("Successfully added the agent"), "{out}");
    assert!(out.contains("Tags added successfully"), "{out}");
    let agent = read_agent_json(&dir.join(".agent"));
    assert_eq!(agent["deploymentGroupId"], 1);
    assert_eq!(agent["projectId"], azure_sim::ids::PROJECT_ID);
    assert_eq!(agent["poolId"], 101);
    assert_eq!(agent["poolName"], "myproject-WebServers");
    assert_eq!(agent["agentName"], "dg-agent");
    for absent in ["projectName", "environmentId", "environmentName"] {
        assert!(agent.get(absent).is_none(), "{absent} in {agent}");
    }
    let targets = w.sim.state().targets(1, 101);
    assert_eq!(targets.len(), 1);
    let (server_agent, tags) = &targets[0];
    assert_eq!(agent["agentId"], server_agent.id);
    assert_eq!(tags, &["web", "DB"]);
    assert!(w.server_agents(1).is_empty() && w.server_agents(2).is_empty());
    // The REST view the tool reconciles against: the target by name, its agent offline.
    let listed = ado_get(
        &w,
        &t,
        "myproject/_apis/distributedtask/deploymentgroups/1/targets?name=DG-AGENT&api-version=7.1",
    );
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["value"][0]["id"], server_agent.id);
    assert_eq!(listed["value"][0]["agent"]["status"], "offline");
    let requests: Vec<String> = w
        .requests()
        .iter()
        .filter(|r| r.caller != "none" && r.path.contains("deploymentgroups"))
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    let project = azure_sim::ids::PROJECT_ID;
    let expected = [
        "GET /myorg/myproject/_apis/distributedtask/deploymentgroups?name=webservers".to_owned(),
        format!(
            "GET /myorg/{project}/_apis/distributedtask/deploymentgroups/1/targets?name=dg-agent"
        ),
        format!("POST /myorg/{project}/_apis/distributedtask/deploymentgroups/1/targets?"),
        format!("PATCH /myorg/{project}/_apis/distributedtask/deploymentgroups/1/targets?"),
    ];
    assert_eq!(requests[..4], expected, "{requests:#?}");
    let unit = svc_sh_name(&dir);
    assert_eq!(
        unit,
        "vsts.agent.127.myproject\\x2dWebServers.dg\\x2dagent.service"
    );

    let (code, out, err) = config_as_root(&dir, &t, &["remove", "--unattended"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("Succeeded: Removing agent from the server"),
        "{out}"
    );
    assert!(w.sim.state().targets(1, 101).is_empty());
    assert!(
        w.server_agents(101).is_empty(),
        "the target's agent left the pool"
    );
    assert!(!dir.join(".agent").exists());
}

/// `--environment` (EnvironmentVMResourceConfigProvider): the environment found by name, a VM
/// resource added with its tags, the linked pool asked for; `.agent` with the environment's ids,
/// its name as typed, the project's name and id, the pool id and no pool name; svc.sh named after
/// the environment. A taken name stops configure with the environment's message; `--replace`
/// replaces the resource's agent and, without the tags flag, clears its tags; `remove` deletes the
/// resource `.agent` names.
#[test]
fn an_environment_agent_is_a_vm_resource_as_the_real_agent_registers_it() {
    let w = World::new();
    let dir = extract(&w);
    let t = token(&w);
    let base = [
        "--environment",
        "--environmentname",
        "production",
        "--projectname",
        "MyProject",
        "--agent",
        "vm-agent",
    ];
    let args = |extra: &[&'static str]| [base.as_slice(), extra].concat();
    let first = args(&[
        "--addvirtualmachineresourcetags",
        "--virtualmachineresourcetags",
        "linux,web",
    ]);
    let (code, out, err) = register_as_root(&w, &dir, &t, &first);
    assert_eq!(code, 0, "{out}\n{err}");
    let agent = read_agent_json(&dir.join(".agent"));
    assert_eq!(agent["environmentId"], 1);
    assert_eq!(agent["environmentName"], "production", "as typed");
    assert_eq!(agent["environmentVMResourceId"], 1);
    assert_eq!(agent["projectName"], "myproject");
    assert_eq!(agent["projectId"], azure_sim::ids::PROJECT_ID);
    assert_eq!(agent["poolId"], 201);
    assert_eq!(agent["agentName"], "vm-agent");
    for absent in ["poolName", "deploymentGroupId"] {
        assert!(agent.get(absent).is_none(), "{absent} in {agent}");
    }
    let vms = w.sim.state().environment_vms(1, 201);
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].0.tags, ["linux", "web"]);
    assert_eq!(
        vms[0].1.as_ref().map(|a| a.id),
        agent["agentId"].as_u64(),
        "the resource holds the agent"
    );
    assert_eq!(
        svc_sh_name(&dir),
        "vsts.agent.127.production.vm\\x2dagent.service"
    );
    let listed = ado_get(
        &w,
        &t,
        "myproject/_apis/pipelines/environments/1/providers/virtualmachines?name=vm-agent",
    );
    assert_eq!(listed["value"][0]["agent"]["status"], "offline", "{listed}");
    assert_eq!(
        listed["value"][0]["tags"],
        serde_json::json!(["linux", "web"])
    );

    // The same name from another machine.
    let other = w.dir.path().join("second");
    w.extract_package_into(&other);
    let plain = args(&[]);
    let (code, out, err) = register_as_root(&w, &other, &t, &plain);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("Pool  already contains an agent with name vm-agent."),
        "no pool name in an environment's settings: {out}"
    );
    assert!(
        err.contains(
            "Environment with id '1' already contains a virtual machine resource with name 'vm-agent'."
        ),
        "{err}"
    );
    let replace = args(&["--replace"]);
    let (code, out, err) = register_as_root(&w, &other, &t, &replace);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Successfully replaced the agent"), "{out}");
    let second = read_agent_json(&other.join(".agent"));
    assert_eq!(second["agentId"], agent["agentId"]);
    assert_eq!(second["environmentVMResourceId"], 1);
    let vms = w.sim.state().environment_vms(1, 201);
    assert_eq!(vms.len(), 1);
    assert!(
        vms[0].0.tags.is_empty(),
        "a replace sends the tags it was given: none"
    );

    let (code, out, err) = config_as_root(&other, &t, &["remove", "--unattended"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("Succeeded: Removing agent from the server"),
        "{out}"
    );
    assert!(w.sim.state().environment_vms(1, 201).is_empty());
    assert!(w.server_agents(201).is_empty());
    // The first copy finds nothing left to remove.
    let (code, out, _) = config_as_root(&dir, &t, &["remove", "--unattended"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Does not exist. Skipping Removing agent from the server"),
        "{out}"
    );
}

/// What the real agent refuses: a missing project or group name (unattended), an unknown group or
/// environment, tags asked for without a value — for a deployment group only after the target was
/// created, as the real one patches tags after adding — and an identity that is not Administrator
/// of the group or environment (the server's 403). Tags given without their flag are ignored.
#[test]
fn deployment_group_and_environment_configure_fails_where_the_real_agent_does() {
    let w = World::new();
    let dir = extract(&w);
    let t = token(&w);
    let dg = |extra: &[&str]| -> (i32, String, String) {
        let mut a = vec!["--deploymentgroup", "--agent", "dg-agent"];
        a.extend(extra);
        register_as_root(&w, &dir, &t, &a)
    };
    let (code, _, err) = dg(&["--deploymentgroupname", "WebServers"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "Invalid configuration provided for projectname. Terminating unattended configuration."
        ),
        "{err}"
    );
    let (code, _, err) = dg(&["--projectname", "myproject"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Invalid configuration provided for deploymentgroupname"),
        "{err}"
    );
    let (code, _, err) = dg(&[
        "--projectname",
        "myproject",
        "--deploymentgroupname",
        "Nope",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("Deployment Group not found: 'Nope'"), "{err}");
    assert!(!dir.join(".agent").exists());

    // The flag without tags: the target exists, configure fails, no .agent.
    let (code, out, err) = dg(&[
        "--projectname",
        "myproject",
        "--deploymentgroupname",
        "WebServers",
        "--adddeploymentgrouptags",
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("Invalid configuration provided for deploymentgrouptags"),
        "{err}"
    );
    assert_eq!(
        w.sim.state().targets(1, 101).len(),
        1,
        "added before the tags"
    );
    assert!(!dir.join(".agent").exists());
    let id = w.sim.state().targets(1, 101)[0].0.id;
    w.sim.state().deployment_targets.clear();
    w.sim.state().agents.remove(&101);

    // Tags without the flag are ignored.
    let (code, out, err) = dg(&[
        "--projectname",
        "myproject",
        "--deploymentgroupname",
        "WebServers",
        "--deploymentgrouptags",
        "web",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("Tags added"), "{out}");
    let targets = w.sim.state().targets(1, 101);
    assert!(targets[0].1.is_empty(), "{targets:?}");
    assert_ne!(targets[0].0.id, id);
    std::fs::remove_file(dir.join(".agent")).unwrap();

    // The environment's own: unknown, and the tags flag without tags fails before any resource.
    let env = |extra: &[&str]| -> (i32, String, String) {
        let mut a = vec![
            "--environment",
            "--projectname",
            "myproject",
            "--agent",
            "vm-agent",
        ];
        a.extend(extra);
        register_as_root(&w, &dir, &t, &a)
    };
    let (code, _, err) = env(&["--environmentname", "Staging"]);
    assert_eq!(code, 1);
    assert!(err.contains("Environment not found: 'Staging'"), "{err}");
    let (code, _, err) = env(&[
        "--environmentname",
        "Production",
        "--addvirtualmachineresourcetags",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Invalid configuration provided for virtualmachineresourcetags"),
        "{err}"
    );
    assert!(w.sim.state().environment_vms(1, 201).is_empty());

    // The user-assigned identity administers neither Restricted… one.
    let uami = w.run(&["token", "--client-id", azure_sim::ids::UAMI_CLIENT]);
    uami.assert_code(0);
    let uami = uami.stdout.trim().to_owned();
    for (mode, name_flag, name) in [
        (
            "--deploymentgroup",
            "--deploymentgroupname",
            "RestrictedServers",
        ),
        ("--environment", "--environmentname", "Restricted"),
    ] {
        let (code, out, err) = register_as_root(
            &w,
            &dir,
            &uami,
            &[
                mode,
                name_flag,
                name,
                "--projectname",
                "myproject",
                "--agent",
                "uami-agent",
            ],
        );
        assert_eq!(code, 1, "{out}\n{err}");
        assert!(
            err.contains(
                "Access denied. agents-mi needs Manage permissions to perform the action."
            ),
            "{err}"
        );
    }
    assert!(w.sim.state().targets(2, 102).is_empty());
    assert!(w.sim.state().environment_vms(2, 202).is_empty());
}

/// A deployment group agent runs like any other: online in its deployment pool, which its target
/// shows (what a reconcile reads), offline when it stops.
#[test]
fn a_deployment_target_shows_its_agent_online_while_the_listener_runs() {
    let w = World::new();
    let dir = extract(&w);
    let t = token(&w);
    let (code, out, err) = register_as_root(
        &w,
        &dir,
        &t,
        &[
            "--deploymentgroup",
            "--deploymentgroupname",
            "WebServers",
            "--projectname",
            "myproject",
            "--agent",
            "dg-agent",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let mut listener = Command::new(dir.join("bin/Agent.Listener"))
        .arg("run")
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = |w: &World| {
        ado_get(
            w,
            &t,
            "myproject/_apis/distributedtask/deploymentgroups/1/targets?agentStatus=online",
        )["count"]
            .as_u64()
    };
    wait_for_secs("the target online", 30, || status(&w) == Some(1));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(listener.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    listener.wait().unwrap();
    assert_eq!(status(&w), Some(0));
    assert_eq!(w.sim.state().targets(1, 101)[0].0.status, "offline");
}
