//! CPU time: of a process (from /proc) and of the waited-for children (wrk).

use procfs::Current as _;

/// User + system CPU seconds of process `pid`, all threads; NaN if unreadable. Read through
/// the `procfs` crate, like every other look at /proc in the bench.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    stat(pid).map_or(f64::NAN, |s| ticks_to_seconds(s.utime + s.stime))
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn loadavg() -> String {
    procfs::LoadAverage::current()
        .map(|l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen))
        .unwrap_or_default()
}

/// The CPU model name of the first CPU.
pub fn cpu_model() -> Option<String> {
    procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_string))
}

pub(crate) fn process(pid: u32) -> Option<procfs::process::Process> {
    procfs::process::Process::new(i32::try_from(pid).ok()?).ok()
}

pub(crate) fn stat(pid: u32) -> Option<procfs::process::Stat> {
    process(pid).and_then(|p| p.stat().ok())
}

pub(crate) fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// User + system CPU seconds of every child process waited for so far (getrusage).
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) != 0 {
            return f64::NAN;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let s = process_cpu_seconds(std::process::id());
        assert!(s.is_finite() && s >= 0.0, "{s}");
        assert!(children_cpu_seconds() >= 0.0);
        assert_eq!(loadavg().split_whitespace().count(), 3);
    }
}
