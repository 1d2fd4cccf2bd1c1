//! The fleet's change-feed polls: E simulated Envoys, each with its own keep-alive connection,
//! asking `GET /v1/changes?since=R` once a second (starts spread evenly over the first
//! second), following `more` pages at once, while a churn thread rotates keys at a fixed rate.
//!
//! The pollers are tasks on one tokio current-thread runtime on one thread pinned to the load
//! generator's CPU: a thousand pollers cost a thousand small tasks, not a thousand threads.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use keygate_harness::{Error, Keystore, Result};
use keygate_protocol::routes::{self, admin};

use crate::proc::pin_this_thread;

/// What the pollers saw.
#[derive(Debug, Clone, Default)]
pub struct PollRun {
    pub envoys: usize,
    /// Answers with status 200.
    pub polls: u64,
    /// Anything else: a non-200 answer, a broken connection, a late poll (one that could not
    /// start within its second because the previous one had not been answered).
    pub errors: u64,
    pub late: u64,
    /// Key ids received in `changed` lists, all pollers together.
    pub changed_seen: u64,
    /// Sorted latencies (ms).
    pub latencies_ms: Vec<f64>,
    /// Rotations the churn thread made.
    pub rotations: u64,
}

/// `envoys` pollers against `127.0.0.1:port` for `secs`, pinned to `cpu`.
pub fn poll(port: u16, envoys: usize, secs: f64, cpu: Option<usize>) -> Result<PollRun> {
    std::thread::spawn(move || {
        if let Some(c) = cpu {
            pin_this_thread(c);
        }
        crate::floor::block_on(pollers(port, envoys, Duration::from_secs_f64(secs)))
    })
    .join()
    .map_err(|_| Error::msg("the pollers' thread panicked"))?
}

async fn pollers(port: u16, envoys: usize, secs: Duration) -> Result<PollRun> {
    let out = Rc::new(RefCell::new(PollRun {
        envoys,
        ..PollRun::default()
    }));
    // Connections and cold starts first (a thousand of them take a while on a loaded
    // machine), then the schedule.
    let t0 = Instant::now() + Duration::from_millis(500 + envoys as u64);
    let local = tokio::task::LocalSet::new();
    for i in 0..envoys {
        let out = Rc::clone(&out);
        let offset = Duration::from_secs(1).mul_f64(i as f64 / envoys.max(1) as f64);
        local.spawn_local(async move {
            if let Err(_e) = one_envoy(port, t0 + offset, t0 + secs, &out).await {
                out.borrow_mut().errors += 1;
            }
        });
    }
    local.await;
    let mut r = out.borrow().clone();
    r.latencies_ms.sort_by(f64::total_cmp);
    Ok(r)
}

async fn one_envoy(
    port: u16,
    first: Instant,
    until: Instant,
    out: &RefCell<PollRun>,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    // The cold start: since=0 gives the current revision.
    let mut since = ask(&mut s, 0).await?.0;
    let mut next = first;
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        let t = Instant::now();
        loop {
            let (rev, more, changed, status) = ask(&mut s, since).await?;
            let mut o = out.borrow_mut();
            if status == 200 {
                o.polls += 1;
                o.changed_seen += changed;
                since = rev;
            } else {
                o.errors += 1;
            }
            if !more || status != 200 {
                break;
            }
        }
        out.borrow_mut()
            .latencies_ms
            .push(t.elapsed().as_secs_f64() * 1000.0);
        next += Duration::from_secs(1);
        if Instant::now() > next {
            out.borrow_mut().late += 1;
        }
    }
    Ok(())
}

/// One `GET /v1/changes?since=N` on the connection: (revision, more, changed count, status).
async fn ask(s: &mut TcpStream, since: u64) -> std::io::Result<(u64, bool, u64, u16)> {
    let req = format!(
        "GET {} HTTP/1.1\r\nhost: keystore\r\n\r\n",
        routes::changes(routes::CHANGES, since)
    );
    s.write_all(req.as_bytes()).await?;
    let body = read_response(s).await?;
    let status = body.0;
    let v: serde_json::Value = serde_json::from_slice(&body.1).unwrap_or_default();
    let rev = v.get("revision").and_then(|r| r.as_u64()).unwrap_or(since);
    let more = v.get("more").and_then(|m| m.as_bool()).unwrap_or(false);
    let changed = v
        .get("changed")
        .and_then(|c| c.as_array())
        .map_or(0, |a| a.len() as u64);
    Ok((rev, more, changed, status))
}

/// Reads one HTTP/1.1 response with a `content-length` body: (status, body).
async fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad("no content-length"))?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed in the body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_end..head_end + len].to_vec()))
}

/// Rotates the keys of `users` (account `churn`) round-robin, `per_second` rotations a second,
/// until `stop`; counts them in `done`.
pub fn churn(ks: &Keystore, users: usize, per_second: f64, stop: &AtomicBool, done: &AtomicU64) {
    let period = Duration::from_secs_f64(1.0 / per_second);
    let t0 = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let user = format!("churn-{}", i as usize % users.max(1));
        let path = admin::user_key("churn", &user);
        if ks.admin("POST", &path, None).is_ok_and(|r| r.status == 200) {
            done.fetch_add(1, Ordering::SeqCst);
        }
        i += 1;
        let due = t0 + period.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}
