//! The PostgreSQL connection pool's state on each scrape: `keystore_db_pool_connections`
//! (`state="idle"` or `"in_use"`), `keystore_db_pool_max_connections` and
//! `keystore_db_pool_waiting` (database calls waiting for a connection: above 0 for long, the
//! pool, `--database-pool-size`, is too small for the load).
//!
//! Invariant: the numbers are read from the pool when Prometheus asks, never cached.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// The pool's state, as deadpool reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub max_size: usize,
    /// Connections open now, idle or in use.
    pub size: usize,
    /// Open connections idle now.
    pub idle: usize,
    pub waiting: usize,
}

/// Reads the pool's state (a closure over the pool, so that this module needs no database type).
pub type PoolProbe = Box<dyn Fn() -> PoolStatus + Send + Sync>;

pub struct PoolCollector(pub PoolProbe);

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

fn gauge_value(v: usize) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = (self.0)();
        let in_use = s.size.saturating_sub(s.idle);
        let mut family = encoder.encode_descriptor(
            "keystore_db_pool_connections",
            "Open PostgreSQL connections of this process, by state (idle or in_use)",
            None,
            MetricType::Gauge,
        )?;
        for (state, v) in [("idle", s.idle), ("in_use", in_use)] {
            gauge_value(v).encode(family.encode_family(&[("state", state)])?)?;
        }
        for (name, help, v) in [
            (
                "keystore_db_pool_max_connections",
                "PostgreSQL connections this process may open (--database-pool-size)",
                s.max_size,
            ),
            (
                "keystore_db_pool_waiting",
                "Database calls waiting for a free PostgreSQL connection",
                s.waiting,
            ),
        ] {
            let metric = gauge_value(v);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}
