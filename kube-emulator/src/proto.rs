//! Decoding of the Kubernetes protobuf envelope for the few built-in kinds
//! kubectl's imperative commands send as protobuf (`create namespace`,
//! `create configmap`, `create secret`, service accounts, RBAC roles and
//! bindings, DeleteOptions).
//! Anything else is answered 415 by the caller (no I/O).

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Time,
    MapStr,
    MapBytes,
    Msg(&'static [F]),
}

/// One field of a message: number, JSON name, kind, repeated.
#[derive(Clone, Copy)]
struct F(u64, &'static str, Kind, bool);

const OWNER_REF: &[F] = &[
    F(1, "kind", Kind::Str, false),
    F(3, "name", Kind::Str, false),
    F(4, "uid", Kind::Str, false),
    F(5, "apiVersion", Kind::Str, false),
    F(6, "controller", Kind::Bool, false),
    F(7, "blockOwnerDeletion", Kind::Bool, false),
];

const OBJECT_META: &[F] = &[
    F(1, "name", Kind::Str, false),
    F(2, "generateName", Kind::Str, false),
    F(3, "namespace", Kind::Str, false),
    F(5, "uid", Kind::Str, false),
    F(6, "resourceVersion", Kind::Str, false),
    F(7, "generation", Kind::Int, false),
    F(8, "creationTimestamp", Kind::Time, false),
    F(11, "labels", Kind::MapStr, false),
    F(12, "annotations", Kind::MapStr, false),
    F(13, "ownerReferences", Kind::Msg(OWNER_REF), true),
    F(14, "finalizers", Kind::Str, true),
];

const CONFIG_MAP: &[F] = &[
    F(1, "metadata", Kind::Msg(OBJECT_META), false),
    F(2, "data", Kind::MapStr, false),
    F(3, "binaryData", Kind::MapBytes, false),
    F(4, "immutable", Kind::Bool, false),
];

const SECRET: &[F] = &[
    F(1, "metadata", Kind::Msg(OBJECT_META), false),
    F(2, "data", Kind::MapBytes, false),
    F(3, "type", Kind::Str, false),
    F(4, "stringData", Kind::MapStr, false),
    F(5, "immutable", Kind::Bool, false),
];

const NAMESPACE_SPEC: &[F] = &[F(1, "finalizers", Kind::Str, true)];
const NAMESPACE: &[F] = &[
    F(1, "metadata", Kind::Msg(OBJECT_META), false),
    F(2, "spec", Kind::Msg(NAMESPACE_SPEC), false),
];

const LOCAL_REF: &[F] = &[F(1, "name", Kind::Str, false)];
const OBJECT_REF: &[F] = &[
    F(1, "kind", Kind::Str, false),
    F(2, "namespace", Kind::Str, false),
    F(3, "name", Kind::Str, false),
    F(4, "uid", Kind::Str, false),
    F(5, "apiVersion", Kind::Str, false),
];
const SERVICE_ACCOUNT: &[F] = &[
    F(1, "metadata", Kind::Msg(OBJECT_META), false),
    F(2, "secrets", Kind::Msg(OBJECT_REF), true),
    F(3, "imagePullSecrets", Kind::Msg(LOCAL_REF), true),
    F(4, "automountServiceAccountToken", Kind::Bool, false),
];

const POLICY_RULE: &[F] = &[
    F(1, "verbs", Kind::Str, true),
    F(2, "apiGroups", Kind::Str, true),
    F(3, "resources", Kind::Str, true),
    F(4, "resourceNames", Kind::Str, true),
    F(5, "nonResourceURLs", Kind::Str, true),
];
const ROLE: &[F] = &[
    F(1, "metadata", Kind::Msg(OBJECT_META), false),
    F(2, "rules", Kind::Msg(POLICY_RULE), true),
];
const SUBJECT: &[F] = &[
    F(1, "kind", Kind::Str, false),
    F(2, "apiGroup", Kind::Str, false),
    F(3, "name", Kind::Str, false),
    F(4, "namespace", Kind::Str, false),
];
const ROLE_REF: &[F] = &[
    F(1, "apiGroup", Kind::Str, false),
    F(2, "kind", Kind::Str, false),
    F(3, "name", Kind::Str, false),
];
const ROLE_BINDING: &[F] = &[
    F(1, "metadata", Kind::Msg(OBJECT_META), false),
    F(2, "subjects", Kind::Msg(SUBJECT), true),
    F(3, "roleRef", Kind::Msg(ROLE_REF), false),
];

const PRECONDITIONS: &[F] = &[F(1, "uid", Kind::Str, false), F(2, "resourceVersion", Kind::Str, false)];
const DELETE_OPTIONS: &[F] = &[
    F(1, "gracePeriodSeconds", Kind::Int, false),
    F(2, "preconditions", Kind::Msg(PRECONDITIONS), false),
    F(3, "orphanDependents", Kind::Bool, false),
    F(4, "propagationPolicy", Kind::Str, false),
    F(5, "dryRun", Kind::Str, true),
];

const TYPE_META: &[F] = &[F(1, "apiVersion", Kind::Str, false), F(2, "kind", Kind::Str, false)];

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.varint()? as usize;
        let s = self.b.get(self.i..self.i + n)?;
        self.i += n;
        Some(s)
    }

    /// Skips a field of the given wire type.
    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => {
                self.i += 8;
                Some(())
            }
            2 => self.bytes().map(|_| ()),
            5 => {
                self.i += 4;
                Some(())
            }
            _ => None,
        }
    }

    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn map_entry(b: &[u8], bytes_value: bool) -> Option<(String, Value)> {
    let mut r = Reader { b, i: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => k = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (2, 2) => {
                let raw = r.bytes()?;
                v = if bytes_value {
                    json!(base64(raw))
                } else {
                    json!(String::from_utf8_lossy(raw))
                };
            }
            (_, w) => r.skip(w)?,
        }
    }
    Some((k, v))
}

fn time(b: &[u8]) -> Option<Value> {
    let mut r = Reader { b, i: 0 };
    let mut secs = 0i64;
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 0) => secs = r.varint()? as i64,
            (_, w) => r.skip(w)?,
        }
    }
    let ts = jiff::Timestamp::from_second(secs).ok()?;
    Some(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn message(b: &[u8], fields: &[F]) -> Option<Value> {
    let mut r = Reader { b, i: 0 };
    let mut out = Map::new();
    while !r.done() {
        let tag = r.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        let Some(F(_, name, kind, repeated)) = fields.iter().find(|f| f.0 == num).copied() else {
            r.skip(wire)?;
            continue;
        };
        let value = match (kind, wire) {
            (Kind::Str, 2) => json!(String::from_utf8_lossy(r.bytes()?)),
            (Kind::Int, 0) => json!(r.varint()? as i64),
            (Kind::Bool, 0) => json!(r.varint()? != 0),
            (Kind::Time, 2) => time(r.bytes()?)?,
            (Kind::Msg(inner), 2) => message(r.bytes()?, inner)?,
            (Kind::MapStr | Kind::MapBytes, 2) => {
                let (k, v) = map_entry(r.bytes()?, matches!(kind, Kind::MapBytes))?;
                let m = out.entry(name.to_string()).or_insert_with(|| json!({}));
                m[k] = v;
                continue;
            }
            (_, w) => {
                r.skip(w)?;
                continue;
            }
        };
        if repeated {
            let a = out.entry(name.to_string()).or_insert_with(|| json!([]));
            if let Some(arr) = a.as_array_mut() {
                arr.push(value);
            }
        } else {
            out.insert(name.to_string(), value);
        }
    }
    Some(Value::Object(out))
}

pub fn is_protobuf(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// Decodes an enveloped object; `None` when the kind is not one we know.
pub fn decode(body: &[u8]) -> Option<Value> {
    let inner = body.strip_prefix(MAGIC)?;
    let mut r = Reader { b: inner, i: 0 };
    let mut type_meta = json!({});
    let mut raw: &[u8] = &[];
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => type_meta = message(r.bytes()?, TYPE_META)?,
            (2, 2) => raw = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    let api_version = type_meta["apiVersion"].as_str().unwrap_or("").to_string();
    let kind = type_meta["kind"].as_str().unwrap_or("").to_string();
    let fields = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        (_, "DeleteOptions") => DELETE_OPTIONS,
        _ => return None,
    };
    let mut obj = message(raw, fields)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn configmap_envelope() {
        let meta = [
            field(1, b"c1"),
            field(3, b"ns"),
            field(11, &[field(1, b"app"), field(2, b"x")].concat()),
        ]
        .concat();
        let cm = [field(1, &meta), field(2, &[field(1, b"a"), field(2, b"b")].concat())].concat();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let mut body = MAGIC.to_vec();
        body.extend([field(1, &tm), field(2, &cm)].concat());
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c1", "namespace": "ns", "labels": {"app": "x"}}, "data": {"a": "b"}})
        );
        assert_eq!(base64(b"q"), "cQ==");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
