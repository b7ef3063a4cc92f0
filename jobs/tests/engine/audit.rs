//! The audit trail: append-only in the database, written with the operator actions it records
//! and only when they commit, and read newest first.

use chrono::{TimeDelta, Utc};
use poda_jobs::audit::{self, action, subject, Actor, AuditRow, Event, SubjectFilter};
use poda_jobs::db::Db;
use poda_jobs::engine::admin::{cancel_job, retry_job};
use poda_jobs::engine::{pause_queue, resume_queue, Pruner, PrunerConfig};
use poda_jobs::testing::TestDb;
use poda_jobs::EngineError;

use crate::factory;

async fn trail(pool: &Db) -> Vec<AuditRow> {
    audit::list(pool, None, None, audit::MAX_PAGE)
        .await
        .unwrap()
}

async fn record_one(pool: &Db, actor: &Actor, event: &Event) {
    let mut tx = pool.begin().await.unwrap();
    audit::record(&mut tx, actor, event).await.unwrap();
    pool.commit(tx).await.unwrap();
}

fn note(n: i64) -> Event {
    Event::new(
        action::QUEUE_PAUSED,
        subject::QUEUE,
        format!("q{n}"),
        serde_json::json!({ "n": n }),
    )
}

/// The error a refused statement on `audit_events` raised, as the server said it.
async fn refused(pool: &Db, statement: &'static str) -> String {
    let error = sqlx::query(statement).execute(pool).await.unwrap_err();
    let db_error = error
        .as_database_error()
        .unwrap_or_else(|| panic!("{statement}: not a database error: {error}"));
    assert_eq!(db_error.code().as_deref(), Some("42501"), "{statement}");
    db_error.message().to_owned()
}

#[tokio::test]
async fn the_database_refuses_update_delete_and_truncate_of_the_trail() {
    let db = TestDb::new().await;
    record_one(&db.pool, &Actor::Console, &note(1)).await;
    record_one(&db.pool, &Actor::cli("ops"), &note(2)).await;
    let before = trail(&db.pool).await;
    assert_eq!(before.len(), 2);

    for (statement, verb) in [
        ("UPDATE audit_events SET actor = 'someone else'", "UPDATE"),
        ("UPDATE audit_events SET data = '{}' WHERE false", "UPDATE"),
        ("DELETE FROM audit_events", "DELETE"),
        ("DELETE FROM audit_events WHERE false", "DELETE"),
        ("TRUNCATE audit_events", "TRUNCATE"),
    ] {
        let message = refused(&db.pool, statement).await;
        assert_eq!(
            message,
            format!("audit_events is append-only: {verb} is refused"),
            "{statement}"
        );
    }
    assert_eq!(trail(&db.pool).await, before, "the rows are unchanged");
}

#[tokio::test]
async fn the_trail_lists_newest_first_by_subject_a_page_at_a_time() {
    let db = TestDb::new().await;
    for n in 1..=5 {
        record_one(&db.pool, &Actor::Api, &note(n % 2)).await;
    }
    let all = trail(&db.pool).await;
    let ids: Vec<i64> = all.iter().map(|r| r.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    assert!(all.iter().all(|r| r.actor == "api:admin"));

    // The audit_log view shows the same order.
    let view: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_log")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(view, ids);

    let q1 = SubjectFilter::one(subject::QUEUE, "q1");
    let page = audit::list(&db.pool, Some(&q1), None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert!(page.iter().all(|r| r.subject_id == "q1"));
    let rest = audit::list(&db.pool, Some(&q1), Some(page[1].id), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "three events of q1 in all");
    assert!(rest[0].id < page[1].id);
    assert_eq!(rest[0].data, serde_json::json!({ "n": 1 }));

    let queues = SubjectFilter::of_type(subject::QUEUE);
    assert_eq!(
        audit::list(&db.pool, Some(&queues), None, 10)
            .await
            .unwrap()
            .len(),
        5
    );
    let jobs = SubjectFilter::of_type(subject::JOB);
    assert!(audit::list(&db.pool, Some(&jobs), None, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_event_rolled_back_with_its_transaction_is_not_in_the_trail() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    audit::record(&mut tx, &Actor::Console, &note(1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(trail(&db.pool).await.is_empty());
}

#[tokio::test]
async fn operator_actions_on_jobs_and_queues_are_recorded_with_their_actor() {
    let db = TestDb::new().await;
    let ids = factory::probes(&db.pool, "tickets", 2).await;

    cancel_job(&db.pool, ids[0], &Actor::Console).await.unwrap();
    retry_job(&db.pool, ids[0], &Actor::cli("ops"))
        .await
        .unwrap();
    pause_queue(&db.pool, "tickets", &Actor::Api).await.unwrap();
    resume_queue(&db.pool, "tickets", &Actor::Console)
        .await
        .unwrap();

    let rows = trail(&db.pool).await;
    let seen: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .rev()
        .map(|r| {
            (
                r.actor.as_str(),
                r.action.as_str(),
                r.subject_type.as_str(),
                r.subject_id.as_str(),
            )
        })
        .collect();
    let job = ids[0].to_string();
    assert_eq!(
        seen,
        [
            ("console:admin", "job.cancelled", "job", job.as_str()),
            ("cli:ops", "job.retried", "job", job.as_str()),
            ("api:admin", "queue.paused", "queue", "tickets"),
            ("console:admin", "queue.resumed", "queue", "tickets"),
        ]
    );
    let cancelled = rows.last().unwrap();
    assert_eq!(cancelled.data["was"], "available");
    assert_eq!(cancelled.data["queue"], "tickets");
    let retried = &rows[rows.len() - 2];
    assert_eq!(retried.data["was"], "cancelled");
}

#[tokio::test]
async fn a_refused_operator_action_records_nothing() {
    let db = TestDb::new().await;
    let ids = factory::probes(&db.pool, "tickets", 1).await;
    factory::set_state(&db.pool, ids[0], "completed", Some(Utc::now())).await;

    let error = retry_job(&db.pool, ids[0], &Actor::Console)
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::WrongState { .. }), "{error}");
    let error = cancel_job(&db.pool, ids[0], &Actor::Console)
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::WrongState { .. }), "{error}");
    // The pause fails after its UPDATE ran: the transaction, event and all, rolls back.
    let error = pause_queue(&db.pool, "no_such_queue", &Actor::Api)
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::UnknownQueue { .. }));
    let error = resume_queue(&db.pool, "no_such_queue", &Actor::Api)
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::UnknownQueue { .. }));

    assert!(trail(&db.pool).await.is_empty());
}

#[tokio::test]
async fn an_operators_prune_is_recorded_per_queue_and_the_leaders_is_not() {
    let db = TestDb::new().await;
    let long_ago = Utc::now() - TimeDelta::days(30);
    let tickets = factory::probes(&db.pool, "tickets", 3).await;
    let notifications = factory::probes(&db.pool, "notifications", 1).await;
    for id in tickets.iter().chain(&notifications) {
        factory::set_state(&db.pool, *id, "completed", Some(long_ago)).await;
    }
    let pruner = |batch| {
        Pruner::new(
            PrunerConfig {
                batch,
                ..PrunerConfig::default()
            },
            db.pool.clone(),
        )
    };

    // Two batches: one event per queue and batch.
    let report = pruner(2).run_once_by(&Actor::cli("ops")).await.unwrap();
    assert_eq!(report.total(), 4);
    let rows = trail(&db.pool).await;
    assert!(rows
        .iter()
        .all(|r| r.actor == "cli:ops" && r.action == "jobs.pruned" && r.subject_type == "queue"));
    let deleted = |queue: &str| -> i64 {
        rows.iter()
            .filter(|r| r.subject_id == queue)
            .map(|r| r.data["deleted"].as_i64().unwrap())
            .sum()
    };
    assert_eq!((deleted("tickets"), deleted("notifications")), (3, 1));

    let more = factory::probes(&db.pool, "tickets", 1).await;
    factory::set_state(&db.pool, more[0], "failed", Some(long_ago)).await;
    assert_eq!(pruner(10).run_once(None).await.unwrap().total(), 1);
    assert_eq!(
        trail(&db.pool).await,
        rows,
        "the routine pass is not audited"
    );
}
