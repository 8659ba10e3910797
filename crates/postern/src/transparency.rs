//! `postern transparency`: verify and monitor a transparency log, write
//! and check offline proofs, and build and check the semiannual
//! lawful-request reports. The checks are postern_tlog::client's and the
//! reports postern_legal::report's; this prints verdicts for people.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use postern_legal::report::{Period, Report};
use postern_tlog::client::{self, MonitorState, Verdict, VerifyError};
use postern_tlog::entry::Tally;
use postern_tlog::http::LogSource;
use postern_tlog::note::{Algorithm, Note, Signer};
use postern_tlog::{Policy, ProofBundle, Verifier};

/// Whose signatures a checkpoint needs.
#[derive(clap::Args)]
pub struct KeyArgs {
    /// The log's verifier key (its name is the log's origin).
    #[arg(long, value_name = "VKEY")]
    log_key: String,
    /// A witness's cosigning verifier key. Repeat for several.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// How many witnesses must have cosigned. Default: all given.
    #[arg(long, value_name = "N")]
    quorum: Option<usize>,
}

impl KeyArgs {
    fn policy(&self) -> anyhow::Result<Policy> {
        let log = Verifier::from_vkey(&self.log_key)
            .with_context(|| format!("--log-key {:?} is not a verifier key", self.log_key))?;
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| {
                Verifier::from_vkey(w)
                    .with_context(|| format!("--witness {w:?} is not a verifier key"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let quorum = self.quorum.unwrap_or(witnesses.len());
        anyhow::ensure!(
            quorum <= witnesses.len(),
            "--quorum {quorum} is more than the {} witness keys given",
            witnesses.len()
        );
        Ok(Policy {
            log,
            witnesses,
            quorum,
        })
    }
}

/// Which log, which keys, which state file.
#[derive(clap::Args)]
pub struct LogArgs {
    /// The log's URL prefix (serving checkpoint and tile/…), or a
    /// directory holding a copy of the log.
    #[arg(long, value_name = "URL")]
    log: String,
    #[command(flatten)]
    keys: KeyArgs,
    /// The last verified checkpoint and tree edge, read before and
    /// written after each successful check, so the next run proves the log
    /// only grew. Without it, each run stands alone.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

impl LogArgs {
    fn source(&self) -> anyhow::Result<LogSource> {
        LogSource::new(&self.log).map_err(|e| anyhow::anyhow!("cannot set up an HTTP client: {e}"))
    }
}

#[derive(clap::Subcommand)]
pub enum TransparencyCommand {
    /// Check the log once: signatures, witness quorum, the root recomputed
    /// from every new entry, and consistency with the last run.
    Verify(LogArgs),
    /// Check the log again and again; stop with an alarm on a fork.
    Monitor {
        #[command(flatten)]
        log: LogArgs,
        /// Seconds between checks.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        interval: u64,
    },
    /// Write an offline proof (c2sp.org/tlog-proof@v1) that an entry is in
    /// the log's current checkpoint.
    Prove {
        #[command(flatten)]
        log: LogArgs,
        /// The entry's index.
        #[arg(long)]
        index: u64,
        /// A file holding the entry's bytes.
        #[arg(long, value_name = "FILE")]
        entry: PathBuf,
        /// Where to write the proof (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Build the semiannual report from the log alone: JSON, an HTML page
    /// with SVG charts, and a signed note naming the checkpoint it was
    /// computed from.
    Report {
        #[command(flatten)]
        log: LogArgs,
        /// The half-year, like 2026-H2.
        #[arg(long)]
        period: String,
        /// The operator's report-signing key (a signed-note key; created
        /// on first use, its verifier key printed).
        #[arg(long, value_name = "FILE")]
        signing_key: PathBuf,
        /// The directory for report-PERIOD.json, .html and .note.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Recompute a report from the log (up to the size it names) and say
    /// whether it matches, field by field.
    VerifyReport {
        /// The report (report-PERIOD.json).
        report: PathBuf,
        #[command(flatten)]
        log: LogArgs,
        /// Also check the signed note (report-PERIOD.note) against the
        /// operator's report key (VKEY).
        #[arg(long, value_name = "FILE", requires = "report_key")]
        note: Option<PathBuf>,
        /// The operator's report verifier key.
        #[arg(long, value_name = "VKEY")]
        report_key: Option<String>,
    },
    /// Check an offline proof against the log's and witnesses' keys,
    /// without contacting the log.
    CheckProof {
        /// The proof file.
        proof: PathBuf,
        /// A file holding the entry's bytes.
        #[arg(long, value_name = "FILE")]
        entry: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

pub async fn run(cmd: TransparencyCommand) -> anyhow::Result<()> {
    match cmd {
        TransparencyCommand::Verify(args) => {
            let (verdict, tally) = check(&args).await?;
            print_verdict(&args, &verdict, &tally);
            audit(&tally)
        }
        TransparencyCommand::Monitor { log, interval } => monitor(&log, interval).await,
        TransparencyCommand::Prove {
            log,
            index,
            entry,
            out,
        } => {
            let data = read(&entry)?;
            let bundle =
                client::prove_inclusion(&log.source()?, &log.keys.policy()?, index, &data, None)
                    .await
                    .context("cannot prove the entry's inclusion")?;
            match out {
                Some(path) => std::fs::write(&path, bundle.to_string())
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{bundle}"),
            }
            Ok(())
        }
        TransparencyCommand::Report {
            log,
            period,
            signing_key,
            out,
        } => report(&log, &period, &signing_key, &out).await,
        TransparencyCommand::VerifyReport {
            report,
            log,
            note,
            report_key,
        } => verify_report(&report, &log, note.as_deref(), report_key.as_deref()).await,
        TransparencyCommand::CheckProof { proof, entry, keys } => {
            let policy = keys.policy()?;
            let text = std::fs::read_to_string(&proof)
                .with_context(|| format!("cannot read {}", proof.display()))?;
            let bundle =
                ProofBundle::parse(&text).with_context(|| format!("{}", proof.display()))?;
            let opened = bundle
                .verify(&read(&entry)?, &policy)
                .context("the proof does not hold")?;
            println!(
                "OK: entry {} is in {} at size {}, cosigned by {} of the {} required witnesses.",
                bundle.index,
                opened.checkpoint.origin,
                opened.checkpoint.size,
                opened.cosignatures.len(),
                policy.quorum
            );
            Ok(())
        }
    }
}

/// Verifies the log and returns its checkpoint and every entry.
async fn entries(args: &LogArgs) -> anyhow::Result<(Verdict, Vec<Vec<u8>>)> {
    let policy = args.keys.policy()?;
    let mut all = Vec::new();
    let verdict = client::verify_with(&args.source()?, &policy, None, |_, e| all.push(e.to_vec()))
        .await
        .context("the log does not verify; no report can be computed from it")?;
    Ok((verdict, all))
}

fn period(text: &str) -> anyhow::Result<Period> {
    text.parse::<Period>()
        .map_err(|e| anyhow::anyhow!("--period: {e}"))
}

/// The signed note's text: the report's facts and the checkpoint they
/// were computed from.
fn note_text(report: &Report, origin: &str, root: &str) -> String {
    let mut text: String = report
        .to_text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("checkpoint {origin} {} {root}\n", report.log_size));
    text
}

async fn report(
    args: &LogArgs,
    period_text: &str,
    key_path: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let period = period(period_text)?;
    let (verdict, all) = entries(args).await?;
    let report = Report::compute(period, all.iter().map(Vec::as_slice));
    let cp = &verdict.checkpoint;
    let signer = Signer::load_or_generate(
        key_path,
        &format!("{}/reports", cp.origin),
        Algorithm::Ed25519,
    )
    .with_context(|| {
        format!(
            "cannot load or create the report key {}",
            key_path.display()
        )
    })?;
    let mut note = Note::new(&note_text(&report, &cp.origin, &cp.root.to_string()))
        .context("the report does not make a signed note")?;
    note.sign(&signer, now());
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stem = out.join(format!("report-{period}"));
    for (ext, text) in [
        ("json", report.to_json()),
        ("html", report.to_html()),
        ("note", note.to_string()),
    ] {
        let path = stem.with_extension(ext);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{}", report.to_text());
    println!(
        "Computed from {} at size {} (root {}).",
        cp.origin, cp.size, cp.root
    );
    println!(
        "Wrote {}.json, .html and .note; the note is signed by {}",
        stem.display(),
        signer.verifier().vkey()
    );
    Ok(())
}

async fn verify_report(
    path: &Path,
    args: &LogArgs,
    note: Option<&Path>,
    report_key: Option<&str>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let claimed =
        Report::from_json(&text).with_context(|| format!("{} is not a report", path.display()))?;
    let period = period(&claimed.period)?;
    let (verdict, all) = entries(args).await?;
    let size = usize::try_from(claimed.log_size).unwrap_or(usize::MAX);
    anyhow::ensure!(
        size <= all.len(),
        "the report claims {} entries, but the log has only {}",
        claimed.log_size,
        all.len()
    );
    let recomputed = Report::compute(period, all[..size].iter().map(Vec::as_slice));
    let differences = recomputed.differences(&claimed);
    if differences.is_empty() {
        if let (Some(note_path), Some(vkey)) = (note, report_key) {
            let verifier = Verifier::from_vkey(vkey)
                .with_context(|| format!("--report-key {vkey:?} is not a verifier key"))?;
            let bytes = read(&note_path.to_path_buf())?;
            let signed = Note::parse(&bytes).with_context(|| format!("{}", note_path.display()))?;
            signed
                .verify(&[verifier])
                .context("the report's note is not signed by that key")?;
            let expected_prefix = note_text(&claimed, &verdict.checkpoint.origin, "");
            let facts = expected_prefix
                .rsplit_once("checkpoint ")
                .map_or(expected_prefix.as_str(), |(f, _)| f);
            anyhow::ensure!(
                signed.text().starts_with(facts),
                "the signed note says something other than {}",
                path.display()
            );
            println!("The signed note matches the report and verifies.");
        }
        println!(
            "MATCH: the {} report is what the log's first {} entries give ({} at size {} now).",
            claimed.period, claimed.log_size, verdict.checkpoint.origin, verdict.checkpoint.size
        );
        Ok(())
    } else {
        for d in &differences {
            println!("  {d}");
        }
        anyhow::bail!(
            "MISMATCH: the report differs from the log in {} field(s)",
            differences.len()
        )
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// One check: load the state, verify, save the new state.
async fn check(args: &LogArgs) -> anyhow::Result<(Verdict, Tally)> {
    let policy = args.keys.policy()?;
    let state = match &args.state {
        Some(path) => MonitorState::load(path)?,
        None => None,
    };
    let mut tally = Tally::default();
    let verdict = client::verify_with(&args.source()?, &policy, state.as_ref(), |i, e| {
        tally.add(i, e)
    })
    .await?;
    if let Some(path) = &args.state {
        verdict
            .state
            .save(path)
            .with_context(|| format!("cannot save the state to {}", path.display()))?;
    }
    Ok((verdict, tally))
}

/// The log is consistent, but an opening that contradicts what was
/// sealed means the operator misreported a request: that is a failure.
fn audit(tally: &Tally) -> anyhow::Result<()> {
    match tally.bad_openings.as_slice() {
        [] => Ok(()),
        bad => anyhow::bail!(
            "entries {bad:?} claim to open sealed requests but do not match what was sealed"
        ),
    }
}

fn print_verdict(args: &LogArgs, v: &Verdict, tally: &Tally) {
    let cp = &v.checkpoint;
    println!("OK: {} is consistent.", cp.origin);
    println!("  size {}, root {}", cp.size, cp.root);
    println!(
        "  {} new entries hashed; together with the earlier ones they give the signed root.",
        v.new_entries
    );
    println!(
        "  New entries: {} legal requests, {} sealed, {} openings, {} disclosures.",
        tally.requests, tally.sealed, tally.openings, tally.disclosures
    );
    for (index, e) in tally.invalid.iter().take(5) {
        println!("  WARNING: entry {index} is not a valid record: {e}");
    }
    if tally.invalid.len() > 5 {
        println!(
            "  WARNING: … and {} more invalid entries",
            tally.invalid.len() - 5
        );
    }
    match (v.previous_size, &args.state) {
        (Some(prev), Some(path)) => println!(
            "  It extends the checkpoint of size {prev} seen before (state: {}).",
            path.display()
        ),
        (None, Some(path)) => println!("  First check; state saved to {}.", path.display()),
        _ => println!("  No --state file: consistency with earlier checks was not verified."),
    }
    let keys = &args.keys;
    if !keys.witnesses.is_empty() {
        println!(
            "  Cosigned by {} witness(es) ({} required): {}",
            v.cosigners.len(),
            keys.quorum.unwrap_or(keys.witnesses.len()),
            v.cosigners.join(", ")
        );
    }
}

async fn monitor(args: &LogArgs, interval: u64) -> anyhow::Result<()> {
    loop {
        match check(args).await {
            Ok((v, tally)) => {
                print_verdict(args, &v, &tally);
                audit(&tally)?;
            }
            Err(e) => match e.downcast_ref::<VerifyError>() {
                // Network trouble passes; anything the log signed that
                // does not add up stops the monitor with the evidence.
                Some(VerifyError::Fetch(f)) => eprintln!("warning: {f}; retrying in {interval} s"),
                _ => return Err(e),
            },
        }
        tokio::time::sleep(Duration::from_secs(interval)).await;
    }
}
