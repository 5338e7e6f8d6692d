//! What the operator relies on the real API server for, checked against the real
//! kube-apiserver and etcd (tests/support/control_plane.rs): how RBAC authorizes a
//! server-side apply that creates a Secret, that `kubectl explain` shows the CRDs'
//! documentation, that `kubectl wait` sees the Ready condition, that the CRDs'
//! transition rules refuse edits of immutable fields, and that the control
//! plane leaves no process behind, even when its owner is SIGKILLed.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::cluster;
use support::control_plane::{self, ControlPlane};

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) is as good as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

/// The README's question: a server-side apply that creates an object is audited as
/// `patch`, but is it also authorized as `create`? On the real API server, yes: with
/// `get` and `patch` on secrets the apply is forbidden, with `create` added it passes.
/// So the chart's `create` on secrets is needed though the audit log never shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_that_creates_needs_create() {
    let (plane, admin) = cluster::cluster().await;
    let ns = "apply-rbac";
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &object(serde_json::json!({"metadata": {"name": ns}})),
        )
        .await
        .expect("namespace");
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &object(serde_json::json!({"metadata": {"name": "writer"}})),
        )
        .await
        .expect("service account");
    let roles: Api<Role> = Api::namespaced(admin.clone(), ns);
    let role = |verbs: &[&str]| -> Role {
        object(serde_json::json!({
            "metadata": {"name": "secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": verbs}],
        }))
    };
    roles
        .create(&PostParams::default(), &role(&["get", "patch"]))
        .await
        .expect("role");
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &object(serde_json::json!({
                "metadata": {"name": "secrets"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secrets"},
                "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": ns}],
            })),
        )
        .await
        .expect("role binding");
    let kubeconfig = plane.dir().join("writer.kubeconfig");
    plane.write_service_account_kubeconfig(ns, "writer", &kubeconfig).await;
    let writer =
        control_plane::client_from_kubeconfig(&std::fs::read_to_string(&kubeconfig).unwrap(), "featureenv-apply-test")
            .await;
    let secrets: Api<Secret> = Api::namespaced(writer, ns);
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": ns},
        "stringData": {"password": "x"},
    });
    let apply = PatchParams::apply("featureenv-operator").force();

    match secrets.patch("db", &apply, &Patch::Apply(&secret)).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "expected Forbidden, got {e:?}"),
        other => panic!("an apply that creates passed with only get+patch: {other:?}"),
    }
    // An apply that changes an existing Secret needs only patch.
    let mut existing = secret.clone();
    existing["metadata"]["name"] = "existing".into();
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &object(existing.clone()))
        .await
        .expect("admin creates the Secret");
    existing["stringData"]["password"] = "changed".into();
    secrets
        .patch("existing", &apply, &Patch::Apply(&existing))
        .await
        .expect("an apply that changes an existing Secret with get+patch");

    roles
        .replace("secrets", &PostParams::default(), &role(&["get", "patch", "create"]))
        .await
        .expect("role with create");
    // RBAC changes reach the authorizer through its informer: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match secrets.patch("db", &apply, &Patch::Apply(&secret)).await {
            Ok(created) => {
                assert_eq!(created.metadata.name.as_deref(), Some("db"));
                break;
            }
            Err(kube::Error::Api(e)) if e.code == 403 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("apply with create granted: {e}"),
        }
    }
}

/// `kubectl explain` reads the CRDs' OpenAPI from the real server: the field docs come
/// from the Rust doc comments, and `kubectl wait` sees the Ready condition the
/// operator writes (the demo and the README rely on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_and_wait() {
    let (plane, admin) = cluster::cluster().await;
    let kubectl = |args: &[&str]| {
        let out = Command::new(control_plane::kubectl())
            .args(args)
            .env("KUBECONFIG", plane.admin_kubeconfig())
            .env("KUBECACHEDIR", plane.dir().join("kubecache"))
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The resource names are `featureenvs` / `featureenv` / `fe`; the kind
    // (`featureenvironment`) is not a resource name to the real kubectl.
    // The server publishes a new CRD's OpenAPI a moment after it is Established.
    let deadline = Instant::now() + Duration::from_secs(30);
    let explained = loop {
        let (ok, explained, err) = kubectl(&["explain", "featureenvs.spec.ttl"]);
        if ok {
            break explained;
        }
        assert!(Instant::now() < deadline, "kubectl explain failed: {err}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let documented = featureenv_operator::api::crds()
        .into_iter()
        .find(|(name, _)| name.contains("featureenvironments"))
        .map(|(_, crd)| serde_json::to_value(crd).unwrap())
        .expect("FeatureEnvironment CRD");
    let ttl_doc = documented["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["ttl"]["description"]
        .as_str()
        .expect("spec.ttl has a description")
        .to_owned();
    let first_words: String = ttl_doc.split_whitespace().take(5).collect::<Vec<_>>().join(" ");
    assert!(
        explained
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(&first_words),
        "kubectl explain does not show the doc comment {first_words:?}:\n{explained}"
    );

    let envs: Api<featureenv_operator::api::FeatureEnvironment> = Api::namespaced(admin.clone(), "default");
    envs.create(&PostParams::default(), &cluster::environment("waited", "standard"))
        .await
        .expect("environment");
    let waiter = Command::new(control_plane::kubectl())
        .args([
            "wait",
            "--for=condition=Ready",
            "featureenv/waited",
            "--timeout=30s",
            "-n",
            "default",
        ])
        .env("KUBECONFIG", plane.admin_kubeconfig())
        .env("KUBECACHEDIR", plane.dir().join("kubecache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl wait");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = serde_json::json!({
        "apiVersion": "featureenv.io/v1alpha1", "kind": "FeatureEnvironment",
        "status": {"phase": "Ready", "conditions": [{
            "type": "Ready", "status": "True", "reason": "Ready", "message": "ready",
            "lastTransitionTime": "2026-12-02T00:00:00Z", "observedGeneration": 1,
        }]},
    });
    envs.patch_status("waited", &PatchParams::apply("test").force(), &Patch::Apply(&status))
        .await
        .expect("status");
    let out = waiter.wait_with_output().expect("kubectl wait");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("condition met"),
        "kubectl wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Dropping a control plane stops etcd and kube-apiserver (by PID), and a process
/// that owns one and is SIGKILLed (no destructor runs) leaves none behind either: the
/// tether kills them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_leaves_no_process_behind() {
    let plane = ControlPlane::start().await;
    let pids = plane.pids();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    drop(plane);
    assert!(pids.iter().all(|&p| !alive(p)), "still running after drop: {pids:?}");

    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_featureenv-operator"))
        .parent()
        .unwrap()
        .join("examples/control-plane");
    assert!(
        example.exists(),
        "{} is missing: cargo build --examples",
        example.display()
    );
    let mut owner = Command::new(&example)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn control-plane");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(owner.stdout.take().unwrap()), &mut line)
        .expect("control-plane's line");
    let started: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    let pids: Vec<u32> = started["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 2);
    owner.kill().unwrap(); // SIGKILL: no destructor runs
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "orphaned after SIGKILL: {pids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `spec.className` and `spec.instanceType` cannot change after creation (set,
/// changed or removed): the API server refuses the edit with a message naming the
/// field. Other fields stay editable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_and_instance_type_are_immutable() {
    use featureenv_operator::api::FeatureEnvironment;
    let (_plane, admin) = cluster::cluster().await;
    cluster::namespace(&admin, "team").await;
    let envs: Api<FeatureEnvironment> = Api::namespaced(admin.clone(), "team");
    envs.create(&PostParams::default(), &cluster::environment("pinned", "standard"))
        .await
        .expect("created");
    let edit = async |spec: serde_json::Value| {
        let patch = Patch::Merge(serde_json::json!({ "spec": spec }));
        envs.patch("pinned", &PatchParams::default(), &patch).await
    };
    for (spec, field) in [
        (serde_json::json!({"className": "premium"}), "spec.className"),
        (serde_json::json!({"className": null}), "spec.className"),
        (serde_json::json!({"instanceType": "t3.2xlarge"}), "spec.instanceType"),
        (serde_json::json!({"instanceType": null}), "spec.instanceType"),
    ] {
        match edit(spec.clone()).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{spec}: {status:?}");
                assert!(
                    status.message.contains(&format!("{field} is immutable")),
                    "{spec}: {}",
                    status.message
                );
            }
            other => panic!("{spec}: the edit was not refused: {other:?}"),
        }
    }
    let edited = edit(serde_json::json!({"ttl": "2h", "owner": "bob@example.com"}))
        .await
        .expect("other fields stay editable");
    assert_eq!(edited.spec.ttl.as_deref(), Some("2h"));
    assert_eq!(edited.spec.class_name.as_deref(), Some("standard"));
}
