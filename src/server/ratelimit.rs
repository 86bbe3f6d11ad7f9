//! Limits on failed authentications (GCRA, the `governor` crate), per (client id, peer address)
//! and per peer address, for `/oauth/token` and the console sign-in.
//!
//! Failures are counted; successes are not. Once a key has used its allowance, requests
//! naming it are refused with `429 rate_limited` **before** any secret is checked, until the
//! GCRA lets it through again, so a guesser learns nothing while limited.
//!
//! Memory stays bounded under a flood of random client ids: a flood from one peer trips that
//! peer's limit first, and the per-key state is pruned, and if need be dropped, past a cap.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The keys an authentication attempt counts against: the client id named *from this peer*,
/// and the peer. Never the client id alone: client ids are not secret (they appear in logs,
/// configuration and approvals), and a limit keyed on the id alone would let anyone lock any
/// client out, operators included, by failing in its name from an address of their own.
pub fn auth_keys(client_id: &str, peer: Option<std::net::IpAddr>) -> [String; 2] {
    let id: String = client_id.chars().take(64).collect();
    let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    [format!("client:{id}@{peer}"), format!("peer:{peer}")]
}

/// Most keys tracked before pruning.
const MAX_KEYS: usize = 50_000;

/// Counts authentication failures per key and refuses keys that failed too often.
#[derive(Debug)]
pub struct FailureLimiter {
    quota: Quota,
    limiter: Mutex<DefaultKeyedRateLimiter<String>>,
    blocked: Mutex<HashMap<String, Instant>>,
    refusals: AtomicU64,
}

impl FailureLimiter {
    /// Allows `per_minute` failures per key per minute (as a burst, refilled evenly).
    pub fn new(per_minute: u32) -> FailureLimiter {
        let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(n);
        FailureLimiter {
            quota,
            limiter: Mutex::new(RateLimiter::keyed(quota)),
            blocked: Mutex::new(HashMap::new()),
            refusals: AtomicU64::new(0),
        }
    }

    /// If any of `keys` is limited now, how long until it is not.
    pub fn blocked(&self, keys: &[&str]) -> Option<Duration> {
        self.blocked_by(|| keys.iter().map(|k| (*k).to_owned()).collect())
    }

    /// As [`FailureLimiter::blocked`], with the keys made only when some key is limited at
    /// all (so the common case, nothing limited, costs one lock and no formatting).
    /// A key whose limit has run out is forgotten here, so the map empties again.
    pub fn blocked_by(&self, keys: impl FnOnce() -> Vec<String>) -> Option<Duration> {
        let mut blocked = match self.blocked.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if blocked.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut wait = None;
        for k in keys() {
            match blocked.get(k.as_str()) {
                Some(until) if *until > now => wait = wait.max(Some(*until - now)),
                Some(_) => {
                    blocked.remove(k.as_str());
                }
                None => {}
            }
        }
        if wait.is_some() {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// How many checks found a key limited (each a refused authentication).
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Records one failure for each of `keys`; a key over its allowance becomes limited.
    pub fn record_failure(&self, keys: &[&str]) {
        let clock = DefaultClock::default();
        let mut newly = Vec::new();
        {
            let mut limiter = match self.limiter.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            for k in keys {
                if let Err(not_until) = limiter.check_key(&(*k).to_owned()) {
                    newly.push(((*k).to_owned(), not_until.wait_time_from(clock.now())));
                }
            }
            if limiter.len() > MAX_KEYS {
                limiter.retain_recent();
                if limiter.len() > MAX_KEYS {
                    // A flood from many peers: forget the evidence rather than grow.
                    *limiter = RateLimiter::keyed(self.quota);
                }
                limiter.shrink_to_fit();
            }
        }
        let mut blocked = match self.blocked.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        for (k, wait) in newly {
            blocked.insert(k, now + wait.max(Duration::from_secs(1)));
        }
        if blocked.len() > MAX_KEYS {
            blocked.retain(|_, until| *until > now);
        }
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        match self.limiter.lock() {
            Ok(l) => l.len(),
            Err(p) => p.into_inner().len(),
        }
    }
}

/// Limits successful requests per authenticated client (`token_requests_per_minute`). Keyed
/// only by ids that authenticated, so nobody can spend another client's allowance, and the
/// number of keys is bounded by the registered clients (pruned past a cap all the same).
#[derive(Debug)]
pub struct RequestLimiter {
    limiter: Mutex<DefaultKeyedRateLimiter<String>>,
}

impl RequestLimiter {
    /// Allows `per_minute` requests per client per minute (as a burst, refilled evenly); `None`
    /// for 0, which means unlimited.
    pub fn new(per_minute: u32) -> Option<RequestLimiter> {
        let n = NonZeroU32::new(per_minute)?;
        Some(RequestLimiter { limiter: Mutex::new(RateLimiter::keyed(Quota::per_minute(n))) })
    }

    /// Takes one request of `client_id`'s allowance, or says how long until one is free.
    pub fn check(&self, client_id: &str) -> Result<(), Duration> {
        let clock = DefaultClock::default();
        let limiter = match self.limiter.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let result =
            limiter.check_key(&client_id.to_owned()).map_err(|not_until| not_until.wait_time_from(clock.now()));
        if limiter.len() > MAX_KEYS {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_after_the_allowance_and_only_the_failing_key() {
        let l = FailureLimiter::new(3);
        for _ in 0..3 {
            assert!(l.blocked(&["client:a"]).is_none());
            l.record_failure(&["client:a"]);
        }
        l.record_failure(&["client:a"]);
        let wait = l.blocked(&["client:a", "client:b"]).unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(60));
        assert!(l.blocked(&["client:b"]).is_none());
    }

    #[test]
    fn a_limit_that_ran_out_is_forgotten_when_next_checked() {
        // 600 a minute: one more failure than the burst waits a tenth of a second, and a
        // limit lasts at least a second.
        let l = FailureLimiter::new(600);
        for _ in 0..601 {
            l.record_failure(&["client:a"]);
        }
        assert!(l.blocked(&["client:a"]).is_some());
        assert!(l.blocked(&["client:b"]).is_none());
        assert_eq!(l.blocked.lock().unwrap().len(), 1);
        std::thread::sleep(Duration::from_millis(1_100));
        assert!(l.blocked(&["client:a"]).is_none());
        assert!(l.blocked.lock().unwrap().is_empty(), "the limit that ran out is forgotten");
    }

    #[test]
    fn successful_requests_are_limited_per_client_only_when_configured() {
        assert!(RequestLimiter::new(0).is_none());
        let l = RequestLimiter::new(2).unwrap();
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        let wait = l.check("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(30), "{wait:?}");
        assert!(l.check("b").is_ok(), "another client's allowance is its own");
    }

    #[test]
    fn the_client_id_counts_only_with_the_peer() {
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let l = FailureLimiter::new(3);
        for _ in 0..5 {
            l.record_failure(&auth_keys("tc_victim", Some(a)).each_ref().map(String::as_str));
        }
        assert!(l.blocked(&auth_keys("tc_victim", Some(a)).each_ref().map(String::as_str)).is_some());
        assert!(l.blocked(&auth_keys("tc_victim", Some(b)).each_ref().map(String::as_str)).is_none());
    }

    #[test]
    fn memory_stays_bounded_under_random_keys() {
        let l = FailureLimiter::new(5);
        for i in 0..(MAX_KEYS + 5_000) {
            l.record_failure(&[&format!("client:{i}")]);
        }
        assert!(l.tracked() <= MAX_KEYS + 1);
    }
}
