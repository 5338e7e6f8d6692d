//! Structural-schema rules a v1 CRD must meet before the apiserver accepts it
//! (the subset that generated schemas typically break), with upstream paths
//! such as `spec.versions[0].schema.openAPIV3Schema.properties[spec].type` (no I/O).

use serde_json::Value;

use crate::error::Cause;

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];

fn forbidden(field: String, msg: &str) -> Cause {
    Cause::new("FieldValueForbidden", format!("Forbidden: {msg}"), field)
}

fn walk(s: &Value, path: &str, in_junctor: bool, int_or_string_branch: bool, causes: &mut Vec<Cause>) {
    let Some(m) = s.as_object() else { return };
    let int_or_string = m.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    let preserve = m.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    match m.get("type") {
        // `anyOf: [{type: integer}, {type: string}]` under int-or-string is the one allowed exception.
        Some(Value::String(_)) if in_junctor && !int_or_string_branch => {
            causes.push(forbidden(format!("{path}.type"), "must be empty to be structural"))
        }
        Some(Value::String(_)) => {}
        Some(other) => causes.push(Cause::new(
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: must be a string",
                crate::schema::render_value(other)
            ),
            format!("{path}.type"),
        )),
        None if !in_junctor && !int_or_string && !preserve => causes.push(Cause::new(
            "FieldValueRequired",
            "Required value: must not be empty for specified object fields",
            format!("{path}.type"),
        )),
        None => {}
    }
    if !in_junctor && let Some(d) = m.get("default") {
        // Upstream validates (and prunes) defaults when the CRD is written, so a
        // default that could never pass validation is rejected there, not later.
        let mut pruned = d.clone();
        let mut unknown = Vec::new();
        crate::schema::prune(s, &mut pruned, "", false, &mut unknown);
        if !unknown.is_empty() {
            causes.push(Cause::new(
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: must not have unknown fields",
                    crate::schema::render_value(d)
                ),
                format!("{path}.default"),
            ));
        }
        // Defaults are themselves defaulted before validation, as upstream does.
        crate::schema::apply_defaults(s, &mut pruned);
        let mut errs = Vec::new();
        crate::schema::validate(s, &pruned, &format!("{path}.default"), &mut errs);
        causes.extend(errs);
    }
    if in_junctor {
        for f in [
            "default",
            "nullable",
            "additionalProperties",
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-embedded-resource",
            "x-kubernetes-int-or-string",
        ] {
            if m.contains_key(f) {
                causes.push(forbidden(format!("{path}.{f}"), "must be undefined to be structural"));
            }
        }
    }
    if m.get("properties")
        .is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty()))
        && matches!(
            m.get("additionalProperties"),
            Some(Value::Object(_)) | Some(Value::Bool(true))
        )
    {
        causes.push(forbidden(
            format!("{path}.additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(v, &format!("{path}.properties[{k}]"), in_junctor, false, causes);
        }
    }
    if let Some(a @ Value::Object(_)) = m.get("additionalProperties") {
        walk(a, &format!("{path}.additionalProperties"), in_junctor, false, causes);
    }
    if let Some(items) = m.get("items") {
        walk(items, &format!("{path}.items"), in_junctor, false, causes);
    }
    for j in JUNCTORS {
        match m.get(j) {
            Some(Value::Array(subs)) => {
                for (i, sub) in subs.iter().enumerate() {
                    walk(
                        sub,
                        &format!("{path}.{j}[{i}]"),
                        true,
                        int_or_string || int_or_string_branch,
                        causes,
                    );
                }
            }
            Some(sub @ Value::Object(_)) => walk(
                sub,
                &format!("{path}.{j}"),
                true,
                int_or_string || int_or_string_branch,
                causes,
            ),
            _ => {}
        }
    }
}

/// Violations in every version's schema of a CRD.
pub fn crd_errors(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, v) in crd["spec"]["versions"].as_array().into_iter().flatten().enumerate() {
        let base = format!("spec.versions[{i}].schema.openAPIV3Schema");
        let schema = &v["schema"]["openAPIV3Schema"];
        if schema.is_null() {
            causes.push(Cause::new(
                "FieldValueRequired",
                "Required value: schemas are required",
                base,
            ));
            continue;
        }
        if schema["type"] != "object" {
            causes.push(Cause::new(
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: must be object at the root",
                    crate::schema::render_value(&schema["type"])
                ),
                format!("{base}.type"),
            ));
        }
        walk(schema, &base, false, false, &mut causes);
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(schema: Value) -> Value {
        json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}})
    }

    #[test]
    fn accepts_structural_and_rejects_common_mistakes() {
        let good = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "one": {"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}], "properties": {"a": {"type": "string"}, "b": {"type": "string"}}},
                "m": {"type": "object", "additionalProperties": {"type": "string"}}
            }}
        }});
        let errs = crd_errors(&crd(good));
        assert!(errs.is_empty(), "{errs:?}");
        let typed_junctor =
            json!({"type": "object", "properties": {"a": {"type": "object", "oneOf": [{"type": "object"}]}}});
        assert_eq!(crd_errors(&crd(typed_junctor)).len(), 1);
        let bad =
            json!({"type": "object", "properties": {"spec": {"properties": {"x": {"type": ["string", "null"]}}}}});
        let fields: Vec<String> = crd_errors(&crd(bad)).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].type",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[x].type",
            ]
        );
    }
}
