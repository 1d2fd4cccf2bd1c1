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

/// Counters, exported by the glue as `keygate_<name>`.
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
}

impl Metric {
    pub const ALL: [Metric; 30] = [
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
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Allowed => "keygate_requests_allowed",
            Metric::Denied => "keygate_requests_denied",
            Metric::Forbidden => "keygate_requests_forbidden",
            Metric::Unavailable => "keygate_requests_unavailable",
            Metric::Throttled => "keygate_requests_throttled",
            Metric::LookupErrors => "keygate_store_errors",
            Metric::L1Hits => "keygate_l1_hits",
            Metric::SharedHits => "keygate_shared_hits",
            Metric::Misses => "keygate_misses",
            Metric::LookupsStarted => "keygate_store_lookups",
            Metric::LookupsCoalesced => "keygate_lookups_coalesced",
            Metric::LookupsWaitedOnOtherWorker => "keygate_lookups_waited_other_worker",
            Metric::LeaseTakeovers => "keygate_lease_takeovers",
            Metric::StaleServed => "keygate_stale_served",
            Metric::Evictions => "keygate_l1_evictions",
            Metric::SyncPolls => "keygate_sync_polls",
            Metric::SyncErrors => "keygate_sync_errors",
            Metric::KeysInvalidated => "keygate_keys_invalidated",
            Metric::LocalInvalidations => "keygate_local_invalidations",
            Metric::MalformedKeys => "keygate_malformed_keys",
            Metric::BadRequests => "keygate_requests_bad",
            Metric::Anonymous => "keygate_requests_anonymous",
            Metric::LocalDropsEverything => "keygate_local_drops_everything",
            Metric::SyncSkippedEntries => "keygate_sync_skipped_entries",
            Metric::LookupsOutdated => "keygate_lookups_outdated",
            Metric::ReserveLookups => "keygate_store_lookups_reserve",
            Metric::FeedDownRechecks => "keygate_feed_down_rechecks",
            Metric::UsageReports => "keygate_usage_reports",
            Metric::UsageIdsReported => "keygate_usage_ids_reported",
            Metric::UsageErrors => "keygate_usage_report_errors",
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
}

impl Gauge {
    pub const ALL: [Gauge; 3] = [
        Gauge::SyncLagMs,
        Gauge::MissBudgetTokens,
        Gauge::MissReserveTokens,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Gauge::SyncLagMs => "keygate_sync_lag_ms",
            Gauge::MissBudgetTokens => "keygate_miss_budget_tokens",
            Gauge::MissReserveTokens => "keygate_miss_reserve_tokens",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
