//! The standard layout: one keystore, one upstream, Envoy A and Envoy B.

use serde_json::Value;

use crate::envoy::{Envoy, EnvoyOpts};
use crate::error::Result;
use crate::keystore::{Keystore, KeystoreOpts};
use crate::upstream::Upstream;

/// Options for [`TwoInstances::start_with`].
#[derive(Debug, Clone)]
pub struct TwoOpts {
    /// The filter configuration, the same for A and B.
    pub keygate_config: Value,
    /// The keystore's options.
    pub keystore: KeystoreOpts,
    /// Workers per Envoy (default 2).
    pub concurrency: u32,
    /// Envoy log level (default `warning`).
    pub log_level: String,
    /// Upstream port (`None`: a free one).
    pub upstream_port: Option<u16>,
    /// Envoy A's listener and admin ports (`None`: free ones).
    pub a_ports: Option<(u16, u16)>,
    /// Envoy B's listener and admin ports (`None`: free ones).
    pub b_ports: Option<(u16, u16)>,
    /// The bootstrap template's text (`None`: `envoy/envoy.yaml.tmpl`).
    pub template: Option<String>,
}

impl TwoOpts {
    /// Defaults around `keygate_config`: 2 workers each, free ports, a fresh keystore.
    pub fn new(keygate_config: Value) -> TwoOpts {
        TwoOpts {
            keygate_config,
            keystore: KeystoreOpts::default(),
            concurrency: 2,
            log_level: "warning".to_string(),
            upstream_port: None,
            a_ports: None,
            b_ports: None,
            template: None,
        }
    }
}

/// A keystore, an echo upstream and two Envoys (`keygate-a`, `keygate-b`) in front of them.
/// Dropping it kills everything (the Envoys first).
#[derive(Debug)]
pub struct TwoInstances {
    /// Envoy A (node `keygate-a`).
    pub a: Envoy,
    /// Envoy B (node `keygate-b`).
    pub b: Envoy,
    /// The echo upstream.
    pub upstream: Upstream,
    /// The key store.
    pub keystore: Keystore,
}

impl TwoInstances {
    /// Starts everything with `keygate_config` and the defaults of [`TwoOpts::new`].
    pub fn start(keygate_config: Value) -> Result<TwoInstances> {
        TwoInstances::start_with(TwoOpts::new(keygate_config))
    }

    /// Starts the keystore, the upstream, then A and B.
    pub fn start_with(opts: TwoOpts) -> Result<TwoInstances> {
        let keystore = Keystore::start(opts.keystore.clone())?;
        let upstream = Upstream::start_on(opts.upstream_port.unwrap_or(0))?;
        let envoy = |node: &str, ports: Option<(u16, u16)>| {
            let mut o = EnvoyOpts::new(
                node,
                opts.keygate_config.clone(),
                upstream.port(),
                keystore.port(),
            );
            o.concurrency = opts.concurrency;
            o.log_level = opts.log_level.clone();
            o.listen_port = ports.map(|p| p.0);
            o.admin_port = ports.map(|p| p.1);
            o.template = opts.template.clone();
            Envoy::start(o)
        };
        let a = envoy("keygate-a", opts.a_ports)?;
        let b = envoy("keygate-b", opts.b_ports)?;
        Ok(TwoInstances {
            a,
            b,
            upstream,
            keystore,
        })
    }

    /// Both Envoys, A then B.
    pub fn envoys(&self) -> [&Envoy; 2] {
        [&self.a, &self.b]
    }
}
