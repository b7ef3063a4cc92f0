//! `/admin/cycles`: contribution cycles, and one cycle's fan-out as it happens.

use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use poda_jobs::cycle::{fetch_progress, CycleId, CycleStatus};
use serde::Deserialize;

use crate::console::error::ConsoleError;
use crate::console::layout::{badge, count, duration, money, time, time_opt, Page};
use crate::console::session::Session;
use crate::http::state::AppState;

const PAGE_SIZE: i64 = 50;
/// Agents listed on a cycle's page, largest first.
const AGENTS_SHOWN: i64 = 200;

#[derive(Debug, Deserialize)]
pub struct Paging {
    before: Option<i64>,
}

pub async fn list(
    session: Session,
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Markup, ConsoleError> {
    let mut cycles = sqlx::query!(
        "SELECT id, code, claim_reference, status::text AS \"status!\", total, processed, \
                amount_minor, currency, created_at, activated_at, error \
         FROM contribution_cycles WHERE id < $1 ORDER BY id DESC LIMIT $2",
        paging.before.unwrap_or(i64::MAX),
        PAGE_SIZE + 1,
    )
    .fetch_all(&state.pool)
    .await?;
    let more = cycles.len() as i64 > PAGE_SIZE;
    cycles.truncate(PAGE_SIZE as usize);
    let body = html! {
        h1 { "Contribution cycles" }
        div.table-wrap { table id="cycles" {
            thead { tr {
                th { "Cycle" } th { "Claim" } th { "Status" } th.num { "Contributions" }
                th.num { "Each" } th { "Created" } th { "Activated" } th { "Reason" }
            } }
            tbody {
                @for c in &cycles { tr data-cycle=(c.id) {
                    td { a href={"/admin/cycles/" (c.id)} { (c.code) } }
                    td.mono { (c.claim_reference) }
                    td { (badge(&c.status)) }
                    td.num { (count(c.processed)) @if let Some(t) = c.total { " / " (count(t)) } }
                    td.num { (money(c.amount_minor, &c.currency)) }
                    td { (time(c.created_at)) }
                    td { (time_opt(c.activated_at)) }
                    td.error { (c.error.as_deref().unwrap_or("")) }
                } }
                @if cycles.is_empty() { tr { td colspan="8" .muted { "No cycles yet." } } }
            }
        } }
        @if more { @if let Some(last) = cycles.last() {
            div.pager { a href={"/admin/cycles?before=" (last.id)} { "Older →" } }
        } }
    };
    Ok(Page::new("Cycles", "/admin/cycles").render(&session, body))
}

struct CycleFacts {
    claim_reference: String,
    amount_minor: i64,
    currency: String,
    deadline: DateTime<Utc>,
    created_at: DateTime<Utc>,
    activated_at: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
    target_minor: Option<i64>,
}

pub async fn show(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let not_found = || ConsoleError::NotFound(format!("cycle {id} does not exist"));
    let cycle_id: CycleId = id.parse().map_err(|_| not_found())?;
    let progress = fetch_progress(&state.pool, cycle_id)
        .await?
        .ok_or_else(not_found)?;
    let facts = sqlx::query_as!(
        CycleFacts,
        "SELECT claim_reference, amount_minor, currency, deadline, created_at, activated_at, \
                failed_at, target_minor \
         FROM contribution_cycles WHERE id = $1",
        cycle_id.0,
    )
    .fetch_one(&state.pool)
    .await?;
    let agents = sqlx::query!(
        "SELECT agent_id, members, amount_minor FROM contribution_cycle_agents \
         WHERE cycle_id = $1 ORDER BY amount_minor DESC, agent_id LIMIT $2",
        cycle_id.0,
        AGENTS_SHOWN,
    )
    .fetch_all(&state.pool)
    .await?;
    let running = progress.status == CycleStatus::Initializing;
    let bar_class = match progress.status {
        CycleStatus::Failed => "progress failed",
        CycleStatus::Active | CycleStatus::Completed => "progress done",
        CycleStatus::Initializing => "progress",
    };

    let body = html! {
        h1 { "Cycle " (progress.code) " " span id="status" { (badge(progress.status.as_str())) } }
        div.card {
            div class=(bar_class) role="progressbar" aria-valuemin="0" aria-valuemax="100"
                aria-valuenow=(progress.percentage) {
                div style={"width: " (progress.percentage) "%"} {}
            }
            p id="progress" {
                strong { (progress.percentage) " %" } " · "
                (count(progress.processed)) " of "
                (progress.total.map(count).unwrap_or_else(|| "…".into())) " contributions"
                @if running {
                    " · " @match progress.eta_seconds {
                        Some(s) => { "about " (duration(s)) " left" },
                        None => { "estimating…" },
                    }
                }
            }
            @if let Some(error) = &progress.error {
                p.notice.danger id="reason" { "Failed: " (error) }
            }
        }
        div.card { dl.facts {
            dt { "Claim" } dd.mono { (facts.claim_reference) }
            dt { "Each member pays" } dd { (money(facts.amount_minor, &facts.currency)) }
            dt { "Target" } dd { (facts.target_minor.map(|t| money(t, &facts.currency)).unwrap_or_else(|| "—".into())) }
            dt { "Deadline" } dd { (time(facts.deadline)) }
            dt { "Created" } dd { (time(facts.created_at)) }
            dt { "Activated" } dd { (time_opt(facts.activated_at)) }
            dt { "Failed" } dd { (time_opt(facts.failed_at)) }
        } }
        h2 { "Agents" }
        @if agents.is_empty() {
            p.muted { "No contributions yet." }
        } @else {
            div.table-wrap { table id="agents" {
                thead { tr { th { "Agent" } th.num { "Members" } th.num { "To collect" } } }
                tbody { @for a in &agents { tr {
                    td.mono { (a.agent_id) }
                    td.num { (count(a.members)) }
                    td.num { (money(a.amount_minor, &facts.currency)) }
                } } }
            } }
            @if agents.len() as i64 == AGENTS_SHOWN { p.muted { "The " (AGENTS_SHOWN) " largest agents." } }
        }
    };
    let page = Page::new(&progress.code, "/admin/cycles");
    // While the fan-out runs the page reloads itself: a live bar with no script.
    let page = if running { page.refreshing(1) } else { page };
    Ok(page.render(&session, body))
}
