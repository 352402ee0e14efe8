//! agent-bootstrap: a bare Azure VM, scale-set instance or container → a registered, running
//! self-hosted Azure Pipelines agent, using the machine's own identity and no stored secret.
//!
//! The flow is parse ([`cli`]) → resolve ([`settings`]) → act ([`commands`]); [`error`] maps every
//! module's error to the documented exit code, [`report`] shows it. Each concern has its module:
//!
//! - the machine: [`env`] (the environment, captured once and passed down), [`clock`], [`host`]
//!   (distribution, libc, architecture, SELinux, read from the system itself), [`os`] (the
//!   platform as a value), [`platform`] (the OS calls; the only unsafe code), [`deps`] (the agent's
//!   own dependencies), [`preflight`] (read-only and noexec file systems, found before an install),
//!   [`user`] (the agent account), [`acl`] (Windows directory permissions);
//! - the network: [`net`] (the one policy: proxy, TLS, retry table, budgets), [`identity`] (tokens
//!   from every identity source), [`devops`] (Azure DevOps REST), [`events`] (IMDS Scheduled
//!   Events), [`trust`] (private CAs in the system trust store);
//! - the agent: [`package`] (verified streaming download and extraction), [`agent`] (the agent's
//!   files and scripts), [`fsx`] (file operations next to files the agent user controls),
//!   [`service`] (its service and our boot units), [`state`] (what later runs need), [`lock`];
//! - running things: [`process`] (every child process), [`interrupt`] (SIGTERM/SIGINT), [`scrub`]
//!   (`run` without secrets in its environment), [`secret`] (masked values), [`crash`] (test
//!   knobs for dying at a chosen moment), [`logging`], [`progress`], [`output`] (the result on
//!   stdout, as text or one JSON object).
//!
//! The simulated Azure the tests, the demo and the benchmark run against is a crate of its own
//! (`sim/`, `azure-sim`).
//!
//! No function of the library runs past clippy's 100 lines (`too_many_lines`, denied in CI through
//! `-D warnings`): a command reads as its steps, each a named function.

#![warn(clippy::too_many_lines)]

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
pub mod output;
pub mod package;
pub mod platform;
pub mod preflight;
pub mod process;
pub mod progress;
pub mod report;
pub mod scope;
pub mod scrub;
pub mod secret;
pub mod service;
pub mod settings;
pub mod state;
pub mod trust;
pub mod user;
