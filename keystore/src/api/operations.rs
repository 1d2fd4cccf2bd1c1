//! Operations routes: the health check (`GET /healthz`) and the metrics (`GET /metrics`),
//! both unauthenticated, and the middleware that times every request.
//!
//! Invariant: metrics and logs name a request by its route template, never its raw path, so
//! no key id gets into them.

use super::doc::HealthErrors;
use super::AppState;
use crate::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// The health check's answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
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
pub(super) async fn healthz(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
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
pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// Records each request's latency under its route template, method and status class.
pub(super) async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
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
