//! The console over HTTP: sessions, CSRF, and that each action changes the rows it should.
//! (`console_browser.rs` drives the same pages in a real browser.)

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

use crate::support::app::{spawn_enqueuer, spawn_enqueuer_with, TestApp, ADMIN_TOKEN};
use crate::support::monime::payment_completed;

/// A console user: the session cookie after login, and the CSRF token of the last page read.
struct ConsoleClient {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl ConsoleClient {
    fn new(app: &TestApp) -> Self {
        ConsoleClient {
            client: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            cookie: None,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let request = match &self.cookie {
            Some(cookie) => request.header(COOKIE, cookie),
            None => request,
        };
        let response = request.send().await.unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        Answer {
            status: response.status().as_u16(),
            location: header(LOCATION),
            set_cookie: header(SET_COOKIE),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.base)).form(form))
            .await
    }

    /// Logs in with `token`; keeps the session cookie when one is set.
    async fn login(&mut self, token: &str) -> Answer {
        let answer = self.post("/admin/login", &[("token", token)]).await;
        if let Some(set) = &answer.set_cookie {
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        answer
    }

    /// The CSRF token of the forms on `path`.
    async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let marker = "name=\"csrf\" value=\"";
        let start = page.body.find(marker).expect("a form with a CSRF token") + marker.len();
        page.body[start..start + 64].to_owned()
    }
}

async fn job_state(app: &TestApp, id: i64) -> String {
    sqlx::query_scalar("SELECT state::text FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn failed_job(app: &TestApp, payment: &str) -> i64 {
    let job = app
        .post_event(&payment_completed(&format!("evt-{payment}"), payment))
        .await
        .job_id();
    sqlx::query(
        "UPDATE jobs SET state = 'failed', attempt = max_attempts, last_error = 'monime said no', \
         finished_at = now() WHERE id = $1",
    )
    .bind(job)
    .execute(&app.db.pool)
    .await
    .unwrap();
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_action_without_a_session_redirects_to_the_login() {
    let app = spawn_enqueuer().await;
    let job = failed_job(&app, "pay-c1").await;
    let console = ConsoleClient::new(&app);
    for path in [
        "/admin",
        "/admin/jobs",
        "/admin/jobs/1",
        "/admin/queues",
        "/admin/cycles",
        "/admin/cycles/1",
        "/admin/transfers",
    ] {
        let answer = console.get(path).await;
        assert_eq!(
            (answer.status, answer.location.as_deref()),
            (303, Some("/admin/login")),
            "GET {path}"
        );
    }
    let retry = console
        .post(&format!("/admin/jobs/{job}/retry"), &[("csrf", "x")])
        .await;
    assert_eq!(
        (retry.status, retry.location.as_deref()),
        (303, Some("/admin/login"))
    );
    assert_eq!(job_state(&app, job).await, "failed");

    // A forged or altered cookie is no session either.
    let mut forged = ConsoleClient::new(&app);
    forged.cookie = Some("poda_console=v1.99999999999.abc".into());
    assert_eq!(forged.get("/admin").await.status, 303);
    let mut real = ConsoleClient::new(&app);
    real.login(ADMIN_TOKEN).await;
    let tampered = real.cookie.clone().unwrap().replace("v1.", "v1.9");
    forged.cookie = Some(tampered);
    assert_eq!(forged.get("/admin").await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_signed_strict_http_only_cookie_and_a_wrong_token_gets_none() {
    let app = spawn_enqueuer().await;
    let mut console = ConsoleClient::new(&app);
    let form = console.get("/admin/login").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"token\""));

    let wrong = console.login("not-the-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie.is_none());
    assert!(wrong.body.contains("not the admin token"));
    assert!(!wrong.body.contains(ADMIN_TOKEN));

    let right = console.login(ADMIN_TOKEN).await;
    assert_eq!(
        (right.status, right.location.as_deref()),
        (303, Some("/admin"))
    );
    let cookie = right.set_cookie.unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains(ADMIN_TOKEN));
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let overview = console.get("/admin").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Overview"));
    // The login page sends a logged-in user on.
    assert_eq!(console.get("/admin/login").await.status, 303);

    // Behind a TLS-terminating proxy the cookie travels over HTTPS only.
    let behind_tls = console
        .send(
            console
                .client
                .post(format!("{}/admin/login", console.base))
                .header("x-forwarded-proto", "https")
                .form(&[("token", ADMIN_TOKEN)]),
        )
        .await;
    assert!(behind_tls.set_cookie.unwrap().contains("Secure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_nobody_logs_in() {
    let app = spawn_enqueuer_with(|s| s.admin_token = Default::default()).await;
    let mut console = ConsoleClient::new(&app);
    let refused = console.login("").await;
    assert_eq!(refused.status, 401);
    assert!(refused.set_cookie.is_none());
    assert!(refused.body.contains("no ADMIN_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_needs_the_sessions_csrf_token() {
    let app = spawn_enqueuer().await;
    let job = failed_job(&app, "pay-c2").await;
    let mut console = ConsoleClient::new(&app);
    console.login(ADMIN_TOKEN).await;
    let path = format!("/admin/jobs/{job}/retry");

    for form in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "0".repeat(64).leak() as &str)],
    ] {
        let refused = console.post(&path, &form).await;
        assert_eq!(refused.status, 403, "{form:?}");
        assert_eq!(job_state(&app, job).await, "failed");
    }
    // No form at all is refused the same way.
    let bare = console
        .send(console.client.post(format!("{}{path}", console.base)))
        .await;
    assert_eq!(bare.status, 403);
    // Another session's token does not fit this session.
    let mut other = ConsoleClient::new(&app);
    other.login(ADMIN_TOKEN).await;
    let others_token = other.csrf("/admin").await;
    assert_eq!(
        console.post(&path, &[("csrf", &others_token)]).await.status,
        403
    );
    assert_eq!(job_state(&app, job).await, "failed");

    assert!(audit_of(&app, "job", &job.to_string()).await.is_empty());

    let csrf = console.csrf(&format!("/admin/jobs/{job}")).await;
    let retried = console.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(
        (retried.status, retried.location),
        (303, Some(format!("/admin/jobs/{job}")))
    );
    assert_eq!(job_state(&app, job).await, "available");
    assert_eq!(
        audit_of(&app, "job", &job.to_string()).await,
        vec![("console:admin".to_owned(), "job.retried".to_owned())]
    );
}

/// The (actor, action) of a subject's audit events, oldest first.
async fn audit_of(app: &TestApp, subject_type: &str, subject_id: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT actor, action FROM audit_events WHERE subject_type = $1 AND subject_id = $2 \
         ORDER BY id",
    )
    .bind(subject_type)
    .bind(subject_id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_in_the_browser() {
    let app = spawn_enqueuer().await;
    let mut console = ConsoleClient::new(&app);
    console.login(ADMIN_TOKEN).await;
    assert_eq!(console.post("/admin/logout", &[]).await.status, 403);
    let csrf = console.csrf("/admin").await;
    let out = console.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        (out.status, out.location.as_deref()),
        (303, Some("/admin/login"))
    );
    let removal = out.set_cookie.unwrap();
    assert!(
        removal.starts_with("poda_console=;") || removal.contains("Max-Age=0"),
        "{removal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_found_by_id_unique_key_or_state_and_paged_by_id() {
    let app = spawn_enqueuer().await;
    let mut console = ConsoleClient::new(&app);
    console.login(ADMIN_TOKEN).await;
    let mut jobs = vec![];
    for i in 0..120 {
        jobs.push(
            app.post_event(&payment_completed(
                &format!("evt-p{i}"),
                &format!("pay-p{i}"),
            ))
            .await
            .job_id(),
        );
    }
    let failed = failed_job(&app, "pay-needle").await;

    let by_key = console.get("/admin/jobs?q=pay-needle").await.body;
    assert!(by_key.contains(&format!("data-job=\"{failed}\"")));
    assert_eq!(by_key.matches("data-job=").count(), 1);
    assert!(by_key.contains("/admin/payments/pay-needle"));
    let by_id = console
        .get(&format!("/admin/jobs?q={}", jobs[7]))
        .await
        .body;
    assert_eq!(by_id.matches("data-job=").count(), 1);
    let by_state = console
        .get("/admin/jobs?state=failed&queue=tickets")
        .await
        .body;
    assert_eq!(by_state.matches("data-job=").count(), 1);
    assert!(by_state.contains("monime said no"));
    assert_eq!(console.get("/admin/jobs?state=bogus").await.status, 400);

    // Pages of 50, newest first, that neither skip nor repeat a job.
    let mut seen = vec![];
    let mut path = "/admin/jobs?queue=tickets".to_owned();
    loop {
        let page = console.get(&path).await.body;
        seen.extend(
            page.split("data-job=\"")
                .skip(1)
                .map(|s| s[..s.find('"').unwrap()].parse::<i64>().unwrap()),
        );
        let Some(at) = page.find("\">Older") else {
            break;
        };
        let href_start = page[..at].rfind("href=\"").unwrap() + 6;
        path = page[href_start..at].replace("&amp;", "&");
    }
    let mut expected = jobs.clone();
    expected.push(failed);
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_paused_and_resumed_from_the_console() {
    let app = spawn_enqueuer().await;
    let mut console = ConsoleClient::new(&app);
    console.login(ADMIN_TOKEN).await;
    let csrf = console.csrf("/admin/queues").await;
    let paused_at = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT paused_at FROM job_queues WHERE name = 'tickets'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
    };
    let paused = console
        .post("/admin/queues/tickets/pause", &[("csrf", &csrf)])
        .await;
    assert_eq!(paused.status, 303);
    assert!(paused_at().await.is_some());
    assert!(console.get("/admin").await.body.contains("Paused: "));
    console
        .post("/admin/queues/tickets/resume", &[("csrf", &csrf)])
        .await;
    assert!(paused_at().await.is_none());
    assert_eq!(
        audit_of(&app, "queue", "tickets").await,
        vec![
            ("console:admin".to_owned(), "queue.paused".to_owned()),
            ("console:admin".to_owned(), "queue.resumed".to_owned()),
        ]
    );
    // The trail shows them newest first, and filters by subject.
    let trail = console
        .get("/admin/audit?subject_type=queue&subject_id=tickets")
        .await
        .body;
    let resumed = trail
        .find("queue.resumed")
        .expect("the resume in the trail");
    let paused = trail.find("queue.paused").expect("the pause in the trail");
    assert!(resumed < paused, "newest first");
    assert_eq!(trail.matches("data-event=").count(), 2);
    assert_eq!(
        console.get("/admin/audit?subject_type=planet").await.status,
        400
    );
    let unknown = console
        .post("/admin/queues/no-such-queue/pause", &[("csrf", &csrf)])
        .await;
    assert_eq!(unknown.status, 404);
}
