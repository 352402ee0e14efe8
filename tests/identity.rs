//! Every identity source, through the real binary against the simulated Azure: App Service /
//! Container Apps, Azure Arc, AKS workload identity, the Azure CLI (a fake `az`), a PAT, the auto
//! chain, and `doctor`. Every run also checks that no token, key, header, assertion or PAT shows up
//! in output, files or argv (`World::run_cmd`).

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use azure_sim::{Scripted, ids};
use common::*;

const RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";

fn saved(w: &World) -> serde_json::Value {
    let files = w.saved_settings_files();
    assert_eq!(files.len(), 1, "{files:?}");
    serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap()
}

fn ado_requests(w: &World) -> Vec<azure_sim::Request> {
    w.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/myorg/_apis/"))
        .collect()
}

fn by_caller(w: &World, caller: &str) -> Vec<azure_sim::Request> {
    w.requests()
        .into_iter()
        .filter(|r| r.caller == caller)
        .collect()
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Nothing answers on port 9 of loopback: the auto chain's IMDS probe fails at once.
const NO_IMDS: &str = "http://127.0.0.1:9";

// ---- App Service / Container Apps -------------------------------------------------------------

fn app_service(w: &World, cmd: &mut Command) {
    cmd.env(
        "IDENTITY_ENDPOINT",
        format!("{}/msi/token", w.sim.base_url()),
    )
    .env("IDENTITY_HEADER", &w.sim.config.app_service_header);
}

#[test]
fn app_service_is_asked_with_its_header_and_its_own_selector_names() {
    let w = World::new();
    let mut cmd = w.install_command(&["--resource-id", ids::UAMI_RESOURCE]);
    app_service(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        run.stderr.contains("identity source: app-service"),
        "{}",
        run.stderr
    );
    let app = by_caller(&w, "app-service");
    assert_eq!(app.len(), 1, "{app:?}");
    // mi_res_id, not IMDS's msi_res_id (which App Service ignores).
    assert!(
        app[0].query.contains("mi_res_id=%2Fsubscriptions"),
        "{}",
        app[0].query
    );
    assert!(!app[0].query.contains("msi_res_id"), "{}", app[0].query);
    assert!(app[0].query.contains("api-version=2019-08-01"));
    assert!(app[0].query.contains(&format!("resource={RESOURCE}")));
    // The chain stopped at the first source found: IMDS was not even probed.
    assert_eq!(w.imds_probes() + w.imds_token_requests().len(), 0);
    let ado = ado_requests(&w);
    assert!(!ado.is_empty());
    assert!(ado.iter().all(|r| r.caller == ids::UAMI_OBJECT), "{ado:?}");
    let s = saved(&w);
    assert_eq!(s["identity_source"], "app-service");
    assert_eq!(
        s["identity"],
        format!("msi_res_id={}", ids::UAMI_RESOURCE),
        "saved in one form, spelled per source when asked"
    );

    // Later runs use the saved source, with the platform's variables: no chain, no IMDS.
    let mut cmd = w.command(&["reconcile", "--agent-dir", w.agent_dir().to_str().unwrap()]);
    app_service(&w, &mut cmd);
    w.run_cmd(cmd).assert_code(0);
    assert_eq!(by_caller(&w, "app-service").len(), 2);
    assert_eq!(w.imds_probes() + w.imds_token_requests().len(), 0);

    // Without them (a boot outside the platform's process), reconcile cannot get a token: it
    // changes nothing, keeps the service running, and says why.
    let run = w.reconcile();
    run.assert_code(3);
    assert!(run.stderr.contains("IDENTITY_ENDPOINT"), "{}", run.stderr);
    assert!(w.unit_active(UNIT));
}

#[test]
fn a_wrong_app_service_header_exits_3_without_showing_it() {
    let w = World::new();
    let mut cmd = w.command(&["token"]);
    app_service(&w, &mut cmd);
    cmd.env("IDENTITY_HEADER", "stale-header-value");
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    assert!(run.stderr.contains("HTTP 401"), "{}", run.stderr);
    assert!(
        run.stderr.contains("IDENTITY_HEADER is rotated"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("stale-header-value"));
    assert!(run.stdout.is_empty());
}

// ---- Azure Arc ---------------------------------------------------------------------------------

fn arc_world() -> World {
    World::with(|c| c.arc_key_dir = Some(c.work_dir.parent().unwrap().join("arc/tokens")))
}

fn arc(w: &World, cmd: &mut Command) {
    cmd.env(
        "IDENTITY_ENDPOINT",
        format!("{}/arc/token", w.sim.base_url()),
    )
    .env("IMDS_ENDPOINT", w.sim.base_url());
}

fn arc_tokens_dir(w: &World) -> PathBuf {
    w.dir.path().join("arc/tokens")
}

#[test]
fn arc_answers_its_challenge_with_the_key_file() {
    let w = arc_world();
    let mut cmd = w.install_command(&[]);
    arc(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        run.stderr.contains("identity source: arc"),
        "{}",
        run.stderr
    );
    // App Service was looked at first and skipped: IDENTITY_HEADER is missing.
    assert!(
        run.stderr
            .contains("app-service skipped: IDENTITY_ENDPOINT is set, IDENTITY_HEADER is not"),
        "{}",
        run.stderr
    );
    let reqs = by_caller(&w, "arc");
    assert_eq!(reqs.len(), 2, "the challenge, then the token: {reqs:?}");
    assert_eq!(reqs[0].auth, None);
    assert!(reqs.iter().all(|r| r.metadata_header));
    assert!(reqs[0].query.contains("api-version=2020-06-01"));
    assert_eq!(w.sim.state().arc_keys.len(), 1);
    assert!(
        ado_requests(&w)
            .iter()
            .all(|r| r.caller == ids::SYSTEM_OBJECT)
    );
    assert_eq!(saved(&w)["identity_source"], "arc");
}

#[test]
fn arc_key_files_are_read_only_from_the_agents_key_directory() {
    let w = arc_world();
    let dir = arc_tokens_dir(&w);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.key"), vec![b'k'; 5000]).unwrap();
    std::fs::write(dir.join("note.txt"), "k").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("link.key")).unwrap();
    let outside = w.dir.path().join("outside.key");
    std::fs::write(&outside, "k").unwrap();
    for (realm, says) in [
        (
            format!("{}/../../outside.key", dir.display()),
            "not a plain absolute path",
        ),
        (
            outside.display().to_string(),
            "not in the agent's key directory",
        ),
        (
            dir.join("big.key").display().to_string(),
            "larger than 4096 bytes",
        ),
        (
            dir.join("note.txt").display().to_string(),
            "not a .key file",
        ),
        (
            dir.join("link.key").display().to_string(),
            "not a regular file",
        ),
    ] {
        w.sim.state().arc_realm = Some(realm.clone());
        let mut cmd = w.command(&["token", "--identity", "arc"]);
        arc(&w, &mut cmd);
        let run = w.run_cmd(cmd);
        run.assert_code(3);
        assert!(run.stderr.contains(says), "{realm}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    // No key was ever sent.
    assert!(by_caller(&w, "arc").iter().all(|r| r.auth.is_none()));
    // Arc has one identity: a selector is a usage error.
    let mut cmd = w.command(&[
        "token",
        "--identity",
        "arc",
        "--client-id",
        ids::UAMI_CLIENT,
    ]);
    arc(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(2);
    assert!(run.stderr.contains("--client-id"), "{}", run.stderr);
}

// ---- AKS workload identity ---------------------------------------------------------------------

fn workload(w: &World, cmd: &mut Command, assertion: &str) {
    w.workload_identity(cmd, assertion, &w.sim.base_url());
}

#[test]
fn workload_identity_exchanges_the_service_account_token_with_entra() {
    let w = World::new();
    let mut cmd = w.install_command(&[]);
    workload(&w, &mut cmd, &w.sim.config.workload_assertion.clone());
    // App Service is here too: workload identity comes first in the chain.
    app_service(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        run.stderr.contains("identity source: workload"),
        "{}",
        run.stderr
    );
    let entra = by_caller(&w, "entra");
    assert_eq!(entra.len(), 1);
    assert_eq!(entra[0].method, "POST");
    assert_eq!(
        entra[0].path,
        format!("/{}/oauth2/v2.0/token", w.sim.config.tenant_id)
    );
    assert!(by_caller(&w, "app-service").is_empty());
    assert!(
        ado_requests(&w)
            .iter()
            .all(|r| r.caller == ids::UAMI_OBJECT)
    );
    let s = saved(&w);
    assert_eq!(s["identity_source"], "workload");
    assert_eq!(s["identity"], format!("client_id={}", ids::UAMI_CLIENT));
}

#[test]
fn workload_identity_errors_name_the_variable_or_the_federated_credential() {
    let w = World::new();
    // A service-account token no federated credential trusts.
    let mut cmd = w.command(&["token"]);
    workload(&w, &mut cmd, "eyJhbGciOiJSUzI1NiJ9.untrusted-subject.sig");
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    assert!(run.stderr.contains("AADSTS700213"), "{}", run.stderr);
    assert!(
        run.stderr.contains("federated identity credential"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("untrusted-subject"));

    // Pinned, with a variable missing: the message names it.
    let mut cmd = w.command(&["token", "--identity", "workload"]);
    workload(&w, &mut cmd, "x");
    cmd.env_remove("AZURE_TENANT_ID");
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    assert!(
        run.stderr.contains("AZURE_TENANT_ID is not set"),
        "{}",
        run.stderr
    );
    // A plain-http authority elsewhere than this machine is refused.
    let mut cmd = w.command(&["token", "--identity", "workload"]);
    workload(&w, &mut cmd, "x");
    cmd.env("AZURE_AUTHORITY_HOST", "http://login.example.com/");
    let run = w.run_cmd(cmd);
    run.assert_code(2);
    assert!(
        run.stderr.contains("AZURE_AUTHORITY_HOST"),
        "{}",
        run.stderr
    );
    assert!(
        by_caller(&w, "entra").len() == 1,
        "only the first run asked"
    );
}

// ---- Azure CLI ---------------------------------------------------------------------------------

fn with_az(w: &World, cmd: &mut Command) -> PathBuf {
    let (bin, config) = w.fake_az();
    World::prepend_path(cmd, &bin);
    cmd.env("AZURE_CONFIG_DIR", &config);
    config
}

fn az_calls(config: &Path) -> Vec<String> {
    std::fs::read_to_string(config.join("sim-calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn azure_cli_without_a_login_says_how_to_log_in() {
    let w = World::new();
    let mut cmd = w.command(&["token", "--identity", "azure-cli"]);
    with_az(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    assert!(
        run.stderr.contains("Please run 'az login'"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--az-login"), "{}", run.stderr);
}

#[test]
fn azure_cli_logs_in_with_the_managed_identity_and_registers_the_agent() {
    let w = World::new();
    let mut cmd = w.install_command(&[
        "--identity",
        "azure-cli",
        "--az-login",
        "--client-id",
        ids::UAMI_CLIENT,
    ]);
    let config = with_az(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let calls = az_calls(&config);
    assert_eq!(
        calls.first().map(String::as_str),
        Some(
            format!(
                "login --identity --client-id {} --allow-no-subscriptions --output none",
                ids::UAMI_CLIENT
            )
            .as_str()
        ),
        "{calls:?}"
    );
    assert!(
        calls.contains(&format!(
            "account get-access-token --resource {RESOURCE} --output json"
        )),
        "{calls:?}"
    );
    assert!(
        ado_requests(&w)
            .iter()
            .all(|r| r.caller == ids::UAMI_OBJECT)
    );
    let s = saved(&w);
    assert_eq!(s["identity_source"], "azure-cli");
    assert_eq!(s["az_login"], true);
}

#[test]
fn azure_cli_uses_an_existing_login_and_surfaces_its_errors() {
    let w = World::new();
    let mut cmd = w.command(&["token", "--identity", "azure-cli"]);
    let config = with_az(&w, &mut cmd);
    // A login made earlier (a developer's `az login`).
    std::fs::write(
        config.join("sim-login.json"),
        r#"{"kind":"identity","selector":null}"#,
    )
    .unwrap();
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let token = run.stdout.trim().to_owned();
    assert!(w.sim.state().tokens.contains_key(&token), "{token}");
    assert_eq!(run.stdout.lines().count(), 1, "stdout is the token alone");

    std::fs::write(
        config.join("sim-fail"),
        "ERROR: AADSTS50076: multi-factor authentication is required",
    )
    .unwrap();
    let mut cmd = w.command(&["token", "--identity", "azure-cli"]);
    with_az(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    assert!(run.stderr.contains("AADSTS50076"), "{}", run.stderr);
    assert!(run.stderr.contains("(exit 2)"), "{}", run.stderr);
}

#[test]
fn azure_cli_refusals_missing_unsafe_or_a_selector_without_login() {
    let w = World::new();
    // No az on PATH.
    let mut cmd = w.command(&["token", "--identity", "azure-cli"]);
    cmd.env("PATH", w.sim.systemd_dir().join("bin"));
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    assert!(run.stderr.contains("az is not on PATH"), "{}", run.stderr);

    // A selector means `az login --identity`: without --az-login it is a usage error.
    let mut cmd = w.command(&[
        "token",
        "--identity",
        "azure-cli",
        "--client-id",
        ids::UAMI_CLIENT,
    ]);
    with_az(&w, &mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(2);
    assert!(run.stderr.contains("--az-login"), "{}", run.stderr);

    // As root, an az that another account could replace is never run.
    let mut cmd = w.command(&["token", "--identity", "azure-cli"]);
    let config = with_az(&w, &mut cmd);
    set_mode(&w.dir.path().join("az-bin"), 0o777);
    let run = w.run_cmd(cmd);
    run.assert_code(2);
    assert!(
        run.stderr.contains("writable by other accounts"),
        "{}",
        run.stderr
    );
    assert!(az_calls(&config).is_empty(), "az was run");
}

// ---- PAT ---------------------------------------------------------------------------------------

const PAT: &str = "sim7pat4abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";

fn pat_world() -> World {
    let w = World::new();
    w.sim
        .state()
        .pats
        .insert(PAT.to_owned(), ids::SYSTEM_OBJECT.to_owned());
    w
}

#[test]
fn a_pat_is_sent_only_as_basic_and_never_reaches_the_agent() {
    let w = pat_world();
    let mut cmd = w.install_command(&["--identity", "pat"]);
    cmd.env("AZP_TOKEN", PAT);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let ado = ado_requests(&w);
    assert!(!ado.is_empty());
    assert!(
        ado.iter().all(|r| r.auth.as_deref() == Some("basic")),
        "{ado:?}"
    );
    let report = w.sim.state().listener_reports[0].clone();
    assert!(report.token_from_env, "the agent got the PAT as its token");
    assert!(
        !report.env_names.iter().any(|n| n.starts_with("AZP_TOKEN")),
        "{:?}",
        report.env_names
    );
    // Nothing to read it from at boot: install says so.
    assert!(
        run.stderr.contains("AZP_TOKEN_FILE instead"),
        "{}",
        run.stderr
    );
    let s = saved(&w);
    assert_eq!(s["identity_source"], "pat");
    assert_eq!(s["pat_file"], serde_json::Value::Null);

    // A wrong PAT: Azure DevOps refuses it, and the hint is about PATs.
    let w = pat_world();
    let mut cmd = w.command(&["doctor", "--url", &w.org_url(), "--identity", "pat"]);
    cmd.env(
        "AZP_TOKEN",
        "wrongpat4abcdefghijklmnopqrstuvwxyz0123456789abcdef",
    );
    let run = w.run_cmd(cmd);
    run.assert_code(4);
    assert!(
        run.stdout.contains("Agent Pools (Read & manage)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("wrongpat4"));
}

#[test]
fn auto_with_a_pat_and_an_identity_uses_the_identity_and_says_so_loudly() {
    let w = pat_world();
    let mut cmd = w.install_command(&[]);
    cmd.env("AZP_TOKEN", PAT);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        run.stderr.contains("WARN")
            && run.stderr.contains(
                "AZP_TOKEN is set, but the machine's identity (imds) is used: --identity auto \
                 prefers an identity over a PAT; pass --identity pat to use the PAT"
            ),
        "{}",
        run.stderr
    );
    // Every call (the agent's configure too) carried a token IMDS issued, none the PAT.
    let ado = ado_requests(&w);
    assert!(
        !ado.is_empty() && ado.iter().all(|r| r.token.is_some()),
        "{ado:?}"
    );
    assert_eq!(saved(&w)["identity_source"], "imds");
    // Chosen explicitly, the PAT is used and nothing is said about the identity.
    let w = pat_world();
    let mut cmd = w.install_command(&["--identity", "pat"]);
    cmd.env("AZP_TOKEN", PAT);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        !run.stderr.contains("prefers an identity"),
        "{}",
        run.stderr
    );
}

#[test]
fn azure_devops_server_refusing_entra_tokens_is_named_with_the_pat_way() {
    let w = pat_world();
    w.sim.state().on_premises = true;
    let run = w.install(&[]);
    run.assert_code(4);
    assert!(
        run.stderr
            .contains("the server offers Negotiate, NTLM, Basic authentication, not Bearer")
            && run.stderr.contains(
                "hint: this looks like Azure DevOps Server (on-premises), which does not accept \
                 Entra ID tokens"
            )
            && run.stderr.contains("--identity pat with AZP_TOKEN_FILE"),
        "{}",
        run.stderr
    );
    assert!(!w.agent_dir().join(".agent").exists());
    assert!(w.server_agents(1).is_empty());
    // doctor says the same before anything is tried.
    let run = w.run(&["doctor", "--url", &w.org_url()]);
    run.assert_code(4);
    assert!(
        run.stdout.contains("Azure DevOps Server (on-premises)"),
        "{}",
        run.stdout
    );
    // With a PAT it installs.
    let mut cmd = w.install_command(&["--identity", "pat"]);
    cmd.env("AZP_TOKEN", PAT);
    w.run_cmd(cmd).assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);
    // Azure DevOps Services offers Bearer: a refused Entra token keeps its own hint.
    let w = World::new();
    let run = w.install(&["--client-id", azure_sim::ids::OUTSIDER_CLIENT]);
    run.assert_code(4);
    assert!(
        run.stderr.contains("add the identity to the organization")
            && !run.stderr.contains("on-premises"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_pat_file_must_be_private_and_serves_later_boots() {
    let w = pat_world();
    let secrets = w.secrets_dir();
    std::fs::create_dir_all(&secrets).unwrap();
    let file = secrets.join("pat");
    std::fs::write(&file, format!("{PAT}\n")).unwrap();
    set_mode(&file, 0o644);
    let mut cmd = w.install_command(&["--identity", "pat"]);
    cmd.env("AZP_TOKEN_FILE", &file);
    let run = w.run_cmd(cmd);
    run.assert_code(2);
    assert!(
        run.stderr.contains(&file.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(w.requests().is_empty(), "contacted something");

    set_mode(&file, 0o600);
    let mut cmd = w.install_command(&["--identity", "pat"]);
    cmd.env("AZP_TOKEN_FILE", &file);
    w.run_cmd(cmd).assert_code(0);
    assert_eq!(saved(&w)["pat_file"], file.display().to_string());

    // The agent is deleted on the server; the boot's reconcile has no variables, only the file.
    w.sim.state().agents.clear();
    let run = w.reconcile();
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("configured the agent from the saved settings"),
        "{}",
        run.stdout
    );
    assert_eq!(w.server_agents(1).len(), 1);
    assert!(
        ado_requests(&w)
            .iter()
            .all(|r| r.auth.as_deref() == Some("basic"))
    );

    // A PAT has no selector.
    let mut cmd = w.command(&[
        "token",
        "--identity",
        "pat",
        "--object-id",
        ids::UAMI_OBJECT,
    ]);
    cmd.env("AZP_TOKEN_FILE", &file);
    let run = w.run_cmd(cmd);
    run.assert_code(2);
    assert!(run.stderr.contains("--object-id"), "{}", run.stderr);
}

// ---- The auto chain ----------------------------------------------------------------------------

#[test]
fn off_azure_auto_falls_through_to_az_within_seconds() {
    let w = World::new();
    let mut cmd = w.command(&["token"]);
    let config = with_az(&w, &mut cmd);
    std::fs::write(
        config.join("sim-login.json"),
        r#"{"kind":"identity","selector":null}"#,
    )
    .unwrap();
    cmd.env("AZURE_POD_IDENTITY_AUTHORITY_HOST", NO_IMDS)
        // Real time: the probe must not wait out the IMDS retry budget.
        .env_remove("AGENT_BOOTSTRAP_TEST_VIRTUAL_TIME");
    let started = Instant::now();
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        run.stderr.contains("identity source imds skipped"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("identity source: azure-cli"),
        "{}",
        run.stderr
    );
    assert!(w.sim.state().tokens.contains_key(run.stdout.trim()));
}

#[test]
fn with_no_source_at_all_every_reason_is_given() {
    let w = World::new();
    let mut cmd = w.command(&["token"]);
    cmd.env("AZURE_POD_IDENTITY_AUTHORITY_HOST", NO_IMDS)
        .env("PATH", w.sim.systemd_dir().join("bin"));
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    for kind in ["workload", "app-service", "arc", "imds", "azure-cli", "pat"] {
        assert!(
            run.stderr.contains(&format!("  - {kind}: ")),
            "{kind}: {}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains("agent-bootstrap doctor"),
        "{}",
        run.stderr
    );
}

// ---- doctor ------------------------------------------------------------------------------------

#[test]
fn doctor_reports_a_healthy_identity_and_exits_0() {
    let w = World::new();
    let run = w.run(&["doctor", "--url", &w.org_url(), "--pool", "Default"]);
    run.assert_code(0);
    let out = &run.stdout;
    assert!(out.contains("imds         chosen"), "{out}");
    assert!(out.contains("workload     skipped"), "{out}");
    assert!(
        out.contains(&format!("object id    {}", ids::SYSTEM_OBJECT)),
        "{out}"
    );
    assert!(
        out.contains(&format!("tenant       {}", w.sim.config.tenant_id)),
        "{out}"
    );
    assert!(out.contains(&format!("audience     {RESOURCE}")), "{out}");
    for check in ["token", "organization", "pool", "package"] {
        assert!(out.contains(&format!("ok     {check}")), "{check}: {out}");
    }
    assert!(out.contains("would get past every check"), "{out}");

    let run = w.run(&["doctor", "--url", &w.org_url(), "--json"]);
    run.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["claims"]["oid"], ids::SYSTEM_OBJECT);
    assert_eq!(v["identity"]["candidates"][3]["verdict"], "chosen");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "connection",
            "token",
            "organization",
            "pool",
            "package",
            "download"
        ]
    );
}

#[test]
fn doctor_says_what_to_fix_for_an_identity_outside_the_organization() {
    let w = World::new();
    let run = w.run(&[
        "doctor",
        "--url",
        &w.org_url(),
        "--client-id",
        ids::OUTSIDER_CLIENT,
    ]);
    run.assert_code(4);
    assert!(run.stdout.contains("FAILED organization"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("fix: add the identity to the organization"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(ids::OUTSIDER_OBJECT),
        "the oid to add: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains("an install would fail here"),
        "{}",
        run.stdout
    );

    // A pool it may not manage: exit 4 at the pool check.
    let run = w.run(&[
        "doctor",
        "--url",
        &w.org_url(),
        "--pool",
        "Restricted",
        "--client-id",
        ids::UAMI_CLIENT,
    ]);
    run.assert_code(4);
    assert!(run.stdout.contains("ok     organization"), "{}", run.stdout);
    assert!(run.stdout.contains("FAILED pool"), "{}", run.stdout);

    // No identity at all: exit 3, every source's reason.
    let mut cmd = w.command(&["doctor", "--url", &w.org_url(), "--json"]);
    cmd.env("AZURE_POD_IDENTITY_AUTHORITY_HOST", NO_IMDS)
        .env("PATH", w.sim.systemd_dir().join("bin"));
    let run = w.run_cmd(cmd);
    run.assert_code(3);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["identity"]["candidates"].as_array().unwrap().len(), 6);
    assert_eq!(v["checks"][0]["name"], "connection");
    assert_eq!(v["checks"][1]["name"], "identity");
}

#[test]
fn imds_throttling_during_the_chain_is_the_one_retry_table() {
    // Once the probe found IMDS, its token request follows the IMDS column (a 429 waited out).
    let w = World::new();
    w.sim.state().imds_script.push_back(Scripted {
        status: 429,
        retry_after: Some(3),
        body: "{}".into(),
        headers: vec![],
    });
    let run = w.run(&["token"]);
    run.assert_code(0);
    assert_eq!(w.imds_probes(), 1);
    assert_eq!(w.imds_token_requests().len(), 2);
    let waits = retry_waits(&run.stderr);
    assert!((3.0..=3.3).contains(&waits[0]), "{waits:?}");
}

/// A new VM boots before its identity's organization membership and pool role have reached
/// Azure DevOps (minutes, with Terraform or a scale set created with its role assignments).
/// Without --wait-for-access install stops at the first 401 (exit 4, nothing registered); with
/// it, install asks again with backoff, says what it waits for, and installs once access is
/// there; when the time is up it stops with the last answer. Other failures never wait.
#[test]
fn wait_for_access_keeps_asking_until_propagation_is_done() {
    let w = World::new();
    w.sim.state().membership_pending = 1;
    let run = w.install(&[]);
    run.assert_code(4);
    assert!(run.stderr.contains("TF400813"), "{}", run.stderr);
    assert!(w.server_agents(1).is_empty());

    // Membership for 3 more requests, then the pool role for 2 lookups.
    {
        let mut st = w.sim.state();
        st.membership_pending = 3;
        st.manage_pending = 2;
    }
    let run = w.install(&["--wait-for-access", "30m"]);
    run.assert_code(0);
    let waits: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("waiting for access"))
        .collect();
    assert_eq!(waits.len(), 5, "{}", run.stderr);
    assert!(
        waits[0].contains("the organization does not accept the identity yet")
            && waits[0].contains("asking again in 5s"),
        "{}",
        run.stderr
    );
    assert!(
        waits[1].contains("asking again in 10s")
            && waits[4].contains("the identity may not manage the pool yet")
            && waits[4].contains("asking again in 60s"),
        "{}",
        run.stderr
    );
    assert_eq!(w.server_agents(1).len(), 1);

    // Never granted: the time runs out, the last answer is the error.
    let w = World::new();
    w.sim.state().membership_pending = 10_000;
    let run = w.install(&["--wait-for-access", "3m"]);
    run.assert_code(4);
    assert!(
        run.stderr
            .contains("still: the organization does not accept the identity yet")
            && run.stderr.contains("TF400813"),
        "{}",
        run.stderr
    );
    assert!(w.server_agents(1).is_empty());

    // A failure waiting cannot fix (an organization that does not exist) stops at once.
    let run = w.run(&[
        "install",
        "--url",
        &w.org_url().replace("myorg", "otherorg"),
        "--agent-dir",
        w.agent_dir().to_str().unwrap(),
        "--agent-name",
        "test-agent",
        "--wait-for-access",
        "30m",
    ]);
    run.assert_code(4);
    assert!(!run.stderr.contains("waiting for access"), "{}", run.stderr);

    // Bad input names the flag.
    let run = w.install(&["--wait-for-access", "soon"]);
    run.assert_code(2);
    assert!(run.stderr.contains("--wait-for-access"), "{}", run.stderr);
}
