//! The cloud boundary: domain types and the narrow traits the controllers use to
//! reach EC2, RDS, SSM and ECR. No I/O here; `aws` implements the traits on the AWS
//! SDK and `fake` implements them in memory for reconcile tests.

pub mod aws;
mod error;
pub mod fake;

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;

pub use error::{CloudError, CloudResult};

/// Tags on a cloud resource, key → value.
pub type Tags = BTreeMap<String, String>;

/// Tag keys of the integration contract (see ARCHITECTURE.md).
pub mod tag {
    pub const CLUSTER: &str = "featureenv.io/cluster";
    pub const ENVIRONMENT: &str = "featureenv.io/environment";
    pub const UID: &str = "featureenv.io/uid";
    pub const POOL: &str = "featureenv.io/pool";
    pub const CLAIMED_BY: &str = "featureenv.io/claimed-by";
    pub const BOOTSTRAP: &str = "featureenv.io/bootstrap";
    /// On pool databases: the snapshot they were restored from.
    pub const SNAPSHOT: &str = "featureenv.io/snapshot";
    /// On an environment's database parameter: the ARN of the one instance allowed to
    /// read it (the instance profile compares it with `${ec2:SourceInstanceARN}`).
    pub const INSTANCE: &str = "featureenv.io/instance";
    pub const BOOTSTRAP_COMPLETE: &str = "complete";
    pub const BOOTSTRAP_FAILED: &str = "failed";
    /// Written by an instance when it has applied a services update (or failed to):
    /// `complete:<token>` / `failed:<token>`, the token naming the update.
    pub const SERVICES: &str = "featureenv.io/services";
    /// On a spare instance: the class whose warm pool it belongs to (kept once
    /// claimed: it says the instance started warm).
    pub const WARM_POOL: &str = "featureenv.io/warm-pool";
    /// On a spare instance: the client token it was launched with, which names the
    /// pool's launch until a description shows it.
    pub const SPARE: &str = "featureenv.io/spare";
}

/// One way of picking machine images; fields set together must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSelectorTerm {
    pub id: Option<String>,
    /// Image name, `*` and `?` wildcards allowed.
    pub name: Option<String>,
    /// Account id, or `self` / `amazon`.
    pub owner: Option<String>,
    pub tags: Tags,
    /// SSM parameter whose value is an image id.
    pub ssm_parameter: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
        }
    }

    /// Terminated or on its way there: it no longer counts as the environment's instance.
    pub fn is_gone(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// `arn:<partition>:ec2:<region>:<account>:instance/<id>`, the form IAM's
    /// `ec2:SourceInstanceARN` takes for requests the instance makes.
    pub arn: String,
    pub instance_type: String,
    pub image_id: String,
    pub state: InstanceState,
    pub public_ip: Option<String>,
    pub public_dns: Option<String>,
    pub private_ip: Option<String>,
    pub launched_at: Option<Timestamp>,
    pub tags: Tags,
}

/// Everything RunInstances needs. The adapter requires IMDSv2 (`HttpTokens=required`)
/// and puts `tags` on the instance and its volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchRequest {
    /// Idempotency token, deterministic per environment and attempt, ≤ 64 chars.
    pub client_token: String,
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    pub instance_profile: Option<String>,
    pub root_volume_gib: i32,
    /// Plain text; the adapter base64-encodes it.
    pub user_data: String,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub source_db: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DatabaseStatus {
    Creating,
    Available,
    Modifying,
    Deleting,
    Failed,
    /// StopDBInstance under way, done, and StartDBInstance under way.
    Stopping,
    Stopped,
    Starting,
    /// Any other RDS status string (backing-up, rebooting, …).
    Other(String),
}

impl DatabaseStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "available" => Self::Available,
            "modifying" | "resetting-master-credentials" => Self::Modifying,
            "deleting" => Self::Deleting,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "starting" => Self::Starting,
            "failed" | "incompatible-restore" | "incompatible-parameters" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub id: String,
    pub arn: String,
    pub status: DatabaseStatus,
    pub endpoint: Option<String>,
    pub port: Option<i32>,
    pub master_username: Option<String>,
    pub created_at: Option<Timestamp>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreRequest {
    pub id: String,
    pub snapshot_id: String,
    pub instance_class: String,
    pub subnet_group: Option<String>,
    pub security_group_ids: Vec<String>,
    pub tags: Tags,
}

/// Told about every cloud API call, for the `aws_calls_total` metric. Implemented by
/// the metrics registry; the adapters call it once per request with its outcome
/// (`ok` or an error category).
pub trait CallObserver: Send + Sync {
    fn observe(&self, service: &'static str, operation: &'static str, outcome: &'static str);

    /// One failed HTTP attempt, retried by the SDK or not (`reason`: `throttled`,
    /// `client_error`, `server_error`, `transport`).
    fn failed_attempt(&self, _service: &'static str, _reason: &'static str) {}
}

/// EC2: images and instances.
#[async_trait]
pub trait Compute: Send + Sync {
    /// The newest available image matching any of the terms (a union), or `None`.
    async fn resolve_image(&self, terms: &[ImageSelectorTerm]) -> CloudResult<Option<Image>>;
    /// RunInstances with IMDSv2 required and tags on instance and volumes.
    async fn launch_instance(&self, request: &LaunchRequest) -> CloudResult<Instance>;
    /// Every instance tagged `featureenv.io/cluster=<cluster_id>` (one paginated
    /// DescribeInstances), including terminated ones AWS still reports.
    async fn list_instances(&self, cluster_id: &str) -> CloudResult<Vec<Instance>>;
    /// Instances carrying `key=value` (the targeted look-up that closes the window
    /// of EC2 eventual consistency right after a launch).
    async fn find_instances(&self, key: &str, value: &str) -> CloudResult<Vec<Instance>>;
    /// CreateTags on one instance (a spare's claim); an unknown id is
    /// `CloudError::NotFound`.
    async fn tag_instance(&self, id: &str, tags: &Tags) -> CloudResult<()>;
    /// Terminate; an unknown id is `CloudError::NotFound`.
    async fn terminate_instance(&self, id: &str) -> CloudResult<()>;
    /// The instance's console output (decoded), if AWS has any yet.
    async fn console_output(&self, id: &str) -> CloudResult<Option<String>>;
    /// StopInstances (EBS root volume kept); a state it cannot stop from is
    /// `CloudError::InvalidState`.
    async fn stop_instance(&self, id: &str) -> CloudResult<()>;
    /// StartInstances of a stopped instance; `CloudError::InvalidState` while it is
    /// still stopping.
    async fn start_instance(&self, id: &str) -> CloudResult<()>;
}

/// RDS: snapshots and database instances.
#[async_trait]
pub trait Databases: Send + Sync {
    /// The newest `available` snapshot of a source DB instance.
    async fn latest_snapshot(&self, source_db: &str) -> CloudResult<Option<Snapshot>>;
    /// A snapshot by id, if it exists and is available.
    async fn snapshot(&self, id: &str) -> CloudResult<Option<Snapshot>>;
    /// RestoreDBInstanceFromDBSnapshot; an existing id is `CloudError::AlreadyExists`.
    async fn restore_database(&self, request: &RestoreRequest) -> CloudResult<Database>;
    /// Every DB instance tagged `featureenv.io/cluster=<cluster_id>` (one paginated
    /// DescribeDBInstances).
    async fn list_databases(&self, cluster_id: &str) -> CloudResult<Vec<Database>>;
    /// One database by id (cleanup checks the claim before deleting); `None` when it does not exist.
    async fn get_database(&self, id: &str) -> CloudResult<Option<Database>>;
    async fn tag_database(&self, arn: &str, tags: &Tags) -> CloudResult<()>;
    async fn set_master_password(&self, id: &str, password: &str) -> CloudResult<()>;
    /// Delete without a final snapshot; an unknown id is `CloudError::NotFound`.
    async fn delete_database(&self, id: &str) -> CloudResult<()>;
    /// StopDBInstance of an available instance (RDS starts it again by itself after
    /// seven days); any other status is `CloudError::InvalidState`.
    async fn stop_database(&self, id: &str) -> CloudResult<()>;
    /// StartDBInstance of a stopped instance; any other status is
    /// `CloudError::InvalidState`.
    async fn start_database(&self, id: &str) -> CloudResult<()>;
}

/// SSM Parameter Store: where an instance reads its database credentials.
#[async_trait]
pub trait Parameters: Send + Sync {
    /// Create or overwrite a SecureString.
    async fn put_secret_parameter(&self, name: &str, value: &str, tags: &Tags) -> CloudResult<()>;
    /// Add (or overwrite) tags on an existing parameter.
    async fn tag_parameter(&self, name: &str, tags: &Tags) -> CloudResult<()>;
    /// Delete; an unknown name is `CloudError::NotFound`.
    async fn delete_parameter(&self, name: &str) -> CloudResult<()>;
    /// Names of all parameters under a path prefix (recursive).
    async fn list_parameters(&self, path: &str) -> CloudResult<Vec<String>>;
}

/// A script for a running instance to run (SSM Run Command, `AWS-RunShellScript`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptRequest {
    pub instance_id: String,
    /// The whole script, `#!/bin/bash` first.
    pub script: String,
    /// Shown in the SSM console; at most 100 characters (longer is cut).
    pub comment: String,
    /// How long SSM tries to deliver it (30 s at least), and how long it may run.
    pub timeout_seconds: u32,
}

/// SSM Run Command: telling a running instance to do something. The instance
/// reports the outcome by tagging itself, which the batched inventory poll reads,
/// so nothing polls per command.
#[async_trait]
pub trait Commands: Send + Sync {
    /// SendCommand; returns the command id. An instance SSM cannot reach yet (its
    /// agent not registered) is `CloudError::InvalidState`.
    async fn run_script(&self, request: &ScriptRequest) -> CloudResult<String>;
}

/// ECR: turning image tags into digests.
#[async_trait]
pub trait Registry: Send + Sync {
    /// The digest (`sha256:…`) of `repository:tag` when the image is in an ECR
    /// registry we can read; `Ok(None)` for registries that are not ECR;
    /// `CloudError::NotFound` when the repository or tag does not exist.
    async fn resolve_digest(&self, repository: &str, tag: &str) -> CloudResult<Option<String>>;
}

/// The cloud as the controllers see it: one handle per service.
#[derive(Clone)]
pub struct Cloud {
    pub compute: std::sync::Arc<dyn Compute>,
    pub databases: std::sync::Arc<dyn Databases>,
    pub parameters: std::sync::Arc<dyn Parameters>,
    pub registry: std::sync::Arc<dyn Registry>,
    pub commands: std::sync::Arc<dyn Commands>,
}
