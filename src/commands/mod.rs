//! The subcommands. Each takes resolved settings and an injected environment and clock, and returns
//! a typed error that `main` turns into an exit code.

pub mod completions;
pub mod doctor;
pub mod drain;
pub mod install;
pub mod prune;
pub mod reconcile;
pub mod remove;
pub mod run;
pub mod status;
pub mod token;
pub mod watch;

use crate::cli::{Cli, Command};
use crate::clock::Clock;
use crate::env::Env;
use crate::error::Error;
use crate::net::Net;
use crate::os::Os;
use crate::output::Out;
use crate::progress::Progress;
use crate::settings::{self, Paths};

/// An agent dir named on the command line of reconcile, remove or status, with where
/// agent-bootstrap keeps its state for it.
#[derive(Debug, Clone)]
pub struct Target {
    pub agent_dir: std::path::PathBuf,
    pub paths: Paths,
}

fn target(arg: Option<&std::path::Path>, env: &Env, os: &Os) -> Result<Target, Error> {
    let paths = settings::paths(env, os)?;
    Ok(Target {
        agent_dir: settings::agent_dir(arg, &paths, os)?,
        paths,
    })
}

/// Whether the command handles SIGTERM/SIGINT itself (`run` drains its agent, `watch` finishes a
/// drain) instead of being dropped by `main` on the first one.
pub fn handles_signals(cli: &Cli) -> bool {
    matches!(cli.command, Command::Run(_) | Command::Watch(_))
}

/// Runs the command; the exit code on success (0, or the agent's own under `run`).
pub async fn run(cli: Cli, env: Env, out: &Out) -> Result<u8, Error> {
    let net = Net::new(Clock::from_env(&env));
    let os = crate::host::current_os();
    if out.is_json() && !crate::output::JSON_COMMANDS.contains(&cli.command.name()) {
        return Err(Error::Input(format!(
            "invalid --output json for {}: it is for {}",
            cli.command.name(),
            crate::output::JSON_COMMANDS.join(", ")
        )));
    }
    let progress = || Progress::for_stderr(cli.log_format == crate::cli::LogFormat::Text);
    match &cli.command {
        Command::Token(args) => {
            let request = settings::identity(&args.identity)?;
            net.configure(settings::network(&args.network, &env)?);
            token::run(&request, &env, os, &net).await.map(|()| 0)
        }
        Command::Prune(args) => {
            let request = settings::identity(&args.identity)?;
            let s = settings::prune(args, &env, &os)?;
            net.configure(settings::network(&args.network, &env)?);
            prune::run(&s, &request, &env, os, &net, out)
                .await
                .map(|()| 0)
        }
        Command::Run(args) => {
            let s = settings::run(args, &env, os)?;
            net.configure(s.install.network.clone());
            net.prewarm();
            run::run(&s, &env, &net, &progress()).await
        }
        Command::Watch(args) => {
            if !(1..=60).contains(&args.poll_interval) {
                return Err(Error::Input(format!(
                    "invalid --poll-interval {}: must be 1 to 60 seconds",
                    args.poll_interval
                )));
            }
            let t = target(args.dir.agent_dir.as_deref(), &env, &os)?;
            configure_saved(&net, &t, &env)?;
            let every = std::time::Duration::from_secs(args.poll_interval);
            watch::run(&t, every, &env, os, &net).await
        }
        Command::Doctor(args) => {
            let request = settings::identity(&args.identity)?;
            let target = settings::doctor(args, &env, &os)?;
            net.configure(settings::network(&args.network, &env)?);
            doctor::run(&target, &request, args.json, &env, os, &net, out)
                .await
                .map(|()| 0)
        }
        Command::Install(args) => {
            let all = settings::install_all(args, &env, os)?;
            net.configure(all[0].network.clone());
            net.prewarm();
            // `--count`: one after the other; the first failure stops (those before stay
            // installed, and said so).
            for settings in &all {
                install::run(settings, &env, &net, &progress(), out).await?;
            }
            Ok(0)
        }
        Command::Reconcile(args) => {
            let t = target(args.dir.agent_dir.as_deref(), &env, &os)?;
            configure_saved(&net, &t, &env)?;
            reconcile::run(&t, args.dry_run, &env, os, &net, &progress(), out)
                .await
                .map(|()| 0)
        }
        Command::Remove(args) => {
            let t = target(args.dir.agent_dir.as_deref(), &env, &os)?;
            configure_saved(&net, &t, &env)?;
            remove::run(&t, args.purge, args.dry_run, &env, os, &net, out)
                .await
                .map(|()| 0)
        }
        Command::Status(args) => {
            let t = target(args.dir.agent_dir.as_deref(), &env, &os)?;
            configure_saved(&net, &t, &env)?;
            status::run(&t, args.json, &env, os, &net, out)
                .await
                .map(|()| 0)
        }
        Command::Completions(args) => completions::run(args.shell).map(|()| 0),
    }
}

/// The proxy and CA install saved for this agent dir, for the commands that act on it.
fn configure_saved(net: &Net, t: &Target, env: &Env) -> Result<(), Error> {
    if let Some(saved) = crate::state::load(&t.paths.state_dir, &t.agent_dir)? {
        net.configure(settings::saved_network(&saved, env)?);
    }
    Ok(())
}

/// The token source a request resolves to (logged: which, and why the others were not), ready to
/// hand out tokens.
pub(crate) async fn tokens(
    request: &crate::identity::Request,
    env: &Env,
    os: &Os,
    net: &Net,
) -> Result<std::sync::Arc<crate::identity::Tokens>, crate::identity::IdentityError> {
    let (source, report) = crate::identity::resolve(request, env, os, net).await;
    report.log();
    let source = source?;
    tracing::info!(source = %source.kind(), "tokens from {}", source.describe());
    Ok(std::sync::Arc::new(crate::identity::Tokens::new(source)))
}

/// The token source install saved. `tolerant` (reconcile): a source that cannot be set up in this
/// run (its variables are gone) fails each token request instead of the run, so what can be done
/// without the server still is; a wrong setting still stops the run.
pub(crate) async fn saved_tokens(
    saved: &crate::state::Saved,
    env: &Env,
    os: &Os,
    net: &Net,
    tolerant: bool,
) -> Result<std::sync::Arc<crate::identity::Tokens>, Error> {
    let request = settings::saved_identity(saved)?;
    match tokens(&request, env, os, net).await {
        Err(e) if tolerant && !e.is_input() => {
            tracing::warn!("{}", crate::report::report(&e));
            Ok(std::sync::Arc::new(crate::identity::Tokens::new(
                crate::identity::Source::Unavailable {
                    kind: request.kind,
                    why: e.to_string(),
                },
            )))
        }
        other => Ok(other?),
    }
}

/// Refuses (exit 2, naming `--agent-dir`) an agent dir another account could move or replace:
/// [`crate::fsx::check_agent_dir_location`].
pub(crate) fn check_agent_dir(
    agent_dir: &std::path::Path,
    env: &Env,
    agent_uid: Option<u32>,
) -> Result<(), Error> {
    crate::fsx::check_agent_dir_location(agent_dir, env.uid(), agent_uid).map_err(|e| {
        Error::Input(format!(
            "invalid --agent-dir {}: {}",
            agent_dir.display(),
            e.0
        ))
    })
}

/// One of the agent's own scripts (`config.sh`, `config.sh remove`, `reauth.sh`), set up as all of
/// them must be: from the agent root, as the agent user, the token only in
/// `VSTS_AGENT_INPUT_TOKEN`. As root only when root is the account (`user` is root or unknown), and
/// then with `AGENT_ALLOW_RUNASROOT`, without which config.sh refuses.
pub(crate) fn agent_child(
    env: &Env,
    label: &str,
    program: std::path::PathBuf,
    root: &std::path::Path,
    user: Option<&crate::process::RunAs>,
    token: &crate::secret::Secret,
    timeout: std::time::Duration,
) -> crate::process::Child {
    let run_as = user.and_then(crate::process::RunAs::unless_root);
    // config.sh refuses root without it; Windows has no such check (and no account switch).
    let as_root = run_as.is_none() && cfg!(unix);
    let child = crate::process::Child::new(label, program, env)
        .base_env(crate::env::without_proxy_passwords(env.for_children()))
        .cwd(root)
        .secret_env(crate::agent::config::TOKEN_ENV, token.clone())
        .run_as(run_as)
        .timeout(timeout);
    crate::agent::config::allow_root(child, as_root)
}

/// Runs one of the agent's own scripts (`config.sh`, `config.sh remove`, `reauth.sh`) and turns a
/// failure into exit 6 carrying the agent's own error line, or the last output before a timeout.
pub(crate) async fn agent_script(
    child: crate::process::Child,
    masker: &crate::secret::Masker,
) -> Result<(), Error> {
    use crate::process::{self, ProcessError};
    let label = child.label.clone();
    match process::run_async(child, masker.clone()).await {
        Ok(done) if done.success() => Ok(()),
        Ok(done) => Err(Error::Configure {
            message: format!(
                "{label} exited with code {}: {}",
                done.code,
                done.error_line()
                    .unwrap_or_else(|| "no error output".into())
            ),
        }),
        Err(ProcessError::TimedOut {
            timeout, output, ..
        }) => Err(Error::Configure {
            message: format!(
                "{label} did not finish within {}s and was stopped; last output: {}",
                timeout.as_secs(),
                output.error_line().unwrap_or_else(|| "none".into())
            ),
        }),
        Err(e) => Err(Error::ConfigureRun(e)),
    }
}
