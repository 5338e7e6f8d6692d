//! The fence: whether this replica may call the cloud right now. Leader election
//! opens it until a deadline after each successful Lease renewal (see `leader`);
//! the AWS adapter checks it as each request is about to leave. A leader cut off
//! from the API server therefore stops touching AWS at its deadline, even in the
//! middle of a reconcile, before any other replica can have taken the Lease. Pure
//! state over the monotonic clock; no I/O.

use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
enum Gate {
    /// No leader election: a single replica, always allowed.
    Open,
    /// Allowed until this instant (the last renewal's start plus the renew deadline).
    Until(Instant),
    Closed,
}

#[derive(Debug)]
pub struct Fence {
    gate: Mutex<Gate>,
}

impl Fence {
    /// A fence that never closes, for a replica that runs without leader election.
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            gate: Mutex::new(Gate::Open),
        })
    }

    /// A fence that lets nothing through until leadership opens it.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            gate: Mutex::new(Gate::Closed),
        })
    }

    /// Allows calls until `deadline` (replacing any earlier deadline).
    pub fn open_until(&self, deadline: Instant) {
        *self.lock() = Gate::Until(deadline);
    }

    pub fn close(&self) {
        *self.lock() = Gate::Closed;
    }

    /// Whether a call may leave now.
    pub fn is_open(&self) -> bool {
        self.is_open_at(Instant::now())
    }

    fn is_open_at(&self, now: Instant) -> bool {
        match *self.lock() {
            Gate::Open => true,
            Gate::Until(deadline) => now < deadline,
            Gate::Closed => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        // The gate is a plain value; a panic elsewhere cannot leave it half-written.
        self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_deadline_closes_the_fence_by_itself() {
        let fence = Fence::closed();
        let now = Instant::now();
        assert!(!fence.is_open_at(now));
        fence.open_until(now + Duration::from_secs(4));
        assert!(fence.is_open_at(now + Duration::from_secs(3)));
        assert!(!fence.is_open_at(now + Duration::from_secs(4)));
        fence.open_until(now + Duration::from_secs(8));
        assert!(fence.is_open_at(now + Duration::from_secs(5)));
        fence.close();
        assert!(!fence.is_open_at(now));
    }

    #[test]
    fn an_open_fence_never_closes_by_time() {
        assert!(Fence::open().is_open_at(Instant::now() + Duration::from_secs(86_400 * 365)));
    }
}
