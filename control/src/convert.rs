//! Conversions between `statiko.v1` messages and the stored model. Proto types stop here.

use statiko_common::ids;
use statiko_common::model::{
    AppRecord, AppRef, BundleFormat, CertificateKind, CertificateRecord, DeployStrategy,
    DeploymentRecord, DeploymentState, NodeStatusRecord, SiteRecord, TlsChoice,
};
use statiko_common::model::{TokenRecord, TokenRole};
use statiko_proto::v1 as pb;

use crate::error::{Result, invalid};

/// Unix milliseconds to a protobuf timestamp.
pub(crate) fn timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    (ms != 0).then(|| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

pub(crate) fn token_role_from_proto(field: &str, value: i32) -> Result<TokenRole> {
    match pb::TokenRole::try_from(value) {
        Ok(pb::TokenRole::Admin) => Ok(TokenRole::Admin),
        Ok(pb::TokenRole::Readonly) => Ok(TokenRole::Readonly),
        Ok(pb::TokenRole::Deployer) => Ok(TokenRole::Deployer),
        Ok(pb::TokenRole::Unspecified) => {
            Err(invalid!("{field}: required: admin, readonly or deployer"))
        }
        Err(_) => Err(invalid!(
            "{field}: unknown role {value}; use admin, readonly or deployer"
        )),
    }
}

pub(crate) fn token_to_proto(token: &TokenRecord) -> pb::Token {
    pb::Token {
        name: token.name.clone(),
        role: match token.role {
            TokenRole::Admin => pb::TokenRole::Admin,
            TokenRole::Readonly => pb::TokenRole::Readonly,
            TokenRole::Deployer => pb::TokenRole::Deployer,
        } as i32,
        scope: token.scope.clone(),
        created_at: timestamp(token.created_at),
        expires_at: token.expires_at.and_then(timestamp),
        last_used_at: token.last_used_at.and_then(timestamp),
        created_by: token.created_by.clone(),
    }
}

pub(crate) fn tls_from_proto(field: &str, tls: Option<&pb::TlsConfig>) -> Result<TlsChoice> {
    let Some(tls) = tls else {
        return Ok(TlsChoice::SelfSigned);
    };
    let kind = pb::TlsType::try_from(tls.r#type)
        .map_err(|_| invalid!("{field}.type: unknown value {}", tls.r#type))?;
    let needs_no_cert = |choice: TlsChoice| {
        if tls.certificate.is_empty() {
            Ok(choice)
        } else {
            Err(invalid!(
                "{field}.certificate: only allowed with TLS_TYPE_IMPORTED"
            ))
        }
    };
    match kind {
        pb::TlsType::Unspecified | pb::TlsType::SelfSigned => needs_no_cert(TlsChoice::SelfSigned),
        pb::TlsType::Acme => needs_no_cert(TlsChoice::Acme),
        pb::TlsType::Imported => {
            if tls.certificate.is_empty() {
                return Err(invalid!(
                    "{field}.certificate: required with TLS_TYPE_IMPORTED"
                ));
            }
            Ok(TlsChoice::Imported {
                certificate: ids::name(&format!("{field}.certificate"), &tls.certificate)?,
            })
        }
    }
}

pub(crate) fn tls_to_proto(tls: &TlsChoice) -> pb::TlsConfig {
    match tls {
        TlsChoice::SelfSigned => pb::TlsConfig {
            r#type: pb::TlsType::SelfSigned as i32,
            certificate: String::new(),
        },
        TlsChoice::Acme => pb::TlsConfig {
            r#type: pb::TlsType::Acme as i32,
            certificate: String::new(),
        },
        TlsChoice::Imported { certificate } => pb::TlsConfig {
            r#type: pb::TlsType::Imported as i32,
            certificate: certificate.clone(),
        },
    }
}

pub(crate) fn app_ref_from_proto(field: &str, app: Option<&pb::AppRef>) -> Result<AppRef> {
    let app = app.ok_or_else(|| invalid!("{field}: required"))?;
    Ok(AppRef {
        name: ids::name(&format!("{field}.name"), &app.name)?,
        version: ids::version(&format!("{field}.version"), &app.version)?,
    })
}

pub(crate) fn app_ref_to_proto(app: &AppRef) -> pb::AppRef {
    pb::AppRef {
        name: app.name.clone(),
        version: app.version.clone(),
    }
}

pub(crate) fn site_to_proto(site: &SiteRecord, revision: i64) -> pb::Site {
    pb::Site {
        domain: site.domain.clone(),
        aliases: site.aliases.clone(),
        tls: Some(tls_to_proto(&site.tls)),
        app: site.app.as_ref().map(app_ref_to_proto),
        revision,
        created_at: timestamp(site.created_at),
        updated_at: timestamp(site.updated_at),
        deployed_at: site.deployed_at.and_then(timestamp),
        skew_protection: Some(duration_ms(site.skew_protection_ms())),
        deployment_id: site.deployment.clone().unwrap_or_default(),
    }
}

/// Longest skew protection window: retained deployments bound it in practice; this bounds a
/// typo (`8760h` for `876h`).
pub(crate) const MAX_SKEW_PROTECTION_MS: u64 = 90 * 24 * 60 * 60 * 1000;

/// A skew protection window from the API, in milliseconds (0: off); unset is `None`.
pub(crate) fn skew_protection_from_proto(
    field: &str,
    value: Option<&prost_types::Duration>,
) -> Result<Option<u64>> {
    let Some(d) = value else {
        return Ok(None);
    };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid!(
            "{field}: must not be negative (zero turns skew protection off)"
        ));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(invalid!("{field}: nanos must be below 1e9"));
    }
    let ms = (d.seconds as u64)
        .saturating_mul(1000)
        .saturating_add(d.nanos as u64 / 1_000_000);
    if ms > MAX_SKEW_PROTECTION_MS {
        return Err(invalid!(
            "{field}: at most 90 days ({}s), got {}s",
            MAX_SKEW_PROTECTION_MS / 1000,
            d.seconds
        ));
    }
    if ms == 0 && (d.seconds, d.nanos) != (0, 0) {
        return Err(invalid!(
            "{field}: under 1 ms; zero turns skew protection off"
        ));
    }
    Ok(Some(ms))
}

fn duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(crate) fn format_from_proto(value: i32) -> Result<Option<BundleFormat>> {
    match pb::BundleFormat::try_from(value) {
        Ok(pb::BundleFormat::Unspecified) => Ok(None),
        Ok(pb::BundleFormat::TarGz) => Ok(Some(BundleFormat::TarGz)),
        Ok(pb::BundleFormat::TarZst) => Ok(Some(BundleFormat::TarZst)),
        Ok(pb::BundleFormat::Zip) => Ok(Some(BundleFormat::Zip)),
        Err(_) => Err(invalid!("metadata.format: unknown value {value}")),
    }
}

pub(crate) fn format_to_proto(format: BundleFormat) -> pb::BundleFormat {
    match format {
        BundleFormat::TarGz => pb::BundleFormat::TarGz,
        BundleFormat::TarZst => pb::BundleFormat::TarZst,
        BundleFormat::Zip => pb::BundleFormat::Zip,
    }
}

pub(crate) fn app_to_proto(app: &AppRecord, used_by: Vec<String>, signed: bool) -> pb::App {
    pb::App {
        name: app.name.clone(),
        version: app.version.clone(),
        digest: app.digest.to_string(),
        size: app.size,
        format: format_to_proto(app.format) as i32,
        signed,
        created_at: timestamp(app.created_at),
        used_by,
    }
}

pub(crate) fn certificate_to_proto(
    cert: &CertificateRecord,
    used_by: Vec<String>,
) -> pb::Certificate {
    let kind = match cert.kind {
        CertificateKind::Imported => pb::CertificateType::Imported,
        CertificateKind::SelfSigned => pb::CertificateType::SelfSigned,
        CertificateKind::Acme => pb::CertificateType::Acme,
    };
    pb::Certificate {
        name: cert.name.clone(),
        r#type: kind as i32,
        domains: cert.domains.clone(),
        not_before: timestamp(cert.not_before),
        not_after: timestamp(cert.not_after),
        fingerprint: cert.fingerprint.clone(),
        used_by,
    }
}

pub(crate) fn node_to_proto(node: &NodeStatusRecord) -> pb::Node {
    pb::Node {
        name: node.name.clone(),
        leader: node.leader,
        version: node.version.clone(),
        applied_revision: node.applied_revision,
        updated_at: timestamp(node.updated_at),
        sites: node
            .sites
            .iter()
            .map(|s| pb::NodeSiteStatus {
                domain: s.domain.clone(),
                app: s.app.as_ref().map(app_ref_to_proto),
                healthy: s.healthy,
                error: s.error.clone().unwrap_or_default(),
                retained: s.retained.clone(),
            })
            .collect(),
        certificates: node
            .certificates
            .iter()
            .map(|c| pb::NodeCertificateStatus {
                name: c.name.clone(),
                not_after: timestamp(c.not_after),
            })
            .collect(),
        disallow_leadership: node.disallow_leadership,
        sites_omitted: node.sites_omitted,
        certificates_omitted: node.certificates_omitted,
    }
}

/// `None` for `DEPLOY_STRATEGY_UNSPECIFIED` (the server picks).
pub(crate) fn strategy_from_proto(value: i32) -> Result<Option<DeployStrategy>> {
    match pb::DeployStrategy::try_from(value) {
        Ok(pb::DeployStrategy::Unspecified) => Ok(None),
        Ok(pb::DeployStrategy::Atomic) => Ok(Some(DeployStrategy::Atomic)),
        Ok(pb::DeployStrategy::Immediate) => Ok(Some(DeployStrategy::Immediate)),
        Err(_) => Err(invalid!("strategy: unknown value {value}")),
    }
}

pub(crate) fn deployment_to_proto(d: &DeploymentRecord) -> pb::Deployment {
    let state = match d.state {
        DeploymentState::Staging => pb::DeploymentState::Staging,
        DeploymentState::Live => pb::DeploymentState::Live,
        DeploymentState::Superseded => pb::DeploymentState::Superseded,
        DeploymentState::Failed => pb::DeploymentState::Failed,
        DeploymentState::Preview => pb::DeploymentState::Preview,
    };
    let strategy = match d.strategy {
        DeployStrategy::Atomic => pb::DeployStrategy::Atomic,
        DeployStrategy::Immediate => pb::DeployStrategy::Immediate,
    };
    pb::Deployment {
        id: d.id.clone(),
        site: d.site.clone(),
        app: Some(app_ref_to_proto(&d.app)),
        author: d.author.clone(),
        state: state as i32,
        strategy: strategy as i32,
        reason: d.reason.clone().unwrap_or_default(),
        failed_nodes: d.failed_nodes.clone(),
        staged_nodes: d.staged_nodes.clone(),
        rollback_of: d.rollback_of.clone().unwrap_or_default(),
        created_at: timestamp(d.created_at),
        live_at: d.live_at.and_then(timestamp),
        superseded_at: d.superseded_at.and_then(timestamp),
        failed_at: d.failed_at.and_then(timestamp),
        preview: d.preview.as_ref().map(|p| pb::Preview {
            url: format!("https://{}", p.host),
            host: p.host.clone(),
            expires_at: timestamp(p.expires_at),
            password_protected: p.password_hash.is_some(),
            certificate: p.certificate.clone().unwrap_or_default(),
        }),
        promoted_from: d.promoted_from.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_choices() {
        assert_eq!(tls_from_proto("tls", None).unwrap(), TlsChoice::SelfSigned);
        let imported = pb::TlsConfig {
            r#type: pb::TlsType::Imported as i32,
            certificate: "wild".into(),
        };
        assert_eq!(
            tls_from_proto("tls", Some(&imported)).unwrap(),
            TlsChoice::Imported {
                certificate: "wild".into()
            }
        );
        let missing = pb::TlsConfig {
            r#type: pb::TlsType::Imported as i32,
            certificate: String::new(),
        };
        let err = tls_from_proto("tls", Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.certificate"), "{err}");
        let stray = pb::TlsConfig {
            r#type: pb::TlsType::Acme as i32,
            certificate: "x".into(),
        };
        assert!(tls_from_proto("tls", Some(&stray)).is_err());
        let unknown = pb::TlsConfig {
            r#type: 42,
            certificate: String::new(),
        };
        assert!(tls_from_proto("tls", Some(&unknown)).is_err());
        for choice in [
            TlsChoice::SelfSigned,
            TlsChoice::Acme,
            TlsChoice::Imported {
                certificate: "c".into(),
            },
        ] {
            assert_eq!(
                tls_from_proto("tls", Some(&tls_to_proto(&choice))).unwrap(),
                choice
            );
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), None);
        let ts = timestamp(1_500).unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_000));
    }
}
