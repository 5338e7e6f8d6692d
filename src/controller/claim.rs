//! Claiming a warm database for an environment and handing out its credentials:
//! tag `claimed-by`, let the next batched inventory poll confirm the tag, rotate the
//! master password, write the Secret and the SSM SecureString. Every step is
//! idempotent so a crash anywhere is recovered by running it again. Does I/O.
//!
//! Why confirm at all: during a Lease hand-over a stale leader may tag the same
//! spare; the last tag wins and only its owner may use the database. Confirming
//! through the inventory, rather than reading each database back, keeps the
//! Describe calls of a burst of claims flat: one poll confirms all of them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;
use tracing::{info, warn};

use super::{Context, Error, FIELD_MANAGER, Result};
use crate::api::FeatureEnvironment;
use crate::cloud::{Database, DatabaseStatus, Tags, tag};
use crate::naming;

/// How long a claim tag may stay invisible to descriptions before it is written
/// again. AWS's tags are eventually consistent (EC2: poll "starting with a couple of
/// seconds", https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html;
/// RDS tags "can take several minutes" to take effect). A new write is a new change
/// with its own delay, so writing on every poll can keep the tag from ever showing;
/// writing again covers only a call that never landed, which is rare.
pub const RETAG_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a claim tag written at `tagged` and not shown by a description made since
/// has had long enough to show, so that writing it again is due.
pub fn retag_due(tagged: Option<Instant>) -> bool {
    tagged.is_some_and(|at| at.elapsed() >= RETAG_AFTER)
}

pub enum ClaimOutcome {
    Claimed(Database),
    /// Tagged; waiting for an inventory poll that began after the tag to confirm it.
    Pending,
    Exhausted,
}

/// Spares of `pool` that can be claimed, best first (newest restore first).
pub fn claimable(members: &[Database]) -> Vec<&Database> {
    let mut spares: Vec<&Database> = members
        .iter()
        .filter(|d| d.status == DatabaseStatus::Available && !d.tags.contains_key(tag::CLAIMED_BY))
        .collect();
    spares.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    spares
}

/// A claim this process made that AWS has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unconfirmed {
    uid: String,
    /// When the tag call returned (or failed: it may have landed all the same).
    /// `None` while it is in flight.
    tagged: Option<Instant>,
}

/// Spares this process is claiming and the inventory does not yet show as claimed,
/// by resource id (a database, or an instance of a warm pool). Picking a spare skips them, so two environments never pick the
/// same one, and the pool counts them as claimed. (Across processes the Lease
/// guarantees one actor, and confirmation settles a hand-over.) Plain state.
#[derive(Debug, Default)]
pub struct PendingClaims(Mutex<BTreeMap<String, Unconfirmed>>);

impl PendingClaims {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Unconfirmed>> {
        self.0.lock().expect("pending claims lock poisoned")
    }

    /// Reserves the best spare among `members` for `uid`.
    fn reserve(&self, members: &[Database], uid: &str) -> Option<Database> {
        let spares = claimable(members);
        let id = self.reserve_first(spares.iter().map(|d| d.id.as_str()), uid)?;
        spares.into_iter().find(|d| d.id == id).cloned()
    }

    /// Reserves for `uid` the first of `candidates` (resource ids, best first) that
    /// nobody in this process is claiming.
    pub fn reserve_first<'a>(&self, candidates: impl IntoIterator<Item = &'a str>, uid: &str) -> Option<String> {
        let mut pending = self.lock();
        let id = candidates.into_iter().find(|id| !pending.contains_key(*id))?.to_owned();
        pending.insert(
            id.clone(),
            Unconfirmed {
                uid: uid.to_owned(),
                tagged: None,
            },
        );
        Some(id)
    }

    /// The claim tag of `resource` was written (or its call failed: it may have
    /// landed all the same) at `at`.
    pub fn tagged(&self, resource: &str, at: Instant) {
        if let Some(claim) = self.lock().get_mut(resource) {
            claim.tagged = Some(at);
        }
    }

    /// Whether this process is claiming `resource` for some environment.
    pub fn is_claiming(&self, resource: &str) -> bool {
        self.lock().contains_key(resource)
    }

    /// The database `uid` is claiming (one at a time: a claim is forgotten before
    /// another spare is reserved) and when its tag was written.
    pub fn of(&self, uid: &str) -> Option<(String, Option<Instant>)> {
        self.lock()
            .iter()
            .find(|(_, c)| c.uid == uid)
            .map(|(id, c)| (id.clone(), c.tagged))
    }

    /// Forgets every claim of `uid` (confirmed, lost or its environment deleted).
    pub fn forget(&self, uid: &str) {
        self.lock().retain(|_, c| c.uid != uid);
    }

    /// `members` as they will be once the pending claims are confirmed: the pool
    /// must neither count a spare being claimed as warm nor delete it.
    pub fn apply_to(&self, mut members: Vec<Database>) -> Vec<Database> {
        let pending = self.lock();
        for member in &mut members {
            if let Some(claim) = pending.get(&member.id) {
                member
                    .tags
                    .entry(tag::CLAIMED_BY.to_owned())
                    .or_insert_with(|| claim.uid.clone());
            }
        }
        members
    }
}

/// Claims a spare of `pool` for the environment `uid`, or finds the one it already
/// claimed (a crash after tagging leaves the tag; the claim is adopted). Tags a
/// spare and returns `Pending` until an inventory poll that began after the tag
/// shows it; the poll triggers this environment's reconcile.
pub async fn claim_database(ctx: &Context, pool: &str, uid: &str, environment: &str) -> Result<ClaimOutcome> {
    // Logged as the same keys as everywhere else (`namespace`, `name`).
    let (namespace, name) = environment.split_once('/').unwrap_or(("", environment));
    // The inventory holds only what Describe returned (and what reconciles recorded
    // after that), so a database in it claimed by us is a confirmed claim.
    if let Some(existing) = ctx.inventory.read(|s| s.databases_claimed_by(uid)).into_iter().next() {
        if ctx.memory.claims.of(uid).is_some() {
            info!(db_instance_id = %existing.id, pool, namespace, name, "claim confirmed");
            ctx.memory.claims.forget(uid);
        }
        ctx.memory.set_waiting(pool, uid, false);
        return Ok(ClaimOutcome::Claimed(existing));
    }
    if let Some((database, tagged)) = ctx.memory.claims.of(uid) {
        let described = tagged.is_some_and(|at| ctx.inventory.read(|s| s.described_since(at)));
        if !described {
            ctx.inventory.wake();
            return Ok(ClaimOutcome::Pending);
        }
        let seen = ctx
            .inventory
            .read(|s| s.pool_members(pool))
            .into_iter()
            .find(|d| d.id == database);
        match seen {
            // Described after our tag and still without a `claimed-by`: RDS tags are
            // eventually consistent, so this is no loss. Wait; past `RETAG_AFTER`, tag
            // again (the same tags, so idempotent; it covers a tag call that failed
            // before landing).
            Some(spare) if spare.status == DatabaseStatus::Available && !spare.tags.contains_key(tag::CLAIMED_BY) => {
                if !retag_due(tagged) {
                    ctx.inventory.wake();
                    return Ok(ClaimOutcome::Pending);
                }
                info!(db_instance_id = %database, pool, namespace, name, "claim tag still not visible; tagging again");
                return tag_spare(ctx, pool, &spare, uid, environment).await;
            }
            // Another writer's tag won (a stale leader), or the spare went away.
            _ => {
                warn!(db_instance_id = %database, pool, namespace, name, "claim lost; picking another spare");
                ctx.memory.claims.forget(uid);
            }
        }
    }

    let members = ctx.inventory.read(|s| s.pool_members(pool));
    let Some(candidate) = ctx.memory.claims.reserve(&members, uid) else {
        // Record the demand before waking the pool, so it restores a spare for us.
        ctx.memory.set_waiting(pool, uid, true);
        ctx.inventory.notify_pool(pool);
        return Ok(ClaimOutcome::Exhausted);
    };
    ctx.memory.set_waiting(pool, uid, false);
    tag_spare(ctx, pool, &candidate, uid, environment).await
}

/// Tags the reserved `spare` as claimed by `uid`; the next inventory poll that
/// began after the tag confirms it (or shows that another tag won).
async fn tag_spare(ctx: &Context, pool: &str, spare: &Database, uid: &str, environment: &str) -> Result<ClaimOutcome> {
    let (namespace, name) = environment.split_once('/').unwrap_or(("", environment));
    let tags: Tags = BTreeMap::from([
        (tag::CLAIMED_BY.to_owned(), uid.to_owned()),
        (tag::ENVIRONMENT.to_owned(), environment.to_owned()),
    ]);
    let result = ctx.cloud.databases.tag_database(&spare.arn, &tags).await;
    // Even a failed call may have landed: the next description decides either way.
    ctx.memory.claims.tagged(&spare.id, Instant::now());
    ctx.inventory.wake();
    // The pool counts the spare as claimed from now on; let it restore a replacement.
    ctx.inventory.notify_pool(pool);
    result?;
    info!(db_instance_id = %spare.id, pool, namespace, name, "tagged database as claimed; awaiting confirmation");
    Ok(ClaimOutcome::Pending)
}

/// 32 letters and digits: within every RDS engine's limits except Oracle's 30, and
/// free of the characters RDS refuses (`/`, `"`, `@`, space).
pub(crate) fn generate_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Hands out credentials for the claimed database: write the Secret (owned by the
/// environment) with a new password, the SSM SecureString, then set it as the master
/// password.
///
/// The Secret is created, not read first: the first hand-out of every environment
/// is one write and no read, so the operator's reads of the API server do not grow
/// with the number of environments. Only when the name is taken does it read the
/// Secret: a retry after a crash reuses the password already written there (the
/// database may already have it), and a Secret that is not the environment's is
/// left alone.
pub async fn hand_out_credentials(
    ctx: &Context,
    env: &FeatureEnvironment,
    database: &Database,
    parameter: &str,
) -> Result<HandOut> {
    let namespace = env.namespace().ok_or(Error::InvalidObject("metadata.namespace"))?;
    let secret_name = naming::database_secret(&env.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let owner = env
        .controller_owner_ref(&())
        .ok_or(Error::InvalidObject("metadata.uid"))?;
    let mut credentials = Credentials::of(database, generate_password());
    let create = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let fresh = credentials.secret(&secret_name, &namespace, &owner);
    match secrets.create(&create, &fresh).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = secrets.get(&secret_name).await?;
            // A forced apply would take the fields over, and the owner reference we
            // add would have Kubernetes delete someone else's Secret with the
            // environment.
            if !owned_by(&existing, env) {
                warn!(namespace, secret = %secret_name, "a Secret of that name exists and is not this environment's");
                return Ok(HandOut::ForeignSecret(secret_name));
            }
            let written = secret_value(&existing, "password")
                .filter(|_| secret_value(&existing, "dbInstanceIdentifier").as_deref() == Some(database.id.as_str()));
            if let Some(password) = written {
                credentials.password = password;
            }
            let wanted = credentials.secret(&secret_name, &namespace, &owner);
            if existing.data != wanted.data || existing.type_ != wanted.type_ {
                secrets
                    .patch(
                        &secret_name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&wanted),
                    )
                    .await?;
            }
        }
        Err(e) => return Err(e.into()),
    }

    let param_tags: Tags = BTreeMap::from([
        (tag::CLUSTER.to_owned(), ctx.config.cluster_id.clone()),
        (
            tag::ENVIRONMENT.to_owned(),
            naming::environment_key(&namespace, &env.name_any()),
        ),
    ]);
    ctx.cloud
        .parameters
        .put_secret_parameter(parameter, &credentials.json().to_string(), &param_tags)
        .await?;
    ctx.cloud
        .databases
        .set_master_password(&database.id, &credentials.password)
        .await?;
    Ok(HandOut::Done)
}

/// What an environment is told about its database, in its Secret and its parameter.
struct Credentials {
    host: String,
    port: String,
    username: String,
    password: String,
    database: String,
}

impl Credentials {
    fn of(database: &Database, password: String) -> Self {
        Self {
            host: database.endpoint.clone().unwrap_or_default(),
            port: database.port.unwrap_or(5432).to_string(),
            username: database.master_username.clone().unwrap_or_else(|| "postgres".into()),
            password,
            database: database.id.clone(),
        }
    }

    fn entries(&self) -> [(&'static str, &str); 5] {
        [
            ("host", &self.host),
            ("port", &self.port),
            ("username", &self.username),
            ("password", &self.password),
            ("dbInstanceIdentifier", &self.database),
        ]
    }

    /// The environment's Secret, owned by it so Kubernetes deletes it with it.
    fn secret(&self, name: &str, namespace: &str, owner: &OwnerReference) -> Secret {
        let data = self
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                owner_references: Some(vec![owner.clone()]),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The SSM parameter's value, which the instance reads.
    fn json(&self) -> serde_json::Value {
        self.entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// What handing out a database's credentials came to.
#[derive(Debug, PartialEq, Eq)]
pub enum HandOut {
    Done,
    /// A Secret of the name the credentials go to exists and belongs to someone
    /// else: nothing was written, nothing rotated.
    ForeignSecret(String),
}

/// Whether the environment owns the Secret (it wrote it, with an owner reference).
fn owned_by(secret: &Secret, env: &FeatureEnvironment) -> bool {
    let uid = env.uid();
    secret.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref())
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(id: &str, restored_at: i64) -> Database {
        crate::test_fixtures::spare(id, Some(restored_at))
    }

    #[test]
    fn two_claims_never_reserve_the_same_spare() {
        let members = vec![spare("db-old", 1), spare("db-new", 2)];
        let claims = PendingClaims::default();
        assert_eq!(claims.reserve(&members, "a").unwrap().id, "db-new", "newest first");
        assert_eq!(claims.reserve(&members, "b").unwrap().id, "db-old");
        assert!(claims.reserve(&members, "c").is_none(), "both are being claimed");
        claims.forget("a");
        assert_eq!(claims.reserve(&members, "c").unwrap().id, "db-new");
    }

    #[test]
    fn the_pool_sees_a_pending_claim_as_claimed() {
        let members = vec![spare("db-1", 1), spare("db-2", 2)];
        let claims = PendingClaims::default();
        claims.reserve(&members, "a").unwrap();
        let seen = claims.apply_to(members);
        assert_eq!(seen[1].tags.get(tag::CLAIMED_BY).map(String::as_str), Some("a"));
        assert!(!seen[0].tags.contains_key(tag::CLAIMED_BY));
        assert_eq!(claimable(&seen).len(), 1);
    }

    #[test]
    fn a_claim_is_unconfirmed_until_its_tag_call_returns() {
        let members = vec![spare("db-1", 1)];
        let claims = PendingClaims::default();
        claims.reserve(&members, "a").unwrap();
        assert_eq!(claims.of("a"), Some(("db-1".into(), None)));
        let at = Instant::now();
        claims.tagged("db-1", at);
        assert_eq!(claims.of("a"), Some(("db-1".into(), Some(at))));
        assert!(claims.of("b").is_none());
    }
}
