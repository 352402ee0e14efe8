//! The command line itself: `--version`, `completions`, `-q`/`-v`. The real binary.

#![cfg(unix)]

mod common;

use common::*;

#[test]
fn version_names_the_commit_and_the_target() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let want_prefix = format!("agent-bootstrap {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&want_prefix), "{line}");
    // The checkout's HEAD when the tests run in one (CI runs in a fresh clone), else "unknown".
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    assert_eq!(line.trim_end(), format!("{want_prefix}{head}, {target})"));
}

#[test]
fn completions_are_printed_for_each_shell_and_bash_loads_them() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef agent-bootstrap"),
        ("fish", "complete -c agent-bootstrap"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script:.300}");
        for word in ["install", "reconcile", "identity", "agent-dir"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
        assert!(out.stderr.is_empty(), "{shell}: stdout only");
    }
    // bash itself loads the script and completes a subcommand with it.
    let script = format!(
        r#"source <("{BIN}" completions bash) && COMP_WORDS=(agent-bootstrap reco) && COMP_CWORD=1 \
           && COMP_LINE="agent-bootstrap reco" && COMP_POINT=${{#COMP_LINE}} \
           && _agent__bootstrap agent-bootstrap reco agent-bootstrap && printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "reconcile");

    let out = std::process::Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

#[test]
fn quiet_and_verbose_set_how_much_is_logged() {
    let w = World::new();
    let normal = w.run(&["token"]);
    normal.assert_code(0);
    assert!(normal.stderr.contains(" INFO "), "{}", normal.stderr);
    assert!(!normal.stderr.contains("DEBUG"), "{}", normal.stderr);

    let quiet = w.run(&["token", "-q"]);
    quiet.assert_code(0);
    assert!(quiet.stderr.trim().is_empty(), "{}", quiet.stderr);
    assert!(
        !quiet.stdout.trim().is_empty(),
        "the token still goes to stdout"
    );

    let verbose = w.run(&["-v", "token"]);
    verbose.assert_code(0);
    assert!(
        verbose.stderr.contains("DEBUG") && verbose.stderr.contains("request method=GET"),
        "{}",
        verbose.stderr
    );
    assert!(!verbose.stderr.contains("TRACE"), "{}", verbose.stderr);

    // The flags win over the variable.
    let mut cmd = w.command(&["token", "-q"]);
    cmd.env("AGENT_BOOTSTRAP_LOG", "debug");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(run.stderr.trim().is_empty(), "{}", run.stderr);

    let both = w.run(&["token", "-q", "-v"]);
    both.assert_code(2);
    assert!(both.stderr.contains("--quiet"), "{}", both.stderr);
}

/// `--output json`: one JSON object on stdout at the end of install, status, reconcile, doctor,
/// prune and remove, whatever the outcome (schema_version, exit code and its meaning, the error,
/// what was done, the agent, the command's own report); logs stay on stderr. Commands whose
/// stdout is data of their own refuse it.
#[test]
fn output_json_is_one_object_whatever_the_outcome() {
    let w = World::new();
    let dir = w.agent_dir();
    let dir = dir.to_str().unwrap();
    let doc = |run: &Run| -> serde_json::Value {
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", run.stdout))
    };

    let run = w.install(&["--output", "json"]);
    run.assert_code(0);
    let d = doc(&run);
    let server = w.server_agents(1);
    assert_eq!(d["schema_version"], 1);
    assert_eq!(d["command"], "install");
    assert_eq!(d["ok"], true);
    assert_eq!(d["exit_code"], 0);
    assert_eq!(d["result"], "success");
    assert_eq!(d["summary"][0], "installed");
    assert_eq!(d["agent"]["name"], "test-agent");
    assert_eq!(d["agent"]["id"], server[0].id);
    assert_eq!(d["agent"]["pool"], "Default");
    assert!(d["agent"]["version"].is_string(), "{d}");
    assert!(d.get("error").is_none());

    let run = w.run(&["status", "--agent-dir", dir, "--output", "json"]);
    run.assert_code(0);
    let d = doc(&run);
    assert_eq!(d["command"], "status");
    assert_eq!(d["agent"]["name"], "test-agent");
    assert!(d["report"].is_object(), "{d}");

    w.sim.state().agents.clear();
    let run = w.run(&["reconcile", "--agent-dir", dir, "--output", "json"]);
    run.assert_code(0);
    let d = doc(&run);
    assert_eq!(d["command"], "reconcile");
    assert_eq!(d["agent"]["id"], w.server_agents(1)[0].id);

    let url = w.org_url();
    let run = w.run(&["doctor", "--url", &url, "--output", "json"]);
    run.assert_code(0);
    assert_eq!(doc(&run)["report"]["ok"], true);

    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "7d",
        "--dry-run",
        "--output",
        "json",
    ]);
    run.assert_code(0);
    assert!(doc(&run)["report"].is_array(), "{}", run.stdout);

    let run = w.run(&["remove", "--agent-dir", dir, "--output", "json"]);
    run.assert_code(0);
    let d = doc(&run);
    assert_eq!(d["command"], "remove");
    assert_eq!(d["agent"]["name"], "test-agent");
    assert!(
        d["summary"][0].as_str().unwrap().starts_with("removed: "),
        "{d}"
    );

    // A failure is a document too: the code, its meaning, the error with its hint.
    let run = w.install(&["--pool", "NoSuchPool", "--output", "json"]);
    run.assert_code(4);
    let d = doc(&run);
    assert_eq!(d["ok"], false);
    assert_eq!(d["exit_code"], 4);
    assert_eq!(d["result"], "Azure DevOps refused");
    assert!(d["error"].as_str().unwrap().contains("NoSuchPool"), "{d}");
    assert_eq!(d["summary"], serde_json::json!([]));

    let run = w.run(&["token", "--output", "json"]);
    run.assert_code(2);
    assert!(run.stderr.contains("--output json"), "{}", run.stderr);
    let d = doc(&run);
    assert_eq!(d["exit_code"], 2);
}
