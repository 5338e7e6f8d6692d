//! When to look at an environment again without a trigger. Nothing waits only for a
//! change of the object when the cause lies elsewhere, and nothing sleeps past its
//! expiry. Pure.

use std::time::Duration;

use jiff::Timestamp;

use super::act::DbOutcome;
use super::validate::{Invalid, Retry};
use crate::api::environment::{FeatureEnvironmentStatus, Phase};

/// The longest an environment goes unlooked-at, whatever its state.
const AT_WORST: Duration = Duration::from_secs(300);
/// How often an environment waiting for a pool spare looks again.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How often an environment whose Secret name is taken looks again (deleting a
/// Secret triggers no reconcile).
const SECRET_WAIT: Duration = Duration::from_secs(30);
/// How often an environment rolling out a services update looks again (the
/// instance's outcome tag also triggers a pass through the inventory).
const UPDATE_WAIT: Duration = Duration::from_secs(5);

fn until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or_default()
}

/// When to look again at a healthy pass: at expiry, at the readiness deadline, soon
/// while waiting for a pool spare or for a claim to be confirmed, and at worst every
/// five minutes.
pub fn next_wake(
    status: &FeatureEnvironmentStatus,
    expires_at: Timestamp,
    readiness_timeout: Duration,
    now: Timestamp,
    database: &Option<DbOutcome>,
    fast_poll: Duration,
) -> Duration {
    let mut wake = until(expires_at, now).min(AT_WORST);
    if status.phase == Phase::Provisioning
        && let Some(deadline) = status
            .launched_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .and_then(|t| {
                t.checked_add(jiff::SignedDuration::try_from(readiness_timeout).ok()?)
                    .ok()
            })
    {
        wake = wake.min(until(deadline, now) + Duration::from_millis(100));
    }
    if status.phase == Phase::Updating || status.phase == Phase::Waking {
        wake = wake.min(UPDATE_WAIT);
    }
    if status.phase == Phase::Sleeping
        && crate::api::conditions::find(&status.conditions, crate::api::conditions::READY)
            .is_some_and(|c| c.reason == "FallingAsleep")
    {
        wake = wake.min(UPDATE_WAIT);
    }
    // The class's schedule changes its mind at this moment.
    if let Some(at) = status
        .sleep
        .as_ref()
        .and_then(|s| s.next_change.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
    {
        wake = wake.min(until(at, now) + Duration::from_millis(100));
    }
    if matches!(database, Some(DbOutcome::Exhausted(_))) {
        wake = wake.min(POOL_WAIT);
    }
    if matches!(database, Some(DbOutcome::SecretConflict { .. })) {
        wake = wake.min(SECRET_WAIT);
    }
    if matches!(database, Some(DbOutcome::Claiming)) {
        // The confirming poll triggers this environment; this is the fallback for a
        // lost claim, whose poll triggers the winner instead.
        wake = wake.min(fast_poll);
    }
    wake.max(Duration::from_millis(100))
}

/// When to look again at an environment that cannot be provisioned as it stands:
/// when its problem says, and at its expiry in any case (`None`: only a change of
/// the environment or its class can help, and it has no expiry to enforce).
pub fn wake_for_problem(invalid: &Invalid, expires_at: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    let at_expiry = expires_at.map(|t| until(t, now).max(Duration::from_millis(100)));
    match invalid.retry {
        Retry::After(d) => Some(at_expiry.map_or(d, |e| e.min(d))),
        Retry::OnChange => at_expiry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_problem_is_looked_at_again_by_its_expiry_at_the_latest() {
        let now = t("2026-11-28T10:00:00Z");
        let expiry = Some(t("2026-11-28T10:00:10Z"));
        let spec = Invalid::new("TTLExceedsMaximum", "spec.ttl");
        let outside = Invalid::outside("ImageNotFound", "spec.services[0].image", Duration::from_secs(30));
        assert_eq!(wake_for_problem(&spec, expiry, now), Some(Duration::from_secs(10)));
        assert_eq!(wake_for_problem(&spec, None, now), None);
        assert_eq!(wake_for_problem(&outside, None, now), Some(Duration::from_secs(30)));
        assert_eq!(wake_for_problem(&outside, expiry, now), Some(Duration::from_secs(10)));
        let later = Some(t("2026-11-28T11:00:00Z"));
        assert_eq!(wake_for_problem(&outside, later, now), Some(Duration::from_secs(30)));
    }
}
