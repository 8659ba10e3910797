//! `postern sim`: reads a scenario, runs it with postern-sim, prints the
//! summary table and writes the outputs. The simulation itself lives in
//! postern-sim.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use clap::Args;

/// Arguments of `postern sim`.
#[derive(Args)]
pub struct SimArgs {
    /// The scenario file (see scenarios/ in the repository).
    scenario: PathBuf,
    /// Seed for every random choice; the same seed gives the same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write summary.json, steps.csv and the SVG plots.
    /// Default: sim-out/SCENARIO-NAME.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Runs in parallel (default: the number of cores, at most 2).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read scenario {}", args.scenario.display()))?;
    let scenario = postern_sim::Scenario::from_toml(&text)
        .with_context(|| format!("in {}", args.scenario.display()))?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("sim-out").join(&scenario.name));
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().min(2))
            .unwrap_or(1)
    });
    let runs = postern_sim::specs(&scenario).len();
    eprintln!(
        "{}: {runs} runs of {} steps, seed {}",
        scenario.name,
        scenario.total_steps(),
        args.seed
    );
    let started = std::time::Instant::now();
    let shown = AtomicU64::new(u64::MAX);
    let progress = |done: u64, total: u64| {
        let percent = done * 100 / total.max(1);
        if shown.swap(percent, Ordering::Relaxed) != percent {
            let bar = "#".repeat((percent / 5) as usize);
            eprint!("\r[{bar:<20}] {percent:>3}% ({done}/{total} steps)");
            let _ = std::io::stderr().flush();
        }
    };
    let report = postern_sim::run(&scenario, args.seed, threads, &progress);
    eprintln!(
        "\rdone in {:.1} s{:40}",
        started.elapsed().as_secs_f64(),
        ""
    );
    print!("{}", postern_sim::output::table(&report));
    print!("\n{}", postern_sim::output::cut_off_table(&report));
    let files = postern_sim::output::write_all(&report, &out)?;
    println!("wrote {} files to {}", files.len(), out.display());
    Ok(())
}
