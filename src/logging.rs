//! Logs go to stderr, for humans by default and as JSON lines with `--log-format json`; stdout is
//! reserved for data (the token, the summary). `AGENT_BOOTSTRAP_LOG` takes a filter: a level
//! (`debug`) or targets with levels (`agent_bootstrap=trace,warn`); an invalid one is ignored.

use tracing_subscriber::filter::{LevelFilter, Targets};

use crate::cli::LogFormat;
use crate::env::Env;

/// `AGENT_BOOTSTRAP_LOG`, else `info`.
fn filter(env: &Env) -> Targets {
    env.var("AGENT_BOOTSTRAP_LOG")
        .and_then(|v| v.trim().parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

pub fn init(format: LogFormat, env: &Env) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let color = std::io::stderr().is_terminal() && env.var("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(color)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter(env));
    match format {
        LogFormat::Text => registry.with(fmt.with_target(false).compact()).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_filter_takes_a_level_or_targets() {
        let f = filter(&Env::fake(&[("AGENT_BOOTSTRAP_LOG", "debug")], "h", true));
        assert!(f.would_enable("agent_bootstrap::net", &Level::DEBUG));
        assert!(!f.would_enable("agent_bootstrap::net", &Level::TRACE));
        let f = filter(&Env::fake(
            &[("AGENT_BOOTSTRAP_LOG", "agent_bootstrap=trace,warn")],
            "h",
            true,
        ));
        assert!(f.would_enable("agent_bootstrap::net", &Level::TRACE));
        assert!(!f.would_enable("hyper", &Level::INFO));
        let f = filter(&Env::fake(&[], "h", true));
        assert!(f.would_enable("agent_bootstrap", &Level::INFO));
        assert!(!f.would_enable("agent_bootstrap", &Level::DEBUG));
    }
}
