//! A private CA (`--ca-file`) as the real agent needs it: the listener (.NET) trusts only the
//! machine's store for its own connections to Azure DevOps, and `--sslcacert` only for git and
//! tasks. So the CA goes into the system trust store, with the distribution's own tool, before
//! configure. Each world has a scratch store (`World::ca_store`), fake `update-ca-certificates` and
//! `update-ca-trust` first on `PATH`, and `SSL_CERT_FILE` naming the bundle they build: the fake
//! listener, like OpenSSL, trusts that bundle and nothing else.

#![cfg(unix)]

mod common;

use std::process::Command;

use common::*;

fn tls_world() -> World {
    World::with(|c| c.tls = true)
}

fn ca(w: &World) -> String {
    w.sim.ca_file.as_ref().unwrap().display().to_string()
}

/// The simulated agent's own `config.sh`, run by hand (as root, allowed) in an extracted package
/// against the TLS organization, with `SSL_CERT_FILE` naming `bundle`.
fn config_sh(w: &World, dir: &std::path::Path, token: &str, extra: &[&str], bundle: &str) -> Run {
    let url = w.sim.tls_org_url();
    let mut cmd = Command::new("timeout");
    cmd.arg("60").arg(dir.join("config.sh"));
    cmd.args([
        "--unattended",
        "--url",
        url.as_str(),
        "--auth",
        "pat",
        "--pool",
        "Default",
        "--agent",
        "by-hand",
        "--acceptteeeula",
    ])
    .args(extra)
    .current_dir(dir)
    .env("AGENT_ALLOW_RUNASROOT", "1")
    .env("VSTS_AGENT_INPUT_TOKEN", token)
    .env("SSL_CERT_FILE", bundle)
    .env_remove("SSL_CERT_DIR")
    .env_remove("HTTPS_PROXY")
    .env_remove("https_proxy");
    Run::of(cmd.output().unwrap())
}

/// The fake listener does what the real one does: `--sslcacert` does not make it trust a server
/// (configure stops at once with .NET's message, exit 1, nothing registered); a CA in the store
/// (`SSL_CERT_FILE`, as OpenSSL reads it) does.
#[test]
fn the_fake_listener_trusts_only_the_system_store_not_sslcacert() {
    let w = tls_world();
    let dir = w.agent_dir();
    w.extract_package_into(&dir);
    let token = w.run(&["token"]);
    token.assert_code(0);
    let token = token.stdout.trim();
    let ca = ca(&w);
    let without = w.ca_bundle().display().to_string();

    let started = std::time::Instant::now();
    let run = config_sh(&w, &dir, token, &["--sslcacert", &ca], &without);
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("The SSL connection could not be established, see inner exception."),
        "{run:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "retried"
    );
    assert!(!dir.join(".agent").exists());
    assert!(w.server_agents(1).is_empty());

    // The same CA in the store: trusted, without --sslcacert.
    let with = w.dir.path().join("with-ca.pem");
    let mut text = std::fs::read_to_string(w.ca_bundle()).unwrap();
    text.push_str(&std::fs::read_to_string(&ca).unwrap());
    std::fs::write(&with, text).unwrap();
    let run = config_sh(&w, &dir, token, &[], with.to_str().unwrap());
    run.assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1);
}

/// The test CA's certificate, as one base64 line (how [`World::ca_bundle_certs`] lists them).
fn ca_cert(w: &World) -> String {
    let blocks = pem_blocks(&std::fs::read_to_string(ca(w)).unwrap());
    assert_eq!(blocks.len(), 1);
    blocks[0].clone()
}

/// Debian's directory of local CAs in the world's scratch store.
fn anchors(w: &World) -> std::path::PathBuf {
    w.ca_store().join("usr/local/share/ca-certificates")
}

/// The files of agent-bootstrap's in it.
fn our_files(w: &World) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(anchors(w))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("agent-bootstrap-")
        })
        .collect();
    files.sort();
    files
}

fn in_store(w: &World) -> bool {
    w.ca_bundle_certs().contains(&ca_cert(w))
}

/// `install` of `test-agent` against the TLS organization, directly, with `--ca-file`.
fn install_tls(w: &World, extra: &[&str]) -> Command {
    let url = w.sim.tls_org_url();
    let dir = w.agent_dir();
    let ca = ca(w);
    let mut args = vec![
        "install",
        "--url",
        url.as_str(),
        "--agent-dir",
        dir.to_str().unwrap(),
        "--ca-file",
        ca.as_str(),
    ];
    if !extra.contains(&"--agent-name") {
        args.extend(["--agent-name", "test-agent"]);
    }
    args.extend(extra);
    w.command(&args)
}

fn remove(w: &World, dir: &std::path::Path) -> Run {
    w.run(&["remove", "--agent-dir", dir.to_str().unwrap()])
}

fn saved(w: &World, dir: &std::path::Path) -> serde_json::Value {
    let key = w
        .saved_settings_files()
        .into_iter()
        .find(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v["agent_dir"] == dir.to_str().unwrap()
        })
        .expect("saved settings");
    serde_json::from_str(&std::fs::read_to_string(key).unwrap()).unwrap()
}

/// Runs the scratch store's tool by hand, as an administrator would.
fn rebuild_store(w: &World) {
    let ok = Command::new(w.ca_bin().join("update-ca-certificates"))
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
}

#[test]
fn install_puts_the_ca_in_the_system_store_before_configure_and_remove_takes_it_out() {
    let w = tls_world();
    let ca = ca(&w);
    assert!(!in_store(&w));
    // The dry run shows the step, first, and changes nothing.
    let dry = w.run_cmd(install_tls(&w, &["--dry-run"]));
    dry.assert_code(0);
    let step = dry
        .stdout
        .lines()
        .find(|l| l.contains("into the system trust store"))
        .unwrap_or_else(|| panic!("{}", dry.stdout));
    // Before anything else changes (only the account is made before planning).
    let pos = |what: &str| dry.stdout.find(what).unwrap_or(usize::MAX);
    assert!(
        pos(step) < pos("end every process") && pos(step) < pos("download "),
        "{}",
        dry.stdout
    );
    assert!(
        step.contains("add 'CN=Simulated Corp Root CA")
            && step.contains("/usr/local/share/ca-certificates/agent-bootstrap-")
            && step.contains("then update-ca-certificates"),
        "{step}"
    );
    assert!(our_files(&w).is_empty() && w.ca_tool_calls().is_empty());

    let run = w.run_cmd(install_tls(&w, &[]));
    run.assert_code(0);

    // Added with the distribution's tool, as one file of ours, and said so, before configure.
    assert_eq!(w.ca_tool_calls(), ["update-ca-certificates "]);
    let files = our_files(&w);
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    assert!(
        file.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(".crt")
    );
    assert_eq!((owner(file), mode(file)), (0, 0o644));
    assert_eq!(
        pem_blocks(&std::fs::read_to_string(file).unwrap()),
        [ca_cert(&w)]
    );
    assert!(in_store(&w));
    let added = run
        .stderr
        .find("added the CA certificate to the system trust store")
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let configured = run.stderr.find("configuring the agent").unwrap();
    assert!(added < configured, "{}", run.stderr);
    assert!(
        run.stderr.contains("Simulated Corp Root CA"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("trusted CA:") && run.stdout.contains(&file.display().to_string()),
        "{}",
        run.stdout
    );

    // The fake listener registered over TLS, trusting the store; git still gets --sslcacert.
    assert_eq!(w.server_agents(1).len(), 1);
    let report = w
        .sim
        .state()
        .listener_reports
        .iter()
        .find(|r| r.verb == "configure")
        .cloned()
        .unwrap();
    assert!(
        report.argv.join(" ").contains(&format!("--sslcacert {ca}")),
        "{:?}",
        report.argv
    );
    assert!(
        std::fs::read_to_string(w.agent_dir().join(".certificates"))
            .unwrap()
            .contains(&ca)
    );
    let v = saved(&w, &w.agent_dir());
    assert_eq!(v["trusted_cas"][0]["file"], file.display().to_string());
    let st = w.status(&[]);
    st.assert_code(0);
    assert!(
        st.stdout.contains(&format!(
            "CN=Simulated Corp Root CA, O=agent-bootstrap tests (added to the system trust \
             store: {})",
            file.display()
        )),
        "{}",
        st.stdout
    );

    // Again: nothing to do, the store untouched.
    let again = w.run_cmd(install_tls(&w, &[]));
    again.assert_code(0);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert_eq!(w.ca_tool_calls().len(), 1);
    assert_eq!(our_files(&w), files);

    // remove takes out what install added, and runs the tool again.
    let run = remove(&w, &w.agent_dir());
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("took the CA certificate 'CN=Simulated Corp Root CA"),
        "{}",
        run.stdout
    );
    assert!(our_files(&w).is_empty());
    assert!(!in_store(&w));
    assert_eq!(w.ca_tool_calls().len(), 2);
}

#[test]
fn reconcile_keeps_the_ca_puts_it_back_and_keeps_it_when_it_registers_again() {
    let w = tls_world();
    w.run_cmd(install_tls(&w, &[])).assert_code(0);
    let files = our_files(&w);
    let recorded = |w: &World| saved(w, &w.agent_dir())["trusted_cas"][0]["file"].clone();

    // Healthy: nothing to do, the CA stays.
    w.reconcile().assert_code(0);
    assert_eq!(our_files(&w), files);
    assert!(in_store(&w));
    assert_eq!(w.ca_tool_calls().len(), 1);
    assert_eq!(recorded(&w), files[0].display().to_string());

    // Someone took it out of the store: status says so, the next reconcile puts it back.
    std::fs::remove_file(&files[0]).unwrap();
    rebuild_store(&w);
    assert!(!in_store(&w));
    let st = w.status(&["--json"]);
    st.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["trusted_cas"][0]["present"], false, "{}", st.stdout);
    let run = w.reconcile();
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("put the CA certificate back into the system trust store"),
        "{}",
        run.stdout
    );
    assert_eq!(our_files(&w), files);
    assert!(in_store(&w));

    // The agent was deleted on the server: reconcile registers it again over TLS, and the CA,
    // already in place, is kept as it is (the tool not run again).
    let calls = w.ca_tool_calls().len();
    w.sim.state().agents.clear();
    let run = w.reconcile();
    run.assert_code(0);
    assert_eq!(w.server_agents(1).len(), 1, "{}", run.stderr);
    assert_eq!(
        w.listener_verbs()
            .iter()
            .filter(|v| *v == "configure")
            .count(),
        2
    );
    assert_eq!(our_files(&w), files);
    assert!(in_store(&w));
    assert_eq!(w.ca_tool_calls().len(), calls);
    assert_eq!(recorded(&w), files[0].display().to_string());
}

#[test]
fn a_ca_the_store_already_had_is_left_alone_by_install_and_remove() {
    let w = tls_world();
    // The administrator's own file, in the store before agent-bootstrap ran.
    let admin = anchors(&w).join("corp-root.crt");
    std::fs::copy(ca(&w), &admin).unwrap();
    rebuild_store(&w);
    assert!(in_store(&w));
    let calls = w.ca_tool_calls().len();

    let run = w.run_cmd(install_tls(&w, &[]));
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("already in the system trust store; left as it is"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("trusted CA:"), "{}", run.stdout);
    assert_eq!(w.ca_tool_calls().len(), calls, "the tool ran");
    assert!(our_files(&w).is_empty());
    assert_eq!(
        saved(&w, &w.agent_dir())["trusted_cas"],
        serde_json::json!([])
    );
    assert_eq!(w.server_agents(1).len(), 1);

    remove(&w, &w.agent_dir()).assert_code(0);
    assert!(admin.is_file());
    assert!(in_store(&w));
    assert_eq!(w.ca_tool_calls().len(), calls, "the tool ran");
}

#[test]
fn two_agents_share_the_ca_and_it_goes_with_the_last() {
    let w = tls_world();
    w.run_cmd(install_tls(&w, &[])).assert_code(0);
    let second = w.dir.path().join("agent2");
    let mut cmd = install_tls(&w, &["--agent-name", "second-agent", "--no-boot"]);
    // install_tls names the world's agent dir: point this one elsewhere.
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .map(|a| {
            if a == w.agent_dir().to_str().unwrap() {
                second.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let mut other = w.command(&[]);
    other.args(&args);
    cmd = other;
    w.run_cmd(cmd).assert_code(0);
    // The file of ours was there already: adopted, not written again, the tool not run again.
    assert_eq!(w.ca_tool_calls().len(), 1);
    let files = our_files(&w);
    assert_eq!(files.len(), 1);
    assert_eq!(
        saved(&w, &second)["trusted_cas"][0]["file"],
        files[0].display().to_string()
    );

    let run = remove(&w, &w.agent_dir());
    run.assert_code(0);
    assert!(
        run.stdout.contains("kept the CA certificate"),
        "{}",
        run.stdout
    );
    assert_eq!(our_files(&w), files);
    assert!(in_store(&w));

    remove(&w, &second).assert_code(0);
    assert!(our_files(&w).is_empty());
    assert!(!in_store(&w));
}

/// A read-only bind mount over a directory, taken away when dropped.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> Result<Self, String> {
        let run = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    o.status
                        .success()
                        .then_some(())
                        .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
                })
        };
        let d = dir.to_str().unwrap();
        run(&["--bind", d, d])?;
        let ro = Self(dir.to_owned());
        run(&["-o", "remount,ro,bind", d])?;
        Ok(ro)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_ca_that_cannot_be_added_stops_the_install_before_configure() {
    let w = tls_world();
    let ca = ca(&w);
    let nothing_done = |run: &Run, why: &str| {
        run.assert_code(6);
        for want in [ca.as_str(), "fix:", "Simulated Corp Root CA", why] {
            assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
        }
        assert!(our_files(&w).is_empty(), "{:?}", our_files(&w));
        assert!(!in_store(&w));
        assert!(w.listener_verbs().is_empty(), "configure ran");
        assert!(w.server_agents(1).is_empty());
        assert!(!w.agent_dir().exists());
        assert!(w.saved_settings_files().is_empty());
    };

    // The tool fails: what was written is taken out again.
    let fail = w.ca_store().join("fail");
    std::fs::write(
        &fail,
        "cannot write /etc/ssl/certs: No space left on device",
    )
    .unwrap();
    let run = w.run_cmd(install_tls(&w, &[]));
    nothing_done(&run, "update-ca-certificates failed (exit 1)");
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    std::fs::remove_file(&fail).unwrap();

    // The tool says it worked, and the bundle does not have the CA.
    let noop = w.ca_store().join("noop");
    std::fs::write(&noop, "").unwrap();
    let run = w.run_cmd(install_tls(&w, &[]));
    nothing_done(&run, "does not hold it");
    std::fs::remove_file(&noop).unwrap();

    // No tool at all: found out before anything is contacted.
    let before = w.requests().len();
    let mut cmd = install_tls(&w, &[]);
    cmd.env(
        "PATH",
        format!(
            "{}:/usr/bin:/bin",
            w.sim.systemd_dir().join("bin").display()
        ),
    );
    let run = w.run_cmd(cmd);
    nothing_done(&run, "update-ca-certificates was not found");
    assert!(
        run.stderr.contains("ca-certificates package"),
        "{}",
        run.stderr
    );
    assert_eq!(w.requests().len(), before, "contacted something first");

    // A read-only /usr (an image's).
    match ReadOnly::mount(&anchors(&w)) {
        Ok(_ro) => {
            let run = w.run_cmd(install_tls(&w, &[]));
            nothing_done(&run, "Read-only file system");
            assert!(run.stderr.contains("image's trust store"), "{}", run.stderr);
        }
        Err(e) => println!("SKIPPED the read-only part: cannot bind-mount here: {e}"),
    }

    // Fixed: the same command works.
    w.run_cmd(install_tls(&w, &[])).assert_code(0);
    assert!(in_store(&w));
}

/// #24: a full file system where the CA goes (the distribution's tool rebuilds the whole bundle
/// there) is named, with its free space, before anything is contacted: exit 5, as every other full
/// place, not the tool's own error after the download; the same command installs once there is
/// room.
#[test]
fn a_full_trust_store_is_named_before_anything_is_contacted() {
    let w = tls_world();
    let run = w.run_cmd(with_tmpfs(
        &install_tls(&w, &[]),
        &[(&anchors(&w), "size=64k,mode=0755")],
    ));
    run.assert_code(5);
    for want in [
        "the system trust store",
        anchors(&w).to_str().unwrap(),
        "KiB free, 2048 KiB needed",
        "--ca-file",
    ] {
        assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
    }
    assert!(w.requests().is_empty(), "contacted something first");
    assert!(!w.agent_dir().exists());
    assert!(w.saved_settings_files().is_empty());
    w.run_cmd(install_tls(&w, &[])).assert_code(0);
    assert!(in_store(&w));
}

#[test]
fn without_root_a_ca_missing_from_the_store_is_refused_with_the_fix() {
    let w = tls_world();
    let (user, home) = w.nobody_home();
    let agent_dir = home.join("agent");
    let url = w.sim.tls_org_url();
    let ca = ca(&w);
    let mut cmd = w.command(&[
        "install",
        "--url",
        &url,
        "--agent-dir",
        agent_dir.to_str().unwrap(),
        "--agent-name",
        "rootless",
        "--no-service",
        "--ca-file",
        &ca,
    ]);
    cmd.env("AGENT_BOOTSTRAP_STATE_DIR", home.join("state"))
        .env("AGENT_BOOTSTRAP_CACHE_DIR", home.join("cache"))
        .env("HOME", &home)
        .env_remove("AGENT_BOOTSTRAP_UNIT_DIR");
    let run = w.run_cmd(as_user(&cmd, &user));
    run.assert_code(6);
    for want in [ca.as_str(), "only root", "update-ca-certificates", "fix:"] {
        assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
    }
    assert!(w.requests().is_empty(), "contacted something first");
    assert!(!agent_dir.exists());
}

#[test]
fn a_ca_no_longer_asked_for_is_taken_out_and_the_one_still_asked_for_stays() {
    let w = tls_world();
    w.run_cmd(install_tls(&w, &[])).assert_code(0);
    let first = our_files(&w);
    assert_eq!(first.len(), 1);

    // The company adds a second CA: the CA file now holds both (the simulator's server still
    // uses the first). The agent is configured again for the new file; the second CA is added,
    // the first kept as it is.
    let dir = w.dir.path().join("ca2");
    std::fs::create_dir(&dir).unwrap();
    let other = azure_sim::tls::make(&dir).unwrap();
    let both = dir.join("both.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(ca(&w)).unwrap()
            + &std::fs::read_to_string(&other.ca_file).unwrap(),
    )
    .unwrap();
    let mut cmd = install_tls(&w, &[]);
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .map(|a| {
            if a == ca(&w) {
                both.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let mut with_both = w.command(&[]);
    with_both.args(&args);
    cmd = with_both;
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let files = our_files(&w);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.contains(&first[0]));
    assert_eq!(
        saved(&w, &w.agent_dir())["trusted_cas"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Back to the first CA alone: the second, no longer asked for, goes.
    let run = w.run_cmd(install_tls(&w, &[]));
    run.assert_code(0);
    assert!(run.stderr.contains("no longer asked for"), "{}", run.stderr);
    assert_eq!(our_files(&w), first);
    assert!(in_store(&w));
    assert_eq!(
        w.ca_bundle_certs().len(),
        pem_blocks(
            &std::fs::read_to_string(
                w.ca_store()
                    .join("usr/share/ca-certificates/distribution.pem")
            )
            .unwrap()
        )
        .len()
            + 1
    );
}
