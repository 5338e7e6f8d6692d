//! What an environment's reconcile tells: the status patch (server-side apply of the
//! whole status with our field manager), Events and logs at phase transitions, and
//! the phase metric. I/O.

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::Identity;
use super::status::{became_ready, invalid_status};
use super::validate::Invalid;
use crate::api::FeatureEnvironment;
use crate::api::conditions::{self, ConditionUpdate, READY, set_condition};
use crate::api::environment::{FeatureEnvironmentStatus, Phase};
use crate::controller::{Context, Error, FIELD_MANAGER, Result};

/// One server-side-apply patch of the whole status with our field manager,
/// remembered with the version of `env` it was made over: a later pass on a cached
/// object that does not show it yet works from it (`Memory::current_status`).
pub async fn patch_status(
    ctx: &Context,
    api: &Api<FeatureEnvironment>,
    env: &FeatureEnvironment,
    status: &FeatureEnvironmentStatus,
) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": "featureenv.io/v1alpha1",
        "kind": "FeatureEnvironment",
        "status": status,
    });
    let written = api
        .patch_status(
            &env.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    if let Some(uid) = env.uid() {
        let base = env.resource_version();
        let latest = written.resource_version();
        ctx.memory
            .status_written(&uid, base.as_deref(), latest.as_deref(), status);
    }
    Ok(())
}

/// Writes the status a pass arrived at, if it changed, and tells of a new phase.
pub async fn write(
    ctx: &Context,
    api: &Api<FeatureEnvironment>,
    env: &FeatureEnvironment,
    id: &Identity,
    before: &FeatureEnvironmentStatus,
    after: &FeatureEnvironmentStatus,
) -> Result<()> {
    if after != before {
        patch_status(ctx, api, env, after).await?;
    }
    ctx.metrics.environment_phase(&id.uid, Some(after.phase));
    if before.phase == after.phase {
        return Ok(());
    }
    let (reason, message) = conditions::find(&after.conditions, READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default();
    info!(namespace = %id.namespace, name = %id.name, from = before.phase.as_str(), to = after.phase.as_str(), reason = %reason, "phase changed");
    match after.phase {
        Phase::Ready => {
            if became_ready(before, after) {
                let created = env.creation_timestamp().map_or(Timestamp::now(), |t| t.0);
                let start = after
                    .instance
                    .as_ref()
                    .and_then(|i| i.start)
                    .unwrap_or(crate::api::environment::Start::Cold);
                ctx.metrics
                    .time_to_ready(start.as_str(), Timestamp::now().duration_since(created).as_secs_f64());
            }
            let url = after.endpoints.get("api").cloned().unwrap_or_default();
            ctx.event(env, EventType::Normal, "Ready", format!("environment ready {url}"))
                .await;
        }
        Phase::Failed => ctx.event(env, EventType::Warning, &reason, message).await,
        _ => {}
    }
    Ok(())
}

/// Writes `Ready=False` for a spec that cannot be provisioned as it stands (keeping
/// the expiry, which the operator enforces regardless), with an Event the first time.
pub async fn refuse(
    ctx: &Context,
    api: &Api<FeatureEnvironment>,
    env: &FeatureEnvironment,
    current: &FeatureEnvironmentStatus,
    invalid: &Invalid,
    expires_at: Option<Timestamp>,
) -> Result<()> {
    let (reason, message) = (invalid.reason, invalid.message.as_str());
    let mut next = invalid_status(current, reason, message, env.metadata.generation, Timestamp::now());
    next.expires_at = expires_at.map(|t| t.to_string()).or(next.expires_at);
    if &next != current {
        warn!(namespace = env.namespace().unwrap_or_default(), name = %env.name_any(), reason, message, "cannot provision");
        patch_status(ctx, api, env, &next).await?;
        ctx.event(env, EventType::Warning, reason, message.to_owned()).await;
    }
    if let Some(uid) = env.uid() {
        ctx.metrics.environment_phase(&uid, Some(next.phase));
    }
    Ok(())
}

/// Shows a failed cloud call in the Ready condition and returns the error, for
/// `error_policy` to back off by its category.
pub async fn cloud_failure(
    ctx: &Context,
    api: &Api<FeatureEnvironment>,
    env: &FeatureEnvironment,
    id: &Identity,
    current: &FeatureEnvironmentStatus,
    status: &FeatureEnvironmentStatus,
    error: Error,
) -> Error {
    let mut failed = status.clone();
    let update = ConditionUpdate::new(READY, false, error.category(), error.to_string());
    set_condition(
        &mut failed.conditions,
        update,
        env.metadata.generation,
        Timestamp::now(),
    );
    if failed.phase == Phase::Pending {
        failed.phase = Phase::Provisioning;
    }
    if &failed != current
        && let Err(e) = patch_status(ctx, api, env, &failed).await
    {
        warn!(namespace = %id.namespace, name = %id.name, error = %e, "could not show the failure in status");
    }
    error
}
