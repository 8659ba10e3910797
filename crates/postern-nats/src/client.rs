//! The tokio shell: one background task per client that connects, keeps
//! the connection alive, resubscribes after a reconnect, and hands
//! incoming messages to the caller.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::proto::{self, Parser, ServerOp};

/// What went wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The URL is not `nats://[user:pass@]host:port`.
    #[error("invalid NATS URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Connecting or the protocol handshake failed.
    #[error("cannot connect to NATS at {addr}: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        why: String,
    },
    /// The subject is empty, too long, or contains whitespace.
    #[error("invalid NATS subject {0:?}")]
    Subject(String),
    /// The client was closed.
    #[error("the NATS client is closed")]
    Closed,
}

/// How to reach NATS and how patient to be.
#[derive(Clone, Debug)]
pub struct Options {
    /// `nats://[user:pass@]host:port` (or `host:port`). TLS (`tls://`) is
    /// not supported: run NATS on a private network or behind a tunnel.
    pub url: String,
    /// The connection name the server shows in its monitoring.
    pub name: String,
    /// Timeout for one connection attempt including the handshake.
    pub connect_timeout: Duration,
    /// How often to PING an idle server; two unanswered PINGs drop the
    /// connection and start a reconnect.
    pub ping_interval: Duration,
    /// Longest wait between reconnection attempts (they back off from
    /// 100 ms up to this).
    pub max_backoff: Duration,
    /// Publishes and subscription changes queued for the background task;
    /// beyond this, publishes are dropped (at most once) and counted.
    pub queue: usize,
}

impl Options {
    /// Defaults for `url`: 5 s connect timeout, PING every 20 s, backoff up
    /// to 2 s, a queue of 65,536 operations.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Options {
            url: url.into(),
            name: name.into(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            max_backoff: Duration::from_secs(2),
            queue: 65_536,
        }
    }
}

/// What the background task reports, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message on a subscribed subject.
    Message {
        /// The subject it was published on.
        subject: String,
        /// The subscription it matched.
        sid: u64,
        /// Its bytes.
        payload: Bytes,
    },
    /// Connected again after losing the connection; subscriptions are
    /// restored. Messages published meanwhile are lost (NATS core is at
    /// most once): callers recheck whatever those messages would have
    /// told them.
    Reconnected,
    /// The connection was lost; the client keeps trying to reconnect.
    Disconnected(String),
    /// Events were dropped because the receiver fell behind; as after a
    /// reconnect, recheck.
    Lagged,
}

enum Command {
    Publish(String, Bytes),
    Subscribe(u64),
    Unsubscribe(u64),
    Flush(oneshot::Sender<()>),
}

struct Shared {
    subs: Mutex<HashMap<u64, String>>,
    next_sid: AtomicU64,
    connected: AtomicBool,
    dropped: AtomicU64,
    lagged: AtomicBool,
}

/// A NATS core client; cheap to clone. Dropping the last clone stops the
/// background task.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the events of a client arrive.
pub type Events = mpsc::Receiver<Event>;

/// Events buffered before the receiver is considered lagging.
const EVENT_QUEUE: usize = 65_536;

struct Target {
    addr: String,
    user: Option<(String, String)>,
}

fn parse_url(url: &str) -> Result<Target, NatsError> {
    let bad = |why| NatsError::Url {
        url: url.to_owned(),
        why,
    };
    let rest = if let Some(r) = url.strip_prefix("nats://") {
        r
    } else if url.starts_with("tls://") {
        return Err(bad(
            "TLS is not supported; reach NATS over a private network",
        ));
    } else if url.contains("://") {
        return Err(bad("the scheme must be nats://"));
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((creds, hp)) => {
            let (u, p) = creds
                .split_once(':')
                .ok_or_else(|| bad("credentials must be user:password"))?;
            (Some((u.to_owned(), p.to_owned())), hp)
        }
        None => (None, rest),
    };
    if hostport.is_empty() || hostport.contains('/') {
        return Err(bad("expected host:port"));
    }
    let addr = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else if hostport.contains(':') && !hostport.starts_with('[') {
        return Err(bad("the port is not a number"));
    } else {
        format!("{hostport}:4222")
    };
    Ok(Target { addr, user })
}

impl Client {
    /// Connects (waiting for the first connection, so a wrong URL or a
    /// server that is down is reported at once), then keeps the connection
    /// up in the background.
    pub async fn connect(opts: Options) -> Result<(Client, Events), NatsError> {
        let target = parse_url(&opts.url)?;
        let stream = connect_once(&target, &opts).await?;
        let (commands, rx) = mpsc::channel(opts.queue.max(1));
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            subs: Mutex::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
            connected: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            lagged: AtomicBool::new(false),
        });
        let task = tokio::spawn(run(target, opts, stream, rx, events_tx, shared.clone()));
        Ok((
            Client {
                commands,
                shared,
                _task: Arc::new(TaskGuard(task)),
            },
            events,
        ))
    }

    /// Publishes `payload` on `subject`, at most once: while disconnected,
    /// or when the queue is full, the publish is dropped and counted
    /// ([`Client::dropped`]).
    pub fn publish(&self, subject: &str, payload: Bytes) -> Result<(), NatsError> {
        if !proto::valid_subject(subject) || payload.len() > proto::MAX_PAYLOAD {
            return Err(NatsError::Subject(subject.to_owned()));
        }
        if !self.shared.connected.load(Ordering::Relaxed) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self
            .commands
            .try_send(Command::Publish(subject.to_owned(), payload))
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NatsError::Closed),
        }
    }

    /// Subscribes to `subject` (wildcards allowed) and returns the
    /// subscription id that its [`Event::Message`]s carry. The
    /// subscription survives reconnects until [`Client::unsubscribe`].
    pub fn subscribe(&self, subject: &str) -> Result<u64, NatsError> {
        if !proto::valid_subject(subject) {
            return Err(NatsError::Subject(subject.to_owned()));
        }
        let sid = self.shared.next_sid.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.subs).insert(sid, subject.to_owned());
        // If the queue is full the subscription is still recorded and is
        // sent at the next reconnect; a full queue means trouble anyway.
        self.send_control(Command::Subscribe(sid));
        Ok(sid)
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, sid: u64) {
        if lock(&self.shared.subs).remove(&sid).is_some() {
            self.send_control(Command::Unsubscribe(sid));
        }
    }

    fn send_control(&self, cmd: Command) {
        if self.commands.try_send(cmd).is_err() {
            tracing::warn!("NATS command queue full; the change applies at the next reconnect");
        }
    }

    /// Waits until the server has processed everything sent before (a
    /// PING/PONG round trip). Fails if the connection is down.
    pub async fn flush(&self) -> Result<(), NatsError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Flush(tx))
            .await
            .map_err(|_| NatsError::Closed)?;
        rx.await.map_err(|_| NatsError::Closed)
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Publishes dropped so far (disconnected or queue full).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Subscriptions held.
    pub fn subscriptions(&self) -> usize {
        lock(&self.shared.subs).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection attempt: TCP, the server's INFO, our CONNECT, and a
/// PING answered by PONG (so a refused CONNECT is reported here).
async fn connect_once(target: &Target, opts: &Options) -> Result<Conn, NatsError> {
    let fail = |why: String| NatsError::Connect {
        addr: target.addr.clone(),
        why,
    };
    let attempt = async {
        let stream = TcpStream::connect(&target.addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        stream.set_nodelay(true).ok();
        let mut conn = Conn {
            stream,
            parser: Parser::new(),
        };
        match conn.read_op().await.map_err(fail)? {
            ServerOp::Info(_) => {}
            other => return Err(fail(format!("expected INFO, got {other:?}"))),
        }
        let mut out = BytesMut::new();
        let user = target.user.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        proto::encode_connect(&proto::connect_json(&opts.name, user), &mut out);
        proto::encode_ping(&mut out);
        conn.stream
            .write_all(&out)
            .await
            .map_err(|e| fail(e.to_string()))?;
        loop {
            match conn.read_op().await.map_err(fail)? {
                ServerOp::Pong => return Ok(conn),
                ServerOp::Err(e) => return Err(fail(format!("the server refused: {e}"))),
                ServerOp::Ping => {
                    let mut out = BytesMut::new();
                    proto::encode_pong(&mut out);
                    conn.stream
                        .write_all(&out)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| fail("timed out".into()))?
}

struct Conn {
    stream: TcpStream,
    parser: Parser,
}

impl Conn {
    async fn read_op(&mut self) -> Result<ServerOp, String> {
        loop {
            if let Some(op) = self.parser.next_op().map_err(|e| e.to_string())? {
                return Ok(op);
            }
            let n = self
                .stream
                .read_buf(self.parser.buffer())
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
        }
    }
}

async fn run(
    target: Target,
    opts: Options,
    mut conn: Conn,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
) {
    let mut first = true;
    loop {
        shared.connected.store(true, Ordering::Relaxed);
        if !first {
            tracing::info!(addr = %target.addr, "reconnected to NATS");
            emit(&events, &shared, Event::Reconnected).await;
        }
        first = false;
        let why = serve(&mut conn, &opts, &mut commands, &events, &shared).await;
        shared.connected.store(false, Ordering::Relaxed);
        let Some(why) = why else { return };
        tracing::warn!(addr = %target.addr, error = %why, "lost the NATS connection; reconnecting");
        emit(&events, &shared, Event::Disconnected(why)).await;
        let mut backoff = Duration::from_millis(100);
        conn = loop {
            // Publishes meanwhile are lost; subscription changes are in
            // the shared map and flushes fail.
            while let Ok(cmd) = commands.try_recv() {
                if let Command::Publish(..) = cmd {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if commands.is_closed() && events.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            match connect_once(&target, &opts).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!(error = %e, "NATS reconnect failed");
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
            }
        };
    }
}

async fn emit(events: &mpsc::Sender<Event>, shared: &Shared, event: Event) {
    if shared.lagged.swap(false, Ordering::Relaxed) {
        let _ = events.send(Event::Lagged).await;
    }
    let _ = events.send(event).await;
}

/// Runs one connection until it fails (`Some(why)`) or the client is
/// dropped (`None`).
async fn serve(
    conn: &mut Conn,
    opts: &Options,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<Event>,
    shared: &Shared,
) -> Option<String> {
    let mut out = BytesMut::new();
    // Subscriptions this connection has told the server about.
    let mut sent: HashSet<u64> = HashSet::new();
    let current: Vec<(u64, String)> = lock(&shared.subs)
        .iter()
        .map(|(s, n)| (*s, n.clone()))
        .collect();
    for (sid, subject) in current {
        proto::encode_sub(&subject, sid, &mut out);
        sent.insert(sid);
    }
    // Waiters for PONGs, in order; `None` for keepalive PINGs.
    let mut pongs: VecDeque<Option<oneshot::Sender<()>>> = VecDeque::new();
    let mut ping = tokio::time::interval(opts.ping_interval);
    ping.reset();
    loop {
        if !out.is_empty() {
            if let Err(e) = conn.stream.write_all(&out).await {
                return Some(e.to_string());
            }
            out.clear();
            if out.capacity() > 64 * 1024 {
                out = BytesMut::new();
            }
        }
        tokio::select! {
            cmd = commands.recv() => {
                let cmd = cmd?;
                apply(cmd, shared, &mut sent, &mut pongs, &mut out);
                // Coalesce whatever else is queued into one write.
                while out.len() < 64 * 1024 {
                    match commands.try_recv() {
                        Ok(cmd) => apply(cmd, shared, &mut sent, &mut pongs, &mut out),
                        Err(_) => break,
                    }
                }
            }
            read = conn.stream.read_buf(conn.parser.buffer()) => {
                match read {
                    Ok(0) => return Some("the server closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return Some(e.to_string()),
                }
                loop {
                    match conn.parser.next_op() {
                        Ok(None) => break,
                        Ok(Some(ServerOp::Ping)) => proto::encode_pong(&mut out),
                        Ok(Some(ServerOp::Pong)) => {
                            if let Some(Some(waiter)) = pongs.pop_front() {
                                let _ = waiter.send(());
                            }
                        }
                        Ok(Some(ServerOp::Msg { subject, sid, payload, .. })) => {
                            if !sent.contains(&sid) {
                                continue;
                            }
                            let event = Event::Message { subject, sid, payload };
                            // A full queue loses the event; the receiver is
                            // told (Lagged) as soon as there is room again.
                            let lost = events.try_send(event).is_err()
                                || (shared.lagged.swap(false, Ordering::Relaxed)
                                    && events.try_send(Event::Lagged).is_err());
                            if lost {
                                shared.lagged.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(Some(ServerOp::Err(e))) => {
                            // Permission errors leave the connection open;
                            // everything else closes it on the server's side.
                            tracing::warn!(error = %e, "NATS server error");
                            if !e.to_ascii_lowercase().contains("permission") {
                                return Some(format!("server error: {e}"));
                            }
                        }
                        Ok(Some(ServerOp::Info(_) | ServerOp::Ok)) => {}
                        Err(e) => return Some(format!("protocol error: {e}")),
                    }
                }
                conn.parser.shrink();
            }
            _ = ping.tick() => {
                if pongs.iter().filter(|p| p.is_none()).count() >= 2 {
                    return Some("the server stopped answering PINGs".into());
                }
                proto::encode_ping(&mut out);
                pongs.push_back(None);
            }
        }
    }
}

fn apply(
    cmd: Command,
    shared: &Shared,
    sent: &mut HashSet<u64>,
    pongs: &mut VecDeque<Option<oneshot::Sender<()>>>,
    out: &mut BytesMut,
) {
    match cmd {
        Command::Publish(subject, payload) => proto::encode_pub(&subject, &payload, out),
        Command::Subscribe(sid) => {
            let subject = lock(&shared.subs).get(&sid).cloned();
            if let Some(subject) = subject
                && sent.insert(sid)
            {
                proto::encode_sub(&subject, sid, out);
            }
        }
        Command::Unsubscribe(sid) => {
            if sent.remove(&sid) {
                proto::encode_unsub(sid, out);
            }
        }
        Command::Flush(waiter) => {
            proto::encode_ping(out);
            pongs.push_back(Some(waiter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("nats://127.0.0.1:4222").unwrap();
        assert_eq!(t.addr, "127.0.0.1:4222");
        assert!(t.user.is_none());
        let t = parse_url("nats://u:p@host").unwrap();
        assert_eq!(t.addr, "host:4222");
        assert_eq!(t.user, Some(("u".into(), "p".into())));
        assert_eq!(parse_url("localhost:1").unwrap().addr, "localhost:1");
        for bad in [
            "tls://h:1",
            "http://h:1",
            "nats://",
            "nats://h:port",
            "nats://u@h:1",
            "nats://h:1/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
