//! The host: what the core needs from Envoy, behind a trait so that tests control time,
//! shared data and callouts. The proxy-wasm implementation is in `glue::host`; the fake with
//! Envoy's exact semantics is in `fake_host`.

/// Why a shared-data write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// The key exists and its cas is not the one given.
    CasMismatch,
    /// Any other host failure.
    Host,
}

/// An HTTP call to the key store, dispatched on the store cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub method: Method,
    pub path: String,
    /// A JSON body (sent with `content-type: application/json`), for `POST`.
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

impl Callout {
    /// A `GET` without a body.
    pub fn get(path: String, timeout_ms: u64) -> Callout {
        Callout {
            method: Method::Get,
            path,
            body: None,
            timeout_ms,
        }
    }
}

/// The store's answer to a callout, as the host delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResponse {
    /// `:status`, or `None` when the call failed without a response (timeout, reset, no host).
    pub status: Option<u16>,
    /// The body, or `None` when it was larger than the limit the glue reads.
    pub body: Option<Vec<u8>>,
}

/// The host refused to dispatch a callout (unknown cluster, bad headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchError;

pub trait Host {
    /// Wall-clock time in milliseconds (the same clock on every worker).
    fn now_ms(&self) -> u64;
    /// Proxy-wasm `get_shared_data`: `(None, None)` when no record has this name.
    fn get_shared(&self, name: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Proxy-wasm `set_shared_data` with its exact semantics: creates a missing record whatever
    /// `cas` is; otherwise fails with `CasMismatch` when `cas` is `Some` and differs.
    fn set_shared(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;
    /// Dispatches a callout to the store; the answer comes back by token.
    fn http_call(&self, call: &Callout) -> Result<u32, DispatchError>;
    /// Sets this worker's tick period.
    fn set_tick_ms(&self, ms: u32);
    /// Adds to a counter. The counters of every allowed hit ([`Metric::is_deferred`]) may be
    /// kept in the worker until [`Host::flush_counts`].
    fn count(&self, metric: Metric, delta: u64);
    /// Adds the counts kept in the worker to the host's counters. The worker calls it at most
    /// once per millisecond from the hit path and on every tick (so within
    /// [`crate::worker::IDLE_TICK_MS`] when traffic stops). A host that keeps nothing back
    /// (such as [`crate::fake_host::FakeHost`]) has nothing to do.
    fn flush_counts(&self) {}
    /// Records a value in a histogram.
    fn record(&self, metric: Histogram, value: u64);
    /// Sets a gauge.
    fn gauge(&self, metric: Gauge, value: u64);
    /// Asks for a root callback on this worker as soon as its event loop is free (the glue
    /// enqueues to the worker's own shared queue, [`crate::worker::Worker::wake_queue`]): the
    /// worker then calls [`crate::worker::Worker::on_wake`]. False when it cannot (no queue):
    /// the tick is the fallback.
    fn wake(&self) -> bool;
    /// Asks for a root callback on another worker of this Envoy: enqueues to the shared queue
    /// named `queue` (its [`crate::worker::Worker::wake_queue`]). False when there is no such
    /// queue (the name is stale) or the host refused.
    fn wake_worker(&self, queue: &str) -> bool;
}

/// Counters, defined by the glue under [`Metric::name`]. Every name ends in `_total`
/// (Prometheus's convention for counters). The request counters share one name and carry their
/// outcome as a tag in Istio's encoding (`outcome=.=<value>;.;` before the name): a stats tag
/// extractor with regex `(outcome=\.=(.*?);\.;)` (in every Envoy config keygate ships; under
/// Istio, `extraStatTags: [outcome]`) turns it into the label, so Prometheus reads
/// `keygate_requests_total{outcome="<value>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Allowed,
    Denied,
    Forbidden,
    Unavailable,
    Throttled,
    LookupErrors,
    L1Hits,
    SharedHits,
    Misses,
    LookupsStarted,
    LookupsCoalesced,
    LookupsWaitedOnOtherWorker,
    LeaseTakeovers,
    StaleServed,
    Evictions,
    SyncPolls,
    SyncErrors,
    KeysInvalidated,
    LocalInvalidations,
    MalformedKeys,
    BadRequests,
    Anonymous,
    LocalDropsEverything,
    SyncSkippedEntries,
    LookupsOutdated,
    ReserveLookups,
    FeedDownRechecks,
    UsageReports,
    UsageIdsReported,
    UsageErrors,
    UnknownKeyDuringFlood,
    SummaryRefusals,
    SummaryFetches,
    SummaryFetchErrors,
}

impl Metric {
    pub const ALL: [Metric; 34] = [
        Metric::Allowed,
        Metric::Denied,
        Metric::Forbidden,
        Metric::Unavailable,
        Metric::Throttled,
        Metric::LookupErrors,
        Metric::L1Hits,
        Metric::SharedHits,
        Metric::Misses,
        Metric::LookupsStarted,
        Metric::LookupsCoalesced,
        Metric::LookupsWaitedOnOtherWorker,
        Metric::LeaseTakeovers,
        Metric::StaleServed,
        Metric::Evictions,
        Metric::SyncPolls,
        Metric::SyncErrors,
        Metric::KeysInvalidated,
        Metric::LocalInvalidations,
        Metric::MalformedKeys,
        Metric::BadRequests,
        Metric::Anonymous,
        Metric::LocalDropsEverything,
        Metric::SyncSkippedEntries,
        Metric::LookupsOutdated,
        Metric::ReserveLookups,
        Metric::FeedDownRechecks,
        Metric::UsageReports,
        Metric::UsageIdsReported,
        Metric::UsageErrors,
        Metric::UnknownKeyDuringFlood,
        Metric::SummaryRefusals,
        Metric::SummaryFetches,
        Metric::SummaryFetchErrors,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Allowed => "outcome=.=allowed;.;keygate_requests_total",
            Metric::Denied => "outcome=.=denied;.;keygate_requests_total",
            Metric::Forbidden => "outcome=.=forbidden;.;keygate_requests_total",
            Metric::Unavailable => "outcome=.=unavailable;.;keygate_requests_total",
            Metric::Throttled => "outcome=.=throttled;.;keygate_requests_total",
            Metric::LookupErrors => "keygate_store_errors_total",
            Metric::L1Hits => "keygate_l1_hits_total",
            Metric::SharedHits => "keygate_shared_hits_total",
            Metric::Misses => "keygate_misses_total",
            Metric::LookupsStarted => "keygate_store_lookups_total",
            Metric::LookupsCoalesced => "keygate_lookups_coalesced_total",
            Metric::LookupsWaitedOnOtherWorker => "keygate_lookups_waited_other_worker_total",
            Metric::LeaseTakeovers => "keygate_lease_takeovers_total",
            Metric::StaleServed => "keygate_stale_served_total",
            Metric::Evictions => "keygate_l1_evictions_total",
            Metric::SyncPolls => "keygate_sync_polls_total",
            Metric::SyncErrors => "keygate_sync_errors_total",
            Metric::KeysInvalidated => "keygate_keys_invalidated_total",
            Metric::LocalInvalidations => "keygate_local_invalidations_total",
            Metric::MalformedKeys => "keygate_malformed_keys_total",
            Metric::BadRequests => "outcome=.=bad_request;.;keygate_requests_total",
            Metric::Anonymous => "outcome=.=anonymous;.;keygate_requests_total",
            Metric::LocalDropsEverything => "keygate_local_drops_everything_total",
            Metric::SyncSkippedEntries => "keygate_sync_skipped_entries_total",
            Metric::LookupsOutdated => "keygate_lookups_outdated_total",
            Metric::ReserveLookups => "keygate_store_lookups_reserve_total",
            Metric::FeedDownRechecks => "keygate_feed_down_rechecks_total",
            Metric::UsageReports => "keygate_usage_reports_total",
            Metric::UsageIdsReported => "keygate_usage_ids_reported_total",
            Metric::UsageErrors => "keygate_usage_report_errors_total",
            Metric::UnknownKeyDuringFlood => {
                "outcome=.=unknown_key_during_flood;.;keygate_requests_total"
            }
            Metric::SummaryRefusals => "keygate_summary_refusals_total",
            Metric::SummaryFetches => "keygate_summary_fetches_total",
            Metric::SummaryFetchErrors => "keygate_summary_fetch_errors_total",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The counters every allowed hit moves (two host calls per request, measured 0.18 µs of
    /// Envoy CPU): the glue keeps them in the worker and adds them in one call per counter at
    /// most once per millisecond ([`Host::flush_counts`]).
    pub fn is_deferred(self) -> bool {
        matches!(self, Metric::L1Hits | Metric::Allowed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Histogram {
    /// Store lookup latency in milliseconds.
    LookupMs,
}

impl Histogram {
    pub fn name(self) -> &'static str {
        match self {
            Histogram::LookupMs => "keygate_store_lookup_ms",
        }
    }
}

/// Gauges, exported by the glue as `keygate_<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Milliseconds since the last good changes-feed poll of this Envoy.
    SyncLagMs,
    /// Whole tokens left in this Envoy's miss budget (0: new keys are refused with 503).
    MissBudgetTokens,
    /// Whole tokens left in the reserve for keys that were valid recently.
    MissReserveTokens,
    /// 1 while the summary gate is engaged (misses of keys absent from the key summary are
    /// refused without a lookup), else 0.
    SummaryGateEngaged,
    /// Bytes of the active key summary's blocks in shared data (0: none).
    SummaryBytes,
    /// Key ids in the active key summary: the store's, then the feed's (duplicates counted).
    SummaryKeys,
    /// The active key summary's estimated false-positive rate, in parts per million.
    SummaryFalsePositiveRatePpm,
    /// Milliseconds since the active key summary was fetched (0: none).
    SummaryAgeMs,
}

impl Gauge {
    pub const ALL: [Gauge; 8] = [
        Gauge::SyncLagMs,
        Gauge::MissBudgetTokens,
        Gauge::MissReserveTokens,
        Gauge::SummaryGateEngaged,
        Gauge::SummaryBytes,
        Gauge::SummaryKeys,
        Gauge::SummaryFalsePositiveRatePpm,
        Gauge::SummaryAgeMs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Gauge::SyncLagMs => "keygate_sync_lag_ms",
            Gauge::MissBudgetTokens => "keygate_miss_budget_tokens",
            Gauge::MissReserveTokens => "keygate_miss_reserve_tokens",
            Gauge::SummaryGateEngaged => "keygate_summary_gate_engaged",
            Gauge::SummaryBytes => "keygate_summary_bytes",
            Gauge::SummaryKeys => "keygate_summary_keys",
            Gauge::SummaryFalsePositiveRatePpm => "keygate_summary_false_positive_rate_ppm",
            Gauge::SummaryAgeMs => "keygate_summary_age_ms",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    /// The name Prometheus reads once the `outcome` tag is extracted, and the tag's value.
    fn exported(name: &str) -> (&str, Option<&str>) {
        match name.strip_prefix("outcome=.=") {
            Some(rest) => {
                let (value, metric) = rest.split_once(";.;").unwrap();
                (metric, Some(value))
            }
            None => (name, None),
        }
    }

    #[test]
    fn every_counter_is_exported_with_a_total_suffix() {
        for m in Metric::ALL {
            let (name, _) = exported(m.name());
            assert!(name.starts_with("keygate_"), "{m:?}: {name}");
            assert!(name.ends_with("_total"), "{m:?}: {name}");
            assert!(!name.contains(['.', '=', ';']), "{m:?}: {name}");
        }
    }

    #[test]
    fn request_outcomes_are_one_counter_with_an_outcome_label() {
        let outcomes = [
            (Metric::Allowed, "allowed"),
            (Metric::Denied, "denied"),
            (Metric::Forbidden, "forbidden"),
            (Metric::Unavailable, "unavailable"),
            (Metric::Throttled, "throttled"),
            (Metric::UnknownKeyDuringFlood, "unknown_key_during_flood"),
            (Metric::BadRequests, "bad_request"),
            (Metric::Anonymous, "anonymous"),
        ];
        for (m, outcome) in outcomes {
            assert_eq!(
                exported(m.name()),
                ("keygate_requests_total", Some(outcome))
            );
        }
        let labelled = Metric::ALL
            .iter()
            .filter(|m| exported(m.name()).1.is_some());
        assert_eq!(labelled.count(), outcomes.len());
        let mut names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            Metric::ALL.len(),
            "two counters share a full name"
        );
    }
}
