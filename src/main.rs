//! The `agent-bootstrap` binary: parse, set up logging, run, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;

use agent_bootstrap::{cli::Cli, commands, env::Env, error, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::capture();
    logging::init(cli.log_format, &env);
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
    match runtime.block_on(commands::run(cli, env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", error::report(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
