//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply:
//! merge, conflicts, force and removal of fields a manager stopped applying (no I/O).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::schema::{ListType, list_type_from_schema, schema_at};

/// One path through an object, as FieldsV1 elements (`f:x`, `k:{..}`, `v:..`).
pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// What the ownership computation needs to know about a resource.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub schema: Option<&'a Value>,
    pub has_status: bool,
    pub subresource: &'a str,
    pub api_version: &'a str,
}

impl Ctx<'_> {
    fn list_type(&self, fields: &[String], items: &[Value]) -> ListType {
        match fields {
            [m, f] if m == "metadata" && f == "finalizers" => return ListType::Set,
            [m, f] if m == "metadata" && f == "ownerReferences" => {
                return ListType::Map(vec!["uid".into()]);
            }
            [m, _] if m == "metadata" => return ListType::Atomic,
            _ => {}
        }
        if let Some(schema) = self.schema {
            return schema_at(schema, fields)
                .map(list_type_from_schema)
                .unwrap_or(ListType::Atomic);
        }
        let last = fields.last().map(String::as_str).unwrap_or_default();
        if last == "conditions" && items.iter().all(|i| i.get("type").is_some()) {
            return ListType::Map(vec!["type".into()]);
        }
        if !items.is_empty() && items.iter().all(|i| i.get("name").is_some_and(Value::is_string)) {
            return ListType::Map(vec!["name".into()]);
        }
        ListType::Atomic
    }
}

fn key_elem(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    format!("k:{}", Value::Object(m))
}

/// The set of leaf (and keyed-item) paths a value defines.
pub fn fieldset_of(v: &Value, ctx: Ctx) -> FieldSet {
    let mut out = FieldSet::new();
    let mut fields = Vec::new();
    let mut prefix = Vec::new();
    walk(v, ctx, &mut fields, &mut prefix, &mut out);
    out
}

fn walk(v: &Value, ctx: Ctx, fields: &mut Vec<String>, prefix: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                prefix.push(format!("f:{k}"));
                fields.push(k.clone());
                walk_child(c, ctx, fields, prefix, out);
                fields.pop();
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

fn walk_child(c: &Value, ctx: Ctx, fields: &mut Vec<String>, prefix: &mut FieldPath, out: &mut FieldSet) {
    let Value::Array(items) = c else {
        walk(c, ctx, fields, prefix, out);
        return;
    };
    if items.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    match ctx.list_type(fields, items) {
        ListType::Atomic => {
            out.insert(prefix.clone());
        }
        ListType::Set => {
            for i in items {
                prefix.push(format!("v:{i}"));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        ListType::Map(keys) => {
            fields.push("[]".into());
            for i in items {
                prefix.push(key_elem(i, &keys));
                out.insert(prefix.clone());
                walk(i, ctx, fields, prefix, out);
                prefix.pop();
            }
            fields.pop();
        }
    }
}

fn find_item(items: &[Value], elem: &str) -> Option<usize> {
    if let Some(k) = elem.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        items
            .iter()
            .position(|i| keys.iter().all(|(kk, kv)| i.get(kk).unwrap_or(&Value::Null) == kv))
    } else if let Some(v) = elem.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        items.iter().position(|i| *i == want)
    } else if let Some(i) = elem.strip_prefix("i:") {
        let i: usize = i.parse().ok()?;
        (i < items.len()).then_some(i)
    } else {
        None
    }
}

pub fn get_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for e in path {
        cur = if let Some(f) = e.strip_prefix("f:") {
            cur.get(f)?
        } else {
            let items = cur.as_array()?;
            &items[find_item(items, e)?]
        };
    }
    Some(cur)
}

pub fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for e in parents {
        let next = if let Some(f) = e.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            match cur.as_array_mut() {
                Some(items) => match find_item(items, e) {
                    Some(i) => items.get_mut(i),
                    None => None,
                },
                None => None,
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(items) = cur.as_array_mut()
        && let Some(i) = find_item(items, last)
    {
        items.remove(i);
    }
}

/// `.spec.containers[name="x"].image`, as upstream prints conflicting paths.
pub fn render_path(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else {
            s.push_str(&format!("[{e}]"));
        }
    }
    s
}

#[derive(Default)]
struct Node {
    member: bool,
    children: std::collections::BTreeMap<String, Node>,
}

pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Node::default();
    for p in set {
        let mut n = &mut root;
        for e in p {
            n = n.children.entry(e.clone()).or_default();
        }
        n.member = true;
    }
    fn enc(n: &Node) -> Value {
        let mut m = Map::new();
        if n.member && !n.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &n.children {
            m.insert(k.clone(), enc(c));
        }
        Value::Object(m)
    }
    enc(&root)
}

pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn dec(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if (m.is_empty() || m.contains_key(".")) && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, c) in m {
            if k == "." {
                continue;
            }
            prefix.push(k.clone());
            dec(c, prefix, out);
            prefix.pop();
        }
    }
    dec(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub set: FieldSet,
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or_default().to_string(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                    time: e["time"].as_str().unwrap_or_default().to_string(),
                    subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
                    set: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut m = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.set),
            });
            if !e.subresource.is_empty() {
                m["subresource"] = json!(e.subresource);
            }
            m
        })
        .collect();
    let meta = crate::meta::metadata_mut(obj);
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// The part of an object whose ownership is tracked for this endpoint.
fn trackable(v: &Value, ctx: Ctx) -> Value {
    let mut v = v.clone();
    let Some(m) = v.as_object_mut() else { return v };
    m.remove("apiVersion");
    m.remove("kind");
    if let Some(Value::Object(meta)) = m.get_mut("metadata") {
        for f in UNOWNED_META {
            meta.remove(*f);
        }
        if meta.is_empty() {
            m.remove("metadata");
        }
    }
    if ctx.subresource == "status" {
        m.retain(|k, _| k == "status");
    } else if ctx.has_status {
        m.remove("status");
    }
    v
}

fn entry_index(entries: &mut Vec<Entry>, manager: &str, op: &str, ctx: Ctx) -> usize {
    if let Some(i) = entries
        .iter()
        .position(|e| e.manager == manager && e.operation == op && e.subresource == ctx.subresource)
    {
        return i;
    }
    entries.push(Entry {
        manager: manager.into(),
        operation: op.into(),
        api_version: ctx.api_version.into(),
        time: crate::meta::now_rfc3339(),
        subresource: ctx.subresource.into(),
        set: FieldSet::new(),
    });
    entries.len() - 1
}

/// Ownership after a create/update/patch: the writer owns what it changed;
/// others lose what it changed or removed.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, ctx: Ctx) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let old_t = old.map(|o| trackable(o, ctx)).unwrap_or(Value::Object(Map::new()));
    let new_t = trackable(new, ctx);
    let fs_old = fieldset_of(&old_t, ctx);
    let fs_new = fieldset_of(&new_t, ctx);
    let changed: FieldSet = fs_new
        .iter()
        .filter(|p| {
            let identity = p.last().is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
            !fs_old.contains(*p) || (!identity && get_at(&old_t, p) != get_at(&new_t, p))
        })
        .cloned()
        .collect();
    let removed: FieldSet = fs_old.difference(&fs_new).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, &entries);
        return;
    }
    for e in entries.iter_mut() {
        e.set.retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    if !changed.is_empty() {
        let i = entry_index(&mut entries, manager, "Update", ctx);
        entries[i].set.extend(changed);
        entries[i].time = crate::meta::now_rfc3339();
        entries[i].api_version = ctx.api_version.into();
    }
    write_entries(new, &entries);
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: String,
}

/// Merges an apply configuration into the live object (schema-aware lists).
fn merge_apply(live: &mut Value, cfg: &Value, ctx: Ctx, fields: &mut Vec<String>) {
    let (Value::Object(l), Value::Object(c)) = (&mut *live, cfg) else {
        *live = cfg.clone();
        return;
    };
    for (k, cv) in c {
        if cv.is_null() {
            l.remove(k);
            continue;
        }
        fields.push(k.clone());
        match (l.get_mut(k), cv) {
            (Some(lv @ Value::Object(_)), Value::Object(_)) => merge_apply(lv, cv, ctx, fields),
            (Some(Value::Array(litems)), Value::Array(citems)) => match ctx.list_type(fields, citems) {
                ListType::Atomic => *l.get_mut(k).expect("present") = cv.clone(),
                ListType::Set => {
                    for i in citems {
                        if !litems.contains(i) {
                            litems.push(i.clone());
                        }
                    }
                }
                ListType::Map(keys) => {
                    fields.push("[]".into());
                    for ci in citems {
                        match litems
                            .iter_mut()
                            .find(|li| keys.iter().all(|kk| li.get(kk) == ci.get(kk)))
                        {
                            Some(li) => merge_apply(li, ci, ctx, fields),
                            None => litems.push(ci.clone()),
                        }
                    }
                    fields.pop();
                }
            },
            _ => {
                l.insert(k.clone(), cv.clone());
            }
        }
        fields.pop();
    }
}

/// Server-side apply of `config` by `manager` onto `live` (None: create).
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    ctx: Ctx,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = live.map(read_entries).unwrap_or_default();
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut cfg = config.clone();
    if let Some(m) = cfg.as_object_mut() {
        if ctx.subresource == "status" {
            m.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind");
        } else if ctx.has_status && live.is_some() {
            m.remove("status");
        }
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            meta.remove("managedFields");
            meta.remove("resourceVersion");
            meta.remove("uid");
            meta.remove("creationTimestamp");
            meta.remove("generation");
        }
    }
    let cfg_set = fieldset_of(&trackable(&cfg, ctx), ctx);
    let mut merged = base.clone();
    merge_apply(&mut merged, &cfg, ctx, &mut Vec::new());

    let mine = |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == ctx.subresource;
    let base_t = trackable(&base, ctx);
    let merged_t = trackable(&merged, ctx);
    let mut conflicts = Vec::new();
    let mut conflicting: Vec<(usize, FieldPath)> = Vec::new();
    for (idx, e) in entries.iter().enumerate() {
        if mine(e) || e.subresource != ctx.subresource {
            continue;
        }
        for p in cfg_set.intersection(&e.set) {
            // Keyed list items and set members are identities, not values:
            // changing a field inside an item conflicts on that field only.
            let identity = p.last().is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
            if !identity && get_at(&base_t, p) != get_at(&merged_t, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    path: render_path(p),
                });
                conflicting.push((idx, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (idx, p) in conflicting {
        entries[idx].set.remove(&p);
    }
    let previous: FieldSet = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut stale: Vec<&FieldPath> = previous.difference(&cfg_set).collect();
    stale.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in stale {
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.set.iter().any(|q| q.starts_with(p)));
        let still_wanted = cfg_set.iter().any(|q| q.starts_with(p));
        if !owned_elsewhere && !still_wanted {
            remove_at(&mut merged, p);
        }
    }
    let i = entry_index(&mut entries, manager, "Apply", ctx);
    entries[i].set = cfg_set;
    entries[i].time = crate::meta::now_rfc3339();
    entries[i].api_version = ctx.api_version.into();
    if ctx.subresource == "status" {
        let mut out = base;
        if let Some(st) = merged.get("status") {
            out["status"] = st.clone();
        } else if let Some(m) = out.as_object_mut() {
            m.remove("status");
        }
        merged = out;
    }
    write_entries(&mut merged, &entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            schema: None,
            has_status: true,
            subresource: "",
            api_version: "v1",
        }
    }

    #[test]
    fn fields_v1_roundtrip() {
        let v = json!({"spec": {"a": 1, "list": [{"name": "x", "v": 1}]}, "metadata": {"finalizers": ["f"]}});
        let set = fieldset_of(&v, ctx());
        let enc = to_fields_v1(&set);
        assert_eq!(enc["f:spec"]["f:list"]["k:{\"name\":\"x\"}"]["."], json!({}));
        assert_eq!(enc["f:metadata"]["f:finalizers"]["v:\"f\""], json!({}));
        assert_eq!(from_fields_v1(&enc), set);
    }

    #[test]
    fn apply_conflict_force_remove() {
        let cfg_a = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"a": 1, "b": 2}});
        let o = apply(None, &cfg_a, "alice", false, ctx()).unwrap();
        let cfg_b = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"a": 5}});
        let err = apply(Some(&o), &cfg_b, "bob", false, ctx()).unwrap_err();
        assert_eq!(err[0].path, ".spec.a");
        assert_eq!(err[0].manager, "alice");
        let same = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"a": 1}});
        let shared = apply(Some(&o), &same, "bob", false, ctx()).unwrap();
        let o2 = apply(
            Some(&shared),
            &json!({"apiVersion": "v1", "kind": "X", "spec": {}}),
            "alice",
            false,
            ctx(),
        )
        .unwrap();
        assert_eq!(o2["spec"], json!({"a": 1}), "b removed, a kept because bob shares it");
        let forced = apply(Some(&o2), &cfg_b, "bob", true, ctx()).unwrap();
        assert_eq!(forced["spec"]["a"], json!(5));
        let list =
            |port: i64| json!({"apiVersion": "v1", "kind": "X", "spec": {"ports": [{"name": "http", "port": port}]}});
        let o3 = apply(Some(&forced), &list(80), "carol", false, ctx()).unwrap();
        let err = apply(Some(&o3), &list(81), "dave", false, ctx()).unwrap_err();
        let paths: Vec<&str> = err.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec![".spec.ports[name=\"http\"].port"]);
    }
}
