//! Out of disk: the agent dir's file system, then the package cache's, on a small tmpfs (each
//! run in a mount namespace of its own, so nothing stays mounted). Before the first byte is
//! written the archive's size (Content-Length) and what it takes once extracted (measured by an
//! earlier run, else three times the archive), with a tenth more, are checked against the free
//! space; a write that finds the disk full anyway is named the same way. Either way: exit 5, the
//! file system's mount point, how much is free and needed, nothing registered, nothing left
//! behind, and the same command installs once there is room.

#![cfg(unix)]

mod common;

use std::path::Path;

use common::*;

fn install_on(w: &World, agent_dir: &Path) -> std::process::Command {
    w.install_command(&["--agent-dir", agent_dir.to_str().unwrap()])
}

fn assert_nothing_done(w: &World, case: &str) {
    assert!(w.server_agents(1).is_empty(), "{case}: registered");
    assert!(w.staging_leftovers().is_empty(), "{case}: staging left");
    let partials: Vec<_> = w
        .cache_files()
        .into_iter()
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "{case}: {partials:?}");
}

#[test]
fn a_full_agent_dir_file_system_is_named_before_the_download() {
    let w = World::new();
    let small = w.dir.path().join("small");
    let agent_dir = small.join("agent");
    let run = w.run_cmd(with_tmpfs(
        &install_on(&w, &agent_dir),
        &[(&small, "size=512k,mode=0755")],
    ));
    run.assert_code(5);
    assert!(
        run.stderr
            .contains("not enough space for the agent package: the agent dir is on")
            && run.stderr.contains(&small.display().to_string())
            && run.stderr.contains("MiB free, and it needs about")
            && run.stderr.contains("--agent-dir"),
        "{}",
        run.stderr
    );
    assert_nothing_done(&w, "agent dir");

    // Room enough: the same command installs.
    let run = w.run_cmd(with_tmpfs(
        &install_on(&w, &agent_dir),
        &[(&small, "size=64m,mode=0755")],
    ));
    run.assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);
}

#[test]
fn a_full_package_cache_is_named_before_the_download() {
    let w = World::new();
    let cache = w.dir.path().join("small-cache");
    let mut cmd = w.install_command(&[]);
    cmd.env("AGENT_BOOTSTRAP_CACHE_DIR", cache.join("c"));
    let run = w.run_cmd(with_tmpfs(&cmd, &[(&cache, "size=64k,mode=0755")]));
    run.assert_code(5);
    assert!(
        run.stderr.contains("the package cache is on")
            && run.stderr.contains(&cache.display().to_string())
            && run.stderr.contains("AGENT_BOOTSTRAP_CACHE_DIR"),
        "{}",
        run.stderr
    );
    assert!(w.server_agents(1).is_empty());
    assert!(!w.agent_dir().join("config.sh").exists());
}

/// The check passes (an earlier run measured a smaller extraction than this one needs: here, a
/// record made small), and the disk fills during the extraction: the OS error becomes the same
/// answer, and nothing is left.
#[test]
fn a_disk_that_fills_during_the_extraction_is_named_and_left_clean() {
    let w = World::new();
    let small = w.dir.path().join("small");
    let agent_dir = small.join("agent");
    std::fs::create_dir_all(w.cache_dir()).unwrap();
    std::fs::write(
        w.cache_dir().join(format!("{}.size", w.sim.package.sha256)),
        "1000",
    )
    .unwrap();
    let run = w.run_cmd(with_tmpfs(
        &install_on(&w, &agent_dir),
        &[(&small, "size=1200k,mode=0755")],
    ));
    run.assert_code(5);
    assert!(
        run.stderr
            .contains("not enough space for the agent package: the agent dir is on")
            && run.stderr.contains(&small.display().to_string())
            && !run.stderr.contains("needs about"),
        "{}",
        run.stderr
    );
    assert_nothing_done(&w, "during extraction");
}

/// Root's state dir on a full file system: its settings are written once the agent is
/// registered, so install stops before it contacts anything (exit 5), naming the file system.
#[test]
fn a_full_state_dir_stops_install_before_anything_is_contacted() {
    let w = World::new();
    let small = w.dir.path().join("small-state");
    let mut cmd = w.install_command(&[]);
    cmd.env("AGENT_BOOTSTRAP_STATE_DIR", small.join("s"));
    let run = w.run_cmd(with_tmpfs(&cmd, &[(&small, "size=256k,mode=0755")]));
    run.assert_code(5);
    assert!(
        run.stderr.contains("the state dir")
            && run.stderr.contains("is on a full file system")
            && run.stderr.contains(&small.display().to_string())
            && run.stderr.contains("AGENT_BOOTSTRAP_STATE_DIR"),
        "{}",
        run.stderr
    );
    assert!(w.requests().is_empty(), "{:?}", w.requests());
}

/// The unit directory (/etc/systemd/system) full: named before anything is contacted, exit 5.
#[test]
fn a_full_unit_directory_stops_install_before_anything_is_contacted() {
    let w = World::new();
    let small = w.dir.path().join("small-units");
    let mut cmd = w.install_command(&[]);
    cmd.env("AGENT_BOOTSTRAP_UNIT_DIR", small.join("system"));
    let run = w.run_cmd(with_tmpfs(&cmd, &[(&small, "size=64k,mode=0755")]));
    run.assert_code(5);
    assert!(
        run.stderr.contains("the systemd unit directory")
            && run.stderr.contains("is on a full file system")
            && run.stderr.contains("--no-service and --no-boot"),
        "{}",
        run.stderr
    );
    assert!(w.requests().is_empty(), "{:?}", w.requests());
}
