//! The HTTP API: health, the server link, counters for operators, relay
//! health and blocking per country and network (`/relays`), the server's
//! own routes members report blocked, per country (`/reachability`), and the
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
        .route("/health", get(|| async { "ok\n" }))
        .route("/link", get(link))
        .route("/stats", get(stats))
        .route("/relays", get(relays))
        .route("/reachability", get(reachability))
        .with_state(shared);
    match log_dir {
        Some(dir) => router.nest("/log", postern_tlog::http::log_router(dir.to_owned())),
        None => router,
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
