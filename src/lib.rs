//! agent-bootstrap: a bare Azure VM, scale-set instance or container → a registered, running
//! self-hosted Azure Pipelines agent, using the machine's own identity and no stored secret.
//!
//! The flow is parse ([`cli`]) → resolve ([`settings`]) → act ([`commands`]). Each concern has its
//! module: [`identity`] (tokens from every identity source), [`devops`] (Azure DevOps REST), [`net`] (the one network
//! policy: transport, retry table, budgets), [`package`] (verified streaming download and
//! extraction), [`agent`] (the agent's files and scripts), [`fsx`] (file operations next to files
//! the agent user controls), [`user`], [`service`], [`state`] (what later runs need), [`process`]
//! (every child process), [`interrupt`] (SIGTERM/SIGINT), [`platform`] (the OS calls). The simulated Azure the tests, the demo and
//! the benchmark run against is a crate of its own (`sim/`, `azure-sim`).

pub mod acl;
pub mod agent;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod crash;
pub mod deps;
pub mod devops;
pub mod env;
pub mod error;
pub mod events;
pub mod fsx;
pub mod host;
pub mod identity;
pub mod interrupt;
pub mod lock;
pub mod logging;
pub mod net;
pub mod os;
pub mod package;
pub mod platform;
pub mod process;
pub mod progress;
pub mod report;
pub mod scrub;
pub mod secret;
pub mod service;
pub mod settings;
pub mod state;
pub mod trust;
pub mod user;
