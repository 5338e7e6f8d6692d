//! KUBE_API.md conformance item 15: 20 watchers and 4 writers on 2,000
//! objects; every watcher sees every event exactly once, in resourceVersion order.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const WATCHERS: usize = 20;
const WRITERS: usize = 4;
const OBJECTS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_and_writers_lose_nothing() {
    let emu = start().await;
    let client = emu.client();
    let start_rv = emu.with_state(|s| s.rv);
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let w = WatchStream::open(
            emu.addr(),
            &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start_rv}"),
        )
        .await;
        assert_eq!(w.status, 200);
        watchers.push(w);
    }
    // Each object is created, then patched: 2 events per object.
    let expected_events = OBJECTS * 2;
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(expected_events);
                while got.len() < expected_events {
                    match w.try_next(Duration::from_secs(60)).await {
                        Ok(Some(e)) => got.push(e),
                        Ok(None) => panic!("watch closed after {} events", got.len()),
                        Err(_) => panic!("watch stalled after {} events", got.len()),
                    }
                }
                // Nothing extra arrives.
                assert!(
                    w.try_next(Duration::from_millis(300)).await.is_err(),
                    "unexpected extra event"
                );
                got
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|wi| {
            let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
            tokio::spawn(async move {
                for i in 0..OBJECTS / WRITERS {
                    let name = format!("w{wi}-{i:04}");
                    let cm: ConfigMap =
                        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": "0"}})).unwrap();
                    api.create(&PostParams::default(), &cm).await.unwrap();
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"n": "1"}})),
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let end_rv = emu.with_state(|s| s.rv);
    assert_eq!(
        end_rv - start_rv,
        expected_events as u64,
        "one resourceVersion per write"
    );
    let mut reference: Option<Vec<(u64, String, String)>> = None;
    for r in readers {
        let events = r.await.unwrap();
        let seq: Vec<(u64, String, String)> = events
            .iter()
            .map(|e| {
                (
                    obj_rv(&e["object"]),
                    e["type"].as_str().unwrap().to_string(),
                    e["object"]["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            seq.windows(2).all(|p| p[0].0 < p[1].0),
            "strictly increasing resourceVersions"
        );
        let rvs: HashSet<u64> = seq.iter().map(|s| s.0).collect();
        assert_eq!(rvs.len(), expected_events, "no duplicates");
        let mut per_object: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (_, t, n) in &seq {
            per_object.entry(n).or_default().push(t);
        }
        assert_eq!(per_object.len(), OBJECTS);
        assert!(per_object.values().all(|ts| ts == &vec!["ADDED", "MODIFIED"]));
        match &reference {
            None => reference = Some(seq),
            Some(r) => assert_eq!(r, &seq, "every watcher sees the same sequence"),
        }
    }
}
