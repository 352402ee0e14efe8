//! Exit codes, mapped in one place.
//!
//! Scripts branch on these codes (README, "Exit codes"), so every module error is wrapped in
//! [`Error`] and [`Error::exit_code`] is the only place that decides the number.

use crate::{
    agent::AgentError, devops::DevOpsError, identity::IdentityError, package::PackageError,
    process::ProcessError, service::ServiceError, settings::SettingsError, state::StateError,
    user::UserError,
};

pub mod code {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const INPUT: u8 = 2;
    pub const NO_TOKEN: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const PACKAGE: u8 = 5;
    pub const CONFIGURE: u8 = 6;
    pub const SERVICE: u8 = 7;
    /// Stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM), as shells report.
    pub const SIGNALLED: u8 = 128;

    /// What a code means, in the README's words ("Exit codes").
    pub fn meaning(code: u8) -> &'static str {
        match code {
            OK => "success",
            INTERNAL => "internal error",
            INPUT => "invalid input or usage",
            NO_TOKEN => "no token from the identity source",
            REFUSED => "Azure DevOps refused",
            PACKAGE => "agent package download, verification or extraction failed",
            CONFIGURE => "agent configuration failed",
            SERVICE => "service installation or start failed",
            c if c > SIGNALLED => "stopped by a signal",
            _ => "the agent's own exit code",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    DevOps(#[from] DevOpsError),
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("agent configuration failed: {message}")]
    Configure { message: String },
    #[error("agent configuration failed")]
    ConfigureRun(#[source] ProcessError),
    #[error("could not run the agent")]
    AgentRun(#[source] ProcessError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The agent's own dependencies (`crate::deps`): missing, or their installer failed.
    #[error(transparent)]
    Deps(#[from] crate::deps::DepsError),
    /// The CA file's certificates could not be put into (or taken out of) the system trust store.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// A file system an install needs is read-only or `noexec` (`crate::preflight`).
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error("{action} '{path}' failed")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        use code::*;
        match self {
            Self::Preflight(e) if e.is_no_space() => PACKAGE,
            Self::Settings(_) | Self::Input(_) | Self::Preflight(_) => INPUT,
            Self::Identity(e) if e.is_input() => INPUT,
            Self::Identity(_) => NO_TOKEN,
            Self::DevOps(DevOpsError::Token(e)) if e.is_input() => INPUT,
            Self::DevOps(DevOpsError::Token(_)) => NO_TOKEN,
            Self::DevOps(DevOpsError::NoPackage { .. }) => PACKAGE,
            Self::DevOps(e) if e.is_refusal() => REFUSED,
            // The server did not answer usefully (transport, 5xx): still "Azure DevOps refused us"
            // from a script's point of view; nothing was changed.
            Self::DevOps(_) => REFUSED,
            Self::Package(_) => PACKAGE,
            Self::Configure { .. } | Self::ConfigureRun(_) | Self::AgentRun(_) => CONFIGURE,
            Self::Deps(_) => CONFIGURE,
            // The agent could not trust its server: configure would fail (it never runs).
            Self::Trust(_) => CONFIGURE,
            Self::Service(_) => SERVICE,
            Self::User(UserError::Missing { .. } | UserError::Shared { .. }) => INPUT,
            // Settings cut short or edited: the user runs install again (the message says so).
            Self::State(StateError::Parse { .. }) => INPUT,
            Self::User(_) | Self::Agent(_) | Self::State(_) | Self::Lock(_) | Self::Io { .. } => {
                INTERNAL
            }
        }
    }
}
