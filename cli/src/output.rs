//! Output helpers: a tiny aligned-table formatter, RFC 3339 timestamps, and JSON views of the
//! proto messages (snake_case field names as in the `.proto` files, enums by name, timestamps
//! as RFC 3339 strings, unset messages as `null`).

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{Value, json};

use statiko_proto::v1::{
    App, AppRef, BundleFormat, Certificate, CertificateType, DeployStrategy, Deployment,
    DeploymentState, Node, NodeCertificateStatus, NodeSiteStatus, Site, TlsConfig, TlsType,
};

/// Rows of cells printed as left-aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is the (upper-cased) header.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_uppercase()).collect()],
        }
    }

    /// A table without header, e.g. for `key  value` views of one object.
    pub(crate) fn headless() -> Self {
        Self::default()
    }

    pub(crate) fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Renders the table; every line ends with a newline, and the last column is not padded.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// Text for an optional value: the value, or `-` when empty.
pub(crate) fn or_dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_owned()
    } else {
        value.to_owned()
    }
}

/// Comma-separated list, or `-` when empty.
pub(crate) fn list(values: &[String]) -> String {
    or_dash(&values.join(","))
}

/// RFC 3339 with seconds precision in UTC, or `-` when unset.
pub(crate) fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    timestamp_string(ts).unwrap_or_else(|| "-".to_owned())
}

fn timestamp_string(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let time = SystemTime::try_from(*ts?).ok()?;
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

/// `name@version`, or `-` when unset.
pub(crate) fn app_ref(app: Option<&AppRef>) -> String {
    match app {
        Some(app) if !app.name.is_empty() => format!("{}@{}", app.name, app.version),
        _ => "-".to_owned(),
    }
}

/// The `--tls` spelling of a site's TLS choice; unset means self-signed, as on the server.
pub(crate) fn tls(tls: Option<&TlsConfig>) -> String {
    let Some(tls) = tls else {
        return "selfsigned".to_owned();
    };
    match tls.r#type() {
        TlsType::Unspecified | TlsType::SelfSigned => "selfsigned".to_owned(),
        TlsType::Acme => "acme".to_owned(),
        TlsType::Imported => format!("imported:{}", tls.certificate),
    }
}

pub(crate) fn bundle_format(format: BundleFormat) -> &'static str {
    match format {
        BundleFormat::Unspecified => "-",
        BundleFormat::TarGz => "tar.gz",
        BundleFormat::TarZst => "tar.zst",
        BundleFormat::Zip => "zip",
    }
}

pub(crate) fn certificate_type(kind: CertificateType) -> &'static str {
    match kind {
        CertificateType::Unspecified => "-",
        CertificateType::Imported => "imported",
        CertificateType::SelfSigned => "selfsigned",
        CertificateType::Acme => "acme",
    }
}

/// `sha256:` plus the first 12 hex digits, enough to tell versions apart in a table.
pub(crate) fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > 12 => format!("{algorithm}:{}", &hex[..12]),
        _ => or_dash(digest),
    }
}

/// Key/value view of a site.
pub(crate) fn site_details(site: &Site) -> String {
    let mut table = Table::headless();
    table.row(["domain", site.domain.as_str()]);
    table.row(["aliases".to_owned(), list(&site.aliases)]);
    table.row(["tls".to_owned(), tls(site.tls.as_ref())]);
    table.row(["app".to_owned(), app_ref(site.app.as_ref())]);
    table.row(["revision".to_owned(), site.revision.to_string()]);
    table.row(["created".to_owned(), timestamp(site.created_at.as_ref())]);
    table.row(["updated".to_owned(), timestamp(site.updated_at.as_ref())]);
    table.row(["deployed".to_owned(), timestamp(site.deployed_at.as_ref())]);
    table.row(["deployment".to_owned(), or_dash(&site.deployment_id)]);
    table.row([
        "skew protection".to_owned(),
        window(site.skew_protection.as_ref()),
    ]);
    table.render()
}

/// Key/value view of an app version.
pub(crate) fn app_details(app: &App) -> String {
    let mut table = Table::headless();
    table.row(["name", app.name.as_str()]);
    table.row(["version", app.version.as_str()]);
    table.row(["digest", app.digest.as_str()]);
    table.row(["size".to_owned(), app.size.to_string()]);
    table.row(["format", bundle_format(app.format())]);
    table.row(["signed", if app.signed { "yes" } else { "no" }]);
    table.row(["created".to_owned(), timestamp(app.created_at.as_ref())]);
    table.row(["used by".to_owned(), list(&app.used_by)]);
    table.render()
}

/// Key/value view of a certificate.
pub(crate) fn certificate_details(cert: &Certificate) -> String {
    let mut table = Table::headless();
    table.row(["name", cert.name.as_str()]);
    table.row(["type", certificate_type(cert.r#type())]);
    table.row(["domains".to_owned(), list(&cert.domains)]);
    table.row(["not before".to_owned(), timestamp(cert.not_before.as_ref())]);
    table.row(["not after".to_owned(), timestamp(cert.not_after.as_ref())]);
    table.row(["fingerprint", cert.fingerprint.as_str()]);
    table.row(["used by".to_owned(), list(&cert.used_by)]);
    table.render()
}

pub(crate) fn timestamp_json(ts: Option<&prost_types::Timestamp>) -> Value {
    timestamp_string(ts).map_or(Value::Null, Value::String)
}

fn app_ref_json(app: Option<&AppRef>) -> Value {
    match app {
        Some(app) => json!({ "name": app.name, "version": app.version }),
        None => Value::Null,
    }
}

fn tls_json(tls: Option<&TlsConfig>) -> Value {
    match tls {
        Some(tls) => json!({
            "type": tls.r#type().as_str_name(),
            "certificate": tls.certificate,
        }),
        None => Value::Null,
    }
}

pub(crate) fn site_json(site: &Site) -> Value {
    json!({
        "domain": site.domain,
        "aliases": site.aliases,
        "tls": tls_json(site.tls.as_ref()),
        "app": app_ref_json(site.app.as_ref()),
        "revision": site.revision,
        "created_at": timestamp_json(site.created_at.as_ref()),
        "updated_at": timestamp_json(site.updated_at.as_ref()),
        "deployed_at": timestamp_json(site.deployed_at.as_ref()),
        "deployment_id": site.deployment_id,
        "skew_protection": site
            .skew_protection
            .as_ref()
            .map_or(Value::Null, |d| Value::String(window(Some(d)))),
    })
}

/// A skew protection window as `stk site update --skew-protection` takes it: `24h`, or `off`.
pub(crate) fn window(value: Option<&prost_types::Duration>) -> String {
    match value {
        Some(d) if d.seconds > 0 || d.nanos > 0 => humantime::format_duration(
            std::time::Duration::new(d.seconds as u64, d.nanos.max(0) as u32),
        )
        .to_string(),
        Some(_) => "off".to_owned(),
        None => "-".to_owned(),
    }
}

/// A duration for the API.
pub(crate) fn duration_to_proto(value: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: value.as_secs() as i64,
        nanos: value.subsec_nanos() as i32,
    }
}

pub(crate) fn app_json(app: &App) -> Value {
    json!({
        "name": app.name,
        "version": app.version,
        "digest": app.digest,
        "size": app.size,
        "format": app.format().as_str_name(),
        "signed": app.signed,
        "created_at": timestamp_json(app.created_at.as_ref()),
        "used_by": app.used_by,
    })
}

pub(crate) fn certificate_json(cert: &Certificate) -> Value {
    json!({
        "name": cert.name,
        "type": cert.r#type().as_str_name(),
        "domains": cert.domains,
        "not_before": timestamp_json(cert.not_before.as_ref()),
        "not_after": timestamp_json(cert.not_after.as_ref()),
        "fingerprint": cert.fingerprint,
        "used_by": cert.used_by,
    })
}

/// A deployment state as `stk` prints it (`live`, `failed`, ...).
pub(crate) fn deployment_state(state: DeploymentState) -> &'static str {
    match state {
        DeploymentState::Unspecified => "-",
        DeploymentState::Staging => "staging",
        DeploymentState::Live => "live",
        DeploymentState::Superseded => "superseded",
        DeploymentState::Failed => "failed",
        DeploymentState::Preview => "preview",
    }
}

fn deploy_strategy(strategy: DeployStrategy) -> &'static str {
    match strategy {
        DeployStrategy::Unspecified => "-",
        DeployStrategy::Atomic => "atomic",
        DeployStrategy::Immediate => "immediate",
    }
}

/// One line per deployment, newest first as given.
pub(crate) fn deployments_table(deployments: &[Deployment]) -> String {
    let mut table = Table::new(&[
        "id", "app", "state", "author", "created", "strategy", "note",
    ]);
    for d in deployments {
        let note = if !d.reason.is_empty() {
            d.reason.clone()
        } else if !d.rollback_of.is_empty() {
            format!("rollback to {}", d.rollback_of)
        } else if !d.promoted_from.is_empty() {
            format!("promoted from preview {}", d.promoted_from)
        } else if let Some(p) = &d.preview {
            format!("{} (expires {})", p.url, timestamp(p.expires_at.as_ref()))
        } else {
            String::new()
        };
        table.row([
            d.id.clone(),
            app_ref(d.app.as_ref()),
            deployment_state(d.state()).to_owned(),
            or_dash(&d.author),
            timestamp(d.created_at.as_ref()),
            deploy_strategy(d.strategy()).to_owned(),
            or_dash(&note),
        ]);
    }
    table.render()
}

pub(crate) fn deployment_json(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "site": d.site,
        "app": app_ref_json(d.app.as_ref()),
        "author": d.author,
        "state": d.state().as_str_name(),
        "strategy": d.strategy().as_str_name(),
        "reason": d.reason,
        "failed_nodes": d.failed_nodes,
        "staged_nodes": d.staged_nodes,
        "rollback_of": d.rollback_of,
        "created_at": timestamp_json(d.created_at.as_ref()),
        "live_at": timestamp_json(d.live_at.as_ref()),
        "superseded_at": timestamp_json(d.superseded_at.as_ref()),
        "failed_at": timestamp_json(d.failed_at.as_ref()),
        "preview": d.preview.as_ref().map_or(Value::Null, |p| json!({
            "url": p.url,
            "host": p.host,
            "expires_at": timestamp_json(p.expires_at.as_ref()),
            "password_protected": p.password_protected,
            "certificate": p.certificate,
        })),
        "promoted_from": d.promoted_from,
    })
}

/// One line per preview, newest first as given.
pub(crate) fn previews_table(previews: &[Deployment]) -> String {
    let mut table = Table::new(&["id", "site", "app", "url", "expires", "password", "author"]);
    for d in previews {
        let preview = d.preview.clone().unwrap_or_default();
        table.row([
            d.id.clone(),
            d.site.clone(),
            app_ref(d.app.as_ref()),
            or_dash(&preview.url),
            timestamp(preview.expires_at.as_ref()),
            if preview.password_protected {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
            or_dash(&d.author),
        ]);
    }
    table.render()
}

fn node_site_json(site: &NodeSiteStatus) -> Value {
    json!({
        "domain": site.domain,
        "app": app_ref_json(site.app.as_ref()),
        "healthy": site.healthy,
        "error": site.error,
        "retained": site.retained,
    })
}

fn node_certificate_json(cert: &NodeCertificateStatus) -> Value {
    json!({
        "name": cert.name,
        "not_after": timestamp_json(cert.not_after.as_ref()),
    })
}

pub(crate) fn node_json(node: &Node) -> Value {
    json!({
        "name": node.name,
        "leader": node.leader,
        "version": node.version,
        "applied_revision": node.applied_revision,
        "updated_at": timestamp_json(node.updated_at.as_ref()),
        "sites": node.sites.iter().map(node_site_json).collect::<Vec<_>>(),
        "certificates": node.certificates.iter().map(node_certificate_json).collect::<Vec<_>>(),
        "disallow_leadership": node.disallow_leadership,
        "sites_omitted": node.sites_omitted,
        "certificates_omitted": node.certificates_omitted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_alignment() {
        let mut table = Table::new(&["name", "leader", "note"]);
        table.row(["edge-1", "yes", "first"]);
        table.row(["e2", "no", ""]);
        table.row(["edge-long-name", "no", "x"]);
        assert_eq!(
            table.render(),
            "NAME            LEADER  NOTE\n\
             edge-1          yes     first\n\
             e2              no\n\
             edge-long-name  no      x\n"
        );
    }

    #[test]
    fn table_edge_cases() {
        assert_eq!(Table::headless().render(), "");
        assert_eq!(Table::new(&["a"]).render(), "A\n");
        // Width counts characters, not bytes.
        let mut table = Table::headless();
        table.row(["é", "x"]);
        table.row(["ab", "y"]);
        assert_eq!(table.render(), "é   x\nab  y\n");
        // Rows may have fewer cells than the widest row.
        let mut table = Table::new(&["a", "b"]);
        table.row(["1"]);
        assert_eq!(table.render(), "A  B\n1\n");
    }

    #[test]
    fn formatting() {
        let ts = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 5,
        };
        assert_eq!(timestamp(Some(&ts)), "2026-01-01T00:00:00Z");
        assert_eq!(timestamp(None), "-");
        assert_eq!(timestamp_json(None), Value::Null);
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest(""), "-");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&["a".into(), "b".into()]), "a,b");
        assert_eq!(tls(None), "selfsigned");
        let imported = TlsConfig {
            r#type: TlsType::Imported as i32,
            certificate: "main".into(),
        };
        assert_eq!(tls(Some(&imported)), "imported:main");
        assert_eq!(app_ref(None), "-");
    }

    #[test]
    fn site_as_json() {
        let site = Site {
            domain: "example.com".into(),
            aliases: vec!["www.example.com".into()],
            tls: Some(TlsConfig {
                r#type: TlsType::Acme as i32,
                certificate: String::new(),
            }),
            app: Some(AppRef {
                name: "web".into(),
                version: "1.4.0".into(),
            }),
            revision: 12,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            updated_at: None,
            deployed_at: None,
            skew_protection: Some(prost_types::Duration {
                seconds: 86_400,
                nanos: 0,
            }),
            deployment_id: String::new(),
        };
        assert_eq!(
            site_json(&site),
            json!({
                "domain": "example.com",
                "aliases": ["www.example.com"],
                "tls": { "type": "TLS_TYPE_ACME", "certificate": "" },
                "app": { "name": "web", "version": "1.4.0" },
                "revision": 12,
                "created_at": "1970-01-01T00:00:00Z",
                "updated_at": null,
                "deployed_at": null,
                "deployment_id": "",
                "skew_protection": "1day",
            })
        );
        assert!(site_details(&site).contains("acme\n"));
        assert!(site_details(&site).contains("skew protection  1day\n"));
    }
}
