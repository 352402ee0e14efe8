//! `install --dry-run` is truthful (#19): for each state an agent dir can be in, the steps the dry
//! run prints are the steps the real run then carries out, in order (both from `--output json`'s
//! `steps`), and a dry run after the real one has nothing left to do. Nothing a dry run is not
//! shown happens: on a healthy agent the real run changes nothing in systemd.

#![cfg(unix)]

mod common;

use common::*;

/// The exit code and `steps` of one run of `cmd` with `--output json`.
fn json_steps(w: &World, mut cmd: std::process::Command) -> (i32, Vec<String>) {
    cmd.args(["--output", "json"]);
    let run = w.run_cmd(cmd);
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

/// The steps of one `install` run.
fn steps(w: &World, extra: &[&str]) -> (i32, Vec<String>) {
    json_steps(w, w.install_command(extra))
}

/// The steps of one run of `verb --agent-dir <world's> EXTRA…` (reconcile, remove).
fn dir_steps(w: &World, verb: &str, extra: &[&str]) -> (i32, Vec<String>) {
    let dir = w.agent_dir().display().to_string();
    let mut args = vec![verb, "--agent-dir", &dir];
    args.extend_from_slice(extra);
    json_steps(w, w.command(&args))
}

/// The dry run's steps (`run(w, true)`), then the real run's: equal, and what was expected among
/// them; neither systemd nor the server's agents changed by the dry run; then a dry run with
/// nothing left to do, and a real run that changes nothing.
fn truthful_with(
    w: &World,
    case: &str,
    run: impl Fn(&World, bool) -> (i32, Vec<String>),
    expect: &[&str],
) {
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
    let (code, planned) = run(w, true);
    assert_eq!(code, 0, "{case}: the dry run failed");
    assert_eq!(
        w.systemctl_changes(),
        changes,
        "{case}: the dry run changed systemd"
    );
    assert_eq!(agents(w), before, "{case}: the dry run changed the server");
    let (code, done) = run(w, false);
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
    let (_, left) = run(w, true);
    assert!(
        left.is_empty(),
        "{case}: still to do after the real run: {left:#?}"
    );
    let (_, again) = run(w, false);
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

/// [`truthful_with`] for `install EXTRA…`.
fn truthful(w: &World, case: &str, extra: &[&str], expect: &[&str]) {
    let run = |w: &World, dry: bool| {
        let mut args = extra.to_vec();
        if dry {
            args.push("--dry-run");
        }
        steps(w, &args)
    };
    truthful_with(w, case, run, expect);
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

/// [`truthful_with`] for one reconcile row.
fn truthful_reconcile(w: &World, case: &str, expect: &[&str]) {
    let run =
        |w: &World, dry: bool| dir_steps(w, "reconcile", if dry { &["--dry-run"] } else { &[] });
    truthful_with(w, case, run, expect);
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

#[test]
fn remove_does_what_its_dry_run_says() {
    let w = World::new();
    w.install(&["--scale-in-drain"]).assert_code(0);
    let changes = w.systemctl_changes();
    let (code, planned) = dir_steps(&w, "remove", &["--purge", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(
        w.systemctl_changes(),
        changes,
        "the dry run changed systemd"
    );
    assert_eq!(w.server_agents(1).len(), 1, "the dry run unregistered");
    assert!(w.agent_dir().join(".agent").exists());
    let (code, done) = dir_steps(&w, "remove", &["--purge"]);
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
    let (code, left) = dir_steps(&w, "remove", &["--dry-run"]);
    assert_eq!(code, 0);
    assert!(left.is_empty(), "still to do: {left:#?}");
}
