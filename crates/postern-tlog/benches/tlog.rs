//! The log's hot paths.
//!
//! - `sustained`: a log on disk taking entries of 200 bytes, publishing a
//!   checkpoint (tiles, bundles, fsync, signature) once per simulated
//!   second; prints the time each one-second batch costs and the
//!   appends/s that leaves room for.
//! - criterion: inclusion-proof verification in a tree of 1M entries
//!   (without and with the checkpoint's signature), and the proof's size.
//!
//! `cargo bench -p postern-tlog --bench tlog`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use postern_tlog::merkle::{MemoryTree, inclusion_proof, leaf_hash, verify_inclusion};
use postern_tlog::note::{Algorithm, Signer};
use postern_tlog::{LogWriter, Policy};

const ENTRY_LEN: usize = 200;

fn entry(i: u64) -> Vec<u8> {
    let mut e = vec![0u8; ENTRY_LEN];
    e[..8].copy_from_slice(&i.to_be_bytes());
    e
}

/// Appends `per_second` entries and publishes, `rounds` times; returns the
/// time each publish round took.
fn rounds(per_second: u64, rounds: u32) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let key = Signer::generate("bench.example/log", Algorithm::Ed25519).unwrap();
    let mut w = LogWriter::open(dir.path(), key).unwrap();
    let mut next = 0;
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_second {
                w.append(entry(next)).unwrap();
                next += 1;
            }
            w.publish().unwrap();
            start.elapsed()
        })
        .collect()
}

fn sustained() {
    println!("sustained appends, one checkpoint per batch, fsync on, {ENTRY_LEN}-byte entries");
    for per_second in [10_000u64, 50_000, 200_000] {
        let times = rounds(per_second, 10);
        let total: Duration = times.iter().sum();
        let mut sorted = times.clone();
        sorted.sort();
        let rate = per_second as f64 * times.len() as f64 / total.as_secs_f64();
        println!(
            "  batch {per_second:>7}: median {:>7.1} ms, max {:>7.1} ms per batch -> {:>9.0} appends/s of CPU+disk time",
            sorted[sorted.len() / 2].as_secs_f64() * 1e3,
            sorted[sorted.len() - 1].as_secs_f64() * 1e3,
            rate
        );
    }
}

fn proofs(c: &mut Criterion) {
    const SIZE: u64 = 1 << 20;
    let tree = MemoryTree::from_leaves((0..SIZE).map(entry));
    let root = tree.root_at(SIZE);
    let index = 777_777;
    let proof = inclusion_proof(&tree, index, SIZE).unwrap().unwrap();
    let leaf = leaf_hash(&entry(index));
    println!(
        "inclusion proof at {SIZE} entries: {} hashes, {} bytes",
        proof.len(),
        proof.len() * 32
    );
    c.bench_function("verify_inclusion_1M", |b| {
        b.iter(|| {
            verify_inclusion(black_box(index), SIZE, &leaf, black_box(&proof), &root).unwrap()
        })
    });

    // The same through an offline proof bundle: parse, open the checkpoint
    // (one Ed25519 verification), verify the proof.
    let dir = tempfile::tempdir().unwrap();
    let key = Signer::generate("bench.example/log", Algorithm::Ed25519).unwrap();
    let mut w = LogWriter::open(dir.path(), key.clone()).unwrap();
    w.set_sync(false);
    for i in 0..SIZE {
        w.append(entry(i)).unwrap();
    }
    w.publish().unwrap();
    let bundle = w.proof_bundle(index, None).unwrap().to_string();
    println!(
        "tlog-proof bundle at {SIZE} entries: {} bytes of text",
        bundle.len()
    );
    let policy = Policy::log_only(key.verifier());
    let e = entry(index);
    c.bench_function("verify_proof_bundle_1M_with_signature", |b| {
        b.iter(|| {
            postern_tlog::ProofBundle::parse(black_box(&bundle))
                .unwrap()
                .verify(&e, &policy)
                .unwrap()
        })
    });
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if filter.is_empty() || filter.iter().any(|f| "sustained".contains(f.as_str())) {
        sustained();
    }
    let mut c = Criterion::default().configure_from_args();
    proofs(&mut c);
    c.final_summary();
}
