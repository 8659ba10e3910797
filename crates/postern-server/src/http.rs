//! The HTTP API: health (`/health`: 200 `ok` while serving, 503
//! `draining` once the node drains, for load balancers), this node's
//! identity and state (`/node`), the server link, counters for operators, relay
//! health and blocking per country and network (`/relays`), and the
//! transparency log under `/log/` (served by `postern_tlog::http`, with
//! its cache headers: tiles immutable, the checkpoint briefly).
//!
//! It serves nothing personal: no phone numbers, no addresses, no payloads.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::Shared;

pub(crate) fn router(shared: Arc<Shared>, log_dir: Option<&Path>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/node", get(node))
        .route("/link", get(link))
        .route("/stats", get(stats))
        .route("/relays", get(relays))
        .with_state(shared);
    match log_dir {
        Some(dir) => router.nest("/log", postern_tlog::http::log_router(dir.to_owned())),
        None => router,
    }
}

async fn health(State(s): State<Arc<Shared>>) -> (axum::http::StatusCode, &'static str) {
    if s.draining() {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (axum::http::StatusCode::OK, "ok\n")
    }
}

async fn node(State(s): State<Arc<Shared>>) -> axum::Json<serde_json::Value> {
    let hub = s.service.hub();
    let nats = hub.fanout().map(|f| {
        serde_json::json!({
            "connected": f.client().is_connected(),
            "subscriptions": f.client().subscriptions(),
            "dropped_wakeups": f.client().dropped(),
        })
    });
    axum::Json(serde_json::json!({
        "node": s.node,
        "state": if s.draining() { "draining" } else { "serving" },
        "version": env!("CARGO_PKG_VERSION"),
        "store": s.store_kind,
        "connections": s.connections(),
        "subscribed": hub.subscribed(),
        "nats": nats,
    }))
}

async fn link(State(s): State<Arc<Shared>>) -> String {
    format!("{}\n", s.link)
}

async fn stats(State(s): State<Arc<Shared>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "connections": s.connections(),
        "subscribed": s.service.hub().subscribed(),
    }))
}

async fn relays(State(s): State<Arc<Shared>>) -> axum::Json<crate::relays::RelaysStatus> {
    axum::Json(s.service.relays().status().await)
}
