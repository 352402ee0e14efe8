//! Time, injected.
//!
//! Retry loops ask a [`Clock`] for the time and to sleep, so tests drive them with a virtual clock and
//! never really wait. The binary uses the system clock, or a virtual one when
//! `AGENT_BOOTSTRAP_TEST_VIRTUAL_TIME=1` (the integration tests' knob, like uv's
//! `UV_TEST_NO_HTTP_RETRY_DELAY`): delays are then logged and accounted but not slept.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Virtual(Arc<Mutex<Duration>>),
}

impl Clock {
    pub fn virtual_clock() -> Self {
        Self::Virtual(Arc::new(Mutex::new(Duration::ZERO)))
    }

    /// Picks the clock for the binary.
    pub fn from_env(env: &crate::env::Env) -> Self {
        if env.flag("AGENT_BOOTSTRAP_TEST_VIRTUAL_TIME") {
            Self::virtual_clock()
        } else {
            Self::System
        }
    }

    /// Monotonic time elapsed since `start` (a value from [`Clock::now`]).
    pub fn now(&self) -> Moment {
        match self {
            Self::System => Moment::Real(Instant::now()),
            Self::Virtual(t) => Moment::Virtual(*t.lock().expect("clock poisoned")),
        }
    }

    pub fn elapsed(&self, since: Moment) -> Duration {
        match (self.now(), since) {
            (Moment::Real(now), Moment::Real(then)) => now.saturating_duration_since(then),
            (Moment::Virtual(now), Moment::Virtual(then)) => now.saturating_sub(then),
            _ => Duration::ZERO,
        }
    }

    pub async fn sleep(&self, d: Duration) {
        match self {
            Self::System => tokio::time::sleep(d).await,
            Self::Virtual(t) => *t.lock().expect("clock poisoned") += d,
        }
    }

    /// Wall-clock time is only simulated for sleeping; timeouts on real I/O stay real.
    pub fn is_virtual(&self) -> bool {
        matches!(self, Self::Virtual(_))
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Moment {
    Real(Instant),
    Virtual(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn virtual_clock_advances_without_sleeping() {
        let clock = Clock::virtual_clock();
        let start = clock.now();
        let real = Instant::now();
        clock.sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.elapsed(start), Duration::from_secs(3600));
        assert!(real.elapsed() < Duration::from_secs(1));
    }
}
