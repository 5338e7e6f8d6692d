//! End-to-end scenarios of the real `featureenv-operator` binary (issue 4): each test
//! builds its own local stack (tests/support/stack.rs: kube-emulator, moto seeded like
//! an account, boot simulator, optional fault proxy, operator subprocesses), drives it
//! with the real `kubectl` or kube-rs, and checks the outcome through the Kubernetes
//! API and the AWS SDK against moto. Tests are independent so nextest runs them in
//! parallel processes. Also the RBAC proof and the IAM call check of issue 5.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::stack::{Stack, StackOptions, TAG_CLUSTER};

const NS: &str = "default";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const GONE_TIMEOUT: Duration = Duration::from_secs(90);

fn tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect()
}

fn elapsed(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}

/// Scenario 1: apply the example → Ready with everything in status; the instance is
/// tagged, IMDSv2-only, its user data carries the override and no password; the pool
/// refills from the newest snapshot; delete removes instance, database, parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle() {
    let start = Instant::now();
    let stack = Stack::with_operator(StackOptions {
        cluster_id: "e2e-life".into(),
        ..StackOptions::default()
    })
    .await;
    // The pool fills its warm spare before anything claims it.
    stack
        .wait_for("pool integration warm=1", READY_TIMEOUT, || async {
            stack
                .pools()
                .get("integration")
                .await
                .ok()
                .and_then(|p| p.status)
                .is_some_and(|s| s.warm == 1)
        })
        .await;
    // hack/seed_aws.py makes a private subnet; moto then assigns no public IP. Make it
    // public here, as an account with internet-facing environments would have it.
    stack
        .ec2()
        .modify_subnet_attribute()
        .subnet_id(stack.var("SUBNET_ID"))
        .map_public_ip_on_launch(aws_sdk_ec2::types::AttributeBooleanValue::builder().value(true).build())
        .send()
        .await
        .expect("ModifySubnetAttribute");
    let manifest = stack.render(&["examples/featureenvironment.yaml"]);
    stack.apply_ok(&manifest).await;
    let out = stack
        .kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "featureenv/payments-pr-123",
            "--timeout=90s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");

    let env = stack.get_env(NS, "payments-pr-123").await.expect("env");
    let uid = env.metadata.uid.clone().expect("uid");
    let status = env.status.clone().expect("status");
    assert_eq!(status.phase.as_str(), "Ready");
    assert!(status.ready_at.is_some() && status.expires_at.is_some(), "{status:?}");
    let instance = status.instance.clone().expect("status.instance");
    let instance_id = instance.id.clone().expect("status.instance.id");
    assert_eq!(
        instance.ami_id.as_deref(),
        Some(stack.var("AMI_ID_NEWER").as_str()),
        "the newest tagged AMI, not the older one nor the newer untagged one"
    );
    let public_ip = instance.public_ip.clone().expect("status.instance.publicIp");
    assert_eq!(
        status.endpoints.get("api").map(String::as_str),
        Some(format!("http://{public_ip}/").as_str()),
        "endpoints: {:?}",
        status.endpoints
    );
    assert_eq!(status.endpoints.len(), 3, "{:?}", status.endpoints);
    let database = status.database.clone().expect("status.database");
    let db_id = database.id.clone().expect("status.database.id");
    assert!(database.endpoint.is_some(), "{database:?}");
    assert_eq!(database.snapshot.as_deref(), Some("integration-db-2026-11-27"));
    let secret_name = database.secret_name.clone().expect("secretName");
    let parameter = database.parameter_name.clone().expect("parameterName");
    let password_b64 = stack
        .kubectl_ok(&["get", "secret", &secret_name, "-o", "jsonpath={.data.password}"])
        .await;
    let password = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(password_b64.trim())
            .expect("secret password is base64"),
    )
    .expect("UTF-8 password");
    assert!(password.len() >= 16, "rotated password looks too short");

    // `kubectl get featureenvs` shows phase and URL.
    let table = stack.kubectl_ok(&["get", "featureenvs"]).await;
    assert!(
        table.contains("PHASE") && table.contains("Ready") && table.contains(&public_ip),
        "{table}"
    );

    // The instance as EC2 sees it.
    let out = stack
        .ec2()
        .describe_instances()
        .instance_ids(&instance_id)
        .send()
        .await
        .expect("DescribeInstances");
    let ec2_instance = out.reservations()[0].instances()[0].clone();
    let tags = tag_map(ec2_instance.tags());
    assert_eq!(tags.get(TAG_CLUSTER).map(String::as_str), Some("e2e-life"));
    assert_eq!(
        tags.get("featureenv.io/environment").map(String::as_str),
        Some("default/payments-pr-123")
    );
    assert_eq!(tags.get("featureenv.io/uid"), Some(&uid));
    assert_eq!(tags.get("team").map(String::as_str), Some("platform"), "class tags");
    assert_eq!(
        ec2_instance
            .metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required"),
        "IMDSv2 required"
    );
    let user_data = stack
        .ec2()
        .describe_instance_attribute()
        .instance_id(&instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("DescribeInstanceAttribute");
    let script = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(user_data.user_data().and_then(|u| u.value()).expect("user data"))
            .expect("base64 user data"),
    )
    .expect("UTF-8 user data");
    let pr_image = status
        .images
        .iter()
        .find(|i| i.name == "payments")
        .map(|i| i.image.clone())
        .expect("status.images has payments");
    assert!(pr_image.contains("payments"), "{pr_image}");
    assert!(script.contains(&pr_image), "user data lacks the override {pr_image}");
    assert!(!script.contains(&password), "user data must not carry the DB password");

    // The claimed database and the refilled pool.
    let dbs = stack.our_databases().await;
    let (claimed, claimed_tags) = dbs
        .iter()
        .find(|(db, _)| db.db_instance_identifier() == Some(db_id.as_str()))
        .expect("claimed DB exists");
    assert_eq!(claimed_tags.get("featureenv.io/claimed-by"), Some(&uid));
    assert_eq!(claimed.db_instance_status(), Some("available"));
    stack
        .wait_for("a new warm spare from the newest snapshot", READY_TIMEOUT, || async {
            let spares: Vec<_> = stack
                .our_databases()
                .await
                .into_iter()
                .filter(|(_, t)| !t.contains_key("featureenv.io/claimed-by"))
                .collect();
            spares.len() == 1
                && spares.iter().all(|(db, t)| {
                    t.get("featureenv.io/snapshot").map(String::as_str) == Some("integration-db-2026-11-27")
                        && db.db_instance_status() == Some("available")
                })
        })
        .await;
    let params = stack.our_parameters().await;
    assert!(params.contains(&parameter), "{params:?} lacks {parameter}");

    // Delete: everything goes, then the object.
    stack
        .kubectl_ok(&["delete", "featureenv", "payments-pr-123", "--wait=false"])
        .await;
    stack.wait_gone(NS, "payments-pr-123", GONE_TIMEOUT).await;
    let state = stack
        .instances_with_tag("featureenv.io/uid", &uid)
        .await
        .iter()
        .map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()))
        .collect::<Vec<_>>();
    assert!(
        state
            .iter()
            .all(|s| matches!(s.as_deref(), Some("terminated") | Some("shutting-down"))),
        "instance states after delete: {state:?}"
    );
    let dbs = stack.databases().await;
    assert!(
        dbs.iter()
            .all(|(db, _)| db.db_instance_identifier() != Some(db_id.as_str())
                || matches!(db.db_instance_status(), Some("deleting") | Some("deleted"))),
        "claimed database still there"
    );
    assert!(!stack.our_parameters().await.contains(&parameter), "SSM parameter left");
    println!("lifecycle: ok in {}", elapsed(start));
}
