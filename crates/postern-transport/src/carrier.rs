//! One way to dial any carrier, and what its failures mean.
//!
//! [`dial`] opens a [`Target`] (carrier, address, WebSocket path, TLS
//! settings) into a [`Metered`] boxed stream, so the session code and the
//! client's connectivity manager never care which carrier they hold.
//! [`classify`] sorts a failure into the [`Failure`] classes a censor's
//! tactics produce: refused (a blocked port answered with RST to the SYN),
//! reset (RST injected later, typically after seeing a TLS name), timeout
//! (blackholed), a TLS alert, a certificate mismatch (interception), or a
//! freeze after some bytes (a connection throttled to death after N KB).

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::TransportError;
use crate::tls::ClientTls;

/// How the bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Carrier {
    /// Plain TCP.
    Tcp,
    /// TLS 1.3 over TCP.
    Tls,
    /// WebSocket over TLS.
    Wss,
    /// QUIC over UDP.
    Quic,
    /// The cloak to a volunteer's relay: TCP that looks like Chrome talking
    /// TLS to an ordinary website (see `postern-cloak`).
    Cloak,
}

impl Carrier {
    /// The carrier's name in links, configs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Tcp => "tcp",
            Carrier::Tls => "tls",
            Carrier::Wss => "wss",
            Carrier::Quic => "quic",
            Carrier::Cloak => "cloak",
        }
    }

    /// True if the carrier runs real TLS and so needs [`ClientTls`].
    pub fn uses_tls(self) -> bool {
        !matches!(self, Carrier::Tcp | Carrier::Cloak)
    }
}

impl fmt::Display for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Carrier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Carrier::Tcp),
            "tls" => Ok(Carrier::Tls),
            "wss" => Ok(Carrier::Wss),
            "quic" => Ok(Carrier::Quic),
            "cloak" => Ok(Carrier::Cloak),
            other => Err(format!(
                "\"{other}\" is not a carrier (tcp, tls, wss, quic, cloak)"
            )),
        }
    }
}

/// Any carrier's stream.
pub trait CarrierStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> CarrierStream for T {}

/// A boxed carrier stream.
pub type BoxStream = Box<dyn CarrierStream>;

/// Where and how to dial.
#[derive(Clone, Debug)]
pub struct Target {
    /// The carrier.
    pub carrier: Carrier,
    /// `HOST:PORT`.
    pub addr: String,
    /// The WebSocket path (for [`Carrier::Wss`]), starting with `/`.
    pub path: String,
    /// TLS settings, for every carrier but TCP and the cloak.
    pub tls: Option<ClientTls>,
    /// The relay's SNI and secret, for [`Carrier::Cloak`].
    pub cloak: Option<postern_cloak::ClientConfig>,
}

/// Opens `target`, TLS and WebSocket upgrade included, in at most
/// `timeout`. The returned stream counts the bytes read through it.
pub async fn dial(
    target: &Target,
    timeout: Duration,
) -> Result<Metered<BoxStream>, TransportError> {
    let tls = || {
        target
            .tls
            .as_ref()
            .ok_or_else(|| TransportError::Tls(format!("{} needs TLS settings", target.carrier)))
    };
    let stream: BoxStream = match target.carrier {
        Carrier::Tcp => Box::new(crate::tcp::connect(&target.addr, timeout).await?),
        Carrier::Tls => Box::new(crate::tls::connect(&target.addr, tls()?, timeout).await?),
        Carrier::Wss => {
            Box::new(crate::ws::connect(&target.addr, &target.path, tls()?, timeout).await?)
        }
        Carrier::Quic => Box::new(crate::quic::connect(&target.addr, tls()?, timeout).await?),
        Carrier::Cloak => {
            let cfg = target.cloak.as_ref().ok_or_else(|| {
                TransportError::NotRelay("a cloak route needs a relay link".into())
            })?;
            let tcp = crate::tcp::connect(&target.addr, timeout).await?;
            Box::new(
                postern_cloak::io::client_connect(tcp, cfg, timeout)
                    .await
                    .map_err(TransportError::from_cloak)?,
            )
        }
    };
    Ok(Metered::new(stream))
}

/// Why an attempt or a connection failed, as the connectivity manager
/// records it per candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The connection was refused (RST to the SYN, ICMP unreachable).
    Refused,
    /// The connection was reset after it opened.
    Reset,
    /// Nothing answered in time (blackholed).
    Timeout,
    /// The peer (or something in its place) sent a TLS alert.
    TlsAlert,
    /// Bytes flowed, then stopped: frozen after this many bytes read.
    Freeze {
        /// Bytes read before the stream went silent.
        after: u64,
    },
    /// The TLS certificate is not the expected one.
    CertificateMismatch,
    /// Something answered at a relay's address, but not the relay (it
    /// could not prove it holds the relay secret).
    NotRelay,
    /// The peer closed the connection.
    Closed,
    /// Anything else (a protocol error, an unusable address).
    Other,
}

impl Failure {
    /// A short name for logs, status output and the home database.
    pub fn name(&self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::TlsAlert => "tls-alert",
            Failure::Freeze { .. } => "freeze",
            Failure::CertificateMismatch => "certificate-mismatch",
            Failure::NotRelay => "not-relay",
            Failure::Closed => "closed",
            Failure::Other => "other",
        }
    }

    /// Reads back what [`Failure::name`] wrote (with the freeze's byte
    /// count, if known).
    pub fn from_name(name: &str, after: u64) -> Option<Failure> {
        Some(match name {
            "refused" => Failure::Refused,
            "reset" => Failure::Reset,
            "timeout" => Failure::Timeout,
            "tls-alert" => Failure::TlsAlert,
            "freeze" => Failure::Freeze { after },
            "certificate-mismatch" => Failure::CertificateMismatch,
            "not-relay" => Failure::NotRelay,
            "closed" => Failure::Closed,
            "other" => Failure::Other,
            _ => return None,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Freeze { after } => write!(f, "freeze after {after} bytes"),
            other => f.write_str(other.name()),
        }
    }
}

/// Sorts `err`; `bytes_read` is what the stream had read when it failed
/// (a timeout after some bytes is a freeze, not a blackhole).
pub fn classify(err: &TransportError, bytes_read: u64) -> Failure {
    use std::io::ErrorKind;
    let io_kind = |e: &std::io::Error| match e.kind() {
        ErrorKind::ConnectionRefused => Failure::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Failure::Reset
        }
        ErrorKind::TimedOut => Failure::Timeout,
        ErrorKind::UnexpectedEof => Failure::Closed,
        _ => Failure::Other,
    };
    match err {
        TransportError::Timeout if bytes_read > 0 => Failure::Freeze { after: bytes_read },
        TransportError::Timeout => Failure::Timeout,
        TransportError::Io(e) | TransportError::Connect { source: e, .. } => io_kind(e),
        TransportError::Closed | TransportError::Truncated(_) => Failure::Closed,
        TransportError::TlsAlert(_) => Failure::TlsAlert,
        TransportError::Certificate(_) => Failure::CertificateMismatch,
        TransportError::NotRelay(_) => Failure::NotRelay,
        TransportError::Quic(text) if text.contains("reset") => Failure::Reset,
        _ => Failure::Other,
    }
}

/// A stream that counts the bytes read through it.
pub struct Metered<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> Metered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Metered {
            inner,
            read: Arc::default(),
        }
    }

    /// A handle to the count of bytes read so far, usable after the stream
    /// moved into a connection.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl<S> fmt::Debug for Metered<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metered")
            .field("read", &self.bytes_read())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(got as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
