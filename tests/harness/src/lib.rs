//! keygate-harness: starts keygate's moving parts as child processes and talks HTTP to them.
//!
//! Used by the end-to-end tests, the demo (`keygate-demo`) and the benches. Native only,
//! blocking (std threads). Every child runs in its own process group and is killed, with its
//! group, on drop, on explicit stop, and by the kernel if the harness process dies (see
//! [`process`]). Missing artifacts panic with the command that builds them: tests fail,
//! never skip.
//!
//! The layout of [`TwoInstances`]: one keystore, one echo upstream, Envoy A (`keygate-a`) and
//! Envoy B (`keygate-b`) with 2 workers each, both rendered from `envoy/envoy.yaml.tmpl`.

mod envoy;
mod error;
mod fake_store;
mod fault;
pub mod h2;
pub mod http;
mod keystore;
mod metrics;
mod openviking;
mod paths;
mod postgres;
pub mod process;
mod render;
mod steps;
mod stub_wasm;
mod tls;
mod tmp;
mod two;
mod upstream;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

pub use envoy::{Envoy, EnvoyOpts};
pub use error::{Error, Result};
pub use fake_store::FakeStore;
pub use fault::{Fault, FaultProxy};
pub use http::{get, request, send_json, Client, Response};
pub use keystore::{random_secret, rfc3339, unix_now, Keystore, KeystoreOpts};
pub use metrics::{
    parse_envoy_stats_json, parse_envoy_stats_text, parse_prometheus, prometheus_names,
    WASM_CUSTOM_PREFIX,
};
pub use openviking::{
    openviking_envoy_template, openviking_keygate_config, openviking_server_path, AuthMode,
    OpenViking, VikingStore, HOW_TO_GET_OPENVIKING,
};
pub use paths::{
    echo_path, envoy_path, envoy_template_path, keygatectl_path, keystore_path, repo_root,
    target_dir, wasm_path,
};
pub use postgres::{postgres_url, PgSchema, DATABASE_URL_VAR};
pub use render::{
    default_keygate_config, load_envoy_template, render_envoy_config, render_envoy_config_with,
    template_variant, EnvoyConfigExtras, EnvoyConfigParams, HARDENING_MARK,
};
pub use steps::Steps;
pub use stub_wasm::{stub_wasm, STUB_METRIC};
pub use tls::TestCa;
pub use tmp::TempDir;
pub use two::{TwoInstances, TwoOpts};
pub use upstream::Upstream;

/// A port on 127.0.0.1 that was free a moment ago, never the same twice in one process (so
/// parallel tests do not pick the same one). Panics if no port can be bound.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let port = match TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => error::fail(Error::msg(format!(
                "free_port: cannot bind 127.0.0.1:0: {e}"
            ))),
        };
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed.insert(port) {
            return port;
        }
    }
    error::fail(Error::msg("free_port: no fresh port after 1000 tries"))
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_free_and_distinct() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in &ports {
            assert_ne!(*p, 0);
        }
        assert!(port_is_free(ports[0]));
        let held = TcpListener::bind(("127.0.0.1", ports[1])).unwrap();
        assert!(!port_is_free(ports[1]));
        drop(held);
    }

    #[test]
    fn repo_root_holds_the_template() {
        assert!(
            envoy_template_path().is_file(),
            "{}",
            envoy_template_path().display()
        );
        assert!(repo_root().join("tests/harness/Cargo.toml").is_file());
    }
}
