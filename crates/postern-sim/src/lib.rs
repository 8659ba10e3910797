//! A discrete-time censorship simulator that runs the real
//! `postern-distributor` code against simulated members, relays and
//! censors, beside baseline distributors in the same runs.
//!
//! A [`Scenario`] (TOML) describes the world: arrivals of members and
//! relays, the share of members who are censor agents, the censor's
//! strategies, and the innocent traffic host profiling also hits. [`run`]
//! plays every distributor against every strategy (and agent share) for the
//! scenario's steps, one step per simulated day, and returns per-step rows
//! and a summary per run. [`output`] writes them as CSV, SVG plots and
//! `summary.json`.
//!
//! Runs are deterministic for a seed: each run's world is seeded from the
//! seed and the strategy only (so every distributor, and every agent share,
//! meets the same arrivals), and nothing iterates a hash map. Runs execute on up to two
//! threads; results do not depend on which thread ran what.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod output;
pub mod policy;
pub mod scenario;
pub mod world;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

pub use scenario::{Scenario, ScenarioError, Strategy};
pub use world::StepRow;

/// One distributor against one strategy at one agent share.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSpec {
    /// Distributor name.
    pub distributor: String,
    /// Censor strategy.
    pub strategy: Strategy,
    /// Share of new members who are agents after the birth period.
    pub agents: f64,
}

impl RunSpec {
    /// The strategy's name, with the agent share when the scenario sweeps
    /// several (`aggressive@5%`).
    pub fn strategy_label(&self, sweep: bool) -> String {
        if sweep {
            format!("{}@{}%", self.strategy.name(), self.agents * 100.0)
        } else {
            self.strategy.name()
        }
    }
}

/// Figures for one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Mean over steps of the share of honest members with a working relay.
    pub honest_connected_mean: f64,
    /// Lowest per-step share, after the first ten steps (when a handful of
    /// members makes shares jumpy).
    pub honest_connected_min: f64,
    /// Share connected at the last step.
    pub honest_connected_final: f64,
    /// Mean over steps of the share of relays not blocked.
    pub relays_unblocked_mean: f64,
    /// Distinct relays each censor identity learned, on average, at the end.
    pub relays_learned_per_censor_identity: f64,
    /// Relays the censor learned in all.
    pub relays_learned: u32,
    /// Relays at the end.
    pub relays: u32,
    /// Share of waiting episodes (new members, members cut off) served in
    /// the step they began or the next; episodes never served count as not
    /// served.
    pub served_within_1_step: f64,
    /// Share served within two steps.
    pub served_within_2_steps: f64,
    /// Mean over steps of how long waiting members had waited.
    pub waiting_mean: f64,
    /// Innocent servers blocked.
    pub collateral_servers: u32,
    /// Innocent addresses blocked with whole networks.
    pub collateral_addresses: u64,
    /// Honest members refused (banned or suspended) at the end.
    pub honest_refused: u32,
    /// Honest members at the end.
    pub honest: u32,
    /// Mean over steps of the honest members not connected, by why (see
    /// [`world::CutOff`]); they add up to `(1 - honest_connected)` times
    /// the honest members, step by step.
    pub cut_off_mean: BTreeMap<String, f64>,
}

/// One run's results.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// What ran.
    pub spec: RunSpec,
    /// Per step.
    pub rows: Vec<StepRow>,
    /// Figures.
    pub summary: Summary,
}

/// All runs of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Steps per run.
    pub steps: u32,
    /// Whether the scenario sweeps several agent shares.
    pub sweep: bool,
    /// Runs, distributor-major in scenario order.
    pub runs: Vec<RunResult>,
}

/// Every run a scenario asks for, in output order.
pub fn specs(scenario: &Scenario) -> Vec<RunSpec> {
    let mut out = Vec::new();
    for d in &scenario.distributors {
        for s in &scenario.censor.strategies {
            for a in &scenario.censor.agents {
                out.push(RunSpec {
                    distributor: d.clone(),
                    strategy: s.clone(),
                    agents: *a,
                });
            }
        }
    }
    out
}

/// A world seed that depends on the seed and the strategy, but neither on
/// the distributor nor on the agent share: runs that differ only in those
/// meet the same arrivals, and (since each newcomer is an agent when one
/// uniform draw falls below the share) a larger share turns more of the
/// same newcomers into agents.
fn world_seed(seed: u64, spec: &RunSpec, scenario: &Scenario) -> u64 {
    let s = scenario
        .censor
        .strategies
        .iter()
        .position(|x| *x == spec.strategy)
        .unwrap_or(0) as u64;
    mix(seed, s)
}

/// A stable mix of two numbers (SplitMix64's finaliser), for seeds and
/// hash-ring positions.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs one spec.
pub fn run_one(scenario: &Scenario, spec: &RunSpec, seed: u64, on_step: &dyn Fn()) -> RunResult {
    let wseed = world_seed(seed, spec, scenario);
    let policy = policy::build(
        &spec.distributor,
        scenario.k,
        scenario.relays.capacity,
        &scenario.postern,
        wseed ^ spec.agents.to_bits() ^ 0xD157,
    )
    .expect("distributor names are validated with the scenario");
    let mut world = world::World::new(scenario, spec.strategy.clone(), spec.agents, policy, wseed);
    let mut rows = Vec::with_capacity(scenario.total_steps() as usize);
    for t in 0..scenario.total_steps() {
        rows.push(world.step(t));
        on_step();
    }
    world.finish(scenario.total_steps().saturating_sub(1));
    let summary = summarise(&rows, &world.waits);
    RunResult {
        spec: spec.clone(),
        rows,
        summary,
    }
}

fn summarise(rows: &[StepRow], waits: &world::Waits) -> Summary {
    let n = rows.len().max(1) as f64;
    let last = rows.last();
    Summary {
        honest_connected_mean: rows.iter().map(|r| r.honest_connected).sum::<f64>() / n,
        honest_connected_min: rows
            .iter()
            .skip(10.min(rows.len().saturating_sub(1)))
            .map(|r| r.honest_connected)
            .fold(1.0, f64::min),
        honest_connected_final: last.map_or(1.0, |r| r.honest_connected),
        relays_unblocked_mean: rows.iter().map(|r| r.relays_unblocked).sum::<f64>() / n,
        relays_learned_per_censor_identity: last.map_or(0.0, |r| r.learned_per_identity),
        relays_learned: last.map_or(0, |r| r.relays_learned),
        relays: last.map_or(0, |r| r.relays),
        served_within_1_step: waits.within(1),
        served_within_2_steps: waits.within(2),
        waiting_mean: rows.iter().map(|r| r.waiting_mean).sum::<f64>() / n,
        collateral_servers: last.map_or(0, |r| r.collateral_servers),
        collateral_addresses: last.map_or(0, |r| r.collateral_addresses),
        honest_refused: last.map_or(0, |r| r.honest_refused),
        honest: last.map_or(0, |r| r.honest),
        cut_off_mean: {
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            for r in rows {
                for (why, count) in r.cut_off.pairs() {
                    *sums.entry(why.to_string()).or_default() += f64::from(count);
                }
            }
            sums.values_mut().for_each(|v| *v /= n);
            sums
        },
    }
}

/// Runs every distributor against every strategy, on up to `threads`
/// threads. `progress(done, total)` is called as steps complete.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    threads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Report {
    let specs = specs(scenario);
    let total = specs.len() as u64 * u64::from(scenario.total_steps());
    let done = std::sync::atomic::AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; specs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1).min(specs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = specs.get(i) else {
                        break;
                    };
                    let on_step = || {
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(d, total);
                    };
                    let result = run_one(scenario, spec, seed, &on_step);
                    results.lock().expect("no worker panics holding it")[i] = Some(result);
                }
            });
        }
    });
    let runs = results
        .into_inner()
        .expect("no worker panicked")
        .into_iter()
        .map(|r| r.expect("every run finished"))
        .collect();
    Report {
        scenario: scenario.name.clone(),
        seed,
        steps: scenario.total_steps(),
        sweep: scenario.censor.agents.len() > 1,
        runs,
    }
}
