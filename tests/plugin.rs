//! End-to-end tests of the kubectl plugin (`kubectl-featureenv`) against the local
//! stack (tests/support/stack.rs: real kube-apiserver and etcd, moto behind the strict
//! layer, the boot simulator running the real bootstrap script, the real operator).
//! The plugin runs as an application engineer would: a ServiceAccount with what the
//! built-in `edit` role gives in its namespace once the chart's roles aggregate into
//! it, the chart's class reader and admission policy installed, with its own
//! kubeconfig and AWS credentials. Every command that needs no
//! real instance runs for real; `shell` is checked up to the `aws` command it starts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::moto::REGION;
use support::stack::{Stack, StackOptions};

const NS: &str = "team-a";
const ENGINEER: &str = "alice";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The full name the chart gets in the test stack (release `featureenv`).
const RELEASE_NAME_PREFIX: &str = "featureenv-featureenv-operator";

/// Runs the plugin with `kubeconfig` and the stack's AWS endpoint; `path` replaces
/// PATH when given (for `shell`).
async fn plugin(stack: &Stack, kubeconfig: &Path, args: &[&str], path: Option<&Path>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-featureenv"));
    command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ENDPOINT_URL", &stack.aws_endpoint)
        .env("AWS_REGION", REGION)
        // An engineer's own key, not the operators' (whose calls the strict layer
        // checks against the operator's IAM policy).
        .env("AWS_ACCESS_KEY_ID", "engineer")
        .env("AWS_SECRET_ACCESS_KEY", "engineer")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .kill_on_drop(true);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    tokio::time::timeout(Duration::from_secs(150), command.output())
        .await
        .expect("the plugin finished within 150 s")
        .expect("run kubectl-featureenv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The plugin's stdout; it must have succeeded.
async fn ok(stack: &Stack, kubeconfig: &Path, args: &[&str]) -> String {
    let out = plugin(stack, kubeconfig, args, None).await;
    assert!(
        out.status.success(),
        "kubectl featureenv {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The plugin's stderr; it must have failed.
async fn fails(stack: &Stack, kubeconfig: &Path, args: &[&str]) -> String {
    let out = plugin(stack, kubeconfig, args, None).await;
    assert!(
        !out.status.success(),
        "kubectl featureenv {args:?} succeeded:\n{}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// The chart's roles for people, the class reader and the admission policy, as a
/// release installs them.
async fn install_user_roles_and_policy(stack: &Stack) {
    stack.apply_chart("user-rbac", "ClusterRole,ClusterRoleBinding").await;
    stack
        .apply_chart(
            "admission",
            "ValidatingAdmissionPolicy,ValidatingAdmissionPolicyBinding",
        )
        .await;
}

/// A ServiceAccount in `namespace` with what the built-in `edit` role gives there
/// once the chart's `-edit` and `-view` roles are aggregated into it, and a
/// kubeconfig with its token (context namespace `namespace`). The test control plane
/// runs no controller-manager, so nothing aggregates: the engineer is bound to the
/// chart's roles directly, plus a Role for the one thing of the built-in `edit` the
/// plugin uses (reading the credentials Secret).
async fn engineer(stack: &Stack, namespace: &str, name: &str) -> PathBuf {
    stack.kubectl_ok(&["create", "namespace", namespace]).await;
    let ns = ["-n", namespace];
    stack
        .kubectl_ok(&[&ns[..], &["create", "serviceaccount", name]].concat())
        .await;
    let subject = format!("{namespace}:{name}");
    let chart_edit = format!("{RELEASE_NAME_PREFIX}-edit");
    let chart_view = format!("{RELEASE_NAME_PREFIX}-view");
    for (binding, role) in [("chart-edit", &chart_edit), ("chart-view", &chart_view)] {
        let bind = [
            "create",
            "rolebinding",
            binding,
            "--clusterrole",
            role,
            "--serviceaccount",
            &subject,
        ];
        stack.kubectl_ok(&[&ns[..], &bind].concat()).await;
    }
    let role = ["create", "role", "secrets-read", "--verb=get", "--resource=secrets"];
    stack.kubectl_ok(&[&ns[..], &role].concat()).await;
    let bind_role = [
        "create",
        "rolebinding",
        "secrets-read",
        "--role",
        "secrets-read",
        "--serviceaccount",
        &subject,
    ];
    stack.kubectl_ok(&[&ns[..], &bind_role].concat()).await;
    let path = stack.dir.join(format!("{name}.kubeconfig"));
    stack
        .control_plane
        .write_service_account_kubeconfig(namespace, name, &path)
        .await;
    let yaml = std::fs::read_to_string(&path).expect("kubeconfig");
    let mut config: serde_json::Value = serde_saphyr::from_str(&yaml).expect("kubeconfig YAML");
    config["contexts"][0]["context"]["namespace"] = serde_json::json!(namespace);
    std::fs::write(&path, serde_saphyr::to_string(&config).expect("kubeconfig YAML")).expect("kubeconfig");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugin_commands() {
    let stack = Stack::with_operator(StackOptions {
        cluster_id: "e2e-plugin".into(),
        ..StackOptions::default()
    })
    .await;
    install_user_roles_and_policy(&stack).await;
    let alice = engineer(&stack, NS, ENGINEER).await;
    let image = format!("payments={}/payments:pr-123", stack.var("ECR_REGISTRY"));

    // create: owner and label from who the API server says alice is.
    let out = ok(&stack, &alice, &["create", "pr-7", "--image", &image, "--ttl", "1h"]).await;
    assert_eq!(out.trim(), "featureenvironment.featureenv.io/pr-7 created");
    let env = stack.get_env(NS, "pr-7").await.expect("created");
    let me = format!("system:serviceaccount:{NS}:{ENGINEER}");
    assert_eq!(env.spec.owner.as_deref(), Some(me.as_str()));
    assert_eq!(env.spec.ttl.as_deref(), Some("1h"));
    let err = fails(&stack, &alice, &["create", "pr-7", "--image", &image]).await;
    assert!(err.contains("pr-7 already exists in namespace team-a"), "{err}");
    let err = fails(&stack, &alice, &["create", "pr-8", "--image", "payments"]).await;
    assert!(err.contains("--image") && err.contains("SERVICE=IMAGE"), "{err}");

    // wait: Ready, with the URL.
    let out = ok(&stack, &alice, &["wait", "pr-7", "--timeout", "120s"]).await;
    let env = stack.get_env(NS, "pr-7").await.unwrap();
    let status = env.status.clone().unwrap();
    let api_url = status.endpoints.get("api").cloned().expect("api endpoint");
    assert!(out.contains("pr-7 is Ready") && out.contains(&api_url), "{out}");

    // list: mine by default; someone else's is empty; everyone's in every namespace.
    let out = ok(&stack, &alice, &["list"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("PHASE") && lines[0].contains("EXPIRES"),
        "{out}"
    );
    assert!(
        lines.len() == 2 && lines[1].starts_with("pr-7") && lines[1].contains("Ready"),
        "{out}"
    );
    assert!(lines[1].contains(&api_url) && lines[1].contains("in 59m"), "{out}");
    let out = plugin(&stack, &alice, &["list", "--owner", "bob"], None).await;
    assert!(
        out.status.success() && text(&out.stdout).is_empty(),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("No resources found in team-a namespace."),
        "{}",
        text(&out.stderr)
    );

    // open: the URLs.
    let out = ok(&stack, &alice, &["open", "pr-7"]).await;
    assert!(out.starts_with("NAME") && out.contains(&api_url), "{out}");

    // creds: exactly the Secret's values, readable with `edit`.
    let out = ok(&stack, &alice, &["creds", "pr-7", "-o", "json"]).await;
    let creds: serde_json::Value = serde_json::from_str(&out).expect("creds JSON");
    let secret_name = status.database.clone().and_then(|d| d.secret_name).expect("secret");
    let secret = stack
        .kubectl_ok(&["-n", NS, "get", "secret", &secret_name, "-o", "json"])
        .await;
    let secret: serde_json::Value = serde_json::from_str(&secret).unwrap();
    for key in ["host", "port", "username", "password"] {
        use base64::Engine as _;
        let stored = base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().expect("key in Secret"))
            .unwrap();
        assert_eq!(creds[key].as_str().map(str::as_bytes), Some(stored.as_slice()), "{key}");
    }
    let out = ok(&stack, &alice, &["creds", "pr-7", "-o", "env"]).await;
    assert!(
        out.contains("export DB_HOST='") && out.contains("export DB_PASSWORD='"),
        "{out}"
    );

    // extend: 30 minutes more, the operator moves the expiry; past the maximum, refused.
    let before: jiff::Timestamp = status.expires_at.as_deref().unwrap().parse().unwrap();
    let out = ok(&stack, &alice, &["extend", "pr-7", "30m"]).await;
    assert!(out.contains("pr-7 extended") && out.contains("spec.ttl 1h30m"), "{out}");
    let wanted = before + jiff::SignedDuration::from_mins(30);
    stack
        .wait_for(
            "the operator records the new expiry",
            Duration::from_secs(30),
            || async {
                let env = stack.get_env(NS, "pr-7").await.unwrap();
                env.status
                    .and_then(|s| s.expires_at)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    == Some(wanted)
            },
        )
        .await;
    let err = fails(&stack, &alice, &["extend", "pr-7", "1000h"]).await;
    assert!(
        err.contains("spec.ttl") && err.contains("maximum") && err.contains("standard"),
        "{err}"
    );
    let err = fails(&stack, &alice, &["extend", "nope", "1h"]).await;
    assert!(
        err.contains("featureenvironment nope not found in namespace team-a"),
        "{err}"
    );

    // shell: the session `aws` is asked for; without `aws`, a clear error.
    let instance = status.instance.clone().and_then(|i| i.id).expect("instance id");
    let bin = stack.dir.join("fake-aws-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let argv = stack.dir.join("aws-argv");
    let script = format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n", argv.display());
    std::fs::write(bin.join("aws"), script).unwrap();
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(bin.join("aws"), executable).unwrap();
    let out = plugin(&stack, &alice, &["shell", "pr-7"], Some(&bin)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let args = std::fs::read_to_string(&argv).expect("aws was run");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["ssm", "start-session", "--target", instance.as_str()]
    );
    let empty = stack.dir.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = plugin(&stack, &alice, &["shell", "pr-7"], Some(&empty)).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Session Manager plugin"),
        "{}",
        text(&out.stderr)
    );

    // logs: the bootstrap's own lines from the instance's console.
    let out = ok(&stack, &alice, &["logs", "pr-7"]).await;
    assert!(
        out.lines().count() > 3 && out.lines().all(|l| l.contains("featureenv")),
        "{out}"
    );

    // sleep and wake: the operator stops and starts it; wait follows it back to Ready.
    let out = ok(&stack, &alice, &["sleep", "pr-7"]).await;
    assert!(out.contains("pr-7 goes to sleep"), "{out}");
    stack
        .wait_ready_reason(NS, "pr-7", "Asleep", Duration::from_secs(60))
        .await;
    let out = ok(&stack, &alice, &["list"]).await;
    assert!(out.lines().nth(1).is_some_and(|l| l.contains("Sleeping")), "{out}");
    let out = ok(&stack, &alice, &["wake", "pr-7"]).await;
    assert!(out.contains("pr-7 wakes up"), "{out}");
    let out = ok(&stack, &alice, &["wait", "pr-7", "--timeout", "120s"]).await;
    assert!(out.contains("pr-7 is Ready"), "{out}");

    // wait on an environment that cannot become Ready: it times out, saying why.
    let missing = ok(
        &stack,
        &alice,
        &["create", "pr-9", "--image", &image, "--class", "premium"],
    )
    .await;
    assert!(missing.contains("created"));
    let err = fails(&stack, &alice, &["wait", "pr-9", "--timeout", "5s"]).await;
    assert!(
        err.contains("timed out after 5s") && err.contains("ClassNotFound"),
        "{err}"
    );

    // The environment is gone after delete; the plugin says so.
    stack
        .kubectl_ok(&["-n", NS, "delete", "featureenvs", "pr-7", "pr-9", "--wait=false"])
        .await;
    stack.wait_gone(NS, "pr-7", READY_TIMEOUT).await;
    let err = fails(&stack, &alice, &["open", "pr-7"]).await;
    assert!(err.contains("not found"), "{err}");
}
