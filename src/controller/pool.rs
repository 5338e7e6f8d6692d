//! The RdsPool controller: keeps `warm` restored, unclaimed spares from the newest
//! snapshot, never more than `maxSize` databases in all, replaces spares of a
//! superseded snapshot without touching claimed ones, and reports counts. Planning
//! is pure (`plan`); restores use deterministic identifiers so a retry adopts what
//! an earlier attempt started. Does I/O in `reconcile`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::{Context, Error, FIELD_MANAGER, Result, instrumented};
use crate::api::conditions::{ConditionUpdate, SNAPSHOT_FRESH, WARM, set_condition};
use crate::api::duration::parse_duration;
use crate::api::{RdsPool, RdsPoolSpec, RdsPoolStatus};
use crate::cloud::{CloudError, Database, DatabaseStatus, RestoreRequest, Snapshot, Tags, tag};
use crate::naming;

pub const CONTROLLER: &str = "rdspool";

/// What the pool should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PoolPlan {
    /// Identifiers to restore from the newest snapshot.
    pub restore: Vec<String>,
    /// Unclaimed spares to delete (superseded snapshot, failed, or surplus).
    pub delete: Vec<String>,
    pub counts: PoolCounts,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    /// Available, unclaimed spares of the newest snapshot.
    pub warm: u32,
    pub claimed: u32,
    pub creating: u32,
    /// Unclaimed spares of an older snapshot still around.
    pub stale: u32,
    /// The newest snapshot itself is older than `maxSnapshotAge`: new spares would be
    /// no fresher, so this is reported rather than acted on.
    pub snapshot_too_old: bool,
}

/// Plans restores and deletions for `members` (the pool's databases). Pure.
///
/// `waiting` environments found the pool exhausted: one spare is restored for each
/// of them on top of `warm` (within `maxSize`), so a burst does not queue behind
/// one restore at a time.
pub fn plan(
    pool: &str,
    spec: &RdsPoolSpec,
    snapshot: &Snapshot,
    members: &[Database],
    waiting: u32,
    now: Timestamp,
) -> PoolPlan {
    let Members {
        claimed,
        failed,
        fresh,
        stale,
    } = Members::sort(members, snapshot);
    let fresh_available = fresh.iter().filter(|d| d.status == DatabaseStatus::Available).count() as u32;
    let creating = fresh.len() as u32 - fresh_available;

    let mut delete: Vec<String> = failed.iter().map(|d| d.id.clone()).collect();
    // Surplus fresh spares (warm was lowered): drop the newest-numbered ones.
    let target = spec.warm + waiting;
    let mut fresh_sorted: Vec<&&Database> = fresh.iter().collect();
    fresh_sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let surplus = (fresh.len() as u32).saturating_sub(target) as usize;
    delete.extend(fresh_sorted.iter().rev().take(surplus).map(|d| d.id.clone()));

    let total = claimed + (fresh.len() + stale.len()) as u32 - surplus as u32;
    let need = target.saturating_sub(fresh.len() as u32 - surplus as u32);
    // Signed: the pool can be over its cap for a moment (a spare claimed while a stale
    // one is still listed), and each stale spare deleted must first pay that back
    // before it makes room.
    let mut room = i64::from(spec.max_size) - i64::from(total);
    // Stale spares go once fresh replacements are available, or earlier when they
    // are what stands between the pool and its cap.
    for (i, d) in stale.iter().enumerate() {
        let replaced = fresh_available >= spec.warm;
        let blocking = room < i64::from(need) && i < need as usize;
        if replaced || blocking {
            delete.push(d.id.clone());
            if blocking && !replaced {
                room += 1;
            }
        }
    }
    let to_restore = need.min(u32::try_from(room.max(0)).unwrap_or(0));
    PoolPlan {
        restore: free_ids(pool, snapshot, members, to_restore),
        delete,
        counts: PoolCounts {
            warm: fresh_available.min(spec.warm),
            claimed,
            creating,
            stale: stale.len() as u32,
            snapshot_too_old: snapshot_too_old(spec, snapshot, now),
        },
    }
}

/// A pool's databases that are not being deleted, by what the plan does with them.
struct Members<'a> {
    claimed: u32,
    /// Unclaimed and failed: deleted.
    failed: Vec<&'a Database>,
    /// Unclaimed, restored from the newest snapshot.
    fresh: Vec<&'a Database>,
    /// Unclaimed, restored from an older snapshot.
    stale: Vec<&'a Database>,
}

impl<'a> Members<'a> {
    fn sort(members: &'a [Database], snapshot: &Snapshot) -> Self {
        let live = members.iter().filter(|d| d.status != DatabaseStatus::Deleting);
        let (claimed, spares): (Vec<&Database>, Vec<&Database>) =
            live.partition(|d| d.tags.contains_key(tag::CLAIMED_BY));
        let (failed, healthy): (Vec<&Database>, Vec<&Database>) =
            spares.into_iter().partition(|d| d.status == DatabaseStatus::Failed);
        let newest = naming::snapshot_tag(&snapshot.id);
        let (fresh, stale) = healthy
            .into_iter()
            .partition(|d| d.tags.get(tag::SNAPSHOT) == Some(&newest));
        Self {
            claimed: claimed.len() as u32,
            failed,
            fresh,
            stale,
        }
    }
}

/// Whether the newest snapshot itself is older than the pool's `maxSnapshotAge`.
fn snapshot_too_old(spec: &RdsPoolSpec, snapshot: &Snapshot, now: Timestamp) -> bool {
    spec.max_snapshot_age
        .as_deref()
        .and_then(|a| parse_duration(a).ok())
        .is_some_and(|max| Duration::try_from(now.duration_since(snapshot.created_at)).unwrap_or_default() > max)
}

/// The first `count` database ids of the pool's slots for `snapshot` that no member
/// uses.
fn free_ids(pool: &str, snapshot: &Snapshot, members: &[Database], count: u32) -> Vec<String> {
    let used: BTreeSet<&str> = members.iter().map(|d| d.id.as_str()).collect();
    (0u32..)
        .map(|slot| naming::pool_database_id(pool, &snapshot.id, slot))
        .filter(|id| !used.contains(id.as_str()))
        .take(count as usize)
        .collect()
}

/// The pool's status from its plan. Pure.
pub fn pool_status(
    current: &RdsPoolStatus,
    spec: &RdsPoolSpec,
    plan: &PoolPlan,
    snapshot: &Snapshot,
    generation: Option<i64>,
    now: Timestamp,
) -> RdsPoolStatus {
    let mut status = current.clone();
    status.warm = plan.counts.warm;
    status.claimed = plan.counts.claimed;
    status.creating = plan.counts.creating;
    status.latest_snapshot = Some(snapshot.id.clone());
    status.observed_generation = generation;
    let update = if plan.counts.warm >= spec.warm {
        ConditionUpdate::new(
            WARM,
            true,
            "Warm",
            format!("{} warm spare(s) from {}", plan.counts.warm, snapshot.id),
        )
    } else if plan.counts.claimed + plan.counts.warm + plan.counts.creating >= spec.max_size {
        ConditionUpdate::new(
            WARM,
            false,
            "MaxSizeReached",
            format!("{} of maxSize {} in use", plan.counts.claimed, spec.max_size),
        )
    } else {
        ConditionUpdate::new(
            WARM,
            false,
            "Restoring",
            format!(
                "{} warm, {} restoring from {}",
                plan.counts.warm, plan.counts.creating, snapshot.id
            ),
        )
    };
    set_condition(&mut status.conditions, update, generation, now);
    let freshness = if plan.counts.snapshot_too_old {
        let age = spec.max_snapshot_age.as_deref().unwrap_or_default();
        ConditionUpdate::new(
            SNAPSHOT_FRESH,
            false,
            "SnapshotTooOld",
            format!("the newest snapshot {} is older than maxSnapshotAge {age}", snapshot.id),
        )
    } else {
        ConditionUpdate::new(
            SNAPSHOT_FRESH,
            true,
            "SnapshotFresh",
            format!("restoring from {}", snapshot.id),
        )
    };
    set_condition(&mut status.conditions, freshness, generation, now);
    status
}

pub async fn reconcile(pool: Arc<RdsPool>, ctx: Arc<Context>) -> Result<Action> {
    instrumented(pool.clone(), ctx.clone(), CONTROLLER, apply(pool, ctx.clone())).await
}

pub fn error_policy(pool: Arc<RdsPool>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(pool, error, ctx, CONTROLLER)
}

async fn apply(pool: Arc<RdsPool>, ctx: Arc<Context>) -> Result<Action> {
    let name = pool.name_any();
    let api: Api<RdsPool> = Api::all(ctx.client.clone());
    let now = Timestamp::now();
    let current = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;

    // Observe.
    let snapshot = match newest_snapshot(&ctx, &pool.spec).await? {
        Some(s) => s,
        None => {
            let mut status = current.clone();
            let message = match (
                &pool.spec.source.db_instance_identifier,
                &pool.spec.source.snapshot_identifier,
            ) {
                (Some(db), _) => format!("spec.source.dbInstanceIdentifier: {db} has no available snapshot"),
                (_, Some(s)) => format!("spec.source.snapshotIdentifier: snapshot {s} not found"),
                _ => "spec.source: set dbInstanceIdentifier or snapshotIdentifier".to_owned(),
            };
            set_condition(
                &mut status.conditions,
                ConditionUpdate::new(WARM, false, "SourceNotFound", message.clone()),
                generation,
                now,
            );
            status.observed_generation = generation;
            if status != current {
                patch_status(&api, &name, &status).await?;
                ctx.event(pool.as_ref(), EventType::Warning, "SourceNotFound", message)
                    .await;
            }
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let members = ctx
        .memory
        .claims
        .apply_to(ctx.inventory.read(|s| s.pool_members(&name)));

    // Plan (pure).
    let waiting = ctx.memory.pool_demand(&name);
    let plan = plan(&name, &pool.spec, &snapshot, &members, waiting, now);

    // Act.
    for id in &plan.restore {
        restore_spare(&ctx, &pool, id, &snapshot).await?;
    }
    delete_spares(&ctx, &name, &plan.delete).await?;
    reset_spare_passwords(&ctx, &name, &members, &plan.delete).await?;

    // Status (pure) and one patch.
    let status = pool_status(&current, &pool.spec, &plan, &snapshot, generation, now);
    ctx.metrics.pool_members(
        &name,
        plan.counts.warm,
        plan.counts.claimed,
        plan.counts.creating,
        plan.counts.stale,
    );
    if status != current {
        patch_status(&api, &name, &status).await?;
    }
    // New snapshots do not trigger anything; look for them at the slow poll interval
    // (the snapshot look-up is cached for as long).
    let wake = if plan.restore.is_empty() && plan.delete.is_empty() {
        ctx.config.slow_poll_interval.as_secs().max(1)
    } else {
        ctx.config.slow_poll_interval.as_secs().clamp(1, 30)
    };
    Ok(Action::requeue(Duration::from_secs(wake)))
}

/// Deletes the spares the plan gave up, each only if a read made now still shows it
/// unclaimed: the plan worked from the inventory, which may predate a claim (by
/// another replica during a Lease hand-over, or by a leader cut off from the API
/// server). One DescribeDBInstances per deletion; deletions are rare.
async fn delete_spares(ctx: &Context, pool: &str, ids: &[String]) -> Result<()> {
    for id in ids {
        match ctx.cloud.databases.get_database(id).await? {
            None => continue,
            Some(d) if d.status == DatabaseStatus::Deleting => continue,
            Some(d) if d.tags.contains_key(tag::CLAIMED_BY) => {
                warn!(pool, db_instance_id = %id, "spare claimed since the last poll; keeping it");
                continue;
            }
            Some(_) => {}
        }
        match ctx.cloud.databases.delete_database(id).await {
            Ok(()) => info!(pool, db_instance_id = %id, "deleting spare"),
            Err(e) if e.is_not_found() => {}
            Err(CloudError::InvalidState { .. }) => {} // already deleting
            Err(e) => return Err(e.into()),
        }
        ctx.inventory.wake();
    }
    Ok(())
}

/// The snapshot spares are restored from. Pool reconciles run on every change of a
/// member, so the answer is cached for the slow poll interval: the number of
/// DescribeDBSnapshots calls follows time, not the number of claims.
async fn newest_snapshot(ctx: &Context, spec: &RdsPoolSpec) -> Result<Option<Snapshot>> {
    let key = format!("{:?}", spec.source);
    if let Some(snapshot) = ctx.snapshots.get(&key) {
        return Ok(Some(snapshot));
    }
    let snapshot = match (&spec.source.snapshot_identifier, &spec.source.db_instance_identifier) {
        (Some(id), _) => ctx.cloud.databases.snapshot(id).await?,
        (None, Some(db)) => ctx.cloud.databases.latest_snapshot(db).await?,
        (None, None) => None,
    };
    if let Some(s) = &snapshot {
        ctx.snapshots.insert(key, s.clone());
    }
    Ok(snapshot)
}

/// The tags a spare is restored with.
fn spare_tags(cluster_id: &str, pool: &str, snapshot: &Snapshot) -> Tags {
    BTreeMap::from([
        (tag::CLUSTER.to_owned(), cluster_id.to_owned()),
        (tag::POOL.to_owned(), pool.to_owned()),
        (tag::SNAPSHOT.to_owned(), naming::snapshot_tag(&snapshot.id)),
    ])
}

async fn restore_spare(ctx: &Context, pool: &RdsPool, id: &str, snapshot: &Snapshot) -> Result<()> {
    let name = pool.name_any();
    let tags = spare_tags(&ctx.config.cluster_id, &name, snapshot);
    let request = RestoreRequest {
        id: id.to_owned(),
        snapshot_id: snapshot.id.clone(),
        instance_class: pool.spec.instance_class.clone(),
        subnet_group: pool.spec.db_subnet_group_name.clone(),
        security_group_ids: pool.spec.vpc_security_group_ids.clone(),
        tags,
    };
    match ctx.cloud.databases.restore_database(&request).await {
        Ok(db) => {
            info!(pool = %name, db_instance_id = %id, snapshot = %snapshot.id, "restoring spare");
            ctx.inventory.record_database(db);
            ctx.event(
                pool,
                EventType::Normal,
                "Restoring",
                format!("restoring {id} from {}", snapshot.id),
            )
            .await;
        }
        // A retried restore (after a crash or a lost response) adopts the database.
        Err(CloudError::AlreadyExists { .. }) => ctx.inventory.wake(),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// A restore keeps the source database's master password, which a spare must not
/// carry while it waits (whoever knows the integration database's password would
/// know every spare's). RDS cannot set a password on restore, so each available,
/// unclaimed spare gets a random one nobody keeps; a claim sets its own later. Done
/// once per spare per process: after a restart, once more (harmless).
async fn reset_spare_passwords(ctx: &Context, pool: &str, members: &[Database], deleting: &[String]) -> Result<()> {
    for spare in ctx.memory.spares_to_reset(pool, members, deleting) {
        match ctx
            .cloud
            .databases
            .set_master_password(&spare.id, &super::claim::generate_password())
            .await
        {
            Ok(()) => {
                info!(pool, db_instance_id = %spare.id, "replaced the restored master password of a spare");
                ctx.memory.spare_reset(pool, &spare.id);
            }
            // Busy (still backing up, or being modified): the next pass tries again.
            Err(CloudError::InvalidState { .. }) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn patch_status(api: &Api<RdsPool>, name: &str, status: &RdsPoolStatus) -> Result<()> {
    let patch = serde_json::json!({"apiVersion": "featureenv.io/v1alpha1", "kind": "RdsPool", "status": status});
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::pool_spec as spec;

    fn snap(id: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            source_db: "integration-db".into(),
            created_at: "2026-11-28T03:00:00Z".parse().unwrap(),
        }
    }

    fn db(id: &str, snapshot: &str, status: DatabaseStatus, claimed_by: Option<&str>) -> Database {
        let mut tags = Tags::from([(tag::POOL.into(), "p".into()), (tag::SNAPSHOT.into(), snapshot.into())]);
        if let Some(uid) = claimed_by {
            tags.insert(tag::CLAIMED_BY.into(), uid.into());
        }
        Database {
            id: id.into(),
            arn: format!("arn:{id}"),
            status,
            endpoint: None,
            port: None,
            master_username: None,
            created_at: None,
            tags,
        }
    }

    fn now() -> Timestamp {
        "2026-11-28T04:00:00Z".parse().unwrap()
    }

    #[test]
    fn empty_pool_restores_warm_spares_with_deterministic_ids() {
        let p = plan("p", &spec(2, 5), &snap("s2"), &[], 0, now());
        assert_eq!(
            p.restore,
            vec![
                naming::pool_database_id("p", "s2", 0),
                naming::pool_database_id("p", "s2", 1)
            ]
        );
        assert_eq!(
            plan("p", &spec(2, 5), &snap("s2"), &[], 0, now()),
            p,
            "same input, same plan"
        );
    }

    #[test]
    fn claimed_spares_are_replaced_within_max_size() {
        let members = vec![
            db(
                &naming::pool_database_id("p", "s2", 0),
                "s2",
                DatabaseStatus::Available,
                Some("uid-a"),
            ),
            db(
                &naming::pool_database_id("p", "s2", 1),
                "s2",
                DatabaseStatus::Available,
                Some("uid-b"),
            ),
        ];
        let p = plan("p", &spec(1, 3), &snap("s2"), &members, 0, now());
        assert_eq!(p.restore, vec![naming::pool_database_id("p", "s2", 2)]);
        assert_eq!(p.counts.claimed, 2);
        let p = plan("p", &spec(1, 2), &snap("s2"), &members, 0, now());
        assert!(p.restore.is_empty(), "maxSize reached");
        assert!(p.delete.is_empty(), "claimed databases are never touched");
    }

    /// Seen in the e2e pool scenario: a stale spare already deleted last pass is
    /// still listed (the delete raced the poll) while its fresh replacement has just
    /// been claimed. Claimed databases alone fill maxSize, so deleting the stale spare
    /// makes no room: nothing may be restored.
    #[test]
    fn a_stale_spare_over_the_cap_makes_no_room_when_claims_fill_it() {
        let members = vec![
            db("fe-p-old-claimed", "s1", DatabaseStatus::Available, Some("uid-a")),
            db("fe-p-old-spare", "s1", DatabaseStatus::Available, None),
            db(
                &naming::pool_database_id("p", "s2", 0),
                "s2",
                DatabaseStatus::Available,
                Some("uid-b"),
            ),
        ];
        let p = plan("p", &spec(1, 2), &snap("s2"), &members, 0, now());
        assert_eq!(p.restore, Vec::<String>::new(), "two claimed databases fill maxSize 2");
        assert_eq!(p.delete, vec!["fe-p-old-spare".to_owned()]);
    }

    /// The nightly automated snapshot is usually the newest, and its id starts with
    /// `rds:`, which RDS refuses at the start of a tag value: every restore from it
    /// would fail. The tag carries `automated:` instead, and such a spare is fresh.
    #[test]
    fn spares_of_an_automated_snapshot_carry_tag_values_rds_accepts() {
        let automated = snap("rds:integration-db-2026-11-28-03-00");
        let tags = spare_tags("prod", "p", &automated);
        for value in tags.values() {
            assert!(
                !value.starts_with("rds:") && !value.starts_with("aws:"),
                "RDS refuses tag value {value:?}"
            );
        }
        assert_eq!(
            naming::snapshot_from_tag(&tags[tag::SNAPSHOT]),
            automated.id,
            "the tag still names the snapshot"
        );
        let spare = db(
            &naming::pool_database_id("p", &automated.id, 0),
            &tags[tag::SNAPSHOT],
            DatabaseStatus::Available,
            None,
        );
        let p = plan("p", &spec(1, 5), &automated, &[spare], 0, now());
        assert!(p.restore.is_empty() && p.delete.is_empty(), "{p:?}");
        assert_eq!(p.counts.warm, 1);
    }

    #[test]
    fn superseded_spares_are_replaced_then_deleted() {
        let old = db("fe-p-old-0", "s1", DatabaseStatus::Available, None);
        let claimed_old = db("fe-p-old-1", "s1", DatabaseStatus::Available, Some("uid-a"));
        let p = plan(
            "p",
            &spec(1, 5),
            &snap("s2"),
            &[old.clone(), claimed_old.clone()],
            0,
            now(),
        );
        assert_eq!(p.restore.len(), 1);
        assert!(p.delete.is_empty(), "keep the old spare until a fresh one is available");
        let fresh = db(&p.restore[0], "s2", DatabaseStatus::Available, None);
        let p = plan("p", &spec(1, 5), &snap("s2"), &[old, claimed_old, fresh], 0, now());
        assert!(p.restore.is_empty());
        assert_eq!(p.delete, vec!["fe-p-old-0".to_string()]);
    }

    #[test]
    fn an_old_newest_snapshot_is_reported_not_churned() {
        let fresh = db(
            &naming::pool_database_id("p", "s2", 0),
            "s2",
            DatabaseStatus::Available,
            None,
        );
        let later: Timestamp = "2026-11-30T04:00:00Z".parse().unwrap();
        let p = plan("p", &spec(1, 5), &snap("s2"), std::slice::from_ref(&fresh), 0, later);
        assert!(p.counts.snapshot_too_old);
        assert!(
            p.restore.is_empty() && p.delete.is_empty(),
            "replacing it from the same snapshot gains nothing"
        );
        let status = pool_status(&Default::default(), &spec(1, 5), &p, &snap("s2"), Some(1), later);
        let c = crate::api::conditions::find(&status.conditions, SNAPSHOT_FRESH).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "SnapshotTooOld"));
        assert!(
            !plan("p", &spec(1, 5), &snap("s2"), &[fresh], 0, now())
                .counts
                .snapshot_too_old
        );
    }

    #[test]
    fn waiting_environments_get_a_spare_each_within_max_size() {
        let claimed = db(
            &naming::pool_database_id("p", "s2", 0),
            "s2",
            DatabaseStatus::Available,
            Some("uid-a"),
        );
        let p = plan("p", &spec(1, 10), &snap("s2"), std::slice::from_ref(&claimed), 4, now());
        assert_eq!(p.restore.len(), 5, "warm 1 + 4 waiting");
        let p = plan("p", &spec(1, 3), &snap("s2"), &[claimed], 4, now());
        assert_eq!(p.restore.len(), 2, "capped by maxSize");
    }

    #[test]
    fn creating_spares_count_toward_warm() {
        let creating = db(
            &naming::pool_database_id("p", "s2", 0),
            "s2",
            DatabaseStatus::Creating,
            None,
        );
        let p = plan("p", &spec(1, 5), &snap("s2"), &[creating], 0, now());
        assert!(p.restore.is_empty());
        assert_eq!(p.counts.creating, 1);
        assert_eq!(p.counts.warm, 0);
    }
}
