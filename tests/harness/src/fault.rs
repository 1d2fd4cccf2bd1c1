//! A key store that can be made to misbehave: a small HTTP/1.1 proxy in front of the real
//! keystore. Lookups (`/v1/keys/...`) and the changes feed (`/v1/changes...`) can each be given a
//! fault; everything else (the admin API) always passes through.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::error::{Error, Result};

/// What the proxy does with a request of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the real keystore.
    Pass,
    /// Wait this long, then forward.
    Delay(Duration),
    /// Forward at once, then hold the keystore's answer this long (an answer read before a
    /// change in the store that arrives after it).
    SlowAnswer(Duration),
    /// Answer this status with a small JSON body.
    Status(u16),
    /// Answer 200 with a body of this many bytes (JSON-looking, never valid).
    HugeBody(usize),
    /// Answer 200 with exactly this body.
    Body(String),
    /// Send half of a real answer's head, then reset the connection.
    ResetMidResponse,
    /// Read the request and never answer (until the connection is closed by the peer).
    Hang,
}

#[derive(Debug)]
struct Faults {
    lookups: Fault,
    changes: Fault,
}

/// The proxy; stops accepting when dropped (connections in progress finish on their own).
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    lookups_seen: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::msg(format!("fault proxy bind: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::msg(e.to_string()))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::msg(e.to_string()))?;
        let faults = Arc::new(Mutex::new(Faults {
            lookups: Fault::Pass,
            changes: Fault::Pass,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let lookups_seen = Arc::new(AtomicU64::new(0));
        let (f, s, seen) = (
            Arc::clone(&faults),
            Arc::clone(&stop),
            Arc::clone(&lookups_seen),
        );
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (f, seen) = (Arc::clone(&f), Arc::clone(&seen));
                        thread::spawn(move || serve(conn, target_port, &f, &seen));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(FaultProxy {
            port,
            faults,
            stop,
            lookups_seen,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the fault for key lookups.
    pub fn lookups(&self, fault: Fault) {
        if let Ok(mut f) = self.faults.lock() {
            f.lookups = fault;
        }
    }

    /// Sets the fault for the changes feed.
    pub fn changes(&self, fault: Fault) {
        if let Ok(mut f) = self.faults.lock() {
            f.changes = fault;
        }
    }

    /// Lookups that reached the proxy (whatever was done with them).
    pub fn lookups_seen(&self) -> u64 {
        self.lookups_seen.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
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

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// One request per connection: Envoy opens another for the next one.
fn serve(mut conn: TcpStream, target_port: u16, faults: &Mutex<Faults>, seen: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(head) = read_head(&mut conn) else {
        return;
    };
    let mut body = vec![0u8; content_length(&head)];
    if conn.read_exact(&mut body).is_err() {
        return;
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let fault = match faults.lock() {
        Ok(f) if path.starts_with(keygate_protocol::routes::LOOKUP) => {
            seen.fetch_add(1, Ordering::Relaxed);
            f.lookups.clone()
        }
        Ok(f) if path.starts_with(keygate_protocol::routes::CHANGES) => f.changes.clone(),
        _ => Fault::Pass,
    };
    match fault {
        Fault::Pass => forward(&mut conn, target_port, &head, &body),
        Fault::Delay(d) => {
            thread::sleep(d);
            forward(&mut conn, target_port, &head, &body);
        }
        Fault::SlowAnswer(d) => forward_held(&mut conn, target_port, &head, &body, d),
        Fault::Status(status) => respond(&mut conn, status, br#"{"error":"injected"}"#),
        Fault::HugeBody(n) => {
            let mut b = Vec::with_capacity(n);
            b.extend_from_slice(br#"{"account_id":""#);
            b.resize(n, b'a');
            respond(&mut conn, 200, &b);
        }
        Fault::Body(b) => respond(&mut conn, 200, b.as_bytes()),
        Fault::ResetMidResponse => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/js");
            let _ = conn.flush();
            reset(conn);
        }
        Fault::Hang => {
            let mut sink = [0u8; 1024];
            let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
            while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

fn respond(conn: &mut TcpStream, status: u16, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
}

/// Closes with a TCP reset (SO_LINGER 0) rather than a clean FIN.
fn reset(conn: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

fn forward(conn: &mut TcpStream, target_port: u16, head: &[u8], body: &[u8]) {
    forward_held(conn, target_port, head, body, Duration::ZERO);
}

/// Forwards, and holds the answer for `hold` before passing it on.
fn forward_held(conn: &mut TcpStream, target_port: u16, head: &[u8], body: &[u8], hold: Duration) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", target_port)) else {
        respond(conn, 502, br#"{"error":"keystore unreachable"}"#);
        return;
    };
    // Ask for a closed connection so the answer ends at EOF.
    let text = String::from_utf8_lossy(head);
    let mut rewritten = String::new();
    for l in text.split("\r\n").filter(|l| !l.is_empty()) {
        if l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        rewritten.push_str(l);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("connection: close\r\n\r\n");
    if up
        .write_all(rewritten.as_bytes())
        .and_then(|_| up.write_all(body))
        .is_err()
    {
        return;
    }
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    thread::sleep(hold);
    let _ = conn.write_all(&answer);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
}
