//! Host name resolution for endpoints (`plc-7.plant:502`), kept apart from
//! the device timeouts: a slow or dead DNS server costs a lookup its own
//! bounded time, not a poll, and a name that does not resolve marks only
//! the devices behind it.
//!
//! The system resolver (`getaddrinfo`, which honours /etc/hosts and
//! nsswitch) blocks, so lookups run on the blocking pool: at most
//! [`MAX_IN_FLIGHT`] at once, each given up after [`LOOKUP_TIMEOUT`] (the
//! thread finishes on its own when the C library gives up). Answers are
//! cached for [`TTL`], failures for [`NEGATIVE_TTL`]; concurrent lookups of
//! one name share one query.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::{DriverError, ErrorKind};

/// Longest wait for one lookup (queueing for a slot included).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer is used before the name is looked up again.
pub const TTL: Duration = Duration::from_secs(60);
/// How long a failed lookup is remembered: a dead resolver is not asked
/// again at every poll.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Lookups running at once, process-wide.
pub const MAX_IN_FLIGHT: usize = 4;
/// Names remembered at most; the oldest answers go first beyond this.
const MAX_ENTRIES: usize = 4096;

type Answer = Result<Arc<[SocketAddr]>, String>;

/// One name's cached answer.
#[derive(Default)]
struct Entry {
    answer: Option<(Answer, Instant)>,
}

/// The process-wide cache and its bound on concurrent lookups.
struct Resolver {
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
    slots: Arc<Semaphore>,
}

fn resolver() -> &'static Resolver {
    static RESOLVER: OnceLock<Resolver> = OnceLock::new();
    RESOLVER.get_or_init(|| Resolver {
        entries: Mutex::new(HashMap::new()),
        slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
    })
}

/// The addresses of `endpoint` (`host:port`, `[v6]:port` or `a.b.c.d:port`).
/// A literal address needs no lookup.
pub async fn resolve(endpoint: &str) -> Result<Arc<[SocketAddr]>, DriverError> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return Ok(Arc::from([addr]));
    }
    let r = resolver();
    let slot = {
        let mut entries = r.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(endpoint) {
            // Names no longer in use (nobody holds their entry) go first.
            entries.retain(|_, e| Arc::strong_count(e) > 1);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        Arc::clone(entries.entry(endpoint.to_string()).or_default())
    };
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    let timed_out = || {
        DriverError::new(
            ErrorKind::Timeout,
            format!(
                "cannot resolve {endpoint}: no answer from the name server within {}",
                humantime::format_duration(LOOKUP_TIMEOUT)
            ),
        )
    };
    // One lookup per name at a time: the others wait for its answer.
    let mut entry = tokio::time::timeout_at(deadline, slot.lock())
        .await
        .map_err(|_| timed_out())?;
    if let Some((answer, expires)) = &entry.answer {
        if Instant::now() < *expires {
            return answer
                .clone()
                .map_err(|e| DriverError::new(ErrorKind::Io, e));
        }
    }
    let permit = tokio::time::timeout_at(deadline, Arc::clone(&r.slots).acquire_owned())
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| timed_out())?;
    let name = endpoint.to_string();
    let lookup = tokio::task::spawn_blocking(move || {
        // The slot is held until the C library returns, even when the
        // caller stopped waiting: lookups in flight stay bounded.
        let _permit = permit;
        name.to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
            .map_err(|e| e.to_string())
    });
    let answer: Answer = match tokio::time::timeout_at(deadline, lookup).await {
        Err(_) => Err(timed_out().message),
        Ok(Err(e)) => Err(format!("cannot resolve {endpoint}: {e}")),
        Ok(Ok(Err(e))) => Err(format!("cannot resolve {endpoint}: {e}")),
        Ok(Ok(Ok(addrs))) if addrs.is_empty() => {
            Err(format!("cannot resolve {endpoint}: no addresses"))
        }
        Ok(Ok(Ok(addrs))) => Ok(Arc::from(addrs)),
    };
    let ttl = if answer.is_ok() { TTL } else { NEGATIVE_TTL };
    entry.answer = Some((answer.clone(), Instant::now() + ttl));
    answer.map_err(|e| {
        let kind = if e.contains("no answer from the name server") {
            ErrorKind::Timeout
        } else {
            ErrorKind::Io
        };
        DriverError::new(kind, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_addresses_need_no_lookup() {
        let a = resolve("127.0.0.1:502").await.unwrap();
        assert_eq!(&a[..], &["127.0.0.1:502".parse::<SocketAddr>().unwrap()]);
        let b = resolve("[::1]:4840").await.unwrap();
        assert_eq!(b[0].port(), 4840);
    }

    #[tokio::test]
    async fn names_resolve_and_answers_are_cached() {
        let first = resolve("localhost:1502").await.unwrap();
        assert!(first
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 1502));
        let second = resolve("localhost:1502").await.unwrap();
        // The same answer, not a second lookup.
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[tokio::test]
    async fn a_bad_endpoint_is_a_clear_error_and_is_remembered() {
        let e = resolve("no port here").await.unwrap_err();
        assert!(e.message.starts_with("cannot resolve no port here"), "{e}");
        let again = resolve("no port here").await.unwrap_err();
        assert_eq!(e, again);
    }
}
