//! Applying an edit of `spec.services` to a running environment in place: once the
//! instance has bootstrapped, the new images are resolved and the instance is told
//! (SSM Run Command) to pull them and roll its deployments; it tags itself with the
//! outcome, which the batched inventory poll reads, so nothing polls per instance.
//! Until the instance reports `complete`, the environment is `Updating` and
//! `observedGeneration` stays where it was. I/O (ECR, SSM, Events).

use jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::status::Services;
use super::validate::{Invalid, Resolved};
use super::{Pass, dereference};
use crate::api::environment::{FeatureEnvironmentStatus, ServicesUpdate};
use crate::bootstrap::{self, UpdateSpec};
use crate::cloud::{Instance, InstanceState, ScriptRequest, tag};
use crate::controller::Result;
use crate::naming;

/// The token of the services (and requested images) `resolved` asks for.
pub fn wanted_token(resolved: &Resolved) -> String {
    naming::services_token(
        resolved
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.image.pinned(None))),
    )
}

/// Brings the running instance's services in line with the spec, one step per
/// pass; records what it did in `status.update` (and, once applied, in
/// `status.images` and `status.servicesToken`).
pub async fn services(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    instance: &Instance,
) -> Result<Result<Services, Invalid>> {
    let wanted = wanted_token(pass.resolved);
    if status.services_token.as_deref() == Some(wanted.as_str()) {
        // Applied (or an edit was reverted before it was).
        status.update = None;
        return Ok(Ok(Services::Applied));
    }
    let bootstrapped = instance.state == InstanceState::Running
        && instance.tags.get(tag::BOOTSTRAP).map(String::as_str) == Some(tag::BOOTSTRAP_COMPLETE);
    if !bootstrapped {
        // The bootstrap runs the images of the launch; the edit follows it.
        return Ok(Ok(Services::Updating {
            message: "spec.services changed; the update follows the bootstrap".into(),
        }));
    }
    match status.update.clone() {
        Some(update) if update.token == wanted => Ok(Ok(progress(pass, status, update, instance).await)),
        // Nothing sent yet for this edit (a newer edit supersedes one in flight).
        _ => send(pass, status, instance, wanted).await,
    }
}

/// Resolves the new images and tells the instance to run them.
async fn send(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    instance: &Instance,
    token: String,
) -> Result<Result<Services, Invalid>> {
    let Pass {
        ctx, env, id, resolved, ..
    } = *pass;
    let images = match dereference::images(ctx, resolved, env).await? {
        Ok(images) => images,
        Err(invalid) => return Ok(Err(invalid)),
    };
    let script = bootstrap::render_update_script(&UpdateSpec {
        environment: id.key.clone(),
        region: ctx.config.region.clone().unwrap_or_default(),
        services: bootstrap::ServiceImage::all_of(&images),
        token: token.clone(),
        sequence: pass.env.metadata.generation.unwrap_or_default(),
    });
    let request = ScriptRequest {
        instance_id: instance.id.clone(),
        script,
        comment: format!("featureenv: update services of {}", id.key),
        timeout_seconds: u32::try_from(resolved.readiness_timeout.as_secs()).unwrap_or(u32::MAX),
    };
    // Sent before the status records it: a pass cut off in between sends it again,
    // and the script is idempotent (same images, same token).
    let command_id = ctx.cloud.commands.run_script(&request).await?;
    info!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, command_id, token, "sent a services update");
    ctx.inventory.await_update(&instance.id, &token);
    let changed = describe_change(&status.images, &images);
    status.update = Some(ServicesUpdate {
        token,
        images,
        command_id: Some(command_id),
        sent_at: Some(pass.now.to_string()),
        failure: None,
    });
    let message = format!("rolling out {changed} on instance {}", instance.id);
    ctx.event(env, EventType::Normal, "Updating", message.clone()).await;
    Ok(Ok(Services::Updating { message }))
}

/// Reads the outcome of the update in flight from the instance's tag.
async fn progress(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    mut update: ServicesUpdate,
    instance: &Instance,
) -> Services {
    let Pass { ctx, env, id, .. } = *pass;
    if let Some(failure) = &update.failure {
        return Services::Failed {
            message: failure.clone(),
        };
    }
    let outcome = instance.tags.get(tag::SERVICES).and_then(|v| v.split_once(':'));
    let failure = match outcome {
        Some((tag::BOOTSTRAP_COMPLETE, token)) if token == update.token => {
            let message = format!(
                "instance {} runs {}",
                instance.id,
                describe_change(&status.images, &update.images)
            );
            info!(namespace = %id.namespace, name = %id.name, token = %update.token, "services update applied");
            status.images = update.images;
            status.services_token = Some(update.token);
            status.update = None;
            ctx.event(env, EventType::Normal, "Updated", message).await;
            return Services::Applied;
        }
        Some((tag::BOOTSTRAP_FAILED, token)) if token == update.token => {
            format!("instance {} reported that the services update failed", instance.id)
        }
        _ if overdue(pass, &update) => {
            let limit = crate::api::duration::format_duration(pass.resolved.readiness_timeout);
            format!(
                "instance {} did not report the services update within {limit}",
                instance.id
            )
        }
        _ => {
            return Services::Updating {
                message: format!("rolling out {} on instance {}", names(&update), instance.id),
            };
        }
    };
    warn!(namespace = %id.namespace, name = %id.name, token = %update.token, failure, "services update failed");
    ctx.event(env, EventType::Warning, "UpdateFailed", failure.clone())
        .await;
    update.failure = Some(failure.clone());
    status.update = Some(update);
    Services::Failed { message: failure }
}

/// Past the readiness timeout since it was sent (an update or a personalisation),
/// judged only on a fresh view of AWS.
pub(super) fn overdue(pass: &Pass<'_>, update: &ServicesUpdate) -> bool {
    let fresh = pass
        .ctx
        .inventory
        .is_fresh(std::time::Instant::now(), pass.ctx.config.inventory_stale_after);
    let sent: Option<Timestamp> = update.sent_at.as_deref().and_then(|t| t.parse().ok());
    let timeout = SignedDuration::try_from(pass.resolved.readiness_timeout).unwrap_or(SignedDuration::MAX);
    fresh && sent.is_some_and(|at| at.checked_add(timeout).is_ok_and(|deadline| pass.now >= deadline))
}

fn names(update: &ServicesUpdate) -> String {
    update
        .images
        .iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `payments → <image>, ...` for the services whose image changes.
fn describe_change(
    before: &[crate::api::environment::DeployedImage],
    after: &[crate::api::environment::DeployedImage],
) -> String {
    let changed: Vec<String> = after
        .iter()
        .filter(|a| !before.contains(a))
        .map(|a| format!("{} = {}", a.name, a.image))
        .collect();
    if changed.is_empty() {
        "the same images".into()
    } else {
        changed.join(", ")
    }
}
