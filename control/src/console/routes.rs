//! The console's HTTP side: routing, the session cookie, forms and their CSRF check, and the
//! mapping of the API's gRPC status to an HTTP answer. Every page and action gets its data from
//! [`super::pages`], which only calls the API.
//!
//! | route | what |
//! |---|---|
//! | `GET /sign-in`, `POST /sign-in` | the token form; a session on success |
//! | `POST /sign-out` | ends the session |
//! | `GET /` | cluster: edges, leader, revisions |
//! | `GET /sites`, `GET /sites/{domain}` | sites; one site with its edges and deployments |
//! | `GET /sites/{domain}/rollback[?to=id]` | the confirmation page |
//! | `POST /sites/{domain}/rollback` | `Rollback` (form: `csrf`, `to`) |
//! | `GET /sites/{domain}/promote?id=id` | the promotion confirmation page |
//! | `POST /sites/{domain}/promote` | `PromotePreview` (form: `csrf`, `id`) |
//! | `GET /certificates`, `GET /apps` | certificates by expiry; apps and versions |
//! | `GET /tokens[?revoked=name]` | the stored API tokens |
//! | `GET /tokens/{name}/revoke` | the revocation confirmation page |
//! | `POST /tokens/{name}/revoke` | `RevokeToken` (form: `csrf`) |
//! | `GET /static/console.css`, `GET /static/console.js` | the stylesheet and the refresh script |

use std::collections::HashMap;

use askama::Template;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use statiko_common::store::StoreError;
use tonic::{Code, Status};

use super::Console;
use super::pages::{self, ErrorPage, Layout, SignIn};
use super::session::{self, Session};

const STYLESHEET: &str = include_str!("static/console.css");
const SCRIPT: &str = include_str!("static/console.js");
/// Largest form body read (a token or a CSRF token and a deployment id).
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Scripts and styles from this origin only, no inline code, no framing, forms post here only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

type Answer = Response<Full<Bytes>>;

/// Answers one request.
pub(crate) async fn handle<B>(console: &Console, request: Request<B>) -> Answer
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(parse_form).unwrap_or_default();
    match (&parts.method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/static/console.css") => {
            asset(STYLESHEET, "text/css; charset=utf-8")
        }
        (&Method::GET | &Method::HEAD, "/static/console.js") => {
            asset(SCRIPT, "text/javascript; charset=utf-8")
        }
        (&Method::GET | &Method::HEAD, "/sign-in") => {
            match current(console, &parts.headers).await {
                Ok(Some(_)) => redirect("/"),
                Ok(None) => html(
                    StatusCode::OK,
                    &SignIn {
                        layout: Layout::new("Sign in", "", ""),
                        error: None,
                    },
                ),
                Err(err) => store_unavailable(&err),
            }
        }
        (&Method::POST, "/sign-in") => {
            if !same_origin(&parts) {
                return cross_site();
            }
            match read_form(body).await {
                Some(form) => sign_in(console, form.get("token").map_or("", String::as_str)).await,
                None => too_large(),
            }
        }
        _ => {
            let (id, session) = match current(console, &parts.headers).await {
                Ok(Some(current)) => current,
                // No session, or it ended: sign in first.
                Ok(None) => return signed_out(),
                Err(err) => return store_unavailable(&err),
            };
            if parts.method == Method::POST {
                if !same_origin(&parts) {
                    return cross_site();
                }
                let Some(form) = read_form(body).await else {
                    return too_large();
                };
                if !form.get("csrf").is_some_and(|c| session.csrf_matches(c)) {
                    return error_page(
                        StatusCode::FORBIDDEN,
                        &session,
                        "Refused",
                        "The form's CSRF token is missing or does not belong to this session. Open the page again and resend the form.",
                        "/",
                    );
                }
                post(console, &id, &session, &path, &form).await
            } else if parts.method == Method::GET || parts.method == Method::HEAD {
                get(console, &id, &session, &path, &query).await
            } else {
                let mut answer = error_page(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &session,
                    "Method not allowed",
                    "The console answers GET and POST only.",
                    "/",
                );
                answer
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                answer
            }
        }
    }
}

async fn get(
    console: &Console,
    id: &str,
    session: &Session,
    path: &str,
    query: &HashMap<String, String>,
) -> Answer {
    let calls = console.grpc.as_token(&session.token);
    let csrf = session.csrf.as_str();
    let rendered = match path {
        "/" => pages::cluster(&calls, csrf).await.map(|p| render(&p)),
        "/sites" => pages::sites(&calls, csrf).await.map(|p| render(&p)),
        "/certificates" => pages::certificates(&calls, csrf).await.map(|p| render(&p)),
        "/apps" => pages::apps(&calls, csrf).await.map(|p| render(&p)),
        "/tokens" => {
            let revoked = query.get("revoked").map(String::as_str);
            pages::tokens(&calls, csrf, revoked)
                .await
                .map(|p| render(&p))
        }
        _ => match site_route(path) {
            Some((domain, None)) => {
                let flash = Action::ALL
                    .iter()
                    .find_map(|action| query.get(action.segment()).map(|d| action.flash(d)));
                pages::site(&calls, csrf, &domain, flash)
                    .await
                    .map(|p| render(&p))
            }
            Some((domain, Some(Action::Rollback))) => {
                let to = query.get("to").map_or("", String::as_str);
                pages::confirm(&calls, csrf, &domain, to)
                    .await
                    .map(|p| render(&p))
            }
            Some((domain, Some(Action::Promote))) => {
                let id = query.get("id").map_or("", String::as_str);
                pages::confirm_promote(&calls, csrf, &domain, id)
                    .await
                    .map(|p| render(&p))
            }
            None => match token_route(path) {
                Some(name) => pages::confirm_revoke(&calls, csrf, &name)
                    .await
                    .map(|p| render(&p)),
                None => {
                    return error_page(
                        StatusCode::NOT_FOUND,
                        session,
                        "Not found",
                        "The console has no such page.",
                        "/",
                    );
                }
            },
        },
    };
    match rendered {
        Ok(answer) => answer,
        Err(status) => api_error(console, id, session, &status, path).await,
    }
}

async fn post(
    console: &Console,
    id: &str,
    session: &Session,
    path: &str,
    form: &HashMap<String, String>,
) -> Answer {
    if path == "/sign-out" {
        return match console.sessions.remove(id).await {
            Ok(()) => signed_out(),
            // The cookie stays: the session is still live on every replica, so say so.
            Err(err) => error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                session,
                "Not signed out",
                &format!("The session could not be ended in the store ({err}). Try again."),
                "/",
            ),
        };
    }
    if let Some(name) = token_route(path) {
        let calls = console.grpc.as_token(&session.token);
        return match pages::revoke(&calls, &name).await {
            Ok(()) => {
                tracing::info!(token = %name, "token revoked from the console");
                redirect(&format!("/tokens?revoked={}", encode(&name)))
            }
            Err(status) => api_error(console, id, session, &status, "/tokens").await,
        };
    }
    let Some((domain, Some(action))) = site_route(path) else {
        return error_page(
            StatusCode::NOT_FOUND,
            session,
            "Not found",
            "The console has no such action.",
            "/",
        );
    };
    let calls = console.grpc.as_token(&session.token);
    let field = |name: &str| form.get(name).map_or("", String::as_str);
    let start = match action {
        Action::Rollback => pages::Start::Rollback(field("to")),
        Action::Promote => pages::Start::Promote(field("id")),
    };
    match pages::start(&calls, &domain, start).await {
        Ok(deployment) => {
            tracing::info!(site = %domain, deployment = %deployment.id, action = action.segment(), "action from the console");
            redirect(&format!(
                "/sites/{}?{}={}",
                encode(&domain),
                action.segment(),
                encode(&deployment.id)
            ))
        }
        Err(status) => {
            api_error(
                console,
                id,
                session,
                &status,
                &format!("/sites/{}", encode(&domain)),
            )
            .await
        }
    }
}

/// A state change on a site, behind a confirmation page (`GET /sites/{domain}/{segment}`)
/// and its form (`POST` to the same path), answered by a redirect to the site page with
/// `?{segment}={new deployment id}`, which shows it as a flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Rollback,
    Promote,
}

impl Action {
    const ALL: [Action; 2] = [Action::Rollback, Action::Promote];

    fn segment(self) -> &'static str {
        match self {
            Action::Rollback => "rollback",
            Action::Promote => "promote",
        }
    }

    fn flash(self, deployment: &str) -> pages::Flash {
        let (done, started) = match self {
            Action::Rollback => ("Rolled back", "Rollback started"),
            Action::Promote => ("Promoted", "Promotion started"),
        };
        pages::Flash {
            deployment: deployment.to_owned(),
            done,
            started,
        }
    }
}

async fn sign_in(console: &Console, token: &str) -> Answer {
    let token = token.trim();
    let refuse = |status: StatusCode, message: String| {
        html(
            status,
            &SignIn {
                layout: Layout::new("Sign in", "", ""),
                error: Some(message),
            },
        )
    };
    if token.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "token: required".into());
    }
    // The API decides whether the token is one: `ListSites` is open to every role, so only a
    // token the auth layer does not know (or a store it cannot ask) is refused here.
    let calls = console.grpc.as_token(token);
    let checked = calls
        .sites()
        .list_sites(calls.request(statiko_proto::v1::ListSitesRequest {}))
        .await;
    match checked {
        Err(status) if status.code() == Code::Unauthenticated => refuse(
            StatusCode::UNAUTHORIZED,
            format!("The API refused this token: {}", status.message()),
        ),
        Err(status) if status.code() != Code::PermissionDenied => refuse(
            http_status(status.code()),
            format!("The API could not check this token: {}", status.message()),
        ),
        _ => match console.sessions.create(token.to_owned()).await {
            Ok((cookie, _)) => {
                let mut answer = redirect("/");
                set_cookie(
                    &mut answer,
                    &session::set_cookie(&cookie, console.sessions.lifetime()),
                );
                answer
            }
            Err(session::CreateError::Full) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many console sessions are open; try again later.".into(),
            ),
            Err(session::CreateError::Store(err)) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The session could not be stored: {err}"),
            ),
        },
    }
}

/// The session the request's cookie names (with the cookie's value), if it is live.
async fn current(
    console: &Console,
    headers: &http::HeaderMap,
) -> Result<Option<(String, Session)>, StoreError> {
    let Some(cookie) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(session::from_cookies)
    else {
        return Ok(None);
    };
    Ok(console
        .sessions
        .get(cookie)
        .await?
        .map(|s| (cookie.to_owned(), s)))
}

/// The store could not say whether the session is live: a 503 that keeps the cookie.
fn store_unavailable(err: &StoreError) -> Answer {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        &ErrorPage {
            layout: Layout::new("Unavailable", "", ""),
            heading: "The console could not check the session".to_owned(),
            message: format!("The store did not answer: {err}. Reload the page to try again."),
            back: "/".to_owned(),
        },
    )
}

/// `/sites/{domain}` → `(domain, None)`, `/sites/{domain}/rollback` → `(domain,
/// Some(Rollback))`, `/sites/{domain}/promote` → `(domain, Some(Promote))`.
fn site_route(path: &str) -> Option<(String, Option<Action>)> {
    let rest = path.strip_prefix("/sites/")?;
    let (domain, action) = match rest.split_once('/') {
        None => (rest, None),
        Some((domain, segment)) => (
            domain,
            Some(Action::ALL.into_iter().find(|a| a.segment() == segment)?),
        ),
    };
    let domain = decode(domain);
    (!domain.is_empty()).then_some((domain, action))
}

/// `/tokens/{name}/revoke` → `name`.
fn token_route(path: &str) -> Option<String> {
    let name = decode(path.strip_prefix("/tokens/")?.strip_suffix("/revoke")?);
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Whether a form post comes from the console's own pages as far as the browser says
/// (`Sec-Fetch-Site`, `Origin`): a cross-site post is refused before the CSRF token is even
/// looked at; sign-in has no session to bind a token to, so this is its check.
fn same_origin(parts: &http::request::Parts) -> bool {
    let fetch_site = parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str));
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    // Browsers that send `Sec-Fetch-Site` say it directly; for the others, `Origin` (absent
    // from non-browser clients, which carry no ambient cookie to abuse) must be this console.
    match (fetch_site, origin) {
        (Some(site), _) => site == "same-origin" || site == "none",
        (None, None) => true,
        (None, Some(origin)) => host.is_some_and(|host| origin == format!("https://{host}")),
    }
}

fn cross_site() -> Answer {
    html(
        StatusCode::FORBIDDEN,
        &ErrorPage {
            layout: Layout::new("Refused", "", ""),
            heading: "Refused".into(),
            message: "A form posted from another site is refused.".into(),
            back: "/".into(),
        },
    )
}

fn too_large() -> Answer {
    html(
        StatusCode::PAYLOAD_TOO_LARGE,
        &ErrorPage {
            layout: Layout::new("Refused", "", ""),
            heading: "Refused".into(),
            message: format!("A form body may hold at most {MAX_FORM_BYTES} bytes."),
            back: "/".into(),
        },
    )
}

/// The form in a request body; `None` when it is larger than [`MAX_FORM_BYTES`] (or unreadable).
async fn read_form<B>(body: B) -> Option<HashMap<String, String>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = Limited::new(body, MAX_FORM_BYTES).collect().await.ok()?;
    Some(parse_form(&String::from_utf8_lossy(&collected.to_bytes())))
}

/// `application/x-www-form-urlencoded` (also a query string); the first value of a key wins.
fn parse_form(text: &str) -> HashMap<String, String> {
    let mut form = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        form.entry(decode(key)).or_insert_with(|| decode(value));
    }
    form
}

fn decode(text: &str) -> String {
    let text = text.replace('+', " ");
    percent_encoding::percent_decode_str(&text)
        .decode_utf8_lossy()
        .into_owned()
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An API refusal as a page: an unknown token (revoked, expired) ends the session; anything
/// else shows the API's own message with the matching HTTP status.
async fn api_error(
    console: &Console,
    id: &str,
    session: &Session,
    status: &Status,
    back: &str,
) -> Answer {
    if status.code() == Code::Unauthenticated {
        // The token no longer opens anything, so the record only waits for its lease; removing
        // it now is tidiness, and a failure to is harmless.
        if let Err(err) = console.sessions.remove(id).await {
            tracing::debug!(%err, "removing a console session whose token was refused");
        }
        return signed_out();
    }
    let heading = match status.code() {
        Code::PermissionDenied => "Not allowed",
        Code::NotFound => "Not found",
        Code::InvalidArgument | Code::FailedPrecondition => "Refused",
        _ => "The API could not answer",
    };
    error_page(
        http_status(status.code()),
        session,
        heading,
        &format!(
            "{}: {}",
            statiko_common::grpc::code_name(status.code()),
            status.message()
        ),
        back,
    )
}

fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_page(
    status: StatusCode,
    session: &Session,
    heading: &str,
    message: &str,
    back: &str,
) -> Answer {
    html(
        status,
        &ErrorPage {
            layout: Layout::new(heading, "", &session.csrf),
            heading: heading.to_owned(),
            message: message.to_owned(),
            back: back.to_owned(),
        },
    )
}

/// To the sign-in page, removing the cookie.
fn signed_out() -> Answer {
    let mut answer = redirect("/sign-in");
    set_cookie(&mut answer, &session::clear_cookie());
    answer
}

fn render<T: Template>(page: &T) -> Answer {
    html(StatusCode::OK, page)
}

fn html<T: Template>(status: StatusCode, page: &T) -> Answer {
    let (status, body) = match page.render() {
        Ok(body) => (status, body),
        Err(err) => {
            tracing::error!(error = %err, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            )
        }
    };
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    answer
}

fn asset(body: &'static str, content_type: &'static str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = answer.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(headers);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    answer
}

fn redirect(location: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        answer.headers_mut().insert(header::LOCATION, value);
    }
    secure_headers(answer.headers_mut());
    answer
}

fn set_cookie(answer: &mut Answer, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        answer.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn secure_headers(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: that makes browsers send `Origin: null` on form posts, which the
        // same-origin check would refuse.
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_forms() {
        assert_eq!(site_route("/sites/a.test"), Some(("a.test".into(), None)));
        assert_eq!(
            site_route("/sites/a.test/rollback"),
            Some(("a.test".into(), Some(Action::Rollback)))
        );
        assert_eq!(
            site_route("/sites/a.test/promote"),
            Some(("a.test".into(), Some(Action::Promote)))
        );
        let flash = Action::Promote.flash("d1");
        assert_eq!(flash.deployment, "d1");
        assert_eq!(
            flash.text(false),
            "Promotion started: deployment d1. The live version changes once every edge has staged it."
        );
        assert_eq!(
            Action::Rollback.flash("d2").text(true),
            "Rolled back: deployment d2 is live."
        );
        assert_eq!(site_route("/sites/a.test/other"), None);
        assert_eq!(token_route("/tokens/ci-a/revoke"), Some("ci-a".into()));
        assert_eq!(token_route("/tokens/ci%2Da/revoke"), Some("ci-a".into()));
        for other in [
            "/tokens",
            "/tokens//revoke",
            "/tokens/a/b/revoke",
            "/tokens/a",
        ] {
            assert_eq!(token_route(other), None, "{other}");
        }
        assert_eq!(site_route("/sites/"), None);
        let form = parse_form("csrf=ab%2Bc&to=&token=a+b&csrf=second");
        assert_eq!(form["csrf"], "ab+c", "the first value wins");
        assert_eq!(form["to"], "");
        assert_eq!(form["token"], "a b");
        assert_eq!(encode("a.test"), "a%2Etest");
        assert_eq!(decode("a%2Etest"), "a.test");
    }

    #[test]
    fn cross_site_posts() {
        let parts = |headers: &[(&str, &str)]| {
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri("/sign-in")
                .header("host", "127.0.0.1:2268");
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(same_origin(&parts(&[])));
        assert!(same_origin(&parts(&[("origin", "https://127.0.0.1:2268")])));
        assert!(same_origin(&parts(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&parts(&[("origin", "https://evil.test")])));
        assert!(!same_origin(&parts(&[("origin", "http://127.0.0.1:2268")])));
        assert!(!same_origin(&parts(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&parts(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&parts(&[("origin", "null")])));
        assert!(same_origin(&parts(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://127.0.0.1:2268")
        ])));
        assert_eq!(cross_site().status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn status_mapping() {
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
