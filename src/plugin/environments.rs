//! The plugin's commands on environments as objects: create, list, extend, sleep,
//! wake, wait.
//! I/O against the API server with the caller's identity.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use super::Target;
use super::lifetime::{Extension, extend as extended, go_duration};
use super::output::{human_duration, table};
use crate::api::conditions::{READY, find};
use crate::api::duration::parse_duration;
use crate::api::environment::ServiceOverride;
use crate::api::{
    FeatureEnvironment, FeatureEnvironmentClass, FeatureEnvironmentSpec, OWNER_LABEL, Phase, owner_label_value,
};

/// What `create` was asked for.
pub struct Request {
    pub name: String,
    pub class: Option<String>,
    pub images: Vec<String>,
    pub ttl: Option<Duration>,
    pub instance_type: Option<String>,
    pub owner: Option<String>,
}

/// The environment `request` describes, owned by `owner`. Pure.
pub fn environment(request: &Request, owner: &str) -> anyhow::Result<FeatureEnvironment> {
    let services = request
        .images
        .iter()
        .map(|flag| match flag.split_once('=') {
            Some((name, image)) if !name.is_empty() && !image.is_empty() => Ok(ServiceOverride {
                name: name.to_owned(),
                image: image.to_owned(),
            }),
            _ => Err(anyhow!("--image {flag:?}: expected SERVICE=IMAGE, e.g. payments=123456789012.dkr.ecr.us-east-1.amazonaws.com/payments:pr-42")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = FeatureEnvironmentSpec {
        class_name: request.class.clone(),
        ttl: request.ttl.map(go_duration),
        owner: Some(owner.to_owned()),
        services,
        instance_type: request.instance_type.clone(),
        sleeping: None,
    };
    let mut env = FeatureEnvironment::new(&request.name, spec);
    if let Some(value) = owner_label_value(owner) {
        env.labels_mut().insert(OWNER_LABEL.to_owned(), value);
    }
    Ok(env)
}

/// Who the API server says the caller is (a SelfSubjectReview, which every
/// authenticated user may create).
pub async fn whoami(client: &kube::Client) -> anyhow::Result<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("asking the API server who you are (SelfSubjectReview); pass --owner instead")?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| anyhow!("the API server did not say who you are; pass --owner"))
}

pub async fn create(t: &Target, request: Request) -> anyhow::Result<()> {
    let owner = match &request.owner {
        Some(owner) => owner.clone(),
        None => whoami(&t.client).await?,
    };
    let env = environment(&request, &owner)?;
    let api: Api<FeatureEnvironment> = Api::namespaced(t.client.clone(), &t.namespace);
    match api.create(&PostParams::default(), &env).await {
        Ok(_) => {
            println!("featureenvironment.featureenv.io/{} created", request.name);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => bail!(
            "featureenvironment {} already exists in namespace {}",
            request.name,
            t.namespace
        ),
        // The API server's message names the field (schema, CEL rules, admission policy).
        Err(kube::Error::Api(e)) => bail!("{}", e.message),
        Err(e) => Err(e.into()),
    }
}

pub async fn list(t: &Target, all_namespaces: bool, owner: Option<String>, all_owners: bool) -> anyhow::Result<()> {
    let api: Api<FeatureEnvironment> = if all_namespaces {
        Api::all(t.client.clone())
    } else {
        Api::namespaced(t.client.clone(), &t.namespace)
    };
    let mut params = ListParams::default();
    if !all_owners {
        let owner = match owner {
            Some(owner) => owner,
            None => whoami(&t.client).await?,
        };
        let value = owner_label_value(&owner).ok_or_else(|| anyhow!("--owner {owner:?} has no label form"))?;
        params = params.labels(&format!("{OWNER_LABEL}={value}"));
    }
    let mut envs = api.list(&params).await?.items;
    envs.sort_by_key(|e| (e.namespace(), e.name_any()));
    if envs.is_empty() {
        match all_namespaces {
            true => eprintln!("No resources found"),
            false => eprintln!("No resources found in {} namespace.", t.namespace),
        }
        return Ok(());
    }
    let now = Timestamp::now();
    let mut headers = vec!["NAME", "PHASE", "OWNER", "CLASS", "URL", "EXPIRES", "AGE"];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|env| {
            let status = env.status.clone().unwrap_or_default();
            let mut row = vec![
                env.name_any(),
                status.phase.as_str().to_owned(),
                env.spec.owner.clone().unwrap_or_default(),
                env.spec.class_name.clone().unwrap_or_else(|| "(default)".into()),
                status.endpoints.get("api").cloned().unwrap_or_default(),
                expires(status.expires_at.as_deref(), now),
                env.creation_timestamp()
                    .map(|t| human_duration(since(t.0, now)))
                    .unwrap_or_default(),
            ];
            if all_namespaces {
                row.insert(0, env.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    print!("{}", table(&headers, &rows));
    Ok(())
}

fn since(then: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or_default()
}

fn expires(at: Option<&str>, now: Timestamp) -> String {
    match at.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(at) if at > now => format!("in {}", human_duration(since(now, at))),
        Some(_) => "expired".to_owned(),
        None => String::new(),
    }
}

/// The environment `name`, or an error that says where it was looked for.
pub async fn get(t: &Target, name: &str) -> anyhow::Result<FeatureEnvironment> {
    let api: Api<FeatureEnvironment> = Api::namespaced(t.client.clone(), &t.namespace);
    api.get_opt(name)
        .await?
        .ok_or_else(|| anyhow!("featureenvironment {name} not found in namespace {}", t.namespace))
}

pub async fn extend(t: &Target, name: &str, by: Duration) -> anyhow::Result<()> {
    let env = get(t, name).await?;
    if env.metadata.deletion_timestamp.is_some() {
        bail!("featureenvironment {name} is being deleted");
    }
    let created = env
        .creation_timestamp()
        .ok_or_else(|| anyhow!("featureenvironment {name} has no creation time"))?
        .0;
    let recorded = env.status.as_ref().and_then(|s| s.expires_at.as_deref());
    let Some(class) = class_of(t, &env).await? else {
        // Without the class the maximum cannot be checked here; the API server's
        // admission policy and the operator still enforce it.
        let at: Timestamp = recorded
            .ok_or_else(|| anyhow!("featureenvironment {name} has no expiry yet, and its class is not readable"))?
            .parse()
            .context("status.expiresAt")?;
        eprintln!("warning: cannot read the class; its maximum TTL is checked on admission instead");
        let extension = extended(created, at, by, Duration::MAX, "").map_err(|e| anyhow!(e))?;
        return write_ttl(t, name, &extension).await;
    };
    let class_name = class.name_any();
    let max = parse_duration(&class.spec.ttl.max).map_err(|e| anyhow!("class {class_name}: spec.ttl.max: {e}"))?;
    let expires_at = match recorded {
        Some(at) => at.parse().context("status.expiresAt")?,
        None => {
            let ttl = env.spec.ttl.as_deref().unwrap_or(&class.spec.ttl.default);
            let ttl = parse_duration(ttl).map_err(|e| anyhow!("spec.ttl: {e}"))?;
            created + SignedDuration::try_from(ttl)?
        }
    };
    let extension = extended(created, expires_at, by, max, &class_name).map_err(|e| anyhow!(e))?;
    write_ttl(t, name, &extension).await
}

/// The class of `env` (named, or the default one); `None` when the caller may not
/// read classes (they are cluster-scoped, and a namespaced `edit` does not cover them).
async fn class_of(t: &Target, env: &FeatureEnvironment) -> anyhow::Result<Option<Arc<FeatureEnvironmentClass>>> {
    let api: Api<FeatureEnvironmentClass> = Api::all(t.client.clone());
    let classes = match api.list(&ListParams::default()).await {
        Ok(list) => list.items.into_iter().map(Arc::new).collect::<Vec<_>>(),
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let named = env.spec.class_name.as_deref();
    match FeatureEnvironmentClass::of(named, &classes) {
        Some(class) => Ok(Some(class.clone())),
        None => bail!("spec.className: class {} not found", named.unwrap_or("(default)")),
    }
}

/// Writes the extended `spec.ttl` and says when the environment now expires.
async fn write_ttl(t: &Target, name: &str, extension: &Extension) -> anyhow::Result<()> {
    let ttl = go_duration(extension.ttl);
    let patch = serde_json::json!({"spec": {"ttl": ttl}});
    let api: Api<FeatureEnvironment> = Api::namespaced(t.client.clone(), &t.namespace);
    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        // The API server's message names the field (the admission policy's maximum).
        Err(kube::Error::Api(e)) => bail!("{}", e.message),
        Err(e) => return Err(e.into()),
    }
    println!(
        "featureenvironment.featureenv.io/{name} extended: expires at {} (spec.ttl {ttl})",
        extension.expires_at
    );
    Ok(())
}

/// Sets `spec.sleeping`: the operator stops or starts the instance and database.
pub async fn set_sleeping(t: &Target, name: &str, sleeping: bool) -> anyhow::Result<()> {
    get(t, name).await?;
    let patch = serde_json::json!({"spec": {"sleeping": sleeping}});
    let api: Api<FeatureEnvironment> = Api::namespaced(t.client.clone(), &t.namespace);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let what = if sleeping {
        "goes to sleep (instance and database stopping)"
    } else {
        "wakes up (`kubectl featureenv wait` until it is Ready)"
    };
    println!("featureenvironment.featureenv.io/{name} {what}");
    Ok(())
}

/// Watches `name` until it is Ready (prints the URL and returns), Failed or gone
/// (an error with the reason), or `timeout` passes. Prints each new phase and
/// reason on stderr as it goes.
pub async fn wait(t: &Target, name: &str, timeout: Duration) -> anyhow::Result<()> {
    get(t, name).await?;
    let api: Api<FeatureEnvironment> = Api::namespaced(t.client.clone(), &t.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api, config).touched_objects().boxed();
    let mut last = String::new();
    let mut seen = None;
    let watch = async {
        while let Some(env) = changes.try_next().await? {
            let status = env.status.clone().unwrap_or_default();
            let ready = find(&status.conditions, READY);
            let (reason, message) = ready.map_or(("", ""), |c| (c.reason.as_str(), c.message.as_str()));
            let line = format!("{}: {reason} {message}", status.phase.as_str());
            if line != last {
                eprintln!("{name}: {}", line.trim_end());
                last = line;
            }
            seen = Some(status.phase);
            if env.metadata.deletion_timestamp.is_some() {
                bail!("featureenvironment {name} is being deleted");
            }
            match status.phase {
                Phase::Ready => {
                    let url = status.endpoints.get("api").cloned().unwrap_or_default();
                    println!("featureenvironment.featureenv.io/{name} is Ready {url}");
                    return Ok(());
                }
                Phase::Failed => bail!("featureenvironment {name} failed: {reason}: {message}"),
                _ => {}
            }
        }
        bail!("the watch of featureenvironment {name} ended")
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(result) => result,
        Err(_) => bail!(
            "timed out after {} waiting for featureenvironment {name} to be Ready (it is {})",
            go_duration(timeout),
            seen.map_or("unknown", |p| p.as_str())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(images: &[&str]) -> Request {
        Request {
            name: "pr-42".into(),
            class: Some("standard".into()),
            images: images.iter().map(|s| (*s).to_owned()).collect(),
            ttl: Some(Duration::from_secs(5400)),
            instance_type: None,
            owner: None,
        }
    }

    #[test]
    fn flags_become_an_environment_labelled_with_its_owner() {
        let env = environment(
            &request(&["payments=registry.example/payments:pr-42"]),
            "alice@example.com",
        )
        .unwrap();
        assert_eq!(env.spec.ttl.as_deref(), Some("1h30m"));
        assert_eq!(env.spec.owner.as_deref(), Some("alice@example.com"));
        assert_eq!(env.spec.services[0].name, "payments");
        assert_eq!(env.spec.services[0].image, "registry.example/payments:pr-42");
        assert_eq!(
            env.labels().get(OWNER_LABEL).map(String::as_str),
            Some("alice_example.com")
        );
    }

    #[test]
    fn a_malformed_image_flag_is_named() {
        for flag in ["payments", "=image", "payments="] {
            let err = environment(&request(&[flag]), "alice").unwrap_err().to_string();
            assert!(err.contains("--image") && err.contains("SERVICE=IMAGE"), "{err}");
        }
    }

    #[test]
    fn expiry_reads_as_a_relative_time() {
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        assert_eq!(expires(Some("2026-12-03T13:30:00Z"), now), "in 3h30m");
        assert_eq!(expires(Some("2026-12-03T09:00:00Z"), now), "expired");
        assert_eq!(expires(None, now), "");
    }
}
