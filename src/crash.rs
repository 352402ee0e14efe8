//! What a bug looks like to the user: one line and exit 1, never an abort.
//!
//! The release build has `panic = "abort"` (no unwinding tables), so a panic would end the run with
//! SIGABRT, exit 134 and a message aimed at Rust developers, with the agent's scripts still running
//! and partial files on disk. The hook installed here runs first: it stops the children, removes
//! what was being written ([`crate::interrupt::abandon`]), prints one line naming the bug and where
//! to report it, and exits with [`crate::error::code::INTERNAL`].

/// Where a bug is reported.
pub const REPORT_TO: &str = "https://github.com/agent-bootstrap/agent-bootstrap/issues";

/// Installs the hook (once, at the start of `main`).
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::interrupt::abandon();
        eprintln!("{}", line(&message, &place));
        std::process::exit(i32::from(crate::error::code::INTERNAL));
    }));
}

/// The one line a user sees.
fn line(message: &str, place: &str) -> String {
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect();
    format!(
        "agent-bootstrap {}: internal error (a bug): {message}{place}; nothing more was done. \
         Please report it with this line at {REPORT_TO}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Debug builds only: `AGENT_BOOTSTRAP_TEST_PANIC=1` makes the run panic right after parsing, so
/// a test can see what a user would (a release build ignores it).
pub const TEST_PANIC_ENV: &str = "AGENT_BOOTSTRAP_TEST_PANIC";

/// Panics when a debug build is told to by [`TEST_PANIC_ENV`] (the hook's test).
pub fn panic_if_asked(env: &crate::env::Env) {
    if cfg!(debug_assertions) && env.var(TEST_PANIC_ENV) == Some("1") {
        panic!("a panic asked for by {TEST_PANIC_ENV}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_bug_the_place_and_where_to_report_it() {
        let l = line("boom\nsecond line", " at src/x.rs:3");
        assert!(l.contains("internal error (a bug): boom second line at src/x.rs:3"));
        assert!(l.contains(REPORT_TO));
        assert!(!l.contains('\n'));
    }

    #[test]
    fn the_panic_knob_only_works_in_debug_builds() {
        let env = crate::env::Env::fake(&[(TEST_PANIC_ENV, "1")], "h", true);
        let panicked = std::panic::catch_unwind(|| panic_if_asked(&env)).is_err();
        assert_eq!(panicked, cfg!(debug_assertions));
    }
}
