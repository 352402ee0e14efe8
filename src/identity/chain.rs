//! Which identity source to use.
//!
//! `--identity <kind>` pins one: if its signs are missing the run stops with a message that names
//! what is missing. `--identity auto` (the default) tries [`Kind::CHAIN`] in order, the way
//! DefaultAzureCredential does (`identity.md` §7): workload identity when all its variables are
//! set, App Service when its endpoint and header are, Arc when its variables or its agent are
//! there, IMDS when anything answers a one-second probe (so a laptop does not sit through two
//! minutes of IMDS retries before `az` is tried; once IMDS has answered, the full retry table
//! applies), the Azure CLI when `az` is on `PATH`, a PAT when one is given. The first found is
//! used; a found source that is misconfigured stops the chain rather than silently falling
//! through to another identity. The [`Report`] says what was chosen and why each earlier one was
//! not; it is logged, and `doctor` prints it.
//!
//! `AZURE_CLIENT_ID`, when no selector flag is given, selects the user-assigned identity for
//! IMDS and App Service (and is workload identity's client id), as the Azure SDKs do.

use super::{
    CLIENT_ID_ENV, Found, IdentityError, ImdsClient, Kind, Request, Selector, Source, app_service,
    arc, azure_cli, pat, workload,
};
use crate::env::Env;
use crate::net::Net;
use crate::os::Os;

/// What became of one source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "kebab-case")]
pub enum Verdict {
    Chosen(String),
    Skipped(String),
    Failed(String),
    NotTried,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Candidate {
    pub kind: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// How the source was chosen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub requested: String,
    pub candidates: Vec<Candidate>,
}

impl Report {
    /// One log line per source looked at.
    pub fn log(&self) {
        for c in &self.candidates {
            match &c.verdict {
                Verdict::Chosen(why) => {
                    tracing::info!(source = %c.kind, "identity source: {} ({why})", c.kind);
                }
                Verdict::Skipped(why) => {
                    tracing::info!(source = %c.kind, "identity source {} skipped: {why}", c.kind);
                }
                Verdict::Failed(_) | Verdict::NotTried => {}
            }
        }
    }
}

/// The request's source, with the report of how it was found.
pub async fn resolve(
    req: &Request,
    env: &Env,
    os: &Os,
    net: &Net,
) -> (Result<Source, IdentityError>, Report) {
    let pinned = req.kind != Kind::Auto;
    let kinds: Vec<Kind> = if pinned {
        vec![req.kind]
    } else {
        Kind::CHAIN.to_vec()
    };
    let mut report = Report {
        requested: req.kind.name().to_owned(),
        candidates: vec![],
    };
    let push = |report: &mut Report, kind: Kind, verdict: Verdict| {
        report.candidates.push(Candidate {
            kind: kind.name().to_owned(),
            verdict,
        });
    };
    for (i, kind) in kinds.iter().copied().enumerate() {
        match detect(kind, req, pinned, env, os, net).await {
            Ok(Found::Here { source, why }) => {
                if !pinned && kind != Kind::Pat {
                    warn_unused_pat(kind, env);
                }
                push(&mut report, kind, Verdict::Chosen(why));
                for rest in &kinds[i + 1..] {
                    push(&mut report, *rest, Verdict::NotTried);
                }
                return (Ok(source), report);
            }
            Ok(Found::Absent(why)) if pinned => {
                push(&mut report, kind, Verdict::Failed(why.clone()));
                return (Err(IdentityError::NotAvailable { kind, why }), report);
            }
            Ok(Found::Absent(why)) => push(&mut report, kind, Verdict::Skipped(why)),
            // Auto: a selector meant for another source is no reason to stop.
            Err(e @ IdentityError::UnsupportedSelector { .. }) if !pinned => {
                push(&mut report, kind, Verdict::Skipped(e.to_string()));
            }
            Err(e) => {
                push(&mut report, kind, Verdict::Failed(e.to_string()));
                for rest in &kinds[i + 1..] {
                    push(&mut report, *rest, Verdict::NotTried);
                }
                return (Err(e), report);
            }
        }
    }
    let tried = report
        .candidates
        .iter()
        .map(|c| match &c.verdict {
            Verdict::Skipped(why) | Verdict::Failed(why) | Verdict::Chosen(why) => {
                format!("{}: {why}", c.kind)
            }
            Verdict::NotTried => format!("{}: not tried", c.kind),
        })
        .collect();
    (Err(IdentityError::NoSource { tried }), report)
}

/// `--identity auto` found the machine's identity while a PAT is in the environment too: the
/// identity wins (a PAT left in an image or a pipeline variable expires and is no one's to renew;
/// the identity is what the machine was given), and that is said loudly, with how to choose the PAT.
fn warn_unused_pat(chosen: Kind, env: &Env) {
    if let Some(name) = [pat::FILE_ENV, pat::TOKEN_ENV]
        .into_iter()
        .find(|n| env.var(n).is_some_and(|v| !v.trim().is_empty()))
    {
        tracing::warn!(
            source = chosen.name(),
            "{name} is set, but the machine's identity ({}) is used: --identity auto prefers an \
             identity over a PAT; pass --identity pat to use the PAT",
            chosen.name()
        );
    }
}

/// The selector for sources that take `AZURE_CLIENT_ID` as the default user-assigned identity.
fn with_env_client_id(selector: &Selector, env: &Env) -> Result<Selector, IdentityError> {
    match (selector, env.var(CLIENT_ID_ENV)) {
        (Selector::Default, Some(id)) => {
            let id = id.trim();
            if id.is_empty()
                || id.len() > 64
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(IdentityError::BadSetting {
                    name: CLIENT_ID_ENV.into(),
                    value: id.to_owned(),
                    problem: "not a client id".into(),
                });
            }
            Ok(Selector::ClientId(id.to_owned()))
        }
        (s, _) => Ok(s.clone()),
    }
}

async fn detect(
    kind: Kind,
    req: &Request,
    pinned: bool,
    env: &Env,
    os: &Os,
    net: &Net,
) -> Result<Found<Source>, IdentityError> {
    let here = |source: Source, why: String| Found::Here { source, why };
    Ok(match kind {
        Kind::Auto => unreachable!("auto is a chain, not a source"),
        Kind::Workload => match workload::detect(env, &req.selector, net)? {
            Found::Here { source, why } => here(Source::Workload(source), why),
            Found::Absent(why) => Found::Absent(why),
        },
        Kind::AppService => {
            let selector = with_env_client_id(&req.selector, env)?;
            match app_service::detect(env, &selector, net)? {
                Found::Here { source, why } => here(Source::AppService(source), why),
                Found::Absent(why) => Found::Absent(why),
            }
        }
        Kind::Arc => match arc::detect(env, &req.selector, os, net)? {
            Found::Here { source, why } => here(Source::Arc(source), why),
            Found::Absent(why) => Found::Absent(why),
        },
        Kind::Imds => {
            let client = ImdsClient::from_env(env, net)?;
            let why = if pinned {
                "asked for".to_owned()
            } else {
                match client.probe().await {
                    Ok(()) => format!("IMDS answered at {}", client.base()),
                    Err(e) => {
                        return Ok(Found::Absent(format!(
                            "IMDS at {} did not answer ({e}): not an Azure VM?",
                            client.base()
                        )));
                    }
                }
            };
            let selector = with_env_client_id(&req.selector, env)?;
            if selector != req.selector {
                tracing::info!("using {CLIENT_ID_ENV} to select the user-assigned identity");
            }
            here(Source::Imds { client, selector }, why)
        }
        Kind::AzureCli => match azure_cli::detect(env, &req.selector, req.az_login, net.clock())? {
            Found::Here { source, why } => here(Source::AzureCli(source), why),
            Found::Absent(why) => Found::Absent(why),
        },
        Kind::Pat => match pat::detect(env, &req.selector, req.pat_file.as_deref(), net.clock())? {
            Found::Here { source, why } => here(Source::Pat(source), why),
            Found::Absent(why) => Found::Absent(why),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    fn run(req: &Request, vars: &[(&str, &str)]) -> (Result<Source, IdentityError>, Report) {
        let mut all = vec![
            (arc::TEST_DIR_ENV, "/nonexistent/arc"),
            ("PATH", "/nonexistent"),
            // Nothing listens on port 9 of loopback: the probe fails at once.
            (super::super::IMDS_BASE_ENV, "http://127.0.0.1:9"),
        ];
        all.extend_from_slice(vars);
        let env = Env::fake(&all, "h", false);
        let net = Net::new(Clock::virtual_clock());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(resolve(req, &env, &crate::host::current_os(), &net))
    }

    fn verdicts(r: &Report) -> Vec<(String, &'static str)> {
        r.candidates
            .iter()
            .map(|c| {
                let v = match c.verdict {
                    Verdict::Chosen(_) => "chosen",
                    Verdict::Skipped(_) => "skipped",
                    Verdict::Failed(_) => "failed",
                    Verdict::NotTried => "not tried",
                };
                (c.kind.clone(), v)
            })
            .collect()
    }

    #[test]
    fn auto_takes_the_first_source_whose_signs_are_all_there() {
        let (found, report) = run(
            &Request::auto(),
            &[
                // Workload is incomplete, App Service complete, Arc complete too.
                (workload::TOKEN_FILE_ENV, "/t"),
                (app_service::ENDPOINT_ENV, "http://localhost:1/msi/token"),
                (app_service::HEADER_ENV, "h"),
                (arc::IMDS_ENDPOINT_ENV, "http://localhost:40342"),
            ],
        );
        assert_eq!(found.unwrap().kind(), Kind::AppService);
        assert_eq!(
            verdicts(&report),
            vec![
                ("workload".into(), "skipped"),
                ("app-service".into(), "chosen"),
                ("arc".into(), "not tried"),
                ("imds".into(), "not tried"),
                ("azure-cli".into(), "not tried"),
                ("pat".into(), "not tried"),
            ]
        );
        let Verdict::Skipped(why) = &report.candidates[0].verdict else {
            panic!()
        };
        assert!(why.contains("AZURE_TENANT_ID"), "{why}");
    }

    #[test]
    fn without_any_source_every_reason_is_listed() {
        let (found, report) = run(&Request::auto(), &[]);
        let e = found.err().unwrap();
        let text = e.to_string();
        for kind in Kind::CHAIN {
            assert!(text.contains(&format!("{}: ", kind.name())), "{text}");
        }
        assert!(text.contains("did not answer"), "{text}");
        assert!(
            report
                .candidates
                .iter()
                .all(|c| matches!(c.verdict, Verdict::Skipped(_)))
        );
    }

    #[test]
    fn auto_ends_at_a_pat_and_skips_selectors_meant_for_others() {
        let mut req = Request::auto();
        req.selector = Selector::ObjectId("o".into());
        let (found, report) = run(
            &req,
            &[
                (arc::ENDPOINT_ENV, "http://localhost:40342/x"),
                (arc::IMDS_ENDPOINT_ENV, "http://localhost:40342"),
                (pat::TOKEN_ENV, "abc"),
            ],
        );
        // Arc cannot take --object-id (skipped); the PAT cannot either: nothing is chosen.
        assert!(found.is_err());
        assert_eq!(verdicts(&report)[2], ("arc".into(), "skipped"));
        assert_eq!(verdicts(&report)[5], ("pat".into(), "skipped"));
        let (found, _) = run(&Request::auto(), &[(pat::TOKEN_ENV, "abc")]);
        assert_eq!(found.unwrap().kind(), Kind::Pat);
    }

    #[test]
    fn a_pinned_source_says_what_is_missing() {
        let mut req = Request::auto();
        req.kind = Kind::Workload;
        let (found, report) = run(&req, &[(workload::TENANT_ENV, "t")]);
        let e = found.err().unwrap();
        assert!(matches!(
            e,
            IdentityError::NotAvailable {
                kind: Kind::Workload,
                ..
            }
        ));
        assert!(e.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"), "{e}");
        assert_eq!(report.candidates.len(), 1);
        // A selector a pinned source cannot take is an input error, not a skip.
        req.kind = Kind::Arc;
        req.selector = Selector::ClientId("c".into());
        let (found, _) = run(
            &req,
            &[
                (arc::ENDPOINT_ENV, "http://localhost:40342/x"),
                (arc::IMDS_ENDPOINT_ENV, "http://localhost:40342"),
            ],
        );
        assert!(found.err().unwrap().is_input());
    }

    #[test]
    fn azure_client_id_selects_the_user_assigned_identity() {
        let mut req = Request::auto();
        req.kind = Kind::Imds;
        let (found, _) = run(
            &req,
            &[(CLIENT_ID_ENV, "22222222-aaaa-aaaa-aaaa-222222222222")],
        );
        assert_eq!(
            found.unwrap().selector(),
            Selector::ClientId("22222222-aaaa-aaaa-aaaa-222222222222".into())
        );
        // A flag wins.
        req.selector = Selector::ObjectId("o".into());
        let (found, _) = run(
            &req,
            &[(CLIENT_ID_ENV, "22222222-aaaa-aaaa-aaaa-222222222222")],
        );
        assert_eq!(found.unwrap().selector(), Selector::ObjectId("o".into()));
    }
}
