//! The verifier against logs in directories: a good log passes and grows,
//! forks (same size with another root, a shrinking log, rewritten history)
//! raise an alarm with the signed evidence, damaged tiles and bundles give
//! typed errors, and offline proof bundles verify.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use postern_tlog::checkpoint::{OpenError, Policy};
use postern_tlog::client::{self, DirFetch, ForkKind, MonitorState, VerifyError};
use postern_tlog::note::{Algorithm, Signer};
use postern_tlog::proof::{BundleError, ProofBundle};
use postern_tlog::tile::TileError;
use postern_tlog::witness::{AddCheckpoint, FileStore, Witness, parse_cosignatures};
use postern_tlog::{LogWriter, Verifier};

const ORIGIN: &str = "transparency.example.org/legal";

fn key() -> Signer {
    Signer::from_seed(ORIGIN, Algorithm::Ed25519, [42; 32]).unwrap()
}

fn log(dir: &Path, prefix: &str, n: u64) -> LogWriter {
    let mut w = LogWriter::open(dir, key()).unwrap();
    w.set_sync(false);
    append(&mut w, prefix, n);
    w
}

fn append(w: &mut LogWriter, prefix: &str, n: u64) {
    for _ in 0..n {
        let i = w.size() + w.pending() as u64;
        w.append(format!("{prefix} {i}").into_bytes()).unwrap();
    }
    w.publish().unwrap();
}

fn policy() -> Policy {
    Policy::log_only(key().verifier())
}

fn fork_kind(r: Result<client::Verdict, VerifyError>) -> ForkKind {
    match r {
        Err(VerifyError::Fork(f)) => {
            assert!(f.to_string().starts_with("FORK:"));
            assert_ne!(f.previous, f.current);
            f.kind
        }
        other => panic!("expected a fork, got {other:?}"),
    }
}

#[tokio::test]
async fn a_growing_log_verifies_run_after_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = log(dir.path(), "entry", 300);
    let fetch = DirFetch(dir.path().to_owned());
    let v = client::verify(&fetch, &policy(), None).await.unwrap();
    assert_eq!(
        (v.checkpoint.size, v.new_entries, v.previous_size),
        (300, 300, None)
    );
    let saved = v.state.to_string();
    for (add, size) in [(0, 300), (1, 301), (500, 801)] {
        if add > 0 {
            append(&mut w, "entry", add);
        }
        let state = MonitorState::parse(&saved).unwrap();
        let v = client::verify(&fetch, &policy(), Some(&state))
            .await
            .unwrap();
        assert_eq!(v.checkpoint.size, size);
        assert_eq!(v.new_entries, size - 300);
        assert_eq!(v.previous_size, Some(300));
        // The state round-trips through its text form.
        assert_eq!(MonitorState::parse(&v.state.to_string()).unwrap(), v.state);
    }
}

#[tokio::test]
async fn same_size_with_another_root_is_a_fork() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    log(a.path(), "entry", 20);
    log(b.path(), "other", 20);
    let seen = client::verify(&DirFetch(a.path().into()), &policy(), None)
        .await
        .unwrap();
    let r = client::verify(&DirFetch(b.path().into()), &policy(), Some(&seen.state)).await;
    assert_eq!(fork_kind(r), ForkKind::SameSizeDifferentRoot);
}

#[tokio::test]
async fn a_shrinking_log_is_a_fork() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    log(a.path(), "entry", 20);
    log(b.path(), "entry", 19);
    let seen = client::verify(&DirFetch(a.path().into()), &policy(), None)
        .await
        .unwrap();
    let r = client::verify(&DirFetch(b.path().into()), &policy(), Some(&seen.state)).await;
    assert_eq!(fork_kind(r), ForkKind::Shrunk);
}

#[tokio::test]
async fn rewritten_history_is_a_fork() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    log(a.path(), "entry", 20);
    // Same key, same later growth, but entry 3 differs.
    let mut w = LogWriter::open(b.path(), key()).unwrap();
    for i in 0..40 {
        let e = if i == 3 {
            "entry X".to_owned()
        } else {
            format!("entry {i}")
        };
        w.append(e.into_bytes()).unwrap();
    }
    w.publish().unwrap();
    let seen = client::verify(&DirFetch(a.path().into()), &policy(), None)
        .await
        .unwrap();
    let r = client::verify(&DirFetch(b.path().into()), &policy(), Some(&seen.state)).await;
    assert_eq!(fork_kind(r), ForkKind::Rewritten);
}

#[tokio::test]
async fn damaged_logs_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    log(dir.path(), "entry", 300);
    let fetch = DirFetch(dir.path().to_owned());
    let bundle = dir.path().join("tile/entries/001.p/44");
    let good = std::fs::read(&bundle).unwrap();

    // A changed entry: the entries no longer hash to the signed root.
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&bundle, &bad).unwrap();
    assert!(matches!(
        client::verify(&fetch, &policy(), None).await,
        Err(VerifyError::EntriesDoNotMatch { size: 300, .. })
    ));

    // A truncated bundle.
    std::fs::write(&bundle, &good[..good.len() - 3]).unwrap();
    assert!(matches!(
        client::verify(&fetch, &policy(), None).await,
        Err(VerifyError::Tile(TileError::TruncatedBundle {
            width: 44,
            ..
        }))
    ));
    std::fs::write(&bundle, &good).unwrap();

    // A hash tile of the wrong width.
    let tile = dir.path().join("tile/0/001.p/44");
    let good_tile = std::fs::read(&tile).unwrap();
    std::fs::write(&tile, &good_tile[..43 * 32]).unwrap();
    assert!(matches!(
        client::verify(&fetch, &policy(), None).await,
        Err(VerifyError::Tile(TileError::WrongLength {
            width: 44,
            got: 1376,
            ..
        }))
    ));
    // A hash tile with a wrong hash.
    let mut wrong = good_tile.clone();
    wrong[5] ^= 1;
    std::fs::write(&tile, &wrong).unwrap();
    assert!(matches!(
        client::verify(&fetch, &policy(), None).await,
        Err(VerifyError::Tiles(_))
    ));
    std::fs::write(&tile, &good_tile).unwrap();

    // A missing bundle.
    std::fs::remove_file(&bundle).unwrap();
    assert!(matches!(
        client::verify(&fetch, &policy(), None).await,
        Err(VerifyError::Fetch(client::FetchError::NotFound(_)))
    ));
    std::fs::write(&bundle, &good).unwrap();
    client::verify(&fetch, &policy(), None).await.unwrap();

    // A log that has grown and deleted the partial tiles of an older
    // checkpoint: a client still at that checkpoint reads the full ones.
    let mut w = LogWriter::open(dir.path(), key()).unwrap();
    let old_state = client::verify(&fetch, &policy(), None).await.unwrap().state;
    let old_checkpoint = std::fs::read(dir.path().join("checkpoint")).unwrap();
    append(&mut w, "entry", 300);
    std::fs::remove_file(&bundle).unwrap();
    std::fs::remove_file(&tile).unwrap();
    let grown = std::fs::read(dir.path().join("checkpoint")).unwrap();
    std::fs::write(dir.path().join("checkpoint"), &old_checkpoint).unwrap();
    let again = client::verify(&fetch, &policy(), None).await.unwrap();
    assert_eq!(again.state, old_state);
    std::fs::write(dir.path().join("checkpoint"), &grown).unwrap();

    // Another log's key, or a malformed checkpoint.
    let stranger = Signer::generate(ORIGIN, Algorithm::Ed25519).unwrap();
    assert!(matches!(
        client::verify(&fetch, &Policy::log_only(stranger.verifier()), None).await,
        Err(VerifyError::Checkpoint(OpenError::Note(_)))
    ));
    std::fs::write(dir.path().join("checkpoint"), "garbage").unwrap();
    assert!(matches!(
        client::verify(&fetch, &policy(), None).await,
        Err(VerifyError::Checkpoint(_))
    ));
}

fn cosign(w: &mut LogWriter, witnesses: &mut [(Signer, Witness<FileStore>)]) {
    for (_, witness) in witnesses.iter_mut() {
        let body = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: w.checkpoint().to_string().into_bytes(),
        }
        .to_bytes();
        let r = witness.handle(&body, 1_764_000_000);
        assert_eq!(r.status, 200);
        w.add_cosignatures(parse_cosignatures(&r.body).unwrap())
            .unwrap();
    }
}

#[tokio::test]
async fn witness_quorum_and_offline_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut w = log(dir.path(), "entry", 1000);
    let mut witnesses: Vec<(Signer, Witness<FileStore>)> = (0..3)
        .map(|i| {
            let k = Signer::generate(&format!("w{i}.example"), Algorithm::CosignatureV1).unwrap();
            let store = FileStore::open(&state.path().join(i.to_string())).unwrap();
            (k.clone(), Witness::new(k, vec![key().verifier()], store))
        })
        .collect();
    let keys: Vec<Verifier> = witnesses.iter().map(|(k, _)| k.verifier()).collect();
    let need = |quorum| Policy {
        log: key().verifier(),
        witnesses: keys.clone(),
        quorum,
    };
    let fetch = DirFetch(dir.path().to_owned());
    assert!(matches!(
        client::verify(&fetch, &need(2), None).await,
        Err(VerifyError::Checkpoint(OpenError::Quorum {
            needed: 2,
            got: 0
        }))
    ));
    cosign(&mut w, &mut witnesses[..2]);
    let v = client::verify(&fetch, &need(2), None).await.unwrap();
    assert_eq!(v.cosigners, vec!["w0.example", "w1.example"]);
    assert!(matches!(
        client::verify(&fetch, &need(3), None).await,
        Err(VerifyError::Checkpoint(OpenError::Quorum {
            needed: 3,
            got: 2
        }))
    ));
    // A witness key given as a plain Ed25519 vkey counts as its cosigner key.
    let plain = Policy {
        log: key().verifier(),
        witnesses: witnesses[..1]
            .iter()
            .map(|(k, _)| {
                let v = k.verifier();
                let mut material = B64.decode(v.vkey().splitn(3, '+').nth(2).unwrap()).unwrap();
                material[0] = 0x01;
                let id = postern_tlog::note::key_id(v.name(), Algorithm::Ed25519, &material[1..]);
                Verifier::from_vkey(&format!("{}+{id:08x}+{}", v.name(), B64.encode(&material)))
                    .unwrap()
            })
            .collect(),
        quorum: 1,
    };
    assert_eq!(plain.witnesses[0].algorithm(), Algorithm::Ed25519);
    client::verify(&fetch, &plain, None).await.unwrap();

    // An offline proof for entry 777, from the writer and from the tiles.
    let entry = b"entry 777";
    let from_writer = w.proof_bundle(777, Some(b"context".to_vec())).unwrap();
    let text = from_writer.to_string();
    assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra Y29udGV4dA==\nindex 777\n"));
    let parsed = ProofBundle::parse(&text).unwrap();
    assert_eq!(parsed, from_writer);
    parsed.verify(entry, &need(2)).unwrap();
    assert!(matches!(
        parsed.verify(b"entry 778", &need(2)),
        Err(BundleError::Inclusion(_))
    ));
    assert!(matches!(
        parsed.verify(entry, &need(3)),
        Err(BundleError::Checkpoint(_))
    ));
    let mut other_index = parsed.clone();
    other_index.index = 776;
    assert!(other_index.verify(entry, &need(2)).is_err());
    let from_tiles =
        client::prove_inclusion(&fetch, &need(2), 777, entry, Some(b"context".to_vec()))
            .await
            .unwrap();
    assert_eq!(from_tiles, from_writer);
    for bad in [
        "",
        "c2sp.org/tlog-proof@v1\n",
        "c2sp.org/tlog-proof@v1\nindex x\n\n",
    ] {
        assert!(matches!(
            ProofBundle::parse(bad),
            Err(BundleError::Malformed(_))
        ));
    }
}
