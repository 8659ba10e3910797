//! The HTTP API: health (`/health`: 200 `ok` while serving, 503
//! `draining` once the node drains, for load balancers), this node's
//! identity and state (`/node`), the server link, counters for operators, relay
//! health and blocking per country and network (`/relays`), the server's
//! own routes members report blocked, per country (`/reachability`), the
//! signed directory (`/directory`), and the
//! transparency log under `/log/` (served by `postern_tlog::http`, with
//! its cache headers: tiles immutable, the checkpoint briefly).
//!
//! It serves nothing personal: no phone numbers, no addresses, no payloads.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use postern_proto::directory::SignedDirectory;

use crate::directory::Published;

use crate::Shared;

pub(crate) fn router(
    shared: Arc<Shared>,
    log_dir: Option<&Path>,
    directory: Option<Arc<Published>>,
) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/node", get(node))
        .route("/link", get(link))
        .route("/stats", get(stats))
        .route("/relays", get(relays))
        .route("/reachability", get(reachability))
        .with_state(shared)
        .route(
            "/directory",
            get(move || {
                let d = directory.as_ref().and_then(|p| p.current());
                async move { signed_directory(d) }
            }),
        );
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

/// The signed note as published; short caching, as clients poll it.
fn signed_directory(d: Option<Arc<SignedDirectory>>) -> Response {
    match d {
        Some(d) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=60"),
            ],
            d.bytes().to_vec(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this server publishes no directory\n",
        )
            .into_response(),
    }
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

async fn reachability(
    State(s): State<Arc<Shared>>,
) -> axum::Json<Vec<crate::reachability::RouteReport>> {
    axum::Json(s.service.reachability().view())
}
