//! The host as it is (src/host.rs) and the static release binaries on real systems: the package
//! platform a binary asks the packages API for comes from the machine, never from how the binary
//! was built.
//!
//! The static binaries (`target/<triple>/release/agent-bootstrap` for x86_64- and
//! aarch64-unknown-linux-musl) are built by `scripts/check-static.sh`, which then runs these tests
//! with `AGENT_BOOTSTRAP_STATIC_TESTS=1`: there a missing binary or tool (qemu-aarch64-static,
//! debootstrap, chroot) fails the test. Without it such a test prints one `SKIPPED: <reason>` line
//! and passes, so `cargo test` alone stays quick.

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, World};

const X64: &str = "x86_64-unknown-linux-musl";
const ARM64: &str = "aarch64-unknown-linux-musl";

/// The release binaries ignore the test switch that gives each world its own agent account, so
/// every install they run uses `azpagent`, and configure ends every process of that account: two
/// such tests at once would kill each other's `config.sh`. They take turns.
fn shared_agent_account() -> std::sync::MutexGuard<'static, ()> {
    static ACCOUNT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ACCOUNT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn required() -> bool {
    std::env::var("AGENT_BOOTSTRAP_STATIC_TESTS").is_ok_and(|v| v == "1")
}

/// Skips (prints why) or, under `AGENT_BOOTSTRAP_STATIC_TESTS=1`, fails.
fn skip(reason: &str) {
    assert!(!required(), "AGENT_BOOTSTRAP_STATIC_TESTS=1 but {reason}");
    println!("SKIPPED: {reason}");
}

/// The static release binary for `triple`, if it has been built (scripts/check-static.sh).
fn static_bin(triple: &str) -> Option<PathBuf> {
    // target/<profile>/deps/<test> → target
    let target = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(3)
        .unwrap()
        .to_owned();
    let bin = target.join(triple).join("release/agent-bootstrap");
    bin.is_file().then_some(bin)
}

fn tool(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}

/// `w.command(args)` (its environment: the simulator's addresses, the fake systemctl) with
/// `program` and `prefix` in front instead of the debug binary.
fn command_with(w: &World, program: &Path, prefix: &[&str], args: &[&str]) -> Command {
    let template = w.command(args);
    let mut cmd = Command::new(program);
    cmd.args(prefix).args(template.get_args());
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// The `platform` each request to the packages API asked for.
fn platforms_asked(w: &World) -> Vec<String> {
    w.requests()
        .iter()
        .filter(|r| r.path.contains("/packages/agent"))
        .filter_map(|r| {
            r.query
                .split('&')
                .find_map(|kv| kv.strip_prefix("platform=").map(str::to_owned))
        })
        .collect()
}

fn install_args(w: &World) -> Vec<String> {
    vec![
        "install".into(),
        "--url".into(),
        w.org_url(),
        "--agent-dir".into(),
        w.agent_dir().display().to_string(),
        "--agent-name".into(),
        "test-agent".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A musl loader in /lib of this Debian machine (Debian's `musl` package, pulled in by
/// `musl-tools`): created for the test when the machine lacks it, and removed again only then.
struct MuslLoader(Option<PathBuf>);

impl MuslLoader {
    fn ensure() -> Self {
        let path = Path::new("/lib/ld-musl-x86_64.so.1");
        if path.symlink_metadata().is_ok() {
            return Self(None);
        }
        std::fs::write(path, b"").unwrap();
        Self(Some(path.to_owned()))
    }
}

impl Drop for MuslLoader {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Installs with `program` (+ `prefix`) and checks it asked for `platform` only and installed.
fn installs_asking_for(w: &World, program: &Path, prefix: &[&str], platform: &str) -> Run {
    let args = install_args(w);
    let run = w.run_cmd(command_with(w, program, prefix, &strs(&args)));
    run.assert_code(0);
    let asked = platforms_asked(w);
    assert!(
        !asked.is_empty() && asked.iter().all(|p| p == platform),
        "asked for {asked:?}, expected {platform}\n{}",
        run.stderr
    );
    assert!(
        w.agent_dir().join(".agent").is_file(),
        "not configured:\n{}",
        run.stderr
    );
    run
}

#[cfg(target_arch = "x86_64")]
#[test]
fn debian_with_a_musl_loader_in_lib_gets_the_glibc_package() {
    let _loader = MuslLoader::ensure();
    let w = World::new();
    installs_asking_for(&w, Path::new(common::BIN), &[], "linux-x64");
    // doctor and status show the choice and why.
    let run = w.run(&[
        "status",
        "--agent-dir",
        w.agent_dir().to_str().unwrap(),
        "--json",
    ]);
    run.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["host"]["platform"], "linux-x64");
    assert_eq!(status["host"]["facts"]["libc"], "glibc");
    let why = status["host"]["why"].to_string();
    assert!(why.contains("/bin/sh is linked by"), "{why}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_static_x86_64_binary_on_debian_with_a_musl_loader_gets_the_glibc_package() {
    let Some(bin) = static_bin(X64) else {
        return skip("no static x86_64 build (scripts/check-static.sh builds it)");
    };
    let _account = shared_agent_account();
    let _loader = MuslLoader::ensure();
    let w = World::new();
    installs_asking_for(&w, &bin, &[], "linux-x64");
}

/// Test 2 of the real-machines issue: the aarch64 binary under qemu-user asks for linux-arm64 and
/// runs install → status → reconcile → remove.
#[test]
fn the_aarch64_binary_under_qemu_user_gets_the_arm64_package_and_runs_the_lifecycle() {
    let Some(bin) = static_bin(ARM64) else {
        return skip("no static aarch64 build (scripts/check-static.sh builds it)");
    };
    let Some(qemu) = tool("qemu-aarch64-static").or_else(|| tool("qemu-aarch64")) else {
        return skip("qemu-aarch64-static is not installed (scripts/cross-setup.sh)");
    };
    let b = bin.to_str().unwrap();
    let _account = shared_agent_account();
    let w = World::with(|c| c.package.platform = "linux-arm64".into());
    installs_asking_for(&w, &qemu, &[b], "linux-arm64");
    let dir = w.agent_dir().display().to_string();
    let run = w.run_cmd(command_with(
        &w,
        &qemu,
        &[b],
        &["status", "--agent-dir", &dir, "--json"],
    ));
    run.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["host"]["platform"], "linux-arm64");
    assert_eq!(status["host"]["facts"]["kernel_machine"], "aarch64");
    assert_eq!(status["configured"], true);
    // Deleted on the server: reconcile registers it again.
    let pool = 1; // the simulator's pool `Default`
    let id = w.server_agents(pool)[0].id;
    w.sim
        .state()
        .agents
        .get_mut(&pool)
        .unwrap()
        .retain(|a| a.id != id);
    let run = w.run_cmd(command_with(
        &w,
        &qemu,
        &[b],
        &["reconcile", "--agent-dir", &dir],
    ));
    run.assert_code(0);
    assert_eq!(w.server_agents(pool).len(), 1, "{}", run.stderr);
    let run = w.run_cmd(command_with(
        &w,
        &qemu,
        &[b],
        &["remove", "--agent-dir", &dir],
    ));
    run.assert_code(0);
    assert!(w.server_agents(pool).is_empty(), "{}", run.stderr);
    assert!(!w.agent_dir().join(".agent").exists());
    assert!(platforms_asked(&w).iter().all(|p| p == "linux-arm64"));
}

/// `agent-bootstrap ARGS` chrooted into `root`, with `/proc` mounted there (as on any running
/// system) in a private mount namespace of its own, so nothing is left mounted afterwards.
fn chroot_command(w: &World, root: &Path, args: &[&str]) -> Command {
    let root = root.to_str().unwrap();
    let script = "mount -t proc proc \"$0/proc\" && exec chroot \"$0\" /usr/local/bin/agent-bootstrap \"$@\"";
    command_with(
        w,
        Path::new("unshare"),
        &[
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            root,
        ],
        args,
    )
}

fn chroot_run(w: &World, root: &Path, args: &[&str]) -> Run {
    w.run_cmd(chroot_command(w, root, args))
}

/// `--version` and a dry-run install against the simulator inside `root`.
fn runs_inside(w: &World, root: &Path) {
    let run = chroot_run(w, root, &["--version"]);
    run.assert_code(0);
    assert!(run.stdout.starts_with("agent-bootstrap "), "{}", run.stdout);
    let args = [
        "install",
        "--url",
        &w.org_url(),
        "--agent-dir",
        "/opt/azure-pipelines-agent",
        "--agent-name",
        "test-agent",
        "--dry-run",
    ];
    let run = chroot_run(w, root, &args);
    run.assert_code(0);
    assert_eq!(platforms_asked(w), ["linux-x64"], "{}", run.stderr);
    assert!(
        !root.join("opt/azure-pipelines-agent").exists(),
        "a dry run wrote the agent dir"
    );
}

/// Test 1 of the real-machines issue, the empty root: nothing but the binary and /proc (no libc,
/// no loader, no /etc, no CA certificates): a static binary needs none of it.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_static_x86_64_binary_runs_in_an_empty_root() {
    let Some(bin) = static_bin(X64) else {
        return skip("no static x86_64 build (scripts/check-static.sh builds it)");
    };
    let w = World::new();
    let root = w.dir.path().join("empty-root");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    // The mount point of /proc, which every running Linux system has.
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::copy(&bin, root.join("usr/local/bin/agent-bootstrap")).unwrap();
    runs_inside(&w, &root);
}

/// A copy of the Debian 11 (bullseye, glibc 2.31) `minbase` root (no ca-certificates, no procps,
/// no systemd: a minimal image) with the static binary in it: debootstrap, cached outside the
/// clone (scripts/debian-root.sh); each test gets a copy of its own. `None` (after `skip`) where
/// it cannot be had.
#[cfg(target_arch = "x86_64")]
fn debian_11_root(w: &World) -> Option<PathBuf> {
    let Some(bin) = static_bin(X64) else {
        skip("no static x86_64 build (scripts/check-static.sh builds it)");
        return None;
    };
    if tool("debootstrap").is_none() && !Path::new("/usr/sbin/debootstrap").exists() {
        skip("debootstrap is not installed (scripts/cross-setup.sh)");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-root.sh");
    let out = Command::new(&script).arg("bullseye").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cached = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let os_release = std::fs::read_to_string(cached.join("etc/os-release")).unwrap();
    assert!(os_release.contains("VERSION_ID=\"11\""), "{os_release}");
    let root = w.dir.path().join("bullseye");
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&cached)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(&bin, root.join("usr/local/bin/agent-bootstrap")).unwrap();
    Some(root)
}

/// Test 1 of the real-machines issue, Debian 11 (glibc 2.31, older than the 2.34 a glibc build
/// of this tool needs).
#[cfg(target_arch = "x86_64")]
#[test]
fn the_static_x86_64_binary_runs_in_debian_11() {
    let w = World::new();
    let Some(root) = debian_11_root(&w) else {
        return;
    };
    runs_inside(&w, &root);
}

/// The images people actually use, for real: a Debian 11 `minbase` root is what a minimal or
/// hardened image is (no CA certificates, no systemd running, no libicu), and each missing
/// piece gets its message and exit code from the static binary chrooted there, with nothing
/// registered and nothing put in place; `doctor` reports the machine first.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_minimal_debian_11_root_gets_a_clear_answer_for_each_missing_piece() {
    let _account = shared_agent_account();
    let w = World::with(|c| c.tls = true);
    let Some(root) = debian_11_root(&w) else {
        return;
    };
    assert!(
        !root.join("etc/ssl/certs").exists(),
        "minbase has no ca-certificates"
    );
    let dir = "/opt/azure-pipelines-agent";
    let org = w.org_url();
    let tls_org = w.sim.tls_org_url();
    // No unit dir of the tests': this root runs no systemd, as the machine says.
    let run = |args: &[&str]| {
        let mut cmd = chroot_command(&w, &root, args);
        cmd.env_remove("AGENT_BOOTSTRAP_UNIT_DIR")
            .env_remove("SSL_CERT_FILE");
        w.run_cmd(cmd)
    };
    let install = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "install",
            "--url",
            url,
            "--agent-dir",
            dir,
            "--agent-name",
            "minimal",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };

    // doctor: the machine, then the organization over plain http (no CA needed).
    let d = run(&["doctor", "--url", &org, "--agent-dir", dir]);
    assert!(
        d.stdout.contains("machine checks:")
            && d.stdout.contains("ok     agent tools")
            && d.stdout.contains("ok     account")
            && d.stdout.contains("CA certificates: NONE"),
        "{}\n{}",
        d.stdout,
        d.stderr
    );
    d.assert_code(0);

    // A service where systemd is not running: refused before anything is contacted.
    let before = w.requests().len();
    let r = install(&org, &[]);
    r.assert_code(2);
    assert!(
        r.stderr.contains("systemd is not running") && r.stderr.contains("--no-service"),
        "{}",
        r.stderr
    );
    assert_eq!(w.requests().len(), before, "nothing contacted");

    // https with no CA certificate on the machine: the package that fills the store, exit 4.
    let r = install(&tls_org, &["--no-service"]);
    r.assert_code(4);
    assert!(
        r.stderr.contains("no CA certificates")
            && r.stderr.contains("apt-get install -y ca-certificates"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    // Plain http: the agent's own dependency check, as its config.sh makes it, finds no libicu
    // (Debian 11's is libicu67), before anything is registered.
    let r = install(&org, &["--no-service"]);
    r.assert_code(6);
    assert!(
        r.stderr.contains("libicu") && r.stderr.contains("apt-get install -y libicu67"),
        "{}",
        r.stderr
    );

    // Without ldd (config.sh stops on it): the package that ships it.
    std::fs::remove_file(root.join("usr/bin/ldd")).unwrap();
    let r = install(&org, &["--no-service"]);
    r.assert_code(6);
    assert!(
        r.stderr.contains("ldd is not installed")
            && r.stderr.contains("apt-get install -y libc-bin"),
        "{}",
        r.stderr
    );
    let d = run(&["doctor", "--url", &org, "--agent-dir", dir]);
    d.assert_code(6);
    assert!(d.stdout.contains("FAILED agent tools"), "{}", d.stdout);

    assert!(w.server_agents(1).is_empty(), "nothing registered");
    let agent_dir = root.join(dir.trim_start_matches('/'));
    assert!(
        !agent_dir.join(".agent").exists() && !agent_dir.join("config.sh").exists(),
        "nothing put in place"
    );
}
