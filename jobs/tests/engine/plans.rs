//! A batch transaction plans its statements once per connection; the claim and the outcomes
//! stay index lookups when the plan was made on an empty table that has grown since.

use poda_jobs::engine::enqueue_many_pooled;
use poda_jobs::testing::plans::{array_literal, seq_scanned, PreparedProbe};
use poda_jobs::testing::TestDb;

use crate::support::{job, QUEUE};

/// claim_locked's parameters: `limit` jobs after (priority 1, `run_at`, id 0).
fn claim_after(limit: usize, run_at: &str) -> Vec<String> {
    vec![
        QUEUE.to_owned(),
        limit.to_string(),
        "1".to_owned(),
        run_at.to_owned(),
        "0".to_owned(),
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
        &["text", "bigint", "smallint", "timestamptz", "bigint"],
        &claim_after(10, "-infinity"),
    )
    .await;
    let mut finish = PreparedProbe::prepare(
        &db.pool,
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
            !seq_scanned(&plan).contains(&"jobs".to_owned()),
            "{name} scans every job: {plan}"
        );
    }
}
