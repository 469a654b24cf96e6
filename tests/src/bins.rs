//! Locating the workspace binaries (`statiko-control`, `stk`, ...) and external tools (etcd,
//! grpcurl, moto_server, pebble), and skipping tests locally when a tool is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The path of a workspace binary such as `statiko-control` or `stk`.
///
/// `STATIKO_BIN_DIR` wins; otherwise the cargo target dir is derived from the running test
/// executable (`target/<profile>/deps/e2e-<hash>` gives `target/<profile>/`).
///
/// # Panics
///
/// When the binary does not exist: the message says to run `cargo build --workspace --bins`.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: run `cargo build --workspace --bins` first \
         (or point STATIKO_BIN_DIR at the directory holding it)",
        path.display()
    );
    path
}

/// The directory holding the workspace binaries; see [`bin_path`].
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATIKO_BIN_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of an external tool: `STATIKO_<NAME>_BIN` (upper case, `-` as `_`, e.g.
/// `STATIKO_ETCD_BIN`, `STATIKO_MOTO_SERVER_BIN`) if set, otherwise the first executable
/// `name` on `PATH`.
pub fn tool_path(name: &str) -> Option<PathBuf> {
    let override_var = format!("STATIKO_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&override_var).filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search_path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether the tool `name` (see [`tool_path`]) is available.
///
/// Missing locally: prints a notice and returns `false`, and the test returns early.
/// Missing with `CI` set: panics, so CI never passes by skipping.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// statiko_tests::init();
/// if !statiko_tests::require_tool("etcd") {
///     return Ok(());
/// }
/// let etcd = statiko_tests::Etcd::start().await?;
/// # Ok(()) }
/// ```
pub fn require_tool(name: &str) -> bool {
    if tool_path(name).is_some() {
        return true;
    }
    let in_ci = std::env::var_os("CI").is_some_and(|value| !value.is_empty());
    assert!(
        !in_ci,
        "required tool `{name}` is not installed and CI is set: run scripts/install-deps.sh"
    );
    notice(&format!(
        "skipping: tool `{name}` is not installed (scripts/install-deps.sh installs it)"
    ));
    false
}

/// Whether `python3` can import `module`; in CI a missing one fails the test (install-deps
/// installs it), elsewhere the test is skipped with a notice, as [`require_tool`] does.
pub async fn require_python_module(module: &str) -> anyhow::Result<bool> {
    let found = tokio::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success());
    if found {
        return Ok(true);
    }
    let in_ci = std::env::var_os("CI").is_some_and(|value| !value.is_empty());
    anyhow::ensure!(
        !in_ci,
        "python module `{module}` is missing and CI is set: run scripts/install-deps.sh"
    );
    notice(&format!(
        "skipping: python module `{module}` is not installed (scripts/install-deps.sh installs it)"
    ));
    Ok(false)
}

/// Prints a harness notice on stderr, where the test runner shows it.
#[expect(
    clippy::print_stderr,
    reason = "the harness reports skips and failures to the test log"
)]
pub(crate) fn notice(message: &str) {
    eprintln!("[statiko-tests] {message}");
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
