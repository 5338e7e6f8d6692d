//! `Registry` on ECR: image tags to digests. Network I/O for ECR repositories;
//! references to other registries are answered without a call.

use async_trait::async_trait;
use aws_sdk_ecr::types::ImageIdentifier;

use super::{AwsCloud, missing};
use crate::api::image_ref::ecr_repository as parse_ecr;
use crate::cloud::{CloudError, CloudResult, Registry};

const ECR: &str = "ecr";

#[async_trait]
impl Registry for AwsCloud {
    async fn resolve_digest(&self, repository: &str, tag: &str) -> CloudResult<Option<String>> {
        const OP: &str = "DescribeImages";
        let Some(ecr) = parse_ecr(repository) else {
            return Ok(None);
        };
        // A repository in another region needs a client for that region; the
        // credentials and endpoint settings stay the same.
        let client = if self.region.as_deref() == Some(ecr.region) {
            self.ecr.clone()
        } else {
            let config = self
                .ecr
                .config()
                .to_builder()
                .region(aws_config::Region::new(ecr.region.to_owned()))
                .build();
            aws_sdk_ecr::Client::from_conf(config)
        };
        let request = client
            .describe_images()
            .registry_id(ecr.account)
            .repository_name(ecr.name)
            .image_ids(ImageIdentifier::builder().image_tag(tag).build())
            .send();
        let output = self.call(ECR, OP, request).await?;
        let detail = output.image_details().first().ok_or_else(|| CloudError::NotFound {
            operation: OP,
            message: format!("{repository}:{tag} not found"),
        })?;
        let digest = detail.image_digest().ok_or_else(|| missing(OP, "imageDigest"))?;
        Ok(Some(digest.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_references_are_recognised() {
        assert_eq!(
            parse_ecr("123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/team/payments"),
            Some(crate::api::image_ref::EcrRepository {
                host: "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com",
                account: "123456789012",
                region: "ap-southeast-1",
                name: "team/payments"
            })
        );
        assert_eq!(
            parse_ecr("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/payments").map(|r| r.region),
            Some("cn-north-1")
        );
    }

    #[test]
    fn other_registries_are_not_ecr() {
        for reference in [
            "docker.io/library/nginx",
            "ghcr.io/org/app",
            "public.ecr.aws/nginx/nginx",
            "12345.dkr.ecr.us-east-1.amazonaws.com/short-account",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example/app",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/",
            "nginx",
        ] {
            assert_eq!(parse_ecr(reference), None, "{reference}");
        }
    }
}
