//! `kubectl featureenv`: the kubectl plugin for application engineers. Creates,
//! lists, extends, sleeps, wakes and waits for FeatureEnvironments, and reaches into one: its
//! database credentials, URLs, a shell over SSM Session Manager, the bootstrap log.
//! Uses the caller's kubeconfig and AWS credentials, never the operator's.

mod access;
mod environments;
pub mod lifetime;
pub mod output;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::api::duration::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl featureenv",
    bin_name = "kubectl featureenv",
    version,
    about = "Private full-stack test environments: create, list, extend and use FeatureEnvironments"
)]
pub struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an environment with the images under test.
    Create {
        name: String,
        /// FeatureEnvironmentClass (default: the cluster's default class).
        #[arg(long)]
        class: Option<String>,
        /// An image under test, `SERVICE=IMAGE` (repeatable).
        #[arg(long = "image", value_name = "SERVICE=IMAGE")]
        images: Vec<String>,
        /// Lifetime from creation, a Go duration (default: the class's).
        #[arg(long, value_parser = duration_arg)]
        ttl: Option<Duration>,
        /// EC2 instance type among the class's allowed types (default: the class's).
        #[arg(long)]
        instance_type: Option<String>,
        /// Who it is for (default: you, as the API server knows you).
        #[arg(long)]
        owner: Option<String>,
    },
    /// List environments: yours by default.
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Whose (default: yours).
        #[arg(long, conflicts_with = "all_owners")]
        owner: Option<String>,
        /// Everyone's.
        #[arg(long)]
        all_owners: bool,
    },
    /// Let an environment live DURATION longer (within its class's maximum TTL).
    Extend {
        name: String,
        #[arg(value_parser = duration_arg)]
        duration: Duration,
    },
    /// Stop an environment's instance and database until `wake` (spec.sleeping: true).
    Sleep { name: String },
    /// Start a sleeping environment again (spec.sleeping: false; this also keeps it
    /// awake through its class's sleep schedule).
    Wake { name: String },
    /// Print the database connection of an environment (from its Secret).
    Creds {
        name: String,
        #[arg(short, long, value_enum, default_value_t = CredsFormat::Text)]
        output: CredsFormat,
    },
    /// Print the URLs of an environment.
    Open { name: String },
    /// Open a shell on the instance through SSM Session Manager (needs the AWS CLI
    /// and its Session Manager plugin).
    Shell { name: String },
    /// Print the instance's bootstrap log (from its serial console).
    Logs {
        name: String,
        /// The whole console output, not only the bootstrap's lines.
        #[arg(long)]
        all: bool,
    },
    /// Wait until an environment is Ready; fails if it fails or the time runs out.
    Wait {
        name: String,
        #[arg(long, default_value = "30m", value_parser = duration_arg)]
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredsFormat {
    /// `key: value` lines.
    Text,
    /// `export PGHOST=…` lines for a shell.
    Env,
    /// One JSON object.
    Json,
}

/// A Kubernetes client for the caller's kubeconfig and the namespace to work in.
pub struct Target {
    pub client: kube::Client,
    pub namespace: String,
}

async fn target(cli: &Cli) -> anyhow::Result<Target> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match Kubeconfig::read() {
        Ok(kubeconfig) => kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?,
        // In a pod (no kubeconfig), as kubectl does.
        Err(_) if cli.context.is_none() => kube::Config::infer().await?,
        Err(e) => return Err(anyhow::anyhow!("reading the kubeconfig: {e}")),
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok(Target {
        client: kube::Client::try_from(config)?,
        namespace,
    })
}

/// An error as a person reads it: the API server's own message (it names the field
/// or the permission), not the client's debug form, after any context.
pub fn describe(error: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in error.chain() {
        match cause.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => {
                parts.push(status.message.clone());
                break;
            }
            _ => parts.push(cause.to_string()),
        }
    }
    parts.dedup();
    parts.join(": ")
}

/// Runs one command; what it prints goes to stdout, errors to the caller.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = target(&cli).await?;
    let t = &target;
    match cli.command {
        Command::Create {
            name,
            class,
            images,
            ttl,
            instance_type,
            owner,
        } => {
            let request = environments::Request {
                name,
                class,
                images,
                ttl,
                instance_type,
                owner,
            };
            environments::create(t, request).await
        }
        Command::List {
            all_namespaces,
            owner,
            all_owners,
        } => environments::list(t, all_namespaces, owner, all_owners).await,
        Command::Extend { name, duration } => environments::extend(t, &name, duration).await,
        Command::Wait { name, timeout } => environments::wait(t, &name, timeout).await,
        Command::Sleep { name } => environments::set_sleeping(t, &name, true).await,
        Command::Wake { name } => environments::set_sleeping(t, &name, false).await,
        Command::Creds { name, output } => access::creds(t, &name, output).await,
        Command::Open { name } => access::open(t, &name).await,
        Command::Shell { name } => access::shell(t, &name).await,
        Command::Logs { name, all } => access::logs(t, &name, all).await,
    }
}
