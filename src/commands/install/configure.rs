//! The agent's own files root has written by the agent user (`.capabilities`, `.proxybypass`,
//! `.env`) and its unattended configuration (`config.sh` / `config.cmd`), the token only in its
//! environment.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::config::Configure;
use crate::agent::{AgentDir, config};
use crate::clock::Budget;
use crate::env::Env;
use crate::error::Error;
use crate::identity::Tokens;
use crate::process;
use crate::process::{Child, RunAs};
use crate::settings::InstallSettings;

/// The capability every registration of ours carries, naming the machine that registered it
/// (the Azure VM id, else `/etc/machine-id`): the evidence a later run recognises its own
/// registration by when `.agent` is missing.
pub const MACHINE_CAPABILITY: &str = "AgentBootstrap.Machine";

/// The unattended configure command line for these settings.
pub(super) fn configure_command(s: &InstallSettings, agent: &AgentDir) -> (PathBuf, Vec<String>) {
    config::configure_command(
        &s.os,
        &agent.root,
        &Configure {
            url: s.url.to_string(),
            pool: s.pool.clone(),
            group: s.group.clone(),
            agent: s.agent_name.clone(),
            work: s.work_dir.clone(),
            windows_service: s.service.then(|| s.user.name().to_owned()),
            proxy_url: s.network.proxy.as_ref().map(|p| p.url.to_string()),
            proxy_user: s.network.proxy.as_ref().and_then(|p| p.user.clone()),
            ca_file: s.network.ca_file.as_ref().map(|p| p.display().to_string()),
        },
    )
}

/// Whether the agent was configured with this proxy and CA file (`.proxy`, `.certificates`).
pub fn network_matches(agent: &AgentDir, network: &crate::net::Network) -> bool {
    let norm = |u: &str| u.trim().trim_end_matches('/').to_ascii_lowercase();
    let (proxy, ca) = agent.network();
    let want_proxy = network.proxy.as_ref().map(|p| norm(p.url.as_str()));
    let want_ca = network.ca_file.as_ref().map(|p| p.display().to_string());
    proxy.as_deref().map(norm) == want_proxy && ca == want_ca
}

/// The secrets configure gets in its environment besides the token: the proxy's password.
pub(super) fn network_secrets(s: &InstallSettings, child: Child) -> Child {
    match s.network.proxy.as_ref().and_then(|p| p.password.clone()) {
        Some(pw) => child.secret_env(config::PROXY_PASSWORD_ENV, pw),
        None => child,
    }
}

/// The one way the agent is configured: `.proxybypass` first (the agent reads it while it
/// configures: `SetupProxy` → `LoadProxyBypassList`, not only when it starts), then the configure
/// script as the agent user with the token (and a Windows logon password, a proxy password) only in
/// its environment, then the `.env` switches.
pub(super) async fn configure_with(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: &RunAs,
    tokens: &Tokens,
    budget: &Budget,
    (program, args): (PathBuf, Vec<String>),
) -> Result<(), Error> {
    write_proxy_bypass(s, env, agent, Some(user)).await?;
    let token = tokens.get(budget).await?;
    let mut child = super::super::agent_child(
        env,
        s.os.config_script(),
        program,
        &agent.root,
        Some(user),
        &token,
        s.config_timeout,
    )
    .args(args);
    child = network_secrets(s, child);
    if let Some(password) = &s.logon_password {
        child = child.secret_env(config::LOGON_PASSWORD_ENV, password.clone());
    }
    tracing::info!(command = %child.display(), user = %user.name, "configuring the agent");
    super::super::agent_script(child, &network_masker(s, tokens)).await?;
    write_update_switch(s, env, agent, Some(user))
        .await
        .map(drop)
}

/// The token's masker, with the proxy password added.
pub(super) fn network_masker(s: &InstallSettings, tokens: &Tokens) -> crate::secret::Masker {
    let masker = tokens.masker();
    if let Some(pw) = s.network.proxy.as_ref().and_then(|p| p.password.as_ref()) {
        masker.add(pw);
    }
    masker
}

/// The `.proxybypass` the agent must have for `NO_PROXY`, when its own differs (with a proxy).
pub fn proxy_bypass_text(s: &InstallSettings, agent: &AgentDir) -> Option<String> {
    s.network.proxy.as_ref()?;
    let (text, _) = s.network.agent_bypass();
    (agent.proxy_bypass().unwrap_or_default() != text).then_some(text)
}

/// `.proxybypass` from `NO_PROXY`, in the agent's regex form, when the agent has a proxy. Written
/// by the agent user (a shell as that account, the text in its environment): root opens nothing in
/// the agent dir. Returns whether the file changed.
pub async fn write_proxy_bypass(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: Option<&RunAs>,
) -> Result<bool, Error> {
    let Some(text) = proxy_bypass_text(s, agent) else {
        return Ok(false);
    };
    let (_, skipped) = s.network.agent_bypass();
    for entry in &skipped {
        tracing::warn!("NO_PROXY entry left out of the agent's .proxybypass: {entry}");
    }
    write_agent_file(s, env, agent, user, ".proxybypass", &text).await?;
    tracing::info!(
        entries = text.lines().count(),
        "wrote the agent's .proxybypass from NO_PROXY"
    );
    Ok(true)
}

/// The agent's `.capabilities` (its `UserCapabilitiesProvider` reads `KEY=VALUE` lines from the
/// agent root when it registers and whenever it starts:
/// src/Microsoft.VisualStudio.Services.Agent/Capabilities/UserCapabilitiesProvider.cs), before
/// configure, so the registration carries them: `--capability`, and [`MACHINE_CAPABILITY`] naming
/// this machine, the evidence a later run recognises its own registration by.
pub(super) async fn write_capabilities(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: &RunAs,
    machine: Option<&str>,
) -> Result<(), Error> {
    let mut all = s.capabilities.clone();
    if let Some(m) = machine {
        all.insert(MACHINE_CAPABILITY.to_owned(), m.to_owned());
    }
    if all.is_empty() {
        return Ok(());
    }
    let text: String = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    write_agent_file(s, env, agent, Some(user), ".capabilities", &text).await?;
    tracing::info!(capabilities = all.len(), "wrote the agent's .capabilities");
    Ok(())
}

/// Replaces one of the agent's own files (`.proxybypass`, `.env`) with `text`, as the agent user (a
/// shell as that account, the text in its environment, a temporary file renamed over the old one):
/// root opens nothing in the agent dir. On Windows, SYSTEM writes it, never through a junction or
/// link the service account planted.
pub(super) async fn write_agent_file(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: Option<&RunAs>,
    name: &str,
    text: &str,
) -> Result<(), Error> {
    if s.os.is_windows() {
        return crate::fsx::replace_file_no_follow(&agent.root, name, text.as_bytes()).map_err(
            |source| Error::Io {
                action: "writing",
                path: agent.root.join(name),
                source,
            },
        );
    }
    let child = Child::new(format!("write {name}"), "/bin/sh", env)
        .args([
            "-c",
            "umask 022 && printf '%s' \"$TEXT\" > \"$1.tmp\" && mv -f \"$1.tmp\" \"$1\"",
            "sh",
            name,
        ])
        .env("TEXT", text)
        .cwd(&agent.root)
        .run_as(user.and_then(RunAs::unless_root))
        .timeout(Duration::from_secs(30));
    let done = process::run_async(child, crate::secret::Masker::new())
        .await
        .map_err(Error::ConfigureRun)?;
    if done.success() {
        Ok(())
    } else {
        Err(Error::Configure {
            message: format!(
                "writing {name} failed: {}",
                done.error_line().unwrap_or_default()
            ),
        })
    }
}

/// `--disable-update`: `agent.disableupdate=true` in the agent's `.env`, which the listener loads
/// into its environment at every start (`Program.cs`) and checks before acting on an update request
/// (`Agent.cs` `RunAsync`); the agent has no configure option for it (`CommandSettings`,
/// `Constants.Agent.CommandLine`). Without the flag the line is taken out again; every other line
/// is kept. Written by the agent user, like `.proxybypass` (root writes nothing in the agent dir).
/// Returns whether the file changed.
pub async fn write_update_switch(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: Option<&RunAs>,
) -> Result<bool, Error> {
    let Some(text) = agent.env_with_update_switch(s.disable_update) else {
        return Ok(false);
    };
    write_agent_file(s, env, agent, user, ".env", &text).await?;
    if s.disable_update {
        tracing::info!("the agent's self-update is off (agent.disableupdate in its .env)");
    } else {
        tracing::info!(
            "the agent's self-update is on again (agent.disableupdate taken out of its .env)"
        );
    }
    Ok(true)
}
