//! The fake `Agent.Listener`: `configure`, `remove` and `reauth` as `agent.md` §1–§4 describe the
//! real one, against the simulator.
//!
//! Faithful where agent-bootstrap depends on it: options are case-insensitive and may come from
//! `VSTS_AGENT_INPUT_<NAME>` (argv wins; flags only accept `true`/`false`); unknown options print the
//! "Unrecognized command-line input arguments" warning and are ignored; `.agent` stops configure
//! ("already configured") even with `--replace`; a taken name without `--replace` fails with the
//! real message; with `--replace` an update that fails loops forever, like the real listener; the RSA
//! key file is written before registration; `.agent`, `.credentials` and `.credentials_rsaparams`
//! carry a UTF-8 BOM (the key file mode 600); `svc.sh` is generated from the template; the token is
//! sent as HTTP Basic with user `VstsAgent`. `--deploymentgroup` and `--environment` register a
//! deployment target or an environment VM resource instead of a pool agent, and `remove`/`reauth`
//! follow what `.agent` says it is ([`registration`]). Each run reports to the simulator what it was
//! given and any process whose argv contained the token.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

mod registration;

const VALUE_OPTIONS: &[&str] = &[
    "url",
    "auth",
    "token",
    "username",
    "password",
    "clientid",
    "tenantid",
    "clientsecret",
    "pool",
    "agent",
    "work",
    "windowslogonaccount",
    "windowslogonpassword",
    "projectname",
    "collectionname",
    "deploymentgroupname",
    "deploymentgrouptags",
    "machinegroupname",
    "machinegrouptags",
    "deploymentpoolname",
    "environmentname",
    "virtualmachineresourcetags",
    "proxyurl",
    "proxyusername",
    "proxypassword",
    "sslcacert",
    "sslclientcert",
    "sslclientcertkey",
    "sslclientcertarchive",
    "sslclientcertpassword",
    "monitorsocketaddress",
    "notificationpipename",
    "notificationsocketaddress",
    "startuptype",
];
const FLAGS: &[&str] = &[
    "unattended",
    "acceptteeeula",
    "replace",
    "runasservice",
    "preventservicestart",
    "enableservicesidtypeunrestricted",
    "runasautologon",
    "overwriteautologon",
    "norestart",
    "deploymentgroup",
    "adddeploymentgrouptags",
    "machinegroup",
    "addmachinegrouptags",
    "deploymentpool",
    "environment",
    "addvirtualmachineresourcetags",
    "gituseschannel",
    "disableloguploads",
    "restreamlogstofiles",
    "alwaysextracttask",
    "usebasicauthforproxy",
    "sslskipcertvalidation",
    "once",
    "launchbrowser",
    "commit",
    "diagnostics",
    "debug",
    "help",
    "version",
];
const VERBS: &[&str] = &["configure", "remove", "run", "warmup", "reauth"];

struct Parsed {
    verb: String,
    values: BTreeMap<String, String>,
    flags: BTreeMap<String, bool>,
    /// Flags set by `VSTS_AGENT_INPUT_<NAME>` rather than argv (`--machinegroup` counts on argv
    /// only: `CommandSettings.GetDeploymentOrMachineGroup`).
    env_flags: std::collections::BTreeSet<String>,
    unrecognized: Vec<String>,
    token_from_env: bool,
}

fn parse(args: &[String]) -> Parsed {
    let mut rest = args.to_vec();
    let verb = match rest.first() {
        Some(v) if VERBS.contains(&v.to_ascii_lowercase().as_str()) => {
            rest.remove(0).to_ascii_lowercase()
        }
        _ => "run".to_owned(),
    };
    let mut values = BTreeMap::new();
    let mut flags = BTreeMap::new();
    let mut unrecognized = vec![];
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        let Some(name) = arg.strip_prefix("--") else {
            unrecognized.push(arg.clone());
            i += 1;
            continue;
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n.to_ascii_lowercase(), Some(v.to_owned())),
            None => (name.to_ascii_lowercase(), None),
        };
        if VALUE_OPTIONS.contains(&name.as_str()) {
            let value = inline.or_else(|| {
                i += 1;
                rest.get(i).cloned()
            });
            match value {
                Some(v) => {
                    values.insert(name, v);
                }
                None => unrecognized.push(arg.clone()),
            }
        } else if FLAGS.contains(&name.as_str()) {
            flags.insert(name, true);
        } else {
            unrecognized.push(arg.clone());
        }
        i += 1;
    }
    // VSTS_AGENT_INPUT_<NAME>: used only where argv has no value (CommandSettings.GetArg).
    let mut token_from_env = false;
    let mut env_flags = std::collections::BTreeSet::new();
    for (k, v) in std::env::vars() {
        let upper = k.to_ascii_uppercase();
        let Some(name) = upper.strip_prefix("VSTS_AGENT_INPUT_") else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        let v = v.trim().to_owned();
        if v.is_empty() {
            continue;
        }
        if VALUE_OPTIONS.contains(&name.as_str()) && !values.contains_key(&name) {
            if name == "token" {
                token_from_env = true;
            }
            values.insert(name, v);
        } else if FLAGS.contains(&name.as_str()) && !flags.contains_key(&name) {
            // bool.TryParse: only true/false.
            if v.eq_ignore_ascii_case("true") {
                env_flags.insert(name.clone());
                flags.insert(name, true);
            }
        }
        // The listener deletes these from its own environment.
        // SAFETY-free: the fake listener is single-threaded at this point.
    }
    Parsed {
        verb,
        values,
        flags,
        env_flags,
        unrecognized,
        token_from_env,
    }
}

fn write_bom_json(path: &Path, value: &Value, mode: Option<u32>) -> std::io::Result<()> {
    let mut text = String::from("\u{feff}");
    text.push_str(&serde_json::to_string_pretty(value).unwrap_or_default());
    fs_err::write(path, text)?;
    if let Some(m) = mode {
        crate::set_mode(path, m)?;
    }
    Ok(())
}

fn read_bom_json(path: &Path) -> Option<Value> {
    let text = fs_err::read_to_string(path).ok()?;
    serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()
}

struct Ctx {
    root: PathBuf,
    version: String,
    http: reqwest::Client,
    /// For the reports to the simulator only ([`WebSettings::report_client`]).
    report_http: reqwest::Client,
    diag: Vec<String>,
}

impl Ctx {
    fn out(&mut self, line: &str) {
        println!("{line}");
        self.diag.push(format!("[INFO] {line}"));
    }

    fn err(&mut self, line: &str) {
        eprintln!("{line}");
        self.diag.push(format!("[ERR] {line}"));
    }

    fn save_diag(&self, token: Option<&str>) {
        let dir = self.root.join("_diag");
        if fs_err::create_dir_all(&dir).is_err() {
            return;
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut text = self.diag.join("\n");
        if let Some(t) = token {
            text = text.replace(t, "***");
        }
        let _ = fs_err::write(dir.join(format!("Agent_{stamp}-utc.log")), text);
    }
}

/// Entry point: `azure-sim fake-listener --root R --agent-version V -- ARGS`.
pub fn main(args: &[String]) -> i32 {
    let mut root = PathBuf::from(".");
    let mut version = "0.0.0".to_owned();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--root" => {
                root = PathBuf::from(args.get(i + 1).cloned().unwrap_or_default());
                i += 2;
            }
            "--agent-version" => {
                version = args.get(i + 1).cloned().unwrap_or_default();
                i += 2;
            }
            // The fake package's node running `bin/AgentService.js`.
            "--agent-service" => {
                let script = PathBuf::from(args.get(i + 1).cloned().unwrap_or_default());
                let rest = args.get(i + 2..).unwrap_or_default();
                let rest = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
                return crate::agent_service::main(&script, rest);
            }
            "--" => {
                i += 1;
                break;
            }
            _ => break,
        }
    }
    let parsed = parse(&args[i..]);
    crate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Configure takes the proxy and CA from its options; every other verb from the files
    // configure saved (`VstsAgentWebProxy`, `AgentCertificateManager`).
    let mut web = if parsed.verb == "configure" {
        WebSettings::options(&parsed, &root)
    } else {
        WebSettings::saved(&root)
    };
    web.loopback_remote = rt.block_on(loopback_remote(&web, &parsed, &root));
    let mut ctx = Ctx {
        http: web.client(),
        report_http: web.report_client(),
        root,
        version,
        diag: vec![],
    };
    if let Some(ca) = web.ca.as_deref().filter(|c| !Path::new(c).is_file()) {
        ctx.err(&format!("Could not find file '{ca}'."));
        return 1;
    }
    if !parsed.unrecognized.is_empty() {
        ctx.err(&format!(
            "Unrecognized command-line input arguments: '{}'. For usage refer to: .\\config.cmd --help or ./config.sh --help",
            parsed.unrecognized.join(", ")
        ));
    }
    if parsed.flags.contains_key("version") {
        println!("{}", ctx.version);
        return 0;
    }
    if parsed.flags.contains_key("help") {
        println!("Simulated Azure Pipelines agent {}", ctx.version);
        return 0;
    }
    let token = parsed.values.get("token").cloned();
    // Where to report: known before the verb runs (remove deletes .agent).
    let report_url = parsed.values.get("url").cloned().or_else(|| {
        read_bom_json(&ctx.root.join(".agent")).and_then(|a| {
            a.get("serverUrl")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
    });
    let code = rt.block_on(async {
        let code = match parsed.verb.as_str() {
            "configure" => configure(&mut ctx, &parsed).await,
            "remove" => remove(&mut ctx, &parsed).await,
            "reauth" => reauth(&mut ctx, &parsed).await,
            _ => run(&mut ctx, &parsed).await,
        };
        report(&ctx, &parsed, args, report_url.as_deref()).await;
        code
    });
    ctx.save_diag(token.as_deref());
    code
}

/// The proxy and extra CA the listener's HTTP goes through.
#[derive(Default)]
struct WebSettings {
    proxy: Option<String>,
    user: Option<String>,
    password: Option<String>,
    ca: Option<String>,
    /// `VstsAgentWebProxy.LoadProxyBypassList`: `.proxybypass`'s lines as they are, then the
    /// lowercase `no_proxy` variable's entries with their dots escaped (`ProcessProxyByPassFromEnv`).
    bypass: Vec<regex::Regex>,
    /// A simulator switch (`State::listener_loopback_remote`): loopback is not bypassed, so tests
    /// on loopback can see the bypass list at work. The real listener always bypasses loopback.
    loopback_remote: bool,
}

/// The agent's proxy when configure names none and no `.proxy` exists: `AgentKnobs.ProxyAddress`
/// reads `VSTS_HTTP_PROXY`, then `http_proxy` (lowercase only), and takes it only when it is a
/// well-formed absolute URI (`VstsAgentWebProxy.LoadProxySetting`).
fn env_proxy() -> Option<String> {
    ["VSTS_HTTP_PROXY", "http_proxy"]
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        .map(|v| v.trim().to_owned())
        .filter(|v| reqwest::Url::parse(v).is_ok())
}

/// `UserCapabilitiesProvider` (src/Microsoft.VisualStudio.Services.Agent/Capabilities/
/// UserCapabilitiesProvider.cs): the agent root's `.capabilities`, each line with an `=` after its
/// first character a capability (name before the first `=`, the rest its value, nothing
/// trimmed), sent with the system capabilities when the agent registers (and when it starts).
fn user_capabilities(root: &Path) -> serde_json::Map<String, serde_json::Value> {
    fs_err::read_to_string(root.join(".capabilities"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| match l.find('=') {
            Some(i) if i > 0 => Some((l[..i].to_owned(), json!(l[i + 1..]))),
            _ => None,
        })
        .collect()
}

/// `LoadProxyBypassList`: `.proxybypass` (read at configure by `SetupProxy`, and at every start),
/// then `no_proxy` — only the lowercase variable (`AgentKnobs.NoProxy`) — split on `,` and `;`,
/// each entry's dots escaped unless part of `.*` or escaped already. Each becomes a
/// case-insensitive regex; one that does not compile is skipped (`AgentWebProxy.Update`).
fn bypass_list(root: &Path) -> Vec<regex::Regex> {
    let mut sources: Vec<String> = fs_err::read_to_string(root.join(".proxybypass"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if let Ok(env) = std::env::var("no_proxy") {
        for entry in env
            .split([',', ';'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let mut out = String::new();
            let chars: Vec<char> = entry.chars().collect();
            for (i, c) in chars.iter().enumerate() {
                let escaped = i > 0 && chars[i - 1] == '\\';
                let wildcard = chars.get(i + 1) == Some(&'*');
                if *c == '.' && !escaped && !wildcard {
                    out.push('\\');
                }
                out.push(*c);
            }
            sources.push(out);
        }
    }
    sources
        .iter()
        .filter_map(|s| {
            regex::RegexBuilder::new(s)
                .case_insensitive(true)
                .build()
                .ok()
        })
        .collect()
}

impl WebSettings {
    /// From configure's options (`--proxyurl`, `--proxyusername`, the password, `--sslcacert`),
    /// else the environment's proxy; the bypass list as `SetupProxy` loads it.
    fn options(parsed: &Parsed, root: &Path) -> Self {
        let get = |k: &str| parsed.values.get(k).cloned();
        Self {
            proxy: get("proxyurl").or_else(env_proxy),
            user: get("proxyusername"),
            password: get("proxypassword"),
            ca: get("sslcacert"),
            bypass: bypass_list(root),
            loopback_remote: false,
        }
    }

    /// `.proxy` (line 1), `.proxycredentials` → `.credential_store`, `.certificates` (`caCert`).
    fn saved(root: &Path) -> Self {
        let proxy = fs_err::read_to_string(root.join(".proxy"))
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
            .filter(|l| !l.is_empty());
        let (user, password) = fs_err::read_to_string(root.join(".proxycredentials"))
            .ok()
            .and_then(|key| {
                let store = read_bom_json(&root.join(".credential_store"))?;
                let entry = &store[format!("VSTS_AGENT_PROXY_{}", key.trim())];
                Some((
                    entry["userName"].as_str().map(str::to_owned),
                    entry["password"].as_str().map(unscramble),
                ))
            })
            .unwrap_or_default();
        let ca = read_bom_json(&root.join(".certificates"))
            .and_then(|c| c["caCert"].as_str().map(str::to_owned));
        Self {
            proxy: proxy.or_else(env_proxy),
            user,
            password,
            ca,
            bypass: bypass_list(root),
            loopback_remote: false,
        }
    }

    /// The listener's own HTTP client. Like the real one it trusts only the machine's store for
    /// its connections: .NET on Linux verifies through OpenSSL's default store, which
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` move when set, and `--sslcacert` is only recorded in
    /// `.certificates` for git and tasks (`AgentCertificateManager`, `VssUtil`,
    /// `HostContextExtension.CreateHttpClientHandler`: no custom roots). The platform verifier
    /// here does the same: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else the platform's store.
    fn client(&self) -> reqwest::Client {
        self.build(false)
    }

    /// The simulator's back channel (`/_sim/report`): not the agent's traffic, so it reaches the
    /// simulator whatever the listener trusts (a configure refused for its certificate still
    /// reports what it was given).
    fn report_client(&self) -> reqwest::Client {
        self.build(true)
    }

    fn build(&self, any_certificate: bool) -> reqwest::Client {
        match self.builder(any_certificate).build() {
            Ok(client) => client,
            // The machine has no CA certificates: .NET then trusts no server certificate and
            // still talks plain http (an organization on loopback), so the listener does too.
            Err(_) => {
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .expect("protocol versions")
                    .dangerous()
                    .with_custom_certificate_verifier(std::sync::Arc::new(TrustNothing(provider)))
                    .with_no_client_auth();
                self.builder(any_certificate)
                    .tls_backend_preconfigured(config)
                    .build()
                    .expect("client")
            }
        }
    }

    fn builder(&self, any_certificate: bool) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        b = match &self.proxy {
            None => b.no_proxy(),
            Some(url) => {
                // The real agent never sends a loopback request through its proxy, nor one its
                // bypass list matches (`AgentWebProxy.IsBypassed`: `uri.IsLoopback ||
                // IsMatchInBypassList(uri)`, which matches `scheme://host[:port]`, the port only
                // when it is not the scheme's default).
                let target = reqwest::Url::parse(url).expect("proxy url");
                let bypass = self.bypass.clone();
                let loopback_remote = self.loopback_remote;
                let mut p = reqwest::Proxy::custom(move |u| {
                    let loopback = match u.host() {
                        Some(url::Host::Ipv4(a)) => a.is_loopback(),
                        Some(url::Host::Ipv6(a)) => a.is_loopback(),
                        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                        None => false,
                    };
                    let host = u.host_str().unwrap_or_default();
                    let matched = match u.port() {
                        Some(port) => format!("{}://{host}:{port}", u.scheme()),
                        None => format!("{}://{host}", u.scheme()),
                    };
                    let listed = bypass.iter().any(|r| r.is_match(&matched));
                    let bypassed = (loopback && !loopback_remote) || listed;
                    (!bypassed).then(|| target.clone())
                });
                if let (Some(u), Some(pw)) = (&self.user, &self.password) {
                    p = p.basic_auth(u, pw);
                }
                b.proxy(p)
            }
        };
        if any_certificate {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        b
    }

    /// What configure saves (`SaveProxySetting`, `SaveCertificateSetting`); the password goes to
    /// the credential store, scrambled as the real one encrypts it (never in clear in a file).
    fn save(&self, root: &Path) -> std::io::Result<()> {
        if let Some(p) = &self.proxy {
            fs_err::write(root.join(".proxy"), p)?;
            if let (Some(u), Some(pw)) = (&self.user, &self.password) {
                let key = format!("{:032X}", rand::random::<u128>());
                fs_err::write(root.join(".proxycredentials"), &key)?;
                let mut store = read_bom_json(&root.join(".credential_store")).unwrap_or(json!({}));
                store[format!("VSTS_AGENT_PROXY_{key}")] =
                    json!({"userName": u, "password": scramble(pw)});
                write_bom_json(&root.join(".credential_store"), &store, Some(0o600))?;
            }
        }
        if let Some(ca) = &self.ca {
            write_bom_json(&root.join(".certificates"), &json!({"caCert": ca}), None)?;
        }
        Ok(())
    }
}

fn scramble(s: &str) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = s.bytes().map(|b| b ^ 0x5a).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unscramble(s: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>()).into_owned()
}

fn server_base(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(
        format!("{}://{}", u.scheme(), u.host_str()?)
            + &u.port().map(|p| format!(":{p}")).unwrap_or_default(),
    )
}

/// Tells the simulator what this run was given, and whether the token was visible in any argv.
async fn report(ctx: &Ctx, parsed: &Parsed, raw_args: &[String], url: Option<&str>) {
    let Some(base) = url.and_then(server_base) else {
        return;
    };
    let mut leaks = vec![];
    // The token and the proxy password: neither may be in any process's argv.
    let secrets: Vec<&String> = ["token", "proxypassword"]
        .iter()
        .filter_map(|k| parsed.values.get(*k))
        .filter(|v| v.len() >= 4)
        .collect();
    if !secrets.is_empty()
        && let Ok(entries) = fs_err::read_dir("/proc")
    {
        for e in entries.flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let mut text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if secrets.iter().any(|s| text.contains(s.as_str())) {
                for s in &secrets {
                    text = text.replace(s.as_str(), "<SECRET>");
                }
                leaks.push(format!("pid {}: {text}", e.file_name().to_string_lossy()));
            }
        }
    }
    let token = parsed.values.get("token").cloned().unwrap_or_default();
    let masked_args: Vec<String> = raw_args
        .iter()
        .map(|a| {
            if !token.is_empty() {
                a.replace(&token, "<TOKEN>")
            } else {
                a.clone()
            }
        })
        .collect();
    let body = json!({
        "verb": parsed.verb,
        "argv": masked_args,
        "uid": crate::current_uid(),
        "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        "token_from_env": parsed.token_from_env,
        "argv_leaks": leaks,
        "unrecognized": parsed.unrecognized,
        "env_names": std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        "env": std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())).collect::<BTreeMap<_, _>>(),
    });
    let _ = ctx
        .report_http
        .post(format!("{base}/_sim/report"))
        .body(body.to_string())
        .send()
        .await;
}

struct Api<'a> {
    http: &'a reqwest::Client,
    url: String,
    token: String,
}

impl Api<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method, format!("{}/{path}", self.url.trim_end_matches('/')))
            .basic_auth("VstsAgent", Some(&self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| describe(&e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `GetAgentsAsync(poolId, name)`: the agent with this name, if any.
    async fn agent_by_name(&self, pool_id: u64, name: &str) -> Result<Option<Value>, String> {
        let path = format!(
            "_apis/distributedtask/pools/{pool_id}/agents?agentName={}",
            urlencode(name)
        );
        match self.get(&path).await? {
            (200, v) => Ok(v["value"].as_array().and_then(|a| a.first().cloned())),
            (_, v) => Err(message(&v)),
        }
    }
}

/// .NET's `HttpRequestException` message for a handshake that failed (the server's certificate
/// not trusted: an `AuthenticationException` inside).
const SSL_FAILED: &str = "The SSL connection could not be established, see inner exception.";

/// A failed request as the agent would describe it: a refused certificate as .NET words it.
fn describe(e: &reqwest::Error) -> String {
    let mut chain = vec![];
    let mut tls = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let io_inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(t) = s.downcast_ref::<rustls::Error>().or(io_inner) {
            tls = Some(t.to_string());
        } else if s.to_string().starts_with("invalid peer certificate") {
            // rustls' own words, whatever wraps it on the way (hyper-util boxes it).
            tls = Some(s.to_string());
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    match tls {
        Some(t) => format!(
            "{SSL_FAILED} (The remote certificate is invalid because of errors in the \
             certificate chain: UntrustedRoot; {t})"
        ),
        None => text,
    }
}

fn message(v: &Value) -> String {
    v.get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("unknown error")
        .to_owned()
}

fn required(ctx: &mut Ctx, parsed: &Parsed, name: &str) -> Option<String> {
    let v = parsed.values.get(name).cloned();
    if v.is_none() {
        ctx.err(&format!(
            "Value cannot be null. (Parameter 'Invalid configuration provided for {name}. Terminating unattended configuration.')"
        ));
    }
    v
}

/// Connects like the real listener: connection data with the token; a refused connection is a
/// SocketException, which unattended configure retries forever (agent.md §3.3).
async fn connect(ctx: &mut Ctx, api: &Api<'_>) -> Result<(), ()> {
    ctx.out("Connecting to server ...");
    loop {
        match api.get("_apis/connectionData").await {
            Ok((200, _)) => return Ok(()),
            Ok((401 | 203, v)) => {
                let m = message(&v);
                ctx.err(&format!(
                    "VS30063: You are not authorized to access {}. {m}",
                    api.url
                ));
                return Err(());
            }
            Ok((status, v)) => {
                ctx.err(&format!(
                    "Failed to connect to the server: HTTP {status} {}",
                    message(&v)
                ));
                return Err(());
            }
            // An HttpRequestException, not a SocketException: unattended configure does not retry
            // it; `Agent.ExecuteCommand` writes its message and returns 1 (TerminatedError).
            Err(e) if e.starts_with(SSL_FAILED) => {
                ctx.err(SSL_FAILED);
                ctx.diag.push(format!("[ERR] {e}"));
                return Err(());
            }
            Err(e) => {
                ctx.err(&format!("Failed to connect: {e}. Retrying."));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn public_key() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn ensure_key(ctx: &Ctx) -> std::io::Result<String> {
    let path = ctx.root.join(".credentials_rsaparams");
    if let Some(v) = read_bom_json(&path)
        && let Some(m) = v.get("modulus").and_then(|m| m.as_str())
    {
        return Ok(m.to_owned());
    }
    let modulus = public_key();
    let d: [u8; 32] = rand::random();
    write_bom_json(
        &path,
        &json!({"ContainerName": null, "UseCng": false, "d": hex::encode(d), "dp": "", "dq": "",
                "exponent": "AQAB", "inverseQ": "", "modulus": modulus, "p": "", "q": ""}),
        Some(0o600),
    )?;
    Ok(modulus)
}

async fn configure(ctx: &mut Ctx, parsed: &Parsed) -> i32 {
    if ctx.root.join(".agent").exists() {
        ctx.err("Cannot configure the agent because it is already configured. To reconfigure the agent, run 'config.cmd remove' or './config.sh remove' first.");
        return 1;
    }
    if cfg!(unix) && !ctx.root.join("license.html").exists() {
        ctx.err("license.html is missing from the agent root");
        return 1;
    }
    let mode = match registration::Mode::of_options(parsed) {
        Ok(m) => m,
        Err(e) => {
            ctx.err(&e);
            return 1;
        }
    };
    ctx.out(">> Connect:");
    let Some(url) = required(ctx, parsed, "url") else {
        return 1;
    };
    let auth = parsed
        .values
        .get("auth")
        .map(|a| a.to_ascii_lowercase())
        .unwrap_or_else(|| "pat".into());
    if auth != "pat" {
        ctx.err(&format!(
            "Simulated agent supports only --auth pat, got '{auth}'"
        ));
        return 1;
    }
    let Some(token) = required(ctx, parsed, "token") else {
        return 1;
    };
    let agent_name = parsed
        .values
        .get("agent")
        .cloned()
        .unwrap_or_else(crate::host_name);
    let work = parsed
        .values
        .get("work")
        .cloned()
        .unwrap_or_else(|| "_work".into());
    let replace = parsed.flags.contains_key("replace");
    let api = Api {
        http: &ctx.http.clone(),
        url: url.clone(),
        token: token.clone(),
    };
    if connect(ctx, &api).await.is_err() {
        return 1;
    }
    let modulus = match ensure_key(ctx) {
        Ok(m) => m,
        Err(e) => {
            ctx.err(&format!("Failed to create the RSA key: {e}"));
            return 1;
        }
    };
    ctx.out(">> Register Agent:");
    let mut target = match registration::resolve(ctx, parsed, &api, mode).await {
        Some(t) => t,
        None => return 1,
    };
    ctx.out("Scanning for tool capabilities.");
    let capabilities = user_capabilities(&ctx.root);
    ctx.out("Connecting to the server.");
    let body = json!({"name": agent_name, "version": ctx.version,
                      "systemCapabilities": capabilities,
                      "authorization": {"publicKey": {"exponent": "AQAB", "modulus": modulus}}});
    let agent = loop {
        let existing = match registration::find(&api, &target, &agent_name).await {
            Ok(found) => found,
            Err(e) => {
                ctx.err(&e);
                return 1;
            }
        };
        match existing {
            Some(found) if replace => {
                // The real agent says so before replacing too (ConfigurationManager.cs:260); the
                // pool flow has always printed it only when it stops.
                if mode != registration::Mode::Pool {
                    ctx.out(&format!(
                        "Pool {} already contains an agent with name {agent_name}.",
                        target.pool_name().unwrap_or_default()
                    ));
                }
                match registration::replace(ctx, parsed, &api, &mut target, &found, body.clone())
                    .await
                {
                    Ok((200, v)) => {
                        ctx.out("Successfully replaced the agent");
                        break v;
                    }
                    Ok((403, v)) => {
                        ctx.err(&message(&v));
                        return 1;
                    }
                    Err(e) if mode != registration::Mode::Pool => {
                        // Tags, or the environment's pool, after the replace: unattended, fatal.
                        if !e.is_empty() {
                            ctx.err(&e);
                        }
                        return 1;
                    }
                    _ => {
                        // PR #5210: any non-timeout failure reruns the whole loop, forever.
                        ctx.err("Failed to replace the agent.  Try again or ctrl-c to quit");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            Some(_) => {
                ctx.out(&format!(
                    "Pool {} already contains an agent with name {agent_name}.",
                    target.pool_name().unwrap_or_default()
                ));
                ctx.err(&registration::exists_error(&target, &agent_name));
                return 1;
            }
            None => match registration::add(ctx, parsed, &api, &mut target, body.clone()).await {
                Ok((200, v)) => {
                    ctx.out("Successfully added the agent");
                    break v;
                }
                Ok((_, v)) => {
                    ctx.err(&message(&v));
                    return 1;
                }
                Err(e) => {
                    if !e.is_empty() {
                        ctx.err(&e);
                    }
                    return 1;
                }
            },
        }
    };
    // An environment's agent is named as its VM resource came back.
    let agent_name = target.agent_name.clone().unwrap_or(agent_name);
    let agent_id = agent["id"].as_u64().unwrap_or(0);
    let client_id = agent["authorization"]["clientId"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let base = server_base(&url).unwrap_or_default();
    let auth_url = format!("{base}/_apis/oauth2/token/{client_id}");
    if let Err(e) = write_bom_json(
        &ctx.root.join(".credentials"),
        &json!({"scheme": "OAuth", "data": {"clientId": client_id, "authorizationUrl": auth_url, "oauthEndpointUrl": auth_url}}),
        None,
    ) {
        ctx.err(&format!("Failed to save credentials: {e}"));
        return 1;
    }
    ctx.out("Testing agent connection.");
    let mut settings = json!({
        "agentId": agent_id, "agentName": agent_name,
        "serverUrl": format!("{}/", url.trim_end_matches('/')), "workFolder": work,
    });
    for (k, v) in &target.fields {
        settings[k] = v.clone();
    }
    // The service is named after the pool, else the environment.
    let collection = target.service_collection();
    if parsed.flags.contains_key("acceptteeeula") {
        settings["acceptTeeEula"] = json!(true);
    }
    if let Err(e) = write_bom_json(&ctx.root.join(".agent"), &settings, None) {
        ctx.err(&format!("Failed to save settings: {e}"));
        return 1;
    }
    // `SaveProxySetting` only when `--proxyurl` was given (`SetupVstsProxySetting`): a proxy from
    // the environment is used for configure's calls but not saved.
    let mut given = WebSettings::options(parsed, &ctx.root);
    if !parsed.values.contains_key("proxyurl") {
        given.proxy = None;
    }
    if let Err(e) = given.save(&ctx.root) {
        ctx.err(&format!("Failed to save settings: {e}"));
        return 1;
    }
    // Windows: --runAsService installs and starts the service here (agent.md §5.2).
    if cfg!(windows) {
        if parsed.flags.contains_key("runasservice") {
            let (name, display) =
                crate::naming::windows_service_name(&url, &collection, &agent_name);
            if let Err(e) = windows_service(&ctx.root, &name, &display) {
                ctx.err(&format!("Failed to install the service: {e}"));
                return 1;
            }
            ctx.out(&format!("Service {name} successfully installed"));
        }
        ctx.out("Settings Saved.");
        let _ = std::io::stdout().flush();
        return 0;
    }
    // Linux: generate svc.sh from the template.
    let systemd_dir = match ctx.http.get(format!("{base}/_sim/config")).send().await {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["systemd_dir"].as_str().map(str::to_owned)),
        Err(_) => None,
    }
    .unwrap_or_else(|| "/tmp/azure-sim-systemd".into());
    let (svc_name, svc_desc) = crate::naming::service_name(&url, &collection, &agent_name);
    if let Ok(template) = fs_err::read_to_string(ctx.root.join("bin/systemd.svc.sh.template")) {
        let script = template
            .replace("{{SvcNameVar}}", &svc_name)
            .replace("{{SvcDescription}}", &svc_desc)
            .replace("{{SimSystemdDir}}", &systemd_dir);
        let path = ctx.root.join("svc.sh");
        if fs_err::write(&path, script).is_ok() {
            let _ = crate::make_executable(&path);
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ctx.out(&format!("{stamp}: Settings Saved."));
    let _ = std::io::stdout().flush();
    0
}

/// What `WindowsServiceControlManager.ConfigureService` does, with `sc.exe`: an existing service
/// of that name is replaced, the new one starts automatically and is started, and `.service`
/// holds its name (UTF-8, no BOM). The simulated service runs Wine's own spooler, which speaks the
/// service protocol (the real one runs `bin\AgentService.exe`).
fn windows_service(root: &Path, name: &str, display: &str) -> std::io::Result<()> {
    let system32 = Path::new(&std::env::var("SystemRoot").unwrap_or_else(|_| r"C:\windows".into()))
        .join("System32");
    let sc = system32.join("sc.exe");
    let run = |args: &[&str]| std::process::Command::new(&sc).args(args).output();
    let query = run(&["query", name])?;
    if query.status.success() {
        let _ = run(&["stop", name]);
        let _ = run(&["delete", name]);
    }
    let binary = system32.join("spoolsv.exe").display().to_string();
    let created = run(&[
        "create",
        name,
        "binPath=",
        &binary,
        "start=",
        "auto",
        "DisplayName=",
        display,
    ])?;
    if !created.status.success() {
        return Err(std::io::Error::other(format!(
            "sc create: {}",
            String::from_utf8_lossy(&created.stdout)
        )));
    }
    let _ = run(&["start", name])?;
    fs_err::write(root.join(".service"), name)
}

/// `run [--once] [--startuptype T]`: online (reporting its version), then take the simulator's
/// queued jobs until SIGINT/SIGTERM (`--once`: after one job). A signal during a job abandons it, as
/// the real listener cancels it. A scripted exit code ends the run at once, without going offline (a
/// crash). An `AgentRefresh` message is a self-update (`Agent.cs` `RunAsync`, `SelfUpdater.cs`),
/// unless `agent.disableupdate` is set in the environment or `.env`: the new package is downloaded,
/// checked against its SHA-256 and unpacked into `_work/_update`, its `bin` and `externals` copied to
/// `bin.<version>` and `externals.<version>` and its root files over the root's, `_work/_update.sh`
/// rendered from its `update.sh.template` and started with `bash` (the listener's child, in its
/// process group), and the listener goes offline and exits 4 under `--once`, else 3. The script is
/// told to start `run.sh` again in the background unless `--once` or the startup type is service.
async fn run(ctx: &mut Ctx, parsed: &Parsed) -> i32 {
    let Some(settings) = read_bom_json(&ctx.root.join(".agent")) else {
        ctx.err("Agent is not configured.");
        return 1;
    };
    let Some(base) = settings["serverUrl"].as_str().and_then(server_base) else {
        ctx.err("Agent is not configured.");
        return 1;
    };
    let pool = settings["poolId"].as_u64().unwrap_or(0);
    let agent = settings["agentId"].as_u64().unwrap_or(0);
    let once = parsed.flags.get("once").copied().unwrap_or(false);
    let service = startup_type_is_service(&ctx.root, parsed);
    let update_disabled = env_or_dotenv(&ctx.root, "agent.disableupdate").is_some();
    let http = ctx.http.clone();
    let version = ctx.version.clone();
    let say = |event: &'static str| {
        let http = http.clone();
        let url = format!("{base}/_sim/listener");
        let version = version.clone();
        async move {
            let body = json!({"event": event, "pool": pool, "agent": agent, "version": version});
            match http.post(url).body(body.to_string()).send().await {
                Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            }
        }
    };
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let answer = say("online").await;
    if let Some(code) = answer["exit"].as_i64() {
        ctx.err(&format!("simulated listener exit {code}"));
        return code as i32;
    }
    ctx.out(&format!("{}: Listening for Jobs", chrono_like_now()));
    loop {
        let job = tokio::select! {
            _ = stop.changed() => None,
            _ = tokio::time::sleep(Duration::from_millis(100)) => Some(say("poll").await),
        };
        let Some(answer) = job else {
            ctx.out("Exiting...");
            say("offline").await;
            return 0;
        };
        if let Some(refresh) = answer.get("refresh") {
            if update_disabled {
                ctx.out(
                    "Auto-update handling - Refresh message received but skipping autoupdate since agent.disableupdate is set",
                );
                continue;
            }
            match self_update(ctx, &settings, refresh, !once && !service).await {
                Ok(()) => {
                    say("offline").await;
                    let _ = std::io::stdout().flush();
                    return if once { 4 } else { 3 };
                }
                Err(e) => {
                    ctx.err(&format!("Ignore agent update exception. {e}"));
                    continue;
                }
            }
        }
        let Some(millis) = answer["job"]["millis"].as_u64() else {
            continue;
        };
        ctx.out(&format!(
            "Running job: simulated request {}",
            answer["job"]["request"]
        ));
        let finished = tokio::select! {
            _ = stop.changed() => false,
            _ = tokio::time::sleep(Duration::from_millis(millis)) => true,
        };
        if !finished {
            ctx.out("Job cancelled: the agent is shutting down. Exiting...");
            say("offline").await;
            return 0;
        }
        say("done").await;
        ctx.out("Job completed with result: Succeeded");
        if once {
            say("offline").await;
            return 0;
        }
    }
}

/// `Agent.cs`: `--startuptype` (or `VSTS_AGENT_INPUT_STARTUPTYPE`) names it, case-insensitively
/// (anything else is Manual); without it an agent configured as a service (`.service`) runs as one
/// when stdin, stdout and stderr are all redirected.
fn startup_type_is_service(root: &Path, parsed: &Parsed) -> bool {
    use std::io::IsTerminal;
    match parsed.values.get("startuptype") {
        Some(t) => t.eq_ignore_ascii_case("service"),
        None => {
            root.join(".service").exists()
                && !std::io::stdin().is_terminal()
                && !std::io::stdout().is_terminal()
                && !std::io::stderr().is_terminal()
        }
    }
}

/// A variable of the listener's environment, which `Program.cs` first fills from the root's `.env`
/// (`NAME=value` lines; a later line wins, an empty value unsets): `None` when unset or empty.
fn env_or_dotenv(root: &Path, name: &str) -> Option<String> {
    let from_file = fs_err::read_to_string(root.join(".env"))
        .ok()
        .and_then(|text| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| !k.is_empty() && *k == name)
                .map(|(_, v)| v.to_owned())
                .next_back()
        });
    from_file
        .or_else(|| std::env::var(name).ok())
        .filter(|v| !v.is_empty())
}

/// `SelfUpdater.SelfUpdate`, from the download to the update script started (see [`run`]).
async fn self_update(
    ctx: &mut Ctx,
    settings: &Value,
    refresh: &Value,
    restart_interactive: bool,
) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    let target = refresh["targetVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = refresh["downloadUrl"].as_str().unwrap_or_default();
    let hash = refresh["hashValue"].as_str().unwrap_or_default();
    ctx.out("Agent update in progress, do not shutdown agent.");
    ctx.out(&format!("Downloading {target} agent"));
    let root = ctx.root.clone();
    let work = root.join(settings["workFolder"].as_str().unwrap_or("_work"));
    let update_dir = work.join("_update");
    let _ = fs_err::remove_dir_all(&update_dir);
    fs_err::create_dir_all(&update_dir).map_err(|e| e.to_string())?;
    let archive = update_dir.join("agent1.tar.gz");
    let bytes = async {
        ctx.http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await
    }
    .await
    .map_err(|e| {
        format!(
            "Failed to get package '{}' from '{url}'. {e}",
            archive.display()
        )
    })?;
    fs_err::write(&archive, &bytes).map_err(|e| e.to_string())?;
    if !hex::encode(Sha256::digest(&bytes)).eq_ignore_ascii_case(hash) {
        return Err("Agent package checksum validation failed.".into());
    }
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .current_dir(&update_dir)
        .status()
        .map_err(|e| e.to_string())?;
    let _ = fs_err::remove_file(&archive);
    if !tar.success() {
        return Err(format!(
            "Can't use 'tar -xzf' extract archive file: {}",
            archive.display()
        ));
    }
    ctx.out("Waiting for current job finish running.");
    for dir in ["bin", "externals"] {
        let to = root.join(format!("{dir}.{target}"));
        fs_err::create_dir_all(&to).map_err(|e| e.to_string())?;
        let copied = std::process::Command::new("cp")
            .arg("-R")
            .arg(update_dir.join(dir).join("."))
            .arg(&to)
            .status()
            .map_err(|e| e.to_string())?;
        if !copied.success() {
            return Err(format!("copying {dir} to {} failed", to.display()));
        }
    }
    for entry in fs_err::read_dir(&update_dir)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs_err::copy(entry.path(), root.join(entry.file_name())).map_err(|e| e.to_string())?;
        }
    }
    ctx.out("Generate and execute update script.");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let diag = root.join("_diag");
    fs_err::create_dir_all(&diag).map_err(|e| e.to_string())?;
    let template = fs_err::read_to_string(root.join(format!("bin.{target}/update.sh.template")))
        .map_err(|e| e.to_string())?;
    let script = template
        .replace("_PROCESS_ID_", &std::process::id().to_string())
        .replace("_AGENT_PROCESS_NAME_", "Agent.Listener")
        .replace("_ROOT_FOLDER_", &root.display().to_string())
        .replace("_EXIST_AGENT_VERSION_", &ctx.version)
        .replace("_DOWNLOAD_AGENT_VERSION_", &target)
        .replace(
            "_UPDATE_LOG_",
            &diag
                .join(format!("SelfUpdate-{stamp}.log"))
                .display()
                .to_string(),
        )
        .replace(
            "_RESTART_INTERACTIVE_AGENT_",
            if restart_interactive { "1" } else { "0" },
        );
    let path = work.join("_update.sh");
    fs_err::write(&path, script).map_err(|e| e.to_string())?;
    // `Process.Start("bash", path)`: a child of the listener, in its process group, with its
    // standard streams.
    std::process::Command::new("bash")
        .arg(&path)
        .spawn()
        .map_err(|e| e.to_string())?;
    ctx.out("Agent will exit shortly for update, should back online within 10 seconds.");
    Ok(())
}

/// SIGINT or SIGTERM (Windows: Ctrl-C).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::rfc3339(secs)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn remove(ctx: &mut Ctx, parsed: &Parsed) -> i32 {
    if ctx.root.join(".service").exists() {
        ctx.err("Unconfigure service first according to https://www.visualstudio.com/en-us/docs/build/admin/agents/v2-linux");
        return 1;
    }
    let settings = read_bom_json(&ctx.root.join(".agent"));
    if let Some(settings) = settings
        .as_ref()
        .filter(|_| ctx.root.join(".credentials").exists())
    {
        let Some(token) = required(ctx, parsed, "token") else {
            return 1;
        };
        let url = settings["serverUrl"].as_str().unwrap_or("").to_owned();
        let api = Api {
            http: &ctx.http.clone(),
            url,
            token,
        };
        if connect(ctx, &api).await.is_err() {
            ctx.err("Failed: Removing agent from the server");
            return 1;
        }
        let target = registration::Target::of_settings(settings);
        let name = settings["agentName"].as_str().unwrap_or("").to_owned();
        let found = match registration::find(&api, &target, &name).await {
            Ok(found) => found,
            Err(e) => {
                ctx.err(&e);
                return 1;
            }
        };
        match found {
            None => ctx.out("Does not exist. Skipping Removing agent from the server"),
            Some(found) => match registration::delete(&api, &target, &found).await {
                Ok((204 | 200, _)) => ctx.out("Succeeded: Removing agent from the server"),
                Ok((_, v)) => {
                    ctx.err(&message(&v));
                    ctx.err("Failed: Removing agent from the server");
                    return 1;
                }
                Err(e) => {
                    ctx.err(&e);
                    return 1;
                }
            },
        }
    } else {
        ctx.out("Cannot connect to server, because config files are missing. Skipping removing agent from the server.");
    }
    ctx.out("Removing .credentials");
    let _ = fs_err::remove_file(ctx.root.join(".credentials"));
    let _ = fs_err::remove_file(ctx.root.join(".credentials_rsaparams"));
    ctx.out("Removing .agent");
    let _ = fs_err::remove_file(ctx.root.join(".agent"));
    0
}

async fn reauth(ctx: &mut Ctx, parsed: &Parsed) -> i32 {
    let Some(mut settings) = read_bom_json(&ctx.root.join(".agent")) else {
        ctx.err("Agent is not configured.");
        return 1;
    };
    let Some(token) = required(ctx, parsed, "token") else {
        return 1;
    };
    let url = settings["serverUrl"].as_str().unwrap_or("").to_owned();
    let api = Api {
        http: &ctx.http.clone(),
        url: url.clone(),
        token,
    };
    if connect(ctx, &api).await.is_err() {
        return 1;
    }
    let modulus = match ensure_key(ctx) {
        Ok(m) => m,
        Err(e) => {
            ctx.err(&format!("Failed to create the RSA key: {e}"));
            return 1;
        }
    };
    let mut target = registration::Target::of_settings(&settings);
    let name = settings["agentName"].as_str().unwrap_or("").to_owned();
    let body = json!({"name": name, "version": ctx.version,
                      "authorization": {"publicKey": {"exponent": "AQAB", "modulus": modulus}}});
    let found = match registration::find(&api, &target, &name).await {
        Ok(found) => found,
        Err(e) => {
            ctx.err(&e);
            return 1;
        }
    };
    let result = match found {
        Some(found) => registration::replace(ctx, parsed, &api, &mut target, &found, body).await,
        None => registration::add(ctx, parsed, &api, &mut target, body).await,
    };
    let agent = match result {
        Ok((200, v)) => v,
        Ok((_, v)) => {
            ctx.err(&message(&v));
            return 1;
        }
        Err(e) => {
            if !e.is_empty() {
                ctx.err(&e);
            }
            return 1;
        }
    };
    target.apply(&mut settings);
    settings["agentId"] = agent["id"].clone();
    let client_id = agent["authorization"]["clientId"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let auth_url = format!(
        "{}/_apis/oauth2/token/{client_id}",
        server_base(&url).unwrap_or_default()
    );
    if write_bom_json(&ctx.root.join(".agent"), &settings, None).is_err()
        || write_bom_json(
            &ctx.root.join(".credentials"),
            &json!({"scheme": "OAuth", "data": {"clientId": client_id, "authorizationUrl": auth_url, "oauthEndpointUrl": auth_url}}),
            None,
        )
        .is_err()
    {
        ctx.err("Failed to save settings");
        return 1;
    }
    ctx.out("Successfully re-authenticated the agent");
    0
}

/// The simulator's `listener_loopback_remote` switch, asked of the simulator named by `--url` (or
/// `.agent`) over the back channel; false when it cannot be asked.
async fn loopback_remote(web: &WebSettings, parsed: &Parsed, root: &Path) -> bool {
    let url = parsed.values.get("url").cloned().or_else(|| {
        read_bom_json(&root.join(".agent")).and_then(|a| {
            a.get("serverUrl")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
    });
    let Some(base) = url
        .and_then(|u| reqwest::Url::parse(&u).ok())
        .map(|u| u.origin().ascii_serialization())
    else {
        return false;
    };
    let Ok(r) = web
        .report_client()
        .get(format!("{base}/_sim/config"))
        .send()
        .await
    else {
        return false;
    };
    r.json::<Value>()
        .await
        .ok()
        .and_then(|v| v["listener_loopback_remote"].as_bool())
        .unwrap_or(false)
}

/// A trust store without a certificate: every server certificate is refused.
#[derive(Debug)]
struct TrustNothing(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustNothing {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no certificate is trusted".into()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no certificate is trusted".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
