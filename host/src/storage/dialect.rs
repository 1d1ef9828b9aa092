//! What differs between the two databases, and nothing else.
//!
//! The SQL of every domain module is written once, with `$1`-style parameters
//! (both drivers read them) and standard SQL. What cannot be written once is
//! here: how a write transaction starts, row locks, the database clock, the
//! function for "the larger of two", and how a connection is set up. A third
//! database would be one more variant of [`Dialect`].

use std::fmt::Write as _;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Executor as _};

/// Which database a [`super::SqlStorage`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded file (one writer at a time, serialized in-process).
    Sqlite,
    /// The shared server (several hosts; row locks serialize writers).
    Postgres,
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from the database clock, in PostgreSQL.
const PG_NOW: &str =
    r#"to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#;

impl Dialect {
    /// The dialect of a database URL (`sqlite:` or `postgres(ql)://`).
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// The statement that begins a write transaction. SQLite's `IMMEDIATE`
    /// takes its one write lock at once, so a transaction that reads before it
    /// writes (quota checks, balances) never fails with `SQLITE_BUSY` because
    /// another connection wrote after its read began (a failure the busy
    /// timeout does not retry).
    pub fn begin_write(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }

    /// Appended to the task claim's inner `SELECT … FROM convergence_tasks p`:
    /// hosts claiming at once each lock a different task (or none).
    pub fn skip_locked(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE OF p SKIP LOCKED",
        }
    }

    /// An expression for the database's clock as RFC 3339 text with
    /// milliseconds, UTC: hosts whose clocks disagree still agree on leases.
    pub fn now(self) -> &'static str {
        match self {
            Self::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            Self::Postgres => PG_NOW,
        }
    }

    /// An expression for the database's clock minus parameter `$n` seconds
    /// (a float), as [`Dialect::now`] writes it.
    pub fn now_minus_seconds(self, n: usize) -> String {
        match self {
            Self::Sqlite => {
                format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', (-${n}) || ' seconds')")
            }
            Self::Postgres => format!(
                r#"to_char((clock_timestamp() - make_interval(secs => ${n})) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#
            ),
        }
    }

    /// The scalar function for the larger of two values.
    pub fn greatest(self) -> &'static str {
        match self {
            Self::Sqlite => "MAX",
            Self::Postgres => "GREATEST",
        }
    }

    /// Byte-wise ordering of text (PostgreSQL sorts by the database's locale
    /// otherwise; SQLite's default is already byte-wise).
    pub fn bytewise(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => r#" COLLATE "C""#,
        }
    }

    /// `rows` parenthesised lists of `per_row` parameters, the `VALUES` of a
    /// multi-row `INSERT`. SQLite's are anonymous (`?`): sqlx-sqlite asks
    /// SQLite each parameter's name, which walks the list of named ones, so
    /// `$N` costs time quadratic in the parameters and `?` does not.
    pub fn value_rows(self, rows: usize, per_row: usize) -> String {
        let mut sql = String::with_capacity(rows * per_row * 6);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for i in 0..per_row {
                if i > 0 {
                    sql.push_str(", ");
                }
                match self {
                    Self::Sqlite => sql.push('?'),
                    Self::Postgres => {
                        let _ = write!(sql, "${}", row * per_row + i + 1);
                    }
                }
            }
            sql.push(')');
        }
        sql
    }

    /// Rows one multi-row `INSERT` should carry, at `params_per_row` each.
    /// sqlx-sqlite binds `$N` by asking SQLite each parameter's name, which
    /// walks the statement's parameter list: quadratic in the parameters, so
    /// 3,000 of them cost more than the insert itself (with `$N`; see
    /// [`Dialect::value_rows`]). PostgreSQL's round trips favour large statements.
    pub fn rows_per_insert(self, params_per_row: usize) -> usize {
        let params = match self {
            Self::Sqlite => 96,
            Self::Postgres => 3000,
        };
        (params / params_per_row.max(1)).max(1)
    }

    /// How many connections the pool keeps.
    fn max_connections(self) -> u32 {
        match self {
            Self::Sqlite => 8,
            Self::Postgres => 16,
        }
    }

    /// Runs once on every new connection.
    async fn set_up(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let statements: &[&str] = match self {
            Self::Sqlite => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 10000",
                "PRAGMA foreign_keys = ON",
                // Deleted rows (old env values, pruned components) are zeroed,
                // not left in free pages.
                "PRAGMA secure_delete = ON",
            ],
            // Each statement after a lock sees every transaction committed
            // before the lock was granted, whatever the database's default:
            // the lock-then-read sequences rely on it.
            Self::Postgres => {
                &["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"]
            }
        };
        for statement in statements {
            conn.execute(*statement).await?;
        }
        Ok(())
    }

    /// A pool of connections to `url`, each set up for this dialect.
    pub async fn connect(self, url: &str) -> Result<AnyPool, sqlx::Error> {
        sqlx::any::install_default_drivers();
        AnyPoolOptions::new()
            .max_connections(self.max_connections())
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| Box::pin(async move { self.set_up(conn).await }))
            .connect(url)
            .await
    }

    /// Text as the database can store it: PostgreSQL text cannot hold NUL
    /// characters, so both backends store U+FFFD in their place (log lines
    /// keep their place rather than failing the whole batch).
    pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
        if text.contains('\0') {
            text.replace('\0', "\u{FFFD}").into()
        } else {
            text.into()
        }
    }
}

/// `$start, $start+1, …` for `n` parameters: the list of an `IN (…)`.
pub fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
