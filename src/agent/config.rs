//! The unattended configure command line.
//!
//! `config.sh`/`config.cmd` with `--unattended --url U --auth pat --pool P --agent N --work W
//! --replace` (and `--acceptTeeEula` off Windows), run from the agent root. The token is never an
//! argument: it is put in the child's environment as `VSTS_AGENT_INPUT_TOKEN`, which the listener reads
//! and deletes from its own environment (`agent.md` §2). `configure` is not passed: the script adds it.

use std::path::{Path, PathBuf};

use crate::os::Os;

pub const TOKEN_ENV: &str = "VSTS_AGENT_INPUT_TOKEN";

#[derive(Debug, Clone)]
pub struct Configure {
    pub url: String,
    pub pool: String,
    /// A deployment group or environment instead of `pool` ([`crate::scope::configure_args`]).
    pub group: Option<crate::scope::Group>,
    pub agent: String,
    pub work: String,
    /// Windows: let configure install and start the service itself (`--runAsService`), as this
    /// account (`--windowsLogonAccount`).
    pub windows_service: Option<String>,
    /// `--proxyurl` (no credentials in it) and `--proxyusername`; the password goes only in
    /// [`PROXY_PASSWORD_ENV`].
    pub proxy_url: Option<String>,
    pub proxy_user: Option<String>,
    /// `--sslcacert`: CA certificates the agent trusts in addition to the system's.
    pub ca_file: Option<String>,
}

/// `config.sh` and `run.sh` refuse to run as root unless this is set (`src/Misc/layoutroot/config.sh`:
/// `if [ $user_id -eq 0 -a -z "$AGENT_ALLOW_RUNASROOT" ]`); Windows has no such check.
pub const ALLOW_RUN_AS_ROOT_ENV: &str = "AGENT_ALLOW_RUNASROOT";

/// One of the agent's scripts run as root on Linux gets [`ALLOW_RUN_AS_ROOT_ENV`]; run as the
/// agent's account, or on Windows, it does not.
pub fn allow_root(child: crate::process::Child, as_root: bool) -> crate::process::Child {
    if as_root && cfg!(unix) {
        child.env(ALLOW_RUN_AS_ROOT_ENV, "1")
    } else {
        child
    }
}

/// The proxy's password, for `config.sh` (never an argument; the agent keeps it in its
/// credential store).
pub const PROXY_PASSWORD_ENV: &str = "VSTS_AGENT_INPUT_PROXYPASSWORD";

/// The Windows service account's password, for `config.cmd` (never an argument).
pub const LOGON_PASSWORD_ENV: &str = "VSTS_AGENT_INPUT_WINDOWSLOGONPASSWORD";

/// The script to run and its arguments.
pub fn configure_command(os: &Os, root: &Path, c: &Configure) -> (PathBuf, Vec<String>) {
    let mut args: Vec<String> = vec![
        "--unattended".into(),
        "--url".into(),
        c.url.clone(),
        // Explicit: an invalid --auth silently falls back, and PAT is what carries an Entra token.
        "--auth".into(),
        "pat".into(),
    ];
    match &c.group {
        Some(g) => args.extend(crate::scope::configure_args(g)),
        None => args.extend(["--pool".into(), c.pool.clone()]),
    }
    args.extend([
        "--agent".into(),
        c.agent.clone(),
        "--work".into(),
        c.work.clone(),
        "--replace".into(),
    ]);
    if let Some(url) = &c.proxy_url {
        args.extend(["--proxyurl".into(), url.clone()]);
        if let Some(user) = &c.proxy_user {
            args.extend(["--proxyusername".into(), user.clone()]);
        }
    }
    if let Some(ca) = &c.ca_file {
        args.extend(["--sslcacert".into(), ca.clone()]);
    }
    if os.is_windows() {
        if let Some(account) = &c.windows_service {
            args.push("--runAsService".into());
            args.push("--windowsLogonAccount".into());
            args.push(account.clone());
        }
    } else {
        args.push("--acceptTeeEula".into());
    }
    (root.join(os.config_script()), args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Configure {
        Configure {
            url: "https://dev.azure.com/myorg".into(),
            pool: "Default".into(),
            group: None,
            agent: "vm1".into(),
            work: "_work".into(),
            windows_service: Some(r"NT AUTHORITY\NETWORK SERVICE".into()),
            proxy_url: None,
            proxy_user: None,
            ca_file: None,
        }
    }

    #[test]
    fn proxy_and_ca_are_arguments_and_the_password_is_not() {
        let mut c = sample();
        c.proxy_url = Some("http://proxy.corp:3128/".into());
        c.proxy_user = Some("svc-agents".into());
        c.ca_file = Some("/etc/ssl/corp-ca.pem".into());
        let (_, args) = configure_command(&Os::linux_x64(), Path::new("/opt/a"), &c);
        let line = args.join(" ");
        assert!(line.contains("--proxyurl http://proxy.corp:3128/ --proxyusername svc-agents --sslcacert /etc/ssl/corp-ca.pem"), "{line}");
        assert!(!line.to_ascii_lowercase().contains("password"));
    }

    #[test]
    fn linux_command_line() {
        let (prog, args) = configure_command(&Os::linux_x64(), Path::new("/opt/a"), &sample());
        assert_eq!(prog, Path::new("/opt/a/config.sh"));
        assert_eq!(
            args.join(" "),
            "--unattended --url https://dev.azure.com/myorg --auth pat --pool Default --agent vm1 --work _work --replace --acceptTeeEula"
        );
        assert!(!args.iter().any(|a| a == "configure" || a == "--token"));
    }

    #[test]
    fn windows_command_line_installs_the_service_itself() {
        let (prog, args) = configure_command(&Os::windows_x64(), Path::new(r"C:\a"), &sample());
        assert!(prog.ends_with("config.cmd"));
        assert!(args.contains(&"--runAsService".to_string()));
        assert!(!args.contains(&"--acceptTeeEula".to_string()));
        assert!(args.contains(&r"NT AUTHORITY\NETWORK SERVICE".to_string()));
        let mut no_svc = sample();
        no_svc.windows_service = None;
        let (_, args) = configure_command(&Os::windows_x64(), Path::new(r"C:\a"), &no_svc);
        assert!(!args.contains(&"--runAsService".to_string()));
    }
}
