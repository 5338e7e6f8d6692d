//! Validation of an environment against its class — what a schema cannot see: an
//! unknown class, a disallowed instance type, a TTL over the class maximum, an
//! image reference that does not parse. Yields everything the reconcile needs, or a
//! problem: a reason, a message naming the field, and when to look again. Also the
//! expiry, which must be known even when nothing else is valid. Pure.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::class::{Addon, FeatureEnvironmentClass, FeatureEnvironmentClassSpec};
use crate::api::duration::parse_duration;
use crate::api::environment::FeatureEnvironmentSpec;
use crate::api::image_ref::ImageReference;

/// Why an environment cannot be provisioned as specified. `reason` is the stable
/// condition reason; `message` names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
    pub retry: Retry,
}

/// When a problem is looked at again (besides at the environment's expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only an edit of the environment or of its class can fix it, and both
    /// trigger a reconcile.
    OnChange,
    /// The cause lies where no watch reaches (a registry, the AMIs, other
    /// environments): look again after this long.
    After(Duration),
}

impl Invalid {
    /// A problem of the spec or of the class.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retry: Retry::OnChange,
        }
    }

    /// A problem whose cause lies outside the watched objects.
    pub fn outside(reason: &'static str, message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry: Retry::After(retry_after),
            ..Self::new(reason, message)
        }
    }
}

/// When the environment expires, whatever else is wrong with it: creation + TTL as
/// resolved under its class when that succeeds; else the expiry last recorded (an
/// edit the class refuses, or a class deleted after launch, neither extends nor ends
/// the environment); else creation + `spec.ttl` when it parses. `None` only for an
/// environment that never got anywhere and names no TTL of its own: it has made
/// nothing that could outlive it.
pub fn expires_at(
    resolved: Result<&Resolved, &Invalid>,
    recorded: Option<&str>,
    spec_ttl: Option<&str>,
    created: Timestamp,
) -> Option<Timestamp> {
    if let Ok(r) = resolved {
        return Some(r.expires_at);
    }
    if let Some(at) = recorded.and_then(|t| t.parse().ok()) {
        return Some(at);
    }
    let ttl = parse_duration(spec_ttl?).ok()?;
    Some(after(created, ttl))
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// A service to deploy: baseline image or the override under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceImage {
    pub name: String,
    pub image: ImageReference,
    /// Whether this replaces the baseline (the image under test).
    pub overridden: bool,
}

/// What an environment resolves to under its class.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub class_name: String,
    pub instance_type: String,
    pub ttl: Duration,
    pub expires_at: Timestamp,
    pub readiness_timeout: Duration,
    pub services: Vec<ServiceImage>,
    pub addons: Vec<Addon>,
    pub database_pool: Option<String>,
}

/// Resolves `spec` under `class`. `created` is the object's creation time (the TTL
/// counts from it, so raising `spec.ttl` extends the environment).
pub fn resolve(
    spec: &FeatureEnvironmentSpec,
    class: Option<&FeatureEnvironmentClass>,
    created: Timestamp,
) -> Result<Resolved, Invalid> {
    let class = class.ok_or_else(|| match &spec.class_name {
        Some(name) => Invalid::new(
            "ClassNotFound",
            format!("spec.className: FeatureEnvironmentClass {name:?} does not exist"),
        ),
        None => Invalid::new(
            "ClassNotFound",
            "spec.className is empty and no FeatureEnvironmentClass is annotated featureenv.io/is-default-class=true",
        ),
    })?;
    let class_name = kube::ResourceExt::name_any(class);
    let cs = &class.spec;

    let ttl = ttl_of(spec, cs, &class_name)?;
    let readiness_timeout = parse_duration(&cs.readiness.timeout).map_err(|e| {
        Invalid::new(
            "InvalidClass",
            format!("class {class_name}: spec.readiness.timeout: {e}"),
        )
    })?;

    let instance_type = instance_type_of(spec, cs, &class_name)?;
    let services = services_of(spec, cs, &class_name)?;

    let expires_at = after(created, ttl);
    Ok(Resolved {
        class_name,
        instance_type,
        ttl,
        expires_at,
        readiness_timeout,
        services,
        addons: cs.addons.clone(),
        database_pool: cs.database_pool.clone(),
    })
}

/// `spec.ttl`, or the class default, within the class maximum.
fn ttl_of(
    spec: &FeatureEnvironmentSpec,
    cs: &FeatureEnvironmentClassSpec,
    class_name: &str,
) -> Result<Duration, Invalid> {
    let max = parse_duration(&cs.ttl.max)
        .map_err(|e| Invalid::new("InvalidClass", format!("class {class_name}: spec.ttl.max: {e}")))?;
    let default = parse_duration(&cs.ttl.default)
        .map_err(|e| Invalid::new("InvalidClass", format!("class {class_name}: spec.ttl.default: {e}")))?;
    let ttl = match &spec.ttl {
        Some(t) => parse_duration(t).map_err(|e| Invalid::new("InvalidTTL", format!("spec.ttl: {e}")))?,
        None => default.min(max),
    };
    if ttl > max {
        return Err(Invalid::new(
            "TTLExceedsMaximum",
            format!(
                "spec.ttl: {} exceeds the maximum {} of class {class_name}",
                spec.ttl.as_deref().unwrap_or_default(),
                cs.ttl.max
            ),
        ));
    }
    Ok(ttl)
}

/// `spec.instanceType`, or the class's, among the types the class allows.
fn instance_type_of(
    spec: &FeatureEnvironmentSpec,
    cs: &FeatureEnvironmentClassSpec,
    class_name: &str,
) -> Result<String, Invalid> {
    let instance_type = spec
        .instance_type
        .clone()
        .unwrap_or_else(|| cs.instance.instance_type.clone());
    let allowed = if cs.instance.allowed_types.is_empty() {
        std::slice::from_ref(&cs.instance.instance_type)
    } else {
        cs.instance.allowed_types.as_slice()
    };
    if !allowed.contains(&instance_type) {
        return Err(Invalid::new(
            "InstanceTypeNotAllowed",
            format!(
                "spec.instanceType: {instance_type} is not allowed by class {class_name} (allowed: {})",
                allowed.join(", ")
            ),
        ));
    }
    Ok(instance_type)
}

/// The class's baseline services with the environment's images under test in place.
fn services_of(
    spec: &FeatureEnvironmentSpec,
    cs: &FeatureEnvironmentClassSpec,
    class_name: &str,
) -> Result<Vec<ServiceImage>, Invalid> {
    let mut services = Vec::new();
    for (i, base) in cs.services.iter().enumerate() {
        let reference = format!("{}:{}", base.repository, base.tag);
        let image = ImageReference::parse(&reference)
            .map_err(|e| Invalid::new("InvalidClass", format!("class {class_name}: spec.services[{i}]: {e}")))?;
        services.push(ServiceImage {
            name: base.name.clone(),
            image,
            overridden: false,
        });
    }
    for (i, o) in spec.services.iter().enumerate() {
        let image = ImageReference::parse(&o.image)
            .map_err(|e| Invalid::new("InvalidImage", format!("spec.services[{i}].image: {e}")))?;
        if spec.services[..i].iter().any(|p| p.name == o.name) {
            return Err(Invalid::new(
                "DuplicateService",
                format!("spec.services[{i}].name: {} is listed twice", o.name),
            ));
        }
        let entry = ServiceImage {
            name: o.name.clone(),
            image,
            overridden: true,
        };
        match services.iter_mut().find(|s| s.name == o.name) {
            Some(existing) => *existing = entry,
            None => services.push(entry),
        }
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{class, environment_spec};

    fn t0() -> Timestamp {
        "2026-11-28T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn defaults_come_from_the_class() {
        let r = resolve(&environment_spec(), Some(&class()), t0()).unwrap();
        assert_eq!(r.instance_type, "t3.2xlarge");
        assert_eq!(r.ttl, Duration::from_secs(8 * 3600));
        assert_eq!(r.expires_at, "2026-11-28T18:00:00Z".parse().unwrap());
        assert_eq!(r.database_pool.as_deref(), Some("integration"));
    }

    #[test]
    fn overrides_replace_baseline_images() {
        let r = resolve(&environment_spec(), Some(&class()), t0()).unwrap();
        let payments = r.services.iter().find(|s| s.name == "payments").unwrap();
        assert!(payments.overridden);
        assert_eq!(payments.image.tag.as_deref(), Some("pr-123"));
        let orders = r.services.iter().find(|s| s.name == "orders").unwrap();
        assert!(!orders.overridden);
        assert_eq!(orders.image.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn problems_name_the_field() {
        let cases: Vec<(FeatureEnvironmentSpec, Option<FeatureEnvironmentClass>, &str, &str)> = vec![
            (environment_spec(), None, "ClassNotFound", "spec.className"),
            (
                FeatureEnvironmentSpec {
                    ttl: Some("100h".into()),
                    ..environment_spec()
                },
                Some(class()),
                "TTLExceedsMaximum",
                "spec.ttl",
            ),
            (
                FeatureEnvironmentSpec {
                    ttl: Some("8x".into()),
                    ..environment_spec()
                },
                Some(class()),
                "InvalidTTL",
                "spec.ttl",
            ),
            (
                FeatureEnvironmentSpec {
                    instance_type: Some("m5.24xlarge".into()),
                    ..environment_spec()
                },
                Some(class()),
                "InstanceTypeNotAllowed",
                "spec.instanceType",
            ),
        ];
        for (spec, class, reason, field) in cases {
            let err = resolve(&spec, class.as_ref(), t0()).unwrap_err();
            assert_eq!(err.reason, reason);
            assert!(err.message.contains(field), "{}", err.message);
        }
    }

    #[test]
    fn bad_image_and_duplicates_are_rejected() {
        let mut spec = environment_spec();
        spec.services[0].image = "not an image".into();
        assert_eq!(resolve(&spec, Some(&class()), t0()).unwrap_err().reason, "InvalidImage");
        let mut spec = environment_spec();
        spec.services.push(spec.services[0].clone());
        let err = resolve(&spec, Some(&class()), t0()).unwrap_err();
        assert_eq!(err.reason, "DuplicateService");
        assert!(err.message.contains("spec.services[1].name"));
    }

    /// An environment whose spec or class went bad after launch still expires: at the
    /// expiry recorded while it was valid, not never.
    #[test]
    fn expiry_does_not_depend_on_a_valid_spec() {
        let spec = FeatureEnvironmentSpec {
            ttl: Some("100h".into()),
            ..environment_spec()
        };
        let invalid = resolve(&spec, Some(&class()), t0()).unwrap_err();
        let recorded = "2026-11-28T18:00:00Z";
        assert_eq!(
            expires_at(Err(&invalid), Some(recorded), spec.ttl.as_deref(), t0()),
            Some(recorded.parse().unwrap())
        );
        // Never resolved (the class was missing from the start): the TTL it names.
        let no_class = resolve(&spec, None, t0()).unwrap_err();
        assert_eq!(
            expires_at(Err(&no_class), None, Some("2h"), t0()),
            Some("2026-11-28T12:00:00Z".parse().unwrap())
        );
        assert_eq!(expires_at(Err(&no_class), None, None, t0()), None);
        // Valid: the resolution wins over what was recorded (raising the TTL extends).
        let valid = resolve(&environment_spec(), Some(&class()), t0()).unwrap();
        assert_eq!(
            expires_at(Ok(&valid), Some(recorded), None, t0()),
            Some(valid.expires_at)
        );
    }

    #[test]
    fn raising_the_ttl_extends_expiry() {
        let short = resolve(
            &FeatureEnvironmentSpec {
                ttl: Some("1h".into()),
                ..environment_spec()
            },
            Some(&class()),
            t0(),
        )
        .unwrap();
        let long = resolve(
            &FeatureEnvironmentSpec {
                ttl: Some("2h".into()),
                ..environment_spec()
            },
            Some(&class()),
            t0(),
        )
        .unwrap();
        assert!(long.expires_at > short.expires_at);
    }
}
