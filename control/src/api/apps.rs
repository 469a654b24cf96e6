//! `statiko.v1.AppService`: streamed, bounded, verified uploads into the content-addressed
//! bundle repository.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use statiko_common::archive::{self, ArchiveLimits};
use statiko_common::crypto::{self, Digest, Sha256Hasher};
use statiko_common::ids;
use statiko_common::model::{self, AppRecord, BundleFormat, now_ms};
use statiko_common::redirects;
use statiko_common::store::{Compare, TxnOp};
use statiko_proto::v1 as pb;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::convert::{app_to_proto, format_from_proto};
use crate::error::{ControlError, Result, invalid};
use crate::state::{MAX_ATTEMPTS, sites_using};

/// A fully received upload, spooled to a temporary file.
struct Spooled {
    file: tempfile::TempPath,
    size: u64,
    digest: Digest,
    head: Vec<u8>,
}

/// An upload stream read under `limits.uploadIdleTimeout` (per message) and
/// `limits.uploadTimeout` (in all, from its first message).
struct Upload {
    stream: Streaming<pb::UploadAppRequest>,
    deadline: Instant,
    idle: Duration,
    total: Duration,
}

impl Upload {
    fn new(stream: Streaming<pb::UploadAppRequest>, idle: Duration, total: Duration) -> Self {
        Self {
            stream,
            deadline: Instant::now() + total,
            idle,
            total,
        }
    }

    /// The next message, or `None` at the end of the stream.
    async fn next(&mut self) -> Result<Option<pb::UploadAppRequest>> {
        let idle_end = Instant::now() + self.idle;
        let until = idle_end.min(self.deadline);
        match tokio::time::timeout_at(until, self.stream.next()).await {
            Ok(Some(Ok(message))) => Ok(Some(message)),
            Ok(Some(Err(status))) => Err(invalid!("upload interrupted: {}", status.message())),
            Ok(None) => Ok(None),
            Err(_) if until == self.deadline => Err(ControlError::TimedOut(format!(
                "upload took longer than limits.uploadTimeout ({} ms)",
                self.total.as_millis()
            ))),
            Err(_) => Err(ControlError::TimedOut(format!(
                "upload stalled: nothing received for limits.uploadIdleTimeout ({} ms)",
                self.idle.as_millis()
            ))),
        }
    }
}

/// Creates `dir` and its missing parents, each owner-only (0700).
async fn private_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
}

impl Api {
    /// Receives the archive bytes into a temporary file, hashing as it goes, and refuses it as
    /// soon as it passes `limits.maxBundleSize`.
    async fn spool(&self, stream: &mut Upload) -> Result<Spooled> {
        let limit = self.ctx.limits.max_bundle_size;
        private_dir(&self.ctx.upload_dir)
            .await
            .map_err(|err| ControlError::Internal(anyhow::anyhow!("create upload dir: {err}")))?;
        let temp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&self.ctx.upload_dir)
            .map_err(|err| ControlError::Internal(anyhow::anyhow!("create upload file: {err}")))?
            .into_temp_path();
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(|err| ControlError::Internal(anyhow::anyhow!("open upload file: {err}")))?;
        let mut hasher = Sha256Hasher::new();
        let mut size: u64 = 0;
        let mut head = Vec::with_capacity(8);
        while let Some(message) = stream.next().await? {
            let chunk = match message.data {
                Some(pb::upload_app_request::Data::Chunk(chunk)) => chunk,
                Some(pb::upload_app_request::Data::Metadata(_)) => {
                    return Err(invalid!(
                        "metadata: sent twice; only the first message carries metadata"
                    ));
                }
                None => continue,
            };
            size += chunk.len() as u64;
            if size > limit {
                return Err(invalid!(
                    "bundle is larger than limits.maxBundleSize ({limit} bytes)"
                ));
            }
            if head.len() < 8 {
                head.extend(chunk.iter().take(8 - head.len()));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|err| {
                ControlError::Internal(anyhow::anyhow!("write upload file: {err}"))
            })?;
        }
        file.sync_all()
            .await
            .map_err(|err| ControlError::Internal(anyhow::anyhow!("sync upload file: {err}")))?;
        Ok(Spooled {
            file: temp,
            size,
            digest: Digest::from(hasher.finish()),
            head,
        })
    }

    async fn upload_app(&self, stream: Streaming<pb::UploadAppRequest>) -> Result<pb::App> {
        let state = &self.ctx.state;
        let limits = &self.ctx.limits;
        let mut stream = Upload::new(stream, limits.upload_idle_timeout, limits.upload_timeout);
        let first = stream
            .next()
            .await?
            .ok_or_else(|| invalid!("empty upload: the first message must carry metadata"))?;
        let Some(pb::upload_app_request::Data::Metadata(meta)) = first.data else {
            return Err(invalid!("metadata: the first message must carry metadata"));
        };
        let name = ids::name("metadata.name", &meta.name)?;
        let version = ids::version("metadata.version", &meta.version)?;
        let declared_format = format_from_proto(meta.format)?;
        let declared_digest = if meta.digest.is_empty() {
            None
        } else {
            Some(
                meta.digest
                    .parse::<Digest>()
                    .map_err(|err| invalid!("metadata.digest: {err}"))?,
            )
        };
        let app_key = state.keys.app(&name, &version);
        if state.get_app(&name, &version).await?.is_some() {
            return Err(ControlError::Exists(format!(
                "app {name}@{version} already exists; versions are immutable"
            )));
        }
        if meta.signature.is_empty() && self.ctx.codesign_required {
            return Err(ControlError::Refused(
                "unsigned bundle refused: codesign.required is on".into(),
            ));
        }

        let spooled = self.spool(&mut stream).await?;
        if spooled.size == 0 {
            return Err(invalid!("bundle is empty"));
        }
        let format = BundleFormat::sniff(&spooled.head)
            .ok_or_else(|| invalid!("bundle is not a .tar.gz, .tar.zst or .zip archive"))?;
        if let Some(declared) = declared_format
            && declared != format
        {
            return Err(invalid!(
                "metadata.format: declared {} but the archive is {}",
                declared.extension(),
                format.extension()
            ));
        }
        // Refuse unsafe or oversized archives, and anything staging would refuse (a bad
        // manifest), now, with a clear reason, rather than at staging on every edge (which
        // checks again: the repository is not trusted).
        let limits = ArchiveLimits::from_config(&self.ctx.limits);
        let path = spooled.file.to_path_buf();
        let (_, routing_files) = tokio::task::spawn_blocking(move || {
            archive::check_upload(&path, format, &limits, &redirects::ROUTING_FILES)
        })
        .await
        .map_err(|err| ControlError::Internal(anyhow::anyhow!("inspect bundle: {err}")))?
        .map_err(|err| invalid!("bundle refused: {err}"))?;
        // `_redirects` and `_headers` are checked as staging will (their line in the message).
        redirects::check_routing_files(&routing_files)
            .map_err(|err| invalid!("bundle refused: {err}"))?;
        let digest = spooled.digest;
        if let Some(declared) = declared_digest
            && declared != digest
        {
            return Err(invalid!(
                "metadata.digest: declared {declared} but received {digest}; the upload was corrupted"
            ));
        }
        let signed = if meta.signature.is_empty() {
            false
        } else if let Some(key) = &self.ctx.codesign_key {
            crypto::verify_bundle_signature(key, spooled.digest.bytes(), &meta.signature)
                .map_err(|err| invalid!("metadata.signature: {err}"))?;
            true
        } else {
            // Without a configured key the signature is kept for edges that verify, but not checked here.
            false
        };

        let digest_hex = spooled.digest.hex();
        self.ctx
            .repo
            .put_file(&digest_hex, &spooled.file)
            .await
            .map_err(ControlError::Repo)?;

        let record = AppRecord {
            name: name.clone(),
            version: version.clone(),
            digest,
            size: spooled.size,
            format,
            signature: (!meta.signature.is_empty())
                .then(|| crypto::encode_signature(&meta.signature)),
            created_at: now_ms(),
        };
        let result = state
            .txn(
                vec![Compare::absent(app_key.clone())],
                vec![TxnOp::put(app_key, model::encode(&record))],
            )
            .await?;
        if !result.succeeded {
            return Err(ControlError::Exists(format!(
                "app {name}@{version} already exists; versions are immutable"
            )));
        }
        // A concurrent delete of another version with the same content may have removed the
        // object between our put and the record; put it back so the record never dangles.
        if !self.ctx.repo.exists(&digest_hex).await.unwrap_or(true) {
            self.ctx
                .repo
                .put_file(&digest_hex, &spooled.file)
                .await
                .map_err(ControlError::Repo)?;
        }
        tracing::info!(app = %record.app_ref(), digest = %record.digest, size = record.size, "app uploaded");
        Ok(app_to_proto(&record, Vec::new(), signed))
    }

    async fn delete_app(&self, req: pb::DeleteAppRequest) -> Result<()> {
        let state = &self.ctx.state;
        let name = ids::name("name", &req.name)?;
        let version = ids::version("version", &req.version)?;
        let app_key = state.keys.app(&name, &version);
        for _ in 0..MAX_ATTEMPTS {
            let app = state
                .get_app(&name, &version)
                .await?
                .ok_or_else(|| ControlError::NotFound(format!("app {name}@{version} not found")))?;
            let (revision, sites) = state.list_sites().await?;
            let app_ref = app.record.app_ref();
            let users = sites_using(&sites, |s| s.app.as_ref() == Some(&app_ref));
            if !users.is_empty() {
                return Err(ControlError::Refused(format!(
                    "app {app_ref} is in use by site(s) {}; deploy another version first",
                    users.join(", ")
                )));
            }
            // A preview serves its version until it expires: refused as a site's is, and a
            // preview made meanwhile makes the delete lose (it changes `previews/`).
            let (previews_revision, previews) = state.list_previews().await?;
            let now = now_ms();
            let previews: Vec<String> = previews
                .iter()
                .filter(|p| p.app == app_ref && !p.preview_expired(now))
                .map(|p| format!("{} of {}", p.id, p.site))
                .collect();
            if !previews.is_empty() {
                return Err(ControlError::Refused(format!(
                    "app {app_ref} is in use by preview(s) {}; delete them (`stk preview delete`) or let them expire first",
                    previews.join(", ")
                )));
            }
            let compares = vec![
                Compare::unchanged_since(app_key.clone(), app.mod_revision),
                Compare::prefix_unchanged_since(&state.keys.sites(), revision),
                Compare::prefix_unchanged_since(&state.keys.previews(), previews_revision),
            ];
            let result = state
                .txn(compares, vec![TxnOp::delete(app_key.clone())])
                .await?;
            if !result.succeeded {
                continue;
            }
            tracing::info!(app = %app_ref, revision = result.revision, "app deleted");
            self.collect_bundle(app.record.digest).await;
            return Ok(());
        }
        Err(ControlError::Conflict(
            "app deletion kept losing against concurrent changes; retry".into(),
        ))
    }

    /// Removes a bundle object once no app version refers to its digest any more.
    async fn collect_bundle(&self, digest: Digest) {
        let still_used = match self.ctx.state.list_apps(None).await {
            Ok((_, apps)) => apps.iter().any(|a| a.record.digest == digest),
            Err(_) => true,
        };
        if still_used {
            return;
        }
        if let Err(err) = self.ctx.repo.delete(&digest.hex()).await {
            tracing::warn!(%digest, error = %err, "could not delete unused bundle; it stays in the repository");
        }
    }
}

#[tonic::async_trait]
impl pb::app_service_server::AppService for Api {
    async fn upload_app(
        &self,
        request: Request<Streaming<pb::UploadAppRequest>>,
    ) -> Result<Response<pb::UploadAppResponse>, Status> {
        let app = Api::upload_app(self, request.into_inner()).await?;
        Ok(Response::new(pb::UploadAppResponse { app: Some(app) }))
    }

    async fn list_apps(
        &self,
        request: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        let filter = &request.get_ref().name;
        let name = if filter.is_empty() {
            None
        } else {
            Some(ids::name("name", filter).map_err(ControlError::from)?)
        };
        let state = &self.ctx.state;
        let (_, apps) = state.list_apps(name.as_deref()).await?;
        let (_, mut sites) = state.list_sites().await?;
        // A deployer sees only the sites in its scope among an app's users.
        let caller = request.extensions().get::<crate::auth::Caller>();
        sites.retain(|s| crate::auth::site_visible(caller, s.record.all_domains()));
        let apps = apps
            .iter()
            .map(|app| {
                let app_ref = app.record.app_ref();
                let users = sites_using(&sites, |s| s.app.as_ref() == Some(&app_ref));
                let signed = app.record.signature.is_some() && self.ctx.codesign_key.is_some();
                app_to_proto(&app.record, users, signed)
            })
            .collect();
        Ok(Response::new(pb::ListAppsResponse { apps }))
    }

    async fn delete_app(
        &self,
        request: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppResponse>, Status> {
        Api::delete_app(self, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteAppResponse {}))
    }
}
