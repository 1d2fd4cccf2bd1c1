//! The summary gate: when a miss whose key the key summary says is absent is refused without a
//! lookup. One small record in shared data per Envoy, moved by CAS like the buckets
//! ([`super::bucket`]); [`decide`] is the whole rule, pure, and this file's tests are its table.
//!
//! Invariants:
//! - **not engaged, nothing changes**: every miss goes to the miss budget as without a summary
//!   (the summary is not even read), so a key created a moment ago works on its first request;
//! - it **engages** when a miss finds the main bucket below half its burst (the window starts
//!   then);
//! - **engaged**, it refuses only a key the summary says is [`Membership::Absent`] and that was
//!   not valid recently (such a key keeps the reserve, as without a summary); `MayExist` and
//!   `NoSummary` go to the budget as before; a refusal takes no token;
//! - it **disengages** at the end of a 1 s window with fewer than `miss_budget.per_second`
//!   refusals (or after a window with no miss at all): it stays shut exactly as long as the flood
//!   would outrun the budget. A threshold on the bucket alone would not: absent keys take no
//!   tokens, so the bucket refills, the gate would open, and the flood would drain it again.

use crate::host::Host;
use crate::shared::{self, Reader, Record, Writer};
use crate::summary::Membership;

/// The length of a counting window.
pub const WINDOW_MS: u64 = 1000;

/// The gate's shared record. The default is not engaged (also what a missing record means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gate {
    pub engaged: bool,
    /// When the current window started (while engaged).
    pub window_ms: u64,
    /// Refusals in the current window, counted up to `miss_budget.per_second`: past that the
    /// window's outcome is known, and the record is no longer written.
    pub refused: u64,
}

/// What the gate does with one miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on to the miss budget, as without a summary.
    Pass,
    /// Refuse it (503, `retry-after: 1`): no lookup, no token.
    Refuse,
}

/// The miss budget's main bucket: its rate (also the refusals a window needs to stay engaged)
/// and its burst (the gate engages below half of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_second: u64,
    pub burst: u64,
}

/// What the rule may ask about one miss. Each is a shared read at most, asked only when the
/// rule needs it: the bucket only while not engaged, the key only while engaged.
pub trait Miss {
    /// Whole tokens in the main bucket now.
    fn main_tokens(&mut self) -> u64;
    /// Whether the key had an allow recently (an identity within its stale window): the
    /// reserve's keys.
    fn recently_valid(&mut self) -> bool;
    /// What the key summary says about the key.
    fn membership(&mut self) -> Membership;
}

impl Gate {
    /// The gate at `now_ms`: a window that ended with at least `per_second` refusals starts the
    /// next one; one that ended with fewer, or a whole window without a miss, disengages it.
    pub fn rolled(self, now_ms: u64, per_second: u64) -> Gate {
        if !self.engaged {
            return self;
        }
        let end = self.window_ms.saturating_add(WINDOW_MS);
        if now_ms < end {
            return self; // also a clock behind the record's: no going back
        }
        if self.refused >= per_second && now_ms < end.saturating_add(WINDOW_MS) {
            return Gate {
                engaged: true,
                window_ms: end,
                refused: 0,
            };
        }
        Gate::default()
    }
}

/// The rule: the gate after one miss at `now_ms`, and what to do with the miss.
pub fn decide(gate: Gate, now_ms: u64, limits: Limits, miss: &mut impl Miss) -> (Gate, Action) {
    let mut gate = gate.rolled(now_ms, limits.per_second);
    if !gate.engaged && miss.main_tokens().saturating_mul(2) < limits.burst {
        gate = Gate {
            engaged: true,
            window_ms: now_ms,
            refused: 0,
        };
    }
    if !gate.engaged || miss.recently_valid() || miss.membership() != Membership::Absent {
        return (gate, Action::Pass);
    }
    gate.refused = gate.refused.saturating_add(1).min(limits.per_second);
    (gate, Action::Refuse)
}

impl Record for Gate {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(u8::from(self.engaged));
        w.u64(self.window_ms);
        w.u64(self.refused);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Gate> {
        let mut r = Reader::new(bytes)?;
        let engaged = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let g = Gate {
            engaged,
            window_ms: r.u64()?,
            refused: r.u64()?,
        };
        r.end()?;
        Some(g)
    }
}

/// Creates the record (not engaged) if it does not exist yet, so that it only moves by CAS.
pub fn create<H: Host + ?Sized>(host: &H, name: &str) {
    if host.get_shared(name).0.is_none() {
        let _ = host.set_shared(name, &Gate::default().encode(), None);
    }
}

/// Applies the rule to one miss under CAS; the record is written only when it changes (an
/// engage, a window rolled, a refusal counted). A CAS that keeps failing leaves the decision
/// of the last attempt: at worst a refusal goes uncounted.
pub fn on_miss<H: Host + ?Sized>(
    host: &H,
    name: &str,
    limits: Limits,
    miss: &mut impl Miss,
) -> Action {
    let now = host.now_ms();
    let mut action = Action::Pass;
    let _ = shared::update(host, name, |current: Option<Gate>| {
        let current = current.unwrap_or_default();
        let (next, a) = decide(current, now, limits, miss);
        action = a;
        (next != current).then_some(next)
    });
    action
}

/// Whether the gate is engaged now (a read; for the gauge).
pub fn engaged<H: Host + ?Sized>(host: &H, name: &str, per_second: u64) -> bool {
    let now = host.now_ms();
    shared::read::<H, Gate>(host, name)
        .0
        .is_some_and(|g| g.rolled(now, per_second).engaged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_host::FakeHost;
    use crate::test_support::test;
    use Membership::{Absent, MayExist, NoSummary};

    const LIMITS: Limits = Limits {
        per_second: 10,
        burst: 20,
    };

    /// One miss as the table gives it; `None`: the rule must not ask.
    struct Given {
        tokens: Option<u64>,
        recently_valid: Option<bool>,
        membership: Option<Membership>,
    }

    impl Miss for Given {
        fn main_tokens(&mut self) -> u64 {
            self.tokens.expect("the bucket was read")
        }
        fn recently_valid(&mut self) -> bool {
            self.recently_valid
                .expect("the key's recent allow was read")
        }
        fn membership(&mut self) -> Membership {
            self.membership.expect("the summary was read")
        }
    }

    const OPEN: Gate = Gate {
        engaged: false,
        window_ms: 0,
        refused: 0,
    };

    fn engaged_at(window_ms: u64, refused: u64) -> Gate {
        Gate {
            engaged: true,
            window_ms,
            refused,
        }
    }

    struct Row {
        name: &'static str,
        gate: Gate,
        now: u64,
        miss: Given,
        want: (Gate, Action),
    }

    fn miss(tokens: Option<u64>, recent: Option<bool>, m: Option<Membership>) -> Given {
        Given {
            tokens,
            recently_valid: recent,
            membership: m,
        }
    }

    #[test]
    fn the_rule_as_a_table() {
        use Action::{Pass, Refuse};
        let rows = [
            Row {
                name: "not engaged, bucket at half: an absent key passes, the summary unread",
                gate: OPEN,
                now: 5_000,
                miss: miss(Some(10), None, None),
                want: (OPEN, Pass),
            },
            Row {
                name: "not engaged, bucket full: nothing read but the bucket",
                gate: OPEN,
                now: 5_000,
                miss: miss(Some(20), None, None),
                want: (OPEN, Pass),
            },
            Row {
                name: "a miss finding the bucket below half engages, and an absent key is refused",
                gate: OPEN,
                now: 5_000,
                miss: miss(Some(9), Some(false), Some(Absent)),
                want: (engaged_at(5_000, 1), Refuse),
            },
            Row {
                name: "engaging on a key that may exist passes it to the budget",
                gate: OPEN,
                now: 5_000,
                miss: miss(Some(0), Some(false), Some(MayExist)),
                want: (engaged_at(5_000, 0), Pass),
            },
            Row {
                name: "engaged: an absent key is refused and counted, the bucket unread",
                gate: engaged_at(5_000, 3),
                now: 5_500,
                miss: miss(None, Some(false), Some(Absent)),
                want: (engaged_at(5_000, 4), Refuse),
            },
            Row {
                name: "engaged: a key that may exist passes to the budget",
                gate: engaged_at(5_000, 3),
                now: 5_500,
                miss: miss(None, Some(false), Some(MayExist)),
                want: (engaged_at(5_000, 3), Pass),
            },
            Row {
                name: "engaged without a summary: every key passes to the budget",
                gate: engaged_at(5_000, 3),
                now: 5_500,
                miss: miss(None, Some(false), Some(NoSummary)),
                want: (engaged_at(5_000, 3), Pass),
            },
            Row {
                name: "engaged: a key valid recently keeps the reserve, the summary unread",
                gate: engaged_at(5_000, 3),
                now: 5_500,
                miss: miss(None, Some(true), None),
                want: (engaged_at(5_000, 3), Pass),
            },
            Row {
                name: "the count stops at per_second: the window's outcome is known",
                gate: engaged_at(5_000, 10),
                now: 5_999,
                miss: miss(None, Some(false), Some(Absent)),
                want: (engaged_at(5_000, 10), Refuse),
            },
            Row {
                name: "a sustained flood keeps it engaged into the next window",
                gate: engaged_at(5_000, 10),
                now: 6_000,
                miss: miss(None, Some(false), Some(Absent)),
                want: (engaged_at(6_000, 1), Refuse),
            },
            Row {
                name: "a window of fewer refusals than per_second disengages: the key is looked up",
                gate: engaged_at(5_000, 9),
                now: 6_000,
                miss: miss(Some(20), None, None),
                want: (OPEN, Pass),
            },
            Row {
                name: "a whole window without a miss disengages, however busy the one before",
                gate: engaged_at(5_000, 10),
                now: 7_000,
                miss: miss(Some(20), None, None),
                want: (OPEN, Pass),
            },
            Row {
                name: "disengaged with the bucket still below half, it engages again at once",
                gate: engaged_at(5_000, 2),
                now: 6_200,
                miss: miss(Some(3), Some(false), Some(Absent)),
                want: (engaged_at(6_200, 1), Refuse),
            },
            Row {
                name: "a clock behind the window's start stays in the window",
                gate: engaged_at(5_000, 3),
                now: 4_990,
                miss: miss(None, Some(false), Some(Absent)),
                want: (engaged_at(5_000, 4), Refuse),
            },
        ];
        for mut row in rows {
            let got = decide(row.gate, row.now, LIMITS, &mut row.miss);
            assert_eq!(got, row.want, "{}", row.name);
        }
    }

    #[test]
    fn a_one_token_budget_engages_only_when_empty() {
        let one = Limits {
            per_second: 1,
            burst: 1,
        };
        let (g, _) = decide(OPEN, 10, one, &mut miss(Some(1), None, None));
        assert!(!g.engaged);
        let (g, a) = decide(OPEN, 10, one, &mut miss(Some(0), Some(false), Some(Absent)));
        assert_eq!((g, a), (engaged_at(10, 1), Action::Refuse));
    }

    /// A flood of absent keys over several windows on the shared record: refused all along;
    /// once it stops, the first miss after a quiet window is passed.
    #[test]
    fn on_the_shared_record_a_flood_stays_refused_until_a_quiet_window() {
        let host = FakeHost::new();
        host.set_now(1_000);
        create(&host, "g");
        let absent = || miss(Some(0), Some(false), Some(Absent));
        assert_eq!(on_miss(&host, "g", LIMITS, &mut absent()), Action::Refuse);
        for _ in 0..5 {
            for _ in 0..10 {
                host.advance(99);
                assert_eq!(on_miss(&host, "g", LIMITS, &mut absent()), Action::Refuse);
            }
            assert!(engaged(&host, "g", LIMITS.per_second));
        }
        host.advance(1_000); // a window of three refusals only
        for _ in 0..3 {
            assert_eq!(on_miss(&host, "g", LIMITS, &mut absent()), Action::Refuse);
        }
        host.advance(1_000);
        assert!(!engaged(&host, "g", LIMITS.per_second));
        let quiet = &mut miss(Some(20), None, None);
        assert_eq!(on_miss(&host, "g", LIMITS, quiet), Action::Pass);
    }

    #[test]
    fn the_record_round_trips_and_rejects_a_bad_flag() {
        let g = engaged_at(123, 7);
        assert_eq!(Gate::decode(&g.encode()), Some(g));
        let mut bytes = g.encode();
        bytes[1] = 2; // after the record version
        assert_eq!(Gate::decode(&bytes), None);
        assert!(!engaged(&FakeHost::new(), "missing", 10));
    }
}
