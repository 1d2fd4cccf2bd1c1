//! keygate: API-key authentication for Envoy.
//!
//! The core (everything but `glue`) has no proxy-wasm dependency: it runs natively and under
//! wasm-bindgen-test against [`fake_host::FakeHost`], a host with Envoy's exact shared-data
//! semantics. The Envoy glue (`glue`) exists only on the filter's target, `wasm32-wasip1`.
//!
//! Layers, in the order a request meets them: the **L1** ([`l1`], per worker), the **shared
//! table** ([`shared::table`], per Envoy, in proxy-wasm shared data), and the **store** ([`store`], over
//! HTTP). [`worker`] ties them together; [`worker::feed`] keeps them fresh from the store's changes
//! feed; [`worker::budget`] bounds the store lookups that misses may cause.
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
pub mod host;
pub mod l1;
pub mod request;
pub mod shared;
pub mod store;
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
