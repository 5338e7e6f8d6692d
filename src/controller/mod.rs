//! The controllers: one module per kind, each a pipeline of observe → validate/plan
//! (pure) → act → status (pure). This module holds what they share: the context,
//! the error type with its stable categories, the error policy and the reconcile
//! wrapper that records metrics.

mod cache;
pub mod claim;
pub mod environment;
mod memory;
pub mod pool;
pub mod warm_pool;

use std::sync::Arc;
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
    /// What this process remembers between reconciles (see `memory`).
    pub memory: memory::Memory,
    /// Held while an environment is checked against its class's `maxPerNamespace`
    /// and, if admitted, its launch token is written.
    pub(crate) admissions: tokio::sync::Mutex<()>,
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
            memory: memory::Memory::default(),
            admissions: tokio::sync::Mutex::new(()),
        }
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
    let attempt = ctx.memory.failed(&memory_key(obj.as_ref()));
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
        ctx.memory.succeeded(&memory_key(obj.as_ref()));
    }
    result
}

/// The key process memory files an object under: its uid (what a deletion
/// forgets), else its namespace and name.
fn memory_key<K: Resource>(obj: &K) -> String {
    obj.meta()
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()))
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
