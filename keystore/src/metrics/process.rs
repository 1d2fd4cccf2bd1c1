//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`, `process_threads`), read from `/proc/self`
//! with the `procfs` crate at each scrape.
//!
//! Invariant: a value `/proc` cannot give (another OS, a restricted container) is left out of
//! the scrape, never reported as 0. prometheus-client has no process collector of its own; the
//! names are those of the official clients (Go, Java, Python), so existing dashboards work.

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// This process, measured when Prometheus scrapes.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One sample: (name, help, value, is a counter).
type Sample = (&'static str, &'static str, f64, bool);

/// What `/proc/self` says now; empty where it cannot be read.
fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    let Ok(me) = Process::myself() else {
        return out;
    };
    let ticks = procfs::ticks_per_second() as f64;
    if let Ok(stat) = me.stat() {
        let cpu = stat.utime.saturating_add(stat.stime) as f64 / ticks;
        let rss = stat.rss.saturating_mul(procfs::page_size()) as f64;
        out.extend([
            (
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                cpu,
                true,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss,
                false,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize as f64,
                false,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                stat.num_threads as f64,
                false,
            ),
        ]);
        if let Ok(boot) = procfs::boot_time_secs() {
            out.push((
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                boot as f64 + stat.starttime as f64 / ticks,
                false,
            ));
        }
    }
    if let Ok(fds) = me.fd_count() {
        out.push((
            "process_open_fds",
            "Number of open file descriptors",
            fds as f64,
            false,
        ));
    }
    if let Ok(limits) = me.limits() {
        if let LimitValue::Value(max) = limits.max_open_files.soft_limit {
            out.push((
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
                false,
            ));
        }
    }
    out
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value, counter) in samples() {
            if counter {
                let metric = ConstCounter::new(value);
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            } else {
                let metric = ConstGauge::new(value);
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}
