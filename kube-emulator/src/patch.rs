//! Patch algebra: JSON merge patch, JSON patch and a strategic-merge approximation (no I/O).

use serde_json::{Map, Value};

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        let t = target.as_object_mut().expect("object");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_and_last<'a>(doc: &'a mut Value, toks: &[String]) -> Result<(&'a mut Value, String), String> {
    let (last, parents) = toks.split_last().ok_or("cannot address the document root")?;
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("missing member {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("invalid index {t:?}"))?;
                a.get_mut(i).ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot traverse into {t:?}")),
        };
    }
    Ok((cur, last.clone()))
}

fn get_ptr<'a>(doc: &'a Value, toks: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn add(doc: &mut Value, toks: &[String], value: Value) -> Result<(), String> {
    if toks.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_and_last(doc, toks)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("invalid index {last:?}"))?;
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err("parent is not a container".into()),
    }
}

fn remove(doc: &mut Value, toks: &[String]) -> Result<Value, String> {
    let (parent, last) = parent_and_last(doc, toks)?;
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(|| format!("missing member {last:?}")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("invalid index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err("parent is not a container".into()),
    }
}

/// RFC 6902, with the upstream leniency that `test` against `null` passes for a
/// missing member (the kube-rs finalizer helper's first-finalizer insert relies on it).
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("JSON patch must be an array")?;
    for op in ops {
        let kind = op["op"].as_str().ok_or("operation without \"op\"")?;
        let path = split_pointer(op["path"].as_str().ok_or("operation without \"path\"")?)?;
        match kind {
            "add" => add(doc, &path, op.get("value").cloned().ok_or("add without value")?)?,
            "remove" => {
                remove(doc, &path)?;
            }
            "replace" => {
                let value = op.get("value").cloned().ok_or("replace without value")?;
                if path.is_empty() {
                    *doc = value;
                } else {
                    remove(doc, &path)?;
                    add(doc, &path, value)?;
                }
            }
            "move" | "copy" => {
                let from = split_pointer(op["from"].as_str().ok_or("missing from")?)?;
                let v = if kind == "move" {
                    remove(doc, &from)?
                } else {
                    get_ptr(doc, &from).cloned().ok_or("from path does not exist")?
                };
                add(doc, &path, v)?;
            }
            "test" => {
                let want = op.get("value").cloned().unwrap_or(Value::Null);
                let got = get_ptr(doc, &path).cloned().unwrap_or(Value::Null);
                if got != want {
                    return Err(format!(
                        "testing value {} failed: test failed",
                        op["path"].as_str().unwrap_or_default()
                    ));
                }
            }
            other => return Err(format!("unexpected kind: {other}")),
        }
    }
    Ok(())
}

/// Merge keys of well-known built-in list fields (`patchMergeKey` in the Go types).
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "conditions" => "type",
        "ownerReferences" => "uid",
        "ports" => {
            if items.iter().all(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        "volumeMounts" | "volumeDevices" => "mountPath",
        "hostAliases" => "ip",
        "imagePullSecrets"
        | "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "secrets" => "name",
        "topologySpreadConstraints" => "topologyKey",
        "tolerations" => return None,
        _ => {
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.is_object() && (i.get("name").is_some() || i.get("$patch").is_some()))
            {
                "name"
            } else {
                return None;
            }
        }
    };
    Some(key)
}

/// Strategic merge patch, approximated for built-in types: maps merge, known
/// keyed lists merge by key, `finalizers` merge as a set, directives honoured.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.as_object_mut().expect("object").remove("$patch");
        *target = replaced;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = p
        .get("$retainKeys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect());
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (t.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Object(inner) if inner.get("$patch").and_then(Value::as_str) == Some("delete") => {
                t.remove(k);
            }
            Value::Array(items) => {
                let cur = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                merge_list(k, cur, items);
            }
            _ => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
        }
    }
    if let Some(keep) = retain {
        t.retain(|k, _| keep.contains(k));
    }
}

fn merge_list(field: &str, cur: &mut Value, items: &[Value]) {
    if field == "finalizers" {
        let mut out = cur.as_array().cloned().unwrap_or_default();
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        *cur = Value::Array(out);
        return;
    }
    let Some(key) = merge_key(field, items) else {
        *cur = Value::Array(items.to_vec());
        return;
    };
    let mut out = cur.as_array().cloned().unwrap_or_default();
    for item in items {
        let kv = item.get(key).cloned();
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        let pos = out.iter().position(|o| kv.is_some() && o.get(key) == kv.as_ref());
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut out[i], item),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, item);
                out.push(fresh);
            }
        }
    }
    *cur = Value::Array(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge() {
        let mut d = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut d, &json!({"a": null, "b": {"c": 5}}));
        assert_eq!(d, json!({"b": {"c": 5, "d": 3}}));
    }

    #[test]
    fn json_patch_lenient_test() {
        let mut d = json!({"metadata": {}});
        json_patch(
            &mut d,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]),
        )
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["x"]));
        let err = json_patch(
            &mut d,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "y"}]),
        );
        assert!(err.is_err());
        json_patch(&mut d, &json!([{"op": "remove", "path": "/metadata/finalizers/0"}])).unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn strategic() {
        let mut d = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
                           "metadata": {"finalizers": ["f1"]}});
        strategic_merge(
            &mut d,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}]},
                    "metadata": {"finalizers": ["f2"]}}),
        );
        assert_eq!(d["spec"]["containers"], json!([{"name": "b", "image": "z"}]));
        assert_eq!(d["metadata"]["finalizers"], json!(["f1", "f2"]));
    }
}
