//! What this process remembers between reconciles and no object records: claims
//! not yet confirmed, credentials handed out, parameters bound and the status last
//! written that a stale cached object may not show yet, which environments wait
//! for a pool's spare, consecutive failures per object, and which spares'
//! passwords were replaced.
//! All of it is an optimisation or a guard against acting twice; a restart loses
//! it harmlessly. One home, so an environment's deletion forgets everything about
//! it in one call ([`Memory::forget`]). Plain state; no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::claim::PendingClaims;
use crate::api::environment::FeatureEnvironmentStatus;
use crate::cloud::Database;

#[derive(Debug, Default)]
pub struct Memory {
    /// Spares this process tagged as claimed and the inventory does not yet show.
    pub claims: PendingClaims,
    /// The same for spare instances of the classes' warm pools.
    pub instance_claims: PendingClaims,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    environments: HashMap<String, Remembered>,
    /// Consecutive failed reconciles per object uid, for backoff.
    failures: HashMap<String, u32>,
    /// Per pool: spares whose restored master password this process replaced.
    spares_reset: HashMap<String, HashSet<String>>,
}

/// What is remembered of one environment (by uid).
#[derive(Debug, Default)]
struct Remembered {
    /// Databases whose credentials were handed out to it. A reconcile may run on a
    /// cached object whose status does not show that yet; this keeps it from
    /// rotating the password again (on RDS each rotation is a ModifyDBInstance that
    /// resets the master credentials for a while).
    credentials_handed_out: HashSet<String>,
    /// Instances whose ARN its database parameter is tagged with (the only
    /// instance the instance profile lets read it).
    parameter_bound_to: HashSet<String>,
    /// The pool it waits on for a spare: the pool restores one for each waiter.
    waiting_for: Option<String>,
    /// The status this process last wrote, and the resource versions its writes
    /// superseded.
    written: Option<WrittenStatus>,
}

#[derive(Debug)]
struct WrittenStatus {
    status: FeatureEnvironmentStatus,
    /// The version the last write produced: a cache showing it has caught up.
    latest: String,
    /// Versions older than a write of ours: a cache showing one of them lags.
    superseded: HashSet<String>,
}

impl Memory {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain maps; a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets everything about a deleted object.
    pub fn forget(&self, uid: &str) {
        self.claims.forget(uid);
        self.instance_claims.forget(uid);
        let mut state = self.state();
        state.environments.remove(uid);
        state.failures.remove(uid);
    }

    pub fn credentials_handed_out(&self, uid: &str, database: &str) {
        let mut state = self.state();
        let remembered = state.environments.entry(uid.to_owned()).or_default();
        remembered.credentials_handed_out.insert(database.to_owned());
    }

    pub fn has_handed_out_credentials(&self, uid: &str, database: &str) -> bool {
        self.state()
            .environments
            .get(uid)
            .is_some_and(|r| r.credentials_handed_out.contains(database))
    }

    pub fn parameter_bound(&self, uid: &str, instance: &str) {
        let mut state = self.state();
        let remembered = state.environments.entry(uid.to_owned()).or_default();
        remembered.parameter_bound_to.insert(instance.to_owned());
    }

    pub fn has_bound_parameter(&self, uid: &str, instance: &str) -> bool {
        self.state()
            .environments
            .get(uid)
            .is_some_and(|r| r.parameter_bound_to.contains(instance))
    }

    /// Records a status written for environment `uid` over the object at
    /// `base` (its resourceVersion when the pass read it), which produced `latest`.
    pub fn status_written(
        &self,
        uid: &str,
        base: Option<&str>,
        latest: Option<&str>,
        status: &FeatureEnvironmentStatus,
    ) {
        let mut state = self.state();
        let remembered = state.environments.entry(uid.to_owned()).or_default();
        let Some(latest) = latest else {
            remembered.written = None;
            return;
        };
        let mut superseded = remembered
            .written
            .take()
            .map(|w| {
                let mut s = w.superseded;
                s.insert(w.latest);
                s
            })
            .unwrap_or_default();
        superseded.extend(base.map(str::to_owned));
        superseded.remove(latest);
        remembered.written = Some(WrittenStatus {
            status: status.clone(),
            latest: latest.to_owned(),
            superseded,
        });
    }

    /// The status environment `uid` has now: `cached` (the status of the object at
    /// resourceVersion `version`), unless that is a version one of this process's
    /// own status writes superseded, when the cache has not caught up with the
    /// write yet: then the status last written. A pass on the lagging object would
    /// otherwise write what is already there, tell its Events again and move
    /// `readyAt`. A version this process did not supersede (its own latest, or a
    /// later change by someone else) is taken as it is.
    pub fn current_status(
        &self,
        uid: &str,
        version: Option<&str>,
        cached: FeatureEnvironmentStatus,
    ) -> FeatureEnvironmentStatus {
        let mut state = self.state();
        let Some(remembered) = state.environments.get_mut(uid) else {
            return cached;
        };
        match (&remembered.written, version) {
            (Some(w), Some(v)) if w.superseded.contains(v) => w.status.clone(),
            (Some(w), Some(v)) if w.latest != v => {
                // Someone else changed the object since: nothing to stand in for.
                remembered.written = None;
                cached
            }
            _ => cached,
        }
    }

    /// Records whether environment `uid` waits for a spare of `pool`.
    pub fn set_waiting(&self, pool: &str, uid: &str, waiting: bool) {
        let mut state = self.state();
        let remembered = state.environments.entry(uid.to_owned()).or_default();
        if waiting {
            remembered.waiting_for = Some(pool.to_owned());
        } else if remembered.waiting_for.as_deref() == Some(pool) {
            remembered.waiting_for = None;
        }
    }

    /// How many environments wait for a spare of `pool`.
    pub fn pool_demand(&self, pool: &str) -> u32 {
        let count = self
            .state()
            .environments
            .values()
            .filter(|r| r.waiting_for.as_deref() == Some(pool))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Counts one more failed reconcile of object `uid`; returns how many in a row.
    pub fn failed(&self, uid: &str) -> u32 {
        let mut state = self.state();
        let failures = state.failures.entry(uid.to_owned()).or_default();
        *failures += 1;
        *failures
    }

    pub fn succeeded(&self, uid: &str) {
        self.state().failures.remove(uid);
    }

    /// The available, unclaimed spares of `pool` whose password this process has
    /// not replaced yet, among `members` (its current members), leaving out
    /// `deleting`. Forgets spares of `pool` that are gone (identifiers come back
    /// after a delete).
    pub fn spares_to_reset<'a>(&self, pool: &str, members: &'a [Database], deleting: &[String]) -> Vec<&'a Database> {
        let mut state = self.state();
        let reset = state.spares_reset.entry(pool.to_owned()).or_default();
        reset.retain(|id| members.iter().any(|m| &m.id == id));
        super::claim::claimable(members)
            .into_iter()
            .filter(|d| !deleting.contains(&d.id) && !reset.contains(&d.id))
            .collect()
    }

    pub fn spare_reset(&self, pool: &str, database: &str) {
        let mut state = self.state();
        state
            .spares_reset
            .entry(pool.to_owned())
            .or_default()
            .insert(database.to_owned());
    }

    /// The uids waiting for `pool`.
    #[cfg(test)]
    fn waiting(&self, pool: &str) -> std::collections::BTreeSet<String> {
        self.state()
            .environments
            .iter()
            .filter(|(_, r)| r.waiting_for.as_deref() == Some(pool))
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(id: &str) -> Database {
        crate::test_fixtures::spare(id, None)
    }

    #[test]
    fn forget_drops_everything_about_one_environment_only() {
        let memory = Memory::default();
        for uid in ["a", "b"] {
            memory.credentials_handed_out(uid, "db-1");
            memory.parameter_bound(uid, "i-1");
            memory.set_waiting("pool", uid, true);
            memory.failed(uid);
        }
        memory.forget("a");
        assert!(!memory.has_handed_out_credentials("a", "db-1"));
        assert!(!memory.has_bound_parameter("a", "i-1"));
        assert_eq!(
            memory.waiting("pool"),
            std::collections::BTreeSet::from(["b".to_owned()])
        );
        assert_eq!(memory.failed("a"), 1, "the failure count starts again");
        assert!(memory.has_handed_out_credentials("b", "db-1"));
        assert!(memory.has_bound_parameter("b", "i-1"));
        assert_eq!(memory.failed("b"), 2);
    }

    #[test]
    fn a_cached_status_older_than_our_own_write_gives_way_to_it() {
        use crate::api::environment::Phase;
        let memory = Memory::default();
        let status = |phase| FeatureEnvironmentStatus {
            phase,
            ..Default::default()
        };
        let seen = |version: &str| memory.current_status("a", Some(version), status(Phase::Pending)).phase;
        assert_eq!(seen("1"), Phase::Pending, "nothing written: the cache");
        // Two passes on the object at version 1 wrote versions 2 and then 3.
        memory.status_written("a", Some("1"), Some("2"), &status(Phase::Provisioning));
        memory.status_written("a", Some("1"), Some("3"), &status(Phase::Ready));
        assert_eq!(seen("1"), Phase::Ready, "the cache lags both writes");
        assert_eq!(seen("2"), Phase::Ready, "the cache lags the second write");
        assert_eq!(seen("3"), Phase::Pending, "caught up: the cache");
        assert_eq!(seen("1"), Phase::Ready, "still superseded");
        assert_eq!(
            memory.current_status("b", Some("1"), status(Phase::Pending)).phase,
            Phase::Pending,
            "another environment's writes stand in for nothing"
        );
        // A later change by someone else: the cache from then on.
        assert_eq!(seen("4"), Phase::Pending);
        assert_eq!(seen("1"), Phase::Pending, "forgotten");
        memory.status_written("a", Some("4"), Some("5"), &status(Phase::Ready));
        memory.forget("a");
        assert_eq!(
            seen("4"),
            Phase::Pending,
            "a deleted environment's writes are forgotten"
        );
    }

    #[test]
    fn an_environment_waits_for_one_pool_at_a_time() {
        let memory = Memory::default();
        memory.set_waiting("p1", "a", true);
        memory.set_waiting("p2", "a", true);
        assert_eq!((memory.pool_demand("p1"), memory.pool_demand("p2")), (0, 1));
        memory.set_waiting("p1", "a", false);
        assert_eq!(memory.pool_demand("p2"), 1, "leaving another pool changes nothing");
        memory.set_waiting("p2", "a", false);
        assert_eq!(memory.pool_demand("p2"), 0);
    }

    #[test]
    fn spares_reset_are_remembered_per_pool() {
        let memory = Memory::default();
        let first = [spare("db-a1"), spare("db-a2")];
        let second = [spare("db-b1")];
        for d in memory.spares_to_reset("first", &first, &[]) {
            memory.spare_reset("first", &d.id);
        }
        for d in memory.spares_to_reset("second", &second, &[]) {
            memory.spare_reset("second", &d.id);
        }
        assert!(memory.spares_to_reset("first", &first, &[]).is_empty());
        assert!(memory.spares_to_reset("second", &second, &[]).is_empty());
        // A spare that went away and whose id comes back is a new database.
        assert!(memory.spares_to_reset("second", &[], &[]).is_empty());
        assert_eq!(memory.spares_to_reset("second", &second, &[]).len(), 1);
    }
}
