//! `Databases` on RDS: snapshots, restores, claims, password rotation, deletion.
//! Network I/O; every request is reported to the call observer.

use async_trait::async_trait;
use aws_sdk_rds::types::{DbInstance, DbSnapshot, Tag};

use super::{AwsCloud, missing, timestamp};
use crate::cloud::{CloudResult, Database, DatabaseStatus, Databases, RestoreRequest, Snapshot, Tags, tag};

const RDS: &str = "rds";

#[async_trait]
impl Databases for AwsCloud {
    async fn latest_snapshot(&self, source_db: &str) -> CloudResult<Option<Snapshot>> {
        const OP: &str = "DescribeDBSnapshots";
        // Without SnapshotType RDS returns both automated and manual snapshots,
        // which is what "newest snapshot of the integration DB" means.
        let mut pages = self
            .rds
            .describe_db_snapshots()
            .db_instance_identifier(source_db)
            .into_paginator()
            .page_size(self.page_sizes.rds)
            .send();
        let mut newest: Option<Snapshot> = None;
        while let Some(page) = pages.next().await {
            let page = match self.page(RDS, OP, page) {
                Err(err) if err.is_not_found() => return Ok(None),
                other => other?,
            };
            for snapshot in page.db_snapshots().iter().filter_map(available_snapshot) {
                if newest
                    .as_ref()
                    .is_none_or(|best| (snapshot.created_at, &snapshot.id) > (best.created_at, &best.id))
                {
                    newest = Some(snapshot);
                }
            }
        }
        Ok(newest)
    }

    async fn snapshot(&self, id: &str) -> CloudResult<Option<Snapshot>> {
        let request = self.rds.describe_db_snapshots().db_snapshot_identifier(id).send();
        match self.call(RDS, "DescribeDBSnapshots", request).await {
            Ok(output) => Ok(output.db_snapshots().iter().find_map(available_snapshot)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn restore_database(&self, request: &RestoreRequest) -> CloudResult<Database> {
        const OP: &str = "RestoreDBInstanceFromDBSnapshot";
        // Tags go on the restore itself so the new instance is never untagged, even
        // for a moment: the inventory and the janitor find it by them.
        let restore = self
            .rds
            .restore_db_instance_from_db_snapshot()
            .db_instance_identifier(&request.id)
            .db_snapshot_identifier(&request.snapshot_id)
            .db_instance_class(&request.instance_class)
            .set_db_subnet_group_name(request.subnet_group.clone())
            .set_vpc_security_group_ids(
                (!request.security_group_ids.is_empty()).then(|| request.security_group_ids.clone()),
            )
            .publicly_accessible(false)
            .set_tags(Some(rds_tags(&request.tags)))
            .send();
        let output = self.call(RDS, OP, restore).await?;
        let instance = output.db_instance().ok_or_else(|| missing(OP, "DBInstance"))?;
        tracing::info!(
            database_id = %request.id,
            snapshot = %request.snapshot_id,
            "restoring database"
        );
        to_database(OP, instance)
    }

    async fn list_databases(&self, cluster_id: &str) -> CloudResult<Vec<Database>> {
        const OP: &str = "DescribeDBInstances";
        // DescribeDBInstances cannot filter on tags, so the whole account is paged and
        // ours are picked by the cluster tag it returns in TagList.
        let mut pages = self
            .rds
            .describe_db_instances()
            .into_paginator()
            .page_size(self.page_sizes.rds)
            .send();
        let mut databases = Vec::new();
        while let Some(page) = pages.next().await {
            let page = self.page(RDS, OP, page)?;
            for instance in page.db_instances() {
                let ours = instance
                    .tag_list()
                    .iter()
                    .any(|t| t.key() == Some(tag::CLUSTER) && t.value() == Some(cluster_id));
                if ours {
                    databases.push(to_database(OP, instance)?);
                }
            }
        }
        Ok(databases)
    }

    async fn get_database(&self, id: &str) -> CloudResult<Option<Database>> {
        const OP: &str = "DescribeDBInstances";
        let request = self.rds.describe_db_instances().db_instance_identifier(id).send();
        match self.call(RDS, OP, request).await {
            Ok(output) => output.db_instances().first().map(|db| to_database(OP, db)).transpose(),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn tag_database(&self, arn: &str, tags: &Tags) -> CloudResult<()> {
        let request = self
            .rds
            .add_tags_to_resource()
            .resource_name(arn)
            .set_tags(Some(rds_tags(tags)))
            .send();
        self.call(RDS, "AddTagsToResource", request).await?;
        Ok(())
    }

    async fn set_master_password(&self, id: &str, password: &str) -> CloudResult<()> {
        // The SDK redacts MasterUserPassword in its Debug output; we never log it.
        let request = self
            .rds
            .modify_db_instance()
            .db_instance_identifier(id)
            .master_user_password(password)
            .apply_immediately(true)
            .send();
        self.call(RDS, "ModifyDBInstance", request).await?;
        tracing::info!(db_instance_id = id, "rotated master password");
        Ok(())
    }

    async fn delete_database(&self, id: &str) -> CloudResult<()> {
        // Pool databases are disposable copies of a snapshot: no final snapshot, and
        // no automated backups left behind to pay for.
        let request = self
            .rds
            .delete_db_instance()
            .db_instance_identifier(id)
            .skip_final_snapshot(true)
            .delete_automated_backups(true)
            .send();
        self.call(RDS, "DeleteDBInstance", request).await?;
        tracing::info!(db_instance_id = id, "deleting database");
        Ok(())
    }

    async fn stop_database(&self, id: &str) -> CloudResult<()> {
        let request = self.rds.stop_db_instance().db_instance_identifier(id).send();
        self.call(RDS, "StopDBInstance", request).await?;
        tracing::info!(db_instance_id = id, "stopping database");
        Ok(())
    }

    async fn start_database(&self, id: &str) -> CloudResult<()> {
        let request = self.rds.start_db_instance().db_instance_identifier(id).send();
        self.call(RDS, "StartDBInstance", request).await?;
        tracing::info!(db_instance_id = id, "starting database");
        Ok(())
    }
}

fn rds_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// A snapshot usable for a restore: available and complete enough to order by time.
fn available_snapshot(snapshot: &DbSnapshot) -> Option<Snapshot> {
    if snapshot.status() != Some("available") {
        return None;
    }
    Some(Snapshot {
        id: snapshot.db_snapshot_identifier()?.to_owned(),
        source_db: snapshot.db_instance_identifier().unwrap_or_default().to_owned(),
        created_at: timestamp(snapshot.snapshot_create_time()?)?,
    })
}

fn to_database(operation: &'static str, db: &DbInstance) -> CloudResult<Database> {
    let id = db
        .db_instance_identifier()
        .ok_or_else(|| missing(operation, "DBInstanceIdentifier"))?;
    Ok(Database {
        id: id.to_owned(),
        arn: db.db_instance_arn().unwrap_or_default().to_owned(),
        status: DatabaseStatus::parse(db.db_instance_status().unwrap_or("creating")),
        endpoint: db.endpoint().and_then(|e| e.address()).map(str::to_owned),
        port: db.endpoint().and_then(|e| e.port()),
        master_username: db.master_username().map(str::to_owned),
        created_at: db.instance_create_time().and_then(timestamp),
        tags: db
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .collect(),
    })
}
