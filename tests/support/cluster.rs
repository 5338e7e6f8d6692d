//! An in-process kube-emulator with the operator's CRDs installed, plus object
//! builders for classes, pools and environments. Test-only.

use std::time::Duration;

use featureenv_operator::api::class::*;
use featureenv_operator::api::environment::ServiceOverride;
use featureenv_operator::api::pool::PoolSource;
use featureenv_operator::api::{
    self, FeatureEnvironment, FeatureEnvironmentClass, FeatureEnvironmentSpec, RdsPool, RdsPoolSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube_emulator::Emulator;
use std::collections::BTreeMap;

pub const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// An emulator with the CRDs established.
pub async fn cluster() -> (Emulator, kube::Client) {
    let emulator = Emulator::start().await;
    let client = emulator.client();
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
    (emulator, client)
}

pub async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let _ = api.create(&PostParams::default(), &ns).await;
}

pub fn class(name: &str, pool: Option<&str>) -> FeatureEnvironmentClass {
    let mut c = FeatureEnvironmentClass::new(
        name,
        FeatureEnvironmentClassSpec {
            ami: AmiSelector {
                selector_terms: vec![AmiSelectorTerm {
                    tags: Some(BTreeMap::from([(
                        "featureenv.io/pipeline".into(),
                        "minikube-service".into(),
                    )])),
                    ..Default::default()
                }],
            },
            instance: InstanceTemplate {
                instance_type: "t3.2xlarge".into(),
                allowed_types: vec!["t3.xlarge".into(), "t3.2xlarge".into()],
                subnet_ids: vec!["subnet-0abc".into()],
                security_group_ids: vec!["sg-0abc".into()],
                instance_profile: None,
                root_volume_gib: 100,
                tags: BTreeMap::new(),
            },
            services: ["payments", "orders"]
                .into_iter()
                .map(|n| BaselineService {
                    name: n.into(),
                    repository: format!("{ECR}/{n}"),
                    tag: "latest".into(),
                })
                .collect(),
            addons: vec![Addon::Ingress],
            database_pool: pool.map(str::to_owned),
            ttl: TtlPolicy {
                default: "8h".into(),
                max: "72h".into(),
            },
            readiness: Readiness { timeout: "20m".into() },
            endpoints: BTreeMap::from([("api".into(), "http://{publicIp}/".into())]),
            max_per_namespace: None,
        },
    );
    c.metadata.annotations = Some(BTreeMap::from([(api::DEFAULT_CLASS_ANNOTATION.into(), "true".into())]));
    c
}

pub fn pool(name: &str, warm: u32, max_size: u32) -> RdsPool {
    RdsPool::new(
        name,
        RdsPoolSpec {
            source: PoolSource {
                db_instance_identifier: Some("integration-db".into()),
                snapshot_identifier: None,
            },
            instance_class: "db.t3.micro".into(),
            db_subnet_group_name: None,
            vpc_security_group_ids: vec![],
            warm,
            max_size,
            max_snapshot_age: Some("26h".into()),
        },
    )
}

pub fn environment(name: &str, class: &str) -> FeatureEnvironment {
    FeatureEnvironment::new(
        name,
        FeatureEnvironmentSpec {
            class_name: Some(class.into()),
            ttl: None,
            owner: Some("alice@example.com".into()),
            services: vec![ServiceOverride {
                name: "payments".into(),
                image: format!("{ECR}/payments:pr-123"),
            }],
            instance_type: Some("t3.xlarge".into()),
        },
    )
}
