//! AppService end to end: uploads through the gRPC stream and through `stk app upload` (folder,
//! .tar.gz, .tar.zst, .zip), listing, the content-addressed object in the local repository and
//! in S3 (moto), every refusal (duplicate, bad name/version, not an archive, digest and format
//! mismatch, over `limits.maxBundleSize`, a manifest staging would refuse, empty, no metadata)
//! leaving no record behind, Ed25519 signatures with `codesign.required`, and deletion (refused while deployed, the
//! bundle object collected once no version shares its digest).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use statiko_proto::v1::{
    App, BundleFormat, DeleteAppRequest, DeployRequest, ListAppsRequest, UploadAppRequest,
    upload_app_request::Data,
};
use statiko_tests::fixtures::{
    Upload, app_ref, assert_status, digest_of, ed25519_key, send_messages, sign, site, site_bundle,
    tar_gz, tar_zst, zip,
};
use statiko_tests::{Control, ControlOptions, Moto, OutputExt, require_tool};
use tonic::Code;

use crate::control_common::{Backend, app_refs, start};

/// The files of the local bundle repository (`<repo>/bundles/sha256/<hex>`), by name.
fn repo_objects(control: &Control) -> Vec<String> {
    let dir = control.repo_dir().join("bundles").join("sha256");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256: digest")
}

async fn list_apps(control: &Control) -> Result<Vec<App>> {
    Ok(control
        .admin()
        .await?
        .apps()
        .list_apps(ListAppsRequest::default())
        .await?
        .into_inner()
        .apps)
}

/// `len` bytes that gzip cannot shrink (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn upload_formats_over_grpc_and_list() -> Result<()> {
    let Some(running) = start(Backend::File, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    let files: &[(&str, &[u8])] = &[("index.html", b"<h1>hi</h1>"), ("a/b.css", b"body{}")];
    let bundles = [
        ("1.0.0", tar_gz(files)?, BundleFormat::TarGz),
        ("1.0.1", tar_zst(files)?, BundleFormat::TarZst),
        ("1.0.2", zip(files), BundleFormat::Zip),
    ];
    for (version, bytes, format) in &bundles {
        let mut upload = Upload::new("web", version, bytes.clone());
        // Declare format and digest for one of them: both are checked and accepted.
        if *version == "1.0.0" {
            upload.format = *format;
            upload.digest = digest_of(bytes);
        }
        let app = upload.send(&admin).await?;
        assert_eq!(app.digest, digest_of(bytes));
        assert_eq!(app.size, bytes.len() as u64);
        assert_eq!(app.format(), *format);
        assert!(!app.signed);
    }
    let listed = list_apps(control).await?;
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (app, (version, bytes, format)) in listed.iter().zip(&bundles) {
        assert_eq!((app.name.as_str(), app.version.as_str()), ("web", *version));
        assert!(
            app.digest.starts_with("sha256:") && app.digest.len() == 71,
            "{}",
            app.digest
        );
        assert_eq!(app.digest, digest_of(bytes));
        assert_eq!(app.size, bytes.len() as u64);
        assert_eq!(app.format(), *format);
        assert!(app.used_by.is_empty() && app.created_at.is_some());
        // The content-addressed object holds exactly the uploaded bytes.
        let object = control
            .repo_dir()
            .join("bundles/sha256")
            .join(hex_of(&app.digest));
        assert_eq!(
            std::fs::read(&object).with_context(|| object.display().to_string())?,
            *bytes
        );
    }
    // Filtering by name.
    Upload::new("docs", "2024.1", site_bundle("docs"))
        .send(&admin)
        .await?;
    let docs = admin
        .apps()
        .list_apps(ListAppsRequest {
            name: "docs".into(),
        })
        .await?
        .into_inner()
        .apps;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].version, "2024.1");
    Ok(())
}

#[tokio::test]
async fn upload_refusals_leave_nothing_behind() -> Result<()> {
    let Some(running) = start(
        Backend::File,
        ControlOptions::default().config(json!({"limits": {"maxBundleSize": 4096}})),
    )
    .await?
    else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    let good = site_bundle("good");
    Upload::new("web", "1.0.0", good.clone())
        .send(&admin)
        .await?;

    // The same version again, even with other content.
    assert_status(
        Upload::new("web", "1.0.0", site_bundle("other"))
            .send(&admin)
            .await,
        Code::AlreadyExists,
        &["web@1.0.0"],
    );
    // Bad names and versions.
    for name in ["", "Web", "1web", "we/b", "web_app", &"a".repeat(64)] {
        assert_status(
            Upload::new(name, "1.0.0", good.clone()).send(&admin).await,
            Code::InvalidArgument,
            &["metadata.name"],
        );
    }
    for version in ["", "-1", "1.0/0", "1 0", &"1".repeat(65)] {
        assert_status(
            Upload::new("web", version, good.clone()).send(&admin).await,
            Code::InvalidArgument,
            &["metadata.version"],
        );
    }
    // Not an archive.
    assert_status(
        Upload::new("web", "2.0.0", b"<html>just a page</html>".to_vec())
            .send(&admin)
            .await,
        Code::InvalidArgument,
        &["not a .tar.gz, .tar.zst or .zip"],
    );
    // Declared digest or format that does not match.
    let mut wrong_digest = Upload::new("web", "2.0.1", good.clone());
    wrong_digest.digest = digest_of(b"something else");
    assert_status(
        wrong_digest.send(&admin).await,
        Code::InvalidArgument,
        &["metadata.digest", &digest_of(&good)],
    );
    let mut bad_digest = Upload::new("web", "2.0.2", good.clone());
    bad_digest.digest = "md5:1234".into();
    assert_status(
        bad_digest.send(&admin).await,
        Code::InvalidArgument,
        &["metadata.digest"],
    );
    let mut wrong_format = Upload::new("web", "2.0.3", good.clone());
    wrong_format.format = BundleFormat::Zip;
    assert_status(
        wrong_format.send(&admin).await,
        Code::InvalidArgument,
        &["metadata.format"],
    );
    // Over limits.maxBundleSize: refused while streaming.
    let big = tar_gz(&[("noise.bin", &noise(16 * 1024))])?;
    assert!(big.len() > 4096);
    assert_status(
        Upload::new("web", "3.0.0", big).send(&admin).await,
        Code::InvalidArgument,
        &["limits.maxBundleSize", "4096"],
    );
    // What staging would refuse after unpacking and flattening: a manifest naming a page
    // the bundle lacks.
    let bad_manifest = tar_gz(&[
        ("site/index.html", b"<h1>hi</h1>".as_slice()),
        ("site/_statiko.yaml", b"page404: /missing.html\n".as_slice()),
    ])?;
    assert_status(
        Upload::new("web", "3.1.0", bad_manifest).send(&admin).await,
        Code::InvalidArgument,
        &[
            "invalid app manifest _statiko.yaml",
            "page404",
            "/missing.html",
        ],
    );
    // Empty uploads and missing or repeated metadata.
    assert_status(
        send_messages(&admin, Vec::new()).await,
        Code::InvalidArgument,
        &["empty upload"],
    );
    assert_status(
        Upload::new("web", "4.0.0", Vec::new()).send(&admin).await,
        Code::InvalidArgument,
        &["bundle is empty"],
    );
    let chunk = UploadAppRequest {
        data: Some(Data::Chunk(good.clone())),
    };
    assert_status(
        send_messages(&admin, vec![chunk.clone()]).await,
        Code::InvalidArgument,
        &["metadata"],
    );
    let mut twice = Upload::new("web", "4.0.1", good.clone()).messages();
    twice.push(twice[0].clone());
    assert_status(
        send_messages(&admin, twice).await,
        Code::InvalidArgument,
        &["metadata", "twice"],
    );

    // Only the first upload left a record and an object.
    assert_eq!(app_refs(&admin).await?, ["web@1.0.0"]);
    assert_eq!(repo_objects(control), [hex_of(&digest_of(&good))]);
    // A bundle under the limit is still fine.
    Upload::new("web", "5.0.0", site_bundle("small"))
        .send(&admin)
        .await?;
    Ok(())
}

/// Writes `bytes` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

#[tokio::test]
async fn upload_with_stk() -> Result<()> {
    let Some(running) = start(Backend::File, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("site");
    write(&folder, "index.html", b"<h1>folder</h1>")?;
    write(&folder, "css/site.css", b"h1{color:red}")?;
    let files: &[(&str, &[u8])] = &[("index.html", b"<h1>file</h1>")];
    let tgz = write(dir.path(), "site.tar.gz", &tar_gz(files)?)?;
    let tzst = write(dir.path(), "site.tar.zst", &tar_zst(files)?)?;
    let zip_path = write(dir.path(), "site.zip", &zip(files))?;

    let cases = [
        (folder.as_path(), "1.0.0", "BUNDLE_FORMAT_TAR_GZ"),
        (tgz.as_path(), "1.0.1", "BUNDLE_FORMAT_TAR_GZ"),
        (tzst.as_path(), "1.0.2", "BUNDLE_FORMAT_TAR_ZST"),
        (zip_path.as_path(), "1.0.3", "BUNDLE_FORMAT_ZIP"),
    ];
    for (path, version, format) in cases {
        let output = control
            .stk([
                "--output".as_ref(),
                "json".as_ref(),
                "app".as_ref(),
                "upload".as_ref(),
                path.as_os_str(),
                "--name".as_ref(),
                "web".as_ref(),
                "--version".as_ref(),
                version.as_ref(),
            ])
            .await?;
        output.assert_success();
        let uploaded: Value = serde_json::from_str(&output.stdout_text())
            .with_context(|| format!("stk output is not JSON: {}", output.stdout_text()))?;
        assert_eq!(uploaded["app"]["version"], version, "{uploaded}");
        assert_eq!(uploaded["app"]["format"], format, "{uploaded}");
        if path.is_file() {
            assert_eq!(
                uploaded["app"]["digest"],
                digest_of(&std::fs::read(path)?),
                "{uploaded}"
            );
        }
    }
    let listed = control.stk_json(["app", "list"]).await?;
    let apps = listed["apps"].as_array().context("apps array")?;
    let versions: Vec<&str> = apps
        .iter()
        .filter_map(|app| app["version"].as_str())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]);
    for app in apps {
        let digest = app["digest"].as_str().context("digest")?;
        assert!(digest.starts_with("sha256:"), "{app}");
        assert!(app["size"].as_u64().is_some_and(|size| size > 0), "{app}");
        assert!(
            control
                .repo_dir()
                .join("bundles/sha256")
                .join(hex_of(digest))
                .is_file()
        );
    }
    // The table output names the apps too.
    let table = control.stk(["app", "list"]).await?;
    table.assert_success();
    assert!(
        table.stdout_text().contains("1.0.3"),
        "{}",
        table.stdout_text()
    );
    // Uploading the same version again fails with the server's message.
    let again = control
        .stk([
            "app".as_ref(),
            "upload".as_ref(),
            tgz.as_os_str(),
            "--name".as_ref(),
            "web".as_ref(),
            "--version".as_ref(),
            "1.0.1".as_ref(),
        ])
        .await?;
    assert!(!again.status.success());
    assert!(
        again.stderr_text().contains("ALREADY_EXISTS"),
        "{}",
        again.stderr_text()
    );
    Ok(())
}

#[tokio::test]
async fn signatures_required() -> Result<()> {
    let (private_pem, public_pem) = ed25519_key()?;
    let (other_private_pem, _other_public) = ed25519_key()?;
    let Some(running) = start(
        Backend::File,
        ControlOptions::default()
            .config(json!({"codesign": {"publicKey": public_pem, "required": true}})),
    )
    .await?
    else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    let bundle = site_bundle("signed");

    assert_status(
        Upload::new("web", "1.0.0", bundle.clone())
            .send(&admin)
            .await,
        Code::FailedPrecondition,
        &["unsigned", "codesign.required"],
    );
    let mut wrong = Upload::new("web", "1.0.0", bundle.clone());
    wrong.signature = sign(&other_private_pem, &bundle)?;
    assert_status(
        wrong.send(&admin).await,
        Code::InvalidArgument,
        &["metadata.signature"],
    );
    let mut garbage = Upload::new("web", "1.0.0", bundle.clone());
    garbage.signature = vec![7; 64];
    assert_status(
        garbage.send(&admin).await,
        Code::InvalidArgument,
        &["metadata.signature"],
    );
    // A signature over other content does not fit this bundle.
    let mut other_content = Upload::new("web", "1.0.0", bundle.clone());
    other_content.signature = sign(&private_pem, &site_bundle("other"))?;
    assert_status(
        other_content.send(&admin).await,
        Code::InvalidArgument,
        &["metadata.signature"],
    );
    assert!(app_refs(&admin).await?.is_empty());
    assert!(
        repo_objects(control).is_empty(),
        "{:?}",
        repo_objects(control)
    );

    let mut good = Upload::new("web", "1.0.0", bundle.clone());
    good.signature = sign(&private_pem, &bundle)?;
    let app = good.send(&admin).await?;
    assert!(app.signed);

    // stk --sign, and stk without it.
    let dir = tempfile::tempdir()?;
    let key_path = write(dir.path(), "key.pem", private_pem.as_bytes())?;
    let site_dir = dir.path().join("site");
    write(&site_dir, "index.html", b"<h1>stk signed</h1>")?;
    let output = control
        .stk([
            "--output".as_ref(),
            "json".as_ref(),
            "app".as_ref(),
            "upload".as_ref(),
            site_dir.as_os_str(),
            "--name".as_ref(),
            "web".as_ref(),
            "--version".as_ref(),
            "1.0.1".as_ref(),
            "--sign".as_ref(),
            key_path.as_os_str(),
        ])
        .await?;
    output.assert_success();
    let uploaded: Value = serde_json::from_str(&output.stdout_text())?;
    assert_eq!(uploaded["app"]["signed"], true, "{uploaded}");
    let unsigned = control
        .stk([
            "app".as_ref(),
            "upload".as_ref(),
            site_dir.as_os_str(),
            "--name".as_ref(),
            "web".as_ref(),
            "--version".as_ref(),
            "1.0.2".as_ref(),
        ])
        .await?;
    assert!(!unsigned.status.success());
    assert!(
        unsigned.stderr_text().contains("FAILED_PRECONDITION"),
        "{}",
        unsigned.stderr_text()
    );

    let listed = list_apps(control).await?;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|app| app.signed), "{listed:?}");
    Ok(())
}

#[tokio::test]
async fn delete_refused_while_deployed_and_collects_bundles() -> Result<()> {
    let Some(running) = start(Backend::File, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    let shared = site_bundle("shared");
    let v1 = Upload::new("web", "1.0.0", shared.clone())
        .send(&admin)
        .await?;
    let v1b = Upload::new("web", "1.0.1", shared.clone())
        .send(&admin)
        .await?;
    assert_eq!(v1.digest, v1b.digest);
    let v2 = Upload::new("web", "2.0.0", site_bundle("two"))
        .send(&admin)
        .await?;
    admin
        .sites()
        .create_site(site("apps.example.com", &["www.apps.example.com"]))
        .await?;
    let deploy = |version: &str| DeployRequest {
        domain: "www.apps.example.com".into(),
        app: Some(app_ref("web", version)),
        ..DeployRequest::default()
    };
    admin.deployments().deploy(deploy("1.0.0")).await?;

    let delete = |version: &str| DeleteAppRequest {
        name: "web".into(),
        version: version.into(),
    };
    assert_status(
        admin.apps().delete_app(delete("1.0.0")).await,
        Code::FailedPrecondition,
        &["web@1.0.0", "apps.example.com"],
    );
    let listed = list_apps(control).await?;
    let used: Vec<(&str, &Vec<String>)> = listed
        .iter()
        .map(|app| (app.version.as_str(), &app.used_by))
        .collect();
    assert_eq!(
        used,
        [
            ("1.0.0", &vec!["apps.example.com".to_owned()]),
            ("1.0.1", &vec![]),
            ("2.0.0", &vec![])
        ]
    );

    // After redeploying another version the old one can go; its object stays while 1.0.1
    // shares the digest, and goes with the last version that uses it.
    admin.deployments().deploy(deploy("2.0.0")).await?;
    admin.apps().delete_app(delete("1.0.0")).await?;
    assert_eq!(app_refs(&admin).await?, ["web@1.0.1", "web@2.0.0"]);
    let mut expected = vec![hex_of(&v1.digest).to_owned(), hex_of(&v2.digest).to_owned()];
    expected.sort();
    assert_eq!(repo_objects(control), expected);
    admin.apps().delete_app(delete("1.0.1")).await?;
    assert_eq!(repo_objects(control), [hex_of(&v2.digest)]);
    assert_status(
        admin.apps().delete_app(delete("1.0.1")).await,
        Code::NotFound,
        &["web@1.0.1"],
    );
    assert_status(
        admin.apps().delete_app(delete("2.0.0")).await,
        Code::FailedPrecondition,
        &["apps.example.com"],
    );
    // A deleted version can no longer be deployed.
    assert_status(
        admin.deployments().deploy(deploy("1.0.0")).await,
        Code::NotFound,
        &["web@1.0.0"],
    );
    Ok(())
}

#[tokio::test]
async fn s3_repository() -> Result<()> {
    statiko_tests::init();
    if !require_tool("moto_server") {
        return Ok(());
    }
    let moto = Moto::start().await?;
    moto.create_bucket("statiko-bundles").await?;
    let Some(running) = start(
        Backend::File,
        ControlOptions::default().config(json!({"repo": {
            "type": "s3",
            "local": null,
            "s3": {
                "bucket": "statiko-bundles",
                "endpoint": moto.endpoint(),
                "region": Moto::REGION,
                "accessKeyId": Moto::ACCESS_KEY_ID,
                "secretAccessKey": Moto::SECRET_ACCESS_KEY,
            },
        }})),
    )
    .await?
    else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    let bundle = site_bundle("s3");
    let app = Upload::new("web", "1.0.0", bundle.clone())
        .send(&admin)
        .await?;
    assert_eq!(app.digest, digest_of(&bundle));
    let key = format!("bundles/sha256/{}", hex_of(&app.digest));
    // `Moto::get_object` is anonymous and moto answers 403 for an existing private object, so
    // the object is checked through the (anonymous) bucket listing: key and size.
    let listing = bucket_listing(&moto, "statiko-bundles").await?;
    assert!(
        listing.contains(&format!("<Key>{key}</Key>")),
        "{key} not in {listing}"
    );
    assert!(
        listing.contains(&format!("<Size>{}</Size>", bundle.len())),
        "{listing}"
    );
    assert_eq!(listing.matches("<Key>").count(), 1, "{listing}");
    let listed = list_apps(control).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, app.digest);
    assert_eq!(listed[0].size, bundle.len() as u64);
    // Deleting the only version removes the object from the bucket.
    admin
        .apps()
        .delete_app(DeleteAppRequest {
            name: "web".into(),
            version: "1.0.0".into(),
        })
        .await?;
    let listing = bucket_listing(&moto, "statiko-bundles").await?;
    assert!(!listing.contains("<Key>"), "{listing}");
    Ok(())
}

/// The (anonymous, path-style) `ListObjectsV2` XML of `bucket`.
async fn bucket_listing(moto: &Moto, bucket: &str) -> Result<String> {
    let response = statiko_tests::http_request(
        moto.addr(),
        None,
        http::Method::GET,
        &moto.addr().to_string(),
        &format!("/{bucket}?list-type=2"),
        &[],
        bytes::Bytes::new(),
    )
    .await?;
    anyhow::ensure!(
        response.status.is_success(),
        "list {bucket}: HTTP {}",
        response.status
    );
    Ok(response.text())
}

/// Upload streams live under `limits.uploadIdleTimeout` and `limits.uploadTimeout`, and are
/// spooled in control's own owner-only `control.dataDir`.
#[tokio::test]
async fn upload_streams_are_time_limited_and_spooled_privately() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::{Duration, Instant};

    use futures::StreamExt as _;

    let Some(running) = start(
        Backend::File,
        ControlOptions::default().config(json!({
            "limits": {"uploadIdleTimeout": 500, "uploadTimeout": 2000},
        })),
    )
    .await?
    else {
        return Ok(());
    };
    let control = &running.control;
    let admin = control.admin().await?;
    let bundle = site_bundle("timed");
    let messages = Upload::new("web", "1.0.0", bundle.clone()).messages();

    // Metadata, then nothing: cut off after the idle timeout.
    let stalled = tokio_stream::iter(messages[..1].to_vec()).chain(futures::stream::pending());
    let started = Instant::now();
    let result = admin.apps().upload_app(stalled).await;
    assert_status(
        result,
        Code::DeadlineExceeded,
        &["limits.uploadIdleTimeout", "500 ms"],
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A trickle that never stalls for long, but never ends: cut off at the total limit.
    let first = messages[0].clone();
    let trickle = tokio_stream::iter(vec![first]).chain(futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let chunk = UploadAppRequest {
            data: Some(Data::Chunk(vec![0u8; 16])),
        };
        Some((chunk, ()))
    }));
    let started = Instant::now();
    let result = admin.apps().upload_app(trickle).await;
    assert_status(
        result,
        Code::DeadlineExceeded,
        &["limits.uploadTimeout", "2000 ms"],
    );
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // A normal upload still goes through; the spool directory is 0700 and left empty.
    Upload::new("web", "1.0.0", bundle).send(&admin).await?;
    assert_eq!(app_refs(&admin).await?, ["web@1.0.0"]);
    let data_dir = PathBuf::from(
        control.config()["control"]["dataDir"]
            .as_str()
            .context("control.dataDir")?,
    );
    for dir in [data_dir.clone(), data_dir.join("uploads")] {
        let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    assert_eq!(std::fs::read_dir(data_dir.join("uploads"))?.count(), 0);
    Ok(())
}
