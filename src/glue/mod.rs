//! The Envoy glue: the only code that talks to proxy-wasm, compiled only for `wasm32-wasip1`.
//!
//! - `host`: the [`crate::host::Host`] trait over proxy-wasm host calls;
//! - `root`: the root context (configuration, ticks, callout answers, resuming paused requests);
//! - `http`: the HTTP context (strip identity headers, read the key, ask the worker).

mod host;
mod http;
mod root;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

use crate::host::Metric;
use crate::request::{self, Action, Refusal};
use crate::verdict::Outcome;
use crate::worker::Worker;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}

/// What the root and HTTP contexts of one VM share.
pub(crate) struct Shared {
    pub worker: Worker,
    pub host: host::ProxyHost,
    /// Paths of paused requests (`required_roles` is applied when their verdict arrives).
    pub paused_paths: HashMap<u32, String>,
}

pub(crate) type SharedRef = Rc<RefCell<Shared>>;

/// Carries out a decided outcome on the current (or effective) HTTP context: sets the identity
/// headers and returns true (the caller continues or resumes the request), or sends the refusal.
pub(crate) fn apply(shared: &Shared, outcome: &Outcome, path: &str) -> bool {
    let host = &shared.host;
    let cfg = shared.worker.config();
    match request::act(cfg, outcome, path) {
        Action::Forward { headers } => {
            for (name, value) in headers {
                let _ = proxy_wasm::hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    name,
                    Some(value),
                );
            }
            use crate::host::Host;
            host.count(Metric::Allowed, 1);
            if matches!(outcome, Outcome::Allow { stale: true, .. }) {
                host.count(Metric::StaleServed, 1);
            }
            true
        }
        Action::Refuse(refusal) => {
            refuse(host, refusal);
            false
        }
    }
}

pub(crate) fn refuse(host: &host::ProxyHost, refusal: Refusal) {
    use crate::host::Host;
    let metric = match refusal {
        Refusal::Unauthorized => Metric::Denied,
        Refusal::Forbidden => Metric::Forbidden,
        Refusal::Unavailable => Metric::Unavailable,
        Refusal::Throttled => Metric::Throttled,
    };
    host.count(metric, 1);
    let _ = proxy_wasm::hostcalls::send_http_response(
        refusal.status(),
        refusal.headers(),
        Some(refusal.body().as_bytes()),
    );
}
