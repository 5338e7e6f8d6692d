//! The conformance suite of KUBE_API.md (items 1–12 and 14), driven through
//! kube-rs clients where they exist and raw HTTP where the wire matters.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as RecorderEvent, EventType as RecorderType, Recorder, Reporter};
use kube::runtime::{Controller, controller::Action, finalizer, watcher};
use kube::{Resource, ResourceExt};
use kube_emulator::Options;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

// 1. Discovery under both Accept styles.
#[tokio::test]
async fn discovery_under_both_accept_styles() {
    let (emu, client) = start_with_widgets().await;
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    for accept in [aggregated, "application/json", "*/*"] {
        let r = http(emu.addr(), "GET", "/apis", &[("Accept", accept)], b"").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("application/json"));
        let groups = r.json();
        assert_eq!(groups["kind"], "APIGroupList");
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        for g in [
            "example.com",
            "coordination.k8s.io",
            "events.k8s.io",
            "apiextensions.k8s.io",
            "rbac.authorization.k8s.io",
            "apps",
            "policy",
        ] {
            assert!(names.contains(&g), "{g} missing from {names:?}");
        }
    }
    let core = get_json(emu.addr(), "/api/v1").await.json();
    let ns = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "namespaces")
        .unwrap();
    assert_eq!(ns["namespaced"], false);
    assert_eq!(ns["shortNames"], json!(["ns"]));
    let ex = get_json(emu.addr(), "/apis/example.com/v1").await.json();
    let res: Vec<&Value> = ex["resources"].as_array().unwrap().iter().collect();
    assert_eq!(res[0]["name"], "widgets");
    assert_eq!(res[0]["singularName"], "widget");
    assert_eq!(res[0]["shortNames"], json!(["wd"]));
    assert_eq!(res[1]["name"], "widgets/status");
    assert_eq!(res[1]["verbs"], json!(["get", "patch", "update"]));
    // kube-rs discovery sees the CRD at once.
    let discovery = kube::discovery::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.plural == "widgets")
        .expect("widgets discovered");
    assert_eq!(ar.kind, "Widget");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    assert_eq!(get_json(emu.addr(), "/version").await.json()["major"], "1");
    for p in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(http(emu.addr(), "GET", p, &[], b"").await.status, 200);
    }
    let proto = http(
        emu.addr(),
        "GET",
        "/api/v1/namespaces",
        &[("Accept", "application/vnd.kubernetes.protobuf")],
        b"",
    )
    .await;
    assert_eq!(proto.status, 406);
    assert_eq!(proto.json()["reason"], "NotAcceptable");
    let both = http(
        emu.addr(),
        "GET",
        "/api/v1/namespaces",
        &[("Accept", "application/vnd.kubernetes.protobuf,application/json")],
        b"",
    )
    .await;
    assert_eq!(both.status, 200);
    assert_eq!(both.json()["kind"], "NamespaceList");
}

// 2. Paginated list, then watch from the last page's version: no gap, no duplicate.
#[tokio::test]
async fn paginated_list_then_watch_has_no_gap_or_duplicate() {
    let emu = start().await;
    let client = emu.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..25 {
        cms.create(&PostParams::default(), &cm(&format!("c{i:02}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut list_rv = String::new();
    let mut page = 0;
    loop {
        let mut lp = ListParams::default().limit(10);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let l = cms.list(&lp).await.unwrap();
        if page == 0 {
            list_rv = l.metadata.resource_version.clone().unwrap();
            // Writes during pagination must not leak into later pages.
            cms.create(&PostParams::default(), &cm("late-a")).await.unwrap();
            cms.delete("c24", &DeleteParams::default()).await.unwrap();
        }
        assert_eq!(l.metadata.resource_version.as_deref(), Some(list_rv.as_str()));
        seen.extend(l.items.iter().map(|c| c.name_any()));
        page += 1;
        match l.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    assert_eq!(page, 3);
    assert_eq!(seen.len(), 25);
    assert!(seen.contains(&"c24".to_string()) && !seen.contains(&"late-a".to_string()));
    let mut w = WatchStream::open(
        emu.addr(),
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={list_rv}"),
    )
    .await;
    assert_eq!(w.status, 200);
    let e1 = w.next(T).await.unwrap();
    assert_eq!(
        (
            e1["type"].as_str().unwrap(),
            e1["object"]["metadata"]["name"].as_str().unwrap()
        ),
        ("ADDED", "late-a")
    );
    let e2 = w.next(T).await.unwrap();
    assert_eq!(
        (
            e2["type"].as_str().unwrap(),
            e2["object"]["metadata"]["name"].as_str().unwrap()
        ),
        ("DELETED", "c24")
    );
    assert!(obj_rv(&e2["object"]) > obj_rv(&e1["object"]));
    assert_eq!(e2["object"]["kind"], "ConfigMap");
    assert_eq!(e2["object"]["apiVersion"], "v1");
    assert!(
        w.try_next(Duration::from_millis(300)).await.is_err(),
        "no further events"
    );
    // An expired continue token is 410.
    let bad = get_json(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?limit=1&continue=7b226964223a3939392c227276223a317d",
    )
    .await;
    assert_eq!(bad.status, 410);
    assert_eq!(bad.json()["reason"], "Expired");
    // resourceVersionMatch rules.
    let r = get_json(emu.addr(), "/api/v1/configmaps?resourceVersionMatch=NotOlderThan").await;
    assert_eq!(r.status, 422);
    let r = get_json(
        emu.addr(),
        &format!("/api/v1/configmaps?resourceVersionMatch=NotOlderThan&resourceVersion={list_rv}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get_json(emu.addr(), "/api/v1/configmaps?resourceVersion=abc")
            .await
            .status,
        400
    );
}

// 3. Stale version → ERROR 410 → the kube-rs watcher relists.
#[tokio::test]
async fn stale_version_gets_410_and_watcher_relists() {
    let emu = start_with(Options {
        history_limit: 20,
        ..Options::default()
    })
    .await;
    let client = emu.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..30 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}"))).await.unwrap();
    }
    let mut w = WatchStream::open(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2",
    )
    .await;
    assert_eq!(w.status, 200);
    let e = w.next(T).await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(w.next(T).await.is_none(), "stream closes after the 410");

    let mut stream = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut inits = 0;
    // First listing.
    while let Some(ev) = stream.try_next().await.unwrap() {
        if matches!(ev, watcher::Event::InitDone) {
            inits += 1;
            break;
        }
    }
    // Drop the history under the live watch: its next read is 410 and kube-rs must relist.
    emu.with_state(|s| {
        let def = s.registry.get("", "v1", "configmaps").unwrap();
        s.create(
            &def,
            "default",
            json!({"metadata": {"name": "after-expiry"}}),
            &Default::default(),
        )
        .unwrap();
        s.history.clear();
        s.floor = s.rv;
    });
    let mut relisted_names = Vec::new();
    let mut expired_seen = false;
    let relist = async {
        // kube-rs surfaces the 410 as a non-fatal error item, then relists.
        while let Some(ev) = stream.next().await {
            match ev {
                Err(watcher::Error::WatchError(s)) if s.code == 410 => expired_seen = true,
                Err(e) => panic!("unexpected watcher error {e:?}"),
                Ok(watcher::Event::InitApply(c)) => relisted_names.push(c.name_any()),
                Ok(watcher::Event::InitDone) => {
                    inits += 1;
                    break;
                }
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), relist)
        .await
        .expect("watcher relisted");
    assert!(expired_seen, "the watch ended with 410 Expired");
    assert_eq!(inits, 2);
    assert!(relisted_names.contains(&"after-expiry".to_string()));
}

// 4. Bookmarks; timeoutSeconds=2 closes and the watcher resumes.
#[tokio::test]
async fn bookmarks_and_timeout_close_then_watcher_resumes() {
    let emu = start_with(Options {
        bookmark_interval: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    let client = emu.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let started = std::time::Instant::now();
    let mut w = WatchStream::open(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=2",
    )
    .await;
    // Headers arrive before any event exists.
    assert_eq!(w.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let mut bookmarks = 0;
    while let Some(e) = w.next(Duration::from_secs(4)).await {
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(e["object"]["kind"], "ConfigMap");
        assert!(
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        bookmarks += 1;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    assert!(bookmarks >= 2, "periodic and final bookmarks, got {bookmarks}");

    // sendInitialEvents: ADDED for each object, then the annotated BOOKMARK.
    cms.create(&PostParams::default(), &cm("one")).await.unwrap();
    let bad = get_json(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(bad.status, 422);
    let mut w = WatchStream::open(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5",
    )
    .await;
    let e = w.next(T).await.unwrap();
    assert_eq!(
        (
            e["type"].as_str().unwrap(),
            e["object"]["metadata"]["name"].as_str().unwrap()
        ),
        ("ADDED", "one")
    );
    let b = w.next(T).await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // kube-rs with a 2 s server timeout keeps receiving across re-watches.
    let mut stream = watcher(cms.clone(), watcher::Config::default().timeout(2)).boxed();
    while let Some(ev) = stream.try_next().await.unwrap() {
        if matches!(ev, watcher::Event::InitDone) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cms.create(&PostParams::default(), &cm("after-timeout")).await.unwrap();
    let got = tokio::time::timeout(T, async {
        while let Some(ev) = stream.try_next().await.unwrap() {
            if let watcher::Event::Apply(c) = ev {
                return c.name_any();
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert_eq!(got, "after-timeout");

    // The same through kube-rs streaming lists (sendInitialEvents).
    let mut stream = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    tokio::time::timeout(T, async {
        while let Some(ev) = stream.try_next().await.unwrap() {
            match ev {
                watcher::Event::InitApply(c) => names.push(c.name_any()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    names.sort();
    assert_eq!(names, vec!["after-timeout", "one"]);
}

// 5. Label changes move objects in and out of a watch.
#[tokio::test]
async fn label_changes_move_objects_in_and_out_of_a_watch() {
    let emu = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(emu.client());
    cms.create(&PostParams::default(), &cm("x")).await.unwrap();
    let mut w = WatchStream::open(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?watch=true&labelSelector=app%3Dweb",
    )
    .await;
    let pp = PatchParams::default();
    cms.patch("x", &pp, &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})))
        .await
        .unwrap();
    let e = w.next(T).await.unwrap();
    assert_eq!(e["type"], "ADDED");
    cms.patch("x", &pp, &Patch::Merge(json!({"data": {"k": "2"}})))
        .await
        .unwrap();
    assert_eq!(w.next(T).await.unwrap()["type"], "MODIFIED");
    cms.patch("x", &pp, &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})))
        .await
        .unwrap();
    let e = w.next(T).await.unwrap();
    assert_eq!(e["type"], "DELETED");
    assert_eq!(e["object"]["metadata"]["labels"]["app"], "db");
    cms.patch("x", &pp, &Patch::Merge(json!({"data": {"k": "3"}})))
        .await
        .unwrap();
    assert!(
        w.try_next(Duration::from_millis(300)).await.is_err(),
        "outside the selector: no event"
    );
    // Selector grammar and errors.
    let l = get_json(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?labelSelector=app%20in%20(db,web),!missing",
    )
    .await;
    assert_eq!(l.json()["items"].as_array().unwrap().len(), 1);
    let bad = get_json(
        emu.addr(),
        "/api/v1/namespaces/default/configmaps?labelSelector=app%20in%20db",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["reason"], "BadRequest");
    let by_name = get_json(emu.addr(), "/api/v1/configmaps?fieldSelector=metadata.name%3Dx").await;
    assert_eq!(by_name.json()["items"].as_array().unwrap().len(), 1);
}

// 6. AlreadyExists; PUT stale → 409, none → 422, missing → 404.
#[tokio::test]
async fn create_and_replace_error_matrix() {
    let (emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    let created = w.create(&PostParams::default(), &widget("a", 1)).await.unwrap();
    let (code, reason) = api_err(w.create(&PostParams::default(), &widget("a", 1)).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    let mut stale = created.clone();
    w.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    stale.data["spec"]["size"] = json!(3);
    let (code, reason) = api_err(w.replace("a", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let mut no_rv = created.clone();
    no_rv.metadata.resource_version = None;
    let (code, reason) = api_err(w.replace("a", &PostParams::default(), &no_rv).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    let mut missing = widget("nope", 1);
    missing.metadata.resource_version = Some("5".into());
    let (code, _) = api_err(w.replace("nope", &PostParams::default(), &missing).await.unwrap_err());
    assert_eq!(code, 404);
    // Kind/apiVersion mismatch, namespace mismatch, bad names, generateName.
    let r = send_json(
        emu.addr(),
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets",
        "application/json",
        &json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"size": 1}}),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = send_json(emu.addr(), "POST", "/apis/example.com/v1/namespaces/default/widgets", "application/json",
        &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "g", "namespace": "other"}, "spec": {"size": 1}})).await;
    assert_eq!(r.status, 400);
    let r = send_json(emu.addr(), "POST", "/apis/example.com/v1/namespaces/default/widgets", "application/json",
        &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "Bad_Name"}, "spec": {"size": 1}})).await;
    assert_eq!(r.status, 422);
    let r = send_json(emu.addr(), "POST", "/apis/example.com/v1/namespaces/default/widgets", "application/json",
        &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"generateName": "gen-"}, "spec": {"size": 1}})).await;
    assert_eq!(r.status, 201);
    let body = r.json();
    let name = body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert_eq!(body["metadata"]["creationTimestamp"].as_str().unwrap().len(), 20);
    let r = http(
        emu.addr(),
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &[("Content-Type", "application/vnd.kubernetes.protobuf")],
        b"k8s\0",
    )
    .await;
    assert_eq!(r.status, 415);
    let r = get_json(emu.addr(), "/api/v1/namespaces/missing/configmaps/x").await;
    assert_eq!(r.status, 404);
    let s = r.json();
    assert_eq!(
        (s["kind"].as_str(), s["status"].as_str(), s["reason"].as_str()),
        (Some("Status"), Some("Failure"), Some("NotFound"))
    );
    assert_eq!(s["details"]["name"], "x");
    let r = send_json(
        emu.addr(),
        "POST",
        "/api/v1/namespaces/nowhere/configmaps",
        "application/json",
        &json!({"metadata": {"name": "x"}}),
    )
    .await;
    assert_eq!(r.status, 404);
    // Leases: 409 on racing creates.
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}})).unwrap();
    let pp = PostParams::default();
    let (a, b) = tokio::join!(leases.create(&pp, &lease), leases.create(&pp, &lease));
    assert!(a.is_ok() != b.is_ok(), "exactly one racing create wins");
}

// 7. Generation matrix; a no-op write keeps the resourceVersion.
#[tokio::test]
async fn generation_matrix_and_noop_writes() {
    let (_emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    let pp = PatchParams::default();
    let o = w.create(&PostParams::default(), &widget("g", 1)).await.unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    let o = w
        .patch(
            "g",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1), "metadata-only write");
    let o = w
        .patch_status("g", &pp, &Patch::Merge(json!({"status": {"phase": "Ready"}})))
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1), "status write");
    let rv = o.metadata.resource_version.clone();
    let o = w
        .patch("g", &pp, &Patch::Merge(json!({"spec": {"size": 1}})))
        .await
        .unwrap();
    assert_eq!(o.metadata.resource_version, rv, "no-op patch keeps the resourceVersion");
    let o = w.replace("g", &PostParams::default(), &o).await.unwrap();
    assert_eq!(o.metadata.resource_version, rv, "no-op PUT keeps the resourceVersion");
    let o = w
        .patch("g", &pp, &Patch::Merge(json!({"spec": {"size": 2}})))
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(2), "spec write");
    // Writes to the main endpoint keep status; /status keeps everything else.
    let o = w
        .patch("g", &pp, &Patch::Merge(json!({"status": {"phase": "Gone"}})))
        .await
        .unwrap();
    assert_eq!(o.data["status"]["phase"], "Ready");
    let o = w
        .patch_status(
            "g",
            &pp,
            &Patch::Merge(
                json!({"spec": {"size": 9}, "metadata": {"labels": {"a": "c"}}, "status": {"phase": "Done"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            o.data["spec"]["size"].as_i64(),
            o.labels()["a"].as_str(),
            o.data["status"]["phase"].as_str()
        ),
        (Some(2), "b", Some("Done"))
    );
    assert_eq!(o.metadata.generation, Some(2));
    // Status is stripped on create.
    let mut with_status = widget("h", 1);
    with_status.data["status"] = json!({"phase": "Fake"});
    let h = w.create(&PostParams::default(), &with_status).await.unwrap();
    assert!(h.data.get("status").is_none());
    // Deletion with a finalizer bumps generation once; re-DELETE changes nothing.
    w.patch(
        "g",
        &pp,
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    let d = w
        .delete("g", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("object while finalizing");
    assert_eq!(d.metadata.generation, Some(3));
    assert!(d.metadata.deletion_timestamp.is_some());
    let d2 = w.delete("g", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert_eq!(d2.metadata.resource_version, d.metadata.resource_version);
    // No new finalizers on a deleting object; deletionTimestamp is immutable.
    let (code, _) = api_err(
        w.patch(
            "g",
            &pp,
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x/y"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    let o = w
        .patch(
            "g",
            &pp,
            &Patch::Merge(json!({"metadata": {"deletionTimestamp": null}})),
        )
        .await
        .unwrap();
    assert!(o.metadata.deletion_timestamp.is_some());
    // Emptying the finalizers completes the deletion.
    w.patch("g", &pp, &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert!(w.get_opt("g").await.unwrap().is_none());
    // Two controllers in ownerReferences are rejected.
    let r = w
        .patch(
            "h",
            &pp,
            &Patch::Merge(json!({"metadata": {"ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "1", "controller": true},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "b", "uid": "2", "controller": true}]}})),
        )
        .await;
    assert_eq!(api_err(r.unwrap_err()).0, 422);
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct ReconcileError(#[source] kube::Error);

// 8. The kube-rs finalizer lifecycle through DELETE to the DELETED event.
#[tokio::test]
async fn finalizer_lifecycle_with_controller() {
    let (emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    let applied = Arc::new(AtomicUsize::new(0));
    let cleaned = Arc::new(AtomicUsize::new(0));
    struct Ctx {
        api: Api<DynamicObject>,
        applied: Arc<AtomicUsize>,
        cleaned: Arc<AtomicUsize>,
        recorder: Recorder,
    }
    let ctx = Arc::new(Ctx {
        api: w.clone(),
        applied: applied.clone(),
        cleaned: cleaned.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "widget-ctl".into(),
                instance: Some("test".into()),
            },
        ),
    });
    async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, finalizer::Error<ReconcileError>> {
        let api = ctx.api.clone();
        finalizer(&api, "example.com/cleanup", obj, |ev| async {
            match ev {
                finalizer::Event::Apply(o) => {
                    let status = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "status": {"observedGeneration": o.metadata.generation, "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled"}]}});
                    ctx.api
                        .patch_status(&o.name_any(), &PatchParams::apply("widget-ctl").force(), &Patch::Apply(status))
                        .await
                        .map_err(ReconcileError)?;
                    ctx.recorder
                        .publish(
                            &RecorderEvent { type_: RecorderType::Normal, reason: "Reconciled".into(), note: Some("all good".into()), action: "Reconcile".into(), secondary: None },
                            &o.object_ref(&widget_ar()),
                        )
                        .await
                        .map_err(ReconcileError)?;
                    ctx.applied.fetch_add(1, Ordering::SeqCst);
                    Ok(Action::await_change())
                }
                finalizer::Event::Cleanup(_) => {
                    ctx.cleaned.fetch_add(1, Ordering::SeqCst);
                    Ok(Action::await_change())
                }
            }
        })
        .await
    }
    fn error_policy(_: Arc<DynamicObject>, _: &finalizer::Error<ReconcileError>, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }
    let ctl = tokio::spawn(
        Controller::new_with(w.clone(), watcher::Config::default(), widget_ar())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {}),
    );
    w.create(&PostParams::default(), &widget("f", 1)).await.unwrap();
    eventually("ready with finalizer", Duration::from_secs(10), || async {
        let o = w.get("f").await.unwrap();
        o.finalizers().contains(&"example.com/cleanup".to_string())
            && o.data["status"]["conditions"][0]["status"] == "True"
    })
    .await;
    let o = w.get("f").await.unwrap();
    assert_eq!(o.data["status"]["observedGeneration"], json!(o.metadata.generation));
    // Identical status applies persist nothing, so the controller settles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = applied.load(Ordering::SeqCst);
    assert!(settled <= 3, "reconcile storm: {settled} applies");
    assert_eq!(w.get("f").await.unwrap().resource_version(), o.resource_version());
    let rv = o.resource_version().unwrap();
    let mut events = WatchStream::open(
        emu.addr(),
        &format!("/apis/example.com/v1/namespaces/default/widgets?watch=true&resourceVersion={rv}"),
    )
    .await;
    w.delete("f", &DeleteParams::default()).await.unwrap();
    let mut saw = Vec::new();
    while let Some(e) = events.next(Duration::from_secs(10)).await {
        saw.push(e["type"].as_str().unwrap().to_string());
        if e["type"] == "DELETED" {
            assert!(e["object"]["metadata"]["deletionTimestamp"].is_string());
            assert_eq!(e["object"]["metadata"].get("finalizers"), None);
            break;
        }
    }
    assert_eq!(saw.first().map(String::as_str), Some("MODIFIED"));
    assert_eq!(saw.last().map(String::as_str), Some("DELETED"));
    assert_eq!(cleaned.load(Ordering::SeqCst), 1);
    assert!(applied.load(Ordering::SeqCst) >= 1);
    // The Recorder's events.k8s.io event is visible through core/v1.
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let evs = core
        .list(&ListParams::default().fields("involvedObject.name=f"))
        .await
        .unwrap();
    let ev = evs
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("Reconciled"))
        .expect("recorder event");
    assert_eq!(ev.message.as_deref(), Some("all good"));
    assert_eq!(ev.involved_object.kind.as_deref(), Some("Widget"));
    assert_eq!(ev.reporting_component.as_deref(), Some("widget-ctl"));
    ctl.abort();
}

// 9. Patch matrix.
#[tokio::test]
async fn patch_matrix() {
    let (emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    w.create(&PostParams::default(), &widget("p", 1)).await.unwrap();
    let base = "/apis/example.com/v1/namespaces/default/widgets/p";
    let json_patch = "application/json-patch+json";
    // `test` of null on a missing member passes; a failing test is 422.
    let r = send_json(
        emu.addr(),
        "PATCH",
        base,
        json_patch,
        &json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["a/b"]}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["metadata"]["finalizers"], json!(["a/b"]));
    let r = send_json(
        emu.addr(),
        "PATCH",
        base,
        json_patch,
        &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "x/y"}]),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = send_json(
        emu.addr(),
        "PATCH",
        base,
        "application/strategic-merge-patch+json",
        &json!({"spec": {"size": 2}}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let r = send_json(
        emu.addr(),
        "PATCH",
        &format!("{base}?force=true"),
        "application/merge-patch+json",
        &json!({"spec": {"size": 2}}),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = send_json(
        emu.addr(),
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/missing",
        "application/merge-patch+json",
        &json!({"spec": {"size": 2}}),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = send_json(
        emu.addr(),
        "PATCH",
        base,
        "application/merge-patch+json",
        &json!({"metadata": {"resourceVersion": "1"}, "spec": {"size": 2}}),
    )
    .await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (409, Some("Conflict")));
    let r = send_json(
        emu.addr(),
        "PATCH",
        base,
        "application/merge-patch+json",
        &json!({"metadata": {"uid": "other"}}),
    )
    .await;
    assert_eq!(r.status, 409);
    let r = send_json(emu.addr(), "PATCH", base, "text/plain", &json!({})).await;
    assert_eq!(r.status, 415);
    let r = send_json(
        emu.addr(),
        "PATCH",
        base,
        json_patch,
        &json!([{"op": "replace", "path": "", "value": 5}]),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = http(
        emu.addr(),
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets",
        &[("Content-Type", "application/json")],
        b"{not json",
    )
    .await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (400, Some("BadRequest")));
    // Apply creates (201) and needs a field manager.
    let cfg = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "q"}, "spec": {"size": 3}});
    let r = send_json(
        emu.addr(),
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/q",
        "application/apply-patch+yaml",
        &cfg,
    )
    .await;
    assert_eq!(r.status, 422);
    let yaml = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: q\nspec:\n  size: 3\n";
    let r = http(
        emu.addr(),
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/q?fieldManager=me",
        &[("Content-Type", "application/apply-patch+yaml")],
        yaml.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Strategic merge works for built-ins (kubectl, lease managers use it).
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(&PostParams::default(), &cm("s")).await.unwrap();
    let c = cms
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"k": null, "n": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        c.data.unwrap().into_iter().collect::<Vec<_>>(),
        vec![("n".to_string(), "1".to_string())]
    );
    // Delete preconditions.
    let r = send_json(
        emu.addr(),
        "DELETE",
        base,
        "application/json",
        &json!({"preconditions": {"uid": "nope"}}),
    )
    .await;
    assert_eq!(r.status, 409);
    let r = send_json(
        emu.addr(),
        "DELETE",
        "/apis/example.com/v1/namespaces/default/widgets/q",
        "application/json",
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(
        (s["kind"].as_str(), s["status"].as_str()),
        (Some("Status"), Some("Success"))
    );
    assert!(!s["details"]["uid"].as_str().unwrap().is_empty());
}

// 10. Server-side apply.
#[tokio::test]
async fn server_side_apply() {
    let (_emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    let a = PatchParams::apply("alice");
    let b = PatchParams::apply("bob");
    let cfg = |spec: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "s"}, "spec": spec});
    let o = w
        .patch(
            "s",
            &a,
            &Patch::Apply(cfg(
                json!({"size": 1, "tags": ["x"], "ports": [{"name": "http", "port": 80}]}),
            )),
        )
        .await
        .unwrap();
    let mf = o.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(&mf[0].fields_v1).unwrap();
    assert!(
        fields["f:spec"]["f:ports"]["k:{\"name\":\"http\"}"]["f:port"].is_object(),
        "{fields}"
    );
    // Idempotent re-apply.
    let o2 = w
        .patch(
            "s",
            &a,
            &Patch::Apply(cfg(
                json!({"size": 1, "tags": ["x"], "ports": [{"name": "http", "port": 80}]}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(o2.metadata.resource_version, o.metadata.resource_version);
    // Conflict, then force.
    let err = w
        .patch("s", &b, &Patch::Apply(cfg(json!({"size": 2}))))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(s.message.contains("conflict with \"alice\""), "{}", s.message);
            assert!(s.message.contains(".spec.size"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }
    // Shared ownership of an equal value is not a conflict; map-list items merge by key.
    let o = w
        .patch(
            "s",
            &b,
            &Patch::Apply(cfg(json!({"size": 1, "ports": [{"name": "grpc", "port": 90}]}))),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["ports"].as_array().unwrap().len(), 2);
    let o = w
        .patch(
            "s",
            &b.clone().force(),
            &Patch::Apply(cfg(json!({"size": 2, "ports": [{"name": "grpc", "port": 90}]}))),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["size"], 2);
    // Alice stops sending tags and size: tags go (only she owned them), size stays (bob owns it now).
    let o = w
        .patch(
            "s",
            &a,
            &Patch::Apply(cfg(json!({"ports": [{"name": "http", "port": 80}]}))),
        )
        .await
        .unwrap();
    assert!(o.data["spec"].get("tags").is_none(), "{}", o.data);
    assert_eq!(o.data["spec"]["size"], 2);
    // Apply to /status touches only status; a spec in it is ignored.
    let st = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "s"}, "spec": {"size": 50}, "status": {"phase": "Up"}});
    let o = w
        .patch_status("s", &PatchParams::apply("ctl"), &Patch::Apply(st))
        .await
        .unwrap();
    assert_eq!(
        (o.data["status"]["phase"].as_str(), o.data["spec"]["size"].as_i64()),
        (Some("Up"), Some(2))
    );
    let entry = o
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("ctl"))
        .unwrap();
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    // Finalizers are a set across managers.
    let fin = |f: &str| json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "s", "finalizers": [f]}});
    w.patch("s", &PatchParams::apply("f1"), &Patch::Apply(fin("a/one")))
        .await
        .unwrap();
    let o = w
        .patch("s", &PatchParams::apply("f2"), &Patch::Apply(fin("a/two")))
        .await
        .unwrap();
    assert_eq!(o.finalizers().len(), 2);
    // An annotation-only client-side apply does not wipe the spec.
    let o = w
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["size"], 2);
    // Built-in leases: SSA conflict is what makes lease locking safe.
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "lk"}, "spec": {"holderIdentity": holder}});
    leases
        .patch("lk", &PatchParams::apply("a"), &Patch::Apply(lease("a")))
        .await
        .unwrap();
    let e = leases
        .patch("lk", &PatchParams::apply("b"), &Patch::Apply(lease("b")))
        .await
        .unwrap_err();
    assert_eq!(api_err(e).0, 409);
}

// 11. Schema defaulting, pruning, Strict vs Warn, 422 causes.
#[tokio::test]
async fn schema_defaulting_pruning_validation() {
    let (emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    let path = "/apis/example.com/v1/namespaces/default/widgets";
    let obj = |name: &str, spec: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec});
    let r = send_json(
        emu.addr(),
        "POST",
        path,
        "application/json",
        &obj("d", json!({"size": 1, "bogus": true, "extra": {"free": 1}})),
    )
    .await;
    assert_eq!(r.status, 201);
    let warnings = r.headers_named("warning");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("299") && w.contains("spec.bogus")),
        "{warnings:?}"
    );
    let body = r.json();
    assert_eq!(body["spec"]["mode"], "fast", "defaulted");
    assert_eq!(body["spec"]["ports"], json!([]), "defaulted");
    assert!(body["spec"].get("bogus").is_none(), "pruned");
    assert_eq!(body["spec"]["extra"]["free"], 1, "preserved");
    let r = send_json(
        emu.addr(),
        "POST",
        &format!("{path}?fieldValidation=Strict"),
        "application/json",
        &obj("e", json!({"size": 1, "bogus": true})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.bogus\"")
    );
    let r = send_json(
        emu.addr(),
        "PATCH",
        &format!("{path}/d?fieldValidation=Strict"),
        "application/merge-patch+json",
        &json!({"spec": {"bogus": 1}}),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = send_json(
        emu.addr(),
        "POST",
        &format!("{path}?fieldValidation=Ignore"),
        "application/json",
        &obj("f", json!({"size": 1, "bogus": true})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert!(r.header("warning").is_none());
    // Field causes.
    let r = send_json(
        emu.addr(),
        "POST",
        path,
        "application/json",
        &obj(
            "bad",
            json!({"size": 0, "mode": "warp", "name": "UPPER", "when": "yesterday",
                           "ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}),
        ),
    )
    .await;
    assert_eq!(r.status, 422);
    let s = r.json();
    assert_eq!(s["reason"], "Invalid");
    let causes = s["details"]["causes"].as_array().unwrap();
    let fields: Vec<&str> = causes.iter().map(|c| c["field"].as_str().unwrap()).collect();
    for f in ["spec.size", "spec.mode", "spec.name", "spec.when", "spec.ports[1]"] {
        assert!(fields.contains(&f), "{f} missing in {fields:?}");
    }
    let dup = causes.iter().find(|c| c["field"] == "spec.ports[1]").unwrap();
    assert_eq!(dup["reason"], "FieldValueDuplicate");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .starts_with("Widget.example.com \"bad\" is invalid: [")
    );
    let r = send_json(
        emu.addr(),
        "POST",
        path,
        "application/json",
        &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "nosize"}, "spec": {}}),
    )
    .await;
    assert_eq!(
        r.json()["details"]["causes"][0],
        json!({"reason": "FieldValueRequired", "message": "Required value", "field": "spec.size"})
    );
    // CEL: self, all(), has(); oldSelf-free rules evaluate on create.
    let r = send_json(
        emu.addr(),
        "POST",
        path,
        "application/json",
        &obj("cel", json!({"size": 1, "ttl": {"min": 5, "max": 1}})),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("ttl.max must be at least ttl.min")
    );
    let r = send_json(
        emu.addr(),
        "POST",
        path,
        "application/json",
        &obj("cel2", json!({"size": 1, "ports": [{"name": "a", "port": 0}]})),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(w.get_opt("cel2").await.unwrap().is_none());
    let ok = send_json(
        emu.addr(),
        "POST",
        path,
        "application/json",
        &obj("cel3", json!({"size": 1, "ttl": {"min": 1, "max": 5}})),
    )
    .await;
    assert_eq!(ok.status, 201);
}

// 12. Tables: priority columns, JSONPath filters, dates.
#[tokio::test]
async fn tables_for_kubectl_get() {
    let (emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    w.create(&PostParams::default(), &widget("t", 7)).await.unwrap();
    w.patch_status(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [
        {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
    w.create(&PostParams::default(), &widget("u", 8)).await.unwrap();
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let r = http(
        emu.addr(),
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        &[("Accept", accept)],
        b"",
    )
    .await;
    let t = r.json();
    assert_eq!(
        (t["kind"].as_str(), t["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1"))
    );
    let cols: Vec<(&str, i64)> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        cols,
        vec![("Name", 0), ("Ready", 0), ("Size", 0), ("Mode", 1), ("Age", 0)]
    );
    let row = &t["rows"][0];
    assert_eq!(row["cells"][0], "t");
    assert_eq!(row["cells"][1], "True");
    assert_eq!(row["cells"][2], 7);
    let age = row["cells"][4].as_str().unwrap();
    assert!(age.ends_with('s') && age.len() <= 3, "age {age}");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["namespace"], "default");
    assert!(t["rows"][1]["cells"][1].is_null(), "missing condition → empty cell");
    let one = http(
        emu.addr(),
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets/t",
        &[("Accept", accept)],
        b"",
    )
    .await
    .json();
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    let cms = http(emu.addr(), "GET", "/api/v1/namespaces", &[("Accept", accept)], b"")
        .await
        .json();
    assert_eq!(cms["columnDefinitions"][1]["name"], "Status");
    let pom = http(
        emu.addr(),
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        &[(
            "Accept",
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
        )],
        b"",
    )
    .await
    .json();
    assert_eq!(pom["kind"], "PartialObjectMetadataList");
}

// 14. Two kube-rs lease electors; a Recorder seen through core/v1.
#[tokio::test]
async fn two_lease_electors_and_recorder() {
    use kube_lease_manager::LeaseManagerBuilder;
    let emu = start().await;
    let client = emu.client();
    let mk = |id: &str| {
        LeaseManagerBuilder::new(client.clone(), "leader")
            .with_namespace("default")
            .with_identity(id)
            .with_duration(5)
            .with_grace(2)
            .build()
    };
    let a = mk("alpha").await.unwrap();
    let b = mk("beta").await.unwrap();
    let (mut rx_a, task_a) = a.watch().await;
    let (mut rx_b, task_b) = b.watch().await;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if *rx_a.borrow() || *rx_b.borrow() {
                break;
            }
            tokio::select! { _ = rx_a.changed() => {}, _ = rx_b.changed() => {} }
        }
    })
    .await
    .expect("someone leads");
    // Over several renewals exactly one holds it.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let leaders = *rx_a.borrow() as u8 + *rx_b.borrow() as u8;
        assert_eq!(leaders, 1, "exactly one leader");
    }
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let l = leases.get("leader").await.unwrap();
    let holder = l.spec.unwrap().holder_identity.unwrap();
    let leader_is_a = *rx_a.borrow();
    assert_eq!(holder, if leader_is_a { "alpha" } else { "beta" });
    // The leader steps down; the other takes over.
    if leader_is_a {
        drop(rx_a);
        task_a.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            while !*rx_b.borrow() {
                rx_b.changed().await.unwrap();
            }
        })
        .await
        .expect("beta takes over");
        drop(rx_b);
        let _ = task_b.await;
    } else {
        drop(rx_b);
        task_b.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            while !*rx_a.borrow() {
                rx_a.changed().await.unwrap();
            }
        })
        .await
        .expect("alpha takes over");
        drop(rx_a);
        let _ = task_a.await;
    }
    // Recorder: create, then a repeat becomes a series patch; both views agree.
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let c = cms.create(&PostParams::default(), &cm("subject")).await.unwrap();
    let rec = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ctl".into(),
            instance: None,
        },
    );
    let ev = RecorderEvent {
        type_: RecorderType::Warning,
        reason: "Broken".into(),
        note: Some("it broke".into()),
        action: "Check".into(),
        secondary: None,
    };
    rec.publish(&ev, &c.object_ref(&())).await.unwrap();
    rec.publish(&ev, &c.object_ref(&())).await.unwrap();
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let list = core
        .list(&ListParams::default().fields("involvedObject.kind=ConfigMap,involvedObject.name=subject,type=Warning"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(
        (e.reason.as_deref(), e.message.as_deref()),
        (Some("Broken"), Some("it broke"))
    );
    assert_eq!(e.series.as_ref().and_then(|s| s.count), Some(2));
    let r = send_json(emu.addr(), "POST", "/apis/events.k8s.io/v1/namespaces/default/events", "application/json",
        &json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "incomplete"}, "note": "x", "type": "Normal"})).await;
    assert_eq!(
        r.status, 422,
        "events.k8s.io requires eventTime, reportingController, ..."
    );
    let modern = get_json(emu.addr(), "/apis/events.k8s.io/v1/namespaces/default/events")
        .await
        .json();
    assert_eq!(modern["items"][0]["note"], "it broke");
    assert_eq!(modern["items"][0]["regarding"]["name"], "subject");
}

// 29 (S): background garbage collection by owner uid; Foreground and Orphan propagation.
#[tokio::test]
async fn garbage_collection_by_owner_uid() {
    let emu = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(emu.client());
    let owned_by = |name: &str, owner: &ConfigMap| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(), "uid": owner.uid().unwrap(), "controller": true}]}}))
        .unwrap()
    };
    let gone = |name: &'static str| {
        let cms = cms.clone();
        move || {
            let cms = cms.clone();
            async move { cms.get_opt(name).await.unwrap().is_none() }
        }
    };
    // Background: the dependent goes after its owner.
    let owner = cms.create(&PostParams::default(), &cm("owner")).await.unwrap();
    cms.create(&PostParams::default(), &owned_by("child", &owner))
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually("child collected", T, gone("child")).await;
    // Foreground: the owner waits for its dependents.
    let owner = cms.create(&PostParams::default(), &cm("fg-owner")).await.unwrap();
    let mut held = owned_by("fg-child", &owner);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.delete("fg-owner", &DeleteParams::foreground()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let o = cms.get("fg-owner").await.unwrap();
    assert!(o.finalizers().contains(&"foregroundDeletion".to_string()));
    assert!(cms.get("fg-child").await.unwrap().metadata.deletion_timestamp.is_some());
    cms.patch(
        "fg-child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("foreground owner deleted", T, gone("fg-owner")).await;
    // Orphan: the dependent stays without its owner reference.
    let owner = cms.create(&PostParams::default(), &cm("or-owner")).await.unwrap();
    cms.create(&PostParams::default(), &owned_by("or-child", &owner))
        .await
        .unwrap();
    cms.delete("or-owner", &DeleteParams::orphan()).await.unwrap();
    eventually("orphaning owner deleted", T, gone("or-owner")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let child = cms.get("or-child").await.unwrap();
    assert!(child.metadata.owner_references.unwrap_or_default().is_empty());
}

// 30: CRD admission, conditions, multiple served versions.
#[tokio::test]
async fn crd_admission_and_versions() {
    let emu = start().await;
    let path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let mut crd = widget_crd();
    crd["metadata"]["name"] = json!("wrong.example.com");
    let r = send_json(emu.addr(), "POST", path, "application/json", &crd).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["details"]["causes"][0]["field"], "metadata.name");
    let mut crd = widget_crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["untyped"] =
        json!({"description": "no type"});
    let r = send_json(emu.addr(), "POST", path, "application/json", &crd).await;
    assert_eq!(r.status, 422, "non-structural schema");
    assert_eq!(
        r.json()["details"]["causes"][0]["field"],
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[untyped].type"
    );
    let mut crd = widget_crd();
    let mut beta = crd["spec"]["versions"][0].clone();
    beta["name"] = json!("v1beta1");
    beta["storage"] = json!(true);
    crd["spec"]["versions"].as_array_mut().unwrap().push(beta.clone());
    let r = send_json(emu.addr(), "POST", path, "application/json", &crd).await;
    assert_eq!(r.status, 422, "two storage versions");
    crd["spec"]["versions"][1]["storage"] = json!(false);
    let r = send_json(emu.addr(), "POST", path, "application/json", &crd).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let c = r.json();
    assert_eq!(c["spec"]["names"]["singular"], "widget");
    assert_eq!(c["spec"]["names"]["listKind"], "WidgetList");
    assert_eq!(c["status"]["storedVersions"], json!(["v1"]));
    let conds: Vec<(&str, &str)> = c["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["type"].as_str().unwrap(), x["status"].as_str().unwrap()))
        .collect();
    assert_eq!(conds, vec![("NamesAccepted", "True"), ("Established", "True")]);
    assert_eq!(c["status"]["acceptedNames"]["kind"], "Widget");
    let g = get_json(emu.addr(), "/apis/example.com").await.json();
    assert_eq!(g["preferredVersion"]["version"], "v1");
    let r = send_json(
        emu.addr(),
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets",
        "application/json",
        &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": {"size": 1}}),
    )
    .await;
    assert_eq!(r.status, 201);
    let via_beta = get_json(emu.addr(), "/apis/example.com/v1beta1/namespaces/default/widgets/x")
        .await
        .json();
    assert_eq!(via_beta["apiVersion"], "example.com/v1beta1");
    let idx = get_json(emu.addr(), "/openapi/v3").await.json();
    let url = idx["paths"]["apis/example.com/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = get_json(emu.addr(), &url).await.json();
    let patch = &doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Widget");
    assert!(
        patch["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_none()
    );
    assert_eq!(
        doc["components"]["schemas"]["com.example.v1.Widget"]["properties"]["spec"]["description"],
        "What the widget should be."
    );
}

// Built-in validation: label syntax everywhere, Deployment selector/template, immutable roleRef.
#[tokio::test]
async fn builtin_validation_matches_upstream() {
    let emu = start().await;
    let a = emu.addr();
    let long = "x".repeat(64);
    let r = send_json(
        a,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        &json!({"metadata": {"name": "l", "labels": {"k": long}}}),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["details"]["causes"][0]["field"], "metadata.labels");
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"app": "a"}},
        "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let r = send_json(
        a,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        "application/json",
        &d,
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("`selector` does not match template `labels`")
    );
    let rb = |role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role}, "subjects": []})
    };
    assert_eq!(
        send_json(
            a,
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            "application/json",
            &rb("r1")
        )
        .await
        .status,
        201
    );
    let r = send_json(
        a,
        "PATCH",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/rb",
        "application/merge-patch+json",
        &json!({"roleRef": {"name": "r2"}}),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = send_json(
        a,
        "POST",
        "/api/v1/namespaces/default/services",
        "application/json",
        &json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000}]}}),
    )
    .await;
    assert_eq!(r.status, 422);
}

// Metadata-only clients, dry run and deletecollection.
#[tokio::test]
async fn metadata_watcher_dry_run_and_deletecollection() {
    let (_emu, client) = start_with_widgets().await;
    let w = widgets(&client);
    let meta_api: Api<kube::core::PartialObjectMeta<DynamicObject>> =
        Api::namespaced_with(client.clone(), "default", &widget_ar());
    let mut stream = watcher(meta_api, watcher::Config::default()).boxed();
    w.create(&PostParams::default(), &widget("m1", 1)).await.unwrap();
    let got = tokio::time::timeout(T, async {
        while let Some(ev) = stream.try_next().await.unwrap() {
            if let watcher::Event::Apply(m) | watcher::Event::InitApply(m) = ev {
                return m;
            }
        }
        panic!("stream ended")
    })
    .await
    .unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("m1"));
    assert_eq!(
        got.types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let o = w.create(&dry, &widget("dry", 1)).await.unwrap();
    assert_eq!(o.data["spec"]["mode"], "fast", "dry run still defaults");
    assert!(w.get_opt("dry").await.unwrap().is_none());
    let mut labelled = widget("m2", 1);
    labelled.metadata.labels = Some([("batch".to_string(), "x".to_string())].into());
    w.create(&PostParams::default(), &labelled).await.unwrap();
    w.delete_collection(&DeleteParams::default(), &ListParams::default().labels("batch=x"))
        .await
        .unwrap();
    let left: Vec<String> = w
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    assert_eq!(left, vec!["m1"]);
}

// The library stops serving on shutdown, even for pooled connections.
#[tokio::test]
async fn shutdown_closes_everything() {
    let emu = start().await;
    let client = emu.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.list(&ListParams::default()).await.unwrap();
    let mut w = WatchStream::open(emu.addr(), "/api/v1/namespaces/default/configmaps?watch=true").await;
    let addr = emu.addr();
    emu.shutdown().await;
    assert!(w.next(T).await.is_none(), "watch ended");
    assert!(
        cms.list(&ListParams::default()).await.is_err(),
        "pooled client is refused"
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
}

// Namespace termination waits for finalizers and refuses new content.
#[tokio::test]
async fn namespace_termination() {
    let emu = start().await;
    let a = emu.addr();
    assert_eq!(
        send_json(
            a,
            "POST",
            "/api/v1/namespaces",
            "application/json",
            &json!({"metadata": {"name": "t"}})
        )
        .await
        .status,
        201
    );
    let ns = get_json(a, "/api/v1/namespaces/t").await.json();
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "t");
    assert_eq!(ns["status"]["phase"], "Active");
    let held = json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
    assert_eq!(
        send_json(a, "POST", "/api/v1/namespaces/t/configmaps", "application/json", &held)
            .await
            .status,
        201
    );
    let r = http(a, "DELETE", "/api/v1/namespaces/t", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"]["phase"], "Terminating");
    let r = send_json(
        a,
        "POST",
        "/api/v1/namespaces/t/configmaps",
        "application/json",
        &json!({"metadata": {"name": "new"}}),
    )
    .await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("Forbidden")));
    eventually("content marked for deletion", T, || async {
        get_json(a, "/api/v1/namespaces/t/configmaps/held").await.json()["metadata"]["deletionTimestamp"].is_string()
    })
    .await;
    assert_eq!(
        get_json(a, "/api/v1/namespaces/t").await.status,
        200,
        "namespace waits for its content"
    );
    send_json(
        a,
        "PATCH",
        "/api/v1/namespaces/t/configmaps/held",
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    )
    .await;
    eventually("namespace gone", T, || async {
        get_json(a, "/api/v1/namespaces/t").await.status == 404
    })
    .await;
    assert_eq!(
        http(a, "DELETE", "/api/v1/namespaces/default", &[], b"").await.status,
        403
    );
}
