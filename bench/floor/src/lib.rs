//! The wasm floor: the least any proxy-wasm API-key filter can do per request, for keygate's
//! bench to compare against.
//!
//! Per request: one header read (`x-api-key`), one lookup in a map built at configuration
//! time, and either one header write (`x-account-id`) or a 401. No hashing, no shared data, no
//! metrics, no callouts: whatever keygate's hit path costs above this is keygate's own.
//!
//! Configuration (plugin configuration, plain text): one credential per line, `KEY ACCOUNT`,
//! separated by white space. Empty lines and lines starting with `#` are ignored. A
//! configuration without any credential is refused (Envoy then rejects the filter).

use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

const KEY_HEADER: &str = "x-api-key";
const IDENTITY_HEADER: &str = "x-account-id";

type Credentials = Rc<HashMap<Vec<u8>, String>>;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { credentials: Rc::new(HashMap::new()) })
    });
}}

struct FloorRoot {
    credentials: Credentials,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut map = HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(key), Some(account), None) => {
                    map.insert(key.as_bytes().to_vec(), account.to_string());
                }
                _ => {
                    log::error!("floor: bad credential line (want `KEY ACCOUNT`)");
                    return false;
                }
            }
        }
        if map.is_empty() {
            log::error!("floor: no credentials configured");
            return false;
        }
        self.credentials = Rc::new(map);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp {
            credentials: Rc::clone(&self.credentials),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    credentials: Credentials,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let key = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, KEY_HEADER)
            .ok()
            .flatten();
        match key.as_deref().and_then(|k| self.credentials.get(k)) {
            Some(account) => {
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    IDENTITY_HEADER,
                    Some(account),
                );
                Action::Continue
            }
            None => {
                let _ = hostcalls::send_http_response(401, vec![], Some(b"unauthorized\n"));
                Action::Pause
            }
        }
    }
}
