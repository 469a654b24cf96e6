//! `statiko.v1.TokenService`: API tokens kept in the store (admin only, see `auth::policy`).
//! The secret is generated here, returned once and never stored or logged: the record keeps its
//! SHA-256 digest.

use statiko_common::ids;
use statiko_common::model::{self, TokenRecord, TokenRole, now_ms};
use statiko_common::store::{Compare, TxnOp};
use statiko_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::{Caller, Scope, digest_of, generate_secret};
use crate::convert::{token_role_from_proto, token_to_proto};
use crate::error::{ControlError, Result, invalid};

impl Api {
    async fn create_token(
        &self,
        req: pb::CreateTokenRequest,
        created_by: String,
    ) -> Result<pb::CreateTokenResponse> {
        let name = ids::name("name", &req.name)?;
        let role = token_role_from_proto("role", req.role)?;
        let scope = Scope::parse("scope", &req.scope)?;
        match role {
            TokenRole::Deployer if scope.is_empty() => {
                return Err(invalid!(
                    "scope: a deployer token needs at least one domain or *.suffix pattern"
                ));
            }
            TokenRole::Admin | TokenRole::Readonly if !scope.is_empty() => {
                return Err(invalid!("scope: only deployer tokens have a scope"));
            }
            _ => {}
        }
        let now = now_ms();
        let expires_at = match &req.expires_in {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
                return Err(invalid!("expires_in: must be positive"));
            }
            Some(d) => Some(
                now.saturating_add(d.seconds.saturating_mul(1000))
                    .saturating_add(i64::from(d.nanos) / 1_000_000),
            ),
        };
        if self.ctx.auth.config_token_named(&name) {
            return Err(ControlError::Exists(format!(
                "name: a token named {name:?} is defined in the config (auth.tokens)"
            )));
        }
        let secret = generate_secret()?;
        let record = TokenRecord {
            name: name.clone(),
            role,
            scope: scope.to_strings(),
            digest: digest_of(&secret),
            created_at: now,
            created_by,
            expires_at,
            last_used_at: None,
        };
        let key = self.ctx.state.keys.token(&name);
        let result = self
            .ctx
            .state
            .store
            .txn(
                vec![Compare::absent(&key)],
                vec![TxnOp::put(&key, model::encode(&record))],
            )
            .await?;
        if !result.succeeded {
            return Err(ControlError::Exists(format!(
                "name: token {name:?} already exists; revoke it first or choose another name"
            )));
        }
        tracing::info!(token = %name, %role, scope = %scope, created_by = %record.created_by, "token created");
        self.ctx.tokens.remember(record.clone());
        Ok(pb::CreateTokenResponse {
            token: Some(token_to_proto(&record)),
            secret,
        })
    }

    async fn list_tokens(&self) -> Result<pb::ListTokensResponse> {
        let snapshot = self
            .ctx
            .state
            .store
            .snapshot(&self.ctx.state.keys.tokens())
            .await?;
        let tokens = snapshot
            .kvs
            .iter()
            .map(|kv| {
                model::decode::<TokenRecord>(&kv.value)
                    .map(|t| token_to_proto(&t))
                    .map_err(|err| {
                        ControlError::Internal(anyhow::anyhow!(
                            "corrupt record at {}: {err}",
                            kv.key
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(pb::ListTokensResponse { tokens })
    }

    async fn revoke_token(&self, req: pb::RevokeTokenRequest, by: &str) -> Result<()> {
        let name = ids::name("name", &req.name)?;
        let key = self.ctx.state.keys.token(&name);
        let result = self
            .ctx
            .state
            .store
            .txn(vec![Compare::present(&key)], vec![TxnOp::delete(&key)])
            .await?;
        if !result.succeeded {
            let hint = if self.ctx.auth.config_token_named(&name) {
                " (it is a config token: remove it from auth.tokens)"
            } else {
                ""
            };
            return Err(ControlError::NotFound(format!(
                "token {name:?} not found{hint}"
            )));
        }
        self.ctx.tokens.forget(&name);
        tracing::info!(token = %name, revoked_by = %by, revision = result.revision, "token revoked");
        Ok(())
    }
}

fn caller_name<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Api {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let by = caller_name(&request);
        Ok(Response::new(
            Api::create_token(self, request.into_inner(), by).await?,
        ))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Ok(Response::new(Api::list_tokens(self).await?))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let by = caller_name(&request);
        Api::revoke_token(self, request.into_inner(), &by).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }
}
