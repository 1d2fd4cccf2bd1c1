//! The worker's side of the key summary (helper `fl`'s module; stub until it lands).

use keygate_protocol::KeyId;

use super::Worker;
use crate::host::Host;
use crate::summary::Membership;

impl Worker {
    /// What the summary says about `key`.
    pub(super) fn membership<H: Host + ?Sized>(&self, _host: &H, _key: &KeyId) -> Membership {
        Membership::NoSummary
    }
}
