//! The HTTP server: `/metrics` (Prometheus text), `/healthz` (the process is alive)
//! and `/readyz` (stand-by, or leading with a cloud description no older than the
//! staleness bound). Does I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::runtime::Health;

pub struct Server {
    pub local_addr: SocketAddr,
}

pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    inventory: Arc<Inventory>,
    health: Arc<Health>,
    stale_after: std::time::Duration,
) -> std::io::Result<Server> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = health.standby.load(Ordering::SeqCst)
                    || (health.leading.load(Ordering::SeqCst)
                        && inventory.is_fresh(std::time::Instant::now(), stale_after));
                async move {
                    if ready {
                        (StatusCode::OK, "ok").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Server { local_addr })
}
