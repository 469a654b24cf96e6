//! `stk deploy`: deploy an app version to a site, list a site's deployments, roll back (previews
//! and their promotion: `preview.rs`).

use anyhow::Context as _;
use serde_json::{Value, json};
use statiko_proto::v1::{
    AppRef, DeployRequest, DeployResponse, DeployStrategy, Deployment, GetSiteRequest,
    ListDeploymentsRequest, RollbackRequest, RollbackResponse,
};

use crate::cli::{DeployArgs, DeployCommand, WaitArgs};
use crate::commands::Printer;
use crate::connect::Api;
use crate::output;
use crate::watch;

pub(crate) async fn run(api: &Api, printer: Printer, args: DeployArgs) -> anyhow::Result<()> {
    match args.command {
        Some(DeployCommand::History { domain }) => history(api, printer, domain).await,
        Some(DeployCommand::Rollback { domain, to, wait }) => {
            rollback(api, printer, domain, to, wait).await
        }
        Some(DeployCommand::Promote { id, site, wait }) => {
            crate::preview::promote(api, printer, id, site, wait).await
        }
        None if args.preview => {
            let domain = args.domain.context("SITE is required")?;
            let app = args.app.context("NAME@VERSION is required")?;
            let options = crate::preview::Options {
                ttl: args.ttl,
                password_stdin: args.password_stdin,
                wait: args.wait,
            };
            crate::preview::deploy(api, printer, domain, app.name, app.version, options).await
        }
        None => {
            let domain = args.domain.context("SITE is required")?;
            let app = args.app.context("NAME@VERSION is required")?;
            let strategy = if args.immediate {
                DeployStrategy::Immediate
            } else {
                DeployStrategy::Atomic
            };
            deploy(
                api,
                printer,
                domain,
                app.name,
                app.version,
                strategy,
                args.wait,
            )
            .await
        }
    }
}

async fn deploy(
    api: &Api,
    printer: Printer,
    domain: String,
    name: String,
    version: String,
    strategy: DeployStrategy,
    wait: WaitArgs,
) -> anyhow::Result<()> {
    let request = DeployRequest {
        domain: domain.clone(),
        app: Some(AppRef {
            name: name.clone(),
            version: version.clone(),
        }),
        strategy: strategy as i32,
        ..DeployRequest::default()
    };
    let mut client = api.deployments();
    let call = client.deploy(api.request(request));
    let mut response: DeployResponse = send_and_follow(api, &domain, &wait, call).await?;
    if wait.wait {
        let site = api
            .unary(
                api.timeout(),
                api.sites().get_site(api.request(GetSiteRequest {
                    domain: domain.clone(),
                })),
            )
            .await?
            .site;
        response.revision = site.as_ref().map_or(response.revision, |s| s.revision);
        response.site = site;
    }
    let deployment = response.deployment.as_ref();
    printer.print(
        &json!({
            "site": response.site.as_ref().map_or(Value::Null, output::site_json),
            "revision": response.revision,
            "ready_nodes": response.ready_nodes,
            "deployment": deployment.map_or(Value::Null, output::deployment_json),
        }),
        || {
            let mut text = format!(
                "deployed {name}@{version} to {domain} at revision {}\n",
                response.revision
            );
            if let Some(d) = deployment {
                text.push_str(&format!(
                    "deployment {} is {}\n",
                    d.id,
                    output::deployment_state(d.state())
                ));
            }
            if wait.wait {
                text.push_str(&served_by(&response.ready_nodes));
            }
            text
        },
    )
}

/// A response naming a deployment and the edges serving it: `DeployResponse`, `RollbackResponse`,
/// `PromotePreviewResponse`.
pub(crate) trait Followed {
    fn parts(&mut self) -> (&mut Option<Deployment>, &mut Vec<String>);
}

impl Followed for DeployResponse {
    fn parts(&mut self) -> (&mut Option<Deployment>, &mut Vec<String>) {
        (&mut self.deployment, &mut self.ready_nodes)
    }
}

impl Followed for RollbackResponse {
    fn parts(&mut self) -> (&mut Option<Deployment>, &mut Vec<String>) {
        (&mut self.deployment, &mut self.ready_nodes)
    }
}

/// Sends a deploy or rollback `call`, then with `--wait` follows the deployment it made until it
/// is live and served everywhere (or failed), updating the response's deployment and edges.
pub(crate) async fn send_and_follow<T: Followed>(
    api: &Api,
    domain: &str,
    wait: &WaitArgs,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    let mut response = api.unary(api.timeout(), call).await?;
    if wait.wait {
        let (deployment, ready_nodes) = response.parts();
        let last = watch::follow(api, domain, deployment.as_ref(), wait.wait_timeout).await?;
        *deployment = last.deployment;
        *ready_nodes = last.serving_nodes;
    }
    Ok(response)
}

async fn history(api: &Api, printer: Printer, domain: String) -> anyhow::Result<()> {
    let response = api
        .unary(
            api.timeout(),
            api.deployments()
                .list_deployments(api.request(ListDeploymentsRequest { domain })),
        )
        .await?;
    printer.print(
        &json!({
            "deployments": response.deployments.iter().map(output::deployment_json).collect::<Vec<_>>(),
        }),
        || output::deployments_table(&response.deployments),
    )
}

async fn rollback(
    api: &Api,
    printer: Printer,
    domain: String,
    to: Option<String>,
    wait: WaitArgs,
) -> anyhow::Result<()> {
    let request = RollbackRequest {
        domain: domain.clone(),
        to: to.unwrap_or_default(),
        ..RollbackRequest::default()
    };
    let mut client = api.deployments();
    let call = client.rollback(api.request(request));
    let response: RollbackResponse = send_and_follow(api, &domain, &wait, call).await?;
    print_started(printer, response, &wait, |deployment| {
        format!(
            "rolled {domain} back to {} ({}) as deployment {}, {}\n",
            output::app_ref(deployment.app.as_ref()),
            deployment.rollback_of,
            deployment.id,
            output::deployment_state(deployment.state())
        )
    })
}

/// Prints the deployment a rollback or a promotion started: as JSON with the edges serving it,
/// or as `headline` followed, after `--wait`, by the edges that serve it.
pub(crate) fn print_started<T: Followed>(
    printer: Printer,
    mut response: T,
    wait: &WaitArgs,
    headline: impl FnOnce(&Deployment) -> String,
) -> anyhow::Result<()> {
    let (deployment, ready_nodes) = response.parts();
    let deployment = deployment
        .as_ref()
        .context("the server returned no deployment in its response")?;
    printer.print(
        &json!({
            "deployment": output::deployment_json(deployment),
            "ready_nodes": ready_nodes,
        }),
        || {
            let mut text = headline(deployment);
            if wait.wait {
                text.push_str(&served_by(ready_nodes));
            }
            text
        },
    )
}

pub(crate) fn served_by(nodes: &[String]) -> String {
    format!(
        "served by {} edge(s): {}\n",
        nodes.len(),
        output::list(nodes)
    )
}
