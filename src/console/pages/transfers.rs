//! `/admin/transfers`: commission transfers per company, and the failed ones with Monime's
//! reason and a retry.

use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use maud::{html, Markup};
use poda_jobs::audit::Actor;
use poda_jobs::transfer::admin::retry_failed_transfer;
use serde::Deserialize;

use crate::console::error::ConsoleError;
use crate::console::layout::{action_button, count, money, time, Page};
use crate::console::session::CsrfChecked;
use crate::console::session::Session;
use crate::http::state::AppState;

/// Failed transfers shown, most recent first.
const FAILED_SHOWN: i64 = 100;

#[derive(Debug, Deserialize)]
pub struct CompanyFilter {
    #[serde(default)]
    company: String,
}

pub async fn list(
    session: Session,
    State(state): State<AppState>,
    Query(filter): Query<CompanyFilter>,
) -> Result<Markup, ConsoleError> {
    let companies = sqlx::query!(
        "SELECT s.company_id AS \"company_id!\", c.name, c.currency, s.total AS \"total!\", \
                s.completed AS \"completed!\", s.pending AS \"pending!\", \
                s.failed AS \"failed!\", s.amount_completed_minor AS \"amount_completed_minor!\" \
         FROM commission_transfer_stats s JOIN companies c ON c.id = s.company_id \
         ORDER BY s.company_id",
    )
    .fetch_all(&state.pool)
    .await?;
    let company = (!filter.company.is_empty()).then_some(filter.company.as_str());
    let failed = sqlx::query!(
        "SELECT ticket_id, company_id, amount_minor, currency, generation, idempotency_key, \
                monime_status, failure_code, last_error, updated_at \
         FROM commission_transfers \
         WHERE status = 'failed' AND ($1::text IS NULL OR company_id = $1) \
         ORDER BY updated_at DESC LIMIT $2",
        company,
        FAILED_SHOWN,
    )
    .fetch_all(&state.pool)
    .await?;

    let body = html! {
        h1 { "Commission transfers" }
        div.table-wrap { table id="companies" {
            thead { tr {
                th { "Company" } th.num { "Transfers" } th.num { "Completed" } th.num { "Under way" }
                th.num { "Failed" } th.num { "Paid out" }
            } }
            tbody {
                @for c in &companies { tr data-company=(c.company_id) {
                    td { a href={"/admin/transfers?company=" (super::jobs::encode(&c.company_id))} { (c.name) } }
                    td.num { (count(c.total)) }
                    td.num { (count(c.completed)) }
                    td.num { (count(c.pending)) }
                    td.num { (count(c.failed)) }
                    td.num { (money(c.amount_completed_minor, &c.currency)) }
                } }
                @if companies.is_empty() { tr { td colspan="6" .muted { "No transfers yet." } } }
            }
        } }
        h2 { "Failed" @if let Some(c) = company { " · " (c) " " a href="/admin/transfers" { "(all companies)" } } }
        @if failed.is_empty() {
            p.muted { "No failed transfers." }
        } @else {
            div.table-wrap { table id="failed-transfers" {
                thead { tr {
                    th.num { "Ticket" } th { "Company" } th.num { "Amount" } th { "Monime's reason" }
                    th.num { "Try" } th { "Failed" } th { "" }
                } }
                tbody { @for t in &failed { tr data-ticket=(t.ticket_id) {
                    td.num { (t.ticket_id) }
                    td { (t.company_id) }
                    td.num { (money(t.amount_minor, &t.currency)) }
                    td.error {
                        (t.failure_code.as_deref().or(t.monime_status.as_deref()).unwrap_or("—"))
                        @if let Some(e) = &t.last_error { br; span.muted { (e) } }
                    }
                    td.num { (t.generation) }
                    td { (time(t.updated_at)) }
                    td { (action_button(&session, &format!("/admin/transfers/{}/retry", t.ticket_id), "Retry", "")) }
                } } }
            } }
        }
    };
    Ok(Page::new("Transfers", "/admin/transfers").render(&session, body))
}

pub async fn retry(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
    _: CsrfChecked,
) -> Result<Redirect, ConsoleError> {
    let ticket_id: i64 = ticket_id
        .parse()
        .map_err(|_| ConsoleError::NotFound(format!("ticket {ticket_id} does not exist")))?;
    let retried = retry_failed_transfer(&state.pool, ticket_id, &Actor::Console).await?;
    tracing::info!(
        ticket.id = ticket_id,
        job.id = %retried.job_id,
        generation = retried.generation,
        "commission transfer retried from the console"
    );
    Ok(Redirect::to("/admin/transfers"))
}
