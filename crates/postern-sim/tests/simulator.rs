//! Properties that would catch a rigged simulator, run on small worlds.

use postern_sim::{Report, Scenario, Strategy, output, run};

/// A small world: 10 steps of birth, 40 more.
fn small(strategies: &str, agents: &str, agents_birth: Option<f64>) -> Scenario {
    let birth = agents_birth
        .map(|a| format!("agents_birth = {a}\n"))
        .unwrap_or_default();
    Scenario::from_toml(&format!(
        r#"
name = "small"
birth_steps = 10
steps = 40
[users]
arrivals_birth = 10.0
arrivals = 5.0
[relays]
arrivals_birth = 4.0
arrivals = 1.0
capacity = 40
[censor]
{birth}agents = {agents}
strategies = {strategies}
[collateral]
servers = 100
users = 500
"#
    ))
    .unwrap()
}

fn quiet(_: u64, _: u64) {}

fn run_small(scenario: &Scenario, seed: u64) -> Report {
    run(scenario, seed, 2, &quiet)
}

#[test]
fn with_no_censor_every_member_is_connected() {
    let s = small(r#"[{ kind = "none" }]"#, "[0.1]", None);
    let report = run_small(&s, 7);
    assert_eq!(report.runs.len(), 5);
    for r in &report.runs {
        for row in &r.rows {
            assert_eq!(
                row.honest_connected, 1.0,
                "{} at step {}: {:?}",
                r.spec.distributor, row.step, row
            );
            assert_eq!(row.relays_unblocked, 1.0);
        }
        assert_eq!(r.summary.honest_refused, 0, "{}", r.spec.distributor);
    }
}

#[test]
fn a_censor_owning_every_account_leaves_nothing_it_learned_unblocked() {
    let s = small(r#"[{ kind = "aggressive" }]"#, "[1.0]", Some(1.0));
    let report = run_small(&s, 3);
    for r in &report.runs {
        let n = r.rows.len();
        let (last, before) = (&r.rows[n - 1], &r.rows[n - 2]);
        assert_eq!(last.honest, 0);
        assert!(before.relays_learned > 0, "{}", r.spec.distributor);
        // Everything learned by the step before the last is blocked.
        let unblocked = (last.relays_unblocked * f64::from(last.relays)).round() as u32;
        assert!(
            unblocked <= last.relays - before.relays_learned,
            "{}: {unblocked} unblocked of {}, {} learned",
            r.spec.distributor,
            last.relays,
            before.relays_learned
        );
    }
    // A public list hands everything out, so everything is blocked.
    let public = report
        .runs
        .iter()
        .find(|r| r.spec.distributor == "public")
        .unwrap();
    let n = public.rows.len();
    let arrived_last = public.rows[n - 1].relays - public.rows[n - 2].relays;
    let unblocked = public.rows[n - 1].relays_unblocked * f64::from(public.rows[n - 1].relays);
    assert!(unblocked.round() as u32 <= arrived_last);
}

#[test]
fn more_censor_agents_never_raise_honest_connectivity_on_average() {
    let strategies = [
        r#"[{ kind = "aggressive" }]"#,
        r#"[{ kind = "conservative", fraction = 0.5 }]"#,
        r#"[{ kind = "sweep", period = 10 }]"#,
    ];
    for strategies in strategies {
        let s = small(strategies, "[0.0, 0.1, 0.3]", Some(0.0));
        let mut mean = std::collections::BTreeMap::<(String, u64), f64>::new();
        let seeds = 6;
        for seed in 1..=seeds {
            for r in run_small(&s, seed).runs {
                let key = (r.spec.distributor.clone(), (r.spec.agents * 100.0) as u64);
                *mean.entry(key).or_default() += r.summary.honest_connected_mean / seeds as f64;
            }
        }
        // Averages over a few small worlds still carry sampling noise; a
        // rise of more than one percentage point would be a real effect.
        let noise = 0.01;
        for d in &s.distributors {
            let at = |a: u64| mean[&(d.clone(), a)];
            assert!(
                at(0) + noise >= at(10) && at(10) + noise >= at(30) && at(0) >= at(30),
                "{d} under {strategies}: {} {} {}",
                at(0),
                at(10),
                at(30)
            );
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_output() {
    let s = small(
        r#"[{ kind = "aggressive" }, { kind = "zigzag", rounds = 2 }, { kind = "profiling", window = 3, threshold = 3 }, { kind = "insider" }]"#,
        "[0.1]",
        None,
    );
    let a = run_small(&s, 11);
    let b = run(&s, 11, 1, &quiet);
    assert_eq!(output::summary_json(&a), output::summary_json(&b));
    assert_eq!(output::steps_csv(&a), output::steps_csv(&b));
    let c = run_small(&s, 12);
    assert_ne!(output::steps_csv(&a), output::steps_csv(&c));
}

#[test]
fn every_distributor_meets_the_same_world() {
    let s = small(r#"[{ kind = "aggressive" }]"#, "[0.1]", None);
    let report = run_small(&s, 5);
    let first = &report.runs[0].rows;
    for r in &report.runs[1..] {
        for (a, b) in first.iter().zip(&r.rows) {
            assert_eq!((a.honest, a.relays), (b.honest, b.relays));
        }
    }
}

#[test]
fn every_member_cut_off_is_counted_once_with_a_reason() {
    let s = small(
        r#"[{ kind = "none" }, { kind = "aggressive" }, { kind = "sweep", period = 10 }]"#,
        "[0.2]",
        Some(0.2),
    );
    let report = run_small(&s, 5);
    let mut postern_reasons = 0;
    for r in &report.runs {
        for row in &r.rows {
            // The breakdown adds up to the members not connected.
            let not_connected = f64::from(row.honest) * (1.0 - row.honest_connected);
            assert_eq!(
                f64::from(row.cut_off.total()),
                not_connected.round(),
                "{} {} at step {}: {:?}",
                r.spec.distributor,
                r.spec.strategy.name(),
                row.step,
                row.cut_off
            );
            if r.spec.distributor == "postern" {
                // Postern says why it gave a member nothing.
                assert_eq!(row.cut_off.no_relay, 0, "{:?}", row.cut_off);
                postern_reasons += row.cut_off.total()
                    - row.cut_off.busy
                    - row.cut_off.blocked
                    - row.cut_off.unregistered;
            }
        }
        let mean: f64 = r.summary.cut_off_mean.values().sum();
        let expected: f64 = r
            .rows
            .iter()
            .map(|row| f64::from(row.honest) * (1.0 - row.honest_connected))
            .sum::<f64>()
            / r.rows.len() as f64;
        assert!((mean - expected).abs() < 1e-6, "{mean} vs {expected}");
    }
    assert!(postern_reasons > 0, "the censors cut no Postern member off");
}

#[test]
fn outputs_are_written() {
    let s = small(r#"[{ kind = "aggressive" }]"#, "[0.05, 0.1]", None);
    let report = run_small(&s, 1);
    let dir = tempfile::tempdir().unwrap();
    let files = output::write_all(&report, dir.path()).unwrap();
    assert_eq!(files.len(), 2 + 2 * 2);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    let postern = &summary["distributors"]["postern"]["aggressive@10%"];
    for key in [
        "honest_connected_mean",
        "honest_connected_min",
        "relays_unblocked_mean",
        "relays_learned_per_censor_identity",
    ] {
        assert!(postern[key].is_number(), "{key}");
    }
    assert!(postern["cut_off_mean"]["no_credit"].is_number());
    let csv = std::fs::read_to_string(dir.path().join("steps.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with(",cut_off_banned,cut_off_suspended"),
        "{header}"
    );
    assert!(
        csv.lines()
            .all(|l| l.split(',').count() == header.split(',').count())
    );
    let svg = std::fs::read_to_string(dir.path().join("aggressive-10-connected.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("postern"));
    assert!(output::table(&report).contains("aggressive@10%"));
    assert!(output::cut_off_table(&report).contains("aggressive@10%"));
}

#[test]
fn the_shipped_scenarios_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let s = Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!s.censor.strategies.is_empty());
        n += 1;
    }
    assert!(n >= 3);
    let foci = Scenario::from_toml(
        &std::fs::read_to_string(format!("{dir}/foci2026-static.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(foci.total_steps(), 550);
    assert!(foci.censor.strategies.contains(&Strategy::Profiling {
        window: 3,
        threshold: 3
    }));
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    let err = Scenario::from_toml("distributors = [\"bridgedb\"]").unwrap_err();
    assert!(err.to_string().contains("bridgedb"));
    let err = Scenario::from_toml("[censor]\nagents = [1.5]").unwrap_err();
    assert!(err.to_string().contains("between 0 and 1"));
    assert!(Scenario::from_toml("stepz = 3").is_err());
}
