//! `install --dry-run` is truthful (#19): for each state an agent dir can be in, the steps the dry
//! run prints are the steps the real run then carries out, in order (both from `--output json`'s
//! `steps`), and a dry run after the real one has nothing left to do. Nothing a dry run is not
//! shown happens: on a healthy agent the real run changes nothing in systemd.

#![cfg(unix)]

mod common;

use common::*;

/// The steps of one `install` run (`--output json`).
fn steps(w: &World, extra: &[&str]) -> (i32, Vec<String>) {
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    let run = w.install(&args);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let steps = doc["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {doc}\n{}", run.stderr))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (run.code, steps)
}

/// The dry run's steps, then the real run's: equal; then a dry run that has nothing to do.
fn truthful(w: &World, case: &str, extra: &[&str], expect: &[&str]) {
    let mut dry_args = vec!["--dry-run"];
    dry_args.extend_from_slice(extra);
    let changes = w.systemctl_changes();
    let (code, planned) = steps(w, &dry_args);
    assert_eq!(code, 0, "{case}: the dry run failed");
    assert_eq!(
        w.systemctl_changes(),
        changes,
        "{case}: the dry run changed systemd"
    );
    let (code, done) = steps(w, extra);
    assert_eq!(code, 0, "{case}: the real run failed");
    assert_eq!(
        planned, done,
        "{case}: the dry run said one thing, the real run did another"
    );
    for want in expect {
        assert!(
            done.iter().any(|s| s.contains(want)),
            "{case}: no step '{want}' in {done:#?}"
        );
    }
    let after = w.systemctl_changes();
    let (_, left) = steps(w, &dry_args);
    assert!(
        left.is_empty(),
        "{case}: still to do after the real run: {left:#?}"
    );
    let (_, again) = steps(w, extra);
    assert!(
        again.is_empty(),
        "{case}: the second real run did {again:#?}"
    );
    assert_eq!(
        w.systemctl_changes(),
        after,
        "{case}: a run with nothing to do changed systemd"
    );
}

fn state_file(w: &World, name: &str) -> std::path::PathBuf {
    w.sim.systemd_dir().join("state").join(name)
}

fn unit_named(w: &World, prefix: &str) -> String {
    std::fs::read_dir(w.units_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no unit {prefix}*"))
}

#[test]
fn a_fresh_install_does_what_its_dry_run_says() {
    let w = World::new();
    truthful(
        &w,
        "fresh",
        &["--scale-in-drain"],
        &["download", "run as", "write the unit", "save settings"],
    );
    assert_eq!(w.server_agents(1).len(), 1);
}

#[test]
fn an_installed_agent_gets_exactly_the_repairs_its_dry_run_lists() {
    let w = World::new();
    w.install(&["--scale-in-drain"]).assert_code(0);
    let extra = ["--scale-in-drain"];

    // Healthy: nothing.
    truthful(&w, "healthy", &extra, &[]);

    // The agent's service stopped and disabled.
    let unit = unit_named(&w, "vsts.agent.");
    std::fs::remove_file(state_file(&w, &format!("{unit}.active"))).unwrap();
    std::fs::remove_file(state_file(&w, &format!("{unit}.enabled"))).unwrap();
    truthful(
        &w,
        "service stopped",
        &extra,
        &["write the unit", "systemctl start"],
    );
    assert!(w.unit_active(&unit) && w.unit_enabled(&unit));

    // The agent's unit file gone, and the boot unit's.
    std::fs::remove_file(w.units_dir().join(&unit)).unwrap();
    let boot = unit_named(&w, "agent-bootstrap-tmp");
    std::fs::remove_file(w.units_dir().join(&boot)).unwrap();
    truthful(&w, "unit files gone", &extra, &["write the unit", "enable"]);
    assert!(w.units_dir().join(&unit).is_file() && w.units_dir().join(&boot).is_file());

    // --disable-update added: .env rewritten, the running agent restarted.
    truthful(
        &w,
        "update switch",
        &["--scale-in-drain", "--disable-update"],
        &["self-update off", "systemctl restart"],
    );

    // --scale-in-drain dropped: the watcher goes, settings say so.
    let watch = unit_named(&w, "agent-bootstrap-watch-");
    truthful(
        &w,
        "watcher dropped",
        &["--disable-update"],
        &["delete agent-bootstrap-watch-", "save settings"],
    );
    assert!(!w.units_dir().join(&watch).exists());

    // Root's settings cut short: written anew.
    let file = w.saved_settings_files()[0].clone();
    let text = std::fs::read(&file).unwrap();
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    truthful(
        &w,
        "torn settings",
        &["--disable-update"],
        &["save settings"],
    );
}

#[test]
fn a_re_registration_does_what_its_dry_run_says() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    w.sim.state().agents.clear();
    truthful(
        &w,
        "deleted on the server",
        &[],
        &["systemctl stop", "remove the local registration", "run as"],
    );
    assert_eq!(w.server_agents(1).len(), 1);
}

/// The steps of one `reconcile` run (`--output json`), and its exit code.
fn reconcile_steps(w: &World, dry: bool) -> (i32, Vec<String>) {
    let dir = w.agent_dir().display().to_string();
    let mut args = vec!["reconcile", "--agent-dir", &dir, "--output", "json"];
    if dry {
        args.push("--dry-run");
    }
    let run = w.run(&args);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let steps = doc["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {doc}\n{}", run.stderr))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (run.code, steps)
}

/// One reconcile row: the dry run's steps, then the real run's: equal, and what was expected
/// among them; then a dry run with nothing left to do, and a real run that changes nothing.
fn truthful_reconcile(w: &World, case: &str, expect: &[&str]) {
    let agents = |w: &World| {
        let mut ids: Vec<_> = w
            .server_agents(1)
            .iter()
            .map(|a| (a.id, a.name.clone()))
            .collect();
        ids.sort();
        ids
    };
    let (changes, before) = (w.systemctl_changes(), agents(w));
    let (code, planned) = reconcile_steps(w, true);
    assert_eq!(code, 0, "{case}: the dry run failed");
    assert_eq!(
        w.systemctl_changes(),
        changes,
        "{case}: the dry run changed systemd"
    );
    assert_eq!(agents(w), before, "{case}: the dry run changed the server");
    let (code, done) = reconcile_steps(w, false);
    assert_eq!(code, 0, "{case}: the real run failed");
    assert_eq!(
        planned, done,
        "{case}: the dry run said one thing, the real run did another"
    );
    for want in expect {
        assert!(
            done.iter().any(|s| s.contains(want)),
            "{case}: no step '{want}' in {done:#?}"
        );
    }
    let after = w.systemctl_changes();
    let (_, left) = reconcile_steps(w, true);
    assert!(
        left.is_empty(),
        "{case}: still to do after the real run: {left:#?}"
    );
    let (_, again) = reconcile_steps(w, false);
    assert!(
        again.is_empty(),
        "{case}: the second real run did {again:#?}"
    );
    assert_eq!(
        w.systemctl_changes(),
        after,
        "{case}: a run with nothing to do changed systemd"
    );
}

#[test]
fn each_reconcile_row_does_what_its_dry_run_says() {
    let w = World::new();
    w.install(&["--disable-update"]).assert_code(0);
    let unit = unit_named(&w, "vsts.agent.");

    truthful_reconcile(&w, "healthy", &[]);

    std::fs::remove_file(state_file(&w, &format!("{unit}.active"))).unwrap();
    std::fs::remove_file(state_file(&w, &format!("{unit}.enabled"))).unwrap();
    truthful_reconcile(
        &w,
        "stopped and disabled",
        &["systemctl enable", "systemctl start"],
    );

    std::fs::remove_file(w.units_dir().join(&unit)).unwrap();
    truthful_reconcile(&w, "unit file gone", &["write the agent's unit"]);

    // A job took the update switch out of .env.
    let env_file = w.agent_dir().join(".env");
    let text = std::fs::read_to_string(&env_file).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.contains("agent.disableupdate"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&env_file, without).unwrap();
    truthful_reconcile(
        &w,
        "update switch",
        &["self-update off", "systemctl restart"],
    );

    w.sim.state().agents.clear();
    truthful_reconcile(
        &w,
        "deleted on the server",
        &[
            "remove the local registration",
            "the install flow",
            "run as",
        ],
    );
    assert_eq!(w.server_agents(1).len(), 1);

    // Not configured (a reimaged data disk): the install flow.
    for f in [".agent", ".credentials", ".credentials_rsaparams"] {
        let _ = std::fs::remove_file(w.agent_dir().join(f));
    }
    truthful_reconcile(&w, "not configured", &["the install flow", "run as"]);
    assert_eq!(w.server_agents(1).len(), 1);
}

#[test]
fn a_clone_does_what_its_dry_run_says() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    w.sim.state().vm_id = "6f1c2d3e-0000-4000-8000-00000000c10e".into();
    truthful_reconcile(
        &w,
        "clone",
        &["original machine's service", "register this machine as"],
    );
    assert_eq!(w.server_agents(1).len(), 2, "the original and the clone");
}

/// The steps of one `remove` run (`--output json`).
fn remove_steps(w: &World, extra: &[&str]) -> (i32, Vec<String>) {
    let dir = w.agent_dir().display().to_string();
    let mut args = vec!["remove", "--agent-dir", &dir, "--output", "json"];
    args.extend_from_slice(extra);
    let run = w.run(&args);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let steps = doc["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {doc}\n{}", run.stderr))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (run.code, steps)
}

#[test]
fn remove_does_what_its_dry_run_says() {
    let w = World::new();
    w.install(&["--scale-in-drain"]).assert_code(0);
    let changes = w.systemctl_changes();
    let (code, planned) = remove_steps(&w, &["--purge", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(
        w.systemctl_changes(),
        changes,
        "the dry run changed systemd"
    );
    assert_eq!(w.server_agents(1).len(), 1, "the dry run unregistered");
    assert!(w.agent_dir().join(".agent").exists());
    let (code, done) = remove_steps(&w, &["--purge"]);
    assert_eq!(code, 0);
    assert_eq!(
        planned, done,
        "the dry run said one thing, the real run did another"
    );
    for want in [
        "systemctl stop and disable vsts.agent.",
        "on the server",
        "local registration",
        "scale-in watcher",
        "boot unit",
        "saved settings",
        "delete /",
    ] {
        assert!(
            done.iter().any(|s| s.contains(want)),
            "no '{want}' in {done:#?}"
        );
    }
    assert!(w.server_agents(1).is_empty());
    assert!(!w.agent_dir().exists());
    let (code, left) = remove_steps(&w, &["--dry-run"]);
    assert_eq!(code, 0);
    assert!(left.is_empty(), "still to do: {left:#?}");
}
