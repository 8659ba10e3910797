//! Runs a scenario like `postern sim SCENARIO.toml [SEED] [OUT]`, without
//! building the whole `postern` binary: `cargo run --release -p postern-sim
//! --example sim -- scenarios/foci2026-static.toml 1 sim-out/foci`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: sim SCENARIO.toml [SEED] [OUT]")?);
    let seed: u64 = args.next().map_or(Ok(1), |s| s.parse())?;
    let text = std::fs::read_to_string(&path)?;
    let scenario = postern_sim::Scenario::from_toml(&text)?;
    let out = args.next().map_or_else(
        || PathBuf::from("sim-out").join(&scenario.name),
        PathBuf::from,
    );
    let started = std::time::Instant::now();
    let report = postern_sim::run(&scenario, seed, 2, &|_, _| {});
    eprintln!(
        "{}: done in {:.1} s",
        scenario.name,
        started.elapsed().as_secs_f64()
    );
    print!("{}", postern_sim::output::table(&report));
    print!("\n{}", postern_sim::output::cut_off_table(&report));
    postern_sim::output::write_all(&report, &out)?;
    Ok(())
}
