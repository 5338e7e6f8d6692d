//! The changes an environment's reconcile makes, each idempotent so a pass cut off
//! anywhere can run again: admission (the launch token, persisted before any
//! launch), launching and replacing the instance, claiming the database and handing
//! out its credentials, binding the credentials parameter to the instance. I/O.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::dereference;
use super::report::patch_status;
use super::validate::Invalid;
use super::{Identity, LOSSES_BEFORE_FAILING, Pass};
use crate::api::conditions::{ConditionUpdate, READY, set_condition};
use crate::api::environment::{
    DatabaseStatus as DatabaseStatusField, FeatureEnvironmentStatus, InstanceStatus, Phase, Start,
};
use crate::api::{FINALIZER, FeatureEnvironment, OWNER_LABEL, owner_label_value};
use crate::bootstrap::{self, BootstrapSpec};
use crate::cloud::{Database, DatabaseStatus, Instance, LaunchRequest, Tags, tag};
use crate::controller::claim::{ClaimOutcome, HandOut, claim_database, hand_out_credentials};
use crate::controller::{Context, Result};
use crate::naming;

/// Lines of console output quoted in a failure message.
const CONSOLE_TAIL_LINES: usize = 20;

/// Puts on the object what the operator keeps there, in one write when anything is
/// missing: the cleanup finalizer (before anything is made, so nothing outlives the
/// object) and the `featureenv.io/owner` label equal to `spec.owner` in label
/// syntax, so `kubectl get fe -l featureenv.io/owner=…` and the plugin's `list` find
/// environments made any way (kubectl, Argo CD, the plugin). An environment without
/// an owner keeps whatever label it has. A new environment needs both: one patch
/// instead of two. The patch carries the resourceVersion it was made from, so a
/// concurrent change of the finalizers (a list a merge patch replaces whole) makes
/// it fail and the pass run again. Returns the object as it now is.
pub async fn mark(api: &Api<FeatureEnvironment>, env: Arc<FeatureEnvironment>) -> Result<Arc<FeatureEnvironment>> {
    if env.metadata.deletion_timestamp.is_some() {
        return Ok(env);
    }
    let label = env
        .spec
        .owner
        .as_deref()
        .and_then(owner_label_value)
        .filter(|value| env.labels().get(OWNER_LABEL) != Some(value));
    let finalized = env.finalizers().iter().any(|f| f == FINALIZER);
    if label.is_none() && finalized {
        return Ok(env);
    }
    let mut metadata = serde_json::json!({"resourceVersion": env.resource_version()});
    if let Some(value) = label {
        metadata["labels"] = serde_json::json!({OWNER_LABEL: value});
    }
    if !finalized {
        let mut finalizers = env.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        metadata["finalizers"] = serde_json::json!(finalizers);
    }
    let patch = serde_json::json!({"metadata": metadata});
    let marked = api
        .patch(&env.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(Arc::new(marked))
}

/// Admits a new environment against its class's namespace rule and per-namespace
/// cap and, if
/// admitted, persists its launch token (before RunInstances, so a restarted
/// operator looks the instance up instead of launching a second one). Counting and
/// writing happen under one lock, so concurrent reconciles cannot all see room for
/// one more; the lock covers only these two API server calls, never a cloud call.
pub async fn admit(
    pass: &Pass<'_>,
    api: &Api<FeatureEnvironment>,
    status: &mut FeatureEnvironmentStatus,
) -> Result<Result<(), Invalid>> {
    let Pass {
        ctx,
        env,
        id,
        class,
        resolved,
        ..
    } = *pass;
    if class.spec.namespace_selector.is_some() {
        let labels = dereference::namespace_labels(ctx, &id.namespace).await?;
        let class_name = &resolved.class_name;
        match class.admits_namespace(&labels) {
            Ok(true) => {}
            Ok(false) => {
                // The admission policy's words (charts/.../admission-policy.yaml).
                let message = format!(
                    "metadata.namespace: namespace {} is not selected by the namespaceSelector of class {class_name}",
                    id.namespace
                );
                // A namespace's labels may change, and no watch tells us.
                let retry = std::time::Duration::from_secs(60);
                return Ok(Err(Invalid::outside("NamespaceNotAllowed", message, retry)));
            }
            Err(e) => {
                let message = format!("class {class_name}: spec.namespaceSelector: {e}");
                return Ok(Err(Invalid::new("InvalidClass", message)));
            }
        }
    }
    let _admission = ctx.admissions.lock().await;
    if let Some(max) = class.spec.max_per_namespace {
        let admitted = dereference::admitted_in_class(ctx, &id.namespace, &id.uid, &resolved.class_name).await?;
        if admitted >= max as usize {
            let message = format!(
                "class {} allows {max} environments per namespace; {admitted} exist",
                resolved.class_name
            );
            // Room appears when another environment goes; no watch tells us.
            let retry = std::time::Duration::from_secs(30);
            return Ok(Err(Invalid::outside("NamespaceLimitReached", message, retry)));
        }
    }
    status.launch_token = Some(naming::launch_token(&id.uid, 0));
    status.phase = Phase::Provisioning;
    patch_status(ctx, api, env, status).await?;
    drop(_admission);
    // No Event here: the launch (`Launched`) or the claim of a spare
    // (`InstanceClaimed`) follows at once and says what came of the admission; one
    // Event fewer per environment for the API server to store.
    Ok(Ok(()))
}

/// The instance was terminated or vanished without us: say so, and prepare a
/// replacement under a new launch token (the old one would return the lost
/// instance) with a fresh readiness deadline, keeping the database. After
/// [`LOSSES_BEFORE_FAILING`] losses in a row the environment is `Failed` instead.
/// Returns the status to persist before the replacement is launched.
pub async fn replace_lost_instance(
    ctx: &Context,
    env: &FeatureEnvironment,
    id: &Identity,
    status: &FeatureEnvironmentStatus,
    lost: &str,
    state: &str,
    now: Timestamp,
) -> FeatureEnvironmentStatus {
    let mut next = status.clone();
    next.lost_instances += 1;
    let losses = next.lost_instances;
    warn!(namespace = %id.namespace, name = %id.name, instance_id = lost, state, losses, "instance lost");
    let mut message = format!("instance {lost} is {state} (not deleted by the operator)");
    if losses >= LOSSES_BEFORE_FAILING {
        message.push_str(&format!("; lost {losses} instances in a row, not replacing it"));
        next.phase = Phase::Failed;
        let update = ConditionUpdate::new(READY, false, "InstanceLost", message.clone());
        set_condition(&mut next.conditions, update, env.metadata.generation, now);
        ctx.event(env, EventType::Warning, "InstanceLost", message).await;
        return next;
    }
    message.push_str("; launching a replacement");
    let attempt = status
        .launch_token
        .as_deref()
        .and_then(naming::launch_attempt)
        .map_or(1, |a| a + 1);
    next.launch_token = Some(naming::launch_token(&id.uid, attempt));
    let ami = next.instance.as_ref().and_then(|i| i.ami_id.clone());
    // A replacement is launched for the environment, even if the lost one was a
    // spare of the warm pool.
    next.instance = Some(InstanceStatus {
        ami_id: ami,
        start: Some(Start::Cold),
        ..Default::default()
    });
    next.personalisation = None;
    next.launched_at = None;
    next.ready_at = None;
    // An update sent to the lost instance died with it; the replacement boots with
    // the applied images and is sent the edit again once bootstrapped.
    next.update = None;
    next.endpoints.clear();
    next.phase = Phase::Provisioning;
    let update = ConditionUpdate::new(READY, false, "InstanceLost", message.clone());
    set_condition(&mut next.conditions, update, env.metadata.generation, now);
    ctx.event(env, EventType::Warning, "InstanceLost", message).await;
    next
}

/// The environment's instance: the one observed, or one launched now.
pub async fn instance(
    pass: &Pass<'_>,
    status: &FeatureEnvironmentStatus,
    observed: Option<Instance>,
) -> Result<Instance> {
    if let Some(instance) = observed {
        return Ok(instance);
    }
    let Pass { ctx, env, id, .. } = *pass;
    let request = launch_request(pass, status);
    let instance = ctx.cloud.compute.launch_instance(&request).await?;
    info!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, "launched instance");
    ctx.inventory.record_instance(instance.clone());
    let message = format!(
        "launched instance {} ({} from {})",
        instance.id, request.instance_type, request.image_id
    );
    ctx.event(env, EventType::Normal, "Launched", message).await;
    Ok(instance)
}

/// EC2 takes at most 16 KB of user data, counted before base64 encoding
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html).
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// Whether the bootstrap script fits EC2's user-data limit. A class with many
/// baseline services can outgrow it, and RunInstances would then refuse every launch;
/// this says so before anything is made, naming what to change.
pub fn check_user_data(pass: &Pass<'_>, status: &FeatureEnvironmentStatus) -> Result<(), Invalid> {
    let spec = bootstrap_spec(pass, status);
    let size = bootstrap::render_user_data(&spec).len();
    if size <= USER_DATA_LIMIT {
        return Ok(());
    }
    let message = format!(
        "spec.services: the bootstrap script for {} services (class {} baseline and overrides) is {size} bytes, \
         over EC2's user-data limit of {USER_DATA_LIMIT} bytes; fewer baseline services in the class would fit",
        spec.services.len(),
        pass.resolved.class_name,
    );
    Err(Invalid::new("UserDataTooLarge", message))
}

/// What the bootstrap script of this environment is rendered from.
fn bootstrap_spec(pass: &Pass<'_>, status: &FeatureEnvironmentStatus) -> BootstrapSpec {
    let Pass { ctx, id, resolved, .. } = *pass;
    BootstrapSpec {
        environment: id.key.clone(),
        region: ctx.config.region.clone().unwrap_or_default(),
        services: bootstrap::ServiceImage::all_of(&status.images),
        addons: resolved.addons.iter().map(|a| a.as_str().to_owned()).collect(),
        database_parameter: resolved.database_pool.as_ref().map(|_| parameter_name(ctx, &id.uid)),
        database_wait_seconds: resolved.readiness_timeout.as_secs(),
    }
}

fn launch_request(pass: &Pass<'_>, status: &FeatureEnvironmentStatus) -> LaunchRequest {
    let Pass {
        ctx,
        env,
        id,
        class,
        resolved,
        ..
    } = *pass;
    let spec = bootstrap_spec(pass, status);
    let mut tags: Tags = class.spec.instance.tags.clone();
    tags.insert("Name".into(), naming::instance_name(&id.namespace, &id.name));
    tags.insert(tag::CLUSTER.into(), ctx.config.cluster_id.clone());
    tags.insert(tag::ENVIRONMENT.into(), id.key.clone());
    tags.insert(tag::UID.into(), id.uid.clone());
    if let Some(owner) = &env.spec.owner {
        tags.insert("featureenv.io/owner".into(), owner.clone());
    }
    LaunchRequest {
        client_token: status.launch_token.clone().expect("token persisted before launch"),
        image_id: status
            .instance
            .as_ref()
            .and_then(|i| i.ami_id.clone())
            .unwrap_or_default(),
        instance_type: resolved.instance_type.clone(),
        subnet_id: class.spec.instance.subnet_ids.first().cloned().unwrap_or_default(),
        security_group_ids: class.spec.instance.security_group_ids.clone(),
        instance_profile: class.spec.instance.instance_profile.clone(),
        root_volume_gib: class.spec.instance.root_volume_gib,
        user_data: bootstrap::render_user_data(&spec),
        tags,
    }
}

/// Where the environment's database stands after this pass.
pub enum DbOutcome {
    Claimed {
        database: Database,
        secret_name: String,
        credentials_ready: bool,
    },
    Exhausted(String),
    /// Tagged a spare; the next inventory poll confirms it.
    Claiming,
    /// Claimed, but the credentials' Secret name is taken by a Secret that is not
    /// the environment's; nothing handed out until it is gone.
    SecretConflict {
        database: Database,
        secret: String,
    },
}

/// An Event the first time a pass finds the Secret name taken.
async fn announce_secret_conflict(
    ctx: &Context,
    env: &FeatureEnvironment,
    status: &FeatureEnvironmentStatus,
    secret: &str,
) {
    let reported = crate::api::conditions::find(&status.conditions, crate::api::conditions::DATABASE_READY)
        .is_some_and(|c| c.reason == "SecretConflict");
    if !reported {
        let message = format!(
            "Secret {secret} exists and is not this environment's; the database credentials are not written until it is deleted"
        );
        ctx.event(env, EventType::Warning, "SecretConflict", message).await;
    }
}

/// Claims a database from the class's pool (if it has one) and, once the claim is
/// confirmed and the database available, hands out its credentials exactly once.
pub async fn database(pass: &Pass<'_>, status: &FeatureEnvironmentStatus) -> Result<Option<DbOutcome>> {
    let Pass {
        ctx, env, id, resolved, ..
    } = *pass;
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
        || ctx.memory.has_handed_out_credentials(&id.uid, &database.id);
    let credentials_ready = already || database.status == DatabaseStatus::Available;
    if !already && credentials_ready {
        let handed = hand_out_credentials(ctx, env, &database, &parameter_name(ctx, &id.uid)).await?;
        if let HandOut::ForeignSecret(secret) = handed {
            announce_secret_conflict(ctx, env, status, &secret).await;
            return Ok(Some(DbOutcome::SecretConflict { database, secret }));
        }
        ctx.memory.credentials_handed_out(&id.uid, &database.id);
        let message = format!("claimed database {} from pool {pool}", database.id);
        ctx.event(env, EventType::Normal, "DatabaseClaimed", message).await;
        // RDS applies the new password asynchronously; until the next Describe says
        // otherwise, treat the database as modifying.
        database.status = DatabaseStatus::Modifying;
        ctx.inventory.record_database(database.clone());
    }
    Ok(Some(DbOutcome::Claimed {
        database,
        secret_name,
        credentials_ready,
    }))
}

/// Records the handed-out credentials' Secret and parameter in the status.
pub fn record_database(ctx: &Context, id: &Identity, status: &mut FeatureEnvironmentStatus, outcome: &DbOutcome) {
    if let DbOutcome::Claimed {
        secret_name,
        credentials_ready,
        ..
    } = outcome
    {
        let field = status.database.get_or_insert_with(DatabaseStatusField::default);
        field.secret_name = Some(secret_name.clone());
        field.credentials_ready = *credentials_ready;
        field.parameter_name = Some(parameter_name(ctx, &id.uid));
    }
}

/// The instance profile lets an instance read only the parameter tagged with its own
/// ARN (docs/instance-profile-policy.json): tag it once the credentials are in it. An
/// instance that was Ready once has read it already; nothing to do after a restart.
pub async fn bind_parameter(
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
    if !handed_out || status.ready_at.is_some() || ctx.memory.has_bound_parameter(&id.uid, &instance.id) {
        return Ok(());
    }
    let tags = Tags::from([(tag::INSTANCE.to_owned(), instance.arn.clone())]);
    ctx.cloud
        .parameters
        .tag_parameter(&parameter_name(ctx, &id.uid), &tags)
        .await?;
    ctx.memory.parameter_bound(&id.uid, &instance.id);
    Ok(())
}

pub fn parameter_name(ctx: &Context, uid: &str) -> String {
    naming::database_parameter(&ctx.config.ssm_prefix, &ctx.config.cluster_id, uid)
}

/// The last lines of the instance's console, quoted when bootstrap failed or timed out.
pub async fn console_tail(ctx: &Context, instance_id: &str) -> Option<String> {
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
