//! `control-plane`: the test control plane (tests/support/control_plane.rs) as a
//! process, for the local stack (`hack/dev-up.sh`) and the Python chart tests. Starts
//! etcd and kube-apiserver with their files in `--dir`, prints one JSON line (server,
//! admin kubeconfig, PIDs) once `/readyz` answers, and stops both by PID on SIGTERM or
//! SIGINT. If this process is killed outright, the tether stops them.

#[path = "../tests/support/control_plane.rs"]
#[allow(dead_code)]
mod control_plane;
#[path = "../tests/support/root.rs"]
mod root;

use std::path::PathBuf;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = match (args.next().as_deref(), args.next()) {
        (Some("--dir"), Some(dir)) => PathBuf::from(dir),
        _ => {
            eprintln!("usage: control-plane --dir DIR");
            std::process::exit(2);
        }
    };
    let plane = control_plane::ControlPlane::start_in(&dir).await;
    let pids = plane.pids();
    println!(
        "{}",
        serde_json::json!({
            "server": plane.server(),
            "kubeconfig": plane.admin_kubeconfig(),
            "auditLog": plane.audit_log(),
            "pids": pids,
        })
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(plane);
}
