//! Preview deploys: `stk deploy SITE NAME@VERSION --preview [--ttl 72h] [--password-stdin]`,
//! `stk preview list [SITE]`, `stk preview delete ID`, `stk deploy promote ID`.

use std::io::BufRead as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use statiko_proto::v1::{
    AppRef, DeletePreviewRequest, DeployPreviewRequest, Deployment, ListPreviewsRequest,
    PromotePreviewRequest, PromotePreviewResponse,
};

use crate::cli::{PreviewCommand, WaitArgs};
use crate::commands::Printer;
use crate::connect::Api;
use crate::output;

impl crate::deploy::Followed for PromotePreviewResponse {
    fn parts(&mut self) -> (&mut Option<Deployment>, &mut Vec<String>) {
        (&mut self.deployment, &mut self.ready_nodes)
    }
}

/// The flags of `stk deploy --preview`.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) ttl: Option<Duration>,
    pub(crate) password_stdin: bool,
    pub(crate) wait: WaitArgs,
}

pub(crate) async fn run(
    api: &Api,
    printer: Printer,
    command: PreviewCommand,
) -> anyhow::Result<()> {
    match command {
        PreviewCommand::List { domain } => {
            let previews = list(api, domain.unwrap_or_default()).await?;
            printer.print(
                &json!({
                    "previews": previews.iter().map(output::deployment_json).collect::<Vec<_>>(),
                }),
                || output::previews_table(&previews),
            )
        }
        PreviewCommand::Delete { id, site } => {
            let domain = site_of(api, &id, site).await?;
            api.unary(
                api.timeout(),
                api.deployments()
                    .delete_preview(api.request(DeletePreviewRequest {
                        domain: domain.clone(),
                        id: id.clone(),
                    })),
            )
            .await?;
            printer.print(&json!({ "deleted": id, "site": domain }), || {
                format!("deleted preview {id} of {domain}\n")
            })
        }
    }
}

async fn list(api: &Api, domain: String) -> anyhow::Result<Vec<Deployment>> {
    Ok(api
        .unary(
            api.timeout(),
            api.deployments()
                .list_previews(api.request(ListPreviewsRequest { domain })),
        )
        .await?
        .previews)
}

/// The site of preview `id`: `site` when given, else found among the previews visible.
async fn site_of(api: &Api, id: &str, site: Option<String>) -> anyhow::Result<String> {
    if let Some(site) = site {
        return Ok(site);
    }
    match list(api, String::new())
        .await?
        .into_iter()
        .find(|p| p.id == id)
    {
        Some(preview) => Ok(preview.site),
        None => bail!(
            "preview {id:?} not found: deleted, or expired and collected (see `stk preview list`)"
        ),
    }
}

/// One line of standard input, without its line ending.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("--password-stdin: reading standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("--password-stdin: standard input held no password");
    }
    Ok(password)
}

pub(crate) async fn deploy(
    api: &Api,
    printer: Printer,
    domain: String,
    name: String,
    version: String,
    options: Options,
) -> anyhow::Result<()> {
    let password = if options.password_stdin {
        password_from_stdin()?
    } else {
        String::new()
    };
    let ttl = options
        .ttl
        .map(prost_types::Duration::try_from)
        .transpose()
        .context("--ttl is too long")?;
    let wait_timeout = prost_types::Duration::try_from(options.wait.wait_timeout)
        .context("--wait-timeout is too long")?;
    let request = DeployPreviewRequest {
        domain: domain.clone(),
        app: Some(AppRef {
            name: name.clone(),
            version: version.clone(),
        }),
        ttl,
        password,
        wait: options.wait.wait,
        wait_timeout: Some(wait_timeout),
    };
    let call_timeout = if options.wait.wait {
        api.timeout() + options.wait.wait_timeout
    } else {
        api.timeout()
    };
    let response = api
        .unary(
            call_timeout,
            api.deployments().deploy_preview(api.request(request)),
        )
        .await?;
    let deployment = response
        .deployment
        .context("the server returned no deployment in its response")?;
    let preview = deployment.preview.clone().unwrap_or_default();
    printer.print(
        &json!({
            "deployment": output::deployment_json(&deployment),
            "ready_nodes": response.ready_nodes,
        }),
        || {
            let mut text = format!(
                "preview {} of {name}@{version} for {domain}: {}\nexpires {}{}\n",
                deployment.id,
                preview.url,
                output::timestamp(preview.expires_at.as_ref()),
                if preview.password_protected {
                    "; password protected"
                } else {
                    ""
                }
            );
            if options.wait.wait {
                text.push_str(&format!(
                    "staged on {} edge(s): {}\n",
                    response.ready_nodes.len(),
                    output::list(&response.ready_nodes)
                ));
            }
            text
        },
    )
}

pub(crate) async fn promote(
    api: &Api,
    printer: Printer,
    id: String,
    site: Option<String>,
    wait: WaitArgs,
) -> anyhow::Result<()> {
    let domain = site_of(api, &id, site).await?;
    let mut client = api.deployments();
    let call = client.promote_preview(api.request(PromotePreviewRequest {
        domain: domain.clone(),
        id: id.clone(),
        ..PromotePreviewRequest::default()
    }));
    let response: PromotePreviewResponse =
        crate::deploy::send_and_follow(api, &domain, &wait, call).await?;
    crate::deploy::print_started(printer, response, &wait, |deployment| {
        format!(
            "promoted preview {id} ({}) to {domain} as deployment {}, {}\n",
            output::app_ref(deployment.app.as_ref()),
            deployment.id,
            output::deployment_state(deployment.state())
        )
    })
}
