//! The witness answers `add-checkpoint` as c2sp.org/tlog-witness says:
//! 200 with a cosignature, 409 with its size for a stale old size, 422 for
//! a bad proof, 404 for an unknown log, 403 for a bad signature, 400 for a
//! malformed request; and it keeps its state across restarts.

use postern_tlog::LogWriter;
use postern_tlog::checkpoint::Policy;
use postern_tlog::merkle::Hash;
use postern_tlog::note::{Algorithm, Note, Signer};
use postern_tlog::witness::{
    AddCheckpoint, FileStore, SIZE_CONTENT_TYPE, Witness, parse_conflict, parse_cosignatures,
};

const ORIGIN: &str = "transparency.example.org/legal";

struct Setup {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    log: LogWriter,
    log_key: Signer,
    witness_key: Signer,
    witness: Witness<FileStore>,
    store_dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let (log_dir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log_key = Signer::generate(ORIGIN, Algorithm::Ed25519).unwrap();
    let witness_key = Signer::generate("witness.example.net", Algorithm::CosignatureV1).unwrap();
    let mut log = LogWriter::open(log_dir.path(), log_key.clone()).unwrap();
    log.set_sync(false);
    let store_dir = wdir.path().join("state");
    let witness = Witness::new(
        witness_key.clone(),
        vec![log_key.verifier()],
        FileStore::open(&store_dir).unwrap(),
    );
    Setup {
        _dirs: (log_dir, wdir),
        log,
        log_key,
        witness_key,
        witness,
        store_dir,
    }
}

fn grow(log: &mut LogWriter, n: u64) {
    for _ in 0..n {
        let i = log.size() + log.pending() as u64;
        log.append(format!("entry {i}").into_bytes()).unwrap();
    }
    log.publish().unwrap();
}

fn request(old: u64, proof: Vec<Hash>, checkpoint: &str) -> Vec<u8> {
    AddCheckpoint {
        old_size: old,
        proof,
        checkpoint: checkpoint.as_bytes().to_vec(),
    }
    .to_bytes()
}

#[test]
fn cosigns_consistent_checkpoints_and_refuses_stale_ones() {
    let mut s = setup();
    grow(&mut s.log, 10);
    let cp = s.log.checkpoint().to_string();
    let r = s.witness.handle(&request(0, vec![], &cp), 1_700_000_000);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sigs = parse_cosignatures(&r.body).unwrap();
    assert_eq!(sigs.len(), 1);

    // The cosignature verifies on the checkpoint, with its timestamp.
    let mut note = Note::parse(cp.as_bytes()).unwrap();
    note.add_signature(sigs[0].clone());
    let policy = Policy {
        log: s.log_key.verifier(),
        witnesses: vec![s.witness_key.verifier()],
        quorum: 1,
    };
    let opened = policy.open(note.to_string().as_bytes()).unwrap();
    assert_eq!(opened.cosignatures[0].timestamp, Some(1_700_000_000));

    // Resubmitting from 0 is stale: 409 with the witness's size.
    let r = s.witness.handle(&request(0, vec![], &cp), 1_700_000_001);
    assert_eq!(r.status, 409);
    assert_eq!(r.content_type, SIZE_CONTENT_TYPE);
    assert_eq!(r.body, b"10\n");
    assert_eq!(parse_conflict(&r.body), Some(10));

    // Growing with a proof from 10 is cosigned.
    grow(&mut s.log, 25);
    let proof = s.log.consistency_proof(10, 35).unwrap();
    let cp2 = s.log.checkpoint().to_string();
    let r = s
        .witness
        .handle(&request(10, proof.clone(), &cp2), 1_700_000_002);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The same checkpoint again, from its own size, is fine (same root).
    assert_eq!(s.witness.handle(&request(35, vec![], &cp2), 3).status, 200);

    // A restarted witness remembers 35.
    let mut again = Witness::new(
        s.witness_key.clone(),
        vec![s.log_key.verifier()],
        FileStore::open(&s.store_dir).unwrap(),
    );
    let r = again.handle(&request(10, proof, &cp2), 4);
    assert_eq!((r.status, r.body), (409, b"35\n".to_vec()));
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(&s.store_dir).unwrap().count(), 1);
}

#[test]
fn refuses_bad_proofs_with_422() {
    let mut s = setup();
    grow(&mut s.log, 7);
    let cp = s.log.checkpoint().to_string();
    assert_eq!(s.witness.handle(&request(0, vec![], &cp), 1).status, 200);
    grow(&mut s.log, 6);
    let cp2 = s.log.checkpoint().to_string();
    let mut proof = s.log.consistency_proof(7, 13).unwrap();
    proof[0].0[0] ^= 1;
    assert_eq!(s.witness.handle(&request(7, proof, &cp2), 2).status, 422);
    assert_eq!(s.witness.handle(&request(7, vec![], &cp2), 2).status, 422);

    // A forked log (same key, other entries) cannot get a cosignature.
    let dir = tempfile::tempdir().unwrap();
    let mut fork = LogWriter::open(dir.path(), s.log_key.clone()).unwrap();
    fork.set_sync(false);
    for i in 0..13 {
        fork.append(format!("other {i}").into_bytes()).unwrap();
    }
    fork.publish().unwrap();
    let forged_proof = fork.consistency_proof(7, 13).unwrap();
    let r = s
        .witness
        .handle(&request(7, forged_proof, &fork.checkpoint().to_string()), 3);
    assert_eq!(r.status, 422);

    // Same size, different root: 422 too.
    let dir = tempfile::tempdir().unwrap();
    let mut fork7 = LogWriter::open(dir.path(), s.log_key.clone()).unwrap();
    for i in 0..7 {
        fork7.append(format!("other {i}").into_bytes()).unwrap();
    }
    fork7.publish().unwrap();
    let r = s
        .witness
        .handle(&request(7, vec![], &fork7.checkpoint().to_string()), 4);
    assert_eq!(r.status, 422);

    // A non-empty proof from size 0 is refused, and so is an empty tree
    // with a non-empty root (the witness is fresh for that check).
    let mut fresh = setup();
    grow(&mut fresh.log, 3);
    let cp = fresh.log.checkpoint().to_string();
    let junk = fresh.log.consistency_proof(1, 3).unwrap();
    assert_eq!(fresh.witness.handle(&request(0, junk, &cp), 1).status, 422);
    let mut empty =
        Note::new(&format!("{ORIGIN}\n0\n{}\n", fresh.log.root_at(1).unwrap())).unwrap();
    empty.sign(&fresh.log_key, 0);
    assert_eq!(
        fresh
            .witness
            .handle(&request(0, vec![], &empty.to_string()), 1)
            .status,
        422
    );
}

#[test]
fn refuses_unknown_logs_bad_signatures_and_malformed_requests() {
    let mut s = setup();
    grow(&mut s.log, 4);
    let cp = s.log.checkpoint().to_string();

    // Unknown origin: 404.
    let other_dir = tempfile::tempdir().unwrap();
    let other_key = Signer::generate("elsewhere.example/log", Algorithm::Ed25519).unwrap();
    let other = LogWriter::open(other_dir.path(), other_key).unwrap();
    let r = s
        .witness
        .handle(&request(0, vec![], &other.checkpoint().to_string()), 1);
    assert_eq!(r.status, 404);

    // Signed by another key with the log's name: not the log's signature, 403.
    let impostor = Signer::generate(ORIGIN, Algorithm::Ed25519).unwrap();
    let mut forged = Note::new(Note::parse(cp.as_bytes()).unwrap().text()).unwrap();
    forged.sign(&impostor, 0);
    assert_eq!(
        s.witness
            .handle(&request(0, vec![], &forged.to_string()), 1)
            .status,
        403
    );

    // The log's key and id with a corrupted signature: 403.
    let mut note = Note::parse(cp.as_bytes()).unwrap();
    let mut sig = note.signatures()[0].clone();
    sig.signature[10] ^= 0x40;
    note.add_signature(sig);
    assert_eq!(
        s.witness
            .handle(&request(0, vec![], &note.to_string()), 1)
            .status,
        403
    );

    // Old size above the checkpoint's: 400.
    assert_eq!(s.witness.handle(&request(5, vec![], &cp), 1).status, 400);

    // Malformed bodies: 400.
    for body in [
        &b""[..],
        b"old 1",
        b"new 1\n\n",
        b"old 01\n\n",
        b"old 0\nnot a hash\n\n",
        b"old 0\n\nnot a checkpoint\n",
    ] {
        assert_eq!(
            s.witness.handle(body, 1).status,
            400,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    let too_many = request(0, vec![Hash([0; 32]); 64], &cp);
    assert_eq!(s.witness.handle(&too_many, 1).status, 400);

    // None of that changed the state: a good request still starts at 0.
    assert_eq!(s.witness.handle(&request(0, vec![], &cp), 1).status, 200);
}
