//! HTTP API: the key-store protocol used by the Envoy filter, the admin API, health and
//! metrics.
//!
//! Invariants: every route is registered with its documented operation in one call
//! (`routes!`, see [`doc`]), so none is served undocumented; every error answer is a problem
//! details object ([`problem`]); an admin handler runs only for an authenticated [`Caller`]
//! (an extractor: [`auth`], reading the key by the filter's rules) and asks
//! [`crate::authority`] before it reads its body ([`body`]).
//!
//! Where things are: [`protocol`] (lookup, change feed, key summary, usage reports, the
//! protocol token); the admin routes by resource: [`accounts`], [`users`], [`keys`],
//! [`leak`] (a key by its value), [`audit`]; [`paging`] (cursor-paged lists); [`refusal`]
//! (refused admin calls in the audit trail); [`operations`] (health, metrics); [`doc`] (the OpenAPI document).

mod accounts;
mod audit;
mod auth;
mod body;
mod doc;
mod keys;
mod leak;
mod operations;
mod paging;
mod problem;
mod protocol;
mod refusal;
mod users;

pub use auth::Caller;
pub use doc::{CapabilityName, Problem};
pub use operations::Health;
pub use protocol::ProtocolToken;
pub use refusal::{RefusalBound, BURST as REFUSAL_BURST, REFUSALS_PER_MINUTE};
pub use users::{Revoked, UserList};

use crate::authority::RoleRegistry;
use crate::error::BODY_LIMIT;
use crate::metrics::Metrics;
use crate::store::{Store, Summaries};
use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;
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
    /// The key summary served on `GET /v1/summary` (one snapshot per process).
    pub summaries: Arc<Summaries>,
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
            summaries: Arc::default(),
        }
    }
}

/// Every route with its documented operation: `routes!` registers both from one annotated
/// handler (see [`doc`]). With `state`, the key-store protocol's routes are behind its token
/// check (without, for the document alone, the routes are the same).
pub(crate) fn api_routes(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    // A usage report may be larger than an admin body: its own limit, innermost, wins.
    let usage = OpenApiRouter::new()
        .routes(routes!(protocol::record_usage))
        .layer(DefaultBodyLimit::max(protocol::USAGE_BODY_LIMIT));
    // The key-store protocol (lookups, changes feed, key summary, usage reports): behind the
    // protocol token, when one is configured.
    let mut protocol = OpenApiRouter::new()
        .routes(routes!(protocol::lookup_key))
        .routes(routes!(protocol::changes))
        .routes(routes!(protocol::summary))
        .merge(usage);
    if let Some(st) = state {
        protocol = protocol.route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            protocol::require_protocol_token,
        ));
    }
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(operations::healthz))
        .routes(routes!(operations::metrics))
        .routes(routes!(doc::openapi_json))
        .merge(protocol)
        .routes(routes!(audit::audit_all))
        .routes(routes!(accounts::list_accounts, accounts::create_account))
        .routes(routes!(
            accounts::get_account,
            accounts::revoke_account,
            accounts::set_account
        ))
        .routes(routes!(audit::audit_of_account))
        .routes(routes!(keys::list_keys, keys::create_key))
        .routes(routes!(keys::get_key, keys::update_key, keys::revoke_key))
        .routes(routes!(keys::rotate_one_key))
        .routes(routes!(users::create_user, users::list_users))
        .routes(routes!(
            users::get_user,
            users::patch_user,
            users::revoke_user
        ))
        .routes(routes!(users::rotate_key))
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
        .fallback(problem::no_route)
        .layer(axum::middleware::from_fn(problem::problem_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refusal::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            operations::observe,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}
