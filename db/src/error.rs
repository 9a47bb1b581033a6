//! The layer's error type and the timeout wrapper around a whole database call.

use std::future::Future;
use std::time::Duration;

/// What went wrong, in words safe for logs (no URL passwords: sqlx's messages do not echo them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The URL or options are wrong: a configuration mistake.
    #[error("bad database url: {0}")]
    Url(String),
    /// No connection could be had (down, refused, pool exhausted, I/O or TLS failure).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish in time.
    #[error("the query took longer than {0:?}")]
    Timeout(Duration),
    /// The database answered with an error, or the answer could not be decoded.
    #[error("the query failed: {0}")]
    Query(String),
    /// Migrating the schema failed.
    #[error("migration failed: {0}")]
    Migrate(String),
}

impl Error {
    /// True when the database could not be reached or did not answer in time.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::Configuration(_) => Error::Url(e.to_string()),
            E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed => Error::Unavailable(e.to_string()),
            E::Migrate(m) => Error::Migrate(m.to_string()),
            other => Error::Query(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate(e.to_string())
    }
}

/// Runs `call` with a deadline: [`Error::Timeout`] when it takes longer than `limit`.
pub async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(Error::Timeout(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlx_errors_are_classified() {
        assert!(Error::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(matches!(
            Error::from(sqlx::Error::RowNotFound),
            Error::Query(_)
        ));
        assert!(!Error::Query("x".into()).is_unavailable());
        assert!(Error::Timeout(Duration::from_secs(1)).is_unavailable());
    }

    #[tokio::test]
    async fn timed_cuts_a_slow_call() {
        let slow = async { std::future::pending::<Result<(), Error>>().await };
        assert_eq!(
            timed(Duration::from_millis(10), slow).await,
            Err(Error::Timeout(Duration::from_millis(10)))
        );
        assert_eq!(timed(Duration::from_secs(1), async { Ok(3) }).await, Ok(3));
    }
}
