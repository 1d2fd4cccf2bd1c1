//! keygate: API-key authentication for Envoy.
//!
//! The core (everything but `glue`) has no proxy-wasm dependency: it runs natively and under
//! wasm-bindgen-test against [`fake_host::FakeHost`], a host with Envoy's exact shared-data
//! semantics. The Envoy glue (`glue`) exists only on the filter's target, `wasm32-wasip1`.
//!
//! Layers, in the order a request meets them: the **request layer** ([`request`]: headers in,
//! a key id out), the **L1** ([`l1`], per worker), the **shared table** ([`shared::table`], per
//! Envoy, in proxy-wasm shared data), and the **store** ([`store`], over HTTP). [`worker`] ties
//! them together; [`worker::feed`] keeps them fresh from the store's changes feed, by the rules of
//! [`freshness`]; [`worker::budget`] bounds the store lookups that misses may cause.
//!
//! The tree shows the layers, one folder per layer, in the order a request meets them:
//!
//! ```text
//! text.rs, verdict.rs   words every layer shares: byte classes; verdicts, outcomes, sources
//! host.rs               the Host trait: what the core needs from Envoy (fake_host.rs: for tests)
//! config.rs             the plugin configuration, validated at start-up
//! request/              the request layer: no cache, shared data or store in sight
//!   fields.rs             Envoy's serialized header map, read in place
//!   key.rs, key_ids.rs    where a key is read from, its form; the memo of recent key ids
//!   path.rs, rules.rs     paths as the upstream reads them; which path rule decides
//!   admission.rs          everything decided from the headers before any lookup
//!   act.rs                refusals, identity headers, roles: a decided outcome carried out
//! freshness.rs          when a cached verdict may answer, may be served stale, is outdated
//! l1.rs                 the L1: each worker's cache of verdicts
//! shared/               shared data: records, their encoding, the CAS loop (mod.rs)
//!   table.rs              the shared table: slots and their leases
//! store.rs              what the store's answers mean to the filter (bodies and routes:
//!                       the keygate-protocol crate)
//! summary/              the key summary in shared data: membership, adds (mod.rs); its
//!                       install without a gap (install.rs)
//! worker/               the worker (mod.rs): L1, then shared table, then lookup
//!   single_flight.rs      flights, waiters, callout tokens, the outbox
//!   feed/                 the worker's polls (mod.rs); the poll lease and publication of a
//!                         page (poller.rs); local admin writes held until then (local_writes.rs)
//!   usage/                the worker's usage reports (mod.rs); its log and batch (report.rs)
//!   summary.rs            the worker's key summary: fetch, feed pages, membership
//!   budget/               the miss budget and its reserve (mod.rs); the token bucket (bucket.rs);
//!                         the summary gate in front of it (gate.rs)
//!   tests/                the worker against the fake host, one file per topic
//! glue/                 proxy-wasm contexts and the Host over host calls (wasm32-wasip1 only)
//! ```
//!
//! Glossary: one word per concept, in the code as here. Words users see (the configuration's
//! `sync`, metric names such as `keygate_sync_polls_total`) keep their names.
//!
//! - **key id**: the SHA-256 of a raw key ([`keygate_protocol::KeyId`]), the only form of a
//!   key outside the request layer; there, a `key` is always a key id. A raw key is only read
//!   in [`request::key`] and tagged in [`request::key_ids`].
//! - **verdict**: what the store said about a key id, kept in a cache ([`verdict::Verdict`]:
//!   allow with an identity, or deny); an **outcome** is what one request gets
//!   ([`verdict::Outcome`]), its **disposition** what the filter does to it
//!   ([`request::act::Disposition`]).
//! - **L1**: one worker VM's cache of verdicts ([`l1::L1`]; its entries are [`l1::Entry`]).
//! - **shared table**: the verdicts of one Envoy in shared data ([`shared::table::Table`]),
//!   a fixed number of **slots** ([`shared::table::Slot`]), each with at most one verdict and
//!   at most one **lease**: which worker asks the store about a key, until when
//!   ([`shared::table::Lease`]). The feed has a lease too: the **poll lease**, in the shared
//!   [`worker::feed::poller::FeedRecord`].
//! - **owner id**: the id a worker VM takes at start ([`shared::new_owner`]): it holds leases,
//!   and it names the worker's wake-up queue. "Worker id" means the same and is not used.
//! - **lookup**: one store request about one key id (`GET {lookup_path}{key id}`), answered by
//!   a [`store::LookupAnswer`]; the record of one this worker sent is a
//!   [`worker::single_flight::Lookup`]. A **flight** is a worker's pending lookup of one key id
//!   with its **waiters** (paused requests, by context id) ([`worker::single_flight`]); a
//!   **call** is any callout by its token: a lookup, a poll or a usage report
//!   ([`worker::single_flight::Call`]).
//! - **feed**: the store's changes feed. A **poll** asks it for one **page**
//!   ([`store::Changes`]: the key ids changed since a revision, or a reset); one worker per
//!   Envoy polls at a time and **publishes** the page: key ids into the **change ring**, their
//!   slots cleared, then the epoch bumped ([`worker::feed`]).
//! - **epoch**: the small shared record every worker reads before answering from its L1
//!   ([`shared::Epoch`]): the **generation** (bumped to drop everything), the change ring's
//!   sequence, the feed's revision.
//! - **stamp**: when and under which generation a verdict was fetched, until when it answers
//!   and until when it may be served stale ([`freshness::Stamp`]); the rules that read it, and
//!   which verdicts a **change** the feed reports outdates ([`store::Change::outdates`]), are
//!   all in [`freshness`].
//! - **drop**: remove from a cache a verdict that a change outdates (or every verdict);
//!   **forget**: stop tracking a request whose client left (a waiter or a held writer).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod config;
pub mod fake_host;
pub mod freshness;
pub mod host;
pub mod l1;
pub mod request;
pub mod shared;
pub mod store;
pub mod summary;
pub mod text;
pub mod verdict;
pub mod worker;

#[cfg(target_os = "wasi")]
mod glue;

/// `#[test]` runs natively as a plain test and on wasm32-unknown-unknown under
/// wasm-bindgen-test, so every core test runs in both places.
#[cfg(test)]
pub(crate) mod test_support {
    #[cfg(not(target_arch = "wasm32"))]
    pub use core::prelude::v1::test;
    #[cfg(target_arch = "wasm32")]
    pub use wasm_bindgen_test::wasm_bindgen_test as test;
}
