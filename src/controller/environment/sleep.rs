//! Sleep: an environment's instance and database stopped while `spec.sleeping` or
//! its class's schedules say so, and started again when they no longer do; then the
//! wake script over the update channel (the user data does not run again on a
//! start) until the instance tags its services up. [`desire`] decides (pure);
//! [`step`] makes one move per pass (I/O: EC2, RDS, SSM, Events). Sleep begins only
//! once the environment has been Ready: an environment still provisioning finishes
//! first.

use jiff::Timestamp;
use kube::runtime::events::EventType;
use tracing::info;

use super::Pass;
use super::act::DbOutcome;
use super::status::SleepState;
use super::validate::Invalid;
use crate::api::class::SleepPolicy;
use crate::api::environment::{FeatureEnvironmentStatus, ServicesUpdate, SleepStatus};
use crate::bootstrap::{self, UpdateSpec};
use crate::cloud::{CloudError, Database, DatabaseStatus, Instance, InstanceState, ScriptRequest, tag};
use crate::controller::Result;
use crate::cron::{Cron, time_zone};

/// What decides whether an environment sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    Spec,
    Schedule,
}

impl DecidedBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Spec => "Spec",
            Self::Schedule => "Schedule",
        }
    }
}

/// Whether the environment is to sleep now, and when the schedules change that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desire {
    pub asleep: bool,
    pub decided_by: DecidedBy,
    pub next_change: Option<Timestamp>,
}

/// `spec.sleeping` when set; else the class's schedules: the latest sleep or wake
/// time of any schedule since the environment was created decides (a wake wins a
/// tie), awake when none has fired yet. `None` when neither says anything. A
/// schedule that does not parse is the class's problem, named by its field.
pub fn desire(
    sleeping: Option<bool>,
    policy: Option<&SleepPolicy>,
    class_name: &str,
    created: Timestamp,
    now: Timestamp,
) -> Result<Option<Desire>, Invalid> {
    if let Some(asleep) = sleeping {
        return Ok(Some(Desire {
            asleep,
            decided_by: DecidedBy::Spec,
            next_change: None,
        }));
    }
    let Some(policy) = policy.filter(|p| !p.schedules.is_empty()) else {
        return Ok(None);
    };
    // (when, asleep) of the latest fire, and the next fire of either kind.
    let mut last: Option<(Timestamp, bool)> = None;
    let mut next_sleep: Option<Timestamp> = None;
    let mut next_wake: Option<Timestamp> = None;
    for (i, schedule) in policy.schedules.iter().enumerate() {
        let field = |name: &str| format!("class {class_name}: spec.sleep.schedules[{i}].{name}");
        let tz = time_zone(&schedule.time_zone)
            .map_err(|e| Invalid::new("InvalidClass", format!("{}: {e}", field("timeZone"))))?;
        let parse = |text: &str, name: &str| {
            text.parse::<Cron>()
                .map_err(|e| Invalid::new("InvalidClass", format!("{}: {e}", field(name))))
        };
        let mut crons = vec![(parse(&schedule.sleep, "sleep")?, true)];
        if let Some(wake) = &schedule.wake {
            crons.push((parse(wake, "wake")?, false));
        }
        for (cron, asleep) in crons {
            if let Some(at) = cron.last_at_or_before(now, created, &tz) {
                let later = match last {
                    None => true,
                    Some((t, was_asleep)) => at > t || (at == t && was_asleep && !asleep),
                };
                if later {
                    last = Some((at, asleep));
                }
            }
            let next = if asleep { &mut next_sleep } else { &mut next_wake };
            if let Some(at) = cron.next_after(now, &tz) {
                *next = Some(next.map_or(at, |t: Timestamp| t.min(at)));
            }
        }
    }
    let asleep = last.is_some_and(|(_, asleep)| asleep);
    Ok(Some(Desire {
        asleep,
        decided_by: DecidedBy::Schedule,
        next_change: if asleep { next_wake } else { next_sleep },
    }))
}

/// Records the decision in `status.sleep`, keeping what a sleep in progress holds.
pub fn record(status: &mut FeatureEnvironmentStatus, desire: Option<&Desire>) {
    let in_progress = status.sleep.as_ref().is_some_and(|s| s.since.is_some());
    let Some(desire) = desire else {
        if !in_progress {
            status.sleep = None;
        } else if let Some(sleep) = &mut status.sleep {
            // Nothing asks for sleep any more: wake up.
            sleep.wanted = false;
            sleep.next_change = None;
        }
        return;
    };
    let sleep = status.sleep.get_or_insert_with(SleepStatus::default);
    sleep.wanted = desire.asleep;
    sleep.decided_by = desire.decided_by.as_str().to_owned();
    sleep.next_change = desire.next_change.map(|t| t.to_string());
}

/// One move towards what `status.sleep` wants. `None`: awake, the pipeline goes on
/// as for any running environment. Otherwise where sleep or wake-up stands, for the
/// status.
pub async fn step(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    instance: &Instance,
    database: Option<&DbOutcome>,
) -> Result<Option<SleepState>> {
    let Some(sleep) = status.sleep.clone() else {
        return Ok(None);
    };
    let database = match database {
        Some(DbOutcome::Claimed { database, .. }) => Some(database),
        _ => None,
    };
    if sleep.wanted {
        if status.ready_at.is_none() {
            // Provisioning finishes first; the sleep follows.
            return Ok(None);
        }
        return fall_asleep(pass, status, instance, database).await.map(Some);
    }
    if sleep.since.is_none() {
        return Ok(None);
    }
    wake_up(pass, status, instance, database).await
}

async fn fall_asleep(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    instance: &Instance,
    database: Option<&Database>,
) -> Result<SleepState> {
    let Pass { ctx, env, id, now, .. } = *pass;
    let sleep = status.sleep.get_or_insert_with(SleepStatus::default);
    let first = sleep.since.is_none();
    if first {
        sleep.since = Some(now.to_string());
        let why = match sleep.decided_by.as_str() {
            "Schedule" => "the class's sleep schedule",
            _ => "spec.sleeping",
        };
        ctx.event(
            env,
            EventType::Normal,
            "Sleeping",
            format!("stopping instance and database ({why})"),
        )
        .await;
    }
    sleep.wake = None;
    if instance.state == InstanceState::Running {
        ctx.cloud.compute.stop_instance(&instance.id).await?;
        info!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, "instance stopping (sleep)");
    }
    if let Some(db) = database
        && db.status == DatabaseStatus::Available
    {
        if !first {
            // Asleep before, yet available: RDS starts a database stopped for seven
            // days by itself (or someone started it). Stopped again.
            let note = format!(
                "database {} was started while the environment sleeps; stopping it again",
                db.id
            );
            ctx.event(env, EventType::Warning, "DatabaseStarted", note).await;
        }
        ctx.cloud.databases.stop_database(&db.id).await?;
        info!(namespace = %id.namespace, name = %id.name, db_instance_id = %db.id, "database stopping (sleep)");
    }
    let instance_down = instance.state == InstanceState::Stopped;
    let database_down = database.is_none_or(|db| db.status == DatabaseStatus::Stopped);
    let what = match database {
        Some(db) => format!("instance {} and database {}", instance.id, db.id),
        None => format!("instance {}", instance.id),
    };
    Ok(if instance_down && database_down {
        SleepState::Asleep {
            message: format!("{what} stopped"),
        }
    } else {
        SleepState::FallingAsleep {
            message: format!("stopping {what}"),
        }
    })
}

async fn wake_up(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    instance: &Instance,
    database: Option<&Database>,
) -> Result<Option<SleepState>> {
    let Pass { ctx, env, id, .. } = *pass;
    let waking = |reason: &'static str, message: String| Ok(Some(SleepState::Waking { reason, message }));
    if instance.state == InstanceState::Stopped {
        ctx.cloud.compute.start_instance(&instance.id).await?;
        let note = format!("starting instance {}", instance.id);
        ctx.event(env, EventType::Normal, "Waking", note).await;
    }
    if let Some(db) = database
        && db.status == DatabaseStatus::Stopped
    {
        ctx.cloud.databases.start_database(&db.id).await?;
        info!(namespace = %id.namespace, name = %id.name, db_instance_id = %db.id, "database starting (wake)");
    }
    if instance.state != InstanceState::Running {
        return waking(
            "StartingInstance",
            format!("instance {} is {}", instance.id, instance.state.as_str()),
        );
    }
    if let Some(db) = database
        && db.status != DatabaseStatus::Available
    {
        return waking("StartingDatabase", format!("database {} is {:?}", db.id, db.status));
    }
    let sleep = status.sleep.clone().unwrap_or_default();
    let Some(wake) = sleep.wake else {
        return send_wake_script(pass, status, instance).await;
    };
    let reported = instance.tags.get(tag::SERVICES).and_then(|v| v.split_once(':'));
    match reported {
        Some((tag::BOOTSTRAP_COMPLETE, token)) if token == wake.token => {
            status.sleep = status.sleep.take().map(|s| SleepStatus {
                since: None,
                wake: None,
                ..s
            });
            ctx.event(
                env,
                EventType::Normal,
                "Awake",
                format!("instance {} runs its services again", instance.id),
            )
            .await;
            Ok(None)
        }
        Some((tag::BOOTSTRAP_FAILED, token)) if token == wake.token => Ok(Some(SleepState::WakeFailed {
            message: format!(
                "instance {} reported that its services did not come back (command {})",
                instance.id,
                wake.command_id.unwrap_or_default()
            ),
        })),
        _ => waking(
            "StartingServices",
            format!("instance {} is starting Minikube and its services", instance.id),
        ),
    }
}

/// Sends the wake script; an instance whose SSM agent is not online yet (just
/// started) is asked again at the next pass.
async fn send_wake_script(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    instance: &Instance,
) -> Result<Option<SleepState>> {
    let Pass { ctx, id, resolved, .. } = *pass;
    // One token per attempt: after a failed wake-up the instance still carries the
    // old token's `failed`, and the next attempt must not be judged by it.
    let token = crate::naming::services_token([("wake", pass.now.to_string())]);
    let spec = UpdateSpec {
        environment: id.key.clone(),
        region: ctx.config.region.clone().unwrap_or_default(),
        services: bootstrap::ServiceImage::all_of(&status.images),
        token: token.clone(),
        sequence: pass.env.metadata.generation.unwrap_or_default(),
    };
    let request = ScriptRequest {
        instance_id: instance.id.clone(),
        script: bootstrap::render_wake_script(&spec),
        comment: format!("featureenv: wake {}", id.key),
        timeout_seconds: u32::try_from(resolved.readiness_timeout.as_secs()).unwrap_or(u32::MAX),
    };
    let command_id = match ctx.cloud.commands.run_script(&request).await {
        Ok(command_id) => command_id,
        Err(CloudError::InvalidState { message, .. }) => {
            return Ok(Some(SleepState::Waking {
                reason: "StartingServices",
                message: format!("instance {} is not yet reachable over SSM ({message})", instance.id),
            }));
        }
        Err(e) => return Err(e.into()),
    };
    info!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, command_id, "sent the wake script");
    ctx.inventory.await_update(&instance.id, &token);
    if let Some(sleep) = &mut status.sleep {
        sleep.wake = Some(ServicesUpdate {
            token,
            images: status.images.clone(),
            command_id: Some(command_id),
            sent_at: Some(pass.now.to_string()),
            failure: None,
        });
    }
    Ok(Some(SleepState::Waking {
        reason: "StartingServices",
        message: format!("instance {} is starting Minikube and its services", instance.id),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::class::SleepSchedule;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn office_hours() -> SleepPolicy {
        SleepPolicy {
            schedules: vec![SleepSchedule {
                sleep: "0 20 * * 1-5".into(),
                wake: Some("0 7 * * 1-5".into()),
                time_zone: "Europe/Berlin".into(),
            }],
        }
    }

    #[test]
    fn the_spec_overrides_the_schedule() {
        let created = at("2026-12-01T08:00:00Z");
        let night = at("2026-12-03T22:00:00Z");
        let d = desire(Some(false), Some(&office_hours()), "c", created, night)
            .unwrap()
            .unwrap();
        assert_eq!((d.asleep, d.decided_by, d.next_change), (false, DecidedBy::Spec, None));
        let d = desire(Some(true), None, "c", created, night).unwrap().unwrap();
        assert!(d.asleep);
        assert_eq!(desire(None, None, "c", created, night).unwrap(), None);
    }

    #[test]
    fn the_latest_fire_since_creation_decides() {
        let policy = office_hours();
        let created = at("2026-12-01T08:00:00Z"); // Tuesday 09:00 in Berlin
        // Thursday 22:00 Berlin (21:00 UTC): asleep since 20:00, wakes Friday 07:00.
        let d = desire(None, Some(&policy), "c", created, at("2026-12-03T21:00:00Z"))
            .unwrap()
            .unwrap();
        assert!(d.asleep);
        assert_eq!(d.next_change, Some(at("2026-12-04T06:00:00Z")));
        // Friday noon: awake, sleeps at 20:00.
        let d = desire(None, Some(&policy), "c", created, at("2026-12-04T11:00:00Z"))
            .unwrap()
            .unwrap();
        assert!(!d.asleep);
        assert_eq!(d.next_change, Some(at("2026-12-04T19:00:00Z")));
        // Saturday: asleep since Friday 20:00, until Monday 07:00.
        let d = desire(None, Some(&policy), "c", created, at("2026-12-05T12:00:00Z"))
            .unwrap()
            .unwrap();
        assert!(d.asleep);
        assert_eq!(d.next_change, Some(at("2026-12-07T06:00:00Z")));
        // Created on Saturday: no fire since, so awake until Monday's 20:00.
        let d = desire(
            None,
            Some(&policy),
            "c",
            at("2026-12-05T10:00:00Z"),
            at("2026-12-05T12:00:00Z"),
        )
        .unwrap()
        .unwrap();
        assert!(!d.asleep);
        assert_eq!(d.next_change, Some(at("2026-12-07T19:00:00Z")));
    }

    #[test]
    fn a_schedule_without_a_wake_time_sleeps_until_the_spec_wakes_it() {
        let policy = SleepPolicy {
            schedules: vec![SleepSchedule {
                sleep: "@daily".into(),
                wake: None,
                time_zone: "UTC".into(),
            }],
        };
        let d = desire(
            None,
            Some(&policy),
            "c",
            at("2026-12-01T08:00:00Z"),
            at("2026-12-03T08:00:00Z"),
        )
        .unwrap()
        .unwrap();
        assert!(d.asleep);
        assert_eq!(d.next_change, None);
    }

    #[test]
    fn a_bad_schedule_names_its_field() {
        let mut policy = office_hours();
        policy.schedules[0].wake = Some("0 7 * * MON-FRY".into());
        let err = desire(
            None,
            Some(&policy),
            "standard",
            at("2026-12-01T08:00:00Z"),
            at("2026-12-03T08:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(err.reason, "InvalidClass");
        assert!(
            err.message.starts_with("class standard: spec.sleep.schedules[0].wake:"),
            "{}",
            err.message
        );
        policy.schedules[0].time_zone = "Europe/Atlantis".into();
        let err = desire(
            None,
            Some(&policy),
            "standard",
            at("2026-12-01T08:00:00Z"),
            at("2026-12-03T08:00:00Z"),
        )
        .unwrap_err();
        assert!(err.message.contains("schedules[0].timeZone"), "{}", err.message);
    }
}
