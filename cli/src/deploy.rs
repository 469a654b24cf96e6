//! `stk deploy`: deploy an app version to a site, list a site's deployments, roll back.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use statiko_proto::v1::{
    AppRef, DeployRequest, DeployStrategy, ListDeploymentsRequest, RollbackRequest,
};

use crate::cli::{DeployArgs, DeployCommand, WaitArgs};
use crate::commands::Printer;
use crate::connect::Api;
use crate::output;
use crate::usage_error;

/// Extra time given to a waiting call on top of its wait timeout, for the server to answer.
const WAIT_GRACE: Duration = Duration::from_secs(10);

pub(crate) async fn run(api: &Api, printer: Printer, args: DeployArgs) -> anyhow::Result<()> {
    match args.command {
        Some(DeployCommand::History { domain }) => history(api, printer, domain).await,
        Some(DeployCommand::Rollback { domain, to, wait }) => {
            rollback(api, printer, domain, to, wait).await
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

/// The `wait_timeout` to send and the call timeout to use.
fn wait_settings(
    api: &Api,
    wait: &WaitArgs,
) -> anyhow::Result<(Option<prost_types::Duration>, Duration)> {
    if !wait.wait {
        return Ok((None, api.timeout()));
    }
    let sent = prost_types::Duration::try_from(wait.wait_timeout)
        .map_err(|_| usage_error("--wait-timeout is too large"))?;
    // A waiting call legitimately takes as long as its wait timeout.
    Ok((
        Some(sent),
        api.timeout().max(wait.wait_timeout + WAIT_GRACE),
    ))
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
    let (wait_timeout, timeout) = wait_settings(api, &wait)?;
    let request = DeployRequest {
        domain: domain.clone(),
        app: Some(AppRef {
            name: name.clone(),
            version: version.clone(),
        }),
        wait: wait.wait,
        wait_timeout,
        strategy: strategy as i32,
    };
    let response = api
        .unary(
            timeout,
            api.deployments()
                .deploy(api.request_with_timeout(request, timeout)),
        )
        .await?;
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
    let (wait_timeout, timeout) = wait_settings(api, &wait)?;
    let request = RollbackRequest {
        domain: domain.clone(),
        to: to.unwrap_or_default(),
        wait: wait.wait,
        wait_timeout,
    };
    let response = api
        .unary(
            timeout,
            api.deployments()
                .rollback(api.request_with_timeout(request, timeout)),
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

fn served_by(nodes: &[String]) -> String {
    format!(
        "served by {} edge(s): {}\n",
        nodes.len(),
        output::list(nodes)
    )
}
