//! The IMDS retry policy, as a table.
//!
//! Which answers from the managed-identity endpoint are worth another try, and how long to wait,
//! follows the IMDS documentation (`identity.md` §1.3) and what MSAL/azure-identity do (§1.5):
//!
//! | answer                      | class        | wait                                         |
//! |-----------------------------|--------------|----------------------------------------------|
//! | 200                         | success      |                                              |
//! | 400                         | fatal        | identity not assigned / selector wrong: say so |
//! | 404 (IMDS updating), 408    | backoff      | exponential 1 s, 2 s, 4 s … capped at 30 s   |
//! | 410 (IMDS updating)         | gone         | fixed 10 s, for at least 70 s                |
//! | 429 (throttled)             | throttled    | `Retry-After` if given, else backoff         |
//! | 500–599                     | backoff      | exponential, at least 1 s                    |
//! | timeout / connection error  | backoff      | exponential                                  |
//! | any other status            | fatal        |                                              |
//!
//! Every retry stays inside a total budget ([`Policy::budget`]); the caller sleeps on an injected
//! clock, so the exhaustive test below runs instantly.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Not retried: the request itself is wrong (no identity, wrong selector, bad resource).
    Fatal,
    /// Transient: exponential backoff.
    Backoff,
    /// 410: IMDS is being updated and "will be available within 70 seconds".
    Gone,
    /// 429: honour `Retry-After`.
    Throttled,
}

/// The table: HTTP status → class.
pub fn classify_status(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        404 | 408 => Class::Backoff,
        410 => Class::Gone,
        429 => Class::Throttled,
        500..=599 => Class::Backoff,
        _ => Class::Fatal,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Total time spent retrying before giving up.
    pub budget: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Fixed wait between tries while IMDS answers 410.
    pub gone_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(120),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            gone_delay: Duration::from_secs(10),
        }
    }
}

impl Policy {
    /// How long to wait before try number `attempt + 1` (attempt counts from 1), or `None` to give
    /// up. `elapsed` is the time spent since the first try.
    pub fn next_delay(
        &self,
        class: Class,
        attempt: u32,
        retry_after: Option<Duration>,
        elapsed: Duration,
    ) -> Option<Duration> {
        let wanted = match class {
            Class::Success | Class::Fatal => return None,
            Class::Gone => self.gone_delay,
            Class::Throttled => retry_after.unwrap_or_else(|| self.backoff(attempt)),
            Class::Backoff => self.backoff(attempt),
        };
        let remaining = self.budget.checked_sub(elapsed)?;
        if remaining.is_zero() {
            return None;
        }
        // A Retry-After longer than what is left of the budget cannot be honoured: give up now
        // rather than retry early and be throttled again.
        if wanted > remaining {
            return if class == Class::Throttled {
                None
            } else {
                Some(remaining)
            };
        }
        Some(wanted)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.first_delay * factor).min(self.max_delay)
    }
}

/// Parses `Retry-After` given in seconds (IMDS and Azure send seconds, not HTTP dates).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_code_is_classified() {
        for status in 100..=599u16 {
            let expected = match status {
                200..=299 => Class::Success,
                404 | 408 => Class::Backoff,
                410 => Class::Gone,
                429 => Class::Throttled,
                500..=599 => Class::Backoff,
                _ => Class::Fatal,
            };
            assert_eq!(classify_status(status), expected, "status {status}");
        }
        // The statuses the documentation calls out by name.
        assert_eq!(classify_status(400), Class::Fatal);
        assert_eq!(classify_status(401), Class::Fatal);
        assert_eq!(classify_status(403), Class::Fatal);
        assert_eq!(classify_status(503), Class::Backoff);
    }

    #[test]
    fn backoff_is_exponential_and_capped() {
        let p = Policy::default();
        let delays: Vec<u64> = (1..=7)
            .map(|a| {
                p.next_delay(Class::Backoff, a, None, Duration::ZERO)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn gone_retries_for_at_least_seventy_seconds() {
        let p = Policy::default();
        let mut elapsed = Duration::ZERO;
        let mut attempt = 1;
        while let Some(d) = p.next_delay(Class::Gone, attempt, None, elapsed) {
            assert_eq!(d, Duration::from_secs(10).min(p.budget - elapsed));
            elapsed += d;
            attempt += 1;
        }
        assert!(elapsed >= Duration::from_secs(70), "{elapsed:?}");
    }

    #[test]
    fn retry_after_is_honoured_within_budget() {
        let p = Policy::default();
        assert_eq!(
            p.next_delay(
                Class::Throttled,
                1,
                Some(Duration::from_secs(7)),
                Duration::ZERO
            ),
            Some(Duration::from_secs(7))
        );
        // Without the header: backoff.
        assert_eq!(
            p.next_delay(Class::Throttled, 3, None, Duration::ZERO),
            Some(Duration::from_secs(4))
        );
        // A Retry-After beyond the budget: give up instead of hammering.
        assert_eq!(
            p.next_delay(
                Class::Throttled,
                1,
                Some(Duration::from_secs(500)),
                Duration::ZERO
            ),
            None
        );
    }

    #[test]
    fn nothing_is_retried_after_the_budget() {
        let p = Policy::default();
        assert_eq!(p.next_delay(Class::Backoff, 1, None, p.budget), None);
        assert_eq!(
            p.next_delay(Class::Backoff, 9, None, p.budget - Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(p.next_delay(Class::Fatal, 1, None, Duration::ZERO), None);
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
