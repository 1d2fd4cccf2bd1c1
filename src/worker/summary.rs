//! The worker and the key summary ([`crate::summary`]): the fetch (a [`Call::Summary`],
//! driven from the tick under the Envoy's install lease), the feed's pages added to it before
//! they are published, a reset that drops it, and the membership answer the gate asks for.
//!
//! Invariant: the summary's life never changes a request's answer by itself; only the gate
//! reads [`Worker::membership`], on a miss, never on the hit path. A fetch that fails, is
//! refused (status, size, form) or loses a race leaves the summary as it was (none after a
//! reset or at start: misses as without one) and is retried after a backoff, with a log line.

use keygate_protocol::KeyId;

use super::feed::poller;
use super::Worker;
use crate::host::{CallResponse, Callout, DispatchError, Gauge, Host, Metric};
use crate::shared::table::LEASE_GRACE_MS;
use crate::store::{Changes, MAX_CALLOUT_BODY};
use crate::summary::install::{self, Ticket, Want};
use crate::summary::{self, Membership, Meta};
use crate::worker::single_flight::Call;

/// How often a worker looks at the summary (a fetch due? its gauges).
pub const CHECK_EVERY_MS: u64 = 250;

impl Worker {
    /// What the summary says about `key`: one read of its meta, one of a 4 KiB chunk.
    pub(super) fn membership<H: Host + ?Sized>(&self, host: &H, key: &KeyId) -> Membership {
        if !self.cfg.summary.enabled {
            return Membership::NoSummary;
        }
        summary::membership(host, &self.names, key)
    }

    /// The largest body the glue reads for the answer to callout `token`: a summary's limit
    /// for a summary fetch, [`MAX_CALLOUT_BODY`] for every other call.
    pub fn body_limit(&self, token: u32) -> usize {
        match self.flights.call(token) {
            Some(Call::Summary { .. }) => install::body_limit(self.cfg.summary.max_bytes),
            _ => MAX_CALLOUT_BODY,
        }
    }

    fn summary_lease_ms(&self) -> u64 {
        self.cfg.summary.timeout_ms.saturating_add(LEASE_GRACE_MS)
    }

    /// On the tick, at most once per [`CHECK_EVERY_MS`]: reports the gauges and starts a
    /// fetch when one is wanted and due, once this Envoy's feed has synced (the snapshot must
    /// be taken after a page the feed published, see [`install`]).
    pub(super) fn drive_summary<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        if !self.cfg.summary.enabled || now < self.next_summary_check_ms {
            return;
        }
        self.next_summary_check_ms = now.saturating_add(CHECK_EVERY_MS);
        let active = summary::active(host, &self.names);
        report(host, active.as_ref(), now);
        let want = Want {
            max_false_positive_rate: self.cfg.summary.max_false_positive_rate,
            refetch_min_interval_ms: self.cfg.summary.refetch_min_interval_ms,
        };
        if self.flights.summary_in_flight()
            || !install::wanted(active.as_ref(), now, &want)
            || !poller::synced(host, &self.names)
        {
            return;
        }
        if let Some(ticket) = install::try_start(host, &self.names, now, self.summary_lease_ms()) {
            self.send_fetch(host, now, ticket);
        }
    }

    fn send_fetch<H: Host + ?Sized>(&mut self, host: &H, now: u64, ticket: Ticket) {
        host.count(Metric::SummaryFetches, 1);
        let call = Callout::get(self.cfg.summary.path.clone(), self.cfg.summary.timeout_ms);
        match host.http_call(&call) {
            Ok(token) => {
                let deadline_ms = now.saturating_add(self.summary_lease_ms());
                self.flights.polling(
                    token,
                    Call::Summary {
                        ticket,
                        deadline_ms,
                    },
                );
            }
            Err(DispatchError) => self.fetch_failed(host, ticket, "could not dispatch"),
        }
    }

    /// The store answered a fetch: install the summary, or note why not.
    pub(super) fn finish_summary<H: Host + ?Sized>(
        &mut self,
        host: &H,
        ticket: Ticket,
        response: &CallResponse,
    ) {
        let (header, blocks) = match install::parse(response, self.cfg.summary.max_bytes) {
            Ok(parsed) => parsed,
            Err(why) => return self.fetch_failed(host, ticket, &why.to_string()),
        };
        let lease_ms = self.summary_lease_ms();
        let started_ms = host.now_ms();
        match install::install(host, &self.names, ticket, &header, blocks, lease_ms) {
            Ok(meta) => {
                log::info!(
                    "key summary installed in {} ms: revision {}, {} keys, {} bytes, estimated \
                     false-positive rate {:.4}",
                    host.now_ms().saturating_sub(started_ms),
                    meta.revision,
                    meta.keys,
                    meta.bytes(),
                    meta.false_positive_rate()
                );
                report(host, Some(&meta), host.now_ms());
            }
            Err(install::Abandoned) => {
                // A reset or a takeover replaced this install (then `fail` changes nothing),
                // or shared data could not be written.
                let _ = install::fail(host, &self.names, ticket.id, host.now_ms());
                log::info!("key summary install {} abandoned", ticket.id);
            }
        }
    }

    fn fetch_failed<H: Host + ?Sized>(&mut self, host: &H, ticket: Ticket, why: &str) {
        host.count(Metric::SummaryFetchErrors, 1);
        let retry = install::fail(host, &self.names, ticket.id, host.now_ms());
        log::warn!(
            "key summary fetch ({}) failed: {why}; misses go on as without it{}",
            self.cfg.summary.path,
            retry.map_or(String::new(), |ms| format!("; retrying in {ms} ms"))
        );
    }

    /// A page of the feed, before it is published: its key ids reach the summary (and an
    /// install in flight); a reset drops the summary (it may miss keys created in the gap)
    /// and a new fetch is due. Also with `summary.enabled` off (two small reads when there
    /// is no summary): a summary another configuration of this Envoy installed stays current,
    /// so turning it on again never reads one that missed pages.
    pub(super) fn summary_page<H: Host + ?Sized>(&mut self, host: &H, page: &Changes) {
        match page {
            Changes::Changed { keys, .. } => {
                let ids: Vec<KeyId> = keys.iter().map(|c| c.key).collect();
                install::add(host, &self.names, &ids);
            }
            Changes::Reset { .. } => {
                install::reset(host, &self.names);
                log::info!("changes feed reset: key summary dropped, fetching it again");
                report(host, None, host.now_ms());
                self.next_summary_check_ms = 0;
            }
        }
    }
}

/// The summary's gauges (all 0 without one).
fn report<H: Host + ?Sized>(host: &H, active: Option<&Meta>, now: u64) {
    let m = active.copied();
    let bytes = m.map_or(0, |m| u64::try_from(m.bytes()).unwrap_or(u64::MAX));
    host.gauge(Gauge::SummaryBytes, bytes);
    host.gauge(Gauge::SummaryKeys, m.map_or(0, |m| m.keys));
    let ppm = m.map_or(0.0, |m| (m.false_positive_rate() * 1e6).round());
    // In 0..=1e6: the cast cannot overflow.
    host.gauge(Gauge::SummaryFalsePositiveRatePpm, ppm as u64);
    let age = m.map_or(0, |m| now.saturating_sub(m.fetched_ms));
    host.gauge(Gauge::SummaryAgeMs, age);
}
