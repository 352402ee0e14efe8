//! The one place child processes are started.
//!
//! Every child (config.sh, svc.sh, useradd, the agent's `--version`) runs through [`run`]: inside a
//! tracing span, in its own process group so a timeout kills the whole tree (config.sh starts the
//! listener), with stdin closed, stdout and stderr streamed line by line into our log with every known
//! secret masked, stderr kept for the error message, and optionally as another user. Secrets go only
//! into the child's environment ([`Child::secret_env`]); `argv` is world-readable in `/proc`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::secret::{Masker, Secret};

/// An account to run a child as (Unix).
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// The account to switch to: none when it is root already.
    pub fn unless_root(&self) -> Option<RunAs> {
        (self.uid != 0).then(|| self.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Child {
    /// Short name for logs and errors ("config.sh", "svc.sh install").
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub secret_env: Vec<(String, Secret)>,
    pub env_remove: Vec<String>,
    pub run_as: Option<RunAs>,
    pub timeout: Duration,
}

impl Child {
    pub fn new(label: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            label: label.into(),
            program: program.into(),
            args: vec![],
            cwd: None,
            env: vec![],
            secret_env: vec![],
            env_remove: vec![],
            run_as: None,
            timeout: Duration::from_secs(120),
        }
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn secret_env(mut self, k: impl Into<String>, v: Secret) -> Self {
        self.secret_env.push((k.into(), v));
        self
    }

    pub fn env_remove(mut self, k: impl Into<String>) -> Self {
        self.env_remove.push(k.into());
        self
    }

    pub fn run_as(mut self, user: Option<RunAs>) -> Self {
        self.run_as = user;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The command line as a user may see it: program and arguments, never a secret value.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .secret_env
            .iter()
            .map(|(k, _)| format!("{k}={}", crate::secret::REDACTED))
            .collect();
        parts.push(shell_quote(&self.program.display().to_string()));
        parts.extend(self.args.iter().map(|a| shell_quote(a)));
        parts.join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The most telling error line: the last non-empty stderr line that is not the agent's
    /// "see the diagnostic log" boilerplate, else the last stdout line.
    pub fn error_line(&self) -> Option<String> {
        let pick = |lines: &[String]| {
            lines
                .iter()
                .rev()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .find(|l| !l.starts_with("Error reported in diagnostic logs"))
                .map(str::to_owned)
        };
        pick(&self.stderr).or_else(|| pick(&self.stdout))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start {label} ({program})")]
    Spawn {
        label: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{label} did not finish within {}s and was stopped", timeout.as_secs())]
    TimedOut {
        label: String,
        timeout: Duration,
        output: Finished,
    },
}

/// Runs a child to completion (blocking: call from `spawn_blocking`). A non-zero exit is not an
/// error here; the caller decides what it means.
pub fn run(child: &Child, masker: &Masker) -> Result<Finished, ProcessError> {
    let span = tracing::info_span!("child", name = %child.label);
    let _entered = span.enter();
    tracing::debug!(command = %child.display(), "starting");

    let spawn_err = |source| ProcessError::Spawn {
        label: child.label.clone(),
        program: child.program.clone(),
        source,
    };
    let (out_r, out_w) = os_pipe::pipe().map_err(spawn_err)?;
    let (err_r, err_w) = os_pipe::pipe().map_err(spawn_err)?;

    let mut expr = duct::cmd(&child.program, &child.args)
        .stdin_null()
        .stdout_file(out_w)
        .stderr_file(err_w)
        .unchecked();
    if let Some(dir) = &child.cwd {
        expr = expr.dir(dir);
    }
    // Agent input variables reach a child only when set here on purpose: one inherited from the
    // caller (cloud-init, a CI variable) would silently change a configuration, and a token must
    // never reach a service step.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("VSTS_AGENT_INPUT_")
        {
            expr = expr.env_remove(k);
        }
    }
    for k in &child.env_remove {
        expr = expr.env_remove(k);
    }
    for (k, v) in &child.env {
        expr = expr.env(k, v);
    }
    for (k, v) in &child.secret_env {
        expr = expr.env(k, v.expose());
    }
    if let Some(user) = &child.run_as {
        expr = expr
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    let run_as = child.run_as.clone();
    expr = expr.before_spawn(move |cmd| {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            if let Some(user) = &run_as {
                // std drops root's supplementary groups before setuid.
                cmd.gid(user.gid);
                cmd.uid(user.uid);
            }
        }
        Ok(())
    });

    let handle = expr.start().map_err(spawn_err)?;
    // The expression holds our copies of the pipes' write ends: drop it so the readers see EOF.
    drop(expr);
    let pid = handle.pids().first().copied();

    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let out_r: std::os::fd::OwnedFd = out_r.into();
    let err_r: std::os::fd::OwnedFd = err_r.into();
    let readers =
        [(false, out_r), (true, err_r)].map(|(is_err, fd): (bool, std::os::fd::OwnedFd)| {
            let pipe = std::fs::File::from(fd);
            let tx = tx.clone();
            let masker = masker.clone();
            let parent = span.clone();
            std::thread::spawn(move || {
                let _e = parent.enter();
                for line in BufReader::new(pipe).split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = masker.mask(String::from_utf8_lossy(&line).trim_end_matches('\r'));
                    if is_err {
                        tracing::warn!(target: "agent_bootstrap::child", "{text}");
                    } else {
                        tracing::info!(target: "agent_bootstrap::child", "{text}");
                    }
                    if tx.send((is_err, text)).is_err() {
                        break;
                    }
                }
            })
        });
    drop(tx);

    let waited = handle.wait_timeout(child.timeout);
    let timed_out = !matches!(waited, Ok(Some(_)));
    if timed_out {
        if let Some(pid) = pid {
            kill_group(pid);
        }
        let _ = handle.kill();
    }
    let code = match handle.wait() {
        Ok(out) => out.status.code().unwrap_or(-1),
        Err(_) => -1,
    };
    // Readers end when every holder of the pipes is gone; a stray grandchild could keep them open,
    // so stop collecting a few seconds after the child ended.
    let mut stdout = vec![];
    let mut stderr = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, l)) => stderr.push(l),
            Ok((false, l)) => stdout.push(l),
            Err(_) => break,
        }
    }
    drop(readers);
    let output = Finished {
        code,
        stdout,
        stderr,
    };
    if timed_out {
        tracing::warn!(timeout_s = child.timeout.as_secs(), "timed out; stopped");
        return Err(ProcessError::TimedOut {
            label: child.label.clone(),
            timeout: child.timeout,
            output,
        });
    }
    tracing::debug!(code = output.code, "finished");
    Ok(output)
}

#[cfg(unix)]
fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let _ = killpg(group, Signal::SIGKILL);
}

#[cfg(not(unix))]
fn kill_group(_pid: u32) {}

/// [`run`] on a blocking thread.
pub async fn run_async(child: Child, masker: Masker) -> Result<Finished, ProcessError> {
    tokio::task::spawn_blocking(move || run(&child, &masker))
        .await
        .expect("child runner panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_masks_secrets() {
        let secret = Secret::new("s3cr3t-value-123");
        let child = Child::new("sh", "/bin/sh")
            .args(["-c", "echo out $TOKEN; echo err $TOKEN >&2; exit 3"])
            .secret_env("TOKEN", secret.clone());
        let done = run(&child, &Masker::with(&secret)).unwrap();
        assert_eq!(done.code, 3);
        assert_eq!(done.stdout, vec!["out ***"]);
        assert_eq!(done.stderr, vec!["err ***"]);
        assert_eq!(done.error_line().as_deref(), Some("err ***"));
        assert!(!child.display().contains("s3cr3t"));
        assert!(child.display().starts_with("TOKEN=*** /bin/sh"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-alive");
        let script = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let child = Child::new("hang", "/bin/sh")
            .args(["-c", script.as_str()])
            .timeout(Duration::from_millis(300));
        let start = std::time::Instant::now();
        let e = run(&child, &Masker::new()).unwrap_err();
        assert!(matches!(e, ProcessError::TimedOut { .. }));
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(4));
        assert!(!marker.exists(), "the grandchild survived the timeout");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run(&Child::new("nope", "/nonexistent/prog"), &Masker::new()).unwrap_err();
        assert!(matches!(e, ProcessError::Spawn { .. }));
    }

    #[test]
    fn display_quotes_arguments() {
        let c = Child::new("x", "./config.sh").args(["--pool", "My Pool"]);
        assert_eq!(c.display(), "./config.sh --pool 'My Pool'");
    }
}
