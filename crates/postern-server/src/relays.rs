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
    RelayId, Time,
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
}

/// The configured relays and the distributor that hands them out.
pub struct Relays {
    distributor: Mutex<Distributor>,
    listed: BTreeMap<RelayId, Listed>,
    by_link: HashMap<String, RelayId>,
    store: Arc<dyn Store>,
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
    ) -> anyhow::Result<Relays> {
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
        let mut d = match saved {
            Some(blob) => {
                let mut d: Distributor = serde_json::from_slice(&blob)
                    .context("the saved distributor state is unreadable")?;
                d.set_config(policy).context("bad [distributor] policy")?;
                d
            }
            None => Distributor::new(policy, rand::rngs::OsRng.r#gen())
                .context("bad [distributor] policy")?,
        };
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
                let revoked = d.retire_relay(id, t)?.len();
                tracing::info!(revoked, "a relay no longer listed was retired");
            }
        }
        let relays = Relays {
            distributor: Mutex::new(d),
            listed,
            by_link,
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
        let blob = serde_json::to_vec(d).context("cannot serialise the distributor")?;
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

    /// Adds an account that registered before the server had relays (or
    /// whose registration hit a network limit) as a new member.
    pub async fn join(
        &self,
        account: AccountId,
        phone: &str,
        ip: IpAddr,
    ) -> Result<(), RelayError> {
        let mut d = self.distributor.lock().await;
        match d.register_member(
            member_id(account),
            phone_country(phone),
            client_network(ip),
            now(),
        ) {
            Ok(()) | Err(DistributorError::MemberExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.save(&d).await?;
        Ok(())
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
        let relay = *self.by_link.get(link).ok_or(RelayError::UnknownRelay)?;
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
        Holding {
            links: relays
                .iter()
                .filter_map(|r| self.listed.get(r).map(|l| l.link.clone()))
                .collect(),
            level,
            invitations: d.member(member, t).map_or(0, |m| m.invitations),
        }
    }

    fn log(&self, decisions: &[Decision]) {
        for decision in decisions {
            let name = |r: &RelayId| self.listed.get(r).map_or("(retired)", |l| &l.name);
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
        };
        for h in health {
            let listed = self.listed.get(&h.relay);
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

/// Why a relay request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The distributor refused.
    #[error(transparent)]
    Policy(#[from] DistributorError),
    /// The link is not a configured relay.
    #[error("this link is not a relay this server gave out")]
    UnknownRelay,
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
