//! A small time-bounded cache for cloud look-ups that many reconciles ask at once
//! with the same question (the newest AMI of a class, a tag's digest, a pool's
//! newest snapshot), so a burst of N environments costs one call, not N. No I/O.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (V, Instant)>>,
    /// Held while a miss is being fetched, so a burst of reconciles asking the same
    /// question waits for one answer instead of all asking AWS at once.
    filling: tokio::sync::Mutex<()>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
            filling: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached value, or the one `fetch` returns (stored unless it failed).
    /// Concurrent misses are fetched one at a time; the waiters then find the value.
    pub async fn get_or_fetch<E, F>(&self, key: &str, fetch: impl FnOnce() -> F) -> Result<V, E>
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        let _filling = self.filling.lock().await;
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        let v = fetch().await?;
        self.insert(key, v.clone());
        Ok(v)
    }

    /// The value stored for `key` less than the TTL ago.
    pub fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock poisoned");
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: impl Into<String>, value: V) {
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        // Expired entries go on every write, so the map stays as small as the set of
        // distinct questions asked within one TTL.
        entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
        entries.insert(key.into(), (value, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_misses_fetches_once() {
        let cache = std::sync::Arc::new(TtlCache::new(Duration::from_secs(10)));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("k", || async {
                            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(7)
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn entries_expire() {
        let cache = TtlCache::new(Duration::from_millis(30));
        cache.insert("a", 1);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("b"), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("a"), None);
    }
}
