//! The signed directory on the client: the one rule for accepting it
//! (`postern_proto::directory::accept` with the key pinned from the server
//! link), its cache in the home, and the channels it is fetched through.
//!
//! A censor that blocks one way of fetching the directory should not stop
//! the member getting it, so [`Client::fetch_directory`] tries each channel
//! in turn — the server's HTTP API, a connected carrier, a relay, DNS TXT
//! records over DNS-over-HTTPS, static mirrors — and reports, channel by
//! channel, what failed and why. A directory pasted by the member
//! ([`Client::import_directory`]) passes the same checks.
//!
//! Whatever a channel returns is untrusted: only the pinned key's signature
//! makes it a directory, and only a newer unexpired one replaces the cache.
//! Bodies are read up to [`MAX_DIRECTORY_LEN`] and no further.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use postern_proto::directory::{self, Accepted, MAX_DIRECTORY_LEN, SignedDirectory};
use postern_proto::pb::{self, request::Kind as Req, response::Kind as Resp};
use postern_tlog::note::Verifier;

use crate::{Client, ClientError};

/// The home setting that holds the cached signed directory.
const HOME_KEY: &str = "directory";
/// The home setting that says where the cached directory came from.
const SOURCE_KEY: &str = "directory_source";

/// How long one channel may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A way of fetching the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `GET /directory` on the server's HTTP API (link `http=`).
    Http,
    /// `FetchDirectory` over a carrier connection to the server.
    Carrier,
    /// Through a relay the member holds.
    Relay,
    /// TXT records over DNS-over-HTTPS (link `doh=` and `dns=`).
    Dns,
    /// A static copy on any web host (link `dir=`).
    Mirror,
}

impl Channel {
    /// Every channel, in the order [`Client::fetch_directory`] tries them.
    pub const ALL: [Channel; 5] = [
        Channel::Http,
        Channel::Carrier,
        Channel::Relay,
        Channel::Dns,
        Channel::Mirror,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Http => "http",
            Channel::Carrier => "carrier",
            Channel::Relay => "relay",
            Channel::Dns => "dns",
            Channel::Mirror => "mirror",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Channel {
    type Err = String;

    fn from_str(s: &str) -> Result<Channel, String> {
        Channel::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("no channel \"{s}\" (http, carrier, relay, dns, mirror)"))
    }
}

/// One try of one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The channel.
    pub channel: Channel,
    /// Where (a URL, a server address, a DNS name).
    pub source: String,
    /// Why it failed; `None` for the one that worked.
    pub error: Option<String>,
}

/// What [`Client::fetch_directory`] did.
#[derive(Clone, Debug)]
pub struct FetchReport {
    /// Every channel tried, in order; the last one worked if `directory`
    /// is set.
    pub attempts: Vec<Attempt>,
    /// The directory held afterwards, if a channel delivered one.
    pub directory: Option<SignedDirectory>,
    /// True if it replaced the cache (false: the same one was held).
    pub updated: bool,
}

impl FetchReport {
    /// The attempt that worked.
    pub fn success(&self) -> Option<&Attempt> {
        self.attempts
            .last()
            .filter(|a| a.error.is_none() && self.directory.is_some())
    }
}

/// Unix time in seconds (what expiry is checked against).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Client {
    /// The directory key pinned by the server link.
    pub fn directory_key(&self) -> Result<Verifier, ClientError> {
        self.link()
            .directory_verifier()
            .ok_or(ClientError::NoDirectoryKey)
    }

    /// The cached directory if it is signed by the pinned key, whether or
    /// not it has expired; `None` if there is none (or no pinned key).
    pub fn cached_directory(&self) -> Result<Option<SignedDirectory>, ClientError> {
        let Ok(key) = self.directory_key() else {
            return Ok(None);
        };
        let Some(bytes) = self.with_home(|h| h.get(HOME_KEY))? else {
            return Ok(None);
        };
        // The home is private, but checked anyway: a directory key change
        // (a new link) must not keep the old service's directory.
        Ok(SignedDirectory::verify(&bytes, &key).ok())
    }

    /// The current verified directory: cached, signed by the pinned key and
    /// not expired. This is what connection candidates are built from.
    pub fn directory(&self) -> Result<Option<SignedDirectory>, ClientError> {
        Ok(self
            .cached_directory()?
            .filter(|d| d.directory().expires > now_secs()))
    }

    /// Checks `bytes` by the client's rule (pinned key, not expired, newer
    /// than the cached one) and caches it. Returns whether it was newer.
    pub fn accept_directory(&self, bytes: &[u8]) -> Result<Accepted, ClientError> {
        let key = self.directory_key()?;
        self.with_home(|h| {
            h.begin()?;
            let result = (|| {
                let held = h
                    .get(HOME_KEY)?
                    .and_then(|b| SignedDirectory::verify(&b, &key).ok());
                let accepted = directory::accept(bytes, &key, now_secs(), held.as_ref())?;
                if let Accepted::Newer(d) = &accepted {
                    h.set(HOME_KEY, d.bytes())?;
                }
                Ok(accepted)
            })();
            match &result {
                Ok(_) => h.commit()?,
                Err(_) => h.rollback(),
            }
            result
        })
    }

    /// A directory the member pasted or was handed as a file.
    pub fn import_directory(&self, bytes: &[u8]) -> Result<Accepted, ClientError> {
        let accepted = self.accept_directory(bytes)?;
        if matches!(accepted, Accepted::Newer(_)) {
            self.with_home(|h| h.set(SOURCE_KEY, b"imported"))?;
        }
        Ok(accepted)
    }

    /// Where the cached directory came from: `CHANNEL SOURCE` as a fetch
    /// reported it, or `imported`.
    pub fn directory_source(&self) -> Result<Option<String>, ClientError> {
        self.with_home(|h| h.get_text(SOURCE_KEY))
    }

    /// Fetches the directory through each channel in turn (or only `only`)
    /// until one delivers a directory the client accepts, and caches it.
    pub async fn fetch_directory(&self, only: Option<Channel>) -> FetchReport {
        let mut report = FetchReport {
            attempts: Vec::new(),
            directory: None,
            updated: false,
        };
        if let Err(e) = self.directory_key() {
            report.attempts.push(Attempt {
                channel: only.unwrap_or(Channel::Http),
                source: "server link".into(),
                error: Some(e.to_string()),
            });
            return report;
        }
        for channel in Channel::ALL {
            if only.is_some_and(|c| c != channel) {
                continue;
            }
            let sources = self.sources(channel);
            if channel == Channel::Relay && sources.is_empty() && only.is_some() {
                report.attempts.push(Attempt {
                    channel,
                    source: "relays".into(),
                    error: Some(
                        "this home holds no relay for this server (`postern relay add LINK`)"
                            .into(),
                    ),
                });
            } else if sources.is_empty() && only.is_some() {
                report.attempts.push(Attempt {
                    channel,
                    source: "server link".into(),
                    error: Some(format!(
                        "the server link names no {channel} location for the directory"
                    )),
                });
            }
            for source in sources {
                let fetched =
                    match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_one(channel, &source))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
                    };
                let outcome = fetched
                    .and_then(|bytes| self.accept_directory(&bytes).map_err(|e| e.to_string()));
                match outcome {
                    Ok(accepted) => {
                        report.updated = matches!(accepted, Accepted::Newer(_));
                        if report.updated {
                            let from = format!("{channel} {source}");
                            let _ = self.with_home(|h| h.set(SOURCE_KEY, from.as_bytes()));
                        }
                        report.directory = self.cached_directory().ok().flatten();
                        report.attempts.push(Attempt {
                            channel,
                            source,
                            error: None,
                        });
                        return report;
                    }
                    Err(error) => report.attempts.push(Attempt {
                        channel,
                        source,
                        error: Some(error),
                    }),
                }
            }
        }
        report
    }

    /// Where `channel` can be tried, from the link (and the cache).
    fn sources(&self, channel: Channel) -> Vec<String> {
        let link = self.link();
        match channel {
            Channel::Http => link
                .http
                .iter()
                .map(|u| format!("{}/directory", u.trim_end_matches('/')))
                .collect(),
            Channel::Carrier => vec!["the server".into()],
            Channel::Relay => self
                .relays()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.link.server_key.is_none_or(|k| k == link.noise_key))
                .map(|r| r.link.host)
                .collect(),
            Channel::Dns => link
                .dns
                .iter()
                .map(|(doh, name)| format!("{name} via {doh}"))
                .collect(),
            Channel::Mirror => link.mirrors.clone(),
        }
    }

    async fn fetch_one(&self, channel: Channel, source: &str) -> Result<Vec<u8>, String> {
        match channel {
            Channel::Http | Channel::Mirror => http_get(source).await,
            Channel::Carrier => {
                let conn = self.connect().await.map_err(|e| e.to_string())?;
                match conn
                    .call(Req::FetchDirectory(pb::FetchDirectory {}))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Resp::SignedDirectory(d) => Ok(d.note.to_vec()),
                    _ => Err("the server answered FetchDirectory with something else".into()),
                }
            }
            Channel::Relay => {
                let relay = self
                    .relays()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|r| r.link.host == source)
                    .ok_or("the relay is no longer held")?;
                let candidate = crate::connectivity::Candidate::from_relay(&relay.link, 0)
                    .ok_or("the relay link has no usable address")?;
                let conn = self
                    .connect_via(&candidate, crate::CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                match conn
                    .call(Req::FetchDirectory(pb::FetchDirectory {}))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Resp::SignedDirectory(d) => Ok(d.note.to_vec()),
                    _ => Err("the server answered FetchDirectory with something else".into()),
                }
            }
            Channel::Dns => {
                let (doh, name) = self.link().dns.clone().ok_or("no DNS location")?;
                doh_txt(&doh, &name).await
            }
        }
    }
}

fn http_client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| format!("cannot start an HTTP client: {e}"))
}

/// Reads a body, refusing more than `limit` bytes.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn http_get(url: &str) -> Result<Vec<u8>, String> {
    let resp = http_client()?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    read_limited(resp, MAX_DIRECTORY_LEN).await
}

/// The directory from the TXT records at `name`, asked of the RFC 8484
/// resolver at `doh` (POST, `application/dns-message`).
async fn doh_txt(doh: &str, name: &str) -> Result<Vec<u8>, String> {
    let qname = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| format!("bad DNS name {name}: {e}"))?;
    // RFC 8484 §4.1: id 0, so that the answer can be cached.
    let mut query = Message::new(0, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname, RecordType::TXT));
    let wire = query.to_vec().map_err(|e| e.to_string())?;
    let resp = http_client()?
        .post(doh)
        .header("content-type", "application/dns-message")
        .header("accept", "application/dns-message")
        .body(wire)
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    // A DNS message is at most 64 KiB.
    let body = read_limited(resp, 65_535).await?;
    let answer = Message::from_vec(&body).map_err(|e| format!("not a DNS answer: {e}"))?;
    if answer.metadata.response_code != ResponseCode::NoError {
        return Err(format!(
            "the resolver answered {}",
            answer.metadata.response_code
        ));
    }
    let records: Vec<Vec<Vec<u8>>> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.txt_data.iter().map(|s| s.to_vec()).collect()),
            _ => None,
        })
        .collect();
    directory::txt::decode(&records).map_err(|e| e.to_string())
}
