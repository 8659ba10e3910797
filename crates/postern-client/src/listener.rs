//! A stream of received messages and connection-state events over a
//! connection that is re-established whenever it breaks.
//!
//! The states follow TDLib's: waiting for network (no route works; the
//! next race is scheduled), connecting (racing routes), connecting to a
//! relay (only relay routes are left to race), updating (connected,
//! catching up on what was missed and sending the outbox), ready. A
//! connection is watched by pings when quiet; one that stops answering —
//! a freeze, a blackhole — is dropped, its route recorded as failed, and
//! the race starts again at once over the routes left.

use std::time::Duration;

use crate::{Client, ClientError, Connection, ReceivedMessage};

/// Where the listener's connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// No route to the server works; the next race starts in `retry_in`.
    WaitingForNetwork {
        /// Why every route failed.
        reason: String,
        /// When the next race starts.
        retry_in: Duration,
    },
    /// Racing the routes to the server.
    Connecting,
    /// Racing, with only relay routes left.
    ConnectingToRelay,
    /// Connected over `route`; catching up on missed messages and sending
    /// the outbox.
    Updating {
        /// The route in use (`carrier://endpoint`).
        route: String,
    },
    /// Up to date: messages arrive as they are sent.
    Ready {
        /// The route in use.
        route: String,
    },
    /// The connection broke; the next race starts in `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// When the next race starts.
        retry_in: Duration,
    },
}

/// What a [`Listener`] yields.
#[derive(Clone, Debug)]
pub enum Event {
    /// The connection changed state.
    State(ConnectionState),
    /// A message arrived (already stored in the home and acked).
    Message(ReceivedMessage),
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// See [`Client::listen`].
pub struct Listener {
    client: Client,
    conn: Option<Connection>,
    updating: Option<Connection>,
    backoff: Duration,
    retry_at: Option<tokio::time::Instant>,
    announced: Option<ConnectionState>,
}

impl Listener {
    pub(crate) fn new(client: Client) -> Self {
        Listener {
            client,
            conn: None,
            updating: None,
            backoff: Duration::from_millis(250),
            retry_at: None,
            announced: None,
        }
    }

    /// The next event. Errors only for failures a reconnect cannot cure
    /// (an unregistered device, a refused protocol version, a broken home).
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(mut conn) = self.updating.take() {
                // Catch up first: messages can only be sent in the group's
                // current epoch.
                let caught_up = async {
                    conn.sync().await?;
                    conn.flush_outbox().await?;
                    Ok::<_, ClientError>(())
                };
                match caught_up.await {
                    Ok(()) => {
                        self.backoff = Duration::from_millis(250);
                        let route = conn.route().to_owned();
                        self.conn = Some(conn);
                        if let Some(e) = self.announce(ConnectionState::Ready { route }) {
                            return Ok(e);
                        }
                        continue;
                    }
                    Err(e) if e.is_transient() => return Ok(self.broken(&conn, e)),
                    Err(e) => return Err(e),
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                if let Some(at) = self.retry_at.take() {
                    tokio::time::sleep_until(at).await;
                }
                let only_relays = self
                    .client
                    .candidates()
                    .iter()
                    .all(|c| c.source == crate::connectivity::Source::Relay);
                let state = if only_relays {
                    ConnectionState::ConnectingToRelay
                } else {
                    ConnectionState::Connecting
                };
                if let Some(e) = self.announce(state) {
                    return Ok(e);
                }
                match self.client.connect().await {
                    Ok(conn) if conn.device().is_none() => return Err(ClientError::NotRegistered),
                    Ok(conn) => {
                        let route = conn.route().to_owned();
                        self.updating = Some(conn);
                        return Ok(self.force(ConnectionState::Updating { route }));
                    }
                    Err(e @ ClientError::NoRoute(_)) => {
                        let retry_in = self.schedule();
                        return Ok(self.force(ConnectionState::WaitingForNetwork {
                            reason: e.to_string(),
                            retry_in,
                        }));
                    }
                    Err(e) if e.is_transient() => {
                        let retry_in = self.schedule();
                        return Ok(self.force(ConnectionState::Disconnected {
                            reason: e.to_string(),
                            retry_in,
                        }));
                    }
                    Err(e) => return Err(e),
                }
            };
            let ping_every = self.client.connectivity().ping_every;
            match tokio::time::timeout(ping_every, conn.recv()).await {
                Ok(Ok(Some(m))) => return Ok(Event::Message(m)),
                Ok(Ok(None)) => {
                    let conn = self.conn.take().expect("checked above");
                    return Ok(self.broken(&conn, ClientError::Disconnected));
                }
                Ok(Err(e)) if e.is_transient() => {
                    let conn = self.conn.take().expect("checked above");
                    return Ok(self.broken(&conn, e));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    if let Err(e) = conn
                        .call(postern_proto::pb::request::Kind::Ping(Default::default()))
                        .await
                    {
                        let conn = self.conn.take().expect("checked above");
                        return Ok(self.broken(&conn, e));
                    }
                }
            }
        }
    }

    /// The route in use, if connected.
    pub fn route(&self) -> Option<&str> {
        self.conn
            .as_ref()
            .or(self.updating.as_ref())
            .map(|c| c.route())
    }

    /// A connection broke: records its route's failure and races again
    /// right away (the other routes are likely fine).
    fn broken(&mut self, conn: &Connection, e: ClientError) -> Event {
        if let Err(err) = conn.record_failure(&e) {
            tracing::warn!(error = %err, "cannot record a route failure");
        }
        self.conn = None;
        self.updating = None;
        self.backoff = Duration::from_millis(250);
        self.retry_at = None;
        self.force(ConnectionState::Disconnected {
            reason: e.to_string(),
            retry_in: Duration::ZERO,
        })
    }

    /// Schedules the next race after the current backoff, which doubles up
    /// to a limit, with ±25% jitter: clients cut off together (a server
    /// restart, a block) do not all come back in the same instant.
    fn schedule(&mut self) -> Duration {
        self.conn = None;
        let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.75..1.25);
        let retry_in = self.backoff.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.retry_at = Some(tokio::time::Instant::now() + retry_in);
        retry_in
    }

    fn force(&mut self, state: ConnectionState) -> Event {
        self.announced = Some(state.clone());
        Event::State(state)
    }

    fn announce(&mut self, state: ConnectionState) -> Option<Event> {
        if self.announced.as_ref() == Some(&state) {
            return None;
        }
        self.announced = Some(state.clone());
        Some(Event::State(state))
    }
}
