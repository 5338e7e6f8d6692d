//! A stateful in-memory cloud implementing every cloud trait, for reconcile tests:
//! it records each call, can be told to fail (per operation, on the n-th call, with a
//! probability, or after the call took effect — a simulated crash), and lets tests
//! drive slow transitions (instance boot, database restore) explicitly. No I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;

/// How an injected fault is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Throttled,
    InsufficientCapacity,
    Other,
    /// The call takes effect, then the caller gets an error: what a crash (or a lost
    /// response) right after the call looks like to the next reconcile.
    LostResponse,
}

/// When an injected fault fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    Always,
    /// Only the n-th call (1-based) of the operation.
    Nth(u64),
    /// Only the n-th call (1-based) counting every operation, to walk a fault
    /// through each step of a path in turn.
    NthCall(u64),
    /// The next `k` calls of the operation.
    Times(u64),
    Probability(f64),
}

#[derive(Clone, Debug)]
struct Fault {
    /// Operation name (`RunInstances`) or `*` for every operation.
    operation: String,
    trigger: Trigger,
    kind: FaultKind,
}

/// An instance plus what only the fake knows about it.
#[derive(Clone, Debug)]
pub struct FakeInstance {
    pub instance: Instance,
    pub user_data: String,
    pub client_token: String,
    pub metadata_tokens_required: bool,
    pub console_output: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FakeDatabase {
    pub database: Database,
    pub snapshot_id: String,
    pub master_password: Option<String>,
}

#[derive(Clone, Debug)]
struct FakeImage {
    image: Image,
    owner: String,
    tags: Tags,
}

#[derive(Default)]
struct State {
    next_id: u64,
    images: Vec<FakeImage>,
    parameters: BTreeMap<String, String>,
    parameter_tags: BTreeMap<String, Tags>,
    instances: BTreeMap<String, FakeInstance>,
    snapshots: Vec<Snapshot>,
    databases: BTreeMap<String, FakeDatabase>,
    /// repository → tag → digest
    registry: BTreeMap<String, BTreeMap<String, String>>,
    calls: Vec<String>,
    counts: HashMap<String, u64>,
    faults: Vec<Fault>,
    /// Instances launched go straight to `running` unless set.
    instances_start_pending: bool,
    /// Restores go straight to `available` unless set.
    restores_start_creating: bool,
    /// EC2's eventual consistency: a new instance stays invisible to this many
    /// DescribeInstances calls after its launch.
    visibility_lag: u32,
    /// Remaining invisible describes per instance id.
    invisible: HashMap<String, u32>,
    /// RunInstances ignores ClientToken, as moto does: only the operator's own
    /// look-up by tag can then prevent a second launch.
    client_tokens_ignored: bool,
    /// RDS tag eventual consistency: tags added to a database stay out of this many
    /// DescribeDBInstances answers after AddTagsToResource.
    tag_lag: u32,
    /// Per database id: (tags as the next answers show them, answers left).
    stale_tags: HashMap<String, (Tags, u32)>,
    /// Scripts sent to instances (SendCommand), in order.
    scripts: Vec<ScriptRequest>,
}

impl State {
    /// Ids still invisible to this DescribeInstances call; counts the call.
    fn tick_visibility(&mut self) -> Vec<String> {
        let hidden: Vec<String> = self.invisible.keys().cloned().collect();
        for n in self.invisible.values_mut() {
            *n -= 1;
        }
        self.invisible.retain(|_, n| *n > 0);
        hidden
    }
}

/// The fake cloud. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct FakeCloud {
    state: Arc<Mutex<State>>,
    rng: Arc<Mutex<StdRng>>,
    latency: Arc<Mutex<Duration>>,
}

impl Default for FakeCloud {
    fn default() -> Self {
        Self::new(0)
    }
}

impl FakeCloud {
    /// A fake whose probabilistic faults follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::default(),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            latency: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake cloud state poisoned")
    }

    // ---- seeding and driving -------------------------------------------------

    pub fn add_image(&self, id: &str, name: &str, owner: &str, created_at: Timestamp, tags: &[(&str, &str)]) {
        self.state().images.push(FakeImage {
            image: Image {
                id: id.into(),
                name: name.into(),
                created_at,
            },
            owner: owner.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        });
    }

    pub fn add_snapshot(&self, id: &str, source_db: &str, created_at: Timestamp) {
        self.state().snapshots.push(Snapshot {
            id: id.into(),
            source_db: source_db.into(),
            created_at,
        });
    }

    pub fn add_registry_image(&self, repository: &str, tag: &str, digest: &str) {
        self.state()
            .registry
            .entry(repository.into())
            .or_default()
            .insert(tag.into(), digest.into());
    }

    pub fn set_parameter_value(&self, name: &str, value: &str) {
        self.state().parameters.insert(name.into(), value.into());
    }

    /// New instances start `pending` and restores start `creating` until advanced.
    pub fn set_slow_transitions(&self, slow: bool) {
        let mut s = self.state();
        s.instances_start_pending = slow;
        s.restores_start_creating = slow;
    }

    /// New instances stay invisible to the next `describes` DescribeInstances calls,
    /// as EC2's eventual consistency allows right after RunInstances.
    pub fn set_visibility_lag(&self, describes: u32) {
        self.state().visibility_lag = describes;
    }

    /// Tags added to a database stay invisible to the next `describes`
    /// DescribeDBInstances answers, as RDS's eventual consistency allows.
    pub fn set_tag_lag(&self, describes: u32) {
        self.state().tag_lag = describes;
    }

    /// Makes RunInstances ignore ClientToken (moto's behaviour), so a test can show
    /// what the operator's look-up by tag prevents on its own.
    pub fn ignore_client_tokens(&self) {
        self.state().client_tokens_ignored = true;
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }

    /// Moves pending instances to running and creating databases to available.
    pub fn finish_transitions(&self) {
        let mut s = self.state();
        for i in s.instances.values_mut() {
            match i.instance.state {
                InstanceState::Pending => i.instance.state = InstanceState::Running,
                InstanceState::ShuttingDown => i.instance.state = InstanceState::Terminated,
                InstanceState::Stopping => i.instance.state = InstanceState::Stopped,
                _ => {}
            }
        }
        for d in s.databases.values_mut() {
            match d.database.status {
                DatabaseStatus::Creating | DatabaseStatus::Modifying | DatabaseStatus::Starting => {
                    d.database.status = DatabaseStatus::Available;
                }
                DatabaseStatus::Stopping => d.database.status = DatabaseStatus::Stopped,
                _ => {}
            }
        }
        // Deleted databases disappear once the deletion finishes.
        s.databases.retain(|_, d| d.database.status != DatabaseStatus::Deleting);
    }

    /// What RDS does to a database stopped for seven days: start it again.
    pub fn restart_stopped_database(&self, id: &str) {
        if let Some(d) = self.state().databases.get_mut(id)
            && d.database.status == DatabaseStatus::Stopped
        {
            d.database.status = DatabaseStatus::Available;
        }
    }

    /// StopInstances / StartInstances: from `from` to `to`, through `via` while
    /// transitions are slow; already on the way or there is no error, as on EC2; any
    /// other state is IncorrectInstanceState.
    async fn move_instance(
        &self,
        id: &str,
        op: &'static str,
        from: InstanceState,
        via: InstanceState,
        to: InstanceState,
    ) -> CloudResult<()> {
        let lost = self.enter(op).await?;
        let mut s = self.state();
        let slow = s.instances_start_pending;
        let i = s.instances.get_mut(id).ok_or_else(|| not_found(op, id))?;
        match i.instance.state {
            state if state == from => i.instance.state = if slow { via } else { to },
            state if state == via || state == to => {}
            state => return Err(incorrect_state(op, id, state)),
        }
        finish(op, lost, Ok(()))
    }

    /// StopDBInstance / StartDBInstance: from `from` to `to`, through `via` while
    /// transitions are slow; RDS's InvalidDBInstanceState from any other status.
    async fn move_database(
        &self,
        id: &str,
        op: &'static str,
        from: DatabaseStatus,
        via: DatabaseStatus,
        to: DatabaseStatus,
    ) -> CloudResult<()> {
        let lost = self.enter(op).await?;
        let mut s = self.state();
        let slow = s.restores_start_creating;
        let d = s.databases.get_mut(id).ok_or_else(|| not_found(op, id))?;
        if d.database.status != from {
            return Err(CloudError::InvalidState {
                operation: op,
                message: format!(
                    "DB instance {id} is not in {from:?} state (it is {:?}).",
                    d.database.status
                ),
            });
        }
        d.database.status = if slow { via } else { to };
        finish(op, lost, Ok(()))
    }

    /// What the instance's bootstrap script does at the end: tag itself.
    pub fn set_bootstrap_tag(&self, instance_id: &str, value: &str) {
        if let Some(i) = self.state().instances.get_mut(instance_id) {
            i.instance.tags.insert(tag::BOOTSTRAP.into(), value.into());
        }
    }

    /// What an instance does at the end of a services update: tag itself.
    pub fn set_services_tag(&self, instance_id: &str, value: &str) {
        if let Some(i) = self.state().instances.get_mut(instance_id) {
            i.instance.tags.insert(tag::SERVICES.into(), value.into());
        }
    }

    /// The scripts sent to instances so far.
    pub fn scripts(&self) -> Vec<ScriptRequest> {
        self.state().scripts.clone()
    }

    pub fn set_console_output(&self, instance_id: &str, output: &str) {
        if let Some(i) = self.state().instances.get_mut(instance_id) {
            i.console_output = Some(output.into());
        }
    }

    /// Injects a fault for `operation` (`*` = any).
    pub fn fail(&self, operation: &str, trigger: Trigger, kind: FaultKind) {
        self.state().faults.push(Fault {
            operation: operation.into(),
            trigger,
            kind,
        });
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    // ---- inspection -----------------------------------------------------------

    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    pub fn call_count(&self, operation: &str) -> u64 {
        self.state().counts.get(operation).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.state().calls.len() as u64
    }

    pub fn instances(&self) -> Vec<FakeInstance> {
        self.state().instances.values().cloned().collect()
    }

    /// Instances not terminated or shutting down.
    pub fn live_instances(&self) -> Vec<FakeInstance> {
        self.instances()
            .into_iter()
            .filter(|i| !i.instance.state.is_gone())
            .collect()
    }

    pub fn databases(&self) -> Vec<FakeDatabase> {
        self.state().databases.values().cloned().collect()
    }

    pub fn parameter(&self, name: &str) -> Option<String> {
        self.state().parameters.get(name).cloned()
    }

    pub fn parameter_tags(&self, name: &str) -> Tags {
        self.state().parameter_tags.get(name).cloned().unwrap_or_default()
    }

    pub fn parameter_names(&self) -> Vec<String> {
        self.state().parameters.keys().cloned().collect()
    }

    // ---- call bookkeeping -----------------------------------------------------

    /// Records the call and decides whether a fault fires: `Err` before the effect,
    /// or `Ok(true)` meaning "apply the effect, then report a lost response".
    async fn enter(&self, operation: &'static str) -> CloudResult<bool> {
        let latency = *self.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut s = self.state();
        s.calls.push(operation.to_owned());
        let n = {
            let c = s.counts.entry(operation.to_owned()).or_default();
            *c += 1;
            *c
        };
        let overall = s.calls.len() as u64;
        let mut fired = None;
        for fault in s.faults.iter_mut() {
            if fault.operation != "*" && fault.operation != operation {
                continue;
            }
            let fires = match &mut fault.trigger {
                Trigger::Always => true,
                Trigger::Nth(k) => *k == n,
                Trigger::NthCall(k) => *k == overall,
                Trigger::Times(k) if *k > 0 => {
                    *k -= 1;
                    true
                }
                Trigger::Times(_) => false,
                Trigger::Probability(p) => self.rng.lock().unwrap().random_bool(p.clamp(0.0, 1.0)),
            };
            if fires {
                fired = Some(fault.kind);
                break;
            }
        }
        match fired {
            None => Ok(false),
            Some(FaultKind::LostResponse) => Ok(true),
            Some(kind) => Err(injected(operation, kind)),
        }
    }

    fn next_id(&self, prefix: &str) -> String {
        let mut s = self.state();
        s.next_id += 1;
        format!("{prefix}-{:017x}", s.next_id)
    }
}

fn injected(operation: &'static str, kind: FaultKind) -> CloudError {
    let message = "injected fault".to_owned();
    match kind {
        FaultKind::Throttled => CloudError::Throttled { operation, message },
        FaultKind::InsufficientCapacity => CloudError::InsufficientCapacity { operation, message },
        FaultKind::Other | FaultKind::LostResponse => CloudError::Other {
            operation,
            message,
            source: None,
        },
    }
}

/// Applies the effect, then turns the result into an error if the response is "lost".
fn finish<T>(operation: &'static str, lost: bool, result: CloudResult<T>) -> CloudResult<T> {
    match (lost, result) {
        (true, Ok(_)) => Err(injected(operation, FaultKind::LostResponse)),
        (_, r) => r,
    }
}

/// EC2's IncorrectInstanceState, mapped as the adapter maps it.
fn incorrect_state(op: &'static str, id: &str, state: InstanceState) -> CloudError {
    CloudError::InvalidState {
        operation: op,
        message: format!(
            "The instance '{id}' is not in a state from which it can be changed ({}).",
            state.as_str()
        ),
    }
}

fn not_found(operation: &'static str, what: &str) -> CloudError {
    CloudError::NotFound {
        operation,
        message: what.to_owned(),
    }
}

fn wildcard_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

#[async_trait]
impl Compute for FakeCloud {
    async fn resolve_image(&self, terms: &[ImageSelectorTerm]) -> CloudResult<Option<Image>> {
        const OP: &str = "DescribeImages";
        let lost = self.enter(OP).await?;
        let s = self.state();
        let mut best: Option<Image> = None;
        for term in terms {
            let wanted_id = match &term.ssm_parameter {
                Some(p) => match s.parameters.get(p) {
                    Some(v) => Some(v.clone()),
                    None => continue,
                },
                None => term.id.clone(),
            };
            for img in &s.images {
                let ok = wanted_id.as_ref().is_none_or(|id| &img.image.id == id)
                    && term.name.as_ref().is_none_or(|n| wildcard_match(n, &img.image.name))
                    && term
                        .owner
                        .as_ref()
                        .is_none_or(|o| o == &img.owner || (o == "self" && img.owner == "self"))
                    && term.tags.iter().all(|(k, v)| img.tags.get(k) == Some(v));
                if ok && best.as_ref().is_none_or(|b| img.image.created_at > b.created_at) {
                    best = Some(img.image.clone());
                }
            }
        }
        finish(OP, lost, Ok(best))
    }

    async fn launch_instance(&self, request: &LaunchRequest) -> CloudResult<Instance> {
        const OP: &str = "RunInstances";
        let lost = self.enter(OP).await?;
        // Like EC2 (and unlike moto), a repeated ClientToken returns the instance the
        // first call launched instead of launching another.
        let existing = {
            let s = self.state();
            (!s.client_tokens_ignored)
                .then(|| {
                    s.instances
                        .values()
                        .find(|i| i.client_token == request.client_token)
                        .cloned()
                })
                .flatten()
        };
        if let Some(existing) = existing {
            return finish(OP, lost, Ok(existing.instance.clone()));
        }
        let id = self.next_id("i");
        let mut s = self.state();
        if !s.images.iter().any(|i| i.image.id == request.image_id) {
            return Err(CloudError::InvalidRequest {
                operation: OP,
                message: format!("image {} not found", request.image_id),
            });
        }
        let n = s.next_id;
        let instance = Instance {
            arn: format!("arn:aws:ec2:us-east-1:123456789012:instance/{id}"),
            id: id.clone(),
            instance_type: request.instance_type.clone(),
            image_id: request.image_id.clone(),
            state: if s.instances_start_pending {
                InstanceState::Pending
            } else {
                InstanceState::Running
            },
            public_ip: Some(format!("54.0.{}.{}", n / 250, n % 250 + 1)),
            public_dns: Some(format!("ec2-54-0-{}-{}.compute.amazonaws.com", n / 250, n % 250 + 1)),
            private_ip: Some(format!("10.0.{}.{}", n / 250, n % 250 + 1)),
            launched_at: Some(Timestamp::now()),
            tags: request.tags.clone(),
        };
        let lag = s.visibility_lag;
        if lag > 0 {
            s.invisible.insert(id.clone(), lag);
        }
        s.instances.insert(
            id,
            FakeInstance {
                instance: instance.clone(),
                user_data: request.user_data.clone(),
                client_token: request.client_token.clone(),
                metadata_tokens_required: true,
                console_output: None,
            },
        );
        finish(OP, lost, Ok(instance))
    }

    async fn list_instances(&self, cluster_id: &str) -> CloudResult<Vec<Instance>> {
        const OP: &str = "DescribeInstances";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let hidden = s.tick_visibility();
        let found = s
            .instances
            .values()
            .filter(|i| !hidden.contains(&i.instance.id))
            .filter(|i| i.instance.tags.get(tag::CLUSTER).map(String::as_str) == Some(cluster_id))
            .map(|i| i.instance.clone())
            .collect();
        finish(OP, lost, Ok(found))
    }

    async fn find_instances(&self, key: &str, value: &str) -> CloudResult<Vec<Instance>> {
        const OP: &str = "DescribeInstances";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let hidden = s.tick_visibility();
        let found = s
            .instances
            .values()
            .filter(|i| !hidden.contains(&i.instance.id))
            .filter(|i| i.instance.tags.get(key).map(String::as_str) == Some(value))
            .map(|i| i.instance.clone())
            .collect();
        finish(OP, lost, Ok(found))
    }

    async fn tag_instance(&self, id: &str, tags: &Tags) -> CloudResult<()> {
        const OP: &str = "CreateTags";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let i = s.instances.get_mut(id).ok_or_else(|| not_found(OP, id))?;
        i.instance.tags.extend(tags.clone());
        finish(OP, lost, Ok(()))
    }

    async fn terminate_instance(&self, id: &str) -> CloudResult<()> {
        const OP: &str = "TerminateInstances";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let pending = s.instances_start_pending;
        let i = s.instances.get_mut(id).ok_or_else(|| not_found(OP, id))?;
        if !i.instance.state.is_gone() {
            i.instance.state = if pending {
                InstanceState::ShuttingDown
            } else {
                InstanceState::Terminated
            };
        }
        finish(OP, lost, Ok(()))
    }

    async fn stop_instance(&self, id: &str) -> CloudResult<()> {
        use InstanceState::{Running, Stopped, Stopping};
        self.move_instance(id, "StopInstances", Running, Stopping, Stopped)
            .await
    }

    async fn start_instance(&self, id: &str) -> CloudResult<()> {
        use InstanceState::{Pending, Running, Stopped};
        self.move_instance(id, "StartInstances", Stopped, Pending, Running)
            .await
    }

    async fn console_output(&self, id: &str) -> CloudResult<Option<String>> {
        const OP: &str = "GetConsoleOutput";
        let lost = self.enter(OP).await?;
        let s = self.state();
        let i = s.instances.get(id).ok_or_else(|| not_found(OP, id))?;
        finish(OP, lost, Ok(i.console_output.clone()))
    }
}

#[async_trait]
impl Databases for FakeCloud {
    async fn latest_snapshot(&self, source_db: &str) -> CloudResult<Option<Snapshot>> {
        const OP: &str = "DescribeDBSnapshots";
        let lost = self.enter(OP).await?;
        let s = self.state();
        let newest = s
            .snapshots
            .iter()
            .filter(|x| x.source_db == source_db)
            .max_by_key(|x| x.created_at)
            .cloned();
        finish(OP, lost, Ok(newest))
    }

    async fn snapshot(&self, id: &str) -> CloudResult<Option<Snapshot>> {
        const OP: &str = "DescribeDBSnapshots";
        let lost = self.enter(OP).await?;
        let s = self.state();
        finish(OP, lost, Ok(s.snapshots.iter().find(|x| x.id == id).cloned()))
    }

    async fn restore_database(&self, request: &RestoreRequest) -> CloudResult<Database> {
        const OP: &str = "RestoreDBInstanceFromDBSnapshot";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        if s.databases.contains_key(&request.id) {
            return Err(CloudError::AlreadyExists {
                operation: OP,
                message: request.id.clone(),
            });
        }
        if !s.snapshots.iter().any(|x| x.id == request.snapshot_id) {
            return Err(not_found(OP, &request.snapshot_id));
        }
        let database = Database {
            id: request.id.clone(),
            arn: format!("arn:aws:rds:fake:123456789012:db:{}", request.id),
            status: if s.restores_start_creating {
                DatabaseStatus::Creating
            } else {
                DatabaseStatus::Available
            },
            endpoint: Some(format!("{}.fake.rds.amazonaws.com", request.id)),
            port: Some(5432),
            master_username: Some("postgres".into()),
            created_at: Some(Timestamp::now()),
            tags: request.tags.clone(),
        };
        s.databases.insert(
            request.id.clone(),
            FakeDatabase {
                database: database.clone(),
                snapshot_id: request.snapshot_id.clone(),
                master_password: None,
            },
        );
        finish(OP, lost, Ok(database))
    }

    async fn list_databases(&self, cluster_id: &str) -> CloudResult<Vec<Database>> {
        const OP: &str = "DescribeDBInstances";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let found = s
            .databases
            .values()
            .filter(|d| d.database.tags.get(tag::CLUSTER).map(String::as_str) == Some(cluster_id))
            .map(|d| {
                let mut database = d.database.clone();
                if let Some((tags, _)) = s.stale_tags.get(&database.id) {
                    database.tags = tags.clone();
                }
                database
            })
            .collect();
        for (_, left) in s.stale_tags.values_mut() {
            *left -= 1;
        }
        s.stale_tags.retain(|_, (_, left)| *left > 0);
        finish(OP, lost, Ok(found))
    }

    async fn get_database(&self, id: &str) -> CloudResult<Option<Database>> {
        const OP: &str = "DescribeDBInstances";
        let lost = self.enter(OP).await?;
        let s = self.state();
        finish(OP, lost, Ok(s.databases.get(id).map(|d| d.database.clone())))
    }

    async fn tag_database(&self, arn: &str, tags: &Tags) -> CloudResult<()> {
        const OP: &str = "AddTagsToResource";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let d = s
            .databases
            .values_mut()
            .find(|d| d.database.arn == arn)
            .ok_or_else(|| not_found(OP, arn))?;
        let before = d.database.tags.clone();
        let id = d.database.id.clone();
        d.database.tags.extend(tags.clone());
        if s.tag_lag > 0 {
            // As on AWS (and the strict layer), a new write has its own delay: the
            // description keeps showing the tags from before the first write until
            // `lag` descriptions after the last one.
            let lag = s.tag_lag;
            s.stale_tags.entry(id).or_insert((before, lag)).1 = lag;
        }
        finish(OP, lost, Ok(()))
    }

    async fn set_master_password(&self, id: &str, password: &str) -> CloudResult<()> {
        const OP: &str = "ModifyDBInstance";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let d = s.databases.get_mut(id).ok_or_else(|| not_found(OP, id))?;
        // RDS refuses to modify an instance that is still creating or is deleting.
        if matches!(d.database.status, DatabaseStatus::Creating | DatabaseStatus::Deleting) {
            return Err(CloudError::InvalidState {
                operation: OP,
                message: format!("Database instance {id} is not in available state."),
            });
        }
        d.master_password = Some(password.to_owned());
        finish(OP, lost, Ok(()))
    }

    async fn stop_database(&self, id: &str) -> CloudResult<()> {
        self.move_database(
            id,
            "StopDBInstance",
            DatabaseStatus::Available,
            DatabaseStatus::Stopping,
            DatabaseStatus::Stopped,
        )
        .await
    }

    async fn start_database(&self, id: &str) -> CloudResult<()> {
        self.move_database(
            id,
            "StartDBInstance",
            DatabaseStatus::Stopped,
            DatabaseStatus::Starting,
            DatabaseStatus::Available,
        )
        .await
    }

    async fn delete_database(&self, id: &str) -> CloudResult<()> {
        const OP: &str = "DeleteDBInstance";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let slow = s.restores_start_creating;
        match s.databases.get_mut(id) {
            None => return Err(not_found(OP, id)),
            // What RDS answers (InvalidDBInstanceState), mapped as the adapter maps it.
            Some(d) if d.database.status == DatabaseStatus::Deleting => {
                return Err(CloudError::InvalidState {
                    operation: OP,
                    message: format!("Instance {id} is already being deleted."),
                });
            }
            Some(d) => d.database.status = DatabaseStatus::Deleting,
        }
        if !slow {
            s.databases.remove(id);
        }
        finish(OP, lost, Ok(()))
    }
}

#[async_trait]
impl Parameters for FakeCloud {
    async fn put_secret_parameter(&self, name: &str, value: &str, tags: &Tags) -> CloudResult<()> {
        const OP: &str = "PutParameter";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        s.parameters.insert(name.into(), value.into());
        s.parameter_tags.entry(name.into()).or_default().extend(tags.clone());
        finish(OP, lost, Ok(()))
    }

    async fn tag_parameter(&self, name: &str, tags: &Tags) -> CloudResult<()> {
        const OP: &str = "AddTagsToResource";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        if !s.parameters.contains_key(name) {
            return Err(not_found(OP, name));
        }
        s.parameter_tags.entry(name.into()).or_default().extend(tags.clone());
        finish(OP, lost, Ok(()))
    }

    async fn delete_parameter(&self, name: &str) -> CloudResult<()> {
        const OP: &str = "DeleteParameter";
        let lost = self.enter(OP).await?;
        self.state()
            .parameters
            .remove(name)
            .ok_or_else(|| not_found(OP, name))?;
        finish(OP, lost, Ok(()))
    }

    async fn list_parameters(&self, path: &str) -> CloudResult<Vec<String>> {
        const OP: &str = "GetParametersByPath";
        let lost = self.enter(OP).await?;
        let s = self.state();
        let prefix = format!("{}/", path.trim_end_matches('/'));
        finish(
            OP,
            lost,
            Ok(s.parameters
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect()),
        )
    }
}

#[async_trait]
impl Registry for FakeCloud {
    async fn resolve_digest(&self, repository: &str, tag: &str) -> CloudResult<Option<String>> {
        const OP: &str = "DescribeImages(ECR)";
        if !repository.contains(".dkr.ecr.") {
            return Ok(None);
        }
        let lost = self.enter(OP).await?;
        let s = self.state();
        let repo = s
            .registry
            .get(repository)
            .ok_or_else(|| not_found(OP, &format!("repository {repository}")))?;
        let digest = repo
            .get(tag)
            .ok_or_else(|| not_found(OP, &format!("{repository}:{tag}")))?;
        finish(OP, lost, Ok(Some(digest.clone())))
    }
}

#[async_trait]
impl Commands for FakeCloud {
    async fn run_script(&self, request: &ScriptRequest) -> CloudResult<String> {
        const OP: &str = "SendCommand";
        let lost = self.enter(OP).await?;
        let mut s = self.state();
        let running = s
            .instances
            .get(&request.instance_id)
            .is_some_and(|i| matches!(i.instance.state, InstanceState::Running | InstanceState::Pending));
        if !running {
            return Err(CloudError::InvalidState {
                operation: OP,
                message: format!(
                    "instance {} is not a managed node in a valid state",
                    request.instance_id
                ),
            });
        }
        s.next_id += 1;
        let id = format!("{:08x}-0000-4000-8000-{:012x}", s.next_id, s.next_id);
        s.scripts.push(request.clone());
        finish(OP, lost, Ok(id))
    }
}

/// The fake as the bundle of trait objects the controllers take.
impl From<FakeCloud> for super::Cloud {
    fn from(fake: FakeCloud) -> Self {
        let shared = Arc::new(fake);
        Self {
            compute: shared.clone(),
            databases: shared.clone(),
            parameters: shared.clone(),
            registry: shared.clone(),
            commands: shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("minikube-service-*", "minikube-service-2026"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("minikube-*", "other"));
    }

    #[tokio::test]
    async fn lost_response_applies_the_effect() {
        let fake = FakeCloud::default();
        fake.add_snapshot("snap-1", "db", Timestamp::now());
        fake.fail(
            "RestoreDBInstanceFromDBSnapshot",
            Trigger::Nth(1),
            FaultKind::LostResponse,
        );
        let req = RestoreRequest {
            id: "fe-a".into(),
            snapshot_id: "snap-1".into(),
            instance_class: "db.t3.micro".into(),
            subnet_group: None,
            security_group_ids: vec![],
            tags: Tags::new(),
        };
        assert!(fake.restore_database(&req).await.is_err());
        assert_eq!(fake.databases().len(), 1);
        assert!(matches!(
            fake.restore_database(&req).await,
            Err(CloudError::AlreadyExists { .. })
        ));
    }
}
