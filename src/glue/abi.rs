//! Raw proxy-wasm ABI calls that the glue makes itself: the SDK's `hostcalls` versions panic
//! on any status they do not expect (a panic traps the worker's VM) and copy what they read;
//! these return `None` / `false` instead. The request's header map (read in place by
//! [`crate::request::fields`]), and the shared queues of the workers' wake-ups
//! ([`crate::host::Host::wake`]).

use proxy_wasm::types::{MapType, Status};

extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_register_shared_queue(
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_resolve_shared_queue(
        vm_id_data: *const u8,
        vm_id_size: usize,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_enqueue_shared_queue(
        queue_id: u32,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
}

/// Registers `name` for the current root context; its id, or `None` if the host refused.
pub(crate) fn register(name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: `name` is valid for its length; the host writes one u32 into `id`.
    match unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) } {
        Status::Ok => Some(id),
        _ => None,
    }
}

/// The id of the queue `name` registered under `vm_id`, or `None`.
pub(crate) fn resolve(vm_id: &str, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: both strings are valid for their lengths; the host writes one u32 into `id`.
    let status = unsafe {
        proxy_resolve_shared_queue(
            vm_id.as_ptr(),
            vm_id.len(),
            name.as_ptr(),
            name.len(),
            &mut id,
        )
    };
    match status {
        Status::Ok => Some(id),
        _ => None,
    }
}

/// Enqueues `value`; false if the host refused (no such queue).
pub(crate) fn enqueue(id: u32, value: &[u8]) -> bool {
    // SAFETY: `value` is valid for its length.
    matches!(
        unsafe { proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) },
        Status::Ok
    )
}

/// The serialized header map `map` (see [`crate::request::fields`]), or `None` if Envoy has
/// none to give.
pub(crate) fn header_map(map: MapType) -> Option<Vec<u8>> {
    // SAFETY: the host writes a pointer and a size into the two out-parameters.
    take_buffer(|data, size| unsafe { proxy_get_header_map_pairs(map, data, size) })
}

/// Takes one item off the queue; false when it is empty (or the host refused).
pub(crate) fn dequeue(id: u32) -> bool {
    // SAFETY: the host writes a pointer and a size into the two out-parameters.
    take_buffer(|data, size| unsafe { proxy_dequeue_shared_queue(id, data, size) }).is_some()
}

/// Runs a call that hands back a buffer through a pointer and a size, and takes ownership of
/// that buffer: `None` unless the status is `Ok`.
fn take_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> Status) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        Status::Ok if data.is_null() => Some(Vec::new()),
        // SAFETY: on `Ok` the pointer is a buffer of `size` bytes that the host allocated
        // through this module's allocator (`proxy_on_memory_allocate`, a boxed slice of exactly
        // `size` bytes), whose ownership passes to us, as in the SDK's own readers.
        Status::Ok => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}
