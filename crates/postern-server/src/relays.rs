//! The server's side of relay distribution: the relays operators list in
//! the config, the distributor (crate `postern-distributor`) that decides
//! who gets which, and its state in the store.
//!
//! The policy lives in the distributor; this module only maps Postern's
//! identifiers onto the distributor's and keeps its state durable:
//!
//! - a member is its account: [`member_id`] is the first 8 bytes of the
//!   16-byte random account id, big-endian. No table is needed and the
//!   mapping never changes; two accounts would collide only with
//!   probability about n²/2⁶⁵ (one in 2³¹ at two billion accounts), and a
//!   colliding account is refused relays (the distributor says the member
//!   exists), never given another's;
//! - a relay is its configured name: [`relay_id`] hashes it, so reordering
//!   `[[relays]]` changes nothing and a renamed relay is a new relay;
//! - a member's country is its phone number's country (the only location
//!   the server has); its network is the /16 (IPv4) or /32 (IPv6) it
//!   registered from, hashed — coarse on purpose, and only used for the
//!   per-network limits;
//! - the whole [`Distributor`] is saved as one JSON blob after every
//!   change, under the same lock as the change, so the saved state is
//!   always one the distributor was in, in order.
//!
//! It never logs phone numbers, account ids or invitation codes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use postern_distributor::{
    Config, Country, Decision, Distributor, DistributorError, InviteCode, MemberId, NetworkId,
    RelayId, Time, Unserved,
};
use postern_proto::ids::AccountId;
use postern_store::Store;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, MutexGuard};

use crate::config::RelayConfig;

/// The distributor's member id for an account (see the module docs).
pub fn member_id(account: AccountId) -> MemberId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&account.0[..8]);
    MemberId(u64::from_be_bytes(b))
}

fn hash64(domain: &[u8], data: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(data);
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The distributor's id for the relay configured under `name`.
pub fn relay_id(name: &str) -> RelayId {
    RelayId(hash64(b"postern relay v1\0", name.as_bytes()))
}

/// The network a client connects from: its /16 (IPv4) or /32 (IPv6).
pub fn client_network(ip: IpAddr) -> NetworkId {
    let prefix: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets()[..2].to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets()[..2].to_vec(),
            None => v6.octets()[..4].to_vec(),
        },
    };
    NetworkId(hash64(b"postern client network v1\0", &prefix))
}

/// The country of an E.164 phone number, or `ZZ` (unknown) when the
/// number's metadata names none (international services).
pub fn phone_country(phone: &str) -> Country {
    phonenumber::parse(None, phone)
        .ok()
        .and_then(|n| n.country().id())
        .and_then(|id| Country::new(id.as_ref()).ok())
        .unwrap_or_else(|| Country::new("ZZ").expect("two letters"))
}

/// A relay as the operator listed it.
#[derive(Clone, Debug)]
struct Listed {
    name: String,
    link: String,
    network: Option<String>,
    country: Option<String>,
}

/// What a member holds after a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// Links of the relays it may use.
    pub links: Vec<String>,
    /// Its trust level.
    pub level: u8,
    /// Invitations it may still create.
    pub invitations: u32,
    /// Why it holds no relay, if it holds none.
    pub unserved: Option<Unserved>,
}

/// One relay in the operators' view: nothing about who holds it.
#[derive(Clone, Debug, Serialize)]
pub struct RelayStatus {
    /// The configured name.
    pub name: String,
    /// The operator's network label, if given.
    pub network: Option<String>,
    /// The operator's country label, if given.
    pub country: Option<String>,
    /// `open` (handed to new members), `bucket` (shared by trusted
    /// members), `spare` (waiting for a bucket) or `retired`.
    pub pool: &'static str,
    /// How many members may use it now.
    pub members: usize,
    /// Countries (of members) where it is blocked, with the Unix time the
    /// block was confirmed.
    pub blocked_in: BTreeMap<String, u64>,
}

/// The operators' view of every relay, and blocks per country.
#[derive(Clone, Debug, Serialize)]
pub struct RelaysStatus {
    /// Every relay the distributor knows, configured or retired.
    pub relays: Vec<RelayStatus>,
    /// Per member country, how many live relays are blocked there.
    pub blocked_per_country: BTreeMap<String, usize>,
    /// Per relay network label, how many of its live relays are blocked
    /// somewhere.
    pub blocked_per_network: BTreeMap<String, usize>,
    /// Relays that registered themselves, whatever their state.
    pub registered: Vec<RegisteredStatus>,
}

/// A registered relay in the operators' view (never its link: that holds
/// the relay secret).
#[derive(Clone, Debug, Serialize)]
pub struct RegisteredStatus {
    /// HOST:PORT.
    pub host: String,
    /// The operator's key, base64url.
    pub operator_key: String,
    /// Connections offered.
    pub capacity: u32,
    /// Countries it means to serve.
    pub regions: Vec<String>,
    /// `active`, `pending` or `retired`.
    pub state: String,
    /// Its last health report.
    pub health: Option<ReportedHealth>,
}

/// The configured relays and the distributor that hands them out.
pub struct Relays {
    distributor: Mutex<Distributor>,
    /// Where registered relays' connections come from (the address of
    /// their registration and health reports): sessions from there are
    /// relayed sessions.
    egress: std::sync::RwLock<HashMap<IpAddr, RelayId>>,
    sightings: std::sync::Mutex<Sightings>,
    catalog: std::sync::RwLock<Catalog>,
    registered: std::sync::Mutex<BTreeMap<String, Registration>>,
    trusted_operators: Vec<[u8; 32]>,
    server_key: [u8; 32],
    store: Arc<dyn Store>,
}

/// Relayed sessions seen today, per relay and member country (distinct
/// members), and yesterday's counts: the relay-side signal.
#[derive(Default)]
struct Sightings {
    day: u64,
    today: HashMap<(RelayId, Country), std::collections::HashSet<MemberId>>,
    previous: HashMap<(RelayId, Country), u32>,
}

/// The relays members can be given: configured and registered ones.
#[derive(Default)]
struct Catalog {
    listed: BTreeMap<RelayId, Listed>,
    by_link: HashMap<String, RelayId>,
}

/// What is saved in the store: the distributor and the registered relays.
#[derive(Serialize, serde::Deserialize)]
struct Saved {
    distributor: Distributor,
    #[serde(default)]
    registered: BTreeMap<String, Registration>,
}

/// A relay that registered itself (see [`Relays::register`]).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Registration {
    /// The relay link, as registered.
    pub link: String,
    /// The operator's Ed25519 key, base64url.
    pub operator_key: String,
    /// Connections the volunteer offers.
    pub capacity: u32,
    /// Countries it means to serve.
    pub regions: Vec<String>,
    /// `active`, `pending` or `retired`.
    pub state: String,
    /// When it first registered (ms since the epoch).
    pub registered_ms: i64,
    /// The last health report, if any.
    pub health: Option<ReportedHealth>,
}

/// A registered relay's last health report.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ReportedHealth {
    /// When it came (ms since the epoch).
    pub at_ms: i64,
    /// Connections open.
    pub connections_open: u64,
    /// Relayed sessions since the relay started.
    pub sessions_total: u64,
    /// Ciphertext bytes to the server.
    pub bytes_up: u64,
    /// Ciphertext bytes to members.
    pub bytes_down: u64,
    /// Hellos with a wrong or stale authenticator (probes, mostly).
    pub auth_failures: u64,
    /// Replayed first flights.
    pub replays: u64,
}

/// Most regions a relay may name.
const MAX_REGIONS: usize = 64;

/// The distributor's id for a registered relay (its own namespace, so a
/// registered relay never takes a configured one's place).
pub fn registered_relay_id(host: &str) -> RelayId {
    RelayId(hash64(b"postern registered relay v1\0", host.as_bytes()))
}

/// Seconds since the Unix epoch, the distributor's clock.
pub fn now() -> Time {
    Time(u64::try_from(crate::service::now_ms() / 1000).unwrap_or(0))
}

impl Relays {
    /// Loads the saved state (or starts afresh with a random salt), applies
    /// `policy`, adds the listed relays the state does not have and retires
    /// those no longer listed, and saves.
    pub async fn open(
        store: Arc<dyn Store>,
        relays: &[RelayConfig],
        policy: Config,
        trusted_operators: &[String],
        server_key: [u8; 32],
    ) -> anyhow::Result<Relays> {
        let trusted_operators = trusted_operators
            .iter()
            .map(|k| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(k.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .with_context(|| {
                        format!("relay_operators: \"{k}\" is not a 32-byte key in base64url")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut listed = BTreeMap::new();
        let mut by_link = HashMap::new();
        for r in relays {
            let id = relay_id(&r.name);
            anyhow::ensure!(
                !listed.contains_key(&id),
                "relay {:?} is listed twice in [[relays]]",
                r.name
            );
            anyhow::ensure!(
                by_link.insert(r.link.clone(), id).is_none(),
                "relay {:?} has the same link as another relay",
                r.name
            );
            listed.insert(
                id,
                Listed {
                    name: r.name.clone(),
                    link: r.link.clone(),
                    network: r.network.clone(),
                    country: r.country.clone(),
                },
            );
        }
        let saved = store
            .distributor_state()
            .await
            .context("cannot read the distributor's state")?;
        let (mut d, registered) = match saved {
            Some(blob) => {
                // Saved before registered relays existed: the bare distributor.
                let saved = serde_json::from_slice::<Saved>(&blob).or_else(|_| {
                    serde_json::from_slice::<Distributor>(&blob).map(|distributor| Saved {
                        distributor,
                        registered: BTreeMap::new(),
                    })
                });
                let mut saved = saved.context("the saved distributor state is unreadable")?;
                saved
                    .distributor
                    .set_config(policy)
                    .context("bad [distributor] policy")?;
                (saved.distributor, saved.registered)
            }
            None => (
                Distributor::new(policy, rand::rngs::OsRng.r#gen())
                    .context("bad [distributor] policy")?,
                BTreeMap::new(),
            ),
        };
        // Registered relays that are live stay in the catalog.
        for (host, r) in &registered {
            if r.state == "active" {
                let id = registered_relay_id(host);
                by_link.insert(r.link.clone(), id);
                listed.insert(id, registered_listing(host, r));
            }
        }
        let t = now();
        let known: BTreeMap<RelayId, bool> = d
            .relay_health()
            .into_iter()
            .map(|h| (h.relay, h.retired))
            .collect();
        for (id, r) in &listed {
            match known.get(id) {
                None => {
                    let network = NetworkId(hash64(
                        b"postern relay network v1\0",
                        r.network.as_deref().unwrap_or(&r.name).as_bytes(),
                    ));
                    d.add_relay(*id, network, t)?;
                    tracing::info!(relay = %r.name, "relay added");
                }
                Some(true) => tracing::warn!(
                    relay = %r.name,
                    "this relay was retired earlier and is not handed out; list it under a new name"
                ),
                Some(false) => {}
            }
        }
        for (id, retired) in known {
            if !retired && !listed.contains_key(&id) {
                // Pending registrations are not in the distributor at all.
                let revoked = d.retire_relay(id, t)?.len();
                tracing::info!(revoked, "a relay no longer listed was retired");
            }
        }
        let relays = Relays {
            distributor: Mutex::new(d),
            egress: std::sync::RwLock::new(HashMap::new()),
            sightings: std::sync::Mutex::new(Sightings {
                day: now().0 / postern_distributor::DAY,
                ..Sightings::default()
            }),
            catalog: std::sync::RwLock::new(Catalog { listed, by_link }),
            registered: std::sync::Mutex::new(registered),
            trusted_operators,
            server_key,
            store,
        };
        let d = relays.distributor.lock().await;
        relays.save(&d).await?;
        drop(d);
        Ok(relays)
    }

    /// Holds the distributor for a change that spans other work (a
    /// registration checks an invitation, creates the account, redeems it).
    pub(crate) async fn lock(&self) -> MutexGuard<'_, Distributor> {
        self.distributor.lock().await
    }

    /// Saves the distributor's state; call with its lock held.
    pub(crate) async fn save(&self, d: &Distributor) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct SavedRef<'a> {
            distributor: &'a Distributor,
            registered: &'a BTreeMap<String, Registration>,
        }
        let registered = self.registered.lock().expect("registrations lock").clone();
        let blob = serde_json::to_vec(&SavedRef {
            distributor: d,
            registered: &registered,
        })
        .context("cannot serialise the distributor")?;
        self.store
            .save_distributor_state(Bytes::from(blob), crate::service::now_ms())
            .await
            .context("cannot save the distributor's state")
    }

    /// Whether the account is a member already.
    pub async fn knows(&self, account: AccountId) -> bool {
        self.distributor
            .lock()
            .await
            .member(member_id(account), now())
            .is_some()
    }

    /// The member's relays, topped up to what its level allows.
    pub async fn fetch(&self, account: AccountId) -> Result<Holding, RelayError> {
        let mut d = self.distributor.lock().await;
        let member = member_id(account);
        let t = now();
        let assignment = d.assign(member, t);
        self.save(&d).await?;
        let assignment = assignment?;
        self.log(&assignment.decisions);
        Ok(self.holding(&d, member, assignment.relays, assignment.level, t))
    }

    /// The member cannot reach the relay behind `link`; returns what it
    /// holds afterwards (a replacement if the block was confirmed and the
    /// rules allow it).
    pub async fn report(&self, account: AccountId, link: &str) -> Result<Holding, RelayError> {
        let relay = *self
            .catalog
            .read()
            .expect("catalog lock")
            .by_link
            .get(link)
            .ok_or(RelayError::UnknownRelay)?;
        let mut d = self.distributor.lock().await;
        let member = member_id(account);
        let t = now();
        let reported = d.report_blocked(member, relay, t);
        let assignment = reported.and_then(|decisions| {
            self.log(&decisions);
            d.assign(member, t)
        });
        self.save(&d).await?;
        let assignment = assignment?;
        self.log(&assignment.decisions);
        Ok(self.holding(&d, member, assignment.relays, assignment.level, t))
    }

    /// A member's client found the relay at `host` (`HOST:PORT`, from a
    /// `cloak://HOST:PORT` route in its blocked-route report) blocked: the
    /// same as [`Relays::report`] for the relay it was given there.
    /// Returns whether the report counted: relays the member added by hand,
    /// or was not given, are ignored (the distributor only weighs reports
    /// about relays it handed out).
    pub async fn report_route(&self, account: AccountId, host: &str) -> Result<bool, RelayError> {
        let relay = {
            let catalog = self.catalog.read().expect("catalog lock");
            catalog.by_link.iter().find_map(|(link, id)| {
                link.parse::<postern_proto::link::RelayLink>()
                    .ok()
                    .filter(|l| l.host == host)
                    .map(|_| *id)
            })
        };
        let Some(relay) = relay else {
            return Ok(false);
        };
        let mut d = self.distributor.lock().await;
        let member = member_id(account);
        match d.report_blocked(member, relay, now()) {
            Ok(decisions) => {
                self.log(&decisions);
                self.save(&d).await?;
                Ok(true)
            }
            Err(DistributorError::NotAssigned { .. }) | Err(DistributorError::UnknownMember(_)) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A new invitation from the member.
    pub async fn create_invite(&self, account: AccountId) -> Result<InviteCode, RelayError> {
        let mut d = self.distributor.lock().await;
        let code = InviteCode(rand::rngs::OsRng.r#gen());
        d.create_invite(member_id(account), code, now())?;
        self.save(&d).await?;
        Ok(code)
    }

    fn holding(
        &self,
        d: &Distributor,
        member: MemberId,
        relays: Vec<RelayId>,
        level: u8,
        t: Time,
    ) -> Holding {
        let catalog = self.catalog.read().expect("catalog lock");
        let view = d.member(member, t);
        let links: Vec<String> = relays
            .iter()
            .filter_map(|r| catalog.listed.get(r).map(|l| l.link.clone()))
            .collect();
        Holding {
            // Relays it holds but the catalog no longer lists (retired
            // since) are replaced at its next request, like any retired
            // relay; until then it waits for room.
            unserved: if links.is_empty() {
                Some(
                    view.as_ref()
                        .and_then(|m| m.unserved)
                        .unwrap_or(Unserved::NoRoom),
                )
            } else {
                None
            },
            links,
            level,
            invitations: view.map_or(0, |m| m.invitations),
        }
    }

    fn log(&self, decisions: &[Decision]) {
        let catalog = self.catalog.read().expect("catalog lock");
        for decision in decisions {
            let name = |r: &RelayId| catalog.listed.get(r).map_or("(retired)", |l| &l.name);
            match decision {
                Decision::RelayBlocked { relay, country } => {
                    tracing::info!(relay = name(relay), %country, "relay blocked");
                }
                Decision::RelayUnblocked { relay, country } => {
                    tracing::info!(relay = name(relay), %country, "relay reachable again");
                }
                Decision::Banned { .. } => {
                    tracing::info!("an account was refused relays for good");
                }
                _ => {}
            }
        }
    }

    /// The operators' view: relays, their pools, load and blocks.
    pub async fn status(&self) -> RelaysStatus {
        let health = self.distributor.lock().await.relay_health();
        let mut status = RelaysStatus {
            relays: Vec::new(),
            blocked_per_country: BTreeMap::new(),
            blocked_per_network: BTreeMap::new(),
            registered: self
                .registered
                .lock()
                .expect("registrations lock")
                .iter()
                .map(|(host, r)| RegisteredStatus {
                    host: host.clone(),
                    operator_key: r.operator_key.clone(),
                    capacity: r.capacity,
                    regions: r.regions.clone(),
                    state: r.state.clone(),
                    health: r.health.clone(),
                })
                .collect(),
        };
        let catalog = self.catalog.read().expect("catalog lock");
        for h in health {
            let listed = catalog.listed.get(&h.relay);
            let name =
                listed.map_or_else(|| format!("retired-{:016x}", h.relay.0), |l| l.name.clone());
            let network = listed.and_then(|l| l.network.clone());
            if !h.retired {
                for (c, _) in &h.blocked_in {
                    *status.blocked_per_country.entry(c.to_string()).or_default() += 1;
                }
                if !h.blocked_in.is_empty() {
                    *status
                        .blocked_per_network
                        .entry(network.clone().unwrap_or_else(|| name.clone()))
                        .or_default() += 1;
                }
            }
            status.relays.push(RelayStatus {
                pool: if h.retired {
                    "retired"
                } else if h.bucket.is_some() {
                    "bucket"
                } else if h.spare {
                    "spare"
                } else {
                    "open"
                },
                members: h.members,
                blocked_in: h
                    .blocked_in
                    .iter()
                    .map(|(c, t)| (c.to_string(), t.0))
                    .collect(),
                country: listed.and_then(|l| l.country.clone()),
                network,
                name,
            });
        }
        status
    }
}

fn registered_listing(host: &str, r: &Registration) -> Listed {
    let name = r
        .link
        .parse::<postern_proto::link::RelayLink>()
        .ok()
        .and_then(|l| l.name)
        .unwrap_or_else(|| host.to_owned());
    Listed {
        name: format!("registered:{name}"),
        link: r.link.clone(),
        network: None,
        country: None,
    }
}

impl Relays {
    /// A relay registers (or re-registers) itself. A relay whose operator
    /// key is in `relay_operators` is handed out at once; others wait as
    /// `pending` until an operator approves them. A host registered by
    /// one operator key cannot be taken over by another.
    pub async fn register(
        &self,
        msg: &postern_proto::pb::RegisterRelay,
        now_ms: i64,
    ) -> Result<(String, String), RelayError> {
        use base64::Engine;
        let key =
            postern_proto::relay_auth::verify_registration(msg, u64::try_from(now_ms).unwrap_or(0))
                .map_err(|e| RelayError::Registration(e.to_string()))?;
        let link: postern_proto::link::RelayLink = msg
            .link
            .parse()
            .map_err(|e| RelayError::Registration(format!("the relay link is invalid: {e}")))?;
        if link.server_key != Some(self.server_key) {
            return Err(RelayError::Registration(
                "the relay link must carry this server's key (key=); the relay's --server link is for another server".into(),
            ));
        }
        if msg.regions.len() > MAX_REGIONS
            || !msg
                .regions
                .iter()
                .all(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(RelayError::Registration(format!(
                "regions must be at most {MAX_REGIONS} two-letter country codes (like RU, IR)"
            )));
        }
        let key_text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_bytes());
        let trusted = self.trusted_operators.contains(&key.to_bytes());
        let mut d = self.distributor.lock().await;
        let (state, newly_active) = {
            let mut registered = self.registered.lock().expect("registrations lock");
            let entry = registered.get(&link.host);
            if let Some(old) = entry
                && old.operator_key != key_text
            {
                return Err(RelayError::Registration(format!(
                    "{} is registered by another operator key",
                    link.host
                )));
            }
            let old_state = entry.map(|r| r.state.clone());
            let state = match old_state.as_deref() {
                Some("retired") => "retired",
                Some("active") => "active",
                _ if trusted => "active",
                _ => "pending",
            };
            let registration = Registration {
                link: link.to_string(),
                operator_key: key_text,
                capacity: msg.capacity,
                regions: msg.regions.clone(),
                state: state.into(),
                registered_ms: entry.map_or(now_ms, |r| r.registered_ms),
                health: entry.and_then(|r| r.health.clone()),
            };
            let changed_link = entry.is_some_and(|r| r.link != registration.link);
            registered.insert(link.host.clone(), registration);
            (
                state,
                state == "active" && (old_state.as_deref() != Some("active") || changed_link),
            )
        };
        if newly_active {
            self.activate(&mut d, &link.host)?;
        }
        self.save(&d).await?;
        Ok((state.into(), registration_message(state)))
    }

    /// Puts a registered relay in the catalog and the distributor.
    fn activate(&self, d: &mut Distributor, host: &str) -> Result<(), RelayError> {
        let r = self
            .registered
            .lock()
            .expect("registrations lock")
            .get(host)
            .cloned()
            .ok_or(RelayError::UnknownRelay)?;
        let id = registered_relay_id(host);
        {
            let mut catalog = self.catalog.write().expect("catalog lock");
            catalog.by_link.retain(|_, v| *v != id);
            catalog.by_link.insert(r.link.clone(), id);
            catalog.listed.insert(id, registered_listing(host, &r));
        }
        let known = d.relay_health().iter().any(|h| h.relay == id);
        if !known {
            let network = NetworkId(hash64(b"postern relay network v1\0", host.as_bytes()));
            d.add_relay(id, network, now())?;
            tracing::info!(relay = %host, "registered relay added");
        }
        Ok(())
    }

    /// A registered relay's health report; answers with its state.
    pub async fn health(
        &self,
        msg: &postern_proto::pb::RelayHealthReport,
        now_ms: i64,
    ) -> Result<(String, String), RelayError> {
        use base64::Engine;
        let key = postern_proto::relay_auth::verify_health(msg, u64::try_from(now_ms).unwrap_or(0))
            .map_err(|e| RelayError::Registration(e.to_string()))?;
        let key_text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_bytes());
        let d = self.distributor.lock().await;
        let state = {
            let mut registered = self.registered.lock().expect("registrations lock");
            let r = registered
                .get_mut(&msg.host)
                .filter(|r| r.operator_key == key_text)
                .ok_or(RelayError::UnknownRelay)?;
            r.health = Some(ReportedHealth {
                at_ms: now_ms,
                connections_open: msg.connections_open,
                sessions_total: msg.sessions_total,
                bytes_up: msg.bytes_up,
                bytes_down: msg.bytes_down,
                auth_failures: msg.auth_failures,
                replays: msg.replays,
            });
            r.state.clone()
        };
        self.save(&d).await?;
        let message = registration_message(&state);
        Ok((state, message))
    }

    /// An operator approves a pending registered relay: it is handed out
    /// from now on.
    pub async fn approve(&self, host: &str) -> Result<(), RelayError> {
        let mut d = self.distributor.lock().await;
        {
            let mut registered = self.registered.lock().expect("registrations lock");
            let r = registered.get_mut(host).ok_or(RelayError::UnknownRelay)?;
            if r.state == "retired" {
                return Err(RelayError::Registration(
                    "a retired relay cannot come back; it must register under another address"
                        .into(),
                ));
            }
            r.state = "active".into();
        }
        self.activate(&mut d, host)?;
        self.save(&d).await?;
        Ok(())
    }

    /// An operator retires a registered relay: members are no longer given
    /// it (those holding it get replacements as the rules allow), and the
    /// relay learns it on its next report and sends everything to its
    /// cover. Returns how many members held it.
    pub async fn retire(&self, host: &str) -> Result<usize, RelayError> {
        let mut d = self.distributor.lock().await;
        {
            let mut registered = self.registered.lock().expect("registrations lock");
            let r = registered.get_mut(host).ok_or(RelayError::UnknownRelay)?;
            r.state = "retired".into();
        }
        let id = registered_relay_id(host);
        let held = if d.relay_health().iter().any(|h| h.relay == id && !h.retired) {
            d.retire_relay(id, now())?.len()
        } else {
            0
        };
        self.catalog
            .write()
            .expect("catalog lock")
            .by_link
            .retain(|_, v| *v != id);
        self.save(&d).await?;
        tracing::info!(relay = %host, held, "registered relay retired");
        Ok(held)
    }
}

impl Relays {
    /// Remembers that the relay whose link is `link` connects from `ip`.
    pub fn relay_egress(&self, link: &str, ip: IpAddr) {
        if let Ok(l) = link.parse::<postern_proto::link::RelayLink>() {
            self.relay_egress_of_host(&l.host, ip);
        }
    }

    /// Remembers that the registered relay at `host` connects from `ip`
    /// (while it is active).
    pub fn relay_egress_of_host(&self, host: &str, ip: IpAddr) {
        let active = self
            .registered
            .lock()
            .expect("registrations lock")
            .get(host)
            .is_some_and(|r| r.state == "active");
        let id = registered_relay_id(host);
        let mut egress = self.egress.write().expect("egress lock");
        egress.retain(|_, r| *r != id);
        if active {
            egress.insert(ip, id);
        }
    }

    /// The registered relay whose connections come from `ip`, if any.
    pub fn relay_at(&self, ip: IpAddr) -> Option<RelayId> {
        self.egress.read().expect("egress lock").get(&ip).copied()
    }

    /// Counts a member's session through `relay` today; on the first
    /// session of a new day, hands yesterday's counts to the distributor
    /// (see [`Relays::flush_day`]).
    pub async fn observe_session(
        &self,
        relay: RelayId,
        account: AccountId,
        country: Country,
        now: Time,
    ) -> anyhow::Result<()> {
        self.flush_day(now).await?;
        self.sightings
            .lock()
            .expect("sightings lock")
            .today
            .entry((relay, country))
            .or_default()
            .insert(member_id(account));
        Ok(())
    }

    /// If `now` is a later day than the counts held, gives the distributor
    /// each relay's count of distinct members per country for that day —
    /// zero for a country seen the day before and gone now, which is how a
    /// relay blocked in one country shows from the relay's side — and
    /// starts a new day. The server calls it on every relayed session and
    /// every ten minutes.
    pub async fn flush_day(&self, now: Time) -> anyhow::Result<()> {
        let day = now.0 / postern_distributor::DAY;
        let signals: Vec<(RelayId, Country, u32)> = {
            let mut s = self.sightings.lock().expect("sightings lock");
            if day <= s.day {
                return Ok(());
            }
            let counts: HashMap<(RelayId, Country), u32> = s
                .today
                .drain()
                .map(|(k, members)| (k, u32::try_from(members.len()).unwrap_or(u32::MAX)))
                .collect();
            let mut signals: Vec<_> = counts.iter().map(|((r, c), n)| (*r, *c, *n)).collect();
            for (r, c) in s.previous.keys() {
                if !counts.contains_key(&(*r, *c)) {
                    signals.push((*r, *c, 0));
                }
            }
            s.previous = counts;
            s.day = day;
            signals
        };
        if signals.is_empty() {
            return Ok(());
        }
        let mut d = self.distributor.lock().await;
        for (relay, country, clients) in signals {
            match d.relay_signal(relay, country, clients, now) {
                Ok(decisions) => self.log(&decisions),
                // Retired since: nothing to tell.
                Err(DistributorError::UnknownRelay(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.save(&d).await
    }
}

fn registration_message(state: &str) -> String {
    match state {
        "active" => "registered; members are given this relay".into(),
        "pending" => {
            "registered; waiting for an operator to approve this relay's operator key".into()
        }
        _ => "this relay is retired: send every connection to the cover site".into(),
    }
}

/// Why a relay request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The distributor refused.
    #[error(transparent)]
    Policy(#[from] DistributorError),
    /// The link is not a configured relay.
    #[error("this link is not a relay this server gave out")]
    UnknownRelay,
    /// A relay's registration or health report was refused.
    #[error("{0}")]
    Registration(String),
    /// The state could not be saved.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_coarse() {
        let account = AccountId([7; 16]);
        assert_eq!(member_id(account), MemberId(0x0707_0707_0707_0707));
        assert_eq!(relay_id("ams-1"), relay_id("ams-1"));
        assert_ne!(relay_id("ams-1"), relay_id("ams-2"));
        // One /16 is one network, whatever the rest of the address.
        let net = |s: &str| client_network(s.parse().unwrap());
        assert_eq!(net("10.1.2.3"), net("10.1.200.7"));
        assert_eq!(net("10.1.2.3"), net("::ffff:10.1.9.9"));
        assert_ne!(net("10.1.2.3"), net("10.2.2.3"));
        assert_eq!(net("2001:db8::1"), net("2001:db8:ffff::2"));
    }

    #[test]
    fn a_member_country_is_its_phone_country() {
        assert_eq!(phone_country("+14155552671").as_str(), "US");
        assert_eq!(phone_country("+79123456789").as_str(), "RU");
        assert_eq!(phone_country("+442079460958").as_str(), "GB");
        assert_eq!(phone_country("not a number").as_str(), "ZZ");
    }
}
