//! Shared fixtures for the kube-emulator integration tests: a CRD, a raw
//! HTTP/1.1 client (to see status codes, headers and watch lines exactly as
//! sent) and small helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube_emulator::{Emulator, Options};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const WIDGET_CRD_YAML: &str = include_str!("../fixtures/widget-crd.yaml");

pub fn widget_crd() -> Value {
    serde_saphyr::from_str(WIDGET_CRD_YAML).expect("fixture CRD parses")
}

pub fn widget_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets")
}

pub fn widget(name: &str, size: i64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": {"size": size}
    }))
    .expect("widget")
}

pub async fn start() -> Emulator {
    Emulator::start().await
}

pub async fn start_with(opts: Options) -> Emulator {
    Emulator::start_with(opts).await.expect("start emulator")
}

/// Starts an emulator with the Widget CRD installed.
pub async fn start_with_widgets() -> (Emulator, kube::Client) {
    let emu = start().await;
    let client = emu.client();
    install_widgets(&client).await;
    (emu, client)
}

pub async fn install_widgets(client: &kube::Client) {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(widget_crd()).expect("crd");
    crds.create(&PostParams::default(), &crd).await.expect("create CRD");
}

pub fn widgets(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), "default", &widget_ar())
}

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    BufReader::new(s)
}

async fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// One request/response over a fresh connection.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
    let mut r = send_request(addr, method, path, headers, body, true).await;
    let (status, hs) = read_head(&mut r).await;
    let chunked = hs
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        let mut reader = ChunkReader { r, buf: Vec::new() };
        while let Some(c) = reader.next_chunk().await {
            body.extend(c);
        }
    } else {
        r.read_to_end(&mut body).await.expect("body");
    }
    RawResponse {
        status,
        headers: hs,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get_json(addr: SocketAddr, path: &str) -> RawResponse {
    http(addr, "GET", path, &[("Accept", "application/json")], b"").await
}

pub async fn send_json(addr: SocketAddr, method: &str, path: &str, content_type: &str, body: &Value) -> RawResponse {
    let b = serde_json::to_vec(body).expect("json");
    http(
        addr,
        method,
        path,
        &[("Content-Type", content_type), ("Accept", "application/json")],
        &b,
    )
    .await
}

struct ChunkReader {
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl ChunkReader {
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let mut size_line = String::new();
        if self.r.read_line(&mut size_line).await.ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size_line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            return None;
        }
        let mut data = vec![0u8; size];
        self.r.read_exact(&mut data).await.ok()?;
        let mut crlf = [0u8; 2];
        self.r.read_exact(&mut crlf).await.ok()?;
        Some(data)
    }
}

/// A watch read line by line, as a client sees it.
pub struct WatchStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: ChunkReader,
}

impl WatchStream {
    pub async fn open(addr: SocketAddr, path: &str) -> WatchStream {
        let mut r = send_request(addr, "GET", path, &[("Accept", "application/json")], b"", true).await;
        let (status, headers) = read_head(&mut r).await;
        WatchStream {
            status,
            headers,
            reader: ChunkReader { r, buf: Vec::new() },
        }
    }

    /// The next event, `None` when the server closed the stream, panics on timeout.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        tokio::time::timeout(timeout, self.next_inner())
            .await
            .expect("watch event in time")
    }

    pub async fn try_next(&mut self, timeout: Duration) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        tokio::time::timeout(timeout, self.next_inner()).await
    }

    async fn next_inner(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.reader.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.reader.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("event line is JSON"));
            }
            let chunk = self.reader.next_chunk().await?;
            self.reader.buf.extend(chunk);
        }
    }
}

pub fn obj_rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("numeric rv")
}

pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
