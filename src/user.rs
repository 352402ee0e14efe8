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
    #[error(
        "the agent's account '{name}' also runs other programs ({running}); configuring the agent \
         ends every process of that account first, so that none can read the token or change the \
         package: pass --end-user-processes to allow it, or let install create a dedicated account \
         (omit --user)"
    )]
    Shared { name: String, running: String },
    #[error("processes of '{name}' were still running after they were ended: {left}")]
    Lingering { name: String, left: String },
    #[error(
        "processes of '{name}' started again after every process of the account was ended \
         ({which}): a cron job, at job or user service of that account? the agent is not \
         configured with the token while they could change its files; remove them and run again"
    )]
    Respawned { name: String, which: String },
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

/// What creates an account here: `useradd`, else BusyBox's `adduser` and `addgroup`, else why
/// none can (`doctor` reports it before an install needs it).
pub fn creation_tool(env: &crate::env::Env) -> Result<&'static str, String> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let found = |program: &str| which::which_in(program, env.var("PATH"), &cwd).is_ok();
    if found("useradd") {
        Ok("useradd")
    } else if found("adduser") && found("addgroup") {
        Ok("BusyBox adduser")
    } else {
        Err(NO_ACCOUNT_TOOL.to_owned())
    }
}

const NO_ACCOUNT_TOOL: &str = "neither useradd (shadow-utils, passwd) nor BusyBox's adduser and \
                               addgroup were found on PATH; create the account yourself and pass --user";

/// `useradd --system --create-home` (Unix); where there is no `useradd` (Alpine and other
/// BusyBox systems), BusyBox's `addgroup -S` and `adduser -S -D`.
async fn create(name: &str, env: &crate::env::Env) -> Result<RunAs, UserError> {
    let name = name.to_owned();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let find = |program: &str| which::which_in(program, env.var("PATH"), &cwd).ok();
    let home = format!("/home/{name}");
    tracing::info!(user = %name, "creating the agent user");
    let child = match (find("useradd"), find("adduser"), find("addgroup")) {
        (Some(useradd), _, _) => Child::new("useradd", useradd, env).args([
            "--system",
            "--create-home",
            "--home-dir",
            &home,
            "--shell",
            "/bin/bash",
            "--comment",
            "Azure Pipelines agent",
            &name,
        ]),
        (None, Some(adduser), Some(addgroup)) => {
            // BusyBox: a system group of the account's name first (`adduser -S` alone would put
            // the account in `nogroup`), then the account, without a password, with its home.
            let group = Child::new("addgroup", addgroup, env).args(["-S", &name]);
            let done = process::run_async(group, Masker::new())
                .await
                .map_err(|e| UserError::Create {
                    name: name.clone(),
                    detail: e.to_string(),
                })?;
            if !done.success() {
                tracing::debug!(code = done.code, "addgroup -S failed (the group may exist)");
            }
            Child::new("adduser", adduser, env).args([
                "-S",
                "-D",
                "-h",
                &home,
                "-s",
                "/bin/sh",
                "-G",
                &name,
                "-g",
                "Azure Pipelines agent",
                &name,
            ])
        }
        _ => {
            return Err(UserError::Create {
                name,
                detail: NO_ACCOUNT_TOOL.to_owned(),
            });
        }
    };
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
            .unwrap_or_else(|| format!("{} exited with {}", child.label, done.code));
    }
    Err(UserError::Create { name, detail: last })
}

/// A process of the agent's account, as `/proc` shows it.
#[cfg(unix)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProcess {
    pub pid: i32,
    pub name: String,
}

/// The live processes whose real or effective uid is `uid` (zombies are already dead and left
/// out), read from `/proc`. A process that ends while it is being read is skipped.
#[cfg(unix)]
pub fn processes_of(uid: u32) -> Vec<UserProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut found = vec![];
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(name) = owned_live(&status, uid) {
            found.push(UserProcess { pid, name });
        }
    }
    found
}

/// From `/proc/PID/status`: the process's name when it is alive (not a zombie or dead) and its
/// real or effective uid is `uid`.
#[cfg(unix)]
fn owned_live(status: &str, uid: u32) -> Option<String> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let state = field("State:")?;
    if state.starts_with('Z') || state.starts_with('X') {
        return None;
    }
    let mut uids = field("Uid:")?
        .split_whitespace()
        .map(|u| u.parse::<u32>().ok());
    let (real, effective) = (uids.next()??, uids.next()??);
    (real == uid || effective == uid).then(|| field("Name:").unwrap_or("?").to_owned())
}

/// How long [`end_processes`] waits for the processes it killed to be gone.
pub const END_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Ends every process of `user` and waits until none is left: each is stopped first (`SIGSTOP`:
/// a stopped process cannot fork a new one), the scan repeated until it finds no new one, then
/// all are killed (`SIGKILL`). Before a configure that carries the token, a job's leftover process
/// could otherwise read `/proc/<pid>/environ` of config.sh or rewrite the package between its
/// extraction and its start. Returns how many were ended. Root's own processes are never touched
/// (`user` is never root: the caller checks).
#[cfg(unix)]
pub async fn end_processes(user: &RunAs) -> Result<usize, UserError> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    assert_ne!(user.uid, 0, "root's processes are never ended");
    let started = std::time::Instant::now();
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let now = processes_of(user.uid);
        let fresh: Vec<_> = now.iter().filter(|p| !seen.contains_key(&p.pid)).collect();
        if fresh.is_empty() && now.iter().all(|p| seen.contains_key(&p.pid)) {
            break;
        }
        for p in fresh {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
            seen.insert(p.pid, p.name.clone());
        }
        if started.elapsed() > END_WAIT {
            break;
        }
    }
    for pid in seen.keys() {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    loop {
        let left = processes_of(user.uid);
        if left.is_empty() {
            break;
        }
        if started.elapsed() > END_WAIT {
            return Err(UserError::Lingering {
                name: user.name.clone(),
                left: describe(&left),
            });
        }
        for p in &left {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if !seen.is_empty() {
        tracing::info!(
            user = %user.name,
            count = seen.len(),
            processes = %seen.iter().take(8).map(|(pid, n)| format!("{n} ({pid})")).collect::<Vec<_>>().join(", "),
            "ended every process of the agent's account before configuring"
        );
    }
    Ok(seen.len())
}

/// A few of `procs`, for a message.
#[cfg(unix)]
pub fn describe(procs: &[UserProcess]) -> String {
    let mut s = procs
        .iter()
        .take(5)
        .map(|p| format!("{} (pid {})", p.name, p.pid))
        .collect::<Vec<_>>()
        .join(", ");
    if procs.len() > 5 {
        s.push_str(&format!(" and {} more", procs.len() - 5));
    }
    s
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\n\
                          Uid:\t998\t998\t998\t998\nGid:\t998\t998\t998\t998\n";

    #[test]
    fn a_process_belongs_to_its_real_or_effective_uid() {
        assert_eq!(owned_live(STATUS, 998).as_deref(), Some("sleep"));
        assert_eq!(owned_live(STATUS, 0), None);
        // A set-uid program the user started (real uid the user's) is the user's too.
        let setuid = STATUS.replace("Uid:\t998\t998", "Uid:\t998\t0");
        assert_eq!(owned_live(&setuid, 998).as_deref(), Some("sleep"));
        // Root's daemon acting for nobody is not.
        let root = STATUS.replace("Uid:\t998\t998\t998\t998", "Uid:\t0\t0\t0\t998");
        assert_eq!(owned_live(&root, 998), None);
    }

    #[test]
    fn zombies_are_already_gone() {
        let zombie = STATUS.replace("S (sleeping)", "Z (zombie)");
        assert_eq!(owned_live(&zombie, 998), None);
    }
}
