//! What the planner makes of a statement: for tests that keep batch statements on their
//! indexes however large the batch.

use crate::db::Db;
use sqlx::pool::PoolConnection;
use sqlx::Postgres;

use crate::db::{set_local, SessionSettings, INDEX_PLANS};

/// The plan of `sql` with `$1`, `$2`, … replaced by the array literals `params` (each cast
/// by the statement itself, as in `$1::bigint[]`): what a custom plan (the worker's
/// `plan_cache_mode`) sees.
pub async fn plan_of(pool: &Db, sql: &str, params: &[String]) -> serde_json::Value {
    let mut sql = sql.to_owned();
    for (i, param) in params.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), &format!("'{param}'"));
    }
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The tables `plan` reads whole: with a sequential scan, or with an index scan that has no
/// index condition (it reads the whole index, as the outer side of a join on a plan made
/// while the table was empty does).
pub fn full_scans(plan: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(plan, &mut found);
    found
}

fn walk(node: &serde_json::Value, found: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            let whole = match map.get("Node Type").and_then(|t| t.as_str()) {
                Some("Seq Scan") => true,
                Some("Index Scan" | "Index Only Scan") => !map.contains_key("Index Cond"),
                _ => false,
            };
            if whole {
                if let Some(table) = map.get("Relation Name").and_then(|t| t.as_str()) {
                    found.push(table.to_owned());
                }
            }
            map.values().for_each(|v| walk(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
        _ => {}
    }
}

/// `{a,b,c}`: a Postgres array literal of `items`.
pub fn array_literal<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{{}}}", items.join(","))
}

/// A statement prepared the way the engine and the batch transactions run it ([`INDEX_PLANS`]:
/// one generic plan, made at its first execution and kept), on a connection of its own inside an
/// open transaction, so a test can grow the tables after the plan was made and look at the
/// plan the batches would go on using.
pub struct PreparedProbe {
    conn: PoolConnection<Postgres>,
}

impl PreparedProbe {
    /// Prepares `sql` with parameters of `types` and executes it once with `first`.
    pub async fn prepare(pool: &Db, sql: &str, types: &[&str], first: &[String]) -> Self {
        Self::prepare_under(pool, &[INDEX_PLANS], sql, types, first).await
    }

    /// [`PreparedProbe::prepare`] in a transaction that sets `settings` in turn, as a batch
    /// transaction does before one of its statements.
    pub async fn prepare_under(
        pool: &Db,
        settings: &[SessionSettings],
        sql: &str,
        types: &[&str],
        first: &[String],
    ) -> Self {
        let mut conn = pool.pool().acquire().await.unwrap();
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
        for settings in settings {
            sqlx::raw_sql(sqlx::AssertSqlSafe(set_local(settings)))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        let prepare = format!("PREPARE probe ({}) AS {sql}", types.join(", "));
        sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
            .execute(&mut *conn)
            .await
            .unwrap();
        let mut probe = PreparedProbe { conn };
        let execute = format!("EXECUTE probe ({})", Self::literals(first));
        sqlx::raw_sql(sqlx::AssertSqlSafe(execute))
            .execute(&mut *probe.conn)
            .await
            .unwrap();
        probe
    }

    /// The plan `EXECUTE` now uses with `params`.
    pub async fn plan(&mut self, params: &[String]) -> serde_json::Value {
        let explain = format!(
            "EXPLAIN (FORMAT JSON) EXECUTE probe ({})",
            Self::literals(params)
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .fetch_one(&mut *self.conn)
            .await
            .unwrap()
    }

    /// `'a', 'b', NULL`: the parameters as literals (`NULL` stays a null).
    fn literals(params: &[String]) -> String {
        params
            .iter()
            .map(|p| match p.as_str() {
                "NULL" => "NULL".to_owned(),
                _ => format!("'{p}'"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
