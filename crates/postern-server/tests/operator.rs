//! The operator API and the lawful-request process on a server over
//! loopback, with three custodians (k = 2) and a witness: requests signed
//! by operators, the attacker's side (unsigned, wrong key, replayed,
//! stale, tampered), a granted terrorism order approved by two operators,
//! released by two custodians and disclosed exactly, and each refusal
//! recorded in the log with its reason, once.
//!
//! Court orders come from `postern-legal`'s openssl script.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use postern_legal::bundle::Bundle;
use postern_legal::custodian::{CustodianKey, CustodianRecord};
use postern_legal::disclosure::SignedPackage;
use postern_legal::operator::{HEADER_SIGNATURE, sign};
use postern_server::Server;
use postern_tlog::checkpoint::Policy;
use postern_tlog::http::witness_router;
use postern_tlog::note::{Algorithm, Signer};
use postern_tlog::witness::{FileStore, Witness};
use serde_json::{Value, json};

const TARGET: &str = "+4915112345678";
const OTHER: &str = "+4915187654321";

fn fixtures() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("orders");
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../postern-legal/tests/fixtures/make-orders.sh");
        let status = std::process::Command::new("sh")
            .arg(script)
            .arg(&out)
            .status()
            .expect("run make-orders.sh (needs the openssl command)");
        assert!(status.success(), "make-orders.sh failed");
        (tmp, out)
    })
    .1
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn request_toml(jurisdiction: &str, categories: &str, target: &str) -> String {
    format!(
        r#"jurisdiction = "{jurisdiction}"
authority = "court"
authority_name = "Amtsgericht Test"
case_reference = "351 Gs 1234/26"
legal_basis = "terrorism"
categories = [{categories}]
window = {{ from = 2026-01-01T00:00:00Z, until = 2099-01-01T00:00:00Z }}

[[targets]]
{target}
"#
    )
}

fn valid_request() -> String {
    request_toml(
        "DE",
        r#""phone_number", "connection_ips""#,
        &format!("phone = \"{TARGET}\""),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A request signed by `key` at `at` over `signed_body`, sending `body`.
    async fn raw(
        &self,
        key: Option<&SigningKey>,
        method: &str,
        path: &str,
        signed_body: &[u8],
        body: &[u8],
        at: u64,
    ) -> (u16, Value) {
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        if let Some(key) = key {
            for (n, v) in sign(key, method, path, signed_body, at).pairs() {
                req = req.header(n, v);
            }
        }
        let resp = req.body(body.to_vec()).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn call(&self, key: &SigningKey, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.raw(Some(key), method, path, &body, &body, now()).await
    }

    async fn submit(&self, key: &SigningKey, toml: &str, order: &str, sig: &str) -> (u16, Value) {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.call(
            key,
            "POST",
            "/operator/requests",
            json!({
                "request": toml,
                "order": b64.encode(fixture(order)),
                "signature": b64.encode(fixture(sig)),
            }),
        )
        .await
    }
}

fn log_size(data_dir: &Path, policy: &Policy) -> u64 {
    let bytes = std::fs::read(data_dir.join("log/checkpoint")).unwrap();
    Policy {
        log: policy.log.clone(),
        witnesses: Vec::new(),
        quorum: 0,
    }
    .open(&bytes)
    .unwrap()
    .checkpoint
    .size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_signed_decided_logged_once_approved_and_disclosed_exactly() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (alice_op, bob_op, stranger) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
        SigningKey::from_bytes(&[3; 32]),
    );
    let custodian_keys: Vec<CustodianKey> = (0..3).map(|_| CustodianKey::generate()).collect();
    let records: Vec<CustodianRecord> = custodian_keys
        .iter()
        .zip(["CH", "IS", "NZ"])
        .map(|(k, j)| CustodianRecord {
            name: format!("Custodian {j}"),
            jurisdiction: j.into(),
            public_key: k.public_key().unwrap(),
        })
        .collect();
    let witness_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let witness_key = Signer::generate("witness.example.net", Algorithm::CosignatureV1).unwrap();

    let mut cfg = common::config(dir.path());
    cfg.transparency.witnesses = vec![postern_server::config::WitnessConfig {
        url: format!("http://{}", witness_listener.local_addr().unwrap()),
        vkey: witness_key.verifier().vkey(),
    }];
    cfg.transparency.quorum = Some(1);
    cfg.legal.custodians = records.clone();
    cfg.legal.threshold = Some(2);
    cfg.legal.operators = vec![
        hex::encode(alice_op.verifying_key().as_bytes()),
        hex::encode(bob_op.verifying_key().as_bytes()),
    ];
    cfg.legal.trust_anchors = [
        ("DE".to_owned(), fixtures().join("de-root.pem")),
        ("FR".to_owned(), fixtures().join("fr-root.pem")),
    ]
    .into();
    let data_dir = cfg.data_dir.clone();
    let outbox = cfg.sms.outbox.clone().unwrap();
    let server = Server::start(cfg).await.unwrap();
    let log_key = server.log_key.clone().unwrap();
    let store = FileStore::open(&dir.path().join("witness")).unwrap();
    let router = witness_router(Witness::new(
        witness_key.clone(),
        vec![log_key.clone()],
        store,
    ));
    tokio::spawn(async move { axum::serve(witness_listener, router).await });
    let policy = Policy {
        log: log_key,
        witnesses: vec![witness_key.verifier()],
        quorum: 1,
    };

    // Two members; the target connects twice (registration, then again).
    let mut members = Vec::new();
    for (name, phone) in [("target", TARGET), ("other", OTHER)] {
        let client = postern_client::Client::setup(&dir.path().join(name), &server.link).unwrap();
        let mut conn = client.connect().await.unwrap();
        conn.request_code(phone).await.unwrap();
        let code = postern_server::sms::outbox_code(&outbox, phone)
            .unwrap()
            .unwrap();
        conn.register(phone, &code, Some(name), "t").await.unwrap();
        drop(conn);
        drop(client.connect().await.unwrap());
        members.push(client);
    }

    let api = Api {
        base: format!("http://{}", server.http_addr),
        http: reqwest::Client::new(),
    };

    // The attacker's side: nothing gets through, nothing is logged.
    let list = "/operator/requests";
    let body = json!({"request": valid_request(), "order": "", "signature": ""}).to_string();
    let (status, e) = api.raw(None, "GET", list, b"", b"", now()).await;
    assert_eq!(status, 401, "unsigned: {e}");
    let (status, e) = api.raw(Some(&stranger), "GET", list, b"", b"", now()).await;
    assert_eq!(status, 401, "not an operator: {e}");
    assert!(e["error"].as_str().unwrap().contains("not an operator"));
    let (status, e) = api
        .raw(Some(&alice_op), "GET", list, b"", b"", now() - 400)
        .await;
    assert_eq!(status, 401, "stale: {e}");
    let (status, e) = api
        .raw(
            Some(&alice_op),
            "POST",
            list,
            body.as_bytes(),
            body.replace("Amtsgericht", "Landgericht").as_bytes(),
            now(),
        )
        .await;
    assert_eq!(status, 401, "tampered body: {e}");
    // A replay: the same headers twice.
    let headers = sign(&alice_op, "GET", list, b"", now());
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let mut req = api.http.get(format!("{}{list}", api.base));
        for (n, v) in headers.pairs() {
            req = req.header(n, v);
        }
        statuses.push(req.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 401], "replayed");
    // A signature by the wrong key under an operator's name.
    let mut forged = sign(&stranger, "GET", list, b"", now());
    forged.key = hex::encode(alice_op.verifying_key().as_bytes());
    let mut req = api.http.get(format!("{}{list}", api.base));
    for (n, v) in forged.pairs() {
        req = req.header(n, v);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 401);
    assert!(forged.pairs().iter().any(|(n, _)| *n == HEADER_SIGNATURE));

    // Malformed and oversized input: a clear error, nothing logged.
    let (status, e) = api
        .submit(&alice_op, "jurisdiction = ", "order.pdf", "de-order.p7s")
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("REQUEST.toml"), "{e}");
    let huge = format!("{}# {}\n", valid_request(), "x".repeat(70_000));
    let (status, e) = api
        .submit(&alice_op, &huge, "order.pdf", "de-order.p7s")
        .await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = api
        .call(&alice_op, "POST", list, json!({"request": "x"}))
        .await;
    assert_eq!(status, 400, "{e}");

    // A valid terrorism order: granted, logged once.
    let (status, case) = api
        .submit(&alice_op, &valid_request(), "order.pdf", "de-order.p7s")
        .await;
    assert_eq!(status, 201, "{case}");
    assert_eq!(case["outcome"], "granted", "{case}");
    assert_eq!(case["accounts"].as_array().unwrap().len(), 1);
    let id = case["id"].as_str().unwrap().to_owned();
    let (status, e) = api
        .submit(&bob_op, &valid_request(), "order.pdf", "de-order.p7s")
        .await;
    assert_eq!(status, 409, "duplicate: {e}");
    assert!(e["error"].as_str().unwrap().contains(&id), "{e}");

    // Two distinct operators, then the bundle.
    let bundle_path = format!("/operator/requests/{id}/bundle");
    let (status, e) = api.call(&alice_op, "GET", &bundle_path, Value::Null).await;
    assert_eq!(status, 409, "no approval yet: {e}");
    let approve = format!("/operator/requests/{id}/approve");
    for _ in 0..2 {
        let (status, c) = api.call(&alice_op, "POST", &approve, json!({})).await;
        assert_eq!((status, c["approvals"].as_array().unwrap().len()), (200, 1));
    }
    let (status, e) = api.call(&alice_op, "GET", &bundle_path, Value::Null).await;
    assert_eq!(status, 409, "one operator twice is one approval: {e}");
    let (status, c) = api.call(&bob_op, "POST", &approve, json!({})).await;
    assert_eq!((status, c["approvals"].as_array().unwrap().len()), (200, 2));
    let (status, bundle) = api.call(&bob_op, "GET", &bundle_path, Value::Null).await;
    assert_eq!(status, 200, "{bundle}");
    let bundle = Bundle::parse(bundle.to_string().as_bytes()).unwrap();

    // Custodians release against the cosigned log.
    let release = |i: usize| released_by(&custodian_keys[i], &records[i], &bundle, &policy);
    let disclose = format!("/operator/requests/{id}/disclose");
    let (status, e) = api
        .call(
            &alice_op,
            "POST",
            &disclose,
            json!({"released": [release(0)]}),
        )
        .await;
    assert_eq!(status, 409, "fewer than k custodians: {e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("nothing was disclosed")
    );
    let (status, e) = api
        .call(
            &alice_op,
            "POST",
            &disclose,
            json!({"released": ["not hex"]}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    let (status, package) = api
        .call(
            &alice_op,
            "POST",
            &disclose,
            json!({"released": [release(0), release(2)]}),
        )
        .await;
    assert_eq!(status, 200, "{package}");
    let signed: SignedPackage = serde_json::from_value(package).unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(
        &hex::decode(&signed.key).unwrap().try_into().unwrap(),
    )
    .unwrap();
    let p = signed.verify(&key).unwrap();
    assert_eq!(p.accounts.len(), 1);
    assert_eq!(p.accounts[0].phone_number.as_deref(), Some(TARGET));
    let ips = p.accounts[0].connections.as_ref().unwrap();
    assert!(ips.len() >= 2, "{ips:?}");
    assert!(ips.iter().all(|c| c.ip == "127.0.0.1"), "{ips:?}");
    assert!(!signed.package.contains(OTHER));
    let (status, e) = api
        .call(
            &alice_op,
            "POST",
            &disclose,
            json!({"released": [release(0), release(2)]}),
        )
        .await;
    assert_eq!(status, 409, "disclosed once: {e}");

    // The member is told (no gag), the other member is not.
    let notices = members[0].connect().await.unwrap().notices().await.unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].categories, ["phone_number", "connection_ips"]);
    assert_eq!(notices[0].jurisdiction, "DE");
    assert_eq!(notices[0].log_index, case["log_index"].as_u64().unwrap());
    let other = members[1].connect().await.unwrap().notices().await.unwrap();
    assert!(other.is_empty());

    // A gagged request: logged sealed, disclosed, and told only once the
    // gag lapses, when its opening joins the log.
    let gagged = request_toml("DE", r#""phone_number""#, &format!("phone = \"{OTHER}\"")).replace(
        "legal_basis = \"terrorism\"\n",
        "legal_basis = \"terrorism\"\ngag_days = 30\n",
    );
    let (status, g) = api
        .submit(&alice_op, &gagged, "order.pdf", "de-order.p7s")
        .await;
    assert_eq!(
        (status, g["outcome"].as_str()),
        (201, Some("granted")),
        "{g}"
    );
    let gid = g["id"].as_str().unwrap().to_owned();
    for op in [&alice_op, &bob_op] {
        api.call(
            op,
            "POST",
            &format!("/operator/requests/{gid}/approve"),
            json!({}),
        )
        .await;
    }
    let (status, gb) = api
        .call(
            &bob_op,
            "GET",
            &format!("/operator/requests/{gid}/bundle"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{gb}");
    let gbundle = Bundle::parse(gb.to_string().as_bytes()).unwrap();
    let released: Vec<String> = [0usize, 1]
        .iter()
        .map(|&i| released_by(&custodian_keys[i], &records[i], &gbundle, &policy))
        .collect();
    // A bundle whose decision is not what the log holds at that proof:
    // no custodian releases anything for it.
    let mut missing = bundle.clone();
    missing.proof = gbundle.proof.clone();
    assert!(matches!(
        missing.check(&records[0].public_key, &policy, None),
        Err(postern_legal::bundle::BundleError::NotInLog(_))
    ));
    let (status, e) = api
        .call(
            &alice_op,
            "POST",
            &format!("/operator/requests/{gid}/disclose"),
            json!({ "released": released }),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert!(
        members[1]
            .connect()
            .await
            .unwrap()
            .notices()
            .await
            .unwrap()
            .is_empty()
    );
    let other_account = members[1]
        .connect()
        .await
        .unwrap()
        .whoami()
        .await
        .unwrap()
        .account;
    let cases = server.cases();
    assert_eq!(cases.open_lapsed_gags(now()).await.unwrap(), 0, "not yet");
    let lapsed = now() + 31 * 86_400;
    assert!(cases.notices(other_account, now()).unwrap().is_empty());
    assert_eq!(cases.notices(other_account, lapsed).unwrap().len(), 1);
    assert_eq!(cases.open_lapsed_gags(lapsed).await.unwrap(), 1);
    assert_eq!(
        cases.open_lapsed_gags(lapsed).await.unwrap(),
        0,
        "opened once"
    );
    // The grant and its disclosure; the sealed request, its disclosure
    // and its opening.
    let logged_before_refusals = 5;

    // Each refusal, recorded with its reason.
    let de_phone = format!("phone = \"{TARGET}\"");
    let both = r#""phone_number", "connection_ips""#;
    let refusals = [
        (
            request_toml("DE", both, &de_phone),
            "other.pdf",
            "de-order.p7s",
            "no_valid_order",
        ),
        (
            request_toml("DE", both, &de_phone),
            "order.pdf",
            "de-expired.p7s",
            "certificate_expired",
        ),
        (
            request_toml("DE", both, &de_phone),
            "order.pdf",
            "fr-order.p7s",
            "untrusted_court",
        ),
        (
            request_toml("RU", both, &de_phone),
            "order.pdf",
            "de-order.p7s",
            "jurisdiction_denied",
        ),
        (
            request_toml("DE", r#""message_content""#, &de_phone),
            "order.pdf",
            "de-order.p7s",
            "category_never_disclosed",
        ),
        (
            request_toml("DE", both, "account = \"*\""),
            "order.pdf",
            "de-order.p7s",
            "over_broad",
        ),
    ];
    for (toml, order, sig, reason) in &refusals {
        let (status, c) = api.submit(&bob_op, toml, order, sig).await;
        assert_eq!(status, 201, "{c}");
        assert_eq!(c["outcome"], "refused", "{reason}: {c}");
        assert_eq!(c["reasons"][0], *reason, "{c}");
        let (status, e) = api
            .call(
                &alice_op,
                "POST",
                &format!("/operator/requests/{}/approve", c["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(status, 409, "a refused case is not approved: {e}");
    }
    let (status, all) = api.call(&alice_op, "GET", list, Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 2 + refusals.len());
    // One log entry per case (and the opening): nothing twice, nothing
    // for bad input.
    let expected = logged_before_refusals + refusals.len() as u64;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while log_size(&data_dir, &policy) < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(log_size(&data_dir, &policy), expected);
    drop(members);
    server.shutdown().await;
}

/// What custodian `key` (listed as `record`) releases for `bundle`: one
/// hex-encoded share a line, as `postern custodian approve` writes them.
fn released_by(
    key: &CustodianKey,
    record: &CustodianRecord,
    bundle: &Bundle,
    policy: &Policy,
) -> String {
    let approval = bundle.check(&record.public_key, policy, None).unwrap();
    approval
        .shares
        .iter()
        .map(|(a, w)| {
            let r = key
                .release(&approval.request_id, a, w, &approval.disclosure_key)
                .unwrap();
            format!("{}\n", hex::encode(r.encode()))
        })
        .collect()
}
