//! Logs go to stderr, for humans by default and as JSON lines with `--log-format json`; stdout is
//! reserved for data (the token, the summary). `AGENT_BOOTSTRAP_LOG` takes an `EnvFilter` directive.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::env::Env;

pub fn init(format: LogFormat, env: &Env) {
    let filter = EnvFilter::try_new(env.var("AGENT_BOOTSTRAP_LOG").unwrap_or("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let color = std::io::stderr().is_terminal() && env.var("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
