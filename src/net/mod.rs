//! One network policy for every HTTP request agent-bootstrap makes.
//!
//! IMDS, Azure DevOps and the download host are reached through one [`Net`]: two HTTP clients
//! built in one place (one that never uses a proxy, for identity endpoints on the machine; one for
//! the internet) and one retry driver ([`Net::retry`]) that applies the table in [`retry`] within a
//! [`Budget`] for the whole operation, not per request. Throttling answers are honoured: a
//! `Retry-After` (seconds or a date) is waited out, else `X-RateLimit-Reset`; the rate-limit headers
//! Azure DevOps sends are shown in the log. Waits get jitter so a scale set booting a hundred
//! instances does not retry in lockstep.

pub mod proxy;
pub mod retry;
pub mod tls;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::clock::{Budget, Clock};
pub use proxy::Network;
pub use retry::{Class, Policy, Service};

/// A connection retrying cannot fix: a certificate that is not trusted, a proxy that wants
/// credentials or will not connect. The message names what refused and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error(
        "the TLS certificate of {host} is not trusted ({reason}): subject '{subject}', issued by \
         '{issuer}'\nhint: {hint}"
    )]
    Certificate {
        host: String,
        reason: String,
        subject: String,
        issuer: String,
        hint: String,
    },
    #[error(
        "the proxy {proxy} asked for credentials (HTTP 407){given}\nhint: pass --proxy-user and \
         the password in AGENT_BOOTSTRAP_PROXY_PASSWORD or --proxy-password-file"
    )]
    ProxyAuth { proxy: String, given: String },
    #[error(
        "the proxy {proxy} refused to connect to {target} (its answer to CONNECT was not 200)\n\
         hint: allow {target} on the proxy, or list the host in NO_PROXY if it is reachable directly"
    )]
    ProxyRefused { proxy: String, target: String },
}

/// A request that got no answer.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The transport error and its causes on one line.
    pub detail: String,
    /// Set when retrying cannot help.
    pub blocked: Option<Blocked>,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.blocked {
            Some(b) => write!(f, "{b}"),
            None => f.write_str(&self.detail),
        }
    }
}

/// One HTTP answer, read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

/// What one attempt of a retried operation came to.
pub enum Try<T> {
    /// Finished: a result or an error that retrying cannot fix.
    Done(T),
    /// Blocked: retrying cannot help ([`Net::retry`] ends with it in [`GaveUp::blocked`]).
    Stop(Blocked),
    /// Worth another try.
    Again {
        class: Class,
        /// What the server asked for (`Retry-After`).
        wait_hint: Option<Duration>,
        detail: String,
        /// The attempt got somewhere (bytes of a download): the budget starts over.
        progress: bool,
    },
}

/// Retries ran out of budget.
#[derive(Debug, Clone)]
pub struct GaveUp {
    pub attempts: u32,
    pub elapsed: Duration,
    pub last: String,
    /// The attempt was blocked (an untrusted certificate, a proxy's refusal), not worth retrying.
    pub blocked: Option<Blocked>,
}

#[derive(Clone)]
pub struct Net {
    direct: reqwest::Client,
    /// Built on first use: loading the system's root certificates takes a few milliseconds that
    /// `token` never needs. Built again when [`Net::configure`] changes the network.
    web: Arc<Mutex<Option<reqwest::Client>>>,
    network: Arc<RwLock<Network>>,
    refused: tls::Refused,
    /// Set when the web client found no CA certificate in the system's store.
    no_system_roots: Arc<std::sync::atomic::AtomicBool>,
    clock: Clock,
    policy: Policy,
    rng: Arc<Mutex<fastrand::Rng>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").finish_non_exhaustive()
    }
}

const USER_AGENT: &str = concat!("agent-bootstrap/", env!("CARGO_PKG_VERSION"));

/// Makes ring rustls' process-wide crypto provider (reqwest is built without one: see
/// `Cargo.toml`). Idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Net {
    pub fn new(clock: Clock) -> Self {
        install_crypto_provider();
        let direct = reqwest::Client::builder()
            // "IMDS isn't intended to be used behind a proxy" (identity.md §1.1).
            .no_proxy()
            // Plain http on the machine itself: no certificate is ever trusted through it.
            .tls_certs_only([])
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .expect("static reqwest configuration is valid");
        // Seeded from the OS in production; fixed under a virtual clock so tests are repeatable.
        let rng = if clock.is_virtual() {
            fastrand::Rng::with_seed(0x5eed)
        } else {
            fastrand::Rng::new()
        };
        Self {
            direct,
            web: Arc::new(Mutex::new(None)),
            network: Arc::new(RwLock::new(Network::default())),
            refused: tls::Refused::default(),
            no_system_roots: Arc::default(),
            clock,
            policy: Policy::default(),
            rng: Arc::new(Mutex::new(rng)),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Builds the internet client on a thread now, so it is ready when the first Azure DevOps
    /// request needs it (loading the root certificates overlaps the IMDS request).
    pub fn prewarm(&self) {
        let net = self.clone();
        std::thread::spawn(move || {
            net.client(Service::DevOps);
        });
    }

    /// Sets the proxy and the extra CAs the internet client uses (before its first request, or
    /// anew: the client is rebuilt). Identity endpoints on the machine are not affected.
    pub fn configure(&self, network: Network) {
        if let Some(p) = &network.proxy {
            tracing::info!(
                proxy = %p.url,
                from = %p.from,
                user = p.user.as_deref().unwrap_or("-"),
                no_proxy = network.no_proxy.as_deref().unwrap_or(""),
                "Azure DevOps, downloads and Entra go through the proxy; identity endpoints on \
                 this machine never do"
            );
        }
        if let Some(ca) = &network.ca_file {
            tracing::info!(ca_file = %ca.display(), certificates = network.ca_certs.len(), "trusting the CA file too");
        }
        *self.network.write().expect("network poisoned") = network;
        *self.web.lock().expect("client poisoned") = None;
    }

    /// The network in use.
    pub fn network(&self) -> Network {
        self.network.read().expect("network poisoned").clone()
    }

    /// The client for a service: identity endpoints on the machine never go through a proxy.
    pub fn client(&self, service: Service) -> reqwest::Client {
        match service {
            Service::Imds | Service::LocalIdentity => self.direct.clone(),
            Service::Entra | Service::DevOps | Service::Download => {
                let mut web = self.web.lock().expect("client poisoned");
                web.get_or_insert_with(|| self.build_web()).clone()
            }
        }
    }

    fn build_web(&self) -> reqwest::Client {
        let network = self.network();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Per read, not per request: a package download takes as long as it takes.
            .read_timeout(Duration::from_secs(60))
            .user_agent(USER_AGENT);
        match tls::client_config(&network.ca_certs, self.refused.clone()) {
            Ok((config, system_roots)) => {
                self.no_system_roots
                    .store(!system_roots, std::sync::atomic::Ordering::Relaxed);
                builder = builder.use_preconfigured_tls(config);
            }
            Err(e) => tracing::warn!("the platform's certificate store could not be used: {e}"),
        }
        // The environment was read once, into `network`, with curl's rules: reqwest reads nothing.
        builder = match &network.proxy {
            None => builder.no_proxy(),
            Some(p) => {
                let no_proxy = network.no_proxy.clone().unwrap_or_default();
                let target = p.url.clone();
                // Only https goes through the proxy, as a CONNECT tunnel the proxy cannot read.
                // A plain http request would reach the proxy in clear, bearer token included;
                // the settings accept http only for a loopback organization, which goes direct,
                // so its token stays on this machine. (https to loopback still tunnels: the proxy
                // sees only encrypted bytes, and the TLS tests use exactly that.)
                let mut proxy = reqwest::Proxy::custom(move |url| {
                    let host = url.host_str().unwrap_or("");
                    let direct = url.scheme() != "https"
                        || proxy::bypassed(&no_proxy, host, url.port_or_known_default());
                    (!direct).then(|| target.clone())
                });
                if let (Some(user), Some(password)) = (&p.user, &p.password) {
                    proxy = proxy.basic_auth(user, password.expose());
                }
                builder.proxy(proxy)
            }
        };
        builder.build().unwrap_or_else(|e| {
            tracing::warn!("{}; using the defaults", crate::report::one_line(&e));
            reqwest::Client::new()
        })
    }
}

/// What to do on a machine whose trust store is empty (minimal images: Debian minbase,
/// `*-slim` containers, hardened images without `ca-certificates`): the distribution's command.
pub fn no_ca_certificates_hint() -> String {
    let facts = crate::host::Facts::current();
    let install = crate::deps::install_packages(&["ca-certificates"], facts.os_release.as_ref())
        .unwrap_or_else(|| "your distribution's package manager".to_owned());
    format!(
        "this machine has no CA certificates (its system trust store is empty, as on minimal \
         images): install them ({install}), or pass your CA with --ca-file PEM; the agent needs \
         the system store too"
    )
}

/// The rustls error somewhere in `e`'s causes, looking inside every `io::Error` on the way
/// (`io::Error::source` returns the wrapped error's source, not the wrapped error).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(r) = find_rustls(inner)
        {
            return Some(r);
        }
        source = err.source();
    }
    None
}

impl Net {
    /// What a transport error means, when retrying cannot fix it.
    pub fn blocked(&self, e: &reqwest::Error) -> Option<Blocked> {
        let url = e.url()?;
        let host = url
            .host_str()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let target = format!("{host}:{}", url.port_or_known_default().unwrap_or(443));
        // rustls' own error, inside the connector's io::Error (which may itself be wrapped in
        // another io::Error: `io::Error::source` skips the error it wraps, so both are walked).
        if let Some(rustls::Error::InvalidCertificate(reason)) = find_rustls(e) {
            let (subject, issuer) = self
                .refused
                .get(host)
                .and_then(|der| tls::names(&der))
                .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
            let network = self.network();
            let no_system_roots = self
                .no_system_roots
                .load(std::sync::atomic::Ordering::Relaxed);
            let hint = match &network.ca_file {
                None if no_system_roots => no_ca_certificates_hint(),
                Some(ca) => format!(
                    "the certificates in {} do not vouch for it either: add the CA that \
                     issued '{issuer}', or find out what intercepts the connection",
                    ca.display()
                ),
                None => format!(
                    "if '{issuer}' is your organization's CA (TLS inspection, Azure DevOps \
                     Server), pass its certificate with --ca-file PEM; otherwise something \
                     intercepts this connection"
                ),
            };
            return Some(Blocked::Certificate {
                host: host.to_owned(),
                reason: format!("{reason:?}"),
                subject,
                issuer,
                hint,
            });
        }
        let text = crate::report::one_line(e);
        let network = self.network();
        let proxy = network.proxy.as_ref()?;
        if text.contains("proxy authorization required") {
            return Some(Blocked::ProxyAuth {
                proxy: proxy.url.to_string(),
                given: match &proxy.user {
                    Some(u) => format!(" and refused those of '{u}'"),
                    None => String::new(),
                },
            });
        }
        if text.contains("tunnel error: unsuccessful") {
            return Some(Blocked::ProxyRefused {
                proxy: proxy.url.to_string(),
                target,
            });
        }
        None
    }

    /// Sends a request and reads the whole answer (JSON APIs). A transport failure is `Err` with
    /// its message and causes on one line.
    pub async fn fetch(&self, request: reqwest::RequestBuilder) -> Result<Answer, Failed> {
        let failed = |e: reqwest::Error| Failed {
            detail: crate::report::one_line(&e),
            blocked: self.blocked(&e),
        };
        let (client, request) = request.build_split();
        let request = request.map_err(failed)?;
        // `-v`: each call, without its query (a SAS or a token may ride in one).
        let (method, mut url) = (request.method().clone(), request.url().clone());
        url.set_query(None);
        let started = std::time::Instant::now();
        let response = client.execute(request).await.map_err(|e| {
            tracing::debug!(%method, %url, error = %crate::report::one_line(&e), "request failed");
            failed(e)
        })?;
        let status = response.status().as_u16();
        tracing::debug!(%method, %url, status, ms = started.elapsed().as_millis() as u64, "request");
        let headers = response.headers().clone();
        let body = response.text().await.map_err(failed)?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// What a server asked us to wait: `Retry-After` (seconds or a date), else the time until
    /// `X-RateLimit-Reset` when the answer is a throttling one.
    pub fn wait_hint(&self, status: u16, headers: &HeaderMap) -> Option<Duration> {
        let now = self.clock.unix_now();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(d) = header("retry-after").and_then(|v| retry::parse_retry_after(v, now)) {
            return Some(d);
        }
        if status == 429 {
            return header("x-ratelimit-reset")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|reset| Duration::from_secs(reset.saturating_sub(now)));
        }
        None
    }

    /// What one attempt came to, by the table: `ok` turns a success into the result, `refused` a
    /// fatal answer; anything else (a transport failure included) is worth another try.
    pub fn settle<T>(
        &self,
        service: Service,
        answer: Result<Answer, Failed>,
        ok: impl FnOnce(Answer) -> T,
        refused: impl FnOnce(Answer) -> T,
    ) -> Try<T> {
        let a = match answer {
            Ok(a) => a,
            Err(Failed {
                blocked: Some(b), ..
            }) => return Try::Stop(b),
            Err(Failed { detail, .. }) => {
                return Try::Again {
                    class: Class::Backoff,
                    wait_hint: None,
                    detail,
                    progress: false,
                };
            }
        };
        match retry::classify(service, a.status) {
            Class::Success => Try::Done(ok(a)),
            Class::Fatal => Try::Done(refused(a)),
            class => Try::Again {
                class,
                wait_hint: self.wait_hint(a.status, &a.headers),
                detail: describe(&a),
                progress: false,
            },
        }
    }

    /// Runs `attempt` until it is done, retrying per the table within `budget`.
    pub async fn retry<T>(
        &self,
        what: &str,
        budget: Budget,
        mut attempt: impl AsyncFnMut(u32) -> Try<T>,
    ) -> Result<T, GaveUp> {
        let mut budget = budget;
        let mut attempts = 0u32;
        let mut since_progress = 0u32;
        loop {
            attempts += 1;
            since_progress += 1;
            let (class, wait_hint, detail, progress) = match attempt(attempts).await {
                Try::Done(t) => return Ok(t),
                Try::Stop(blocked) => {
                    return Err(GaveUp {
                        attempts,
                        elapsed: budget.spent(&self.clock),
                        last: blocked.to_string(),
                        blocked: Some(blocked),
                    });
                }
                Try::Again {
                    class,
                    wait_hint,
                    detail,
                    progress,
                } => (class, wait_hint, detail, progress),
            };
            if progress {
                since_progress = 1;
                budget.restart(&self.clock);
            }
            let spent = budget.spent(&self.clock);
            let delay = {
                let mut rng = self.rng.lock().expect("jitter poisoned");
                self.policy.next_delay(
                    class,
                    since_progress,
                    wait_hint,
                    spent,
                    budget.limit(),
                    &mut *rng,
                )
            };
            let Some(delay) = delay else {
                return Err(GaveUp {
                    attempts,
                    elapsed: spent,
                    last: detail,
                    blocked: None,
                });
            };
            tracing::warn!(
                attempt = attempts,
                "{what}: {detail}; retrying in {:.1}s",
                delay.as_secs_f32()
            );
            self.clock.sleep(delay).await;
        }
    }
}

/// "HTTP 429 (rate limited: resource Core, delay 2.5 s, 0 left): <server message>" for logs.
fn describe(a: &Answer) -> String {
    let header = |name: &str| a.headers.get(name).and_then(|v| v.to_str().ok());
    let mut limits = vec![];
    if let Some(r) = header("x-ratelimit-resource") {
        limits.push(format!("resource {r}"));
    }
    if let Some(d) = header("x-ratelimit-delay") {
        limits.push(format!("delay {d} s"));
    }
    if let Some(r) = header("x-ratelimit-remaining") {
        limits.push(format!("{r} left"));
    }
    let mut text = format!("HTTP {}", a.status);
    if !limits.is_empty() {
        text.push_str(&format!(" (rate limited: {})", limits.join(", ")));
    }
    let body = short_body(&a.body);
    if !body.is_empty() {
        text.push_str(": ");
        text.push_str(&body);
    }
    text
}

/// A readable piece of an error body: the `message` / `error_description` of a JSON body, else
/// the body's first 300 characters (HTML becomes a note, not markup).
pub fn short_body(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Shape {
        message: Option<String>,
        error: Option<String>,
        error_description: Option<String>,
    }
    if let Ok(s) = serde_json::from_str::<Shape>(body) {
        if let Some(m) = s.message {
            return m;
        }
        let parts: Vec<String> = [s.error, s.error_description]
            .into_iter()
            .flatten()
            .collect();
        if !parts.is_empty() {
            return parts.join(": ");
        }
    }
    let t = body.trim();
    if t.starts_with('<') {
        return "an HTML page".to_owned();
    }
    t.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_follow_the_table_within_one_budget() {
        let clock = Clock::virtual_clock();
        let net = Net::new(clock.clone());
        let start = clock.now();
        let mut calls = 0;
        let got = net
            .retry("test", clock.budget(Duration::from_secs(300)), async |n| {
                calls += 1;
                if n < 4 {
                    Try::Again {
                        class: Class::Throttled,
                        wait_hint: Some(Duration::from_secs(20)),
                        detail: "HTTP 429".into(),
                        progress: false,
                    }
                } else {
                    Try::Done(n)
                }
            })
            .await
            .unwrap();
        assert_eq!(got, 4);
        assert_eq!(calls, 4);
        let waited = clock.elapsed(start);
        // Three Retry-After waits of 20 s, each lengthened by at most 2 s of jitter.
        assert!(
            waited >= Duration::from_secs(60) && waited <= Duration::from_secs(66),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn the_budget_is_for_the_operation_not_per_request() {
        let clock = Clock::virtual_clock();
        let net = Net::new(clock.clone());
        let e = net
            .retry::<()>("test", clock.budget(Duration::from_secs(60)), async |_| {
                Try::Again {
                    class: Class::Backoff,
                    wait_hint: None,
                    detail: "HTTP 503".into(),
                    progress: false,
                }
            })
            .await
            .unwrap_err();
        assert_eq!(e.elapsed, Duration::from_secs(60));
        assert!(e.attempts > 3);
    }

    #[test]
    fn hints_come_from_retry_after_or_the_rate_limit_reset() {
        let clock = Clock::virtual_clock();
        let net = Net::new(clock.clone());
        let mut h = HeaderMap::new();
        h.insert("retry-after", "12".parse().unwrap());
        assert_eq!(net.wait_hint(429, &h), Some(Duration::from_secs(12)));
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset",
            (clock.unix_now() + 30).to_string().parse().unwrap(),
        );
        assert_eq!(net.wait_hint(429, &h), Some(Duration::from_secs(30)));
        assert_eq!(net.wait_hint(503, &h), None);
        let a = Answer {
            status: 429,
            headers: {
                let mut h = HeaderMap::new();
                h.insert("x-ratelimit-resource", "Core".parse().unwrap());
                h.insert("x-ratelimit-remaining", "0".parse().unwrap());
                h
            },
            body: r#"{"message":"TF400733: slow down"}"#.into(),
        };
        assert_eq!(
            describe(&a),
            "HTTP 429 (rate limited: resource Core, 0 left): TF400733: slow down"
        );
    }
}
