//! The Windows binary end to end under Wine, against the simulator on loopback.
//!
//! `agent-bootstrap.exe` (built for x86_64-pc-windows-gnu) runs under Wine, in the project's Wine
//! prefix (`scripts/wine-run`); the simulator runs on Linux and serves a `win-x64` package whose
//! `config.cmd` runs a Windows build of the fake listener, which creates the agent's service with
//! `sc.exe` as `config.cmd --runAsService` does. What Wine cannot show (ACLs, a real boot) is
//! checked as data in the unit tests; the README says what still needs a Windows host.
//!
//! Needs Wine and the mingw-w64 compiler (`scripts/windows-setup.sh` installs both). Without them
//! the tests say so and pass, unless `AGENT_BOOTSTRAP_WINE_TESTS=1` (CI sets it): then they fail.

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use azure_sim::{PackageSpec, SimConfig, Simulator};
use common::Run;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TARGET: &str = "x86_64-pc-windows-gnu";

/// The Windows builds of agent-bootstrap and of the simulator (built here once), or `None` when
/// this machine cannot run them.
fn windows_builds() -> Option<&'static (PathBuf, PathBuf)> {
    static BUILDS: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    BUILDS
        .get_or_init(|| {
            let required = std::env::var("AGENT_BOOTSTRAP_WINE_TESTS").is_ok_and(|v| v == "1");
            let have = |tool: &str| which::which(tool).is_ok();
            if !have("wine") || !have("x86_64-w64-mingw32-gcc") {
                assert!(
                    !required,
                    "Wine or mingw-w64 is missing: run scripts/windows-setup.sh"
                );
                eprintln!("Wine or mingw-w64 is missing: the Windows tests are skipped");
                return None;
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let built = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "--target",
                    TARGET,
                    "--bin",
                    "agent-bootstrap",
                    "--example",
                    "azure-sim",
                ])
                .current_dir(ROOT)
                .status()
                .unwrap()
                .success();
            assert!(built, "the Windows build failed");
            let dir = Path::new(ROOT).join("target").join(TARGET).join("debug");
            // The fake listener goes into the package: stripped, it is a tenth of the size.
            let listener = Path::new(ROOT).join("target/wine-tests/Agent.Listener.exe");
            std::fs::create_dir_all(listener.parent().unwrap()).unwrap();
            std::fs::copy(dir.join("examples/azure-sim.exe"), &listener).unwrap();
            let _ = Command::new("x86_64-w64-mingw32-strip")
                .arg(&listener)
                .status();
            Some((dir.join("agent-bootstrap.exe"), listener))
        })
        .as_ref()
}

/// Where the Wine prefix keeps `C:\`.
fn drive_c() -> PathBuf {
    let prefix = std::env::var_os("WINEPREFIX")
        .map_or_else(|| Path::new(ROOT).join("target/wine-prefix"), PathBuf::from);
    prefix.join("drive_c")
}

struct WinWorld {
    sim: Simulator,
    exe: PathBuf,
    /// `C:\ab-tests\<id>` as Windows sees it, and where it is on Linux.
    win_dir: String,
    dir: PathBuf,
    agent_name: String,
    _work: tempfile::TempDir,
}

impl WinWorld {
    fn new() -> Option<Self> {
        let (exe, listener) = windows_builds()?;
        let work = tempfile::tempdir().unwrap();
        let mut config = SimConfig::standard(listener, work.path());
        config.package = PackageSpec::windows("4.264.2");
        let sim = Simulator::start(config, 0).unwrap();
        let id = format!("{}-{}", std::process::id(), sim.addr.port());
        let dir = drive_c().join("ab-tests").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        Some(Self {
            sim,
            exe: exe.clone(),
            win_dir: format!(r"C:\ab-tests\{id}"),
            dir,
            agent_name: format!("win-{}", std::process::id()),
            _work: work,
        })
    }

    fn agent_dir_win(&self) -> String {
        format!(r"{}\agent", self.win_dir)
    }

    fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }

    fn run(&self, args: &[&str]) -> Run {
        let run = Run::of(self.command(args).output().unwrap());
        self.assert_no_token_leak(&run);
        run
    }

    /// `agent-bootstrap.exe ARGS` under Wine, against the simulator, with this world's state and
    /// cache directories.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(Path::new(ROOT).join("scripts/wine-run"));
        cmd.arg(&self.exe).args(args);
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "AZP_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AZURE_POD_IDENTITY_AUTHORITY_HOST", self.sim.base_url())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("NO_COLOR", "1")
            .env("AGENT_BOOTSTRAP_TEST_VIRTUAL_TIME", "1")
            .env(
                "AGENT_BOOTSTRAP_STATE_DIR",
                format!(r"{}\state", self.win_dir),
            )
            .env(
                "AGENT_BOOTSTRAP_CACHE_DIR",
                format!(r"{}\cache", self.win_dir),
            );
        cmd
    }

    /// `install --url <sim> --agent-dir <world>\agent --agent-name <name> EXTRA…`, to run.
    fn install_command(&self, extra: &[&str]) -> Command {
        let url = self.sim.org_url();
        let dir = self.agent_dir_win();
        let mut args = vec![
            "install",
            "--url",
            &url,
            "--agent-dir",
            &dir,
            "--agent-name",
            &self.agent_name,
        ];
        args.extend(extra);
        self.command(&args)
    }

    fn install(&self, extra: &[&str]) -> Run {
        let run = Run::of(self.install_command(extra).output().unwrap());
        self.assert_no_token_leak(&run);
        run
    }

    fn with_dir(&self, verb: &str, extra: &[&str]) -> Run {
        let dir = self.agent_dir_win();
        let mut args = vec![verb, "--agent-dir", &dir];
        args.extend(extra);
        self.run(&args)
    }

    fn service_name(&self) -> String {
        format!("vstsagent.127.Default.{}", self.agent_name)
    }

    /// `sc.exe query` under Wine: (exists, running).
    fn service(&self) -> (bool, bool) {
        let out = Command::new(Path::new(ROOT).join("scripts/wine-run"))
            .args(["sc", "query", &self.service_name()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        (text.contains("SERVICE_NAME"), text.contains("RUNNING"))
    }

    fn task_file(&self) -> Option<PathBuf> {
        std::fs::read_dir(drive_c().join("windows/system32/tasks"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                std::fs::read(p).is_ok_and(|b| {
                    let text: String = b.iter().filter(|c| **c != 0).map(|c| *c as char).collect();
                    text.contains(&format!(
                        r"ab-tests\{}",
                        self.win_dir.rsplit('\\').next().unwrap()
                    ))
                })
            })
    }

    fn assert_no_token_leak(&self, run: &Run) {
        let tokens: Vec<String> = self.sim.state().tokens.keys().cloned().collect();
        for t in &tokens {
            assert!(!run.stdout.contains(t.as_str()), "token on stdout");
            assert!(!run.stderr.contains(t.as_str()), "token on stderr");
        }
        common::assert_not_in_files(&self.dir, &tokens);
    }
}

impl Drop for WinWorld {
    fn drop(&mut self) {
        // Leave no service behind in the shared prefix.
        let _ = Command::new(Path::new(ROOT).join("scripts/wine-run"))
            .args(["sc", "delete", &self.service_name()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn expect(run: &Run, code: i32) {
    assert_eq!(
        run.code, code,
        "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    );
}

fn read_bom_json(path: &Path) -> serde_json::Value {
    let raw = std::fs::read(path).unwrap();
    let raw = raw.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(&raw);
    serde_json::from_slice(raw).unwrap()
}

#[test]
fn install_rerun_reconcile_status_and_remove_on_windows() {
    let Some(w) = WinWorld::new() else { return };

    // install: a verified zip, config.cmd --runAsService as SYSTEM, the service running, the
    // settings saved, the boot task registered.
    let run = w.install(&[]);
    expect(&run, 0);
    assert!(run.stdout.starts_with("installed"), "{}", run.stdout);
    assert!(run.stdout.contains(&w.service_name()), "{}", run.stdout);
    let agent = read_bom_json(&w.agent_dir().join(".agent"));
    assert_eq!(agent["agentName"], w.agent_name.as_str());
    assert_eq!(w.sim.state().agents.get(&1).map(Vec::len), Some(1));
    let report = w.sim.state().listener_reports[0].clone();
    assert_eq!(report.verb, "configure");
    assert!(
        report.token_from_env,
        "the token came from VSTS_AGENT_INPUT_TOKEN"
    );
    assert!(report.unrecognized.is_empty(), "{:?}", report.unrecognized);
    let argv = report.argv.join(" ").to_ascii_lowercase();
    assert!(argv.contains("--runasservice"), "{argv}");
    assert!(argv.contains(r"nt authority\network service"), "{argv}");
    assert!(!argv.contains("acceptteeeula"), "{argv}");
    assert_eq!(w.service(), (true, true));
    let task = w.task_file().expect("the boot task is registered");
    let xml: String = std::fs::read(&task)
        .unwrap()
        .iter()
        .filter(|c| **c != 0)
        .map(|c| *c as char)
        .collect();
    // Wine's Task Scheduler keeps the description and settings of what it was given, not the
    // boot trigger, principal or action (those are checked as data in the unit tests).
    assert!(xml.contains("keep the Azure Pipelines agent in"), "{xml}");
    assert!(
        xml.contains("<ExecutionTimeLimit>PT15M</ExecutionTimeLimit>"),
        "{xml}"
    );
    assert!(w.dir.join("state/agents").read_dir().unwrap().count() == 1);

    // The same install again: nothing to do.
    let run = w.install(&[]);
    expect(&run, 0);
    assert!(
        run.stdout.starts_with("already installed"),
        "{}",
        run.stdout
    );
    assert_eq!(w.sim.state().listener_reports.len(), 1);

    // Deleted on the server: reconcile registers it again from a freshly extracted package.
    w.sim.state().agents.clear();
    let run = w.with_dir("reconcile", &[]);
    expect(&run, 0);
    assert!(
        run.stdout
            .contains("configured the agent from the saved settings"),
        "{}",
        run.stdout
    );
    let agents = w.sim.state().agents.get(&1).cloned().unwrap_or_default();
    assert_eq!(agents.len(), 1);
    let agent = read_bom_json(&w.agent_dir().join(".agent"));
    assert_eq!(agent["agentId"], agents[0].id);
    let verbs: Vec<String> = w
        .sim
        .state()
        .listener_reports
        .iter()
        .map(|r| r.verb.clone())
        .collect();
    assert_eq!(
        verbs,
        vec!["configure", "configure"],
        "no reauth.cmd as SYSTEM"
    );
    assert_eq!(w.service(), (true, true));

    // status: the SCM's and the server's view.
    let run = w.with_dir("status", &["--json"]);
    expect(&run, 0);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["configured"], true);
    assert_eq!(s["service"]["active"], true);
    assert_eq!(s["server"]["exists"], true, "{}", run.stdout);
    assert_eq!(s["boot"]["exists"], true, "{}", run.stdout);

    // remove: the service stopped and deleted, the agent deleted on the server, the task gone.
    let run = w.with_dir("remove", &[]);
    expect(&run, 0);
    assert!(run.stdout.contains("unregistered agent"), "{}", run.stdout);
    assert!(w.sim.state().agents.get(&1).is_none_or(Vec::is_empty));
    assert_eq!(w.service(), (false, false));
    assert!(w.task_file().is_none());
    assert!(!w.agent_dir().join(".agent").exists());
    assert_eq!(w.dir.join("state/agents").read_dir().unwrap().count(), 0);
    let run = w.with_dir("remove", &[]);
    expect(&run, 0);
    assert!(run.stdout.contains("nothing to remove"), "{}", run.stdout);
}

/// A deployment group on Windows: `config.cmd --deploymentgroup …` as SYSTEM, the service named
/// after the deployment pool, the target tagged; remove deletes the target.
#[test]
fn a_deployment_group_agent_on_windows() {
    let Some(w) = WinWorld::new() else { return };
    let group = [
        "--deployment-group",
        "WebServers",
        "--project",
        "myproject",
        "--tag",
        "windows",
    ];
    let run = w.install(&group);
    expect(&run, 0);
    let service = format!("vstsagent.127.myproject-WebServers.{}", w.agent_name);
    assert!(run.stdout.contains(&service), "{}", run.stdout);
    let report = w.sim.state().listener_reports[0].clone();
    let argv = report.argv.join(" ").to_ascii_lowercase();
    assert!(
        argv.contains("--deploymentgroup --deploymentgroupname webservers --projectname myproject"),
        "{argv}"
    );
    assert!(!argv.contains("--pool"), "{argv}");
    let agent = read_bom_json(&w.agent_dir().join(".agent"));
    assert_eq!(agent["deploymentGroupId"], 1, "{agent}");
    let targets = w.sim.state().targets(1, 101);
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].1, ["windows"]);
    w.assert_no_token_leak(&run);

    let run = w.with_dir("remove", &[]);
    expect(&run, 0);
    assert!(w.sim.state().targets(1, 101).is_empty());
    assert!(w.sim.state().pool_agents(101).is_empty());
}

#[test]
fn bad_input_and_a_hostile_zip_are_refused_on_windows() {
    let Some(w) = WinWorld::new() else { return };
    let url = w.sim.org_url();
    for (args, needle) in [
        (
            vec!["install", "--url", &url, "--agent-dir", "relative"],
            "--agent-dir",
        ),
        (
            vec!["install", "--url", &url, "--pool", "Build & Release"],
            "--pool",
        ),
        (
            vec!["install", "--url", &url, "--user", "azpagent"],
            "--user",
        ),
    ] {
        let run = w.run(&args);
        expect(&run, 2);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    assert!(w.sim.state().requests.is_empty(), "nothing contacted");

    // A zip that climbs out of the agent dir.
    let evil = w.dir.join("evil.zip");
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("bin/Agent.Listener.exe", o).unwrap();
        z.write_all(b"MZ").unwrap();
        z.start_file("../escaped.txt", o).unwrap();
        z.write_all(b"x").unwrap();
        z.finish().unwrap();
    }
    let package = format!(r"{}\evil.zip", w.win_dir);
    let run = w.install(&["--package", &package]);
    expect(&run, 5);
    assert!(
        run.stderr.contains("outside the agent directory"),
        "{}",
        run.stderr
    );
    assert!(!w.dir.join("escaped.txt").exists());
    assert!(!w.agent_dir().exists());
}

#[test]
fn a_custom_service_account_gets_its_password_only_through_the_environment() {
    let Some(w) = WinWorld::new() else { return };
    let mut cmd =
        w.install_command(&["--windows-logon-account", r"CONTOSO\svc-agent", "--no-boot"]);
    cmd.env(
        "VSTS_AGENT_INPUT_WINDOWSLOGONPASSWORD",
        "pa55-w0rd-of-the-account",
    );
    let run = Run::of(cmd.output().unwrap());
    w.assert_no_token_leak(&run);
    expect(&run, 0);
    assert!(
        !run.stderr.contains("pa55-w0rd") && !run.stdout.contains("pa55-w0rd"),
        "the password is never logged"
    );
    let report = w.sim.state().listener_reports[0].clone();
    let argv = report.argv.join(" ");
    assert!(
        argv.contains(r"--windowsLogonAccount CONTOSO\svc-agent"),
        "{argv}"
    );
    assert!(
        !argv.contains("pa55-w0rd"),
        "the password is never an argument"
    );
    assert!(
        report
            .env_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case("VSTS_AGENT_INPUT_WINDOWSLOGONPASSWORD")),
        "{:?}",
        report.env_names
    );
    assert!(w.task_file().is_none(), "--no-boot: no boot task");
    common::assert_not_in_files(&w.dir, &["pa55-w0rd".to_owned()]);
}

#[test]
fn run_once_on_windows_takes_a_job_and_unregisters() {
    let Some(w) = WinWorld::new() else { return };
    w.sim.state().queued_jobs.push_back(200);
    let url = w.sim.org_url();
    let dir = w.agent_dir_win();
    let run = w.run(&[
        "run",
        "--once",
        "--url",
        &url,
        "--agent-dir",
        &dir,
        "--agent-name",
        &w.agent_name,
    ]);
    expect(&run, 0);
    let jobs = w.sim.state().jobs.clone();
    assert_eq!(jobs, [(w.agent_name.clone(), 5000, true)], "{}", run.stderr);
    assert!(
        w.sim
            .state()
            .agents
            .get(&1)
            .is_none_or(std::vec::Vec::is_empty)
    );
    assert!(!w.agent_dir().join(".agent").exists());
    // No service: the agent ran in the foreground (run.cmd), configured without --runAsService.
    let configure = w.sim.state().listener_reports[0].clone();
    assert!(
        !configure.argv.iter().any(|a| a == "--runAsService"),
        "{:?}",
        configure.argv
    );
    assert!(!w.service().0);
}

/// The mode Wine gave a directory SYSTEM created: Wine keeps a directory's ACL only as its Unix
/// mode, so an ACL granting nobody but SYSTEM and Administrators shows as no bits for others.
fn others_bits(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o007
}

/// Issue 17, Windows items 9 and 10, as far as Wine lets them be seen: SYSTEM's own directories
/// (state, locks, cache, where the package is staged and verified) get their private ACL when they
/// are created, not after, and nothing is staged beside the agent dir. (Wine shows a planted Unix
/// link as a plain file or directory, not as a reparse point, and its `CreateSymbolicLinkW` makes
/// nothing: refusing junctions is unit-tested, see the README.)
#[test]
fn system_keeps_its_dirs_private_from_creation_on_windows() {
    let Some(w) = WinWorld::new() else { return };
    let run = w.install(&[]);
    expect(&run, 0);
    for d in ["state", "state/agents", "state/locks", "cache"] {
        assert_eq!(
            others_bits(&w.dir.join(d)),
            0,
            "{d} was created open to others"
        );
    }
    let cached: Vec<_> = std::fs::read_dir(w.dir.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".size"))
        .collect();
    assert!(
        cached.len() == 1 && cached[0].ends_with(".zip"),
        "only the verified zip stays in the cache: {cached:?}"
    );
    let beside: Vec<_> = std::fs::read_dir(&w.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".agent-bootstrap"))
        .collect();
    assert!(
        beside.is_empty(),
        "nothing staged beside the agent dir: {beside:?}"
    );
}

/// The `steps` of one `--output json` run.
fn json_steps(run: &Run) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    doc["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {doc}\n{}", run.stderr))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// #19 on Windows: install's, reconcile's and remove's dry runs list the steps their real runs
/// then carry out (the boot task is registered again at every install, and both say so).
#[test]
fn dry_runs_on_windows_list_what_the_real_runs_do() {
    let Some(w) = WinWorld::new() else { return };
    let json = ["--output", "json"];
    let dry = w.install(&["--output", "json", "--dry-run"]);
    expect(&dry, 0);
    let real = w.install(&json);
    expect(&real, 0);
    assert_eq!(json_steps(&dry), json_steps(&real), "fresh install");
    assert!(json_steps(&real).iter().any(|s| s.contains("run elevated")));

    // Installed and running: the rerun's only step is the boot task, registered again every time
    // (its program may have moved), and the dry run says so.
    let dry = w.install(&["--output", "json", "--dry-run"]);
    expect(&dry, 0);
    let real = w.install(&json);
    expect(&real, 0);
    assert_eq!(json_steps(&dry), json_steps(&real), "rerun");
    let steps = json_steps(&real);
    assert!(
        steps.len() == 1 && steps[0].contains("scheduled task"),
        "{steps:?}"
    );

    let dry = w.with_dir("reconcile", &["--output", "json", "--dry-run"]);
    expect(&dry, 0);
    let real = w.with_dir("reconcile", &json);
    expect(&real, 0);
    assert_eq!(json_steps(&dry), json_steps(&real), "reconcile");

    let dry = w.with_dir("remove", &["--output", "json", "--dry-run"]);
    expect(&dry, 0);
    assert!(w.service().0, "the dry run removed nothing");
    let real = w.with_dir("remove", &json);
    expect(&real, 0);
    assert_eq!(json_steps(&dry), json_steps(&real), "remove");
    assert!(!w.service().0, "the service is gone");
}
