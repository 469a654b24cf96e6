//! Helpers shared by the `control_*` scenarios: start a control on the file store or on a
//! fresh etcd, read every etcd key, list sites and apps in one call.

use anyhow::{Context, Result};
use statiko_proto::v1::{GetSiteRequest, ListAppsRequest, ListSitesRequest, Site};
use statiko_tests::{Api, Control, ControlOptions, Etcd, StateStore, require_tool};
use tonic::Status;

/// Which state store a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `state.store: file` in the control's temp dir.
    File,
    /// `state.store: etcd` on a fresh plain etcd.
    Etcd,
}

/// A running control and, for [`Backend::Etcd`], its etcd (dropped after the control).
pub(crate) struct Running {
    pub(crate) control: Control,
    pub(crate) etcd: Option<Etcd>,
}

/// Starts a control on `backend` with `options` (its store replaced); `None` when etcd is
/// needed but not installed (and `CI` is unset).
pub(crate) async fn start(backend: Backend, options: ControlOptions) -> Result<Option<Running>> {
    statiko_tests::init();
    match backend {
        Backend::File => Ok(Some(Running {
            control: Control::start(options.store(StateStore::TempFile)).await?,
            etcd: None,
        })),
        Backend::Etcd => {
            if !require_tool("etcd") {
                return Ok(None);
            }
            let etcd = Etcd::start().await?;
            let control = Control::start(options.store(StateStore::etcd(&etcd))).await?;
            Ok(Some(Running {
                control,
                etcd: Some(etcd),
            }))
        }
    }
}

/// Every site, in the order ListSites returns them.
pub(crate) async fn list_sites(api: &Api) -> Result<Vec<Site>> {
    Ok(api
        .sites()
        .list_sites(ListSitesRequest::default())
        .await?
        .into_inner()
        .sites)
}

/// GetSite by primary domain or alias.
pub(crate) async fn get_site(api: &Api, domain: &str) -> Result<Site, Status> {
    api.sites()
        .get_site(GetSiteRequest {
            domain: domain.to_owned(),
        })
        .await?
        .into_inner()
        .site
        .ok_or_else(|| Status::internal("GetSiteResponse without site"))
}

/// Every app version, as `name@version` strings.
pub(crate) async fn app_refs(api: &Api) -> Result<Vec<String>> {
    Ok(api
        .apps()
        .list_apps(ListAppsRequest::default())
        .await?
        .into_inner()
        .apps
        .iter()
        .map(|app| format!("{}@{}", app.name, app.version))
        .collect())
}

/// Every key in etcd (all prefixes), sorted.
pub(crate) async fn all_etcd_keys(etcd: &Etcd) -> Result<Vec<String>> {
    let mut client = etcd.client().await?;
    let response = client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_keys_only(),
            ),
        )
        .await
        .context("list every etcd key")?;
    let mut keys: Vec<String> = response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    keys.sort();
    Ok(keys)
}

/// Every key and value in etcd (all prefixes), as text, sorted by key.
pub(crate) async fn etcd_dump(etcd: &Etcd) -> Result<Vec<(String, String)>> {
    let mut client = etcd.client().await?;
    let response = client
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .context("read every etcd key")?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect())
}

/// The value stored in etcd at `key`, if any.
pub(crate) async fn etcd_value(etcd: &Etcd, key: &str) -> Result<Option<Vec<u8>>> {
    let mut client = etcd.client().await?;
    let response = client.get(key, None).await?;
    Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
}
