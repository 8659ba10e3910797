//! The lawful-request process through the command line, as operators,
//! custodians and auditors run it: a `postern serve` process with three
//! custodians (k = 2) and a `postern witness` process; `postern legal
//! submit`, `approve` (two operators), `bundle`; `postern custodian
//! approve` by two custodians; `postern legal disclose`; a refusal; and
//! `postern transparency report` and `verify-report` (which notices a
//! tampered report).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{BIN, free_port};

const PHONE: &str = "+4915112345678";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "postern {args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("process exited: {status}");
        }
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fixtures(dir: &Path) -> PathBuf {
    let out = dir.join("orders");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../postern-legal/tests/fixtures/make-orders.sh");
    let status = Command::new("sh")
        .arg(script)
        .arg(&out)
        .status()
        .expect("run make-orders.sh (needs the openssl command)");
    assert!(status.success());
    out
}

fn case_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("case:"))
        .expect("a case line")
        .trim()
        .to_owned()
}

#[test]
fn a_request_goes_from_submission_to_disclosure_and_into_a_verifiable_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = |s: &str| dir.join(s).to_str().unwrap().to_owned();
    let orders = fixtures(dir);
    let order = |s: &str| orders.join(s).to_str().unwrap().to_owned();

    // Two operators, three custodians.
    let mut operators = Vec::new();
    for name in ["op1.key", "op2.key"] {
        let out = ok(&["legal", "keygen", "--out", &p(name)]);
        operators.push(
            out.lines()
                .rev()
                .find(|l| !l.is_empty())
                .unwrap()
                .to_owned(),
        );
    }
    let mut custodians = String::new();
    for (name, j) in [("c0", "CH"), ("c1", "IS"), ("c2", "NZ")] {
        ok(&[
            "custodian",
            "init",
            "--dir",
            &p(name),
            "--name",
            name,
            "--jurisdiction",
            j,
        ]);
        let record = std::fs::read_to_string(dir.join(name).join("custodian.toml")).unwrap();
        custodians.push_str(&format!("\n[[legal.custodians]]\n{record}"));
    }

    // The log's key first (the witness must know it), then the witness.
    let data = dir.join("server");
    std::fs::create_dir_all(&data).unwrap();
    let log_key = postern_tlog::note::Signer::generate(
        "legal.test/log",
        postern_tlog::note::Algorithm::Ed25519,
    )
    .unwrap();
    std::fs::write(data.join("log.key"), log_key.skey()).unwrap();
    let log_vkey = log_key.verifier().vkey();
    let witness_port = free_port();
    let mut witness = Command::new(BIN)
        .args(["witness", "--listen", &format!("127.0.0.1:{witness_port}")])
        .args([
            "--data-dir",
            &p("witness"),
            "--log",
            &log_vkey,
            "--name",
            "witness.test",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let witness_vkey = wait_for(&dir.join("witness/witness.vkey"), &mut witness);
    let _witness = Kill(witness);

    let http = free_port();
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [limits]\ncode_interval = 0\n\
             [transparency]\nquorum = 1\n\
             [[transparency.witnesses]]\nurl = \"http://127.0.0.1:{witness_port}\"\nvkey = \"{witness_vkey}\"\n\
             [legal]\nthreshold = 2\noperators = [\"{}\", \"{}\"]\n\
             trust_anchors = {{ DE = \"{}\", FR = \"{}\" }}\n{custodians}",
            free_port(),
            operators[0],
            operators[1],
            order("de-root.pem"),
            order("fr-root.pem"),
        ),
    )
    .unwrap();
    let mut server = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg("--sms-outbox")
        .arg(dir.join("outbox.jsonl"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&data.join("server-link.txt"), &mut server);
    let _server = Kill(server);

    // The member the order names registers (and so connects).
    let home = p("member");
    ok(&[
        "--home",
        &home,
        "setup",
        &data.join("server-link.txt").to_string_lossy(),
    ]);
    ok(&["--home", &home, "request-code", PHONE]);
    let outbox = std::fs::read_to_string(dir.join("outbox.jsonl")).unwrap();
    let line = outbox.lines().rev().find(|l| l.contains(PHONE)).unwrap();
    let code: serde_json::Value = serde_json::from_str(line).unwrap();
    ok(&[
        "--home",
        &home,
        "register",
        PHONE,
        "--code",
        code["code"].as_str().unwrap(),
    ]);

    let server_url = format!("http://127.0.0.1:{http}");
    let as_op = |n: usize, args: &[&str]| -> Output {
        let key = p(&format!("op{n}.key"));
        Command::new(BIN)
            .args(args)
            .env("POSTERN_OPERATOR_SERVER", &server_url)
            .env("POSTERN_OPERATOR_KEY", &key)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let op_ok = |n: usize, args: &[&str]| -> String {
        let o = as_op(n, args);
        assert!(
            o.status.success(),
            "postern {args:?} failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };

    let request = dir.join("request.toml");
    let toml = format!(
        "jurisdiction = \"DE\"\nauthority = \"court\"\nauthority_name = \"Amtsgericht Test\"\n\
         case_reference = \"351 Gs 1/26\"\nlegal_basis = \"terrorism\"\n\
         categories = [\"phone_number\", \"connection_ips\"]\n\
         window = {{ from = 2026-01-01T00:00:00Z, until = 2099-01-01T00:00:00Z }}\n\
         [[targets]]\nphone = \"{PHONE}\"\n"
    );
    std::fs::write(&request, &toml).unwrap();
    let req = request.to_str().unwrap();
    let out = op_ok(
        1,
        &[
            "legal",
            "submit",
            req,
            "--order",
            &order("order.pdf"),
            "--signature",
            &order("de-order.p7s"),
        ],
    );
    assert!(out.contains("decision:    granted"), "{out}");
    let id = case_id(&out);

    // Submitting it again is refused, and says which case it is.
    let again = as_op(
        2,
        &[
            "legal",
            "submit",
            req,
            "--order",
            &order("order.pdf"),
            "--signature",
            &order("de-order.p7s"),
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains(&id));

    // No operator key: a clear error, before anything is sent.
    let o = run(&[
        "legal",
        "list",
        "--server",
        &server_url,
        "--operator-key",
        &p("none.key"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("legal keygen"));

    // Two operators approve, then the bundle.
    let bundle = p("bundle.json");
    assert!(op_ok(1, &["legal", "approve", &id]).contains("another operator must approve"));
    let o = as_op(1, &["legal", "bundle", &id, "--out", &bundle]);
    assert!(!o.status.success(), "one approval is not enough");
    op_ok(2, &["legal", "approve", &id]);
    op_ok(1, &["legal", "bundle", &id, "--out", &bundle]);

    // Two custodians review and release.
    for c in ["c0", "c2"] {
        let common = [
            &bundle as &str,
            "--dir",
            &p(c),
            "--log",
            &log_vkey,
            "--witness",
            &witness_vkey,
        ];
        let review = ok(&[&["custodian", "review"][..], &common[..]].concat());
        assert!(review.contains("Amtsgericht Test"), "{review}");
        let rel = p(&format!("{c}.released"));
        ok(&[
            &["custodian", "approve"][..],
            &common[..],
            &[
                "--anchors",
                &format!("DE={}", order("de-root.pem")),
                "--out",
                &rel,
            ][..],
        ]
        .concat());
    }
    let package = p("package.json");
    let o = as_op(
        1,
        &[
            "legal",
            "disclose",
            &id,
            "--share",
            &p("c0.released"),
            "--out",
            &package,
        ],
    );
    assert!(!o.status.success(), "one custodian is not enough");
    assert!(!Path::new(&package).exists(), "nothing written");
    op_ok(
        1,
        &[
            "legal",
            "disclose",
            &id,
            "--share",
            &p("c0.released"),
            "--share",
            &p("c2.released"),
            "--out",
            &package,
        ],
    );
    let text = std::fs::read_to_string(&package).unwrap();
    let signed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inner: serde_json::Value =
        serde_json::from_str(signed["package"].as_str().unwrap()).unwrap();
    assert_eq!(inner["accounts"][0]["phone_number"], PHONE);
    assert_eq!(inner["accounts"][0]["connections"][0]["ip"], "127.0.0.1");

    // The member is told: no gag on this request.
    let told = ok(&["--home", &home, "notices"]);
    assert!(
        told.contains("Your data was disclosed on")
            && told.contains("phone number, connection ips"),
        "{told}"
    );
    // `recv` tells of it too, once, on standard error.
    let first = run(&["--home", &home, "recv", "--wait", "0.2"]);
    assert!(first.status.success());
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("Your data was disclosed on"), "{stderr}");
    let again = run(&["--home", &home, "recv", "--wait", "0.2"]);
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("disclosed"),
        "a notice is told once"
    );

    // A court of another jurisdiction: refused, and said why.
    let out = op_ok(
        2,
        &[
            "legal",
            "submit",
            req,
            "--order",
            &order("order.pdf"),
            "--signature",
            &order("fr-order.p7s"),
        ],
    );
    assert!(out.contains("refused (untrusted_court)"), "{out}");
    let list = op_ok(1, &["legal", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    let shown = op_ok(2, &["legal", "show", &id]);
    assert!(shown.contains("disclosed:"), "{shown}");

    // The report, from the log alone, and its check.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (year, month) = postern_legal::date::year_month(now);
    let period = format!("{year}-H{}", if month <= 6 { 1 } else { 2 });
    let log_url = format!("{server_url}/log");
    let keys = [
        "--log",
        &log_url,
        "--log-key",
        &log_vkey,
        "--witness",
        &witness_vkey,
    ];
    let out = ok(&[
        &["transparency", "report", "--period", &period][..],
        &keys[..],
        &["--signing-key", &p("report.key"), "--out", &p("reports")][..],
    ]
    .concat());
    assert!(out.contains("received 2"), "{out}");
    assert!(out.contains("disclosures 1"), "{out}");
    let report_vkey = out
        .lines()
        .find_map(|l| l.split("signed by ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let json = dir.join(format!("reports/report-{period}.json"));
    let note = dir.join(format!("reports/report-{period}.note"));
    assert!(dir.join(format!("reports/report-{period}.html")).exists());
    let verify = |report: &Path| {
        run(&[
            &["transparency", "verify-report", report.to_str().unwrap()][..],
            &keys[..],
            &[
                "--note",
                note.to_str().unwrap(),
                "--report-key",
                &report_vkey,
            ][..],
        ]
        .concat())
    };
    let o = verify(&json);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("MATCH"));
    let mut claimed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    claimed["outcomes"]["refused"] = serde_json::json!(0);
    let tampered = dir.join("tampered.json");
    std::fs::write(&tampered, claimed.to_string()).unwrap();
    let o = verify(&tampered);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("MISMATCH"));
}
