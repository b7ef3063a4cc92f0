//! `/admin/audit`: the audit trail, newest first, filterable by subject.

use axum::extract::{Query, State};
use maud::{html, Markup};
use poda_jobs::audit::{self, SubjectFilter};
use serde::{Deserialize, Serialize};

use crate::console::error::ConsoleError;
use crate::console::layout::{time, Page};
use crate::console::session::Session;
use crate::http::state::AppState;

const PAGE_SIZE: i64 = 100;
/// The subject types events are recorded under.
const SUBJECT_TYPES: &[&str] = &["job", "queue", "ticket", "transfer", "cycle", "console"];

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    subject_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    subject_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<i64>,
}

impl AuditQuery {
    fn href(&self, before: Option<i64>) -> String {
        let page = AuditQuery {
            before,
            ..self.clone()
        };
        let query = serde_urlencoded::to_string(&page).expect("a filter encodes");
        format!("/admin/audit?{query}")
    }

    fn subject(&self) -> Result<Option<SubjectFilter>, ConsoleError> {
        match (self.subject_type.as_str(), self.subject_id.trim()) {
            ("", "") => Ok(None),
            ("", _) => Err(ConsoleError::BadRequest(
                "a subject id needs its subject type".into(),
            )),
            (t, _) if !SUBJECT_TYPES.contains(&t) => Err(ConsoleError::BadRequest(format!(
                "there is no subject type {t:?}; types are {}",
                SUBJECT_TYPES.join(", ")
            ))),
            (t, "") => Ok(Some(SubjectFilter::of_type(t))),
            (t, id) => Ok(Some(SubjectFilter::one(t, id))),
        }
    }
}

pub async fn list(
    session: Session,
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Markup, ConsoleError> {
    let subject = query.subject()?;
    let mut events =
        audit::list(&state.pool, subject.as_ref(), query.before, PAGE_SIZE + 1).await?;
    let more = events.len() as i64 > PAGE_SIZE;
    events.truncate(PAGE_SIZE as usize);

    let body = html! {
        h1 { "Audit trail" }
        form.filters method="get" action="/admin/audit" {
            select name="subject_type" aria-label="subject type" {
                option value="" { "every subject" }
                @for t in SUBJECT_TYPES { option value=(t) selected[*t == query.subject_type] { (t) } }
            }
            input type="text" name="subject_id" placeholder="subject id" value=(query.subject_id)
                aria-label="subject id";
            button type="submit" { "Filter" }
        }
        div.table-wrap { table id="audit" {
            thead { tr { th { "At" } th { "Actor" } th { "Action" } th { "Subject" } th { "Details" } } }
            tbody {
                @for e in &events { tr data-event=(e.id) {
                    td { (time(e.at)) }
                    td.mono { (e.actor) }
                    td { code { (e.action) } }
                    td { (subject_link(&e.subject_type, &e.subject_id)) }
                    td.mono.muted.data { (e.data) }
                } }
                @if events.is_empty() { tr { td colspan="5" .muted { "No events." } } }
            }
        } }
        div.pager {
            @if query.before.is_some() { a href=(query.href(None)) { "Newest" } }
            @if more { @if let Some(last) = events.last() {
                a href=(query.href(Some(last.id))) { "Older →" }
            } }
        }
    };
    Ok(Page::new("Audit trail", "/admin/audit").render(&session, body))
}

/// A subject as a link to its page where the console has one, and to its own trail.
fn subject_link(subject_type: &str, id: &str) -> Markup {
    let page = match subject_type {
        "job" => Some(format!("/admin/jobs/{}", super::jobs::encode(id))),
        "cycle" => Some(format!("/admin/cycles/{}", super::jobs::encode(id))),
        "queue" => Some("/admin/queues".to_owned()),
        _ => None,
    };
    let trail = AuditQuery {
        subject_type: subject_type.to_owned(),
        subject_id: id.to_owned(),
        before: None,
    }
    .href(None);
    html! {
        @match page {
            Some(page) => { a href=(page) { (subject_type) " " (id) } },
            None => { (subject_type) " " (id) },
        }
        " " a.muted href=(trail) title="this subject's trail" { "⋯" }
    }
}
