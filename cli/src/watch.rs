//! `--wait` for deploys and rollbacks: follows `WatchDeployment` and shows per-edge progress on
//! stderr, a progress bar on a terminal and one plain line per change otherwise.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use statiko_proto::v1::{
    Deployment, DeploymentState, WatchDeploymentRequest, WatchDeploymentResponse,
};

use crate::connect::Api;
use crate::output;

/// One line of progress.
fn describe(p: &WatchDeploymentResponse) -> String {
    let state = p
        .deployment
        .as_ref()
        .map_or("-", |d| output::deployment_state(d.state()));
    let mut line = format!("{state}: staged {}/{}", p.staged_nodes.len(), p.nodes.len());
    if !p.staged_nodes.is_empty() {
        line.push_str(&format!(" ({})", p.staged_nodes.join(", ")));
    }
    if state == "live" {
        line.push_str(&format!(
            ", serving {}/{}",
            p.serving_nodes.len(),
            p.nodes.len()
        ));
    }
    for e in &p.errors {
        line.push_str(&format!("; {} failed: {}", e.node, e.error));
    }
    line
}

/// Follows `deployment` (just made) of `domain` until it is live and served by every live edge (returns
/// the last progress), and fails naming the edges when it failed or `timeout` passed first.
pub(crate) async fn follow(
    api: &Api,
    domain: &str,
    deployment: Option<&Deployment>,
    timeout: Duration,
) -> anyhow::Result<WatchDeploymentResponse> {
    let id = deployment
        .map(|d| d.id.as_str())
        .context("the server returned no deployment in its response")?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {bar:30.cyan/blue} {pos}/{len} {msg}")
                .context("progress bar template")?,
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let request = WatchDeploymentRequest {
        domain: domain.to_owned(),
        id: id.to_owned(),
    };
    let follow = async {
        let mut stream = api
            .deployments()
            .watch_deployment(api.request_with_timeout(request, timeout))
            .await?
            .into_inner();
        let mut last = None;
        while let Some(progress) = stream.next().await {
            let progress = progress?;
            let line = describe(&progress);
            match &bar {
                Some(bar) => {
                    // Staging counts first, then serving once live: 2N steps in all.
                    let n = progress.nodes.len() as u64;
                    bar.set_length((2 * n).max(1));
                    bar.set_position(
                        (progress.staged_nodes.len() + progress.serving_nodes.len()) as u64,
                    );
                    bar.set_message(line);
                }
                None => eprintln!("{id} {line}"),
            }
            last = Some(progress);
        }
        anyhow::Ok(last)
    };
    let outcome = tokio::time::timeout(timeout, follow).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let last = match outcome {
        Ok(result) => result?.context("the server sent no progress")?,
        Err(_) => {
            // A wait that ran out is DEADLINE_EXCEEDED, as when control's own wait runs out,
            // so scripts see the same exit code (3) either way.
            return Err(tonic::Status::deadline_exceeded(format!(
                "deployment {id} did not finish within {}",
                humantime::format_duration(timeout)
            ))
            .into());
        }
    };
    let deployment = last
        .deployment
        .as_ref()
        .context("progress without deployment")?;
    match deployment.state() {
        DeploymentState::Failed => Err(anyhow!(
            "deployment {id} failed on edge(s) {}: {}",
            output::list(&deployment.failed_nodes),
            deployment.reason
        )),
        DeploymentState::Live if last.nodes.is_empty() => Err(anyhow!(
            "deployment {id} is live, but no live edge is registered to serve it"
        )),
        DeploymentState::Live if last.serving_nodes.len() == last.nodes.len() => Ok(last),
        _ => Err(anyhow!(
            "deployment {id} ended {}: {}",
            output::deployment_state(deployment.state()),
            describe(&last)
        )),
    }
}
