//! Deployment records through control on etcd (no edge, so no leader: deploys go live at once):
//! every deploy is a record with its author (the token's name) and state, listed newest first
//! and garbage-collected beyond `deploy.history`; rollback makes the previous (or a named)
//! deployment's version live again as a new record; bad input gets a clear error naming the
//! field; `stk deploy history` prints the same as a table and as JSON; deleting a site drops its
//! history.

use anyhow::{Context, Result};
use serde_json::json;
use statiko_proto::v1::{
    DeployStrategy, Deployment, DeploymentState, GetDeploymentRequest, ListDeploymentsRequest,
    RollbackRequest,
};
use statiko_tests::fixtures::{app_ref, assert_status, deploy, site, upload_app};
use statiko_tests::{Api, ControlOptions, OutputExt, Role, secs};
use tonic::Code;

use crate::control_common::{Backend, get_site, start};

const BOT_TOKEN: &str = "release-bot-token-0123456789abcdef";

async fn history(api: &Api, domain: &str) -> Result<Vec<Deployment>> {
    Ok(api
        .deployments()
        .list_deployments(ListDeploymentsRequest {
            domain: domain.to_owned(),
        })
        .await?
        .into_inner()
        .deployments)
}

/// `(version, state)` of each deployment, newest first.
fn summary(deployments: &[Deployment]) -> Vec<(String, DeploymentState)> {
    deployments
        .iter()
        .map(|d| {
            let version = d
                .app
                .as_ref()
                .map(|a| a.version.clone())
                .unwrap_or_default();
            (version, d.state())
        })
        .collect()
}

fn rollback(domain: &str, to: &str) -> RollbackRequest {
    RollbackRequest {
        domain: domain.to_owned(),
        to: to.to_owned(),
        ..RollbackRequest::default()
    }
}

#[tokio::test]
async fn history_rollback_and_bad_input() -> Result<()> {
    let options = ControlOptions {
        overrides: vec![json!({"deploy": {"history": 4}})],
        ..ControlOptions::default()
    }
    .token("release-bot", BOT_TOKEN, Role::Admin);
    let Some(running) = start(Backend::Etcd, options).await? else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    let bot = control.api(BOT_TOKEN).await?;
    admin
        .sites()
        .create_site(site("rel.example.com", &["www.rel.example.com"]))
        .await?;
    for version in ["1", "2", "3", "4", "5"] {
        upload_app(&admin, "web", version).await?;
    }

    // Nothing deployed yet: an empty history, and nothing to roll back to.
    assert!(history(&admin, "rel.example.com").await?.is_empty());
    assert_status(
        admin
            .deployments()
            .rollback(rollback("rel.example.com", ""))
            .await,
        Code::FailedPrecondition,
        &["no previous deployment", "rel.example.com"],
    );

    let first = deploy(&admin, "rel.example.com", "web", "1", false, secs(5)).await?;
    let first = first.deployment.context("a deployment in the response")?;
    assert_eq!(first.state(), DeploymentState::Live);
    assert_eq!(
        first.strategy(),
        DeployStrategy::Immediate,
        "no leader edge"
    );
    assert_eq!(first.author, "admin");
    assert_eq!(first.site, "rel.example.com");
    // Still nothing to roll back to: the only deployment is live.
    assert_status(
        admin
            .deployments()
            .rollback(rollback("rel.example.com", ""))
            .await,
        Code::FailedPrecondition,
        &["no previous deployment"],
    );
    let second = deploy(&bot, "www.rel.example.com", "web", "2", false, secs(5)).await?;
    let second = second.deployment.context("deployment")?;
    assert_eq!(second.author, "release-bot");
    assert!(second.id > first.id, "ids sort by creation");
    let listed = history(&admin, "www.rel.example.com").await?;
    assert_eq!(
        summary(&listed),
        [
            ("2".to_owned(), DeploymentState::Live),
            ("1".to_owned(), DeploymentState::Superseded)
        ]
    );
    assert!(listed[1].superseded_at.is_some() && listed[0].live_at.is_some());

    // GetDeployment, by alias; unknown and malformed ids name the field.
    let got = admin
        .deployments()
        .get_deployment(GetDeploymentRequest {
            domain: "www.rel.example.com".into(),
            id: first.id.clone(),
        })
        .await?
        .into_inner()
        .deployment
        .context("deployment")?;
    assert_eq!(got.id, first.id);
    assert_eq!(got.state(), DeploymentState::Superseded);
    assert_status(
        admin
            .deployments()
            .get_deployment(GetDeploymentRequest {
                domain: "rel.example.com".into(),
                id: "d0000000000000zzzz".into(),
            })
            .await,
        Code::NotFound,
        &["id", "d0000000000000zzzz"],
    );
    assert_status(
        admin
            .deployments()
            .get_deployment(GetDeploymentRequest {
                domain: "rel.example.com".into(),
                id: "../x".into(),
            })
            .await,
        Code::InvalidArgument,
        &["id"],
    );
    assert_status(
        admin
            .deployments()
            .list_deployments(ListDeploymentsRequest {
                domain: "nosite.example.com".into(),
            })
            .await,
        Code::NotFound,
        &["nosite.example.com"],
    );
    assert_status(
        admin
            .deployments()
            .rollback(rollback("rel.example.com", "d0000000000000zzzz"))
            .await,
        Code::NotFound,
        &["to", "d0000000000000zzzz"],
    );
    assert_status(
        admin
            .deployments()
            .rollback(rollback("rel.example.com", "nope"))
            .await,
        Code::InvalidArgument,
        &["to"],
    );
    // The live deployment is not a rollback target.
    assert_status(
        admin
            .deployments()
            .rollback(rollback("rel.example.com", &second.id))
            .await,
        Code::FailedPrecondition,
        &["to", "live"],
    );
    // A read-only token reads the history but cannot roll back.
    let readonly = control.readonly().await?;
    assert_eq!(history(&readonly, "rel.example.com").await?.len(), 2);
    assert_status(
        readonly
            .deployments()
            .rollback(rollback("rel.example.com", ""))
            .await,
        Code::PermissionDenied,
        &["Rollback"],
    );

    // Rollback: the previous live version, as a new record naming what it went back to.
    let rolled = bot
        .deployments()
        .rollback(rollback("rel.example.com", ""))
        .await?
        .into_inner()
        .deployment
        .context("deployment")?;
    assert_eq!(rolled.rollback_of, first.id);
    assert_eq!(rolled.app, Some(app_ref("web", "1")));
    assert_eq!(rolled.state(), DeploymentState::Live);
    assert_eq!(rolled.author, "release-bot");
    assert_eq!(
        get_site(&admin, "rel.example.com").await?.app,
        Some(app_ref("web", "1"))
    );

    // History keeps `deploy.history` (4) records: the oldest go first.
    // Atomic asked for, but no edge leader to drive a cutover: made immediate, and recorded so.
    let three = admin
        .deployments()
        .deploy(statiko_proto::v1::DeployRequest {
            domain: "rel.example.com".into(),
            app: Some(app_ref("web", "3")),
            strategy: DeployStrategy::Atomic as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .deployment
        .context("deployment")?;
    assert_eq!(three.strategy(), DeployStrategy::Immediate);
    assert_eq!(three.state(), DeploymentState::Live);
    deploy(&admin, "rel.example.com", "web", "4", false, secs(5)).await?;
    let listed = history(&admin, "rel.example.com").await?;
    assert_eq!(
        summary(&listed),
        [
            ("4".to_owned(), DeploymentState::Live),
            ("3".to_owned(), DeploymentState::Superseded),
            ("1".to_owned(), DeploymentState::Superseded),
            ("2".to_owned(), DeploymentState::Superseded),
        ]
    );
    assert!(
        listed.iter().all(|d| d.id != first.id),
        "the oldest is gone"
    );
    // Rollback --to a retained, older deployment.
    let to_two = admin
        .deployments()
        .rollback(rollback("rel.example.com", &second.id))
        .await?
        .into_inner()
        .deployment
        .context("deployment")?;
    assert_eq!(to_two.app, Some(app_ref("web", "2")));
    assert_eq!(to_two.rollback_of, second.id);

    // stk deploy history: a table naming versions, states and authors, and JSON.
    let table = control
        .stk(["deploy", "history", "rel.example.com"])
        .await?;
    table.assert_success();
    let text = table.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{text}"
    );
    assert!(
        lines[1].contains(&to_two.id) && lines[1].contains("web@2"),
        "{text}"
    );
    assert!(
        lines[1].contains("live") && lines[1].contains("admin"),
        "{text}"
    );
    assert!(
        lines[1].contains(&format!("rollback to {}", second.id)),
        "{text}"
    );
    assert!(
        lines[2].contains("web@4") && lines[2].contains("superseded"),
        "{text}"
    );
    // Four kept, plus the one rolled back to (never collected while a newer record links it).
    assert_eq!(lines.len(), 6, "{text}");
    let parsed = control
        .stk_json(["deploy", "history", "rel.example.com"])
        .await?;
    let deployments = parsed["deployments"].as_array().context("an array")?;
    assert_eq!(deployments.len(), 5, "{parsed}");
    assert_eq!(deployments[0]["id"], to_two.id.as_str());
    assert_eq!(deployments[0]["state"], "DEPLOYMENT_STATE_LIVE");
    assert_eq!(deployments[0]["author"], "admin");
    assert_eq!(deployments[0]["rollback_of"], second.id.as_str());
    // stk deploy rollback and its errors.
    let cli_rollback = control
        .stk(["deploy", "rollback", "rel.example.com"])
        .await?;
    cli_rollback.assert_success();
    assert!(
        cli_rollback.stdout_text().contains("web@4"),
        "{}",
        cli_rollback.stdout_text()
    );
    let unknown = control
        .stk([
            "deploy",
            "rollback",
            "rel.example.com",
            "--to",
            "d0000000000000zzzz",
        ])
        .await?;
    assert!(!unknown.status.success());
    assert!(
        unknown.stderr_text().contains("NOT_FOUND"),
        "{}",
        unknown.stderr_text()
    );
    assert!(
        unknown.stderr_text().contains("to:"),
        "{}",
        unknown.stderr_text()
    );

    // Deleting the site drops its history; a new site of that name starts empty.
    admin
        .sites()
        .delete_site(statiko_proto::v1::DeleteSiteRequest {
            domain: "rel.example.com".into(),
        })
        .await?;
    admin
        .sites()
        .create_site(site("rel.example.com", &[]))
        .await?;
    assert!(history(&admin, "rel.example.com").await?.is_empty());
    Ok(())
}
