//! The key-store protocol's routes, called by the Envoy filter: the key lookup
//! (`GET /v1/keys/{key_id}`), the change feed (`GET /v1/changes`), the key summary
//! (`GET /v1/summary`) and usage reports (`POST /v1/usage`), and the protocol token that may
//! guard them.
//!
//! Invariants: with a protocol token configured, no protocol route answers without exactly
//! one `authorization: Bearer <token>` header carrying it (compared as SHA-256 digests in
//! constant time); a lookup answers only an active key with the capability `traffic`; bad
//! input (a malformed key id, `since` or usage report) is a 400 that changes nothing; a
//! summary answered at revision R holds every key id live at R, the store's current revision
//! when it is answered (`crate::store::Summaries`).

use super::body::parse_body;
use super::doc::{ChangesErrors, LookupErrors, SummaryErrors, UsageErrors};
use super::AppState;
use crate::error::{problem, ApiError, ErrorDetail, Kind};
use crate::keys::is_key_id;
use crate::metrics::inc;
use crate::store::{Changes, Identity};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_protocol::messages::{Found, Page, Report};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;

/// Most key ids in one usage report.
pub const MAX_USAGE_IDS: usize = keygate_protocol::messages::MAX_REPORT_KEY_IDS;

/// Body limit of a usage report: room for [`MAX_USAGE_IDS`] ids (67 bytes each in JSON).
pub const USAGE_BODY_LIMIT: usize = 1024 * 1024;

/// The protocol token, kept as its SHA-256 digest. Presented tokens are hashed and the digests
/// compared in constant time, so neither the token's length nor a matching prefix shows in the
/// answer's timing.
#[derive(Clone)]
pub struct ProtocolToken([u8; 32]);

impl ProtocolToken {
    pub fn new(token: &str) -> ProtocolToken {
        ProtocolToken(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&digest).into()
    }
}

impl std::fmt::Debug for ProtocolToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProtocolToken(<redacted>)")
    }
}

/// With a protocol token configured, lets a request through only with exactly one
/// `authorization: Bearer <token>` header carrying it; otherwise a 401 problem (with
/// `www-authenticate: Bearer`).
pub(super) async fn require_protocol_token(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &st.protocol_token else {
        return next.run(req).await;
    };
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim()),
        _ => None,
    };
    if presented.is_some_and(|t| token.matches(t)) {
        return next.run(req).await;
    }
    inc(&st.metrics.protocol_unauthorized);
    let detail = "unauthorized: missing or wrong protocol token (authorization: Bearer)";
    let mut res = problem(Kind::Unauthorized, detail, serde_json::Map::new());
    res.extensions_mut().insert(ErrorDetail(detail.into()));
    res
}

/// Look up a key
///
/// The key-store protocol's lookup, called by the Envoy filter: the identity of the active
/// key whose SHA-256 is `key_id` (account, user, role; its expiry in Unix seconds and its
/// claims when it has them), or 404. A disabled, expired or revoked key is 404. Needs the
/// protocol token (`Authorization: Bearer`) when the keystore is started with one.
#[utoipa::path(get, path = keygate_protocol::routes::LOOKUP_PATTERN, tag = "protocol", security((), ("protocol_token" = [])),
    params(("key_id" = String, Path, description = "Lowercase hex SHA-256 of the key (64 characters)")),
    responses((status = 200, body = Identity, description = "The key is active"),
        LookupErrors))]
pub(super) async fn lookup_key(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Found>, ApiError> {
    if !st.lookup_delay.is_zero() {
        tokio::time::sleep(st.lookup_delay).await;
    }
    if !is_key_id(&id) {
        return Err(ApiError::BadRequest(
            "key_id must be 64 lowercase hex characters (the SHA-256 of the key)".into(),
        ));
    }
    inc(&st.metrics.lookups);
    match st.store.lookup(id).await? {
        Some(identity) => {
            inc(&st.metrics.lookups_found);
            Ok(Json(found(identity)))
        }
        None => {
            inc(&st.metrics.lookups_not_found);
            Err(ApiError::NotFound(
                Kind::KeyNotFound,
                "no active key has this key id".into(),
            ))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ChangesQuery {
    since: Option<String>,
}

/// Read the change feed
///
/// The key-store protocol's change feed, polled by the Envoy filter: the key ids changed
/// since revision `since` (a page; `more` when there are more), or `reset` when the feed no
/// longer reaches back that far (the filter then drops its whole cache). Needs the protocol
/// token when the keystore is started with one.
#[utoipa::path(get, path = keygate_protocol::routes::CHANGES, tag = "protocol", security((), ("protocol_token" = [])),
    params(("since" = u64, Query, description = "The last revision the client has seen (0: cold start, or a store still at revision 0; answered with the current revision and no list)")),
    responses((status = 200, body = Page), ChangesErrors))]
pub(super) async fn changes(
    State(st): State<AppState>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    inc(&st.metrics.changes_requests);
    let since = query
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?
        .0
        .since
        .ok_or_else(|| ApiError::BadRequest("missing query parameter since".into()))?;
    let since: u64 = since.parse().map_err(|_| {
        ApiError::BadRequest("since must be a non-negative integer revision".into())
    })?;
    let body = match st.store.changes(since).await? {
        Changes::Reset { revision } => Page {
            revision: wire_revision(revision)?,
            changed: None,
            created: Vec::new(),
            more: false,
            reset: true,
        },
        Changes::Changed {
            revision,
            changed,
            created,
            more,
        } => {
            #[allow(clippy::cast_precision_loss)] // page sizes are at most a few thousand
            st.metrics.changes_page_size.observe(changed.len() as f64);
            Page {
                revision: wire_revision(revision)?,
                changed: Some(changed),
                created,
                more,
                reset: false,
            }
        }
    };
    Ok(Json(body))
}

/// The key summary's wire form, as documented (a binary body).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a documentation type: never built
pub(super) struct SummaryBody(Vec<u8>);

/// Read the key summary
///
/// The key-store protocol's key summary, fetched by the Envoy filter at start and after a
/// feed reset: a Bloom filter of every live key id (a blocked Bloom filter: a 40-byte header
/// holding the revision, the keys inserted, the bits set, the blocks and the hashes, then the
/// blocks of 64 bytes; `keygate_protocol::summary`). A summary at revision R holds every key
/// id live at R (and may hold revoked ones); R is the store's current revision when it is
/// answered. Needs the protocol token when the keystore is started with one.
#[utoipa::path(get, path = keygate_protocol::routes::SUMMARY, tag = "protocol", security((), ("protocol_token" = [])),
    responses((status = 200, body = SummaryBody, content_type = "application/vnd.keygate.summary",
        description = "The summary's wire form (keygate_protocol::summary)"),
        SummaryErrors))]
pub(super) async fn summary(State(st): State<AppState>) -> Result<Response, ApiError> {
    inc(&st.metrics.summary_requests);
    let snapshot = st.summaries.current(&st.store).await?;
    let body = snapshot.encoded.clone();
    Ok((
        [(CONTENT_TYPE, keygate_protocol::summary::CONTENT_TYPE)],
        body,
    )
        .into_response())
}

/// A lookup's answer in the protocol's form (documented as [`Identity`], the same fields).
/// The expiry of an active key is after now, so never negative.
fn found(identity: Identity) -> Found {
    Found {
        account_id: identity.account_id,
        user_id: identity.user_id,
        role: identity.role,
        expires_at: identity.expires_at.and_then(|e| u64::try_from(e).ok()),
        claims: (!identity.claims.is_empty()).then_some(identity.claims),
    }
}

/// A revision as the protocol sends it: the change log's revisions count up from 0.
fn wire_revision(revision: i64) -> Result<u64, ApiError> {
    u64::try_from(revision).map_err(|_| ApiError::Internal(format!("negative revision {revision}")))
}

/// How many keys a usage report wrote.
#[derive(Serialize, ToSchema)]
pub(super) struct Recorded {
    recorded: u64,
}

/// Report key usage
///
/// The key-store protocol's usage report, sent by the Envoy filter: these key ids were used
/// this minute (their `last_used_at`, written at most once a minute per key). At most 10 000
/// ids (1 MiB). Needs the protocol token when the keystore is started with one.
#[utoipa::path(post, path = keygate_protocol::routes::USAGE, tag = "protocol", request_body = Report,
    security((), ("protocol_token" = [])),
    responses((status = 200, body = Recorded), UsageErrors))]
pub(super) async fn record_usage(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Recorded>, ApiError> {
    inc(&st.metrics.usage_reports);
    if body
        .as_ref()
        .err()
        .is_some_and(|e| e.status() == StatusCode::PAYLOAD_TOO_LARGE)
    {
        return Err(usage_too_large());
    }
    let req: Report = parse_body(&headers, body)?;
    if req.key_ids.len() > MAX_USAGE_IDS {
        return Err(usage_too_large());
    }
    if let Some(bad) = req.key_ids.iter().position(|k| !is_key_id(k)) {
        return Err(ApiError::BadRequest(format!(
            "key_ids[{bad}] is not a key id (64 lowercase hex characters)"
        )));
    }
    let recorded = st.store.record_usage(req.key_ids).await?;
    Ok(Json(Recorded { recorded }))
}

fn usage_too_large() -> ApiError {
    ApiError::TooLarge(format!(
        "a usage report holds at most {MAX_USAGE_IDS} key ids ({USAGE_BODY_LIMIT} bytes)"
    ))
}
