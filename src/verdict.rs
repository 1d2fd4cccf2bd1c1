//! What the store says about a key, and what the filter does with a request.

use std::rc::Rc;

use crate::text;

/// Longest identity field accepted from the store, in bytes.
pub const MAX_IDENTITY_FIELD: usize = 256;

/// Who a key belongs to, as the store answered. Sent upstream in the identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account_id: String,
    pub user_id: String,
    pub role: String,
}

impl Identity {
    /// Whether every field can go into an HTTP header as is: 1 to 256 bytes that
    /// [`text::is_safe_header_value`] accepts (no comma: `acme, victim` would read as a list).
    /// The store is outside input too.
    pub fn is_header_safe(&self) -> bool {
        [&self.account_id, &self.user_id, &self.role]
            .iter()
            .all(|f| {
                !f.is_empty() && f.len() <= MAX_IDENTITY_FIELD && text::is_safe_header_value(f)
            })
    }
}

/// A cached answer about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Rc<Identity>),
    Deny,
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go upstream with this identity. `stale` when served past its TTL because the store failed.
    Allow { identity: Rc<Identity>, stale: bool },
    /// 401: the store does not know this key (or it is malformed).
    Deny,
    /// 503: the store failed and there is nothing fresh or stale to answer with.
    Unavailable,
    /// 503: over the miss budget; no store call was made.
    Throttled,
}

impl Outcome {
    pub fn from_verdict(v: &Verdict, stale: bool) -> Outcome {
        match v {
            Verdict::Allow(identity) => Outcome::Allow {
                identity: Rc::clone(identity),
                stale,
            },
            Verdict::Deny => Outcome::Deny,
        }
    }
}

/// Where an answer came from (as pingora's `CacheStatus`): the layers of README, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This worker's cache.
    L1,
    /// The shared table (a verdict another worker fetched).
    Shared,
    /// A lookup this request started, or another worker's lookup it waited for.
    Lookup,
    /// A lookup another request on this worker started.
    Coalesced,
    /// An expired identity served because the store failed or the budget was spent.
    Stale,
    /// No verdict: a refusal for a store error, the miss budget or a deadline.
    NoVerdict,
}

/// What the filter does with a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Answer(Outcome, Source),
    /// Paused: a lookup is pending; the answer comes later as a [`Resolution`].
    Wait,
}

/// An answer for a request that was paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub context_id: u32,
    pub outcome: Outcome,
    pub source: Source,
}
