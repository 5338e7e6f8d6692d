//! Version and group views of stored objects: custom-resource apiVersion
//! rewriting and the events.k8s.io/v1 ↔ core/v1 Event field mapping (no I/O).

use serde_json::{Map, Value, json};

use crate::resources::ResourceDef;

/// (core/v1 field, events.k8s.io/v1 field)
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("related", "related"),
    ("message", "note"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn remap(obj: &Value, api_version: &str, from_core: bool) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    if let Some(m) = obj.get("metadata") {
        out.insert("metadata".into(), m.clone());
    }
    for (core, ev) in EVENT_FIELDS {
        let (src, dst) = if from_core { (core, ev) } else { (ev, core) };
        if let Some(v) = obj.get(*src)
            && !v.is_null()
        {
            out.insert(dst.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// Stored form → what a client of `def` sees.
pub fn to_view(def: &ResourceDef, obj: &Value) -> Value {
    if def.is_events_k8s_io() {
        return remap(obj, "events.k8s.io/v1", true);
    }
    let mut v = obj.clone();
    if def.is_custom() {
        v["apiVersion"] = json!(def.api_version());
    }
    v
}

/// A client's object of `def` → stored form.
pub fn from_view(def: &ResourceDef, obj: Value) -> Value {
    if def.is_events_k8s_io() {
        return remap(&obj, "v1", false);
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn event_mapping_roundtrip() {
        let r = Registry::with_builtins();
        let def = r.get("events.k8s.io", "v1", "events").unwrap();
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                        "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started",
                        "reportingController": "ctl", "series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:00.000000Z"}});
        let core = from_view(&def, ev.clone());
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "ctl");
        assert_eq!(to_view(&def, &core), ev);
    }
}
