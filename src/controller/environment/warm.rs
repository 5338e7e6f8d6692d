//! A warm start: an environment of a class with a warm pool takes a spare instead of
//! launching one, under the database claim's rules (a claim is a tag, confirmed by a
//! description made after it, never two environments on one instance), then
//! personalises it over the update channel (SSM Run Command; a prefetch of its
//! images starts as soon as the spare is tagged, so EC2's tag delay overlaps the
//! longest step instead of preceding it): starts it if the pool
//! keeps spares stopped, loads the environment's images, wires its database, rolls
//! what changed; the instance tags the outcome. With no spare free the environment
//! launches cold, as without a pool. I/O (EC2, SSM, Events).

use std::collections::BTreeMap;
use std::time::Instant;

use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::status::Personalisation;
use super::{Pass, act, update};
use crate::api::environment::{FeatureEnvironmentStatus, ServicesUpdate, Start};
use crate::bootstrap::{self, PersonaliseSpec, UpdateSpec};
use crate::cloud::{CloudError, Instance, InstanceState, ScriptRequest, Tags, tag};
use crate::controller::claim::retag_due;
use crate::controller::warm_pool;
use crate::controller::{Context, Result};
use crate::naming;

/// Where a claim of a spare stands, when the environment has no instance yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// A spare is tagged; a description made after the tag confirms it (the
    /// environment then finds it by its uid, as any instance of its own).
    Pending,
    /// No spare fits: launch cold.
    NoSpare,
}

/// Whether the environment may take a spare of its class: the class keeps a pool
/// and the environment asks for nothing a spare lacks (the class's instance type,
/// the image the environment pinned).
pub fn eligible(pass: &Pass<'_>) -> bool {
    let class = &pass.class.spec;
    class.warm_pool.as_ref().is_some_and(|p| p.size > 0) && pass.resolved.instance_type == class.instance.instance_type
}

/// The spares `pass`'s environment could take, best first: waiting in the pool's
/// state, bootstrapped, of the environment's image and type, unclaimed; the oldest
/// first, an order every pass and every restart agrees on (so a retried claim picks
/// the spare it tagged before).
fn candidates(pass: &Pass<'_>, status: &FeatureEnvironmentStatus) -> Vec<Instance> {
    let Pass {
        ctx, class, resolved, ..
    } = *pass;
    let state = class.spec.warm_pool.as_ref().map(|p| p.state).unwrap_or_default();
    let image = status.instance.as_ref().and_then(|i| i.ami_id.as_deref());
    let mut spares: Vec<Instance> = ctx
        .inventory
        .read(|s| s.warm_pool_members(&resolved.class_name))
        .into_iter()
        .filter(|i| {
            warm_pool::is_ready(i, state)
                && !i.tags.contains_key(tag::UID)
                && Some(i.image_id.as_str()) == image
                && i.instance_type == resolved.instance_type
        })
        .collect();
    spares.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
    spares
}

/// Claims a spare for the environment: re-checks a claim in flight against the
/// latest description, or tags the best free spare.
pub async fn claim(pass: &Pass<'_>, status: &FeatureEnvironmentStatus) -> Result<Claim> {
    let Pass { ctx, id, resolved, .. } = *pass;
    let claims = &ctx.memory.instance_claims;
    if let Some((spare, tagged)) = claims.of(&id.uid) {
        let described = tagged.is_some_and(|at| ctx.inventory.read(|s| s.described_since(at)));
        if !described {
            ctx.inventory.wake();
            return Ok(Claim::Pending);
        }
        let seen = ctx.inventory.read(|s| s.instances.get(&spare).cloned());
        match seen {
            // Described after the tag and not showing it: EC2 tags are eventually
            // consistent. Wait; past `RETAG_AFTER`, tag again (idempotent).
            Some(i) if !i.tags.contains_key(tag::UID) && !i.state.is_gone() => {
                if !retag_due(tagged) {
                    ctx.inventory.wake();
                    return Ok(Claim::Pending);
                }
                info!(namespace = %id.namespace, name = %id.name, instance_id = %spare, "claim tag still not visible; tagging again");
                return tag_spare(ctx, pass, &spare).await;
            }
            // Ours: the environment's own look-up by uid takes it from here.
            Some(i) if i.tags.get(tag::UID) == Some(&id.uid) => return Ok(Claim::Pending),
            _ => {
                warn!(namespace = %id.namespace, name = %id.name, instance_id = %spare, "spare claim lost; picking another");
                claims.forget(&id.uid);
            }
        }
    }
    let spares = candidates(pass, status);
    let Some(spare) = claims.reserve_first(spares.iter().map(|i| i.id.as_str()), &id.uid) else {
        // Tell the pool someone wanted one: it may be short.
        ctx.inventory.notify_class(&resolved.class_name);
        return Ok(Claim::NoSpare);
    };
    let claim = tag_spare(ctx, pass, &spare).await?;
    if let Some(spare) = spares.iter().find(|i| i.id == spare) {
        prefetch(pass, status, spare).await;
    }
    Ok(claim)
}

/// Starts pulling the environment's images on a spare it has just tagged, while the
/// claim waits for EC2 to show the tag (`bootstrap::render_prefetch_script`): the
/// pull of an image under test outlasts that wait, so the wait costs nothing. Best
/// effort: a failure costs only the head start, and a lost claim only an unused
/// image on someone else's spare.
async fn prefetch(pass: &Pass<'_>, status: &FeatureEnvironmentStatus, spare: &Instance) {
    let Pass { ctx, id, resolved, .. } = *pass;
    // A stopped spare is started once the claim is confirmed; SSM cannot reach it now.
    if spare.state != InstanceState::Running {
        return;
    }
    let request = ScriptRequest {
        instance_id: spare.id.clone(),
        script: bootstrap::render_prefetch_script(
            &id.key,
            ctx.config.region.as_deref().unwrap_or_default(),
            &bootstrap::ServiceImage::all_of(&status.images),
        ),
        comment: format!(
            "featureenv: fetch the images of {} while its claim is confirmed",
            id.key
        ),
        timeout_seconds: u32::try_from(resolved.readiness_timeout.as_secs()).unwrap_or(u32::MAX),
    };
    match ctx.cloud.commands.run_script(&request).await {
        Ok(command_id) => {
            info!(namespace = %id.namespace, name = %id.name, instance_id = %spare.id, command_id, "sent the prefetch");
        }
        Err(e) => {
            warn!(namespace = %id.namespace, name = %id.name, instance_id = %spare.id, error = %e, "prefetch not sent; the personalisation pulls everything");
        }
    }
}

/// Tags `spare` with the environment's uid, key and name: the claim.
async fn tag_spare(ctx: &Context, pass: &Pass<'_>, spare: &str) -> Result<Claim> {
    let id = pass.id;
    let tags: Tags = BTreeMap::from([
        (tag::UID.to_owned(), id.uid.clone()),
        (tag::ENVIRONMENT.to_owned(), id.key.clone()),
        ("Name".to_owned(), naming::instance_name(&id.namespace, &id.name)),
    ]);
    let result = ctx.cloud.compute.tag_instance(spare, &tags).await;
    // Even a failed call may have landed: the next description decides either way.
    ctx.memory.instance_claims.tagged(spare, Instant::now());
    ctx.inventory.wake();
    ctx.inventory.notify_class(&pass.resolved.class_name);
    result?;
    info!(namespace = %id.namespace, name = %id.name, instance_id = spare, "tagged spare as claimed; awaiting confirmation");
    Ok(Claim::Pending)
}

/// Records how the environment got `instance`, the first time it sees it: a spare
/// of the pool (its readiness timeout counts from now, not from the spare's launch)
/// or one launched for it.
pub async fn adopt(pass: &Pass<'_>, status: &mut FeatureEnvironmentStatus, instance: &Instance) {
    let Pass { ctx, env, id, now, .. } = *pass;
    let field = status.instance.get_or_insert_with(Default::default);
    if field.start.is_some() {
        return;
    }
    if !instance.tags.contains_key(tag::WARM_POOL) {
        field.start = Some(Start::Cold);
        return;
    }
    field.start = Some(Start::Warm);
    status.launched_at = Some(now.to_string());
    ctx.memory.instance_claims.forget(&id.uid);
    ctx.inventory.notify_class(&pass.resolved.class_name);
    info!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, "claim of spare confirmed");
    let message = format!(
        "claimed spare {} of class {}'s warm pool",
        instance.id, pass.resolved.class_name
    );
    ctx.event(env, EventType::Normal, "InstanceClaimed", message).await;
}

/// Brings a claimed spare to the environment's images and database, one step per
/// pass, until its first Ready. `None` for a cold start or once it was Ready.
pub async fn personalise(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    instance: &Instance,
) -> Result<Option<Personalisation>> {
    let warm = status.instance.as_ref().and_then(|i| i.start) == Some(Start::Warm);
    if !warm || status.ready_at.is_some() {
        return Ok(None);
    }
    let Some(sent) = status.personalisation.clone() else {
        return send(pass, status, instance).await.map(Some);
    };
    Ok(progress(pass, status, sent, instance).await)
}

async fn send(pass: &Pass<'_>, status: &mut FeatureEnvironmentStatus, instance: &Instance) -> Result<Personalisation> {
    let Pass {
        ctx, env, id, resolved, ..
    } = *pass;
    let in_progress = |message: String| Ok(Personalisation::InProgress { message });
    match instance.state {
        InstanceState::Running => {}
        InstanceState::Stopped => {
            match ctx.cloud.compute.start_instance(&instance.id).await {
                Ok(()) | Err(CloudError::InvalidState { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            ctx.inventory.wake();
            return in_progress(format!("starting spare {}", instance.id));
        }
        state => return in_progress(format!("spare {} is {}", instance.id, state.as_str())),
    }
    let services_token = status
        .services_token
        .clone()
        .unwrap_or_else(|| update::wanted_token(resolved));
    let token = naming::personalisation_token(&id.uid, &services_token);
    let script = bootstrap::render_personalise_script(&PersonaliseSpec {
        update: UpdateSpec {
            environment: id.key.clone(),
            region: ctx.config.region.clone().unwrap_or_default(),
            services: bootstrap::ServiceImage::all_of(&status.images),
            token: token.clone(),
            sequence: pass.env.metadata.generation.unwrap_or_default(),
        },
        database_parameter: resolved
            .database_pool
            .as_ref()
            .map(|_| act::parameter_name(ctx, &id.uid)),
        database_wait_seconds: resolved.readiness_timeout.as_secs(),
    });
    let request = ScriptRequest {
        instance_id: instance.id.clone(),
        script,
        comment: format!("featureenv: personalise a warm instance for {}", id.key),
        timeout_seconds: u32::try_from(resolved.readiness_timeout.as_secs()).unwrap_or(u32::MAX),
    };
    let command_id = match ctx.cloud.commands.run_script(&request).await {
        Ok(command_id) => command_id,
        // A just-started spare's agent is not registered yet.
        Err(CloudError::InvalidState { .. }) => {
            return in_progress(format!("waiting for the SSM agent of spare {}", instance.id));
        }
        Err(e) => return Err(e.into()),
    };
    info!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, command_id, token, "sent the personalisation");
    ctx.inventory.await_update(&instance.id, &token);
    status.personalisation = Some(ServicesUpdate {
        token,
        images: status.images.clone(),
        command_id: Some(command_id),
        sent_at: Some(pass.now.to_string()),
        failure: None,
    });
    let message = format!(
        "loading this environment's images and database on spare {}",
        instance.id
    );
    ctx.event(env, EventType::Normal, "Personalising", message.clone())
        .await;
    in_progress(message)
}

/// Reads the personalisation's outcome from the instance's tag; `None` once done.
async fn progress(
    pass: &Pass<'_>,
    status: &mut FeatureEnvironmentStatus,
    mut sent: ServicesUpdate,
    instance: &Instance,
) -> Option<Personalisation> {
    let Pass { ctx, env, id, .. } = *pass;
    if let Some(failure) = &sent.failure {
        return Some(Personalisation::Failed {
            message: failure.clone(),
        });
    }
    let outcome = instance.tags.get(tag::SERVICES).and_then(|v| v.split_once(':'));
    let failure = match outcome {
        Some((tag::BOOTSTRAP_COMPLETE, token)) if token == sent.token => return None,
        Some((tag::BOOTSTRAP_FAILED, token)) if token == sent.token => {
            format!("spare {} reported that its personalisation failed", instance.id)
        }
        _ if update::overdue(pass, &sent) => {
            let limit = crate::api::duration::format_duration(pass.resolved.readiness_timeout);
            format!(
                "spare {} did not report its personalisation within {limit}",
                instance.id
            )
        }
        _ => {
            return Some(Personalisation::InProgress {
                message: format!(
                    "loading this environment's images and database on spare {}",
                    instance.id
                ),
            });
        }
    };
    warn!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, failure, "personalisation failed");
    sent.failure = Some(failure.clone());
    status.personalisation = Some(sent);
    ctx.event(env, EventType::Warning, "PersonalisationFailed", failure.clone())
        .await;
    Some(Personalisation::Failed { message: failure })
}
