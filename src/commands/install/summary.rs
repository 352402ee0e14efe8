//! What an install leaves for later runs (root's saved settings) and what it tells the user.

use crate::devops::Pool;
use crate::identity::Request as IdentityRequest;
use crate::output::{AgentRef, Outcome};
use crate::settings::{AgentUser, InstallSettings, PackageChoice};
use crate::state;
use crate::state::Saved;

use super::{agent_unit, windows_service_name};

pub(super) fn saved_settings(
    s: &InstallSettings,
    identity: &IdentityRequest,
    pool: &Pool,
    agent_id: u64,
    agent_version: Option<String>,
    package_sha256: Option<String>,
) -> Saved {
    Saved {
        schema: 1,
        url: s.url.to_string(),
        pool: pool.name.clone(),
        pool_id: pool.id,
        group: pool.group.clone(),
        agent_name: s.agent_name.clone(),
        agent_id,
        agent_dir: s.agent_dir.clone(),
        work_dir: s.work_dir.clone(),
        user: s.user.name().to_owned(),
        dedicated_user: matches!(s.user, AgentUser::Dedicated(_)),
        service: s.service,
        service_unit: match (s.service, s.os.is_windows()) {
            (true, true) => Some(windows_service_name(s, &pool.name)),
            (true, false) if s.as_root => Some(agent_unit(s, &pool.name).name),
            _ => None,
        },
        identity: identity.selector.to_saved(),
        identity_source: Some(identity.kind.name().to_owned()),
        az_login: identity.az_login,
        pat_file: identity.pat_file.clone(),
        agent_version,
        package_sha256,
        machine_id: state::machine_id(),
        vm_id: None,
        package: match &s.package {
            PackageChoice::Explicit { source, .. } => Some(source.to_string()),
            _ => None,
        },
        end_user_processes: s.end_user_processes,
        install_dependencies: s.install_dependencies,
        platform: s.named_platform.clone(),
        boot_unit: None,
        watch_unit: None,
        proxy_url: s.network.proxy.as_ref().map(|p| p.url.to_string()),
        proxy_user: s.network.proxy.as_ref().and_then(|p| p.user.clone()),
        proxy_password_file: s
            .network
            .proxy
            .as_ref()
            .and_then(|p| p.password_file.clone()),
        no_proxy: s.network.no_proxy.clone(),
        ca_file: s.network.ca_file.clone(),
        trusted_cas: vec![],
        disable_update: s.disable_update,
        capabilities: s.capabilities.clone(),
    }
}

/// What install shows when it is done: the agent, where it is, how it runs.
pub fn summary(headline: &str, saved: &Saved) -> Outcome {
    use std::fmt::Write as _;
    let mut out = String::new();
    let service = match (&saved.service_unit, saved.service) {
        (Some(unit), _) => unit.clone(),
        (None, true) => "installed by configure".into(),
        (None, false) => "none (--no-service): start it with ./run.sh".into(),
    };
    writeln!(out, "{headline}").unwrap_or(());
    writeln!(
        out,
        "  agent:        {} (id {})",
        saved.agent_name, saved.agent_id
    )
    .unwrap_or(());
    match &saved.group {
        None => writeln!(out, "  pool:         {} (id {})", saved.pool, saved.pool_id),
        Some(g) => writeln!(
            out,
            "  {:<13} {} (id {}) of project {}{}",
            format!("{}:", g.kind.noun()),
            g.name,
            g.id,
            g.project,
            if g.tags.is_empty() {
                String::new()
            } else {
                format!(", tags {}", g.tags.join(", "))
            }
        ),
    }
    .unwrap_or(());
    writeln!(out, "  organization: {}", saved.url).unwrap_or(());
    writeln!(
        out,
        "  version:      {}",
        saved.agent_version.as_deref().unwrap_or("unknown")
    )
    .unwrap_or(());
    writeln!(out, "  agent dir:    {}", saved.agent_dir.display()).unwrap_or(());
    writeln!(out, "  runs as:      {}", saved.user).unwrap_or(());
    writeln!(out, "  service:      {service}").unwrap_or(());
    writeln!(
        out,
        "  logs:         {}",
        saved.agent_dir.join("_diag").display()
    )
    .unwrap_or(());
    for ca in &saved.trusted_cas {
        let place = match (&ca.file, &ca.thumbprint) {
            (Some(f), _) => f.display().to_string(),
            (None, Some(t)) => format!("LocalMachine\\Root, thumbprint {t}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "  trusted CA:   {} (added to the system trust store: {place})",
            ca.subject
        )
        .unwrap_or(());
    }
    Outcome::new(out, Some(AgentRef::from(saved)))
}
