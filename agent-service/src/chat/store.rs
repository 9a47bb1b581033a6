//! Chat sessions and their messages, stored through the `db` layer in the agent's own database
//! (`AGENT_STORE_URL`: SQLite by default, or PostgreSQL), migrated at start. Every query is scoped
//! by user id, so another user's session is indistinguishable from a missing one.
//!
//! Durability: a write returns only once committed (SQLite in WAL mode with `synchronous=FULL`), and
//! callers acknowledge a message to the client only after its write returned.

use std::time::{SystemTime, UNIX_EPOCH};

use db::with_pool;
use serde::Serialize;

use crate::chat::session_page::{Cursor, PageRequest};
use crate::llm::{ChatMessage, Role};

/// Longest generated or given title, in characters.
pub const MAX_TITLE_CHARS: usize = 60;
/// Messages fed back to the agent as context.
pub const CONTEXT_MESSAGES: i64 = 20;

/// The chat store on its pool (SQLite or PostgreSQL, through the `db` layer). SQL text is written
/// once, with `$N` placeholders, for both engines.
#[derive(Clone)]
pub struct Store {
    pool: db::Pool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub title: Option<String>,
    pub created: String,
    pub updated: String,
    pub message_count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
    pub created: String,
}

#[derive(Debug, thiserror::Error)]
#[error("chat store: {0}")]
pub struct StoreError(String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError(db::Error::from(e).to_string())
    }
}

impl From<db::Error> for StoreError {
    fn from(e: db::Error) -> Self {
        StoreError(e.to_string())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A title from a first message or a given one: trimmed, whitespace collapsed, at most 60 characters.
pub fn make_title(text: &str) -> Option<String> {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let t: String = collapsed.chars().take(MAX_TITLE_CHARS).collect();
    (!t.is_empty()).then_some(t)
}

/// The columns of a session summary, selected from `chat_sessions s`.
const SESSION_COLUMNS: &str = "SELECT s.id, s.title, s.created_at, s.updated_at, \
     (SELECT COUNT(*) FROM chat_messages m WHERE m.session_id = s.id) FROM chat_sessions s";

/// One row of [`SESSION_COLUMNS`].
type SessionRow = (String, Option<String>, i64, i64, i64);

fn summary((id, title, created, updated, message_count): SessionRow) -> SessionSummary {
    SessionSummary {
        id,
        title,
        created: rfc3339(created),
        updated: rfc3339(updated),
        message_count,
    }
}

impl Store {
    /// Opens (creating an SQLite file if needed) and migrates; several instances may start at once.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let pool = db::Pool::connect(url, &db::Options::read_write("agent-service-store")).await?;
        pool.migrate(&db::Migrations {
            sqlite: sqlx::migrate!("migrations/sqlite"),
            postgres: sqlx::migrate!("migrations/postgres"),
        })
        .await?;
        Ok(Store { pool })
    }

    /// The store's pool, for the other tables that live in it (the usage ledger).
    pub fn pool(&self) -> &db::Pool {
        &self.pool
    }

    pub async fn create_session(
        &self,
        user_id: i64,
        title: Option<&str>,
    ) -> Result<SessionSummary, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let title = title.and_then(make_title);
        let q = "INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)";
        with_pool!(&self.pool, p => sqlx::query(q).bind(&id).bind(user_id).bind(&title).bind(now).execute(p).await.map(|_| ()))?;
        Ok(SessionSummary {
            id,
            title,
            created: rfc3339(now),
            updated: rfc3339(now),
            message_count: 0,
        })
    }

    /// Creates the session row for `id` if it does not exist yet (sessions are written on their
    /// first message, so connecting alone leaves no empty sessions behind).
    /// Returns true when the row was created now.
    pub async fn ensure_session(&self, user_id: i64, id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let q = "INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at) VALUES ($1, $2, NULL, $3, $3) \
             ON CONFLICT (id) DO NOTHING";
        let done = with_pool!(&self.pool, p => sqlx::query(q).bind(id).bind(user_id).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(done > 0)
    }

    /// One page of the user's sessions, most recently updated first (ties by id), and the cursor
    /// of the next page if there is one.
    pub async fn list_sessions(
        &self,
        user_id: i64,
        page: &PageRequest,
    ) -> Result<(Vec<SessionSummary>, Option<Cursor>), StoreError> {
        let q = format!(
            "{SESSION_COLUMNS} WHERE s.user_id = $1 AND (s.updated_at < $2 OR (s.updated_at = $2 AND s.id < $3)) \
             ORDER BY s.updated_at DESC, s.id DESC LIMIT $4"
        );
        let (before_ms, before_id) = match &page.before {
            Some(c) => (c.updated_ms, c.id.as_str()),
            None => (i64::MAX, ""),
        };
        let fetch = i64::from(page.limit) + 1;
        let mut rows: Vec<SessionRow> = with_pool!(&self.pool, p => sqlx::query_as(&q)
            .bind(user_id).bind(before_ms).bind(before_id).bind(fetch).fetch_all(p).await)?;
        let next = if rows.len() > page.limit as usize {
            rows.truncate(page.limit as usize);
            rows.last().map(|(id, _, _, updated, _)| Cursor {
                updated_ms: *updated,
                id: id.clone(),
            })
        } else {
            None
        };
        Ok((rows.into_iter().map(summary).collect(), next))
    }

    /// Deletes the user's least recently updated sessions (with their messages) beyond the newest
    /// `keep`, never `except` (the session just created). Returns how many were deleted.
    pub async fn evict_sessions_beyond(
        &self,
        user_id: i64,
        keep: u64,
        except: &str,
    ) -> Result<u64, StoreError> {
        let q = "DELETE FROM chat_sessions WHERE user_id = $1 AND id IN \
             (SELECT id FROM chat_sessions WHERE user_id = $1 ORDER BY updated_at DESC, id DESC \
             LIMIT 9223372036854775807 OFFSET $2) AND id <> $3";
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let done = with_pool!(&self.pool, p => sqlx::query(q).bind(user_id).bind(keep).bind(except).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// One of the user's sessions; `None` when missing or another user's.
    pub async fn session(
        &self,
        user_id: i64,
        id: &str,
    ) -> Result<Option<SessionSummary>, StoreError> {
        let q = format!("{SESSION_COLUMNS} WHERE s.user_id = $1 AND s.id = $2");
        let row: Option<SessionRow> = with_pool!(&self.pool, p => sqlx::query_as(&q).bind(user_id).bind(id).fetch_optional(p).await)?;
        Ok(row.map(summary))
    }

    /// One of the user's sessions with its messages, oldest first; `None` when missing or another
    /// user's.
    pub async fn transcript(
        &self,
        user_id: i64,
        id: &str,
    ) -> Result<Option<(SessionSummary, Vec<StoredMessage>)>, StoreError> {
        let Some(session) = self.session(user_id, id).await? else {
            return Ok(None);
        };
        let q =
            "SELECT role, content, created_at FROM chat_messages WHERE session_id = $1 ORDER BY id";
        let rows: Vec<(String, String, i64)> =
            with_pool!(&self.pool, p => sqlx::query_as(q).bind(id).fetch_all(p).await)?;
        let messages = rows
            .into_iter()
            .map(|(role, content, c)| StoredMessage {
                role,
                content,
                created: rfc3339(c),
            })
            .collect();
        Ok(Some((session, messages)))
    }

    /// Deletes a session with its messages; false when missing or another user's.
    pub async fn delete_session(&self, user_id: i64, id: &str) -> Result<bool, StoreError> {
        let q = "DELETE FROM chat_sessions WHERE user_id = $1 AND id = $2";
        let done = with_pool!(&self.pool, p => sqlx::query(q).bind(user_id).bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(done > 0)
    }

    /// Appends a message (committed when this returns); the first user message names an untitled
    /// session. Returns true if the title was set now.
    pub async fn add_message(
        &self,
        session_id: &str,
        role: &str,
        content: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let insert = "INSERT INTO chat_messages (session_id, role, content, in_context, created_at) VALUES ($1, $2, $3, 1, $4)";
        let touch = "UPDATE chat_sessions SET updated_at = $2 WHERE id = $1";
        let name = "UPDATE chat_sessions SET title = $2 WHERE id = $1 AND title IS NULL";
        let title = if role == "user" {
            make_title(content)
        } else {
            None
        };
        let named = with_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query(insert).bind(session_id).bind(role).bind(content).bind(now).execute(&mut *tx).await?;
            sqlx::query(touch).bind(session_id).bind(now).execute(&mut *tx).await?;
            let named = match &title {
                Some(t) => sqlx::query(name).bind(session_id).bind(t).execute(&mut *tx).await?.rows_affected() > 0,
                None => false,
            };
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(named)
        })?;
        Ok(named)
    }

    /// The messages still in the agent's context (after the last `clear_history`), oldest first.
    pub async fn context(&self, session_id: &str) -> Result<Vec<ChatMessage>, StoreError> {
        let q = "SELECT role, content FROM (SELECT id, role, content FROM chat_messages WHERE session_id = $1 AND in_context = 1 \
             ORDER BY id DESC LIMIT $2) recent ORDER BY id";
        let rows: Vec<(String, String)> = with_pool!(&self.pool, p => sqlx::query_as(q).bind(session_id).bind(CONTEXT_MESSAGES).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|(role, content)| {
                ChatMessage::new(
                    if role == "user" {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    content,
                )
            })
            .collect())
    }

    /// Takes every message so far out of the agent's context (the transcript is kept).
    pub async fn clear_context(&self, session_id: &str) -> Result<(), StoreError> {
        let q = "UPDATE chat_messages SET in_context = 0 WHERE session_id = $1";
        with_pool!(&self.pool, p => sqlx::query(q).bind(session_id).execute(p).await.map(|_| ()))?;
        Ok(())
    }
}

/// Keeps the user within `AGENT_MAX_SESSIONS_PER_USER` after `created` was added: the least
/// recently updated sessions beyond the cap are deleted. Returns how many were.
pub async fn enforce_session_cap(store: &Store, cap: u64, user_id: i64, created: &str) -> u64 {
    match store.evict_sessions_beyond(user_id, cap, created).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(
                    user_id,
                    evicted = n,
                    cap,
                    "session cap reached: oldest sessions deleted"
                );
            }
            n
        }
        Err(e) => {
            tracing::error!("{e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(
            make_title("  How many   articles\nare there? "),
            Some("How many articles are there?".into())
        );
        assert_eq!(make_title("   "), None);
        assert_eq!(make_title(&"é".repeat(100)).unwrap().chars().count(), 60);
    }
}
