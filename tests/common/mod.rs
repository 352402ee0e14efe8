//! The test world: a simulated Azure on loopback, a private directory tree, and the real
//! `agent-bootstrap` binary run against them, plus the checks every test makes (no token anywhere).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use azure_sim::{SimConfig, Simulator};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_agent-bootstrap");
/// The agent's unit for `test-agent` in pool `Default` of the simulator (host 127.0.0.1).
pub(crate) const UNIT: &str = "vsts.agent.127.Default.test\\x2dagent.service";

/// The simulator program (`examples/azure-sim.rs`, built by `cargo test` with the tests). Built
/// here when a single test target was asked for (`cargo test --test install` builds no examples).
fn sim_bin() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        // target/<profile>/deps/<test> → target/<profile>/examples/azure-sim
        let profile_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_owned();
        let exe = profile_dir.join("examples").join("azure-sim");
        if !exe.is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .args(["build", "--quiet", "--example", "azure-sim"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap()
                .success();
            assert!(ok && exe.is_file(), "could not build the simulator");
        }
        exe
    })
    .clone()
}

/// The tests' root: world-traversable, because the agent runs as an unprivileged user. The
/// binaries an earlier test process copied here (`bin-<pid>`, a quarter gigabyte each in a debug
/// build) are deleted once that process is gone, so repeated runs do not fill the disk.
fn tests_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("agent-bootstrap-tests");
        std::fs::create_dir_all(&root).unwrap();
        delete_stale_users();
        set_mode(&root, 0o755);
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("bin-")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        root
    })
    .clone()
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The simulator binary, copied where the agent user can execute it (the build tree may be under
/// a directory it cannot enter).
fn listener_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = tests_root().join(format!("bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let dest = dir.join("azure-sim");
        std::fs::copy(sim_bin(), &dest).unwrap();
        set_mode(&dest, 0o755);
        dest
    })
    .clone()
}

/// The agent-bootstrap binary, copied where an unprivileged user can execute it.
pub(crate) fn bin_for_any_user() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = listener_exe().parent().unwrap().to_owned();
        let dest = dir.join("agent-bootstrap");
        std::fs::copy(BIN, &dest).unwrap();
        set_mode(&dest, 0o755);
        dest
    })
    .clone()
}

pub(crate) struct World {
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    /// The dedicated agent account install creates for this world (`azpt<pid>x<n>`): configuring
    /// ends every process of the agent's account, so parallel tests must not share one.
    pub user: String,
}

thread_local! {
    /// The agent account of the world the current test ran a command on last ([`agent_user`]).
    static CURRENT_USER: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A fresh agent account name for a world of this test process.
fn next_user_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("azpt{}x{n}", std::process::id())
}

/// Deletes an agent account a world made (its processes first), quietly.
fn delete_user(name: &str) {
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        return;
    }
    let _ = Command::new("pkill").args(["-KILL", "-U", name]).output();
    let _ = Command::new("userdel").args(["--remove", name]).output();
}

/// Accounts left by test processes that are gone (killed before their worlds were dropped).
fn delete_stale_users() {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return;
    };
    for name in passwd.lines().filter_map(|l| l.split(':').next()) {
        let Some(pid) = name
            .strip_prefix("azpt")
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            delete_user(name);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        delete_user(&self.user);
    }
}

#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub(crate) fn of(out: std::process::Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl World {
    pub(crate) fn new() -> Self {
        Self::with(|_| {})
    }

    pub(crate) fn with(edit: impl FnOnce(&mut SimConfig)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("w-")
            .tempdir_in(tests_root())
            .unwrap();
        set_mode(dir.path(), 0o755);
        let mut config = SimConfig::standard(&listener_exe(), &dir.path().join("sim"));
        std::fs::create_dir_all(dir.path().join("sim")).unwrap();
        edit(&mut config);
        let sim = Simulator::start(config, 0).unwrap();
        let user = next_user_name();
        make_ca_store(dir.path());
        Self { sim, dir, user }
    }

    /// The scratch system trust store every command of this world uses instead of the machine's
    /// (`AGENT_BOOTSTRAP_TEST_CA_STORE`): a root laid out like Debian's, with
    /// `usr/share/ca-certificates/distribution.pem` standing for the distribution's certificates.
    pub(crate) fn ca_store(&self) -> PathBuf {
        self.dir.path().join("ca-store")
    }

    /// Where the fake `update-ca-certificates` and `update-ca-trust` are (first on `PATH`).
    pub(crate) fn ca_bin(&self) -> PathBuf {
        self.dir.path().join("ca-bin")
    }

    /// Puts a program first on the `PATH` of every command of this world (beside the fake CA-store
    /// tools), replacing the machine's own for these commands.
    pub(crate) fn fake_tool(&self, name: &str, script: &str) -> PathBuf {
        let path = self.ca_bin().join(name);
        std::fs::write(&path, script).unwrap();
        set_mode(&path, 0o755);
        path
    }

    /// The bundle the fake `update-ca-certificates` builds: what OpenSSL, and so the agent,
    /// trusts on this simulated machine (`SSL_CERT_FILE` for every command of this world).
    pub(crate) fn ca_bundle(&self) -> PathBuf {
        self.ca_store().join("etc/ssl/certs/ca-certificates.crt")
    }

    /// The calls the fake CA-store tools got, one per line (`update-ca-certificates`,
    /// `update-ca-trust extract`).
    pub(crate) fn ca_tool_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.ca_store().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The PEM certificates now in the scratch store's bundle, as written (one string each).
    pub(crate) fn ca_bundle_certs(&self) -> Vec<String> {
        pem_blocks(&std::fs::read_to_string(self.ca_bundle()).unwrap_or_default())
    }

    /// This world's agent account, created now as install would create it (for attacks staged
    /// before the first install), and made the current one.
    pub(crate) fn agent_account(&self) -> nix::unistd::User {
        if nix::unistd::User::from_name(&self.user).unwrap().is_none() {
            let home = format!("/home/{}", self.user);
            let ok = Command::new("useradd")
                .args([
                    "--system",
                    "--create-home",
                    "--home-dir",
                    &home,
                    "--shell",
                    "/bin/bash",
                ])
                .arg(&self.user)
                .status()
                .unwrap()
                .success();
            assert!(ok, "useradd {}", self.user);
        }
        self.make_current();
        agent_user()
    }

    /// Makes this world's account the one [`agent_user`] and [`as_agent_user`] mean (the world
    /// that ran a command last, when a test has two).
    fn make_current(&self) {
        CURRENT_USER.with(|u| *u.borrow_mut() = Some(self.user.clone()));
    }

    pub(crate) fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A fake `az` (the simulator program named `az`) in a directory of its own, configured to
    /// use this world's IMDS; returns that directory (for `PATH`) and the `AZURE_CONFIG_DIR`.
    pub(crate) fn fake_az(&self) -> (PathBuf, PathBuf) {
        let bin = self.dir.path().join("az-bin");
        let config = self.dir.path().join("azure");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&config).unwrap();
        set_mode(&bin, 0o755);
        std::fs::copy(sim_bin(), bin.join("az")).unwrap();
        set_mode(&bin.join("az"), 0o755);
        std::fs::write(
            config.join("sim.json"),
            serde_json::json!({ "imds": self.sim.base_url() }).to_string(),
        )
        .unwrap();
        (bin, config)
    }

    /// `cmd` with `dir` first on its `PATH`.
    pub(crate) fn prepend_path(cmd: &mut Command, dir: &Path) {
        let path = cmd
            .get_envs()
            .find(|(k, _)| *k == "PATH")
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
            .unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()));
    }

    /// Where a test keeps secrets it gives the tool (PAT files, the federated token).
    pub(crate) fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    /// AKS workload identity for `cmd`, as the webhook sets it up: the service-account token in a
    /// file, the user-assigned identity's client id, the tenant, Entra at `authority`.
    pub(crate) fn workload_identity(&self, cmd: &mut Command, assertion: &str, authority: &str) {
        let secrets = self.secrets_dir();
        std::fs::create_dir_all(&secrets).unwrap();
        let file = secrets.join("azure-identity-token");
        std::fs::write(&file, assertion).unwrap();
        cmd.env("AZURE_FEDERATED_TOKEN_FILE", &file)
            .env("AZURE_CLIENT_ID", azure_sim::ids::UAMI_CLIENT)
            .env("AZURE_TENANT_ID", &self.sim.config.tenant_id)
            // The webhook's value ends with a slash.
            .env("AZURE_AUTHORITY_HOST", format!("{authority}/"));
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub(crate) fn org_url(&self) -> String {
        self.sim.org_url()
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        self.make_current();
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "AZP_URL",
            "AZP_POOL",
            "AZP_AGENT_NAME",
            "AZP_WORK",
            "RUST_LOG",
            // Identity sources other than the simulated IMDS: only tests that want one set it.
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "IMDS_ENDPOINT",
            "MSI_ENDPOINT",
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_AUTHORITY_HOST",
            "AZURE_CONFIG_DIR",
            "AZP_TOKEN",
            "AZP_TOKEN_FILE",
        ] {
            cmd.env_remove(var);
        }
        // Hermetic on an Arc-enabled host: the Arc agent is looked for here, and is not here.
        cmd.env("AGENT_BOOTSTRAP_TEST_ARC_DIR", self.dir.path().join("arc"));
        let path = format!(
            "{}:{}:{}",
            self.ca_bin().display(),
            self.sim.systemd_dir().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("NO_COLOR", "1")
            .env("AGENT_BOOTSTRAP_TEST_VIRTUAL_TIME", "1")
            .env("AGENT_BOOTSTRAP_TEST_AGENT_USER", &self.user)
            // Hermetic on machines with and without systemd: the simulated unit dir stands in.
            .env("AGENT_BOOTSTRAP_TEST_SYSTEMD", "no")
            // Hermetic on machines with and without SELinux: a test that wants it says so.
            .env("AGENT_BOOTSTRAP_TEST_SELINUX", "disabled")
            .env("AGENT_BOOTSTRAP_STATE_DIR", self.state_dir())
            .env("AGENT_BOOTSTRAP_CACHE_DIR", self.cache_dir())
            // Hermetic: the machine's trust store is never changed. The scratch store stands in
            // for it, and its bundle is what OpenSSL (so the agent) trusts here.
            .env("AGENT_BOOTSTRAP_TEST_CA_STORE", self.ca_store())
            .env("SSL_CERT_FILE", self.ca_bundle())
            .env_remove("SSL_CERT_DIR");
        for (k, v) in self.sim.client_env() {
            cmd.env(k, v);
        }
        cmd
    }

    pub(crate) fn run_cmd(&self, mut cmd: Command) -> Run {
        let run = Run::of(cmd.output().unwrap());
        self.assert_no_token_leak(&run);
        run
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.run_cmd(self.command(args))
    }

    /// `install --url <sim> --agent-dir <world>/agent --agent-name test-agent EXTRA…`, to run
    /// (EXTRA's own `--agent-dir` or `--agent-name` replaces the default).
    pub(crate) fn install_command(&self, extra: &[&str]) -> Command {
        let url = self.org_url();
        let dir = self.agent_dir();
        let mut args = vec!["install", "--url", url.as_str()];
        if !extra.contains(&"--agent-dir") {
            args.extend(["--agent-dir", dir.to_str().unwrap()]);
        }
        if !extra.contains(&"--agent-name") {
            args.extend(["--agent-name", "test-agent"]);
        }
        args.extend(extra);
        self.command(&args)
    }

    /// `install --url <sim> --agent-dir <world>/agent --agent-name test-agent EXTRA…`
    pub(crate) fn install(&self, extra: &[&str]) -> Run {
        self.run_cmd(self.install_command(extra))
    }

    /// The user `nobody`, with a home directory of its own inside the world.
    pub(crate) fn nobody_home(&self) -> (nix::unistd::User, PathBuf) {
        let user = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("nobody exists");
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
        (user, home)
    }

    /// The pool already has a `test-agent` and every update of it fails: `config.sh --replace`
    /// then loops forever, like the real listener.
    pub(crate) fn make_configure_loop(&self) {
        let mut st = self.sim.state();
        st.agents.insert(
            1,
            vec![azure_sim::ServerAgent {
                id: 77,
                name: "test-agent".into(),
                version: "4.1.0".into(),
                status: "offline".into(),
                enabled: true,
                public_key: String::new(),
                created_on: 0,
                status_changed_on: 0,
                assigned_request: None,
                system_capabilities: Default::default(),
            }],
        );
        st.next_agent_id = 78;
        st.fail_agent_update = true;
    }

    /// The verbs the fake listener ran, in order (configure, reauth, remove).
    pub(crate) fn listener_verbs(&self) -> Vec<String> {
        self.sim
            .state()
            .listener_reports
            .iter()
            .map(|r| r.verb.clone())
            .collect()
    }

    /// `reconcile --agent-dir <world>/agent`
    pub(crate) fn reconcile(&self) -> Run {
        let dir = self.agent_dir();
        self.run(&["reconcile", "--agent-dir", dir.to_str().unwrap()])
    }

    /// `status --agent-dir <world>/agent EXTRA…`
    pub(crate) fn status(&self, extra: &[&str]) -> Run {
        let dir = self.agent_dir();
        let mut args = vec!["status", "--agent-dir", dir.to_str().unwrap()];
        args.extend(extra);
        self.run(&args)
    }

    /// Where the simulated systemd keeps unit files.
    pub(crate) fn units_dir(&self) -> PathBuf {
        self.sim.systemd_dir().join("units")
    }

    pub(crate) fn unit_active(&self, unit: &str) -> bool {
        self.sim
            .systemd_dir()
            .join("state")
            .join(format!("{unit}.active"))
            .exists()
    }

    pub(crate) fn unit_enabled(&self, unit: &str) -> bool {
        self.sim
            .systemd_dir()
            .join("state")
            .join(format!("{unit}.enabled"))
            .exists()
    }

    /// The saved-settings file install wrote for the world's agent dir.
    pub(crate) fn saved_settings_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.state_dir().join("agents"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Extracts the simulator's agent package into `dir` with the system tar, as an image build or
    /// a hand-made setup would.
    pub(crate) fn extract_package_into(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("tar")
            .args([
                "-xzf",
                self.sim.package.path.to_str().unwrap(),
                "-C",
                dir.to_str().unwrap(),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tar failed");
    }

    /// The tokens the simulated identity endpoints issued, in order.
    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        self.sim.state().token_order.clone()
    }

    /// Every secret the simulated Azure handed out or accepts: tokens, PATs, Arc keys, the App
    /// Service header, the workload assertion.
    pub(crate) fn tokens(&self) -> Vec<String> {
        let st = self.sim.state();
        let mut all: Vec<String> = st.tokens.keys().cloned().collect();
        all.extend(st.pats.keys().cloned());
        all.extend(st.arc_keys.iter().cloned());
        all.push(self.sim.config.app_service_header.clone());
        all.push(self.sim.config.workload_assertion.clone());
        all
    }

    /// No issued token in our output, in any file under the world, in any argv the fake listener
    /// saw, or in the argv it was given.
    pub(crate) fn assert_no_token_leak(&self, run: &Run) {
        let tokens = self.tokens();
        for t in &tokens {
            // `token` prints the token on stdout by design; everything else must not.
            let is_token_cmd = run.stdout.trim() == t.as_str();
            assert!(
                is_token_cmd || !run.stdout.contains(t.as_str()),
                "token on stdout"
            );
            assert!(
                !run.stderr.contains(t.as_str()),
                "token on stderr:\n{}",
                run.stderr
            );
        }
        // Where the tests keep the secrets they hand the tool (a PAT file, the federated token,
        // the Arc agent's keys): those files hold them on purpose.
        // (and the fake `az`, the simulator program, which has the simulator's constants in it).
        let sources = [
            self.secrets_dir(),
            self.dir.path().join("arc/tokens"),
            self.dir.path().join("az-bin"),
        ];
        assert_not_in_files_except(self.dir.path(), &tokens, &sources);
        let leaks = self.sim.systemd_dir().join("env-leaks.log");
        assert!(
            !leaks.exists(),
            "a service step saw the token variable: {}",
            std::fs::read_to_string(&leaks).unwrap_or_default()
        );
        let state = self.sim.state();
        for r in &state.listener_reports {
            assert!(
                r.argv_leaks.is_empty(),
                "token visible in a process argv: {:?}",
                r.argv_leaks
            );
            for t in &tokens {
                assert!(!r.argv.iter().any(|a| a.contains(t.as_str())));
            }
        }
    }

    pub(crate) fn requests(&self) -> Vec<azure_sim::Request> {
        self.sim.state().requests.clone()
    }

    pub(crate) fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// IMDS token requests (with `Metadata: true`; the auto chain's probe has none).
    pub(crate) fn imds_token_requests(&self) -> Vec<azure_sim::Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/metadata/identity/oauth2/token" && r.metadata_header)
            .collect()
    }

    /// The auto chain's probes of IMDS (no `Metadata` header).
    pub(crate) fn imds_probes(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/metadata/identity/oauth2/token" && !r.metadata_header)
            .count()
    }

    pub(crate) fn downloads(&self) -> usize {
        self.count("GET", "/_download/")
    }

    pub(crate) fn systemctl_log(&self) -> String {
        std::fs::read_to_string(self.sim.systemd_dir().join("systemctl.log")).unwrap_or_default()
    }

    /// The systemctl calls that change something (queries left out).
    pub(crate) fn systemctl_changes(&self) -> Vec<String> {
        self.systemctl_log()
            .lines()
            .filter(|l| {
                !(l.starts_with("is-active") || l.starts_with("is-enabled") || l.contains("status"))
            })
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn server_agents(&self, pool: u64) -> Vec<azure_sim::ServerAgent> {
        self.sim
            .state()
            .agents
            .get(&pool)
            .cloned()
            .unwrap_or_default()
    }

    /// Directories or files left beside the agent dir by a staging area.
    pub(crate) fn staging_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("staging"))
            .collect()
    }

    pub(crate) fn cache_files(&self) -> Vec<String> {
        std::fs::read_dir(self.cache_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The `-----BEGIN CERTIFICATE-----` blocks of a PEM text, each with its base64 joined on one line.
pub(crate) fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (line, &mut cur) {
            ("-----BEGIN CERTIFICATE-----", _) => cur = Some(String::new()),
            ("-----END CERTIFICATE-----", c) => out.extend(c.take()),
            (l, Some(c)) => c.push_str(l),
            _ => {}
        }
    }
    out
}

/// The fake `update-ca-certificates` (Debian's ca-certificates, as Ubuntu and Alpine have it):
/// the bundle is rebuilt from the distribution's certificates plus every `*.crt` under
/// `/usr/local/share/ca-certificates`, all under the scratch root. A file `fail` in the root
/// makes it fail with its text, as a broken tool would, and a file `noop` makes it succeed without
/// doing anything; `calls.log` records each call.
const FAKE_UPDATE_CA_CERTIFICATES: &str = r#"#!/bin/sh
root='@ROOT@'
echo "update-ca-certificates $*" >> "$root/calls.log"
if [ -e "$root/fail" ]; then
    echo "update-ca-certificates: $(cat "$root/fail")" >&2
    exit 1
fi
if [ -e "$root/noop" ]; then
    echo "Updating certificates in /etc/ssl/certs..."
    echo "0 added, 0 removed; done."
    exit 0
fi
bundle="$root/etc/ssl/certs/ca-certificates.crt"
cat "$root/usr/share/ca-certificates/distribution.pem" > "$bundle.new" || exit 1
n=0
for f in $(find "$root/usr/local/share/ca-certificates" -name '*.crt' -type f 2>/dev/null | sort); do
    cat "$f" >> "$bundle.new"
    n=$((n + 1))
done
mv -f "$bundle.new" "$bundle"
echo "Updating certificates in /etc/ssl/certs..."
echo "$n added, 0 removed; done."
"#;

/// The fake `update-ca-trust` (p11-kit's, RHEL and Azure Linux): `extract` rebuilds
/// `/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem` from the distribution's certificates and
/// every file in `/etc/pki/ca-trust/source/anchors`.
const FAKE_UPDATE_CA_TRUST: &str = r#"#!/bin/sh
root='@ROOT@'
echo "update-ca-trust $*" >> "$root/calls.log"
if [ -e "$root/fail" ]; then
    echo "update-ca-trust: $(cat "$root/fail")" >&2
    exit 1
fi
bundle="$root/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
mkdir -p "$(dirname "$bundle")"
cat "$root/usr/share/ca-certificates/distribution.pem" > "$bundle.new" || exit 1
for f in $(find "$root/etc/pki/ca-trust/source/anchors" -type f 2>/dev/null | sort); do
    cat "$f" >> "$bundle.new"
done
mv -f "$bundle.new" "$bundle"
"#;

/// A scratch system trust store under `dir/ca-store`, laid out like Debian's and seeded with this
/// machine's certificates, and the fake tools that rebuild it in `dir/ca-bin`.
fn make_ca_store(dir: &Path) {
    let root = dir.join("ca-store");
    for d in [
        "usr/share/ca-certificates",
        "usr/local/share/ca-certificates",
        "etc/ssl/certs",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let distribution = std::fs::read("/etc/ssl/certs/ca-certificates.crt")
        .or_else(|_| std::fs::read("/etc/pki/tls/certs/ca-bundle.crt"))
        .unwrap_or_default();
    std::fs::write(
        root.join("usr/share/ca-certificates/distribution.pem"),
        &distribution,
    )
    .unwrap();
    std::fs::write(
        root.join("etc/ssl/certs/ca-certificates.crt"),
        &distribution,
    )
    .unwrap();
    let bin = dir.join("ca-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, text) in [
        ("update-ca-certificates", FAKE_UPDATE_CA_CERTIFICATES),
        ("update-ca-trust", FAKE_UPDATE_CA_TRUST),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, text.replace("@ROOT@", &root.display().to_string())).unwrap();
        set_mode(&path, 0o755);
    }
}

/// The same command, run as `user` by the copy of the binary any account can execute.
pub(crate) fn as_user(cmd: &Command, user: &nix::unistd::User) -> Command {
    let mut c = Command::new(bin_for_any_user());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    std::os::unix::process::CommandExt::uid(&mut c, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut c, user.gid.as_raw());
    c
}

/// A world with the agent installed (as root, the dedicated user, the simulated service).
pub(crate) fn installed() -> World {
    let w = World::new();
    w.install(&[]).assert_code(0);
    w
}

/// The dedicated agent user install created for the world this test made last.
pub(crate) fn agent_user() -> nix::unistd::User {
    let name = CURRENT_USER
        .with(|u| u.borrow().clone())
        .expect("a world ran a command on this thread");
    nix::unistd::User::from_name(&name)
        .unwrap()
        .unwrap_or_else(|| panic!("install created {name}"))
}

/// Runs a shell script as the agent user, the way a pipeline job would: its own uid and gid, no
/// supplementary groups, a bare environment.
pub(crate) fn as_agent_user(script: &str) -> std::process::Output {
    let user = agent_user();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &user.dir)
        .current_dir("/");
    std::os::unix::process::CommandExt::uid(&mut cmd, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut cmd, user.gid.as_raw());
    cmd.output().unwrap()
}

/// Like [`as_agent_user`], asserting the script succeeded.
pub(crate) fn as_agent_user_ok(script: &str) {
    let out = as_agent_user(script);
    assert!(
        out.status.success(),
        "as the agent user: {script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A root-owned file and directory for an attack to aim at; [`Decoy::assert_untouched`] checks
/// that nothing about them changed (owner, mode, content, entries).
pub(crate) struct Decoy {
    pub file: PathBuf,
    pub dir: PathBuf,
    snapshot: Vec<(PathBuf, u32, u32, u32, Vec<u8>)>,
}

impl Decoy {
    pub(crate) fn new(w: &World) -> Self {
        let root = w.dir.path().join("root-owned");
        let dir = root.join("etc");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        set_mode(&root, 0o755);
        set_mode(&dir, 0o755);
        let file = root.join("passwd");
        std::fs::write(&file, "root:x:0:0::/root:/bin/sh\n").unwrap();
        set_mode(&file, 0o644);
        std::fs::write(dir.join("shadow"), "root:*:1::::::\n").unwrap();
        set_mode(&dir.join("shadow"), 0o600);
        std::fs::write(dir.join("sub/x"), "x").unwrap();
        let mut d = Self {
            file,
            dir,
            snapshot: vec![],
        };
        d.snapshot = d.take();
        d
    }

    fn take(&self) -> Vec<(PathBuf, u32, u32, u32, Vec<u8>)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = vec![];
        for p in [self.file.clone(), self.dir.clone()] {
            for e in walkdir::WalkDir::new(&p).sort_by_file_name() {
                let e = e.unwrap();
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                let data = if m.is_file() {
                    std::fs::read(e.path()).unwrap()
                } else {
                    vec![]
                };
                out.push((e.path().to_owned(), m.uid(), m.gid(), m.mode(), data));
            }
        }
        out
    }

    pub(crate) fn assert_untouched(&self) {
        assert_eq!(self.take(), self.snapshot, "a root-owned file was changed");
    }
}

/// Whether any process's command line contains all of `needles`.
pub(crate) fn process_running(needles: &[&str]) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            needles.iter().all(|n| c.contains(n))
        })
    })
}

/// The waits the log announced ("retrying in 10.4s"), in seconds, in order.
pub(crate) fn retry_waits(log: &str) -> Vec<f64> {
    log.match_indices("retrying in ")
        .filter_map(|(i, m)| {
            let rest = &log[i + m.len()..];
            let end = rest.find('s')?;
            rest[..end].parse().ok()
        })
        .collect()
}

/// Reads a JSON file the agent wrote (BOM-prefixed).
pub(crate) fn read_agent_json(path: &Path) -> serde_json::Value {
    let raw = std::fs::read(path).unwrap();
    assert!(
        raw.starts_with(&[0xEF, 0xBB, 0xBF]),
        "{} has no UTF-8 BOM",
        path.display()
    );
    serde_json::from_slice(&raw[3..]).unwrap()
}

pub(crate) fn owner(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().uid()
}

pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// No file under `dir` (links not followed) contains any of `secrets`.
pub(crate) fn assert_not_in_files(dir: &Path, secrets: &[String]) {
    assert_not_in_files_except(dir, secrets, &[]);
}

/// [`assert_not_in_files`], except below the directories `sources` (where a test keeps the
/// secrets it gives the tool).
pub(crate) fn assert_not_in_files_except(dir: &Path, secrets: &[String], sources: &[PathBuf]) {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_file() || sources.iter().any(|s| entry.path().starts_with(s)) {
            continue;
        }
        let data = std::fs::read(entry.path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&data);
        for t in secrets {
            assert!(
                !text.contains(t.as_str()),
                "secret written to {}",
                entry.path().display()
            );
        }
    }
}

/// The agent version the server offers in [`offer_update`].
pub(crate) const NEW_VERSION: &str = "4.265.0";

/// The server offers agent [`NEW_VERSION`]: online agents of an older version are asked to update
/// themselves (an `AgentRefresh` message).
pub(crate) fn offer_update(w: &World) {
    let update = azure_sim::package::AgentUpdate::build(&w.sim, NEW_VERSION).unwrap();
    w.sim.state().agent_update = Some(update);
}

/// The version of the fake listener that made a report (its `--agent-version`).
pub(crate) fn listener_version(r: &azure_sim::ListenerReport) -> String {
    let at = r.argv.iter().position(|a| a == "--agent-version").unwrap();
    r.argv[at + 1].clone()
}

/// The fake listeners running for the world's agent dir: (pid, parent pid).
pub(crate) fn listeners(w: &World) -> Vec<(i32, i32)> {
    let root = format!("--root {} ", w.agent_dir().display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.contains("fake-listener") || !cmdline.contains(&root) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid …: the name may hold spaces, the last ')' ends it.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The agent's service as systemd runs its unit (`ExecStart=<root>/runsvc.sh`, `User=` the agent
/// user, `WorkingDirectory=` the root): the simulated systemctl only records, so a test that needs
/// the service's processes starts them with this. Its output is piped.
pub(crate) fn service_host(w: &World) -> std::process::Child {
    let user = agent_user();
    let dir = w.agent_dir();
    let mut cmd = Command::new(dir.join("runsvc.sh"));
    cmd.current_dir(&dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &user.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::uid(&mut cmd, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut cmd, user.gid.as_raw());
    cmd.spawn().unwrap()
}

/// Waits for `cond`, at most `secs` seconds.
pub(crate) fn wait_for_secs(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `cmd` run in a mount namespace of its own where each `(dir, options)` is a fresh tmpfs
/// mounted with those options (so nothing stays mounted after it).
pub(crate) fn with_tmpfs(
    cmd: &std::process::Command,
    mounts: &[(&std::path::Path, &str)],
) -> std::process::Command {
    let mut script = String::new();
    for (i, (dir, opts)) in mounts.iter().enumerate() {
        std::fs::create_dir_all(dir).unwrap();
        script.push_str(&format!("mount -t tmpfs -o {opts} tmpfs \"$MNT{i}\" && "));
    }
    script.push_str("exec \"$@\"");
    let mut wrapped = std::process::Command::new("unshare");
    wrapped
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    for (i, (dir, _)) in mounts.iter().enumerate() {
        wrapped.env(format!("MNT{i}"), dir);
    }
    wrapped
}
