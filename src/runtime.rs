//! `featureenv-operator run`: wires the configuration, clients, inventory,
//! controllers, janitor, HTTP server and leader election together. Stand-by
//! replicas serve health and metrics but do not act (their fence is closed); a
//! replica that loses the Lease, or cannot renew it before its deadline, exits so it
//! can never act beside the new leader. Does I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use futures::StreamExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{error, info, warn};

use crate::api::{FeatureEnvironment, FeatureEnvironmentClass, RdsPool};
use crate::cloud::Cloud;
use crate::cloud::aws::AwsCloud;
use crate::config::{Config, LogFormat};
use crate::controller::{Context, environment, pool, warm_pool};
use crate::fence::Fence;
use crate::inventory::{Inventory, Triggers};
use crate::leader::{Elector, LeaseTiming};
use crate::metrics::Metrics;
use crate::{http, janitor};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn,kube_client=warn,aws=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Health as the HTTP server reports it.
#[derive(Default)]
pub struct Health {
    pub leading: AtomicBool,
    pub standby: AtomicBool,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    init_tracing(config.log_format);
    // kube-rs sends no User-Agent of its own; name ourselves so API server audit logs
    // (and the RBAC proof in tests/e2e.rs) can tell the operator's requests apart.
    let mut kube_config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration")?;
    kube_config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("featureenv-operator/", env!("CARGO_PKG_VERSION"))),
    ));
    let client = Client::try_from(kube_config).context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::new());
    let timing = LeaseTiming::from_config(&config).map_err(anyhow::Error::msg)?;
    // A replica that elects a leader may call AWS only while it leads.
    let fence = if config.leader_election {
        Fence::closed()
    } else {
        Fence::open()
    };
    let aws = Arc::new(
        AwsCloud::from_env(
            config.region.clone(),
            metrics.clone(),
            config.aws_operation_timeout,
            fence.clone(),
        )
        .await,
    );
    let cloud = Cloud {
        compute: aws.clone(),
        databases: aws.clone(),
        parameters: aws.clone(),
        registry: aws.clone(),
        commands: aws,
    };
    let (inventory, triggers) = Inventory::new(cloud.clone(), config.cluster_id.clone());
    let (classes, class_writer) = reflector::store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        classes,
        config.clone(),
        cloud,
        inventory.clone(),
        metrics.clone(),
    ));
    let health = Arc::new(Health::default());

    let server = http::serve(
        config.http_addr,
        metrics.clone(),
        inventory.clone(),
        health.clone(),
        config.inventory_stale_after,
    )
    .await?;
    info!(addr = %server.local_addr, cluster_id = %config.cluster_id, "serving /metrics, /healthz, /readyz");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    if config.leader_election {
        let holder = config.holder_id.clone().unwrap_or_else(hostname);
        let mut elector = Elector::new(
            client.clone(),
            &config.lease_namespace,
            &config.lease_name,
            &holder,
            timing,
            fence,
        );
        health.standby.store(true, Ordering::SeqCst);
        info!(holder = %holder, lease = %config.lease_name, ?timing, "waiting for leadership");
        tokio::select! {
            () = elector.acquire() => {}
            () = &mut shutdown => return Ok(()),
        }
        health.standby.store(false, Ordering::SeqCst);
        health.leading.store(true, Ordering::SeqCst);
        metrics.leading(true);
        let mut controllers = tokio::spawn(run_controllers(ctx, triggers, class_writer));
        tokio::select! {
            lost = elector.hold() => {
                metrics.leading(false);
                // The fence closed at the deadline already; stop the tasks too, and
                // exit so the replica restarts as a candidate.
                controllers.abort();
                return Err(lost).context("lost leadership; exiting so only the new leader acts");
            }
            () = &mut shutdown => {
                controllers.abort();
                metrics.leading(false);
                // Closes the fence and hands the Lease over so a stand-by takes over at once.
                elector.release().await;
            }
            result = &mut controllers => { result.context("controllers panicked")?; }
        }
    } else {
        health.leading.store(true, Ordering::SeqCst);
        metrics.leading(true);
        let mut controllers = tokio::spawn(run_controllers(ctx, triggers, class_writer));
        tokio::select! {
            () = &mut shutdown => controllers.abort(),
            result = &mut controllers => { result.context("controllers panicked")?; }
        }
    }
    info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("featureenv-operator-{}", std::process::id()))
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    info!("shutdown requested");
}

/// Watches FeatureEnvironmentClasses in a task of its own: fills the store behind
/// `classes` and passes on every class whose spec or default-ness changed, or that
/// went away, for the environment controller to trigger the environments that use it.
///
/// Its own task, so that one caller can wait for the store to be ready before any
/// reconcile reads it. (kube-runtime's `Store::wait_until_ready` wakes only the last
/// of several concurrent waiters, so reconciles must not each wait.)
pub fn watch_classes(
    client: Client,
    classes: Writer<FeatureEnvironmentClass>,
) -> (
    tokio::task::JoinHandle<()>,
    impl futures::Stream<Item = Result<FeatureEnvironmentClass, watcher::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // What environments read of a class: its spec (the generation) and whether it is
    // the default. Its status (the warm pool's counts) changes with every spare and
    // matters to no environment, so it triggers none.
    let mut seen: std::collections::HashMap<String, (Option<i64>, bool)> = std::collections::HashMap::new();
    let task = tokio::spawn(
        watcher(Api::<FeatureEnvironmentClass>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(classes)
            .for_each(move |event| {
                // Nobody listening (tests that only need the store) is fine.
                match event {
                    Ok(watcher::Event::Apply(class) | watcher::Event::InitApply(class)) => {
                        let what = (class.metadata.generation, class.is_default());
                        if seen.insert(class.name_any(), what) != Some(what) {
                            drop(tx.send(Ok(class)));
                        }
                    }
                    Ok(watcher::Event::Delete(class)) => {
                        seen.remove(&class.name_any());
                        drop(tx.send(Ok(class)));
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => warn!(error = %e, "watching FeatureEnvironmentClasses"),
                }
                std::future::ready(())
            }),
    );
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (task, events)
}

/// Everything the leader runs: the inventory poll, the three controllers
/// (environments, database pools, classes' warm pools) and the janitor.
/// `classes` fills `ctx.classes`.
pub async fn run_controllers(ctx: Arc<Context>, triggers: Triggers, classes: Writer<FeatureEnvironmentClass>) {
    let config = ctx.config.clone();
    let metrics = ctx.metrics.clone();
    let inventory = ctx.inventory.clone();
    // The first description completes before the controllers act, so they never
    // take "not yet described" for "does not exist".
    while let Err(e) = inventory.refresh().await {
        error!(error = %e, "initial inventory refresh failed; retrying");
        metrics.reconcile_error("inventory", e.category());
        tokio::time::sleep(config.fast_poll_interval).await;
    }
    let poll = tokio::spawn(
        inventory
            .clone()
            .run(config.fast_poll_interval, config.slow_poll_interval, {
                let metrics = metrics.clone();
                move |e| metrics.reconcile_error("inventory", e.category())
            }),
    );
    let janitor = tokio::spawn(janitor::run(ctx.clone()));

    let client = ctx.client.clone();
    let (class_watch, class_events) = watch_classes(client.clone(), classes);
    // Reconciles read classes from the store without waiting; this is the one wait.
    if ctx.classes.wait_until_ready().await.is_err() {
        error!("the FeatureEnvironmentClass watch stopped before its first list");
        return;
    }
    let envs = Controller::new(
        Api::<FeatureEnvironment>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().concurrency(16));
    let store = envs.store();
    let envs = envs
        .watches_stream(class_events, move |class| {
            // Environments that name it, or name none while it is (or was) the default.
            let is_default = class.is_default();
            let name = class.name_any();
            store
                .state()
                .into_iter()
                .filter(|e| match &e.spec.class_name {
                    Some(c) => *c == name,
                    None => is_default,
                })
                .map(|e| ObjectRef::from_obj(&*e))
                .collect::<Vec<_>>()
        })
        .reconcile_on(Triggers::environment_stream(triggers.environments))
        .run(environment::reconcile, environment::error_policy, ctx.clone())
        .for_each(|_| async {});
    let pools = Controller::new(Api::<RdsPool>::all(client.clone()), watcher::Config::default())
        .reconcile_on(Triggers::pool_stream(triggers.pools))
        .run(pool::reconcile, pool::error_policy, ctx.clone())
        .for_each(|_| async {});
    let warm_pools = Controller::new(Api::<FeatureEnvironmentClass>::all(client), watcher::Config::default())
        .reconcile_on(Triggers::class_stream(triggers.classes))
        .run(warm_pool::reconcile, warm_pool::error_policy, ctx.clone())
        .for_each(|_| async {});
    info!("controllers started");
    tokio::join!(envs, pools, warm_pools);
    poll.abort();
    janitor.abort();
    class_watch.abort();
}
