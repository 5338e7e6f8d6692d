//! Structural OpenAPI v3 schemas of custom resources: pruning, defaulting,
//! validation with upstream-style field causes, list types for apply (no I/O).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::error::Cause;

const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How upstream `field.Invalid` prints a value.
pub fn render_value(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn child_schema<'a>(schema: &'a Value, field: &str) -> Option<&'a Value> {
    if let Some(s) = schema.get("properties").and_then(|p| p.get(field)) {
        return Some(s);
    }
    match schema.get("additionalProperties") {
        Some(s @ Value::Object(_)) => Some(s),
        _ => None,
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Removes fields the schema does not declare; returns their paths (for Strict/Warn).
pub fn prune(schema: &Value, value: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let embedded = root || schema["x-kubernetes-embedded-resource"].as_bool() == Some(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if embedded && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if embedded && k == "metadata" {
                    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                        let mkeys: Vec<String> = meta.keys().cloned().collect();
                        for mk in mkeys {
                            if !OBJECT_META_FIELDS.contains(&mk.as_str()) {
                                meta.remove(&mk);
                                unknown.push(join(&join(path, "metadata"), &mk));
                            }
                        }
                    }
                    continue;
                }
                let has_props = schema.get("properties").is_some_and(Value::is_object);
                let has_addl = matches!(schema.get("additionalProperties"), Some(Value::Object(_)))
                    || schema.get("additionalProperties") == Some(&Value::Bool(true));
                match child_schema(schema, &k) {
                    Some(cs) => {
                        let cs = cs.clone();
                        if let Some(child) = map.get_mut(&k) {
                            prune(&cs, child, &join(path, &k), false, unknown);
                        }
                    }
                    None => {
                        if preserves_unknown(schema) || has_addl || (!has_props && schema.get("type").is_none()) {
                            continue;
                        }
                        map.remove(&k);
                        unknown.push(join(path, &k));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(is, item, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Applies `default`s of absent properties (and nulls of non-nullable defaulted fields).
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (k, ps) in props {
                    let absent = match map.get(k) {
                        None => true,
                        Some(Value::Null) => ps["nullable"].as_bool() != Some(true),
                        _ => false,
                    };
                    if absent && let Some(d) = ps.get("default") {
                        map.insert(k.clone(), d.clone());
                    }
                }
                for (k, ps) in props {
                    if let Some(child) = map.get_mut(k) {
                        apply_defaults(ps, child);
                    }
                }
            }
            if let Some(addl @ Value::Object(_)) = schema.get("additionalProperties") {
                for (_, child) in map.iter_mut() {
                    apply_defaults(addl, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for item in items {
                    apply_defaults(is, item);
                }
            }
        }
        _ => {}
    }
}

fn regex_cache(pattern: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<std::collections::HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().expect("regex cache");
    c.entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok())
        .clone()
}

fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok(),
        "duration" => parse_go_duration(s).is_some(),
        "uuid" => {
            let r = regex_cache("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$");
            r.is_some_and(|r| r.is_match(s))
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s
            .split_once('/')
            .is_some_and(|(ip, bits)| ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok()),
        "hostname" => {
            s.len() <= 255
                && s.split('.')
                    .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        }
        "email" => s.split_once('@').is_some_and(|(a, b)| !a.is_empty() && b.contains('.')),
        "byte" => {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
                && s.len().is_multiple_of(4)
        }
        _ => true,
    }
}

/// Go `time.ParseDuration` (e.g. `1h30m`, `90s`, `1.5h`), in seconds.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let mut rest = s.strip_prefix('-').or_else(|| s.strip_prefix('+')).unwrap_or(s);
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * mult;
    }
    Some(total)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Validates `value` against a structural schema, appending upstream-style causes.
pub fn validate(schema: &Value, value: &Value, path: &str, errs: &mut Vec<Cause>) {
    let disp = if path.is_empty() { "<root>" } else { path };
    let invalid = |errs: &mut Vec<Cause>, detail: String| {
        errs.push(Cause::new(
            "FieldValueInvalid",
            format!("Invalid value: {}: {detail}", render_value(value)),
            path,
        ));
    };
    if value.is_null() {
        if schema["nullable"].as_bool() == Some(true) || schema.get("type").is_none() {
            return;
        }
        errs.push(Cause::new(
            "FieldValueTypeInvalid",
            format!(
                "Invalid value: \"null\": {disp} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            ),
            path,
        ));
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(value);
        let ok = t == actual || (t == "number" && actual == "integer");
        if !ok {
            errs.push(Cause::new(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: {}: {disp} in body must be of type {t}: \"{actual}\"",
                    render_value(value)
                ),
                path,
            ));
            return;
        }
    } else if int_or_string && !(value.is_string() || type_name(value) == "integer") {
        errs.push(Cause::new(
            "FieldValueTypeInvalid",
            format!(
                "Invalid value: {}: {disp} in body must be of type integer or string: \"{}\"",
                render_value(value),
                type_name(value)
            ),
            path,
        ));
        return;
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(value)
    {
        let allowed: Vec<String> = e.iter().map(|v| v.to_string()).collect();
        errs.push(Cause::new(
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                render_value(value),
                allowed.join(", ")
            ),
            path,
        ));
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                errs.push(Cause::new(
                    "FieldValueTooLong",
                    format!("Too long: may not be more than {max} bytes"),
                    path,
                ));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                invalid(errs, format!("{disp} in body should be at least {min} chars long"));
            }
            if let Some(p) = schema["pattern"].as_str()
                && let Some(re) = regex_cache(p)
                && !re.is_match(s)
            {
                invalid(errs, format!("{disp} in body should match '{p}'"));
            }
            if let Some(f) = schema["format"].as_str()
                && !format_ok(f, s)
            {
                invalid(errs, format!("{disp} in body must be of type {f}: {value}"));
            }
        }
        Value::Number(_) => {
            let x = num(value).unwrap_or(0.0);
            if let Some(max) = num(&schema["maximum"]) {
                let excl = schema["exclusiveMaximum"].as_bool() == Some(true);
                if (excl && x >= max) || (!excl && x > max) {
                    let op = if excl { "less than" } else { "less than or equal to" };
                    invalid(errs, format!("{disp} in body should be {op} {}", schema["maximum"]));
                }
            }
            if let Some(min) = num(&schema["minimum"]) {
                let excl = schema["exclusiveMinimum"].as_bool() == Some(true);
                if (excl && x <= min) || (!excl && x < min) {
                    let op = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    invalid(errs, format!("{disp} in body should be {op} {}", schema["minimum"]));
                }
            }
            if let Some(m) = num(&schema["multipleOf"])
                && m != 0.0
                && (x / m).fract() != 0.0
            {
                invalid(
                    errs,
                    format!("{disp} in body should be a multiple of {}", schema["multipleOf"]),
                );
            }
            match schema["format"].as_str() {
                Some("int32") if !(i32::MIN as f64..=i32::MAX as f64).contains(&x) => {
                    invalid(errs, format!("{disp} in body must be of type int32: {value}"));
                }
                _ => {}
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errs.push(Cause::new(
                    "FieldValueTooMany",
                    format!("Too many: {}: must have at most {max} items", items.len()),
                    path,
                ));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                invalid(errs, format!("{disp} in body should have at least {min} items"));
            }
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(is, item, &format!("{path}[{i}]"), errs);
                }
            }
            check_list_uniqueness(schema, items, path, errs);
        }
        Value::Object(map) => {
            if let Some(req) = schema["required"].as_array() {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errs.push(Cause::new(
                            "FieldValueRequired",
                            "Required value".to_string(),
                            join(path, r),
                        ));
                    }
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && map.len() as u64 > max
            {
                errs.push(Cause::new(
                    "FieldValueTooMany",
                    format!("Too many: {}: must have at most {max} items", map.len()),
                    path,
                ));
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && (map.len() as u64) < min
            {
                invalid(errs, format!("{disp} in body should have at least {min} properties"));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                if path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind") {
                    continue;
                }
                let child_path = if props.is_some_and(|p| p.contains_key(k))
                    || !matches!(schema.get("additionalProperties"), Some(Value::Object(_)))
                {
                    join(path, k)
                } else {
                    format!("{path}[{k}]")
                };
                if let Some(cs) = child_schema(schema, k) {
                    validate(cs, v, &child_path, errs);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(subs) = schema[key].as_array() {
            let results: Vec<Vec<Cause>> = subs
                .iter()
                .map(|s| {
                    let mut e = Vec::new();
                    // Structural schemas keep only value validations here (often `required`).
                    validate(s, value, path, &mut e);
                    e
                })
                .collect();
            let passing = results.iter().filter(|r| r.is_empty()).count();
            match key {
                "allOf" => errs.extend(results.into_iter().flatten()),
                "anyOf" if passing == 0 && !subs.is_empty() => {
                    invalid(errs, format!("{disp} in body must match at least one schema (anyOf)"))
                }
                "oneOf" if passing != 1 && !subs.is_empty() => {
                    invalid(errs, format!("{disp} in body must match exactly one schema (oneOf)"))
                }
                _ => {}
            }
        }
    }
    if let Some(not) = schema.get("not") {
        let mut e = Vec::new();
        validate(not, value, path, &mut e);
        if e.is_empty() {
            invalid(errs, format!("{disp} in body must not validate the schema (not)"));
        }
    }
}

fn check_list_uniqueness(schema: &Value, items: &[Value], path: &str, errs: &mut Vec<Cause>) {
    match schema["x-kubernetes-list-type"].as_str() {
        Some("map") => {
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<(String, String)> = keys
                    .iter()
                    .map(|k| (k.to_string(), item.get(*k).map(|v| v.to_string()).unwrap_or_default()))
                    .collect();
                if !seen.insert(key.clone()) {
                    let rendered: Vec<String> = key.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    errs.push(Cause::new(
                        "FieldValueDuplicate",
                        format!(
                            "{path}[{i}]: Duplicate value: map[string]interface {{}}{{{}}}",
                            rendered.join(", ")
                        ),
                        format!("{path}[{i}]"),
                    ));
                }
            }
        }
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    errs.push(Cause::new(
                        "FieldValueDuplicate",
                        format!("Duplicate value: {}", render_value(item)),
                        format!("{path}[{i}]"),
                    ));
                }
            }
        }
        _ => {
            if schema["uniqueItems"].as_bool() == Some(true) {
                let mut seen = HashSet::new();
                for item in items {
                    if !seen.insert(item.to_string()) {
                        errs.push(Cause::new(
                            "FieldValueDuplicate",
                            format!("Duplicate value: {}", render_value(item)),
                            path,
                        ));
                    }
                }
            }
        }
    }
}

/// How server-side apply treats a list: atomic (replaced whole), a set, or a map by keys.
#[derive(Debug, Clone, PartialEq)]
pub enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// The schema node at a path of field names (list items are transparent).
pub fn schema_at<'a>(schema: &'a Value, fields: &[String]) -> Option<&'a Value> {
    let mut cur = schema;
    for f in fields {
        if f == "[]" {
            cur = cur.get("items")?;
        } else {
            cur = child_schema(cur, f)?;
        }
    }
    Some(cur)
}

pub fn list_type_from_schema(s: &Value) -> ListType {
    match s["x-kubernetes-list-type"].as_str() {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            s["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|a| a.iter().filter_map(|k| k.as_str().map(String::from)).collect())
                .unwrap_or_default(),
        ),
        _ => ListType::Atomic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "when": {"type": "string", "format": "date-time"},
                "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "port": {"x-kubernetes-int-or-string": true}
            }}
        }})
    }

    #[test]
    fn prune_default_validate() {
        let s = schema();
        let mut v = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a", "junk": 1},
                           "spec": {"size": 0, "extra": true, "free": {"anything": 1}, "name": "ABCDEFG",
                                    "when": "nope", "port": "http",
                                    "items": [{"name": "x"}, {"name": "x"}]}});
        let mut unknown = vec![];
        prune(&s, &mut v, "", true, &mut unknown);
        assert_eq!(unknown, vec!["metadata.junk".to_string(), "spec.extra".to_string()]);
        assert_eq!(v["spec"]["free"]["anything"], json!(1));
        apply_defaults(&s, &mut v);
        assert_eq!(v["spec"]["mode"], json!("a"));
        let mut errs = vec![];
        validate(&s, &v, "", &mut errs);
        let fields: Vec<&str> = errs.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.size"), "{errs:?}");
        assert!(fields.contains(&"spec.name"));
        assert!(fields.contains(&"spec.when"));
        assert!(fields.contains(&"spec.items[1]"));
        assert!(errs.iter().any(|c| c.message.contains("Duplicate value")));
        let mut errs = vec![];
        validate(&s, &json!({"spec": {}}), "", &mut errs);
        assert_eq!(errs[0].message, "Required value");
        assert_eq!(errs[0].field, "spec.size");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_go_duration("bogus"), None);
    }
}
