//! `agent-bootstrap status`: what is installed here, and what the server thinks of it.
//!
//! Local facts come from the agent's files, systemd and the saved settings; the server's view needs
//! a token and is given up quickly (status must not hang a terminal for minutes) and reported as
//! unknown with the reason. Human-readable by default, `--json` for scripts.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::agent::AgentDir;
use crate::clock::Clock;
use crate::devops::DevOpsClient;
use crate::env::Env;
use crate::error::Error;
use crate::identity::{ImdsClient, Selector, retry::Policy};
use crate::os::Os;
use crate::service::{Systemctl, UnitState};
use crate::settings;
use crate::state;

#[derive(Debug, Serialize)]
pub struct Status {
    pub agent_dir: String,
    pub installed: bool,
    pub configured: bool,
    pub agent_name: Option<String>,
    pub agent_id: Option<u64>,
    pub pool: Option<String>,
    pub pool_id: Option<u64>,
    pub url: Option<String>,
    pub agent_version: Option<String>,
    pub self_updated: bool,
    pub service_unit: Option<String>,
    pub service: Option<UnitState>,
    pub boot_unit: Option<String>,
    pub boot: Option<UnitState>,
    pub saved_settings: Option<String>,
    pub server: ServerStatus,
}

#[derive(Debug, Serialize)]
pub struct ServerStatus {
    pub checked: bool,
    pub exists: Option<bool>,
    pub same_id: Option<bool>,
    pub status: Option<String>,
    pub enabled: Option<bool>,
    pub error: Option<String>,
}

pub async fn run(
    agent_dir: &Path,
    json: bool,
    env: &Env,
    os: Os,
    clock: Clock,
) -> Result<(), Error> {
    let state_dir = settings::state_dir(env, &os);
    let saved = state::load(&state_dir, agent_dir)?;
    let agent = AgentDir::new(agent_dir, &os);
    let local = agent.settings()?;
    let systemctl = Systemctl::find();
    let service_unit = agent.service_name();
    let service = match (&systemctl, &service_unit) {
        (Some(sc), Some(u)) => sc.state(u).await.ok(),
        _ => None,
    };
    let boot_unit = saved.as_ref().and_then(|s| s.boot_unit.clone());
    let boot = match (&systemctl, &boot_unit) {
        (Some(sc), Some(u)) => sc.state(u).await.ok(),
        _ => None,
    };
    let agent_version = match &saved {
        Some(s) if s.agent_version.is_some() && !agent.self_updated() => s.agent_version.clone(),
        _ if agent.package_present() => crate::commands::install::installed_version(&agent).await,
        _ => None,
    };

    let mut server = ServerStatus {
        checked: false,
        exists: None,
        same_id: None,
        status: None,
        enabled: None,
        error: None,
    };
    if let Some(cfg) = &local {
        let selector = Selector::from_saved(saved.as_ref().and_then(|s| s.identity.as_deref()));
        let url = saved
            .as_ref()
            .map(|s| s.url.clone())
            .unwrap_or_else(|| cfg.server_url.clone());
        let result: Result<_, Error> = async {
            let imds = ImdsClient::from_env(env, clock.clone())?.with_policy(Policy {
                budget: Duration::from_secs(10),
                ..Policy::default()
            });
            let token = imds.token(&selector).await?.token;
            let url = settings::check_url("the agent's server url", &url)?;
            let client =
                DevOpsClient::new(&url, token, clock.clone()).with_budget(Duration::from_secs(10));
            Ok(client.find_agent(cfg.pool_id, &cfg.agent_name).await?)
        }
        .await;
        match result {
            Ok(found) => {
                server.checked = true;
                server.exists = Some(found.is_some());
                if let Some(a) = found {
                    server.same_id = Some(a.id == cfg.agent_id);
                    server.status = a.status;
                    server.enabled = a.enabled;
                }
            }
            Err(e) => server.error = Some(crate::error::report(&e)),
        }
    }

    let status = Status {
        agent_dir: agent_dir.display().to_string(),
        installed: agent.package_present() || agent.self_updated(),
        configured: local.is_some(),
        agent_name: local.as_ref().map(|l| l.agent_name.clone()),
        agent_id: local.as_ref().map(|l| l.agent_id),
        pool: local
            .as_ref()
            .and_then(|l| l.pool_name.clone())
            .or_else(|| saved.as_ref().map(|s| s.pool.clone())),
        pool_id: local.as_ref().map(|l| l.pool_id),
        url: local.as_ref().map(|l| l.server_url.clone()),
        agent_version,
        self_updated: agent.self_updated(),
        service_unit,
        service,
        boot_unit,
        boot,
        saved_settings: saved
            .as_ref()
            .map(|_| state::file_for(&state_dir, agent_dir).display().to_string()),
        server,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
    } else {
        print!("{}", human(&status));
    }
    Ok(())
}

fn unit_text(name: &Option<String>, state: &Option<UnitState>) -> String {
    match (name, state) {
        (None, _) => "none".into(),
        (Some(n), None) => format!("{n} (state unknown: no systemctl)"),
        (Some(n), Some(s)) if !s.exists => format!("{n} (unit file missing)"),
        (Some(n), Some(s)) => format!(
            "{n} ({}, {})",
            if s.enabled { "enabled" } else { "disabled" },
            if s.active { "running" } else { "stopped" }
        ),
    }
}

fn human(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<15} {v}\n"));
    line("agent dir:", s.agent_dir.clone());
    line(
        "package:",
        match (s.installed, s.self_updated, &s.agent_version) {
            (false, _, _) => "not installed".into(),
            (true, true, v) => format!(
                "{} (updated itself)",
                v.as_deref().unwrap_or("version unknown")
            ),
            (true, false, v) => v.clone().unwrap_or_else(|| "version unknown".into()),
        },
    );
    line(
        "configured:",
        if s.configured {
            format!(
                "yes: agent '{}' (id {}) in pool '{}' at {}",
                s.agent_name.as_deref().unwrap_or("?"),
                s.agent_id.unwrap_or(0),
                s.pool.as_deref().unwrap_or("?"),
                s.url.as_deref().unwrap_or("?")
            )
        } else {
            "no".into()
        },
    );
    line("service:", unit_text(&s.service_unit, &s.service));
    line("boot unit:", unit_text(&s.boot_unit, &s.boot));
    line(
        "saved:",
        s.saved_settings
            .clone()
            .unwrap_or_else(|| "none (not installed by agent-bootstrap)".into()),
    );
    let server = &s.server;
    line(
        "server:",
        if !s.configured {
            "not asked (not configured)".into()
        } else if let Some(e) = &server.error {
            format!("unknown ({})", e.lines().next().unwrap_or(""))
        } else if server.exists == Some(false) {
            "the agent does not exist on the server (deleted): `agent-bootstrap reconcile` registers it again".into()
        } else if server.same_id == Some(false) {
            "another agent has this name on the server".into()
        } else {
            format!(
                "registered, {}, {}",
                server.status.as_deref().unwrap_or("status unknown"),
                if server.enabled == Some(false) {
                    "disabled"
                } else {
                    "enabled"
                }
            )
        },
    );
    out
}
