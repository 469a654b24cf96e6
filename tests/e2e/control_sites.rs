//! SiteService end to end, each scenario against both stores (file and etcd): CRUD with lookups
//! by alias, alias and TLS updates, domain normalisation, uniqueness of domains across sites
//! (with nothing half-written after a refusal), field-named validation errors, and
//! compare-and-swap updates with `expected_revision`.

use anyhow::Result;
use statiko_proto::v1::{
    AliasList, DeleteSiteRequest, ImportCertificateRequest, Site, TlsType, UpdateSiteRequest,
};
use statiko_tests::fixtures::{assert_status, cert_pair, site, tls, tls_imported};
use statiko_tests::{Control, ControlOptions};
use tonic::Code;

use crate::control_common::{Backend, get_site, list_sites, start};

/// Generates one `#[tokio::test]` per store for each scenario.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod file_store {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::run(super::Backend::File, super::$scenario).await
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::run(super::Backend::Etcd, super::$scenario).await
                }
            )*
        }
    };
}

on_both_stores!(crud, conflicts, invalid_domains, expected_revision);

async fn run(backend: Backend, scenario: impl AsyncFnOnce(&Control) -> Result<()>) -> Result<()> {
    let Some(running) = start(backend, ControlOptions::default()).await? else {
        return Ok(());
    };
    scenario(&running.control)
        .await
        .map_err(|err| err.context(format!("control log:\n{}", running.control.log_tail())))
}

fn update(domain: &str) -> UpdateSiteRequest {
    UpdateSiteRequest {
        domain: domain.to_owned(),
        ..UpdateSiteRequest::default()
    }
}

fn alias_list(aliases: &[&str]) -> Option<AliasList> {
    Some(AliasList {
        aliases: aliases.iter().map(|alias| (*alias).to_owned()).collect(),
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

fn domains(sites: &[Site]) -> Vec<&str> {
    sites.iter().map(|site| site.domain.as_str()).collect()
}

async fn crud(control: &Control) -> Result<()> {
    let admin = control.admin().await?;
    let mut sites = admin.sites();

    // Create, with normalisation of case and the trailing dot, for domain and aliases.
    let created = sites
        .create_site(site(
            "WWW.Example.COM.",
            &["Example.com", "shop.example.com."],
        ))
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(created.domain, "www.example.com");
    assert_eq!(
        created.aliases,
        strings(&["example.com", "shop.example.com"])
    );
    assert_eq!(
        created.tls.as_ref().map(|t| t.r#type),
        Some(TlsType::SelfSigned as i32)
    );
    assert!(created.revision > 0 && created.created_at.is_some() && created.app.is_none());
    sites.create_site(site("b.example.org", &[])).await?;
    sites.create_site(site("a.example.net", &[])).await?;

    // Get by primary domain, by alias, and by a differently written alias.
    for lookup in ["www.example.com", "example.com", "SHOP.example.com."] {
        let got = get_site(&admin, lookup).await?;
        assert_eq!(got.domain, "www.example.com", "lookup {lookup}");
        assert_eq!(got.revision, created.revision);
    }
    assert_status(
        get_site(&admin, "nope.example.com").await,
        Code::NotFound,
        &["nope.example.com"],
    );

    // List, ordered by primary domain.
    let listed = list_sites(&admin).await?;
    assert_eq!(
        domains(&listed),
        ["a.example.net", "b.example.org", "www.example.com"]
    );

    // Aliases: replace, add, remove, clear.
    let replaced = sites
        .update_site(UpdateSiteRequest {
            aliases: alias_list(&["one.example.com", "Two.Example.com"]),
            ..update("example.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(
        replaced.aliases,
        strings(&["one.example.com", "two.example.com"])
    );
    assert!(replaced.revision > created.revision);
    // The replaced aliases no longer resolve, the new ones do, and the freed name is reusable.
    assert_status(
        get_site(&admin, "example.com").await,
        Code::NotFound,
        &["example.com"],
    );
    assert_eq!(
        get_site(&admin, "two.example.com").await?.domain,
        "www.example.com"
    );

    let added = sites
        .update_site(UpdateSiteRequest {
            add_aliases: strings(&["three.example.com", "one.example.com"]),
            ..update("www.example.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(
        added.aliases,
        strings(&["one.example.com", "two.example.com", "three.example.com"])
    );
    let removed = sites
        .update_site(UpdateSiteRequest {
            remove_aliases: strings(&["ONE.example.com"]),
            ..update("three.example.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(
        removed.aliases,
        strings(&["two.example.com", "three.example.com"])
    );
    assert_status(
        get_site(&admin, "one.example.com").await,
        Code::NotFound,
        &[],
    );
    let cleared = sites
        .update_site(UpdateSiteRequest {
            aliases: alias_list(&[]),
            ..update("www.example.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert!(cleared.aliases.is_empty(), "{:?}", cleared.aliases);
    assert_status(
        get_site(&admin, "two.example.com").await,
        Code::NotFound,
        &[],
    );
    // Freed aliases can be claimed by another site.
    sites
        .update_site(UpdateSiteRequest {
            add_aliases: strings(&["example.com", "two.example.com"]),
            ..update("b.example.org")
        })
        .await?;
    assert_eq!(
        get_site(&admin, "example.com").await?.domain,
        "b.example.org"
    );

    // TLS: acme, imported (needs an existing certificate), back to self-signed.
    let acme = sites
        .update_site(UpdateSiteRequest {
            tls: Some(tls(TlsType::Acme)),
            ..update("www.example.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(
        acme.tls.as_ref().map(|t| t.r#type),
        Some(TlsType::Acme as i32)
    );
    let before = get_site(&admin, "www.example.com").await?;
    assert_status(
        sites
            .update_site(UpdateSiteRequest {
                tls: Some(tls_imported("missing-cert")),
                ..update("www.example.com")
            })
            .await,
        Code::FailedPrecondition,
        &["missing-cert"],
    );
    assert_eq!(get_site(&admin, "www.example.com").await?, before);
    assert_status(
        sites
            .create_site(statiko_proto::v1::CreateSiteRequest {
                tls: Some(tls_imported("missing-cert")),
                ..site("new.example.com", &[])
            })
            .await,
        Code::FailedPrecondition,
        &["missing-cert"],
    );
    assert_status(
        get_site(&admin, "new.example.com").await,
        Code::NotFound,
        &[],
    );
    let pair = cert_pair(&["www.example.com"])?;
    admin
        .certificates()
        .import_certificate(ImportCertificateRequest {
            name: "www-cert".into(),
            certificate_pem: pair.cert_pem,
            key_pem: pair.key_pem,
            ..ImportCertificateRequest::default()
        })
        .await?;
    let imported = sites
        .update_site(UpdateSiteRequest {
            tls: Some(tls_imported("www-cert")),
            ..update("www.example.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(imported.tls, Some(tls_imported("www-cert")));
    let self_signed = sites
        .update_site(UpdateSiteRequest {
            tls: Some(tls(TlsType::SelfSigned)),
            ..update("www.example.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(
        self_signed.tls.as_ref().map(|t| t.r#type),
        Some(TlsType::SelfSigned as i32)
    );

    // Delete by alias: the site and every one of its names are gone.
    sites
        .delete_site(DeleteSiteRequest {
            domain: "Two.Example.com".into(),
        })
        .await?;
    for lookup in ["b.example.org", "example.com", "two.example.com"] {
        assert_status(get_site(&admin, lookup).await, Code::NotFound, &[]);
    }
    assert_status(
        sites
            .delete_site(DeleteSiteRequest {
                domain: "b.example.org".into(),
            })
            .await,
        Code::NotFound,
        &["b.example.org"],
    );
    assert_eq!(
        domains(&list_sites(&admin).await?),
        ["a.example.net", "www.example.com"]
    );
    // The deleted site's names can be used again.
    sites
        .create_site(site("example.com", &["b.example.org"]))
        .await?;
    Ok(())
}

async fn conflicts(control: &Control) -> Result<()> {
    let admin = control.admin().await?;
    let mut sites = admin.sites();
    sites.create_site(site("a.com", &["www.a.com"])).await?;
    sites.create_site(site("b.com", &["www.b.com"])).await?;
    let before = list_sites(&admin).await?;

    // The primary domain of another site, as domain or alias, in any spelling.
    assert_status(
        sites.create_site(site("a.com", &[])).await,
        Code::AlreadyExists,
        &["\"a.com\""],
    );
    assert_status(
        sites
            .create_site(site("c.com", &["new.c.com", "WWW.A.COM."]))
            .await,
        Code::AlreadyExists,
        &["\"www.a.com\"", "site \"a.com\""],
    );
    assert_status(
        sites.create_site(site("www.b.com", &["fresh.b.com"])).await,
        Code::AlreadyExists,
        &["\"www.b.com\"", "site \"b.com\""],
    );
    // Updates claiming another site's names.
    assert_status(
        sites
            .update_site(UpdateSiteRequest {
                add_aliases: strings(&["extra.b.com", "a.com"]),
                ..update("b.com")
            })
            .await,
        Code::AlreadyExists,
        &["\"a.com\"", "site \"a.com\""],
    );
    assert_status(
        sites
            .update_site(UpdateSiteRequest {
                aliases: alias_list(&["other.b.com", "www.a.com"]),
                ..update("www.b.com")
            })
            .await,
        Code::AlreadyExists,
        &["\"www.a.com\"", "site \"a.com\""],
    );

    // Nothing partial: the other sites are unchanged and no name was claimed.
    assert_eq!(list_sites(&admin).await?, before);
    for unclaimed in [
        "c.com",
        "new.c.com",
        "fresh.b.com",
        "extra.b.com",
        "other.b.com",
    ] {
        assert_status(
            get_site(&admin, unclaimed).await,
            Code::NotFound,
            &[unclaimed],
        );
    }
    assert_eq!(get_site(&admin, "www.a.com").await?, before[0]);
    assert_eq!(get_site(&admin, "www.b.com").await?, before[1]);
    // The names refused above are still free for a site that does not collide.
    sites
        .create_site(site("c.com", &["new.c.com", "fresh.b.com"]))
        .await?;
    Ok(())
}

async fn invalid_domains(control: &Control) -> Result<()> {
    let admin = control.admin().await?;
    let mut sites = admin.sites();
    sites.create_site(site("ok.com", &[])).await?;
    let before = list_sites(&admin).await?;
    let long_label = format!("{}.com", "a".repeat(64));
    // 200 KB inputs: the message quotes a bounded prefix, so the status is not lost to an
    // oversized grpc-message header.
    let huge = "a".repeat(200_000);
    let huge_label = format!("{huge}.com");
    let bad = [
        huge.as_str(),
        huge_label.as_str(),
        "",
        "a..b",
        "-a.com",
        "*.x.com",
        "exa mple.com",
        long_label.as_str(),
        "_default",
        "192.168.1.1",
    ];
    for raw in bad {
        let status = assert_status(
            sites.create_site(site(raw, &[])).await,
            Code::InvalidArgument,
            &[],
        );
        assert!(
            status.message().starts_with("domain: "),
            "{raw:?}: {}",
            status.message()
        );
        assert!(
            status.message().len() < 1024,
            "{} bytes for a {}-byte input",
            status.message().len(),
            raw.len()
        );
        let status = assert_status(
            sites
                .create_site(site("fine.com", &["alias.fine.com", raw]))
                .await,
            Code::InvalidArgument,
            &[],
        );
        assert!(
            status.message().starts_with("aliases[1]: "),
            "{raw:?}: {}",
            status.message()
        );
        let status = assert_status(
            sites
                .update_site(UpdateSiteRequest {
                    add_aliases: strings(&[raw]),
                    ..update("ok.com")
                })
                .await,
            Code::InvalidArgument,
            &[],
        );
        assert!(
            status.message().starts_with("add_aliases[0]: "),
            "{raw:?}: {}",
            status.message()
        );
        let status = assert_status(
            sites
                .update_site(UpdateSiteRequest {
                    aliases: alias_list(&[raw]),
                    ..update("ok.com")
                })
                .await,
            Code::InvalidArgument,
            &[],
        );
        assert!(
            status.message().starts_with("aliases.aliases[0]: "),
            "{raw:?}: {}",
            status.message()
        );
    }
    // An alias equal to the domain, an alias listed twice (in any spelling).
    assert_status(
        sites.create_site(site("fine.com", &["FINE.com."])).await,
        Code::InvalidArgument,
        &["aliases[0]", "primary domain"],
    );
    assert_status(
        sites
            .create_site(site("fine.com", &["x.fine.com", "X.fine.com"]))
            .await,
        Code::InvalidArgument,
        &["aliases[1]", "twice"],
    );
    assert_status(
        sites
            .update_site(UpdateSiteRequest {
                add_aliases: strings(&["ok.com"]),
                ..update("ok.com")
            })
            .await,
        Code::InvalidArgument,
        &["add_aliases[0]", "primary domain"],
    );
    // Nothing was written by any refused call.
    assert_eq!(list_sites(&admin).await?, before);
    assert_status(get_site(&admin, "fine.com").await, Code::NotFound, &[]);
    Ok(())
}

async fn expected_revision(control: &Control) -> Result<()> {
    let admin = control.admin().await?;
    let mut sites = admin.sites();
    let created = sites
        .create_site(site("cas.com", &[]))
        .await?
        .into_inner()
        .site
        .expect("site");
    let first = sites
        .update_site(UpdateSiteRequest {
            add_aliases: strings(&["one.cas.com"]),
            expected_revision: created.revision,
            ..update("cas.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert!(first.revision > created.revision);
    let stale = created.revision;
    assert_status(
        sites
            .update_site(UpdateSiteRequest {
                add_aliases: strings(&["two.cas.com"]),
                expected_revision: stale,
                ..update("one.cas.com")
            })
            .await,
        Code::Aborted,
        &["cas.com", &stale.to_string(), &first.revision.to_string()],
    );
    let current = get_site(&admin, "cas.com").await?;
    assert_eq!(current, first, "the refused update changed the site");
    assert_status(get_site(&admin, "two.cas.com").await, Code::NotFound, &[]);
    let second = sites
        .update_site(UpdateSiteRequest {
            add_aliases: strings(&["two.cas.com"]),
            expected_revision: first.revision,
            ..update("cas.com")
        })
        .await?
        .into_inner()
        .site
        .expect("site");
    assert_eq!(second.aliases, strings(&["one.cas.com", "two.cas.com"]));
    Ok(())
}
