//! A stand-in proxy-wasm filter, written in WebAssembly text and assembled by the `wat` crate:
//! lets requests through untouched.
//!
//! For testing the harness and the Envoy template without the real filter: Envoy loads it
//! like any filter (ABI 0.2.1), calls `proxy_on_configure`, which counts itself in the counter
//! [`STUB_METRIC`] and answers `configure_ok`, and `proxy_on_request_headers`, which answers
//! Continue. It exports `malloc`, but no host call it makes hands it memory.

/// The counter the stand-in increments in each `proxy_on_configure` (once per VM).
pub const STUB_METRIC: &str = "keygate_stub_configures";

/// The module's text; `{OK}` is the answer of `proxy_on_configure`, `{NAME}`/`{LEN}` the metric.
const WAT: &str = r#"
(module
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (memory (export "memory") 2)
  ;; The bump allocator's next free byte.
  (global $heap (mut i32) (i32.const 1024))
  ;; The metric id at 8 (4 bytes), its name at 16.
  (data (i32.const 16) "{NAME}")
  (func (export "proxy_abi_version_0_2_1"))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    global.get $heap
    global.get $heap
    local.get $size
    i32.add
    global.set $heap)
  (export "proxy_on_memory_allocate" (func $malloc))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    ;; define_metric(counter = 0, name, len, &id); increment_metric(id, 1)
    (drop (call $define_metric (i32.const 0) (i32.const 16) (i32.const {LEN}) (i32.const 8)))
    (drop (call $increment_metric (i32.load (i32.const 8)) (i64.const 1)))
    i32.const {OK})
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; Action::Continue
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0))
"#;

/// The bytes of the stand-in module; with `configure_ok == false` it rejects any
/// configuration, the way a filter rejects a bad one (Envoy then refuses the listener).
pub fn stub_wasm(configure_ok: bool) -> Vec<u8> {
    let text = WAT
        .replace("{NAME}", STUB_METRIC)
        .replace("{LEN}", &STUB_METRIC.len().to_string())
        .replace("{OK}", if configure_ok { "1" } else { "0" });
    #[allow(clippy::expect_used)] // a constant module: a test run proves it assembles
    wat::parse_str(&text).expect("the stub module's WAT assembles")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_shape() {
        let ok = stub_wasm(true);
        let bad = stub_wasm(false);
        assert!(ok.starts_with(b"\0asm\x01\0\0\0"));
        assert_eq!(ok.len(), bad.len());
        assert_ne!(ok, bad);
        // Envoy itself checks the rest: tests/processes.rs.
        assert!(ok
            .windows(STUB_METRIC.len())
            .any(|w| w == STUB_METRIC.as_bytes()));
    }
}
