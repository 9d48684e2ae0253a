//! A real browser for the dashboard's tests: headless Chromium (Debian's `chromium`) driven over
//! WebDriver by Debian's `chromedriver`, started on a free loopback port with an empty profile of
//! its own, and stopped with everything it started in `Drop`.
//!
//! A browser that cannot start fails the test, naming what is missing: `.ci/run` installs
//! `chromium` and `chromium-driver`. `GRAYGATE_CHROMIUM` and `GRAYGATE_CHROMEDRIVER` name other
//! binaries.
//!
//! Every wait polls what the page shows, bounded by [`patient`]; a failure says what was
//! awaited and what the page showed instead. Screenshots go to `target/tmp/dashboard/`, kept
//! as the run's artifacts.

use super::eventually::patient;
use fantoccini::elements::Element;
use fantoccini::error::NewSessionError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a page may take to show what a step awaits, before patience.
const SHOW: Duration = Duration::from_secs(15);

/// Where the screenshots are saved: `target/tmp/dashboard/`.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// Headless Chromium under chromedriver, with one window.
pub struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn program(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_string())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium whose window is `width` x `height` CSS px.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = program("GRAYGATE_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("GRAYGATE_CHROMEDRIVER", "chromedriver");
        assert!(
            std::path::Path::new(&chromium).exists(),
            "no Chromium at {chromium}: the dashboard's browser tests need Debian's `chromium` \
             (`.ci/run` installs it; GRAYGATE_CHROMIUM names another binary)"
        );
        let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
        // A port picked free may be taken before chromedriver binds it: try again.
        for _ in 0..5 {
            let port = super::gateway::dead_addr().port();
            let mut driver = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                // Its own process group, so that `Drop` stops Chromium with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `{chromedriver}` ({e}): the dashboard's browser tests need \
                         Debian's `chromium-driver` (`.ci/run` installs it; GRAYGATE_CHROMEDRIVER \
                         names another binary)"
                    )
                });
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + patient(Duration::from_secs(20));
            let client = loop {
                if let Ok(Some(status)) = driver.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = driver.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    if err.contains("bind") || err.contains("in use") {
                        break None;
                    }
                    panic!("chromedriver exited ({status}) before it answered: {err}");
                }
                match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities(&chromium, &profile, width, height))
                    .connect(&url)
                    .await
                {
                    Ok(client) => break Some(client),
                    // Not listening yet.
                    Err(
                        NewSessionError::Lost(_)
                        | NewSessionError::Failed(_)
                        | NewSessionError::FailedC(_),
                    ) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        kill_group(&mut driver);
                        panic!(
                            "Chromium ({chromium}) did not start under chromedriver on {url}: {e}"
                        );
                    }
                }
            };
            if let Some(client) = client {
                let browser = Browser {
                    client,
                    driver,
                    _profile: profile,
                };
                browser.resize(width, height).await;
                return browser;
            }
            kill_group(&mut driver);
        }
        panic!("chromedriver did not start on any free port");
    }

    /// Sets the viewport (not the window) to `width` x `height` CSS px.
    pub async fn resize(&self, width: u32, height: u32) {
        // The window's frame takes some of it: measure and make up for it.
        self.client
            .set_window_size(width, height)
            .await
            .expect("set the window size");
        let inner = self
            .js("return [window.innerWidth, window.innerHeight]")
            .await;
        let (w, h) = (
            inner[0].as_u64().unwrap_or(width as u64) as u32,
            inner[1].as_u64().unwrap_or(height as u64) as u32,
        );
        if (w, h) != (width, height) {
            self.client
                .set_window_size(2 * width - w, 2 * height - h)
                .await
                .expect("set the window size");
        }
    }

    /// Opens `url` in the window.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body) in the page; what it returned.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script `{script}`: {e}"))
    }

    /// The elements that match `css` now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    /// The first element that matches `css`, once one does.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(patient(SHOW))
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page within {SHOW:?}: {e}"))
    }

    /// The text `css` shows now (`textContent`, so hidden text too), trimmed.
    pub async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        el.prop("textContent")
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Waits until the text of `css` satisfies `ok`, within `limit` (before patience); that text.
    pub async fn wait_text(
        &self,
        css: &str,
        what: &str,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + patient(limit);
        loop {
            let seen = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el
                    .prop("textContent")
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                Err(_) => String::from("(not on the page)"),
            };
            if ok(&seen) {
                return seen;
            }
            if Instant::now() > deadline {
                let message = self.text_or_none("#message").await;
                panic!(
                    "{what}: `{css}` showed `{seen}` after {:?} (#message: `{message}`)",
                    patient(limit)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn text_or_none(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Clicks `css` once it is on the page. The page re-renders lists as data arrives: an
    /// element replaced between finding and clicking it is found again (at most 20 times).
    pub async fn click(&self, css: &str) {
        for _ in 0..20 {
            match self.find(css).await.click().await {
                Ok(_) => return,
                Err(e) if e.to_string().contains("stale element") => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("click {css}: the element went stale 20 times");
    }

    /// Replaces what the field `css` holds with `text`, typed as keys.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Answers the page's confirmation dialog with its confirm button; the question it asked.
    pub async fn confirm(&self) -> String {
        let deadline = Instant::now() + patient(SHOW);
        while self
            .js("return document.getElementById('confirm').open")
            .await
            != json!(true)
        {
            assert!(Instant::now() < deadline, "no confirmation was asked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let question = self.text("#confirm-title").await;
        self.click("#confirm-ok").await;
        question
    }

    /// Saves a PNG of the window as `target/tmp/dashboard/<name>.png`; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Stops chromedriver and the Chromium it started (its process group).
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// Headless Chromium with a profile of its own and no call to anywhere but loopback.
fn capabilities(
    chromium: &str,
    profile: &tempfile::TempDir,
    width: u32,
    height: u32,
) -> serde_json::Map<String, Value> {
    let args = [
        "--headless=new".to_string(),
        // CI runs as root, where Chromium's sandbox does not start.
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--disable-quic".to_string(),
        "--no-first-run".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-extensions".to_string(),
        "--force-device-scale-factor=1".to_string(),
        format!("--window-size={width},{height}"),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    match caps {
        Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}
