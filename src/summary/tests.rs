//! The summary's records and membership on the fake host (the worker's tests drive the whole
//! life: `worker::tests::summary`).

use keygate_protocol::summary::{blocks_for, hashes_for, probe, Summary};
use keygate_protocol::KeyId;

use super::install::{backoff_ms, parse, Install, Refused, Staging, MAX_PENDING};
use super::*;
use crate::fake_host::FakeHost;
use crate::host::CallResponse;
use crate::shared::Writer;
use crate::test_support::test;

fn id(n: u32) -> KeyId {
    KeyId::of(format!("k{n}").as_bytes())
}

fn meta(id: u64, blocks: u32) -> Meta {
    Meta {
        id,
        slot: 1,
        revision: 3,
        blocks,
        hashes: 7,
        keys: 0,
        bits_set: 0,
        fetched_ms: 5,
    }
}

/// Writes `s` as install `m` by hand: its chunks, then the meta.
fn put(host: &FakeHost, names: &Names, m: &Meta, s: &Summary) {
    let bytes = usize::try_from(CHUNK_BLOCKS).unwrap() * BLOCK_BYTES;
    for (i, c) in s.blocks().chunks(bytes).enumerate() {
        let name = names.summary_chunk(m.slot, i as u32);
        host.set_shared(&name, &chunk_value(m.id, c), None).unwrap();
    }
    host.set_shared(&names.summary, &Active(Some(*m)).encode(), None)
        .unwrap();
}

#[test]
fn membership_reads_the_key_ids_block_in_its_chunk() {
    let host = FakeHost::new();
    let names = Names::new("t");
    assert_eq!(membership(&host, &names, &id(1)), Membership::NoSummary);
    let blocks = blocks_for(5_000, 10);
    let mut s = Summary::new(3, blocks, hashes_for(10));
    (0..5_000).for_each(|n| {
        s.insert(&id(n));
    });
    let m = meta(9, blocks);
    put(&host, &names, &m, &s);
    assert!((0..5_000).all(|n| membership(&host, &names, &id(n)) == Membership::MayExist));
    let absent = (5_000..15_000)
        .filter(|n| membership(&host, &names, &id(*n)) == Membership::Absent)
        .count();
    assert!(absent > 9_700, "{absent}: about 1 % false positives");
}

#[test]
fn a_chunk_of_another_install_or_emptied_reads_as_no_summary_never_absent() {
    let host = FakeHost::new();
    let names = Names::new("t");
    let m = meta(9, 70);
    put(&host, &names, &m, &Summary::new(3, 70, 7));
    let k = id(1);
    assert_eq!(membership(&host, &names, &k), Membership::Absent);
    let index = probe(&k, 70, 7).block / CHUNK_BLOCKS;
    let name = names.summary_chunk(1, index);
    host.set_shared(&name, &chunk_value(8, &[0; 4096]), None)
        .unwrap();
    assert_eq!(membership(&host, &names, &k), Membership::NoSummary);
    host.set_shared(&name, &[], None).unwrap();
    assert_eq!(membership(&host, &names, &k), Membership::NoSummary);
    host.set_shared(&name, &chunk_value(9, &[0; 64]), None)
        .unwrap();
    let short = !probe(&k, 70, 7).block.is_multiple_of(CHUNK_BLOCKS);
    let expected = if short {
        Membership::NoSummary
    } else {
        Membership::Absent
    };
    assert_eq!(membership(&host, &names, &k), expected, "a short chunk");
    // A key added to a chunk of another install is not written there.
    host.set_shared(&name, &chunk_value(8, &[0; 4096]), None)
        .unwrap();
    assert_eq!(insert(&host, &names, &m, &[k]), Ok(0));
}

#[test]
fn a_key_added_sets_its_bits_and_counts_them_once() {
    let host = FakeHost::new();
    let names = Names::new("t");
    let m = meta(9, 70);
    put(&host, &names, &m, &Summary::new(3, 70, 7));
    add_to_active(&host, &names, &[id(1), id(2)]);
    add_to_active(&host, &names, &[id(1)]);
    assert_eq!(membership(&host, &names, &id(1)), Membership::MayExist);
    let after = active(&host, &names).unwrap();
    assert_eq!(after.keys, 3);
    let mut s = Summary::new(3, 70, 7);
    s.insert(&id(1));
    s.insert(&id(2));
    assert_eq!(after.bits_set, s.header.bits_set);
}

#[test]
fn a_summary_that_cannot_take_a_page_is_dropped() {
    let host = FakeHost::new();
    let names = Names::new("t");
    let m = meta(9, 70);
    put(&host, &names, &m, &Summary::new(3, 70, 7));
    host.fail_sets("summary/", 1);
    add_to_active(&host, &names, &[id(1)]);
    assert_eq!(active(&host, &names), None);
    assert_eq!(membership(&host, &names, &id(1)), Membership::NoSummary);
}

#[test]
fn records_round_trip_and_garbage_is_refused() {
    let m = meta(9, 70);
    for a in [Active(None), Active(Some(m))] {
        assert_eq!(Active::decode(&a.encode()), Some(a));
    }
    assert_eq!(Active::decode(&[]), None);
    let mut bad_slot = Active(Some(m)).encode();
    bad_slot[10] = 2;
    assert_eq!(Active::decode(&bad_slot), None);
    let installs = [
        Install::Idle,
        Install::Requested {
            id: 4,
            slot: 0,
            deadline_ms: 7,
            pending: vec![id(1), id(2)],
        },
        Install::Filled {
            id: 4,
            deadline_ms: 7,
            meta: m,
        },
    ];
    for install in installs {
        let s = Staging {
            next_id: 5,
            due_ms: 6,
            failures: 1,
            last_slot: 1,
            install,
        };
        let bytes = s.encode();
        assert_eq!(Staging::decode(&bytes), Some(s));
        assert_eq!(Staging::decode(&bytes[..bytes.len() - 1]), None);
    }
    let mut w = Writer::new();
    w.u64(1);
    w.u64(0);
    w.u32(0);
    w.u8(0);
    w.u8(1);
    w.u64(1);
    w.u8(0);
    w.u64(0);
    w.u32(MAX_PENDING as u32 + 1);
    assert_eq!(Staging::decode(&w.finish()), None, "pending over its bound");
}

#[test]
fn failed_fetches_back_off_doubling_up_to_a_minute() {
    assert_eq!(backoff_ms(1), 1000);
    assert_eq!(backoff_ms(2), 2000);
    assert_eq!(backoff_ms(6), 32_000);
    assert_eq!(backoff_ms(7), 60_000);
    assert_eq!(backoff_ms(u32::MAX), 60_000);
}

#[test]
fn an_answer_is_refused_by_status_size_and_form() {
    let good = Summary::new(1, 2, 7).encode();
    let resp = |status, body: Option<&[u8]>| CallResponse {
        status,
        body: body.map(<[u8]>::to_vec),
    };
    assert!(parse(&resp(Some(200), Some(&good)), 128).is_ok());
    assert_eq!(
        parse(&resp(Some(200), Some(&good)), 127).err(),
        Some(Refused::TooLarge)
    );
    assert_eq!(
        parse(&resp(Some(200), None), 128).err(),
        Some(Refused::TooLarge)
    );
    assert_eq!(
        parse(&resp(Some(404), Some(&good)), 128).err(),
        Some(Refused::Status(404))
    );
    assert_eq!(
        parse(&resp(None, None), 128).err(),
        Some(Refused::NoResponse)
    );
    assert!(matches!(
        parse(&resp(Some(200), Some(b"nope")), 128),
        Err(Refused::Malformed(_))
    ));
}
