//! The whole lawful-request flow without a server: three custodians
//! (k = 2), a real transparency log with a witness cosigning, openssl-made
//! court orders, the policy engine, custodian bundles and the disclosure.

mod common;

use common::{now, read, trust};
use ed25519_dalek::SigningKey;
use postern_legal::bundle::{Bundle, BundleError, record_case};
use postern_legal::custodian::{CustodianKey, CustodianRecord, DisclosureKey, ReleasedShare};
use postern_legal::disclosure::{AccountVault, DisclosureError, disclose};
use postern_legal::order::verify_order;
use postern_legal::policy::{OrderStatus, Policy, decide};
use postern_legal::report::Report;
use postern_legal::request::{Request, Target};
use postern_legal::vault::{
    AccountId, IpRecord, PhoneIndexKey, VaultError, escrow, seal_ip, seal_phone,
};
use postern_tlog::LogWriter;
use postern_tlog::checkpoint::Policy as LogPolicy;
use postern_tlog::entry::{Entry, Outcome, ReasonCode};
use postern_tlog::note::{Algorithm, Signer};

const PHONE: &str = "+4915112345678";
const OTHER_PHONE: &str = "+4915187654321";

fn request_toml(extra: &str, target: &str) -> String {
    format!(
        r#"jurisdiction = "DE"
authority = "court"
authority_name = "Amtsgericht Test"
case_reference = "351 Gs 1234/26"
legal_basis = "terrorism"
categories = ["phone_number", "connection_ips"]
window = {{ from = 2026-11-01T00:00:00Z, until = 2026-11-28T00:00:00Z }}
{extra}
[[targets]]
phone = "{target}"
"#
    )
}

struct World {
    custodians: Vec<(CustodianKey, CustodianRecord)>,
    records: Vec<CustodianRecord>,
    index: PhoneIndexKey,
    vaults: Vec<(
        String,
        AccountVault,
        Vec<postern_legal::custodian::WrappedShare>,
    )>,
    log: LogWriter,
    _dir: tempfile::TempDir,
    witness: Signer,
    policy: LogPolicy,
    entries: Vec<Vec<u8>>,
    operator: SigningKey,
}

const T_OCT: u64 = 1_792_000_000; // 2026-10-14: before the window
const T_NOV_3: u64 = 1_793_700_000; // 2026-11-03
const T_NOV_20: u64 = 1_795_200_000; // 2026-11-20
const T_DEC: u64 = 1_796_200_000; // 2026-12-02: after the window

impl World {
    fn new() -> World {
        let custodians: Vec<_> = [
            ("Custodian CH", "CH"),
            ("Custodian IS", "IS"),
            ("Custodian NL", "NL"),
        ]
        .iter()
        .map(|(n, j)| {
            let key = CustodianKey::generate();
            let record = CustodianRecord {
                name: (*n).into(),
                jurisdiction: (*j).into(),
                public_key: key.public_key().unwrap(),
            };
            (key, record)
        })
        .collect();
        let records: Vec<_> = custodians.iter().map(|(_, r)| r.clone()).collect();
        postern_legal::custodian::check_quorum(&records, 2).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log_key =
            Signer::generate("transparency.postern.example/legal", Algorithm::Ed25519).unwrap();
        let witness = Signer::generate("witness.example.net", Algorithm::CosignatureV1).unwrap();
        let policy = LogPolicy {
            log: log_key.verifier(),
            witnesses: vec![witness.verifier()],
            quorum: 1,
        };
        let mut w = World {
            custodians,
            records,
            index: PhoneIndexKey::generate(),
            vaults: Vec::new(),
            log: LogWriter::open(dir.path(), log_key).unwrap(),
            _dir: dir,
            witness,
            policy,
            entries: Vec::new(),
            operator: SigningKey::from_bytes(&[5; 32]),
        };
        for (i, phone) in [PHONE, OTHER_PHONE].iter().enumerate() {
            let account: AccountId = [i as u8 + 1; 16];
            let e = escrow(&account, &w.records, 2).unwrap();
            let connections = [
                (T_OCT, "198.51.100.7"),
                (T_NOV_3, "203.0.113.5"),
                (T_NOV_20, "2001:db8::42"),
                (T_DEC, "192.0.2.99"),
            ]
            .iter()
            .map(|(at, ip)| {
                seal_ip(
                    &e.public_key,
                    &account,
                    &IpRecord {
                        at: *at,
                        ip: ip.parse().unwrap(),
                    },
                )
                .unwrap()
            })
            .collect();
            let vault = AccountVault {
                account,
                public_key: e.public_key,
                phone: seal_phone(&e.public_key, &account, phone).unwrap(),
                connections,
            };
            w.vaults
                .push((hex::encode(w.index.lookup(phone)), vault, e.shares));
        }
        w
    }

    fn resolve(&self, r: &Request) -> Vec<Option<AccountId>> {
        r.targets
            .iter()
            .map(|t| match t {
                Target::Phone(p) => {
                    let h = hex::encode(self.index.lookup(p));
                    self.vaults
                        .iter()
                        .find(|(i, _, _)| *i == h)
                        .map(|(_, v, _)| v.account)
                }
                _ => None,
            })
            .collect()
    }

    fn append(&mut self, entry: &Entry) -> u64 {
        let bytes = entry.encode().unwrap();
        self.entries.push(bytes.clone());
        self.log.append(bytes).unwrap()
    }

    /// Publishes a checkpoint and has the witness cosign it.
    fn publish_cosigned(&mut self) {
        self.log.publish().unwrap();
        let text = self.log.checkpoint().text().to_owned();
        self.log
            .add_cosignatures(vec![self.witness.sign(&text, now())])
            .unwrap();
    }

    /// Submits a request: verifies the order, decides, logs, and builds the
    /// bundle (with a cosigned proof).
    fn submit(&mut self, toml: &str, sig: &str, id: u8) -> (Bundle, DisclosureKey, Outcome) {
        let request = Request::parse(toml.as_bytes()).unwrap();
        let document = read("order.pdf");
        let signature = read(sig);
        let status = match verify_order(
            &trust(),
            request.jurisdiction.as_str(),
            &document,
            &signature,
            now(),
        ) {
            Ok(_) => OrderStatus::Valid,
            Err(e) => e.status(),
        };
        let decision = decide(
            &Policy::default(),
            &request,
            status,
            &self.resolve(&request),
        );
        let received = T_NOV_20 + 86_400 * 6; // 2026-11-26
        let case = record_case([id; 16], received, &request, &decision, &document);
        let index = self.append(&case.entry);
        self.publish_cosigned();
        let proof = self.log.proof_bundle(index, None).unwrap();
        let dk = DisclosureKey::generate();
        let shares: Vec<_> = decision
            .accounts
            .iter()
            .flat_map(|a| {
                let (_, _, wrapped) = self
                    .vaults
                    .iter()
                    .find(|(_, v, _)| v.account == *a)
                    .unwrap();
                wrapped.iter().map(move |w| (*a, w.clone()))
            })
            .collect();
        let bundle = Bundle::new(
            toml,
            &document,
            &signature,
            received,
            &decision,
            &case,
            &proof,
            dk.public_key().unwrap(),
            &shares,
        );
        (
            Bundle::parse(bundle.to_json().as_bytes()).unwrap(),
            dk,
            decision.outcome,
        )
    }

    fn release(&self, bundle: &Bundle, who: usize) -> Vec<ReleasedShare> {
        let (key, record) = &self.custodians[who];
        let approval = bundle
            .check(&record.public_key, &self.policy, Some((&trust(), now())))
            .unwrap();
        assert_eq!(approval.shares.len(), approval.accounts.len());
        approval
            .shares
            .iter()
            .map(|(a, w)| {
                key.release(&approval.request_id, a, w, &approval.disclosure_key)
                    .unwrap()
            })
            .collect()
    }

    fn vaults(&self) -> Vec<AccountVault> {
        self.vaults.iter().map(|(_, v, _)| v.clone()).collect()
    }
}

#[test]
fn a_terrorism_order_is_granted_approved_and_disclosed_exactly() {
    let mut w = World::new();
    let (bundle, dk, outcome) = w.submit(&request_toml("", PHONE), "de-order.p7s", 1);
    assert_eq!(outcome, Outcome::Granted);
    assert!(bundle.summary().contains("Amtsgericht Test"));

    let released: Vec<_> = [0, 2].iter().flat_map(|&c| w.release(&bundle, c)).collect();
    let signed = disclose(
        &bundle,
        &w.policy,
        &dk,
        &released,
        &w.records,
        2,
        &w.vaults(),
        &w.operator,
        now(),
    )
    .unwrap();
    let package = signed.verify(&w.operator.verifying_key()).unwrap();
    assert_eq!(package.accounts.len(), 1);
    let a = &package.accounts[0];
    assert_eq!(a.phone_number.as_deref(), Some(PHONE));
    let ips: Vec<_> = a
        .connections
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.ip.as_str())
        .collect();
    assert_eq!(
        ips,
        ["203.0.113.5", "2001:db8::42"],
        "exactly the IPs inside the window"
    );
    assert!(!signed.package.contains(OTHER_PHONE));

    // The package's signature covers its bytes.
    let mut forged = signed.clone();
    forged.package = forged.package.replace("203.0.113.5", "203.0.113.6");
    assert!(forged.verify(&w.operator.verifying_key()).is_err());
}

#[test]
fn fewer_than_k_custodians_disclose_nothing() {
    let mut w = World::new();
    let (bundle, dk, _) = w.submit(&request_toml("", PHONE), "de-order.p7s", 2);
    let one = w.release(&bundle, 1);
    let e = disclose(
        &bundle,
        &w.policy,
        &dk,
        &one,
        &w.records,
        2,
        &w.vaults(),
        &w.operator,
        now(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DisclosureError::Vault {
                error: VaultError::TooFewShares { have: 1, need: 2 },
                ..
            }
        ),
        "{e}"
    );
    // The same custodian twice is still one.
    let twice = [one.clone(), one].concat();
    assert!(
        disclose(
            &bundle,
            &w.policy,
            &dk,
            &twice,
            &w.records,
            2,
            &w.vaults(),
            &w.operator,
            now()
        )
        .is_err()
    );
}

#[test]
fn shares_released_for_another_request_or_account_do_not_open() {
    let mut w = World::new();
    let (bundle_a, dk_a, _) = w.submit(&request_toml("", PHONE), "de-order.p7s", 3);
    let (bundle_b, _dk_b, _) = w.submit(&request_toml("", OTHER_PHONE), "de-order.p7s", 4);
    // Shares released for request B (another account) given to request A.
    let mut mixed = w.release(&bundle_a, 0);
    mixed.extend(w.release(&bundle_b, 1));
    let e = disclose(
        &bundle_a,
        &w.policy,
        &dk_a,
        &mixed,
        &w.records,
        2,
        &w.vaults(),
        &w.operator,
        now(),
    )
    .unwrap_err();
    assert!(matches!(e, DisclosureError::Vault { .. }), "{e}");

    // A custodian asked to release B's account under A's bundle refuses:
    // the share names an account the logged decision does not cover.
    let mut smuggled = bundle_a.clone();
    smuggled.shares.extend(bundle_b.shares.clone());
    assert_eq!(
        smuggled
            .check(&w.records[0].public_key, &w.policy, None)
            .unwrap_err(),
        BundleError::Mismatch("a share for an account the decision does not grant")
    );
    // Nor may the bundle claim more accounts than were logged.
    let mut widened = bundle_a.clone();
    widened.decision.accounts.push(hex::encode([2u8; 16]));
    assert_eq!(
        widened
            .check(&w.records[0].public_key, &w.policy, None)
            .unwrap_err(),
        BundleError::Mismatch("the accounts are not the ones logged")
    );
}

#[test]
fn custodians_refuse_what_the_cosigned_log_does_not_show() {
    let mut w = World::new();
    let (bundle, _, _) = w.submit(&request_toml("", PHONE), "de-order.p7s", 5);
    let me = w.records[0].public_key;

    // A checkpoint the witness did not cosign.
    let (mut uncosigned, _, _) = w.submit(&request_toml("", PHONE), "de-order.p7s", 6);
    w.append(&Entry::Sealed(postern_tlog::entry::SealedRequest {
        id: [9; 16],
        month: postern_tlog::entry::Month::new(2026, 11).unwrap(),
        commitment: postern_tlog::entry::Commitment([0; 32]),
    }));
    w.log.publish().unwrap();
    let index = postern_tlog::proof::ProofBundle::parse(&uncosigned.proof)
        .unwrap()
        .index;
    uncosigned.proof = w.log.proof_bundle(index, None).unwrap().to_string();
    assert!(matches!(
        uncosigned.check(&me, &w.policy, None),
        Err(BundleError::NotInLog(_))
    ));

    // A decision missing from the log: the entry is not the one proven.
    let mut missing = bundle.clone();
    let mut entry = hex::decode(&missing.entry).unwrap();
    let last = entry.len() - 1;
    entry[last] ^= 1;
    missing.entry = hex::encode(entry);
    assert!(matches!(
        missing.check(&me, &w.policy, None),
        Err(BundleError::NotInLog(_))
    ));

    // A custodian configured without witnesses approves nothing.
    let lax = LogPolicy::log_only(w.policy.log.clone());
    assert_eq!(
        bundle.check(&me, &lax, None).unwrap_err(),
        BundleError::NoWitnessQuorum
    );

    // A different order than the one logged.
    let mut swapped = bundle.clone();
    swapped.order = base64_of(&read("other.pdf"));
    assert_eq!(
        swapped.check(&me, &w.policy, None).unwrap_err(),
        BundleError::Mismatch("the order is not the one logged")
    );

    // The honest bundle passes.
    bundle
        .check(&me, &w.policy, Some((&trust(), now())))
        .unwrap();
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn each_refusal_is_logged_with_its_reason_and_reported() {
    let mut w = World::new();
    let cases: Vec<(String, &str, ReasonCode)> = vec![
        // A forged signature: the order signed by a self-made "court".
        (
            request_toml("", PHONE),
            "self-signed.p7s",
            ReasonCode::UNTRUSTED_COURT,
        ),
        (
            request_toml("", PHONE),
            "de-expired.p7s",
            ReasonCode::CERTIFICATE_EXPIRED,
        ),
        // A court of another jurisdiction signing a German request.
        (
            request_toml("", PHONE),
            "fr-order.p7s",
            ReasonCode::UNTRUSTED_COURT,
        ),
        (
            request_toml("", PHONE).replace(
                r#"["phone_number", "connection_ips"]"#,
                r#"["message_content"]"#,
            ),
            "de-order.p7s",
            ReasonCode::CATEGORY_NEVER_DISCLOSED,
        ),
        (
            request_toml("all_users = true", PHONE),
            "de-order.p7s",
            ReasonCode::OVERBROAD,
        ),
        (
            request_toml("", PHONE).replace("terrorism", "defamation"),
            "de-order.p7s",
            ReasonCode::OUTSIDE_POLICY,
        ),
        (
            request_toml("", "+4930000000"),
            "de-order.p7s",
            ReasonCode::NO_DATA,
        ),
    ];
    let mut refused_bundles = Vec::new();
    for (i, (toml, sig, reason)) in cases.iter().enumerate() {
        let (bundle, _, outcome) = w.submit(toml, sig, 10 + i as u8);
        assert_eq!(outcome, Outcome::Refused(*reason), "case {i}: {sig}");
        refused_bundles.push(bundle);
    }
    // A deny-listed jurisdiction (with a signature that verifies nowhere
    // it would matter: the deny list comes first).
    let ru = request_toml("", PHONE).replace("\"DE\"", "\"RU\"");
    let (_, _, outcome) = w.submit(&ru, "de-order.p7s", 30);
    assert_eq!(outcome, Outcome::Refused(ReasonCode::DENIED_JURISDICTION));
    // A tampered signature over the order.
    let request = Request::parse(request_toml("", PHONE).as_bytes()).unwrap();
    let mut sig = read("de-order.p7s");
    let n = sig.len();
    sig[n - 3] ^= 1;
    let status = verify_order(&trust(), "DE", &read("order.pdf"), &sig, now())
        .unwrap_err()
        .status();
    let d = decide(&Policy::default(), &request, status, &w.resolve(&request));
    assert_eq!(d.outcome, Outcome::Refused(ReasonCode::INVALID_ORDER));

    // Custodians refuse to act on refusals even though they are logged.
    let me = w.records[0].public_key;
    assert!(matches!(
        refused_bundles[0].check(&me, &w.policy, None),
        Err(BundleError::NotGranted(_))
    ));

    // A granted request, and a gagged one.
    w.submit(&request_toml("", PHONE), "de-order.p7s", 40);
    let (gagged, _, _) = w.submit(&request_toml("gag_days = 90", PHONE), "de-order.p7s", 41);
    // The gagged grant is sealed in the log, yet custodians can check it.
    gagged.check(&me, &w.policy, None).unwrap();

    let report = Report::compute(
        "2026-H2".parse().unwrap(),
        w.entries.iter().map(Vec::as_slice),
    );
    assert_eq!(report.received, 10);
    assert_eq!(report.sealed_pending, 1);
    assert_eq!(report.outcomes.granted, 1);
    assert_eq!(report.outcomes.refused, 8);
    assert_eq!(report.refused_by_reason["untrusted_court"], 2);
    assert_eq!(report.refused_by_reason["certificate_expired"], 1);
    assert_eq!(report.refused_by_reason["category_never_disclosed"], 1);
    assert_eq!(report.refused_by_reason["over_broad"], 1);
    assert_eq!(report.refused_by_reason["basis_not_covered"], 1);
    assert_eq!(report.refused_by_reason["unknown_account"], 1);
    assert_eq!(report.refused_by_reason["jurisdiction_denied"], 1);
    assert_eq!(report.by_jurisdiction["RU"].refused, 1);
}
