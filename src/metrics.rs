//! Prometheus metrics (prometheus-client). Labels are bounded sets — controller,
//! error category, AWS service/operation/outcome, phase, warm or cold start, pool or
//! class and member state (pools and classes are a handful, set by the platform
//! team) — never per-environment names. Implements `CallObserver` so the AWS adapter can count calls.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::Phase;
use crate::cloud::CallObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsCallLabels {
    service: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    service: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// The `state` label values of `featureenv_pool_members`.
const POOL_STATES: [&str; 4] = ["warm", "claimed", "creating", "stale"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    pool: String,
    state: &'static str,
}

/// The `state` label values of `featureenv_instance_pool_members`.
const INSTANCE_POOL_STATES: [&str; 4] = ["available", "launching", "stale", "claimed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassStateLabels {
    class: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    aws_calls: Family<AwsCallLabels, Counter>,
    aws_failed_attempts: Family<AttemptLabels, Counter>,
    environments: Family<PhaseLabels, Gauge>,
    time_to_ready: Family<StartLabels, Histogram>,
    pool_members: Family<PoolStateLabels, Gauge>,
    instance_pool_members: Family<ClassStateLabels, Gauge>,
    /// Classes with `instance_pool_members` series (as `pools` for pools).
    classes: Mutex<BTreeSet<String>>,
    /// Pools with `pool_members` series, so a deleted pool's series can be removed
    /// (a Family cannot list its label sets).
    pools: Mutex<BTreeSet<String>>,
    janitor_removals: Family<ResourceLabels, Counter>,
    leader: Gauge,
    phases: Mutex<HashMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("featureenv");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.5, 12))
        });
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        let aws_failed_attempts = Family::<AttemptLabels, Counter>::default();
        let environments = Family::<PhaseLabels, Gauge>::default();
        // Up to an hour: a cold start (restore plus boot) on AWS can pass 20 minutes, and a
        // p90 beyond the largest finite bucket would read as that bucket.
        let time_to_ready = Family::<StartLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
            ])
        });
        let pool_members = Family::<PoolStateLabels, Gauge>::default();
        let instance_pool_members = Family::<ClassStateLabels, Gauge>::default();
        let janitor_removals = Family::<ResourceLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run, by controller", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by controller and error category",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration, by controller",
            reconcile_duration.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls, by service, operation and outcome",
            aws_calls.clone(),
        );
        registry.register(
            "aws_failed_attempts",
            "Failed HTTP attempts to AWS, including those the SDK retried, by service and reason",
            aws_failed_attempts.clone(),
        );
        registry.register("environments", "FeatureEnvironments, by phase", environments.clone());
        registry.register(
            "time_to_ready_seconds",
            "From creation to the first Ready, by start (warm: a spare of the class's warm pool; cold: launched for it)",
            time_to_ready.clone(),
        );
        registry.register(
            "instance_pool_members",
            "Spare instances of a class's warm pool, by class and state (claimed: spares now serving an environment)",
            instance_pool_members.clone(),
        );
        registry.register(
            "pool_members",
            "RdsPool databases, by pool and state",
            pool_members.clone(),
        );
        registry.register(
            "janitor_removals",
            "Orphaned cloud resources removed, by resource",
            janitor_removals.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and may call AWS, else 0",
            leader.clone(),
        );
        // Counters appear on first use, so the first event of a label set is invisible
        // to rate() and increase(); start the known ones at zero.
        for resource in ["instance", "database", "parameter"] {
            let _ = janitor_removals.get_or_create(&ResourceLabels { resource });
        }
        for service in ["ec2", "rds", "ssm", "ecr"] {
            for reason in ["throttled", "client_error", "server_error", "transport"] {
                let _ = aws_failed_attempts.get_or_create(&AttemptLabels { service, reason });
            }
        }
        for start in ["warm", "cold"] {
            let _ = time_to_ready.get_or_create(&StartLabels { start });
        }
        for phase in Phase::ALL {
            environments
                .get_or_create(&PhaseLabels { phase: phase.as_str() })
                .set(0);
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            aws_calls,
            aws_failed_attempts,
            environments,
            time_to_ready,
            pool_members,
            instance_pool_members,
            classes: Mutex::default(),
            pools: Mutex::default(),
            janitor_removals,
            leader,
            phases: Mutex::default(),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        self.reconciles.get_or_create(&ControllerLabels { controller }).inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, controller: &'static str, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller, category })
            .inc();
    }

    /// Records an environment's phase (`None`: it is gone).
    pub fn environment_phase(&self, uid: &str, phase: Option<Phase>) {
        let mut phases = self.phases.lock().expect("metrics lock poisoned");
        match phase {
            Some(p) => phases.insert(uid.to_owned(), p),
            None => phases.remove(uid),
        };
        for p in Phase::ALL {
            let n = phases.values().filter(|v| **v == p).count() as i64;
            self.environments
                .get_or_create(&PhaseLabels { phase: p.as_str() })
                .set(n);
        }
    }

    /// `start`: `warm` or `cold` ([`crate::api::environment::Start::as_str`]).
    pub fn time_to_ready(&self, start: &'static str, seconds: f64) {
        self.time_to_ready
            .get_or_create(&StartLabels { start })
            .observe(seconds);
    }

    /// A class's warm pool as last planned: `[available, launching, stale, claimed]`.
    pub fn instance_pool_members(&self, class: &str, counts: [u32; 4]) {
        self.classes.lock().expect("metrics lock").insert(class.to_owned());
        for (state, n) in INSTANCE_POOL_STATES.into_iter().zip(counts) {
            let labels = ClassStateLabels {
                class: class.to_owned(),
                state,
            };
            self.instance_pool_members.get_or_create(&labels).set(i64::from(n));
        }
    }

    /// Drops the `instance_pool_members` series of classes not in `with_pools` (a
    /// class deleted, or its warm pool removed).
    pub fn retain_classes(&self, with_pools: &BTreeSet<String>) {
        let mut classes = self.classes.lock().expect("metrics lock");
        for gone in classes.iter().filter(|c| !with_pools.contains(*c)) {
            for state in INSTANCE_POOL_STATES {
                self.instance_pool_members.remove(&ClassStateLabels {
                    class: gone.clone(),
                    state,
                });
            }
        }
        classes.retain(|c| with_pools.contains(c));
    }

    pub fn pool_members(&self, pool: &str, warm: u32, claimed: u32, creating: u32, stale: u32) {
        self.pools.lock().expect("metrics lock").insert(pool.to_owned());
        for (state, n) in POOL_STATES.into_iter().zip([warm, claimed, creating, stale]) {
            let labels = PoolStateLabels {
                pool: pool.to_owned(),
                state,
            };
            self.pool_members.get_or_create(&labels).set(i64::from(n));
        }
    }

    /// Drops the `pool_members` series of pools not in `existing`. The pool
    /// controller has no finalizer, so nothing else sees a pool go; without this a
    /// deleted pool would be exported with its last counts until a restart.
    pub fn retain_pools(&self, existing: &BTreeSet<String>) {
        let mut pools = self.pools.lock().expect("metrics lock");
        for gone in pools.iter().filter(|p| !existing.contains(*p)) {
            for state in POOL_STATES {
                self.pool_members.remove(&PoolStateLabels {
                    pool: gone.clone(),
                    state,
                });
            }
        }
        pools.retain(|p| existing.contains(p));
    }

    /// Whether this replica leads (and may call AWS).
    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn janitor_removed(&self, resource: &'static str) {
        self.janitor_removals.get_or_create(&ResourceLabels { resource }).inc();
    }
}

impl CallObserver for Metrics {
    fn observe(&self, service: &'static str, operation: &'static str, outcome: &'static str) {
        self.aws_calls
            .get_or_create(&AwsCallLabels {
                service,
                operation,
                outcome,
            })
            .inc();
    }

    fn failed_attempt(&self, service: &'static str, reason: &'static str) {
        self.aws_failed_attempts
            .get_or_create(&AttemptLabels { service, reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counts_without_object_labels() {
        let m = Metrics::new();
        m.reconciled("featureenvironment", Duration::from_millis(3));
        m.reconcile_error("featureenvironment", "Throttled");
        m.observe("ec2", "RunInstances", "ok");
        m.environment_phase("uid-1", Some(Phase::Ready));
        m.environment_phase("uid-2", Some(Phase::Ready));
        m.environment_phase("uid-2", None);
        let text = m.encode();
        assert!(
            text.contains(
                r#"featureenv_reconcile_errors_total{controller="featureenvironment",category="Throttled"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"featureenv_aws_calls_total{service="ec2",operation="RunInstances",outcome="ok"} 1"#));
        assert!(text.contains(r#"featureenv_environments{phase="Ready"} 1"#));
        assert!(!text.contains("uid-1"));
        m.pool_members("integration", 2, 1, 0, 0);
        m.pool_members("analytics", 0, 0, 1, 0);
        let text = m.encode();
        assert!(
            text.contains(r#"featureenv_pool_members{pool="integration",state="warm"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"featureenv_pool_members{pool="analytics",state="creating"} 1"#),
            "{text}"
        );
        m.retain_pools(&BTreeSet::from(["integration".to_owned()]));
        let text = m.encode();
        assert!(
            !text.contains(r#"pool="analytics""#),
            "a deleted pool's series stay:\n{text}"
        );
        assert!(
            text.contains(r#"featureenv_pool_members{pool="integration",state="warm"} 2"#),
            "{text}"
        );
    }
}
