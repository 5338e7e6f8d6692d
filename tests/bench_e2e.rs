//! `make bench` (issue 4): for N = 1, 10, 50 environments applied at once with a 3 s
//! simulated boot, each on a fresh local stack (tests/support/stack.rs) with the fault
//! proxy at rate 0 recording every AWS call, prints apply→all-Ready time, operator
//! overhead per environment (status.readyAt minus the boot simulator's tag timestamp)
//! p50/p95, AWS Describe calls per minute, the operator's peak RSS (VmHWM), and its
//! Kubernetes API cost from the real API server's audit log (requests by verb from
//! apply to Ready and from delete to gone), each beside its target, and says plainly
//! when a target is missed. Ignored by default
//! (it takes minutes); FEATUREENV_BENCH_OPERATOR_BIN picks the binary (make bench
//! passes a release build), FEATUREENV_BENCH_SIZES overrides "1,10,50".

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::stack::{OPERATOR_USER, Stack, StackOptions};

const NS: &str = "default";
const FAST_POLL: Duration = Duration::from_secs(1);
/// Polling alone (no reconcile traffic) is measured over this window after all Ready.
const STEADY_WINDOW: Duration = Duration::from_secs(30);

struct Figures {
    n: usize,
    all_ready: Duration,
    overhead_p50: f64,
    overhead_p95: f64,
    describe_per_min_run: f64,
    describe_per_min_steady: f64,
    describe_by_action: BTreeMap<String, usize>,
    run_describe_by_action: BTreeMap<String, usize>,
    peak_rss_mib: f64,
    /// The operator's Kubernetes API requests by verb, apply → all Ready.
    api_apply: BTreeMap<String, usize>,
    /// The same, delete of all → all gone.
    api_delete: BTreeMap<String, usize>,
    /// apply → all Ready by verb and resource.
    api_apply_by_resource: BTreeMap<String, usize>,
}

/// Verbs that change state on the API server.
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

fn writes(by_verb: &BTreeMap<String, usize>) -> usize {
    WRITE_VERBS.iter().filter_map(|v| by_verb.get(*v)).sum()
}

fn reads(by_verb: &BTreeMap<String, usize>) -> usize {
    ["get", "list"].iter().filter_map(|v| by_verb.get(*v)).sum()
}

/// The operator's requests by verb (watch = a watch started) received in [from, to],
/// from the API server's audit log.
fn api_requests(stack: &Stack, from: f64, to: f64) -> BTreeMap<String, usize> {
    api_requests_by(stack, from, to, |e| e["verb"].as_str().unwrap_or_default().to_owned())
}

/// The same, keyed by "verb resource[/subresource]", to say where writes go.
fn api_requests_by_resource(stack: &Stack, from: f64, to: f64) -> BTreeMap<String, usize> {
    api_requests_by(stack, from, to, |e| {
        let object = &e["objectRef"];
        let sub = object["subresource"]
            .as_str()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        format!(
            "{} {}{sub}",
            e["verb"].as_str().unwrap_or_default(),
            object["resource"].as_str().unwrap_or_default()
        )
    })
}

fn api_requests_by(
    stack: &Stack,
    from: f64,
    to: f64,
    key: impl Fn(&serde_json::Value) -> String,
) -> BTreeMap<String, usize> {
    let mut by_verb = BTreeMap::new();
    for event in stack.audit_events() {
        if event["user"]["username"] != OPERATOR_USER {
            continue;
        }
        let Some(at) = event["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let at = at.as_millisecond() as f64 / 1000.0;
        if at >= from && at <= to {
            *by_verb.entry(key(&event)).or_insert(0) += 1;
        }
    }
    by_verb
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn describe_calls(stack: &Stack, from: f64, to: f64) -> (usize, BTreeMap<String, usize>) {
    let mut by_action = BTreeMap::new();
    let mut total = 0;
    for call in stack.aws_calls() {
        let ts = call["ts"].as_f64().unwrap_or_default();
        let action = call["action"].as_str().unwrap_or_default();
        if ts >= from && ts <= to && action.starts_with("Describe") {
            total += 1;
            let key = format!("{}:{action}", call["service"].as_str().unwrap_or_default());
            *by_action.entry(key).or_insert(0) += 1;
        }
    }
    (total, by_action)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The machine's CPU time so far, busy and in all, in clock ticks (`/proc/stat`'s
/// `cpu` line: idle and iowait are the idle fields).
fn machine_cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .expect("/proc/stat starts with the cpu line")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// Cores busy on average between two `machine_cpu_ticks` readings.
fn cores_busy(before: (u64, u64), after: (u64, u64)) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let all = after.1.saturating_sub(before.1);
    if all == 0 {
        return f64::NAN;
    }
    cores * after.0.saturating_sub(before.0) as f64 / all as f64
}

async fn run(n: usize, operator_bin: &Path) -> Figures {
    let stack = Stack::with_operator(StackOptions {
        cluster_id: format!("bench-{n}"),
        boot_seconds: 3.0,
        fault_rate: Some(0.0),
        fast_poll: "1s".into(),
        slow_poll: "10s".into(),
        // A spare for every environment, so the figures measure the operator and not
        // the pool's refill (with warm=1 a burst of N waits for N-1 serial refills;
        // run with FEATUREENV_BENCH_WARM=1 to see that).
        pool: Some((warm_for(n), 2 * n as u32 + 1)),
        operator_bin: operator_bin.to_path_buf(),
        ..StackOptions::default()
    })
    .await;
    // The example class caps environments per namespace at 5; the bench wants N in one.
    stack.lift_namespace_cap().await;
    stack.wait_for_warm(warm_for(n), Duration::from_secs(120)).await;
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    let manifests: String = names
        .iter()
        .map(|name| format!("---\n{}", stack.environment_yaml(NS, name, "")))
        .collect();
    let t0 = Instant::now();
    let t0_unix = unix_now();
    stack.apply_ok(&manifests).await;
    stack
        .wait_for(&format!("{n} environments Ready"), Duration::from_secs(600), || async {
            let list = stack.environments(NS).list(&Default::default()).await.expect("list");
            list.items.len() == n
                && list.items.iter().all(|e| {
                    e.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
        })
        .await;
    let all_ready = t0.elapsed();
    let ready_unix = unix_now();

    // Overhead: readyAt minus the moment the instance's bootstrap tag was written.
    let tags: BTreeMap<String, jiff::Timestamp> = stack
        .bootstrap_tags()
        .into_iter()
        .filter(|(_, _, value, _)| value == "complete")
        .map(|(ts, _, _, env)| (env, ts))
        .collect();
    let list = stack.environments(NS).list(&Default::default()).await.expect("list");
    let mut overheads: Vec<f64> = list
        .items
        .iter()
        .filter_map(|e| {
            let key = format!("{NS}/{}", e.metadata.name.as_deref()?);
            let ready: jiff::Timestamp = e.status.as_ref()?.ready_at.as_deref()?.parse().ok()?;
            let tagged = tags.get(&key)?;
            Some(ready.duration_since(*tagged).as_secs_f64())
        })
        .collect();
    assert_eq!(
        overheads.len(),
        n,
        "missing readyAt or bootstrap tag for some environments"
    );
    overheads.sort_by(f64::total_cmp);

    // Steady state: nothing left to do but poll.
    tokio::time::sleep(STEADY_WINDOW).await;
    let end_unix = unix_now();
    let (run_calls, run_describe_by_action) = describe_calls(&stack, t0_unix, ready_unix);
    let (steady_calls, describe_by_action) = describe_calls(&stack, ready_unix, end_unix);
    let api_apply = api_requests(&stack, t0_unix, ready_unix);
    let api_apply_by_resource = api_requests_by_resource(&stack, t0_unix, ready_unix);

    // Delete them all; the finalizer cleans up AWS, then the objects go.
    let delete_unix = unix_now();
    for name in &names {
        stack.delete_env(NS, name).await;
    }
    stack
        .wait_for(&format!("{n} environments gone"), Duration::from_secs(600), || async {
            stack
                .environments(NS)
                .list(&Default::default())
                .await
                .expect("list")
                .items
                .is_empty()
        })
        .await;
    let api_delete = api_requests(&stack, delete_unix, unix_now());
    let peak_rss_kib = stack.peak_rss_kib(0).expect("operator VmHWM");
    Figures {
        n,
        all_ready,
        overhead_p50: percentile(&overheads, 50.0),
        overhead_p95: percentile(&overheads, 95.0),
        describe_per_min_run: run_calls as f64 / ((ready_unix - t0_unix) / 60.0),
        describe_per_min_steady: steady_calls as f64 / ((end_unix - ready_unix) / 60.0),
        describe_by_action,
        run_describe_by_action,
        peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        api_apply,
        api_delete,
        api_apply_by_resource,
    }
}

fn warm_for(n: usize) -> u32 {
    std::env::var("FEATUREENV_BENCH_WARM")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(n as u32)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: minutes long; run with `make bench`"]
async fn bench() {
    let operator_bin = std::env::var_os("FEATUREENV_BENCH_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(support::stack::OPERATOR_BIN));
    let sizes: Vec<usize> = std::env::var("FEATUREENV_BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,50".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "operator binary: {}\nboot 3 s simulated; fast poll {}s, slow poll 10s; pool warm = N unless FEATUREENV_BENCH_WARM; fault proxy at rate 0 counts AWS calls",
        operator_bin.display(),
        FAST_POLL.as_secs()
    );
    let mut results = Vec::new();
    for &n in &sizes {
        let f = run(n, &operator_bin).await;
        println!(
            "N={n}: all Ready {:.1}s; overhead p50 {:.2}s p95 {:.2}s; Describe/min {:.1} (apply→Ready) {:.1} (steady); peak RSS {:.1} MiB",
            f.all_ready.as_secs_f64(),
            f.overhead_p50,
            f.overhead_p95,
            f.describe_per_min_run,
            f.describe_per_min_steady,
            f.peak_rss_mib
        );
        println!(
            "      apply→Ready Describe calls by action: {:?}",
            f.run_describe_by_action
        );
        println!(
            "      steady-state Describe calls by action: {:?}",
            f.describe_by_action
        );
        println!("      Kubernetes API requests apply→Ready: {:?}", f.api_apply);
        println!("      Kubernetes API requests delete→gone: {:?}", f.api_delete);
        println!(
            "      Kubernetes API requests apply→Ready by resource: {:?}",
            f.api_apply_by_resource
        );
        results.push(f);
    }

    let overhead_target = FAST_POLL.as_secs_f64() + 1.0;
    println!();
    println!(
        "{:>4} {:>12} {:>10} {:>10} {:>24} {:>10} {:>14} {:>10}",
        "N", "apply→Ready", "ovh p50", "ovh p95", "target p95 ≤ fast+1s", "Desc/min", "Desc/min stdy", "RSS MiB"
    );
    for f in &results {
        println!(
            "{:>4} {:>11.1}s {:>9.2}s {:>9.2}s {:>17.1}s {:>6} {:>10.1} {:>14.1} {:>10.1}",
            f.n,
            f.all_ready.as_secs_f64(),
            f.overhead_p50,
            f.overhead_p95,
            overhead_target,
            verdict(f.overhead_p95 <= overhead_target),
            f.describe_per_min_run,
            f.describe_per_min_steady,
            f.peak_rss_mib
        );
    }
    let by_n = |n: usize| results.iter().find(|f| f.n == n);
    if let (Some(one), Some(fifty)) = (by_n(1), by_n(50)) {
        for (label, a, b) in [
            (
                "apply→Ready window",
                one.describe_per_min_run,
                fifty.describe_per_min_run,
            ),
            (
                "steady state",
                one.describe_per_min_steady,
                fifty.describe_per_min_steady,
            ),
        ] {
            println!(
                "target: Describe/min at N=50 ≤ 1.5 × N=1 ({label}): {b:.1} vs 1.5 × {a:.1} = {:.1} → {}",
                1.5 * a,
                verdict(b <= 1.5 * a)
            );
        }
        println!(
            "target: peak RSS at N=50 ≤ 64 MiB: {:.1} MiB → {}",
            fifty.peak_rss_mib,
            verdict(fifty.peak_rss_mib <= 64.0)
        );
    }
    for f in &results {
        let per_env = writes(&f.api_apply) as f64 / f.n as f64;
        println!(
            "target: Kubernetes writes per environment apply→Ready ≤ 8 at N={}: {per_env:.1} ({} writes) → {}; delete→gone: {:.1} per environment",
            f.n,
            writes(&f.api_apply),
            verdict(per_env <= 8.0),
            writes(&f.api_delete) as f64 / f.n as f64,
        );
    }
    if let (Some(one), Some(fifty)) = (by_n(1), by_n(50)) {
        for (label, a, b) in [
            ("apply→Ready", reads(&one.api_apply), reads(&fifty.api_apply)),
            ("delete→gone", reads(&one.api_delete), reads(&fifty.api_delete)),
        ] {
            // "Do not grow with N": at most the N=1 count plus a constant for relists.
            println!(
                "target: Kubernetes reads (get+list) {label} at N=50 ≤ N=1 + 5: {b} vs {a} + 5 → {}",
                verdict(b <= a + 5)
            );
        }
    }
    for f in &results {
        println!(
            "target: overhead p95 ≤ fast poll + 1 s ({overhead_target:.1}s) at N={}: {:.2}s → {}",
            f.n,
            f.overhead_p95,
            verdict(f.overhead_p95 <= overhead_target)
        );
    }
}

/// Time to Ready for one environment with a warm database (a spare restored before
/// the apply) and with a cold one (the pool is empty, so the claim waits for a
/// restore), under the strict layer's realistic timing profile scaled down
/// (FEATUREENV_BENCH_TIME_SCALE, default 0.05: a 600 s restore plays as 30 s, a 15 s
/// instance start as 0.75 s). The real bootstrap waits for its database parameter in
/// the cold case. The 3 s simulated boot, the script and the operator do not scale,
/// so the figures are not divided back to scale 1; the AWS periods played are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: minutes long; run with `make bench`"]
async fn bench_warm_and_cold_database() {
    let operator_bin = std::env::var_os("FEATUREENV_BENCH_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(support::stack::OPERATOR_BIN));
    let scale: f64 = std::env::var("FEATUREENV_BENCH_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.05);
    let mut figures = Vec::new();
    for (label, warm) in [("warm", 1u32), ("cold", 0u32)] {
        let stack = Stack::with_operator(StackOptions {
            cluster_id: format!("bench-{label}"),
            boot_seconds: 3.0,
            aws_timing: ("realistic".into(), scale),
            fast_poll: "1s".into(),
            slow_poll: "10s".into(),
            pool: Some((warm, 5)),
            operator_bin: operator_bin.clone(),
            ..StackOptions::default()
        })
        .await;
        if warm > 0 {
            stack.wait_for_warm(warm, Duration::from_secs(600)).await;
        }
        let t0 = Instant::now();
        stack.apply_ok(&stack.environment_yaml(NS, label, "")).await;
        stack.wait_ready(NS, label, Duration::from_secs(1200)).await;
        let seconds = t0.elapsed().as_secs_f64();
        println!("{label} database: apply→Ready {seconds:.1}s at time scale {scale}");
        figures.push((label, seconds));
    }
    println!();
    println!(
        "realistic AWS timing × {scale}: instance pending {:.2}s, restore creating {:.1}s then backing-up {:.1}s",
        15.0 * scale,
        600.0 * scale,
        120.0 * scale
    );
    println!("{:>6} {:>14}", "start", "apply→Ready");
    for (label, seconds) in &figures {
        println!("{label:>6} {seconds:>13.1}s");
    }
}

/// One batch of `bench_warm_and_cold_instance`, seconds per environment.
#[derive(Default)]
struct Row {
    start: &'static str,
    n: usize,
    /// The starts the environments report (`warm`, `cold`).
    got: String,
    apply_to_ready: Vec<f64>,
    /// Warm only: apply → the first command sent to the spare (the prefetch, sent
    /// with the claim tag).
    claim: Vec<f64>,
    /// The first command sent → the personalisation sent: the claim's confirmation
    /// (AWS's tag delay and a poll), which the prefetch's pull overlaps.
    confirm: Vec<f64>,
    /// The first command sent → its script starts (SSM's delivery, played by the
    /// boot simulator).
    delivery: Vec<f64>,
    /// The instance's own work for the environment: the first script's start to the
    /// last one's end (the prefetch and the personalisation, overlapping).
    personalisation: Vec<f64>,
    /// Within that, the instance idle between its scripts (a confirmation that
    /// outlasted the prefetch).
    idle: Vec<f64>,
    /// The last script's end (it tags its outcome) → Ready seen.
    report: Vec<f64>,
    /// The machine's cores busy on average, apply → all Ready: the simulated
    /// instances' scripts (the real AWS CLI), moto and the strict layer, the API
    /// server and the operator share them, where on AWS each instance has its own.
    cores_busy: f64,
}

/// Time to Ready for N = 1 and 10 environments taking warm instances (spares of the
/// class's warm pool, bootstrapped before the apply) and cold ones (launched and
/// bootstrapped for them), under the strict layer's and the instance stand-ins'
/// realistic timing profiles at FEATUREENV_BENCH_INSTANCE_TIME_SCALE (default 1: the
/// profile's own figures, a 15 s EC2 pending, a 20 s image pull; what does not scale
/// — the AWS CLI's own run time on this machine, SSM delivery, the operator's polls —
/// would weigh more at a smaller scale). The class's
/// database pool is taken out: the database side has its own bench above, and a
/// restore would dominate both. Targets (issue 12): a warm start is Ready within its
/// personalisation (the instance's own work for the environment, from the boot
/// simulator's log: the prefetch's start to the personalisation's end) plus 2 s, and
/// at least 5 times faster than a cold start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: minutes long; run with `make bench`"]
async fn bench_warm_and_cold_instance() {
    let operator_bin = std::env::var_os("FEATUREENV_BENCH_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(support::stack::OPERATOR_BIN));
    let scale: f64 = std::env::var("FEATUREENV_BENCH_INSTANCE_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let stack = Stack::with_operator(StackOptions {
        cluster_id: "bench-instances".into(),
        boot_seconds: 0.0,
        aws_timing: ("realistic".into(), scale),
        fast_poll: "1s".into(),
        slow_poll: "10s".into(),
        operator_bin,
        ..StackOptions::default()
    })
    .await;
    stack.lift_namespace_cap().await;
    stack
        .kubectl_ok(&[
            "patch",
            "featureenvironmentclass",
            "standard",
            "--type=merge",
            "-p",
            r#"{"spec":{"databasePool":null}}"#,
        ])
        .await;

    let mut rows = Vec::new();
    let batches = [("warm", 10usize), ("warm", 1), ("cold", 1), ("cold", 10)];
    for (batch, (start, n)) in batches.into_iter().enumerate() {
        match start {
            "warm" => {
                stack.set_warm_pool(10).await;
                stack
                    .wait_for("spares", Duration::from_secs(900), || async {
                        stack.spares_available().await >= n as u32
                    })
                    .await;
            }
            _ => stack.set_warm_pool(0).await,
        }
        let names: Vec<String> = (0..n).map(|i| format!("b{batch}-{start}-{i}")).collect();
        let manifests: String = names
            .iter()
            .map(|name| format!("---\n{}", stack.environment_yaml(NS, name, "")))
            .collect();
        let t0 = Instant::now();
        let t0_unix = unix_now();
        let cpu_before = machine_cpu_ticks();
        stack.apply_ok(&manifests).await;
        // The moment each one is first seen Ready (polled every 100 ms), Unix seconds.
        let mut ready: BTreeMap<String, f64> = BTreeMap::new();
        let mut instances: BTreeMap<String, (String, String)> = BTreeMap::new();
        while ready.len() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(1200),
                "{start} N={n}: not Ready in 20 min"
            );
            for env in stack
                .environments(NS)
                .list(&Default::default())
                .await
                .expect("list")
                .items
            {
                let name = env.metadata.name.clone().unwrap_or_default();
                if !names.contains(&name) || ready.contains_key(&name) {
                    continue;
                }
                let Some(status) = env.status.as_ref() else { continue };
                if status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                {
                    ready.insert(name.clone(), unix_now());
                    let instance = status.instance.clone().unwrap_or_default();
                    let got = instance.start.map(|s| s.as_str().to_owned()).unwrap_or_default();
                    instances.insert(name, (instance.id.unwrap_or_default(), got));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cpu_after = machine_cpu_ticks();
        let starts: BTreeSet<&str> = instances.values().map(|(_, s)| s.as_str()).collect();
        // Per instance: when commands were sent (the strict layer's call log), when
        // their scripts ended and how long they ran (the boot simulator's log).
        let mut sent: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for c in stack.aws_calls() {
            if c["action"] == "SendCommand"
                && c["status"] == 200
                && let (Some(id), Some(ts)) = (c["instance_ids"][0].as_str(), c["ts"].as_f64())
            {
                sent.entry(id.to_owned()).or_default().push(ts);
            }
        }
        let mut ran: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for line in stack
            .read_log("boot-simulator.log")
            .lines()
            .filter(|l| l.contains(" command instance="))
        {
            let mut parts = line.split_whitespace();
            let Some(at) = parts.next().and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
                continue;
            };
            let fields: BTreeMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
            let end = at.as_millisecond() as f64 / 1000.0;
            if let (Some(id), Some(took)) = (
                fields.get("instance"),
                fields.get("ran").and_then(|r| r.parse::<f64>().ok()),
            ) {
                ran.entry((*id).to_owned()).or_default().push((end - took, end));
            }
        }
        let mut row = Row {
            start,
            n,
            got: starts.into_iter().collect::<Vec<_>>().join("+"),
            cores_busy: cores_busy(cpu_before, cpu_after),
            ..Row::default()
        };
        for (name, at) in &ready {
            row.apply_to_ready.push(at - t0_unix);
            let id = &instances[name].0;
            // Commands of this batch only: a spare ran its bootstrap before the apply.
            let sent: Vec<f64> = sent
                .get(id)
                .into_iter()
                .flatten()
                .copied()
                .filter(|t| *t >= t0_unix)
                .collect();
            let ran: Vec<(f64, f64)> = ran
                .get(id)
                .into_iter()
                .flatten()
                .copied()
                .filter(|(s, _)| *s >= t0_unix)
                .collect();
            if start != "warm" {
                continue;
            }
            let (Some(first), Some(last), Some(began), Some(ended)) = (
                sent.iter().copied().reduce(f64::min),
                sent.iter().copied().reduce(f64::max),
                ran.iter().map(|r| r.0).reduce(f64::min),
                ran.iter().map(|r| r.1).reduce(f64::max),
            ) else {
                println!("{name} on {id}: sent {sent:?}, ran {ran:?}");
                continue;
            };
            row.claim.push(first - t0_unix);
            row.confirm.push(last - first);
            row.delivery.push(began - first);
            row.personalisation.push(ended - began);
            let mut spans = ran.clone();
            spans.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut busy_until = began;
            let mut idle = 0.0;
            for (from, to) in spans {
                idle += (from - busy_until).max(0.0);
                busy_until = busy_until.max(to);
            }
            row.idle.push(idle);
            row.report.push(at - ended);
        }
        rows.push(row);
    }

    let tag_lag = 2.0 * scale;
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    println!();
    println!(
        "instance timing: realistic × {scale} (EC2 pending {:.1}s, OS boot {:.1}s, minikube start {:.1}s, image pull {:.1}s with no layer present, rollout {:.1}s, tag visibility {tag_lag:.1}s); no database; images of hack/seed_aws.py's IMAGE_LAYERS (the image under test lacks 10 % of its bytes next to its service's baseline)",
        15.0 * scale,
        20.0 * scale,
        25.0 * scale,
        20.0 * scale,
        10.0 * scale
    );
    println!(
        "{:>5} {:>3} {:>5} {:>12} {:>8} {:>6} | warm only, means: {:>6} {:>8} {:>9} {:>16} {:>5} {:>7} | operator overhead",
        "start",
        "N",
        "got",
        "apply→Ready",
        "max",
        "cores",
        "claim",
        "confirm",
        "delivery",
        "personalisation",
        "idle",
        "report",
    );
    for row in &rows {
        let warm = row.start == "warm";
        // apply→Ready is claim + delivery + personalisation + report: beyond the
        // instance's own work and SSM's delivery, the claim and the report are the
        // operator's. A confirmation the prefetch did not hide would show in the
        // personalisation (the instance idle between its two scripts). (The instance's
        // outcome tag would also take AWS's tag delay to show; the boot simulator's
        // scripts write to moto directly, so here it shows at once.)
        let overhead: Vec<f64> = row.claim.iter().zip(&row.report).map(|(c, r)| c + r).collect();
        let detail = if warm {
            format!(
                "{:>5.1}s {:>7.1}s {:>8.1}s {:>15.1}s {:>4.1}s {:>6.1}s | {:.2}s max (target ≤2s) {}",
                mean(&row.claim),
                mean(&row.confirm),
                mean(&row.delivery),
                mean(&row.personalisation),
                mean(&row.idle),
                mean(&row.report),
                max(&overhead),
                if max(&overhead) <= 2.0 { "met" } else { "MISSED" }
            )
        } else {
            "-".into()
        };
        println!(
            "{:>5} {:>3} {:>5} {:>11.1}s {:>7.1}s {:>6.2} | {detail}",
            row.start,
            row.n,
            row.got,
            mean(&row.apply_to_ready),
            max(&row.apply_to_ready),
            row.cores_busy
        );
    }
    println!(
        "cores: this machine's cores busy on average from apply to all Ready, of {} (everything shares them; on AWS each instance has its own)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for n in [1usize, 10] {
        let of = |s: &str| {
            rows.iter()
                .find(|r| r.start == s && r.n == n)
                .map_or(f64::NAN, |r| mean(&r.apply_to_ready))
        };
        let ratio = of("cold") / of("warm");
        println!(
            "N={n}: cold/warm = {ratio:.1}× (target ≥5×) {}",
            if ratio >= 5.0 { "met" } else { "MISSED" }
        );
    }
}
