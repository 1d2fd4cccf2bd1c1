//! Refused admin calls (401, 403) in the audit trail, bounded so that a flood of them cannot
//! grow the database without bound.
//!
//! Every refusal is counted (`keystore_admin_refusals_total`). At most [`REFUSALS_PER_MINUTE`]
//! a minute per process are written (a token bucket: [`BURST`] at once, then one every
//! `60 / REFUSALS_PER_MINUTE` seconds); the others are only counted
//! (`keystore_audit_refusals_dropped_total`). The store keeps the newest
//! [`MAX_REFUSALS_KEPT`] refusal entries and deletes older ones. An entry names the method,
//! the route template (never the raw path), the status, the reason and, when the presented key
//! was known, the caller with its key reference; never the presented value.

use super::AppState;
use crate::error::ErrorDetail;
use crate::metrics::inc;
use crate::store::MAX_REFUSALS_KEPT;
use crate::store::{Actor, Refusal};
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Refusal entries written per minute per process, in the long run.
pub const REFUSALS_PER_MINUTE: u32 = 60;
/// Refusal entries that may be written at once after a quiet minute.
pub const BURST: u32 = 60;

/// The bound on refusal entries: a token bucket of writes, and how many entries are kept.
#[derive(Debug)]
pub struct RefusalBound {
    tokens: f64,
    last: Option<Instant>,
    burst: u32,
    per_minute: u32,
    /// Refusal entries kept in the store (older ones are deleted).
    pub kept: i64,
}

impl Default for RefusalBound {
    fn default() -> RefusalBound {
        RefusalBound::new(BURST, REFUSALS_PER_MINUTE, MAX_REFUSALS_KEPT)
    }
}

impl RefusalBound {
    /// `burst` writes at once, `per_minute` in the long run, the newest `kept` entries kept.
    pub fn new(burst: u32, per_minute: u32, kept: i64) -> RefusalBound {
        RefusalBound {
            tokens: f64::from(burst),
            last: None,
            burst,
            per_minute,
            kept,
        }
    }

    /// Takes one token at `now` if there is one (refilled at `per_minute` a minute since the
    /// last call, up to `burst`).
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        let refill = elapsed.as_secs_f64() * f64::from(self.per_minute) / 60.0;
        self.tokens = (self.tokens + refill).min(f64::from(self.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the handler learnt about its caller: who (when the key was known) and, for a 401,
/// why there was none.
#[derive(Default)]
struct Noted {
    actor: Option<Actor>,
    reason: &'static str,
}

tokio::task_local! {
    static NOTED: RefCell<Noted>;
}

/// Notes the caller (or why there is none) for the record of a refusal; outside [`record`]
/// (a handler called directly) it does nothing.
pub(super) fn note(actor: Option<Actor>, reason: &'static str) {
    let _ = NOTED.try_with(|n| *n.borrow_mut() = Noted { actor, reason });
}

/// Middleware: runs the request; if it is an admin call answered 401 or 403, counts it and
/// records it in the audit trail while the bucket allows.
pub(super) async fn record(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(route) = route.filter(|r| r.starts_with(keygate_protocol::routes::admin::PREFIX))
    else {
        return next.run(req).await;
    };
    let method = req.method().as_str().to_owned();
    let (res, noted) = NOTED
        .scope(RefCell::new(Noted::default()), async {
            let res = next.run(req).await;
            (res, NOTED.with(|n| std::mem::take(&mut *n.borrow_mut())))
        })
        .await;
    let status = res.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return res;
    }
    inc(&st.metrics.admin_refusals);
    let kept = st
        .refusals
        .lock()
        .ok()
        .and_then(|mut b| b.take(Instant::now()).then_some(b.kept));
    let Some(kept) = kept else {
        inc(&st.metrics.audit_refusals_dropped);
        return res;
    };
    let reason = match (noted.reason, res.extensions().get::<ErrorDetail>()) {
        ("", Some(detail)) => detail.0.clone(),
        ("", None) => status.canonical_reason().unwrap_or("refused").to_owned(),
        (reason, _) => reason.to_owned(),
    };
    let actor = noted.actor.unwrap_or(Actor {
        account_id: String::new(),
        user_id: String::new(),
        key_ref: None,
    });
    let refusal = Refusal {
        actor,
        method,
        route,
        status: status.as_u16(),
        reason,
    };
    if let Err(e) = st.store.record_refusal(refusal, kept).await {
        tracing::warn!("cannot record a refused admin call in the audit trail: {e}");
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_one_a_second() {
        let mut bucket = RefusalBound::default();
        let t0 = Instant::now();
        let taken = (0..100).filter(|_| bucket.take(t0)).count();
        assert_eq!(taken, 60, "the burst");
        assert!(!bucket.take(t0 + Duration::from_millis(500)));
        assert!(bucket.take(t0 + Duration::from_millis(1001)));
        assert!(!bucket.take(t0 + Duration::from_millis(1002)));
        // An hour of quiet refills the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| bucket.take(later)).count(), 60);
    }
}
