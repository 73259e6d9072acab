//! `limit`, `offset` and `order` of the list endpoints.

use poem_openapi::{Enum, Object};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Enum, serde::Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

pub(crate) const DEFAULT_LIMIT: i64 = 1000;

/// The deepest `offset` of every list. PostgreSQL builds each skipped row (for orders,
/// with its lines and address) before it drops it: sixteen requests at an offset of a
/// million held the api's whole pool for up to 30 s. At 10,000 a page costs about as
/// much as ten full pages. The `validator(maximum)` of each `offset` parameter says 10000.
pub(crate) const MAX_OFFSET: i64 = 10_000;

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
    pub order: SortOrder,
}

impl Page {
    /// Values already checked by the parameters' validators; only defaults remain.
    pub fn new(limit: Option<i64>, offset: Option<i64>, order: Option<SortOrder>) -> Self {
        Page { limit: limit.unwrap_or(DEFAULT_LIMIT), offset: offset.unwrap_or(0), order: order.unwrap_or_default() }
    }
}

/// Echo of the page in a list response.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct PageInfo {
    /// Number of items in this page.
    pub count: i64,
    pub limit: i64,
    pub offset: i64,
    pub order: SortOrder,
}

const _: () = assert!(MAX_OFFSET == 10_000, "keep the offset validators (maximum = \"10000\") in step");
