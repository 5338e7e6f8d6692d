//! The `kube-emulator` binary: address on stdout's first line, kubeconfig,
//! audit log with Kubernetes verbs, exit 0 on SIGTERM, state across restarts.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Kills the emulator if a test fails half-way.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path) -> (Proc, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--kubeconfig-out")
        .arg(dir.join("kubeconfig"))
        .arg("--audit-log")
        .arg(dir.join("audit.log"))
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kube-emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("first line is the address: {line:?}"));
    (Proc(child), addr)
}

fn sigterm(p: &mut Proc) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("kube-emulator did not exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_lifecycle_audit_and_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr) = spawn(dir.path());
    assert!(addr.ip().is_loopback());
    let kc = std::fs::read_to_string(dir.path().join("kubeconfig")).unwrap();
    assert!(kc.contains(&format!("server: http://{addr}")));
    // kubectl accepts the kubeconfig.
    let out = Command::new("/usr/bin/kubectl")
        .args(["get", "namespaces", "-o", "name"])
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .env("KUBECACHEDIR", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names.contains("namespace/default") && names.contains("namespace/kube-system"),
        "{names}"
    );

    let ua = [
        ("User-Agent", "audit-test/1.0"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let body = serde_json::to_vec(&json!({"metadata": {"name": "keep"}, "data": {"a": "1"}})).unwrap();
    let r = http(addr, "POST", "/api/v1/namespaces/default/configmaps", &ua, &body).await;
    assert_eq!(r.status, 201);
    let old_rv = obj_rv(&r.json());
    http(addr, "GET", "/api/v1/namespaces/default/configmaps/keep", &ua, b"").await;
    http(addr, "GET", "/api/v1/namespaces/default/configmaps", &ua, b"").await;
    http(
        addr,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
        &ua,
        b"",
    )
    .await;
    let patch = [
        ("User-Agent", "audit-test/1.0"),
        ("Content-Type", "application/merge-patch+json"),
    ];
    http(
        addr,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/keep",
        &patch,
        br#"{"data":{"b":"2"}}"#,
    )
    .await;
    http(
        addr,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/keep/status",
        &patch,
        b"{}",
    )
    .await;
    http(
        addr,
        "PUT",
        "/api/v1/namespaces/default/configmaps/missing",
        &ua,
        br#"{"metadata":{"name":"missing"}}"#,
    )
    .await;
    let body = serde_json::to_vec(&json!({"metadata": {"name": "gone"}})).unwrap();
    http(addr, "POST", "/api/v1/namespaces/default/configmaps", &ua, &body).await;
    http(addr, "DELETE", "/api/v1/namespaces/default/configmaps/gone", &ua, b"").await;
    http(addr, "GET", "/apis/coordination.k8s.io/v1/leases", &ua, b"").await;

    assert_eq!(sigterm(&mut p), 0, "exits 0 on SIGTERM");
    let audit: Vec<Value> = std::fs::read_to_string(dir.path().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .filter(|l: &Value| l["userAgent"] == "audit-test/1.0")
        .collect();
    let got: Vec<(String, String, String, String, String, u64)> = audit
        .iter()
        .map(|l| {
            (
                l["verb"].as_str().unwrap().into(),
                l["apiGroup"].as_str().unwrap().into(),
                l["resource"].as_str().unwrap().into(),
                l["subresource"].as_str().unwrap().into(),
                l["name"].as_str().unwrap().into(),
                l["code"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        got,
        vec![
            (s("create"), s(""), s("configmaps"), s(""), s(""), 201),
            (s("get"), s(""), s("configmaps"), s(""), s("keep"), 200),
            (s("list"), s(""), s("configmaps"), s(""), s(""), 200),
            (s("watch"), s(""), s("configmaps"), s(""), s(""), 200),
            (s("patch"), s(""), s("configmaps"), s(""), s("keep"), 200),
            (s("patch"), s(""), s("configmaps"), s("status"), s("keep"), 404),
            (s("update"), s(""), s("configmaps"), s(""), s("missing"), 404),
            (s("create"), s(""), s("configmaps"), s(""), s(""), 201),
            (s("delete"), s(""), s("configmaps"), s(""), s("gone"), 200),
            (s("list"), s("coordination.k8s.io"), s("leases"), s(""), s(""), 200),
        ]
    );
    assert!(
        audit
            .iter()
            .all(|l| l["namespace"] == "default" || l["resource"] == "leases")
    );

    // Restart with the same state file: objects survive, old versions are 410.
    let (mut p2, addr2) = spawn(dir.path());
    let r = get_json(addr2, "/api/v1/namespaces/default/configmaps/keep").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], json!({"a": "1", "b": "2"}));
    assert_eq!(
        get_json(addr2, "/api/v1/namespaces/default/configmaps/gone")
            .await
            .status,
        404
    );
    let mut w = WatchStream::open(
        addr2,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old_rv}"),
    )
    .await;
    let e = w.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["code"].as_u64()),
        (Some("ERROR"), Some(410))
    );
    let list = get_json(addr2, "/api/v1/namespaces/default/configmaps").await.json();
    let new_rv: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(new_rv > old_rv);
    let mut w = WatchStream::open(
        addr2,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={new_rv}&timeoutSeconds=1"),
    )
    .await;
    assert!(
        w.next(Duration::from_secs(5)).await.is_none(),
        "current version watches normally"
    );
    assert_eq!(sigterm(&mut p2), 0);
}
