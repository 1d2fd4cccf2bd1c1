//! HTTP API: the key-store protocol used by the Envoy filter, the admin API, health and
//! metrics. The key lifecycle's endpoints (named keys, expiry, rotation with grace, usage
//! reports, claims, the audit trail) are in [`lifecycle`].

mod doc;
mod leak;
mod lifecycle;
mod read;
mod refusal;

pub use doc::{CapabilityName, Problem};
pub use refusal::{RefusalBound, BURST as REFUSAL_BURST, REFUSALS_PER_MINUTE};

use crate::authority::{Cap, Caps, Grant, Need, Operation, Principal, RoleRegistry, Subject};
use crate::error::{problem, ApiError, ErrorDetail, Kind, BODY_LIMIT, PROBLEM_JSON};
use crate::keys::{
    generate_key, is_key_id, key_id, log_prefix, validate_id, validate_imported_key, ROLE_ROOT,
    SYSTEM_ACCOUNT,
};
use crate::metrics::{inc, Metrics};
use crate::store::{Actor, Changes, Identity, KeySpec, Store, DEFAULT_KEY_NAME};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use doc::{ChangeErrors, ChangesErrors, CreateErrors, HealthErrors, LookupErrors, ReadErrors};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq as _;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Sleep before answering each key lookup (to simulate a slow store in benchmarks).
    pub lookup_delay: Duration,
    /// The bearer token the key-store protocol endpoints require, if any.
    pub protocol_token: Option<ProtocolToken>,
    /// How many refused admin calls may still be written to the audit trail (see
    /// [`refusal`]).
    pub refusals: Arc<std::sync::Mutex<RefusalBound>>,
    /// Which roles account admins may grant, and which only root may.
    pub roles: Arc<RoleRegistry>,
}

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

impl AppState {
    pub fn new(store: Store, lookup_delay: Duration) -> AppState {
        AppState {
            metrics: store.metrics().clone(),
            store,
            lookup_delay,
            protocol_token: None,
            refusals: Arc::default(),
            roles: Arc::default(),
        }
    }
}

/// Every route with its documented operation: `routes!` registers both from one annotated
/// handler (see [`doc`]). With `state`, the key-store protocol's routes are behind its token
/// check (without, for the document alone, the routes are the same).
pub(crate) fn api_routes(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    // A usage report may be larger than an admin body: its own limit, innermost, wins.
    let usage = OpenApiRouter::new()
        .routes(routes!(lifecycle::record_usage))
        .layer(DefaultBodyLimit::max(lifecycle::USAGE_BODY_LIMIT));
    // The key-store protocol (lookups, changes feed, usage reports): behind the protocol
    // token, when one is configured.
    let mut protocol = OpenApiRouter::new()
        .routes(routes!(lookup_key))
        .routes(routes!(changes))
        .merge(usage);
    if let Some(st) = state {
        protocol = protocol.route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            require_protocol_token,
        ));
    }
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(doc::openapi_json))
        .merge(protocol)
        .routes(routes!(lifecycle::audit_all))
        .routes(routes!(read::list_accounts, create_account))
        .routes(routes!(
            read::get_account,
            revoke_account,
            lifecycle::set_account
        ))
        .routes(routes!(lifecycle::audit_of_account))
        .routes(routes!(lifecycle::list_keys, lifecycle::create_key))
        .routes(routes!(
            read::get_key,
            lifecycle::update_key,
            lifecycle::revoke_key
        ))
        .routes(routes!(lifecycle::rotate_one_key))
        .routes(routes!(create_user, list_users))
        .routes(routes!(read::get_user, patch_user, revoke_user))
        .routes(routes!(rotate_key))
        .routes(routes!(leak::find_key_by_value))
        .routes(routes!(leak::revoke_key_by_value))
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    doc::openapi()
}

/// The full router.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api_routes(Some(&state)).split_for_parts();
    routes
        .fallback(no_route)
        .layer(axum::middleware::from_fn(problem_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refusal::record,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Records each request's latency under its route template, method and status class.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.run(req).await;
    st.metrics.observe_request(
        &route,
        method.as_str(),
        res.status().as_u16(),
        started.elapsed(),
    );
    res
}

async fn no_route() -> ApiError {
    ApiError::NotFound(
        Kind::NoSuchRoute,
        "no such endpoint (the routes are listed in /openapi.json)".into(),
    )
}

/// Makes every error response a problem details object (axum's own rejections, 405s and
/// body-limit errors are plain text or empty: rewritten by [`as_problem`]) and logs one line
/// per error response. Logs name the route template, never the raw path, so no key id or key
/// material gets into them.
async fn problem_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(no route)".to_owned());
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    let (res, message) = if is_problem {
        let message = res
            .extensions()
            .get::<ErrorDetail>()
            .map(|d| d.0.clone())
            .unwrap_or_default();
        (res, message)
    } else {
        as_problem(&method, res).await
    };
    if status.is_server_error() {
        tracing::error!(%method, %route, status = status.as_u16(), "request failed: {message}");
    } else if !(status == StatusCode::NOT_FOUND && route == "/v1/keys/{key_id}") {
        // An unknown key is an ordinary answer of the lookup endpoint, not an error.
        tracing::info!(%method, %route, status = status.as_u16(), "request rejected: {message}");
    }
    res
}

/// An error response that is not a problem (axum's rejections: plain text or empty) as one of
/// the kind of its status, keeping its headers (such as `Allow` on a 405); and its detail.
async fn as_problem(method: &axum::http::Method, res: Response) -> (Response, String) {
    let status = res.status();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let kind = Kind::of_status(status);
    let detail = match kind {
        Kind::MethodNotAllowed => {
            let allow = parts
                .headers
                .get(ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if allow.is_empty() {
                format!("method {method} is not allowed on this route")
            } else {
                format!("method {method} is not allowed on this route (allowed: {allow})")
            }
        }
        Kind::PayloadTooLarge => format!("request body too large (at most {BODY_LIMIT} bytes)"),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
        _ => text,
    };
    let mut new = problem(kind, &detail, serde_json::Map::new());
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    (new, detail)
}

// ---------------------------------------------------------------------------------------------
// Health and metrics

/// The health check's answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
}

/// How many keys a revocation ended.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: usize,
}

/// A page of an account's active users, by user id.
#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub account_id: String,
    pub users: Vec<crate::store::UserInfo>,
    /// The cursor of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// How long a health check waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Health check
///
/// `{"status":"ok"}` when the database answers a trivial query within 2 seconds, else 503:
/// a replica that lost its database is taken out of a load balancer's rotation.
/// Unauthenticated.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), HealthErrors))]
async fn healthz(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    match tokio::time::timeout(HEALTH_TIMEOUT, st.store.ping()).await {
        Ok(Ok(())) => Ok(Json(Health {
            status: "ok".into(),
        })),
        Ok(Err(e)) => Err(ApiError::Unavailable(format!("health check: {e}"))),
        Err(_) => Err(ApiError::Unavailable(format!(
            "health check: the database did not answer within {HEALTH_TIMEOUT:?}"
        ))),
    }
}

/// Prometheus metrics
///
/// The keystore's metrics in the OpenMetrics text format: requests by route and status,
/// lookups, database latencies, refused admin calls. Unauthenticated: keep it off the public
/// network.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the OpenMetrics text format", content_type = "application/openmetrics-text")))]
async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Key-store protocol

/// With a protocol token configured, lets a request through only with exactly one
/// `authorization: Bearer <token>` header carrying it; otherwise a 401 problem (with
/// `www-authenticate: Bearer`).
async fn require_protocol_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
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
#[utoipa::path(get, path = "/v1/keys/{key_id}", tag = "protocol", security((), ("protocol_token" = [])),
    params(("key_id" = String, Path, description = "Lowercase hex SHA-256 of the key (64 characters)")),
    responses((status = 200, body = Identity, description = "The key is active"),
        LookupErrors))]
async fn lookup_key(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Identity>, ApiError> {
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
            Ok(Json(identity))
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
struct ChangesQuery {
    since: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ChangesBody {
    revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    created: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    more: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reset: bool,
}

/// Read the change feed
///
/// The key-store protocol's change feed, polled by the Envoy filter: the key ids changed
/// since revision `since` (a page; `more` when there are more), or `reset` when the feed no
/// longer reaches back that far (the filter then drops its whole cache). Needs the protocol
/// token when the keystore is started with one.
#[utoipa::path(get, path = "/v1/changes", tag = "protocol", security((), ("protocol_token" = [])),
    params(("since" = u64, Query, description = "The last revision the client has seen (0: cold start, or a store still at revision 0; answered with the current revision and no list)")),
    responses((status = 200, body = ChangesBody), ChangesErrors))]
async fn changes(
    State(st): State<AppState>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<ChangesBody>, ApiError> {
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
        Changes::Reset { revision } => ChangesBody {
            revision,
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
            ChangesBody {
                revision,
                changed: Some(changed),
                created,
                more,
                reset: false,
            }
        }
    };
    Ok(Json(body))
}

// ---------------------------------------------------------------------------------------------
// Admin API

/// The authenticated caller of an admin request: the key (`x-api-key` or `Authorization:
/// Bearer`) and what it may do. Any active key authenticates, whatever its capabilities; the
/// handlers then ask [`authority`] whether it may do what it asks.
pub struct Caller {
    /// The calling key's id (the audit's acting key).
    pub key_id: String,
    pub identity: Identity,
    /// Its capabilities (within what its role allows; every one for root).
    pub capabilities: Caps,
    /// min(its expiry, its user's).
    pub expires_at: Option<i64>,
}

impl Caller {
    fn is_root(&self) -> bool {
        self.identity.role == ROLE_ROOT && self.identity.account_id == SYSTEM_ACCOUNT
    }

    /// What this key may hand on.
    pub fn grant(&self) -> Grant {
        Grant {
            caps: if self.is_root() {
                Caps::ALL
            } else {
                self.capabilities
            },
            expires_at: self.expires_at,
            root: self.is_root(),
        }
    }

    /// The caller as recorded in the audit trail.
    fn actor(&self) -> Actor {
        Actor {
            account_id: self.identity.account_id.clone(),
            user_id: self.identity.user_id.clone(),
            key: Some(crate::store::key_ref(&self.key_id).to_owned()),
        }
    }

    /// The actor and grant the store's jobs take.
    fn by(&self) -> (Actor, Grant) {
        (self.actor(), self.grant())
    }

    /// Whether this key may perform `op` on `account` (and `user`): see [`Operation::require`].
    fn require(&self, op: Operation, account: &str, user: Option<&str>) -> Result<(), ApiError> {
        let grant = self.grant();
        let principal = Principal {
            account: &self.identity.account_id,
            user: &self.identity.user_id,
            grant: &grant,
        };
        op.require(&principal, &Subject { account, user })
            .map_err(ApiError::from)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// Counts the admin request and authenticates it by `x-api-key` or `Authorization: Bearer`.
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Caller, ApiError> {
        authenticate(st, &parts.headers).await
    }
}

/// Counts the admin request and authenticates it by `x-api-key` or `Authorization: Bearer`.
/// What it learns (the caller, or why there is none) goes to [`refusal::note`], for the
/// record of a refused call.
async fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    inc(&st.metrics.admin_requests);
    let unauthorized = |reason: &'static str| {
        refusal::note(None, reason);
        ApiError::Unauthorized
    };
    let raw = if let Some(v) = headers.get("x-api-key") {
        v.to_str()
            .map_err(|_| unauthorized("x-api-key is not visible ASCII"))?
            .trim()
    } else if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| unauthorized("authorization is not visible ASCII"))?
            .trim();
        match v.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(unauthorized("authorization is not a Bearer token")),
        }
    } else {
        return Err(unauthorized("no key"));
    };
    if raw.is_empty() {
        return Err(unauthorized("empty key"));
    }
    let key = match st.store.authenticate(key_id(raw)).await? {
        Some(key) => key,
        None => return Err(unauthorized("unknown, revoked, disabled or expired key")),
    };
    let caller = Caller {
        key_id: key.key_id,
        identity: key.identity,
        capabilities: key.capabilities,
        expires_at: key.expires_at,
    };
    refusal::note(Some(caller.actor()), "");
    if !caller.is_root()
        && !caller.capabilities.has(Cap::OwnKeys)
        && !caller.capabilities.has(Cap::AccountAdmin)
    {
        return Err(ApiError::Forbidden(
            "forbidden: this key may not call the admin API (it has neither own_keys nor \
             account_admin; a key in its rotation grace keeps traffic only)"
                .into(),
            Need::Capability(Cap::OwnKeys),
        ));
    }
    Ok(caller)
}

fn check_id(what: &str, value: &str) -> Result<(), ApiError> {
    validate_id(what, value).map_err(ApiError::BadRequest)
}

/// The canonical form of a role `caller` asks to grant, if it may (see
/// [`RoleRegistry::grantable`]).
fn check_role(st: &AppState, caller: &Caller, role: &str) -> Result<String, ApiError> {
    check_id("role", role)?;
    st.roles
        .grantable(&caller.grant(), role)
        .map_err(ApiError::from)
}

/// A `capabilities` field: known names, not empty.
fn check_caps(caps: Option<&[String]>) -> Result<Option<Caps>, ApiError> {
    caps.map(Caps::parse)
        .transpose()
        .map_err(ApiError::BadRequest)
}

/// The `_system` account (home of the root key) is managed by the store's configuration.
fn check_not_system(account: &str) -> Result<(), ApiError> {
    if account == SYSTEM_ACCOUNT {
        return Err(ApiError::Forbidden(
            format!("forbidden: account {SYSTEM_ACCOUNT} is managed by the keystore configuration"),
            Need::Nothing,
        ));
    }
    Ok(())
}

/// Parses a JSON request body (checked after authentication and authorisation).
fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::MalformedBody(format!(
                "could not read the request body: {}",
                e.body_text()
            ))
        }
    })?;
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        let is_json = essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json");
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content-type must be application/json, not {ct:?}"
            )));
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedBody(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    // serde would also build a struct from a JSON array (its fields in order): refuse that.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::MalformedBody(
            "invalid JSON body: expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::MalformedBody(format!("invalid JSON body: {e}")))
}

/// Like [`parse_body`], but an empty body (no bytes, or only whitespace) is `T::default()`.
fn parse_optional_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        other => parse_body(headers, other),
    }
}

/// A key for a create or rotate call: the administrator's `user_key` when one was provided
/// (validated), otherwise a freshly minted one, named `name`, expiring at `expires_at` (RFC
/// 3339, in the future). Returns the raw key, what to store and whether it was imported.
/// The key holds what the call asks (`capabilities`, `expires_at`): the store's job grants
/// what [`crate::authority::derive`] allows.
fn issue_key(
    provided: Option<String>,
    name: &str,
    expires_at: Option<&str>,
    capabilities: Option<&[String]>,
) -> Result<(String, KeySpec, bool), ApiError> {
    let expires_at = expires_at.map(lifecycle::future_time).transpose()?;
    let capabilities = check_caps(capabilities)?;
    let (raw, id, imported) = issue_raw_key(provided)?;
    let mut spec = KeySpec::named(id, name);
    spec.hint = Some(crate::store::hint(&raw));
    spec.expires_at = expires_at;
    spec.capabilities = capabilities;
    Ok((raw, spec, imported))
}

/// An import (`user_key` given) needs the import authority: root or an account admin.
fn check_import(
    caller: &Caller,
    user_key: Option<&String>,
    account: &str,
    user: &str,
) -> Result<(), ApiError> {
    match user_key {
        Some(_) => caller.require(Operation::Import, account, Some(user)),
        None => Ok(()),
    }
}

/// The raw key (imported or minted), its key id and whether it was imported.
fn issue_raw_key(provided: Option<String>) -> Result<(String, String, bool), ApiError> {
    let (raw, imported) = match provided {
        Some(raw) => {
            validate_imported_key(&raw).map_err(ApiError::BadRequest)?;
            (raw, true)
        }
        None => {
            let raw = generate_key().map_err(|e| {
                ApiError::Internal(format!("OS random number generator failed: {e}"))
            })?;
            (raw, false)
        }
    };
    let id = key_id(&raw);
    Ok((raw, id, imported))
}

/// A response carrying a new key: never cached.
fn with_key<T: Serialize>(status: StatusCode, body: T) -> Response {
    (
        status,
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateAccount {
    account_id: String,
    admin_user_id: String,
    /// A key to import instead of minting one.
    #[serde(default)]
    user_key: Option<String>,
    /// When the key expires (RFC 3339).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct AccountCreated {
    account_id: String,
    user_id: String,
    user_key: String,
}

/// Create an account
///
/// Creates an account with its first user, an administrator, and that user's first key
/// (minted, or imported from `user_key`), shown once in the answer. Root only.
#[utoipa::path(post, path = "/api/v1/admin/accounts", tag = "admin",
    request_body = CreateAccount, security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = AccountCreated), CreateErrors))]
async fn create_account(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Operation::RootOnly("create accounts"), "", None)?;
    let req: CreateAccount = parse_body(&headers, body)?;
    check_id("account_id", &req.account_id)?;
    check_id("admin_user_id", &req.admin_user_id)?;
    if req.account_id.starts_with('_') {
        return Err(ApiError::BadRequest(
            "account ids starting with '_' are reserved".into(),
        ));
    }
    let (raw, key, imported) = issue_key(
        req.user_key,
        DEFAULT_KEY_NAME,
        req.expires_at.as_deref(),
        None,
    )?;
    let id = key.key_id.clone();
    st.store
        .create_account(
            caller.by(),
            req.account_id.clone(),
            req.admin_user_id.clone(),
            key,
        )
        .await?;
    tracing::info!(
        account = %req.account_id,
        user = %req.admin_user_id,
        key = log_prefix(&id),
        imported,
        "account created"
    );
    Ok(with_key(
        StatusCode::CREATED,
        AccountCreated {
            account_id: req.account_id,
            user_id: req.admin_user_id,
            user_key: raw,
        },
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    user_id: String,
    /// A role of the registry (`--account-roles`, or `--operator-roles` for root); compared
    /// and stored in ASCII lowercase.
    role: String,
    /// A key to import instead of minting one (root and account admins only).
    #[serde(default)]
    user_key: Option<String>,
    /// When the user, and so every key of it, expires (RFC 3339).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    /// The first key's capabilities (default: all the role and the calling key allow).
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::api::CapabilityName>>)]
    capabilities: Option<Vec<String>>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    /// A key to import instead of minting one (root and account admins only).
    #[serde(default)]
    user_key: Option<String>,
    /// When the new key expires (RFC 3339; at most the calling key's and the user's expiry).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    /// How long the old keys stay valid, in seconds (default 0: revoked at once). During
    /// the grace they keep only the capability `traffic`.
    #[serde(default)]
    grace_s: Option<i64>,
    /// The new key's capabilities (default: all the role and the calling key allow).
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::api::CapabilityName>>)]
    capabilities: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
struct UserKey {
    user_id: String,
    user_key: String,
    /// When the key expires (RFC 3339), when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    #[schema(value_type = Vec<crate::api::CapabilityName>)]
    capabilities: Vec<&'static str>,
}

impl UserKey {
    fn new(user_id: String, user_key: String, granted: &KeySpec) -> UserKey {
        UserKey {
            user_id,
            user_key,
            expires_at: granted.expires_at.map(crate::store::rfc3339),
            capabilities: granted.capabilities.unwrap_or(Caps::ALL).names(),
        }
    }
}

/// Create a user
///
/// Adds a user with a role of the registry and its first key (minted, or imported from
/// `user_key` by root and account admins), shown once in the answer. Root and the account's
/// administrators; an operator role only by root.
#[utoipa::path(post, path = "/api/v1/admin/accounts/{account}/users", tag = "admin",
    params(("account" = String, Path, description = "Account id")), request_body = CreateUser, security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = UserKey), CreateErrors))]
async fn create_user(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::AccountAdmin, &account, None)?;
    check_not_system(&account)?;
    let req: CreateUser = parse_body(&headers, body)?;
    check_id("user_id", &req.user_id)?;
    check_import(&caller, req.user_key.as_ref(), &account, &req.user_id)?;
    let role = check_role(&st, &caller, &req.role)?;
    let caps = req.capabilities.as_deref();
    let (raw, key, imported) = issue_key(
        req.user_key,
        DEFAULT_KEY_NAME,
        req.expires_at.as_deref(),
        caps,
    )?;
    let user_expires = key.expires_at;
    let id = key.key_id.clone();
    let granted = st
        .store
        .create_user(
            caller.by(),
            (account.clone(), req.user_id.clone()),
            role.clone(),
            user_expires,
            key,
        )
        .await?;
    tracing::info!(
        %account,
        user = %req.user_id,
        %role,
        key = log_prefix(&id),
        imported,
        "user created"
    );
    Ok(with_key(
        StatusCode::CREATED,
        UserKey::new(req.user_id, raw, &granted),
    ))
}

/// Rotate a user's keys
///
/// Gives the user a new key (shown once) and revokes all its other keys, at once or after
/// `grace_s` seconds during which they keep the capability `traffic` only. Root, the
/// account's administrators, and the user's own keys with `own_keys`.
#[utoipa::path(post, path = "/api/v1/admin/accounts/{account}/users/{user}/key", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), request_body(content = Option<RotateKey>, description = "Optional"),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UserKey), CreateErrors))]
async fn rotate_key(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::UserKeys, &account, Some(&user))?;
    check_not_system(&account)?;
    let req: RotateKey = parse_optional_body(&headers, body)?;
    check_import(&caller, req.user_key.as_ref(), &account, &user)?;
    let grace_s = lifecycle::check_grace(req.grace_s)?;
    let caps = req.capabilities.as_deref();
    let (raw, key, imported) = issue_key(
        req.user_key,
        DEFAULT_KEY_NAME,
        req.expires_at.as_deref(),
        caps,
    )?;
    let id = key.key_id.clone();
    let (replaced, granted) = st
        .store
        .rotate_key(caller.by(), account.clone(), user.clone(), key, grace_s)
        .await?;
    let old: Vec<&str> = replaced.iter().map(|k| log_prefix(k)).collect();
    tracing::info!(
        %account,
        %user,
        key = log_prefix(&id),
        imported,
        grace_s,
        replaced = ?old,
        "key rotated"
    );
    Ok(with_key(StatusCode::OK, UserKey::new(user, raw, &granted)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    /// The new role (see `role` of a new user).
    #[serde(default, deserialize_with = "present")]
    role: Option<String>,
    /// `false` disables the user (its keys are not looked up and cannot call the admin API);
    /// `true` enables it again.
    #[serde(default, deserialize_with = "present")]
    enabled: Option<bool>,
    /// The user's new expiry (RFC 3339), capping every key of the user; `null`: none (as
    /// late as the calling key may give). Nobody but root extends their own.
    #[serde(default, deserialize_with = "lifecycle::double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
}

/// An optional field that, when present, must hold a value (`null` is refused).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Serialize, ToSchema)]
struct UserRole {
    user_id: String,
    role: String,
    /// Present when the call changed it: whether the user is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    /// The user's expiry (RFC 3339) after the call; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
}

/// Change a user
///
/// Changes a user's role, expiry or enabled state, all the fields given or none (one
/// transaction, one audit entry). A disabled user's keys are not looked up. Root and the
/// account's administrators; nobody but root extends their own expiry.
#[utoipa::path(patch, path = "/api/v1/admin/accounts/{account}/users/{user}", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), request_body = UpdateUser, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UserRole), ChangeErrors))]
async fn patch_user(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UserRole>, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::AccountAdmin, &account, Some(&user))?;
    check_not_system(&account)?;
    let req: UpdateUser = parse_body(&headers, body)?;
    let role = req
        .role
        .as_deref()
        .map(|r| check_role(&st, &caller, r))
        .transpose()?;
    let expires_at = match req.expires_at {
        Some(Some(t)) => Some(Some(lifecycle::future_time(&t)?)),
        Some(None) => Some(None),
        None => None,
    };
    if role.is_none() && expires_at.is_none() && req.enabled.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give role, expires_at or enabled".into(),
        ));
    }
    let enabled = req.enabled;
    let patched = st
        .store
        .patch_user(
            caller.by(),
            st.roles.clone(),
            (account.clone(), user.clone()),
            role,
            expires_at,
            enabled,
        )
        .await?;
    let (before, after) = (patched.before, patched.after);
    tracing::info!(%account, %user, from = %before.role, to = %after.role,
        expiry_changed = before.expires_at != after.expires_at, ?enabled, "user changed");
    Ok(Json(UserRole {
        user_id: user,
        role: after.role,
        enabled: enabled.map(|_| patched.enabled),
        expires_at: after.expires_at.map(crate::store::rfc3339),
    }))
}

/// Revoke a user
///
/// Revokes a user and every key of it, for good; answers how many keys were revoked. Root
/// and the account's administrators.
#[utoipa::path(delete, path = "/api/v1/admin/accounts/{account}/users/{user}", tag = "admin",
    params(("account" = String, Path, description = "Account id"), ("user" = String, Path, description = "User id")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = Revoked), ReadErrors))]
async fn revoke_user(
    State(st): State<AppState>,
    Path((account, user)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Revoked>, ApiError> {
    check_id("account", &account)?;
    check_id("user", &user)?;
    caller.require(Operation::AccountAdmin, &account, Some(&user))?;
    check_not_system(&account)?;
    let revoked = st
        .store
        .revoke_user(caller.actor(), account.clone(), user.clone())
        .await?;
    tracing::info!(%account, %user, revoked, "user revoked");
    Ok(Json(Revoked { revoked }))
}

/// Revoke an account
///
/// Revokes an account, its users and every key of them, for good; answers how many keys
/// were revoked. Root only.
#[utoipa::path(delete, path = "/api/v1/admin/accounts/{account}", tag = "admin",
    params(("account" = String, Path, description = "Account id")), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = Revoked), ReadErrors))]
async fn revoke_account(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
) -> Result<Json<Revoked>, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::RootOnly("revoke accounts"), &account, None)?;
    check_not_system(&account)?;
    let revoked = st
        .store
        .revoke_account(caller.actor(), account.clone())
        .await?;
    tracing::info!(%account, revoked, "account revoked");
    Ok(Json(Revoked { revoked }))
}

/// List users
///
/// The active users of an account (disabled ones included), by user id, a page at a time.
/// Root and the account's administrators.
#[utoipa::path(get, path = "/api/v1/admin/accounts/{account}/users", tag = "admin",
    params(("account" = String, Path, description = "Account id"), read::ListQuery), security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UserList), ReadErrors))]
async fn list_users(
    State(st): State<AppState>,
    Path(account): Path<String>,
    caller: Caller,
    query: Result<Query<read::ListQuery>, QueryRejection>,
) -> Result<Json<UserList>, ApiError> {
    check_id("account", &account)?;
    caller.require(Operation::AccountAdmin, &account, None)?;
    let bounds = read::Bounds::of(query)?;
    let users = st.store.list_users(account.clone()).await?;
    let (users, next_cursor) = bounds.page_by_id(users, |u| &u.user_id)?;
    Ok(Json(UserList {
        account_id: account,
        users,
        next_cursor,
    }))
}
