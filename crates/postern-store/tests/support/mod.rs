//! The stores the tests run against: a fresh SQLite file, or a fresh schema
//! in the PostgreSQL database named by `POSTERN_TEST_PG_URL`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use postern_store::{PgOptions, PgStore, SqliteOptions, SqliteStore, Store};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The environment variable naming the PostgreSQL database for tests.
pub const PG_URL: &str = "POSTERN_TEST_PG_URL";

/// A place a test's store lives; every `open` of one backend sees the same data.
pub trait Backend {
    /// The store it opens.
    type Store: Store + Clone + 'static;

    /// Opens (again) the store.
    fn open(&self) -> impl Future<Output = Self::Store>;

    /// Closes the store; later calls fail with `StoreError::Closed`.
    fn close(&self, store: &Self::Store) -> impl Future<Output = ()>;
}

/// A SQLite file in a temporary directory, removed when dropped.
pub struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    pub fn new() -> Self {
        Sqlite {
            dir: tempfile::TempDir::new().expect("temporary directory"),
        }
    }
}

impl Backend for Sqlite {
    type Store = SqliteStore;

    async fn open(&self) -> SqliteStore {
        SqliteStore::open(SqliteOptions::new(
            self.dir.path().join("data").join("postern.db"),
        ))
        .await
        .expect("open the sqlite store")
    }

    async fn close(&self, store: &SqliteStore) {
        store.close().await;
    }
}

/// A schema of its own in the test database, so that tests run in parallel;
/// [`Postgres::drop_schema`] removes it.
pub struct Postgres {
    base: String,
    schema: String,
    url: String,
}

impl Postgres {
    /// A fresh schema, or `None` (having said why) when no test database is
    /// configured.
    pub async fn new() -> Option<Self> {
        let Ok(base) = std::env::var(PG_URL) else {
            eprintln!("skipping: {PG_URL} is not set");
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let schema = format!(
            "postern_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{PG_URL} is set but the database is unreachable: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .expect("create the test schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={schema}");
        Some(Postgres { base, schema, url })
    }

    /// The URL of the test schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Another store ("node") on the same schema, with a pool of its own,
    /// small enough that many tests in parallel stay within the server's
    /// connection limit.
    pub async fn open_node(&self) -> PgStore {
        let mut opts = PgOptions::new(self.url());
        opts.max_connections = 4;
        PgStore::connect_with(opts)
            .await
            .expect("connect the postgres store")
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        let mut conn = PgConnection::connect(&self.base)
            .await
            .expect("connect to the test database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&mut conn)
        .await
        .expect("drop the test schema");
    }
}

impl Backend for Postgres {
    type Store = PgStore;

    async fn open(&self) -> PgStore {
        self.open_node().await
    }

    async fn close(&self, store: &PgStore) {
        store.close().await;
    }
}

/// Runs a test body against a fresh PostgreSQL schema and drops the schema
/// afterwards, whether the body passed or panicked. Without a test database
/// it prints why and passes.
macro_rules! with_postgres {
    ($body:expr) => {{
        use futures::FutureExt;
        if let Some(pg) = $crate::support::Postgres::new().await {
            let outcome = std::panic::AssertUnwindSafe($body(&pg))
                .catch_unwind()
                .await;
            pg.drop_schema().await;
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        }
    }};
}
