//! A [`Host`] for tests, with Envoy's exact shared-data semantics (those of
//! proxy-wasm-cpp-host's `SharedData`, `src/shared_data.cc`, which Envoy embeds; checked
//! against Envoy 1.40): one shared space per Envoy, seen by all its workers;
//! a missing record is created by `set` whatever cas is passed; an existing one is only written
//! when cas is `None` (sent as 0) or equal to the stored one; every write bumps the cas; no
//! delete, no expiry. Time is controlled by the test; callouts are recorded and answered by
//! the test.
#![allow(clippy::arithmetic_side_effects)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::host::{Callout, DispatchError, Gauge, Histogram, Host, Metric, SharedError};

/// Something another worker does just before a set of a record whose name contains
/// the pattern.
type Hook = (String, Box<dyn FnOnce()>);

#[derive(Default)]
struct Space {
    data: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    writes: u64,
    reads: u64,
    /// name → value written by "another worker" just before the next set of that name.
    interference: HashMap<String, Vec<u8>>,
    /// Run once, before the next set of a name that contains the pattern.
    hooks: Vec<Hook>,
    /// Sets of keys containing the pattern that fail with a host error (count left).
    failing: Vec<(String, u32)>,
}

impl Space {
    fn bump(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        self.next_cas
    }

    fn set(&mut self, name: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        if let Some(f) = self
            .failing
            .iter_mut()
            .find(|(p, n)| *n > 0 && name.contains(p.as_str()))
        {
            f.1 -= 1;
            return Err(SharedError::Host);
        }
        if let Some(other) = self.interference.remove(name) {
            let c = self.bump();
            self.data.insert(name.to_string(), (other, c));
        }
        if let Some((_, stored)) = self.data.get(name) {
            if let Some(c) = cas {
                if c != 0 && c != *stored {
                    return Err(SharedError::CasMismatch);
                }
            }
        }
        let c = self.bump();
        self.data.insert(name.to_string(), (value.to_vec(), c));
        self.writes += 1;
        Ok(())
    }
}

/// One worker's view of a fake Envoy. [`FakeHost::sibling`] gives another worker of the same
/// Envoy (same shared data and clock); [`FakeHost::new`] a new Envoy.
pub struct FakeHost {
    space: Rc<RefCell<Space>>,
    clock: Rc<Cell<u64>>,
    next_token: Cell<u32>,
    calls: RefCell<Vec<(u32, Callout)>>,
    dispatch_fails: Cell<bool>,
    tick_ms: Cell<u32>,
    /// Wake-ups asked for ([`Host::wake`]) since the last [`FakeHost::take_wakes`].
    wakes: Cell<u32>,
    /// [`Host::flush_counts`] calls (this fake counts at once: there is nothing to flush).
    flushes: Cell<u32>,
    wake_fails: Cell<bool>,
    /// Other workers' queues enqueued to ([`Host::wake_worker`]).
    woken: RefCell<Vec<String>>,
    metrics: RefCell<HashMap<&'static str, u64>>,
    histograms: RefCell<Vec<u64>>,
    gauges: RefCell<HashMap<&'static str, u64>>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::with(
            Rc::new(RefCell::new(Space::default())),
            Rc::new(Cell::new(1_000_000)),
        )
    }

    fn with(space: Rc<RefCell<Space>>, clock: Rc<Cell<u64>>) -> FakeHost {
        FakeHost {
            space,
            clock,
            next_token: Cell::new(0),
            calls: RefCell::new(Vec::new()),
            dispatch_fails: Cell::new(false),
            tick_ms: Cell::new(0),
            wakes: Cell::new(0),
            flushes: Cell::new(0),
            wake_fails: Cell::new(false),
            woken: RefCell::new(Vec::new()),
            metrics: RefCell::new(HashMap::new()),
            histograms: RefCell::new(Vec::new()),
            gauges: RefCell::new(HashMap::new()),
        }
    }

    /// Another worker of the same Envoy.
    pub fn sibling(&self) -> FakeHost {
        FakeHost::with(Rc::clone(&self.space), Rc::clone(&self.clock))
    }

    pub fn set_now(&self, ms: u64) {
        self.clock.set(ms);
    }

    pub fn advance(&self, ms: u64) {
        self.clock.set(self.clock.get() + ms);
    }

    /// Callouts dispatched since the last call, oldest first.
    pub fn take_calls(&self) -> Vec<(u32, Callout)> {
        std::mem::take(&mut self.calls.borrow_mut())
    }

    pub fn fail_dispatch(&self, fail: bool) {
        self.dispatch_fails.set(fail);
    }

    /// How many wake-ups were asked for since the last call.
    pub fn take_wakes(&self) -> u32 {
        self.wakes.replace(0)
    }

    /// The queues of other workers woken since the last call.
    pub fn take_woken(&self) -> Vec<String> {
        std::mem::take(&mut self.woken.borrow_mut())
    }

    /// Makes [`Host::wake`] fail (as when the glue has no queue).
    pub fn fail_wake(&self, fail: bool) {
        self.wake_fails.set(fail);
    }

    pub fn tick_ms(&self) -> u32 {
        self.tick_ms.get()
    }

    pub fn metric(&self, m: Metric) -> u64 {
        self.metrics.borrow().get(m.name()).copied().unwrap_or(0)
    }

    /// A gauge's last value (`None`: never set).
    pub fn gauge_value(&self, g: Gauge) -> Option<u64> {
        self.gauges.borrow().get(g.name()).copied()
    }

    pub fn histogram(&self) -> Vec<u64> {
        self.histograms.borrow().clone()
    }

    /// Shared-data reads so far, by any worker of this Envoy.
    /// How many times the worker asked to flush its kept counts ([`Host::flush_counts`]).
    pub fn flushes(&self) -> u32 {
        self.flushes.get()
    }

    pub fn shared_reads(&self) -> u64 {
        self.space.borrow().reads
    }

    /// Successful shared-data writes so far, by any worker of this Envoy.
    pub fn shared_writes(&self) -> u64 {
        self.space.borrow().writes
    }

    /// Number of keys in shared data (there is no delete: this only grows).
    pub fn shared_keys(&self) -> usize {
        self.space.borrow().data.len()
    }

    /// Total bytes held in shared data.
    pub fn shared_bytes(&self) -> usize {
        self.space
            .borrow()
            .data
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }

    /// Simulates another worker writing `value` to `name` between this worker's next read and
    /// write of it: the next `set_shared` of `name` then fails its CAS.
    pub fn interfere_once(&self, name: &str, value: Vec<u8>) {
        self.space
            .borrow_mut()
            .interference
            .insert(name.to_string(), value);
    }
}

impl FakeHost {
    /// Runs `hook` (another worker's doing) just before the next set of a name containing
    /// `pattern`, on any worker of this Envoy: a race at an exact point.
    pub fn before_next_set(&self, pattern: &str, hook: impl FnOnce() + 'static) {
        self.space
            .borrow_mut()
            .hooks
            .push((pattern.to_string(), Box::new(hook)));
    }

    /// The next `n` sets of keys containing `pattern` fail with a host error.
    pub fn fail_sets(&self, pattern: &str, n: u32) {
        self.space
            .borrow_mut()
            .failing
            .push((pattern.to_string(), n));
    }

    fn run_hook(&self, name: &str) {
        let hook = {
            let mut space = self.space.borrow_mut();
            let i = space
                .hooks
                .iter()
                .position(|(p, _)| name.contains(p.as_str()));
            i.map(|i| space.hooks.remove(i).1)
        };
        if let Some(hook) = hook {
            hook();
        }
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.clock.get()
    }

    fn get_shared(&self, name: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let mut space = self.space.borrow_mut();
        space.reads += 1;
        match space.data.get(name) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }

    fn set_shared(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.run_hook(name);
        self.space.borrow_mut().set(name, value, cas)
    }

    fn http_call(&self, call: &Callout) -> Result<u32, DispatchError> {
        if self.dispatch_fails.get() {
            return Err(DispatchError);
        }
        let token = self.next_token.get() + 1;
        self.next_token.set(token);
        self.calls.borrow_mut().push((token, call.clone()));
        Ok(token)
    }

    fn set_tick_ms(&self, ms: u32) {
        self.tick_ms.set(ms);
    }

    fn count(&self, metric: Metric, delta: u64) {
        *self.metrics.borrow_mut().entry(metric.name()).or_insert(0) += delta;
    }

    fn record(&self, _metric: Histogram, value: u64) {
        self.histograms.borrow_mut().push(value);
    }

    fn gauge(&self, metric: Gauge, value: u64) {
        self.gauges.borrow_mut().insert(metric.name(), value);
    }

    fn flush_counts(&self) {
        self.flushes.set(self.flushes.get().saturating_add(1));
    }

    fn wake(&self) -> bool {
        if self.wake_fails.get() {
            return false;
        }
        self.wakes.set(self.wakes.get() + 1);
        true
    }

    fn wake_worker(&self, queue: &str) -> bool {
        self.woken.borrow_mut().push(queue.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn envoy_shared_data_semantics() {
        let a = FakeHost::new();
        let b = a.sibling();
        assert_eq!(a.get_shared("k"), (None, None));
        // Creation ignores the cas.
        assert_eq!(a.set_shared("k", b"1", Some(12345)), Ok(()));
        let (v, c1) = b.get_shared("k");
        assert_eq!(v.as_deref(), Some(&b"1"[..]));
        let c1 = c1.unwrap();
        // A stale cas fails; the right one succeeds and bumps the cas.
        assert_eq!(
            b.set_shared("k", b"2", Some(c1.wrapping_add(7))),
            Err(SharedError::CasMismatch)
        );
        assert_eq!(b.set_shared("k", b"2", Some(c1)), Ok(()));
        let (_, c2) = a.get_shared("k");
        assert_ne!(c2, Some(c1));
        assert_eq!(
            a.set_shared("k", b"3", Some(c1)),
            Err(SharedError::CasMismatch)
        );
        // cas None (0) writes unconditionally.
        assert_eq!(a.set_shared("k", b"4", None), Ok(()));
        assert_eq!(a.set_shared("k", b"5", Some(0)), Ok(()));
        assert_eq!(b.get_shared("k").0.as_deref(), Some(&b"5"[..]));
        // Another Envoy does not see it.
        assert_eq!(FakeHost::new().get_shared("k"), (None, None));
    }
}
