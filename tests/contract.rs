//! The fake cloud and the AWS adapter agree: the same scenarios run against
//! `cloud::fake` and against the adapter talking to moto behind the strict AWS layer
//! (hack/fault_proxy.py, which plays RDS's states as AWS does), and must see the same
//! outcomes, errors included. An error the fake returns is then the error the adapter
//! maps, so the reconcile tests on the fake exercise the paths AWS takes.

mod support;

use std::sync::Arc;

use featureenv_operator::cloud::aws::AwsCloud;
use featureenv_operator::cloud::fake::FakeCloud;
use featureenv_operator::cloud::{
    CloudError, Commands, Compute, DatabaseStatus, Databases, LaunchRequest, Parameters, RestoreRequest, ScriptRequest,
    Tags, tag,
};
use support::moto::{MotoServer, StrictLayer};

/// The AWS adapter through the strict layer, as the operator builds it.
fn adapter(strict: &StrictLayer) -> AwsCloud {
    AwsCloud::new(
        &strict.config,
        Arc::new(support::moto::RecordingObserver::default()),
        std::time::Duration::from_secs(30),
        featureenv_operator::fence::Fence::open(),
    )
}

fn restore_request(id: &str, snapshot: &str) -> RestoreRequest {
    RestoreRequest {
        id: id.into(),
        snapshot_id: snapshot.into(),
        instance_class: "db.t3.micro".into(),
        subnet_group: None,
        security_group_ids: vec![],
        tags: Tags::from([
            (tag::CLUSTER.to_owned(), "c-contract".to_owned()),
            (tag::POOL.to_owned(), "integration".to_owned()),
            (tag::SNAPSHOT.to_owned(), snapshot.to_owned()),
        ]),
    }
}

/// A database that is being restored refuses a password change, and one that is
/// being deleted refuses a second delete; both with `InvalidState` (RDS's
/// InvalidDBInstanceState), which callers retry or read as "already on its way".
async fn states_refuse_what_rds_refuses(cloud: &dyn Databases, snapshot: &str, backend: &str) {
    let restored = cloud
        .restore_database(&restore_request("fe-contract-0", snapshot))
        .await
        .unwrap_or_else(|e| panic!("{backend}: restore: {e}"));
    assert_eq!(restored.id, "fe-contract-0", "{backend}");
    let creating = cloud.get_database("fe-contract-0").await.unwrap().expect("restored");
    assert_eq!(
        creating.status,
        DatabaseStatus::Creating,
        "{backend}: a restore starts creating"
    );
    match cloud.set_master_password("fe-contract-0", "Fresh-password-1").await {
        Err(CloudError::InvalidState { .. }) => {}
        other => panic!("{backend}: password change while creating: {other:?}"),
    }

    cloud
        .delete_database("fe-contract-0")
        .await
        .unwrap_or_else(|e| panic!("{backend}: first delete: {e}"));
    match cloud.delete_database("fe-contract-0").await {
        Err(CloudError::InvalidState { .. }) => {}
        other => panic!("{backend}: second delete while deleting: {other:?}"),
    }
    match cloud.delete_database("fe-never-existed").await {
        Err(e) if e.is_not_found() => {}
        other => panic!("{backend}: delete of an unknown database: {other:?}"),
    }
}

#[tokio::test]
async fn fake_states_refuse_what_rds_refuses() {
    let fake = FakeCloud::new(1);
    fake.add_snapshot("snap-1", "integration-db", "2026-11-28T03:00:00Z".parse().unwrap());
    // As RDS: a restore is `creating` for a while, a delete `deleting`.
    fake.set_slow_transitions(true);
    states_refuse_what_rds_refuses(&fake, "snap-1", "fake").await;
}

#[tokio::test]
async fn aws_adapter_states_refuse_what_rds_refuses() {
    let moto = MotoServer::start().await;
    moto.create_source_database("integration-db").await;
    moto.create_snapshot("integration-db", "snap-1").await;
    let strict = StrictLayer::start(&moto).await;
    let cloud = adapter(&strict);
    states_refuse_what_rds_refuses(&cloud, "snap-1", "moto behind the strict layer").await;
}

/// What the scenario below needs of a backend: launching, commands, parameters.
trait Backend: Compute + Commands + Parameters {}
impl<T: Compute + Commands + Parameters> Backend for T {}

fn launch(image_id: &str, subnet_id: &str, security_group_id: &str) -> LaunchRequest {
    LaunchRequest {
        client_token: "contract-token-1".into(),
        image_id: image_id.into(),
        instance_type: "t3.xlarge".into(),
        subnet_id: subnet_id.into(),
        security_group_ids: vec![security_group_id.into()],
        instance_profile: None,
        root_volume_gib: 30,
        user_data: "#!/bin/bash\necho contract\n".into(),
        tags: Tags::from([
            (tag::CLUSTER.to_owned(), "c-contract".to_owned()),
            (tag::UID.to_owned(), "uid-contract".to_owned()),
        ]),
    }
}

fn script(instance_id: &str) -> ScriptRequest {
    ScriptRequest {
        instance_id: instance_id.into(),
        script: "#!/bin/bash\necho update\n".into(),
        comment: "featureenv: contract".into(),
        timeout_seconds: 600,
    }
}

/// A running (or pending) instance takes a command; a terminated one refuses it with
/// `InvalidState` (SSM's InvalidInstanceId), which the update path retries. A second
/// terminate succeeds as EC2's does; an unknown instance or parameter is `NotFound`.
async fn instances_take_commands_until_terminated(cloud: &dyn Backend, launch: LaunchRequest, backend: &str) {
    let instance = cloud
        .launch_instance(&launch)
        .await
        .unwrap_or_else(|e| panic!("{backend}: launch: {e}"));
    let command = cloud
        .run_script(&script(&instance.id))
        .await
        .unwrap_or_else(|e| panic!("{backend}: command to a live instance: {e}"));
    assert!(!command.is_empty(), "{backend}: a command id");
    cloud
        .terminate_instance(&instance.id)
        .await
        .unwrap_or_else(|e| panic!("{backend}: terminate: {e}"));
    cloud
        .terminate_instance(&instance.id)
        .await
        .unwrap_or_else(|e| panic!("{backend}: terminating a terminated instance: {e}"));
    match cloud.run_script(&script(&instance.id)).await {
        Err(CloudError::InvalidState { .. }) => {}
        other => panic!("{backend}: command to a terminated instance: {other:?}"),
    }
    match cloud.terminate_instance("i-0123456789abcdef0").await {
        Err(e) if e.is_not_found() => {}
        other => panic!("{backend}: terminate of an unknown instance: {other:?}"),
    }
    match cloud.delete_parameter("/featureenv/c-contract/none/database").await {
        Err(e) if e.is_not_found() => {}
        other => panic!("{backend}: delete of an unknown parameter: {other:?}"),
    }
}

#[tokio::test]
async fn fake_instances_take_commands_until_terminated() {
    let fake = FakeCloud::new(2);
    fake.add_image(
        "ami-00000000000000001",
        "minikube",
        "self",
        "2026-11-28T00:00:00Z".parse().unwrap(),
        &[],
    );
    let request = launch("ami-00000000000000001", "subnet-1", "sg-1");
    instances_take_commands_until_terminated(&fake, request, "fake").await;
}

#[tokio::test]
async fn aws_adapter_instances_take_commands_until_terminated() {
    let moto = MotoServer::start().await;
    let network = moto.create_network().await;
    let image_id = moto.register_image("minikube-contract", &[]).await;
    let strict = StrictLayer::start(&moto).await;
    let cloud = adapter(&strict);
    let request = launch(&image_id, &network.subnet_id, &network.security_group_id);
    instances_take_commands_until_terminated(&cloud, request, "moto behind the strict layer").await;
}
