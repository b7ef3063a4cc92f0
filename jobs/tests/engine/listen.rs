use std::time::Duration;

use poda_jobs::db::{Db, Pooler};
use poda_jobs::engine::{Engine, EngineConfig, Listen};
use poda_jobs::testing::TestDb;

const LISTENER: &str = "engine:listener";

fn has_listener(engine: &Engine) -> bool {
    engine.loops().names().iter().any(|name| name == LISTENER)
}

#[tokio::test]
async fn an_engine_behind_a_transaction_pooler_polls_unless_given_a_session_to_listen_on() {
    let db = TestDb::new().await;
    // A Db that runs as behind PgBouncer (it works against a direct server too).
    let pooled = Db::new(db.pool.pool().clone(), Pooler::Transaction, &[]);

    let behind = Engine::start(pooled.clone(), EngineConfig::default());
    assert!(
        !has_listener(behind.engine()),
        "no LISTEN through the pooler"
    );
    tokio::time::timeout(Duration::from_secs(1), behind.engine().wait_listening())
        .await
        .expect("an engine that polls does not wait for a listener");
    behind.shutdown().await;

    let given = Engine::start(
        pooled,
        EngineConfig {
            listen: Listen::Via(db.pool.pool().clone()),
            ..EngineConfig::default()
        },
    );
    assert!(has_listener(given.engine()));
    tokio::time::timeout(Duration::from_secs(10), given.engine().wait_listening())
        .await
        .expect("the listener LISTENs on the session it was given");
    given.shutdown().await;

    let direct = Engine::start(db.pool.clone(), EngineConfig::default());
    assert!(
        has_listener(direct.engine()),
        "a direct engine pool LISTENs"
    );
    direct.shutdown().await;
}
