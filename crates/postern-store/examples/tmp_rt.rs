use sqlx::Connection;
use std::time::Instant;
#[tokio::main]
async fn main() {
    let dir = tempfile::TempDir::new().unwrap();
    let o = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("x.db"))
        .create_if_missing(true);
    let mut c = sqlx::sqlite::SqliteConnection::connect_with(&o)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (a INTEGER PRIMARY KEY, b BLOB)")
        .execute(&mut c)
        .await
        .unwrap();
    let t0 = Instant::now();
    for _ in 0..20000 {
        sqlx::query("SELECT 1").execute(&mut c).await.unwrap();
    }
    println!("select 1: {:?}/stmt", t0.elapsed() / 20000);
    let t0 = Instant::now();
    let mut tx = c.begin().await.unwrap();
    for i in 0..20000i64 {
        sqlx::query("INSERT INTO t VALUES (?, ?)")
            .bind(i)
            .bind(vec![0u8; 300])
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    println!("insert: {:?}/stmt", t0.elapsed() / 20000);
}
