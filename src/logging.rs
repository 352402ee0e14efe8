//! Logs go to stderr, for humans by default and as JSON lines with `--log-format json`; stdout is
//! reserved for data (the token, the summary). How much: `-q`/`-qq` and `-v`/`-vv`, else
//! `AGENT_BOOTSTRAP_LOG`, a filter: a level (`debug`) or targets with levels
//! (`agent_bootstrap=trace,warn`); an invalid one is ignored.

use tracing_subscriber::filter::{LevelFilter, Targets};

use crate::cli::LogFormat;
use crate::env::Env;

/// How much to log: `-q`/`-qq` and `-v`/`-vv` from the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verbosity {
    pub quiet: u8,
    pub verbose: u8,
}

/// `-q`/`-v` when given (flags win over the environment), else `AGENT_BOOTSTRAP_LOG`, else `info`.
fn filter(verbosity: Verbosity, env: &Env) -> Targets {
    let ours = |ours: LevelFilter, others: LevelFilter| {
        Targets::new()
            .with_target("agent_bootstrap", ours)
            .with_default(others)
    };
    match verbosity {
        Verbosity { quiet: 1, .. } => return Targets::new().with_default(LevelFilter::WARN),
        Verbosity { quiet: 2.., .. } => return Targets::new().with_default(LevelFilter::ERROR),
        Verbosity { verbose: 1, .. } => return ours(LevelFilter::DEBUG, LevelFilter::INFO),
        Verbosity { verbose: 2.., .. } => return ours(LevelFilter::TRACE, LevelFilter::DEBUG),
        _ => {}
    }
    env.var("AGENT_BOOTSTRAP_LOG")
        .and_then(|v| v.trim().parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

pub fn init(format: LogFormat, verbosity: Verbosity, env: &Env) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let color = std::io::stderr().is_terminal() && env.var("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(color)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter(verbosity, env));
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
        let none = Verbosity::default();
        let f = filter(
            none,
            &Env::fake(&[("AGENT_BOOTSTRAP_LOG", "debug")], "h", true),
        );
        assert!(f.would_enable("agent_bootstrap::net", &Level::DEBUG));
        assert!(!f.would_enable("agent_bootstrap::net", &Level::TRACE));
        let f = filter(
            none,
            &Env::fake(
                &[("AGENT_BOOTSTRAP_LOG", "agent_bootstrap=trace,warn")],
                "h",
                true,
            ),
        );
        assert!(f.would_enable("agent_bootstrap::net", &Level::TRACE));
        assert!(!f.would_enable("hyper", &Level::INFO));
        let f = filter(none, &Env::fake(&[], "h", true));
        assert!(f.would_enable("agent_bootstrap", &Level::INFO));
        assert!(!f.would_enable("agent_bootstrap", &Level::DEBUG));
    }

    #[test]
    fn quiet_and_verbose_win_over_the_variable() {
        let env = Env::fake(&[("AGENT_BOOTSTRAP_LOG", "debug")], "h", true);
        let q = |quiet, verbose| filter(Verbosity { quiet, verbose }, &env);
        assert!(!q(1, 0).would_enable("agent_bootstrap", &Level::INFO));
        assert!(q(1, 0).would_enable("agent_bootstrap", &Level::WARN));
        assert!(!q(2, 0).would_enable("agent_bootstrap", &Level::WARN));
        assert!(q(2, 0).would_enable("agent_bootstrap", &Level::ERROR));
        assert!(q(0, 1).would_enable("agent_bootstrap::net", &Level::DEBUG));
        assert!(!q(0, 1).would_enable("hyper", &Level::DEBUG));
        assert!(q(0, 2).would_enable("agent_bootstrap::net", &Level::TRACE));
        assert!(q(0, 2).would_enable("hyper", &Level::DEBUG));
        assert!(!q(0, 2).would_enable("hyper", &Level::TRACE));
    }
}
