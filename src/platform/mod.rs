//! The operating system's calls, in one place.
//!
//! Everything below the level of "run a program", "read a file", "open a socket" that differs
//! between Unix and Windows lives here, with the same functions on both sides: who we run as and
//! whether that is privileged (root, an elevated administrator or SYSTEM), the host name, a child's
//! whole process tree (a process group on Unix, a Job Object on Windows) so a timeout or a stop
//! kills everything it started, and the signals that stop a run. Planning code never looks at
//! `cfg!(windows)`: it takes an [`crate::os::Os`] value; this module is what actually runs.

use std::path::PathBuf;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// The account this process runs as.
#[derive(Debug, Clone, Default)]
pub struct Account {
    pub name: String,
    /// The Unix uid (Windows: 0 when privileged, else 1: only "is it us" comparisons use it).
    pub id: u32,
    pub home: Option<PathBuf>,
    /// root on Unix; an elevated administrator or SYSTEM on Windows.
    pub privileged: bool,
}

/// Exit-code numbers for the two stop signals (Windows reports its console events as these).
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;
