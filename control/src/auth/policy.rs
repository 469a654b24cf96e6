//! What each role may call. `admin` calls everything; `readonly` calls `Get*` and `List*`
//! (token management excepted); `deployer` calls only the methods in [`DEPLOYER_METHODS`], and
//! for the site-scoped ones the handler checks the request's domain with [`authorize_site`].
//! A new deployer-reachable RPC is one line in the table plus one `authorize_site` call.

use statiko_common::model::TokenRole;
use tonic::{Request, Status};

use super::Caller;
use crate::state::DesiredState;

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
pub(crate) fn check_method(caller: &Caller, path: &str) -> Result<(), Status> {
    let admin_only = ADMIN_ONLY_SERVICES.iter().any(|s| path.starts_with(s));
    match caller.role {
        TokenRole::Admin => Ok(()),
        TokenRole::Readonly if admin_only => Err(Status::permission_denied(format!(
            "{} may not call {}: token management is for admin tokens only",
            describe(caller),
            method(path)
        ))),
        TokenRole::Readonly if super::is_read_only(path) => Ok(()),
        TokenRole::Readonly => Err(Status::permission_denied(format!(
            "token {:?} is read-only and cannot call {path}",
            caller.name
        ))),
        TokenRole::Deployer if deployer_access(path).is_some() => Ok(()),
        TokenRole::Deployer => Err(Status::permission_denied(format!(
            "{} may not call {}: deployer tokens may only upload apps and deploy to or read the sites in their scope",
            describe(caller),
            method(path)
        ))),
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

/// The scope check of a site-scoped call: the domain the request names, then every domain of the
/// site it resolves to (primary and aliases), must be in the deployer's scope. Other roles pass
/// (their method check already happened). A site that does not exist passes, so the handler
/// answers `NOT_FOUND` as usual for an in-scope name.
pub(crate) async fn authorize_site<T>(
    request: &Request<T>,
    state: &DesiredState,
    domain: &str,
) -> Result<(), Status> {
    let Some(caller) = request.extensions().get::<Caller>() else {
        return Ok(());
    };
    if caller.role != TokenRole::Deployer {
        return Ok(());
    }
    let path = request
        .extensions()
        .get::<CalledMethod>()
        .map(|m| m.0.as_str())
        .unwrap_or_default();
    let Some(Access::Site(verb)) = deployer_access(path) else {
        return Err(Status::permission_denied(format!(
            "{} may not call {}",
            describe(caller),
            method(path)
        )));
    };
    let lookup = statiko_common::ids::domain("domain", domain)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !caller.scope.allows(&lookup) {
        return Err(Status::permission_denied(format!(
            "{} may not {verb} {lookup}",
            describe(caller)
        )));
    }
    let site = match state.find_site(&lookup).await {
        Ok(site) => site.record,
        Err(crate::error::ControlError::NotFound(_)) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    if let Some(outside) = site.all_domains().find(|d| !caller.scope.allows(d)) {
        return Err(Status::permission_denied(format!(
            "{} may not {verb} {lookup}: its site {} also answers for {outside}, which is outside the scope",
            describe(caller),
            site.domain
        )));
    }
    Ok(())
}

/// The request path, kept in the extensions for [`authorize_site`].
#[derive(Debug, Clone)]
pub(crate) struct CalledMethod(pub(crate) String);

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

    #[test]
    fn method_table() {
        let deployer = caller(TokenRole::Deployer);
        for allowed in [
            "/statiko.v1.AppService/UploadApp",
            "/statiko.v1.DeploymentService/Deploy",
            "/statiko.v1.SiteService/ListSites",
            "/statiko.v1.SiteService/GetSite",
        ] {
            assert!(check_method(&deployer, allowed).is_ok(), "{allowed}");
        }
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
            let status = check_method(&deployer, refused).expect_err(refused);
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
