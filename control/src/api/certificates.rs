//! `statiko.v1.CertificateService`: imported certificates, with the private key sealed
//! (AES-256-GCM under `secretsEncryptionKey`) before it reaches the store.

use statiko_common::crypto;
use statiko_common::ids;
use statiko_common::model::{self, CertificateKind, CertificateRecord, TlsChoice, now_ms};
use statiko_common::store::{Compare, TxnOp};
use statiko_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Api;
use crate::convert::certificate_to_proto;
use crate::error::{ControlError, Result, invalid};
use crate::state::{MAX_ATTEMPTS, sites_using};

/// An imported certificate must stay valid at least this long unless `force` is set.
const MIN_REMAINING_MS: i64 = 12 * 3600 * 1000;

fn uses_certificate(name: &str) -> impl Fn(&model::SiteRecord) -> bool + '_ {
    move |site| matches!(&site.tls, TlsChoice::Imported { certificate } if certificate == name)
}

impl Api {
    async fn import_certificate(
        &self,
        req: pb::ImportCertificateRequest,
    ) -> Result<pb::Certificate> {
        let state = &self.ctx.state;
        let name = ids::name("name", &req.name)?;
        let secrets = self.ctx.secrets.as_ref().ok_or_else(|| {
            ControlError::Refused(
                "secretsEncryptionKey is not configured; private keys cannot be stored".into(),
            )
        })?;
        let parsed = crypto::parse_certificate_and_key(&req.certificate_pem, &req.key_pem)
            .map_err(|err| invalid!("certificate_pem/key_pem: {err}"))?;
        let now = now_ms();
        if !req.force {
            if parsed.not_before > now {
                return Err(invalid!(
                    "certificate_pem: not valid yet (use force to import anyway)"
                ));
            }
            if parsed.not_after - now < MIN_REMAINING_MS {
                return Err(invalid!(
                    "certificate_pem: expires in less than 12 hours (use force to import anyway)"
                ));
            }
        }
        let record = CertificateRecord::new(
            name.clone(),
            CertificateKind::Imported,
            parsed,
            secrets.seal(req.key_pem.as_bytes()),
            None,
            now,
        );
        let key = state.keys.certificate(&name);
        for _ in 0..MAX_ATTEMPTS {
            let existing = state.get_certificate(&name).await?;
            let compare = match &existing {
                None => Compare::absent(key.clone()),
                Some(_) if !req.replace => {
                    return Err(ControlError::Exists(format!(
                        "certificate {name:?} already exists (use replace to rotate it)"
                    )));
                }
                Some(cert) if cert.record.kind != CertificateKind::Imported => {
                    return Err(ControlError::Refused(format!(
                        "certificate {name:?} is managed by the cluster and cannot be replaced"
                    )));
                }
                Some(cert) => Compare::unchanged_since(key.clone(), cert.mod_revision),
            };
            let result = state
                .txn(
                    vec![compare],
                    vec![TxnOp::put(key.clone(), model::encode(&record))],
                )
                .await?;
            if result.succeeded {
                tracing::info!(certificate = %name, fingerprint = %record.fingerprint, "certificate imported");
                return Ok(certificate_to_proto(&record, Vec::new()));
            }
        }
        Err(ControlError::Conflict(
            "certificate import kept losing against concurrent changes; retry".into(),
        ))
    }

    async fn delete_certificate(&self, req: pb::DeleteCertificateRequest) -> Result<()> {
        let state = &self.ctx.state;
        let name = ids::name("name", &req.name)?;
        let key = state.keys.certificate(&name);
        for _ in 0..MAX_ATTEMPTS {
            let cert = state
                .get_certificate(&name)
                .await?
                .ok_or_else(|| ControlError::NotFound(format!("certificate {name:?} not found")))?;
            if cert.record.kind != CertificateKind::Imported {
                return Err(ControlError::Refused(format!(
                    "certificate {name:?} is managed by the cluster and cannot be deleted"
                )));
            }
            let (revision, sites) = state.list_sites().await?;
            let users = sites_using(&sites, uses_certificate(&name));
            if !users.is_empty() {
                return Err(ControlError::Refused(format!(
                    "certificate {name:?} is in use by site(s) {}",
                    users.join(", ")
                )));
            }
            let compares = vec![
                Compare::unchanged_since(key.clone(), cert.mod_revision),
                Compare::prefix_unchanged_since(&state.keys.sites(), revision),
            ];
            if state
                .txn(compares, vec![TxnOp::delete(key.clone())])
                .await?
                .succeeded
            {
                tracing::info!(certificate = %name, "certificate deleted");
                return Ok(());
            }
        }
        Err(ControlError::Conflict(
            "certificate deletion kept losing against concurrent changes; retry".into(),
        ))
    }
}

#[tonic::async_trait]
impl pb::certificate_service_server::CertificateService for Api {
    async fn import_certificate(
        &self,
        request: Request<pb::ImportCertificateRequest>,
    ) -> Result<Response<pb::ImportCertificateResponse>, Status> {
        let certificate = Api::import_certificate(self, request.into_inner()).await?;
        Ok(Response::new(pb::ImportCertificateResponse {
            certificate: Some(certificate),
        }))
    }

    async fn list_certificates(
        &self,
        _request: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        let state = &self.ctx.state;
        let (_, certs) = state.list_certificates().await?;
        let (_, sites) = state.list_sites().await?;
        let certificates = certs
            .iter()
            .map(|c| {
                certificate_to_proto(
                    &c.record,
                    sites_using(&sites, uses_certificate(&c.record.name)),
                )
            })
            .collect();
        Ok(Response::new(pb::ListCertificatesResponse { certificates }))
    }

    async fn delete_certificate(
        &self,
        request: Request<pb::DeleteCertificateRequest>,
    ) -> Result<Response<pb::DeleteCertificateResponse>, Status> {
        Api::delete_certificate(self, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteCertificateResponse {}))
    }
}
