//! IMDS, the Instance Metadata Service of Azure VMs, scale-set instances and ACI (`identity.md` §1):
//! `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with `Metadata: true`,
//! never through a proxy, retried by the IMDS column of the table in [`crate::net::retry`]. Also the
//! VM id (to tell a clone from the machine that configured the agent) and the one-second probe the
//! auto chain uses to learn whether this is an Azure VM at all (§1.6).

use std::time::Duration;

use url::Url;

use super::{AccessToken, IdentityError, Selector, parse_token};
use crate::clock::Budget;
use crate::env::Env;
use crate::net::{Answer, Net, Service};

/// The base URL of IMDS; [`IMDS_BASE_ENV`] replaces it.
pub const DEFAULT_IMDS_BASE: &str = "http://169.254.169.254";
/// The override MSAL and azure-identity honour; the simulator and the tests use it.
pub const IMDS_BASE_ENV: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
const IMDS_API_VERSION: &str = "2018-02-01";
/// How long the auto chain waits for any answer from IMDS (azidentity: 1 s, no retry).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const SOURCE: &str = "IMDS";

/// How one IMDS request is sent; [`Net`] in the binary, scripted answers in unit tests.
pub trait Transport: Send + Sync {
    /// A request with `Metadata: true`.
    fn get(&self, url: &Url) -> impl Future<Output = Result<Answer, String>> + Send;
    /// A request without `Metadata` and with a short timeout: IMDS answers it with 400, anything
    /// else on 169.254.169.254 with something; nothing answers where there is no IMDS.
    fn probe(&self, url: &Url) -> impl Future<Output = Result<u16, String>> + Send;
}

impl Transport for Net {
    async fn get(&self, url: &Url) -> Result<Answer, String> {
        self.fetch(
            self.client(Service::Imds)
                .get(url.clone())
                .header("Metadata", "true"),
        )
        .await
        .map_err(|f| f.detail)
    }

    async fn probe(&self, url: &Url) -> Result<u16, String> {
        let request = self
            .client(Service::Imds)
            .get(url.clone())
            .timeout(PROBE_TIMEOUT);
        self.fetch(request)
            .await
            .map(|a| a.status)
            .map_err(|f| f.detail)
    }
}

pub struct ImdsClient<T: Transport = Net> {
    base: Url,
    transport: T,
    net: Net,
}

impl ImdsClient<Net> {
    pub fn from_env(env: &Env, net: &Net) -> Result<Self, IdentityError> {
        Self::new(env, net.clone(), net)
    }
}

impl<T: Transport> ImdsClient<T> {
    pub fn new(env: &Env, transport: T, net: &Net) -> Result<Self, IdentityError> {
        let raw = env.var(IMDS_BASE_ENV).unwrap_or(DEFAULT_IMDS_BASE);
        let base = Url::parse(raw).map_err(|_| IdentityError::BadSetting {
            name: IMDS_BASE_ENV.into(),
            value: raw.to_owned(),
            problem: "not a valid URL".into(),
        })?;
        Ok(Self {
            base,
            transport,
            net: net.clone(),
        })
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Where IMDS is, for messages.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The VM's id from the instance metadata, or `None` (not on Azure, IMDS slow): one quick try,
    /// used only to tell a clone from the machine that configured the agent.
    pub async fn vm_id(&self) -> Option<String> {
        let mut url = self.base.clone();
        url.set_path("/metadata/instance/compute/vmId");
        url.set_query(Some("api-version=2021-02-01&format=text"));
        let get = self.transport.get(&url);
        let r = tokio::time::timeout(Duration::from_secs(3), get)
            .await
            .ok()?
            .ok()?;
        let id = r.body.trim();
        (r.status == 200 && !id.is_empty() && id.len() <= 64).then(|| id.to_owned())
    }

    /// Whether anything answers at IMDS within [`PROBE_TIMEOUT`]: `Err` says what happened.
    pub async fn probe(&self) -> Result<(), String> {
        let url = self.token_url(&Selector::Default);
        match tokio::time::timeout(PROBE_TIMEOUT * 2, self.transport.probe(&url)).await {
            Ok(Ok(_status)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        }
    }

    pub fn token_url(&self, selector: &Selector) -> Url {
        let mut url = self.base.clone();
        url.set_path("/metadata/identity/oauth2/token");
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            q.append_pair("api-version", IMDS_API_VERSION);
            q.append_pair("resource", super::AZURE_DEVOPS_RESOURCE);
            if let Some((k, v)) = selector.query(super::SelectorNames::IMDS) {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// Gets a token for Azure DevOps, retrying per the table within `budget`.
    #[tracing::instrument(skip_all, fields(selector = ?selector))]
    pub async fn token(
        &self,
        selector: &Selector,
        budget: Budget,
    ) -> Result<AccessToken, IdentityError> {
        let url = self.token_url(selector);
        let shown = super::url_without_query(&url);
        let outcome = self
            .net
            .retry("IMDS token", budget, async |_| {
                let answer = self
                    .transport
                    .get(&url)
                    .await
                    .map_err(|detail| crate::net::Failed {
                        detail,
                        blocked: None,
                    });
                let now = self.net.clock().unix_now();
                self.net.settle(
                    Service::Imds,
                    answer,
                    |a| parse_token(SOURCE, &a.body, &shown, now),
                    |a| Err(fatal_error(a, selector, &shown)),
                )
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(g) => Err(IdentityError::gave_up(
                SOURCE,
                &shown,
                "is this an Azure VM with a managed identity? IMDS must be reachable without a \
                 proxy",
                g,
            )),
        }
    }
}

fn fatal_error(r: Answer, selector: &Selector, url: &str) -> IdentityError {
    let detail = super::error_detail(&r.body);
    match (r.status, selector) {
        (400, Selector::Default) => IdentityError::NoIdentity { detail },
        (400, s) => IdentityError::SelectedIdentityNotAssigned {
            place: "VM",
            selector: s.describe(),
            detail,
        },
        (status, _) => IdentityError::Refused {
            source_name: SOURCE,
            url: url.to_owned(),
            status,
            detail,
            hint: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IMDS_BUDGET, Source, Tokens};
    use super::*;
    use crate::clock::Clock;
    use std::sync::Mutex;

    struct Scripted {
        answers: Mutex<Vec<Result<Answer, String>>>,
        seen: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(mut answers: Vec<Result<Answer, String>>) -> Self {
            answers.reverse();
            Self {
                answers: Mutex::new(answers),
                seen: Mutex::new(vec![]),
            }
        }
    }

    impl Transport for &Scripted {
        async fn get(&self, url: &Url) -> Result<Answer, String> {
            self.seen.lock().unwrap().push(url.to_string());
            self.answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| Err("no more answers".into()))
        }

        async fn probe(&self, url: &Url) -> Result<u16, String> {
            self.get(url).await.map(|a| a.status)
        }
    }

    fn status(status: u16, body: &str) -> Result<Answer, String> {
        Ok(Answer {
            status,
            headers: Default::default(),
            body: body.to_owned(),
        })
    }

    const OK: &str = r#"{"access_token":"tok-123456789","expires_in":"86399","expires_on":"1900000000","token_type":"Bearer"}"#;

    fn client(s: &Scripted, clock: Clock) -> ImdsClient<&Scripted> {
        let env = Env::fake(&[(IMDS_BASE_ENV, "http://127.0.0.1:9")], "h", true);
        ImdsClient::new(&env, s, &Net::new(clock)).unwrap()
    }

    fn budget(clock: &Clock) -> Budget {
        clock.budget(IMDS_BUDGET)
    }

    #[tokio::test]
    async fn request_carries_resource_version_and_one_selector() {
        let s = Scripted::new(vec![status(200, OK)]);
        let clock = Clock::virtual_clock();
        let c = client(&s, clock.clone());
        let t = c
            .token(
                &Selector::ResourceId("/subscriptions/x/rg".into()),
                budget(&clock),
            )
            .await
            .unwrap();
        assert_eq!(t.token.expose(), "tok-123456789");
        assert_eq!(t.expires_on, Some(1_900_000_000));
        let seen = s.seen.lock().unwrap();
        let url = Url::parse(&seen[0]).unwrap();
        assert_eq!(url.path(), "/metadata/identity/oauth2/token");
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            q,
            vec![
                ("api-version".into(), "2018-02-01".into()),
                (
                    "resource".into(),
                    super::super::AZURE_DEVOPS_RESOURCE.into()
                ),
                ("msi_res_id".into(), "/subscriptions/x/rg".into()),
            ]
        );
    }

    #[tokio::test]
    async fn transient_answers_are_retried_on_the_injected_clock() {
        let mut throttled = status(429, "").unwrap();
        throttled
            .headers
            .insert("retry-after", "7".parse().unwrap());
        let s = Scripted::new(vec![
            status(404, ""),
            status(410, ""),
            Err("connection refused".into()),
            status(503, ""),
            Ok(throttled),
            status(200, OK),
        ]);
        let clock = Clock::virtual_clock();
        let start = clock.now();
        let c = client(&s, clock.clone());
        let real = std::time::Instant::now();
        c.token(&Selector::Default, budget(&clock)).await.unwrap();
        assert_eq!(s.seen.lock().unwrap().len(), 6);
        // 404: 0.5–1 s; 410: 10–11 s; refused: 1–2 s (backoff, attempt 3: 2–4 s); 503: 4–8 s;
        // 429: 7–7.7 s. All virtual.
        let waited = clock.elapsed(start);
        assert!(
            waited >= Duration::from_secs(19) && waited <= Duration::from_secs(32),
            "{waited:?}"
        );
        assert!(real.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn bad_request_is_not_retried_and_explained() {
        let body = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        let s = Scripted::new(vec![status(400, body), status(200, OK)]);
        let clock = Clock::virtual_clock();
        let c = client(&s, clock.clone());
        let e = c
            .token(&Selector::Default, budget(&clock))
            .await
            .unwrap_err();
        assert!(matches!(e, IdentityError::NoIdentity { .. }));
        assert!(e.to_string().contains("no managed identity is assigned"));
        assert_eq!(s.seen.lock().unwrap().len(), 1);

        let s = Scripted::new(vec![status(400, body)]);
        let c = client(&s, clock.clone());
        let e = c
            .token(&Selector::ClientId("abc".into()), budget(&clock))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("the selected identity is not assigned")
        );
        assert!(e.to_string().contains("--client-id abc"));
    }

    #[tokio::test]
    async fn gives_up_after_the_budget() {
        let answers = (0..1000).map(|_| status(410, "")).collect();
        let s = Scripted::new(answers);
        let clock = Clock::virtual_clock();
        let c = client(&s, clock.clone());
        let e = c
            .token(&Selector::Default, budget(&clock))
            .await
            .unwrap_err();
        match e {
            IdentityError::Unavailable {
                attempts, elapsed, ..
            } => {
                assert_eq!(elapsed, IMDS_BUDGET);
                assert!((11..=13).contains(&attempts), "{attempts}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn numbers_may_be_strings_or_ints() {
        let s = Scripted::new(vec![status(
            200,
            r#"{"access_token":"tok-abcdefgh","expires_on":1900000001}"#,
        )]);
        let clock = Clock::virtual_clock();
        let c = client(&s, clock.clone());
        assert_eq!(
            c.token(&Selector::Default, budget(&clock))
                .await
                .unwrap()
                .expires_on,
            Some(1_900_000_001)
        );
    }

    #[tokio::test]
    async fn token_is_not_in_debug_output() {
        let s = Scripted::new(vec![status(200, OK)]);
        let clock = Clock::virtual_clock();
        let c = client(&s, clock.clone());
        let t = c.token(&Selector::Default, budget(&clock)).await.unwrap();
        assert!(!format!("{t:?}").contains("tok-123456789"));
    }

    #[tokio::test]
    async fn tokens_are_refreshed_before_they_expire() {
        let clock = Clock::virtual_clock();
        let in_400s = |name: &str| {
            status(
                200,
                &format!(
                    r#"{{"access_token":"{name}","expires_on":"{}"}}"#,
                    clock.unix_now() + 400
                ),
            )
        };
        let s = Scripted::new(vec![in_400s("first-token-1"), in_400s("second-token")]);
        let tokens = Tokens::new(Source::Imds {
            client: client(&s, clock.clone()),
            selector: Selector::Default,
        });
        let b = clock.budget(Duration::from_secs(3600));
        assert_eq!(tokens.get(&b).await.unwrap().expose(), "first-token-1");
        clock.sleep(Duration::from_secs(60)).await;
        assert_eq!(tokens.get(&b).await.unwrap().expose(), "first-token-1");
        assert_eq!(
            s.seen.lock().unwrap().len(),
            1,
            "cached while it has time left"
        );
        clock.sleep(Duration::from_secs(60)).await;
        // 280 s left: less than the margin.
        assert_eq!(tokens.get(&b).await.unwrap().expose(), "second-token");
        assert_eq!(
            tokens.masker().mask("first-token-1 second-token"),
            "*** ***"
        );
    }
}
