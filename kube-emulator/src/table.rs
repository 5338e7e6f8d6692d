//! `meta.k8s.io/v1` Table responses: printer columns, the JSONPath subset
//! they use, ages for dates (no I/O).

use serde_json::{Value, json};

use crate::meta::{age_of, get_str};
use crate::resources::ResourceDef;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        path: Vec<String>,
        op: String,
        value: Option<Value>,
    },
}

fn parse_jsonpath(expr: &str) -> Option<Vec<Step>> {
    let e = expr.trim();
    let e = e.strip_prefix('{').and_then(|x| x.strip_suffix('}')).unwrap_or(e);
    let e = e.strip_prefix('$').unwrap_or(e);
    let chars: Vec<char> = e.chars().collect();
    let mut i = 0;
    let mut steps = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let f: String = chars[start..i].iter().collect();
                if !f.is_empty() {
                    steps.push(Step::Field(f));
                }
            }
            '[' => {
                let mut depth = 0;
                let start = i + 1;
                while i < chars.len() {
                    if chars[i] == '[' {
                        depth += 1;
                    } else if chars[i] == ']' {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
                let inner: String = chars[start..i.min(chars.len())].iter().collect();
                i += 1;
                let inner = inner.trim();
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Ok(n) = inner.parse::<i64>() {
                    steps.push(Step::Index(n));
                } else if let Some(f) = inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')')) {
                    steps.push(parse_filter(f)?);
                } else {
                    let name = inner.trim_matches(|c| c == '\'' || c == '"');
                    steps.push(Step::Field(name.to_string()));
                }
            }
            _ => {
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                steps.push(Step::Field(chars[start..i].iter().collect()));
            }
        }
    }
    Some(steps)
}

fn parse_filter(f: &str) -> Option<Step> {
    let f = f.trim();
    for op in ["==", "!=", "<=", ">=", "<", ">"] {
        if let Some((l, r)) = f.split_once(op) {
            let path = l
                .trim()
                .strip_prefix('@')?
                .split('.')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let r = r.trim();
            let value = if (r.starts_with('"') && r.ends_with('"')) || (r.starts_with('\'') && r.ends_with('\'')) {
                Value::String(r[1..r.len() - 1].to_string())
            } else {
                serde_json::from_str(r).ok()?
            };
            return Some(Step::Filter {
                path,
                op: op.to_string(),
                value: Some(value),
            });
        }
    }
    let path = f
        .strip_prefix('@')?
        .split('.')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Some(Step::Filter {
        path,
        op: "exists".into(),
        value: None,
    })
}

fn cmp(a: &Value, op: &str, b: &Value) -> bool {
    match op {
        "==" => a == b,
        "!=" => a != b,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => match op {
                "<" => x < y,
                ">" => x > y,
                "<=" => x <= y,
                ">=" => x >= y,
                _ => false,
            },
            _ => false,
        },
    }
}

/// Evaluates a printer-column JSONPath; missing keys yield no results.
pub fn jsonpath(obj: &Value, expr: &str) -> Vec<Value> {
    let Some(steps) = parse_jsonpath(expr) else {
        return vec![];
    };
    let mut cur = vec![obj.clone()];
    for s in &steps {
        let mut next = Vec::new();
        for v in cur {
            match s {
                Step::Field(f) => {
                    if let Some(x) = v.get(f) {
                        next.push(x.clone());
                    }
                }
                Step::Index(n) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *n < 0 { a.len() as i64 + n } else { *n };
                        if idx >= 0
                            && let Some(x) = a.get(idx as usize)
                        {
                            next.push(x.clone());
                        }
                    }
                }
                Step::All => match &v {
                    Value::Array(a) => next.extend(a.iter().cloned()),
                    Value::Object(m) => next.extend(m.values().cloned()),
                    _ => {}
                },
                Step::Filter { path, op, value } => {
                    if let Some(a) = v.as_array() {
                        for item in a {
                            let mut f = Some(item);
                            for p in path {
                                f = f.and_then(|x| x.get(p));
                            }
                            let keep = match (f, value) {
                                (Some(x), Some(want)) => cmp(x, op, want),
                                (Some(_), None) => true,
                                _ => false,
                            };
                            if keep {
                                next.push(item.clone());
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

fn cell(values: Vec<Value>, col_type: &str) -> Value {
    let v = match values.len() {
        0 => return Value::Null,
        1 => values.into_iter().next().expect("one"),
        _ => Value::Array(values),
    };
    if col_type == "date" {
        return match v.as_str() {
            Some(s) => json!(age_of(s)),
            None => Value::Null,
        };
    }
    v
}

fn coldef(name: &str, typ: &str, format: &str, desc: &str, priority: i64) -> Value {
    json!({"name": name, "type": typ, "format": format, "description": desc, "priority": priority})
}

type Extractor = fn(&Value) -> Value;

struct BuiltinColumn {
    name: &'static str,
    typ: &'static str,
    priority: i64,
    get: Extractor,
}

fn age(o: &Value) -> Value {
    get_str(o, &["metadata", "creationTimestamp"])
        .map(|t| json!(age_of(t)))
        .unwrap_or(Value::Null)
}

fn builtin_columns(def: &ResourceDef) -> Vec<BuiltinColumn> {
    let c = |name, typ, priority, get| BuiltinColumn {
        name,
        typ,
        priority,
        get,
    };
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => vec![
            c("Status", "string", 0, |o| o["status"]["phase"].clone()),
            c("Age", "string", 0, age),
        ],
        ("", "configmaps") => vec![
            c("Data", "integer", 0, |o| {
                let n =
                    o["data"].as_object().map_or(0, |m| m.len()) + o["binaryData"].as_object().map_or(0, |m| m.len());
                json!(n)
            }),
            c("Age", "string", 0, age),
        ],
        ("", "secrets") => vec![
            c("Type", "string", 0, |o| o["type"].clone()),
            c("Data", "integer", 0, |o| {
                json!(o["data"].as_object().map_or(0, |m| m.len()))
            }),
            c("Age", "string", 0, age),
        ],
        ("", "services") => vec![
            c("Type", "string", 0, |o| {
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP"))
            }),
            c("Cluster-IP", "string", 0, |o| {
                json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>"))
            }),
            c("Age", "string", 0, age),
        ],
        ("apps", "deployments") => vec![
            c("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                ))
            }),
            c("Up-to-date", "integer", 0, |o| {
                json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0))
            }),
            c("Available", "integer", 0, |o| {
                json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0))
            }),
            c("Age", "string", 0, age),
        ],
        ("coordination.k8s.io", "leases") => vec![
            c("Holder", "string", 0, |o| o["spec"]["holderIdentity"].clone()),
            c("Age", "string", 0, age),
        ],
        ("", "events") => vec![
            c("Last Seen", "string", 0, |o| {
                let t = o["lastTimestamp"]
                    .as_str()
                    .or(o["series"]["lastObservedTime"].as_str())
                    .or(o["eventTime"].as_str())
                    .or(o["metadata"]["creationTimestamp"].as_str());
                t.map(|t| json!(age_of(t))).unwrap_or(Value::Null)
            }),
            c("Type", "string", 0, |o| o["type"].clone()),
            c("Reason", "string", 0, |o| o["reason"].clone()),
            c("Object", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    o["involvedObject"]["kind"].as_str().unwrap_or("").to_lowercase(),
                    o["involvedObject"]["name"].as_str().unwrap_or("")
                ))
            }),
            c("Message", "string", 0, |o| o["message"].clone()),
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![c("Created At", "date", 0, |o| {
                o["metadata"]["creationTimestamp"].clone()
            })]
        }
        _ => vec![c("Age", "string", 0, age)],
    }
}

/// The PartialObjectMetadata a Table row carries by default.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"],
    })
}

/// Builds a Table for objects already in the client's view.
pub fn table(def: &ResourceDef, objs: &[Value], list_meta: Value, include_object: &str) -> Value {
    let mut defs = vec![coldef(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        0,
    )];
    enum Col<'a> {
        Path(&'a str, &'a str),
        Builtin(Extractor),
    }
    let mut cols: Vec<Col> = Vec::new();
    let printer = def.crd.as_ref().map(|c| c.printer_columns.clone());
    match &printer {
        Some(pcs) if !pcs.is_empty() => {
            for pc in pcs {
                let typ = pc["type"].as_str().unwrap_or("string");
                defs.push(coldef(
                    pc["name"].as_str().unwrap_or(""),
                    typ,
                    pc["format"].as_str().unwrap_or(""),
                    pc["description"].as_str().unwrap_or(""),
                    pc["priority"].as_i64().unwrap_or(0),
                ));
                cols.push(Col::Path(pc["jsonPath"].as_str().unwrap_or(""), typ));
            }
        }
        Some(_) => {
            defs.push(coldef(
                "Age",
                "date",
                "",
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
                0,
            ));
            cols.push(Col::Path(".metadata.creationTimestamp", "date"));
        }
        None => {
            for bc in builtin_columns(def) {
                defs.push(coldef(bc.name, bc.typ, "", "", bc.priority));
                cols.push(Col::Builtin(bc.get));
            }
        }
    }
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut cells = vec![json!(crate::meta::name_of(o))];
            for c in &cols {
                cells.push(match c {
                    Col::Path(p, t) => cell(jsonpath(o, p), t),
                    Col::Builtin(f) => f(o),
                });
            }
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => partial_metadata(o),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_filters() {
        let o = json!({"status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]},
                       "spec": {"items": [1, 2]}});
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![json!("True")]
        );
        assert_eq!(jsonpath(&o, "{.spec.items[*]}"), vec![json!(1), json!(2)]);
        assert_eq!(jsonpath(&o, ".spec.items[-1]"), vec![json!(2)]);
        assert!(jsonpath(&o, ".spec.missing.deeper").is_empty());
        assert_eq!(jsonpath(&o, ".status.conditions[0]['type']"), vec![json!("Synced")]);
    }
}
