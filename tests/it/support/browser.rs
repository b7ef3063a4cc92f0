//! `Browser`: a real headless Chromium driven over WebDriver, for the console's tests.
//!
//! ```ignore
//! let browser = Browser::start().await;       // chromedriver on a free port + a session
//! browser.goto(&app.url("/admin/login")).await;
//! browser.fill("input[name=token]", ADMIN_TOKEN).await;
//! browser.click("button[type=submit]").await;
//! browser.wait_for("h1").await;
//! assert_eq!(browser.text("h1").await, "Overview");
//! browser.screenshot("overview").await;        // target/console-screenshots/overview.png
//! browser.close().await;
//! ```
//!
//! Chromium comes from `CHROME_BIN` or `/usr/bin/chromium`, chromedriver from `CHROMEDRIVER`,
//! `/usr/bin/chromedriver` or the `PATH` (Debian packages `chromium` and `chromium-driver`,
//! which `.ci/run` installs). Without them the test fails and says so: it never passes
//! without a browser.
//!
//! chromedriver runs in a process group of its own with every browser process it starts;
//! dropping the `Browser` kills that group and removes the browser's profile directory, so a
//! failing test leaves no browser behind. [`Browser::close`] ends the session politely first.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// How long [`Browser::wait_for`] waits for an element.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long chromedriver gets to answer `/status` after it starts.
const DRIVER_START: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

const INSTALL_HINT: &str = "install the Debian packages `chromium` and `chromium-driver` \
     (.ci/run installs them when missing)";

pub struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session on it.
    /// Panics, naming what is missing, when Chromium or chromedriver is not installed.
    pub async fn start() -> Browser {
        let chrome = chrome_binary();
        let chromedriver = chromedriver_binary();
        let port = free_port();
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var("TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            // A group of its own, which the browsers it starts join: Drop kills them together.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let base = format!("http://127.0.0.1:{port}");
        if let Err(why) = wait_until_ready(&base, &mut driver).await {
            kill_group(&mut driver);
            panic!("chromedriver ({}) {why}", chromedriver.display());
        }

        let profile = profile_dir();
        let mut browser = Browser {
            client: None,
            driver,
            profile,
        };
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--no-first-run",
                    "--no-default-browser-check",
                    format!("--user-data-dir={}", browser.profile.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("capabilities are an object")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not open a Chromium session with {}: {e}",
                    chrome.display()
                )
            });
        browser.client = Some(client);
        browser
    }

    /// The WebDriver client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Loads `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// The URL the browser shows now (after redirects).
    pub async fn current_url(&self) -> String {
        self.client()
            .current_url()
            .await
            .expect("read the current URL")
            .to_string()
    }

    /// Waits up to [`WAIT`] for an element matching `css` and returns it.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.wait_for_within(css, WAIT).await
    }

    /// Waits up to `timeout` for an element matching `css`, polling, and returns it.
    pub async fn wait_for_within(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            match self.client().find(Locator::Css(css)).await {
                Ok(element) => return element,
                Err(e) if Instant::now() >= deadline => {
                    let url = self.current_url().await;
                    panic!("no element matches {css:?} after {timeout:?} on {url}: {e}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.wait_for(css).await;
        input
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css:?}: {e}"));
        input
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css:?}: {e}"));
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css:?}: {e}"));
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css:?}: {e}"))
    }

    /// Saves a PNG of the window to `<target>/console-screenshots/<name>.png` and returns
    /// its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = target_dir().join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Ends the session (Chromium quits), then stops chromedriver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client.close().await.expect("close the browser session");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kills chromedriver and every browser process in its group, and reaps chromedriver.
fn kill_group(driver: &mut Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(driver.id() as i32), Signal::SIGKILL);
    let _ = driver.wait();
}

/// Polls `<base>/status` until chromedriver says it is ready, or says why not.
async fn wait_until_ready(base: &str, driver: &mut Child) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + DRIVER_START;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("exited at start with {status}"));
        }
        if let Ok(response) = http.get(format!("{base}/status")).send().await {
            if let Ok(body) = response.json::<Value>().await {
                if body["value"]["ready"] == json!(true) {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "did not answer {base}/status within {DRIVER_START:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn chrome_binary() -> PathBuf {
    let path = std::env::var_os("CHROME_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        is_executable(&path),
        "Chromium is not installed at {} (set CHROME_BIN to another): {INSTALL_HINT}",
        path.display()
    );
    path
}

fn chromedriver_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMEDRIVER").map(PathBuf::from) {
        assert!(
            is_executable(&path),
            "CHROMEDRIVER names {}, which is not an executable",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin"))
        .chain(on_path)
        .map(|dir| dir.join("chromedriver"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!("chromedriver is not installed (not in /usr/bin nor on PATH): {INSTALL_HINT}")
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// A fresh, private profile directory for one browser.
fn profile_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "poda-browser-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the package), else the one this
/// test binary was built in (`<target>/<profile>/deps/it-…`), else `<package>/target`.
fn target_dir() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return package.join(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| package.join("target"))
}
