//! The transparency commands as an operator, a witness and an auditor use
//! them: a log written to a directory and served over real loopback HTTP,
//! a `postern witness` process cosigning it, `postern transparency
//! verify` accepting it run after run, and then catching a forked log.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use postern_tlog::LogWriter;
use postern_tlog::entry::{
    AuthorityType, Commitment, DataCategories, Entry, Jurisdiction, LegalRequest, Month, Outcome,
    ReasonCode,
};
use postern_tlog::http::{WitnessClient, WitnessClientError, log_router};
use postern_tlog::note::{Algorithm, Signer, Verifier};

const BIN: &str = env!("CARGO_BIN_EXE_postern");
const ORIGIN: &str = "transparency.example.org/legal";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_witness(data: &Path, log_vkey: &str) -> (Killed, String, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "witness",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            "witness.example.net",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(["--log", log_vkey])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "witness not listening in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let vkey = std::fs::read_to_string(data.join("witness.vkey"))
        .unwrap()
        .trim()
        .to_owned();
    (child, format!("http://127.0.0.1:{port}"), vkey)
}

/// A legal-request record, as the server will log them; `prefix` makes
/// two logs' records differ.
fn record(prefix: &str, i: u64) -> Vec<u8> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    id[8] = prefix.len() as u8;
    id[9] = prefix.as_bytes()[0];
    Entry::LegalRequest(LegalRequest {
        id,
        month: Month::new(2026, 11).unwrap(),
        jurisdiction: Jurisdiction::new("FR").unwrap(),
        authority: AuthorityType::Court,
        legal_basis: "CPP art. 60-1".into(),
        categories: DataCategories::PHONE_NUMBER,
        outcome: Outcome::Refused(ReasonCode::OUTSIDE_POLICY),
        accounts: 1,
        order: Commitment::to_order(&[1; 32], b"order"),
        account_ids: Commitment::to_accounts(&[2; 32], &[[3; 16]]),
    })
    .encode()
    .unwrap()
}

fn grow(w: &mut LogWriter, prefix: &str, n: u64) {
    for _ in 0..n {
        let i = w.size() + w.pending() as u64;
        w.append(record(prefix, i)).unwrap();
    }
    w.publish().unwrap();
}

fn postern(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn witness_cosigns_verify_accepts_and_a_fork_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (log_dir, fork_dir) = (tmp.path().join("log"), tmp.path().join("fork"));
    let log_key = Signer::generate(ORIGIN, Algorithm::Ed25519).unwrap();
    let log_vkey = log_key.verifier().vkey();
    let mut log = LogWriter::open(&log_dir, log_key.clone()).unwrap();
    grow(&mut log, "entry", 600);

    // One HTTP server: the real log under /log, a forked copy under /fork.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http_port = free_port();
    let router = axum::Router::new()
        .nest("/log", log_router(log_dir.clone()))
        .nest("/fork", log_router(fork_dir.clone()));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", http_port)))
        .unwrap();
    rt.spawn(async move { axum::serve(listener, router).await });
    let log_url = format!("http://127.0.0.1:{http_port}/log");

    // Cache headers: tiles forever, the checkpoint briefly.
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            text(&out[..split]).to_ascii_lowercase(),
            out[split + 4..].len(),
        )
    };
    let (head, len) = get("/log/tile/0/000");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("cache-control: public, max-age=31536000, immutable"),
        "{head}"
    );
    assert_eq!(len, 8192);
    let (head, _) = get("/log/checkpoint");
    assert!(head.contains("cache-control: public, max-age=5"), "{head}");
    let (head, _) = get("/log/tile/0/../../checkpoint");
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // A witness process, cosigning through its HTTP API.
    let (_witness, witness_url, witness_vkey) =
        start_witness(&tmp.path().join("witness"), &log_vkey);
    let client =
        WitnessClient::new(&witness_url, Verifier::from_vkey(&witness_vkey).unwrap()).unwrap();
    let sigs = rt
        .block_on(client.add_checkpoint(0, vec![], &log.checkpoint().to_string()))
        .unwrap();
    log.add_cosignatures(sigs).unwrap();

    let state = tmp.path().join("monitor.state");
    let verify = |url: &str| {
        postern(&[
            "transparency",
            "verify",
            "--log",
            url,
            "--log-key",
            &log_vkey,
            "--witness",
            &witness_vkey,
            "--quorum",
            "1",
            "--state",
            state.to_str().unwrap(),
        ])
    };
    let out = verify(&log_url);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("OK: {ORIGIN} is consistent.")),
        "{stdout}"
    );
    assert!(stdout.contains("size 600"), "{stdout}");
    assert!(stdout.contains("witness.example.net"), "{stdout}");
    assert!(
        stdout.contains("New entries: 600 legal requests, 0 sealed, 0 openings, 0 disclosures."),
        "{stdout}"
    );
    assert!(!stdout.contains("WARNING"), "{stdout}");

    // The log grows; a stale submission gets the witness's size back; the
    // right one is cosigned; verify proves the growth.
    grow(&mut log, "entry", 77);
    let stale = rt.block_on(client.add_checkpoint(0, vec![], &log.checkpoint().to_string()));
    assert!(
        matches!(stale, Err(WitnessClientError::Conflict(600))),
        "{stale:?}"
    );
    let proof = log.consistency_proof(600, 677).unwrap();
    let sigs = rt
        .block_on(client.add_checkpoint(600, proof, &log.checkpoint().to_string()))
        .unwrap();
    log.add_cosignatures(sigs).unwrap();
    let out = verify(&log_url);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("77 new entries"), "{stdout}");
    assert!(
        stdout.contains("extends the checkpoint of size 600"),
        "{stdout}"
    );

    // Without the witness's cosignature, a quorum of one fails.
    let mut unwitnessed = LogWriter::open(&fork_dir, log_key.clone()).unwrap();
    grow(&mut unwitnessed, "other", 677);
    let fork_url = format!("http://127.0.0.1:{http_port}/fork");
    let out = verify(&fork_url);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("0 of the required 1 witness cosignatures"),
        "{}",
        text(&out.stderr)
    );

    // The forked log cannot get the witness to cosign it...
    let proof = unwitnessed.consistency_proof(677, 677).unwrap();
    let refused =
        rt.block_on(client.add_checkpoint(677, proof, &unwitnessed.checkpoint().to_string()));
    assert!(
        matches!(
            refused,
            Err(WitnessClientError::Refused { status: 422, .. })
        ),
        "{refused:?}"
    );

    // ...and a monitor trusting the log's key alone still catches it: the
    // same size with another root, signed by the same key.
    let out = postern(&[
        "transparency",
        "verify",
        "--log",
        &fork_url,
        "--log-key",
        &log_vkey,
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("FORK: the log signed two different trees of the same size"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Previous checkpoint") && stderr.contains("Current checkpoint"),
        "{stderr}"
    );
    // The state still holds the honest log.
    let again = verify(&log_url);
    assert!(again.status.success(), "{}", text(&again.stderr));

    // An offline proof, written from the served log and checked offline.
    let entry = tmp.path().join("entry");
    std::fs::write(&entry, record("entry", 640)).unwrap();
    let proof_file = tmp.path().join("entry.tlog-proof");
    let out = postern(&[
        "transparency",
        "prove",
        "--log",
        &log_url,
        "--log-key",
        &log_vkey,
        "--witness",
        &witness_vkey,
        "--index",
        "640",
        "--entry",
        entry.to_str().unwrap(),
        "--out",
        proof_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read_to_string(&proof_file)
            .unwrap()
            .starts_with("c2sp.org/tlog-proof@v1\nindex 640\n")
    );
    let check = |entry_bytes: Vec<u8>| {
        std::fs::write(&entry, entry_bytes).unwrap();
        postern(&[
            "transparency",
            "check-proof",
            proof_file.to_str().unwrap(),
            "--entry",
            entry.to_str().unwrap(),
            "--log-key",
            &log_vkey,
            "--witness",
            &witness_vkey,
        ])
    };
    let out = check(record("entry", 640));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("OK: entry 640 is in"),
        "{}",
        text(&out.stdout)
    );
    let out = check(record("entry", 641));
    assert!(!out.status.success());
}

#[test]
fn a_shrunk_log_is_caught_from_a_directory_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Signer::generate(ORIGIN, Algorithm::Ed25519).unwrap();
    let vkey = key.verifier().vkey();
    let (big, small) = (tmp.path().join("big"), tmp.path().join("small"));
    grow(&mut LogWriter::open(&big, key.clone()).unwrap(), "e", 30);
    grow(&mut LogWriter::open(&small, key).unwrap(), "e", 29);
    let state = tmp.path().join("state");
    let run = |dir: &Path| {
        postern(&[
            "transparency",
            "verify",
            "--log",
            dir.to_str().unwrap(),
            "--log-key",
            &vkey,
            "--state",
            state.to_str().unwrap(),
        ])
    };
    assert!(run(&big).status.success());
    let out = run(&small);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("FORK: the log is smaller"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn monitor_reports_each_check_and_stops_on_a_fork() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Signer::generate(ORIGIN, Algorithm::Ed25519).unwrap();
    let vkey = key.verifier().vkey();
    let (log, fork) = (tmp.path().join("log"), tmp.path().join("fork"));
    grow(&mut LogWriter::open(&log, key.clone()).unwrap(), "e", 40);
    grow(&mut LogWriter::open(&fork, key).unwrap(), "f", 40);
    let state = tmp.path().join("state");
    let child = Command::new(BIN)
        .args(["transparency", "monitor", "--interval", "1", "--log"])
        .arg(&log)
        .args(["--log-key", &vkey, "--state"])
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        assert!(Instant::now() < deadline, "no first check in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Swap the served copy for a fork of the same size.
    std::fs::rename(&log, tmp.path().join("honest")).unwrap();
    std::fs::rename(&fork, &log).unwrap();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor did not stop on the fork"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        out.contains(&format!("OK: {ORIGIN} is consistent.")),
        "{out}"
    );
    assert!(
        err.contains("FORK: the log signed two different trees of the same size"),
        "{err}"
    );
}
