//! A stand-in proxy-wasm filter, encoded by hand: lets requests through untouched.
//!
//! For testing the harness and the Envoy template without the real filter: Envoy loads it
//! like any filter (ABI 0.2.1), calls `proxy_on_configure`, which counts itself in the counter
//! [`STUB_METRIC`] and answers `configure_ok`, and `proxy_on_request_headers`, which answers
//! Continue. It exports `malloc`, but no host call it makes hands it memory.

/// The counter the stand-in increments in each `proxy_on_configure` (once per VM).
pub const STUB_METRIC: &str = "keygate_stub_configures";

/// Where the stand-in keeps the metric id (4 bytes) and the metric name in its memory.
const ID_AT: u8 = 8;
const NAME_AT: u8 = 16;

/// The bytes of the stand-in module; with `configure_ok == false` it rejects any
/// configuration, the way a filter rejects a bad one (Envoy then refuses the listener).
pub fn stub_wasm(configure_ok: bool) -> Vec<u8> {
    const I32: u8 = 0x7f;
    const I64: u8 = 0x7e;
    // Types: 0 () -> (), 1 (i32) -> i32, 2 (i32 i32) -> i32, 3 (i32 i32) -> (),
    // 4 (i32 i32 i32) -> i32, 5 (i32 i32 i32 i32) -> i32, 6 (i32 i64) -> i32.
    let types = vec_of(&[
        func_type(&[], &[]),
        func_type(&[I32], &[I32]),
        func_type(&[I32, I32], &[I32]),
        func_type(&[I32, I32], &[]),
        func_type(&[I32, I32, I32], &[I32]),
        func_type(&[I32, I32, I32, I32], &[I32]),
        func_type(&[I32, I64], &[I32]),
    ]);
    // Imported functions 0 and 1; ours are numbered from 2.
    let imports = vec_of(&[
        import_func("env", "proxy_define_metric", 5),
        import_func("env", "proxy_increment_metric", 6),
    ]);
    // Functions 2..=7: abi marker, malloc, on_vm_start, on_configure, on_context_create,
    // on_request_headers.
    let funcs = vec_of(&[vec![0], vec![1], vec![2], vec![2], vec![3], vec![4]]);
    // One memory of 2 pages, no maximum.
    let memory = vec_of(&[vec![0x00, 0x02]]);
    // Global 0: the bump allocator's next free byte, mutable i32 = 1024.
    let mut heap = vec![I32, 0x01, 0x41];
    heap.extend(leb128(1024));
    heap.push(0x0b);
    let globals = vec_of(&[heap]);
    let exports = vec_of(&[
        export("memory", 0x02, 0),
        export("proxy_abi_version_0_2_1", 0x00, 2),
        export("malloc", 0x00, 3),
        export("proxy_on_memory_allocate", 0x00, 3),
        export("proxy_on_vm_start", 0x00, 4),
        export("proxy_on_configure", 0x00, 5),
        export("proxy_on_context_create", 0x00, 6),
        export("proxy_on_request_headers", 0x00, 7),
    ]);
    // on_configure: define_metric(counter, name, len, &id); increment_metric(id, 1);
    // then the answer.
    // Single-byte signed LEB128 immediates below need values under 64.
    const _: () = assert!(STUB_METRIC.len() < 64);
    let name_len = STUB_METRIC.len() as u8;
    let mut configure = vec![0x41, 0x00, 0x41, NAME_AT, 0x41, name_len, 0x41, ID_AT];
    configure.extend([0x10, 0x00, 0x1a]); // call 0, drop
    configure.extend([0x41, ID_AT, 0x28, 0x02, 0x00]); // i32.load (align 4)
    configure.extend([0x42, 0x01, 0x10, 0x01, 0x1a]); // i64.const 1, call 1, drop
    configure.extend([0x41, u8::from(configure_ok)]);
    // The metric name at NAME_AT.
    let mut segment = vec![0x00, 0x41, NAME_AT, 0x0b];
    segment.extend(leb128(STUB_METRIC.len() as u32));
    segment.extend(STUB_METRIC.as_bytes());
    let data = vec_of(&[segment]);
    let i32_const = |v: u8| vec![0x41, v];
    // malloc(size): old = heap; heap += size; old.
    let malloc = vec![0x23, 0x00, 0x23, 0x00, 0x20, 0x00, 0x6a, 0x24, 0x00];
    let code = vec_of(&[
        func_body(&[]),
        func_body(&malloc),
        func_body(&i32_const(1)),
        func_body(&configure),
        func_body(&[]),
        func_body(&i32_const(0)), // Action::Continue
    ]);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    for (id, payload) in [
        (1u8, types),
        (2, imports),
        (3, funcs),
        (5, memory),
        (6, globals),
        (7, exports),
        (10, code),
        (11, data),
    ] {
        module.push(id);
        module.extend(leb128(payload.len() as u32));
        module.extend(payload);
    }
    module
}

fn leb128(mut n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn vec_of(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = leb128(items.len() as u32);
    for item in items {
        out.extend(item);
    }
    out
}

fn import_func(module: &str, name: &str, type_index: u32) -> Vec<u8> {
    let mut out = leb128(module.len() as u32);
    out.extend(module.as_bytes());
    out.extend(leb128(name.len() as u32));
    out.extend(name.as_bytes());
    out.push(0x00);
    out.extend(leb128(type_index));
    out
}

fn func_type(params: &[u8], results: &[u8]) -> Vec<u8> {
    let mut out = vec![0x60];
    out.extend(leb128(params.len() as u32));
    out.extend(params);
    out.extend(leb128(results.len() as u32));
    out.extend(results);
    out
}

fn export(name: &str, kind: u8, index: u32) -> Vec<u8> {
    let mut out = leb128(name.len() as u32);
    out.extend(name.as_bytes());
    out.push(kind);
    out.extend(leb128(index));
    out
}

fn func_body(instructions: &[u8]) -> Vec<u8> {
    // No locals, the instructions, `end`.
    let mut body = vec![0x00];
    body.extend(instructions);
    body.push(0x0b);
    let mut out = leb128(body.len() as u32);
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_encodes() {
        assert_eq!(leb128(0), vec![0]);
        assert_eq!(leb128(127), vec![0x7f]);
        assert_eq!(leb128(128), vec![0x80, 0x01]);
        assert_eq!(leb128(1024), vec![0x80, 0x08]);
    }

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
