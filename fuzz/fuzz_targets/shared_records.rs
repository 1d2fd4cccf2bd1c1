//! The shared-data record codecs, through `keygate::shared::Record`: `Slot` (shared::table),
//! `Epoch`, `ChangeRing`, `Number` (shared), `Bucket` (worker::budget::bucket), `Gate`
//! (worker::budget::gate) and `FeedRecord` (worker::feed::poller). Shared data is written by every worker of an Envoy (and by other
//! filter versions sharing the `vm_id`), so a decoder meets any bytes.
//!
//! Input: a selector byte, then the rest. Selector `s`: record kind `s % 6` (0 epoch, 1 change
//! ring, 2 counter, 3 bucket and gate, 4 sync record, 5 slot); below 0x80 the rest is decoded as that
//! record; from 0x80 the rest is read as field values, a record is built from them, encoded
//! and decoded.
//!
//! Properties:
//! - decode never panics; when it succeeds, `decode(encode(decode(x))) == decode(x)` and
//!   `encode(decode(x)) == x` (the encoding is canonical; the one exception is a slot whose
//!   failed lease carries an owner, which encodes as 0).
//! - any value built from fields round-trips: `decode(encode(v)) == v`.
//! - on a decoded change ring, `since(seen)` never panics and only ever lists a suffix of it.
#![no_main]

use std::fmt::Debug;

use keygate::worker::budget::bucket::Bucket;
use keygate::worker::budget::gate::Gate;
use keygate::freshness::Stamp;
use keygate::shared::{CatchUp, ChangeRing, Number, Epoch, Record};
use keygate::store::Change;
use keygate::shared::table::{Lease, LeaseState, Slot, SlotVerdict};
use keygate::worker::feed::poller::FeedRecord;
use keygate::verdict::Identity;
use keygate_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

fn decode_round_trip<T: Record + PartialEq + Debug>(
    bytes: &[u8],
    canonical: impl Fn(&T) -> bool,
) -> Option<T> {
    let v = T::decode(bytes)?;
    let enc = v.encode();
    assert_eq!(
        T::decode(&enc).as_ref(),
        Some(&v),
        "decode(encode(decode(x))) != decode(x)"
    );
    assert_eq!(
        enc.len(),
        bytes.len(),
        "{v:?}: re-encoded to another length"
    );
    if canonical(&v) {
        assert_eq!(enc, bytes, "{v:?}: not the canonical encoding");
    }
    Some(v)
}

fn build_round_trip<T: Record + PartialEq + Debug>(v: T) {
    let enc = v.encode();
    assert_eq!(T::decode(&enc).as_ref(), Some(&v), "decode(encode(v)) != v");
    assert_eq!(T::decode(&enc).map(|d| d.encode()), Some(enc));
}

fn check_ring(ring: &ChangeRing, seen: u64) {
    let n = ring.ids.len();
    assert!(n <= ChangeRing::CAPACITY);
    for s in [
        seen,
        0,
        ring.head_seq,
        ring.head_seq.wrapping_sub(1),
        u64::MAX,
    ] {
        if let CatchUp::Keys(k) = ring.since(s) {
            assert!(
                k.len() <= n && ring.ids.ends_with(k),
                "since({s}) is not a suffix"
            );
        }
        let _ = ring.changed_since(&keygate_protocol::KeyId([0; 32]), s);
    }
}

fn identity(c: &mut Cursor) -> Identity {
    Identity {
        account_id: c.short_string(),
        user_id: c.short_string(),
        role: c.short_string(),
        // `u64::MAX` is how "never" is written: as an expiry it reads back as `None`.
        expires_ms: (c.u8() & 1 != 0)
            .then(|| c.u64())
            .filter(|e| *e != u64::MAX),
        claims: (0..c.u8() % 4)
            .map(|_| (c.short_string(), c.short_string()))
            .collect(),
    }
}

fn slot(c: &mut Cursor) -> Slot {
    let flags = c.u8();
    let verdict = (flags & 1 != 0).then(|| SlotVerdict {
        key: c.key_id(),
        identity: (flags & 4 != 0).then(|| identity(c)),
        // Read in the order a slot encodes them (the corpus was written so).
        stamp: Stamp {
            generation: c.u64(),
            expires_ms: c.u64(),
            stale_until_ms: c.u64(),
            fetched_ms: c.u64(),
        },
    });
    let lease = (flags & 2 != 0).then(|| Lease {
        key: c.key_id(),
        state: if flags & 8 != 0 {
            LeaseState::Failed { at_ms: c.u64() }
        } else {
            LeaseState::Held {
                owner: c.u64(),
                deadline_ms: c.u64(),
            }
        },
    });
    Slot { verdict, lease }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = selector % 6;
    if selector < 0x80 {
        match kind {
            0 => drop(decode_round_trip::<Epoch>(rest, |_| true)),
            1 => {
                if let Some(ring) = decode_round_trip::<ChangeRing>(rest, |_| true) {
                    let seen = rest
                        .get(1..9)
                        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                    check_ring(&ring, seen.wrapping_sub(3));
                }
            }
            2 => drop(decode_round_trip::<Number>(rest, |_| true)),
            3 => {
                let _ = decode_round_trip::<Bucket>(rest, |_| true);
                let _ = decode_round_trip::<Gate>(rest, |_| true);
            }
            4 => drop(decode_round_trip::<FeedRecord>(rest, |_| true)),
            _ => drop(decode_round_trip::<Slot>(rest, |s| {
                !matches!(
                    s.lease,
                    Some(Lease {
                        state: LeaseState::Failed { .. },
                        ..
                    })
                )
            })),
        }
        return;
    }
    let mut c = Cursor::new(rest);
    match kind {
        0 => build_round_trip(Epoch {
            generation: c.u64(),
            change_seq: c.u64(),
            revision: c.u64(),
            synced_ms: c.u64(),
        }),
        1 => {
            let head_seq = c.u64();
            let n = usize::from(c.u16()) % (ChangeRing::CAPACITY + 1);
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                if c.is_empty() && i > 0 {
                    break;
                }
                let flag = c.u8();
                ids.push(Change {
                    key: c.key_id(),
                    created: flag & 1 != 0,
                });
            }
            let ring = ChangeRing { head_seq, ids };
            check_ring(&ring, c.u64());
            let mut pushed = ring.clone();
            pushed.push(&ring.ids);
            assert!(pushed.ids.len() <= ChangeRing::CAPACITY);
            assert!(matches!(pushed.since(pushed.head_seq), CatchUp::Nothing));
            build_round_trip(ring);
        }
        2 => build_round_trip(Number(c.u64())),
        3 => {
            build_round_trip(Bucket {
                milli_tokens: c.u64(),
                last_ms: c.u64(),
            });
            build_round_trip(Gate {
                engaged: c.u8() & 1 != 0,
                window_ms: c.u64(),
                refused: c.u64(),
            });
        }
        4 => build_round_trip(FeedRecord {
            revision: c.u64(),
            owner: c.u64(),
            deadline_ms: c.u64(),
            next_poll_ms: c.u64(),
        }),
        _ => {
            build_round_trip(slot(&mut c));
        }
    }
});
