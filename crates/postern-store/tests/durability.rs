//! An acknowledged write survives the process being killed.
//!
//! The test runs itself again as a child that enqueues messages as fast as
//! it can and prints each id once `enqueue` returned; the parent SIGKILLs it
//! mid-stream, reopens the file and looks for every id it was told about.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use postern_store::{AccountStore, NewDevice, NewMessage, QueueStore, SqliteOptions, SqliteStore};

const CHILD_DB: &str = "POSTERN_STORE_TEST_CHILD_DB";
const TEST: &str = "acknowledged_messages_survive_sigkill";

fn device(n: u8) -> NewDevice {
    NewDevice {
        name: String::new(),
        identity_key: [n; 32],
        noise_key: [n; 32],
    }
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        return child(db.into());
    }
    let dir = tempfile::TempDir::new().unwrap();
    let db = dir.path().join("postern.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &db)
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
        let store = SqliteStore::open(SqliteOptions::new(&db)).await.unwrap();
        let bob = store.account_by_phone("+15550002").await.unwrap().unwrap();
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

fn child(db: std::path::PathBuf) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(db)).await.unwrap();
        let (_, alice) = store
            .create_account("+15550001", None, device(1), 0)
            .await
            .unwrap();
        let (bob, _) = store
            .create_account("+15550002", None, device(2), 0)
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
    });
}
