//! `/admin/login` and `/admin/logout`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use poda_jobs::audit::{self, action, subject, Actor, Event};
use serde::Deserialize;

use super::error::ConsoleError;
use super::layout::bare;
use super::session::{self, CsrfChecked, Session};
use crate::http::state::AppState;

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

pub async fn form(session: Option<Session>) -> Response {
    if session.is_some() {
        return Redirect::to("/admin").into_response();
    }
    page(None).into_response()
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !state.console.enabled() {
        let refusal = "The console is off: the enqueuer has no ADMIN_TOKEN.";
        return (StatusCode::UNAUTHORIZED, page(Some(refusal))).into_response();
    }
    if !session::is_admin_token(&state, &form.token) {
        tracing::warn!("console login refused: wrong admin token");
        let refusal = "That is not the admin token.";
        return (StatusCode::UNAUTHORIZED, page(Some(refusal))).into_response();
    }
    if let Err(error) = record(&state, action::CONSOLE_LOGIN).await {
        return error.into_response();
    }
    tracing::info!("console login");
    (session::start(&state, &headers), Redirect::to("/admin")).into_response()
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    _: CsrfChecked,
) -> Result<Response, ConsoleError> {
    record(&state, action::CONSOLE_LOGOUT).await?;
    Ok((session::end(&state, &headers), Redirect::to("/admin/login")).into_response())
}

/// Sessions begin and end in the audit trail too. Refused logins only reach the log: an
/// append-only table must not be something anyone can fill by guessing.
async fn record(state: &AppState, what: &'static str) -> Result<(), ConsoleError> {
    let mut tx = state.pool.begin().await?;
    let event = Event::new(what, subject::CONSOLE, "admin", serde_json::json!({}));
    audit::record(&mut tx, &Actor::Console, &event).await?;
    state.pool.commit(tx).await?;
    Ok(())
}

fn page(refusal: Option<&str>) -> Markup {
    bare(
        "Log in",
        html! {
            h1 { "Poda console" }
            @if let Some(refusal) = refusal { p.notice.danger id="refusal" { (refusal) } }
            form.card method="post" action="/admin/login" {
                p { label for="token" { "Admin token" } }
                p { input id="token" type="password" name="token" autocomplete="current-password"
                        required autofocus style="width: 100%"; }
                p { button type="submit" { "Log in" } }
            }
        },
    )
}
