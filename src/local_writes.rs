//! Local admin writes waiting for their change to reach every worker of this Envoy.
//!
//! After a 2xx admin write the writer's response is held while this worker polls the changes
//! feed at once; it is released when a page polled *after* the write was published (every
//! worker then drops the changed key ids before its next request), or when the fallback (drop
//! everything) ran. Writes that complete while a poll is in flight wait for the next one: that
//! poll may have been sent before their change was committed. Concurrent writes share a poll.
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
    /// Ready to be resumed by the glue.
    released: Vec<u32>,
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

    /// The poll was published (`done`) or failed: release its writers, or hand them to the
    /// fallback.
    pub fn poll_finished(&mut self, published: bool) {
        if published {
            self.released.append(&mut self.in_poll);
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

    /// Everything was dropped: every writer held so far is released.
    pub fn dropped_everything(&mut self) {
        self.released.append(&mut self.fallback);
        self.released.append(&mut self.in_poll);
        self.released.append(&mut self.next);
    }

    /// The writers to resume now.
    pub fn take_released(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.released)
    }

    pub fn held(&self) -> usize {
        [&self.next, &self.in_poll, &self.fallback, &self.released]
            .iter()
            .map(|v| v.len())
            .fold(0, usize::saturating_add)
    }

    /// The writer's client went away.
    pub fn forget(&mut self, context_id: u32) {
        for v in [
            &mut self.next,
            &mut self.in_poll,
            &mut self.fallback,
            &mut self.released,
        ] {
            v.retain(|c| *c != context_id);
        }
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
        w.poll_finished(true);
        assert_eq!(w.take_released(), vec![1]);
        assert!(w.want_poll());
        w.poll_sent();
        w.poll_finished(false);
        assert!(w.need_fallback());
        w.hold(3);
        w.poll_sent();
        w.poll_failed_to_send(); // the next page of 3's poll could not be asked for
        w.dropped_everything();
        assert_eq!(w.take_released(), vec![2, 3]);
        assert_eq!(w.held(), 0);
        assert!(!w.busy());
    }
}
