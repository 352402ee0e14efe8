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
    pub server_url: String,
    #[serde(default)]
    pub work_folder: Option<String>,
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
    /// out, every other line kept as it is; `None` when it is so already. `.env` is read as an
    /// untrusted file (an unreadable one counts as empty: it is replaced, never written through).
    pub fn env_with_update_switch(&self, disable: bool) -> Option<String> {
        let now =
            crate::fsx::read_untrusted(&self.root.join(".env"), 64 * 1024).unwrap_or_default();
        let is_switch = |line: &str| {
            line.split_once('=')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(UPDATE_SWITCH))
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

    /// Deletes everything `config.sh remove` deletes locally: the registration, then the proxy,
    /// certificate and credential-store files, `.agent` last.
    pub fn remove_configuration(&self) -> Result<(), AgentError> {
        self.remove_files(&[".credentials", ".credentials_rsaparams"])?;
        self.remove_files(CONFIG_FILES)?;
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

/// Whether two organization URLs are the same one (`.agent` keeps a trailing `/`, case may differ).
pub fn same_server(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

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
