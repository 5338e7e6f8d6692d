//! `kubectl-featureenv`: the kubectl plugin (`kubectl featureenv …`) for application
//! engineers; a thin entry point over `featureenv_operator::plugin`.
#![forbid(unsafe_code)]

use clap::Parser;
use featureenv_operator::plugin::{Cli, describe, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // kube (ring) and the AWS SDK (aws-lc-rs) both link a rustls provider; pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
