//! The HTTP context: one per request. It hands the request's headers to the core
//! ([`crate::request::admission::admit`]) and carries out what the core decided; it decides
//! nothing.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::{Envoy, SharedRef};
use crate::config::Config;
use crate::host::{Host, Metric};
use crate::request::act::{self, Refusal, RequestIo};
use crate::request::admission::{self, Admission, Deferred};
use crate::request::fields;
use crate::verdict::Decision;
use crate::worker::WriteDone;

pub(crate) struct Http {
    id: u32,
    shared: Option<SharedRef>,
    /// The configuration that admitted this request (for its trailers).
    cfg: Option<Rc<Config>>,
    /// An admin write: if the upstream answers 2xx, cached verdicts are dropped.
    invalidating: bool,
    paused: bool,
}

impl Http {
    pub fn new(id: u32, shared: Option<SharedRef>) -> Http {
        let cfg = shared
            .as_ref()
            .and_then(|s| s.try_borrow().ok().map(|s| Rc::clone(s.worker.config())));
        Http {
            id,
            shared,
            cfg,
            invalidating: false,
            paused: false,
        }
    }
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        if self.paused {
            if let Some(shared) = &self.shared {
                if let Ok(mut s) = shared.try_borrow_mut() {
                    let s = &mut *s;
                    s.worker.forget(&s.host, self.id);
                    s.deferred.remove(&self.id);
                }
            }
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // Fail closed whenever the core cannot see the request: not configured, re-entered,
        // or no header snapshot (then forged identity headers could not be stripped either).
        let Some(shared) = self.shared.clone() else {
            Envoy.send(Refusal::Unavailable);
            return Action::Pause;
        };
        let Ok(mut guard) = shared.try_borrow_mut() else {
            Envoy.send(Refusal::Unavailable);
            return Action::Pause;
        };
        let s = &mut *guard;
        let buf = super::abi::header_map(MapType::HttpRequestHeaders);
        let Some(headers) = buf.as_deref().and_then(fields::parse) else {
            act::refuse(&s.host, &mut Envoy, Refusal::Unavailable);
            return Action::Pause;
        };
        let cfg = Rc::clone(s.worker.config());
        let key_ids = &mut s.key_ids;
        let admission =
            admission::admit_with(&cfg, &headers, end_of_stream, &mut |raw| key_ids.id(raw));
        if admission.is_malformed_key() {
            s.host.count(Metric::MalformedKeys, 1);
        }
        let (key, plan) = match admission {
            Admission::Refuse(refusal, _) => {
                act::refuse(&s.host, &mut Envoy, refusal);
                return Action::Pause;
            }
            Admission::Pass(plan) => {
                plan.carry_out(&mut Envoy);
                self.invalidating = plan.invalidates;
                s.host.count(Metric::Anonymous, 1);
                return Action::Continue;
            }
            Admission::Check(key, plan) => (key, plan),
        };
        plan.carry_out(&mut Envoy);
        self.invalidating = plan.invalidates;
        match s.worker.check(&s.host, self.id, key) {
            Decision::Answer(outcome, _source) => {
                let (route, anonymous) = (&plan.route, plan.anonymous);
                if act::finish(&cfg, &s.host, &mut Envoy, &outcome, route, anonymous) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Decision::Wait => {
                self.paused = true;
                s.deferred.insert(self.id, Deferred::of(plan));
                Action::Pause
            }
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(cfg) = &self.cfg else {
            return Action::Continue;
        };
        let buf = super::abi::header_map(MapType::HttpRequestTrailers);
        match buf.as_deref().and_then(fields::parse) {
            Some(trailers) => {
                for name in admission::forged_identity(cfg, &trailers) {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestTrailers, &name);
                }
                Action::Continue
            }
            None => {
                Envoy.send(Refusal::Unavailable);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.invalidating {
            return Action::Continue;
        }
        let ok = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .is_some_and(|s| s.starts_with('2'));
        if ok {
            if let Some(shared) = &self.shared {
                if let Ok(mut s) = shared.try_borrow_mut() {
                    let s = &mut *s;
                    // Held until every worker drops what the write changed; the root resumes it.
                    match s.worker.admin_write_done(&s.host, self.id) {
                        WriteDone::Hold => {
                            self.paused = true;
                            return Action::Pause;
                        }
                    }
                }
            }
        }
        Action::Continue
    }
}
