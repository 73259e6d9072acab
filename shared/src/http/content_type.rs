//! JSON sent without saying so. The original service's README sends its bodies with
//! `curl -d` and no `Content-Type`, so curl labels them
//! `application/x-www-form-urlencoded`; the Go service bound JSON whatever the label.
//! Here a body that parses as JSON is taken as JSON when it has no `Content-Type` or
//! curl's default form type; any other declared type is left alone (a 415 as before),
//! and so is a form that is really a form.

use std::sync::Arc;

use poem::{Body, Endpoint, Request, Result, http::header::CONTENT_TYPE};

/// Whether a body with this declared type (if any) is to be read as JSON.
pub(crate) fn taken_as_json(content_type: Option<&str>, body: &[u8]) -> bool {
    let unlabelled = match content_type {
        None => true,
        Some(declared) => {
            let essence = declared.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }
    };
    unlabelled && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Relabels such bodies `application/json`. Runs inside [`limit_body`], which has
/// already read the body into memory (bounded), so reading it here copies nothing.
///
/// [`limit_body`]: super::body_limit::limit_body
pub(crate) async fn json_by_default<E: Endpoint>(next: Arc<E>, mut req: Request) -> Result<E::Output> {
    let declared = req.headers().get(CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
    let may_relabel = declared.is_none_or(|d| d.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if may_relabel && req.method() != poem::http::Method::GET {
        let declared = declared.map(str::to_owned);
        let body = req.take_body().into_bytes().await?;
        if taken_as_json(declared.as_deref(), &body) {
            req.headers_mut().insert(CONTENT_TYPE, poem::http::HeaderValue::from_static("application/json"));
        }
        req.set_body(Body::from_bytes(body));
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_without_a_label_or_with_curls_default_is_json() {
        let json = br#"{"productID": "ec14f9be-44e3-4ec0-97d3-47fdac6c55c9", "price": 100}"#;
        assert!(taken_as_json(None, json));
        assert!(taken_as_json(Some("application/x-www-form-urlencoded"), json));
        assert!(taken_as_json(Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"), json));
        assert!(taken_as_json(None, b"  [1, 2]\n"));
    }

    #[test]
    fn anything_else_keeps_its_label() {
        let json = br#"{"a": 1}"#;
        assert!(!taken_as_json(Some("text/plain"), json));
        assert!(!taken_as_json(Some("application/xml"), json));
        assert!(!taken_as_json(Some("multipart/form-data; boundary=x"), json));
        assert!(!taken_as_json(Some("application/x-www-form-urlencoded"), b"a=1&b=2"));
        assert!(!taken_as_json(None, b""));
        assert!(!taken_as_json(None, b"{\"a\": 1}`"), "JSON with trailing bytes is not JSON");
    }
}
