//! The FeatureEnvironment controller. A reconcile is a fixed pipeline:
//! observe (class, inventory) → validate (pure `resolve`) → act (resolve the AMI and
//! image digests once, persist the launch token, launch and claim in parallel, hand
//! out credentials) → status (pure `next_status`, one server-side-apply patch).
//! Cleanup behind the `featureenv.io/cleanup` finalizer needs only the uid and the
//! status, so it works whatever became of the spec or the class.

pub mod resolve;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use self::resolve::{Resolved, ServiceImage, resolve};
use self::status::{DatabaseObservation, Observed, StatusInputs, became_ready, invalid_status, next_status};
use super::claim::{ClaimOutcome, claim_database, hand_out_credentials};
use super::{Context, Error, FIELD_MANAGER, Result, instrumented};
use crate::api::environment::{
    DatabaseStatus as DatabaseStatusField, DeployedImage, FeatureEnvironmentStatus, InstanceStatus, Phase,
};
use crate::api::{DEFAULT_CLASS_ANNOTATION, FINALIZER, FeatureEnvironment, FeatureEnvironmentClass};
use crate::bootstrap::{self, BootstrapSpec};
use crate::cloud::{
    CloudError, Database, DatabaseStatus, ImageSelectorTerm, Instance, InstanceState, LaunchRequest, Tags, tag,
};
use crate::naming;

pub const CONTROLLER: &str = "featureenvironment";

/// Lines of console output quoted in a failure message.
const CONSOLE_TAIL_LINES: usize = 20;

pub async fn reconcile(env: Arc<FeatureEnvironment>, ctx: Arc<Context>) -> Result<Action> {
    instrumented(env.clone(), ctx.clone(), CONTROLLER, async {
        let namespace = env.namespace().ok_or(Error::InvalidObject("metadata.namespace"))?;
        let api: Api<FeatureEnvironment> = Api::namespaced(ctx.client.clone(), &namespace);
        finalizer(&api, FINALIZER, env, |event| async {
            match event {
                Finalizer::Apply(env) => apply(&env, &ctx).await,
                Finalizer::Cleanup(env) => cleanup(&env, &ctx).await,
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

async fn apply(env: &FeatureEnvironment, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    let id = identity(env)?;
    let api: Api<FeatureEnvironment> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let created = env.creation_timestamp().map_or(now, |t| t.0);
    let current = env.status.clone().unwrap_or_default();
    let generation = env.metadata.generation;

    // Observe.
    let class = find_class(ctx, env.spec.class_name.as_deref());

    // Validate.
    let resolved = match resolve(&env.spec, class.as_deref(), created) {
        Ok(r) => r,
        Err(invalid) => {
            write_invalid(ctx, &api, env, &current, invalid.reason, &invalid.message).await?;
            // Fixed by editing the environment or the class; both trigger a reconcile.
            return Ok(Action::await_change());
        }
    };
    let class = class.expect("resolve succeeded, so the class exists");

    if now >= resolved.expires_at {
        info!(namespace = %id.namespace, name = %id.name, "TTL expired; deleting");
        ctx.event(
            env,
            EventType::Normal,
            "Expired",
            format!("TTL expired at {}", resolved.expires_at),
        )
        .await;
        match api.delete(&id.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }

    let mut status = current.clone();
    status.expires_at = Some(resolved.expires_at.to_string());

    // Admission against the class's per-namespace cap, before anything is made.
    // Counting and writing the launch token happen under one lock, so concurrent
    // reconciles cannot all see room for one more and over-admit.
    let mut admission = None;
    if status.launch_token.is_none()
        && let Some(max) = class.spec.max_per_namespace
    {
        admission = Some(ctx.admissions.lock().await);
        let admitted = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|o| o.uid() != Some(id.uid.clone()))
            .filter(|o| o.status.as_ref().is_some_and(|s| s.launch_token.is_some()))
            .filter(|o| o.spec.class_name.as_deref().unwrap_or(&resolved.class_name) == resolved.class_name)
            .count();
        if admitted >= max as usize {
            let message = format!(
                "class {} allows {max} environments per namespace; {admitted} exist",
                resolved.class_name
            );
            write_invalid(ctx, &api, env, &current, "NamespaceLimitReached", &message).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }

    // The AMI is resolved once and recorded; it never drifts for this environment.
    if status.instance.as_ref().and_then(|i| i.ami_id.as_ref()).is_none() {
        match newest_image(ctx, &selector_terms(&class)).await? {
            Some(image) => {
                status.instance.get_or_insert_with(InstanceStatus::default).ami_id = Some(image.id);
            }
            None => {
                let message = format!(
                    "class {}: spec.ami.selectorTerms match no available image",
                    resolved.class_name
                );
                write_invalid(ctx, &api, env, &current, "NoMatchingImage", &message).await?;
                // A new image does not trigger a reconcile; look again later.
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
        }
    }

    // Image digests are resolved once; a missing repository creates nothing.
    if status.images.is_empty() {
        match resolve_images(ctx, &resolved, env).await {
            Ok(images) => status.images = images,
            Err(ImageProblem::Invalid(message)) => {
                write_invalid(ctx, &api, env, &current, "ImageNotFound", &message).await?;
                return Ok(Action::await_change());
            }
            Err(ImageProblem::Cloud(e)) => return Err(e.into()),
        }
    }

    // Exactly once: look for the instance first; persist the launch token before
    // RunInstances so a restarted operator looks it up instead of launching again.
    let mut instance = observe_instance(ctx, &id, &status).await?;
    if instance.is_none() && status.launch_token.is_none() {
        status.launch_token = Some(naming::launch_token(&id.uid, 0));
        status.phase = Phase::Provisioning;
        patch_status(&api, &id.name, &status).await?;
        drop(admission);
        ctx.event(
            env,
            EventType::Normal,
            "Provisioning",
            format!("launching {} from {}", resolved.instance_type, ami_of(&status)),
        )
        .await;
    }

    // Launch and claim in parallel.
    let launch = async {
        match instance.take() {
            Some(i) => Ok(i),
            None => launch_instance(ctx, env, &id, &class, &resolved, &status).await,
        }
    };
    let claim = database_part(ctx, env, &id, &resolved, &status);
    let (launched, database) = tokio::join!(launch, claim);

    let failure = match (&launched, &database) {
        (Err(e), _) | (_, Err(e)) => Some(e.category()),
        _ => None,
    };
    if let Some(reason) = failure {
        // Show the cloud's answer in the conditions, then back off via error_policy.
        let error = launched
            .as_ref()
            .err()
            .or(database.as_ref().err())
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut failed = status.clone();
        crate::api::conditions::set_condition(
            &mut failed.conditions,
            crate::api::conditions::ConditionUpdate::new(crate::api::conditions::READY, false, reason, error),
            generation,
            now,
        );
        if failed.phase == Phase::Pending {
            failed.phase = Phase::Provisioning;
        }
        if failed != current {
            patch_status(&api, &id.name, &failed).await?;
        }
        launched?;
        database?;
        unreachable!("one of them failed");
    }
    let instance = launched?;
    let database = database?;
    bind_parameter(ctx, &id, &status, &instance, &database).await?;

    if let Some(outcome) = &database {
        let field = status.database.get_or_insert_with(DatabaseStatusField::default);
        if let DbOutcome::Claimed {
            secret_name,
            credentials_ready,
            ..
        } = outcome
        {
            field.secret_name = Some(secret_name.clone());
            field.credentials_ready = *credentials_ready;
            field.parameter_name = Some(parameter_name(ctx, &id.uid));
        }
    }
    let observation = database.as_ref().map(|d| match d {
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
    });

    // Quote the console when bootstrap failed or is about to time out.
    let inputs = StatusInputs {
        generation,
        now,
        expires_at: resolved.expires_at,
        readiness_timeout: resolved.readiness_timeout,
        endpoints: &class.spec.endpoints,
        namespace: &id.namespace,
        name: &id.name,
    };
    let mut observed = Observed {
        instance: Some(&instance),
        database: observation,
        console_tail: None,
    };
    let draft = next_status(&status, &observed, &inputs);
    if draft.phase == Phase::Failed {
        if current.phase != Phase::Failed {
            observed.console_tail = console_tail(ctx, &instance.id).await;
        }
        // Also after a restart: the inventory's fast poll no longer waits for it.
        ctx.inventory.give_up_on(&instance.id);
    }
    let next = next_status(&status, &observed, &inputs);

    if next != current {
        patch_status(&api, &id.name, &next).await?;
    }
    record_transition(ctx, env, &id, &current, &next, created).await;

    Ok(Action::requeue(next_wake(
        &next,
        &resolved,
        now,
        &database,
        ctx.config.fast_poll_interval,
    )))
}

/// When to look again without a trigger: at expiry, at the readiness deadline,
/// soon while waiting for a pool spare or for a claim to be confirmed, and at worst
/// every five minutes.
fn next_wake(
    status: &FeatureEnvironmentStatus,
    resolved: &Resolved,
    now: Timestamp,
    database: &Option<DbOutcome>,
    fast_poll: Duration,
) -> Duration {
    let until = |t: Timestamp| Duration::try_from(t.duration_since(now)).unwrap_or_default();
    let mut wake = until(resolved.expires_at).min(Duration::from_secs(300));
    if status.phase == Phase::Provisioning
        && let Some(deadline) = status
            .launched_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .and_then(|t| {
                t.checked_add(jiff::SignedDuration::try_from(resolved.readiness_timeout).ok()?)
                    .ok()
            })
    {
        wake = wake.min(until(deadline) + Duration::from_millis(100));
    }
    if matches!(database, Some(DbOutcome::Exhausted(_))) {
        wake = wake.min(Duration::from_secs(5));
    }
    if matches!(database, Some(DbOutcome::Claiming)) {
        // The confirming poll triggers this environment; this is the fallback for a
        // lost claim, whose poll triggers the winner instead.
        wake = wake.min(fast_poll);
    }
    wake.max(Duration::from_millis(100))
}

async fn record_transition(
    ctx: &Context,
    env: &FeatureEnvironment,
    id: &Identity,
    before: &FeatureEnvironmentStatus,
    after: &FeatureEnvironmentStatus,
    created: Timestamp,
) {
    ctx.metrics.environment_phase(&id.uid, Some(after.phase));
    if before.phase == after.phase {
        return;
    }
    let reason = crate::api::conditions::find(&after.conditions, crate::api::conditions::READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default();
    info!(namespace = %id.namespace, name = %id.name, from = before.phase.as_str(), to = after.phase.as_str(), reason = %reason.0, "phase changed");
    match after.phase {
        Phase::Ready => {
            if became_ready(before, after) {
                let seconds = Timestamp::now().duration_since(created).as_secs_f64();
                ctx.metrics.time_to_ready(seconds);
            }
            let url = after.endpoints.get("api").cloned().unwrap_or_default();
            ctx.event(env, EventType::Normal, "Ready", format!("environment ready {url}"))
                .await;
        }
        Phase::Failed => ctx.event(env, EventType::Warning, &reason.0, reason.1).await,
        _ => {}
    }
}

/// Writes `Ready=False` for a spec that cannot be provisioned as it stands.
async fn write_invalid(
    ctx: &Context,
    api: &Api<FeatureEnvironment>,
    env: &FeatureEnvironment,
    current: &FeatureEnvironmentStatus,
    reason: &str,
    message: &str,
) -> Result<()> {
    let next = invalid_status(current, reason, message, env.metadata.generation, Timestamp::now());
    if &next != current {
        warn!(namespace = env.namespace().unwrap_or_default(), name = %env.name_any(), reason, message, "cannot provision");
        patch_status(api, &env.name_any(), &next).await?;
        ctx.event(env, EventType::Warning, reason, message.to_owned()).await;
    }
    if let Some(uid) = env.uid() {
        ctx.metrics.environment_phase(&uid, Some(next.phase));
    }
    Ok(())
}

/// One server-side-apply patch of the whole status with our field manager.
pub async fn patch_status(api: &Api<FeatureEnvironment>, name: &str, status: &FeatureEnvironmentStatus) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": "featureenv.io/v1alpha1",
        "kind": "FeatureEnvironment",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// The named class, or the default one, from the watched classes (listed in full
/// before any reconcile runs). A class created after the environment triggers its
/// reconcile through the watch.
fn find_class(ctx: &Context, name: Option<&str>) -> Option<Arc<FeatureEnvironmentClass>> {
    match name {
        Some(name) => ctx.classes.get(&ObjectRef::new(name)),
        None => ctx
            .classes
            .state()
            .into_iter()
            .find(|c| c.annotations().get(DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true")),
    }
}

fn selector_terms(class: &FeatureEnvironmentClass) -> Vec<ImageSelectorTerm> {
    class
        .spec
        .ami
        .selector_terms
        .iter()
        .map(|t| ImageSelectorTerm {
            id: t.id.clone(),
            name: t.name.clone(),
            // A name alone would match public images too, and anyone can publish a
            // newer one with a matching name; like Karpenter, default to our account.
            owner: t.owner.clone().or_else(|| t.name.as_ref().map(|_| "self".to_owned())),
            tags: t.tags.clone().unwrap_or_default(),
            ssm_parameter: t.ssm_parameter.clone(),
        })
        .collect()
}

/// The newest image for a selector, shared by every environment reconciled within
/// the cache's TTL.
async fn newest_image(ctx: &Context, terms: &[ImageSelectorTerm]) -> Result<Option<crate::cloud::Image>, CloudError> {
    ctx.images
        .get_or_fetch(&format!("{terms:?}"), || ctx.cloud.compute.resolve_image(terms))
        .await
}

/// A tag's digest, shared by the environments of a burst (see `Context::digests`).
async fn resolve_digest(ctx: &Context, repository: &str, tag: &str) -> Result<Option<String>, CloudError> {
    let key = format!("{repository}:{tag}");
    ctx.digests
        .get_or_fetch(&key, || ctx.cloud.registry.resolve_digest(repository, tag))
        .await
}

enum ImageProblem {
    Invalid(String),
    Cloud(CloudError),
}

/// Resolves every service's tag to a digest where the registry allows. A missing
/// repository or tag is reported against the field that named it.
async fn resolve_images(
    ctx: &Context,
    resolved: &Resolved,
    env: &FeatureEnvironment,
) -> Result<Vec<DeployedImage>, ImageProblem> {
    let mut images = Vec::with_capacity(resolved.services.len());
    for ServiceImage {
        name,
        image,
        overridden,
    } in &resolved.services
    {
        let digest = match (&image.digest, &image.tag) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(tag)) => match resolve_digest(ctx, &image.repository, tag).await {
                Ok(d) => d,
                Err(e) if e.is_not_found() => {
                    let field = if *overridden {
                        let i = env
                            .spec
                            .services
                            .iter()
                            .position(|s| &s.name == name)
                            .unwrap_or_default();
                        format!("spec.services[{i}].image")
                    } else {
                        let i = resolved
                            .services
                            .iter()
                            .position(|s| &s.name == name)
                            .unwrap_or_default();
                        format!("class {}: spec.services[{i}]", resolved.class_name)
                    };
                    return Err(ImageProblem::Invalid(format!(
                        "{field}: {}:{tag} not found in its registry",
                        image.repository
                    )));
                }
                Err(e) => return Err(ImageProblem::Cloud(e)),
            },
            (None, None) => None,
        };
        images.push(DeployedImage {
            name: name.clone(),
            image: image.pinned(digest.as_deref()),
        });
    }
    Ok(images)
}

/// The environment's live instance: from the inventory, or — when a launch may have
/// happened that the inventory has not seen yet — from one Describe by our uid tag.
async fn observe_instance(ctx: &Context, id: &Identity, status: &FeatureEnvironmentStatus) -> Result<Option<Instance>> {
    let mut known = ctx.inventory.read(|s| s.instances_of(&id.uid));
    if known.is_empty() && status.launch_token.is_some() {
        known = ctx
            .cloud
            .compute
            .find_instances(tag::UID, &id.uid)
            .await?
            .into_iter()
            .filter(|i| !i.state.is_gone())
            .collect();
        for i in &known {
            ctx.inventory.record_instance(i.clone());
        }
        if known.is_empty() && status.instance.as_ref().is_some_and(|i| i.id.is_some()) {
            // Launched (the id is in status) but not visible yet: EC2's eventual
            // consistency. Never launch a second one; wait for it to show.
            return Err(Error::Cloud(CloudError::NotFound {
                operation: "DescribeInstances",
                message: format!("instance of {} not visible yet", id.key),
            }));
        }
    }
    if known.len() > 1 {
        warn!(environment = %id.key, count = known.len(), "more than one live instance carries this environment's uid");
    }
    known.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
    Ok(known.into_iter().next())
}

fn ami_of(status: &FeatureEnvironmentStatus) -> String {
    status
        .instance
        .as_ref()
        .and_then(|i| i.ami_id.clone())
        .unwrap_or_default()
}

/// The instance profile lets an instance read only the parameter tagged with its own
/// ARN (docs/instance-profile-policy.json): tag it once the credentials are in it. An
/// environment that was Ready once has been read already; nothing to do after a restart.
async fn bind_parameter(
    ctx: &Context,
    id: &Identity,
    status: &FeatureEnvironmentStatus,
    instance: &Instance,
    database: &Option<DbOutcome>,
) -> Result<()> {
    let handed_out = matches!(
        database,
        Some(DbOutcome::Claimed {
            credentials_ready: true,
            ..
        })
    );
    if !handed_out || status.ready_at.is_some() || ctx.has_bound_parameter(&id.uid, &instance.id) {
        return Ok(());
    }
    let tags = Tags::from([(tag::INSTANCE.to_owned(), instance.arn.clone())]);
    ctx.cloud
        .parameters
        .tag_parameter(&parameter_name(ctx, &id.uid), &tags)
        .await?;
    ctx.parameter_bound(&id.uid, &instance.id);
    Ok(())
}

fn parameter_name(ctx: &Context, uid: &str) -> String {
    naming::database_parameter(&ctx.config.ssm_prefix, &ctx.config.cluster_id, uid)
}

async fn launch_instance(
    ctx: &Context,
    env: &FeatureEnvironment,
    id: &Identity,
    class: &FeatureEnvironmentClass,
    resolved: &Resolved,
    status: &FeatureEnvironmentStatus,
) -> Result<Instance> {
    let spec = BootstrapSpec {
        environment: id.key.clone(),
        region: ctx.config.region.clone().unwrap_or_default(),
        services: status
            .images
            .iter()
            .map(|i| bootstrap::ServiceImage {
                name: i.name.clone(),
                image: i.image.clone(),
            })
            .collect(),
        addons: resolved.addons.iter().map(|a| a.as_str().to_owned()).collect(),
        database_parameter: resolved.database_pool.as_ref().map(|_| parameter_name(ctx, &id.uid)),
        database_wait_seconds: resolved.readiness_timeout.as_secs(),
    };
    let mut tags: Tags = class.spec.instance.tags.clone();
    // Descriptive only, and AWS refuses tag values over 256 characters (a 63-character
    // namespace with a 192-character name would make 267).
    let name_tag: String = format!("featureenv-{}-{}", id.namespace, id.name)
        .chars()
        .take(256)
        .collect();
    tags.insert("Name".into(), name_tag);
    tags.insert(tag::CLUSTER.into(), ctx.config.cluster_id.clone());
    tags.insert(tag::ENVIRONMENT.into(), id.key.clone());
    tags.insert(tag::UID.into(), id.uid.clone());
    if let Some(owner) = &env.spec.owner {
        tags.insert("featureenv.io/owner".into(), owner.clone());
    }
    let request = LaunchRequest {
        client_token: status.launch_token.clone().expect("token persisted before launch"),
        image_id: ami_of(status),
        instance_type: resolved.instance_type.clone(),
        subnet_id: class.spec.instance.subnet_ids.first().cloned().unwrap_or_default(),
        security_group_ids: class.spec.instance.security_group_ids.clone(),
        instance_profile: class.spec.instance.instance_profile.clone(),
        root_volume_gib: class.spec.instance.root_volume_gib,
        user_data: bootstrap::render_user_data(&spec),
        tags,
    };
    let instance = ctx.cloud.compute.launch_instance(&request).await?;
    info!(environment = %id.key, instance_id = %instance.id, "launched instance");
    ctx.inventory.record_instance(instance.clone());
    ctx.event(
        env,
        EventType::Normal,
        "Launched",
        format!("launched instance {}", instance.id),
    )
    .await;
    Ok(instance)
}

enum DbOutcome {
    Claimed {
        database: Database,
        secret_name: String,
        credentials_ready: bool,
    },
    Exhausted(String),
    /// Tagged a spare; the next inventory poll confirms it.
    Claiming,
}

async fn database_part(
    ctx: &Context,
    env: &FeatureEnvironment,
    id: &Identity,
    resolved: &Resolved,
    status: &FeatureEnvironmentStatus,
) -> Result<Option<DbOutcome>> {
    let Some(pool) = &resolved.database_pool else {
        return Ok(None);
    };
    let mut database = match claim_database(ctx, pool, &id.uid, &id.key).await? {
        ClaimOutcome::Exhausted => return Ok(Some(DbOutcome::Exhausted(pool.clone()))),
        ClaimOutcome::Pending => return Ok(Some(DbOutcome::Claiming)),
        ClaimOutcome::Claimed(db) => db,
    };
    let secret_name = naming::database_secret(&id.name);
    let already = status
        .database
        .as_ref()
        .is_some_and(|d| d.credentials_ready && d.id.as_deref() == Some(database.id.as_str()))
        || ctx.has_handed_out_credentials(&id.uid, &database.id);
    if !already && database.status == DatabaseStatus::Available {
        hand_out_credentials(ctx, env, &database, &parameter_name(ctx, &id.uid)).await?;
        ctx.credentials_handed_out(&id.uid, &database.id);
        ctx.event(
            env,
            EventType::Normal,
            "DatabaseClaimed",
            format!("claimed database {} from pool {pool}", database.id),
        )
        .await;
        // RDS applies the new password asynchronously; until the next Describe says
        // otherwise, treat the database as modifying.
        database.status = DatabaseStatus::Modifying;
        ctx.inventory.record_database(database.clone());
        return Ok(Some(DbOutcome::Claimed {
            database,
            secret_name,
            credentials_ready: true,
        }));
    }
    Ok(Some(DbOutcome::Claimed {
        database,
        secret_name,
        credentials_ready: already,
    }))
}

async fn console_tail(ctx: &Context, instance_id: &str) -> Option<String> {
    match ctx.cloud.compute.console_output(instance_id).await {
        Ok(Some(output)) => {
            let lines: Vec<&str> = output.lines().collect();
            Some(lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n"))
        }
        Ok(None) => None,
        Err(e) => {
            warn!(instance_id, error = %e, "reading console output failed");
            None
        }
    }
}

/// Removes everything the environment made; already-gone is success. Returns
/// `CleanupPending` (retried) until AWS confirms every deletion.
async fn cleanup(env: &FeatureEnvironment, ctx: &Context) -> Result<Action> {
    let id = identity(env)?;
    let api: Api<FeatureEnvironment> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let current = env.status.clone().unwrap_or_default();
    if current.phase != Phase::Terminating {
        let mut terminating = current.clone();
        terminating.phase = Phase::Terminating;
        patch_status(&api, &id.name, &terminating).await?;
        ctx.metrics.environment_phase(&id.uid, Some(Phase::Terminating));
    }
    let mut pending = Vec::new();

    // Instances: the inventory and a direct look-up by uid, so a launch the
    // inventory has not seen yet is not missed.
    let mut instances = ctx.inventory.read(|s| s.all_instances_of(&id.uid));
    for found in ctx.cloud.compute.find_instances(tag::UID, &id.uid).await? {
        instances.retain(|i| i.id != found.id);
        instances.push(found);
    }
    for instance in &instances {
        match instance.state {
            InstanceState::Terminated | InstanceState::ShuttingDown => {}
            _ => match ctx.cloud.compute.terminate_instance(&instance.id).await {
                Ok(()) => {
                    info!(environment = %id.key, instance_id = %instance.id, "terminating instance");
                    ctx.inventory.wake();
                    pending.push(instance.id.clone());
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            },
        }
    }

    // Databases: claimed by this uid, being claimed (tagged, not yet confirmed),
    // plus the one recorded in status.
    let mut databases: Vec<String> = ctx
        .inventory
        .read(|s| s.databases_claimed_by(&id.uid))
        .into_iter()
        .map(|d| d.id)
        .collect();
    if let Some((db, _)) = ctx.claims.of(&id.uid)
        && !databases.contains(&db)
    {
        databases.push(db);
    }
    if let Some(db) = current.database.as_ref().and_then(|d| d.id.clone())
        && !databases.contains(&db)
    {
        databases.push(db);
    }
    for db in &databases {
        match ctx.cloud.databases.get_database(db).await? {
            None => {}
            Some(d) if d.status == DatabaseStatus::Deleting => {}
            // Identifiers are reused once a database is gone: only ever delete the
            // one that carries our claim.
            Some(d) if d.tags.get(tag::CLAIMED_BY) != Some(&id.uid) => {}
            Some(_) => match ctx.cloud.databases.delete_database(db).await {
                Ok(()) => {
                    info!(environment = %id.key, database = %db, "deleting database");
                    ctx.inventory.wake();
                    pending.push(db.clone());
                }
                Err(e) if e.is_not_found() => {}
                // Another delete got there first (a restart, the janitor): it is on its way.
                Err(CloudError::InvalidState { .. }) => pending.push(db.clone()),
                Err(e) => return Err(e.into()),
            },
        }
    }

    match ctx
        .cloud
        .parameters
        .delete_parameter(&parameter_name(ctx, &id.uid))
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }

    if !pending.is_empty() {
        return Err(Error::CleanupPending(pending.join(", ")));
    }
    info!(environment = %id.key, "cleaned up; releasing finalizer");
    ctx.event(
        env,
        EventType::Normal,
        "CleanedUp",
        "instance, database and parameter removed".into(),
    )
    .await;
    ctx.metrics.environment_phase(&id.uid, None);
    ctx.clear_waiting(&id.uid);
    ctx.claims.forget(&id.uid);
    ctx.forget_credentials(&id.uid);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::class::AmiSelectorTerm;

    fn class_with_terms(terms: Vec<AmiSelectorTerm>) -> FeatureEnvironmentClass {
        let mut class = crate::test_fixtures::class();
        class.spec.ami.selector_terms = terms;
        class
    }

    /// A name without an owner would match public images: anyone could publish a newer
    /// `minikube-service-*` and have it launched. It is searched in our account only.
    #[test]
    fn a_name_term_without_owner_searches_our_account() {
        let class = class_with_terms(vec![
            AmiSelectorTerm {
                name: Some("minikube-service-*".into()),
                ..Default::default()
            },
            AmiSelectorTerm {
                name: Some("minikube-service-*".into()),
                owner: Some("123456789012".into()),
                ..Default::default()
            },
            AmiSelectorTerm {
                id: Some("ami-0123456789abcdef0".into()),
                ..Default::default()
            },
        ]);
        let owners: Vec<Option<String>> = selector_terms(&class).into_iter().map(|t| t.owner).collect();
        assert_eq!(owners, [Some("self".into()), Some("123456789012".into()), None]);
    }
}
