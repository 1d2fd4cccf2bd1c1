//! What the store says about a key, and what the filter does with a request.

use std::rc::Rc;

use keygate_protocol::claims;

use crate::text;

/// Longest identity field accepted from the store, in bytes.
pub const MAX_IDENTITY_FIELD: usize = 256;

/// Most claims kept from one store answer: the answer merges the account's and the key's
/// (the shared rule, `keygate-protocol`); only the mapped ones are kept, at most 16.
pub const MAX_CLAIMS: usize = claims::MAX_ANSWER_CLAIMS;

/// Who a key belongs to, as the store answered. Sent upstream in the identity headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub account_id: String,
    pub user_id: String,
    pub role: String,
    /// When the key expires, in unix milliseconds; `None`: never. No verdict allowing the key
    /// is cached or served at or past it.
    pub expires_ms: Option<u64>,
    /// The key's claims (name, value), sorted by name; forwarded when configured.
    pub claims: Vec<(String, String)>,
}

impl Identity {
    /// Whether every field can go into an HTTP header as is: 1 to 256 bytes that
    /// [`text::is_safe_header_value`] accepts (no comma: `acme, victim` would read as a list),
    /// and claim values by the rule the key store applies at write ([`claims::is_value`]).
    /// The store is outside input too.
    pub fn is_header_safe(&self) -> bool {
        [&self.account_id, &self.user_id, &self.role]
            .iter()
            .all(|f| {
                !f.is_empty() && f.len() <= MAX_IDENTITY_FIELD && text::is_safe_header_value(f)
            })
            && self.claims.len() <= MAX_CLAIMS
            && self.claims.iter().all(|(name, value)| {
                !name.is_empty()
                    && name.len() <= claims::MAX_NAME_LEN
                    && text::is_safe_header_value(name)
                    && claims::is_value(value)
            })
    }

    /// Whether the key has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }

    /// The value of claim `name`, if the key has it.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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
    /// 503: the miss budget runs short (the summary gate is engaged) and the key summary says
    /// the store does not have this key; no store call was made, no token taken.
    UnknownKeyDuringFlood,
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
    /// No verdict: a refusal for a store error, the miss budget, the summary gate or a
    /// deadline.
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
