//! The worker's side of the key summary (helper `fl`'s module; stub until it lands).

use keygate_protocol::KeyId;

use super::Worker;
use crate::host::Host;
use crate::summary::Membership;

/// Tests only, until the real summary lands: a record of the key ids a summary holds (32 bytes
/// each); none: no summary.
#[cfg(test)]
pub(crate) const TEST_SUMMARY: &str = "keygate.test.summary";

impl Worker {
    /// What the summary says about `key`.
    pub(super) fn membership<H: Host + ?Sized>(&self, _host: &H, _key: &KeyId) -> Membership {
        #[cfg(test)]
        if let (Some(keys), _) = _host.get_shared(TEST_SUMMARY) {
            return match keys.chunks(32).any(|k| k == _key.0.as_slice()) {
                true => Membership::MayExist,
                false => Membership::Absent,
            };
        }
        Membership::NoSummary
    }
}
