//! What each role may call. `admin` calls everything; `readonly` calls `Get*`, `List*` and `Watch*`
//! (token management excepted); `deployer` calls only the methods in [`DEPLOYER_METHODS`], and
//! for the site-scoped ones ([`Access::Site`]) the auth layer reads the request message and
//! checks the domain in its field 1 against the scope before the handler runs. A new
//! deployer-reachable RPC is one line in the table (its request's field 1 must be the domain).

use http_body_util::{BodyExt as _, Full, Limited};
use statiko_common::model::TokenRole;
use tonic::body::Body;

use super::{AuthError, Caller};
use crate::state::StateStore;

/// What a deployer needs for a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Upload an app version (apps belong to no site).
    UploadApp,
    /// Read apps (the bundles it uploads and deploys).
    ReadApps,
    /// List sites: the handler keeps the ones in scope.
    ListSites,
    /// Act on the site the request names, which must be in scope; the verb is for messages.
    Site(&'static str),
    /// Like `Site` when the request names a site; a request with an empty domain covers every
    /// site and the handler keeps the ones in scope (as for `ListSites`).
    SiteOrAll(&'static str),
}

/// The only methods a deployer may call.
const DEPLOYER_METHODS: &[(&str, Access)] = &[
    ("/statiko.v1.AppService/UploadApp", Access::UploadApp),
    ("/statiko.v1.AppService/ListApps", Access::ReadApps),
    ("/statiko.v1.SiteService/ListSites", Access::ListSites),
    ("/statiko.v1.SiteService/GetSite", Access::Site("read")),
    (
        "/statiko.v1.DeploymentService/Deploy",
        Access::Site("deploy to"),
    ),
    (
        "/statiko.v1.DeploymentService/Rollback",
        Access::Site("roll back"),
    ),
    (
        "/statiko.v1.DeploymentService/GetDeployment",
        Access::Site("read the deployments of"),
    ),
    (
        "/statiko.v1.DeploymentService/ListDeployments",
        Access::Site("read the deployments of"),
    ),
    (
        "/statiko.v1.DeploymentService/WatchDeployment",
        Access::Site("watch the deployments of"),
    ),
    (
        "/statiko.v1.DeploymentService/DeployPreview",
        Access::Site("deploy a preview to"),
    ),
    (
        "/statiko.v1.DeploymentService/ListPreviews",
        Access::SiteOrAll("read the previews of"),
    ),
    (
        "/statiko.v1.DeploymentService/DeletePreview",
        Access::Site("delete a preview of"),
    ),
    (
        "/statiko.v1.DeploymentService/PromotePreview",
        Access::Site("promote a preview of"),
    ),
];

/// Methods only an admin may call, whatever their name.
const ADMIN_ONLY_SERVICES: &[&str] = &["/statiko.v1.TokenService/"];

/// The deployer entry for a method, if any.
pub(crate) fn deployer_access(path: &str) -> Option<Access> {
    DEPLOYER_METHODS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, access)| *access)
}

fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// How a token presents itself in a refusal: `token "ci" (deployer, scope *.a.test)`.
pub(crate) fn describe(caller: &Caller) -> String {
    match caller.role {
        TokenRole::Deployer => {
            format!("token {:?} (deployer, scope {})", caller.name, caller.scope)
        }
        role => format!("token {:?} ({role})", caller.name),
    }
}

/// Decides whether `caller` may call the method at `path` at all (the scope comes later).
pub(crate) fn check_method(caller: &Caller, path: &str) -> Result<(), AuthError> {
    let admin_only = ADMIN_ONLY_SERVICES.iter().any(|s| path.starts_with(s));
    match caller.role {
        TokenRole::Admin => Ok(()),
        TokenRole::Readonly if admin_only => Err(AuthError::AdminOnly {
            caller: describe(caller),
            method: method(path).to_owned(),
        }),
        TokenRole::Readonly if super::is_read_only(path) => Ok(()),
        TokenRole::Readonly => Err(AuthError::ReadOnly {
            name: caller.name.clone(),
            path: path.to_owned(),
        }),
        TokenRole::Deployer if deployer_access(path).is_some() => Ok(()),
        TokenRole::Deployer => Err(AuthError::NotForDeployers {
            caller: describe(caller),
            method: method(path).to_owned(),
        }),
    }
}

/// Whether `caller` may see a site with these domains (every one must be in scope).
pub(crate) fn site_visible<'a>(
    caller: Option<&Caller>,
    mut domains: impl Iterator<Item = &'a str>,
) -> bool {
    match caller {
        Some(c) if c.role == TokenRole::Deployer => domains.all(|d| c.scope.allows(d)),
        _ => true,
    }
}

/// Largest request message read for a scope check (site-scoped requests are a domain and a few
/// small fields).
const MAX_SCOPED_MESSAGE: usize = 64 * 1024;

/// The first field of every site-scoped request message: `string domain = 1`. prost skips the
/// other fields, so one decoder serves every method in the table.
#[derive(Clone, PartialEq, prost::Message)]
struct DomainField {
    #[prost(string, tag = "1")]
    domain: String,
}

/// A scope check to run on a deployer's site-scoped request before the handler sees it.
#[derive(Debug)]
pub(crate) struct ScopeCheck {
    caller: Caller,
    verb: &'static str,
    /// An empty domain means every site (the handler filters).
    all_allowed: bool,
}

/// The scope check a call needs: deployer tokens calling a site-scoped method.
pub(crate) fn site_scoped(caller: &Caller, path: &str) -> Option<ScopeCheck> {
    match (caller.role, deployer_access(path)) {
        (TokenRole::Deployer, Some(Access::Site(verb))) => Some(ScopeCheck {
            caller: caller.clone(),
            verb,
            all_allowed: false,
        }),
        (TokenRole::Deployer, Some(Access::SiteOrAll(verb))) => Some(ScopeCheck {
            caller: caller.clone(),
            verb,
            all_allowed: true,
        }),
        _ => None,
    }
}

impl ScopeCheck {
    /// Reads the request's one message (unary requests only), checks the domain it names, and
    /// hands the request back with the same bytes for the handler.
    pub(crate) async fn run(
        self,
        request: http::Request<Body>,
        state: &StateStore,
    ) -> Result<http::Request<Body>, AuthError> {
        let (parts, body) = request.into_parts();
        let bytes = Limited::new(body, MAX_SCOPED_MESSAGE + 5)
            .collect()
            .await
            .map_err(AuthError::UnreadableRequest)?
            .to_bytes();
        let domain = domain_of(&bytes)?;
        if !(self.all_allowed && domain.trim().is_empty()) {
            self.check(&domain, state).await?;
        }
        Ok(http::Request::from_parts(
            parts,
            Body::new(Full::new(bytes)),
        ))
    }

    /// The requested domain, then every domain of the site it resolves to (primary and aliases),
    /// must be in scope. A site that does not exist passes, so the handler answers `NOT_FOUND`
    /// as usual for an in-scope name.
    async fn check(&self, domain: &str, state: &StateStore) -> Result<(), AuthError> {
        let caller = &self.caller;
        let verb = self.verb;
        let lookup = statiko_common::ids::domain("domain", domain)?;
        if !caller.scope.allows(&lookup) {
            return Err(AuthError::OutOfScope {
                caller: describe(caller),
                verb,
                domain: lookup,
            });
        }
        let site = match state.find_site(&lookup).await {
            Ok(site) => site.record,
            Err(crate::error::ControlError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(AuthError::Lookup(err)),
        };
        if let Some(outside) = site.all_domains().find(|d| !caller.scope.allows(d)) {
            return Err(AuthError::SiteOutOfScope {
                caller: describe(caller),
                verb,
                domain: lookup,
                outside: outside.to_owned(),
                site: site.domain.clone(),
            });
        }
        Ok(())
    }
}

/// The domain in a gRPC-framed request (a 5-byte prefix: compression flag, big-endian length).
fn domain_of(frame: &[u8]) -> Result<String, AuthError> {
    let (header, message) = frame
        .split_at_checked(5)
        .ok_or(AuthError::MalformedMessage)?;
    if header[0] != 0 {
        return Err(AuthError::Compressed);
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len != message.len() || len > MAX_SCOPED_MESSAGE {
        return Err(AuthError::MalformedMessage);
    }
    let decoded = <DomainField as prost::Message>::decode(message)
        .map_err(|_| AuthError::MalformedMessage)?;
    Ok(decoded.domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    fn caller(role: TokenRole) -> Caller {
        Caller {
            name: "ci".into(),
            role,
            scope: match role {
                TokenRole::Deployer => {
                    Scope::parse("scope", &["*.team-a.test".to_owned()]).expect("scope")
                }
                _ => Scope::default(),
            },
        }
    }

    fn frame(message: &impl prost::Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn the_domain_is_field_one_of_every_scoped_request() {
        use statiko_proto::v1 as pb;
        let deploy = pb::DeployRequest {
            domain: "www.team-a.test".into(),
            app: Some(pb::AppRef {
                name: "web".into(),
                version: "1.0.0".into(),
            }),
            wait: true,
            ..pb::DeployRequest::default()
        };
        assert_eq!(
            domain_of(&frame(&deploy)).ok().as_deref(),
            Some("www.team-a.test")
        );
        let get = pb::GetSiteRequest {
            domain: "b.test".into(),
        };
        assert_eq!(domain_of(&frame(&get)).ok().as_deref(), Some("b.test"));
        let mut compressed = frame(&get);
        compressed[0] = 1;
        assert_eq!(
            domain_of(&compressed).map_err(|s| s.code()),
            Err(tonic::Code::Unimplemented)
        );
        let mut short = frame(&get);
        short.pop();
        assert_eq!(
            domain_of(&short).map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
        assert!(domain_of(&[0, 0]).is_err());
    }

    #[test]
    fn method_table() {
        let deployer = caller(TokenRole::Deployer);
        for allowed in [
            "/statiko.v1.AppService/UploadApp",
            "/statiko.v1.DeploymentService/Deploy",
            "/statiko.v1.SiteService/ListSites",
            "/statiko.v1.SiteService/GetSite",
            "/statiko.v1.DeploymentService/DeployPreview",
            "/statiko.v1.DeploymentService/ListPreviews",
            "/statiko.v1.DeploymentService/DeletePreview",
            "/statiko.v1.DeploymentService/PromotePreview",
        ] {
            assert!(check_method(&deployer, allowed).is_ok(), "{allowed}");
        }
        // Preview calls are scoped like deploys; listing every site's previews is filtered.
        for scoped in ["DeployPreview", "DeletePreview", "PromotePreview"] {
            let check = site_scoped(
                &deployer,
                &format!("/statiko.v1.DeploymentService/{scoped}"),
            )
            .expect(scoped);
            assert!(!check.all_allowed, "{scoped}");
        }
        let list = site_scoped(&deployer, "/statiko.v1.DeploymentService/ListPreviews")
            .expect("ListPreviews is scoped");
        assert!(list.all_allowed);
        for refused in [
            "/statiko.v1.SiteService/CreateSite",
            "/statiko.v1.SiteService/DeleteSite",
            "/statiko.v1.AppService/DeleteApp",
            "/statiko.v1.CertificateService/ImportCertificate",
            "/statiko.v1.CertificateService/ListCertificates",
            "/statiko.v1.ClusterService/ListNodes",
            "/statiko.v1.StateService/ExportState",
            "/statiko.v1.TokenService/CreateToken",
            "/statiko.v1.NewService/NewMethod",
        ] {
            let status = tonic::Status::from(check_method(&deployer, refused).expect_err(refused));
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(
                status
                    .message()
                    .starts_with(r#"token "ci" (deployer, scope *.team-a.test) may not call "#),
                "{}",
                status.message()
            );
        }
        let readonly = caller(TokenRole::Readonly);
        assert!(check_method(&readonly, "/statiko.v1.SiteService/ListSites").is_ok());
        assert!(check_method(&readonly, "/statiko.v1.TokenService/ListTokens").is_err());
        assert!(check_method(&readonly, "/statiko.v1.SiteService/CreateSite").is_err());
        let admin = caller(TokenRole::Admin);
        assert!(check_method(&admin, "/statiko.v1.TokenService/RevokeToken").is_ok());
        assert!(site_visible(
            Some(&deployer),
            ["www.team-a.test"].into_iter()
        ));
        assert!(!site_visible(
            Some(&deployer),
            ["www.team-a.test", "team-b.test"].into_iter()
        ));
        assert!(site_visible(Some(&readonly), ["team-b.test"].into_iter()));
    }
}
