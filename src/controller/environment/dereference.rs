//! The reads of an environment's reconcile, made before anything is decided or
//! changed: its class, the newest image its class selects, the digests of its
//! images, its instance, and the environments counted against its class's cap. I/O:
//! the class store, the inventory, the API server, and EC2/ECR behind short caches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::Identity;
use super::validate::{Invalid, Resolved, ServiceImage};
use crate::api::environment::{DeployedImage, FeatureEnvironmentStatus};
use crate::api::{FeatureEnvironment, FeatureEnvironmentClass};
use crate::cloud::{CloudError, Image, ImageSelectorTerm, Instance, tag};
use crate::controller::{Context, Error, Result};

/// How long after a launch an instance may still be invisible to DescribeInstances
/// (EC2 is eventually consistent); past it, an instance that cannot be found is lost.
/// Terminated instances stay visible for about an hour, so a loss is normally seen
/// by its state, not by its absence.
const LAUNCH_VISIBILITY_GRACE: Duration = Duration::from_secs(300);

/// Retry for a tag not (yet) in its registry: CI may still be pushing it.
const IMAGE_RETRY: Duration = Duration::from_secs(30);
/// Retry for a class whose selector matches no image: the pipeline may be baking one.
const AMI_RETRY: Duration = Duration::from_secs(60);

/// The environment's class by the one rule ([`FeatureEnvironmentClass::of`]), from
/// the watched classes (listed in full before any reconcile runs).
pub fn class(ctx: &Context, env: &FeatureEnvironment) -> Option<Arc<FeatureEnvironmentClass>> {
    let classes = ctx.classes.state();
    FeatureEnvironmentClass::of(env.spec.class_name.as_deref(), &classes).cloned()
}

/// The labels of `namespace`, for a class's `spec.namespaceSelector`. Read when an
/// environment is admitted (once per environment), so no namespace watch is kept.
pub async fn namespace_labels(ctx: &Context, namespace: &str) -> Result<BTreeMap<String, String>> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    Ok(api.get_metadata(namespace).await?.metadata.labels.unwrap_or_default())
}

/// How many other environments of `namespace` hold an admission (a launch token)
/// in class `class_name`, each environment's class decided by the same rule.
pub async fn admitted_in_class(ctx: &Context, namespace: &str, uid: &str, class_name: &str) -> Result<usize> {
    let api: Api<FeatureEnvironment> = Api::namespaced(ctx.client.clone(), namespace);
    let classes = ctx.classes.state();
    let class_of = |e: &FeatureEnvironment| {
        FeatureEnvironmentClass::of(e.spec.class_name.as_deref(), &classes).map(|c| c.name_any())
    };
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|o| o.uid().as_deref() != Some(uid))
        .filter(|o| o.status.as_ref().is_some_and(|s| s.launch_token.is_some()))
        .filter(|o| class_of(o).as_deref() == Some(class_name))
        .count())
}

pub fn selector_terms(class: &FeatureEnvironmentClass) -> Vec<ImageSelectorTerm> {
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

/// The newest image the class selects, shared by every environment reconciled
/// within the cache's TTL. No image is a problem looked at again later: a new image
/// triggers no reconcile.
pub async fn newest_image(
    ctx: &Context,
    class: &FeatureEnvironmentClass,
    class_name: &str,
) -> Result<Result<Image, Invalid>> {
    let terms = selector_terms(class);
    let image = ctx
        .images
        .get_or_fetch(&format!("{terms:?}"), || ctx.cloud.compute.resolve_image(&terms))
        .await?;
    Ok(image.ok_or_else(|| {
        Invalid::outside(
            "NoMatchingImage",
            format!("class {class_name}: spec.ami.selectorTerms match no available image"),
            AMI_RETRY,
        )
    }))
}

/// Resolves every service's tag to a digest where the registry allows. A missing
/// repository or tag is reported against the field that named it, and looked at
/// again later (an environment created for a pull request before CI pushed its
/// image must not stay stuck).
pub async fn images(
    ctx: &Context,
    resolved: &Resolved,
    env: &FeatureEnvironment,
) -> Result<Result<Vec<DeployedImage>, Invalid>> {
    let mut images = Vec::with_capacity(resolved.services.len());
    for service in &resolved.services {
        let image = &service.image;
        let digest = match (&image.digest, &image.tag) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(tag)) => match digest(ctx, &image.repository, tag).await {
                Ok(d) => d,
                Err(e) if e.is_not_found() => {
                    let field = field_of(service, resolved, env);
                    let message = format!("{field}: {}:{tag} not found in its registry", image.repository);
                    return Ok(Err(Invalid::outside("ImageNotFound", message, IMAGE_RETRY)));
                }
                Err(e) => return Err(e.into()),
            },
            (None, None) => None,
        };
        images.push(DeployedImage {
            name: service.name.clone(),
            image: image.pinned(digest.as_deref()),
        });
    }
    Ok(Ok(images))
}

/// The field that named a service's image: the environment's override or the
/// class's baseline.
fn field_of(service: &ServiceImage, resolved: &Resolved, env: &FeatureEnvironment) -> String {
    if service.overridden {
        let i = env.spec.services.iter().position(|s| s.name == service.name);
        format!("spec.services[{}].image", i.unwrap_or_default())
    } else {
        let i = resolved.services.iter().position(|s| s.name == service.name);
        format!(
            "class {}: spec.services[{}]",
            resolved.class_name,
            i.unwrap_or_default()
        )
    }
}

/// A tag's digest, shared by the environments of a burst and the spares of warm
/// pools (see `Context::digests`).
pub async fn digest(ctx: &Context, repository: &str, tag: &str) -> Result<Option<String>, CloudError> {
    let key = format!("{repository}:{tag}");
    ctx.digests
        .get_or_fetch(&key, || ctx.cloud.registry.resolve_digest(repository, tag))
        .await
}

/// What became of the environment's instance.
#[derive(Debug)]
pub enum InstanceSight {
    /// Nothing launched yet (or a launch whose token is persisted but whose
    /// instance is not recorded: launching again with that token is idempotent).
    NotLaunched,
    Live(Instance),
    /// The recorded instance was terminated, or cannot be found long after its
    /// launch, without the operator deleting it.
    Lost {
        id: String,
        state: String,
    },
}

/// The environment's live instance: from the inventory, or — when a launch may have
/// happened that the inventory has not seen yet — from one Describe by our uid tag.
pub async fn instance(
    ctx: &Context,
    id: &Identity,
    status: &FeatureEnvironmentStatus,
    now: Timestamp,
) -> Result<InstanceSight> {
    let mut known = ctx.inventory.read(|s| s.instances_of(&id.uid));
    let recorded = status.instance.as_ref().and_then(|i| i.id.clone());
    if known.is_empty() && status.launch_token.is_some() {
        let found = ctx.cloud.compute.find_instances(tag::UID, &id.uid).await?;
        for i in &found {
            ctx.inventory.record_instance(i.clone());
        }
        if let Some(recorded) = &recorded
            && !found.iter().any(|i| !i.state.is_gone())
        {
            return match found.into_iter().find(|i| &i.id == recorded) {
                Some(gone) => Ok(InstanceSight::Lost {
                    id: gone.id,
                    state: gone.state.as_str().to_owned(),
                }),
                None if launched_long_ago(status, now) => Ok(InstanceSight::Lost {
                    id: recorded.clone(),
                    state: "not found".into(),
                }),
                // Launched (the id is in status) but not visible yet: EC2's eventual
                // consistency. Never launch a second one; wait for it to show.
                None => Err(Error::Cloud(CloudError::NotFound {
                    operation: "DescribeInstances",
                    message: format!("instance {recorded} of {} not visible yet", id.key),
                })),
            };
        }
        known = found.into_iter().filter(|i| !i.state.is_gone()).collect();
    }
    if known.len() > 1 {
        warn!(namespace = %id.namespace, name = %id.name, count = known.len(), "more than one live instance carries this environment's uid");
    }
    known.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
    Ok(known
        .into_iter()
        .next()
        .map_or(InstanceSight::NotLaunched, InstanceSight::Live))
}

fn launched_long_ago(status: &FeatureEnvironmentStatus, now: Timestamp) -> bool {
    status
        .launched_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|at| now.duration_since(at) > jiff::SignedDuration::try_from(LAUNCH_VISIBILITY_GRACE).unwrap())
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
