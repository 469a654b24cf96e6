//! The pages behind a site's actions: the confirmation pages of a rollback and of a promotion,
//! the calls their forms make, and what the site page says afterwards.

use std::time::SystemTime;

use askama::Template;
use statiko_proto::v1 as pb;
use tonic::Status;

use super::{Calls, Layout, app_ref, deployment_row, kept, nodes, site_deployments, to_time};

/// A confirmation page (rollback or promotion): what serves now, what the action would bring
/// live, and the form that POSTs it with the session's CSRF token.
#[derive(Template)]
#[template(path = "console/confirm.html")]
pub(crate) struct Confirm {
    layout: Layout,
    kind: &'static ConfirmKind,
    domain: String,
    current: String,
    target: String,
    /// The deployment id the form sends in `kind.field`.
    value: String,
    /// Every edge keeps the target staged: the switch is a flip, at once.
    instant: bool,
}

/// What differs between the confirmation pages.
#[derive(Debug)]
pub(crate) struct ConfirmKind {
    /// Before the domain in the title: "Roll back".
    title: &'static str,
    /// What the action does, after "serves X now.": "A rollback deploys".
    verb: &'static str,
    /// After the target: " again".
    after: &'static str,
    /// The path segment the form posts to.
    action: &'static str,
    /// The form's field naming the deployment.
    field: &'static str,
    button: &'static str,
}

const ROLLBACK: ConfirmKind = ConfirmKind {
    title: "Roll back",
    verb: "A rollback deploys",
    after: " again",
    action: "rollback",
    field: "to",
    button: "Roll back",
};

const PROMOTE: ConfirmKind = ConfirmKind {
    title: "Promote a preview of",
    verb: "Promoting deploys",
    after: " as the live version",
    action: "promote",
    field: "id",
    button: "Promote",
};

impl Confirm {
    fn new(
        kind: &'static ConfirmKind,
        csrf: &str,
        site: pb::Site,
        target: String,
        value: &str,
    ) -> Self {
        Self {
            layout: Layout::new(format!("{} {}", kind.title, site.domain), "Sites", csrf),
            kind,
            current: app_ref(site.app.as_ref()),
            domain: site.domain,
            target,
            value: value.to_owned(),
            instant: false,
        }
    }
}

/// What a site's page says after an action started a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flash {
    pub(crate) deployment: String,
    /// "Rolled back", "Promoted": once the deployment is live.
    pub(crate) done: &'static str,
    /// "Rollback started", "Promotion started": until then.
    pub(crate) started: &'static str,
}

impl Flash {
    pub(crate) fn text(&self, live: bool) -> String {
        let Flash {
            deployment,
            done,
            started,
        } = self;
        if live {
            format!("{done}: deployment {deployment} is live.")
        } else {
            format!(
                "{started}: deployment {deployment}. The live version changes once every edge has staged it."
            )
        }
    }
}

/// The rollback confirmation: what serves now and what the rollback would bring back.
pub(crate) async fn confirm(
    calls: &Calls<'_>,
    csrf: &str,
    domain: &str,
    to: &str,
) -> Result<Confirm, Status> {
    let (site, deployments) = site_deployments(calls, domain).await?;
    let superseded = |d: &&pb::Deployment| d.state == pb::DeploymentState::Superseded as i32;
    let target = if to.is_empty() {
        deployments.iter().filter(superseded).max_by(|a, b| {
            // The newest superseded deployment is the previous live one.
            to_time(a.superseded_at.as_ref()).cmp(&to_time(b.superseded_at.as_ref()))
        })
    } else {
        deployments.iter().find(|d| d.id == to)
    };
    // Whether every edge keeps it staged (ListNodes; a token that may not list the edges is
    // simply not told).
    let nodes = nodes(calls, &mut Vec::new()).await?;
    let instant = target
        .is_some_and(|d| matches!(kept(&nodes, &site.domain, &d.id), (k, n) if k == n && n > 0));
    // No target: let the API say why when the form is sent (same messages as `stk rollback`).
    let target = target.map_or_else(
        || "the previous live version".to_owned(),
        |d| format!("{} (deployment {})", app_ref(d.app.as_ref()), d.id),
    );
    Ok(Confirm {
        instant,
        ..Confirm::new(&ROLLBACK, csrf, site, target, to)
    })
}

/// The promotion confirmation: what serves now and the preview that would go live.
pub(crate) async fn confirm_promote(
    calls: &Calls<'_>,
    csrf: &str,
    domain: &str,
    id: &str,
) -> Result<Confirm, Status> {
    let (site, deployments) = site_deployments(calls, domain).await?;
    let now = SystemTime::now();
    // Not a preview (or unknown): let the API say why when the form is sent.
    let target = deployments.iter().find(|d| d.id == id).map_or_else(
        || format!("deployment {id}"),
        |d| {
            let row = deployment_row(d, (0, 0), now);
            if row.preview_url.is_empty() {
                format!("{} (deployment {})", row.app, row.id)
            } else {
                format!(
                    "{} (preview {}, served at {}, {})",
                    row.app, row.id, row.preview_url, row.preview_expires
                )
            }
        },
    );
    Ok(Confirm::new(&PROMOTE, csrf, site, target, id))
}

/// A deployment a confirmed form starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a> {
    /// `Rollback` to this deployment id (empty: the previous live one).
    Rollback(&'a str),
    /// `PromotePreview` of this preview id.
    Promote(&'a str),
}

/// Starts a rollback or a promotion, not waiting (the site page shows its progress): the new
/// deployment.
pub(crate) async fn start(
    calls: &Calls<'_>,
    domain: &str,
    start: Start<'_>,
) -> Result<pb::Deployment, Status> {
    let mut client = calls.deployments();
    let domain = domain.to_owned();
    let deployment = match start {
        Start::Rollback(to) => {
            let request = pb::RollbackRequest {
                domain,
                to: to.to_owned(),
                wait: false,
                wait_timeout: None,
            };
            client
                .rollback(calls.request(request))
                .await?
                .into_inner()
                .deployment
        }
        Start::Promote(id) => {
            let request = pb::PromotePreviewRequest {
                domain,
                id: id.to_owned(),
                wait: false,
                wait_timeout: None,
            };
            let response = client.promote_preview(calls.request(request)).await?;
            response.into_inner().deployment
        }
    };
    deployment.ok_or_else(|| Status::internal("the API answered without a deployment"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_post_their_action() {
        let site = pb::Site {
            domain: "a.test".into(),
            app: Some(pb::AppRef {
                name: "web".into(),
                version: "1".into(),
            }),
            ..pb::Site::default()
        };
        let page = Confirm::new(&PROMOTE, "tok", site.clone(), "web@2".into(), "d1");
        let html = page.render().unwrap();
        assert!(html.contains("action=\"/sites/a.test/promote\""), "{html}");
        assert!(html.contains("name=\"id\" value=\"d1\""), "{html}");
        assert!(html.contains("name=\"csrf\" value=\"tok\""), "{html}");
        assert!(html.contains("serves <strong>web@1</strong> now"), "{html}");
        let page = Confirm::new(&ROLLBACK, "tok", site, "web@0".into(), "");
        let html = page.render().unwrap();
        assert!(html.contains("action=\"/sites/a.test/rollback\""), "{html}");
        assert!(html.contains("name=\"to\" value=\"\""), "{html}");
        assert!(html.contains("<strong>web@0</strong> again"), "{html}");
        assert!(html.contains("every edge stages it"), "{html}");
        let site = pb::Site {
            domain: "a.test".into(),
            ..pb::Site::default()
        };
        let page = Confirm {
            instant: true,
            ..Confirm::new(&ROLLBACK, "tok", site, "web@0".into(), "")
        };
        let html = page.render().unwrap();
        assert!(html.contains("every edge keeps it staged"), "{html}");
    }
}
