//! Running wrk and reading its summary.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use keygate_harness::{Error, Result};

/// One wrk run.
#[derive(Debug, Clone)]
pub struct WrkRun {
    pub url: String,
    pub threads: u32,
    pub connections: u32,
    pub secs: f64,
    /// Request headers (`name: value`).
    pub headers: Vec<String>,
    /// A Lua script, and the arguments after `--`.
    pub script: Option<(PathBuf, Vec<String>)>,
    /// `taskset -c` CPU list, if pinned.
    pub cpus: Option<String>,
}

/// What wrk printed, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    /// The run's real duration (seconds), as wrk reports it.
    pub duration_s: f64,
    pub rps: f64,
    /// Responses with status > 399 (wrk's "Non-2xx or 3xx responses").
    pub non2xx: u64,
    pub socket_errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl WrkRun {
    fn command(&self) -> Command {
        let mut cmd = match &self.cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg("wrk");
                c
            }
            None => Command::new("wrk"),
        };
        // wrk takes whole seconds (units s, m, h only).
        let secs = self.secs.round().max(1.0) as u64;
        cmd.arg("-t")
            .arg(self.threads.to_string())
            .arg("-c")
            .arg(self.connections.to_string())
            .arg("-d")
            .arg(format!("{secs}s"))
            .arg("--latency");
        for h in &self.headers {
            cmd.arg("-H").arg(h);
        }
        if let Some((script, _)) = &self.script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(&self.url);
        if let Some((_, args)) = &self.script {
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts wrk; finish with [`WrkRun::wait`].
    pub fn spawn(&self) -> Result<Child> {
        self.command()
            .spawn()
            .map_err(|e| Error::msg(format!("cannot start wrk (is it installed?): {e}")))
    }

    /// Waits for a run started with [`WrkRun::spawn`] and parses its output.
    pub fn wait(&self, child: Child) -> Result<WrkResult> {
        let out = child.wait_with_output()?;
        self.finish(out)
    }

    /// Runs wrk to the end.
    pub fn run(&self) -> Result<WrkResult> {
        let child = self.spawn()?;
        self.wait(child)
    }

    fn finish(&self, out: Output) -> Result<WrkResult> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(Error::msg(format!(
                "wrk {} failed ({}): {}{}",
                self.url,
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        parse(&stdout).ok_or_else(|| {
            Error::msg(format!(
                "cannot read wrk's summary for {}:\n{stdout}{}",
                self.url,
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }
}

/// `1.23ms`, `456.78us`, `1.02s`, `2.00m` → milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

/// Parses wrk's (4.x) summary. `None` if the essential lines are missing.
pub fn parse(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut have_requests = false;
    let mut have_rps = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Requests/sec:") {
            r.rps = rest.trim().parse().ok()?;
            have_rps = true;
        } else if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = t.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            r.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if t.contains(" requests in ") {
            // 123456 requests in 5.00s, 12.34MB read
            let mut words = t.split_whitespace();
            r.requests = words.next()?.parse().ok()?;
            let dur = t.split(" requests in ").nth(1)?.split(',').next()?;
            r.duration_s = duration_ms(dur)? / 1000.0;
            have_requests = true;
        } else if let Some(rest) = t.strip_prefix("50%") {
            r.p50_ms = duration_ms(rest)?;
        } else if let Some(rest) = t.strip_prefix("99%") {
            r.p99_ms = duration_ms(rest)?;
        }
    }
    (have_requests && have_rps).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://127.0.0.1:41000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.34us  120.11us   5.01ms   90.12%
    Req/Sec    39.10k     1.20k   41.00k    88.00%
  Latency Distribution
     50%  790.00us
     75%  850.00us
     90%    0.95ms
     99%    1.25ms
  194512 requests in 5.00s, 21.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  38902.40
Transfer/sec:      4.27MB
";

    #[test]
    fn parses_a_summary() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 194_512);
        assert!((r.duration_s - 5.0).abs() < 1e-9);
        assert!((r.rps - 38902.40).abs() < 1e-6);
        assert_eq!(r.non2xx, 7);
        assert_eq!(r.socket_errors, 3);
        assert!((r.p50_ms - 0.79).abs() < 1e-9);
        assert!((r.p99_ms - 1.25).abs() < 1e-9);
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            parse("unable to connect to 127.0.0.1:1 Connection refused"),
            None
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("1.5m"), Some(90_000.0));
        assert_eq!(duration_ms("12"), None);
    }
}
