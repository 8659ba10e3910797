//! `postern://` server links, which bootstrap a client.
//!
//! A server link names where to reach a server and the server's Noise static
//! public key:
//!
//! ```text
//! postern://server?v=1&tcp=HOST:PORT[&tcp=HOST:PORT...]&key=BASE64URL
//!     [&dkey=BASE64URL(VKEY)][&http=URL][&dir=URL...][&doh=URL&dns=NAME]
//! ```
//!
//! The optional parameters say where and how to fetch the signed directory
//! ([`crate::directory`]): `dkey` is the directory key (its C2SP vkey, in
//! base64url so that no `+` or `/` meets a URL parser), `http` the server's
//! HTTP API (the directory is at `/directory`), `dir` static mirror URLs of
//! the signed file (up to [`MAX_MIRRORS`]), `doh` a DNS-over-HTTPS resolver
//! and `dns` the name whose TXT records hold the directory. Links without
//! them (the first links) stay valid. URLs in links may not contain `&`,
//! `#`, `%` or spaces.
//!
//! Later versions add other carriers, so parameters this version does not
//! know are ignored; everything it does know is checked.
//!
//! Besides plain TCP, a link may list the server's other carriers:
//! `tls=HOST:PORT` (TLS 1.3), `wss=HOST:PORT/PATH` (WebSocket over TLS on
//! that path), `quic=HOST:PORT`, and for the TLS-based ones the name to send
//! as SNI (`sni=NAME`) and the SHA-256 of the certificate to pin
//! (`certsha256=HEX`; without it the system's roots verify the certificate).
//! TLS is camouflage here, not the security boundary: the Noise session
//! inside authenticates the server by `key` on every carrier.
//!
//! Parameters this version does not know are ignored (an older client reads
//! the `tcp` endpoints of a newer link and skips the rest); everything it
//! does know is checked.
//! Links are pasted by people and shown as QR codes, so errors say exactly
//! which part is wrong.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The scheme every Postern link starts with.
pub const SCHEME: &str = "postern://";

/// The link format version this crate writes and reads.
pub const LINK_VERSION: u32 = 1;

/// Longest link accepted, in bytes.
pub const MAX_LINK_LEN: usize = 4096;

/// Most directory mirror URLs (`dir=`) in a link.
pub const MAX_MIRRORS: usize = 8;

/// Longest URL in a link, in bytes.
pub const MAX_URL_LEN: usize = 512;

/// What was wrong with a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link is longer than [`MAX_LINK_LEN`].
    #[error("link is {0} bytes long; links are at most {MAX_LINK_LEN} bytes")]
    TooLong(usize),
    /// The link does not start with `postern://`.
    #[error("not a Postern link: it must start with \"postern://\"")]
    Scheme,
    /// The link is a Postern link of another kind (e.g. a relay link).
    #[error("this is a \"{found}\" link, not a {expected} link (postern://{expected}?...)")]
    WrongKind {
        /// The kind the link has.
        found: String,
        /// The kind that was needed.
        expected: &'static str,
    },
    /// The link contains percent-encoding, which no valid server link needs.
    #[error("link contains '%': server links never need percent-encoding; copy the link exactly")]
    PercentEncoded,
    /// A required parameter is absent.
    #[error("link has no \"{0}\" parameter")]
    Missing(&'static str),
    /// A parameter that may appear once appears again.
    #[error("link has more than one \"{0}\" parameter")]
    Duplicate(&'static str),
    /// The version is not one this client understands.
    #[error(
        "link version \"{0}\" is not supported (this client reads version {LINK_VERSION}); update Postern"
    )]
    UnsupportedVersion(String),
    /// The key is not base64url without padding.
    #[error("server key is not unpadded base64url: {0}")]
    KeyEncoding(String),
    /// The key does not decode to 32 bytes.
    #[error("server key is {0} bytes long, expected 32")]
    KeyLength(usize),
    /// The link names no endpoint to connect to.
    #[error("link names no endpoint (tcp=, tls=, wss= or quic=HOST:PORT)")]
    NoEndpoint,
    /// A `tcp` endpoint is not `HOST:PORT`.
    #[error("endpoint \"{endpoint}\" is invalid: {reason}")]
    BadEndpoint {
        /// The endpoint as written in the link.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The directory key is not a valid verifier key.
    #[error("directory key (dkey) is invalid: {0}")]
    DirectoryKey(String),
    /// A URL parameter is not an http(s) URL a link can carry.
    #[error(
        "\"{name}\" is not an http:// or https:// URL of at most {MAX_URL_LEN} bytes \
         without '&', '#', '%' or spaces"
    )]
    BadUrl {
        /// The parameter.
        name: &'static str,
    },
    /// Too many `dir` mirrors.
    #[error("link has more than {MAX_MIRRORS} directory mirrors (dir=)")]
    TooManyMirrors,
    /// `doh` without `dns`, `dns` without `doh`, or a bad name.
    #[error("a DNS directory needs both doh=URL and dns=NAME (a host name)")]
    BadDns,
    /// `certsha256` is not 64 hex digits.
    #[error("certsha256 must be 64 hex digits (the SHA-256 of the server's certificate)")]
    BadPin,
    /// `sni` is not a host name.
    #[error("sni \"{0}\" is not a valid host name")]
    BadSni(String),
    /// A relay's `name` is not a short plain label.
    #[error("name must be 1 to 32 letters, digits, '-', '.' or '_'")]
    BadName,
}

/// A parsed server link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ServerLink {
    /// TCP endpoints in canonical `HOST:PORT` form (lowercase host names,
    /// IPv6 addresses in brackets), in the order to try them.
    pub tcp: Vec<String>,
    /// TLS 1.3 endpoints, `HOST:PORT`.
    pub tls: Vec<String>,
    /// WebSocket-over-TLS endpoints, `HOST:PORT/PATH`.
    pub wss: Vec<String>,
    /// QUIC endpoints, `HOST:PORT`.
    pub quic: Vec<String>,
    /// The TLS server name to send (SNI); default: the endpoint's host.
    pub sni: Option<String>,
    /// The SHA-256 of the server's TLS certificate, pinned instead of
    /// checking it against the system's roots.
    pub cert_sha256: Option<[u8; 32]>,
    /// The server's Noise static public key.
    pub noise_key: [u8; 32],
    /// The directory key (a C2SP vkey) the client pins, if the server
    /// publishes a signed directory.
    pub directory_key: Option<String>,
    /// The server's HTTP API base URL (the directory is at `/directory`).
    pub http: Option<String>,
    /// Static mirror URLs of the signed directory file.
    pub mirrors: Vec<String>,
    /// A DNS-over-HTTPS resolver URL and the name whose TXT records hold
    /// the directory.
    pub dns: Option<(String, String)>,
}

impl ServerLink {
    /// The pinned directory key, if the link has one.
    pub fn directory_verifier(&self) -> Option<postern_tlog::note::Verifier> {
        self.directory_key
            .as_deref()
            .and_then(|k| postern_tlog::note::Verifier::from_vkey(k).ok())
    }
}

impl ServerLink {
    /// True if the link names no endpoint at all.
    pub fn has_no_endpoint(&self) -> bool {
        self.tcp.is_empty() && self.tls.is_empty() && self.wss.is_empty() && self.quic.is_empty()
    }

    /// Every endpoint, as `carrier://endpoint` text, for people to read.
    pub fn endpoints(&self) -> Vec<String> {
        let tagged = |tag: &str, list: &[String]| {
            list.iter()
                .map(|e| format!("{tag}://{e}"))
                .collect::<Vec<_>>()
        };
        [
            tagged("tcp", &self.tcp),
            tagged("tls", &self.tls),
            tagged("wss", &self.wss),
            tagged("quic", &self.quic),
        ]
        .concat()
    }
}

impl fmt::Display for ServerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}server?v={LINK_VERSION}")?;
        for (name, list) in [
            ("tcp", &self.tcp),
            ("tls", &self.tls),
            ("wss", &self.wss),
            ("quic", &self.quic),
        ] {
            for endpoint in list {
                write!(f, "&{name}={endpoint}")?;
            }
        }
        if let Some(sni) = &self.sni {
            write!(f, "&sni={sni}")?;
        }
        if let Some(pin) = &self.cert_sha256 {
            write!(f, "&certsha256={}", hex::encode(pin))?;
        }
        write!(f, "&key={}", URL_SAFE_NO_PAD.encode(self.noise_key))?;
        if let Some(k) = &self.directory_key {
            write!(f, "&dkey={}", URL_SAFE_NO_PAD.encode(k))?;
        }
        if let Some(u) = &self.http {
            write!(f, "&http={u}")?;
        }
        for u in &self.mirrors {
            write!(f, "&dir={u}")?;
        }
        if let Some((doh, name)) = &self.dns {
            write!(f, "&doh={doh}&dns={name}")?;
        }
        Ok(())
    }
}

impl FromStr for ServerLink {
    type Err = LinkError;

    fn from_str(link: &str) -> Result<Self, LinkError> {
        parse(link, "server").map(|(server, _)| server)
    }
}

/// A device link: what an account's existing device shows a new device so
/// that it joins the account — the server link plus a one-time token.
/// `postern://device?v=1&tcp=HOST:PORT&key=…&token=…`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceLink {
    /// The server the account lives on.
    pub server: ServerLink,
    /// The one-time device-link token.
    pub token: Vec<u8>,
}

impl fmt::Debug for DeviceLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret until used.
        f.debug_struct("DeviceLink")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for DeviceLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = self.server.to_string();
        let query = server.split_once('?').map(|(_, q)| q).unwrap_or("");
        write!(
            f,
            "{SCHEME}device?{query}&token={}",
            URL_SAFE_NO_PAD.encode(&self.token)
        )
    }
}

impl FromStr for DeviceLink {
    type Err = LinkError;

    fn from_str(link: &str) -> Result<Self, LinkError> {
        let (server, token) = parse(link, "device")?;
        let token = token.ok_or(LinkError::Missing("token"))?;
        let token = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| LinkError::KeyEncoding(e.to_string()))?;
        Ok(DeviceLink { server, token })
    }
}

/// A relay link: what a volunteer's relay prints and a member adds
/// (`postern relay add LINK`).
///
/// ```text
/// postern://relay?v=1&host=HOST:PORT&sni=NAME&secret=BASE64URL[&key=BASE64URL][&name=NAME]
/// ```
///
/// `host` is where the relay listens, `sni` the name of the cover website
/// it sits in front of (sent in the cloak's ClientHello), `secret` the
/// 32-byte relay secret that lets the relay tell its clients from
/// probers, and `key` the Noise key of the server the relay forwards to
/// (a client uses a relay only for that server). `name` is a label for
/// people (letters, digits, `-`, `.`, `_`; at most 32).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelayLink {
    /// `HOST:PORT`, canonical.
    pub host: String,
    /// The cover site's name, used as SNI.
    pub sni: String,
    /// The relay secret.
    pub secret: [u8; 32],
    /// The Noise key of the server behind the relay, if the link says.
    pub server_key: Option<[u8; 32]>,
    /// A label for people.
    pub name: Option<String>,
}

impl fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is what keeps probers out: never in logs.
        f.debug_struct("RelayLink")
            .field("host", &self.host)
            .field("sni", &self.sni)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RelayLink {
    /// A short, secret-free description: `NAME (HOST, sni NAME)`.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({}, sni {})", self.host, self.sni),
            None => format!("{} (sni {})", self.host, self.sni),
        }
    }
}

impl fmt::Display for RelayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}relay?v={LINK_VERSION}&host={}&sni={}&secret={}",
            self.host,
            self.sni,
            URL_SAFE_NO_PAD.encode(self.secret)
        )?;
        if let Some(k) = &self.server_key {
            write!(f, "&key={}", URL_SAFE_NO_PAD.encode(k))?;
        }
        if let Some(n) = &self.name {
            write!(f, "&name={n}")?;
        }
        Ok(())
    }
}

impl FromStr for RelayLink {
    type Err = LinkError;

    fn from_str(link: &str) -> Result<Self, LinkError> {
        let query = query_of(link, "relay")?;
        let (mut version, mut host, mut sni, mut secret, mut key, mut name) =
            (None, None, None, None, None, None);
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (n, value) = param.split_once('=').unwrap_or((param, ""));
            match n {
                "v" => set_once(&mut version, value, "v")?,
                "host" => set_once(&mut host, value, "host")?,
                "sni" => set_once(&mut sni, value, "sni")?,
                "secret" => set_once(&mut secret, value, "secret")?,
                "key" => set_once(&mut key, value, "key")?,
                "name" => set_once(&mut name, value, "name")?,
                _ => {}
            }
        }
        let version = version.ok_or(LinkError::Missing("v"))?;
        if version != LINK_VERSION.to_string() {
            return Err(LinkError::UnsupportedVersion(version.to_owned()));
        }
        let host = parse_endpoint(host.ok_or(LinkError::Missing("host"))?)?;
        let sni = sni.ok_or(LinkError::Missing("sni"))?;
        let sni = canonical_host(sni)
            .filter(|s| s.parse::<Ipv4Addr>().is_err())
            .ok_or_else(|| LinkError::BadSni(sni.to_owned()))?;
        let decode32 = |text: &str| -> Result<[u8; 32], LinkError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|e| LinkError::KeyEncoding(e.to_string()))?;
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| LinkError::KeyLength(bytes.len()))
        };
        let secret = decode32(secret.ok_or(LinkError::Missing("secret"))?)?;
        let server_key = key.map(decode32).transpose()?;
        let name = name
            .map(|n| {
                let ok = !n.is_empty()
                    && n.len() <= 32
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                ok.then(|| n.to_owned()).ok_or(LinkError::BadName)
            })
            .transpose()?;
        Ok(RelayLink {
            host,
            sni,
            secret,
            server_key,
            name,
        })
    }
}

/// Checks a link's length, scheme, encoding and kind; returns its query.
fn query_of<'a>(link: &'a str, expected: &'static str) -> Result<&'a str, LinkError> {
    let link = link.trim();
    if link.len() > MAX_LINK_LEN {
        return Err(LinkError::TooLong(link.len()));
    }
    let rest = link
        .get(..SCHEME.len())
        .filter(|scheme| scheme.eq_ignore_ascii_case(SCHEME))
        .and_then(|_| link.get(SCHEME.len()..))
        .ok_or(LinkError::Scheme)?;
    if rest.contains('%') {
        return Err(LinkError::PercentEncoded);
    }
    let (kind, query) = rest.split_once('?').unwrap_or((rest, ""));
    let kind = kind.strip_suffix('/').unwrap_or(kind);
    if kind != expected {
        return Err(LinkError::WrongKind {
            found: kind.to_owned(),
            expected,
        });
    }
    Ok(query)
}

/// Parses a link of `expected` kind; returns its server part and its
/// `token` parameter, if any.
fn parse<'a>(
    link: &'a str,
    expected: &'static str,
) -> Result<(ServerLink, Option<&'a str>), LinkError> {
    {
        let query = query_of(link, expected)?;

        let mut version = None;
        let mut key = None;
        let mut token = None;
        let mut dkey = None;
        let mut http = None;
        let mut doh = None;
        let mut dns = None;
        let mut mirrors = Vec::new();
        let mut sni = None;
        let mut pin = None;
        let mut server = ServerLink::default();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            match name {
                "v" => set_once(&mut version, value, "v")?,
                "key" => set_once(&mut key, value, "key")?,
                "tcp" => server.tcp.push(parse_endpoint(value)?),
                "tls" => server.tls.push(parse_endpoint(value)?),
                "quic" => server.quic.push(parse_endpoint(value)?),
                "wss" => server.wss.push(parse_wss(value)?),
                "sni" => set_once(&mut sni, value, "sni")?,
                "certsha256" => set_once(&mut pin, value, "certsha256")?,
                "token" => set_once(&mut token, value, "token")?,
                "dkey" => set_once(&mut dkey, value, "dkey")?,
                "http" => set_once(&mut http, check_url(value, "http")?, "http")?,
                "doh" => set_once(&mut doh, check_url(value, "doh")?, "doh")?,
                "dns" => set_once(&mut dns, value, "dns")?,
                "dir" => {
                    if mirrors.len() == MAX_MIRRORS {
                        return Err(LinkError::TooManyMirrors);
                    }
                    mirrors.push(check_url(value, "dir")?.to_owned());
                }
                _ => {}
            }
        }
        let directory_key = dkey
            .map(|k| {
                let text = URL_SAFE_NO_PAD
                    .decode(k)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| LinkError::DirectoryKey("not base64url text".into()))?;
                let v = postern_tlog::note::Verifier::from_vkey(&text)
                    .map_err(|e| LinkError::DirectoryKey(e.to_string()))?;
                if v.vkey() != text {
                    return Err(LinkError::DirectoryKey("not in canonical form".into()));
                }
                Ok(text)
            })
            .transpose()?;
        let dns = match (doh, dns) {
            (None, None) => None,
            (Some(doh), Some(name)) => {
                Some((doh.to_owned(), dns_name(name).ok_or(LinkError::BadDns)?))
            }
            _ => return Err(LinkError::BadDns),
        };
        if let Some(sni) = sni {
            server.sni =
                Some(canonical_host(sni).ok_or_else(|| LinkError::BadSni(sni.to_owned()))?);
        }
        if let Some(pin) = pin {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(pin, &mut bytes).map_err(|_| LinkError::BadPin)?;
            server.cert_sha256 = Some(bytes);
        }

        let version = version.ok_or(LinkError::Missing("v"))?;
        if version != LINK_VERSION.to_string() {
            return Err(LinkError::UnsupportedVersion(version.to_owned()));
        }
        let key = key.ok_or(LinkError::Missing("key"))?;
        let key = URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|e| LinkError::KeyEncoding(e.to_string()))?;
        server.noise_key = key
            .as_slice()
            .try_into()
            .map_err(|_| LinkError::KeyLength(key.len()))?;
        if server.has_no_endpoint() {
            return Err(LinkError::NoEndpoint);
        }
        server.directory_key = directory_key;
        server.http = http.map(str::to_owned);
        server.mirrors = mirrors;
        server.dns = dns;
        Ok((server, token))
    }
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    value: &'a str,
    name: &'static str,
) -> Result<(), LinkError> {
    if slot.replace(value).is_some() {
        return Err(LinkError::Duplicate(name));
    }
    Ok(())
}

/// A DNS name for TXT records: like a host name, but labels may also
/// hold '_' (as in `_directory.example.org`).
fn dns_name(name: &str) -> Option<String> {
    let plain = name.replace('_', "x");
    canonical_host(&plain)
        .filter(|n| n.parse::<Ipv4Addr>().is_err())
        .map(|_| name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase())
}

/// An `http://` or `https://` URL a link can carry unescaped.
fn check_url<'a>(url: &'a str, name: &'static str) -> Result<&'a str, LinkError> {
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    let chars_ok = url
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"&#%".contains(&b));
    if scheme_ok && chars_ok && url.len() <= MAX_URL_LEN && url.len() > "http://".len() {
        Ok(url)
    } else {
        Err(LinkError::BadUrl { name })
    }
}

/// Checks `HOST:PORT` and returns its canonical form.
fn parse_endpoint(endpoint: &str) -> Result<String, LinkError> {
    let bad = |reason| LinkError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let (host, port) = if let Some(bracketed) = endpoint.strip_prefix('[') {
        let (addr, port) = bracketed
            .split_once("]:")
            .ok_or_else(|| bad("an IPv6 address is written [ADDRESS]:PORT"))?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| bad("the text in brackets is not an IPv6 address"))?;
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = endpoint
            .rsplit_once(':')
            .ok_or_else(|| bad("it has no port; write HOST:PORT"))?;
        if host.contains(':') {
            return Err(bad("an IPv6 address must be in brackets: [ADDRESS]:PORT"));
        }
        (
            canonical_host(host)
                .ok_or_else(|| bad("the host is not a valid host name or IPv4 address"))?,
            port,
        )
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0 && !port.starts_with('+'))
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    Ok(format!("{host}:{port}"))
}

/// Checks `HOST:PORT/PATH` (a WebSocket endpoint) and returns its canonical
/// form; the path is plain: letters, digits and `/-._~`.
fn parse_wss(endpoint: &str) -> Result<String, LinkError> {
    let bad = |reason| LinkError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let slash = endpoint
        .find('/')
        .ok_or_else(|| bad("a WebSocket endpoint is HOST:PORT/PATH"))?;
    let (addr, path) = endpoint.split_at(slash);
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/-._~".contains(&b);
    if path.len() > 256 || !path.bytes().all(plain) {
        return Err(bad(
            "the path may hold only letters, digits and / - . _ ~ (at most 256)",
        ));
    }
    Ok(format!("{}{path}", parse_endpoint(addr)?))
}

/// A lowercase DNS name (letters, digits, '-' inside labels, '.' between
/// labels) or a dotted-quad IPv4 address.
pub(crate) fn canonical_host(host: &str) -> Option<String> {
    if let Ok(addr) = host.parse::<Ipv4Addr>() {
        return Some(addr.to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let all_numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (name.len() <= 253 && !all_numeric && name.split('.').all(valid_label))
        .then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];

    fn key_text() -> String {
        URL_SAFE_NO_PAD.encode(KEY)
    }

    #[test]
    fn parses_a_link_with_several_endpoints_and_unknown_parameters() {
        let text = format!(
            "postern://server?v=1&tcp=Chat.Example.org:7443&tcp=[0:0::1]:7443&tcp=192.0.2.1:1&future=x:1&key={}",
            key_text()
        );
        let link: ServerLink = text.parse().unwrap();
        assert_eq!(
            link.tcp,
            ["chat.example.org:7443", "[::1]:7443", "192.0.2.1:1"]
        );
        assert_eq!(link.noise_key, KEY);
        assert_eq!(
            link.to_string(),
            format!(
                "postern://server?v=1&tcp=chat.example.org:7443&tcp=[::1]:7443&tcp=192.0.2.1:1&key={}",
                key_text()
            )
        );
    }

    #[test]
    fn carries_every_carrier_and_stays_readable_as_version_1() {
        let pin = [0xab; 32];
        let text = format!(
            "postern://server?v=1&tls=Chat.Example.org:443&wss=cdn.example.net:443/ws/chat&quic=192.0.2.1:443&sni=CDN.example.net&certsha256={}&key={}",
            hex::encode(pin),
            key_text()
        );
        let link: ServerLink = text.parse().unwrap();
        assert!(link.tcp.is_empty());
        assert_eq!(link.tls, ["chat.example.org:443"]);
        assert_eq!(link.wss, ["cdn.example.net:443/ws/chat"]);
        assert_eq!(link.quic, ["192.0.2.1:443"]);
        assert_eq!(link.sni.as_deref(), Some("cdn.example.net"));
        assert_eq!(link.cert_sha256, Some(pin));
        assert_eq!(link.to_string().parse::<ServerLink>(), Ok(link.clone()));
        assert_eq!(
            link.endpoints(),
            [
                "tls://chat.example.org:443",
                "wss://cdn.example.net:443/ws/chat",
                "quic://192.0.2.1:443"
            ]
        );
        let key = key_text();
        for (text, want) in [
            (
                format!("postern://server?v=1&tls=a:1&certsha256=abc&key={key}"),
                LinkError::BadPin,
            ),
            (
                format!("postern://server?v=1&tls=a:1&sni=a_b&key={key}"),
                LinkError::BadSni("a_b".into()),
            ),
        ] {
            assert_eq!(text.parse::<ServerLink>(), Err(want), "{text}");
        }
        for wss in ["a:1", "a:1/x?y", "a:1/<script>", "a/x"] {
            assert!(
                matches!(
                    format!("postern://server?v=1&wss={wss}&key={key}").parse::<ServerLink>(),
                    Err(LinkError::BadEndpoint { .. })
                ),
                "{wss}"
            );
        }
    }

    #[test]
    fn relay_links_round_trip_and_say_what_is_wrong() {
        let secret = [9u8; 32];
        let text = format!(
            "postern://relay?v=1&host=Relay.Example.org:443&sni=WWW.example.org&secret={}&key={}&name=berlin-1",
            URL_SAFE_NO_PAD.encode(secret),
            key_text()
        );
        let link: RelayLink = text.parse().unwrap();
        assert_eq!(link.host, "relay.example.org:443");
        assert_eq!(link.sni, "www.example.org");
        assert_eq!(link.secret, secret);
        assert_eq!(link.server_key, Some(KEY));
        assert_eq!(link.name.as_deref(), Some("berlin-1"));
        assert_eq!(link.to_string().parse::<RelayLink>(), Ok(link.clone()));
        assert!(!format!("{link:?}").contains(&URL_SAFE_NO_PAD.encode(secret)));
        let s = URL_SAFE_NO_PAD.encode(secret);
        for (text, want) in [
            (
                format!("postern://server?v=1&host=a:1&sni=b&secret={s}"),
                LinkError::WrongKind {
                    found: "server".into(),
                    expected: "relay",
                },
            ),
            (
                format!("postern://relay?v=1&sni=b&secret={s}"),
                LinkError::Missing("host"),
            ),
            (
                "postern://relay?v=1&host=a:1&sni=b".into(),
                LinkError::Missing("secret"),
            ),
            (
                format!("postern://relay?v=1&host=a:1&secret={s}"),
                LinkError::Missing("sni"),
            ),
            (
                format!("postern://relay?v=1&host=a:1&sni=1.2.3.4&secret={s}"),
                LinkError::BadSni("1.2.3.4".into()),
            ),
            (
                "postern://relay?v=1&host=a:1&sni=b&secret=AAAA".into(),
                LinkError::KeyLength(3),
            ),
            (
                format!("postern://relay?v=1&host=a:1&sni=b&secret={s}&name=a%20b"),
                LinkError::PercentEncoded,
            ),
            (
                format!("postern://relay?v=1&host=a:1&sni=b&secret={s}&name=a<b"),
                LinkError::BadName,
            ),
            (
                format!("postern://relay?v=1&host=a:1&host=b:2&sni=b&secret={s}"),
                LinkError::Duplicate("host"),
            ),
        ] {
            assert_eq!(text.parse::<RelayLink>(), Err(want), "{text}");
        }
    }

    #[test]
    fn reports_what_is_wrong() {
        let key = key_text();
        let cases: Vec<(String, LinkError)> = vec![
            ("https://x".into(), LinkError::Scheme),
            (
                format!("postern://relay?v=1&key={key}"),
                LinkError::WrongKind {
                    found: "relay".into(),
                    expected: "server",
                },
            ),
            (
                format!("postern://server?tcp=a:1&key={key}"),
                LinkError::Missing("v"),
            ),
            (
                "postern://server?v=1&tcp=a:1".into(),
                LinkError::Missing("key"),
            ),
            (
                format!("postern://server?v=2&tcp=a:1&key={key}"),
                LinkError::UnsupportedVersion("2".into()),
            ),
            (
                format!("postern://server?v=1&key={key}"),
                LinkError::NoEndpoint,
            ),
            (
                "postern://server?v=1&tcp=a:1&key=AAAA".into(),
                LinkError::KeyLength(3),
            ),
            (
                format!("postern://server?v=1&v=1&tcp=a:1&key={key}"),
                LinkError::Duplicate("v"),
            ),
            (
                format!("postern://server?v=1&tcp=a%3A1&key={key}"),
                LinkError::PercentEncoded,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ServerLink>(), Err(want), "{text}");
        }
        let long = format!(
            "postern://server?v=1&tcp=a:1&key={key}&x={}",
            "y".repeat(MAX_LINK_LEN)
        );
        assert_eq!(
            long.parse::<ServerLink>(),
            Err(LinkError::TooLong(long.len()))
        );
        assert!(matches!(
            format!("postern://server?v=1&tcp=a:1&key={key}=").parse::<ServerLink>(),
            Err(LinkError::KeyEncoding(_))
        ));
        for endpoint in [
            "a", "a:0", "a:65536", "a:+1", "::1:7443", "[::1]", "[zz]:1", "-a:1", "a..b:1",
            "1.2.3:4", ":1", "a_b:1",
        ] {
            assert!(
                matches!(
                    format!("postern://server?v=1&tcp={endpoint}&key={key}").parse::<ServerLink>(),
                    Err(LinkError::BadEndpoint { .. })
                ),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn directory_locations_are_checked() {
        let key = key_text();
        let base = format!("postern://server?v=1&tcp=a:1&key={key}");
        let dkey = postern_tlog::note::Signer::from_seed(
            "d.example/directory",
            postern_tlog::note::Algorithm::Ed25519,
            [4; 32],
        )
        .unwrap()
        .verifier()
        .vkey();
        let d = URL_SAFE_NO_PAD.encode(&dkey);
        let full = format!(
            "{base}&dkey={d}&http=http://127.0.0.1:7448&dir=https://m.example/d.txt&doh=https://dns.example/dns-query&dns=_dir.d.example"
        );
        let link: ServerLink = full.parse().unwrap();
        assert_eq!(link.directory_key.as_deref(), Some(dkey.as_str()));
        assert_eq!(link.directory_verifier().unwrap().vkey(), dkey);
        assert_eq!(link.http.as_deref(), Some("http://127.0.0.1:7448"));
        assert_eq!(link.mirrors, ["https://m.example/d.txt"]);
        assert_eq!(
            link.dns,
            Some((
                "https://dns.example/dns-query".into(),
                "_dir.d.example".into()
            ))
        );
        assert_eq!(link.to_string(), full);
        // A version-1 link without them is still valid.
        assert_eq!(base.parse::<ServerLink>().unwrap().directory_key, None);
        let cases = [
            (format!("{base}&dkey=AAAA"), "dkey"),
            (
                format!("{base}&dkey={}", URL_SAFE_NO_PAD.encode(format!("{dkey}x"))),
                "dkey",
            ),
            (format!("{base}&http=ftp://x"), "url"),
            (format!("{base}&dir=https://a/b c"), "url"),
            (format!("{base}&doh=https://dns.example/q"), "dns"),
            (format!("{base}&dns=d.example"), "dns"),
            (
                format!("{base}&doh=https://dns.example/q&dns=bad..name"),
                "dns",
            ),
            (
                format!(
                    "{base}{}",
                    "&dir=https://m.example/d".repeat(MAX_MIRRORS + 1)
                ),
                "mirrors",
            ),
        ];
        for (text, what) in cases {
            let err = text.parse::<ServerLink>().unwrap_err();
            let ok = match what {
                "dkey" => matches!(err, LinkError::DirectoryKey(_)),
                "url" => matches!(err, LinkError::BadUrl { .. }),
                "dns" => err == LinkError::BadDns,
                _ => err == LinkError::TooManyMirrors,
            };
            assert!(ok, "{text}: {err}");
        }
    }

    fn arb_endpoint() -> impl Strategy<Value = String> {
        let port = 1..=u16::MAX;
        prop_oneof![
            (
                "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z]{1,8}){0,3}",
                port.clone()
            )
                .prop_filter("not all digits", |(h, _)| !h
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.'))
                .prop_map(|(h, p)| format!("{h}:{p}")),
            (any::<[u8; 4]>(), port.clone())
                .prop_map(|(a, p)| format!("{}:{p}", Ipv4Addr::from(a))),
            (any::<[u16; 8]>(), port).prop_map(|(a, p)| format!("[{}]:{p}", Ipv6Addr::from(a))),
        ]
    }

    proptest! {
        #[test]
        fn links_round_trip(
            tcp in proptest::collection::vec(arb_endpoint(), 1..5),
            tls in proptest::collection::vec(arb_endpoint(), 0..3),
            wss in proptest::collection::vec((arb_endpoint(), "(/[a-z0-9._~-]{0,8}){1,3}"), 0..3),
            quic in proptest::collection::vec(arb_endpoint(), 0..3),
            pin in proptest::option::of(any::<[u8; 32]>()),
            noise_key in any::<[u8; 32]>(),
        ) {
            let link = ServerLink {
                tcp,
                tls,
                wss: wss.into_iter().map(|(e, p)| format!("{e}{p}")).collect(),
                quic,
                sni: pin.map(|_| "cdn.example.net".to_owned()),
                cert_sha256: pin,
                noise_key,
                ..ServerLink::default()
            };
            prop_assert_eq!(link.to_string().parse::<ServerLink>(), Ok(link));
        }

        #[test]
        fn links_with_directory_locations_round_trip(
            tcp in proptest::collection::vec(arb_endpoint(), 1..3),
            noise_key in any::<[u8; 32]>(),
            seed in any::<[u8; 32]>(),
            http in proptest::option::of("https?://[a-z0-9.:]{1,20}(/[a-z0-9/?=.]{0,20})?"),
            mirrors in proptest::collection::vec("https://[a-z0-9.]{1,20}/[a-z0-9/._=?-]{0,30}", 0..=MAX_MIRRORS),
            dns in proptest::option::of(("https://[a-z.]{1,10}/dns-query", "[a-z]{1,10}\\.[a-z]{2,4}")),
        ) {
            let dkey = postern_tlog::note::Signer::from_seed(
                "chat.example.org/directory",
                postern_tlog::note::Algorithm::Ed25519,
                seed,
            )
            .unwrap()
            .verifier()
            .vkey();
            let link = ServerLink { tcp, noise_key, directory_key: Some(dkey), http, mirrors, dns, ..ServerLink::default() };
            prop_assert_eq!(link.to_string().parse::<ServerLink>(), Ok(link));
        }

        #[test]
        fn relay_links_round_trip(
            host in arb_endpoint(),
            secret in any::<[u8; 32]>(),
            key in proptest::option::of(any::<[u8; 32]>()),
            name in proptest::option::of("[a-z0-9._-]{1,32}"),
        ) {
            let link = RelayLink { host, sni: "www.example.org".into(), secret, server_key: key, name };
            prop_assert_eq!(link.to_string().parse::<RelayLink>(), Ok(link));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = text.parse::<ServerLink>();
            let _ = format!("postern://server?{text}").parse::<ServerLink>();
            let _ = format!("postern://relay?{text}").parse::<RelayLink>();
        }
    }

    #[test]
    fn device_links_carry_the_server_and_a_token() {
        let server = ServerLink {
            tcp: vec!["example.org:7447".into()],
            noise_key: KEY,
            ..ServerLink::default()
        };
        let link = DeviceLink {
            server: server.clone(),
            token: vec![1, 2, 3, 250],
        };
        let text = link.to_string();
        assert!(text.starts_with("postern://device?v=1&tcp=example.org:7447&key="));
        assert_eq!(text.parse::<DeviceLink>().unwrap(), link);
        assert!(
            !format!("{link:?}").contains("token"),
            "Debug hides the token"
        );
        assert_eq!(
            text.parse::<ServerLink>(),
            Err(LinkError::WrongKind {
                found: "device".into(),
                expected: "server"
            })
        );
        assert_eq!(
            server
                .to_string()
                .replace("server?", "device?")
                .parse::<DeviceLink>(),
            Err(LinkError::Missing("token"))
        );
    }
}
