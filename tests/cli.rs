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
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
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
