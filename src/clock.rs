//! Time, injected.
//!
//! Retry loops ask a [`Clock`] for the time and to sleep, so tests drive them with a virtual clock and
//! never really wait. The binary uses the system clock. A debug build (what `cargo test` runs) also
//! honours `AGENT_BOOTSTRAP_TEST_VIRTUAL_TIME=1`, the integration tests' knob (like uv's
//! `UV_TEST_NO_HTTP_RETRY_DELAY`): delays are then logged and counted but not slept. A release build
//! ignores it: a variable in root's environment must never change how the shipped tool waits.
//!
//! [`Budget`] is a time limit for one operation (all retries of a token request, all Azure DevOps
//! calls of a boot), measured on the clock, so budgets nest and add up the same in tests and in
//! production.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The test knob; read only by debug builds.
pub const VIRTUAL_TIME_ENV: &str = "AGENT_BOOTSTRAP_TEST_VIRTUAL_TIME";

#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Virtual {
        elapsed: Arc<Mutex<Duration>>,
        /// Wall-clock seconds when the virtual clock started.
        epoch: u64,
    },
}

fn real_unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Clock {
    pub fn virtual_clock() -> Self {
        Self::Virtual {
            elapsed: Arc::new(Mutex::new(Duration::ZERO)),
            epoch: real_unix_now(),
        }
    }

    /// Picks the clock for the binary: virtual only in a debug build with the test knob set.
    pub fn from_env(env: &crate::env::Env) -> Self {
        if cfg!(debug_assertions) && env.flag(VIRTUAL_TIME_ENV) {
            Self::virtual_clock()
        } else {
            Self::System
        }
    }

    /// A point on this clock's monotonic time line.
    pub fn now(&self) -> Moment {
        match self {
            Self::System => Moment::Real(Instant::now()),
            Self::Virtual { elapsed, .. } => {
                Moment::Virtual(*elapsed.lock().expect("clock poisoned"))
            }
        }
    }

    pub fn elapsed(&self, since: Moment) -> Duration {
        match (self.now(), since) {
            (Moment::Real(now), Moment::Real(then)) => now.saturating_duration_since(then),
            (Moment::Virtual(now), Moment::Virtual(then)) => now.saturating_sub(then),
            _ => Duration::ZERO,
        }
    }

    /// Wall-clock time in Unix seconds (token expiry, `Retry-After` dates); virtual time counts.
    pub fn unix_now(&self) -> u64 {
        match self {
            Self::System => real_unix_now(),
            Self::Virtual { elapsed, epoch } => {
                epoch + elapsed.lock().expect("clock poisoned").as_secs()
            }
        }
    }

    pub async fn sleep(&self, d: Duration) {
        match self {
            Self::System => tokio::time::sleep(d).await,
            Self::Virtual { elapsed, .. } => *elapsed.lock().expect("clock poisoned") += d,
        }
    }

    /// Wall-clock time is only simulated for sleeping; timeouts on real I/O stay real.
    pub fn is_virtual(&self) -> bool {
        matches!(self, Self::Virtual { .. })
    }

    /// A budget of `limit` starting now.
    pub fn budget(&self, limit: Duration) -> Budget {
        Budget {
            start: self.now(),
            limit,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Moment {
    Real(Instant),
    Virtual(Duration),
}

/// A time limit for one operation, started at a moment on a [`Clock`].
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    start: Moment,
    limit: Duration,
}

impl Budget {
    pub fn limit(&self) -> Duration {
        self.limit
    }

    pub fn spent(&self, clock: &Clock) -> Duration {
        clock.elapsed(self.start)
    }

    pub fn remaining(&self, clock: &Clock) -> Duration {
        self.limit.saturating_sub(self.spent(clock))
    }

    pub fn is_spent(&self, clock: &Clock) -> bool {
        self.remaining(clock).is_zero()
    }

    /// A budget of at most `limit` from now that also ends no later than this one: a step inside
    /// an operation never outlives it.
    pub fn sub(&self, clock: &Clock, limit: Duration) -> Budget {
        clock.budget(limit.min(self.remaining(clock)))
    }

    /// The same budget restarted now (a download that made progress gets its full stall budget).
    pub fn restart(&mut self, clock: &Clock) {
        self.start = clock.now();
    }
}

/// An RFC 3339 date as Azure DevOps writes them (`2026-11-30T10:00:00.123Z`, `…+00:00`,
/// fractions of any length) in Unix seconds; `None` for anything else.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = text.trim();
    let (date, rest) = t.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    // The zone: Z, or ±HH:MM.
    let (time, offset) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (t, z) = rest.split_at(at);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = z[1..].split_once(':')?;
        (
            t,
            sign * (hh.parse::<i64>().ok()? * 3600 + mm.parse::<i64>().ok()? * 60),
        )
    };
    let time = time.split('.').next()?;
    let mut hms = time.splitn(3, ':');
    let (hh, mi, ss): (i64, i64, i64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mi > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mi * 60 + ss - offset).ok()
}

#[cfg(test)]
mod tests {

    #[test]
    fn rfc3339_dates_as_azure_devops_writes_them() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-30T10:00:00.123Z"),
            Some(1_796_032_800)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.1234567Z"),
            Some(1_709_251_199)
        );
        assert_eq!(
            parse_rfc3339("2026-11-30T12:00:00+02:00"),
            Some(1_796_032_800)
        );
        assert_eq!(
            parse_rfc3339("2026-11-30T05:00:00-05:00"),
            Some(1_796_032_800)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }
    use super::*;

    #[tokio::test]
    async fn virtual_clock_advances_without_sleeping() {
        let clock = Clock::virtual_clock();
        let start = clock.now();
        let wall = clock.unix_now();
        let real = Instant::now();
        clock.sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.elapsed(start), Duration::from_secs(3600));
        assert_eq!(clock.unix_now(), wall + 3600);
        assert!(real.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn the_virtual_time_knob_only_works_in_debug_builds() {
        let env = crate::env::Env::fake(&[(VIRTUAL_TIME_ENV, "1")], "h", true);
        assert_eq!(Clock::from_env(&env).is_virtual(), cfg!(debug_assertions));
        let env = crate::env::Env::fake(&[], "h", true);
        assert!(!Clock::from_env(&env).is_virtual());
    }

    #[tokio::test]
    async fn budgets_nest_inside_each_other() {
        let clock = Clock::virtual_clock();
        let outer = clock.budget(Duration::from_secs(100));
        clock.sleep(Duration::from_secs(70)).await;
        let inner = outer.sub(&clock, Duration::from_secs(60));
        assert_eq!(inner.limit(), Duration::from_secs(30));
        clock.sleep(Duration::from_secs(30)).await;
        assert!(inner.is_spent(&clock) && outer.is_spent(&clock));
    }
}
