//! Envoy-side faults, with an Envoy whose listener is in a file-based dynamic config (LDS):
//! the filter's configuration replaced while requests are in flight, and a herd of paused
//! requests answered at once by routes Envoy serves itself (`direct_response`).
#![cfg(not(target_arch = "wasm32"))]
// Tests: panicking on a failed expectation is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use keygate_harness::process::Proc;
use keygate_harness::{
    envoy_path, free_port, wasm_path, Client, Keystore, KeystoreOpts, TempDir, Upstream,
};
use serde_json::json;

fn listener(port: u16, wasm: &str, keygate_config: &str) -> String {
    // The filter configuration is JSON inside a YAML double-quoted string.
    let escaped = keygate_config.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: api
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: api
        route_config:
          virtual_hosts:
          - name: api
            domains: ["*"]
            routes:
            - match: {{ prefix: "/direct" }}
              direct_response: {{ status: 200, body: {{ inline_string: "direct" }} }}
            - match: {{ prefix: "/" }}
              route: {{ cluster: upstream }}
        http_filters:
        - name: envoy.filters.http.wasm
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
            config:
              name: keygate
              root_id: keygate
              fail_open: false
              vm_config:
                vm_id: keygate
                runtime: envoy.wasm.runtime.v8
                code: {{ local: {{ filename: "{wasm}" }} }}
              configuration:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: "{escaped}"
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

fn bootstrap(dir: &str, admin: u16, upstream: u16, keystore: u16) -> String {
    let cluster = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
        )
    };
    format!(
        "node: {{ id: keygate-reload, cluster: keygate }}\n\
         admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\n\
         dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {dir}/lds.yaml\n      watched_directory: {{ path: {dir} }}\n\
         static_resources:\n  clusters:\n{}{}",
        cluster("upstream", upstream),
        cluster("keystore", keystore)
    )
}

fn write_atomically(dir: &std::path::Path, text: &str) {
    let tmp = dir.join("lds.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("lds.yaml")).unwrap();
}

/// An Envoy (2 workers) whose listener, with keygate, lives in `lds.yaml`.
struct LdsEnvoy {
    port: u16,
    wasm: String,
    dir: TempDir,
    _upstream: Upstream,
    _proc: Proc,
}

impl LdsEnvoy {
    fn start(keystore: &Keystore, keygate_config: &str) -> LdsEnvoy {
        let upstream = Upstream::start().unwrap();
        let dir = TempDir::new("keygate-lds").unwrap();
        let (port, admin) = (free_port(), free_port());
        let wasm = wasm_path().display().to_string();
        write_atomically(dir.path(), &listener(port, &wasm, keygate_config));
        let boot = dir.path().join("bootstrap.yaml");
        let text = bootstrap(
            &dir.path().display().to_string(),
            admin,
            upstream.port(),
            keystore.port(),
        );
        std::fs::write(&boot, text).unwrap();
        let mut cmd = Command::new(envoy_path());
        cmd.arg("-c").arg(&boot);
        cmd.args([
            "--concurrency",
            "2",
            "--use-dynamic-base-id",
            "-l",
            "info",
            "--drain-time-s",
            "2",
        ]);
        let proc = Proc::spawn("envoy-lds", cmd, &dir.path().join("envoy.log")).unwrap();
        LdsEnvoy {
            port,
            wasm,
            dir,
            _upstream: upstream,
            _proc: proc,
        }
    }

    /// Replaces the listener with one whose filter has `keygate_config`.
    fn configure(&self, keygate_config: &str) {
        write_atomically(
            self.dir.path(),
            &listener(self.port, &self.wasm, keygate_config),
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

#[test]
fn replacing_the_filter_configuration_under_load_loses_no_request() {
    let keystore = Keystore::start(KeystoreOpts::default()).unwrap();
    let key = keystore.create_account("acme", "alice");
    let config_v2 = config_with(
        json!({"cache": {"ttl_s": 77}, "identity_headers": {"role": "x-keygate-role"}}),
    )
    .to_string();
    let envoy = LdsEnvoy::start(&keystore, &config().to_string());
    let url = format!("http://127.0.0.1:{}/r", envoy.port);
    within(Duration::from_secs(20), "listener up", || {
        client()
            .get(&url, &[("x-api-key", &key)])
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
    let stop = AtomicBool::new(false);
    let (ok, bad, role_v2) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let c = Client::new(Duration::from_secs(10));
                while !stop.load(Ordering::Relaxed) {
                    match c.get(&url, &[("x-api-key", &key)]) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if upstream_headers(&r).get("x-keygate-role").is_some() {
                                role_v2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{:?}", other.map(|r| (r.status, r.body))));
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(800));
        envoy.configure(&config_v2);
        within(
            Duration::from_secs(10),
            "new configuration in effect",
            || role_v2.load(Ordering::Relaxed) > 0,
        );
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, Ordering::Relaxed);
    });
    let text = envoy.log_text();
    println!(
        "reload under load: {} x 200 ({} with the new configuration), {} failed",
        ok.load(Ordering::Relaxed),
        role_v2.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed)
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "{:?}",
        failures.lock().unwrap()
    );
    assert!(
        text.contains("ttl 77 s"),
        "the new filter configuration was applied:\n{text}"
    );
    assert!(!text.contains("panicked") && !text.contains("wasm trap"));
}

/// Found by the bench: ~500 paused requests resumed at once from the root context, each going
/// on to a `direct_response`, trapped the VM ("Maximum call stack size exceeded"): Envoy runs
/// each resumed request's response callbacks into the VM nested inside the previous one's.
#[test]
fn a_herd_of_1000_answered_by_direct_responses_traps_nothing() {
    let keystore = Keystore::start(KeystoreOpts {
        lookup_delay_ms: Some(300),
        ..KeystoreOpts::default()
    })
    .unwrap();
    keystore.create_account("acme", "alice");
    let key = keystore.create_user("acme", "bob", "member");
    let envoy = LdsEnvoy::start(&keystore, &config().to_string());
    let up = format!("http://127.0.0.1:{}/direct", envoy.port);
    within(Duration::from_secs(20), "listener up", || {
        client()
            .get(&up, &[])
            .map(|r| r.status == 401)
            .unwrap_or(false)
    });
    let barrier = std::sync::Barrier::new(1000);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..1000)
            .map(|_| {
                let (barrier, up, key) = (&barrier, &up, &key);
                s.spawn(move || {
                    let c = Client::new(Duration::from_secs(20));
                    barrier.wait();
                    c.get(up, &[("x-api-key", key)])
                        .map(|r| r.status)
                        .unwrap_or(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let log = envoy.log_text();
    println!("herd of 1000 on direct responses: {ok} x 200");
    assert!(
        !log.contains("Maximum call stack") && !log.contains("wasm trap"),
        "the VM trapped"
    );
    assert_eq!(
        ok,
        1000,
        "statuses other than 200: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
}
