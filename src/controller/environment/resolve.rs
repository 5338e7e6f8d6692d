//! Validation of an environment against its class — what a schema cannot see: an
//! unknown class, a disallowed instance type, a TTL over the class maximum, an
//! image reference that does not parse. Yields everything the reconcile needs, or a
//! reason and a message naming the field. Pure.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::class::{Addon, FeatureEnvironmentClass};
use crate::api::duration::parse_duration;
use crate::api::environment::FeatureEnvironmentSpec;
use crate::api::image_ref::ImageReference;

/// Why an environment cannot be provisioned as specified. `reason` is the stable
/// condition reason; `message` names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
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
    let readiness_timeout = parse_duration(&cs.readiness.timeout).map_err(|e| {
        Invalid::new(
            "InvalidClass",
            format!("class {class_name}: spec.readiness.timeout: {e}"),
        )
    })?;

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

    let expires_at = created
        .checked_add(SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
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
