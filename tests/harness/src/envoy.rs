//! Envoy instances rendered from `envoy/envoy.yaml.tmpl`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{fail, Error, Result};
use crate::http::Client;
use crate::process::{file_len, read_log, read_log_from, tail, Proc};
use crate::render::{
    load_envoy_template, render_envoy_config_with, EnvoyConfigExtras, EnvoyConfigParams,
};
use crate::tmp::TempDir;

/// How to start an [`Envoy`].
#[derive(Debug, Clone)]
pub struct EnvoyOpts {
    /// `node.id` (e.g. `keygate-a`); also names the instance in messages.
    pub node_id: String,
    /// The filter configuration, rendered as pretty JSON.
    pub keygate_config: Value,
    /// If set, used verbatim instead of `keygate_config` (e.g. invalid JSON for config tests).
    pub keygate_config_raw: Option<String>,
    /// Port of the `upstream` cluster.
    pub upstream_port: u16,
    /// Port of the `keystore` cluster.
    pub keystore_port: u16,
    /// More replicas in the `keystore` cluster (ports on 127.0.0.1), after `keystore_port`.
    pub more_keystore_ports: Vec<u16>,
    /// `--concurrency`: worker threads (default 2).
    pub concurrency: u32,
    /// `-l`: log level (default `warning`).
    pub log_level: String,
    /// More command-line arguments.
    pub extra_args: Vec<String>,
    /// Listener port; `None` picks a free one.
    pub listen_port: Option<u16>,
    /// Admin port; `None` picks a free one.
    pub admin_port: Option<u16>,
    /// The filter; `None` is [`crate::wasm_path`].
    pub wasm_path: Option<PathBuf>,
    /// The Envoy binary; `None` is [`crate::envoy_path`].
    pub envoy_path: Option<PathBuf>,
    /// How long to wait for `/ready` to say `LIVE` (default 20 s).
    pub ready_timeout: Duration,
    /// The bootstrap template's text; `None` is `envoy/envoy.yaml.tmpl` (see
    /// [`crate::template_variant`]).
    pub template: Option<String>,
    /// Render the template without Envoy's path normalisation and underscore-header settings
    /// (`# keygate:hardening` lines): for tests of the filter's own defences.
    pub without_envoy_hardening: bool,
}

impl EnvoyOpts {
    /// Options with the defaults: 2 workers, log level `warning`, free ports.
    pub fn new(
        node_id: &str,
        keygate_config: Value,
        upstream_port: u16,
        keystore_port: u16,
    ) -> EnvoyOpts {
        EnvoyOpts {
            node_id: node_id.to_string(),
            keygate_config,
            keygate_config_raw: None,
            upstream_port,
            keystore_port,
            more_keystore_ports: Vec::new(),
            concurrency: 2,
            log_level: "warning".to_string(),
            extra_args: Vec::new(),
            listen_port: None,
            admin_port: None,
            wasm_path: None,
            envoy_path: None,
            ready_timeout: Duration::from_secs(20),
            template: None,
            without_envoy_hardening: false,
        }
    }

    /// The configuration text that goes into the template.
    pub fn config_text(&self) -> String {
        match &self.keygate_config_raw {
            Some(raw) => raw.clone(),
            None => serde_json::to_string_pretty(&self.keygate_config)
                .unwrap_or_else(|_| self.keygate_config.to_string()),
        }
    }
}

/// A running Envoy; killed (its whole process group) on drop.
#[derive(Debug)]
pub struct Envoy {
    proc: Option<Proc>,
    opts: EnvoyOpts,
    envoy_bin: PathBuf,
    listen_port: u16,
    admin_port: u16,
    config_path: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

/// How a start attempt ended.
enum Outcome {
    Ready,
    Exited(String),
    TimedOut,
}

/// How many times [`Envoy::start`] tries new ports when one it picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

impl Envoy {
    /// Renders the template, starts Envoy and waits until admin `/ready` says `LIVE`. On
    /// timeout or early exit, the error holds the log tail.
    pub fn start(opts: EnvoyOpts) -> Result<Envoy> {
        let mut envoy = Envoy::prepare(opts)?;
        for attempt in 1..=PORT_ATTEMPTS {
            let from = file_len(&envoy.log);
            match envoy.launch()? {
                Outcome::Ready => return Ok(envoy),
                Outcome::Exited(why) => {
                    let log = read_log_from(&envoy.log, from);
                    let port_taken = log.contains("ddress already in use");
                    let ports_fixed =
                        envoy.opts.listen_port.is_some() && envoy.opts.admin_port.is_some();
                    if port_taken && !ports_fixed && attempt < PORT_ATTEMPTS {
                        envoy.pick_ports();
                        continue;
                    }
                    return Err(Error::msg(format!(
                        "envoy {} {why}; log tail:\n{}",
                        envoy.opts.node_id,
                        tail(&log, 40)
                    )));
                }
                Outcome::TimedOut => {
                    if let Some(mut p) = envoy.proc.take() {
                        p.kill();
                    }
                    return Err(Error::msg(format!(
                        "envoy {} not LIVE after {:?}; log tail:\n{}",
                        envoy.opts.node_id,
                        envoy.opts.ready_timeout,
                        tail(&read_log_from(&envoy.log, from), 40)
                    )));
                }
            }
        }
        Err(Error::msg("envoy: no free ports"))
    }

    /// Starts Envoy expecting it to fail (e.g. a rejected filter configuration): returns its
    /// log once it has exited, or if it is still not ready after `ready_timeout`. Fails if it
    /// becomes ready.
    pub fn start_expect_failure(opts: EnvoyOpts) -> Result<String> {
        let mut envoy = Envoy::prepare(opts)?;
        match envoy.launch()? {
            Outcome::Ready => Err(Error::msg(format!(
                "envoy {} became ready, but it was expected to fail; log tail:\n{}",
                envoy.opts.node_id,
                tail(&envoy.log_text(), 20)
            ))),
            Outcome::Exited(_) => Ok(envoy.log_text()),
            Outcome::TimedOut => {
                envoy.kill();
                Ok(envoy.log_text())
            }
        }
    }

    fn prepare(opts: EnvoyOpts) -> Result<Envoy> {
        let envoy_bin = opts.envoy_path.clone().unwrap_or_else(crate::envoy_path);
        let dir = TempDir::new(&format!("envoy-{}", sanitize(&opts.node_id)))?;
        let mut envoy = Envoy {
            proc: None,
            envoy_bin,
            listen_port: 0,
            admin_port: 0,
            config_path: dir.path().join("envoy.yaml"),
            log: dir.path().join("envoy.log"),
            opts,
            dir,
        };
        envoy.pick_ports();
        Ok(envoy)
    }

    fn pick_ports(&mut self) {
        self.listen_port = self.opts.listen_port.unwrap_or_else(crate::free_port);
        self.admin_port = self.opts.admin_port.unwrap_or_else(crate::free_port);
    }

    /// Renders the config, spawns Envoy and waits for it.
    fn launch(&mut self) -> Result<Outcome> {
        let wasm = self.opts.wasm_path.clone().unwrap_or_else(crate::wasm_path);
        let config = self.opts.config_text();
        let template = match &self.opts.template {
            Some(t) => t.clone(),
            None => load_envoy_template()?,
        };
        let rendered = render_envoy_config_with(
            &template,
            &EnvoyConfigParams {
                node_id: &self.opts.node_id,
                listen_port: self.listen_port,
                admin_port: self.admin_port,
                upstream_port: self.opts.upstream_port,
                keystore_port: self.opts.keystore_port,
                wasm_path: &wasm,
                keygate_config: &config,
            },
            &EnvoyConfigExtras {
                more_keystore_ports: self.opts.more_keystore_ports.clone(),
                without_envoy_hardening: self.opts.without_envoy_hardening,
            },
        )?;
        std::fs::write(&self.config_path, rendered)?;
        let mut cmd = Command::new(&self.envoy_bin);
        cmd.arg("-c")
            .arg(&self.config_path)
            .arg("--use-dynamic-base-id")
            .arg("--concurrency")
            .arg(self.opts.concurrency.to_string())
            .arg("-l")
            .arg(&self.opts.log_level)
            .args(&self.opts.extra_args);
        let name = format!("envoy {}", self.opts.node_id);
        self.proc = Some(Proc::spawn(&name, cmd, &self.log)?);
        Ok(self.wait_ready())
    }

    fn wait_ready(&mut self) -> Outcome {
        let deadline = Instant::now() + self.opts.ready_timeout;
        let client = Client::new(Duration::from_secs(1));
        let ready_url = format!("{}/ready", self.admin_url());
        loop {
            let Some(proc) = self.proc.as_mut() else {
                return Outcome::Exited("was not started".into());
            };
            if let Some(st) = proc.exited() {
                self.proc = None;
                return Outcome::Exited(format!("exited ({st})"));
            }
            if let Ok(r) = client.get(&ready_url, &[]) {
                if r.status == 200 && r.body.trim() == "LIVE" {
                    return Outcome::Ready;
                }
            }
            if Instant::now() >= deadline {
                return Outcome::TimedOut;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The API listener, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listen_port)
    }

    /// The admin interface, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The API listener's port.
    pub fn port(&self) -> u16 {
        self.listen_port
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Its node id.
    pub fn node_id(&self) -> &str {
        &self.opts.node_id
    }

    /// The options it was started with.
    pub fn opts(&self) -> &EnvoyOpts {
        &self.opts
    }

    /// The rendered bootstrap file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Its temp dir (config and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file (stdout and stderr, all runs).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Whether it is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Counters and gauges from admin `/stats?format=json`. Panics if the admin does not answer.
    pub fn stats(&self) -> HashMap<String, u64> {
        match self.try_stats() {
            Ok(s) => s,
            Err(e) => fail(e),
        }
    }

    /// Counters and gauges from admin `/stats?format=json`.
    pub fn try_stats(&self) -> Result<HashMap<String, u64>> {
        let url = format!("{}/stats?format=json", self.admin_url());
        let r = crate::http::get(&url, &[])?;
        if r.status != 200 {
            return Err(Error::msg(format!("{url}: status {}", r.status)));
        }
        crate::parse_envoy_stats_json(&r.body).map_err(|e| e.context(url))
    }

    /// One stat. Panics if Envoy has no stat of that name (the message lists the `keygate_*`
    /// ones it has), so a misspelt name fails loudly instead of reading 0.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        match stats.get(name) {
            Some(v) => *v,
            None => {
                let mut known: Vec<&String> =
                    stats.keys().filter(|k| k.starts_with("keygate")).collect();
                known.sort();
                fail(Error::msg(format!(
                    "envoy {} has no stat {name:?}; keygate stats: {known:?}",
                    self.opts.node_id
                )))
            }
        }
    }

    /// One stat, `None` if absent.
    pub fn stat_opt(&self, name: &str) -> Option<u64> {
        self.stats().get(name).copied()
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Stops it if running and starts it again with the same options and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let from = file_len(&self.log);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.launch()? {
                Outcome::Ready => return Ok(()),
                Outcome::Exited(why) => {
                    let log = read_log_from(&self.log, from);
                    // The old process's ports may linger for a moment.
                    if log.contains("ddress already in use") && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    return Err(Error::msg(format!(
                        "envoy {} restart: {why}; log tail:\n{}",
                        self.opts.node_id,
                        tail(&log, 40)
                    )));
                }
                Outcome::TimedOut => {
                    self.kill();
                    return Err(Error::msg(format!(
                        "envoy {} restart: not LIVE after {:?}; log tail:\n{}",
                        self.opts.node_id,
                        self.opts.ready_timeout,
                        tail(&read_log_from(&self.log, from), 40)
                    )));
                }
            }
        }
    }
}

/// `s` with anything but `[A-Za-z0-9_-]` replaced, for file names.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
