//! The FeatureEnvironment controller. A reconcile is a fixed pipeline:
//! expiry first (it never depends on the spec or the class being valid) →
//! dereference (class, AMI, digests, instance: `dereference`) → validate (pure:
//! `validate`) → act (admission, a spare of the warm pool or a launch, the database
//! claim, hand-out: `warm`, `act`, each idempotent) →
//! status (pure: `status`) written once (`report`) → when to look again (pure:
//! `schedule`). Cleanup behind the `featureenv.io/cleanup` finalizer (`cleanup`)
//! needs only the uid and the status, so it works whatever became of the spec.

mod act;
mod cleanup;
mod dereference;
mod report;
mod schedule;
mod sleep;
pub mod status;
mod update;
pub mod validate;
mod warm;

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use tracing::info;

use self::act::DbOutcome;
use self::dereference::InstanceSight;
use self::status::{DatabaseObservation, Observed, Services, StatusInputs, next_status};
use self::validate::{Invalid, Resolved};
use super::{Context, Error, Result, instrumented};
use crate::api::conditions::{ConditionUpdate, READY, set_condition};
use crate::api::environment::{FeatureEnvironmentStatus, InstanceStatus, Phase, Start};
use crate::api::{FINALIZER, FeatureEnvironment, FeatureEnvironmentClass};
use crate::cloud::Instance;
use crate::naming;

pub use self::dereference::{digest as image_digest, newest_image};

pub const CONTROLLER: &str = "featureenvironment";

/// Instances lost in a row before an environment is `Failed` instead of given
/// another.
pub const LOSSES_BEFORE_FAILING: u32 = 3;

pub async fn reconcile(env: Arc<FeatureEnvironment>, ctx: Arc<Context>) -> Result<Action> {
    instrumented(env.clone(), ctx.clone(), CONTROLLER, async {
        let namespace = env.namespace().ok_or(Error::InvalidObject("metadata.namespace"))?;
        let api: Api<FeatureEnvironment> = Api::namespaced(ctx.client.clone(), &namespace);
        let env = act::mark(&api, env).await?;
        finalizer(&api, FINALIZER, env, |event| async {
            match event {
                Finalizer::Apply(env) => apply(&env, &ctx).await,
                Finalizer::Cleanup(env) => cleanup::cleanup(&env, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await
}

pub fn error_policy(env: Arc<FeatureEnvironment>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(env, error, ctx, CONTROLLER)
}

/// Names an object for logs and tags.
struct Identity {
    uid: String,
    namespace: String,
    name: String,
    key: String,
}

fn identity(env: &FeatureEnvironment) -> Result<Identity> {
    let uid = env.uid().ok_or(Error::InvalidObject("metadata.uid"))?;
    let namespace = env.namespace().ok_or(Error::InvalidObject("metadata.namespace"))?;
    let name = env.name_any();
    let key = naming::environment_key(&namespace, &name);
    Ok(Identity {
        uid,
        namespace,
        name,
        key,
    })
}

/// What a pass works from once the spec is valid: the object, its class and the
/// plan validation made of them, at one instant.
#[derive(Clone, Copy)]
struct Pass<'a> {
    ctx: &'a Context,
    env: &'a FeatureEnvironment,
    id: &'a Identity,
    class: &'a FeatureEnvironmentClass,
    resolved: &'a Resolved,
    now: Timestamp,
}

/// One pass of the pipeline for an environment that is not being deleted.
async fn apply(env: &FeatureEnvironment, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    let id = identity(env)?;
    let api: Api<FeatureEnvironment> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let created = env.creation_timestamp().map_or(now, |t| t.0);
    let cached = env.status.clone().unwrap_or_default();
    let current = ctx
        .memory
        .current_status(&id.uid, env.resource_version().as_deref(), cached);

    let class = dereference::class(ctx, env);
    let plan = validate::resolve(&env.spec, class.as_deref(), created);
    let recorded = current.expires_at.as_deref();
    let expires_at = validate::expires_at(plan.as_ref(), recorded, env.spec.ttl.as_deref(), created);
    if let Some(at) = expires_at.filter(|at| now >= *at) {
        return expire(ctx, &api, env, &id, at).await;
    }
    let refuse = async |invalid: Invalid| {
        report::refuse(ctx, &api, env, &current, &invalid, expires_at).await?;
        let wake = schedule::wake_for_problem(&invalid, expires_at, now);
        Ok(wake.map_or_else(Action::await_change, Action::requeue))
    };
    let (resolved, class) = match (plan, class) {
        (Ok(resolved), Some(class)) => (resolved, class),
        (Err(invalid), _) => return refuse(invalid).await,
        (Ok(_), None) => unreachable!("validation fails without a class"),
    };

    let pass = Pass {
        ctx,
        env,
        id: &id,
        class: &class,
        resolved: &resolved,
        now,
    };
    let mut status = current.clone();
    status.expires_at = Some(resolved.expires_at.to_string());
    if let Err(invalid) = pin_image_and_digests(ctx, env, &class, &resolved, &mut status).await? {
        return refuse(invalid).await;
    }
    let observed = match dereference::instance(ctx, &id, &status, now).await? {
        InstanceSight::Live(instance) => Some(instance),
        InstanceSight::NotLaunched => None,
        InstanceSight::Lost { id: lost, state } => {
            let next = act::replace_lost_instance(ctx, env, &id, &status, &lost, &state, now).await;
            report::write(ctx, &api, env, &id, &current, &next).await?;
            return Ok(Action::requeue(std::time::Duration::from_millis(100)));
        }
    };
    if observed.is_none() && status.launch_token.is_none() {
        let admitted = match act::check_user_data(&pass, &status) {
            Ok(()) => act::admit(&pass, &api, &mut status).await?,
            Err(invalid) => Err(invalid),
        };
        if let Err(invalid) = admitted {
            return refuse(invalid).await;
        }
    }

    match &observed {
        Some(instance) => warm::adopt(&pass, &mut status, instance).await,
        None if status.instance.as_ref().and_then(|i| i.start).is_none() => {
            if !warm::eligible(&pass) {
                status.instance.get_or_insert_with(Default::default).start = Some(Start::Cold);
            } else {
                match warm::claim(&pass, &status).await? {
                    warm::Claim::Pending => {
                        let mut next = status.clone();
                        next.phase = Phase::Provisioning;
                        let message = format!("claiming a spare of class {}'s warm pool", resolved.class_name);
                        let update = ConditionUpdate::new(READY, false, "ClaimingInstance", message);
                        set_condition(&mut next.conditions, update, env.metadata.generation, now);
                        report::write(ctx, &api, env, &id, &current, &next).await?;
                        return Ok(Action::requeue(ctx.config.fast_poll_interval));
                    }
                    warm::Claim::NoSpare => {
                        status.instance.get_or_insert_with(Default::default).start = Some(Start::Cold);
                        // Written before the launch: a restarted operator must not
                        // also claim a spare for it.
                        report::patch_status(ctx, &api, env, &status).await?;
                    }
                }
            }
        }
        None => {}
    }

    let launch = act::instance(&pass, &status, observed);
    let claim = act::database(&pass, &status);
    let (instance, database) = match tokio::join!(launch, claim) {
        (Ok(instance), Ok(database)) => (instance, database),
        (Err(e), _) | (_, Err(e)) => return Err(report::cloud_failure(ctx, &api, env, &id, &current, &status, e).await),
    };
    act::bind_parameter(ctx, &id, &status, &instance, &database).await?;
    let personalisation = warm::personalise(&pass, &mut status, &instance).await?;
    if let Some(outcome) = &database {
        act::record_database(ctx, &id, &mut status, outcome);
    }
    let desire = match sleep::desire(
        env.spec.sleeping,
        class.spec.sleep.as_ref(),
        &resolved.class_name,
        created,
        now,
    ) {
        Ok(desire) => desire,
        Err(invalid) => return refuse(invalid).await,
    };
    sleep::record(&mut status, desire.as_ref());
    let sleeping = sleep::step(&pass, &mut status, &instance, database.as_ref()).await?;
    let services = match &sleeping {
        // Asleep or waking: an edit of the services is applied once awake.
        Some(_) if status.services_token.as_deref() == Some(update::wanted_token(&resolved).as_str()) => {
            Services::Applied
        }
        Some(_) => Services::Updating {
            message: "spec.services changed; the update follows the wake-up".into(),
        },
        None => match update::services(&pass, &mut status, &instance).await? {
            Ok(services) => services,
            Err(invalid) => return refuse(invalid).await,
        },
    };
    let steps = Steps {
        services,
        sleep: sleeping,
        personalisation,
    };
    let next = settle(&pass, &status, &current, &instance, &database, steps).await;
    report::write(ctx, &api, env, &id, &current, &next).await?;
    let fast_poll = ctx.config.fast_poll_interval;
    let timeout = resolved.readiness_timeout;
    let wake = schedule::next_wake(&next, resolved.expires_at, timeout, now, &database, fast_poll);
    Ok(Action::requeue(wake))
}

/// Deletes an expired environment; its finalizer's cleanup then removes the rest.
async fn expire(
    ctx: &Context,
    api: &Api<FeatureEnvironment>,
    env: &FeatureEnvironment,
    id: &Identity,
    at: Timestamp,
) -> Result<Action> {
    info!(namespace = %id.namespace, name = %id.name, "TTL expired; deleting");
    ctx.event(env, EventType::Normal, "Expired", format!("TTL expired at {at}"))
        .await;
    match api.delete(&id.name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// Resolves the AMI and the image digests once and records them: they never drift
/// for this environment.
async fn pin_image_and_digests(
    ctx: &Context,
    env: &FeatureEnvironment,
    class: &FeatureEnvironmentClass,
    resolved: &Resolved,
    status: &mut FeatureEnvironmentStatus,
) -> Result<Result<(), Invalid>> {
    if status.instance.as_ref().and_then(|i| i.ami_id.as_ref()).is_none() {
        match dereference::newest_image(ctx, class, &resolved.class_name).await? {
            Ok(image) => status.instance.get_or_insert_with(InstanceStatus::default).ami_id = Some(image.id),
            Err(invalid) => return Ok(Err(invalid)),
        }
    }
    if status.images.is_empty() {
        match dereference::images(ctx, resolved, env).await? {
            Ok(images) => {
                status.images = images;
                status.services_token = Some(update::wanted_token(resolved));
            }
            Err(invalid) => return Ok(Err(invalid)),
        }
    } else if status.services_token.is_none() {
        // Pinned by a version that recorded no token: take what runs as applied.
        status.services_token = Some(update::wanted_token(resolved));
    }
    Ok(Ok(()))
}

/// Where the steps after the launch stand: the services, a sleep, a spare's
/// personalisation.
struct Steps {
    services: Services,
    sleep: Option<status::SleepState>,
    personalisation: Option<status::Personalisation>,
}

/// The status this pass arrives at, quoting the console when bootstrap failed or
/// timed out.
async fn settle(
    pass: &Pass<'_>,
    status: &FeatureEnvironmentStatus,
    current: &FeatureEnvironmentStatus,
    instance: &Instance,
    database: &Option<DbOutcome>,
    steps: Steps,
) -> FeatureEnvironmentStatus {
    let Steps {
        services,
        sleep,
        personalisation,
    } = steps;
    let Pass {
        ctx,
        env,
        id,
        class,
        resolved,
        now,
    } = *pass;
    let inputs = StatusInputs {
        generation: env.metadata.generation,
        now,
        expires_at: resolved.expires_at,
        readiness_timeout: resolved.readiness_timeout,
        cloud_view_fresh: ctx
            .inventory
            .is_fresh(std::time::Instant::now(), ctx.config.inventory_stale_after),
        endpoints: &class.spec.endpoints,
        namespace: &id.namespace,
        name: &id.name,
        services,
        sleep,
    };
    let mut observed = Observed {
        instance: Some(instance),
        database: database.as_ref().map(observation),
        console_tail: None,
        personalisation,
    };
    let draft = next_status(status, &observed, &inputs);
    if draft.phase != Phase::Failed {
        return draft;
    }
    if current.phase != Phase::Failed {
        observed.console_tail = act::console_tail(ctx, &instance.id).await;
    }
    // Also after a restart: the inventory's fast poll no longer waits for it.
    ctx.inventory.give_up_on(&instance.id);
    next_status(status, &observed, &inputs)
}

fn observation(outcome: &DbOutcome) -> DatabaseObservation<'_> {
    match outcome {
        DbOutcome::Claimed {
            database,
            credentials_ready,
            ..
        } => DatabaseObservation::Claimed {
            database,
            credentials_ready: *credentials_ready,
        },
        DbOutcome::Exhausted(pool) => DatabaseObservation::PoolExhausted { pool: pool.clone() },
        DbOutcome::Claiming => DatabaseObservation::Claiming,
        DbOutcome::SecretConflict { database, secret } => DatabaseObservation::SecretConflict {
            database,
            secret: secret.clone(),
        },
    }
}
