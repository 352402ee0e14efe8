//! Access tokens for Azure DevOps, from whatever identity the machine has.
//!
//! An agent runs on a VM, a scale-set instance, an Arc-enabled server, in a Container Apps job or an
//! AKS pod, or on a developer's laptop; each offers its identity a different way (`identity.md`
//! §1–§8). One [`Source`] per way, all behind the same [`Source::fetch`]:
//!
//! | source | where | how |
//! |---|---|---|
//! | `imds` | Azure VMs, scale sets, ACI | [`imds`]: `169.254.169.254`, `Metadata: true` |
//! | `app-service` | App Service, Functions, Container Apps | [`app_service`]: `IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER` |
//! | `arc` | Azure Arc-enabled servers | [`arc`]: the himds agent's 401 challenge and key file |
//! | `workload` | AKS workload identity | [`workload`]: the projected service-account token, exchanged with Entra ID |
//! | `azure-cli` | anywhere `az` is logged in (or `--az-login` with a managed identity) | [`azure_cli`]: `az account get-access-token` |
//! | `pat` | sites without an identity | [`pat`]: `AZP_TOKEN` / `AZP_TOKEN_FILE`, sent as HTTP Basic |
//!
//! `--identity auto` walks [`chain`] in that order (workload, app-service, arc, IMDS after a
//! one-second probe, azure-cli, pat) and logs why each earlier one was skipped. Every HTTP request
//! goes through the one network policy ([`crate::net`]). Every token is a [`Secret`] from the moment
//! it is read; [`Tokens`] hands it out, renews it when less than [`REFRESH_MARGIN`] is left, and adds
//! each token (and each secret a source uses, such as the App Service header) to its [`Masker`].

mod app_service;
mod arc;
mod azure_cli;
mod chain;
pub mod claims;
pub mod imds;
mod pat;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

pub use chain::{Candidate, Report, Verdict, resolve};
pub use imds::{DEFAULT_IMDS_BASE, IMDS_BASE_ENV, ImdsClient, Transport};

use crate::clock::Budget;
use crate::net::Net;
use crate::secret::{Masker, Secret};

/// How long one token request may retry when the caller's budget allows it (`identity.md` §1.4:
/// at provisioning, identity assignment propagates asynchronously).
pub const IMDS_BUDGET: Duration = Duration::from_secs(120);
/// A token is replaced once less than this is left of its life.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Azure DevOps' application id, sent as the v1 `resource` (`identity.md` §0).
pub const AZURE_DEVOPS_RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
/// The default user-assigned identity where a source supports one (DefaultAzureCredential's).
pub const CLIENT_ID_ENV: &str = "AZURE_CLIENT_ID";

/// Which way to get the token: `--identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Auto,
    Imds,
    AzureCli,
    AppService,
    Arc,
    Workload,
    Pat,
}

impl Kind {
    /// The auto chain, in order.
    pub const CHAIN: [Kind; 6] = [
        Kind::Workload,
        Kind::AppService,
        Kind::Arc,
        Kind::Imds,
        Kind::AzureCli,
        Kind::Pat,
    ];

    /// The name on the command line and in the saved settings.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Auto => "auto",
            Kind::Imds => "imds",
            Kind::AzureCli => "azure-cli",
            Kind::AppService => "app-service",
            Kind::Arc => "arc",
            Kind::Workload => "workload",
            Kind::Pat => "pat",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Auto]
            .into_iter()
            .chain(Kind::CHAIN)
            .find(|k| k.name() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for (or install saved): the source and how to choose the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub selector: Selector,
    /// Azure CLI: `az login --identity` first, with the selector.
    pub az_login: bool,
    /// A PAT file remembered from install, for later runs without `AZP_TOKEN_FILE`.
    pub pat_file: Option<PathBuf>,
}

impl Request {
    /// The machine's default: auto, no selector.
    pub fn auto() -> Self {
        Self {
            kind: Kind::Auto,
            selector: Selector::Default,
            az_login: false,
            pat_file: None,
        }
    }
}

/// Which managed identity to ask for. At most one selector; none means the default identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Default,
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

/// How a source spells the three selectors in its query.
#[derive(Debug, Clone, Copy)]
pub struct SelectorNames {
    pub client: &'static str,
    pub object: &'static str,
    pub resource: &'static str,
}

impl SelectorNames {
    /// IMDS (and what the saved settings use).
    pub const IMDS: Self = Self {
        client: "client_id",
        object: "object_id",
        resource: "msi_res_id",
    };
    /// App Service / Container Apps: `principal_id` and `mi_res_id` (it ignores `msi_res_id`).
    pub const APP_SERVICE: Self = Self {
        client: "client_id",
        object: "principal_id",
        resource: "mi_res_id",
    };
}

impl Selector {
    /// The query parameter for this selector, as `names` spells it.
    pub fn query(&self, names: SelectorNames) -> Option<(&'static str, &str)> {
        match self {
            Self::Default => None,
            Self::ClientId(v) => Some((names.client, v)),
            Self::ObjectId(v) => Some((names.object, v)),
            Self::ResourceId(v) => Some((names.resource, v)),
        }
    }

    /// The form saved for later runs (`client_id=…`), or `None` for the default.
    pub fn to_saved(&self) -> Option<String> {
        self.query(SelectorNames::IMDS)
            .map(|(k, v)| format!("{k}={v}"))
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

    /// The flag that sets this selector (`--client-id`), or `None` for the default.
    pub fn flag(&self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::ClientId(_) => Some("--client-id"),
            Self::ObjectId(_) => Some("--object-id"),
            Self::ResourceId(_) => Some("--resource-id"),
        }
    }

    /// How the selector is named to a user: the flag that set it.
    pub fn describe(&self) -> String {
        match self {
            Self::Default => "the default managed identity".to_owned(),
            Self::ClientId(v) => format!("the identity with --client-id {v}"),
            Self::ObjectId(v) => format!("the identity with --object-id {v}"),
            Self::ResourceId(v) => format!("the identity with --resource-id {v}"),
        }
    }
}

/// How Azure DevOps is shown the token: Entra tokens as `Bearer`, a PAT only as HTTP Basic (any
/// user name, the PAT as the password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Basic,
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
        "the selected identity is not assigned to this {place}: {selector} (answered 400: {detail})\n\
         hint: check the id, and that this user-assigned identity is attached to the {place}"
    )]
    SelectedIdentityNotAssigned {
        /// "VM" (IMDS), "app" (App Service).
        place: &'static str,
        selector: String,
        detail: String,
    },
    #[error("{source_name} at {url} refused the token request with HTTP {status}: {detail}{hint}")]
    Refused {
        source_name: &'static str,
        url: String,
        status: u16,
        detail: String,
        /// Empty, or "\nhint: …".
        hint: String,
    },
    #[error(
        "no token from {source_name} at {url} after {attempts} attempts in {elapsed:?}: {last}\n\
         hint: {hint}"
    )]
    Unavailable {
        source_name: &'static str,
        url: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
        hint: &'static str,
    },
    #[error("{source_name} at {url} returned a token response that could not be read: {detail}")]
    BadResponse {
        source_name: &'static str,
        url: String,
        detail: String,
    },
    #[error("invalid {name} '{value}': {problem}")]
    BadSetting {
        name: String,
        value: String,
        problem: String,
    },
    #[error("the {kind} identity source is not available here: {why}")]
    NotAvailable { kind: Kind, why: String },
    #[error(
        "no identity source found; tried, in order:\n{}\n\
         hint: run `agent-bootstrap doctor` for details, or choose one with --identity",
        tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n")
    )]
    NoSource { tried: Vec<String> },
    #[error("{flag} cannot be used with --identity {kind}: {why}")]
    UnsupportedSelector {
        flag: &'static str,
        kind: Kind,
        why: &'static str,
    },
    #[error("refusing {what}: {why}")]
    Unsafe { what: String, why: String },
    #[error("`{command}` failed (exit {code}): {detail}{hint}")]
    Command {
        command: String,
        code: i32,
        detail: String,
        /// Empty, or "\nhint: …".
        hint: String,
    },
    #[error("could not run `{command}`")]
    CommandRun {
        command: String,
        #[source]
        source: crate::process::ProcessError,
    },
    #[error("the Azure Arc agent's challenge named the key file {path}, which {problem}")]
    ArcKey { path: String, problem: String },
    #[error(
        "the token is for '{audience}', not for Azure DevOps ({AZURE_DEVOPS_RESOURCE})\n\
         hint: the source must be asked for resource {AZURE_DEVOPS_RESOURCE}"
    )]
    WrongAudience { audience: String },
    #[error("could not read {what} {path}: {detail}")]
    Read {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
}

impl IdentityError {
    /// Retries of a token request ran out of budget.
    fn gave_up(
        source_name: &'static str,
        url: &str,
        hint: &'static str,
        g: crate::net::GaveUp,
    ) -> Self {
        Self::Unavailable {
            source_name,
            url: url.to_owned(),
            attempts: g.attempts,
            elapsed: g.elapsed,
            last: g.last,
            hint,
        }
    }

    /// The user's input (a flag, a variable, a file's permissions) is wrong, not the identity.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::BadSetting { .. } | Self::UnsupportedSelector { .. } | Self::Unsafe { .. }
        )
    }
}

/// What looking for one source found: it is here (and why we think so), or why it is not. A
/// source that is here but misconfigured is an [`IdentityError`] instead.
pub enum Found<S> {
    Here { source: S, why: String },
    Absent(String),
}

/// A token with its expiry (Unix seconds), as the source gave it.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_on: Option<u64>,
}

/// A resolved way to get tokens. The IMDS client is generic over its transport for unit tests.
pub enum Source<T: Transport = Net> {
    Imds {
        client: ImdsClient<T>,
        selector: Selector,
    },
    AppService(app_service::AppService),
    Arc(arc::Arc),
    Workload(workload::Workload),
    AzureCli(azure_cli::AzureCli),
    Pat(pat::Pat),
    /// The saved source cannot be set up in this run (its variables are gone, say): every fetch
    /// fails with why, and the run goes on as it does when the identity endpoint is down
    /// (reconcile still starts a stopped service).
    Unavailable {
        kind: Kind,
        why: String,
    },
}

impl<T: Transport> Source<T> {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Unavailable { kind, .. } => *kind,
            Self::Imds { .. } => Kind::Imds,
            Self::AppService(_) => Kind::AppService,
            Self::Arc(_) => Kind::Arc,
            Self::Workload(_) => Kind::Workload,
            Self::AzureCli(_) => Kind::AzureCli,
            Self::Pat(_) => Kind::Pat,
        }
    }

    pub fn scheme(&self) -> Scheme {
        match self.kind() {
            Kind::Pat => Scheme::Basic,
            _ => Scheme::Bearer,
        }
    }

    /// The identity this source asks for, in the form saved for later runs.
    pub fn selector(&self) -> Selector {
        match self {
            Self::Imds { selector, .. } => selector.clone(),
            Self::AppService(a) => a.selector.clone(),
            Self::Workload(w) => Selector::ClientId(w.client_id.clone()),
            Self::AzureCli(c) => c.login.clone().unwrap_or(Selector::Default),
            Self::Arc(_) | Self::Pat(_) | Self::Unavailable { .. } => Selector::Default,
        }
    }

    /// What later runs need to use the same source (no secret).
    pub fn request(&self) -> Request {
        Request {
            kind: self.kind(),
            selector: self.selector(),
            az_login: matches!(self, Self::AzureCli(c) if c.login.is_some()),
            pat_file: match self {
                Self::Pat(p) => p.file().map(std::path::Path::to_owned),
                _ => None,
            },
        }
    }

    /// One line for logs and reports: "IMDS (the default managed identity)".
    pub fn describe(&self) -> String {
        match self {
            Self::Imds { client, selector } => {
                format!("IMDS at {} ({})", client.base(), selector.describe())
            }
            Self::AppService(a) => a.describe(),
            Self::Arc(a) => a.describe(),
            Self::Workload(w) => w.describe(),
            Self::AzureCli(c) => c.describe(),
            Self::Pat(p) => p.describe(),
            Self::Unavailable { kind, why } => format!("{kind} (not available: {why})"),
        }
    }

    /// Secrets the source itself holds (the App Service header), to be masked like tokens.
    pub fn secrets(&self) -> Vec<Secret> {
        match self {
            Self::AppService(a) => vec![a.header.clone()],
            _ => vec![],
        }
    }

    /// A new token, retried within `budget` (at most [`IMDS_BUDGET`] of it).
    pub async fn fetch(
        &self,
        budget: &Budget,
        masker: &Masker,
    ) -> Result<AccessToken, IdentityError> {
        match self {
            Self::Imds { client, selector } => {
                let b = budget.sub(client.net().clock(), IMDS_BUDGET);
                client.token(selector, b).await
            }
            Self::AppService(a) => a.token(budget.sub(a.net.clock(), IMDS_BUDGET)).await,
            Self::Arc(a) => {
                a.token(budget.sub(a.net.clock(), IMDS_BUDGET), masker)
                    .await
            }
            Self::Workload(w) => w.token(budget.sub(w.net.clock(), IMDS_BUDGET)).await,
            Self::AzureCli(c) => c.token(budget, masker).await,
            Self::Pat(p) => p.token(),
            Self::Unavailable { kind, why } => Err(IdentityError::NotAvailable {
                kind: *kind,
                why: why.clone(),
            }),
        }
    }

    /// The Azure VM id (IMDS only), to tell a clone from the machine that configured the agent.
    pub async fn vm_id(&self) -> Option<String> {
        match self {
            Self::Imds { client, .. } => client.vm_id().await,
            _ => None,
        }
    }
}

/// The run's Azure DevOps token: fetched once, reused while it has more than [`REFRESH_MARGIN`]
/// to live, fetched again after that. Every token it hands out is added to its [`Masker`].
pub struct Tokens<T: Transport = Net> {
    source: Source<T>,
    cached: tokio::sync::Mutex<Option<(AccessToken, u64)>>,
    masker: Masker,
    clock: crate::clock::Clock,
}

impl<T: Transport> Tokens<T> {
    pub fn new(source: Source<T>) -> Self {
        let masker = Masker::new();
        for s in source.secrets() {
            masker.add(&s);
        }
        let clock = match &source {
            Source::Imds { client, .. } => client.net().clock().clone(),
            Source::AppService(a) => a.net.clock().clone(),
            Source::Arc(a) => a.net.clock().clone(),
            Source::Workload(w) => w.net.clock().clone(),
            Source::AzureCli(c) => c.clock.clone(),
            Source::Pat(p) => p.clock.clone(),
            Source::Unavailable { .. } => crate::clock::Clock::System,
        };
        Self {
            source,
            cached: tokio::sync::Mutex::new(None),
            masker,
            clock,
        }
    }

    pub fn source(&self) -> &Source<T> {
        &self.source
    }

    /// How Azure DevOps must be shown the token.
    pub fn scheme(&self) -> Scheme {
        self.source.scheme()
    }

    /// Masks every token this source has handed out (shared: later tokens are masked too).
    pub fn masker(&self) -> Masker {
        self.masker.clone()
    }

    /// A token with at least [`REFRESH_MARGIN`] to live; the source is asked within `budget`.
    pub async fn get(&self, budget: &Budget) -> Result<Secret, IdentityError> {
        let mut cached = self.cached.lock().await;
        let now = self.clock.unix_now();
        if let Some((t, fetched_at)) = cached.as_ref() {
            // Unknown expiry (a PAT, an old az): trust it for ten minutes, then read it again.
            let expires = t.expires_on.unwrap_or(fetched_at + 600);
            if expires.saturating_sub(now) > REFRESH_MARGIN.as_secs() {
                return Ok(t.token.clone());
            }
            tracing::info!(
                left_s = expires.saturating_sub(now),
                "the Azure DevOps token is about to expire; getting a new one"
            );
        }
        let fresh = self.source.fetch(budget, &self.masker).await?;
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
    error: Option<serde_json::Value>,
    error_description: Option<String>,
    message: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// `error: error_description` from an OAuth-style error body (`message` for App Service), or the
/// body itself, shortened.
fn error_detail(body: &str) -> String {
    if let Ok(b) = serde_json::from_str::<ErrorBody>(body) {
        let error = match b.error {
            Some(serde_json::Value::String(s)) => Some(s),
            // Service Fabric style: {"error":{"code":…,"message":…}}
            Some(serde_json::Value::Object(o)) => {
                o.get("message").and_then(|m| m.as_str()).map(str::to_owned)
            }
            _ => None,
        };
        let mut parts: Vec<String> = [error, b.error_description, b.message]
            .into_iter()
            .flatten()
            .map(|p| p.lines().next().unwrap_or_default().trim().to_owned())
            .collect();
        if !b.error_codes.is_empty() && !parts.iter().any(|p| p.contains("AADSTS")) {
            let codes: Vec<String> = b.error_codes.iter().map(|c| format!("AADSTS{c}")).collect();
            parts.push(codes.join(","));
        }
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

/// An OAuth token response (`access_token`, `expires_on` and/or `expires_in`): the token as a
/// [`Secret`], the expiry as Unix seconds.
fn parse_token(
    source_name: &'static str,
    body: &str,
    url: &str,
    now: u64,
) -> Result<AccessToken, IdentityError> {
    let bad = |detail: String| IdentityError::BadResponse {
        source_name,
        url: url.to_owned(),
        detail,
    };
    let parsed: TokenBody = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
    let token = parsed
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| bad("no access_token in the response".to_owned()))?;
    // Prefer expires_on (absolute); fall back to expires_in (identity.md §1.2, §2, §5).
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

/// An identity endpoint URL from the environment: http or https, and plain http only to this
/// machine (a secret header or a key goes with it).
fn check_endpoint(name: &str, value: &str) -> Result<Url, IdentityError> {
    let bad = |problem: &str| IdentityError::BadSetting {
        name: name.to_owned(),
        value: value.to_owned(),
        problem: problem.to_owned(),
    };
    let url = Url::parse(value.trim()).map_err(|_| bad("not a valid URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err(bad("plain http is allowed only to this machine; use https")),
        _ => return Err(bad("must be an http(s) URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are refused"));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_spelled_per_source_and_saved_in_one_form() {
        let r = Selector::ResourceId("/subscriptions/x".into());
        assert_eq!(
            r.query(SelectorNames::IMDS),
            Some(("msi_res_id", "/subscriptions/x"))
        );
        assert_eq!(
            r.query(SelectorNames::APP_SERVICE),
            Some(("mi_res_id", "/subscriptions/x"))
        );
        let o = Selector::ObjectId("o".into());
        assert_eq!(
            o.query(SelectorNames::APP_SERVICE),
            Some(("principal_id", "o"))
        );
        for s in [r, o, Selector::ClientId("c".into()), Selector::Default] {
            assert_eq!(Selector::from_saved(s.to_saved().as_deref()), s);
        }
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in [Kind::Auto].into_iter().chain(Kind::CHAIN) {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("msi"), None);
    }

    #[test]
    fn error_bodies_of_every_source_are_readable() {
        assert_eq!(
            error_detail(r#"{"error":"invalid_request","error_description":"Identity not found"}"#),
            "invalid_request: Identity not found"
        );
        assert_eq!(
            error_detail(
                r#"{"statusCode":500,"message":"An unexpected error occured while fetching the AAD Token.","correlationId":"x"}"#
            ),
            "An unexpected error occured while fetching the AAD Token."
        );
        assert_eq!(
            error_detail(
                r#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found.\r\nTrace ID: x","error_codes":[700213]}"#
            ),
            "invalid_client: AADSTS700213: No matching federated identity record found."
        );
        assert_eq!(
            error_detail(r#"{"error":"invalid_client","error_codes":[7000215]}"#),
            "invalid_client: AADSTS7000215"
        );
        assert_eq!(error_detail(""), "empty body");
    }

    #[test]
    fn endpoints_allow_plain_http_only_to_this_machine() {
        assert!(check_endpoint("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token").is_ok());
        assert!(check_endpoint("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/msi/token").is_ok());
        assert!(check_endpoint("IDENTITY_ENDPOINT", "https://login.example.com/").is_ok());
        let e = check_endpoint("IDENTITY_ENDPOINT", "http://10.0.0.5/msi/token").unwrap_err();
        assert!(e.to_string().contains("IDENTITY_ENDPOINT"), "{e}");
        assert!(e.is_input());
        assert!(check_endpoint("X", "ftp://localhost/").is_err());
        assert!(check_endpoint("X", "https://u:p@host/").is_err());
        assert!(check_endpoint("X", "not a url").is_err());
    }

    #[test]
    fn token_responses_carry_expiry_as_given() {
        let t = parse_token(
            "X",
            r#"{"access_token":"abc","expires_on":"1900000000"}"#,
            "u",
            0,
        )
        .unwrap();
        assert_eq!(t.expires_on, Some(1_900_000_000));
        let t = parse_token("X", r#"{"access_token":"abc","expires_in":3599}"#, "u", 100).unwrap();
        assert_eq!(t.expires_on, Some(3699));
        let e = parse_token("X", r#"{"token_type":"Bearer"}"#, "u", 0).unwrap_err();
        assert!(e.to_string().contains("no access_token"), "{e}");
        assert!(!format!("{t:?}").contains("abc"));
    }
}
