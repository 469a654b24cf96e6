//! Process-level tests of the `stk` binary against an in-process mock control server:
//! environment variables, exit codes, JSON output, the bearer token, uploads, and TLS.

// Test helpers and the mock server may panic on setup failures; that is a test failure.
#![expect(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use statiko_proto::v1::app_service_server::{AppService, AppServiceServer};
use statiko_proto::v1::site_service_server::{SiteService, SiteServiceServer};
use statiko_proto::v1::upload_app_request::Data;
use statiko_proto::v1::{
    App, BundleFormat, CreateSiteRequest, CreateSiteResponse, DeleteAppRequest, DeleteAppResponse,
    DeleteSiteRequest, DeleteSiteResponse, GetSiteRequest, GetSiteResponse, ListAppsRequest,
    ListAppsResponse, ListSitesRequest, ListSitesResponse, Site, TlsConfig, TlsType,
    UpdateSiteRequest, UpdateSiteResponse, UploadAppRequest, UploadAppResponse,
};

const TOKEN: &str = "t0k3n";

/// What the mock saw, for assertions.
#[derive(Debug, Default)]
struct Seen {
    update: Option<UpdateSiteRequest>,
    upload: Option<(statiko_proto::v1::UploadMetadata, Vec<u8>)>,
}

#[derive(Debug, Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Seen>>,
}

fn check_token<T>(request: &Request<T>) -> Result<(), Status> {
    let expected = format!("Bearer {TOKEN}");
    match request.metadata().get("authorization") {
        Some(value) if value.to_str().ok() == Some(expected.as_str()) => Ok(()),
        _ => Err(Status::unauthenticated("missing or invalid token")),
    }
}

fn site(domain: &str) -> Site {
    Site {
        domain: domain.to_owned(),
        aliases: vec![format!("www.{domain}")],
        tls: Some(TlsConfig {
            r#type: TlsType::Acme as i32,
            certificate: String::new(),
        }),
        app: None,
        revision: 7,
        created_at: Some(prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        }),
        updated_at: None,
        deployed_at: None,
        ..Site::default()
    }
}

#[tonic::async_trait]
impl SiteService for Mock {
    async fn create_site(
        &self,
        request: Request<CreateSiteRequest>,
    ) -> Result<Response<CreateSiteResponse>, Status> {
        check_token(&request)?;
        Err(Status::already_exists("domain example.com is taken"))
    }

    async fn get_site(
        &self,
        request: Request<GetSiteRequest>,
    ) -> Result<Response<GetSiteResponse>, Status> {
        check_token(&request)?;
        let domain = request.into_inner().domain;
        if domain == "example.com" {
            Ok(Response::new(GetSiteResponse {
                site: Some(site(&domain)),
            }))
        } else {
            Err(Status::not_found(format!("site {domain} not found")))
        }
    }

    async fn list_sites(
        &self,
        request: Request<ListSitesRequest>,
    ) -> Result<Response<ListSitesResponse>, Status> {
        check_token(&request)?;
        Ok(Response::new(ListSitesResponse {
            sites: vec![site("a.example"), site("bb.example")],
        }))
    }

    async fn update_site(
        &self,
        request: Request<UpdateSiteRequest>,
    ) -> Result<Response<UpdateSiteResponse>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        let response = site(&request.domain);
        self.seen.lock().unwrap().update = Some(request);
        Ok(Response::new(UpdateSiteResponse {
            site: Some(response),
        }))
    }

    async fn delete_site(
        &self,
        request: Request<DeleteSiteRequest>,
    ) -> Result<Response<DeleteSiteResponse>, Status> {
        check_token(&request)?;
        Ok(Response::new(DeleteSiteResponse {}))
    }
}

#[tonic::async_trait]
impl AppService for Mock {
    async fn upload_app(
        &self,
        request: Request<Streaming<UploadAppRequest>>,
    ) -> Result<Response<UploadAppResponse>, Status> {
        check_token(&request)?;
        let mut stream = request.into_inner();
        let Some(Ok(UploadAppRequest {
            data: Some(Data::Metadata(metadata)),
        })) = stream.next().await
        else {
            return Err(Status::invalid_argument("metadata first"));
        };
        let mut bytes = Vec::new();
        while let Some(message) = stream.next().await {
            match message?.data {
                Some(Data::Chunk(chunk)) => {
                    assert!(chunk.len() <= 64 * 1024);
                    bytes.extend_from_slice(&chunk);
                }
                _ => return Err(Status::invalid_argument("chunks after metadata")),
            }
        }
        let digest = format!(
            "sha256:{}",
            hex(digest::digest(&digest::SHA256, &bytes).as_ref())
        );
        if digest != metadata.digest {
            return Err(Status::invalid_argument("digest mismatch"));
        }
        let app = App {
            name: metadata.name.clone(),
            version: metadata.version.clone(),
            digest,
            size: bytes.len() as u64,
            format: metadata.format,
            signed: !metadata.signature.is_empty(),
            created_at: None,
            used_by: vec![],
        };
        self.seen.lock().unwrap().upload = Some((metadata, bytes));
        Ok(Response::new(UploadAppResponse { app: Some(app) }))
    }

    async fn list_apps(
        &self,
        _request: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn delete_app(
        &self,
        request: Request<DeleteAppRequest>,
    ) -> Result<Response<DeleteAppResponse>, Status> {
        check_token(&request)?;
        Err(Status::failed_precondition(
            "app web@1 is used by example.com",
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the mock on 127.0.0.1:0, with TLS when an identity is given.
async fn start(mock: Mock, identity: Option<Identity>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut builder = Server::builder();
    if let Some(identity) = identity {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap();
    }
    let router = builder
        .add_service(SiteServiceServer::new(mock.clone()))
        .add_service(AppServiceServer::new(mock));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    address
}

/// Runs stk with a clean `STATIKO_*` environment plus `env`.
async fn stk(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stk"));
    for (key, _) in std::env::vars() {
        if key.starts_with("STATIKO_") {
            command.env_remove(key);
        }
    }
    command.args(args).envs(env.iter().copied());
    command.stdin(std::process::Stdio::null());
    command.output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_out(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn version_and_usage_errors() {
    let output = stk(&["version"], &[("STATIKO_OUTPUT", "json")]).await;
    assert_eq!(
        json_out(&output),
        json!({ "version": env!("CARGO_PKG_VERSION") })
    );
    let output = stk(&["version"], &[]).await;
    assert_eq!(
        stdout(&output),
        format!("stk {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(stk(&["--help"], &[]).await.status.code(), Some(0));
    assert_eq!(stk(&["--version"], &[]).await.status.code(), Some(0));

    for args in [
        &["deploy", "example.com", "web"][..],
        &["site", "update", "example.com"],
        &["site", "create", "example.com", "--tls", "letsencrypt"],
        &["bogus"],
        &["site", "list", "--output", "yaml"],
    ] {
        let output = stk(args, &[]).await;
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let output = stk(&["site", "list"], &[("STATIKO_OUTPUT", "xml")]).await;
    assert_eq!(output.status.code(), Some(64));

    // A local usage problem found after parsing: an unsupported archive type.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dist.rar");
    std::fs::write(&file, b"x").unwrap();
    let output = stk(
        &[
            "app",
            "upload",
            file.to_str().unwrap(),
            "--name",
            "w",
            "--version",
            "1",
        ],
        &[("STATIKO_ENDPOINT", "http://127.0.0.1:9")],
    )
    .await;
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
}

#[tokio::test]
async fn connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let endpoint = format!("http://127.0.0.1:{port}");
    let output = stk(&["site", "list", "--endpoint", &endpoint], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with(&format!("error: cannot connect to {endpoint}: ")),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_calls() {
    let mock = Mock::default();
    let address = start(mock.clone(), None).await;
    let endpoint = format!("http://{address}");
    let env = [
        ("STATIKO_ENDPOINT", endpoint.as_str()),
        ("STATIKO_TOKEN", TOKEN),
    ];

    let output = stk(&["site", "get", "example.com", "--output", "json"], &env).await;
    assert_eq!(
        json_out(&output),
        json!({ "site": {
            "domain": "example.com",
            "aliases": ["www.example.com"],
            "tls": { "type": "TLS_TYPE_ACME", "certificate": "" },
            "app": null,
            "revision": 7,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": null,
            "deployed_at": null,
            "deployment_id": "",
            "skew_protection": null,
        }})
    );

    let output = stk(&["site", "list"], &env).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("DOMAIN      ALIASES"), "{text}");
    assert!(
        lines[1].starts_with("a.example   www.a.example   acme"),
        "{text}"
    );

    let output = stk(&["site", "get", "nope.example"], &env).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: NOT_FOUND: site nope.example not found\n"
    );

    let output = stk(&["app", "delete", "web@1"], &env).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: FAILED_PRECONDITION: app web@1 is used by example.com\n"
    );

    // No token: the server refuses, and stk says how to fix it; a token problem exits 4
    // (docs/ci.md, "Exit codes").
    let output = stk(
        &["site", "list"],
        &[("STATIKO_ENDPOINT", endpoint.as_str())],
    )
    .await;
    assert_eq!(output.status.code(), Some(4));
    assert!(
        stderr(&output).starts_with("error: UNAUTHENTICATED: missing or invalid token\nhint: "),
        "{}",
        stderr(&output)
    );

    let output = stk(
        &[
            "site",
            "update",
            "example.com",
            "--clear-aliases",
            "--add-alias",
            "x.example.com",
            "--tls",
            "imported:main",
            "--expected-revision",
            "7",
        ],
        &env,
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output)
            .lines()
            .next()
            .is_some_and(|line| line.split_whitespace().eq(["domain", "example.com"])),
        "{}",
        stdout(&output)
    );
    let update = mock.seen.lock().unwrap().update.take().unwrap();
    assert_eq!(update.aliases.unwrap().aliases, Vec::<String>::new());
    assert_eq!(update.add_aliases, ["x.example.com"]);
    assert_eq!(update.tls.unwrap().certificate, "main");
    assert_eq!(update.expected_revision, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_folder() {
    let mock = Mock::default();
    let address = start(mock.clone(), None).await;
    let endpoint = format!("http://{address}");
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("dist");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(site.join("index.html"), b"<h1>hello</h1>").unwrap();
    // Bigger than one chunk, so the stream has several.
    std::fs::write(site.join("assets/blob.bin"), pseudo_random(300_000)).unwrap();
    let key = dir.path().join("key.pem");
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(&key, key_pair.serialize_pem()).unwrap();

    let output = stk(
        &[
            "app",
            "upload",
            site.to_str().unwrap(),
            "--name",
            "web",
            "--version",
            "1.4.0",
            "--sign",
            key.to_str().unwrap(),
            "--output",
            "json",
        ],
        &[
            ("STATIKO_ENDPOINT", endpoint.as_str()),
            ("STATIKO_TOKEN", TOKEN),
        ],
    )
    .await;
    let value = json_out(&output);
    let (metadata, bytes) = mock.seen.lock().unwrap().upload.take().unwrap();
    assert_eq!(metadata.format, BundleFormat::TarGz as i32);
    assert_eq!(
        value["app"]["digest"],
        Value::String(metadata.digest.clone())
    );
    assert_eq!(value["app"]["format"], "BUNDLE_FORMAT_TAR_GZ");
    assert_eq!(value["app"]["signed"], true);
    assert_eq!(value["app"]["size"], bytes.len() as u64);

    // The signature covers the raw SHA-256 digest.
    let sha256 = digest::digest(&digest::SHA256, &bytes);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ED25519,
        key_pair.public_key_raw(),
    )
    .verify(sha256.as_ref(), &metadata.signature)
    .unwrap();

    // The archive holds the folder's files under relative paths.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["assets", "assets/blob.bin", "index.html"]);
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_ca_and_insecure() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let identity = Identity::from_pem(&cert_pem, certified.signing_key.serialize_pem());
    let address = start(Mock::default(), Some(identity)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();

    for host in ["127.0.0.1", "localhost"] {
        let endpoint = format!("https://{host}:{}", address.port());
        let output = stk(
            &["site", "get", "example.com", "--output", "json"],
            &[
                ("STATIKO_ENDPOINT", endpoint.as_str()),
                ("STATIKO_TOKEN", TOKEN),
                ("STATIKO_CA", ca.to_str().unwrap()),
            ],
        )
        .await;
        assert_eq!(json_out(&output)["site"]["domain"], "example.com");
        assert_eq!(stderr(&output), "");
    }

    let endpoint = format!("https://127.0.0.1:{}", address.port());
    let output = stk(
        &["site", "get", "example.com", "--endpoint", &endpoint],
        &[("STATIKO_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with(&format!("error: cannot connect to {endpoint}: ")),
        "{err}"
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("\nhint: pass --ca"), "{err}");

    let output = stk(
        &["site", "get", "example.com", "--endpoint", &endpoint],
        &[("STATIKO_TOKEN", TOKEN), ("STATIKO_INSECURE", "true")],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).starts_with("warning: --insecure"));
    assert!(stdout(&output).starts_with("domain "));

    let output = stk(
        &["site", "get", "example.com", "--endpoint", &endpoint],
        &[("STATIKO_TOKEN", TOKEN), ("STATIKO_INSECURE", "false")],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
}
