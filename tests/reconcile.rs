//! Reconcile tests: the real controllers against the stateful fake cloud and the real
//! kube-apiserver and etcd (so every Kubernetes call goes through kube-rs over HTTPS). Reconciles are driven step by step, which lets a test "crash" the operator
//! after any single cloud call and restart it from what was persisted.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use featureenv_operator::api::conditions::{self, DATABASE_READY, READY};
use featureenv_operator::api::{FeatureEnvironment, FeatureEnvironmentClass, Phase, RdsPool};
use featureenv_operator::cloud::fake::{FakeCloud, FaultKind, Trigger};
use featureenv_operator::cloud::{Cloud, DatabaseStatus, InstanceState, tag};
use featureenv_operator::config::Config;
use featureenv_operator::controller::{Context, environment, pool, warm_pool};
use featureenv_operator::inventory::Inventory;
use featureenv_operator::metrics::Metrics;
use featureenv_operator::runtime;
use featureenv_operator::test_fixtures::ECR;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use support::cluster;
use support::control_plane::ControlPlane;

const CLUSTER: &str = "test-cluster";
const NS: &str = "team";

fn seeded_fake(seed: u64) -> FakeCloud {
    let fake = FakeCloud::new(seed);
    fake.add_image(
        "ami-00000000000000001",
        "minikube-service-old",
        "self",
        "2026-11-01T00:00:00Z".parse().unwrap(),
        &[("featureenv.io/pipeline", "minikube-service")],
    );
    fake.add_image(
        "ami-00000000000000002",
        "minikube-service-new",
        "self",
        "2026-11-27T00:00:00Z".parse().unwrap(),
        &[("featureenv.io/pipeline", "minikube-service")],
    );
    fake.add_image(
        "ami-00000000000000003",
        "unrelated",
        "self",
        "2026-11-28T00:00:00Z".parse().unwrap(),
        &[],
    );
    fake.add_snapshot(
        "integration-db-old",
        "integration-db",
        "2026-11-27T03:00:00Z".parse().unwrap(),
    );
    fake.add_snapshot(
        "integration-db-new",
        "integration-db",
        "2026-11-28T03:00:00Z".parse().unwrap(),
    );
    for service in ["payments", "orders"] {
        fake.add_registry_image(
            &format!("{ECR}/{service}"),
            "latest",
            &format!("sha256:{}", "a".repeat(64)),
        );
    }
    fake.add_registry_image(
        &format!("{ECR}/payments"),
        "pr-123",
        &format!("sha256:{}", "b".repeat(64)),
    );
    fake
}

struct Harness {
    /// Owned unless shared with other harnesses (see [`Harness::in_namespace`]).
    _control_plane: Option<ControlPlane>,
    client: kube::Client,
    namespace: String,
    fake: FakeCloud,
    ctx: Arc<Context>,
    /// Fills `ctx.classes` from a watch, as the runtime does.
    class_watch: tokio::task::JoinHandle<()>,
    restarts: u32,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.class_watch.abort();
    }
}

impl Harness {
    async fn new(fake: FakeCloud, pool_size: (u32, u32)) -> Self {
        let (control_plane, client) = cluster::cluster().await;
        let mut harness = Self::in_namespace(client, NS, fake, pool_size).await;
        harness._control_plane = Some(control_plane);
        harness
    }

    /// A harness on an API server that outlives it, with its environments in
    /// `namespace`. The class `standard` and the pool `integration` are created if
    /// missing (a pool of another size is resized), so harnesses can follow one
    /// another on one control plane instead of starting one each (about 5 s).
    async fn in_namespace(client: kube::Client, namespace: &str, fake: FakeCloud, pool_size: (u32, u32)) -> Self {
        cluster::namespace(&client, namespace).await;
        let classes: Api<FeatureEnvironmentClass> = Api::all(client.clone());
        if classes.get_opt("standard").await.unwrap().is_none() {
            classes
                .create(&PostParams::default(), &cluster::class("standard", Some("integration")))
                .await
                .unwrap();
        }
        let pools: Api<RdsPool> = Api::all(client.clone());
        let pool = cluster::pool("integration", pool_size.0, pool_size.1);
        match pools.get_opt("integration").await.unwrap() {
            None => {
                pools.create(&PostParams::default(), &pool).await.unwrap();
            }
            Some(existing) if existing.spec != pool.spec => {
                let spec = serde_json::json!({"spec": serde_json::to_value(&pool.spec).unwrap()});
                pools
                    .patch(
                        "integration",
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(spec),
                    )
                    .await
                    .unwrap();
            }
            Some(_) => {}
        }
        let (ctx, class_watch) = Self::context(&client, &fake).await;
        Self {
            _control_plane: None,
            client,
            namespace: namespace.to_owned(),
            fake,
            ctx,
            class_watch,
            restarts: 0,
        }
    }

    async fn context(client: &kube::Client, fake: &FakeCloud) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
        let cloud = Cloud::from(fake.clone());
        let (inventory, _triggers) = Inventory::new(cloud.clone(), CLUSTER);
        let (classes, writer) = reflector::store();
        let (class_watch, _class_events) = runtime::watch_classes(client.clone(), writer);
        classes.wait_until_ready().await.unwrap();
        let ctx = Arc::new(Context::new(
            client.clone(),
            classes,
            Config::for_tests(CLUSTER),
            cloud,
            inventory,
            Arc::new(Metrics::new()),
        ));
        (ctx, class_watch)
    }

    /// A crash: everything in memory is gone; only Kubernetes and AWS remain.
    async fn restart(&mut self) {
        self.class_watch.abort();
        (self.ctx, self.class_watch) = Self::context(&self.client, &self.fake).await;
        self.restarts += 1;
    }

    /// The audit log of this harness's own control plane.
    fn audit_log(&self) -> std::path::PathBuf {
        self._control_plane.as_ref().expect("own control plane").audit_log()
    }

    fn envs(&self) -> Api<FeatureEnvironment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn get(&self, name: &str) -> Option<FeatureEnvironment> {
        self.envs().get_opt(name).await.unwrap()
    }

    /// What the instance's bootstrap script does once it is running.
    fn boot_instances(&self) {
        for i in self.fake.live_instances() {
            if !i.instance.tags.contains_key(tag::BOOTSTRAP) {
                self.fake.set_bootstrap_tag(&i.instance.id, tag::BOOTSTRAP_COMPLETE);
            }
        }
    }

    /// What a claimed spare does with the personalisation sent to it: tag its
    /// outcome, `complete:<token>`.
    fn run_personalisations(&self) {
        for script in self.fake.scripts() {
            if !script.script.contains("readonly TASK='personalisation'") {
                continue;
            }
            let value = script
                .script
                .lines()
                .find_map(|l| l.strip_prefix("readonly COMPLETE_VALUE="))
                .expect("the script names its outcome")
                .trim_matches('\'');
            self.fake.set_services_tag(&script.instance_id, value);
        }
    }

    /// One round: refresh the inventory, reconcile the pools (databases, then the
    /// classes' warm pools), then the environment. Errors are returned so callers
    /// decide whether they mean a crash.
    async fn step(&mut self, name: &str) -> Result<(), String> {
        self.ctx.inventory.refresh().await.map_err(|e| e.to_string())?;
        let pools: Api<RdsPool> = Api::all(self.client.clone());
        for p in pools.list(&Default::default()).await.unwrap() {
            pool::reconcile(Arc::new(p), self.ctx.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        let classes: Api<FeatureEnvironmentClass> = Api::all(self.client.clone());
        for c in classes.list(&Default::default()).await.unwrap() {
            if c.spec.warm_pool.is_some() {
                warm_pool::reconcile(Arc::new(c), self.ctx.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        self.ctx.inventory.refresh().await.map_err(|e| e.to_string())?;
        if let Some(env) = self.get(name).await {
            environment::reconcile(Arc::new(env), self.ctx.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One reconcile of the environment alone, and what it asked for next.
    async fn reconcile(&self, name: &str) -> Action {
        self.ctx.inventory.refresh().await.unwrap();
        let env = self.get(name).await.expect("environment exists");
        environment::reconcile(Arc::new(env), self.ctx.clone()).await.unwrap()
    }

    async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        let patch = kube::api::Patch::Merge(serde_json::json!({ "spec": spec }));
        self.envs()
            .patch(name, &kube::api::PatchParams::default(), &patch)
            .await
            .unwrap();
    }

    /// The expiry recorded in the environment's status.
    async fn expires_at(&self, name: &str) -> Timestamp {
        let status = self.get(name).await.unwrap().status.unwrap();
        status.expires_at.expect("expiry recorded").parse().unwrap()
    }

    /// Creates a class and waits until the class store, which reconciles read,
    /// has it.
    async fn create_class(&self, class: &FeatureEnvironmentClass) {
        let classes: Api<FeatureEnvironmentClass> = Api::all(self.client.clone());
        classes.create(&PostParams::default(), class).await.unwrap();
        let name = class.name_any();
        for _ in 0..50 {
            if self.ctx.classes.state().iter().any(|c| c.name_any() == name) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("class {name} never reached the store");
    }

    async fn ready_reason(&self, name: &str) -> String {
        let status = self.get(name).await.unwrap().status.unwrap_or_default();
        conditions::find(&status.conditions, READY)
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    }

    /// Steps until `done`, restarting after every error (a crash or a fault).
    async fn drive(&mut self, name: &str, mut done: impl AsyncFnMut(&Self) -> bool) {
        for _ in 0..60 {
            if done(self).await {
                return;
            }
            if let Err(e) = self.step(name).await {
                eprintln!("step {name}: {e}");
                self.restart().await;
            }
            self.fake.finish_transitions();
            self.boot_instances();
            self.run_personalisations();
        }
        panic!(
            "{name} did not reach the expected state; phase {:?}",
            self.get(name).await.and_then(|e| e.status).map(|s| s.phase)
        );
    }

    async fn phase(&self, name: &str) -> Option<Phase> {
        self.get(name).await.and_then(|e| e.status).map(|s| s.phase)
    }

    fn instances_of(&self, uid: &str) -> usize {
        self.fake
            .live_instances()
            .iter()
            .filter(|i| i.instance.tags.get(tag::UID).map(String::as_str) == Some(uid))
            .count()
    }

    fn databases_claimed_by(&self, uid: &str) -> usize {
        self.fake
            .databases()
            .iter()
            .filter(|d| {
                d.database.tags.get(tag::CLAIMED_BY).map(String::as_str) == Some(uid)
                    && d.database.status != DatabaseStatus::Deleting
            })
            .count()
    }
}

/// When a reconcile asked to run again (kube's `Action` shows it only in `Debug`).
fn requeue_after(action: &Action) -> Option<Duration> {
    let debug = format!("{action:?}");
    let inner = debug.split("Some(").nth(1)?.split(')').next()?;
    let split = inner.find(|c: char| c.is_alphabetic())?;
    let (value, unit) = inner.split_at(split);
    let value: f64 = value.parse().ok()?;
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" => value / 1e6,
        "ns" => value / 1e9,
        _ => panic!("unit {unit} in {debug}"),
    };
    Some(Duration::from_secs_f64(seconds))
}

async fn create(h: &Harness, env: FeatureEnvironment) -> String {
    h.envs()
        .create(&PostParams::default(), &env)
        .await
        .unwrap()
        .uid()
        .unwrap()
}

#[tokio::test]
async fn lifecycle_ready_then_deleted_leaves_nothing() {
    let mut h = Harness::new(seeded_fake(1), (1, 5)).await;
    let uid = create(&h, cluster::environment("pr-1", "standard")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;

    let env = h.get("pr-1").await.unwrap();
    let status = env.status.unwrap();
    assert!(conditions::is_true(&status.conditions, READY));
    let instance = status.instance.unwrap();
    assert_eq!(
        instance.ami_id.as_deref(),
        Some("ami-00000000000000002"),
        "newest tagged image"
    );
    assert_eq!(instance.instance_type.as_deref(), Some("t3.xlarge"));
    assert!(status.endpoints["api"].starts_with("http://54."));
    assert!(status.ready_at.is_some() && status.expires_at.is_some());
    let payments = status.images.iter().find(|i| i.name == "payments").unwrap();
    assert_eq!(
        payments.image,
        format!("{ECR}/payments@sha256:{}", "b".repeat(64)),
        "override pinned to its digest"
    );

    let live = h.fake.live_instances();
    assert_eq!(live.len(), 1);
    let launched = &live[0];
    assert!(launched.metadata_tokens_required);
    assert_eq!(launched.instance.tags[tag::CLUSTER], CLUSTER);
    assert_eq!(launched.instance.tags[tag::ENVIRONMENT], format!("{NS}/pr-1"));
    assert!(
        launched
            .user_data
            .contains(&format!("{ECR}/payments@sha256:{}", "b".repeat(64)))
    );

    // Only this instance may read the database parameter: it carries the instance's
    // ARN, which the instance profile compares with ec2:SourceInstanceARN.
    let parameter = status
        .database
        .as_ref()
        .and_then(|d| d.parameter_name.clone())
        .expect("parameter name in status");
    assert_eq!(
        h.fake.parameter_tags(&parameter).get(tag::INSTANCE),
        Some(&launched.instance.arn),
        "parameter bound to its instance"
    );
    assert!(
        launched
            .instance
            .arn
            .ends_with(&format!(":instance/{}", launched.instance.id))
    );

    let database = status.database.unwrap();
    let db = h
        .fake
        .databases()
        .into_iter()
        .find(|d| Some(&d.database.id) == database.id.as_ref())
        .unwrap();
    assert_eq!(db.database.tags[tag::CLAIMED_BY], uid);
    assert_eq!(
        db.snapshot_id, "integration-db-new",
        "spares restore from the newest snapshot"
    );
    let password = db.master_password.clone().expect("password rotated");
    assert!(
        !launched.user_data.contains(&password),
        "user data never carries the password"
    );
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    let secret = secrets.get(database.secret_name.as_deref().unwrap()).await.unwrap();
    assert_eq!(
        String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap(),
        password
    );
    let parameter = h
        .fake
        .parameter(database.parameter_name.as_deref().unwrap())
        .expect("SSM parameter written");
    assert!(parameter.contains(&password));

    // The pool restored a replacement spare.
    h.step("pr-1").await.unwrap();
    let spares = h
        .fake
        .databases()
        .into_iter()
        .filter(|d| !d.database.tags.contains_key(tag::CLAIMED_BY))
        .count();
    assert_eq!(spares, 1);

    h.envs().delete("pr-1", &DeleteParams::default()).await.unwrap();
    h.drive("pr-1", async |h| h.get("pr-1").await.is_none()).await;
    assert_eq!(h.instances_of(&uid), 0);
    assert_eq!(h.databases_claimed_by(&uid), 0);
    assert!(h.fake.parameter_names().is_empty(), "parameter deleted");
}

#[tokio::test]
async fn a_crash_after_any_cloud_call_never_duplicates_or_leaks() {
    // A new instance stays invisible to the next describes, so after a crash only
    // the persisted, deterministic ClientToken prevents a second launch.
    crash_after_every_cloud_call(|fake| fake.set_visibility_lag(3)).await;
}

#[tokio::test]
async fn without_client_token_idempotency_the_look_up_by_tag_prevents_a_second_launch() {
    // RunInstances ignores ClientToken (as moto does), and the new instance is missed
    // by both inventory polls of the next step: only the look-up by uid tag before
    // launching finds it.
    crash_after_every_cloud_call(|fake| {
        fake.ignore_client_tokens();
        fake.set_visibility_lag(2);
    })
    .await;
}

/// Runs create, claim and delete once per cloud call of a clean run, losing the
/// response of that call (the operator "crashes" and restarts from what was
/// persisted), and checks that nothing is duplicated or leaked.
async fn crash_after_every_cloud_call(setup: impl Fn(&FakeCloud)) {
    // A clean run tells how many cloud calls the create, claim and delete paths make.
    let total = {
        let mut h = Harness::new(seeded_fake(2), (1, 5)).await;
        create(&h, cluster::environment("pr-1", "standard")).await;
        h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
            .await;
        h.envs().delete("pr-1", &DeleteParams::default()).await.unwrap();
        h.drive("pr-1", async |h| h.get("pr-1").await.is_none()).await;
        h.fake.total_calls()
    };
    assert!(total > 10, "the paths make {total} calls");
    // One control plane for every run, a namespace each: the runs leave nothing behind
    // in Kubernetes (each ends with its environment gone), and the pool's state lives
    // in the fake cloud, which is new for every run.
    let (_control_plane, client) = cluster::cluster().await;
    for k in 1..=total {
        let fake = seeded_fake(2);
        setup(&fake);
        fake.fail("*", Trigger::NthCall(k), FaultKind::LostResponse);
        let mut h = Harness::in_namespace(client.clone(), &format!("crash-{k}"), fake, (1, 5)).await;
        let uid = create(&h, cluster::environment("pr-1", "standard")).await;
        h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
            .await;
        assert_eq!(h.instances_of(&uid), 1, "crash after call {k}: exactly one instance");
        assert_eq!(
            h.databases_claimed_by(&uid),
            1,
            "crash after call {k}: exactly one claimed database"
        );
        h.envs().delete("pr-1", &DeleteParams::default()).await.unwrap();
        h.drive("pr-1", async |h| h.get("pr-1").await.is_none()).await;
        assert_eq!(h.instances_of(&uid), 0, "crash after call {k}: instance leaked");
        assert_eq!(h.databases_claimed_by(&uid), 0, "crash after call {k}: database leaked");
        assert!(
            h.fake.parameter_names().is_empty(),
            "crash after call {k}: parameter leaked"
        );
        assert_eq!(
            h.fake.instances().len(),
            1,
            "crash after call {k}: more than one instance was ever launched"
        );
    }
}

#[tokio::test]
async fn throttling_and_capacity_errors_back_off_and_show_in_conditions() {
    let fake = seeded_fake(3);
    fake.fail("RunInstances", Trigger::Times(1), FaultKind::InsufficientCapacity);
    let mut h = Harness::new(fake, (1, 5)).await;
    create(&h, cluster::environment("pr-1", "standard")).await;
    // First pass: resolve, persist the token, then the launch fails.
    let mut saw_reason = None;
    for _ in 0..4 {
        if let Err(e) = h.step("pr-1").await {
            assert!(e.contains("capacity"), "{e}");
            let status = h.get("pr-1").await.unwrap().status.unwrap();
            saw_reason = conditions::find(&status.conditions, READY).map(|c| c.reason.clone());
            break;
        }
    }
    assert_eq!(saw_reason.as_deref(), Some("InsufficientCapacity"));

    h.fake.fail("RunInstances", Trigger::Times(2), FaultKind::Throttled);
    let mut saw_throttle = false;
    for _ in 0..6 {
        if let Err(e) = h.step("pr-1").await {
            saw_throttle |= e.contains("throttled");
            let status = h.get("pr-1").await.unwrap().status.unwrap();
            assert_eq!(conditions::find(&status.conditions, READY).unwrap().reason, "Throttled");
        }
        h.boot_instances();
    }
    assert!(saw_throttle);
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    assert_eq!(h.fake.live_instances().len(), 1);
}

#[tokio::test]
async fn invalid_specs_create_nothing_and_recover_when_fixed() {
    let mut h = Harness::new(seeded_fake(4), (0, 5)).await;
    let mut missing_class = cluster::environment("pr-1", "premium");
    missing_class.spec.instance_type = None;
    create(&h, missing_class).await;
    let mut too_long = cluster::environment("pr-2", "standard");
    too_long.spec.ttl = Some("100h".into());
    create(&h, too_long).await;
    let mut wrong_type = cluster::environment("pr-3", "standard");
    wrong_type.spec.instance_type = Some("m5.24xlarge".into());
    create(&h, wrong_type).await;
    let mut missing_repo = cluster::environment("pr-4", "standard");
    missing_repo.spec.services[0].image = format!("{ECR}/nonexistent:pr-1");
    create(&h, missing_repo).await;

    for (name, reason, field) in [
        ("pr-1", "ClassNotFound", "spec.className"),
        ("pr-2", "TTLExceedsMaximum", "spec.ttl"),
        ("pr-3", "InstanceTypeNotAllowed", "spec.instanceType"),
        ("pr-4", "ImageNotFound", "spec.services[0].image"),
    ] {
        // The first pass adds the finalizer, the second validates.
        h.step(name).await.unwrap();
        h.step(name).await.unwrap();
        let status = h.get(name).await.unwrap().status.unwrap();
        let ready = conditions::find(&status.conditions, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, reason, "{name}");
        assert!(ready.message.contains(field), "{name}: {}", ready.message);
        assert_eq!(status.phase, Phase::Pending);
    }
    assert_eq!(h.fake.call_count("RunInstances"), 0, "nothing launched");
    assert!(
        h.fake
            .databases()
            .iter()
            .all(|d| !d.database.tags.contains_key(tag::CLAIMED_BY)),
        "nothing claimed"
    );

    // Creating the class lets pr-1 proceed by itself.
    let classes: Api<FeatureEnvironmentClass> = Api::all(h.client.clone());
    classes
        .create(&PostParams::default(), &cluster::class("premium", None))
        .await
        .unwrap();
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
}

#[tokio::test]
async fn a_claim_overwritten_before_it_is_confirmed_is_given_up() {
    use featureenv_operator::cloud::Databases;
    let mut h = Harness::new(seeded_fake(7), (2, 5)).await;
    let uid = create(&h, cluster::environment("pr-1", "standard")).await;
    // Step until our tag is on a spare but no poll has confirmed it yet.
    let mut tagged = None;
    for _ in 0..20 {
        h.step("pr-1").await.unwrap();
        tagged = h
            .fake
            .databases()
            .into_iter()
            .find(|d| d.database.tags.get(tag::CLAIMED_BY) == Some(&uid));
        if tagged.is_some() {
            break;
        }
    }
    let tagged = tagged.expect("a spare was tagged for pr-1").database;
    let status = h.get("pr-1").await.unwrap().status.unwrap();
    assert_eq!(
        conditions::find(&status.conditions, DATABASE_READY).unwrap().reason,
        "Claiming",
        "not used before it is confirmed"
    );
    assert!(status.database.and_then(|d| d.id).is_none());

    // A stale leader tags the same spare before the next poll: the last tag wins.
    let stale = [(tag::CLAIMED_BY.to_owned(), "uid-of-a-stale-leader".to_owned())].into();
    h.fake.tag_database(&tagged.arn, &stale).await.unwrap();
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;

    let status = h.get("pr-1").await.unwrap().status.unwrap();
    let ours = status.database.and_then(|d| d.id).unwrap();
    assert_ne!(ours, tagged.id, "the overwritten claim was given up");
    assert_eq!(h.databases_claimed_by(&uid), 1);
    let lost = h
        .fake
        .databases()
        .into_iter()
        .find(|d| d.database.id == tagged.id)
        .unwrap();
    assert_eq!(lost.database.tags[tag::CLAIMED_BY], "uid-of-a-stale-leader");
    // Its password is the pool's throw-away one, never the one handed out to pr-1.
    let secret = Api::<Secret>::namespaced(h.client.clone(), NS)
        .get("pr-1-db")
        .await
        .unwrap();
    let handed_out = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    assert_ne!(lost.master_password.as_deref(), Some(handed_out.as_str()));
}

/// A restored spare carries the source database's master password until something
/// changes it, and RDS cannot set one on restore: the pool gives each available
/// spare a random password nobody keeps, before anyone claims it.
#[tokio::test]
async fn spares_do_not_keep_the_source_master_password() {
    let mut h = Harness::new(seeded_fake(10), (2, 5)).await;
    for _ in 0..3 {
        // No environment: pool passes only.
        h.step("nobody").await.unwrap();
        h.fake.finish_transitions();
    }
    let spares = h.fake.databases();
    assert_eq!(spares.len(), 2);
    for spare in &spares {
        assert!(
            spare.master_password.is_some(),
            "{} still has the source database's password",
            spare.database.id
        );
    }
    assert_ne!(spares[0].master_password, spares[1].master_password);
}

/// Each spare's master password is replaced once, however many pools there are.
/// (Each pool's pass used to forget which spares of other pools it had reset, and
/// reset them again at their next pass: a ModifyDBInstance per spare per pass.)
#[tokio::test]
async fn with_two_pools_each_spare_password_is_replaced_once() {
    let mut h = Harness::new(seeded_fake(10), (2, 5)).await;
    let pools: Api<RdsPool> = Api::all(h.client.clone());
    pools
        .create(&PostParams::default(), &cluster::pool("second", 1, 5))
        .await
        .unwrap();
    for _ in 0..6 {
        h.step("nobody").await.unwrap();
        h.fake.finish_transitions();
    }
    assert_eq!(h.fake.databases().len(), 3, "two spares and one");
    assert_eq!(
        h.fake.call_count("ModifyDBInstance"),
        3,
        "one password replacement per spare"
    );
}

/// RDS tags are eventually consistent: a Describe that does not show our fresh
/// `claimed-by` yet is no lost claim. The environment keeps (and re-tags) the same
/// spare, and never holds a second database.
#[tokio::test]
async fn a_claim_tag_not_yet_visible_is_not_a_lost_claim() {
    let mut h = Harness::new(seeded_fake(9), (2, 5)).await;
    h.fake.set_tag_lag(3);
    let uid = create(&h, cluster::environment("pr-1", "standard")).await;
    let mut first = None;
    for _ in 0..40 {
        if h.phase("pr-1").await == Some(Phase::Ready) {
            break;
        }
        h.step("pr-1").await.unwrap();
        h.fake.finish_transitions();
        h.boot_instances();
        let claimed: Vec<String> = h
            .fake
            .databases()
            .into_iter()
            .filter(|d| d.database.tags.get(tag::CLAIMED_BY) == Some(&uid))
            .map(|d| d.database.id)
            .collect();
        assert!(
            claimed.len() <= 1,
            "two databases tagged for one environment: {claimed:?}"
        );
        first = first.or(claimed.first().cloned());
    }
    assert_eq!(h.phase("pr-1").await, Some(Phase::Ready));
    let status = h.get("pr-1").await.unwrap().status.unwrap();
    assert_eq!(
        status.database.and_then(|d| d.id),
        first,
        "the first spare tagged is the one used"
    );
    assert_eq!(h.databases_claimed_by(&uid), 1);
}

#[tokio::test]
async fn a_timed_out_environment_no_longer_keeps_the_poll_fast() {
    let mut h = Harness::new(seeded_fake(8), (1, 5)).await;
    let mut quick = cluster::class("quick", Some("integration"));
    quick.spec.readiness.timeout = "1s".into();
    let classes: Api<FeatureEnvironmentClass> = Api::all(h.client.clone());
    classes.create(&PostParams::default(), &quick).await.unwrap();
    let uid = create(&h, cluster::environment("stuck", "quick")).await;
    // The instance runs but never reports its bootstrap.
    for _ in 0..30 {
        if h.phase("stuck").await == Some(Phase::Failed) {
            break;
        }
        h.step("stuck").await.unwrap();
        h.fake.finish_transitions();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = h.get("stuck").await.unwrap().status.unwrap();
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        conditions::find(&status.conditions, READY).unwrap().reason,
        "BootstrapTimeout"
    );
    h.ctx.inventory.refresh().await.unwrap();
    assert!(
        h.ctx.inventory.read(|s| s.instances_of(&uid).len()) == 1,
        "the instance is still there for debugging"
    );
    assert!(
        !h.ctx.inventory.in_transition(),
        "nobody waits for its bootstrap any more: the poll goes slow"
    );
}

/// Requests in the audit log at `log` with `verb` on object `name` of `resource`
/// (`featureenvs/status` for a subresource).
fn audited(log: &std::path::Path, verb: &str, resource: &str, name: &str) -> usize {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| {
            let object = &e["objectRef"];
            e["verb"] == verb
                && object["resource"] == resource
                && object["subresource"].as_str().unwrap_or_default() == subresource
                && object["name"] == name
        })
        .count()
}

/// `env` as a cached copy that lags the status patch recording its credentials.
fn without_recorded_credentials(mut env: FeatureEnvironment) -> FeatureEnvironment {
    let database = env.status.as_mut().and_then(|s| s.database.as_mut());
    database.expect("a database in the status").credentials_ready = false;
    env
}

#[tokio::test]
async fn a_reconcile_of_a_stale_object_does_not_rotate_the_password_again() {
    let mut h = Harness::new(seeded_fake(9), (1, 5)).await;
    create(&h, cluster::environment("pr-1", "standard")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    // The pool's resets of spare passwords are ModifyDBInstance calls too; what
    // matters is that the stale reconcile below adds none.
    let rotations = h.fake.call_count("ModifyDBInstance");
    assert!(rotations >= 1);
    // The controller's cache can lag the status patch that recorded the credentials.
    let stale = without_recorded_credentials(h.get("pr-1").await.unwrap());
    environment::reconcile(Arc::new(stale), h.ctx.clone()).await.unwrap();
    assert_eq!(
        h.fake.call_count("ModifyDBInstance"),
        rotations,
        "the master password was reset again"
    );
    assert_eq!(h.phase("pr-1").await, Some(Phase::Ready));
}

/// The writes a new environment costs the API server beyond its status: the
/// finalizer and the owner label in one patch (they were two), and no Event for the
/// admission itself: `Launched` follows at once and names the type and the AMI.
#[tokio::test]
async fn a_new_environment_is_marked_in_one_write_and_its_launch_told_once() {
    let mut h = Harness::new(seeded_fake(27), (1, 5)).await;
    let mut env = cluster::environment("pr-1", "standard");
    env.spec.owner = Some("alice@example.com".into());
    create(&h, env).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    let marks = audited(&h.audit_log(), "patch", "featureenvs", "pr-1");
    assert_eq!(marks, 1, "finalizer and owner label in one patch");
    let env = h.get("pr-1").await.unwrap();
    assert!(env.finalizers().iter().any(|f| f == "featureenv.io/cleanup"));
    assert_eq!(
        env.labels().get("featureenv.io/owner").map(String::as_str),
        Some("alice_example.com")
    );
    let reasons = event_reasons(&h, "pr-1").await;
    assert!(!reasons.contains(&"Provisioning".to_owned()), "{reasons:?}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), NS);
    let launched = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("Launched"))
        .expect("a Launched Event");
    let note = launched.note.unwrap_or_default();
    let status = env.status.unwrap();
    let ami = status.instance.as_ref().unwrap().ami_id.clone().unwrap();
    assert!(note.contains(&ami) && note.contains(" from "), "{note}");
}

/// The controller's cache can lag the operator's own status writes: a pass may get
/// the object as it was before the last write. Such a pass must not write the
/// status again, tell `Ready` again (a second Event, a second time-to-ready sample)
/// or move `readyAt`: it works from the status it last wrote.
#[tokio::test]
async fn a_pass_on_an_object_older_than_our_last_write_repeats_nothing() {
    let mut h = Harness::new(seeded_fake(26), (1, 5)).await;
    create(&h, cluster::environment("pr-1", "standard")).await;
    let mut before_ready = None;
    for _ in 0..60 {
        let env = h.get("pr-1").await.unwrap();
        if h.phase("pr-1").await == Some(Phase::Ready) {
            break;
        }
        before_ready = Some(env);
        h.step("pr-1").await.unwrap();
        h.fake.finish_transitions();
        h.boot_instances();
    }
    let stale = before_ready.expect("a pass before Ready");
    let ready = h.get("pr-1").await.unwrap();
    assert_eq!(ready.status.as_ref().unwrap().phase, Phase::Ready);
    assert_ne!(stale.metadata.resource_version, ready.metadata.resource_version);
    let patches = |h: &Harness| audited(&h.audit_log(), "patch", "featureenvs/status", "pr-1");
    let written = patches(&h);

    environment::reconcile(Arc::new(stale), h.ctx.clone()).await.unwrap();
    let after = h.get("pr-1").await.unwrap();
    assert_eq!(patches(&h), written, "the status was written again");
    assert_eq!(
        after.status.as_ref().unwrap().ready_at,
        ready.status.as_ref().unwrap().ready_at,
        "readyAt moved"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), NS);
    let told: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Ready"))
        .collect();
    assert_eq!(told.len(), 1);
    assert!(told[0].series.is_none(), "Ready told twice: {:?}", told[0].series);
    let metrics = h.ctx.metrics.encode();
    let cold = metrics
        .lines()
        .find(|l| l.starts_with("featureenv_time_to_ready_seconds_count{start=\"cold\"}"));
    assert_eq!(
        cold,
        Some("featureenv_time_to_ready_seconds_count{start=\"cold\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn exhausted_pool_waits_then_proceeds_when_a_spare_appears() {
    let mut h = Harness::new(seeded_fake(5), (1, 1)).await;
    create(&h, cluster::environment("first", "standard")).await;
    h.drive("first", async |h| h.phase("first").await == Some(Phase::Ready))
        .await;

    create(&h, cluster::environment("second", "standard")).await;
    for _ in 0..3 {
        h.step("second").await.unwrap();
        h.boot_instances();
    }
    let status = h.get("second").await.unwrap().status.unwrap();
    assert_eq!(
        conditions::find(&status.conditions, READY).unwrap().reason,
        "PoolExhausted"
    );
    assert_eq!(status.phase, Phase::Provisioning);

    h.envs().delete("first", &DeleteParams::default()).await.unwrap();
    h.drive("first", async |h| h.get("first").await.is_none()).await;
    h.drive("second", async |h| h.phase("second").await == Some(Phase::Ready))
        .await;
    let claimed = h
        .fake
        .databases()
        .iter()
        .filter(|d| d.database.tags.contains_key(tag::CLAIMED_BY))
        .count();
    assert_eq!(claimed, 1, "maxSize 1 never exceeded");
}

#[tokio::test]
async fn ttl_expiry_deletes_the_environment_and_its_resources() {
    let mut h = Harness::new(seeded_fake(6), (1, 5)).await;
    let mut env = cluster::environment("short", "standard");
    env.spec.ttl = Some("3s".into());
    let uid = create(&h, env).await;
    h.drive("short", async |h| h.phase("short").await == Some(Phase::Ready))
        .await;
    let expires = h.expires_at("short").await;
    tokio::time::sleep(Duration::try_from(expires.duration_since(Timestamp::now())).unwrap_or_default()).await;
    h.drive("short", async |h| h.get("short").await.is_none()).await;
    assert_eq!(h.instances_of(&uid), 0);
    assert_eq!(h.databases_claimed_by(&uid), 0);
}

/// A spec edit the class refuses after launch (here a TTL over the maximum) neither
/// keeps the environment alive past the expiry it had nor fails it for good: it is
/// `Failed` while the edit stands, `Ready` again once undone, and deleted at its
/// expiry either way. Before, the refusal came before the expiry check and waited
/// only for a change, so the instance and database ran on forever.
#[tokio::test]
async fn an_edit_the_class_refuses_after_launch_does_not_outlive_the_ttl() {
    let mut h = Harness::new(seeded_fake(11), (1, 5)).await;
    let mut env = cluster::environment("edited", "standard");
    env.spec.ttl = Some("12s".into());
    let uid = create(&h, env).await;
    h.drive("edited", async |h| h.phase("edited").await == Some(Phase::Ready))
        .await;
    let expires = h.expires_at("edited").await;

    h.patch_spec("edited", serde_json::json!({"ttl": "100h"})).await;
    let until_expiry = Duration::try_from(expires.duration_since(Timestamp::now())).unwrap();
    let action = h.reconcile("edited").await;
    assert_eq!(h.phase("edited").await, Some(Phase::Failed));
    assert_eq!(h.ready_reason("edited").await, "TTLExceedsMaximum");
    let wake = requeue_after(&action).expect("the refusal must not wait only for an edit");
    assert!(
        wake <= until_expiry,
        "looked at again by the expiry: {wake:?} > {until_expiry:?}"
    );

    // Undone: Ready again (a spec problem is not a failure for good).
    h.patch_spec("edited", serde_json::json!({"ttl": "12s"})).await;
    h.reconcile("edited").await;
    assert_eq!(h.phase("edited").await, Some(Phase::Ready));

    // Refused again, and left so: deleted at the expiry it had, resources with it.
    h.patch_spec("edited", serde_json::json!({"ttl": "100h"})).await;
    h.reconcile("edited").await;
    assert_eq!(h.phase("edited").await, Some(Phase::Failed));
    tokio::time::sleep(Duration::try_from(expires.duration_since(Timestamp::now())).unwrap_or_default()).await;
    h.drive("edited", async |h| h.get("edited").await.is_none()).await;
    assert_eq!(h.instances_of(&uid), 0);
    assert_eq!(h.databases_claimed_by(&uid), 0);
}

/// A tag CI has not pushed yet is looked at again on a timer (no watch would tell
/// us when it appears), and the environment proceeds once it is there. Before, it
/// waited for an edit of the environment that never came.
#[tokio::test]
async fn an_image_pushed_after_the_environment_was_applied_is_picked_up() {
    let mut h = Harness::new(seeded_fake(12), (1, 5)).await;
    let mut env = cluster::environment("early", "standard");
    env.spec.services[0].image = format!("{ECR}/payments:pr-999");
    create(&h, env).await;
    h.reconcile("early").await; // adds the finalizer
    let action = h.reconcile("early").await;
    assert_eq!(h.ready_reason("early").await, "ImageNotFound");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(h.fake.call_count("RunInstances"), 0);

    h.fake.add_registry_image(
        &format!("{ECR}/payments"),
        "pr-999",
        &format!("sha256:{}", "c".repeat(64)),
    );
    // The digest cache (10 s) may still hold the miss; the next timed look finds it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.drive("early", async |h| h.phase("early").await == Some(Phase::Ready))
        .await;
    let images = h.get("early").await.unwrap().status.unwrap().images;
    assert!(images.iter().any(|i| i.image.ends_with(&"c".repeat(64))), "{images:?}");
}

/// An environment that names no class belongs to the default class, and counts
/// against that class's `maxPerNamespace` only. Before, the count assumed a
/// class-less environment belonged to whichever class was being admitted.
#[tokio::test]
async fn a_defaulted_environment_counts_against_the_default_class_only() {
    let mut h = Harness::new(seeded_fake(13), (0, 5)).await;
    let mut capped = cluster::class("capped", None);
    capped.metadata.annotations = None;
    capped.spec.max_per_namespace = Some(1);
    h.create_class(&capped).await;

    let mut defaulted = cluster::environment("defaulted", "standard");
    defaulted.spec.class_name = None;
    create(&h, defaulted).await;
    create(&h, cluster::environment("first", "capped")).await;
    create(&h, cluster::environment("second", "capped")).await;
    for name in ["defaulted", "first", "second"] {
        h.step(name).await.unwrap();
        h.step(name).await.unwrap();
    }
    let token = async |name: &str| h.get(name).await.unwrap().status.unwrap_or_default().launch_token;
    assert!(token("defaulted").await.is_some(), "defaulted admitted");
    assert!(
        token("first").await.is_some(),
        "the defaulted one does not count against capped"
    );
    assert_eq!(token("second").await, None, "capped still caps");
    assert_eq!(h.ready_reason("second").await, "NamespaceLimitReached");
}

/// An instance terminated by someone else is noticed at the next pass and replaced
/// (new launch token, same database); three lost in a row fail the environment
/// instead. Before, the status stayed as it was until the TTL.
#[tokio::test]
async fn a_lost_instance_is_replaced_and_three_in_a_row_fail() {
    use featureenv_operator::cloud::Compute;
    let mut h = Harness::new(seeded_fake(14), (1, 5)).await;
    let uid = create(&h, cluster::environment("lost", "standard")).await;
    h.drive("lost", async |h| h.phase("lost").await == Some(Phase::Ready))
        .await;
    let status = h.get("lost").await.unwrap().status.unwrap();
    let first = status.instance.unwrap().id.unwrap();
    let database = status.database.unwrap().id.unwrap();

    h.fake.terminate_instance(&first).await.unwrap();
    h.reconcile("lost").await;
    assert_eq!(h.ready_reason("lost").await, "InstanceLost");
    assert_eq!(h.get("lost").await.unwrap().status.unwrap().lost_instances, 1);
    h.drive("lost", async |h| h.phase("lost").await == Some(Phase::Ready))
        .await;
    let status = h.get("lost").await.unwrap().status.unwrap();
    let second = status.instance.clone().unwrap().id.unwrap();
    assert_ne!(second, first, "a replacement");
    assert_eq!(status.database.unwrap().id.unwrap(), database, "the database is kept");
    assert_eq!(status.lost_instances, 0, "reset once Ready");
    assert_eq!(h.instances_of(&uid), 1);
    let live = h.fake.live_instances();
    let parameter = featureenv_operator::naming::database_parameter("/featureenv", CLUSTER, &uid);
    assert_eq!(
        h.fake.parameter_tags(&parameter).get(tag::INSTANCE),
        Some(&live[0].instance.arn),
        "the parameter is bound to the replacement"
    );

    // Lost again and again before it is ever Ready.
    for loss in 1..=3 {
        let live = h.fake.live_instances();
        assert_eq!(live.len(), 1, "loss {loss}");
        h.fake.terminate_instance(&live[0].instance.id).await.unwrap();
        h.reconcile("lost").await; // notices
        h.reconcile("lost").await; // replaces, unless it gave up
    }
    let status = h.get("lost").await.unwrap().status.unwrap();
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(h.ready_reason("lost").await, "InstanceLost");
    assert_eq!(h.instances_of(&uid), 0, "no fourth instance");
    assert_eq!(h.fake.call_count("RunInstances"), 4);
}

/// A Secret already named `<name>-db` that is not the environment's is left as it
/// is: no forced apply takes its fields, no owner reference has Kubernetes delete it
/// with the environment, and no password is rotated. DatabaseReady says why, an
/// Event names it, and once it is gone the credentials are handed out.
#[tokio::test]
async fn a_foreign_secret_of_the_credentials_name_is_not_taken_over() {
    use std::collections::BTreeMap;
    let mut h = Harness::new(seeded_fake(15), (1, 5)).await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("taken-db".into());
    foreign.string_data = Some(BTreeMap::from([("token".to_owned(), "someone else's".to_owned())]));
    secrets.create(&PostParams::default(), &foreign).await.unwrap();
    let before = secrets.get("taken-db").await.unwrap();

    create(&h, cluster::environment("taken", "standard")).await;
    for _ in 0..6 {
        h.step("taken").await.unwrap();
        h.boot_instances();
    }
    let status = h.get("taken").await.unwrap().status.unwrap();
    let db = conditions::find(&status.conditions, DATABASE_READY).unwrap();
    assert_eq!(db.reason, "SecretConflict");
    assert!(db.message.contains("taken-db"), "{}", db.message);
    assert_eq!(
        conditions::find(&status.conditions, READY).unwrap().reason,
        "SecretConflict"
    );
    let after = secrets.get("taken-db").await.unwrap();
    assert_eq!(after.data, before.data, "data untouched");
    assert!(after.metadata.owner_references.is_none(), "no owner reference added");
    assert!(h.fake.parameter_names().is_empty(), "no credentials parameter written");
    let claimed = h
        .fake
        .databases()
        .into_iter()
        .find(|d| d.database.tags.contains_key(tag::CLAIMED_BY));
    let spare_password = claimed.expect("the database stays claimed").master_password;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), NS);
    let conflicts: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SecretConflict"))
        .collect();
    assert_eq!(conflicts.len(), 1, "one Event, not one per pass");
    assert!(conflicts[0].series.is_none(), "emitted once: {:?}", conflicts[0].series);
    assert!(conflicts[0].note.as_deref().unwrap_or_default().contains("taken-db"));

    secrets.delete("taken-db", &DeleteParams::default()).await.unwrap();
    h.drive("taken", async |h| h.phase("taken").await == Some(Phase::Ready))
        .await;
    let handed = secrets.get("taken-db").await.unwrap();
    let password = String::from_utf8(handed.data.unwrap()["password"].0.clone()).unwrap();
    let claimed = h
        .fake
        .databases()
        .into_iter()
        .find(|d| d.database.tags.contains_key(tag::CLAIMED_BY));
    let rotated = claimed.unwrap().master_password;
    assert_eq!(
        rotated.as_deref(),
        Some(password.as_str()),
        "rotated only once the Secret was free"
    );
    assert_ne!(rotated, spare_password);
}

/// The first hand-out creates the credentials Secret without reading it first, so
/// the operator's reads of the API server do not grow with the number of
/// environments (issue 9's target). A hand-out run again after a restart (its
/// record lost, the status stale) finds the Secret, reads it once and keeps the
/// password written there: the database is never left with a password nobody has.
#[tokio::test]
async fn credentials_are_handed_out_without_reading_the_secret_first() {
    let mut h = Harness::new(seeded_fake(25), (1, 5)).await;
    create(&h, cluster::environment("pr-1", "standard")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    let audit_log = h.audit_log();
    let requests = |verb: &str| audited(&audit_log, verb, "secrets", "pr-1-db");
    assert_eq!(requests("get"), 0, "the Secret was read before it was written");
    assert_eq!(requests("create"), 1);
    assert_eq!(requests("patch"), 0);

    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    let written = |s: Secret| String::from_utf8(s.data.unwrap()["password"].0.clone()).unwrap();
    let password = written(secrets.get("pr-1-db").await.unwrap());
    h.restart().await;
    h.ctx.inventory.refresh().await.unwrap();
    let stale = without_recorded_credentials(h.get("pr-1").await.unwrap());
    environment::reconcile(Arc::new(stale), h.ctx.clone()).await.unwrap();
    assert_eq!(requests("create"), 2, "handed out again");
    assert_eq!(
        requests("get"),
        2,
        "read once, after the create found it (and once by this test)"
    );
    assert_eq!(requests("patch"), 0, "nothing to change in it");
    assert_eq!(
        written(secrets.get("pr-1-db").await.unwrap()),
        password,
        "the password is kept"
    );
    let claimed = h
        .fake
        .databases()
        .into_iter()
        .find(|d| d.database.tags.contains_key(tag::CLAIMED_BY))
        .unwrap();
    assert_eq!(claimed.master_password.as_deref(), Some(password.as_str()));
}

/// The seeded snapshots (2026-11-27/28) are older than the pool's maxSnapshotAge
/// (26h): the pool says so in a condition, which Argo CD shows as Degraded
/// (tests/argocd reads the object recorded here).
#[tokio::test]
async fn a_pool_restoring_from_a_stale_snapshot_says_so() {
    let mut h = Harness::new(seeded_fake(16), (1, 5)).await;
    create(&h, cluster::environment("any", "standard")).await;
    h.step("any").await.unwrap();
    let pools: Api<RdsPool> = Api::all(h.client.clone());
    let pool = pools.get("integration").await.unwrap();
    let fresh = conditions::find(&pool.status.unwrap().conditions, "SnapshotFresh")
        .cloned()
        .unwrap();
    assert_eq!(
        (fresh.status.as_str(), fresh.reason.as_str()),
        ("False", "SnapshotTooOld")
    );
    assert!(fresh.message.contains("integration-db-new"), "{}", fresh.message);
    support::fixtures::argocd_fixture(&pools, "integration", "rdspool-SnapshotTooOld.json").await;
}

/// While the inventory cannot describe AWS (here: DescribeInstances throttled for
/// longer than the staleness bound, 3 s in tests), an environment is not failed for
/// a readiness timeout judged on that old view; once the view is fresh it goes
/// Ready. Before, the stale view showed the instance still pending and the timeout
/// failed it for good.
#[tokio::test]
async fn a_stale_view_of_aws_does_not_time_an_environment_out() {
    use featureenv_operator::cloud::fake::{FaultKind, Trigger};
    let mut h = Harness::new(seeded_fake(17), (1, 5)).await;
    let mut quick = cluster::class("quick", Some("integration"));
    quick.metadata.annotations = None;
    quick.spec.readiness.timeout = "2s".into();
    h.create_class(&quick).await;
    create(&h, cluster::environment("slow-view", "quick")).await;
    for _ in 0..4 {
        h.step("slow-view").await.unwrap();
        h.fake.finish_transitions();
    }
    assert_eq!(h.phase("slow-view").await, Some(Phase::Provisioning));
    assert_eq!(h.fake.live_instances().len(), 1, "launched, not booted");

    h.fake.fail("DescribeInstances", Trigger::Always, FaultKind::Throttled);
    h.boot_instances(); // booted meanwhile; the operator cannot see it
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(h.ctx.inventory.refresh().await.is_err());
    let env = h.get("slow-view").await.unwrap();
    environment::reconcile(Arc::new(env), h.ctx.clone()).await.unwrap();
    assert_eq!(
        h.phase("slow-view").await,
        Some(Phase::Provisioning),
        "no timeout on a stale view"
    );

    h.fake.clear_faults();
    h.drive("slow-view", async |h| h.phase("slow-view").await == Some(Phase::Ready))
        .await;
}

/// The pool gives up a surplus spare only if the spare, read when it is about to be
/// deleted, is still unclaimed: here both spares are claimed (as by another replica)
/// after the last poll, and warm is lowered. Before, the pool deleted a claimed
/// database on the strength of its last poll.
#[tokio::test]
async fn the_pool_never_deletes_a_spare_claimed_since_its_last_poll() {
    use featureenv_operator::cloud::Databases;
    let mut h = Harness::new(seeded_fake(18), (2, 5)).await;
    for _ in 0..6 {
        h.step("nothing").await.unwrap();
        h.fake.finish_transitions();
    }
    let spares = h.fake.databases();
    assert_eq!(spares.len(), 2, "two warm spares");
    h.ctx.inventory.refresh().await.unwrap();
    for spare in &spares {
        let claim = std::collections::BTreeMap::from([(tag::CLAIMED_BY.to_owned(), "another-uid".to_owned())]);
        h.fake.tag_database(&spare.database.arn, &claim).await.unwrap();
    }
    let pools: Api<RdsPool> = Api::all(h.client.clone());
    let patch = kube::api::Patch::Merge(serde_json::json!({"spec": {"warm": 0}}));
    let pool = pools.patch("integration", &Default::default(), &patch).await.unwrap();
    // No poll in between: the inventory still shows both unclaimed.
    pool::reconcile(Arc::new(pool), h.ctx.clone()).await.unwrap();
    assert_eq!(
        h.fake.call_count("DeleteDBInstance"),
        0,
        "claimed databases are never deleted"
    );
    assert_eq!(h.fake.databases().len(), 2);
}

/// The reasons of the Events published about objects named `name`, oldest first.
async fn event_reasons(h: &Harness, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), NS);
    let mut found: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    found.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    found.into_iter().filter_map(|e| e.reason).collect()
}

/// Issue 11, item 2: an edit of `spec.services` after Ready is applied to the
/// running instance, not ignored. The instance is told once (SSM Run Command) to
/// run the new digest; the environment is `Updating` with observedGeneration held
/// back until the instance tags the outcome, then `Ready` with `status.images`
/// updated and no second instance. A failed update says so until the next edit.
#[tokio::test]
async fn an_edit_of_the_services_is_rolled_out_in_place() {
    let mut h = Harness::new(seeded_fake(12), (1, 5)).await;
    create(&h, cluster::environment("pr-1", "standard")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    let before = h.get("pr-1").await.unwrap();
    let instance_id = before
        .status
        .as_ref()
        .unwrap()
        .instance
        .as_ref()
        .unwrap()
        .id
        .clone()
        .unwrap();
    let launches = h.fake.call_count("RunInstances");

    let fake = h.fake.clone();
    let edit = |tag: &str, digest: char| {
        fake.add_registry_image(
            &format!("{ECR}/payments"),
            tag,
            &format!("sha256:{}", digest.to_string().repeat(64)),
        );
        serde_json::json!({"services": [{"name": "payments", "image": format!("{ECR}/payments:{tag}")}]})
    };
    h.patch_spec("pr-1", edit("pr-124", 'c')).await;
    h.step("pr-1").await.unwrap();
    let edited = h.get("pr-1").await.unwrap();
    let status = edited.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Updating);
    assert_eq!(h.ready_reason("pr-1").await, "Updating");
    assert_eq!(
        status.observed_generation, before.metadata.generation,
        "the edit is not observed before it is applied"
    );
    let scripts = h.fake.scripts();
    assert_eq!(scripts.len(), 1);
    assert_eq!(scripts[0].instance_id, instance_id);
    let new_digest = format!("payments@sha256:{}", "c".repeat(64));
    assert!(scripts[0].script.contains(&new_digest), "{}", scripts[0].script);
    let token = status.update.expect("update recorded").token;
    support::fixtures::argocd_fixture(&h.envs(), "pr-1", "environment-Updating.json").await;
    h.step("pr-1").await.unwrap();
    assert_eq!(h.fake.scripts().len(), 1, "sent once, however many passes");

    h.fake.set_services_tag(&instance_id, &format!("complete:{token}"));
    h.step("pr-1").await.unwrap();
    let updated = h.get("pr-1").await.unwrap();
    let status = updated.status.unwrap();
    assert_eq!(status.phase, Phase::Ready);
    assert_eq!(status.observed_generation, edited.metadata.generation);
    assert!(status.update.is_none());
    assert!(
        status.images.iter().any(|i| i.image.ends_with(&new_digest)),
        "{:?}",
        status.images
    );
    assert_eq!(h.fake.call_count("RunInstances"), launches, "updated in place");
    let reasons = event_reasons(&h, "pr-1").await;
    assert!(
        reasons.contains(&"Updating".to_owned()) && reasons.contains(&"Updated".to_owned()),
        "{reasons:?}"
    );

    // An update the instance fails: Failed with the reason, until the next edit.
    h.patch_spec("pr-1", edit("pr-125", 'd')).await;
    h.step("pr-1").await.unwrap();
    let token = h.get("pr-1").await.unwrap().status.unwrap().update.unwrap().token;
    h.fake.set_services_tag(&instance_id, &format!("failed:{token}"));
    h.step("pr-1").await.unwrap();
    assert_eq!(h.phase("pr-1").await, Some(Phase::Failed));
    assert_eq!(h.ready_reason("pr-1").await, "UpdateFailed");
    support::fixtures::argocd_fixture(&h.envs(), "pr-1", "environment-UpdateFailed.json").await;
    h.step("pr-1").await.unwrap();
    assert_eq!(h.fake.scripts().len(), 2, "a failed update is not resent by itself");
    h.patch_spec("pr-1", edit("pr-126", 'e')).await;
    h.step("pr-1").await.unwrap();
    assert_eq!(h.phase("pr-1").await, Some(Phase::Updating), "a new edit tries again");
    assert_eq!(h.fake.scripts().len(), 3);
    assert_eq!(h.instances_of(&before.metadata.uid.unwrap()), 1);
}

/// Cleanup deletes the credentials parameter only while it exists. Under the
/// operator's IAM policy, deleting a parameter that is gone (or was never written)
/// is AccessDenied, not ParameterNotFound: the condition on our cluster tag cannot
/// match a parameter without tags, and IAM decides before SSM looks the name up. Every
/// cleanup pass used to delete it again (found by the end-to-end IAM check of logged
/// calls), so on AWS the finalizer would never have been released.
#[tokio::test]
async fn cleanup_deletes_the_parameter_only_while_it_exists() {
    let mut h = Harness::new(seeded_fake(3), (1, 5)).await;
    create(&h, cluster::environment("pr-1", "standard")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    // Termination and deletion take passes, as on AWS.
    h.fake.set_slow_transitions(true);
    h.envs().delete("pr-1", &DeleteParams::default()).await.unwrap();
    h.drive("pr-1", async |h| h.get("pr-1").await.is_none()).await;
    assert!(h.fake.parameter_names().is_empty(), "parameter deleted");
    assert_eq!(
        h.fake.call_count("DeleteParameter"),
        1,
        "deleted once, not once per pass"
    );

    // An environment whose class has no database never had a parameter.
    h.create_class(&cluster::class("nodb", None)).await;
    create(&h, cluster::environment("plain", "nodb")).await;
    h.drive("plain", async |h| h.phase("plain").await == Some(Phase::Ready))
        .await;
    h.envs().delete("plain", &DeleteParams::default()).await.unwrap();
    h.drive("plain", async |h| h.get("plain").await.is_none()).await;
    assert_eq!(
        h.fake.call_count("DeleteParameter"),
        1,
        "nothing to delete, nothing deleted"
    );
}

/// A class with a namespace selector admits only the namespaces it selects: an
/// environment elsewhere is refused before anything is made, naming the field, and
/// admitted once its namespace gets the label. Every environment also carries its
/// owner as the `featureenv.io/owner` label, whatever made it.
#[tokio::test]
async fn a_class_admits_only_the_namespaces_it_selects_and_owners_are_labelled() {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let mut h = Harness::new(seeded_fake(21), (0, 5)).await;
    let mut payments = cluster::class("payments-only", None);
    payments.metadata.annotations = None;
    payments.spec.namespace_selector = Some(LabelSelector {
        match_labels: Some(BTreeMap::from([("team".to_owned(), "payments".to_owned())])),
        match_expressions: None,
    });
    h.create_class(&payments).await;
    create(&h, cluster::environment("elsewhere", "payments-only")).await;
    h.step("elsewhere").await.unwrap();
    h.step("elsewhere").await.unwrap();

    let env = h.get("elsewhere").await.unwrap();
    let owner = env.spec.owner.clone().expect("the fixture has an owner");
    assert_eq!(
        env.labels().get(featureenv_operator::api::OWNER_LABEL),
        featureenv_operator::api::owner_label_value(&owner).as_ref(),
        "owner label"
    );
    let status = env.status.unwrap_or_default();
    assert_eq!(status.launch_token, None, "not admitted");
    let ready = conditions::find(&status.conditions, READY).unwrap();
    assert_eq!(ready.reason, "NamespaceNotAllowed");
    assert!(
        ready.message.contains("metadata.namespace") && ready.message.contains(NS),
        "{}",
        ready.message
    );
    assert_eq!(h.fake.call_count("RunInstances"), 0, "nothing launched");

    let namespaces: Api<Namespace> = Api::all(h.client.clone());
    let label = serde_json::json!({"metadata": {"labels": {"team": "payments"}}});
    namespaces
        .patch(NS, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(label))
        .await
        .unwrap();
    h.step("elsewhere").await.unwrap();
    let status = h.get("elsewhere").await.unwrap().status.unwrap_or_default();
    assert!(status.launch_token.is_some(), "admitted once the namespace is labelled");
}

/// A class whose baseline outgrows EC2's 16 KB user-data limit is refused before
/// anything is made, naming the field; before, RunInstances refused every launch.
#[tokio::test]
async fn a_bootstrap_over_the_user_data_limit_is_refused_before_launch() {
    use featureenv_operator::api::class::BaselineService;
    let mut h = Harness::new(seeded_fake(22), (0, 5)).await;
    let mut big = cluster::class("big", None);
    big.metadata.annotations = None;
    let repository = big.spec.services[0].repository.clone();
    big.spec.services = (0..150)
        .map(|i| BaselineService {
            name: format!("service-{i:03}"),
            repository: repository.clone(),
            tag: "latest".into(),
        })
        .collect();
    h.create_class(&big).await;
    create(&h, cluster::environment("big", "big")).await;
    h.step("big").await.unwrap();
    h.step("big").await.unwrap();
    let status = h.get("big").await.unwrap().status.unwrap_or_default();
    let ready = conditions::find(&status.conditions, READY).unwrap();
    assert_eq!(ready.reason, "UserDataTooLarge", "{}", ready.message);
    assert!(
        ready.message.starts_with("spec.services:") && ready.message.contains("16384"),
        "{}",
        ready.message
    );
    assert_eq!(status.launch_token, None, "not admitted");
    assert_eq!(h.fake.call_count("RunInstances"), 0, "nothing launched");
}

/// `spec.sleeping: true` stops the instance and the database (phase Sleeping,
/// Asleep once both are stopped); a database RDS starts again by itself is stopped
/// again; `false` starts both, sends the wake script once the instance runs, and the
/// environment is Ready again when the instance tags the script's token. Nothing is
/// launched or claimed anew.
#[tokio::test]
async fn sleeping_stops_and_waking_restarts_instance_and_database() {
    let mut h = Harness::new(seeded_fake(23), (1, 5)).await;
    create(&h, cluster::environment("pr-1", "standard")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    let status = h.get("pr-1").await.unwrap().status.unwrap();
    let instance_id = status.instance.unwrap().id.unwrap();
    let db_id = status.database.unwrap().id.unwrap();
    let (launches, restores) = (
        h.fake.call_count("RunInstances"),
        h.fake.call_count("RestoreDBInstanceFromDBSnapshot"),
    );
    let instance_state = |h: &Harness| {
        h.fake
            .live_instances()
            .into_iter()
            .find(|i| i.instance.id == instance_id)
            .map(|i| i.instance.state)
    };
    let db_status = |h: &Harness| {
        h.fake
            .databases()
            .into_iter()
            .find(|d| d.database.id == db_id)
            .map(|d| d.database.status)
    };

    h.fake.set_slow_transitions(true);
    h.patch_spec("pr-1", serde_json::json!({"sleeping": true})).await;
    h.step("pr-1").await.unwrap();
    assert_eq!(h.phase("pr-1").await, Some(Phase::Sleeping));
    assert_eq!(h.ready_reason("pr-1").await, "FallingAsleep");
    h.fake.finish_transitions();
    h.step("pr-1").await.unwrap();
    assert_eq!(h.ready_reason("pr-1").await, "Asleep");
    assert_eq!(instance_state(&h), Some(InstanceState::Stopped));
    assert_eq!(db_status(&h), Some(DatabaseStatus::Stopped));
    let sleep = h
        .get("pr-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .sleep
        .expect("sleep recorded");
    assert!(
        sleep.wanted && sleep.since.is_some() && sleep.decided_by == "Spec",
        "{sleep:?}"
    );
    h.step("pr-1").await.unwrap();
    assert_eq!(
        h.fake.call_count("StopInstances"),
        1,
        "stopped once, however many passes"
    );
    assert_eq!(h.fake.call_count("StopDBInstance"), 1);

    // Seven days later RDS starts the database by itself.
    h.fake.restart_stopped_database(&db_id);
    h.step("pr-1").await.unwrap();
    assert_eq!(h.fake.call_count("StopDBInstance"), 2, "stopped again");
    assert!(event_reasons(&h, "pr-1").await.contains(&"DatabaseStarted".to_owned()));
    h.fake.finish_transitions();

    h.patch_spec("pr-1", serde_json::json!({"sleeping": false})).await;
    h.step("pr-1").await.unwrap();
    assert_eq!(h.phase("pr-1").await, Some(Phase::Waking));
    assert_eq!(h.ready_reason("pr-1").await, "StartingInstance");
    assert_eq!(h.fake.call_count("StartInstances"), 1);
    assert_eq!(h.fake.call_count("StartDBInstance"), 1);
    assert!(h.fake.scripts().is_empty(), "no script before the instance runs");
    h.fake.finish_transitions();
    h.step("pr-1").await.unwrap();
    assert_eq!(h.ready_reason("pr-1").await, "StartingServices");
    let scripts = h.fake.scripts();
    assert_eq!(scripts.len(), 1, "the wake script, sent once the instance runs");
    assert!(scripts[0].script.contains("minikube start"), "{}", scripts[0].script);
    let token = h
        .get("pr-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .sleep
        .unwrap()
        .wake
        .unwrap()
        .token;
    h.step("pr-1").await.unwrap();
    assert_eq!(h.fake.scripts().len(), 1, "sent once, however many passes");

    h.fake.set_services_tag(&instance_id, &format!("complete:{token}"));
    h.step("pr-1").await.unwrap();
    let status = h.get("pr-1").await.unwrap().status.unwrap();
    assert_eq!(status.phase, Phase::Ready, "{:?}", status.conditions);
    assert!(
        status.sleep.as_ref().is_some_and(|s| !s.wanted && s.since.is_none()),
        "{:?}",
        status.sleep
    );
    assert_eq!(h.fake.call_count("RunInstances"), launches, "nothing launched anew");
    assert_eq!(
        h.fake.call_count("RestoreDBInstanceFromDBSnapshot"),
        restores,
        "nothing restored anew"
    );
    let reasons = event_reasons(&h, "pr-1").await;
    for reason in ["Sleeping", "Waking", "Awake"] {
        assert!(
            reasons.contains(&reason.to_owned()),
            "{reason} missing from {reasons:?}"
        );
    }
}

/// A class's schedule sleeps an environment at its sleep time and wakes it at its
/// wake time (six-field cron, seconds first, a few seconds ahead); an environment
/// that sets `sleeping: false` keeps awake through it.
#[tokio::test]
async fn a_class_schedule_sleeps_and_wakes_its_environments() {
    use featureenv_operator::api::class::{SleepPolicy, SleepSchedule};
    let mut h = Harness::new(seeded_fake(24), (2, 5)).await;
    let now = Timestamp::now();
    let second = |offset: i64| {
        let t = (now + jiff::SignedDuration::from_secs(offset)).to_zoned(jiff::tz::TimeZone::UTC);
        format!("{} {} {} * * *", t.second(), t.minute(), t.hour())
    };
    let mut nightly = cluster::class("nightly", Some("integration"));
    nightly.metadata.annotations = None;
    nightly.spec.sleep = Some(SleepPolicy {
        schedules: vec![SleepSchedule {
            sleep: second(8),
            wake: Some(second(14)),
            time_zone: "UTC".into(),
        }],
    });
    h.create_class(&nightly).await;
    create(&h, cluster::environment("scheduled", "nightly")).await;
    let mut opted_out = cluster::environment("opted-out", "nightly");
    opted_out.spec.sleeping = Some(false);
    create(&h, opted_out).await;
    for name in ["scheduled", "opted-out"] {
        h.drive(name, async |h| h.phase(name).await == Some(Phase::Ready)).await;
    }
    let next = h
        .get("scheduled")
        .await
        .unwrap()
        .status
        .unwrap()
        .sleep
        .unwrap()
        .next_change;
    assert!(next.is_some(), "the next sleep time is shown");

    tokio::time::sleep_until(tokio::time::Instant::now() + until(now, 9)).await;
    for name in ["scheduled", "opted-out"] {
        h.step(name).await.unwrap();
        h.fake.finish_transitions();
        h.step(name).await.unwrap();
    }
    assert_eq!(h.phase("scheduled").await, Some(Phase::Sleeping));
    assert_eq!(h.ready_reason("scheduled").await, "Asleep");
    assert_eq!(
        h.phase("opted-out").await,
        Some(Phase::Ready),
        "spec.sleeping: false keeps it awake"
    );

    tokio::time::sleep_until(tokio::time::Instant::now() + until(now, 15)).await;
    h.step("scheduled").await.unwrap();
    h.fake.finish_transitions();
    h.step("scheduled").await.unwrap();
    assert_eq!(h.phase("scheduled").await, Some(Phase::Waking));
    let status = h.get("scheduled").await.unwrap().status.unwrap();
    let instance_id = status.instance.unwrap().id.unwrap();
    let token = status.sleep.unwrap().wake.expect("wake script sent").token;
    h.fake.set_services_tag(&instance_id, &format!("complete:{token}"));
    h.step("scheduled").await.unwrap();
    assert_eq!(h.phase("scheduled").await, Some(Phase::Ready));
}

/// How long from now until `offset` seconds after `start`.
fn until(start: Timestamp, offset: i64) -> Duration {
    let at = start + jiff::SignedDuration::from_secs(offset);
    Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()
}

/// A class `warm` with a warm pool of `size` spares kept `Running`.
fn warm_class(size: u32) -> FeatureEnvironmentClass {
    let mut class = cluster::class("warm", Some("integration"));
    class.spec.warm_pool = Some(featureenv_operator::api::class::WarmPool {
        size,
        state: featureenv_operator::api::class::WarmState::Running,
    });
    class.metadata.annotations = None;
    class
}

/// An environment of class `warm` of the class's instance type (a spare has no other).
fn warm_environment(name: &str) -> FeatureEnvironment {
    let mut env = cluster::environment(name, "warm");
    env.spec.instance_type = None;
    env
}

/// The live spares of class `warm` nobody claimed.
fn free_spares(h: &Harness) -> Vec<String> {
    h.fake
        .live_instances()
        .into_iter()
        .filter(|i| i.instance.tags.contains_key(tag::WARM_POOL) && !i.instance.tags.contains_key(tag::UID))
        .map(|i| i.instance.id)
        .collect()
}

async fn warm_pool_status(h: &Harness) -> featureenv_operator::api::class::WarmPoolStatus {
    let classes: Api<FeatureEnvironmentClass> = Api::all(h.client.clone());
    let class = classes.get("warm").await.unwrap();
    class.status.and_then(|s| s.warm_pool).unwrap_or_default()
}

fn start_of(env: &FeatureEnvironment) -> Option<featureenv_operator::api::environment::Start> {
    env.status.as_ref()?.instance.as_ref()?.start
}

#[tokio::test]
async fn a_warm_spare_is_claimed_personalised_and_replaced_and_without_one_the_launch_is_cold() {
    use featureenv_operator::api::environment::Start;
    let mut h = Harness::new(seeded_fake(21), (2, 5)).await;
    h.create_class(&warm_class(1)).await;
    h.drive("none", async |h| warm_pool_status(h).await.available == 1)
        .await;
    let spare = free_spares(&h);
    assert_eq!(spare.len(), 1, "one spare kept");
    assert_eq!(h.fake.call_count("RunInstances"), 1);
    assert!(
        warm_pool_status(&h).await.pending_launches.is_empty(),
        "its launch was seen"
    );

    let uid = create(&h, warm_environment("pr-1")).await;
    // The pass that tags the spare also starts its pull of the environment's images,
    // before the claim is confirmed: EC2's tag delay overlaps the pull.
    let fake = h.fake.clone();
    let sent = |task: &str| {
        fake.scripts()
            .into_iter()
            .filter(|s| s.instance_id == spare[0] && s.script.contains(&format!("readonly TASK='{task}'")))
            .collect::<Vec<_>>()
    };
    for _ in 0..5 {
        if !sent("prefetch").is_empty() {
            break;
        }
        h.step("pr-1").await.unwrap();
    }
    assert_eq!(start_of(&h.get("pr-1").await.unwrap()), None, "not confirmed yet");
    let prefetch = sent("prefetch");
    assert_eq!(prefetch.len(), 1, "one prefetch, with the tag");
    let under_test = format!("{ECR}/payments@sha256:{}", "b".repeat(64));
    assert!(prefetch[0].script.contains(&under_test), "{}", prefetch[0].script);
    assert!(
        !prefetch[0].script.contains("/database") && !prefetch[0].script.contains("COMPLETE_VALUE"),
        "a prefetch reads no database and reports nothing"
    );
    assert!(sent("personalisation").is_empty(), "personalised only once confirmed");
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    assert_eq!(sent("prefetch").len(), 1, "sent once per claim");
    let env = h.get("pr-1").await.unwrap();
    assert_eq!(start_of(&env), Some(Start::Warm));
    let instance = env.status.as_ref().unwrap().instance.as_ref().unwrap().id.clone();
    assert_eq!(instance.as_deref(), Some(spare[0].as_str()), "the spare, not a launch");
    assert_eq!(h.instances_of(&uid), 1);
    let personalisation = sent("personalisation")
        .into_iter()
        .next()
        .expect("a personalisation sent to the spare");
    assert!(
        personalisation
            .script
            .contains(&format!("{ECR}/payments@sha256:{}", "b".repeat(64))),
        "the image under test is loaded"
    );
    assert!(
        personalisation.script.contains(&format!("/{uid}/database")),
        "the database is wired"
    );
    // The spare was bootstrapped with the baseline pinned as the environment pins it,
    // so the personalisation finds those images present: only the one under test is new.
    let spare_user_data = h
        .fake
        .instances()
        .into_iter()
        .find(|i| i.instance.id == spare[0])
        .unwrap()
        .user_data;
    let baseline = format!("{ECR}/orders@sha256:{}", "a".repeat(64));
    assert!(spare_user_data.contains(&baseline), "{spare_user_data}");
    assert!(personalisation.script.contains(&baseline));
    let reasons = event_reasons(&h, "pr-1").await;
    assert!(reasons.contains(&"InstanceClaimed".to_owned()), "{reasons:?}");

    // The pool replaces what was claimed. Two environments arriving together: one
    // takes the replacement, the other launches cold.
    h.drive("none", async |h| warm_pool_status(h).await.available == 1)
        .await;
    assert_eq!(h.fake.call_count("RunInstances"), 2, "the claimed spare is replaced");
    let replacement = free_spares(&h);
    let uid2 = create(&h, warm_environment("pr-2")).await;
    let uid3 = create(&h, warm_environment("pr-3")).await;
    for _ in 0..3 {
        h.step("pr-2").await.unwrap();
        h.step("pr-3").await.unwrap();
    }
    let starts = [
        start_of(&h.get("pr-2").await.unwrap()),
        start_of(&h.get("pr-3").await.unwrap()),
    ];
    assert!(
        starts.contains(&Some(Start::Warm)) && starts.contains(&Some(Start::Cold)),
        "{starts:?}"
    );
    for name in ["pr-2", "pr-3"] {
        h.drive(name, async |h| h.phase(name).await == Some(Phase::Ready)).await;
    }
    assert_eq!(h.instances_of(&uid2) + h.instances_of(&uid3), 2);
    assert_eq!(h.instances_of(&uid), 1, "the first environment keeps its instance");
    let warm = if starts[0] == Some(Start::Warm) { "pr-2" } else { "pr-3" };
    let warm_instance = h.get(warm).await.unwrap().status.unwrap().instance.unwrap().id;
    assert_eq!(warm_instance.as_ref(), replacement.first());
}

#[tokio::test]
async fn a_spare_of_a_superseded_image_is_replaced_and_a_claimed_one_is_not() {
    let mut h = Harness::new(seeded_fake(22), (2, 5)).await;
    h.create_class(&warm_class(1)).await;
    h.drive("none", async |h| warm_pool_status(h).await.available == 1)
        .await;
    let uid = create(&h, warm_environment("pr-1")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    h.drive("none", async |h| warm_pool_status(h).await.available == 1)
        .await;
    let old_spare = free_spares(&h);
    let claimed = h
        .get("pr-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .instance
        .unwrap()
        .id
        .unwrap();

    // A newer image is baked; the cached look-up expires.
    h.fake.add_image(
        "ami-00000000000000009",
        "minikube-service-newer",
        "self",
        "2026-11-29T00:00:00Z".parse().unwrap(),
        &[("featureenv.io/pipeline", "minikube-service")],
    );
    h.restart().await;
    h.drive("none", async |h| {
        warm_pool_status(h).await.image_id.as_deref() == Some("ami-00000000000000009")
            && warm_pool_status(h).await.available == 1
    })
    .await;
    let new_spare = free_spares(&h);
    assert_eq!(new_spare.len(), 1);
    assert_ne!(new_spare, old_spare, "the old spare was replaced");
    let live: Vec<_> = h.fake.live_instances().into_iter().map(|i| i.instance).collect();
    assert!(
        !live.iter().any(|i| i.id == old_spare[0]),
        "the old spare is terminated"
    );
    let kept = live
        .iter()
        .find(|i| i.id == claimed)
        .expect("the claimed spare still runs");
    assert_eq!(kept.tags.get(tag::UID), Some(&uid));
    assert_eq!(
        kept.image_id, "ami-00000000000000002",
        "a claimed instance never changes"
    );
}

#[tokio::test]
async fn a_crash_after_any_cloud_call_never_claims_a_spare_twice_or_launches_one_twice() {
    use featureenv_operator::api::environment::Start;
    let run = async |h: &mut Harness| -> String {
        h.create_class(&warm_class(1)).await;
        h.drive("none", async |h| warm_pool_status(h).await.available == 1)
            .await;
        let uid = create(h, warm_environment("pr-1")).await;
        h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
            .await;
        uid
    };
    let total = {
        let fake = seeded_fake(23);
        fake.set_visibility_lag(3);
        let mut h = Harness::new(fake, (1, 5)).await;
        run(&mut h).await;
        h.fake.total_calls()
    };
    let (_control_plane, client) = cluster::cluster().await;
    let classes: Api<FeatureEnvironmentClass> = Api::all(client.clone());
    for k in 1..=total {
        let fake = seeded_fake(23);
        // A new instance stays invisible to the next describes: after a crash only
        // the launch tokens written to the class's status prevent a second spare.
        fake.set_visibility_lag(3);
        fake.fail("*", Trigger::NthCall(k), FaultKind::LostResponse);
        let mut h = Harness::in_namespace(client.clone(), &format!("warm-crash-{k}"), fake, (1, 5)).await;
        let uid = run(&mut h).await;
        let env = h.get("pr-1").await.unwrap();
        assert_eq!(
            start_of(&env),
            Some(Start::Warm),
            "crash after call {k}: the spare was taken"
        );
        assert_eq!(h.instances_of(&uid), 1, "crash after call {k}: exactly one instance");
        // Each instance carries one uid tag: no instance serves two environments, and
        // the pool never launched a spare twice (the spare and its replacement).
        assert!(
            h.fake.instances().len() <= 2,
            "crash after call {k}: {} instances launched",
            h.fake.instances().len()
        );
        h.envs().delete("pr-1", &DeleteParams::default()).await.unwrap();
        h.drive("pr-1", async |h| h.get("pr-1").await.is_none()).await;
        assert_eq!(h.instances_of(&uid), 0, "crash after call {k}: instance leaked");
        classes.delete("warm", &DeleteParams::default()).await.unwrap();
        while classes.get_opt("warm").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_stopped_spare_is_started_before_it_is_personalised() {
    use featureenv_operator::api::class::WarmState;
    use featureenv_operator::api::environment::Start;
    let mut h = Harness::new(seeded_fake(24), (1, 5)).await;
    let mut class = warm_class(1);
    class.spec.warm_pool.as_mut().unwrap().state = WarmState::Stopped;
    h.create_class(&class).await;
    h.drive("none", async |h| warm_pool_status(h).await.available == 1)
        .await;
    let spare = h.fake.live_instances().into_iter().next().unwrap().instance;
    assert_eq!(spare.state, InstanceState::Stopped, "bootstrapped, then stopped");
    assert_eq!(h.fake.call_count("StopInstances"), 1);

    create(&h, warm_environment("pr-1")).await;
    h.drive("pr-1", async |h| h.phase("pr-1").await == Some(Phase::Ready))
        .await;
    let env = h.get("pr-1").await.unwrap();
    assert_eq!(start_of(&env), Some(Start::Warm));
    assert_eq!(env.status.unwrap().instance.unwrap().id, Some(spare.id.clone()));
    assert_eq!(h.fake.call_count("StartInstances"), 1, "the claimed spare was started");
    let scripts: Vec<_> = h
        .fake
        .scripts()
        .into_iter()
        .filter(|s| s.instance_id == spare.id)
        .collect();
    assert_eq!(
        scripts.len(),
        1,
        "personalised once, and no prefetch: SSM cannot reach a stopped spare"
    );
    assert!(
        scripts[0].script.contains("minikube start"),
        "Minikube comes back after the start"
    );
}
