//! `postern transparency`: verify and monitor a transparency log, and
//! write and check offline proofs. The checks are postern_tlog::client's;
//! this prints verdicts for people.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use postern_tlog::client::{self, MonitorState, Verdict, VerifyError};
use postern_tlog::entry::Tally;
use postern_tlog::http::LogSource;
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
        "  New entries: {} legal requests, {} sealed, {} openings.",
        tally.requests, tally.sealed, tally.openings
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
