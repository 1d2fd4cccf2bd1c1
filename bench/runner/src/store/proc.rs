//! Processes as the store bench sees them: CPU pinning, CPU time, resident memory, and the
//! PostgreSQL server's processes (the postmaster and its children).

use std::process::Command;

use crate::cpu::{process, process_cpu_seconds, stat, ticks_to_seconds};

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

/// cutime + cstime of `pid` (children it has waited for), seconds; 0 if unreadable.
pub fn reaped_children_cpu_seconds(pid: u32) -> f64 {
    stat(pid).map_or(0.0, |s| {
        ticks_to_seconds(u64::try_from(s.cutime + s.cstime).unwrap_or(0))
    })
}

/// The parent of `pid`, if it is still there.
pub fn parent(pid: u32) -> Option<u32> {
    stat(pid).and_then(|s| u32::try_from(s.ppid).ok())
}

/// Every pid on the machine.
pub fn all_pids() -> Vec<u32> {
    procfs::process::all_processes()
        .map(|it| {
            it.flatten()
                .filter_map(|p| u32::try_from(p.pid()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A memory field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`); 0 if unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let Some(status) = process(pid).and_then(|p| p.status().ok()) else {
        return 0;
    };
    match field {
        "VmRSS" => status.vmrss,
        "VmHWM" => status.vmhwm,
        _ => None,
    }
    .unwrap_or(0)
}

/// The processes of one PostgreSQL server: its postmaster and every child.
#[derive(Debug, Clone, Copy)]
pub struct PgServer {
    pub postmaster: u32,
}

impl PgServer {
    /// From the pid of any backend (`SELECT pg_backend_pid()`).
    pub fn from_backend(backend: u32) -> Option<PgServer> {
        parent(backend).map(|postmaster| PgServer { postmaster })
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut out = vec![self.postmaster];
        out.extend(
            all_pids()
                .into_iter()
                .filter(|p| parent(*p) == Some(self.postmaster)),
        );
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
        live + reaped_children_cpu_seconds(self.postmaster)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_seen_through_procfs() {
        let me = std::process::id();
        assert!(status_kib(me, "VmRSS") > 0);
        assert!(status_kib(me, "VmHWM") >= status_kib(me, "VmRSS") / 2);
        assert_eq!(status_kib(me, "Nope"), 0);
        assert!(parent(me).is_some());
        assert!(all_pids().contains(&me));
        assert!(reaped_children_cpu_seconds(me) >= 0.0);
    }
}
