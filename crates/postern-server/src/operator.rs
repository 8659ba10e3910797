//! The operator API under `/operator/` on the HTTP listener: the
//! lawful-request process ([`crate::cases`]) for the operators listed in
//! `[legal] operators`.
//!
//! Every request must be signed by an operator's Ed25519 key over its
//! method, path, body hash, time and nonce (`postern_legal::operator`);
//! anything else gets 401 before its body is looked at. One handler takes
//! every path here, so no route can be added without the check.
//!
//! - `GET  /operator/requests` — every case
//! - `POST /operator/requests` — `{"request": TOML, "order": BASE64, "signature": BASE64}`
//! - `GET  /operator/requests/ID` — one case
//! - `POST /operator/requests/ID/approve` — this operator's approval
//! - `GET  /operator/requests/ID/bundle` — the custodians' bundle (after two approvals)
//! - `POST /operator/requests/ID/disclose` — `{"released": [TEXT, …]}`: the signed package
//! - `GET  /operator/relays` — every relay, configured and registered
//! - `POST /operator/relays/HOST:PORT/approve` — hand out a pending registered relay
//! - `POST /operator/relays/HOST:PORT/retire` — retire a registered relay
//!
//! Errors are JSON `{"error": "…"}` with a status that says what happened.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use postern_legal::operator::{AuthError, Gate};
use serde::Deserialize;

use crate::cases::{CaseError, Cases};

/// The largest request body: an order at its limit, base64-encoded, and
/// its signature.
pub const MAX_BODY: usize = 96 * 1024 * 1024;

pub(crate) struct Operator {
    gate: Mutex<Gate>,
    cases: Arc<Cases>,
    relays: Arc<crate::relays::Relays>,
}

impl Operator {
    pub(crate) fn new(
        operators: &[String],
        cases: Arc<Cases>,
        relays: Arc<crate::relays::Relays>,
    ) -> anyhow::Result<Operator> {
        let keys = operators
            .iter()
            .map(|k| {
                postern_legal::operator::parse_key(k).map_err(|_| {
                    anyhow::anyhow!(
                        "[legal] operators: {k:?} is not an Ed25519 public key (64 hex digits)"
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Operator {
            gate: Mutex::new(Gate::new(keys)),
            cases,
            relays,
        })
    }
}

pub(crate) fn router(op: Arc<Operator>) -> Router {
    Router::new()
        .route("/operator/{*rest}", axum::routing::any(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(op)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    request: String,
    order: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    released: Vec<String>,
}

async fn handle(
    State(op): State<Arc<Operator>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or(uri.path(), |p| p.as_str())
        .to_owned();
    let checked = {
        let mut gate = op.gate.lock().unwrap_or_else(|e| e.into_inner());
        gate.check(
            |name| headers.get(name).and_then(|v| v.to_str().ok()),
            method.as_str(),
            &path,
            &body,
            now(),
        )
    };
    let operator = match checked {
        Ok(k) => hex::encode(k.as_bytes()),
        Err(e @ AuthError::Busy) => return error(StatusCode::TOO_MANY_REQUESTS, e),
        Err(e) => return error(StatusCode::UNAUTHORIZED, e),
    };
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let result = match (method.clone(), parts.as_slice()) {
        (Method::GET, ["operator", "requests"]) => {
            op.cases.list().map(|l| axum::Json(l).into_response())
        }
        (Method::POST, ["operator", "requests"]) => submit(&op.cases, &body).await,
        (Method::GET, ["operator", "requests", id]) => {
            op.cases.load(id).map(|s| axum::Json(s).into_response())
        }
        (Method::POST, ["operator", "requests", id, "approve"]) => op
            .cases
            .approve(id, &operator)
            .await
            .map(|s| axum::Json(s).into_response()),
        (Method::GET, ["operator", "requests", id, "bundle"]) => op
            .cases
            .bundle(id)
            .await
            .map(|b| ([("content-type", "application/json")], b.to_json()).into_response()),
        (Method::POST, ["operator", "requests", id, "disclose"]) => {
            match serde_json::from_slice::<Release>(&body) {
                Ok(r) => op
                    .cases
                    .disclose(id, &r.released, now())
                    .await
                    .map(|p| axum::Json(p).into_response()),
                Err(e) => Err(CaseError::BadRequest(format!(
                    "expected {{\"released\": [\"…\"]}}: {e}"
                ))),
            }
        }
        (Method::GET, ["operator", "relays"]) => {
            Ok(axum::Json(op.relays.status().await).into_response())
        }
        (Method::POST, ["operator", "relays", host, action @ ("approve" | "retire")]) => {
            let done = if *action == "approve" {
                op.relays.approve(host).await.map(|()| 0)
            } else {
                op.relays.retire(host).await
            };
            match done {
                Ok(members) => {
                    tracing::info!(relay = %host, %operator, "relay {action}d by an operator");
                    Ok(axum::Json(serde_json::json!({
                        "relay": host,
                        "state": if *action == "approve" { "active" } else { "retired" },
                        "members_moved": members,
                    }))
                    .into_response())
                }
                Err(crate::relays::RelayError::UnknownRelay) => Err(CaseError::BadRequest(
                    format!("no registered relay at {host}"),
                )),
                Err(crate::relays::RelayError::Registration(m)) => Err(CaseError::Conflict(m)),
                Err(e) => Err(CaseError::Internal(anyhow::anyhow!("{e}"))),
            }
        }
        _ => return error(StatusCode::NOT_FOUND, "no such operator endpoint"),
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            let status = match &e {
                CaseError::BadRequest(_) => StatusCode::BAD_REQUEST,
                CaseError::Duplicate(_) | CaseError::Conflict(_) => StatusCode::CONFLICT,
                CaseError::NotFound => StatusCode::NOT_FOUND,
                CaseError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                CaseError::Internal(_) => {
                    tracing::error!(error = %e, "operator request failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            error(status, e)
        }
    }
}

async fn submit(cases: &Cases, body: &[u8]) -> Result<Response, CaseError> {
    let s: Submission = serde_json::from_slice(body).map_err(|e| {
        CaseError::BadRequest(format!(
            "expected {{\"request\": TOML, \"order\": BASE64, \"signature\": BASE64}}: {e}"
        ))
    })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let document = b64
        .decode(s.order.trim())
        .map_err(|_| CaseError::BadRequest("the order is not base64".into()))?;
    let signature = b64
        .decode(s.signature.trim())
        .map_err(|_| CaseError::BadRequest("the signature is not base64".into()))?;
    let state = cases
        .submit(&s.request, &document, &signature, now())
        .await?;
    Ok((StatusCode::CREATED, axum::Json(state)).into_response())
}
