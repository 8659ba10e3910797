//! A censor in a box, for tests and benchmarks.
//!
//! [`Censor`] runs in-process proxies on loopback, one per destination: a
//! client dials the proxy's address instead of the real one, and the censor
//! does to that route what a national firewall does — let it through,
//! blackhole it, reset it, delay it, freeze it after N bytes, throttle it to
//! N kbit/s, or drop its UDP. Rules change while connections are open and
//! apply to them at once: a route can be cut in the middle of a
//! conversation.
//!
//! It only moves bytes; it never parses them. It is a test tool: it
//! trusts its caller and is not hardened against hostile peers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the censor does to a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Let everything through.
    Pass,
    /// Accept connections but let nothing through, in either direction;
    /// open connections go silent for good. UDP datagrams are dropped.
    Blackhole,
    /// Reset new connections as soon as they open, and open ones at once.
    Reset,
    /// Hold every chunk (TCP) or datagram (UDP) this long.
    Delay(Duration),
    /// Let the first N bytes of each connection through (both directions
    /// counted), then nothing more: the connection stays open, silent.
    FreezeAfter(u64),
    /// At most this many kilobits per second, per connection and direction.
    Throttle(u32),
    /// Drop every UDP datagram; TCP passes.
    DropUdp,
}

/// Size of the chunks the proxy moves; throttling and freezing work at
/// this granularity.
const CHUNK: usize = 1024;

/// The censor: a set of proxied destinations and their rules.
#[derive(Clone, Default)]
pub struct Censor {
    routes: Arc<Mutex<HashMap<SocketAddr, Route>>>,
}

struct Route {
    rule: watch::Sender<Rule>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Route {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Censor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = lock(&self.routes);
        f.debug_map()
            .entries(routes.iter().map(|(a, r)| (a, *r.rule.borrow())))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Censor {
    /// A censor with no routes.
    pub fn new() -> Censor {
        Censor::default()
    }

    fn route(&self, upstream: SocketAddr) -> watch::Receiver<Rule> {
        let mut routes = lock(&self.routes);
        let route = routes.entry(upstream).or_insert_with(|| Route {
            rule: watch::channel(Rule::Pass).0,
            tasks: Vec::new(),
        });
        route.rule.subscribe()
    }

    fn keep(&self, upstream: SocketAddr, task: JoinHandle<()>) {
        if let Some(route) = lock(&self.routes).get_mut(&upstream) {
            route.tasks.push(task);
        }
    }

    /// Proxies TCP to `upstream`; returns the loopback address to dial.
    pub async fn tcp(&self, upstream: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let rule = self.route(upstream);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tcp_connection(client, upstream, rule.clone()));
            }
        });
        self.keep(upstream, task);
        Ok(local)
    }

    /// Proxies UDP to `upstream`; returns the loopback address to send to.
    pub async fn udp(&self, upstream: SocketAddr) -> io::Result<SocketAddr> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let local = socket.local_addr()?;
        let rule = self.route(upstream);
        let task = tokio::spawn(udp_proxy(socket, upstream, rule));
        self.keep(upstream, task);
        Ok(local)
    }

    /// Sets the rule for every proxy to `upstream` (TCP and UDP), applied
    /// to open connections at once.
    pub fn set(&self, upstream: SocketAddr, rule: Rule) {
        let mut routes = lock(&self.routes);
        let route = routes.entry(upstream).or_insert_with(|| Route {
            rule: watch::channel(Rule::Pass).0,
            tasks: Vec::new(),
        });
        route.rule.send_replace(rule);
    }

    /// Sets `rule` for every destination.
    pub fn set_all(&self, rule: Rule) {
        for route in lock(&self.routes).values() {
            route.rule.send_replace(rule);
        }
    }

    /// The rule in force for `upstream` ([`Rule::Pass`] if none was set).
    pub fn rule(&self, upstream: SocketAddr) -> Rule {
        lock(&self.routes)
            .get(&upstream)
            .map(|r| *r.rule.borrow())
            .unwrap_or(Rule::Pass)
    }
}

/// Resets `stream`: closes it with an RST rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn tcp_connection(client: TcpStream, upstream: SocketAddr, mut rule: watch::Receiver<Rule>) {
    let _ = client.set_nodelay(true);
    let first = *rule.borrow_and_update();
    match first {
        Rule::Reset => return reset(client),
        Rule::Blackhole => return hold(client, rule).await,
        _ => {}
    }
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => return reset(client),
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let moved = Arc::new(AtomicU64::new(0));
    let up = pump(client_read, server_write, rule.clone(), moved.clone());
    let down = pump(server_read, client_write, rule, moved);
    let (up, down) = tokio::join!(up, down);
    // Either direction ended on a reset: reset both sockets.
    if up.2 || down.2 {
        if let (Some(r), Some(w)) = (up.0, down.1)
            && let Ok(s) = r.reunite(w)
        {
            reset(s);
        }
        if let (Some(r), Some(w)) = (down.0, up.1)
            && let Ok(s) = r.reunite(w)
        {
            reset(s);
        }
    }
}

/// Keeps a blackholed connection open and silent until the client gives up
/// (or the rule turns to a reset).
async fn hold(mut client: TcpStream, mut rule: watch::Receiver<Rule>) {
    let mut sink = [0u8; CHUNK];
    loop {
        tokio::select! {
            read = client.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = rule.changed() => {
                if changed.is_err() || *rule.borrow() == Rule::Reset {
                    return reset(client);
                }
            }
        }
    }
}

/// Moves bytes from `from` to `to` under the rule. Returns the halves
/// back (to reset them) and whether the rule said reset.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rule: watch::Receiver<Rule>,
    moved: Arc<AtomicU64>,
) -> (Option<OwnedReadHalf>, Option<OwnedWriteHalf>, bool) {
    let mut buf = vec![0u8; CHUNK];
    let mut silent = false;
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            changed = rule.changed() => {
                if changed.is_err() {
                    return (Some(from), Some(to), false);
                }
                if *rule.borrow() == Rule::Reset {
                    return (Some(from), Some(to), true);
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return (Some(from), Some(to), false);
            }
            Ok(n) => n,
        };
        let current = *rule.borrow();
        let chunk = buf.get(..n).unwrap_or_default();
        let allowed = match current {
            Rule::Reset => return (Some(from), Some(to), true),
            Rule::Blackhole => 0,
            Rule::FreezeAfter(limit) => {
                let before = moved.fetch_add(n as u64, Ordering::Relaxed);
                usize::try_from(limit.saturating_sub(before))
                    .unwrap_or(usize::MAX)
                    .min(n)
            }
            _ => n,
        };
        if silent || allowed == 0 {
            // Once bytes were dropped the stream cannot resume: stay silent,
            // but keep reading so a close by either end still ends the pump.
            silent = true;
            continue;
        }
        match current {
            Rule::Delay(d) => tokio::time::sleep(d).await,
            Rule::Throttle(kbit) => {
                let micros = (allowed as u64 * 8 * 1000) / u64::from(kbit.max(1));
                tokio::time::sleep(Duration::from_micros(micros)).await;
            }
            _ => {}
        }
        if to
            .write_all(chunk.get(..allowed).unwrap_or_default())
            .await
            .is_err()
        {
            return (Some(from), Some(to), false);
        }
        if allowed < n {
            silent = true;
        }
    }
}

/// A UDP proxy: one upstream socket per client address, datagrams moved
/// under the rule in both directions.
async fn udp_proxy(socket: Arc<UdpSocket>, upstream: SocketAddr, rule: watch::Receiver<Rule>) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let current = *rule.borrow();
        if !passes_udp(current) {
            continue;
        }
        let flow = match flows.get(&client) {
            Some(f) => f.clone(),
            None => {
                let Ok(out) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if out.connect(upstream).await.is_err() {
                    continue;
                }
                let out = Arc::new(out);
                tokio::spawn(udp_back(out.clone(), socket.clone(), client, rule.clone()));
                flows.insert(client, out.clone());
                out
            }
        };
        let datagram = buf.get(..n).unwrap_or_default().to_vec();
        if let Rule::Delay(d) = current {
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = flow.send(&datagram).await;
            });
        } else {
            let _ = flow.send(&datagram).await;
        }
    }
}

fn passes_udp(rule: Rule) -> bool {
    !matches!(
        rule,
        Rule::DropUdp | Rule::Blackhole | Rule::Reset | Rule::FreezeAfter(_)
    )
}

async fn udp_back(
    out: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    rule: watch::Receiver<Rule>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = out.recv(&mut buf).await {
        let current = *rule.borrow();
        if !passes_udp(current) {
            continue;
        }
        if let Rule::Delay(d) = current {
            tokio::time::sleep(d).await;
        }
        let _ = socket
            .send_to(buf.get(..n).unwrap_or_default(), client)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, n: usize) -> io::Result<usize> {
        s.write_all(&vec![7u8; n]).await?;
        let mut got = vec![0u8; n];
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    #[tokio::test]
    async fn passes_then_resets_an_open_connection() {
        let censor = Censor::new();
        let server = echo().await;
        let proxy = censor.tcp(server).await.unwrap();
        let mut s = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(round_trip(&mut s, 5000).await.unwrap(), 5000);
        censor.set(server, Rule::Reset);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        // New connections are reset too.
        let mut s = TcpStream::connect(proxy).await.unwrap();
        assert!(round_trip(&mut s, 10).await.is_err());
        censor.set(server, Rule::Pass);
        let mut s = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(round_trip(&mut s, 10).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn freezes_after_n_bytes_and_blackholes() {
        let censor = Censor::new();
        let server = echo().await;
        let proxy = censor.tcp(server).await.unwrap();
        censor.set(server, Rule::FreezeAfter(16 * 1024));
        let mut s = TcpStream::connect(proxy).await.unwrap();
        // 4 KiB up and 4 KiB back: 8 KiB counted.
        assert_eq!(round_trip(&mut s, 4096).await.unwrap(), 4096);
        // The next 8 KiB up crosses the limit; the echo never fully returns.
        assert_eq!(
            round_trip(&mut s, 8192).await.map_err(|e| e.kind()),
            Err(io::ErrorKind::TimedOut)
        );
        censor.set(server, Rule::Blackhole);
        let mut s = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(
            round_trip(&mut s, 1).await.map_err(|e| e.kind()),
            Err(io::ErrorKind::TimedOut)
        );
    }

    #[tokio::test]
    async fn delays_and_throttles() {
        let censor = Censor::new();
        let server = echo().await;
        let proxy = censor.tcp(server).await.unwrap();
        censor.set(server, Rule::Delay(Duration::from_millis(100)));
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let start = Instant::now();
        round_trip(&mut s, 10).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(200));
        // 2 KiB at 40 kbit/s takes about 410 ms (both directions overlap).
        censor.set(server, Rule::Throttle(40));
        let start = Instant::now();
        s.write_all(&[1u8; 2048]).await.unwrap();
        let mut got = vec![0u8; 2048];
        s.read_exact(&mut got).await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(380) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn drops_udp_on_request() {
        let censor = Censor::new();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(&buf[..n], from).await;
            }
        });
        let proxy = censor.udp(upstream).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(proxy).await.unwrap();
        let mut buf = [0u8; 1500];
        client.send(b"hello").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(1), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
        censor.set(upstream, Rule::DropUdp);
        client.send(b"again").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf))
                .await
                .is_err()
        );
    }
}
