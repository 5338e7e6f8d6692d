//! The discovery table: built-in resources and those registered from CRDs (no I/O).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// Storage identity of a resource: all versions of a group/resource share objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResKey {
    pub group: String,
    pub plural: String,
}

impl ResKey {
    pub fn new(group: &str, plural: &str) -> Self {
        Self {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

/// How a resource is served at one group-version.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub has_status: bool,
    /// Objects of this resource carry `metadata.generation`.
    pub has_generation: bool,
    /// Present for custom resources.
    pub crd: Option<Arc<CrdVersion>>,
    /// Where objects are stored; differs from group/plural only for the
    /// events.k8s.io view of core events.
    pub storage: ResKey,
}

/// What a CRD version contributes: schema, printer columns.
#[derive(Debug, Clone)]
pub struct CrdVersion {
    pub crd_name: String,
    pub schema: Option<Value>,
    pub printer_columns: Vec<Value>,
    pub preserve_unknown_root: bool,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn key(&self) -> ResKey {
        self.storage.clone()
    }

    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }

    pub fn is_core_events(&self) -> bool {
        self.group.is_empty() && self.plural == "events"
    }

    pub fn is_events_k8s_io(&self) -> bool {
        self.group == "events.k8s.io"
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// An entry of an `APIResourceList`.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs(),
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.has_status {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    generation: bool,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short: &["ns"],
        categories: &[],
        status: true,
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        short: &[],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        short: &["cm"],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        short: &["sa"],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        short: &["svc"],
        categories: &["all"],
        status: true,
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short: &["ev"],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        short: &["po"],
        categories: &["all"],
        status: true,
        generation: false,
    },
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short: &["ev"],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short: &[],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short: &["crd", "crds"],
        categories: &["api-extensions"],
        status: true,
        generation: true,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        kind: "Role",
        namespaced: true,
        short: &[],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        kind: "RoleBinding",
        namespaced: true,
        short: &[],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        kind: "ClusterRole",
        namespaced: false,
        short: &[],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short: &[],
        categories: &[],
        status: false,
        generation: false,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        namespaced: true,
        short: &["deploy"],
        categories: &["all"],
        status: true,
        generation: true,
    },
    Builtin {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        kind: "PodDisruptionBudget",
        namespaced: true,
        short: &["pdb"],
        categories: &[],
        status: true,
        generation: true,
    },
];

/// All served resources, indexed for URL routing and discovery.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// (group, version, plural) → definition.
    defs: BTreeMap<(String, String, String), Arc<ResourceDef>>,
    /// group → preferred version (first registered).
    group_order: Vec<String>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        for b in BUILTINS {
            let storage = if b.group == "events.k8s.io" {
                ResKey::new("", "events")
            } else {
                ResKey::new(b.group, b.plural)
            };
            r.insert(ResourceDef {
                group: b.group.into(),
                version: b.version.into(),
                plural: b.plural.into(),
                singular: b.kind.to_lowercase(),
                kind: b.kind.into(),
                list_kind: format!("{}List", b.kind),
                namespaced: b.namespaced,
                short_names: b.short.iter().map(|s| s.to_string()).collect(),
                categories: b.categories.iter().map(|s| s.to_string()).collect(),
                has_status: b.status,
                has_generation: b.generation,
                crd: None,
                storage,
            });
        }
        r
    }

    pub fn insert(&mut self, def: ResourceDef) {
        if !self.group_order.contains(&def.group) {
            self.group_order.push(def.group.clone());
        }
        self.defs.insert(
            (def.group.clone(), def.version.clone(), def.plural.clone()),
            Arc::new(def),
        );
    }

    /// Removes every version registered by one CRD.
    pub fn remove_crd(&mut self, crd_name: &str) {
        self.defs
            .retain(|_, d| d.crd.as_ref().is_none_or(|c| c.crd_name != crd_name));
        let groups: Vec<String> = self.defs.values().map(|d| d.group.clone()).collect();
        self.group_order.retain(|g| groups.contains(g));
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// The definition used for storage-level work (GC, namespace cleanup) of a key.
    pub fn any_for_key(&self, key: &ResKey) -> Option<Arc<ResourceDef>> {
        self.defs
            .values()
            .find(|d| d.storage == *key && d.group == key.group)
            .cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.defs.values()
    }

    /// Groups in registration order, each with its versions (served order).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for g in &self.group_order {
            let mut versions: Vec<String> = Vec::new();
            for d in self.defs.values().filter(|d| &d.group == g) {
                if !versions.contains(&d.version) {
                    versions.push(d.version.clone());
                }
            }
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
            out.push((g.clone(), versions));
        }
        out
    }

    pub fn resources_in(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        self.defs
            .values()
            .filter(|d| d.group == group && d.version == version)
            .cloned()
            .collect()
    }

    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.defs.values().any(|d| d.group == group && d.version == version)
    }
}

/// Kubernetes version ordering: GA > beta > alpha, then by number.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major: u32 = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (class, num) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    (class, major, num.parse().unwrap_or(0))
}

/// Builds the resource definitions a CRD object serves.
pub fn defs_from_crd(crd: &Value) -> Vec<ResourceDef> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let singular = names["singular"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names["listKind"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("{kind}List"));
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let crd_name = crate::meta::name_of(crd).to_string();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let version = v["name"].as_str().unwrap_or_default().to_string();
        let schema = v["schema"]["openAPIV3Schema"].clone();
        let schema = if schema.is_null() { None } else { Some(schema) };
        let preserve_unknown_root = schema
            .as_ref()
            .and_then(|s| s["x-kubernetes-preserve-unknown-fields"].as_bool())
            .unwrap_or(false);
        out.push(ResourceDef {
            group: group.clone(),
            version,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: strs(&names["shortNames"]),
            categories: strs(&names["categories"]),
            has_status: !v["subresources"]["status"].is_null(),
            has_generation: true,
            crd: Some(Arc::new(CrdVersion {
                crd_name: crd_name.clone(),
                schema,
                printer_columns: v["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
                preserve_unknown_root,
            })),
            storage: ResKey::new(&group, &plural),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let mut v = vec!["v1beta1", "v1", "v2alpha1", "v2"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, vec!["v2", "v1", "v1beta1", "v2alpha1"]);
    }

    #[test]
    fn builtins_present() {
        let r = Registry::with_builtins();
        assert!(r.get("coordination.k8s.io", "v1", "leases").is_some());
        let ev = r.get("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(ev.key(), ResKey::new("", "events"));
    }
}
