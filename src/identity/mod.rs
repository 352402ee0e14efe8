//! Access tokens for Azure DevOps from the machine's managed identity.
//!
//! On an Azure VM or scale-set instance the token comes from the Instance Metadata Service (IMDS,
//! `identity.md` §1): `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with
//! `Metadata: true`, never through a proxy, retried by the IMDS column of the table in
//! [`crate::net::retry`]. The token is held in a [`Secret`] from the moment it is parsed.
//!
//! [`Tokens`] hands the token to the rest of the run and fetches a new one when the cached one is
//! within [`REFRESH_MARGIN`] of its expiry (a long download, `remove` waiting for a busy agent), so
//! no request is ever sent with a token about to lapse.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::clock::Budget;
use crate::env::Env;
use crate::net::{Answer, Net, Service};
use crate::secret::{Masker, Secret};

/// How long one token request may retry when the caller's budget allows it (`identity.md` §1.4:
/// at provisioning, identity assignment propagates asynchronously).
pub const IMDS_BUDGET: Duration = Duration::from_secs(120);
/// A token is replaced once less than this is left of its life.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Azure DevOps' application id, sent as the v1 `resource` (`identity.md` §0).
pub const AZURE_DEVOPS_RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
pub const DEFAULT_IMDS_BASE: &str = "http://169.254.169.254";
/// The override MSAL and azure-identity honour; the simulator and the tests use it.
pub const IMDS_BASE_ENV: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
const IMDS_API_VERSION: &str = "2018-02-01";

/// Which identity to ask for. At most one selector; none means the VM's default identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Default,
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

impl Selector {
    /// The IMDS query parameter for this selector (`msi_res_id` for resource ids, §1.1).
    fn query(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Default => None,
            Self::ClientId(v) => Some(("client_id", v)),
            Self::ObjectId(v) => Some(("object_id", v)),
            Self::ResourceId(v) => Some(("msi_res_id", v)),
        }
    }

    /// The IMDS parameter form saved for later runs (`client_id=…`), or `None` for the default.
    pub fn to_saved(&self) -> Option<String> {
        self.query().map(|(k, v)| format!("{k}={v}"))
    }

    /// The inverse of [`Selector::to_saved`].
    pub fn from_saved(saved: Option<&str>) -> Self {
        match saved.and_then(|s| s.split_once('=')) {
            Some(("client_id", v)) => Self::ClientId(v.to_owned()),
            Some(("object_id", v)) => Self::ObjectId(v.to_owned()),
            Some(("msi_res_id", v)) => Self::ResourceId(v.to_owned()),
            _ => Self::Default,
        }
    }

    /// How the selector is named to a user: the flag that set it.
    pub fn describe(&self) -> String {
        match self {
            Self::Default => "the VM's default managed identity".to_owned(),
            Self::ClientId(v) => format!("the identity with --client-id {v}"),
            Self::ObjectId(v) => format!("the identity with --object-id {v}"),
            Self::ResourceId(v) => format!("the identity with --resource-id {v}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "no managed identity is assigned to this VM (IMDS answered 400: {detail})\n\
         hint: assign a system-assigned or user-assigned managed identity to the VM, or select one \
         with --client-id, --object-id or --resource-id"
    )]
    NoIdentity { detail: String },
    #[error(
        "the selected identity is not assigned to this VM: {selector} (IMDS answered 400: {detail})\n\
         hint: check the id, and that this user-assigned identity is attached to the VM or scale set"
    )]
    SelectedIdentityNotAssigned { selector: String, detail: String },
    #[error("IMDS at {url} refused the token request with HTTP {status}: {detail}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "no token from IMDS at {url} after {attempts} attempts in {elapsed:?}: {last}\n\
         hint: is this an Azure VM with a managed identity? IMDS must be reachable without a proxy"
    )]
    Unavailable {
        url: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    #[error("IMDS at {url} returned a token response that could not be read: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("{name} is not a valid URL: {value}")]
    BadBaseUrl { name: &'static str, value: String },
}

/// A token with its expiry (Unix seconds), as IMDS gave it.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_on: Option<u64>,
}

/// How one IMDS request is sent; [`Net`] in the binary, scripted answers in unit tests.
pub trait Transport: Send + Sync {
    fn get(&self, url: &Url) -> impl Future<Output = Result<Answer, String>> + Send;
}

impl Transport for Net {
    async fn get(&self, url: &Url) -> Result<Answer, String> {
        self.fetch(
            self.client(Service::Imds)
                .get(url.clone())
                .header("Metadata", "true"),
        )
        .await
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
        let base = Url::parse(raw).map_err(|_| IdentityError::BadBaseUrl {
            name: IMDS_BASE_ENV,
            value: raw.to_owned(),
        })?;
        Ok(Self {
            base,
            transport,
            net: net.clone(),
        })
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

    pub fn token_url(&self, selector: &Selector) -> Url {
        let mut url = self.base.clone();
        url.set_path("/metadata/identity/oauth2/token");
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            q.append_pair("api-version", IMDS_API_VERSION);
            q.append_pair("resource", AZURE_DEVOPS_RESOURCE);
            if let Some((k, v)) = selector.query() {
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
        let shown = url_without_query(&url);
        let outcome = self
            .net
            .retry("IMDS token", budget, async |_| {
                let answer = self.transport.get(&url).await;
                let now = self.net.clock().unix_now();
                self.net.settle(
                    Service::Imds,
                    answer,
                    |a| parse_token(&a.body, &shown, now),
                    |a| Err(fatal_error(a, selector, &shown)),
                )
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(g) => Err(IdentityError::Unavailable {
                url: shown,
                attempts: g.attempts,
                elapsed: g.elapsed,
                last: g.last,
            }),
        }
    }
}

/// The run's Azure DevOps token: fetched once, reused while it has more than [`REFRESH_MARGIN`]
/// to live, fetched again after that. Every token it hands out is added to its [`Masker`].
pub struct Tokens<T: Transport = Net> {
    imds: ImdsClient<T>,
    selector: Selector,
    cached: tokio::sync::Mutex<Option<(AccessToken, u64)>>,
    masker: Masker,
}

impl<T: Transport> Tokens<T> {
    pub fn new(imds: ImdsClient<T>, selector: Selector) -> Self {
        Self {
            imds,
            selector,
            cached: tokio::sync::Mutex::new(None),
            masker: Masker::new(),
        }
    }

    pub fn imds(&self) -> &ImdsClient<T> {
        &self.imds
    }

    /// Masks every token this source has handed out (shared: later tokens are masked too).
    pub fn masker(&self) -> Masker {
        self.masker.clone()
    }

    /// A token with at least [`REFRESH_MARGIN`] to live; IMDS is asked within `budget`.
    pub async fn get(&self, budget: &Budget) -> Result<Secret, IdentityError> {
        let clock = self.imds.net.clock().clone();
        let mut cached = self.cached.lock().await;
        let now = clock.unix_now();
        if let Some((t, fetched_at)) = cached.as_ref() {
            // Unknown expiry: trust it for ten minutes.
            let expires = t.expires_on.unwrap_or(fetched_at + 600);
            if expires.saturating_sub(now) > REFRESH_MARGIN.as_secs() {
                return Ok(t.token.clone());
            }
            tracing::info!(
                left_s = expires.saturating_sub(now),
                "the Azure DevOps token is about to expire; getting a new one"
            );
        }
        let fresh = self
            .imds
            .token(&self.selector, budget.sub(&clock, IMDS_BUDGET))
            .await?;
        self.masker.add(&fresh.token);
        let token = fresh.token.clone();
        *cached = Some((fresh, now));
        Ok(token)
    }
}

fn url_without_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// `error: error_description` from an IMDS error body, or the body itself (shortened).
fn error_detail(body: &str) -> String {
    if let Ok(ErrorBody {
        error,
        error_description,
    }) = serde_json::from_str::<ErrorBody>(body)
    {
        let parts: Vec<String> = [error, error_description].into_iter().flatten().collect();
        if !parts.is_empty() {
            return parts.join(": ");
        }
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        "empty body".to_owned()
    } else {
        trimmed.chars().take(300).collect()
    }
}

fn fatal_error(r: Answer, selector: &Selector, url: &str) -> IdentityError {
    let detail = error_detail(&r.body);
    match (r.status, selector) {
        (400, Selector::Default) => IdentityError::NoIdentity { detail },
        (400, s) => IdentityError::SelectedIdentityNotAssigned {
            selector: s.describe(),
            detail,
        },
        (status, _) => IdentityError::Refused {
            url: url.to_owned(),
            status,
            detail,
        },
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

fn number(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_token(body: &str, url: &str, now: u64) -> Result<AccessToken, IdentityError> {
    let parsed: TokenBody = serde_json::from_str(body).map_err(|e| IdentityError::BadResponse {
        url: url.to_owned(),
        detail: e.to_string(),
    })?;
    let token = parsed
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| IdentityError::BadResponse {
            url: url.to_owned(),
            detail: "no access_token in the response".to_owned(),
        })?;
    // Prefer expires_on (absolute); fall back to expires_in (identity.md §1.2).
    let expires_on = parsed
        .expires_on
        .as_ref()
        .and_then(number)
        .or_else(|| parsed.expires_in.as_ref().and_then(number).map(|s| now + s));
    Ok(AccessToken {
        token: Secret::new(token.trim()),
        expires_on,
    })
}

#[cfg(test)]
mod tests {
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
                ("resource".into(), AZURE_DEVOPS_RESOURCE.into()),
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
        let tokens = Tokens::new(client(&s, clock.clone()), Selector::Default);
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
