//! Removing what an environment made, behind the `featureenv.io/cleanup` finalizer.
//! Needs only the uid and the status, so it works whatever became of the spec or
//! the class; "already gone" is success. I/O.

use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::act::parameter_name;
use super::report::patch_status;
use super::{Identity, identity};
use crate::api::FeatureEnvironment;
use crate::api::environment::{FeatureEnvironmentStatus, Phase};
use crate::cloud::{CloudError, DatabaseStatus, InstanceState, tag};
use crate::controller::{Context, Error, Result};
use crate::naming;

/// Removes everything the environment made; already-gone is success. Returns
/// `CleanupPending` (retried) until AWS confirms every deletion.
pub async fn cleanup(env: &FeatureEnvironment, ctx: &Context) -> Result<Action> {
    let id = identity(env)?;
    let api: Api<FeatureEnvironment> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let current = env.status.clone().unwrap_or_default();
    if current.phase != Phase::Terminating {
        let mut terminating = current.clone();
        terminating.phase = Phase::Terminating;
        patch_status(ctx, &api, env, &terminating).await?;
        ctx.metrics.environment_phase(&id.uid, Some(Phase::Terminating));
    }
    let mut pending = terminate_instances(ctx, &id).await?;
    pending.extend(delete_databases(ctx, &id, &current).await?);
    delete_parameter(ctx, &id).await?;

    if !pending.is_empty() {
        return Err(Error::CleanupPending(pending.join(", ")));
    }
    info!(namespace = %id.namespace, name = %id.name, "cleaned up; releasing finalizer");
    let message = "instance, database and parameter removed".into();
    ctx.event(env, EventType::Normal, "CleanedUp", message).await;
    ctx.metrics.environment_phase(&id.uid, None);
    ctx.memory.forget(&id.uid);
    Ok(Action::await_change())
}

/// Deletes the environment's credentials parameter if it exists. Only then: under
/// the operator's IAM policy a delete of a parameter that is gone is AccessDenied,
/// not ParameterNotFound (the condition on our cluster tag cannot match a parameter
/// without tags, and IAM decides before SSM looks), so "already gone" must be seen
/// by listing (allowed on our tree), not by deleting again.
async fn delete_parameter(ctx: &Context, id: &Identity) -> Result<()> {
    let name = parameter_name(ctx, &id.uid);
    let path = naming::environment_parameters(&ctx.config.ssm_prefix, &ctx.config.cluster_id, &id.uid);
    if !ctx.cloud.parameters.list_parameters(&path).await?.contains(&name) {
        return Ok(());
    }
    match ctx.cloud.parameters.delete_parameter(&name).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Terminates the environment's instances: those in the inventory and those a
/// direct look-up by uid finds, so a launch the inventory has not seen yet is not
/// missed. Returns the ones still on their way out.
async fn terminate_instances(ctx: &Context, id: &Identity) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    let mut instances = ctx.inventory.read(|s| s.all_instances_of(&id.uid));
    for found in ctx.cloud.compute.find_instances(tag::UID, &id.uid).await? {
        instances.retain(|i| i.id != found.id);
        instances.push(found);
    }
    for instance in &instances {
        match instance.state {
            InstanceState::Terminated | InstanceState::ShuttingDown => {}
            _ => match ctx.cloud.compute.terminate_instance(&instance.id).await {
                Ok(()) => {
                    info!(namespace = %id.namespace, name = %id.name, instance_id = %instance.id, "terminating instance");
                    ctx.inventory.wake();
                    pending.push(instance.id.clone());
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            },
        }
    }

    Ok(pending)
}

/// Deletes the databases claimed by this uid, being claimed (tagged, not yet
/// confirmed), or recorded in status. Returns the ones still on their way out.
async fn delete_databases(ctx: &Context, id: &Identity, current: &FeatureEnvironmentStatus) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    let mut databases: Vec<String> = ctx
        .inventory
        .read(|s| s.databases_claimed_by(&id.uid))
        .into_iter()
        .map(|d| d.id)
        .collect();
    if let Some((db, _)) = ctx.memory.claims.of(&id.uid)
        && !databases.contains(&db)
    {
        databases.push(db);
    }
    if let Some(db) = current.database.as_ref().and_then(|d| d.id.clone())
        && !databases.contains(&db)
    {
        databases.push(db);
    }
    for db in &databases {
        match ctx.cloud.databases.get_database(db).await? {
            None => {}
            Some(d) if d.status == DatabaseStatus::Deleting => {}
            // Identifiers are reused once a database is gone: only ever delete the
            // one that carries our claim.
            Some(d) if d.tags.get(tag::CLAIMED_BY) != Some(&id.uid) => {}
            Some(_) => match ctx.cloud.databases.delete_database(db).await {
                Ok(()) => {
                    info!(namespace = %id.namespace, name = %id.name, db_instance_id = %db, "deleting database");
                    ctx.inventory.wake();
                    pending.push(db.clone());
                }
                Err(e) if e.is_not_found() => {}
                // Another delete got there first (a restart, the janitor): it is on its way.
                Err(CloudError::InvalidState { .. }) => pending.push(db.clone()),
                Err(e) => return Err(e.into()),
            },
        }
    }

    Ok(pending)
}
