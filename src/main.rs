//! The `featureenv-operator` binary: a thin CLI over the library — `run` the
//! controllers, print the `crds`, or the `version`.
#![forbid(unsafe_code)]

use clap::Parser;
use featureenv_operator::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Two rustls crypto providers are linked (kube's and the AWS SDK's); choose one
    // before any TLS client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(config) => featureenv_operator::runtime::run(*config).await,
        Command::Crds { out_dir } => {
            let crds = featureenv_operator::api::crds();
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    for (file, crd) in crds {
                        std::fs::write(dir.join(file), featureenv_operator::api::crd_yaml(&crd)?)?;
                    }
                }
                None => {
                    for (_, crd) in crds {
                        print!("---\n{}", featureenv_operator::api::crd_yaml(&crd)?);
                    }
                }
            }
            Ok(())
        }
        Command::Version => {
            println!("featureenv-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
