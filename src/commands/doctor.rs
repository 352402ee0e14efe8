//! `agent-bootstrap doctor`: why would an install fail here, and what to do about it.
//!
//! It checks the machine first (read-only or `noexec` file systems where the agent dir, the state
//! and the cache would go; the tools the agent's `config.sh` stops without; the agent's account
//! or what makes it), each whatever the others find. Then it runs the identity chain and reports every source (chosen, skipped and why, failed), gets a
//! token and reads its claims (object id, tenant, application, audience, expiry; decoded, not
//! verified, and the token itself never printed), then asks the organization who the token
//! belongs to, whether the pool exists and may be managed (registering agents needs it), and
//! whether the packages API offers an agent for this platform: the checks install makes before it
//! touches the disk, each with the fix when it fails. The report is data, on stdout (`--json` for
//! machines); the exit code is 0 only when an install would get past all of them, else the code
//! install would exit with (3 identity, 4 Azure DevOps, 5 no package).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Budget;
use crate::devops::{DevOpsClient, PackageMetadata};
use crate::env::Env;
use crate::error::Error;
use crate::identity::claims::{self, Claims};
use crate::identity::{Report, Request, Tokens, Verdict};
use crate::net::{Net, Service};
use crate::os::Os;
use crate::output::Out;
use crate::settings::DoctorSettings;

/// Everything doctor asks of the network, together.
const BUDGET: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: String) -> Self {
        Self {
            name,
            ok: true,
            detail,
            fix: None,
        }
    }

    /// A failed check from an error: its text, with the `hint:` part as the fix.
    fn failed(name: &'static str, e: &(dyn std::error::Error + 'static)) -> Self {
        let text = crate::report::report(e);
        let (detail, fix) = match text.split_once("\nhint: ") {
            Some((d, f)) => (d.to_owned(), Some(f.replace("\nhint: ", "; "))),
            None => (text, None),
        };
        Self {
            name,
            ok: false,
            detail,
            fix,
        }
    }
}

/// The proxy and CA in use.
#[derive(Debug, Serialize)]
struct NetworkReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    no_proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<String>,
    /// Whether the system's trust store has any CA certificate (the agent trusts only it).
    system_ca_certificates: bool,
}

#[derive(Debug, Serialize)]
struct Doctor {
    /// The machine's facts and the agent package platform chosen from them (`crate::host`).
    host: crate::host::Report,
    organization: String,
    pool: String,
    network: NetworkReport,
    identity: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<Claims>,
    /// What the machine itself must offer (file systems, the agent's tools, a way to make its
    /// account), checked whatever the network checks find.
    machine: Vec<Check>,
    checks: Vec<Check>,
    /// An install would get past every check.
    ok: bool,
}

impl Doctor {
    /// Records the failed check `name` and hands its error on.
    fn fail<E>(&mut self, name: &'static str, e: E) -> Error
    where
        E: std::error::Error + Into<Error> + 'static,
    {
        self.checks.push(Check::failed(name, &e));
        e.into()
    }
}

pub async fn run(
    target: &DoctorSettings,
    request: &Request,
    json: bool,
    env: &Env,
    os: Os,
    net: &Net,
    out: &Out,
) -> Result<(), Error> {
    let budget = net.clock().budget(BUDGET);
    let (source, identity) = crate::identity::resolve(request, env, &os, net).await;
    identity.log();
    let n = net.network();
    let mut report = Doctor {
        host: crate::host::Report::for_os(&os),
        organization: target.url.to_string(),
        pool: target.pool.clone(),
        network: NetworkReport {
            proxy: n.proxy.as_ref().map(|p| p.url.to_string()),
            proxy_from: n.proxy.as_ref().map(|p| p.from.clone()),
            proxy_user: n.proxy.as_ref().and_then(|p| p.user.clone()),
            no_proxy: n.no_proxy.clone().filter(|_| n.proxy.is_some()),
            ca_file: n.ca_file.as_ref().map(|p| p.display().to_string()),
            system_ca_certificates: crate::net::tls::system_roots_present(),
        },
        identity,
        source: None,
        claims: None,
        machine: vec![],
        checks: vec![],
        ok: false,
    };
    let (before, after) = machine(target, env, &os, &mut report.machine);
    let failure = check(target, source, &budget, os, net, &mut report)
        .await
        .err();
    // The exit code install would have: it checks the file systems before anything is
    // contacted, and meets the agent's tools and account after the network checks.
    let failure = before.or(failure).or(after);
    report.ok = failure.is_none();
    if out.is_json() {
        out.report(serde_json::to_value(&report).expect("serializable"));
    } else {
        print(&report, json)?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The machine's own checks, each whatever the others found (they are local and quick): the
/// file systems install checks before it contacts anything, then the agent's account and the
/// tools its `config.sh` stops without, which install meets after the network. Returns the
/// first failure of each group.
fn machine(
    target: &DoctorSettings,
    env: &Env,
    os: &Os,
    checks: &mut Vec<Check>,
) -> (Option<Error>, Option<Error>) {
    fn fail(checks: &mut Vec<Check>, first: &mut Option<Error>, name: &'static str, e: Error) {
        checks.push(Check::failed(name, &e));
        first.get_or_insert(e);
    }
    let (mut before, mut after) = (None, None);
    let places = crate::preflight::install_places(
        &target.agent_dir,
        &target.paths.state_dir,
        &target.paths.cache_dir,
    );
    match crate::preflight::check(&places) {
        Ok(()) => checks.push(Check::ok(
            "file systems",
            format!(
                "agent dir {} (writable, exec), state {} and cache {} (writable)",
                target.agent_dir.display(),
                target.paths.state_dir.display(),
                target.paths.cache_dir.display()
            ),
        )),
        Err(e) => fail(checks, &mut before, "file systems", e.into()),
    }
    if os.is_windows() {
        return (before, None);
    }
    let facts = crate::host::Facts::current();
    match crate::deps::check_tools(&facts, env) {
        Ok(()) => checks.push(Check::ok(
            "agent tools",
            "bash, ldd and ldconfig, which the agent's config.sh needs".into(),
        )),
        Err(e) => fail(checks, &mut after, "agent tools", e.into()),
    }
    let name = target.user.name();
    match crate::user::lookup(name) {
        Ok(Some(_)) => checks.push(Check::ok("account", format!("'{name}' exists"))),
        Ok(None) => match crate::user::creation_tool(env) {
            Ok(tool) => checks.push(Check::ok(
                "account",
                format!("'{name}' does not exist yet; install creates it with {tool}"),
            )),
            Err(detail) => fail(
                checks,
                &mut after,
                "account",
                crate::user::UserError::Create {
                    name: name.to_owned(),
                    detail,
                }
                .into(),
            ),
        },
        Err(e) => fail(checks, &mut after, "account", e.into()),
    }
    (before, after)
}

/// Runs the checks in order, each only when the ones before passed; the first failure is returned.
async fn check(
    target: &DoctorSettings,
    source: Result<crate::identity::Source, crate::identity::IdentityError>,
    budget: &Budget,
    os: Os,
    net: &Net,
    report: &mut Doctor,
) -> Result<(), Error> {
    // The hops first: the proxy, then TLS to the organization through it.
    if let Some(e) = hops(target, net, report).await {
        return Err(e);
    }
    let tokens = token(source, budget, net, report).await?;
    let devops = DevOpsClient::new(&target.url, tokens, net);
    let who = organization(&devops, target, budget, report).await?;
    pool(&devops, target, &who, budget, report).await?;
    let package = package(&devops, &os, budget, report).await?;
    download(&package.download_url, net, report).await
}

/// The identity the chain chose, a token from it, and the token's claims: whose it is, and that
/// it is for Azure DevOps.
async fn token(
    source: Result<crate::identity::Source, crate::identity::IdentityError>,
    budget: &Budget,
    net: &Net,
    report: &mut Doctor,
) -> Result<Arc<Tokens>, Error> {
    let source = source.map_err(|e| report.fail("identity", e))?;
    report.source = Some(source.describe());
    let tokens = Arc::new(Tokens::new(source));
    let secret = tokens
        .get(budget)
        .await
        .map_err(|e| report.fail("token", e))?;
    let claims = claims::decode(&secret);
    let now = net.clock().unix_now();
    report
        .checks
        .push(Check::ok("token", about_token(claims.as_ref(), now)));
    let wrong_audience = claims.as_ref().filter(|c| !c.for_azure_devops()).map(|c| {
        crate::identity::IdentityError::WrongAudience {
            audience: c.aud.clone().unwrap_or_default(),
        }
    });
    report.claims = claims;
    match wrong_audience {
        Some(e) => Err(report.fail("audience", e)),
        None => Ok(tokens),
    }
}

/// Whose token it is and when it expires, as far as its claims tell.
fn about_token(claims: Option<&Claims>, now: u64) -> String {
    match claims {
        Some(c) => {
            let expires = c
                .exp
                .map(|exp| format!(", expires in {}", span(exp.saturating_sub(now))))
                .unwrap_or_default();
            format!(
                "a token for object id {}{expires}",
                c.oid.as_deref().unwrap_or("?")
            )
        }
        None => "a token that is not a JWT (a personal access token)".to_owned(),
    }
}

/// The organization accepts the token; returns who it takes the token for.
async fn organization(
    devops: &DevOpsClient,
    target: &DoctorSettings,
    budget: &Budget,
    report: &mut Doctor,
) -> Result<String, Error> {
    let me = match devops.connection_data(budget).await {
        Ok(c) => c.authenticated_user,
        Err(e) => return Err(report.fail("organization", e)),
    };
    let who = me
        .provider_display_name
        .clone()
        .unwrap_or_else(|| me.id.clone());
    report.checks.push(Check::ok(
        "organization",
        format!("{} accepts the token as {who} (id {})", target.url, me.id),
    ));
    Ok(who)
}

/// The pool exists and `who` may register agents in it.
async fn pool(
    devops: &DevOpsClient,
    target: &DoctorSettings,
    who: &str,
    budget: &Budget,
    report: &mut Doctor,
) -> Result<(), Error> {
    if let Some(g) = &target.group {
        return group(devops, g, who, budget, report).await;
    }
    match devops.pool_if_manageable(&target.pool, budget).await {
        Ok(Some(pool)) => {
            report.checks.push(Check::ok(
                "pool",
                format!(
                    "'{}' (id {}): this identity may register agents in it",
                    pool.name, pool.id
                ),
            ));
            Ok(())
        }
        Ok(None) => {
            let e = devops.explain_unmanageable(&target.pool, who, budget).await;
            Err(report.fail("pool", e))
        }
        Err(e) => Err(report.fail("pool", e)),
    }
}

/// `--deployment-group` / `--environment`: the group is there, and (a deployment group) this
/// identity may register agents in it; an environment's role shows only at registration.
async fn group(
    devops: &DevOpsClient,
    g: &crate::scope::Group,
    who: &str,
    budget: &Budget,
    report: &mut Doctor,
) -> Result<(), Error> {
    use crate::scope::GroupKind;
    let noun = g.kind.noun();
    let found = devops
        .group_access(g, who, budget)
        .await
        .map_err(|e| report.fail(noun, e))?;
    let group = found.group.as_ref().expect("a group's access names it");
    let detail = match g.kind {
        GroupKind::DeploymentGroup => format!(
            "'{}' (id {}) of project {}: this identity may register agents in it (deployment \
             pool '{}')",
            group.name, group.id, g.project, found.name
        ),
        GroupKind::Environment => format!(
            "'{}' (id {}) of project {}: found; the identity's Administrator role on it is \
             checked only when the agent registers",
            group.name, group.id, g.project
        ),
    };
    report.checks.push(Check::ok(noun, detail));
    Ok(())
}

/// The packages API offers an agent for this platform.
async fn package(
    devops: &DevOpsClient,
    os: &Os,
    budget: &Budget,
    report: &mut Doctor,
) -> Result<PackageMetadata, Error> {
    let rid = os.rid();
    let package = devops
        .agent_package(&rid, None, budget)
        .await
        .map_err(|e| report.fail("package", e))?;
    report.checks.push(Check::ok(
        "package",
        format!(
            "the organization offers agent {} for {rid}",
            package.version
        ),
    ));
    Ok(package)
}

/// The download host: the first byte of the package, through the same proxy and trust.
async fn download(download_url: &str, net: &Net, report: &mut Doctor) -> Result<(), Error> {
    let Ok(url) = url::Url::parse(download_url) else {
        return Ok(());
    };
    let request = net
        .client(Service::Download)
        .get(url.clone())
        .header("Range", "bytes=0-0")
        .timeout(Duration::from_secs(30));
    match request.send().await {
        Ok(r) if r.status().is_success() => {
            report.checks.push(Check::ok(
                "download",
                format!("{} answers {}", host_of(&url), route(net, &url)),
            ));
            Ok(())
        }
        Ok(r) => {
            let e = crate::package::PackageError::Http {
                url: url.to_string(),
                status: r.status().as_u16(),
            };
            Err(report.fail("download", e))
        }
        Err(e) => {
            let e = match net.blocked(&e) {
                Some(b) => crate::package::PackageError::Blocked {
                    url: url.to_string(),
                    blocked: Box::new(b),
                },
                None => crate::package::PackageError::Download {
                    url: url.to_string(),
                    attempts: 1,
                    detail: crate::report::one_line(&e),
                },
            };
            Err(report.fail("download", e))
        }
    }
}

fn host_of(url: &url::Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_owned(),
    }
}

/// How a request to `url` travels, for the report.
fn route(net: &Net, url: &url::Url) -> String {
    let n = net.network();
    let via = match &n.proxy {
        Some(p) if n.proxied(url) => format!("through the proxy {}", p.url),
        Some(_) => "directly (NO_PROXY)".to_owned(),
        None => "directly".to_owned(),
    };
    let trust = match (&n.ca_file, url.scheme()) {
        (_, "http") => String::new(),
        (Some(ca), _) => format!(", TLS verified with the system's CAs and {}", ca.display()),
        (None, _) => ", TLS verified with the system's CAs".to_owned(),
    };
    format!("{via}{trust}")
}

/// The proxy is reachable, and the organization answers through it with a certificate we trust.
async fn hops(target: &DoctorSettings, net: &Net, report: &mut Doctor) -> Option<Error> {
    let n = net.network();
    if let Some(p) = &n.proxy {
        let host = p.url.host_str().unwrap_or("").to_owned();
        let port = p.url.port_or_known_default().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((
            host.trim_start_matches('[').trim_end_matches(']'),
            port,
        ));
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(_)) => report.checks.push(Check::ok(
                "proxy",
                format!(
                    "{} (from {}) accepts connections{}",
                    p.url,
                    p.from,
                    p.user
                        .as_ref()
                        .map(|u| format!("; credentials of '{u}'"))
                        .unwrap_or_default()
                ),
            )),
            result => {
                let detail = match result {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 5s".to_owned(),
                };
                let e = crate::devops::DevOpsError::GaveUp {
                    url: p.url.to_string(),
                    attempts: 1,
                    elapsed: Duration::ZERO,
                    last: format!("the proxy does not accept connections: {detail}"),
                };
                report.checks.push(Check {
                    name: "proxy",
                    ok: false,
                    detail: crate::report::report(&e),
                    fix: Some(format!(
                        "check --proxy / {} and that the proxy runs",
                        p.from
                    )),
                });
                return Some(e.into());
            }
        }
    }
    // Unauthenticated: any HTTP answer proves the proxy and TLS hops.
    let url = target.url.join("_apis/connectionData").ok()?;
    let request = net
        .client(Service::DevOps)
        .get(url.clone())
        .timeout(Duration::from_secs(30));
    match request.send().await {
        Ok(_) => {
            report.checks.push(Check::ok(
                "connection",
                format!("{} answers {}", host_of(&url), route(net, &url)),
            ));
            None
        }
        Err(e) => {
            let e = match net.blocked(&e) {
                Some(b) => crate::devops::DevOpsError::Blocked {
                    url: url.to_string(),
                    blocked: Box::new(b),
                },
                None => crate::devops::DevOpsError::GaveUp {
                    url: url.to_string(),
                    attempts: 1,
                    elapsed: Duration::ZERO,
                    last: crate::report::one_line(&e),
                },
            };
            report.checks.push(Check::failed("connection", &e));
            Some(e.into())
        }
    }
}

/// "23h 59m", "4m", "40s".
fn span(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn print(report: &Doctor, json: bool) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let text = if json {
        serde_json::to_string_pretty(report).expect("serializable") + "\n"
    } else {
        render(report)
    };
    out.write_all(text.as_bytes()).map_err(|source| Error::Io {
        action: "writing the report to",
        path: "stdout".into(),
        source,
    })
}

fn render(r: &Doctor) -> String {
    let mut t = String::new();
    t.push_str("host:\n");
    for line in r.host.lines() {
        t.push_str(&format!("  {line}\n"));
    }
    t.push_str(&format!(
        "identity sources (--identity {}):\n",
        r.identity.requested
    ));
    for c in &r.identity.candidates {
        let (verdict, why) = match &c.verdict {
            Verdict::Chosen(w) => ("chosen", w.as_str()),
            Verdict::Skipped(w) => ("skipped", w.as_str()),
            Verdict::Failed(w) => ("FAILED", w.as_str()),
            Verdict::NotTried => ("not tried", ""),
        };
        let line = format!("  {:<12} {:<10} {why}", c.kind, verdict);
        t.push_str(line.trim_end());
        t.push('\n');
    }
    if let Some(source) = &r.source {
        t.push_str(&format!("source: {source}\n"));
    }
    if let Some(c) = &r.claims {
        t.push_str("token claims (decoded, not verified):\n");
        for (name, value) in [
            ("object id", &c.oid),
            ("tenant", &c.tid),
            ("application", &c.appid),
            ("audience", &c.aud),
            ("user", &c.upn),
        ] {
            if let Some(v) = value {
                t.push_str(&format!("  {name:<12} {v}\n"));
            }
        }
        if let Some(exp) = c.exp {
            let when = std::time::UNIX_EPOCH + Duration::from_secs(exp);
            t.push_str(&format!(
                "  {:<12} {}\n",
                "expires",
                httpdate::fmt_http_date(when)
            ));
        }
    }
    let n = &r.network;
    match &n.proxy {
        Some(p) => t.push_str(&format!(
            "proxy: {p} (from {}{}){}\n",
            n.proxy_from.as_deref().unwrap_or("?"),
            n.proxy_user
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default(),
            n.no_proxy
                .as_deref()
                .map(|np| format!("; NO_PROXY {np}"))
                .unwrap_or_default()
        )),
        None => t.push_str("proxy: none\n"),
    }
    let extra = n
        .ca_file
        .as_deref()
        .map(|c| format!(" and {c}"))
        .unwrap_or_default();
    if n.system_ca_certificates {
        t.push_str(&format!("CA certificates: the system's{extra}\n"));
    } else {
        t.push_str(&format!(
            "CA certificates: NONE in the system store{extra}: {}\n",
            crate::net::no_ca_certificates_hint()
        ));
    }
    if !r.machine.is_empty() {
        t.push_str("machine checks:\n");
        render_checks(&mut t, &r.machine);
    }
    t.push_str(&format!(
        "checks (organization {}, pool '{}'):\n",
        r.organization, r.pool
    ));
    render_checks(&mut t, &r.checks);
    t.push_str(if r.ok {
        "result: an install with these settings would get past every check\n"
    } else {
        "result: an install would fail here; fix the first FAILED line above\n"
    });
    t
}

fn render_checks(t: &mut String, checks: &[Check]) {
    for c in checks {
        t.push_str(&format!(
            "  {:<6} {:<12} {}\n",
            if c.ok { "ok" } else { "FAILED" },
            c.name,
            c.detail.replace('\n', "\n                      ")
        ));
        if let Some(fix) = &c.fix {
            t.push_str(&format!("  {:<6} {:<12} fix: {fix}\n", "", ""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_a_clock() {
        assert_eq!(span(86_340), "23h 59m");
        assert_eq!(span(240), "4m");
        assert_eq!(span(40), "40s");
    }

    #[test]
    fn failures_put_the_hint_in_the_fix() {
        let e = crate::identity::IdentityError::NoIdentity {
            detail: "Identity not found".into(),
        };
        let c = Check::failed("identity", &e);
        assert!(!c.ok);
        assert!(c.detail.contains("no managed identity"), "{}", c.detail);
        assert!(c.fix.unwrap().starts_with("assign a system-assigned"));
    }
}
