//! The keystore's metrics on `GET /metrics`, kept with `prometheus-client` and exported in the
//! OpenMetrics text format (which Prometheus scrapes like its own).
//!
//! Invariants: label values come from bounded sets only (route templates, never raw paths, so
//! no key id reaches a label; status classes; job names), so the number of series is bounded;
//! the counter names of the first release (`keystore_lookups_total`, ...) are kept; label
//! values are snake_case (`op="create_key"`). Besides its own, the keystore exports
//! `keystore_build_info`, the process metrics ([`process`]) and, on PostgreSQL, its connection
//! pool's state ([`pool`]).

mod pool;
mod process;

pub use pool::{PoolProbe, PoolStatus};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Labels of a request's latency: the route template, the method and the status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/v1/keys/{key_id}`), or `unmatched`.
    pub route: String,
    pub method: String,
    /// `2xx`, `4xx`, `5xx`, ...
    pub status: String,
}

/// Labels of a key-summary build: why it was built rather than extended
/// ([`crate::store::BuildReason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Labels of a database call: the job (`lookup`, `create_key`, ...) and read or write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub op: String,
    pub kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets: 0.25 ms to ~4 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 15))
}

/// Everything the keystore measures; one per process (shared by the store and the API). Help
/// texts have no final period: the encoder adds one.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub lookups: Counter,
    pub lookups_found: Counter,
    pub lookups_not_found: Counter,
    pub changes_requests: Counter,
    pub admin_requests: Counter,
    pub usage_reports: Counter,
    pub protocol_unauthorized: Counter,
    /// Admin calls answered 401 or 403.
    pub admin_refusals: Counter,
    /// Refused admin calls not written to the audit trail (over the rate bound).
    pub audit_refusals_dropped: Counter,
    pub requests: HistogramFamily<RequestLabels>,
    pub db: HistogramFamily<DbLabels>,
    /// Key ids per change-feed page.
    pub changes_page_size: Histogram,
    /// Key-summary requests (`GET /v1/summary`) answered.
    pub summary_requests: Counter,
    /// Key summaries built from the keys table, by reason.
    pub summary_builds: Family<ReasonLabels, Counter>,
    /// Key summaries extended from the change log.
    pub summary_extensions: Counter,
    /// Seconds the last build took (reading the keys included).
    pub summary_build_seconds: Gauge<f64, AtomicU64>,
    /// Seconds the last extension took (reading the change feed included).
    pub summary_extension_seconds: Gauge<f64, AtomicU64>,
    /// Bytes of the summary served now (its wire form).
    pub summary_bytes: Gauge,
    /// Key ids inserted into the summary served now (duplicates included).
    pub summary_keys: Gauge,
    /// The revision of the summary served now.
    pub summary_revision: Gauge,
    /// The estimated false-positive rate of the summary served now.
    pub summary_false_positive_rate: Gauge<f64, AtomicU64>,
}

/// Adds one to a counter.
pub fn inc(counter: &Counter) {
    counter.inc();
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

impl Metrics {
    /// The metrics of a process; `pool` reads the PostgreSQL pool's state (none on SQLite).
    pub fn new(pool: Option<PoolProbe>) -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            lookups: Counter::default(),
            lookups_found: Counter::default(),
            lookups_not_found: Counter::default(),
            changes_requests: Counter::default(),
            admin_requests: Counter::default(),
            usage_reports: Counter::default(),
            protocol_unauthorized: Counter::default(),
            admin_refusals: Counter::default(),
            audit_refusals_dropped: Counter::default(),
            requests: Family::new_with_constructor(latency_histogram),
            db: Family::new_with_constructor(latency_histogram),
            changes_page_size: Histogram::new(exponential_buckets(1.0, 4.0, 6)),
            summary_requests: Counter::default(),
            summary_builds: Family::default(),
            summary_extensions: Counter::default(),
            summary_build_seconds: Gauge::default(),
            summary_extension_seconds: Gauge::default(),
            summary_bytes: Gauge::default(),
            summary_keys: Gauge::default(),
            summary_revision: Gauge::default(),
            summary_false_positive_rate: Gauge::default(),
        };
        m.register();
        m.registry.register(
            "keystore_build",
            "The running keystore's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        m.registry
            .register_collector(Box::new(process::ProcessCollector));
        if let Some(probe) = pool {
            m.registry
                .register_collector(Box::new(pool::PoolCollector(probe)));
        }
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        let counters = [
            (
                "keystore_lookups",
                "Key lookups answered (GET /v1/keys/{key_id} with a well-formed key id)",
                &self.lookups,
            ),
            (
                "keystore_lookups_found",
                "Key lookups that found an active key (hits)",
                &self.lookups_found,
            ),
            (
                "keystore_lookups_not_found",
                "Key lookups that found no active key (misses)",
                &self.lookups_not_found,
            ),
            (
                "keystore_changes_requests",
                "Change-feed requests (GET /v1/changes)",
                &self.changes_requests,
            ),
            (
                "keystore_admin_requests",
                "Admin API requests (/api/v1/admin/...)",
                &self.admin_requests,
            ),
            (
                "keystore_usage_reports",
                "Usage reports received (POST /v1/usage)",
                &self.usage_reports,
            ),
            (
                "keystore_protocol_unauthorized",
                "Key-store protocol requests refused for a missing or wrong protocol token.",
                &self.protocol_unauthorized,
            ),
            (
                "keystore_admin_refusals",
                "Admin API calls refused (401 or 403)",
                &self.admin_refusals,
            ),
            (
                "keystore_audit_refusals_dropped",
                "Refused admin calls counted but not written to the audit trail (rate bound)",
                &self.audit_refusals_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        self.register_summary();
        let r = &mut self.registry;
        r.register(
            "keystore_request_duration_seconds",
            "HTTP request latency by route template, method and status class",
            self.requests.clone(),
        );
        r.register(
            "keystore_db_duration_seconds",
            "Database call latency by job and kind (read or write transaction)",
            self.db.clone(),
        );
        r.register(
            "keystore_changes_page_keys",
            "Key ids per change-feed page (changed), pages that reset excluded",
            self.changes_page_size.clone(),
        );
    }

    fn register_summary(&mut self) {
        let r = &mut self.registry;
        r.register(
            "keystore_summary_requests",
            "Key-summary requests answered (GET /v1/summary)",
            self.summary_requests.clone(),
        );
        r.register(
            "keystore_summary_builds",
            "Key summaries built from the keys table, by reason (first, pruned, \
             false_positive_rate, age)",
            self.summary_builds.clone(),
        );
        r.register(
            "keystore_summary_extensions",
            "Key summaries extended with the key ids the change log reports",
            self.summary_extensions.clone(),
        );
        let floats = [
            (
                "keystore_summary_build_seconds",
                "Seconds the last key-summary build took",
                &self.summary_build_seconds,
            ),
            (
                "keystore_summary_extension_seconds",
                "Seconds the last key-summary extension took",
                &self.summary_extension_seconds,
            ),
            (
                "keystore_summary_false_positive_rate",
                "Estimated false-positive rate of the key summary served now",
                &self.summary_false_positive_rate,
            ),
        ];
        for (name, help, gauge) in floats {
            r.register(name, help, gauge.clone());
        }
        let gauges = [
            (
                "keystore_summary_bytes",
                "Bytes of the key summary served now (wire form)",
                &self.summary_bytes,
            ),
            (
                "keystore_summary_keys",
                "Key ids inserted into the key summary served now",
                &self.summary_keys,
            ),
            (
                "keystore_summary_revision",
                "Revision of the key summary served now",
                &self.summary_revision,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        // Clients choose the method: an extension method (`FOO`) must not make a new series.
        const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
        let method = if KNOWN.contains(&method) {
            method
        } else {
            "other"
        };
        let labels = RequestLabels {
            route: route.to_owned(),
            method: method.to_owned(),
            status: format!("{}xx", status / 100),
        };
        self.requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records one database call.
    pub fn observe_db(&self, op: &str, kind: &str, took: Duration) {
        let labels = DbLabels {
            op: snake_case(op),
            kind: kind.to_owned(),
        };
        self.db.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Everything in the OpenMetrics text format (the collectors read their values now).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `CreateKey` → `create_key`: label values in Prometheus's snake_case (job names are Rust type
/// names).
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len().saturating_add(4));
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_under_its_first_release_name() {
        let m = Metrics::default();
        inc(&m.lookups);
        inc(&m.lookups);
        inc(&m.admin_requests);
        let text = m.render();
        for line in [
            "\nkeystore_lookups_total 2\n",
            "\nkeystore_admin_requests_total 1\n",
            "\nkeystore_lookups_found_total 0\n",
            "\nkeystore_lookups_not_found_total 0\n",
            "\nkeystore_changes_requests_total 0\n",
            "\nkeystore_usage_reports_total 0\n",
            "# TYPE keystore_lookups counter",
        ] {
            assert!(text.contains(line), "{line:?} missing in {text}");
        }
    }

    #[test]
    fn latency_is_labelled_by_route_template_and_status_class() {
        let m = Metrics::default();
        m.observe_request("/v1/keys/{key_id}", "GET", 404, Duration::from_millis(3));
        m.observe_request("unmatched", "BREW", 404, Duration::from_millis(1));
        m.observe_request("unmatched", "PROPFIND2", 404, Duration::from_millis(1));
        m.observe_db("Lookup", "read", Duration::from_millis(1));
        m.observe_db("CreateKey", "write", Duration::from_millis(1));
        m.changes_page_size.observe(3.0);
        let text = m.render();
        assert!(
            text.contains(r#"keystore_request_duration_seconds_count{route="/v1/keys/{key_id}",method="GET",status="4xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keystore_db_duration_seconds_count{op="lookup",kind="read"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keystore_db_duration_seconds_count{op="create_key",kind="write"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("keystore_changes_page_keys_count 1"),
            "{text}"
        );
        // Extension methods share one series.
        let other = r#"{route="unmatched",method="other",status="4xx"} 2"#;
        assert!(
            text.contains(&format!("keystore_request_duration_seconds_count{other}")),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
    }

    #[test]
    fn build_info_and_the_process_metrics_are_exported() {
        let text = Metrics::default().render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("keystore_build_info{{version=\"{version}\"}} 1")),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "process_threads ",
        ] {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing in {text}"
            );
        }
        assert!(
            !text.contains("keystore_db_pool"),
            "no pool on SQLite: {text}"
        );
    }

    #[test]
    fn the_pool_gauges_read_the_pool_at_each_scrape() {
        let status = PoolStatus {
            max_size: 8,
            size: 5,
            idle: 2,
            waiting: 1,
        };
        let m = Metrics::new(Some(Box::new(move || status)));
        let text = m.render();
        for line in [
            "keystore_db_pool_connections{state=\"idle\"} 2",
            "keystore_db_pool_connections{state=\"in_use\"} 3",
            "keystore_db_pool_max_connections 8",
            "keystore_db_pool_waiting 1",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
    }
}
