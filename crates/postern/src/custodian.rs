//! `postern custodian`: a custodian's own small command. `init` makes the
//! custodian's key and the record to give the operator; `review` shows a
//! bundle and whether it may be approved; `approve` releases this
//! custodian's shares of the granted accounts, sealed to the request's
//! disclosure key, and only if the grant is proven in a checkpoint cosigned
//! by the custodian's witness quorum. The checks are
//! `postern_legal::bundle::Bundle::check`; this only reads and writes files.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use postern_legal::bundle::Bundle;
use postern_legal::custodian::{CustodianKey, CustodianRecord};
use postern_legal::order::TrustStore;
use postern_tlog::checkpoint::Policy;
use postern_tlog::note::Verifier;

const KEY_FILE: &str = "custodian.key";
const RECORD_FILE: &str = "custodian.toml";

/// `postern custodian …`
#[derive(clap::Subcommand)]
pub enum CustodianCommand {
    /// Create this custodian's key (DIR/custodian.key, private) and the
    /// record to give the operator (DIR/custodian.toml, printed too).
    Init {
        /// Where the key and record go.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Who you are, as the operator and the public should read it.
        #[arg(long)]
        name: String,
        /// Your jurisdiction (ISO 3166-1 alpha-2, like CH).
        #[arg(long)]
        jurisdiction: String,
    },
    /// Show a bundle: the request, the order, the decision, the log
    /// inclusion proof, and whether it may be approved.
    Review(CheckArgs),
    /// Release your shares of the granted accounts for this request.
    Approve {
        #[command(flatten)]
        check: CheckArgs,
        /// Where to write the released shares (for the operator).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// What every check needs.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The bundle from the operator.
    bundle: PathBuf,
    /// The custodian directory (from `init`).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The transparency log's verifier key (NAME+KEYID+KEY).
    #[arg(long = "log", value_name = "VKEY")]
    log: String,
    /// A witness you trust, by its verifier key. Repeat for several.
    #[arg(long = "witness", value_name = "VKEY", required = true)]
    witnesses: Vec<String>,
    /// How many of those witnesses must have cosigned (at least 1).
    #[arg(long, default_value_t = 1)]
    quorum: usize,
    /// Trusted court certificates for a jurisdiction, to re-verify the
    /// order yourself: JURISDICTION=FILE.pem. Repeat for several.
    #[arg(long = "anchors", value_name = "J=PEM")]
    anchors: Vec<String>,
}

pub fn run(cmd: CustodianCommand) -> anyhow::Result<()> {
    match cmd {
        CustodianCommand::Init {
            dir,
            name,
            jurisdiction,
        } => init(&dir, &name, &jurisdiction),
        CustodianCommand::Review(args) => review(&args),
        CustodianCommand::Approve { check, out } => approve(&check, &out),
    }
}

fn init(dir: &Path, name: &str, jurisdiction: &str) -> anyhow::Result<()> {
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() {
        bail!(
            "{} already exists; a custodian keeps one key (move it away to start over)",
            key_path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = CustodianKey::generate();
    let record = CustodianRecord {
        name: name.to_owned(),
        jurisdiction: jurisdiction.to_owned(),
        public_key: key.public_key()?,
    };
    record.validate()?;
    write_private(
        &key_path,
        format!("{}\n", hex::encode(*key.to_bytes())).as_bytes(),
    )?;
    let text = toml::to_string(&record)?;
    std::fs::write(dir.join(RECORD_FILE), &text)
        .with_context(|| format!("cannot write {}", dir.join(RECORD_FILE).display()))?;
    println!(
        "Custodian key written to {} (keep it private and backed up).",
        key_path.display()
    );
    println!(
        "Give the operator this record (also in {}):",
        dir.join(RECORD_FILE).display()
    );
    println!();
    print!("{text}");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn load_key(dir: &Path) -> anyhow::Result<CustodianKey> {
    let path = dir.join(KEY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (run `postern custodian init` first)",
            path.display()
        )
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .with_context(|| format!("{} is not a custodian key", path.display()))?;
    Ok(CustodianKey::from_bytes(bytes))
}

struct Loaded {
    bundle: Bundle,
    key: CustodianKey,
    policy: Policy,
    trust: Option<TrustStore>,
}

fn load(args: &CheckArgs) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let bundle = Bundle::parse(&bytes)?;
    let key = load_key(&args.dir)?;
    let vkey = |v: &str, what: &str| {
        Verifier::from_vkey(v).with_context(|| format!("{what} {v:?} is not a verifier key"))
    };
    let policy = Policy {
        log: vkey(&args.log, "--log")?,
        witnesses: args
            .witnesses
            .iter()
            .map(|w| vkey(w, "--witness"))
            .collect::<anyhow::Result<_>>()?,
        quorum: args.quorum,
    };
    let trust = if args.anchors.is_empty() {
        None
    } else {
        let mut t = TrustStore::new();
        for a in &args.anchors {
            let (j, file) = a
                .split_once('=')
                .with_context(|| format!("--anchors {a:?}: expected JURISDICTION=FILE.pem"))?;
            let pem = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
            t.add_anchors(j, &pem)?;
        }
        Some(t)
    };
    Ok(Loaded {
        bundle,
        key,
        policy,
        trust,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn review(args: &CheckArgs) -> anyhow::Result<()> {
    let l = load(args)?;
    print!("{}", l.bundle.summary());
    let me = l.key.public_key()?;
    match l
        .bundle
        .check(&me, &l.policy, l.trust.as_ref().map(|t| (t, now())))
    {
        Ok(a) => {
            println!(
                "log: entry {} proven in checkpoint of size {} (cosigned by your witness quorum)",
                a.log_index, a.checkpoint_size
            );
            println!(
                "verdict: may be approved; your shares: {} of {} granted account(s)",
                a.shares.len(),
                a.accounts.len()
            );
            Ok(())
        }
        Err(e) => bail!("verdict: do not approve: {e}"),
    }
}

fn approve(args: &CheckArgs, out: &Path) -> anyhow::Result<()> {
    let l = load(args)?;
    let me = l.key.public_key()?;
    let a = l
        .bundle
        .check(&me, &l.policy, l.trust.as_ref().map(|t| (t, now())))
        .context("refused")?;
    if a.shares.len() != a.accounts.len() {
        bail!(
            "the bundle holds your shares of {} of the {} granted accounts; ask the operator for a complete bundle",
            a.shares.len(),
            a.accounts.len()
        );
    }
    let mut text = String::new();
    for (account, wrapped) in &a.shares {
        let r = l
            .key
            .release(&a.request_id, account, wrapped, &a.disclosure_key)?;
        text.push_str(&hex::encode(r.encode()));
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "Released {} share(s) for request {} (log entry {}) to {}.",
        a.shares.len(),
        hex::encode(a.request_id),
        a.log_index,
        out.display()
    );
    Ok(())
}
