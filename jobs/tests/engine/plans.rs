//! A batch transaction and the claim function plan their statements once per connection; the
//! claims and the outcomes stay index lookups when the plan was made on an empty table that
//! has grown since.

use poda_jobs::db::{ARRAY_PLANS, INDEX_PLANS};
use poda_jobs::engine::enqueue_many_pooled;
use poda_jobs::testing::plans::{array_literal, full_scans, PreparedProbe};
use poda_jobs::testing::TestDb;

use crate::support::{job, QUEUE};

/// claim_locked's parameters: `limit` jobs after (`run_at`, id 0) in priority 1, every other
/// priority from its start.
fn claim_after(limit: usize, run_at: &str) -> Vec<String> {
    vec![
        QUEUE.to_owned(),
        limit.to_string(),
        format!("{{NULL,{run_at},NULL,NULL}}"),
        "{NULL,0,NULL,NULL}".to_owned(),
    ]
}

#[tokio::test]
async fn batch_claims_and_outcomes_planned_on_an_empty_table_use_its_indexes_once_it_grew() {
    let db = TestDb::new().await;
    sqlx::query("ANALYZE jobs").execute(&db.pool).await.unwrap();
    let outcome = |n: usize| {
        vec![
            array_literal(1..=n),
            array_literal(vec![0; n]),
            array_literal(vec!["completed"; n]),
            array_literal(vec!["NULL"; n]),
            array_literal(vec!["NULL"; n]),
            array_literal(vec![false; n]),
        ]
    };
    let mut claim = PreparedProbe::prepare(
        &db.pool,
        include_str!("../../src/engine/claim_locked.sql"),
        &["text", "bigint", "timestamptz[]", "bigint[]"],
        &claim_after(10, "-infinity"),
    )
    .await;
    // As the batch transaction runs it: after INDEX_PLANS, ARRAY_PLANS.
    let mut finish = PreparedProbe::prepare_under(
        &db.pool,
        &[INDEX_PLANS, ARRAY_PLANS],
        include_str!("../../src/engine/finish_locked.sql"),
        &[
            "bigint[]", "int[]", "text[]", "bigint[]", "text[]", "bool[]",
        ],
        &outcome(1),
    )
    .await;

    for chunk in 0..20 {
        let jobs: Vec<_> = (0..5_000).map(|n| job(chunk * 5_000 + n)).collect();
        enqueue_many_pooled(&db.pool, &jobs).await.unwrap();
    }

    for (name, plan) in [
        (
            "claim_locked",
            claim.plan(&claim_after(200, "-infinity")).await,
        ),
        (
            "claim_locked after a cursor",
            claim.plan(&claim_after(200, "2026-01-01T00:00:00Z")).await,
        ),
        ("finish_locked", finish.plan(&outcome(200)).await),
    ] {
        assert!(
            !full_scans(&plan).contains(&"jobs".to_owned()),
            "{name} reads every job: {plan}"
        );
    }
}

/// The statement of the claim function `poda_claim_batch`: its body, which names its
/// parameters $1 … $6, between `RETURN QUERY` and the closing `END`.
fn claim_function_statement(body: &str) -> String {
    let (_, statement) = body
        .split_once("RETURN QUERY")
        .expect("the claim function returns a query");
    let (statement, _) = statement
        .rsplit_once("END")
        .expect("the claim function ends");
    statement.trim().trim_end_matches(';').to_owned()
}

/// The claim function runs its statement under `INDEX_PLANS`, so each session plans it once,
/// at its first call: here while `jobs` is empty. Once the table holds 100,000 jobs, the plan
/// still claims through the claim index.
#[tokio::test]
async fn the_claim_function_planned_on_an_empty_table_claims_through_its_index_once_it_grew() {
    let db = TestDb::new().await;
    sqlx::query("ANALYZE jobs").execute(&db.pool).await.unwrap();
    let (body, settings): (String, Vec<String>) =
        sqlx::query_as("SELECT prosrc, proconfig FROM pg_proc WHERE proname = 'poda_claim_batch'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let expected: Vec<String> = INDEX_PLANS
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    assert_eq!(settings, expected, "the claim function's settings");

    let claim = |limit: usize| {
        vec![
            QUEUE.to_owned(),
            limit.to_string(),
            "00000000-0000-0000-0000-000000000001".to_owned(),
            "30000".to_owned(),
            "NULL".to_owned(),
            "{NULL,2026-01-01T00:00:00Z,NULL,NULL}".to_owned(),
        ]
    };
    let mut probe = PreparedProbe::prepare(
        &db.pool,
        &claim_function_statement(&body),
        &[
            "text",
            "bigint",
            "uuid",
            "bigint",
            "timestamptz",
            "timestamptz[]",
        ],
        &claim(1),
    )
    .await;
    for chunk in 0..20 {
        let jobs: Vec<_> = (0..5_000).map(|n| job(chunk * 5_000 + n)).collect();
        enqueue_many_pooled(&db.pool, &jobs).await.unwrap();
    }

    let plan = probe.plan(&claim(1_000)).await;
    assert!(
        !full_scans(&plan).contains(&"jobs".to_owned()),
        "the claim reads every job: {plan}"
    );
    assert!(
        plan.to_string().contains("jobs_claim_idx"),
        "the claim does not read the claim index: {plan}"
    );
    // The window's start bounds the index range: a claim never reads the entries before it.
    let bounded = index_conditions(&plan)
        .iter()
        .any(|c| c.contains("run_at >=") && c.contains("$6"));
    assert!(bounded, "the window's start is not an index bound: {plan}");
}

/// Every `Index Cond` of a plan.
fn index_conditions(plan: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![plan];
    while let Some(node) = stack.pop() {
        match node {
            serde_json::Value::Object(fields) => {
                if let Some(serde_json::Value::String(c)) = fields.get("Index Cond") {
                    found.push(c.clone());
                }
                stack.extend(fields.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    found
}
