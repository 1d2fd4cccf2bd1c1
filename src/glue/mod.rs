//! The Envoy glue: the only code that talks to proxy-wasm, compiled only for `wasm32-wasip1`.
//!
//! - `abi`: the raw ABI calls the glue makes itself (header map, shared queues);
//! - `host`: the [`crate::host::Host`] trait over proxy-wasm host calls;
//! - `root`: the root context (configuration, ticks, wake-ups through its shared queue, callout
//!   answers, resuming paused requests);
//! - `http`: the HTTP context (strip identity headers, read the key, ask the worker).

mod abi;
mod host;
mod http;
mod root;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use crate::request::act::{Refusal, RequestIo};
use crate::request::admission::Deferred;
use crate::request::key_ids::KeyIds;
use crate::worker::Worker;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}

/// What the root and HTTP contexts of one VM share.
pub(crate) struct Shared {
    pub worker: Worker,
    pub host: host::ProxyHost,
    /// What each paused request still needs when its verdict arrives (route, anonymity).
    pub deferred: HashMap<u32, Deferred>,
    /// The ids of keys seen recently (a hit then skips SHA-256).
    pub key_ids: KeyIds,
}

pub(crate) type SharedRef = Rc<RefCell<Shared>>;

/// [`RequestIo`] over proxy-wasm host calls, on the current (or effective) HTTP context.
pub(crate) struct Envoy;

impl RequestIo for Envoy {
    fn remove_header(&mut self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }

    fn set_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn add_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn send(&mut self, refusal: Refusal) {
        let _ = hostcalls::send_http_response(
            refusal.status(),
            refusal.headers(),
            Some(refusal.body().as_bytes()),
        );
    }
}
