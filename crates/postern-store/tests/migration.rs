//! A database made by the schema before phone numbers left the clear
//! (SQLite up to 0004, PostgreSQL up to 0003), with an account and a code,
//! brought up to date by opening it: the account's number is listed for
//! sealing, sealing it replaces the number by its key, and the codes (which
//! held numbers) are gone.

use std::path::Path;

use postern_store::{AccountId, AccountStore, CodeStore, SqliteOptions, SqliteStore};
use sqlx::Connection;

/// The migrations of `dir` up to and including `last`, copied to a
/// temporary directory.
fn migrations_up_to(dir: &str, last: &str) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dir);
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() <= last {
            std::fs::copy(&path, out.path().join(name)).unwrap();
        }
    }
    out
}

const ACCOUNT: [u8; 16] = [7; 16];

#[tokio::test]
async fn a_sqlite_database_from_before_the_vault_keeps_its_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let old = migrations_up_to("sqlite", "0004");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(old.path())
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO accounts (id, phone, username, created_at) VALUES (?, '+14155552671', 'alice', 1)",
        )
        .bind(&ACCOUNT[..])
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO codes (phone, code_hash, issued_at, expires_at) VALUES ('+14155552671', ?, 1, 2)",
        )
        .bind(&[0u8; 32][..])
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let store = SqliteStore::open(SqliteOptions::new(&path)).await.unwrap();
    let legacy = store.legacy_phones(10).await.unwrap();
    assert_eq!(legacy.len(), 1);
    assert_eq!(
        (legacy[0].account, legacy[0].phone.as_str()),
        (AccountId(ACCOUNT), "+14155552671")
    );
    let account = store.account(AccountId(ACCOUNT)).await.unwrap().unwrap();
    assert_eq!(
        (account.username.as_deref(), account.country.as_str()),
        (Some("alice"), "ZZ")
    );
    assert_eq!(store.codes_issued_since(&[0; 32], 0).await.unwrap(), 0);
    store
        .seal_legacy_phone(AccountId(ACCOUNT), [9; 32], "US", None)
        .await
        .unwrap();
    assert!(store.legacy_phones(10).await.unwrap().is_empty());
    let found = store.account_by_phone_key(&[9; 32]).await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.country.as_str()),
        (AccountId(ACCOUNT), "US")
    );
    // Sealing twice is refused: the row no longer holds a number.
    assert!(
        store
            .seal_legacy_phone(AccountId(ACCOUNT), [9; 32], "US", None)
            .await
            .is_err()
    );
    store.close().await;
}

#[tokio::test]
async fn a_postgres_database_from_before_the_vault_keeps_its_accounts() {
    let Ok(base) = std::env::var("POSTERN_TEST_PG_URL") else {
        eprintln!("skipping: POSTERN_TEST_PG_URL is not set");
        return;
    };
    let schema = format!("postern_migration_test_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let outcome = async {
        let old = migrations_up_to("postgres", "0003");
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(old.path())
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO accounts (id, phone, username, created_at) VALUES ($1, '+14155552671', 'alice', 1)",
        )
        .bind(&ACCOUNT[..])
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO codes (phone, code_hash, issued_at, expires_at) VALUES ('+14155552671', $1, 1, 2)",
        )
        .bind(&[0u8; 32][..])
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        let store = postern_store::PgStore::connect(&url).await.unwrap();
        let legacy = store.legacy_phones(10).await.unwrap();
        assert_eq!(legacy.len(), 1);
        assert_eq!(legacy[0].phone, "+14155552671");
        store
            .seal_legacy_phone(AccountId(ACCOUNT), [9; 32], "US", None)
            .await
            .unwrap();
        let found = store.account_by_phone_key(&[9; 32]).await.unwrap().unwrap();
        assert_eq!(
            (found.id, found.country.as_str()),
            (AccountId(ACCOUNT), "US")
        );
        assert!(store.legacy_phones(10).await.unwrap().is_empty());
        store.close().await;
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
