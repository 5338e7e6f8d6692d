//! Operator configuration, parsed once at start from flags with environment
//! fallbacks and carried in the controller context. No I/O beyond reading args/env.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::duration::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "featureenv-operator",
    version,
    about = "Private full-stack feature environments on EC2 and RDS"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers (FeatureEnvironment, RdsPool, janitor) and the HTTP server.
    Run(Box<Config>),
    /// Print every CRD as YAML (multi-document), or write them to a directory.
    Crds {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Which operator installation owns a cloud resource (the featureenv.io/cluster tag).
    #[arg(long, env = "FEATUREENV_CLUSTER_ID")]
    pub cluster_id: String,
    /// AWS region (else the SDK's default chain decides).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Inventory poll interval while anything is in transition.
    #[arg(long, env = "FEATUREENV_FAST_POLL_INTERVAL", default_value = "2s", value_parser = duration_arg)]
    pub fast_poll_interval: Duration,
    /// Inventory poll interval when everything is stable.
    #[arg(long, env = "FEATUREENV_SLOW_POLL_INTERVAL", default_value = "60s", value_parser = duration_arg)]
    pub slow_poll_interval: Duration,
    /// The longest any AWS request may take, retries included (each attempt gets a
    /// third of it).
    #[arg(long, env = "FEATUREENV_AWS_OPERATION_TIMEOUT", default_value = "30s", value_parser = duration_arg)]
    pub aws_operation_timeout: Duration,
    /// How old the inventory's last successful description may be before `/readyz`
    /// fails and readiness timeouts stop counting (what the operator sees of AWS is
    /// then too old to judge an environment by).
    #[arg(long, env = "FEATUREENV_INVENTORY_STALE_AFTER", default_value = "3m", value_parser = duration_arg)]
    pub inventory_stale_after: Duration,
    /// How often the janitor looks for orphaned cloud resources.
    #[arg(long, env = "FEATUREENV_JANITOR_INTERVAL", default_value = "5m", value_parser = duration_arg)]
    pub janitor_interval: Duration,
    /// How long a resource must have been orphaned before the janitor removes it.
    #[arg(long, env = "FEATUREENV_JANITOR_GRACE_PERIOD", default_value = "10m", value_parser = duration_arg)]
    pub janitor_grace_period: Duration,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "FEATUREENV_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Elect a leader through a Lease (off only for single-replica development).
    #[arg(long, env = "FEATUREENV_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "featureenv-system")]
    pub lease_namespace: String,
    #[arg(long, env = "FEATUREENV_LEASE_NAME", default_value = "featureenv-operator")]
    pub lease_name: String,
    /// How long stand-bys wait for a silent leader before taking over.
    #[arg(long, env = "FEATUREENV_LEASE_DURATION", default_value = "15s", value_parser = duration_arg)]
    pub lease_duration: Duration,
    /// How long after the start of its last successful renewal the leader may still
    /// act; then it stops and exits. Shorter than the lease duration (default: two
    /// thirds of it).
    #[arg(long, env = "FEATUREENV_LEASE_RENEW_DEADLINE", value_parser = duration_arg)]
    pub lease_renew_deadline: Option<Duration>,
    /// How often the leader renews and stand-bys look (default: a fifth of the lease
    /// duration, at most 2s).
    #[arg(long, env = "FEATUREENV_LEASE_RETRY_PERIOD", value_parser = duration_arg)]
    pub lease_retry_period: Option<Duration>,
    /// This replica's identity in the Lease (defaults to the host name).
    #[arg(long, env = "POD_NAME")]
    pub holder_id: Option<String>,
    /// SSM parameter path prefix for database credentials.
    #[arg(long, env = "FEATUREENV_SSM_PREFIX", default_value = "/featureenv")]
    pub ssm_prefix: String,
    #[arg(long, env = "FEATUREENV_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// A configuration for tests: fast intervals, no leader election.
    pub fn for_tests(cluster_id: &str) -> Self {
        Self {
            cluster_id: cluster_id.to_owned(),
            region: Some("us-east-1".into()),
            fast_poll_interval: Duration::from_millis(200),
            slow_poll_interval: Duration::from_secs(5),
            aws_operation_timeout: Duration::from_secs(30),
            inventory_stale_after: Duration::from_secs(3),
            janitor_interval: Duration::from_secs(1),
            janitor_grace_period: Duration::from_secs(1),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            leader_election: false,
            lease_namespace: "default".into(),
            lease_name: "featureenv-operator".into(),
            lease_duration: Duration::from_secs(15),
            lease_renew_deadline: None,
            lease_retry_period: None,
            holder_id: None,
            ssm_prefix: "/featureenv".into(),
            log_format: LogFormat::Text,
        }
    }
}
