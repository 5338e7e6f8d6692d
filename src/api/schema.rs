//! Hand-written schema fragments for fields whose admission rules the derive cannot
//! express: Go durations, image references, list-maps keyed by name. Pure.

use schemars::{Schema, SchemaGenerator, json_schema};

use super::duration::DURATION_PATTERN;
use super::image_ref::IMAGE_REFERENCE_PATTERN;

pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32})
}

pub fn image_reference(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": IMAGE_REFERENCE_PATTERN, "maxLength": 512})
}

/// A DNS-1123 label, as service names become Kubernetes object names on the instance.
pub fn dns_label(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63})
}

/// Marks an array as a list-map keyed by `name`: duplicate names are rejected at
/// admission and server-side apply merges entries by name.
pub fn keyed_by_name(schema: &mut Schema) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["name"]));
}

/// Marks an array of strings as a set.
pub fn set(schema: &mut Schema) {
    schema.insert("x-kubernetes-list-type".into(), "set".into());
}

/// A cron expression: five space-separated fields (six with seconds first) or a
/// macro such as `@daily`. The
/// operator parses the fields (`crate::cron`) and names a bad one in the class's
/// condition; admission checks only the shape.
pub fn cron(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[^\s]+(\s+[^\s]+){4,5})$",
        "maxLength": 128,
    })
}
