//! Unknown-field detection for built-in kinds (fieldValidation Strict/Warn),
//! done by decoding into the k8s-openapi types and seeing which fields did
//! not survive the round trip (no I/O).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn roundtrip<T: DeserializeOwned + Serialize>(obj: &Value) -> Option<Value> {
    let typed: T = serde_json::from_value(obj.clone()).ok()?;
    serde_json::to_value(typed).ok()
}

fn lost_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => lost_fields(v, ov, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (idx, (iv, ov)) in i.iter().zip(o.iter()).enumerate() {
                lost_fields(iv, ov, &format!("{path}[{idx}]"), out);
            }
        }
        _ => {}
    }
}

/// Paths of fields the built-in type does not declare. `None` when the kind
/// is not modelled here or the object does not decode (then the emulator stays
/// lenient rather than rejecting something a real server might accept).
pub fn unknown_fields(group: &str, kind: &str, obj: &Value) -> Option<Vec<String>> {
    use k8s_openapi::api::{apps, coordination, core, policy, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    let out = match (group, kind) {
        ("", "Namespace") => roundtrip::<core::v1::Namespace>(obj),
        ("", "Secret") => roundtrip::<core::v1::Secret>(obj),
        ("", "ConfigMap") => roundtrip::<core::v1::ConfigMap>(obj),
        ("", "ServiceAccount") => roundtrip::<core::v1::ServiceAccount>(obj),
        ("", "Service") => roundtrip::<core::v1::Service>(obj),
        ("", "Pod") => roundtrip::<core::v1::Pod>(obj),
        ("", "Event") => roundtrip::<core::v1::Event>(obj),
        ("coordination.k8s.io", "Lease") => roundtrip::<coordination::v1::Lease>(obj),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::v1::Role>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::v1::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::v1::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => roundtrip::<rbac::v1::ClusterRoleBinding>(obj),
        ("apps", "Deployment") => roundtrip::<apps::v1::Deployment>(obj),
        ("policy", "PodDisruptionBudget") => roundtrip::<policy::v1::PodDisruptionBudget>(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => roundtrip::<apiext::CustomResourceDefinition>(obj),
        _ => None,
    }?;
    let mut lost = Vec::new();
    lost_fields(obj, &out, "", &mut lost);
    Some(lost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_typos() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
              "spec": {"serviceAcountName": "x", "containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always", "resources": {"limits": {"cpu": "1"}}}]}}}});
        assert_eq!(
            unknown_fields("apps", "Deployment", &d),
            Some(vec!["spec.template.spec.serviceAcountName".to_string()])
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}, "dta": 1});
        assert_eq!(unknown_fields("", "ConfigMap", &cm), Some(vec!["dta".to_string()]));
        assert_eq!(unknown_fields("", "Unknown", &cm), None);
    }
}
