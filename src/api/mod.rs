//! The `featureenv.io/v1alpha1` API: CRD types, durations, image references and
//! conditions. No I/O; the CRD YAML in `crds/` is generated from these types.

pub mod class;
pub mod conditions;
pub mod duration;
pub mod environment;
pub mod image_ref;
pub mod pool;
mod schema;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use class::{FeatureEnvironmentClass, FeatureEnvironmentClassSpec, FeatureEnvironmentClassStatus};
pub use environment::{FeatureEnvironment, FeatureEnvironmentSpec, FeatureEnvironmentStatus, Phase};
pub use pool::{RdsPool, RdsPoolSpec, RdsPoolStatus};

pub const GROUP: &str = "featureenv.io";
/// Finalizer that guards cloud resources of a FeatureEnvironment.
pub const FINALIZER: &str = "featureenv.io/cleanup";
/// Annotation that marks the class used when `spec.className` is empty.
pub const DEFAULT_CLASS_ANNOTATION: &str = "featureenv.io/is-default-class";

/// Label carrying `spec.owner` in label syntax ([`owner_label_value`]), for
/// `kubectl get fe -l featureenv.io/owner=alice` and the plugin's `list`.
pub const OWNER_LABEL: &str = "featureenv.io/owner";

/// `owner` as a label value: a label value allows at most 63 characters of
/// `[A-Za-z0-9._-]`, beginning and ending alphanumeric, so every other character
/// becomes `_` (`alice@example.com` → `alice_example.com`), and it is cut to 63.
/// `None` when nothing is left (an owner of punctuation only). Many owners may map to
/// one value; the field selector `spec.owner=` is exact.
pub fn owner_label_value(owner: &str) -> Option<String> {
    let mapped: String = owner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// All CRDs with the file name each is written to under `crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("featureenvironments.yaml", FeatureEnvironment::crd()),
        ("featureenvironmentclasses.yaml", FeatureEnvironmentClass::crd()),
        ("rdspools.yaml", RdsPool::crd()),
    ]
}

/// A CRD as the YAML committed under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}

#[cfg(test)]
mod tests {
    use super::owner_label_value;

    #[test]
    fn owners_become_valid_label_values() {
        assert_eq!(owner_label_value("alice").as_deref(), Some("alice"));
        assert_eq!(
            owner_label_value("alice@example.com").as_deref(),
            Some("alice_example.com")
        );
        assert_eq!(
            owner_label_value("arn:aws:sts::123456789012:assumed-role/Dev/alice").as_deref(),
            Some("arn_aws_sts__123456789012_assumed-role_Dev_alice")
        );
        assert_eq!(owner_label_value("  Bob  ").as_deref(), Some("Bob"));
        assert_eq!(owner_label_value("@@@"), None);
        assert_eq!(owner_label_value(""), None);
        let long = owner_label_value(&"a".repeat(300)).unwrap();
        assert_eq!(long.len(), 63);
        // Every value obeys the API server's rule for label values.
        let rule = regex_lite::Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap();
        for owner in ["x-", "-x", "a.b_c-d", "é", "ünïcode-name", "a b", &"z.".repeat(40)] {
            if let Some(v) = owner_label_value(owner) {
                assert!(rule.is_match(&v) && v.len() <= 63, "{owner:?} → {v:?}");
            }
        }
    }
}
