//! What the planner makes of a statement: for tests that keep batch statements on their
//! indexes however large the batch.

use sqlx::PgPool;

/// The plan of `sql` with `$1`, `$2`, … replaced by the array literals `params` (each cast
/// by the statement itself, as in `$1::bigint[]`): what a custom plan (the worker's
/// `plan_cache_mode`) sees.
pub async fn plan_of(pool: &PgPool, sql: &str, params: &[String]) -> serde_json::Value {
    let mut sql = sql.to_owned();
    for (i, param) in params.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), &format!("'{param}'"));
    }
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The tables `plan` reads with a sequential scan.
pub fn seq_scanned(plan: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(plan, &mut found);
    found
}

fn walk(node: &serde_json::Value, found: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            if map.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan") {
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
