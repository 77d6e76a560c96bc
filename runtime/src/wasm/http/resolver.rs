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
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long an answer is kept.
pub const TTL: Duration = Duration::from_secs(30);

/// Names kept per driver at most (its `allow_hosts` patterns may match many).
pub const MAX_NAMES: usize = 256;

/// Lookups one driver may have running at once. A lookup is a blocking `getaddrinfo`
/// that goes on when the request waiting for it is dropped (its timeout, the guest
/// dropping the future): without a bound, a guest starting requests to ever new names
/// and dropping them filled the blocking pool its lane shares with other drivers with
/// lookups of a slow name server. The permit is held until `getaddrinfo` returns.
pub const MAX_LOOKUPS: usize = 4;

/// A kept answer: when it was looked up, and the addresses.
struct Answer {
    at: Instant,
    ips: Vec<IpAddr>,
}

/// How a name is looked up (blocking): `getaddrinfo`, or a stand-in in tests.
type Lookup = fn(&str) -> std::io::Result<Vec<IpAddr>>;

/// The system's lookup.
fn getaddrinfo(host: &str) -> std::io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs;
    Ok((host, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// The resolver of one driver's outbound requests.
pub struct Resolver {
    ttl: Duration,
    /// By lower-case name (the port is the request's).
    answers: Mutex<HashMap<String, Answer>>,
    /// Lookups made (not answered from the cache).
    lookups: AtomicU64,
    /// [`MAX_LOOKUPS`] permits.
    at_once: Arc<tokio::sync::Semaphore>,
    lookup: Lookup,
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
            at_once: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)),
            lookup: getaddrinfo,
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
        let at = |ips: &[IpAddr]| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        let key = host.to_ascii_lowercase();
        if let Some(a) = self.answers.lock().get(&key) {
            if a.at.elapsed() < self.ttl {
                return Ok(at(&a.ips));
            }
        }
        let permit = self
            .at_once
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        // Another request may have looked it up while this one waited for its turn.
        if let Some(a) = self.answers.lock().get(&key) {
            if a.at.elapsed() < self.ttl {
                return Ok(at(&a.ips));
            }
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let (lookup, name) = (self.lookup, host.to_string());
        let ips = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            lookup(&name)
        })
        .await
        .map_err(std::io::Error::other)??;
        if !ips.is_empty() {
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
                    ips: ips.clone(),
                },
            );
        }
        Ok(at(&ips))
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
        let other_port = r.resolve("localhost", 81).await.unwrap();
        assert_eq!(r.lookups(), 1, "a name is kept whatever the port");
        assert!(other_port.iter().all(|a| a.port() == 81), "{other_port:?}");
        assert_eq!(
            r.resolve("127.0.0.1", 80).await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 80))]
        );
        assert_eq!(r.lookups(), 1, "an IP literal needs no lookup");
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
        // (Numbers are IPv4 addresses to getaddrinfo, not to Rust: looked up, no DNS.)
        for n in 0..(MAX_NAMES as u32 + 10) {
            r.resolve(&(2130706433 + n).to_string(), 80).await.unwrap();
        }
        assert!(r.answers.lock().len() <= MAX_NAMES);
    }

    static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static MOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// A lookup that takes 20 ms (a slow name server), counting how many run at once.
    fn slow(_: &str) -> std::io::Result<Vec<IpAddr>> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        DONE.fetch_add(1, Ordering::SeqCst);
        Ok(vec![IpAddr::from([192, 0, 2, 1])])
    }

    /// Requests to ever new names, each dropped at once (a guest's timeout): the
    /// lookups they started run on, but never more than [`MAX_LOOKUPS`] at a time, and
    /// a request dropped while waiting for a turn starts none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_at_once_are_bounded_even_when_dropped() {
        let r = Arc::new(Resolver {
            lookup: slow,
            ..Resolver::default()
        });
        for i in 0..200 {
            let r = r.clone();
            let _ = tokio::time::timeout(Duration::from_millis(1), async move {
                r.resolve(&format!("n{i}.example"), 80).await
            })
            .await;
        }
        // What was started finishes.
        while RUNNING.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            MOST.load(Ordering::SeqCst) <= MAX_LOOKUPS,
            "{}",
            MOST.load(Ordering::SeqCst)
        );
        assert!(
            DONE.load(Ordering::SeqCst) < 200,
            "every dropped request started a lookup"
        );
        // A request that waits gets its answer.
        let a = r.resolve("late.example", 443).await.unwrap();
        assert_eq!(a, vec![SocketAddr::from(([192, 0, 2, 1], 443))]);
    }
}
