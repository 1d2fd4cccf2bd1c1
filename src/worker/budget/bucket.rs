//! The miss budget: a token bucket in shared data, shared by every worker of one Envoy, so that
//! a stream of distinct unknown keys cannot turn into one store lookup per request. Only
//! misses take tokens; cached answers never touch it.

use crate::host::Host;
use crate::shared::{self, Reader, Record, Writer};

/// Tokens are kept in thousandths so that refill at any rate is exact per millisecond.
const MILLI: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub milli_tokens: u64,
    pub last_ms: u64,
}

impl Bucket {
    pub fn full(burst: u64, now_ms: u64) -> Bucket {
        Bucket {
            milli_tokens: burst.saturating_mul(MILLI),
            last_ms: now_ms,
        }
    }

    /// The bucket at `now_ms`: `per_second` tokens a second, at most `burst`.
    pub fn refilled(self, now_ms: u64, per_second: u64, burst: u64) -> Bucket {
        if now_ms <= self.last_ms {
            return self; // another worker's clock read was later: no refill, no going back
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let added = elapsed.saturating_mul(per_second); // ms * tokens/s = milli-tokens
        let cap = burst.saturating_mul(MILLI);
        Bucket {
            milli_tokens: self.milli_tokens.saturating_add(added).min(cap),
            last_ms: now_ms,
        }
    }

    /// Takes one token, or `None` when the bucket holds less than one.
    pub fn take(self) -> Option<Bucket> {
        let left = self.milli_tokens.checked_sub(MILLI)?;
        Some(Bucket {
            milli_tokens: left,
            ..self
        })
    }
}

impl Record for Bucket {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.milli_tokens);
        w.u64(self.last_ms);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Bucket> {
        let mut r = Reader::new(bytes)?;
        let b = Bucket {
            milli_tokens: r.u64()?,
            last_ms: r.u64()?,
        };
        r.end()?;
        Some(b)
    }
}

/// Creates the bucket full if it does not exist yet, so that takes only ever move it by CAS (a
/// missing record cannot be CAS-protected: two workers creating it would both win).
pub fn create<H: Host + ?Sized>(host: &H, name: &str, burst: u64) {
    if host.get_shared(name).0.is_none() {
        let _ = host.set_shared(name, &Bucket::full(burst, host.now_ms()).encode(), None);
    }
}

/// Whether the bucket holds a token now (a read; nothing is taken). A miss that finds none is
/// refused at once instead of being parked until the tick finds the same.
pub fn has_token<H: Host + ?Sized>(host: &H, name: &str, per_second: u64, burst: u64) -> bool {
    let now = host.now_ms();
    match shared::read::<H, Bucket>(host, name).0 {
        Some(b) => b.refilled(now, per_second, burst).take().is_some(),
        None => true,
    }
}

/// Whole tokens in the bucket now (a read; for the budget gauges).
pub fn level<H: Host + ?Sized>(host: &H, name: &str, per_second: u64, burst: u64) -> u64 {
    let now = host.now_ms();
    match shared::read::<H, Bucket>(host, name).0 {
        Some(b) => b.refilled(now, per_second, burst).milli_tokens / MILLI,
        None => burst,
    }
}

/// Takes one token from the shared bucket under CAS. `false` when the budget is spent, and
/// also when the CAS kept failing (contention that heavy means the budget is being raced for).
pub fn take_token<H: Host + ?Sized>(host: &H, name: &str, per_second: u64, burst: u64) -> bool {
    let now = host.now_ms();
    let mut empty = false;
    let written = shared::update(host, name, |current: Option<Bucket>| {
        let bucket = current
            .unwrap_or_else(|| Bucket::full(burst, now))
            .refilled(now, per_second, burst);
        match bucket.take() {
            Some(next) => {
                empty = false;
                Some(next)
            }
            None => {
                empty = true;
                None
            }
        }
    });
    matches!(written, Ok(Some(_))) && !empty
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_host::FakeHost;
    use crate::test_support::test;

    #[test]
    fn burst_then_rate() {
        let host = FakeHost::new();
        host.set_now(1_000);
        let taken = (0..300)
            .filter(|_| take_token(&host, "b", 100, 200))
            .count();
        assert_eq!(taken, 200, "the burst");
        host.advance(100); // 100 ms at 100/s = 10 tokens
        let taken = (0..300)
            .filter(|_| take_token(&host, "b", 100, 200))
            .count();
        assert_eq!(taken, 10);
        host.advance(60_000); // refill caps at the burst
        let taken = (0..300)
            .filter(|_| take_token(&host, "b", 100, 200))
            .count();
        assert_eq!(taken, 200);
    }

    #[test]
    fn fractional_rates_accumulate() {
        let mut b = Bucket {
            milli_tokens: 0,
            last_ms: 0,
        };
        for t in 1..=3 {
            b = b.refilled(t * 100, 3, 10); // 0.3 tokens per 100 ms
        }
        assert_eq!(b.milli_tokens, 900);
        assert!(b.take().is_none());
        let b = b.refilled(400, 3, 10);
        assert!(b.take().is_some());
    }

    #[test]
    fn a_clock_behind_the_record_neither_refills_nor_rewinds() {
        let b = Bucket {
            milli_tokens: 0,
            last_ms: 500,
        };
        assert_eq!(b.refilled(400, 100, 10), b);
    }

    /// Three workers take tokens concurrently, interleaving reads and writes: the total never
    /// exceeds the budget, because every take is a CAS on the same record.
    #[test]
    fn workers_racing_never_exceed_the_budget() {
        let a = FakeHost::new();
        let b = a.sibling();
        let c = a.sibling();
        a.set_now(10);
        create(&a, "b", 50);
        let mut taken = 0;
        for round in 0..100 {
            // Another worker writes between this worker's read and write on every other round.
            if round % 2 == 0 {
                let current = shared::read::<FakeHost, Bucket>(&b, "b")
                    .0
                    .unwrap_or_else(|| Bucket::full(50, 10));
                if let Some(next) = current.take() {
                    a.interfere_once("b", next.encode());
                    taken += 1;
                }
            }
            for h in [&a, &b, &c] {
                if take_token(h, "b", 1, 50) {
                    taken += 1;
                }
            }
        }
        assert_eq!(taken, 50);
    }

    #[test]
    fn the_level_counts_whole_tokens_after_refill() {
        let h = FakeHost::new();
        h.set_now(1_000);
        assert_eq!(level(&h, "b", 10, 20), 20, "a missing bucket is full");
        create(&h, "b", 20);
        for _ in 0..15 {
            assert!(take_token(&h, "b", 10, 20));
        }
        assert_eq!(level(&h, "b", 10, 20), 5);
        h.set_now(1_250);
        assert_eq!(
            level(&h, "b", 10, 20),
            7,
            "2.5 tokens refilled, whole ones counted"
        );
        h.set_now(10_000);
        assert_eq!(level(&h, "b", 10, 20), 20, "never above the burst");
    }
}
