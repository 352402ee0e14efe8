//! `scripts/install.sh`, the custom-script / cloud-init installer, run by a POSIX shell (dash where
//! it is installed) against a release tarball on disk and the simulated Azure: it installs only a
//! release whose SHA-256 matches, puts the binary where the boot unit then runs it, and exits with
//! `agent-bootstrap install`'s code. (`.ci/run` also runs it against a release served over HTTP on
//! loopback: scripts/check-packaging.sh.)

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn shell() -> &'static str {
    if Path::new("/usr/bin/dash").exists() || Path::new("/bin/dash").exists() {
        "dash"
    } else {
        "sh"
    }
}

/// `sha256sum` (the debug binary is large, and debug-built SHA-256 is slow).
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// A release tarball as scripts/package.sh lays it out: `agent-bootstrap-<v>/agent-bootstrap`.
fn release_tarball(w: &World) -> PathBuf {
    let stage = w.dir.path().join("release");
    let top = stage.join("agent-bootstrap-0.1.0");
    std::fs::create_dir_all(&top).unwrap();
    let exe = top.join("agent-bootstrap");
    std::fs::copy(BIN, &exe).unwrap();
    // Without its debug information, like a release build (and quick to compress).
    let _ = Command::new("strip")
        .arg("--strip-debug")
        .arg(&exe)
        .status();
    std::fs::write(top.join("README.md"), "readme").unwrap();
    let tarball = w
        .dir
        .path()
        .join("agent-bootstrap-0.1.0-x86_64-linux.tar.gz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .arg("agent-bootstrap-0.1.0")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    tarball
}

/// `install.sh --release R --sha256 H --bin-dir B -- <install args of the world>`, with the world's
/// environment.
fn install_sh(w: &World, release: &Path, sha: &str, bin_dir: &Path, extra: &[&str]) -> Run {
    let base = w.install_command(extra);
    let mut cmd = Command::new(shell());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
        .arg("--release")
        .arg(release)
        .arg("--sha256")
        .arg(sha)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--");
    // The world's install arguments, minus the leading `install`.
    cmd.args(base.get_args().skip(1));
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    w.run_cmd(cmd)
}

fn bin_dir(w: &World) -> PathBuf {
    let dir = w.dir.path().join("usr-local-bin");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_verified_release_is_installed_and_registers_the_agent() {
    let w = World::new();
    let tarball = release_tarball(&w);
    let bin = bin_dir(&w);
    let run = install_sh(&w, &tarball, &sha256(&tarball).to_uppercase(), &bin, &[]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("install.sh: verified"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.starts_with("installed"), "{}", run.stdout);
    let installed = bin.join("agent-bootstrap");
    assert_eq!(mode(&installed) & 0o7777, 0o755);
    assert_eq!(owner(&installed), 0);
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(
            w.dir
                .path()
                .join("release/agent-bootstrap-0.1.0/agent-bootstrap")
        )
        .unwrap()
    );
    assert_eq!(w.server_agents(1).len(), 1);
    // The boot unit runs the binary where install.sh put it.
    let boot_unit = std::fs::read_dir(w.units_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("agent-bootstrap-"))
        })
        .expect("a boot unit");
    let text = std::fs::read_to_string(boot_unit).unwrap();
    assert!(
        text.contains(&format!("ExecStart={} reconcile", installed.display())),
        "{text}"
    );
    // Nothing left behind but the binary.
    let left: Vec<String> = std::fs::read_dir(&bin)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["agent-bootstrap"]);
}

#[test]
fn a_digest_mismatch_installs_nothing() {
    let w = World::new();
    let tarball = release_tarball(&w);
    let bin = bin_dir(&w);
    let wrong = "0".repeat(64);
    let run = install_sh(&w, &tarball, &wrong, &bin, &[]);
    run.assert_code(5);
    assert!(run.stderr.contains("nothing installed"), "{}", run.stderr);
    assert!(std::fs::read_dir(&bin).unwrap().next().is_none());
    assert!(w.requests().is_empty(), "contacted something");

    for bad in ["abc", "z".repeat(64).as_str()] {
        let run = install_sh(&w, &tarball, bad, &bin, &[]);
        run.assert_code(2);
        assert!(run.stderr.contains("--sha256"), "{}", run.stderr);
    }
    let run = install_sh(&w, Path::new("/nonexistent.tar.gz"), &wrong, &bin, &[]);
    run.assert_code(2);
    assert!(run.stderr.contains("--release"), "{}", run.stderr);
    let run = install_sh(
        &w,
        Path::new("http://example.com/agent-bootstrap.tar.gz"),
        &wrong,
        &bin,
        &[],
    );
    run.assert_code(2);
    assert!(run.stderr.contains("plain http"), "{}", run.stderr);
}

#[test]
fn the_exit_code_is_installs_and_a_bare_binary_works_too() {
    let w = World::new();
    let bin = bin_dir(&w);
    // The bare binary as the release; install refuses a pool name a shell would run: exit 2.
    let run = install_sh(
        &w,
        Path::new(BIN),
        &sha256(Path::new(BIN)),
        &bin,
        &["--pool", "Default$(id)"],
    );
    run.assert_code(2);
    assert!(run.stderr.contains("--pool"), "{}", run.stderr);
    assert!(bin.join("agent-bootstrap").is_file());
}

/// One URL and one command for a mixed x86_64/aarch64 fleet: `{arch}` in `--release` and
/// `--sha256 ARCH=HEX` are this machine's (`uname -m`); no digest for it installs nothing.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_release_and_digest_for_this_machines_architecture_are_picked() {
    let w = World::new();
    let tarball = release_tarball(&w);
    let bin = bin_dir(&w);
    let templated = w
        .dir
        .path()
        .join("agent-bootstrap-0.1.0-{arch}-linux.tar.gz");
    let only_arm = format!("aarch64={}", sha256(&tarball));
    let run = install_sh(&w, &templated, &only_arm, &bin, &[]);
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("no --sha256 for this machine's architecture 'x86_64'"),
        "{}",
        run.stderr
    );
    assert!(!bin.join("agent-bootstrap").exists());
    let run = install_sh(
        &w,
        &templated,
        &format!("x86_64={}", sha256(&tarball)),
        &bin,
        &[],
    );
    run.assert_code(0);
    assert!(run.stderr.contains("x86_64-linux.tar.gz"), "{}", run.stderr);
    assert_eq!(w.server_agents(1).len(), 1);
}
