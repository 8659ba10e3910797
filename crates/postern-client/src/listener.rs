//! A stream of received messages and connection-state events over a
//! connection that is re-established whenever it breaks.

use std::time::Duration;

use crate::{Client, ClientError, Connection, ReceivedMessage};

/// Where the listener's connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a connection to the server.
    Connecting,
    /// Connected and subscribed: messages arrive as they are sent.
    Ready,
    /// The connection failed or broke; the next attempt is in `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt starts.
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

/// How often an idle connection pings, well inside the server's idle timeout.
const PING_EVERY: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// See [`Client::listen`].
pub struct Listener {
    client: Client,
    conn: Option<Connection>,
    backoff: Duration,
    retry_at: Option<tokio::time::Instant>,
    announced: Option<ConnectionState>,
}

impl Listener {
    pub(crate) fn new(client: Client) -> Self {
        Listener {
            client,
            conn: None,
            backoff: Duration::from_millis(250),
            retry_at: None,
            announced: None,
        }
    }

    /// The next event. Errors only for failures a reconnect cannot cure
    /// (an unregistered device, a refused protocol version, a broken home).
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                if let Some(at) = self.retry_at.take() {
                    tokio::time::sleep_until(at).await;
                }
                if let Some(e) = self.announce(ConnectionState::Connecting) {
                    return Ok(e);
                }
                match self.open().await {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        self.backoff = Duration::from_millis(250);
                        if let Some(e) = self.announce(ConnectionState::Ready) {
                            return Ok(e);
                        }
                        continue;
                    }
                    Err(e) if e.is_transient() => {
                        return Ok(self.disconnected(e));
                    }
                    Err(e) => return Err(e),
                }
            };
            match tokio::time::timeout(PING_EVERY, conn.recv()).await {
                Ok(Ok(Some(m))) => return Ok(Event::Message(m)),
                Ok(Ok(None)) => return Ok(self.disconnected(ClientError::Disconnected)),
                Ok(Err(e)) if e.is_transient() => return Ok(self.disconnected(e)),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    if let Err(e) = conn
                        .call(postern_proto::pb::request::Kind::Ping(Default::default()))
                        .await
                    {
                        return Ok(self.disconnected(e));
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<Connection, ClientError> {
        let mut conn = self.client.connect().await?;
        if conn.device().is_none() {
            return Err(ClientError::NotRegistered);
        }
        // Catch up first: messages can only be sent in the group's
        // current epoch.
        conn.sync().await?;
        conn.flush_outbox().await?;
        Ok(conn)
    }

    fn announce(&mut self, state: ConnectionState) -> Option<Event> {
        if self.announced.as_ref() == Some(&state) {
            return None;
        }
        self.announced = Some(state.clone());
        Some(Event::State(state))
    }

    /// Drops the connection and schedules the next attempt after the
    /// current backoff, which doubles up to a limit.
    fn disconnected(&mut self, e: ClientError) -> Event {
        self.conn = None;
        let retry_in = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        let state = ConnectionState::Disconnected {
            reason: e.to_string(),
            retry_in,
        };
        self.announced = Some(state.clone());
        self.retry_at = Some(tokio::time::Instant::now() + retry_in);
        Event::State(state)
    }
}
