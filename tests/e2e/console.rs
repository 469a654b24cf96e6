//! The web console (`control.console`) end to end.
//!
//! - `console_in_a_browser`: on a real cluster (etcd, control, three edges), headless Chromium
//!   signs in with the admin token, sees the three edges and the leader, opens a site, rolls a
//!   deployment back through the confirmation page and watches the page show the new live
//!   version, sees a deploy made through the API appear on the open page without a reload (the
//!   live refresh), and signs out. Every page is saved to
//!   `docs/console/*.png` (the README shows them). Then, over plain HTTPS: a forged form without
//!   (or with a wrong) CSRF token and a cross-site post are refused with 403, and a read-only
//!   session's rollback is refused with the API's own PERMISSION_DENIED message; nothing moved.
//! - `console_sessions_follow_the_api`: on a single node, a session expires after
//!   `sessionLifetime` (back to sign-in), a revoked stored token ends its session, a
//!   deployer's session sees only its scope and gets the API's refusals, a wrong token is
//!   refused at sign-in, and the console is off unless configured.
//! - `console_promotes_previews`: on a real cluster (etcd, control with `previews.domain`, two
//!   edges), a preview made through the API is listed on its site's page with its URL, its
//!   expiry and a Promote link; the confirmation page names what serves now and the preview;
//!   a form without the CSRF token is 403 and a read-only session gets the API's
//!   PERMISSION_DENIED message, both changing nothing; the admin's form starts
//!   `PromotePreview`, and the site's live deployment becomes the promoted one on every edge;
//!   an expired preview has no Promote link and its form gets the API's FAILED_PRECONDITION.
//! - `console_sessions_span_replicas`: two control replicas on one etcd; a session made on one
//!   opens pages on the other with the same CSRF token, outlives a restart of the replica it was
//!   made on, answers 503 (keeping the cookie) while etcd is down and works again once it is
//!   back, and a sign-out on the other ends it on both; etcd holds neither the token nor the
//!   session id, and the cookie does not hold the token in the clear.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use statiko_proto::v1::{
    CreateTokenRequest, DeployPreviewRequest, Deployment, DeploymentState, ListDeploymentsRequest,
    ListTokensRequest, TokenRole,
};
use statiko_tests::browser::Browser;
use statiko_tests::cluster::Cluster;
use statiko_tests::fixtures::{self, site};
use statiko_tests::{
    ADMIN_TOKEN, Control, ControlOptions, Etcd, HttpResponse, READONLY_TOKEN, StateStore,
    TlsTarget, http_request, require_tool, secs, wait_until,
};

use crate::control_common::etcd_dump;
use crate::previews::{deploy_preview, preview_request, with_previews};

/// `control.console` for a test control: any free port.
fn console_on(options: ControlOptions) -> ControlOptions {
    options.config(json!({"control": {"console": {"listen": "127.0.0.1:0"}}}))
}

/// Where the screenshots go: `docs/console/` of the repository (or `STATIKO_CONSOLE_SHOTS`).
fn screenshot_dir() -> PathBuf {
    std::env::var_os("STATIKO_CONSOLE_SHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/console"),
        PathBuf::from,
    )
}

/// A plain HTTPS client for the console, trusting the control's own certificate.
struct ConsoleHttp {
    addr: SocketAddr,
    ca_pem: String,
}

impl ConsoleHttp {
    fn new(control: &Control) -> Result<Self> {
        Ok(Self {
            addr: control.console_addr().context("console address")?,
            ca_pem: std::fs::read_to_string(control.ca_path()).context("control certificate")?,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
        form: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        let host = self.addr.to_string();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        let cookie = cookie.map(|c| format!("__Host-statiko-console={c}"));
        if let Some(cookie) = &cookie {
            all.push(("cookie", cookie));
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        if method == Method::POST {
            all.push(("content-type", "application/x-www-form-urlencoded"));
        }
        http_request(
            self.addr,
            Some(TlsTarget {
                server_name: "localhost",
                ca_pem: &self.ca_pem,
            }),
            method,
            &host,
            path,
            &all,
            Bytes::from(body),
        )
        .await
    }

    async fn get(&self, path: &str, cookie: &str) -> Result<HttpResponse> {
        self.send(Method::GET, path, Some(cookie), &[], &[]).await
    }

    async fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Result<HttpResponse> {
        self.send(Method::POST, path, Some(cookie), &[], form).await
    }

    /// Signs in with `token`; returns the session cookie's value (`{id}.{sealed token}`).
    async fn sign_in(&self, token: &str) -> Result<String> {
        let response = self
            .send(Method::POST, "/sign-in", None, &[], &[("token", token)])
            .await?;
        ensure!(
            response.status == StatusCode::SEE_OTHER && response.header("location") == Some("/"),
            "sign-in: {} {}",
            response.status,
            response.text()
        );
        let cookie = response.header("set-cookie").context("no session cookie")?;
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            ensure!(
                cookie.contains(attribute),
                "cookie without {attribute}: {cookie}"
            );
        }
        let id = cookie
            .strip_prefix("__Host-statiko-console=")
            .and_then(|rest| rest.split(';').next())
            .context("session cookie")?;
        Ok(id.to_owned())
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> Result<String> {
    let at = html
        .find("name=\"csrf\" value=\"")
        .context("no CSRF field in the page")?;
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    Ok(rest[..rest.find('"').context("CSRF value")?].to_owned())
}

#[track_caller]
fn assert_sign_in_redirect(response: &HttpResponse) {
    assert_eq!(
        response.status,
        StatusCode::SEE_OTHER,
        "{}",
        response.text()
    );
    assert_eq!(response.header("location"), Some("/sign-in"));
}

/// The site's deployments, as the API lists them.
async fn listed(cluster: &Cluster, domain: &str) -> Result<Vec<Deployment>> {
    let api = cluster.control.admin().await?;
    Ok(api
        .deployments()
        .list_deployments(ListDeploymentsRequest {
            domain: domain.to_owned(),
        })
        .await?
        .into_inner()
        .deployments)
}

/// The site's deployments by id: (state, app version).
async fn deployments(cluster: &Cluster, domain: &str) -> Result<HashMap<String, (i32, String)>> {
    Ok(listed(cluster, domain)
        .await?
        .into_iter()
        .map(|d| {
            let version = d.app.map(|a| a.version).unwrap_or_default();
            (d.id, (d.state, version))
        })
        .collect())
}

#[tokio::test]
async fn console_in_a_browser() -> Result<()> {
    statiko_tests::init();
    // Under CI all three are required: the test fails instead of skipping.
    if !require_tool("etcd") || !require_tool("chromium") || !require_tool("chromedriver") {
        return Ok(());
    }
    let cluster = Cluster::start_with_control(3, console_on, |edge| edge).await?;
    let control = &cluster.control;
    let api = control.admin().await?;
    let domain = "www.team-a.test";
    api.sites()
        .create_site(site(domain, &["team-a.test"]))
        .await?;
    api.sites()
        .create_site(site("docs.team-b.test", &[]))
        .await?;
    for version in ["1", "2"] {
        fixtures::upload_app(&api, "web", version).await?;
    }
    fixtures::upload_app(&api, "docs", "2026.12.1").await?;
    // Two stored tokens for the tokens page: team A's pipeline and a read-only one for a week.
    for (name, role, scope, expires_in) in [
        (
            "ci-team-a",
            TokenRole::Deployer,
            vec!["*.team-a.test".to_owned()],
            None,
        ),
        (
            "oncall",
            TokenRole::Readonly,
            vec![],
            Some(prost_types::Duration {
                seconds: 7 * 86_400,
                nanos: 0,
            }),
        ),
    ] {
        api.tokens()
            .create_token(CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                scope,
                expires_in,
            })
            .await?;
    }
    // Every edge listed and one leading before deploying (atomic rollbacks need a leader).
    let leader = cluster.settled().await?;
    fixtures::deploy(&api, domain, "web", "1", true, secs(30)).await?;
    fixtures::deploy(&api, domain, "web", "2", true, secs(30)).await?;
    fixtures::deploy(
        &api,
        "docs.team-b.test",
        "docs",
        "2026.12.1",
        true,
        secs(30),
    )
    .await?;
    let base = control.console_url()?;
    let shots = screenshot_dir();

    let browser = Browser::launch().await?;
    let page = browser.open(&format!("{base}/")).await?;
    // Signed out: the console sends the browser to sign in.
    page.wait_path("/sign-in", secs(10)).await?;
    page.screenshot(&shots.join("sign-in.png")).await?;
    page.fill("#token", ADMIN_TOKEN).await?;
    page.click("form[action='/sign-in'] button").await?;
    page.wait_path("/", secs(10)).await?;

    // Cluster: three edges, and the leader the edges report.
    page.wait_text("#edge-count", secs(10), |t| t == "3")
        .await?;
    let shown_leader = page.text("#leader").await?.unwrap_or_default();
    assert_eq!(shown_leader, leader, "the leader on the cluster page");
    let edges = page.texts("#edges tbody tr td:first-child").await?;
    assert_eq!(edges, ["edge-0", "edge-1", "edge-2"]);
    page.screenshot(&shots.join("cluster.png")).await?;

    // Sites, then the site: live web@2 on every edge.
    page.click("nav a[href='/sites']").await?;
    page.wait_path("/sites", secs(10)).await?;
    page.wait_text(
        &format!("tr[data-site='{domain}'] td.live"),
        secs(10),
        |t| t == "web@2",
    )
    .await?;
    page.screenshot(&shots.join("sites.png")).await?;
    page.click(&format!("tr[data-site='{domain}'] a")).await?;
    page.wait_path(&format!("/sites/{domain}"), secs(10))
        .await?;
    page.wait_text("#live-version", secs(10), |t| t == "web@2")
        .await?;
    let states = page.texts("#site-edges tbody tr td:last-child").await?;
    assert_eq!(states.len(), 3, "three edges report the site: {states:?}");
    // web@1 is kept staged on every edge (their node records say so): an instant rollback.
    page.wait_text(
        "#deployments tbody tr:last-child td:nth-child(6)",
        secs(15),
        |t| t == "kept staged on every edge (3): rolling back to it is instant",
    )
    .await?;
    page.screenshot(&shots.join("site.png")).await?;

    // Roll back through the confirmation page.
    let before = deployments(&cluster, domain).await?;
    page.click("a.button[href$='/rollback']").await?;
    page.wait_text("h1", secs(10), |t| t.starts_with("Roll back"))
        .await?;
    let target = page.text("form.confirm").await?;
    // web@1 is kept staged on every edge (the site page said so): the switch is instant.
    let summary = page.text("#summary").await?.unwrap_or_default();
    assert!(
        summary.contains("web@1") && summary.contains("every edge keeps it staged"),
        "{summary}"
    );
    page.screenshot(&shots.join("rollback-confirm.png")).await?;
    page.click("#confirm").await?;
    // The site page again, which shows the new live version once the leader's cutover is done,
    // without a reload: its script refreshes it.
    page.wait_text(".flash", secs(10), |t| {
        t.starts_with("Rollback started") || t.starts_with("Rolled back")
    })
    .await?;
    page.wait_text("#live-version", secs(60), |t| t == "web@1")
        .await
        .with_context(|| format!("confirmation said {target:?}\n{}", cluster.logs()))?;
    page.wait_text(
        "#deployments tbody tr:first-child td:nth-child(3)",
        secs(30),
        |t| t == "live",
    )
    .await?;
    // Once live, the refreshed flash says so.
    page.wait_text(".flash", secs(10), |t| {
        t.starts_with("Rolled back: deployment") && t.ends_with("is live.")
    })
    .await?;
    page.screenshot(&shots.join("site-rolled-back.png")).await?;
    let after = deployments(&cluster, domain).await?;
    assert_eq!(
        after.len(),
        before.len() + 1,
        "one new deployment: {after:?}"
    );
    let live: Vec<_> = after
        .values()
        .filter(|(state, _)| *state == DeploymentState::Live as i32)
        .collect();
    assert_eq!(live, [&(DeploymentState::Live as i32, "1".to_owned())]);

    // Certificates by expiry, apps and versions.
    page.click("nav a[href='/certificates']").await?;
    page.wait_path("/certificates", secs(10)).await?;
    page.wait_text("#certificates tbody tr td:nth-child(2)", secs(30), |t| {
        t == "self-signed"
    })
    .await?;
    page.screenshot(&shots.join("certificates.png")).await?;
    page.click("nav a[href='/apps']").await?;
    page.wait_path("/apps", secs(10)).await?;
    let versions = page.texts("#apps tbody tr td:nth-child(2)").await?;
    assert_eq!(
        versions,
        ["2026.12.1", "2", "1"],
        "docs, then web newest first"
    );
    page.screenshot(&shots.join("apps.png")).await?;
    page.click("nav a[href='/tokens']").await?;
    page.wait_path("/tokens", secs(10)).await?;
    let names = page.texts("#tokens tbody tr td:first-child").await?;
    assert_eq!(names, ["ci-team-a", "oncall"]);
    page.screenshot(&shots.join("tokens.png")).await?;

    // Live refresh: a change made elsewhere (a deploy through the API) appears on the open
    // site page without a reload (the marker set in the page survives: the script swapped
    // the content, nothing navigated).
    page.click("nav a[href='/sites']").await?;
    page.wait_path("/sites", secs(10)).await?;
    page.click(&format!("tr[data-site='{domain}'] a")).await?;
    page.wait_path(&format!("/sites/{domain}"), secs(10))
        .await?;
    page.wait_text("#live-version", secs(10), |t| t == "web@1")
        .await?;
    page.eval("window.statikoMarker = 42").await?;
    fixtures::deploy(&api, domain, "web", "2", true, secs(30)).await?;
    page.wait_text("#live-version", secs(30), |t| t == "web@2")
        .await?;
    assert_eq!(
        page.eval("window.statikoMarker").await?,
        json!(42),
        "no reload"
    );

    // Sign out: back to sign-in, and the old pages ask to sign in again.
    page.click("form.sign-out button").await?;
    page.wait_path("/sign-in", secs(10)).await?;
    page.goto(&format!("{base}/sites")).await?;
    page.wait_path("/sign-in", secs(10)).await?;
    browser.close().await?;

    // Refusals, over plain HTTPS.
    let http = ConsoleHttp::new(control)?;
    let site_path = format!("/sites/{domain}");
    let rollback_path = format!("/sites/{domain}/rollback");
    let admin = http.sign_in(ADMIN_TOKEN).await?;
    let confirm = http.get(&rollback_path, &admin).await?;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text());
    let csrf = csrf_of(&confirm.text())?;
    let unchanged = deployments(&cluster, domain).await?;
    // A forged form: no CSRF token, a wrong one, one from another session, a cross-site post.
    let other_session = http.sign_in(ADMIN_TOKEN).await?;
    let other_csrf = csrf_of(&http.get("/", &other_session).await?.text())?;
    for form in [
        vec![("to", "")],
        vec![("csrf", "0000"), ("to", "")],
        vec![("csrf", other_csrf.as_str()), ("to", "")],
    ] {
        let forged = http.post(&rollback_path, &admin, &form).await?;
        assert_eq!(
            forged.status,
            StatusCode::FORBIDDEN,
            "{form:?}: {}",
            forged.text()
        );
        assert!(forged.text().contains("CSRF token"), "{}", forged.text());
    }
    let cross_site = http
        .send(
            Method::POST,
            &rollback_path,
            Some(&admin),
            &[("origin", "https://attacker.test")],
            &[("csrf", &csrf), ("to", "")],
        )
        .await?;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    // A read-only token: the confirmation renders (reads are allowed), the rollback is refused
    // with the API's message.
    let reader = http.sign_in(READONLY_TOKEN).await?;
    let page_html = http.get(&site_path, &reader).await?;
    assert_eq!(page_html.status, StatusCode::OK);
    assert!(page_html.text().contains("web@2"), "{}", page_html.text());
    let reader_csrf = csrf_of(&http.get(&rollback_path, &reader).await?.text())?;
    let refused = http
        .post(
            &rollback_path,
            &reader,
            &[("csrf", &reader_csrf), ("to", "")],
        )
        .await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    let text = refused.text();
    assert!(
        text.contains(
            "PERMISSION_DENIED: token &#34;readonly&#34; is read-only and cannot call /statiko.v1.DeploymentService/Rollback"
        ),
        "{text}"
    );
    assert_eq!(
        deployments(&cluster, domain).await?,
        unchanged,
        "no refused form changed anything"
    );
    Ok(())
}

#[tokio::test]
async fn console_sessions_follow_the_api() -> Result<()> {
    statiko_tests::init();
    // Off unless configured: the harness control has no console address.
    let plain = Control::start(ControlOptions::default()).await?;
    assert_eq!(plain.console_addr(), None);
    drop(plain);

    let control = Control::start(
        console_on(ControlOptions::default())
            .config(json!({"control": {"console": {"sessionLifetime": 2}}})),
    )
    .await?;
    let http = ConsoleHttp::new(&control)?;
    let api = control.admin().await?;
    for domain in ["www.a.test", "www.b.test"] {
        api.sites().create_site(site(domain, &[])).await?;
    }

    // A wrong token is refused at sign-in with the API's reason.
    let wrong = http
        .send(Method::POST, "/sign-in", None, &[], &[("token", "nope")])
        .await?;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.text().contains("invalid bearer token"),
        "{}",
        wrong.text()
    );
    assert!(wrong.header("set-cookie").is_none());

    // Expiry: fine at first, sent back to sign-in after sessionLifetime.
    let session = http.sign_in(ADMIN_TOKEN).await?;
    assert_eq!(http.get("/sites", &session).await?.status, StatusCode::OK);
    wait_until(secs(10), async || {
        let response = http.get("/sites", &session).await?;
        anyhow::Ok(response.status == StatusCode::SEE_OTHER)
    })
    .await?;
    assert_sign_in_redirect(&http.get("/", &session).await?);

    // A deployer scoped to *.a.test: its sites only, and the API's refusals elsewhere.
    let created = api
        .tokens()
        .create_token(CreateTokenRequest {
            name: "ci-a".into(),
            role: TokenRole::Deployer as i32,
            scope: vec!["*.a.test".into()],
            expires_in: None,
        })
        .await?
        .into_inner();
    let deployer = http.sign_in(&created.secret).await?;
    let sites = http.get("/sites", &deployer).await?;
    assert_eq!(sites.status, StatusCode::OK);
    assert!(sites.text().contains("www.a.test"), "{}", sites.text());
    assert!(!sites.text().contains("www.b.test"), "{}", sites.text());
    let other = http.get("/sites/www.b.test", &deployer).await?;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.text());
    assert!(
        other
            .text()
            .contains("token &#34;ci-a&#34; (deployer, scope *.a.test) may not read www.b.test"),
        "{}",
        other.text()
    );
    let cluster = http.get("/", &deployer).await?;
    assert_eq!(cluster.status, StatusCode::FORBIDDEN, "{}", cluster.text());
    assert!(
        cluster.text().contains("may not call ListNodes"),
        "{}",
        cluster.text()
    );

    // The tokens page: admin only, as ListTokens is.
    let denied = http.get("/tokens", &deployer).await?;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    let admin = http.sign_in(ADMIN_TOKEN).await?;
    let listed = http.get("/tokens", &admin).await?;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    for shown in ["ci-a", "deployer", "*.a.test", "never"] {
        assert!(listed.text().contains(shown), "{shown}: {}", listed.text());
    }
    assert!(
        !listed.text().contains(&created.secret),
        "the secret is shown"
    );

    // Revoking it from the console: a confirmation page, then a form with the CSRF token. A
    // form without it, and a read-only session's, change nothing.
    let confirm = http.get("/tokens/ci-a/revoke", &admin).await?;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text());
    assert!(
        confirm.text().contains("Revoke ci-a?"),
        "{}",
        confirm.text()
    );
    let missing = http.get("/tokens/nope/revoke", &admin).await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text());
    let forged = http.post("/tokens/ci-a/revoke", &admin, &[]).await?;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text());
    let reader = http.sign_in(READONLY_TOKEN).await?;
    let reader_csrf = csrf_of(&http.get("/apps", &reader).await?.text())?;
    let refused = http
        .post("/tokens/ci-a/revoke", &reader, &[("csrf", &reader_csrf)])
        .await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert!(
        refused.text().contains("PERMISSION_DENIED"),
        "{}",
        refused.text()
    );
    assert_eq!(http.get("/sites", &deployer).await?.status, StatusCode::OK);
    let csrf = csrf_of(&confirm.text())?;
    let revoked = http
        .post("/tokens/ci-a/revoke", &admin, &[("csrf", &csrf)])
        .await?;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.text());
    assert_eq!(revoked.header("location"), Some("/tokens?revoked=ci%2Da"));
    let after = http.get("/tokens?revoked=ci%2Da", &admin).await?;
    assert!(
        after.text().contains("Token ci-a revoked") && after.text().contains("No stored token"),
        "{}",
        after.text()
    );
    ensure!(
        api.tokens()
            .list_tokens(ListTokensRequest {})
            .await?
            .into_inner()
            .tokens
            .is_empty(),
        "the token is still stored"
    );

    // Revoking the token ended its session: the next page signs it out.
    assert_sign_in_redirect(&http.get("/sites", &deployer).await?);

    // Sign-out ends the session (its cookie no longer opens anything).
    let session = http.sign_in(ADMIN_TOKEN).await?;
    let csrf = csrf_of(&http.get("/apps", &session).await?.text())?;
    let out = http.post("/sign-out", &session, &[("csrf", &csrf)]).await?;
    assert_sign_in_redirect(&out);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the cookie is cleared"
    );
    assert_sign_in_redirect(&http.get("/apps", &session).await?);
    Ok(())
}

#[tokio::test]
async fn console_sessions_span_replicas() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let mut a = Control::start(console_on(
        ControlOptions::default().store(StateStore::etcd(&etcd)),
    ))
    .await?;
    let b = Control::start(console_on(
        ControlOptions::default().store(StateStore::etcd(&etcd)),
    ))
    .await?;
    a.admin()
        .await?
        .sites()
        .create_site(site("www.a.test", &[]))
        .await?;
    let (http_a, http_b) = (ConsoleHttp::new(&a)?, ConsoleHttp::new(&b)?);

    // Signed in on a, the cookie opens b's pages with the same CSRF token.
    let session = http_a.sign_in(ADMIN_TOKEN).await?;
    ensure!(
        !session.contains(ADMIN_TOKEN),
        "the cookie holds the token in the clear"
    );
    let on_a = http_a.get("/sites", &session).await?;
    let on_b = http_b.get("/sites", &session).await?;
    for page in [&on_a, &on_b] {
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        assert!(page.text().contains("www.a.test"), "{}", page.text());
    }
    assert_eq!(csrf_of(&on_a.text())?, csrf_of(&on_b.text())?);

    // The store holds a record per session, under a digest: not the token, not the id.
    let (id, _) = session.split_once('.').context("cookie: id.sealed")?;
    let dump = etcd_dump(&etcd).await?;
    let records: Vec<_> = dump
        .iter()
        .filter(|(key, _)| key.contains("/console/v1/sessions/"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    for (key, value) in &dump {
        for secret in [ADMIN_TOKEN, id] {
            ensure!(
                !key.contains(secret) && !value.contains(secret),
                "a console secret is stored at {key}"
            );
        }
    }

    // A restart of a signs nobody out (its console port changes, the session does not).
    a.restart().await?;
    let http_a = ConsoleHttp::new(&a)?;
    assert_eq!(http_a.get("/apps", &session).await?.status, StatusCode::OK);

    // While the store cannot say whether the session is live: 503, and the cookie is kept.
    let mut etcd = etcd;
    etcd.stop().await?;
    let down = http_b.get("/apps", &session).await?;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.text()
    );
    assert!(down.header("set-cookie").is_none(), "the cookie is kept");
    etcd.restart().await?;
    wait_until(secs(20), async || {
        anyhow::Ok(http_b.get("/apps", &session).await?.status == StatusCode::OK)
    })
    .await
    .context("the session works again once etcd is back")?;

    // Sign-out on b ends the session on a too.
    let csrf = csrf_of(&http_b.get("/apps", &session).await?.text())?;
    assert_sign_in_redirect(
        &http_b
            .post("/sign-out", &session, &[("csrf", &csrf)])
            .await?,
    );
    assert_sign_in_redirect(&http_a.get("/apps", &session).await?);
    assert_sign_in_redirect(&http_b.get("/apps", &session).await?);
    let left = etcd_dump(&etcd).await?;
    ensure!(
        !left
            .iter()
            .any(|(key, _)| key.contains("/console/v1/sessions/")),
        "the session record outlived sign-out"
    );
    Ok(())
}

#[tokio::test]
async fn console_promotes_previews() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let with_previews = |options: ControlOptions| console_on(with_previews(options));
    let cluster = Cluster::start_with_control(2, with_previews, |edge| edge).await?;
    let api = cluster.control.admin().await?;
    let domain = "shop.statiko.test";
    api.sites().create_site(site(domain, &[])).await?;
    for version in ["1", "2"] {
        fixtures::upload_app(&api, "web", version).await?;
    }
    cluster.settled().await?;
    fixtures::deploy(&api, domain, "web", "1", true, secs(30)).await?;
    let preview = deploy_preview(&api, preview_request(domain, "2")).await?;
    let url = preview
        .preview
        .as_ref()
        .context("preview details")?
        .url
        .clone();

    // The site page lists the preview with its URL, its expiry and a Promote link.
    let http = ConsoleHttp::new(&cluster.control)?;
    let admin = http.sign_in(ADMIN_TOKEN).await?;
    let site_path = format!("/sites/{domain}");
    let page = http.get(&site_path, &admin).await?;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let text = page.text();
    assert!(text.contains(&format!("href=\"{url}\"")), "{text}");
    // The default TTL, 72 h.
    assert!(text.contains("expires in 2 days"), "{text}");
    let promote_path = format!("/sites/{domain}/promote");
    let link = format!("{promote_path}?id={}", preview.id);
    assert!(text.contains(&link), "{text}");

    // The confirmation: what serves now, what promotion brings live.
    let confirm = http.get(&link, &admin).await?;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text());
    let text = confirm.text();
    assert!(text.contains("serves <strong>web@1</strong> now"), "{text}");
    assert!(
        text.contains(&format!("web@2 (preview {}, served at {url}", preview.id)),
        "{text}"
    );
    assert!(
        text.contains(&format!("name=\"id\" value=\"{}\"", preview.id)),
        "{text}"
    );
    let csrf = csrf_of(&text)?;

    // Refused: no CSRF token (403 before any call); a read-only session (the API's message).
    let unchanged = deployments(&cluster, domain).await?;
    let forged = http
        .post(&promote_path, &admin, &[("id", &preview.id)])
        .await?;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text());
    assert!(forged.text().contains("CSRF token"), "{}", forged.text());
    let reader = http.sign_in(READONLY_TOKEN).await?;
    let reader_csrf = csrf_of(&http.get(&link, &reader).await?.text())?;
    let refused = http
        .post(
            &promote_path,
            &reader,
            &[("csrf", &reader_csrf), ("id", &preview.id)],
        )
        .await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert!(
        refused.text().contains(
            "PERMISSION_DENIED: token &#34;readonly&#34; is read-only and cannot call /statiko.v1.DeploymentService/PromotePreview"
        ),
        "{}",
        refused.text()
    );
    assert_eq!(
        deployments(&cluster, domain).await?,
        unchanged,
        "no refused form changed anything"
    );

    // Promoted through the form: back to the site page with a flash, then live everywhere.
    let promoted = http
        .post(
            &promote_path,
            &admin,
            &[("csrf", &csrf), ("id", &preview.id)],
        )
        .await?;
    assert_eq!(
        promoted.status,
        StatusCode::SEE_OTHER,
        "{}",
        promoted.text()
    );
    let location = promoted.header("location").context("redirect")?.to_owned();
    let new_id = location
        .strip_prefix(&format!("/sites/{}?promote=", encode(domain)))
        .with_context(|| format!("redirect to {location}"))?
        .to_owned();
    let flash = http.get(&location, &admin).await?;
    assert!(
        flash
            .text()
            .contains(&format!("Promotion started: deployment {new_id}."))
            || flash
                .text()
                .contains(&format!("Promoted: deployment {new_id} is live.")),
        "{}",
        flash.text()
    );
    let live = wait_until(secs(30), async || {
        anyhow::Ok(
            listed(&cluster, domain)
                .await?
                .into_iter()
                .find(|d| d.state == DeploymentState::Live as i32 && d.id == new_id),
        )
    })
    .await
    .with_context(|| cluster.logs())?;
    assert_eq!(live.promoted_from, preview.id);
    assert_eq!(live.app.map(|a| a.version).as_deref(), Some("2"));
    let flash = http.get(&location, &admin).await?;
    assert!(
        flash
            .text()
            .contains(&format!("Promoted: deployment {new_id} is live.")),
        "{}",
        flash.text()
    );
    let served = fixtures::site_bundle_index("web@2");
    for edge in &cluster.edges {
        wait_until(secs(20), async || {
            let response = edge.https_get(domain, "/").await?;
            anyhow::Ok(response.body.as_ref() == served.as_slice())
        })
        .await
        .with_context(|| format!("{} serves the promoted version", edge.name()))?;
    }
    let page = http.get(&site_path, &admin).await?;
    assert!(
        page.text()
            .contains(&format!("promoted from preview {}", preview.id)),
        "{}",
        page.text()
    );
    drop(cluster);

    // An expired preview: the page shows it expired without a Promote link, and the form gets
    // the API's FAILED_PRECONDITION. No edge, so no leader collects it before the form is sent.
    let cluster = Cluster::start_with_control(0, with_previews, |edge| edge).await?;
    let api = cluster.control.admin().await?;
    api.sites().create_site(site(domain, &[])).await?;
    fixtures::upload_app(&api, "web", "1").await?;
    let short = api
        .deployments()
        .deploy_preview(DeployPreviewRequest {
            domain: domain.to_owned(),
            app: Some(fixtures::app_ref("web", "1")),
            ttl: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..DeployPreviewRequest::default()
        })
        .await?
        .into_inner()
        .deployment
        .context("the short preview")?;
    let http = ConsoleHttp::new(&cluster.control)?;
    let admin = http.sign_in(ADMIN_TOKEN).await?;
    let csrf = csrf_of(
        &http
            .get(&format!("{promote_path}?id={}", short.id), &admin)
            .await?
            .text(),
    )?;
    tokio::time::sleep(secs(6)).await;
    let text = http.get(&site_path, &admin).await?.text();
    assert!(
        text.contains("class=\"preview-expires\">expired "),
        "{text}"
    );
    assert!(!text.contains(&format!("?id={}", short.id)), "{text}");
    let expired = http
        .post(&promote_path, &admin, &[("csrf", &csrf), ("id", &short.id)])
        .await?;
    assert_eq!(expired.status, StatusCode::CONFLICT, "{}", expired.text());
    assert!(
        expired.text().contains(&format!(
            "FAILED_PRECONDITION: id: preview {} of {domain} expired",
            short.id
        )),
        "{}",
        expired.text()
    );
    assert!(
        listed(&cluster, domain)
            .await?
            .iter()
            .all(|d| d.state != DeploymentState::Live as i32),
        "nothing went live"
    );
    Ok(())
}
