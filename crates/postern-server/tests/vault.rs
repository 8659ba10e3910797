//! The PII vault as a server uses it: members register and connect over
//! loopback, and then neither the server's database files (SQLite: the
//! raw bytes, WAL included; PostgreSQL: every text and bytea value) nor
//! its log output hold a phone number in any common form or the client's
//! address. The custodians' keys, and only they, open the sealed records.
//! A database from before the vault is sealed at start, or refused.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, Once};

use common::TestServer;
use postern_client::Recipient;
use postern_legal::custodian::{CustodianKey, CustodianRecord, WrappedShare};
use postern_legal::vault::{SealedRecord, VaultPublicKey, VaultSecret};
use postern_server::{Server, ServerConfig};
use postern_store::{AccountId, AccountStore, SqliteOptions, SqliteStore, VaultStore};
use sqlx::Connection as _;

const ALICE: &str = "+14155552671";
const BOB: &str = "+442079460958";

/// Every way a number might be written down: E.164, without the plus,
/// national forms with spaces, dashes and brackets, international with
/// spaces, and its digits as a big- or little-endian integer.
fn phone_forms(e164: &str) -> Vec<Vec<u8>> {
    let digits = &e164[1..];
    let mut forms: Vec<String> = vec![e164.into(), digits.into()];
    if let Some(national) = digits.strip_prefix('1') {
        let (a, b, c) = (&national[..3], &national[3..6], &national[6..]);
        forms.extend([
            national.to_owned(),
            format!("{a}-{b}-{c}"),
            format!("({a}) {b}-{c}"),
            format!("{a} {b} {c}"),
            format!("+1 {a} {b} {c}"),
            format!("+1-{a}-{b}-{c}"),
        ]);
    }
    if let Some(national) = digits.strip_prefix("44") {
        forms.extend([
            format!("0{national}"),
            format!("0{} {} {}", &national[..2], &national[2..6], &national[6..]),
            format!(
                "+44 {} {} {}",
                &national[..2],
                &national[2..6],
                &national[6..]
            ),
        ]);
    }
    let mut out: Vec<Vec<u8>> = forms.into_iter().map(String::into_bytes).collect();
    let n: u64 = digits.parse().unwrap();
    out.push(n.to_be_bytes().to_vec());
    out.push(n.to_le_bytes().to_vec());
    out
}

/// The client's address as text and as bytes (v4, v4-mapped v6).
fn ip_forms(ip: IpAddr) -> Vec<Vec<u8>> {
    let IpAddr::V4(v4) = ip else {
        panic!("the test connects over IPv4 loopback")
    };
    vec![
        v4.to_string().into_bytes(),
        format!("::ffff:{v4}").into_bytes(),
        v4.octets().to_vec(),
        v4.to_ipv6_mapped().octets().to_vec(),
    ]
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_absent(what: &str, haystack: &[u8], needles: &[Vec<u8>]) {
    for n in needles {
        if let Some(at) = haystack.windows(n.len()).position(|w| w == n) {
            let context =
                &haystack[at.saturating_sub(200)..(at + n.len() + 100).min(haystack.len())];
            panic!(
                "{what} holds {:?}: …{}…",
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(context)
            );
        }
    }
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the server logs, down to debug, from every thread.
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .init();
    });
}

/// The server listens on 127.0.0.2; clients connect from 127.0.0.1 (the
/// kernel's source for loopback), so the client's address is told apart
/// from the server's own, which the link and the log may name.
fn on_loopback_2(cfg: &mut ServerConfig) {
    cfg.listen = "127.0.0.2:0".parse().unwrap();
    cfg.http_listen = "127.0.0.2:0".parse().unwrap();
}

const CLIENT_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Registers alice and bob, connects again (authenticated), resolves a
/// number and asks whoami: every path that handles a number or logs a
/// connection.
async fn exercise(t: &TestServer) -> AccountId {
    let (alice, conn) = t.member("alice", ALICE).await;
    let (_bob, _) = t.member("bob", BOB).await;
    let me = conn.whoami().await.unwrap();
    assert_eq!(me.phone, ALICE, "the client remembers its own number");
    drop(conn);
    let conn = alice.connect().await.unwrap();
    let carol = t.client("carol");
    let mut c = carol.connect().await.unwrap();
    c.request_code("+14155552673").await.unwrap();
    c.register("+14155552673", &t.code("+14155552673"), None, "t")
        .await
        .unwrap();
    let found = c
        .resolve(&Recipient::Phone("+1 (415) 555-2671".into()))
        .await
        .unwrap();
    assert_eq!(found, me.account);
    drop(conn);
    me.account
}

/// Opens an account's sealed records with the development custodian's key
/// (k = 1): the records exist and hold what was sealed.
async fn open_with_development_custodian(data_dir: &Path, account: AccountId) {
    let key_hex = std::fs::read_to_string(data_dir.join("dev-custodian.key")).unwrap();
    let key = CustodianKey::from_bytes(hex::decode(key_hex.trim()).unwrap().try_into().unwrap());
    let store = SqliteStore::open(SqliteOptions::new(data_dir.join("postern.db")))
        .await
        .unwrap();
    let entry = store.vault(account).await.unwrap().expect("a vault entry");
    let wrapped = WrappedShare::decode(&entry.shares[0].1).unwrap();
    let share = key.unwrap_share(&account.0, &wrapped).unwrap();
    let secret = VaultSecret::combine(&[share], 1, &VaultPublicKey(entry.public_key)).unwrap();
    let phone = SealedRecord::decode(&entry.sealed_phone).unwrap();
    assert_eq!(secret.open_phone(&account.0, &phone).unwrap(), ALICE);
    let conns = store.connections(account, 0, i64::MAX).await.unwrap();
    assert!(
        conns.len() >= 2,
        "registration and the later connection: {conns:?}"
    );
    for c in conns {
        let r = secret
            .open_ip(&account.0, &SealedRecord::decode(&c.sealed).unwrap())
            .unwrap();
        assert_eq!(r.ip, CLIENT_IP);
        assert_eq!(r.at, u64::try_from(c.at / 1000).unwrap());
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_database_files_nor_the_log_hold_a_phone_number_or_an_address() {
    capture_logs();
    let t = TestServer::start_with(on_loopback_2).await;
    let alice = exercise(&t).await;

    let data_dir = t.dir.path().join("server");
    let mut needles = phone_forms(ALICE);
    needles.extend(phone_forms(BOB));
    needles.extend(phone_forms("+14155552673"));
    needles.extend(ip_forms(CLIENT_IP));
    // While the server runs (the WAL holds the latest writes), and after.
    search_database_files(&data_dir, "running", &needles);
    assert!(
        data_dir.join("postern.db-wal").exists(),
        "the WAL was searched"
    );
    let TestServer { server, dir, .. } = t;
    server.shutdown().await;
    search_database_files(&data_dir, "stopped", &needles);
    let logs = LOGS.lock().unwrap().clone();
    assert!(find(&logs, b"account registered"), "the log was captured");
    assert_absent("the server's log", &logs, &needles);

    open_with_development_custodian(&data_dir, alice).await;
    drop(dir);
}

fn search_database_files(data_dir: &Path, moment: &str, needles: &[Vec<u8>]) {
    // SQLite may remove its -wal/-shm files between listing and reading
    // (a checkpoint moved their pages into the main file): read the whole
    // set again until it holds still.
    for _ in 0..10 {
        let mut contents = Vec::new();
        let mut vanished = false;
        for entry in std::fs::read_dir(data_dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("postern.db") {
                match std::fs::read(&path) {
                    Ok(bytes) => contents.push((name, bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => vanished = true,
                    Err(e) => panic!("cannot read {name}: {e}"),
                }
            }
        }
        if vanished {
            continue;
        }
        assert!(!contents.is_empty(), "the database file is there");
        for (name, bytes) in contents {
            assert_absent(&format!("{name} ({moment})"), &bytes, needles);
        }
        return;
    }
    panic!("the database files kept changing under the search");
}

fn custodians() -> (Vec<CustodianKey>, Vec<CustodianRecord>) {
    let keys: Vec<CustodianKey> = (0..3).map(|_| CustodianKey::generate()).collect();
    let records = keys
        .iter()
        .zip(["CH", "IS", "NZ"])
        .enumerate()
        .map(|(i, (k, j))| CustodianRecord {
            name: format!("custodian {i}"),
            jurisdiction: j.into(),
            public_key: k.public_key().unwrap(),
        })
        .collect();
    (keys, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_numbers_from_before_the_vault_are_sealed_to_the_custodians_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    // Every server in this file: the log test captures them all.
    on_loopback_2(&mut cfg);
    let data_dir = cfg.data_dir.clone();
    let server = Server::start(cfg.clone()).await.unwrap();
    // Restarts listen where the client's link points.
    cfg.listen = server.client_addr;
    cfg.http_listen = server.http_addr;
    let client = postern_client::Client::setup(&dir.path().join("alice"), &server.link).unwrap();
    let mut conn = client.connect().await.unwrap();
    conn.request_code(ALICE).await.unwrap();
    let code = postern_server::sms::outbox_code(&dir.path().join("outbox.jsonl"), ALICE)
        .unwrap()
        .unwrap();
    let account = conn
        .register(ALICE, &code, Some("alice"), "t")
        .await
        .unwrap()
        .account;
    drop(conn);
    server.shutdown().await;

    // Make it look like a database from before the vault: the number in
    // clear in the accounts row, no vault entry.
    let url = format!("sqlite://{}", data_dir.join("postern.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM vault_accounts")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE accounts SET phone_key = ?, country = 'ZZ'")
        .bind(ALICE)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    // The development custodian is no place for real numbers.
    let err = Server::start(cfg.clone())
        .await
        .err()
        .expect("refused with only the development custodian");
    let msg = format!("{err:#}");
    assert!(msg.contains("[[legal.custodians]]"), "{msg}");
    assert!(!msg.contains(ALICE), "{msg}");

    let (keys, records) = custodians();
    cfg.legal.custodians = records;
    cfg.legal.threshold = Some(2);
    let server = Server::start(cfg.clone()).await.unwrap();
    let conn = client.connect().await.unwrap();
    assert_eq!(conn.whoami().await.unwrap().account, account);
    let bob = postern_client::Client::setup(&dir.path().join("bob"), &server.link).unwrap();
    let mut b = bob.connect().await.unwrap();
    b.request_code(BOB).await.unwrap();
    let code = postern_server::sms::outbox_code(&dir.path().join("outbox.jsonl"), BOB)
        .unwrap()
        .unwrap();
    b.register(BOB, &code, None, "t").await.unwrap();
    assert_eq!(
        b.resolve(&Recipient::Phone(ALICE.into())).await.unwrap(),
        account,
        "found by its sealed number's key"
    );
    drop((conn, b));
    server.shutdown().await;

    let store = SqliteStore::open(SqliteOptions::new(data_dir.join("postern.db")))
        .await
        .unwrap();
    let entry = store.vault(account).await.unwrap().unwrap();
    assert_eq!(entry.threshold, 2);
    let share = |i: usize| {
        let wrapped = entry
            .shares
            .iter()
            .find(|(c, _)| *c == keys[i].public_key().unwrap())
            .unwrap();
        keys[i]
            .unwrap_share(&account.0, &WrappedShare::decode(&wrapped.1).unwrap())
            .unwrap()
    };
    let pk = VaultPublicKey(entry.public_key);
    assert!(VaultSecret::combine(&[share(0)], 2, &pk).is_err());
    let secret = VaultSecret::combine(&[share(0), share(2)], 2, &pk).unwrap();
    let sealed = SealedRecord::decode(&entry.sealed_phone).unwrap();
    assert_eq!(secret.open_phone(&account.0, &sealed).unwrap(), ALICE);
    assert_eq!(store.account(account).await.unwrap().unwrap().country, "US");
    store.close().await;
}

async fn pg_run(base: &str, schema: &str) {
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let t = TestServer::start_with(|cfg| {
        on_loopback_2(cfg);
        cfg.store = Some(url.clone());
    })
    .await;
    exercise(&t).await;
    t.server.shutdown().await;

    let mut needles = phone_forms(ALICE);
    needles.extend(phone_forms(BOB));
    needles.extend(ip_forms(CLIENT_IP));
    // pg_dump's text form of the schema, when the tool is installed…
    match std::process::Command::new("pg_dump")
        .args(["--data-only", "--schema", schema, "--dbname", base])
        .output()
    {
        Ok(out) if out.status.success() => {
            assert!(out.stdout.len() > 1000, "pg_dump wrote the data");
            assert_absent("pg_dump", &out.stdout, &needles);
        }
        Ok(out) => panic!("pg_dump failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => eprintln!("pg_dump is not installed; reading the columns only"),
    }
    // …and every text and bytea value, as bytes (pg_dump shows bytea as hex).
    let mut db = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text \
         FROM information_schema.columns WHERE table_schema = $1 \
         AND data_type IN ('text', 'bytea', 'character varying')",
    )
    .bind(schema)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(columns.iter().any(|(t, _, _)| t == "vault_connections"));
    let mut values = 0;
    for (table, column, ty) in columns {
        let sql = if ty == "bytea" {
            format!("SELECT \"{column}\" FROM \"{table}\" WHERE \"{column}\" IS NOT NULL")
        } else {
            format!(
                "SELECT convert_to(\"{column}\", 'UTF8') FROM \"{table}\" WHERE \"{column}\" IS NOT NULL"
            )
        };
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut db)
            .await
            .unwrap();
        for v in rows {
            values += 1;
            assert_absent(&format!("{table}.{column}"), &v, &needles);
        }
    }
    assert!(values > 10, "the tables were read ({values} values)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_holds_no_phone_number_or_address_either() {
    let Ok(base) = std::env::var("POSTERN_TEST_PG_URL") else {
        eprintln!("skipping: POSTERN_TEST_PG_URL is not set");
        return;
    };
    let schema = format!("postern_vault_test_{}", std::process::id());
    let mut admin = sqlx::postgres::PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let outcome =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(pg_run(&base, &schema)))
            .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
