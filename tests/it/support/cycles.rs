//! Contribution-cycle fixtures: tiers and members made with set-based SQL, create requests,
//! and waits on a cycle's status.

use std::time::Duration;

use poda_jobs::cycle::NewCycle;
use poda_jobs::db::Db;
use poda_jobs::testing::wait_until;
use poda_jobs::ticket::{Currency, Money};
use reqwest::Method;
use serde_json::{json, Value};

use super::app::{Reply, TestApp, ADMIN_TOKEN};

pub async fn seed_tier(pool: &Db, name: &str, currency: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO tiers (name, currency) VALUES ($1, $2) RETURNING id")
        .bind(name)
        .bind(currency)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Inserts `n` members of `tier` with `status`, spread over `agents` agents
/// (`agent-0` …); returns the first and last id.
pub async fn seed_members(pool: &Db, tier: i64, n: i64, status: &str, agents: i64) -> (i64, i64) {
    sqlx::query_as(
        "WITH m AS ( \
           INSERT INTO members (tier_id, status, agent_id, wallet_id) \
           SELECT $1, $2::member_status, 'agent-' || (g % $4), 'wallet-' || g \
           FROM generate_series(1, $3) g \
           RETURNING id) \
         SELECT min(id), max(id) FROM m",
    )
    .bind(tier)
    .bind(status)
    .bind(n)
    .bind(agents)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub fn cycle_request(tier: i64, deceased: i64, claim: &str) -> Value {
    json!({
        "tier_id": tier,
        "deceased_member_id": deceased,
        "claim_reference": claim,
        "contribution": {"currency": "SLE", "value": 2_500},
        "duration_days": 30
    })
}

impl TestApp {
    /// POSTs a create request with the admin token and, if given, an Idempotency-Key.
    pub async fn post_cycle(&self, body: &Value, key: Option<&str>) -> Reply {
        self.post_cycle_raw(serde_json::to_vec(body).unwrap(), key)
            .await
    }

    pub async fn post_cycle_raw(&self, body: Vec<u8>, key: Option<&str>) -> Reply {
        let mut request = self
            .client
            .request(Method::POST, self.url("/contribution-cycles"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    pub async fn cycle_progress(&self, id: i64) -> Reply {
        self.admin(
            Method::GET,
            &format!("/contribution-cycles/{id}/progress"),
            Some(ADMIN_TOKEN),
        )
        .await
    }
}

pub async fn cycle_status(pool: &Db, id: i64) -> String {
    sqlx::query_scalar("SELECT status::text FROM contribution_cycles WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the cycle is Active (panics if it fails or takes longer than `timeout`).
pub async fn wait_active(pool: &Db, id: i64, timeout: Duration) {
    let status = wait_until(
        "the cycle to settle",
        timeout,
        || cycle_status(pool, id),
        |s| s != "Initializing",
    )
    .await;
    assert_eq!(status, "Active", "cycle {id} settled as {status}");
}

/// (rows, distinct members) of the cycle's contributions.
pub async fn contribution_counts(pool: &Db, id: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT member_id) FROM member_contributions WHERE cycle_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A cycle of `tier` for `deceased`: 25.00 SLE per member, due in 30 days.
pub fn new_cycle(tier: i64, deceased: i64, claim: &str) -> NewCycle {
    NewCycle {
        tier_id: tier,
        deceased_member_id: deceased,
        claim_reference: claim.into(),
        contribution: Money {
            currency: Currency::Sle,
            value_minor: 2_500,
        },
        duration_days: 30,
    }
}
