//! In-memory counters, exported in the Prometheus text format on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub lookups: AtomicU64,
    pub lookups_found: AtomicU64,
    pub lookups_not_found: AtomicU64,
    pub changes_requests: AtomicU64,
    pub admin_requests: AtomicU64,
    pub usage_reports: AtomicU64,
    pub protocol_unauthorized: AtomicU64,
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The counters in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 7] = [
            (
                "keystore_lookups_total",
                "Key lookups answered (GET /v1/keys/{key_id} with a well-formed key id).",
                &self.lookups,
            ),
            (
                "keystore_lookups_found_total",
                "Key lookups that found an active key.",
                &self.lookups_found,
            ),
            (
                "keystore_lookups_not_found_total",
                "Key lookups that found no active key.",
                &self.lookups_not_found,
            ),
            (
                "keystore_changes_requests_total",
                "Change-feed requests (GET /v1/changes).",
                &self.changes_requests,
            ),
            (
                "keystore_admin_requests_total",
                "Admin API requests (/api/v1/admin/...).",
                &self.admin_requests,
            ),
            (
                "keystore_usage_reports_total",
                "Usage reports received (POST /v1/usage).",
                &self.usage_reports,
            ),
            (
                "keystore_protocol_unauthorized_total",
                "Key-store protocol requests refused for a missing or wrong protocol token.",
                &self.protocol_unauthorized,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
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
    fn renders_every_counter() {
        let m = Metrics::default();
        inc(&m.lookups);
        inc(&m.lookups);
        inc(&m.admin_requests);
        let text = m.render();
        assert!(text.contains("\nkeystore_lookups_total 2\n"), "{text}");
        assert!(
            text.contains("\nkeystore_admin_requests_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nkeystore_lookups_found_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\nkeystore_lookups_not_found_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\nkeystore_changes_requests_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE keystore_lookups_total counter"),
            "{text}"
        );
    }
}
