//! How an error is shown: its message and its causes, in a block or on one line.
//!
//! A leaf module (it imports nothing of ours), so the modules whose errors it shows (`net`,
//! `package`, `trust`, the commands) and `error`, which wraps them all, depend on it without
//! depending on each other.

/// The message and its causes, outermost first, leaving out a cause the text above already quotes.
fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
        source = s.source();
    }
    parts
}

/// The message and its causes, one per line, as shown to the user.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    chain(e).join("\n  caused by: ")
}

/// The message and its causes on one line, for a detail inside another message (a transport
/// failure: reqwest's own message alone says little, the cause says "connection refused").
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    chain(e).join(": ")
}
