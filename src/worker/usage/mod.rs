//! The worker and usage reports (see [`report`]): noting admitted keys (a flag in the L1
//! entry, checked once per merge), merging this worker's log into the Envoy's batch on the
//! tick, and sending the batch from whichever worker takes it when it is due.

pub mod report;

use super::Worker;
use keygate_protocol::KeyId;

use crate::host::{CallResponse, Callout, DispatchError, Host, Method, Metric};
use crate::shared;
use crate::store::{self, UsageReply};
use crate::worker::single_flight::Call;
use report::{Batch, NOT_SUPPORTED_BACKOFF_MS};

/// Longest time between two merges of a worker's log (shorter for short intervals).
const MERGE_EVERY_MS: u64 = 1000;

impl Worker {
    /// Notes that `key`'s cached allow admitted a request (once per merge).
    pub(super) fn note_use(&mut self, key: KeyId) {
        if !self.cfg.usage.enabled {
            return;
        }
        if let Some(e) = self.l1.positive(&key) {
            if !e.used.get() && self.usage.note(key) {
                e.used.set(true);
            }
        }
    }

    /// On the tick, at most once per [`MERGE_EVERY_MS`]: merges this worker's log into the
    /// Envoy's batch and sends the batch if it is due.
    pub(super) fn drive_usage<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        if !self.cfg.usage.enabled || now < self.next_usage_ms {
            return;
        }
        let every = (self.cfg.usage.interval_ms / 4).clamp(1, MERGE_EVERY_MS);
        self.next_usage_ms = now.saturating_add(every);
        self.merge_usage(host);
        self.maybe_report(host, now);
    }

    fn merge_usage<H: Host + ?Sized>(&mut self, host: &H) {
        if self.usage.is_empty() {
            return;
        }
        let ids: Vec<KeyId> = self.usage.drain().collect();
        for id in &ids {
            if let Some(e) = self.l1.positive(id) {
                e.used.set(false);
            }
        }
        put_back(host, &self.names.usage, ids);
    }

    /// Takes the batch if it is due and not empty (the CAS that empties it is the lease: one
    /// report per Envoy per interval) and sends it.
    fn maybe_report<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        let mut taken = Vec::new();
        let next = now.saturating_add(self.cfg.usage.interval_ms);
        let won = shared::update(host, &self.names.usage, |b: Option<Batch>| {
            let b = b?;
            if now < b.next_send_ms || b.ids.is_empty() {
                return None;
            }
            taken = b.ids;
            Some(Batch {
                next_send_ms: next,
                ids: Vec::new(),
            })
        });
        if matches!(won, Ok(Some(_))) {
            self.send_usage(host, now, taken);
        }
    }

    fn send_usage<H: Host + ?Sized>(&mut self, host: &H, now: u64, ids: Vec<KeyId>) {
        let call = Callout {
            method: Method::Post,
            path: self.cfg.store.usage_path.clone(),
            body: Some(store::usage_body(&ids)),
            timeout_ms: self.cfg.store.timeout_ms,
        };
        match host.http_call(&call) {
            Ok(token) => {
                let deadline_ms = now.saturating_add(self.lease_ms());
                self.flights
                    .polling(token, Call::Usage { ids, deadline_ms });
            }
            Err(DispatchError) => {
                host.count(Metric::UsageErrors, 1);
                put_back(host, &self.names.usage, ids);
            }
        }
    }

    /// The store answered a usage report.
    pub(super) fn finish_usage<H: Host + ?Sized>(
        &mut self,
        host: &H,
        ids: Vec<KeyId>,
        response: &CallResponse,
    ) {
        match store::usage_reply(response) {
            UsageReply::Recorded => {
                host.count(Metric::UsageReports, 1);
                let n = u64::try_from(ids.len()).unwrap_or(u64::MAX);
                host.count(Metric::UsageIdsReported, n);
            }
            UsageReply::NotSupported => {
                host.count(Metric::UsageErrors, 1);
                log::warn!(
                    "the key store does not take usage reports ({} answered {:?}): \
                     not sending any for an hour",
                    self.cfg.store.usage_path,
                    response.status
                );
                let until = host.now_ms().saturating_add(NOT_SUPPORTED_BACKOFF_MS);
                let _ = shared::update(host, &self.names.usage, |b: Option<Batch>| {
                    Some(Batch {
                        next_send_ms: until,
                        ids: b.unwrap_or_default().ids,
                    })
                });
            }
            UsageReply::Failed => {
                host.count(Metric::UsageErrors, 1);
                log::info!(
                    "usage report failed ({:?}): retrying at the next interval",
                    response.status
                );
                put_back(host, &self.names.usage, ids);
            }
        }
    }
}

/// Adds `ids` to the Envoy's batch (bounded; its schedule kept).
fn put_back<H: Host + ?Sized>(host: &H, name: &str, ids: Vec<KeyId>) {
    let _ = shared::update(host, name, |b: Option<Batch>| {
        Some(b.unwrap_or_default().merged(ids.iter().copied()))
    });
}
