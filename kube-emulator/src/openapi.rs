//! `/openapi/v2` and `/openapi/v3` documents generated from the discovery
//! table: enough for kubectl's field-validation probe, patch-type choice and
//! `kubectl explain` on custom resources (no I/O).

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceDef};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn schema_name(def: &ResourceDef) -> String {
    let group: Vec<&str> = if def.group.is_empty() {
        vec!["core"]
    } else {
        def.group.split('.').rev().collect()
    };
    format!("{}.{}.{}", group.join("."), def.version, def.kind)
}

fn gvk(def: &ResourceDef) -> Value {
    json!({"group": def.group, "version": def.version, "kind": def.kind})
}

fn param(name: &str, location: &str, required: bool) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": {"type": "string", "uniqueItems": true}})
}

fn op(def: &ResourceDef, action: &str, schema_ref: &str, body_types: &[&str], extra: &[Value]) -> Value {
    let mut params: Vec<Value> = extra.to_vec();
    if matches!(action, "post" | "put" | "patch") {
        params.push(param("dryRun", "query", false));
        params.push(param("fieldManager", "query", false));
        params.push(param("fieldValidation", "query", false));
    }
    if action == "patch" {
        params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    if matches!(action, "list" | "watchlist") {
        for p in [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "timeoutSeconds",
            "watch",
            "allowWatchBookmarks",
            "sendInitialEvents",
        ] {
            params.push(param(p, "query", false));
        }
    }
    let reference = json!({"$ref": format!("#/components/schemas/{schema_ref}")});
    let mut o = json!({
        "operationId": format!("{action}{}", def.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(def),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
    });
    if !body_types.is_empty() {
        let mut content = Map::new();
        for t in body_types {
            content.insert((*t).to_string(), json!({"schema": {"type": "object"}}));
        }
        o["requestBody"] = json!({"content": content, "required": true});
    }
    o
}

fn object_schema(def: &ResourceDef) -> Value {
    let mut s = def
        .crd
        .as_ref()
        .and_then(|c| c.schema.clone())
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if !s.is_object() {
        s = json!({"type": "object"});
    }
    if s.get("description").is_none() {
        s["description"] = json!(format!("{} is served by kube-emulator.", def.kind));
    }
    if s.get("properties").is_none() {
        s["properties"] = json!({});
    }
    let props = s["properties"].as_object_mut().expect("properties");
    props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
    props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
    props.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    s["x-kubernetes-group-version-kind"] = json!([gvk(def)]);
    s
}

/// One group-version document.
pub fn v3_document(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs = reg.resources_in(group, version);
    if defs.is_empty() {
        return None;
    }
    let prefix = format!("/{}", gv_path(group, version));
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for def in defs {
        let sname = schema_name(&def);
        schemas.insert(sname.clone(), object_schema(&def));
        let list_name = format!("{sname}List");
        schemas.insert(
            list_name.clone(),
            json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{sname}")}}},
                   "x-kubernetes-group-version-kind": [{"group": def.group, "version": def.version, "kind": def.list_kind}]}),
        );
        let base = if def.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", def.plural)
        } else {
            format!("{prefix}/{}", def.plural)
        };
        let mut path_params = vec![];
        if def.namespaced {
            path_params.push(param("namespace", "path", true));
        }
        // Strategic merge is never advertised: kubectl then computes it for
        // built-ins from its compiled-in Go types and uses merge patches for
        // custom resources, as upstream requires.
        let patch_types = [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ];
        paths.insert(
            base.clone(),
            json!({
                "get": op(&def, "list", &list_name, &[], &path_params),
                "post": op(&def, "post", &sname, &["*/*"], &path_params),
                "delete": op(&def, "deletecollection", &sname, &[], &path_params),
            }),
        );
        let mut item_params = path_params.clone();
        item_params.push(param("name", "path", true));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op(&def, "get", &sname, &[], &item_params),
                "put": op(&def, "put", &sname, &["*/*"], &item_params),
                "patch": op(&def, "patch", &sname, &patch_types, &item_params),
                "delete": op(&def, "delete", &sname, &[], &item_params),
            }),
        );
        if def.has_status {
            paths.insert(
                format!("{base}/{{name}}/status"),
                json!({
                    "get": op(&def, "get", &sname, &[], &item_params),
                    "put": op(&def, "put", &sname, &["*/*"], &item_params),
                    "patch": op(&def, "patch", &sname, &patch_types, &item_params),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn hash_of(v: &Value) -> String {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: every group-version with a content hash so caches refresh.
pub fn v3_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.groups() {
        for v in versions {
            if let Some(doc) = v3_document(reg, &group, &v) {
                let p = gv_path(&group, &v);
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash_of(&doc))}),
                );
            }
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v2` as JSON, for clients that ask for JSON.
pub fn v2_json(reg: &Registry) -> Value {
    let mut defs = Map::new();
    for def in reg.all() {
        defs.insert(schema_name(def), object_schema(def));
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {}, "definitions": defs})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_ops_carry_field_validation() {
        let reg = Registry::with_builtins();
        let doc = v3_document(&reg, "", "v1").unwrap();
        let p = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        assert!(
            p["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "fieldValidation")
        );
        assert!(
            p["requestBody"]["content"]
                .get("application/strategic-merge-patch+json")
                .is_none()
        );
        let idx = v3_index(&reg);
        assert!(
            idx["paths"]["apis/coordination.k8s.io/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .contains("hash=")
        );
    }
}
