//! `Parameters` on SSM Parameter Store: the SecureString an instance reads its
//! database credentials from. Network I/O; every request is reported.

use async_trait::async_trait;
use aws_sdk_ssm::types::{ParameterType, ResourceTypeForTagging, Tag};

use super::AwsCloud;
use crate::cloud::{CloudError, CloudResult, Parameters, Tags};

const SSM: &str = "ssm";

#[async_trait]
impl Parameters for AwsCloud {
    async fn put_secret_parameter(&self, name: &str, value: &str, tags: &Tags) -> CloudResult<()> {
        const OP: &str = "PutParameter";
        // SSM rejects Tags together with Overwrite=true. So: create with tags; if it
        // exists already (a retried claim), overwrite the value and re-apply the tags.
        let ssm_tags = (!tags.is_empty()).then(|| ssm_tags(tags));
        let create = self
            .ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::SecureString)
            .overwrite(false)
            .set_tags(ssm_tags.clone())
            .send();
        match self.call(SSM, OP, create).await {
            Ok(_) => return Ok(()),
            Err(CloudError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err),
        }
        let overwrite = self
            .ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::SecureString)
            .overwrite(true)
            .send();
        self.call(SSM, OP, overwrite).await?;
        if let Some(ssm_tags) = ssm_tags {
            let tag = self
                .ssm
                .add_tags_to_resource()
                .resource_type(ResourceTypeForTagging::Parameter)
                .resource_id(name)
                .set_tags(Some(ssm_tags))
                .send();
            self.call(SSM, "AddTagsToResource", tag).await?;
        }
        Ok(())
    }

    async fn tag_parameter(&self, name: &str, tags: &Tags) -> CloudResult<()> {
        let request = self
            .ssm
            .add_tags_to_resource()
            .resource_type(ResourceTypeForTagging::Parameter)
            .resource_id(name)
            .set_tags(Some(ssm_tags(tags)))
            .send();
        self.call(SSM, "AddTagsToResource", request).await?;
        Ok(())
    }

    async fn delete_parameter(&self, name: &str) -> CloudResult<()> {
        let request = self.ssm.delete_parameter().name(name).send();
        self.call(SSM, "DeleteParameter", request).await?;
        Ok(())
    }

    async fn list_parameters(&self, path: &str) -> CloudResult<Vec<String>> {
        const OP: &str = "GetParametersByPath";
        // Names only: values stay encrypted on the wire and out of memory.
        let mut pages = self
            .ssm
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(false)
            .into_paginator()
            .page_size(self.page_sizes.ssm)
            .send();
        let mut names = Vec::new();
        while let Some(page) = pages.next().await {
            let page = self.page(SSM, OP, page)?;
            names.extend(page.parameters().iter().filter_map(|p| p.name()).map(str::to_owned));
        }
        Ok(names)
    }
}

fn ssm_tags(tags: &Tags) -> Vec<Tag> {
    // Tag::build() fails only when key or value is missing; both are always set.
    tags.iter()
        .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
        .collect()
}
