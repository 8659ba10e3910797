//! The connectivity manager: which route to the server to use, found by
//! racing candidates, remembered per route in the home.
//!
//! Candidates come from the signed directory, the server link and the
//! relays the member holds (added by hand or assigned by the server),
//! each a carrier and an endpoint; relays come last, as they are scarce
//! and shared. [`race`] starts the
//! best candidate, and the next one after [`Racing::stagger`] (about
//! 250 ms) without waiting for the first to fail — at once if it fails —
//! with at most [`Racing::max_in_flight`] attempts open; the first attempt
//! that completes the Noise handshake and is accepted by the server wins
//! and the others are dropped. Order: the route that worked last (sticky),
//! then routes not in backoff by priority, then routes in backoff (they are
//! tried last rather than never: when everything is blocked, a route that
//! failed a minute ago is as good a bet as any).
//!
//! Every failure is classified ([`Failure`]) and written to the home
//! (`routes`), with an exponential backoff per route; blocked routes are
//! reported to the server on the next connection (see
//! [`crate::Connection::report_routes`]). The manager never weakens the
//! session: whatever the carrier, success means the Noise handshake
//! authenticated the server's static key.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use postern_proto::link::ServerLink;
use postern_transport::carrier::{Carrier, Failure, Target};
use postern_transport::tls::{ClientTls, Verify};

use crate::home::RouteHealth;

pub use crate::now_ms;

/// Where a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The server link the home was set up with.
    Link,
    /// The signed directory.
    Directory,
    /// A relay the member holds.
    Relay,
}

/// One way to reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The carrier.
    pub carrier: Carrier,
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The WebSocket path (for [`Carrier::Wss`]).
    pub path: Option<String>,
    /// The TLS name to send; default: the host.
    pub sni: Option<String>,
    /// How to check the TLS certificate.
    pub verify: Verify,
    /// Lower is tried first.
    pub priority: u32,
    /// Where it came from.
    pub source: Source,
    /// The relay, for [`Carrier::Cloak`] routes.
    pub relay: Option<postern_proto::link::RelayLink>,
}

impl Candidate {
    /// `HOST:PORT` (IPv6 in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The route's name: `carrier://HOST:PORT[/PATH]`, the key of its
    /// health in the home and of blocked-endpoint reports.
    pub fn route(&self) -> String {
        format!(
            "{}://{}{}",
            self.carrier,
            self.addr(),
            self.path.as_deref().unwrap_or("")
        )
    }

    /// What to dial.
    pub fn target(&self) -> Target {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        Target {
            carrier: self.carrier,
            addr: self.addr(),
            path: self.path.clone().unwrap_or_else(|| "/".into()),
            tls: self.carrier.uses_tls().then(|| ClientTls {
                sni: self.sni.clone().unwrap_or_else(|| host.to_owned()),
                verify: self.verify,
            }),
            cloak: self.relay.as_ref().map(|r| postern_cloak::ClientConfig {
                secret: postern_cloak::Secret::from_bytes(r.secret),
                sni: r.sni.clone(),
            }),
        }
    }

    /// The route to a relay: a [`Carrier::Cloak`] candidate.
    pub fn from_relay(relay: &postern_proto::link::RelayLink, priority: u32) -> Option<Candidate> {
        let (host, port) = relay.host.rsplit_once(':')?;
        Some(Candidate {
            carrier: Carrier::Cloak,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: port.parse().ok()?,
            path: None,
            sni: Some(relay.sni.clone()),
            verify: Verify::System,
            priority,
            source: Source::Relay,
            relay: Some(relay.clone()),
        })
    }
}

/// The candidates a server link names, in its order: TCP, TLS, WebSocket,
/// QUIC.
pub fn candidates_from_link(link: &ServerLink) -> Vec<Candidate> {
    let verify = link.cert_sha256.map_or(Verify::System, Verify::Pinned);
    let mut out = Vec::new();
    let lists = [
        (Carrier::Tcp, &link.tcp),
        (Carrier::Tls, &link.tls),
        (Carrier::Wss, &link.wss),
        (Carrier::Quic, &link.quic),
    ];
    for (carrier, list) in lists {
        for endpoint in list {
            let (addr, path) = match endpoint.find('/') {
                Some(i) => (&endpoint[..i], Some(endpoint[i..].to_owned())),
                None => (endpoint.as_str(), None),
            };
            let Some((host, port)) = addr.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse() else { continue };
            out.push(Candidate {
                carrier,
                host: host.to_owned(),
                port,
                path,
                sni: link.sni.clone(),
                verify,
                priority: u32::try_from(out.len()).unwrap_or(u32::MAX),
                source: Source::Link,
                relay: None,
            });
        }
    }
    out
}

/// The routes a verified directory lists, all carriers, with the
/// directory's priorities (lower first). A route's certificate is pinned
/// by the directory's `cert_sha256`, else by the link's pin, else checked
/// against the system's roots.
pub fn candidates_from_directory(
    directory: &postern_proto::directory::Directory,
    link: &ServerLink,
) -> Vec<Candidate> {
    use postern_proto::directory::Carrier as Listed;
    directory
        .endpoints_by_priority()
        .into_iter()
        .map(|e| Candidate {
            carrier: match e.carrier {
                Listed::Tcp => Carrier::Tcp,
                Listed::Tls => Carrier::Tls,
                Listed::Wss => Carrier::Wss,
                Listed::Quic => Carrier::Quic,
            },
            host: e.host.clone(),
            port: e.port,
            path: e.path.clone(),
            sni: e.sni.clone().or_else(|| link.sni.clone()),
            verify: e
                .cert_sha256
                .or(link.cert_sha256)
                .map_or(Verify::System, Verify::Pinned),
            priority: e.priority,
            source: Source::Directory,
            relay: None,
        })
        .collect()
}

/// How the race runs.
#[derive(Clone, Copy, Debug)]
pub struct Racing {
    /// How long to wait on an attempt before starting the next.
    pub stagger: Duration,
    /// Attempts open at once at most.
    pub max_in_flight: usize,
    /// How long one attempt (carrier and handshake) may take.
    pub attempt_timeout: Duration,
    /// First backoff after a failure; doubles per failure.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for Racing {
    fn default() -> Self {
        Racing {
            stagger: Duration::from_millis(250),
            max_in_flight: 4,
            attempt_timeout: crate::CONNECT_TIMEOUT,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl Racing {
    /// The backoff after `failures` consecutive failures.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Orders `candidates` for a race: the sticky route first (unless it is in
/// backoff), then those not in backoff by priority, then those in backoff
/// by when they may be tried again.
pub fn order(
    mut candidates: Vec<Candidate>,
    health: &[RouteHealth],
    sticky: Option<&str>,
    now_ms: i64,
) -> Vec<Candidate> {
    let of = |c: &Candidate| health.iter().find(|h| h.route == c.route());
    candidates.sort_by_key(|c| {
        let h = of(c);
        let waiting = h.map(|h| h.next_try_ms > now_ms).unwrap_or(false);
        let is_sticky = sticky == Some(c.route().as_str()) && !waiting;
        (
            !is_sticky,
            waiting,
            if waiting {
                h.map(|h| h.next_try_ms).unwrap_or(0)
            } else {
                0
            },
            c.priority,
        )
    });
    candidates
}

/// One failed attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The route.
    pub route: String,
    /// Its class.
    pub failure: Failure,
    /// What happened, for people.
    pub error: String,
}

/// Races `candidates` (in order) with `connect`; returns the first success
/// and every failure seen before it (attempts still running when one wins
/// are dropped, not counted). `Err` holds every failure when none worked.
pub async fn race<T, F, Fut>(
    candidates: &[Candidate],
    racing: &Racing,
    connect: F,
) -> Result<(Candidate, T, Vec<Attempt>), Vec<Attempt>>
where
    F: Fn(Candidate) -> Fut,
    Fut: Future<Output = Result<T, (Failure, String)>> + Send,
    T: Send,
{
    type Running<'a, T> =
        Pin<Box<dyn Future<Output = (usize, Result<T, (Failure, String)>)> + Send + 'a>>;
    let mut next = 0usize;
    let mut running: FuturesUnordered<Running<'_, T>> = FuturesUnordered::new();
    let mut failures = Vec::new();
    let start = |i: usize| -> Running<'_, T> {
        let attempt = connect(candidates[i].clone());
        let timeout = racing.attempt_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => (i, r),
                Err(_) => (i, Err((Failure::Timeout, "no answer in time".to_owned()))),
            }
        })
    };
    loop {
        if running.is_empty() {
            if next >= candidates.len() {
                return Err(failures);
            }
            running.push(start(next));
            next += 1;
        }
        let more = next < candidates.len() && running.len() < racing.max_in_flight.max(1);
        let done = if more {
            match tokio::time::timeout(racing.stagger, running.next()).await {
                Ok(done) => done,
                Err(_) => {
                    running.push(start(next));
                    next += 1;
                    continue;
                }
            }
        } else {
            running.next().await
        };
        let Some((i, result)) = done else { continue };
        let candidate = &candidates[i];
        match result {
            Ok(value) => return Ok((candidate.clone(), value, failures)),
            Err((failure, error)) => {
                tracing::debug!(route = %candidate.route(), %failure, %error, "route failed");
                failures.push(Attempt {
                    route: candidate.route(),
                    failure,
                    error,
                });
                // A failure frees its slot: start the next one now.
                if next < candidates.len() {
                    running.push(start(next));
                    next += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn cand(carrier: Carrier, port: u16) -> Candidate {
        Candidate {
            carrier,
            host: "127.0.0.1".into(),
            port,
            path: None,
            sni: None,
            verify: Verify::System,
            priority: u32::from(port),
            source: Source::Link,
            relay: None,
        }
    }

    #[tokio::test]
    async fn a_slow_first_candidate_does_not_hold_up_the_second() {
        let cands = vec![cand(Carrier::Tcp, 1), cand(Carrier::Tls, 2)];
        let start = Instant::now();
        let racing = Racing::default();
        let (won, (), failures) = race(&cands, &racing, |c| async move {
            if c.port == 1 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err((Failure::Timeout, "blackholed".into()))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(won.port, 2);
        assert!(failures.is_empty());
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn failures_start_the_next_at_once_and_all_are_reported() {
        let cands: Vec<_> = (1..=5).map(|p| cand(Carrier::Tcp, p)).collect();
        let start = Instant::now();
        let err = race(&cands, &Racing::default(), |c| async move {
            Err::<(), _>((Failure::Refused, format!("port {}", c.port)))
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 5);
        assert!(start.elapsed() < Duration::from_millis(200));
        assert!(err.iter().all(|a| a.failure == Failure::Refused));
    }

    #[tokio::test]
    async fn no_more_than_the_cap_run_at_once() {
        let cands: Vec<_> = (1..=10).map(|p| cand(Carrier::Tcp, p)).collect();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let racing = Racing {
            stagger: Duration::from_millis(10),
            max_in_flight: 3,
            attempt_timeout: Duration::from_millis(100),
            ..Racing::default()
        };
        let err = race(&cands, &racing, |_| {
            let open = open.clone();
            let peak = peak.clone();
            async move {
                let now = open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                // Never finishes: the attempt timeout ends it.
                struct Close(std::sync::Arc<std::sync::atomic::AtomicUsize>);
                impl Drop for Close {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _close = Close(open);
                std::future::pending::<Result<(), (Failure, String)>>().await
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 10);
        assert!(err.iter().all(|a| a.failure == Failure::Timeout));
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn the_sticky_route_goes_first_and_routes_in_backoff_last() {
        let cands = vec![
            cand(Carrier::Tcp, 1),
            cand(Carrier::Tls, 2),
            cand(Carrier::Quic, 3),
        ];
        let health = vec![RouteHealth {
            route: cands[0].route(),
            failures: 1,
            next_try_ms: 2_000,
            ..Default::default()
        }];
        let ordered = order(cands.clone(), &health, Some(&cands[2].route()), 1_000);
        let ports: Vec<u16> = ordered.iter().map(|c| c.port).collect();
        assert_eq!(ports, [3, 2, 1]);
        // Once the backoff is over, priority order again (sticky first).
        let ordered = order(cands.clone(), &health, None, 3_000);
        let ports: Vec<u16> = ordered.iter().map(|c| c.port).collect();
        assert_eq!(ports, [1, 2, 3]);
        // A sticky route in backoff loses its place.
        let ordered = order(cands.clone(), &health, Some(&cands[0].route()), 1_000);
        assert_eq!(ordered[2].port, 1);
    }

    #[test]
    fn backoff_doubles_up_to_a_limit() {
        let r = Racing::default();
        assert_eq!(r.backoff(1), Duration::from_secs(2));
        assert_eq!(r.backoff(2), Duration::from_secs(4));
        assert_eq!(r.backoff(40), Duration::from_secs(300));
    }

    #[test]
    fn a_link_yields_one_candidate_per_endpoint() {
        let link: ServerLink = format!(
            "postern://server?v=1&tcp=a.example:1&tls=b.example:2&wss=c.example:3/ws&quic=[::1]:4&certsha256={}&key={}",
            "ab".repeat(32),
            "A".repeat(43)
        )
        .parse()
        .unwrap();
        let cands = candidates_from_link(&link);
        let routes: Vec<String> = cands.iter().map(Candidate::route).collect();
        assert_eq!(
            routes,
            [
                "tcp://a.example:1",
                "tls://b.example:2",
                "wss://c.example:3/ws",
                "quic://[::1]:4"
            ]
        );
        assert_eq!(cands[1].verify, Verify::Pinned([0xab; 32]));
        let t = cands[3].target();
        assert_eq!(t.addr, "[::1]:4");
        assert_eq!(t.tls.unwrap().sni, "::1");
        assert_eq!(cands[2].target().path, "/ws");
    }
}
