//! Interrupted at any moment: the real binary, against the simulator, is killed with SIGKILL at
//! moments drawn at random across a measured run of each command that changes something
//! (`install`; `reconcile` re-registering an agent deleted on the server; `remove`; `run --once`), with
//! every process it started (a VM that dies takes them all), while the simulated Azure keeps
//! running. The same command is then run again, and must converge: one agent of that name on the
//! server and `.agent` naming it, its unit active (or, after `remove`, nothing: no agent, no unit,
//! no settings), and nothing left beside the agent dir, in the cache or in root's state (staging
//! trees, partial downloads, temporary files).
//!
//! Seeded: `AGENT_BOOTSTRAP_KILL_SEED` (else the clock) and `AGENT_BOOTSTRAP_KILL_RUNS` kills per
//! command (default 3); every failure names the seed and the moment, so a case can be run again:
//! `AGENT_BOOTSTRAP_KILL_SEED=<seed> cargo test --test kill_anywhere`. `scripts/bench.sh
//! --kill-runs N` runs a longer search.

#![cfg(unix)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn seed() -> u64 {
    std::env::var("AGENT_BOOTSTRAP_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn runs() -> usize {
    std::env::var("AGENT_BOOTSTRAP_KILL_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// Every process that belongs to the world: its command line or its working directory names the
/// world's directory (the binary, config.sh, the fake listener, the agent's scripts).
fn world_processes(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle) || cwd.starts_with(dir)
        })
        .collect()
}

/// A power cut: SIGKILL to the run's process group, then to every process of the world, until
/// none is left (the simulator runs in this test process and stays).
fn kill_everything(w: &World, child: &mut std::process::Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    let start = Instant::now();
    loop {
        let left = world_processes(w.dir.path());
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "processes survive SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cmd` in a process group of its own, lets it run for `after`, then cuts the power.
fn run_and_kill(w: &World, mut cmd: Command, after: Duration) {
    cmd.process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(after);
    kill_everything(w, &mut child);
}

/// The same command again, to its end (at most two minutes: a rerun that hangs is a failure).
fn rerun(w: &World, mut cmd: Command, case: &str) -> Run {
    // Output to files, read at the end: a pipe nobody reads while it runs could fill and stall it.
    let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    cmd.process_group(0)
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            kill_everything(w, &mut child);
            panic!("{case}: the rerun did not end within two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut text).unwrap();
        text
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: read(out),
        stderr: read(err),
    };
    w.assert_no_token_leak(&run);
    run
}

/// How long an uninterrupted run of `cmd` takes (it must succeed).
fn measure(w: &World, cmd: Command) -> Duration {
    let start = Instant::now();
    w.run_cmd(cmd).assert_code(0);
    start.elapsed()
}

/// Files a run writes on the way and must not leave: staging trees, partial downloads, temporary
/// files of atomic writes, anywhere in the world but inside the agent dir (the agent's own).
fn debris(w: &World) -> Vec<String> {
    let agent_dir = w.agent_dir();
    walkdir::WalkDir::new(w.dir.path())
        .into_iter()
        .filter_entry(|e| e.path() != agent_dir && !e.path().starts_with(w.dir.path().join("sim")))
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy();
            n.contains("staging") || n.ends_with(".partial") || n.contains(".tmp")
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

/// Installed and running, once: the convergence checks.
fn assert_installed(w: &World, case: &str) {
    let agents = w.server_agents(1);
    assert_eq!(agents.len(), 1, "{case}: agents on the server: {agents:?}");
    let local = read_agent_json(&w.agent_dir().join(".agent"));
    assert_eq!(
        local["agentId"], agents[0].id,
        "{case}: .agent names another agent"
    );
    let saved = w.saved_settings_files();
    assert_eq!(saved.len(), 1, "{case}: saved settings {saved:?}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved[0]).unwrap()).unwrap();
    assert_eq!(
        s["agent_id"], agents[0].id,
        "{case}: saved settings name another agent"
    );
    let unit = s["service_unit"].as_str().expect("a unit");
    assert!(w.unit_active(unit), "{case}: {unit} is not active");
    // No unit that points at a missing directory.
    for u in std::fs::read_dir(w.units_dir()).unwrap().flatten() {
        let text = std::fs::read_to_string(u.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(dir) = line.strip_prefix("WorkingDirectory=") {
                assert!(
                    Path::new(dir).is_dir(),
                    "{case}: {} points at {dir}",
                    u.path().display()
                );
            }
        }
    }
    let d = debris(w);
    assert!(d.is_empty(), "{case}: left behind: {d:?}");
}

/// One command under kills: `prepare` makes the world's starting state, `cmd` the command;
/// `check` the convergence after the rerun.
fn property(
    name: &str,
    prepare: impl Fn(&World),
    cmd: impl Fn(&World) -> Command,
    check: impl Fn(&World, &str),
) {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let w = World::new();
    prepare(&w);
    let took = measure(&w, cmd(&w));
    for i in 0..runs() {
        let at = Duration::from_micros(rng.u64(0..=took.as_micros() as u64));
        let case =
            format!("{name}: kill {i} at {at:?} of {took:?} (AGENT_BOOTSTRAP_KILL_SEED={seed})");
        let w = World::new();
        prepare(&w);
        run_and_kill(&w, cmd(&w), at);
        let again = rerun(&w, cmd(&w), &case);
        assert_eq!(again.code, 0, "{case}: the rerun failed\n{}", again.stderr);
        check(&w, &case);
    }
}

#[test]
fn install_killed_anywhere_converges_on_the_next_install() {
    property(
        "install",
        |_| {},
        |w| w.install_command(&[]),
        assert_installed,
    );
}

#[test]
fn reconcile_killed_while_it_re_registers_converges_on_the_next_reconcile() {
    let dir = |w: &World| w.agent_dir().display().to_string();
    property(
        "reconcile",
        |w| {
            w.install(&[]).assert_code(0);
            w.sim.state().agents.clear();
        },
        |w| w.command(&["reconcile", "--agent-dir", &dir(w)]),
        assert_installed,
    );
}

#[test]
fn remove_killed_anywhere_converges_on_the_next_remove() {
    let dir = |w: &World| w.agent_dir().display().to_string();
    property(
        "remove",
        |w| {
            w.install(&[]).assert_code(0);
        },
        |w| w.command(&["remove", "--agent-dir", &dir(w)]),
        |w, case| {
            assert!(w.server_agents(1).is_empty(), "{case}: still registered");
            assert!(w.saved_settings_files().is_empty(), "{case}: settings left");
            let units: Vec<_> = std::fs::read_dir(w.units_dir())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(units.is_empty(), "{case}: units left: {units:?}");
            assert!(
                !w.agent_dir().join(".agent").exists(),
                "{case}: the agent is still configured"
            );
            let d = debris(w);
            assert!(d.is_empty(), "{case}: left behind: {d:?}");
        },
    );
}

/// `run --once` (a container): killed while it registers, takes its job or unregisters; the next
/// container with the same name and agent dir takes a job and leaves no agent behind.
#[test]
fn run_killed_anywhere_leaves_no_agent_after_the_next_run() {
    let cmd = |w: &World| {
        w.command(&[
            "run",
            "--url",
            &w.org_url(),
            "--agent-dir",
            &w.agent_dir().display().to_string(),
            "--agent-name",
            "pod-1",
            "--once",
        ])
    };
    property(
        "run",
        |w| {
            let mut st = w.sim.state();
            st.queued_jobs.push_back(300);
            st.queued_jobs.push_back(301);
        },
        cmd,
        |w, case| {
            assert!(
                w.server_agents(1).is_empty(),
                "{case}: agents left: {:?}",
                w.server_agents(1)
            );
            let d = debris(w);
            assert!(d.is_empty(), "{case}: left behind: {d:?}");
        },
    );
}

/// Temporary files of an atomic write of `name` (`.NAME.PID.RANDOM.tmp`) in `dir`.
fn temps_of(dir: &Path, name_part: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.contains(name_part) && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// #24, power cut: the run killed at the one moment a random kill rarely lands on, between the
/// write (synced) and the rename of each file root keeps: the saved settings, the agent's unit, the
/// boot unit, the scale-in watcher's unit. The file is the old one or absent, never part of one;
/// the same command run again converges and deletes the killed write's temporary file.
#[test]
fn a_kill_between_write_and_rename_of_each_state_file_converges() {
    for (what, name_part, dir) in [
        ("saved settings", ".json", "state/agents"),
        ("agent unit", "vsts.agent.", "units"),
        ("boot unit", "agent-bootstrap-{key}", "units"),
        ("watch unit", "agent-bootstrap-watch-", "units"),
    ] {
        let w = World::new();
        // The boot unit is agent-bootstrap-<key>.service, the key the agent dir's path.
        let key = w.agent_dir().display().to_string();
        let name_part = &name_part.replace("{key}", &key.trim_matches('/').replace('/', "-"));
        let dir = match dir {
            "units" => w.units_dir(),
            _ => w.state_dir().join("agents"),
        };
        let mut cmd = w.install_command(&["--scale-in-drain"]);
        cmd.env("AGENT_BOOTSTRAP_TEST_CRASH_BEFORE_RENAME", name_part);
        let killed = w.run_cmd(cmd);
        assert_eq!(killed.code, -1, "{what}: not killed\n{}", killed.stderr);
        let temps = temps_of(&dir, name_part);
        assert_eq!(temps.len(), 1, "{what}: the killed write's file: {temps:?}");
        let target = temps[0]
            .trim_start_matches('.')
            .split(".tmp")
            .next()
            .unwrap()
            .rsplitn(3, '.')
            .nth(2)
            .unwrap()
            .to_owned();
        assert!(
            !dir.join(&target).exists(),
            "{what}: {target} exists though its rename never happened"
        );
        let again = w.install(&["--scale-in-drain"]);
        assert_eq!(again.code, 0, "{what}: the rerun failed\n{}", again.stderr);
        assert_installed(&w, what);
        assert!(dir.join(&target).is_file(), "{what}: {target} not written");
        assert!(temps_of(&dir, name_part).is_empty(), "{what}: temp left");
    }
}

/// The same kill while the saved settings are rewritten over good ones: the old file stays whole
/// and the boot's reconcile goes on from it.
#[test]
fn a_kill_while_settings_are_rewritten_leaves_the_old_ones() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    let file = w.saved_settings_files()[0].clone();
    let before = std::fs::read(&file).unwrap();
    let mut cmd = w.install_command(&["--capability", "gpu=none"]);
    cmd.env("AGENT_BOOTSTRAP_TEST_CRASH_BEFORE_RENAME", ".json");
    assert_eq!(w.run_cmd(cmd).code, -1, "not killed");
    assert_eq!(std::fs::read(&file).unwrap(), before, "the old settings");
    w.reconcile().assert_code(0);
    assert_installed(&w, "reconcile after the kill");
}

/// #24: unit files cut short (a torn write met anyway: an older version's writer, a file system
/// that lost its tail) are reported and written anew by the next run, never trusted: a cut in the
/// middle of `WorkingDirectory=` does not make the agent's unit look like another agent dir's.
#[test]
fn torn_unit_files_are_reported_and_rewritten() {
    let w = World::new();
    w.install(&["--scale-in-drain"]).assert_code(0);
    let units: Vec<_> = std::fs::read_dir(w.units_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(units.len(), 3, "agent, boot and watch units: {units:?}");
    let whole: Vec<_> = units.iter().map(|u| std::fs::read(u).unwrap()).collect();
    for (unit, text) in units.iter().zip(&whole) {
        let s = String::from_utf8_lossy(text);
        let cut = s
            .find("WorkingDirectory=")
            .map_or(text.len() / 2, |i| i + 24);
        std::fs::write(unit, &text[..cut]).unwrap();
    }
    let run = w.install(&["--scale-in-drain"]);
    run.assert_code(0);
    assert!(
        run.stderr.matches("not what it should be").count() >= 3,
        "each torn unit reported: {}",
        run.stderr
    );
    for (unit, text) in units.iter().zip(&whole) {
        assert_eq!(&std::fs::read(unit).unwrap(), text, "{}", unit.display());
    }
    assert_installed(&w, "after the torn units");
}
