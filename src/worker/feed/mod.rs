//! The worker and the changes feed: the periodic poll under the Envoy-wide poll lease, and the
//! polls sent at once for local admin writes (held until their page is published), with the
//! rate-limited drop of everything when the feed fails.

pub mod local_writes;
pub mod poller;

use super::{Worker, DROP_EVERYTHING_EVERY_MS};
use crate::host::{CallResponse, Callout, DispatchError, Host, Metric};
use crate::shared::{self, Epoch, Number};
use crate::store::{self, Changes};
use crate::worker::single_flight::Call;
use poller::Start;

impl Worker {
    // ---- the changes feed ----

    pub(super) fn maybe_sync<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        if now < self.next_sync_check_ms || self.flights.polls_in_flight(false) {
            return;
        }
        match poller::try_start(host, &self.names, self.owner, self.lease_ms()) {
            Start::NotNow { next_check_ms } => self.next_sync_check_ms = next_check_ms,
            Start::Poll { since } => {
                self.send_poll(host, now, since, false);
                self.next_sync_check_ms = now.saturating_add(self.cfg.sync.interval_ms);
            }
        }
    }

    /// Sends a poll from `since`; `forced`: for held writers, outside the poll lease.
    pub(super) fn send_poll<H: Host + ?Sized>(
        &mut self,
        host: &H,
        now: u64,
        since: u64,
        forced: bool,
    ) {
        host.count(Metric::SyncPolls, 1);
        let call = Callout::get(
            store::changes_path(&self.cfg.store.changes_path, since),
            self.cfg.store.timeout_ms,
        );
        match host.http_call(&call) {
            Ok(token) => {
                let deadline_ms = now.saturating_add(self.lease_ms());
                let call = Call::Poll {
                    since,
                    deadline_ms,
                    forced,
                };
                self.flights.polling(token, call);
                if forced {
                    self.writers.poll_sent();
                }
            }
            Err(DispatchError) => {
                host.count(Metric::SyncErrors, 1);
                if forced {
                    self.writers.poll_failed_to_send();
                } else {
                    let interval = self.cfg.sync.interval_ms;
                    poller::finish(host, &self.names, &self.table, self.owner, None, interval);
                }
            }
        }
    }

    /// A poll answered: publish the page (or note the failure), then release the writers that
    /// waited for it.
    pub(super) fn finish_poll<H: Host + ?Sized>(
        &mut self,
        host: &H,
        since: u64,
        forced: bool,
        response: &CallResponse,
    ) {
        let interval = self.cfg.sync.interval_ms;
        let page = match store::parse_changes(response, since) {
            Ok(page) => Some(poller::interpret(host, &self.names, since, page)),
            Err(e) => {
                host.count(Metric::SyncErrors, 1);
                log::warn!("changes feed poll failed: {e}; retrying in {interval} ms");
                None
            }
        };
        // The summary takes the page first: once published, its keys count as synced.
        if let Some(p) = &page {
            self.summary_page(host, p);
        }
        let applied = match (&page, forced) {
            (Some(p), true) => poller::finish_forced(host, &self.names, &self.table, p),
            (None, true) => poller::Applied::default(), // the lease holder's schedule stands
            (_, false) => poller::finish(
                host,
                &self.names,
                &self.table,
                self.owner,
                page.as_ref(),
                interval,
            ),
        };
        if applied.reset {
            log::info!("changes feed reset: every cached verdict dropped");
        }
        if applied.skipped > 0 {
            host.count(
                Metric::SyncSkippedEntries,
                u64::try_from(applied.skipped).unwrap_or(u64::MAX),
            );
            log::warn!(
                "changes feed page to revision {} had {} malformed entries: skipped",
                page.as_ref().map_or(0, Changes::revision),
                applied.skipped
            );
        }
        let published_ms = host.now_ms();
        self.catch_up(host, published_ms);
        if forced {
            match &page {
                Some(Changes::Changed { more: true, .. }) => {
                    let since = page.as_ref().map_or(since, Changes::revision);
                    self.send_poll(host, host.now_ms(), since, true);
                }
                Some(_) => self.writers.poll_finished(Some(published_ms)),
                None => self.writers.poll_finished(None),
            }
        }
    }

    /// Held writers: send their poll, or drop everything for those whose poll failed.
    ///
    /// Before this Envoy ever synced, a poll (from `since=0`) would only tell the current
    /// revision, not the change: drop everything. Once synced, the poll starts from the sync
    /// record's revision, 0 included (a store where nothing had changed): from 0, a page at
    /// revision 0 says that nothing changed, this write included, and one past 0 is a reset
    /// (see [`poller::interpret`]).
    pub(super) fn drive_writers<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        if self.writers.want_poll() && !self.flights.polls_in_flight(true) {
            if poller::synced(host, &self.names) {
                let since = poller::revision(host, &self.names);
                self.send_poll(host, now, since, true);
            } else {
                self.writers.poll_failed_to_send();
            }
        }
        if self.writers.need_fallback() && self.drop_everything(host, now) {
            self.writers.dropped_everything(host.now_ms());
        }
    }

    /// The fallback for a local write whose poll failed: every verdict cached by any worker of
    /// this Envoy becomes stale (a new generation), at most once per
    /// [`DROP_EVERYTHING_EVERY_MS`] per Envoy, so that a client looping admin writes cannot
    /// keep the cache empty. False when rate-limited (the writers wait).
    pub(super) fn drop_everything<H: Host + ?Sized>(&mut self, host: &H, now: u64) -> bool {
        let allowed = shared::update(host, &self.names.drops, |last: Option<Number>| {
            let last = last.map_or(0, |c| c.0);
            (last == 0 || now >= last.saturating_add(DROP_EVERYTHING_EVERY_MS))
                .then_some(Number(now))
        });
        if !matches!(allowed, Ok(Some(_))) {
            return false;
        }
        self.new_generation(host);
        log::warn!("local admin write: the changes feed failed, every cached verdict dropped");
        true
    }

    /// Every verdict cached by any worker of this Envoy becomes stale.
    fn new_generation<H: Host + ?Sized>(&mut self, host: &H) {
        let written = shared::update(host, &self.names.epoch, |e: Option<Epoch>| {
            let mut e = e.unwrap_or_default();
            e.generation = e.generation.saturating_add(1);
            Some(e)
        });
        if written.is_err() {
            // Could not tell the other workers; at least this one must not answer stale.
            self.l1.clear();
        }
        host.count(Metric::LocalDropsEverything, 1);
        self.catch_up(host, host.now_ms());
    }

    /// The filter is being reconfigured and this worker replaced: its held writers are released
    /// after everything is dropped, whatever the rate limit (the answers of their polls would
    /// reach the new worker, which knows nothing of them). Resume the writers that
    /// [`Worker::take_released_writers`] then returns, at once: this worker will not tick
    /// again. Unlike every other release, a request reaching another worker within the same
    /// millisecond may still be answered from that worker's older epoch read (reconfiguration
    /// only).
    pub fn abandon_writers<H: Host + ?Sized>(&mut self, host: &H) {
        if self.writers.held() > 0 {
            self.new_generation(host);
            self.writers.dropped_everything(0);
        }
    }
}
