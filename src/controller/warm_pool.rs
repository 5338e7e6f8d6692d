//! The warm instance pool of a FeatureEnvironmentClass (`spec.warmPool`): keeps
//! `size` unclaimed spares launched from the class's newest image and bootstrapped
//! with its baseline services and addons (then stopped, for a `Stopped` pool), never
//! more. Spares of a superseded image, failed ones and any surplus are terminated
//! (claimed spares are their environments' and never touched) and replaced. Counts go
//! to the class's status. Planning is pure (`plan`); a launch's token is written to
//! the status before RunInstances and repeated until a description shows its spare,
//! so a crash never launches one twice. I/O in `reconcile`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::{Context, Error, FIELD_MANAGER, Result, instrumented};
use crate::api::FeatureEnvironmentClass;
use crate::api::class::{FeatureEnvironmentClassStatus, WarmPoolStatus, WarmState};
use crate::bootstrap::{self, BootstrapSpec, ServiceImage};
use crate::cloud::{CloudError, Instance, InstanceState, LaunchRequest, Tags, tag};
use crate::naming;

pub const CONTROLLER: &str = "warmpool";

/// What the pool should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SparePlan {
    /// Launch tokens written earlier whose spare no description shows: launched
    /// again with the same token (EC2 answers with the instance it made, if any).
    pub relaunch: Vec<String>,
    /// Spares to launch under new tokens.
    pub launch: u32,
    /// Unclaimed spares to terminate: superseded image, failed bootstrap, surplus.
    pub terminate: Vec<String>,
    /// Bootstrapped spares of a `Stopped` pool still running.
    pub stop: Vec<String>,
    /// Bootstrapped, stopped spares of a `Running` pool (its state was changed).
    pub start: Vec<String>,
    /// Written tokens a description has shown: no longer pending.
    pub seen: Vec<String>,
    pub counts: SpareCounts,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpareCounts {
    /// Bootstrapped, unclaimed spares of the newest image in the pool's state.
    pub available: u32,
    /// Unclaimed spares of the newest image on their way there.
    pub launching: u32,
    /// Unclaimed spares being terminated (superseded image or failed).
    pub stale: u32,
    /// Spares claimed by environments, still running them.
    pub claimed: u32,
}

impl SpareCounts {
    /// In the order of `featureenv_instance_pool_members`'s states.
    pub fn as_array(self) -> [u32; 4] {
        [self.available, self.launching, self.stale, self.claimed]
    }
}

/// Whether an instance of the pool is taken: tagged with an environment's uid, or
/// being claimed by this process.
fn is_claimed(instance: &Instance, claiming: &dyn Fn(&str) -> bool) -> bool {
    instance.tags.contains_key(tag::UID) || claiming(&instance.id)
}

/// Whether a spare has finished its bootstrap and waits in `state`.
pub fn is_ready(instance: &Instance, state: WarmState) -> bool {
    let bootstrapped = instance.tags.get(tag::BOOTSTRAP).map(String::as_str) == Some(tag::BOOTSTRAP_COMPLETE);
    let waiting = match state {
        WarmState::Running => InstanceState::Running,
        WarmState::Stopped => InstanceState::Stopped,
    };
    bootstrapped && instance.state == waiting
}

/// Plans the pool of `size` spares in `state` from `image` (`None`: no image
/// resolves now, so nothing is judged stale and nothing launched). `members` are the
/// pool's instances, gone ones included; `pending` the launch tokens written to the
/// status; `claiming` says which instances this process is claiming. Pure.
pub fn plan(
    size: u32,
    state: WarmState,
    image: Option<&str>,
    members: &[Instance],
    pending: &[String],
    claiming: &dyn Fn(&str) -> bool,
) -> SparePlan {
    let mut plan = SparePlan::default();
    // A RunInstances answer is recorded as `pending`; any other state, or being
    // gone, was seen by a description.
    for token in pending {
        let launched = members.iter().find(|i| i.tags.get(tag::SPARE) == Some(token));
        match launched {
            None => plan.relaunch.push(token.clone()),
            Some(i) if i.state != InstanceState::Pending => plan.seen.push(token.clone()),
            Some(_) => {}
        }
    }
    let live: Vec<&Instance> = members.iter().filter(|i| !i.state.is_gone()).collect();
    plan.counts.claimed = live.iter().filter(|i| is_claimed(i, claiming)).count() as u32;
    let mut fresh: Vec<&Instance> = Vec::new();
    for i in live.into_iter().filter(|i| !is_claimed(i, claiming)) {
        let failed = i.tags.get(tag::BOOTSTRAP).map(String::as_str) == Some(tag::BOOTSTRAP_FAILED);
        let superseded = image.is_some_and(|newest| i.image_id != newest);
        if failed || superseded {
            plan.terminate.push(i.id.clone());
            plan.counts.stale += 1;
        } else {
            fresh.push(i);
        }
    }
    // Ready ones are kept first; among the rest, the oldest launches.
    fresh.sort_by(|a, b| {
        is_ready(b, state)
            .cmp(&is_ready(a, state))
            .then(a.launched_at.cmp(&b.launched_at))
            .then(a.id.cmp(&b.id))
    });
    let unseen = plan.relaunch.len() as u32;
    let keep = (size.saturating_sub(unseen) as usize).min(fresh.len());
    for surplus in &fresh[keep..] {
        plan.terminate.push(surplus.id.clone());
    }
    for i in &fresh[..keep] {
        let bootstrapped = i.tags.get(tag::BOOTSTRAP).map(String::as_str) == Some(tag::BOOTSTRAP_COMPLETE);
        if is_ready(i, state) {
            plan.counts.available += 1;
            continue;
        }
        plan.counts.launching += 1;
        match (state, i.state) {
            (WarmState::Stopped, InstanceState::Running) if bootstrapped => plan.stop.push(i.id.clone()),
            (WarmState::Running, InstanceState::Stopped) if bootstrapped => plan.start.push(i.id.clone()),
            _ => {}
        }
    }
    plan.counts.launching += unseen;
    if image.is_some() {
        plan.launch = size.saturating_sub(keep as u32 + unseen);
        plan.counts.launching += plan.launch;
    }
    plan
}

pub async fn reconcile(class: Arc<FeatureEnvironmentClass>, ctx: Arc<Context>) -> Result<Action> {
    instrumented(class.clone(), ctx.clone(), CONTROLLER, apply(class, ctx.clone())).await
}

pub fn error_policy(class: Arc<FeatureEnvironmentClass>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(class, error, ctx, CONTROLLER)
}

async fn apply(class: Arc<FeatureEnvironmentClass>, ctx: Arc<Context>) -> Result<Action> {
    let name = class.name_any();
    let uid = class.uid().ok_or(Error::InvalidObject("metadata.uid"))?;
    let pool = class.spec.warm_pool.clone().unwrap_or_default();
    let current = class
        .status
        .as_ref()
        .and_then(|s| s.warm_pool.clone())
        .unwrap_or_default();
    let members = ctx.inventory.read(|s| s.warm_pool_members(&name));
    if pool.size == 0 && members.iter().all(|i| i.state.is_gone()) && current.pending_launches.is_empty() {
        // No pool, and nothing of one left: nothing to keep, nothing to report.
        if class.status.as_ref().is_some_and(|s| s.warm_pool.is_some()) {
            patch_status(&ctx, &name, None).await?;
        }
        return Ok(Action::await_change());
    }

    // Observe: the image environments of this class launch from now.
    let image = if pool.size == 0 {
        None
    } else {
        super::environment::newest_image(&ctx, &class, &name).await?.ok()
    };
    let claims = &ctx.memory.instance_claims;
    let plan = plan(
        pool.size,
        pool.state,
        image.as_ref().map(|i| i.id.as_str()),
        &members,
        &current.pending_launches,
        &|id| claims.is_claiming(id),
    );

    // Tokens are written before their launches.
    let mut status = current.clone();
    status.pending_launches.retain(|t| !plan.seen.contains(t));
    let fresh_tokens: Vec<String> = (0..u64::from(plan.launch))
        .map(|k| naming::spare_token(&uid, current.launched + k))
        .collect();
    if !fresh_tokens.is_empty() {
        status.launched += fresh_tokens.len() as u64;
        status.pending_launches.extend(fresh_tokens.iter().cloned());
        patch_status(&ctx, &name, Some(&status)).await?;
    }
    if let Some(image) = &image {
        for token in &plan.relaunch {
            match launch_spare(&ctx, &class, token, &image.id).await {
                Ok(()) => {}
                // The request is no longer the one first made with this token (a newer
                // image, a tag moved: EC2's IdempotentParameterMismatch). Whatever that
                // launch made is a member like any other once described.
                Err(Error::Cloud(CloudError::InvalidRequest { message, .. })) => {
                    warn!(class = %name, token, message, "a written launch cannot be repeated; forgetting its token");
                    status.pending_launches.retain(|t| t != token);
                }
                Err(e) => return Err(e),
            }
        }
        for token in &fresh_tokens {
            launch_spare(&ctx, &class, token, &image.id).await?;
        }
    }
    terminate_spares(&ctx, &class, &plan.terminate).await?;
    for id in &plan.stop {
        ignore_state(ctx.cloud.compute.stop_instance(id).await)?;
        info!(class = %name, instance_id = %id, "stopping bootstrapped spare");
    }
    for id in &plan.start {
        ignore_state(ctx.cloud.compute.start_instance(id).await)?;
        info!(class = %name, instance_id = %id, "starting spare (the pool now keeps them running)");
    }
    if !(plan.stop.is_empty() && plan.start.is_empty()) {
        ctx.inventory.wake();
    }

    status.available = plan.counts.available;
    status.launching = plan.counts.launching;
    status.stale = plan.counts.stale;
    status.image_id = image.map(|i| i.id).or(current.image_id.clone());
    status.observed_generation = class.metadata.generation;
    ctx.metrics.instance_pool_members(&name, plan.counts.as_array());
    // Compared with the object, not `current`: a class without a status yet gets one.
    if class.status.as_ref().and_then(|s| s.warm_pool.as_ref()) != Some(&status) {
        patch_status(&ctx, &name, Some(&status)).await?;
    }
    // Spares' changes trigger reconciles through the inventory; a newer image does
    // not, so look at the slow poll interval (the image look-up is cached as long).
    Ok(Action::requeue(
        ctx.config.slow_poll_interval.max(Duration::from_secs(1)),
    ))
}

/// An instance already in, or on its way to, the state asked for is no error.
fn ignore_state(result: Result<(), CloudError>) -> Result<()> {
    match result {
        Ok(()) | Err(CloudError::InvalidState { .. }) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The baseline a spare is bootstrapped with: the class's services pinned as an
/// environment's would be (each tag's digest where the registry gives one), so a
/// claim pulls and rolls only the images under test and any tag moved since; its
/// addons; no database.
async fn spare_bootstrap(ctx: &Context, class: &FeatureEnvironmentClass) -> Result<BootstrapSpec> {
    let mut services = Vec::with_capacity(class.spec.services.len());
    for s in &class.spec.services {
        let digest = match super::environment::image_digest(ctx, &s.repository, &s.tag).await {
            Ok(digest) => digest,
            // Reported against the class by its environments; the spare runs the tag.
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let image = match digest {
            Some(digest) => format!("{}@{digest}", s.repository),
            None => format!("{}:{}", s.repository, s.tag),
        };
        services.push(ServiceImage {
            name: s.name.clone(),
            image,
        });
    }
    Ok(BootstrapSpec {
        environment: format!("warm pool of class {}", class.name_any()),
        region: ctx.config.region.clone().unwrap_or_default(),
        services,
        addons: class.spec.addons.iter().map(|a| a.as_str().to_owned()).collect(),
        database_parameter: None,
        database_wait_seconds: 0,
    })
}

async fn launch_spare(ctx: &Context, class: &FeatureEnvironmentClass, token: &str, image: &str) -> Result<()> {
    let name = class.name_any();
    let template = &class.spec.instance;
    let mut tags: Tags = template.tags.clone();
    tags.extend(BTreeMap::from([
        ("Name".to_owned(), naming::spare_name(&name)),
        (tag::CLUSTER.to_owned(), ctx.config.cluster_id.clone()),
        (tag::WARM_POOL.to_owned(), name.clone()),
        (tag::SPARE.to_owned(), token.to_owned()),
    ]));
    let request = LaunchRequest {
        client_token: token.to_owned(),
        image_id: image.to_owned(),
        instance_type: template.instance_type.clone(),
        subnet_id: template.subnet_ids.first().cloned().unwrap_or_default(),
        security_group_ids: template.security_group_ids.clone(),
        instance_profile: template.instance_profile.clone(),
        root_volume_gib: template.root_volume_gib,
        user_data: bootstrap::render_user_data(&spare_bootstrap(ctx, class).await?),
        tags,
    };
    let instance = ctx.cloud.compute.launch_instance(&request).await?;
    info!(class = %name, instance_id = %instance.id, token, "launched spare");
    ctx.inventory.record_instance(instance.clone());
    let message = format!("launched spare {} from {image}", instance.id);
    ctx.event(class, EventType::Normal, "LaunchingSpare", message).await;
    Ok(())
}

/// Terminates the spares the plan gave up, each only if a description made now
/// still shows it unclaimed (the plan worked from the inventory, which may predate a
/// claim). One DescribeInstances per pass that terminates anything.
async fn terminate_spares(ctx: &Context, class: &FeatureEnvironmentClass, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let name = class.name_any();
    let now = ctx.cloud.compute.find_instances(tag::WARM_POOL, &name).await?;
    for id in ids {
        let Some(spare) = now.iter().find(|i| &i.id == id) else {
            continue;
        };
        if spare.state.is_gone() {
            continue;
        }
        if spare.tags.contains_key(tag::UID) || ctx.memory.instance_claims.is_claiming(id) {
            warn!(class = %name, instance_id = %id, "spare claimed since the last poll; keeping it");
            continue;
        }
        match ctx.cloud.compute.terminate_instance(id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
        info!(class = %name, instance_id = %id, image = %spare.image_id, "terminating spare");
        let message = format!("terminating spare {id} (image {})", spare.image_id);
        ctx.event(class, EventType::Normal, "TerminatingSpare", message).await;
        ctx.inventory.wake();
    }
    Ok(())
}

async fn patch_status(ctx: &Context, name: &str, warm_pool: Option<&WarmPoolStatus>) -> Result<()> {
    let api: Api<FeatureEnvironmentClass> = Api::all(ctx.client.clone());
    let status = FeatureEnvironmentClassStatus {
        warm_pool: warm_pool.cloned(),
    };
    let patch = serde_json::json!({
        "apiVersion": "featureenv.io/v1alpha1",
        "kind": "FeatureEnvironmentClass",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "ami-0new";
    const OLD: &str = "ami-0old";

    fn spare(id: &str, image: &str, state: InstanceState, bootstrap: Option<&str>) -> Instance {
        let mut i = crate::test_fixtures::instance(id, state);
        i.image_id = image.into();
        i.tags.insert(tag::WARM_POOL.into(), "standard".into());
        i.tags.insert(tag::SPARE.into(), format!("token-{id}"));
        if let Some(b) = bootstrap {
            i.tags.insert(tag::BOOTSTRAP.into(), b.into());
        }
        i
    }

    fn ready(id: &str) -> Instance {
        spare(id, NEW, InstanceState::Running, Some(tag::BOOTSTRAP_COMPLETE))
    }

    fn nobody(_: &str) -> bool {
        false
    }

    #[test]
    fn an_empty_pool_launches_its_size() {
        let p = plan(2, WarmState::Running, Some(NEW), &[], &[], &nobody);
        assert_eq!(p.launch, 2);
        assert_eq!(p.counts.launching, 2);
        assert!(p.terminate.is_empty() && p.relaunch.is_empty());
    }

    #[test]
    fn a_claimed_spare_is_replaced_and_never_counted_or_touched() {
        let mut claimed = ready("i-1");
        claimed.tags.insert(tag::UID.into(), "env-uid".into());
        let members = [claimed, ready("i-2")];
        let p = plan(2, WarmState::Running, Some(NEW), &members, &[], &nobody);
        assert_eq!((p.counts.available, p.counts.claimed, p.launch), (1, 1, 1));
        assert!(p.terminate.is_empty());
        // A claim this process has only tagged counts the same.
        let p = plan(2, WarmState::Running, Some(NEW), &[ready("i-2")], &[], &|id| {
            id == "i-2"
        });
        assert_eq!((p.counts.available, p.counts.claimed, p.launch), (0, 1, 2));
    }

    #[test]
    fn a_superseded_image_is_terminated_before_its_replacement_launches_claimed_ones_stay() {
        let mut claimed = spare("i-1", OLD, InstanceState::Running, Some(tag::BOOTSTRAP_COMPLETE));
        claimed.tags.insert(tag::UID.into(), "env-uid".into());
        let stale = spare("i-2", OLD, InstanceState::Running, Some(tag::BOOTSTRAP_COMPLETE));
        let p = plan(1, WarmState::Running, Some(NEW), &[claimed, stale], &[], &nobody);
        assert_eq!(p.terminate, ["i-2"]);
        assert_eq!(
            p.launch, 1,
            "the stale spare no longer counts: the pool stays at its size"
        );
        assert_eq!(p.counts.stale, 1);
    }

    #[test]
    fn never_more_than_size_unclaimed_spares() {
        let members = [
            ready("i-1"),
            ready("i-2"),
            spare("i-3", NEW, InstanceState::Pending, None),
        ];
        let p = plan(2, WarmState::Running, Some(NEW), &members, &[], &nobody);
        assert_eq!(p.terminate, ["i-3"], "the surplus is the one not ready");
        assert_eq!(p.launch, 0);
        let p = plan(0, WarmState::Running, None, &members, &[], &nobody);
        assert_eq!(p.terminate.len(), 3, "a pool of size 0 keeps nothing");
    }

    #[test]
    fn a_written_token_without_a_spare_is_launched_again_not_anew() {
        let pending = vec!["token-i-9".to_owned()];
        let p = plan(1, WarmState::Running, Some(NEW), &[], &pending, &nobody);
        assert_eq!(p.relaunch, pending);
        assert_eq!(p.launch, 0, "the repeated launch fills the pool");
        // Answered by RunInstances (pending): neither repeated nor done.
        let launched = spare("i-9", NEW, InstanceState::Pending, None);
        let p = plan(1, WarmState::Running, Some(NEW), &[launched], &pending, &nobody);
        assert!(p.relaunch.is_empty() && p.seen.is_empty());
        assert_eq!(p.launch, 0);
        // Described running: done.
        let p = plan(1, WarmState::Running, Some(NEW), &[ready("i-9")], &pending, &nobody);
        assert_eq!(p.seen, pending);
        // Terminated before anyone looked: done too, not launched again forever.
        let gone = spare("i-9", NEW, InstanceState::Terminated, None);
        let p = plan(1, WarmState::Running, Some(NEW), &[gone], &pending, &nobody);
        assert_eq!(p.seen, pending);
        assert_eq!(p.launch, 1);
    }

    #[test]
    fn a_stopped_pool_stops_bootstrapped_spares_and_counts_only_stopped_ones() {
        let booted = ready("i-1");
        let asleep = spare("i-2", NEW, InstanceState::Stopped, Some(tag::BOOTSTRAP_COMPLETE));
        let p = plan(2, WarmState::Stopped, Some(NEW), &[booted, asleep], &[], &nobody);
        assert_eq!(p.stop, ["i-1"]);
        assert_eq!((p.counts.available, p.counts.launching), (1, 1));
    }

    #[test]
    fn failed_bootstraps_are_replaced() {
        let failed = spare("i-1", NEW, InstanceState::Running, Some(tag::BOOTSTRAP_FAILED));
        let p = plan(1, WarmState::Running, Some(NEW), &[failed], &[], &nobody);
        assert_eq!(p.terminate, ["i-1"]);
        assert_eq!(p.launch, 1);
    }

    #[test]
    fn without_an_image_nothing_is_judged_stale_or_launched() {
        let p = plan(2, WarmState::Running, None, &[ready("i-1")], &[], &nobody);
        assert!(p.terminate.is_empty());
        assert_eq!(p.launch, 0);
        assert_eq!(p.counts.available, 1);
    }
}
