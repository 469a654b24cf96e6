//! The SDK path of docs/sdk.md, run for real so it cannot rot: Python client code generated
//! from `proto/` (once with grpcio-tools, once with `buf generate` and the checked-in
//! `buf.gen.yaml`) drives `examples/python/deploy.py` against a real single node (control and
//! an edge on one file store): it creates a site, streams a bundle up, deploys it with `wait`,
//! and the edge serves the bytes over HTTPS. A wrong token exits 1 with `UNAUTHENTICATED`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use anyhow::{Context, Result, ensure};
use statiko_tests::bins::require_python_module;
use statiko_tests::{
    ADMIN_TOKEN, Control, ControlOptions, Edge, EdgeOptions, OutputExt, StateStore, require_tool,
    secs, wait_until,
};
use tokio::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

async fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {command:?}"))?;
    Ok(output)
}

/// Client code from the contract with grpcio-tools, the way docs/sdk.md shows.
async fn generate_with_grpc_tools(out: &Path) -> Result<()> {
    let root = repo_root();
    let mut protos: Vec<PathBuf> = std::fs::read_dir(root.join("proto/statiko/v1"))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    protos.sort();
    std::fs::create_dir_all(out)?;
    run(Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos))
    .await?
    .assert_success();
    Ok(())
}

/// Client code from the contract with `buf generate` and the checked-in `buf.gen.yaml`.
async fn generate_with_buf(out: &Path) -> Result<PathBuf> {
    run(Command::new("buf")
        .current_dir(repo_root())
        .args(["generate", "-o"])
        .arg(out))
    .await?
    .assert_success();
    Ok(out.join("gen/python"))
}

/// Runs the example with the generated code on `PYTHONPATH`, the token in a file.
async fn deploy_py(
    control: &Control,
    generated: &Path,
    token_file: &Path,
    args: &[&str],
) -> Result<Output> {
    let mut command = Command::new("python3");
    command
        .arg(repo_root().join("examples/python/deploy.py"))
        .args(args)
        .env("PYTHONPATH", generated)
        .env("STATIKO_ENDPOINT", control.endpoint())
        .env("STATIKO_TOKEN_FILE", token_file)
        .env("STATIKO_CA", control.ca_path())
        .env_remove("STATIKO_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::time::timeout(secs(60), run(&mut command))
        .await
        .context("deploy.py did not finish within 60 s")?
}

#[tokio::test]
async fn python_sdk_example_deploys_to_a_single_node() -> Result<()> {
    statiko_tests::init();
    if !require_tool("python3")
        || !require_tool("buf")
        || !require_tool("grpc_python_plugin")
        || !require_python_module("grpc_tools").await?
    {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let grpc_tools_out = work.path().join("grpc-tools");
    generate_with_grpc_tools(&grpc_tools_out).await?;
    let buf_out = generate_with_buf(&work.path().join("buf")).await?;

    let control = Control::start(ControlOptions::default()).await?;
    let edge = Edge::start(EdgeOptions::new(
        "solo",
        StateStore::File(control.state_dir()),
        &control.repo_dir(),
    ))
    .await?;
    let token_file = work.path().join("token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;

    for (generated, version) in [(&grpc_tools_out, "1.0.0"), (&buf_out, "2.0.0")] {
        let site_dir = work.path().join(format!("site-{version}"));
        std::fs::create_dir_all(site_dir.join("css"))?;
        let page = format!("<h1>SDK {version}</h1>");
        std::fs::write(site_dir.join("index.html"), &page)?;
        std::fs::write(site_dir.join("css/site.css"), "h1 { color: teal }")?;
        let site_dir = site_dir.to_str().context("temp path is UTF-8")?;
        let output = deploy_py(
            &control,
            generated,
            &token_file,
            &[
                "sdk.example.test",
                site_dir,
                "sdk-site",
                version,
                "--alias",
                "www.sdk.example.test",
            ],
        )
        .await?;
        output.assert_success();
        let stdout = output.stdout_text();
        ensure!(
            stdout.contains(&format!("deployed sdk-site@{version} to sdk.example.test")),
            "{stdout}"
        );
        ensure!(stdout.contains("served by solo"), "{stdout}");
        ensure!(
            !stdout.contains(ADMIN_TOKEN) && !output.stderr_text().contains(ADMIN_TOKEN),
            "the token was printed"
        );
        // `wait` returned once the edge served it, so no polling is needed here.
        let got = edge.https_get("sdk.example.test", "/").await?;
        ensure!(got.status == 200, "GET /: {}", got.status);
        ensure!(got.text() == page, "GET /: {:?}", got.text());
        let css = edge.https_get("sdk.example.test", "/css/site.css").await?;
        ensure!(css.status == 200 && css.text() == "h1 { color: teal }");
    }

    // A wrong token: exit code 1, the gRPC status named, nothing deployed.
    let bad_token = work.path().join("bad-token");
    std::fs::write(&bad_token, "not-a-valid-token-0123456789")?;
    let output = deploy_py(
        &control,
        &grpc_tools_out,
        &bad_token,
        &["other.example.test", "/nonexistent", "x", "1.0.0"],
    )
    .await?;
    output.assert_code(1);
    ensure!(
        output.stderr_text().contains("UNAUTHENTICATED"),
        "{}",
        output.stderr_text()
    );
    wait_until(secs(5), async || {
        edge.https_get("sdk.example.test", "/")
            .await
            .is_ok_and(|got| got.text() == "<h1>SDK 2.0.0</h1>")
    })
    .await?;
    Ok(())
}
