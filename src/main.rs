//! The `agent-bootstrap` binary: parse, set up logging, run, map the error to an exit code.
//!
//! SIGTERM (systemd stopping a slow boot) and SIGINT (Ctrl-C) end the run within seconds: the
//! command is dropped, the agent's scripts are stopped with everything they started, staging
//! directories and partial downloads are removed ([`interrupt`]), and the exit code is 128 + the
//! signal's number. `run` and `watch` handle the signals themselves (they drain an agent first).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use agent_bootstrap::{
    cli::Cli, commands, crash, env::Env, error, interrupt, logging, output::Out, report, scrub,
};

fn main() -> ExitCode {
    crash::install_hook();
    let cli = Cli::parse();
    // `run` shares its account with its jobs: no secret stays in its /proc environ.
    let restarted = match cli.command {
        agent_bootstrap::cli::Command::Run(_) => scrub::restart_without_secrets(),
        _ => Ok(()),
    };
    let env = Env::capture().with_vars(scrub::take_secrets());
    let verbosity = logging::Verbosity {
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    logging::init(cli.log_format, verbosity, &env);
    if let Err(e) = restarted {
        tracing::warn!("{e}; the secret variables stay in this process's environment");
    }
    crash::panic_if_asked(&env);
    agent_bootstrap::fsx::arm_crash_point(&env);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("could not start the async runtime: {e}");
            return ExitCode::from(error::code::INTERNAL);
        }
    };
    let handles_signals = commands::handles_signals(&cli);
    let out = Out::new(cli.output);
    let command = cli.command.name();
    let outcome = runtime.block_on(async {
        if handles_signals {
            return Ok(commands::run(cli, env, &out).await);
        }
        tokio::select! {
            result = commands::run(cli, env, &out) => Ok(result),
            signal = interrupt::wait_for_signal() => Err(signal),
        }
    });
    match outcome {
        Ok(Ok(code)) => {
            out.finish(command, code, None);
            ExitCode::from(code)
        }
        Ok(Err(e)) => {
            tracing::error!("{}", report::report(&e));
            out.finish(command, e.exit_code(), Some(&e));
            ExitCode::from(e.exit_code())
        }
        Err(signal) => {
            // The command is dropped by now; stop its children, let blocking threads see the
            // stop, then delete what they were writing.
            interrupt::request(signal);
            runtime.shutdown_timeout(interrupt::CHILD_GRACE + Duration::from_secs(1));
            let removed = interrupt::sweep();
            let name = match signal {
                2 => "SIGINT",
                15 => "SIGTERM",
                _ => "a signal",
            };
            tracing::error!(
                removed = removed.len(),
                "stopped by {name}: the agent's scripts were stopped and partial files removed; \
                 nothing was left half-installed (run the same command again to finish)"
            );
            let code = error::code::SIGNALLED + signal as u8;
            out.finish(command, code, None);
            ExitCode::from(code)
        }
    }
}
