//! Computes an environment's phase, conditions and endpoints from what was
//! observed. Pure: the same observations always give the same status.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::api::conditions::{self, ConditionUpdate, DATABASE_READY, INSTANCE_READY, READY, set_condition};
use crate::api::environment::{FeatureEnvironmentStatus, InstanceStatus, Phase};
use crate::cloud::{Database, DatabaseStatus, Instance, InstanceState, tag};

/// What the reconcile saw, in domain terms.
#[derive(Debug, Default, Clone)]
pub struct Observed<'a> {
    pub instance: Option<&'a Instance>,
    /// `None` when the class has no database pool.
    pub database: Option<DatabaseObservation<'a>>,
    /// The tail of the console output, fetched when bootstrap failed or timed out.
    pub console_tail: Option<String>,
    /// A claimed spare's personalisation, until its first Ready (`None`: a cold
    /// start, or personalised).
    pub personalisation: Option<Personalisation>,
}

/// Where a claimed spare's personalisation stands (see `warm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Personalisation {
    /// Starting the spare, waiting for its agent, or running the script.
    InProgress { message: String },
    /// The instance said it failed, or said nothing within the readiness timeout.
    Failed { message: String },
}

#[derive(Debug, Clone)]
pub enum DatabaseObservation<'a> {
    Claimed {
        database: &'a Database,
        credentials_ready: bool,
    },
    PoolExhausted {
        pool: String,
    },
    Claiming,
    /// Claimed, but `secret` is someone else's Secret: credentials not handed out.
    SecretConflict {
        database: &'a Database,
        secret: String,
    },
}

/// Why an environment is not ready, in a stable reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub reason: &'static str,
    pub message: String,
}

/// The instance half: Ok when running and bootstrapped.
pub fn instance_readiness(instance: Option<&Instance>) -> Result<(), NotReady> {
    let nr = |reason, message: String| Err(NotReady { reason, message });
    let Some(i) = instance else {
        return nr("Launching", "launching the instance".into());
    };
    match (i.state, i.tags.get(tag::BOOTSTRAP).map(String::as_str)) {
        (InstanceState::Running, Some(tag::BOOTSTRAP_COMPLETE)) => Ok(()),
        (_, Some(tag::BOOTSTRAP_FAILED)) => nr(
            "BootstrapFailed",
            format!("instance {} reported bootstrap failure", i.id),
        ),
        (InstanceState::Running, _) => nr(
            "Bootstrapping",
            format!("instance {} is running; waiting for its bootstrap to complete", i.id),
        ),
        (InstanceState::Pending, _) => nr("InstancePending", format!("instance {} is starting", i.id)),
        (state, _) => nr("InstanceNotRunning", format!("instance {} is {}", i.id, state.as_str())),
    }
}

/// The database half: Ok when claimed, available and its credentials handed out.
pub fn database_readiness(database: Option<&DatabaseObservation<'_>>) -> Result<(), NotReady> {
    let nr = |reason, message: String| Err(NotReady { reason, message });
    match database {
        None => Ok(()),
        Some(DatabaseObservation::Claiming) => nr("Claiming", "claiming a database from the pool".into()),
        Some(DatabaseObservation::SecretConflict { secret, .. }) => nr(
            "SecretConflict",
            format!(
                "Secret {secret} exists and is not this environment's; delete or rename it to get the database credentials"
            ),
        ),
        Some(DatabaseObservation::PoolExhausted { pool }) => nr(
            "PoolExhausted",
            format!("RdsPool {pool} has no available spare; waiting for one"),
        ),
        Some(DatabaseObservation::Claimed {
            database,
            credentials_ready,
        }) => match (&database.status, credentials_ready) {
            (DatabaseStatus::Available, true) => Ok(()),
            (DatabaseStatus::Available, false) => nr(
                "RotatingCredentials",
                format!("handing out credentials for {}", database.id),
            ),
            (DatabaseStatus::Modifying, _) => nr(
                "RotatingCredentials",
                format!("database {} is applying the new password", database.id),
            ),
            (status, _) => nr(
                "DatabaseNotAvailable",
                format!("database {} is {status:?}", database.id),
            ),
        },
    }
}

/// Renders the class's URL templates for an instance.
pub fn render_endpoints(
    templates: &BTreeMap<String, String>,
    instance: &Instance,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, String> {
    templates
        .iter()
        .map(|(key, template)| {
            let url = template
                .replace(
                    "{publicIp}",
                    instance
                        .public_ip
                        .as_deref()
                        .or(instance.private_ip.as_deref())
                        .unwrap_or(""),
                )
                .replace("{publicDns}", instance.public_dns.as_deref().unwrap_or(""))
                .replace("{privateIp}", instance.private_ip.as_deref().unwrap_or(""))
                .replace("{namespace}", namespace)
                .replace("{name}", name);
            (key.clone(), url)
        })
        .collect()
}

/// Failure reasons that stay once reached: the environment keeps its resources for
/// debugging until it is deleted or expires. Any other reason of a `Failed` phase
/// (a spec or class the environment no longer satisfies) clears once fixed.
pub const STICKY_FAILURES: [&str; 4] = [
    "BootstrapFailed",
    "PersonalisationFailed",
    "BootstrapTimeout",
    "InstanceLost",
];

/// Whether the environment failed for good (see [`STICKY_FAILURES`]).
pub fn failed_for_good(status: &FeatureEnvironmentStatus) -> bool {
    status.phase == Phase::Failed
        && conditions::find(&status.conditions, READY).is_some_and(|c| STICKY_FAILURES.contains(&c.reason.as_str()))
}

/// Where the running environment's services stand against its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Services {
    /// The instance runs what the spec asks for.
    Applied,
    /// An edit of `spec.services` waits for the bootstrap or is being rolled out.
    Updating { message: String },
    /// The last edit did not apply (the instance said so, or never said).
    Failed { message: String },
}

/// Where an environment's sleep stands (see `sleep`), when it sleeps or wakes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SleepState {
    /// Stop requests sent; instance or database not stopped yet.
    FallingAsleep { message: String },
    /// Instance and database stopped.
    Asleep { message: String },
    /// Starting them again, then the services; `reason` says which step.
    Waking { reason: &'static str, message: String },
    /// The instance reported that its services did not come back.
    WakeFailed { message: String },
}

/// Inputs to [`next_status`] besides the observations.
pub struct StatusInputs<'a> {
    pub generation: Option<i64>,
    pub now: Timestamp,
    pub expires_at: Timestamp,
    pub readiness_timeout: std::time::Duration,
    /// Whether what the inventory shows of AWS is recent enough to judge by; while
    /// it is not, no readiness timeout is counted (the instance may well be ready).
    pub cloud_view_fresh: bool,
    pub endpoints: &'a BTreeMap<String, String>,
    pub namespace: &'a str,
    pub name: &'a str,
    pub services: Services,
    /// Set while the environment sleeps or wakes; decides the phase.
    pub sleep: Option<SleepState>,
}

/// The next status: phase, the three conditions, instance details, endpoints and
/// readiness timestamps. A failure in [`STICKY_FAILURES`] stays.
pub fn next_status(
    current: &FeatureEnvironmentStatus,
    observed: &Observed<'_>,
    inputs: &StatusInputs<'_>,
) -> FeatureEnvironmentStatus {
    let mut status = current.clone();
    let generation = inputs.generation;
    let now = inputs.now;
    // A generation is observed once all of it is applied: an edit of the services
    // only when the instance runs them.
    if inputs.services == Services::Applied {
        status.observed_generation = generation;
    }
    status.expires_at = Some(inputs.expires_at.to_string());

    record_observations(&mut status, observed, inputs);
    let (instance, database) = set_half_conditions(&mut status, observed, generation, now);
    decide_phase(&mut status, current, observed, inputs, instance, database);
    status
}

/// Copies what was observed of the instance and the database into the status.
fn record_observations(status: &mut FeatureEnvironmentStatus, observed: &Observed<'_>, inputs: &StatusInputs<'_>) {
    let now = inputs.now;
    if let Some(i) = observed.instance {
        let ami = status
            .instance
            .as_ref()
            .and_then(|s| s.ami_id.clone())
            .or_else(|| Some(i.image_id.clone()));
        let start = status.instance.as_ref().and_then(|s| s.start);
        status.instance = Some(InstanceStatus {
            start,
            id: Some(i.id.clone()),
            instance_type: Some(i.instance_type.clone()),
            ami_id: ami,
            public_ip: i.public_ip.clone(),
            public_dns: i.public_dns.clone(),
            private_ip: i.private_ip.clone(),
            state: Some(i.state.as_str().to_owned()),
        });
        if status.launched_at.is_none() {
            status.launched_at = Some(i.launched_at.unwrap_or(now).to_string());
        }
        status.endpoints = render_endpoints(inputs.endpoints, i, inputs.namespace, inputs.name);
    }
    if let Some(DatabaseObservation::Claimed { database, .. } | DatabaseObservation::SecretConflict { database, .. }) =
        &observed.database
    {
        let db = status.database.get_or_insert_with(Default::default);
        db.id = Some(database.id.clone());
        db.endpoint = database.endpoint.clone();
        db.port = database.port;
        db.snapshot = database
            .tags
            .get(tag::SNAPSHOT)
            .map(|v| crate::naming::snapshot_from_tag(v));
    }
}

/// Sets InstanceReady and DatabaseReady; returns both halves' readiness.
fn set_half_conditions(
    status: &mut FeatureEnvironmentStatus,
    observed: &Observed<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> (Result<(), NotReady>, Result<(), NotReady>) {
    let instance = instance_readiness(observed.instance).and_then(|()| match &observed.personalisation {
        None => Ok(()),
        Some(Personalisation::InProgress { message }) => Err(NotReady {
            reason: "Personalising",
            message: message.clone(),
        }),
        Some(Personalisation::Failed { message }) => Err(NotReady {
            reason: "PersonalisationFailed",
            message: message.clone(),
        }),
    });
    let database = database_readiness(observed.database.as_ref());
    let cond = |r: &Result<(), NotReady>, type_, ok_reason: &str, ok_message: &str| match r {
        Ok(()) => ConditionUpdate::new(type_, true, ok_reason, ok_message),
        Err(nr) => ConditionUpdate::new(type_, false, nr.reason, nr.message.clone()),
    };
    set_condition(
        &mut status.conditions,
        cond(
            &instance,
            INSTANCE_READY,
            "BootstrapComplete",
            "instance running and bootstrapped",
        ),
        generation,
        now,
    );
    let db_ok_message = if observed.database.is_some() {
        "database available and credentials handed out"
    } else {
        "the class requests no database"
    };
    let db_ok_reason = if observed.database.is_some() {
        "Available"
    } else {
        "NotRequested"
    };
    set_condition(
        &mut status.conditions,
        cond(&database, DATABASE_READY, db_ok_reason, db_ok_message),
        generation,
        now,
    );
    (instance, database)
}

/// What holds a provisioning environment up, for its Ready condition.
fn holding_up(instance: Result<(), NotReady>, database: Result<(), NotReady>) -> NotReady {
    match (instance, database) {
        // The bootstrap script waits for the database parameter, so while the pool has
        // no spare, or the credentials cannot be written, that holds the instance up too.
        (Err(_), Err(db)) if db.reason == "PoolExhausted" || db.reason == "SecretConflict" => db,
        (Err(i), _) => i,
        (Ok(()), Err(db)) => db,
        (Ok(()), Ok(())) => unreachable!("not ready means one half is not ready"),
    }
}

/// Sets the phase and the Ready condition from both halves, the readiness deadline
/// and whether the environment already failed for good.
fn decide_phase(
    status: &mut FeatureEnvironmentStatus,
    current: &FeatureEnvironmentStatus,
    observed: &Observed<'_>,
    inputs: &StatusInputs<'_>,
    instance: Result<(), NotReady>,
    database: Result<(), NotReady>,
) {
    let (generation, now) = (inputs.generation, inputs.now);
    let launched_at: Option<Timestamp> = status.launched_at.as_deref().and_then(|t| t.parse().ok());
    let timed_out = inputs.cloud_view_fresh
        && launched_at.is_some_and(|at| {
            let deadline =
                at.checked_add(SignedDuration::try_from(inputs.readiness_timeout).unwrap_or(SignedDuration::MAX));
            deadline.is_ok_and(|d| now >= d)
        });
    let already_failed = failed_for_good(current);
    let ready = instance.is_ok() && database.is_ok();
    let with_console = |message: String| match &observed.console_tail {
        Some(tail) if !tail.is_empty() => format!("{message}; console output:\n{tail}"),
        _ => message,
    };

    if already_failed {
        // Keep the failure reason and message as they were.
        status.phase = Phase::Failed;
    } else if let Some(sleep) = &inputs.sleep {
        let (phase, reason, message) = match sleep {
            SleepState::FallingAsleep { message } => (Phase::Sleeping, "FallingAsleep", message.clone()),
            SleepState::Asleep { message } => (Phase::Sleeping, "Asleep", message.clone()),
            SleepState::Waking { reason, message } => (Phase::Waking, *reason, message.clone()),
            SleepState::WakeFailed { message } => (Phase::Failed, "WakeFailed", with_console(message.clone())),
        };
        status.phase = phase;
        set_condition(
            &mut status.conditions,
            ConditionUpdate::new(READY, false, reason, message),
            generation,
            now,
        );
    } else if let Err(
        nr @ NotReady {
            reason: "BootstrapFailed" | "PersonalisationFailed",
            ..
        },
    ) = &instance
    {
        status.phase = Phase::Failed;
        set_condition(
            &mut status.conditions,
            ConditionUpdate::new(READY, false, nr.reason, with_console(nr.message.clone())),
            generation,
            now,
        );
    } else if ready {
        status.lost_instances = 0;
        if status.ready_at.is_none() {
            status.ready_at = Some(now.to_string());
        }
        let (phase, update) = match &inputs.services {
            Services::Applied => (
                Phase::Ready,
                ConditionUpdate::new(READY, true, "Ready", "instance bootstrapped and database available"),
            ),
            Services::Updating { message } => (
                Phase::Updating,
                ConditionUpdate::new(READY, false, "Updating", message.clone()),
            ),
            Services::Failed { message } => (
                Phase::Failed,
                ConditionUpdate::new(READY, false, "UpdateFailed", with_console(message.clone())),
            ),
        };
        status.phase = phase;
        set_condition(&mut status.conditions, update, generation, now);
    } else if timed_out && status.ready_at.is_none() {
        status.phase = Phase::Failed;
        let waiting = instance.as_ref().err().or(database.as_ref().err());
        let waiting = waiting.map(|nr| nr.message.clone()).unwrap_or_default();
        let limit = crate::api::duration::format_duration(inputs.readiness_timeout);
        let message = format!("not ready within {limit} ({waiting})");
        set_condition(
            &mut status.conditions,
            ConditionUpdate::new(READY, false, "BootstrapTimeout", with_console(message)),
            generation,
            now,
        );
    } else {
        status.phase = Phase::Provisioning;
        let nr = holding_up(instance, database);
        set_condition(
            &mut status.conditions,
            ConditionUpdate::new(READY, false, nr.reason, nr.message),
            generation,
            now,
        );
    }
}

/// Status for an environment that cannot be provisioned as specified: `Pending`
/// before launch, `Failed` after (until the spec or class is fixed, or it expires;
/// a failure for good keeps its reason).
pub fn invalid_status(
    current: &FeatureEnvironmentStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> FeatureEnvironmentStatus {
    let mut status = current.clone();
    status.observed_generation = generation;
    if failed_for_good(current) {
        return status;
    }
    let launched = status.instance.as_ref().is_some_and(|i| i.id.is_some());
    status.phase = if launched { Phase::Failed } else { Phase::Pending };
    set_condition(
        &mut status.conditions,
        ConditionUpdate::new(READY, false, reason, message),
        generation,
        now,
    );
    status
}

/// Whether the environment became Ready for the first time with this status (for
/// the time-to-ready metric, which counts from creation): back to Ready after an
/// update or a wake-up does not count again.
pub fn became_ready(before: &FeatureEnvironmentStatus, after: &FeatureEnvironmentStatus) -> bool {
    before.ready_at.is_none()
        && after.ready_at.is_some()
        && after.phase == Phase::Ready
        && conditions::is_true(&after.conditions, READY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Tags;

    fn instance(state: InstanceState, bootstrap: Option<&str>) -> Instance {
        let mut tags = Tags::new();
        if let Some(b) = bootstrap {
            tags.insert(tag::BOOTSTRAP.into(), b.into());
        }
        Instance {
            id: "i-1".into(),
            arn: "arn:aws:ec2:us-east-1:123456789012:instance/i-1".into(),
            instance_type: "t3.xlarge".into(),
            image_id: "ami-1".into(),
            state,
            public_ip: Some("54.1.2.3".into()),
            public_dns: None,
            private_ip: Some("10.0.0.7".into()),
            launched_at: Some("2026-11-28T10:00:00Z".parse().unwrap()),
            tags,
        }
    }

    fn database(status: DatabaseStatus) -> Database {
        Database {
            id: "fe-integration-x-0".into(),
            arn: "arn".into(),
            status,
            endpoint: Some("db.example".into()),
            port: Some(5432),
            master_username: Some("postgres".into()),
            created_at: None,
            tags: Tags::new(),
        }
    }

    fn inputs<'a>(now: &str, endpoints: &'a BTreeMap<String, String>) -> StatusInputs<'a> {
        StatusInputs {
            generation: Some(1),
            now: now.parse().unwrap(),
            expires_at: "2026-11-28T18:00:00Z".parse().unwrap(),
            readiness_timeout: std::time::Duration::from_secs(20 * 60),
            cloud_view_fresh: true,
            endpoints,
            namespace: "team",
            name: "pr-1",
            services: Services::Applied,
            sleep: None,
        }
    }

    /// An edit of the services keeps a ready environment `Updating` (Ready=False) and
    /// its observedGeneration where it was until the instance runs them.
    #[test]
    fn an_update_in_flight_holds_the_generation_back() {
        let endpoints = BTreeMap::new();
        let booted = instance(InstanceState::Running, Some(tag::BOOTSTRAP_COMPLETE));
        let obs = Observed {
            instance: Some(&booted),
            database: None,
            console_tail: None,
            personalisation: None,
        };
        let ready = next_status(&Default::default(), &obs, &inputs("2026-11-28T10:01:00Z", &endpoints));
        assert_eq!((ready.phase, ready.observed_generation), (Phase::Ready, Some(1)));
        let edited = StatusInputs {
            generation: Some(2),
            services: Services::Updating {
                message: "rolling out payments".into(),
            },
            ..inputs("2026-11-28T10:02:00Z", &endpoints)
        };
        let updating = next_status(&ready, &obs, &edited);
        assert_eq!(updating.phase, Phase::Updating);
        assert_eq!(updating.observed_generation, Some(1));
        let condition = conditions::find(&updating.conditions, READY).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "Updating")
        );
        let failed = StatusInputs {
            generation: Some(2),
            services: Services::Failed {
                message: "instance i-1 reported that the services update failed".into(),
            },
            ..inputs("2026-11-28T10:03:00Z", &endpoints)
        };
        let failed = next_status(&updating, &obs, &failed);
        assert_eq!(failed.phase, Phase::Failed);
        assert_eq!(
            conditions::find(&failed.conditions, READY).unwrap().reason,
            "UpdateFailed"
        );
        assert!(!failed_for_good(&failed), "a later edit can still fix it");
        let applied = StatusInputs {
            generation: Some(2),
            ..inputs("2026-11-28T10:04:00Z", &endpoints)
        };
        let applied = next_status(&failed, &obs, &applied);
        assert_eq!((applied.phase, applied.observed_generation), (Phase::Ready, Some(2)));
    }

    #[test]
    fn provisioning_then_ready() {
        let endpoints = BTreeMap::from([("api".to_string(), "http://{publicIp}/{namespace}/{name}".to_string())]);
        let booting = instance(InstanceState::Running, None);
        let db = database(DatabaseStatus::Available);
        let obs = Observed {
            instance: Some(&booting),
            database: Some(DatabaseObservation::Claimed {
                database: &db,
                credentials_ready: true,
            }),
            console_tail: None,
            personalisation: None,
        };
        let s1 = next_status(&Default::default(), &obs, &inputs("2026-11-28T10:01:00Z", &endpoints));
        assert_eq!(s1.phase, Phase::Provisioning);
        assert_eq!(conditions::find(&s1.conditions, READY).unwrap().reason, "Bootstrapping");
        assert!(conditions::is_true(&s1.conditions, DATABASE_READY));
        assert_eq!(s1.endpoints["api"], "http://54.1.2.3/team/pr-1");

        let done = instance(InstanceState::Running, Some("complete"));
        let obs = Observed {
            instance: Some(&done),
            ..obs
        };
        let s2 = next_status(&s1, &obs, &inputs("2026-11-28T10:03:00Z", &endpoints));
        assert_eq!(s2.phase, Phase::Ready);
        assert_eq!(s2.ready_at.as_deref(), Some("2026-11-28T10:03:00Z"));
        assert!(became_ready(&s1, &s2));
        // A later pass keeps readyAt.
        let s3 = next_status(&s2, &obs, &inputs("2026-11-28T10:09:00Z", &endpoints));
        assert_eq!(s3.ready_at, s2.ready_at);
        assert!(!became_ready(&s2, &s3));
        // Back to Ready after an update or a wake-up is not a first time.
        for phase in [Phase::Updating, Phase::Waking] {
            let away = FeatureEnvironmentStatus { phase, ..s2.clone() };
            assert!(!became_ready(&away, &s3), "{phase:?} → Ready counted as a first Ready");
        }
    }

    #[test]
    fn timeout_fails_with_console_tail_and_sticks() {
        let endpoints = BTreeMap::new();
        let booting = instance(InstanceState::Running, None);
        let obs = Observed {
            instance: Some(&booting),
            database: None,
            console_tail: Some("pulling images...".into()),
            personalisation: None,
        };
        let s = next_status(&Default::default(), &obs, &inputs("2026-11-28T10:30:00Z", &endpoints));
        assert_eq!(s.phase, Phase::Failed);
        let ready = conditions::find(&s.conditions, READY).unwrap();
        assert_eq!(ready.reason, "BootstrapTimeout");
        assert!(ready.message.contains("pulling images..."));
        // Even if it finishes later, Failed stays.
        let done = instance(InstanceState::Running, Some("complete"));
        let s2 = next_status(
            &s,
            &Observed {
                instance: Some(&done),
                database: None,
                console_tail: None,
                personalisation: None,
            },
            &inputs("2026-11-28T10:31:00Z", &endpoints),
        );
        assert_eq!(s2.phase, Phase::Failed);
    }

    #[test]
    fn bootstrap_failure_and_pool_exhaustion_have_reasons() {
        let endpoints = BTreeMap::new();
        let failed = instance(InstanceState::Running, Some("failed"));
        let s = next_status(
            &Default::default(),
            &Observed {
                instance: Some(&failed),
                database: None,
                console_tail: None,
                personalisation: None,
            },
            &inputs("2026-11-28T10:01:00Z", &endpoints),
        );
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(
            conditions::find(&s.conditions, READY).unwrap().reason,
            "BootstrapFailed"
        );

        let done = instance(InstanceState::Running, Some("complete"));
        let obs = Observed {
            instance: Some(&done),
            database: Some(DatabaseObservation::PoolExhausted {
                pool: "integration".into(),
            }),
            console_tail: None,
            personalisation: None,
        };
        let s = next_status(&Default::default(), &obs, &inputs("2026-11-28T10:01:00Z", &endpoints));
        assert_eq!(s.phase, Phase::Provisioning);
        assert_eq!(conditions::find(&s.conditions, READY).unwrap().reason, "PoolExhausted");
        assert_eq!(
            conditions::find(&s.conditions, DATABASE_READY).unwrap().reason,
            "PoolExhausted"
        );
    }

    /// With the real bootstrap, an instance waits for its database parameter, so an
    /// exhausted pool keeps it `Bootstrapping`: the Ready reason names the pool, the
    /// cause, rather than the instance.
    #[test]
    fn an_exhausted_pool_is_the_ready_reason_while_the_instance_waits_for_it() {
        let endpoints = BTreeMap::new();
        let booting = instance(InstanceState::Running, None);
        let obs = Observed {
            instance: Some(&booting),
            database: Some(DatabaseObservation::PoolExhausted {
                pool: "integration".into(),
            }),
            console_tail: None,
            personalisation: None,
        };
        let s = next_status(&Default::default(), &obs, &inputs("2026-11-28T10:01:00Z", &endpoints));
        assert_eq!(s.phase, Phase::Provisioning);
        assert_eq!(conditions::find(&s.conditions, READY).unwrap().reason, "PoolExhausted");
        assert_eq!(
            conditions::find(&s.conditions, INSTANCE_READY).unwrap().reason,
            "Bootstrapping"
        );
    }

    /// A launched environment whose spec went bad is Failed until the spec is fixed;
    /// then it is Ready again (a bootstrap failure, by contrast, stays).
    #[test]
    fn a_failure_from_an_invalid_spec_clears_once_fixed() {
        let endpoints = BTreeMap::new();
        let i = instance(InstanceState::Running, Some(tag::BOOTSTRAP_COMPLETE));
        let db = database(DatabaseStatus::Available);
        let observed = Observed {
            instance: Some(&i),
            database: Some(DatabaseObservation::Claimed {
                database: &db,
                credentials_ready: true,
            }),
            console_tail: None,
            personalisation: None,
        };
        let ready = next_status(
            &Default::default(),
            &observed,
            &inputs("2026-11-28T10:05:00Z", &endpoints),
        );
        let t = "2026-11-28T10:06:00Z".parse().unwrap();
        let invalid = invalid_status(&ready, "TTLExceedsMaximum", "spec.ttl: 100h", Some(2), t);
        assert_eq!(invalid.phase, Phase::Failed);
        let fixed = next_status(&invalid, &observed, &inputs("2026-11-28T10:07:00Z", &endpoints));
        assert_eq!(fixed.phase, Phase::Ready);

        let mut failed = ready.clone();
        failed.phase = Phase::Failed;
        set_condition(
            &mut failed.conditions,
            ConditionUpdate::new(READY, false, "BootstrapFailed", "x"),
            Some(1),
            t,
        );
        let still = next_status(&failed, &observed, &inputs("2026-11-28T10:07:00Z", &endpoints));
        assert_eq!(still.phase, Phase::Failed);
        let invalid = invalid_status(&failed, "TTLExceedsMaximum", "spec.ttl: 100h", Some(2), t);
        assert_eq!(
            conditions::find(&invalid.conditions, READY).unwrap().reason,
            "BootstrapFailed"
        );
    }

    #[test]
    fn invalid_spec_without_resources_stays_pending() {
        let s = invalid_status(
            &Default::default(),
            "ClassNotFound",
            "spec.className: x",
            Some(1),
            "2026-11-28T10:00:00Z".parse().unwrap(),
        );
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(conditions::find(&s.conditions, READY).unwrap().reason, "ClassNotFound");
    }
}
