//! Local admin writes waiting for their change to reach every worker of this Envoy.
//!
//! After a 2xx admin write the writer's response is held while this worker polls the changes
//! feed at once; it is released when a page polled *after* the write was published (every
//! worker then drops the changed key ids before its next request), or when the fallback (drop
//! everything) ran. Writes that complete while a poll is in flight wait for the next one: that
//! poll may have been sent before their change was committed. Concurrent writes share a poll.
//!
//! A released writer is resumed only once the clock has passed the millisecond in which its
//! change was published: a worker re-reads the shared epoch whenever the millisecond changes
//! (see `Worker::check`), so every request that reaches any worker after the writer's
//! response was resumed sees the change.
//!
//! Invariant: a writer is in exactly one of `next`, `in_poll`, `fallback`, `released`.

#[derive(Debug, Default)]
pub struct Writers {
    /// Waiting for a poll that has not been sent yet.
    next: Vec<u32>,
    /// Waiting for the poll in flight.
    in_poll: Vec<u32>,
    /// Their poll failed: waiting for the (rate-limited) drop of everything.
    fallback: Vec<u32>,
    /// Ready to be resumed by the glue once the clock is past the millisecond (the second
    /// field) in which their change was published.
    released: Vec<(u32, u64)>,
}

impl Writers {
    pub fn hold(&mut self, context_id: u32) {
        self.next.push(context_id);
    }

    /// Writers that need a poll sent now.
    pub fn want_poll(&self) -> bool {
        !self.next.is_empty()
    }

    /// Whether any writer is held (the root must tick fast).
    pub fn busy(&self) -> bool {
        self.held() > 0
    }

    pub fn need_fallback(&self) -> bool {
        !self.fallback.is_empty()
    }

    /// A poll was sent: every writer waiting for one now waits for it.
    pub fn poll_sent(&mut self) {
        self.in_poll.append(&mut self.next);
    }

    /// The poll was published (at `now_ms`, read after publishing) or failed (`None`): release
    /// its writers, or hand them to the fallback.
    pub fn poll_finished(&mut self, published_ms: Option<u64>) {
        if let Some(at) = published_ms {
            self.released
                .extend(self.in_poll.drain(..).map(|id| (id, at)));
        } else {
            self.fallback.append(&mut self.in_poll);
        }
    }

    /// The poll could not be sent (a first one, or the next page of one): its writers, and
    /// those of a poll whose next page it was, go to the fallback.
    pub fn poll_failed_to_send(&mut self) {
        self.fallback.append(&mut self.in_poll);
        self.fallback.append(&mut self.next);
    }

    /// Everything was dropped (published at `published_ms`): every writer held so far is
    /// released.
    pub fn dropped_everything(&mut self, published_ms: u64) {
        for list in [&mut self.fallback, &mut self.in_poll, &mut self.next] {
            self.released
                .extend(list.drain(..).map(|id| (id, published_ms)));
        }
    }

    /// The writers to resume now (`now_ms`): those released in an earlier millisecond.
    pub fn take_released(&mut self, now_ms: u64) -> Vec<u32> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.released)
            .into_iter()
            .partition(|(_, at)| now_ms > *at);
        self.released = later;
        due.into_iter().map(|(id, _)| id).collect()
    }

    pub fn held(&self) -> usize {
        [&self.next, &self.in_poll, &self.fallback]
            .iter()
            .map(|v| v.len())
            .fold(self.released.len(), usize::saturating_add)
    }

    /// The writer's client went away.
    pub fn forget(&mut self, context_id: u32) {
        for v in [&mut self.next, &mut self.in_poll, &mut self.fallback] {
            v.retain(|c| *c != context_id);
        }
        self.released.retain(|(c, _)| *c != context_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn a_write_during_a_poll_waits_for_the_next_one() {
        let mut w = Writers::default();
        w.hold(1);
        w.poll_sent();
        w.hold(2);
        w.poll_finished(Some(10));
        assert_eq!(
            w.take_released(10),
            Vec::<u32>::new(),
            "not in the publishing ms"
        );
        assert_eq!(w.take_released(11), vec![1]);
        assert!(w.want_poll());
        w.poll_sent();
        w.poll_finished(None);
        assert!(w.need_fallback());
        w.hold(3);
        w.poll_sent();
        w.poll_failed_to_send(); // the next page of 3's poll could not be asked for
        w.dropped_everything(20);
        assert!(w.busy(), "released but not yet due: still held");
        assert_eq!(w.take_released(20), Vec::<u32>::new());
        assert_eq!(w.take_released(21), vec![2, 3]);
        assert_eq!(w.held(), 0);
        assert!(!w.busy());
    }
}
