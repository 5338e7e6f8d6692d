//! `FeatureEnvironmentClass` (cluster-scoped): what the platform team decides — AMI
//! selection, instance shape, baseline services, addons, database pool, TTL policy,
//! readiness timeout and endpoint templates. Pure types.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// What the platform team decides for every environment of this class.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "featureenv.io",
    version = "v1alpha1",
    kind = "FeatureEnvironmentClass",
    status = "FeatureEnvironmentClassStatus",
    shortname = "feclass",
    category = "featureenv",
    doc = "What the platform team decides for every FeatureEnvironment of this class: the AMI selector, instance shape and placement, the baseline services and addons, TTL default and maximum, readiness timeout, endpoint URL templates, the database pool, and how many environments a namespace may have. Annotate one class featureenv.io/is-default-class=true to make it the default.",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.instance.type"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.databasePool"}"#,
    printcolumn = r#"{"name":"TTL","type":"string","jsonPath":".spec.ttl.default"}"#,
    printcolumn = r#"{"name":"Warm","type":"integer","jsonPath":".spec.warmPool.size"}"#,
    printcolumn = r#"{"name":"Spares","type":"integer","jsonPath":".status.warmPool.available"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FeatureEnvironmentClassSpec {
    /// Which machine image environments boot from.
    pub ami: AmiSelector,
    /// Instance shape and placement.
    pub instance: InstanceTemplate,
    /// The baseline: the image of every microservice deployed on the instance.
    /// An environment's `spec.services` replace entries of the same name.
    #[serde(default)]
    #[schemars(transform = schema::keyed_by_name)]
    pub services: Vec<BaselineService>,
    /// Add-ons the bootstrap script enables on Minikube.
    #[serde(default)]
    #[schemars(transform = schema::set)]
    pub addons: Vec<Addon>,
    /// The RdsPool environments claim a database from; omit for environments
    /// without a database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_pool: Option<String>,
    /// Lifetime of environments.
    pub ttl: TtlPolicy,
    /// How long an environment may take to become ready.
    #[serde(default)]
    pub readiness: Readiness,
    /// URL templates reported in an environment's `status.endpoints`. Placeholders:
    /// {publicIp} {publicDns} {privateIp} {name} {namespace}. The `api` endpoint is
    /// shown as the URL column.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// At most this many environments of this class per namespace (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_per_namespace: Option<u32>,
    /// The namespaces whose environments may use this class, by their labels
    /// (`kubernetes.io/metadata.name` selects by name); unset: every namespace. A
    /// class names a database pool, so this keeps one team's class and pool from
    /// another team's environments. Enforced at admission by the chart's
    /// ValidatingAdmissionPolicy and by the operator before it launches anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// When environments of this class sleep (instance and database stopped) and
    /// wake by themselves; an environment's `spec.sleeping` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepPolicy>,
    /// Spare instances kept launched from the newest image and bootstrapped with the
    /// baseline, so a new environment of this class takes one and only loads its own
    /// images and database instead of booting from scratch. Optional: with no spare
    /// free, an environment launches as it would without a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
}

/// The warm instance pool of a class.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmPool {
    /// Unclaimed spares to keep (never more: a spare of a superseded image is
    /// terminated before its replacement is launched).
    #[serde(default)]
    #[schemars(range(max = 50))]
    pub size: u32,
    /// `Running` spares are claimed in seconds; `Stopped` ones cost only their volume
    /// while they wait, and are started (a boot and a Minikube start) when claimed.
    #[serde(default)]
    pub state: WarmState,
}

/// What a spare waits in.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WarmState {
    #[default]
    Running,
    Stopped,
}

/// What the operator reports of a class: its warm pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureEnvironmentClassStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPoolStatus>,
}

/// The warm pool as last planned.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmPoolStatus {
    /// Bootstrapped, unclaimed spares of the newest image, ready to be claimed.
    #[serde(default)]
    pub available: u32,
    /// Spares launched and still booting or bootstrapping (or stopping, for a
    /// `Stopped` pool).
    #[serde(default)]
    pub launching: u32,
    /// Unclaimed spares of a superseded image, about to be terminated.
    #[serde(default)]
    pub stale: u32,
    /// The image spares are launched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Launch tokens written before their RunInstances: a launch cut off by a crash
    /// is repeated with the same token (EC2 returns the instance it already made)
    /// until a description shows it, so a crash never launches a spare twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_launches: Vec<String>,
    /// Spares launched so far: numbers the next launch token (a token is never
    /// reused; EC2 remembers tokens for a day after the instance is gone).
    #[serde(default)]
    pub launched: u64,
    /// The class generation this status was planned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Sleep schedules: the latest time any of them fires since an environment was
/// created decides whether it sleeps (a sleep time) or is awake (a wake time).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SleepPolicy {
    /// The schedules, e.g. sleep at `0 20 * * 1-5` and wake at `0 7 * * 1-5`.
    #[schemars(length(min = 1))]
    pub schedules: Vec<SleepSchedule>,
}

/// A pair of cron expressions (five fields, as a Kubernetes CronJob's, or six with
/// seconds first, or `@daily` and the other macros) read in one time zone.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SleepSchedule {
    /// When environments fall asleep, e.g. `0 20 * * 1-5` (weekdays at 20:00).
    #[schemars(schema_with = "schema::cron")]
    pub sleep: String,
    /// When they wake, e.g. `0 7 * * 1-5`; omit to wake them only by
    /// `spec.sleeping: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::cron")]
    pub wake: Option<String>,
    /// The IANA time zone both are read in, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// How to find the machine image: the union of the terms; the newest available
/// image wins and is recorded in the environment's status.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmiSelector {
    /// Terms are ORed; fields within one term are ANDed.
    #[schemars(length(min = 1))]
    pub selector_terms: Vec<AmiSelectorTerm>,
}

/// One way of picking images. Set at least one field.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.id) || has(self.name) || has(self.tags) || has(self.ssmParameter)",
    "message": "a selector term needs at least one of id, name, tags or ssmParameter"
}]))]
pub struct AmiSelectorTerm {
    /// An image id (`ami-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^ami-[0-9a-f]{8,17}$"))]
    pub id: Option<String>,
    /// Image name; `*` and `?` wildcards allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Owner account id, or `self` / `amazon`. With a `name` and no owner, `self`:
    /// a name alone would also match public images anyone can publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Tags every matching image carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// An SSM parameter whose value is an image id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm_parameter: Option<String>,
}

/// Instance shape and placement.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.allowedTypes) || size(self.allowedTypes) == 0 || self.type in self.allowedTypes",
    "message": "instance.type must be one of instance.allowedTypes"
}]))]
pub struct InstanceTemplate {
    /// Default EC2 instance type.
    #[serde(rename = "type")]
    pub instance_type: String,
    /// Types an environment may ask for in `spec.instanceType` (empty: only `type`).
    #[serde(default)]
    #[schemars(transform = schema::set)]
    pub allowed_types: Vec<String>,
    /// Subnets to launch into; the first one is used.
    #[schemars(length(min = 1))]
    pub subnet_ids: Vec<String>,
    /// Security groups (allow ingress only from the internal network).
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Instance profile name: must allow ECR pull, reading its own SSM parameter and
    /// tagging itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// Root volume size in GiB.
    #[serde(default = "default_root_volume", rename = "rootVolumeGiB")]
    #[schemars(range(min = 8, max = 16384))]
    pub root_volume_gib: i32,
    /// Extra tags on the instance and its volumes. EC2's limits apply (keys up to 128
    /// characters, values up to 256, no `aws:` prefix, 50 tags per resource of which
    /// the operator writes up to 6 (a claimed spare's); `Name` and `featureenv.io/*`
    /// are the operator's own.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 44, "x-kubernetes-validations" = [
        {
            "rule": "self.all(k, size(k) >= 1 && size(k) <= 128)",
            "message": "spec.instance.tags: keys must be 1 to 128 characters (EC2's limit)",
        },
        {
            "rule": "self.all(k, size(self[k]) <= 256)",
            "message": "spec.instance.tags: values must be at most 256 characters (EC2's limit)",
        },
        {
            "rule": "self.all(k, !k.lowerAscii().startsWith('aws:'))",
            "message": "spec.instance.tags: keys may not begin with aws: (reserved by AWS)",
        },
        {
            "rule": "self.all(k, k != 'Name' && !k.startsWith('featureenv.io/'))",
            "message": "spec.instance.tags: Name and featureenv.io/* are written by the operator",
        },
    ]))]
    pub tags: BTreeMap<String, String>,
}

fn default_root_volume() -> i32 {
    100
}

/// A microservice of the baseline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineService {
    /// Service name (the Deployment on the instance).
    #[schemars(schema_with = "schema::dns_label")]
    pub name: String,
    /// Image repository without tag, e.g. `123456789012.dkr.ecr.<region>.amazonaws.com/payments`.
    #[schemars(schema_with = "schema::image_reference")]
    pub repository: String,
    /// Tag to deploy; resolved to a digest where the registry allows.
    #[serde(default = "default_tag")]
    pub tag: String,
}

fn default_tag() -> String {
    "latest".to_owned()
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Addon {
    Ingress,
    Dashboard,
    Logviewer,
}

impl Addon {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Dashboard => "dashboard",
            Self::Logviewer => "logviewer",
        }
    }
}

/// Lifetime of environments of this class.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "duration(self.max) >= duration(self.default)",
    "message": "ttl.max must be at least ttl.default"
}]))]
pub struct TtlPolicy {
    /// TTL when the environment does not set one (Go duration, e.g. 8h).
    #[schemars(schema_with = "schema::duration")]
    pub default: String,
    /// The longest TTL an environment may ask for.
    #[schemars(schema_with = "schema::duration")]
    pub max: String,
}

/// Readiness policy.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// From launch to Ready; past it the environment is Failed with BootstrapTimeout.
    #[serde(default = "default_readiness_timeout")]
    #[schemars(schema_with = "schema::duration")]
    pub timeout: String,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            timeout: default_readiness_timeout(),
        }
    }
}

fn default_readiness_timeout() -> String {
    "20m".to_owned()
}

impl FeatureEnvironmentClass {
    /// Whether environments in a namespace labelled `labels` may use this class
    /// (`spec.namespaceSelector`), or why the selector cannot be applied. Label
    /// selector semantics are kube's (`Selector`), the API server's own.
    pub fn admits_namespace(&self, labels: &BTreeMap<String, String>) -> Result<bool, String> {
        use kube::core::{Selector, SelectorExt};
        let Some(selector) = &self.spec.namespace_selector else {
            return Ok(true);
        };
        let selector = Selector::try_from(selector.clone()).map_err(|e| e.to_string())?;
        Ok(selector.matches(labels))
    }

    /// Whether this class is used by environments that name none.
    pub fn is_default(&self) -> bool {
        kube::ResourceExt::annotations(self)
            .get(super::DEFAULT_CLASS_ANNOTATION)
            .is_some_and(|v| v == "true")
    }

    /// The class of an environment whose `spec.className` is `named`, among
    /// `classes`: the named one, or else the default class. The one rule for it, used
    /// by the reconcile, the per-namespace count and the class watch. Should several
    /// classes claim to be the default, the first by name wins, so every replica and
    /// every pass picks the same one.
    pub fn of<'a, C>(named: Option<&str>, classes: impl IntoIterator<Item = &'a C>) -> Option<&'a C>
    where
        C: std::ops::Deref<Target = FeatureEnvironmentClass> + 'a,
    {
        let mut classes = classes.into_iter();
        match named {
            Some(name) => classes.find(|c| kube::ResourceExt::name_any(&***c) == name),
            None => classes
                .filter(|c| c.is_default())
                .min_by_key(|c| kube::ResourceExt::name_any(&***c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn named(name: &str, default: bool) -> Arc<FeatureEnvironmentClass> {
        let mut class = crate::test_fixtures::class();
        class.metadata.name = Some(name.into());
        class.metadata.annotations =
            default.then(|| BTreeMap::from([(super::super::DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())]));
        Arc::new(class)
    }

    #[test]
    fn a_named_class_or_the_default_one() {
        let classes = [named("large", false), named("standard", true)];
        let name = |c: Option<&Arc<FeatureEnvironmentClass>>| c.map(|c| c.metadata.name.clone().unwrap());
        assert_eq!(
            name(FeatureEnvironmentClass::of(Some("large"), &classes)),
            Some("large".into())
        );
        assert_eq!(
            name(FeatureEnvironmentClass::of(None, &classes)),
            Some("standard".into())
        );
        assert_eq!(name(FeatureEnvironmentClass::of(Some("premium"), &classes)), None);
        let no_default = [named("large", false)];
        assert_eq!(name(FeatureEnvironmentClass::of(None, &no_default)), None);
    }

    #[test]
    fn a_namespace_selector_admits_only_the_namespaces_it_selects() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let mut class = crate::test_fixtures::class();
        assert_eq!(
            class.admits_namespace(&labels(&[])),
            Ok(true),
            "no selector: every namespace"
        );
        class.spec.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("team".to_owned(), "payments".to_owned())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["prod".into()]),
            }]),
        });
        assert_eq!(class.admits_namespace(&labels(&[("team", "payments")])), Ok(true));
        assert_eq!(class.admits_namespace(&labels(&[("team", "search")])), Ok(false));
        assert_eq!(class.admits_namespace(&labels(&[])), Ok(false));
        assert_eq!(
            class.admits_namespace(&labels(&[("team", "payments"), ("tier", "prod")])),
            Ok(false)
        );
        class.spec.namespace_selector = Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
        });
        assert!(class.admits_namespace(&labels(&[("team", "payments")])).is_err());
    }

    #[test]
    fn of_two_default_classes_the_first_by_name_wins_in_any_order() {
        let ab = [named("b", true), named("a", true)];
        let ba = [named("a", true), named("b", true)];
        for classes in [&ab, &ba] {
            let class = FeatureEnvironmentClass::of(None, classes).unwrap();
            assert_eq!(class.metadata.name.as_deref(), Some("a"));
        }
    }
}
