//! The man pages and shell completions, generated from the clap definitions (so they never drift
//! from the flags), for the .deb and the .rpm: `cargo run --example package-assets -- OUTDIR`
//! writes `OUTDIR/man/agent-bootstrap*.1` and `OUTDIR/completions/` (bash, zsh, fish, PowerShell).
//! Not shipped; `scripts/package.sh` runs it.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: package-assets OUTDIR"),
    );
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = agent_bootstrap::cli::Cli::command();
    // agent-bootstrap.1, and agent-bootstrap-install.1 and so on for each subcommand.
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::PowerShell] {
        let path =
            clap_complete::generate_to(shell, &mut cmd.clone(), "agent-bootstrap", &completions)?;
        if shell == Shell::Bash {
            fix_bash_hyphen(&path)?;
        }
    }
    Ok(())
}

/// clap_complete's bash script names a subcommand's state `agent__bootstrap__subcmd__install`
/// where it is set and `agent__subcmd__bootstrap__subcmd__install` where it is matched (a bin name
/// with a hyphen is escaped twice: clap-rs/clap#6421, open in 4.6.12), so no subcommand's flags
/// would ever complete. Spell the matches the way they are set; scripts/check-packaging.sh
/// completes `agent-bootstrap install --iden` to prove it.
fn fix_bash_hyphen(path: &std::path::Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    std::fs::write(
        path,
        text.replace("agent__subcmd__bootstrap", "agent__bootstrap"),
    )
}
