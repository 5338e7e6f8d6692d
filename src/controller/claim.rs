//! Claiming a warm database for an environment and handing out its credentials:
//! tag `claimed-by` then verify, rotate the master password, write the Secret and
//! the SSM SecureString. Every step is idempotent so a crash anywhere is recovered
//! by running it again. Does I/O.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;
use tracing::info;

use super::{Context, Error, FIELD_MANAGER, Result};
use crate::api::FeatureEnvironment;
use crate::cloud::{Database, DatabaseStatus, Tags, tag};
use crate::naming;

pub enum ClaimOutcome {
    Claimed(Database),
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

/// Claims a spare of `pool` for the environment `uid`, or finds the one it already
/// claimed (a crash after tagging leaves the tag; the claim is adopted).
pub async fn claim_database(ctx: &Context, pool: &str, uid: &str, environment: &str) -> Result<ClaimOutcome> {
    if let Some(existing) = ctx.inventory.read(|s| s.databases_claimed_by(uid)).into_iter().next() {
        ctx.set_waiting(pool, uid, false);
        return Ok(ClaimOutcome::Claimed(existing));
    }
    let mut tried = std::collections::BTreeSet::new();
    while let Some(candidate) = reserve_spare(ctx, pool, &tried) {
        tried.insert(candidate.id.clone());
        let outcome = tag_and_verify(ctx, &candidate, uid, environment).await;
        // Recorded in the inventory (on success) before the reservation goes, so no
        // other claim ever sees the spare as free in between.
        ctx.claims.lock().expect("claims lock poisoned").remove(&candidate.id);
        if let Some(fresh) = outcome? {
            info!(database = %fresh.id, pool, environment, "claimed database");
            ctx.inventory.notify_pool(pool);
            ctx.set_waiting(pool, uid, false);
            return Ok(ClaimOutcome::Claimed(fresh));
        }
    }
    // Record the demand before waking the pool, so it restores a spare for us.
    ctx.set_waiting(pool, uid, true);
    ctx.inventory.notify_pool(pool);
    Ok(ClaimOutcome::Exhausted)
}

/// Picks the best spare no other claim in this process is working on, and reserves it.
fn reserve_spare(ctx: &Context, pool: &str, tried: &std::collections::BTreeSet<String>) -> Option<Database> {
    let members = ctx.inventory.read(|s| s.pool_members(pool));
    let mut reserved = ctx.claims.lock().expect("claims lock poisoned");
    let candidate = claimable(&members)
        .into_iter()
        .find(|d| !reserved.contains(&d.id) && !tried.contains(&d.id))?
        .clone();
    reserved.insert(candidate.id.clone());
    Some(candidate)
}

/// Tags the spare as ours, then reads the tag back: another writer (a stale leader
/// during a Lease hand-over) may have tagged it too; the last tag wins and only its
/// owner proceeds. `None` when we lost.
async fn tag_and_verify(ctx: &Context, candidate: &Database, uid: &str, environment: &str) -> Result<Option<Database>> {
    let tags: Tags = BTreeMap::from([
        (tag::CLAIMED_BY.to_owned(), uid.to_owned()),
        (tag::ENVIRONMENT.to_owned(), environment.to_owned()),
    ]);
    ctx.cloud.databases.tag_database(&candidate.arn, &tags).await?;
    match ctx.cloud.databases.get_database(&candidate.id).await? {
        Some(fresh) if fresh.tags.get(tag::CLAIMED_BY).map(String::as_str) == Some(uid) => {
            ctx.inventory.record_database(fresh.clone());
            Ok(Some(fresh))
        }
        _ => Ok(None),
    }
}

fn generate_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Hands out credentials for the claimed database: reuse the password already in the
/// Secret (a retry after a crash) or make one, write the Secret (owned by the
/// environment) and the SSM SecureString, then set it as the master password.
pub async fn hand_out_credentials(
    ctx: &Context,
    env: &FeatureEnvironment,
    database: &Database,
    parameter: &str,
) -> Result<String> {
    let namespace = env.namespace().ok_or(Error::InvalidObject("metadata.namespace"))?;
    let secret_name = naming::database_secret(&env.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = secrets.get_opt(&secret_name).await?;
    let password = existing
        .as_ref()
        .filter(|s| secret_value(s, "dbInstanceIdentifier").as_deref() == Some(database.id.as_str()))
        .and_then(|s| secret_value(s, "password"))
        .unwrap_or_else(generate_password);

    let host = database.endpoint.clone().unwrap_or_default();
    let port = database.port.unwrap_or(5432).to_string();
    let username = database.master_username.clone().unwrap_or_else(|| "postgres".into());
    let data = BTreeMap::from([
        ("host".to_owned(), host.clone()),
        ("port".to_owned(), port.clone()),
        ("username".to_owned(), username.clone()),
        ("password".to_owned(), password.clone()),
        ("dbInstanceIdentifier".to_owned(), database.id.clone()),
    ]);
    let owner = env
        .controller_owner_ref(&())
        .ok_or(Error::InvalidObject("metadata.uid"))?;
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "namespace": namespace,
            "ownerReferences": [owner],
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "type": "Opaque",
        "data": data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect::<BTreeMap<_, _>>(),
    });
    secrets
        .patch(
            &secret_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;

    let value = serde_json::json!({
        "host": host, "port": port, "username": username, "password": password, "dbInstanceIdentifier": database.id,
    });
    let param_tags: Tags = BTreeMap::from([
        (tag::CLUSTER.to_owned(), ctx.config.cluster_id.clone()),
        (
            tag::ENVIRONMENT.to_owned(),
            naming::environment_key(&namespace, &env.name_any()),
        ),
    ]);
    ctx.cloud
        .parameters
        .put_secret_parameter(parameter, &value.to_string(), &param_tags)
        .await?;
    ctx.cloud.databases.set_master_password(&database.id, &password).await?;
    Ok(secret_name)
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}
