//! `stk token create|list|revoke`: API tokens kept in the state (admin only). The secret of a new
//! token is printed once, on stdout, and is never written anywhere else by stk.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use statiko_proto::v1::{
    CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Token, TokenRole,
};

use crate::cli::parse_duration;
use crate::connect::Api;
use crate::output::{self, Table};
use crate::{Printer, usage_error};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token and print its secret (shown this once).
    Create {
        /// Token name (`^[a-z][a-z0-9.-]{0,62}$`), shown in logs and deployment history.
        name: String,
        /// What the token may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Deployer only: a domain (`www.a.test`) or pattern (`*.a.test`) it may act on (repeatable).
        #[arg(long = "scope", value_name = "PATTERN")]
        scope: Vec<String>,
        /// Lifetime, e.g. 90d, 12h; never expires when not given.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        expires: Option<Duration>,
    },
    /// List the stored tokens (never their secrets).
    List,
    /// Revoke a stored token; every control replica refuses it within a second.
    Revoke {
        /// Token name.
        name: String,
    },
}

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// Everything.
    Admin,
    /// Get and List calls only.
    Readonly,
    /// Upload apps; deploy to and read only the sites its --scope names.
    Deployer,
}

pub(crate) async fn run(api: &Api, printer: Printer, command: TokenCommand) -> anyhow::Result<()> {
    let timeout = api.timeout();
    match command {
        TokenCommand::Create {
            name,
            role,
            scope,
            expires,
        } => {
            let expires_in = expires
                .map(prost_types::Duration::try_from)
                .transpose()
                .map_err(|_| usage_error("--expires is too large"))?;
            let request = CreateTokenRequest {
                name,
                role: match role {
                    RoleArg::Admin => TokenRole::Admin,
                    RoleArg::Readonly => TokenRole::Readonly,
                    RoleArg::Deployer => TokenRole::Deployer,
                } as i32,
                scope,
                expires_in,
            };
            let response = api
                .unary(timeout, api.tokens().create_token(api.request(request)))
                .await?;
            let token = response.token.unwrap_or_default();
            printer.print(
                &json!({ "token": token_json(&token), "secret": response.secret }),
                || {
                    format!(
                        "{}\n{}\nstore this secret now: it is not shown again\n",
                        details(&token),
                        response.secret
                    )
                },
            )
        }
        TokenCommand::List => {
            let response = api
                .unary(
                    timeout,
                    api.tokens().list_tokens(api.request(ListTokensRequest {})),
                )
                .await?;
            printer.print(
                &json!({ "tokens": response.tokens.iter().map(token_json).collect::<Vec<_>>() }),
                || {
                    let mut table = Table::new(&[
                        "name",
                        "role",
                        "scope",
                        "created",
                        "expires",
                        "last used",
                        "created by",
                    ]);
                    for token in &response.tokens {
                        table.row([
                            token.name.clone(),
                            role_name(token.role()).to_owned(),
                            output::list(&token.scope),
                            output::timestamp(token.created_at.as_ref()),
                            expiry(token),
                            output::timestamp(token.last_used_at.as_ref()),
                            output::or_dash(&token.created_by),
                        ]);
                    }
                    table.render()
                },
            )
        }
        TokenCommand::Revoke { name } => {
            let request = RevokeTokenRequest { name: name.clone() };
            api.unary(timeout, api.tokens().revoke_token(api.request(request)))
                .await?;
            printer.print(&json!({}), || format!("revoked token {name}\n"))
        }
    }
}

fn role_name(role: TokenRole) -> &'static str {
    match role {
        TokenRole::Unspecified => "-",
        TokenRole::Admin => "admin",
        TokenRole::Readonly => "readonly",
        TokenRole::Deployer => "deployer",
    }
}

fn expiry(token: &Token) -> String {
    match token.expires_at {
        Some(_) => output::timestamp(token.expires_at.as_ref()),
        None => "never".to_owned(),
    }
}

/// Key/value view of a token (no secret: the record has none).
fn details(token: &Token) -> String {
    let mut table = Table::headless();
    table.row(["name", token.name.as_str()]);
    table.row(["role", role_name(token.role())]);
    table.row(["scope".to_owned(), output::list(&token.scope)]);
    table.row(["expires".to_owned(), expiry(token)]);
    table.render()
}

fn token_json(token: &Token) -> Value {
    json!({
        "name": token.name,
        "role": role_name(token.role()),
        "scope": token.scope,
        "created_at": output::timestamp_json(token.created_at.as_ref()),
        "expires_at": output::timestamp_json(token.expires_at.as_ref()),
        "last_used_at": output::timestamp_json(token.last_used_at.as_ref()),
        "created_by": token.created_by,
    })
}
