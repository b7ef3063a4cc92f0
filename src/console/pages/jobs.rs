//! `/admin/jobs`: find jobs, look at one, retry or cancel it.

use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use poda_jobs::audit::Actor;
use poda_jobs::engine::queue::list_queues;
use poda_jobs::engine::{admin, JobId};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};

use crate::console::error::ConsoleError;
use crate::console::layout::{action_button, badge, time, time_opt, Page};
use crate::console::session::CsrfChecked;
use crate::console::session::Session;
use crate::http::state::AppState;

const PAGE_SIZE: i64 = 50;
const STATES: &[&str] = &["available", "running", "completed", "failed", "cancelled"];

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct JobFilter {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    queue: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kind: String,
    /// A job id, a unique key, or a payment id (a ticket job's unique key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    q: String,
    /// Keyset pagination: jobs with a smaller id than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<i64>,
}

impl JobFilter {
    /// This filter's page of jobs older than `before` (the first page for `None`).
    fn href(&self, before: Option<i64>) -> String {
        let page = JobFilter {
            before,
            ..self.clone()
        };
        let query = serde_urlencoded::to_string(&page).expect("a filter encodes");
        format!("/admin/jobs?{query}")
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    queue: String,
    kind: String,
    state: String,
    attempt: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_error: Option<String>,
}

pub async fn list(
    session: Session,
    State(state): State<AppState>,
    Query(filter): Query<JobFilter>,
) -> Result<Markup, ConsoleError> {
    if !filter.state.is_empty() && !STATES.contains(&filter.state.as_str()) {
        return Err(ConsoleError::BadRequest(format!(
            "there is no job state {:?}; states are {}",
            filter.state,
            STATES.join(", ")
        )));
    }
    let queues: Vec<String> = list_queues(&state.pool)
        .await?
        .into_iter()
        .map(|q| q.name)
        .collect();
    let mut rows: Vec<JobRow> = search(&filter, &queues)
        .build_query_as()
        .fetch_all(&state.pool)
        .await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let payment_hint = !filter.q.is_empty() && filter.q.parse::<i64>().is_err();

    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/admin/jobs" {
            select name="queue" aria-label="queue" {
                option value="" { "all queues" }
                @for q in &queues { option value=(q) selected[*q == filter.queue] { (q) } }
            }
            select name="state" aria-label="state" {
                option value="" { "all states" }
                @for s in STATES { option value=(s) selected[*s == filter.state] { (s) } }
            }
            input type="text" name="kind" placeholder="kind" value=(filter.kind) aria-label="kind";
            input type="search" name="q" placeholder="job id, unique key or payment id"
                value=(filter.q) size="32" aria-label="search";
            button type="submit" { "Filter" }
        }
        @if payment_hint {
            p.muted { "Looking for a payment? "
                a href={"/admin/payments/" (encode(&filter.q))} { "Its timeline" } "." }
        }
        div.table-wrap { table id="jobs" {
            thead { tr {
                th.num { "Id" } th { "Queue" } th { "Kind" } th { "State" } th.num { "Attempts" }
                th { "Run at" } th { "Updated" } th { "Last error" }
            } }
            tbody {
                @for j in &rows {
                    tr data-job=(j.id) {
                        td.num { a href={"/admin/jobs/" (j.id)} { (j.id) } }
                        td { (j.queue) } td { (j.kind) } td { (badge(&j.state)) }
                        td.num { (j.attempt) "/" (j.max_attempts) }
                        td { (time(j.run_at)) } td { (time(j.updated_at)) }
                        td.error { (j.last_error.as_deref().map(first_line).unwrap_or_default()) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="8" .muted { "No jobs match." } } }
            }
        } }
        div.pager {
            @if filter.before.is_some() {
                a href=(filter.href(None)) { "Newest" }
            }
            @if more { @if let Some(last) = rows.last() {
                a href=(filter.href(Some(last.id))) { "Older →" }
            } }
        }
    };
    Ok(Page::new("Jobs", "/admin/jobs").render(&session, body))
}

/// The page's query, newest first from `before`. Built at run time because each filter is
/// optional. Every shape reads an index: the primary key backwards; a search by key reads
/// `jobs_unique_key_idx` once per queue (its leading column), as a search by id reads the key.
fn search<'a>(filter: &'a JobFilter, queues: &'a [String]) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::new(
        "SELECT id, queue, kind, state::text AS state, attempt, max_attempts, run_at, \
         updated_at, last_error FROM jobs WHERE true",
    );
    if !filter.queue.is_empty() {
        query.push(" AND queue = ").push_bind(&filter.queue);
    }
    if !filter.state.is_empty() {
        query
            .push(" AND state = ")
            .push_bind(&filter.state)
            .push("::job_state");
    }
    if !filter.kind.is_empty() {
        query.push(" AND kind = ").push_bind(&filter.kind);
    }
    let q = filter.q.trim();
    if !q.is_empty() {
        query.push(" AND (");
        if let Ok(id) = q.parse::<i64>() {
            query.push("id = ").push_bind(id).push(" OR ");
        }
        query
            .push("(queue = ANY(")
            .push_bind(queues)
            .push(") AND unique_key = ")
            .push_bind(q)
            .push("))");
    }
    if let Some(before) = filter.before {
        query.push(" AND id < ").push_bind(before);
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(PAGE_SIZE + 1);
    query
}

pub async fn show(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let id = parse_id(&id)?;
    let job = admin::fetch_job(&state.pool, id).await?;
    let payment = (job.queue == poda_jobs::ticket::QUEUE)
        .then_some(job.unique_key.as_deref())
        .flatten();
    let errors = job.errors.as_array().cloned().unwrap_or_default();
    let retryable = matches!(job.state.as_str(), "failed" | "cancelled" | "available");
    let cancellable = matches!(job.state.as_str(), "available" | "running");

    let body = html! {
        h1 { "Job " (job.id) " " (badge(job.state.as_str())) }
        div.actions {
            @if retryable { (action_button(&session, &format!("/admin/jobs/{}/retry", job.id), "Retry now", "")) }
            @if cancellable { (action_button(&session, &format!("/admin/jobs/{}/cancel", job.id), "Cancel", "danger")) }
        }
        div.card { dl.facts {
            dt { "Queue" } dd { a href={"/admin/jobs?queue=" (job.queue)} { (job.queue) } }
            dt { "Kind" } dd { (job.kind) }
            dt { "State" } dd id="state" { (job.state.as_str()) }
            dt { "Priority" } dd id="priority" { (job.priority) " (0 most urgent … 3)" }
            @if let Some(key) = &job.concurrency_key {
                dt { "Concurrency key" } dd.mono { (key) }
            }
            dt { "Attempts" } dd id="attempts" { (job.attempts) " of " (job.max_attempts) }
            dt { "Unique key" } dd.mono { (job.unique_key.as_deref().unwrap_or("—")) }
            @if let Some(payment) = payment {
                dt { "Payment" } dd { a href={"/admin/payments/" (encode(payment))} { (payment) } }
            }
            dt { "Run at" } dd { (time(job.run_at)) }
            dt { "Created" } dd { (time(job.created_at)) }
            dt { "Last attempt" } dd { (time_opt(job.attempted_at)) }
            dt { "Finished" } dd { (time_opt(job.finished_at)) }
            dt { "Updated" } dd { (time(job.updated_at)) }
        } }
        h2 { "Attempts that failed" }
        @if errors.is_empty() {
            p.muted { "None." }
        } @else {
            div.table-wrap { table id="errors" {
                thead { tr { th.num { "Attempt" } th { "At" } th { "Error" } } }
                tbody { @for e in errors.iter().rev() {
                    tr {
                        td.num { (e["attempt"]) }
                        td { (e["at"].as_str().and_then(|at| at.parse().ok()).map(time).unwrap_or_default()) }
                        td.error { (e["error"].as_str().unwrap_or("")) }
                    }
                } }
            } }
        }
        h2 { "Payload" }
        pre { (serde_json::to_string_pretty(&job.payload).unwrap_or_default()) }
    };
    Ok(Page::new(&format!("Job {}", job.id), "/admin/jobs").render(&session, body))
}

pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: CsrfChecked,
) -> Result<Redirect, ConsoleError> {
    let id = parse_id(&id)?;
    let job = admin::retry_job(&state.pool, id, &Actor::Console).await?;
    tracing::info!(job.id = %job.id, job.queue = %job.queue, "job retried from the console");
    Ok(Redirect::to(&format!("/admin/jobs/{id}")))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: CsrfChecked,
) -> Result<Redirect, ConsoleError> {
    let id = parse_id(&id)?;
    let job = admin::cancel_job(&state.pool, id, &Actor::Console).await?;
    tracing::info!(job.id = %job.id, job.queue = %job.queue, "job cancelled from the console");
    Ok(Redirect::to(&format!("/admin/jobs/{id}")))
}

fn parse_id(id: &str) -> Result<JobId, ConsoleError> {
    id.parse()
        .map_err(|_| ConsoleError::NotFound(format!("job {id} does not exist")))
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// What stays as it is in a path segment: letters, digits and `-_.~` (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A value as one path segment or query value.
pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}
