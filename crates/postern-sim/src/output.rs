//! What a simulation leaves behind: `steps.csv` (one row per run and step),
//! SVG plots per strategy, `summary.json`, and a table for the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::{Report, RunResult, Summary};

/// Writing the outputs failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("cannot draw {path}: {message}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, OutputError> {
    std::fs::write(&path, text).map_err(|source| OutputError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// `summary.json`: per distributor, per strategy, the run's [`Summary`].
#[derive(Serialize)]
struct SummaryFile<'a> {
    scenario: &'a str,
    seed: u64,
    steps: u32,
    distributors: BTreeMap<&'a str, BTreeMap<String, &'a Summary>>,
}

/// The `summary.json` text.
pub fn summary_json(report: &Report) -> String {
    let mut distributors: BTreeMap<&str, BTreeMap<String, &Summary>> = BTreeMap::new();
    for r in &report.runs {
        distributors
            .entry(r.spec.distributor.as_str())
            .or_default()
            .insert(r.spec.strategy_label(report.sweep), &r.summary);
    }
    let file = SummaryFile {
        scenario: &report.scenario,
        seed: report.seed,
        steps: report.steps,
        distributors,
    };
    serde_json::to_string_pretty(&file).expect("plain data serialises") + "\n"
}

/// The `steps.csv` text.
pub fn steps_csv(report: &Report) -> String {
    let mut out = String::from(
        "distributor,strategy,agents,step,honest,honest_connected,relays,relays_unblocked,\
         learned_per_identity,relays_learned,waiting_mean,collateral_servers,\
         collateral_addresses,honest_refused",
    );
    for (why, _) in crate::world::CutOff::default().pairs() {
        let _ = write!(out, ",cut_off_{why}");
    }
    out.push('\n');
    for r in &report.runs {
        for row in &r.rows {
            let _ = write!(
                out,
                "{},{},{},{},{},{:.6},{},{:.6},{:.4},{},{:.4},{},{},{}",
                r.spec.distributor,
                r.spec.strategy.name(),
                r.spec.agents,
                row.step,
                row.honest,
                row.honest_connected,
                row.relays,
                row.relays_unblocked,
                row.learned_per_identity,
                row.relays_learned,
                row.waiting_mean,
                row.collateral_servers,
                row.collateral_addresses,
                row.honest_refused
            );
            for (_, count) in row.cut_off.pairs() {
                let _ = write!(out, ",{count}");
            }
            out.push('\n');
        }
    }
    out
}

/// A table of the summaries, one line per run.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<22} {:>9} {:>9} {:>10} {:>9} {:>8} {:>8} {:>10}",
        "distrib.",
        "strategy",
        "conn.mean",
        "conn.min",
        "unblocked",
        "learned/id",
        "served≤1",
        "refused",
        "collateral"
    );
    for r in &report.runs {
        let s = &r.summary;
        let collateral = if s.collateral_addresses > 0 {
            format!("{} addr", s.collateral_addresses)
        } else {
            format!("{} srv", s.collateral_servers)
        };
        let _ = writeln!(
            out,
            "{:<10} {:<22} {:>8.1}% {:>8.1}% {:>9.1}% {:>10.2} {:>7.1}% {:>8} {:>10}",
            r.spec.distributor,
            r.spec.strategy_label(report.sweep),
            s.honest_connected_mean * 100.0,
            s.honest_connected_min * 100.0,
            s.relays_unblocked_mean * 100.0,
            s.relays_learned_per_censor_identity,
            s.served_within_1_step * 100.0,
            s.honest_refused,
            collateral
        );
    }
    out
}

/// Why honest members were cut off: per run, the mean number not
/// connected in a step and its three largest reasons (see
/// [`crate::world::CutOff`]; all of them are in `summary.json`).
pub fn cut_off_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<22} {:>9}  main reasons (mean members a step)",
        "distrib.", "strategy", "cut off"
    );
    for r in &report.runs {
        let mut reasons: Vec<(&String, &f64)> = r
            .summary
            .cut_off_mean
            .iter()
            .filter(|(_, n)| **n >= 0.05)
            .collect();
        reasons.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        let total: f64 = r.summary.cut_off_mean.values().sum();
        let main: Vec<String> = reasons
            .iter()
            .take(3)
            .map(|(why, n)| format!("{why} {n:.1}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<10} {:<22} {:>9.1}  {}",
            r.spec.distributor,
            r.spec.strategy_label(report.sweep),
            total,
            main.join(", ")
        );
    }
    out
}

/// One plot: a line per distributor of `metric` over steps, for the runs
/// of one strategy label.
fn plot(
    path: &Path,
    title: &str,
    y_label: &str,
    steps: u32,
    runs: &[&RunResult],
    metric: fn(&crate::StepRow) -> f64,
) -> Result<(), OutputError> {
    let fail = |e: &dyn std::fmt::Display| OutputError::Plot {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0u32..steps.max(1), 0f64..1.0)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("step (day)")
        .y_desc(y_label)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, r) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.rows.iter().map(|row| (row.step, metric(row))),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(r.spec.distributor.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Writes `summary.json`, `steps.csv` and two SVG plots per strategy label
/// into `dir` (created if missing). Returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    std::fs::create_dir_all(dir).map_err(|source| OutputError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut files = vec![
        write(dir.join("summary.json"), &summary_json(report))?,
        write(dir.join("steps.csv"), &steps_csv(report))?,
    ];
    let mut by_label: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
    for r in &report.runs {
        by_label
            .entry(r.spec.strategy_label(report.sweep))
            .or_default()
            .push(r);
    }
    for (label, runs) in by_label {
        let stem = label.replace(['@', '%'], "-");
        let stem = stem.trim_end_matches('-');
        let connected = dir.join(format!("{stem}-connected.svg"));
        plot(
            &connected,
            &format!("{}: honest members connected ({label})", report.scenario),
            "share of honest members",
            report.steps,
            &runs,
            |r| r.honest_connected,
        )?;
        let unblocked = dir.join(format!("{stem}-unblocked.svg"));
        plot(
            &unblocked,
            &format!("{}: relays unblocked ({label})", report.scenario),
            "share of relays",
            report.steps,
            &runs,
            |r| r.relays_unblocked,
        )?;
        files.push(connected);
        files.push(unblocked);
    }
    Ok(files)
}
