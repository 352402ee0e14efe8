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
//! (`ConfigurationManager.UnconfigureAsync`). The REST calls themselves are
//! [`crate::devops::DevOpsClient`]'s (`group_access`, `find_group_agent`, `delete_group_agent`).

use serde::{Deserialize, Serialize};

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
    pub fn members(&self) -> String {
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

/// Deployment groups are GA at 7.1; the environments' VM routes are a preview (`environments.json`
/// 7.2), as the agent's own client asks for them.
pub fn api_version(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::DeploymentGroup => "7.1",
        GroupKind::Environment => "7.2-preview.1",
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
