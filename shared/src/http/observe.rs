//! Observing each request: its trace context, one log line, Prometheus metrics.

use std::{collections::HashMap, sync::Arc, time::Instant};

use poem::{Endpoint, IntoResponse, PathPattern, Request, Response, Result, http::StatusCode};
use tracing::Instrument;

use crate::telemetry::names;
use crate::trace_context::TraceContext;

/// poem-openapi routes `/products/{productName}` as `/products/:param0`; metrics and
/// logs use the spec's spelling, which is what a reader of the dashboard knows.
#[derive(Debug, Default)]
pub(crate) struct RouteNames(HashMap<String, String>);

impl RouteNames {
    /// From the OpenAPI paths (`/orders/{orderID}`), in the order poem-openapi numbers them.
    pub(crate) fn from_spec_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names = HashMap::new();
        for path in paths {
            let mut index = 0;
            let internal: Vec<String> = path
                .split('/')
                .map(|segment| {
                    if segment.starts_with('{') && segment.ends_with('}') {
                        index += 1;
                        format!(":param{}", index - 1)
                    } else {
                        segment.to_owned()
                    }
                })
                .collect();
            names.insert(internal.join("/"), path.to_owned());
        }
        RouteNames(names)
    }

    fn name(&self, pattern: Option<&str>, status: StatusCode) -> String {
        match pattern {
            Some(pattern) if let Some(name) = self.0.get(pattern) => name.clone(),
            // No operation matched (the catch-all "/" nest answered 404): one label,
            // however many paths are probed.
            _ if status == StatusCode::NOT_FOUND => "unmatched".to_owned(),
            Some(pattern) => pattern.to_owned(),
            None => "unmatched".to_owned(),
        }
    }
}

/// Reads or starts the W3C trace, runs the request in a server span carrying its trace
/// id (OpenTelemetry's HTTP conventions: named `METHOD route`, with the route template,
/// the status, and an error status for a 5xx), and records `http_requests_total` and
/// `http_request_duration_seconds` by route template (never the raw path: ids would make
/// the series unbounded) and status.
pub(crate) async fn observe<E: Endpoint>(next: Arc<E>, mut req: Request, routes: Arc<RouteNames>) -> Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http.request",
        otel.name = method_label(&method),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method_label(&method),
        url.path = %req.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let caller = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
    let trace = TraceContext::continue_in(&span, caller);
    span.record("trace_id", trace.trace_id());
    req.set_data(trace);
    let result = next.call(req).instrument(span.clone()).await.map(IntoResponse::into_response);
    let (status, route) = match &result {
        Ok(resp) => (resp.status(), resp.data::<PathPattern>().map(|p| p.0.clone())),
        Err(err) => (err.status(), err.data::<PathPattern>().map(|p| p.0.clone())),
    };
    let route = routes.name(route.as_deref(), status);
    let elapsed = started.elapsed();
    crate::telemetry::traces::rename(&span, || format!("{} {route}", method_label(&method)));
    span.record("http.route", route.as_str());
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let labels =
        [("method", method_label(&method).to_owned()), ("route", route), ("status", status.as_u16().to_string())];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::HTTP_REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            http.status = status.as_u16(),
            http.route = %labels[1].1,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    result
}

/// Standard methods by name, anything else as one label, so made-up methods cannot
/// grow the number of series.
fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_patterns_get_the_spec_names() {
        let names = RouteNames::from_spec_paths([
            "/api/v1/orders/user/{userID}",
            "/api/v1/products/{productID}/productName",
            "/healthcheck",
        ]);
        let ok = StatusCode::OK;
        assert_eq!(names.name(Some("/api/v1/orders/user/:param0"), ok), "/api/v1/orders/user/{userID}");
        assert_eq!(
            names.name(Some("/api/v1/products/:param0/productName"), ok),
            "/api/v1/products/{productID}/productName"
        );
        assert_eq!(names.name(Some("/healthcheck"), ok), "/healthcheck");
        assert_eq!(names.name(Some("/openapi.json"), ok), "/openapi.json");
        assert_eq!(names.name(Some("/"), StatusCode::NOT_FOUND), "unmatched");
        assert_eq!(names.name(None, StatusCode::METHOD_NOT_ALLOWED), "unmatched");
    }
}
