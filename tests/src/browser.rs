//! Headless Chromium (Debian's `chromium` package) driven over the W3C WebDriver protocol by
//! `chromedriver` (Debian's `chromium-driver`), for the web console's tests: a fresh profile per
//! browser, pages that wait for what they expect, and screenshots. The protocol is plain JSON
//! over HTTP/1.1 on loopback, spoken with [`crate::net::http_request`].
//!
//! [`Browser::launch`] needs the `chromium` and `chromedriver` tools ([`crate::require_tool`]
//! decides whether a test without them skips or, under `CI`, fails).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::Command;

use crate::bins::tool_path;
use crate::net::{free_port, http_request};
use crate::process::ChildProcess;
use crate::wait::wait_until;

/// The window every page renders in (also the screenshots' width).
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;
/// How long chromedriver may take to answer `/status` as ready.
const DRIVER_READY: Duration = Duration::from_secs(30);
/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One WebDriver session: where chromedriver listens and the session's id.
#[derive(Debug, Clone)]
struct Session {
    driver: SocketAddr,
    id: String,
}

impl Session {
    /// Sends one WebDriver command (`path` below `/session/{id}`) and returns its `value`.
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        webdriver(
            self.driver,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
        .await
    }
}

/// Sends one WebDriver request to chromedriver at `driver`; a WebDriver error (any status but
/// 200) becomes an error naming its `error` and `message`.
async fn webdriver(
    driver: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let (headers, body): (&[(&str, &str)], Bytes) = match body {
        Some(body) => (
            &[("content-type", "application/json; charset=utf-8")],
            Bytes::from(body.to_string()),
        ),
        None => (&[], Bytes::new()),
    };
    let host = driver.to_string();
    let response = http_request(driver, None, method.clone(), &host, path, headers, body)
        .await
        .with_context(|| format!("WebDriver {method} {path}"))?;
    let reply: Value = serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "WebDriver {method} {path}: not JSON ({}): {}",
            response.status,
            response.text()
        )
    })?;
    let value = reply.get("value").cloned().unwrap_or(Value::Null);
    if response.status != http::StatusCode::OK {
        bail!(
            "WebDriver {method} {path}: {} {}: {}",
            response.status,
            value["error"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or_default()
        );
    }
    Ok(value)
}

/// A chromedriver with one headless Chromium session and its own profile directory. Closed
/// (session deleted, Chromium quit, chromedriver stopped) by [`Browser::close`]; dropped
/// without it, the session is deleted on a best-effort basis and chromedriver is killed.
#[derive(Debug)]
pub struct Browser {
    session: Session,
    driver: ChildProcess,
    closed: bool,
    _dir: TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and through it `chromium` (see
    /// [`tool_path`]) headless. It accepts the console's self-signed certificate (the test
    /// trusts the control it started) and runs without its sandbox, which needs privileges a CI
    /// container (often root) does not grant.
    pub async fn launch() -> Result<Self> {
        let chromium = tool_path("chromium").context("chromium is not installed")?;
        let chromedriver = tool_path("chromedriver").context("chromedriver is not installed")?;
        let dir = tempfile::Builder::new()
            .prefix("statiko-chromium-")
            .tempdir()
            .context("create the browser dir")?;
        let profile = dir.path().join("profile");
        let port = free_port()?;
        let mut command = Command::new(chromedriver);
        command.arg(format!("--port={port}"));
        let mut driver = ChildProcess::spawn(
            "chromedriver",
            command,
            &dir.path().join("chromedriver.log"),
        )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        driver
            .wait_ready(DRIVER_READY, async || {
                let status = webdriver(addr, Method::GET, "/status", None).await?;
                anyhow::ensure!(status["ready"] == true, "not ready: {status}");
                Ok(())
            })
            .await?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "acceptInsecureCerts": true,
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--ignore-certificate-errors",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={WIDTH},{HEIGHT}"),
                ],
            },
        }}});
        let created = webdriver(addr, Method::POST, "/session", Some(capabilities))
            .await
            .with_context(|| format!("start chromium\n{}", driver.log_tail()))?;
        let id = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {created}"))?
            .to_owned();
        Ok(Self {
            session: Session { driver: addr, id },
            driver,
            closed: false,
            _dir: dir,
        })
    }

    /// The browser's window (a WebDriver session has one), its viewport `WIDTH` x `HEIGHT`, at
    /// `url`, loaded.
    pub async fn open(&self, url: &str) -> Result<Page> {
        let page = Page {
            session: self.session.clone(),
        };
        page.resize(u64::from(HEIGHT)).await?;
        page.goto(url).await?;
        Ok(page)
    }

    /// Deletes the session (Chromium quits) and stops chromedriver.
    pub async fn close(mut self) -> Result<()> {
        self.closed = true;
        self.session
            .command(Method::DELETE, "", None)
            .await
            .context("close chromium")?;
        self.driver.terminate().await.context("stop chromedriver")?;
        Ok(())
    }
}

impl Drop for Browser {
    /// A test that failed before [`Browser::close`]: asks chromedriver (synchronously, briefly)
    /// to delete the session so Chromium does not outlive it; the driver is killed after.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session.id, self.session.driver
        );
        let limit = Some(Duration::from_secs(10));
        if let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&self.session.driver, Duration::from_secs(1))
        {
            let _ = stream.set_read_timeout(limit);
            let _ = stream.set_write_timeout(limit);
            if stream.write_all(request.as_bytes()).is_ok() {
                // The reply comes once Chromium has quit.
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
    }
}

/// The browser's window.
#[derive(Debug)]
pub struct Page {
    session: Session,
}

impl Page {
    /// Loads `url` and waits for the load to finish.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.session
            .command(Method::POST, "/url", Some(json!({"url": url})))
            .await
            .with_context(|| format!("navigate to {url}"))?;
        Ok(())
    }

    /// The address shown in the address bar.
    pub async fn url(&self) -> Result<String> {
        let url = self
            .session
            .command(Method::GET, "/url", None)
            .await
            .context("read the page URL")?;
        url.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the page has no URL: {url}"))
    }

    /// Evaluates a JavaScript expression and returns its JSON value.
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        self.session
            .command(
                Method::POST,
                "/execute/sync",
                Some(json!({"script": format!("return ({expression});"), "args": []})),
            )
            .await
            .with_context(|| format!("evaluate {expression}"))
    }

    /// The text of the first element matching `selector` (trimmed), `None` when there is none.
    pub async fn text(&self, selector: &str) -> Result<Option<String>> {
        let selector = serde_json::to_string(selector)?;
        let value = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector}); return e ? e.textContent.trim() : null; }})()"
            ))
            .await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// The texts of every element matching `selector` (trimmed).
    pub async fn texts(&self, selector: &str) -> Result<Vec<String>> {
        let selector = serde_json::to_string(selector)?;
        let value = self
            .eval(&format!(
                "Array.from(document.querySelectorAll({selector})).map(e => e.textContent.trim())"
            ))
            .await?;
        Ok(serde_json::from_value(value).unwrap_or_default())
    }

    /// Waits (up to `limit`, scaled by patience) until the text at `selector` satisfies `check`;
    /// returns it. The failure names the last text seen.
    pub async fn wait_text(
        &self,
        selector: &str,
        limit: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let mut last = None;
        let found = wait_until(limit, async || {
            let text = self.text(selector).await?;
            last.clone_from(&text);
            anyhow::Ok(text.filter(|t| check(t)))
        })
        .await;
        found.with_context(|| format!("{selector}: last text {last:?}"))
    }

    /// Waits until the page's path (and query), percent-decoded, is `path`.
    pub async fn wait_path(&self, path: &str, limit: Duration) -> Result<()> {
        let mut last = String::new();
        let reached = wait_until(limit, async || {
            let here = self
                .eval("decodeURIComponent(location.pathname + location.search)")
                .await?;
            let here = here.as_str().unwrap_or_default().to_owned();
            let done = here == path;
            last = here;
            anyhow::Ok(done)
        })
        .await;
        if reached.is_err() {
            // A browser error page says why (certificate, connection refused, ...).
            let url = self.url().await.unwrap_or_default();
            let shown = self.text("body").await.ok().flatten().unwrap_or_default();
            return reached
                .with_context(|| format!("waiting to reach {path}, at {last} ({url}): {shown}"));
        }
        reached
    }

    /// Types `text` into the field matching `selector` (WebDriver focuses it first).
    pub async fn fill(&self, selector: &str, text: &str) -> Result<()> {
        let found = self
            .session
            .command(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await
            .with_context(|| format!("find {selector}"))?;
        let element = found[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| anyhow!("find {selector}: no element in {found}"))?;
        self.session
            .command(
                Method::POST,
                &format!("/element/{element}/value"),
                Some(json!({"text": text})),
            )
            .await
            .with_context(|| format!("type into {selector}"))?;
        Ok(())
    }

    /// Clicks the element matching `selector`, in the page itself (`element.click()`), so a
    /// live refresh swapping the DOM cannot invalidate it between finding and clicking.
    pub async fn click(&self, selector: &str) -> Result<()> {
        let quoted = serde_json::to_string(selector)?;
        let clicked = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({quoted}); if (!e) return false; e.click(); return true; }})()"
            ))
            .await?;
        anyhow::ensure!(clicked == Value::Bool(true), "nothing matches {selector}");
        Ok(())
    }

    /// Saves a PNG of the whole page to `path` (at least the `WIDTH` x `HEIGHT` window): the
    /// viewport is made as tall as the page,
    /// captured (WebDriver captures the viewport), and set back to `WIDTH` x `HEIGHT`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        // The root element's own height: scrollHeight would be at least the viewport's.
        let content = self.eval("document.documentElement.offsetHeight").await?;
        let tall = content.as_u64().unwrap_or(0).max(u64::from(HEIGHT));
        self.resize(tall).await?;
        let shot = self
            .session
            .command(Method::GET, "/screenshot", None)
            .await
            .context("take a screenshot");
        self.resize(u64::from(HEIGHT)).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot?.as_str().context("the screenshot is not a string")?)
            .context("decode the screenshot")?;
        std::fs::write(path, png).with_context(|| format!("screenshot to {}", path.display()))
    }

    /// Sizes the window so the viewport is `WIDTH` x `height` (the window's height includes
    /// what headless Chromium keeps for its frame and toolbar).
    async fn resize(&self, height: u64) -> Result<()> {
        let frame = self
            .eval(
                "[window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]",
            )
            .await?;
        let width = u64::from(WIDTH) + frame[0].as_u64().unwrap_or(0);
        let height = height + frame[1].as_u64().unwrap_or(0);
        self.session
            .command(
                Method::POST,
                "/window/rect",
                Some(json!({"width": width, "height": height})),
            )
            .await
            .with_context(|| format!("resize the window to {width}x{height}"))?;
        Ok(())
    }
}
