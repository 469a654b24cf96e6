//! Authentication and roles end to end: no token, a wrong token and a malformed header are
//! UNAUTHENTICATED; a read-only token may Get/List but every write is PERMISSION_DENIED (and
//! writes nothing); health and reflection answer without a token. Plus grpcurl: reflection
//! lists every `statiko.v1` service and an authenticated call with a JSON body works.

use std::process::Output;

use anyhow::{Context, Result};
use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use statiko_proto::v1::{
    DeleteSiteRequest, DeployRequest, ExportStateRequest, GetSiteRequest, ImportCertificateRequest,
    ListAppsRequest, ListCertificatesRequest, ListNodesRequest, ListSitesRequest,
};
use statiko_tests::fixtures::{Upload, app_ref, assert_status, site, site_bundle};
use statiko_tests::{
    ADMIN_TOKEN, Api, Control, ControlOptions, OutputExt, require_tool, tool_path,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Status};

use crate::control_common::{Backend, list_sites, start};

/// Sends and receives raw protobuf bytes, for services without generated clients here.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// `grpc.health.v1.Health/Check` for the whole server, without a token: the raw response.
async fn health_check(control: &Control) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(control.channel().await.map_err(internal)?);
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    let response = grpc
        .unary(
            Request::new(Vec::new()),
            PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            RawCodec,
        )
        .await?;
    Ok(response.into_inner())
}

/// `ServerReflectionInfo` with `list_services` on `path`, without a token: the raw response.
async fn reflection_list(control: &Control, path: &'static str) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(control.channel().await.map_err(internal)?);
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    // ServerReflectionRequest { list_services (7): "" }
    let request = tokio_stream::iter(vec![vec![0x3a, 0x00]]);
    let mut responses = grpc
        .streaming(
            Request::new(request),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await?
        .into_inner();
    responses
        .message()
        .await?
        .ok_or_else(|| Status::internal("no reflection response"))
}

fn internal(err: anyhow::Error) -> Status {
    Status::internal(format!("{err:#}"))
}

const SERVICES: [&str; 7] = [
    "statiko.v1.SiteService",
    "statiko.v1.AppService",
    "statiko.v1.DeploymentService",
    "statiko.v1.CertificateService",
    "statiko.v1.ClusterService",
    "statiko.v1.StateService",
    "statiko.v1.TokenService",
];

#[tokio::test]
async fn tokens_and_roles() -> Result<()> {
    let Some(running) = start(Backend::File, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    admin
        .sites()
        .create_site(site("auth.example.com", &[]))
        .await?;

    // No token, a wrong token, malformed headers.
    let anonymous = control.anonymous().await?;
    assert_status(
        anonymous
            .sites()
            .list_sites(ListSitesRequest::default())
            .await,
        Code::Unauthenticated,
        &["missing bearer token"],
    );
    assert_status(
        control
            .api("not-the-token")
            .await?
            .sites()
            .list_sites(ListSitesRequest::default())
            .await,
        Code::Unauthenticated,
        &["invalid bearer token"],
    );
    // A token that is a prefix of the admin token is not the admin token.
    assert_status(
        control
            .api(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])
            .await?
            .sites()
            .list_sites(ListSitesRequest::default())
            .await,
        Code::Unauthenticated,
        &["invalid bearer token"],
    );
    for header in [
        format!("Basic {ADMIN_TOKEN}"),
        ADMIN_TOKEN.to_owned(),
        format!("Token {ADMIN_TOKEN}"),
    ] {
        let mut request = Request::new(ListSitesRequest::default());
        request
            .metadata_mut()
            .insert("authorization", header.parse().context("header value")?);
        assert_status(
            anonymous.sites().list_sites(request).await,
            Code::Unauthenticated,
            &["Bearer <token>"],
        );
    }

    // Read-only: Get and List work.
    let readonly = control.readonly().await?;
    let got = readonly
        .sites()
        .get_site(GetSiteRequest {
            domain: "auth.example.com".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        got.site.map(|s| s.domain).as_deref(),
        Some("auth.example.com")
    );
    readonly
        .sites()
        .list_sites(ListSitesRequest::default())
        .await?;
    readonly
        .apps()
        .list_apps(ListAppsRequest::default())
        .await?;
    readonly
        .certificates()
        .list_certificates(ListCertificatesRequest::default())
        .await?;
    readonly
        .cluster()
        .list_nodes(ListNodesRequest::default())
        .await?;

    // Read-only: every write (and the export, which holds sealed secrets) is refused.
    let denied = |method: &'static str| [method, "read-only"];
    assert_status(
        readonly
            .sites()
            .create_site(site("ro.example.com", &[]))
            .await,
        Code::PermissionDenied,
        &denied("/statiko.v1.SiteService/CreateSite"),
    );
    assert_status(
        readonly
            .sites()
            .delete_site(DeleteSiteRequest {
                domain: "auth.example.com".into(),
            })
            .await,
        Code::PermissionDenied,
        &denied("/statiko.v1.SiteService/DeleteSite"),
    );
    assert_status(
        Upload::new("web", "1.0.0", site_bundle("ro"))
            .send(&readonly)
            .await,
        Code::PermissionDenied,
        &denied("/statiko.v1.AppService/UploadApp"),
    );
    assert_status(
        readonly
            .deployments()
            .deploy(DeployRequest {
                domain: "auth.example.com".into(),
                app: Some(app_ref("web", "1.0.0")),
                ..DeployRequest::default()
            })
            .await,
        Code::PermissionDenied,
        &denied("/statiko.v1.DeploymentService/Deploy"),
    );
    let pair = statiko_tests::fixtures::cert_pair(&["ro.example.com"])?;
    assert_status(
        readonly
            .certificates()
            .import_certificate(ImportCertificateRequest {
                name: "ro".into(),
                certificate_pem: pair.cert_pem,
                key_pem: pair.key_pem,
                ..ImportCertificateRequest::default()
            })
            .await,
        Code::PermissionDenied,
        &denied("/statiko.v1.CertificateService/ImportCertificate"),
    );
    assert_status(
        readonly
            .state()
            .export_state(ExportStateRequest::default())
            .await,
        Code::PermissionDenied,
        &denied("/statiko.v1.StateService/ExportState"),
    );
    // Nothing was written by the refused calls.
    let sites = list_sites(&admin).await?;
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].domain, "auth.example.com");
    let apps = admin
        .apps()
        .list_apps(ListAppsRequest::default())
        .await?
        .into_inner()
        .apps;
    assert!(apps.is_empty(), "{apps:?}");
    let certs = admin
        .certificates()
        .list_certificates(ListCertificatesRequest::default())
        .await?
        .into_inner()
        .certificates;
    assert!(certs.is_empty(), "{certs:?}");

    // Health and reflection (v1 and v1alpha) answer without a token.
    let health = health_check(control).await?;
    assert_eq!(
        health,
        [0x08, 0x01],
        "HealthCheckResponse {{ status: SERVING }}"
    );
    for path in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        let response = reflection_list(control, path).await?;
        let text = String::from_utf8_lossy(&response);
        for service in SERVICES {
            assert!(
                text.contains(service),
                "{path} does not list {service}: {text:?}"
            );
        }
    }
    Ok(())
}

/// Runs `grpcurl -cacert <control CA> <flags> 127.0.0.1:PORT <trailing>`.
async fn grpcurl(control: &Control, flags: &[&str], trailing: &[&str]) -> Result<Output> {
    let binary = tool_path("grpcurl").context("grpcurl")?;
    let output = tokio::process::Command::new(binary)
        .arg("-cacert")
        .arg(control.ca_path())
        .args(flags)
        .arg(control.grpc_addr().to_string())
        .args(trailing)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(statiko_tests::patience(statiko_tests::secs(30)), output)
        .await
        .context("grpcurl timed out")?
        .context("run grpcurl")
}

#[tokio::test]
async fn grpcurl_lists_services_and_calls() -> Result<()> {
    statiko_tests::init();
    if !require_tool("grpcurl") {
        return Ok(());
    }
    let Some(running) = start(Backend::File, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;

    let listed = grpcurl(control, &[], &["list"]).await?;
    listed.assert_success();
    let services: Vec<String> = listed.stdout_text().lines().map(str::to_owned).collect();
    for service in SERVICES {
        assert!(
            services.iter().any(|s| s == service),
            "{service} missing from {services:?}"
        );
    }
    assert!(
        services.iter().any(|s| s == "grpc.health.v1.Health"),
        "{services:?}"
    );

    let authorization = format!("authorization: Bearer {ADMIN_TOKEN}");
    let created = grpcurl(
        control,
        &[
            "-H",
            &authorization,
            "-d",
            r#"{"domain": "GRPCURL.example.com", "aliases": ["www.grpcurl.example.com"]}"#,
        ],
        &["statiko.v1.SiteService/CreateSite"],
    )
    .await?;
    created.assert_success();
    let response: serde_json::Value = serde_json::from_str(&created.stdout_text())
        .with_context(|| format!("grpcurl output is not JSON: {}", created.stdout_text()))?;
    assert_eq!(
        response["site"]["domain"], "grpcurl.example.com",
        "{response}"
    );
    assert_eq!(
        response["site"]["aliases"][0], "www.grpcurl.example.com",
        "{response}"
    );

    let admin: Api = control.admin().await?;
    let sites = list_sites(&admin).await?;
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].domain, "grpcurl.example.com");

    // The same call without a token is refused, and grpcurl says why.
    let refused = grpcurl(
        control,
        &["-d", r#"{"domain": "other.example.com"}"#],
        &["statiko.v1.SiteService/CreateSite"],
    )
    .await?;
    assert!(!refused.status.success(), "{}", refused.stdout_text());
    assert!(
        refused.stderr_text().contains("Unauthenticated"),
        "{}",
        refused.stderr_text()
    );
    Ok(())
}
