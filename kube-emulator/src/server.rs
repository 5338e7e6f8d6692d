//! The HTTP surface: URL routing, content negotiation, discovery, CRUD,
//! watch streaming and the audit log (network and file I/O).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::error::{ApiError, ApiResult};
use crate::meta::namespace_of;
use crate::openapi;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector, supported_fields};
use crate::store::{
    DeleteOpts, EventType, FieldValidation, ListQuery, PatchType, State, WatchEvent, WriteOpts, parse_rv, selects,
    success_status,
};
use crate::table;
use crate::views::to_view;

/// State shared by every request handler and background task.
pub struct Shared {
    pub state: Mutex<State>,
    /// Carries the latest resourceVersion; watchers wake on change.
    pub notify: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
    pub audit: Option<Mutex<std::fs::File>>,
    pub bookmark_interval: Duration,
    pub addr: std::net::SocketAddr,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wake_watchers(&self, rv: u64) {
        self.notify.send_replace(rv);
    }
}

/// What the audit log records for one request.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    pub user_agent: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub non_resource_url: String,
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Accept {
    Json,
    Table,
    PartialMeta,
}

/// Picks the first media range we can produce; protobuf-only → 406.
fn negotiate(headers: &HeaderMap) -> ApiResult<Accept> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if accept.is_empty() {
        return Ok(Accept::Json);
    }
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let mime = parts.next().unwrap_or("");
        let params: HashMap<&str, &str> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        match mime {
            "application/json" | "*/*" | "application/*" | "application/yaml" => match params.get("as") {
                None => return Ok(Accept::Json),
                Some(&"Table") if params.get("g") == Some(&"meta.k8s.io") => {
                    return Ok(Accept::Table);
                }
                Some(&"PartialObjectMetadata") | Some(&"PartialObjectMetadataList")
                    if params.get("g") == Some(&"meta.k8s.io") =>
                {
                    return Ok(Accept::PartialMeta);
                }
                _ => continue,
            },
            _ => continue,
        }
    }
    Err(ApiError::new(
        406,
        "NotAcceptable",
        format!("only the following media types are accepted: application/json, application/yaml (requested {accept})"),
    ))
}

struct ResourceReq {
    def: Arc<ResourceDef>,
    ns: String,
    name: Option<String>,
    sub: String,
    watch_path: bool,
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource")
}

fn parse_resource_path(state: &State, group: &str, version: &str, rest: &[&str]) -> ApiResult<ResourceReq> {
    let mut rest = rest.to_vec();
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest.remove(0);
    }
    let mut ns = String::new();
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && (rest[2] == "status" || rest[2] == "finalize"))
    {
        ns = rest[1].to_string();
        rest.drain(0..2);
    }
    if rest.is_empty() || rest.len() > 3 {
        return Err(not_found_path());
    }
    let def = state.registry.get(group, version, rest[0]).ok_or_else(not_found_path)?;
    let name = rest.get(1).map(|s| s.to_string());
    let mut sub = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    if sub == "finalize" && def.plural == "namespaces" {
        sub = String::new();
    }
    if !(sub.is_empty() || (sub == "status" && def.has_status)) {
        return Err(not_found_path());
    }
    if !def.namespaced && !ns.is_empty() {
        return Err(not_found_path());
    }
    Ok(ResourceReq {
        def,
        ns,
        name,
        sub,
        watch_path,
    })
}

fn fill_audit(
    audit: &mut AuditRecord,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
) {
    let mut rest = rest.to_vec();
    let watch_path = rest.first() == Some(&"watch");
    if watch_path {
        rest.remove(0);
    }
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && (rest[2] == "status" || rest[2] == "finalize"))
    {
        audit.namespace = rest[1].to_string();
        rest.drain(0..2);
    }
    audit.api_group = group.to_string();
    audit.api_version = version.to_string();
    audit.resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
    audit.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
    audit.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    audit.verb = verb_for(method, rest.len() > 1, watch_path || truthy(q, "watch")).into();
}

fn verb_for(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method.as_str(), has_name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true") | Some("1"))
}

fn list_query(def: &ResourceDef, q: &HashMap<String, String>) -> ApiResult<ListQuery> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
        &supported_fields(&def.group, &def.plural),
    )
    .map_err(ApiError::bad_request)?;
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    Ok(ListQuery {
        labels,
        fields,
        limit,
        continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        rv_match: q.get("resourceVersionMatch").filter(|s| !s.is_empty()).cloned(),
    })
}

fn write_opts(q: &HashMap<String, String>, headers: &HeaderMap) -> ApiResult<WriteOpts> {
    let fv = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, got {other:?}"
            )));
        }
    };
    Ok(WriteOpts {
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        field_manager: q.get("fieldManager").filter(|s| !s.is_empty()).cloned(),
        field_validation: fv,
        user_agent: user_agent(headers),
        force: truthy(q, "force"),
    })
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let ct = content_type(headers);
    if ct.contains("protobuf")
        && let Some(v) = crate::proto::decode(body)
    {
        return Ok(v);
    }
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct})"
        )));
    }
    if ct.contains("yaml") {
        let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
        return serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

/// The one axum handler: everything is routed by hand because resources appear at runtime.
pub async fn handle(AxState(shared): AxState<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let q: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let body = match axum::body::to_bytes(body, 256 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading body: {e}"))),
    };
    let path = parts.uri.path().to_string();
    let mut audit = AuditRecord {
        user_agent: user_agent(&parts.headers),
        ..Default::default()
    };
    // A bug must cost one request a 500, not the whole test run its server.
    let routed = std::panic::AssertUnwindSafe(route(
        &shared,
        &parts.method,
        &path,
        &q,
        &parts.headers,
        body,
        &mut audit,
    ));
    let resp = match futures::FutureExt::catch_unwind(routed).await {
        Ok(r) => r.unwrap_or_else(|e| error_response(&e)),
        Err(_) => {
            tracing::error!(%path, "request handler panicked");
            error_response(&ApiError::internal("internal error in kube-emulator"))
        }
    };
    audit.code = resp.status().as_u16();
    if let Some(a) = &shared.audit
        && let Ok(line) = serde_json::to_string(&audit)
    {
        let mut f = a.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{line}");
        let _ = f.flush();
    }
    resp
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    audit: &mut AuditRecord,
) -> ApiResult<Response> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let resource_path = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => Some(("", "v1", rest)),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => Some((*g, *v, rest)),
        _ => None,
    };
    let Some((group, version, rest)) = resource_path else {
        audit.verb = "get".into();
        audit.non_resource_url = path.to_string();
        if method != Method::GET && method != Method::HEAD {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {path}"
            )));
        }
        return non_resource(shared, &segs, headers);
    };
    // The audit record is filled from the URL alone so that requests for
    // unknown resources or subresources are still attributed (RBAC proofs).
    fill_audit(audit, method, group, version, rest, q);
    let rr = {
        let st = shared.lock();
        parse_resource_path(&st, group, version, rest)
    }?;
    let watch = rr.watch_path || truthy(q, "watch");
    if rr.def.namespaced && rr.ns.is_empty() && rr.name.is_some() {
        return Err(not_found_path());
    }
    if !rr.sub.is_empty() && !matches!(method.as_str(), "GET" | "PUT" | "PATCH") {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not allowed on {}/{}",
            rr.def.plural, rr.sub
        )));
    }
    let accept = negotiate(headers)?;
    let def = rr.def.clone();
    match (method.as_str(), rr.name.as_deref()) {
        ("GET", None) if watch => serve_watch(shared, &def, &rr.ns, q, accept).await,
        ("GET", None) => {
            let lq = list_query(&def, q)?;
            let list = shared.lock().list(&def, &rr.ns, &lq)?;
            Ok(render_list(&def, list, accept, q))
        }
        ("GET", Some(name)) if watch => {
            let mut q2 = q.clone();
            let fs = format!("metadata.name={name}");
            q2.insert(
                "fieldSelector".into(),
                match q.get("fieldSelector") {
                    Some(f) if !f.is_empty() => format!("{f},{fs}"),
                    _ => fs,
                },
            );
            serve_watch(shared, &def, &rr.ns, &q2, accept).await
        }
        ("GET", Some(name)) => {
            let obj = shared.lock().get(&def, &rr.ns, name)?;
            Ok(render_object(&def, obj, accept, 200, q))
        }
        ("POST", None) => {
            let opts = write_opts(q, headers)?;
            let obj = parse_body(headers, &body)?;
            let r = write(shared, |st| st.create(&def, &rr.ns, obj, &opts))?;
            Ok(with_warnings(
                render_object(&def, r.body, accept, r.code, q),
                &r.warnings,
            ))
        }
        ("PUT", Some(name)) => {
            let opts = write_opts(q, headers)?;
            let obj = parse_body(headers, &body)?;
            let r = write(shared, |st| st.update(&def, &rr.ns, name, &rr.sub, obj, &opts))?;
            Ok(with_warnings(
                render_object(&def, r.body, accept, r.code, q),
                &r.warnings,
            ))
        }
        ("PATCH", Some(name)) => {
            let opts = write_opts(q, headers)?;
            let ptype = match content_type(headers).as_str() {
                "application/json-patch+json" => PatchType::Json,
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" => PatchType::Apply,
                other => {
                    return Err(ApiError::unsupported_media(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                    )));
                }
            };
            let r = write(shared, |st| st.patch(&def, &rr.ns, name, &rr.sub, ptype, &body, &opts))?;
            Ok(with_warnings(
                render_object(&def, r.body, accept, r.code, q),
                &r.warnings,
            ))
        }
        ("DELETE", Some(name)) => {
            let dopts = delete_opts(q, &body)?;
            let r = write(shared, |st| st.delete(&def, &rr.ns, name, &dopts))?;
            Ok(json_response(r.code, &r.body))
        }
        ("DELETE", None) => {
            let dopts = delete_opts(q, &body)?;
            let lq = list_query(&def, q)?;
            write(shared, |st| {
                let list = st.list(
                    &def,
                    &rr.ns,
                    &ListQuery {
                        limit: None,
                        continue_token: None,
                        ..lq.clone()
                    },
                )?;
                for item in list["items"].as_array().into_iter().flatten() {
                    let ns = namespace_of(item).to_string();
                    let _ = st.delete(&def, &ns, crate::meta::name_of(item), &dopts);
                }
                Ok(crate::store::WriteResult {
                    code: 200,
                    body: success_status(&def, "", ""),
                    warnings: vec![],
                })
            })?;
            Ok(json_response(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

fn write<T>(shared: &Arc<Shared>, f: impl FnOnce(&mut State) -> ApiResult<T>) -> ApiResult<T> {
    let mut st = shared.lock();
    let before = st.rv;
    let r = f(&mut st);
    let rv = st.rv;
    drop(st);
    if rv != before {
        shared.wake_watchers(rv);
    }
    r
}

fn delete_opts(q: &HashMap<String, String>, body: &[u8]) -> ApiResult<DeleteOpts> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else if crate::proto::is_protobuf(body) {
        crate::proto::decode(body).ok_or_else(|| ApiError::unsupported_media("undecodable protobuf DeleteOptions"))?
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let propagation = b["propagationPolicy"]
        .as_str()
        .map(String::from)
        .or_else(|| q.get("propagationPolicy").cloned())
        .or_else(|| {
            match b["orphanDependents"]
                .as_bool()
                .or(q.get("orphanDependents").map(|s| s == "true"))
            {
                Some(true) => Some("Orphan".into()),
                _ => None,
            }
        });
    if let Some(p) = &propagation
        && !matches!(p.as_str(), "Background" | "Foreground" | "Orphan")
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("propagationPolicy: Unsupported value: \"{p}\""),
        ));
    }
    let dry_run = b["dryRun"].as_array().is_some_and(|a| a.iter().any(|x| x == "All"))
        || q.get("dryRun").is_some_and(|d| d == "All");
    Ok(DeleteOpts {
        uid: b["preconditions"]["uid"].as_str().map(String::from),
        resource_version: b["preconditions"]["resourceVersion"].as_str().map(String::from),
        propagation,
        dry_run,
    })
}

fn render_object(def: &ResourceDef, obj: Value, accept: Accept, code: u16, q: &HashMap<String, String>) -> Response {
    match accept {
        Accept::Json => json_response(code, &obj),
        Accept::PartialMeta => json_response(code, &table::partial_metadata(&obj)),
        Accept::Table => {
            let include = q.get("includeObject").map(String::as_str).unwrap_or("Metadata");
            let md = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
            json_response(code, &table::table(def, &[obj], md, include))
        }
    }
}

fn render_list(def: &ResourceDef, list: Value, accept: Accept, q: &HashMap<String, String>) -> Response {
    match accept {
        Accept::Json => json_response(200, &list),
        Accept::PartialMeta => {
            let items: Vec<Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(table::partial_metadata)
                .collect();
            json_response(
                200,
                &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list["metadata"], "items": items}),
            )
        }
        Accept::Table => {
            let include = q.get("includeObject").map(String::as_str).unwrap_or("Metadata");
            let items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
            json_response(200, &table::table(def, &items, list["metadata"].clone(), include))
        }
    }
}

fn non_resource(shared: &Arc<Shared>, segs: &[&str], headers: &HeaderMap) -> ApiResult<Response> {
    let st = shared.lock();
    let reg = &st.registry;
    let resource_list = |group: &str, version: &str| {
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let resources: Vec<Value> = reg
            .resources_in(group, version)
            .iter()
            .flat_map(|d| d.discovery_entries())
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    };
    let group_entry = |g: &str, versions: &[String]| {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
            .collect();
        json!({"name": g, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
    };
    let body = match segs {
        [] => {
            json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]})
        }
        ["api"] => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]})
        }
        ["api", "v1"] => resource_list("", "v1"),
        ["apis"] => {
            let groups: Vec<Value> = reg
                .groups()
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| group_entry(g, vs))
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        ["apis", g] => {
            let Some((_, vs)) = reg.groups().into_iter().find(|(name, _)| name == g) else {
                return Err(not_found_path());
            };
            let mut e = group_entry(g, &vs);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        }
        ["apis", g, v] => {
            if !reg.has_group_version(g, v) {
                return Err(not_found_path());
            }
            resource_list(g, v)
        }
        ["version"] => json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "kube-emulator", "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64"
        }),
        ["healthz"] | ["readyz"] | ["livez"] => {
            return Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from("ok"))
                .expect("response"));
        }
        ["openapi", "v2"] => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            if accept.contains("protobuf") {
                // An empty protobuf Document: kubectl finds no v2 model and relies on
                // the v3 documents and its compiled-in types instead.
                return Ok(Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    )
                    .body(Body::empty())
                    .expect("response"));
            }
            openapi::v2_json(reg)
        }
        ["openapi", "v3"] => openapi::v3_index(reg),
        ["openapi", "v3", "api", v] => openapi::v3_document(reg, "", v).ok_or_else(not_found_path)?,
        ["openapi", "v3", "apis", g, v] => openapi::v3_document(reg, g, v).ok_or_else(not_found_path)?,
        _ => return Err(not_found_path()),
    };
    Ok(json_response(200, &body))
}

fn event_line(etype: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": etype, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Value {
    let mut md = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": md})
}

fn expired_status(rv: u64, floor: u64) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("too old resource version: {rv} ({floor})"), "reason": "Expired", "code": 410})
}

struct WatchSpec {
    def: Arc<ResourceDef>,
    ns: String,
    query: ListQuery,
    accept: Accept,
    include: String,
}

impl WatchSpec {
    fn render(&self, obj: &Value) -> Value {
        let view = to_view(&self.def, obj);
        match self.accept {
            Accept::Json => view,
            Accept::PartialMeta => table::partial_metadata(&view),
            Accept::Table => {
                let md = json!({"resourceVersion": view["metadata"]["resourceVersion"]});
                table::table(&self.def, &[view], md, &self.include)
            }
        }
    }

    fn in_scope(&self, obj: &Value) -> bool {
        !self.def.namespaced || self.ns.is_empty() || namespace_of(obj) == self.ns
    }

    /// The event type this watcher sees, accounting for selector transitions.
    fn translate(&self, ev: &WatchEvent) -> Option<&'static str> {
        if ev.key != self.def.key() || !self.in_scope(&ev.obj) {
            return None;
        }
        let now = selects(&self.def, &ev.obj, &self.query);
        let before = ev.old.as_ref().is_some_and(|o| selects(&self.def, o, &self.query));
        match ev.etype {
            EventType::Added => now.then_some("ADDED"),
            EventType::Deleted => now.then_some("DELETED"),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }
}

async fn serve_watch(
    shared: &Arc<Shared>,
    def: &Arc<ResourceDef>,
    ns: &str,
    q: &HashMap<String, String>,
    accept: Accept,
) -> ApiResult<Response> {
    let query = list_query(def, q)?;
    let bookmarks = truthy(q, "allowWatchBookmarks");
    let send_initial = q.get("sendInitialEvents").map(|s| s == "true");
    if send_initial.is_some() && query.rv_match.as_deref() != Some("NotOlderThan") {
        return Err(ApiError::new(
            422,
            "Invalid",
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(ApiError::new(
            422,
            "Invalid",
            "allowWatchBookmarks: Required value: sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let timeout = match q.get("timeoutSeconds").filter(|s| !s.is_empty()) {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => Duration::from_secs(1800 + rand::random_range(0..1800)),
    };
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    if !rv_param.is_empty() {
        parse_rv(&rv_param)?;
    }
    let spec = WatchSpec {
        def: def.clone(),
        ns: ns.to_string(),
        query,
        accept,
        include: q.get("includeObject").cloned().unwrap_or_else(|| "Metadata".into()),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut notify_rx = shared.notify.subscribe();
    let mut shutdown_rx = shared.shutdown.subscribe();
    // Decide the starting point and the initial listing under one lock so no event is lost.
    let (start, initial, expired) = {
        let st = shared.lock();
        notify_rx.borrow_and_update();
        let want_initial = match send_initial {
            Some(v) => v,
            None => rv_param.is_empty() || rv_param == "0",
        };
        if want_initial {
            (st.rv, st.initial_objects(def, ns, &spec.query), None)
        } else {
            let n: u64 = if rv_param.is_empty() {
                st.rv
            } else {
                parse_rv(&rv_param)?
            };
            if n < st.floor || n > st.rv {
                (n, vec![], Some(expired_status(n, st.floor)))
            } else {
                (n, vec![], None)
            }
        }
    };
    let shared2 = shared.clone();
    let bookmark_every = shared.bookmark_interval;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(status) = expired {
            let _ = tx.send(event_line("ERROR", &status)).await;
            return;
        }
        for o in &initial {
            if tx.send(event_line("ADDED", &spec.render(o))).await.is_err() {
                return;
            }
        }
        if send_initial == Some(true) {
            let _ = tx.send(event_line("BOOKMARK", &bookmark(&spec.def, start, true))).await;
        }
        let mut last = start;
        let mut next_bookmark = tokio::time::Instant::now() + bookmark_every;
        loop {
            // Only cloning Arcs happens under the lock; filtering and encoding do not.
            let batch = {
                let st = shared2.lock();
                match st.events_since(last) {
                    None => Err(expired_status(last, st.floor)),
                    Some(evs) => Ok((evs, st.rv)),
                }
            };
            let batch = batch.map(|(evs, head)| {
                let lines: Vec<Bytes> = evs
                    .iter()
                    .filter_map(|ev| spec.translate(ev).map(|t| event_line(t, &spec.render(&ev.obj))))
                    .collect();
                (lines, head)
            });
            match batch {
                Err(status) => {
                    let _ = tx.send(event_line("ERROR", &status)).await;
                    return;
                }
                Ok((lines, head)) => {
                    for l in lines {
                        if tx.send(l).await.is_err() {
                            return;
                        }
                    }
                    last = last.max(head);
                }
            }
            tokio::select! {
                changed = notify_rx.changed() => {
                    if changed.is_err() { return; }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if bookmarks {
                        let _ = tx.send(event_line("BOOKMARK", &bookmark(&spec.def, last, false))).await;
                    }
                    return;
                }
                _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                    next_bookmark = tokio::time::Instant::now() + bookmark_every;
                    if tx.send(event_line("BOOKMARK", &bookmark(&spec.def, last, false))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = shutdown_rx.changed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("response"))
}
