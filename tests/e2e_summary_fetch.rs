//! The key summary's fetch through real Envoy's callout: a summary larger than any lookup
//! answer (10^6 keys, 1.5 MB, past the 1 MiB the glue reads for other calls) is fetched and
//! installed, and one over `summary.max_bytes` is refused by the glue's limit for that call and
//! retried. The store here serves only the summary and an empty feed (the reference keystore's
//! summary is tested with it in `e2e_summary`).
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

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::within;
use keygate_harness::{Envoy, EnvoyOpts};
use keygate_protocol::summary::{blocks_for, hashes_for, Summary, CONTENT_TYPE};
use keygate_protocol::{routes, KeyId};
use serde_json::json;

/// A store that answers the summary with `body`, the feed with "nothing changed at revision 5",
/// and everything else 404; its port.
fn summary_store(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Arc::new(body);
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let body = Arc::clone(&body);
            thread::spawn(move || answer(conn, &body));
        }
    });
    port
}

fn answer(mut conn: TcpStream, summary: &[u8]) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let (status, content_type, body): (&str, &str, &[u8]) = if path == routes::SUMMARY {
        ("200 OK", CONTENT_TYPE, summary)
    } else if path.starts_with(routes::CHANGES) {
        (
            "200 OK",
            "application/json",
            br#"{"revision":5,"changed":[]}"#,
        )
    } else {
        ("404 Not Found", "application/json", b"{}")
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(body);
}

/// The store's summary of 10^6 keys, sized as the keystore sizes it (5/4 headroom, 10 bits).
fn million() -> Vec<u8> {
    let n = 1_000_000u64;
    let mut s = Summary::new(5, blocks_for(n * 5 / 4, 10), hashes_for(10));
    for i in 0..n {
        s.insert(&KeyId::of(format!("key-{i}").as_bytes()));
    }
    s.encode()
}

fn envoy(store_port: u16, max_bytes: u64) -> Envoy {
    let cfg = json!({
        "store": { "cluster": "keystore", "timeout_ms": 1000 },
        "usage": { "enabled": false },
        "summary": { "max_bytes": max_bytes }
    });
    // No request goes upstream: any port will do.
    Envoy::start(EnvoyOpts::new("summary-fetch", cfg, store_port, store_port)).unwrap()
}

#[test]
fn a_summary_larger_than_any_lookup_answer_is_fetched_and_installed() {
    let body = million();
    assert!(
        body.len() > 1024 * 1024,
        "past the glue's limit for other calls"
    );
    let envoy = envoy(summary_store(body), 16 * 1024 * 1024);
    within(Duration::from_secs(10), "the summary installed", || {
        envoy.stat_opt("keygate_summary_keys") == Some(1_000_000)
    });
    assert_eq!(envoy.stat("keygate_summary_bytes"), 1_562_560);
    assert_eq!(envoy.stat("keygate_summary_fetches_total"), 1);
    assert_eq!(envoy.stat("keygate_summary_fetch_errors_total"), 0);
    let ppm = envoy.stat("keygate_summary_false_positive_rate_ppm");
    assert!((1_000..5_000).contains(&ppm), "{ppm} ppm");
}

#[test]
fn a_summary_over_max_bytes_is_refused_and_fetched_again_later() {
    let envoy = envoy(summary_store(million()), 1024 * 1024);
    within(Duration::from_secs(10), "two refused fetches", || {
        envoy.stat_opt("keygate_summary_fetch_errors_total") >= Some(2)
    });
    assert_eq!(envoy.stat("keygate_summary_bytes"), 0);
    assert!(envoy
        .log_text()
        .contains("key summary fetch (/v1/summary) failed: larger than summary.max_bytes"));
}
