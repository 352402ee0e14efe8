//! The retry table: which answers are worth another try, and how long to wait.
//!
//! One table for every endpoint agent-bootstrap talks to, one column per service. IMDS rows follow
//! its documentation (`identity.md` §1.3) and MSAL/azure-identity (§1.5); Azure DevOps and the
//! download host are retried on throttling and server errors only.
//!
//! "IMDS" is also the Azure Arc agent's endpoint; "others" are the App Service / Container Apps
//! identity endpoint, Entra ID's token endpoint and the download host.
//!
//! | answer                     | IMDS, Arc | Azure DevOps | others    | wait                                     |
//! |----------------------------|-----------|--------------|-----------|------------------------------------------|
//! | 2xx                        | success   | success (203: fatal, a sign-in page) | success |                  |
//! | 400                        | fatal     | fatal        | fatal     | IMDS: no identity / wrong selector: say so |
//! | 401, 403, 404 (ADO)        | fatal     | fatal        | fatal     | (Arc: 401 is its challenge, see `identity::arc`) |
//! | 404 (IMDS updating), 408   | backoff   | backoff (408) | backoff (408) | exponential 1 s, 2 s, 4 s … 30 s    |
//! | 410 (IMDS updating)        | gone      | fatal        | fatal     | 10 s, for at least 70 s                  |
//! | 429                        | throttled | throttled    | throttled | `Retry-After`, else backoff              |
//! | 500–599                    | backoff   | backoff      | backoff   | exponential; at least `Retry-After`      |
//! | timeout, refused, reset    | backoff   | backoff      | backoff   | exponential                              |
//! | any other status           | fatal     | fatal        | fatal     |                                          |
//!
//! Every wait gets jitter (a fleet of scale-set instances booting together must not retry in
//! lockstep): backoff waits are drawn from `[d/2, d]`, fixed waits get up to 10 % added, and a
//! `Retry-After` is never shortened, only lengthened by up to 10 % (at most 5 s). A wait that does
//! not fit in what is left of the operation's budget ends the retries: a `Retry-After` beyond it
//! means give up now rather than be throttled again; any other wait is cut to the budget.

use std::time::Duration;

/// Who answered: the columns of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// IMDS, and the Azure Arc agent's endpoint on the machine (the same rules, as Azure SDKs do).
    Imds,
    /// The App Service / Container Apps identity endpoint on the machine.
    LocalIdentity,
    /// Microsoft Entra ID's token endpoint (workload identity federation).
    Entra,
    /// The Azure DevOps REST API.
    DevOps,
    /// The agent package's download host.
    Download,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Not retried: the request itself is wrong, or the server said no.
    Fatal,
    /// Transient: exponential backoff.
    Backoff,
    /// IMDS 410: being updated, "available within 70 seconds".
    Gone,
    /// 429: honour `Retry-After`.
    Throttled,
}

/// The table: (service, HTTP status) → class.
pub fn classify(service: Service, status: u16) -> Class {
    match (service, status) {
        (Service::DevOps, 203) => Class::Fatal,
        (_, 200..=299) => Class::Success,
        (Service::Imds, 404) => Class::Backoff,
        (Service::Imds, 410) => Class::Gone,
        (_, 408) => Class::Backoff,
        (_, 429) => Class::Throttled,
        (_, 500..=599) => Class::Backoff,
        _ => Class::Fatal,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Fixed wait between tries while IMDS answers 410.
    pub gone_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            gone_delay: Duration::from_secs(10),
        }
    }
}

/// Jitter source: a number in `[0, 1)`.
pub trait Jitter {
    fn unit(&mut self) -> f64;
}

/// No jitter (tests of the table itself).
pub struct NoJitter;

impl Jitter for NoJitter {
    fn unit(&mut self) -> f64 {
        0.0
    }
}

impl Jitter for fastrand::Rng {
    fn unit(&mut self) -> f64 {
        self.f64()
    }
}

impl Policy {
    /// How long to wait before try number `attempt + 1` (`attempt` counts from 1), or `None` to give
    /// up. `spent` is the part of the budget `limit` already used.
    pub fn next_delay(
        &self,
        class: Class,
        attempt: u32,
        retry_after: Option<Duration>,
        spent: Duration,
        limit: Duration,
        jitter: &mut dyn Jitter,
    ) -> Option<Duration> {
        let base = match class {
            Class::Success | Class::Fatal => return None,
            Class::Gone => Wait::Fixed(self.gone_delay),
            Class::Throttled | Class::Backoff => Wait::Backoff(self.backoff(attempt)),
        };
        let remaining = limit.checked_sub(spent)?;
        if remaining.is_zero() {
            return None;
        }
        let wanted = match (retry_after, base) {
            // The server said how long: at least that, never less.
            (Some(ra), Wait::Backoff(b)) | (Some(ra), Wait::Fixed(b)) if ra >= b => {
                let extra = (ra.mul_f64(0.1)).min(Duration::from_secs(5));
                if ra > remaining {
                    // Cannot be honoured within the budget: give up rather than retry early.
                    return None;
                }
                ra + extra.mul_f64(jitter.unit())
            }
            (_, Wait::Backoff(b)) => b.mul_f64(0.5 + 0.5 * jitter.unit()),
            (_, Wait::Fixed(f)) => f + f.mul_f64(0.1 * jitter.unit()),
        };
        Some(wanted.min(remaining))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.first_delay * factor).min(self.max_delay)
    }
}

#[derive(Clone, Copy)]
enum Wait {
    Backoff(Duration),
    Fixed(Duration),
}

/// `Retry-After` in seconds or as an HTTP date (relative to `now`, Unix seconds).
pub fn parse_retry_after(value: &str, now: u64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    let at = when.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(120);

    fn delay(p: &Policy, class: Class, attempt: u32, ra: Option<u64>, spent: u64) -> Option<u64> {
        p.next_delay(
            class,
            attempt,
            ra.map(Duration::from_secs),
            Duration::from_secs(spent),
            LIMIT,
            &mut NoJitter,
        )
        .map(|d| d.as_secs())
    }

    #[test]
    fn every_status_code_is_classified_per_service() {
        for status in 100..=599u16 {
            let imds = match status {
                200..=299 => Class::Success,
                404 | 408 => Class::Backoff,
                410 => Class::Gone,
                429 => Class::Throttled,
                500..=599 => Class::Backoff,
                _ => Class::Fatal,
            };
            assert_eq!(classify(Service::Imds, status), imds, "IMDS {status}");
            let ado = match status {
                203 => Class::Fatal,
                200..=299 => Class::Success,
                408 => Class::Backoff,
                429 => Class::Throttled,
                500..=599 => Class::Backoff,
                _ => Class::Fatal,
            };
            assert_eq!(classify(Service::DevOps, status), ado, "ADO {status}");
            let dl = match status {
                200..=299 => Class::Success,
                408 => Class::Backoff,
                429 => Class::Throttled,
                500..=599 => Class::Backoff,
                _ => Class::Fatal,
            };
            assert_eq!(classify(Service::Download, status), dl, "download {status}");
            assert_eq!(
                classify(Service::LocalIdentity, status),
                dl,
                "App Service {status}"
            );
            assert_eq!(classify(Service::Entra, status), dl, "Entra {status}");
        }
        assert_eq!(classify(Service::Imds, 400), Class::Fatal);
        assert_eq!(classify(Service::DevOps, 401), Class::Fatal);
        assert_eq!(classify(Service::DevOps, 404), Class::Fatal);
    }

    #[test]
    fn backoff_is_exponential_and_capped() {
        let p = Policy::default();
        let delays: Vec<u64> = (1..=7)
            .map(|a| delay(&p, Class::Backoff, a, None, 0).unwrap())
            .collect();
        // Without jitter the wait is the lower end, half the step: [d/2, d].
        assert_eq!(delays, vec![0, 1, 2, 4, 8, 15, 15]);
    }

    #[test]
    fn gone_retries_for_at_least_seventy_seconds() {
        let p = Policy::default();
        let mut spent = 0;
        let mut attempt = 1;
        while let Some(d) = delay(&p, Class::Gone, attempt, None, spent) {
            assert_eq!(d, 10.min(120 - spent));
            spent += d;
            attempt += 1;
        }
        assert!(spent >= 70, "{spent}");
    }

    #[test]
    fn retry_after_is_honoured_and_never_shortened() {
        let p = Policy::default();
        assert_eq!(delay(&p, Class::Throttled, 1, Some(7), 0), Some(7));
        // 5xx with Retry-After waits at least that long too.
        assert_eq!(delay(&p, Class::Backoff, 1, Some(20), 0), Some(20));
        // Without the header: backoff.
        assert_eq!(delay(&p, Class::Throttled, 3, None, 0), Some(2));
        // A Retry-After beyond the budget: give up instead of hammering.
        assert_eq!(delay(&p, Class::Throttled, 1, Some(500), 0), None);
    }

    #[test]
    fn jitter_spreads_waits_within_bounds() {
        let p = Policy::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d = p
                .next_delay(Class::Backoff, 4, None, Duration::ZERO, LIMIT, &mut rng)
                .unwrap();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
            seen.insert(d.as_millis());
            let t = p
                .next_delay(
                    Class::Throttled,
                    1,
                    Some(Duration::from_secs(30)),
                    Duration::ZERO,
                    LIMIT,
                    &mut rng,
                )
                .unwrap();
            assert!(
                t >= Duration::from_secs(30) && t <= Duration::from_secs(33),
                "{t:?}"
            );
        }
        assert!(seen.len() > 100, "waits are spread: {}", seen.len());
    }

    #[test]
    fn nothing_is_retried_after_the_budget() {
        let p = Policy::default();
        assert_eq!(delay(&p, Class::Backoff, 1, None, 120), None);
        assert_eq!(delay(&p, Class::Backoff, 9, None, 117), Some(3));
        assert_eq!(delay(&p, Class::Fatal, 1, None, 0), None);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 5 ", 0), Some(Duration::from_secs(5)));
        // Wed, 21 Oct 2015 07:28:00 GMT = 1445412480
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1_445_412_470),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1_500_000_000),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
