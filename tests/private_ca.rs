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
