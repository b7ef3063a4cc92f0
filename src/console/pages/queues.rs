//! `/admin/queues`: every queue, paused or not, with pause and resume.

use axum::extract::{Path, State};
use axum::response::Redirect;
use maud::{html, Markup};
use poda_jobs::audit::Actor;
use poda_jobs::engine::admin::queue_stats;
use poda_jobs::engine::queue::list_queues;
use poda_jobs::engine::{pause_queue, resume_queue};

use crate::console::error::ConsoleError;
use crate::console::layout::{action_button, badge, count, time_opt, Page};
use crate::console::session::CsrfChecked;
use crate::console::session::Session;
use crate::http::state::AppState;

pub async fn list(session: Session, State(state): State<AppState>) -> Result<Markup, ConsoleError> {
    let queues = list_queues(&state.pool).await?;
    let stats = queue_stats(&state.pool).await?;
    let body = html! {
        h1 { "Queues" }
        p.muted { "A paused queue keeps its jobs and takes new ones; workers claim none of them until it is resumed. Running jobs finish." }
        div.table-wrap { table id="queue-list" {
            thead { tr { th { "Queue" } th { "State" } th { "Paused since" } th.num { "Pending" } th.num { "Running" } th { "" } } }
            tbody { @for q in &queues {
                @let s = stats.iter().find(|s| s.queue == q.name);
                tr data-queue=(q.name) {
                    td { a href={"/admin/jobs?queue=" (q.name)} { (q.name) } }
                    td { (badge(if q.paused_at.is_some() { "paused" } else { "active" })) }
                    td { (time_opt(q.paused_at)) }
                    td.num { (count(s.map_or(0, |s| s.pending))) }
                    td.num { (count(s.map_or(0, |s| s.running))) }
                    td {
                        @if q.paused_at.is_some() {
                            (action_button(&session, &format!("/admin/queues/{}/resume", q.name), "Resume", ""))
                        } @else {
                            (action_button(&session, &format!("/admin/queues/{}/pause", q.name), "Pause", "secondary"))
                        }
                    }
                }
            } }
        } }
    };
    Ok(Page::new("Queues", "/admin/queues").render(&session, body))
}

pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _: CsrfChecked,
) -> Result<Redirect, ConsoleError> {
    pause_queue(&state.pool, &name, &Actor::Console).await?;
    tracing::info!(queue = %name, "queue paused from the console");
    Ok(Redirect::to("/admin/queues"))
}

pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _: CsrfChecked,
) -> Result<Redirect, ConsoleError> {
    resume_queue(&state.pool, &name, &Actor::Console).await?;
    tracing::info!(queue = %name, "queue resumed from the console");
    Ok(Redirect::to("/admin/queues"))
}
