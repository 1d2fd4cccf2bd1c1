//! The cold-key herd: N requests with one key, on N connections opened beforehand, sent
//! back to back, each timed from its own send to the end of its answer.
//!
//! This is the latency of a burst, not throughput, so it is not wrk's job. One thread drives
//! every connection through epoll: sends go out in one tight loop, and each answer is
//! timestamped as soon as epoll reports it, so no client thread has to be scheduled on a busy
//! CPU before its clock is read (with one thread per connection, 1000 threads competing with
//! Envoy for 2 CPUs would add their own scheduling delays to the figures).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use keygate_harness::{Error, Result};

/// What one herd did.
#[derive(Debug, Clone, Default)]
pub struct HerdResult {
    pub n: usize,
    /// Each request's latency (ms), sorted.
    pub latencies_ms: Vec<f64>,
    /// Status → count; 0 counts requests without an answer.
    pub statuses: BTreeMap<u16, usize>,
    /// First send to last answer (ms).
    pub span_ms: f64,
    /// First send to last send (ms).
    pub send_spread_ms: f64,
}

impl HerdResult {
    pub fn ok(&self) -> usize {
        self.statuses.get(&200).copied().unwrap_or(0)
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    sent: Option<Instant>,
    done: Option<(Instant, u16)>,
}

/// Fires `n` `GET path` requests with `x-api-key: key` at `127.0.0.1:port`, all at once.
pub fn fire(port: u16, path: &str, key: &str, n: usize) -> Result<HerdResult> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: bench\r\nx-api-key: {key}\r\nuser-agent: keygate-bench-herd\r\n\r\n"
    );
    // Connect everything first: the herd is N requests, not N handshakes.
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| Error::msg(format!("herd: connect 127.0.0.1:{port}: {e}")))?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        conns.push(Conn {
            stream: s,
            buf: Vec::with_capacity(512),
            sent: None,
            done: None,
        });
    }
    let epoll = Epoll::new()?;
    for (i, c) in conns.iter().enumerate() {
        epoll.add(c.stream.as_raw_fd(), i as u64)?;
    }
    // Let Envoy accept them all before the gun.
    thread::sleep(Duration::from_millis(300));

    for c in conns.iter_mut() {
        c.sent = Some(Instant::now());
        // A few dozen bytes into an empty socket buffer: written whole or not at all.
        if (&c.stream).write_all(request.as_bytes()).is_err() {
            c.done = Some((Instant::now(), 0));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = conns.iter().filter(|c| c.done.is_none()).count();
    let mut chunk = [0u8; 4096];
    while open > 0 && Instant::now() < deadline {
        for token in epoll.wait(100)? {
            let Some(c) = usize::try_from(token).ok().and_then(|i| conns.get_mut(i)) else {
                continue;
            };
            if c.done.is_some() {
                continue;
            }
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        c.done = Some((Instant::now(), parse_status(&c.buf).unwrap_or(0)));
                        break;
                    }
                    Ok(got) => {
                        c.buf
                            .extend_from_slice(chunk.get(..got).unwrap_or_default());
                        if let Some(status) = complete(&c.buf) {
                            c.done = Some((Instant::now(), status));
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.done = Some((Instant::now(), 0));
                        break;
                    }
                }
            }
            if c.done.is_some() {
                open -= 1;
            }
        }
    }
    let mut out = HerdResult {
        n,
        ..Default::default()
    };
    let first = conns.iter().filter_map(|c| c.sent).min();
    let last_sent = conns.iter().filter_map(|c| c.sent).max();
    let mut last_done: Option<Instant> = None;
    for c in &conns {
        match (c.sent, c.done) {
            (Some(t0), Some((t1, status))) => {
                out.latencies_ms
                    .push(t1.duration_since(t0).as_secs_f64() * 1000.0);
                *out.statuses.entry(status).or_default() += 1;
                last_done = Some(last_done.map_or(t1, |l| l.max(t1)));
            }
            _ => *out.statuses.entry(0).or_default() += 1,
        }
    }
    if let (Some(f), Some(l)) = (first, last_done) {
        out.span_ms = l.duration_since(f).as_secs_f64() * 1000.0;
    }
    if let (Some(f), Some(l)) = (first, last_sent) {
        out.send_spread_ms = l.duration_since(f).as_secs_f64() * 1000.0;
    }
    out.latencies_ms.sort_by(f64::total_cmp);
    Ok(out)
}

/// A minimal epoll instance (level-triggered, readable events).
struct Epoll {
    fd: i32,
}

impl Epoll {
    fn new() -> Result<Epoll> {
        // SAFETY: epoll_create1 has no memory-safety preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::msg(format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Epoll { fd })
    }

    fn add(&self, fd: i32, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc != 0 {
            return Err(Error::msg(format!(
                "epoll_ctl: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Tokens of the ready descriptors (empty on timeout).
    fn wait(&self, timeout_ms: i32) -> Result<Vec<u64>> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        // SAFETY: `events` has room for the 256 entries epoll_wait may write.
        let got = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), 256, timeout_ms) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(Error::msg(format!("epoll_wait: {e}")));
        }
        Ok(events
            .iter()
            .take(usize::try_from(got).unwrap_or(0))
            .map(|e| e.u64)
            .collect())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this struct owns.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// The status of a complete HTTP/1.1 answer in `buf` (head and `content-length` body), or
/// `None` while it is incomplete.
fn complete(buf: &[u8]) -> Option<u16> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(buf.get(..head_end)?).ok()?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < head_end + length {
        return None;
    }
    parse_status(buf)
}

fn parse_status(buf: &[u8]) -> Option<u16> {
    let line_end = find(buf, b"\r\n")?;
    let line = std::str::from_utf8(buf.get(..line_end)?).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok"),
            None
        );
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"),
            Some(200)
        );
        assert_eq!(
            complete(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Some(503)
        );
        assert_eq!(complete(b"HTTP/1.1 401"), None);
        assert_eq!(parse_status(b"HTTP/1.1 401 Unauthorized\r\n"), Some(401));
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
