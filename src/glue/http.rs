//! The HTTP context: one per request.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::{apply, refuse, SharedRef};
use crate::host::{Host, Metric};
use crate::key::{self, Found, KeyError, KeyId};
use crate::request::Refusal;
use crate::verdict::Decision;

pub(crate) struct Http {
    id: u32,
    shared: Option<SharedRef>,
    /// An admin write: if the upstream answers 2xx, cached verdicts are dropped.
    invalidating: bool,
    paused: bool,
}

impl Http {
    pub fn new(id: u32, shared: Option<SharedRef>) -> Http {
        Http {
            id,
            shared,
            invalidating: false,
            paused: false,
        }
    }
}

fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        if self.paused {
            if let Some(shared) = &self.shared {
                if let Ok(mut s) = shared.try_borrow_mut() {
                    let s = &mut *s;
                    s.worker.forget(&s.host, self.id);
                    s.paused_paths.remove(&self.id);
                }
            }
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            // Not configured: fail closed.
            let r = Refusal::Unavailable;
            let _ =
                hostcalls::send_http_response(r.status(), r.headers(), Some(r.body().as_bytes()));
            return Action::Pause;
        };
        let Ok(mut guard) = shared.try_borrow_mut() else {
            return Action::Pause;
        };
        let s = &mut *guard;
        // One host call for all headers; names come lowercase from Envoy.
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let cfg = std::rc::Rc::clone(s.worker.config());

        // Identity headers sent by the client are never trusted, whatever happens next.
        for name in cfg.identity_headers.names() {
            if headers.iter().any(|(k, _)| k == name) {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        };
        let path = header(":path")
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or("/")
            .to_string();
        let method = header(":method")
            .and_then(|m| std::str::from_utf8(m).ok())
            .unwrap_or("");
        let route = path_only(&path);
        self.invalidating = cfg.is_invalidating(method, route);

        if cfg.is_anonymous(route) {
            return Action::Continue;
        }
        let (raw_key, found) = match key::extract(&cfg.key_sources, header, &path) {
            Ok(k) => k,
            Err(e) => {
                if e != KeyError::Missing {
                    s.host.count(Metric::MalformedKeys, 1);
                }
                refuse(&s.host, Refusal::Unauthorized);
                return Action::Pause;
            }
        };
        let key_id = KeyId::of(&raw_key);
        drop(raw_key);
        if cfg.hide_credentials {
            match &found {
                Found::Header(name) => {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                }
                Found::Query(name) => {
                    let stripped = key::remove_query_param(&path, name);
                    let _ = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        ":path",
                        Some(&stripped),
                    );
                }
            }
        }
        match s.worker.check(&s.host, self.id, key_id) {
            Decision::Answer(outcome) => {
                if apply(s, &outcome, route) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Decision::Wait => {
                self.paused = true;
                s.paused_paths.insert(self.id, route.to_string());
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
                    s.worker.invalidate_local(&s.host);
                }
            }
        }
        Action::Continue
    }
}
