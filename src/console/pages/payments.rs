//! `/admin/payments/{payment_id}`: one payment's timeline, from its webhook events to its
//! commission transfer (the read model of `GET /payments/{payment_id}`).

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use crate::console::error::ConsoleError;
use crate::console::layout::{badge, money, time, Page};
use crate::console::session::Session;
use crate::http::state::AppState;
use crate::payment_status::{self, Amount};

/// One line of the timeline: when, what, and the details.
struct Step {
    at: DateTime<Utc>,
    what: Markup,
}

pub async fn show(
    session: Session,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let payment = payment_status::fetch(&state.pool, &payment_id)
        .await?
        .ok_or_else(|| {
            ConsoleError::NotFound(format!("no event ever carried payment {payment_id:?}"))
        })?;

    let mut steps: Vec<Step> = payment
        .events
        .iter()
        .map(|e| Step {
            at: e.received_at,
            what: html! { "Webhook " code { (e.name) } " received " span.muted.mono { (e.id) } },
        })
        .collect();
    if let Some(ticket) = &payment.ticket {
        steps.push(Step {
            at: ticket.issued_at,
            what: html! {
                "Ticket " strong { (ticket.id) } " issued: " (amount(&ticket.amount))
                " on route " code { (ticket.route_id) } " of " (ticket.company_id)
                ", commission " (money(ticket.commission_minor, ticket.amount.currency.as_str()))
            },
        });
    }
    if let Some(transfer) = &payment.transfer {
        steps.push(Step {
            at: transfer.updated_at,
            what: html! {
                "Commission transfer " (badge(&transfer.status)) " " (amount(&transfer.amount))
                @if let Some(code) = &transfer.failure_code { " · Monime: " span.error { (code) } }
            },
        });
    }
    steps.sort_by_key(|s| s.at);

    let body = html! {
        h1 { "Payment " code { (payment.payment_id) } }
        h2 { "Timeline" }
        ol.timeline id="timeline" { @for s in &steps { li { (time(s.at)) br; (s.what) } } }
        h2 { "Ticket job" }
        @match &payment.job {
            Some(job) => {
                div.card { dl.facts {
                    dt { "Job" } dd { a href={"/admin/jobs/" (job.id)} { (job.id) } }
                    dt { "State" } dd id="job-state" { (badge(job.state.as_str())) }
                    dt { "Attempts" } dd { (job.attempts) }
                    dt { "Last error" } dd.error { (job.last_error.as_deref().unwrap_or("—")) }
                } }
            },
            None => { p.muted { "No job (pruned after its retention)." } },
        }
        @if let Some(transfer) = &payment.transfer {
            h2 { "Commission transfer" }
            div.card { dl.facts {
                dt { "Status" } dd id="transfer-status" { (badge(&transfer.status)) }
                dt { "Amount" } dd { (amount(&transfer.amount)) }
                dt { "Idempotency key" } dd.mono { (transfer.idempotency_key) }
                dt { "Monime transfer" } dd.mono { (transfer.monime_transfer_id.as_deref().unwrap_or("—")) }
                dt { "Failure" } dd.error { (transfer.failure_code.as_deref().unwrap_or("—")) }
                dt { "Updated" } dd { (time(transfer.updated_at)) }
            } }
        }
    };
    Ok(Page::new("Payment", "/admin/jobs").render(&session, body))
}

fn amount(amount: &Amount) -> String {
    money(amount.value, amount.currency.as_str())
}
