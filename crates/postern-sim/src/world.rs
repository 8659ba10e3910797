//! One run: a world of members, relays and a censor, stepped day by day
//! against one distributor.
//!
//! The world's randomness comes in separate streams (arrivals, activity,
//! client choices, the censor, innocent traffic), each seeded from the run's
//! seed and strategy but not from the distributor or the agent share: every
//! distributor of a run meets the same members, agents and relays, and a
//! larger agent share makes agents of more of the same newcomers.
//! Nothing here iterates a hash map.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::policy::{Fetch, Policy};
use crate::scenario::{Scenario, Strategy};

/// One step's measurements.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepRow {
    /// The step (day).
    pub step: u32,
    /// Honest members so far.
    pub honest: u32,
    /// Share of honest members holding at least one unblocked relay.
    pub honest_connected: f64,
    /// Relays so far.
    pub relays: u32,
    /// Share of relays not blocked.
    pub relays_unblocked: f64,
    /// Distinct relays each censor identity learned, on average.
    pub learned_per_identity: f64,
    /// Relays learned by all agents together.
    pub relays_learned: u32,
    /// Mean steps honest members without a relay have waited so far.
    pub waiting_mean: f64,
    /// Innocent servers blocked so far (host profiling).
    pub collateral_servers: u32,
    /// Innocent addresses blocked so far (whole networks).
    pub collateral_addresses: u64,
    /// Honest members the distributor refuses (banned or suspended).
    pub honest_refused: u32,
    /// Honest members not connected this step, by why.
    pub cut_off: CutOff,
}

/// Honest members not connected in a step, by why. `unregistered`, `busy`
/// and `blocked` are what the simulator sees; for a member holding nothing,
/// the distributor's own reason (Postern's
/// [`postern_distributor::Unserved`], by its name), or `no_relay` when the
/// distributor gives none (the baselines).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CutOff {
    /// Not registered yet (a registration limit).
    pub unregistered: u32,
    /// Online, holding a working relay, but every one was at capacity.
    pub busy: u32,
    /// Holding relays that are all blocked, not yet replaced (the
    /// distributor does not know yet, or the member was offline).
    pub blocked: u32,
    /// Given nothing, no reason said.
    pub no_relay: u32,
    /// Waiting for a first relay (no room, or the network's limit).
    pub waiting: u32,
    /// A replacement due, but no room for it.
    pub no_room: u32,
    /// No credit for a replacement.
    pub no_credit: u32,
    /// No replacement left at level 0.
    pub no_allowance: u32,
    /// Replacements of the week used.
    pub rate_limited: u32,
    /// Banned.
    pub banned: u32,
    /// Suspended.
    pub suspended: u32,
}

impl CutOff {
    /// Each count by name, in a fixed order (the CSV columns' order).
    pub fn pairs(&self) -> [(&'static str, u32); 11] {
        [
            ("unregistered", self.unregistered),
            ("busy", self.busy),
            ("blocked", self.blocked),
            ("no_relay", self.no_relay),
            ("waiting", self.waiting),
            ("no_room", self.no_room),
            ("no_credit", self.no_credit),
            ("no_allowance", self.no_allowance),
            ("rate_limited", self.rate_limited),
            ("banned", self.banned),
            ("suspended", self.suspended),
        ]
    }

    /// All of them.
    pub fn total(&self) -> u32 {
        self.pairs().iter().map(|(_, n)| n).sum()
    }

    fn count(&mut self, why: &str) {
        let slot = match why {
            "unregistered" => &mut self.unregistered,
            "busy" => &mut self.busy,
            "blocked" => &mut self.blocked,
            "waiting" => &mut self.waiting,
            "no_room" => &mut self.no_room,
            "no_credit" => &mut self.no_credit,
            "no_allowance" => &mut self.no_allowance,
            "rate_limited" => &mut self.rate_limited,
            "banned" => &mut self.banned,
            "suspended" => &mut self.suspended,
            _ => &mut self.no_relay,
        };
        *slot += 1;
    }
}

/// How long honest members waited for a working relay, per episode (a new
/// member waiting for its first relay, or a member cut off).
#[derive(Clone, Debug, Default)]
pub struct Waits {
    /// Ended episodes by length in steps (0 = served the step it began).
    pub lengths: BTreeMap<u32, u64>,
    /// Episodes still going at the end, by how long they had lasted.
    pub unfinished: BTreeMap<u32, u64>,
}

impl Waits {
    /// Share of episodes served within `steps` steps. An episode still
    /// going at the end counts as not served if it had already lasted
    /// longer; one too young to tell is left out.
    pub fn within(&self, steps: u32) -> f64 {
        let late: u64 = self.unfinished.range(steps + 1..).map(|(_, n)| n).sum();
        let total: u64 = self.lengths.values().sum::<u64>() + late;
        if total == 0 {
            return 1.0;
        }
        let ok: u64 = self.lengths.range(..=steps).map(|(_, n)| n).sum();
        ok as f64 / total as f64
    }
}

struct Member {
    agent: bool,
    network: u32,
    registered: bool,
    invite: Option<u64>,
    held: Held,
    preferred: Option<u32>,
    learned: BTreeSet<u32>,
    learned_all: u32,
    wait_start: Option<u32>,
    /// Online this step, and connected this step.
    online: bool,
    connected: bool,
}

#[derive(Clone, PartialEq)]
enum Held {
    Everything,
    Relays(Vec<u32>),
}

struct Relay {
    network: u32,
    blocked: bool,
}

/// Relays a zig-zag censor watches, and the members seen using them.
struct Watch {
    started: u32,
    relays: BTreeSet<u32>,
    users: BTreeSet<u32>,
}

/// A run's world.
pub struct World<'a> {
    scenario: &'a Scenario,
    strategy: Strategy,
    agent_share: f64,
    policy: Box<dyn Policy>,
    arrivals: ChaCha8Rng,
    activity: ChaCha8Rng,
    choices: ChaCha8Rng,
    censor_rng: ChaCha8Rng,
    innocent: ChaCha8Rng,
    members: Vec<Member>,
    relays: Vec<Relay>,
    /// Relays not blocked, in id order, as of the censor's move this step.
    unblocked: Vec<u32>,
    /// Members connected through each relay this step.
    load: Vec<u32>,
    network_cdf: Vec<f64>,
    /// Relays the censor knows (from its agents and what it observed).
    known: BTreeSet<u32>,
    blocked_per_network: BTreeMap<u32, u32>,
    blocked_networks: BTreeSet<u32>,
    watches: Vec<Watch>,
    /// For the insider: per known relay, members seen on it lately.
    seen_users: BTreeMap<u32, BTreeMap<u32, u32>>,
    /// Flagged connections per relay, per step of the profiling window.
    relay_flags: VecDeque<Vec<u32>>,
    /// Flagged connections per innocent server, per step of the window.
    server_flags: VecDeque<Vec<u32>>,
    /// Innocent clients of each innocent server.
    server_clients: Vec<u32>,
    server_blocked: Vec<bool>,
    collateral_servers: u32,
    collateral_addresses: u64,
    /// Ended waiting episodes.
    pub waits: Waits,
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    // Knuth's method; means here are small.
    let limit = (-mean).exp();
    let mut n = 0;
    let mut p: f64 = rng.r#gen();
    while p > limit {
        n += 1;
        p *= rng.r#gen::<f64>();
    }
    n
}

fn zipf_cdf(n: u32, exponent: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|i| f64::from(i).powf(-exponent)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

fn pick(cdf: &[f64], rng: &mut ChaCha8Rng) -> u32 {
    let x: f64 = rng.r#gen();
    cdf.partition_point(|c| *c < x).min(cdf.len() - 1) as u32
}

/// A stream seed: the run seed mixed with a stream number.
fn stream(seed: u64, n: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(n);
    rng
}

impl<'a> World<'a> {
    /// A world for one run. `world_seed` must not depend on the
    /// distributor, so all distributors meet the same world.
    pub fn new(
        scenario: &'a Scenario,
        strategy: Strategy,
        agent_share: f64,
        policy: Box<dyn Policy>,
        world_seed: u64,
    ) -> Self {
        let mut innocent = stream(world_seed, 5);
        let c = &scenario.collateral;
        let mut server_clients = vec![0u32; c.servers as usize];
        if matches!(strategy, Strategy::Profiling { .. }) && c.servers > 0 {
            let cdf = zipf_cdf(c.servers, c.zipf);
            for _ in 0..c.users {
                let visits = innocent.gen_range(3..10);
                let mut mine = BTreeSet::new();
                for _ in 0..visits {
                    mine.insert(pick(&cdf, &mut innocent));
                }
                for s in mine {
                    server_clients[s as usize] += 1;
                }
            }
        }
        World {
            scenario,
            agent_share,
            policy,
            arrivals: stream(world_seed, 1),
            activity: stream(world_seed, 2),
            choices: stream(world_seed, 3),
            censor_rng: stream(world_seed, 4),
            innocent,
            members: Vec::new(),
            relays: Vec::new(),
            unblocked: Vec::new(),
            load: Vec::new(),
            network_cdf: zipf_cdf(scenario.relays.networks, scenario.relays.network_zipf),
            known: BTreeSet::new(),
            blocked_per_network: BTreeMap::new(),
            blocked_networks: BTreeSet::new(),
            watches: Vec::new(),
            seen_users: BTreeMap::new(),
            relay_flags: VecDeque::new(),
            server_flags: VecDeque::new(),
            server_blocked: vec![false; server_clients.len()],
            server_clients,
            collateral_servers: 0,
            collateral_addresses: 0,
            waits: Waits::default(),
            strategy,
        }
    }

    /// Closes the books after the last step `t`: episodes still waiting.
    pub fn finish(&mut self, t: u32) {
        for m in &self.members {
            if let (false, Some(start)) = (m.agent, m.wait_start) {
                *self.waits.unfinished.entry(t - start).or_default() += 1;
            }
        }
    }

    /// Runs one step and measures it.
    pub fn step(&mut self, t: u32) -> StepRow {
        self.arrive(t);
        self.censor_blocks(t);
        self.unblocked = (0..self.relays.len() as u32)
            .filter(|r| !self.relays[*r as usize].blocked)
            .collect();
        self.load = vec![0; self.relays.len()];
        let connections = self.members_act(t);
        self.signals(t, &connections);
        self.observe(t, &connections);
        self.policy.end_step(t);
        self.measure(t)
    }

    fn birth(&self, t: u32) -> bool {
        t < self.scenario.birth_steps
    }

    fn arrive(&mut self, t: u32) {
        let s = self.scenario;
        let (relay_mean, user_mean) = if self.birth(t) {
            (s.relays.arrivals_birth, s.users.arrivals_birth)
        } else {
            (s.relays.arrivals, s.users.arrivals)
        };
        let mut new_relays = poisson(&mut self.arrivals, relay_mean);
        let mut new_users = poisson(&mut self.arrivals, user_mean);
        if t == 0 {
            new_relays += s.relays.initial;
            new_users += s.users.initial;
        }
        for _ in 0..new_relays {
            let id = self.relays.len() as u32;
            let network = pick(&self.network_cdf, &mut self.arrivals);
            let blocked = self.blocked_networks.contains(&network);
            self.relays.push(Relay { network, blocked });
            self.policy.add_relay(id, network, t);
        }
        let share = if self.birth(t) {
            s.censor.agents_birth.unwrap_or(self.agent_share)
        } else {
            self.agent_share
        };
        for _ in 0..new_users {
            let agent = self.arrivals.r#gen::<f64>() < share;
            let network = self.arrivals.gen_range(0..s.users.networks);
            let invited = self.arrivals.r#gen::<f64>() < s.users.invited;
            let inviter_draw: u64 = self.arrivals.r#gen();
            let invite = if invited {
                self.find_inviter(agent, inviter_draw, t)
            } else {
                None
            };
            self.members.push(Member {
                agent,
                network,
                registered: false,
                invite,
                held: Held::Relays(Vec::new()),
                preferred: None,
                learned: BTreeSet::new(),
                learned_all: 0,
                wait_start: None,
                online: false,
                connected: false,
            });
        }
    }

    /// An invitation for a newcomer from a member of its own side (honest
    /// members invite friends; agents invite agents), tried on a few
    /// members picked from `draw`.
    fn find_inviter(&mut self, agent: bool, draw: u64, t: u32) -> Option<u64> {
        let n = self.members.len() as u64;
        if n == 0 {
            return None;
        }
        for i in 0..8 {
            let m = ((draw.wrapping_add(i * 0x9E37_79B9)) % n) as usize;
            if self.members[m].agent == agent
                && self.members[m].registered
                && let Some(code) = self.policy.invite(m as u32, t)
            {
                return Some(code);
            }
        }
        None
    }

    fn block_relay(&mut self, r: u32) {
        let relay = &mut self.relays[r as usize];
        if relay.blocked {
            return;
        }
        relay.blocked = true;
        let network = relay.network;
        *self.blocked_per_network.entry(network).or_default() += 1;
    }

    /// The relays the censor knows that are not blocked yet, in id order.
    fn known_unblocked(&self) -> Vec<u32> {
        self.known
            .iter()
            .copied()
            .filter(|r| !self.relays[*r as usize].blocked)
            .collect()
    }

    fn censor_blocks(&mut self, t: u32) {
        let to_block: Vec<u32> = match self.strategy.clone() {
            Strategy::None => Vec::new(),
            Strategy::Aggressive => self.known.iter().copied().collect(),
            Strategy::Conservative { fraction } => {
                let mut known = self.known_unblocked();
                let take = (fraction * known.len() as f64) as usize;
                // A random sample: the first `take` of a partial shuffle.
                for i in 0..take {
                    let j = self.censor_rng.gen_range(i..known.len());
                    known.swap(i, j);
                }
                known.truncate(take);
                known
            }
            Strategy::Sweep { period } => {
                if t > 0 && t.is_multiple_of(period) {
                    self.known.iter().copied().collect()
                } else {
                    Vec::new()
                }
            }
            Strategy::Zigzag { rounds } => {
                let (due, keep): (Vec<Watch>, Vec<Watch>) = std::mem::take(&mut self.watches)
                    .into_iter()
                    .partition(|w| w.started + rounds <= t);
                self.watches = keep;
                due.into_iter().flat_map(|w| w.relays).collect()
            }
            Strategy::Profiling { window, threshold } => self.profile(t, window, threshold),
            Strategy::Insider => self.insider_choice(),
        };
        for r in to_block {
            self.block_relay(r);
        }
        let after = self.scenario.censor.block_networks_after;
        if after > 0 && !matches!(self.strategy, Strategy::None) {
            let networks: Vec<u32> = self
                .blocked_per_network
                .iter()
                .filter(|(n, c)| **c >= after && !self.blocked_networks.contains(n))
                .map(|(n, _)| *n)
                .collect();
            for n in networks {
                self.blocked_networks.insert(n);
                let r = &self.scenario.relays;
                self.collateral_addresses += if n < r.cloud_networks {
                    r.cloud_addresses
                } else {
                    r.network_addresses
                };
                for relay in &mut self.relays {
                    if relay.network == n {
                        relay.blocked = true;
                    }
                }
            }
        }
    }

    /// Host profiling: servers with more than `threshold` flagged
    /// connections in the last `window` steps, once the birth period ends.
    fn profile(&mut self, t: u32, window: u32, threshold: u32) -> Vec<u32> {
        if t < self.scenario.birth_steps + window || self.relay_flags.len() < window as usize {
            return Vec::new();
        }
        let mut out = Vec::new();
        for r in 0..self.relays.len() {
            let flags: u32 = self
                .relay_flags
                .iter()
                .map(|f| f.get(r).copied().unwrap_or(0))
                .sum();
            if flags > threshold && !self.relays[r].blocked {
                out.push(r as u32);
            }
        }
        for s in 0..self.server_blocked.len() {
            let flags: u32 = self.server_flags.iter().map(|f| f[s]).sum();
            if flags > threshold && !self.server_blocked[s] {
                self.server_blocked[s] = true;
                self.collateral_servers += 1;
            }
        }
        out
    }

    /// The insider's greedy choice (after the FOCI 2026 utility censor): add
    /// a known relay to the block set when the honest-looking members it
    /// sees cut off by it outweigh `utility_weight` times what its own
    /// agents lose (each agent values its working relays equally).
    fn insider_choice(&mut self) -> Vec<u32> {
        let w = self.scenario.censor.utility_weight;
        let mut agents_on: BTreeMap<u32, Vec<(u32, usize)>> = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            if !m.agent {
                continue;
            }
            if let Held::Relays(rs) = &m.held {
                let working: Vec<u32> = rs
                    .iter()
                    .copied()
                    .filter(|r| !self.relays[*r as usize].blocked)
                    .collect();
                for r in &working {
                    agents_on
                        .entry(*r)
                        .or_default()
                        .push((i as u32, working.len()));
                }
            }
        }
        // Each observed member's known relays, to tell who would be cut off.
        let mut relays_of: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (r, users) in &self.seen_users {
            if self.relays[*r as usize].blocked {
                continue;
            }
            for u in users.keys() {
                relays_of.entry(*u).or_default().insert(*r);
            }
        }
        let mut chosen: BTreeSet<u32> = BTreeSet::new();
        let mut candidates = self.known_unblocked();
        // The censor's own order of consideration.
        for i in (1..candidates.len()).rev() {
            let j = self.censor_rng.gen_range(0..=i);
            candidates.swap(i, j);
        }
        for r in candidates {
            let cut = self.seen_users.get(&r).map_or(0, |users| {
                users
                    .keys()
                    .filter(|u| !self.members[**u as usize].agent)
                    .filter(|u| relays_of[*u].iter().all(|x| *x == r || chosen.contains(x)))
                    .count()
            });
            let cost: f64 = agents_on
                .get(&r)
                .map_or(0.0, |a| a.iter().map(|(_, n)| 1.0 / *n as f64).sum());
            if cut as f64 > w * cost {
                chosen.insert(r);
            }
        }
        chosen.into_iter().collect()
    }

    fn holds_working(&self, m: &Member) -> bool {
        match &m.held {
            Held::Everything => self.relays.iter().any(|r| !r.blocked),
            Held::Relays(rs) => rs.iter().any(|r| !self.relays[*r as usize].blocked),
        }
    }

    fn fetch(&mut self, i: usize, t: u32) {
        let fetched = self.policy.fetch(i as u32, t);
        let relays_now = self.relays.len() as u32;
        let m = &mut self.members[i];
        m.held = match fetched {
            Fetch::Everything => Held::Everything,
            Fetch::Relays(rs) => Held::Relays(rs),
        };
        if m.agent && !matches!(self.strategy, Strategy::None) {
            match &m.held {
                Held::Everything => {
                    m.learned_all = relays_now;
                    self.known.extend(0..relays_now);
                }
                Held::Relays(rs) => {
                    for r in rs {
                        m.learned.insert(*r);
                        self.known.insert(*r);
                    }
                }
            }
        }
    }

    /// Whether a relay can take one more client this step.
    fn usable(&self, r: u32) -> bool {
        !self.relays[r as usize].blocked
            && (self.load[r as usize] as usize) < self.scenario.relays.capacity
    }

    /// A client's connection attempt: its preferred relay if it works, else
    /// the others in random order, reporting each one found blocked. A relay
    /// already serving `capacity` clients this step is busy: skipped, not
    /// reported.
    fn connect(&mut self, i: usize, t: u32) -> Option<u32> {
        let preferred = self.members[i].preferred;
        let holds = |p: u32| match &self.members[i].held {
            Held::Everything => true,
            Held::Relays(rs) => rs.contains(&p),
        };
        let mut chosen = preferred.filter(|p| holds(*p) && self.usable(*p));
        if chosen.is_none() {
            match &self.members[i].held {
                Held::Everything => {
                    let n = self.unblocked.len();
                    if n > 0 {
                        let start = self.choices.gen_range(0..n);
                        chosen = (0..n)
                            .map(|k| self.unblocked[(start + k) % n])
                            .find(|r| self.usable(*r));
                    }
                }
                Held::Relays(rs) => {
                    let mut order = rs.clone();
                    for k in (1..order.len()).rev() {
                        let j = self.choices.gen_range(0..=k);
                        order.swap(k, j);
                    }
                    let mut to_report = Vec::new();
                    for r in order {
                        if self.relays[r as usize].blocked {
                            to_report.push(r);
                        } else if self.usable(r) {
                            chosen = Some(r);
                            break;
                        }
                    }
                    for r in to_report {
                        self.policy.report(i as u32, r, t);
                    }
                }
            }
        }
        if let Some(r) = chosen {
            self.load[r as usize] += 1;
            self.members[i].preferred = Some(r);
        }
        self.members[i].connected = chosen.is_some();
        chosen
    }

    fn members_act(&mut self, t: u32) -> Vec<(u32, u32)> {
        let active = self.scenario.users.active;
        let reports_all = matches!(
            self.strategy,
            Strategy::Aggressive | Strategy::Conservative { .. } | Strategy::Zigzag { .. }
        );
        let mut connections = Vec::new();
        for i in 0..self.members.len() {
            let online = self.activity.r#gen::<f64>() < active;
            let m = &mut self.members[i];
            m.online = online;
            m.connected = false;
            if !m.registered {
                m.online = true;
                let invite = m.invite.take();
                m.registered = self.policy.register(i as u32, m.network, invite, t);
                if !m.registered {
                    continue;
                }
                // A new member asks for relays as it joins.
                self.fetch(i, t);
                if let Some(r) = self.connect(i, t) {
                    connections.push((i as u32, r));
                }
                continue;
            }
            let agent = m.agent && !matches!(self.strategy, Strategy::None);
            if !online && !agent {
                continue;
            }
            m.online = true;
            self.fetch(i, t);
            if agent
                && reports_all
                && let Held::Relays(rs) = &self.members[i].held
            {
                // An agent of a censor that blocks as it learns reports
                // what it blocked, to be handed replacements.
                let blocked: Vec<u32> = rs
                    .iter()
                    .copied()
                    .filter(|r| self.relays[*r as usize].blocked)
                    .collect();
                if !blocked.is_empty() {
                    for r in blocked {
                        self.policy.report(i as u32, r, t);
                    }
                    self.fetch(i, t);
                }
            }
            let mut got = self.connect(i, t);
            if got.is_none() {
                // Everything it held was blocked and reported: ask again.
                self.fetch(i, t);
                got = self.connect(i, t);
            }
            if let Some(r) = got {
                connections.push((i as u32, r));
            }
        }
        connections
    }

    /// Each relay tells its distributor how many distinct clients from the
    /// censored country it saw today.
    fn signals(&mut self, t: u32, connections: &[(u32, u32)]) {
        let mut clients = vec![0u32; self.relays.len()];
        for (_, r) in connections {
            clients[*r as usize] += 1;
        }
        for (r, n) in clients.into_iter().enumerate() {
            self.policy.relay_signal(r as u32, n, t);
        }
    }

    /// What the censor sees of today's traffic.
    fn observe(&mut self, t: u32, connections: &[(u32, u32)]) {
        match self.strategy.clone() {
            Strategy::Zigzag { .. } => {
                let fresh: BTreeSet<u32> = self
                    .known
                    .iter()
                    .copied()
                    .filter(|r| {
                        !self.relays[*r as usize].blocked
                            && !self.watches.iter().any(|w| w.relays.contains(r))
                    })
                    .collect();
                if !fresh.is_empty() {
                    self.watches.push(Watch {
                        started: t,
                        relays: fresh,
                        users: BTreeSet::new(),
                    });
                }
                for w in &mut self.watches {
                    for (m, r) in connections {
                        if w.relays.contains(r) {
                            w.users.insert(*m);
                        }
                    }
                    for (m, r) in connections {
                        if w.users.contains(m) {
                            w.relays.insert(*r);
                        }
                    }
                }
                // What zig-zag finds, it knows.
                for w in &self.watches {
                    self.known.extend(w.relays.iter().copied());
                }
            }
            Strategy::Insider => {
                // Remember who used each known relay in the last 3 steps.
                for users in self.seen_users.values_mut() {
                    users.retain(|_, seen| *seen + 3 > t);
                }
                for (m, r) in connections {
                    if self.known.contains(r) {
                        self.seen_users.entry(*r).or_default().insert(*m, t);
                    }
                }
            }
            Strategy::Profiling { window, .. } => {
                let tp = self.scenario.collateral.true_positive;
                let fp = self.scenario.collateral.false_positive;
                let mut flags = vec![0u32; self.relays.len()];
                for (_, r) in connections {
                    if self.innocent.r#gen::<f64>() < tp {
                        flags[*r as usize] += 1;
                    }
                }
                let mut server = vec![0u32; self.server_clients.len()];
                for (s, clients) in self.server_clients.iter().enumerate() {
                    for _ in 0..*clients {
                        if self.innocent.r#gen::<f64>() < fp {
                            server[s] += 1;
                        }
                    }
                }
                self.relay_flags.push_back(flags);
                self.server_flags.push_back(server);
                while self.relay_flags.len() > window as usize {
                    self.relay_flags.pop_front();
                    self.server_flags.pop_front();
                }
            }
            _ => {}
        }
    }

    /// Why honest member `i`, not connected this step, is cut off.
    fn why_cut_off(&self, i: usize, t: u32) -> &'static str {
        let m = &self.members[i];
        if !m.registered {
            return "unregistered";
        }
        // `unblocked` is this step's list: nothing is blocked after the
        // censor's move.
        let (holds_any, working) = match &m.held {
            // A public-list member offline counts only its last relay.
            Held::Everything => (true, m.online && !self.unblocked.is_empty()),
            Held::Relays(rs) => (
                !rs.is_empty(),
                rs.iter().any(|r| !self.relays[*r as usize].blocked),
            ),
        };
        if holds_any {
            return if working { "busy" } else { "blocked" };
        }
        self.policy.unserved(i as u32, t).unwrap_or("no_relay")
    }

    fn measure(&mut self, t: u32) -> StepRow {
        let mut honest = 0u32;
        let mut connected = 0u32;
        let mut refused = 0u32;
        let mut waiting_sum = 0u64;
        let mut waiting = 0u32;
        let mut agents = 0u32;
        let mut learned_sum = 0u64;
        let mut cut_off = CutOff::default();
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if m.agent {
                if m.registered {
                    agents += 1;
                    learned_sum += m.learned.len().max(m.learned_all as usize) as u64;
                }
                continue;
            }
            honest += 1;
            // Online this step: did it get through? Offline: does it hold a
            // relay that is not blocked?
            let ok = m.registered
                && if m.online {
                    m.connected
                } else {
                    match &m.held {
                        // A public-list client goes back to the relay it
                        // used; if that is blocked it must find another
                        // with room, which it may not.
                        Held::Everything => m
                            .preferred
                            .is_some_and(|p| !self.relays[p as usize].blocked),
                        Held::Relays(_) => self.holds_working(m),
                    }
                };
            if m.registered && self.policy.refuses(i as u32, t) {
                refused += 1;
            }
            if !ok {
                cut_off.count(self.why_cut_off(i, t));
            }
            let m = &mut self.members[i];
            if ok {
                connected += 1;
                if let Some(start) = m.wait_start.take() {
                    *self.waits.lengths.entry(t - start).or_default() += 1;
                }
            } else {
                let start = *m.wait_start.get_or_insert(t);
                waiting += 1;
                waiting_sum += u64::from(t - start);
            }
        }
        let blocked = self.relays.iter().filter(|r| r.blocked).count();
        let relays = self.relays.len();
        StepRow {
            step: t,
            honest,
            honest_connected: if honest == 0 {
                1.0
            } else {
                f64::from(connected) / f64::from(honest)
            },
            relays: relays as u32,
            relays_unblocked: if relays == 0 {
                1.0
            } else {
                (relays - blocked) as f64 / relays as f64
            },
            learned_per_identity: if agents == 0 {
                0.0
            } else {
                learned_sum as f64 / f64::from(agents)
            },
            relays_learned: self.known.len() as u32,
            waiting_mean: if waiting == 0 {
                0.0
            } else {
                waiting_sum as f64 / f64::from(waiting)
            },
            collateral_servers: self.collateral_servers,
            collateral_addresses: self.collateral_addresses,
            honest_refused: refused,
            cut_off,
        }
    }
}
