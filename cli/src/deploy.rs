//! `stk deploy`: deploy an app version to a site, list a site's deployments, roll back (previews
//! and their promotion: `preview.rs`).

use anyhow::Context as _;
use serde_json::{Value, json};
use statiko_proto::v1::{
    AppRef, DeployRequest, DeployStrategy, Deployment, GetSiteRequest, ListDeploymentsRequest,
    RollbackRequest,
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
    let mut response = api
        .unary(
            api.timeout(),
            api.deployments().deploy(api.request(request)),
        )
        .await?;
    follow(
        api,
        &domain,
        &wait,
        &mut response.deployment,
        &mut response.ready_nodes,
    )
    .await?;
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

/// With `--wait`, follows the deployment a deploy or rollback started until every live edge
/// serves it (or it fails), and puts its final state and the edges serving it in the response.
pub(crate) async fn follow(
    api: &Api,
    domain: &str,
    wait: &WaitArgs,
    deployment: &mut Option<Deployment>,
    ready_nodes: &mut Vec<String>,
) -> anyhow::Result<()> {
    if wait.wait {
        let last = watch::follow(api, domain, deployment.as_ref(), wait.wait_timeout).await?;
        *deployment = last.deployment;
        *ready_nodes = last.serving_nodes;
    }
    Ok(())
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
    let mut response = api
        .unary(
            api.timeout(),
            api.deployments().rollback(api.request(request)),
        )
        .await?;
    follow(
        api,
        &domain,
        &wait,
        &mut response.deployment,
        &mut response.ready_nodes,
    )
    .await?;
    let deployment = response
        .deployment
        .as_ref()
        .context("the server returned no deployment in its response")?;
    printer.print(
        &json!({
            "deployment": output::deployment_json(deployment),
            "ready_nodes": response.ready_nodes,
        }),
        || {
            let mut text = format!(
                "rolled {domain} back to {} ({}) as deployment {}, {}\n",
                output::app_ref(deployment.app.as_ref()),
                deployment.rollback_of,
                deployment.id,
                output::deployment_state(deployment.state())
            );
            if wait.wait {
                text.push_str(&served_by(&response.ready_nodes));
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
