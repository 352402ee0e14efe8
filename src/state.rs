//! What install remembers for later runs, without any secret.
//!
//! The resolved settings (organization, pool, agent name, directories, user, identity selector,
//! package) are saved as JSON under the state directory (`/var/lib/agent-bootstrap/agents/`), one
//! file per agent dir. The file is root-owned and outside the agent dir on purpose: the agent user can
//! write the agent dir, and must not be able to redirect where root later sends a token.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not write the saved settings '{path}'")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the saved settings '{path}'")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the saved settings '{path}' are not valid ({detail}): cut short or changed since install \
         wrote them (a power cut, an edit), so nothing in them is used\n\
         hint: run `agent-bootstrap install` again with the flags the agent was installed with; it \
         writes them anew"
    )]
    Parse { path: PathBuf, detail: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Saved {
    pub schema: u32,
    pub url: String,
    /// The pool, or a group's deployment pool (an environment's name and 0: see `group`).
    pub pool: String,
    pub pool_id: u64,
    /// `--deployment-group` / `--environment`: the group the agent is registered in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::scope::GroupRef>,
    pub agent_name: String,
    pub agent_id: u64,
    pub agent_dir: PathBuf,
    pub work_dir: String,
    pub user: String,
    /// True when the user was created by install (the dedicated one).
    pub dedicated_user: bool,
    pub service: bool,
    pub service_unit: Option<String>,
    /// `client_id=…`, `object_id=…`, `msi_res_id=…`, or `None` for the default identity.
    pub identity: Option<String>,
    /// The identity source install used (`imds`, `azure-cli`, `app-service`, `arc`, `workload`,
    /// `pat`); absent in settings saved before there were others: `imds`.
    #[serde(default)]
    pub identity_source: Option<String>,
    /// Azure CLI: `az login --identity` before asking for a token.
    #[serde(default)]
    pub az_login: bool,
    /// A PAT's file (never the PAT), for runs without `AZP_TOKEN_FILE`.
    #[serde(default)]
    pub pat_file: Option<PathBuf>,
    pub agent_version: Option<String>,
    pub package_sha256: Option<String>,
    /// `/etc/machine-id` at install time: a clone of the image has another one.
    pub machine_id: Option<String>,
    /// The Azure VM id (IMDS) at install time; preferred over the machine id to detect clones.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// `--package` as given (a path or URL), for reconfiguring without the packages API.
    #[serde(default)]
    pub package: Option<String>,
    /// `--end-user-processes`: the account (`--user`) may have its processes ended before each
    /// configure.
    #[serde(default)]
    pub end_user_processes: bool,
    /// `--install-dependencies`: a reinstall at boot installs them again.
    #[serde(default)]
    pub install_dependencies: bool,
    /// `--platform`, when it was given.
    #[serde(default)]
    pub platform: Option<String>,
    /// The boot unit that runs `reconcile`, if one was installed.
    #[serde(default)]
    pub boot_unit: Option<String>,
    /// The unit that runs `watch` (`--scale-in-drain`), if one was installed.
    #[serde(default)]
    pub watch_unit: Option<String>,
    /// The proxy (`scheme://host:port`, never credentials), its user, and the file its password
    /// is read from (never the password).
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub proxy_user: Option<String>,
    #[serde(default)]
    pub proxy_password_file: Option<PathBuf>,
    /// `NO_PROXY` as install saw it.
    #[serde(default)]
    pub no_proxy: Option<String>,
    /// The extra CA certificates (`--ca-file`), a path.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file` install added to the system trust store (`crate::trust`),
    /// which `remove` takes out again; a certificate the store already had is not listed.
    #[serde(default)]
    pub trusted_cas: Vec<TrustedCa>,
    /// `--disable-update`: `agent.disableupdate` goes into the agent's `.env` at every configure.
    #[serde(default)]
    pub disable_update: bool,
    /// `--capability KEY=VALUE`: the agent's `.capabilities`, written at every configure.
    #[serde(default)]
    pub capabilities: std::collections::BTreeMap<String, String>,
}

/// A CA certificate agent-bootstrap put into the system trust store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrustedCa {
    /// Its subject (`CN=…, O=…`), for messages.
    pub subject: String,
    /// The SHA-256 of its DER encoding.
    pub sha256: String,
    /// Linux: the file written into the distribution's directory of local CAs
    /// (`/usr/local/share/ca-certificates/agent-bootstrap-<hash>.crt`, …).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Windows: its SHA-1 thumbprint in `LocalMachine\Root`.
    #[serde(default)]
    pub thumbprint: Option<String>,
}

impl Saved {
    /// Where the agent is registered, as the REST calls take it.
    pub fn pool(&self) -> crate::devops::Pool {
        crate::devops::Pool {
            id: self.pool_id,
            name: self.pool.clone(),
            group: self.group.clone(),
        }
    }

    /// Whether this machine is not the one that configured the agent: the VM id differs (when both
    /// are known), else the machine id differs (when both are known).
    pub fn is_clone(&self, vm_id: Option<&str>, machine_id: Option<&str>) -> bool {
        match (self.vm_id.as_deref(), vm_id) {
            (Some(a), Some(b)) => !a.eq_ignore_ascii_case(b),
            _ => matches!((self.machine_id.as_deref(), machine_id), (Some(a), Some(b)) if a != b),
        }
    }
}

/// The CA certificates the saved settings of every agent dir but `agent_dir` say install added to
/// the system trust store: what `agent_dir`'s install or remove must leave there. A settings file
/// that cannot be read counts for nothing.
pub fn trusted_elsewhere(state_dir: &Path, agent_dir: &Path) -> Vec<TrustedCa> {
    let mine = file_for(state_dir, agent_dir);
    let Ok(entries) = fs_err::read_dir(state_dir.join("agents")) else {
        return vec![];
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| *p != mine && p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| fs_err::read_to_string(p).ok())
        .filter_map(|t| serde_json::from_str::<Saved>(&t).ok())
        .flat_map(|s| s.trusted_cas)
        .collect()
}

/// Removes the saved settings (remove, or a purge).
pub fn delete(state_dir: &Path, agent_dir: &Path) -> Result<(), StateError> {
    let path = file_for(state_dir, agent_dir);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    match crate::fsx::remove_atomic(dir, &name.to_string_lossy()) {
        Ok(_) => Ok(()),
        Err(source) => Err(StateError::Write { path, source }),
    }
}

/// The saved-settings file for an agent dir.
pub fn file_for(state_dir: &Path, agent_dir: &Path) -> PathBuf {
    state_dir
        .join("agents")
        .join(format!("{}.json", key(agent_dir)))
}

/// The name this agent dir goes by in file and unit names: its path made readable, plus a short
/// hash, e.g. `opt-azure-pipelines-agent-1a2b3c4d` (the settings file, the lock, the boot unit).
pub fn key(agent_dir: &Path) -> String {
    let full = agent_dir.to_string_lossy();
    let readable: String = full
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' | '\\' => '-',
            c if c.is_ascii_alphanumeric() || "._-".contains(c) => c,
            _ => '_',
        })
        .collect();
    format!("{readable}-{}", tag(agent_dir))
}

/// A short name for an agent dir (8 hex digits of its path's SHA-256): marks the temporary files a
/// run on that agent dir creates, so a later run cleans up only its own.
pub fn tag(agent_dir: &Path) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(agent_dir.to_string_lossy().as_bytes())[..4])
}

pub fn save(state_dir: &Path, saved: &Saved) -> Result<PathBuf, StateError> {
    let path = file_for(state_dir, &saved.agent_dir);
    let write = |source| StateError::Write {
        path: path.clone(),
        source,
    };
    let dir = path.parent().expect("state file has a parent");
    crate::fsx::create_private_dir_all(dir).map_err(write)?;
    let json = serde_json::to_vec_pretty(saved).expect("settings serialize");
    // A crash or power cut leaves the old file or the new one, never half of one.
    let name = path.file_name().expect("a file name").to_string_lossy();
    crate::fsx::write_atomic(dir, &name, &json, 0o600).map_err(write)?;
    Ok(path)
}

pub fn load(state_dir: &Path, agent_dir: &Path) -> Result<Option<Saved>, StateError> {
    let path = file_for(state_dir, agent_dir);
    let text = match fs_err::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StateError::Parse {
            path,
            detail: e.to_string(),
        })
}

/// [`load`] for `install`, which writes the settings anew from its flags: a file that is not
/// valid (cut short by a power cut, edited) is reported and treated as absent, never trusted.
pub fn load_or_replace(state_dir: &Path, agent_dir: &Path) -> Result<Option<Saved>, StateError> {
    match load(state_dir, agent_dir) {
        Err(e @ StateError::Parse { .. }) => {
            tracing::warn!("{e}; install writes them anew");
            Ok(None)
        }
        other => other,
    }
}

pub fn machine_id() -> Option<String> {
    fs_err::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved {
            group: None,
            schema: 1,
            url: "https://dev.azure.com/o".into(),
            pool: "Default".into(),
            pool_id: 1,
            agent_name: "a".into(),
            agent_id: 3,
            agent_dir: "/opt/azure-pipelines-agent".into(),
            work_dir: "_work".into(),
            user: "azpagent".into(),
            dedicated_user: true,
            service: true,
            service_unit: None,
            identity: None,
            identity_source: Some("pat".into()),
            az_login: false,
            pat_file: Some("/etc/agent-bootstrap/pat".into()),
            agent_version: Some("4.1.0".into()),
            package_sha256: None,
            machine_id: None,
            vm_id: None,
            package: None,
            end_user_processes: false,
            install_dependencies: false,
            platform: None,
            boot_unit: None,
            watch_unit: None,
            proxy_url: None,
            proxy_user: None,
            proxy_password_file: None,
            no_proxy: None,
            ca_file: None,
            trusted_cas: vec![TrustedCa {
                subject: "CN=Corp Root CA".into(),
                sha256: "ab".repeat(32),
                file: Some("/usr/local/share/ca-certificates/agent-bootstrap-abab.crt".into()),
                thumbprint: None,
            }],
            disable_update: true,
            capabilities: [("gpu".to_owned(), "true".to_owned())].into(),
        };
        let path = save(dir.path(), &saved).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("opt-azure-pipelines-agent-") && name.ends_with(".json"),
            "{name}"
        );
        assert_ne!(
            file_for(dir.path(), Path::new("/a-b")),
            file_for(dir.path(), Path::new("/a/b"))
        );
        assert_eq!(
            load(dir.path(), &saved.agent_dir).unwrap(),
            Some(saved.clone())
        );
        assert_eq!(load(dir.path(), Path::new("/other")).unwrap(), None);
        // Another agent dir sees this one's CA; this one does not count its own.
        assert_eq!(
            trusted_elsewhere(dir.path(), Path::new("/other")),
            saved.trusted_cas
        );
        assert!(trusted_elsewhere(dir.path(), &saved.agent_dir).is_empty());
        delete(dir.path(), &saved.agent_dir).unwrap();
        assert_eq!(load(dir.path(), &saved.agent_dir).unwrap(), None);
        delete(dir.path(), &saved.agent_dir).unwrap();
    }

    #[test]
    fn clone_detection_prefers_the_vm_id() {
        let mut s: Saved = serde_json::from_str(
            r#"{"schema":1,"url":"u","pool":"p","pool_id":1,"agent_name":"a","agent_id":1,
                "agent_dir":"/a","work_dir":"_work","user":"u","dedicated_user":true,"service":true,
                "service_unit":null,"identity":null,"agent_version":null,"package_sha256":null,
                "machine_id":"m1"}"#,
        )
        .unwrap();
        assert!(!s.is_clone(None, Some("m1")));
        assert!(s.is_clone(None, Some("m2")));
        assert!(!s.is_clone(None, None));
        s.vm_id = Some("VM-1".into());
        assert!(
            !s.is_clone(Some("vm-1"), Some("m2")),
            "same VM, regenerated machine id"
        );
        assert!(s.is_clone(Some("vm-2"), Some("m1")));
    }
}
