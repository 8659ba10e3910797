//! The relay's counters, served in the Prometheus text format on a local
//! metrics port (`--metrics 127.0.0.1:9477`, off by default).
//!
//! Nothing here names a client: there are no per-address or per-country
//! series, only totals.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Why a connection was sent to the cover, as a metric label.
pub const SPLICE_REASONS: [&str; 12] = [
    "not_tls",
    "not_client_hello",
    "too_large",
    "malformed",
    "wrong_sni",
    "bad_authenticator",
    "stale",
    "replay",
    "early_close",
    "cover_first",
    "retired",
    "other",
];

/// The relay's counters.
#[derive(Default)]
pub struct Metrics {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now (relayed and spliced).
    pub open: AtomicU64,
    /// Relayed sessions open now.
    pub relayed_open: AtomicU64,
    /// Clients that completed the cloak handshake.
    pub relayed: AtomicU64,
    /// Bytes of inner (Noise) traffic from clients to the server.
    pub bytes_up: AtomicU64,
    /// Bytes of inner traffic from the server to clients.
    pub bytes_down: AtomicU64,
    /// Authenticated hellos that were replays.
    pub replays: AtomicU64,
    /// Connections sent to the cover, by [`SPLICE_REASONS`] index.
    pub splices: [AtomicU64; SPLICE_REASONS.len()],
    /// Hellos refused because the replay cache was full.
    pub replay_cache_full: AtomicU64,
    /// Authenticated clients that failed the rest of the handshake.
    pub handshake_failures: AtomicU64,
    /// Failures to reach the server.
    pub server_failures: AtomicU64,
    /// Failures to reach the cover.
    pub cover_failures: AtomicU64,
    /// Times the accept loop waited for a free connection slot.
    pub at_capacity: AtomicU64,
}

impl Metrics {
    /// Counts a connection sent to the cover for `reason` (one of
    /// [`SPLICE_REASONS`]; anything else counts as "other").
    pub fn splice(&self, reason: &str) {
        let i = SPLICE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(SPLICE_REASONS.len() - 1);
        self.splices[i].fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections went to the cover for `reason`.
    pub fn splices_for(&self, reason: &str) -> u64 {
        SPLICE_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.splices[i].load(Ordering::Relaxed))
    }

    /// TLS hellos refused for their authenticator, timestamp or SNI.
    pub fn auth_failures(&self) -> u64 {
        SPLICE_REASONS
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(**r, "bad_authenticator" | "stale" | "wrong_sni"))
            .map(|(i, _)| self.splices[i].load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            "postern_relay_connections_total",
            "Connections accepted.",
            "counter",
            &self.connections,
        );
        counter(
            "postern_relay_connections_open",
            "Connections open now, relayed or sent to the cover.",
            "gauge",
            &self.open,
        );
        counter(
            "postern_relay_sessions_open",
            "Relayed sessions open now.",
            "gauge",
            &self.relayed_open,
        );
        counter(
            "postern_relay_sessions_total",
            "Clients that completed the cloak handshake.",
            "counter",
            &self.relayed,
        );
        counter(
            "postern_relay_bytes_up_total",
            "Ciphertext bytes forwarded from clients to the server.",
            "counter",
            &self.bytes_up,
        );
        counter(
            "postern_relay_bytes_down_total",
            "Ciphertext bytes forwarded from the server to clients.",
            "counter",
            &self.bytes_down,
        );
        counter(
            "postern_relay_replays_total",
            "Authenticated first flights seen before (sent to the cover).",
            "counter",
            &self.replays,
        );
        counter(
            "postern_relay_replay_cache_full_total",
            "Clients refused because the replay cache was full.",
            "counter",
            &self.replay_cache_full,
        );
        counter(
            "postern_relay_handshake_failures_total",
            "Authenticated clients that failed the rest of the handshake.",
            "counter",
            &self.handshake_failures,
        );
        counter(
            "postern_relay_server_failures_total",
            "Failures to reach the server.",
            "counter",
            &self.server_failures,
        );
        counter(
            "postern_relay_cover_failures_total",
            "Failures to reach the cover site.",
            "counter",
            &self.cover_failures,
        );
        counter(
            "postern_relay_at_capacity_total",
            "Times the relay stopped accepting until a connection slot freed.",
            "counter",
            &self.at_capacity,
        );
        let _ = writeln!(
            out,
            "# HELP postern_relay_cover_splices_total Connections sent to the cover, by reason.\n\
             # TYPE postern_relay_cover_splices_total counter"
        );
        for (i, reason) in SPLICE_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "postern_relay_cover_splices_total{{reason=\"{reason}\"}} {}",
                self.splices[i].load(Ordering::Relaxed)
            );
        }
        let failures = self.auth_failures();
        let _ = writeln!(
            out,
            "# HELP postern_relay_auth_failures_total TLS hellos with a missing, wrong or stale authenticator or another SNI.\n\
             # TYPE postern_relay_auth_failures_total counter\n\
             postern_relay_auth_failures_total {failures}"
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Any
/// other path is a 404; requests are read with a 5 s limit and at most
/// 4 KiB.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let got = stream.read(&mut buf[n..]).await?;
                    if got == 0 {
                        break;
                    }
                    n += got;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let response = if head.starts_with("GET /metrics ") {
                let body = metrics.render();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds the metrics port (refusing anything but a loopback address
/// unless `public` is set: the counters are for the volunteer, not the
/// world).
pub async fn bind(addr: SocketAddr, public: bool) -> anyhow::Result<TcpListener> {
    anyhow::ensure!(
        public || addr.ip().is_loopback(),
        "the metrics port {addr} is not on loopback; metrics would be visible to anyone \
         (and would tell a censor this is a relay). Use 127.0.0.1:PORT, or pass \
         --metrics-public if a firewall guards it"
    );
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))
}
