//! The layer against real databases: an SQLite file and PostgreSQL (a fresh database per test,
//! skipped loudly unless `REQUIRE_POSTGRES=1`).

use std::time::Duration;

use db::{Error, Migrations, Options, Pool};
use serde_json::{json, Value};
use test_support::{sqlite_url, temp_dir, PgTestDb};

fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("tests/migrations/sqlite"),
        postgres: sqlx::migrate!("tests/migrations/postgres"),
    }
}

async fn sqlite_rw(dir: &tempfile::TempDir) -> (Pool, String) {
    let url = sqlite_url(&dir.path().join("t.db"));
    let pool = Pool::connect(&url, &Options::read_write("db-test"))
        .await
        .expect("open sqlite");
    (pool, url)
}

/// Placeholders are `$N` on both engines and a `'$1'` literal stays text.
async fn placeholders_and_literals(pool: &Pool) {
    let rows = pool
        .fetch_json(
            "SELECT $2 AS second, '$1' AS literal, $1 AS first",
            &[json!("a"), json!("b")],
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"second": "b", "literal": "$1", "first": "a"})
    );
}

/// Writes and reads back every JSON kind through a migrated table.
async fn json_round_trip(pool: &Pool) {
    pool.migrate(&migrations()).await.unwrap();
    for body in ["one", "two", "three"] {
        let n = pool
            .execute_json("INSERT INTO notes (body) VALUES ($1)", &[json!(body)])
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let rows = pool
        .fetch_json(
            "SELECT id, body FROM notes WHERE id >= $1 ORDER BY id",
            &[json!(1)],
            2,
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "the limit cuts the result");
    assert_eq!(rows[1]["body"], json!("two"));
    assert_eq!(rows[1]["id"], json!(2));
    let rows = pool
        .fetch_json(
            "SELECT $1 IS NULL AS is_null, CAST(2.5 AS REAL) AS half, CAST($2 AS TEXT) AS txt",
            &[Value::Null, json!("x")],
            1,
        )
        .await
        .unwrap();
    assert_eq!(rows[0]["half"], json!(2.5));
    assert_eq!(rows[0]["txt"], json!("x"));
    assert!(matches!(rows[0]["is_null"], Value::Bool(true)) || rows[0]["is_null"] == json!(1));
}

#[tokio::test]
async fn sqlite_placeholders_rows_and_migrations() {
    let dir = temp_dir();
    let (pool, _) = sqlite_rw(&dir).await;
    placeholders_and_literals(&pool).await;
    json_round_trip(&pool).await;
    let rows = pool
        .fetch_json("SELECT x'00ff' AS b, NULL AS n", &[], 1)
        .await
        .unwrap();
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"b": "<binary>", "n": null})
    );
    // Foreign keys are on in read-write mode.
    let err = pool
        .execute_json(
            "INSERT INTO tags (note_id, tag) VALUES ($1, $2)",
            &[json!(99), json!("t")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Query(_)), "{err}");
}

#[tokio::test]
async fn sqlite_read_only_refuses_writes() {
    let dir = temp_dir();
    let (rw, url) = sqlite_rw(&dir).await;
    rw.migrate(&migrations()).await.unwrap();
    let ro = Pool::connect_lazy(&url, &Options::read_only("db-test")).unwrap();
    assert_eq!(
        ro.fetch_json("SELECT COUNT(*) AS n FROM notes", &[], 1)
            .await
            .unwrap()[0]["n"],
        json!(0)
    );
    let err = ro
        .execute_json("INSERT INTO notes (body) VALUES ($1)", &[json!("x")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
}

/// Six pools (as six processes would) migrate one fresh database at the same moment; every run
/// succeeds and each migration is applied once.
async fn migrate_at_once(url: &str) {
    let o = Options::read_write("db-test");
    let mut pools = Vec::new();
    for _ in 0..6 {
        pools.push(Pool::connect(url, &o).await.unwrap());
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(pools.len()));
    let runs: Vec<_> = pools
        .iter()
        .cloned()
        .map(|p| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                p.migrate(&migrations()).await
            })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let applied = pools[0]
        .fetch_json("SELECT COUNT(*) AS n FROM _sqlx_migrations", &[], 1)
        .await
        .unwrap();
    assert_eq!(applied[0]["n"], json!(2));
    for p in pools {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_migrations_from_several_processes_at_once() {
    let dir = temp_dir();
    migrate_at_once(&sqlite_url(&dir.path().join("race.db"))).await;
}

#[tokio::test]
async fn bad_urls_are_configuration_errors() {
    let o = Options::read_only("db-test");
    assert!(matches!(
        Pool::connect_lazy("mysql://h/db", &o),
        Err(Error::Url(_))
    ));
    assert!(matches!(
        Pool::connect_lazy("postgres://h:notaport/db", &o),
        Err(Error::Url(_))
    ));
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let closed = test_support::Port::new();
    let url = format!("postgres://postgres@127.0.0.1:{}/x", closed.port);
    let pool = Pool::connect_lazy(
        &url,
        &Options::read_only("db-test").acquire_timeout(Duration::from_millis(500)),
    )
    .unwrap();
    let err = db::timed(Duration::from_secs(5), pool.ping())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

#[tokio::test]
async fn postgres_placeholders_rows_and_migrations() {
    let Some(pg) = PgTestDb::create().await else {
        return;
    };
    let pool = Pool::connect(&pg.url, &Options::read_write("db-test"))
        .await
        .unwrap();
    placeholders_and_literals(&pool).await;
    json_round_trip(&pool).await;
    let rows = pool
        .fetch_json(
            "SELECT CAST(7 AS SMALLINT) AS i2, 8 AS i4, CAST(9 AS BIGINT) AS i8, CAST(1.5 AS REAL) AS f4, \
             TRUE AS yes, DATE '2025-05-01' AS d, TIMESTAMPTZ '2025-05-01 10:00:00+00' AS tz, \
             TIMESTAMP '2025-05-01 10:00:00' AS ts, '\\x00ff'::bytea AS b, CAST(1.25 AS NUMERIC) AS num",
            &[],
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"i2": 7, "i4": 8, "i8": 9, "f4": 1.5, "yes": true, "d": "2025-05-01",
               "tz": "2025-05-01T10:00:00+00:00", "ts": "2025-05-01 10:00:00", "b": "<binary>",
               "num": "<unsupported type>"})
    );
    pool.close().await;
}

#[tokio::test]
async fn postgres_read_only_and_statement_timeout() {
    let Some(pg) = PgTestDb::create().await else {
        return;
    };
    let rw = Pool::connect(&pg.url, &Options::read_write("db-test"))
        .await
        .unwrap();
    rw.migrate(&migrations()).await.unwrap();
    rw.close().await;
    let ro = Pool::connect(
        &pg.url,
        &Options::read_only("db-test").statement_timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let err = ro
        .execute_json("INSERT INTO notes (body) VALUES ($1)", &[json!("x")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = ro
        .execute_json("SELECT pg_sleep(5)", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(matches!(err, Error::Query(_)));
    ro.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_migrations_from_several_processes_at_once() {
    let Some(pg) = PgTestDb::create().await else {
        return;
    };
    migrate_at_once(&pg.url).await;
}

/// `cell_to_json` reads each type the same way on both engines (text borrowed from the row).
#[tokio::test]
async fn cells_decode_one_by_one_on_both_engines() {
    use sqlx::Connection;
    let dir = temp_dir();
    let url = format!("{}?mode=rwc", sqlite_url(&dir.path().join("c.db")));
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let row = sqlx::query("SELECT 'é' AS t, 42 AS i, 2.5 AS f, NULL AS n, x'00' AS b")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let cells: Vec<Value> = (0..5).map(|i| db::cell_to_json(&row, i)).collect();
    assert_eq!(
        cells,
        [
            json!("é"),
            json!(42),
            json!(2.5),
            Value::Null,
            json!("<binary>")
        ]
    );

    let Some(pg) = PgTestDb::create().await else {
        return;
    };
    let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let row = sqlx::query(
        "SELECT 'é'::text AS t, 42 AS i, 2.5::float8 AS f, NULL::text AS n, true AS b, \
         DATE '2025-01-02' AS d, TIMESTAMPTZ '2025-01-02 03:04:05+00' AS ts, 1.5::numeric AS x",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let cells: Vec<Value> = (0..8).map(|i| db::cell_to_json(&row, i)).collect();
    assert_eq!(
        cells,
        [
            json!("é"),
            json!(42),
            json!(2.5),
            Value::Null,
            json!(true),
            json!("2025-01-02"),
            json!("2025-01-02T03:04:05+00:00"),
            json!("<unsupported type>")
        ]
    );
}
