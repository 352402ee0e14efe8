//! Where the fake listener registers its agent — a pool, a deployment group or an environment — as
//! the real one's `IConfigurationProvider`s do (`src/Agent.Listener/Configuration/ConfigurationProvider.cs`:
//! `BuildReleasesAgentConfigProvider`, `DeploymentGroupAgentConfigProvider`,
//! `EnvironmentVMResourceConfigProvider`): resolve the target (`GetPoolIdAndName`), find an agent by
//! name (`GetAgentAsync`), add, replace and delete it, with the same REST calls, messages and
//! `.agent` fields. `configure`, `remove` and `reauth` in the parent module drive them.

use serde_json::{Map, Value, json};

use super::{Api, Ctx, Parsed, message, urlencode};

/// The agent's kind (`Constants.Agent.AgentConfigurationProvider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Pool,
    DeploymentGroup,
    Environment,
}

impl Mode {
    /// From configure's options (`ConfigurationManager.GetAgentTypeFromCommand`): `--deploymentgroup`
    /// (or the legacy `--machinegroup`, argv only), else `--deploymentpool`, else `--environment`,
    /// else a pool. A shared deployment pool agent is not simulated.
    pub(super) fn of_options(parsed: &Parsed) -> Result<Self, String> {
        let machine_group =
            parsed.flags.contains_key("machinegroup") && !parsed.env_flags.contains("machinegroup");
        if parsed.flags.contains_key("deploymentgroup") || machine_group {
            Ok(Self::DeploymentGroup)
        } else if parsed.flags.contains_key("deploymentpool") {
            Err("Simulated agent does not support --deploymentpool".into())
        } else if parsed.flags.contains_key("environment") {
            Ok(Self::Environment)
        } else {
            Ok(Self::Pool)
        }
    }

    /// From `.agent` (`UnconfigureAsync`, `ReAuthAsync`): a machine or deployment group id, else an
    /// environment id, else a pool.
    pub(super) fn of_settings(settings: &Value) -> Self {
        let positive = |k: &str| settings[k].as_i64().is_some_and(|n| n > 0);
        if positive("machineGroupId") || positive("deploymentGroupId") {
            Self::DeploymentGroup
        } else if positive("environmentId") {
            Self::Environment
        } else {
            Self::Pool
        }
    }
}

/// A resolved target: what `.agent` records of it and what the service is named after.
pub(super) struct Target {
    pub mode: Mode,
    /// `.agent` keys beside `agentId`, `agentName`, `serverUrl`, `workFolder`: `poolId`, `poolName`;
    /// `deploymentGroupId`, `projectId`; `environmentId`, `environmentName`, `environmentVMResourceId`,
    /// `projectName`.
    pub fields: Map<String, Value>,
    /// The agent's name as the server returned it (an environment names the VM resource).
    pub agent_name: Option<String>,
}

impl Target {
    fn u64(&self, key: &str) -> u64 {
        self.fields.get(key).and_then(Value::as_u64).unwrap_or(0)
    }

    fn str(&self, key: &str) -> String {
        self.fields
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    pub(super) fn pool_id(&self) -> u64 {
        self.u64("poolId")
    }

    /// `AgentSettings.PoolName` (`None` for an environment, whose `.agent` has none).
    pub(super) fn pool_name(&self) -> Option<String> {
        self.fields
            .get("poolName")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// `{1}` of the service name: `PoolName ?? EnvironmentName` (`ServiceControlManager.cs:36`).
    pub(super) fn service_collection(&self) -> String {
        self.pool_name()
            .unwrap_or_else(|| self.str("environmentName"))
    }

    /// The target `.agent` describes (`remove`, `reauth`).
    pub(super) fn of_settings(settings: &Value) -> Self {
        let mode = Mode::of_settings(settings);
        let keys: &[&str] = match mode {
            Mode::Pool => &["poolId", "poolName"],
            Mode::DeploymentGroup => &["poolId", "poolName", "deploymentGroupId", "projectId"],
            Mode::Environment => &[
                "poolId",
                "environmentId",
                "environmentName",
                "environmentVMResourceId",
                "projectId",
                "projectName",
            ],
        };
        let fields = keys
            .iter()
            .filter_map(|k| settings.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        Self {
            mode,
            fields,
            agent_name: None,
        }
    }

    /// After an add or replace: what the provider set in `AgentSettings` goes back into `.agent`
    /// (an environment's pool, resource id and name; nothing else changes).
    pub(super) fn apply(&self, settings: &mut Value) {
        if self.mode != Mode::Environment {
            return;
        }
        for k in ["poolId", "environmentVMResourceId"] {
            if let Some(v) = self.fields.get(k) {
                settings[k] = v.clone();
            }
        }
        if let Some(n) = &self.agent_name {
            settings["agentName"] = json!(n);
        }
    }

    /// `{projectId}/_apis/…` (the agent addresses the project by id once it has it).
    fn project_path(&self) -> String {
        segment(&self.str("projectId"))
    }

    fn targets_path(&self) -> String {
        format!(
            "{}/_apis/distributedtask/deploymentgroups/{}/targets",
            self.project_path(),
            self.u64("deploymentGroupId")
        )
    }

    fn vms_path(&self) -> String {
        format!(
            "{}/_apis/pipelines/environments/{}/providers/virtualmachines",
            self.project_path(),
            self.u64("environmentId")
        )
    }
}

/// A path segment, percent-encoded (a project name with spaces).
fn segment(s: &str) -> String {
    let mut u = url::Url::parse("http://x/").expect("static URL");
    if let Ok(mut p) = u.path_segments_mut() {
        p.push(s);
    }
    u.path().trim_start_matches('/').to_owned()
}

/// A value that must be given and not be empty (`GetArgOrPrompt` with `NonEmptyValidator`,
/// unattended: "Invalid configuration provided for …").
fn given(ctx: &mut Ctx, parsed: &Parsed, names: &[&str], reported: &str) -> Option<String> {
    let v = names
        .iter()
        .find_map(|n| parsed.values.get(*n).filter(|v| !v.is_empty()).cloned());
    if v.is_none() {
        ctx.err(&format!(
            "Value cannot be null. (Parameter 'Invalid configuration provided for {reported}. Terminating unattended configuration.')"
        ));
    }
    v
}

/// The first of the list a `GET` returns (a pool, deployment group or environment looked up by
/// name); else `not_found`, or the server's or transport's error, printed.
async fn first_found(ctx: &mut Ctx, api: &Api<'_>, path: String, not_found: &str) -> Option<Value> {
    let found = match api.get(&path).await {
        Ok((200, v)) => Ok(v["value"].as_array().and_then(|a| a.first().cloned())),
        Ok((_, v)) => Err(message(&v)),
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            ctx.err(not_found);
            None
        }
        Err(e) => {
            ctx.err(&e);
            None
        }
    }
}

/// `GetPoolIdAndName`: the pool, deployment group or environment configure names. On failure the
/// error is printed.
pub(super) async fn resolve(
    ctx: &mut Ctx,
    parsed: &Parsed,
    api: &Api<'_>,
    mode: Mode,
) -> Option<Target> {
    let mut fields = Map::new();
    match mode {
        Mode::Pool => {
            let pool_name = parsed
                .values
                .get("pool")
                .cloned()
                .unwrap_or_else(|| "default".into());
            let pool = first_found(
                ctx,
                api,
                format!(
                    "_apis/distributedtask/pools?poolName={}",
                    urlencode(&pool_name)
                ),
                &format!("Agent pool not found: '{pool_name}'"),
            )
            .await?;
            fields.insert("poolId".into(), json!(pool["id"].as_u64().unwrap_or(0)));
            fields.insert(
                "poolName".into(),
                json!(pool["name"].as_str().unwrap_or(&pool_name)),
            );
        }
        Mode::DeploymentGroup => {
            let project = given(ctx, parsed, &["projectname"], "projectname")?;
            let name = given(
                ctx,
                parsed,
                &["machinegroupname", "deploymentgroupname"],
                "deploymentgroupname",
            )?;
            let group = first_found(
                ctx,
                api,
                format!(
                    "{}/_apis/distributedtask/deploymentgroups?name={}",
                    segment(&project),
                    urlencode(&name)
                ),
                &format!("Deployment Group not found: '{name}'"),
            )
            .await?;
            fields.insert("poolId".into(), group["pool"]["id"].clone());
            fields.insert("poolName".into(), group["pool"]["name"].clone());
            fields.insert("deploymentGroupId".into(), group["id"].clone());
            fields.insert("projectId".into(), group["project"]["id"].clone());
        }
        Mode::Environment => {
            let project = given(ctx, parsed, &["projectname"], "projectname")?;
            let name = given(ctx, parsed, &["environmentname"], "environmentname")?;
            let env = first_found(
                ctx,
                api,
                format!(
                    "{}/_apis/pipelines/environments?name={}",
                    segment(&project),
                    urlencode(&name)
                ),
                &format!("Environment not found: '{name}'"),
            )
            .await?;
            // The name as typed, not as the server spells it (`GetPoolIdAndName`).
            fields.insert("environmentName".into(), json!(name));
            fields.insert("environmentId".into(), env["id"].clone());
            fields.insert("projectName".into(), env["project"]["name"].clone());
            fields.insert("projectId".into(), env["project"]["id"].clone());
        }
    }
    Some(Target {
        mode,
        fields,
        agent_name: None,
    })
}

/// An agent found by name, and (deployment group, environment) the target or resource holding it.
pub(super) struct Found {
    pub agent: Value,
    holder: Value,
}

/// `GetAgentAsync`: the agent of this name, if any.
pub(super) async fn find(
    api: &Api<'_>,
    target: &Target,
    name: &str,
) -> Result<Option<Found>, String> {
    if target.mode == Mode::Pool {
        return Ok(api
            .agent_by_name(target.pool_id(), name)
            .await?
            .map(|agent| Found {
                agent,
                holder: Value::Null,
            }));
    }
    let base = match target.mode {
        Mode::DeploymentGroup => target.targets_path(),
        _ => target.vms_path(),
    };
    match api.get(&format!("{base}?name={}", urlencode(name))).await? {
        (200, v) => Ok(v["value"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .map(|holder| Found {
                agent: holder["agent"].clone(),
                holder,
            })),
        (_, v) => Err(message(&v)),
    }
}

/// The message an existing agent stops an unattended configure with (`ThrowTaskAgentExistException`).
pub(super) fn exists_error(target: &Target, agent_name: &str) -> String {
    match target.mode {
        Mode::Pool => format!(
            "Pool {} already contains an agent with name {agent_name}.",
            target.pool_id()
        ),
        Mode::DeploymentGroup => format!(
            "DeploymentGroup {} already contains a machine with name {agent_name}.",
            target.u64("deploymentGroupId")
        ),
        Mode::Environment => format!(
            "Environment with id '{}' already contains a virtual machine resource with name '{agent_name}'.",
            target.u64("environmentId")
        ),
    }
}

/// `GetDeploymentGroupTags` / `GetEnvironmentVirtualMachineResourceTags` behind their flags: `None`
/// when not asked for; `Some(Err(()))` when asked for without a value (printed); else the tags split
/// on `,`, blanks dropped, trimmed, first of each case-insensitive spelling kept.
fn tags(ctx: &mut Ctx, parsed: &Parsed, mode: Mode) -> Option<Result<Vec<String>, ()>> {
    let (flags, values, reported): (&[&str], &[&str], &str) = match mode {
        Mode::DeploymentGroup => (
            &["addmachinegrouptags", "adddeploymentgrouptags"],
            &["machinegrouptags", "deploymentgrouptags"],
            "deploymentgrouptags",
        ),
        Mode::Environment => (
            &["addvirtualmachineresourcetags"],
            &["virtualmachineresourcetags"],
            "virtualmachineresourcetags",
        ),
        Mode::Pool => return None,
    };
    if !flags.iter().any(|f| parsed.flags.contains_key(*f)) {
        return None;
    }
    let Some(text) = given(ctx, parsed, values, reported) else {
        return Some(Err(()));
    };
    let mut out: Vec<String> = vec![];
    for t in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(t)) {
            out.push(t.to_owned());
        }
    }
    Some(Ok(out))
}

/// What an add or replace call answered: the agent (HTTP 200), or the service's status and body.
pub(super) type Answer = Result<(u16, Value), String>;

/// A deployment group's `GetAndAddTags` after an add or replace: with the tags flag, `PATCH` the
/// target's tags ("Tags added successfully"); any failure ends configure (unattended).
async fn add_group_tags(
    ctx: &mut Ctx,
    parsed: &Parsed,
    api: &Api<'_>,
    target: &Target,
    holder: &Value,
) -> Result<(), String> {
    let Some(tags) = tags(ctx, parsed, Mode::DeploymentGroup) else {
        return Ok(());
    };
    let tags = tags.map_err(|()| String::new())?;
    if tags.is_empty() {
        return Ok(());
    }
    let body = json!([{"id": holder["id"], "tags": tags}]);
    match api
        .call(reqwest::Method::PATCH, &target.targets_path(), Some(body))
        .await?
    {
        (200, _) => {
            ctx.out("Tags added successfully");
            Ok(())
        }
        (_, v) => Err(message(&v)),
    }
}

/// An environment's linked pool (`GetEnvironmentPoolAsync`) into the target, with the resource's
/// id and name (`AddAgentAsync`, `UpdateAgentAsync`).
async fn take_resource(api: &Api<'_>, target: &mut Target, vm: &Value) -> Result<(), String> {
    let pool = match api.get(&format!("{}/pool", target.vms_path())).await? {
        (200, v) => v,
        (_, v) => return Err(message(&v)),
    };
    target.fields.insert("poolId".into(), pool["id"].clone());
    target
        .fields
        .insert("environmentVMResourceId".into(), vm["id"].clone());
    target.agent_name = vm["name"].as_str().map(str::to_owned);
    Ok(())
}

/// `AddAgentAsync`. `body` is the new agent (name, version, capabilities, public key). A failure
/// after the server created the target (tags) is an `Err` too; its text is printed by the caller
/// unless empty (already printed).
pub(super) async fn add(
    ctx: &mut Ctx,
    parsed: &Parsed,
    api: &Api<'_>,
    target: &mut Target,
    body: Value,
) -> Answer {
    match target.mode {
        Mode::Pool => {
            api.call(
                reqwest::Method::POST,
                &format!("_apis/distributedtask/pools/{}/agents", target.pool_id()),
                Some(body),
            )
            .await
        }
        Mode::DeploymentGroup => {
            let path = target.targets_path();
            let sent = accepted(api, reqwest::Method::POST, &path, json!({"agent": body})).await?;
            group_target_sent(ctx, parsed, api, target, sent).await
        }
        Mode::Environment => {
            let tags = vm_tags(ctx, parsed)?;
            let vm = json!({"name": body["name"], "agent": body, "tags": tags});
            let body = json!({"virtualMachineResource": vm});
            let sent = accepted(api, reqwest::Method::POST, &target.vms_path(), body).await?;
            vm_resource_sent(api, target, sent).await
        }
    }
}

/// The answer's JSON when the server said 200; any other answer as it came.
async fn accepted(
    api: &Api<'_>,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Result<Result<Value, (u16, Value)>, String> {
    Ok(match api.call(method, path, Some(body)).await? {
        (200, v) => Ok(v),
        other => Err(other),
    })
}

/// After a deployment target was added or replaced: its tags (`GetAndAddTags`), and its agent.
async fn group_target_sent(
    ctx: &mut Ctx,
    parsed: &Parsed,
    api: &Api<'_>,
    target: &mut Target,
    sent: Result<Value, (u16, Value)>,
) -> Answer {
    let machine = match sent {
        Ok(v) => v,
        Err(refused) => return Ok(refused),
    };
    add_group_tags(ctx, parsed, api, target, &machine).await?;
    Ok((200, machine["agent"].clone()))
}

/// After a VM resource was added or replaced: its id and linked pool, and its agent.
async fn vm_resource_sent(
    api: &Api<'_>,
    target: &mut Target,
    sent: Result<Value, (u16, Value)>,
) -> Answer {
    let vm = match sent {
        Ok(v) => v,
        Err(refused) => return Ok(refused),
    };
    take_resource(api, target, &vm).await?;
    Ok((200, vm["agent"].clone()))
}

/// An environment's VM resource tags from the options (none: no tags); a missing value has been
/// reported and ends the configuration.
fn vm_tags(ctx: &mut Ctx, parsed: &Parsed) -> Result<Vec<String>, String> {
    match tags(ctx, parsed, Mode::Environment) {
        None => Ok(vec![]),
        Some(Ok(t)) => Ok(t),
        Some(Err(())) => Err(String::new()),
    }
}

/// `UpdateAgentAsync` (`--replace`, reauth): the found agent with the new key, version and
/// capabilities of `body`. An environment's resource gets the tags the options give (none: no tags).
pub(super) async fn replace(
    ctx: &mut Ctx,
    parsed: &Parsed,
    api: &Api<'_>,
    target: &mut Target,
    found: &Found,
    body: Value,
) -> Answer {
    let id = found.agent["id"].as_u64().unwrap_or(0);
    let mut agent = found.agent.clone();
    if let (Some(a), Some(b)) = (agent.as_object_mut(), body.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
    match target.mode {
        Mode::Pool => {
            api.call(
                reqwest::Method::PUT,
                &format!(
                    "_apis/distributedtask/pools/{}/agents/{id}",
                    target.pool_id()
                ),
                Some(body),
            )
            .await
        }
        Mode::DeploymentGroup => {
            let mut machine = found.holder.clone();
            machine["agent"] = agent;
            let path = format!("{}/{}", target.targets_path(), machine["id"]);
            let sent = accepted(api, reqwest::Method::PUT, &path, machine).await?;
            group_target_sent(ctx, parsed, api, target, sent).await
        }
        Mode::Environment => {
            let tags = vm_tags(ctx, parsed)?;
            let mut vm = found.holder.clone();
            vm["agent"] = agent;
            vm["tags"] = json!(tags);
            let sent = accepted(api, reqwest::Method::PUT, &target.vms_path(), vm).await?;
            vm_resource_sent(api, target, sent).await
        }
    }
}

/// `DeleteAgentAsync`: the agent from its pool, the target from its group (the agent with it), or
/// the resource `.agent` names (`environmentVMResourceId`, not the one found).
pub(super) async fn delete(api: &Api<'_>, target: &Target, found: &Found) -> Answer {
    let path = match target.mode {
        Mode::Pool => format!(
            "_apis/distributedtask/pools/{}/agents/{}",
            target.pool_id(),
            found.agent["id"].as_u64().unwrap_or(0)
        ),
        Mode::DeploymentGroup => format!("{}/{}", target.targets_path(), found.holder["id"]),
        Mode::Environment => format!(
            "{}/{}",
            target.vms_path(),
            target.u64("environmentVMResourceId")
        ),
    };
    api.call(reqwest::Method::DELETE, &path, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_escaped_as_path_segments() {
        assert_eq!(segment("my project"), "my%20project");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment("myproject"), "myproject");
    }

    #[test]
    fn the_mode_comes_from_the_ids_in_agent() {
        assert_eq!(Mode::of_settings(&json!({"poolId": 1})), Mode::Pool);
        assert_eq!(
            Mode::of_settings(&json!({"poolId": 101, "deploymentGroupId": 1, "environmentId": 3})),
            Mode::DeploymentGroup
        );
        assert_eq!(
            Mode::of_settings(&json!({"poolId": 101, "machineGroupId": 4})),
            Mode::DeploymentGroup
        );
        assert_eq!(
            Mode::of_settings(&json!({"poolId": 201, "environmentId": 1})),
            Mode::Environment
        );
    }
}
