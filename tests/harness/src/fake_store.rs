//! A fake key store that answers the store protocol (README "Key store protocol") and nothing
//! more: every key is valid, the changes feed reports nothing, at a revision the test sets. The
//! admin API is one rule: every request under `/api/` is answered 200 (the writes a filter's
//! `invalidate_paths` hold). For tests whose store must be something other than the reference
//! keystore: a store that has never changed (revision 0), or a feed that answers late.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use keygate_protocol::messages::{Found, Page};
use keygate_protocol::routes;

use crate::error::{Error, Result};

#[derive(Debug, Default)]
struct State {
    revision: AtomicU64,
    lookups: AtomicU64,
    polls: AtomicU64,
    writes: AtomicU64,
    /// How long the changes feed waits before answering.
    changes_delay: Mutex<Duration>,
}

/// The fake store; stops accepting when dropped.
#[derive(Debug)]
pub struct FakeStore {
    port: u16,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl FakeStore {
    /// Listens on a free loopback port; its feed is at `revision`.
    pub fn start(revision: u64) -> Result<FakeStore> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::msg(format!("fake store bind: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::msg(e.to_string()))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::msg(e.to_string()))?;
        let state = Arc::new(State::default());
        state.revision.store(revision, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (st, s) = (Arc::clone(&state), Arc::clone(&stop));
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = Arc::clone(&st);
                        thread::spawn(move || serve(conn, &st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(FakeStore { port, state, stop })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Key lookups answered so far.
    pub fn lookups(&self) -> u64 {
        self.state.lookups.load(Ordering::Relaxed)
    }

    /// Changes-feed polls answered so far.
    pub fn polls(&self) -> u64 {
        self.state.polls.load(Ordering::Relaxed)
    }

    /// Admin writes (any request under `/api/` other than a GET) answered so far.
    pub fn writes(&self) -> u64 {
        self.state.writes.load(Ordering::Relaxed)
    }

    /// The revision the feed answers from now on (a change it does not list).
    pub fn set_revision(&self, revision: u64) {
        self.state.revision.store(revision, Ordering::Relaxed);
    }

    /// Every changes-feed answer from now on waits `delay` first.
    pub fn delay_changes(&self, delay: Duration) {
        if let Ok(mut d) = self.state.changes_delay.lock() {
            *d = delay;
        }
    }
}

impl Drop for FakeStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_head(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// One request per connection (`connection: close`): Envoy opens another for the next one.
fn serve(mut conn: TcpStream, state: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(head) = read_head(&mut conn) else {
        return;
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut body = vec![0u8; content_length(&head)];
    if conn.read_exact(&mut body).is_err() {
        return;
    }
    let mut line = head.lines().next().unwrap_or("").split_whitespace();
    let method = line.next().unwrap_or("GET");
    let path = line.next().unwrap_or("/");
    let (status, answer) = if path.starts_with(routes::LOOKUP) {
        state.lookups.fetch_add(1, Ordering::Relaxed);
        let found: Found = Found {
            account_id: "acme".into(),
            user_id: "u".into(),
            role: "member".into(),
            expires_at: None,
            claims: None,
        };
        (200, serde_json::to_string(&found).unwrap_or_default())
    } else if path.starts_with(routes::CHANGES) {
        let delay = state.changes_delay.lock().map(|d| *d).unwrap_or_default();
        thread::sleep(delay);
        state.polls.fetch_add(1, Ordering::Relaxed);
        let page: Page = Page {
            revision: state.revision.load(Ordering::Relaxed),
            changed: Some(Vec::new()),
            created: Vec::new(),
            more: false,
            reset: false,
        };
        (200, serde_json::to_string(&page).unwrap_or_default())
    } else if path.starts_with("/api/") || path == "/healthz" {
        if method != "GET" {
            state.writes.fetch_add(1, Ordering::Relaxed);
        }
        (200, "{}".to_string())
    } else {
        (404, r#"{"error":"not found"}"#.to_string())
    };
    let reply = format!(
        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
}
