//! `RdsPool` (cluster-scoped): the n+1 warm databases restored from the integration
//! database's newest snapshot, ready to be claimed. Pure types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// Keeps `warm` restored, unclaimed databases ready for environments to claim.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "featureenv.io",
    version = "v1alpha1",
    kind = "RdsPool",
    plural = "rdspools",
    shortname = "rdspool",
    status = "RdsPoolStatus",
    category = "featureenv",
    doc = "Keeps spec.warm databases restored from the newest snapshot of the source (usually the integration database), unclaimed and ready for FeatureEnvironments of the classes that name this pool; restores one per environment waiting, within spec.maxSize, and replaces spares of superseded snapshots.",
    printcolumn = r#"{"name":"Warm","type":"integer","jsonPath":".status.warm"}"#,
    printcolumn = r#"{"name":"Claimed","type":"integer","jsonPath":".status.claimed"}"#,
    printcolumn = r#"{"name":"Creating","type":"integer","jsonPath":".status.creating"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.latestSnapshot"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.warm <= self.maxSize",
    "message": "warm must not exceed maxSize"
}]))]
pub struct RdsPoolSpec {
    /// Where spares are restored from.
    pub source: PoolSource,
    /// DB instance class of the spares, e.g. db.t3.micro.
    pub instance_class: String,
    /// DB subnet group the spares are placed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_subnet_group_name: Option<String>,
    /// VPC security groups of the spares.
    #[serde(default)]
    pub vpc_security_group_ids: Vec<String>,
    /// Restored, unclaimed spares kept ready (the "+1").
    #[serde(default = "default_warm")]
    #[schemars(range(min = 0, max = 100))]
    pub warm: u32,
    /// Cap on warm + claimed databases.
    #[schemars(range(min = 1, max = 1000))]
    pub max_size: u32,
    /// Spares restored from a snapshot older than this are replaced once a newer
    /// snapshot exists (Go duration, e.g. 26h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub max_snapshot_age: Option<String>,
}

fn default_warm() -> u32 {
    1
}

/// Exactly one of `dbInstanceIdentifier` (its newest available snapshot) or
/// `snapshotIdentifier` (a pinned snapshot).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.dbInstanceIdentifier) != has(self.snapshotIdentifier)",
    "message": "set exactly one of source.dbInstanceIdentifier and source.snapshotIdentifier"
}]))]
pub struct PoolSource {
    /// Restore from the newest available snapshot of this DB instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_instance_identifier: Option<String>,
    /// Restore from this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_identifier: Option<String>,
}

/// Observed state of the pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RdsPoolStatus {
    /// Available, unclaimed spares restored from the newest snapshot.
    #[serde(default)]
    pub warm: u32,
    /// Databases claimed by environments.
    #[serde(default)]
    pub claimed: u32,
    /// Spares being restored.
    #[serde(default)]
    pub creating: u32,
    /// The snapshot new spares are restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_snapshot: Option<String>,
    /// The generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Warm`: enough spares are available; `SnapshotFresh`: the newest snapshot is
    /// within `maxSnapshotAge`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
