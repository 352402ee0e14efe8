//! Where an agent registers besides an agent pool: a **deployment group** (classic release
//! pipelines' machines) or an **environment** (YAML pipelines' virtual-machine resources).
//!
//! The real agent has a configuration provider for each (`src/Agent.Listener/Configuration/
//! ConfigurationProvider.cs`: `DeploymentGroupAgentConfigProvider`,
//! `EnvironmentVMResourceConfigProvider`), chosen by `--deploymentgroup` / `--environment`, each
//! with its own REST routes: a deployment group's agents are its *targets*
//! (`{project}/_apis/distributedtask/deploymentgroups/{id}/targets`), an environment's its *virtual
//! machine resources* (`{project}/_apis/pipelines/environments/{id}/providers/virtualmachines`).
//! The agent itself still lives in a pool (the group's deployment pool, the environment's linked
//! pool), but the identity is an administrator of the group or the environment, not necessarily of
//! that pool: everything here goes through the group's own routes, as `config.sh` does, and
//! `.agent`'s `deploymentGroupId` / `environmentId` say which kind a registration is
//! (`ConfigurationManager.UnconfigureAsync`).

use serde::{Deserialize, Serialize};

use crate::clock::Budget;
use crate::devops::{DevOpsClient, DevOpsError, Pool, ServerAgent};

/// The two kinds of group an agent can join instead of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    DeploymentGroup,
    Environment,
}

impl GroupKind {
    /// As messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            Self::DeploymentGroup => "deployment group",
            Self::Environment => "environment",
        }
    }

    /// The flag that chooses it.
    pub fn flag(self) -> &'static str {
        match self {
            Self::DeploymentGroup => "--deployment-group",
            Self::Environment => "--environment",
        }
    }
}

/// A group as the user named it (`--deployment-group NAME --project P --tag T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub kind: GroupKind,
    pub project: String,
    pub name: String,
    /// The target's (VM resource's) tags, as the agent takes them: blanks dropped, trimmed,
    /// duplicates (ignoring case) dropped, order kept.
    pub tags: Vec<String>,
}

/// A group as the server knows it: saved, and what the REST calls below need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub kind: GroupKind,
    /// The project as the user named it (the agent's `--projectname`).
    pub project: String,
    /// The project's id, which the agent uses in every later route.
    pub project_id: String,
    pub name: String,
    pub id: u64,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl GroupRef {
    /// The group as the user would name it again (reconcile configures from it).
    pub fn group(&self) -> Group {
        Group {
            kind: self.kind,
            project: self.project.clone(),
            name: self.name.clone(),
            tags: self.tags.clone(),
        }
    }

    /// `{project id}/_apis/…/{id}/<members>`: where its agents are listed, added and deleted.
    fn members(&self) -> String {
        match self.kind {
            GroupKind::DeploymentGroup => format!(
                "{}/_apis/distributedtask/deploymentgroups/{}/targets",
                self.project_id, self.id
            ),
            GroupKind::Environment => format!(
                "{}/_apis/pipelines/environments/{}/providers/virtualmachines",
                self.project_id, self.id
            ),
        }
    }
}

/// The agent's arguments for a group instead of `--pool` (`Constants.cs`, `CommandSettings.cs`):
/// tags only with the flag that adds them (without it the agent ignores them).
pub fn configure_args(g: &Group) -> Vec<String> {
    let (mode, name, add_tags, tags) = match g.kind {
        GroupKind::DeploymentGroup => (
            "--deploymentgroup",
            "--deploymentgroupname",
            "--adddeploymentgrouptags",
            "--deploymentgrouptags",
        ),
        GroupKind::Environment => (
            "--environment",
            "--environmentname",
            "--addvirtualmachineresourcetags",
            "--virtualmachineresourcetags",
        ),
    };
    let mut args: Vec<String> = vec![
        mode.into(),
        name.into(),
        g.name.clone(),
        "--projectname".into(),
        g.project.clone(),
    ];
    if !g.tags.is_empty() {
        args.extend([add_tags.into(), tags.into(), g.tags.join(",")]);
    }
    args
}

/// Tags as the agent takes them (`ConfigurationProvider.cs`, `GetAndAddTags`): split on commas,
/// blanks dropped, trimmed, duplicates ignoring case dropped, the first spelling and order kept.
pub fn parse_tags<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut tags: Vec<String> = vec![];
    for t in values.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
        if !t.is_empty() && !tags.iter().any(|k| k.eq_ignore_ascii_case(t)) {
            tags.push(t.to_owned());
        }
    }
    tags
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
}

#[derive(Deserialize)]
struct ProjectRef {
    id: String,
}

#[derive(Deserialize)]
struct PoolRef {
    id: u64,
    name: String,
}

/// A deployment group or an environment, as the list routes return them.
#[derive(Deserialize)]
struct Found {
    id: u64,
    name: String,
    project: ProjectRef,
    /// A deployment group's deployment pool (an environment's list entry has none).
    #[serde(default)]
    pool: Option<PoolRef>,
}

/// A deployment target or a virtual-machine resource: its own id and the agent in it.
#[derive(Deserialize)]
struct Member {
    id: u64,
    #[serde(default)]
    agent: Option<ServerAgent>,
}

impl DevOpsClient {
    /// The group if this identity may register agents in it: a deployment group is asked for with
    /// `actionFilter=manage` (as pools are); an environment's list has no such filter, so only
    /// its existence is checked here and a missing role shows at registration.
    ///
    /// The [`Pool`] returned is what the service's name and the saved settings use: the
    /// deployment pool (`group.pool`) of a deployment group; the environment's name, as the
    /// agent's service name has it (`ServiceControlManager.CalculateServiceName`: `PoolName ??
    /// EnvironmentName`), for an environment.
    pub async fn group_access(
        &self,
        g: &Group,
        identity: &str,
        budget: &Budget,
    ) -> Result<Pool, DevOpsError> {
        let manage = g.kind == GroupKind::DeploymentGroup;
        if let Some(found) = self.find_group(g, manage, budget).await? {
            return Ok(pool_of(g, found));
        }
        let exists = manage && self.find_group(g, false, budget).await?.is_some();
        Err(if exists {
            DevOpsError::NoGroupPermission {
                group: g.name.clone(),
                project: g.project.clone(),
                identity: identity.to_owned(),
            }
        } else {
            DevOpsError::GroupNotFound {
                what: g.kind.noun(),
                flag: g.kind.flag(),
                group: g.name.clone(),
                project: g.project.clone(),
                org: self.org_url().to_string(),
            }
        })
    }

    async fn find_group(
        &self,
        g: &Group,
        manage: bool,
        budget: &Budget,
    ) -> Result<Option<Found>, DevOpsError> {
        let path = match g.kind {
            GroupKind::DeploymentGroup => "_apis/distributedtask/deploymentgroups",
            GroupKind::Environment => "_apis/pipelines/environments",
        };
        let mut query = vec![("name", g.name.as_str())];
        if manage {
            query.push(("actionFilter", "manage"));
        }
        query.push(("api-version", group_api_version(g.kind)));
        let url = self.api(&format!("{}/{path}", g.project), &query);
        match self.get::<List<Found>>(url, budget).await {
            Ok(list) => Ok((list.value.into_iter()).find(|f| f.name.eq_ignore_ascii_case(&g.name))),
            // An unknown project is a 404 (`ProjectDoesNotExistWithNameException`).
            Err(DevOpsError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The group's agent of this name (a deployment target's or a VM resource's agent), with
    /// the member's own id, which deleting it takes.
    pub async fn find_group_agent(
        &self,
        g: &GroupRef,
        name: &str,
        budget: &Budget,
    ) -> Result<Option<ServerAgent>, DevOpsError> {
        let mut query = vec![("name", name)];
        if g.kind == GroupKind::DeploymentGroup {
            query.push(("$expand", "capabilities"));
        }
        query.push(("api-version", group_api_version(g.kind)));
        let url = self.api(&g.members(), &query);
        let list: List<Member> = self.get(url, budget).await?;
        Ok(list.value.into_iter().find_map(|m| {
            let mut agent = m.agent?;
            agent.name.eq_ignore_ascii_case(name).then(|| {
                agent.member_id = Some(m.id);
                agent
            })
        }))
    }

    /// Deletes the agent's deployment target (which deletes the agent from the deployment pool
    /// too) or VM resource, as `config.sh remove` does. Already gone: what was wanted.
    pub async fn delete_group_agent(
        &self,
        g: &GroupRef,
        agent: &ServerAgent,
        budget: &Budget,
    ) -> Result<(), DevOpsError> {
        let member = agent.member_id.unwrap_or(agent.id);
        let path = format!("{}/{member}", g.members());
        let url = self.api(&path, &[("api-version", group_api_version(g.kind))]);
        match self.call(reqwest::Method::DELETE, url, budget).await {
            Ok(_) | Err(DevOpsError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Deployment groups are GA at 7.1; the environments' VM routes are a preview (`environments.json`
/// 7.2), as the agent's own client asks for them.
fn group_api_version(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::DeploymentGroup => "7.1",
        GroupKind::Environment => "7.2-preview.1",
    }
}

fn pool_of(g: &Group, found: Found) -> Pool {
    let (id, name) = match (g.kind, found.pool) {
        (GroupKind::DeploymentGroup, Some(p)) => (p.id, p.name),
        // An environment's agents are named after it (`PoolName ?? EnvironmentName`).
        _ => (0, found.name.clone()),
    };
    Pool {
        id,
        name,
        group: Some(GroupRef {
            kind: g.kind,
            project: g.project.clone(),
            project_id: found.project.id,
            name: found.name,
            id: found.id,
            tags: g.tags.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_taken_as_the_agent_takes_them() {
        assert_eq!(
            parse_tags(["web, db", " ,WEB", "linux"]),
            vec!["web", "db", "linux"]
        );
        assert!(parse_tags([" , "]).is_empty());
    }

    #[test]
    fn configure_args_replace_the_pool() {
        let g = Group {
            kind: GroupKind::DeploymentGroup,
            project: "Fabrikam".into(),
            name: "web-servers".into(),
            tags: vec!["web".into(), "prod".into()],
        };
        assert_eq!(
            configure_args(&g),
            [
                "--deploymentgroup",
                "--deploymentgroupname",
                "web-servers",
                "--projectname",
                "Fabrikam",
                "--adddeploymentgrouptags",
                "--deploymentgrouptags",
                "web,prod"
            ]
        );
        let e = Group {
            kind: GroupKind::Environment,
            tags: vec![],
            ..g
        };
        assert_eq!(
            configure_args(&e),
            [
                "--environment",
                "--environmentname",
                "web-servers",
                "--projectname",
                "Fabrikam"
            ]
        );
    }
}
