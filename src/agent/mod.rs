//! The agent on disk and the agent's own scripts.
//!
//! What is in the agent root says what state the agent is in (`agent.md` §4): `.agent` means
//! configured, `.credentials` + `.credentials_rsaparams` mean it has a key, `.service` means the Linux
//! service is installed, `bin` as a symlink means it has updated itself. The JSON files start with a
//! UTF-8 BOM and use camelCase keys. [`config`] builds the unattended `config.sh`/`config.cmd` command.

pub mod config;

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("could not read '{path}'")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}' is not valid agent settings JSON: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("could not remove '{path}'")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `.agent`, the keys agent-bootstrap needs (`AgentSettings` in the agent).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSettings {
    #[serde(default)]
    pub agent_id: u64,
    pub agent_name: String,
    #[serde(default)]
    pub pool_id: u64,
    #[serde(default)]
    pub pool_name: Option<String>,
    /// A deployment group's target (`--deploymentgroup`); 0 otherwise.
    #[serde(default)]
    pub deployment_group_id: u64,
    /// An environment's VM resource (`--environment`); 0 otherwise.
    #[serde(default)]
    pub environment_id: u64,
    #[serde(default)]
    pub environment_name: Option<String>,
    pub server_url: String,
    #[serde(default)]
    pub work_folder: Option<String>,
}

impl AgentSettings {
    /// Whether this registration is in the place named: the pool (no group ids), the deployment
    /// group or the environment with this id (`None`: not known yet, any of that kind), as the
    /// agent itself tells the kinds apart (`ConfigurationManager.UnconfigureAsync`).
    pub fn registered_in(
        &self,
        pool: &str,
        group: Option<(crate::scope::GroupKind, Option<u64>)>,
    ) -> bool {
        use crate::scope::GroupKind;
        let same = |id: u64, want: Option<u64>| id > 0 && want.is_none_or(|w| w == id);
        match group {
            None => {
                self.deployment_group_id == 0
                    && self.environment_id == 0
                    && (self.pool_name.as_deref()).is_none_or(|p| p.eq_ignore_ascii_case(pool))
            }
            Some((GroupKind::DeploymentGroup, id)) => same(self.deployment_group_id, id),
            Some((GroupKind::Environment, id)) => {
                self.deployment_group_id == 0 && same(self.environment_id, id)
            }
        }
    }
}

/// Strips the UTF-8 BOM the agent writes (`Encoding.UTF8`).
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Files whose presence is the local registration (what `config.sh remove` deletes locally).
pub const REGISTRATION_FILES: &[&str] = &[".agent", ".credentials", ".credentials_rsaparams"];

/// What else `config.sh remove` deletes (`agent.md` §3.4): proxy and certificate settings, the
/// credential store, the options file.
pub const CONFIG_FILES: &[&str] = &[
    ".service",
    ".proxy",
    ".proxycredentials",
    ".proxybypass",
    ".certificates",
    ".options",
    ".credential_store",
];

/// The proxy variables the agent's `env.sh` copies into `.env` at configure and never replaces
/// afterwards (`src/Misc/layoutroot/env.sh`, `varCheckList`): a stale one would outlive every
/// reconfiguration. The tool gives the agent its proxy as `--proxyurl` (`.proxy`), so none of
/// these belongs in `.env`; configure takes out any that an earlier configure left.
pub const FROZEN_PROXY_VARS: &[&str] = &[
    "VSTS_HTTP_PROXY",
    "VSTS_HTTP_PROXY_USERNAME",
    "VSTS_HTTP_PROXY_PASSWORD",
];

/// The listener's switch for its self-update: any non-empty value of this environment variable
/// makes it ignore the server's update requests (`Agent.cs` `RunAsync`; there is no configure
/// option for it). `Program.cs` loads `.env` into the listener's environment at every start.
pub const UPDATE_SWITCH: &str = "agent.disableupdate";

#[derive(Debug, Clone)]
pub struct AgentDir {
    pub root: PathBuf,
    pub listener: &'static str,
}

impl AgentDir {
    pub fn new(root: &Path, os: &crate::os::Os) -> Self {
        Self {
            root: root.to_owned(),
            listener: os.listener_binary(),
        }
    }

    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    pub fn settings(&self) -> Result<Option<AgentSettings>, AgentError> {
        let path = self.root.join(".agent");
        let text = match crate::fsx::read_untrusted(&path, 64 * 1024) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AgentError::Read { path, source }),
        };
        serde_json::from_str(strip_bom(&text))
            .map(Some)
            .map_err(|e| AgentError::Parse {
                path,
                detail: e.to_string(),
            })
    }

    /// `.agent` exists (whatever it holds: [`AgentDir::settings`] reads it).
    pub fn is_configured(&self) -> bool {
        fs_err::symlink_metadata(self.root.join(".agent")).is_ok()
    }

    /// A key or credential without `.agent`: configure failed after registering (§3.3).
    pub fn has_stale_registration(&self) -> bool {
        !self.is_configured()
            && [".credentials", ".credentials_rsaparams"]
                .iter()
                .any(|f| fs_err::symlink_metadata(self.root.join(f)).is_ok())
    }

    /// The unit name `.service` holds, for display only (root acts on names it computes from its
    /// own saved settings): a name of the agent's form, read without following links or blocking.
    pub fn service_file_hint(&self) -> Option<String> {
        crate::fsx::read_untrusted(&self.root.join(".service"), 1024)
            .ok()
            .map(|s| strip_bom(s.trim()).trim().to_owned())
            .filter(|s| crate::service::is_agent_unit_name(s))
    }

    /// An extracted package: `bin/Agent.Listener` exists (`bin` is moved into place last).
    pub fn package_present(&self) -> bool {
        self.root.join(self.listener).exists()
    }

    /// The agent replaced `bin`/`externals` with links to `bin.<version>` (§5.3).
    pub fn self_updated(&self) -> bool {
        ["bin", "externals"]
            .iter()
            .any(|d| crate::fsx::is_symlink(&self.root.join(d)))
    }

    /// Deletes the local registration (as `config.sh remove` does locally) and the proxy and
    /// certificate settings that configure writes again from root's settings (it does not delete
    /// a `.proxy` when it is given no proxy), keeping everything else. `unlink` never follows a
    /// link, so this is safe in a directory the agent user owns.
    pub fn remove_registration(&self) -> Result<(), AgentError> {
        self.remove_files(REGISTRATION_FILES)?;
        self.remove_files(&[".proxy", ".proxycredentials", ".certificates"])
    }

    /// The proxy URL (`.proxy`, line 1) and the CA file (`.certificates`, `caCert`) the agent was
    /// configured with, read as untrusted files; only compared with root's settings.
    pub fn network(&self) -> (Option<String>, Option<String>) {
        let read = |name: &str| crate::fsx::read_untrusted(&self.root.join(name), 64 * 1024).ok();
        let proxy = read(".proxy")
            .and_then(|t| strip_bom(&t).lines().next().map(|l| l.trim().to_owned()))
            .filter(|l| !l.is_empty());
        let ca = read(".certificates")
            .and_then(|t| serde_json::from_str::<serde_json::Value>(strip_bom(&t)).ok())
            .and_then(|v| {
                v.as_object()?
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("cacert"))
                    .and_then(|(_, v)| v.as_str().map(str::to_owned))
            })
            .filter(|c| !c.is_empty());
        (proxy, ca)
    }

    /// `.env` with the listener's `agent.disableupdate` switch set to `true` (`disable`) or taken
    /// out, and without the agent's own proxy variables ([`FROZEN_PROXY_VARS`]: the proxy is
    /// configured, in `.proxy`), every other line kept as it is; `None` when it is so already.
    /// `.env` is read as an untrusted file (an unreadable one counts as empty: it is replaced,
    /// never written through).
    pub fn env_with_update_switch(&self, disable: bool) -> Option<String> {
        let now =
            crate::fsx::read_untrusted(&self.root.join(".env"), 64 * 1024).unwrap_or_default();
        let is_switch = |line: &str| {
            line.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim();
                k.eq_ignore_ascii_case(UPDATE_SWITCH) || FROZEN_PROXY_VARS.contains(&k)
            })
        };
        let mut lines: Vec<String> = now
            .lines()
            .filter(|l| !is_switch(l))
            .map(str::to_owned)
            .collect();
        if disable {
            lines.push(format!("{UPDATE_SWITCH}=true"));
        }
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        (text != now).then_some(text)
    }

    /// `.proxybypass` as it is now.
    pub fn proxy_bypass(&self) -> Option<String> {
        crate::fsx::read_untrusted(&self.root.join(".proxybypass"), 64 * 1024).ok()
    }

    /// Deletes everything `config.sh remove` deletes locally (`ConfigurationManager.
    /// UnconfigureAsync`: the credentials and RSA key, `DeleteProxySetting`,
    /// `DeleteCertificateSetting`, the runtime options, the settings), `.agent` last; and also
    /// `env.sh`'s snapshot of the provisioning environment (`.env`, `.path`), which config.sh
    /// leaves but a later install would inherit (env.sh never replaces a line of `.env`).
    pub fn remove_configuration(&self) -> Result<(), AgentError> {
        self.remove_files(&[".credentials", ".credentials_rsaparams"])?;
        self.remove_files(CONFIG_FILES)?;
        self.remove_files(&[".env", ".path"])?;
        self.remove_files(&[".agent"])
    }

    fn remove_files(&self, files: &[&str]) -> Result<(), AgentError> {
        for f in files {
            let path = self.root.join(f);
            match fs_err::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(AgentError::Remove { path, source }),
            }
        }
        Ok(())
    }
}

/// Whether two organization URLs are the same one: `.agent` keeps a trailing `/` and case may
/// differ; and an Azure DevOps Services organization has two URLs, `https://dev.azure.com/ORG` and
/// the older `https://ORG.visualstudio.com`. The agent records the URL the server returns for it
/// (`ConfigurationManager.ConfigureAsync`, "respect the serverUrl resolve by server": the server's
/// path with the scheme, host and port the user gave), so `.agent` may name the organization in
/// the other form, or as `https://ORG.visualstudio.com/ORG/`, than root's settings do.
pub fn same_server(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    norm(a) == norm(b) || services_org(a).is_some_and(|org| services_org(b) == Some(org))
}

/// The organization of an Azure DevOps Services URL (`https://dev.azure.com/ORG[/…]`,
/// `https://ORG.visualstudio.com[/…]`), lowercased; `None` for any other URL.
fn services_org(url: &str) -> Option<String> {
    let u = url::Url::parse(url.trim()).ok()?;
    if u.scheme() != "https" || u.port().is_some() {
        return None;
    }
    let host = u.host_str()?.to_ascii_lowercase();
    let first = u
        .path_segments()
        .and_then(|mut p| p.next())
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase);
    if host == "dev.azure.com" {
        return first;
    }
    let org = host.strip_suffix(".visualstudio.com")?;
    // `https://ORG.visualstudio.com/` or `/ORG/` (the server's path under the user's host);
    // another path is another collection, not this organization.
    match first {
        None => Some(org.to_owned()),
        Some(p) if p == org => Some(org.to_owned()),
        Some(_) => None,
    }
    .filter(|o| !o.is_empty() && !o.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_urls_of_an_organization_are_the_same_server() {
        for (a, b) in [
            (
                "https://dev.azure.com/MyOrg",
                "https://dev.azure.com/myorg/",
            ),
            (
                "https://dev.azure.com/myorg",
                "https://myorg.visualstudio.com/",
            ),
            (
                "https://MyOrg.visualstudio.com",
                "https://dev.azure.com/myorg/",
            ),
            (
                "https://myorg.visualstudio.com/myorg/",
                "https://dev.azure.com/myorg",
            ),
            (
                "http://127.0.0.1:8080/myorg",
                "http://127.0.0.1:8080/MyOrg/",
            ),
        ] {
            assert!(same_server(a, b), "{a} {b}");
            assert!(same_server(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("https://dev.azure.com/myorg", "https://dev.azure.com/other"),
            (
                "https://dev.azure.com/myorg",
                "https://other.visualstudio.com",
            ),
            (
                "https://myorg.visualstudio.com/otherorg",
                "https://dev.azure.com/myorg",
            ),
            ("https://dev.azure.com/myorg", "https://evil.example/myorg"),
            (
                "https://dev.azure.com:8443/myorg",
                "https://myorg.visualstudio.com",
            ),
        ] {
            assert!(!same_server(a, b), "{a} {b}");
        }
    }

    #[test]
    fn reads_agent_file_with_bom() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".agent"),
            "\u{feff}{\n  \"agentId\": 42,\n  \"agentName\": \"vm-0001\",\n  \"poolId\": 9,\n  \"poolName\": \"MyPool\",\n  \"serverUrl\": \"https://dev.azure.com/myorg/\",\n  \"workFolder\": \"_work\",\n  \"acceptTeeEula\": true\n}",
        )
        .unwrap();
        let a = AgentDir::new(dir.path(), &crate::os::Os::linux_x64());
        let s = a.settings().unwrap().unwrap();
        assert_eq!(s.agent_id, 42);
        assert_eq!(s.pool_name.as_deref(), Some("MyPool"));
        assert!(same_server(&s.server_url, "https://dev.azure.com/myorg"));
        assert!(a.is_configured());
        assert!(!a.has_stale_registration());
    }

    #[cfg(unix)]
    #[test]
    fn links_and_foreign_unit_names_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgentDir::new(dir.path(), &crate::os::Os::linux_x64());
        std::fs::write(dir.path().join("target"), "vsts.agent.o.p.a.service").unwrap();
        std::os::unix::fs::symlink("target", dir.path().join(".service")).unwrap();
        assert_eq!(a.service_file_hint(), None, "a symlink is not followed");
        std::fs::remove_file(dir.path().join(".service")).unwrap();
        std::fs::write(dir.path().join(".service"), "sshd.service\n").unwrap();
        assert_eq!(a.service_file_hint(), None, "only the agent's own units");
        std::fs::write(
            dir.path().join(".service"),
            "vsts.agent.o.p.a\\x2d1.service\n",
        )
        .unwrap();
        assert_eq!(
            a.service_file_hint().as_deref(),
            Some("vsts.agent.o.p.a\\x2d1.service")
        );
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(".agent")).unwrap();
        assert!(a.settings().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn partial_states() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgentDir::new(dir.path(), &crate::os::Os::linux_x64());
        assert_eq!(a.settings().unwrap(), None);
        std::fs::write(dir.path().join(".credentials_rsaparams"), "{}").unwrap();
        assert!(a.has_stale_registration());
        a.remove_registration().unwrap();
        assert!(!a.has_stale_registration());
        std::fs::create_dir(dir.path().join("bin.4.1.0")).unwrap();
        std::os::unix::fs::symlink("bin.4.1.0", dir.path().join("bin")).unwrap();
        assert!(a.self_updated());
    }

    #[test]
    fn the_update_switch_is_one_line_of_env_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgentDir::new(dir.path(), &crate::os::Os::linux_x64());
        assert_eq!(
            a.env_with_update_switch(false),
            None,
            "no .env, nothing to take out"
        );
        assert_eq!(
            a.env_with_update_switch(true).as_deref(),
            Some("agent.disableupdate=true\n")
        );
        std::fs::write(
            dir.path().join(".env"),
            "LANG=C.UTF-8\nAgent.DisableUpdate=\nJAVA_HOME=/opt/jdk\n",
        )
        .unwrap();
        assert_eq!(
            a.env_with_update_switch(true).as_deref(),
            Some("LANG=C.UTF-8\nJAVA_HOME=/opt/jdk\nagent.disableupdate=true\n")
        );
        assert_eq!(
            a.env_with_update_switch(false).as_deref(),
            Some("LANG=C.UTF-8\nJAVA_HOME=/opt/jdk\n")
        );
        std::fs::write(
            dir.path().join(".env"),
            "LANG=C.UTF-8\nagent.disableupdate=true\n",
        )
        .unwrap();
        assert_eq!(a.env_with_update_switch(true), None, "already so");
    }
}
