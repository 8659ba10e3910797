//! Known-answer tests against published vectors: the C2SP signed-note
//! example, Go's golang.org/x/mod/sumdb/note tests, and the
//! transparency-dev/merkle reference tree and proof probes.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use postern_tlog::merkle::{
    self, Frontier, Hash, MemoryTree, empty_root, verify_consistency, verify_inclusion,
};
use postern_tlog::note::{Algorithm, KeyError, Note, NoteError, Signer, Verifier};

/// c2sp.org/signed-note, "Example".
#[test]
fn c2sp_signed_note_example() {
    let vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    let note = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
    let v = Verifier::from_vkey(vkey).unwrap();
    assert_eq!(v.key_id(), 0x530d903a);
    assert_eq!(v.vkey(), vkey);
    let parsed = Note::parse(note.as_bytes()).unwrap();
    assert_eq!(parsed.text(), "This is an example message.\n");
    let verified = parsed.verify(std::slice::from_ref(&v)).unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(parsed.to_string(), note);

    // One flipped character of the text and it no longer verifies.
    let tampered = note.replace("example message", "exemple message");
    assert!(matches!(
        Note::parse(tampered.as_bytes()).unwrap().verify(&[v]),
        Err(NoteError::BadSignature { .. })
    ));
}

const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

/// golang.org/x/mod/sumdb/note TestSign: our signer must produce Go's
/// bytes exactly (Ed25519 is deterministic).
#[test]
fn go_note_sign_is_reproduced_byte_for_byte() {
    let signer = Signer::from_skey(PETER_SKEY).unwrap();
    assert_eq!(signer.skey(), PETER_SKEY);
    assert_eq!(signer.verifier().vkey(), PETER_VKEY);
    let mut note = Note::new(PETER_TEXT).unwrap();
    note.sign(&signer, 0);
    assert_eq!(note.to_string(), format!("{PETER_TEXT}\n{PETER_SIG}"));
}

/// golang.org/x/mod/sumdb/note TestOpen: one known key, one unknown.
#[test]
fn go_note_open_ignores_unknown_keys() {
    let peter = Verifier::from_vkey(PETER_VKEY).unwrap();
    let enoch = Verifier::from_vkey(ENOCH_VKEY).unwrap();
    let msg = format!("{PETER_TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let note = Note::parse(msg.as_bytes()).unwrap();
    assert_eq!(note.signatures().len(), 2);
    let only_peter = note.verify(std::slice::from_ref(&peter)).unwrap();
    assert_eq!(only_peter.len(), 1);
    assert_eq!(only_peter[0].verifier, peter);
    assert_eq!(
        note.verify(&[peter.clone(), enoch.clone()]).unwrap().len(),
        2
    );
    // Only an unknown key signed: rejected.
    let other = Signer::generate("Other", Algorithm::Ed25519)
        .unwrap()
        .verifier();
    assert_eq!(note.verify(&[other]), Err(NoteError::NoTrustedSignature));
    // A known key whose signature does not verify rejects the whole note,
    // even though another trusted key's signature is fine.
    let mut sig = B64
        .decode(ENOCH_SIG.trim_end().rsplit(' ').next().unwrap())
        .unwrap();
    *sig.last_mut().unwrap() ^= 1;
    let bad_enoch = format!("\u{2014} EnochRoot {}\n", B64.encode(sig));
    let forged = Note::parse(format!("{PETER_TEXT}\n{PETER_SIG}{bad_enoch}").as_bytes()).unwrap();
    assert!(forged.verify(std::slice::from_ref(&peter)).is_ok());
    assert_eq!(
        forged.verify(&[peter, enoch]),
        Err(NoteError::BadSignature {
            name: "EnochRoot".into(),
            key_id: 0xaf0cfe78
        })
    );
}

/// golang.org/x/mod/sumdb/note TestNewVerifier: every substring and every
/// single-byte change of a vkey is refused, and two fixed bad keys.
#[test]
fn go_vkey_manglings_are_refused() {
    Verifier::from_vkey(PETER_VKEY).unwrap();
    let b = PETER_VKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            if let Ok(s) = std::str::from_utf8(&b[i..j]) {
                assert!(Verifier::from_vkey(s).is_err(), "{s:?} accepted");
            }
        }
    }
    let mut m = b.to_vec();
    for i in 0..m.len() {
        m[i] = m[i].wrapping_add(1);
        if let Ok(s) = std::str::from_utf8(&m) {
            assert!(Verifier::from_vkey(s).is_err(), "{s:?} accepted");
        }
        m[i] = m[i].wrapping_sub(1);
    }
    assert!(
        Verifier::from_vkey(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
        .is_err()
    );
    assert_eq!(
        Verifier::from_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(KeyError::UnknownAlgorithm(0x65))
    );
}

fn hd(s: &str) -> Hash {
    Hash::from_slice(&hex::decode(s).unwrap()).unwrap()
}

/// transparency-dev/merkle testonly.LeafInputs.
fn leaf_inputs() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|h| hex::decode(h).unwrap())
    .collect()
}

/// transparency-dev/merkle testonly.RootHashes and NodeHashes.
#[test]
fn transparency_dev_reference_tree() {
    let roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let nodes: [&[&str]; 4] = [
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        ],
        &[
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ],
        &[
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
        &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
    ];
    let leaves = leaf_inputs();
    let tree = MemoryTree::from_leaves(&leaves);
    assert_eq!(empty_root(), hd(roots[0]));
    let mut frontier = Frontier::new();
    for (size, root) in roots.iter().enumerate() {
        assert_eq!(tree.root_at(size as u64), hd(root), "root at size {size}");
        assert_eq!(frontier.root(), hd(root), "frontier root at size {size}");
        if size < leaves.len() {
            frontier.push(merkle::leaf_hash(&leaves[size]));
        }
    }
    for (level, row) in nodes.iter().enumerate() {
        let got: Vec<Hash> = tree.level(level as u8).to_vec();
        let want: Vec<Hash> = row.iter().map(|h| hd(h)).collect();
        assert_eq!(got, want, "level {level}");
    }
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap_or("")).unwrap()
}

/// A 32-byte hash, or an error as our typed API gives for any other
/// length. The one vector that expects success with placeholder roots of
/// another length ("don't care") gets them hashed to 32 bytes, which
/// keeps equal values equal and different ones different.
fn to_hash(bytes: &[u8], placeholders_ok: bool) -> Option<Hash> {
    match Hash::from_slice(bytes) {
        Some(h) => Some(h),
        None if placeholders_ok && !bytes.is_empty() => Some(merkle::leaf_hash(bytes)),
        None => None,
    }
}

/// A probe's proof, or `None` if a hash in it is not 32 bytes.
fn proof_hashes(proof: &serde_json::Value) -> Option<Vec<Hash>> {
    proof
        .as_array()
        .map_or(&[][..], |v| v.as_slice())
        .iter()
        .map(|h| to_hash(&b64(h), false))
        .collect()
}

fn probes(kind: &str) -> Vec<(String, serde_json::Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/merkle")
        .join(kind);
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                out.push((p.display().to_string(), v));
            }
        }
    }
    out
}

/// transparency-dev/merkle testdata/inclusion: every probe.
#[test]
fn transparency_dev_inclusion_probes() {
    let probes = probes("inclusion");
    assert!(probes.len() > 60, "{} probes", probes.len());
    let mut happy = 0;
    for (path, p) in probes {
        let want_err = p["wantErr"].as_bool().unwrap();
        let proof = proof_hashes(&p["proof"]);
        let result = (|| {
            let leaf = to_hash(&b64(&p["leafHash"]), false).ok_or(())?;
            let root = to_hash(&b64(&p["root"]), false).ok_or(())?;
            verify_inclusion(
                p["leafIdx"].as_u64().unwrap(),
                p["treeSize"].as_u64().unwrap(),
                &leaf,
                &proof.ok_or(())?,
                &root,
            )
            .map_err(|_| ())
        })();
        assert_eq!(result.is_err(), want_err, "{path}: {}", p["desc"]);
        happy += usize::from(!want_err);
    }
    assert!(happy >= 5);
}

/// transparency-dev/merkle testdata/consistency: every probe.
#[test]
fn transparency_dev_consistency_probes() {
    let probes = probes("consistency");
    assert!(probes.len() > 80, "{} probes", probes.len());
    for (path, p) in probes {
        let want_err = p["wantErr"].as_bool().unwrap();
        let result = (|| {
            let proof = proof_hashes(&p["proof"]).ok_or(())?;
            let root1 = to_hash(&b64(&p["root1"]), !want_err).ok_or(())?;
            let root2 = to_hash(&b64(&p["root2"]), !want_err).ok_or(())?;
            verify_consistency(
                p["size1"].as_u64().unwrap(),
                p["size2"].as_u64().unwrap(),
                &root1,
                &root2,
                &proof,
            )
            .map_err(|_| ())
        })();
        assert_eq!(result.is_err(), want_err, "{path}: {}", p["desc"]);
    }
}

/// The happy-path probes are proofs over the reference tree: ours must
/// generate the very same proofs.
#[test]
fn generated_proofs_equal_the_published_ones() {
    let tree = MemoryTree::from_leaves(leaf_inputs());
    let mut checked = 0;
    for (path, p) in probes("inclusion") {
        if !path.ends_with("happy-path.json") {
            continue;
        }
        let (index, size) = (
            p["leafIdx"].as_u64().unwrap(),
            p["treeSize"].as_u64().unwrap(),
        );
        let want = proof_hashes(&p["proof"]).unwrap();
        assert_eq!(
            merkle::inclusion_proof(&tree, index, size)
                .unwrap()
                .unwrap(),
            want,
            "{path}"
        );
        checked += 1;
    }
    for (path, p) in probes("consistency") {
        if !path.ends_with("happy-path.json") {
            continue;
        }
        let (old, new) = (p["size1"].as_u64().unwrap(), p["size2"].as_u64().unwrap());
        let want = proof_hashes(&p["proof"]).unwrap();
        assert_eq!(
            merkle::consistency_proof(&tree, old, new).unwrap().unwrap(),
            want,
            "{path}"
        );
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
}
