//! One client connection: handshake, request dispatch, and pushing queued
//! messages to a subscribed device.
//!
//! Each authenticated connection's source address and time go to the
//! account's sealed IP log in the vault; the address is logged only when
//! the operator set `[legal] log_client_ips`.
//!
//! Everything for one connection runs in one task: reading frames, running
//! up to `max_inflight_requests` requests concurrently, fetching queued
//! messages when woken, and writing responses and pushes in batches. Bad
//! frames end only this connection.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use postern_proto::frame::envelope;
use postern_proto::ids::DeviceAddr;
use postern_proto::keys::NoiseKeypair;
use postern_proto::pb::{self, ErrorCode, envelope::Body, request::Kind as Req};
use postern_proto::{MAX_PAYLOAD_LEN, PROTOCOL_VERSION};
use postern_store::StoredMessage;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::service::{Service, SessionInfo, now_ms};

/// A connection with no traffic for this long gives back spare buffer memory.
const QUIET_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
/// Messages fetched from the store per push.
const FETCH_BATCH: usize = 256;
/// Payload bytes fetched per push; keeps a Deliver frame under the frame limit.
const FETCH_BYTES: usize = 512 * 1024;
const _: () = assert!(FETCH_BYTES + MAX_PAYLOAD_LEN < postern_proto::frame::MAX_FRAME_LEN);

/// Serves one accepted stream until it closes.
pub(crate) async fn serve<S>(
    service: Arc<Service>,
    keys: Arc<NoiseKeypair>,
    handshakes: Arc<Semaphore>,
    drain: tokio::sync::watch::Receiver<bool>,
    stream: S,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The handshake runs in its own boxed future, freed when it ends, so
    // its state does not size every connection's task for life.
    let handshake = Box::pin(handshake(&service, &keys, handshakes, stream, peer)).await;
    let Some((conn, session)) = handshake else {
        return;
    };
    match Connection::new(service, session).run(conn, drain).await {
        Ok(()) => {}
        // An authenticated peer sent bytes that break the protocol: worth
        // an operator's attention, once per connection.
        Err(e @ postern_transport::TransportError::Session(_)) => {
            tracing::info!(error = %e, "closed a connection that broke the protocol");
        }
        Err(e) => tracing::debug!(error = %e, "connection closed"),
    }
}

/// Runs the Noise handshake and finds the device the client's key belongs to.
async fn handshake<S>(
    service: &Service,
    keys: &NoiseKeypair,
    handshakes: Arc<Semaphore>,
    stream: S,
    peer: SocketAddr,
) -> Option<(postern_transport::Connection<S>, SessionInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = service.limits().handshake_timeout;
    // Bound the CPU a flood of handshakes can take; waiting here is fine,
    // the handshake timeout below still applies to the client.
    let _permit = handshakes.acquire_owned().await.ok()?;
    let (pending, hello) = match postern_transport::server_accept(stream, keys, timeout).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return None;
        }
    };
    if hello.client.version != PROTOCOL_VERSION {
        tracing::debug!(
            version = hello.client.version,
            "refused unsupported version"
        );
        let refusal = pb::ServerHello {
            version: PROTOCOL_VERSION,
            error: Some(pb::Error {
                code: ErrorCode::UnsupportedVersion as i32,
                message: format!(
                    "this server speaks protocol version {PROTOCOL_VERSION}; update Postern"
                ),
                retry_after_ms: 0,
                current_epoch: 0,
            }),
            device: None,
            server_time_ms: now_ms(),
            mls_ciphersuite: 0,
        };
        let _ = pending.refuse(&refusal).await;
        return None;
    }
    let device = match service
        .store()
        .device_by_noise_key(&hello.remote_static)
        .await
    {
        Ok(d) => d.map(|d| d.addr),
        Err(e) => {
            tracing::error!(error = %e, "store failure during handshake");
            return None;
        }
    };
    let accept = pb::ServerHello {
        version: PROTOCOL_VERSION,
        error: None,
        device: device.map(Into::into),
        server_time_ms: now_ms(),
        mls_ciphersuite: u32::from(service.mls_ciphersuite()),
    };
    match pending.accept(&accept).await {
        Ok(conn) => {
            if service.vault().log_client_ips() {
                tracing::info!(peer = %peer.ip(), device = ?device.map(|d| d.to_string()), "connection");
            }
            // The vault's IP log: sealed to the account's key, never in clear.
            if let Some(device) = device {
                service.record_connection(device.account, peer.ip()).await;
            }
            Some((
                conn,
                SessionInfo {
                    device,
                    noise_key: hello.remote_static,
                    peer_ip: peer.ip(),
                },
            ))
        }
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            None
        }
    }
}

/// A delivery cursor for a subscribed device.
struct Delivery {
    device: DeviceAddr,
    /// Highest seq pushed on this connection.
    pushed: u64,
    /// Highest seq the client acked.
    acked: u64,
    /// The store may hold messages this connection has not pushed: fetch.
    wake: bool,
    subscription: crate::hub::Subscription,
}

impl Delivery {
    /// Takes what the mailbox holds. Messages that continue the sequence
    /// right after `pushed` (within the window) are returned to push as
    /// they are; a gap, an overflow or a full window means a fetch.
    fn take_mailbox(&mut self, window: u64) -> Vec<pb::QueuedMessage> {
        let mut inbox = self.subscription.mailbox().take();
        if inbox.overflowed {
            self.wake = true;
        }
        if self.wake {
            // A fetch is due anyway and will read these from the store.
            return Vec::new();
        }
        inbox.messages.sort_unstable_by_key(|m| m.seq);
        // `pushed` comes from the client's Subscribe: never let it overflow.
        let mut next = self.pushed.saturating_add(1);
        let mut run = Vec::new();
        let mut bytes = 0;
        for m in inbox.messages {
            if m.seq < next {
                continue;
            }
            // One Deliver frame carries at most FETCH_BYTES of payloads (plus
            // one), like a fetch, so it stays under the frame limit.
            if m.seq > next || next.saturating_sub(self.acked) > window || bytes > FETCH_BYTES {
                self.wake = true;
                break;
            }
            bytes += m.payload.len();
            run.push(pb::QueuedMessage::clone(&m));
            next = next.saturating_add(1);
        }
        if let Some(last) = run.last() {
            self.pushed = last.seq;
        }
        run
    }
}

struct Connection {
    service: Arc<Service>,
    session: SessionInfo,
    delivery: Option<Delivery>,
}

type Reply = (u64, pb::Response, Option<DeviceAddr>);

impl Connection {
    fn new(service: Arc<Service>, session: SessionInfo) -> Self {
        Connection {
            service,
            session,
            delivery: None,
        }
    }

    async fn run<S>(
        mut self,
        conn: postern_transport::Connection<S>,
        drain: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), postern_transport::TransportError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut reader, mut writer) = conn.split();
        // Draining: read no more requests; once those in flight are
        // answered, say GoAway and close.
        let mut leaving = *drain.borrow();
        // One registration for the connection's life: re-creating this
        // future per loop iteration would lock the watch's waiter list,
        // shared by every connection, on every frame.
        let drained = async move {
            let mut drain = drain;
            let _ = drain.wait_for(|d| *d).await;
        };
        tokio::pin!(drained);
        let limits = self.service.limits().clone();
        let mut inflight = FuturesUnordered::new();
        let mut fetching = None;
        let mut outbox: Vec<pb::Envelope> = Vec::new();
        // One timer serves both deadlines, and traffic only stamps the time:
        // re-arming a timer per frame would cost more than the frame. When
        // the connection goes quiet it gives back its buffers' spare memory;
        // until then it keeps them, to avoid reallocating per frame.
        let mut last_read = Instant::now();
        let mut last_traffic = last_read;
        let mut shrunk = false;
        let first_check = QUIET_AFTER.min(limits.idle_timeout);
        let timer = tokio::time::sleep_until(last_read + first_check);
        tokio::pin!(timer);

        loop {
            if leaving && inflight.is_empty() {
                outbox.push(go_away_envelope());
                writer.send_batch(outbox.iter()).await?;
                let _ = writer.shutdown().await;
                return Ok(());
            }
            if fetching.is_none()
                && let Some(d) = self.delivery.as_mut()
                && d.wake
                && d.pushed.saturating_sub(d.acked) < limits.delivery_window
            {
                d.wake = false;
                let store = self.service.store().clone();
                let (device, after) = (d.device, d.pushed);
                fetching = Some(Box::pin(async move {
                    store.fetch(device, after, FETCH_BATCH, FETCH_BYTES).await
                }));
            }
            let notified = async {
                match &self.delivery {
                    Some(d) => d.subscription.mailbox().notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(reply) = inflight.next(), if !inflight.is_empty() => {
                    self.finish(reply, &mut outbox);
                    // Collect every other reply that is already done, so
                    // they leave in one write.
                    while let Some(Some(reply)) = inflight.next().now_or_never() {
                        self.finish(reply, &mut outbox);
                    }
                }
                () = &mut drained, if !leaving => {
                    leaving = true;
                }
                read = reader.recv(), if !leaving && inflight.len() < limits.max_inflight_requests => {
                    let Some(env) = read? else { return Ok(()) };
                    last_read = Instant::now();
                    last_traffic = last_read;
                    if shrunk {
                        shrunk = false;
                        timer.as_mut().reset(last_traffic + first_check);
                    }
                    // Nothing of the dispatch (which holds the request's
                    // future) may live across an await: it would bloat every
                    // idle connection's task by the size of that future.
                    let refusal = match self.dispatch(env) {
                        Dispatch::Now(reply) => {
                            outbox.push(reply);
                            None
                        }
                        Dispatch::Later(fut) => {
                            inflight.push(fut);
                            None
                        }
                        Dispatch::Close(reply) => Some(reply),
                    };
                    if let Some(reply) = refusal {
                        writer.send(&reply).await?;
                        return Ok(());
                    }
                }
                fetched = async { fetching.as_mut().expect("guarded").await }, if fetching.is_some() => {
                    fetching = None;
                    match fetched {
                        Ok(batch) => self.push(batch, &mut outbox),
                        Err(e) => {
                            tracing::error!(error = %e, "fetch failed");
                            if let Some(d) = self.delivery.as_mut() {
                                d.wake = true;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
                () = notified => {
                    if let Some(d) = self.delivery.as_mut() {
                        let direct = d.take_mailbox(limits.delivery_window);
                        if !direct.is_empty() {
                            outbox.push(deliver_envelope(direct));
                        }
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    let idle_at = last_read + limits.idle_timeout;
                    if now >= idle_at {
                        tracing::debug!("idle timeout");
                        return Ok(());
                    }
                    let quiet_at = last_traffic + QUIET_AFTER;
                    if !shrunk && now >= quiet_at {
                        reader.shrink();
                        writer.shrink();
                        shrunk = true;
                    }
                    let next = if shrunk { idle_at } else { quiet_at.min(idle_at) };
                    timer.as_mut().reset(next);
                }
            }
            if !outbox.is_empty() {
                last_traffic = Instant::now();
                if shrunk {
                    shrunk = false;
                    timer.as_mut().reset(last_traffic + first_check);
                }
                writer.send_batch(outbox.iter()).await?;
                outbox.clear();
                if outbox.capacity() > 64 {
                    outbox = Vec::new();
                }
            }
        }
    }

    fn dispatch(&mut self, env: pb::Envelope) -> Dispatch<impl Future<Output = Reply> + use<>> {
        let id = env.id;
        let request = match env.body {
            Some(Body::Request(r)) => r,
            _ => {
                return Dispatch::Close(error_envelope(
                    id,
                    ErrorCode::BadRequest,
                    "clients send requests only",
                ));
            }
        };
        match (&request.kind, self.session.device) {
            (Some(Req::Subscribe(_)), Some(_)) if self.delivery.is_some() => {
                // Moving the cursor under a fetch in flight could skip or
                // repeat messages; a client subscribes once per connection.
                return Dispatch::Now(error_envelope(
                    id,
                    ErrorCode::BadRequest,
                    "this connection is already subscribed",
                ));
            }
            (Some(Req::Subscribe(sub)), Some(device)) => {
                self.delivery = Some(Delivery {
                    device,
                    pushed: sub.after_seq,
                    acked: sub.after_seq,
                    wake: true,
                    subscription: self.service.hub().subscribe(device),
                });
                return Dispatch::Now(ok_envelope(id));
            }
            (Some(Req::Ack(ack)), Some(device)) => {
                let window = self.service.limits().delivery_window;
                if let Some(d) = self.delivery.as_mut() {
                    // Pushing paused on a full window: the ack reopens it.
                    if d.pushed.saturating_sub(d.acked) >= window {
                        d.wake = true;
                    }
                    d.acked = d.acked.max(ack.up_to_seq.min(d.pushed));
                }
                let store = self.service.store().clone();
                let up_to = ack.up_to_seq;
                return Dispatch::Later(
                    async move {
                        let response = match store.ack(device, up_to).await {
                            Ok(()) => ok_response(),
                            Err(e) => {
                                tracing::error!(error = %e, "ack failed");
                                error_response(ErrorCode::Internal, "the server failed; ack again")
                            }
                        };
                        (id, response, None)
                    }
                    .left_future(),
                );
            }
            _ => {}
        }
        let service = self.service.clone();
        let session = self.session.clone();
        Dispatch::Later(
            async move {
                let outcome = service.handle(&session, request).await;
                (id, outcome.response, outcome.authenticated)
            }
            .right_future(),
        )
    }

    fn finish(&mut self, (id, response, authenticated): Reply, outbox: &mut Vec<pb::Envelope>) {
        if let Some(device) = authenticated {
            self.session.device = Some(device);
        }
        outbox.push(envelope(id, Body::Response(response)));
    }

    fn push(&mut self, mut batch: Vec<StoredMessage>, outbox: &mut Vec<pb::Envelope>) {
        let Some(d) = self.delivery.as_mut() else {
            return;
        };
        // A fetch cut short by its limits leaves more in the store.
        let bytes: usize = batch.iter().map(|m| m.payload.len()).sum();
        if batch.len() >= FETCH_BATCH || bytes + MAX_PAYLOAD_LEN > FETCH_BYTES {
            d.wake = true;
        }
        // Messages handed over in memory while the fetch ran went out already.
        batch.retain(|m| m.seq > d.pushed);
        let Some(last) = batch.last() else { return };
        d.pushed = last.seq;
        let messages = batch
            .into_iter()
            .map(|m| pb::QueuedMessage {
                seq: m.seq,
                sender: Some(m.sender.into()),
                client_message_id: m.client_message_id.to_vec().into(),
                received_at_ms: m.received_at,
                payload: m.payload,
                group_id: m.group_id.unwrap_or_default(),
            })
            .collect();
        outbox.push(deliver_envelope(messages));
    }
}

enum Dispatch<F> {
    Now(pb::Envelope),
    Later(F),
    Close(pb::Envelope),
}

fn go_away_envelope() -> pb::Envelope {
    envelope(
        0,
        Body::Push(pb::Push {
            kind: Some(pb::push::Kind::GoAway(pb::GoAway {
                reason: "this server node is shutting down; connect to another".into(),
            })),
        }),
    )
}

fn deliver_envelope(messages: Vec<pb::QueuedMessage>) -> pb::Envelope {
    envelope(
        0,
        Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(pb::Deliver { messages })),
        }),
    )
}

fn ok_response() -> pb::Response {
    pb::Response {
        kind: Some(pb::response::Kind::Ok(pb::Ok {})),
    }
}

fn ok_envelope(id: u64) -> pb::Envelope {
    envelope(id, Body::Response(ok_response()))
}

fn error_response(code: ErrorCode, message: &str) -> pb::Response {
    pb::Response {
        kind: Some(pb::response::Kind::Error(pb::Error {
            code: code as i32,
            message: message.into(),
            retry_after_ms: 0,
            current_epoch: 0,
        })),
    }
}

fn error_envelope(id: u64, code: ErrorCode, message: &str) -> pb::Envelope {
    envelope(id, Body::Response(error_response(code, message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use postern_proto::ids::AccountId;

    fn delivery(hub: &Arc<Hub>, pushed: u64) -> Delivery {
        let device = DeviceAddr {
            account: AccountId([1; 16]),
            device: 1,
        };
        Delivery {
            device,
            pushed,
            acked: pushed,
            wake: false,
            subscription: hub.subscribe(device),
        }
    }

    fn hand_over(hub: &Hub, d: &Delivery, seq: u64, size: usize) {
        let m = Arc::new(pb::QueuedMessage {
            seq,
            payload: vec![0; size].into(),
            ..Default::default()
        });
        hub.deliver(&d.device, &m);
    }

    fn seqs(run: &[pb::QueuedMessage]) -> Vec<u64> {
        run.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn contiguous_hand_overs_are_pushed_in_order() {
        let hub = Arc::new(Hub::default());
        let mut d = delivery(&hub, 4);
        for seq in [6, 5, 7, 3] {
            hand_over(&hub, &d, seq, 10);
        }
        assert_eq!(seqs(&d.take_mailbox(100)), vec![5, 6, 7]);
        assert_eq!(d.pushed, 7);
        assert!(!d.wake, "nothing is missing");
    }

    #[test]
    fn a_gap_means_a_fetch() {
        let hub = Arc::new(Hub::default());
        let mut d = delivery(&hub, 4);
        for seq in [5, 7] {
            hand_over(&hub, &d, seq, 10);
        }
        assert_eq!(seqs(&d.take_mailbox(100)), vec![5]);
        assert!(d.wake, "6 must be fetched from the store");
    }

    #[test]
    fn a_full_window_stops_direct_pushes() {
        let hub = Arc::new(Hub::default());
        let mut d = delivery(&hub, 0);
        for seq in 1..=5 {
            hand_over(&hub, &d, seq, 10);
        }
        assert_eq!(seqs(&d.take_mailbox(2)), vec![1, 2], "at most 2 unacked");
        assert!(d.wake);
    }

    #[test]
    fn one_push_stays_under_the_frame_limit() {
        let hub = Arc::new(Hub::default());
        let mut d = delivery(&hub, 0);
        for seq in 1..=8 {
            hand_over(&hub, &d, seq, 200 * 1024);
        }
        let run = d.take_mailbox(100);
        let bytes: usize = run.iter().map(|m| m.payload.len()).sum();
        assert!(bytes <= FETCH_BYTES + MAX_PAYLOAD_LEN, "{bytes}");
        assert!(run.len() < 8);
        assert!(d.wake, "the rest comes from a fetch");
        let env = deliver_envelope(run);
        let mut frame = Vec::new();
        postern_proto::frame::encode_envelope(&env, &mut frame).expect("fits in one frame");
    }

    #[test]
    fn a_subscription_at_the_end_of_the_sequence_space_does_not_overflow() {
        let hub = Arc::new(Hub::default());
        let mut d = delivery(&hub, u64::MAX);
        hand_over(&hub, &d, 1, 10);
        assert!(d.take_mailbox(100).is_empty());
    }
}
