//! The server on the PostgreSQL store (`store = "postgres://…"`): members
//! register and converse as they do on SQLite, and their state is in the
//! database. Needs `POSTERN_TEST_PG_URL`; without it the test says so and
//! passes.

mod common;

use std::time::Duration;

use common::TestServer;
use futures::FutureExt;
use postern_client::{Recipient, Target};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

async fn run(base: &str, schema: &str) {
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let t = TestServer::start_with(|cfg| cfg.store = Some(url.clone())).await;
    let (_, mut alice) = t.member("alice", "+14155552671").await;
    let (_, mut bob) = t.member("bob", "+14155552672").await;
    bob.subscribe().await.unwrap();
    alice
        .send_text(
            &Target::Contact(Recipient::Username("bob".into())),
            "hi bob",
        )
        .await
        .unwrap();
    let m = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), bob.recv())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("connection open");
        if !m.is_system() {
            break m;
        }
    };
    assert_eq!((m.from.as_str(), m.text()), ("@alice", "hi bob"));
    t.server.shutdown().await;
    assert!(
        !t.dir.path().join("server").join("postern.db").exists(),
        "no SQLite file beside a PostgreSQL store"
    );

    let mut db = PgConnection::connect(&url).await.unwrap();
    let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(accounts, 2);
}

#[tokio::test]
async fn members_converse_through_the_postgres_store() {
    let Ok(base) = std::env::var("POSTERN_TEST_PG_URL") else {
        eprintln!("skipping: POSTERN_TEST_PG_URL is not set");
        return;
    };
    let schema = format!("postern_server_test_{}", std::process::id());
    let mut admin = PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let outcome = std::panic::AssertUnwindSafe(run(&base, &schema))
        .catch_unwind()
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
