//! [`Db`]: how every part of Poda reaches Postgres, directly or through a transaction pooler.
//!
//! Connected directly, a `Db` is its pool: statements are prepared by name once per connection
//! and the session's settings travel in the startup packet.
//!
//! Behind PgBouncer in `pool_mode = transaction` (1.18 and later, with or without its
//! prepared-statement tracking), a server connection belongs to a client for one transaction
//! only, so no statement may be used outside the transaction that prepared it. There a `Db`:
//!
//! - runs a statement given to it outside a transaction inside a transaction of its own, and
//!   hands back its rows only after the commit. sqlx sends a statement's Parse and its Bind in
//!   two round trips, which the pooler may route to two different server connections unless
//!   a transaction holds one;
//! - connects without a statement cache ([`pooled_options`]): every execution prepares a
//!   statement under a name its connection never used before, so no statement is ever used
//!   on a server connection, or in a transaction, other than the one that prepared it. (The
//!   unnamed statement is no way out: sqlx may look up a type between a statement's Parse and
//!   its Bind with a simple query, which drops the unnamed statement.);
//! - deallocates a transaction's statements before it commits ([`Db::commit`]), and opens every
//!   transaction with `DEALLOCATE ALL` and the session's settings as `SET LOCAL`: what a
//!   rolled-back transaction left on the server connection (its own, or another client's) is
//!   gone before this one prepares anything, so names cannot collide.
//!
//! LISTEN needs a session and is given a direct connection of its own (see the worker's
//! `DATABASE_LISTEN_URL`), or is not used.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::postgres::{PgConnectOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, PgConnection, PgPool, Postgres, SqlStr, Transaction};

/// How a [`Db`] reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// A direct connection to Postgres (or a pooler in session mode).
    #[default]
    None,
    /// PgBouncer (or another pooler) in transaction mode.
    Transaction,
}

impl std::str::FromStr for Pooler {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "" | "none" => Ok(Pooler::None),
            "transaction" => Ok(Pooler::Transaction),
            other => Err(format!(
                "{other:?} is not a pooler mode (use `none` for a direct connection or \
                 `transaction` for PgBouncer in transaction mode)"
            )),
        }
    }
}

/// Session settings, as `(name, value)` pairs of trusted constants: startup options when
/// connected directly, `SET LOCAL` in every transaction behind a transaction pooler.
pub type SessionSettings = &'static [(&'static str, &'static str)];

/// Statements planned once per connection, on their indexes: a cached generic plan from the
/// first execution on (no planning per call), with sequential scans priced out so that a
/// plan made while a table was empty stays an index lookup once the table has grown. Only
/// for statements that find their rows by key or through an index made for them, not for
/// joins against arrays of unknown length (docs/plan-cache.md). The batch transactions run
/// under it, and so does the claim function (`poda_claim_batch`).
pub const INDEX_PLANS: SessionSettings = &[
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

/// Statements that join arrays of any length against tables that grow: planned at every call,
/// for the table and the array as they are then. Set inside a batch transaction (after
/// [`INDEX_PLANS`]) before its outcomes are written: a generic plan of that join, made while
/// `jobs` was small, reads the whole table for every batch once it has grown.
pub const ARRAY_PLANS: SessionSettings = &[
    ("plan_cache_mode", "force_custom_plan"),
    ("enable_seqscan", "on"),
];

/// `SET LOCAL name = 'value'; …` for `settings`: to run them for one transaction.
pub fn set_local(settings: SessionSettings) -> String {
    set_local_statements(&[settings]).join("; ")
}

/// A pool, and how statements run on it. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    /// `Some(BEGIN; DEALLOCATE ALL; SET LOCAL …)` behind a transaction pooler.
    pooled_begin: Option<Arc<str>>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("pool", &self.pool)
            .field("behind_transaction_pooler", &self.pooled_begin.is_some())
            .finish()
    }
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Db::direct(pool)
    }
}

impl Db {
    /// A pool connected directly: its sessions carry their settings from the startup packet.
    pub fn direct(pool: PgPool) -> Self {
        Db {
            pool,
            pooled_begin: None,
        }
    }

    /// A pool whose connections go through a pooler in `mode`; `settings` are the session
    /// settings its connections would carry if they were direct.
    pub fn new(pool: PgPool, mode: Pooler, settings: &[SessionSettings]) -> Self {
        match mode {
            Pooler::None => Db::direct(pool),
            Pooler::Transaction => Db {
                pool,
                pooled_begin: Some(pooled_begin(settings).into()),
            },
        }
    }

    /// The pool underneath. Statements run on it directly bypass what a transaction pooler
    /// needs: use it for what is not a statement (its size, closing it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether this `Db` reaches Postgres through a transaction pooler.
    pub fn behind_transaction_pooler(&self) -> bool {
        self.pooled_begin.is_some()
    }

    /// Closes the pool: see [`PgPool::close`].
    pub async fn close(&self) {
        self.pool.close().await
    }

    /// Begins a transaction: `BEGIN`, and behind a transaction pooler the preparation that
    /// makes named statements safe within it (see the module's documentation).
    pub async fn begin(&self) -> sqlx::Result<Transaction<'static, Postgres>> {
        match &self.pooled_begin {
            None => self.pool.begin().await,
            Some(begin) => self.begin_pooled(begin.to_string()).await,
        }
    }

    /// Begins a transaction and runs `set_local` (trusted `SET LOCAL …` statements) in it
    /// before anything else; they override the pool's own settings for this transaction.
    pub async fn begin_with_settings(
        &self,
        set_local: &str,
    ) -> sqlx::Result<Transaction<'static, Postgres>> {
        match &self.pooled_begin {
            None => {
                self.pool
                    .begin_with(sqlx::AssertSqlSafe(format!("BEGIN; {set_local}")))
                    .await
            }
            Some(begin) => self.begin_pooled(format!("{begin}; {set_local}")).await,
        }
    }

    async fn begin_pooled(&self, begin: String) -> sqlx::Result<Transaction<'static, Postgres>> {
        // The statements are trusted constants: `BEGIN`, `DEALLOCATE ALL` and the settings.
        self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await
    }

    /// Commits `tx`. Behind a transaction pooler it first deallocates the statements the
    /// transaction prepared, so that none outlives it on the server connection. Savepoints
    /// commit with their own `commit`.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> sqlx::Result<()> {
        match self.pooled_begin {
            Some(_) => commit_pooled(tx).await,
            None => tx.commit().await,
        }
    }

    /// A second pool to the same server, connected lazily, of at most `max_connections`,
    /// whose sessions carry `extra` on top of this pool's settings.
    pub fn sibling(&self, max_connections: u32, extra: SessionSettings) -> Db {
        let options = (*self.pool.connect_options()).clone();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        match &self.pooled_begin {
            None => Db::direct(pool.connect_lazy_with(options.options(extra.iter().copied()))),
            Some(begin) => Db {
                pool: pool.connect_lazy_with(options),
                pooled_begin: Some(
                    std::iter::once(begin.to_string())
                        .chain(set_local_statements(&[extra]))
                        .collect::<Vec<_>>()
                        .join("; ")
                        .into(),
                ),
            },
        }
    }

    /// A connection for a short run of statements that need no transaction together: directly,
    /// a pooled connection on which each commits by itself; behind a transaction pooler, a
    /// transaction, which [`Unit::done`] commits.
    pub async fn unit(&self) -> sqlx::Result<Unit> {
        Ok(match &self.pooled_begin {
            None => Unit::Direct(self.pool.acquire().await?),
            Some(_) => Unit::Pooled(self.begin().await?),
        })
    }

    /// Runs `statement` the way this `Db` runs everything: on its own behind a pooler.
    async fn fetch_all_in_transaction<'q, E>(
        &self,
        query: E,
    ) -> sqlx::Result<Vec<Either<PgQueryResult, PgRow>>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let mut tx = self.begin().await?;
        let results = tx.fetch_many(query).try_collect().await?;
        self.commit(tx).await?;
        Ok(results)
    }
}

/// See [`Db::unit`].
pub enum Unit {
    Direct(PoolConnection<Postgres>),
    Pooled(Transaction<'static, Postgres>),
}

impl Unit {
    /// Commits what a transaction pooler's transaction holds; nothing to do directly.
    pub async fn done(self) -> sqlx::Result<()> {
        match self {
            Unit::Direct(_) => Ok(()),
            Unit::Pooled(tx) => commit_pooled(tx).await,
        }
    }
}

impl Deref for Unit {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Unit::Direct(conn) => conn,
            Unit::Pooled(tx) => tx,
        }
    }
}

impl DerefMut for Unit {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Unit::Direct(conn) => conn,
            Unit::Pooled(tx) => tx,
        }
    }
}

/// Commits a transaction behind a transaction pooler after dropping every statement it
/// prepared (nothing is cached there, so nothing relies on one). Not a macro: `DEALLOCATE`
/// has no parameters and cannot be prepared.
async fn commit_pooled(mut tx: Transaction<'_, Postgres>) -> sqlx::Result<()> {
    sqlx::raw_sql("DEALLOCATE ALL").execute(&mut *tx).await?;
    tx.commit().await
}

/// Connect options for a connection through a pooler in `mode`: behind a transaction pooler,
/// no statement cache (see the module's documentation) and only the startup parameters
/// PgBouncer accepts.
pub fn pooled_options(options: PgConnectOptions, mode: Pooler) -> PgConnectOptions {
    match mode {
        Pooler::None => options,
        Pooler::Transaction => options.statement_cache_capacity(0).extra_float_digits(None),
    }
}

/// `BEGIN; DEALLOCATE ALL; SET LOCAL name = value; …`
fn pooled_begin(settings: &[SessionSettings]) -> String {
    ["BEGIN".to_owned(), "DEALLOCATE ALL".to_owned()]
        .into_iter()
        .chain(set_local_statements(settings))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `SET LOCAL name = 'value'` for each setting.
fn set_local_statements(settings: &[SessionSettings]) -> Vec<String> {
    settings
        .iter()
        .flat_map(|s| s.iter())
        .map(|(name, value)| {
            debug_assert!(is_plain(name) && is_plain(value), "{name} = {value}");
            format!("SET LOCAL {name} = '{value}'")
        })
        .collect()
}

fn is_plain(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, sqlx::Result<Either<PgQueryResult, PgRow>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.pooled_begin.is_none() {
            return self.pool.fetch_many(query);
        }
        // The whole result is read and committed before the caller sees a row: a caller acts
        // on what is durable.
        futures::stream::once(self.fetch_all_in_transaction(query))
            .map_ok(|results| futures::stream::iter(results.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<PgRow>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.pooled_begin.is_none() {
            return self.pool.fetch_optional(query);
        }
        Box::pin(async move {
            let results = self.fetch_all_in_transaction(query).await?;
            Ok(results.into_iter().find_map(|step| step.right()))
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<PgStatement>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<Postgres>>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_transactions_clear_statements_and_set_the_session_locally() {
        let begin = pooled_begin(&[
            &[("plan_cache_mode", "force_custom_plan")],
            &[("statement_timeout", "30s")],
        ]);
        assert_eq!(
            begin,
            "BEGIN; DEALLOCATE ALL; SET LOCAL plan_cache_mode = 'force_custom_plan'; \
             SET LOCAL statement_timeout = '30s'"
        );
    }

    #[test]
    fn pooler_modes_parse_and_refuse_what_they_do_not_know() {
        assert_eq!("transaction".parse::<Pooler>(), Ok(Pooler::Transaction));
        assert_eq!("".parse::<Pooler>(), Ok(Pooler::None));
        assert!("session-ish".parse::<Pooler>().is_err());
    }
}
