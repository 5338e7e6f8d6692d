//! Fixture builders shared by the unit tests and, through the `test-fixtures`
//! feature, the integration tests (`tests/support`). Not part of the product.

use std::collections::BTreeMap;

use crate::api::class::*;
use crate::api::environment::{FeatureEnvironmentSpec, ServiceOverride};
use crate::api::pool::{PoolSource, RdsPoolSpec};

pub const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

pub fn class() -> FeatureEnvironmentClass {
    let mut c = FeatureEnvironmentClass::new(
        "standard",
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
                instance_profile: Some("featureenv-node".into()),
                root_volume_gib: 100,
                tags: BTreeMap::from([("team".into(), "platform".into())]),
            },
            services: ["payments", "orders"]
                .into_iter()
                .map(|n| BaselineService {
                    name: n.into(),
                    repository: format!("{ECR}/{n}"),
                    tag: "latest".into(),
                })
                .collect(),
            addons: vec![Addon::Ingress, Addon::Dashboard],
            database_pool: Some("integration".into()),
            ttl: TtlPolicy {
                default: "8h".into(),
                max: "72h".into(),
            },
            readiness: Readiness { timeout: "20m".into() },
            endpoints: BTreeMap::from([
                ("api".into(), "http://{publicIp}/".into()),
                ("dashboard".into(), "http://{publicIp}:30000/{namespace}/{name}".into()),
            ]),
            max_per_namespace: None,
            namespace_selector: None,
            sleep: None,
            warm_pool: None,
        },
    );
    c.metadata.annotations = Some(BTreeMap::from([(
        crate::api::DEFAULT_CLASS_ANNOTATION.into(),
        "true".into(),
    )]));
    c
}

pub fn environment_spec() -> FeatureEnvironmentSpec {
    FeatureEnvironmentSpec {
        class_name: Some("standard".into()),
        ttl: None,
        owner: Some("alice@example.com".into()),
        services: vec![ServiceOverride {
            name: "payments".into(),
            image: format!("{ECR}/payments:pr-123"),
        }],
        instance_type: None,
        sleeping: None,
    }
}

/// A pool restored from the integration database's snapshots.
pub fn pool_spec(warm: u32, max_size: u32) -> RdsPoolSpec {
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
    }
}

/// An available, unclaimed pool spare restored at `restored_at` (Unix seconds), if given.
pub fn spare(id: &str, restored_at: Option<i64>) -> crate::cloud::Database {
    crate::cloud::Database {
        id: id.into(),
        arn: format!("arn:aws:rds:us-east-1:123456789012:db:{id}"),
        status: crate::cloud::DatabaseStatus::Available,
        endpoint: None,
        port: None,
        master_username: None,
        created_at: restored_at.and_then(|s| jiff::Timestamp::from_second(s).ok()),
        tags: crate::cloud::Tags::new(),
    }
}

/// An instance `id` in `state`, untagged, launched at a fixed time.
pub fn instance(id: &str, state: crate::cloud::InstanceState) -> crate::cloud::Instance {
    crate::cloud::Instance {
        id: id.into(),
        arn: format!("arn:aws:ec2:us-east-1:123456789012:instance/{id}"),
        instance_type: "t3.2xlarge".into(),
        image_id: "ami-1".into(),
        state,
        public_ip: Some("54.1.2.3".into()),
        public_dns: None,
        private_ip: Some("10.0.0.7".into()),
        launched_at: Some("2026-11-28T10:00:00Z".parse().expect("a timestamp")),
        tags: crate::cloud::Tags::new(),
    }
}
