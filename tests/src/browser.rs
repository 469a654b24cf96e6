//! Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol with
//! `chromiumoxide`, for the web console's tests: a fresh profile per browser, pages that wait
//! for what they expect, and screenshots.
//!
//! [`Browser::launch`] needs the `chromium` tool ([`crate::require_tool`] decides whether a
//! test without it skips or, under `CI`, fails).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use chromiumoxide::browser::{Browser as Chromium, BrowserConfig};
use chromiumoxide::handler::viewport::Viewport;
use chromiumoxide::page::ScreenshotParams;
use futures::StreamExt as _;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::bins::tool_path;
use crate::wait::wait_until;

/// The window every page renders in (also the screenshots' width).
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

/// A headless Chromium with its own profile directory. Closed (and the process reaped) by
/// [`Browser::close`]; dropped without it, chromiumoxide kills the process.
#[derive(Debug)]
pub struct Browser {
    chromium: Chromium,
    events: JoinHandle<()>,
    _profile: TempDir,
}

impl Browser {
    /// Starts `chromium` (see [`tool_path`]) headless. It accepts the console's self-signed
    /// certificate (the test trusts the control it started) and runs without its sandbox, which
    /// needs privileges a CI container (often root) does not grant.
    pub async fn launch() -> Result<Self> {
        let executable = tool_path("chromium").context("chromium is not installed")?;
        let profile = tempfile::Builder::new()
            .prefix("statiko-chromium-")
            .tempdir()
            .context("create the browser profile dir")?;
        let config = BrowserConfig::builder()
            .chrome_executable(executable)
            .new_headless_mode()
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(WIDTH, HEIGHT)
            .viewport(Viewport {
                width: WIDTH,
                height: HEIGHT,
                ..Viewport::default()
            })
            // Keys without their leading dashes: chromiumoxide adds them.
            .args([
                "disable-gpu",
                "disable-dev-shm-usage",
                "no-first-run",
                "ignore-certificate-errors",
            ])
            .launch_timeout(Duration::from_secs(60))
            .request_timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| anyhow!("chromium config: {err}"))?;
        let (chromium, mut handler) = Chromium::launch(config).await.context("launch chromium")?;
        // The DevTools connection only moves while its handler is polled.
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Ok(Self {
            chromium,
            events,
            _profile: profile,
        })
    }

    /// A new tab at `url`, loaded.
    pub async fn open(&self, url: &str) -> Result<Page> {
        let page = self
            .chromium
            .new_page(url)
            .await
            .with_context(|| format!("open {url}"))?;
        Ok(Page { page })
    }

    /// Closes the browser and waits for its process.
    pub async fn close(mut self) -> Result<()> {
        self.chromium.close().await.context("close chromium")?;
        self.chromium.wait().await.context("wait for chromium")?;
        self.events.abort();
        Ok(())
    }
}

/// One tab.
#[derive(Debug)]
pub struct Page {
    page: chromiumoxide::Page,
}

impl Page {
    /// Loads `url` and waits for the load to finish.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.page
            .goto(url)
            .await
            .with_context(|| format!("navigate to {url}"))?;
        Ok(())
    }

    /// The address shown in the address bar.
    pub async fn url(&self) -> Result<String> {
        self.page
            .url()
            .await
            .context("read the page URL")?
            .context("the page has no URL")
    }

    /// Evaluates a JavaScript expression and returns its JSON value.
    pub async fn eval(&self, expression: &str) -> Result<serde_json::Value> {
        let result = self
            .page
            .evaluate(expression)
            .await
            .with_context(|| format!("evaluate {expression}"))?;
        Ok(result.value().cloned().unwrap_or(serde_json::Value::Null))
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

    /// Types `text` into the field matching `selector`.
    pub async fn fill(&self, selector: &str, text: &str) -> Result<()> {
        self.page
            .find_element(selector)
            .await
            .with_context(|| format!("find {selector}"))?
            .click()
            .await
            .with_context(|| format!("focus {selector}"))?
            .type_str(text)
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
        anyhow::ensure!(
            clicked == serde_json::Value::Bool(true),
            "nothing matches {selector}"
        );
        Ok(())
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        self.page
            .save_screenshot(ScreenshotParams::builder().full_page(true).build(), path)
            .await
            .with_context(|| format!("screenshot to {}", path.display()))?;
        Ok(())
    }
}
