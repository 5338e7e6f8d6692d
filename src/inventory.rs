//! The shared, batched view of our cloud resources. One paginated DescribeInstances
//! and one DescribeDBInstances per interval — fast while anything is in transition,
//! slow when all is stable — feed an in-memory cache that reconciles read. A change
//! to a resource triggers the reconcile of its owner (environment, pool, or the
//! class whose warm pool a spare instance belongs to). The cost
//! of polling does not grow with the number of environments. Does I/O (the poll loop);
//! the cache and the diff are plain synchronous state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, warn};

use crate::api::{FeatureEnvironment, FeatureEnvironmentClass, RdsPool};
use crate::cloud::{Cloud, CloudResult, Database, DatabaseStatus, Instance, InstanceState, tag};

/// Our cloud resources as last described.
#[derive(Debug, Default, Clone)]
pub struct CloudState {
    pub instances: BTreeMap<String, Instance>,
    pub databases: BTreeMap<String, Database>,
    pub refreshed_at: Option<Timestamp>,
    /// When the Describe calls behind this state began. A write AWS completed before
    /// this moment shows in the state (a claim is confirmed this way).
    pub described_at: Option<std::time::Instant>,
}

/// Whether `instance` has tagged the outcome of the update it was sent, if any.
fn update_reported(instance: &Instance, updating: &BTreeMap<String, String>) -> bool {
    let Some(token) = updating.get(&instance.id) else {
        return true;
    };
    instance
        .tags
        .get(tag::SERVICES)
        .and_then(|v| v.split_once(':'))
        .is_some_and(|(_, t)| t == token)
}

impl CloudState {
    /// Whether this state comes from Describe calls that began after `moment`.
    pub fn described_since(&self, moment: std::time::Instant) -> bool {
        self.described_at.is_some_and(|at| at > moment)
    }

    /// Whether anything is on its way somewhere: booting, bootstrapping, stopping,
    /// shutting down, restoring, being modified, stopped, started or deleted. Decides the poll interval.
    /// `given_up` instances (their environment failed) are not waited for;
    /// `updating` instances (id → update token) are, until they tag the update's
    /// outcome.
    pub fn in_transition(&self, given_up: &BTreeSet<String>, updating: &BTreeMap<String, String>) -> bool {
        self.instances.values().any(|i| match i.state {
            InstanceState::Pending | InstanceState::ShuttingDown | InstanceState::Stopping => true,
            InstanceState::Running if given_up.contains(&i.id) => false,
            InstanceState::Running => !i.tags.contains_key(tag::BOOTSTRAP) || !update_reported(i, updating),
            _ => false,
        }) || self
            .databases
            .values()
            // A stopped (sleeping) database is at rest; stopping and starting are not.
            .any(|d| !matches!(d.status, DatabaseStatus::Available | DatabaseStatus::Stopped))
    }

    /// The live (not terminated) instances of an environment.
    pub fn instances_of(&self, uid: &str) -> Vec<Instance> {
        self.instances
            .values()
            .filter(|i| i.tags.get(tag::UID).map(String::as_str) == Some(uid) && !i.state.is_gone())
            .cloned()
            .collect()
    }

    /// Every instance of an environment, terminated ones included.
    pub fn all_instances_of(&self, uid: &str) -> Vec<Instance> {
        self.instances
            .values()
            .filter(|i| i.tags.get(tag::UID).map(String::as_str) == Some(uid))
            .cloned()
            .collect()
    }

    pub fn databases_claimed_by(&self, uid: &str) -> Vec<Database> {
        self.databases
            .values()
            .filter(|d| d.tags.get(tag::CLAIMED_BY).map(String::as_str) == Some(uid))
            .cloned()
            .collect()
    }

    /// The instances of a class's warm pool, claimed and terminated ones included
    /// (a launch is known to have happened even once its spare is gone).
    pub fn warm_pool_members(&self, class: &str) -> Vec<Instance> {
        self.instances
            .values()
            .filter(|i| i.tags.get(tag::WARM_POOL).map(String::as_str) == Some(class))
            .cloned()
            .collect()
    }

    pub fn pool_members(&self, pool: &str) -> Vec<Database> {
        self.databases
            .values()
            .filter(|d| d.tags.get(tag::POOL).map(String::as_str) == Some(pool))
            .cloned()
            .collect()
    }
}

/// Owners whose resources changed between two descriptions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `namespace/name` of environments.
    pub environments: Vec<(String, String)>,
    pub pools: Vec<String>,
    /// Classes whose warm pool's instances changed.
    pub classes: Vec<String>,
}

/// Compares two descriptions and names the owners of what changed, appeared or
/// disappeared. Pure.
pub fn diff(old: &CloudState, new: &CloudState) -> Changes {
    let mut envs = std::collections::BTreeSet::new();
    let mut pools = std::collections::BTreeSet::new();
    let mut classes = std::collections::BTreeSet::new();
    let mut owner_of = |tags: &crate::cloud::Tags| {
        if let Some(class) = tags.get(tag::WARM_POOL) {
            classes.insert(class.clone());
        }
        if let Some((ns, name)) = tags.get(tag::ENVIRONMENT).and_then(|e| e.split_once('/')) {
            envs.insert((ns.to_owned(), name.to_owned()));
        }
        if let Some(pool) = tags.get(tag::POOL) {
            pools.insert(pool.clone());
        }
    };
    for (id, i) in &new.instances {
        if old.instances.get(id) != Some(i) {
            owner_of(&i.tags);
        }
    }
    for (id, i) in &old.instances {
        if !new.instances.contains_key(id) {
            owner_of(&i.tags);
        }
    }
    for (id, d) in &new.databases {
        if old.databases.get(id) != Some(d) {
            owner_of(&d.tags);
        }
    }
    for (id, d) in &old.databases {
        if !new.databases.contains_key(id) {
            owner_of(&d.tags);
        }
    }
    Changes {
        environments: envs.into_iter().collect(),
        pools: pools.into_iter().collect(),
        classes: classes.into_iter().collect(),
    }
}

/// Receivers of reconcile triggers, taken once by the controllers.
pub struct Triggers {
    pub environments: mpsc::UnboundedReceiver<ObjectRef<FeatureEnvironment>>,
    pub pools: mpsc::UnboundedReceiver<ObjectRef<RdsPool>>,
    pub classes: mpsc::UnboundedReceiver<ObjectRef<FeatureEnvironmentClass>>,
}

impl Triggers {
    /// The environment triggers as a stream for `Controller::reconcile_on`.
    pub fn environment_stream(
        receiver: mpsc::UnboundedReceiver<ObjectRef<FeatureEnvironment>>,
    ) -> impl Stream<Item = ObjectRef<FeatureEnvironment>> {
        receiver_stream(receiver)
    }

    /// The pool triggers as a stream for `Controller::reconcile_on`.
    pub fn pool_stream(
        receiver: mpsc::UnboundedReceiver<ObjectRef<RdsPool>>,
    ) -> impl Stream<Item = ObjectRef<RdsPool>> {
        receiver_stream(receiver)
    }

    /// The warm-pool triggers as a stream for `Controller::reconcile_on`.
    pub fn class_stream(
        receiver: mpsc::UnboundedReceiver<ObjectRef<FeatureEnvironmentClass>>,
    ) -> impl Stream<Item = ObjectRef<FeatureEnvironmentClass>> {
        receiver_stream(receiver)
    }
}

fn receiver_stream<T>(receiver: mpsc::UnboundedReceiver<T>) -> impl Stream<Item = T> {
    futures::stream::unfold(receiver, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// A resource a reconcile recorded itself.
enum Record {
    Instance(Instance),
    Database(Database),
}

pub struct Inventory {
    cloud: Cloud,
    cluster_id: String,
    state: RwLock<CloudState>,
    /// What reconciles recorded themselves (a launch, a claim), with when. A refresh
    /// whose Describe began before a record was made may not show it yet; such
    /// records are laid over that refresh's result instead of being lost, so a claim
    /// never looks unclaimed to the next reconcile.
    recent: std::sync::Mutex<Vec<(std::time::Instant, Record)>>,
    /// Instances whose bootstrap nobody waits for any more (their environment
    /// failed): without them, a failed environment would keep the poll fast until it
    /// is deleted.
    given_up: std::sync::Mutex<BTreeSet<String>>,
    /// Instances sent a services update (id → token), until they tag its outcome.
    updating: std::sync::Mutex<BTreeMap<String, String>>,
    wake: Notify,
    environments: mpsc::UnboundedSender<ObjectRef<FeatureEnvironment>>,
    pools: mpsc::UnboundedSender<ObjectRef<RdsPool>>,
    classes: mpsc::UnboundedSender<ObjectRef<FeatureEnvironmentClass>>,
}

impl Inventory {
    pub fn new(cloud: Cloud, cluster_id: impl Into<String>) -> (Arc<Self>, Triggers) {
        let (env_tx, env_rx) = mpsc::unbounded_channel();
        let (pool_tx, pool_rx) = mpsc::unbounded_channel();
        let (class_tx, class_rx) = mpsc::unbounded_channel();
        let inventory = Arc::new(Self {
            cloud,
            cluster_id: cluster_id.into(),
            state: RwLock::default(),
            recent: std::sync::Mutex::default(),
            given_up: std::sync::Mutex::default(),
            updating: std::sync::Mutex::default(),
            wake: Notify::new(),
            environments: env_tx,
            pools: pool_tx,
            classes: class_tx,
        });
        (
            inventory,
            Triggers {
                environments: env_rx,
                pools: pool_rx,
                classes: class_rx,
            },
        )
    }

    pub fn read<T>(&self, f: impl FnOnce(&CloudState) -> T) -> T {
        f(&self.state.read().expect("inventory lock poisoned"))
    }

    pub fn is_ready(&self) -> bool {
        self.read(|s| s.refreshed_at.is_some())
    }

    /// Whether the last description began within `bound` of `now`. A stale view
    /// must not be taken for the truth: `/readyz` reports it, and no readiness
    /// timeout is counted against an environment while it lasts.
    pub fn is_fresh(&self, now: std::time::Instant, bound: Duration) -> bool {
        self.read(|s| {
            s.described_at
                .is_some_and(|at| now.saturating_duration_since(at) <= bound)
        })
    }

    /// Describes everything once (two batched calls) and triggers the owners of
    /// whatever changed.
    pub async fn refresh(&self) -> CloudResult<()> {
        let started = std::time::Instant::now();
        let (instances, databases) = tokio::try_join!(
            self.cloud.compute.list_instances(&self.cluster_id),
            self.cloud.databases.list_databases(&self.cluster_id)
        )?;
        let mut new = CloudState {
            instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
            databases: databases.into_iter().map(|d| (d.id.clone(), d)).collect(),
            refreshed_at: Some(Timestamp::now()),
            described_at: Some(started),
        };
        let changes = {
            let mut state = self.state.write().expect("inventory lock poisoned");
            // Under the state lock, so no record slips between the two steps.
            let mut recent = self.recent.lock().expect("inventory lock poisoned");
            recent.retain(|(at, _)| *at >= started);
            for (_, record) in recent.iter() {
                match record {
                    Record::Instance(i) => {
                        new.instances.insert(i.id.clone(), i.clone());
                    }
                    Record::Database(d) => {
                        new.databases.insert(d.id.clone(), d.clone());
                    }
                }
            }
            let changes = diff(&state, &new);
            *state = new;
            changes
        };
        self.trigger(changes);
        Ok(())
    }

    fn trigger(&self, changes: Changes) {
        for (ns, name) in changes.environments {
            debug!(namespace = %ns, name = %name, "cloud state changed");
            let _ = self.environments.send(ObjectRef::new(&name).within(&ns));
        }
        for pool in changes.pools {
            let _ = self.pools.send(ObjectRef::new(&pool));
        }
        for class in changes.classes {
            let _ = self.classes.send(ObjectRef::new(&class));
        }
    }

    /// Asks for a warm-pool reconcile of `class` (a claim took one of its spares).
    pub fn notify_class(&self, class: &str) {
        let _ = self.classes.send(ObjectRef::new(class));
    }

    /// Asks for a pool reconcile (e.g. after a claim took one of its spares).
    pub fn notify_pool(&self, pool: &str) {
        let _ = self.pools.send(ObjectRef::new(pool));
    }

    /// Records an instance we just launched or looked up, so the next reconcile
    /// sees it before the next poll does.
    pub fn record_instance(&self, instance: Instance) {
        self.record(Record::Instance(instance));
    }

    pub fn record_database(&self, database: Database) {
        self.record(Record::Database(database));
    }

    fn record(&self, record: Record) {
        let mut state = self.state.write().expect("inventory lock poisoned");
        match &record {
            Record::Instance(i) => {
                state.instances.insert(i.id.clone(), i.clone());
            }
            Record::Database(d) => {
                state.databases.insert(d.id.clone(), d.clone());
            }
        }
        self.recent
            .lock()
            .expect("inventory lock poisoned")
            .push((std::time::Instant::now(), record));
        drop(state);
        self.wake.notify_one();
    }

    /// Stops waiting for the bootstrap of `instance_id`: its environment failed.
    pub fn give_up_on(&self, instance_id: &str) {
        self.given_up
            .lock()
            .expect("inventory lock poisoned")
            .insert(instance_id.to_owned());
    }

    /// Polls fast until `instance_id` tags the outcome of update `token`.
    pub fn await_update(&self, instance_id: &str, token: &str) {
        self.updating
            .lock()
            .expect("inventory lock poisoned")
            .insert(instance_id.to_owned(), token.to_owned());
        self.wake();
    }

    /// Whether anything is in transition that someone still waits for.
    pub fn in_transition(&self) -> bool {
        let mut given_up = self.given_up.lock().expect("inventory lock poisoned");
        let mut updating = self.updating.lock().expect("inventory lock poisoned");
        self.read(|s| {
            // Forget instances that are no longer described, and updates reported.
            given_up.retain(|id| s.instances.contains_key(id));
            updating.retain(|id, _| s.instances.get(id).is_some_and(|i| !i.state.is_gone()));
            let reported: Vec<String> = updating
                .keys()
                .filter(|id| s.instances.get(*id).is_some_and(|i| update_reported(i, &updating)))
                .cloned()
                .collect();
            for id in reported {
                updating.remove(&id);
            }
            s.in_transition(&given_up, &updating)
        })
    }

    /// Polls sooner than the interval would (something was just launched or deleted).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The poll loop. Errors keep the previous description and retry with
    /// jittered exponential backoff (see [`retry_delay`]); they are reported
    /// through `on_error`.
    pub async fn run(self: Arc<Self>, fast: Duration, slow: Duration, on_error: impl Fn(&crate::cloud::CloudError)) {
        let mut failures = 0;
        loop {
            let interval = match self.refresh().await {
                Ok(()) => {
                    failures = 0;
                    if self.in_transition() { fast } else { slow }
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "inventory refresh failed");
                    on_error(&e);
                    retry_delay(failures, fast, slow, &mut rand::rng())
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                // A wake-up right after a launch still waits a little: AWS needs a
                // moment before the new resource shows in Describe.
                _ = self.wake.notified() => tokio::time::sleep(fast.min(Duration::from_millis(500))).await,
            }
        }
    }
}

/// How long the poll waits after its `failures`-th failure in a row: from the fast
/// interval, doubling each time, never longer than the slow interval, and jittered
/// over the upper half so that a throttled account is not hit again in lockstep.
/// (Retrying every fast interval is what keeps an account throttled.)
pub fn retry_delay(failures: u32, fast: Duration, slow: Duration, rng: &mut impl rand::Rng) -> Duration {
    let base = fast
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
        .min(slow.max(fast));
    base.mul_f64(rng.random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Tags;

    #[test]
    fn failed_polls_back_off_with_jitter_up_to_the_slow_interval() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (fast, slow) = (Duration::from_secs(2), Duration::from_secs(60));
        for (failures, most) in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (40, 60)] {
            let d = retry_delay(failures, fast, slow, &mut rng);
            let most = Duration::from_secs(most);
            assert!(d <= most && d >= most / 2, "failure {failures}: {d:?}");
        }
        let spread: BTreeSet<Duration> = (0..20).map(|_| retry_delay(4, fast, slow, &mut rng)).collect();
        assert!(spread.len() > 1, "jittered");
    }

    /// Under sustained throttling the poll backs off instead of retrying every fast
    /// interval, and returns to its pace once a poll succeeds.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_poll_backs_off_and_recovers() {
        use crate::cloud::fake::{FakeCloud, FaultKind, Trigger};
        let fake = FakeCloud::new(1);
        fake.fail("DescribeInstances", Trigger::Always, FaultKind::Throttled);
        let (inventory, _triggers) = Inventory::new(Cloud::from(fake.clone()), "c");
        let (fast, slow) = (Duration::from_secs(1), Duration::from_secs(30));
        let poll = tokio::spawn(inventory.clone().run(fast, slow, |_| {}));
        tokio::time::sleep(Duration::from_secs(120)).await;
        let throttled = fake.call_count("DescribeInstances");
        // Every second would be 120; backing off (1, 2, 4, 8, 16, then 30 s, each
        // at least halved) gives 5..=12.
        assert!(
            (5..=12).contains(&throttled),
            "{throttled} polls in 120 s of throttling"
        );
        assert!(!inventory.is_ready());
        fake.clear_faults();
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(inventory.is_ready(), "a poll succeeded within the capped delay");
        poll.abort();
    }

    fn instance(id: &str, env: &str, state: InstanceState, tags: &[(&str, &str)]) -> Instance {
        let mut t: Tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        t.insert(tag::ENVIRONMENT.into(), env.into());
        t.insert(tag::UID.into(), format!("uid-{env}"));
        Instance {
            id: id.into(),
            arn: format!("arn:aws:ec2:us-east-1:123456789012:instance/{id}"),
            instance_type: "t3.large".into(),
            image_id: "ami-1".into(),
            state,
            public_ip: None,
            public_dns: None,
            private_ip: None,
            launched_at: None,
            tags: t,
        }
    }

    #[test]
    fn diff_names_owners_of_changed_resources_only() {
        let mut old = CloudState::default();
        old.instances
            .insert("i-1".into(), instance("i-1", "ns/a", InstanceState::Running, &[]));
        old.instances
            .insert("i-2".into(), instance("i-2", "ns/b", InstanceState::Running, &[]));
        let mut new = old.clone();
        new.instances.insert(
            "i-1".into(),
            instance("i-1", "ns/a", InstanceState::Running, &[(tag::BOOTSTRAP, "complete")]),
        );
        new.instances
            .insert("i-3".into(), instance("i-3", "ns/c", InstanceState::Pending, &[]));
        new.instances.remove("i-2");
        let changes = diff(&old, &new);
        assert_eq!(
            changes.environments,
            vec![
                ("ns".into(), "a".into()),
                ("ns".into(), "b".into()),
                ("ns".into(), "c".into())
            ]
        );
        assert!(diff(&new, &new).environments.is_empty());
    }

    #[tokio::test]
    async fn a_record_made_during_a_refresh_survives_it() {
        use crate::cloud::fake::FakeCloud;
        use crate::cloud::{Databases, RestoreRequest};
        let fake = FakeCloud::new(1);
        fake.add_snapshot("snap", "db", Timestamp::now());
        let tags: crate::cloud::Tags = [(tag::CLUSTER.to_string(), "c".to_string())].into();
        let restored = fake
            .restore_database(&RestoreRequest {
                id: "fe-1".into(),
                snapshot_id: "snap".into(),
                instance_class: "db.t3.micro".into(),
                subnet_group: None,
                security_group_ids: vec![],
                tags,
            })
            .await
            .unwrap();
        // The describe takes 200 ms; the claim is recorded while it is in flight and
        // before AWS reports the tag.
        fake.set_latency(std::time::Duration::from_millis(200));
        let (inventory, _triggers) = Inventory::new(crate::cloud::Cloud::from(fake.clone()), "c");
        let refresh = tokio::spawn({
            let inventory = inventory.clone();
            async move { inventory.refresh().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut claimed = restored.clone();
        claimed.tags.insert(tag::CLAIMED_BY.into(), "uid-a".into());
        inventory.record_database(claimed);
        refresh.await.unwrap().unwrap();
        assert_eq!(
            inventory.read(|s| s.databases_claimed_by("uid-a").len()),
            1,
            "the claim was lost"
        );
        // A refresh that starts after the record no longer needs it.
        fake.set_latency(std::time::Duration::ZERO);
        inventory.refresh().await.unwrap();
        assert_eq!(
            inventory.read(|s| s.databases_claimed_by("uid-a").len()),
            0,
            "AWS is the truth again"
        );
    }

    #[tokio::test]
    async fn only_a_describe_begun_after_a_write_confirms_it() {
        use crate::cloud::fake::FakeCloud;
        let fake = FakeCloud::new(1);
        fake.set_latency(std::time::Duration::from_millis(100));
        let (inventory, _triggers) = Inventory::new(crate::cloud::Cloud::from(fake.clone()), "c");
        let refresh = tokio::spawn({
            let inventory = inventory.clone();
            async move { inventory.refresh().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let written = std::time::Instant::now();
        refresh.await.unwrap().unwrap();
        assert!(
            !inventory.read(|s| s.described_since(written)),
            "that describe was in flight before the write"
        );
        inventory.refresh().await.unwrap();
        assert!(inventory.read(|s| s.described_since(written)));
    }

    #[test]
    fn transition_detection() {
        let mut s = CloudState::default();
        s.instances.insert(
            "i-1".into(),
            instance("i-1", "ns/a", InstanceState::Running, &[(tag::BOOTSTRAP, "complete")]),
        );
        let none = BTreeSet::new();
        let no_updates = BTreeMap::new();
        assert!(!s.in_transition(&none, &no_updates));
        let updating = BTreeMap::from([("i-1".to_owned(), "0123456789abcdef".to_owned())]);
        assert!(s.in_transition(&none, &updating), "waiting for an update's outcome");
        s.instances
            .get_mut("i-1")
            .unwrap()
            .tags
            .insert(tag::SERVICES.into(), "failed:0123456789abcdef".into());
        assert!(!s.in_transition(&none, &updating), "the update reported (failed)");
        s.instances
            .insert("i-2".into(), instance("i-2", "ns/b", InstanceState::Running, &[]));
        assert!(
            s.in_transition(&none, &no_updates),
            "running without bootstrap tag is still booting"
        );
        let failed = BTreeSet::from(["i-2".to_owned()]);
        assert!(!s.in_transition(&failed, &no_updates), "unless its environment failed");
    }
}
