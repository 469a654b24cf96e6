//! One function per `stk` command: builds the request, calls the API, prints the result as a
//! table or as JSON (the response message, snake_case field names).

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::HumanBytes;
use serde_json::{Value, json};

use statiko_proto::v1::{
    AliasList, CreateSiteRequest, DeleteAppRequest, DeleteCertificateRequest, DeleteSiteRequest,
    ExportStateRequest, GetSiteRequest, ImportCertificateRequest, ImportStateRequest,
    ImportStateResponse, ListAppsRequest, ListCertificatesRequest, ListNodesRequest,
    ListSitesRequest, Site, StreamExportStateRequest, StreamImportStateRequest, TlsConfig, TlsType,
    UpdateSiteRequest,
};

use crate::cli::{
    AppCommand, CertCommand, Cli, ClusterCommand, Command, OutputFormat, SiteCommand, StateCommand,
    TlsArg,
};
use crate::connect::Api;
use crate::output::{self, Table};
use crate::upload::{self, UploadOptions};
use crate::{usage_error, warn};

/// Prints results in the chosen format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printer {
    pub(crate) format: OutputFormat,
}

/// Runs the parsed command.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    let printer = Printer {
        format: global.output,
    };
    if let Command::Version = command {
        return printer.print(&json!({ "version": env!("CARGO_PKG_VERSION") }), || {
            format!("stk {}\n", env!("CARGO_PKG_VERSION"))
        });
    }

    // Read local input before connecting, so that a bad file fails without a round trip.
    let local = match &command {
        Command::State(StateCommand::Set { file }) => {
            LocalInput::Document(read_document(file.clone()).await?)
        }
        Command::App(AppCommand::Upload {
            path,
            name,
            version,
            sign,
        }) => {
            let show_progress =
                printer.format == OutputFormat::Table && std::io::stderr().is_terminal();
            let options = UploadOptions {
                path: path.clone(),
                name: name.clone(),
                version: version.clone(),
                sign: sign.clone(),
                show_progress,
            };
            LocalInput::Upload(Box::new(upload::prepare(options).await?))
        }
        _ => LocalInput::None,
    };

    if global.insecure && global.endpoint.starts_with("https://") {
        warn("--insecure: the server certificate is not verified");
        if global.ca.is_some() {
            warn("--ca is ignored with --insecure");
        }
    }
    let api = Api::connect(&global).await?;

    match (command, local) {
        (Command::App(AppCommand::Upload { .. }), LocalInput::Upload(prepared)) => {
            let app = upload::upload(&api, *prepared).await?;
            printer.print(&json!({ "app": output::app_json(&app) }), || {
                output::app_details(&app)
            })
        }
        (Command::State(StateCommand::Set { .. }), LocalInput::Document(document)) => {
            state_set(&api, printer, document).await
        }
        (Command::Site(command), _) => site(&api, printer, command).await,
        (Command::App(command), _) => app(&api, printer, command).await,
        (Command::Deploy(args), _) => crate::deploy::run(&api, printer, args).await,
        (Command::Preview(command), _) => crate::preview::run(&api, printer, command).await,
        (Command::Cert(command), _) => cert(&api, printer, command).await,
        (Command::Cluster(ClusterCommand::Status), _) => cluster_status(&api, printer).await,
        (Command::State(StateCommand::Get { out }), _) => state_get(&api, printer, out).await,
        (Command::Token(command), _) => crate::token::run(&api, printer, command).await,
        (Command::Version | Command::State(StateCommand::Set { .. }), _) => Ok(()),
    }
}

/// Input read from local files before connecting.
#[derive(Debug)]
enum LocalInput {
    None,
    Document(Vec<u8>),
    Upload(Box<upload::PreparedUpload>),
}

async fn site(api: &Api, printer: Printer, command: SiteCommand) -> anyhow::Result<()> {
    let timeout = api.timeout();
    let mut client = api.sites();
    match command {
        SiteCommand::Create {
            domain,
            aliases,
            tls,
            skew_protection,
        } => {
            let request = CreateSiteRequest {
                domain,
                aliases,
                tls: tls.as_ref().map(tls_config),
                skew_protection: skew_protection.map(output::duration_to_proto),
            };
            let response = api
                .unary(timeout, client.create_site(api.request(request)))
                .await?;
            printer.site(response.site.as_ref())
        }
        SiteCommand::List => {
            let response = api
                .unary(timeout, client.list_sites(api.request(ListSitesRequest {})))
                .await?;
            printer.print(
                &json!({ "sites": response.sites.iter().map(output::site_json).collect::<Vec<_>>() }),
                || {
                    let mut table =
                        Table::new(&["domain", "aliases", "tls", "app", "revision", "updated"]);
                    for site in &response.sites {
                        table.row([
                            site.domain.clone(),
                            output::list(&site.aliases),
                            output::tls(site.tls.as_ref()),
                            output::app_ref(site.app.as_ref()),
                            site.revision.to_string(),
                            output::timestamp(site.updated_at.as_ref()),
                        ]);
                    }
                    table.render()
                },
            )
        }
        SiteCommand::Get { domain } => {
            let response = api
                .unary(
                    timeout,
                    client.get_site(api.request(GetSiteRequest { domain })),
                )
                .await?;
            printer.site(response.site.as_ref())
        }
        SiteCommand::Update {
            domain,
            aliases,
            add_aliases,
            remove_aliases,
            clear_aliases,
            tls,
            skew_protection,
            expected_revision,
        } => {
            let aliases = if clear_aliases {
                Some(AliasList { aliases: vec![] })
            } else if aliases.is_empty() {
                None
            } else {
                Some(AliasList { aliases })
            };
            let request = UpdateSiteRequest {
                domain,
                aliases,
                add_aliases,
                remove_aliases,
                tls: tls.as_ref().map(tls_config),
                expected_revision: expected_revision.unwrap_or(0),
                skew_protection: skew_protection.map(output::duration_to_proto),
            };
            let response = api
                .unary(timeout, client.update_site(api.request(request)))
                .await?;
            printer.site(response.site.as_ref())
        }
        SiteCommand::Delete { domain } => {
            let request = DeleteSiteRequest {
                domain: domain.clone(),
            };
            api.unary(timeout, client.delete_site(api.request(request)))
                .await?;
            printer.print(&json!({}), || format!("deleted site {domain}\n"))
        }
    }
}

async fn app(api: &Api, printer: Printer, command: AppCommand) -> anyhow::Result<()> {
    let timeout = api.timeout();
    match command {
        AppCommand::Upload { .. } => {
            // Handled in `run`, which prepares the bundle before connecting.
            Ok(())
        }
        AppCommand::List { name } => {
            let request = ListAppsRequest {
                name: name.unwrap_or_default(),
            };
            let response = api
                .unary(timeout, api.apps().list_apps(api.request(request)))
                .await?;
            printer.print(
                &json!({ "apps": response.apps.iter().map(output::app_json).collect::<Vec<_>>() }),
                || {
                    let mut table = Table::new(&[
                        "name", "version", "digest", "size", "format", "signed", "created",
                        "used by",
                    ]);
                    for app in &response.apps {
                        table.row([
                            app.name.clone(),
                            app.version.clone(),
                            output::short_digest(&app.digest),
                            HumanBytes(app.size).to_string(),
                            output::bundle_format(app.format()).to_owned(),
                            if app.signed { "yes" } else { "no" }.to_owned(),
                            output::timestamp(app.created_at.as_ref()),
                            output::list(&app.used_by),
                        ]);
                    }
                    table.render()
                },
            )
        }
        AppCommand::Delete { app } => {
            let request = DeleteAppRequest {
                name: app.name.clone(),
                version: app.version.clone(),
            };
            api.unary(timeout, api.apps().delete_app(api.request(request)))
                .await?;
            printer.print(&json!({}), || format!("deleted app {app}\n"))
        }
    }
}

async fn cert(api: &Api, printer: Printer, command: CertCommand) -> anyhow::Result<()> {
    let timeout = api.timeout();
    let mut client = api.certificates();
    match command {
        CertCommand::Import {
            name,
            cert,
            key,
            force,
            replace,
        } => {
            let certificate_pem = read_text(&cert).await?;
            let key_pem = read_text(&key).await?;
            let request = ImportCertificateRequest {
                name,
                certificate_pem,
                key_pem,
                force,
                replace,
            };
            let response = api
                .unary(timeout, client.import_certificate(api.request(request)))
                .await?;
            let cert = response
                .certificate
                .context("the server returned no certificate in its response")?;
            printer.print(
                &json!({ "certificate": output::certificate_json(&cert) }),
                || output::certificate_details(&cert),
            )
        }
        CertCommand::List => {
            let response = api
                .unary(
                    timeout,
                    client.list_certificates(api.request(ListCertificatesRequest {})),
                )
                .await?;
            printer.print(
                &json!({
                    "certificates": response.certificates.iter()
                        .map(output::certificate_json).collect::<Vec<_>>()
                }),
                || {
                    let mut table =
                        Table::new(&["name", "type", "domains", "not after", "used by"]);
                    for cert in &response.certificates {
                        table.row([
                            cert.name.clone(),
                            output::certificate_type(cert.r#type()).to_owned(),
                            output::list(&cert.domains),
                            output::timestamp(cert.not_after.as_ref()),
                            output::list(&cert.used_by),
                        ]);
                    }
                    table.render()
                },
            )
        }
        CertCommand::Delete { name } => {
            let request = DeleteCertificateRequest { name: name.clone() };
            api.unary(timeout, client.delete_certificate(api.request(request)))
                .await?;
            printer.print(&json!({}), || format!("deleted certificate {name}\n"))
        }
    }
}

async fn cluster_status(api: &Api, printer: Printer) -> anyhow::Result<()> {
    let mut response = api
        .unary(
            api.timeout(),
            api.cluster().list_nodes(api.request(ListNodesRequest {})),
        )
        .await?;
    response.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let store_revision = response.revision;
    printer.print(
        &json!({
            "nodes": response.nodes.iter().map(output::node_json).collect::<Vec<_>>(),
            "revision": store_revision,
        }),
        || {
            let mut text = format!(
                "desired-state revision {store_revision}, {} live edge(s)\n\n",
                response.nodes.len()
            );
            let mut nodes =
                Table::new(&["name", "leader", "version", "applied", "behind", "updated"]);
            let mut sites = Table::new(&["node", "domain", "app", "health", "retained", "error"]);
            let mut certs = Table::new(&["node", "certificate", "expires"]);
            let (mut site_rows, mut cert_rows) = (0, 0);
            for node in &response.nodes {
                let leader = if node.leader {
                    "yes"
                } else if node.disallow_leadership {
                    "never"
                } else {
                    "no"
                };
                nodes.row([
                    node.name.clone(),
                    leader.to_owned(),
                    output::or_dash(&node.version),
                    node.applied_revision.to_string(),
                    (store_revision - node.applied_revision).max(0).to_string(),
                    output::timestamp(node.updated_at.as_ref()),
                ]);
                for site in &node.sites {
                    site_rows += 1;
                    sites.row([
                        node.name.clone(),
                        site.domain.clone(),
                        output::app_ref(site.app.as_ref()),
                        if site.healthy { "healthy" } else { "unhealthy" }.to_owned(),
                        output::list(&site.retained),
                        output::or_dash(&site.error),
                    ]);
                }
                for cert in &node.certificates {
                    cert_rows += 1;
                    certs.row([
                        node.name.clone(),
                        cert.name.clone(),
                        output::timestamp(cert.not_after.as_ref()),
                    ]);
                }
            }
            text.push_str(&nodes.render());
            if site_rows > 0 {
                text.push('\n');
                text.push_str(&sites.render());
            }
            if cert_rows > 0 {
                text.push('\n');
                text.push_str(&certs.render());
            }
            for node in &response.nodes {
                if node.sites_omitted > 0 || node.certificates_omitted > 0 {
                    text.push_str(&format!(
                        "\n{}: {} healthy site(s) and {} later-expiring certificate(s) not listed\n",
                        node.name, node.sites_omitted, node.certificates_omitted
                    ));
                }
            }
            text
        },
    )
}

/// Size of one chunk of a streamed import.
const STATE_CHUNK_BYTES: usize = 1 << 20;

/// Exports the document in chunks (its size is not bounded by one gRPC message); a control
/// without the streaming call gets the one-message call.
async fn export_document(api: &Api) -> anyhow::Result<(Vec<u8>, i64)> {
    let streamed = api
        .unary(
            api.timeout(),
            api.state()
                .stream_export_state(api.request(StreamExportStateRequest {})),
        )
        .await;
    let mut stream = match streamed {
        Ok(stream) => stream,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            let response = api
                .unary(
                    api.timeout(),
                    api.state().export_state(api.request(ExportStateRequest {})),
                )
                .await?;
            return Ok((response.document, response.revision));
        }
        Err(status) => return Err(status.into()),
    };
    let mut document = Vec::new();
    let mut revision = 0;
    while let Some(message) = stream.message().await? {
        document.extend_from_slice(&message.chunk);
        revision = message.revision;
    }
    Ok((document, revision))
}

async fn state_get(api: &Api, printer: Printer, out: Option<PathBuf>) -> anyhow::Result<()> {
    let (document, revision) = export_document(api).await?;
    match out {
        None => write_stdout(&document),
        Some(path) => {
            tokio::fs::write(&path, &document)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
            printer.print(
                &json!({ "revision": revision, "file": path.display().to_string() }),
                || {
                    format!(
                        "wrote the state at revision {} to {}\n",
                        revision,
                        path.display()
                    )
                },
            )
        }
    }
}

/// Imports the document in chunks; a control without the streaming call gets the one-message
/// call. Like uploads, no call timeout: a large import takes a while to write.
async fn import_document(api: &Api, document: Vec<u8>) -> anyhow::Result<ImportStateResponse> {
    let chunks: Vec<StreamImportStateRequest> = document
        .chunks(STATE_CHUNK_BYTES)
        .map(|chunk| StreamImportStateRequest {
            chunk: chunk.to_vec(),
        })
        .collect();
    match api
        .state()
        .stream_import_state(futures::stream::iter(chunks))
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            Ok(ImportStateResponse {
                revision: response.revision,
                sites: response.sites,
                apps: response.apps,
                certificates: response.certificates,
            })
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(api
            .state()
            .import_state(ImportStateRequest { document })
            .await?
            .into_inner()),
        Err(status) => Err(status.into()),
    }
}

async fn state_set(api: &Api, printer: Printer, document: Vec<u8>) -> anyhow::Result<()> {
    let response = import_document(api, document).await?;
    printer.print(
        &json!({
            "revision": response.revision,
            "sites": response.sites,
            "apps": response.apps,
            "certificates": response.certificates,
        }),
        || {
            format!(
                "imported {} site(s), {} app(s), {} certificate(s) at revision {}\n",
                response.sites, response.apps, response.certificates, response.revision
            )
        },
    )
}

/// Reads the state document from a file, or from stdin when it is not a terminal.
async fn read_document(file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    let document = match file {
        Some(path) => tokio::fs::read(&path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                return Err(usage_error(
                    "stk state set reads the document from stdin: redirect a file (< backup.json) or use -f FILE",
                ));
            }
            tokio::task::spawn_blocking(|| {
                let mut buffer = Vec::new();
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut buffer)
                    .map(|_| buffer)
            })
            .await
            .context("reading stdin failed")?
            .context("cannot read stdin")?
        }
    };
    if document.iter().all(u8::is_ascii_whitespace) {
        return Err(usage_error("the state document is empty"));
    }
    Ok(document)
}

async fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))
}

fn tls_config(arg: &TlsArg) -> TlsConfig {
    let (kind, certificate) = match arg {
        TlsArg::SelfSigned => (TlsType::SelfSigned, String::new()),
        TlsArg::Acme => (TlsType::Acme, String::new()),
        TlsArg::Imported(name) => (TlsType::Imported, name.clone()),
    };
    TlsConfig {
        r#type: kind as i32,
        certificate,
    }
}

/// Writes bytes to stdout; a closed pipe (e.g. `| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(err).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

impl Printer {
    /// Prints `value` as pretty JSON, or the text that `table` renders.
    pub(crate) fn print(
        &self,
        value: &Value,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Json => {
                let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
                text.push('\n');
                write_stdout(text.as_bytes())
            }
            OutputFormat::Table => write_stdout(table().as_bytes()),
        }
    }

    fn site(&self, site: Option<&Site>) -> anyhow::Result<()> {
        let site = site.context("the server returned no site in its response")?;
        self.print(&json!({ "site": output::site_json(site) }), || {
            output::site_details(site)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_configs() {
        assert_eq!(
            tls_config(&TlsArg::Imported("main".into())),
            TlsConfig {
                r#type: TlsType::Imported as i32,
                certificate: "main".into()
            }
        );
        assert_eq!(tls_config(&TlsArg::Acme).r#type, TlsType::Acme as i32);
        assert_eq!(
            tls_config(&TlsArg::SelfSigned).r#type,
            TlsType::SelfSigned as i32
        );
    }
}
