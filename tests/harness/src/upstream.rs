//! The echo upstream (`keygate-echo`), started as a child process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{file_len, read_log, wait_for_log_line, Proc};
use crate::tmp::TempDir;

/// A running `keygate-echo`; killed on drop.
#[derive(Debug)]
pub struct Upstream {
    proc: Option<Proc>,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

const READY_PREFIX: &str = "echo listening on ";

impl Upstream {
    /// Starts [`crate::echo_path`] on a free port.
    pub fn start() -> Result<Upstream> {
        Upstream::start_with(&crate::echo_path(), 0)
    }

    /// Starts [`crate::echo_path`] on `port` (0: a free one).
    pub fn start_on(port: u16) -> Result<Upstream> {
        Upstream::start_with(&crate::echo_path(), port)
    }

    /// Starts the echo `binary` on `127.0.0.1:port` (0: a free one) and waits for its ready line.
    pub fn start_with(binary: &Path, port: u16) -> Result<Upstream> {
        let dir = TempDir::new("echo")?;
        let log = dir.path().join("echo.log");
        let mut cmd = Command::new(binary);
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        let from = file_len(&log);
        let mut proc = Proc::spawn("keygate-echo", cmd, &log)?;
        let addr = wait_for_log_line(&mut proc, from, Duration::from_secs(10), |line| {
            let at = line.find(READY_PREFIX)?;
            line.get(at + READY_PREFIX.len()..)?
                .split_whitespace()
                .next()
                .map(str::to_string)
        })?;
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| Error::msg(format!("keygate-echo: cannot parse a port in {addr:?}")))?;
        Ok(Upstream {
            proc: Some(proc),
            port,
            log,
            _dir: dir,
        })
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// SIGTERM, then SIGKILL after 2 s.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(2));
        }
    }
}
