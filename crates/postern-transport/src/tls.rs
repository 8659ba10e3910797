//! The TLS 1.3 carrier (rustls with ring), and the certificates and client
//! settings the WebSocket and QUIC carriers share with it.
//!
//! TLS here is camouflage: to a censor the connection looks like any HTTPS
//! session. It is not the security boundary — the Noise session inside
//! authenticates the server by its static key whatever the certificate says.
//! A client therefore either pins the certificate's SHA-256 (what a server
//! link with `certsha256=` asks for, and what works with a self-signed
//! certificate) or checks it against the system's roots (for a server behind
//! a CDN or with a public certificate); a certificate that fails either
//! check is a failure class of its own ([`TransportError::Certificate`]),
//! because it often means a censor's interception box.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::TransportError;

/// The ALPN protocols a plain TLS carrier offers: looks like a web server.
const TLS_ALPN: &[&[u8]] = &[b"http/1.1"];

pub use tokio_rustls::TlsAcceptor as Acceptor;

/// The client side of a TLS carrier on a client.
pub type ClientTlsStream<S> = tokio_rustls::client::TlsStream<S>;
/// The server side of a TLS carrier.
pub type ServerTlsStream<S> = tokio_rustls::server::TlsStream<S>;

/// The crypto provider every carrier uses: ring, whatever else the process
/// installed as its default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's certificate chain and private key.
#[derive(Clone)]
pub struct ServerCert {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("sha256", &hex_pin(&self.sha256()))
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// Reads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerCert, TransportError> {
        let bad = |what: &Path, e: &dyn fmt::Display| {
            TransportError::Tls(format!("cannot read {}: {e}", what.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, &e))?;
        if chain.is_empty() {
            return Err(bad(cert, &"it holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        Ok(ServerCert {
            chain,
            key: Arc::new(key),
        })
    }

    /// Generates a self-signed certificate for `names` (for development,
    /// or for clients that pin it); returns it and its PEM files' text
    /// (certificate, key) to store.
    pub fn self_signed(names: &[String]) -> Result<(ServerCert, String, String), TransportError> {
        let generated = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TransportError::Tls(format!("cannot generate a certificate: {e}")))?;
        let cert_pem = generated.cert.pem();
        let key_pem = generated.signing_key.serialize_pem();
        let cert = ServerCert {
            chain: vec![generated.cert.der().clone()],
            key: Arc::new(PrivateKeyDer::Pkcs8(
                generated.signing_key.serialize_der().into(),
            )),
        };
        Ok((cert, cert_pem, key_pem))
    }

    /// The SHA-256 of the leaf certificate: what clients pin.
    pub fn sha256(&self) -> [u8; 32] {
        self.chain
            .first()
            .map(|c| Sha256::digest(c.as_ref()).into())
            .unwrap_or_default()
    }

    /// A rustls server configuration (TLS 1.3 only) offering `alpn`.
    pub fn server_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TransportError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(format!("the certificate or key is unusable: {e}")))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// An acceptor for the plain TLS carrier.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TransportError> {
        Ok(TlsAcceptor::from(self.server_config(TLS_ALPN)?))
    }
}

/// How a client checks the server's TLS certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verify {
    /// The leaf certificate's SHA-256 must be this.
    Pinned([u8; 32]),
    /// The system's trusted roots must vouch for it, for the SNI name.
    System,
}

/// What a client needs to open a TLS-based carrier.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The name sent as SNI (and checked by [`Verify::System`]).
    pub sni: String,
    /// How the certificate is checked.
    pub verify: Verify,
}

impl ClientTls {
    /// A rustls client configuration (TLS 1.3 only) offering `alpn`.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.verify {
            Verify::Pinned(pin) => Arc::new(PinnedVerifier {
                pin,
                provider: provider(),
            }),
            Verify::System => Arc::new(
                rustls_platform_verifier::Verifier::new(provider())
                    .map_err(|e| TransportError::Tls(format!("no system roots: {e}")))?,
            ),
        };
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, TransportError> {
        ServerName::try_from(self.sni.clone())
            .map_err(|_| TransportError::Tls(format!("\"{}\" is not a TLS server name", self.sni)))
    }

    /// Runs the TLS handshake over `stream`, offering `alpn`.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        alpn: &[&[u8]],
        timeout: Duration,
    ) -> Result<ClientTlsStream<S>, TransportError> {
        let connector = TlsConnector::from(self.client_config(alpn)?);
        tokio::time::timeout(timeout, connector.connect(self.server_name()?, stream))
            .await
            .map_err(|_| TransportError::Timeout)?
            .map_err(tls_error)
    }
}

/// Connects to `addr` over TCP and runs the TLS handshake; the whole
/// attempt takes at most `timeout`.
pub async fn connect(
    addr: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<ClientTlsStream<TcpStream>, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = crate::tcp::connect(addr, timeout).await?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    tls.handshake(tcp, TLS_ALPN, left).await
}

/// Runs the server side of the TLS handshake, at most `timeout`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Result<ServerTlsStream<S>, TransportError> {
    tokio::time::timeout(timeout, acceptor.accept(stream))
        .await
        .map_err(|_| TransportError::Timeout)?
        .map_err(tls_error)
}

/// Sorts a failed TLS handshake: certificate trouble, an alert from the
/// peer, or plain I/O (reset, closed).
pub(crate) fn tls_error(e: std::io::Error) -> TransportError {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return TransportError::Io(e);
    };
    match inner {
        rustls::Error::InvalidCertificate(why) => TransportError::Certificate(format!("{why:?}")),
        rustls::Error::AlertReceived(alert) => TransportError::TlsAlert(format!("{alert:?}")),
        other => TransportError::Tls(other.to_string()),
    }
}

/// Hex text of a certificate pin, as server links carry it.
pub fn hex_pin(pin: &[u8; 32]) -> String {
    pin.iter().map(|b| format!("{b:02x}")).collect()
}

/// Accepts exactly one leaf certificate (by SHA-256), ignoring names and
/// dates: the pin is the whole trust decision. Handshake signatures are
/// still verified, so whoever answers holds the pinned certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
