//! The headless-browser fixture against the in-process enqueuer: a page is loaded, a form
//! filled and submitted, the enqueuer's answer read as the browser renders it, and a
//! screenshot saved.

use std::time::Duration;

use crate::support::app::spawn_enqueuer;
use crate::support::browser::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_fixture_drives_chromium_against_the_enqueuer() {
    let app = spawn_enqueuer().await;
    let browser = Browser::start().await;

    browser.goto(&app.url("/healthz")).await;
    assert_eq!(browser.current_url().await, app.url("/healthz"));
    let body = browser.text("body").await;
    assert!(body.contains(r#""status":"ok""#), "{body}");

    // A form whose submission lands on the enqueuer: fill, click and wait for the new page.
    let form = format!(
        "data:text/html,<form action=\"{}\" method=\"get\">\
         <input name=\"probe\" value=\"old\"><button type=\"submit\">Go</button></form>",
        app.url("/healthz")
    );
    browser.goto(&form).await;
    browser.fill("input[name=probe]", "browser-smoke").await;
    browser.click("button[type=submit]").await;
    browser
        .wait_for_within("pre", Duration::from_secs(10))
        .await;
    assert_eq!(
        browser.current_url().await,
        app.url("/healthz?probe=browser-smoke")
    );
    let body = browser.text("pre").await;
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let title = browser.client().title().await.expect("read the page title");
    assert!(!title.contains("data:"), "{title}");

    let path = browser.screenshot("smoke-healthz").await;
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is a PNG",
        path.display()
    );
    assert!(png.len() > 100, "{} holds an image", path.display());
    browser.close().await;
}
