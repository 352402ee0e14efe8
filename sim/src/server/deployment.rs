//! Deployment groups and environments: the project-scoped Azure DevOps routes the agent's
//! `--deploymentgroup` and `--environment` modes use (`DeploymentGroupServer`, `EnvironmentsServer`
//! in the agent), as `vsts-rest-api-specs` (taskAgent 7.1, environments 7.2) and Microsoft's generated
//! clients describe them: find a group or environment by name in a project (named or by id), list,
//! add, replace, tag and delete its deployment targets or VM resources. A target or resource holds
//! an agent of the group's deployment pool or the environment's linked pool (so the fake listener's
//! `run` and the pool routes see it like any agent); its status is that agent's. Changing one needs
//! the Administrator role on the group or environment.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    AgentBody, Q, Shared, ado_error, agent_json, identify, json_response, manage_pending,
    refuse_busy, update_failed,
};
use crate::{
    DeploymentGroupKind, DeploymentGroupSpec, DeploymentTarget, EnvironmentKind, EnvironmentSpec,
    IdentitySpec, ProjectPoolSpec, ProjectSpec, ServerAgent, SimConfig, State, VmResource,
    now_secs, rfc3339,
};

/// A request to one of these routes: what [`identify`] records and authenticates, and the path's
/// segments (organization, project, group or environment id, target or resource id, as far as the
/// route has them).
pub struct Call {
    s: Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    path: Vec<String>,
}

impl FromRequestParts<Shared> for Call {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, Response> {
        let Path(path) = Path::<Vec<String>>::from_request_parts(parts, s)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            s: s.clone(),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            path,
        })
    }
}

/// Deployment groups and environments: where a kind's specs are, and its 404.
trait Kind: Sized + 'static {
    fn all(config: &SimConfig) -> &[ProjectPoolSpec<Self>];
    fn not_found(id: &str) -> Response;
}

impl Kind for DeploymentGroupKind {
    fn all(config: &SimConfig) -> &[DeploymentGroupSpec] {
        &config.deployment_groups
    }

    fn not_found(id: &str) -> Response {
        ado_error(
            404,
            "DeploymentGroupNotFoundException",
            &format!("Deployment group {id} not found."),
        )
    }
}

impl Kind for EnvironmentKind {
    fn all(config: &SimConfig) -> &[EnvironmentSpec] {
        &config.environments
    }

    fn not_found(id: &str) -> Response {
        ado_error(
            404,
            "EnvironmentNotFoundException",
            &format!("Environment {id} not found."),
        )
    }
}

#[allow(clippy::result_large_err)]
impl Call {
    fn segment(&self, i: usize) -> &str {
        self.path.get(i).map_or("", String::as_str)
    }

    /// The target or resource id a `…/{id}` route names.
    fn item(&self) -> &str {
        self.segment(3)
    }

    /// The authenticated caller, and the project the path names, by id or (case-insensitively) by
    /// name; else TF200016.
    fn project(&self) -> Result<(IdentitySpec, &ProjectSpec), Response> {
        let me = identify(
            &self.s,
            &self.method,
            &self.uri,
            &self.headers,
            self.segment(0),
        )?;
        let p = self.segment(1);
        let project = self
            .s
            .config
            .projects
            .iter()
            .find(|x| x.id.eq_ignore_ascii_case(p) || x.name.eq_ignore_ascii_case(p))
            .ok_or_else(|| {
                ado_error(
                    404,
                    "ProjectDoesNotExistWithNameException",
                    &format!(
                        "TF200016: The following project does not exist: {p}. Verify that the name of the project is correct and that the project exists on the specified Azure DevOps Server."
                    ),
                )
            })?;
        Ok((me, project))
    }

    /// [`Call::project`], and the deployment group or environment of the project the path names.
    fn scope<K: Kind>(
        &self,
    ) -> Result<(IdentitySpec, &ProjectSpec, &ProjectPoolSpec<K>), Response> {
        let (me, p) = self.project()?;
        let id = self.segment(2);
        let found = id
            .parse::<u64>()
            .ok()
            .and_then(|id| {
                K::all(&self.s.config)
                    .iter()
                    .find(|g| g.id == id && g.project.eq_ignore_ascii_case(&p.name))
            })
            .ok_or_else(|| K::not_found(id))?;
        Ok((me, p, found))
    }

    /// [`Call::scope`] for a change: the caller must be an Administrator of the group or
    /// environment.
    fn managed<K: Kind>(&self) -> Result<(IdentitySpec, &ProjectPoolSpec<K>), Response> {
        let (me, _, found) = self.scope::<K>()?;
        if !may_manage(&self.s, &found.admins, &me) {
            return Err(access_denied(&me));
        }
        Ok((me, found))
    }
}

/// The groups or environments of a project, with `name=` as an exact, case-insensitive match.
fn in_project<'a, K: Kind>(
    config: &'a SimConfig,
    p: &'a ProjectSpec,
    q: &'a HashMap<String, String>,
) -> impl Iterator<Item = &'a ProjectPoolSpec<K>> {
    K::all(config)
        .iter()
        .filter(|g| g.project.eq_ignore_ascii_case(&p.name))
        .filter(|g| {
            q.get("name")
                .is_none_or(|n| n.eq_ignore_ascii_case(&g.name))
        })
}

/// Whether the caller is an Administrator (`admins`), counting one propagation delay
/// (`State::manage_pending`) as the pool checks do.
fn may_manage(s: &Shared, admins: &[String], me: &IdentitySpec) -> bool {
    admins.contains(&me.object_id) && !manage_pending(s)
}

/// The service's generic 403 for a missing Manage permission (AccessDeniedException).
fn access_denied(me: &IdentitySpec) -> Response {
    ado_error(
        403,
        "AccessDeniedException",
        &format!(
            "Access denied. {} needs Manage permissions to perform the action. For more information, contact the Azure DevOps Server administrator.",
            me.display_name
        ),
    )
}

fn agent_exists(pool_name: &str, name: &str) -> Response {
    ado_error(
        409,
        "TaskAgentExistsException",
        &format!("Pool {pool_name} already contains an agent with name {name}."),
    )
}

fn bad_request(what: &str) -> Response {
    ado_error(400, "ArgumentException", what)
}

/// Strings of a JSON array (`tags`).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect()
}

/// A comma-separated query value (`tags=a,b`, `$expand=capabilities,assignedRequest`).
fn list(q: &HashMap<String, String>, key: &str) -> Vec<String> {
    q.get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn has_all(have: &[String], want: &[String]) -> bool {
    want.iter()
        .all(|w| have.iter().any(|h| h.eq_ignore_ascii_case(w)))
}

/// `name=` as an exact, case-insensitive match; with `partialNameMatch=true` a pattern where `*`
/// matches anything.
fn name_matches(q: &HashMap<String, String>, name: &str) -> bool {
    let Some(want) = q.get("name") else {
        return true;
    };
    let partial = q
        .get("partialNameMatch")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !partial {
        return want.eq_ignore_ascii_case(name);
    }
    let name = name.to_ascii_lowercase();
    let parts: Vec<String> = want
        .to_ascii_lowercase()
        .split('*')
        .map(str::to_owned)
        .collect();
    let mut rest = name.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part.as_str()) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 && !part.is_empty() {
            return rest.ends_with(part.as_str());
        } else if let Some(at) = rest.find(part.as_str()) {
            rest = &rest[at + part.len()..];
        } else {
            return false;
        }
    }
    parts.len() > 1 || rest.is_empty()
}

/// `agentStatus=online|offline|all` and `enabled=true|false`.
fn status_matches(q: &HashMap<String, String>, a: &ServerAgent) -> bool {
    let status = q
        .get("agentStatus")
        .is_none_or(|s| s.eq_ignore_ascii_case("all") || s.eq_ignore_ascii_case(&a.status));
    let enabled = q
        .get("enabled")
        .is_none_or(|e| e.eq_ignore_ascii_case(&a.enabled.to_string()));
    status && enabled
}

/// A target's agent with `$expand`: `capabilities` (system and user capabilities),
/// `assignedRequest`.
fn expanded_agent(a: &ServerAgent, expand: &[String]) -> Value {
    let wants = |what: &str| expand.iter().any(|e| e.eq_ignore_ascii_case(what));
    let mut v = agent_json(a, wants("assignedRequest"));
    if wants("capabilities") {
        v["systemCapabilities"] = json!(a.system_capabilities);
        v["userCapabilities"] = json!({});
    }
    v
}

/// A deployment target (`DeploymentMachine`): its id is its agent's.
fn machine_json(a: &ServerAgent, tags: &[String], expand: &[String]) -> Value {
    json!({"id": a.id, "tags": tags, "agent": expanded_agent(a, expand)})
}

fn pool_ref(id: u64, name: &str, size: usize) -> Value {
    json!({"id": id, "name": name, "isHosted": false, "poolType": "deployment", "size": size})
}

fn project_ref(p: &ProjectSpec) -> Value {
    json!({"id": p.id, "name": p.name})
}

fn group_json(
    g: &DeploymentGroupSpec,
    p: &ProjectSpec,
    state: &State,
    expand: Option<&String>,
) -> Value {
    let targets = state.targets(g.id, g.pool_id);
    let mut v = json!({
        "id": g.id, "name": g.name, "description": "", "machineCount": targets.len(),
        "project": project_ref(p),
        "pool": pool_ref(g.pool_id, &g.pool_name, state.pool_agents(g.pool_id).len()),
    });
    match expand.map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("machines") => {
            v["machines"] = targets
                .iter()
                .map(|(a, tags)| machine_json(a, tags, &[]))
                .collect();
        }
        Some("tags") => {
            let mut all: Vec<String> = vec![];
            for (_, tags) in &targets {
                for t in tags {
                    if !all.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                        all.push(t.clone());
                    }
                }
            }
            v["machineTags"] = json!(all);
        }
        _ => {}
    }
    v
}

fn environment_json(e: &EnvironmentSpec, p: &ProjectSpec) -> Value {
    json!({
        "id": e.id, "name": e.name, "description": "",
        "createdOn": "2026-08-01T00:00:00.000Z", "lastModifiedOn": "2026-08-01T00:00:00.000Z",
        "project": project_ref(p),
    })
}

fn vm_json(r: &VmResource, e: &EnvironmentSpec, a: Option<&ServerAgent>) -> Value {
    let mut v = json!({
        "id": r.id, "name": r.name, "type": "virtualMachine", "tags": r.tags,
        "environmentReference": {"id": e.id, "name": e.name},
        "createdOn": rfc3339(r.created_on), "lastModifiedOn": rfc3339(r.created_on),
    });
    if let Some(a) = a {
        v["agent"] = agent_json(a, false);
    }
    v
}

fn list_json(value: Vec<Value>) -> Response {
    json_response(200, json!({"count": value.len(), "value": value}))
}

fn target_not_found(group: u64, target: &str) -> Response {
    ado_error(
        404,
        "DeploymentMachineNotFoundException",
        &format!("Deployment target {target} not found in deployment group {group}."),
    )
}

fn resource_not_found(environment: u64, resource: impl std::fmt::Display) -> Response {
    ado_error(
        404,
        "EnvironmentResourceNotFoundException",
        &format!("Resource {resource} not found in environment {environment}."),
    )
}

// ---- Deployment groups ----

/// `GET {project}/_apis/distributedtask/deploymentgroups?name=&actionFilter=&$expand=`.
pub async fn list_groups(call: Call, Query(q): Q) -> Result<Response, Response> {
    let (me, p) = call.project()?;
    let s = &call.s;
    let groups: Vec<&DeploymentGroupSpec> = in_project(&s.config, p, &q).collect();
    let groups: Vec<&DeploymentGroupSpec> = groups
        .into_iter()
        .filter(|g| !wants_manage(&q) || may_manage(s, &g.admins, &me))
        .collect();
    let state = s.state.lock().unwrap();
    Ok(list_json(
        groups
            .into_iter()
            .map(|g| group_json(g, p, &state, q.get("$expand")))
            .collect(),
    ))
}

/// `actionFilter=manage`: only what the caller may manage.
fn wants_manage(q: &HashMap<String, String>) -> bool {
    q.get("actionFilter")
        .is_some_and(|a| a.eq_ignore_ascii_case("manage"))
}

/// `GET {project}/_apis/distributedtask/deploymentgroups/{id}`.
pub async fn get_group(call: Call, Query(q): Q) -> Result<Response, Response> {
    let (me, p, g) = call.scope::<DeploymentGroupKind>()?;
    if wants_manage(&q) && !may_manage(&call.s, &g.admins, &me) {
        return Err(access_denied(&me));
    }
    let state = call.s.state.lock().unwrap();
    Ok(json_response(
        200,
        group_json(g, p, &state, q.get("$expand")),
    ))
}

/// `GET …/deploymentgroups/{id}/targets?name=&partialNameMatch=&tags=&agentStatus=&enabled=&$expand=`.
pub async fn list_targets(call: Call, Query(q): Q) -> Result<Response, Response> {
    let (_, _, g) = call.scope::<DeploymentGroupKind>()?;
    let want_tags = list(&q, "tags");
    let expand = list(&q, "$expand");
    let state = call.s.state.lock().unwrap();
    Ok(list_json(
        state
            .targets(g.id, g.pool_id)
            .iter()
            .filter(|(a, tags)| {
                name_matches(&q, &a.name) && status_matches(&q, a) && has_all(tags, &want_tags)
            })
            .map(|(a, tags)| machine_json(a, tags, &expand))
            .collect(),
    ))
}

/// `GET …/deploymentgroups/{id}/targets/{targetId}?$expand=`.
pub async fn get_target(call: Call, Query(q): Q) -> Result<Response, Response> {
    let (_, _, g) = call.scope::<DeploymentGroupKind>()?;
    let target = call.item();
    let state = call.s.state.lock().unwrap();
    let found = state
        .targets(g.id, g.pool_id)
        .into_iter()
        .find(|(a, _)| target.parse() == Ok(a.id));
    match found {
        Some((a, tags)) => Ok(json_response(
            200,
            machine_json(&a, &tags, &list(&q, "$expand")),
        )),
        None => Err(target_not_found(g.id, target)),
    }
}

/// `POST …/deploymentgroups/{id}/targets` with a `DeploymentMachine` (`{"agent": {…}, "tags"?}`):
/// a new agent in the group's deployment pool; the target's id is the agent's.
pub async fn add_target(call: Call, body: String) -> Result<Response, Response> {
    let (me, g) = call.managed::<DeploymentGroupKind>()?;
    let (v, agent) = parse_agent(&body, None, "Invalid deployment target")?;
    let mut state = call.s.state.lock().unwrap();
    if state.fail_agent_add {
        return Err(access_denied(&me));
    }
    if state
        .pool_agents(g.pool_id)
        .iter()
        .any(|a| a.name.eq_ignore_ascii_case(&agent.name))
    {
        return Err(agent_exists(&g.pool_name, &agent.name));
    }
    let a = new_agent(&mut state, g.pool_id, agent);
    let t = DeploymentTarget {
        agent_id: a.id,
        tags: strings(&v["tags"]),
    };
    state
        .deployment_targets
        .entry(g.id)
        .or_default()
        .push(t.clone());
    Ok(json_response(200, machine_json(&a, &t.tags, &[])))
}

/// A registration body: the JSON, and the agent it describes at `at` (`None`: the body itself)
/// (`DeploymentMachine.agent`, `VirtualMachineResource.agent`); else a 400 saying `invalid`.
#[allow(clippy::result_large_err)]
fn parse_agent(
    body: &str,
    at: Option<&str>,
    invalid: &str,
) -> Result<(Value, AgentBody), Response> {
    let v = serde_json::from_str::<Value>(body).map_err(|_| bad_request(invalid))?;
    let holder = at.map_or(&v, |at| &v[at]);
    let agent = holder
        .get("agent")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .ok_or_else(|| bad_request(invalid))?;
    Ok((v, agent))
}

/// A new agent (the next id) in a pool, as the pool's `POST` adds it.
fn new_agent(state: &mut State, pool_id: u64, agent: AgentBody) -> ServerAgent {
    let id = state.next_agent_id;
    state.next_agent_id += 1;
    let a = agent.into_agent(id);
    state.agents.entry(pool_id).or_default().push(a.clone());
    a
}

/// A replace's agent: its new key, version and capabilities (`None`: it is gone).
fn replace_pool_agent(
    state: &mut State,
    pool_id: u64,
    id: u64,
    agent: &AgentBody,
) -> Option<ServerAgent> {
    let a = state
        .agents
        .get_mut(&pool_id)
        .and_then(|l| l.iter_mut().find(|a| a.id == id))?;
    agent.replace(a);
    Some(a.clone())
}

/// `PUT …/deploymentgroups/{id}/targets/{targetId}` with the whole `DeploymentMachine`: the agent's
/// new key, version and capabilities, and the tags the body carries.
pub async fn replace_target(call: Call, body: String) -> Result<Response, Response> {
    let (_, g) = call.managed::<DeploymentGroupKind>()?;
    let target = call.item();
    let (v, agent) = parse_agent(&body, None, "Invalid deployment target")?;
    let mut state = call.s.state.lock().unwrap();
    if state.fail_agent_update {
        return Err(update_failed());
    }
    let Ok(id) = target.parse::<u64>() else {
        return Err(target_not_found(g.id, target));
    };
    let Some(t) = state
        .deployment_targets
        .get_mut(&g.id)
        .and_then(|l| l.iter_mut().find(|t| t.agent_id == id))
    else {
        return Err(target_not_found(g.id, target));
    };
    if v.get("tags").is_some() {
        t.tags = strings(&v["tags"]);
    }
    let tags = t.tags.clone();
    let a = replace_pool_agent(&mut state, g.pool_id, id, &agent)
        .ok_or_else(|| target_not_found(g.id, target))?;
    Ok(json_response(200, machine_json(&a, &tags, &[])))
}

/// `PATCH …/deploymentgroups/{id}/targets` with `[{"id", "tags"}]`: each target's tags.
pub async fn update_targets(call: Call, body: String) -> Result<Response, Response> {
    let (_, g) = call.managed::<DeploymentGroupKind>()?;
    let Ok(Value::Array(updates)) = serde_json::from_str::<Value>(&body) else {
        return Err(bad_request("Invalid deployment target update"));
    };
    let mut state = call.s.state.lock().unwrap();
    let targets = state.deployment_targets.entry(g.id).or_default();
    for u in &updates {
        let id = u["id"].as_u64().unwrap_or(0);
        if !targets.iter().any(|t| t.agent_id == id) {
            return Err(target_not_found(g.id, &id.to_string()));
        }
    }
    let mut changed = vec![];
    for u in &updates {
        let id = u["id"].as_u64().unwrap_or(0);
        if let Some(t) = targets.iter_mut().find(|t| t.agent_id == id) {
            t.tags = strings(&u["tags"]);
            changed.push(t.clone());
        }
    }
    let agents = state.pool_agents(g.pool_id);
    Ok(list_json(
        changed
            .iter()
            .filter_map(|t| {
                agents
                    .iter()
                    .find(|a| a.id == t.agent_id)
                    .map(|a| machine_json(a, &t.tags, &[]))
            })
            .collect(),
    ))
}

/// `DELETE …/deploymentgroups/{id}/targets/{targetId}`: the target, and its agent from the
/// deployment pool ("This deletes the agent from associated deployment pool too").
pub async fn delete_target(call: Call) -> Result<Response, Response> {
    let (_, g) = call.managed::<DeploymentGroupKind>()?;
    let target = call.item();
    let mut state = call.s.state.lock().unwrap();
    let Ok(id) = target.parse::<u64>() else {
        return Err(target_not_found(g.id, target));
    };
    if !state
        .deployment_targets
        .get(&g.id)
        .is_some_and(|l| l.iter().any(|t| t.agent_id == id))
    {
        return Err(target_not_found(g.id, target));
    }
    delete_held_agent(&mut state, g.pool_id, id, |state| {
        if let Some(l) = state.deployment_targets.get_mut(&g.id) {
            l.retain(|t| t.agent_id != id);
        }
    })
}

/// Deleting a target or resource (`remove`) and its agent, unless the agent is busy.
#[allow(clippy::result_large_err)]
fn delete_held_agent(
    state: &mut State,
    pool_id: u64,
    agent: u64,
    remove: impl FnOnce(&mut State),
) -> Result<Response, Response> {
    if let Some(refused) = refuse_busy(state, pool_id, agent) {
        return Err(refused);
    }
    remove(state);
    if let Some(l) = state.agents.get_mut(&pool_id) {
        l.retain(|a| a.id != agent);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- Environments ----

/// `GET {project}/_apis/pipelines/environments?name=` (also served at the taskAgent area's
/// `_apis/distributedtask/environments`).
pub async fn list_environments(call: Call, Query(q): Q) -> Result<Response, Response> {
    let (_, p) = call.project()?;
    Ok(list_json(
        in_project::<EnvironmentKind>(&call.s.config, p, &q)
            .map(|e| environment_json(e, p))
            .collect(),
    ))
}

/// `GET {project}/_apis/pipelines/environments/{id}`.
pub async fn get_environment(call: Call) -> Result<Response, Response> {
    let (_, p, e) = call.scope::<EnvironmentKind>()?;
    Ok(json_response(200, environment_json(e, p)))
}

/// `GET …/environments/{id}/providers/virtualmachines?name=&tags=`.
pub async fn list_vms(call: Call, Query(q): Q) -> Result<Response, Response> {
    let (_, _, e) = call.scope::<EnvironmentKind>()?;
    let want_tags = list(&q, "tags");
    let state = call.s.state.lock().unwrap();
    Ok(list_json(
        state
            .environment_vms(e.id, e.pool_id)
            .iter()
            .filter(|(r, _)| {
                q.get("name")
                    .is_none_or(|n| n.eq_ignore_ascii_case(&r.name))
                    && has_all(&r.tags, &want_tags)
            })
            .map(|(r, a)| vm_json(r, e, a.as_ref()))
            .collect(),
    ))
}

const INVALID_VM: &str = "Invalid virtual machine resource";

/// `POST …/environments/{id}/providers/virtualmachines` with
/// `{"virtualMachineResource": {"name", "agent", "tags"}}`: a new agent in the environment's pool
/// and a resource holding it.
pub async fn add_vm(call: Call, body: String) -> Result<Response, Response> {
    let (me, e) = call.managed::<EnvironmentKind>()?;
    let (v, agent) = parse_agent(&body, Some("virtualMachineResource"), INVALID_VM)?;
    let resource = &v["virtualMachineResource"];
    let name = resource["name"].as_str().unwrap_or(&agent.name).to_owned();
    let mut state = call.s.state.lock().unwrap();
    if state.fail_agent_add {
        return Err(access_denied(&me));
    }
    let taken = state
        .pool_agents(e.pool_id)
        .iter()
        .any(|a| a.name.eq_ignore_ascii_case(&agent.name))
        || state
            .vm_resources
            .get(&e.id)
            .is_some_and(|l| l.iter().any(|r| r.name.eq_ignore_ascii_case(&name)));
    if taken {
        return Err(agent_exists(&e.pool_name, &agent.name));
    }
    let a = new_agent(&mut state, e.pool_id, agent);
    let r = VmResource {
        id: state.next_vm_resource_id,
        name,
        agent_id: a.id,
        tags: strings(&resource["tags"]),
        created_on: now_secs(),
    };
    state.next_vm_resource_id += 1;
    state.vm_resources.entry(e.id).or_default().push(r.clone());
    Ok(json_response(200, vm_json(&r, e, Some(&a))))
}

/// The resource a `PUT`/`PATCH` body names (`id`), as a mutable reference.
fn vm_mut<'a>(state: &'a mut State, env: u64, v: &Value) -> Option<&'a mut VmResource> {
    let id = v["id"].as_u64()?;
    state
        .vm_resources
        .get_mut(&env)
        .and_then(|l| l.iter_mut().find(|r| r.id == id))
}

/// `PUT …/environments/{id}/providers/virtualmachines` with a whole `VirtualMachineResource` (its id
/// inside): the agent's new key, version and capabilities, and the body's tags (none: no tags).
pub async fn replace_vm(call: Call, body: String) -> Result<Response, Response> {
    let (_, e) = call.managed::<EnvironmentKind>()?;
    let (v, agent) = parse_agent(&body, None, INVALID_VM)?;
    let mut state = call.s.state.lock().unwrap();
    if state.fail_agent_update {
        return Err(update_failed());
    }
    let Some(r) = vm_mut(&mut state, e.id, &v) else {
        return Err(resource_not_found(e.id, &v["id"]));
    };
    r.tags = strings(&v["tags"]);
    let r = r.clone();
    let a = replace_pool_agent(&mut state, e.pool_id, r.agent_id, &agent)
        .ok_or_else(|| resource_not_found(e.id, r.id))?;
    Ok(json_response(200, vm_json(&r, e, Some(&a))))
}

/// `PATCH …/environments/{id}/providers/virtualmachines` with `{"id", "tags"}`: the resource's tags.
pub async fn update_vm(call: Call, body: String) -> Result<Response, Response> {
    let (_, e) = call.managed::<EnvironmentKind>()?;
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return Err(bad_request(INVALID_VM));
    };
    let mut state = call.s.state.lock().unwrap();
    let Some(r) = vm_mut(&mut state, e.id, &v) else {
        return Err(resource_not_found(e.id, &v["id"]));
    };
    if v.get("tags").is_some() {
        r.tags = strings(&v["tags"]);
    }
    let r = r.clone();
    let a = state
        .pool_agents(e.pool_id)
        .into_iter()
        .find(|a| a.id == r.agent_id);
    Ok(json_response(200, vm_json(&r, e, a.as_ref())))
}

/// `DELETE …/environments/{id}/providers/virtualmachines/{resourceId}`: the resource and its agent.
pub async fn delete_vm(call: Call) -> Result<Response, Response> {
    let (_, e) = call.managed::<EnvironmentKind>()?;
    let resource = call.item();
    let mut state = call.s.state.lock().unwrap();
    let found = resource.parse::<u64>().ok().and_then(|id| {
        state
            .vm_resources
            .get(&e.id)
            .and_then(|l| l.iter().find(|r| r.id == id))
            .cloned()
    });
    let Some(r) = found else {
        return Err(resource_not_found(e.id, resource));
    };
    delete_held_agent(&mut state, e.pool_id, r.agent_id, |state| {
        if let Some(l) = state.vm_resources.get_mut(&e.id) {
            l.retain(|x| x.id != r.id);
        }
    })
}

/// `GET …/environments/{id}/providers/virtualmachines/pool`: the linked pool (`GetLinkedPoolAsync`).
pub async fn vm_pool(call: Call) -> Result<Response, Response> {
    let (_, _, e) = call.scope::<EnvironmentKind>()?;
    let size = call.s.state.lock().unwrap().pool_agents(e.pool_id).len();
    Ok(json_response(200, pool_ref(e.pool_id, &e.pool_name, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_match_exactly_unless_partial() {
        assert!(name_matches(&q(&[("name", "Web-01")]), "web-01"));
        assert!(!name_matches(&q(&[("name", "web")]), "web-01"));
        let partial =
            |p: &str, n: &str| name_matches(&q(&[("name", p), ("partialNameMatch", "true")]), n);
        assert!(partial("demo*get1", "demoTargetget1"));
        assert!(partial("web*", "web-01"));
        assert!(partial("*01", "web-01"));
        assert!(!partial("web*", "db-01"));
        assert!(!partial("*02", "web-01"));
        assert!(partial("web-01", "web-01"));
        assert!(!partial("web", "web-01"));
    }

    #[test]
    fn tag_filters_need_every_tag_in_any_case() {
        let have = vec!["Web".to_owned(), "db".to_owned()];
        assert!(has_all(&have, &["web".to_owned()]));
        assert!(has_all(&have, &["DB".to_owned(), "web".to_owned()]));
        assert!(!has_all(&have, &["web".to_owned(), "cache".to_owned()]));
        assert!(has_all(&have, &[]));
    }
}
