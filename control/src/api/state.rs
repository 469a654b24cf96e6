//! `statiko.v1.StateService`: the whole desired state as one JSON document, for backups and for
//! moving a file-store node to etcd. Secrets stay sealed; the domain index is rebuilt on import,
//! which `import.rs` writes in batches behind a marker. The streaming calls carry the document
//! in chunks, so its size is not bounded by gRPC's message limit.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use statiko_common::ids;
use statiko_common::keys::Key;
use statiko_common::model::{
    self, AppRecord, CertificateRecord, DomainRecord, SiteRecord, TlsChoice, now_ms,
};
use statiko_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use super::sites::MAX_ALIASES;
use crate::error::{ControlError, Result, invalid};
use crate::import::{ImportSummary, replace_desired_state};

/// Identifies the document kind.
const FORMAT: &str = "statiko-state";
const VERSION: u32 = 1;

/// The exported state document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StateDocument {
    format: String,
    version: u32,
    /// Store revision the export was read at.
    #[serde(default)]
    revision: i64,
    #[serde(default)]
    exported_at: i64,
    /// Identifier of the key that sealed the secrets (never the key itself).
    #[serde(default)]
    secrets_key_id: Option<String>,
    #[serde(default)]
    sites: Vec<SiteRecord>,
    #[serde(default)]
    apps: Vec<AppRecord>,
    #[serde(default)]
    certificates: Vec<CertificateRecord>,
}

/// Size of one chunk of a streamed export.
const CHUNK_BYTES: usize = 1 << 20;

/// The largest document a streamed import accepts (it is held in memory while it is checked).
const MAX_DOCUMENT_BYTES: usize = 1 << 30;

impl Api {
    async fn export_state(&self) -> Result<pb::ExportStateResponse> {
        let state = &self.ctx.state;
        // One snapshot of the whole root, so every record comes from the same revision.
        let snapshot = state.store.snapshot(state.keys.root()).await?;
        let mut document = StateDocument {
            format: FORMAT.into(),
            version: VERSION,
            revision: snapshot.revision,
            exported_at: now_ms(),
            secrets_key_id: self.ctx.secrets.as_ref().map(|s| s.key_id().to_owned()),
            sites: Vec::new(),
            apps: Vec::new(),
            certificates: Vec::new(),
        };
        let corrupt = |key: &str, err: serde_json::Error| {
            ControlError::Internal(anyhow::anyhow!("corrupt record at {key}: {err}"))
        };
        for kv in &snapshot.kvs {
            if kv.key == state.keys.meta_import() {
                return Err(ControlError::ImportInProgress {
                    retry: "export when it has finished",
                });
            }
            match state.keys.parse(&kv.key) {
                Some(Key::Site(_)) => document
                    .sites
                    .push(model::decode(&kv.value).map_err(|e| corrupt(&kv.key, e))?),
                Some(Key::App { .. }) => document
                    .apps
                    .push(model::decode(&kv.value).map_err(|e| corrupt(&kv.key, e))?),
                Some(Key::Certificate(_)) => document
                    .certificates
                    .push(model::decode(&kv.value).map_err(|e| corrupt(&kv.key, e))?),
                _ => {}
            }
        }
        let bytes = serde_json::to_vec_pretty(&document)
            .map_err(|err| ControlError::Internal(err.into()))?;
        Ok(pb::ExportStateResponse {
            document: bytes,
            revision: snapshot.revision,
        })
    }

    /// Checks a document completely before anything is written.
    async fn validate_document(&self, document: &StateDocument) -> Result<()> {
        if document.format != FORMAT {
            return Err(invalid!(
                "document.format: expected {FORMAT:?}, got {:?}",
                document.format
            ));
        }
        if document.version != VERSION {
            return Err(invalid!(
                "document.version: unsupported version {}",
                document.version
            ));
        }
        let mut apps = HashSet::new();
        for (i, app) in document.apps.iter().enumerate() {
            ids::name(&format!("apps[{i}].name"), &app.name)?;
            ids::version(&format!("apps[{i}].version"), &app.version)?;
            let digest = app.digest;
            if !apps.insert(app.app_ref()) {
                return Err(invalid!("apps[{i}]: {} is listed twice", app.app_ref()));
            }
            let present = self
                .ctx
                .repo
                .exists(&digest.hex())
                .await
                .map_err(ControlError::Repo)?;
            if !present {
                return Err(ControlError::Refused(format!(
                    "apps[{i}]: bundle {} of {} is not in this node's bundle repository",
                    app.digest,
                    app.app_ref()
                )));
            }
        }
        let mut certificates = HashSet::new();
        for (i, cert) in document.certificates.iter().enumerate() {
            ids::name(&format!("certificates[{i}].name"), &cert.name)?;
            if !certificates.insert(cert.name.as_str()) {
                return Err(invalid!(
                    "certificates[{i}]: {:?} is listed twice",
                    cert.name
                ));
            }
            let Some(secrets) = &self.ctx.secrets else {
                return Err(ControlError::Refused(
                    "the document holds certificates but secretsEncryptionKey is not configured"
                        .into(),
                ));
            };
            secrets.open(&cert.key).map_err(|err| {
                invalid!("certificates[{i}].key: cannot be opened with this cluster's key: {err}")
            })?;
        }
        let mut domains = HashSet::new();
        for (i, site) in document.sites.iter().enumerate() {
            let primary = ids::domain(&format!("sites[{i}].domain"), &site.domain)?;
            if primary != site.domain {
                return Err(invalid!(
                    "sites[{i}].domain: {:?} is not in normal form",
                    site.domain
                ));
            }
            if site.aliases.len() > MAX_ALIASES {
                return Err(invalid!(
                    "sites[{i}].aliases: {} aliases, at most {MAX_ALIASES}",
                    site.aliases.len()
                ));
            }
            for (j, alias) in site.aliases.iter().enumerate() {
                if ids::domain(&format!("sites[{i}].aliases[{j}]"), alias)? != *alias {
                    return Err(invalid!(
                        "sites[{i}].aliases[{j}]: {alias:?} is not in normal form"
                    ));
                }
            }
            for domain in site.all_domains() {
                if !domains.insert(domain) {
                    return Err(ControlError::Exists(format!(
                        "sites[{i}]: domain {domain:?} belongs to more than one site"
                    )));
                }
            }
            if let Some(app) = &site.app
                && !apps.contains(app)
            {
                return Err(invalid!(
                    "sites[{i}].app: {app} is not among the document's apps"
                ));
            }
            if let TlsChoice::Imported { certificate } = &site.tls
                && !certificates.contains(certificate.as_str())
            {
                return Err(invalid!(
                    "sites[{i}].tls.certificate: {certificate:?} is not among the document's certificates"
                ));
            }
        }
        Ok(())
    }

    async fn import_state(&self, document: &[u8]) -> Result<pb::ImportStateResponse> {
        let document: StateDocument = serde_json::from_slice(document)
            .map_err(|err| invalid!("document: not a state document: {err}"))?;
        self.validate_document(&document).await?;
        let keys = &self.ctx.state.keys;
        let mut records = BTreeMap::new();
        for site in &document.sites {
            records.insert(keys.site(&site.domain), model::encode(site));
            let owner = model::encode(&DomainRecord {
                site: site.domain.clone(),
            });
            for domain in site.all_domains() {
                records.insert(keys.domain(domain), owner.clone());
            }
        }
        for app in &document.apps {
            records.insert(keys.app(&app.name, &app.version), model::encode(app));
        }
        for cert in &document.certificates {
            records.insert(keys.certificate(&cert.name), model::encode(cert));
        }
        let summary = ImportSummary {
            sites: document.sites.len(),
            apps: document.apps.len(),
            certificates: document.certificates.len(),
        };
        let revision = replace_desired_state(&self.ctx.state, records, &summary).await?;
        tracing::info!(
            revision,
            sites = summary.sites,
            apps = summary.apps,
            certificates = summary.certificates,
            "state imported"
        );
        Ok(pb::ImportStateResponse {
            revision,
            sites: summary.sites as u32,
            apps: summary.apps as u32,
            certificates: summary.certificates as u32,
        })
    }

    /// Receives a streamed document whole (bounded by [`MAX_DOCUMENT_BYTES`]).
    async fn receive_document(
        stream: &mut Streaming<pb::StreamImportStateRequest>,
    ) -> Result<Vec<u8>> {
        let mut document = Vec::new();
        while let Some(message) = stream
            .message()
            .await
            .map_err(|status| invalid!("document: the stream broke: {}", status.message()))?
        {
            if document.len() + message.chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(invalid!("document: larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            document.extend_from_slice(&message.chunk);
        }
        Ok(document)
    }
}

type ExportChunks = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::StreamExportStateResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::state_service_server::StateService for Api {
    async fn export_state(
        &self,
        _request: Request<pb::ExportStateRequest>,
    ) -> Result<Response<pb::ExportStateResponse>, Status> {
        Ok(Response::new(Api::export_state(self).await?))
    }

    async fn import_state(
        &self,
        request: Request<pb::ImportStateRequest>,
    ) -> Result<Response<pb::ImportStateResponse>, Status> {
        Ok(Response::new(
            Api::import_state(self, &request.into_inner().document).await?,
        ))
    }

    type StreamExportStateStream = ExportChunks;

    async fn stream_export_state(
        &self,
        _request: Request<pb::StreamExportStateRequest>,
    ) -> Result<Response<ExportChunks>, Status> {
        let export = Api::export_state(self).await?;
        let revision = export.revision;
        let chunks: Vec<_> = export
            .document
            .chunks(CHUNK_BYTES)
            .map(|chunk| {
                Ok(pb::StreamExportStateResponse {
                    chunk: chunk.to_vec(),
                    revision,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn stream_import_state(
        &self,
        request: Request<Streaming<pb::StreamImportStateRequest>>,
    ) -> Result<Response<pb::StreamImportStateResponse>, Status> {
        let document = Api::receive_document(&mut request.into_inner()).await?;
        let imported = Api::import_state(self, &document).await?;
        Ok(Response::new(pb::StreamImportStateResponse {
            revision: imported.revision,
            sites: imported.sites,
            apps: imported.apps,
            certificates: imported.certificates,
        }))
    }
}
