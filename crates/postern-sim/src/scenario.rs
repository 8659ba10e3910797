//! Scenario files: the world a simulation runs in, as TOML. Every field has
//! the ProxySimulator default of Fares, Fulsundar and Hopper (FOCI 2026),
//! so a scenario only states where it differs.

use serde::{Deserialize, Serialize};

/// A scenario, as read from a `.toml` file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in output file names.
    pub name: String,
    /// What the scenario models and where its numbers come from.
    pub description: String,
    /// Steps (days) in the birth period, when users and relays arrive fast.
    pub birth_steps: u32,
    /// Steps after the birth period.
    pub steps: u32,
    /// Members.
    pub users: Users,
    /// Relays.
    pub relays: Relays,
    /// The censor.
    pub censor: Censor,
    /// Innocent servers and users, for counting collateral damage.
    pub collateral: Collateral,
    /// Distributors to compare, by name: `postern`, `public`, `random-k`,
    /// `hashring`, `rbridge`.
    pub distributors: Vec<String>,
    /// Relays per member for `random-k` and `hashring`.
    pub k: usize,
    /// Policy overrides for `postern` (a `postern_distributor::Config`).
    pub postern: postern_distributor::Config,
}

/// Member arrivals and behaviour.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Users {
    /// Members present at step 0.
    pub initial: u32,
    /// Mean new members per step during the birth period (Poisson).
    pub arrivals_birth: f64,
    /// Mean new members per step afterwards (Poisson).
    pub arrivals: f64,
    /// Chance that a member is online in a step.
    pub active: f64,
    /// Share of new honest members who join by an invitation from an
    /// honest member, when a distributor supports invitations.
    pub invited: f64,
    /// Networks (/16s) members connect from.
    pub networks: u32,
}

/// Relay arrivals and hosting.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Relays {
    /// Relays present at step 0.
    pub initial: u32,
    /// Mean new relays per step during the birth period (Poisson).
    pub arrivals_birth: f64,
    /// Mean new relays per step afterwards (Poisson).
    pub arrivals: f64,
    /// Most members per relay (the proxy capacity).
    pub capacity: usize,
    /// Hosting networks relays are spread over, by Zipf popularity.
    pub networks: u32,
    /// Zipf exponent of hosting networks' popularity.
    pub network_zipf: f64,
    /// How many of the most popular hosting networks are cloud networks.
    pub cloud_networks: u32,
    /// Addresses in a cloud network (blocking one blocks them all).
    pub cloud_addresses: u64,
    /// Addresses in any other hosting network (a /16).
    pub network_addresses: u64,
}

/// The censor's resources.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Censor {
    /// Share of new members who are censor agents during the birth period;
    /// when absent, the same as `agents`.
    pub agents_birth: Option<f64>,
    /// Share of new members who are censor agents afterwards; one run per
    /// value, so a scenario can sweep it.
    pub agents: Vec<f64>,
    /// Weight of its agents' own access in an insider's utility.
    pub utility_weight: f64,
    /// Block a whole hosting network once this many of its relays are
    /// blocked (0: never).
    pub block_networks_after: u32,
    /// Strategies to run.
    pub strategies: Vec<Strategy>,
}

/// How a censor plays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Strategy {
    /// No censor: agents are ordinary members and nothing is blocked.
    None,
    /// Blocks every relay its agents learn, the next step.
    Aggressive,
    /// The FOCI 2026 ProxySimulator's conservative censor: each step it
    /// blocks a random `fraction` of the relays its agents know that are
    /// not blocked yet, and leaves the rest working, for now.
    Conservative {
        /// Share of the known, unblocked relays blocked each step (the
        /// ProxySimulator's `CONSERVATIVE_FRACTION`, 0.5).
        fraction: f64,
    },
    /// Lets its agents behave and earn trust, then blocks everything they
    /// learned at once, every `period` steps (the conservative censor of
    /// Salmon, PETS 2016, made periodic).
    Sweep {
        /// Steps between mass blocks.
        period: u32,
    },
    /// Watches the relays its agents learn and the members that connect to
    /// them, follows those members to their other relays, and blocks all of
    /// them after `rounds` steps.
    Zigzag {
        /// Steps of watching before blocking.
        rounds: u32,
    },
    /// Needs no agents: flags connections that look like relay traffic and
    /// blocks any server with more than `threshold` flagged connections in
    /// `window` steps, innocent or not.
    Profiling {
        /// Steps counted.
        window: u32,
        /// Flagged connections that get a server blocked.
        threshold: u32,
    },
    /// Plays to maximise its utility: blocks a set of learned relays only
    /// when the members it sees cut off outweigh what its agents lose.
    Insider,
}

impl Strategy {
    /// The name used in outputs.
    pub fn name(&self) -> String {
        match self {
            Strategy::None => "none".into(),
            Strategy::Aggressive => "aggressive".into(),
            Strategy::Conservative { .. } => "conservative".into(),
            Strategy::Sweep { .. } => "sweep".into(),
            Strategy::Zigzag { .. } => "zigzag".into(),
            Strategy::Profiling { window, threshold } => format!("profiling-{window}-{threshold}"),
            Strategy::Insider => "insider".into(),
        }
    }
}

/// Innocent servers and users: host profiling flags some of their
/// connections too, and what it blocks among them is collateral damage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Collateral {
    /// Innocent servers.
    pub servers: u32,
    /// Innocent users.
    pub users: u32,
    /// Zipf exponent of the servers' popularity.
    pub zipf: f64,
    /// Chance a connection to an innocent server is flagged.
    pub false_positive: f64,
    /// Chance a connection to a relay is flagged.
    pub true_positive: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "scenario".into(),
            description: String::new(),
            birth_steps: 50,
            steps: 500,
            users: Users::default(),
            relays: Relays::default(),
            censor: Censor::default(),
            collateral: Collateral::default(),
            distributors: ["postern", "public", "random-k", "hashring", "rbridge"]
                .map(String::from)
                .to_vec(),
            k: 3,
            postern: postern_distributor::Config::default(),
        }
    }
}

impl Default for Users {
    fn default() -> Self {
        Users {
            initial: 0,
            arrivals_birth: 20.0,
            arrivals: 10.0,
            active: 0.75,
            invited: 0.0,
            networks: 256,
        }
    }
}

impl Default for Relays {
    fn default() -> Self {
        Relays {
            initial: 0,
            arrivals_birth: 5.0,
            arrivals: 0.75,
            capacity: 40,
            networks: 50,
            network_zipf: 1.1,
            cloud_networks: 0,
            cloud_addresses: 1 << 22,
            network_addresses: 1 << 16,
        }
    }
}

impl Default for Censor {
    fn default() -> Self {
        Censor {
            agents_birth: None,
            agents: vec![0.10],
            utility_weight: 0.5,
            block_networks_after: 0,
            strategies: vec![
                Strategy::Aggressive,
                Strategy::Conservative { fraction: 0.5 },
                Strategy::Sweep { period: 30 },
                Strategy::Zigzag { rounds: 3 },
                Strategy::Profiling {
                    window: 5,
                    threshold: 10,
                },
                Strategy::Insider,
            ],
        }
    }
}

impl Default for Collateral {
    fn default() -> Self {
        Collateral {
            servers: 1_000,
            users: 10_000,
            zipf: 1.1,
            false_positive: 0.005,
            true_positive: 0.99,
        }
    }
}

/// A scenario that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML for a scenario.
    #[error("not a valid scenario: {0}")]
    Toml(#[from] toml::de::Error),
    /// A distributor name the simulator does not know.
    #[error("unknown distributor {0:?} (known: postern, public, random-k, hashring, rbridge)")]
    UnknownDistributor(String),
    /// A number out of range.
    #[error("{0}")]
    Invalid(String),
    /// The `postern` policy is unusable.
    #[error("postern policy: {0}")]
    Policy(#[from] postern_distributor::ConfigError),
}

/// Distributor names the simulator knows.
pub const DISTRIBUTORS: [&str; 5] = ["postern", "public", "random-k", "hashring", "rbridge"];

impl Scenario {
    /// Parses and checks a scenario.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        for d in &self.distributors {
            if !DISTRIBUTORS.contains(&d.as_str()) {
                return Err(ScenarioError::UnknownDistributor(d.clone()));
            }
        }
        let ratios = [
            ("users.active", self.users.active),
            ("users.invited", self.users.invited),
            (
                "censor.agents_birth",
                self.censor.agents_birth.unwrap_or(0.0),
            ),
            ("collateral.false_positive", self.collateral.false_positive),
            ("collateral.true_positive", self.collateral.true_positive),
        ];
        for (name, v) in ratios
            .into_iter()
            .chain(self.censor.agents.iter().map(|a| ("censor.agents", *a)))
        {
            if !(0.0..=1.0).contains(&v) {
                return Err(ScenarioError::Invalid(format!(
                    "{name} must be between 0 and 1"
                )));
            }
        }
        if self.relays.capacity == 0 || self.k == 0 {
            return Err(ScenarioError::Invalid(
                "relays.capacity and k must be at least 1".into(),
            ));
        }
        if self.users.networks == 0 || self.relays.networks == 0 {
            return Err(ScenarioError::Invalid("networks must be at least 1".into()));
        }
        if self.censor.agents.is_empty() || self.censor.strategies.is_empty() {
            return Err(ScenarioError::Invalid(
                "censor.agents and censor.strategies must not be empty".into(),
            ));
        }
        for s in &self.censor.strategies {
            let bad = match s {
                Strategy::Conservative { fraction } => !(*fraction > 0.0 && *fraction <= 1.0),
                Strategy::Sweep { period } => *period == 0,
                Strategy::Zigzag { rounds } => *rounds == 0,
                Strategy::Profiling { window, .. } => *window == 0,
                _ => false,
            };
            if bad {
                return Err(ScenarioError::Invalid(format!(
                    "strategy {}: its period, rounds or window must be at least 1, its fraction above 0 and at most 1",
                    s.name()
                )));
            }
        }
        self.postern.validate()?;
        Ok(())
    }

    /// Total steps.
    pub fn total_steps(&self) -> u32 {
        self.birth_steps + self.steps
    }
}
