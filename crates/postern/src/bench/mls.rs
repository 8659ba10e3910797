//! `postern bench mls`: the cost of MLS operations at group sizes from 2 to
//! thousands, on this machine, with the client's real storage (SQLite
//! through openmls_sqlite_storage, here in memory) and crypto provider.
//!
//! For each size N a creator makes a group of N devices in one commit.
//! Then, timed: a receiver joins from its Welcome with the ratchet tree
//! handed over out of band (RFC 9420 §12.4.3.1), as Postern's clients do;
//! an application message is encrypted by the creator and decrypted by the
//! receiver; the creator commits adding one member, and removing it again
//! (each: build, stage and merge the commit), and the receiver processes
//! each of those commits. No network: this measures MLS and its storage.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use openmls::prelude::{
    KeyPackage, LeafNodeIndex, MlsGroup, MlsMessageBodyIn, ProcessedMessageContent,
};
use postern_client::mls::{self, DeviceSigner, Directory, Engine, Provider};
use postern_proto::content::GroupMeta;
use postern_proto::ids::{AccountId, DeviceAddr};
use rusqlite::Connection;

/// Options of `postern bench mls`.
#[derive(clap::Args)]
pub struct MlsArgs {
    /// Group sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,100,1000,5000")]
    sizes: Vec<usize>,
    /// Application messages timed per size (the median is reported).
    #[arg(long, default_value_t = 50)]
    messages: usize,
    /// Add/remove rounds timed per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Print one JSON object per size instead of a table.
    #[arg(long)]
    json: bool,
}

/// A device with its own MLS storage.
struct Device {
    db: Connection,
    signer: DeviceSigner,
    addr: DeviceAddr,
}

impl Device {
    fn new() -> anyhow::Result<Device> {
        let mut db = Connection::open_in_memory()?;
        mls::migrate(&mut db)?;
        Ok(Device {
            db,
            signer: DeviceSigner(SigningKey::generate(&mut rand::rngs::OsRng)),
            addr: DeviceAddr {
                account: AccountId::random(),
                device: 1,
            },
        })
    }

    fn engine(&self) -> Engine<'_> {
        Engine {
            provider: Provider::new(&self.db),
            signer: &self.signer,
            me: self.addr,
            suite: mls::DEFAULT_CIPHERSUITE,
        }
    }

    /// A key package of this device, checked as a client checks claimed ones.
    fn key_package(&self, checker: &Engine<'_>) -> anyhow::Result<KeyPackage> {
        let bytes = self.engine().key_packages(1, false)?.remove(0);
        let mut dir = Directory::new();
        dir.insert(
            self.addr.account,
            [(1, self.signer.0.verifying_key().to_bytes())].into(),
        );
        Ok(checker.validate_key_package(&bytes, self.addr, &dir)?)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row {
    size: usize,
    setup: Duration,
    join: Duration,
    message: Duration,
    /// In the group as created: every parent node blank.
    fresh: Changes,
    /// After one self-update in each subtree of the creator's copath.
    warm: Changes,
    warmers: usize,
    tree_bytes: usize,
}

fn process_commit(engine: &Engine<'_>, group: &mut MlsGroup, commit: &[u8]) -> anyhow::Result<()> {
    let msg = mls::parse(commit)?
        .try_into_protocol_message()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    match engine.process(group, msg)?.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => Ok(engine.merge(group, *staged)?),
        _ => bail!("expected a commit"),
    }
}

fn measure(size: usize, args: &MlsArgs) -> anyhow::Result<Row> {
    let creator = Device::new()?;
    let receiver = Device::new()?;
    let ce = creator.engine();
    let re = receiver.engine();

    // The other N-2 members only need key packages; one store keeps their
    // private halves.
    let started = Instant::now();
    let others = Device::new()?;
    let mut adds = vec![receiver.key_package(&ce)?];
    // Real members at leaves 2, 4, 8, …: one in each subtree on the
    // creator's copath, for the warm measurement (see below).
    let mut warmers: Vec<Device> = Vec::new();
    for i in 0..size.saturating_sub(2) {
        let leaf = i + 2;
        if leaf.is_power_of_two() {
            let warmer = Device::new()?;
            adds.push(warmer.key_package(&ce)?);
            warmers.push(warmer);
            continue;
        }
        let signer = DeviceSigner(SigningKey::generate(&mut rand::rngs::OsRng));
        let addr = DeviceAddr {
            account: AccountId::random(),
            device: 1,
        };
        let bytes = Engine {
            provider: Provider::new(&others.db),
            signer: &signer,
            me: addr,
            suite: mls::DEFAULT_CIPHERSUITE,
        }
        .key_packages(1, false)?
        .remove(0);
        let mut dir = Directory::new();
        dir.insert(
            addr.account,
            [(1, signer.0.verifying_key().to_bytes())].into(),
        );
        adds.push(ce.validate_key_package(&bytes, addr, &dir)?);
        if size >= 1000 && i % 1000 == 999 {
            eprintln!("  {size}: {} key packages made", i + 1);
        }
    }
    let mut group = ce.create_group(&rand::random::<[u8; 16]>(), &GroupMeta::default())?;
    let created = ce.commit(&mut group, adds, Vec::new())?;
    ce.confirm(&mut group)?;
    let setup = started.elapsed();
    let tree_bytes = created.ratchet_tree.len();

    // Join: Welcome plus the tree fetched out of band.
    let welcome = match mls::parse(created.welcome.as_deref().context("a welcome")?)?.extract() {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => bail!("not a welcome"),
    };
    let t = Instant::now();
    let (opened, _) = re.open_welcome(welcome.clone())?;
    let mut rgroup = re.join(opened, mls::parse_tree(&created.ratchet_tree)?)?;
    let join = t.elapsed();
    let mut wgroups = Vec::new();
    for w in &warmers {
        let e = w.engine();
        let (opened, _) = e.open_welcome(welcome.clone())?;
        wgroups.push(e.join(opened, mls::parse_tree(&created.ratchet_tree)?)?);
    }

    // Application messages: encrypt at the creator, decrypt at the receiver.
    let mut message = Vec::with_capacity(args.messages);
    for i in 0..args.messages {
        let text = format!("message {i}").into_bytes();
        let t = Instant::now();
        let ct = ce.encrypt(&mut group, &text)?;
        let msg = mls::parse(&ct)?
            .try_into_protocol_message()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let got = re.process(&mut rgroup, msg)?;
        message.push(t.elapsed());
        let ProcessedMessageContent::ApplicationMessage(m) = got.into_content() else {
            bail!("the receiver read something other than a message");
        };
        if m.into_bytes() != text {
            bail!("the receiver read another text");
        }
    }

    let fresh = rounds(
        &ce,
        &mut group,
        &re,
        &mut rgroup,
        &warmers,
        &mut wgroups,
        args.rounds,
    )?;

    // Warm: each warmer commits once (a self-update), which fills the
    // parent nodes of its subtree on the creator's copath, as a group's
    // members' own commits do over time.
    for k in 0..warmers.len() {
        let e = warmers[k].engine();
        let out = e.commit(&mut wgroups[k], Vec::new(), Vec::new())?;
        e.confirm(&mut wgroups[k])?;
        process_commit(&ce, &mut group, &out.commit)?;
        process_commit(&re, &mut rgroup, &out.commit)?;
        for (i, w) in warmers.iter().enumerate() {
            if i != k {
                process_commit(&w.engine(), &mut wgroups[i], &out.commit)?;
            }
        }
    }
    let warm = rounds(
        &ce,
        &mut group,
        &re,
        &mut rgroup,
        &warmers,
        &mut wgroups,
        args.rounds,
    )?;
    Ok(Row {
        size,
        setup,
        join,
        message: median(message),
        fresh,
        warm,
        warmers: warmers.len(),
        tree_bytes,
    })
}

/// Median times of adding one member and removing it again.
struct Changes {
    add: Duration,
    add_processed: Duration,
    remove: Duration,
    remove_processed: Duration,
}

/// Adds a member and removes it again, `n` times; the receiver's times are
/// measured, the warmers only keep up.
fn rounds(
    ce: &Engine<'_>,
    group: &mut MlsGroup,
    re: &Engine<'_>,
    rgroup: &mut MlsGroup,
    warmers: &[Device],
    wgroups: &mut [MlsGroup],
    n: usize,
) -> anyhow::Result<Changes> {
    let (mut add, mut add_processed, mut remove, mut remove_processed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let keep_up = |commit: &[u8], wgroups: &mut [MlsGroup]| -> anyhow::Result<()> {
        for (w, g) in warmers.iter().zip(wgroups.iter_mut()) {
            process_commit(&w.engine(), g, commit)?;
        }
        Ok(())
    };
    for _ in 0..n {
        let newcomer = Device::new()?;
        let kp = newcomer.key_package(ce)?;
        let t = Instant::now();
        let out = ce.commit(group, vec![kp], Vec::new())?;
        ce.confirm(group)?;
        add.push(t.elapsed());
        let t = Instant::now();
        process_commit(re, rgroup, &out.commit)?;
        add_processed.push(t.elapsed());
        keep_up(&out.commit, wgroups)?;

        let leaf: LeafNodeIndex = group
            .members()
            .find(|m| mls::credential_device(&m.credential).ok() == Some(newcomer.addr))
            .map(|m| m.index)
            .context("the newcomer is a member")?;
        let t = Instant::now();
        let out = ce.commit(group, Vec::new(), vec![leaf])?;
        ce.confirm(group)?;
        remove.push(t.elapsed());
        let t = Instant::now();
        process_commit(re, rgroup, &out.commit)?;
        remove_processed.push(t.elapsed());
        keep_up(&out.commit, wgroups)?;
    }
    Ok(Changes {
        add: median(add),
        add_processed: median(add_processed),
        remove: median(remove),
        remove_processed: median(remove_processed),
    })
}

/// Runs `postern bench mls`.
pub fn run(args: MlsArgs) -> anyhow::Result<()> {
    if args.sizes.iter().any(|&n| n < 2) || args.messages == 0 || args.rounds == 0 {
        bail!("sizes start at 2; --messages and --rounds must be at least 1");
    }
    if !args.json {
        println!(
            "MLS ({:?}), one creator and one receiver, median times in ms; \
             add/remove in the group as created (fresh) and after one member \
             commit in each subtree of the creator's copath (warm):",
            mls::DEFAULT_CIPHERSUITE
        );
        println!(
            "{:>6} {:>8} {:>7} {:>8} | {:>6} {:>7} {:>7} {:>7} | {:>6} {:>7} {:>7} {:>7} | {:>8}",
            "size",
            "setup",
            "join",
            "msg",
            "add",
            "add rx",
            "remove",
            "rm rx",
            "add",
            "add rx",
            "remove",
            "rm rx",
            "tree KiB"
        );
    }
    for &size in &args.sizes {
        if !args.json {
            eprintln!("measuring a group of {size}…");
        }
        let r = measure(size, &args)?;
        let changes = |c: &Changes| {
            serde_json::json!({
                "add_commit_ms": ms(c.add),
                "add_processed_ms": ms(c.add_processed),
                "remove_commit_ms": ms(c.remove),
                "remove_processed_ms": ms(c.remove_processed),
            })
        };
        if args.json {
            let v = serde_json::json!({
                "size": r.size,
                "setup_ms": ms(r.setup),
                "join_ms": ms(r.join),
                "message_ms": ms(r.message),
                "fresh": changes(&r.fresh),
                "warm": changes(&r.warm),
                "warming_commits": r.warmers,
                "tree_bytes": r.tree_bytes,
            });
            println!("{v}");
        } else {
            println!(
                "{:>6} {:>8.0} {:>7.1} {:>8.3} | {:>6.1} {:>7.1} {:>7.1} {:>7.1} | {:>6.1} {:>7.1} {:>7.1} {:>7.1} | {:>8.1}",
                r.size,
                ms(r.setup),
                ms(r.join),
                ms(r.message),
                ms(r.fresh.add),
                ms(r.fresh.add_processed),
                ms(r.fresh.remove),
                ms(r.fresh.remove_processed),
                ms(r.warm.add),
                ms(r.warm.add_processed),
                ms(r.warm.remove),
                ms(r.warm.remove_processed),
                r.tree_bytes as f64 / 1024.0
            );
        }
    }
    Ok(())
}
