//! [`Host`] over proxy-wasm host calls. Every call that can fail returns its error instead of
//! panicking (the SDK's convenience methods unwrap; a panic would trap the worker's VM).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

use crate::config::StoreConfig;
use crate::host::{Callout, DispatchError, Gauge, Histogram, Host, Metric, SharedError};

pub(crate) struct ProxyHost {
    cluster: String,
    authority: String,
    /// `Bearer <store.token>`, sent as `authorization` on every callout when configured.
    authorization: Option<String>,
    counters: [Option<u32>; Metric::ALL.len()],
    /// Counts kept back for the deferred counters ([`Metric::is_deferred`]), by index; added to
    /// Envoy's counters by [`Host::flush_counts`].
    kept: [Cell<u64>; Metric::ALL.len()],
    lookup_ms: Option<u32>,
    gauges: [Option<u32>; Gauge::ALL.len()],
    /// This worker's own shared queue (registered by the root context), for [`Host::wake`].
    wake_queue: Cell<Option<u32>>,
    /// This VM's `vm_id` (other workers' queues are looked up under it).
    vm_id: String,
    /// Other workers' queues already looked up, by name.
    other_queues: RefCell<HashMap<String, u32>>,
}

impl ProxyHost {
    pub fn new(store: &StoreConfig) -> ProxyHost {
        let mut counters = [None; Metric::ALL.len()];
        for m in Metric::ALL {
            if let Some(slot) = counters.get_mut(m.index()) {
                *slot = hostcalls::define_metric(MetricType::Counter, m.name()).ok();
            }
        }
        let lookup_ms =
            hostcalls::define_metric(MetricType::Histogram, Histogram::LookupMs.name()).ok();
        let gauges = Gauge::ALL.map(|g| hostcalls::define_metric(MetricType::Gauge, g.name()).ok());
        ProxyHost {
            cluster: store.cluster.clone(),
            authority: store.authority.clone(),
            authorization: store.token.as_ref().map(|t| format!("Bearer {t}")),
            gauges,
            counters,
            kept: std::array::from_fn(|_| Cell::new(0)),
            lookup_ms,
            wake_queue: Cell::new(None),
            vm_id: hostcalls::get_property(vec!["plugin_vm_id"])
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            other_queues: RefCell::new(HashMap::new()),
        }
    }

    /// Registers `name` as this worker's own shared queue, received by the root context that
    /// is current (call it from the root's own callbacks). Without it, [`Host::wake`] fails.
    pub fn register_wake_queue(&self, name: &str) {
        match super::abi::register(name) {
            Some(id) => self.wake_queue.set(Some(id)),
            None => {
                log::warn!("no wake-up queue: lookups and answers wait for the tick")
            }
        }
    }

    /// Empties a wake-up queue (its items carry nothing): this one's, or one a replaced
    /// configuration registered for the same root context.
    pub fn drain_queue(&self, queue_id: u32) {
        // Bounded: at most one wake-up is pending at a time, a few if one was lost meanwhile.
        for _ in 0..64 {
            if !super::abi::dequeue(queue_id) {
                break;
            }
        }
    }

    fn add_to_counter(&self, index: usize, delta: u64) {
        if let Some(Some(id)) = self.counters.get(index) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }
}

impl Drop for ProxyHost {
    /// A replaced worker's kept counts still reach Envoy.
    fn drop(&mut self) {
        self.flush_counts();
    }
}

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn get_shared(&self, name: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(name).unwrap_or((None, None))
    }

    fn set_shared(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match hostcalls::set_shared_data(name, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
            Err(_) => Err(SharedError::Host),
        }
    }

    fn http_call(&self, call: &Callout) -> Result<u32, DispatchError> {
        let mut headers = vec![
            (":method", call.method.as_str()),
            (":path", call.path.as_str()),
            (":authority", self.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", "keygate"),
        ];
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a.as_str()));
        }
        if call.body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        hostcalls::dispatch_http_call(
            &self.cluster,
            headers,
            call.body.as_deref(),
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|_| DispatchError)
    }

    fn set_tick_ms(&self, ms: u32) {
        let _ = hostcalls::set_tick_period(Duration::from_millis(u64::from(ms)));
    }

    fn count(&self, metric: Metric, delta: u64) {
        if metric.is_deferred() {
            if let Some(kept) = self.kept.get(metric.index()) {
                kept.set(kept.get().saturating_add(delta));
                return;
            }
        }
        self.add_to_counter(metric.index(), delta);
    }

    fn flush_counts(&self) {
        for (index, kept) in self.kept.iter().enumerate() {
            let delta = kept.replace(0);
            if delta > 0 {
                self.add_to_counter(index, delta);
            }
        }
    }

    fn record(&self, _metric: Histogram, value: u64) {
        if let Some(id) = self.lookup_ms {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    fn gauge(&self, metric: Gauge, value: u64) {
        if let Some(Some(id)) = self.gauges.get(metric.index()) {
            let _ = hostcalls::record_metric(*id, value);
        }
    }

    fn wake_worker(&self, queue: &str) -> bool {
        let known = self.other_queues.borrow().get(queue).copied();
        let id = match known {
            Some(id) => id,
            None => match super::abi::resolve(&self.vm_id, queue) {
                Some(id) => {
                    // Bounded by the owner ids a worker wakes (the most recent few).
                    let mut cache = self.other_queues.borrow_mut();
                    if cache.len() >= 64 {
                        cache.clear();
                    }
                    cache.insert(queue.to_string(), id);
                    id
                }
                _ => return false,
            },
        };
        super::abi::enqueue(id, b"w")
    }

    fn wake(&self) -> bool {
        self.wake_queue
            .get()
            .is_some_and(|id| super::abi::enqueue(id, b"w"))
    }
}
