use bytes::Bytes;
use postern_store::*;
use std::time::Instant;
#[tokio::main]
async fn main() {
    for sync in [Synchronous::Normal, Synchronous::Full] {
        let dir = tempfile::TempDir::new().unwrap();
        let mut o = SqliteOptions::new(dir.path().join("x.db"));
        o.synchronous = sync;
        let store = SqliteStore::open(o).await.unwrap();
        let d = |n: u8| NewDevice {
            name: String::new(),
            identity_key: [n; 32],
            noise_key: [n; 32],
        };
        let (_, a) = store.create_account("+1", None, d(1), 0).await.unwrap();
        let (b, _) = store.create_account("+2", None, d(2), 0).await.unwrap();
        let n_tasks = 256u128;
        let per = 400u128;
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n_tasks)
            .map(|t| {
                let s = store.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        s.enqueue(NewMessage {
                            sender: a.addr,
                            client_message_id: (t << 64 | i).to_be_bytes(),
                            to: b.id,
                            payload: Bytes::from_static(&[7; 300]),
                            received_at: 0,
                            expires_at: 1,
                        })
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let el = t0.elapsed();
        let n = (n_tasks * per) as f64;
        println!(
            "{sync:?}: {:.0} msg/s, {:?}",
            n / el.as_secs_f64(),
            store.stats()
        );
    }
}
