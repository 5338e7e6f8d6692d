//! The cost of polling must not grow with the number of environments: one batched
//! DescribeInstances and one DescribeDBInstances per interval feed every reconcile.
//! Measured with the fake cloud's call log for 1 and for 100 environments.

use std::collections::BTreeMap;
use std::time::Duration;

use featureenv_operator::cloud::fake::FakeCloud;
use featureenv_operator::cloud::{Cloud, Compute, Databases, LaunchRequest, RestoreRequest, tag};
use featureenv_operator::inventory::Inventory;
use jiff::Timestamp;

const CLUSTER: &str = "c1";

async fn fake_with_environments(n: usize) -> FakeCloud {
    let fake = FakeCloud::new(1);
    fake.add_image("ami-00000000000000001", "minikube", "self", Timestamp::now(), &[]);
    fake.add_snapshot("snap", "integration-db", Timestamp::now());
    for i in 0..n {
        let uid = format!("uid-{i}");
        let tags = BTreeMap::from([
            (tag::CLUSTER.to_owned(), CLUSTER.to_owned()),
            (tag::UID.to_owned(), uid.clone()),
            (tag::ENVIRONMENT.to_owned(), format!("ns/env-{i}")),
        ]);
        fake.launch_instance(&LaunchRequest {
            client_token: uid.clone(),
            image_id: "ami-00000000000000001".into(),
            instance_type: "t3.large".into(),
            subnet_id: "subnet-1".into(),
            security_group_ids: vec![],
            instance_profile: None,
            root_volume_gib: 100,
            user_data: String::new(),
            tags: tags.clone(),
        })
        .await
        .unwrap();
        let mut db_tags = tags;
        db_tags.insert(tag::CLAIMED_BY.to_owned(), uid);
        fake.restore_database(&RestoreRequest {
            id: format!("fe-db-{i}"),
            snapshot_id: "snap".into(),
            instance_class: "db.t3.micro".into(),
            subnet_group: None,
            security_group_ids: vec![],
            tags: db_tags,
        })
        .await
        .unwrap();
    }
    fake
}

/// Runs the poll loop for `window` with everything still booting (no bootstrap
/// tag, so the fast interval applies) and returns the Describe calls it made.
async fn describes_during(n: usize, window: Duration) -> (u64, u64, usize) {
    let fake = fake_with_environments(n).await;
    let before_instances = fake.call_count("DescribeInstances");
    let before_databases = fake.call_count("DescribeDBInstances");
    let (inventory, triggers) = Inventory::new(Cloud::from(fake.clone()), CLUSTER);
    let poll = tokio::spawn(
        inventory
            .clone()
            .run(Duration::from_millis(100), Duration::from_secs(5), |_| {}),
    );
    tokio::time::sleep(window).await;
    poll.abort();
    let seen = inventory.read(|s| s.instances.len());
    drop(triggers);
    (
        fake.call_count("DescribeInstances") - before_instances,
        fake.call_count("DescribeDBInstances") - before_databases,
        seen,
    )
}

#[tokio::test]
async fn describe_calls_do_not_grow_with_environments() {
    let window = Duration::from_millis(1_050);
    let (one_i, one_d, one_seen) = describes_during(1, window).await;
    let (many_i, many_d, many_seen) = describes_during(100, window).await;
    println!("1 env: {one_i} DescribeInstances, {one_d} DescribeDBInstances; 100 envs: {many_i}, {many_d}");
    assert_eq!(one_seen, 1);
    assert_eq!(
        many_seen, 100,
        "every environment's instance is in the shared inventory"
    );
    // About ten fast intervals in the window, whatever the number of environments.
    assert!((5..=12).contains(&one_i), "{one_i}");
    assert!(many_i <= one_i + 1, "DescribeInstances grew from {one_i} to {many_i}");
    assert!(many_d <= one_d + 1, "DescribeDBInstances grew from {one_d} to {many_d}");
}

#[tokio::test]
async fn stable_state_polls_at_the_slow_interval() {
    let fake = fake_with_environments(3).await;
    for i in fake.live_instances() {
        fake.set_bootstrap_tag(&i.instance.id, tag::BOOTSTRAP_COMPLETE);
    }
    let before = fake.call_count("DescribeInstances");
    let (inventory, _triggers) = Inventory::new(Cloud::from(fake.clone()), CLUSTER);
    let poll = tokio::spawn(
        inventory
            .clone()
            .run(Duration::from_millis(50), Duration::from_secs(10), |_| {}),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    poll.abort();
    assert_eq!(
        fake.call_count("DescribeInstances") - before,
        1,
        "nothing in transition: one describe, then the slow interval"
    );
}

#[tokio::test]
async fn a_change_triggers_only_its_owner() {
    let fake = fake_with_environments(5).await;
    let (inventory, mut triggers) = Inventory::new(Cloud::from(fake.clone()), CLUSTER);
    inventory.refresh().await.unwrap();
    while triggers.environments.try_recv().is_ok() {}
    let target = fake
        .live_instances()
        .into_iter()
        .find(|i| i.instance.tags[tag::UID] == "uid-3")
        .unwrap();
    fake.set_bootstrap_tag(&target.instance.id, tag::BOOTSTRAP_COMPLETE);
    inventory.refresh().await.unwrap();
    let triggered = triggers.environments.try_recv().unwrap();
    assert_eq!(triggered.name, "env-3");
    assert_eq!(triggered.namespace.as_deref(), Some("ns"));
    assert!(
        triggers.environments.try_recv().is_err(),
        "only the changed environment is triggered"
    );
}
