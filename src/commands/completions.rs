//! `agent-bootstrap completions SHELL`: the shell completion script, for users who install the
//! static binary without the .deb/.rpm (which ship the bash, zsh and fish files).
//!
//! The script comes from the same clap definition the parser uses, so it cannot drift from the
//! flags; the packages' files are generated the same way (`examples/package-assets.rs`).

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Error;

/// Writes the completion script for `shell` to stdout.
pub fn run(shell: clap_complete::Shell) -> Result<(), Error> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "agent-bootstrap", &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script).map_err(|source| Error::Io {
        action: "writing to",
        path: "stdout".into(),
        source,
    })
}
