//! Helpers shared by the end-to-end tests (real Envoy, real keystore, real upstream).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use keygate_harness::{
    Client, Envoy, EnvoyOpts, FaultProxy, Keystore, KeystoreOpts, Response, Upstream,
};
use serde_json::{json, Value};

/// The filter configuration used unless a test needs another.
pub fn config() -> Value {
    json!({
        "store": { "cluster": "keystore", "authority": "keystore", "timeout_ms": 1000 },
        "cache": { "ttl_s": 30, "negative_ttl_s": 5, "max_entries": 100000 },
        "sync": { "interval_ms": 1000 },
        "invalidate_paths": [keygate_protocol::routes::admin::PREFIX]
    })
}

/// `config()` with `patch` merged in (objects merged key by key).
pub fn config_with(patch: Value) -> Value {
    let mut base = config();
    merge(&mut base, patch);
    base
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

pub fn client() -> Client {
    Client::new(Duration::from_secs(10))
}

/// GET `path` through `envoy` with `x-api-key: key`.
pub fn get_with_key(envoy: &Envoy, path: &str, key: &str) -> Response {
    client()
        .get(&format!("{}{path}", envoy.url()), &[("x-api-key", key)])
        .expect("request through envoy")
}

/// The headers the echo upstream received, from its JSON answer.
pub fn upstream_headers(resp: &Response) -> Value {
    resp.json().expect("echo body")["headers"].clone()
}

/// Sends `n` requests at once (threads released together by a barrier), alternating between
/// the given Envoys; returns the statuses.
pub fn herd(envoys: &[&Envoy], n: usize, key: &str) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(n));
    let urls: Vec<String> = envoys.iter().map(|e| format!("{}/herd", e.url())).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let url = urls[i % urls.len()].clone();
                s.spawn(move || {
                    let c = client();
                    barrier.wait();
                    c.get(&url, &[("x-api-key", key)])
                        .map(|r| r.status)
                        .unwrap_or(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    })
}

/// Sends a raw HTTP/1.1 request (for header bytes no HTTP client will send) and returns the status.
pub fn raw_status(envoy: &Envoy, head: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port())).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(head).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Polls `check` every 20 ms until it is true; returns how long it took, or panics after `limit`.
pub fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("{what}: not true within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every one of `n` requests (new connections, so both workers are hit) with `key` gets `status`.
pub fn all_get(envoy: &Envoy, key: &str, n: usize, status: u16) -> bool {
    (0..n).all(|_| get_with_key(envoy, "/probe", key).status == status)
}

/// The statuses of `n` requests with `key` (new connections each).
pub fn statuses(envoy: &Envoy, key: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| get_with_key(envoy, "/probe", key).status)
        .collect()
}

/// Store lookups the keystore has served so far.
pub fn lookups(keystore: &Keystore) -> u64 {
    keystore.lookups()
}

/// A random-looking key that no store knows.
pub fn random_key(i: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("kg_unknown_{nanos:x}_{i}")
}

/// Resident memory of a process, in kB (from /proc).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Sends `head` (a whole HTTP/1.1 request, which should say `connection: close`) as raw bytes
/// and reads the answer to the end: status and body. For paths no HTTP library sends as is.
pub fn raw_exchange(envoy: &Envoy, head: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port())).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(head).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// A GET of `path` (sent byte for byte) with `headers`, through `envoy`, over HTTP/1.1.
pub fn raw_get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    raw_exchange(envoy, head.as_bytes())
}

/// A keystore behind a controllable [`FaultProxy`], an upstream, and Envoy A and B whose
/// `keystore` cluster is the proxy: for tests of a misbehaving or slow store.
pub struct BehindProxy {
    pub a: Envoy,
    pub b: Envoy,
    pub proxy: FaultProxy,
    pub keystore: Keystore,
    pub _upstream: Upstream,
}

impl BehindProxy {
    pub fn start(cfg: Value) -> BehindProxy {
        let keystore = Keystore::start(KeystoreOpts::default()).unwrap();
        let proxy = FaultProxy::start(keystore.port()).unwrap();
        let upstream = Upstream::start().unwrap();
        let envoy = |node: &str| {
            Envoy::start(EnvoyOpts::new(
                node,
                cfg.clone(),
                upstream.port(),
                proxy.port(),
            ))
            .unwrap()
        };
        let a = envoy("keygate-a");
        let b = envoy("keygate-b");
        BehindProxy {
            a,
            b,
            proxy,
            keystore,
            _upstream: upstream,
        }
    }

    pub fn envoys(&self) -> [&Envoy; 2] {
        [&self.a, &self.b]
    }
}
