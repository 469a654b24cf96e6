//! The stored API tokens (`ListTokens`) and the confirmation before `RevokeToken`. Both calls
//! are admin only in the API, so another session sees the API's refusal instead.

use std::time::SystemTime;

use askama::Template;
use statiko_proto::v1 as pb;
use tonic::{Code, Status};

use super::{Calls, Layout};
use crate::console::format::{relative, timestamp, to_time};

/// One stored token as the page lists it (never its secret: the API has none to give).
#[derive(Debug)]
pub(crate) struct TokenRow {
    name: String,
    role: &'static str,
    scope: String,
    created_at: String,
    created_ago: String,
    created_by: String,
    /// "never", "in 3 days", "expired 2 h ago".
    expires: String,
    expired: bool,
    /// "never" when unused.
    last_used: String,
}

#[derive(Template)]
#[template(path = "console/tokens.html")]
pub(crate) struct Tokens {
    layout: Layout,
    tokens: Vec<TokenRow>,
    flash: Option<String>,
}

#[derive(Template)]
#[template(path = "console/revoke_token.html")]
pub(crate) struct ConfirmRevoke {
    layout: Layout,
    token: TokenRow,
}

/// The tokens page: `ListTokens`, by name. `revoked`: the name a revocation just removed.
pub(crate) async fn tokens(
    calls: &Calls<'_>,
    csrf: &str,
    revoked: Option<&str>,
) -> Result<Tokens, Status> {
    let now = SystemTime::now();
    let mut tokens: Vec<TokenRow> = list(calls).await?.iter().map(|t| row(t, now)).collect();
    tokens.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Tokens {
        layout: Layout::new("Tokens", "Tokens", csrf).live(),
        tokens,
        flash: revoked.map(|name| {
            format!("Token {name} revoked: every control replica refuses it from now on.")
        }),
    })
}

/// The page before a revocation: what the token is and what revoking it does.
pub(crate) async fn confirm_revoke(
    calls: &Calls<'_>,
    csrf: &str,
    name: &str,
) -> Result<ConfirmRevoke, Status> {
    let now = SystemTime::now();
    let token = list(calls)
        .await?
        .iter()
        .find(|t| t.name == name)
        .map(|t| row(t, now))
        .ok_or_else(|| Status::new(Code::NotFound, format!("name: no stored token {name:?}")))?;
    Ok(ConfirmRevoke {
        layout: Layout::new(format!("Revoke {name}"), "Tokens", csrf),
        token,
    })
}

/// `RevokeToken`.
pub(crate) async fn revoke(calls: &Calls<'_>, name: &str) -> Result<(), Status> {
    calls
        .tokens()
        .revoke_token(calls.request(pb::RevokeTokenRequest {
            name: name.to_owned(),
        }))
        .await?;
    Ok(())
}

async fn list(calls: &Calls<'_>) -> Result<Vec<pb::Token>, Status> {
    Ok(calls
        .tokens()
        .list_tokens(calls.request(pb::ListTokensRequest {}))
        .await?
        .into_inner()
        .tokens)
}

fn row(token: &pb::Token, now: SystemTime) -> TokenRow {
    let created = to_time(token.created_at.as_ref());
    let expires = to_time(token.expires_at.as_ref());
    let expired = expires.is_some_and(|t| t <= now);
    TokenRow {
        name: token.name.clone(),
        role: match token.role() {
            pb::TokenRole::Admin => "admin",
            pb::TokenRole::Readonly => "readonly",
            pb::TokenRole::Deployer => "deployer",
            pb::TokenRole::Unspecified => "unknown",
        },
        scope: token.scope.join(", "),
        created_at: created.map(timestamp).unwrap_or_default(),
        created_ago: created.map_or_else(String::new, |t| relative(t, now)),
        created_by: token.created_by.clone(),
        expires: match expires {
            None => "never".to_owned(),
            Some(t) if expired => format!("expired {}", relative(t, now)),
            Some(t) => relative(t, now),
        },
        expired,
        last_used: to_time(token.last_used_at.as_ref())
            .map_or_else(|| "never".to_owned(), |t| relative(t, now)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rows_and_pages() {
        let now = SystemTime::now();
        let ts = |t: SystemTime| Some(prost_types::Timestamp::from(t));
        let token = pb::Token {
            name: "ci-a".into(),
            role: pb::TokenRole::Deployer as i32,
            scope: vec!["*.a.test".into(), "b.test".into()],
            created_at: ts(now - Duration::from_secs(7200)),
            expires_at: ts(now - Duration::from_secs(60)),
            last_used_at: None,
            created_by: "admin".into(),
        };
        let r = row(&token, now);
        assert_eq!((r.role, r.scope.as_str()), ("deployer", "*.a.test, b.test"));
        assert!(r.expired && r.expires.starts_with("expired"), "{r:?}");
        assert_eq!(r.last_used, "never");

        let page = ConfirmRevoke {
            layout: Layout::new("Revoke ci-a", "Tokens", "tok"),
            token: r,
        };
        let html = page.render().unwrap();
        assert!(html.contains("action=\"/tokens/ci-a/revoke\""), "{html}");
        assert!(html.contains("name=\"csrf\" value=\"tok\""), "{html}");
    }
}
