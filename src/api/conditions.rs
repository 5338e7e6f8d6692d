//! `metav1.Condition` bookkeeping: setting a condition keeps its
//! `lastTransitionTime` unless the status actually changes (API conventions). Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const INSTANCE_READY: &str = "InstanceReady";
pub const DATABASE_READY: &str = "DatabaseReady";
/// RdsPool: enough warm spares exist.
pub const WARM: &str = "Warm";
/// RdsPool: the newest snapshot is younger than `maxSnapshotAge`.
pub const SNAPSHOT_FRESH: &str = "SnapshotFresh";

/// A condition to set; the time and generation are filled in by [`set_condition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl ConditionUpdate {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Sets (or adds) a condition. `lastTransitionTime` moves only when the status flips.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if update.status { "True" } else { "False" }.to_owned();
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = update.reason;
            existing.message = update.message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: update.type_.to_owned(),
            status,
            reason: update.reason,
            message: update.message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ConditionUpdate::new(READY, false, "Provisioning", "launching"),
            Some(1),
            ts(100),
        );
        set_condition(
            &mut conditions,
            ConditionUpdate::new(READY, false, "WaitingForBootstrap", "booting"),
            Some(1),
            ts(200),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(ts(100)));
        assert_eq!(conditions[0].reason, "WaitingForBootstrap");
        set_condition(
            &mut conditions,
            ConditionUpdate::new(READY, true, "Ready", "ready"),
            Some(2),
            ts(300),
        );
        assert_eq!(conditions[0].last_transition_time, Time(ts(300)));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert!(is_true(&conditions, READY));
        assert!(!is_true(&conditions, INSTANCE_READY));
    }
}
