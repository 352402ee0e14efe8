//! Download progress: a bar when stderr is a terminal, a few plain log lines otherwise.
//!
//! The package module only calls `start`/`advance`/`finish`; whether anything is drawn is decided
//! here, once, so logs collected by cloud-init or the custom-script extension stay readable.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    state: Mutex<State>,
    quiet: bool,
}

#[derive(Default)]
struct State {
    total: Option<u64>,
    done: u64,
    next_log_pct: u64,
}

impl Progress {
    /// A bar if stderr is a terminal (and logs are for humans), log lines otherwise.
    pub fn for_stderr(human_logs: bool) -> Self {
        let bar = (human_logs && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} downloading agent [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            state: Mutex::new(State::default()),
            quiet: false,
        }
    }

    /// No output at all (unit tests).
    pub fn hidden() -> Self {
        Self {
            bar: None,
            state: Mutex::new(State::default()),
            quiet: true,
        }
    }

    pub fn start(&self, total: Option<u64>) {
        let mut s = self.state.lock().expect("progress poisoned");
        s.total = total;
        s.done = 0;
        s.next_log_pct = 25;
        if let Some(bar) = &self.bar {
            bar.set_length(total.unwrap_or(0));
            bar.set_position(0);
        }
    }

    pub fn advance(&self, n: u64) {
        let mut s = self.state.lock().expect("progress poisoned");
        s.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if self.quiet {
            return;
        }
        if let Some(total) = s.total.filter(|t| *t > 0) {
            let pct = s.done * 100 / total;
            if pct >= s.next_log_pct && s.next_log_pct <= 100 {
                tracing::info!(
                    "downloaded {pct}% ({} of {} MB)",
                    s.done / 1_000_000,
                    total / 1_000_000
                );
                s.next_log_pct = (pct / 25 + 1) * 25;
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
