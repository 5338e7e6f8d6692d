//! KUBE_API.md conformance item 13: the real kubectl (default validation,
//! fresh KUBECACHEDIR) through the scenario of issue 3.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use tokio::io::AsyncWriteExt;

const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", &self.cache)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .current_dir(&self.dir)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            let mut si = child.stdin.take().unwrap();
            si.write_all(input.as_bytes()).await.unwrap();
            drop(si);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl output");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and requires success.
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, None).await;
        assert_eq!(
            o.code, 0,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    async fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let o = self.run(args, Some(stdin)).await;
        assert_eq!(
            o.code, 0,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

const WIDGET: &str = "apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
  labels:
    app: demo
spec:
  size: 3
  ports:
  - name: http
    port: 80
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scenario() {
    assert!(Path::new(KUBECTL).exists(), "kubectl must be installed at {KUBECTL}");
    let emu = start().await;
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig).unwrap();
    let k = Kubectl {
        kubeconfig,
        cache: tmp.path().join("cache"),
        dir: tmp.path().to_path_buf(),
    };
    let crd = write(tmp.path(), "crd.yaml", WIDGET_CRD_YAML);
    let w1 = write(tmp.path(), "w1.yaml", WIDGET);

    let out = k.ok(&["apply", "-f", &crd]).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{out}"
    );
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=10s",
    ])
    .await;

    let out = k.ok(&["apply", "-f", &w1]).await;
    assert_eq!(out.trim(), "widget.example.com/w1 created");
    let out = k.ok(&["apply", "-f", &w1]).await;
    assert_eq!(out.trim(), "widget.example.com/w1 unchanged");
    let out = k.ok(&["apply", "--server-side", "-f", &w1]).await;
    assert_eq!(out.trim(), "widget.example.com/w1 serverside-applied");

    // Printer columns by plural and short name; -o wide adds the priority column.
    let out = k.ok(&["get", "widgets"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "READY", "SIZE", "AGE"]);
    assert!(out.lines().nth(1).unwrap().starts_with("w1"), "{out}");
    let out = k.ok(&["get", "wd", "-o", "wide"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "READY", "SIZE", "MODE", "AGE"]);
    assert!(out.contains("fast"), "defaulted mode shown: {out}");
    let out = k.ok(&["get", "wd", "w1", "-o", "yaml"]).await;
    assert!(out.contains("kind: Widget") && out.contains("size: 3"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&k.ok(&["get", "widget", "w1", "-o", "json"]).await).unwrap();
    assert_eq!(json["spec"]["mode"], "fast");
    let out = k.ok(&["get", "wd", "-l", "app=demo", "-o", "name"]).await;
    assert_eq!(out.trim(), "widget.example.com/w1");
    let out = k.ok(&["get", "wd", "-l", "app=other"]).await;
    assert!(out.trim().is_empty());
    let out = k.ok(&["get", "all"]).await;
    assert!(out.contains("widget.example.com/w1"), "categories: {out}");

    let out = k.ok(&["explain", "widgets.spec"]).await;
    assert!(
        out.contains("What the widget should be.") && out.contains("How big the widget is."),
        "{out}"
    );
    let out = k.ok(&["describe", "widget", "w1"]).await;
    assert!(
        out.contains("Name:") && out.contains("w1") && out.contains("Size:"),
        "{out}"
    );

    // replace -f with the current object.
    let current = k.ok(&["get", "wd", "w1", "-o", "yaml"]).await;
    let cur_file = write(tmp.path(), "current.yaml", &current.replace("size: 3", "size: 4"));
    let out = k.ok(&["replace", "-f", &cur_file]).await;
    assert_eq!(out.trim(), "widget.example.com/w1 replaced");

    let out = k
        .ok(&["patch", "wd", "w1", "--type=merge", "-p", r#"{"spec":{"size":5}}"#])
        .await;
    assert_eq!(out.trim(), "widget.example.com/w1 patched");
    k.ok(&[
        "patch",
        "wd",
        "w1",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/tags","value":["a"]}]"#,
    ])
    .await;
    let out = k
        .ok(&[
            "get",
            "wd",
            "w1",
            "-o",
            "jsonpath={.spec.size} {.spec.tags[0]} {.metadata.generation}",
        ])
        .await;
    assert_eq!(out, "5 a 4");

    // Condition and jsonpath waits, driven by a status write while waiting.
    let waiter = {
        let k2 = Kubectl {
            kubeconfig: k.kubeconfig.clone(),
            cache: k.cache.clone(),
            dir: k.dir.clone(),
        };
        tokio::spawn(async move {
            k2.run(&["wait", "--for=condition=Ready", "wd/w1", "--timeout=20s"], None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    k.ok(&[
        "patch",
        "wd",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Done"}]}}"#,
    ])
    .await;
    let waited = waiter.await.unwrap();
    assert_eq!(waited.code, 0, "{} {}", waited.stdout, waited.stderr);
    assert!(waited.stdout.contains("condition met"));
    k.ok(&["wait", "--for=jsonpath={.spec.size}=5", "wd/w1", "--timeout=10s"])
        .await;
    let out = k.ok(&["get", "wd", "w1"]).await;
    assert!(
        out.lines().nth(1).unwrap().split_whitespace().nth(1) == Some("True"),
        "{out}"
    );

    // Events recorded through events.k8s.io show in `kubectl get events` and describe.
    let rec = Recorder::new(
        emu.client(),
        Reporter {
            controller: "widget-ctl".into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        api_version: Some("example.com/v1".into()),
        kind: Some("Widget".into()),
        name: Some("w1".into()),
        namespace: Some("default".into()),
        uid: json_uid(&json),
        ..Default::default()
    };
    rec.publish(
        &RecorderEvent {
            type_: EventType::Normal,
            reason: "Provisioned".into(),
            note: Some("widget is up".into()),
            action: "Provision".into(),
            secondary: None,
        },
        &reference,
    )
    .await
    .unwrap();
    let out = k.ok(&["get", "events"]).await;
    assert!(
        out.contains("Provisioned") && out.contains("widget/w1") && out.contains("widget is up"),
        "{out}"
    );
    let out = k.ok(&["describe", "wd", "w1"]).await;
    assert!(out.contains("Provisioned"), "describe shows events: {out}");

    // Schema-invalid objects are rejected with the field path.
    let bad = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  size: 0\n  mode: warp\n";
    let o = k.run(&["apply", "-f", "-"], Some(bad)).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("spec.size") && o.stderr.contains("spec.mode"),
        "{}",
        o.stderr
    );
    let unknown = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  size: 1\n  colour: red\n";
    let o = k.run(&["apply", "-f", "-"], Some(unknown)).await;
    assert_ne!(o.code, 0, "strict validation rejects unknown fields");
    assert!(o.stderr.contains("spec.colour"), "{}", o.stderr);

    // Delete with a finalizer, then remove it; wait --for=delete returns.
    k.ok(&[
        "patch",
        "wd",
        "w1",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ])
    .await;
    let out = k.ok(&["delete", "wd", "w1", "--wait=false"]).await;
    assert!(out.contains("deleted"), "{out}");
    let ts = k
        .ok(&["get", "wd", "w1", "-o", "jsonpath={.metadata.deletionTimestamp}"])
        .await;
    assert!(!ts.is_empty());
    let waiter = {
        let k2 = Kubectl {
            kubeconfig: k.kubeconfig.clone(),
            cache: k.cache.clone(),
            dir: k.dir.clone(),
        };
        tokio::spawn(async move { k2.run(&["wait", "--for=delete", "wd/w1", "--timeout=20s"], None).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    k.ok(&[
        "patch",
        "wd",
        "w1",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let waited = waiter.await.unwrap();
    assert_eq!(waited.code, 0, "{} {}", waited.stdout, waited.stderr);
    let o = k.run(&["get", "wd", "w1"], None).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("NotFound") || o.stderr.contains("not found"),
        "{}",
        o.stderr
    );

    // Built-ins a rendered chart needs, through client-side apply with strict validation.
    let chart = "apiVersion: v1
kind: Namespace
metadata:
  name: featureenv-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: operator
  namespace: featureenv-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: featureenv-operator
rules:
- apiGroups: [example.com]
  resources: [widgets, widgets/status]
  verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: featureenv-operator
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: featureenv-operator}
subjects:
- {kind: ServiceAccount, name: operator, namespace: featureenv-system}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: operator
  namespace: featureenv-system
spec:
  replicas: 2
  selector: {matchLabels: {app: operator}}
  template:
    metadata: {labels: {app: operator}}
    spec:
      serviceAccountName: operator
      containers:
      - name: operator
        image: featureenv-operator:dev
        env:
        - {name: A, value: \"1\"}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: operator
  namespace: featureenv-system
spec:
  minAvailable: 1
  selector: {matchLabels: {app: operator}}
---
apiVersion: v1
kind: Service
metadata:
  name: operator-metrics
  namespace: featureenv-system
spec:
  selector: {app: operator}
  ports:
  - {name: metrics, port: 8080}
";
    let out = k.ok_stdin(&["apply", "-f", "-"], chart).await;
    assert_eq!(out.lines().filter(|l| l.ends_with(" created")).count(), 7, "{out}");
    let changed = chart.replace("image: featureenv-operator:dev", "image: featureenv-operator:v2");
    let out = k.ok_stdin(&["apply", "-f", "-"], &changed).await;
    assert!(out.contains("deployment.apps/operator configured"), "{out}");
    assert!(out.contains("namespace/featureenv-system unchanged"), "{out}");
    let img = k
        .ok(&[
            "get",
            "deploy",
            "operator",
            "-n",
            "featureenv-system",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.metadata.generation}",
        ])
        .await;
    assert_eq!(img, "featureenv-operator:v2 2");
    let ip = k
        .ok(&[
            "get",
            "svc",
            "operator-metrics",
            "-n",
            "featureenv-system",
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.ports[0].targetPort}",
        ])
        .await;
    assert!(ip.starts_with("10.96.") && ip.ends_with(" 8080"), "{ip}");
    let out = k.ok(&["get", "deploy", "-n", "featureenv-system"]).await;
    assert!(out.contains("operator"), "{out}");
    // Strict validation also covers built-ins: a typo in a chart is an error.
    let typo = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: typo\n  namespace: featureenv-system\nautomountServiceAccountTokn: false\n";
    let o = k.run(&["apply", "-f", "-"], Some(typo)).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("unknown field \"automountServiceAccountTokn\""),
        "{}",
        o.stderr
    );
    // Imperative commands send protobuf bodies for built-ins.
    let out = k.ok(&["create", "namespace", "scratch"]).await;
    assert_eq!(out.trim(), "namespace/scratch created");
    let out = k
        .ok(&["create", "configmap", "c1", "-n", "scratch", "--from-literal=a=b"])
        .await;
    assert_eq!(out.trim(), "configmap/c1 created");
    let out = k
        .ok(&[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "scratch",
            "--from-literal=p=q",
        ])
        .await;
    assert_eq!(out.trim(), "secret/s1 created");
    let v = k
        .ok(&["get", "secret", "s1", "-n", "scratch", "-o", "jsonpath={.data.p}"])
        .await;
    assert_eq!(v, "cQ==");
    k.ok(&["create", "serviceaccount", "bot", "-n", "scratch"]).await;
    k.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "scratch",
        "--verb=get,list",
        "--resource=configmaps",
    ])
    .await;
    k.ok(&[
        "create",
        "rolebinding",
        "reader",
        "-n",
        "scratch",
        "--role=reader",
        "--serviceaccount=scratch:bot",
    ])
    .await;
    k.ok(&[
        "create",
        "clusterrole",
        "widget-reader",
        "--verb=get",
        "--resource=widgets.example.com",
    ])
    .await;
    k.ok(&[
        "create",
        "clusterrolebinding",
        "widget-reader",
        "--clusterrole=widget-reader",
        "--serviceaccount=scratch:bot",
    ])
    .await;
    let rules = k
        .ok(&[
            "get",
            "role",
            "reader",
            "-n",
            "scratch",
            "-o",
            "jsonpath={.rules[0].verbs} {.rules[0].resources}",
        ])
        .await;
    assert_eq!(rules, r#"["get","list"] ["configmaps"]"#);
    let subject = k
        .ok(&[
            "get",
            "clusterrolebinding",
            "widget-reader",
            "-o",
            "jsonpath={.subjects[0].name} {.roleRef.name}",
        ])
        .await;
    assert_eq!(subject, "bot widget-reader");
    k.ok(&["delete", "namespace", "scratch", "--timeout=20s"]).await;
    let o = k.run(&["get", "configmap", "c1", "-n", "scratch"], None).await;
    assert_ne!(o.code, 0, "namespace deletion removed its contents");
    // Deleting the CRD removes its objects and its routes.
    k.ok(&["apply", "-f", &w1]).await;
    k.ok(&["delete", "-f", &crd, "--timeout=20s"]).await;
    let o = k.run(&["get", "widgets.example.com"], None).await;
    assert_ne!(o.code, 0);
}

fn json_uid(obj: &serde_json::Value) -> Option<String> {
    obj["metadata"]["uid"].as_str().map(String::from)
}
