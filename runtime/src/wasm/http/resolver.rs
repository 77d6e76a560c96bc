//! Host names of a driver's outbound requests, resolved with a short cache.
//!
//! Every request's host is resolved before the policy check (private addresses are
//! refused after resolution, [`super::hooks`]). Resolving means `getaddrinfo` on tokio's
//! blocking pool, and a resolver round trip where nothing caches in front of it: about
//! 50 µs per request even for a name in `/etc/hosts` (BENCHMARKS.md §3), paid by every
//! transaction of a webhook named by a DNS name. So answers are kept for [`TTL`]
//! (`getaddrinfo` gives no TTL; kept-alive connections already go on using an address
//! that long), per driver, for at most [`MAX_NAMES`] names. Failures and empty answers
//! are not kept. IP literals need no lookup and are not kept. The policy check runs on
//! every request, on a cached answer as on a fresh one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long an answer is kept.
pub const TTL: Duration = Duration::from_secs(30);

/// Names kept per driver at most (its `allow_hosts` patterns may match many).
pub const MAX_NAMES: usize = 256;

/// A kept answer: when it was looked up, and the addresses.
struct Answer {
    at: Instant,
    addrs: Vec<SocketAddr>,
}

/// The resolver of one driver's outbound requests.
pub struct Resolver {
    ttl: Duration,
    /// By (lower-case name, port).
    answers: Mutex<HashMap<(String, u16), Answer>>,
    /// Lookups made (not answered from the cache).
    lookups: AtomicU64,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::with_ttl(TTL)
    }
}

impl Resolver {
    /// A resolver that keeps answers for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        Resolver {
            ttl,
            answers: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Lookups made so far (for tests).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The addresses of `host` (a name or an IP literal) at `port`.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host.to_ascii_lowercase(), port);
        if let Some(a) = self.answers.lock().get(&key) {
            if a.at.elapsed() < self.ttl {
                return Ok(a.addrs.clone());
            }
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        if !addrs.is_empty() {
            let mut answers = self.answers.lock();
            if answers.len() >= MAX_NAMES {
                let ttl = self.ttl;
                answers.retain(|_, a| a.at.elapsed() < ttl);
                if answers.len() >= MAX_NAMES {
                    answers.clear();
                }
            }
            answers.insert(
                key,
                Answer {
                    at: Instant::now(),
                    addrs: addrs.clone(),
                },
            );
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_kept_for_the_ttl_and_literals_need_no_lookup() {
        let r = Resolver::default();
        let first = r.resolve("localhost", 80).await.unwrap();
        assert!(first.iter().all(|a| a.ip().is_loopback()), "{first:?}");
        assert_eq!(r.resolve("LocalHost", 80).await.unwrap(), first);
        assert_eq!(r.lookups(), 1, "the second answer came from the cache");
        r.resolve("localhost", 81).await.unwrap();
        assert_eq!(r.lookups(), 2, "another port is another entry");
        assert_eq!(
            r.resolve("127.0.0.1", 80).await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 80))]
        );
        assert_eq!(r.lookups(), 2, "an IP literal needs no lookup");
        // Expired at once: every request looks up again.
        let r = Resolver::with_ttl(Duration::ZERO);
        r.resolve("localhost", 80).await.unwrap();
        r.resolve("localhost", 80).await.unwrap();
        assert_eq!(r.lookups(), 2);
    }

    #[tokio::test]
    async fn failures_are_not_kept_and_the_cache_is_bounded() {
        let r = Resolver::default();
        // An empty name fails without asking a DNS server.
        assert!(r.resolve("", 80).await.is_err());
        assert!(r.resolve("", 80).await.is_err());
        assert_eq!(r.lookups(), 2, "a failure is looked up again");
        for port in 0..(MAX_NAMES as u16 + 10) {
            r.resolve("localhost", port).await.unwrap();
        }
        assert!(r.answers.lock().len() <= MAX_NAMES);
    }
}
