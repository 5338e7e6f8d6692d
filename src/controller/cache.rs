//! A small time-bounded cache for cloud look-ups that many reconciles ask at once
//! with the same question (the newest AMI of a class, a tag's digest, a pool's
//! newest snapshot), so a burst of N environments costs one call, not N. No I/O.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
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
