//! The operator console under `/admin`: server-rendered pages (maud), a signed session cookie
//! after the admin token was shown once, and a CSRF token on every form. It reads the
//! database with the same functions as the admin API and the CLI, and acts through them too.

pub mod error;
pub mod layout;
pub mod login;
pub mod pages;
pub mod session;

use axum::routing::{get, post};
use axum::Router;

use crate::http::state::AppState;
use pages::{audit, cycles, jobs, overview, payments, queues, transfers};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/login", get(login::form).post(login::login))
        .route("/admin/logout", post(login::logout))
        .route("/admin", get(overview::show))
        .route("/admin/jobs", get(jobs::list))
        .route("/admin/jobs/{id}", get(jobs::show))
        .route("/admin/jobs/{id}/retry", post(jobs::retry))
        .route("/admin/jobs/{id}/cancel", post(jobs::cancel))
        .route("/admin/queues", get(queues::list))
        .route("/admin/queues/{name}/pause", post(queues::pause))
        .route("/admin/queues/{name}/resume", post(queues::resume))
        .route("/admin/cycles", get(cycles::list))
        .route("/admin/cycles/{id}", get(cycles::show))
        .route("/admin/transfers", get(transfers::list))
        .route("/admin/transfers/{ticket_id}/retry", post(transfers::retry))
        .route("/admin/payments/{payment_id}", get(payments::show))
        .route("/admin/audit", get(audit::list))
}
