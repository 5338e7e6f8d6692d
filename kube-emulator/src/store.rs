//! The object store: one global resourceVersion counter, objects by resource,
//! a bounded watch history, and every write rule (admission, generation,
//! finalizers, managed fields). Pure state, mutated under one lock (no I/O).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult, Cause};
use crate::meta::{self, finalizers, is_deleting, name_of, namespace_of, uid_of};
use crate::resources::{Registry, ResKey, ResourceDef, defs_from_crd};
use crate::selector::{FieldSelector, LabelSelector};
use crate::views::{from_view, to_view};
use crate::{cel_rules, patch, schema, ssa};

pub type ObjKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One persisted change, as replayed to watchers.
#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub key: ResKey,
    pub etype: EventType,
    pub obj: Arc<Value>,
    pub old: Option<Arc<Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Strict,
    #[default]
    Warn,
    Ignore,
}

/// Per-request write options (query parameters and headers).
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
    pub user_agent: String,
    pub force: bool,
}

impl WriteOpts {
    /// Upstream falls back to the user agent's product token.
    fn manager(&self) -> String {
        self.field_manager.clone().unwrap_or_else(|| {
            let ua = self.user_agent.split('/').next().unwrap_or("").trim();
            if ua.is_empty() {
                "unknown".into()
            } else {
                ua.chars().take(128).collect()
            }
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug)]
pub struct WriteResult {
    pub code: u16,
    pub body: Value,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// List query parameters.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub rv_match: Option<String>,
}

struct Snapshot {
    rv: u64,
    items: Vec<Arc<Value>>,
    created: Instant,
}

/// Everything the emulator holds.
pub struct State {
    pub rv: u64,
    /// Watches may resume from any version ≥ floor; older ones get 410.
    pub floor: u64,
    pub objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    pub uids: HashMap<String, (ResKey, ObjKey)>,
    pub history: VecDeque<Arc<WatchEvent>>,
    pub history_limit: usize,
    pub registry: Registry,
    snapshots: HashMap<u64, Snapshot>,
    next_snapshot: u64,
    pub dirty: bool,
}

const SNAPSHOT_TTL: Duration = Duration::from_secs(600);
const MAX_SNAPSHOTS: usize = 256;

pub fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

fn strip_for_compare(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        // A changed owner set is a real change; only the timestamps are not.
        if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
            for e in entries {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    v
}

/// What generation tracks: everything but metadata, and but status when
/// status is a subresource (without one, status is ordinary content).
fn spec_part(v: &Value, has_status: bool) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if has_status {
            m.remove("status");
        }
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn obj_key(def: &ResourceDef, ns: &str, name: &str) -> ObjKey {
    (
        if def.namespaced { ns.to_string() } else { String::new() },
        name.to_string(),
    )
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        let mut s = State {
            rv: 0,
            floor: 0,
            objects: HashMap::new(),
            uids: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            registry: Registry::with_builtins(),
            snapshots: HashMap::new(),
            next_snapshot: 1,
            dirty: false,
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let def = s.registry.get("", "v1", "namespaces").expect("builtin");
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let opts = WriteOpts {
                field_manager: Some("kube-apiserver".into()),
                ..Default::default()
            };
            s.create(&def, "", body, &opts).expect("bootstrap namespace");
        }
        s
    }

    pub fn get_stored(&self, key: &ResKey, ok: &ObjKey) -> Option<Arc<Value>> {
        self.objects.get(key).and_then(|m| m.get(ok)).cloned()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.dirty = true;
        self.rv
    }

    fn emit(&mut self, key: ResKey, etype: EventType, obj: Arc<Value>, old: Option<Arc<Value>>) {
        let ev = Arc::new(WatchEvent {
            rv: self.rv,
            key,
            etype,
            obj,
            old,
        });
        self.history.push_back(ev);
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.floor = e.rv;
            }
        }
    }

    /// Events after `rv`, or None when they are no longer retained.
    pub fn events_since(&self, rv: u64) -> Option<Vec<Arc<WatchEvent>>> {
        if rv < self.floor {
            return None;
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Some(self.history.range(start..).cloned().collect())
    }

    fn store(&mut self, key: &ResKey, ok: ObjKey, obj: Arc<Value>) {
        let uid = uid_of(&obj).to_string();
        self.uids.insert(uid, (key.clone(), ok.clone()));
        self.objects.entry(key.clone()).or_default().insert(ok, obj);
    }

    fn unstore(&mut self, key: &ResKey, ok: &ObjKey) -> Option<Arc<Value>> {
        let removed = self.objects.get_mut(key).and_then(|m| m.remove(ok));
        if let Some(o) = &removed {
            self.uids.remove(uid_of(o));
        }
        removed
    }

    /// Where a new object may be created: its namespace exists and is not
    /// terminating, and its CRD is not being deleted.
    fn check_creatable(&self, def: &ResourceDef, ns: &str, name: &str) -> ApiResult<()> {
        if let Some(crd) = &def.crd {
            let key = ResKey::new("apiextensions.k8s.io", "customresourcedefinitions");
            if self
                .get_stored(&key, &(String::new(), crd.crd_name.clone()))
                .is_some_and(|c| is_deleting(&c))
            {
                return Err(ApiError::method_not_allowed(
                    "create not allowed while custom resource definition is terminating",
                ));
            }
        }
        if !def.namespaced {
            return Ok(());
        }
        if ns.is_empty() {
            return Err(ApiError::bad_request(
                "the server could not find the requested resource: namespace required",
            ));
        }
        match self.get_stored(&ResKey::new("", "namespaces"), &(String::new(), ns.to_string())) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if is_deleting(&n) => {
                let mut e = ApiError::forbidden(format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    crate::error::qualified(&def.plural, &def.group),
                ));
                e.name = Some(name.to_string());
                e.kind = Some(def.plural.clone());
                Err(e)
            }
            Some(_) => Ok(()),
        }
    }

    fn validate_name(def: &ResourceDef, name: &str) -> Option<String> {
        let ok = match (def.group.as_str(), def.plural.as_str()) {
            ("", "namespaces") => meta::is_dns_label(name),
            ("rbac.authorization.k8s.io", _) => meta::is_path_segment(name),
            _ => meta::is_dns_subdomain(name),
        };
        if ok {
            None
        } else {
            Some(format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ))
        }
    }

    fn check_type(def: &ResourceDef, body: &Value) -> ApiResult<()> {
        let av = body["apiVersion"].as_str().unwrap_or_default();
        let kind = body["kind"].as_str().unwrap_or_default();
        let want_av = def.api_version();
        if (!av.is_empty() && av != want_av) || (!kind.is_empty() && kind != def.kind) {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av}), or kind {kind} does not match {}",
                    def.kind
                ),
            ));
        }
        Ok(())
    }

    /// Schema processing for custom resources and CRD normalisation; returns warnings.
    fn admit(
        &self,
        def: &ResourceDef,
        new: &mut Value,
        old: Option<&Value>,
        opts: &WriteOpts,
        is_patch: bool,
    ) -> ApiResult<Vec<String>> {
        let mut warnings = Vec::new();
        let name = name_of(new).to_string();
        let mut causes: Vec<Cause> = Vec::new();
        if let Some(refs) = new["metadata"]["ownerReferences"].as_array() {
            let controllers = refs.iter().filter(|r| r["controller"].as_bool() == Some(true)).count();
            if controllers > 1 {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "Invalid value: \"array\": Only one reference can have Controller set to true",
                    "metadata.ownerReferences",
                ));
            }
        }
        if let Some(crd) = &def.crd
            && let Some(sch) = &crd.schema
        {
            let mut unknown = Vec::new();
            schema::prune(sch, new, "", true, &mut unknown);
            self.unknown_fields(&unknown, opts, is_patch, &mut warnings)?;
            schema::apply_defaults(sch, new);
            schema::validate(sch, new, "", &mut causes);
            if causes.is_empty() {
                cel_rules::validate(sch, new, old, "", &mut causes);
            }
        }
        causes.extend(crate::validation::validate_metadata(new));
        if !def.is_custom() {
            let (group, kind) = if def.is_events_k8s_io() {
                ("", "Event")
            } else {
                (def.group.as_str(), def.kind.as_str())
            };
            causes.extend(crate::validation::validate_builtin(group, kind, new, old));
            if def.is_events_k8s_io() {
                causes.extend(crate::validation::validate_events_v1(new));
            }
        }
        if !def.is_custom() && opts.field_validation != FieldValidation::Ignore {
            let (group, kind) = if def.is_events_k8s_io() {
                ("", "Event")
            } else {
                (def.group.as_str(), def.kind.as_str())
            };
            if let Some(unknown) = crate::builtin_schema::unknown_fields(group, kind, new) {
                self.unknown_fields(&unknown, opts, is_patch, &mut warnings)?;
            }
        }
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            admit_crd(new, old, &mut causes);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&def.group, &def.kind, &name, causes));
        }
        Ok(warnings)
    }

    fn unknown_fields(
        &self,
        unknown: &[String],
        opts: &WriteOpts,
        is_patch: bool,
        warnings: &mut Vec<String>,
    ) -> ApiResult<()> {
        if unknown.is_empty() {
            return Ok(());
        }
        match opts.field_validation {
            FieldValidation::Ignore => Ok(()),
            FieldValidation::Warn => {
                warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
                Ok(())
            }
            FieldValidation::Strict => {
                let list: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                let msg = format!("strict decoding error: {}", list.join(", "));
                if is_patch {
                    Err(ApiError::new(422, "Invalid", msg))
                } else {
                    Err(ApiError::bad_request(msg))
                }
            }
        }
    }

    fn ssa_ctx<'a>(def: &'a ResourceDef, sub: &'a str, av: &'a str) -> ssa::Ctx<'a> {
        ssa::Ctx {
            schema: def.crd.as_ref().and_then(|c| c.schema.as_ref()),
            has_status: def.has_status,
            subresource: sub,
            api_version: av,
        }
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> ApiResult<Value> {
        self.get_stored(&def.key(), &obj_key(def, ns, name))
            .map(|o| to_view(def, &o))
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))
    }

    /// POST (and apply-create, with managed fields already computed).
    pub fn create(&mut self, def: &ResourceDef, ns: &str, body: Value, opts: &WriteOpts) -> ApiResult<WriteResult> {
        self.create_inner(def, ns, body, opts, false)
    }

    fn create_inner(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        body: Value,
        opts: &WriteOpts,
        managed_done: bool,
    ) -> ApiResult<WriteResult> {
        if !body.is_object() {
            return Err(ApiError::bad_request("request body must be a JSON object"));
        }
        Self::check_type(def, &body)?;
        let mut obj = from_view(def, body);
        let body_ns = namespace_of(&obj).to_string();
        if def.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut name = name_of(&obj).to_string();
        if name.is_empty() {
            match meta::get_str(&obj, &["metadata", "generateName"]) {
                Some(g) if !g.is_empty() => {
                    let base: String = g.chars().take(58).collect();
                    name = format!("{base}{}", meta::generate_suffix());
                }
                _ => {
                    return Err(ApiError::invalid(
                        &def.group,
                        &def.kind,
                        "",
                        vec![Cause::new(
                            "FieldValueRequired",
                            "Required value: name or generateName is required",
                            "metadata.name",
                        )],
                    ));
                }
            }
        }
        if let Some(msg) = Self::validate_name(def, &name) {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                &name,
                vec![Cause::new("FieldValueInvalid", msg, "metadata.name")],
            ));
        }
        if meta::get_str(&obj, &["metadata", "resourceVersion"]).is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        self.check_creatable(def, ns, &name)?;
        let ok = obj_key(def, ns, &name);
        let key = def.key();
        if self.get_stored(&key, &ok).is_some() {
            return Err(ApiError::already_exists(&def.group, &def.plural, &name));
        }
        let now = meta::now_rfc3339();
        {
            obj["apiVersion"] = json!(def.api_version());
            obj["kind"] = json!(def.kind);
            if def.is_events_k8s_io() {
                obj["apiVersion"] = json!("v1");
            }
            let m = meta::metadata_mut(&mut obj);
            m.insert("name".into(), json!(name));
            if def.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(meta::new_uid()));
            m.insert("creationTimestamp".into(), json!(now));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if def.has_generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if def.has_status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if def.group.is_empty() && def.plural == "services" {
            self.default_service(&mut obj);
        }
        if def.group.is_empty() && def.plural == "namespaces" {
            // Set by the NamespaceDefaultLabelName admission since 1.21; namespace selectors rely on it.
            let m = meta::metadata_mut(&mut obj);
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if labels.is_object() {
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
            obj["status"] = json!({"phase": "Active"});
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            let m = meta::metadata_mut(&mut obj);
            let mut fins: Vec<Value> = m
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let cleanup = json!("customresourcecleanup.apiextensions.k8s.io");
            if !fins.contains(&cleanup) {
                fins.push(cleanup);
            }
            m.insert("finalizers".into(), Value::Array(fins));
        }
        normalize_metadata(&mut obj);
        let warnings = self.admit(def, &mut obj, None, opts, false)?;
        if !managed_done {
            let av = def.api_version();
            let ctx = Self::ssa_ctx(def, "", &av);
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("managedFields");
            }
            ssa::record_update(None, &mut obj, &opts.manager(), ctx);
        }
        if opts.dry_run {
            return Ok(WriteResult {
                code: 201,
                body: to_view(def, &obj),
                warnings,
            });
        }
        let rv = self.next_rv();
        meta::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Arc::new(obj);
        self.store(&key, ok, obj.clone());
        self.emit(key, EventType::Added, obj.clone(), None);
        self.after_write(def, &obj);
        Ok(WriteResult {
            code: 201,
            body: to_view(def, &obj),
            warnings,
        })
    }

    /// What the apiserver's Service defaulting and IP allocation add, so that
    /// `kubectl get svc` and re-applies look as they do on a cluster.
    fn default_service(&self, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let spec = &mut obj["spec"];
        if spec["type"].is_null() {
            spec["type"] = json!("ClusterIP");
        }
        if spec["sessionAffinity"].is_null() {
            spec["sessionAffinity"] = json!("None");
        }
        if spec["type"] != "ExternalName" && spec["clusterIP"].is_null() {
            let n = self.objects.get(&ResKey::new("", "services")).map_or(0, |m| m.len()) as u64 + 1;
            let ip = format!("10.96.{}.{}", (n / 250) % 250, n % 250 + 1);
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                if p["protocol"].is_null() {
                    p["protocol"] = json!("TCP");
                }
                if p["targetPort"].is_null() {
                    p["targetPort"] = p["port"].clone();
                }
            }
        }
    }

    /// Side effects of a persisted write (CRD registration).
    fn after_write(&mut self, def: &ResourceDef, obj: &Value) {
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            self.register_crd(obj);
        }
    }

    pub fn register_crd(&mut self, crd: &Value) {
        let name = name_of(crd).to_string();
        self.registry.remove_crd(&name);
        for d in defs_from_crd(crd) {
            self.registry.insert(d);
        }
    }

    /// PUT on the object or its `/status`.
    pub fn update(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        sub: &str,
        body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<WriteResult> {
        if !body.is_object() {
            return Err(ApiError::bad_request("request body must be a JSON object"));
        }
        Self::check_type(def, &body)?;
        let body_name = name_of(&body);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = namespace_of(&body);
        if def.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = def.key();
        let ok = obj_key(def, ns, name);
        let Some(old) = self.get_stored(&key, &ok) else {
            return Err(ApiError::not_found(&def.group, &def.plural, name));
        };
        let rv = meta::get_str(&body, &["metadata", "resourceVersion"])
            .unwrap_or("")
            .to_string();
        if rv.is_empty() {
            if def.is_custom() {
                return Err(ApiError::invalid(
                    &def.group,
                    &def.kind,
                    name,
                    vec![Cause::new(
                        "FieldValueInvalid",
                        "Invalid value: 0: must be specified for an update",
                        "metadata.resourceVersion",
                    )],
                ));
            }
        } else {
            parse_rv(&rv)?;
            if rv != meta::get_str(&old, &["metadata", "resourceVersion"]).unwrap_or("") {
                return Err(ApiError::conflict(
                    &def.group,
                    &def.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        let uid = meta::get_str(&body, &["metadata", "uid"]).unwrap_or("");
        if !uid.is_empty() && uid != uid_of(&old) {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    uid_of(&old)
                ),
            ));
        }
        let new = from_view(def, body);
        self.persist_update(def, &key, ok, &old, new, sub, opts, false, false)
    }

    /// Shared tail of update, patch and apply.
    /// (Empty metadata collections are dropped first, as Go's `omitempty` does.)
    #[allow(clippy::too_many_arguments)]
    fn persist_update(
        &mut self,
        def: &ResourceDef,
        key: &ResKey,
        ok: ObjKey,
        old: &Arc<Value>,
        mut new: Value,
        sub: &str,
        opts: &WriteOpts,
        managed_done: bool,
        is_patch: bool,
    ) -> ApiResult<WriteResult> {
        let name = ok.1.clone();
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if sub == "status" {
            let mut merged = (**old).clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if let Some(mf) = new["metadata"].get("managedFields") {
                meta::metadata_mut(&mut merged).insert("managedFields".into(), mf.clone());
            }
            new = merged;
        } else if def.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        {
            let m = meta::metadata_mut(&mut new);
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old["metadata"].get(f) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
        }
        if is_deleting(old) {
            let before = finalizers(old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &def.group,
                    &def.kind,
                    &name,
                    vec![Cause::new(
                        "FieldValueForbidden",
                        "Forbidden: no new finalizers can be added if the object is being deleted",
                        "metadata.finalizers",
                    )],
                ));
            }
        }
        if def.group.is_empty() && def.plural == "services" && new["spec"].is_object() {
            // An update that omits the allocated IP keeps it, as upstream does.
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if new["spec"][f].is_null() && !old["spec"][f].is_null() {
                    new["spec"][f] = old["spec"][f].clone();
                }
            }
            self.default_service(&mut new);
        }
        if def.group.is_empty() && def.plural == "namespaces" {
            let m = meta::metadata_mut(&mut new);
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if labels.is_object() {
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
        }
        normalize_metadata(&mut new);
        let warnings = self.admit(def, &mut new, Some(old), opts, is_patch)?;
        if def.has_generation && spec_part(&new, def.has_status) != spec_part(old, def.has_status) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            meta::metadata_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if !managed_done {
            let av = def.api_version();
            let ctx = Self::ssa_ctx(def, sub, &av);
            ssa::record_update(Some(old), &mut new, &opts.manager(), ctx);
        }
        if strip_for_compare(&new) == strip_for_compare(old) {
            return Ok(WriteResult {
                code: 200,
                body: to_view(def, old),
                warnings,
            });
        }
        if opts.dry_run {
            return Ok(WriteResult {
                code: 200,
                body: to_view(def, &new),
                warnings,
            });
        }
        let rv = self.next_rv();
        meta::metadata_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let new = Arc::new(new);
        if is_deleting(&new) && finalizers(&new).is_empty() {
            self.unstore(key, &ok);
            self.emit(key.clone(), EventType::Deleted, new.clone(), Some(old.clone()));
            self.after_delete(def, &new);
            return Ok(WriteResult {
                code: 200,
                body: to_view(def, &new),
                warnings,
            });
        }
        self.store(key, ok, new.clone());
        self.emit(key.clone(), EventType::Modified, new.clone(), Some(old.clone()));
        self.after_write(def, &new);
        Ok(WriteResult {
            code: 200,
            body: to_view(def, &new),
            warnings,
        })
    }

    /// PATCH with any of the four patch types.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        sub: &str,
        ptype: PatchType,
        body: &[u8],
        opts: &WriteOpts,
    ) -> ApiResult<WriteResult> {
        let key = def.key();
        let ok = obj_key(def, ns, name);
        let existing = self.get_stored(&key, &ok);
        if ptype != PatchType::Apply && opts.force {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                name,
                vec![Cause::new(
                    "FieldValueForbidden",
                    "Forbidden: may not be specified for non-apply patch",
                    "force",
                )],
            ));
        }
        if ptype == PatchType::Strategic && def.is_custom() {
            return Err(ApiError::unsupported_media(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if ptype == PatchType::Apply {
            return self.apply(def, ns, name, sub, body, opts, existing);
        }
        let patch_doc: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let Some(old) = existing else {
            return Err(ApiError::not_found(&def.group, &def.plural, name));
        };
        let mut view = to_view(def, &old);
        match ptype {
            PatchType::Merge => {
                if !patch_doc.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut view, &patch_doc)
            }
            PatchType::Strategic => {
                if !patch_doc.is_object() {
                    return Err(ApiError::bad_request("strategic merge patch must be a JSON object"));
                }
                patch::strategic_merge(&mut view, &patch_doc)
            }
            PatchType::Json => patch::json_patch(&mut view, &patch_doc).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?,
            PatchType::Apply => unreachable!("handled above"),
        }
        if !view.is_object() {
            return Err(ApiError::new(422, "Invalid", "the patch did not produce an object"));
        }
        let old_rv = meta::get_str(&old, &["metadata", "resourceVersion"]).unwrap_or("");
        let new_rv = meta::get_str(&view, &["metadata", "resourceVersion"]).unwrap_or(old_rv);
        if new_rv != old_rv {
            parse_rv(new_rv)?;
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let new_uid = meta::get_str(&view, &["metadata", "uid"]).unwrap_or("");
        if !new_uid.is_empty() && new_uid != uid_of(&old) {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {new_uid}, UID in object meta: {}",
                    uid_of(&old)
                ),
            ));
        }
        let new = from_view(def, view);
        self.persist_update(def, &key, ok, &old, new, sub, opts, false, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        sub: &str,
        body: &[u8],
        opts: &WriteOpts,
        existing: Option<Arc<Value>>,
    ) -> ApiResult<WriteResult> {
        let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                name,
                vec![Cause::new(
                    "FieldValueRequired",
                    "Required value: is required for apply patch",
                    "fieldManager",
                )],
            ));
        };
        let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("apply patch is not UTF-8"))?;
        let mut cfg: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            }
        };
        if !cfg.is_object() {
            return Err(ApiError::bad_request("apply patch must be an object"));
        }
        if cfg["apiVersion"].as_str().unwrap_or("").is_empty() || cfg["kind"].as_str().unwrap_or("").is_empty() {
            return Err(ApiError::bad_request(
                "invalid object type: apiVersion and kind must be set",
            ));
        }
        Self::check_type(def, &cfg)?;
        let cfg_name = name_of(&cfg);
        if !cfg_name.is_empty() && cfg_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({cfg_name}) does not match the name on the URL ({name})"
            )));
        }
        let cfg_ns = namespace_of(&cfg);
        if def.namespaced && !cfg_ns.is_empty() && cfg_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut warnings = Vec::new();
        if let Some(crd) = &def.crd
            && let Some(sch) = &crd.schema
        {
            let mut unknown = Vec::new();
            schema::prune(sch, &mut cfg, "", true, &mut unknown);
            self.unknown_fields(&unknown, opts, true, &mut warnings)?;
        }
        let av = def.api_version();
        let ctx = Self::ssa_ctx(def, sub, &av);
        let conflict_err = |conflicts: Vec<ssa::Conflict>| {
            let mut e = ApiError::conflict(&def.group, &def.plural, name, "");
            let lines: Vec<String> = conflicts
                .iter()
                .map(|c| format!("conflict with \"{}\" using {}: {}", c.manager, c.api_version, c.path))
                .collect();
            e.message = if lines.len() == 1 {
                format!("Apply failed with 1 conflict: {}", lines[0])
            } else {
                format!("Apply failed with {} conflicts: {}", lines.len(), lines.join("\n"))
            };
            e.causes = conflicts
                .iter()
                .map(|c| {
                    Cause::new(
                        "FieldManagerConflict",
                        format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                        c.path.clone(),
                    )
                })
                .collect();
            e
        };
        match existing {
            None => {
                if sub == "status" {
                    return Err(ApiError::not_found(&def.group, &def.plural, name));
                }
                let mut obj = ssa::apply(None, &cfg, &manager, opts.force, ctx).map_err(conflict_err)?;
                meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
                let mut r = self.create_inner(def, ns, obj, opts, true)?;
                r.warnings.extend(warnings);
                Ok(r)
            }
            Some(old) => {
                let view = to_view(def, &old);
                let merged = ssa::apply(Some(&view), &cfg, &manager, opts.force, ctx).map_err(conflict_err)?;
                let new = from_view(def, merged);
                let key = def.key();
                let ok = obj_key(def, ns, name);
                let mut r = self.persist_update(def, &key, ok, &old, new, sub, opts, true, true)?;
                r.warnings.extend(warnings);
                Ok(r)
            }
        }
    }

    pub fn delete(&mut self, def: &ResourceDef, ns: &str, name: &str, dopts: &DeleteOpts) -> ApiResult<WriteResult> {
        let key = def.key();
        let ok = obj_key(def, ns, name);
        let Some(old) = self.get_stored(&key, &ok) else {
            return Err(ApiError::not_found(&def.group, &def.plural, name));
        };
        if let Some(uid) = &dopts.uid
            && uid != uid_of(&old)
        {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    uid_of(&old)
                ),
            ));
        }
        if let Some(rv) = &dopts.resource_version
            && rv != meta::get_str(&old, &["metadata", "resourceVersion"]).unwrap_or("")
        {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta::get_str(&old, &["metadata", "resourceVersion"]).unwrap_or("")
                ),
            ));
        }
        if def.group.is_empty()
            && def.plural == "namespaces"
            && ["default", "kube-system", "kube-public"].contains(&name)
        {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if is_deleting(&old) {
            return Ok(WriteResult {
                code: 200,
                body: to_view(def, &old),
                warnings: vec![],
            });
        }
        let mut fins = finalizers(&old);
        match dopts.propagation.as_deref() {
            Some("Foreground") => fins.push("foregroundDeletion".into()),
            Some("Orphan") => fins.push("orphan".into()),
            _ => {}
        }
        let is_namespace = def.group.is_empty() && def.plural == "namespaces";
        if fins.is_empty() && !is_namespace {
            if dopts.dry_run {
                return Ok(WriteResult {
                    code: 200,
                    body: success_status(def, name, uid_of(&old)),
                    warnings: vec![],
                });
            }
            let rv = self.next_rv();
            let mut last = (*old).clone();
            meta::metadata_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
            let last = Arc::new(last);
            self.unstore(&key, &ok);
            self.emit(key, EventType::Deleted, last.clone(), Some(old.clone()));
            self.after_delete(def, &last);
            return Ok(WriteResult {
                code: 200,
                body: success_status(def, name, uid_of(&old)),
                warnings: vec![],
            });
        }
        let mut new = (*old).clone();
        {
            let m = meta::metadata_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(meta::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if !fins.is_empty() {
                m.insert("finalizers".into(), json!(fins));
            }
            if def.has_generation {
                let g = m.get("generation").and_then(Value::as_i64).unwrap_or(1);
                m.insert("generation".into(), json!(g + 1));
            }
        }
        if is_namespace {
            new["status"] = json!({"phase": "Terminating"});
        }
        if dopts.dry_run {
            return Ok(WriteResult {
                code: 200,
                body: to_view(def, &new),
                warnings: vec![],
            });
        }
        let rv = self.next_rv();
        meta::metadata_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let new = Arc::new(new);
        self.store(&key, ok, new.clone());
        self.emit(key, EventType::Modified, new.clone(), Some(old));
        Ok(WriteResult {
            code: 200,
            body: to_view(def, &new),
            warnings: vec![],
        })
    }

    fn after_delete(&mut self, def: &ResourceDef, obj: &Value) {
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            self.registry.remove_crd(name_of(obj));
        }
    }

    fn matching(&self, def: &ResourceDef, ns: &str, q: &ListQuery) -> Vec<Arc<Value>> {
        let Some(m) = self.objects.get(&def.key()) else {
            return vec![];
        };
        let iter: Box<dyn Iterator<Item = &Arc<Value>>> = if def.namespaced && !ns.is_empty() {
            Box::new(
                m.range((ns.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, v)| v),
            )
        } else {
            Box::new(m.values())
        };
        iter.filter(|o| selects(def, o, q)).cloned().collect()
    }

    pub fn list(&mut self, def: &ResourceDef, ns: &str, q: &ListQuery) -> ApiResult<Value> {
        self.expire_snapshots();
        if let Some(m) = &q.rv_match {
            if !matches!(m.as_str(), "NotOlderThan" | "Exact") {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "resourceVersionMatch: Unsupported value: \"{m}\": supported values: \"Exact\", \"NotOlderThan\""
                    ),
                ));
            }
            if q.resource_version.as_deref().unwrap_or("").is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if q.continue_token.is_some() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if m == "Exact" && q.resource_version.as_deref() == Some("0") {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if let Some(rv) = q.resource_version.as_deref().filter(|s| !s.is_empty()) {
            let n = parse_rv(rv)?;
            if n > self.rv {
                let mut e = ApiError::new(
                    504,
                    "Timeout",
                    format!("Too large resource version: {n}, current: {}", self.rv),
                );
                e.retry_after = Some(1);
                return Err(e);
            }
            if q.rv_match.as_deref() == Some("Exact") && n != self.rv {
                return Err(ApiError::expired(format!(
                    "too old resource version: {n} ({})",
                    self.rv
                )));
            }
        }
        let (rv, items, remaining_token, remaining) = match &q.continue_token {
            Some(tok) => {
                let (id, _) = decode_token(tok)
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid: invalid token"))?;
                let snap = self.snapshots.remove(&id).ok_or_else(|| {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
                })?;
                self.page(snap.rv, snap.items, q.limit)
            }
            None => {
                let all = self.matching(def, ns, q);
                let rv = self.rv;
                self.page(rv, all, q.limit)
            }
        };
        let mut md = json!({"resourceVersion": rv.to_string()});
        if let Some(t) = remaining_token {
            md["continue"] = json!(t);
            md["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "kind": def.list_kind,
            "apiVersion": def.api_version(),
            "metadata": md,
            "items": items.iter().map(|o| to_view(def, o)).collect::<Vec<_>>(),
        }))
    }

    fn page(
        &mut self,
        rv: u64,
        mut items: Vec<Arc<Value>>,
        limit: Option<usize>,
    ) -> (u64, Vec<Arc<Value>>, Option<String>, usize) {
        match limit {
            Some(l) if l > 0 && items.len() > l => {
                let rest = items.split_off(l);
                let remaining = rest.len();
                let id = self.next_snapshot;
                self.next_snapshot += 1;
                self.snapshots.insert(
                    id,
                    Snapshot {
                        rv,
                        items: rest,
                        created: Instant::now(),
                    },
                );
                if self.snapshots.len() > MAX_SNAPSHOTS
                    && let Some(oldest) = self.snapshots.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k)
                {
                    self.snapshots.remove(&oldest);
                }
                (rv, items, Some(encode_token(id, rv)), remaining)
            }
            _ => (rv, items, None, 0),
        }
    }

    fn expire_snapshots(&mut self) {
        self.snapshots.retain(|_, s| s.created.elapsed() < SNAPSHOT_TTL);
    }

    /// Objects (storage form) for an initial watch listing.
    pub fn initial_objects(&self, def: &ResourceDef, ns: &str, q: &ListQuery) -> Vec<Arc<Value>> {
        self.matching(def, ns, q)
    }

    /// Modifies a stored object outside a client request (GC, finalizer bookkeeping).
    fn internal_update(&mut self, key: &ResKey, ok: &ObjKey, f: impl FnOnce(&mut Value)) {
        let Some(old) = self.get_stored(key, ok) else {
            return;
        };
        let mut new = (*old).clone();
        f(&mut new);
        if new == *old {
            return;
        }
        let rv = self.next_rv();
        meta::metadata_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let new = Arc::new(new);
        let def = self.registry.any_for_key(key);
        if is_deleting(&new) && finalizers(&new).is_empty() && !(key.group.is_empty() && key.plural == "namespaces") {
            self.unstore(key, ok);
            self.emit(key.clone(), EventType::Deleted, new.clone(), Some(old));
            if let Some(d) = def {
                self.after_delete(&d, &new);
            }
        } else {
            self.store(key, ok.clone(), new.clone());
            self.emit(key.clone(), EventType::Modified, new, Some(old));
        }
    }

    fn remove_finalizer(&mut self, key: &ResKey, ok: &ObjKey, fin: &str) {
        self.internal_update(key, ok, |o| {
            if let Some(a) = o["metadata"].get_mut("finalizers").and_then(Value::as_array_mut) {
                a.retain(|f| f.as_str() != Some(fin));
                if a.is_empty()
                    && let Some(m) = o["metadata"].as_object_mut()
                {
                    m.remove("finalizers");
                }
            }
        });
    }

    fn delete_internal(&mut self, key: &ResKey, ok: &ObjKey) {
        let Some(def) = self.registry.any_for_key(key) else {
            // Objects of an unregistered resource (CRD already gone): drop silently.
            if let Some(o) = self.unstore(key, ok) {
                self.next_rv();
                self.emit(key.clone(), EventType::Deleted, o, None);
            }
            return;
        };
        let _ = self.delete(&def, &ok.0, &ok.1, &DeleteOpts::default());
    }

    /// One pass of the garbage collector, namespace and CRD cleanup.
    pub fn collect_garbage(&mut self) {
        let mut to_delete: Vec<(ResKey, ObjKey)> = Vec::new();
        let mut fin_done: Vec<(ResKey, ObjKey, &'static str)> = Vec::new();
        let mut orphan_refs: Vec<(ResKey, ObjKey, String)> = Vec::new();
        let mut dependents: HashMap<String, Vec<(ResKey, ObjKey)>> = HashMap::new();
        for (key, m) in &self.objects {
            for (ok, o) in m {
                if let Some(refs) = o["metadata"]["ownerReferences"].as_array()
                    && !refs.is_empty()
                {
                    let mut any_alive = false;
                    for r in refs {
                        let uid = r["uid"].as_str().unwrap_or_default();
                        if self.uids.contains_key(uid) {
                            any_alive = true;
                            dependents
                                .entry(uid.to_string())
                                .or_default()
                                .push((key.clone(), ok.clone()));
                        }
                    }
                    if !any_alive && !is_deleting(o) {
                        to_delete.push((key.clone(), ok.clone()));
                    }
                }
            }
        }
        for (key, m) in &self.objects {
            for (ok, o) in m {
                if !is_deleting(o) {
                    continue;
                }
                let fins = finalizers(o);
                let uid = uid_of(o).to_string();
                let deps = dependents.get(&uid).cloned().unwrap_or_default();
                if fins.iter().any(|f| f == "orphan") {
                    for d in &deps {
                        orphan_refs.push((d.0.clone(), d.1.clone(), uid.clone()));
                    }
                    fin_done.push((key.clone(), ok.clone(), "orphan"));
                }
                if fins.iter().any(|f| f == "foregroundDeletion") {
                    if deps.is_empty() {
                        fin_done.push((key.clone(), ok.clone(), "foregroundDeletion"));
                    } else {
                        to_delete.extend(deps.iter().cloned());
                    }
                }
                if key.group.is_empty() && key.plural == "namespaces" {
                    let ns = &ok.1;
                    let mut empty = true;
                    for (k2, m2) in &self.objects {
                        for (ok2, _) in m2
                            .range((ns.clone(), String::new())..)
                            .take_while(|((n, _), _)| n == ns)
                        {
                            empty = false;
                            to_delete.push((k2.clone(), ok2.clone()));
                        }
                    }
                    if empty {
                        fin_done.push((key.clone(), ok.clone(), "__namespace__"));
                    }
                }
                if key.group == "apiextensions.k8s.io"
                    && fins.iter().any(|f| f == "customresourcecleanup.apiextensions.k8s.io")
                {
                    let target = ResKey::new(
                        o["spec"]["group"].as_str().unwrap_or_default(),
                        o["spec"]["names"]["plural"].as_str().unwrap_or_default(),
                    );
                    match self.objects.get(&target) {
                        Some(objs) if !objs.is_empty() => {
                            to_delete.extend(objs.keys().map(|k| (target.clone(), k.clone())))
                        }
                        _ => fin_done.push((key.clone(), ok.clone(), "customresourcecleanup.apiextensions.k8s.io")),
                    }
                }
            }
        }
        for (key, ok, owner_uid) in orphan_refs {
            self.internal_update(&key, &ok, |o| {
                if let Some(a) = o["metadata"].get_mut("ownerReferences").and_then(Value::as_array_mut) {
                    a.retain(|r| r["uid"].as_str() != Some(owner_uid.as_str()));
                }
            });
        }
        to_delete.sort();
        to_delete.dedup();
        for (key, ok) in to_delete {
            if self.get_stored(&key, &ok).is_some_and(|o| !is_deleting(&o)) {
                self.delete_internal(&key, &ok);
            }
        }
        for (key, ok, fin) in fin_done {
            if fin == "__namespace__" {
                if let Some(old) = self.get_stored(&key, &ok) {
                    let rv = self.next_rv();
                    let mut last = (*old).clone();
                    meta::metadata_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
                    self.unstore(&key, &ok);
                    self.emit(key, EventType::Deleted, Arc::new(last), Some(old));
                }
            } else {
                self.remove_finalizer(&key, &ok, fin);
            }
        }
    }

    /// Every stored object, for the state file.
    pub fn dump(&self) -> Value {
        let mut objs = Vec::new();
        for (key, m) in &self.objects {
            for o in m.values() {
                objs.push(json!({"group": key.group, "plural": key.plural, "object": **o}));
            }
        }
        json!({"resourceVersion": self.rv, "objects": objs})
    }

    /// Restores a dump; every version from before the restart answers 410.
    pub fn load(&mut self, dump: &Value) {
        self.objects.clear();
        self.uids.clear();
        self.history.clear();
        self.registry = Registry::with_builtins();
        let saved_rv = dump["resourceVersion"].as_u64().unwrap_or(0);
        let mut crds = Vec::new();
        for e in dump["objects"].as_array().into_iter().flatten() {
            let key = ResKey::new(
                e["group"].as_str().unwrap_or_default(),
                e["plural"].as_str().unwrap_or_default(),
            );
            let o = e["object"].clone();
            let ok = (namespace_of(&o).to_string(), name_of(&o).to_string());
            if key.group == "apiextensions.k8s.io" && key.plural == "customresourcedefinitions" {
                crds.push(o.clone());
            }
            self.store(&key, ok, Arc::new(o));
        }
        for c in crds {
            self.register_crd(&c);
        }
        // Skip ahead so no pre-restart version can be mistaken for a current one.
        self.rv = saved_rv + 1;
        self.floor = self.rv;
        self.dirty = false;
    }
}

/// Whether an object (storage form) matches a query's selectors.
pub fn selects(def: &ResourceDef, obj: &Value, q: &ListQuery) -> bool {
    if !q.labels.matches(obj["metadata"].get("labels")) {
        return false;
    }
    if q.fields.is_empty() {
        return true;
    }
    if def.is_events_k8s_io() {
        q.fields.matches(&to_view(def, obj))
    } else {
        q.fields.matches(obj)
    }
}

/// Go's `omitempty` on ObjectMeta: empty labels, annotations, finalizers and
/// ownerReferences are not part of the object.
fn normalize_metadata(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "labels",
            "annotations",
            "finalizers",
            "ownerReferences",
            "managedFields",
        ] {
            let empty = match m.get(f) {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(o)) => o.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                m.remove(f);
            }
        }
    }
}

fn encode_token(id: u64, rv: u64) -> String {
    let raw = format!("{{\"id\":{id},\"rv\":{rv}}}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(tok: &str) -> Option<(u64, u64)> {
    if !tok.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..tok.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&tok[i..i + 2], 16).ok())
        .collect();
    let v: Value = serde_json::from_slice(&bytes?).ok()?;
    Some((v["id"].as_u64()?, v["rv"].as_u64()?))
}

pub fn success_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": uid},
    })
}

/// CRD admission: name rule, defaulted names, accepted names and conditions.
fn admit_crd(new: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let group = new["spec"]["group"].as_str().unwrap_or_default().to_string();
    let plural = new["spec"]["names"]["plural"].as_str().unwrap_or_default().to_string();
    let kind = new["spec"]["names"]["kind"].as_str().unwrap_or_default().to_string();
    let name = name_of(new).to_string();
    if name != format!("{plural}.{group}") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
            "metadata.name",
        ));
    }
    if group.is_empty() || !group.contains('.') {
        causes.push(Cause::new(
            "FieldValueInvalid",
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
            "spec.group",
        ));
    }
    if kind.is_empty() {
        causes.push(Cause::new("FieldValueRequired", "Required value", "spec.names.kind"));
    }
    let versions = new["spec"]["versions"].as_array().cloned().unwrap_or_default();
    let storage: Vec<String> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    causes.extend(crate::structural::crd_errors(new));
    if versions.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "Required value: must have at least one version",
            "spec.versions",
        ));
    } else if storage.len() != 1 {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "Invalid value: \"array\": must have exactly one version marked as storage version",
            "spec.versions",
        ));
    }
    if !causes.is_empty() {
        return;
    }
    let names = &mut new["spec"]["names"];
    if names["singular"].as_str().unwrap_or("").is_empty() {
        names["singular"] = json!(kind.to_lowercase());
    }
    if names["listKind"].as_str().unwrap_or("").is_empty() {
        names["listKind"] = json!(format!("{kind}List"));
    }
    if new["spec"]["scope"].is_null() {
        new["spec"]["scope"] = json!("Namespaced");
    }
    let accepted = new["spec"]["names"].clone();
    let mut stored: Vec<Value> = old
        .and_then(|o| o["status"]["storedVersions"].as_array().cloned())
        .unwrap_or_default();
    if let Some(s) = storage.first()
        && !stored.contains(&json!(s))
    {
        stored.push(json!(s));
    }
    let ltt = |t: &str| {
        old.and_then(|o| o["status"]["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
            .unwrap_or_else(meta::now_rfc3339)
    };
    new["status"] = json!({
        "acceptedNames": accepted,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ltt("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ltt("Established")},
        ],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm_def(s: &State) -> Arc<ResourceDef> {
        s.registry.get("", "v1", "configmaps").unwrap()
    }

    #[test]
    fn noop_update_keeps_rv() {
        let mut s = State::new(100);
        let def = cm_def(&s);
        let o = s
            .create(
                &def,
                "default",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1"}}),
                &WriteOpts::default(),
            )
            .unwrap()
            .body;
        let rv = s.rv;
        let r = s
            .update(&def, "default", "a", "", o.clone(), &WriteOpts::default())
            .unwrap();
        assert_eq!(s.rv, rv);
        assert_eq!(r.body["metadata"]["resourceVersion"], o["metadata"]["resourceVersion"]);
    }

    #[test]
    fn history_window_expires() {
        let mut s = State::new(5);
        let def = cm_def(&s);
        for i in 0..10 {
            s.create(
                &def,
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
                &WriteOpts::default(),
            )
            .unwrap();
        }
        assert!(s.events_since(1).is_none());
        assert_eq!(s.events_since(s.rv - 2).unwrap().len(), 2);
    }

    #[test]
    fn pagination_snapshot() {
        let mut s = State::new(100);
        let def = cm_def(&s);
        for i in 0..5 {
            s.create(
                &def,
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
                &WriteOpts::default(),
            )
            .unwrap();
        }
        let q = ListQuery {
            limit: Some(2),
            ..Default::default()
        };
        let p1 = s.list(&def, "default", &q).unwrap();
        let tok = p1["metadata"]["continue"].as_str().unwrap().to_string();
        s.create(
            &def,
            "default",
            json!({"metadata": {"name": "c9"}}),
            &WriteOpts::default(),
        )
        .unwrap();
        let q2 = ListQuery {
            limit: Some(10),
            continue_token: Some(tok),
            ..Default::default()
        };
        let p2 = s.list(&def, "default", &q2).unwrap();
        assert_eq!(p2["items"].as_array().unwrap().len(), 3);
        assert!(p2["metadata"].get("continue").is_none());
        assert_eq!(p1["metadata"]["resourceVersion"], p2["metadata"]["resourceVersion"]);
    }
}
