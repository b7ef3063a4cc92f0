//! `/admin`: the queues at a glance.

use axum::extract::State;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use maud::{html, Markup};
use poda_jobs::db::Db;
use poda_jobs::engine::admin::{queue_stats, QueueStats};
use poda_jobs::engine::queue::list_queues;

use crate::console::error::ConsoleError;
use crate::console::layout::{count, duration, Page};
use crate::console::session::Session;
use crate::http::state::AppState;

/// Oldest pending job older than this: the queue is falling behind (amber).
pub const PENDING_WARN_S: i64 = 60;
/// … older than this: it is badly behind (red).
pub const PENDING_ALARM_S: i64 = 300;

pub async fn show(session: Session, State(state): State<AppState>) -> Result<Markup, ConsoleError> {
    let stats = queue_stats(&state.pool).await?;
    let paused: Vec<String> = list_queues(&state.pool)
        .await?
        .into_iter()
        .filter(|q| q.paused_at.is_some())
        .map(|q| q.name)
        .collect();
    let per_minute = completed_per_minute(&state.pool).await?;
    let total = |f: fn(&QueueStats) -> i64| stats.iter().map(f).sum::<i64>();
    let oldest = stats
        .iter()
        .map(|s| s.oldest_pending_age_s)
        .max()
        .unwrap_or(0);

    let body = html! {
        h1 { "Overview" }
        div.cards {
            (card("Pending", total(|s| s.pending), "", "pending"))
            (card("Running", total(|s| s.running), "", "running"))
            (card("Retrying", total(|s| s.retrying), "", "retrying"))
            (card("Scheduled", total(|s| s.scheduled), "", "scheduled"))
            (card("Failed", total(|s| s.failed), if total(|s| s.failed) > 0 { "bad" } else { "" }, "failed"))
            (card("Done, last hour", total(|s| s.done_last_hour), "", "done"))
            div class={"card " (age_tone(oldest))} data-stat="oldest-pending" {
                div.label { "Oldest pending" }
                div.value { (duration(oldest as u64)) }
            }
        }
        @if !paused.is_empty() {
            p.notice { "Paused: " @for (i, q) in paused.iter().enumerate() {
                @if i > 0 { ", " } a href="/admin/queues" { (q) }
            } }
        }
        h2 { "Completed per minute, last hour" }
        div.card { (chart(&per_minute)) }
        h2 { "Queues" }
        div.table-wrap { table id="queues" {
            thead { tr {
                th { "Queue" } th.num { "Pending" } th.num { "Running" } th.num { "Retrying" }
                th.num { "Scheduled" } th.num { "Failed" } th.num { "Done, 1 h" } th.num { "Oldest pending" }
            } }
            tbody { @for s in &stats {
                tr data-queue=(s.queue) {
                    td { a href={"/admin/jobs?queue=" (s.queue)} { (s.queue) }
                         @if paused.contains(&s.queue) { " " (crate::console::layout::badge("paused")) } }
                    td.num data-col="pending" { (count(s.pending)) }
                    td.num data-col="running" { (count(s.running)) }
                    td.num data-col="retrying" { (count(s.retrying)) }
                    td.num data-col="scheduled" { (count(s.scheduled)) }
                    td.num data-col="failed" { a href={"/admin/jobs?state=failed&queue=" (s.queue)} { (count(s.failed)) } }
                    td.num data-col="done" { (count(s.done_last_hour)) }
                    td.num class=(age_tone(s.oldest_pending_age_s)) { (duration(s.oldest_pending_age_s as u64)) }
                }
            } }
        } }
    };
    Ok(Page::new("Overview", "/admin")
        .refreshing(15)
        .render(&session, body))
}

fn card(label: &str, value: i64, tone: &str, key: &str) -> Markup {
    html! {
        div class={"card " (tone)} data-stat=(key) {
            div.label { (label) }
            div.value { (count(value)) }
        }
    }
}

fn age_tone(age_s: i64) -> &'static str {
    match age_s {
        a if a >= PENDING_ALARM_S => "bad",
        a if a >= PENDING_WARN_S => "warn",
        _ => "",
    }
}

/// Jobs completed in each of the last 60 whole minutes, oldest first (the current minute is
/// the last). Reads `jobs_finished_idx` for the hour only.
async fn completed_per_minute(pool: &Db) -> Result<Vec<(DateTime<Utc>, i64)>, ConsoleError> {
    let now = Utc::now()
        .duration_trunc(TimeDelta::minutes(1))
        .expect("a minute divides any instant");
    let since = now - TimeDelta::minutes(59);
    let rows = sqlx::query!(
        "SELECT date_trunc('minute', finished_at) AS \"minute!\", count(*) AS \"done!\" \
         FROM jobs WHERE finished_at >= $1 AND state = 'completed' GROUP BY 1",
        since,
    )
    .fetch_all(pool)
    .await?;
    Ok((0..60)
        .map(|i| {
            let minute = since + TimeDelta::minutes(i);
            let done = rows
                .iter()
                .find(|r| r.minute == minute)
                .map_or(0, |r| r.done);
            (minute, done)
        })
        .collect())
}

/// Sixty bars in an SVG: no script, scales with the page.
fn chart(per_minute: &[(DateTime<Utc>, i64)]) -> Markup {
    let peak = per_minute.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let width = 600.0;
    let height = 100.0;
    let slot = width / per_minute.len().max(1) as f64;
    html! {
        svg.chart viewBox={"0 0 " (width) " " (height + 14.0)} preserveAspectRatio="none"
            role="img" aria-label="completed jobs per minute" {
            @for (i, (minute, n)) in per_minute.iter().enumerate() {
                @let h = (*n as f64 / peak as f64) * height;
                rect x=(i as f64 * slot + 1.0) y=(height - h) width=(slot - 2.0) height=(h) {
                    title { (minute.format("%H:%M")) ": " (count(*n)) }
                }
            }
            text x="0" y=(height + 12.0) font-size="10" fill="#6b7685" { "−60 min" }
            text x=(width) y=(height + 12.0) font-size="10" fill="#6b7685" text-anchor="end" {
                "now · peak " (count(peak)) "/min"
            }
        }
    }
}
