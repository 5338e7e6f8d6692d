//! Validation the apiserver applies to every object's metadata and to the
//! built-in kinds a chart or the operator writes, with upstream field paths
//! and messages (no I/O).

use serde_json::Value;

use crate::error::Cause;

fn invalid(field: &str, value: &Value, detail: &str) -> Cause {
    Cause::new(
        "FieldValueInvalid",
        format!("Invalid value: {}: {detail}", crate::schema::render_value(value)),
        field,
    )
}

fn required(field: &str, detail: &str) -> Cause {
    let msg = if detail.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {detail}")
    };
    Cause::new("FieldValueRequired", msg, field)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label or annotation key: optional DNS-subdomain prefix, `/`, name part.
pub fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => crate::meta::is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(key),
    }
}

fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_qualified_name_part(v)
}

const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";

/// ObjectMeta rules every object is held to.
pub fn validate_metadata(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &obj["metadata"];
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                causes.push(invalid(
                    "metadata.labels",
                    &Value::String(k.clone()),
                    QUALIFIED_NAME_MSG,
                ));
            }
            match v.as_str() {
                Some(s) if is_label_value(s) => {}
                Some(s) if s.len() > 63 => {
                    causes.push(invalid("metadata.labels", v, "must be no more than 63 characters"))
                }
                _ => causes.push(invalid("metadata.labels", v, LABEL_VALUE_MSG)),
            }
        }
    } else if !meta["labels"].is_null() {
        causes.push(invalid("metadata.labels", &meta["labels"], "must be a map of strings"));
    }
    if let Some(ann) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in ann {
            if !is_qualified_name(k) {
                causes.push(invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    QUALIFIED_NAME_MSG,
                ));
            }
            if !v.is_string() {
                causes.push(invalid("metadata.annotations", v, "annotation values must be strings"));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "Too long: must have at most 262144 bytes",
                "metadata.annotations",
            ));
        }
    }
    if let Some(refs) = meta["ownerReferences"].as_array() {
        for (i, r) in refs.iter().enumerate() {
            for f in ["apiVersion", "kind", "name", "uid"] {
                if r[f].as_str().unwrap_or("").is_empty() {
                    causes.push(required(&format!("metadata.ownerReferences[{i}].{f}"), ""));
                }
            }
        }
    }
    causes
}

fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let ml_ok = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expr_ok = selector["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let have = labels.get(key).and_then(Value::as_str);
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap_or("") {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
    });
    ml_ok && expr_ok
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                let p = format!("{path}.containers[{i}]");
                match c["name"].as_str() {
                    None | Some("") => causes.push(required(&format!("{p}.name"), "")),
                    Some(n) if !crate::meta::is_dns_label(n) => causes.push(invalid(
                        &format!("{p}.name"),
                        &c["name"],
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                    )),
                    _ => {}
                }
                if c["image"].as_str().unwrap_or("").trim().is_empty() {
                    causes.push(required(&format!("{p}.image"), ""));
                }
            }
        }
        _ => causes.push(required(&format!("{path}.containers"), "")),
    }
}

/// events.k8s.io/v1 requires what the modern Event API is about; `obj` is the
/// stored (core/v1) form, causes name the events.k8s.io fields.
pub fn validate_events_v1(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (core, field) in [
        ("eventTime", "eventTime"),
        ("reportingComponent", "reportingController"),
        ("reportingInstance", "reportingInstance"),
        ("action", "action"),
        ("reason", "reason"),
    ] {
        if obj[core].as_str().unwrap_or("").is_empty() {
            causes.push(required(field, ""));
        }
    }
    match obj["type"].as_str() {
        Some("Normal" | "Warning") => {}
        _ => causes.push(Cause::new(
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: has invalid value: must be Normal or Warning",
                crate::schema::render_value(&obj["type"])
            ),
            "type",
        )),
    }
    if obj["message"].as_str().is_some_and(|n| n.len() > 1024) {
        causes.push(Cause::new(
            "FieldValueTooLong",
            "Too long: may not be more than 1024 bytes",
            "note",
        ));
    }
    causes
}

/// Kind-specific rules for the built-ins a chart or the operator writes.
pub fn validate_builtin(group: &str, kind: &str, new: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    match (group, kind) {
        ("apps", "Deployment") => {
            let spec = &new["spec"];
            if spec["selector"].is_null() {
                causes.push(required("spec.selector", ""));
            } else if !selector_matches(&spec["selector"], &spec["template"]["metadata"]["labels"]) {
                causes.push(invalid(
                    "spec.template.metadata.labels",
                    &spec["template"]["metadata"]["labels"],
                    "`selector` does not match template `labels`",
                ));
            }
            if let Some(r) = spec["replicas"].as_i64()
                && r < 0
            {
                causes.push(invalid(
                    "spec.replicas",
                    &spec["replicas"],
                    "must be greater than or equal to 0",
                ));
            }
            validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            if let Some(o) = old
                && o["spec"]["selector"] != spec["selector"]
            {
                causes.push(invalid("spec.selector", &spec["selector"], "field is immutable"));
            }
        }
        ("", "Pod") => validate_pod_spec(&new["spec"], "spec", &mut causes),
        ("", "Service") => {
            let spec = &new["spec"];
            let t = spec["type"].as_str().unwrap_or("ClusterIP");
            let headless = spec["clusterIP"] == "None";
            match spec["ports"].as_array() {
                Some(ps) if !ps.is_empty() => {
                    for (i, p) in ps.iter().enumerate() {
                        let port = p["port"].as_i64().unwrap_or(0);
                        if !(1..=65535).contains(&port) {
                            causes.push(invalid(
                                &format!("spec.ports[{i}].port"),
                                &p["port"],
                                "must be between 1 and 65535, inclusive",
                            ));
                        }
                        if ps.len() > 1 && p["name"].as_str().unwrap_or("").is_empty() {
                            causes.push(required(&format!("spec.ports[{i}].name"), ""));
                        }
                    }
                }
                _ if t == "ExternalName" || headless => {}
                _ => causes.push(required("spec.ports", "")),
            }
        }
        ("policy", "PodDisruptionBudget")
            if !new["spec"]["minAvailable"].is_null() && !new["spec"]["maxUnavailable"].is_null() =>
        {
            causes.push(invalid(
                "spec",
                &new["spec"],
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let rr = &new["roleRef"];
            if rr["kind"].as_str().unwrap_or("").is_empty() {
                causes.push(required("roleRef.kind", ""));
            }
            if rr["name"].as_str().unwrap_or("").is_empty() {
                causes.push(required("roleRef.name", ""));
            }
            if let Some(o) = old
                && o["roleRef"] != *rr
            {
                causes.push(invalid("roleRef", rr, "cannot change roleRef"));
            }
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            for (i, r) in new["rules"].as_array().into_iter().flatten().enumerate() {
                if r["verbs"].as_array().is_none_or(|v| v.is_empty()) {
                    causes.push(required(
                        &format!("rules[{i}].verbs"),
                        "verbs must contain at least one value",
                    ));
                }
            }
        }
        ("", "ConfigMap" | "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                for k in new[field].as_object().into_iter().flatten().map(|(k, _)| k) {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
                    if !ok {
                        causes.push(invalid(
                            field,
                            &Value::String(k.clone()),
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                }
            }
            if let Some(o) = old
                && o["immutable"] == Value::Bool(true)
                && (o["data"] != new["data"] || o["binaryData"] != new["binaryData"])
            {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "Forbidden: field is immutable when `immutable` is set",
                    "data",
                ));
            }
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels() {
        let ok = json!({"metadata": {"labels": {"app.kubernetes.io/name": "x", "empty": ""}}});
        assert!(validate_metadata(&ok).is_empty());
        let long = "a".repeat(64);
        let bad = json!({"metadata": {"labels": {"bad key!": "x", "k": long, "v": "has space"}}});
        assert_eq!(validate_metadata(&bad).len(), 3);
    }

    #[test]
    fn deployments() {
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c"}]}}}});
        let fields: Vec<String> = validate_builtin("apps", "Deployment", &d, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].image"
            ]
        );
    }
}
