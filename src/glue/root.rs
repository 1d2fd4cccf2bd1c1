//! The root context: one per worker VM (and one on Envoy's main thread).
//!
//! Each root registers a shared queue of its own (named by the worker,
//! [`crate::worker::Worker::wake_queue`]); an item in it means "the worker asked for a wake-up"
//! and `on_queue_ready` runs [`crate::worker::Worker::on_wake`]. Invariant: every root callback
//! hands out at most the one batch of answers the worker returns.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::host::ProxyHost;
use super::http::Http;
use super::{Envoy, Shared, SharedRef};
use crate::config::Config;
use crate::host::CallResponse;
use crate::request::act::{self, Refusal};
use crate::request::key_ids::KeyIds;
use crate::verdict::{Outcome, Resolution, Source};
use crate::worker::Worker;

#[derive(Default)]
pub(crate) struct Root {
    shared: Option<SharedRef>,
}

impl Root {
    /// Answers paused requests: each on its own HTTP context, made effective first.
    fn deliver(&self, resolutions: Vec<Resolution>) {
        let Some(shared) = &self.shared else { return };
        let Ok(mut s) = shared.try_borrow_mut() else {
            return;
        };
        let s = &mut *s;
        let cfg = Rc::clone(s.worker.config());
        for r in resolutions {
            let deferred = s.deferred.remove(&r.context_id);
            // The request may have ended meanwhile (client gone): then there is nothing to do.
            if hostcalls::set_effective_context(r.context_id).is_err() {
                continue;
            }
            let goes_on = match &deferred {
                Some(d) => {
                    act::finish(&cfg, &s.host, &mut Envoy, &r.outcome, &d.route, d.anonymous)
                }
                // Unknown route: never guess one (a rule could be skipped).
                None => {
                    act::refuse(&s.host, &mut Envoy, Refusal::Unavailable);
                    false
                }
            };
            if goes_on {
                let _ = hostcalls::resume_http_request();
            }
        }
        let keep = s.worker.waiters().saturating_mul(2);
        s.deferred.shrink_to(keep);
        // Local admin writes whose change every worker now knows: their responses go on.
        let s = &mut *s;
        for context_id in s.worker.take_released_writers(&s.host) {
            if hostcalls::set_effective_context(context_id).is_ok() {
                let _ = hostcalls::resume_http_response();
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(shared) = &self.shared else { return };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        // The worker says how much of this call's answer to read.
        let limit = match shared.try_borrow() {
            Ok(s) => s.worker.body_limit(token_id),
            Err(_) => return,
        };
        let body = if body_size <= limit {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .map(Option::unwrap_or_default)
        } else {
            None
        };
        let response = CallResponse { status, body };
        let resolutions = match shared.try_borrow_mut() {
            Ok(mut s) => {
                let s = &mut *s;
                s.worker.on_call_response(&s.host, token_id, &response)
            }
            Err(_) => return,
        };
        self.deliver(resolutions);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let cfg = match Config::from_json(&bytes) {
            Ok(cfg) => Rc::new(cfg),
            Err(e) => {
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        let (Ok(k0), Ok(k1)) = (getrandom::u64(), getrandom::u64()) else {
            log::error!("no randomness from the host (WASI random_get) for the key-id memo");
            return false;
        };
        let key_ids = KeyIds::new(
            [k0, k1],
            cfg.cache
                .max_entries
                .saturating_add(cfg.cache.negative_max_entries),
        );
        let host = ProxyHost::new(&cfg.store);
        let worker = match Worker::new(&host, Rc::clone(&cfg)) {
            Ok(w) => w,
            Err(e) => {
                log::error!("could not set up shared data: {e:?}");
                return false;
            }
        };
        host.register_wake_queue(&worker.wake_queue());
        if let Some(old) = self.shared.take() {
            // Reconfigured: requests paused on the old worker get a 503 rather than hang, and
            // its held admin writes go on (`deliver` resumes them).
            let waiters: Vec<u32> = {
                let mut s = old.borrow_mut();
                let s = &mut *s;
                s.worker.abandon_writers(&s.host);
                s.deferred.keys().copied().collect()
            };
            self.shared = Some(old);
            self.deliver(
                waiters
                    .into_iter()
                    .map(|context_id| Resolution {
                        context_id,
                        outcome: Outcome::Unavailable,
                        source: Source::NoVerdict,
                    })
                    .collect(),
            );
        }
        log::info!(
            "configured (store cluster {}, ttl {} s, negative ttl {} s, sync every {} ms, worker {})",
            cfg.store.cluster,
            cfg.cache.ttl_ms / 1000,
            cfg.cache.negative_ttl_ms / 1000,
            cfg.sync.interval_ms,
            worker.owner()
        );
        self.shared = Some(Rc::new(RefCell::new(Shared {
            worker,
            host,
            deferred: Default::default(),
            key_ids,
        })));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        let resolutions = match shared.try_borrow_mut() {
            Ok(mut s) => {
                let s = &mut *s;
                s.worker.on_tick(&s.host)
            }
            Err(_) => return,
        };
        self.deliver(resolutions);
    }

    /// The wake-up the worker asked for: the next batch of answers.
    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(shared) = &self.shared else { return };
        let resolutions = match shared.try_borrow_mut() {
            Ok(mut s) => {
                let s = &mut *s;
                // A queue of a replaced configuration's worker: nothing waits on it any more,
                // but this worker's answers may (an extra delivery costs nothing).
                s.host.drain_queue(queue_id);
                s.worker.on_wake(&s.host)
            }
            Err(_) => return,
        };
        self.deliver(resolutions);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
