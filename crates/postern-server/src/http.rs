//! The HTTP API: health, the server link, and counters for operators.
//!
//! It serves nothing personal: no phone numbers, no addresses, no payloads.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/link", get(link))
        .route("/stats", get(stats))
        .with_state(shared)
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
