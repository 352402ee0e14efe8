//! The images people actually use: minimal and locked-down systems get a clear answer, never a
//! panic (an abort would be exit 134 and a message for Rust developers).

#![cfg(unix)]

mod common;

use common::*;

#[test]
fn a_bug_is_one_line_and_exit_1_never_an_abort() {
    let w = World::new();
    let mut cmd = w.command(&["status", "--agent-dir", w.agent_dir().to_str().unwrap()]);
    cmd.env("AGENT_BOOTSTRAP_TEST_PANIC", "1");
    let run = w.run_cmd(cmd);
    run.assert_code(1);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0]
            .contains("internal error (a bug): a panic asked for by AGENT_BOOTSTRAP_TEST_PANIC")
            && lines[0].contains("src/crash.rs")
            && lines[0].contains("report it"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("RUST_BACKTRACE"), "{}", run.stderr);
}
