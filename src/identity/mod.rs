//! Access tokens for Azure DevOps from the machine's managed identity.
//!
//! On an Azure VM or scale-set instance the token comes from the Instance Metadata Service (IMDS,
//! `identity.md` §1): `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with
//! `Metadata: true`, never through a proxy, retried by the table in [`retry`]. The token is held in a
//! [`Secret`] from the moment it is parsed.

pub mod retry;

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::clock::Clock;
use crate::env::Env;
use crate::secret::Secret;
use retry::{Class, Policy};

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

/// One raw HTTP answer, or a transport failure.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// How one request is sent; the real one uses reqwest, tests script answers.
pub trait Transport {
    fn get(&self, url: &Url) -> impl Future<Output = Result<RawResponse, String>> + Send;
}

pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            // "IMDS isn't intended to be used behind a proxy" (identity.md §1.1).
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("static reqwest configuration is valid");
        Self { client }
    }
}

impl Default for ReqwestTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for ReqwestTransport {
    async fn get(&self, url: &Url) -> Result<RawResponse, String> {
        let response = self
            .client
            .get(url.clone())
            .header("Metadata", "true")
            .send()
            .await
            .map_err(|e| crate::error::one_line(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_retry_after);
        let body = response
            .text()
            .await
            .map_err(|e| crate::error::one_line(&e))?;
        Ok(RawResponse {
            status,
            retry_after,
            body,
        })
    }
}

pub struct ImdsClient<T: Transport> {
    base: Url,
    transport: T,
    clock: Clock,
    policy: Policy,
}

impl ImdsClient<ReqwestTransport> {
    pub fn from_env(env: &Env, clock: Clock) -> Result<Self, IdentityError> {
        Self::new(env, ReqwestTransport::new(), clock)
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
}

impl<T: Transport> ImdsClient<T> {
    pub fn new(env: &Env, transport: T, clock: Clock) -> Result<Self, IdentityError> {
        let raw = env.var(IMDS_BASE_ENV).unwrap_or(DEFAULT_IMDS_BASE);
        let base = Url::parse(raw).map_err(|_| IdentityError::BadBaseUrl {
            name: IMDS_BASE_ENV,
            value: raw.to_owned(),
        })?;
        Ok(Self {
            base,
            transport,
            clock,
            policy: Policy::default(),
        })
    }

    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
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

    /// Gets a token for Azure DevOps, retrying per [`retry`] within the policy's budget.
    #[tracing::instrument(skip_all, fields(selector = ?selector))]
    pub async fn token(&self, selector: &Selector) -> Result<AccessToken, IdentityError> {
        let url = self.token_url(selector);
        let shown = url_without_query(&url);
        let start = self.clock.now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (class, retry_after, last) = match self.transport.get(&url).await {
                Ok(r) => {
                    let class = retry::classify_status(r.status);
                    match class {
                        Class::Success => return parse_token(&r.body, &shown),
                        Class::Fatal => return Err(fatal_error(r, selector, &shown)),
                        _ => (
                            class,
                            r.retry_after,
                            format!("HTTP {}: {}", r.status, error_detail(&r.body)),
                        ),
                    }
                }
                Err(e) => (Class::Backoff, None, e),
            };
            let elapsed = self.clock.elapsed(start);
            match self.policy.next_delay(class, attempt, retry_after, elapsed) {
                Some(delay) => {
                    tracing::warn!(
                        attempt,
                        "IMDS not ready ({last}); retrying in {:.1}s",
                        delay.as_secs_f32()
                    );
                    self.clock.sleep(delay).await;
                }
                None => {
                    return Err(IdentityError::Unavailable {
                        url: shown,
                        attempts: attempt,
                        elapsed,
                        last,
                    });
                }
            }
        }
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

fn fatal_error(r: RawResponse, selector: &Selector, url: &str) -> IdentityError {
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

fn parse_token(body: &str, url: &str) -> Result<AccessToken, IdentityError> {
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
    let expires_on = parsed.expires_on.as_ref().and_then(number).or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        parsed.expires_in.as_ref().and_then(number).map(|s| now + s)
    });
    Ok(AccessToken {
        token: Secret::new(token.trim()),
        expires_on,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Scripted {
        answers: Mutex<Vec<Result<RawResponse, String>>>,
        seen: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(mut answers: Vec<Result<RawResponse, String>>) -> Self {
            answers.reverse();
            Self {
                answers: Mutex::new(answers),
                seen: Mutex::new(vec![]),
            }
        }
    }

    impl Transport for &Scripted {
        async fn get(&self, url: &Url) -> Result<RawResponse, String> {
            self.seen.lock().unwrap().push(url.to_string());
            self.answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| Err("no more answers".into()))
        }
    }

    fn status(status: u16, body: &str) -> Result<RawResponse, String> {
        Ok(RawResponse {
            status,
            retry_after: None,
            body: body.to_owned(),
        })
    }

    const OK: &str = r#"{"access_token":"tok-123456789","expires_in":"86399","expires_on":"1900000000","token_type":"Bearer"}"#;

    fn client(s: &Scripted, clock: Clock) -> ImdsClient<&Scripted> {
        let env = Env::fake(&[(IMDS_BASE_ENV, "http://127.0.0.1:9")], "h", true);
        ImdsClient::new(&env, s, clock).unwrap()
    }

    #[tokio::test]
    async fn request_carries_resource_version_and_one_selector() {
        let s = Scripted::new(vec![status(200, OK)]);
        let c = client(&s, Clock::virtual_clock());
        let t = c
            .token(&Selector::ResourceId("/subscriptions/x/rg".into()))
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
        let s = Scripted::new(vec![
            status(404, ""),
            status(410, ""),
            Err("connection refused".into()),
            status(503, ""),
            Ok(RawResponse {
                status: 429,
                retry_after: Some(Duration::from_secs(7)),
                body: String::new(),
            }),
            status(200, OK),
        ]);
        let clock = Clock::virtual_clock();
        let start = clock.now();
        let c = client(&s, clock.clone());
        let real = std::time::Instant::now();
        c.token(&Selector::Default).await.unwrap();
        assert_eq!(s.seen.lock().unwrap().len(), 6);
        // 1 (404) + 10 (410) + 4 (connect) + 8 (503) + 7 (Retry-After) seconds, all virtual.
        assert_eq!(clock.elapsed(start), Duration::from_secs(30));
        assert!(real.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn bad_request_is_not_retried_and_explained() {
        let body = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        let s = Scripted::new(vec![status(400, body), status(200, OK)]);
        let c = client(&s, Clock::virtual_clock());
        let e = c.token(&Selector::Default).await.unwrap_err();
        assert!(matches!(e, IdentityError::NoIdentity { .. }));
        assert!(e.to_string().contains("no managed identity is assigned"));
        assert_eq!(s.seen.lock().unwrap().len(), 1);

        let s = Scripted::new(vec![status(400, body)]);
        let c = client(&s, Clock::virtual_clock());
        let e = c
            .token(&Selector::ClientId("abc".into()))
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
        let e = c.token(&Selector::Default).await.unwrap_err();
        match e {
            IdentityError::Unavailable {
                attempts, elapsed, ..
            } => {
                assert_eq!(elapsed, Policy::default().budget);
                assert_eq!(attempts, 13);
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
        let c = client(&s, Clock::virtual_clock());
        assert_eq!(
            c.token(&Selector::Default).await.unwrap().expires_on,
            Some(1_900_000_001)
        );
    }

    #[tokio::test]
    async fn token_is_not_in_debug_output() {
        let s = Scripted::new(vec![status(200, OK)]);
        let c = client(&s, Clock::virtual_clock());
        let t = c.token(&Selector::Default).await.unwrap();
        assert!(!format!("{t:?}").contains("tok-123456789"));
    }
}
