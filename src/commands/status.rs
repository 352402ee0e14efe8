//! `agent-bootstrap status`: what is installed here, and what the server thinks of it.
//!
//! Local facts come from the agent's files, systemd and the saved settings; the server's view needs
//! a token and is given up quickly (status must not hang a terminal for minutes) and reported as
//! unknown with the reason. Human-readable by default, `--json` for scripts.
//!
//! The token goes only to the organization in root's saved settings: without them the server is
//! not asked (the agent dir's `.agent` could name any server). A broken `.agent` (a FIFO, a link,
//! garbage) is reported, not fatal.

use std::time::Duration;

use serde::Serialize;

use crate::agent::{AgentDir, AgentSettings};
use crate::commands::Target;
use crate::devops::{DevOpsClient, ServerAgent};
use crate::env::Env;
use crate::error::Error;
use crate::net::Net;
use crate::os::Os;
use crate::output::{AgentRef, Out};
use crate::service::{AgentUnit, Systemctl, UnitState};
use crate::settings;
use crate::state::{self, Saved};

#[derive(Debug, Serialize)]
pub struct Status {
    pub agent_dir: String,
    pub installed: bool,
    pub configured: bool,
    /// Why `.agent` could not be read, when it could not.
    pub agent_file_error: Option<String>,
    pub agent_name: Option<String>,
    pub agent_id: Option<u64>,
    pub pool: Option<String>,
    pub pool_id: Option<u64>,
    /// The deployment group or environment the agent is registered in (root's saved settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::scope::GroupRef>,
    pub url: Option<String>,
    pub agent_version: Option<String>,
    pub self_updated: bool,
    pub service_unit: Option<String>,
    pub service: Option<UnitState>,
    pub boot_unit: Option<String>,
    pub boot: Option<UnitState>,
    /// The scale-in watcher (`install --scale-in-drain`).
    pub watch_unit: Option<String>,
    pub watch: Option<UnitState>,
    /// The proxy and CA file from the saved settings, and whether the agent's own match them.
    pub proxy: Option<String>,
    pub ca_file: Option<String>,
    /// The CA certificates install added to the system trust store (the agent trusts only that
    /// store), and whether each file is still there (Linux).
    pub trusted_cas: Vec<TrustedCaStatus>,
    pub agent_network_matches: Option<bool>,
    pub saved_settings: Option<String>,
    pub server: ServerStatus,
    /// This machine's facts and the agent package platform chosen (`crate::host`).
    pub host: crate::host::Report,
}

#[derive(Debug, Serialize)]
pub struct TrustedCaStatus {
    pub subject: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// Linux: the file is in place; `None` where it cannot be told (Windows).
    pub present: Option<bool>,
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
    t: &Target,
    json: bool,
    env: &Env,
    os: Os,
    net: &Net,
    out: &Out,
) -> Result<(), Error> {
    let saved = state::load(&t.paths.state_dir, &t.agent_dir)?;
    let status = gather(t, saved.as_ref(), env, &os, net).await;
    emit(&status, saved.as_ref(), json, out);
    Ok(())
}

/// Everything status reports, found out in this order: the agent's own files, its units, the
/// network settings, then the server's view.
async fn gather(t: &Target, saved: Option<&Saved>, env: &Env, os: &Os, net: &Net) -> Status {
    let agent_dir = t.agent_dir.as_path();
    let agent = AgentDir::new(agent_dir, os);
    let (local, agent_file_error) = match agent.settings() {
        Ok(l) => (l, None),
        Err(e) => (None, Some(crate::report::one_line(&e))),
    };
    let units = Units::query(saved, &agent, env, os).await;
    let network = net.network();
    let agent_network_matches = (saved.is_some() && agent.is_configured())
        .then(|| super::install::network_matches(&agent, &network));
    let (server, reported_version) = ask_server(saved, local.as_ref(), env, os, net).await;
    Status {
        agent_dir: agent_dir.display().to_string(),
        installed: agent.package_present() || agent.self_updated(),
        configured: local.is_some(),
        agent_file_error,
        agent_name: local.as_ref().map(|l| l.agent_name.clone()),
        agent_id: local.as_ref().map(|l| l.agent_id),
        pool: local
            .as_ref()
            .and_then(|l| l.pool_name.clone())
            .or_else(|| saved.map(|s| s.pool.clone())),
        pool_id: local.as_ref().map(|l| l.pool_id),
        group: saved.and_then(|s| s.group.clone()),
        url: local.as_ref().map(|l| l.server_url.clone()),
        // What the agent reports to the server, else root's record. Never the agent's own
        // binary: root runs nothing from the agent dir.
        agent_version: reported_version.or_else(|| saved.and_then(|s| s.agent_version.clone())),
        self_updated: agent.self_updated(),
        service_unit: units.service_unit,
        service: units.service,
        boot_unit: units.boot_unit,
        boot: units.boot,
        watch_unit: units.watch_unit,
        watch: units.watch,
        proxy: network.proxy.as_ref().map(|p| p.url.to_string()),
        ca_file: network.ca_file.as_ref().map(|p| p.display().to_string()),
        trusted_cas: trusted_cas(saved),
        agent_network_matches,
        saved_settings: saved.map(|_| {
            state::file_for(&t.paths.state_dir, agent_dir)
                .display()
                .to_string()
        }),
        server,
        host: crate::host::Report::for_os(os),
    }
}

/// The agent's units by name (service, boot unit, scale-in watcher), each with what systemd says
/// of it; on Windows, what the Service Control Manager and the scheduled tasks' files say.
struct Units {
    service_unit: Option<String>,
    service: Option<UnitState>,
    boot_unit: Option<String>,
    boot: Option<UnitState>,
    watch_unit: Option<String>,
    watch: Option<UnitState>,
}

impl Units {
    async fn query(saved: Option<&Saved>, agent: &AgentDir, env: &Env, os: &Os) -> Self {
        let windows = os.is_windows();
        let systemctl = Systemctl::find(env).filter(|_| !windows);
        let service_unit = service_unit(saved, agent, windows);
        let service = match (&systemctl, &service_unit) {
            (Some(sc), Some(u)) => sc.state(u).await.ok(),
            // The Service Control Manager's view.
            (None, Some(u)) if windows => crate::service::windows::query(env, u)
                .await
                .ok()
                .map(UnitState::from),
            _ => None,
        };
        let boot_unit = saved.and_then(|s| s.boot_unit.clone());
        let boot = match (&systemctl, &boot_unit) {
            (Some(sc), Some(u)) => sc.state(u).await.ok(),
            (None, Some(u)) if windows => Some(task_state(env, u)),
            _ => None,
        };
        let watch_unit = saved.and_then(|s| s.watch_unit.clone());
        let watch = match (&systemctl, &watch_unit) {
            (Some(sc), Some(u)) => sc.state(u).await.ok(),
            _ => None,
        };
        Self {
            service_unit,
            service,
            boot_unit,
            boot,
            watch_unit,
            watch,
        }
    }
}

/// The service's name: the one install made from its saved settings, none when it made none, and
/// for an agent it did not install, the name the agent's own `.service` file holds.
fn service_unit(saved: Option<&Saved>, agent: &AgentDir, windows: bool) -> Option<String> {
    match saved {
        Some(s) if s.service && windows => Some(crate::service::windows::service_name(
            &s.url,
            &s.pool,
            &s.agent_name,
        )),
        Some(s) if s.service => Some(AgentUnit::new(&s.url, &s.pool, &s.agent_name).name),
        Some(_) => None,
        None => agent.service_file_hint(),
    }
}

/// A registered task is a file in %SystemRoot%\System32\Tasks.
fn task_state(env: &Env, task: &str) -> UnitState {
    let exists = crate::service::windows::task_file(env, task).is_file();
    UnitState {
        exists,
        enabled: exists,
        active: false,
    }
}

/// The server's view of the agent, and the version the agent reports to it when the server's
/// agent of that name is this one. Asked only with root's saved settings.
async fn ask_server(
    saved: Option<&Saved>,
    local: Option<&AgentSettings>,
    env: &Env,
    os: &Os,
    net: &Net,
) -> (ServerStatus, Option<String>) {
    let mut server = ServerStatus {
        checked: false,
        exists: None,
        same_id: None,
        status: None,
        enabled: None,
        error: None,
    };
    let mut reported_version = None;
    match (saved, local) {
        (Some(saved), Some(cfg)) => match find_agent(saved, env, os, net).await {
            Ok(found) => {
                server.checked = true;
                server.exists = Some(found.is_some());
                if let Some(a) = found {
                    server.same_id = Some(a.id == cfg.agent_id);
                    if a.id == cfg.agent_id {
                        reported_version = a.version;
                    }
                    server.status = a.status;
                    server.enabled = a.enabled;
                }
            }
            Err(e) => server.error = Some(crate::report::report(&e)),
        },
        (None, Some(_)) => {
            server.error = Some(
                "not asked: no saved settings (agent-bootstrap did not install this agent), and \
                 the agent dir's own settings are not trusted with a token"
                    .into(),
            );
        }
        _ => {}
    }
    (server, reported_version)
}

/// The agent of root's saved settings as its organization lists it, given up after 10 s (status
/// must not hang a terminal).
async fn find_agent(
    saved: &Saved,
    env: &Env,
    os: &Os,
    net: &Net,
) -> Result<Option<ServerAgent>, Error> {
    let clock = net.clock();
    let budget = clock.budget(Duration::from_secs(10));
    let tokens = super::saved_tokens(saved, env, os, net, false).await?;
    let url = settings::check_url("the saved url", &saved.url)?;
    let client = DevOpsClient::new(&url, tokens, net);
    Ok(client
        .find_agent(&saved.pool(), &saved.agent_name, &budget)
        .await?)
}

/// The CA certificates install added to the system trust store, and whether each file is still
/// in place.
fn trusted_cas(saved: Option<&Saved>) -> Vec<TrustedCaStatus> {
    saved
        .into_iter()
        .flat_map(|s| &s.trusted_cas)
        .map(|c| TrustedCaStatus {
            subject: c.subject.clone(),
            sha256: c.sha256.clone(),
            file: c.file.as_ref().map(|f| f.display().to_string()),
            thumbprint: c.thumbprint.clone(),
            present: c.file.as_ref().map(|f| crate::fsx::is_regular(f)),
        })
        .collect()
}

/// The report: in the `--output json` document, as `--json`, or as text.
fn emit(status: &Status, saved: Option<&Saved>, json: bool, out: &Out) {
    if out.is_json() {
        if let Some(saved) = saved {
            out.agent(AgentRef::from(saved));
        }
        out.report(serde_json::to_value(status).expect("status serializes"));
    } else if json {
        println!(
            "{}",
            serde_json::to_string_pretty(status).expect("status serializes")
        );
    } else {
        print!("{}", human(status));
    }
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
    line("package:", package_text(s));
    line("configured:", configured_text(s));
    line("service:", unit_text(&s.service_unit, &s.service));
    line("boot unit:", unit_text(&s.boot_unit, &s.boot));
    if s.watch_unit.is_some() {
        line("scale-in watcher:", unit_text(&s.watch_unit, &s.watch));
    }
    for c in &s.trusted_cas {
        line("trusted CA:", trusted_ca_text(c));
    }
    if s.proxy.is_some() || s.ca_file.is_some() {
        line("network:", network_text(s));
    }
    line(
        "saved:",
        s.saved_settings
            .clone()
            .unwrap_or_else(|| "none (not installed by agent-bootstrap)".into()),
    );
    line("server:", server_text(s));
    line(
        "platform:",
        s.host.lines().join("; ").replacen("platform: ", "", 1),
    );
    out
}

fn package_text(s: &Status) -> String {
    match (s.installed, s.self_updated, &s.agent_version) {
        (false, _, _) => "not installed".into(),
        (true, true, v) => format!(
            "{} (updated itself)",
            v.as_deref().unwrap_or("version unknown")
        ),
        (true, false, v) => v.clone().unwrap_or_else(|| "version unknown".into()),
    }
}

fn configured_text(s: &Status) -> String {
    if let Some(e) = &s.agent_file_error {
        format!("unreadable .agent: {e}")
    } else if s.configured {
        let place = match &s.group {
            Some(g) => format!(
                "{} '{}' of project '{}'",
                g.kind.noun(),
                g.name.escape_debug(),
                g.project.escape_debug()
            ),
            None => format!("pool '{}'", s.pool.as_deref().unwrap_or("?").escape_debug()),
        };
        format!(
            "yes: agent '{}' (id {}) in {place} at {}",
            s.agent_name.as_deref().unwrap_or("?").escape_debug(),
            s.agent_id.unwrap_or(0),
            s.url.as_deref().unwrap_or("?").escape_debug()
        )
    } else {
        "no".into()
    }
}

fn trusted_ca_text(c: &TrustedCaStatus) -> String {
    let place = c
        .file
        .clone()
        .or_else(|| {
            c.thumbprint
                .as_ref()
                .map(|t| format!("LocalMachine\\Root {t}"))
        })
        .unwrap_or_default();
    format!(
        "{} (added to the system trust store: {place}{})",
        c.subject,
        if c.present == Some(false) {
            "; the file is gone: the agent will not trust its server (`agent-bootstrap \
             install` again puts it back)"
        } else {
            ""
        }
    )
}

fn network_text(s: &Status) -> String {
    format!(
        "proxy {}, CA file {}{}",
        s.proxy.as_deref().unwrap_or("none"),
        s.ca_file.as_deref().unwrap_or("none"),
        match s.agent_network_matches {
            Some(false) => {
                "; the agent's own settings differ (`agent-bootstrap reconcile` configures it again)"
            }
            _ => "",
        }
    )
}

fn server_text(s: &Status) -> String {
    let server = &s.server;
    if !s.configured {
        "not asked (not configured)".into()
    } else if let Some(e) = &server.error {
        format!("unknown ({})", e.lines().next().unwrap_or(""))
    } else if server.exists == Some(false) {
        "the agent does not exist on the server (deleted): `agent-bootstrap reconcile` registers it again".into()
    } else if server.same_id == Some(false) {
        "another agent has this name on the server".into()
    } else {
        registered_text(s)
    }
}

/// The agent as the server has it registered: its status, whether enabled, and why an offline
/// agent's service may still be running.
fn registered_text(s: &Status) -> String {
    let server = &s.server;
    let mut text = format!(
        "registered, {}, {}",
        server.status.as_deref().unwrap_or("status unknown"),
        if server.enabled == Some(false) {
            "disabled"
        } else {
            "enabled"
        }
    );
    // The agent's service host (runsvc.sh → AgentService.js) keeps the unit active while
    // it starts the listener again, 5 s after any exit but 0 and 1: not a dead agent.
    let unit = s
        .service_unit
        .as_deref()
        .filter(|u| u.ends_with(".service"));
    if let Some(unit) = unit
        && server.status.as_deref() == Some("offline")
        && s.service.as_ref().is_some_and(|u| u.exists && u.active)
    {
        text.push_str(&format!(
            " while its service runs: the listener is starting, restarting (its service \
             host starts it again 5 s after an update or an error) or cannot reach Azure \
             DevOps; see `journalctl -u {unit}`"
        ));
    }
    text
}
