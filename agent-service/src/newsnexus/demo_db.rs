//! `agent-service demo-db PATH`: writes a demo News Nexus SQLite database (`demo/`, which the tests
//! load too: two users, three articles, three approvals), so the stack can start with nothing else
//! installed.

use sqlx::{Connection, Executor};

pub const FIXTURE: &str = include_str!("../../demo/newsnexus-sqlite.sql");

pub async fn create(path: &str) -> anyhow::Result<()> {
    if std::path::Path::new(path).exists() {
        anyhow::bail!("{path} exists already; remove it first");
    }
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}?mode=rwc")).await?;
    conn.execute(FIXTURE).await?;
    conn.close().await?;
    Ok(())
}
