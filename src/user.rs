//! The account the agent runs as.
//!
//! `config.sh` refuses root, and a build agent should not run as root anyway. By default install
//! creates a dedicated system user (`azpagent`) with a home directory and gives it the agent dir;
//! `--user NAME` uses an existing account. `--user root` is honoured, with a warning, by setting
//! `AGENT_ALLOW_RUNASROOT` for the agent's scripts.

use std::path::PathBuf;

use crate::process::{self, Child, RunAs};
use crate::secret::Masker;
use crate::settings::AgentUser;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "user '{name}' does not exist (--user names an existing account; omit it to use a dedicated one)"
    )]
    Missing { name: String },
    #[error("could not create the agent user '{name}': {detail}")]
    Create { name: String, detail: String },
    #[error("could not look up user '{name}'")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(unix)]
impl From<nix::unistd::User> for RunAs {
    fn from(u: nix::unistd::User) -> Self {
        Self {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }
    }
}

#[cfg(unix)]
pub fn lookup(name: &str) -> Result<Option<RunAs>, UserError> {
    let user = match nix::unistd::User::from_name(name) {
        Ok(u) => u,
        // getpwnam_r(3): ENOENT, ESRCH (and others) may mean "no such name"; musl says ENOENT
        // when there is no /etc/passwd at all (an empty container root).
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH) => None,
        Err(source) => {
            return Err(UserError::Lookup {
                name: name.to_owned(),
                source: source.into(),
            });
        }
    };
    Ok(user.map(RunAs::from))
}

/// Windows: the service account is a name configure hands to the Service Control Manager (a
/// built-in account such as `NT AUTHORITY\NETWORK SERVICE`, or `--windows-logon-account`); there
/// is no uid to switch to, and the agent's scripts run as SYSTEM.
#[cfg(windows)]
pub fn lookup(name: &str) -> Result<Option<RunAs>, UserError> {
    Ok(Some(RunAs {
        name: name.to_owned(),
        uid: 0,
        gid: 0,
        home: PathBuf::new(),
    }))
}

/// Finds the account, creating the dedicated one if needed.
pub async fn ensure(user: &AgentUser, env: &crate::env::Env) -> Result<RunAs, UserError> {
    let name = user.name().to_owned();
    if let Some(found) = lookup(&name)? {
        return Ok(found);
    }
    let AgentUser::Dedicated(_) = user else {
        return Err(UserError::Missing { name });
    };
    create(&name, env).await
}

/// `useradd --system --create-home` (Unix).
async fn create(name: &str, env: &crate::env::Env) -> Result<RunAs, UserError> {
    let name = name.to_owned();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let useradd =
        which::which_in("useradd", env.var("PATH"), cwd).map_err(|_| UserError::Create {
            name: name.clone(),
            detail: "useradd was not found; create the account yourself and pass --user".to_owned(),
        })?;
    tracing::info!(user = %name, "creating the agent user");
    let child = Child::new("useradd", useradd, env).args([
        "--system",
        "--create-home",
        "--home-dir",
        &format!("/home/{name}"),
        "--shell",
        "/bin/bash",
        "--comment",
        "Azure Pipelines agent",
        &name,
    ]);
    // Another run may be creating it at the same moment: useradd then exits 9 (exists) or 10 (the
    // password file is locked). Look again, and try again a few times.
    let mut last = String::new();
    for attempt in 0..5u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(300 * attempt)).await;
        }
        let done = process::run_async(child.clone(), Masker::new())
            .await
            .map_err(|e| UserError::Create {
                name: name.clone(),
                detail: e.to_string(),
            })?;
        if let Some(found) = lookup(&name)? {
            return Ok(found);
        }
        last = done
            .error_line()
            .unwrap_or_else(|| format!("useradd exited with {}", done.code));
    }
    Err(UserError::Create { name, detail: last })
}
