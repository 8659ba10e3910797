//! The distributors under test: Postern's own (the real
//! `postern-distributor` code behind a thin adapter) and the baselines
//! measured beside it in the same run.
//!
//! Baselines learn of blocking only from members' reports, as the deployed
//! systems do, and believe a single report.

use std::collections::BTreeMap;

use postern_distributor::{
    Config, Country, Distributor, InviteCode, MemberId, NetworkId, RelayId, Time,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a member holds after asking its distributor.
#[derive(Clone, Debug, PartialEq)]
pub enum Fetch {
    /// Every relay there is (a public list).
    Everything,
    /// These relays.
    Relays(Vec<u32>),
}

/// A distributor as the simulator drives it. Members and relays are
/// numbered densely from 0 in order of arrival; a step is a day.
pub trait Policy: Send {
    /// A relay comes online in hosting network `network`.
    fn add_relay(&mut self, relay: u32, network: u32, step: u32);
    /// A member joins from `network`, with an invitation if `invite` is
    /// set. Returns false if the distributor refused (a rate limit); the
    /// member tries again the next step.
    fn register(&mut self, member: u32, network: u32, invite: Option<u64>, step: u32) -> bool;
    /// An invitation from `member`, if the distributor has invitations and
    /// the member has one to give.
    fn invite(&mut self, _member: u32, _step: u32) -> Option<u64> {
        None
    }
    /// The member asks for its relays.
    fn fetch(&mut self, member: u32, step: u32) -> Fetch;
    /// The member could not reach `relay`.
    fn report(&mut self, member: u32, relay: u32, step: u32);
    /// A relay's count of distinct clients from the censor's country today.
    fn relay_signal(&mut self, _relay: u32, _clients: u32, _step: u32) {}
    /// The end of a step.
    fn end_step(&mut self, _step: u32) {}
    /// Whether the distributor refuses this member for good or for now (a
    /// ban or suspension): counted as a false positive for honest members.
    fn refuses(&self, _member: u32, _step: u32) -> bool {
        false
    }
    /// Why the distributor gives this member nothing, if it says
    /// ([`postern_distributor::Unserved::name`]).
    fn unserved(&self, _member: u32, _step: u32) -> Option<&'static str> {
        None
    }
}

/// Builds the named distributor.
pub fn build(
    name: &str,
    k: usize,
    capacity: usize,
    postern: &Config,
    seed: u64,
) -> Option<Box<dyn Policy>> {
    Some(match name {
        "postern" => Box::new(Postern::new(postern.clone(), capacity, seed)),
        "public" => Box::new(Public),
        "random-k" => Box::new(RandomK::new(k, capacity, seed)),
        "hashring" => Box::new(Hashring::new(k, seed)),
        "rbridge" => Box::new(RBridge::new(k, capacity, seed)),
        _ => return None,
    })
}

/// The country every simulated member is in.
fn censored_country() -> Country {
    Country::new("RU").expect("a valid code")
}

fn time(step: u32) -> Time {
    Time::from_days(u64::from(step))
}

/// Postern's distributor, unchanged.
pub struct Postern {
    inner: Distributor,
    rng: ChaCha8Rng,
    invites: BTreeMap<u64, InviteCode>,
    next_invite: u64,
}

impl Postern {
    fn new(mut config: Config, capacity: usize, seed: u64) -> Self {
        config.max_members_per_relay = capacity;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let inner = Distributor::new(config, rng.r#gen()).expect("validated with the scenario");
        Postern {
            inner,
            rng,
            invites: BTreeMap::new(),
            next_invite: 0,
        }
    }
}

impl Policy for Postern {
    fn add_relay(&mut self, relay: u32, network: u32, step: u32) {
        let _ = self
            .inner
            .add_relay(RelayId(relay.into()), NetworkId(network.into()), time(step));
    }

    fn register(&mut self, member: u32, network: u32, invite: Option<u64>, step: u32) -> bool {
        let id = MemberId(member.into());
        let net = NetworkId(network.into());
        let country = censored_country();
        if let Some(code) = invite.and_then(|i| self.invites.remove(&i))
            && self
                .inner
                .redeem_invite(code, id, country, net, time(step))
                .is_ok()
        {
            return true;
        }
        self.inner
            .register_member(id, country, net, time(step))
            .is_ok()
    }

    fn invite(&mut self, member: u32, step: u32) -> Option<u64> {
        let code = InviteCode(self.rng.r#gen());
        self.inner
            .create_invite(MemberId(member.into()), code, time(step))
            .ok()?;
        self.next_invite += 1;
        self.invites.insert(self.next_invite, code);
        Some(self.next_invite)
    }

    fn fetch(&mut self, member: u32, step: u32) -> Fetch {
        match self.inner.assign(MemberId(member.into()), time(step)) {
            Ok(a) => Fetch::Relays(a.relays.iter().map(|r| r.0 as u32).collect()),
            Err(_) => Fetch::Relays(Vec::new()),
        }
    }

    fn report(&mut self, member: u32, relay: u32, step: u32) {
        let _ =
            self.inner
                .report_blocked(MemberId(member.into()), RelayId(relay.into()), time(step));
    }

    fn relay_signal(&mut self, relay: u32, clients: u32, step: u32) {
        let _ = self.inner.relay_signal(
            RelayId(relay.into()),
            censored_country(),
            clients,
            time(step),
        );
    }

    fn unserved(&self, member: u32, step: u32) -> Option<&'static str> {
        self.inner
            .member(MemberId(member.into()), time(step))
            .and_then(|m| m.unserved)
            .map(|u| u.name())
    }

    fn refuses(&self, member: u32, step: u32) -> bool {
        self.inner
            .member(MemberId(member.into()), time(step))
            .is_some_and(|m| m.banned || m.suspended_until.is_some_and(|u| u > time(step)))
    }
}

/// Every relay to everyone.
pub struct Public;

impl Policy for Public {
    fn add_relay(&mut self, _relay: u32, _network: u32, _step: u32) {}
    fn register(&mut self, _member: u32, _network: u32, _invite: Option<u64>, _step: u32) -> bool {
        true
    }
    fn fetch(&mut self, _member: u32, _step: u32) -> Fetch {
        Fetch::Everything
    }
    fn report(&mut self, _member: u32, _relay: u32, _step: u32) {}
}

/// What the baselines share: relays, their load, what was reported, and
/// what each member holds.
struct Book {
    relays: Vec<u32>,
    load: Vec<usize>,
    reported: Vec<bool>,
    held: Vec<Vec<u32>>,
    capacity: usize,
}

impl Book {
    fn new(capacity: usize) -> Self {
        Book {
            relays: Vec::new(),
            load: Vec::new(),
            reported: Vec::new(),
            held: Vec::new(),
            capacity,
        }
    }

    fn add_relay(&mut self, relay: u32) {
        let i = relay as usize;
        if self.load.len() <= i {
            self.load.resize(i + 1, 0);
            self.reported.resize(i + 1, false);
        }
        self.relays.push(relay);
    }

    fn add_member(&mut self, member: u32) {
        let i = member as usize;
        if self.held.len() <= i {
            self.held.resize(i + 1, Vec::new());
        }
    }

    /// Drops reported relays from what the member holds.
    fn prune(&mut self, member: u32) {
        let held = &mut self.held[member as usize];
        let (keep, gone): (Vec<u32>, Vec<u32>) =
            held.iter().partition(|r| !self.reported[**r as usize]);
        for r in gone {
            self.load[r as usize] -= 1;
        }
        *held = keep;
    }

    /// Gives the member one random unreported relay with room that it does
    /// not hold yet. Returns false if there is none.
    fn give_random(&mut self, member: u32, rng: &mut ChaCha8Rng) -> bool {
        let held = &self.held[member as usize];
        let candidates: Vec<u32> = self
            .relays
            .iter()
            .copied()
            .filter(|r| {
                !self.reported[*r as usize]
                    && self.load[*r as usize] < self.capacity
                    && !held.contains(r)
            })
            .collect();
        if candidates.is_empty() {
            return false;
        }
        let r = candidates[rng.gen_range(0..candidates.len())];
        self.load[r as usize] += 1;
        self.held[member as usize].push(r);
        true
    }
}

/// k random relays per member, replaced as soon as they are reported.
pub struct RandomK {
    book: Book,
    k: usize,
    rng: ChaCha8Rng,
}

impl RandomK {
    fn new(k: usize, capacity: usize, seed: u64) -> Self {
        RandomK {
            book: Book::new(capacity),
            k,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Policy for RandomK {
    fn add_relay(&mut self, relay: u32, _network: u32, _step: u32) {
        self.book.add_relay(relay);
    }
    fn register(&mut self, member: u32, _network: u32, _invite: Option<u64>, _step: u32) -> bool {
        self.book.add_member(member);
        true
    }
    fn fetch(&mut self, member: u32, _step: u32) -> Fetch {
        self.book.prune(member);
        while self.book.held[member as usize].len() < self.k {
            if !self.book.give_random(member, &mut self.rng) {
                break;
            }
        }
        Fetch::Relays(self.book.held[member as usize].clone())
    }
    fn report(&mut self, _member: u32, relay: u32, _step: u32) {
        self.book.reported[relay as usize] = true;
    }
}

/// BridgeDB-like: relays on a hash ring; a request from a network in a
/// given day lands on a point of the ring and gets the next k relays not
/// reported blocked. Everyone in one network sees the same relays that day,
/// and the point moves every day.
pub struct Hashring {
    /// Relays not reported blocked, by ring position.
    ring: BTreeMap<u64, u32>,
    networks: BTreeMap<u32, u32>,
    k: usize,
    salt: u64,
}

impl Hashring {
    fn new(k: usize, seed: u64) -> Self {
        Hashring {
            ring: BTreeMap::new(),
            networks: BTreeMap::new(),
            k,
            salt: ChaCha8Rng::seed_from_u64(seed).r#gen(),
        }
    }

    fn point(&self, a: u64, b: u64) -> u64 {
        crate::mix(crate::mix(self.salt, a), b)
    }
}

impl Policy for Hashring {
    fn add_relay(&mut self, relay: u32, _network: u32, _step: u32) {
        let p = self.point(u64::from(relay), u64::MAX);
        self.ring.insert(p, relay);
    }
    fn register(&mut self, member: u32, network: u32, _invite: Option<u64>, _step: u32) -> bool {
        self.networks.insert(member, network);
        true
    }
    fn fetch(&mut self, member: u32, step: u32) -> Fetch {
        let net = self.networks.get(&member).copied().unwrap_or(0);
        let start = self.point(u64::from(net), u64::from(step));
        let out: Vec<u32> = self
            .ring
            .range(start..)
            .chain(self.ring.range(..start))
            .map(|(_, r)| *r)
            .take(self.k)
            .collect();
        Fetch::Relays(out)
    }
    fn report(&mut self, _member: u32, relay: u32, _step: u32) {
        let p = self.point(u64::from(relay), u64::MAX);
        self.ring.remove(&p);
    }
}

/// rBridge-like credits (Wang et al., NDSS 2013; parameters as in the
/// FOCI 2026 ProxySimulator): a member starts with k random relays, earns a
/// credit per working relay per day (up to a cap), and buys a replacement
/// for a blocked relay with credits.
pub struct RBridge {
    book: Book,
    k: usize,
    credits: Vec<u32>,
    rng: ChaCha8Rng,
}

/// Credits a replacement relay costs.
const RBRIDGE_NEW_COST: u32 = 42;
/// Most credits a member can hold.
const RBRIDGE_MAX_CREDIT: u32 = 1_000;

impl RBridge {
    fn new(k: usize, capacity: usize, seed: u64) -> Self {
        RBridge {
            book: Book::new(capacity),
            k,
            credits: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Policy for RBridge {
    fn add_relay(&mut self, relay: u32, _network: u32, _step: u32) {
        self.book.add_relay(relay);
    }
    fn register(&mut self, member: u32, _network: u32, _invite: Option<u64>, _step: u32) -> bool {
        self.book.add_member(member);
        if self.credits.len() <= member as usize {
            self.credits.resize(member as usize + 1, 0);
        }
        for _ in 0..self.k {
            self.book.give_random(member, &mut self.rng);
        }
        true
    }
    fn fetch(&mut self, member: u32, _step: u32) -> Fetch {
        self.book.prune(member);
        let m = member as usize;
        while self.book.held[m].len() < self.k && self.credits[m] >= RBRIDGE_NEW_COST {
            if !self.book.give_random(member, &mut self.rng) {
                break;
            }
            self.credits[m] -= RBRIDGE_NEW_COST;
        }
        Fetch::Relays(self.book.held[m].clone())
    }
    fn report(&mut self, _member: u32, relay: u32, _step: u32) {
        self.book.reported[relay as usize] = true;
    }
    fn end_step(&mut self, _step: u32) {
        for (m, held) in self.book.held.iter().enumerate() {
            let working = held
                .iter()
                .filter(|r| !self.book.reported[**r as usize])
                .count() as u32;
            if let Some(c) = self.credits.get_mut(m) {
                *c = (*c + working).min(RBRIDGE_MAX_CREDIT);
            }
        }
    }
}
