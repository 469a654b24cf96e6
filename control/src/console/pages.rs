//! The console's pages: what each one asks the API (through [`Calls`], as the session's token)
//! and the askama templates (`control/templates/console/`) they render into. A call the token
//! may not make shows the API's refusal on the page instead of the data; a page whose main call
//! fails is an error page with that message.

use std::collections::BTreeMap;
use std::time::SystemTime;

use askama::Template;
use statiko_proto::v1 as pb;
use tonic::{Code, Status};

use super::format::{expiry, relative, size, timestamp, to_time};
use super::grpc::Calls;

mod actions;
mod tokens;
pub(crate) use actions::{Flash, Start, confirm, confirm_promote, start};
pub(crate) use tokens::{confirm_revoke, revoke, tokens};

/// Seconds between live refreshes (script or `<noscript>` meta refresh).
const REFRESH_SECONDS: u32 = 3;

/// What every page around its content shows.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) title: String,
    /// The section highlighted in the navigation.
    pub(crate) active: &'static str,
    /// The session's CSRF token (for sign-out); empty when signed out (no navigation).
    pub(crate) csrf: String,
    /// Whether the page refreshes itself.
    pub(crate) refresh: bool,
    pub(crate) refresh_seconds: u32,
    pub(crate) rendered: String,
}

impl Layout {
    pub(crate) fn new(title: impl Into<String>, active: &'static str, csrf: &str) -> Self {
        Self {
            title: title.into(),
            active,
            csrf: csrf.to_owned(),
            refresh: false,
            refresh_seconds: REFRESH_SECONDS,
            rendered: timestamp(SystemTime::now()),
        }
    }

    fn live(mut self) -> Self {
        self.refresh = true;
        self
    }

    pub(crate) fn is_active(&self, label: &str) -> bool {
        self.active == label
    }

    pub(crate) fn nav(&self) -> [(&'static str, &'static str); 5] {
        [
            ("/", "Cluster"),
            ("/sites", "Sites"),
            ("/certificates", "Certificates"),
            ("/apps", "Apps"),
            ("/tokens", "Tokens"),
        ]
    }
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub(crate) struct SignIn {
    pub(crate) layout: Layout,
    pub(crate) error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub(crate) struct ErrorPage {
    pub(crate) layout: Layout,
    pub(crate) heading: String,
    pub(crate) message: String,
    /// Where "Back" leads; empty for none.
    pub(crate) back: String,
}

#[derive(Debug)]
pub(crate) struct NodeRow {
    name: String,
    leader: bool,
    no_lead: bool,
    version: String,
    applied: i64,
    behind: i64,
    updated_at: String,
    updated_ago: String,
    sites: usize,
    healthy: usize,
    errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/cluster.html")]
pub(crate) struct Cluster {
    layout: Layout,
    nodes: Vec<NodeRow>,
    leader: String,
    desired_revision: i64,
    notes: Vec<String>,
}

/// One edge's view of one site.
#[derive(Debug)]
pub(crate) struct EdgeState {
    node: String,
    app: String,
    state: &'static str,
    class: &'static str,
    detail: String,
}

#[derive(Debug)]
pub(crate) struct SiteRow {
    domain: String,
    aliases: String,
    live: String,
    tls_kind: String,
    tls_expiry: String,
    tls_class: &'static str,
    edges: Vec<EdgeState>,
}

#[derive(Template)]
#[template(path = "console/sites.html")]
pub(crate) struct Sites {
    layout: Layout,
    sites: Vec<SiteRow>,
    notes: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct DeploymentRow {
    id: String,
    app: String,
    state: &'static str,
    class: &'static str,
    author: String,
    created_at: String,
    created_ago: String,
    notes: String,
    /// Superseded: a rollback may return to it.
    can_return: bool,
    /// A preview: where it is served and when it expires ("expires in 3 days", "expired 5 s
    /// ago"); empty otherwise.
    preview_url: String,
    preview_expires: String,
    /// A preview not yet expired: it may be promoted.
    can_promote: bool,
}

#[derive(Template)]
#[template(path = "console/site.html")]
pub(crate) struct Site {
    layout: Layout,
    site: SiteRow,
    deployed: String,
    deployments: Vec<DeploymentRow>,
    has_previous: bool,
    flash: Option<String>,
    notes: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct CertificateRow {
    name: String,
    kind: &'static str,
    domains: String,
    not_after: String,
    remaining: String,
    class: &'static str,
    used_by: String,
    fingerprint: String,
}

#[derive(Template)]
#[template(path = "console/certificates.html")]
pub(crate) struct Certificates {
    layout: Layout,
    certificates: Vec<CertificateRow>,
}

#[derive(Debug)]
pub(crate) struct AppRow {
    name: String,
    version: String,
    created_at: String,
    created_ago: String,
    size: String,
    format: &'static str,
    signed: bool,
    digest: String,
    digest_short: String,
    used_by: String,
}

#[derive(Template)]
#[template(path = "console/apps.html")]
pub(crate) struct Apps {
    layout: Layout,
    apps: Vec<AppRow>,
}

/// The cluster page: `ListNodes`.
pub(crate) async fn cluster(calls: &Calls<'_>, csrf: &str) -> Result<Cluster, Status> {
    let response = calls
        .cluster()
        .list_nodes(calls.request(pb::ListNodesRequest {}))
        .await?
        .into_inner();
    let now = SystemTime::now();
    let mut nodes: Vec<NodeRow> = response
        .nodes
        .iter()
        .map(|node| {
            let updated = to_time(node.updated_at.as_ref());
            let errors: Vec<String> = node
                .sites
                .iter()
                .filter(|s| !s.healthy)
                .map(|s| format!("{}: {}", s.domain, s.error))
                .collect();
            NodeRow {
                name: node.name.clone(),
                leader: node.leader,
                no_lead: node.disallow_leadership,
                version: node.version.clone(),
                applied: node.applied_revision,
                behind: (response.revision - node.applied_revision).max(0),
                updated_at: updated.map(timestamp).unwrap_or_default(),
                updated_ago: updated.map_or_else(String::new, |t| relative(t, now)),
                sites: node.sites.len() + usize::try_from(node.sites_omitted).unwrap_or(0),
                healthy: node.sites.iter().filter(|s| s.healthy).count()
                    + usize::try_from(node.sites_omitted).unwrap_or(0),
                errors,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let leader = nodes
        .iter()
        .find(|n| n.leader)
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let mut notes = Vec::new();
    if nodes.iter().filter(|n| n.leader).count() > 1 {
        notes.push("More than one edge reports itself leader: a hand-over is in progress.".into());
    }
    Ok(Cluster {
        layout: Layout::new("Cluster", "Cluster", csrf).live(),
        nodes,
        leader,
        desired_revision: response.revision,
        notes,
    })
}

/// What the sites pages need besides the sites: the edges' reports and the certificates,
/// each optional (a deployer token may list neither).
struct Context {
    nodes: Vec<pb::Node>,
    certificates: Vec<pb::Certificate>,
    notes: Vec<String>,
}

async fn context(calls: &Calls<'_>) -> Result<Context, Status> {
    let mut notes = Vec::new();
    let nodes = nodes(calls, &mut notes).await?;
    let certificates = match calls
        .certificates()
        .list_certificates(calls.request(pb::ListCertificatesRequest {}))
        .await
    {
        Ok(response) => response.into_inner().certificates,
        Err(status) if status.code() == Code::Unauthenticated => return Err(status),
        Err(status) => {
            notes.push(format!(
                "Certificate expiry not shown: {}",
                status.message()
            ));
            Vec::new()
        }
    };
    Ok(Context {
        nodes,
        certificates,
        notes,
    })
}

/// `ListNodes`; none, with a note saying why, when the token may not list the edges.
async fn nodes(calls: &Calls<'_>, notes: &mut Vec<String>) -> Result<Vec<pb::Node>, Status> {
    match calls
        .cluster()
        .list_nodes(calls.request(pb::ListNodesRequest {}))
        .await
    {
        Ok(response) => Ok(response.into_inner().nodes),
        Err(status) if status.code() == Code::Unauthenticated => Err(status),
        Err(status) => {
            notes.push(format!("Edge states not shown: {}", status.message()));
            Ok(Vec::new())
        }
    }
}

/// The sites page: `ListSites`, with `ListNodes` and `ListCertificates` when allowed.
pub(crate) async fn sites(calls: &Calls<'_>, csrf: &str) -> Result<Sites, Status> {
    let listed = calls
        .sites()
        .list_sites(calls.request(pb::ListSitesRequest {}))
        .await?
        .into_inner();
    let context = context(calls).await?;
    let now = SystemTime::now();
    let mut sites: Vec<SiteRow> = listed
        .sites
        .iter()
        .map(|site| site_row(site, &context, now))
        .collect();
    sites.sort_by(|a, b| a.domain.cmp(&b.domain));
    Ok(Sites {
        layout: Layout::new("Sites", "Sites", csrf).live(),
        sites,
        notes: context.notes,
    })
}

/// A site's page: `GetSite` and `ListDeployments`, with the edges and certificates when
/// allowed.
pub(crate) async fn site(
    calls: &Calls<'_>,
    csrf: &str,
    domain: &str,
    flash: Option<Flash>,
) -> Result<Site, Status> {
    let (site, deployments) = site_deployments(calls, domain).await?;
    let flash = flash.map(|flash| {
        let live = deployments
            .iter()
            .any(|d| d.id == flash.deployment && d.state == pb::DeploymentState::Live as i32);
        flash.text(live)
    });
    let context = context(calls).await?;
    let now = SystemTime::now();
    let mut rows: Vec<DeploymentRow> = deployments
        .iter()
        .map(|d| deployment_row(d, kept(&context.nodes, &site.domain, &d.id), now))
        .collect();
    // Newest first (ids sort by creation).
    rows.sort_by(|a, b| b.id.cmp(&a.id));
    let has_previous = rows.iter().any(|d| d.can_return);
    let deployed =
        to_time(site.deployed_at.as_ref()).map_or_else(|| "never".to_owned(), |t| relative(t, now));
    Ok(Site {
        layout: Layout::new(site.domain.clone(), "Sites", csrf).live(),
        site: site_row(&site, &context, now),
        deployed,
        deployments: rows,
        has_previous,
        flash,
        notes: context.notes,
    })
}

/// The certificates page: `ListCertificates`, soonest expiry first.
pub(crate) async fn certificates(calls: &Calls<'_>, csrf: &str) -> Result<Certificates, Status> {
    let mut listed = calls
        .certificates()
        .list_certificates(calls.request(pb::ListCertificatesRequest {}))
        .await?
        .into_inner()
        .certificates;
    listed.sort_by_key(|c| to_time(c.not_after.as_ref()));
    let now = SystemTime::now();
    let certificates = listed
        .iter()
        .map(|c| {
            let not_after = to_time(c.not_after.as_ref());
            let (remaining, class) = expiry(not_after, now);
            CertificateRow {
                name: c.name.clone(),
                kind: certificate_kind(c.r#type),
                domains: c.domains.join(", "),
                not_after: not_after.map(timestamp).unwrap_or_default(),
                remaining,
                class,
                used_by: c.used_by.join(", "),
                fingerprint: c.fingerprint.clone(),
            }
        })
        .collect();
    Ok(Certificates {
        layout: Layout::new("Certificates", "Certificates", csrf).live(),
        certificates,
    })
}

/// The apps page: `ListApps`, by name, newest version first.
pub(crate) async fn apps(calls: &Calls<'_>, csrf: &str) -> Result<Apps, Status> {
    let mut listed = calls
        .apps()
        .list_apps(calls.request(pb::ListAppsRequest::default()))
        .await?
        .into_inner()
        .apps;
    listed.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| to_time(b.created_at.as_ref()).cmp(&to_time(a.created_at.as_ref())))
    });
    let now = SystemTime::now();
    let apps = listed
        .iter()
        .map(|a| {
            let created = to_time(a.created_at.as_ref());
            AppRow {
                name: a.name.clone(),
                version: a.version.clone(),
                created_at: created.map(timestamp).unwrap_or_default(),
                created_ago: created.map_or_else(String::new, |t| relative(t, now)),
                size: size(a.size),
                format: match pb::BundleFormat::try_from(a.format) {
                    Ok(pb::BundleFormat::TarGz) => "tar.gz",
                    Ok(pb::BundleFormat::TarZst) => "tar.zst",
                    Ok(pb::BundleFormat::Zip) => "zip",
                    _ => "unknown",
                },
                signed: a.signed,
                digest_short: a.digest.chars().take(19).collect(),
                digest: a.digest.clone(),
                used_by: a.used_by.join(", "),
            }
        })
        .collect();
    Ok(Apps {
        layout: Layout::new("Apps", "Apps", csrf).live(),
        apps,
    })
}

/// `GetSite`, then the site's `ListDeployments`.
async fn site_deployments(
    calls: &Calls<'_>,
    domain: &str,
) -> Result<(pb::Site, Vec<pb::Deployment>), Status> {
    let site = get_site(calls, domain).await?;
    let deployments = calls
        .deployments()
        .list_deployments(calls.request(pb::ListDeploymentsRequest {
            domain: site.domain.clone(),
        }))
        .await?
        .into_inner()
        .deployments;
    Ok((site, deployments))
}

async fn get_site(calls: &Calls<'_>, domain: &str) -> Result<pb::Site, Status> {
    calls
        .sites()
        .get_site(calls.request(pb::GetSiteRequest {
            domain: domain.to_owned(),
        }))
        .await?
        .into_inner()
        .site
        .ok_or_else(|| Status::internal("GetSite answered without a site"))
}

fn site_row(site: &pb::Site, context: &Context, now: SystemTime) -> SiteRow {
    let live = app_ref(site.app.as_ref());
    let tls = site.tls.clone().unwrap_or_default();
    let tls_type = pb::TlsType::try_from(tls.r#type).unwrap_or_default();
    // The certificate the edges present: the imported one by name, else the leader-made one
    // of the site's kind covering its domain.
    let certificate = match tls_type {
        pb::TlsType::Imported => context
            .certificates
            .iter()
            .find(|c| c.name == tls.certificate),
        kind => {
            let wanted = if kind == pb::TlsType::Acme {
                pb::CertificateType::Acme
            } else {
                pb::CertificateType::SelfSigned
            };
            context
                .certificates
                .iter()
                .filter(|c| c.r#type == wanted as i32 && c.domains.contains(&site.domain))
                .max_by_key(|c| to_time(c.not_after.as_ref()))
        }
    };
    let (tls_expiry, tls_class) = match certificate {
        Some(c) => {
            let (remaining, class) = expiry(to_time(c.not_after.as_ref()), now);
            (format!("expires {remaining}"), class)
        }
        None => (String::new(), "muted"),
    };
    let tls_kind = match tls_type {
        pb::TlsType::Imported => format!("imported ({})", tls.certificate),
        pb::TlsType::Acme => "ACME".to_owned(),
        _ => "self-signed".to_owned(),
    };
    let mut edges: BTreeMap<&str, EdgeState> = BTreeMap::new();
    for node in &context.nodes {
        let Some(status) = node.sites.iter().find(|s| s.domain == site.domain) else {
            continue;
        };
        let serves = app_ref(status.app.as_ref());
        let (state, class) = if !status.healthy {
            ("error", "bad")
        } else if serves == live {
            ("live", "ok")
        } else {
            ("behind", "warn")
        };
        edges.insert(
            &node.name,
            EdgeState {
                node: node.name.clone(),
                app: serves,
                state,
                class,
                detail: status.error.clone(),
            },
        );
    }
    SiteRow {
        domain: site.domain.clone(),
        aliases: site.aliases.join(", "),
        live,
        tls_kind,
        tls_expiry,
        tls_class,
        edges: edges.into_values().collect(),
    }
}

/// On how many of the edges serving `domain` the bundle of deployment `id` is kept staged, of
/// how many (their node records' `retained`): a rollback every one of them keeps is a flip.
fn kept(nodes: &[pb::Node], domain: &str, id: &str) -> (usize, usize) {
    let edges: Vec<&pb::NodeSiteStatus> = nodes
        .iter()
        .filter_map(|n| n.sites.iter().find(|s| s.domain == domain))
        .collect();
    let keeping = edges.iter().filter(|s| s.retained.iter().any(|r| r == id));
    (keeping.count(), edges.len())
}

/// `kept`: on how many of the site's edges the deployment's bundle is kept staged, of how many.
fn deployment_row(d: &pb::Deployment, kept: (usize, usize), now: SystemTime) -> DeploymentRow {
    let state = pb::DeploymentState::try_from(d.state).unwrap_or_default();
    let (label, class) = match state {
        pb::DeploymentState::Staging => ("staging", "warn"),
        pb::DeploymentState::Live => ("live", "ok"),
        pb::DeploymentState::Superseded => ("superseded", "muted"),
        pb::DeploymentState::Failed => ("failed", "bad"),
        pb::DeploymentState::Preview => ("preview", "muted"),
        pb::DeploymentState::Unspecified => ("unknown", "muted"),
    };
    let mut notes = Vec::new();
    if !d.rollback_of.is_empty() {
        notes.push(format!("rollback to {}", d.rollback_of));
    }
    if !d.reason.is_empty() {
        notes.push(d.reason.clone());
    }
    if !d.promoted_from.is_empty() {
        notes.push(format!("promoted from preview {}", d.promoted_from));
    }
    if !d.failed_nodes.is_empty() {
        notes.push(format!("failed on {}", d.failed_nodes.join(", ")));
    }
    if state == pb::DeploymentState::Superseded {
        match kept {
            (0, _) => {}
            (k, n) if k == n => notes.push(format!(
                "kept staged on every edge ({n}): rolling back to it is instant"
            )),
            (k, n) => notes.push(format!("kept staged on {k} of {n} edges")),
        }
    }
    let created = to_time(d.created_at.as_ref());
    let preview = d
        .preview
        .as_ref()
        .filter(|_| state == pb::DeploymentState::Preview);
    let expires = preview.and_then(|p| to_time(p.expires_at.as_ref()));
    let expired = expires.is_some_and(|t| t <= now);
    DeploymentRow {
        id: d.id.clone(),
        app: app_ref(d.app.as_ref()),
        state: label,
        class,
        author: d.author.clone(),
        created_at: created.map(timestamp).unwrap_or_default(),
        created_ago: created.map_or_else(String::new, |t| relative(t, now)),
        notes: notes.join("; "),
        can_return: state == pb::DeploymentState::Superseded,
        preview_url: preview.map(|p| p.url.clone()).unwrap_or_default(),
        preview_expires: match expires {
            Some(t) if expired => format!("expired {}", relative(t, now)),
            Some(t) => format!("expires {}", relative(t, now)),
            None => String::new(),
        },
        can_promote: preview.is_some() && !expired,
    }
}

fn app_ref(app: Option<&pb::AppRef>) -> String {
    match app {
        Some(app) if !app.name.is_empty() => format!("{}@{}", app.name, app.version),
        _ => "none".to_owned(),
    }
}

fn certificate_kind(kind: i32) -> &'static str {
    match pb::CertificateType::try_from(kind) {
        Ok(pb::CertificateType::Imported) => "imported",
        Ok(pb::CertificateType::SelfSigned) => "self-signed",
        Ok(pb::CertificateType::Acme) => "ACME",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
