//! kube-emulator: an in-memory Kubernetes API server that kubectl and kube-rs
//! use unmodified. [`Emulator`] runs it in-process for tests; the binary runs
//! it for the demo and chart checks.
#![forbid(unsafe_code)]

pub mod builtin_schema;
pub mod cel_rules;
pub mod error;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod proto;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod server;
pub mod ssa;
pub mod store;
pub mod structural;
pub mod table;
pub mod validation;
pub mod views;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::Shared;
use crate::store::State;

/// How to run an emulator.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// One JSON line per request.
    pub audit_log: Option<PathBuf>,
    /// Objects are loaded from here at start and saved while running and at shutdown.
    pub state_file: Option<PathBuf>,
    /// Watch events kept for resuming watches; older versions get 410 Expired.
    pub history_limit: usize,
    pub gc_interval: Duration,
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            audit_log: None,
            state_file: None,
            history_limit: 10_000,
            gc_interval: Duration::from_millis(500),
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

/// A running emulator; stops when dropped or on [`Emulator::shutdown`].
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    state_file: Option<PathBuf>,
    server: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Emulator {
    /// Starts on 127.0.0.1 with a free port and default options.
    pub async fn start() -> Emulator {
        Self::start_with(Options::default()).await.expect("start kube-emulator")
    }

    pub async fn start_with(opts: Options) -> anyhow::Result<Emulator> {
        let mut state = State::new(opts.history_limit);
        if let Some(path) = &opts.state_file
            && path.exists()
        {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let dump: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            state.load(&dump);
        }
        let audit = match &opts.audit_log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening audit log {}", p.display()))?,
            )),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("binding {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let rv = state.rv;
        let (notify, _) = watch::channel(rv);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            notify,
            shutdown,
            audit,
            bookmark_interval: opts.bookmark_interval,
            addr,
        });
        let app = axum::Router::new().fallback(server::handle).with_state(shared.clone());
        // Graceful shutdown closes idle keep-alive connections too, so a pooled
        // client cannot keep talking to a stopped emulator.
        let mut stopping = shared.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let stopped = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                tracing::error!(error = %e, "kube-emulator server stopped");
            }
        });
        let gc_shared = shared.clone();
        let gc_every = opts.gc_interval;
        let gc = tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc_every);
            loop {
                tick.tick().await;
                let rv = {
                    let mut st = gc_shared.lock();
                    let before = st.rv;
                    st.collect_garbage();
                    (st.rv != before).then_some(st.rv)
                };
                if let Some(rv) = rv {
                    gc_shared.wake_watchers(rv);
                }
            }
        });
        let mut tasks = vec![gc];
        if let Some(path) = opts.state_file.clone() {
            let s = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                loop {
                    tick.tick().await;
                    if let Err(e) = save_state(&s, &path, false) {
                        tracing::warn!(error = %e, "saving state file failed");
                    }
                }
            }));
        }
        tracing::info!(%addr, "kube-emulator listening");
        Ok(Emulator {
            addr,
            shared,
            state_file: opts.state_file,
            server: Some(server),
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for plain HTTP without credentials, current context `kube-emulator`.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A kube-rs client for this emulator, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        install_crypto_provider();
        let mut config = kube::Config::new(self.url().parse().expect("valid url"));
        config.default_namespace = "default".into();
        kube::Client::try_from(config).expect("kube client")
    }

    /// Direct access to the store, for tests that need to inspect it.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut st = self.shared.lock();
        let before = st.rv;
        let r = f(&mut st);
        let rv = st.rv;
        drop(st);
        if rv != before {
            self.shared.wake_watchers(rv);
        }
        r
    }

    /// Stops serving (ending every watch), waits for connections to close
    /// (at most 5 s) and writes the state file.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), server).await.is_err()
        {
            tracing::warn!("connections still open 5 s after shutdown");
        }
    }

    fn stop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(p) = &self.state_file
            && let Err(e) = save_state(&self.shared, p, true)
        {
            tracing::warn!(error = %e, "saving state file at shutdown failed");
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            self.stop();
        }
        // The server task winds down on its own once the shutdown signal is seen.
        self.server.take();
    }
}

fn save_state(shared: &Shared, path: &Path, force: bool) -> anyhow::Result<()> {
    let dump = {
        let mut st = shared.lock();
        if !st.dirty && !force {
            return Ok(());
        }
        st.dirty = false;
        st.dump()
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&dump)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// kube-rs builds a rustls config even for plain HTTP, and with more than one
/// provider compiled in rustls cannot pick one itself. Losing the race to
/// another installer is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-emulator
  cluster:
    server: {server}
contexts:
- name: kube-emulator
  context:
    cluster: kube-emulator
    user: kube-emulator
    namespace: default
current-context: kube-emulator
preferences: {{}}
users:
- name: kube-emulator
  user: {{}}
"
    )
}
