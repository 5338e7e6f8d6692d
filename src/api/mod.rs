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

pub use class::{FeatureEnvironmentClass, FeatureEnvironmentClassSpec};
pub use environment::{FeatureEnvironment, FeatureEnvironmentSpec, FeatureEnvironmentStatus, Phase};
pub use pool::{RdsPool, RdsPoolSpec, RdsPoolStatus};

pub const GROUP: &str = "featureenv.io";
/// Finalizer that guards cloud resources of a FeatureEnvironment.
pub const FINALIZER: &str = "featureenv.io/cleanup";
/// Annotation that marks the class used when `spec.className` is empty.
pub const DEFAULT_CLASS_ANNOTATION: &str = "featureenv.io/is-default-class";

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
