//! The signed directory: what a client needs to find a way in — the
//! server's Noise key, its carrier endpoints with priorities, public relays,
//! the transparency log's keys — signed with an Ed25519 directory key in
//! the C2SP signed-note format.
//!
//! The signing and verifying of notes is `postern_tlog::note`'s: one
//! verifier serves checkpoints and directories, as the design asks. This
//! crate depends on `postern-tlog` without its `http` feature (so only the
//! sans-IO note, checkpoint and tile code) rather than moving the note code
//! here: the note code belongs to the C2SP family the log implements and is
//! tested there against the reference vectors; moving it would split that
//! family across crates for no gain.
//!
//! The body is a line-oriented text, easy to read and parsed strictly: one
//! canonical form per directory, so any change to the signed bytes is
//! either a parse error or a different directory whose signature fails.
//!
//! ```text
//! postern-directory/v1
//! origin chat.example.org
//! version 7
//! expires 1798000000
//! noise BASE64URL(32 bytes)
//! node ams-1                                  (0..=MAX_NODES)
//! endpoint tcp chat.example.org 7447 priority=10 node=ams-1
//! endpoint tls 192.0.2.7 443 priority=20 sni=cdn.example.net pin=HEX64
//! endpoint wss cdn.example.net 443 priority=30 path=/chat
//! endpoint quic 2001:db8::7 443 priority=40
//! relay postern://relay?…                     (0..=MAX_RELAYS)
//! log-key VKEY                                (0 or 1)
//! witness VKEY                                (0..=MAX_WITNESSES)
//! ```
//!
//! Lines come in this order; endpoint options come in the order `priority`
//! (required), `sni`, `path`, `node`, `pin`. A client accepts a directory
//! only through [`accept`]: signed by the pinned key, not expired, and
//! newer than the one it holds — so a censor replaying an old directory
//! (rollback) gains nothing, and one withholding updates (freeze) can do so
//! only until the held directory expires.
//!
//! Nothing here touches the network; the fetch channels live in the client.

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_tlog::note::{Note, NoteError, Signer, Verifier};

/// The first line of every directory body.
pub const HEADER: &str = "postern-directory/v1";
/// Largest signed directory accepted, in bytes (text and signatures).
pub const MAX_DIRECTORY_LEN: usize = 32 * 1024;
/// Most endpoints in a directory.
pub const MAX_ENDPOINTS: usize = 64;
/// Most relay links in a directory.
pub const MAX_RELAYS: usize = 64;
/// Most server nodes in a directory.
pub const MAX_NODES: usize = 32;
/// Most witness keys in a directory.
pub const MAX_WITNESSES: usize = 32;
/// Longest WebSocket path, node id, origin or relay link, in bytes.
pub const MAX_FIELD_LEN: usize = 1024;

/// How bytes cross the network to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Carrier {
    /// Plain TCP.
    Tcp,
    /// TLS 1.3 over TCP.
    Tls,
    /// WebSocket over TLS (behind a reverse proxy or CDN).
    Wss,
    /// QUIC.
    Quic,
}

impl Carrier {
    /// The name used in directories (`tcp`, `tls`, `wss`, `quic`).
    pub fn name(self) -> &'static str {
        match self {
            Carrier::Tcp => "tcp",
            Carrier::Tls => "tls",
            Carrier::Wss => "wss",
            Carrier::Quic => "quic",
        }
    }
}

impl FromStr for Carrier {
    type Err = ();

    fn from_str(s: &str) -> Result<Carrier, ()> {
        match s {
            "tcp" => Ok(Carrier::Tcp),
            "tls" => Ok(Carrier::Tls),
            "wss" => Ok(Carrier::Wss),
            "quic" => Ok(Carrier::Quic),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One way to reach the server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The carrier.
    pub carrier: Carrier,
    /// Host name (lowercase) or IP address (IPv6 without brackets).
    pub host: String,
    /// Port, 1 to 65535.
    pub port: u16,
    /// Lower is tried first.
    pub priority: u32,
    /// TLS server name to send, if not the host (TLS, WSS, QUIC).
    pub sni: Option<String>,
    /// The WebSocket path (WSS only), starting with `/`.
    pub path: Option<String>,
    /// The server node behind it; several nodes may serve one service.
    pub node: Option<String>,
    /// SHA-256 of the certificate the endpoint must present (TLS pin).
    pub cert_sha256: Option<[u8; 32]>,
}

impl Endpoint {
    /// `HOST:PORT`, with an IPv6 host in brackets: what a socket connects to.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The directory a server publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    /// The service name, e.g. `chat.example.org`.
    pub origin: String,
    /// Increases with every directory the operator signs.
    pub version: u64,
    /// Unix time (seconds) after which clients refuse it.
    pub expires: u64,
    /// The server's Noise static public key.
    pub noise_key: [u8; 32],
    /// Server node ids that endpoints may name.
    pub nodes: Vec<String>,
    /// Carrier endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Public relay links (`postern://relay?…`).
    pub relays: Vec<String>,
    /// The transparency log's verifier key (a C2SP vkey), if any.
    pub log_key: Option<String>,
    /// Witness keys (C2SP vkeys) of the log.
    pub witnesses: Vec<String>,
}

/// What was wrong with a directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// Larger than [`MAX_DIRECTORY_LEN`].
    #[error("the directory is {len} bytes; at most {MAX_DIRECTORY_LEN} are accepted")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not a signed note at all (cut short, or never signed).
    #[error("not a signed directory (truncated or unsigned?): {0}")]
    NotSigned(NoteError),
    /// Signed, but not by the pinned directory key.
    #[error(
        "the directory is not signed by the pinned directory key {expected} \
         (signed by: {signed_by}); it may be forged, or the link is for another service"
    )]
    WrongKey {
        /// The pinned key's vkey.
        expected: String,
        /// The names of the keys that did sign it.
        signed_by: String,
    },
    /// A signature from the pinned key does not verify.
    #[error("the directory's signature by {0} is invalid: the directory was altered or forged")]
    BadSignature(String),
    /// The body does not follow the format.
    #[error("directory line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Past its expiry.
    #[error(
        "the directory expired at unix time {expires} (now {now}); fetch a fresh one \
         (`postern directory fetch`) or ask the operator to re-sign it"
    )]
    Expired {
        /// Its expiry.
        expires: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// Older than the one already held: a replay.
    #[error(
        "the directory has version {offered}, older than the version {held} already held; \
         refusing a rollback"
    )]
    Older {
        /// The offered version.
        offered: u64,
        /// The held version.
        held: u64,
    },
    /// Same version as the held one but different bytes: the key signed
    /// two directories under one version.
    #[error(
        "the directory has version {0}, the same as the one held, but different contents; \
         the operator must raise the version with every change"
    )]
    Conflict(u64),
    /// A directory to sign is not valid (see [`Directory::check`]).
    #[error("invalid directory: {0}")]
    Invalid(String),
}

fn malformed(line: usize, reason: impl Into<String>) -> DirectoryError {
    DirectoryError::Malformed {
        line,
        reason: reason.into(),
    }
}

impl Directory {
    /// The body text, in its one canonical form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{HEADER}");
        let _ = writeln!(s, "origin {}", self.origin);
        let _ = writeln!(s, "version {}", self.version);
        let _ = writeln!(s, "expires {}", self.expires);
        let _ = writeln!(s, "noise {}", URL_SAFE_NO_PAD.encode(self.noise_key));
        for n in &self.nodes {
            let _ = writeln!(s, "node {n}");
        }
        for e in &self.endpoints {
            let _ = write!(
                s,
                "endpoint {} {} {} priority={}",
                e.carrier, e.host, e.port, e.priority
            );
            if let Some(sni) = &e.sni {
                let _ = write!(s, " sni={sni}");
            }
            if let Some(path) = &e.path {
                let _ = write!(s, " path={path}");
            }
            if let Some(node) = &e.node {
                let _ = write!(s, " node={node}");
            }
            if let Some(pin) = &e.cert_sha256 {
                let _ = write!(s, " pin={}", hex::encode(pin));
            }
            s.push('\n');
        }
        for r in &self.relays {
            let _ = writeln!(s, "relay {r}");
        }
        if let Some(k) = &self.log_key {
            let _ = writeln!(s, "log-key {k}");
        }
        for w in &self.witnesses {
            let _ = writeln!(s, "witness {w}");
        }
        s
    }

    /// Checks every field (the rules [`Directory::parse_text`] applies), so
    /// nothing invalid is ever signed.
    pub fn check(&self) -> Result<(), DirectoryError> {
        let text = self.to_text();
        match Directory::parse_text(&text) {
            Ok(d) if d == *self => Ok(()),
            Ok(_) => Err(DirectoryError::Invalid(
                "a field is not in canonical form (upper-case host, IPv6 in brackets?)".into(),
            )),
            Err(DirectoryError::Malformed { reason, .. }) => Err(DirectoryError::Invalid(reason)),
            Err(e) => Err(e),
        }
    }

    /// Parses a body strictly: one canonical form, limits enforced.
    pub fn parse_text(text: &str) -> Result<Directory, DirectoryError> {
        if text.len() > MAX_DIRECTORY_LEN {
            return Err(DirectoryError::TooLarge { len: text.len() });
        }
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed(1, "the text must end with a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let mut it = lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i + 1, *l))
            .peekable();

        let mut fixed = |key: &str| -> Result<(usize, &str), DirectoryError> {
            let (n, line) = it
                .next()
                .ok_or_else(|| malformed(lines.len() + 1, format!("missing \"{key}\" line")))?;
            if key == HEADER {
                return if line == HEADER {
                    Ok((n, ""))
                } else {
                    Err(malformed(
                        n,
                        format!("the first line must be \"{HEADER}\" (a newer directory format?)"),
                    ))
                };
            }
            line.strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .map(|v| (n, v))
                .ok_or_else(|| malformed(n, format!("expected \"{key} …\"")))
        };
        fixed(HEADER)?;
        let (n, origin) = fixed("origin")?;
        if !valid_token(origin) {
            return Err(malformed(
                n,
                "the origin must be printable ASCII without spaces or '+'",
            ));
        }
        let (n, version) = fixed("version")?;
        let version = parse_u64(version).ok_or_else(|| malformed(n, "version is not a number"))?;
        let (n, expires) = fixed("expires")?;
        let expires =
            parse_u64(expires).ok_or_else(|| malformed(n, "expires is not a unix time"))?;
        let (n, noise) = fixed("noise")?;
        let noise_key = URL_SAFE_NO_PAD
            .decode(noise)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| malformed(n, "the noise key is not 32 bytes of unpadded base64url"))?;

        let mut d = Directory {
            origin: origin.to_owned(),
            version,
            expires,
            noise_key,
            nodes: Vec::new(),
            endpoints: Vec::new(),
            relays: Vec::new(),
            log_key: None,
            witnesses: Vec::new(),
        };
        // The optional sections, each in its place.
        let mut stage = 0;
        for (n, line) in it {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| malformed(n, "expected \"KEY VALUE\""))?;
            let this = match key {
                "node" => 1,
                "endpoint" => 2,
                "relay" => 3,
                "log-key" => 4,
                "witness" => 5,
                other => return Err(malformed(n, format!("unknown line \"{other}\""))),
            };
            if this < stage || (this == 4 && stage == 4) {
                return Err(malformed(
                    n,
                    format!(
                        "\"{key}\" is out of place or repeated (order: node, endpoint, relay, log-key, witness)"
                    ),
                ));
            }
            stage = this;
            match this {
                1 => {
                    if !valid_node(value) {
                        return Err(malformed(
                            n,
                            "a node id is 1 to 64 of a-z, 0-9, '-', '_', '.'",
                        ));
                    }
                    if d.nodes.iter().any(|x| x == value) {
                        return Err(malformed(n, format!("node \"{value}\" is listed twice")));
                    }
                    push_limited(&mut d.nodes, value.to_owned(), MAX_NODES, n, "nodes")?;
                }
                2 => {
                    let e = parse_endpoint(value, &d.nodes).map_err(|r| malformed(n, r))?;
                    push_limited(&mut d.endpoints, e, MAX_ENDPOINTS, n, "endpoints")?;
                }
                3 => {
                    if !value.starts_with("postern://relay?")
                        || value.len() > MAX_FIELD_LEN
                        || !valid_token_plus(value)
                    {
                        return Err(malformed(
                            n,
                            "a relay is a postern://relay?… link without spaces",
                        ));
                    }
                    push_limited(&mut d.relays, value.to_owned(), MAX_RELAYS, n, "relays")?;
                }
                4 => {
                    check_vkey(value).map_err(|r| malformed(n, format!("log-key: {r}")))?;
                    d.log_key = Some(value.to_owned());
                }
                _ => {
                    check_vkey(value).map_err(|r| malformed(n, format!("witness: {r}")))?;
                    push_limited(
                        &mut d.witnesses,
                        value.to_owned(),
                        MAX_WITNESSES,
                        n,
                        "witnesses",
                    )?;
                }
            }
        }
        if d.to_text() != text {
            // Every field was valid, but something was not written the one
            // way the directory prints it (e.g. "007", an upper-case host).
            let line = d
                .to_text()
                .split('\n')
                .zip(text.split('\n'))
                .position(|(a, b)| a != b)
                .map_or(1, |i| i + 1);
            return Err(malformed(
                line,
                "not in canonical form (leading zeros, upper case, extra spaces?)",
            ));
        }
        Ok(d)
    }

    /// The endpoints, lowest priority value first (stable for equal ones).
    pub fn endpoints_by_priority(&self) -> Vec<&Endpoint> {
        let mut v: Vec<&Endpoint> = self.endpoints.iter().collect();
        v.sort_by_key(|e| e.priority);
        v
    }

    /// `HOST:PORT` of every TCP endpoint, in priority order.
    pub fn tcp_addrs(&self) -> Vec<String> {
        self.endpoints_by_priority()
            .into_iter()
            .filter(|e| e.carrier == Carrier::Tcp)
            .map(Endpoint::addr)
            .collect()
    }

    /// Signs the directory with `key`: the signed note to publish.
    pub fn sign(&self, key: &Signer) -> Result<SignedDirectory, DirectoryError> {
        self.check()?;
        let mut note = Note::new(&self.to_text())
            .map_err(|e| DirectoryError::Invalid(format!("cannot be a note: {e}")))?;
        note.sign(key, 0);
        let bytes = note.to_string().into_bytes();
        if bytes.len() > MAX_DIRECTORY_LEN {
            return Err(DirectoryError::TooLarge { len: bytes.len() });
        }
        Ok(SignedDirectory {
            directory: self.clone(),
            bytes,
        })
    }
}

fn push_limited<T>(
    v: &mut Vec<T>,
    x: T,
    max: usize,
    line: usize,
    what: &str,
) -> Result<(), DirectoryError> {
    if v.len() == max {
        return Err(malformed(line, format!("more than {max} {what}")));
    }
    v.push(x);
    Ok(())
}

fn parse_u64(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Printable ASCII, no spaces, no '+', at most [`MAX_FIELD_LEN`].
fn valid_token(s: &str) -> bool {
    valid_token_plus(s) && !s.contains('+')
}

fn valid_token_plus(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_FIELD_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_node(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn check_vkey(s: &str) -> Result<(), String> {
    if !valid_token_plus(s) {
        return Err("not a verifier key".into());
    }
    let v = Verifier::from_vkey(s).map_err(|e| e.to_string())?;
    if v.vkey() != s {
        return Err("not in canonical form".into());
    }
    Ok(())
}

/// A lowercase DNS name or an IP address (IPv6 without brackets), as the
/// canonical text.
fn canonical_host(host: &str) -> Option<String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    crate::link::canonical_host(host)
}

fn parse_endpoint(value: &str, nodes: &[String]) -> Result<Endpoint, String> {
    let mut parts = value.split(' ');
    let carrier: Carrier = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or("the carrier must be tcp, tls, wss or quic")?;
    let host = parts.next().ok_or("missing host")?;
    let host = canonical_host(host).ok_or("the host is not a host name or IP address")?;
    let port: u16 = parts
        .next()
        .and_then(parse_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or("the port is not a number from 1 to 65535")?;
    let mut e = Endpoint {
        carrier,
        host,
        port,
        priority: 0,
        sni: None,
        path: None,
        node: None,
        cert_sha256: None,
    };
    let priority = parts
        .next()
        .and_then(|p| p.strip_prefix("priority="))
        .ok_or("missing priority=N after the port")?;
    e.priority = parse_u64(priority)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or("priority is not a number up to 4294967295")?;
    let order = ["sni", "path", "node", "pin"];
    let mut next = 0;
    for opt in parts {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| format!("option \"{opt}\" is not KEY=VALUE"))?;
        let at = order
            .iter()
            .position(|o| *o == k)
            .ok_or_else(|| format!("unknown endpoint option \"{k}\""))?;
        if at < next {
            return Err(format!(
                "option \"{k}\" is out of order or repeated (order: sni, path, node, pin)"
            ));
        }
        next = at + 1;
        match k {
            "sni" => {
                if carrier == Carrier::Tcp {
                    return Err("a tcp endpoint has no sni".into());
                }
                e.sni = Some(
                    crate::link::canonical_host(v)
                        .filter(|h| h.parse::<Ipv6Addr>().is_err())
                        .ok_or("sni is not a host name")?,
                );
            }
            "path" => {
                if carrier != Carrier::Wss {
                    return Err("only a wss endpoint has a path".into());
                }
                if !v.starts_with('/') || !valid_token_plus(v) {
                    return Err("the path must start with '/' and have no spaces".into());
                }
                e.path = Some(v.to_owned());
            }
            "node" => {
                if !nodes.iter().any(|n| n == v) {
                    return Err(format!(
                        "node \"{v}\" is not listed in a \"node\" line above"
                    ));
                }
                e.node = Some(v.to_owned());
            }
            _ => {
                if carrier == Carrier::Tcp {
                    return Err("a tcp endpoint has no certificate pin".into());
                }
                let mut pin = [0u8; 32];
                hex::decode_to_slice(v, &mut pin)
                    .map_err(|_| "pin is not 64 hex digits (SHA-256)".to_owned())?;
                e.cert_sha256 = Some(pin);
            }
        }
    }
    if carrier == Carrier::Wss && e.path.is_none() {
        return Err("a wss endpoint needs path=/…".into());
    }
    Ok(e)
}

/// A directory with the signed note it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDirectory {
    directory: Directory,
    bytes: Vec<u8>,
}

impl SignedDirectory {
    /// Parses a signed directory and checks its signature by `key`, but
    /// not its expiry or version (see [`accept`]).
    pub fn verify(bytes: &[u8], key: &Verifier) -> Result<SignedDirectory, DirectoryError> {
        let (note, directory) = SignedDirectory::parse_unverified(bytes)?;
        match note.verify(std::slice::from_ref(key)) {
            Ok(_) => {}
            Err(NoteError::NoTrustedSignature) => {
                return Err(DirectoryError::WrongKey {
                    expected: key.vkey(),
                    signed_by: note
                        .signatures()
                        .iter()
                        .map(|s| format!("{}+{:08x}", s.name, s.key_id))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Err(_) => return Err(DirectoryError::BadSignature(key.vkey())),
        }
        Ok(SignedDirectory {
            directory,
            bytes: bytes.to_vec(),
        })
    }

    /// Parses a signed directory without checking any signature: for
    /// showing a file before trusting it. Returns the note too, whose
    /// signature lines name the keys that signed it.
    pub fn parse_unverified(bytes: &[u8]) -> Result<(Note, Directory), DirectoryError> {
        if bytes.len() > MAX_DIRECTORY_LEN {
            return Err(DirectoryError::TooLarge { len: bytes.len() });
        }
        let note = Note::parse(bytes).map_err(DirectoryError::NotSigned)?;
        let directory = Directory::parse_text(note.text())?;
        Ok((note, directory))
    }

    /// The directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The signed note, exactly as published.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What [`accept`] decided about a directory that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Newer than the held one (or the first): cache it.
    Newer(Box<SignedDirectory>),
    /// The very directory already held.
    Same,
}

/// The client's rule: a directory is accepted only if it is signed by the
/// pinned `key`, not expired at `now` (unix seconds), and newer than
/// `held` (the same version only as the same bytes).
pub fn accept(
    bytes: &[u8],
    key: &Verifier,
    now: u64,
    held: Option<&SignedDirectory>,
) -> Result<Accepted, DirectoryError> {
    let offered = SignedDirectory::verify(bytes, key)?;
    let d = offered.directory();
    if d.expires <= now {
        return Err(DirectoryError::Expired {
            expires: d.expires,
            now,
        });
    }
    if let Some(held) = held {
        let held_version = held.directory().version;
        if d.version < held_version {
            return Err(DirectoryError::Older {
                offered: d.version,
                held: held_version,
            });
        }
        if d.version == held_version {
            return if held.directory() == d {
                Ok(Accepted::Same)
            } else {
                Err(DirectoryError::Conflict(d.version))
            };
        }
    }
    Ok(Accepted::Newer(Box::new(offered)))
}

/// The directory in DNS TXT records, for fetching over DNS-over-HTTPS.
///
/// The signed note is base64-encoded and cut into TXT strings of at most
/// 255 bytes, [`CHUNKS_PER_RECORD`](txt::CHUNKS_PER_RECORD) strings per
/// record after a first string `postern-dir1 I/N` (record I of N, from 1),
/// because resolvers may return records in any order. Other TXT records at
/// the name (SPF and the like) are ignored.
pub mod txt {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::MAX_DIRECTORY_LEN;

    /// The tag that starts the first string of each record.
    pub const PREFIX: &str = "postern-dir1";
    /// Data strings per record (each at most 255 bytes).
    pub const CHUNKS_PER_RECORD: usize = 8;
    /// Most records one directory may span.
    pub const MAX_RECORDS: usize = 64;

    /// Why TXT records do not make a directory.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum TxtError {
        /// No record starts with [`PREFIX`].
        #[error("no TXT record holds a Postern directory (none starts with \"{PREFIX}\")")]
        NoRecords,
        /// A record's header is not `postern-dir1 I/N`.
        #[error("a directory TXT record has a malformed header")]
        BadHeader,
        /// Records are missing, repeated or disagree on N.
        #[error("the directory TXT records are incomplete or inconsistent (have {have} of {want})")]
        Incomplete {
            /// Distinct records received.
            have: usize,
            /// Records announced.
            want: usize,
        },
        /// The joined strings are not base64, or too large.
        #[error("the directory TXT records do not decode: {0}")]
        Decode(String),
    }

    /// The records to publish, each a list of TXT strings.
    pub fn encode(signed: &[u8]) -> Vec<Vec<String>> {
        let b64 = STANDARD.encode(signed);
        let chunks: Vec<String> = b64
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let mut groups: Vec<&[String]> = chunks.chunks(CHUNKS_PER_RECORD).collect();
        if groups.is_empty() {
            groups.push(&[]);
        }
        let n = groups.len();
        groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let mut r = vec![format!("{PREFIX} {}/{n}", i + 1)];
                r.extend(g.iter().cloned());
                r
            })
            .collect()
    }

    /// Joins the records found at the name (each a list of TXT strings as
    /// raw bytes) back into the signed note. Nothing is verified here.
    pub fn decode(records: &[Vec<Vec<u8>>]) -> Result<Vec<u8>, TxtError> {
        let mut parts: Vec<Option<Vec<u8>>> = Vec::new();
        let mut want = None;
        for r in records {
            let Some(head) = r.first() else { continue };
            let Some(rest) = head
                .strip_prefix(PREFIX.as_bytes())
                .and_then(|h| h.strip_prefix(b" "))
            else {
                continue;
            };
            let rest = std::str::from_utf8(rest).map_err(|_| TxtError::BadHeader)?;
            let (i, n) = rest.split_once('/').ok_or(TxtError::BadHeader)?;
            let (i, n): (usize, usize) = (
                i.parse().map_err(|_| TxtError::BadHeader)?,
                n.parse().map_err(|_| TxtError::BadHeader)?,
            );
            if n == 0 || n > MAX_RECORDS || i == 0 || i > n {
                return Err(TxtError::BadHeader);
            }
            if *want.get_or_insert(n) != n {
                return Err(TxtError::Incomplete { have: 0, want: n });
            }
            parts.resize(n, None);
            if parts[i - 1].is_some() {
                return Err(TxtError::Incomplete { have: i, want: n });
            }
            if r.len() > CHUNKS_PER_RECORD + 1 {
                return Err(TxtError::Decode("a record has too many strings".into()));
            }
            parts[i - 1] = Some(r[1..].concat());
        }
        let want = want.ok_or(TxtError::NoRecords)?;
        let have = parts.iter().filter(|p| p.is_some()).count();
        if have != want {
            return Err(TxtError::Incomplete { have, want });
        }
        let joined: Vec<u8> = parts.into_iter().flatten().flatten().collect();
        if joined.len() > MAX_DIRECTORY_LEN * 4 / 3 + 4 {
            return Err(TxtError::Decode("larger than a directory may be".into()));
        }
        STANDARD
            .decode(joined)
            .map_err(|e| TxtError::Decode(e.to_string()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        fn raw(records: &[Vec<String>]) -> Vec<Vec<Vec<u8>>> {
            records
                .iter()
                .map(|r| r.iter().map(|s| s.as_bytes().to_vec()).collect())
                .collect()
        }

        proptest! {
            #[test]
            fn records_round_trip_in_any_order(
                data in proptest::collection::vec(any::<u8>(), 0..12_000),
                seed in any::<u64>(),
            ) {
                let mut records = encode(&data);
                prop_assert!(records.iter().all(|r| r.iter().all(|s| s.len() <= 255)));
                // Reverse or rotate: DNS gives no order.
                let k = (seed as usize) % records.len();
                records.rotate_left(k);
                records.push(vec!["v=spf1 -all".into()]);
                prop_assert_eq!(decode(&raw(&records)), Ok(data));
            }

            #[test]
            fn arbitrary_records_never_panic(
                records in proptest::collection::vec(
                    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4), 0..6)
            ) {
                let _ = decode(&records);
            }
        }

        #[test]
        fn missing_or_repeated_records_are_refused() {
            let records = encode(&[7u8; 5000]);
            assert!(records.len() > 1);
            let mut missing = records.clone();
            missing.pop();
            assert!(matches!(
                decode(&raw(&missing)),
                Err(TxtError::Incomplete { .. })
            ));
            let mut twice = records.clone();
            twice.push(records[0].clone());
            assert!(matches!(
                decode(&raw(&twice)),
                Err(TxtError::Incomplete { .. })
            ));
            assert_eq!(decode(&[]), Err(TxtError::NoRecords));
            assert_eq!(
                decode(&raw(&[vec!["postern-dir1 0/1".into()]])),
                Err(TxtError::BadHeader)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_tlog::note::Algorithm;
    use proptest::prelude::*;

    fn key() -> Signer {
        Signer::from_seed("chat.example.org/directory", Algorithm::Ed25519, [9; 32]).unwrap()
    }

    fn sample() -> Directory {
        let log = Signer::from_seed("chat.example.org/log", Algorithm::Ed25519, [1; 32]).unwrap();
        let witness =
            Signer::from_seed("witness.example.net", Algorithm::Ed25519, [2; 32]).unwrap();
        Directory {
            origin: "chat.example.org".into(),
            version: 7,
            expires: 2_000_000_000,
            noise_key: [5; 32],
            nodes: vec!["ams-1".into(), "fra-2".into()],
            endpoints: vec![
                Endpoint {
                    carrier: Carrier::Tls,
                    host: "192.0.2.7".into(),
                    port: 443,
                    priority: 20,
                    sni: Some("cdn.example.net".into()),
                    path: None,
                    node: Some("fra-2".into()),
                    cert_sha256: Some([0xab; 32]),
                },
                Endpoint {
                    carrier: Carrier::Tcp,
                    host: "chat.example.org".into(),
                    port: 7447,
                    priority: 10,
                    sni: None,
                    path: None,
                    node: Some("ams-1".into()),
                    cert_sha256: None,
                },
                Endpoint {
                    carrier: Carrier::Wss,
                    host: "cdn.example.net".into(),
                    port: 443,
                    priority: 30,
                    sni: None,
                    path: Some("/chat".into()),
                    node: None,
                    cert_sha256: None,
                },
                Endpoint {
                    carrier: Carrier::Quic,
                    host: "2001:db8::7".into(),
                    port: 443,
                    priority: 40,
                    sni: None,
                    path: None,
                    node: None,
                    cert_sha256: None,
                },
            ],
            relays: vec!["postern://relay?v=1&host=r.example&secret=abc".into()],
            log_key: Some(log.verifier().vkey()),
            witnesses: vec![witness.verifier().vkey()],
        }
    }

    #[test]
    fn a_full_directory_round_trips_and_verifies() {
        let d = sample();
        let text = d.to_text();
        assert!(text.contains("endpoint quic 2001:db8::7 443 priority=40\n"));
        assert_eq!(Directory::parse_text(&text), Ok(d.clone()));
        let signed = d.sign(&key()).unwrap();
        let back = SignedDirectory::verify(signed.bytes(), &key().verifier()).unwrap();
        assert_eq!(back.directory(), &d);
        assert_eq!(d.tcp_addrs(), ["chat.example.org:7447"]);
        assert_eq!(
            d.endpoints_by_priority()
                .iter()
                .map(|e| e.priority)
                .collect::<Vec<_>>(),
            [10, 20, 30, 40]
        );
        assert_eq!(d.endpoints[3].addr(), "[2001:db8::7]:443");
    }

    #[test]
    fn accept_enforces_key_expiry_and_version() {
        let k = key();
        let d = sample();
        let signed = d.sign(&k).unwrap();
        let now = 1_900_000_000;
        assert_eq!(
            accept(signed.bytes(), &k.verifier(), now, None),
            Ok(Accepted::Newer(Box::new(signed.clone())))
        );
        assert_eq!(
            accept(signed.bytes(), &k.verifier(), now, Some(&signed)),
            Ok(Accepted::Same)
        );
        // Expired.
        assert_eq!(
            accept(signed.bytes(), &k.verifier(), d.expires, None),
            Err(DirectoryError::Expired {
                expires: d.expires,
                now: d.expires
            })
        );
        // Older than held.
        let newer = Directory {
            version: 8,
            ..d.clone()
        }
        .sign(&k)
        .unwrap();
        assert_eq!(
            accept(signed.bytes(), &k.verifier(), now, Some(&newer)),
            Err(DirectoryError::Older {
                offered: 7,
                held: 8
            })
        );
        // Same version, other content.
        let other = Directory {
            expires: d.expires + 1,
            ..d.clone()
        }
        .sign(&k)
        .unwrap();
        assert_eq!(
            accept(other.bytes(), &k.verifier(), now, Some(&signed)),
            Err(DirectoryError::Conflict(7))
        );
        // Wrong key.
        let stranger =
            Signer::from_seed("chat.example.org/directory", Algorithm::Ed25519, [3; 32]).unwrap();
        let forged = d.sign(&stranger).unwrap();
        let err = accept(forged.bytes(), &k.verifier(), now, None).unwrap_err();
        assert!(matches!(err, DirectoryError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("not signed by the pinned"));
        // Bad signature: the signed text altered after signing.
        let tampered = String::from_utf8(signed.bytes().to_vec())
            .unwrap()
            .replace("version 7", "version 9");
        assert_eq!(
            accept(tampered.as_bytes(), &k.verifier(), now, None),
            Err(DirectoryError::BadSignature(k.verifier().vkey()))
        );
        // Truncated anywhere: refused, never panics.
        for cut in 0..signed.bytes().len() {
            assert!(accept(&signed.bytes()[..cut], &k.verifier(), now, None).is_err());
        }
        let cut = &signed.bytes()[..signed.bytes().len() / 2];
        assert!(matches!(
            accept(cut, &k.verifier(), now, None),
            Err(DirectoryError::NotSigned(_))
        ));
    }

    #[test]
    fn strict_parsing_names_the_line() {
        let good = sample().to_text();
        assert_eq!(Directory::parse_text(&good), Ok(sample()));
        let cases = [
            (
                good.replace("postern-directory/v1", "postern-directory/v2"),
                1,
            ),
            (good.replace("origin chat", "origin  chat"), 2),
            (good.replace("version 7", "version 07"), 3),
            (good.replace("version 7", "version x"), 3),
            (good.replace("expires 2000000000", "expires -1"), 4),
            (good.replace("noise BQUF", "noise !QUF"), 5),
            (good.replace("node fra-2\n", "node fra-2\nnode fra-2\n"), 8),
            (good.replace(" pin=abab", " pin=ABAB"), 8),
            (good.replace("priority=10", "priority=10 sni=a.b"), 9),
            (good.replace(" node=ams-1", " node=nope"), 9),
            (
                good.replace("chat.example.org 7447", "Chat.example.org 7447"),
                9,
            ),
            (good.replace("path=/chat", "path=chat"), 10),
            (good.replace("relay postern", "relay https"), 12),
            (good.clone() + "bogus line\n", 15),
        ];
        for (text, line) in cases {
            match Directory::parse_text(&text) {
                Err(DirectoryError::Malformed { line: got, reason }) => {
                    assert_eq!(got, line, "{reason}: {text}")
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        // Reordered sections.
        let reordered = good
            .replacen("node ams-1\n", "", 1)
            .replace("relay postern", "node ams-1\nrelay postern");
        assert!(Directory::parse_text(&reordered).is_err());
        // Limits.
        let mut d = sample();
        d.relays = vec!["postern://relay?x".into(); MAX_RELAYS + 1];
        assert!(matches!(
            Directory::parse_text(&d.to_text()),
            Err(DirectoryError::Malformed { .. })
        ));
        assert!(d.sign(&key()).is_err());
        let huge = "x".repeat(MAX_DIRECTORY_LEN + 1);
        assert_eq!(
            Directory::parse_text(&huge),
            Err(DirectoryError::TooLarge { len: huge.len() })
        );
    }

    fn arb_host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]{1,6}){0,2}",
            any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
            any::<[u16; 8]>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        ]
    }

    fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
        (
            0..4u8,
            arb_host(),
            1..=u16::MAX,
            any::<u32>(),
            proptest::option::of("[a-z]{1,8}\\.[a-z]{2,4}"),
            "/[a-z0-9/]{0,12}",
            proptest::option::of(any::<[u8; 32]>()),
            any::<bool>(),
        )
            .prop_map(|(c, host, port, priority, sni, path, pin, node)| {
                let carrier = [Carrier::Tcp, Carrier::Tls, Carrier::Wss, Carrier::Quic][c as usize];
                let tcp = carrier == Carrier::Tcp;
                Endpoint {
                    carrier,
                    host,
                    port,
                    priority,
                    sni: if tcp { None } else { sni },
                    path: (carrier == Carrier::Wss).then_some(path),
                    node: node.then(|| "n1".to_owned()),
                    cert_sha256: if tcp { None } else { pin },
                }
            })
    }

    fn arb_directory() -> impl Strategy<Value = Directory> {
        (
            "[a-z]{1,10}\\.[a-z]{2,5}",
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(arb_endpoint(), 0..6),
            proptest::collection::vec("postern://relay\\?[a-z0-9=&]{1,20}", 0..3),
            any::<bool>(),
        )
            .prop_map(
                |(origin, version, expires, noise_key, endpoints, relays, log)| Directory {
                    origin,
                    version,
                    expires,
                    noise_key,
                    nodes: vec!["n1".into()],
                    endpoints,
                    relays,
                    log_key: log.then(|| key().verifier().vkey()),
                    witnesses: Vec::new(),
                },
            )
    }

    proptest! {
        #[test]
        fn directories_round_trip(d in arb_directory()) {
            prop_assert_eq!(Directory::parse_text(&d.to_text()), Ok(d.clone()));
            let signed = d.sign(&key()).unwrap();
            let back = SignedDirectory::verify(signed.bytes(), &key().verifier()).unwrap();
            prop_assert_eq!(back.directory(), &d);
        }

        #[test]
        fn any_change_to_the_signed_bytes_is_refused(
            d in arb_directory(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let signed = d.sign(&key()).unwrap();
            let mut bytes = signed.bytes().to_vec();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            // The flipped byte may land in the signature line, in the text,
            // or make the file not UTF-8: every case must be refused.
            prop_assert!(SignedDirectory::verify(&bytes, &key().verifier()).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SignedDirectory::parse_unverified(&bytes);
            let mut text = HEADER.to_owned();
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&bytes));
            let _ = Directory::parse_text(&text);
        }
    }
}
