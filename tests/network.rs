//! Corporate networks, through the real binary: the simulator's Azure DevOps and download host
//! over TLS with a test CA made at start, and a CONNECT proxy on loopback that counts what went
//! through it, can demand credentials and can refuse. Identity endpoints (IMDS) stay on plain
//! loopback HTTP and must never reach the proxy.

#![cfg(unix)]

mod common;

use azure_sim::proxy::{ProxyConfig, ProxySim};
use common::*;

const PROXY_PASSWORD: &str = "proxy-pw-0f9e8d7c6b5a";

fn tls_world() -> World {
    World::with(|c| c.tls = true)
}

/// `install` against the TLS organization, with the proxy in `HTTPS_PROXY` and no `NO_PROXY`.
fn install_via(w: &World, proxy: &ProxySim, extra: &[&str]) -> std::process::Command {
    let url = w.sim.tls_org_url();
    let dir = w.agent_dir();
    let mut args = vec![
        "install",
        "--url",
        url.as_str(),
        "--agent-dir",
        dir.to_str().unwrap(),
        "--agent-name",
        "test-agent",
    ];
    args.extend(extra);
    let mut cmd = w.command(&args);
    cmd.env("HTTPS_PROXY", proxy.url()).env_remove("NO_PROXY");
    cmd
}

fn ca(w: &World) -> String {
    w.sim.ca_file.as_ref().unwrap().display().to_string()
}

fn tls_target(w: &World) -> String {
    w.sim.tls_addr.unwrap().to_string()
}

fn configure_report(w: &World) -> azure_sim::ListenerReport {
    w.sim
        .state()
        .listener_reports
        .iter()
        .rev()
        .find(|r| r.verb == "configure")
        .cloned()
        .expect("configure ran")
}

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim_start_matches('\u{feff}')
        .to_owned()
}

#[test]
fn everything_but_identity_goes_through_the_proxy_and_the_private_ca_is_trusted() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let ca = ca(&w);
    let run = w.run_cmd(install_via(&w, &proxy, &["--ca-file", &ca]));
    run.assert_code(0);

    // Azure DevOps, the download and the agent's own traffic: all tunnelled, all to the TLS host.
    // The tool's requests share kept-alive tunnels; the agent's configure opens its own.
    let tunnels = proxy.tunnels();
    assert!(tunnels.len() >= 2, "{tunnels:?}");
    assert!(
        tunnels
            .iter()
            .all(|t| t.target == tls_target(&w) && t.status == 200),
        "{tunnels:?}"
    );
    assert_eq!(w.downloads(), 1);
    // IMDS answered on plain loopback, never through the proxy (HTTPS_PROXY set, no NO_PROXY).
    assert!(!w.imds_token_requests().is_empty());
    let plain = w.sim.addr.to_string();
    assert!(!tunnels.iter().any(|t| t.target == plain));

    // The agent was configured for the same proxy and CA, and saved them as the real one does.
    let r = configure_report(&w);
    let argv = r.argv.join(" ");
    assert!(
        argv.contains(&format!("--proxyurl {}/", proxy.url())),
        "{argv}"
    );
    assert!(argv.contains(&format!("--sslcacert {ca}")), "{argv}");
    assert!(!argv.contains("--proxyusername"));
    assert_eq!(
        read(w.agent_dir().join(".proxy")),
        format!("{}/", proxy.url())
    );
    assert!(read(w.agent_dir().join(".certificates")).contains(&ca));
    // The agent's own calls after configure (its report) went through the proxy too.
    assert!(
        r.env_names
            .iter()
            .all(|n| n != "VSTS_AGENT_INPUT_PROXYPASSWORD")
    );

    let saved = read(w.saved_settings_files()[0].clone());
    assert!(
        saved.contains(&format!("\"proxy_url\": \"{}/\"", proxy.url())),
        "{saved}"
    );
    assert!(saved.contains(&ca));

    // Run again: nothing to do (the agent's proxy and CA match the settings).
    let before = proxy.tunnels().len();
    let again = w.run_cmd(install_via(&w, &proxy, &["--ca-file", &ca]));
    again.assert_code(0);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert_eq!(
        w.listener_verbs()
            .iter()
            .filter(|v| *v == "configure")
            .count(),
        1
    );
    assert!(
        proxy.tunnels().len() > before,
        "the rerun's Azure DevOps calls bypassed the proxy"
    );
}

#[test]
fn an_untrusted_certificate_stops_at_once_with_its_subject_and_issuer() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let started = std::time::Instant::now();
    let run = w.run_cmd(install_via(&w, &proxy, &[]));
    run.assert_code(4);
    assert!(run.stderr.contains("is not trusted"), "{}", run.stderr);
    assert!(
        run.stderr.contains("CN=dev.azure.simulated"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("CN=Simulated Corp Root CA"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--ca-file"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("retrying"),
        "retried a certificate failure: {}",
        run.stderr
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(!w.agent_dir().exists());
    assert!(w.server_agents(1).is_empty());
}

#[test]
fn a_proxy_that_wants_credentials_gets_them_and_the_password_stays_secret() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig {
        credentials: Some(("alice".into(), PROXY_PASSWORD.into())),
        refuse: false,
    })
    .unwrap();
    let ca = ca(&w);

    // Without credentials: a clear 407 naming the proxy, at once, nothing done.
    let run = w.run_cmd(install_via(&w, &proxy, &["--ca-file", &ca]));
    run.assert_code(4);
    assert!(
        run.stderr.contains("asked for credentials (HTTP 407)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&proxy.url()), "{}", run.stderr);
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    assert!(!w.agent_dir().exists());

    // With --proxy-user and the password in the environment (never argv).
    let mut cmd = install_via(
        &w,
        &proxy,
        &[
            "--ca-file",
            &ca,
            "--proxy",
            &proxy.url(),
            "--proxy-user",
            "alice",
        ],
    );
    cmd.env_remove("HTTPS_PROXY")
        .env("AGENT_BOOTSTRAP_PROXY_PASSWORD", PROXY_PASSWORD);
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let ok: Vec<_> = proxy
        .tunnels()
        .into_iter()
        .filter(|t| t.status == 200)
        .collect();
    assert!(
        ok.len() >= 2 && ok.iter().all(|t| t.user.as_deref() == Some("alice")),
        "{ok:?}"
    );

    let r = configure_report(&w);
    assert!(
        r.argv.join(" ").contains("--proxyusername alice"),
        "{:?}",
        r.argv
    );
    assert!(
        r.env_names
            .iter()
            .any(|n| n == "VSTS_AGENT_INPUT_PROXYPASSWORD")
    );
    assert!(r.argv_leaks.is_empty(), "{:?}", r.argv_leaks);
    assert!(!r.argv.iter().any(|a| a.contains(PROXY_PASSWORD)));
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(PROXY_PASSWORD));
    }
    assert_not_in_files(w.dir.path(), &[PROXY_PASSWORD.to_owned()]);
    let saved = read(w.saved_settings_files()[0].clone());
    assert!(saved.contains("\"proxy_user\": \"alice\""), "{saved}");

    // A password in --proxy itself is refused before anything (it would be in argv).
    let leaky = format!("http://alice:{PROXY_PASSWORD}@{}", proxy.addr);
    let run = w.run_cmd(install_via(&w, &proxy, &["--proxy", &leaky]));
    run.assert_code(2);
    assert!(run.stderr.contains("--proxy"), "{}", run.stderr);
    assert!(!run.stderr.contains(PROXY_PASSWORD));
}

/// Issue 17 item 12: a proxy URL with credentials in root's `HTTPS_PROXY` is used by the tool, but
/// the agent's configure (and so every job, and `env.sh`'s `.env`) gets it without the password.
#[test]
fn the_proxy_password_in_https_proxy_never_reaches_the_agents_environment() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig {
        credentials: Some(("alice".into(), PROXY_PASSWORD.into())),
        refuse: false,
    })
    .unwrap();
    let ca = ca(&w);
    let mut cmd = install_via(&w, &proxy, &["--ca-file", &ca]);
    cmd.env(
        "HTTPS_PROXY",
        format!("http://alice:{PROXY_PASSWORD}@{}", proxy.addr),
    );
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let r = configure_report(&w);
    let leaked: Vec<_> = r
        .env
        .iter()
        .filter(|(_, v)| v.contains(PROXY_PASSWORD))
        .map(|(k, _)| k.clone())
        .filter(|k| k != "VSTS_AGENT_INPUT_PROXYPASSWORD")
        .collect();
    assert!(
        leaked.is_empty(),
        "the proxy password reached configure in {leaked:?}"
    );
    let https_proxy = r
        .env
        .get("HTTPS_PROXY")
        .expect("configure still gets the proxy");
    assert!(
        https_proxy.contains(&proxy.addr.to_string()),
        "{https_proxy}"
    );
    assert!(!https_proxy.contains(PROXY_PASSWORD), "{https_proxy}");
}

#[test]
fn a_proxy_that_refuses_connect_is_named_at_once() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig {
        credentials: None,
        refuse: true,
    })
    .unwrap();
    let ca = ca(&w);
    let run = w.run_cmd(install_via(&w, &proxy, &["--ca-file", &ca]));
    run.assert_code(4);
    assert!(
        run.stderr.contains("refused to connect to"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&proxy.url()), "{}", run.stderr);
    assert!(run.stderr.contains(&tls_target(&w)), "{}", run.stderr);
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    // The preflight's requests run at once: each asked once, none retried.
    assert!(proxy.tunnels().len() <= 3, "{:?}", proxy.tunnels());
}

#[test]
fn no_proxy_becomes_the_agents_bypass_list_and_reconcile_keeps_the_proxy_in_step() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let ca = ca(&w);
    let mut cmd = install_via(&w, &proxy, &["--ca-file", &ca]);
    cmd.env("NO_PROXY", ".corp.int,10.0.0.0/8");
    w.run_cmd(cmd).assert_code(0);
    let bypass = w.agent_dir().join(".proxybypass");
    assert_eq!(
        read(bypass.clone()),
        "^[a-z][a-z0-9+.-]*://([a-z0-9-]+\\.)*corp\\.int(:[0-9]+)?$\n\
         ^[a-z][a-z0-9+.-]*://10\\.[0-9]+\\.[0-9]+\\.[0-9]+(:[0-9]+)?$\n"
    );
    // Written by the agent user, not root.
    assert_eq!(owner(&bypass), agent_user().uid.as_raw());

    // NO_PROXY changes: the list is rewritten and the agent restarted, not registered again.
    let mut cmd = install_via(&w, &proxy, &["--ca-file", &ca]);
    cmd.env("NO_PROXY", "build.corp.int");
    w.run_cmd(cmd).assert_code(0);
    assert!(read(bypass.clone()).contains("build\\.corp\\.int"));
    assert!(
        w.systemctl_log().contains(&format!("restart {UNIT}")),
        "{}",
        w.systemctl_log()
    );
    assert_eq!(
        w.listener_verbs()
            .iter()
            .filter(|v| *v == "configure")
            .count(),
        1
    );

    // A job points the agent elsewhere: reconcile configures it again from the saved settings.
    as_agent_user_ok(&format!(
        "printf 'http://evil.example:8080' > {}/.proxy",
        w.agent_dir().display()
    ));
    let st = w.status(&["--json"]);
    st.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["agent_network_matches"], false, "{}", st.stdout);
    assert_eq!(v["proxy"], format!("{}/", proxy.url()));
    let mut cmd = w.command(&["reconcile", "--agent-dir", w.agent_dir().to_str().unwrap()]);
    cmd.env_remove("NO_PROXY");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        run.stderr.contains("proxy or CA settings differ"),
        "{}",
        run.stderr
    );
    assert_eq!(
        read(w.agent_dir().join(".proxy")),
        format!("{}/", proxy.url())
    );
    assert_eq!(
        w.listener_verbs()
            .iter()
            .filter(|v| *v == "configure")
            .count(),
        2
    );
}

#[test]
fn doctor_reports_the_proxy_and_ca_and_tests_each_hop() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let ca = ca(&w);
    let url = w.sim.tls_org_url();
    let mut cmd = w.command(&["doctor", "--url", &url, "--ca-file", &ca, "--json"]);
    cmd.env("HTTPS_PROXY", proxy.url()).env_remove("NO_PROXY");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["network"]["proxy"], format!("{}/", proxy.url()));
    assert_eq!(v["network"]["proxy_from"], "HTTPS_PROXY");
    assert_eq!(v["network"]["ca_file"], ca);
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "proxy",
            "connection",
            "token",
            "organization",
            "pool",
            "package",
            "download"
        ]
    );
    let connection = &v["checks"][1]["detail"];
    assert!(
        connection.as_str().unwrap().contains("through the proxy"),
        "{connection}"
    );

    // Without the CA: the connection hop fails with the certificate's names, exit 4.
    let mut cmd = w.command(&["doctor", "--url", &url]);
    cmd.env("HTTPS_PROXY", proxy.url()).env_remove("NO_PROXY");
    let run = w.run_cmd(cmd);
    run.assert_code(4);
    assert!(run.stdout.contains("FAILED connection"), "{}", run.stdout);
    assert!(run.stdout.contains("--ca-file"), "{}", run.stdout);
}

#[test]
fn entra_goes_through_the_proxy_and_a_new_proxy_reconfigures_the_agent() {
    let w = tls_world();
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let ca = ca(&w);

    // Workload identity: the token exchange with Entra is internet traffic, so it is tunnelled.
    let mut cmd = w.command(&["token", "--ca-file", &ca]);
    cmd.env("HTTPS_PROXY", proxy.url()).env_remove("NO_PROXY");
    let assertion = w.sim.config.workload_assertion.clone();
    w.workload_identity(&mut cmd, &assertion, &format!("https://{}", tls_target(&w)));
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    assert!(
        run.stderr.contains("identity source: workload"),
        "{}",
        run.stderr
    );
    assert_eq!(proxy.tunnels().len(), 1, "{:?}", proxy.tunnels());
    assert_eq!(proxy.tunnels()[0].target, tls_target(&w));

    // Installed behind one proxy; the company moves to another: install configures the agent
    // again for it (same registration), and the agent's own traffic follows.
    w.run_cmd(install_via(&w, &proxy, &["--ca-file", &ca]))
        .assert_code(0);
    let id = w.server_agents(1)[0].id;
    let other = ProxySim::start(ProxyConfig::default()).unwrap();
    let run = w.run_cmd(install_via(&w, &other, &["--ca-file", &ca]));
    run.assert_code(0);
    assert!(
        run.stderr.contains("proxy or CA settings differ"),
        "{}",
        run.stderr
    );
    assert_eq!(
        read(w.agent_dir().join(".proxy")),
        format!("{}/", other.url())
    );
    assert_eq!(w.server_agents(1).len(), 1);
    assert_eq!(w.server_agents(1)[0].id, id);
    assert!(!other.tunnels().is_empty());
    let saved = read(w.saved_settings_files()[0].clone());
    assert!(saved.contains(&other.url()), "{saved}");
}

#[test]
fn root_refuses_a_ca_file_the_agent_user_could_change() {
    // Performed as the agent user: a CA file in a directory that account owns. Root would trust
    // whatever it puts there with the token at the next boot.
    let w = tls_world();
    w.install(&["--no-boot"]).assert_code(0);
    let user = agent_user();
    let dir = w.dir.path().join("agent-owned-certs");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    as_agent_user_ok(&format!("cp {} {}/ca.pem", ca(&w), dir.display()));
    let planted = dir.join("ca.pem");
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let run = w.run_cmd(install_via(
        &w,
        &proxy,
        &["--ca-file", planted.to_str().unwrap()],
    ));
    run.assert_code(2);
    assert!(run.stderr.contains("--ca-file"), "{}", run.stderr);
    assert!(run.stderr.contains("not root"), "{}", run.stderr);
    assert!(proxy.tunnels().is_empty(), "contacted something first");
}

/// An organization reached by IP address (Azure DevOps Server often is), directly, with a
/// certificate from a CA the machine does not trust: stops at once, exit 4, naming subject,
/// issuer and `--ca-file`, both in `install` and in `doctor`.
#[test]
fn an_untrusted_certificate_for_an_ip_address_stops_at_once_direct_and_in_doctor() {
    let w = tls_world();
    let url = w.sim.tls_org_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let started = std::time::Instant::now();
    let mut cmd = w.install_command(&[]);
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == w.org_url() {
                url.clone()
            } else {
                a.clone()
            }
        })
        .collect();
    assert!(args.contains(&url), "{args:?}");
    let mut direct = std::process::Command::new(cmd.get_program());
    direct.args(&args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => direct.env(k, v),
            None => direct.env_remove(k),
        };
    }
    direct.env_remove("HTTPS_PROXY").env_remove("https_proxy");
    cmd = direct;
    let run = w.run_cmd(cmd);
    run.assert_code(4);
    for want in [
        "is not trusted",
        "CN=dev.azure.simulated",
        "CN=Simulated Corp Root CA",
        "--ca-file",
    ] {
        assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
    }
    assert!(!run.stderr.contains("retrying"), "retried: {}", run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(!w.agent_dir().exists());

    let mut doctor = w.command(&["doctor", "--url", url.as_str()]);
    doctor.env_remove("HTTPS_PROXY");
    let run = w.run_cmd(doctor);
    for want in [
        "CN=dev.azure.simulated",
        "CN=Simulated Corp Root CA",
        "--ca-file",
    ] {
        assert!(
            run.stdout.contains(want) || run.stderr.contains(want),
            "doctor misses {want}: {}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

/// A loopback `http://` organization with a proxy configured for everything (`HTTPS_PROXY`,
/// `HTTP_PROXY`, no `NO_PROXY`): the bearer token is never sent to the proxy in clear. Plain http
/// and loopback targets go direct (http is only accepted for loopback, so the token stays on this
/// machine; a proxy's loopback is not ours anyway).
#[test]
fn a_loopback_http_organization_never_sends_its_token_through_the_proxy() {
    let w = World::new();
    assert!(
        w.org_url().starts_with("http://127.0.0.1:"),
        "{}",
        w.org_url()
    );
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let mut cmd = w.install_command(&[]);
    cmd.env("HTTPS_PROXY", proxy.url())
        .env("HTTP_PROXY", proxy.url())
        .env("ALL_PROXY", proxy.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let run = w.run_cmd(cmd);
    assert!(
        w.count("GET", "connectionData") > 0,
        "the organization was not reached directly: {}",
        run.stderr
    );
    let clear = proxy.clear_requests();
    assert!(
        clear.iter().all(|r| !r.authorization),
        "a token crossed the proxy in clear: {clear:?}"
    );
    assert!(
        clear.is_empty(),
        "plain requests reached the proxy: {clear:?}"
    );
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());
}

/// #18 item 3: the agent reads `.proxybypass` while it configures (`SetupProxy` →
/// `LoadProxyBypassList`) and only the lowercase `no_proxy`; the simulator's listener is told to
/// treat loopback as remote so its bypass list is what keeps it off the proxy.
#[test]
fn the_agent_configures_with_its_bypass_list_already_in_place() {
    let w = tls_world();
    w.sim.state().listener_loopback_remote = true;
    let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
    let ca = ca(&w);
    let mut cmd = install_via(&w, &proxy, &["--ca-file", &ca]);
    // The uppercase variable only, which the agent does not read.
    cmd.env("NO_PROXY", "127.0.0.1");
    let run = w.run_cmd(cmd);
    run.assert_code(0);
    let argv = configure_report(&w).argv.join(" ");
    assert!(
        argv.contains(&format!("--proxyurl {}/", proxy.url())),
        "{argv}"
    );
    assert!(
        proxy.tunnels().is_empty(),
        "the tool or the agent's configure went through the proxy: {:?}\n{}",
        proxy.tunnels(),
        run.stderr
    );
    assert!(read(w.agent_dir().join(".proxybypass")).contains("127\\.0\\.0\\.1"));
}

/// #18 item 4: `VSTS_HTTP_PROXY` and lowercase `http_proxy` are the agent's own proxy variables
/// (`AgentKnobs.ProxyAddress`): the tool uses the same proxy, gives it to the agent as
/// `--proxyurl`, and env.sh does not freeze the variable into `.env`.
#[test]
fn the_agents_own_proxy_variables_are_the_tools_too_and_stay_out_of_env() {
    for var in ["VSTS_HTTP_PROXY", "http_proxy"] {
        let w = tls_world();
        let proxy = ProxySim::start(ProxyConfig::default()).unwrap();
        let ca = ca(&w);
        let mut cmd = install_via(&w, &proxy, &["--ca-file", &ca]);
        cmd.env_remove("HTTPS_PROXY").env(var, proxy.url());
        let run = w.run_cmd(cmd);
        run.assert_code(0);
        assert!(
            proxy.tunnels().len() >= 2,
            "{var}: the tool went direct: {:?}\n{}",
            proxy.tunnels(),
            run.stderr
        );
        let argv = configure_report(&w).argv.join(" ");
        assert!(
            argv.contains(&format!("--proxyurl {}/", proxy.url())),
            "{var}: {argv}"
        );
        let env = read(w.agent_dir().join(".env"));
        assert!(!env.contains("VSTS_HTTP_PROXY"), "{var}: {env}");
    }
}

/// #18 item 9: what `config.sh remove` deletes, plus env.sh's snapshot (`.env`, `.path`), which
/// it leaves and a later install would inherit; a proxy line env.sh froze earlier is taken out
/// at the next configure.
#[test]
fn remove_leaves_a_clean_agent_dir_and_a_frozen_proxy_line_is_taken_out() {
    let w = World::new();
    w.install(&[]).assert_code(0);
    let dir = w.agent_dir();
    assert!(dir.join(".path").is_file());
    as_agent_user_ok(&format!(
        "printf 'LANG=C.UTF-8\\nVSTS_HTTP_PROXY=http://old.proxy:3128\\n' > {}/.env",
        dir.display()
    ));
    w.install(&["--disable-update"]).assert_code(0);
    let env = read(dir.join(".env"));
    assert!(
        env.contains("LANG=C.UTF-8")
            && env.contains("agent.disableupdate=true")
            && !env.contains("old.proxy"),
        "{env}"
    );
    w.run(&["remove", "--agent-dir", dir.to_str().unwrap()])
        .assert_code(0);
    for f in [
        ".agent",
        ".credentials",
        ".credentials_rsaparams",
        ".credential_store",
        ".proxy",
        ".proxybypass",
        ".env",
        ".path",
        ".service",
    ] {
        assert!(!dir.join(f).exists(), "{f} is left");
    }
    // A new install on the same dir starts from a clean one.
    w.install(&[]).assert_code(0);
    assert!(!read(dir.join(".env")).contains("agent.disableupdate"));
}
