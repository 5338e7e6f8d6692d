//! The janitor: periodically lists cloud resources tagged with our cluster id
//! *first*, then the cluster objects, and removes what has had no owner for longer
//! than the grace period (instances and claimed databases whose environment uid is
//! gone, spares of deleted pools, spare instances of classes without a warm pool,
//! SSM parameters of gone environments). Listing the
//! cloud first means an object created in between is seen, never mistaken for gone.
//! Does I/O.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::api::{FeatureEnvironment, RdsPool};
use crate::cloud::{DatabaseStatus, tag};
use crate::controller::{Context, Result};
use crate::naming;

/// An orphan found in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Orphan {
    Instance(String),
    Database(String),
    Parameter(String),
}

impl Orphan {
    fn resource(&self) -> &'static str {
        match self {
            Self::Instance(_) => "instance",
            Self::Database(_) => "database",
            Self::Parameter(_) => "parameter",
        }
    }
}

/// Remembers when each orphan was first seen, so one is removed only after it has
/// been ownerless for the whole grace period.
#[derive(Default)]
pub struct Janitor {
    first_seen: HashMap<Orphan, Timestamp>,
}

impl Janitor {
    /// Which orphans are due, given this pass's findings. Pure.
    pub fn due(&mut self, found: &BTreeSet<Orphan>, now: Timestamp, grace: Duration) -> Vec<Orphan> {
        self.first_seen.retain(|o, _| found.contains(o));
        let mut due = Vec::new();
        for orphan in found {
            let since = *self.first_seen.entry(orphan.clone()).or_insert(now);
            if Duration::try_from(now.duration_since(since)).unwrap_or_default() >= grace {
                due.push(orphan.clone());
            }
        }
        due
    }

    /// One pass: list, find orphans, remove the due ones. Returns how many went.
    pub async fn sweep(&mut self, ctx: &Context) -> Result<usize> {
        let cluster = &ctx.config.cluster_id;
        // Cloud first.
        let (instances, databases) = tokio::try_join!(
            ctx.cloud.compute.list_instances(cluster),
            ctx.cloud.databases.list_databases(cluster)
        )?;
        let root = naming::parameter_root(&ctx.config.ssm_prefix, cluster);
        let parameters = ctx.cloud.parameters.list_parameters(&root).await?;
        // Then the cluster.
        let environments: Api<FeatureEnvironment> = Api::all(ctx.client.clone());
        let uids: BTreeSet<String> = environments
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(|e| e.uid())
            .collect();
        let pools: Api<RdsPool> = Api::all(ctx.client.clone());
        let pool_names: BTreeSet<String> = pools
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        ctx.metrics.retain_pools(&pool_names);

        // A spare of a class's warm pool is that pool's until claimed.
        let warm_classes: BTreeSet<String> = ctx
            .classes
            .state()
            .iter()
            .filter(|c| c.spec.warm_pool.is_some())
            .map(|c| c.name_any())
            .collect();
        ctx.metrics.retain_classes(&warm_classes);

        let mut found = BTreeSet::new();
        for i in instances.iter().filter(|i| !i.state.is_gone()) {
            match (i.tags.get(tag::UID), i.tags.get(tag::WARM_POOL)) {
                (Some(uid), _) if uids.contains(uid) => {}
                (None, Some(class)) if warm_classes.contains(class) => {}
                _ => {
                    found.insert(Orphan::Instance(i.id.clone()));
                }
            }
        }
        for d in databases.iter().filter(|d| d.status != DatabaseStatus::Deleting) {
            let owned = match (d.tags.get(tag::CLAIMED_BY), d.tags.get(tag::POOL)) {
                (Some(uid), _) => uids.contains(uid),
                (None, Some(pool)) => pool_names.contains(pool),
                (None, None) => false,
            };
            if !owned {
                found.insert(Orphan::Database(d.id.clone()));
            }
        }
        for p in &parameters {
            // /prefix/<cluster>/<uid>/database
            let uid = p
                .strip_prefix(&format!("{root}/"))
                .and_then(|rest| rest.split('/').next());
            if !uid.is_some_and(|u| uids.contains(u)) {
                found.insert(Orphan::Parameter(p.clone()));
            }
        }

        let due = self.due(&found, Timestamp::now(), ctx.config.janitor_grace_period);
        let mut removed = 0;
        for orphan in due {
            let result = match &orphan {
                Orphan::Instance(id) => ctx.cloud.compute.terminate_instance(id).await,
                Orphan::Database(id) => ctx.cloud.databases.delete_database(id).await,
                Orphan::Parameter(name) => ctx.cloud.parameters.delete_parameter(name).await,
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    warn!(?orphan, error = %e, "janitor could not remove orphan");
                    continue;
                }
            }
            info!(?orphan, "janitor removed orphaned resource");
            ctx.metrics.janitor_removed(orphan.resource());
            self.first_seen.remove(&orphan);
            removed += 1;
        }
        if removed > 0 {
            ctx.inventory.wake();
        }
        Ok(removed)
    }
}

/// Sweeps every `interval` until the task is dropped.
pub async fn run(ctx: Arc<Context>) {
    let mut janitor = Janitor::default();
    loop {
        if let Err(e) = janitor.sweep(&ctx).await {
            warn!(error = %e, category = e.category(), "janitor pass failed");
        }
        tokio::time::sleep(ctx.config.janitor_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_go_only_after_the_grace_period() {
        let mut j = Janitor::default();
        let grace = Duration::from_secs(600);
        let t0: Timestamp = "2026-11-28T10:00:00Z".parse().unwrap();
        let found = BTreeSet::from([Orphan::Instance("i-1".into())]);
        assert!(j.due(&found, t0, grace).is_empty());
        assert!(j.due(&found, "2026-11-28T10:05:00Z".parse().unwrap(), grace).is_empty());
        assert_eq!(
            j.due(&found, "2026-11-28T10:10:00Z".parse().unwrap(), grace),
            vec![Orphan::Instance("i-1".into())]
        );
        // An owner reappearing resets the clock.
        assert!(
            j.due(&BTreeSet::new(), "2026-11-28T10:11:00Z".parse().unwrap(), grace)
                .is_empty()
        );
        assert!(j.due(&found, "2026-11-28T10:12:00Z".parse().unwrap(), grace).is_empty());
    }
}
