//! Liveness, readiness and metrics.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    payload::{Json, PlainText},
};
use sqlx::PgPool;

use super::ApiTags;

pub struct HealthApi {
    pub db: PgPool,
    pub cache: crate::cache::OrderCache,
    pub metrics: PrometheusHandle,
}

#[derive(Debug, Object)]
pub struct Status {
    /// `OK`, or the failing dependency for `/readyz`.
    pub status: String,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum ReadyResponse {
    /// Every dependency answers.
    #[oai(status = 200)]
    Ready(Json<Status>),
    /// A dependency does not answer; `status` names it.
    #[oai(status = 503)]
    NotReady(Json<Status>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process is up.
    #[oai(path = "/healthcheck", method = "get")]
    async fn healthcheck(&self) -> Json<Status> {
        Json(Status { status: "OK".into() })
    }

    /// Readiness: PostgreSQL and Redis answer; `status` names what does not.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let limit = Duration::from_secs(2);
        let (postgres, redis) = tokio::join!(
            tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&self.db)),
            tokio::time::timeout(limit, self.cache.ping()),
        );
        let postgres = matches!(postgres, Ok(Ok(_)));
        let redis = matches!(redis, Ok(Ok(())));
        let status = match (postgres, redis) {
            (true, true) => return ReadyResponse::Ready(Json(Status { status: "OK".into() })),
            (false, true) => "postgres unavailable",
            (true, false) => "redis unavailable",
            (false, false) => "postgres and redis unavailable",
        };
        tracing::warn!(status, "not ready");
        ReadyResponse::NotReady(Json(Status { status: status.into() }))
    }

    /// Prometheus metrics, in the text exposition format.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(self.metrics.render())
    }
}
