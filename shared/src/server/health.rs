//! The api's liveness, readiness and metrics, in its spec.

use std::time::Duration;

use crate::db::Db;
use metrics_exporter_prometheus::PrometheusHandle;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    payload::{Json, PlainText},
};

use crate::http::ApiTags;

pub struct HealthApi {
    pub db: Db,
    pub cache: crate::cache::OrderCache,
    pub metrics: PrometheusHandle,
}

#[derive(Debug, Object)]
pub(crate) struct Status {
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

    /// Readiness: PostgreSQL answers and takes writes, and Redis answers; `status` names
    /// what does not. Answers within 5 s whatever they do.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let (postgres, redis) =
            tokio::join!(self.db.readiness(), tokio::time::timeout(Duration::from_secs(2), self.cache.ping()),);
        let Some(status) = crate::probes::not_ready(postgres, "redis", matches!(redis, Ok(Ok(())))) else {
            return ReadyResponse::Ready(Json(Status { status: "OK".into() }));
        };
        tracing::warn!(status, "not ready");
        ReadyResponse::NotReady(Json(Status { status }))
    }

    /// Prometheus metrics, in the text exposition format.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(self.metrics.render())
    }
}
