//! `agent-bootstrap doctor`: why would an install fail here, and what to do about it.
//!
//! It runs the identity chain and reports every source (chosen, skipped and why, failed), gets a
//! token and reads its claims (object id, tenant, application, audience, expiry; decoded, not
//! verified, and the token itself never printed), then asks the organization who the token
//! belongs to, whether the pool exists and may be managed (registering agents needs it), and
//! whether the packages API offers an agent for this platform: the checks install makes before it
//! touches the disk, each with the fix when it fails. The report is data, on stdout (`--json` for
//! machines); the exit code is 0 only when an install would get past all of them, else the code
//! install would exit with (3 identity, 4 Azure DevOps, 5 no package).

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::devops::DevOpsClient;
use crate::env::Env;
use crate::error::Error;
use crate::identity::claims::{self, Claims};
use crate::identity::{Report, Request, Tokens, Verdict};
use crate::net::Net;
use crate::os::Os;
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
        let text = crate::error::report(e);
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

#[derive(Debug, Serialize)]
struct Doctor {
    organization: String,
    pool: String,
    identity: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<Claims>,
    checks: Vec<Check>,
    /// An install would get past every check.
    ok: bool,
}

pub async fn run(
    target: &DoctorSettings,
    request: &Request,
    json: bool,
    env: &Env,
    os: Os,
    net: &Net,
) -> Result<(), Error> {
    let budget = net.clock().budget(BUDGET);
    let (source, identity) = crate::identity::resolve(request, env, &os, net).await;
    identity.log();
    let mut report = Doctor {
        organization: target.url.to_string(),
        pool: target.pool.clone(),
        identity,
        source: None,
        claims: None,
        checks: vec![],
        ok: false,
    };
    let failure = check(target, source, &budget, os, net, &mut report).await;
    report.ok = failure.is_none();
    print(&report, json)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs the checks in order, each only when the ones before passed; the first failure is returned.
async fn check(
    target: &DoctorSettings,
    source: Result<crate::identity::Source, crate::identity::IdentityError>,
    budget: &crate::clock::Budget,
    os: Os,
    net: &Net,
    report: &mut Doctor,
) -> Option<Error> {
    let source = match source {
        Ok(s) => s,
        Err(e) => {
            report.checks.push(Check::failed("identity", &e));
            return Some(e.into());
        }
    };
    report.source = Some(source.describe());
    let tokens = std::sync::Arc::new(Tokens::new(source));
    let token = match tokens.get(budget).await {
        Ok(t) => t,
        Err(e) => {
            report.checks.push(Check::failed("token", &e));
            return Some(e.into());
        }
    };
    let claims = claims::decode(&token);
    let now = net.clock().unix_now();
    let about = match &claims {
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
    };
    report.checks.push(Check::ok("token", about));
    if let Some(c) = &claims
        && !c.for_azure_devops()
    {
        let e = crate::identity::IdentityError::WrongAudience {
            audience: c.aud.clone().unwrap_or_default(),
        };
        report.checks.push(Check::failed("audience", &e));
        report.claims = claims;
        return Some(e.into());
    }
    report.claims = claims;

    let devops = DevOpsClient::new(&target.url, tokens.clone(), net);
    let me = match devops.connection_data(budget).await {
        Ok(c) => c.authenticated_user,
        Err(e) => {
            report.checks.push(Check::failed("organization", &e));
            return Some(e.into());
        }
    };
    let who = me
        .provider_display_name
        .clone()
        .unwrap_or_else(|| me.id.clone());
    report.checks.push(Check::ok(
        "organization",
        format!("{} accepts the token as {who} (id {})", target.url, me.id),
    ));
    match devops.pool_if_manageable(&target.pool, budget).await {
        Ok(Some(pool)) => report.checks.push(Check::ok(
            "pool",
            format!(
                "'{}' (id {}): this identity may register agents in it",
                pool.name, pool.id
            ),
        )),
        Ok(None) => {
            let e = devops
                .explain_unmanageable(&target.pool, &who, budget)
                .await;
            report.checks.push(Check::failed("pool", &e));
            return Some(e.into());
        }
        Err(e) => {
            report.checks.push(Check::failed("pool", &e));
            return Some(e.into());
        }
    }
    let rid = os.rid();
    match devops.agent_package(&rid, None, budget).await {
        Ok(p) => report.checks.push(Check::ok(
            "package",
            format!("the organization offers agent {} for {rid}", p.version),
        )),
        Err(e) => {
            report.checks.push(Check::failed("package", &e));
            return Some(e.into());
        }
    }
    None
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
    t.push_str(&format!(
        "checks (organization {}, pool '{}'):\n",
        r.organization, r.pool
    ));
    for c in &r.checks {
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
    t.push_str(if r.ok {
        "result: an install with these settings would get past every check\n"
    } else {
        "result: an install would fail here; fix the first FAILED line above\n"
    });
    t
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
