//! The simulator's HTTP routes: IMDS, Azure DevOps, package downloads, and the simulator's own
//! report endpoint for the fake listener. The project-scoped deployment group and environment
//! routes are in [`deployment`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use super::{IdentitySpec, ListenerReport, Request, ServerAgent, SimConfig, State};
use crate::{AZURE_DEVOPS_RESOURCE, now_secs};

#[derive(Clone)]
pub struct Shared {
    pub config: Arc<SimConfig>,
    pub state: Arc<Mutex<State>>,
    pub package: super::package::BuiltPackage,
    /// `http`, or `https` on the TLS listener (download URLs use it).
    pub scheme: &'static str,
    /// The deployment pools of the deployment groups and environments ([`deployment_pools`]): the
    /// pool routes serve their agents too.
    pub deployment_pools: Arc<Vec<super::PoolSpec>>,
}

/// A pool for each deployment group's deployment pool and each environment's linked pool (one per
/// id; its Administrators are those of every group or environment using it).
pub fn deployment_pools(config: &SimConfig) -> Vec<super::PoolSpec> {
    let mut pools: Vec<super::PoolSpec> = vec![];
    let owners = config
        .deployment_groups
        .iter()
        .map(|g| (g.pool_id, &g.pool_name, &g.admins))
        .chain(
            config
                .environments
                .iter()
                .map(|e| (e.pool_id, &e.pool_name, &e.admins)),
        );
    for (id, name, admins) in owners {
        match pools.iter_mut().find(|p| p.id == id) {
            Some(p) => p.admins.extend(admins.iter().cloned()),
            None => pools.push(super::PoolSpec {
                id,
                name: name.clone(),
                admins: admins.clone(),
            }),
        }
    }
    pools
}

type Q = Query<HashMap<String, String>>;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/metadata/instance/compute/vmId", get(imds_vm_id))
        .route("/metadata/instance/compute/name", get(imds_vm_name))
        .route(
            "/metadata/scheduledevents",
            get(scheduled_events).post(approve_events),
        )
        .route("/msi/token", get(app_service_token))
        .route("/arc/token", get(arc_token))
        .route("/{org}/oauth2/v2.0/token", post(entra_token))
        .route("/{org}/_apis/connectionData", get(connection_data))
        .route("/{org}/_apis/distributedtask/pools", get(pools))
        .route(
            "/{org}/_apis/distributedtask/pools/{pool}/agents",
            get(list_agents).post(add_agent),
        )
        .route(
            "/{org}/_apis/distributedtask/pools/{pool}/agents/{agent}",
            put(update_agent)
                .patch(patch_agent)
                .delete(delete_agent)
                .get(get_agent),
        )
        .route("/{org}/_apis/distributedtask/packages/agent", get(packages))
        .route(
            "/{org}/{project}/_apis/distributedtask/deploymentgroups",
            get(deployment::list_groups),
        )
        .route(
            "/{org}/{project}/_apis/distributedtask/deploymentgroups/{group}",
            get(deployment::get_group),
        )
        .route(
            "/{org}/{project}/_apis/distributedtask/deploymentgroups/{group}/targets",
            get(deployment::list_targets)
                .post(deployment::add_target)
                .patch(deployment::update_targets),
        )
        .route(
            "/{org}/{project}/_apis/distributedtask/deploymentgroups/{group}/targets/{target}",
            get(deployment::get_target)
                .put(deployment::replace_target)
                .delete(deployment::delete_target),
        )
        .route(
            "/{org}/{project}/_apis/pipelines/environments",
            get(deployment::list_environments),
        )
        .route(
            "/{org}/{project}/_apis/distributedtask/environments",
            get(deployment::list_environments),
        )
        .route(
            "/{org}/{project}/_apis/pipelines/environments/{environment}",
            get(deployment::get_environment),
        )
        .route(
            "/{org}/{project}/_apis/distributedtask/environments/{environment}",
            get(deployment::get_environment),
        )
        .route(
            "/{org}/{project}/_apis/pipelines/environments/{environment}/providers/virtualmachines",
            get(deployment::list_vms)
                .post(deployment::add_vm)
                .put(deployment::replace_vm)
                .patch(deployment::update_vm),
        )
        .route(
            "/{org}/{project}/_apis/pipelines/environments/{environment}/providers/virtualmachines/pool",
            get(deployment::vm_pool),
        )
        .route(
            "/{org}/{project}/_apis/pipelines/environments/{environment}/providers/virtualmachines/{resource}",
            axum::routing::delete(deployment::delete_vm),
        )
        .route("/_download/agent/{version}/{file}", get(download))
        .route("/agent/{version}/{file}", get(download))
        .route("/tools/{file}", get(tool_file))
        .route("/_sim/config", get(sim_config))
        .route("/_sim/report", post(sim_report))
        .route("/_sim/listener", post(sim_listener))
        .route("/_sim/stats", get(sim_stats))
        .with_state(shared)
}

fn record(s: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap, caller: &str) {
    let presented = presented_token(headers);
    let auth = presented.as_ref().map(|(scheme, _)| match scheme {
        Scheme::Bearer => "bearer".to_owned(),
        Scheme::Basic => "basic".to_owned(),
    });
    let token = presented.map(|(_, t)| t);
    let mut state = s.state.lock().unwrap();
    let token = token.and_then(|t| state.token_order.iter().position(|x| *x == t));
    state.requests.push(Request {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        caller: caller.to_owned(),
        token,
        range: headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        metadata_header: headers.get("metadata").is_some_and(|v| v == "true"),
        auth,
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Basic,
}

/// The token a request carries, as Bearer or as the password of Basic.
fn presented_token(headers: &HeaderMap) -> Option<(Scheme, String)> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(t) = raw.strip_prefix("Bearer ") {
        Some((Scheme::Bearer, t.trim().to_owned()))
    } else if let Some(b) = raw.strip_prefix("Basic ") {
        decode_basic(b.trim()).and_then(|up| {
            up.split_once(':')
                .map(|(_, p)| (Scheme::Basic, p.to_owned()))
        })
    } else {
        None
    }
}

fn scripted_response(scripted: super::Scripted) -> Response {
    let mut r = (
        StatusCode::from_u16(scripted.status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        scripted.body,
    )
        .into_response();
    if let Some(secs) = scripted.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
    }
    for (k, v) in scripted.headers {
        r.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

fn json_response(status: u16, body: serde_json::Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn imds_error(status: u16, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// Every IMDS request is recorded; one without `Metadata: true` gets IMDS' 400.
fn imds_request(s: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    record(s, method, uri, headers, "imds");
    headers
        .get("metadata")
        .is_none_or(|v| v != "true")
        .then(|| {
            imds_error(
                400,
                "bad_request_102",
                "Required metadata header not specified",
            )
        })
}

async fn imds_token(
    AxState(s): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    if let Some(refused) = imds_request(&s, &method, &uri, &headers) {
        return refused;
    }
    let scripted = s.state.lock().unwrap().imds_script.pop_front();
    if let Some(scripted) = scripted {
        return scripted_response(scripted);
    }
    if !q.contains_key("api-version") {
        return imds_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    if q.get("resource").map(String::as_str) != Some(AZURE_DEVOPS_RESOURCE) {
        return imds_error(
            400,
            "invalid_resource",
            "AADSTS500011: The resource principal was not found in the tenant",
        );
    }
    let selectors: Vec<(&str, &String)> = ["client_id", "object_id", "msi_res_id", "mi_res_id"]
        .iter()
        .filter_map(|k| q.get(*k).map(|v| (*k, v)))
        .collect();
    if selectors.len() > 1 {
        return imds_error(400, "invalid_request", "Multiple identity selectors");
    }
    let chosen = pick_identity(&s, selectors.first().map(|(k, v)| (*k, v.as_str())));
    let Some(identity) = chosen else {
        return imds_error(400, "invalid_request", "Identity not found");
    };
    let token = issue_token(&s, identity);
    let now = now_secs();
    let lifetime = s.state.lock().unwrap().token_lifetime;
    json_response(
        200,
        json!({
            "access_token": token,
            "refresh_token": "",
            "expires_in": lifetime.to_string(),
            "expires_on": (now + lifetime).to_string(),
            "not_before": now.to_string(),
            "resource": AZURE_DEVOPS_RESOURCE,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }),
    )
}

/// A JWT-shaped token, unique per request, remembered with its identity.
fn issue_token(s: &Shared, identity: &IdentitySpec) -> String {
    use base64::Engine;
    let lifetime = s.state.lock().unwrap().token_lifetime;
    let sig: [u8; 24] = rand::random();
    let payload = json!({
        "aud": AZURE_DEVOPS_RESOURCE,
        "iss": format!("https://sts.windows.net/{}/", s.config.tenant_id),
        "oid": identity.object_id,
        "appid": identity.client_id,
        "tid": s.config.tenant_id,
        "idtyp": "app",
        "exp": now_secs() + lifetime,
        // Unique per token.
        "uti": hex::encode(&sig[..8]),
    })
    .to_string();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}.{}",
        b64.encode(payload),
        b64.encode(sig)
    );
    let mut state = s.state.lock().unwrap();
    state
        .tokens
        .insert(token.clone(), identity.object_id.clone());
    state.token_order.push(token.clone());
    token
}

async fn imds_vm_id(
    AxState(s): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    imds_text(&s, &method, &uri, &headers, |st| st.vm_id.clone())
}

/// An instance-metadata value as text (`format=text`), with IMDS' header check.
fn imds_text(
    s: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    value: impl FnOnce(&State) -> String,
) -> Response {
    if let Some(refused) = imds_request(s, method, uri, headers) {
        return refused;
    }
    value(&s.state.lock().unwrap()).into_response()
}

async fn imds_vm_name(
    AxState(s): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    imds_text(&s, &method, &uri, &headers, |st| st.vm_name.clone())
}

/// Azure Scheduled Events (`api-version=2020-07-01`): the document, with `Metadata: true`.
async fn scheduled_events(
    AxState(s): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    if let Some(refused) = imds_request(&s, &method, &uri, &headers) {
        return refused;
    }
    if !q.contains_key("api-version") {
        return imds_error(400, "bad_request", "Bad request: api-version is missing");
    }
    let st = s.state.lock().unwrap();
    if st.events_down {
        return (StatusCode::INTERNAL_SERVER_ERROR, "simulated IMDS failure").into_response();
    }
    json_response(
        200,
        json!({"DocumentIncarnation": st.events_incarnation, "Events": st.scheduled_events}),
    )
}

/// `POST {"StartRequests":[{"EventId": …}]}`: the event may start now (it leaves the document).
async fn approve_events(
    AxState(s): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(refused) = imds_request(&s, &method, &uri, &headers) {
        return refused;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "Bad request").into_response();
    };
    let Some(items) = v["StartRequests"].as_array() else {
        return (StatusCode::BAD_REQUEST, "Bad request").into_response();
    };
    let mut st = s.state.lock().unwrap();
    for item in items {
        let Some(id) = item["EventId"].as_str() else {
            return (StatusCode::BAD_REQUEST, "Bad request").into_response();
        };
        st.approved_events.push(id.to_owned());
        st.scheduled_events.retain(|e| e["EventId"] != id);
    }
    st.events_incarnation += 1;
    StatusCode::OK.into_response()
}

/// The identity a selector names among those attached to the machine (the system-assigned one, or
/// the only one, without a selector).
fn pick_identity<'a>(s: &'a Shared, selector: Option<(&str, &str)>) -> Option<&'a IdentitySpec> {
    let assigned: Vec<&IdentitySpec> = s.config.identities.iter().filter(|i| i.assigned).collect();
    match selector {
        Some((kind, value)) => assigned.iter().copied().find(|i| {
            let v = value.to_ascii_lowercase();
            match kind {
                "client_id" => i.client_id.to_ascii_lowercase() == v,
                "object_id" | "principal_id" => i.object_id.to_ascii_lowercase() == v,
                _ => !i.resource_id.is_empty() && i.resource_id.to_ascii_lowercase() == v,
            }
        }),
        None => assigned
            .iter()
            .copied()
            .find(|i| i.system_assigned)
            .or_else(|| (assigned.len() == 1).then(|| assigned[0])),
    }
}

fn next_identity_script(s: &Shared) -> Option<Response> {
    s.state
        .lock()
        .unwrap()
        .identity_script
        .pop_front()
        .map(scripted_response)
}

/// App Service / Container Apps (`identity.md` §2): `X-IDENTITY-HEADER`, api-version 2019-08-01,
/// selectors `client_id` / `principal_id` / `mi_res_id` (`msi_res_id` is ignored, as App Service
/// does), `expires_on` only.
async fn app_service_token(
    AxState(s): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    record(&s, &method, &uri, &headers, "app-service");
    let app_error = |status: u16, message: &str| {
        json_response(
            status,
            json!({"statusCode": status, "message": message, "correlationId": "00000000-sim"}),
        )
    };
    if headers
        .get("x-identity-header")
        .is_none_or(|v| v.as_bytes() != s.config.app_service_header.as_bytes())
    {
        return app_error(401, "Invalid or missing X-IDENTITY-HEADER");
    }
    if let Some(r) = next_identity_script(&s) {
        return r;
    }
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return app_error(400, "Unsupported api-version");
    }
    if q.get("resource").map(String::as_str) != Some(AZURE_DEVOPS_RESOURCE) {
        return app_error(
            500,
            "An unexpected error occured while fetching the AAD Token.",
        );
    }
    let selectors: Vec<(&str, &str)> = ["client_id", "principal_id", "mi_res_id"]
        .iter()
        .filter_map(|k| q.get(*k).map(|v| (*k, v.as_str())))
        .collect();
    if selectors.len() > 1 {
        return app_error(
            400,
            "Only one of client_id, principal_id, mi_res_id may be given",
        );
    }
    let Some(identity) = pick_identity(&s, selectors.first().copied()) else {
        return app_error(400, "Unable to find the requested managed identity");
    };
    let token = issue_token(&s, identity);
    let lifetime = s.state.lock().unwrap().token_lifetime;
    json_response(
        200,
        json!({
            "access_token": token,
            "expires_on": (now_secs() + lifetime).to_string(),
            "resource": AZURE_DEVOPS_RESOURCE,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }),
    )
}

/// Azure Arc (`identity.md` §3): a 401 naming a fresh key file, then `Authorization: Basic <key>`.
async fn arc_token(
    AxState(s): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    record(&s, &method, &uri, &headers, "arc");
    if headers.get("metadata").is_none_or(|v| v != "true") {
        return imds_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if let Some(r) = next_identity_script(&s) {
        return r;
    }
    if q.get("resource").map(String::as_str) != Some(AZURE_DEVOPS_RESOURCE)
        || !q.contains_key("api-version")
    {
        return imds_error(
            400,
            "invalid_request",
            "resource and api-version are required",
        );
    }
    if ["client_id", "object_id", "msi_res_id"]
        .iter()
        .any(|k| q.contains_key(*k))
    {
        return imds_error(
            400,
            "invalid_request",
            "Arc supports only the system-assigned identity",
        );
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(str::to_owned);
    match presented {
        None => {
            let Some(dir) = s.config.arc_key_dir.clone() else {
                return imds_error(
                    500,
                    "server_error",
                    "the simulated Arc agent has no key dir",
                );
            };
            let scripted_realm = s.state.lock().unwrap().arc_realm.clone();
            let realm = match scripted_realm {
                Some(r) => r,
                None => {
                    let key = hex::encode(rand::random::<[u8; 16]>());
                    let path = dir.join(format!("{}.key", hex::encode(rand::random::<[u8; 4]>())));
                    let _ = fs_err::create_dir_all(&dir);
                    if fs_err::write(&path, &key).is_err() {
                        return imds_error(500, "server_error", "could not write the key file");
                    }
                    let _ = crate::set_mode(&path, 0o600);
                    s.state.lock().unwrap().arc_keys.push(key);
                    path.display().to_string()
                }
            };
            let mut r = imds_error(401, "unauthorized", "A challenge is required");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                format!("Basic realm={realm}").parse().unwrap(),
            );
            r
        }
        Some(key) => {
            if !s.state.lock().unwrap().arc_keys.contains(&key) {
                return imds_error(401, "unauthorized", "The key is not valid");
            }
            let Some(identity) = pick_identity(&s, None) else {
                return imds_error(400, "invalid_request", "Identity not found");
            };
            let token = issue_token(&s, identity);
            let now = now_secs();
            let lifetime = s.state.lock().unwrap().token_lifetime;
            json_response(
                200,
                json!({
                    "access_token": token,
                    "expires_in": lifetime.to_string(),
                    "expires_on": (now + lifetime).to_string(),
                    "resource": AZURE_DEVOPS_RESOURCE,
                    "token_type": "Bearer",
                }),
            )
        }
    }
}

/// Microsoft Entra ID's v2 token endpoint, for workload identity (`identity.md` §5): a client
/// assertion grant for `499b84ac-…/.default`, trusted when the assertion is the one every
/// identity's federated credential names.
async fn entra_token(
    AxState(s): AxState<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    record(&s, &method, &uri, &headers, "entra");
    let aad_error = |status: u16, error: &str, code: u64, description: &str| {
        json_response(
            status,
            json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {description}\r\nTrace ID: 00000000-sim\r\nCorrelation ID: 00000000-sim\r\nTimestamp: 2026-12-01 00:00:00Z"),
                "error_codes": [code],
                "timestamp": "2026-12-01 00:00:00Z",
                "trace_id": "00000000-sim",
                "correlation_id": "00000000-sim",
            }),
        )
    };
    if let Some(r) = next_identity_script(&s) {
        return r;
    }
    if !tenant.eq_ignore_ascii_case(&s.config.tenant_id) {
        return aad_error(
            400,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return aad_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain grant_type and client_assertion_type.",
        );
    }
    if field("scope") != format!("{AZURE_DEVOPS_RESOURCE}/.default") {
        return aad_error(
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let client = field("client_id").to_ascii_lowercase();
    let Some(identity) = s
        .config
        .identities
        .iter()
        .find(|i| i.client_id.to_ascii_lowercase() == client)
    else {
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client}' was not found in the directory."),
        );
    };
    if field("client_assertion") != s.config.workload_assertion {
        return aad_error(
            400,
            "invalid_client",
            700213,
            "No matching federated identity record found for presented assertion subject.",
        );
    }
    let token = issue_token(&s, identity);
    let lifetime = s.state.lock().unwrap().token_lifetime;
    json_response(
        200,
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }),
    )
}

fn ado_error(status: u16, type_key: &str, message: &str) -> Response {
    json_response(
        status,
        json!({
            "$id": "1",
            "innerException": null,
            "message": message,
            "typeName": format!("Microsoft.TeamFoundation.DistributedTask.WebApi.{type_key}, Microsoft.TeamFoundation.DistributedTask.WebApi"),
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000
        }),
    )
}

/// A 401 with the `WWW-Authenticate` challenges the server sends: Azure DevOps Services offers
/// Bearer (with Entra's authorization URI), Basic and its federated sign-in; Azure DevOps Server
/// behind IIS offers Windows authentication and Basic, never Bearer.
fn challenge(mut response: Response, on_premises: bool) -> Response {
    let offered: &[&str] = if on_premises {
        &["Negotiate", "NTLM", "Basic realm=\"tfs.example.com\""]
    } else {
        &[
            "Bearer authorization_uri=https://login.microsoftonline.com/00000000-0000-4000-8000-0000000a11ce",
            "Basic realm=\"https://tfsprodeus2su6.app.visualstudio.com/\"",
            "TFS-Federated",
        ]
    };
    for value in offered {
        response.headers_mut().append(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(value),
        );
    }
    response
}

/// The caller of an Azure DevOps request: Bearer or Basic (any user name, token as password).
fn authenticate(
    s: &Shared,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<IdentitySpec, Box<(String, Response)>> {
    let on_premises = s.state.lock().unwrap().on_premises;
    let Some((scheme, token)) = presented_token(headers) else {
        return Err(Box::new((
            "none".into(),
            challenge(
                ado_error(
                    401,
                    "UnauthorizedRequestException",
                    "TF400813: Resource not available for anonymous access. Client authentication required.",
                ),
                on_premises,
            ),
        )));
    };
    let (oid, pat) = {
        let state = s.state.lock().unwrap();
        (
            state.tokens.get(&token).cloned(),
            state.pats.get(&token).cloned(),
        )
    };
    // Azure DevOps Server takes Windows accounts and PATs; an Entra token is just not a credential
    // there, whoever it names.
    if on_premises && scheme == Scheme::Bearer {
        return Err(Box::new((
            "invalid".into(),
            challenge(
                ado_error(
                    401,
                    "UnauthorizedRequestException",
                    "TF400813: Resource not available for anonymous access. Client authentication required.",
                ),
                true,
            ),
        )));
    }
    // A PAT is accepted only as Basic, as Azure DevOps does.
    let oid = match (oid, pat) {
        (Some(oid), _) => Some(oid),
        (None, Some(oid)) if scheme == Scheme::Basic => Some(oid),
        _ => None,
    };
    let Some(oid) = oid else {
        return Err(Box::new((
            "invalid".into(),
            challenge(
                ado_error(
                    401,
                    "VssUnauthorizedException",
                    &format!(
                        "VS30063: You are not authorized to access http://{}{}.",
                        s.config.org,
                        uri.path()
                    ),
                ),
                on_premises,
            ),
        )));
    };
    let identity = s
        .config
        .identities
        .iter()
        .find(|i| i.object_id == oid)
        .cloned()
        .expect("tokens are issued for known identities");
    let pending = {
        let mut st = s.state.lock().unwrap();
        let pending = st.membership_pending > 0;
        st.membership_pending = st.membership_pending.saturating_sub(1);
        pending
    };
    if !identity.org_member || pending {
        return Err(Box::new((
            oid.clone(),
            challenge(
                ado_error(
                    401,
                    "UnauthorizedRequestException",
                    &format!(
                        "TF400813: The user '{oid}' is not authorized to access this resource."
                    ),
                ),
                on_premises,
            ),
        )));
    }
    Ok(identity)
}

fn decode_basic(b64: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = vec![];
    for c in b64.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Authenticates and records the caller of an Azure DevOps route; else the response the route
/// answers with (an outage, a scripted response, an unknown organization, a failed sign-in).
#[allow(clippy::result_large_err)]
fn identify(
    s: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    org: &str,
) -> Result<IdentitySpec, Response> {
    if s.state.lock().unwrap().ado_down {
        record(s, method, uri, headers, "outage");
        return Err(ado_error(
            503,
            "ServiceUnavailableException",
            "TF400893: simulated outage",
        ));
    }
    let scripted = s.state.lock().unwrap().ado_script.pop_front();
    if let Some(scripted) = scripted {
        record(s, method, uri, headers, "scripted");
        return Err(scripted_response(scripted));
    }
    if !org.eq_ignore_ascii_case(&s.config.org) {
        record(s, method, uri, headers, "unknown-org");
        return Err(ado_error(
            404,
            "OrganizationNotFoundException",
            &format!("TF400898: organization '{org}' was not found"),
        ));
    }
    match authenticate(s, headers, uri) {
        Ok(id) => {
            record(s, method, uri, headers, &id.object_id);
            Ok(id)
        }
        Err(boxed) => {
            let (who, response) = *boxed;
            record(s, method, uri, headers, &who);
            Err(response)
        }
    }
}

/// [`identify`], returning its error response from the route.
macro_rules! caller {
    ($s:expr, $method:expr, $uri:expr, $headers:expr, $org:expr) => {
        match $crate::server::identify(&$s, &$method, &$uri, &$headers, &$org) {
            Ok(me) => me,
            Err(response) => return response,
        }
    };
}

mod deployment;

async fn connection_data(
    AxState(s): AxState<Shared>,
    Path(org): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let me = caller!(s, method, uri, headers, org);
    let user = json!({
        "id": me.object_id,
        "descriptor": format!("Microsoft.VisualStudio.Services.Claims.AadServicePrincipal;{}", me.object_id),
        "subjectDescriptor": format!("aadsp.{}", me.object_id),
        "providerDisplayName": me.display_name,
        "isActive": true,
    });
    json_response(
        200,
        json!({
            "authenticatedUser": user,
            "authorizedUser": user,
            "instanceId": "00000000-0000-4000-8000-00000000beef",
            "deploymentId": "00000000-0000-4000-8000-00000000cafe",
            "deploymentType": if s.state.lock().unwrap().on_premises { "onPremises" } else { "hosted" },
            "locationServiceData": {"serviceOwner": "00025394-6065-48ca-87d9-7f5672854ef7"}
        }),
    )
}

fn pool_json(p: &super::PoolSpec) -> serde_json::Value {
    json!({"id": p.id, "name": p.name, "isHosted": false, "poolType": "automation", "size": 0, "isLegacy": false})
}

async fn pools(
    AxState(s): AxState<Shared>,
    Path(org): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let me = caller!(s, method, uri, headers, org);
    let manage = q
        .get("actionFilter")
        .is_some_and(|a| a.eq_ignore_ascii_case("manage"));
    let value: Vec<serde_json::Value> = s
        .config
        .pools
        .iter()
        .filter(|p| {
            q.get("poolName")
                .is_none_or(|n| n.eq_ignore_ascii_case(&p.name))
        })
        .filter(|p| !manage || (p.admins.contains(&me.object_id) && !manage_pending(&s)))
        .map(pool_json)
        .collect();
    json_response(200, json!({"count": value.len(), "value": value}))
}

/// An agent as Azure DevOps returns it; `assignedRequest` only when asked for
/// (`includeAssignedRequest=true`) and the agent runs a job.
fn agent_json(a: &ServerAgent, include_assigned: bool) -> serde_json::Value {
    let mut v = json!({
        "id": a.id, "name": a.name, "version": a.version, "status": a.status, "enabled": a.enabled,
        "osDescription": "Linux (simulated)", "provisioningState": "Provisioned",
        "createdOn": crate::rfc3339(a.created_on),
        "statusChangedOn": crate::rfc3339(a.status_changed_on),
        "authorization": {"clientId": format!("00000000-0000-4000-8000-{:012}", a.id), "publicKey": {"exponent": "AQAB", "modulus": a.public_key}},
    });
    if include_assigned && let Some(r) = a.assigned_request {
        v["assignedRequest"] = json!({"requestId": r, "planType": "Build", "queueTime": crate::rfc3339(a.status_changed_on)});
    }
    v
}

/// `includeCapabilities=true`: the agent's `systemCapabilities` (and its `userCapabilities`,
/// none here), as Agents - List and Get return them when asked.
fn with_capabilities(
    mut v: serde_json::Value,
    a: &ServerAgent,
    q: &HashMap<String, String>,
) -> serde_json::Value {
    if q.get("includeCapabilities")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        v["systemCapabilities"] = json!(a.system_capabilities);
        v["userCapabilities"] = json!({});
    }
    v
}

fn wants_assigned(q: &HashMap<String, String>) -> bool {
    q.get("includeAssignedRequest")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn find_pool<'a>(s: &'a Shared, pool: &str) -> Option<&'a super::PoolSpec> {
    let id: u64 = pool.parse().ok()?;
    s.config
        .pools
        .iter()
        .chain(s.deployment_pools.iter())
        .find(|p| p.id == id)
}

async fn list_agents(
    AxState(s): AxState<Shared>,
    Path((org, pool)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let _me = caller!(s, method, uri, headers, org);
    let Some(p) = find_pool(&s, &pool) else {
        return pool_not_found(&pool);
    };
    let state = s.state.lock().unwrap();
    let value: Vec<serde_json::Value> = state
        .agents
        .get(&p.id)
        .into_iter()
        .flatten()
        .filter(|a| {
            q.get("agentName")
                .is_none_or(|n| n.eq_ignore_ascii_case(&a.name))
        })
        .map(|a| with_capabilities(agent_json(a, wants_assigned(&q)), a, &q))
        .collect();
    json_response(200, json!({"count": value.len(), "value": value}))
}

async fn get_agent(
    AxState(s): AxState<Shared>,
    Path((org, pool, agent)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let _me = caller!(s, method, uri, headers, org);
    let state = s.state.lock().unwrap();
    let found = find_pool(&s, &pool)
        .and_then(|p| state.agents.get(&p.id))
        .and_then(|list| list.iter().find(|a| a.id == agent));
    match found {
        Some(a) => json_response(
            200,
            with_capabilities(agent_json(a, wants_assigned(&q)), a, &q),
        ),
        None => ado_error(
            404,
            "TaskAgentNotFoundException",
            &format!("No agent found in pool {pool} having ID {agent}."),
        ),
    }
}

fn pool_not_found(pool: &str) -> Response {
    ado_error(
        404,
        "TaskAgentPoolNotFoundException",
        &format!("Agent pool {pool} could not be found."),
    )
}

/// Whether the caller's pool role is still propagating (`State::manage_pending`): counts one.
fn manage_pending(s: &Shared) -> bool {
    let mut st = s.state.lock().unwrap();
    let pending = st.manage_pending > 0;
    st.manage_pending = st.manage_pending.saturating_sub(1);
    pending
}

/// The pool, if the caller may manage it (Administrator); else the server's error.
#[allow(clippy::result_large_err)]
fn managed_pool<'a>(
    s: &'a Shared,
    pool: &str,
    me: &IdentitySpec,
) -> Result<&'a super::PoolSpec, Response> {
    let p = find_pool(s, pool).ok_or_else(|| pool_not_found(pool))?;
    if !p.admins.contains(&me.object_id) || manage_pending(s) {
        return Err(access_denied(me, p));
    }
    Ok(p)
}

fn access_denied(me: &IdentitySpec, pool: &super::PoolSpec) -> Response {
    ado_error(
        403,
        "AccessDeniedException",
        &format!(
            "Access denied. {} needs Manage permissions for pool {} to perform the action. For more information, contact the Azure DevOps Server administrator.",
            me.display_name, pool.name
        ),
    )
}

#[derive(serde::Deserialize)]
struct AgentBody {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    authorization: Option<serde_json::Value>,
    #[serde(default, rename = "systemCapabilities")]
    system_capabilities: std::collections::BTreeMap<String, String>,
}

impl AgentBody {
    fn public_key(&self) -> String {
        self.authorization
            .as_ref()
            .and_then(|a| a.pointer("/publicKey/modulus"))
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_owned()
    }

    /// A replace: the agent's new key, capabilities and version
    /// (`ConfigurationManager.UpdateExistingAgent`).
    fn replace(&self, a: &mut ServerAgent) {
        a.public_key = self.public_key();
        a.system_capabilities = self.system_capabilities.clone();
        if let Some(v) = &self.version {
            a.version = v.clone();
        }
    }

    /// The agent the server creates for this body: offline and enabled until its listener runs.
    fn into_agent(self, id: u64) -> ServerAgent {
        ServerAgent {
            id,
            public_key: self.public_key(),
            name: self.name,
            version: self.version.unwrap_or_default(),
            status: "offline".into(),
            enabled: true,
            created_on: now_secs(),
            status_changed_on: now_secs(),
            assigned_request: None,
            system_capabilities: self.system_capabilities,
        }
    }
}

async fn add_agent(
    AxState(s): AxState<Shared>,
    Path((org, pool)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let me = caller!(s, method, uri, headers, org);
    let p = match managed_pool(&s, &pool, &me) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let Ok(body) = serde_json::from_str::<AgentBody>(&body) else {
        return ado_error(400, "ArgumentException", "Invalid agent");
    };
    let mut state = s.state.lock().unwrap();
    if state.fail_agent_add {
        return access_denied(&me, p);
    }
    let id = state.next_agent_id;
    let list = state.agents.entry(p.id).or_default();
    if list.iter().any(|a| a.name.eq_ignore_ascii_case(&body.name)) {
        return ado_error(
            409,
            "TaskAgentExistsException",
            &format!(
                "Pool {} already contains an agent with name {}.",
                p.id, body.name
            ),
        );
    }
    let agent = body.into_agent(id);
    list.push(agent.clone());
    state.next_agent_id += 1;
    json_response(200, agent_json(&agent, false))
}

async fn update_agent(
    AxState(s): AxState<Shared>,
    Path((org, pool, agent)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let me = caller!(s, method, uri, headers, org);
    let p = match managed_pool(&s, &pool, &me) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let Ok(body) = serde_json::from_str::<AgentBody>(&body) else {
        return ado_error(400, "ArgumentException", "Invalid agent");
    };
    let mut state = s.state.lock().unwrap();
    if state.fail_agent_update {
        return update_failed();
    }
    let a = match agent_mut(&mut state, p.id, &pool, agent) {
        Ok(a) => a,
        Err(response) => return response,
    };
    body.replace(a);
    let a = a.clone();
    json_response(200, agent_json(&a, false))
}

/// `State::fail_agent_update`'s answer to a replace.
fn update_failed() -> Response {
    ado_error(
        500,
        "InternalServerErrorException",
        "Simulated failure updating the agent.",
    )
}

/// Deleting an agent: `State::agent_busy` counts down, else refused while it runs a job.
fn refuse_busy(state: &mut State, pool_id: u64, agent: u64) -> Option<Response> {
    let busy = || {
        ado_error(
            400,
            "TaskAgentBusyException",
            &format!("The agent {agent} is running a job and cannot be deleted."),
        )
    };
    if state.agent_busy > 0 {
        state.agent_busy -= 1;
        return Some(busy());
    }
    state
        .agents
        .get(&pool_id)
        .and_then(|l| l.iter().find(|a| a.id == agent))
        .filter(|a| a.assigned_request.is_some())
        .map(|_| busy())
}

/// One agent of a pool, or Azure DevOps' 404 for it.
#[allow(clippy::result_large_err)]
fn agent_mut<'a>(
    state: &'a mut State,
    pool_id: u64,
    pool: &str,
    agent: u64,
) -> Result<&'a mut ServerAgent, Response> {
    state
        .agents
        .get_mut(&pool_id)
        .and_then(|l| l.iter_mut().find(|a| a.id == agent))
        .ok_or_else(|| {
            ado_error(
                404,
                "TaskAgentNotFoundException",
                &format!("No agent found in pool {pool} having ID {agent}."),
            )
        })
}

/// Agents - Update (`PATCH`): here, `enabled` (drain: no new job is assigned to a disabled agent).
async fn patch_agent(
    AxState(s): AxState<Shared>,
    Path((org, pool, agent)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let me = caller!(s, method, uri, headers, org);
    let p = match managed_pool(&s, &pool, &me) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let Ok(body) = serde_json::from_str::<serde_json::Value>(&body) else {
        return ado_error(400, "ArgumentException", "Invalid agent");
    };
    let mut state = s.state.lock().unwrap();
    let a = match agent_mut(&mut state, p.id, &pool, agent) {
        Ok(a) => a,
        Err(response) => return response,
    };
    if let Some(enabled) = body.get("enabled").and_then(|v| v.as_bool()) {
        a.enabled = enabled;
    }
    let a = a.clone();
    json_response(200, agent_json(&a, false))
}

async fn delete_agent(
    AxState(s): AxState<Shared>,
    Path((org, pool, agent)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let me = caller!(s, method, uri, headers, org);
    let p = match managed_pool(&s, &pool, &me) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let mut state = s.state.lock().unwrap();
    if let Some(refused) = refuse_busy(&mut state, p.id, agent) {
        return refused;
    }
    if let Some(l) = state.agents.get_mut(&p.id) {
        l.retain(|a| a.id != agent);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn packages(
    AxState(s): AxState<Shared>,
    Path(org): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let _me = caller!(s, method, uri, headers, org);
    let spec = &s.config.package;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let mut value = vec![];
    if q.get("platform")
        .is_none_or(|p| p.eq_ignore_ascii_case(&spec.platform))
    {
        let v: Vec<u64> = spec
            .version
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        value.push(json!({
            "type": "agent",
            "platform": spec.platform,
            "createdOn": "2026-08-12T00:00:00Z",
            "version": {"major": v[0], "minor": v[1], "patch": v[2]},
            "downloadUrl": match &s.config.download_base {
                Some(base) => format!("{base}/agent/{}/{}", spec.version, spec.file_name()),
                None => format!("{}://{host}/_download/agent/{}/{}", s.scheme, spec.version, spec.file_name()),
            },
            "infoUrl": "https://go.microsoft.com/fwlink/?LinkId=798199",
            "hashValue": s.package.sha256,
            "filename": spec.file_name(),
        }));
    }
    json_response(200, json!({"count": value.len(), "value": value}))
}

/// A file of `SimConfig::files_dir` (a public storage container: no credentials asked).
async fn tool_file(
    AxState(s): AxState<Shared>,
    Path(file): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&s, &method, &uri, &headers, "tools");
    let found = s
        .config
        .files_dir
        .as_ref()
        .filter(|_| !file.contains('/') && !file.starts_with('.'))
        .and_then(|d| fs_err::read(d.join(&file)).ok());
    match found {
        Some(bytes) => (StatusCode::OK, bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "BlobNotFound").into_response(),
    }
}

async fn download(
    AxState(s): AxState<Shared>,
    Path((version, file)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&s, &method, &uri, &headers, "download");
    if headers.get(header::AUTHORIZATION).is_some() {
        // The real download host is public; a credential here would be a leak.
        return (
            StatusCode::BAD_REQUEST,
            "credentials must not be sent to the download host",
        )
            .into_response();
    }
    let spec = &s.config.package;
    // The package agents install, or the newer one an update asks for.
    let package = if version == spec.version && file == spec.file_name() {
        s.package.clone()
    } else {
        let offered = s.state.lock().unwrap().agent_update.clone();
        match offered.filter(|u| version == u.spec.version && file == u.spec.file_name()) {
            Some(u) => u.package,
            None => return (StatusCode::NOT_FOUND, "BlobNotFound").into_response(),
        }
    };
    let (faults, throttle) = {
        let mut st = s.state.lock().unwrap();
        st.package_downloads += 1;
        let f = st.package_faults.clone();
        if f.cut_after.is_some() && st.package_faults.cuts_left > 0 {
            st.package_faults.cuts_left -= 1;
        }
        (f, s.config.throttle)
    };
    if let Some(status) = faults.fail_status {
        return (StatusCode::from_u16(status).unwrap(), "simulated failure").into_response();
    }
    let size = package.size;
    let mut start = 0u64;
    let mut partial = false;
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok())
        && !faults.ignore_range
        && let Some(from) = range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok())
    {
        if from >= size {
            return (StatusCode::RANGE_NOT_SATISFIABLE, "").into_response();
        }
        start = from;
        partial = true;
    }
    let cut_at = (faults.cut_after.is_some() && faults.cuts_left > 0)
        .then(|| start + faults.cut_after.unwrap_or(0));
    let corrupt_at = faults.corrupt.then_some(size / 2);
    let path = package.path.clone();
    let stream = async_stream(path, start, size, throttle, cut_at, corrupt_at);
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size - start)
        .header(header::ACCEPT_RANGES, "bytes");
    if partial {
        response = response.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", size - 1),
        );
    }
    response.body(Body::from_stream(stream)).unwrap()
}

fn async_stream(
    path: std::path::PathBuf,
    start: u64,
    size: u64,
    throttle: Option<u64>,
    cut_at: Option<u64>,
    corrupt_at: Option<u64>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let result: std::io::Result<()> = async {
            let mut f = tokio::fs::File::open(&path).await?;
            f.seek(std::io::SeekFrom::Start(start)).await?;
            let began = tokio::time::Instant::now();
            let mut pos = start;
            let mut sent = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            while pos < size {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                let mut chunk = buf[..n].to_vec();
                if let Some(c) = corrupt_at
                    && c >= pos
                    && c < pos + n as u64
                {
                    chunk[(c - pos) as usize] ^= 0xff;
                }
                if let Some(cut) = cut_at
                    && pos + n as u64 > cut
                {
                    let keep = (cut.saturating_sub(pos)) as usize;
                    if keep > 0 {
                        let _ = tx
                            .send(Ok(bytes::Bytes::copy_from_slice(&chunk[..keep])))
                            .await;
                    }
                    let _ = tx
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "simulated connection cut",
                        )))
                        .await;
                    return Ok(());
                }
                pos += n as u64;
                sent += n as u64;
                if tx.send(Ok(bytes::Bytes::from(chunk))).await.is_err() {
                    return Ok(());
                }
                if let Some(rate) = throttle {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    let elapsed = began.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

async fn sim_config(AxState(s): AxState<Shared>) -> Response {
    json_response(
        200,
        json!({
            "systemd_dir": s.config.work_dir.join("systemd"),
            "org": s.config.org,
            "listener_loopback_remote": s.state.lock().unwrap().listener_loopback_remote,
        }),
    )
}

async fn sim_report(AxState(s): AxState<Shared>, body: String) -> Response {
    match serde_json::from_str::<ListenerReport>(&body) {
        Ok(r) => {
            s.state.lock().unwrap().listener_reports.push(r);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// The fake listener's `run`: `online` (status online, at the version it reports; or a scripted
/// exit), `poll` (an `AgentRefresh` for an offered update, once per session, to an agent of an older
/// version, which then gets no job until it is back updated; else a queued job, when the agent is
/// enabled and idle), `done` (the job ran to its end), `offline` (a running job is abandoned). Not
/// an Azure API: the real listener talks to the broker with its own credentials.
async fn sim_listener(AxState(s): AxState<Shared>, headers: HeaderMap, body: String) -> Response {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let (Some(pool), Some(agent)) = (v["pool"].as_u64(), v["agent"].as_u64()) else {
        return (StatusCode::BAD_REQUEST, "pool and agent").into_response();
    };
    let mut st = s.state.lock().unwrap();
    let next_exit = if v["event"] == "online" {
        st.listener_exits.pop_front()
    } else {
        None
    };
    let job = if v["event"] == "poll" {
        st.queued_jobs.front().copied()
    } else {
        None
    };
    let request_id = st.next_request_id;
    let update = st.agent_update.as_ref().map(|u| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let refresh = json!({
            "targetVersion": u.spec.version,
            "downloadUrl": format!("{}://{host}/_download/agent/{}/{}", s.scheme, u.spec.version, u.spec.file_name()),
            "hashValue": u.package.sha256,
        });
        (u.spec.version.clone(), u.told.contains(&agent), refresh)
    });
    let mut told = false;
    let Some(a) = st
        .agents
        .get_mut(&pool)
        .and_then(|l| l.iter_mut().find(|a| a.id == agent))
    else {
        return json_response(404, json!({"error": "agent not registered"}));
    };
    let name = a.name.clone();
    let mut finished = None;
    let mut answer = json!({});
    match v["event"].as_str().unwrap_or_default() {
        "online" => {
            // A new session of an agent that still holds a job: the listener that ran it is gone
            // (killed with its VM or container) and never renewed the job's lock, so the server
            // abandons that job and the agent can take others (Azure DevOps does so once the lock
            // expires; here at once).
            if let Some(r) = a.assigned_request.take() {
                finished = Some((r, false));
            }
            if let Some(code) = next_exit {
                answer = json!({"exit": code});
            } else {
                a.status = "online".into();
                a.status_changed_on = now_secs();
                if let Some(version) = v["version"].as_str() {
                    a.version = version.to_owned();
                }
            }
        }
        "poll" => {
            let outdated = update
                .as_ref()
                .filter(|(version, ..)| super::package::older(&a.version, version));
            if let Some((_, already, refresh)) = outdated {
                if !already {
                    answer = json!({"refresh": refresh});
                    told = true;
                }
            } else if let Some(millis) = job
                && a.enabled
                && a.assigned_request.is_none()
            {
                a.assigned_request = Some(request_id);
                answer = json!({"job": {"request": request_id, "millis": millis}});
            }
        }
        "done" => {
            if let Some(r) = a.assigned_request.take() {
                finished = Some((r, true));
            }
        }
        "offline" => {
            a.status = "offline".into();
            a.status_changed_on = now_secs();
            if let Some(r) = a.assigned_request.take() {
                finished = Some((r, false));
            }
        }
        other => return (StatusCode::BAD_REQUEST, format!("event {other}")).into_response(),
    }
    if answer.get("job").is_some() {
        st.queued_jobs.pop_front();
        st.next_request_id += 1;
    }
    if let Some(u) = st.agent_update.as_mut() {
        // A new session starts afresh; the message is sent once per session.
        if v["event"] == "online" {
            u.told.retain(|id| *id != agent);
        }
        if told {
            u.told.push(agent);
        }
    }
    if let Some((r, completed)) = finished {
        st.jobs.push((name, r, completed));
    }
    json_response(200, answer)
}

/// Request counts, for the benchmark (which runs the simulator as a separate process).
async fn sim_stats(AxState(s): AxState<Shared>) -> Response {
    let st = s.state.lock().unwrap();
    let ado = st
        .requests
        .iter()
        .filter(|r| r.path.starts_with(&format!("/{}/", s.config.org)))
        .count();
    let imds = st
        .requests
        .iter()
        .filter(|r| r.path.starts_with("/metadata/"))
        .count();
    json_response(
        200,
        json!({"requests": st.requests.len(), "ado_requests": ado, "imds_requests": imds}),
    )
}
