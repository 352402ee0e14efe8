//! `run` shares its account with the jobs of the agent it runs, and the environment a process
//! starts with stays in `/proc/<pid>/environ` for its whole life: changing the variables later
//! (`setenv`) does not change that copy. So `run`, started with a token or a client secret in its
//! environment (a container's `AZP_TOKEN`, `AZURE_CLIENT_SECRET`, a proxy URL with a password),
//! starts itself again at once (`execve` of its own program: same pid, same arguments) with those
//! variables moved into a pipe that the new image reads once and closes. The secrets then exist
//! only in the tool's memory, which `PR_SET_DUMPABLE` 0 (set by `run`) keeps from the jobs too.

/// The variable that names the pipe's descriptor in the started-again process.
pub use crate::env::SECRETS_FD_ENV as FD_ENV;

/// At most this much is moved through the pipe (written before the `execve`, so it must fit in the
/// pipe's buffer).
#[cfg(unix)]
const MAX: usize = 60 * 1024;

/// Starts this program again without the secret variables of its environment (see the module
/// doc). Returns without doing anything when there are none, or when this process already is the
/// started-again one; returns the reason when it could not (the run goes on with what it has).
#[cfg(unix)]
pub fn restart_without_secrets() -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if std::env::var_os(FD_ENV).is_some() {
        return Ok(());
    }
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let (secrets, kept): (Vec<_>, Vec<_>) = vars
        .into_iter()
        .partition(|(k, v)| crate::env::is_secret(k, v));
    if secrets.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec(&secrets).map_err(|e| e.to_string())?;
    if json.len() > MAX {
        return Err(format!("the secret variables are over {MAX} bytes"));
    }
    // Both ends without close-on-exec: the read end is inherited by the new image; the write end
    // is closed (dropped) before it.
    let (read, write) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    std::fs::File::from(write)
        .write_all(&json)
        .map_err(|e| e.to_string())?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(args.first().cloned().unwrap_or_default())
        .args(args.iter().skip(1))
        .env_clear()
        .envs(kept)
        .env(FD_ENV, read.as_raw_fd().to_string())
        .exec();
    Err(format!("could not start again without the secrets: {err}"))
}

#[cfg(not(unix))]
pub fn restart_without_secrets() -> Result<(), String> {
    Ok(())
}

/// In the started-again process: the secret variables, read from the pipe (then closed). Empty
/// when there is no pipe.
#[cfg(unix)]
pub fn take_secrets() -> Vec<(String, String)> {
    use std::io::Read;
    let Some(fd) = std::env::var(FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return vec![];
    };
    let mut text = vec![];
    // Reopened through /proc (no raw descriptor is adopted), then the inherited one is closed.
    let read = std::fs::File::open(format!("/proc/self/fd/{fd}"))
        .and_then(|mut f| f.read_to_end(&mut text));
    let _ = nix::unistd::close(fd);
    match read {
        Ok(_) => serde_json::from_slice(&text).unwrap_or_default(),
        Err(_) => vec![],
    }
}

#[cfg(not(unix))]
pub fn take_secrets() -> Vec<(String, String)> {
    vec![]
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_told_apart_from_the_rest() {
        use crate::env::is_secret;
        assert!(is_secret("AZP_TOKEN", "x"));
        assert!(is_secret("AZURE_CLIENT_SECRET", "x"));
        assert!(is_secret("VSTS_AGENT_INPUT_TOKEN", "x"));
        assert!(is_secret("HTTPS_PROXY", "http://bob:pw@proxy:3128"));
        assert!(!is_secret("HTTPS_PROXY", "http://proxy:3128"));
        assert!(!is_secret("AZP_URL", "https://dev.azure.com/o"));
        assert!(!is_secret("PATH", "/usr/bin"));
    }
}
