//! `Compute` on EC2 (plus the SSM GetParameter an image selector may need). Network
//! I/O; every request is reported to the call observer.

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification, VolumeType,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;

use super::{AwsCloud, missing, timestamp};
use crate::cloud::{
    CloudError, CloudResult, Compute, Image, ImageSelectorTerm, Instance, InstanceState, LaunchRequest, Tags, tag,
};

const EC2: &str = "ec2";

#[async_trait]
impl Compute for AwsCloud {
    async fn resolve_image(&self, terms: &[ImageSelectorTerm]) -> CloudResult<Option<Image>> {
        let mut newest: Option<Image> = None;
        for term in terms {
            for image in self.images_matching(term).await? {
                // Ties (same CreationDate second) go to the larger id so the choice is
                // stable across polls and replicas.
                let newer = newest
                    .as_ref()
                    .is_none_or(|best| (image.created_at, &image.id) > (best.created_at, &best.id));
                if newer {
                    newest = Some(image);
                }
            }
        }
        Ok(newest)
    }

    async fn launch_instance(&self, request: &LaunchRequest) -> CloudResult<Instance> {
        const OP: &str = "RunInstances";
        // The root volume size applies to the AMI's own root device; naming another
        // device would attach a second, empty volume instead.
        let root_device = self.root_device_name(&request.image_id).await?;
        let tags: Vec<Tag> = ec2_tags(&request.tags);
        let tag_spec = |resource: ResourceType| {
            TagSpecification::builder()
                .resource_type(resource)
                .set_tags(Some(tags.clone()))
                .build()
        };
        let mut run = self
            .ec2
            .run_instances()
            .client_token(&request.client_token)
            .image_id(&request.image_id)
            .instance_type(InstanceType::from(request.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .subnet_id(&request.subnet_id)
            .set_security_group_ids(Some(request.security_group_ids.clone()))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(aws_sdk_ec2::types::HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    // With instance tags in metadata, EC2 rejects any tag key outside
                    // [0-9a-zA-Z-_+=,.@:], so every key of ours (they contain `/`). An
                    // account-level default can turn it on, so say disabled explicitly
                    // (as Karpenter does); the bootstrap script never reads tags.
                    .instance_metadata_tags(aws_sdk_ec2::types::InstanceMetadataTagsState::Disabled)
                    // One hop: the instance itself reaches IMDS, containers behind
                    // Minikube's bridge (one hop further) do not get the role.
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root_device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(request.root_volume_gib)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume))
            // The primary network interface is created by the launch as well; the IAM
            // policy requires our cluster tag on everything RunInstances creates.
            .tag_specifications(tag_spec(ResourceType::NetworkInterface))
            .user_data(BASE64.encode(request.user_data.as_bytes()));
        if let Some(profile) = &request.instance_profile {
            run = run.iam_instance_profile(IamInstanceProfileSpecification::builder().name(profile).build());
        }
        let output = self.call(EC2, OP, run.send()).await?;
        let instance = output.instances().first().ok_or_else(|| missing(OP, "Instances"))?;
        tracing::info!(
            instance_id = instance.instance_id().unwrap_or_default(),
            image_id = %request.image_id,
            instance_type = %request.instance_type,
            "launched instance"
        );
        let account = output.owner_id().ok_or_else(|| missing(OP, "OwnerId"))?;
        let mut launched = to_instance(OP, instance, &self.region_name(), account)?;
        // The tags were applied atomically with the launch; when a response leaves
        // them out, report what was requested rather than an untagged instance.
        if launched.tags.is_empty() {
            launched.tags = request.tags.clone();
        }
        Ok(launched)
    }

    async fn list_instances(&self, cluster_id: &str) -> CloudResult<Vec<Instance>> {
        self.describe_instances_tagged(tag::CLUSTER, cluster_id).await
    }

    async fn find_instances(&self, key: &str, value: &str) -> CloudResult<Vec<Instance>> {
        self.describe_instances_tagged(key, value).await
    }

    async fn tag_instance(&self, id: &str, tags: &Tags) -> CloudResult<()> {
        let request = self
            .ec2
            .create_tags()
            .resources(id)
            .set_tags(Some(ec2_tags(tags)))
            .send();
        self.call(EC2, "CreateTags", request).await?;
        Ok(())
    }

    async fn terminate_instance(&self, id: &str) -> CloudResult<()> {
        let request = self.ec2.terminate_instances().instance_ids(id).send();
        self.call(EC2, "TerminateInstances", request).await?;
        tracing::info!(instance_id = id, "terminating instance");
        Ok(())
    }

    async fn stop_instance(&self, id: &str) -> CloudResult<()> {
        let request = self.ec2.stop_instances().instance_ids(id).send();
        self.call(EC2, "StopInstances", request).await?;
        tracing::info!(instance_id = id, "stopping instance");
        Ok(())
    }

    async fn start_instance(&self, id: &str) -> CloudResult<()> {
        let request = self.ec2.start_instances().instance_ids(id).send();
        self.call(EC2, "StartInstances", request).await?;
        tracing::info!(instance_id = id, "starting instance");
        Ok(())
    }

    async fn console_output(&self, id: &str) -> CloudResult<Option<String>> {
        let request = self.ec2.get_console_output().instance_id(id).latest(true).send();
        let output = self.call(EC2, "GetConsoleOutput", request).await?;
        Ok(output.output().filter(|text| !text.is_empty()).map(decode_console))
    }
}

impl AwsCloud {
    /// One paginated DescribeInstances filtered by a tag, whatever the fleet size.
    async fn describe_instances_tagged(&self, key: &str, value: &str) -> CloudResult<Vec<Instance>> {
        const OP: &str = "DescribeInstances";
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{key}")).values(value).build())
            .into_paginator()
            .page_size(self.page_sizes.ec2)
            .send();
        let mut instances = Vec::new();
        while let Some(page) = pages.next().await {
            let page = self.page(EC2, OP, page)?;
            let region = self.region_name();
            for reservation in page.reservations() {
                let account = reservation.owner_id().ok_or_else(|| missing(OP, "OwnerId"))?;
                for instance in reservation.instances() {
                    instances.push(to_instance(OP, instance, &region, account)?);
                }
            }
        }
        Ok(instances)
    }

    /// An image's root device never changes, so it is looked up once per image: a
    /// burst of launches from the same AMI costs one DescribeImages, not one each.
    async fn root_device_name(&self, image_id: &str) -> CloudResult<String> {
        const OP: &str = "DescribeImages";
        // Held across the look-up: a burst of launches waits for one answer.
        let mut root_devices = self.root_devices.lock().await;
        if let Some(known) = root_devices.get(image_id) {
            return Ok(known.clone());
        }
        let request = self.ec2.describe_images().image_ids(image_id).send();
        let output = self.call(EC2, OP, request).await?;
        let image = output.images().first().ok_or_else(|| CloudError::NotFound {
            operation: OP,
            message: format!("image {image_id} does not exist"),
        })?;
        let device = image.root_device_name().unwrap_or("/dev/xvda").to_owned();
        root_devices.insert(image_id.to_owned(), device.clone());
        Ok(device)
    }

    /// Available images matching every field of one selector term.
    async fn images_matching(&self, term: &ImageSelectorTerm) -> CloudResult<Vec<Image>> {
        const OP: &str = "DescribeImages";
        let mut ids: Vec<String> = term.id.iter().cloned().collect();
        if let Some(parameter) = &term.ssm_parameter {
            match self.image_id_from_parameter(parameter).await? {
                Some(id) => ids.push(id),
                None => return Ok(Vec::new()),
            }
        }
        // `id` and `ssmParameter` in one term must name the same image; EC2 would
        // return the union of the two ids instead.
        ids.dedup();
        if ids.len() > 1 {
            return Ok(Vec::new());
        }
        let filters = image_filters(term);
        if ids.is_empty() && term.owner.is_none() && filters.len() == 1 {
            return Err(CloudError::InvalidRequest {
                operation: OP,
                message: "an image selector term needs at least one of id, name, owner, tags, ssmParameter".to_owned(),
            });
        }
        let mut request = self.ec2.describe_images().set_filters(Some(filters));
        if !ids.is_empty() {
            request = request.set_image_ids(Some(ids));
        }
        if let Some(owner) = &term.owner {
            request = request.owners(owner);
        }
        let mut pages = request.into_paginator().send();
        let mut images = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match self.page(EC2, OP, page) {
                // An id that does not exist (any more) simply matches nothing.
                Err(err) if err.is_not_found() => return Ok(Vec::new()),
                other => other?,
            };
            for image in page.images() {
                // Checked here as well because an id-only query ignores filters in
                // some implementations (moto among them).
                if image.state() != Some(&aws_sdk_ec2::types::ImageState::Available) {
                    continue;
                }
                let (Some(id), Some(created)) = (image.image_id(), image.creation_date()) else {
                    continue;
                };
                let Ok(created_at) = created.parse::<Timestamp>() else {
                    tracing::warn!(image_id = id, creation_date = created, "unparseable image CreationDate");
                    continue;
                };
                images.push(Image {
                    id: id.to_owned(),
                    name: image.name().unwrap_or_default().to_owned(),
                    created_at,
                });
            }
        }
        Ok(images)
    }

    /// The image id stored in an SSM parameter (the AMI pipeline's "latest" pointer).
    async fn image_id_from_parameter(&self, name: &str) -> CloudResult<Option<String>> {
        let request = self.ssm.get_parameter().name(name).send();
        match self.call("ssm", "GetParameter", request).await {
            Ok(output) => Ok(output.parameter().and_then(|p| p.value()).map(str::to_owned)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// `state=available` plus one filter per set field. A tag value of `*` matches any
/// value (a `tag-key` filter), as in Karpenter's selectors.
fn image_filters(term: &ImageSelectorTerm) -> Vec<Filter> {
    let mut filters = vec![Filter::builder().name("state").values("available").build()];
    if let Some(name) = &term.name {
        filters.push(Filter::builder().name("name").values(name).build());
    }
    for (key, value) in &term.tags {
        let filter = if value == "*" {
            Filter::builder().name("tag-key").values(key).build()
        } else {
            Filter::builder().name(format!("tag:{key}")).values(value).build()
        };
        filters.push(filter);
    }
    filters
}

fn ec2_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_owned)
}

/// The instance's ARN as IAM sees it in `ec2:SourceInstanceARN`. The partition
/// follows from the region (`cn-…` and `us-gov-…` have their own).
fn instance_arn(region: &str, account: &str, id: &str) -> String {
    let partition = if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    };
    format!("arn:{partition}:ec2:{region}:{account}:instance/{id}")
}

/// `account` is the owner of the reservation the instance belongs to.
fn to_instance(
    operation: &'static str,
    instance: &aws_sdk_ec2::types::Instance,
    region: &str,
    account: &str,
) -> CloudResult<Instance> {
    let id = instance.instance_id().ok_or_else(|| missing(operation, "InstanceId"))?;
    let state = match instance.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::Stopping) => InstanceState::Stopping,
        Some(InstanceStateName::Stopped) => InstanceState::Stopped,
        Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
        Some(InstanceStateName::Terminated) => InstanceState::Terminated,
        // Pending, or a state newer than this SDK: not usable yet, not gone.
        _ => InstanceState::Pending,
    };
    Ok(Instance {
        arn: instance_arn(region, account, id),
        id: id.to_owned(),
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        image_id: instance.image_id().unwrap_or_default().to_owned(),
        state,
        public_ip: non_empty(instance.public_ip_address()),
        public_dns: non_empty(instance.public_dns_name()),
        private_ip: non_empty(instance.private_ip_address()),
        launched_at: instance.launch_time().and_then(timestamp),
        tags: instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .collect(),
    })
}

/// EC2 returns console output base64-encoded; some emulators return it as plain
/// text, which is kept as it is rather than lost.
pub fn decode_console(text: &str) -> String {
    match BASE64.decode(text.trim()) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_is_decoded_or_kept() {
        assert_eq!(decode_console(&BASE64.encode("boot ok\n")), "boot ok\n");
        assert_eq!(decode_console("Linux version 2.6 plain"), "Linux version 2.6 plain");
    }

    #[test]
    fn image_filters_cover_every_field() {
        let term = ImageSelectorTerm {
            name: Some("minikube-*".into()),
            tags: [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "*".to_owned())].into(),
            ..Default::default()
        };
        let filters: Vec<(String, Vec<String>)> = image_filters(&term)
            .iter()
            .map(|f| (f.name().unwrap().to_owned(), f.values().to_vec()))
            .collect();
        assert_eq!(
            filters,
            vec![
                ("state".to_owned(), vec!["available".to_owned()]),
                ("name".to_owned(), vec!["minikube-*".to_owned()]),
                ("tag:a".to_owned(), vec!["1".to_owned()]),
                ("tag-key".to_owned(), vec!["b".to_owned()]),
            ]
        );
    }
}
