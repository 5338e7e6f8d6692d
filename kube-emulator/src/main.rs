//! The kube-emulator binary: serve until SIGTERM/SIGINT, print the address first.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use kube_emulator::{Emulator, Options};

/// In-memory Kubernetes API server for tests and the local demo.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to bind; port 0 picks a free one.
    #[arg(long, env = "KUBE_EMULATOR_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at this server.
    #[arg(long, env = "KUBE_EMULATOR_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// Append one JSON line per request here.
    #[arg(long, env = "KUBE_EMULATOR_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Persist objects here across restarts.
    #[arg(long, env = "KUBE_EMULATOR_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Watch events kept for resuming watches.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let emu = Emulator::start_with(Options {
        listen: args.listen,
        audit_log: args.audit_log,
        state_file: args.state_file,
        history_limit: args.history,
        ..Options::default()
    })
    .await?;
    if let Some(p) = &args.kubeconfig_out {
        emu.write_kubeconfig(p)?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", emu.addr())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    emu.shutdown().await;
    Ok(())
}
