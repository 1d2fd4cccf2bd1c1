//! The bench's own Envoy bootstrap and process.
//!
//! The project's template (`envoy/envoy.yaml.tmpl`) has one listener in front of an upstream;
//! the bench needs one Envoy with one listener per contender, every route answered by
//! `direct_response` (no upstream), so it renders its own bootstrap here. The keygate listener
//! configures the filter exactly as the template does (V8, `vm_id`/`root_id` `keygate`,
//! `fail_open: false`, the configuration as a `StringValue`, the `keystore` cluster).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use keygate_harness::process::{read_log, tail, Proc};
use keygate_harness::{Error, Result, TempDir};

/// The contenders, in the bench's canonical order (A to E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    NoAuth,
    Native,
    ExtAuthz,
    Floor,
    Keygate,
    Lua,
    /// keygate with the same configuration run from another build of the filter
    /// (`--baseline-wasm`): a before/after comparison inside one interleaved run.
    KeygateBaseline,
    /// Not a contender of the throughput phase: the herd's floor. No auth filter; Envoy's fault
    /// filter holds every request for the store's delay, then the route answers it. What Envoy
    /// itself costs to hold and answer N simultaneous requests, with nothing of keygate's.
    HerdFloor,
}

impl Contender {
    pub const ALL: [Contender; 6] = [
        Contender::NoAuth,
        Contender::Native,
        Contender::ExtAuthz,
        Contender::Floor,
        Contender::Keygate,
        Contender::Lua,
    ];

    /// The throughput phase's contenders in the order they run (A to F, then E's baseline
    /// right after E when there is one).
    pub fn throughput(with_baseline: bool) -> Vec<Contender> {
        let mut all = Contender::ALL.to_vec();
        if with_baseline {
            all.insert(5, Contender::KeygateBaseline);
        }
        all
    }

    /// Short name: listener name, stat prefix, table key.
    pub fn id(self) -> &'static str {
        match self {
            Contender::NoAuth => "none",
            Contender::Native => "native",
            Contender::ExtAuthz => "ext_authz",
            Contender::Floor => "floor",
            Contender::Keygate => "keygate",
            Contender::Lua => "lua",
            Contender::KeygateBaseline => "keygate_baseline",
            Contender::HerdFloor => "herd_floor",
        }
    }

    /// What it is, for the report.
    pub fn label(self) -> &'static str {
        match self {
            Contender::NoAuth => "no auth filter",
            Contender::Native => "native api_key_auth (C++)",
            Contender::ExtAuthz => "ext_authz (HTTP, in-memory)",
            Contender::Floor => "wasm floor",
            Contender::Keygate => "keygate (hit path)",
            Contender::Lua => "Lua filter (by hand, hit path)",
            Contender::KeygateBaseline => "keygate (baseline)",
            Contender::HerdFloor => "herd floor (no auth, requests held for the store's delay)",
        }
    }

    pub fn letter(self) -> char {
        match self {
            Contender::NoAuth => 'A',
            Contender::Native => 'B',
            Contender::ExtAuthz => 'C',
            Contender::Floor => 'D',
            Contender::Keygate => 'E',
            Contender::Lua => 'F',
            Contender::KeygateBaseline => 'G',
            Contender::HerdFloor => 'H',
        }
    }
}

/// What goes into a bench bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub admin_port: u16,
    /// Listeners to create, with their ports.
    pub listeners: Vec<(Contender, u16)>,
    /// The ext_authz service's listener (only used with [`Contender::ExtAuthz`]).
    pub authsvc_port: u16,
    pub keystore_port: u16,
    /// The one valid key: in the native filter's, the floor's and the auth service's config.
    pub bench_key: String,
    pub floor_wasm: PathBuf,
    pub keygate_wasm: PathBuf,
    /// The other build of the filter ([`Contender::KeygateBaseline`]); `None` without
    /// `--baseline-wasm`, when that contender is never listed.
    pub baseline_wasm: Option<PathBuf>,
    /// keygate's plugin configuration (JSON text).
    pub keygate_config: String,
    /// The Lua contender's source (`bench/lua_auth.lua`).
    pub lua_code: String,
    /// How long the herd floor ([`Contender::HerdFloor`]) holds each request (the store's delay).
    pub herd_delay_ms: u64,
}

/// Escapes a value for a YAML double-quoted scalar.
fn dq(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const ROUTER: &str = "          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
";

/// The route every contender answers with: 200 `ok`, no upstream.
const DIRECT_OK: &str = "              routes:
              - match: { prefix: \"/\" }
                direct_response: { status: 200, body: { inline_string: \"ok\\n\" } }
";

fn wasm_filter(name: &str, path: &Path, configuration: &str) -> String {
    format!(
        "          - name: envoy.filters.http.wasm
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                fail_open: false
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {file} }} }}
                configuration:
                  \"@type\": type.googleapis.com/google.protobuf.StringValue
                  value: {value}
",
        file = dq(&path.to_string_lossy()),
        value = dq(configuration),
    )
}

/// Envoy's fault filter delaying every request by `ms` (the herd floor's stand-in for a store).
fn fixed_delay(ms: u64) -> String {
    format!(
        "          - name: envoy.filters.http.fault
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              max_active_faults: 1000000
              delay:
                fixed_delay: {}.{:03}s
                percentage: {{ numerator: 100, denominator: HUNDRED }}
",
        ms / 1000,
        ms % 1000
    )
}

fn listener(name: &str, port: u16, routes: &str, filters: &str) -> String {
    format!(
        "  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            name: {name}
            virtual_hosts:
            - name: {name}
              domains: [\"*\"]
{routes}          http_filters:
{filters}{ROUTER}"
    )
}

fn cluster(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
"
    )
}

impl Bootstrap {
    pub fn render(&self) -> String {
        let key = dq(&self.bench_key);
        let mut listeners = String::new();
        let mut clusters = cluster("keystore", self.keystore_port);
        for (contender, port) in &self.listeners {
            let filters = match contender {
                Contender::NoAuth => String::new(),
                Contender::Native => format!(
                    "          - name: envoy.filters.http.api_key_auth
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              credentials:
              - {{ key: {key}, client: bench }}
              key_sources:
              - {{ header: x-api-key }}
              forwarding: {{ header: x-account-id }}
"
                ),
                Contender::ExtAuthz => "          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              allowed_headers:
                patterns: [{ exact: x-api-key }]
              http_service:
                server_uri: { uri: \"http://127.0.0.1\", cluster: authsvc, timeout: 1s }
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{ exact: x-account-id }]
"
                .to_string(),
                Contender::Floor => wasm_filter(
                    "floor",
                    &self.floor_wasm,
                    &format!("{} bench\n", self.bench_key),
                ),
                Contender::Keygate => {
                    wasm_filter("keygate", &self.keygate_wasm, &self.keygate_config)
                }
                // Its own vm_id: its own VM and shared data, as a separate deployment has.
                Contender::KeygateBaseline => wasm_filter(
                    "keygate_baseline",
                    self.baseline_wasm.as_deref().unwrap_or(&self.keygate_wasm),
                    &self.keygate_config,
                ),
                Contender::Lua => format!(
                    "          - name: envoy.filters.http.lua
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code: {{ inline_string: {} }}
",
                    dq(&self.lua_code)
                ),
                Contender::HerdFloor => fixed_delay(self.herd_delay_ms),
            };
            listeners.push_str(&listener(contender.id(), *port, DIRECT_OK, &filters));
            if *contender == Contender::ExtAuthz {
                // The auth service: answers from memory, by header match. 200 with the
                // identity header for the bench key, 401 for anything else.
                let routes = format!(
                    "              routes:
              - match:
                  prefix: \"/\"
                  headers:
                  - name: x-api-key
                    string_match: {{ exact: {key} }}
                direct_response: {{ status: 200 }}
                response_headers_to_add:
                - header: {{ key: x-account-id, value: bench }}
              - match: {{ prefix: \"/\" }}
                direct_response: {{ status: 401 }}
"
                );
                listeners.push_str(&listener("authsvc", self.authsvc_port, &routes, ""));
                clusters.push_str(&cluster("authsvc", self.authsvc_port));
            }
        }
        format!(
            "# Rendered by keygate-bench (bench/runner/src/envoy.rs). Not the project's template:
# one listener per contender, every route a direct_response.
node: {{ id: keygate-bench, cluster: keygate-bench }}
stats_config:
  stats_tags:
  - {{ tag_name: outcome, regex: '(outcome=\\.=(.*?);\\.;)' }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
{listeners}  clusters:
{clusters}overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 50000
",
            admin = self.admin_port,
        )
    }
}

/// A running bench Envoy; killed (its process group) on drop.
pub struct BenchEnvoy {
    proc: Option<Proc>,
    admin_port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl BenchEnvoy {
    /// Starts `envoy` on `bootstrap` with `concurrency` workers, pinned to `cpus` (taskset
    /// list) if given, and waits until admin `/ready` says `LIVE`.
    pub fn start(
        envoy: &Path,
        bootstrap: &Bootstrap,
        concurrency: u32,
        cpus: Option<&str>,
    ) -> Result<BenchEnvoy> {
        let dir = TempDir::new("bench-envoy")?;
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap.render())?;
        let log = dir.path().join("envoy.log");
        let mut cmd = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(envoy);
                c
            }
            None => Command::new(envoy),
        };
        cmd.arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("-l")
            .arg("warning");
        let proc = Proc::spawn("bench envoy", cmd, &log)?;
        let mut e = BenchEnvoy {
            proc: Some(proc),
            admin_port: bootstrap.admin_port,
            log,
            _dir: dir,
        };
        e.wait_ready(Duration::from_secs(30))?;
        Ok(e)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/ready", self.admin_url());
        loop {
            if let Some(p) = self.proc.as_mut() {
                if let Some(st) = p.exited() {
                    return Err(Error::msg(format!(
                        "bench envoy exited ({st}); log tail:\n{}",
                        tail(&read_log(&self.log), 40)
                    )));
                }
            }
            if let Ok(r) = keygate_harness::get(&url, &[]) {
                if r.status == 200 && r.body.trim() == "LIVE" {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::msg(format!(
                    "bench envoy not LIVE after {timeout:?}; log tail:\n{}",
                    tail(&read_log(&self.log), 40)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Envoy's counters and gauges.
    pub fn stats(&self) -> Result<std::collections::HashMap<String, u64>> {
        let url = format!("{}/stats?format=json", self.admin_url());
        let r = keygate_harness::get(&url, &[])?;
        if r.status != 200 {
            return Err(Error::msg(format!("{url}: status {}", r.status)));
        }
        keygate_harness::parse_envoy_stats_json(&r.body)
    }

    /// CPU time (user + system, seconds) Envoy has used so far, all threads.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(pid) = self.proc.as_ref().map(Proc::pid) else {
            return f64::NAN;
        };
        crate::cpu::process_cpu_seconds(pid)
    }

    /// The first `n` distinct error lines of the log (timestamps and thread ids dropped).
    pub fn error_lines(&self, n: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for line in read_log(&self.log).lines() {
            let Some(at) = line.find("[error]") else {
                continue;
            };
            let msg = line.get(at..).unwrap_or(line).trim().to_string();
            if !out.contains(&msg) {
                out.push(msg);
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&read_log(&self.log), n)
    }

    /// Whether it is still running.
    pub fn check_running(&mut self) -> Result<()> {
        match self.proc.as_mut().and_then(Proc::exited) {
            Some(st) => Err(Error::msg(format!(
                "bench envoy exited ({st}); log tail:\n{}",
                self.log_tail(40)
            ))),
            None => Ok(()),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
}

impl Drop for BenchEnvoy {
    fn drop(&mut self) {
        self.stop();
    }
}
