//! AKS workload identity: the pod's projected service-account token, exchanged with Microsoft
//! Entra ID for an Azure DevOps token (`identity.md` §5).
//!
//! The webhook injects `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` and
//! `AZURE_AUTHORITY_HOST`. Each token request reads the file again (the kubelet rotates it) and
//! `POST`s a client-assertion grant to `{authority}/{tenant}/oauth2/v2.0/token` with
//! `scope=499b84ac-…/.default`. The authority must be https (plain http only to this machine).
//! The assertion is a credential: it is held as a [`Secret`] and never logged.

use std::path::PathBuf;

use url::Url;

use super::{AccessToken, CLIENT_ID_ENV, Found, IdentityError, Kind, Selector, parse_token};
use crate::clock::Budget;
use crate::env::Env;
use crate::net::{Net, Service};
use crate::secret::Secret;

pub(crate) const TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";
pub(crate) const TENANT_ENV: &str = "AZURE_TENANT_ID";
pub(crate) const AUTHORITY_ENV: &str = "AZURE_AUTHORITY_HOST";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// A projected service-account token is a few kilobytes.
const MAX_ASSERTION: u64 = 64 * 1024;
const SOURCE: &str = "Microsoft Entra ID";

pub struct Workload {
    token_url: Url,
    token_file: PathBuf,
    pub(super) client_id: String,
    pub(super) net: Net,
}

/// Whether the workload identity webhook's variables are all here.
pub(crate) fn detect(
    env: &Env,
    selector: &Selector,
    net: &Net,
) -> Result<Found<Workload>, IdentityError> {
    let client_id = match selector {
        Selector::ClientId(c) => Some(c.clone()),
        _ => env.var(CLIENT_ID_ENV).map(|c| c.trim().to_owned()),
    };
    let file = env.var(TOKEN_FILE_ENV);
    let tenant = env.var(TENANT_ENV);
    let missing: Vec<&str> = [
        (TOKEN_FILE_ENV, file.is_none()),
        (TENANT_ENV, tenant.is_none()),
        (CLIENT_ID_ENV, client_id.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    if !missing.is_empty() {
        return Ok(Found::Absent(format!(
            "{} {} not set",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        )));
    }
    if let Selector::ObjectId(_) | Selector::ResourceId(_) = selector {
        return Err(IdentityError::UnsupportedSelector {
            flag: selector.flag().unwrap_or_default(),
            kind: Kind::Workload,
            why: "workload identity is chosen by its client id (AZURE_CLIENT_ID or --client-id)",
        });
    }
    let (file, tenant, client_id) = (
        file.expect("checked"),
        tenant.expect("checked").trim(),
        client_id.expect("checked"),
    );
    let bad = |name: &str, value: &str, problem: &str| IdentityError::BadSetting {
        name: name.to_owned(),
        value: value.to_owned(),
        problem: problem.to_owned(),
    };
    if tenant.is_empty()
        || tenant.len() > 256
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad(TENANT_ENV, tenant, "not a tenant id or domain"));
    }
    if client_id.is_empty()
        || !client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad(CLIENT_ID_ENV, &client_id, "not a client id"));
    }
    let authority_raw = env.var(AUTHORITY_ENV).unwrap_or(DEFAULT_AUTHORITY);
    let authority = super::check_endpoint(AUTHORITY_ENV, authority_raw)?;
    if authority.query().is_some() {
        return Err(bad(AUTHORITY_ENV, authority_raw, "must not have a query"));
    }
    // The webhook's value may end with a slash: join without making `//`.
    let base = authority.as_str().trim_end_matches('/');
    let token_url = Url::parse(&format!("{base}/{tenant}/oauth2/v2.0/token"))
        .map_err(|_| bad(AUTHORITY_ENV, authority_raw, "not a valid URL"))?;
    Ok(Found::Here {
        source: Workload {
            token_url,
            token_file: PathBuf::from(file),
            client_id,
            net: net.clone(),
        },
        why: format!("{TOKEN_FILE_ENV}, {TENANT_ENV} and the client id are set"),
    })
}

impl Workload {
    pub fn describe(&self) -> String {
        format!(
            "workload identity: client {} via {}",
            self.client_id, self.token_url
        )
    }

    /// The service-account token, read again for every request (it rotates).
    fn assertion(&self) -> Result<Secret, IdentityError> {
        let read = |detail: String| IdentityError::Read {
            what: "the federated token file",
            path: self.token_file.clone(),
            detail,
        };
        // Projected volumes are links (`..data/…`): follow them, but read only a small regular file.
        let meta = fs_err::metadata(&self.token_file).map_err(|e| read(e.to_string()))?;
        if !meta.is_file() {
            return Err(read("not a regular file".into()));
        }
        if meta.len() > MAX_ASSERTION {
            return Err(read(format!("larger than {MAX_ASSERTION} bytes")));
        }
        let text = fs_err::read_to_string(&self.token_file).map_err(|e| read(e.to_string()))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(read("empty".into()));
        }
        Ok(Secret::new(text))
    }

    pub async fn token(&self, budget: Budget) -> Result<AccessToken, IdentityError> {
        let shown = self.token_url.to_string();
        let outcome = self
            .net
            .retry("Entra ID token", budget, async |_| {
                let assertion = match self.assertion() {
                    Ok(a) => a,
                    Err(e) => return crate::net::Try::Done(Err(e)),
                };
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("client_id", &self.client_id)
                    .append_pair("grant_type", "client_credentials")
                    .append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair("client_assertion", assertion.expose())
                    .append_pair(
                        "scope",
                        &format!("{}/.default", super::AZURE_DEVOPS_RESOURCE),
                    )
                    .finish();
                let request = self
                    .net
                    .client(Service::Entra)
                    .post(self.token_url.clone())
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .header("Accept", "application/json")
                    .body(body);
                let answer = self.net.fetch(request).await;
                let now = self.net.clock().unix_now();
                self.net.settle(
                    Service::Entra,
                    answer,
                    |a| parse_token(SOURCE, &a.body, &shown, now),
                    |a| {
                        Err(IdentityError::Refused {
                            source_name: SOURCE,
                            url: shown.clone(),
                            status: a.status,
                            detail: super::error_detail(&a.body),
                            hint: format!(
                                "\nhint: check the federated identity credential on the identity \
                                 with client id {} (issuer: the cluster's OIDC issuer URL, \
                                 subject: system:serviceaccount:<namespace>:<service account>) \
                                 and that {TENANT_ENV} is its tenant",
                                self.client_id
                            ),
                        })
                    },
                )
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(g) => Err(IdentityError::gave_up(
                SOURCE,
                &shown,
                "can the pod reach the authority host (AZURE_AUTHORITY_HOST), through the proxy \
                 if it needs one?",
                g,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    fn env(extra: &[(&str, &str)]) -> Env {
        let mut vars = vec![
            (
                TOKEN_FILE_ENV,
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            (TENANT_ENV, "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            (CLIENT_ID_ENV, "22222222-aaaa-aaaa-aaaa-222222222222"),
        ];
        vars.extend_from_slice(extra);
        Env::fake(&vars, "h", true)
    }

    #[test]
    fn the_token_url_joins_authority_and_tenant_without_double_slashes() {
        let net = Net::new(Clock::virtual_clock());
        let found = detect(
            &env(&[(AUTHORITY_ENV, "https://login.microsoftonline.com/")]),
            &Selector::Default,
            &net,
        )
        .unwrap();
        let Found::Here { source, .. } = found else {
            panic!()
        };
        assert_eq!(
            source.token_url.as_str(),
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"
        );
        // --client-id wins over AZURE_CLIENT_ID.
        let Found::Here { source, .. } =
            detect(&env(&[]), &Selector::ClientId("abc-def".into()), &net).unwrap()
        else {
            panic!()
        };
        assert_eq!(source.client_id, "abc-def");
    }

    #[test]
    fn the_assertion_is_read_again_for_every_request() {
        let net = Net::new(Clock::virtual_clock());
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("token");
        std::fs::write(&file, "first\n").unwrap();
        let e = Env::fake(
            &[
                (TOKEN_FILE_ENV, file.to_str().unwrap()),
                (TENANT_ENV, "t"),
                (CLIENT_ID_ENV, "c"),
            ],
            "h",
            true,
        );
        let Found::Here { source, .. } = detect(&e, &Selector::Default, &net).unwrap() else {
            panic!()
        };
        assert_eq!(source.assertion().unwrap().expose(), "first");
        // The kubelet rotated it.
        std::fs::write(&file, "second").unwrap();
        assert_eq!(source.assertion().unwrap().expose(), "second");
        std::fs::write(&file, "").unwrap();
        assert!(source.assertion().is_err());
    }

    #[test]
    fn a_missing_variable_is_named() {
        let net = Net::new(Clock::virtual_clock());
        let e = Env::fake(&[(TOKEN_FILE_ENV, "/t")], "h", true);
        let Found::Absent(why) = detect(&e, &Selector::Default, &net).unwrap() else {
            panic!()
        };
        assert_eq!(why, "AZURE_TENANT_ID, AZURE_CLIENT_ID are not set");
        let e = detect(
            &env(&[(AUTHORITY_ENV, "http://login.example.com/")]),
            &Selector::Default,
            &net,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains(AUTHORITY_ENV), "{e}");
        let e = detect(&env(&[]), &Selector::ObjectId("o".into()), &net)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--object-id"), "{e}");
    }
}
