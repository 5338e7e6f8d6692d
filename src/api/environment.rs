//! `FeatureEnvironment` (namespaced): what an engineer asks for, and the status the
//! operator reports (phase, conditions, instance, database, endpoints). Pure types.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// A private, full-stack test environment: an EC2 instance running every
/// microservice (with the images under test) and a claimed database.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "featureenv.io",
    version = "v1alpha1",
    kind = "FeatureEnvironment",
    plural = "featureenvs",
    singular = "featureenvironment",
    shortname = "fe",
    namespaced,
    status = "FeatureEnvironmentStatus",
    category = "featureenv",
    doc = "A private, full-stack test environment: an EC2 instance running every microservice (with the images under test in spec.services) from the class's newest Minikube AMI, and a database claimed from the class's RdsPool. The operator reports progress, URLs and the database Secret in status, applies edits of spec.services in place, and deletes everything when the TTL expires.",
    selectable = ".spec.owner",
    selectable = ".spec.className",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".spec.className"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.endpoints.api"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","format":"date-time","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Instance","type":"string","priority":1,"jsonPath":".status.instance.id"}"#,
    printcolumn = r#"{"name":"Start","type":"string","priority":1,"jsonPath":".status.instance.start"}"#,
    printcolumn = r#"{"name":"Database","type":"string","priority":1,"jsonPath":".status.database.id"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    // `<namespace>/<name>` is the value of the featureenv.io/environment tag, and AWS
    // tag values end at 256 characters; namespaces at 63.
    validation = kube::core::Rule::new("self.metadata.name.size() <= 192")
        .message("metadata.name: at most 192 characters, so that <namespace>/<name> fits an AWS tag value (256)")
)]
#[serde(rename_all = "camelCase")]
// What an environment runs on is decided at launch; changing it would mean a new
// instance. Transition rules refuse the edit at admission, naming the field, rather
// than accepting a change the operator would silently not apply.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.className) == has(oldSelf.className) && (!has(self.className) || self.className == oldSelf.className)",
        "message": "spec.className is immutable; delete and re-create the environment to change its class",
        "fieldPath": ".className",
    },
    {
        "rule": "has(self.instanceType) == has(oldSelf.instanceType) && (!has(self.instanceType) || self.instanceType == oldSelf.instanceType)",
        "message": "spec.instanceType is immutable; delete and re-create the environment to change its instance type",
        "fieldPath": ".instanceType",
    },
]))]
pub struct FeatureEnvironmentSpec {
    /// The FeatureEnvironmentClass; empty means the class annotated
    /// `featureenv.io/is-default-class: "true"`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Lifetime from creation (Go duration); defaults to the class's `ttl.default`
    /// and may not exceed its `ttl.max`. Raising it extends the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub ttl: Option<String>,
    /// Who the environment is for (informational; tagged on the instance, so at most
    /// 256 characters, AWS's limit for a tag value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub owner: Option<String>,
    /// Images under test; each replaces the baseline image of the same name.
    #[serde(default)]
    #[schemars(transform = schema::keyed_by_name)]
    pub services: Vec<ServiceOverride>,
    /// EC2 instance type; must be in the class's `instance.allowedTypes`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// `true` stops the instance and the database (phase Sleeping); `false` keeps or
    /// brings them up, whatever the class's sleep schedules say. Unset: the class's
    /// schedules decide (awake when it has none). An expired environment is deleted
    /// asleep or awake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleeping: Option<bool>,
}

/// An image under test.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOverride {
    /// Service name; replaces the baseline service of this name (or adds one).
    #[schemars(schema_with = "schema::dns_label")]
    pub name: String,
    /// Full image reference: `registry/repository[:tag][@sha256:digest]`.
    #[schemars(schema_with = "schema::image_reference")]
    pub image: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Provisioning,
    Ready,
    /// Ready before, now rolling an edit of `spec.services` out to the instance.
    Updating,
    Failed,
    Terminating,
    /// Instance and database stopped (or stopping), by `spec.sleeping` or a schedule.
    Sleeping,
    /// Starting the instance and database again, until the instance reports healthy.
    Waking,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Self::Pending,
        Self::Provisioning,
        Self::Ready,
        Self::Updating,
        Self::Failed,
        Self::Terminating,
        Self::Sleeping,
        Self::Waking,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Updating => "Updating",
            Self::Failed => "Failed",
            Self::Terminating => "Terminating",
            Self::Sleeping => "Sleeping",
            Self::Waking => "Waking",
        }
    }
}

/// What the operator observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureEnvironmentStatus {
    /// Pending (not launched: waiting, or the spec cannot be satisfied), Provisioning,
    /// Ready, Updating (an edit of spec.services rolling out), Failed, Terminating,
    /// Sleeping (instance and database stopped), Waking.
    #[serde(default)]
    pub phase: Phase,
    /// The generation whose whole spec is applied (an edit of spec.services counts
    /// only once the instance runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, InstanceReady, DatabaseReady; the reason says what holds it up.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the operator deletes the environment (creation + TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,
    /// When it first became Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub ready_at: Option<String>,
    /// When the instance was launched (start of the readiness timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub launched_at: Option<String>,
    /// RunInstances idempotency token, written before the launch so a restarted
    /// operator finds the instance instead of launching a second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_token: Option<String>,
    /// The environment's EC2 instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceStatus>,
    /// Instances terminated or gone without the operator deleting them, in a row
    /// (reset once the environment is Ready). Each is replaced until three.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_instances: u32,
    /// The database claimed from the class's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
    /// URLs from the class's endpoint templates.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// What was actually deployed, digests where the registry allows.
    #[serde(default)]
    pub images: Vec<DeployedImage>,
    /// Names the services (and requested images) `images` were resolved from: a
    /// spec whose services name another is not applied yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_token: Option<String>,
    /// An edit of `spec.services` sent to the running instance, until it is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<ServicesUpdate>,
    /// Sleep: whether the environment is to sleep and why, since when it sleeps, the
    /// next change its class's schedules make, and a wake-up in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepStatus>,
    /// A warm start: the claimed spare told (SSM Run Command) to load this
    /// environment's images and database; the environment is Ready once the instance
    /// tags `featureenv.io/services=complete:<token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personalisation: Option<ServicesUpdate>,
}

/// An environment's sleep, as the operator decided it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SleepStatus {
    /// Whether the environment is to sleep now.
    #[serde(default)]
    pub wanted: bool,
    /// What decided it: `Spec` (spec.sleeping) or `Schedule` (the class's sleep
    /// schedules).
    #[serde(default)]
    pub decided_by: String,
    /// When the class's schedules next change `wanted` (absent when spec.sleeping
    /// decides, or no schedule fires again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub next_change: Option<String>,
    /// When the environment began to fall asleep; absent while awake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub since: Option<String>,
    /// The script that brings the services back up, sent once the instance runs
    /// again; the instance tags `featureenv.io/services=complete:<token>` when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<ServicesUpdate>,
}

/// A services update: the instance was told to run `images` and tags itself
/// `featureenv.io/services=complete:<token>` (or `failed:<token>`) when done.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesUpdate {
    /// Names the services and images of this update (16 hex characters).
    pub token: String,
    /// The images the instance was told to run.
    #[serde(default)]
    pub images: Vec<DeployedImage>,
    /// The SSM Run Command command id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// When it was sent (the readiness timeout counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub sent_at: Option<String>,
    /// Why it did not apply, once it failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// How an environment got its instance.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Claimed from the class's warm pool, already bootstrapped.
    Warm,
    /// Launched and bootstrapped for this environment.
    Cold,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The environment's instance.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// `warm`: a spare of the class's warm pool, claimed; `cold`: launched for this
    /// environment. Unset until decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
    /// The EC2 instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The EC2 instance type it runs as.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// The image resolved at first reconcile; never changes afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    /// Its public IPv4 address, if the subnet gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Its public DNS name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_dns: Option<String>,
    /// Its private IPv4 address (reachable over the VPN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// The EC2 state as last seen: pending, running, stopping, stopped,
    /// shutting-down, terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The claimed database.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// The RDS DB instance identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Secret in the environment's namespace with host, port, username, password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// SSM SecureString the instance reads the credentials from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_name: Option<String>,
    /// The snapshot the database was restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The master password was rotated and handed out.
    #[serde(default)]
    pub credentials_ready: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct DeployedImage {
    /// The service (its Deployment on the instance).
    pub name: String,
    /// The image it runs, pinned by digest where the registry gives one.
    pub image: String,
}
