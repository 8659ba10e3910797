//! `postern sim` end to end: a small scenario file in, table and files out.

use std::process::Command;

#[test]
fn sim_runs_a_scenario_and_writes_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("tiny.toml");
    std::fs::write(
        &scenario,
        r#"
name = "tiny"
birth_steps = 5
steps = 10
distributors = ["postern", "random-k"]
[censor]
agents = [0.1]
strategies = [{ kind = "aggressive" }]
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = |seed: &str| {
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .arg("sim")
            .arg(&scenario)
            .args(["--seed", seed, "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run("3");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let table = String::from_utf8_lossy(&first.stdout);
    assert!(
        table.contains("postern") && table.contains("random-k"),
        "{table}"
    );
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("honest_connected_mean"));
    assert!(out.join("steps.csv").exists());
    assert!(out.join("aggressive-connected.svg").exists());
    let again = run("3");
    assert_eq!(first.stdout, again.stdout);
    assert_eq!(
        summary,
        std::fs::read_to_string(out.join("summary.json")).unwrap()
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["sim", "no-such-scenario.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read scenario"));
}
