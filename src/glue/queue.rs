//! Shared queues over the raw ABI calls: the SDK's `hostcalls` versions panic on any status
//! they do not expect (a panic traps the worker's VM), these return `None` / `false` instead.
//! Used only for the workers' wake-ups ([`crate::host::Host::wake`]).

use proxy_wasm::types::Status;

extern "C" {
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

/// Takes one item off the queue; false when it is empty (or the host refused).
pub(crate) fn dequeue(id: u32) -> bool {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size; on `Ok` the pointer is null or a buffer of
    // `size` bytes allocated through this module's allocator, whose ownership passes to us
    // (freed here by `Vec::from_raw_parts`, as the SDK's own `dequeue_shared_queue` does).
    match unsafe { proxy_dequeue_shared_queue(id, &mut data, &mut size) } {
        Status::Ok => {
            if !data.is_null() {
                drop(unsafe { Vec::from_raw_parts(data, size, size) });
            }
            true
        }
        _ => false,
    }
}
