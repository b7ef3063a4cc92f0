//! The console in a real headless Chromium: log in, read the overview, retry a failed job
//! with its button, watch a cycle's progress page reach Active, log out. Each page is saved
//! as a screenshot under `target/console-screenshots/`.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use poda_jobs::db::Db;

use crate::support::app::{spawn_enqueuer, TestApp, ADMIN_TOKEN};
use crate::support::browser::Browser;
use crate::support::cycles::{cycle_request, seed_members, seed_tier};
use crate::support::monime::payment_completed;
use crate::support::process::spawn_worker;

const CYCLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls the text of `css` until `done` accepts it. Reloading pages replace their elements,
/// so a missing or stale element only means "not yet".
async fn wait_for_text(
    browser: &Browser,
    css: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Ok(element) = browser.client().find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if done(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never matched within {timeout:?}; last text {last:?} on {}",
            browser.current_url().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(browser: &Browser, app: &TestApp) {
    browser.goto(&app.url("/admin")).await;
    assert_eq!(browser.current_url().await, app.url("/admin/login"));
    browser.screenshot("login").await;
    browser.fill("input[name=token]", ADMIN_TOKEN).await;
    browser.click("button[type=submit]").await;
    wait_for_text(browser, "h1", Duration::from_secs(10), |t| t == "Overview").await;
    assert_eq!(browser.current_url().await, app.url("/admin"));
}

async fn scalar(pool: &Db, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn number(text: &str) -> i64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a number: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_reads_the_overview_retries_a_failed_job_and_logs_out() {
    let app = spawn_enqueuer().await;
    let pool = app.db.pool.clone();
    let mut jobs = vec![];
    for i in 0..7 {
        let event = payment_completed(&format!("evt-b{i}"), &format!("pay-b{i}"));
        jobs.push(app.post_event(&event).await.job_id());
    }
    let failed = jobs[3];
    sqlx::query(
        "UPDATE jobs SET state = 'failed', attempt = max_attempts, finished_at = now(), \
         last_error = 'route R-9 is not served by company C-2', \
         errors = jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(), \
                  'error', 'route R-9 is not served by company C-2')) \
         WHERE id = $1",
    )
    .bind(failed)
    .execute(&pool)
    .await
    .unwrap();

    let browser = Browser::start().await;
    log_in(&browser, &app).await;

    // The overview's numbers are the database's.
    let pending = scalar(&pool, "SELECT sum(pending)::bigint FROM job_queue_stats").await;
    let failed_count = scalar(&pool, "SELECT sum(failed)::bigint FROM job_queue_stats").await;
    assert_eq!((pending, failed_count), (6, 1));
    assert_eq!(
        number(&browser.text("[data-stat=pending] .value").await),
        pending
    );
    assert_eq!(
        number(&browser.text("[data-stat=failed] .value").await),
        failed_count
    );
    assert_eq!(
        number(
            &browser
                .text("tr[data-queue=tickets] td[data-col=pending]")
                .await
        ),
        pending
    );
    browser.screenshot("overview").await;

    // The failed job, found through the jobs page, retried with its button.
    browser.goto(&app.url("/admin/jobs?state=failed")).await;
    browser
        .wait_for(&format!("tr[data-job=\"{failed}\"]"))
        .await;
    browser.screenshot("jobs").await;
    browser.click(&format!("tr[data-job=\"{failed}\"] a")).await;
    wait_for_text(&browser, "#state", Duration::from_secs(10), |t| {
        t == "failed"
    })
    .await;
    assert!(browser.text("table#errors").await.contains("route R-9"));
    browser.screenshot("job").await;
    browser.click("form[action$=\"/retry\"] button").await;
    wait_for_text(&browser, "#state", Duration::from_secs(10), |t| {
        t == "available"
    })
    .await;
    let state: String = sqlx::query_scalar("SELECT state::text FROM jobs WHERE id = $1")
        .bind(failed)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "available");

    // The other pages render, for the record.
    for (path, name) in [
        ("/admin/queues", "queues"),
        ("/admin/transfers", "transfers"),
        ("/admin/payments/pay-b3", "payment"),
        ("/admin/audit", "audit"),
    ] {
        browser.goto(&app.url(path)).await;
        browser.wait_for("main h1").await;
        browser.screenshot(name).await;
        match name {
            "payment" => assert!(browser
                .text("#timeline")
                .await
                .contains("payment.completed")),
            // The retry made through the button is in the trail, with the console as actor.
            "audit" => {
                let newest = browser.text("table#audit tbody tr").await;
                assert!(newest.contains("console:admin"), "{newest}");
                assert!(newest.contains("job.retried"), "{newest}");
                assert!(newest.contains(&format!("job {failed}")), "{newest}");
            }
            _ => {}
        }
    }

    // Logging out ends the session: the console sends the browser back to the login.
    browser.goto(&app.url("/admin")).await;
    browser.click("form.logout button").await;
    wait_for_text(&browser, "h1", Duration::from_secs(10), |t| {
        t == "Poda console"
    })
    .await;
    assert_eq!(browser.current_url().await, app.url("/admin/login"));
    browser.goto(&app.url("/admin/jobs")).await;
    assert_eq!(browser.current_url().await, app.url("/admin/login"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycles_progress_page_follows_its_fan_out_to_active() {
    let app = spawn_enqueuer().await;
    let pool = app.db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 150_000, "active", 12).await;
    let reply = app
        .post_cycle(&cycle_request(tier, first, "CLM-BROWSER"), None)
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let id = reply.body["cycle_id"].as_i64().unwrap();

    let browser = Browser::start().await;
    log_in(&browser, &app).await;
    browser.goto(&app.url(&format!("/admin/cycles/{id}"))).await;
    // No worker yet: the cycle waits for its fan-out.
    assert_eq!(browser.text("#status").await, "Initializing");

    let _worker = spawn_worker(
        &app.db.url,
        &[
            "--queues",
            "contribution_cycles",
            "--cycle-chunk-size",
            "500",
        ],
    );
    // The page reloads itself while the cycle fans out; catch it part-way for the record.
    let partway = wait_for_text(&browser, "#progress", CYCLE_TIMEOUT, |t| {
        !t.starts_with("0 %") || t.contains("100 %")
    })
    .await;
    if !partway.starts_with("100 %") {
        browser.screenshot("cycle-progress").await;
    }
    wait_for_text(&browser, "#status", CYCLE_TIMEOUT, |t| t == "Active").await;
    let processed: i64 =
        sqlx::query_scalar("SELECT processed FROM contribution_cycles WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(processed, 150_000 - 1, "every member but the deceased");
    assert!(browser.text("#progress").await.starts_with("100 %"));
    assert!(browser.text("table#agents").await.contains("SLE"));
    browser.screenshot("cycle-active").await;
    browser.goto(&app.url("/admin/cycles")).await;
    browser.wait_for(&format!("tr[data-cycle=\"{id}\"]")).await;
    browser.screenshot("cycles").await;
    browser.close().await;
}
