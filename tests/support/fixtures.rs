//! Objects the operator wrote in a test run, kept under `tests/argocd/fixtures/` for
//! the Argo CD health-check tests, so those run on what the operator really writes
//! rather than on hand-made reasons. With `FEATUREENV_RECORD_FIXTURES=1` a test writes
//! the live object there; otherwise it checks that the committed one still agrees with
//! the live one on everything a health check reads, and fails when it does not.

use std::path::PathBuf;

use kube::Api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn dir() -> PathBuf {
    PathBuf::from(super::root::repo_root()).join("tests/argocd/fixtures")
}

/// What a health check reads of an object: the phase, whether the status is
/// current, the conditions' types, statuses and reasons (an environment's check
/// reads only Ready; the others move on their own while it waits), the API
/// endpoint's presence and the pool counters.
fn health_view(object: &Value) -> Value {
    let status = &object["status"];
    let read = |c: &&Value| object["kind"] != "FeatureEnvironment" || c["type"] == "Ready";
    let conditions: Vec<Value> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(read)
        .map(|c| json!([c["type"], c["status"], c["reason"]]))
        .collect();
    json!({
        "kind": object["kind"],
        "phase": status["phase"],
        "current": status["observedGeneration"] == object["metadata"]["generation"],
        "conditions": conditions,
        "endpoint": status["endpoints"]["api"].is_string(),
        "warm": [status["warm"], object["spec"]["warm"]],
    })
}

/// Records the object (see the module docs) or checks the committed fixture `file`.
pub async fn argocd_fixture<K>(api: &Api<K>, name: &str, file: &str)
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let live = api.get(name).await.expect("object for a fixture");
    let mut live = serde_json::to_value(&live).expect("serializable");
    if let Some(metadata) = live["metadata"].as_object_mut() {
        for volatile in ["managedFields", "resourceVersion", "uid", "creationTimestamp"] {
            metadata.remove(volatile);
        }
    }
    let path = dir().join(file);
    if std::env::var("FEATUREENV_RECORD_FIXTURES").as_deref() == Ok("1") {
        std::fs::create_dir_all(dir()).expect("fixtures dir");
        let text = serde_json::to_string_pretty(&live).expect("json") + "\n";
        std::fs::write(&path, text).expect("write fixture");
        return;
    }
    let committed: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| {
            panic!(
                "{} missing: record it with FEATUREENV_RECORD_FIXTURES=1",
                path.display()
            )
        });
    assert_eq!(
        health_view(&committed),
        health_view(&live),
        "{} no longer matches what the operator writes; record it again with FEATUREENV_RECORD_FIXTURES=1",
        path.display()
    );
}
