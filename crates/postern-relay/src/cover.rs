//! Learning the cover site's TLS server flight, so that the relay's answer
//! to its own clients has the cover's shape (cipher suite, key-share group,
//! extension order, record sizes).
//!
//! The relay sends the cover one of the cloak's Chrome-shaped hellos (with
//! a random, invalid authenticator: the cover is an ordinary web server)
//! and reads what comes back until the flight ends (a short quiet after
//! the first bytes), then hangs up. It does this at start-up and every
//! `cover_refresh` afterwards; if the cover cannot be reached it keeps the
//! last shape (or a typical one at start-up) and says so.

use std::time::Duration;

use anyhow::Context;
use postern_cloak::CoverShape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes read from the cover's flight.
const MAX_FLIGHT: usize = 64 * 1024;

/// Quiet time that ends the flight once bytes have come.
const QUIET: Duration = Duration::from_millis(300);

/// Connects to `cover`, sends a Chrome-shaped hello for `sni`, and learns
/// the shape of the answer, all within `timeout`.
pub async fn learn(cover: &str, sni: &str, timeout: Duration) -> anyhow::Result<CoverShape> {
    let flight = tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(cover)
            .await
            .with_context(|| format!("cannot connect to the cover site {cover}"))?;
        let hello = postern_cloak::probe_hello(sni, &mut rand::thread_rng());
        s.write_all(&hello).await?;
        let mut flight = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = if flight.is_empty() {
                s.read(&mut buf).await.map(Some)
            } else {
                match tokio::time::timeout(QUIET, s.read(&mut buf)).await {
                    Ok(r) => r.map(Some),
                    Err(_) => Ok(None),
                }
            };
            match read? {
                Some(0) | None => break,
                Some(n) => {
                    flight.extend_from_slice(&buf[..n]);
                    if flight.len() >= MAX_FLIGHT {
                        break;
                    }
                }
            }
        }
        anyhow::Ok(flight)
    })
    .await
    .map_err(|_| anyhow::anyhow!("the cover site {cover} did not answer a TLS hello in time"))??;
    anyhow::ensure!(
        !flight.is_empty(),
        "the cover site {cover} closed the connection without answering a TLS hello for {sni}"
    );
    postern_cloak::learn_cover_shape(&flight).map_err(|e| {
        anyhow::anyhow!(
            "the cover site {cover} did not answer like a TLS 1.3 server for {sni}: {e}"
        )
    })
}
