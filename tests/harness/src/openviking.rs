//! Real OpenViking servers (PyPI `openviking==0.5.2`, installed by `scripts/setup.sh openviking`
//! into `.tools/openviking`), for the tests and demo of keygate in front of OpenViking.
//!
//! Invariant: every instance runs offline (embedding pointed at a dead loopback port,
//! `LITELLM_LOCAL_MODEL_COST_MAP=True`, `HOME` in its own directory) and in a workspace of its
//! own; instances of one [`VikingStore`] share its `viking/` directory (accounts, users, keys),
//! which is how two OpenViking instances share their registry (the embedded vector DB takes a
//! lock, so whole workspaces cannot be shared). Start several with [`OpenViking::spawn`] first
//! and [`OpenViking::wait_ready`] after: they start concurrently (10 to 60 s each here), except
//! that the second instance of a [`VikingStore`] must start after the first is ready: the first
//! writes the shared system assets, and a second one starting at the same moment may fail with
//! `ResourceBusyError` (seen once in three runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, Result};
use crate::process::Proc;
use crate::tmp::TempDir;

/// How to get OpenViking, shown when it is missing.
pub const HOW_TO_GET_OPENVIKING: &str =
    "`scripts/setup.sh openviking` (installs openviking==0.5.2 into .tools/openviking)";

/// The server script: `$KEYGATE_OPENVIKING` or `<root>/.tools/openviking/bin/openviking-server`.
/// Panics if missing (tests fail, never skip).
pub fn openviking_server_path() -> PathBuf {
    let path = std::env::var_os("KEYGATE_OPENVIKING")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join(".tools/openviking/bin/openviking-server"));
    if !path.exists() {
        crate::error::fail(Error::msg(format!(
            "openviking-server not found at {}: run {HOW_TO_GET_OPENVIKING}",
            path.display()
        )));
    }
    path
}

/// `integrations/openviking/envoy.yaml.tmpl` with `@OPENVIKING_ROOT_KEY@` filled (as
/// `integrations/openviking/render.sh` does: `%` doubled, YAML double-quote escaped); the other
/// placeholders are left for [`crate::render_envoy_config`].
pub fn openviking_envoy_template(root_key: &str) -> Result<String> {
    let path = crate::repo_root().join("integrations/openviking/envoy.yaml.tmpl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::msg(format!("reading {}: {e}", path.display())))?;
    let value = root_key
        .replace('%', "%%")
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(&line.replace("@OPENVIKING_ROOT_KEY@", &value));
        }
        out.push('\n');
    }
    Ok(out)
}

/// `integrations/openviking/keygate.json`, the filter configuration shipped for OpenViking.
pub fn openviking_keygate_config() -> Result<serde_json::Value> {
    let path = crate::repo_root().join("integrations/openviking/keygate.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::msg(format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// A `viking/` directory that several instances share.
#[derive(Debug)]
pub struct VikingStore {
    dir: TempDir,
}

impl VikingStore {
    pub fn new() -> Result<VikingStore> {
        let dir = TempDir::new("viking")?;
        std::fs::create_dir_all(dir.path().join("viking"))?;
        Ok(VikingStore { dir })
    }

    /// The shared `viking/` directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("viking")
    }
}

/// How an instance authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// `api_key`: OpenViking's own keys; `hashing` turns on argon2id hashing of stored keys.
    ApiKey { hashing: bool },
    /// `trusted`: behind a gateway that sends the root key and the identity headers.
    Trusted,
}

/// A running `openviking-server`; killed (with its process group) on drop.
#[derive(Debug)]
pub struct OpenViking {
    proc: Option<Proc>,
    port: u16,
    root_key: String,
    name: String,
    _dir: TempDir,
}

impl OpenViking {
    /// Starts an instance on `port` sharing `store`, without waiting for it (see
    /// [`OpenViking::wait_ready`]).
    pub fn spawn(
        name: &str,
        store: &VikingStore,
        mode: AuthMode,
        root_key: &str,
        port: u16,
    ) -> Result<OpenViking> {
        let dir = TempDir::new(&format!("openviking-{name}"))?;
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(&workspace)?;
        std::os::unix::fs::symlink(store.path(), workspace.join("viking"))?;
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let config = server_config(&workspace, &mode, root_key);
        let config_path = dir.path().join("ov.conf");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let mut cmd = Command::new(openviking_server_path());
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--port")
            .arg(port.to_string())
            .current_dir(dir.path())
            .env("HOME", &home)
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("PYTHONUNBUFFERED", "1");
        let proc = Proc::spawn(name, cmd, &dir.path().join("openviking.log"))?;
        Ok(OpenViking {
            proc: Some(proc),
            port,
            root_key: root_key.to_string(),
            name: name.to_string(),
            _dir: dir,
        })
    }

    /// Waits until `GET /health` answers 200; fails with the log's tail if the process exits
    /// or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let client = crate::Client::new(Duration::from_secs(2));
        loop {
            if let Ok(r) = client.get(&format!("{}/health", self.url()), &[]) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            let exited = self.proc.as_mut().and_then(|p| p.exited());
            if exited.is_some() || Instant::now() > deadline {
                return Err(Error::msg(format!(
                    "{}: not ready ({}) on port {}; log tail:\n{}",
                    self.name,
                    if exited.is_some() {
                        "exited"
                    } else {
                        "timeout"
                    },
                    self.port,
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `server.root_api_key`.
    pub fn root_key(&self) -> &str {
        &self.root_key
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let Some(p) = &self.proc else {
            return String::new();
        };
        let text = std::fs::read_to_string(p.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The instance's `ov.conf`: offline embedding, its workspace, the auth mode.
fn server_config(workspace: &Path, mode: &AuthMode, root_key: &str) -> serde_json::Value {
    let (auth_mode, hashing) = match mode {
        AuthMode::ApiKey { hashing } => ("api_key", *hashing),
        AuthMode::Trusted => ("trusted", false),
    };
    let mut config = json!({
        "storage": {"workspace": workspace},
        "embedding": {"dense": {"provider": "openai", "model": "text-embedding-3-small",
                                "api_key": "unused", "api_base": "http://127.0.0.1:9/v1",
                                "dimension": 64}},
        "server": {"host": "127.0.0.1", "auth_mode": auth_mode, "root_api_key": root_key,
                   "api_key_watch_enabled": false}
    });
    if hashing {
        config["encryption"] = json!({"api_key_hashing": {"enabled": true}});
    }
    config
}
