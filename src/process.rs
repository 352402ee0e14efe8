//! The one place child processes are started.
//!
//! Every child (config.sh, reauth.sh, systemctl, useradd, the agent's `--version`) runs through [`run`]: inside a
//! tracing span, in its own process group so a timeout kills the whole tree (config.sh starts the
//! listener), with stdin closed, stdout and stderr streamed line by line into our log with every known
//! secret masked, stderr kept for the error message, and optionally as another user. Secrets go only
//! into the child's environment ([`Child::secret_env`]); `argv` is world-readable in `/proc`.
//!
//! A child starts from a cleared environment: the allowlist of [`Env::for_children`] plus what the
//! step sets on purpose. Its process group is registered with [`crate::interrupt`], so SIGTERM to
//! agent-bootstrap stops it too.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use os_pipe::{PipeReader, PipeWriter};

use crate::env::Env;
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
    /// Short name for logs and errors ("config.sh", "systemctl enable …").
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// The inherited allowlist ([`Env::for_children`]), then what this step sets.
    pub base_env: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    pub secret_env: Vec<(String, Secret)>,
    pub run_as: Option<RunAs>,
    /// `HOME` for a child that runs as ourselves.
    pub home: Option<PathBuf>,
    pub timeout: Duration,
    /// Stdout is data (a token in JSON), not progress: kept, never logged.
    pub quiet_stdout: bool,
    /// Stderr is part of a probe's answer (ldd, ldconfig), not a warning: kept, logged at debug.
    pub quiet_stderr: bool,
    /// Where the child's process tree is handed out once it runs (to signal it from outside).
    pub tree_slot: Option<TreeSlot>,
}

/// Receives a running child's process tree ([`Child::tree_slot`]): `run` stops the agent with it.
#[derive(Clone, Default)]
pub struct TreeSlot(
    std::sync::Arc<std::sync::OnceLock<std::sync::Arc<crate::platform::ProcessTree>>>,
);

impl TreeSlot {
    pub fn get(&self) -> Option<&crate::platform::ProcessTree> {
        self.0.get().map(std::convert::AsRef::as_ref)
    }
}

impl std::fmt::Debug for TreeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "TreeSlot(set)"
        } else {
            "TreeSlot(empty)"
        })
    }
}

/// Lines of each stream a child's result keeps (the newest): a long-running agent's output is
/// logged as it comes and must not pile up in memory.
pub const KEPT_LINES: usize = 1000;

impl Child {
    pub fn new(label: impl Into<String>, program: impl Into<PathBuf>, env: &Env) -> Self {
        Self {
            label: label.into(),
            program: program.into(),
            args: vec![],
            cwd: None,
            base_env: env.for_children(),
            env: vec![],
            secret_env: vec![],
            run_as: None,
            home: env.home().map(PathBuf::from),
            timeout: Duration::from_secs(120),
            quiet_stdout: false,
            quiet_stderr: false,
            tree_slot: None,
        }
    }

    /// Hands the running child's process tree to `slot`.
    pub fn tree_slot(mut self, slot: TreeSlot) -> Self {
        self.tree_slot = Some(slot);
        self
    }

    /// The child's environment starts from these variables instead of [`Env::for_children`].
    pub fn base_env(mut self, vars: Vec<(String, String)>) -> Self {
        self.base_env = vars;
        self
    }

    /// Keeps stdout out of the log (it carries data, a token for instance).
    pub fn quiet_stdout(mut self) -> Self {
        self.quiet_stdout = true;
        self
    }

    /// Its stderr is commentary, logged at debug (`systemctl enable`'s "Created symlink …"); a
    /// failure still carries its last line in the error.
    pub fn quiet_stderr(mut self) -> Self {
        self.quiet_stderr = true;
        self
    }

    /// A probe: stdout and stderr are its answer, kept and never logged as progress or warnings.
    pub fn probe(mut self) -> Self {
        self.quiet_stdout = true;
        self.quiet_stderr = true;
        self
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
    #[error("{label} was stopped: agent-bootstrap is being stopped")]
    Interrupted { label: String },
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

    let (handle, out_r, err_r) = start(child)?;
    let tree = adopt_tree(&handle);
    let _registered = tree.clone().map(crate::interrupt::ChildGroup::register);
    if let (Some(slot), Some(tree)) = (&child.tree_slot, &tree) {
        let _ = slot.0.set(tree.clone());
    }
    let (mut lines, readers) = read_lines(child, masker, &span, out_r, err_r);

    let ending = wait(&handle, child.timeout, &mut lines);
    if ending != Ending::Exited {
        stop(&handle, tree.as_deref());
    }
    let code = exit_code(&handle);
    // Readers end when every holder of the pipes is gone; a stray grandchild could keep them open,
    // so stop collecting a few seconds after the child ended.
    lines.collect_until(Instant::now() + Duration::from_secs(5));
    drop(readers);
    outcome(child, ending, lines.finished(code))
}

/// Starts `child` with stdin closed and stdout and stderr into pipes, whose read ends it returns.
fn start(child: &Child) -> Result<(duct::Handle, PipeReader, PipeReader), ProcessError> {
    let spawn_err = |source| ProcessError::Spawn {
        label: child.label.clone(),
        program: child.program.clone(),
        source,
    };
    let (out_r, out_w) = os_pipe::pipe().map_err(spawn_err)?;
    let (err_r, err_w) = os_pipe::pipe().map_err(spawn_err)?;
    let expr = command(child, out_w, err_w);
    let handle = expr.start().map_err(spawn_err)?;
    // The expression holds our copies of the pipes' write ends: drop it so the readers see EOF.
    drop(expr);
    Ok((handle, out_r, err_r))
}

/// The command `child` describes: stdin closed, stdout and stderr into `out_w` and `err_w`, its
/// own environment ([`child_env`]), its own process group, and its account if it runs as another.
fn command(child: &Child, out_w: PipeWriter, err_w: PipeWriter) -> duct::Expression {
    let mut expr = duct::cmd(&child.program, &child.args)
        .stdin_null()
        .stdout_file(out_w)
        .stderr_file(err_w)
        .unchecked();
    if let Some(dir) = &child.cwd {
        expr = expr.dir(dir);
    }
    expr = expr.full_env(child_env(child));
    let run_as = child.run_as.as_ref().map(|u| (u.uid, u.gid));
    expr.before_spawn(move |cmd| {
        crate::platform::ProcessTree::prepare(cmd, run_as);
        Ok(())
    })
}

/// A cleared environment: the allowlist, then what this step sets. Nothing else of root's
/// environment (cloud-init's or the extension's variables, a stray VSTS_AGENT_INPUT_*) reaches
/// a child.
fn child_env(child: &Child) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = match &child.run_as {
        // Another account (the agent user): no proxy password in what it can read.
        Some(_) => crate::env::without_proxy_passwords(child.base_env.clone())
            .into_iter()
            .collect(),
        None => child.base_env.iter().cloned().collect(),
    };
    match &child.run_as {
        Some(user) => {
            vars.insert("HOME".into(), user.home.display().to_string());
            vars.insert("USER".into(), user.name.clone());
            vars.insert("LOGNAME".into(), user.name.clone());
        }
        None => {
            if let Some(home) = &child.home {
                vars.insert("HOME".into(), home.display().to_string());
            }
        }
    }
    for (k, v) in &child.env {
        vars.insert(k.clone(), v.clone());
    }
    for (k, v) in &child.secret_env {
        vars.insert(k.clone(), v.expose().to_owned());
    }
    vars
}

/// The started child's process tree, to stop it whole.
fn adopt_tree(handle: &duct::Handle) -> Option<Arc<crate::platform::ProcessTree>> {
    handle
        .pids()
        .first()
        .and_then(|pid| crate::platform::ProcessTree::adopt(*pid).ok())
        .map(Arc::new)
}

/// A line of a child's output: `true` when it came from stderr.
type Line = (bool, String);

/// Reads the child's stdout and stderr on a thread each (inside `span`), every line logged as it
/// comes ([`log_line`]) and sent to the [`Lines`] returned.
fn read_lines(
    child: &Child,
    masker: &Masker,
    span: &tracing::Span,
    out_r: PipeReader,
    err_r: PipeReader,
) -> (Lines, [JoinHandle<()>; 2]) {
    let (tx, rx) = mpsc::channel::<Line>();
    let streams = [
        (false, child.quiet_stdout, out_r),
        (true, child.quiet_stderr, err_r),
    ];
    let readers = streams.map(|(is_err, quiet, pipe)| {
        let tx = tx.clone();
        let masker = masker.clone();
        let parent = span.clone();
        std::thread::spawn(move || {
            let _e = parent.enter();
            for line in BufReader::new(pipe).split(b'\n') {
                let Ok(line) = line else { break };
                let raw = String::from_utf8_lossy(&line);
                let text = log_line(raw.trim_end_matches('\r'), is_err, quiet, &masker);
                if tx.send((is_err, text)).is_err() {
                    break;
                }
            }
        })
    });
    (Lines::new(rx), readers)
}

/// Logs one line of the child's output and returns it as it is kept: stderr masked and logged as
/// a warning (at debug when `quiet`); stdout masked and logged as progress, or, when `quiet`, kept
/// as it is and not logged.
fn log_line(raw: &str, is_err: bool, quiet: bool, masker: &Masker) -> String {
    if is_err {
        let text = masker.mask(raw);
        if quiet {
            tracing::debug!(target: "agent_bootstrap::child", "{text}");
        } else {
            tracing::warn!(target: "agent_bootstrap::child", "{text}");
        }
        return text;
    }
    // Data on stdout is kept as it is (the caller parses it) and never logged.
    if quiet {
        return raw.to_owned();
    }
    let text = masker.mask(raw);
    tracing::info!(target: "agent_bootstrap::child", "{text}");
    text
}

/// The child's output as the readers send it, the newest [`KEPT_LINES`] of each stream kept.
struct Lines {
    rx: mpsc::Receiver<Line>,
    stdout: VecDeque<String>,
    stderr: VecDeque<String>,
}

impl Lines {
    fn new(rx: mpsc::Receiver<Line>) -> Self {
        Self {
            rx,
            stdout: VecDeque::new(),
            stderr: VecDeque::new(),
        }
    }

    fn keep(&mut self, (is_err, line): Line) {
        let lines = if is_err {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Keeps what has arrived so far, without waiting.
    fn collect_arrived(&mut self) {
        while let Ok(item) = self.rx.try_recv() {
            self.keep(item);
        }
    }

    /// Keeps what arrives until both readers are done or `deadline` passes.
    fn collect_until(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(item) => self.keep(item),
                Err(_) => break,
            }
        }
    }

    fn finished(self, code: i32) -> Finished {
        Finished {
            code,
            stdout: self.stdout.into(),
            stderr: self.stderr.into(),
        }
    }
}

/// How waiting for a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited,
    /// agent-bootstrap is being stopped.
    Interrupted,
    TimedOut,
}

/// Waits for the child to exit, keeping its output meanwhile, in short steps: a stop request must
/// end the child within the grace period. `Duration::MAX`: no deadline (the agent itself, run in
/// the foreground).
fn wait(handle: &duct::Handle, timeout: Duration, lines: &mut Lines) -> Ending {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        // Collected while it runs: the channel must not grow with a long-running child's output.
        lines.collect_arrived();
        match handle.wait_timeout(Duration::from_millis(100)) {
            Ok(Some(_)) | Err(_) => return Ending::Exited,
            Ok(None) => {}
        }
        if crate::interrupt::requested() {
            return Ending::Interrupted;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ending::TimedOut;
        }
    }
}

/// Stops a child still running: its whole tree ([`kill_tree`]), then the child itself.
fn stop(handle: &duct::Handle, tree: Option<&crate::platform::ProcessTree>) {
    if let Some(tree) = tree {
        kill_tree(tree);
    }
    let _ = handle.kill();
}

/// The exit code of a child that has ended; -1 when it has none (killed by a signal) or cannot
/// be had.
fn exit_code(handle: &duct::Handle) -> i32 {
    match handle.wait() {
        Ok(out) => out.status.code().unwrap_or(-1),
        Err(_) => -1,
    }
}

/// What the caller gets for a child that ended this way with this output.
fn outcome(child: &Child, ending: Ending, output: Finished) -> Result<Finished, ProcessError> {
    match ending {
        Ending::Interrupted => Err(ProcessError::Interrupted {
            label: child.label.clone(),
        }),
        Ending::TimedOut => {
            tracing::warn!(timeout_s = child.timeout.as_secs(), "timed out; stopped");
            Err(ProcessError::TimedOut {
                label: child.label.clone(),
                timeout: child.timeout,
                output,
            })
        }
        Ending::Exited => {
            tracing::debug!(code = output.code, "finished");
            Ok(output)
        }
    }
}

/// Stops a child's whole tree: SIGTERM, a moment to exit, then SIGKILL (Windows: the Job Object
/// is terminated at once).
fn kill_tree(tree: &crate::platform::ProcessTree) {
    tree.kill(false);
    if cfg!(unix) {
        std::thread::sleep(Duration::from_millis(500));
        tree.kill(true);
    }
}

/// [`run`] on a blocking thread.
pub async fn run_async(child: Child, masker: Masker) -> Result<Finished, ProcessError> {
    tokio::task::spawn_blocking(move || run(&child, &masker))
        .await
        .expect("child runner panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::fake(
            &[("PATH", "/usr/bin:/bin"), ("CLOUD_INIT_SECRET", "hunter2")],
            "h",
            true,
        )
    }

    #[cfg(unix)]
    #[test]
    fn children_start_from_the_allowlist_only() {
        let child = Child::new("env", "/usr/bin/env", &env()).env("STEP_VAR", "1");
        let done = run(&child, &Masker::new()).unwrap();
        let mut names: Vec<&str> = done
            .stdout
            .iter()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        names.sort();
        assert_eq!(names, vec!["HOME", "PATH", "STEP_VAR"]);
    }

    #[cfg(unix)]
    #[test]
    fn captures_output_and_masks_secrets() {
        let secret = Secret::new("s3cr3t-value-123");
        let child = Child::new("sh", "/bin/sh", &env())
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

    #[cfg(unix)]
    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-alive");
        let script = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let child = Child::new("hang", "/bin/sh", &env())
            .args(["-c", script.as_str()])
            .timeout(Duration::from_millis(300));
        let start = std::time::Instant::now();
        let e = run(&child, &Masker::new()).unwrap_err();
        assert!(matches!(e, ProcessError::TimedOut { .. }));
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(4));
        assert!(!marker.exists(), "the grandchild survived the timeout");
    }

    #[cfg(unix)]
    #[test]
    fn a_long_running_childs_output_is_kept_bounded() {
        let child = Child::new("chatty", "/bin/sh", &env())
            .args([
                "-c",
                "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done",
            ])
            .timeout(Duration::MAX);
        let done = run(&child, &Masker::new()).unwrap();
        assert_eq!(done.stdout.len(), KEPT_LINES);
        assert_eq!(done.stdout.last().map(String::as_str), Some("line 2999"));
        assert_eq!(done.stdout[0], "line 2000");
    }

    #[cfg(unix)]
    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run(
            &Child::new("nope", "/nonexistent/prog", &env()),
            &Masker::new(),
        )
        .unwrap_err();
        assert!(matches!(e, ProcessError::Spawn { .. }));
    }

    #[cfg(windows)]
    #[test]
    fn windows_children_are_masked_and_stopped_as_a_tree() {
        let env = Env::capture();
        // Programs are run by path (a bare name given as a path is not looked up in PATH).
        let cmd = env.var("ComSpec").expect("ComSpec").to_owned();
        let secret = Secret::new("s3cr3t-value-123");
        let child = Child::new("cmd", &cmd, &env)
            .args(["/c", "echo out %TOKEN%& echo err %TOKEN% 1>&2& exit /b 3"])
            .secret_env("TOKEN", secret.clone());
        let done = run(&child, &Masker::with(&secret)).unwrap();
        assert_eq!(done.code, 3);
        assert_eq!(done.stdout, vec!["out ***"]);
        // cmd keeps the space before the redirection.
        assert_eq!(done.error_line().as_deref(), Some("err ***"));
        // A child that would run for half a minute is stopped with its Job Object.
        let hang = Child::new("hang", &cmd, &env)
            .args(["/c", "ping -n 30 127.0.0.1 >nul"])
            .timeout(Duration::from_millis(500));
        let start = std::time::Instant::now();
        let e = run(&hang, &Masker::new()).unwrap_err();
        assert!(matches!(e, ProcessError::TimedOut { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn display_quotes_arguments() {
        let c = Child::new("x", "./config.sh", &env()).args(["--pool", "My Pool"]);
        assert_eq!(c.display(), "./config.sh --pool 'My Pool'");
    }
}
