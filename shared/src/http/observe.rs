//! Per-request plumbing: trace context, one log line, Prometheus metrics, and the
//! body-size limit.

use std::{collections::HashMap, sync::Arc, time::Instant};

use poem::{Body, Endpoint, IntoResponse, Middleware, PathPattern, Request, Response, Result, http::StatusCode};
use tracing::Instrument;

use crate::trace_context::TraceContext;

/// Reads or starts the W3C trace, runs the request in a span carrying its trace id, and
/// records `http_requests_total` and `http_request_duration_seconds` by route template
/// (never the raw path: ids would make the series unbounded) and status.
pub struct Observe {
    routes: Arc<RouteNames>,
}

impl Observe {
    pub fn new(routes: RouteNames) -> Self {
        Observe { routes: Arc::new(routes) }
    }
}

/// poem-openapi routes `/products/{productName}` as `/products/:param0`; metrics and
/// logs use the spec's spelling, which is what a reader of the dashboard knows.
#[derive(Debug, Default)]
pub struct RouteNames(HashMap<String, String>);

impl RouteNames {
    /// From the OpenAPI paths (`/orders/{orderID}`), in the order poem-openapi numbers them.
    pub fn from_spec_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
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

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObserveEndpoint { inner, routes: self.routes.clone() }
    }
}

pub struct ObserveEndpoint<E> {
    inner: E,
    routes: Arc<RouteNames>,
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let started = Instant::now();
        let trace = TraceContext::from_header(req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
        req.set_data(trace);
        let method = req.method().clone();
        let span = tracing::info_span!(
            "http.request",
            http.method = %method,
            http.path = %req.uri().path(),
            trace_id = %trace.trace_id(),
        );
        let result = self.inner.call(req).instrument(span.clone()).await.map(IntoResponse::into_response);
        let (status, route) = match &result {
            Ok(resp) => (resp.status(), resp.data::<PathPattern>().map(|p| p.0.clone())),
            Err(err) => (err.status(), err.data::<PathPattern>().map(|p| p.0.clone())),
        };
        let route = self.routes.name(route.as_deref(), status);
        let elapsed = started.elapsed();
        let labels =
            [("method", method_label(&method).to_owned()), ("route", route), ("status", status.as_u16().to_string())];
        metrics::counter!("http_requests_total", &labels).increment(1);
        metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
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

/// Answers 413 to a body larger than the limit, whether or not it declares its length
/// (a chunked body is read up to the limit, not trusted).
pub struct BodyLimit(pub usize);

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint { inner, limit: self.0 }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.limit as u64) {
            return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        if declared != Some(0) && req.method() != poem::http::Method::GET {
            let body = req.take_body().into_bytes_limit(self.limit).await.map_err(|e| match e {
                poem::error::ReadBodyError::PayloadTooLarge => poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE),
                other => other.into(),
            })?;
            req.set_body(Body::from_bytes(body));
        }
        self.inner.call(req).await
    }
}

/// The methods each path answers, from the OpenAPI document, for the `Allow` header
/// that a 405 must carry (RFC 9110).
#[derive(Debug, Default)]
pub struct AllowedMethods(Vec<(Vec<String>, String)>);

impl AllowedMethods {
    pub fn from_spec(spec: &serde_json::Value) -> Self {
        let mut routes = vec![(vec!["openapi.json".to_owned()], "GET".to_owned())];
        for (path, operations) in spec["paths"].as_object().into_iter().flatten() {
            let mut methods: Vec<String> =
                operations.as_object().into_iter().flat_map(|o| o.keys()).map(|m| m.to_ascii_uppercase()).collect();
            methods.sort();
            routes.push((path.trim_matches('/').split('/').map(str::to_owned).collect(), methods.join(", ")));
        }
        AllowedMethods(routes)
    }

    fn for_path(&self, path: &str) -> Option<&str> {
        if path == "/docs" || path.starts_with("/docs/") {
            return Some("GET");
        }
        let wanted: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.0
            .iter()
            .find(|(template, _)| {
                template.len() == wanted.len()
                    && template.iter().zip(&wanted).all(|(t, w)| t.starts_with('{') || t == w)
            })
            .map(|(_, methods)| methods.as_str())
    }
}

/// Adds `Allow` to every 405.
pub struct AllowHeader(pub Arc<AllowedMethods>);

impl<E: Endpoint> Middleware<E> for AllowHeader {
    type Output = AllowHeaderEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        AllowHeaderEndpoint { inner, allowed: self.0.clone() }
    }
}

pub struct AllowHeaderEndpoint<E> {
    inner: E,
    allowed: Arc<AllowedMethods>,
}

impl<E: Endpoint> Endpoint for AllowHeaderEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        // A clone of the URI shares its bytes: no copy of the path on every request.
        let uri = req.uri().clone();
        let mut response = self.inner.call(req).await?.into_response();
        if response.status() == StatusCode::METHOD_NOT_ALLOWED
            && let Some(methods) = self.allowed.for_path(uri.path())
            && let Ok(value) = poem::http::HeaderValue::from_str(methods)
        {
            response.headers_mut().insert(poem::http::header::ALLOW, value);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_405_names_the_methods_of_its_path() {
        let spec = serde_json::json!({"paths": {
            "/api/v1/orders": {"get": {}, "post": {}, "delete": {}},
            "/api/v1/orders/{orderID}": {"get": {}},
            "/api/v1/orders/user/{userID}": {"get": {}},
        }});
        let allowed = AllowedMethods::from_spec(&spec);
        assert_eq!(allowed.for_path("/api/v1/orders"), Some("DELETE, GET, POST"));
        assert_eq!(allowed.for_path("/api/v1/orders/1b2b434e-44e8-424c-bb1b-1fe609fc1f7d"), Some("GET"));
        assert_eq!(allowed.for_path("/api/v1/orders/user/x"), Some("GET"));
        assert_eq!(allowed.for_path("/openapi.json"), Some("GET"));
        assert_eq!(allowed.for_path("/docs/index.js"), Some("GET"));
        assert_eq!(allowed.for_path("/api/v2/orders"), None);
    }

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
