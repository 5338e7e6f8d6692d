//! The AWS adapter (`cloud::aws`) against a real moto server: what it sends to EC2,
//! RDS, SSM and ECR, read back with the SDK. Each test starts its own moto.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{HttpTokensState, InstanceAttributeName, InstanceMetadataEndpointState};
use base64::Engine as _;
use featureenv_operator::bootstrap::{BootstrapSpec, ServiceImage, render_user_data};
use featureenv_operator::cloud::aws::{AwsCloud, PageSizes};
use featureenv_operator::cloud::{
    CloudError, Compute, DatabaseStatus, Databases, Image, ImageSelectorTerm, InstanceState, LaunchRequest, Parameters,
    Registry, RestoreRequest, Tags, tag,
};
use featureenv_operator::fence::Fence;
use support::moto::{ACCOUNT, MotoServer, REGION, RecordingObserver};

fn adapter(moto: &MotoServer) -> (AwsCloud, Arc<RecordingObserver>) {
    let observer = Arc::new(RecordingObserver::default());
    (
        AwsCloud::new(
            moto.sdk_config(),
            observer.clone(),
            Duration::from_secs(30),
            Fence::open(),
        ),
        observer,
    )
}

/// The adapter with small page sizes, so a few resources span several pages.
fn adapter_paging(moto: &MotoServer, pages: PageSizes) -> (AwsCloud, Arc<RecordingObserver>) {
    let (cloud, observer) = adapter(moto);
    (cloud.with_page_sizes(pages), observer)
}

/// The newest image the terms select (the adapter's answer, unwrapped).
async fn newest(cloud: &AwsCloud, terms: &[ImageSelectorTerm]) -> Option<Image> {
    cloud.resolve_image(terms).await.unwrap()
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn launch_request(image_id: &str, subnet_id: &str, sg: &str, tags: Tags) -> LaunchRequest {
    LaunchRequest {
        client_token: format!("token-{}", tags.get(tag::UID).map_or("x", String::as_str)),
        image_id: image_id.to_owned(),
        instance_type: "t3.xlarge".to_owned(),
        subnet_id: subnet_id.to_owned(),
        security_group_ids: vec![sg.to_owned()],
        instance_profile: None,
        root_volume_gib: 100,
        user_data: "#!/bin/bash\necho test\n".to_owned(),
        tags,
    }
}

fn instance_tags(cluster: &str, uid: &str) -> Tags {
    tags(&[
        (tag::CLUSTER, cluster),
        (tag::ENVIRONMENT, "team/env"),
        (tag::UID, uid),
        ("team", "platform"),
    ])
}

#[tokio::test]
async fn resolves_the_newest_image_of_tagged_candidates() {
    let moto = MotoServer::start().await;
    let (cloud, observer) = adapter(&moto);
    let pipeline: &[(&str, &str)] = &[("featureenv.io/pipeline", "minikube-service")];
    let ids = moto
        .register_images_in_order(&[
            ("minikube-a", pipeline),
            ("minikube-b", pipeline),
            ("minikube-c", pipeline),
            // Newest of all, but not from the pipeline: must not win.
            ("unrelated", &[("featureenv.io/pipeline", "other")]),
        ])
        .await;

    let term = ImageSelectorTerm {
        tags: tags(pipeline),
        ..Default::default()
    };
    let image = newest(&cloud, &[term]).await.expect("an image matches");
    assert_eq!(image.id, ids[2]);
    assert_eq!(image.name, "minikube-c");

    // `*` matches any value of the tag: now the newest of all four wins.
    let any = ImageSelectorTerm {
        tags: tags(&[("featureenv.io/pipeline", "*")]),
        ..Default::default()
    };
    assert_eq!(newest(&cloud, &[any]).await.unwrap().id, ids[3]);

    let none = ImageSelectorTerm {
        tags: tags(&[("featureenv.io/pipeline", "nope")]),
        ..Default::default()
    };
    assert_eq!(newest(&cloud, &[none]).await, None);
    assert!(observer.count("DescribeImages", "ok") >= 3);
}

#[tokio::test]
async fn resolves_images_by_name_id_and_ssm_parameter_as_a_union() {
    let moto = MotoServer::start().await;
    let (cloud, _) = adapter(&moto);
    let ids = moto
        .register_images_in_order(&[
            ("minikube-service-1", &[]),
            ("minikube-service-2", &[]),
            ("pinned-3", &[]),
        ])
        .await;
    moto.put_string_parameter("/featureenv/ami/latest", &ids[0]).await;

    let by_name = ImageSelectorTerm {
        name: Some("minikube-service-*".into()),
        owner: Some("self".into()),
        ..Default::default()
    };
    assert_eq!(newest(&cloud, std::slice::from_ref(&by_name)).await.unwrap().id, ids[1]);

    let by_id = ImageSelectorTerm {
        id: Some(ids[2].clone()),
        ..Default::default()
    };
    assert_eq!(newest(&cloud, std::slice::from_ref(&by_id)).await.unwrap().id, ids[2]);

    let by_parameter = ImageSelectorTerm {
        ssm_parameter: Some("/featureenv/ami/latest".into()),
        ..Default::default()
    };
    let image = newest(&cloud, std::slice::from_ref(&by_parameter)).await.unwrap();
    assert_eq!(image.id, ids[0]);
    assert_eq!(image.name, "minikube-service-1");

    // A union: the newest image over all terms.
    let image = newest(&cloud, &[by_parameter.clone(), by_name.clone(), by_id])
        .await
        .unwrap();
    assert_eq!(image.id, ids[2]);
    let image = newest(&cloud, &[by_parameter, by_name]).await.unwrap();
    assert_eq!(image.id, ids[1]);

    // Terms naming things that do not exist match nothing; they are not errors.
    let missing_id = ImageSelectorTerm {
        id: Some("ami-0123456789abcdef0".into()),
        ..Default::default()
    };
    let missing_parameter = ImageSelectorTerm {
        ssm_parameter: Some("/featureenv/ami/none".into()),
        ..Default::default()
    };
    assert_eq!(newest(&cloud, &[missing_id, missing_parameter]).await, None);

    // An empty term would select every public image in the region.
    let err = cloud.resolve_image(&[ImageSelectorTerm::default()]).await.unwrap_err();
    assert!(matches!(err, CloudError::InvalidRequest { .. }), "{err}");
}

#[tokio::test]
async fn launch_requires_imdsv2_tags_instance_and_volume_and_sends_no_password() {
    let moto = MotoServer::start().await;
    let (cloud, observer) = adapter(&moto);
    let network = moto.create_network().await;
    let image_id = moto.register_image("minikube-service-1", &[]).await;
    moto.create_instance_profile("featureenv-node");

    let password = "rotated-Secret-8f3k2x";
    let parameter = "/featureenv/test-cluster/team/env/database";
    let user_data = render_user_data(&BootstrapSpec {
        environment: "team/env".into(),
        region: REGION.into(),
        services: vec![ServiceImage {
            name: "payments".into(),
            image: format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/payments:pr-123"),
        }],
        addons: vec!["ingress".into()],
        database_parameter: Some(parameter.into()),
        database_wait_seconds: 1200,
    });
    let request = LaunchRequest {
        instance_profile: Some("featureenv-node".into()),
        user_data: user_data.clone(),
        ..launch_request(
            &image_id,
            &network.subnet_id,
            &network.security_group_id,
            instance_tags("c-launch", "uid-1"),
        )
    };
    moto.start_recording();
    let launched = cloud.launch_instance(&request).await.unwrap();
    assert_eq!(launched.image_id, image_id);
    // The ARN IAM's ec2:SourceInstanceARN shows for this instance's own requests.
    assert_eq!(
        launched.arn,
        format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{}", launched.id)
    );
    assert_eq!(launched.instance_type, "t3.xlarge");
    assert!(!launched.state.is_gone());
    assert_eq!(launched.tags.get(tag::UID).map(String::as_str), Some("uid-1"));
    assert_eq!(observer.count("RunInstances", "ok"), 1);

    // What was sent, including what moto accepts but does not model (ClientToken).
    let sent = moto.recorded_form_requests("RunInstances");
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];
    let param = |key: &str| sent.get(key).map(String::as_str);
    assert_eq!(param("ClientToken"), Some("token-uid-1"));
    assert_eq!(param("MetadataOptions.HttpTokens"), Some("required"));
    assert_eq!(param("MetadataOptions.HttpEndpoint"), Some("enabled"));
    assert_eq!(param("IamInstanceProfile.Name"), Some("featureenv-node"));
    assert_eq!(param("BlockDeviceMapping.1.Ebs.VolumeType"), Some("gp3"));
    assert_eq!(param("BlockDeviceMapping.1.Ebs.VolumeSize"), Some("100"));
    assert_eq!(param("TagSpecification.1.ResourceType"), Some("instance"));
    assert_eq!(param("TagSpecification.2.ResourceType"), Some("volume"));
    // RunInstances creates the primary network interface too; the IAM policy requires
    // our cluster tag on it, so it must be tagged in the same request.
    assert_eq!(param("TagSpecification.3.ResourceType"), Some("network-interface"));
    assert_eq!(
        param("TagSpecification.3.Tag.1.Key"),
        param("TagSpecification.1.Tag.1.Key")
    );
    // With instance tags in metadata on, EC2 rejects every tag key with a `/` (all of
    // ours); an account-level default could turn it on, so it is disabled explicitly.
    assert_eq!(param("MetadataOptions.InstanceMetadataTags"), Some("disabled"));
    // One hop: containers inside Minikube cannot reach the instance's role credentials.
    assert_eq!(param("MetadataOptions.HttpPutResponseHopLimit"), Some("1"));
    assert!(!sent.values().any(|v| v.contains(password)));

    // Read back what EC2 recorded, with the SDK directly.
    let ec2 = moto.ec2();
    let described = ec2
        .describe_instances()
        .instance_ids(&launched.id)
        .send()
        .await
        .unwrap();
    let instance = &described.reservations()[0].instances()[0];
    let metadata = instance.metadata_options().expect("metadata options");
    assert_eq!(metadata.http_tokens(), Some(&HttpTokensState::Required));
    assert_eq!(metadata.http_endpoint(), Some(&InstanceMetadataEndpointState::Enabled));
    let recorded: Tags = instance
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    assert_eq!(recorded, request.tags);
    assert!(
        instance
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .unwrap()
            .ends_with("/featureenv-node"),
        "{:?}",
        instance.iam_instance_profile()
    );
    assert_eq!(instance.subnet_id(), Some(network.subnet_id.as_str()));
    assert_eq!(
        instance.security_groups()[0].group_id(),
        Some(network.security_group_id.as_str())
    );

    // The root volume (the AMI's root device) is 100 GiB gp3 and carries our tags.
    let root_device = instance.root_device_name().unwrap().to_owned();
    let volumes = moto.volumes_of(&launched.id).await;
    let root = volumes
        .iter()
        .find(|v| v.attachments().iter().any(|a| a.device() == Some(root_device.as_str())))
        .expect("a volume on the root device");
    assert_eq!(root.size(), Some(100));
    assert_eq!(root.volume_type().map(|t| t.as_str()), Some("gp3"));
    let volume_tags: BTreeMap<_, _> = root
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(volume_tags.get(tag::CLUSTER), Some(&"c-launch"));
    assert_eq!(volume_tags.get(tag::UID), Some(&"uid-1"));

    // User data arrives base64-encoded, byte for byte, with the parameter name and
    // without the password.
    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(&launched.id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attribute.user_data().and_then(|u| u.value()).expect("user data");
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
    assert_eq!(decoded, user_data);
    assert!(decoded.contains(parameter));
    assert!(!decoded.contains(password));
}

#[tokio::test]
async fn launch_with_a_missing_subnet_is_an_invalid_request() {
    let moto = MotoServer::start().await;
    let (cloud, observer) = adapter(&moto);
    let network = moto.create_network().await;
    let image_id = moto.register_image("minikube-service-1", &[]).await;
    let request = launch_request(
        &image_id,
        "subnet-0deadbeef0000000",
        &network.security_group_id,
        instance_tags("c", "u"),
    );
    let err = cloud.launch_instance(&request).await.unwrap_err();
    assert!(matches!(err, CloudError::InvalidRequest { .. }), "{err}");
    assert!(err.to_string().contains("InvalidSubnetID.NotFound"), "{err}");
    assert_eq!(observer.count("RunInstances", "InvalidRequest"), 1);

    let err = cloud
        .launch_instance(&launch_request(
            "ami-0123456789abcdef0",
            "subnet-x",
            "sg-x",
            Tags::new(),
        ))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "the image lookup before RunInstances: {err}");
}

#[tokio::test]
async fn list_instances_pages_through_ours_only() {
    let moto = MotoServer::start().await;
    // DescribeInstances' smallest page is 5: seven instances take two pages.
    let (cloud, observer) = adapter_paging(
        &moto,
        PageSizes {
            ec2: 5,
            rds: 20,
            ssm: 10,
        },
    );
    let network = moto.create_network().await;
    let image_id = moto.register_image("minikube-service-1", &[]).await;

    let mut ours = Vec::new();
    for i in 0..7 {
        let uid = format!("uid-{i}");
        let request = launch_request(
            &image_id,
            &network.subnet_id,
            &network.security_group_id,
            instance_tags("c-list", &uid),
        );
        ours.push(cloud.launch_instance(&request).await.unwrap().id);
    }
    let other_cluster = launch_request(
        &image_id,
        &network.subnet_id,
        &network.security_group_id,
        instance_tags("c-other", "uid-x"),
    );
    let other = cloud.launch_instance(&other_cluster).await.unwrap().id;
    let foreign = moto
        .run_foreign_instance(&image_id, &network.subnet_id, &[("Name", "someone-else")])
        .await;

    observer.clear();
    let mut listed: Vec<String> = cloud
        .list_instances("c-list")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    listed.sort();
    ours.sort();
    assert_eq!(listed, ours);
    assert!(!listed.contains(&other) && !listed.contains(&foreign));
    assert_eq!(observer.count("DescribeInstances", "ok"), 2, "{:?}", observer.calls());

    let found = cloud.find_instances(tag::UID, "uid-3").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].tags.get(tag::UID).map(String::as_str), Some("uid-3"));
    assert!(cloud.find_instances(tag::UID, "uid-none").await.unwrap().is_empty());
}

#[tokio::test]
async fn terminate_console_output_and_not_found() {
    let moto = MotoServer::start().await;
    let (cloud, observer) = adapter(&moto);
    let network = moto.create_network().await;
    let image_id = moto.register_image("minikube-service-1", &[]).await;
    let request = launch_request(
        &image_id,
        &network.subnet_id,
        &network.security_group_id,
        instance_tags("c-term", "uid-t"),
    );
    let instance = cloud.launch_instance(&request).await.unwrap();

    let listed = cloud.list_instances("c-term").await.unwrap();
    assert_eq!(listed.len(), 1);
    // moto moves instances to running on the first describe.
    assert_eq!(listed[0].state, InstanceState::Running);
    assert!(listed[0].private_ip.is_some());
    assert!(listed[0].launched_at.is_some());

    let console = cloud.console_output(&instance.id).await.unwrap();
    assert!(console.is_some_and(|text| !text.is_empty()));

    cloud.terminate_instance(&instance.id).await.unwrap();
    let after = cloud.list_instances("c-term").await.unwrap();
    assert!(after.iter().all(|i| i.state.is_gone()), "{after:?}");

    let err = cloud.terminate_instance("i-0123456789abcdef0").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.operation(), "TerminateInstances");
    assert_eq!(observer.count("TerminateInstances", "NotFound"), 1);
}

#[tokio::test]
async fn pool_database_lifecycle_restore_claim_rotate_delete() {
    let moto = MotoServer::start().await;
    let (cloud, observer) = adapter(&moto);
    let network = moto.create_network().await;
    moto.create_db_subnet_group("featureenv", std::slice::from_ref(&network.subnet_id))
        .await;
    moto.create_source_database("integration-db").await;
    for snapshot in ["integration-db-1", "integration-db-2", "integration-db-3"] {
        moto.create_snapshot("integration-db", snapshot).await;
    }
    moto.create_source_database("other-db").await;
    moto.create_snapshot("other-db", "other-db-newest").await;

    let latest = cloud
        .latest_snapshot("integration-db")
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(latest.id, "integration-db-3");
    assert_eq!(latest.source_db, "integration-db");
    assert_eq!(cloud.latest_snapshot("no-such-db").await.unwrap(), None);
    assert_eq!(
        cloud.snapshot("integration-db-2").await.unwrap().unwrap().id,
        "integration-db-2"
    );
    assert_eq!(cloud.snapshot("no-such-snapshot").await.unwrap(), None);

    let pool_tags = tags(&[
        (tag::CLUSTER, "c-db"),
        (tag::POOL, "integration"),
        (tag::SNAPSHOT, &latest.id),
    ]);
    let request = RestoreRequest {
        id: "fe-integration-0".into(),
        snapshot_id: latest.id.clone(),
        instance_class: "db.t3.micro".into(),
        subnet_group: Some("featureenv".into()),
        security_group_ids: vec![network.security_group_id.clone()],
        tags: pool_tags.clone(),
    };
    moto.start_recording();
    let restored = cloud.restore_database(&request).await.unwrap();
    assert_eq!(restored.id, "fe-integration-0");
    assert!(restored.arn.ends_with(":db:fe-integration-0"), "{}", restored.arn);
    assert_eq!(restored.tags, pool_tags);

    let described = moto
        .rds()
        .describe_db_instances()
        .db_instance_identifier("fe-integration-0")
        .send()
        .await
        .unwrap();
    let db = &described.db_instances()[0];
    assert_eq!(db.db_instance_class(), Some("db.t3.micro"));
    assert_eq!(
        db.db_subnet_group().and_then(|g| g.db_subnet_group_name()),
        Some("featureenv")
    );
    assert_eq!(
        db.vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id())
            .collect::<Vec<_>>(),
        vec![network.security_group_id.as_str()]
    );

    // moto does not model PubliclyAccessible on restores; check what we sent.
    let sent = &moto.recorded_form_requests("RestoreDBInstanceFromDBSnapshot")[0];
    assert_eq!(sent.get("PubliclyAccessible").map(String::as_str), Some("false"));
    assert_eq!(sent.get("DBSubnetGroupName").map(String::as_str), Some("featureenv"));
    assert_eq!(sent.get("Tags.Tag.1.Key").map(String::as_str), Some(tag::CLUSTER));

    // A retried restore with the same deterministic id is AlreadyExists, to adopt.
    let err = cloud.restore_database(&request).await.unwrap_err();
    assert!(matches!(err, CloudError::AlreadyExists { .. }), "{err}");

    // Only databases carrying our cluster tag are listed (not the sources).
    let listed = cloud.list_databases("c-db").await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec!["fe-integration-0"]
    );
    assert_eq!(listed[0].status, DatabaseStatus::Available);
    assert!(listed[0].endpoint.is_some() && listed[0].port.is_some());
    assert!(cloud.list_databases("c-nobody").await.unwrap().is_empty());

    // Claim: tag, then verify by reading back.
    cloud
        .tag_database(&restored.arn, &tags(&[(tag::CLAIMED_BY, "uid-claim")]))
        .await
        .unwrap();
    let claimed = cloud.get_database("fe-integration-0").await.unwrap().unwrap();
    assert_eq!(claimed.tags.get(tag::CLAIMED_BY).map(String::as_str), Some("uid-claim"));
    assert_eq!(claimed.tags.get(tag::POOL).map(String::as_str), Some("integration"));

    cloud
        .set_master_password("fe-integration-0", "rotated-Secret-8f3k2x")
        .await
        .unwrap();
    assert_eq!(observer.count("ModifyDBInstance", "ok"), 1);
    let sent = &moto.recorded_form_requests("ModifyDBInstance")[0];
    assert_eq!(sent.get("ApplyImmediately").map(String::as_str), Some("true"));
    assert_eq!(
        sent.get("MasterUserPassword").map(String::as_str),
        Some("rotated-Secret-8f3k2x")
    );
    let err = cloud
        .set_master_password("fe-missing", "x-Secret-123456")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    cloud.delete_database("fe-integration-0").await.unwrap();
    assert_eq!(cloud.get_database("fe-integration-0").await.unwrap(), None);
    let err = cloud.delete_database("fe-integration-0").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(observer.count("DeleteDBInstance", "NotFound"), 1);
    let sent = &moto.recorded_form_requests("DeleteDBInstance")[0];
    assert_eq!(sent.get("SkipFinalSnapshot").map(String::as_str), Some("true"));
    assert_eq!(sent.get("DeleteAutomatedBackups").map(String::as_str), Some("true"));
}

#[tokio::test]
async fn ssm_secure_parameters_put_overwrite_list_delete() {
    let moto = MotoServer::start().await;
    let (cloud, observer) = adapter_paging(
        &moto,
        PageSizes {
            ec2: 5,
            rds: 20,
            ssm: 2,
        },
    );
    let ssm = moto.ssm();
    let owner = tags(&[(tag::CLUSTER, "c-ssm"), (tag::ENVIRONMENT, "team/env")]);
    let name = "/featureenv/c-ssm/team/env/database";

    moto.start_recording();
    cloud
        .put_secret_parameter(name, "postgres://first", &owner)
        .await
        .unwrap();
    // Put again (a retried claim with a new password): overwrites, keeps tags.
    cloud
        .put_secret_parameter(name, "postgres://second", &owner)
        .await
        .unwrap();
    let parameter = ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    let parameter = parameter.parameter().unwrap();
    assert_eq!(parameter.value(), Some("postgres://second"));
    assert_eq!(parameter.r#type().map(|t| t.as_str()), Some("SecureString"));
    let listed_tags = ssm
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(name)
        .send()
        .await
        .unwrap();
    let listed_tags: Tags = listed_tags
        .tag_list()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    assert_eq!(listed_tags, owner);
    // Real SSM refuses Tags with Overwrite=true (moto too): create with tags, then
    // overwrite without them and re-tag.
    let puts = moto.recorded_json_requests("PutParameter");
    assert_eq!(puts.len(), 3, "{puts:?}");
    assert_eq!(puts[0]["Overwrite"], false);
    assert_eq!(puts[0]["Type"], "SecureString");
    assert!(puts[0]["Tags"].is_array());
    assert_eq!(puts[1]["Overwrite"], false, "second put tries to create first");
    assert_eq!(puts[2]["Overwrite"], true);
    assert!(puts[2].get("Tags").is_none());
    assert_eq!(observer.count("PutParameter", "AlreadyExists"), 1);
    assert_eq!(observer.count("AddTagsToResource", "ok"), 1);

    // Binding the parameter to the one instance that may read it adds a tag.
    let arn = format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0");
    cloud
        .tag_parameter(name, &Tags::from([(tag::INSTANCE.to_owned(), arn.clone())]))
        .await
        .unwrap();
    let listed_tags = ssm
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(name)
        .send()
        .await
        .unwrap();
    assert!(
        listed_tags
            .tag_list()
            .iter()
            .any(|t| t.key() == tag::INSTANCE && t.value() == arn),
        "{listed_tags:?}"
    );

    cloud
        .put_secret_parameter("/featureenv/c-ssm/team/other/database", "v", &owner)
        .await
        .unwrap();
    cloud
        .put_secret_parameter("/featureenv/c-ssm/x/y/database", "v", &owner)
        .await
        .unwrap();
    cloud
        .put_secret_parameter("/featureenv/c-elsewhere/a/b/database", "v", &owner)
        .await
        .unwrap();
    observer.clear();
    let mut names = cloud.list_parameters("/featureenv/c-ssm").await.unwrap();
    names.sort();
    assert_eq!(
        names,
        vec![
            "/featureenv/c-ssm/team/env/database",
            "/featureenv/c-ssm/team/other/database",
            "/featureenv/c-ssm/x/y/database",
        ]
    );
    assert_eq!(
        observer.count("GetParametersByPath", "ok"),
        2,
        "three names at two per page"
    );

    cloud.delete_parameter(name).await.unwrap();
    let err = cloud.delete_parameter(name).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        !cloud
            .list_parameters("/featureenv/c-ssm")
            .await
            .unwrap()
            .contains(&name.to_owned())
    );
}

#[tokio::test]
async fn ecr_tags_resolve_to_digests() {
    let moto = MotoServer::start().await;
    let (cloud, observer) = adapter(&moto);
    let uri = moto.create_repository("payments").await;
    assert_eq!(uri, format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/payments"));
    let latest = moto
        .put_image("payments", "latest", &format!("sha256:{}", "a".repeat(64)))
        .await;
    let pr = moto
        .put_image("payments", "pr-123", &format!("sha256:{}", "b".repeat(64)))
        .await;
    assert_ne!(latest, pr);

    assert_eq!(cloud.resolve_digest(&uri, "latest").await.unwrap(), Some(latest));
    assert_eq!(cloud.resolve_digest(&uri, "pr-123").await.unwrap(), Some(pr));

    let err = cloud.resolve_digest(&uri, "no-such-tag").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let missing_repo = format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/no-such-repo");
    let err = cloud.resolve_digest(&missing_repo, "latest").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Other registries are not asked at all.
    observer.clear();
    assert_eq!(
        cloud.resolve_digest("docker.io/library/nginx", "1.27").await.unwrap(),
        None
    );
    assert!(observer.calls().is_empty());
}

#[tokio::test]
async fn rds_listings_follow_markers_across_pages() {
    let moto = MotoServer::start().await;
    // Two per page is below RDS's real minimum of 20; moto accepts it, which lets a
    // handful of databases span several pages.
    let (cloud, observer) = adapter_paging(
        &moto,
        PageSizes {
            ec2: 5,
            rds: 2,
            ssm: 10,
        },
    );
    moto.create_source_database("integration-db").await;
    for snapshot in ["integration-db-1", "integration-db-2", "integration-db-3"] {
        moto.create_snapshot("integration-db", snapshot).await;
    }
    for i in 0..4 {
        let request = RestoreRequest {
            id: format!("fe-page-{i}"),
            snapshot_id: "integration-db-1".into(),
            instance_class: "db.t3.micro".into(),
            subnet_group: None,
            security_group_ids: vec![],
            tags: tags(&[(tag::CLUSTER, "c-page"), (tag::POOL, "integration")]),
        };
        cloud.restore_database(&request).await.unwrap();
    }

    observer.clear();
    let latest = cloud.latest_snapshot("integration-db").await.unwrap().unwrap();
    assert_eq!(latest.id, "integration-db-3");
    // moto 5 ignores MaxRecords on DescribeDBSnapshots (one page, no Marker), so only
    // DescribeDBInstances below really exercises the Marker loop; the snapshot
    // listing uses the same SDK paginator.

    observer.clear();
    let mut ids: Vec<String> = cloud
        .list_databases("c-page")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["fe-page-0", "fe-page-1", "fe-page-2", "fe-page-3"]);
    assert!(
        observer.count("DescribeDBInstances", "ok") >= 3,
        "{:?}",
        observer.calls()
    );
}

/// An SDK configuration for a local `endpoint` with dummy credentials.
async fn config_for(endpoint: String) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "AKID", "SECRET", None, None, "test",
        ))
        .load()
        .await
}

/// An endpoint that accepts connections and never answers (an overloaded or
/// half-partitioned service): every request ends within the operation timeout with
/// an error that is retried, instead of holding its reconcile forever.
#[tokio::test]
async fn a_request_to_an_endpoint_that_never_answers_times_out() {
    use featureenv_operator::cloud::Compute;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = config_for(endpoint).await;
    let observer = Arc::new(RecordingObserver::default());
    let cloud = AwsCloud::new(&config, observer, Duration::from_secs(2), Fence::open());
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), cloud.list_instances("c"))
        .await
        .expect("the adapter's own timeout ends the request, not the test's");
    let waited = started.elapsed();
    let error = result.expect_err("nothing answered");
    assert!(error.to_string().contains("timed out"), "{error}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    silent.abort();
}

/// A closed fence (a leader past its renew deadline, or a stand-by) keeps every
/// request from leaving: nothing reaches the endpoint. Opened, the same request
/// goes out.
#[tokio::test]
async fn no_request_leaves_while_the_fence_is_closed() {
    use featureenv_operator::cloud::Compute;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            held.push(socket);
        }
    });
    let config = config_for(endpoint).await;
    let fence = Fence::closed();
    fence.open_until(std::time::Instant::now() + Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cloud = AwsCloud::new(
        &config,
        Arc::new(RecordingObserver::default()),
        Duration::from_secs(1),
        fence.clone(),
    );
    let error = cloud.list_instances("c").await.expect_err("fenced");
    assert!(error.to_string().contains("fenced"), "{error}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), accepted.recv())
            .await
            .is_err(),
        "a fenced request reached the endpoint"
    );
    fence.open_until(std::time::Instant::now() + Duration::from_secs(3600));
    let error = cloud.list_instances("c").await.expect_err("nothing answers");
    assert!(!error.to_string().contains("fenced"), "{error}");
    assert!(accepted.try_recv().is_ok(), "an open fence let nothing through");
    silent.abort();
}
