//! What the api reads of a verified token: its subject and its scopes. `exp`, `nbf`,
//! `iss` and `aud` are checked by the verifier before these are looked at.

use serde::Deserialize;
use uuid::Uuid;

/// A permission a token can carry beyond acting for its own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Create products, addresses and users; rename products.
    CatalogWrite,
    /// Read the whole order list and any user's orders.
    OrdersReadAll,
}

impl Scope {
    /// What a 403 for lacking it says.
    pub fn missing(self) -> &'static str {
        match self {
            Scope::CatalogWrite => "this needs the scope catalog:write",
            Scope::OrdersReadAll => "this needs the scope orders:read-all",
        }
    }

    /// The scope's name in a token.
    pub fn name(self) -> &'static str {
        match self {
            Scope::CatalogWrite => "catalog:write",
            Scope::OrdersReadAll => "orders:read-all",
        }
    }
}

/// The scopes of ours a token holds (others, such as `openid`, are ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes {
    catalog_write: bool,
    orders_read_all: bool,
}

impl Scopes {
    pub fn has(self, scope: Scope) -> bool {
        match scope {
            Scope::CatalogWrite => self.catalog_write,
            Scope::OrdersReadAll => self.orders_read_all,
        }
    }

    fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        names.into_iter().fold(Scopes::default(), |mut scopes, name| {
            match name {
                "catalog:write" => scopes.catalog_write = true,
                "orders:read-all" => scopes.orders_read_all = true,
                _ => {}
            }
            scopes
        })
    }

    /// OAuth 2's `scope`: names separated by spaces.
    pub fn parse_space_separated(text: &str) -> Self {
        Scopes::from_names(text.split_ascii_whitespace())
    }
}

/// `scp` as Entra ID and Okta send it: a list, or a space-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Text(String),
    List(Vec<String>),
}

/// The claims the api uses.
#[derive(Debug, Deserialize)]
pub(super) struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScopeList>,
}

impl Claims {
    /// The user the token acts for: its subject, when that is one of our user ids.
    pub(super) fn user(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sub).ok()
    }

    /// Every scope of ours in `scope` and `scp`.
    pub(super) fn scopes(&self) -> Scopes {
        let scp: Vec<&str> = match &self.scp {
            Some(ScopeList::Text(text)) => text.split_ascii_whitespace().collect(),
            Some(ScopeList::List(names)) => names.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        Scopes::from_names(self.scope.iter().flat_map(|text| text.split_ascii_whitespace()).chain(scp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn scopes_come_from_scope_or_scp_in_either_form() {
        let user = Uuid::new_v4();
        let keycloak = claims(serde_json::json!({"sub": user.to_string(), "scope": "openid catalog:write"}));
        assert_eq!(keycloak.user(), Some(user));
        assert!(keycloak.scopes().has(Scope::CatalogWrite) && !keycloak.scopes().has(Scope::OrdersReadAll));
        let entra = claims(serde_json::json!({"sub": "x", "scp": "orders:read-all"}));
        assert!(entra.scopes().has(Scope::OrdersReadAll));
        assert_eq!(entra.user(), None, "a subject that is no UUID acts for no user");
        let okta = claims(serde_json::json!({"sub": "x", "scp": ["catalog:write", "orders:read-all"]}));
        assert!(okta.scopes().has(Scope::CatalogWrite) && okta.scopes().has(Scope::OrdersReadAll));
        let none = claims(serde_json::json!({"sub": "x", "scope": "catalog:writer orders"}));
        assert_eq!(none.scopes(), Scopes::default(), "names match whole");
    }

    #[test]
    fn a_token_without_a_subject_is_not_read() {
        assert!(serde_json::from_value::<Claims>(serde_json::json!({"scope": "catalog:write"})).is_err());
    }
}
