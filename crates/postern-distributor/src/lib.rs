//! Which relays each member gets.
//!
//! A censor's cheapest attack on relays is to sign up accounts and block
//! every relay they are shown. This crate holds the policy that limits what
//! such accounts learn while honest members keep access, in the spirit of
//! Lox (Tulloch and Goldberg, PETS 2023):
//!
//! - **Trust levels** earned over time: a new member (level 0) gets one
//!   open-entry relay, its own while unused buckets can be opened (then
//!   where a blockage would strand the fewest members); after 30
//!   days without a blockage (one restarts them) it reaches level 1 and gets
//!   a *bucket* of three relays shared with a few other members; levels 2–4
//!   follow after 14, 28 and 56 days. Levels 1–4 grant 2/4/6/8 invitations; an
//!   invited member starts at level 1, in its inviter's bucket when there is
//!   room, so an inviter vouches with its own relays.
//! - **Blocking detection** per relay and country, from members' reports
//!   (several members must agree) and from the relay's own count of clients
//!   per country (a country whose clients suddenly vanish).
//! - **Replacement** of blocked relays, limited per account and per network,
//!   and paid for with *credit*: a member earns a day of credit for each day
//!   it holds a working relay and a replacement costs a week (after rBridge,
//!   NDSS 2013), so an account whose relays are blocked as soon as it gets
//!   them gets nothing more; at level 0 a member gets one replacement in
//!   all, plus up to three free ones when the blame for a block points at
//!   a later holder of the relay (not on days of many blocks). Only a
//!   member whose relays work is promoted. Accounts that see
//!   too many blockages at their level are **demoted** (at level 0:
//!   suspended), and one blocked in its first month at level 1 goes back
//!   to level 0 (*probation*).
//! - **Blame**: unlike Lox, the server knows which account saw which relay.
//!   Each blocked relay adds a total of 1 suspicion among the members of that
//!   country who saw it, weighted towards those who got it most recently; an
//!   account reaching [`Config::ban_suspicion`] is banned. A censor account
//!   alone with its relay, or the newcomer on a relay that worked for weeks,
//!   is caught at once, which is why new members are spread thinly over the
//!   open-entry relays.
//! - **Sweeps**: a censor that lets its accounts keep their relays and
//!   then blocks everything they learned at once (a *sweep*, recognised by
//!   many relays blocked in one country in one day) tells the distributor
//!   which relays it did not know. Every member that held a surviving
//!   relay through the sweep is *cleared*; on a sweep's days the blame of a
//!   blocked relay goes only to its holders not cleared, and newcomers are
//!   seated where the fewest such members are, so an account seated among
//!   cleared members carries the blame of the first sweep alone (up to
//!   half a ban) and gets no replacement paid with credit.
//! - **Saying why**: a member holding no relay is given the reason
//!   ([`Unserved`], in [`MemberView`]): waiting for room, no room for its
//!   replacement, no credit or allowance left for one, rate-limited,
//!   banned or suspended.
//! - **Caps** on how many members see one relay, and, once a relay has
//!   been blocked in a country, on how many *exposed* members (who could
//!   not get a replacement) share one: a newcomer waits for room rather
//!   than join four others a censor account could strand at once.
//!
//! The crate is sans-IO: no clock, no randomness, no storage. The caller
//! passes the time and random invitation codes in, and gets [`Decision`]s
//! out; the whole [`Distributor`] is serde-serialisable so a server can
//! persist it, and the simulator (`postern-sim`) runs exactly this code.
//! Given the same calls, it makes the same decisions.
//!
//! ```
//! use postern_distributor::{Config, Country, Distributor, MemberId, NetworkId, RelayId, Time};
//!
//! let mut d = Distributor::new(Config::default(), 0x5eed)?;
//! let now = Time::from_days(20_000);
//! for r in 0..6 {
//!     d.add_relay(RelayId(r), NetworkId(r), now)?;
//! }
//! let ru = Country::new("RU")?;
//! d.register_member(MemberId(1), ru, NetworkId(77), now)?;
//! assert_eq!(d.assign(MemberId(1), now)?.relays.len(), 1);
//! // A month later, its relay still working, it holds a bucket of three.
//! let later = d.assign(MemberId(1), now.plus_days(30))?;
//! assert_eq!((later.level, later.relays.len()), (1, 3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod ids;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use config::{Config, ConfigError, MAX_LEVEL};
pub use ids::{
    BadCountry, BadInviteCode, BucketId, Country, DAY, InviteCode, MemberId, NetworkId, RelayId,
    Time,
};

/// Something the distributor decided that the caller may want to act on
/// (push new relays to a client, tell an operator, log it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Decision {
    /// The relay now counts as blocked in this country.
    RelayBlocked {
        /// The relay.
        relay: RelayId,
        /// Where it is blocked.
        country: Country,
    },
    /// A relay counted as blocked is reachable again from this country.
    RelayUnblocked {
        /// The relay.
        relay: RelayId,
        /// Where it works again.
        country: Country,
    },
    /// The member no longer gets this relay (blocked in its country or
    /// retired); its next [`Distributor::assign`] may bring a replacement.
    Revoked {
        /// The member.
        member: MemberId,
        /// The relay taken away.
        relay: RelayId,
    },
    /// The member reached a higher trust level.
    Promoted {
        /// The member.
        member: MemberId,
        /// Its new level.
        level: u8,
    },
    /// The member saw too many blockages at its level and went down one.
    Demoted {
        /// The member.
        member: MemberId,
        /// Its new level.
        level: u8,
    },
    /// A new member saw too many blockages: no relays until `until`.
    Suspended {
        /// The member.
        member: MemberId,
        /// When it may ask again.
        until: Time,
    },
    /// The member's relays were blocked so consistently that it is taken
    /// for a censor's account: it gets no relays any more.
    Banned {
        /// The member.
        member: MemberId,
    },
    /// The relay's own signal contradicted this member's report.
    FalseReport {
        /// The member who reported.
        member: MemberId,
        /// The relay it reported.
        relay: RelayId,
    },
}

/// What a member gets from [`Distributor::assign`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The relays the member may use now, none of them known to be blocked
    /// in its country. Empty when none could be handed out yet (rate limit,
    /// no capacity); the member should ask again later.
    pub relays: Vec<RelayId>,
    /// The member's trust level.
    pub level: u8,
    /// What changed while answering (promotions, for instance).
    pub decisions: Vec<Decision>,
}

/// A request the distributor refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DistributorError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No such member.
    #[error("unknown member {0:?}")]
    UnknownMember(MemberId),
    /// No such relay.
    #[error("unknown relay {0:?}")]
    UnknownRelay(RelayId),
    /// The member is already registered.
    #[error("member {0:?} is already registered")]
    MemberExists(MemberId),
    /// The relay is already known.
    #[error("relay {0:?} is already known")]
    RelayExists(RelayId),
    /// The account was banned.
    #[error("member {0:?} is banned")]
    Banned(MemberId),
    /// The account is suspended.
    #[error("member {member:?} is suspended until {until:?}")]
    Suspended {
        /// The member.
        member: MemberId,
        /// When the suspension ends.
        until: Time,
    },
    /// Too many registrations from this network today.
    #[error("too many new members from network {0:?} today; try again tomorrow")]
    NetworkLimit(NetworkId),
    /// Only members at level 1 or above invite.
    #[error("member {0:?} cannot invite yet (new members invite from level 1)")]
    NotTrusted(MemberId),
    /// The member has no invitations left.
    #[error("member {0:?} has no invitations left")]
    NoInvitations(MemberId),
    /// The code is not a live invitation (unknown, or already used).
    #[error("no such invitation (unknown or already used)")]
    UnknownInvite,
    /// The code is already in use.
    #[error("invitation code already exists")]
    InviteExists,
    /// The member reported a relay it was never given.
    #[error("member {member:?} was never given relay {relay:?}")]
    NotAssigned {
        /// The member.
        member: MemberId,
        /// The relay.
        relay: RelayId,
    },
}

/// A member's standing, for the server and for operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// Trust level, 0 to [`MAX_LEVEL`].
    pub level: u8,
    /// Relays it may use now.
    pub relays: Vec<RelayId>,
    /// Its bucket, from level 1.
    pub bucket: Option<BucketId>,
    /// Blockages seen at its current level.
    pub blockages: u32,
    /// Current suspicion (decayed to the time of the call).
    pub suspicion: f64,
    /// Invitations left.
    pub invitations: u32,
    /// Who invited it.
    pub invited_by: Option<MemberId>,
    /// Suspended until this time.
    pub suspended_until: Option<Time>,
    /// Banned for good.
    pub banned: bool,
    /// When a sweep cleared it ([`Config::sweep_min_blocks`]).
    pub cleared_at: Option<Time>,
    /// Why it holds no relay the distributor counts as working, or `None`
    /// if it holds one.
    #[serde(default)]
    pub unserved: Option<Unserved>,
}

/// Why a member holds no relay that the distributor counts as working:
/// what a member is told when `relay fetch` returns nothing, and what the
/// simulator counts when honest members are cut off. A member that
/// reported its relays blocked learns the reason after the report is
/// confirmed; until then it holds them as far as the distributor knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Unserved {
    /// Banned for good (see [`Config::ban_suspicion`]).
    Banned,
    /// Suspended for a while (until [`MemberView::suspended_until`]).
    Suspended,
    /// Waiting for its first relay: no relay it may be given has room for
    /// it now (see [`Config::max_exposed_per_relay`]), or its network had
    /// its share of hand-outs today.
    Waiting,
    /// Its relays were blocked and a replacement is due, but no relay or
    /// bucket it may be given has room for it now, or its network had its
    /// share of hand-outs today.
    NoRoom,
    /// Its relays were blocked and a replacement costs credit it has not
    /// earned ([`Config::replacement_cost_days`]): a member earns credit only
    /// while it holds a working relay, so this lasts.
    NoCredit,
    /// Its relays were blocked and it has had every replacement a member at
    /// level 0 gets ([`Config::untrusted_replacements`]).
    NoAllowance,
    /// Its relays were blocked and it had as many replacements as its level
    /// allows in [`Config::replacement_window_days`]; one comes when the
    /// window moves on.
    RateLimited,
}

impl Unserved {
    /// A short name (`waiting`, `no_credit`, ...), for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            Unserved::Banned => "banned",
            Unserved::Suspended => "suspended",
            Unserved::Waiting => "waiting",
            Unserved::NoRoom => "no_room",
            Unserved::NoCredit => "no_credit",
            Unserved::NoAllowance => "no_allowance",
            Unserved::RateLimited => "rate_limited",
        }
    }

    /// What to tell the member, in a sentence.
    pub fn explain(self) -> &'static str {
        match self {
            Unserved::Banned => "this account may not get relays any more",
            Unserved::Suspended => "this account is suspended from getting relays for a while",
            Unserved::Waiting => "no relay has room for a new member right now; try again later",
            Unserved::NoRoom => "no relay has room for your replacement right now; try again later",
            Unserved::NoCredit => {
                "your relay was blocked before you had earned the credit for a replacement \
                 (credit comes a day at a time while a relay works for you)"
            }
            Unserved::NoAllowance => "you have had the replacements a new member gets",
            Unserved::RateLimited => {
                "you have had as many replacements as this week allows; try again in a few days"
            }
        }
    }
}

/// A relay's health, for operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayHealth {
    /// The relay.
    pub relay: RelayId,
    /// Its network.
    pub network: NetworkId,
    /// Its bucket, or `None` for an open-entry or spare relay.
    pub bucket: Option<BucketId>,
    /// A spare: waiting for enough others to form a bucket, handed to no one.
    pub spare: bool,
    /// Members who may use it now.
    pub members: usize,
    /// Countries where it is blocked, and since when.
    pub blocked_in: Vec<(Country, Time)>,
    /// Whether it was retired.
    pub retired: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Member {
    country: Country,
    network: NetworkId,
    level: u8,
    level_since: Time,
    blockages: u32,
    last_blockage_day: Option<u64>,
    suspicion: f64,
    suspicion_at: Time,
    invitations: u32,
    invitations_refilled: Time,
    invited_by: Option<MemberId>,
    bucket: Option<BucketId>,
    open: Vec<RelayId>,
    kept: Vec<RelayId>,
    needs_replacement: bool,
    replacements: Vec<Time>,
    /// Days of credit, earned one a day while holding a working relay.
    credit: f64,
    credit_at: Time,
    earning: bool,
    free_replacements: u32,
    /// Replacements it got at level 0.
    #[serde(default)]
    untrusted_replacements: u32,
    /// No-fault replacements it got.
    #[serde(default)]
    no_fault_used: u32,
    /// Whether its next replacement is a no-fault one.
    #[serde(default)]
    no_fault_due: bool,
    /// Whether its next replacement is free and uncounted: it lost a relay
    /// in a sweep ([`Config::sweep_min_blocks`]).
    #[serde(default)]
    free_due: bool,
    /// When a sweep cleared it: it held a relay the censor did not know.
    #[serde(default)]
    cleared_at: Option<Time>,
    suspended_until: Option<Time>,
    banned: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Pool {
    Open,
    Spare,
    Bucket(BucketId),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CountryState {
    blocked_since: Option<Time>,
    reporters: BTreeSet<MemberId>,
    baseline: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Relay {
    network: NetworkId,
    pool: Pool,
    /// Who may use it, and since when.
    members: BTreeMap<MemberId, Time>,
    countries: BTreeMap<Country, CountryState>,
    retired: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Bucket {
    relays: Vec<RelayId>,
    members: BTreeSet<MemberId>,
}

/// How a replacement is granted (see [`Distributor::replacement_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replacement {
    /// Lost in a sweep, by a cleared member.
    Free,
    /// Blame points at another holder.
    NoFault,
    /// Paid with credit, within the member's limits.
    Paid,
}

/// A day on which a country's censor blocked many relays at once.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Sweep {
    /// Its first day.
    day: u64,
    /// Whether the members whose relays survived it were cleared.
    settled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Invite {
    from: MemberId,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct NetworkCount {
    registrations: u32,
    handouts: u32,
}

/// The distributor's whole state. See the crate documentation for the
/// policy; every method takes the current time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Distributor {
    config: Config,
    salt: u64,
    members: BTreeMap<MemberId, Member>,
    relays: BTreeMap<RelayId, Relay>,
    buckets: BTreeMap<BucketId, Bucket>,
    next_bucket: u64,
    spares: Vec<RelayId>,
    invites: BTreeMap<InviteCode, Invite>,
    network_day: u64,
    network_counts: BTreeMap<NetworkId, NetworkCount>,
    /// Per country, the day of the last confirmed blockage and how many
    /// relays were blocked there that day.
    #[serde(default)]
    blocks_today: BTreeMap<Country, (u64, u32)>,
    /// Per country, the last sweep ([`Config::sweep_min_blocks`]).
    #[serde(default)]
    sweeps: BTreeMap<Country, Sweep>,
    /// Per country, the day and the level-0 members not cleared who lost a
    /// relay that day before it was known to be a sweep's.
    #[serde(default)]
    lost_today: BTreeMap<Country, (u64, Vec<MemberId>)>,
    /// Bumped whenever room may appear on a relay or bucket.
    #[serde(skip)]
    epoch: u64,
    /// Per country, kind (bucket or open relay) and whether the member
    /// seated is held to [`Config::max_exposed_per_relay`], the epoch and
    /// time at which a search for room found none: until either moves, the
    /// answer stands (who is exposed changes with time). A cache only: it
    /// changes no decision.
    #[serde(skip)]
    no_room: BTreeMap<(Country, bool, bool), (u64, Time)>,
}

/// A stable, keyed mix of two numbers (SplitMix64's finaliser). It breaks
/// ties between equally loaded relays so that who lands where is neither
/// the order of arrival nor predictable without the salt.
fn mix(salt: u64, a: u64, b: u64) -> u64 {
    let mut z =
        salt ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Distributor {
    /// A distributor with no relays and no members. `salt` should be random
    /// and kept with the state: it makes placement unpredictable.
    pub fn new(config: Config, salt: u64) -> Result<Self, DistributorError> {
        config.validate()?;
        Ok(Distributor {
            config,
            salt,
            members: BTreeMap::new(),
            relays: BTreeMap::new(),
            buckets: BTreeMap::new(),
            next_bucket: 0,
            spares: Vec::new(),
            invites: BTreeMap::new(),
            network_day: 0,
            network_counts: BTreeMap::new(),
            blocks_today: BTreeMap::new(),
            sweeps: BTreeMap::new(),
            lost_today: BTreeMap::new(),
            epoch: 0,
            no_room: BTreeMap::new(),
        })
    }

    /// The policy in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the policy (an operator changed it between restarts); later
    /// calls follow the new numbers, nothing already decided is undone.
    pub fn set_config(&mut self, config: Config) -> Result<(), DistributorError> {
        config.validate()?;
        self.config = config;
        self.epoch += 1;
        Ok(())
    }

    /// Adds a relay. It joins the open-entry pool while new members need
    /// room there (or the pool is below [`Config::open_pool_fraction`]),
    /// otherwise it waits for the next bucket.
    pub fn add_relay(
        &mut self,
        relay: RelayId,
        network: NetworkId,
        _now: Time,
    ) -> Result<(), DistributorError> {
        if self.relays.contains_key(&relay) {
            return Err(DistributorError::RelayExists(relay));
        }
        let open_live = self
            .relays
            .values()
            .filter(|r| !r.retired && r.pool == Pool::Open)
            .count();
        let new_members = self
            .members
            .values()
            .filter(|m| m.level == 0 && !m.banned)
            .count();
        let to_open = self.open_budget_allows(1)
            && open_live * self.config.open_members_target < new_members + 1;
        let pool = if to_open { Pool::Open } else { Pool::Spare };
        self.relays.insert(
            relay,
            Relay {
                network,
                pool,
                members: BTreeMap::new(),
                countries: BTreeMap::new(),
                retired: false,
            },
        );
        self.epoch += 1;
        if pool == Pool::Spare {
            self.spares.push(relay);
            if self.spares.len() >= self.config.bucket_size {
                self.form_bucket();
            }
        }
        Ok(())
    }

    /// Takes a relay out of service (its volunteer left). Its members lose
    /// it without blame and get a replacement on their next request.
    pub fn retire_relay(
        &mut self,
        relay: RelayId,
        _now: Time,
    ) -> Result<Vec<Decision>, DistributorError> {
        let r = self
            .relays
            .get_mut(&relay)
            .ok_or(DistributorError::UnknownRelay(relay))?;
        if r.retired {
            return Ok(Vec::new());
        }
        r.retired = true;
        let members: Vec<MemberId> = std::mem::take(&mut r.members).into_keys().collect();
        self.spares.retain(|s| *s != relay);
        let mut decisions = Vec::new();
        for id in members {
            self.lose_relay(id, relay, false);
            decisions.push(Decision::Revoked { member: id, relay });
        }
        Ok(decisions)
    }

    /// Registers a new member at level 0. It gets its relay on its first
    /// [`Distributor::assign`].
    pub fn register_member(
        &mut self,
        member: MemberId,
        country: Country,
        network: NetworkId,
        now: Time,
    ) -> Result<(), DistributorError> {
        self.insert_member(member, country, network, 0, None, now)
    }

    /// Creates an invitation from `member`, who must be at level 1 or above
    /// and have invitations left. `code` must come from a secure random
    /// source.
    pub fn create_invite(
        &mut self,
        member: MemberId,
        code: InviteCode,
        now: Time,
    ) -> Result<(), DistributorError> {
        self.check_standing(member, now)?;
        if self.invites.contains_key(&code) {
            return Err(DistributorError::InviteExists);
        }
        let m = self.member_mut(member)?;
        if m.level == 0 {
            return Err(DistributorError::NotTrusted(member));
        }
        if m.invitations == 0 {
            return Err(DistributorError::NoInvitations(member));
        }
        m.invitations -= 1;
        self.invites.insert(code, Invite { from: member });
        Ok(())
    }

    /// Registers `member` with an invitation: it starts at level 1 and joins
    /// its inviter's bucket if that has room and works in its country.
    pub fn redeem_invite(
        &mut self,
        code: InviteCode,
        member: MemberId,
        country: Country,
        network: NetworkId,
        now: Time,
    ) -> Result<(), DistributorError> {
        let invite = self
            .invites
            .get(&code)
            .ok_or(DistributorError::UnknownInvite)?;
        let from = invite.from;
        self.insert_member(member, country, network, 1, Some(from), now)?;
        self.invites.remove(&code);
        let bucket = self.members.get(&from).and_then(|f| f.bucket);
        if let Some(b) = bucket
            && self.bucket_fits(b, country, member)
        {
            self.join_bucket(member, b, now);
        }
        Ok(())
    }

    /// The member's relays, topped up to what its level entitles it to
    /// (within the rate limits), after any promotion it has earned.
    pub fn assign(&mut self, member: MemberId, now: Time) -> Result<Assignment, DistributorError> {
        self.roll_day(now);
        self.check_standing(member, now)?;
        let mut decisions = Vec::new();
        self.accrue(member, now);
        self.promote(member, now, &mut decisions);
        self.top_up(member, now);
        self.accrue(member, now);
        let m = &self.members[&member];
        Ok(Assignment {
            relays: self.relays_of(m),
            level: m.level,
            decisions,
        })
    }

    /// A member reports that it cannot reach `relay`. Once enough members of
    /// its country agree ([`Config::reports_to_confirm`], or every member of
    /// that country who has the relay if fewer), the relay counts as blocked
    /// there.
    pub fn report_blocked(
        &mut self,
        member: MemberId,
        relay: RelayId,
        now: Time,
    ) -> Result<Vec<Decision>, DistributorError> {
        let m = self
            .members
            .get(&member)
            .ok_or(DistributorError::UnknownMember(member))?;
        if m.banned {
            return Err(DistributorError::Banned(member));
        }
        let country = m.country;
        let r = self
            .relays
            .get(&relay)
            .ok_or(DistributorError::UnknownRelay(relay))?;
        if r.countries
            .get(&country)
            .is_some_and(|s| s.blocked_since.is_some())
        {
            return Ok(Vec::new());
        }
        if !r.members.contains_key(&member) {
            return Err(DistributorError::NotAssigned { member, relay });
        }
        let users = self.users_in(relay, country);
        let need = self.config.reports_to_confirm.min(users).max(1);
        let state = self
            .relays
            .get_mut(&relay)
            .expect("checked above")
            .countries
            .entry(country)
            .or_default();
        state.reporters.insert(member);
        let mut decisions = Vec::new();
        if state.reporters.len() >= need {
            self.confirm_blocked(relay, country, now, &mut decisions);
        }
        Ok(decisions)
    }

    /// The relay's count of distinct clients from `country` over the last
    /// day. A sudden drop against its moving average marks the relay blocked
    /// there; clients arriving from a country where it was counted blocked
    /// mark it reachable again; a healthy count refutes pending reports.
    pub fn relay_signal(
        &mut self,
        relay: RelayId,
        country: Country,
        clients: u32,
        now: Time,
    ) -> Result<Vec<Decision>, DistributorError> {
        let cfg = self.config.clone();
        let r = self
            .relays
            .get_mut(&relay)
            .ok_or(DistributorError::UnknownRelay(relay))?;
        let state = r.countries.entry(country).or_default();
        let clients = f64::from(clients);
        let mut decisions = Vec::new();
        if state.blocked_since.is_some() {
            if clients >= cfg.signal_min_baseline {
                state.blocked_since = None;
                self.epoch += 1;
                state.baseline = Some(clients);
                decisions.push(Decision::RelayUnblocked { relay, country });
            }
            return Ok(decisions);
        }
        if let Some(b) = state.baseline
            && b >= cfg.signal_min_baseline
            && clients <= b * cfg.signal_drop_ratio
        {
            self.confirm_blocked(relay, country, now, &mut decisions);
            return Ok(decisions);
        }
        let healthy = clients
            >= cfg
                .signal_min_baseline
                .max(state.baseline.unwrap_or(0.0) * 0.5);
        let refuted: Vec<MemberId> = if healthy {
            std::mem::take(&mut state.reporters).into_iter().collect()
        } else {
            Vec::new()
        };
        state.baseline = Some(match state.baseline {
            Some(b) => b * (1.0 - cfg.signal_smoothing) + clients * cfg.signal_smoothing,
            None => clients,
        });
        for member in refuted {
            decisions.push(Decision::FalseReport { member, relay });
            self.add_suspicion(member, cfg.false_report_suspicion, now, &mut decisions);
        }
        Ok(decisions)
    }

    /// A member's standing, or `None` if unknown.
    pub fn member(&self, member: MemberId, now: Time) -> Option<MemberView> {
        let m = self.members.get(&member)?;
        Some(MemberView {
            level: m.level,
            relays: self.relays_of(m),
            bucket: m.bucket,
            blockages: m.blockages,
            suspicion: self.suspicion_of(m, now),
            invitations: m.invitations,
            invited_by: m.invited_by,
            suspended_until: m.suspended_until,
            banned: m.banned,
            cleared_at: m.cleared_at,
            unserved: self.unserved(m, now),
        })
    }

    /// Every relay's health, in relay order.
    pub fn relay_health(&self) -> Vec<RelayHealth> {
        self.relays
            .iter()
            .map(|(id, r)| RelayHealth {
                relay: *id,
                network: r.network,
                bucket: match r.pool {
                    Pool::Bucket(b) => Some(b),
                    _ => None,
                },
                spare: r.pool == Pool::Spare,
                members: r.members.len(),
                blocked_in: r
                    .countries
                    .iter()
                    .filter_map(|(c, s)| s.blocked_since.map(|t| (*c, t)))
                    .collect(),
                retired: r.retired,
            })
            .collect()
    }

    /// Whether `code` is a live invitation (created and not yet redeemed).
    pub fn has_invite(&self, code: &InviteCode) -> bool {
        self.invites.contains_key(code)
    }

    /// Whether `relay` counts as blocked in `country`.
    pub fn is_blocked(&self, relay: RelayId, country: Country) -> bool {
        self.relays
            .get(&relay)
            .and_then(|r| r.countries.get(&country))
            .is_some_and(|s| s.blocked_since.is_some())
    }

    // ---- internals ----

    /// See [`Unserved`]: what [`Distributor::may_hand_out`] and
    /// [`Distributor::replacement_path`] decide.
    fn unserved(&self, m: &Member, now: Time) -> Option<Unserved> {
        if m.banned {
            return Some(Unserved::Banned);
        }
        if m.suspended_until.is_some_and(|u| u > now) {
            return Some(Unserved::Suspended);
        }
        if !self.relays_of(m).is_empty() {
            return None;
        }
        if !m.needs_replacement {
            return Some(Unserved::Waiting);
        }
        // A replacement it may have, but no room for it (or its network's
        // limit); else why it may not.
        Some(
            self.replacement_path(m, now)
                .err()
                .unwrap_or(Unserved::NoRoom),
        )
    }

    fn insert_member(
        &mut self,
        member: MemberId,
        country: Country,
        network: NetworkId,
        level: u8,
        invited_by: Option<MemberId>,
        now: Time,
    ) -> Result<(), DistributorError> {
        self.roll_day(now);
        if self.members.contains_key(&member) {
            return Err(DistributorError::MemberExists(member));
        }
        let limit = self.config.network_registrations_per_day;
        let count = self.network_counts.entry(network).or_default();
        if count.registrations >= limit {
            return Err(DistributorError::NetworkLimit(network));
        }
        count.registrations += 1;
        let invitations = if level >= 1 {
            self.config.level_invitations[usize::from(level) - 1]
        } else {
            0
        };
        self.members.insert(
            member,
            Member {
                country,
                network,
                level,
                level_since: now,
                blockages: 0,
                last_blockage_day: None,
                suspicion: 0.0,
                suspicion_at: now,
                // Invited members do not invite before they earn level 2.
                invitations: if invited_by.is_some() { 0 } else { invitations },
                invitations_refilled: now,
                invited_by,
                bucket: None,
                open: Vec::new(),
                kept: Vec::new(),
                needs_replacement: false,
                replacements: Vec::new(),
                credit: 0.0,
                credit_at: now,
                earning: false,
                free_replacements: self.config.free_replacements,
                untrusted_replacements: 0,
                no_fault_used: 0,
                no_fault_due: false,
                free_due: false,
                cleared_at: None,
                suspended_until: None,
                banned: false,
            },
        );
        Ok(())
    }

    fn member_mut(&mut self, member: MemberId) -> Result<&mut Member, DistributorError> {
        self.members
            .get_mut(&member)
            .ok_or(DistributorError::UnknownMember(member))
    }

    /// Refuses banned and suspended members; lifts a suspension that ended.
    fn check_standing(&mut self, member: MemberId, now: Time) -> Result<(), DistributorError> {
        let m = self.member_mut(member)?;
        if m.banned {
            return Err(DistributorError::Banned(member));
        }
        if let Some(until) = m.suspended_until {
            if now < until {
                return Err(DistributorError::Suspended { member, until });
            }
            m.suspended_until = None;
            m.level_since = now;
            m.needs_replacement = true;
        }
        Ok(())
    }

    fn roll_day(&mut self, now: Time) {
        if now.day() != self.network_day {
            self.network_day = now.day();
            self.network_counts.clear();
        }
        self.settle_sweeps(now);
    }

    /// Whether a block of a relay in `country` now belongs to a sweep.
    fn in_sweep(&self, country: Country, now: Time) -> bool {
        let settle = u64::from(self.config.sweep_settle_days);
        self.sweeps
            .get(&country)
            .is_some_and(|s| now.day() >= s.day && now.day() <= s.day + settle)
    }

    /// Clears, once a sweep has settled, every member of its country that
    /// held since before it a relay that is still live and not reported:
    /// a censor blocking all it knew did not know that relay, so none of
    /// its holders is the censor's.
    fn settle_sweeps(&mut self, now: Time) {
        let settle = u64::from(self.config.sweep_settle_days);
        let due: Vec<(Country, u64)> = self
            .sweeps
            .iter()
            .filter(|(_, s)| !s.settled && now.day() > s.day + settle)
            .map(|(c, s)| (*c, s.day))
            .collect();
        for (country, day) in due {
            let start = Time::from_days(day);
            let mut cleared = BTreeSet::new();
            for r in self.relays.values() {
                let live = !r.retired
                    && r.countries
                        .get(&country)
                        .is_none_or(|s| s.blocked_since.is_none() && s.reporters.is_empty());
                if !live {
                    continue;
                }
                for (id, since) in &r.members {
                    if *since < start {
                        cleared.insert(*id);
                    }
                }
            }
            for id in cleared {
                if let Some(m) = self.members.get_mut(&id)
                    && m.country == country
                    && !m.banned
                    && m.cleared_at.is_none()
                {
                    m.cleared_at = Some(start);
                }
            }
            self.sweeps.get_mut(&country).expect("listed").settled = true;
        }
    }

    fn is_live(&self, relay: RelayId, country: Country) -> bool {
        self.relays.get(&relay).is_some_and(|r| {
            !r.retired
                && r.countries
                    .get(&country)
                    .is_none_or(|s| s.blocked_since.is_none())
        })
    }

    fn relays_of(&self, m: &Member) -> Vec<RelayId> {
        let mut out: Vec<RelayId> = Vec::new();
        let bucket = m
            .bucket
            .and_then(|b| self.buckets.get(&b))
            .map(|b| b.relays.as_slice())
            .unwrap_or(&[]);
        for r in bucket.iter().chain(&m.open).chain(&m.kept) {
            if self.is_live(*r, m.country) && !out.contains(r) {
                out.push(*r);
            }
        }
        out
    }

    fn users_in(&self, relay: RelayId, country: Country) -> usize {
        self.relays[&relay]
            .members
            .keys()
            .filter(|m| self.members.get(m).is_some_and(|m| m.country == country))
            .count()
    }

    fn suspicion_of(&self, m: &Member, now: Time) -> f64 {
        let half_lives =
            now.days_since_f64(m.suspicion_at) / f64::from(self.config.suspicion_half_life_days);
        m.suspicion * 0.5f64.powf(half_lives)
    }

    fn form_bucket(&mut self) {
        self.epoch += 1;
        let relays: Vec<RelayId> = self.spares.drain(..self.config.bucket_size).collect();
        let id = BucketId(self.next_bucket);
        self.next_bucket += 1;
        for r in &relays {
            if let Some(relay) = self.relays.get_mut(r) {
                relay.pool = Pool::Bucket(id);
            }
        }
        self.buckets.insert(
            id,
            Bucket {
                relays,
                members: BTreeSet::new(),
            },
        );
    }

    fn promote(&mut self, id: MemberId, now: Time, decisions: &mut Vec<Decision>) {
        let cfg = &self.config;
        let m = &self.members[&id];
        let suspicion = self.suspicion_of(m, now);
        let days = now.days_since(m.level_since);
        let (eligible, allowed) = match m.level {
            0 => (
                days >= u64::from(cfg.untrusted_days),
                cfg.untrusted_allowed_blockages,
            ),
            l if l < MAX_LEVEL => {
                let i = usize::from(l) - 1;
                (
                    days >= u64::from(cfg.level_interval_days[i]),
                    cfg.level_allowed_blockages[i],
                )
            }
            _ => {
                // Level 4: invitations refill every last interval.
                let refill = cfg.level_invitations[3];
                let every = u64::from(cfg.level_interval_days[3]);
                let m = self.members.get_mut(&id).expect("member exists");
                if now.days_since(m.invitations_refilled) >= every {
                    m.invitations = m.invitations.max(refill);
                    m.invitations_refilled = now;
                }
                return;
            }
        };
        // As in Lox, only a member whose relays work is promoted: an account
        // whose every relay is blocked earns no trust by waiting.
        let reachable = !self.relays_of(m).is_empty();
        if !eligible
            || !reachable
            || m.blockages > allowed
            || suspicion >= cfg.promotion_max_suspicion
        {
            return;
        }
        let level = m.level + 1;
        let grant = cfg.level_invitations[usize::from(level) - 1];
        let m = self.members.get_mut(&id).expect("member exists");
        m.level = level;
        m.level_since = now;
        m.blockages = 0;
        m.invitations += grant;
        m.invitations_refilled = now;
        decisions.push(Decision::Promoted { member: id, level });
    }

    /// Whether a hand-out to this member is within its own and its
    /// network's limits (not counting it yet).
    fn may_hand_out(&self, m: &Member, count: u32, now: Time) -> bool {
        let net = self
            .network_counts
            .get(&m.network)
            .map(|c| c.handouts)
            .unwrap_or(0);
        if net + count > self.config.network_handouts_per_day {
            return false;
        }
        !m.needs_replacement || self.replacement_path(m, now).is_ok()
    }

    /// How a member that lost relays to blocking may get a replacement, if
    /// at all (not counting the network's limit).
    fn replacement_path(&self, m: &Member, now: Time) -> Result<Replacement, Unserved> {
        let cfg = &self.config;
        if m.free_due {
            // Lost in a sweep: bounded by `no_fault_replacements`.
            return Ok(Replacement::Free);
        }
        if m.level == 0 && m.no_fault_due {
            // Not its fault: bounded by `no_fault_replacements`.
            return Ok(Replacement::NoFault);
        }
        if m.level == 0 && m.untrusted_replacements >= cfg.untrusted_replacements {
            return Err(Unserved::NoAllowance);
        }
        let window = u64::from(cfg.replacement_window_days);
        let recent = m
            .replacements
            .iter()
            .filter(|t| now.days_since(**t) < window)
            .count();
        if recent as u32 >= cfg.replacements_per_window[usize::from(m.level)] {
            return Err(Unserved::RateLimited);
        }
        if m.credit >= cfg.replacement_cost_days || m.free_replacements > 0 {
            Ok(Replacement::Paid)
        } else {
            Err(Unserved::NoCredit)
        }
    }

    /// Brings the member's credit up to `now`: a day of credit for each day
    /// it held a working relay (up to [`Config::credit_cap_days`]).
    fn accrue(&mut self, id: MemberId, now: Time) {
        let Some(m) = self.members.get(&id) else {
            return;
        };
        let earning = !self.relays_of(m).is_empty();
        let cap = self.config.credit_cap_days;
        let m = self.members.get_mut(&id).expect("exists");
        if m.earning {
            m.credit = (m.credit + now.days_since_f64(m.credit_at)).min(cap);
        }
        m.credit_at = now;
        m.earning = earning;
    }

    fn record_hand_out(&mut self, id: MemberId, count: u32, now: Time) {
        let window = u64::from(self.config.replacement_window_days);
        let cost = self.config.replacement_cost_days;
        let path = self
            .members
            .get(&id)
            .filter(|m| m.needs_replacement)
            .and_then(|m| self.replacement_path(m, now).ok());
        let m = self.members.get_mut(&id).expect("member exists");
        self.network_counts.entry(m.network).or_default().handouts += count;
        let Some(path) = path else {
            return;
        };
        m.replacements.retain(|t| now.days_since(*t) < window);
        m.replacements.push(now);
        m.needs_replacement = false;
        match path {
            Replacement::Free => m.free_due = false,
            Replacement::NoFault => {
                m.no_fault_due = false;
                m.no_fault_used += 1;
            }
            Replacement::Paid => {
                if m.level == 0 {
                    m.untrusted_replacements += 1;
                }
                if m.credit >= cost {
                    m.credit -= cost;
                } else {
                    m.free_replacements = m.free_replacements.saturating_sub(1);
                }
            }
        }
    }

    fn top_up(&mut self, id: MemberId, now: Time) {
        let m = &self.members[&id];
        if m.level == 0 {
            while self.members[&id].open.len() < self.config.untrusted_relays {
                if !self.may_hand_out(&self.members[&id], 1, now) {
                    return;
                }
                let Some(relay) = self.pick_open(id, now) else {
                    return;
                };
                self.record_hand_out(id, 1, now);
                self.relays
                    .get_mut(&relay)
                    .expect("picked")
                    .members
                    .insert(id, now);
                self.members.get_mut(&id).expect("exists").open.push(relay);
            }
            return;
        }
        let country = m.country;
        let broken = match m.bucket {
            Some(b) => self.dead_in_bucket(b, country) >= self.config.bucket_broken_after,
            None => true,
        };
        if !broken {
            return;
        }
        if let Some(b) = m.bucket {
            self.leave_bucket(id, b, true);
        }
        let count = self.config.bucket_size as u32;
        if !self.may_hand_out(&self.members[&id], count, now) {
            return;
        }
        if let Some(b) = self.pick_bucket(id, now) {
            self.record_hand_out(id, count, now);
            self.join_bucket(id, b, now);
            // A bucket replaces the open-entry relay, which goes back to new
            // members.
            let open = std::mem::take(&mut self.members.get_mut(&id).expect("exists").open);
            for r in open {
                if let Some(relay) = self.relays.get_mut(&r) {
                    relay.members.remove(&id);
                }
            }
            self.epoch += 1;
        } else if self.relays_of(&self.members[&id]).is_empty()
            && let Some(relay) = self.pick_open(id, now)
        {
            // No bucket has room: an open-entry relay keeps it connected.
            self.record_hand_out(id, 1, now);
            self.relays
                .get_mut(&relay)
                .expect("picked")
                .members
                .insert(id, now);
            self.members.get_mut(&id).expect("exists").open.push(relay);
        }
    }

    fn dead_in_bucket(&self, bucket: BucketId, country: Country) -> usize {
        self.buckets[&bucket]
            .relays
            .iter()
            .filter(|r| !self.is_live(**r, country))
            .count()
    }

    fn bucket_fits(&self, bucket: BucketId, country: Country, member: MemberId) -> bool {
        let b = &self.buckets[&bucket];
        b.members.len() < self.config.max_members_per_relay
            && b.relays.iter().all(|r| {
                self.is_live(*r, country)
                    && self.relays[r].members.len() < self.config.max_members_per_relay
                    && !self.relays[r].members.contains_key(&member)
            })
    }

    /// Whether the member holds no relay, so that whether there is room
    /// for it does not depend on who it is.
    fn holds_nothing(&self, id: MemberId) -> bool {
        let m = &self.members[&id];
        m.bucket.is_none() && m.open.is_empty() && m.kept.is_empty()
    }

    fn known_full(&self, country: Country, bucket: bool, capped: bool, now: Time) -> bool {
        self.no_room.get(&(country, bucket, capped)) == Some(&(self.epoch, now))
    }

    fn remember_full(&mut self, id: MemberId, bucket: bool, capped: bool, now: Time) {
        if self.holds_nothing(id) {
            let country = self.members[&id].country;
            self.no_room
                .insert((country, bucket, capped), (self.epoch, now));
        }
    }

    /// Whether seating this member on an open-entry relay is held to
    /// [`Config::max_exposed_per_relay`]: only an exposed member, and only
    /// once a relay was blocked in its country (where no censor is seen,
    /// nobody waits).
    fn capped(&self, id: MemberId, now: Time) -> bool {
        let m = &self.members[&id];
        self.config.max_exposed_per_relay > 0
            && self.blocks_today.contains_key(&m.country)
            && self.exposed(m, now)
    }

    fn pick_bucket(&mut self, id: MemberId, now: Time) -> Option<BucketId> {
        let country = self.members[&id].country;
        if self.holds_nothing(id) && self.known_full(country, true, false, now) {
            return None;
        }
        let best = self
            .buckets
            .iter()
            .filter(|(b, _)| self.bucket_fits(**b, country, id))
            .min_by_key(|(b, bucket)| (bucket.members.len(), mix(self.salt, id.0, b.0)))
            .map(|(b, _)| *b);
        if best.is_none() {
            self.remember_full(id, true, false, now);
        }
        best
    }

    fn join_bucket(&mut self, id: MemberId, bucket: BucketId, now: Time) {
        let b = self.buckets.get_mut(&bucket).expect("bucket exists");
        b.members.insert(id);
        for r in b.relays.clone() {
            self.relays
                .get_mut(&r)
                .expect("exists")
                .members
                .insert(id, now);
        }
        let m = self.members.get_mut(&id).expect("exists");
        m.kept.retain(|r| !self.buckets[&bucket].relays.contains(r));
        m.bucket = Some(bucket);
    }

    /// Leaves a bucket; with `keep`, the bucket's relays that still work for
    /// the member stay with it (up to [`Config::max_kept_relays`]).
    fn leave_bucket(&mut self, id: MemberId, bucket: BucketId, keep: bool) {
        self.epoch += 1;
        let country = self.members[&id].country;
        let relays = self.buckets[&bucket].relays.clone();
        let mut kept = Vec::new();
        for r in relays {
            if keep
                && self.is_live(r, country)
                && kept.len() + self.members[&id].kept.len() < self.config.max_kept_relays
            {
                kept.push(r);
            } else if let Some(relay) = self.relays.get_mut(&r) {
                relay.members.remove(&id);
            }
        }
        self.buckets
            .get_mut(&bucket)
            .expect("exists")
            .members
            .remove(&id);
        let m = self.members.get_mut(&id).expect("exists");
        m.bucket = None;
        m.kept.extend(kept);
    }

    fn pick_open(&mut self, id: MemberId, now: Time) -> Option<RelayId> {
        let country = self.members[&id].country;
        let capped = self.capped(id, now);
        if self.holds_nothing(id) && self.known_full(country, false, capped, now) {
            return None;
        }
        let mut best = self.least_loaded_open(id, now);
        let crowded = best.is_none_or(|(load, _)| load >= self.config.open_members_target);
        if crowded && self.open_an_unused_bucket() {
            best = self.least_loaded_open(id, now);
        }
        if best.is_none() {
            self.remember_full(id, false, capped, now);
        }
        best.map(|(_, r)| r)
    }

    /// The open-entry relay a member would be seated on, and the fewest
    /// newcomers (level-0 members) on any candidate: whether the open pool
    /// is crowded. The relay has the fewest newcomers or, with
    /// [`Config::seat_by_exposure`], the fewest members a blockage would
    /// strand.
    fn least_loaded_open(&self, id: MemberId, now: Time) -> Option<(usize, RelayId)> {
        let m = &self.members[&id];
        let by_exposure = self.config.seat_by_exposure;
        let capped = self.capped(id, now);
        let count_exposed = by_exposure || capped;
        let swept = self.sweeps.contains_key(&m.country);
        let candidates: Vec<(usize, usize, usize, usize, RelayId)> = self
            .relays
            .iter()
            .filter(|(rid, r)| {
                r.pool == Pool::Open
                    && r.members.len() < self.config.max_members_per_relay
                    && !r.members.contains_key(&id)
                    && !m.kept.contains(rid)
                    && self.is_live(**rid, m.country)
            })
            .map(|(rid, r)| {
                let (mut untested, mut newcomers, mut exposed) = (0, 0, 0);
                for o in r.members.keys().filter_map(|o| self.members.get(o)) {
                    untested += usize::from(swept && o.cleared_at.is_none());
                    newcomers += usize::from(o.level == 0);
                    exposed += usize::from(count_exposed && self.exposed(o, now));
                }
                (untested, exposed, newcomers, r.members.len(), *rid)
            })
            .filter(|c| !capped || c.1 < self.config.max_exposed_per_relay)
            .collect();
        let crowd = candidates.iter().map(|c| c.2).min()?;
        candidates
            .into_iter()
            .min_by_key(|(untested, exposed, newcomers, members, rid)| {
                (
                    *untested,
                    if by_exposure { *exposed } else { 0 },
                    *newcomers,
                    *members,
                    mix(self.salt, id.0, rid.0),
                )
            })
            .map(|(_, _, _, _, rid)| (crowd, rid))
    }

    /// Whether a blockage of its relays would leave the member with nothing
    /// ([`Config::seat_by_exposure`]): a level-0 member without the credit
    /// or the allowance for a replacement, or a member on probation.
    fn exposed(&self, m: &Member, now: Time) -> bool {
        let cfg = &self.config;
        match m.level {
            0 => {
                let credit = if m.earning {
                    (m.credit + now.days_since_f64(m.credit_at)).min(cfg.credit_cap_days)
                } else {
                    m.credit
                };
                credit < cfg.replacement_cost_days
                    || m.untrusted_replacements >= cfg.untrusted_replacements
            }
            1 => {
                m.invited_by.is_none()
                    && now.days_since(m.level_since) < u64::from(cfg.probation_days)
            }
            _ => false,
        }
    }

    /// Whether `more` relays fit in the open-entry budget: relays ever given
    /// to the open pool, blocked ones included, stay within
    /// [`Config::open_pool_fraction`] of all relays. Censors' new accounts
    /// burn open-entry relays; the budget keeps them from burning the rest.
    fn open_budget_allows(&self, more: usize) -> bool {
        let open = self
            .relays
            .values()
            .filter(|r| r.pool == Pool::Open)
            .count();
        // At least one bucket's worth, so that the first members get in.
        let budget = (self.config.open_pool_fraction * (self.relays.len() + 1) as f64)
            .max(self.config.bucket_size as f64);
        ((open + more) as f64) <= budget
    }

    /// Turns a bucket nobody uses into open-entry relays, when new members
    /// would otherwise crowd the open ones.
    fn open_an_unused_bucket(&mut self) -> bool {
        if !self.open_budget_allows(self.config.bucket_size) {
            return false;
        }
        let unused = self.buckets.iter().find(|(_, b)| {
            b.members.is_empty()
                && b.relays
                    .iter()
                    .all(|r| self.relays[r].members.is_empty() && !self.relays[r].retired)
        });
        let Some((&id, _)) = unused else {
            return false;
        };
        self.epoch += 1;
        let bucket = self.buckets.remove(&id).expect("found");
        for r in bucket.relays {
            self.relays.get_mut(&r).expect("exists").pool = Pool::Open;
        }
        true
    }

    /// The member no longer has `relay` (blocked in its country, or
    /// retired): drop it, and mark a replacement as due if it left the
    /// member short.
    fn lose_relay(&mut self, id: MemberId, relay: RelayId, blocked: bool) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let had_open = m.open.contains(&relay);
        m.open.retain(|r| *r != relay);
        m.kept.retain(|r| *r != relay);
        let (bucket, country) = (m.bucket, m.country);
        let bucket_broken = bucket.is_some_and(|b| {
            self.buckets[&b].relays.contains(&relay)
                && self.dead_in_bucket(b, country) >= self.config.bucket_broken_after
        });
        let m = self.members.get_mut(&id).expect("exists");
        // A replacement for a blocked relay is rationed; one for a relay
        // its volunteer retired is not.
        if (had_open || bucket_broken) && blocked {
            m.needs_replacement = true;
        }
    }

    fn confirm_blocked(
        &mut self,
        relay: RelayId,
        country: Country,
        now: Time,
        decisions: &mut Vec<Decision>,
    ) {
        // Blame goes to the members who got the relay most recently: a relay
        // that worked for weeks and is blocked the day after someone got it
        // points at that someone. Weights h / (h + age in days) sum to one.
        let h = self.config.blame_recency_days;
        let affected: Vec<(MemberId, f64)> = self.relays[&relay]
            .members
            .iter()
            .filter(|(m, _)| self.members.get(m).is_some_and(|m| m.country == country))
            .map(|(m, since)| (*m, h / (h + now.days_since_f64(*since))))
            .collect();
        let total: f64 = affected.iter().map(|(_, w)| w).sum();
        let most: f64 = affected.iter().map(|(_, w)| *w).fold(0.0, f64::max);
        let r = self.relays.get_mut(&relay).expect("exists");
        let state = r.countries.entry(country).or_default();
        if state.blocked_since.is_some() {
            return;
        }
        state.blocked_since = Some(now);
        state.reporters.clear();
        let today = self.blocks_today.entry(country).or_insert((now.day(), 0));
        if today.0 != now.day() {
            *today = (now.day(), 0);
        }
        today.1 += 1;
        let mass = today.1 > self.config.no_fault_max_blocks_per_day;
        let count = today.1;
        for (m, _) in &affected {
            r.members.remove(m);
        }
        self.epoch += 1;
        decisions.push(Decision::RelayBlocked { relay, country });
        let min = self.config.sweep_min_blocks;
        if min > 0 && count >= min && !self.in_sweep(country, now) {
            // An earlier sweep settles before a new one starts.
            self.settle_sweeps(now.plus_days(u64::from(self.config.sweep_settle_days) + 1));
            self.sweeps.insert(
                country,
                Sweep {
                    day: now.day(),
                    settled: false,
                },
            );
            self.sweep_the_day_before(country, now);
        }
        let uncleared = affected
            .iter()
            .filter(|(id, _)| self.members[id].cleared_at.is_none())
            .count();
        if uncleared > 0 && self.in_sweep(country, now) {
            self.blame_sweep(relay, affected, uncleared, now, decisions);
            return;
        }
        for (id, weight) in affected {
            self.accrue(id, now);
            self.lose_relay(id, relay, true);
            decisions.push(Decision::Revoked { member: id, relay });
            let m = &self.members[&id];
            if min > 0 && m.level == 0 && m.cleared_at.is_none() {
                let lost = self.lost_today.entry(country).or_default();
                if lost.0 != now.day() {
                    *lost = (now.day(), Vec::new());
                }
                lost.1.push(id);
            }
            if self.add_suspicion(id, weight / total, now, decisions) {
                continue;
            }
            if !mass && self.no_fault(id, weight / most, now) {
                continue;
            }
            self.count_blockage(id, now, decisions);
        }
    }

    /// A sweep is recognised only at its `sweep_min_blocks`-th block; the
    /// level-0 members not cleared who lost a relay earlier that day, and
    /// have not been given another yet, are treated as the sweep's: no
    /// replacement paid with credit, and no no-fault one.
    fn sweep_the_day_before(&mut self, country: Country, now: Time) {
        let Some((day, ids)) = self.lost_today.remove(&country) else {
            return;
        };
        if day != now.day() {
            return;
        }
        let allowance = self.config.untrusted_replacements;
        for id in ids {
            if let Some(m) = self.members.get_mut(&id)
                && m.level == 0
                && m.cleared_at.is_none()
                && m.needs_replacement
            {
                m.untrusted_replacements = m.untrusted_replacements.max(allowance);
                m.no_fault_due = false;
            }
        }
    }

    /// A relay blocked in a sweep: its holders not yet cleared share the
    /// blame equally (each at most [`Config::sweep_max_blame`]); those at
    /// level 0 start their trust clock again
    /// without a blockage counted, and get no replacement paid with credit
    /// (every account the censor ran is among them). Cleared
    /// holders carry none of it and get a replacement without credit,
    /// uncounted, up to [`Config::no_fault_replacements`] times in all;
    /// after that their blockages count as usual. A censor that spares
    /// some of its accounts' relays in one sweep to have them cleared
    /// gains those free replacements and no more.
    fn blame_sweep(
        &mut self,
        relay: RelayId,
        affected: Vec<(MemberId, f64)>,
        uncleared: usize,
        now: Time,
        decisions: &mut Vec<Decision>,
    ) {
        let share = (1.0 / uncleared as f64).min(self.config.sweep_max_blame);
        let limit = self.config.no_fault_replacements;
        for (id, _) in affected {
            self.accrue(id, now);
            self.lose_relay(id, relay, true);
            decisions.push(Decision::Revoked { member: id, relay });
            let m = &self.members[&id];
            if m.cleared_at.is_none() {
                if self.add_suspicion(id, share, now, decisions) {
                    continue;
                }
                let m = self.members.get_mut(&id).expect("exists");
                if m.level == 0 {
                    // A test failed: no replacement paid with credit.
                    m.level_since = now;
                    m.untrusted_replacements = m
                        .untrusted_replacements
                        .max(self.config.untrusted_replacements);
                } else {
                    self.count_blockage(id, now, decisions);
                }
            } else if m.no_fault_used < limit {
                let m = self.members.get_mut(&id).expect("exists");
                if m.needs_replacement {
                    m.free_due = true;
                    m.no_fault_used += 1;
                }
            } else {
                self.count_blockage(id, now, decisions);
            }
        }
    }

    /// A level-0 member left without its open-entry relay whose blame weight
    /// is below [`Config::no_fault_blame_ratio`] of the largest gets its
    /// replacement without credit, and the blockage is not counted (its
    /// `untrusted_days` still restart). Returns whether it applied.
    fn no_fault(&mut self, id: MemberId, ratio: f64, now: Time) -> bool {
        let cfg = &self.config;
        let (limit, restart) = (cfg.no_fault_replacements, cfg.untrusted_restart_on_blockage);
        if ratio >= cfg.no_fault_blame_ratio {
            return false;
        }
        let m = self.members.get_mut(&id).expect("exists");
        if m.level != 0 || !m.needs_replacement || m.no_fault_used >= limit {
            return false;
        }
        m.no_fault_due = true;
        if restart {
            m.level_since = now;
        }
        true
    }

    /// Adds suspicion; bans at the threshold. Returns whether it banned.
    fn add_suspicion(
        &mut self,
        id: MemberId,
        amount: f64,
        now: Time,
        decisions: &mut Vec<Decision>,
    ) -> bool {
        let Some(m) = self.members.get(&id) else {
            return false;
        };
        if m.banned {
            return true;
        }
        let s = self.suspicion_of(m, now) + amount;
        let m = self.members.get_mut(&id).expect("exists");
        m.suspicion = s;
        m.suspicion_at = now;
        if s >= self.config.ban_suspicion {
            m.banned = true;
            self.drop_all_relays(id);
            decisions.push(Decision::Banned { member: id });
            return true;
        }
        false
    }

    /// One blockage a day at most: relays blocked together (a bucket) are
    /// one event for the member.
    fn count_blockage(&mut self, id: MemberId, now: Time, decisions: &mut Vec<Decision>) {
        let cfg = self.config.clone();
        let m = self.members.get_mut(&id).expect("exists");
        if m.last_blockage_day == Some(now.day()) {
            return;
        }
        m.last_blockage_day = Some(now.day());
        m.blockages += 1;
        if m.level == 0 {
            if cfg.untrusted_restart_on_blockage {
                m.level_since = now;
            }
            if m.blockages > cfg.untrusted_allowed_blockages {
                let until = now.plus_days(u64::from(cfg.suspension_days));
                m.suspended_until = Some(until);
                m.blockages = 0;
                self.drop_all_relays(id);
                decisions.push(Decision::Suspended { member: id, until });
            }
            return;
        }
        let on_probation = m.level == 1
            && m.invited_by.is_none()
            && now.days_since(m.level_since) < u64::from(cfg.probation_days);
        if on_probation || m.blockages > cfg.level_allowed_blockages[usize::from(m.level) - 1] {
            m.level -= 1;
            m.level_since = now;
            m.blockages = 0;
            let level = m.level;
            if level == 0 {
                self.drop_all_relays(id);
                self.members.get_mut(&id).expect("exists").needs_replacement = true;
            }
            decisions.push(Decision::Demoted { member: id, level });
        }
    }

    fn drop_all_relays(&mut self, id: MemberId) {
        self.epoch += 1;
        if let Some(b) = self.members[&id].bucket {
            self.leave_bucket(id, b, false);
        }
        let m = self.members.get_mut(&id).expect("exists");
        let relays: Vec<RelayId> = m.open.drain(..).chain(m.kept.drain(..)).collect();
        for r in relays {
            if let Some(relay) = self.relays.get_mut(&r) {
                relay.members.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
