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

/// The AWS-owned document that runs a shell script (its `commands` parameter).
const RUN_SHELL_SCRIPT: &str = "AWS-RunShellScript";
/// SendCommand's `Comment` is at most 100 characters (SSM API model).
const COMMENT_MAX: usize = 100;
/// SendCommand's `TimeoutSeconds` range (SSM API model): how long delivery may take.
const TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 30..=2_592_000;
/// `AWS-RunShellScript`'s `executionTimeout` range: how long the script may run.
const EXECUTION_TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 1..=172_800;

#[async_trait]
impl crate::cloud::Commands for AwsCloud {
    async fn run_script(&self, request: &crate::cloud::ScriptRequest) -> CloudResult<String> {
        const OP: &str = "SendCommand";
        let comment: String = request.comment.chars().take(COMMENT_MAX).collect();
        let timeout = request
            .timeout_seconds
            .clamp(*TIMEOUT_RANGE.start(), *TIMEOUT_RANGE.end());
        let execution = request
            .timeout_seconds
            .clamp(*EXECUTION_TIMEOUT_RANGE.start(), *EXECUTION_TIMEOUT_RANGE.end());
        let send = self
            .ssm
            .send_command()
            .document_name(RUN_SHELL_SCRIPT)
            .instance_ids(&request.instance_id)
            // One element: the agent writes the list, one line per element, to a
            // script file and runs it; the script's `#!/bin/bash` picks the shell.
            .parameters("commands", vec![request.script.clone()])
            .parameters("executionTimeout", vec![execution.to_string()])
            .comment(comment)
            .timeout_seconds(i32::try_from(timeout).unwrap_or(i32::MAX))
            .send();
        let output = self.call(SSM, OP, send).await?;
        output
            .command()
            .and_then(|c| c.command_id())
            .map(str::to_owned)
            .ok_or_else(|| super::missing(OP, "Command.CommandId"))
    }
}
