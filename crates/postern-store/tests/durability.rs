//! An acknowledged write survives the process being killed, in either store.
//!
//! The test runs itself again as a child that enqueues messages as fast as
//! it can and prints each id once `enqueue` returned; the parent SIGKILLs it
//! mid-stream, reopens the store and looks for every id it was told about.

// Only the PostgreSQL schema helpers are needed here.
#[allow(dead_code)]
#[macro_use]
mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use postern_store::{NewDevice, NewMessage, PgStore, SqliteOptions, SqliteStore, Store};

/// Where the child's store is: a SQLite file, or a `postgres://` URL.
const CHILD_STORE: &str = "POSTERN_STORE_TEST_CHILD_STORE";
/// The test the child runs, so that it knows it is the child.
const CHILD_TEST: &str = "POSTERN_STORE_TEST_CHILD_TEST";

fn device(n: u8) -> NewDevice {
    NewDevice {
        name: String::new(),
        identity_key: [n; 32],
        noise_key: [n; 32],
    }
}

async fn open(location: &str) -> Arc<dyn Store> {
    if location.starts_with("postgres:") {
        Arc::new(PgStore::connect(location).await.unwrap())
    } else {
        Arc::new(
            SqliteStore::open(SqliteOptions::new(location))
                .await
                .unwrap(),
        )
    }
}

/// True in the child: it has run its part and the test must end.
fn run_as_child(test: &str) -> bool {
    if std::env::var(CHILD_TEST).as_deref() != Ok(test) {
        return false;
    }
    let location = std::env::var(CHILD_STORE).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(child(&location));
    true
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    const TEST: &str = "acknowledged_messages_survive_sigkill";
    if run_as_child(TEST) {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let db = dir.path().join("postern.db");
    kill_and_check(TEST, db.to_str().unwrap());
}

#[test]
fn acknowledged_messages_survive_sigkill_postgres() {
    const TEST: &str = "acknowledged_messages_survive_sigkill_postgres";
    if run_as_child(TEST) {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        with_postgres!(|pg: &support::Postgres| {
            let url = pg.url().to_owned();
            async move {
                tokio::task::spawn_blocking(move || kill_and_check(TEST, &url))
                    .await
                    .unwrap()
            }
        });
    });
}

fn kill_and_check(test: &str, location: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_TEST, test)
        .env(CHILD_STORE, location)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = HashSet::new();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        if let Some(id) = line.unwrap().strip_prefix("acked ") {
            acked.insert(id.parse::<u128>().unwrap());
            if acked.len() == 300 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acked.len(), 300, "the child stopped early");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open(location).await;
        let bob = store.account_by_phone_key(&[2; 32]).await.unwrap().unwrap();
        let bob = store.devices(bob.id).await.unwrap()[0].addr;
        let stored: HashSet<u128> = store
            .fetch(bob, 0, usize::MAX, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|m| u128::from_be_bytes(m.client_message_id))
            .collect();
        let lost: Vec<_> = acked.difference(&stored).collect();
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    });
}

fn new_account(n: u8) -> postern_store::NewAccount {
    postern_store::NewAccount {
        id: postern_store::AccountId::random(),
        phone_key: [n; 32],
        country: "ZZ".into(),
        username: None,
        vault: None,
    }
}

async fn child(location: &str) {
    let store = open(location).await;
    let (_, alice) = store
        .create_account(new_account(1), device(1), 0)
        .await
        .unwrap();
    let (bob, _) = store
        .create_account(new_account(2), device(2), 0)
        .await
        .unwrap();
    let tasks = (0..8u128).map(|t| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let id = t << 64 | i;
                store
                    .enqueue(NewMessage {
                        sender: alice.addr,
                        client_message_id: id.to_be_bytes(),
                        to: bob.id.into(),
                        group_id: None,
                        group_epoch: None,
                        payload: Bytes::from_static(&[0; 256]),
                        received_at: 0,
                        expires_at: i64::MAX,
                    })
                    .await
                    .unwrap();
                println!("acked {id}");
            }
        })
    });
    futures::future::join_all(tasks).await;
}
