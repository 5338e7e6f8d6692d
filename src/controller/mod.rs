//! The controllers: one module per kind, each a pipeline of observe → validate/plan
//! (pure) → act → status (pure). This module holds what they share: the context,
//! the error type with its stable categories, the error policy and the reconcile
//! wrapper that records metrics.

mod cache;
pub mod claim;
pub mod environment;
pub mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use rand::Rng;
use tracing::warn;

use crate::api::FeatureEnvironmentClass;
use crate::cloud::{Cloud, CloudError};
use crate::config::Config;
use crate::inventory::Inventory;
use crate::metrics::Metrics;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "featureenv-operator";

/// Everything a reconcile needs, shared by all reconciles.
pub struct Context {
    pub client: kube::Client,
    /// Every FeatureEnvironmentClass, as last watched: a reconcile reads its class
    /// here instead of asking the API server each time.
    pub classes: Store<FeatureEnvironmentClass>,
    pub config: Config,
    pub cloud: Cloud,
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Spares this process tagged as claimed and the inventory does not yet show.
    pub claims: claim::PendingClaims,
    /// Held while an environment is checked against its class's `maxPerNamespace`
    /// and, if admitted, its launch token is written.
    pub(crate) admissions: tokio::sync::Mutex<()>,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Environments waiting for a spare, per pool: the pool restores one for each.
    pool_demand: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    /// `uid/database` pairs whose credentials this process has handed out. A
    /// reconcile may run on a cached object whose status does not show that yet;
    /// this keeps it from rotating the password again (on RDS each rotation is a
    /// ModifyDBInstance that resets the master credentials for a while).
    credentials_handed_out: Mutex<std::collections::HashSet<String>>,
    /// `uid/instance` pairs whose database parameter this process has tagged with the
    /// instance's ARN (the only instance the instance profile lets read it).
    parameters_bound: Mutex<std::collections::HashSet<String>>,
    /// Pool spares whose master password this process has replaced (see
    /// `pool::reset_spare_passwords`).
    pub(crate) spares_reset: Mutex<std::collections::HashSet<String>>,
    /// Newest snapshot per pool source, for the slow poll interval.
    pub(crate) snapshots: cache::TtlCache<crate::cloud::Snapshot>,
    /// Newest image per class selector, for the slow poll interval (AMIs are baked
    /// daily; an environment's AMI is pinned in its status once chosen).
    pub(crate) images: cache::TtlCache<Option<crate::cloud::Image>>,
    /// Digest per `repository:tag`, for ten seconds only: long enough to serve a
    /// burst, short enough that a tag pushed again is not deployed at its previous
    /// digest.
    pub(crate) digests: cache::TtlCache<Option<String>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        classes: Store<FeatureEnvironmentClass>,
        config: Config,
        cloud: Cloud,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: config.holder_id.clone(),
        };
        Self {
            snapshots: cache::TtlCache::new(config.slow_poll_interval),
            images: cache::TtlCache::new(config.slow_poll_interval),
            digests: cache::TtlCache::new(Duration::from_secs(10)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            classes,
            config,
            cloud,
            inventory,
            metrics,
            claims: claim::PendingClaims::default(),
            admissions: tokio::sync::Mutex::new(()),
            failures: Mutex::default(),
            pool_demand: Mutex::default(),
            credentials_handed_out: Mutex::default(),
            parameters_bound: Mutex::default(),
            spares_reset: Mutex::default(),
        }
    }

    /// Records whether environment `uid` is waiting for a spare of `pool`.
    pub fn set_waiting(&self, pool: &str, uid: &str, waiting: bool) {
        let mut demand = self.pool_demand.lock().expect("pool demand lock poisoned");
        let entry = demand.entry(pool.to_owned()).or_default();
        if waiting {
            entry.insert(uid.to_owned());
        } else {
            entry.remove(uid);
        }
    }

    /// Records that the credentials of `database` were handed out to `uid`.
    pub fn credentials_handed_out(&self, uid: &str, database: &str) {
        self.credentials_handed_out
            .lock()
            .expect("credentials lock poisoned")
            .insert(format!("{uid}/{database}"));
    }

    /// Whether this process handed out the credentials of `database` to `uid`.
    pub fn has_handed_out_credentials(&self, uid: &str, database: &str) -> bool {
        self.credentials_handed_out
            .lock()
            .expect("credentials lock poisoned")
            .contains(&format!("{uid}/{database}"))
    }

    /// Forgets what was handed out to a deleted environment.
    pub fn forget_credentials(&self, uid: &str) {
        let prefix = format!("{uid}/");
        self.credentials_handed_out
            .lock()
            .expect("credentials lock poisoned")
            .retain(|k| !k.starts_with(&prefix));
        self.parameters_bound
            .lock()
            .expect("parameters lock poisoned")
            .retain(|k| !k.starts_with(&prefix));
    }

    /// Records that `uid`'s database parameter carries `instance`'s ARN.
    pub fn parameter_bound(&self, uid: &str, instance: &str) {
        self.parameters_bound
            .lock()
            .expect("parameters lock poisoned")
            .insert(format!("{uid}/{instance}"));
    }

    /// Whether this process tagged `uid`'s database parameter with `instance`'s ARN.
    pub fn has_bound_parameter(&self, uid: &str, instance: &str) -> bool {
        self.parameters_bound
            .lock()
            .expect("parameters lock poisoned")
            .contains(&format!("{uid}/{instance}"))
    }

    /// Forgets a deleted environment's demand on every pool.
    pub fn clear_waiting(&self, uid: &str) {
        for waiting in self.pool_demand.lock().expect("pool demand lock poisoned").values_mut() {
            waiting.remove(uid);
        }
    }

    /// How many environments wait for a spare of `pool`.
    pub fn pool_demand(&self, pool: &str) -> u32 {
        let demand = self.pool_demand.lock().expect("pool demand lock poisoned");
        demand.get(pool).map_or(0, |w| w.len() as u32)
    }

    /// Publishes a Kubernetes Event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "publishing event failed");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("waiting for AWS to confirm the deletion of {0}")]
    CleanupPending(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object is missing {0}")]
    InvalidObject(&'static str),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl Error {
    /// Stable label for metrics, conditions and Events.
    pub fn category(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Self::Cloud(e) => e.category(),
            Self::Kube(_) => "KubernetesAPI",
            Self::CleanupPending(_) => "CleanupPending",
            Self::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.category(),
                _ => "Finalizer",
            },
            Self::InvalidObject(_) => "InvalidObject",
            Self::Serialize(_) => "Serialize",
        }
    }

    fn cloud(&self) -> Option<&CloudError> {
        use kube::runtime::finalizer::Error as F;
        match self {
            Self::Cloud(e) => Some(e),
            Self::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.cloud(),
                _ => None,
            },
            _ => None,
        }
    }

    fn is_cleanup_pending(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Self::CleanupPending(_) => true,
            Self::Finalizer(f) => matches!(f.as_ref(), F::CleanupFailed(e) if e.is_cleanup_pending()),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long to wait after the `attempt`-th consecutive failure (1-based). Pure but
/// for the jitter, which `rng` supplies.
pub fn retry_delay(error: &Error, attempt: u32, fast_poll: Duration, rng: &mut impl Rng) -> Option<Duration> {
    if matches!(error, Error::InvalidObject(_)) {
        // A malformed object never hot-loops: wait for it to change.
        return None;
    }
    if error.is_cleanup_pending() {
        return Some(fast_poll);
    }
    let exp = 2u64.saturating_pow(attempt.saturating_sub(1).min(16));
    match error.cloud() {
        Some(CloudError::Throttled { .. } | CloudError::InsufficientCapacity { .. }) => {
            // Jittered exponential backoff: full jitter over [base/2, base], capped.
            let base = Duration::from_secs(exp).min(Duration::from_secs(300));
            let jitter = rng.random_range(0.5..=1.0);
            Some(base.mul_f64(jitter).max(Duration::from_millis(500)))
        }
        _ => Some(Duration::from_secs(exp).min(Duration::from_secs(60))),
    }
}

/// Shared `error_policy`: count, log, and choose the backoff.
pub fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>, controller: &'static str) -> Action {
    let key = format!(
        "{controller}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    let attempt = {
        let mut failures = ctx.failures.lock().expect("failures lock poisoned");
        let n = failures.entry(key).or_default();
        *n += 1;
        *n
    };
    ctx.metrics.reconcile_error(controller, error.category());
    let delay = retry_delay(error, attempt, ctx.config.fast_poll_interval, &mut rand::rng());
    if error.is_cleanup_pending() {
        tracing::debug!(name = %obj.name_any(), error = %error, "cleanup pending");
    } else {
        warn!(controller, namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any(), category = error.category(), attempt, error = %error, "reconcile failed");
    }
    delay.map_or_else(Action::await_change, Action::requeue)
}

/// Runs one reconcile with metrics and resets the failure count on success.
pub async fn instrumented<K, F>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    controller: &'static str,
    reconcile: F,
) -> Result<Action>
where
    K: Resource,
    F: std::future::Future<Output = Result<Action>>,
{
    let started = Instant::now();
    let result = reconcile.await;
    ctx.metrics.reconciled(controller, started.elapsed());
    if result.is_ok() {
        let key = format!(
            "{controller}/{}/{}",
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        );
        ctx.failures.lock().expect("failures lock poisoned").remove(&key);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn throttled() -> Error {
        Error::Cloud(CloudError::Throttled {
            operation: "RunInstances",
            message: "slow down".into(),
        })
    }

    #[test]
    fn throttling_backs_off_exponentially_with_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let fast = Duration::from_secs(2);
        let d1 = retry_delay(&throttled(), 1, fast, &mut rng).unwrap();
        let d5 = retry_delay(&throttled(), 5, fast, &mut rng).unwrap();
        let d30 = retry_delay(&throttled(), 30, fast, &mut rng).unwrap();
        assert!(d1 <= Duration::from_secs(1));
        assert!(d5 >= Duration::from_secs(8) && d5 <= Duration::from_secs(16), "{d5:?}");
        assert!(d30 <= Duration::from_secs(300));
        let samples: std::collections::BTreeSet<_> = (0..20)
            .map(|_| retry_delay(&throttled(), 6, fast, &mut rng).unwrap())
            .collect();
        assert!(samples.len() > 1, "jitter spreads retries");
    }

    #[test]
    fn other_errors_requeue_bounded_and_invalid_objects_wait() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let other = Error::Cloud(CloudError::Other {
            operation: "X",
            message: "boom".into(),
            source: None,
        });
        assert_eq!(
            retry_delay(&other, 20, Duration::from_secs(2), &mut rng),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_delay(&Error::InvalidObject("uid"), 1, Duration::from_secs(2), &mut rng),
            None
        );
        assert_eq!(
            retry_delay(
                &Error::CleanupPending("i-1".into()),
                9,
                Duration::from_secs(2),
                &mut rng
            ),
            Some(Duration::from_secs(2))
        );
    }
}
