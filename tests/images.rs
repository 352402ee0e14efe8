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

/// A machine without libicu, as `ldconfig -NXv` shows it (a fake on PATH: this machine has it),
/// and an `apt-get` that "installs" it: afterwards `ldconfig` lists it. Returns the directory.
fn without_libicu(w: &World) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = w.dir.path().join("no-icu-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = bin.join("icu-installed");
    let ldconfig = format!(
        "#!/bin/sh\necho '/lib/x86_64-linux-gnu:'\necho '\tlibz.so.1 -> libz.so.1.2.13'\n\
         [ -e '{m}' ] && echo '\tlibicuuc.so.72 -> libicuuc.so.72.1'\nexit 0\n",
        m = marker.display()
    );
    let apt = format!(
        "#!/bin/sh\necho \"$(id -u) $*\" >> '{log}'\ntouch '{m}'\n",
        log = bin.join("apt-get.log").display(),
        m = marker.display()
    );
    for (name, text) in [("ldconfig", ldconfig), ("apt-get", apt)] {
        std::fs::write(bin.join(name), text).unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn missing_agent_dependencies_stop_before_anything_is_registered() {
    let w = World::new();
    let bin = without_libicu(&w);
    let mut cmd = w.install_command(&[]);
    World::prepend_path(&mut cmd, &bin);
    let run = w.run_cmd(cmd);
    run.assert_code(6);
    assert!(
        run.stderr.contains("libicu") && run.stderr.contains("apt-get install"),
        "{}",
        run.stderr
    );
    assert!(w.server_agents(1).is_empty(), "nothing registered");
    assert!(
        w.sim.state().listener_reports.is_empty(),
        "config.sh never ran"
    );
    assert!(
        !w.agent_dir().join("config.sh").exists(),
        "nothing put in place"
    );
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );

    // --install-dependencies: the package's own script, as root, from the verified extraction.
    let mut cmd = w.install_command(&["--install-dependencies"]);
    World::prepend_path(&mut cmd, &bin);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let log = std::fs::read_to_string(bin.join("apt-get.log")).unwrap();
    assert_eq!(log.trim(), "0 install -y libicu72", "run once, as root");
    assert!(
        run.stderr.contains("Finish Install Dependencies"),
        "{}",
        run.stderr
    );
    assert_eq!(w.server_agents(1).len(), 1);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&w.saved_settings_files()[0]).unwrap()).unwrap();
    assert_eq!(
        saved["install_dependencies"], true,
        "saved for a reinstall at boot"
    );
}

#[test]
fn the_fake_config_sh_stops_on_a_missing_libicu_as_the_real_one_does() {
    let w = World::new();
    let bin = without_libicu(&w);
    let dir = w.dir.path().join("pkg");
    w.extract_package_into(&dir);
    let out = std::process::Command::new(dir.join("config.sh"))
        .args(["--unattended"])
        .current_dir(&dir)
        .env("AGENT_ALLOW_RUNASROOT", "1")
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", bin.display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Libicu's dependencies is missing for Dotnet Core 6.0"),
        "{text}"
    );
}

#[test]
fn a_named_platform_wins_over_the_machines_and_is_kept_for_boot() {
    // A machine whose arm64 kernel runs this x86_64 binary emulated, or an image built elsewhere:
    // the user names the package's platform.
    let w = World::with(|c| c.package.platform = "linux-arm64".into());
    let run = w.install(&["--platform", "linux-arm64"]);
    run.assert_code(0);
    let asked: Vec<String> = w
        .requests()
        .iter()
        .filter(|r| r.path.contains("/packages/agent"))
        .map(|r| r.query.clone())
        .collect();
    assert!(
        !asked.is_empty() && asked.iter().all(|p| p.contains("platform=linux-arm64")),
        "{asked:?}"
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&w.saved_settings_files()[0]).unwrap()).unwrap();
    assert_eq!(saved["platform"], "linux-arm64");
    // Reinstalled at boot (deleted on the server): the same platform.
    w.sim.state().agents.clear();
    w.reconcile().assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);

    for (bad, says) in [
        ("linux-x86", "not one of the agent's platforms"),
        ("win-x64", "not a platform of this machine's kind"),
    ] {
        let run = w.install(&["--platform", bad, "--dry-run"]);
        run.assert_code(2);
        assert!(
            run.stderr.contains("--platform") && run.stderr.contains(says),
            "{bad}: {}",
            run.stderr
        );
    }
}

/// A machine whose system trust store is empty (Debian minbase, `*-slim` containers, hardened
/// images without `ca-certificates`; `SSL_CERT_FILE`/`SSL_CERT_DIR` point the platform verifier at an
/// empty bundle here): an https organization stops with exit 4, the message says the machine has no
/// CA certificates and gives the distribution's command, and nothing is registered or written;
/// `doctor` says so before; a loopback http organization needs no CA and installs.
#[test]
fn an_empty_trust_store_is_named_with_the_command_that_fills_it() {
    let w = World::with(|c| c.tls = true);
    let store = w.dir.path().join("empty-store");
    std::fs::create_dir_all(&store).unwrap();
    let bundle = store.join("bundle.pem");
    std::fs::write(&bundle, "").unwrap();
    let no_store = |cmd: &mut std::process::Command| {
        cmd.env("SSL_CERT_FILE", &bundle)
            .env("SSL_CERT_DIR", &store);
    };
    let url = w.sim.tls_org_url();
    let dir = w.agent_dir();
    let args = [
        "install",
        "--url",
        url.as_str(),
        "--agent-dir",
        dir.to_str().unwrap(),
        "--agent-name",
        "test-agent",
    ];
    let mut cmd = w.command(&args);
    no_store(&mut cmd);
    let run = w.run_cmd(cmd);
    run.assert_code(4);
    assert!(
        run.stderr.contains("this machine has no CA certificates")
            && run.stderr.contains("apt-get install -y ca-certificates")
            && run.stderr.contains("--ca-file"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(w.server_agents(1).is_empty());
    assert!(!dir.join(".agent").exists());

    let mut cmd = w.command(&["doctor", "--url", url.as_str(), "--pool", "Default"]);
    no_store(&mut cmd);
    let run = w.run_cmd(cmd);
    assert!(
        run.stdout.contains(
            "CA certificates: NONE in the system store: this machine has no CA certificates"
        ),
        "{}",
        run.stdout
    );

    // The same machine, a loopback http organization: no TLS, no CA needed.
    let mut cmd = w.install_command(&[]);
    no_store(&mut cmd);
    w.run_cmd(cmd).assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);
}

/// A BusyBox system (Alpine) has no `useradd`: the agent account is made with BusyBox's
/// `addgroup -S` and `adduser -S -D` (here scripts that record their arguments and make the
/// account with the real tools, on a PATH without `/usr/sbin`), and the install completes.
#[test]
fn without_useradd_the_account_is_made_with_busybox_adduser() {
    let w = World::new();
    let bin = w.dir.path().join("busybox-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = w.dir.path().join("busybox.log");
    let script = |body: &str| format!("#!/bin/sh\necho \"$0 $*\" >> {}\n{body}\n", log.display());
    let write = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, script(body)).unwrap();
        azure_sim::make_executable(&p).unwrap();
    };
    write(
        "addgroup",
        r#"for a; do n=$a; done; /usr/sbin/groupadd --system "$n""#,
    );
    write(
        "adduser",
        r#"for a; do n=$a; done; /usr/sbin/useradd --system --create-home -g "$n" "$n""#,
    );
    let mut cmd = w.install_command(&[]);
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        bin.display(),
        w.sim.systemd_dir().join("bin").display()
    );
    cmd.env("PATH", path);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(&format!("addgroup -S {}", w.user))
            && calls.contains(&format!(
                "adduser -S -D -h /home/{u} -s /bin/sh -G {u} -g Azure Pipelines agent {u}",
                u = w.user
            )),
        "{calls}"
    );
    assert_eq!(w.server_agents(1).len(), 1);
}

/// A container or chroot without systemd: a service cannot be installed, and install says so
/// before it contacts anything (it used to register the agent and leave it stopped), naming
/// `run` and --no-service; with --no-service it installs.
#[test]
fn without_systemd_a_service_install_is_refused_before_anything_is_contacted() {
    let w = World::new();
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut cmd = w.install_command(extra);
        cmd.env_remove("AGENT_BOOTSTRAP_UNIT_DIR");
        let run = w.run_cmd(cmd);
        run.assert_code(2);
        assert!(
            run.stderr.contains("systemd is not running")
                && run.stderr.contains("agent-bootstrap run")
                && run.stderr.contains("--no-service"),
            "{}",
            run.stderr
        );
        assert!(w.requests().is_empty(), "{:?}", w.requests());
        assert!(!w.agent_dir().exists());
    }
    let mut cmd = w.install_command(&["--no-service"]);
    cmd.env_remove("AGENT_BOOTSTRAP_UNIT_DIR");
    w.run_cmd(cmd).assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);
}

/// Kubernetes `readOnlyRootFilesystem` and immutable images: a read-only state dir, package cache
/// or agent dir, and an agent dir on a `noexec` file system, are each named with the mount point
/// and the setting that moves it, exit 2, before anything is contacted or written; `doctor`
/// finds the same. With the place writable, the same install completes.
#[test]
fn read_only_and_noexec_file_systems_are_named_before_anything_is_contacted() {
    let w = World::new();
    let ro = w.dir.path().join("ro");
    let noexec = w.dir.path().join("noexec");
    let cases: [(&str, &std::path::Path, &str, &str, &str); 4] = [
        (
            "AGENT_BOOTSTRAP_STATE_DIR",
            &ro,
            "ro,mode=0755",
            "the state dir",
            "read-only file system",
        ),
        (
            "AGENT_BOOTSTRAP_CACHE_DIR",
            &ro,
            "ro,mode=0755",
            "the package cache",
            "read-only file system",
        ),
        (
            "--agent-dir",
            &ro,
            "ro,mode=0755",
            "the agent dir",
            "read-only file system",
        ),
        (
            "--agent-dir",
            &noexec,
            "noexec,mode=0755",
            "the agent dir",
            "mounted noexec",
        ),
    ];
    for (setting, mount, opts, what, problem) in cases {
        let place = mount.join("sub");
        let mut cmd = if setting == "--agent-dir" {
            w.install_command(&["--agent-dir", place.to_str().unwrap()])
        } else {
            let mut c = w.install_command(&[]);
            c.env(setting, &place);
            c
        };
        cmd.env("RUST_LOG", "off");
        let run = w.run_cmd(with_tmpfs(&cmd, &[(mount, opts)]));
        run.assert_code(2);
        let want = format!("{what} {} is on a", place.display());
        assert!(
            run.stderr.contains(&want)
                && run.stderr.contains(problem)
                && run.stderr.contains(&format!("at {}", mount.display()))
                && run.stderr.contains(setting),
            "{setting}: {}",
            run.stderr
        );
        assert!(w.requests().is_empty(), "{setting}: {:?}", w.requests());
        assert!(w.server_agents(1).is_empty());
    }

    // doctor names it too, among the machine checks, and exits as install would.
    let place = noexec.join("agent");
    let cmd = w.command(&[
        "doctor",
        "--url",
        &w.org_url(),
        "--agent-dir",
        place.to_str().unwrap(),
    ]);
    let run = w.run_cmd(with_tmpfs(&cmd, &[(&noexec, "noexec,mode=0755")]));
    run.assert_code(2);
    assert!(
        run.stdout.contains("machine checks:")
            && run.stdout.contains("FAILED file systems")
            && run.stdout.contains("mounted noexec")
            && run.stdout.contains("ok     agent tools")
            && run.stdout.contains("ok     account"),
        "{}",
        run.stdout
    );

    // The same on a file system mounted with exec: installed.
    let cmd = w.install_command(&["--agent-dir", place.to_str().unwrap()]);
    let run = w.run_cmd(with_tmpfs(&cmd, &[(&noexec, "exec,mode=0755")]));
    run.assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);
}

/// Root in a bare environment (cloud-init's runcmd, a custom-script extension, `env -i`): no
/// HOME, the C locale, and a TMPDIR mounted noexec (a hardened /tmp) change nothing: installed.
#[test]
fn no_home_the_c_locale_and_a_noexec_tmp_change_nothing() {
    let w = World::new();
    let tmp = w.dir.path().join("tmp");
    let mut cmd = w.install_command(&[]);
    cmd.env_remove("HOME")
        .env_remove("LANG")
        .env_remove("LANGUAGE")
        .env("LC_ALL", "C")
        .env("TMPDIR", &tmp);
    let run = w.run_cmd(with_tmpfs(&cmd, &[(&tmp, "noexec,mode=1777")]));
    run.assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);
    assert!(w.agent_dir().join(".agent").exists());
}
