//! Processes as the store bench sees them: CPU pinning, CPU time, resident memory, and the
//! PostgreSQL server's processes (the postmaster and its children).

use std::process::Command;

use crate::cpu::process_cpu_seconds;

/// Pins the calling thread to `cpu` (threads it starts later inherit it).
pub fn pin_this_thread(cpu: usize) {
    // SAFETY: the set is a zeroed value we own; sched_setaffinity(0) affects this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU seconds of the calling thread.
pub fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime writes into the zeroed struct we own.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }
}

/// Pins every thread of `pid` (and what it starts later) to `cpus` (a taskset list).
pub fn pin_pid(pid: u32, cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output();
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`); 0 if unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes of one PostgreSQL server: its postmaster and every child.
#[derive(Debug, Clone, Copy)]
pub struct PgServer {
    pub postmaster: u32,
}

impl PgServer {
    /// From the pid of any backend (`SELECT pg_backend_pid()`).
    pub fn from_backend(backend: u32) -> Option<PgServer> {
        ppid(backend).map(|postmaster| PgServer { postmaster })
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut out = vec![self.postmaster];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if ppid(pid) == Some(self.postmaster) {
                    out.push(pid);
                }
            }
        }
        out
    }

    /// CPU seconds of the server's processes, live ones plus those that exited (their time is
    /// in the postmaster's children time once reaped).
    pub fn cpu_seconds(&self) -> f64 {
        let live: f64 = self
            .pids()
            .iter()
            .map(|p| process_cpu_seconds(*p))
            .filter(|x| x.is_finite())
            .sum();
        live + reaped_children_cpu(self.postmaster)
    }

    /// Resident memory of every server process, KiB (shared buffers counted once per process
    /// that touched them: an upper bound).
    pub fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|p| status_kib(*p, "VmRSS")).sum()
    }

    pub fn pin(&self, cpus: &str) {
        for p in self.pids() {
            pin_pid(p, cpus);
        }
    }
}

/// cutime + cstime of `pid` (children it has waited for), seconds.
fn reaped_children_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (t(13) + t(14)) / hz
}
