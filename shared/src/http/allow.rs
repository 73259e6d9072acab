//! The `Allow` header of a 405, from the OpenAPI document.

use std::sync::Arc;

use poem::{Endpoint, IntoResponse, Request, Response, Result, http::StatusCode};

/// The methods each path answers, from the OpenAPI document, for the `Allow` header
/// that a 405 must carry (RFC 9110).
#[derive(Debug, Default)]
pub(crate) struct AllowedMethods(Vec<(Vec<String>, String)>);

impl AllowedMethods {
    pub(crate) fn from_spec(spec: &serde_json::Value) -> Self {
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
pub(crate) async fn add_allow_header<E: Endpoint>(
    next: Arc<E>,
    req: Request,
    allowed: Arc<AllowedMethods>,
) -> Result<Response> {
    // A clone of the URI shares its bytes: no copy of the path on every request.
    let uri = req.uri().clone();
    let mut response = next.call(req).await?.into_response();
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = allowed.for_path(uri.path())
        && let Ok(value) = poem::http::HeaderValue::from_str(methods)
    {
        response.headers_mut().insert(poem::http::header::ALLOW, value);
    }
    Ok(response)
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
}
