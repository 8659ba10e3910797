//! Telling the server about the relay: a signed registration (the link,
//! the operator key, capacity, regions) and, every `report_interval`, a
//! signed health report (totals only). The server answers with the
//! relay's state: `active` (handed out to members), `pending` (waiting for
//! an operator to trust the operator key) or `retired` — after which the
//! relay sends every connection to the cover, so that a retired relay is
//! just the website it always looked like.
//!
//! The operator key (Ed25519) lives in `DATA_DIR/operator-key`, made on
//! first start; give its public half (printed at start) to the server's
//! operators to have relays of this key trusted at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use postern_proto::link::RelayLink;
use postern_proto::pb;
use postern_proto::pb::request::Kind as Req;
use postern_proto::pb::response::Kind as Resp;

use crate::Shared;

/// Reads the operator key from `DATA_DIR/operator-key`, creating it
/// (mode 0600) on first start.
pub fn load_or_create_operator_key(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let mut seed = crate::load_or_create_key_file(
        &data_dir.join("operator-key"),
        "relay operator key",
        || SigningKey::generate(&mut rand::rngs::OsRng).to_bytes(),
    )?;
    let key = SigningKey::from_bytes(&seed);
    zeroize::Zeroize::zeroize(&mut seed);
    Ok(key)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Registers and reports once; returns the server's state and message.
pub(crate) async fn report_once(
    shared: &Shared,
    link: &RelayLink,
    key: &SigningKey,
) -> anyhow::Result<(String, String)> {
    let stream = shared.connect_server().await?;
    let noise = postern_proto::keys::NoiseKeypair::generate();
    let hello = pb::ClientHello {
        version: postern_proto::PROTOCOL_VERSION,
        software: concat!("postern-relay/", env!("CARGO_PKG_VERSION")).into(),
    };
    let timeout = Duration::from_secs(10);
    let (conn, _) = postern_transport::client_handshake(
        stream,
        &noise,
        &shared.server.noise_key,
        &hello,
        timeout,
    )
    .await
    .context("the server's handshake failed (is --server the right link?)")?;
    let (mut r, mut w) = conn.split();
    let mut call = async |id: u64, kind: Req| -> anyhow::Result<Resp> {
        w.send(&postern_proto::frame::envelope(
            id,
            pb::envelope::Body::Request(pb::Request { kind: Some(kind) }),
        ))
        .await?;
        loop {
            let env = tokio::time::timeout(timeout, r.recv())
                .await
                .map_err(|_| anyhow::anyhow!("the server did not answer in time"))??
                .context("the server closed the connection")?;
            if env.id == id
                && let Some(pb::envelope::Body::Response(resp)) = env.body
            {
                return resp.kind.context("an empty answer");
            }
        }
    };
    let state = |resp: Resp| match resp {
        Resp::RelayState(s) => Ok((s.state, s.message)),
        Resp::Error(e) => Err(anyhow::anyhow!("the server refused: {}", e.message)),
        _ => Err(anyhow::anyhow!("the server answered something else")),
    };
    let mut reg = pb::RegisterRelay {
        link: link.to_string(),
        capacity: u32::try_from(
            shared
                .config
                .capacity
                .unwrap_or(shared.config.max_connections),
        )
        .unwrap_or(u32::MAX),
        regions: shared.config.regions.clone(),
        timestamp_ms: now_ms(),
        ..Default::default()
    };
    postern_proto::relay_auth::sign_registration(key, &mut reg);
    state(call(1, Req::RegisterRelay(reg)).await?)?;
    let m = &shared.metrics;
    let mut health = pb::RelayHealthReport {
        host: link.host.clone(),
        timestamp_ms: now_ms(),
        connections_open: m.open.load(Ordering::Relaxed),
        sessions_total: m.relayed.load(Ordering::Relaxed),
        bytes_up: m.bytes_up.load(Ordering::Relaxed),
        bytes_down: m.bytes_down.load(Ordering::Relaxed),
        auth_failures: m.auth_failures(),
        replays: m.replays.load(Ordering::Relaxed),
        ..Default::default()
    };
    postern_proto::relay_auth::sign_health(key, &mut health);
    state(call(2, Req::RelayHealth(health)).await?)
}

/// Registers at start and reports every `report_interval_secs`, keeping
/// the relay's idea of its state current.
pub(crate) async fn report_loop(shared: Arc<Shared>, link: RelayLink, key: SigningKey) {
    let every = Duration::from_secs(shared.config.report_interval_secs.max(1));
    loop {
        match report_once(&shared, &link, &key).await {
            Ok((state, message)) => {
                let mut current = shared.server_state.write().expect("state lock");
                if *current != state {
                    tracing::info!(%state, "the server says: {message}");
                    *current = state.clone();
                }
                shared.retired.store(state == "retired", Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("cannot report to the server: {e:#}"),
        }
        tokio::time::sleep(every).await;
    }
}
