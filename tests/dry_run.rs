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
