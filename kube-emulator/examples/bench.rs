//! Throughput and latency of the emulator on this machine: creates/s, merge
//! patches/s, a 5,000-object list, and watch fan-out latency to 20 watchers.
//! Run: `cargo run -p kube-emulator --release --example bench`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::WatchStream;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube_emulator::Emulator;
use serde_json::json;

const WRITES: usize = 2_000;
const CONCURRENCY: usize = 4;
const LIST_SIZE: usize = 5_000;
const WATCHERS: usize = 20;
const FANOUT_EVENTS: usize = 300;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"bench": "true"}}, "data": {"k": "v"}}))
        .unwrap()
}

async fn parallel<F, Fut>(n: usize, f: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(CONCURRENCY) {
                    f(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let emu = Emulator::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(emu.client());

    let a = api.clone();
    let took = parallel(WRITES, move |i| {
        let a = a.clone();
        async move {
            a.create(&PostParams::default(), &cm(&format!("c{i:05}")))
                .await
                .unwrap();
        }
    })
    .await;
    println!(
        "creates/s:             {:.0}  ({WRITES} creates, {CONCURRENCY} clients)",
        WRITES as f64 / took.as_secs_f64()
    );

    let a = api.clone();
    let took = parallel(WRITES, move |i| {
        let a = a.clone();
        async move {
            a.patch(
                &format!("c{i:05}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"k": format!("v{i}")}})),
            )
            .await
            .unwrap();
        }
    })
    .await;
    println!(
        "merge patches/s:       {:.0}  ({WRITES} patches, {CONCURRENCY} clients)",
        WRITES as f64 / took.as_secs_f64()
    );

    let a = api.clone();
    parallel(LIST_SIZE - WRITES, move |i| {
        let a = a.clone();
        async move {
            a.create(&PostParams::default(), &cm(&format!("l{i:05}")))
                .await
                .unwrap();
        }
    })
    .await;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let l = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(l.items.len(), LIST_SIZE);
        best = best.min(started.elapsed());
    }
    println!(
        "list of {LIST_SIZE} objects:  {:.1} ms  (best of 5, decoded by kube-rs)",
        best.as_secs_f64() * 1000.0
    );

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let rv = emu.with_state(|s| s.rv);
    let mut readers = Vec::new();
    for _ in 0..WATCHERS {
        let mut w = WatchStream::open(
            emu.addr(),
            &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=fanout"),
        )
        .await;
        let sent = sent.clone();
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(FANOUT_EVENTS);
            while lat.len() < FANOUT_EVENTS {
                let e = w.next(Duration::from_secs(30)).await.expect("event");
                let at = Instant::now();
                let name = e["object"]["metadata"]["name"].as_str().unwrap().to_string();
                let t0 = sent.lock().unwrap()[&name];
                lat.push(at - t0);
            }
            lat
        }));
    }
    for i in 0..FANOUT_EVENTS {
        let name = format!("f{i:05}");
        let obj: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"fanout": "1"}}})).unwrap();
        sent.lock().unwrap().insert(name, Instant::now());
        api.create(&PostParams::default(), &obj).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    all.sort();
    println!(
        "watch fan-out latency: p50 {:.2} ms, p99 {:.2} ms  ({WATCHERS} watchers x {FANOUT_EVENTS} events, create request start to event read)",
        percentile(&all, 0.50).as_secs_f64() * 1000.0,
        percentile(&all, 0.99).as_secs_f64() * 1000.0
    );
    emu.shutdown().await;
}
