//! App Service, Functions and Container Apps (jobs included): the platform's identity endpoint
//! (`identity.md` §2).
//!
//! `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=…[&client_id|principal_id|mi_res_id]`
//! with `X-IDENTITY-HEADER: $IDENTITY_HEADER`. The header is a secret the platform rotates: it is
//! read from the environment when the source is resolved, held as a [`Secret`] and masked. The
//! endpoint is on the machine (plain http only to loopback), so no proxy is used. A user-assigned
//! identity by resource id is `mi_res_id` here; `msi_res_id`, IMDS's name, is ignored by App Service.

use url::Url;

use super::{
    AccessToken, Found, IdentityError, Selector, SelectorNames, check_endpoint, parse_token,
};
use crate::clock::Budget;
use crate::env::Env;
use crate::net::{Answer, Net, Service};
use crate::secret::Secret;

pub(crate) const ENDPOINT_ENV: &str = "IDENTITY_ENDPOINT";
pub(crate) const HEADER_ENV: &str = "IDENTITY_HEADER";
const API_VERSION: &str = "2019-08-01";
const SOURCE: &str = "the App Service identity endpoint";

pub struct AppService {
    endpoint: Url,
    pub(super) header: Secret,
    pub(super) selector: Selector,
    pub(super) net: Net,
}

/// Whether this environment has the App Service endpoint (`IDENTITY_ENDPOINT` and
/// `IDENTITY_HEADER`).
pub(crate) fn detect(
    env: &Env,
    selector: &Selector,
    net: &Net,
) -> Result<Found<AppService>, IdentityError> {
    let (endpoint, header) = match (env.var(ENDPOINT_ENV), env.var(HEADER_ENV)) {
        (Some(e), Some(h)) => (e, h),
        (Some(_), None) => {
            return Ok(Found::Absent(format!(
                "{ENDPOINT_ENV} is set, {HEADER_ENV} is not"
            )));
        }
        (None, Some(_)) => {
            return Ok(Found::Absent(format!(
                "{HEADER_ENV} is set, {ENDPOINT_ENV} is not"
            )));
        }
        (None, None) => {
            return Ok(Found::Absent(format!(
                "{ENDPOINT_ENV} and {HEADER_ENV} are not set"
            )));
        }
    };
    Ok(Found::Here {
        source: AppService {
            endpoint: check_endpoint(ENDPOINT_ENV, endpoint)?,
            header: Secret::new(header.trim()),
            selector: selector.clone(),
            net: net.clone(),
        },
        why: format!("{ENDPOINT_ENV} and {HEADER_ENV} are set"),
    })
}

impl AppService {
    pub fn describe(&self) -> String {
        format!(
            "the App Service / Container Apps identity endpoint {} ({})",
            super::url_without_query(&self.endpoint),
            self.selector.describe()
        )
    }

    pub fn token_url(&self) -> Url {
        let mut url = self.endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", API_VERSION);
            q.append_pair("resource", super::AZURE_DEVOPS_RESOURCE);
            if let Some((k, v)) = self.selector.query(SelectorNames::APP_SERVICE) {
                q.append_pair(k, v);
            }
        }
        url
    }

    pub async fn token(&self, budget: Budget) -> Result<AccessToken, IdentityError> {
        let url = self.token_url();
        let shown = super::url_without_query(&url);
        let outcome = self
            .net
            .retry("App Service token", budget, async |_| {
                let request = self
                    .net
                    .client(Service::LocalIdentity)
                    .get(url.clone())
                    .header("X-IDENTITY-HEADER", self.header.expose());
                let answer = self.net.fetch(request).await;
                let now = self.net.clock().unix_now();
                self.net.settle(
                    Service::LocalIdentity,
                    answer,
                    |a| parse_token(SOURCE, &a.body, &shown, now),
                    |a| Err(self.refusal(a, &shown)),
                )
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(g) => Err(IdentityError::gave_up(
                SOURCE,
                &shown,
                "is the app's managed identity turned on (Identity blade, or `az containerapp \
                 identity assign`)?",
                g,
            )),
        }
    }

    fn refusal(&self, a: Answer, url: &str) -> IdentityError {
        let detail = super::error_detail(&a.body);
        match (a.status, &self.selector) {
            (400 | 404, s) if *s != Selector::Default => {
                IdentityError::SelectedIdentityNotAssigned {
                    place: "app",
                    selector: s.describe(),
                    detail,
                }
            }
            (status, _) => IdentityError::Refused {
                source_name: SOURCE,
                url: url.to_owned(),
                status,
                detail,
                hint: if status == 401 || status == 403 {
                    format!(
                        "\nhint: {HEADER_ENV} is rotated by the platform; run agent-bootstrap \
                         with the environment the platform gives the process"
                    )
                } else {
                    String::new()
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn detection_names_what_is_missing() {
        let net = Net::new(Clock::virtual_clock());
        let env = Env::fake(&[(ENDPOINT_ENV, "http://localhost:1/msi/token")], "h", true);
        let Found::Absent(why) = detect(&env, &Selector::Default, &net).unwrap() else {
            panic!("found without a header")
        };
        assert!(why.contains(HEADER_ENV), "{why}");
        let env = Env::fake(
            &[
                (ENDPOINT_ENV, "http://10.1.2.3/msi/token"),
                (HEADER_ENV, "h"),
            ],
            "h",
            true,
        );
        assert!(detect(&env, &Selector::Default, &net).is_err());
    }

    #[test]
    fn the_request_uses_app_service_names_for_selectors() {
        let net = Net::new(Clock::virtual_clock());
        let env = Env::fake(
            &[
                (ENDPOINT_ENV, "http://localhost:42356/msi/token"),
                (HEADER_ENV, "secret-header"),
            ],
            "h",
            true,
        );
        let Found::Here { source: a, .. } =
            detect(&env, &Selector::ResourceId("/sub/x".into()), &net).unwrap()
        else {
            panic!("not found")
        };
        let url = a.token_url();
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            q,
            vec![
                ("api-version".into(), "2019-08-01".into()),
                (
                    "resource".into(),
                    super::super::AZURE_DEVOPS_RESOURCE.into()
                ),
                ("mi_res_id".into(), "/sub/x".into()),
            ]
        );
        assert!(!a.describe().contains("secret-header"));
    }
}
