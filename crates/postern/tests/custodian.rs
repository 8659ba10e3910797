//! `postern custodian` as custodians use it: three custodians make their
//! keys with `init`; the operator (here, the test, through postern-legal
//! and a real log with a witness cosigning) puts a granted request in the
//! log and hands out a bundle; two custodians `review` and `approve` it,
//! and their released shares open the account's phone number. A bundle
//! whose checkpoint no witness cosigned is refused, and nothing is
//! released.

use std::path::Path;
use std::process::{Command, Output};

use postern_legal::bundle::{Bundle, record_case};
use postern_legal::custodian::{CustodianRecord, DisclosureKey, ReleasedShare};
use postern_legal::disclosure::{AccountVault, disclose};
use postern_legal::policy::{OrderStatus, Policy as DisclosurePolicy, decide};
use postern_legal::request::Request;
use postern_legal::vault::{escrow, seal_phone};
use postern_tlog::LogWriter;
use postern_tlog::checkpoint::Policy;
use postern_tlog::note::{Algorithm, Signer};

const BIN: &str = env!("CARGO_BIN_EXE_postern");
const PHONE: &str = "+4915112345678";

fn postern(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

const REQUEST: &str = r#"jurisdiction = "DE"
authority = "court"
authority_name = "Amtsgericht Test"
case_reference = "351 Gs 1234/26"
legal_basis = "terrorism"
categories = ["phone_number"]
window = { from = 2026-11-01T00:00:00Z, until = 2026-11-28T00:00:00Z }
[[targets]]
account = "01010101010101010101010101010101"
"#;

#[test]
fn custodians_approve_a_logged_grant_and_refuse_an_unwitnessed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).to_str().unwrap().to_owned();

    // Three custodians make their keys.
    let mut records = Vec::new();
    for (name, j) in [("a", "CH"), ("b", "IS"), ("c", "NL")] {
        let out = ok(&postern(&[
            "custodian",
            "init",
            "--dir",
            &p(name),
            "--name",
            &format!("Custodian {j}"),
            "--jurisdiction",
            j,
        ]));
        assert!(out.contains("public_key"), "{out}");
        let text = std::fs::read_to_string(tmp.path().join(name).join("custodian.toml")).unwrap();
        records.push(toml::from_str::<CustodianRecord>(&text).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join(name).join("custodian.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
    // A second init would replace the key: refused.
    let again = postern(&[
        "custodian",
        "init",
        "--dir",
        &p("a"),
        "--name",
        "x",
        "--jurisdiction",
        "CH",
    ]);
    assert!(!again.status.success());

    // The operator's side: an account in the vault, a log with a witness.
    let account = [1u8; 16];
    let esc = escrow(&account, &records, 2).unwrap();
    let vault = AccountVault {
        account,
        public_key: esc.public_key,
        phone: seal_phone(&esc.public_key, &account, PHONE).unwrap(),
        connections: vec![],
    };
    let log_key =
        Signer::generate("transparency.postern.example/legal", Algorithm::Ed25519).unwrap();
    let witness = Signer::generate("witness.example.net", Algorithm::CosignatureV1).unwrap();
    let mut log = LogWriter::open(&tmp.path().join("log"), log_key.clone()).unwrap();
    let request = Request::parse(REQUEST.as_bytes()).unwrap();
    let decision = decide(
        &DisclosurePolicy::default(),
        &request,
        OrderStatus::Valid,
        &[Some(account)],
    );
    let case = record_case([7; 16], 1_795_000_000, &request, &decision, b"%PDF order");
    let index = log.append(case.entry.encode().unwrap()).unwrap();
    log.publish().unwrap();
    let unwitnessed_proof = log.proof_bundle(index, None).unwrap();
    let text = log.checkpoint().text().to_owned();
    log.add_cosignatures(vec![witness.sign(&text, 1_795_000_000)])
        .unwrap();
    let proof = log.proof_bundle(index, None).unwrap();
    let dk = DisclosureKey::generate();
    let shares: Vec<_> = esc.shares.iter().map(|w| (account, w.clone())).collect();
    let bundle = |proof| {
        Bundle::new(
            REQUEST,
            b"%PDF order",
            b"sig",
            1_795_000_000,
            &decision,
            &case,
            proof,
            dk.public_key().unwrap(),
            &shares,
        )
    };
    std::fs::write(p("bundle.json"), bundle(&proof).to_json()).unwrap();
    std::fs::write(p("unwitnessed.json"), bundle(&unwitnessed_proof).to_json()).unwrap();

    let log_vkey = log_key.verifier().vkey();
    let witness_vkey = witness.verifier().vkey();
    let check = |cmd: &str, bundle: &str, who: &str, extra: &[&str]| {
        let mut args = vec![
            "custodian",
            cmd,
            bundle,
            "--dir",
            who,
            "--log",
            &log_vkey,
            "--witness",
            &witness_vkey,
        ];
        args.extend_from_slice(extra);
        postern(&args)
    };

    let review = ok(&check("review", &p("bundle.json"), &p("a"), &[]));
    assert!(
        review.contains("Amtsgericht Test") && review.contains("verdict: may be approved"),
        "{review}"
    );

    // Two custodians approve.
    let mut released = Vec::new();
    for who in ["a", "c"] {
        let out = p(&format!("released-{who}.txt"));
        ok(&check(
            "approve",
            &p("bundle.json"),
            &p(who),
            &["--out", &out],
        ));
        for line in std::fs::read_to_string(&out).unwrap().lines() {
            released.push(ReleasedShare::decode(&hex::decode(line).unwrap()).unwrap());
        }
    }
    assert_eq!(released.len(), 2);
    let policy = Policy {
        log: log_key.verifier(),
        witnesses: vec![witness.verifier()],
        quorum: 1,
    };
    let operator = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let signed = disclose(
        &bundle(&proof),
        &policy,
        &dk,
        &released,
        &records,
        2,
        &[vault],
        &operator,
        1_795_100_000,
    )
    .unwrap();
    let package = signed.verify(&operator.verifying_key()).unwrap();
    assert_eq!(package.accounts[0].phone_number.as_deref(), Some(PHONE));

    // No witness cosigned this checkpoint: reviewed as "do not approve",
    // and approving releases nothing.
    let r = check("review", &p("unwitnessed.json"), &p("b"), &[]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("Amtsgericht Test"));
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        err.contains("do not approve") && err.contains("not proven to be in the public log"),
        "{err}"
    );
    let out = p("released-b.txt");
    let r = check("approve", &p("unwitnessed.json"), &p("b"), &["--out", &out]);
    assert!(!r.status.success());
    assert!(!Path::new(&out).exists());
    // A quorum of zero is no check at all: refused.
    let r = check(
        "approve",
        &p("bundle.json"),
        &p("b"),
        &["--out", &out, "--quorum", "0"],
    );
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("at least one witness"));
    assert!(!Path::new(&out).exists());
    // A bundle that is not JSON.
    std::fs::write(p("junk.json"), "not a bundle").unwrap();
    let r = check("review", &p("junk.json"), &p("b"), &[]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("malformed bundle"));
}
