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
    pub metrics: PrometheusHandle,
}

#[derive(Debug, Object)]
pub struct Status {
    /// `OK`, or the failing dependency for `/readyz`.
    pub status: String,
}

#[derive(Debug, ApiResponse)]
pub enum ReadyResponse {
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

    /// Readiness: PostgreSQL answers.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let ping = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&self.db)).await;
        match ping {
            Ok(Ok(_)) => ReadyResponse::Ready(Json(Status { status: "OK".into() })),
            Ok(Err(e)) => {
                tracing::warn!(error.cause = %crate::error::chain(&e), "readiness: postgres unavailable");
                ReadyResponse::NotReady(Json(Status {
                    status: "postgres unavailable".into(),
                }))
            }
            Err(_) => {
                tracing::warn!("readiness: postgres timed out");
                ReadyResponse::NotReady(Json(Status {
                    status: "postgres unavailable".into(),
                }))
            }
        }
    }

    /// Prometheus metrics, in the text exposition format.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(self.metrics.render())
    }
}
