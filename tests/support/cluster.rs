//! A real API server ([`ControlPlane`]) with the operator's CRDs installed, plus object
//! builders for classes, pools and environments. Test-only.

use std::time::Duration;

use featureenv_operator::api::{self, FeatureEnvironment, FeatureEnvironmentClass, RdsPool};
use featureenv_operator::test_fixtures as fixtures;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};

use super::control_plane::ControlPlane;

/// A control plane with the CRDs established, and an admin client.
pub async fn cluster() -> (ControlPlane, kube::Client) {
    let control_plane = ControlPlane::start().await;
    let client = control_plane.client_with_agent("featureenv-reconcile-test").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.create(&PostParams::default(), &crd).await.expect("creating CRD");
        tokio::time::timeout(
            Duration::from_secs(10),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watching CRD");
    }
    (control_plane, client)
}

pub async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let _ = api.create(&PostParams::default(), &ns).await;
}

/// The shared "standard" class under another name, drawing from `pool` (if any).
pub fn class(name: &str, pool: Option<&str>) -> FeatureEnvironmentClass {
    let mut c = fixtures::class();
    c.metadata.name = Some(name.to_owned());
    c.spec.database_pool = pool.map(str::to_owned);
    c
}

pub fn pool(name: &str, warm: u32, max_size: u32) -> RdsPool {
    RdsPool::new(name, fixtures::pool_spec(warm, max_size))
}

pub fn environment(name: &str, class: &str) -> FeatureEnvironment {
    let mut spec = fixtures::environment_spec();
    spec.class_name = Some(class.into());
    spec.instance_type = Some("t3.xlarge".into());
    FeatureEnvironment::new(name, spec)
}
