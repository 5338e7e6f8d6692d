//! What the operator relies on the real API server for, checked against the real
//! kube-apiserver and etcd (tests/support/control_plane.rs): how RBAC authorizes a
//! server-side apply that creates a Secret, that `kubectl explain` shows the CRDs'
//! documentation, that `kubectl wait` sees the Ready condition, that the CRDs'
//! transition rules refuse edits of immutable fields, that leader election fences
//! a leader cut off from it, and that the control plane leaves no process behind,
//! even when its owner is SIGKILLed.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use featureenv_operator::fence::Fence;
use featureenv_operator::leader::{Elector, LeaseTiming, Lost};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::cluster;
use support::control_plane::{self, ControlPlane};
use support::partition::Partition;

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

/// Runs the real kubectl as admin against `plane`: (success, stdout, stderr).
fn kubectl(plane: &ControlPlane, args: &[&str]) -> (bool, String, String) {
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
    let kubectl = |args: &[&str]| kubectl(&plane, args);
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
            "featureenvironment/waited",
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

fn lease_timing() -> LeaseTiming {
    LeaseTiming {
        duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(400),
    }
}

fn elector(client: kube::Client, identity: &str, fence: std::sync::Arc<Fence>) -> Elector {
    Elector::new(client, "default", "featureenv-test", identity, lease_timing(), fence)
}

/// Fencing (issue 11, item 4): a leader cut off from the API server stops acting —
/// its fence closes and `hold` returns — within the renew deadline of the cut, and
/// the stand-by takes over only after that, about a lease duration after the last
/// renewal it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_stops_before_the_stand_by_takes_over() {
    let plane = ControlPlane::start().await;
    let partition = Partition::start(&plane.address()).await;
    let via_proxy = plane
        .client_via(&format!("https://{}", partition.addr), "featureenv-test-leader-a")
        .await;
    let direct = plane.client_with_agent("featureenv-test-leader-b").await;
    let timing = lease_timing();

    let fence_a = Fence::closed();
    let mut a = elector(via_proxy, "a", fence_a.clone());
    a.acquire().await;
    assert!(fence_a.is_open());
    let a_lost = tokio::spawn(async move {
        let why = a.hold().await;
        (Instant::now(), why)
    });
    let fence_b = Fence::closed();
    let b_acquired = tokio::spawn({
        let fence_b = fence_b.clone();
        async move {
            let mut b = elector(direct, "b", fence_b);
            b.acquire().await;
            (Instant::now(), b)
        }
    });
    // A renews: B waits however long that goes on.
    tokio::time::sleep(timing.duration * 2).await;
    assert!(!b_acquired.is_finished(), "b took a Lease a renewed");
    assert!(fence_a.is_open() && !fence_b.is_open());

    let cut = Instant::now();
    partition.cut();
    let (a_stopped, why) = tokio::time::timeout(timing.duration * 2, a_lost)
        .await
        .expect("a noticed it was cut off")
        .unwrap();
    assert!(matches!(why, Lost::DeadlinePassed(_)), "{why}");
    assert!(!fence_a.is_open(), "a's fence is still open after it stopped");
    let (b_took, _b) = tokio::time::timeout(timing.duration * 3, b_acquired)
        .await
        .expect("b took over")
        .unwrap();
    println!(
        "cut-off leader stopped {:?} after the cut (deadline {:?}); stand-by took over {:?} after the cut (lease {:?})",
        a_stopped - cut,
        timing.renew_deadline,
        b_took - cut,
        timing.duration
    );
    assert!(
        a_stopped - cut <= timing.renew_deadline + Duration::from_millis(100),
        "a acted {:?} past the cut",
        a_stopped - cut
    );
    assert!(a_stopped < b_took, "b took over before a stopped");
    assert!(fence_b.is_open());
    assert!(
        b_took - cut <= timing.duration + timing.retry_period + Duration::from_millis(500),
        "takeover took {:?}",
        b_took - cut
    );
}

/// A leader that shuts down hands the Lease over: the stand-by takes it within about
/// a retry period instead of waiting out the lease duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_at_once() {
    let plane = ControlPlane::start().await;
    let client = plane.client_with_agent("featureenv-test-leader").await;
    let timing = lease_timing();
    let fence_a = Fence::closed();
    let mut a = elector(client.clone(), "a", fence_a.clone());
    a.acquire().await;
    let fence_b = Fence::closed();
    let b_acquired = tokio::spawn({
        let fence_b = fence_b.clone();
        async move {
            elector(client, "b", fence_b).acquire().await;
            Instant::now()
        }
    });
    tokio::time::sleep(timing.retry_period * 2).await;
    assert!(!b_acquired.is_finished());
    let released = Instant::now();
    a.release().await;
    assert!(!fence_a.is_open(), "a released the Lease but may still act");
    let took = tokio::time::timeout(timing.duration, b_acquired)
        .await
        .expect("b took over")
        .unwrap();
    assert!(
        took - released <= timing.retry_period + Duration::from_millis(300),
        "took {:?} after the release",
        took - released
    );
    assert!(fence_b.is_open());
}

/// kubectl polish on the real server: `kubectl explain` opens with the kind's own
/// description, `kubectl get featureenv` (the category) lists every kind's objects,
/// and `--field-selector spec.owner=...` (a selectable field) finds one engineer's
/// environments, with the Owner and Class columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_finds_environments_by_owner_and_category() {
    let (plane, admin) = cluster::cluster().await;
    let kubectl = |args: &[&str]| {
        let (ok, out, err) = kubectl(&plane, args);
        (ok, out + &err)
    };
    let envs: Api<featureenv_operator::api::FeatureEnvironment> = Api::namespaced(admin.clone(), "default");
    for (name, owner) in [("alices", "alice@example.com"), ("bobs", "bob@example.com")] {
        let mut env = cluster::environment(name, "standard");
        env.spec.owner = Some(owner.into());
        envs.create(&PostParams::default(), &env).await.expect("environment");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let explained = loop {
        // The singular is the kind's name, as users type it.
        let (ok, text) = kubectl(&["explain", "featureenvironment"]);
        if ok {
            break text;
        }
        assert!(Instant::now() < deadline, "kubectl explain failed: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        explained.contains("A private, full-stack test environment") && !explained.contains("Auto-generated"),
        "{explained}"
    );
    let (ok, listed) = kubectl(&[
        "get",
        "featureenvs",
        "-n",
        "default",
        "--field-selector",
        "spec.owner=alice@example.com",
    ]);
    assert!(ok, "{listed}");
    assert!(listed.contains("alices") && !listed.contains("bobs"), "{listed}");
    assert!(listed.contains("OWNER") && listed.contains("CLASS"), "{listed}");
    Api::<featureenv_operator::api::RdsPool>::all(admin.clone())
        .create(&PostParams::default(), &cluster::pool("listed-pool", 1, 2))
        .await
        .expect("pool");
    let (ok, category) = kubectl(&["get", "featureenv", "-A"]);
    assert!(ok, "{category}");
    assert!(
        category.contains("alices") && category.contains("bobs") && category.contains("listed-pool"),
        "the category lists every kind: {category}"
    );
}

/// A class's instance tags must be tags EC2 accepts and leave the operator's own
/// alone: the API server refuses the class, naming the field, instead of every
/// launch of the class failing at RunInstances (or, for `featureenv.io/cluster`,
/// the operator silently overwriting it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_instance_tags_are_checked_at_admission() {
    let (_plane, admin) = cluster::cluster().await;
    let classes: Api<featureenv_operator::api::FeatureEnvironmentClass> = Api::all(admin.clone());
    let refused = |tags: &[(&str, String)]| {
        let mut class = cluster::class("tagged", None);
        class.spec.instance.tags = tags.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        class
    };
    let cases: [(&[(&str, String)], &str); 5] = [
        (&[("team", "x".repeat(257))], "values must be at most 256"),
        (&[("aws:createdBy", "me".into())], "may not begin with aws:"),
        (&[("featureenv.io/cluster", "other".into())], "written by the operator"),
        (&[("Name", "mine".into())], "written by the operator"),
        (&[(&"k".repeat(129), "v".into())], "1 to 128 characters"),
    ];
    for (tags, message) in cases {
        let error = classes
            .create(&PostParams::default(), &refused(tags))
            .await
            .expect_err("refused at admission");
        let text = error.to_string();
        assert!(
            text.contains("spec.instance.tags") && text.contains(message),
            "{tags:?}: {text}"
        );
    }
    let too_many: Vec<(String, String)> = (0..46).map(|i| (format!("t{i}"), "v".into())).collect();
    let mut class = cluster::class("tagged", None);
    class.spec.instance.tags = too_many.into_iter().collect();
    let error = classes
        .create(&PostParams::default(), &class)
        .await
        .expect_err("46 tags");
    assert!(error.to_string().contains("spec.instance.tags"), "{error}");
    classes
        .create(&PostParams::default(), &refused(&[("team", "platform".into())]))
        .await
        .expect("ordinary tags are fine");
}

/// Environments are reconciled when their class's spec or default-ness changes, and
/// not when only its status does: a warm pool writes the class's status with every
/// spare that comes or goes, which would otherwise reconcile every environment of
/// the class each time.
#[tokio::test]
async fn a_class_status_change_triggers_no_environment() {
    use featureenv_operator::api::FeatureEnvironmentClass;
    use futures::StreamExt;
    let (_control_plane, client) = cluster::cluster().await;
    let (_store, writer) = kube::runtime::reflector::store();
    let (task, events) = featureenv_operator::runtime::watch_classes(client.clone(), writer);
    let mut events = Box::pin(events);
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("a class event")
            .expect("the stream goes on")
            .expect("no watch error")
    };
    let classes: Api<FeatureEnvironmentClass> = Api::all(client.clone());
    let mut class = cluster::class("watched", None);
    class.metadata.annotations = None;
    classes.create(&PostParams::default(), &class).await.unwrap();
    assert_eq!(next().await.metadata.generation, Some(1));

    let status = serde_json::json!({"status": {"warmPool": {"available": 1, "launching": 1}}});
    classes
        .patch_status("watched", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let spec = serde_json::json!({"spec": {"maxPerNamespace": 3}});
    classes
        .patch("watched", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    let after = next().await;
    assert_eq!(after.metadata.generation, Some(2), "the status change passed on");

    let default = serde_json::json!({"metadata": {"annotations": {"featureenv.io/is-default-class": "true"}}});
    classes
        .patch("watched", &PatchParams::default(), &Patch::Merge(&default))
        .await
        .unwrap();
    assert!(next().await.is_default(), "becoming the default is passed on");
    classes.delete("watched", &Default::default()).await.unwrap();
    assert_eq!(
        next().await.metadata.name.as_deref(),
        Some("watched"),
        "a deletion is passed on"
    );
    task.abort();
}
