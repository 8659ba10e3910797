//! The HTTP shells (feature `http`): an axum router serving a log
//! directory, the witness's axum router, and reqwest clients for both.
//! They only move bytes; the logic is in the sans-IO modules.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::client::{DirFetch, Fetch, FetchError};
use crate::merkle::Hash;
use crate::note::{NoteError, NoteSignature, Verifier};
use crate::tile::Tile;
use crate::witness::{
    AddCheckpoint, FileStore, MAX_REQUEST_LEN, Witness, parse_conflict, parse_cosignatures,
};
use crate::writer::CHECKPOINT_FILE;

/// `Cache-Control` for tiles and entry bundles: their contents never
/// change (a partial tile that grows gets a new path), so caches may keep
/// them forever.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for the checkpoint, which changes with every batch.
pub const CHECKPOINT_CACHE: &str = "public, max-age=5";

/// The largest response the clients read (a full entry bundle of maximal
/// entries is 256 × 65,537 bytes).
const MAX_RESPONSE_LEN: usize = 256 * 65_537;

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!("{text}\n"),
    )
        .into_response()
}

async fn read_file(path: PathBuf, content_type: &'static str, cache: &'static str) -> Response {
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            ],
            bytes,
        )
            .into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            plain(StatusCode::NOT_FOUND, "not found")
        }
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the log"),
    }
}

/// A router serving the log a [`crate::LogWriter`] writes in `dir`:
/// `GET /checkpoint` and `GET /tile/…`, with C2SP content types and cache
/// headers. Mount it under the log's prefix, e.g.
/// `Router::new().nest("/log", log_router(dir))`.
///
/// Only paths that parse as tiles are read, so nothing else in the
/// directory (or outside it) can be reached.
pub fn log_router(dir: PathBuf) -> Router {
    let dir = Arc::new(dir);
    let cp_dir = dir.clone();
    Router::new()
        .route(
            "/checkpoint",
            get(move || {
                let path = cp_dir.join(CHECKPOINT_FILE);
                async move { read_file(path, "text/plain; charset=utf-8", CHECKPOINT_CACHE).await }
            }),
        )
        .route(
            "/tile/{*rest}",
            get(move |Path(rest): Path<String>| {
                let dir = dir.clone();
                async move {
                    let Ok(tile) = Tile::parse_path(&format!("tile/{rest}")) else {
                        return plain(StatusCode::NOT_FOUND, "not a tile path");
                    };
                    read_file(dir.join(tile.path()), "application/octet-stream", IMMUTABLE).await
                }
            }),
        )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A router for a witness: `POST /add-checkpoint` (tlog-witness) and
/// `GET /<origin hash>/checkpoint`, the latest checkpoint it cosigned for
/// a log. Requests are handled one at a time, so the check of a log's
/// size and its update are atomic.
pub fn witness_router(witness: Witness<FileStore>) -> Router {
    let witness = Arc::new(Mutex::new(witness));
    let add = witness.clone();
    Router::new()
        .route(
            "/add-checkpoint",
            post(move |body: Bytes| {
                let witness = add.clone();
                async move {
                    // The handler fsyncs: keep it off the async workers.
                    let answer = tokio::task::spawn_blocking(move || {
                        let mut w = witness.lock().unwrap_or_else(|p| p.into_inner());
                        w.handle(&body, now())
                    })
                    .await;
                    match answer {
                        Ok(r) => (
                            StatusCode::from_u16(r.status)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                            [(header::CONTENT_TYPE, r.content_type)],
                            r.body,
                        )
                            .into_response(),
                        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "the witness failed"),
                    }
                }
            }),
        )
        .route(
            "/{origin_hash}/checkpoint",
            get(move |Path(origin_hash): Path<String>| {
                let witness = witness.clone();
                async move {
                    if origin_hash.len() != 64
                        || !origin_hash
                            .bytes()
                            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    {
                        return plain(StatusCode::NOT_FOUND, "not found");
                    }
                    let dir = {
                        let w = witness.lock().unwrap_or_else(|p| p.into_inner());
                        w.store().dir().to_owned()
                    };
                    read_file(
                        dir.join(origin_hash),
                        "text/plain; charset=utf-8",
                        "public, max-age=60",
                    )
                    .await
                }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_REQUEST_LEN))
}

fn http_client() -> Result<reqwest::Client, String> {
    // The process-wide rustls provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_RESPONSE_LEN {
            return Err("the response is too large".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A log read over HTTP(S) from a URL prefix (the directory that holds
/// `checkpoint` and `tile/`).
#[derive(Clone, Debug)]
pub struct HttpFetch {
    base: String,
    client: reqwest::Client,
}

impl HttpFetch {
    /// A fetcher for the log at `prefix`, e.g. `https://example.org/log`.
    pub fn new(prefix: &str) -> Result<HttpFetch, String> {
        Ok(HttpFetch {
            base: prefix.trim_end_matches('/').to_owned(),
            client: http_client()?,
        })
    }
}

impl Fetch for HttpFetch {
    async fn fetch(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        let failed = |reason: String| FetchError::Failed {
            path: path.to_owned(),
            reason,
        };
        let resp = self
            .client
            .get(format!("{}/{path}", self.base))
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        match resp.status() {
            s if s.is_success() => read_limited(resp).await.map_err(failed),
            StatusCode::NOT_FOUND => Err(FetchError::NotFound(path.to_owned())),
            s => Err(failed(format!("HTTP status {s}"))),
        }
    }
}

/// Where a log is read from: an `http://` or `https://` URL prefix, or a
/// directory (a local copy or mirror).
#[derive(Clone, Debug)]
pub enum LogSource {
    /// Over HTTP(S).
    Http(HttpFetch),
    /// From a directory.
    Dir(DirFetch),
}

impl LogSource {
    /// A URL prefix if `location` starts with `http://` or `https://`,
    /// otherwise a directory.
    pub fn new(location: &str) -> Result<LogSource, String> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Ok(LogSource::Http(HttpFetch::new(location)?))
        } else {
            Ok(LogSource::Dir(DirFetch(PathBuf::from(location))))
        }
    }
}

impl Fetch for LogSource {
    async fn fetch(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        match self {
            LogSource::Http(h) => h.fetch(path).await,
            LogSource::Dir(d) => d.fetch(path).await,
        }
    }
}

/// Why a witness did not cosign.
#[derive(Debug, thiserror::Error)]
pub enum WitnessClientError {
    /// The witness holds another size for the log (409); retry with a
    /// proof from that size.
    #[error("the witness's latest size for this log is {0}")]
    Conflict(u64),
    /// The witness answered with another error status.
    #[error("the witness refused with HTTP {status}: {body}")]
    Refused {
        /// The status code.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// The answer held no valid cosignature from the witness's key.
    #[error("the witness's answer holds no valid cosignature: {0}")]
    BadCosignature(NoteError),
    /// The request did not complete.
    #[error("cannot reach the witness: {0}")]
    Transport(String),
}

/// A client of one witness's `add-checkpoint`.
#[derive(Clone, Debug)]
pub struct WitnessClient {
    url: String,
    key: Verifier,
    client: reqwest::Client,
}

impl WitnessClient {
    /// A client for the witness at `prefix` whose cosigning key is `key`.
    pub fn new(prefix: &str, key: Verifier) -> Result<WitnessClient, String> {
        Ok(WitnessClient {
            url: format!("{}/add-checkpoint", prefix.trim_end_matches('/')),
            key,
            client: http_client()?,
        })
    }

    /// Where submissions go (`…/add-checkpoint`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The witness's cosigning key.
    pub fn key(&self) -> &Verifier {
        &self.key
    }

    /// Submits `checkpoint` with a consistency proof from `old_size`; on
    /// success returns the witness's verified cosignatures, ready for
    /// [`crate::LogWriter::add_cosignatures`].
    pub async fn add_checkpoint(
        &self,
        old_size: u64,
        proof: Vec<Hash>,
        checkpoint: &str,
    ) -> Result<Vec<NoteSignature>, WitnessClientError> {
        let body = AddCheckpoint {
            old_size,
            proof,
            checkpoint: checkpoint.as_bytes().to_vec(),
        }
        .to_bytes();
        let resp = self
            .client
            .post(&self.url)
            .body(body)
            .send()
            .await
            .map_err(|e| WitnessClientError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp)
            .await
            .map_err(WitnessClientError::Transport)?;
        if status == 409
            && let Some(size) = parse_conflict(&body)
        {
            return Err(WitnessClientError::Conflict(size));
        }
        if status != 200 {
            return Err(WitnessClientError::Refused {
                status,
                body: String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(500)
                    .collect(),
            });
        }
        let sigs = parse_cosignatures(&body).ok_or(WitnessClientError::BadCosignature(
            NoteError::MalformedSignature(1),
        ))?;
        // Check them the way a client will: on the checkpoint, with the key.
        let mut note = crate::note::Note::parse(checkpoint.as_bytes())
            .map_err(WitnessClientError::BadCosignature)?;
        for s in &sigs {
            note.add_signature(s.clone());
        }
        note.verify(std::slice::from_ref(&self.key))
            .map_err(WitnessClientError::BadCosignature)?;
        Ok(sigs
            .into_iter()
            .filter(|s| s.name == self.key.name() && s.key_id == self.key.key_id())
            .collect())
    }
}
